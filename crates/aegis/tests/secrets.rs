//! End-to-end tests of secrets (issue 6) against a real `aegisd` booting real VMs: the encrypted
//! store through the CLI and the API, injection only on request (`--secret KEY`, `--secret '*'`),
//! explicit `--env` winning, rotation applying at the next boot, changing the keys of a stopped
//! instance, clear failures for missing and tampered secrets, and a search of every place a value
//! must never reach (daemon log, instance logs, console, SQLite, the VMM's command line and
//! environment).
//!
//! Each test owns one daemon in a temporary `AEGIS_HOME` and boots as few VMs as it can. Every
//! daemon of this binary logs at `trace`, so the leak search covers the most verbose log there is.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use serde_json::Value;

use aegis_proto::api::{Instance, InstanceStatus, SecretInfo};
use aegis_testkit::{wait_until, Daemon, Output};

/// A boot under TCG on a loaded 2-core machine, with room to spare.
const BOOT: Duration = Duration::from_secs(150);
/// Hard timeout of one CLI call that gets a value on stdin.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// Exit code of Aegis's own failures (see `aegis --help`).
const AEGIS_FAILURE: i32 = 125;

static TRACE: Once = Once::new();

fn daemon() -> Daemon {
    // Before any daemon of this binary starts (every test comes through here first, and no test
    // has spawned anything yet), so no thread reads the environment while it changes.
    TRACE.call_once(|| std::env::set_var("AEGIS_LOG", "trace"));
    Daemon::start().use_cli(env!("CARGO_BIN_EXE_aegis"))
}

fn json(out: &Output) -> Value {
    out.expect_success();
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn secrets(d: &Daemon) -> Vec<SecretInfo> {
    serde_json::from_value(json(&d.aegis(["secret", "list", "--json"])))
        .expect("`aegis secret list --json` prints secrets")
}

fn instances(d: &Daemon) -> Vec<Instance> {
    serde_json::from_value(json(&d.aegis(["instance", "list", "--json"])))
        .expect("`aegis instance list --json` prints instances")
}

fn logs(d: &Daemon, target: &str) -> Vec<Value> {
    let out = d.aegis(["logs", target, "--json"]);
    out.expect_success();
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

fn lines_of(entries: &[Value], source: &str) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e["source"] == source)
        .filter_map(|e| e["line"].as_str().map(str::to_owned))
        .collect()
}

fn wait_state(d: &Daemon, target: &str, state: InstanceStatus) -> Instance {
    wait_until(BOOT, &format!("{target} to be {state}"), || {
        match d.instance(target) {
            Ok(i) if i.state == state => Ok(i),
            Ok(i) => Err(format!(
                "{} (reason {:?})\n--- guest console ---\n{}\n--- aegisd.log ---\n{}",
                i.state,
                i.reason,
                console(d, &i.id),
                d.log_tail()
            )),
            Err(e) => Err(e),
        }
    })
}

