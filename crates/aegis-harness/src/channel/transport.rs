//! The byte pipes the control channel can run over, behind one trait.
//!
//! - [`VirtioSerial`]: the virtio-serial port named [`CONTROL_PORT_NAME`] (QEMU). The device
//!   stays open for the life of the VM; while no host is connected to the QEMU chardev, reads
//!   return end-of-file and writes would block, so end-of-file means "wait for the host".
//! - [`Vsock`]: an `AF_VSOCK` stream to the host (CID 2), for backends with userspace vsock.
//!   End-of-file means the host went away; a new connection is made.
//! - [`Stdio`]: stdin/stdout in `--stdio` mode; end-of-file means the parent is gone.
//!
//! Transports only produce file descriptors; reading, writing and buffering are done by
//! `reader` and `writer` the same way for all of them.

use std::fmt;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aegis_proto::control::CONTROL_PORT_NAME;
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};

use crate::{async_fd, wait};

/// Where virtio-serial ports describe themselves.
pub const VIRTIO_PORTS_DIR: &str = "/sys/class/virtio-ports";

/// How long to wait for the control port after `virtio_console` loaded.
pub const PORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Poll interval while waiting for the port.
pub const PORT_POLL: Duration = Duration::from_millis(20);

/// The host's CID in `AF_VSOCK` addressing (`VMADDR_CID_HOST`).
pub const VSOCK_HOST_CID: u32 = 2;

/// What an end-of-file on the read side means for this transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EofPolicy {
    /// The host disconnected but the same descriptors will work again when it is back: keep
    /// them, poll gently, keep reading.
    WaitForHost,
    /// The connection is gone: connect again.
    Reconnect,
    /// The peer is gone for good: shut the harness down.
    Shutdown,
}

/// One connection to the host: a read side and a write side (possibly the same file), both
/// non-blocking and close-on-exec.
#[derive(Debug)]
pub struct Connection {
    /// Bytes from the host.
    pub read: OwnedFd,
    /// Bytes to the host.
    pub write: OwnedFd,
}

/// A way to reach the host.
pub trait Transport: Send + fmt::Debug {
    /// For console lines, e.g. `virtio-serial /dev/vport1p1`.
    fn describe(&self) -> String;

    /// Opens a connection. May block briefly (vsock connect), so callers run it off the async
    /// thread.
    ///
    /// # Errors
    /// [`TransportError`] naming what could not be opened; callers retry.
    fn connect(&mut self) -> Result<Connection, TransportError>;

    /// What end-of-file on [`Connection::read`] means.
    fn eof_policy(&self) -> EofPolicy;
}

