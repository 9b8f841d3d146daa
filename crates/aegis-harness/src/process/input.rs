//! The input side of processes started with `stdin: true` or `tty` (keyed by exec id, `None` for
//! the primary process), from their start until the process ends: a stdin pipe, or the master
//! side of a terminal.
//!
//! A pipe's write end lives here between connections of the data service (see `data`), which
//! borrows it to feed it: so a process whose input is not connected yet sees no end-of-file
//! until it exits or a connection comes and ends, and one connection at a time feeds it. A
//! terminal's master stays here (resizes use it) while one connection at a time is attached to
//! it; that connection learns of the process's end when the entry goes. A terminal that no
//! connection was ever attached to outlives its process by [`UNREAD_TERMINAL_KEPT`], so that
//! a command which ends before the host attaches (`aegis exec -t x -- echo hi`) still has its
//! output read by the first attachment.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, PoisonError};

use aegis_proto::control::ExecId;
use tokio::sync::watch;

/// How long the terminal of an ended process waits for its first attachment.
pub const UNREAD_TERMINAL_KEPT: std::time::Duration = std::time::Duration::from_secs(60);

/// Shared between the process table (which adds and removes processes) and the data service
/// (which borrows pipes and attaches to terminals). Only ever locked for a map operation.
#[derive(Debug, Clone, Default)]
pub struct Inputs(Arc<Mutex<HashMap<Option<ExecId>, Input>>>);

#[derive(Debug)]
enum Input {
    /// `None` while a connection borrows it.
    Pipe(Option<OwnedFd>),
    Terminal {
        master: Arc<OwnedFd>,
        attached: bool,
        /// Whether a connection was attached at some point (and so has read the output).
        read: bool,
        /// `true` once the process has ended; dropped with the entry.
        ended: watch::Sender<bool>,
    },
}

/// A terminal a data-service connection is attached to.
#[derive(Debug)]
pub struct Attached {
    /// The terminal's master side.
    pub master: Arc<OwnedFd>,
    /// `true`, or closed, once the process has ended.
    pub ended: watch::Receiver<bool>,
}

impl Inputs {
    /// Keeps the write end of `exec_id`'s stdin.
    pub fn insert(&self, exec_id: Option<ExecId>, pipe: OwnedFd) {
        self.lock().insert(exec_id, Input::Pipe(Some(pipe)));
    }

    /// Keeps the master side of `exec_id`'s terminal.
    pub fn insert_terminal(&self, exec_id: Option<ExecId>, master: OwnedFd) {
        let terminal = Input::Terminal {
            master: Arc::new(master),
            attached: false,
            read: false,
            ended: watch::Sender::new(false),
        };
        self.lock().insert(exec_id, terminal);
    }

    /// Borrows the pipe to feed it; `None` when there is none (never asked for, closed, being
    /// fed by another connection, the process ended, or it runs on a terminal).
    pub fn take(&self, exec_id: &Option<ExecId>) -> Option<OwnedFd> {
        match self.lock().get_mut(exec_id) {
            Some(Input::Pipe(pipe)) => pipe.take(),
            Some(Input::Terminal { .. }) | None => None,
        }
    }

    /// Returns a borrowed pipe for a later connection; closes it instead when the process has
    /// ended meanwhile.
    pub fn put_back(&self, exec_id: &Option<ExecId>, pipe: OwnedFd) {
        if let Some(Input::Pipe(slot)) = self.lock().get_mut(exec_id) {
            *slot = Some(pipe);
        }
    }

    /// Attaches a connection to the terminal of `exec_id`; `None` when it has none (no `tty`,
    /// ended) or another connection is attached.
    pub fn attach(&self, exec_id: &Option<ExecId>) -> Option<Attached> {
        match self.lock().get_mut(exec_id) {
            Some(Input::Terminal {
                master,
                attached: attached @ false,
                read,
                ended,
            }) => {
                *attached = true;
                *read = true;
                Some(Attached {
                    master: Arc::clone(master),
                    ended: ended.subscribe(),
                })
            }
            _ => None,
        }
    }

