//! Process management through `aegis-harness --stdio`: output framing, exit statuses, signals,
//! environment, working directory, users and reaping.

mod common;

use std::time::{Duration, Instant};

use aegis_proto::control::{codes, OUTPUT_CHUNK_BYTES};
use common::{argv, Harness, WAIT};
use serde_json::json;

#[test]
fn echo_hello_streams_one_line_then_exits_0() {
    let mut h = Harness::start();
    let result = h.call_ok("run", json!({"argv": ["echo", "hello"]}));
    assert!(result["pid"].as_u64().unwrap() > 1, "{result}");
    let done = h.finish(None);
    assert_eq!(done.stdout, vec![("hello".to_owned(), true)]);
    assert!(done.stderr.is_empty());
    assert_eq!((done.code, done.signal), (0, None));
}

#[test]
fn exit_code_is_passed_through() {
    let mut h = Harness::start();
    h.call_ok(
        "exec",
        json!({"exec_id": "e", "argv": ["sh", "-c", "exit 42"]}),
    );
    let done = h.finish(Some("e"));
    assert_eq!((done.code, done.signal), (42, None));
}

#[test]
fn stderr_is_tagged_stderr() {
    let mut h = Harness::start();
    h.call_ok(
        "exec",
        json!({"exec_id": "e", "argv": ["sh", "-c", "echo out; echo err >&2"]}),
    );
    let done = h.finish(Some("e"));
    assert_eq!(done.stdout, vec![("out".to_owned(), true)]);
    assert_eq!(done.stderr, vec![("err".to_owned(), true)]);
}

#[test]
fn signal_method_kills_with_sigkill_and_reports_137() {
    let mut h = Harness::start();
    h.call_ok(
        "exec",
        json!({"exec_id": "sleeper", "argv": ["sleep", "30"]}),
    );
    h.call_ok("signal", json!({"exec_id": "sleeper", "signal": 9}));
    let done = h.finish(Some("sleeper"));
    assert_eq!((done.code, done.signal), (137, Some(9)));
}

#[test]
fn self_inflicted_sigkill_is_reported_as_a_signal() {
    let mut h = Harness::start();
    h.call_ok("run", json!({"argv": ["sh", "-c", "kill -9 $$"]}));
    let done = h.finish(None);
    assert_eq!((done.code, done.signal), (137, Some(9)));
}

#[test]
fn signal_reaches_the_whole_process_group() {
    let mut h = Harness::start();
    // The shell waits for a child; SIGTERM to the group ends both, so the pipe closes and the
    // exit is reported.
    h.call_ok(
        "exec",
        json!({"exec_id": "tree", "argv": ["sh", "-c", "sleep 30 & echo started; wait"]}),
    );
    let first = h.first_line("tree");
    assert_eq!(first, "started");
    h.call_ok("signal", json!({"exec_id": "tree", "signal": 15}));
    let done = h.finish(Some("tree"));
    assert_eq!((done.code, done.signal), (143, Some(15)));
}

#[test]
fn concurrent_execs_keep_their_own_output() {
    let mut h = Harness::start();
    let script = |tag: &str| format!("for i in 1 2 3 4 5; do echo {tag}$i; sleep 0.02; done");
    h.call_ok(
        "exec",
        json!({"exec_id": "a", "argv": ["sh", "-c", script("a")]}),
    );
    h.call_ok(
        "exec",
        json!({"exec_id": "b", "argv": ["sh", "-c", script("b")]}),
    );
    let b = h.finish(Some("b"));
    let a = h.finish(Some("a"));
    assert_eq!(a.stdout_lines(), vec!["a1", "a2", "a3", "a4", "a5"]);
    assert_eq!(b.stdout_lines(), vec!["b1", "b2", "b3", "b4", "b5"]);
    assert_eq!((a.code, b.code), (0, 0));
}

#[test]
fn a_one_mebibyte_line_arrives_whole_in_bounded_chunks() {
    let mut h = Harness::start();
    h.call_ok(
        "exec",
        json!({"exec_id": "big", "argv": ["sh", "-c", "head -c 1048576 /dev/zero | tr '\\000' x; echo"]}),
    );
    let done = h.finish(Some("big"));
    assert_eq!(done.code, 0);
    let (last, rest) = done.stdout.split_last().unwrap();
    assert!(last.1, "the last chunk ends the line");
    assert!(
        rest.iter().all(|(_, eol)| !eol),
        "only the last chunk has eol"
    );
    assert!(done
        .stdout
        .iter()
        .all(|(d, _)| d.len() <= OUTPUT_CHUNK_BYTES));
    let line: String = done.stdout.iter().map(|(d, _)| d.as_str()).collect();
    assert_eq!(line.len(), 1024 * 1024);
    assert!(line.bytes().all(|b| b == b'x'));
}

