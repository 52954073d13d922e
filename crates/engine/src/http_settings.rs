//! An HTTP component's settings, from the container's environment
//! (`WASISHIM_HTTP_*`; see [`HTTP_ADDRESS_ENV`] and the others).
use std::net::SocketAddr;

use anyhow::{bail, Result};

use crate::http_limits::HttpLimits;

/// Container environment variable: the address an HTTP component listens
/// on, `IP:PORT` (default [`DEFAULT_HTTP_ADDRESS`]). It is bound inside the
/// container's network namespace.
pub const HTTP_ADDRESS_ENV: &str = "WASISHIM_HTTP_ADDRESS";
/// Where an HTTP component listens unless [`HTTP_ADDRESS_ENV`] says otherwise.
pub const DEFAULT_HTTP_ADDRESS: &str = "0.0.0.0:8080";
/// Container environment variable: `off` refuses the outgoing HTTP requests
/// of an HTTP component (`wasi:http/outgoing-handler` then fails with the
/// error code `HTTP-request-denied`); `on`, the default, allows them.
pub const HTTP_OUTGOING_ENV: &str = "WASISHIM_HTTP_OUTGOING";
/// Container environment variable: the largest request body an HTTP
/// component is given, in bytes (default [`DEFAULT_HTTP_MAX_BODY_BYTES`]);
/// larger requests get 413.
pub const HTTP_MAX_BODY_BYTES_ENV: &str = "WASISHIM_HTTP_MAX_BODY_BYTES";
/// The request body limit unless [`HTTP_MAX_BODY_BYTES_ENV`] says otherwise: 10 MiB.
pub const DEFAULT_HTTP_MAX_BODY_BYTES: u64 = 10 << 20;

/// An HTTP server's settings, from the container's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpSettings {
    pub(crate) address: SocketAddr,
    pub(crate) outgoing: bool,
    pub(crate) max_body_bytes: u64,
    pub(crate) access_log: bool,
    /// Timeouts and caps against the server's clients.
    pub(crate) limits: HttpLimits,
}

impl HttpSettings {
    /// Reads `WASISHIM_HTTP_ADDRESS`, `WASISHIM_HTTP_OUTGOING`,
    /// `WASISHIM_HTTP_MAX_BODY_BYTES` and the limits of http_limits.rs from the container's `env` (the last
    /// value of each wins, as in a process environment).
    ///
    /// # Errors
    ///
    /// Fails, naming the variable and what it accepts, if one is set to
    /// something unusable.
    pub(crate) fn from_env(env: &[(String, String)]) -> Result<HttpSettings> {
        let get = |name: &str| {
            env.iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.trim())
        };
        let address = get(HTTP_ADDRESS_ENV).unwrap_or(DEFAULT_HTTP_ADDRESS);
        let Ok(address) = address.parse::<SocketAddr>() else {
            bail!("{HTTP_ADDRESS_ENV}={address} is not an address to listen on: give IP:PORT, e.g. {DEFAULT_HTTP_ADDRESS} or 127.0.0.1:3000");
        };
        let outgoing = match get(HTTP_OUTGOING_ENV) {
            None => true,
            Some(v) if v.eq_ignore_ascii_case("on") => true,
            Some(v) if v.eq_ignore_ascii_case("off") => false,
            Some(v) => bail!("{HTTP_OUTGOING_ENV}={v} is neither on nor off: set it to off to refuse the component's outgoing HTTP requests, or leave it unset"),
        };
        let max_body_bytes = match get(HTTP_MAX_BODY_BYTES_ENV) {
            None => DEFAULT_HTTP_MAX_BODY_BYTES,
            Some(v) => match v.parse::<u64>() {
                Ok(n) => n,
                Err(_) => bail!("{HTTP_MAX_BODY_BYTES_ENV}={v} is not a number of bytes: give e.g. 1048576 for 1 MiB, or leave it unset for 10 MiB"),
            },
        };
        let access_log = crate::access_log::enabled(get(crate::access_log::HTTP_ACCESS_LOG_ENV))?;
        let limits = HttpLimits::from_env(get)?;
        Ok(HttpSettings {
            address,
            outgoing,
            max_body_bytes,
            access_log,
            limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn settings_come_from_the_environment() {
        let Ok(s) = HttpSettings::from_env(&env(&[("PATH", "/")])) else {
            panic!("defaults refused")
        };
        assert_eq!(s.address, SocketAddr::from(([0, 0, 0, 0], 8080)));
        assert!(s.outgoing);
        assert_eq!(s.max_body_bytes, 10 << 20);

        let Ok(s) = HttpSettings::from_env(&env(&[
            (HTTP_ADDRESS_ENV, "127.0.0.1:1"),
            (HTTP_ADDRESS_ENV, "127.0.0.1:3000"),
            (HTTP_OUTGOING_ENV, "OFF"),
            (HTTP_MAX_BODY_BYTES_ENV, "1024"),
        ])) else {
            panic!("valid settings refused")
        };
        assert_eq!(s.address, SocketAddr::from(([127, 0, 0, 1], 3000)));
        assert!(!s.outgoing);
        assert_eq!(s.max_body_bytes, 1024);
    }

    #[test]
    fn bad_settings_name_the_variable() {
        let error = |pairs: &[(&str, &str)]| {
            HttpSettings::from_env(&env(pairs))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert_eq!(
            error(&[(HTTP_ADDRESS_ENV, "localhost")]),
            "WASISHIM_HTTP_ADDRESS=localhost is not an address to listen on: give IP:PORT, e.g. 0.0.0.0:8080 or 127.0.0.1:3000"
        );
        assert!(error(&[(HTTP_OUTGOING_ENV, "maybe")])
            .starts_with("WASISHIM_HTTP_OUTGOING=maybe is neither on nor off"));
        assert!(error(&[(HTTP_MAX_BODY_BYTES_ENV, "10M")])
            .starts_with("WASISHIM_HTTP_MAX_BODY_BYTES=10M is not a number of bytes"));
    }
}
