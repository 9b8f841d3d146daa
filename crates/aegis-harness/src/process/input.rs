//! The stdin pipes of execs started with `stdin: true`, from their start until the data service
//! takes one to feed it (see `data`) or the process ends. The write end lives here, so a
//! process whose input is never connected sees no end-of-file until it exits or the connection
//! comes; at most one connection feeds a process.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, PoisonError};

use aegis_proto::control::ExecId;

/// Shared between the process table (which adds and drops pipes) and the data service (which
/// takes them). Only ever locked for a map operation.
#[derive(Debug, Clone, Default)]
pub struct Inputs(Arc<Mutex<HashMap<ExecId, OwnedFd>>>);

impl Inputs {
    /// Keeps the write end of `exec_id`'s stdin.
    pub fn insert(&self, exec_id: ExecId, pipe: OwnedFd) {
        self.lock().insert(exec_id, pipe);
    }

    /// Takes the pipe to feed it; `None` when there is none (never asked for, already taken,
    /// or the process ended).
    pub fn take(&self, exec_id: &ExecId) -> Option<OwnedFd> {
        self.lock().remove(exec_id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ExecId, OwnedFd>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
