//! Router benchmark (issue 5), in one run against one VM serving HTTP from Python:
//!
//! - **Added latency**: small `GET /` round trips through the router's public port versus
//!   directly, as p50/p95/p99 and their ratio; once with a new TCP connection per request
//!   (`Connection: close`, connect until the whole answer was read) and once as requests on one
//!   kept-alive connection.
//! - **Throughput**: a 50 MiB download through the router versus directly.
//! - **Time to first byte** of a request that wakes a paused instance, and of one that boots a
//!   stopped instance (connect until the first byte of the answer; the boot includes the guest
//!   server starting again, as the instance's primary process). The daemon runs with
//!   `AEGIS_SNAPSHOT=off` unless the environment sets it, so that a stopped instance boots cold
//!   rather than being restored from a snapshot.
//!
//! "Directly" is the same VM's QEMU user-mode forward (`hostfwd`) to the harness's ingress proxy:
//! the host port in `$AEGIS_HOME/instances/<id>/run/ingress.port`, opened with the ingress header
//! (magic, the key in `run/ingress.key`, guest port) and its one-byte [`IngressStatus`] answer, exactly as the
//! router opens its upstream. It is the only way into the guest (the daemon forwards nothing
//! else), so the ratio is what the router adds on top of that path: one more loopback hop, the
//! wake command to the instance's actor, and the relay copy.
//!
//! Needs the release binaries (`scripts/build.sh`) and a set-up `~/.aegis` (`./setup.sh`). Run
//! with `cargo bench -p aegis --bench router`. Sample sizes: `AEGIS_BENCH_REQUESTS` (default 200
//! per path and mode), `AEGIS_BENCH_DOWNLOADS` (default 5 per path), `AEGIS_BENCH_WAKES`
//! (default 10 wakes from pause), `AEGIS_BENCH_BOOTS` (default 5 boots from stop);
//! `AEGIS_BENCH_DOWNLOAD_MB` (default 50) sets the download size in MiB.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use aegis_proto::api::InstanceStatus;
use aegis_proto::control::{ingress_header, IngressStatus, INGRESS_KEY_BYTES};
use aegis_testkit::{env_usize, free_port, print_load, report_ms, report_rate, wait_until, Daemon};

use support::{wait_state, BOOT};

/// Deadline of one socket read or write.
const IO: Duration = Duration::from_secs(180);
/// Deadline of a CLI call that changes the state (a graceful stop may take a while under TCG).
const CLI_TIMEOUT: Duration = Duration::from_secs(180);
/// The guest server's port.
const GUEST_PORT: u16 = 8000;
/// The daemon's default for saving a snapshot on stop (and waking from it).
const SNAPSHOT_ENV: &str = "AEGIS_SNAPSHOT";
/// Unmeasured requests per path before each measure.
const WARM_UP: usize = 5;

/// The guest server, bound to the guest's loopback: `GET /` answers a short text, `GET /big?n=N`
/// streams N bytes of a repeating 0..=255 pattern. HTTP/1.1 with keep-alive, one thread per
/// connection.
const SERVER: &str = r#"
import http.server, socketserver
BLOCK = memoryview(bytes(range(256)) * 4096)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        if self.path.startswith("/big"):
            n = int(self.path.split("=")[1])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            while n > 0:
                chunk = BLOCK[:min(n, len(BLOCK))]
                self.wfile.write(chunk)
                n -= len(chunk)
        else:
            body = b"hello from aegis\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
S(("127.0.0.1", 8000), H).serve_forever()
"#;

/// How a benchmark connection reaches the guest server.
#[derive(Debug, Clone, Copy)]
enum Path {
    /// The router's public port.
    Router(u16),
    /// The VM's ingress forward, with the ingress header and the VM's key.
    Direct(u16, [u8; INGRESS_KEY_BYTES]),
}

impl Path {
    fn connect(self) -> TcpStream {
        let port = match self {
            Path::Router(p) | Path::Direct(p, _) => p,
        };
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connect to {self:?}: {e}"));
        s.set_nodelay(true).expect("TCP_NODELAY");
        s.set_read_timeout(Some(IO)).expect("read timeout");
        s.set_write_timeout(Some(IO)).expect("write timeout");
        if let Path::Direct(_, key) = self {
            s.write_all(&ingress_header(&key, GUEST_PORT))
                .expect("ingress header");
            let mut status = [0u8; 1];
            s.read_exact(&mut status).expect("ingress answer");
            assert_eq!(
                IngressStatus::from_byte(status[0]),
                IngressStatus::Connected,
                "the ingress proxy did not connect to guest port {GUEST_PORT}"
            );
        }
        s
    }
}

