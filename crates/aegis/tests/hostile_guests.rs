//! A hostile guest cannot hurt the host (issue 19), with real VMs: the workload of one instance
//! writes a line of 1 GiB without a newline, floods its log for 30 s, writes garbage at the
//! control port, fills its disk, fork-bombs, and finally stops answering altogether (its QEMU is
//! frozen from the host). Meanwhile a second, well-behaved instance is served through the router
//! the whole time, aegisd's peak memory stays within the documented bound, the instance's log
//! files stay within their rotation, and the hostile instance can still be removed.

use std::time::{Duration, Instant};

use aegis_proto::api::InstanceStatus;
use aegis_testkit::{free_port, get_status_line, wait_until, Daemon};

/// A boot under TCG on a loaded 2-core machine, with room to spare.
const BOOT: Duration = Duration::from_secs(150);
/// The longest line the workload writes: 1 GiB unless the environment asks for less.
const LINE_ENV: &str = "AEGIS_HOSTILE_LINE_BYTES";
/// aegisd's peak resident memory while one guest does all this, with one calm instance beside
/// it (README, "Reliability"): the ring (16 MiB), the notification queue (24 MiB), partial
/// lines (16 MiB), a streamed query (about 1 MiB) and the daemon itself, with room for the
/// allocator.
const PEAK_RSS_BOUND_MIB: u64 = 256;
/// Logs on disk per instance: two files of 64 MiB (`logs.ndjson` and `logs.ndjson.1`), plus
/// the entry that crossed the line.
const LOG_DISK_BOUND: u64 = 2 * 64 * 1024 * 1024 + 8 * 1024 * 1024;

fn daemon() -> Daemon {
    Daemon::start().use_cli(env!("CARGO_BIN_EXE_aegis"))
}

/// The calm instance still answers through the router.
fn calm_answers(port: u16, during: &str) {
    let started = Instant::now();
    let status =
        get_status_line(port).unwrap_or_else(|e| panic!("calm instance unreachable {during}: {e}"));
    assert!(
        status.contains(" 200 "),
        "calm instance answered {status:?} {during}"
    );
    eprintln!("calm instance answered {during} in {:?}", started.elapsed());
}

/// A field of aegisd's /proc status in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("aegisd status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in aegisd's status"))
}

/// The last entries of an instance's log, as lines.
fn tail(d: &Daemon, target: &str, n: usize) -> Vec<String> {
    let response = d.api(
        "GET",
        &format!("/v1/instances/{target}/logs?tail={n}"),
        None,
    );
    assert_eq!(response.status, 200, "{}", response.body);
    response
        .ndjson()
        .iter()
        .map(|e| {
            let line = e["line"].as_str().unwrap_or("");
            line.chars().take(200).collect()
        })
        .collect()
}

/// Waits for `marker` among the last entries. Few of them: past the ring a `tail` query holds
/// the entries it answers with, and here they are pieces of 4 MiB.
fn wait_for_marker(d: &Daemon, target: &str, marker: &str, within: Duration) {
    wait_until(within, &format!("{target} to log {marker:?}"), || {
        let lines = tail(d, target, 3);
        if lines.iter().any(|l| l == marker) {
            Ok(())
        } else {
            Err(lines)
        }
    });
}

/// A root daemon's QEMU runs as the unprivileged VM user, which cannot enter the daemon's home,
/// with no core dumps and few descriptors.
fn qemu_is_confined(pid: u32, home: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("QEMU's status");
    let uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|id| id.parse().ok())
        .expect("QEMU's effective uid");
    if nix::unistd::geteuid().is_root() {
        let user = nix::unistd::User::from_uid(uid.into())
            .expect("users")
            .map(|u| u.name);
        assert_eq!(user.as_deref(), Some("aegis-vm"), "QEMU runs as uid {uid}");
        let mode = std::fs::metadata(home).expect("home").permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the daemon's home is open to others: {mode:o}"
        );
    }
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("QEMU's limits");
    let limit = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| {
                l[name.len()..]
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    assert!(limit("Max core file size").starts_with("0 0"), "{limits}");
    assert!(limit("Max open files").starts_with("4096 4096"), "{limits}");
}