#[test]
fn output_without_trailing_newline_is_flushed_at_eof() {
    let mut h = Harness::start();
    h.call_ok(
        "exec",
        json!({"exec_id": "p", "argv": ["printf", "a\\nno newline"]}),
    );
    let done = h.finish(Some("p"));
    assert_eq!(
        done.stdout,
        vec![("a".to_owned(), true), ("no newline".to_owned(), false)]
    );
}

#[test]
fn exit_follows_all_output() {
    let mut h = Harness::start();
    h.call_ok(
        "exec",
        json!({"exec_id": "many", "argv": ["sh", "-c", "i=0; while [ $i -lt 3000 ]; do echo line$i; i=$((i+1)); done"]}),
    );
    let done = h.finish(Some("many"));
    let lines = done.stdout_lines();
    assert_eq!(lines.len(), 3000);
    assert_eq!(lines[0], "line0");
    assert_eq!(lines[2999], "line2999");
}

#[test]
fn exit_waits_for_a_background_child_holding_the_pipe() {
    let mut h = Harness::start();
    h.call_ok(
        "exec",
        json!({"exec_id": "bg", "argv": ["sh", "-c", "(sleep 0.3; echo late) & echo early"]}),
    );
    let done = h.finish(Some("bg"));
    assert_eq!(done.stdout_lines(), vec!["early", "late"]);
}

