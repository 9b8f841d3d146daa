//! Helpers for end-to-end tests that drive the built binaries as a user would: a real `aegisd`
//! in a temporary `AEGIS_HOME` ([`Daemon`]), the `aegis` CLI with a hard timeout
//! ([`Daemon::aegis`]), polling with a deadline instead of sleeping ([`wait_until`]) and a small
//! tmpfs for full-disk tests to fill ([`Tmpfs`]); and for benchmarks, p50/p95/p99 lines
//! ([`report_ms`], [`report`], [`report_rate`]) and sample sizes from the environment
//! ([`env_usize`]); a terminal to type into ([`Daemon::on_terminal`]). [`free_port`] serves both, and [`tool`] finds
//! the host programs a test may run (those `scripts/requirements` lists).
//!
//! Prerequisites are never skipped: a missing binary, guest kernel or default image fails the
//! test with the command that provides it.
//!
//! Every helper panics with a message that names what failed and includes the daemon's log, as
//! a failing test should; none is meant for production code.
#![warn(missing_docs)]

mod daemon;
mod disk;
mod http;
mod measure;
mod net;
mod process;
mod terminal;
mod tools;
mod wait;

pub use daemon::{Daemon, DaemonBuilder, SHARED_HOME_ENV};
pub use disk::{Filler, Tmpfs};
pub use http::ApiResponse;
pub use measure::{env_usize, print_load, quantile, report, report_ms, report_rate};
pub use net::{free_port, get_status_line};
pub use process::{Background, Output, DEFAULT_CLI_TIMEOUT};
pub use terminal::TerminalSession;
pub use tools::{e2b_client, npm_dir, provider, tool, venv_dir};
pub use wait::{try_wait_until, wait_until};

/// `len` bytes of a xorshift sequence from `seed`: data that reveals lost, repeated or
/// reordered blocks (not only a wrong length) and that no layer compresses away.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[3]
        })
        .collect()
}

/// Signals for [`Background::signal`].
pub use nix::sys::signal::Signal;
