//! End-to-end tests of kits (issue 8) against a real `aegisd` booting real VMs: installing,
//! listing, inspecting and removing manifests through the CLI and the API; an invalid manifest
//! refused with the offending field's path; `--kit` presets applied and overridden by flags;
//! a missing required secret and resources above a kit's maximum refused; and the instance
//! daemon of the repository's example kit started, surviving a pause and a stop, restarted
//! after being killed, told of a config change, restored after a daemon restart, and stopped
//! on disable and delete; its `AEGIS_SOCKET` reaches only its own instance, and the main socket
//! is nowhere in its environment. `aegis run -- echo hello` works with no kit installed.
//!
//! Each test owns one daemon in a temporary `AEGIS_HOME` and boots as few VMs as it can.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use aegis_proto::api::{Instance, InstanceStatus};
use aegis_proto::kit::{DaemonState, DaemonStatus, KitInfo};
use aegis_testkit::{free_port, wait_until, ApiResponse, Daemon, Output};

/// A boot under TCG on a loaded 2-core machine, with room to spare.
const BOOT: Duration = Duration::from_secs(150);
/// How long an instance daemon may take to be started (again); the first restart comes after
/// one second.
const DAEMON_WAIT: Duration = Duration::from_secs(30);
/// Exit code of Aegis's own failures (see `aegis --help`).
const AEGIS_FAILURE: i32 = 125;

fn daemon() -> Daemon {
    Daemon::start().use_cli(env!("CARGO_BIN_EXE_aegis"))
}

fn json(out: &Output) -> Value {
    out.expect_success();
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn repo_kit(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../kits")
        .join(name)
}

fn kits(d: &Daemon) -> Vec<KitInfo> {
    serde_json::from_value(json(&d.aegis(["kit", "list", "--json"])))
        .expect("`aegis kit list --json` prints kits")
}

fn wait_state(d: &Daemon, target: &str, state: InstanceStatus) -> Instance {
    wait_until(BOOT, &format!("{target} to be {state}"), || {
        match d.instance(target) {
            Ok(i) if i.state == state => Ok(i),
            Ok(i) => Err(format!(
                "{} (reason {:?})\n--- aegisd.log ---\n{}",
                i.state,
                i.reason,
                d.log_tail()
            )),
            Err(e) => Err(e),
        }
    })
}

fn logs(d: &Daemon, target: &str) -> Vec<Value> {
    let out = d.aegis(["logs", target, "--json"]);
    out.expect_success();
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

/// The lines of `source` (and for `daemon` lines, of the daemon `announce`).
fn lines_of(entries: &[Value], source: &str) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e["source"] == source)
        .filter(|e| source != "daemon" || e["daemon"] == "announce")
        .filter_map(|e| e["line"].as_str().map(str::to_owned))
        .collect()
}

/// Waits until the instance's log has a `source` line containing `text`.
fn wait_line(d: &Daemon, target: &str, source: &str, text: &str) {
    wait_until(DAEMON_WAIT, &format!("{target} to log {text:?}"), || {
        let seen = lines_of(&logs(d, target), source);
        if seen.iter().any(|l| l.contains(text)) {
            Ok(())
        } else {
            Err(seen)
        }
    });
}

/// The status of the instance's only daemon.
fn announce(d: &Daemon, target: &str) -> DaemonStatus {
    let i = d.instance(target).expect("the instance exists");
    assert_eq!(i.daemons.len(), 1, "{i:?}");
    i.daemons[0].clone()
}

