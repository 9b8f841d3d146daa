//! The JSON-RPC surface of `aegis-harness --stdio`: error codes for bad input (after which the
//! server keeps answering), `health`, `signal` errors, `shutdown` and the peer closing.

mod common;

use std::time::{Duration, Instant};

use aegis_proto::control::{
    codes, HealthResult, RequestId, MAX_HOST_FRAME_BYTES, PROTOCOL_VERSION,
};
use common::{Harness, WAIT};
use serde_json::json;

/// Asserts the server still answers `health` after whatever came before.
fn assert_still_serving(h: &mut Harness) {
    assert_eq!(h.health().protocol, PROTOCOL_VERSION);
}

#[test]
fn garbage_line_is_a_parse_error_with_null_id() {
    let mut h = Harness::start();
    h.send_raw(b"this is not json\n");
    assert_eq!(h.error_code(None), codes::PARSE_ERROR);
    assert_still_serving(&mut h);
}

#[test]
fn not_a_request_object_is_invalid_request_on_its_id() {
    let mut h = Harness::start();
    h.send_raw(b"{\"jsonrpc\":\"1.0\",\"id\":77,\"method\":\"health\"}\n");
    assert_eq!(h.error_code(Some(77)), codes::INVALID_REQUEST);
    h.send_raw(b"[1,2,3]\n");
    assert_eq!(h.error_code(None), codes::INVALID_REQUEST);
    assert_still_serving(&mut h);
}

#[test]
fn unknown_method_is_method_not_found() {
    let mut h = Harness::start();
    let id = h.request("frobnicate", json!({}));
    assert_eq!(h.error_code(Some(id)), codes::METHOD_NOT_FOUND);
    assert_still_serving(&mut h);
}

#[test]
fn wrong_params_are_invalid_params() {
    let mut h = Harness::start();
    let cases = [
        ("run", json!({"argv": "echo hello"})),
        ("run", json!({})),
        ("exec", json!({"argv": ["true"]})),
        ("exec", json!({"exec_id": "", "argv": ["true"]})),
        ("signal", json!({"signal": "KILL"})),
        ("signal", json!({"signal": 0})),
        ("signal", json!({"signal": 65})),
        ("shutdown", json!({"grace_ms": -1})),
        ("set_time", json!({"unix_nanos": "now"})),
    ];
    for (method, params) in cases {
        let id = h.request(method, params.clone());
        assert_eq!(
            h.error_code(Some(id)),
            codes::INVALID_PARAMS,
            "{method} {params}"
        );
    }
    assert_still_serving(&mut h);
}

#[test]
fn oversized_line_is_frame_too_large_and_discarded() {
    let mut h = Harness::start();
    // A syntactically valid request that is simply too long: it must not be executed.
    let padding = "x".repeat(MAX_HOST_FRAME_BYTES + 16);
    let frame = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"run\",\"params\":{{\"argv\":[\"true\"],\"pad\":\"{padding}\"}}}}\n"
    );
    h.send_raw(frame.as_bytes());
    assert_eq!(h.error_code(None), codes::FRAME_TOO_LARGE);
    assert_still_serving(&mut h);
    let health: HealthResult = serde_json::from_value(h.call_ok("health", json!({}))).unwrap();
    assert!(
        !health.primary_running,
        "the oversized run was not executed"
    );
}

#[test]
fn signal_to_unknown_exec_or_absent_primary_is_no_such_process() {
    let mut h = Harness::start();
    let id = h.request("signal", json!({"exec_id": "ghost", "signal": 15}));
    assert_eq!(h.error_code(Some(id)), codes::NO_SUCH_PROCESS);
    let id = h.request("signal", json!({"signal": 15}));
    assert_eq!(h.error_code(Some(id)), codes::NO_SUCH_PROCESS);
    assert_still_serving(&mut h);
}

