//! Hands owned file descriptors (control port, sockets, pipes) to the tokio reactor.
//!
//! Shared by the channel and the output pumps so the one `unsafe` registration, the
//! non-blocking switch and the hang-up probe live in one place. What is read or written, and
//! what end-of-file means, is left to the callers.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tokio::io::unix::AsyncFd;

/// Makes `fd` non-blocking (a flag of the open file description, shared by its duplicates).
///
/// # Errors
/// The fcntl(2) error.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// A descriptor the async code can wait on.
#[derive(Debug)]
pub enum Watched {
    /// Registered with the reactor (pipes, sockets, character devices).
    Reactor(AsyncFd<OwnedFd>),
    /// A regular file, which epoll refuses and which never blocks anyway (`--stdio` with
    /// redirected files).
    Plain(OwnedFd),
}

impl Watched {
    /// Registers a non-blocking descriptor for readiness events. Must run inside the runtime.
    ///
    /// # Errors
    /// The reactor's registration error, except EPERM (a regular file), which yields
    /// [`Watched::Plain`].
    pub fn new(fd: OwnedFd) -> io::Result<Watched> {
        // SAFETY: an OwnedFd is a valid open descriptor that stays open, and keeps returning the
        // same number from as_raw_fd, until it is dropped — which happens only when the AsyncFd
        // that now owns it is dropped.
        match unsafe { AsyncFd::register(fd) } {
            Ok(fd) => Ok(Watched::Reactor(fd)),
            Err(e) => match e.into_parts() {
                (fd, cause) if cause.raw_os_error() == Some(libc::EPERM) => Ok(Watched::Plain(fd)),
                (_, cause) => Err(cause),
            },
        }
    }

    /// The descriptor, for direct non-blocking system calls.
    pub fn fd(&self) -> &OwnedFd {
        match self {
            Watched::Reactor(fd) => fd.get_ref(),
            Watched::Plain(fd) => fd,
        }
    }

    /// Reads once, waiting for readiness first. `Ok(0)` is end-of-file; readiness is kept after
    /// it, so calling again re-reads at once (the caller decides how long to wait).
    ///
    /// # Errors
    /// The read(2) or reactor error.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Watched::Reactor(fd) => loop {
                let mut guard = fd.readable().await?;
                match guard.try_io(|fd| {
                    nix::unistd::read(fd.get_ref().as_raw_fd(), buf).map_err(io::Error::from)
                }) {
                    Ok(result) => return result,
                    Err(_would_block) => continue,
                }
            },
            Watched::Plain(fd) => {
                // Keep other tasks running between reads of a large file.
                tokio::task::yield_now().await;
                Ok(nix::unistd::read(fd.as_raw_fd(), buf)?)
            }
        }
    }

    /// Waits for a writability edge and clears it, so the next write attempt is a real one.
    pub async fn writable(&self) {
        match self {
            Watched::Reactor(fd) => {
                if let Ok(mut guard) = fd.writable().await {
                    guard.clear_ready();
                }
            }
            Watched::Plain(_) => {}
        }
    }
}

/// Whether the peer of `fd` is gone right now: virtio-serial reports `POLLHUP` while no host is
/// connected to the port, sockets once the connection closed, pipes `POLLERR` once the reader
/// closed.
pub fn hung_up(fd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => fds[0].revents().is_some_and(|r| {
            r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL)
        }),
        Err(_) => false,
    }
}
