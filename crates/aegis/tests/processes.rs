//! End-to-end tests of what an exec can be given beyond its command line, against a real
//! `aegisd` and one real VM shared by the assertions: stdin streamed from the CLI (`aegis exec
//! -i`, and `aegis run -i` in a second VM), text and a large binary input checked by its digest, a process that stops reading
//! early, and the per-call timeout (`--timeout`), after which the guest has killed the process;
//! then background processes (`aegis exec -d`, `aegis process`): listed, waited for, followed,
//! fed piece by piece, signalled; then terminals (`aegis exec -it`) driven from a terminal.

use std::io::Write;
use std::time::Duration;

use aegis_testkit::{pseudo_random_bytes, wait_until, Daemon, Output};
use sha2::{Digest, Sha256};

/// One CLI call that moves a large input through a TCG guest, with room to spare.
const CALL: Duration = Duration::from_secs(240);
/// Bytes of the binary input: many times any buffer on the way (socket, pipe, chunk).
const BIG: usize = 24 * 1024 * 1024;
/// Room for a TCG guest to stop or be deleted.
const MINUTE: Duration = Duration::from_secs(60);

fn input_file(d: &Daemon, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = d.home().join(name);
    let mut file = std::fs::File::create(&path).expect("create the input file");
    file.write_all(bytes).expect("write the input file");
    path
}

fn exec_fed(d: &Daemon, input: &std::path::Path, command: &[&str]) -> Output {
    let mut args = vec!["exec", "-i", "p", "--"];
    args.extend_from_slice(command);
    d.aegis_with_input(args, input, CALL)
}

#[test]
fn stdin_and_timeouts_of_execs() {
    let d = Daemon::start().use_cli(env!("CARGO_BIN_EXE_aegis"));
    d.aegis([
        "instance",
        "start",
        "--name",
        "p",
        "--idle-pause",
        "never",
        "--",
        "sleep",
        "infinity",
    ])
    .expect_success();

    // Text in, text out; the end of input is the process's end-of-file.
    let text = input_file(&d, "text", b"first line\nsecond line\n");
    let out = exec_fed(&d, &text, &["cat"]);
    out.expect_success();
    assert_eq!(out.stdout, "first line\nsecond line\n", "{out}");
    let out = exec_fed(&d, &text, &["wc", "-l"]);
    out.expect_success();
    assert_eq!(out.stdout.trim(), "2", "{out}");

    // A large binary input arrives whole and unchanged.
    let big = pseudo_random_bytes(BIG, 0x9E37_79B9_7F4A_7C15);
    let expected = hex::encode(Sha256::digest(&big));
    let big_path = input_file(&d, "big", &big);
    drop(big);
    let out = exec_fed(&d, &big_path, &["sha256sum"]);
    out.expect_success();
    assert_eq!(
        out.stdout.split_whitespace().next(),
        Some(expected.as_str()),
        "the guest read other bytes than were sent: {out}"
    );
    let out = exec_fed(&d, &big_path, &["wc", "-c"]);
    out.expect_success();
    assert_eq!(out.stdout.trim(), BIG.to_string(), "{out}");

    // `aegis run -i` feeds a new instance's primary process the same way.
    let out = d.aegis_with_input(["run", "-i", "--", "sha256sum"], &big_path, CALL);
    out.expect_success();
    assert_eq!(
        out.stdout.split_whitespace().next(),
        Some(expected.as_str()),
        "the primary process read other bytes than were sent: {out}"
    );

    // A process that reads a little and exits ends the call; the rest of the input is dropped.
    let out = exec_fed(&d, &big_path, &["sh", "-c", "head -c 5 | wc -c; echo done"]);
    out.expect_success();
    assert_eq!(out.stdout, "5\ndone\n", "{out}");

    // Without -i the process's stdin is empty, as before.
    let out = d.aegis(["exec", "p", "--", "cat"]);
    out.expect_success();
    assert_eq!(out.stdout, "", "{out}");

    // Asking the API for stdin without the upgrade is refused with what to do.
    let refused = d.api(
        "POST",
        "/v1/instances/p/exec",
        Some(r#"{"command": ["cat"], "stdin": true}"#),
    );
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.body.contains("Upgrade: aegis-exec"),
        "{}",
        refused.body
    );

    // A timeout kills the process (and its group) and says so; the exit code is timeout(1)'s.
    let out = d.aegis([
        "exec",
        "--timeout",
        "2s",
        "p",
        "--",
        "sh",
        "-c",
        "sleep 300 & echo started; wait",
    ]);
    assert_eq!(out.code, Some(124), "{out}");
    assert!(out.stdout.contains("started"), "{out}");
    assert!(
        out.stderr.contains("ran past its timeout of 2 s"),
        "the timeout is not explained: {out}"
    );
    let left = d.aegis([
        "exec",
        "p",
        "--",
        "sh",
        "-c",
        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done | grep -c '^sleep 300' || true",
    ]);
    left.expect_success();
    assert_eq!(
        left.stdout.trim(),
        "0",
        "the timed-out command's children run on: {left}"
    );
    let bad = d.aegis(["exec", "--timeout", "0", "p", "--", "true"]);
    assert_eq!(bad.code, Some(2), "{bad}");
    assert!(bad.stderr.contains("at least 1 second"), "{bad}");

    background_processes(&d);
    terminals(&d);

    d.aegis(["instance", "delete", "p"]).expect_success();
}