#[test]
fn orphans_are_reaped() {
    let mut h = Harness::start();
    // The grandchild is re-parented to the harness (a child subreaper in --stdio mode) and must
    // not stay a zombie.
    h.call_ok(
        "exec",
        json!({"exec_id": "o", "argv": ["sh", "-c", "sh -c 'sleep 0.2' >/dev/null 2>&1 & echo $!"]}),
    );
    let done = h.finish(Some("o"));
    let orphan: u32 = done.stdout_lines()[0].parse().unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        match std::fs::read_to_string(format!("/proc/{orphan}/stat")) {
            Err(_) => break, // reaped
            Ok(stat) => {
                let after_comm = stat.rsplit(')').next().unwrap();
                let fields: Vec<&str> = after_comm.split_whitespace().collect();
                let (state, ppid) = (fields[0], fields[1]);
                assert!(
                    Instant::now() < deadline,
                    "orphan {orphan} still present (state {state}, ppid {ppid})"
                );
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn environment_defaults_and_overrides() {
    let mut h = Harness::start();
    h.call_ok(
        "exec",
        json!({
            "exec_id": "env",
            "argv": ["sh", "-c", "echo \"$FOO|$TERM|$PATH\"; echo \"$HOME\""],
            "env": {"FOO": "bar"}
        }),
    );
    let done = h.finish(Some("env"));
    let lines = done.stdout_lines();
    assert_eq!(
        lines[0],
        "bar|xterm|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    assert!(lines[1].starts_with('/'), "HOME is a path: {:?}", lines[1]);

    h.call_ok(
        "exec",
        json!({"exec_id": "env2", "argv": ["sh", "-c", "echo $TERM"], "env": {"TERM": "dumb"}}),
    );
    assert_eq!(h.finish(Some("env2")).stdout_lines(), vec!["dumb"]);
}

#[test]
fn workdir_is_used_and_a_missing_one_is_named() {
    let mut h = Harness::start();
    h.call_ok(
        "exec",
        json!({"exec_id": "pwd", "argv": ["pwd"], "workdir": "/tmp"}),
    );
    assert_eq!(h.finish(Some("pwd")).stdout_lines(), vec!["/tmp"]);

    let response = h.call(
        "exec",
        json!({"exec_id": "nowhere", "argv": ["pwd"], "workdir": "/no/such/dir"}),
    );
    let error = response.error.expect("missing workdir is an error");
    assert_eq!(error.code, codes::SPAWN_FAILED);
    assert!(error.message.contains("/no/such/dir"), "{}", error.message);
}

#[test]
fn unknown_program_is_a_spawn_failure_naming_it() {
    let mut h = Harness::start();
    let response = h.call("run", json!({"argv": ["no-such-program-aegis"]}));
    let error = response.error.expect("unknown program is an error");
    assert_eq!(error.code, codes::SPAWN_FAILED);
    assert!(
        error.message.contains("no-such-program-aegis"),
        "{}",
        error.message
    );
    // The slot stays free.
    h.call_ok("run", json!({"argv": ["true"]}));
    assert_eq!(h.finish(None).code, 0);
}

#[test]
fn empty_argv_is_invalid_params() {
    let mut h = Harness::start();
    let id = h.request("run", json!({"argv": []}));
    assert_eq!(h.error_code(Some(id)), codes::INVALID_PARAMS);
}

#[test]
fn user_switch_by_uid_and_gid() {
    let mut h = Harness::start();
    let response = h.call(
        "exec",
        json!({"exec_id": "u", "argv": ["sh", "-c", "id -u; id -g"], "user": "65534:65534"}),
    );
    if nix::unistd::geteuid().is_root() {
        assert!(response.error.is_none(), "{response:?}");
        assert_eq!(h.finish(Some("u")).stdout_lines(), vec!["65534", "65534"]);
    } else {
        // Switching users needs root; the failure must be a clean spawn error.
        assert_eq!(response.error.map(|e| e.code), Some(codes::SPAWN_FAILED));
    }
    let response = h.call(
        "exec",
        json!({"exec_id": "ghost", "argv": ["true"], "user": "no-such-user-aegis"}),
    );
    let error = response.error.expect("unknown user is an error");
    assert_eq!(error.code, codes::SPAWN_FAILED);
    assert!(
        error.message.contains("no-such-user-aegis"),
        "{}",
        error.message
    );
}

#[test]
fn run_while_running_and_reused_exec_ids_are_refused() {
    let mut h = Harness::start();
    h.call_ok("run", json!({"argv": argv(&["sleep", "30"])}));
    let id = h.request("run", json!({"argv": ["true"]}));
    assert_eq!(h.error_code(Some(id)), codes::ALREADY_RUNNING);

    h.call_ok("exec", json!({"exec_id": "x", "argv": ["sleep", "30"]}));
    let id = h.request("exec", json!({"exec_id": "x", "argv": ["true"]}));
    assert_eq!(h.error_code(Some(id)), codes::ALREADY_RUNNING);

    h.call_ok("signal", json!({"exec_id": "x", "signal": 9}));
    assert_eq!(h.finish(Some("x")).signal, Some(9));
    // Once its exit was reported, the id may be used again.
    h.call_ok("exec", json!({"exec_id": "x", "argv": ["true"]}));
    assert_eq!(h.finish(Some("x")).code, 0);

    h.call_ok("signal", json!({"signal": 9}));
    assert_eq!(h.finish(None).signal, Some(9));
    h.call_ok("run", json!({"argv": ["true"]}));
    assert_eq!(h.finish(None).code, 0);
}

/// Soft and hard `RLIMIT_NOFILE` of a process, from `/proc/<pid>/limits`.
fn open_files_limit(pid: &str) -> (String, String) {
    let limits =
        std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read /proc/PID/limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("/proc/PID/limits has a \"Max open files\" line");
    let fields: Vec<&str> = line["Max open files".len()..].split_whitespace().collect();
    (fields[0].to_owned(), fields[1].to_owned())
}

#[test]
fn the_harness_raises_its_open_file_limit_but_children_keep_the_original() {
    let mut h = Harness::start();
    // Serving: past the raise.
    h.health();
    let (soft, hard) = open_files_limit("self");
    let (harness_soft, harness_hard) = open_files_limit(&h.pid().to_string());
    assert_eq!(harness_hard, hard);
    // Raised when it was low (the kernel gives init 1024) and there is room below the hard
    // limit; "unlimited" parses as neither.
    let number = |value: &str| value.parse::<u64>().unwrap_or(u64::MAX);
    if number(&soft) < 2048 && number(&hard) > number(&soft) {
        assert!(
            number(&harness_soft) > number(&soft),
            "the harness kept the soft limit {harness_soft}"
        );
    }
    assert!(number(&harness_soft) >= number(&soft));
    h.call_ok(
        "exec",
        json!({"exec_id": "e", "argv": ["sh", "-c", "ulimit -Sn; ulimit -Hn"]}),
    );
    let done = h.finish(Some("e"));
    assert_eq!(done.stdout_lines(), [soft, hard]);
}
