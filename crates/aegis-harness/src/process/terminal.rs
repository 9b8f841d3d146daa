//! Pseudo-terminals for execs started with `tty`: opening one of a given size, resizing it, and
//! the data-service connection attached to it, which carries the terminal's raw bytes both ways.
//!
//! The process gets the slave side as stdin, stdout, stderr and controlling terminal (so the
//! line discipline turns Ctrl-C into SIGINT for its foreground group, and Ctrl-D into an
//! end-of-file); the harness keeps only the master side, in [`Inputs`].

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};

use aegis_proto::control::{ExecId, WindowSize};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::input::{Attached, Inputs};
use super::table::Slot;
use crate::async_fd::AsyncPipe;

/// Bytes moved per read in either direction.
const CHUNK: usize = 16 * 1024;

/// A new terminal: `(master, slave)`, both close-on-exec (the child's copies of the slave are
/// made by dup2, which clears the flag).
///
/// # Errors
/// The failing system call.
pub fn open(size: WindowSize) -> io::Result<(OwnedFd, OwnedFd)> {
    let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let master = nix::pty::posix_openpt(flags)?;
    nix::pty::grantpt(&master)?;
    nix::pty::unlockpt(&master)?;
    let name = nix::pty::ptsname_r(&master)?;
    let slave = nix::fcntl::open(name.as_str(), flags, Mode::empty())?;
    // SAFETY: both descriptors were just opened and are owned by nobody else.
    let (master, slave) = unsafe {
        (
            OwnedFd::from_raw_fd(master.into_raw_fd()),
            OwnedFd::from_raw_fd(slave),
        )
    };
    resize(master.as_fd(), size)?;
    Ok((master, slave))
}

/// Sets the window size; the kernel sends SIGWINCH to the terminal's foreground group.
///
/// # Errors
/// The ioctl(2) error.
pub fn resize(master: BorrowedFd<'_>, size: WindowSize) -> io::Result<()> {
    let winsize = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize, which lives across the call.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &winsize) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the calling process's stdin its controlling terminal; for the child between fork and
/// exec, after `setsid`.
///
/// # Errors
/// The ioctl(2) error.
pub fn take_as_controlling() -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument; async-signal-safe.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Attaches a connection to the terminal of `exec_id`; [`Attachment::pump`] then serves it.
///
/// # Errors
/// Why no connection may attach now, for the refusal.
pub fn attach<'a>(inputs: &'a Inputs, exec_id: &Option<ExecId>) -> Result<Attachment<'a>, String> {
    let key = exec_id.clone();
    let Some(attached) = inputs.attach(&key) else {
        return Err(format!(
            "{} has no terminal to attach to: it was started without tty, it has ended, \
             or another connection is attached",
            Slot::from(key)
        ));
    };
    Ok(Attachment {
        inputs,
        key,
        attached,
    })
}

/// An attached connection, ready to [`Attachment::pump`].
#[derive(Debug)]
pub struct Attachment<'a> {
    inputs: &'a Inputs,
    key: Option<ExecId>,
    attached: Attached,
}

impl Attachment<'_> {
    /// Moves the bytes, then detaches: the terminal's output to `write` until the process has
    /// ended and what it wrote is drained (or the host goes away), the bytes of `read` to the
    /// terminal until the host's end-of-file.
    ///
    /// # Errors
    /// When the master side cannot be used.
    pub async fn pump(
        mut self,
        mut read: impl AsyncRead + Unpin,
        mut write: impl AsyncWrite + Unpin,
    ) -> io::Result<()> {
        let result = async {
            let master = AsyncPipe::new(self.attached.master.try_clone()?)?;
            let input = async {
                let mut buf = vec![0u8; CHUNK];
                loop {
                    match read.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if master.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                // The host's end-of-file ends the input only: the output goes on.
                std::future::pending::<()>().await;
            };
            let output = async {
                let mut buf = vec![0u8; CHUNK];
                // Attached after the process ended: what it left is all there is.
                let mut ended = *self.attached.ended.borrow();
                loop {
                    let n = if ended {
                        // The process is gone: take what it left, without waiting for more
                        // (a child of it may hold the terminal open).
                        match tokio::time::timeout(DRAIN_WAIT, master.read(&mut buf)).await {
                            Ok(n) => n,
                            Err(_) => break,
                        }
                    } else {
                        tokio::select! {
                            n = master.read(&mut buf) => n,
                            _ = self.attached.ended.changed() => {
                                ended = true;
                                continue;
                            }
                        }
                    };
                    // EIO: every slave descriptor closed, the terminal's end-of-file.
                    match n {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = write.flush().await;
                let _ = write.shutdown().await;
            };
            tokio::select! {
                () = input => {}
                () = output => {}
            }
            Ok(())
        }
        .await;
        self.inputs.detach(&self.key);
        result
    }
}

/// How long the output of an ended process may keep coming before the connection closes.
const DRAIN_WAIT: std::time::Duration = std::time::Duration::from_millis(200);
