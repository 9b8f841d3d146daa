//! Helpers shared by the end-to-end benchmarks of the CLI (`benches/api.rs`, `benches/router.rs`,
//! `benches/workspaces.rs`): the daemon's accelerator, waiting for an instance state, timed CLI
//! runs with a hard timeout. Sample sizes, percentiles and the host's load come from
//! `aegis_testkit`.
//!
//! Benchmarks print figures; they never assert on timings (STYLE §10).

#![allow(dead_code)] // each benchmark uses a subset

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use aegis_proto::api::{Instance, InstanceStatus};
use aegis_proto::control::INGRESS_KEY_BYTES;
use aegis_testkit::Daemon;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// Deadline of a cold boot under TCG (with a loaded machine).
pub const BOOT: Duration = Duration::from_secs(180);

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

/// The VM's ingress forward as the daemon keeps it beside the VM (`run/ingress.port` and
/// `run/ingress.key`): the host port and the key of the ingress header.
///
/// # Panics
/// When either file is missing or unreadable.
pub fn ingress_forward(d: &Daemon, id: &str) -> (u16, [u8; INGRESS_KEY_BYTES]) {
    let run = d.home().join("instances").join(id).join("run");
    let port = std::fs::read_to_string(run.join("ingress.port"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ingress port in {}", run.display()));
    let key = std::fs::read_to_string(run.join("ingress.key"))
        .ok()
        .and_then(|s| hex::decode(s.trim()).ok())
        .and_then(|k| k.try_into().ok())
        .unwrap_or_else(|| panic!("no ingress key in {}", run.display()));
    (port, key)
}
