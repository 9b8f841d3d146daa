//! Issue 20 end to end: `aegis run` leaves no instance behind on any path (success, a failed
//! boot, a client killed mid-run), unknown flags are usage errors rather than the command,
//! `--entrypoint` replaces the image's, and the calls an idempotent client repeats (expose the
//! same port, start an existing instance with another secret) answer as it expects.

use std::time::Duration;

use aegis_proto::api::{Endpoint, Instance, InstanceStatus};
use aegis_testkit::{wait_until, Daemon, Signal};

/// A boot under TCG on a loaded 2-core machine, with room to spare.
const BOOT: Duration = Duration::from_secs(150);

fn daemon() -> Daemon {
    Daemon::start().use_cli(env!("CARGO_BIN_EXE_aegis"))
}

fn instance_ids(d: &Daemon) -> Vec<String> {
    let response = d.api("GET", "/v1/instances", None);
    assert_eq!(response.status, 200, "{}", response.body);
    let list: Vec<Instance> = serde_json::from_str(&response.body).expect("a list of instances");
    list.into_iter().map(|i| i.id).collect()
}

/// Waits until `target`'s log has an entry whose line is `line`.
fn wait_for_line(d: &Daemon, target: &str, line: &str) {
    wait_until(BOOT, &format!("{target} to log {line:?}"), || {
        let response = d.api("GET", &format!("/v1/instances/{target}/logs"), None);
        if response.ndjson().iter().any(|e| e["line"] == line) {
            Ok(())
        } else {
            Err(response)
        }
    });
}

#[test]
fn issue_20_run_flags_and_entrypoint() {
    let d = daemon();
    // A misspelt flag is a usage error and boots nothing.
    for argv in [
        &["run", "--imge", "x", "--", "true"][..],
        &["run", "--entrypointt", "/bin/echo", "--", "x"],
    ] {
        let out = d.aegis(argv);
        out.expect_code(2);
        assert!(out.stderr.contains("unexpected argument"), "{out}");
    }
    assert_eq!(instance_ids(&d), Vec::<String>::new());

    // --entrypoint runs the program with CMD as its arguments.
    let out = d.aegis([
        "run",
        "--entrypoint",
        "/bin/echo",
        "--",
        "-n",
        "via entrypoint",
    ]);
    out.expect_success();
    assert_eq!(out.stdout, "via entrypoint", "{out}");
    assert_eq!(
        instance_ids(&d),
        Vec::<String>::new(),
        "run deletes its instance"
    );
}

#[test]
fn issue_20_failed_boot_leaves_nothing() {
    // Every boot fails at once: QEMU is a program that exits 1.
    let d = Daemon::start_with_env(&[("AEGIS_QEMU", "/bin/false")])
        .use_cli(env!("CARGO_BIN_EXE_aegis"));
    let out = d.aegis(["run", "--", "echo", "never printed"]);
    out.expect_code(125);
    assert!(out.stdout.is_empty(), "{out}");
    assert!(out.stderr.contains("stopped without an exit code"), "{out}");
    assert!(
        out.stderr.contains("system: "),
        "the boot's system lines are shown: {out}"
    );
    assert!(
        !out.stderr.contains("aegis logs"),
        "no hint at a deleted instance: {out}"
    );
    assert_eq!(instance_ids(&d), Vec::<String>::new(), "{out}");
}

#[test]
fn issue_20_killed_client_leaves_nothing() {
    let d = daemon();
    let run = d.spawn_aegis([
        "run",
        "--name",
        "orphan",
        "--",
        "sh",
        "-c",
        "echo ready; sleep 3; echo done",
    ]);
    wait_for_line(&d, "orphan", "ready");
    // SIGKILL: the client cannot delete anything. The daemon does, once the command is done
    // and the instance has stayed stopped for the grace period.
    run.signal(Signal::SIGKILL);
    let _ = run.wait(Duration::from_secs(10));
    let view: Instance = d.instance("orphan").expect("still there while it runs");
    assert!(view.auto_remove, "{view:?}");
    wait_until(
        Duration::from_secs(120),
        "the daemon to remove the instance",
        || match d.instance("orphan") {
            Err(e) if e.contains("404") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    assert!(
        d.log_tail().contains("auto-remove instance deleted"),
        "{}",
        d.log_tail()
    );
}

#[test]
fn issue_20_expose_and_secrets_are_idempotent() {
    let d = daemon();
    d.aegis(["secret", "set", "FIRST_KEY", "one"])
        .expect_success();
    d.aegis(["secret", "set", "SECOND_KEY", "two"])
        .expect_success();
    d.aegis([
        "instance",
        "start",
        "--name",
        "idem",
        "--snapshot",
        "off",
        "--secret",
        "FIRST_KEY",
        "--",
        "sh",
        "-c",
        "echo \"keys:${FIRST_KEY:-}:${SECOND_KEY:-}\"; exec sleep 100000",
    ])
    .expect_success();

    // Exposing a port twice answers with the same mapping; another public port is a conflict.
    let first = d.api("POST", "/v1/instances/idem/expose", Some(r#"{"port":80}"#));
    assert_eq!(first.status, 201, "{}", first.body);
    let first: Endpoint = serde_json::from_str(&first.body).unwrap();
    let again = d.api("POST", "/v1/instances/idem/expose", Some(r#"{"port":80}"#));
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(
        serde_json::from_str::<Endpoint>(&again.body).unwrap(),
        first
    );
    let body = format!(r#"{{"port":80,"public_port":{}}}"#, first.public_port);
    let same = d.api("POST", "/v1/instances/idem/expose", Some(&body));
    assert_eq!(same.status, 200, "{}", same.body);
    let out = d.aegis(["instance", "expose", "idem", "80"]);
    out.expect_success();
    assert!(out.stdout.contains(&first.public_port.to_string()), "{out}");
    let other = aegis_testkit::free_port();
    let body = format!(r#"{{"port":80,"public_port":{other}}}"#);
    let conflict = d.api("POST", "/v1/instances/idem/expose", Some(&body));
    assert_eq!(conflict.status, 409, "{}", conflict.body);
    assert!(
        conflict.body.contains("already exposed"),
        "{}",
        conflict.body
    );

    wait_for_line(&d, "idem", "keys:one:");
    d.aegis(["instance", "stop", "idem"]).expect_success();
    // A missing secret is refused before anything changes.
    let out = d.aegis([
        "instance",
        "start",
        "--name",
        "idem",
        "--secret",
        "NO_SUCH_KEY",
    ]);
    assert_ne!(out.code, Some(0), "{out}");
    assert!(out.stderr.contains("NO_SUCH_KEY"), "{out}");
    let view = d.instance("idem").unwrap();
    assert_eq!(view.secret_keys, ["FIRST_KEY"], "{view:?}");
    assert_eq!(view.state, InstanceStatus::Stopped, "{view:?}");
    // Starting it again by handle with another secret adds it to the ones it had.
    d.aegis([
        "instance",
        "start",
        "--name",
        "idem",
        "--secret",
        "SECOND_KEY",
    ])
    .expect_success();
    let view = d.instance("idem").unwrap();
    assert_eq!(view.secret_keys, ["FIRST_KEY", "SECOND_KEY"], "{view:?}");
    wait_for_line(&d, "idem", "keys:one:two");
    d.aegis(["instance", "delete", "idem"]).expect_success();
}
