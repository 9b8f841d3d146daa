//! The router and scale to zero, end to end: real VMs behind public ports on loopback.
//!
//! One instance (`web`) carries the routing assertions: 503 before the server listens, a
//! server bound to the guest's loopback reached through the router, 10 MB up and down, runtime
//! expose / unexpose, wake from pause, boot from stop, ten concurrent first requests causing one
//! wake, a disabled instance never woken. A second one (`idle`) carries the idle timers, the
//! keepalive lease, an open connection holding it awake, and `--egress none`.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;

use aegis_proto::api::{Instance, InstanceStatus};
use aegis_testkit::{free_port, wait_until, Daemon};

const BOOT: Duration = Duration::from_secs(150);
const IO: Duration = Duration::from_secs(120);

/// A guest HTTP server bound to 127.0.0.1 only, on 8000 and 8001: `GET /` says hello,
/// `GET /big?n=N` streams N deterministic bytes, `POST /upload` answers the body's length and
/// a checksum.
const SERVER: &str = r#"
import http.server, socketserver, threading, hashlib
def pattern(n):
    block = bytes(range(256)) * 4096
    while n > 0:
        chunk = block[:min(n, len(block))]
        n -= len(chunk)
        yield chunk
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def reply(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path.startswith("/big"):
            n = int(self.path.split("=")[1])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            for c in pattern(n):
                self.wfile.write(c)
        else:
            self.reply(b"hello from port %d\n" % self.server.server_address[1])
    def do_POST(self):
        n = int(self.headers["Content-Length"])
        h = hashlib.sha256()
        left = n
        while left:
            c = self.rfile.read(min(left, 1 << 16))
            if not c: break
            h.update(c)
            left -= len(c)
        self.reply(("%d %s\n" % (n - left, h.hexdigest())).encode())
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
for port in (8000, 8001):
    s = S(("127.0.0.1", port), H)
    threading.Thread(target=s.serve_forever, daemon=True).start()
print("serving", flush=True)
threading.Event().wait()
"#;

fn daemon() -> Daemon {
    Daemon::start().use_cli(env!("CARGO_BIN_EXE_aegis"))
}

fn wait_state(d: &Daemon, target: &str, state: InstanceStatus, within: Duration) -> Instance {
    wait_until(within, &format!("{target} to be {state}"), || {
        match d.instance(target) {
            Ok(i) if i.state == state => Ok(i),
            Ok(i) => Err(format!("{} ({:?})", i.state, i.reason)),
            Err(e) => Err(e),
        }
    })
}

/// One HTTP/1.1 request with `Connection: close`; returns status and body.
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(IO)).unwrap();
    s.set_write_timeout(Some(IO)).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    s.write_all(body).map_err(|e| format!("write body: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no HTTP response: {:?}", String::from_utf8_lossy(&raw)))?;
    let status_line = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    Ok((status, raw[split + 4..].to_vec()))
}

fn get_ok(port: u16, path: &str) -> Vec<u8> {
    match http(port, "GET", path, b"") {
        Ok((200, body)) => body,
        other => panic!("GET {path} on {port}: {other:?}"),
    }
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| i.to_le_bytes()[0]).collect()
}

