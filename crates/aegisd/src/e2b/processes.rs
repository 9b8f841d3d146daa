//! E2B names a sandbox's processes by pid; Aegis names them by exec id. Each sandbox's
//! commands started through this listener get a pid here, counted up from [`FIRST_PID`] (not
//! the guest's: the harness does not report it, and a number that only looks like one would
//! invite `kill` from the guest side). The table lives as long as the daemon; after a restart
//! the processes still run and are listed by `aegis process list`, but E2B clients cannot
//! name them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// The first pid given in a sandbox.
pub const FIRST_PID: u32 = 1000;

/// One process started through the listener.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The daemon's exec id.
    pub exec_id: String,
    /// The client's tag, if it gave one.
    pub tag: Option<String>,
    /// The process's configuration as the client sent it (`cmd`, `args`, `envs`, `cwd`).
    pub config: serde_json::Value,
}

/// Every sandbox's processes.
#[derive(Debug, Default)]
pub struct Processes {
    sandboxes: Mutex<HashMap<String, Table>>,
}

#[derive(Debug)]
struct Table {
    next: u32,
    entries: BTreeMap<u32, Entry>,
}

impl Processes {
    fn with<T>(&self, sandbox: &str, f: impl FnOnce(&mut Table) -> T) -> T {
        let mut all = self
            .sandboxes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let table = all.entry(sandbox.to_owned()).or_insert(Table {
            next: FIRST_PID,
            entries: BTreeMap::new(),
        });
        f(table)
    }

    /// Records a started process; its pid.
    pub fn add(&self, sandbox: &str, entry: Entry) -> u32 {
        self.with(sandbox, |t| {
            let pid = t.next;
            t.next += 1;
            t.entries.insert(pid, entry);
            pid
        })
    }

    /// The process `pid`, or the one tagged `tag`.
    pub fn find(&self, sandbox: &str, pid: Option<u32>, tag: Option<&str>) -> Option<(u32, Entry)> {
        self.with(sandbox, |t| {
            t.entries
                .iter()
                .find(|(p, e)| Some(**p) == pid || (tag.is_some() && e.tag.as_deref() == tag))
                .map(|(p, e)| (*p, e.clone()))
        })
    }

    /// Every process of `sandbox`, by pid.
    pub fn all(&self, sandbox: &str) -> Vec<(u32, Entry)> {
        self.with(sandbox, |t| {
            t.entries.iter().map(|(p, e)| (*p, e.clone())).collect()
        })
    }

    /// Forgets a sandbox (it was killed).
    pub fn forget(&self, sandbox: &str) {
        self.sandboxes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(sandbox);
    }
}