/// Why a transport could not be found or opened.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// No virtio-serial port with the name appeared.
    #[error("no virtio-serial port named {name} appeared within {} s (is virtio_console loaded and the port configured?)", .waited.as_secs())]
    PortNotFound {
        /// The port name.
        name: &'static str,
        /// How long we waited.
        waited: Duration,
    },
    /// The port device could not be opened.
    #[error("cannot open control port {path}")]
    OpenPort {
        /// The device.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// vsock connection failed.
    #[error("cannot connect to vsock port {port} on the host (CID {cid})")]
    VsockConnect {
        /// Host CID.
        cid: u32,
        /// Port.
        port: u32,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// A descriptor could not be duplicated or made non-blocking.
    #[error("cannot prepare {what} for the channel")]
    Descriptor {
        /// Which descriptor.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// The virtio-serial control port.
#[derive(Debug)]
pub struct VirtioSerial {
    /// The device node. It is opened once ([`EofPolicy::WaitForHost`]): a port allows a single
    /// opener, and closing it would tell QEMU the guest went away.
    path: PathBuf,
}

impl VirtioSerial {
    /// Waits (bounded by [`PORT_TIMEOUT`]) for the port named [`CONTROL_PORT_NAME`] and its
    /// device node.
    ///
    /// # Errors
    /// [`TransportError::PortNotFound`] when it does not appear in time.
    pub fn find() -> Result<VirtioSerial, TransportError> {
        wait::poll_until(PORT_TIMEOUT, PORT_POLL, || {
            find_port(Path::new(VIRTIO_PORTS_DIR), CONTROL_PORT_NAME)
                .filter(|device| device.exists())
        })
        .map(|path| VirtioSerial { path })
        .ok_or(TransportError::PortNotFound {
            name: CONTROL_PORT_NAME,
            waited: PORT_TIMEOUT,
        })
    }
}

/// Finds `/dev/<vportNpM>` for the port whose `name` attribute is `name`.
pub fn find_port(ports_dir: &Path, name: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(ports_dir).ok()?;
    for entry in entries.flatten() {
        let Ok(port_name) = std::fs::read_to_string(entry.path().join("name")) else {
            continue;
        };
        if port_name.trim_end() == name {
            return Some(Path::new("/dev").join(entry.file_name()));
        }
    }
    None
}

impl Transport for VirtioSerial {
    fn describe(&self) -> String {
        format!("virtio-serial {}", self.path.display())
    }

    fn connect(&mut self) -> Result<Connection, TransportError> {
        let port = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(&self.path)
            .map_err(|source| TransportError::OpenPort {
                path: self.path.clone(),
                source,
            })?;
        let read = OwnedFd::from(port);
        let write = read
            .try_clone()
            .map_err(|source| TransportError::Descriptor {
                what: "the control port",
                source,
            })?;
        Ok(Connection { read, write })
    }

    fn eof_policy(&self) -> EofPolicy {
        EofPolicy::WaitForHost
    }
}

/// An `AF_VSOCK` stream to the host.
#[derive(Debug)]
pub struct Vsock {
    port: u32,
}

impl Vsock {
    /// Connects to the host's CID on `port`.
    pub fn new(port: u32) -> Vsock {
        Vsock { port }
    }
}

impl Transport for Vsock {
    fn describe(&self) -> String {
        format!("vsock {}:{}", VSOCK_HOST_CID, self.port)
    }

    fn connect(&mut self) -> Result<Connection, TransportError> {
        let error = |source| TransportError::VsockConnect {
            cid: VSOCK_HOST_CID,
            port: self.port,
            source,
        };
        let fd = socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(error)?;
        connect(fd.as_raw_fd(), &VsockAddr::new(VSOCK_HOST_CID, self.port)).map_err(error)?;
        set_nonblocking(fd.as_fd(), "the vsock socket")?;
        let write = fd
            .try_clone()
            .map_err(|source| TransportError::Descriptor {
                what: "the vsock socket",
                source,
            })?;
        Ok(Connection { read: fd, write })
    }

    fn eof_policy(&self) -> EofPolicy {
        EofPolicy::Reconnect
    }
}

/// stdin/stdout, for `--stdio` mode.
#[derive(Debug, Default)]
pub struct Stdio;

impl Transport for Stdio {
    fn describe(&self) -> String {
        "stdin/stdout".to_owned()
    }

    fn connect(&mut self) -> Result<Connection, TransportError> {
        let dup = |fd: BorrowedFd<'_>, what| {
            let owned = fd
                .try_clone_to_owned()
                .map_err(|source| TransportError::Descriptor { what, source })?;
            set_nonblocking(owned.as_fd(), what)?;
            Ok::<_, TransportError>(owned)
        };
        Ok(Connection {
            read: dup(io::stdin().as_fd(), "stdin")?,
            write: dup(io::stdout().as_fd(), "stdout")?,
        })
    }

    fn eof_policy(&self) -> EofPolicy {
        EofPolicy::Shutdown
    }
}

fn set_nonblocking(fd: BorrowedFd<'_>, what: &'static str) -> Result<(), TransportError> {
    async_fd::set_nonblocking(fd).map_err(|source| TransportError::Descriptor { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_port_by_name() {
        let dir = std::env::temp_dir().join(format!("aegis-harness-ports-{}", std::process::id()));
        for (port, name) in [
            ("vport1p1", "org.qemu.guest_agent.0\n"),
            ("vport2p1", "org.aegis.control\n"),
        ] {
            std::fs::create_dir_all(dir.join(port)).unwrap();
            std::fs::write(dir.join(port).join("name"), name).unwrap();
        }
        std::fs::create_dir_all(dir.join("vport3p1")).unwrap(); // no name attribute
        assert_eq!(
            find_port(&dir, CONTROL_PORT_NAME),
            Some(PathBuf::from("/dev/vport2p1"))
        );
        assert_eq!(find_port(&dir, "org.other"), None);
        assert_eq!(
            find_port(Path::new("/no/such/dir"), CONTROL_PORT_NAME),
            None
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
