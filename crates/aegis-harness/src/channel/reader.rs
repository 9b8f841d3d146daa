//! The read side of the control channel: connects through the transport, decodes bounded lines
//! and hands them to the RPC server, surviving the host going away.
//!
//! It runs on a dedicated thread with plain `poll(2)` rather than in the async runtime: a
//! virtio-serial port reports `POLLHUP` while no host is connected and clears it when one
//! connects, which tokio's readiness tracking cannot follow (it treats a hang-up as final).
//! On end-of-file the transport's [`EofPolicy`] decides: wait for the host on the same port
//! (virtio-serial, checked every [`HOST_POLL`]), connect again (vsock, with backoff), or tell the
//! server the peer is gone (`--stdio`). Each new connection's write side is passed to the writer
//! task. Connection changes are noted on the console, once per change.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::thread::JoinHandle;
use std::time::Duration;

use aegis_proto::control::MAX_HOST_FRAME_BYTES;
use tokio::sync::mpsc;

use super::framing::{Decoded, LineDecoder};
use super::transport::{EofPolicy, Transport};
use crate::async_fd;
use crate::console;

/// Lines waiting for the server. Each can be up to [`MAX_HOST_FRAME_BYTES`], so a small number
/// keeps the memory bound small; the host is throttled by the port meanwhile.
pub const INCOMING_CAPACITY: usize = 4;

/// How often a disconnected virtio-serial port is checked for the host's return; also the
/// longest a `poll` waits before the reader re-checks that the server still listens.
pub const HOST_POLL: Duration = Duration::from_millis(100);

/// First delay before retrying a failed connect; doubles up to [`RECONNECT_MAX`].
pub const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// Longest delay between connection attempts.
pub const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// Bytes read per system call.
const READ_CHUNK: usize = 64 * 1024;

/// What the reader hands to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// One line (a frame to parse).
    Line(Vec<u8>),
    /// A line exceeded [`MAX_HOST_FRAME_BYTES`] and is being discarded.
    TooLarge,
    /// The peer is gone for good (`--stdio` end-of-file).
    Closed,
}

enum Gone {
    Reconnect,
    PeerClosed,
    ServerStopped,
}

/// Starts the reader thread. It ends when the server stops listening, or (for
/// [`EofPolicy::Shutdown`]) after reporting [`Incoming::Closed`].
///
/// # Errors
/// The thread could not be created.
pub fn spawn(
    transport: Box<dyn Transport>,
    lines: mpsc::Sender<Incoming>,
    connections: mpsc::Sender<OwnedFd>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("channel-reader".to_owned())
        .spawn(move || run(transport, &lines, &connections))
}

fn run(
    mut transport: Box<dyn Transport>,
    lines: &mpsc::Sender<Incoming>,
    connections: &mpsc::Sender<OwnedFd>,
) {
    let policy = transport.eof_policy();
    let mut decoder = LineDecoder::new(MAX_HOST_FRAME_BYTES);
    let mut backoff = RECONNECT_MIN;
    let mut connect_failed = false;
    loop {
        let connection = match transport.connect() {
            Ok(connection) => connection,
            Err(e) => {
                if !connect_failed {
                    connect_failed = true;
                    console::line(format_args!("{}; retrying", console::chain(&e)));
                }
                if lines.is_closed() {
                    return;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        connect_failed = false;
        backoff = RECONNECT_MIN;
        if policy == EofPolicy::Reconnect {
            console::line(format_args!("host connected ({})", transport.describe()));
        }
        if connections.blocking_send(connection.write).is_err() {
            return;
        }
        decoder.reset();
        match read_until_gone(&connection.read, policy, &mut decoder, lines) {
            Gone::Reconnect => console::line("host disconnected"),
            Gone::PeerClosed => {
                let _ = lines.blocking_send(Incoming::Closed);
                return;
            }
            Gone::ServerStopped => return,
        }
    }
}

fn read_until_gone(
    read: &OwnedFd,
    policy: EofPolicy,
    decoder: &mut LineDecoder,
    lines: &mpsc::Sender<Incoming>,
) -> Gone {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut decoded = Vec::new();
    // Only virtio-serial tracks presence here: its port stays open across host restarts, and
    // POLLHUP tells whether a host is connected to it.
    let waits_for_host = policy == EofPolicy::WaitForHost;
    let mut host_present = false;
    if waits_for_host && !async_fd::hung_up(read.as_fd()) {
        note_present(&mut host_present);
    }
    loop {
        if lines.is_closed() {
            return Gone::ServerStopped;
        }
        if !async_fd::wait_readable(read.as_fd(), HOST_POLL) {
            continue;
        }
        match nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(read), &mut buf) {
            Ok(0) => {
                if !waits_for_host {
                    return gone_for(policy);
                }
                if host_present {
                    host_present = false;
                    console::line("host disconnected");
                }
                // A line cut off by the disconnect must not be glued to the next host's first.
                decoder.reset();
                // While no host is connected the port reads as end-of-file at once: check back
                // gently instead of spinning.
                std::thread::sleep(HOST_POLL);
                if !async_fd::hung_up(read.as_fd()) {
                    note_present(&mut host_present);
                }
            }
            Ok(n) => {
                if waits_for_host {
                    note_present(&mut host_present);
                }
                decoder.push(&buf[..n], &mut decoded);
                for item in decoded.drain(..) {
                    let incoming = match item {
                        Decoded::Line(line) => Incoming::Line(line),
                        Decoded::TooLarge => Incoming::TooLarge,
                    };
                    if lines.blocking_send(incoming).is_err() {
                        return Gone::ServerStopped;
                    }
                }
            }
            Err(nix::Error::EAGAIN | nix::Error::EINTR) => {}
            Err(e) => {
                console::line(format_args!(
                    "control channel read failed: {}",
                    io::Error::from(e)
                ));
                if !waits_for_host {
                    return gone_for(policy);
                }
                decoder.reset();
                std::thread::sleep(HOST_POLL);
            }
        }
    }
}

fn note_present(host_present: &mut bool) {
    if !*host_present {
        *host_present = true;
        console::line("host connected");
    }
}

fn gone_for(policy: EofPolicy) -> Gone {
    match policy {
        EofPolicy::WaitForHost | EofPolicy::Reconnect => Gone::Reconnect,
        EofPolicy::Shutdown => Gone::PeerClosed,
    }
}
