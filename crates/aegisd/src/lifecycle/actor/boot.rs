//! Starting: the secrets of the boot, the boot task (restore or cold boot), and the primary
//! process once the guest is up.

use std::collections::BTreeMap;
use std::sync::Arc;

use aegis_image::manifest::ImageConfig;
use aegis_proto::api::Instance;
use aegis_proto::control::{Method, ProcessSpec, RunParams, SpawnResult, WindowSize};
use tokio_util::sync::CancellationToken;

use super::{Actor, Flow, Live, State};
use crate::control::{NotificationSink, CONTROL_CALL_TIMEOUT};
use crate::ids::InstanceId;
use crate::lifecycle::boot::{self, BootError, BootPlan, Guest};
use crate::lifecycle::command::{Booted, Command, GuestLink, LifecycleError, Reply, StopMode};
use crate::lifecycle::output::OutputRouter;
use crate::lifecycle::snapshot::SnapshotFiles;
use crate::lifecycle::spec::InstanceSpec;
use crate::lifecycle::state::{next, Event};
use crate::lifecycle::{Ctx, SelectionError};
use crate::logs::InstanceLog;
use crate::secrets::{scrub_env, SecretEnv, SecretSelection};

impl Actor {
    pub(super) async fn start(&mut self) -> Result<Instance, LifecycleError> {
        if !self.row.enabled {
            self.row.enabled = true;
            self.persist().await?;
        }
        match self.state {
            State::Starting { .. } | State::Running(_) | State::Paused(_) => {
                return Ok(self.view());
            }
            State::Stopped => {}
        }
        self.begin_boot(Vec::new()).await?;
        Ok(self.view())
    }

