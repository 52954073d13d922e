//! The HTTP trigger's routes: which component answers a path, and the
//! `spin-*` request headers Spin sets for it.
//!
//! As Spin: a route is exact (`/exact`) or ends in a wildcard (`/hello/...`,
//! which matches `/hello` and everything below it); an exact route wins over
//! a wildcard, and the longest wildcard wins over shorter ones. A second
//! route with the same text replaces the first. Named segments (`:name`) are
//! refused at create: wasishim does not route them.
use std::net::SocketAddr;

use anyhow::{bail, Result};

/// One route of the app.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    /// As written in the manifest (`spin-raw-component-route`).
    raw: String,
    /// With a leading `/` and without a trailing one (Spin's "based" route,
    /// `spin-matched-route`).
    based: String,
    /// The path it matches: the whole path, or the prefix of a wildcard.
    path: String,
    wildcard: bool,
    component: String,
}

/// The routes of an app, made once at create.
#[derive(Debug, Clone, Default)]
pub(crate) struct Router {
    routes: Vec<Route>,
}

/// Which route a request matched, with what its headers say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RouteMatch<'a> {
    pub(crate) component: &'a str,
    raw: &'a str,
    based: &'a str,
    /// The part of the path after a wildcard's prefix (`spin-path-info`).
    path_info: String,
}

impl Router {
    /// The router of `routes`, `(route, component id)` in manifest order.
    ///
    /// # Errors
    ///
    /// A route that does not start with `/`, or has a named segment or
    /// another wildcard than a trailing `/...`.
    pub(crate) fn new(routes: &[(String, String)]) -> Result<Router> {
        let mut made: Vec<Route> = Vec::new();
        for (raw, component) in routes {
            let absolute = if raw.starts_with('/') {
                raw.clone()
            } else {
                format!("/{raw}")
            };
            let based = absolute.strip_suffix('/').unwrap_or(&absolute).to_string();
            let (path, wildcard) = match based.strip_suffix("/...") {
                Some(prefix) => (prefix.to_string(), true),
                None if based == "/..." || based == "..." => (String::new(), true),
                None => (based.clone(), false),
            };
            if path
                .split('/')
                .any(|s| s.starts_with(':') || s == "..." || s == "*")
            {
                bail!(
                    "route '{raw}' of component '{component}' has a named or inner wildcard segment, which wasishim does not route: use an exact path or one ending in /..."
                );
            }
            let route = Route {
                raw: raw.clone(),
                based,
                path,
                wildcard,
                component: component.clone(),
            };
            // As Spin: the later of two identical routes wins.
            match made.iter_mut().find(|r| r.raw == route.raw) {
                Some(old) => {
                    log::warn!(
                        "route '{raw}' is given to both '{}' and '{component}': '{component}' answers it",
                        old.component
                    );
                    *old = route;
                }
                None => made.push(route),
            }
        }
        Ok(Router { routes: made })
    }

    /// The route that answers `path` (without the query), if any.
    pub(crate) fn route(&self, path: &str) -> Option<RouteMatch<'_>> {
        let trimmed = path.strip_suffix('/').unwrap_or(path);
        let exact = self
            .routes
            .iter()
            .find(|r| !r.wildcard && r.path == trimmed);
        let best = exact.or_else(|| {
            self.routes
                .iter()
                .filter(|r| r.wildcard && under(path, &r.path))
                .max_by_key(|r| r.path.len())
        })?;
        let path_info = match best.wildcard {
            true => path[best.path.len()..].to_string(),
            false => String::new(),
        };
        Some(RouteMatch {
            component: &best.component,
            raw: &best.raw,
            based: &best.based,
            path_info,
        })
    }
}

