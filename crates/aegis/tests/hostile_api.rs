//! Hostile input to the REST API, through a real `aegisd` that cannot boot a VM: it has an image
//! store of its own (empty, or holding one tiny root filesystem) and `AEGIS_QEMU` names a program
//! that does not exist, so a create fails fast or stores an instance whose boot fails at once.
//! These tests boot no VM.
//!
//! - Names that read as paths (`../x`, `/etc`, `a/b`, `.`, `..`, NUL, control characters, 4 KiB,
//!   empty) are refused with a 400 that names the rule, for every kind of name — handles,
//!   workspace, kit and secret names, in bodies and in path segments — and nothing appears under
//!   the daemon's home.
//! - schemathesis fuzzes every operation of the daemon's own OpenAPI document (except
//!   `POST /v1/shutdown`) over a TCP bridge to the unix socket: no undocumented status, no 5xx
//!   but the documented boot failure (502), responses as documented, and the daemon still answers
//!   afterwards.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use aegis_testkit::{tool, Background, Daemon};

/// Exit code of the CLI for Aegis's own failures.
const AEGIS_FAILURE: i32 = 125;
/// Exit code of the CLI for a usage error (an argument the CLI itself refuses).
const USAGE: i32 = 2;
/// The whole schemathesis run, generation and shrinking included. It takes well under a minute
/// on a loaded 2-core machine; the bound only catches a wedged daemon.
const FUZZ_TIMEOUT: Duration = Duration::from_secs(300);
/// Test cases per operation and phase: enough to reach every handler with malformed and valid
/// input, small enough for the bound above.
const FUZZ_EXAMPLES: &str = "40";
/// Seed of the generated cases: a failure reproduces. `AEGIS_FUZZ_SEED` overrides it to explore.
const FUZZ_SEED: &str = "20261203";

/// A program that does not exist, as the VMM: no request can start a VM.
const NO_VMM: (&str, &str) = ("AEGIS_QEMU", "/nonexistent/qemu-system-x86_64");

/// Environment of a daemon that can boot nothing and reach no registry (a pull fails at once
/// against a closed local port instead of going out to the network).
fn inert_env() -> [(&'static str, &'static str); 6] {
    [
        NO_VMM,
        ("AEGIS_ROUTER_BIND", "127.0.0.1"),
        ("HTTPS_PROXY", "http://127.0.0.1:9"),
        ("HTTP_PROXY", "http://127.0.0.1:9"),
        ("https_proxy", "http://127.0.0.1:9"),
        ("NO_PROXY", ""),
    ]
}

fn daemon() -> Daemon {
    Daemon::start_with_own_images_and_env(&inert_env()).use_cli(env!("CARGO_BIN_EXE_aegis"))
}

/// Names no resource may have: paths, dot names, NUL and control characters, a 4 KiB name and
/// the empty name.
fn hostile_names() -> Vec<String> {
    let mut names: Vec<String> = [
        "../x",
        "../../../../etc/passwd",
        "/etc",
        "a/b",
        ".",
        "..",
        "a\0b",
        "\0",
        "a\nb",
        "a\u{1b}[2J",
        "a\u{7f}",
        "",
    ]
    .map(String::from)
    .to_vec();
    names.push("n".repeat(4096));
    names
}

