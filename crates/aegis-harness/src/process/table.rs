//! The processes the harness runs for the host — the primary process (`run`) and any number of
//! execs — and the rules about them: one primary at a time, exec ids unique while running, at
//! most [`MAX_PROCESSES`], nothing new once shutdown began.
//!
//! The table is owned by the RPC server task; nobody else touches it. A process stays in the
//! table until its [`Supervisor`] has seen both pipes close and the reaper report its exit; only
//! then is it removed and its `exit` notification sent, so a host that reacts to `exit` with a
//! new `run` never sees "already running".

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use std::os::fd::{AsFd, OwnedFd};

use aegis_proto::control::{ExecId, ExitStatus, ProcessSpec, Stream, WindowSize, MAX_PROCESSES};
use tokio::sync::{oneshot, watch};

use super::input::Inputs;
use super::output;
use super::reaper::{ChildKey, KillError, Reaper};
use super::spawn::{spawn, Io, SpawnError, SpawnedIo};
use super::terminal;
use crate::channel::writer::OutboxSender;
use crate::console;

/// Highest Linux signal number (`SIGRTMAX`).
pub const MAX_SIGNAL: i32 = 64;

/// Which process a request means.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Slot {
    /// The primary process.
    Primary,
    /// An exec.
    Exec(ExecId),
}

impl Slot {
    /// The wire's view: `None` for the primary process.
    pub fn exec_id(&self) -> Option<ExecId> {
        match self {
            Slot::Primary => None,
            Slot::Exec(id) => Some(id.clone()),
        }
    }
}

impl From<Option<ExecId>> for Slot {
    fn from(exec_id: Option<ExecId>) -> Slot {
        exec_id.map_or(Slot::Primary, Slot::Exec)
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Slot::Primary => f.write_str("the primary process"),
            Slot::Exec(id) => write!(f, "exec {id:?}", id = id.0),
        }
    }
}

/// Why a process was not started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The slot is taken.
    #[error("{slot} is already running")]
    AlreadyRunning {
        /// The slot.
        slot: Slot,
    },
    /// [`MAX_PROCESSES`] reached.
    #[error("{limit} processes are already running")]
    TooMany {
        /// The limit.
        limit: usize,
    },
    /// Shutdown has begun.
    #[error("the harness is shutting down")]
    ShuttingDown,
    /// The spawn itself failed.
    #[error("cannot start {slot}")]
    Spawn {
        /// The slot.
        slot: Slot,
        /// The cause.
        #[source]
        source: SpawnError,
    },
}

/// Why a signal was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// Not a Linux signal number.
    #[error("invalid signal {signal}: expected 1 to {MAX_SIGNAL}")]
    InvalidSignal {
        /// The number given.
        signal: i32,
    },
    /// Nothing runs in that slot.
    #[error("{slot} is not running")]
    NoSuchProcess {
        /// The slot.
        slot: Slot,
    },
    /// The process has exited; its output may still be draining.
    #[error("{slot} has exited")]
    Exited {
        /// The slot.
        slot: Slot,
    },
    /// kill(2) failed.
    #[error("cannot signal {slot}")]
    Kill {
        /// The slot.
        slot: Slot,
        /// The cause.
        #[source]
        source: KillError,
    },
}

/// Why a terminal was not resized.
#[derive(Debug, thiserror::Error)]
pub enum ResizeError {
    /// Nothing runs in that slot.
    #[error("{slot} is not running")]
    NoSuchProcess {
        /// The slot.
        slot: Slot,
    },
    /// It was started without `tty`.
    #[error("{slot} has no terminal (it was started without tty)")]
    NoTerminal {
        /// The slot.
        slot: Slot,
    },
    /// ioctl(2) failed.
    #[error("cannot resize the terminal of {slot}")]
    Ioctl {
        /// The slot.
        slot: Slot,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A process that ended: both pipes closed and reaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// Its slot.
    pub slot: Slot,
    /// Its identity.
    pub key: ChildKey,
    /// How it ended.
    pub status: ExitStatus,
    /// Whether it was killed for running past its timeout.
    pub timed_out: bool,
}

/// How a process is started, beyond its [`ProcessSpec`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StartOptions {
    /// A stdin pipe for the data service to feed (execs only).
    pub stdin: bool,
    /// Kill the process group this long after the start.
    pub timeout: Option<Duration>,
    /// Run it on a terminal of this size instead of pipes (execs only; `stdin` is then moot).
    pub tty: Option<WindowSize>,
}

