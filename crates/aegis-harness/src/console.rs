//! One-line status messages for the host's serial log: boot phases, connection changes, fatal
//! errors.
//!
//! As PID 1 the lines go to `/dev/console` (the kernel console is `ttyS0`, which the host captures
//! in a file); in `--stdio` mode they go to stderr, since stdout carries the channel. This module
//! only formats and writes; deciding what is worth a line is left to the callers. Process output
//! never comes here: it travels on the control channel.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::OnceLock;
use std::time::Instant;

/// Prefix of every console line, so the host can pick the harness's lines out of kernel messages.
const PREFIX: &str = "aegis-harness: ";

/// The console device PID 1 writes to.
const CONSOLE_DEVICE: &str = "/dev/console";

/// Where console lines go; chosen once at startup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// `/dev/console`, timestamps in milliseconds since the kernel booted.
    Device,
    /// stderr, timestamps in milliseconds since the harness started.
    Stderr,
}

#[derive(Debug)]
struct Console {
    sink: Sink,
    started: Instant,
}

/// The console is process-wide by nature (like stderr); it is set once before any other work.
static CONSOLE: OnceLock<Console> = OnceLock::new();

/// Chooses the sink. Later calls are ignored: the first choice holds for the process.
pub fn init(sink: Sink) {
    let _ = CONSOLE.set(Console {
        sink,
        started: Instant::now(),
    });
}

/// Writes `aegis-harness: <message>`.
pub fn line(message: impl fmt::Display) {
    write_line(&format!("{PREFIX}{message}\n"));
}

/// Writes `aegis-harness: <message> (<N> ms)`, for boot phases.
pub fn phase(message: impl fmt::Display) {
    write_line(&format!("{PREFIX}{message} ({} ms)\n", elapsed_ms()));
}

/// Milliseconds on the console's clock: since boot as PID 1, since start in `--stdio` mode.
pub fn elapsed_ms() -> u128 {
    match CONSOLE.get() {
        Some(Console {
            sink: Sink::Device, ..
        }) => monotonic_ms(),
        Some(Console {
            sink: Sink::Stderr,
            started,
        }) => started.elapsed().as_millis(),
        None => 0,
    }
}

/// `CLOCK_MONOTONIC` starts at boot on Linux, so it lines up with the kernel's own log stamps.
fn monotonic_ms() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    let secs = u128::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u128::try_from(ts.tv_nsec).unwrap_or(0);
    secs * 1000 + nanos / 1_000_000
}

fn write_line(text: &str) {
    let sink = CONSOLE.get().map_or(Sink::Stderr, |c| c.sink);
    if sink == Sink::Device {
        // Opened per line: the path stays valid across the move of /dev into the new root, and a
        // console that cannot be opened must not stop the harness.
        let console = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(CONSOLE_DEVICE);
        if let Ok(mut console) = console {
            if console.write_all(text.as_bytes()).is_ok() {
                return;
            }
        }
    }
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// Formats an error with its whole `source()` chain joined by `": "`, as the style guide asks
/// edges to print it.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