/// Whether `path` is `prefix` or below it, segment-wise.
fn under(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

impl RouteMatch<'_> {
    /// The headers Spin gives the component, as Spin's HTTP trigger computes
    /// them: `path_and_query` of the request, its `Host` (`localhost` if it
    /// has none) and the client's address.
    pub(crate) fn headers(
        &self,
        path_and_query: &str,
        host: &str,
        client: SocketAddr,
    ) -> [(&'static str, String); 7] {
        [
            ("spin-path-info", self.path_info.clone()),
            ("spin-full-url", format!("http://{host}{path_and_query}")),
            ("spin-matched-route", self.based.to_string()),
            ("spin-base-path", "/".to_string()),
            ("spin-raw-component-route", self.raw.to_string()),
            (
                "spin-component-route",
                self.raw
                    .strip_suffix("/...")
                    .unwrap_or(self.raw)
                    .to_string(),
            ),
            ("spin-client-addr", client.to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(routes: &[(&str, &str)]) -> Router {
        let routes: Vec<(String, String)> = routes
            .iter()
            .map(|(r, c)| (r.to_string(), c.to_string()))
            .collect();
        match Router::new(&routes) {
            Ok(r) => r,
            Err(e) => panic!("{e:#}"),
        }
    }

    fn component(router: &Router, path: &str) -> Option<String> {
        router.route(path).map(|m| m.component.to_string())
    }

    #[test]
    fn exact_beats_wildcard_and_longest_wildcard_wins() {
        let r = router(&[
            ("/...", "all"),
            ("/foo/...", "foo"),
            ("/foo/bar", "bar"),
            ("/foo/bar/baz/...", "baz"),
        ]);
        assert_eq!(component(&r, "/"), Some("all".into()));
        assert_eq!(component(&r, "/x/y"), Some("all".into()));
        assert_eq!(component(&r, "/foo"), Some("foo".into()));
        assert_eq!(component(&r, "/foo/"), Some("foo".into()));
        assert_eq!(component(&r, "/foobar"), Some("all".into()));
        assert_eq!(component(&r, "/foo/bar"), Some("bar".into()));
        assert_eq!(component(&r, "/foo/bar/"), Some("bar".into()));
        assert_eq!(component(&r, "/foo/bar/x"), Some("foo".into()));
        assert_eq!(component(&r, "/foo/bar/baz/q"), Some("baz".into()));
        let exact = router(&[("/exact", "e")]);
        assert_eq!(component(&exact, "/exact/more"), None);
        assert_eq!(component(&exact, "/"), None);
    }

    #[test]
    fn the_later_of_two_identical_routes_wins() {
        let r = router(&[("/a", "first"), ("/a", "second")]);
        assert_eq!(component(&r, "/a"), Some("second".into()));
    }

    #[test]
    fn headers_are_spins() {
        let r = router(&[("/foo/...", "foo")]);
        let Some(m) = r.route("/foo/bar") else {
            panic!("no match")
        };
        let client: SocketAddr = ([127, 0, 0, 1], 8777).into();
        let headers = m.headers("/foo/bar?key1=value1", "fermyon.dev", client);
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            get("spin-full-url"),
            Some("http://fermyon.dev/foo/bar?key1=value1")
        );
        assert_eq!(get("spin-path-info"), Some("/bar"));
        assert_eq!(get("spin-matched-route"), Some("/foo/..."));
        assert_eq!(get("spin-base-path"), Some("/"));
        assert_eq!(get("spin-raw-component-route"), Some("/foo/..."));
        assert_eq!(get("spin-component-route"), Some("/foo"));
        assert_eq!(get("spin-client-addr"), Some("127.0.0.1:8777"));
        let Some(m) = r.route("/foo") else {
            panic!("no match")
        };
        assert_eq!(m.path_info, "");
        let Some(m) = r.route("/foo/") else {
            panic!("no match")
        };
        assert_eq!(m.path_info, "/");
    }

    #[test]
    fn named_segments_are_refused() {
        let routes = vec![("/users/:id".to_string(), "u".to_string())];
        let e = Router::new(&routes)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("named or inner wildcard"), "{e}");
    }
}
