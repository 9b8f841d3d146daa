//! The input side of processes started with `stdin: true` or `tty` (keyed by exec id, `None` for
//! the primary process), from their start until the process ends: a stdin pipe, or the master
//! side of a terminal.
//!
//! A pipe's write end lives here between connections of the data service (see `data`), which
//! borrows it to feed it: so a process whose input is not connected yet sees no end-of-file
//! until it exits or a connection comes and ends, and one connection at a time feeds it. A
//! terminal's master stays here (resizes use it) while one connection at a time is attached to
//! it; that connection learns of the process's end when the entry goes.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, PoisonError};

use aegis_proto::control::ExecId;
use tokio::sync::watch;

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
        /// Dropped with the entry: the attached connection's receiver then sees the end.
        ended: watch::Sender<()>,
    },
}

/// A terminal a data-service connection is attached to.
#[derive(Debug)]
pub struct Attached {
    /// The terminal's master side.
    pub master: Arc<OwnedFd>,
    /// Changes (errs) once the process has ended.
    pub ended: watch::Receiver<()>,
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
            ended: watch::Sender::new(()),
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
                ended,
            }) => {
                *attached = true;
                Some(Attached {
                    master: Arc::clone(master),
                    ended: ended.subscribe(),
                })
            }
            _ => None,
        }
    }

    /// Ends an attachment: a later connection may attach.
    pub fn detach(&self, exec_id: &Option<ExecId>) {
        if let Some(Input::Terminal { attached, .. }) = self.lock().get_mut(exec_id) {
            *attached = false;
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
    /// telling an attached terminal connection).
    pub fn remove(&self, exec_id: &Option<ExecId>) {
        self.lock().remove(exec_id);
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
}