/// Waits until the daemon runs with a pid other than `not`.
fn wait_daemon_running(d: &Daemon, target: &str, not: Option<u32>) -> DaemonStatus {
    wait_until(DAEMON_WAIT, "the instance daemon to run", || {
        let s = announce(d, target);
        match s.pid {
            Some(pid) if s.state == DaemonState::Running && Some(pid) != not && alive(pid) => Ok(s),
            _ => Err(s),
        }
    })
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

fn wait_gone(pid: u32) {
    wait_until(DAEMON_WAIT, &format!("pid {pid} to end"), || {
        if alive(pid) {
            Err(pid)
        } else {
            Ok(())
        }
    });
}

/// The environment of process `pid`, as `KEY=VALUE` entries.
fn environ(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_else(|e| panic!("cannot read the environment of pid {pid}: {e}"));
    raw.split(|&b| b == 0)
        .filter(|entry| !entry.is_empty())
        .map(|entry| String::from_utf8_lossy(entry).into_owned())
        .collect()
}

/// The `AEGIS_SOCKET` of the instance daemon `pid`, after checking that the main socket of `d`
/// is nowhere in its environment.
fn daemon_socket(d: &Daemon, pid: u32) -> PathBuf {
    let env = environ(pid);
    let main = d.socket().display().to_string();
    assert!(
        env.iter().all(|entry| !entry.contains(&main)),
        "the main socket {main} is in the daemon's environment: {env:?}"
    );
    env.iter()
        .find_map(|entry| entry.strip_prefix("AEGIS_SOCKET="))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no AEGIS_SOCKET in the daemon's environment: {env:?}"))
}

/// What the scoped socket of the daemons of instance `id` (handle `handle`) answers: its own
/// instance, by id or handle, and the daemon's status; 403 naming the scope for creating an
/// instance with every secret, the secrets, another instance, the list of instances, and the
/// own instance's disable and delete, and shutdown.
fn assert_scoped(d: &Daemon, socket: &Path, id: &str, handle: &str) {
    let call = |method: &str, path: &str, body: Option<&str>| {
        ApiResponse::fetch(socket, method, path, body).unwrap_or_else(|e| {
            panic!(
                "{method} {path} on {}: {e}\n--- aegisd.log ---\n{}",
                socket.display(),
                d.log_tail()
            )
        })
    };
    for path in [
        format!("/v1/instances/{id}"),
        format!("/v1/instances/{handle}"),
    ] {
        let r = call("GET", &path, None);
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        assert_eq!(r.json()["id"], id, "{}", r.body);
    }
    let r = call("GET", "/v1/status", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let create = r#"{"command": ["true"], "secrets": ["*"]}"#;
    let exec = r#"{"command": ["true"]}"#;
    let own = format!("/v1/instances/{id}");
    let own_disable = format!("/v1/instances/{id}/disable");
    let refused: [(&str, &str, Option<&str>); 9] = [
        ("POST", "/v1/instances", Some(create)),
        ("GET", "/v1/secrets", None),
        ("GET", "/v1/instances", None),
        ("GET", "/v1/instances/other-instance", None),
        ("POST", "/v1/instances/other-instance/exec", Some(exec)),
        ("GET", "/v1/instances/other-instance/../ex1", None),
        ("POST", &own_disable, None),
        ("DELETE", &own, None),
        ("POST", "/v1/shutdown", None),
    ];
    for (method, path, body) in refused {
        let r = call(method, path, body);
        assert_eq!(r.status, 403, "{method} {path}: {}", r.body);
        assert_eq!(
            r.json()["error"],
            format!("this socket is scoped to instance {id}: {method} {path} is not allowed"),
            "{method} {path}"
        );
    }
    // The daemon is still there to be asked (no shutdown got through).
    assert_eq!(d.api("GET", "/v1/status", None).status, 200);
}

fn wait_removed(socket: &Path) {
    wait_until(
        DAEMON_WAIT,
        &format!("{} to be removed", socket.display()),
        || {
            if socket.exists() {
                Err(socket.display().to_string())
            } else {
                Ok(())
            }
        },
    );
}

/// The test kit: required and optional secrets, defaults, maxima, a port and egress hints.
const TEST_KIT: &str = r#"
name: tk
version: "0.3.0"
description: "kit of the end-to-end tests"
defaults:
  command: [sh, -c, "echo key=${TK_KEY:-unset} opt=${TK_OPT:-unset} mode=$TK_MODE; sleep 100000"]
  env: {TK_MODE: kit}
  idle_pause: 10m
  idle_stop: never
secrets:
  required:
    - name: TK_KEY
      description: "the key of the test kit"
  optional:
    - name: TK_OPT
      description: "an optional value"
exposes:
  - port: 8080
    protocol: http
resources:
  memory_mb: 256
  max_memory_mb: 512
  max_vcpus: 2
egress:
  - api.example.com
  - ejabberd:5222
"#;

#[test]
fn kits_are_managed_and_applied_as_presets() {
    let d = daemon();
    let dir = tempfile::tempdir().unwrap();

    // Nothing installed: the list is empty and says how to add one.
    assert!(kits(&d).is_empty());
    let out = d.aegis(["kit", "list"]);
    out.expect_success();
    assert!(out.stdout.contains("no kits installed"), "{out}");

    // An invalid manifest is refused with the path of the offending field, and nothing is
    // installed.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        TEST_KIT.replace("max_memory_mb: 512", "max_memory_mb: lots"),
    )
    .unwrap();
    let out = d.aegis(["kit", "install", bad.to_str().unwrap()]);
    out.expect_code(AEGIS_FAILURE);
    assert!(
        out.stderr.contains(
            "invalid kit manifest: resources.max_memory_mb: invalid type: string \"lots\", \
             expected u32 (line 22 column 18)"
        ),
        "{out}"
    );
    std::fs::write(
        &bad,
        TEST_KIT.replace("max_memory_mb: 512", "max_memory_mb: 128"),
    )
    .unwrap();
    let out = d.aegis(["kit", "install", bad.to_str().unwrap()]);
    out.expect_code(AEGIS_FAILURE);
    assert!(
        out.stderr
            .contains("resources.max_memory_mb: 128 MiB is below the default memory of 256 MiB"),
        "{out}"
    );
    // The API answers 400 with the same message.
    let body = serde_json::json!({ "manifest": "name: x\nversion: \"1\"\nexposes: [{port: 0}]\n" });
    let r = d.api("POST", "/v1/kits", Some(&body.to_string()));
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        r.json()["error"],
        "invalid kit manifest: exposes[0].port: guest port must be between 1 and 65535"
    );
    assert!(kits(&d).is_empty());

    // Install the test kit (a file) and the example kit (a directory with kit.yaml).
    let good = dir.path().join("tk.yaml");
    std::fs::write(&good, TEST_KIT).unwrap();
    let out = d.aegis(["kit", "install", good.to_str().unwrap()]);
    out.expect_success();
    assert!(out.stdout.starts_with("kit tk 0.3.0 installed"), "{out}");
    d.aegis(["kit", "install", repo_kit("example").to_str().unwrap()])
        .expect_success();
    let out = d.aegis(["kit", "install", good.to_str().unwrap()]);
    out.expect_code(AEGIS_FAILURE);
    assert!(
        out.stderr
            .contains("kit \"tk\" is already installed (version 0.3.0)"),
        "{out}"
    );
    assert!(out.stderr.contains("--replace"), "{out}");
    d.aegis(["kit", "install", "--replace", good.to_str().unwrap()])
        .expect_success();
    let names: Vec<String> = kits(&d).into_iter().map(|k| k.manifest.name).collect();
    assert_eq!(names, ["example", "tk"]);
    let out = d.aegis(["kit", "list"]);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("tk ") && l.contains("0.3.0") && l.contains("end-to-end")),
        "{out}"
    );
    let out = d.aegis(["kit", "info", "tk"]);
    out.expect_success();
    for want in [
        "version:     0.3.0",
        "memory:      256 MiB (max 512 MiB)",
        "secrets:     TK_KEY (the key of the test kit)",
        "exposes:     8080/http",
        "egress:      api.example.com, ejabberd:5222",
    ] {
        assert!(out.stdout.contains(want), "{want}: {out}");
    }
    let info: KitInfo =
        serde_json::from_value(json(&d.aegis(["kit", "info", "example", "--json"]))).unwrap();
    let program = &info.manifest.instance_daemons[0].command[0];
    assert!(
        program.ends_with("kits/example/announce.sh") && Path::new(program).is_absolute(),
        "{program}"
    );
    let out = d.aegis(["kit", "info", "nope"]);
    out.expect_code(AEGIS_FAILURE);
    assert!(
        out.stderr.contains("kit \"nope\" is not installed"),
        "{out}"
    );

    // A missing required secret fails the start, listing it with its description; nothing is
    // created.
    let out = d.aegis(["run", "--kit", "tk"]);
    out.expect_code(AEGIS_FAILURE);
    assert!(
        out.stderr.contains(
            "kit \"tk\" requires secret that is not set: TK_KEY (the key of the test kit)"
        ),
        "{out}"
    );
    assert!(out.stderr.contains("aegis secret set TK_KEY"), "{out}");
    // Above the kit's maxima: refused.
    let out = d.aegis(["instance", "start", "--kit", "tk", "--memory", "1024"]);
    out.expect_code(AEGIS_FAILURE);
    assert!(
        out.stderr
            .contains("memory_mb 1024 is above the maximum of kit \"tk\" (512 MiB)"),
        "{out}"
    );
    let out = d.aegis(["instance", "start", "--kit", "tk", "--vcpus", "3"]);
    out.expect_code(AEGIS_FAILURE);
    assert!(
        out.stderr
            .contains("vcpus 3 is above the maximum of kit \"tk\" (2)"),
        "{out}"
    );
    let out = d.aegis(["instance", "start", "--kit", "nope", "--", "true"]);
    out.expect_code(AEGIS_FAILURE);
    assert!(
        out.stderr.contains("kit \"nope\" is not installed"),
        "{out}"
    );
    let listed = json(&d.aegis(["instance", "list", "--json"]));
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");

    // With the secret set, the preset applies: the kit's command, env, secrets, port, idle
    // timeouts and egress hints; the flags override memory and the kit's port's public port.
    d.aegis(["secret", "set", "TK_KEY", "k-123"])
        .expect_success();
    d.aegis(["secret", "set", "TK_OPT", "o-456"])
        .expect_success();
    let public = free_port();
    let out = d.aegis([
        "instance",
        "start",
        "--kit",
        "tk",
        "--name",
        "tk1",
        "--memory",
        "384",
        "--expose",
        &format!("{public}:8080/http"),
    ]);
    out.expect_success();
    let i = wait_state(&d, "tk1", InstanceStatus::Running);
    assert_eq!(i.kit.as_deref(), Some("tk"));
    assert_eq!(i.memory_mb, 384);
    assert_eq!(i.command[0], "sh");
    assert_eq!((i.idle_pause_secs, i.idle_stop_secs), (Some(600), None));
    assert_eq!(i.egress_hints, ["api.example.com", "ejabberd:5222"]);
    assert_eq!(
        i.endpoints
            .iter()
            .map(|e| (e.guest_port, e.public_port))
            .collect::<Vec<_>>(),
        [(8080, public)]
    );
    assert!(i.daemons.is_empty());
    wait_line(&d, "tk1", "server", "key=k-123 opt=o-456 mode=kit");
    let out = d.aegis(["instance", "info", "tk1"]);
    assert!(
        out.stdout
            .contains("egress hint: api.example.com, ejabberd:5222"),
        "{out}"
    );

    // Stopped, it starts again by name without --kit: its configuration is stored. Without the
    // required secret it does not start, and says which secret with its description.
    d.aegis(["instance", "stop", "tk1"]).expect_success();
    let stopped = wait_state(&d, "tk1", InstanceStatus::Stopped);
    // Its memory holds the kit's secrets: the snapshot is sealed, and kept.
    assert!(stopped.saved_snapshot.is_some(), "{stopped:?}");
    d.aegis(["secret", "delete", "TK_KEY"]).expect_success();
    let out = d.aegis(["instance", "start", "tk1"]);
    out.expect_code(AEGIS_FAILURE);
    assert!(
        out.stderr.contains(
            "kit \"tk\" requires secret that is not set: TK_KEY (the key of the test kit)"
        ),
        "{out}"
    );
    d.aegis(["secret", "set", "TK_KEY", "k-789"])
        .expect_success();
    d.aegis(["instance", "start", "--name", "tk1"])
        .expect_success();
    let i = wait_state(&d, "tk1", InstanceStatus::Running);
    assert_eq!((i.memory_mb, i.kit.as_deref()), (384, Some("tk")));

    // Removing the kit leaves its instance alone.
    let kit = d.aegis(["kit", "info", "tk", "--json"]);
    assert!(kit.stdout.contains(&i.id), "{kit}");
    d.aegis(["kit", "remove", "tk"]).expect_success();
    let out = d.aegis(["kit", "remove", "tk"]);
    out.expect_code(AEGIS_FAILURE);
    assert!(out.stderr.contains("kit \"tk\" is not installed"), "{out}");
    assert_eq!(d.instance("tk1").unwrap().kit.as_deref(), Some("tk"));
    d.aegis(["instance", "delete", "tk1"]).expect_success();
}

