//! Stopping: gracefully or not, with a snapshot when the instance wants one; disabling,
//! deleting, and a VM that exits on its own.

use std::path::PathBuf;
use std::time::Duration;

use aegis_proto::api::{Instance, InstanceStatus};
use aegis_proto::control::{Method, ShutdownParams};

use super::{Actor, State, GUEST_STOP_GRACE, KILL_GRACE, STOP_DEADLINE};
use crate::lifecycle::boot::Guest;
use crate::lifecycle::command::{LifecycleError, StopMode};
use crate::lifecycle::snapshot::{Fingerprint, SnapshotFiles};
use crate::lifecycle::state::Event;
use crate::logs::now_ts;

impl Actor {
    pub(super) async fn stop(
        &mut self,
        mode: StopMode,
        reason: &str,
    ) -> Result<Instance, LifecycleError> {
        let live = match self.take() {
            State::Running(live) => live,
            State::Paused(live) => {
                if mode == StopMode::Graceful {
                    // The harness must run to stop its processes.
                    let _ = live.guest.vm.resume().await;
                }
                live
            }
            State::Stopped => return Ok(self.view()),
            other @ State::Starting { .. } => {
                self.put_back(other);
                return Ok(self.view());
            }
        };
        let exit = shutdown_guest(live.guest, mode).await;
        tracing::info!(%exit, reason, "stopped");
        self.log.system(format!("stopped: {reason}"));
        self.settle_stopped(Event::Stop, reason.to_owned()).await;
        Ok(self.view())
    }

    /// Stops by request or idleness: saves a snapshot when the instance wants one (pause,
    /// write, end the VM), else, or when saving fails, stops gracefully.
    pub(super) async fn stop_saving(&mut self, reason: &str) -> Result<Instance, LifecycleError> {
        let wanted = self.spec.snapshot_possible() && self.ctx.boot.vmm.capabilities().snapshot;
        let (live, was_paused) = match self.take() {
            State::Running(live) if wanted && live.guest.spec.is_some() => (live, false),
            State::Paused(live) if wanted && live.guest.spec.is_some() => (live, true),
            other => {
                let live = matches!(other, State::Running(_) | State::Paused(_));
                if let Some(why) = self
                    .spec
                    .snapshot_obstacle()
                    .filter(|_| live && self.spec.snapshot)
                {
                    self.log
                        .system(format!("no snapshot: {why}; the next wake boots"));
                }
                self.put_back(other);
                return self.stop(StopMode::Graceful, reason).await;
            }
        };
        let files = SnapshotFiles::new(&self.ctx.config.instance_dir(&self.row.id));
        // Saving pauses a running VM first: from then on it is paused, whatever comes of the
        // save.
        let written = async {
            if !was_paused {
                live.guest.vm.pause().await.map_err(|e| e.to_string())?;
            }
            std::fs::create_dir_all(&files.dir)
                .map_err(|e| format!("cannot create {}: {e}", files.dir.display()))?;
            files
                .save(
                    live.guest.vm.as_ref(),
                    &self.ctx.secrets,
                    self.row.id.as_str(),
                )
                .await
        }
        .await;
        let saved = match written {
            Ok(saved) => saved,
            Err(why) => {
                files.discard();
                self.log.system(format!(
                    "cannot save a snapshot ({why}): stopping without one"
                ));
                tracing::warn!(%why, "snapshot failed");
                if was_paused {
                    self.put_back(State::Paused(live));
                } else {
                    self.enter(Event::Pause, State::Paused(live));
                }
                return self.stop(StopMode::Graceful, reason).await;
            }
        };
        let exit = live.guest.vm.kill(KILL_GRACE).await;
        let spec = live.guest.spec.clone();
        let fingerprint = spec.as_ref().map(|spec| {
            Fingerprint::of(
                spec,
                self.spec.image_digest.clone(),
                self.ctx.boot.vmm.program_identity(),
            )
        });
        let overlay = self
            .ctx
            .config
            .instance_dir(&self.row.id)
            .join("root.qcow2");
        let disks: Vec<PathBuf> = spec
            .as_ref()
            .map(|s| s.extra_disks.iter().map(|d| d.path.clone()).collect())
            .unwrap_or_default();
        let manifest = match fingerprint {
            Some(Ok(fp)) => files
                .write_manifest(fp, &overlay, &disks, &saved)
                .map_err(|e| e.to_string()),
            Some(Err(e)) => Err(format!("cannot examine the guest kernel: {e}")),
            None => Err("the VM's start parameters are unknown".to_owned()),
        };
        match manifest {
            Ok(manifest) => {
                self.log.system(format!(
                    "stopped: {reason}; snapshot saved ({} MiB in {} ms)",
                    saved.size_bytes / (1024 * 1024),
                    saved.info.took.as_millis()
                ));
                tracing::info!(%exit, reason, size = saved.size_bytes, took_ms = manifest.write_ms, "stopped with a snapshot");
                self.saved = Some(manifest.view());
            }
            Err(why) => {
                files.discard();
                self.log.system(format!(
                    "stopped: {reason}; the snapshot could not be recorded ({why}) and was discarded"
                ));
                tracing::warn!(%why, "snapshot manifest failed");
            }
        }
        self.settle_stopped(Event::Stop, reason.to_owned()).await;
        Ok(self.view())
    }

