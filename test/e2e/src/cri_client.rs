//! A synchronous CRI client of one instance, playing kubelet: pods,
//! containers, images, stats, exec and attach, each call limited to
//! [`CALL_TIMEOUT`]. It owns a single-threaded tokio runtime and blocks on
//! each call.

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hyper_util::rt::TokioIo;
pub use k8s_cri::v1 as api;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    AttachRequest, ContainerConfig, ContainerMetadata, ContainerState, ContainerStats,
    ContainerStatsFilter, ContainerStatsRequest, ContainerStatus, ContainerStatusRequest,
    CreateContainerRequest, ExecRequest, ExecSyncRequest, ExecSyncResponse, ImageSpec,
    ImageStatusRequest, LinuxContainerConfig, LinuxContainerResources, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, ListContainerStatsRequest, ListContainersRequest,
    ListPodSandboxRequest, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
    PodSandboxStatusRequest, PodSandboxStatusResponse, RemoveContainerRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
    StopPodSandboxRequest, VersionRequest, VersionResponse,
};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::containerd::PrivateContainerd;
use crate::cri_config::{cgroup_parent, pod_log_root, HANDLER};

/// How long one CRI call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A pod sandbox that [`Client::run_pod`] started.
#[derive(Debug, Clone)]
pub struct Pod {
    /// The sandbox ID.
    pub id: String,
    /// The config it was started with (CreateContainer repeats it).
    pub config: PodSandboxConfig,
    /// Its network namespace, from the sandbox's verbose status.
    pub netns: Option<PathBuf>,
}

impl Pod {
    /// The pod's log directory.
    pub fn log_dir(&self) -> PathBuf {
        PathBuf::from(&self.config.log_directory)
    }
}

/// A synchronous CRI client of one instance.
pub struct Client<'a> {
    cd: &'a PrivateContainerd,
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

/// Turns a gRPC failure into an error whose text starts with the call and
/// carries the server's message (which tests search).
fn status_err(call: &str, s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("CRI {call} failed: {} ({:?})", s.message(), s.code())
}

macro_rules! call {
    ($self:ident, $svc:ident, $method:ident, $req:expr) => {{
        let mut svc = $self.$svc.clone();
        let req = $req;
        $self.rt.block_on(async move {
            match tokio::time::timeout(CALL_TIMEOUT, svc.$method(req)).await {
                Ok(Ok(r)) => Ok(r.into_inner()),
                Ok(Err(s)) => Err(status_err(stringify!($method), s)),
                Err(_) => Err(anyhow::anyhow!(
                    "CRI {} took longer than {:?}",
                    stringify!($method),
                    CALL_TIMEOUT
                )),
            }
        })
    }};
}