#[test]
fn a_hostile_guest_cannot_hurt_the_host() {
    let d = daemon();
    let aegisd = d.pid().expect("aegisd's pid");
    let calm_port = free_port();
    d.aegis([
        "instance",
        "start",
        "--name",
        "calm",
        "--idle-pause",
        "never",
        "--snapshot",
        "off",
        "--expose",
        &format!("{calm_port}:8000/http"),
        "--",
        "python3",
        "-m",
        "http.server",
        "8000",
        "--bind",
        "127.0.0.1",
    ])
    .expect_success();
    let calm = d.wait_state("calm", InstanceStatus::Running, BOOT);
    qemu_is_confined(calm.vmm_pid.expect("calm's VMM pid"), d.home());
    wait_until(
        BOOT,
        "the calm instance to serve",
        || match get_status_line(calm_port) {
            Ok(status) if status.contains(" 200 ") => Ok(()),
            other => Err(other),
        },
    );

    // The workload: a 1 GiB line without a newline, then 30 s of the fastest log flood a shell
    // can make, each step marked in the log. Run as the primary process, so its output goes to
    // the log and to no client.
    let line_bytes: u64 = std::env::var(LINE_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30);
    let script = format!(
        "head -c {line_bytes} /dev/zero | tr '\\0' x; echo; echo marker-line-done; \
         while [ ! -e /root/flood ]; do sleep 0.2; done; \
         timeout 30 yes 'flood flood flood flood flood flood flood flood'; echo; echo marker-flood-done; \
         exec sleep infinity"
    );
    d.aegis([
        "instance",
        "start",
        "--name",
        "hostile",
        "--idle-pause",
        "never",
        "--snapshot",
        "off",
        "--",
        "sh",
        "-c",
        &script,
    ])
    .expect_success();
    let hostile = d.wait_state("hostile", InstanceStatus::Running, BOOT);
    let run_dir = d.home().join("instances").join(&hostile.id).join("run");

    calm_answers(calm_port, "while the hostile guest writes its long line");
    wait_for_marker(&d, "hostile", "marker-line-done", Duration::from_secs(900));
    d.aegis(["exec", "hostile", "--", "touch", "/root/flood"])
        .expect_success();
    calm_answers(calm_port, "while the hostile guest floods its log");
    wait_for_marker(&d, "hostile", "marker-flood-done", Duration::from_secs(300));
    let on_disk = d.log_bytes_on_disk(&hostile.id);
    assert!(
        on_disk <= LOG_DISK_BOUND,
        "the hostile instance's logs take {on_disk} bytes on disk, over {LOG_DISK_BOUND}"
    );
    eprintln!("hostile instance logs on disk: {} MiB", on_disk >> 20);

    // Garbage and oversized frames at every virtio port the guest can open (the harness holds
    // the control port; whatever the guest manages to write is discarded by the host).
    let out = d.aegis([
        "exec",
        "hostile",
        "--",
        "sh",
        "-c",
        "for p in /dev/virtio-ports/* /dev/vport*; do \
           head -c 4000000 /dev/urandom > \"$p\" 2>&1; echo \"$p: $?\"; \
           (printf '{\"jsonrpc\":\"2.0\",\"method\":\"exit\",\"params\":{\"code\":9}}\\n'; \
            head -c 2000000 /dev/zero | tr '\\0' '{') > \"$p\" 2>&1; done; echo garbage-done",
    ]);
    out.expect_success();
    assert!(out.stdout.contains("garbage-done"), "{out}");
    let out = d.aegis(["exec", "hostile", "--", "echo", "still-alive"]);
    out.expect_success();
    assert!(out.stdout.contains("still-alive"), "{out}");
    assert_eq!(
        d.instance("hostile").expect("hostile").state,
        InstanceStatus::Running,
        "a forged exit must not stop the instance"
    );

    // A full disk is the guest's problem: the writer gets ENOSPC, the instance answers, and the
    // host's overlay stays within the disk's virtual size.
    let out = d.aegis_with_timeout(
        [
            "exec",
            "hostile",
            "--",
            "sh",
            "-c",
            "dd if=/dev/zero of=/root/fill bs=1M 2>&1; sync; df -k / | tail -n 1",
        ],
        Duration::from_secs(900),
    );
    out.expect_success();
    assert!(
        out.stdout.contains("No space left on device"),
        "the disk did not fill: {out}"
    );
    let out = d.aegis([
        "exec",
        "hostile",
        "--",
        "sh",
        "-c",
        "rm /root/fill; echo freed",
    ]);
    out.expect_success();
    calm_answers(calm_port, "after the hostile guest filled its disk");

    // A fork bomb starves the guest, not the host. The bomb's shell may finish ("bombed", exit
    // 0) or the harness may be starved before it says so; either way the client is not waited
    // for here, and deleting the instance below ends it if it is still waiting.
    let bomb = d.spawn_aegis([
        "exec",
        "hostile",
        "--",
        "sh",
        "-c",
        "b() { b | b & }; b >/dev/null 2>&1 </dev/null; echo bombed",
    ]);
    std::thread::sleep(Duration::from_secs(15));
    calm_answers(calm_port, "while the hostile guest fork-bombs");

    // A guest that never answers: its QEMU frozen from the host. Calls fail with a clear error
    // after the call timeout instead of hanging, and the instance can still be removed.
    let vmm_pid = d
        .instance("hostile")
        .expect("hostile")
        .vmm_pid
        .expect("hostile's VMM pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(vmm_pid).expect("pid")),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .expect("freeze the hostile VM");
    let started = Instant::now();
    let out = d.aegis_with_timeout(
        ["exec", "hostile", "--", "echo", "hello"],
        Duration::from_secs(180),
    );
    assert_ne!(out.code, Some(0), "a frozen guest answered: {out}");
    assert!(
        out.stderr.contains("did not answer"),
        "the error does not say the guest did not answer: {out}"
    );
    eprintln!(
        "exec on a frozen guest failed after {:?}",
        started.elapsed()
    );
    calm_answers(calm_port, "while the hostile guest is frozen");
    let out = d.aegis_with_timeout(["instance", "delete", "hostile"], Duration::from_secs(180));
    out.expect_success();
    assert!(
        d.instance("hostile").is_err(),
        "the frozen instance is still listed"
    );
    // The client ends (wait panics on a hang): with the shell's own answer if the harness got
    // to send it, otherwise with an error saying the instance went away.
    let bomb = bomb.wait(Duration::from_secs(60));
    if bomb.code == Some(0) {
        assert!(
            bomb.stdout.contains("bombed"),
            "exit 0 without the shell's output: {bomb}"
        );
    } else {
        assert!(
            !bomb.stderr.trim().is_empty(),
            "the fork bomb's exec failed silently: {bomb}"
        );
    }
    assert!(
        !run_dir.join("qmp.sock").exists(),
        "the frozen VM's files are left"
    );

    let peak = status_kib(aegisd, "VmHWM:") >> 10;
    let now = status_kib(aegisd, "VmRSS:") >> 10;
    eprintln!("aegisd resident memory: peak {peak} MiB, now {now} MiB");
    assert!(
        peak <= PEAK_RSS_BOUND_MIB,
        "aegisd's peak resident memory was {peak} MiB, over {PEAK_RSS_BOUND_MIB} MiB"
    );
    calm_answers(calm_port, "at the end");
}