#[test]
fn instance_daemons_follow_their_instance() {
    let d = daemon();
    d.aegis(["kit", "install", repo_kit("example").to_str().unwrap()])
        .expect_success();
    let config_dir = d.home().join("kits/ex1");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(config_dir.join("greeting.txt"), "hello").unwrap();

    d.aegis(["instance", "start", "--kit", "example", "--name", "ex1"])
        .expect_success();
    // The daemon runs as soon as the instance exists, with its environment and config.
    let first = wait_daemon_running(&d, "ex1", None);
    assert_eq!((first.name.as_str(), first.restarts), ("announce", 0));
    // Its AEGIS_SOCKET is a private socket scoped to its instance, not the main socket.
    let id = d.instance("ex1").unwrap().id;
    let scoped = daemon_socket(&d, first.pid.unwrap());
    assert_eq!(scoped, d.home().join(format!("run/kit-api/{id}.sock")));
    let mode = std::fs::metadata(&scoped).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", scoped.display());
    assert_scoped(&d, &scoped, &id, "ex1");
    wait_line(&d, "ex1", "daemon", "announce: instance ex1 (inst-");
    wait_line(&d, "ex1", "daemon", "of kit example 1.0.0");
    wait_line(
        &d,
        "ex1",
        "daemon",
        "announce: guest port 80 is on public port",
    );
    wait_line(&d, "ex1", "daemon", "config greeting.txt: hello");
    let i = wait_state(&d, "ex1", InstanceStatus::Running);
    assert_eq!((i.memory_mb, i.command[0].as_str()), (256, "python3"));
    let out = d.aegis(["instance", "info", "ex1"]);
    assert!(
        out.stdout.contains(&format!(
            "daemons:     announce running (pid {})",
            first.pid.unwrap()
        )),
        "{out}"
    );
    let out = d.aegis(["logs", "ex1"]);
    assert!(
        out.stdout
            .contains("[daemon announce] announce: instance ex1"),
        "{out}"
    );

    // It survives a pause of the VM.
    d.aegis(["instance", "pause", "ex1"]).expect_success();
    wait_state(&d, "ex1", InstanceStatus::Paused);
    let s = announce(&d, "ex1");
    assert_eq!((s.state, s.pid), (DaemonState::Running, first.pid));

    // Killed, it is started again.
    let pid = first.pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let second = wait_daemon_running(&d, "ex1", Some(pid));
    assert_eq!(second.restarts, 1);
    assert_eq!(second.last_exit.as_deref(), Some("was killed by signal 9"));
    wait_line(
        &d,
        "ex1",
        "system",
        "instance daemon announce was killed by signal 9; restarting in 1000 ms",
    );

    // A change in its config directory reaches it (SIGHUP).
    std::fs::write(config_dir.join("greeting.txt"), "bonjour").unwrap();
    wait_line(&d, "ex1", "daemon", "config changed");
    wait_line(&d, "ex1", "daemon", "config greeting.txt: bonjour");

    // A daemon restart (kill -9 of aegisd) ends it; the next aegisd starts it again.
    let old = second.pid.unwrap();
    let mut d = d;
    d.restart();
    wait_gone(old);
    let third = wait_daemon_running(&d, "ex1", Some(old));
    assert_eq!(third.restarts, 0);
    assert_eq!(d.instance("ex1").unwrap().state, InstanceStatus::Paused);
    // The next aegisd gives it a scoped socket at the same place.
    assert_eq!(daemon_socket(&d, third.pid.unwrap()), scoped);
    let r = ApiResponse::fetch(&scoped, "GET", &format!("/v1/instances/{id}"), None).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);

    // It survives the VM being stopped (as an idle stop would).
    d.aegis(["instance", "stop", "ex1"]).expect_success();
    wait_state(&d, "ex1", InstanceStatus::Stopped);
    let s = announce(&d, "ex1");
    assert_eq!((s.state, s.pid), (DaemonState::Running, third.pid));

    // Disabled, it stops; started again, it runs again; deleted, it is gone.
    d.aegis(["instance", "disable", "ex1"]).expect_success();
    wait_gone(third.pid.unwrap());
    // Its scoped socket goes with it.
    wait_removed(&scoped);
    assert!(d.instance("ex1").unwrap().daemons.is_empty());
    wait_line(&d, "ex1", "daemon", "announce: stopping");
    d.aegis(["instance", "start", "ex1"]).expect_success();
    let fourth = wait_daemon_running(&d, "ex1", third.pid);
    assert_eq!(daemon_socket(&d, fourth.pid.unwrap()), scoped);
    d.aegis(["instance", "delete", "ex1"]).expect_success();
    wait_gone(fourth.pid.unwrap());
    wait_removed(&scoped);
    // Its config directory belongs to the user and stays.
    assert!(config_dir.join("greeting.txt").is_file());
}

#[test]
fn aegis_runs_without_any_kit() {
    let d = daemon();
    assert!(kits(&d).is_empty());
    let out = d.aegis(["run", "--", "echo", "hello"]);
    out.expect_success();
    assert_eq!(out.stdout, "hello\n");
}
