//! Snapshots (issue 9), end to end with real VMs: a stop saves the guest's memory, the next wake
//! restores it instead of booting, so state held only in memory survives; a corrupted snapshot
//! falls back to a cold boot with a log line; deleting the instance removes its snapshot.
//!
//! One instance (`mem`) carries the assertions: a shell loop counting into `/dev/shm` (tmpfs:
//! memory only) and a Python HTTP server holding a random token and a hit counter in variables,
//! reached through the router.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use aegis_proto::api::{Instance, InstanceStatus};
use aegis_testkit::{free_port, wait_until, Daemon};

const BOOT: Duration = Duration::from_secs(150);

/// Holds a token and a hit count in Python variables; `GET /` answers `<token> <hits>`.
const SERVER: &str = r#"
import http.server, os
token = os.urandom(8).hex()
hits = 0
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        global hits
        hits += 1
        body = ("%s %d\n" % (token, hits)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", 8000), H).serve_forever()
"#;

/// The primary process: the Python server in the background, a counter in the foreground.
const PRIMARY: &str =
    r#"python3 -u -c "$0" & i=0; while true; do i=$((i+1)); echo $i > /dev/shm/n; sleep 0.2; done"#;

fn wait_state(d: &Daemon, target: &str, state: InstanceStatus) -> Instance {
    wait_until(BOOT, &format!("{target} to be {state}"), || {
        match d.instance(target) {
            Ok(i) if i.state == state => Ok(i),
            Ok(i) => Err(format!("{} ({:?})", i.state, i.reason)),
            Err(e) => Err(e),
        }
    })
}

/// `GET /` through the router: `(token, hits)`.
fn get(port: u16) -> Result<(String, u64), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(BOOT)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)
        .map_err(|e| format!("read: {e}"))?;
    if !raw.starts_with("HTTP/1.0 200") && !raw.starts_with("HTTP/1.1 200") {
        return Err(format!("not a 200: {raw:?}"));
    }
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_owned();
    let (token, hits) = body
        .split_once(' ')
        .ok_or_else(|| format!("bad body {body:?}"))?;
    Ok((
        token.to_owned(),
        hits.parse().map_err(|_| format!("bad body {body:?}"))?,
    ))
}

fn counter(d: &Daemon) -> u64 {
    let out = d.aegis(["exec", "mem", "--", "cat", "/dev/shm/n"]);
    out.expect_success();
    out.stdout.trim().parse().unwrap()
}

fn boots(d: &Daemon) -> usize {
    d.system_lines("mem", "booting (").len()
}

fn snapshot_dir(d: &Daemon, id: &str) -> PathBuf {
    d.home().join("instances").join(id).join("snapshot")
}

/// Stops `mem` by request; the stop saves a snapshot.
fn stop_with_snapshot(d: &Daemon, id: &str) -> Instance {
    d.aegis(["instance", "stop", "mem"]).expect_success();
    let stopped = d.instance("mem").unwrap();
    assert_eq!(stopped.state, InstanceStatus::Stopped);
    let saved = stopped
        .saved_snapshot
        .clone()
        .unwrap_or_else(|| panic!("no snapshot after a stop: {stopped:?}\n{}", d.log_tail()));
    assert!(saved.size_bytes > 1024 * 1024, "{saved:?}");
    // Sealed: guest memory is never on disk in clear (it holds the guest's secrets).
    let memory = std::fs::read(snapshot_dir(d, id).join("memory.sealed")).unwrap();
    assert!(memory.starts_with(b"AEGSTRM1"), "{:?}", &memory[..16]);
    // QEMU's migration stream starts with its magic and version 3; eight bytes, so ciphertext
    // of this size matches it by chance with a probability of about 2^-37, where the bare
    // four-byte magic matched random data about once in 40 runs.
    assert!(
        !memory.windows(8).any(|w| w == b"QEVM\0\0\0\x03"),
        "QEMU's stream in clear"
    );
    stopped
}