#[test]
fn health_reports_version_and_counts() {
    let mut h = Harness::start();
    let health: HealthResult = serde_json::from_value(h.call_ok("health", json!(null))).unwrap();
    assert_eq!(health.harness_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(health.protocol, PROTOCOL_VERSION);
    assert_eq!((health.processes, health.primary_running), (0, false));

    h.call_ok("run", json!({"argv": ["sleep", "30"]}));
    h.call_ok("exec", json!({"exec_id": "e", "argv": ["sleep", "30"]}));
    let health: HealthResult = serde_json::from_value(h.call_ok("health", json!({}))).unwrap();
    assert_eq!((health.processes, health.primary_running), (2, true));
}

#[test]
fn set_time_is_refused_in_stdio_mode() {
    let mut h = Harness::start();
    let id = h.request(
        "set_time",
        json!({"unix_nanos": 1_700_000_000_000_000_000u64}),
    );
    assert_eq!(h.error_code(Some(id)), codes::INTERNAL_ERROR);
    assert_still_serving(&mut h);
}

#[test]
fn shutdown_terminates_processes_and_exits_0() {
    let mut h = Harness::start();
    h.call_ok("exec", json!({"exec_id": "s", "argv": ["sleep", "60"]}));
    h.call_ok("run", json!({"argv": ["sleep", "60"]}));
    let started = Instant::now();
    h.call_ok("shutdown", json!({"grace_ms": 60_000}));
    // Both get SIGTERM, die at once, and their exits are reported before the harness exits.
    let exec = h.finish(Some("s"));
    let primary = h.finish(None);
    assert_eq!((exec.code, exec.signal), (143, Some(15)));
    assert_eq!((primary.code, primary.signal), (143, Some(15)));
    let status = h.wait_exit();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", h.stderr());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "shutdown did not wait for the whole grace when everything ended"
    );
}

#[test]
fn shutdown_kills_processes_that_ignore_sigterm() {
    let mut h = Harness::start();
    h.call_ok(
        "exec",
        json!({"exec_id": "stubborn", "argv": ["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done"]}),
    );
    assert_eq!(h.first_line("stubborn"), "ready");
    h.call_ok("shutdown", json!({"grace_ms": 200}));
    let done = h.finish(Some("stubborn"));
    assert_eq!((done.code, done.signal), (137, Some(9)));
    assert_eq!(h.wait_exit().code(), Some(0));
}

#[test]
fn new_work_is_refused_during_shutdown() {
    let mut h = Harness::start();
    h.call_ok(
        "exec",
        json!({"exec_id": "slow", "argv": ["sh", "-c", "trap 'sleep 0.5; exit 0' TERM; echo ready; while :; do sleep 0.05; done"]}),
    );
    assert_eq!(h.first_line("slow"), "ready");
    h.call_ok("shutdown", json!({"grace_ms": 5000}));
    let id = h.request("exec", json!({"exec_id": "late", "argv": ["true"]}));
    assert_eq!(h.error_code(Some(id)), codes::SHUTTING_DOWN);
    assert_still_serving(&mut h);
    assert_eq!(h.finish(Some("slow")).code, 0);
    assert_eq!(h.wait_exit().code(), Some(0));
}

#[test]
fn closing_stdin_terminates_processes_and_exits() {
    let mut h = Harness::start();
    h.call_ok(
        "exec",
        json!({"exec_id": "pid", "argv": ["sh", "-c", "echo $$; exec sleep 60"]}),
    );
    let pid: u32 = h.first_line("pid").parse().unwrap();
    h.close_stdin();
    assert_eq!(h.wait_exit().code(), Some(0));
    let deadline = Instant::now() + WAIT;
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            Instant::now() < deadline,
            "process {pid} outlived the harness"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn requests_with_string_ids_are_answered_with_the_same_id() {
    let mut h = Harness::start();
    h.send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":\"abc\",\"method\":\"health\"}\n");
    let response = h.response_for(Some(&RequestId::String("abc".to_owned())));
    assert!(response.result.is_some(), "{response:?}");
}

#[test]
fn sigterm_to_the_stdio_server_terminates_its_processes() {
    let mut h = Harness::start();
    h.call_ok(
        "exec",
        json!({"exec_id": "pid", "argv": ["sh", "-c", "echo $$; exec sleep 60"]}),
    );
    let pid: u32 = h.first_line("pid").parse().unwrap();
    let harness = nix::unistd::Pid::from_raw(i32::try_from(h.pid()).unwrap());
    nix::sys::signal::kill(harness, nix::sys::signal::Signal::SIGTERM).unwrap();
    let done = h.finish(Some("pid"));
    assert_eq!(done.signal, Some(15));
    assert_eq!(h.wait_exit().code(), Some(0));
    // It got SIGTERM and was reaped before the harness exited.
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} outlived the harness"
    );
}
