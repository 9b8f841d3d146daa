//! One task per instance owns its state, its VM and its control channel. Everyone else sends it
//! [`Command`]s; reads come from the [`Instance`] snapshot it publishes on every change, so a
//! list never waits behind a boot.
//!
//! Long work does not block the mailbox: the boot runs in its own task and reports back with
//! `BootFinished`. Wakes that arrive while it runs wait together and are answered at once (wake
//! coalescing). Stop, delete and friends cancel a running boot and are replayed once it ended.
//! A graceful stop is awaited inline: it is bounded by [`STOP_DEADLINE`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_image::manifest::ImageConfig;
use aegis_proto::api::{Instance, InstanceStatus, SnapshotView};
use aegis_proto::control::{Method, ProcessSpec, SetTimeParams, ShutdownParams, SpawnResult};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::boot::{self, BootError, BootPlan, Guest};
use super::command::{Booted, Command, GuestLink, LifecycleError, Reply, StopMode};
use super::idle;
use super::output::OutputRouter;
use super::snapshot::{Fingerprint, SnapshotFiles};
use super::spec::InstanceSpec;
use super::state::{next, Event};
use super::Ctx;
use crate::control::CONTROL_CALL_TIMEOUT;
use crate::kits::preset::secret_selection;
use crate::kits::{DaemonContext, SelectError};
use crate::logs::{now_ts, InstanceLog};
use crate::registry::InstanceRow;
use crate::secrets::{scrub_env, SecretEnv, SecretSelection, StreamError};

/// Grace period the harness gives processes between SIGTERM and SIGKILL on a graceful stop.
pub const GUEST_STOP_GRACE: Duration = Duration::from_secs(5);
/// How long a graceful stop may take in all before the VMM process is killed: the guest grace,
/// plus syncing disks and powering off, which is slow under TCG.
pub const STOP_DEADLINE: Duration = Duration::from_secs(25);
const _: () = assert!(STOP_DEADLINE.as_secs() > GUEST_STOP_GRACE.as_secs());
/// How long the VMM gets to quit when asked before it is killed.
const KILL_GRACE: Duration = Duration::from_secs(3);

/// A guest that runs (or is paused) with what the actor keeps of it.
#[derive(Debug)]
struct Live {
    guest: Guest,
    link: GuestLink,
}

#[derive(Debug)]
enum State {
    Stopped,
    Starting {
        waiters: Vec<Reply<GuestLink>>,
        cancel: CancellationToken,
        deferred: Vec<Command>,
        /// Resolved before the boot began; injected once the guest is up.
        secrets: SecretEnv,
    },
    Running(Live),
    Paused(Live),
}

impl State {
    fn status(&self) -> InstanceStatus {
        match self {
            State::Stopped => InstanceStatus::Stopped,
            State::Starting { .. } => InstanceStatus::Starting,
            State::Running(_) => InstanceStatus::Running,
            State::Paused(_) => InstanceStatus::Paused,
        }
    }
}

/// The instance actor.
#[derive(Debug)]
pub struct Actor {
    ctx: Arc<Ctx>,
    row: InstanceRow,
    spec: InstanceSpec,
    state: State,
    generation: u64,
    log: Arc<InstanceLog>,
    tx: mpsc::Sender<Command>,
    rx: mpsc::Receiver<Command>,
    snapshot: watch::Sender<Instance>,
    /// Open routed connections and running execs (counted by their guards).
    connections: Arc<AtomicUsize>,
    /// Last activity while running (connections, execs, busy heartbeats).
    last_active: Instant,
    /// When the current pause began.
    paused_since: Option<Instant>,
    /// The snapshot saved at the last stop, until it is restored or discarded.
    saved: Option<SnapshotView>,
}

/// What the actor decided after a command.
enum Flow {
    Continue,
    End,
}

