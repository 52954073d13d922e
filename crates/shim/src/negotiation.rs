//! containerd version negotiation: which task API name to serve and how to
//! answer `start` so that the calling containerd understands the reply.
//!
//! containerd 1.6 and 1.7 read `start`'s stdout as a bare address and speak
//! `containerd.task.v2.Task` (1.7 also accepts JSON, but rejects a version
//! above 2). containerd 2.x passes `MAX_SHIM_VERSION=3` and accepts JSON naming
//! task API version 3. The service is served under both names, so only the
//! reply's form depends on the caller.

/// Service names the task service is registered under.
pub const TASK_SERVICE_V2: &str = "containerd.task.v2.Task";
pub const TASK_SERVICE_V3: &str = "containerd.task.v3.Task";

/// Environment variable through which containerd 1.7+ says which bootstrap
/// version it accepts.
pub const MAX_SHIM_VERSION_ENV: &str = "MAX_SHIM_VERSION";

/// The reply to `start` for a containerd that accepts bootstrap versions up
/// to `max_shim_version` (`None`: containerd 1.6, which sets nothing).
pub fn start_reply(address: &str, max_shim_version: Option<&str>) -> String {
    let max = max_shim_version
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(0);
    if max >= 3 {
        // Built by hand to keep serde out of the start path; the address is
        // a path we generated (hex digest), so it needs no JSON escaping.
        format!(r#"{{"version":3,"address":"{address}","protocol":"ttrpc"}}"#)
    } else {
        address.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_1_6_gets_a_bare_address() {
        assert_eq!(start_reply("unix:///run/x", None), "unix:///run/x");
    }

    #[test]
    fn containerd_1_7_gets_a_bare_address() {
        assert_eq!(start_reply("unix:///run/x", Some("2")), "unix:///run/x");
    }

    #[test]
    fn containerd_2_gets_version_3_json() {
        let reply = start_reply("unix:///run/x", Some("3"));
        let parsed: serde_json::Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(parsed["version"], 3);
        assert_eq!(parsed["address"], "unix:///run/x");
        assert_eq!(parsed["protocol"], "ttrpc");
    }

    #[test]
    fn garbage_version_falls_back_to_bare_address() {
        assert_eq!(start_reply("unix:///x", Some("three")), "unix:///x");
    }
}
