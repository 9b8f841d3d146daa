//! `aegis mcp` driven by the official MCP Python SDK (`mcp` from PyPI, pinned in
//! scripts/requirements) over stdio, against a real daemon and a real VM: the tools and their
//! schemas, a sandbox created, commands run with their output, stdin and exit code, files
//! written, read and listed, a background HTTP server reached through the URL `expose_port`
//! gives, tool errors for an unknown instance and a missing argument, and the sandbox deleted
//! (`tests/mcp/client.py` holds the checks). Then a server killed in the middle of a call leaves
//! no instance behind that the caller did not create.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use aegis_testkit::{venv_dir, wait_until, Daemon};

#[test]
fn an_mcp_client_runs_code_in_a_sandbox() {
    let d = Daemon::start().use_cli(env!("CARGO_BIN_EXE_aegis"));
    let python = venv_dir().join("bin").join("python");
    assert!(
        python.is_file(),
        "no {}: run ./setup.sh (it installs the pip requirements)",
        python.display()
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp/client.py");
    let out = Command::new(&python)
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_aegis"))
        .env("AEGIS_HOME", d.home())
        .env("NO_COLOR", "1")
        .output()
        .expect("run the MCP client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "the MCP client failed ({}):\n{stdout}\n{stderr}\n{}",
        out.status,
        d.log_tail()
    );

    // A server killed while a call runs leaves no instance that the caller did not create
    // (the call's process runs on, as every exec whose client goes away does).
    d.aegis([
        "instance", "start", "--name", "k", "--", "sleep", "infinity",
    ])
    .expect_success();
    let mut server = Command::new(env!("CARGO_BIN_EXE_aegis"))
        .arg("mcp")
        .env("AEGIS_HOME", d.home())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start aegis mcp");
    let mut stdin = server.stdin.take().expect("piped");
    for message in [
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"run_command","arguments":{"instance":"k","command":"sleep 300"}}}"#,
    ] {
        writeln!(stdin, "{message}").expect("write to aegis mcp");
    }
    wait_until(
        Duration::from_secs(120),
        "the call's process to run",
        || {
            let out = d.aegis(["process", "list", "k", "--json"]);
            if out.stdout.contains("\"running\"") {
                Ok(())
            } else {
                Err(out.to_string())
            }
        },
    );
    server.kill().expect("kill aegis mcp");
    let _ = server.wait();
    let listed = d.aegis(["instance", "list", "--json"]);
    listed.expect_success();
    let instances: Vec<serde_json::Value> =
        serde_json::from_str(&listed.stdout).expect("a JSON list");
    let handles: Vec<&str> = instances
        .iter()
        .filter_map(|i| i["handle"].as_str())
        .collect();
    assert_eq!(handles, ["k"], "{listed}");
    d.aegis(["instance", "delete", "k"]).expect_success();
}
