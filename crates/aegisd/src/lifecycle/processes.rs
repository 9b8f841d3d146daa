//! The processes started through the API in one instance, attached or in the background: what
//! ran, since when, and how it ended. The exec path adds an entry as it asks the guest to start
//! the process (and drops it when the guest cannot), the output router records its exit, and the actor marks what was running as
//! lost when the VM that ran it ends without a snapshot (a restored guest's processes go on).
//!
//! The table lives in the daemon's memory: after a daemon restart it starts empty, and the
//! processes of a VM it re-attached to are no longer listed (their output is still in the log).

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use aegis_proto::api::{ExecInfo, ExecState};
use aegis_proto::control::{ExecId, ExitStatus};
use tokio::sync::watch;

use crate::logs::now_ts;

/// Finished entries kept per instance; running ones are always kept.
pub const FINISHED_KEPT: usize = 256;

/// How a process was started, as [`ExecInfo`] shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StartedAs {
    /// In the background.
    pub detached: bool,
    /// With a stdin pipe.
    pub stdin: bool,
    /// On a terminal.
    pub tty: bool,
}

/// One instance's processes.
#[derive(Debug)]
pub struct ProcessTable {
    entries: Mutex<BTreeMap<u64, ExecInfo>>,
    /// Bumped on every change, for [`ProcessTable::wait`].
    changed: watch::Sender<u64>,
}

impl Default for ProcessTable {
    fn default() -> ProcessTable {
        ProcessTable {
            entries: Mutex::new(BTreeMap::new()),
            changed: watch::channel(0).0,
        }
    }
}

impl ProcessTable {
    /// Records a process the guest is asked to start.
    pub fn started(&self, exec_id: &ExecId, command: Vec<String>, how: StartedAs) {
        let StartedAs {
            detached,
            stdin,
            tty,
        } = how;
        let info = ExecInfo {
            exec_id: exec_id.0.clone(),
            command,
            state: ExecState::Running,
            started_at: now_ts(),
            ended_at: None,
            exit_code: None,
            signal: None,
            timed_out: false,
            detached,
            stdin,
            tty,
        };
        self.change(|entries| {
            let next = entries.last_key_value().map_or(0, |(k, _)| k + 1);
            entries.insert(next, info);
            forget_old(entries);
        });
    }

    /// Records how a process ended (an exit the guest reported).
    pub fn exited(&self, exec_id: &ExecId, status: ExitStatus, timed_out: bool) {
        self.change(|entries| {
            if let Some(info) = find_mut(entries, exec_id) {
                info.state = ExecState::Exited;
                info.ended_at = Some(now_ts());
                info.exit_code = Some(status.code);
                info.signal = status.signal;
                info.timed_out = timed_out;
            }
        });
    }

    /// Drops the entry of a process the guest could not start.
    pub fn forget(&self, exec_id: &ExecId) {
        self.change(|entries| entries.retain(|_, info| info.exec_id != exec_id.0));
    }

    /// The VM ended and no snapshot keeps its processes: what was running is lost.
    pub fn vm_gone(&self) {
        self.change(|entries| {
            for info in entries.values_mut() {
                if info.state == ExecState::Running {
                    info.state = ExecState::Lost;
                    info.ended_at = Some(now_ts());
                }
            }
        });
    }

    /// Every entry, oldest first.
    pub fn list(&self) -> Vec<ExecInfo> {
        self.lock().values().cloned().collect()
    }

    /// One entry.
    pub fn get(&self, exec_id: &str) -> Option<ExecInfo> {
        self.lock()
            .values()
            .find(|info| info.exec_id == exec_id)
            .cloned()
    }

    /// Waits until the process is no longer running and returns its entry; `None` when there
    /// is no such process.
    pub async fn wait(&self, exec_id: &str) -> Option<ExecInfo> {
        let mut changes = self.changed.subscribe();
        loop {
            let info = self.get(exec_id)?;
            if info.state != ExecState::Running {
                return Some(info);
            }
            // The sender lives as long as `self`.
            if changes.changed().await.is_err() {
                return Some(info);
            }
        }
    }

    fn change(&self, f: impl FnOnce(&mut BTreeMap<u64, ExecInfo>)) {
        f(&mut self.lock());
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, ExecInfo>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn find_mut<'a>(
    entries: &'a mut BTreeMap<u64, ExecInfo>,
    exec_id: &ExecId,
) -> Option<&'a mut ExecInfo> {
    entries
        .values_mut()
        .rev()
        .find(|info| info.exec_id == exec_id.0)
}

/// Drops the oldest finished entries past [`FINISHED_KEPT`].
fn forget_old(entries: &mut BTreeMap<u64, ExecInfo>) {
    let finished: Vec<u64> = entries
        .iter()
        .filter(|(_, info)| info.state != ExecState::Running)
        .map(|(k, _)| *k)
        .collect();
    for key in finished
        .iter()
        .take(finished.len().saturating_sub(FINISHED_KEPT))
    {
        entries.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ExecId {
        ExecId(s.to_owned())
    }

    fn bg() -> StartedAs {
        StartedAs {
            detached: true,
            ..StartedAs::default()
        }
    }

    #[tokio::test]
    async fn a_process_runs_then_exits_and_a_waiter_sees_it() {
        let table = std::sync::Arc::new(ProcessTable::default());
        table.started(&id("e1"), vec!["sleep".into(), "1".into()], bg());
        assert_eq!(table.get("e1").unwrap().state, ExecState::Running);
        let waiter = {
            let table = std::sync::Arc::clone(&table);
            tokio::spawn(async move { table.wait("e1").await })
        };
        tokio::task::yield_now().await;
        table.exited(&id("e1"), ExitStatus::exited(3), false);
        let done = waiter.await.unwrap().unwrap();
        assert_eq!(done.state, ExecState::Exited);
        assert_eq!(done.exit_code, Some(3));
        assert!(done.ended_at.is_some());
        assert!(table.wait("nobody").await.is_none());
    }

    #[test]
    fn a_vm_that_ends_loses_what_ran_but_keeps_what_ended() {
        let table = ProcessTable::default();
        table.started(&id("a"), vec!["a".into()], StartedAs::default());
        table.started(
            &id("b"),
            vec!["b".into()],
            StartedAs {
                stdin: true,
                ..bg()
            },
        );
        table.exited(&id("a"), ExitStatus::signaled(9), true);
        table.vm_gone();
        let list = table.list();
        assert_eq!(list[0].state, ExecState::Exited);
        assert_eq!(list[0].signal, Some(9));
        assert!(list[0].timed_out);
        assert_eq!(list[1].state, ExecState::Lost);
        assert_eq!(list[1].exit_code, None);
    }

    #[test]
    fn old_finished_entries_are_forgotten_running_ones_never() {
        let table = ProcessTable::default();
        table.started(&id("long"), vec!["server".into()], bg());
        for i in 0..FINISHED_KEPT + 10 {
            let e = id(&format!("e{i}"));
            table.started(&e, vec!["true".into()], StartedAs::default());
            table.exited(&e, ExitStatus::exited(0), false);
        }
        table.started(&id("last"), vec!["true".into()], StartedAs::default());
        let list = table.list();
        assert_eq!(list.len(), FINISHED_KEPT + 2);
        assert_eq!(list[0].exec_id, "long");
        assert_eq!(list[1].exec_id, "e10");
    }
}
