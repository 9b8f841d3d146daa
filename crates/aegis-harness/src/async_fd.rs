//! Low-level descriptor helpers shared by the channel and the output pumps: the non-blocking
//! switch, a hang-up probe, and [`AsyncPipe`], a process pipe (or a terminal's master side)
//! read and written through the tokio reactor.
//!
//! Only pipes go through the reactor. Tokio treats `EPOLLHUP` as final (it never clears
//! "read closed"), which is right for a pipe whose writers are gone but wrong for a
//! virtio-serial port, where HUP comes and goes with the host; the channel therefore polls its
//! descriptors itself (see `channel::reader` and `channel::writer`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

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

/// Whether the peer of `fd` is gone right now: virtio-serial reports `POLLHUP` while no host is
/// connected to the port, sockets once the connection closed, pipes `POLLERR` once the reader
/// closed.
pub fn hung_up(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => fds[0].revents().is_some_and(|r| {
            r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL)
        }),
        Err(_) => false,
    }
}

/// Blocks the calling (non-async) thread until `fd` is readable, has hung up, or `timeout`
/// passed. Returns whether there is something to read (data, end-of-file or an error).
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::from(millis)), Ok(n) if n > 0)
}

/// The read end of a process's stdout or stderr pipe, or the master side of its terminal,
/// registered with the reactor.
#[derive(Debug)]
pub struct AsyncPipe(AsyncFd<OwnedFd>);

impl AsyncPipe {
    /// Makes the pipe non-blocking and registers it. Must run inside the runtime.
    ///
    /// # Errors
    /// The fcntl(2) or registration error.
    pub fn new(pipe: OwnedFd) -> io::Result<AsyncPipe> {
        set_nonblocking(pipe.as_fd())?;
        // SAFETY: an OwnedFd is a valid open descriptor that stays open, and keeps returning the
        // same number from as_raw_fd, until it is dropped — which happens only when the AsyncFd
        // that now owns it is dropped.
        let fd = unsafe { AsyncFd::register(pipe) }?;
        Ok(AsyncPipe(fd))
    }

    /// Reads once, waiting for data. `Ok(0)` is end-of-file (every writer closed).
    ///
    /// # Errors
    /// The read(2) or reactor error.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.0.readable().await?;
            match guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref().as_raw_fd(), buf).map_err(io::Error::from)
            }) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data`, waiting while the descriptor is full.
    ///
    /// # Errors
    /// The write(2) or reactor error.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.0.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(written) => data = &data[written?..],
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}