    /// Stops, forgets the snapshot (a restart is a fresh boot), and boots.
    pub(super) async fn restart(&mut self) -> Result<Instance, LifecycleError> {
        self.stop(StopMode::Graceful, "restarting").await?;
        self.discard_snapshot("restart");
        self.start().await
    }

    /// The VMM process of a running or paused guest ended on its own.
    pub(super) async fn vm_exited(&mut self, exit: aegis_vmm::VmExit) {
        if !matches!(self.state, State::Running(_) | State::Paused(_)) {
            return;
        }
        self.log.system(format!("VM exited unexpectedly ({exit})"));
        tracing::warn!(%exit, "VM crashed");
        self.settle_stopped(Event::VmExited, format!("VM exited unexpectedly ({exit})"))
            .await;
    }

    /// Removes the instance's snapshot, if it has one, saying why in its log.
    pub(super) fn discard_snapshot(&mut self, why: &str) {
        let files = SnapshotFiles::new(&self.ctx.config.instance_dir(&self.row.id));
        if files.dir.exists() {
            files.discard();
            self.log.system(format!("snapshot discarded: {why}"));
        }
        self.saved = None;
        if self.status == InstanceStatus::Stopped {
            // The processes it kept will not carry on.
            self.processes.vm_gone();
        }
        self.publish();
    }

    /// Records the stopped state (the VM is already gone), reached by `event`.
    pub(super) async fn settle_stopped(&mut self, event: Event, reason: String) {
        self.enter(event, State::Stopped);
        self.row.reason = Some(reason);
        self.row.stopped_at = Some(now_ts());
        if self.saved.is_none() {
            self.processes.vm_gone();
        }
        if let Err(e) = self.persist_status().await {
            tracing::error!(error = %e, "cannot record stop");
        }
    }

    pub(super) async fn disable(&mut self) -> Result<Instance, LifecycleError> {
        self.row.enabled = false;
        // Published before the stop: what watches the instance (its kit's daemons) stops
        // alongside.
        self.persist().await?;
        self.stop(StopMode::Graceful, "disabled").await?;
        self.discard_snapshot("disabled");
        self.persist().await?;
        Ok(self.view())
    }

    pub(super) async fn delete(&mut self) -> Result<(), LifecycleError> {
        self.stop(StopMode::Force, "deleted").await?;
        self.ctx
            .registry
            .delete_instance(self.id())
            .await
            .map_err(|source| LifecycleError::Registry {
                id: self.id(),
                source,
            })?;
        let dir = self.ctx.config.instance_dir(&self.row.id);
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove instance directory");
            }
        }
        tracing::info!("deleted");
        Ok(())
    }
}

/// Stops a guest: through its harness (graceful) with a deadline, then by killing the VMM.
async fn shutdown_guest(guest: Guest, mode: StopMode) -> aegis_vmm::VmExit {
    if mode == StopMode::Graceful {
        let grace_ms = u64::try_from(GUEST_STOP_GRACE.as_millis()).unwrap_or(u64::MAX);
        let params = ShutdownParams { grace_ms };
        let asked: Result<serde_json::Value, _> = guest
            .control
            .call(
                Method::Shutdown,
                &params,
                GUEST_STOP_GRACE + Duration::from_secs(5),
            )
            .await;
        if asked.is_ok() {
            let mut exited = guest.vm.exited();
            let gone =
                tokio::time::timeout(STOP_DEADLINE, aegis_vmm::wait_for_exit(&mut exited)).await;
            if let Ok(exit) = gone {
                return exit;
            }
            tracing::warn!("guest did not power off in time; killing the VM");
        }
    }
    guest.vm.kill(KILL_GRACE).await
}
