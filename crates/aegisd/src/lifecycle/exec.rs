//! An additional process in a guest, as asked for and as started (`Command::Exec`; the actor
//! starts it in `actor/exec.rs`).

use std::collections::BTreeMap;
use std::time::Duration;

use aegis_proto::control::{DataRequest, ExecId, WindowSize};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::TcpStream;

use super::command::GuestLink;
use super::data::{self, DataError};

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
    /// Whether the caller feeds the process's stdin ([`ExecStarted::stdin`]).
    pub stdin: bool,
    /// Killed by the harness after this long.
    pub timeout: Option<Duration>,
    /// Runs in the background: nobody follows its output as it comes (it is in the log), and
    /// its stdin, when it has one, is fed later through [`StdinSink::connect`].
    pub detach: bool,
    /// Runs on a terminal of this size ([`ExecStarted::input`] is then the terminal, or
    /// [`Terminal::connect`] attaches to it later).
    pub tty: Option<WindowSize>,
}

/// An exec the guest has started.
#[derive(Debug)]
pub struct ExecStarted {
    /// Its id: its output is in the instance's log under it.
    pub exec_id: ExecId,
    /// Its output, then how it ended.
    pub feed: ExecFeed,
    /// Where its input goes, when it was asked for and the exec is not detached.
    pub input: Option<ExecInput>,
}

/// The input side of an attached exec.
#[derive(Debug)]
pub enum ExecInput {
    /// Its stdin pipe (`stdin`).
    Stdin(StdinSink),
    /// Its terminal (`tty`): its output comes back on the same connection.
    Terminal(Terminal),
}

/// A connection attached to a process's terminal: raw bytes both ways, closed by the guest once
/// the process has ended and its output is drained.
#[derive(Debug)]
pub struct Terminal {
    pub(crate) stream: TcpStream,
}

impl Terminal {
    /// Attaches to the terminal of `exec_id` (the primary process when `None`), started with
    /// `tty`.
    ///
    /// # Errors
    /// [`DataError::Refused`] when it has no terminal, has ended, or another connection is
    /// attached; [`DataError::Unreachable`] when the guest cannot be reached.
    pub async fn connect(
        link: &GuestLink,
        exec_id: Option<&ExecId>,
    ) -> Result<Terminal, DataError> {
        let request = DataRequest::Terminal {
            exec_id: exec_id.cloned(),
        };
        let stream = data::open(link, &request).await?;
        Ok(Terminal { stream })
    }
}

/// The stdin of a running exec: a data-service connection to the harness, fed by
/// [`StdinSink::feed`].
#[derive(Debug)]
pub struct StdinSink {
    pub(crate) stream: TcpStream,
}

impl StdinSink {
    /// Connects to the stdin of `exec_id` (the primary process when `None`), started with
    /// `stdin: true`. With `keep_open` the
    /// process's stdin stays open after this connection's end, for a later one.
    ///
    /// # Errors
    /// [`DataError::Refused`] when the process takes no input (no stdin, ended, or another
    /// connection feeds it); [`DataError::Unreachable`] when the guest cannot be reached.
    pub async fn connect(
        link: &GuestLink,
        exec_id: Option<&ExecId>,
        keep_open: bool,
    ) -> Result<StdinSink, DataError> {
        let request = DataRequest::Stdin {
            exec_id: exec_id.cloned(),
            keep_open,
        };
        let stream = data::open(link, &request).await?;
        Ok(StdinSink { stream })
    }

    /// Copies `input` to the process until `input` ends, then ends this connection (which
    /// closes the process's stdin unless it was connected with `keep_open`). Returns the bytes
    /// the process was given.
    ///
    /// # Errors
    /// Why the input did not all arrive: the process stopped reading it (exited or closed its
    /// stdin), or the VM went away.
    pub async fn feed(self, mut input: impl AsyncRead + Unpin) -> Result<u64, DataError> {
        let (read, mut write) = self.stream.into_split();
        let copied = tokio::io::copy(&mut input, &mut write).await;
        let _ = write.shutdown().await;
        let confirmed = data::final_reply(read).await;
        match (copied, confirmed) {
            (_, Err(refused @ DataError::Refused { .. })) => Err(refused),
            (Ok(_), confirmed) => confirmed,
            (Err(e), _) => Err(DataError::Unreachable(format!("the input stopped: {e}"))),
        }
    }
}
