//! The E2B-compatible listener driven by the unchanged E2B Python SDK (`e2b` from PyPI,
//! pinned in scripts/requirements), sync and async clients, against a real daemon and real VMs
//! (`tests/e2b/client.py` holds the checks: commands with output, env, cwd, stdin and errors;
//! files in text and 10 MiB binary; list, exists, rename, remove; a background command killed;
//! pause and resume with memory kept; an expired timeout removing its sandbox; list with a
//! metadata filter; isolation of two sandboxes; not-found and authentication errors), then by
//! the JavaScript SDK (`e2b` from npm: `tests/e2b/client.mjs`, the main calls). Then a
//! revoked key is refused, and the keys are listed without their secrets.

use std::process::{Command, Output};

use aegis_testkit::{e2b_client, free_port, npm_dir, tool, venv_dir, Daemon};

fn python(d: &Daemon, addr: &str, key: &str, args: &[&str]) -> Output {
    let python = venv_dir().join("bin").join("python");
    assert!(
        python.is_file(),
        "no {}: run ./setup.sh (it installs the pip requirements)",
        python.display()
    );
    let mut command = Command::new(&python);
    e2b_client(&mut command, addr, key);
    command
        .args(args)
        .env("AEGIS_HOME", d.home())
        .output()
        .expect("run the E2B client")
}

#[test]
fn the_e2b_sdk_drives_aegis_sandboxes() {
    let addr = format!("127.0.0.1:{}", free_port());
    let d = Daemon::builder()
        .env("AEGIS_E2B_LISTEN", &addr)
        .start()
        .use_cli(env!("CARGO_BIN_EXE_aegis"));
    let status = d.aegis(["status", "--json"]);
    status.expect_success();
    assert!(status.stdout.contains(&addr), "{status}");

    let created = d.aegis(["e2b", "key", "create", "tests", "--json"]);
    created.expect_success();
    let created: serde_json::Value = serde_json::from_str(&created.stdout).expect("JSON");
    let key = created["key"].as_str().expect("a key").to_owned();
    assert!(key.starts_with("e2b_"), "{created}");

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2b/client.py");
    let out = python(&d, &addr, &key, &[script]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "the E2B client failed ({}):\n{stdout}\n{stderr}\n{}",
        out.status,
        d.log_tail()
    );
    println!("{stdout}");

    // The JavaScript SDK (`e2b` from npm, pinned in scripts/requirements): node resolves its
    // imports next to the script, so the script runs from setup.sh's npm prefix.
    let js = npm_dir().join("aegis-e2b-client.mjs");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2b/client.mjs"),
        &js,
    )
    .unwrap_or_else(|e| {
        panic!(
            "copy the JS client to {}: {e} (run ./setup.sh)",
            js.display()
        )
    });
    let mut node = Command::new(tool("node"));
    e2b_client(&mut node, &addr, &key);
    let out = node.arg(&js).output().expect("run the JS E2B client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "the JS E2B client failed ({}):\n{stdout}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        d.log_tail()
    );
    println!("{stdout}");
    // Every sandbox the client made is gone: killed, or removed by its timeout.
    let listed = d.aegis(["instance", "list", "--json"]);
    listed.expect_success();
    assert_eq!(listed.stdout.trim(), "[]", "{listed}");

    // The keys: listed with their use, never their secret; a revoked one is refused.
    let keys = d.aegis(["e2b", "key", "list", "--json"]);
    keys.expect_success();
    assert!(keys.stdout.contains("\"tests\""), "{keys}");
    assert!(
        !keys.stdout.contains(&key),
        "a listed key shows its secret: {keys}"
    );
    d.aegis(["e2b", "key", "revoke", "tests"]).expect_success();
    let refused = python(
        &d,
        &addr,
        &key,
        &[
            "-c",
            "from e2b import Sandbox\n\
             from e2b.exceptions import AuthenticationException\n\
             try:\n    Sandbox.list().next_items()\nexcept AuthenticationException as e:\n    print('refused:', e)\n",
        ],
    );
    let stdout = String::from_utf8_lossy(&refused.stdout);
    assert!(
        refused.status.success() && stdout.contains("refused:"),
        "a revoked key was not refused: {stdout}\n{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}
