//! `wasishim-static`: a test-only CNI plugin that *reports* an address on the
//! pod's interface and configures nothing.
//!
//! containerd's CRI plugin refuses a pod sandbox whose CNI result has no IP
//! address on the pod's interface (`eth0`): "failed to find network info for
//! sandbox". The end-to-end tests chain this plugin after the standard
//! `loopback` plugin, so pods get a working `lo` in their own network
//! namespace plus a result CRI accepts. The reported address is never
//! assigned to anything and never carries traffic.
//!
//! ```json
//! {"cniVersion":"1.0.0","name":"wasishim-test","plugins":[
//!   {"type":"loopback"},
//!   {"type":"wasishim-static","address":"10.88.0.2/16"}]}
//! ```
//!
//! - `ADD`: prints a result (in the conf's `cniVersion`) holding the previous
//!   plugin's interfaces and IPs plus interface `$CNI_IFNAME` (sandbox
//!   `$CNI_NETNS`) with `address`.
//! - `DEL`, `CHECK`, `GC`, `STATUS`: succeed silently.
//! - `VERSION`: prints the supported versions.
//!
//! Failures are printed as a CNI error object on stdout, exit status 1.

use std::io::Read;
use std::process::ExitCode;

use serde_json::{json, Value};

/// CNI spec versions whose result format this plugin writes.
const SUPPORTED: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// CNI error code for a netconf this plugin cannot use ("invalid network config").
const ERR_INVALID_CONFIG: u32 = 7;
/// CNI error code for an unsupported `cniVersion`.
const ERR_INCOMPATIBLE_VERSION: u32 = 1;
/// CNI error code for missing or bad environment variables.
const ERR_INVALID_ENV: u32 = 4;

/// A failure reported to the runtime as a CNI error object.
#[derive(Debug, PartialEq)]
struct CniError {
    code: u32,
    msg: String,
}

impl CniError {
    fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
        }
    }
}

/// What `ADD` needs from the environment.
struct AddEnv {
    ifname: String,
    netns: String,
}

