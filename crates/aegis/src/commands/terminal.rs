//! A terminal session with a process running on a terminal in the guest (`aegis exec -t`,
//! `aegis process attach`, and the primary process of `aegis run -t`), as `docker exec -it`
//! gives one: this terminal in raw mode (so Ctrl-C,
//! Ctrl-D and every other key go to the guest's terminal, whose line discipline acts on them),
//! its size sent at the start and on every SIGWINCH, the output copied as it comes, and the
//! process's exit code as ours. The terminal's settings are restored on every way out: the end
//! of the process, an error, a panic, and SIGTERM or SIGHUP to this process.

use std::io::IsTerminal;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use aegis_client::{Client, TerminalStream};
use aegis_proto::api::{ExecInfo, ExecState, TerminalSize};
use anyhow::Context;
use nix::sys::termios::{self, SetArg, Termios};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{signal, SignalKind};

use crate::exit::Exit;

/// Exit code of a command killed for its timeout, as `timeout(1)` uses.
pub const TIMED_OUT: u8 = 124;

/// This side's terminal size: stdout's, else stdin's, else 24 by 80.
pub fn local_size() -> TerminalSize {
    let out = std::io::stdout();
    let input = std::io::stdin();
    window_size(out.as_fd())
        .or_else(|| window_size(input.as_fd()))
        .unwrap_or_default()
}

fn window_size(fd: BorrowedFd<'_>) -> Option<TerminalSize> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize, which lives across the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
    (rc == 0 && size.ws_row > 0 && size.ws_col > 0).then_some(TerminalSize {
        rows: size.ws_row.min(TerminalSize::MAX),
        cols: size.ws_col.min(TerminalSize::MAX),
    })
}

/// Raw mode on stdin while it lives; the settings from before are put back when it drops.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Raw mode when stdin is a terminal; `None` otherwise (input is then copied as it is).
    fn enable() -> anyhow::Result<Option<RawMode>> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Ok(None);
        }
        let saved = termios::tcgetattr(stdin.as_fd()).context("cannot read the terminal's mode")?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)
            .context("cannot put the terminal in raw mode")?;
        Ok(Some(RawMode { saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// Whose terminal a session is attached to.
#[derive(Debug, Clone, Copy)]
pub enum Owner<'a> {
    /// An exec, by id.
    Exec(&'a str),
    /// The instance's primary process.
    Primary,
}

/// Runs the session on `stream` (the terminal of `exec_id` in `target`); `input` copies this
/// process's stdin to the guest. Returns the process's exit code.
///
/// # Errors
/// When the terminal cannot be set up, or the daemon cannot say how the process ended.
pub async fn session(
    client: &Client,
    target: &str,
    exec_id: &str,
    stream: TerminalStream,
    input: bool,
    timeout_secs: Option<u64>,
) -> anyhow::Result<Exit> {
    if let Some(signal) = attached(client, target, Owner::Exec(exec_id), stream, input).await? {
        eprintln!(
            "aegis: left the terminal of {exec_id} on signal {signal}; the process goes on \
             (`aegis process attach {target} {exec_id}` to come back)"
        );
        return Ok(left_on(signal));
    }
    let info = client
        .wait_exec(target, exec_id)
        .await
        .with_context(|| format!("cannot learn how {exec_id} in {target:?} ended"))?;
    if info.state == ExecState::Exited && info.timed_out {
        eprintln!(
            "aegis: the command ran past its timeout of {} s and was killed",
            timeout_secs.unwrap_or_default()
        );
        return Ok(Exit::Guest(TIMED_OUT));
    }
    exit_of(&info)
}

/// Moves the bytes of `stream`, the terminal of `owner` in `target`, with this terminal in raw
/// mode when `input` (which copies this process's stdin to the guest), until the guest closes
/// it (`None`: the process ended) or SIGTERM or SIGHUP says to leave (that signal's number).
/// This terminal is restored before it returns.
///
/// # Errors
/// When this terminal cannot be put in raw mode.
pub async fn attached(
    client: &Client,
    target: &str,
    owner: Owner<'_>,
    stream: TerminalStream,
    input: bool,
) -> anyhow::Result<Option<i32>> {
    let raw = if input { RawMode::enable()? } else { None };
    let left = copy_until_end(client, target, owner, stream, input).await;
    drop(raw);
    Ok(left)
}

/// Our exit code after leaving a terminal on `signal`, as a shell reports a signal.
pub fn left_on(signal: i32) -> Exit {
    Exit::Guest(u8::try_from(128 + signal).unwrap_or(255))
}

/// The exit code of an ended process as ours.
///
/// # Errors
/// When it has none: the VM it ran in stopped without a snapshot.
pub fn exit_of(info: &ExecInfo) -> anyhow::Result<Exit> {
    match (info.state, info.exit_code) {
        (ExecState::Exited, Some(code)) => Ok(Exit::from_guest(code)),
        _ => anyhow::bail!(
            "process {} ended without an exit code: the VM it ran in stopped without a snapshot",
            info.exec_id
        ),
    }
}

/// Copies both ways until the guest closes the terminal (`None`) or SIGTERM or SIGHUP says to
/// leave (that signal's number); a SIGWINCH sends this terminal's size.
async fn copy_until_end(
    client: &Client,
    target: &str,
    owner: Owner<'_>,
    stream: TerminalStream,
    input: bool,
) -> Option<i32> {
    let (mut from_guest, mut to_guest) = tokio::io::split(stream);
    let output = async {
        let mut stdout = tokio::io::stdout();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from_guest.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if stdout.write_all(&buf[..n]).await.is_err() || stdout.flush().await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    let typed = async {
        if input {
            let mut stdin = tokio::io::stdin();
            let _ = tokio::io::copy(&mut stdin, &mut to_guest).await;
        }
        // The end of this side's input is not the end of the session.
        std::future::pending::<()>().await;
    };
    let resizes = async {
        let Ok(mut winch) = signal(SignalKind::window_change()) else {
            return std::future::pending().await;
        };
        while winch.recv().await.is_some() {
            let _ = match owner {
                Owner::Exec(exec_id) => client
                    .resize_terminal(target, exec_id, local_size())
                    .await
                    .map(drop),
                Owner::Primary => client.resize_primary_terminal(target, local_size()).await,
            };
        }
        std::future::pending::<()>().await;
    };
    let leave = async {
        let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => libc::SIGTERM,
            _ = hup.recv() => libc::SIGHUP,
        }
    };
    tokio::select! {
        () = output => None,
        () = typed => None,
        () = resizes => None,
        left = leave => Some(left),
    }
}
