//! MCP server benchmark (issue 16): a tool call that runs `true` on a warm instance, end to end
//! through the official MCP Python SDK over stdio (`benches/mcp/calls.py`: the client's request
//! until its result, the server started once), next to `aegis exec INSTANCE -- true` (a CLI
//! process each time, as a shell would run it). Both go through the daemon's exec route; the
//! difference is the MCP layer and its JSON, against the CLI's start-up.
//!
//! Needs the release binaries (`scripts/build.sh`) and a set-up `~/.aegis` (`./setup.sh`, which
//! also installs the pinned `mcp` package). Run with `cargo bench -p aegis --bench mcp`; sample
//! size `AEGIS_BENCH_CALLS` (default 100).

mod support;

use std::process::Command;
use std::time::Duration;

use aegis_proto::api::InstanceStatus;
use aegis_testkit::{env_usize, print_load, report_ms, venv_dir, Daemon};

use support::{accelerator, time_cli, wait_state, BOOT};

/// Deadline of one measured call.
const CALL: Duration = Duration::from_secs(120);

fn main() {
    let calls = env_usize("AEGIS_BENCH_CALLS", 100);
    let cli = std::path::PathBuf::from(env!("CARGO_BIN_EXE_aegis"));
    let d = Daemon::start();
    println!("accelerator: {}", accelerator(&d));
    print_load("at start");
    d.aegis([
        "instance",
        "start",
        "--name",
        "bench-mcp",
        "--idle-pause",
        "never",
        "--",
        "sleep",
        "infinity",
    ])
    .expect_success();
    wait_state(&d, "bench-mcp", InstanceStatus::Running, BOOT);
    let exec = ["exec", "bench-mcp", "--", "true"];
    time_cli(&d, &cli, &exec, CALL);
    let exec_times = (0..calls)
        .map(|_| time_cli(&d, &cli, &exec, CALL))
        .collect();

    let python = venv_dir().join("bin").join("python");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/mcp/calls.py");
    let out = Command::new(&python)
        .arg(script)
        .arg(&cli)
        .arg("bench-mcp")
        .arg(calls.to_string())
        .env("AEGIS_HOME", d.home())
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(
        out.status.success(),
        "the MCP client failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mcp_times = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| Duration::from_secs_f64(line.trim().parse().expect("seconds per line")))
        .collect();

    print_load("at end");
    println!("{calls} calls each, warm instance:");
    let mcp = report_ms("MCP tool call run_command `true`", mcp_times);
    let exec = report_ms("aegis exec -- true", exec_times);
    println!(
        "MCP / exec at p50: {:.2}x",
        mcp[0] / exec[0].max(f64::EPSILON)
    );
    d.aegis(["instance", "delete", "bench-mcp"])
        .expect_success();
}
