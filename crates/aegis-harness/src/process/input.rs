//! The stdin pipes of processes started with `stdin: true` (keyed by exec id, `None` for the
//! primary process), from their start until the process
//! ends. The write end lives here between connections of the data service (see `data`), which
//! borrows it to feed it: so a process whose input is not connected yet sees no end-of-file
//! until it exits or a connection comes and ends, and one connection at a time feeds it.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, PoisonError};

use aegis_proto::control::ExecId;

/// Shared between the process table (which adds and removes processes) and the data service
/// (which borrows pipes). Only ever locked for a map operation.
#[derive(Debug, Clone, Default)]
pub struct Inputs(Arc<Mutex<HashMap<Option<ExecId>, Option<OwnedFd>>>>);

impl Inputs {
    /// Keeps the write end of `exec_id`'s stdin.
    pub fn insert(&self, exec_id: Option<ExecId>, pipe: OwnedFd) {
        self.lock().insert(exec_id, Some(pipe));
    }

    /// Borrows the pipe to feed it; `None` when there is none (never asked for, closed, being
    /// fed by another connection, or the process ended).
    pub fn take(&self, exec_id: &Option<ExecId>) -> Option<OwnedFd> {
        self.lock().get_mut(exec_id).and_then(Option::take)
    }

    /// Returns a borrowed pipe for a later connection; closes it instead when the process has
    /// ended meanwhile.
    pub fn put_back(&self, exec_id: &Option<ExecId>, pipe: OwnedFd) {
        if let Some(slot) = self.lock().get_mut(exec_id) {
            *slot = Some(pipe);
        }
    }

    /// Forgets a process whose stdin was closed or which ended (closing a pipe still here).
    pub fn remove(&self, exec_id: &Option<ExecId>) {
        self.lock().remove(exec_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Option<ExecId>, Option<OwnedFd>>> {
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
}