impl Actor {
    /// Creates the actor (not yet running). Returns it with its mailbox and snapshot.
    pub fn new(
        ctx: Arc<Ctx>,
        row: InstanceRow,
        spec: InstanceSpec,
        log: Arc<InstanceLog>,
        connections: Arc<AtomicUsize>,
    ) -> (Actor, mpsc::Sender<Command>, watch::Receiver<Instance>) {
        let (tx, rx) = mpsc::channel(64);
        let saved = SnapshotFiles::new(&ctx.config.instance_dir(&row.id))
            .load()
            .map(|m| m.view());
        // Until `recover` has re-attached (or not), a VM left running by a previous daemon is
        // shown with the pid it runs under.
        let recovering =
            InstanceStatus::parse(&row.status).is_some_and(|s| s != InstanceStatus::Stopped);
        let pid = recovering
            .then(|| {
                ctx.boot
                    .vmm
                    .running_pid(&ctx.config.instance_dir(&row.id).join("run"))
            })
            .flatten();
        let view = render(&ctx, &row, &spec, pid, saved.clone());
        let (snapshot, snapshot_rx) = watch::channel(view);
        let actor = Actor {
            ctx,
            row,
            spec,
            state: State::Stopped,
            generation: 0,
            log,
            tx: tx.clone(),
            rx,
            snapshot,
            connections,
            last_active: Instant::now(),
            paused_since: None,
            saved,
        };
        (actor, tx, snapshot_rx)
    }

