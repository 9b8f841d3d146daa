//! The activity heartbeat through `aegis-harness --stdio` with `AEGIS_HARNESS_ACTIVITY_MS`: its
//! interval and fields, leases from a keepalive directory, execs, TCP connections and CPU time.
//! In `--stdio` mode `/proc` is the host's, so CPU and TCP figures are only checked from below.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use common::Harness;
use serde_json::json;

/// Heartbeat interval for these tests.
const INTERVAL_MS: u64 = 200;

fn keepalive_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "aegis-harness-keepalive-{test}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn start(keepalive: &std::path::Path) -> Harness {
    let interval = INTERVAL_MS.to_string();
    Harness::start_with_env(&[
        ("AEGIS_HARNESS_ACTIVITY_MS", interval.as_str()),
        ("AEGIS_HARNESS_KEEPALIVE_DIR", keepalive.to_str().unwrap()),
    ])
}

#[test]
fn heartbeats_come_every_interval_with_every_field() {
    let dir = keepalive_dir("interval");
    let mut h = start(&dir);
    // Decoding as ActivityParams already requires every field.
    for _ in 0..3 {
        let a = h.activity_until(|_| true);
        assert!(
            (INTERVAL_MS / 2..=INTERVAL_MS * 10).contains(&a.interval_ms),
            "{a:?}"
        );
        assert_eq!((a.execs, a.leases, a.net_bytes), (0, 0, 0), "{a:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn leases_are_the_entries_of_the_keepalive_dir() {
    let dir = keepalive_dir("leases");
    std::fs::write(dir.join("build"), b"").unwrap();
    let mut h = start(&dir);
    h.activity_until(|a| a.leases == 1);
    std::fs::write(dir.join("download"), b"").unwrap();
    h.activity_until(|a| a.leases == 2);
    std::fs::remove_file(dir.join("build")).unwrap();
    std::fs::remove_file(dir.join("download")).unwrap();
    h.activity_until(|a| a.leases == 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn execs_count_running_execs_not_the_primary() {
    let dir = keepalive_dir("execs");
    let mut h = start(&dir);
    h.call_ok("run", json!({"argv": ["sleep", "30"]}));
    h.activity_until(|a| a.execs == 0);
    for id in ["a", "b"] {
        h.call_ok("exec", json!({"exec_id": id, "argv": ["sleep", "30"]}));
    }
    h.activity_until(|a| a.execs == 2);
    h.call_ok("signal", json!({"exec_id": "a", "signal": 9}));
    h.finish(Some("a"));
    h.activity_until(|a| a.execs == 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn established_tcp_connections_are_counted() {
    let dir = keepalive_dir("tcp");
    let mut h = start(&dir);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    // Both ends of a loopback connection are entries; the host may have more of its own.
    h.activity_until(|a| a.tcp_established >= 2);
    drop((client, server));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_busy_process_shows_as_cpu_time() {
    let dir = keepalive_dir("cpu");
    let mut h = start(&dir);
    h.call_ok(
        "exec",
        json!({"exec_id": "spin", "argv": ["sh", "-c", "while :; do :; done"]}),
    );
    // One CPU kept busy: close to the whole interval (the host's own load only adds).
    h.activity_until(|a| a.execs == 1 && a.cpu_ms >= a.interval_ms / 2);
    h.call_ok("signal", json!({"exec_id": "spin", "signal": 9}));
    h.finish(Some("spin"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn no_heartbeat_unless_asked_for_in_stdio_mode() {
    let mut h = Harness::start();
    assert_eq!(h.health().processes, 0);
    assert_eq!(h.activity_within(Duration::from_millis(500)), None);
}

#[test]
fn an_invalid_option_is_a_usage_error() {
    let mut h = Harness::start_with_env(&[("AEGIS_HARNESS_ACTIVITY_MS", "0")]);
    let status = h.wait_exit();
    assert_eq!(status.code(), Some(2));
    let fatal = h.console_line("fatal: ");
    assert!(fatal.contains("AEGIS_HARNESS_ACTIVITY_MS"), "{fatal}");
}