    /// Ends an attachment: a later connection may attach, unless the process has ended (the
    /// terminal then goes).
    pub fn detach(&self, exec_id: &Option<ExecId>) {
        let mut map = self.lock();
        match map.get_mut(exec_id) {
            Some(Input::Terminal { ended, .. }) if *ended.borrow() => {
                map.remove(exec_id);
            }
            Some(Input::Terminal { attached, .. }) => *attached = false,
            _ => {}
        }
    }

    /// The master side of `exec_id`'s terminal, attached or not.
    pub fn terminal(&self, exec_id: &Option<ExecId>) -> Option<Arc<OwnedFd>> {
        match self.lock().get(exec_id) {
            Some(Input::Terminal { master, .. }) => Some(Arc::clone(master)),
            _ => None,
        }
    }

    /// Forgets a process whose stdin was closed or which ended (closing a pipe still here, and
    /// telling an attached terminal connection). A terminal never read is kept for its first
    /// attachment, for [`UNREAD_TERMINAL_KEPT`] (when a runtime is there to expire it).
    pub fn remove(&self, exec_id: &Option<ExecId>) {
        let mut map = self.lock();
        if let Some(Input::Terminal {
            read: false, ended, ..
        }) = map.get(exec_id)
        {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                ended.send_replace(true);
                let (inputs, key) = (self.clone(), exec_id.clone());
                runtime.spawn(async move {
                    tokio::time::sleep(UNREAD_TERMINAL_KEPT).await;
                    inputs.expire(&key);
                });
                return;
            }
        }
        map.remove(exec_id);
    }

    /// Drops the terminal of an ended process nobody attached to.
    fn expire(&self, exec_id: &Option<ExecId>) {
        let mut map = self.lock();
        if let Some(Input::Terminal {
            attached: false,
            ended,
            ..
        }) = map.get(exec_id)
        {
            if *ended.borrow() {
                map.remove(exec_id);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Option<ExecId>, Input>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe() -> OwnedFd {
        let (read, write) = nix::unistd::pipe().unwrap();
        drop(read);
        write
    }

    #[test]
    fn one_borrower_at_a_time_and_nothing_after_the_end() {
        let inputs = Inputs::default();
        let e = Some(ExecId("e".into()));
        inputs.insert(e.clone(), pipe());
        let borrowed = inputs.take(&e).unwrap();
        assert!(inputs.take(&e).is_none(), "a second connection must wait");
        inputs.put_back(&e, borrowed);
        let borrowed = inputs.take(&e).unwrap();
        inputs.remove(&e);
        inputs.put_back(&e, borrowed);
        assert!(inputs.take(&e).is_none(), "an ended process takes no input");
    }

    #[test]
    fn one_attachment_at_a_time_told_of_the_end() {
        let inputs = Inputs::default();
        let e = Some(ExecId("t".into()));
        inputs.insert_terminal(e.clone(), pipe());
        assert!(inputs.take(&e).is_none(), "a terminal is not a pipe");
        let attached = inputs.attach(&e).unwrap();
        assert!(inputs.attach(&e).is_none(), "a second attachment must wait");
        assert!(
            inputs.terminal(&e).is_some(),
            "resizes reach an attached terminal"
        );
        inputs.detach(&e);
        let attached_again = inputs.attach(&e).unwrap();
        drop(attached);
        inputs.remove(&e);
        assert!(
            attached_again.ended.has_changed().is_err(),
            "the end is seen"
        );
        assert!(inputs.attach(&e).is_none());
    }

    #[tokio::test]
    async fn an_unread_terminal_waits_for_its_first_attachment() {
        let inputs = Inputs::default();
        let e = Some(ExecId("late".into()));
        inputs.insert_terminal(e.clone(), pipe());
        inputs.remove(&e);
        let attached = inputs
            .attach(&e)
            .expect("the output is still there to read");
        assert!(
            *attached.ended.borrow(),
            "and the process is known to have ended"
        );
        inputs.detach(&e);
        assert!(inputs.attach(&e).is_none(), "read once, it is gone");

        let never = Some(ExecId("never".into()));
        inputs.insert_terminal(never.clone(), pipe());
        inputs.remove(&never);
        // What the timer does after UNREAD_TERMINAL_KEPT.
        inputs.expire(&never);
        assert!(inputs.attach(&never).is_none(), "nobody came: it expired");
    }
}