/// Watches one process: pumps both pipes (a terminal's output is the attached connection's
/// business) and waits for the reaper's report.
#[derive(Debug)]
pub struct Supervisor {
    slot: Slot,
    key: ChildKey,
    /// Stdout and stderr, unless the process runs on a terminal.
    pipes: Option<(OwnedFd, OwnedFd)>,
    exited: oneshot::Receiver<ExitStatus>,
    outbox: OutboxSender,
    timeout: Option<Duration>,
    reaper: Reaper,
}

impl Supervisor {
    /// The process's pid.
    pub fn pid(&self) -> u32 {
        self.key.pid.unsigned_abs()
    }

    /// Runs until the process has ended and all its output was handed to the writer.
    pub async fn run(self) -> Finished {
        let Supervisor {
            slot,
            key,
            pipes,
            mut exited,
            outbox,
            timeout,
            reaper,
        } = self;
        let ended = async {
            if let Some(timeout) = timeout {
                tokio::select! {
                    status = &mut exited => return (exit_status(status.ok(), &slot), false),
                    () = tokio::time::sleep(timeout) => {}
                }
                console::line(format_args!(
                    "{slot} ran past its timeout of {} ms: killing its process group",
                    timeout.as_millis()
                ));
                // Already gone between the timer and the kill: its own exit stands.
                let killed = reaper.signal_group(key, libc::SIGKILL).is_ok();
                (exit_status(exited.await.ok(), &slot), killed)
            } else {
                (exit_status(exited.await.ok(), &slot), false)
            }
        };
        let pumped = async {
            if let Some((stdout, stderr)) = pipes {
                tokio::join!(
                    output::pump(stdout, Stream::Stdout, slot.exec_id(), outbox.clone()),
                    output::pump(stderr, Stream::Stderr, slot.exec_id(), outbox.clone()),
                );
            }
        };
        let ((), (status, timed_out)) = tokio::join!(pumped, ended);
        Finished {
            slot,
            key,
            status,
            timed_out,
        }
    }
}

fn exit_status(exited: Option<ExitStatus>, slot: &Slot) -> ExitStatus {
    match exited {
        Some(status) => status,
        // The reaper only drops a sender after sending, so this means it is gone; main treats
        // that as fatal. Report something rather than hang.
        None => {
            console::line(format_args!(
                "no exit status for {slot}: the reaper is gone"
            ));
            ExitStatus::exited(255)
        }
    }
}

/// The table of running processes.
#[derive(Debug)]
pub struct Processes {
    reaper: Reaper,
    inputs: Inputs,
    running: HashMap<Slot, ChildKey>,
    accepting: bool,
    /// How many execs (not the primary) are in the table, published for the heartbeat.
    execs: watch::Sender<u32>,
}

impl Processes {
    /// An empty table spawning through `reaper`, keeping stdin pipes in `inputs`.
    pub fn new(reaper: Reaper, inputs: Inputs) -> Processes {
        Processes {
            reaper,
            inputs,
            running: HashMap::new(),
            accepting: true,
            execs: watch::Sender::new(0),
        }
    }

    /// Follows the number of execs in the table (the primary process not counted).
    pub fn subscribe_execs(&self) -> watch::Receiver<u32> {
        self.execs.subscribe()
    }

    fn publish_execs(&self) {
        let execs = self
            .running
            .keys()
            .filter(|slot| matches!(slot, Slot::Exec(_)))
            .count();
        self.execs
            .send_replace(u32::try_from(execs).unwrap_or(u32::MAX));
    }