    pub(super) async fn begin_boot(
        &mut self,
        waiters: Vec<Reply<GuestLink>>,
    ) -> Result<(), LifecycleError> {
        next(self.status, Event::Boot)?;
        // Resolved at every boot, so a rotated value applies after a restart. All or nothing:
        // a missing or undecryptable secret fails the start before a VM exists.
        let secrets = match self.resolve_secrets().await {
            Ok(secrets) => secrets,
            Err(e) => {
                let reason = format!("not started: {}", crate::images::error_chain(&e));
                self.log.system(reason.clone());
                tracing::warn!(%reason, "start refused");
                self.row.reason = Some(reason);
                let _ = self.persist().await;
                return Err(e);
            }
        };
        self.generation += 1;
        let generation = self.generation;
        let cancel = CancellationToken::new();
        self.enter(
            Event::Boot,
            State::Starting {
                waiters,
                cancel: cancel.clone(),
                deferred: Vec::new(),
                secrets,
            },
        );
        self.row.reason = None;
        self.row.exit_code = None;
        self.touch();
        self.persist_status().await?;
        let (sink, output) = OutputRouter::spawn(
            Arc::clone(&self.log),
            Arc::clone(&self.processes),
            self.tx.clone(),
            generation,
        );
        let job = BootJob {
            ctx: Arc::clone(&self.ctx),
            id: self.id(),
            spec: self.spec.clone(),
            hostname: self
                .row
                .handle
                .as_ref()
                .map_or_else(|| self.row.id.to_string(), ToString::to_string),
            log: Arc::clone(&self.log),
            sink,
            output,
            cancel,
        };
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let result = job.run().await.map(Box::new);
            let _ = tx.send(Command::BootFinished { generation, result }).await;
        });
        Ok(())
    }

    pub(super) async fn boot_finished(&mut self, result: Result<Box<Booted>, LifecycleError>) {
        let result = result.map(|booted| *booted);
        let State::Starting {
            waiters,
            deferred,
            cancel,
            secrets,
        } = self.take()
        else {
            return;
        };
        match result {
            Ok(booted) if !cancel.is_cancelled() => {
                let process = self.process_spec(&booted.image);
                let live = self.live(booted.guest, booted.output, &process, secrets);
                self.watch_vm(&live);
                if booted.restored {
                    self.saved = None;
                    self.correct_clock(&live).await;
                    self.log
                        .system("restored from the snapshot: the processes carry on");
                    self.enter(Event::BootSucceeded, State::Running(live));
                    let _ = self.persist_status().await;
                    for w in waiters {
                        let _ = w.send(self.link().map(|l| GuestLink { woke: true, ..l }));
                    }
                } else {
                    self.saved = None;
                    // A fresh guest: whatever ran in an earlier one is gone.
                    self.processes.vm_gone();
                    self.run_primary(live, process, waiters).await;
                }
            }
            Ok(booted) => {
                // Cancelled after the guest came up: end it right away.
                let live = self.live(
                    booted.guest,
                    booted.output,
                    &ProcessSpec::default(),
                    SecretEnv::new(),
                );
                self.enter(Event::BootSucceeded, State::Running(live));
                let _ = self.stop(StopMode::Force, "boot cancelled").await;
                for w in waiters {
                    let _ = w.send(Err(LifecycleError::Stopped {
                        id: self.id(),
                        reason: "boot cancelled".into(),
                    }));
                }
            }
            Err(e) => self.boot_failed(e, waiters).await,
        }
        for cmd in deferred {
            if let Flow::End = Box::pin(self.handle(cmd)).await {
                // Deleted or shut down: drain nothing further; the mailbox loop ends too.
                self.rx.close();
            }
        }
    }

    /// Starts the primary process of a freshly booted guest and answers the waiters.
    pub(super) async fn run_primary(
        &mut self,
        live: Live,
        process: ProcessSpec,
        waiters: Vec<Reply<GuestLink>>,
    ) {
        let started = self.start_primary(&live, process).await;
        self.enter(Event::BootSucceeded, State::Running(live));
        match started {
            Ok(pid) => {
                self.log.system(format!("running (guest pid {pid})"));
                let _ = self.persist_status().await;
                for w in waiters {
                    let _ = w.send(self.link().map(|l| GuestLink { woke: true, ..l }));
                }
            }
            Err(e) => {
                let reason = format!(
                    "cannot start the process: {}",
                    crate::images::error_chain(&e)
                );
                self.log.system(reason.clone());
                let _ = self.stop(StopMode::Graceful, &reason).await;
                for w in waiters {
                    let _ = w.send(Err(LifecycleError::Stopped {
                        id: self.id(),
                        reason: reason.clone(),
                    }));
                }
            }
        }
    }

    /// Records a failed boot and answers the waiters.
    pub(super) async fn boot_failed(&mut self, e: LifecycleError, waiters: Vec<Reply<GuestLink>>) {
        let cancelled = matches!(
            &e,
            LifecycleError::Boot {
                source: BootError::Cancelled,
                ..
            }
        );
        let reason = if cancelled {
            "boot cancelled".to_owned()
        } else {
            format!("boot failed: {}", crate::images::error_chain(&e))
        };
        self.log.system(reason.clone());
        if !cancelled {
            tracing::warn!(%reason, "boot failed");
        }
        self.settle_stopped(Event::BootFailed, reason.clone()).await;
        let mut first = Some(e);
        for w in waiters {
            let err = first.take().unwrap_or_else(|| LifecycleError::Stopped {
                id: self.id(),
                reason: reason.clone(),
            });
            let _ = w.send(Err(err));
        }
    }

    /// The primary process: the image's settings with the instance's on top.
    pub(super) fn process_spec(&self, image: &ImageConfig) -> ProcessSpec {
        let mut env: BTreeMap<String, String> = image
            .env
            .iter()
            .filter_map(|e| e.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect();
        env.extend(self.spec.env.clone());
        ProcessSpec {
            argv: self.spec.argv(image),
            env,
            workdir: self
                .spec
                .workdir
                .clone()
                .or_else(|| image.working_dir.clone()),
            user: image.user.clone(),
        }
    }

    /// What the actor keeps of a guest that is up: the link execs use carries the process
    /// defaults (no argv) and the boot's secrets less those an explicit variable overrides.
    pub(super) fn live(
        &self,
        guest: Guest,
        output: OutputRouter,
        process: &ProcessSpec,
        secrets: SecretEnv,
    ) -> Live {
        Live {
            link: GuestLink {
                control: guest.control.clone(),
                output,
                defaults: ProcessSpec {
                    argv: Vec::new(),
                    ..process.clone()
                },
                secrets: Arc::new(secrets.without_keys_of(&self.spec.env)),
                ingress: guest.ingress,
                woke: false,
            },
            guest,
        }
    }

    /// Starts the primary process with the boot's secrets injected: the image's environment,
    /// then the secrets, then the instance's explicit variables (which the link's secrets
    /// already exclude). The values travel only in this control-channel call.
    pub(super) async fn start_primary(
        &self,
        live: &Live,
        mut process: ProcessSpec,
    ) -> Result<u32, LifecycleError> {
        live.link.secrets.inject_into(&mut process.env);
        let mut params = RunParams {
            process,
            stdin: self.spec.stdin,
            tty: self.spec.tty.map(WindowSize::from),
        };
        let res: Result<SpawnResult, _> = live
            .link
            .control
            .call(Method::Run, &params, CONTROL_CALL_TIMEOUT)
            .await;
        scrub_env(&mut params.process.env);
        let res = res.map_err(|source| LifecycleError::Control {
            id: self.id(),
            source,
        })?;
        Ok(res.pid)
    }

    /// Decrypts the secrets the policy gives the instance at this boot (none, names, or all).
    pub(super) async fn resolve_secrets(&self) -> Result<SecretEnv, LifecycleError> {
        let secrets_err = |source| LifecycleError::Secrets {
            id: self.id(),
            source,
        };
        let names = self
            .ctx
            .policy
            .secrets(&self.spec)
            .await
            .map_err(|e| match e {
                SelectionError::Store(e) => secrets_err(e),
                SelectionError::Refused { reason, hint } => LifecycleError::Refused {
                    id: self.id(),
                    reason,
                    hint,
                },
            })?;
        let selection = SecretSelection::parse(&names)
            .map_err(|name| secrets_err(crate::secrets::SecretError::InvalidName(name)))?;
        self.ctx
            .secrets
            .resolve(&selection)
            .await
            .map_err(secrets_err)
    }
}

