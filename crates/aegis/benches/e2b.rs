//! E2B-compatible listener benchmark (issue 14): the metric the market quotes, `Sandbox.create()`
//! to the first `commands.run` output with the unchanged E2B Python SDK
//! (`benches/e2b/create.py`), next to `aegis run -- true` (a CLI process each time: create,
//! boot, run, delete). Both boot a new VM; the difference is the SDK and the listener.
//!
//! Needs the release binaries (`scripts/build.sh`) and a set-up `~/.aegis` (`./setup.sh`, which
//! also installs the pinned `e2b` package). Run with `cargo bench -p aegis --bench e2b`;
//! sample size `AEGIS_BENCH_STARTS` (default 10).

mod support;

use std::process::Command;
use std::time::Duration;

use aegis_testkit::{e2b_client, env_usize, free_port, print_load, report_ms, venv_dir, Daemon};

use support::{accelerator, time_cli};

/// Deadline of one measured start.
const START: Duration = Duration::from_secs(300);

fn main() {
    let starts = env_usize("AEGIS_BENCH_STARTS", 10);
    let cli = std::path::PathBuf::from(env!("CARGO_BIN_EXE_aegis"));
    let addr = format!("127.0.0.1:{}", free_port());
    let d = Daemon::builder().env("AEGIS_E2B_LISTEN", &addr).start();
    println!("accelerator: {}", accelerator(&d));
    print_load("at start");

    let run = ["run", "--", "true"];
    time_cli(&d, &cli, &run, START);
    let run_times = (0..starts)
        .map(|_| time_cli(&d, &cli, &run, START))
        .collect();

    let created = d.aegis(["e2b", "key", "create", "bench", "--json"]);
    created.expect_success();
    let created: serde_json::Value = serde_json::from_str(&created.stdout).expect("JSON");
    let python = venv_dir().join("bin").join("python");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/e2b/create.py");
    let mut command = Command::new(&python);
    e2b_client(&mut command, &addr, created["key"].as_str().expect("a key"));
    let out = command
        .arg(script)
        // One more than measured: the first warms the SDK's imports and connections.
        .arg((starts + 1).to_string())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(
        out.status.success(),
        "the E2B client failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let sdk_times = String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .map(|line| Duration::from_secs_f64(line.trim().parse().expect("seconds per line")))
        .collect();

    print_load("at end");
    println!("{starts} starts each:");
    let sdk = report_ms(
        "E2B SDK: Sandbox.create() to first commands.run output",
        sdk_times,
    );
    let run = report_ms("aegis run -- true", run_times);
    println!(
        "SDK / run at p50: {:.2}x",
        sdk[0] / run[0].max(f64::EPSILON)
    );
}
