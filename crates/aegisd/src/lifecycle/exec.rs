//! An additional process in a guest, as asked for and as started (`Command::Exec`; the actor
//! starts it in `actor/exec.rs`).

use std::collections::BTreeMap;
use std::time::Duration;

use aegis_proto::control::{DataReply, ExecId};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

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
}

/// An exec the guest has started.
#[derive(Debug)]
pub struct ExecStarted {
    /// Its id: its output is in the instance's log under it.
    pub exec_id: ExecId,
    /// Its output, then how it ended.
    pub feed: ExecFeed,
    /// Where its stdin goes, when it was asked for.
    pub stdin: Option<StdinSink>,
}

/// The stdin of a running exec: a data-service connection to the harness, fed by
/// [`StdinSink::feed`].
#[derive(Debug)]
pub struct StdinSink {
    pub(crate) stream: TcpStream,
}

impl StdinSink {
    /// Copies `input` to the process until `input` ends, then closes the process's stdin.
    /// Returns the bytes the process was given.
    ///
    /// # Errors
    /// Why the input did not all arrive: the process stopped reading it (exited or closed its
    /// stdin), or the VM went away.
    pub async fn feed(self, mut input: impl AsyncRead + Unpin) -> Result<u64, String> {
        let (read, mut write) = self.stream.into_split();
        let copied = tokio::io::copy(&mut input, &mut write).await;
        // The harness closes the process's stdin at this end-of-file.
        let _ = write.shutdown().await;
        let mut line = String::new();
        let _ = BufReader::new(read).read_line(&mut line).await;
        let reply: Option<DataReply> = serde_json::from_str(&line).ok();
        match (copied, reply) {
            (
                _,
                Some(DataReply {
                    ok: false, error, ..
                }),
            ) => Err(error.unwrap_or_else(|| "the input was refused".to_owned())),
            (Ok(_), Some(DataReply { bytes, .. })) => Ok(bytes.unwrap_or(0)),
            (Err(e), _) => Err(format!("the input stopped: {e}")),
            (Ok(_), None) => Err("the guest did not confirm the input".to_owned()),
        }
    }
}