    /// Starts `spec` in `slot`. The caller sends the reply first, then runs the returned
    /// supervisor, so the reply precedes the process's output on the wire.
    ///
    /// # Errors
    /// [`StartError`] when the slot is taken, the limit reached, shutdown begun or the spawn
    /// failed.
    pub fn start(
        &mut self,
        slot: Slot,
        spec: &ProcessSpec,
        options: StartOptions,
        outbox: &OutboxSender,
    ) -> Result<Supervisor, StartError> {
        if !self.accepting {
            return Err(StartError::ShuttingDown);
        }
        if self.running.contains_key(&slot) {
            return Err(StartError::AlreadyRunning { slot });
        }
        if self.running.len() >= MAX_PROCESSES {
            return Err(StartError::TooMany {
                limit: MAX_PROCESSES,
            });
        }
        let io = match options.tty {
            Some(size) => Io::Terminal(size),
            None => Io::Pipes {
                stdin: options.stdin,
            },
        };
        let spawned = spawn(spec, io, &self.reaper).map_err(|source| StartError::Spawn {
            slot: slot.clone(),
            source,
        })?;
        let pipes = match spawned.io {
            SpawnedIo::Pipes {
                stdin,
                stdout,
                stderr,
            } => {
                if let Some(pipe) = stdin {
                    self.inputs.insert(slot.exec_id(), pipe);
                }
                Some((stdout, stderr))
            }
            SpawnedIo::Terminal { master } => {
                self.inputs.insert_terminal(slot.exec_id(), master);
                None
            }
        };
        self.running.insert(slot.clone(), spawned.key);
        self.publish_execs();
        Ok(Supervisor {
            slot,
            key: spawned.key,
            pipes,
            exited: spawned.exited,
            outbox: outbox.clone(),
            timeout: options.timeout,
            reaper: self.reaper.clone(),
        })
    }

    /// Removes a finished process. Returns whether it was in the table.
    pub fn finish(&mut self, finished: &Finished) -> bool {
        match self.running.get(&finished.slot) {
            Some(key) if *key == finished.key => {
                self.running.remove(&finished.slot);
                // A pipe not being fed: closing it is all that is left to do.
                self.inputs.remove(&finished.slot.exec_id());
                self.publish_execs();
                true
            }
            Some(_) | None => false,
        }
    }

    /// Sends `signal` to the process group of the process in `slot`.
    ///
    /// # Errors
    /// [`SignalError`] when the number is invalid, nothing runs there or it already exited.
    pub fn signal(&self, slot: Slot, signal: i32) -> Result<(), SignalError> {
        if !(1..=MAX_SIGNAL).contains(&signal) {
            return Err(SignalError::InvalidSignal { signal });
        }
        let Some(key) = self.running.get(&slot) else {
            return Err(SignalError::NoSuchProcess { slot });
        };
        match self.reaper.signal_group(*key, signal) {
            Ok(()) => Ok(()),
            Err(KillError::Exited { .. }) => Err(SignalError::Exited { slot }),
            Err(source) => Err(SignalError::Kill { slot, source }),
        }
    }

    /// Sets the window size of the terminal of the process in `slot`.
    ///
    /// # Errors
    /// [`ResizeError`] when nothing runs there or it has no terminal.
    pub fn resize(&self, slot: Slot, size: WindowSize) -> Result<(), ResizeError> {
        if !self.running.contains_key(&slot) {
            return Err(ResizeError::NoSuchProcess { slot });
        }
        let Some(master) = self.inputs.terminal(&slot.exec_id()) else {
            return Err(ResizeError::NoTerminal { slot });
        };
        terminal::resize(master.as_fd(), size).map_err(|source| ResizeError::Ioctl { slot, source })
    }

    /// Sends `signal` to every process group whose leader has not been reaped yet; returns how
    /// many were signalled.
    pub fn signal_all(&self, signal: i32) -> usize {
        self.running
            .values()
            .filter(|key| self.reaper.signal_group(**key, signal).is_ok())
            .count()
    }

    /// Refuses new processes from now on (shutdown).
    pub fn stop_accepting(&mut self) {
        self.accepting = false;
    }

    /// Processes in the table (running, or exited with output still draining).
    pub fn len(&self) -> usize {
        self.running.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Whether a primary process is in the table.
    pub fn primary_running(&self) -> bool {
        self.running.contains_key(&Slot::Primary)
    }
}
