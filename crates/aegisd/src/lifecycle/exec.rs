//! An additional process in a guest, as asked for and as started (`Command::Exec`; the actor
//! starts it in `actor/exec.rs`).

use std::collections::BTreeMap;

use aegis_proto::control::ExecId;

use super::output::ExecFeed;

/// An exec as asked for (validated by the caller).
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    /// What to run.
    pub argv: Vec<String>,
    /// Variables on top of the instance's.
    pub env: BTreeMap<String, String>,
    /// Working directory; the instance's when absent.
    pub workdir: Option<String>,
}

/// An exec the guest has started.
#[derive(Debug)]
pub struct ExecStarted {
    /// Its id: its output is in the instance's log under it.
    pub exec_id: ExecId,
    /// Its output, then how it ended.
    pub feed: ExecFeed,
}