#[test]
fn routing_wake_and_scale_to_zero() {
    let d = daemon();
    let (web, raw) = (free_port(), free_port());
    let script = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, SERVER);
    d.aegis([
        "instance", "start", "--name", "web", "--idle-pause", "never", "--snapshot", "off",
        "--expose", &format!("{web}:8000/http"), "--expose", &format!("{raw}:9000"),
        "--", "sh", "-c",
        &format!("echo {script} | base64 -d > /root/srv.py; while [ ! -e /root/go ]; do sleep 0.2; done; exec python3 -u /root/srv.py"),
    ])
    .expect_success();
    let info = wait_state(&d, "web", InstanceStatus::Running, BOOT);
    assert!(
        info.endpoints
            .iter()
            .any(|e| e.public_port == web && e.guest_port == 8000 && e.protocol == "http"),
        "{:?}",
        info.endpoints
    );

    // Nothing listens yet: HTTP gets 503, raw TCP is closed.
    let (status, body) = http(web, "GET", "/", b"").unwrap();
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("nothing is listening on port 8000"));
    let mut s = TcpStream::connect(("127.0.0.1", raw)).unwrap();
    s.set_read_timeout(Some(IO)).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        s.read(&mut buf).unwrap_or(0),
        0,
        "raw TCP to a closed guest port is closed"
    );

    // The server binds the guest's loopback only, and is reached through the router.
    d.aegis(["exec", "web", "--", "touch", "/root/go"])
        .expect_success();
    let hello = wait_until(BOOT, "the guest server to answer", || {
        match http(web, "GET", "/", b"") {
            Ok((200, body)) => Ok(body),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(hello, b"hello from port 8000\n");

    // The VM's ingress forward listens on host loopback, where any local user can connect: a
    // header without the VM's key (the earlier 4-byte one, or a wrong key) reaches nothing.
    let run = d.home().join("instances").join(&info.id).join("run");
    let forward: u16 = std::fs::read_to_string(run.join("ingress.port"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let key_file = run.join("ingress.key");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_file).unwrap().permissions(),
    );
    assert_eq!(
        mode & 0o077,
        0,
        "the ingress key is readable by others: {mode:o}"
    );
    let guessed = aegis_proto::control::ingress_header(&[0u8; 32], 8000);
    for header in [&[0xAE, 0x01, 0x1F, 0x40][..], &guessed[..]] {
        let mut s = TcpStream::connect(("127.0.0.1", forward)).unwrap();
        s.set_read_timeout(Some(IO)).unwrap();
        s.write_all(header).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        assert!(
            !String::from_utf8_lossy(&answer).contains("hello from port"),
            "{header:?} reached the guest server: {answer:?}"
        );
        assert!(answer.len() <= 1, "{answer:?}");
    }

    // 10 MB down and up, intact.
    let ten = 10 * 1024 * 1024;
    let down = get_ok(web, &format!("/big?n={ten}"));
    assert_eq!(down.len(), ten);
    assert!(down == pattern(ten), "download corrupted");
    let up = pattern(ten);
    let (status, answer) = http(web, "POST", "/upload", &up).unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        String::from_utf8_lossy(&answer),
        format!("{ten} {}\n", sha256_hex(&up))
    );

    // Half-close: the client ends its side first and still reads the whole answer.
    let mut s = TcpStream::connect(("127.0.0.1", web)).unwrap();
    s.set_read_timeout(Some(IO)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.ends_with("hello from port 8000\n"), "{reply}");

    // Runtime expose and unexpose.
    let out = d.aegis(["instance", "expose", "web", "8001/http"]);
    out.expect_success();
    let extra = d
        .instance("web")
        .unwrap()
        .endpoints
        .iter()
        .find(|e| e.guest_port == 8001)
        .map(|e| e.public_port)
        .expect("8001 exposed");
    assert_eq!(get_ok(extra, "/"), b"hello from port 8001\n");
    d.aegis(["instance", "unexpose", "web", "8001"])
        .expect_success();
    assert!(
        TcpStream::connect(("127.0.0.1", extra)).is_err(),
        "unexposed port still listens"
    );
    let dup = d.aegis(["instance", "expose", "web", &format!("{web}:8001")]);
    assert_ne!(
        dup.code,
        Some(0),
        "a public port in use must be refused: {dup}"
    );

    // A request to a paused instance resumes it.
    d.aegis(["instance", "pause", "web"]).expect_success();
    assert_eq!(get_ok(web, "/"), b"hello from port 8000\n");
    assert_eq!(d.instance("web").unwrap().state, InstanceStatus::Running);

    // A request to a stopped instance boots it (the server comes back from its disk).
    d.aegis(["instance", "stop", "web"]).expect_success();
    let boots_before = d.system_lines("web", "booting").len();
    let body = wait_until(
        BOOT,
        "a request to boot the stopped instance",
        || match http(web, "GET", "/", b"") {
            Ok((200, body)) => Ok(body),
            other => Err(format!("{other:?}")),
        },
    );
    assert_eq!(body, b"hello from port 8000\n");
    assert_eq!(d.system_lines("web", "booting").len(), boots_before + 1);

    // Ten concurrent first requests to a stopped instance: all succeed after one wake.
    d.aegis(["instance", "stop", "web"]).expect_success();
    let boots_before = d.system_lines("web", "booting").len();
    let clients: Vec<_> = (0..10)
        .map(|_| {
            std::thread::spawn(move || {
                wait_until(BOOT, "a concurrent request", || {
                    match http(web, "GET", "/", b"") {
                        Ok((200, body)) => Ok(body),
                        other => Err(format!("{other:?}")),
                    }
                })
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), b"hello from port 8000\n");
    }
    assert_eq!(
        d.system_lines("web", "booting").len(),
        boots_before + 1,
        "one wake for ten requests"
    );

    // The ports survive a daemon restart.
    d.aegis(["instance", "stop", "web"]).expect_success();
    let mut d = d;
    d.restart();
    assert_eq!(get_ok(web, "/"), b"hello from port 8000\n");

    // A disabled instance is never woken.
    d.aegis(["instance", "disable", "web"]).expect_success();
    let (status, _) = http(web, "GET", "/", b"").unwrap();
    assert_eq!(status, 503);
    assert_eq!(d.instance("web").unwrap().state, InstanceStatus::Stopped);
}

#[test]
fn idle_pause_stop_leases_connections_and_egress() {
    let d = daemon();
    // A host listener the guest tries to reach (10.0.2.2 is the host's loopback in user-mode NAT).
    let host = TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = host.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in host.incoming() {
            drop(c)
        }
    });
    let held = free_port();
    d.aegis([
        "instance",
        "start",
        "--name",
        "idle",
        "--idle-pause",
        "8s",
        "--idle-stop",
        "6s",
        "--egress",
        "none",
        "--expose",
        &format!("{held}:7000"),
        "--",
        "python3",
        "-m",
        "http.server",
        "7000",
        "--bind",
        "127.0.0.1",
    ])
    .expect_success();
    wait_state(&d, "idle", InstanceStatus::Running, BOOT);

    // --egress none: the guest cannot open connections out.
    let probe = format!(
        "import socket\ntry:\n socket.create_connection(('10.0.2.2', {host_port}), timeout=5)\n print('connected')\nexcept OSError as e:\n print('blocked', e)"
    );
    let out = d.aegis(["exec", "idle", "--", "python3", "-c", &probe]);
    out.expect_success();
    assert!(out.stdout.starts_with("blocked"), "{out}");

    // A keepalive lease prevents the pause.
    d.aegis(["exec", "idle", "--", "touch", "/run/aegis/keepalive/job"])
        .expect_success();
    std::thread::sleep(Duration::from_secs(16));
    assert_eq!(
        d.instance("idle").unwrap().state,
        InstanceStatus::Running,
        "lease held"
    );
    d.aegis(["exec", "idle", "--", "rm", "/run/aegis/keepalive/job"])
        .expect_success();
    wait_state(&d, "idle", InstanceStatus::Paused, Duration::from_secs(60));
    assert!(!d.system_lines("idle", "idle for 8s: paused").is_empty());

    // An open routed connection prevents the pause (the request wakes it first).
    let mut conn = TcpStream::connect(("127.0.0.1", held)).unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 12];
    conn.set_read_timeout(Some(IO)).unwrap();
    conn.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.0 200");
    std::thread::sleep(Duration::from_secs(16));
    assert_eq!(
        d.instance("idle").unwrap().state,
        InstanceStatus::Running,
        "open connection"
    );
    drop(conn);

    // Idle again: paused, then stopped.
    wait_state(&d, "idle", InstanceStatus::Paused, Duration::from_secs(60));
    wait_state(&d, "idle", InstanceStatus::Stopped, Duration::from_secs(60));
    assert!(!d.system_lines("idle", "stopped (idle)").is_empty());
}
