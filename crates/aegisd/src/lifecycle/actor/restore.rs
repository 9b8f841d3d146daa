//! Coming back: restoring the instance's snapshot at a boot, and re-attaching to the VM a
//! previous daemon left running.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use aegis_proto::api::InstanceStatus;
use aegis_proto::control::{Method, SetTimeParams};

use super::boot::{resolve_image, BootJob};
use super::{Actor, Live, State, KILL_GRACE};
use crate::control::CONTROL_CALL_TIMEOUT;
use crate::lifecycle::boot::{self, BootError, BootPlan, Guest};
use crate::lifecycle::output::OutputRouter;
use crate::lifecycle::snapshot::{Fingerprint, SnapshotFiles};
use crate::lifecycle::state::Event;
use crate::secrets::{SecretEnv, StreamError};

impl Actor {
    /// Re-attaches to the VM a previous daemon left running, or records that it is gone.
    pub(super) async fn recover(&mut self) {
        let status = self.row.status;
        if status == InstanceStatus::Stopped {
            return;
        }
        self.generation += 1;
        let paused = status == InstanceStatus::Paused;
        let (sink, output) = OutputRouter::spawn(
            Arc::clone(&self.log),
            Arc::clone(&self.processes),
            self.tx.clone(),
            self.generation,
        );
        let run_dir = self
            .ctx
            .config
            .instance_dir(self.row.id.as_str())
            .join("run");
        match boot::attach(&self.ctx.boot, &run_dir, sink, paused).await {
            Ok(guest) => {
                let image = resolve_image(&self.ctx, &self.row.id, &self.spec)
                    .await
                    .map(|r| r.config)
                    .unwrap_or_default();
                let process = self.process_spec(&image);
                // Values are not kept across daemons (only ciphertexts are stored), so execs of a
                // re-attached VM get them as they are now.
                let secrets = match self.resolve_secrets().await {
                    Ok(secrets) => secrets,
                    Err(e) => {
                        let reason = format!(
                            "execs get no secrets until the next boot: {}",
                            crate::images::error_chain(&e)
                        );
                        self.log.system(reason.clone());
                        tracing::warn!(%reason, "cannot resolve secrets after re-attaching");
                        SecretEnv::new()
                    }
                };
                let live = self.live(guest, output, &process, secrets);
                self.watch_vm(&live);
                let needs_primary =
                    status == InstanceStatus::Starting && !live.guest.health.primary_running;
                if needs_primary {
                    // The previous daemon died between boot and start of the primary process.
                    let _ = self.start_primary(&live, process).await;
                }
                if paused {
                    self.paused_since = Some(Instant::now());
                }
                if paused {
                    self.enter(Event::ReattachedPaused, State::Paused(live));
                } else {
                    self.enter(Event::Reattached, State::Running(live));
                }
                self.log
                    .system("re-attached to the running VM after a daemon restart");
                tracing::info!(?status, "re-attached");
                let _ = self.persist_status().await;
            }
            Err(e) => {
                let reason = format!(
                    "VM lost while the daemon was down ({})",
                    crate::images::error_chain(&e)
                );
                self.log.system(reason.clone());
                tracing::warn!(%reason, "cannot re-attach");
                self.settle_stopped(Event::Stop, reason).await;
            }
        }
    }

    /// Sets the guest's wall clock after a restore: it stood still while the VM was on disk.
    pub(super) async fn correct_clock(&self, live: &Live) {
        let unix_nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let res: Result<serde_json::Value, _> = live
            .link
            .control
            .call(
                Method::SetTime,
                &SetTimeParams { unix_nanos },
                CONTROL_CALL_TIMEOUT,
            )
            .await;
        if let Err(e) = res {
            self.log.system(format!(
                "cannot correct the guest clock after the restore: {e}"
            ));
            tracing::warn!(error = %e, "set_time failed after restore");
        }
    }
}

impl BootJob {
    /// Restores the instance's snapshot if it has a usable one. `Ok(None)` means cold-boot: there
    /// was none, or it was discarded (with a log line saying why).
    pub(super) async fn try_restore(
        &self,
        plan: &BootPlan,
        prepared: &boot::Prepared,
        files: &SnapshotFiles,
    ) -> Result<Option<Guest>, BootError> {
        let (ctx, spec, log) = (&self.ctx, &self.spec, &self.log);
        if !files.dir.exists() {
            return Ok(None);
        }
        if !spec.snapshot_possible() || !ctx.boot.vmm.capabilities().snapshot {
            files.discard();
            return Ok(None);
        }
        let now = Fingerprint::of(
            &prepared.spec,
            spec.image_digest.clone(),
            ctx.boot.vmm.program_identity(),
        );
        let checked = match now {
            Ok(now) => {
                let disks: Vec<PathBuf> = prepared
                    .spec
                    .extra_disks
                    .iter()
                    .map(|d| d.path.clone())
                    .collect();
                files
                    .check(&now, &plan.overlay, &disks)
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(format!("cannot examine the guest kernel: {e}")),
        };
        let manifest = match checked {
            Ok(manifest) => manifest,
            Err(why) => {
                log.system(format!("snapshot discarded, cold-booting instead: {why}"));
                tracing::warn!(%why, "snapshot unusable");
                files.discard();
                return Ok(None);
            }
        };
        log.system(format!(
            "waking from the snapshot of {} ({} MiB)",
            manifest.created_at,
            manifest.size_bytes / (1024 * 1024)
        ));
        let started = Instant::now();
        let discard = |why: String| {
            log.system(format!(
                "snapshot discarded, cold-booting instead: the restore failed: {why}"
            ));
            tracing::warn!(%why, "restore failed");
            files.discard();
        };
        let (state, opening) = match files
            .open_state(&manifest, &ctx.secrets, log.instance_id())
            .await
        {
            Ok(opened) => opened,
            Err(why) => {
                discard(why);
                return Ok(None);
            }
        };
        let origin = boot::Origin::Snapshot(state);
        let launched = boot::launch(
            &ctx.boot,
            prepared.clone(),
            origin,
            self.sink.clone(),
            &self.cancel,
        )
        .await;
        // Done once QEMU has read everything or stopped reading (then it fails with a broken pipe,
        // and the launch error says more).
        let opened = match opening.await {
            Ok(Ok(_)) | Ok(Err(StreamError::Io(_))) => None,
            Ok(Err(e)) => Some(format!("the memory file does not open: {e}")),
            Err(e) => Some(format!("opening the memory file failed: {e}")),
        };
        match (launched, opened) {
            (Err(BootError::Cancelled), _) => Err(BootError::Cancelled),
            (Ok(guest), None) => {
                // Used once: the disk moves on from here, so the snapshot would no longer match it.
                files.discard();
                tracing::info!(
                    took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    "restored from snapshot"
                );
                Ok(Some(guest))
            }
            (Ok(guest), Some(why)) => {
                guest.vm.kill(KILL_GRACE).await;
                discard(why);
                Ok(None)
            }
            (Err(_), Some(why)) => {
                discard(why);
                Ok(None)
            }
            (Err(e), None) => {
                discard(crate::images::error_chain(&e));
                Ok(None)
            }
        }
    }
}
