//! Task-level timings through containerd's gRPC API, without a `ctr`
//! process per step: create-to-exit of a task and kill-to-exit.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::MountsRequest;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    CreateTaskRequest, DeleteTaskRequest, KillRequest, StartRequest, WaitRequest,
};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::Request;
use containerd_client::with_namespace;

use crate::lab::NAMESPACE;

pub struct Api {
    rt: tokio::runtime::Runtime,
    channel: Channel,
}

/// What one create-to-exit took.
pub struct Lifecycle {
    /// Create request sent until the Wait reply (the exit) arrived.
    pub create_to_exit: Duration,
    /// The Create call alone (launching or reaching the shim, the shim's Create).
    pub create: Duration,
    /// The Start call alone.
    pub start: Duration,
    /// From the Start reply to the Wait reply.
    pub run: Duration,
}

impl Api {
    pub fn connect(address: &std::path::Path) -> Result<Api> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let channel = rt
            .block_on(containerd_client::connect(address))
            .context("connecting to containerd's gRPC socket")?;
        Ok(Api { rt, channel })
    }

    /// Create, Start, Wait (for the exit), Delete of the task of container
    /// `id`, already created (`ctr containers create`, snapshot key = id).
    /// The task has no stdio.
    pub fn lifecycle(&self, id: &str) -> Result<Lifecycle> {
        let channel = self.channel.clone();
        self.rt.block_on(async move {
            let mut snaps = SnapshotsClient::new(channel.clone());
            let mut tasks = TasksClient::new(channel);
            let mounts = snaps
                .mounts(with_namespace!(
                    MountsRequest {
                        snapshotter: "overlayfs".into(),
                        key: id.into()
                    },
                    NAMESPACE
                ))
                .await
                .context("snapshot mounts")?
                .into_inner()
                .mounts;
            let t0 = Instant::now();
            tasks
                .create(with_namespace!(
                    CreateTaskRequest {
                        container_id: id.into(),
                        rootfs: mounts,
                        ..Default::default()
                    },
                    NAMESPACE
                ))
                .await
                .with_context(|| format!("creating task {id}"))?;
            let create = t0.elapsed();
            let t1 = Instant::now();
            tasks
                .start(with_namespace!(
                    StartRequest {
                        container_id: id.into(),
                        ..Default::default()
                    },
                    NAMESPACE
                ))
                .await
                .with_context(|| format!("starting task {id}"))?;
            let start = t1.elapsed();
            let t2 = Instant::now();
            let status = tasks
                .wait(with_namespace!(
                    WaitRequest {
                        container_id: id.into(),
                        ..Default::default()
                    },
                    NAMESPACE
                ))
                .await
                .with_context(|| format!("waiting for task {id}"))?
                .into_inner()
                .exit_status;
            let create_to_exit = t0.elapsed();
            let run = t2.elapsed();
            tasks
                .delete(with_namespace!(
                    DeleteTaskRequest {
                        container_id: id.into()
                    },
                    NAMESPACE
                ))
                .await
                .with_context(|| format!("deleting task {id}"))?;
            anyhow::ensure!(status == 0, "task {id} exited with {status}");
            Ok(Lifecycle {
                create_to_exit,
                create,
                start,
                run,
            })
        })
    }

    /// Sends `signal` to the running task `id` while a Wait is pending;
    /// returns the time from sending Kill to the Wait reply, and the exit status.
    pub fn kill_to_exit(&self, id: &str, signal: u32) -> Result<(Duration, u32)> {
        let channel = self.channel.clone();
        self.rt.block_on(async move {
            let mut waiter = TasksClient::new(channel.clone());
            let mut tasks = TasksClient::new(channel);
            let wait_id = id.to_string();
            let wait = tokio::spawn(async move {
                let r = waiter
                    .wait(with_namespace!(
                        WaitRequest {
                            container_id: wait_id,
                            ..Default::default()
                        },
                        NAMESPACE
                    ))
                    .await;
                (Instant::now(), r)
            });
            // Let the Wait reach the shim first.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let t0 = Instant::now();
            tasks
                .kill(with_namespace!(
                    KillRequest {
                        container_id: id.into(),
                        signal,
                        ..Default::default()
                    },
                    NAMESPACE
                ))
                .await
                .with_context(|| format!("killing task {id}"))?;
            let (t1, r) = wait.await?;
            let status = r
                .with_context(|| format!("waiting for task {id}"))?
                .into_inner()
                .exit_status;
            tasks
                .delete(with_namespace!(
                    DeleteTaskRequest {
                        container_id: id.into()
                    },
                    NAMESPACE
                ))
                .await
                .with_context(|| format!("deleting task {id}"))?;
            Ok((t1 - t0, status))
        })
    }
}
