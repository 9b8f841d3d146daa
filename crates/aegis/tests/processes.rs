//! End-to-end tests of what an exec can be given beyond its command line, against a real
//! `aegisd` and one real VM shared by the assertions: stdin streamed from the CLI (`aegis exec
//! -i`), text and a large binary input checked by its digest, a process that stops reading
//! early, and the per-call timeout (`--timeout`), after which the guest has killed the process.

use std::io::Write;
use std::time::Duration;

use aegis_testkit::{Daemon, Output};
use sha2::{Digest, Sha256};

/// One CLI call that moves a large input through a TCG guest, with room to spare.
const CALL: Duration = Duration::from_secs(240);
/// Bytes of the binary input: many times any buffer on the way (socket, pipe, chunk).
const BIG: usize = 24 * 1024 * 1024;

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
    let mut big = vec![0u8; BIG];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in &mut big {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x.to_le_bytes()[3];
    }
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

    d.aegis(["instance", "delete", "p"]).expect_success();
}
