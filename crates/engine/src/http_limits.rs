//! What an HTTP server guest's clients may hold of the shim: how long a
//! request header and an idle keep-alive connection may take, how many
//! connections may be open and how many requests in flight at once, and
//! (optionally) how long the guest may take over a request. Beyond a
//! cap a client gets 503 with `Retry-After` at once; nothing grows with the
//! number or slowness of clients. Each is set per container by a
//! `WASISHIM_HTTP_*` variable of its environment, like http_settings.rs.
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use hyper::{Response, StatusCode};
use tokio::net::TcpStream;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::http_body::plain;

/// Container env variable: seconds a client has to send a request's header,
/// counted from the connection's start or the previous response.
pub const HTTP_HEADER_TIMEOUT_ENV: &str = "WASISHIM_HTTP_HEADER_TIMEOUT_SECONDS";
/// Container env variable: seconds a keep-alive connection may stay open
/// with no request in flight.
pub const HTTP_IDLE_TIMEOUT_ENV: &str = "WASISHIM_HTTP_IDLE_TIMEOUT_SECONDS";
/// Container env variable: connections open at once; more get 503.
pub const HTTP_MAX_CONNECTIONS_ENV: &str = "WASISHIM_HTTP_MAX_CONNECTIONS";
/// Container env variable: requests in flight at once (each has its own
/// instance); more get 503.
pub const HTTP_MAX_REQUESTS_ENV: &str = "WASISHIM_HTTP_MAX_REQUESTS";
/// Container env variable: seconds the guest may take over one request,
/// from its arrival until the response is written; then its instance is
/// interrupted (at the next epoch tick) and the client gets 504, or, if the
/// response had begun, a cut-off body. Unset, `0` or `off`: no deadline.
pub const HTTP_REQUEST_TIMEOUT_ENV: &str = "WASISHIM_HTTP_REQUEST_TIMEOUT_SECONDS";

/// Defaults: 10 s for a header, 60 s idle, 1000 connections, 100 requests in
/// flight (the per-node pool's share of memories is 90 per container, and a
/// component request takes one or more).
pub const DEFAULT_HTTP_HEADER_TIMEOUT_SECONDS: u64 = 10;
pub const DEFAULT_HTTP_IDLE_TIMEOUT_SECONDS: u64 = 60;
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 1_000;
pub const DEFAULT_HTTP_MAX_REQUESTS: usize = 100;

/// The longest header or idle timeout accepted (a day): the server adds a
/// timeout to the current time, which a larger value could overflow.
pub(crate) const MAX_HTTP_TIMEOUT_SECONDS: u64 = 24 * 60 * 60;

/// Seconds a client is told to wait before retrying after a 503.
const RETRY_AFTER_SECONDS: u32 = 1;

/// An HTTP server's limits against its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HttpLimits {
    pub(crate) header_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) max_requests: usize,
    /// [`HTTP_REQUEST_TIMEOUT_ENV`]; `None`: no deadline.
    pub(crate) request_timeout: Option<Duration>,
}

impl HttpLimits {
    /// Reads the limits with `get`, which looks a variable up in the
    /// container's environment.
    ///
    /// # Errors
    ///
    /// Names the variable if one is not a positive whole number.
    pub(crate) fn from_env<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<HttpLimits> {
        let number = |name: &str, default: u64| -> Result<u64> {
            match get(name) {
                None => Ok(default),
                Some(v) => match v.parse::<u64>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => bail!("{name}={v} is not a positive whole number: give e.g. {default}, or leave it unset for {default}"),
                },
            }
        };
        let seconds = |name: &str, default: u64| -> Result<Duration> {
            let n = number(name, default)?;
            if n > MAX_HTTP_TIMEOUT_SECONDS {
                bail!("{name}={n} is more than {MAX_HTTP_TIMEOUT_SECONDS} seconds (a day): give e.g. {default}, or leave it unset for {default}");
            }
            Ok(Duration::from_secs(n))
        };
        let count = |name: &str, default: usize| -> Result<usize> {
            number(name, default as u64).map(|n| usize::try_from(n).unwrap_or(usize::MAX))
        };
        Ok(HttpLimits {
            header_timeout: seconds(HTTP_HEADER_TIMEOUT_ENV, DEFAULT_HTTP_HEADER_TIMEOUT_SECONDS)?,
            idle_timeout: seconds(HTTP_IDLE_TIMEOUT_ENV, DEFAULT_HTTP_IDLE_TIMEOUT_SECONDS)?,
            max_connections: count(HTTP_MAX_CONNECTIONS_ENV, DEFAULT_HTTP_MAX_CONNECTIONS)?,
            max_requests: count(HTTP_MAX_REQUESTS_ENV, DEFAULT_HTTP_MAX_REQUESTS)?,
            request_timeout: match get(HTTP_REQUEST_TIMEOUT_ENV) {
                None | Some("0") => None,
                Some(v) if v.eq_ignore_ascii_case("off") => None,
                Some(v) => match v.parse::<u64>() {
                    Ok(n) => Some(Duration::from_secs(n)),
                    Err(_) => bail!("{HTTP_REQUEST_TIMEOUT_ENV}={v} is not a whole number of seconds: give e.g. 30, or off (the default) for no deadline"),
                },
            },
        })
    }
}