/// Starts a background process and returns its exec id.
fn detach(d: &Daemon, args: &[&str]) -> String {
    let mut all = vec!["exec", "-d"];
    all.extend_from_slice(args);
    let out = d.aegis(all);
    out.expect_success();
    let id = out.stdout.trim().to_owned();
    assert!(id.starts_with("exec-"), "not an exec id: {out}");
    id
}

fn listed(d: &Daemon, exec_id: &str) -> serde_json::Value {
    let out = d.aegis(["process", "list", "p", "--json"]);
    out.expect_success();
    let list: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).expect("a JSON list");
    list.into_iter()
        .find(|e| e["exec_id"] == exec_id)
        .unwrap_or_else(|| panic!("{exec_id} is not listed: {out}"))
}

fn background_processes(d: &Daemon) {
    // Started in the background, listed while it runs, waited for with its exit code, and its
    // output is in the log under its id.
    let id = detach(
        d,
        &[
            "p",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; sleep 2; exit 7",
        ],
    );
    let running = listed(d, &id);
    assert_eq!(running["state"], "running", "{running}");
    assert_eq!(running["detached"], true, "{running}");
    assert_eq!(running["command"][0], "sh", "{running}");
    let waited = d.aegis(["process", "wait", "p", &id]);
    assert_eq!(waited.code, Some(7), "{waited}");
    let ended = listed(d, &id);
    assert_eq!(ended["state"], "exited", "{ended}");
    assert_eq!(ended["exit_code"], 7, "{ended}");
    assert!(ended["ended_at"].is_string(), "{ended}");
    let logs = d.aegis(["logs", "p", "--exec", &id]);
    logs.expect_success();
    assert_eq!(logs.stdout, "out\n", "{logs}");
    assert_eq!(logs.stderr, "err\n", "{logs}");
    let table = d.aegis(["process", "list", "p"]);
    table.expect_success();
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.contains(&id) && l.contains("exited")),
        "{table}"
    );

    // Following an exec's log ends when the exec ends.
    let id = detach(
        d,
        &[
            "p",
            "--",
            "sh",
            "-c",
            "for i in 1 2 3; do echo tick $i; sleep 1; done",
        ],
    );
    let followed = d.aegis(["logs", "p", "--exec", &id, "--follow"]);
    followed.expect_success();
    assert_eq!(followed.stdout, "tick 1\ntick 2\ntick 3\n", "{followed}");

    // Input given in two pieces: the first keeps stdin open, the second ends it.
    let id = detach(
        d,
        &[
            "-i",
            "p",
            "--",
            "sh",
            "-c",
            "cat > /tmp/fed; echo got $(wc -c < /tmp/fed)",
        ],
    );
    let first = input_file(d, "first", b"abc");
    let second = input_file(d, "second", b"de");
    d.aegis_with_input(["process", "input", "p", &id, "--keep-open"], &first, CALL)
        .expect_success();
    assert_eq!(listed(d, &id)["state"], "running");
    d.aegis_with_input(["process", "input", "p", &id], &second, CALL)
        .expect_success();
    let waited = d.aegis(["process", "wait", "p", &id]);
    assert_eq!(waited.code, Some(0), "{waited}");
    let logs = d.aegis(["logs", "p", "--exec", &id]);
    assert_eq!(logs.stdout, "got 5\n", "{logs}");
    // Its stdin is closed now: more input is refused, as it is for a process without stdin.
    let refused = d.api(
        "POST",
        &format!("/v1/instances/p/execs/{id}/stdin"),
        Some("de"),
    );
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(
        refused.body.contains("no longer running"),
        "{}",
        refused.body
    );

    // A signal by name ends it; the exit code says which.
    let id = detach(d, &["p", "--", "sleep", "300"]);
    let no_stdin = d.aegis_with_input(["process", "input", "p", &id], &second, CALL);
    assert_eq!(no_stdin.code, Some(125), "{no_stdin}");
    assert!(no_stdin.stderr.contains("without stdin"), "{no_stdin}");
    d.aegis(["process", "kill", "p", &id, "--signal", "TERM"])
        .expect_success();
    let waited = d.aegis(["process", "wait", "p", &id]);
    assert_eq!(waited.code, Some(143), "{waited}");
    let again = d.aegis(["process", "kill", "p", &id]);
    assert_eq!(again.code, Some(125), "{again}");
    assert!(again.stderr.contains("no longer running"), "{again}");
    let bad = d.aegis(["process", "kill", "p", &id, "--signal", "NOPE"]);
    assert!(bad.stderr.contains("unknown signal"), "{bad}");

    // An unknown exec id is a clear not-found.
    let unknown = d.aegis(["process", "wait", "p", "exec-00000000"]);
    assert_eq!(unknown.code, Some(125), "{unknown}");
    assert!(unknown.stderr.contains("has no exec"), "{unknown}");
    assert!(unknown.stderr.contains("aegis process list p"), "{unknown}");
}

