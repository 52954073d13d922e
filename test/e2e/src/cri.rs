//! Playing kubelet: containerd's CRI plugin driven through its gRPC API
//! (`runtime.v1`), for instances started with
//! [`PrivateContainerd::start_with_cri`].
//!
//! ```no_run
//! use wasishim_e2e::{cri, PrivateContainerd};
//! let cd = PrivateContainerd::start_with_cri("2.1.9")?;
//! let cri = cri::Client::connect(&cd)?;
//! let image = cri::import(&cd, &wasishim_e2e::fixture_image("hello", "wasip1/hello.wasm")?)?;
//! let pod = cri.run_pod(cri.pod_config("hello"))?;
//! let id = cri.run_container(&pod, cri.container_config("hello", &image))?;
//! let status = cri.wait_exited(&id, std::time::Duration::from_secs(10))?;
//! assert_eq!(status.exit_code, 0);
//! cri.remove_pod(&pod.id)?;
//! cd.assert_no_leaks();
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! The client is synchronous: it owns a single-threaded tokio runtime and
//! blocks on each call (each limited to [`CALL_TIMEOUT`]).
//!
//! The pieces: configuration in `cri_config.rs`, the client in
//! `cri_client.rs`, logs in `cri_log.rs`, network probes in `probes.rs`;
//! this module gathers them under one name.

pub use crate::cri_client::{api, netns_from_info, Client, Pod, CALL_TIMEOUT};
pub use crate::cri_config::{
    allow_plain_http_registry, cgroup_parent, cni_bin_dir, cni_conf_dir, cni_conflist,
    cni_plugin_path, cri_plugin_problems, import, loopback_plugin_path, pause_image, pod_log_root,
    task_state_dir, with_args, with_env, with_resources, with_shared_pid, CNI_NETWORK, CNI_PLUGIN,
    HANDLER, PAUSE_IMAGE, POD_ADDRESS,
};
pub use crate::cri_log::{parse_log, wait_log_line, LogLine};
pub use crate::probes::{in_netns, read_from, stream_probe, stream_stdin};