    /// Runs the mailbox loop until the instance is deleted or the daemon shuts down.
    /// `recover` re-attaches to a VM a previous daemon left running.
    pub async fn run(mut self, recover: bool) {
        let span = tracing::info_span!("instance", instance = %self.row.id);
        async move {
            if recover {
                self.recover().await;
            }
            if self.row.enabled {
                self.ensure_daemons();
            }
            let mut tick = tokio::time::interval(idle::IDLE_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    cmd = self.rx.recv() => {
                        let Some(cmd) = cmd else { break };
                        if let Flow::End = self.handle(cmd).await {
                            break;
                        }
                    }
                    _ = tick.tick() => self.idle_tick().await,
                }
            }
        }
        .instrument(span)
        .await;
    }

    /// Pauses or stops the instance when its idle timers say so.
    async fn idle_tick(&mut self) {
        let now = Instant::now();
        if self.connections.load(Ordering::Relaxed) > 0 {
            self.last_active = now;
        }
        let state = match &self.state {
            State::Running(_) => idle::IdleState::Running {
                last_active: self.last_active,
            },
            State::Paused(_) => idle::IdleState::Paused {
                since: self.paused_since.unwrap_or(now),
            },
            State::Stopped | State::Starting { .. } => idle::IdleState::Other,
        };
        let policy = idle::IdlePolicy {
            pause_after: self.spec.idle_pause_secs.map(Duration::from_secs),
            stop_after: self.spec.idle_stop_secs.map(Duration::from_secs),
        };
        match idle::decide(policy, state, now) {
            Some(idle::IdleAction::Pause) => {
                let secs = self.spec.idle_pause_secs.unwrap_or_default();
                match self.pause().await {
                    Ok(_) => {
                        self.log.system(format!("idle for {secs}s: paused"));
                        tracing::info!(secs, "paused for idleness");
                    }
                    Err(e) => tracing::warn!(error = %e, "idle pause failed"),
                }
            }
            Some(idle::IdleAction::Stop) => {
                let secs = self.spec.idle_stop_secs.unwrap_or_default();
                let reason = format!("paused for {secs}s: stopped (idle)");
                if let Err(e) = self.stop_saving(&reason).await {
                    tracing::warn!(error = %e, "idle stop failed");
                }
            }
            None => {}
        }
    }

    fn touch(&mut self) {
        self.last_active = Instant::now();
        self.row.last_active_at = Some(now_ts());
    }

    fn id(&self) -> String {
        self.row.id.clone()
    }

    async fn handle(&mut self, cmd: Command) -> Flow {
        // Commands that need a settled state wait for a running boot, which they cancel.
        if let State::Starting {
            cancel, deferred, ..
        } = &mut self.state
        {
            match cmd {
                Command::Stop { .. }
                | Command::Disable { .. }
                | Command::Restart { .. }
                | Command::Delete { .. }
                | Command::Shutdown { .. } => {
                    cancel.cancel();
                    deferred.push(cmd);
                    return Flow::Continue;
                }
                Command::Start { .. }
                | Command::Pause { .. }
                | Command::Resume { .. }
                | Command::Wake { .. }
                | Command::Touch
                | Command::SetSecrets { .. }
                | Command::Expose { .. }
                | Command::Unexpose { .. }
                | Command::Heartbeat { .. }
                | Command::BootFinished { .. }
                | Command::VmExited { .. }
                | Command::PrimaryExited { .. } => {}
            }
        }
        match cmd {
            Command::Start { reply } => {
                let r = self.start().await;
                let _ = reply.send(r);
            }
            Command::Stop { mode, reply } => {
                let r = match mode {
                    StopMode::Graceful => self.stop_saving("stopped by request").await,
                    StopMode::Force => self.stop(mode, "stopped by request").await,
                };
                let _ = reply.send(r);
            }
            Command::Disable { reply } => {
                let r = self.disable().await;
                let _ = reply.send(r);
            }
            Command::Restart { reply } => {
                let r = match self.stop(StopMode::Graceful, "restarting").await {
                    Ok(_) => {
                        self.discard_snapshot("restart");
                        self.start().await
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(r);
            }
            Command::Pause { reply } => {
                let r = self.pause().await;
                let _ = reply.send(r);
            }
            Command::Resume { reply } => {
                let r = self.resume().await;
                let _ = reply.send(r);
            }
            Command::Wake { reply } => self.wake(reply).await,
            Command::Touch => {
                self.touch();
                self.publish();
            }
            Command::Heartbeat {
                generation,
                activity,
            } => {
                if generation == self.generation && idle::heartbeat_is_active(&activity) {
                    tracing::trace!(?activity, "busy heartbeat");
                    self.touch();
                }
            }
            Command::SetSecrets { secrets, reply } => {
                let r = self.set_secrets(secrets).await;
                let _ = reply.send(r);
            }
            Command::Expose { expose, reply } => {
                let r = if self
                    .spec
                    .exposes
                    .iter()
                    .any(|e| e.guest_port == expose.guest_port)
                {
                    Err(LifecycleError::AlreadyExposed {
                        id: self.id(),
                        port: expose.guest_port,
                    })
                } else {
                    self.spec.exposes.push(expose);
                    self.persist_spec().await.map(|()| self.view())
                };
                let _ = reply.send(r);
            }
            Command::Unexpose { guest_port, reply } => {
                let r = match self
                    .spec
                    .exposes
                    .iter()
                    .position(|e| e.guest_port == guest_port)
                {
                    None => Err(LifecycleError::NotExposed {
                        id: self.id(),
                        port: guest_port,
                    }),
                    Some(i) => {
                        let removed = self.spec.exposes.remove(i);
                        self.persist_spec().await.map(|()| removed)
                    }
                };
                let _ = reply.send(r);
            }
            Command::Delete { reply } => {
                let r = self.delete().await;
                let ok = r.is_ok();
                let _ = reply.send(r);
                if ok {
                    return Flow::End;
                }
            }
            Command::Shutdown { reply } => {
                self.ctx.daemons.stop(&self.row.id).await;
                let r = self
                    .stop(StopMode::Graceful, "daemon shut down")
                    .await
                    .map(drop);
                let _ = reply.send(r);
                return Flow::End;
            }
            Command::BootFinished { generation, result } => {
                if generation == self.generation {
                    self.boot_finished(result).await;
                }
            }
            Command::VmExited { generation, exit } => {
                if generation == self.generation
                    && matches!(self.state, State::Running(_) | State::Paused(_))
                {
                    self.log.system(format!("VM exited unexpectedly ({exit})"));
                    tracing::warn!(%exit, "VM crashed");
                    self.state = State::Stopped;
                    self.settle_stopped(format!("VM exited unexpectedly ({exit})"))
                        .await;
                }
            }
            Command::PrimaryExited { generation, status } => {
                if generation == self.generation
                    && matches!(self.state, State::Running(_) | State::Paused(_))
                {
                    self.row.exit_code = Some(status.code);
                    let reason = format!("process exited (code={})", status.code);
                    let _ = self.stop(StopMode::Graceful, &reason).await;
                }
            }
        }
        Flow::Continue
    }

    async fn start(&mut self) -> Result<Instance, LifecycleError> {
        if !self.row.enabled {
            self.row.enabled = true;
            self.persist().await?;
        }
        self.ensure_daemons();
        match self.state {
            State::Starting { .. } | State::Running(_) | State::Paused(_) => {
                return Ok(self.view());
            }
            State::Stopped => {}
        }
        self.begin_boot(Vec::new()).await?;
        Ok(self.view())
    }

    async fn begin_boot(&mut self, waiters: Vec<Reply<GuestLink>>) -> Result<(), LifecycleError> {
        next(self.state.status(), Event::Boot)?;
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
        self.state = State::Starting {
            waiters,
            cancel: cancel.clone(),
            deferred: Vec::new(),
            secrets,
        };
        self.row.reason = None;
        self.row.exit_code = None;
        self.touch();
        self.persist_status().await?;
        let ctx = Arc::clone(&self.ctx);
        let id = self.id();
        let spec = self.spec.clone();
        let hostname = self.row.handle.clone().unwrap_or_else(|| id.clone());
        let (sink, output) =
            OutputRouter::spawn(Arc::clone(&self.log), self.tx.clone(), generation);
        let tx = self.tx.clone();
        let log = Arc::clone(&self.log);
        tokio::spawn(async move {
            let result = boot_task(&ctx, &id, &spec, hostname, &log, sink, output, &cancel).await;
            let result = result.map(Box::new);
            let _ = tx.send(Command::BootFinished { generation, result }).await;
        });
        Ok(())
    }

    async fn boot_finished(&mut self, result: Result<Box<Booted>, LifecycleError>) {
        let result = result.map(|booted| *booted);
        let State::Starting {
            waiters,
            deferred,
            cancel,
            secrets,
        } = std::mem::replace(&mut self.state, State::Stopped)
        else {
            return;
        };
        match result {
            Ok(booted) if !cancel.is_cancelled() => {
                let process = self.process_spec(&booted.image);
                let live = Live {
                    link: GuestLink {
                        control: booted.guest.control.clone(),
                        output: booted.output,
                        defaults: ProcessSpec {
                            argv: Vec::new(),
                            ..process.clone()
                        },
                        secrets: Arc::new(secrets.without_keys_of(&self.spec.env)),
                        ingress: booted.guest.ingress,
                        woke: false,
                    },
                    guest: booted.guest,
                };
                self.watch_vm(&live);
                if booted.restored {
                    self.saved = None;
                    self.correct_clock(&live).await;
                    self.log
                        .system("restored from the snapshot: the processes carry on");
                    self.state = State::Running(live);
                    let _ = self.persist_status().await;
                    for w in waiters {
                        let _ = w.send(self.link().map(|l| GuestLink { woke: true, ..l }));
                    }
                } else {
                    self.saved = None;
                    self.run_primary(live, process, waiters).await;
                }
            }
            Ok(booted) => {
                // Cancelled after the guest came up: end it right away.
                let live = Live {
                    link: GuestLink {
                        control: booted.guest.control.clone(),
                        output: booted.output,
                        defaults: ProcessSpec::default(),
                        secrets: Arc::default(),
                        ingress: booted.guest.ingress,
                        woke: false,
                    },
                    guest: booted.guest,
                };
                self.state = State::Running(live);
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

    /// Sets the guest's wall clock after a restore: it stood still while the VM was on disk.
    async fn correct_clock(&self, live: &Live) {
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

    /// Starts the primary process of a freshly booted guest and answers the waiters.
    async fn run_primary(
        &mut self,
        live: Live,
        process: ProcessSpec,
        waiters: Vec<Reply<GuestLink>>,
    ) {
        {
            match self.start_primary(&live, process).await {
                Ok(pid) => {
                    self.log.system(format!("running (guest pid {pid})"));
                    self.state = State::Running(live);
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
                    self.state = State::Running(live);
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
    }

    /// Records a failed boot and answers the waiters.
    async fn boot_failed(&mut self, e: LifecycleError, waiters: Vec<Reply<GuestLink>>) {
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
        self.settle_stopped(reason.clone()).await;
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
    fn process_spec(&self, image: &ImageConfig) -> ProcessSpec {
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

    /// Starts the primary process with the boot's secrets injected: the image's environment,
    /// then the secrets, then the instance's explicit variables (which the link's secrets
    /// already exclude). The values travel only in this control-channel call.
    async fn start_primary(
        &self,
        live: &Live,
        mut process: ProcessSpec,
    ) -> Result<u32, LifecycleError> {
        live.link.secrets.inject_into(&mut process.env);
        let res: Result<SpawnResult, _> = live
            .link
            .control
            .call(Method::Run, &process, CONTROL_CALL_TIMEOUT)
            .await;
        scrub_env(&mut process.env);
        let res = res.map_err(|source| LifecycleError::Control {
            id: self.id(),
            source,
        })?;
        Ok(res.pid)
    }

    /// Starts the instance daemons of its kit that do not run (it is enabled).
    fn ensure_daemons(&self) {
        let Some(kit) = self
            .spec
            .kit_config
            .as_ref()
            .filter(|k| !k.daemons.is_empty())
        else {
            return;
        };
        self.ctx.daemons.ensure(&DaemonContext {
            instance_id: self.id(),
            handle: self.row.handle.clone(),
            kit: (kit.name.clone(), kit.version.clone()),
            daemons: kit.daemons.clone(),
            ports: self
                .spec
                .exposes
                .iter()
                .map(|e| (e.guest_port, e.public_port, e.protocol.as_str()))
                .collect(),
            log: Arc::clone(&self.log),
        });
    }

    /// Decrypts the secrets the instance asks for (none, names, or all; plus its kit's).
    async fn resolve_secrets(&self) -> Result<SecretEnv, LifecycleError> {
        let secrets_err = |source| LifecycleError::Secrets {
            id: self.id(),
            source,
        };
        let names = match &self.spec.kit_config {
            Some(kit) => secret_selection(&self.ctx.secrets, kit, &self.spec.secrets)
                .await
                .map_err(|e| match e {
                    SelectError::Preset(source) => LifecycleError::Kit {
                        id: self.id(),
                        source,
                    },
                    SelectError::Store(e) => secrets_err(e),
                })?,
            None => self.spec.secrets.clone(),
        };
        let selection = SecretSelection::parse(&names)
            .map_err(|name| secrets_err(crate::secrets::SecretError::InvalidName(name)))?;
        self.ctx
            .secrets
            .resolve(&selection)
            .await
            .map_err(secrets_err)
    }

    /// Records a new set of secret names; it applies from the next boot on.
    async fn set_secrets(&mut self, secrets: Vec<String>) -> Result<Instance, LifecycleError> {
        if self.spec.secrets == secrets {
            return Ok(self.view());
        }
        self.spec.secrets = secrets;
        self.persist_spec().await?;
        // A restored VM keeps the environment it had: start the next one fresh.
        self.discard_snapshot("the secrets changed");
        let shown = if self.spec.secrets.is_empty() {
            "none".to_owned()
        } else {
            self.spec.secrets.join(", ")
        };
        let when = match self.state {
            State::Stopped => "injected at the next start",
            State::Starting { .. } | State::Running(_) | State::Paused(_) => {
                "injected from the next boot on; the running VM keeps what it got"
            }
        };
        self.log.system(format!("secrets set to {shown}: {when}"));
        Ok(self.view())
    }

    fn watch_vm(&self, live: &Live) {
        let mut exited = live.guest.vm.exited();
        let tx = self.tx.clone();
        let generation = self.generation;
        tokio::spawn(async move {
            let exit = aegis_vmm::wait_for_exit(&mut exited).await;
            let _ = tx.send(Command::VmExited { generation, exit }).await;
        });
    }

    async fn stop(&mut self, mode: StopMode, reason: &str) -> Result<Instance, LifecycleError> {
        let live = match std::mem::replace(&mut self.state, State::Stopped) {
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
                self.state = other;
                return Ok(self.view());
            }
        };
        let exit = shutdown_guest(live.guest, mode).await;
        tracing::info!(%exit, reason, "stopped");
        self.log.system(format!("stopped: {reason}"));
        self.settle_stopped(reason.to_owned()).await;
        Ok(self.view())
    }

    /// Stops by request or idleness: saves a snapshot when the instance wants one (pause,
    /// write, end the VM), else, or when saving fails, stops gracefully.
    async fn stop_saving(&mut self, reason: &str) -> Result<Instance, LifecycleError> {
        let wanted = self.spec.snapshot_possible() && self.ctx.boot.vmm.capabilities().snapshot;
        let (live, was_paused) = match std::mem::replace(&mut self.state, State::Stopped) {
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
                self.state = other;
                return self.stop(StopMode::Graceful, reason).await;
            }
        };
        let files = SnapshotFiles::new(&self.ctx.config.instance_dir(&self.row.id));
        let written = async {
            if !was_paused {
                live.guest.vm.pause().await.map_err(|e| e.to_string())?;
            }
            std::fs::create_dir_all(&files.dir)
                .map_err(|e| format!("cannot create {}: {e}", files.dir.display()))?;
            files
                .save(live.guest.vm.as_ref(), &self.ctx.secrets, &self.row.id)
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
                self.state = State::Paused(live);
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
        self.settle_stopped(reason.to_owned()).await;
        Ok(self.view())
    }

    /// Removes the instance's snapshot, if it has one, saying why in its log.
    fn discard_snapshot(&mut self, why: &str) {
        let files = SnapshotFiles::new(&self.ctx.config.instance_dir(&self.row.id));
        if files.dir.exists() {
            files.discard();
            self.log.system(format!("snapshot discarded: {why}"));
        }
        self.saved = None;
        self.publish();
    }

    /// Records the stopped state (the VM is already gone).
    async fn settle_stopped(&mut self, reason: String) {
        self.state = State::Stopped;
        self.row.reason = Some(reason);
        self.row.stopped_at = Some(now_ts());
        if let Err(e) = self.persist_status().await {
            tracing::error!(error = %e, "cannot record stop");
        }
    }

    async fn disable(&mut self) -> Result<Instance, LifecycleError> {
        self.row.enabled = false;
        self.ctx.daemons.stop(&self.row.id).await;
        self.stop(StopMode::Graceful, "disabled").await?;
        self.discard_snapshot("disabled");
        self.persist().await?;
        Ok(self.view())
    }

    async fn pause(&mut self) -> Result<Instance, LifecycleError> {
        let to = next(self.state.status(), Event::Pause)?;
        let State::Running(live) = std::mem::replace(&mut self.state, State::Stopped) else {
            unreachable_state();
            return Ok(self.view());
        };
        if let Err(source) = live.guest.vm.pause().await {
            self.state = State::Running(live);
            return Err(LifecycleError::Vmm {
                id: self.id(),
                source,
            });
        }
        self.state = State::Paused(live);
        self.paused_since = Some(Instant::now());
        debug_assert_eq!(self.state.status(), to);
        self.log.system("paused");
        self.persist_status().await?;
        Ok(self.view())
    }

    async fn resume(&mut self) -> Result<Instance, LifecycleError> {
        next(self.state.status(), Event::Resume)?;
        self.resume_inner().await?;
        Ok(self.view())
    }

    async fn resume_inner(&mut self) -> Result<(), LifecycleError> {
        let State::Paused(live) = std::mem::replace(&mut self.state, State::Stopped) else {
            unreachable_state();
            return Ok(());
        };
        if let Err(source) = live.guest.vm.resume().await {
            self.state = State::Paused(live);
            return Err(LifecycleError::Vmm {
                id: self.id(),
                source,
            });
        }
        self.state = State::Running(live);
        self.paused_since = None;
        self.touch();
        self.log.system("resumed");
        self.row.last_active_at = Some(now_ts());
        self.persist_status().await
    }

    async fn wake(&mut self, reply: Reply<GuestLink>) {
        match &mut self.state {
            State::Running(_) => {
                self.touch();
                let _ = reply.send(self.link());
            }
            State::Starting { waiters, .. } => waiters.push(reply),
            State::Paused(_) => {
                let r = match self.resume_inner().await {
                    Ok(()) => self.link().map(|l| GuestLink { woke: true, ..l }),
                    Err(e) => Err(e),
                };
                let _ = reply.send(r);
            }
            State::Stopped if !self.row.enabled => {
                let _ = reply.send(Err(LifecycleError::Disabled { id: self.id() }));
            }
            State::Stopped => {
                self.log.system("woken by a request");
                if let Err(e) = self.begin_boot(vec![]).await {
                    let _ = reply.send(Err(e));
                } else if let State::Starting { waiters, .. } = &mut self.state {
                    waiters.push(reply);
                }
            }
        }
    }

    fn link(&self) -> Result<GuestLink, LifecycleError> {
        match &self.state {
            State::Running(live) | State::Paused(live) => Ok(live.link.clone()),
            State::Stopped | State::Starting { .. } => Err(LifecycleError::Stopped {
                id: self.id(),
                reason: self
                    .row
                    .reason
                    .clone()
                    .unwrap_or_else(|| "not running".to_owned()),
            }),
        }
    }

    async fn delete(&mut self) -> Result<(), LifecycleError> {
        self.ctx.daemons.stop(&self.row.id).await;
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

    /// Re-attaches to the VM a previous daemon left running, or records that it is gone.
    async fn recover(&mut self) {
        let status = InstanceStatus::parse(&self.row.status).unwrap_or(InstanceStatus::Stopped);
        if status == InstanceStatus::Stopped {
            return;
        }
        self.generation += 1;
        let paused = status == InstanceStatus::Paused;
        let (sink, output) =
            OutputRouter::spawn(Arc::clone(&self.log), self.tx.clone(), self.generation);
        let run_dir = self.ctx.config.instance_dir(&self.row.id).join("run");
        match boot::attach(&self.ctx.boot, &run_dir, sink, paused).await {
            Ok(guest) => {
                let ctx = Arc::clone(&self.ctx);
                let (image_ref, digest) =
                    (self.spec.image_ref.clone(), self.spec.image_digest.clone());
                let image = tokio::task::spawn_blocking(move || {
                    ctx.images.resolve_blocking(&image_ref, digest.as_deref())
                })
                .await
                .ok()
                .and_then(Result::ok)
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
                let live = Live {
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
                };
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
                self.state = if paused {
                    State::Paused(live)
                } else {
                    State::Running(live)
                };
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
                self.settle_stopped(reason).await;
            }
        }
    }

    async fn persist_spec(&mut self) -> Result<(), LifecycleError> {
        self.row.spec =
            serde_json::to_string(&self.spec).map_err(|e| LifecycleError::Registry {
                id: self.id(),
                source: crate::registry::RegistryError::Corrupt {
                    id: self.id(),
                    reason: e.to_string(),
                },
            })?;
        self.persist().await
    }

    async fn persist_status(&mut self) -> Result<(), LifecycleError> {
        self.row.status = self.state.status().as_str().to_owned();
        self.persist().await
    }

    async fn persist(&mut self) -> Result<(), LifecycleError> {
        let res = self
            .ctx
            .registry
            .update_instance(self.row.clone())
            .await
            .map_err(|source| LifecycleError::Registry {
                id: self.id(),
                source,
            });
        self.publish();
        res
    }

    fn publish(&self) {
        self.snapshot.send_replace(self.view());
    }

    fn view(&self) -> Instance {
        let pid = match &self.state {
            State::Running(l) | State::Paused(l) => Some(l.guest.vm.pid()),
            State::Stopped | State::Starting { .. } => None,
        };
        let mut row = self.row.clone();
        row.status = self.state.status().as_str().to_owned();
        render(&self.ctx, &row, &self.spec, pid, self.saved.clone())
    }
}

fn unreachable_state() {
    tracing::error!("instance actor reached a state its transition table excludes");
}

/// Builds the API view of an instance.
pub fn render(
    ctx: &Ctx,
    row: &InstanceRow,
    spec: &InstanceSpec,
    vmm_pid: Option<u32>,
    saved: Option<SnapshotView>,
) -> Instance {
    Instance {
        id: row.id.clone(),
        handle: row.handle.clone(),
        state: InstanceStatus::parse(&row.status).unwrap_or(InstanceStatus::Stopped),
        enabled: row.enabled,
        image_ref: spec.image_ref.clone(),
        command: spec.command.clone(),
        entrypoint: spec.entrypoint.clone(),
        auto_remove: spec.auto_remove,
        env_keys: spec.env.keys().cloned().collect(),
        created_at: row.created_at.clone(),
        stopped_at: row.stopped_at.clone(),
        last_active_at: row.last_active_at.clone(),
        endpoints: spec
            .exposes
            .iter()
            .map(crate::router::endpoint_view)
            .collect(),
        secret_keys: spec.secrets.clone(),
        kit: spec.kit.clone(),
        memory_mb: spec.memory_mib,
        vcpus: spec.vcpus,
        workspace: ctx
            .workspaces
            .view(&spec.workspace(), &ctx.config.instance_dir(&row.id)),
        reason: row.reason.clone(),
        exit_code: row.exit_code,
        vmm_pid,
        idle_pause_secs: spec.idle_pause_secs,
        idle_stop_secs: spec.idle_stop_secs,
        egress: spec.egress,
        snapshot: spec.snapshot,
        saved_snapshot: saved,
        egress_hints: spec
            .kit_config
            .as_ref()
            .map(|k| k.egress.clone())
            .unwrap_or_default(),
        daemons: Vec::new(),
    }
}

/// Resolves the image and brings the guest up (runs in its own task): from the instance's
/// snapshot when there is a usable one, else by a cold boot. A snapshot that cannot be used is
/// discarded with a system log line; either way none is left once the guest runs.
#[allow(clippy::too_many_arguments)]
async fn boot_task(
    ctx: &Arc<Ctx>,
    id: &str,
    spec: &InstanceSpec,
    hostname: String,
    log: &InstanceLog,
    sink: crate::control::NotificationSink,
    output: OutputRouter,
    cancel: &CancellationToken,
) -> Result<Booted, LifecycleError> {
    let boot_err = |source| LifecycleError::Boot {
        id: id.to_owned(),
        source,
    };
    let (image_ref, digest) = (spec.image_ref.clone(), spec.image_digest.clone());
    let images = ctx.images.clone();
    let resolved =
        tokio::task::spawn_blocking(move || images.resolve_blocking(&image_ref, digest.as_deref()))
            .await
            .map_err(|e| LifecycleError::Image {
                id: id.to_owned(),
                source: crate::images::ImageError::Build {
                    reference: spec.image_ref.clone(),
                    message: e.to_string(),
                },
            })?
            .map_err(|source| LifecycleError::Image {
                id: id.to_owned(),
                source,
            })?;
    let dir = ctx.config.instance_dir(id);
    let plan = BootPlan {
        run_dir: dir.join("run"),
        base_image: resolved.base,
        overlay: dir.join("root.qcow2"),
        memory_mib: spec.memory_mib,
        vcpus: spec.vcpus,
        hostname,
        egress: spec.egress,
        forwards: Vec::new(),
        workspace: ctx
            .workspaces
            .attachment(&spec.workspace(), &dir)
            .map_err(|e| boot_err(BootError::Workspace(e)))?,
    };
    let prepared = boot::prepare(&ctx.boot, &plan).await.map_err(boot_err)?;
    let files = SnapshotFiles::new(&dir);
    let restored = try_restore(ctx, spec, &plan, &prepared, &files, log, &sink, cancel)
        .await
        .map_err(boot_err)?;
    if let Some(guest) = restored {
        return Ok(Booted {
            guest,
            image: resolved.config,
            output,
            restored: true,
        });
    }
    log.system(format!(
        "booting ({} MiB, {} vCPU)",
        spec.memory_mib, spec.vcpus
    ));
    let guest = boot::launch(&ctx.boot, prepared, boot::Origin::Boot, sink, cancel)
        .await
        .map_err(boot_err)?;
    Ok(Booted {
        guest,
        image: resolved.config,
        output,
        restored: false,
    })
}

/// Restores the instance's snapshot if it has a usable one. `Ok(None)` means cold-boot: there
/// was none, or it was discarded (with a log line saying why).
#[allow(clippy::too_many_arguments)]
async fn try_restore(
    ctx: &Ctx,
    spec: &InstanceSpec,
    plan: &BootPlan,
    prepared: &boot::Prepared,
    files: &SnapshotFiles,
    log: &InstanceLog,
    sink: &crate::control::NotificationSink,
    cancel: &CancellationToken,
) -> Result<Option<Guest>, BootError> {
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
    let launched = boot::launch(&ctx.boot, prepared.clone(), origin, sink.clone(), cancel).await;
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
