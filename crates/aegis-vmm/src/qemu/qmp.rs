//! A QMP client: QEMU's JSON management protocol on a unix socket. One task owns the connection;
//! commands are sent to it through a bounded channel and answered in order (QMP executes commands
//! sequentially). When the socket closes, QEMU is gone; [`Qmp::closed`] reports it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};

/// Longest wait for one QMP command. `stop`/`cont` take about a millisecond; `migrate` to a file
/// returns immediately and is polled.
pub const QMP_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// QMP frames are small; a line over this bound means the peer is not QEMU.
const MAX_QMP_LINE: usize = 1024 * 1024;

type Pending = oneshot::Sender<Result<Value, String>>;

/// One command for the connection task: the message, a descriptor to pass with it
/// (`SCM_RIGHTS`, for `getfd`), and where the answer goes.
type Request = (Value, Option<OwnedFd>, Pending);

/// A handle to the QMP connection task.
#[derive(Debug, Clone)]
pub struct Qmp {
    commands: mpsc::Sender<Request>,
    closed: watch::Receiver<bool>,
}

impl Qmp {
    /// Connects, reads the greeting and negotiates capabilities.
    ///
    /// # Errors
    /// When the socket cannot be reached or does not speak QMP.
    pub async fn connect(path: &Path) -> std::io::Result<Qmp> {
        let stream = UnixStream::connect(path).await?;
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let greeting = lines.next_line().await?.unwrap_or_default();
        if !greeting.contains("QMP") {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not a QMP greeting: {greeting:.200}"),
            ));
        }
        write
            .write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
            .await?;
        loop {
            let line = lines.next_line().await?.ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "QMP closed")
            })?;
            if line.contains("\"return\"") {
                break;
            }
        }
        let (commands, rx) = mpsc::channel(16);
        let (closed_tx, closed) = watch::channel(false);
        tokio::spawn(run(lines, write, rx, closed_tx));
        Ok(Qmp { commands, closed })
    }

    /// Executes `command` with `arguments`, returning QMP's `return` value.
    ///
    /// # Errors
    /// The QMP error description, or a note that QEMU is gone or did not answer in time.
    pub async fn execute(&self, command: &str, arguments: Value) -> Result<Value, String> {
        self.send(command, arguments, None).await
    }

    /// Hands `fd` to QEMU under `name` (QMP `getfd`), for commands that take `fd:NAME`. QEMU
    /// needs no access to any path: this is how a QEMU running as another user reaches a
    /// socket of the daemon's.
    ///
    /// # Errors
    /// As [`Qmp::execute`].
    pub async fn pass_fd(&self, name: &str, fd: OwnedFd) -> Result<(), String> {
        self.send("getfd", json!({ "fdname": name }), Some(fd))
            .await
            .map(drop)
    }

    async fn send(
        &self,
        command: &str,
        arguments: Value,
        fd: Option<OwnedFd>,
    ) -> Result<Value, String> {
        let mut msg = json!({ "execute": command });
        if !arguments.is_null() {
            msg["arguments"] = arguments;
        }
        let (tx, rx) = oneshot::channel();
        self.commands
            .send((msg, fd, tx))
            .await
            .map_err(|_| "QMP connection closed".to_owned())?;
        match tokio::time::timeout(QMP_COMMAND_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err("QMP connection closed".to_owned()),
            Err(_) => Err(format!(
                "no QMP answer within {}s",
                QMP_COMMAND_TIMEOUT.as_secs()
            )),
        }
    }

    /// Runs a human-monitor command (for commands QMP lacks, such as `hostfwd_add`).
    ///
    /// # Errors
    /// As [`Qmp::execute`], plus any text HMP printed (HMP reports errors as output).
    pub async fn human(&self, command_line: &str) -> Result<(), String> {
        let out = self
            .execute(
                "human-monitor-command",
                json!({ "command-line": command_line }),
            )
            .await?;
        match out.as_str() {
            Some("") | None => Ok(()),
            Some(text) => Err(text.trim().to_owned()),
        }
    }

    /// A receiver that turns `true` when the connection closed (QEMU exited).
    pub fn closed(&self) -> watch::Receiver<bool> {
        self.closed.clone()
    }
}

async fn run(
    mut lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    mut write: tokio::net::unix::OwnedWriteHalf,
    mut commands: mpsc::Receiver<Request>,
    closed: watch::Sender<bool>,
) {
    let mut pending: std::collections::VecDeque<Pending> = Default::default();
    loop {
        tokio::select! {
            cmd = commands.recv() => {
                let Some((msg, fd, reply)) = cmd else { break };
                let mut text = msg.to_string();
                text.push('\n');
                let sent = match fd {
                    Some(fd) => write_with_fd(&mut write, text.as_bytes(), &fd).await,
                    None => write.write_all(text.as_bytes()).await,
                };
                if let Err(e) = sent {
                    let _ = reply.send(Err(format!("QMP write failed: {e}")));
                    break;
                }
                pending.push_back(reply);
            }
            line = lines.next_line() => {
                let Ok(Some(line)) = line else { break };
                if line.len() > MAX_QMP_LINE {
                    continue;
                }
                let Ok(value) = serde_json::from_str::<Value>(&line) else { continue };
                if let Some(event) = value.get("event").and_then(Value::as_str) {
                    tracing::debug!(event, "qmp event");
                    continue;
                }
                let result = if let Some(ret) = value.get("return") {
                    Ok(ret.clone())
                } else if let Some(err) = value.get("error") {
                    Err(err.get("desc").and_then(Value::as_str).unwrap_or("unknown QMP error").to_owned())
                } else {
                    continue;
                };
                if let Some(reply) = pending.pop_front() {
                    let _ = reply.send(result);
                }
            }
        }
    }
    for reply in pending {
        let _ = reply.send(Err("QMP connection closed".to_owned()));
    }
    let _ = closed.send(true);
}

/// Writes `bytes` with `fd` attached to the first of them (QEMU takes a passed descriptor from
/// the message it arrives with).
async fn write_with_fd(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    bytes: &[u8],
    fd: &OwnedFd,
) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let stream: &UnixStream = write.as_ref();
    let fds = [fd.as_raw_fd()];
    let sent = loop {
        stream.writable().await?;
        let attempt = stream.try_io(tokio::io::Interest::WRITABLE, || {
            let iov = [std::io::IoSlice::new(bytes)];
            let cmsg = [ControlMessage::ScmRights(&fds)];
            sendmsg::<()>(stream.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
                .map_err(std::io::Error::from)
        });
        match attempt {
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    };
    write.write_all(&bytes[sent..]).await
}