/// Sends `GET path` on `conn` and reads the answer; returns the status and the body length.
/// The body is read and dropped (checked by [`check_pattern`] when asked).
fn request<R: BufRead>(
    conn: &mut TcpStream,
    reader: &mut R,
    path: &str,
    close: bool,
    check: bool,
) -> (u16, usize) {
    let connection = if close { "close" } else { "keep-alive" };
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: {connection}\r\n\r\n"
    )
    .expect("write request");
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).expect("header");
        if header == "\r\n" || header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().expect("Content-Length");
            }
        }
    }
    let mut left = length;
    let mut offset = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    while left > 0 {
        let n = reader.read(&mut buf[..left.min(256 * 1024)]).expect("body");
        assert!(n > 0, "the connection closed {left} bytes before the end");
        if check {
            check_pattern(&buf[..n], offset);
        }
        offset += n;
        left -= n;
    }
    (status, length)
}

/// The guest server's `/big` pattern: byte i is i mod 256.
fn check_pattern(chunk: &[u8], offset: usize) {
    for (i, &b) in chunk.iter().enumerate() {
        assert_eq!(
            usize::from(b),
            (offset + i) % 256,
            "download corrupted at byte {}",
            offset + i
        );
    }
}

/// One request on a new connection; returns the time from connect to the last byte.
fn fresh_get(path: Path, url: &str, check: bool) -> (Duration, usize) {
    let t = Instant::now();
    let mut conn = path.connect();
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let (status, length) = request(&mut conn, &mut reader, url, true, check);
    let elapsed = t.elapsed();
    assert_eq!(status, 200, "GET {url} via {path:?}");
    (elapsed, length)
}

/// Time from connect to the first byte of the answer to `GET /`; then reads the rest.
fn first_byte(path: Path) -> Duration {
    let t = Instant::now();
    let mut conn = path.connect();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .expect("write request");
    let mut first = [0u8; 1];
    conn.read_exact(&mut first).expect("first byte");
    let elapsed = t.elapsed();
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).expect("answer");
    let answer = String::from_utf8_lossy(&rest);
    assert!(
        first[0] == b'H' && answer.starts_with("TTP/1.1 200"),
        "unexpected answer: {}{answer}",
        char::from(first[0])
    );
    elapsed
}

/// One `GET /` through the router without panicking: `Ok` on a 200 (the server may still be
/// starting, and the router answers 503 until it listens).
fn probe(public: u16) -> Result<(), String> {
    let mut s = TcpStream::connect(("127.0.0.1", public)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(IO)).map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).map_err(|e| e.to_string())?;
    let answer = String::from_utf8_lossy(&answer);
    match answer.lines().next() {
        Some(line) if line.starts_with("HTTP/1.1 200") => Ok(()),
        line => Err(format!("{line:?}")),
    }
}

fn ratio(router: [f64; 3], direct: [f64; 3]) -> String {
    format!(
        "router/direct: p50 {:.2}x  p95 {:.2}x  p99 {:.2}x  (p50 difference {:+.2} ms)",
        router[0] / direct[0],
        router[1] / direct[1],
        router[2] / direct[2],
        router[0] - direct[0]
    )
}

