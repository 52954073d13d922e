//! A component's `allowed_outbound_hosts`, as the filter of its outgoing
//! HTTP requests. Each entry is `scheme://host[:port]`, as in Spin: scheme
//! `http`, `https` or `*`; host a name, an IP, `*` or `*.domain`; port a
//! number, a range `8000-8999` or `*`, the scheme's default if left out.
//! Entries for other schemes (`redis://`, `postgres://`...) allow nothing
//! over HTTP. `"{{ var }}"` templates and `self` (service chaining) are
//! refused at create. No entry: no outgoing request.
use anyhow::{bail, Result};
use hyper::Uri;

use crate::http_state::OutgoingFilter;

/// The most entries a component may list.
const MAX_ENTRIES: usize = 256;

/// One parsed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Allowed {
    scheme: Option<String>,
    host: Host,
    ports: Option<(u16, u16)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Any,
    Exact(String),
    /// `*.suffix`: the names ending in `.suffix`.
    Below(String),
}

/// The allowed outgoing HTTP destinations of one component.
#[derive(Debug, Clone, Default)]
pub(crate) struct AllowedHosts {
    entries: Vec<Allowed>,
    written: Vec<String>,
}

impl AllowedHosts {
    /// Parses the manifest's list.
    ///
    /// # Errors
    ///
    /// An entry that is not `scheme://host[:port]`, uses a template or
    /// `self`, or more than 256 entries.
    pub(crate) fn parse(list: &[String]) -> Result<AllowedHosts> {
        if list.len() > MAX_ENTRIES {
            bail!(
                "allowed_outbound_hosts has {} entries, more than {MAX_ENTRIES}",
                list.len()
            );
        }
        let mut entries = Vec::new();
        for entry in list {
            if entry.contains("{{") {
                bail!("allowed_outbound_hosts entry '{entry}' uses a template, which wasishim does not fill in: write the host");
            }
            if entry == "insecure:allow-all" {
                entries.push(Allowed {
                    scheme: None,
                    host: Host::Any,
                    ports: None,
                });
                continue;
            }
            let Some((scheme, rest)) = entry.split_once("://") else {
                bail!("allowed_outbound_hosts entry '{entry}' is not scheme://host[:port], e.g. https://example.com or http://127.0.0.1:8080");
            };
            let rest = rest.strip_suffix('/').unwrap_or(rest);
            if rest.contains('/') {
                bail!("allowed_outbound_hosts entry '{entry}' has a path: give scheme://host[:port] only");
            }
            let (host, port) = split_port(rest);
            if host == "self" || host.ends_with(".spin.internal") {
                bail!("allowed_outbound_hosts entry '{entry}': wasishim does not chain components through {host}: call the app's own address instead");
            }
            let host = match host {
                "*" => Host::Any,
                h if h.starts_with("*.") => Host::Below(h[1..].to_ascii_lowercase()),
                h if h.is_empty() || h.contains('*') => {
                    bail!("allowed_outbound_hosts entry '{entry}' has no usable host")
                }
                h => Host::Exact(h.to_ascii_lowercase()),
            };
            let ports = match port {
                Some("*") => None,
                Some(p) => Some(parse_ports(p).ok_or_else(|| {
                    anyhow::anyhow!("allowed_outbound_hosts entry '{entry}' has port '{p}': give a number, a range such as 8000-8999, or *")
                })?),
                None => match scheme {
                    "http" => Some((80, 80)),
                    "https" => Some((443, 443)),
                    "*" => bail!("allowed_outbound_hosts entry '{entry}' needs a port (a number, a range or *): * stands for several schemes"),
                    // Never an HTTP request's scheme: the port does not matter.
                    _ => None,
                },
            };
            let scheme = match scheme {
                "*" => None,
                s => Some(s.to_ascii_lowercase()),
            };
            entries.push(Allowed {
                scheme,
                host,
                ports,
            });
        }
        Ok(AllowedHosts {
            entries,
            written: list.to_vec(),
        })
    }
}

/// `host:port` or `host`, an IPv6 host in brackets.
fn split_port(rest: &str) -> (&str, Option<&str>) {
    if let Some(v6) = rest.strip_prefix('[') {
        return match v6.split_once(']') {
            Some((host, tail)) => (host, tail.strip_prefix(':')),
            None => (rest, None),
        };
    }
    match rest.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (rest, None),
    }
}

fn parse_ports(text: &str) -> Option<(u16, u16)> {
    match text.split_once('-') {
        Some((low, high)) => {
            let (low, high) = (low.parse().ok()?, high.parse().ok()?);
            (low <= high).then_some((low, high))
        }
        None => text.parse().ok().map(|p| (p, p)),
    }
}

impl OutgoingFilter for AllowedHosts {
    fn allows(&self, uri: &Uri) -> bool {
        let scheme = uri.scheme_str().unwrap_or("https").to_ascii_lowercase();
        let Some(host) = uri.host() else {
            return false;
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "http" { 80 } else { 443 });
        self.entries.iter().any(|a| {
            a.scheme.as_ref().is_none_or(|s| *s == scheme)
                && match &a.host {
                    Host::Any => true,
                    Host::Exact(h) => *h == host,
                    Host::Below(suffix) => host.ends_with(suffix.as_str()),
                }
                && a.ports
                    .is_none_or(|(low, high)| (low..=high).contains(&port))
        })
    }

    fn describe(&self) -> String {
        match self.written.is_empty() {
            true => "none: the component's allowed_outbound_hosts is empty".to_string(),
            false => format!("allowed_outbound_hosts = {:?}", self.written),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(list: &[&str]) -> AllowedHosts {
        let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        match AllowedHosts::parse(&list) {
            Ok(a) => a,
            Err(e) => panic!("{e:#}"),
        }
    }

    fn allows(a: &AllowedHosts, uri: &str) -> bool {
        match uri.parse::<Uri>() {
            Ok(uri) => a.allows(&uri),
            Err(e) => panic!("{uri}: {e}"),
        }
    }

    #[test]
    fn entries_match_scheme_host_and_port() {
        let a = allowed(&[
            "http://127.0.0.1:8089",
            "https://*.example.com",
            "*://api.test:*",
        ]);
        assert!(allows(&a, "http://127.0.0.1:8089/x"));
        assert!(!allows(&a, "http://127.0.0.1:8090/x"));
        assert!(!allows(&a, "https://127.0.0.1:8089/x"));
        assert!(allows(&a, "https://www.example.com/"));
        assert!(!allows(&a, "https://example.com/"));
        assert!(!allows(&a, "https://www.example.com:8443/"));
        assert!(allows(&a, "http://api.test:1234/"));
        assert!(!allows(&allowed(&[]), "http://127.0.0.1/"));
        assert!(allows(&allowed(&["http://h:8000-8999"]), "http://h:8500/"));
        assert!(allows(&allowed(&["http://h"]), "http://h/"));
    }

    #[test]
    fn unusable_entries_are_refused() {
        for bad in [
            "example.com",
            "https://{{ host }}",
            "http://self",
            "*://h",
            "http://h:x",
            "http://h/path",
        ] {
            assert!(
                AllowedHosts::parse(&[bad.to_string()]).is_err(),
                "{bad} accepted"
            );
        }
    }
}
