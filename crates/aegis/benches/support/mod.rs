//! Helpers shared by the end-to-end benchmarks (`benches/api.rs`, `benches/router.rs`): sample
//! sizes from the environment, percentiles, waiting for an instance state, timed CLI runs with a
//! hard timeout.
//!
//! Benchmarks print figures; they never assert on timings (STYLE §10).

#![allow(dead_code)] // each benchmark uses a subset

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use aegis_proto::api::{Instance, InstanceStatus};
use aegis_testkit::Daemon;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// Deadline of a cold boot under TCG (with a loaded machine).
pub const BOOT: Duration = Duration::from_secs(180);

/// `name` parsed from the environment, else `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// The quantile of sorted samples at `permille` (500 = median), nearest rank (as
/// `crates/aegisd/benches/guest.rs` picks them).
pub fn quantile<T: Copy>(sorted: &[T], permille: usize) -> T {
    sorted[((sorted.len() - 1) * permille + 500) / 1000]
}

/// Prints p50/p95/p99 of durations in milliseconds; returns them.
pub fn report_ms(name: &str, mut samples: Vec<Duration>) -> [f64; 3] {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let q = [500, 950, 990].map(|p| ms(quantile(&samples, p)));
    println!(
        "{name:<52} n={:<5} p50={:>9.2} ms  p95={:>9.2} ms  p99={:>9.2} ms",
        samples.len(),
        q[0],
        q[1],
        q[2]
    );
    q
}

/// Prints the host's load average (`/proc/loadavg`): the figures of a run on a busy machine are
/// worth only as much as this line says.
pub fn print_load(when: &str) {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let fields: Vec<&str> = load.split_whitespace().take(3).collect();
    println!(
        "host load average {when}: {} ({} CPUs)",
        fields.join(" "),
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
}

/// The daemon's accelerator, from `GET /v1/status`.
pub fn accelerator(d: &Daemon) -> String {
    let status = d.api("GET", "/v1/status", None);
    assert_eq!(status.status, 200, "GET /v1/status: {}", status.body);
    status.json()["accelerator"]
        .as_str()
        .unwrap_or("unknown")
        .to_owned()
}

/// Waits until `target` is in `state` (see [`Daemon::wait_state`]).
///
/// # Panics
/// On timeout, and at once when a boot failed.
pub fn wait_state(d: &Daemon, target: &str, state: InstanceStatus, within: Duration) -> Instance {
    d.wait_state(target, state, within)
}

/// A port free on loopback right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Runs `aegis ARGS` (the release CLI the daemon was started with) against `d` and returns its
/// wall-clock time, from before the spawn until it was reaped. Output is discarded except
/// stderr, shown when it fails. The process is killed after `timeout`.
///
/// # Panics
/// When the command fails or times out.
pub fn time_cli<S>(d: &Daemon, cli: &std::path::Path, args: &[S], timeout: Duration) -> Duration
where
    S: AsRef<std::ffi::OsStr> + std::fmt::Debug,
{
    let mut command = Command::new(cli);
    command
        .args(args)
        .env("AEGIS_HOME", d.home())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    let started = Instant::now();
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", cli.display()));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(output)) => {
            let elapsed = started.elapsed();
            assert!(
                output.status.success(),
                "aegis {args:?} failed ({}): {}\n--- aegisd.log ---\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr),
                d.log_tail()
            );
            elapsed
        }
        Ok(Err(e)) => panic!("cannot wait for aegis {args:?}: {e}"),
        Err(_) => {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            panic!(
                "aegis {args:?} did not finish within {timeout:?}\n--- aegisd.log ---\n{}",
                d.log_tail()
            )
        }
    }
}

/// `target/release/aegis` of this workspace (the binary `scripts/build.sh` builds, which
/// [`Daemon::start`] also requires).
pub fn release_cli() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/aegis")
}