/// Percent-encodes every byte but ASCII letters and digits (`.` too, so `..` reaches the
/// handler as a name rather than as a dot segment).
fn segment(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Every path under `root`, relative to it.
fn tree(root: &Path) -> BTreeSet<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            out.insert(path.strip_prefix(root).unwrap_or(&path).to_path_buf());
            // Links to the set-up home (`kernel`) are not followed.
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

/// Asserts a 400 whose error starts with `want` and quotes no raw control character.
fn assert_refused(d: &Daemon, method: &str, path: &str, body: Option<&str>, want: &str) {
    let r = d.api(method, path, body);
    let error = r.json()["error"].as_str().unwrap_or_default().to_owned();
    assert!(
        r.status == 400 && error.starts_with(want),
        "{method} {} {}: expected 400 `{want}…`, got {}: {}",
        &path[..path.len().min(120)],
        body.map_or("", |b| &b[..b.len().min(120)]),
        r.status,
        &r.body[..r.body.len().min(400)]
    );
    assert!(error.len() < 600, "error too long: {error}");
    assert!(!error.chars().any(char::is_control), "{error:?}");
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

#[test]
fn path_like_names_are_refused_before_the_file_system() {
    let d = daemon();
    let before = tree(d.home());
    for name in hostile_names() {
        let q = json_string(&name);
        let seg = segment(&name);
        // Secrets.
        if !name.is_empty() {
            let path = format!("/v1/secrets/{seg}");
            let body = r#"{"value":"v"}"#;
            assert_refused(&d, "PUT", &path, Some(body), "invalid secret name");
            assert_refused(&d, "DELETE", &path, None, "invalid secret name");
        }
        // Workspaces.
        let body = format!(r#"{{"name":{q}}}"#);
        assert_refused(
            &d,
            "POST",
            "/v1/workspaces",
            Some(&body),
            "invalid workspace name",
        );
        if !name.is_empty() {
            let path = format!("/v1/workspaces/{seg}");
            assert_refused(&d, "GET", &path, None, "invalid workspace name");
            assert_refused(&d, "DELETE", &path, None, "invalid workspace name");
        }
        // Kits.
        let manifest = json_string(&format!("name: {q}\nversion: \"1\"\n"));
        let body = format!(r#"{{"manifest":{manifest}}}"#);
        // JSON leaves DEL unescaped, and the YAML parser refuses it in the text itself.
        let want = if name.contains('\u{7f}') {
            "invalid kit manifest: manifest: control characters are not allowed"
        } else {
            "invalid kit manifest: name: invalid kit name"
        };
        assert_refused(&d, "POST", "/v1/kits", Some(&body), want);
        if !name.is_empty() {
            let path = format!("/v1/kits/{seg}");
            assert_refused(&d, "GET", &path, None, "invalid kit name");
            assert_refused(&d, "DELETE", &path, None, "invalid kit name");
        }
        // Instances: the handle, the names a create refers to, and the path segment.
        let body = format!(r#"{{"handle":{q},"command":["true"]}}"#);
        assert_refused(&d, "POST", "/v1/instances", Some(&body), "invalid handle");
        let body = format!(r#"{{"kit":{q},"command":["true"]}}"#);
        assert_refused(&d, "POST", "/v1/instances", Some(&body), "invalid kit name");
        let body = format!(r#"{{"secrets":[{q}],"command":["true"]}}"#);
        assert_refused(
            &d,
            "POST",
            "/v1/instances",
            Some(&body),
            "invalid secret name",
        );
        if !name.is_empty() && !name.starts_with('/') {
            // An absolute path is a host directory and empty is the default; everything else
            // with a '/' or a leading '.' is a relative path, the rest a name.
            let want = if name.contains('/') || name.starts_with('.') {
                "host directory"
            } else {
                "invalid workspace name"
            };
            let body = format!(r#"{{"workspace":{q},"command":["true"]}}"#);
            assert_refused(&d, "POST", "/v1/instances", Some(&body), want);
        }
        for (method, rest) in [
            ("GET", ""),
            ("DELETE", ""),
            ("POST", "/start"),
            ("POST", "/stop"),
            ("GET", "/logs"),
            ("POST", "/expose"),
        ] {
            if name.is_empty() && rest.is_empty() {
                continue; // `/v1/instances/` is no route
            }
            let path = format!("/v1/instances/{seg}{rest}");
            let body = (rest == "/expose").then_some(r#"{"port":80}"#);
            assert_refused(&d, method, &path, body, "invalid instance id or handle");
        }
        let path = format!("/v1/instances/{seg}/exec");
        let body = r#"{"command":["true"]}"#;
        assert_refused(
            &d,
            "POST",
            &path,
            Some(body),
            "invalid instance id or handle",
        );
    }
    // Dot segments sent as they are reach the handler as names too.
    assert_refused(&d, "GET", "/v1/kits/..", None, "invalid kit name \"..\"");
    assert_refused(
        &d,
        "GET",
        "/v1/workspaces/.",
        None,
        "invalid workspace name \".\"",
    );
    assert_refused(
        &d,
        "DELETE",
        "/v1/secrets/..",
        None,
        "invalid secret name \"..\"",
    );
    // An empty last segment is another route, which does not exist (an empty segment before
    // an action reaches the handler, which refuses the empty name above).
    for path in [
        "/v1/secrets/",
        "/v1/kits/",
        "/v1/workspaces/",
        "/v1/instances/",
    ] {
        let r = d.api("GET", path, None);
        assert_eq!(r.status, 404, "{path}: {}", r.body);
    }
    // What axum refused itself is a JSON error too.
    assert_refused(&d, "GET", "/v1/instances/%FF", None, "invalid path");
    assert_refused(
        &d,
        "GET",
        "/v1/instances?state=a&state=b",
        None,
        "invalid query string",
    );

    // Through the CLI: the daemon's message, or the CLI's own check for the names it validates.
    for (args, code, want) in [
        (
            vec!["kit", "info", "../x"],
            AEGIS_FAILURE,
            "invalid kit name \"../x\"",
        ),
        (
            vec!["kit", "remove", "/etc"],
            AEGIS_FAILURE,
            "invalid kit name \"/etc\"",
        ),
        (
            vec!["instance", "info", "a/b"],
            AEGIS_FAILURE,
            "invalid instance id or handle \"a/b\"",
        ),
        (
            vec!["instance", "stop", ".."],
            AEGIS_FAILURE,
            "invalid instance id or handle \"..\"",
        ),
        (
            vec!["logs", "../x"],
            AEGIS_FAILURE,
            "invalid instance id or handle \"../x\"",
        ),
        (
            vec!["secret", "delete", "../x"],
            USAGE,
            "invalid secret name",
        ),
        (
            vec!["workspace", "create", "../x"],
            USAGE,
            "invalid workspace name",
        ),
        (
            vec!["workspace", "rm", "a/b"],
            USAGE,
            "invalid workspace name",
        ),
    ] {
        let out = d.aegis(&args);
        out.expect_code(code);
        assert!(out.stderr.contains(want), "{want}: {out}");
    }

    let after = tree(d.home());
    let created: Vec<&PathBuf> = after.difference(&before).collect();
    assert!(
        created.is_empty(),
        "hostile names created files under {}: {created:?}",
        d.home().display()
    );
}

/// A TCP listener on loopback relaying each connection to the daemon's unix socket, because
/// schemathesis speaks HTTP over TCP only. Stopped on drop.
struct Bridge {
    port: u16,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Bridge {
    fn start(socket: PathBuf) -> Bridge {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("a bound address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let accept = std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(upstream) = UnixStream::connect(&socket) else {
                    continue;
                };
                relay(client, upstream);
            }
        });
        Bridge {
            port,
            stop,
            accept: Some(accept),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Copies both ways until each side has closed its half.
fn relay(client: TcpStream, upstream: UnixStream) {
    let (Ok(client_rx), Ok(upstream_rx)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    std::thread::spawn(move || copy(client_rx, upstream, |s| s.shutdown(Shutdown::Write)));
    std::thread::spawn(move || copy(upstream_rx, client, |s| s.shutdown(Shutdown::Write)));
}

fn copy<R: Read, W: Write>(mut from: R, mut to: W, close: impl Fn(&W) -> std::io::Result<()>) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = close(&to);
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// schemathesis's checks. 502 is what this daemon answers when an instance's boot fails (it has
/// no VMM), documented for the routes that boot; any other 5xx is a failure.
const SCHEMATHESIS_CONFIG: &str = r#"
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "502"]
"#;

#[test]
fn the_api_survives_schemathesis() {
    let schemathesis = tool("schemathesis");
    let d = daemon();
    // One tiny root filesystem as the default image, so creates store instances (whose boots
    // then fail at the missing VMM) and the instance routes see real instances.
    let work = tempfile::tempdir().expect("a temporary directory");
    let rootfs = work.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("etc")).expect("create the root filesystem");
    std::fs::write(rootfs.join("etc/motd"), "fuzz\n").expect("write the root filesystem");
    let tar_path = work.path().join("rootfs.tar");
    let mut archive = tar::Builder::new(std::fs::File::create(&tar_path).expect("create the tar"));
    archive
        .append_dir_all(".", &rootfs)
        .expect("write the root filesystem tar");
    archive.finish().expect("finish the tar");
    let tar_arg = tar_path.to_str().expect("a UTF-8 temporary path");
    d.aegis([
        "image",
        "import",
        "--rootfs",
        tar_arg,
        "--tag",
        "aegis.local/default:latest",
    ])
    .expect_success();

    let config = work.path().join("schemathesis.toml");
    std::fs::write(&config, SCHEMATHESIS_CONFIG).expect("write the schemathesis config");
    let bridge = Bridge::start(d.socket());
    let seed = std::env::var("AEGIS_FUZZ_SEED").unwrap_or_else(|_| FUZZ_SEED.to_owned());
    let mut command = Command::new(&schemathesis);
    command
        .current_dir(work.path())
        .env("NO_COLOR", "1")
        .arg("--config-file")
        .arg(&config)
        .args(["run", &format!("{}/v1/openapi.json", bridge.url())])
        .args(["--url", &bridge.url()])
        // It would stop the daemon under the test.
        .args(["--exclude-path", "/v1/shutdown"])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance,response_headers_conformance",
        ])
        .args(["--max-examples", FUZZ_EXAMPLES, "--seed", &seed])
        .args(["--workers", "1", "--request-timeout", "30", "--no-color"]);
    let out = Background::spawn(command).wait(FUZZ_TIMEOUT);
    let status = d.api("GET", "/v1/status", None);
    let log = std::fs::read_to_string(d.home().join("aegisd.log")).unwrap_or_default();
    assert!(
        out.code == Some(0) && status.status == 200 && !log.contains("panicked"),
        "schemathesis found failures (replay one with `{} replay ID` from {}), or the daemon \
         stopped answering (GET /v1/status: {} {}):\n{out}\n--- aegisd.log ---\n{}",
        schemathesis.display(),
        work.path().display(),
        status.status,
        status.body,
        d.log_tail()
    );
    // No VM was started: every boot failed at the missing VMM.
    assert!(
        !log.contains("guest ready"),
        "a VM was booted:\n{}",
        d.log_tail()
    );
}