/// The `ADD` result for `conf` (the plugin's netconf, with `prevResult` when
/// chained).
fn add(conf: &Value, env: &AddEnv) -> Result<Value, CniError> {
    let version = conf_version(conf)?;
    let address = conf.get("address").and_then(Value::as_str).ok_or_else(|| {
        CniError::new(
            ERR_INVALID_CONFIG,
            "netconf has no \"address\" (e.g. \"10.88.0.2/16\")",
        )
    })?;
    let (ip, prefix) = address.split_once('/').ok_or_else(|| {
        CniError::new(
            ERR_INVALID_CONFIG,
            format!("address {address:?} is not in CIDR form (e.g. \"10.88.0.2/16\")"),
        )
    })?;
    let ip: std::net::IpAddr = ip.parse().map_err(|_| {
        CniError::new(
            ERR_INVALID_CONFIG,
            format!("address {address:?}: {ip:?} is not an IP address"),
        )
    })?;
    let max_prefix = if ip.is_ipv4() { 32 } else { 128 };
    if !prefix.parse::<u8>().is_ok_and(|p| p <= max_prefix) {
        return Err(CniError::new(
            ERR_INVALID_CONFIG,
            format!("address {address:?}: bad prefix length {prefix:?}"),
        ));
    }

    let prev = conf.get("prevResult");
    let mut interfaces: Vec<Value> = prev
        .and_then(|p| p.get("interfaces"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut ips: Vec<Value> = prev
        .and_then(|p| p.get("ips"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let index = interfaces.len();
    interfaces.push(json!({"name": env.ifname, "sandbox": env.netns}));
    let mut ip_conf = json!({"address": address, "interface": index});
    if version != "1.0.0" {
        // Before 1.0.0 each IP names its family.
        ip_conf["version"] = json!(if ip.is_ipv4() { "4" } else { "6" });
        for prev_ip in &mut ips {
            if prev_ip.get("version").is_none() {
                let v4 = prev_ip
                    .get("address")
                    .and_then(Value::as_str)
                    .is_some_and(|a| !a.contains(':'));
                prev_ip["version"] = json!(if v4 { "4" } else { "6" });
            }
        }
    }
    ips.push(ip_conf);
    let mut result = json!({
        "cniVersion": version,
        "interfaces": interfaces,
        "ips": ips,
        "dns": prev.and_then(|p| p.get("dns")).cloned().unwrap_or_else(|| json!({})),
    });
    if let Some(routes) = prev.and_then(|p| p.get("routes")) {
        result["routes"] = routes.clone();
    }
    Ok(result)
}

/// The conf's `cniVersion`, if this plugin supports it.
fn conf_version(conf: &Value) -> Result<&str, CniError> {
    let version = conf
        .get("cniVersion")
        .and_then(Value::as_str)
        .ok_or_else(|| CniError::new(ERR_INVALID_CONFIG, "netconf has no \"cniVersion\""))?;
    if !SUPPORTED.contains(&version) {
        return Err(CniError::new(
            ERR_INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {version} is not supported; use one of {}",
                SUPPORTED.join(", ")
            ),
        ));
    }
    Ok(version)
}

/// Runs `command` on the netconf text `stdin`; `Ok(Some(json))` is printed.
fn run(
    command: &str,
    stdin: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Value>, CniError> {
    match command {
        "VERSION" => Ok(Some(json!({
            "cniVersion": "1.0.0",
            "supportedVersions": SUPPORTED,
        }))),
        "ADD" => {
            let conf = parse_conf(stdin)?;
            let need = |name: &str| {
                env(name)
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| CniError::new(ERR_INVALID_ENV, format!("{name} is not set")))
            };
            let add_env = AddEnv {
                ifname: need("CNI_IFNAME")?,
                netns: need("CNI_NETNS")?,
            };
            add(&conf, &add_env).map(Some)
        }
        "DEL" | "CHECK" | "GC" | "STATUS" => Ok(None),
        other => Err(CniError::new(
            ERR_INVALID_ENV,
            format!("unknown CNI_COMMAND {other:?}"),
        )),
    }
}

fn parse_conf(stdin: &str) -> Result<Value, CniError> {
    serde_json::from_str(stdin).map_err(|e| {
        CniError::new(
            ERR_INVALID_CONFIG,
            format!("netconf on stdin is not JSON: {e}"),
        )
    })
}

fn main() -> ExitCode {
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let mut stdin = String::new();
    if command != "VERSION" {
        let _ = std::io::stdin().read_to_string(&mut stdin);
    }
    match run(&command, &stdin, |k| std::env::var(k).ok()) {
        Ok(Some(out)) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            let version = serde_json::from_str::<Value>(&stdin)
                .ok()
                .and_then(|c| c.get("cniVersion").cloned())
                .unwrap_or_else(|| json!("1.0.0"));
            println!(
                "{}",
                json!({"cniVersion": version, "code": e.code, "msg": e.msg})
            );
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "CNI_IFNAME" => Some("eth0".into()),
            "CNI_NETNS" => Some("/var/run/netns/cni-1".into()),
            _ => None,
        }
    }

    #[test]
    fn add_1_0_0_appends_to_prev_result() {
        let conf = r#"{"cniVersion":"1.0.0","name":"n","type":"wasishim-static",
            "address":"10.88.0.2/16",
            "prevResult":{"cniVersion":"1.0.0",
              "interfaces":[{"name":"lo","sandbox":"/var/run/netns/cni-1"}],
              "ips":[{"address":"127.0.0.1/8","interface":0}]}}"#;
        let out = run("ADD", conf, env).unwrap().unwrap();
        assert_eq!(out["cniVersion"], "1.0.0");
        assert_eq!(out["interfaces"][1]["name"], "eth0");
        assert_eq!(out["interfaces"][1]["sandbox"], "/var/run/netns/cni-1");
        assert_eq!(out["ips"][1]["address"], "10.88.0.2/16");
        assert_eq!(out["ips"][1]["interface"], 1);
        assert!(out["ips"][1].get("version").is_none());
    }

    #[test]
    fn add_0_4_0_names_ip_versions() {
        let conf = r#"{"cniVersion":"0.4.0","name":"n","type":"t","address":"10.88.0.2/16"}"#;
        let out = run("ADD", conf, env).unwrap().unwrap();
        assert_eq!(out["interfaces"][0]["name"], "eth0");
        assert_eq!(out["ips"][0]["interface"], 0);
        assert_eq!(out["ips"][0]["version"], "4");
    }

    #[test]
    fn bad_input_is_a_cni_error() {
        let no_addr = r#"{"cniVersion":"1.0.0","name":"n","type":"t"}"#;
        assert_eq!(
            run("ADD", no_addr, env).unwrap_err().code,
            ERR_INVALID_CONFIG
        );
        let bad = r#"{"cniVersion":"1.0.0","name":"n","type":"t","address":"10.88.0.2"}"#;
        assert!(run("ADD", bad, env).unwrap_err().msg.contains("CIDR"));
        let old = r#"{"cniVersion":"0.2.0","name":"n","type":"t","address":"10.88.0.2/16"}"#;
        assert_eq!(
            run("ADD", old, env).unwrap_err().code,
            ERR_INCOMPATIBLE_VERSION
        );
        let conf = r#"{"cniVersion":"1.0.0","name":"n","type":"t","address":"10.88.0.2/16"}"#;
        assert_eq!(
            run("ADD", conf, |_| None).unwrap_err().code,
            ERR_INVALID_ENV
        );
        assert!(run("BOGUS", conf, env).is_err());
    }

    #[test]
    fn del_check_version() {
        assert_eq!(run("DEL", "{}", env), Ok(None));
        assert_eq!(run("CHECK", "{}", env), Ok(None));
        let v = run("VERSION", "", env).unwrap().unwrap();
        assert!(v["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&json!("1.0.0")));
    }
}