/// The 504 of a request whose guest went past [`HttpLimits::request_timeout`].
pub(crate) fn deadline_passed(timeout: Duration) -> Response<HyperOutgoingBody> {
    plain(
        StatusCode::GATEWAY_TIMEOUT,
        format!(
            "the request took longer than {} s, this server's limit ({HTTP_REQUEST_TIMEOUT_ENV}): its handler was stopped\n",
            timeout.as_secs()
        ),
    )
}

/// Turns away a connection above [`HttpLimits::max_connections`]: one
/// non-blocking write of a 503 (it fits any socket buffer), then close.
/// Written to the socket directly: tokio's `try_write` answers WouldBlock
/// until its driver has seen the new socket writable, which under load it
/// has not yet, and the client then got a bare close.
pub(crate) fn refuse_connection(stream: &TcpStream, max: usize) {
    let body = format!(
        "too many connections: this server accepts {max} at once ({HTTP_MAX_CONNECTIONS_ENV})\n"
    );
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nretry-after: {RETRY_AFTER_SECONDS}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    if let Err(e) = nix::unistd::write(stream, response.as_bytes()) {
        log::debug!("HTTP connection above the cap: cannot say so: {e}");
    }
}

/// The 503 of a request above [`HttpLimits::max_requests`].
pub(crate) fn too_many_requests(max: usize) -> Response<HyperOutgoingBody> {
    let mut response = plain(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("too many requests in flight: this server runs {max} at once ({HTTP_MAX_REQUESTS_ENV})\n"),
    );
    response.headers_mut().insert(
        hyper::header::RETRY_AFTER,
        hyper::header::HeaderValue::from(RETRY_AFTER_SECONDS),
    );
    response
}

/// The 503 of a request whose store would take the container past its
/// memory limit (`limit`), summed with the requests in flight.
pub(crate) fn no_memory_for_request(limit: Option<u64>) -> Response<HyperOutgoingBody> {
    let limit = limit.map_or_else(|| "its".to_string(), |l| format!("its {l}-byte"));
    let mut response = plain(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the requests in flight take all of this container's memory ({limit} limit counts each request's memory and stack): retry later, or raise the container's memory limit\n"),
    );
    response.headers_mut().insert(
        hyper::header::RETRY_AFTER,
        hyper::header::HeaderValue::from(RETRY_AFTER_SECONDS),
    );
    response
}

/// The requests a server has in flight, up to its cap.
pub(crate) struct InFlight {
    count: Arc<AtomicUsize>,
    max: usize,
}

/// One request in flight; leaves when dropped.
pub(crate) struct InFlightRequest {
    count: Arc<AtomicUsize>,
}

impl InFlight {
    pub(crate) fn new(max: usize) -> InFlight {
        InFlight {
            count: Arc::default(),
            max,
        }
    }

    /// The cap.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// A place for one more request, `None` if the cap is reached.
    pub(crate) fn enter(&self) -> Option<InFlightRequest> {
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlightRequest {
                count: self.count.clone(),
            })
    }
}