impl<'a> Client<'a> {
    /// Connects to the instance's socket (no request is sent yet).
    pub fn connect(cd: &'a PrivateContainerd) -> Result<Client<'a>> {
        if !cd.has_cri() {
            bail!("containerd instance was started without CRI (use start_with_cri)");
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let path = cd.address();
        let channel = rt.block_on(async move {
            Endpoint::try_from("http://[::]:50051")?
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
                .await
        })?;
        Ok(Client {
            cd,
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    /// `Version`.
    pub fn version(&self) -> Result<VersionResponse> {
        call!(self, runtime, version, VersionRequest::default())
    }

    /// Whether CRI sees `image` (ImageService `ImageStatus`).
    pub fn has_image(&self, image: &str) -> Result<bool> {
        let r = call!(
            self,
            images,
            image_status,
            ImageStatusRequest {
                image: Some(ImageSpec {
                    image: image.to_string(),
                    ..Default::default()
                }),
                verbose: false,
            }
        )?;
        Ok(r.image.is_some())
    }

    /// ImageService `PullImage`; returns the image reference (its id). The
    /// instance sends every registry to `127.0.0.1:1`, so this fails but for
    /// registries allowed by [`allow_plain_http_registry`].
    pub fn pull_image(&self, image: &str) -> Result<String> {
        Ok(call!(
            self,
            images,
            pull_image,
            api::PullImageRequest {
                image: Some(ImageSpec {
                    image: image.to_string(),
                    ..Default::default()
                }),
                ..Default::default()
            }
        )?
        .image_ref)
    }

    /// A pod config as kubelet would send it for pod `name` in namespace
    /// `default`: log directory `<dir>/pods/<name>`, cgroup parent
    /// [`cgroup_parent`], pod network namespace, own PID namespace per
    /// container.
    pub fn pod_config(&self, name: &str) -> PodSandboxConfig {
        let log_dir = pod_log_root(self.cd).join(name);
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_string(),
                uid: format!("uid-{name}"),
                namespace: "default".to_string(),
                attempt: 0,
            }),
            hostname: name.to_string(),
            log_directory: log_dir.display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: cgroup_parent(self.cd),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: api::NamespaceMode::Pod as i32,
                        pid: api::NamespaceMode::Container as i32,
                        ipc: api::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// `RunPodSandbox` with runtime handler [`HANDLER`]. Notes the pod for
    /// the leak check and records its network namespace.
    pub fn run_pod(&self, config: PodSandboxConfig) -> Result<Pod> {
        self.run_pod_with_handler(config, HANDLER)
    }

    /// `RunPodSandbox` with runtime handler `handler` (`runc` for the
    /// benchmark's baseline), as [`run_pod`](Self::run_pod) does.
    pub fn run_pod_with_handler(&self, config: PodSandboxConfig, handler: &str) -> Result<Pod> {
        fs::create_dir_all(&config.log_directory)?;
        let r = call!(
            self,
            runtime,
            run_pod_sandbox,
            RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: handler.to_string(),
            }
        )?;
        let id = r.pod_sandbox_id;
        self.cd.note_pod(&id);
        let netns = self.pod_netns(&id).ok();
        if let Some(ns) = &netns {
            let mut f = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.cd.dir().join("netns-paths"))?;
            writeln!(f, "{}", ns.display())?;
        }
        Ok(Pod { id, config, netns })
    }

    /// `PodSandboxStatus`, verbose (with the `info` map).
    pub fn pod_status(&self, id: &str) -> Result<PodSandboxStatusResponse> {
        call!(
            self,
            runtime,
            pod_sandbox_status,
            PodSandboxStatusRequest {
                pod_sandbox_id: id.to_string(),
                verbose: true,
            }
        )
    }

    /// The pod's network namespace path, from its verbose status: the
    /// sandbox's `runtimeSpec.linux.namespaces` (network), else the
    /// `NetNSPath` CRI records in its metadata.
    pub fn pod_netns(&self, id: &str) -> Result<PathBuf> {
        let status = self.pod_status(id)?;
        let info = status
            .info
            .get("info")
            .context("PodSandboxStatus has no verbose info")?;
        netns_from_info(info)
            .with_context(|| format!("no network namespace in sandbox info {info}"))
    }

    /// `ListPodSandbox` (all pods).
    pub fn list_pods(&self) -> Result<Vec<api::PodSandbox>> {
        Ok(call!(
            self,
            runtime,
            list_pod_sandbox,
            ListPodSandboxRequest::default()
        )?
        .items)
    }

    /// `StopPodSandbox`.
    pub fn stop_pod(&self, id: &str) -> Result<()> {
        call!(
            self,
            runtime,
            stop_pod_sandbox,
            StopPodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            }
        )
        .map(drop)
    }

    /// `StopPodSandbox` then `RemovePodSandbox`.
    pub fn remove_pod(&self, id: &str) -> Result<()> {
        self.stop_pod(id)?;
        call!(
            self,
            runtime,
            remove_pod_sandbox,
            RemovePodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            }
        )
        .map(drop)
    }

