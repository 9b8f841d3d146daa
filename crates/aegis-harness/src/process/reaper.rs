//! The one owner of `waitpid`: reaps every child on SIGCHLD and reports registered ones.
//!
//! As PID 1 (or a child subreaper in `--stdio` mode) the harness inherits every orphan, so it must
//! wait for all of them; they are reaped silently. Children the harness spawned are registered
//! under a [`SpawnGuard`] that holds the table lock from before `fork` until the pid is recorded,
//! so a child that exits at once cannot be reaped unregistered. Each registration gets a
//! generation: a [`ChildKey`] `(pid, generation)` names one process even after its pid is reused,
//! and signals go only to a key that is still registered, i.e. not yet reaped — a zombie keeps its
//! pid (and process group) reserved until then.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use aegis_proto::control::ExitStatus;
use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::oneshot;

/// Names one spawned process for its whole life, even if its pid is later reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChildKey {
    /// The process id (also its process group and session id: children call `setsid`).
    pub pid: i32,
    /// Registration number, unique for the life of the harness.
    pub generation: u64,
}

/// Whether the harness is init or needs to ask to inherit orphans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaperRole {
    /// PID 1: orphans come to us anyway.
    Init,
    /// Not PID 1: become a child subreaper so grandchildren are still ours to reap.
    Subreaper,
}

/// Why the reaper could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReaperError {
    /// prctl(PR_SET_CHILD_SUBREAPER) failed.
    #[error("cannot become a child subreaper")]
    Subreaper(#[source] nix::Error),
    /// The SIGCHLD handler could not be installed.
    #[error("cannot listen for SIGCHLD")]
    Sigchld(#[source] std::io::Error),
}

/// Why a signal was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum KillError {
    /// The process was already reaped (or never registered).
    #[error("process {pid} has exited")]
    Exited {
        /// Its pid.
        pid: i32,
    },
    /// kill(2) failed.
    #[error("cannot signal process group {pid}")]
    Kill {
        /// The group.
        pid: i32,
        /// The cause.
        #[source]
        source: nix::Error,
    },
}

#[derive(Debug)]
struct Registered {
    generation: u64,
    exit: oneshot::Sender<ExitStatus>,
}

#[derive(Debug, Default)]
struct Table {
    next_generation: u64,
    children: HashMap<i32, Registered>,
}

/// Shared handle on the child table. Cloning is cheap; the lock is only ever held for
/// synchronous work (a fork, a kill, a drain of `waitpid`), never across an `.await`.
#[derive(Debug, Clone)]
pub struct Reaper {
    table: Arc<Mutex<Table>>,
}

/// Holds the table lock while a child is being spawned; see the module documentation.
#[derive(Debug)]
pub struct SpawnGuard<'a> {
    table: MutexGuard<'a, Table>,
}

impl SpawnGuard<'_> {
    /// Records a freshly spawned child; the receiver gets its exit status once reaped.
    pub fn register(mut self, pid: i32) -> (ChildKey, oneshot::Receiver<ExitStatus>) {
        let generation = self.table.next_generation;
        self.table.next_generation += 1;
        let (exit, exited) = oneshot::channel();
        self.table
            .children
            .insert(pid, Registered { generation, exit });
        (ChildKey { pid, generation }, exited)
    }
}

/// The SIGCHLD stream, created with the reaper so no child can exit before it is listened for.
#[derive(Debug)]
pub struct ReaperTask {
    reaper: Reaper,
    sigchld: Signal,
}

impl Reaper {
    /// Sets up reaping. Must run inside the tokio runtime, before the first spawn.
    ///
    /// # Errors
    /// [`ReaperError`] when the process cannot inherit orphans or listen for SIGCHLD.
    pub fn new(role: ReaperRole) -> Result<(Reaper, ReaperTask), ReaperError> {
        if role == ReaperRole::Subreaper {
            nix::sys::prctl::set_child_subreaper(true).map_err(ReaperError::Subreaper)?;
        }
        let sigchld = signal(SignalKind::child()).map_err(ReaperError::Sigchld)?;
        let reaper = Reaper {
            table: Arc::new(Mutex::new(Table::default())),
        };
        let task = ReaperTask {
            reaper: reaper.clone(),
            sigchld,
        };
        Ok((reaper, task))
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic anywhere ends the harness (see the panic hook), so a poisoned lock can only
        // be seen while the process is going down anyway.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the lock for one spawn; call [`SpawnGuard::register`] with the new pid.
    pub fn guard(&self) -> SpawnGuard<'_> {
        SpawnGuard { table: self.lock() }
    }

    /// Sends `signal` to the process group of `key`, if that process has not been reaped.
    ///
    /// # Errors
    /// [`KillError::Exited`] when it was reaped, [`KillError::Kill`] when kill(2) fails.
    pub fn signal_group(&self, key: ChildKey, signal: i32) -> Result<(), KillError> {
        let table = self.lock();
        match table.children.get(&key.pid) {
            Some(child) if child.generation == key.generation => {
                // SAFETY: kill(2) with a negative pid signals a process group; the group id is
                // the pid of our registered, unreaped child, which called setsid, so the group
                // exists and is the one we mean while the lock keeps the reaper out.
                let rc = unsafe { libc::kill(-key.pid, signal) };
                if rc == 0 {
                    Ok(())
                } else {
                    Err(KillError::Kill {
                        pid: key.pid,
                        source: Errno::last(),
                    })
                }
            }
            Some(_) | None => Err(KillError::Exited { pid: key.pid }),
        }
    }

    /// Reaps every child that has exited; returns how many were reaped.
    fn drain(&self) -> usize {
        let mut table = self.lock();
        let mut reaped = 0;
        loop {
            let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::exited(code)),
                Ok(WaitStatus::Signaled(pid, signal, _core)) => {
                    (pid, ExitStatus::signaled(signal as i32))
                }
                // Nothing more has exited.
                Ok(WaitStatus::StillAlive) => break,
                // Stop/continue reports are not requested; nothing to do if one shows up.
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                // ECHILD: no children at all.
                Err(_) => break,
            };
            reaped += 1;
            // Unregistered pids are orphans re-parented to us: reaped silently.
            if let Some(child) = table.children.remove(&pid.as_raw()) {
                let _ = child.exit.send(status);
            }
        }
        reaped
    }
}

impl ReaperTask {
    /// Reaps on every SIGCHLD, forever. Also drains once at start, for children that exited
    /// before the first signal was awaited.
    pub async fn run(mut self) {
        loop {
            self.reaper.drain();
            if self.sigchld.recv().await.is_none() {
                // The signal driver is gone (runtime shutting down): nothing left to reap for.
                return;
            }
        }
    }
}