impl Drop for InFlightRequest {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// When a connection last had a request in flight, to close it once idle
/// for [`HttpLimits::idle_timeout`].
pub(crate) struct Activity {
    started: Instant,
    active: AtomicUsize,
    /// Milliseconds after `started` the last request ended.
    last_end_ms: AtomicU64,
}

/// A request of a connection; marks its end when dropped.
pub(crate) struct Busy {
    activity: Arc<Activity>,
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            started: Instant::now(),
            active: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(0),
        })
    }

    pub(crate) fn begin(self: &Arc<Self>) -> Busy {
        self.active.fetch_add(1, Ordering::AcqRel);
        Busy {
            activity: self.clone(),
        }
    }

    /// How long the connection has had no request in flight, `None` while
    /// one is.
    pub(crate) fn idle_for(&self) -> Option<Duration> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_end_ms.load(Ordering::Acquire));
        Some(self.started.elapsed().saturating_sub(last))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let now = u64::try_from(self.activity.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.activity.last_end_ms.store(now, Ordering::Release);
        self.activity.active.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_come_from_the_environment() {
        let none = |_: &str| None;
        let Ok(defaults) = HttpLimits::from_env(none) else {
            panic!("defaults refused")
        };
        assert_eq!(defaults.header_timeout, Duration::from_secs(10));
        assert_eq!(defaults.idle_timeout, Duration::from_secs(60));
        assert_eq!(
            (defaults.max_connections, defaults.max_requests),
            (1000, 100)
        );
        let set = |name: &str| (name == HTTP_MAX_REQUESTS_ENV).then_some("3");
        assert!(matches!(HttpLimits::from_env(set), Ok(l) if l.max_requests == 3));
        assert_eq!(defaults.request_timeout, None);
        for (value, timeout) in [("30", Some(30)), ("0", None), ("OFF", None)] {
            let set = |name: &str| (name == HTTP_REQUEST_TIMEOUT_ENV).then_some(value);
            let limits = HttpLimits::from_env(set).ok().map(|l| l.request_timeout);
            assert_eq!(limits, Some(timeout.map(Duration::from_secs)), "{value}");
        }
        let bad = |name: &str| (name == HTTP_REQUEST_TIMEOUT_ENV).then_some("1.5");
        let error = HttpLimits::from_env(bad).err().map(|e| e.to_string());
        assert_eq!(error.as_deref(), Some("WASISHIM_HTTP_REQUEST_TIMEOUT_SECONDS=1.5 is not a whole number of seconds: give e.g. 30, or off (the default) for no deadline"));
        let zero = |name: &str| (name == HTTP_IDLE_TIMEOUT_ENV).then_some("0");
        let error = HttpLimits::from_env(zero).err().map(|e| e.to_string());
        assert_eq!(error.as_deref(), Some("WASISHIM_HTTP_IDLE_TIMEOUT_SECONDS=0 is not a positive whole number: give e.g. 60, or leave it unset for 60"));
    }

    /// hyper adds the header timeout to the current time: the largest u64
    /// of seconds panicked there, on the server's first connection (found
    /// with the config_json fuzz target's check that every timeout can be
    /// added to now; seed fuzz/seeds/config_json/huge-timeout.json).
    #[test]
    fn timeouts_are_at_most_a_day() {
        for name in [HTTP_HEADER_TIMEOUT_ENV, HTTP_IDLE_TIMEOUT_ENV] {
            for huge in ["18446744073709551615", "9223372036854775807", "86401"] {
                let get = |n: &str| (n == name).then_some(huge);
                match HttpLimits::from_env(get) {
                    Ok(l) => panic!("{name}={huge} accepted: {l:?}"),
                    Err(e) => assert!(
                        e.to_string().starts_with(&format!(
                            "{name}={huge} is more than 86400 seconds (a day): "
                        )),
                        "{e}"
                    ),
                }
            }
            let day = |n: &str| (n == name).then_some("86400");
            let Ok(limits) = HttpLimits::from_env(day) else {
                panic!("{name}=86400 refused")
            };
            for t in [limits.header_timeout, limits.idle_timeout] {
                assert!(Instant::now().checked_add(t).is_some());
            }
        }
    }

    #[test]
    fn requests_in_flight_are_capped_and_leave() {
        let in_flight = InFlight::new(2);
        let a = in_flight.enter();
        let b = in_flight.enter();
        assert!(a.is_some() && b.is_some());
        assert!(in_flight.enter().is_none());
        drop(a);
        assert!(in_flight.enter().is_some());
    }
}