/// Everything a boot needs, moved into its own task.
pub(super) struct BootJob {
    pub(super) ctx: Arc<Ctx>,
    pub(super) id: InstanceId,
    pub(super) spec: InstanceSpec,
    pub(super) hostname: String,
    pub(super) log: Arc<InstanceLog>,
    pub(super) sink: NotificationSink,
    output: OutputRouter,
    pub(super) cancel: CancellationToken,
}

impl BootJob {
    /// Resolves the image and brings the guest up: from the instance's snapshot when there is a
    /// usable one, else by a cold boot. A snapshot that cannot be used is discarded with a
    /// system log line; either way none is left once the guest runs.
    pub(super) async fn run(self) -> Result<Booted, LifecycleError> {
        let (ctx, spec) = (&self.ctx, &self.spec);
        let boot_err = |source| LifecycleError::Boot {
            id: self.id.clone(),
            source,
        };
        let resolved = resolve_image(ctx, &self.id, spec).await?;
        let dir = ctx.config.instance_dir(self.id.as_str());
        let plan = BootPlan {
            run_dir: dir.join("run"),
            base_image: resolved.base,
            overlay: dir.join("root.qcow2"),
            memory_mib: spec.memory_mib,
            vcpus: spec.vcpus,
            hostname: self.hostname.clone(),
            egress: spec.egress,
            forwards: Vec::new(),
            workspace: ctx
                .workspaces
                .attachment(&spec.workspace(), &dir)
                .map_err(|e| boot_err(BootError::Workspace(e)))?,
        };
        let prepared = boot::prepare(&ctx.boot, &plan).await.map_err(boot_err)?;
        let files = SnapshotFiles::new(&dir);
        let restored = self
            .try_restore(&plan, &prepared, &files)
            .await
            .map_err(boot_err)?;
        if let Some(guest) = restored {
            return Ok(Booted {
                guest,
                image: resolved.config,
                output: self.output,
                restored: true,
            });
        }
        self.log.system(format!(
            "booting ({} MiB, {} vCPU)",
            spec.memory_mib, spec.vcpus
        ));
        let guest = boot::launch(
            &ctx.boot,
            prepared,
            boot::Origin::Boot,
            self.sink.clone(),
            &self.cancel,
        )
        .await
        .map_err(boot_err)?;
        Ok(Booted {
            guest,
            image: resolved.config,
            output: self.output,
            restored: false,
        })
    }
}

/// The instance's image, by the digest it was created from.
pub(super) async fn resolve_image(
    ctx: &Ctx,
    id: &InstanceId,
    spec: &InstanceSpec,
) -> Result<crate::images::ResolvedImage, LifecycleError> {
    let (image_ref, digest) = (spec.image_ref.clone(), spec.image_digest.clone());
    let images = ctx.images.clone();
    tokio::task::spawn_blocking(move || images.resolve_blocking(&image_ref, digest.as_deref()))
        .await
        .map_err(|e| LifecycleError::Image {
            id: id.clone(),
            source: crate::images::ImageError::Build {
                reference: spec.image_ref.clone(),
                message: e.to_string(),
            },
        })?
        .map_err(|source| LifecycleError::Image {
            id: id.clone(),
            source,
        })
}