/// `aegis exec -it` as a person at a terminal uses it: a shell on a terminal of this side's
/// size, resized when this side is, Ctrl-C interrupting the command it runs and not the shell,
/// its exit code passed back, this terminal's settings restored, Ctrl-D ending the input; a
/// terminal started in the background and attached to later; and the API's refusals.
fn terminals(d: &Daemon) {
    let before = d.home().join("stty-before");
    let after = d.home().join("stty-after");
    let mut t = d.on_terminal(&format!(
        "stty rows 30 cols 90; stty -g > {before}; \
         \"$AEGIS\" exec -it p -- sh; echo aegis-rc=$?; stty -g > {after}; \
         \"$AEGIS\" exec -it p -- tr a-z A-Z; echo tr-rc=$?",
        before = before.display(),
        after = after.display(),
    ));
    // Typed text is echoed: each expected output differs from the line that asks for it.
    t.send(b"tty; stty size; test -t 0 && echo on-''a-terminal\n");
    t.expect("/dev/pts/", MINUTE);
    t.expect("30 90", MINUTE);
    t.expect("on-a-terminal", MINUTE);

    // This side's terminal changes size: the guest's follows.
    let tty = t.tty_of("exec -it p -- sh", MINUTE);
    let resized = std::process::Command::new(aegis_testkit::tool("stty"))
        .arg("-F")
        .arg(&tty)
        .args(["rows", "40", "cols", "100"])
        .status()
        .expect("run stty");
    assert!(resized.success(), "stty -F {} failed", tty.display());
    let mut seen = false;
    for _ in 0..20 {
        t.send(b"stty size\n");
        if t.wait_for("40 100", Duration::from_secs(3)).is_some() {
            seen = true;
            break;
        }
    }
    assert!(seen, "the guest's terminal kept its size:\n{}", t.all());

    // Ctrl-C interrupts the command in the foreground (and, as in any shell, the rest of its
    // command line), and the shell goes on.
    t.send(b"sh -c 'echo st''arted; sleep 100'\n");
    t.expect("started", MINUTE);
    t.send(b"\x03");
    t.send(b"echo rc=$?\n");
    t.expect("rc=130", MINUTE);

    // The shell's exit code is the CLI's, and the terminal is as it was.
    t.send(b"exit 3\n");
    t.expect("aegis-rc=3", MINUTE);
    // Ctrl-D is the end of the input for a program reading the terminal.
    t.send(b"hello\n");
    t.expect("HELLO", MINUTE);
    t.send(b"\x04");
    t.expect("tr-rc=0", MINUTE);
    let status = t.finish(MINUTE);
    assert!(status.success(), "{status}\n{}", t.all());
    let before = std::fs::read_to_string(&before).expect("stty -g before");
    let after = std::fs::read_to_string(&after).expect("stty -g after");
    assert!(!before.trim().is_empty());
    assert_eq!(before, after, "the terminal's settings were not restored");

    // `exec -t` without -i and `run -it`: the primary process of a new instance on a terminal
    // of this size, its exit code the CLI's. The guest's terminal ends its lines with "\r\n";
    // without -i this side's terminal stays cooked (Ctrl-C still ends the CLI, as with
    // `docker exec -t`) and adds its own "\r".
    let mut t = d.on_terminal(
        "stty rows 20 cols 70; \"$AEGIS\" exec -t p -- echo qu''ick; echo quick-rc=$?; \
         \"$AEGIS\" run -it -- sh; echo run-rc=$?",
    );
    let before = t.expect("quick-rc=0", MINUTE);
    assert_eq!(before, "quick\r\r\n", "{:?}", t.all());
    t.send(b"stty size; echo $((6 * 7))-from-run\n");
    t.expect("20 70", CALL);
    t.expect("42-from-run", MINUTE);
    t.send(b"exit 5\n");
    t.expect("run-rc=5", CALL);
    let status = t.finish(MINUTE);
    assert!(status.success(), "{status}\n{}", t.all());

    // A terminal started in the background waits for someone to attach.
    let id = detach(
        d,
        &["-t", "p", "--", "sh", "-c", "read x; echo got-$x; exit 4"],
    );
    assert_eq!(listed(d, &id)["tty"], true);
    let mut t = d.on_terminal(&format!(
        "\"$AEGIS\" process attach p {id}; echo attach-rc=$?"
    ));
    t.send(b"yes\n");
    t.expect("got-yes", MINUTE);
    t.expect("attach-rc=4", MINUTE);
    t.finish(MINUTE);

    // The API: a terminal needs the upgrade, a size in range, and a process that has one.
    let refused = d.api(
        "POST",
        "/v1/instances/p/exec",
        Some(r#"{"command": ["sh"], "tty": {}}"#),
    );
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.body.contains("Upgrade: aegis-exec"),
        "{}",
        refused.body
    );
    let refused = d.api(
        "POST",
        "/v1/instances/p/exec",
        Some(r#"{"command": ["sh"], "tty": {"rows": 0}, "detach": true}"#),
    );
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains("out of range"), "{}", refused.body);
    let id = detach(d, &["p", "--", "sleep", "300"]);
    let refused = d.api(
        "POST",
        &format!("/v1/instances/p/execs/{id}/resize"),
        Some(r#"{"rows": 10, "cols": 10}"#),
    );
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(refused.body.contains("has no terminal"), "{}", refused.body);
    d.aegis(["process", "kill", "p", &id]).expect_success();
    let refused = d.api(
        "POST",
        "/v1/instances/p/resize",
        Some(r#"{"rows": 10, "cols": 10}"#),
    );
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(refused.body.contains("has no terminal"), "{}", refused.body);
}

#[test]
fn lifetimes_stop_or_delete_instances() {
    let d = Daemon::start().use_cli(env!("CARGO_BIN_EXE_aegis"));
    let port = aegis_testkit::free_port();
    d.aegis([
        "instance",
        "start",
        "--name",
        "t",
        "--expose",
        &format!("{port}:80"),
        "--timeout",
        "1h",
        "--on-timeout",
        "stop",
        "--",
        "sleep",
        "infinity",
    ])
    .expect_success();
    let info = |d: &Daemon| d.api("GET", "/v1/instances/t", None);
    let view = serde_json::from_str::<serde_json::Value>(&info(&d).body).unwrap();
    assert_eq!(view["on_timeout"], "stop", "{view}");
    assert!(
        view["expires_at"].as_str().is_some_and(|t| t.contains('T')),
        "{view}"
    );
    let shown = d.aegis(["instance", "info", "t"]);
    assert!(shown.stdout.contains("then stopped"), "{shown}");

    // A new, short lifetime from now; it keeps stop, and stopping ends the lifetime.
    let set = d.aegis(["instance", "timeout", "t", "2s"]);
    set.expect_success();
    assert!(set.stdout.contains("stopped at"), "{set}");
    wait_until(
        MINUTE,
        "the instance stops at the end of its lifetime",
        || {
            let view = serde_json::from_str::<serde_json::Value>(&info(&d).body).unwrap();
            if view["state"] == "stopped" && view["expires_at"].is_null() {
                Ok(())
            } else {
                Err(view)
            }
        },
    );
    let logs = d.aegis(["logs", "t"]);
    assert!(logs.stdout.contains("lifetime ran out: stopping"), "{logs}");

    // Removed, then given again with the default outcome: deleted, its public port released.
    let none = d.aegis(["instance", "timeout", "t", "none"]);
    assert!(none.stdout.contains("no lifetime"), "{none}");
    let bad = d.api(
        "POST",
        "/v1/instances/t/timeout",
        Some(r#"{"timeout_secs": 0}"#),
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
    d.aegis(["instance", "timeout", "t", "--on-timeout", "delete", "2s"])
        .expect_success();
    wait_until(
        MINUTE,
        "the instance is deleted at the end of its lifetime",
        || {
            let answer = info(&d);
            if answer.status == 404 {
                Ok(())
            } else {
                Err(answer.body)
            }
        },
    );
    wait_until(MINUTE, "its public port is released", || {
        std::net::TcpListener::bind(("127.0.0.1", port)).map(drop)
    });
}