fn main() {
    let requests = env_usize("AEGIS_BENCH_REQUESTS", 200);
    let downloads = env_usize("AEGIS_BENCH_DOWNLOADS", 5);
    let wakes = env_usize("AEGIS_BENCH_WAKES", 10);
    let boots = env_usize("AEGIS_BENCH_BOOTS", 5);
    let download_bytes = env_usize("AEGIS_BENCH_DOWNLOAD_MB", 50) * 1024 * 1024;

    // A stopped instance must really boot: a daemon that saves a snapshot on stop restores it
    // instead. `AEGIS_SNAPSHOT=on` in the environment measures that path (the daemon inherits
    // the variable; one without snapshot support ignores it).
    let snapshot = std::env::var(SNAPSHOT_ENV).unwrap_or_else(|_| "off".to_owned());
    std::env::set_var(SNAPSHOT_ENV, &snapshot);
    let d = Daemon::start();
    println!(
        "accelerator: {}, {SNAPSHOT_ENV}={snapshot}",
        support::accelerator(&d)
    );
    print_load("at start");
    let public = free_port();
    let t = Instant::now();
    d.aegis([
        "instance",
        "start",
        "--name",
        "bench-web",
        "--idle-pause",
        "never",
        "--expose",
        &format!("{public}:{GUEST_PORT}/http"),
        "--",
        "python3",
        "-u",
        "-c",
        SERVER,
    ])
    .expect_success();
    let id = wait_state(&d, "bench-web", InstanceStatus::Running, BOOT).id;
    let router = Path::Router(public);
    wait_until(
        BOOT,
        "the guest server to answer through the router",
        || probe(public),
    );
    println!(
        "instance {id} serving after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let (port, key) = support::ingress_forward(&d, &id);
    let direct = Path::Direct(port, key);

    // Added latency, a new connection per request; interleaved so that load from elsewhere on
    // the machine hits both paths alike.
    for _ in 0..WARM_UP {
        fresh_get(router, "/", false);
        fresh_get(direct, "/", false);
    }
    let (mut via_router, mut via_direct) = (Vec::new(), Vec::new());
    for _ in 0..requests {
        via_router.push(fresh_get(router, "/", false).0);
        via_direct.push(fresh_get(direct, "/", false).0);
    }
    let r = report_ms("GET / new connection, router", via_router);
    let dr = report_ms("GET / new connection, direct", via_direct);
    println!("{:<52} {}", "", ratio(r, dr));

    // Added latency on a kept-alive connection: the relay alone.
    let keep = |path: Path| {
        let mut conn = path.connect();
        let mut reader = BufReader::new(conn.try_clone().expect("clone"));
        move || {
            let t = Instant::now();
            let (status, _) = request(&mut conn, &mut reader, "/", false, false);
            assert_eq!(status, 200);
            t.elapsed()
        }
    };
    let (mut on_router, mut on_direct) = (keep(router), keep(direct));
    for _ in 0..WARM_UP {
        on_router();
        on_direct();
    }
    let (mut via_router, mut via_direct) = (Vec::new(), Vec::new());
    for _ in 0..requests {
        via_router.push(on_router());
        via_direct.push(on_direct());
    }
    drop((on_router, on_direct));
    let r = report_ms("GET / kept-alive connection, router", via_router);
    let dr = report_ms("GET / kept-alive connection, direct", via_direct);
    println!("{:<52} {}", "", ratio(r, dr));

    // Throughput: the first download of each path is checked byte for byte, the others only
    // counted (checking costs host CPU the relay competes for).
    let url = format!("/big?n={download_bytes}");
    let mib = download_bytes as f64 / (1024.0 * 1024.0);
    let (mut rate_router, mut rate_direct) = (Vec::new(), Vec::new());
    for i in 0..downloads {
        for (path, rates) in [(router, &mut rate_router), (direct, &mut rate_direct)] {
            let (elapsed, length) = fresh_get(path, &url, i == 0);
            assert_eq!(length, download_bytes, "download size via {path:?}");
            rates.push(mib / elapsed.as_secs_f64());
        }
    }
    let r = report_rate(
        &format!("{mib:.0} MiB download, router"),
        rate_router,
        "MiB/s",
    );
    let dr = report_rate(
        &format!("{mib:.0} MiB download, direct"),
        rate_direct,
        "MiB/s",
    );
    println!(
        "{:<52} router/direct: p50 {:.2}x  p95 {:.2}x  p99 {:.2}x",
        "",
        r[0] / dr[0],
        r[1] / dr[1],
        r[2] / dr[2]
    );

    // Time to first byte of a request that resumes a paused instance.
    let mut woken = Vec::new();
    for _ in 0..wakes {
        d.aegis_with_timeout(["instance", "pause", "bench-web"], CLI_TIMEOUT)
            .expect_success();
        wait_state(&d, "bench-web", InstanceStatus::Paused, CLI_TIMEOUT);
        woken.push(first_byte(router));
    }
    report_ms("time to first byte, wakes a paused instance", woken);

    // Time to first byte of a request that boots a stopped instance (and its server).
    let mut booted = Vec::new();
    for _ in 0..boots {
        d.aegis_with_timeout(["instance", "stop", "bench-web"], CLI_TIMEOUT)
            .expect_success();
        wait_state(&d, "bench-web", InstanceStatus::Stopped, CLI_TIMEOUT);
        booted.push(first_byte(router));
    }
    let how = if snapshot == "off" {
        "boots"
    } else {
        "restores"
    };
    report_ms(
        &format!("time to first byte, {how} a stopped instance"),
        booted,
    );
    print_load("at end");
}