/// The guest's own lines (and any panic) from an instance's console, for failure messages.
fn console(d: &Daemon, id: &str) -> String {
    let path = d.home().join("instances").join(id).join("run/console.log");
    let text = std::fs::read(&path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("aegis") || l.contains("panic") || l.contains("error"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until the instance's primary process printed `line`.
fn wait_server_line(d: &Daemon, target: &str, line: &str) {
    wait_until(BOOT, &format!("{target} to print {line:?}"), || {
        let seen = lines_of(&logs(d, target), "server");
        if seen.iter().any(|l| l == line) {
            Ok(())
        } else {
            Err(seen)
        }
    });
}

/// `aegis exec TARGET -- sh -c SCRIPT`, expecting success; its stdout.
fn exec(d: &Daemon, target: &str, script: &str) -> String {
    let out = d.aegis(["exec", target, "--", "sh", "-c", script]);
    out.expect_success();
    out.stdout
}

/// Prints the three test variables, or `unset`.
const SHOW: &str = r#"echo "A=${ALPHA:-unset} B=${BETA:-unset} G=${GAMMA:-unset}""#;

/// `aegis secret set KEY` with the value on stdin, as a user keeping it out of shell history
/// would; the CLI's output.
fn set_from_stdin(d: &Daemon, key: &str, stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_aegis"))
        .args(["secret", "set", key])
        .env("AEGIS_HOME", d.home())
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start aegis");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin.as_bytes())
        .expect("cannot write the value to aegis");
    let deadline = Instant::now() + CLI_TIMEOUT;
    while child.try_wait().expect("cannot wait for aegis").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("`aegis secret set {key}` did not finish within {CLI_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("cannot read aegis output");
    Output {
        command: format!("aegis secret set {key} < stdin"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code(),
        signal: None,
    }
}

/// Every regular file under `dir`, without following symbolic links (the linked kernel and
/// image store hold nothing of ours).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                todo.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

/// Searches every file under `dir` for `value`; returns the files searched.
fn assert_in_no_file(dir: &Path, value: &str) -> Vec<PathBuf> {
    let files = files_under(dir);
    for file in &files {
        let bytes = std::fs::read(file).unwrap_or_default();
        assert!(
            !contains(&bytes, value),
            "the value is in {}",
            file.display()
        );
    }
    files
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The lowercase hex of `s`'s bytes, as `od -An -tx1 | tr -d ' \n'` prints it in the guest.
fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Pids of processes whose command line mentions `needle` (e.g. an instance id in QEMU's paths).
fn pids_mentioning(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| contains(&c, needle))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn store_cli_and_api_never_show_a_value() {
    let d = daemon();
    let key = d.home().join("master.key");
    assert!(!key.exists(), "the master key is created on first use only");

    // set: from the command line, from stdin (one trailing newline dropped), then rotated
    let out = d.aegis(["secret", "set", "API_KEY", "sk-live-0000-value"]);
    out.expect_success();
    assert_eq!(out.stdout, "secret API_KEY created\n", "{out}");
    let out = set_from_stdin(&d, "DB_PASSWORD", "pw-from-stdin-1111\n");
    out.expect_success();
    assert_eq!(out.stdout, "secret DB_PASSWORD created\n", "{out}");
    let before = secrets(&d);
    let out = set_from_stdin(&d, "DB_PASSWORD", "pw-rotated-2222");
    out.expect_success();
    assert!(
        out.stdout.starts_with("secret DB_PASSWORD updated;"),
        "{out}"
    );

    // the key file: 32 bytes, mode 0600
    let meta = std::fs::metadata(&key).unwrap();
    assert_eq!(meta.len(), 32);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    // list: names and dates only, by name; rotation keeps created_at and moves updated_at
    let after = secrets(&d);
    let names: Vec<&str> = after.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["API_KEY", "DB_PASSWORD"]);
    assert_eq!(after[1].created_at, before[1].created_at);
    assert!(after[1].updated_at > before[1].updated_at, "{after:?}");
    let table = d.aegis(["secret", "list"]);
    table.expect_success();
    assert!(table.stdout.starts_with("NAME "), "{table}");
    assert!(table.stdout.contains("API_KEY") && table.stdout.contains("DB_PASSWORD"));
    let values = [
        "sk-live-0000-value",
        "pw-from-stdin-1111",
        "pw-rotated-2222",
    ];
    let list_api = d.api("GET", "/v1/secrets", None);
    assert_eq!(list_api.status, 200);
    for shown in [
        &table.stdout,
        &list_api.body,
        &json(&d.aegis(["secret", "list", "--json"])).to_string(),
    ] {
        for v in values {
            assert!(!shown.contains(v), "a value is shown: {shown}");
        }
    }

    // the API: PUT answers with the name and dates only; 201 new, 200 replaced
    let put = d.api(
        "PUT",
        "/v1/secrets/VIA_API",
        Some(r#"{"value":"api-value-3333"}"#),
    );
    assert_eq!(put.status, 201, "{put:?}");
    assert!(!put.body.contains("api-value-3333"), "{put:?}");
    assert_eq!(put.json()["name"], "VIA_API");
    let put = d.api(
        "PUT",
        "/v1/secrets/VIA_API",
        Some(r#"{"value":"api-value-4444"}"#),
    );
    assert_eq!(put.status, 200, "{put:?}");
    assert!(!put.body.contains("api-value-4444"), "{put:?}");

    // bad input: clear errors that name the problem and never echo a value
    let bad: &[(&str, &str, Option<&str>, u16, &str)] = &[
        (
            "PUT",
            "/v1/secrets/1BAD",
            Some(r#"{"value":"v"}"#),
            400,
            "invalid secret name \"1BAD\"",
        ),
        (
            "PUT",
            "/v1/secrets/A-B",
            Some(r#"{"value":"v"}"#),
            400,
            "invalid secret name \"A-B\"",
        ),
        (
            "PUT",
            "/v1/secrets/X",
            Some(r#"{"valeu":"echo-me-5555"}"#),
            400,
            "unknown field `valeu`",
        ),
        (
            "PUT",
            "/v1/secrets/X",
            Some(r#"{"value":["echo-me-5555"]}"#),
            400,
            "must be a string",
        ),
        (
            "PUT",
            "/v1/secrets/X",
            Some(r#""echo-me-5555""#),
            400,
            "expected an object",
        ),
        (
            "PUT",
            "/v1/secrets/X",
            Some(r#"{"value":"echo-me-5555"#),
            400,
            "not valid JSON",
        ),
        (
            "PUT",
            "/v1/secrets/X",
            Some("{\"value\":\"a\\u0000b\"}"),
            400,
            "NUL byte",
        ),
        (
            "DELETE",
            "/v1/secrets/NOPE",
            None,
            404,
            "secret NOPE does not exist",
        ),
        (
            "PUT",
            "/v1/instances/nosuch/secrets",
            Some(r#"{"secrets":["API_KEY"]}"#),
            404,
            "nosuch",
        ),
    ];
    for (method, path, body, status, message) in bad {
        let r = d.api(method, path, *body);
        assert_eq!(r.status, *status, "{method} {path}: {r:?}");
        let error = r.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(error.contains(message), "{method} {path}: {error:?}");
        assert!(!r.body.contains("echo-me-5555"), "{method} {path}: {r:?}");
    }
    let big = format!(r#"{{"value":"{}"}}"#, "x".repeat(64 * 1024 + 1));
    let r = d.api("PUT", "/v1/secrets/BIG", Some(&big));
    assert_eq!(r.status, 400, "{}", r.json()["error"]);

    // CLI usage errors exit 2; a missing value on stdin is refused
    let out = d.aegis(["secret", "set", "1BAD", "v"]);
    out.expect_code(2);
    assert!(out.stderr.contains("invalid secret name \"1BAD\""), "{out}");
    let out = set_from_stdin(&d, "EMPTY", "");
    out.expect_code(AEGIS_FAILURE);
    assert!(out.stderr.contains("no value for EMPTY on stdin"), "{out}");
    let out = d.aegis(["secret", "delete", "NOPE"]);
    out.expect_code(AEGIS_FAILURE);
    assert!(out.stderr.contains("secret NOPE does not exist"), "{out}");

    // delete
    let out = d.aegis(["secret", "delete", "VIA_API"]);
    out.expect_success();
    assert_eq!(out.stdout, "secret VIA_API deleted\n");
    assert_eq!(secrets(&d).len(), 2);

    // a key file others may read is refused, naming the file and the fix
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = d.aegis(["secret", "set", "OTHER", "v"]);
    out.expect_code(AEGIS_FAILURE);
    let shown = key.display().to_string();
    assert!(
        out.stderr.contains(&format!(
            "master key {shown} is accessible by group or others (mode 0644)"
        )),
        "{out}"
    );
    assert!(
        out.stderr
            .contains(&format!("hint: run `chmod 600 {shown}`")),
        "{out}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    // so is a key file of the wrong length, which is never overwritten
    let original = std::fs::read(&key).unwrap();
    std::fs::write(&key, [7u8; 16]).unwrap();
    let out = d.aegis(["secret", "set", "OTHER", "v"]);
    out.expect_code(AEGIS_FAILURE);
    assert!(
        out.stderr
            .contains(&format!("master key {shown} has 16 bytes, expected 32")),
        "{out}"
    );
    assert!(out.stderr.contains("hint: restore the original"), "{out}");
    assert_eq!(std::fs::read(&key).unwrap(), [7u8; 16]);
    std::fs::write(&key, &original).unwrap();
    d.aegis(["secret", "set", "OTHER", "v"]).expect_success();

    // nothing in clear at rest, in the registry or anywhere else in the home
    for file in files_under(d.home()) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        for v in values.iter().chain(&["api-value-3333", "api-value-4444"]) {
            assert!(!contains(&bytes, v), "{v:?} in clear in {}", file.display());
        }
    }
}

#[test]
fn injection_on_request_env_override_rotation_and_stopped_instance() {
    let d = daemon();
    for (k, v) in [
        ("ALPHA", "alpha-1"),
        ("BETA", "beta-1"),
        ("GAMMA", "gamma-1"),
    ] {
        d.aegis(["secret", "set", k, v]).expect_success();
    }

    // nothing by default
    let out = d.aegis(["run", "--", "sh", "-c", SHOW]);
    out.expect_success();
    assert_eq!(out.stdout, "A=unset B=unset G=unset\n", "{out}");

    // '*' injects every secret; an explicit --env wins over a secret of the same name
    let out = d.aegis([
        "run",
        "--secret",
        "*",
        "--env",
        "BETA=explicit",
        "--",
        "sh",
        "-c",
        SHOW,
    ]);
    out.expect_success();
    assert_eq!(out.stdout, "A=alpha-1 B=explicit G=gamma-1\n", "{out}");

    // an allowlist, into the primary process and into execs; --env still wins
    let primary = format!(
        "{}; exec sleep 1000000",
        SHOW.replace("echo \"", "echo \"boot ")
    );
    let out = d.aegis([
        "instance",
        "start",
        "--name",
        "agent",
        "--idle-pause",
        "never",
        "--secret",
        "ALPHA",
        "--secret",
        "BETA",
        "--env",
        "BETA=explicit",
        "--",
        "sh",
        "-c",
        &primary,
    ]);
    out.expect_success();
    wait_state(&d, "agent", InstanceStatus::Running);
    wait_server_line(&d, "agent", "boot A=alpha-1 B=explicit G=unset");
    assert_eq!(exec(&d, "agent", SHOW), "A=alpha-1 B=explicit G=unset\n");
    let out = d.aegis([
        "exec",
        "--env",
        "ALPHA=per-exec",
        "agent",
        "--",
        "sh",
        "-c",
        SHOW,
    ]);
    out.expect_success();
    assert_eq!(out.stdout, "A=per-exec B=explicit G=unset\n", "{out}");
    let info = d.instance("agent").unwrap();
    assert_eq!(info.secret_keys, ["ALPHA", "BETA"]);
    let human = d.aegis(["instance", "info", "agent"]);
    assert!(human.stdout.contains("secrets:     ALPHA, BETA"), "{human}");

    // rotation: the running VM keeps what it booted with; a restart resolves the new value
    let out = d.aegis(["secret", "set", "ALPHA", "alpha-2"]);
    out.expect_success();
    assert_eq!(exec(&d, "agent", SHOW), "A=alpha-1 B=explicit G=unset\n");
    d.aegis(["instance", "restart", "agent"]).expect_success();
    wait_state(&d, "agent", InstanceStatus::Running);
    wait_server_line(&d, "agent", "boot A=alpha-2 B=explicit G=unset");
    assert_eq!(exec(&d, "agent", SHOW), "A=alpha-2 B=explicit G=unset\n");

    // requests naming a missing secret fail clearly and change nothing
    let count = instances(&d).len();
    for argv in [
        &["run", "--secret", "NOPE", "--", "true"][..],
        &[
            "instance", "start", "--name", "x", "--secret", "ALPHA", "--secret", "NOPE", "--",
            "true",
        ],
        &["instance", "secrets", "agent", "NOPE"],
        &["instance", "start", "agent", "--secret", "NOPE"],
    ] {
        let out = d.aegis(argv);
        out.expect_code(AEGIS_FAILURE);
        assert!(out.stderr.contains("secret NOPE does not exist"), "{out}");
        assert!(out.stderr.contains("hint: "), "{out}");
    }
    assert_eq!(instances(&d).len(), count);
    assert_eq!(d.instance("agent").unwrap().secret_keys, ["ALPHA", "BETA"]);

    // a key added to a stopped instance is injected at its next start
    d.aegis(["instance", "stop", "agent"]).expect_success();
    wait_state(&d, "agent", InstanceStatus::Stopped);
    let out = d.aegis(["instance", "secrets", "agent", "ALPHA", "BETA", "GAMMA"]);
    out.expect_success();
    assert!(out.stdout.contains("secrets ALPHA, BETA, GAMMA"), "{out}");
    assert!(
        !out.stdout.contains("restart"),
        "stopped: no restart needed: {out}"
    );
    assert_eq!(
        d.instance("agent").unwrap().secret_keys,
        ["ALPHA", "BETA", "GAMMA"]
    );
    d.aegis(["instance", "start", "agent"]).expect_success();
    wait_state(&d, "agent", InstanceStatus::Running);
    wait_server_line(&d, "agent", "boot A=alpha-2 B=explicit G=gamma-1");
    assert_eq!(exec(&d, "agent", SHOW), "A=alpha-2 B=explicit G=gamma-1\n");

    // on a running instance the change is stored for the next boot, and says so
    let out = d.aegis(["instance", "secrets", "agent", "*"]);
    out.expect_success();
    assert!(out.stdout.contains("aegis instance restart agent"), "{out}");
    assert_eq!(d.instance("agent").unwrap().secret_keys, ["*"]);

    // a secret deleted since: the start fails naming it, before any VM exists
    d.aegis(["instance", "stop", "agent"]).expect_success();
    d.aegis(["instance", "secrets", "agent", "ALPHA", "GAMMA"])
        .expect_success();
    d.aegis(["secret", "delete", "GAMMA"]).expect_success();
    let out = d.aegis(["instance", "start", "agent"]);
    out.expect_code(AEGIS_FAILURE);
    assert!(
        out.stderr.contains("cannot inject the secrets of instance")
            && out.stderr.contains("secret GAMMA does not exist"),
        "{out}"
    );
    assert!(
        out.stderr
            .contains("hint: set it with `aegis secret set GAMMA`"),
        "{out}"
    );
    let stopped = d.instance("agent").unwrap();
    assert_eq!(stopped.state, InstanceStatus::Stopped);
    assert_eq!(stopped.vmm_pid, None);
    assert!(
        stopped
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("secret GAMMA does not exist")),
        "{stopped:?}"
    );
    // an exec cannot wake it either, for the same reason
    let out = d.aegis(["exec", "agent", "--", "true"]);
    out.expect_code(AEGIS_FAILURE);
    assert!(out.stderr.contains("secret GAMMA does not exist"), "{out}");
    assert!(pids_mentioning(&stopped.id).is_empty(), "no VMM may run");
    let system = lines_of(&logs(&d, "agent"), "system");
    assert!(
        system
            .last()
            .is_some_and(|l| l.starts_with("not started: ") && l.contains("GAMMA")),
        "{system:#?}"
    );
}

/// Prints `$LEAK_CANARY` in hex: proves the value is there without printing it.
const CANARY_AS_HEX: &str = r#"printf %s "$LEAK_CANARY" | od -An -tx1 | tr -d ' \n'"#;

#[test]
fn values_never_leave_the_control_channel() {
    let d = daemon();
    // Unique, and changed by the guest's `od` so printing a proof of it never prints it.
    let canary = format!(
        "canary-{}-{}-qZx",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    set_from_stdin(&d, "LEAK_CANARY", &canary).expect_success();
    let script =
        r#"printf %s "$LEAK_CANARY" | od -An -tx1 | tr -d ' \n'; echo; exec sleep 1000000"#;
    d.aegis([
        "instance",
        "start",
        "--name",
        "vault",
        "--idle-pause",
        "never",
        "--secret",
        "LEAK_CANARY",
        "--",
        "sh",
        "-c",
        script,
    ])
    .expect_success();
    let running = wait_state(&d, "vault", InstanceStatus::Running);
    // Injected into the primary process and into execs (so the search below is not vacuous).
    wait_server_line(&d, "vault", &hex(&canary));
    assert_eq!(exec(&d, "vault", CANARY_AS_HEX), hex(&canary));
    assert_eq!(
        exec(&d, "vault", r#"echo ${#LEAK_CANARY}"#),
        format!("{}\n", canary.len())
    );

    // While the VM runs: the VMM's command line (with the kernel command line) and environment.
    let vmm = running.vmm_pid.expect("a running instance has a VMM pid");
    for what in ["cmdline", "environ"] {
        let path = format!("/proc/{vmm}/{what}");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
        assert!(!bytes.is_empty(), "{path} is empty");
        assert!(!contains(&bytes, &canary), "the value is in {path}");
    }
    if let Some(daemon) = d.pid() {
        for what in ["cmdline", "environ"] {
            let bytes = std::fs::read(format!("/proc/{daemon}/{what}")).unwrap_or_default();
            assert!(
                !contains(&bytes, &canary),
                "the value is in aegisd's {what}"
            );
        }
    }
    // API answers.
    for path in [
        "/v1/secrets",
        "/v1/instances",
        "/v1/instances/vault",
        "/v1/instances/vault/logs",
    ] {
        let r = d.api("GET", path, None);
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert!(!r.body.contains(&canary), "the value is in GET {path}");
    }
    // Every file of the home: the daemon's log (at trace level), the instance's log file, its
    // console and QEMU log, the SQLite database with its WAL, and the rest.
    let searched = assert_in_no_file(d.home(), &canary);
    let instance_dir = d.home().join("instances").join(&running.id);
    for must in [
        d.home().join("aegisd.log"),
        d.home().join("aegis.db"),
        instance_dir.join("logs.ndjson"),
        instance_dir.join("run/console.log"),
    ] {
        assert!(
            searched.contains(&must),
            "{} was not searched: {searched:#?}",
            must.display()
        );
    }
    let daemon_log = std::fs::read_to_string(d.home().join("aegisd.log")).unwrap();
    assert!(
        daemon_log.contains("TRACE") || daemon_log.contains("DEBUG"),
        "the daemon should log verbosely here"
    );
    assert!(daemon_log.contains("LEAK_CANARY"), "names may be logged");
    // The instance's logs as the CLI shows them.
    for args in [&["logs", "vault"][..], &["logs", "vault", "--json"]] {
        let out = d.aegis(args);
        out.expect_success();
        assert!(!out.stdout.contains(&canary) && !out.stderr.contains(&canary));
    }
    let info = d.aegis(["instance", "info", "vault", "--json"]);
    assert!(!info.stdout.contains(&canary));

    // After a stop, which saves the guest's memory (holding the value) sealed, the files are
    // searched once more, the memory file included.
    d.aegis(["instance", "stop", "vault"]).expect_success();
    let stopped = d.instance("vault").unwrap();
    assert!(stopped.saved_snapshot.is_some(), "{stopped:?}");
    let memory = instance_dir.join("snapshot/memory.sealed");
    let searched = assert_in_no_file(d.home(), &canary);
    assert!(searched.contains(&memory), "{searched:#?}");
    // The wake restores that memory, the value with it.
    assert_eq!(exec(&d, "vault", CANARY_AS_HEX), hex(&canary));
    let restored = logs(&d, "vault");
    assert!(
        lines_of(&restored, "system")
            .iter()
            .any(|l| l.contains("restored from the snapshot")),
        "{restored:?}"
    );
}

#[test]
fn tampered_ciphertext_fails_clearly_and_injects_nothing() {
    let d = daemon();
    d.aegis(["secret", "set", "GOOD", "good-value"])
        .expect_success();
    d.aegis(["secret", "set", "TAMPER", "tamper-value"])
        .expect_success();
    let script = r#"echo "boot G=${GOOD:-unset} T=${TAMPER:-unset}""#;
    d.aegis([
        "instance", "start", "--name", "t", "--secret", "GOOD", "--secret", "TAMPER", "--", "sh",
        "-c", script,
    ])
    .expect_success();
    wait_server_line(&d, "t", "boot G=good-value T=tamper-value");
    let id = wait_state(&d, "t", InstanceStatus::Stopped).id;
    let boots_before = lines_of(&logs(&d, "t"), "system")
        .iter()
        .filter(|l| l.starts_with("booting"))
        .count();

    // Flip one bit of the stored ciphertext, as an attacker with the database file would.
    let db = rusqlite::Connection::open(d.home().join("aegis.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut ciphertext: Vec<u8> = db
        .query_row(
            "SELECT ciphertext FROM secrets WHERE name = 'TAMPER'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    ciphertext[0] ^= 0x01;
    db.execute(
        "UPDATE secrets SET ciphertext = ?1 WHERE name = 'TAMPER'",
        [&ciphertext],
    )
    .unwrap();

    let decrypt = "secret TAMPER cannot be decrypted: its stored ciphertext was altered or was \
                   sealed with another master key";
    let check_refused = |out: &Output| {
        out.expect_code(AEGIS_FAILURE);
        assert!(out.stderr.contains(decrypt), "{out}");
        assert!(
            out.stderr
                .contains("hint: set it again with `aegis secret set TAMPER`"),
            "{out}"
        );
        assert!(!out.stderr.contains("tamper-value") && !out.stderr.contains("good-value"));
    };
    // The start fails before any VM exists: nothing is injected, not even the good secret.
    check_refused(&d.aegis(["instance", "start", "t"]));
    let stopped = d.instance("t").unwrap();
    assert_eq!(
        (stopped.state, stopped.vmm_pid),
        (InstanceStatus::Stopped, None)
    );
    assert!(
        stopped
            .reason
            .as_deref()
            .is_some_and(|r| r.contains(decrypt)),
        "{stopped:?}"
    );
    assert!(pids_mentioning(&id).is_empty(), "no VMM may run for {id}");
    let entries = logs(&d, "t");
    let boots = lines_of(&entries, "system")
        .iter()
        .filter(|l| l.starts_with("booting"))
        .count();
    assert_eq!(boots, boots_before, "no boot may begin: {entries:#?}");
    assert_eq!(
        lines_of(&entries, "server"),
        ["boot G=good-value T=tamper-value"],
        "the primary process must not run again"
    );
    // Neither can a new instance ask for it.
    let count = instances(&d).len();
    check_refused(&d.aegis([
        "run", "--secret", "GOOD", "--secret", "TAMPER", "--", "sh", "-c", "echo ran",
    ]));
    check_refused(&d.aegis(["run", "--secret", "*", "--", "sh", "-c", "echo ran"]));
    assert_eq!(instances(&d).len(), count, "nothing may be created");

    // A ciphertext moved from another name does not open either: the name is bound to it.
    db.execute(
        "UPDATE secrets SET (nonce, ciphertext) =
           (SELECT nonce, ciphertext FROM secrets WHERE name = 'GOOD') WHERE name = 'TAMPER'",
        [],
    )
    .unwrap();
    check_refused(&d.aegis(["instance", "start", "t"]));
    drop(db);

    // Setting it again, as the hint says, repairs it.
    d.aegis(["secret", "set", "TAMPER", "tamper-value-2"])
        .expect_success();
    d.aegis(["instance", "start", "t"]).expect_success();
    wait_server_line(&d, "t", "boot G=good-value T=tamper-value-2");
}
