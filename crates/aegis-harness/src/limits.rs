//! The harness's open-file limit.
//!
//! The kernel starts init with a soft `RLIMIT_NOFILE` of 1024 (hard 4096). The harness needs
//! more than that at its bounds — two pipes per process ([`MAX_PROCESSES`]) and two sockets per
//! ingress connection ([`MAX_CONNECTIONS`]) — so it raises its own soft limit at start. Its
//! children must not inherit the raise (programs using `select(2)` break above 1024), so
//! [`child_nofile`] gives the original limit back to every spawned process before exec.
//!
//! The original limit is process-wide by nature, like the console: recorded once, before any
//! process is spawned, and only read afterwards.

use std::io;
use std::sync::OnceLock;

use aegis_proto::control::MAX_PROCESSES;

use crate::ingress::{MAX_CONNECTIONS, MAX_REJECTIONS};

/// Descriptors the harness keeps besides pipes and proxied sockets (channel, reactor, signal
/// pipes, listeners, `/proc` reads), with room to spare.
const BASE_DESCRIPTORS: u64 = 256;

/// The soft limit the harness wants for itself.
pub const HARNESS_NOFILE: u64 = BASE_DESCRIPTORS
    + 2 * MAX_PROCESSES as u64
    + 2 * MAX_CONNECTIONS as u64
    + MAX_REJECTIONS as u64;

// The kernel's default hard limit for init (INR_OPEN_MAX) must be enough without raising it.
const _: () = assert!(HARNESS_NOFILE <= 4096);

/// The limit spawned processes get back: the one the harness started with, when it raised it.
static CHILD_NOFILE: OnceLock<libc::rlimit> = OnceLock::new();

/// Raises the soft `RLIMIT_NOFILE` to [`HARNESS_NOFILE`] (at most the hard limit) if it is
/// lower, and records the original for [`child_nofile`]. Returns the soft limit now in force.
///
/// # Errors
/// getrlimit(2) or setrlimit(2) failed; the harness then runs with the limit it has.
pub fn raise_nofile() -> io::Result<u64> {
    let mut original = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `original` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut original) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let wanted = HARNESS_NOFILE.min(original.rlim_max);
    if original.rlim_cur >= wanted {
        return Ok(original.rlim_cur);
    }
    let raised = libc::rlimit {
        rlim_cur: wanted,
        rlim_max: original.rlim_max,
    };
    // SAFETY: `raised` is a valid rlimit that lives for the call; raising the soft limit up to
    // the hard limit is always permitted.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let _ = CHILD_NOFILE.set(original);
    Ok(wanted)
}

/// The `RLIMIT_NOFILE` to restore in a child before exec; `None` when the harness did not
/// change its own.
pub fn child_nofile() -> Option<libc::rlimit> {
    CHILD_NOFILE.get().copied()
}
