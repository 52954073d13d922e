//! Spin applications: a container whose `process.args[0]` is a `.toml` file
//! (a Spin manifest, e.g. `/spin.toml`) or a directory holding `spin.toml`
//! runs the app's HTTP trigger, as SpinKube's containerd-shim-spin does with
//! an image carrying the manifest and its components in the rootfs.
//!
//! At create: the manifest is read and checked (manifest.rs), the routes
//! made (routes.rs), the variables resolved (variables.rs), each component
//! compiled and linked with the interfaces wasishim gives Spin components
//! (host.rs; one that imports anything else is refused, naming it), the
//! key-value stores opened (key_value.rs, runtime_config.rs; the stores
//! themselves are crate::key_value's)
//! and the outbound hosts parsed (outbound.rs). At start the app is served
//! by the `wasi:http` server (http.rs), with its limits and graceful stop:
//! each request goes to the component its route names (app.rs), in a fresh
//! instance, with the `spin-*` headers Spin sets.
//!
//! Spin's OCI artifact (`spin registry push`) carries a locked app instead
//! of `spin.toml` (locked.rs), its components in wasm layers that the
//! caller reads from the image; it becomes the same app model.
//!
//! It listens on `SPIN_HTTP_LISTEN_ADDR` of the container's environment (as
//! containerd-shim-spin), else `WASISHIM_HTTP_ADDRESS`, else `0.0.0.0:80`.
mod app;
mod host;
mod key_value;
mod locked;
mod manifest;
mod outbound;
mod routes;
mod runtime_config;
mod variables;
mod wasi_keyvalue;

use std::net::SocketAddr;

use anyhow::{bail, Result};

pub(crate) use app::{load, load_locked, SpinApp};
pub use locked::{SpinLockedApp, MAX_LOCKED_APP_BYTES};

use crate::http_settings::{HttpSettings, HTTP_ADDRESS_ENV};

/// Container environment variable: the address a Spin app listens on,
/// `IP:PORT` (default [`DEFAULT_SPIN_ADDRESS`]), as containerd-shim-spin.
pub const SPIN_LISTEN_ENV: &str = "SPIN_HTTP_LISTEN_ADDR";
/// Where a Spin app listens unless the environment says otherwise.
pub const DEFAULT_SPIN_ADDRESS: &str = "0.0.0.0:80";

/// Whether `process.args[0]`, resolved to `path`, is a Spin manifest.
pub(crate) fn is_manifest(path: &str) -> bool {
    path.ends_with(".toml")
}

/// The HTTP server settings of a Spin app: those of `WASISHIM_HTTP_*`,
/// listening on [`SPIN_LISTEN_ENV`] if set.
pub(crate) fn settings(env: &[(String, String)]) -> Result<HttpSettings> {
    let mut settings = HttpSettings::from_env(env)?;
    let get = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
    };
    match (get(SPIN_LISTEN_ENV), get(HTTP_ADDRESS_ENV)) {
        (Some(address), _) => {
            let Ok(address) = address.parse::<SocketAddr>() else {
                bail!("{SPIN_LISTEN_ENV}={address} is not an address to listen on: give IP:PORT, e.g. {DEFAULT_SPIN_ADDRESS} or 127.0.0.1:3000");
            };
            settings.address = address;
        }
        (None, Some(_)) => {}
        (None, None) => {
            settings.address = SocketAddr::from(([0, 0, 0, 0], 80));
        }
    }
    Ok(settings)
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
    fn the_listen_address_is_spins() {
        let address =
            |pairs: &[(&str, &str)]| settings(&env(pairs)).map(|s| s.address.to_string()).ok();
        assert_eq!(address(&[]).as_deref(), Some("0.0.0.0:80"));
        assert_eq!(
            address(&[(SPIN_LISTEN_ENV, "127.0.0.1:3000")]).as_deref(),
            Some("127.0.0.1:3000")
        );
        assert_eq!(
            address(&[(HTTP_ADDRESS_ENV, "127.0.0.1:81")]).as_deref(),
            Some("127.0.0.1:81")
        );
        assert!(settings(&env(&[(SPIN_LISTEN_ENV, "x")])).is_err());
    }
}
