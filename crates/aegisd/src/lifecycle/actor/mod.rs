//! One task per instance owns its state, its VM and its control channel. Everyone else sends it
//! [`Command`]s; reads come from the [`Instance`] snapshot it publishes on every change, so a
//! list never waits behind a boot.
//!
//! Long work does not block the mailbox: the boot runs in its own task and reports back with
//! `BootFinished`, and an exec waits for the guest in its own task. Wakes that arrive while a
//! boot runs wait together and are answered at once (wake coalescing). Stop, delete and friends
//! cancel a running boot and are replayed once it ended. A graceful stop is awaited inline: it
//! is bounded by [`STOP_DEADLINE`].
//!
//! Every change of state goes through [`Actor::enter`], which checks it against the transition
//! table in `state.rs`. The concerns live in their own files: `boot` (start, cold boot, the
//! primary process), `restore` (snapshot restore and re-attaching after a daemon restart),
//! `stop` (stop, snapshot save, disable, delete), `idle` (pause, resume, wake, idle timers),
//! `exec`, `configure` (secrets, exposed ports) and `record` (the registry row and the
//! published view).

mod boot;
mod configure;
mod exec;
mod idle;
mod record;
mod restore;
mod stop;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_proto::api::{Instance, InstanceStatus, SnapshotView};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::boot::Guest;
use super::command::{Command, GuestLink, LifecycleError, Reply, StopMode};
use super::idle::IDLE_TICK;
use super::processes::ProcessTable;
use super::snapshot::SnapshotFiles;
use super::spec::InstanceSpec;
use super::state::{next, Event};
use super::Ctx;
use crate::ids::InstanceId;
use crate::logs::{now_ts, InstanceLog};
use crate::registry::InstanceRow;
use crate::secrets::SecretEnv;

pub use record::render;

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
    /// The status last entered through [`Actor::enter`]. While a state is taken out to work on
    /// its guest ([`Actor::take`]) this still says what the instance is.
    status: InstanceStatus,
    generation: u64,
    log: Arc<InstanceLog>,
    tx: mpsc::Sender<Command>,
    rx: mpsc::Receiver<Command>,
    snapshot: watch::Sender<Instance>,
    /// Open routed connections and running execs (counted by their guards).
    connections: Arc<AtomicUsize>,
    /// The processes started through the API.
    processes: Arc<ProcessTable>,
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
        processes: Arc<ProcessTable>,
    ) -> (Actor, mpsc::Sender<Command>, watch::Receiver<Instance>) {
        let (tx, rx) = mpsc::channel(64);
        let saved = SnapshotFiles::new(&ctx.config.instance_dir(row.id.as_str()))
            .load()
            .map(|m| m.view());
        // Until `recover` has re-attached (or not), a VM left running by a previous daemon is
        // shown with the pid it runs under.
        let pid = (row.status != InstanceStatus::Stopped)
            .then(|| {
                ctx.boot
                    .vmm
                    .running_pid(&ctx.config.instance_dir(row.id.as_str()).join("run"))
            })
            .flatten();
        let view = render(&ctx, &row, &spec, pid, saved.clone());
        let (snapshot, snapshot_rx) = watch::channel(view);
        let actor = Actor {
            ctx,
            row,
            spec,
            state: State::Stopped,
            status: InstanceStatus::Stopped,
            generation: 0,
            log,
            tx: tx.clone(),
            rx,
            snapshot,
            connections,
            processes,
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
            let mut tick = tokio::time::interval(IDLE_TICK);
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

    fn touch(&mut self) {
        self.last_active = Instant::now();
        self.row.last_active_at = Some(now_ts());
    }

    fn id(&self) -> InstanceId {
        self.row.id.clone()
    }

    /// Takes the state out to work on its guest, leaving `Stopped` in its place; the status
    /// stays what it was until [`Actor::enter`] or [`Actor::put_back`].
    fn take(&mut self) -> State {
        std::mem::replace(&mut self.state, State::Stopped)
    }

    /// Puts back a state taken out and left as it was (a pause or resume that failed).
    fn put_back(&mut self, state: State) {
        debug_assert_eq!(state.status(), self.status);
        self.state = state;
    }

    /// The one way the instance changes state: `event` must lead from the current status to
    /// the new state's, by the table in `state.rs`.
    fn enter(&mut self, event: Event, state: State) {
        let to = state.status();
        match next(self.status, event) {
            Ok(allowed) if allowed == to => {}
            Ok(allowed) => {
                tracing::error!(from = ?self.status, ?event, ?to, ?allowed, "instance actor entered another state than its transition table gives")
            }
            Err(e) => {
                tracing::error!(error = %e, ?to, "instance actor made a transition its table excludes")
            }
        }
        self.status = to;
        self.state = state;
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
                | Command::Exec { .. }
                | Command::Touch
                | Command::SetSecrets { .. }
                | Command::SetLifetime { .. }
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
                let r = self.restart().await;
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
            Command::Exec { request, reply } => self.exec(request, reply).await,
            Command::Touch => {
                self.touch();
                self.publish();
            }
            Command::Heartbeat {
                generation,
                activity,
            } => {
                if generation == self.generation {
                    self.heartbeat(&activity);
                }
            }
            Command::SetSecrets { secrets, reply } => {
                let r = self.set_secrets(secrets).await;
                let _ = reply.send(r);
            }
            Command::SetLifetime { lifetime, reply } => {
                let r = self.set_lifetime(lifetime).await;
                let _ = reply.send(r);
            }
            Command::Expose { expose, reply } => {
                let r = self.expose(expose).await;
                let _ = reply.send(r);
            }
            Command::Unexpose { guest_port, reply } => {
                let r = self.unexpose(guest_port).await;
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
                if generation == self.generation {
                    self.vm_exited(exit).await;
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

    fn watch_vm(&self, live: &Live) {
        let mut exited = live.guest.vm.exited();
        let tx = self.tx.clone();
        let generation = self.generation;
        tokio::spawn(async move {
            let exit = aegis_vmm::wait_for_exit(&mut exited).await;
            let _ = tx.send(Command::VmExited { generation, exit }).await;
        });
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
}