    /// A container config for `name` from `image`, logging to `<name>.log`
    /// in the pod's log directory. Set `command`/`args`/`envs`/`linux`
    /// on the result as needed (see [`with_args`](crate::cri::with_args), [`with_env`](crate::cri::with_env),
    /// [`with_resources`](crate::cri::with_resources)).
    pub fn container_config(&self, name: &str, image: &str) -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.to_string(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            log_path: format!("{name}.log"),
            linux: Some(LinuxContainerConfig::default()),
            ..Default::default()
        }
    }

    /// `CreateContainer` in `pod`; returns the container ID. As kubelet
    /// does, the container gets the pod's namespace options (network, PID,
    /// IPC) unless `config` sets its own.
    pub fn create_container(&self, pod: &Pod, mut config: ContainerConfig) -> Result<String> {
        let pod_options = pod
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone());
        let linux = config.linux.get_or_insert_with(Default::default);
        let security = linux.security_context.get_or_insert_with(Default::default);
        if security.namespace_options.is_none() {
            security.namespace_options = pod_options;
        }
        Ok(call!(
            self,
            runtime,
            create_container,
            CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            }
        )?
        .container_id)
    }

    /// The error of a container that must not run: CreateContainer's, or
    /// StartContainer's (the container is then removed). Panics if it starts.
    pub fn refused(&self, pod: &Pod, config: ContainerConfig) -> String {
        let name = config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let err = match self.create_container(pod, config) {
            Err(e) => e,
            Ok(id) => match self.start_container(&id) {
                Err(e) => {
                    self.remove_container(&id).unwrap();
                    e
                }
                Ok(()) => panic!("{name} was started"),
            },
        };
        format!("{err:#}")
    }

    /// `StartContainer`.
    pub fn start_container(&self, id: &str) -> Result<()> {
        call!(
            self,
            runtime,
            start_container,
            StartContainerRequest {
                container_id: id.to_string(),
            }
        )
        .map(drop)
    }

    /// `CreateContainer` then `StartContainer`; returns the container ID.
    pub fn run_container(&self, pod: &Pod, config: ContainerConfig) -> Result<String> {
        let id = self.create_container(pod, config)?;
        self.start_container(&id)?;
        Ok(id)
    }

    /// `StopContainer` with a grace period of `timeout_secs` (0: SIGKILL at once).
    pub fn stop_container(&self, id: &str, timeout_secs: i64) -> Result<()> {
        call!(
            self,
            runtime,
            stop_container,
            StopContainerRequest {
                container_id: id.to_string(),
                timeout: timeout_secs,
            }
        )
        .map(drop)
    }

    /// `RemoveContainer`.
    pub fn remove_container(&self, id: &str) -> Result<()> {
        call!(
            self,
            runtime,
            remove_container,
            RemoveContainerRequest {
                container_id: id.to_string(),
            }
        )
        .map(drop)
    }

    /// `ListContainers`, of one pod or all.
    pub fn list_containers(&self, pod: Option<&str>) -> Result<Vec<api::Container>> {
        Ok(call!(
            self,
            runtime,
            list_containers,
            ListContainersRequest {
                filter: pod.map(|p| api::ContainerFilter {
                    pod_sandbox_id: p.to_string(),
                    ..Default::default()
                }),
            }
        )?
        .containers)
    }

    /// `ContainerStatus`.
    pub fn container_status(&self, id: &str) -> Result<ContainerStatus> {
        call!(
            self,
            runtime,
            container_status,
            ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            }
        )?
        .status
        .with_context(|| format!("ContainerStatus of {id} has no status"))
    }

    /// Polls `ContainerStatus` until the container is in `state`.
    pub fn wait_state(
        &self,
        id: &str,
        state: ContainerState,
        limit: Duration,
    ) -> Result<ContainerStatus> {
        let start = Instant::now();
        loop {
            let status = self.container_status(id)?;
            if status.state == state as i32 {
                return Ok(status);
            }
            if start.elapsed() > limit {
                bail!(
                    "container {id} is {:?}, not {state:?}, after {:?}: {status:?}",
                    ContainerState::try_from(status.state),
                    start.elapsed()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`wait_state`](Self::wait_state) for `CONTAINER_EXITED`.
    pub fn wait_exited(&self, id: &str, limit: Duration) -> Result<ContainerStatus> {
        self.wait_state(id, ContainerState::ContainerExited, limit)
    }

    /// `UpdateContainerResources` with `resources` (what `kubectl`'s
    /// in-place resize sends).
    pub fn update_resources(&self, id: &str, resources: LinuxContainerResources) -> Result<()> {
        call!(
            self,
            runtime,
            update_container_resources,
            api::UpdateContainerResourcesRequest {
                container_id: id.to_string(),
                linux: Some(resources),
                ..Default::default()
            }
        )
        .map(drop)
    }

    /// `ContainerStats`.
    pub fn container_stats(&self, id: &str) -> Result<ContainerStats> {
        call!(
            self,
            runtime,
            container_stats,
            ContainerStatsRequest {
                container_id: id.to_string(),
            }
        )?
        .stats
        .with_context(|| format!("ContainerStats of {id} has no stats"))
    }

    /// `ListContainerStats` of one pod.
    pub fn list_container_stats(&self, pod: &str) -> Result<Vec<ContainerStats>> {
        Ok(call!(
            self,
            runtime,
            list_container_stats,
            ListContainerStatsRequest {
                filter: Some(ContainerStatsFilter {
                    pod_sandbox_id: pod.to_string(),
                    ..Default::default()
                }),
            }
        )?
        .stats)
    }

    /// `ExecSync` with a 10 s timeout.
    pub fn exec_sync(&self, id: &str, cmd: &[&str]) -> Result<ExecSyncResponse> {
        call!(
            self,
            runtime,
            exec_sync,
            ExecSyncRequest {
                container_id: id.to_string(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 10,
            }
        )
    }

    /// `Exec` (stdout and stderr, no stdin or tty); returns the streaming URL.
    pub fn exec(&self, id: &str, cmd: &[&str]) -> Result<String> {
        Ok(call!(
            self,
            runtime,
            exec,
            ExecRequest {
                container_id: id.to_string(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                tty: false,
                stdin: false,
                stdout: true,
                stderr: true,
            }
        )?
        .url)
    }

    /// `Attach` to stdout and stderr, and to stdin with `stdin` (no tty);
    /// returns the streaming URL.
    pub fn attach(&self, id: &str, stdin: bool) -> Result<String> {
        Ok(call!(
            self,
            runtime,
            attach,
            AttachRequest {
                container_id: id.to_string(),
                stdin,
                tty: false,
                stdout: true,
                stderr: true,
            }
        )?
        .url)
    }
}

/// The network namespace path in a sandbox's verbose `info` JSON.
pub fn netns_from_info(info: &str) -> Option<PathBuf> {
    let v: serde_json::Value = serde_json::from_str(info).ok()?;
    let from_spec = v
        .pointer("/runtimeSpec/linux/namespaces")
        .and_then(|n| n.as_array())
        .and_then(|ns| {
            ns.iter().find_map(|n| {
                (n.get("type")?.as_str()? == "network")
                    .then(|| n.get("path")?.as_str().map(PathBuf::from))
                    .flatten()
            })
        });
    from_spec
        .or_else(|| {
            v.pointer("/metadata/NetNSPath")
                .and_then(|p| p.as_str())
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
        })
        .filter(|p| !p.as_os_str().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_from_sandbox_info() {
        let v1 = r#"{"pid":1,"runtimeSpec":{"linux":{"namespaces":[
            {"type":"pid"},{"type":"network","path":"/run/x/netns/cni-1"}]}}}"#;
        assert_eq!(
            netns_from_info(v1),
            Some(PathBuf::from("/run/x/netns/cni-1"))
        );
        let meta = r#"{"metadata":{"NetNSPath":"/var/run/netns/cni-2"}}"#;
        assert_eq!(
            netns_from_info(meta),
            Some(PathBuf::from("/var/run/netns/cni-2"))
        );
        assert_eq!(netns_from_info("{}"), None);
    }
}