#[test]
fn memory_survives_stop_and_wake() {
    let d = Daemon::start().use_cli(env!("CARGO_BIN_EXE_aegis"));
    let web = free_port();
    d.aegis([
        "instance",
        "start",
        "--name",
        "mem",
        "--idle-pause",
        "never",
        "--expose",
        &format!("{web}:8000/http"),
        "--",
        "sh",
        "-c",
        PRIMARY,
        SERVER,
    ])
    .expect_success();
    let id = wait_state(&d, "mem", InstanceStatus::Running).id;
    assert!(
        d.instance("mem").unwrap().snapshot,
        "snapshots are on by default"
    );
    let (token, hits) = wait_until(BOOT, "the Python server", || get(web));
    assert_eq!(hits, 1);
    let before = wait_until(BOOT, "the counter to pass 5", || match counter(&d) {
        n if n > 5 => Ok(n),
        n => Err(n),
    });
    let boots_before = boots(&d);
    assert_eq!(boots_before, 1);

    // Stop: a snapshot is saved, shown by `instance info` and counted by the status.
    stop_with_snapshot(&d, &id);
    let info = d.aegis(["instance", "info", "mem"]);
    info.expect_success();
    assert!(info.stdout.contains("snapshot of"), "{info}");
    let status = d.api("GET", "/v1/status", None).json();
    assert!(
        status["snapshot_bytes"].as_u64().unwrap() > 1024 * 1024,
        "{status}"
    );

    // A request through the router wakes it from the snapshot: same Python process, same
    // variables; the primary process was not started again, and nothing booted.
    let (token2, hits2) = wait_until(BOOT, "a wake through the router", || get(web));
    assert_eq!((token2.as_str(), hits2), (token.as_str(), hits + 1));
    let after = counter(&d);
    assert!(after >= before, "counter went back: {before} -> {after}");
    wait_until(BOOT, "the counter to keep counting", || match counter(&d) {
        n if n > after => Ok(n),
        n => Err(n),
    });
    assert_eq!(boots(&d), boots_before, "a restore must not boot");
    assert_eq!(d.system_lines("mem", "restored from the snapshot").len(), 1);
    assert_eq!(d.system_lines("mem", "running (guest pid").len(), 1);
    let woke = d.instance("mem").unwrap();
    assert!(woke.saved_snapshot.is_none(), "used once: {woke:?}");
    assert!(!snapshot_dir(&d, &id).exists());

    // An exec wakes it from a snapshot too.
    stop_with_snapshot(&d, &id);
    let n = counter(&d);
    assert!(n >= after, "{after} -> {n}");
    assert_eq!(boots(&d), boots_before);
    assert_eq!(get(web).unwrap().0, token);

    // A truncated snapshot is discarded with a log line, and the instance cold-boots.
    stop_with_snapshot(&d, &id);
    let memory = snapshot_dir(&d, &id).join("memory.sealed");
    let len = std::fs::metadata(&memory).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&memory)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    d.aegis(["instance", "start", "mem"]).expect_success();
    wait_state(&d, "mem", InstanceStatus::Running);
    let (token3, hits3) = wait_until(BOOT, "the server after a cold boot", || get(web));
    assert_ne!(token3, token, "a cold boot starts a new Python process");
    assert_eq!(hits3, 1);
    assert_eq!(boots(&d), boots_before + 1);
    let discarded = d.system_lines("mem", "snapshot discarded, cold-booting instead");
    assert_eq!(discarded.len(), 1, "{discarded:?}");
    assert!(discarded[0].contains("bytes instead of"), "{discarded:?}");
    assert!(!snapshot_dir(&d, &id).exists());

    // One altered byte (same size, so the manifest check passes) fails the seal's
    // authentication: discarded with the chunk named, and a cold boot.
    let token_before = get(web).unwrap().0;
    stop_with_snapshot(&d, &id);
    let memory = snapshot_dir(&d, &id).join("memory.sealed");
    let mut bytes = std::fs::read(&memory).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&memory, &bytes).unwrap();
    d.aegis(["instance", "start", "mem"]).expect_success();
    wait_state(&d, "mem", InstanceStatus::Running);
    let (token4, _) = wait_until(BOOT, "the server after a cold boot", || get(web));
    assert_ne!(
        token4, token_before,
        "a cold boot starts a new Python process"
    );
    assert_eq!(boots(&d), boots_before + 2);
    let discarded = d.system_lines("mem", "snapshot discarded, cold-booting instead");
    assert_eq!(discarded.len(), 2, "{discarded:?}");
    assert!(
        discarded[1].contains("the memory file does not open: chunk")
            && discarded[1].contains("does not decrypt"),
        "{discarded:?}"
    );
    assert!(!snapshot_dir(&d, &id).exists());

    // Deleting the instance removes its snapshot.
    stop_with_snapshot(&d, &id);
    d.aegis(["instance", "delete", "mem"]).expect_success();
    assert!(!snapshot_dir(&d, &id).exists());
    let status = d.api("GET", "/v1/status", None).json();
    assert_eq!(status["snapshot_bytes"].as_u64(), Some(0), "{status}");
}
