//! A snapshot save that cannot finish loses nothing, with real VMs: a disk that fills while the
//! guest's memory is written, and `aegisd` killed with SIGKILL in the middle of writing it. In
//! both the instance stops (or is found again) without a snapshot, nothing half-written is ever
//! restored, the space is given back, and the next stop saves a snapshot that restores.
//!
//! The daemon's home is a small tmpfs mounted by the test (it runs as root, as the suite does),
//! so the disk really fills; one instance carries every step.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use aegis_proto::api::InstanceStatus;
use aegis_testkit::{wait_until, Daemon, Tmpfs};

const BOOT: Duration = Duration::from_secs(150);

/// Guest memory the workload fills: more than the tmpfs holds when it is small, so the sealed
/// state cannot fit; large enough that writing it takes seconds, so a kill lands mid-write.
const FILL_MB: u64 = 320;

/// Waits until the workload has filled its memory for the `n`th time.
fn wait_filled(d: &Daemon, n: usize) {
    wait_until(BOOT, "the guest to fill its memory", || {
        let out = d.aegis(["logs", "big"]);
        match out.stdout.matches("memory filled").count() {
            c if c >= n => Ok(()),
            c => Err(c),
        }
    });
}

#[test]
fn a_snapshot_that_cannot_be_written_loses_nothing() {
    let disk = Tmpfs::mount(200 << 20);
    let mut d = Daemon::builder().home_in(disk.path()).start();
    let instances = d.home().join("instances");
    let script = format!(
        "head -c {FILL_MB}000000 /dev/urandom > /dev/shm/fill; echo memory filled; \
         exec sleep infinity"
    );
    d.aegis([
        "instance",
        "start",
        "--name",
        "big",
        "--memory",
        "512",
        "--idle-pause",
        "never",
        "--",
        "sh",
        "-c",
        &script,
    ])
    .expect_success();
    let id = d.wait_state("big", InstanceStatus::Running, BOOT).id;
    let snapshot = instances.join(&id).join("snapshot");
    wait_filled(&d, 1);

    // The disk fills while the memory is written: the stop still stops, says why there is no
    // snapshot, and gives the space back.
    d.aegis(["instance", "stop", "big"]).expect_success();
    let stopped = d.instance("big").unwrap();
    assert_eq!(stopped.state, InstanceStatus::Stopped);
    assert!(stopped.saved_snapshot.is_none(), "{stopped:?}");
    let said = d.system_lines("big", "cannot save a snapshot");
    assert!(
        said.iter().any(|l| l.contains("No space left on device")),
        "the log does not say the disk is full: {said:?}"
    );
    assert!(!snapshot.exists(), "a failed snapshot was left behind");
    assert!(
        disk.used_bytes() < 100 << 20,
        "the failed snapshot's space was not freed: {} bytes used",
        disk.used_bytes()
    );

    // With room again, a start cold-boots (nothing half-written is restored) ...
    disk.resize(2 << 30);
    d.aegis(["instance", "start", "big"]).expect_success();
    d.wait_state("big", InstanceStatus::Running, BOOT);
    wait_filled(&d, 2);
    assert!(d
        .system_lines("big", "restored from the snapshot")
        .is_empty());

    // ... and aegisd killed while it writes the memory: the next aegisd finds the instance,
    // restores nothing half-written, and the instance still works.
    let stop = d.spawn_aegis(["instance", "stop", "big"]);
    let memory = snapshot.join("memory.sealed");
    wait_until(
        Duration::from_secs(60),
        "the snapshot to be half written",
        || match std::fs::metadata(&memory).map(|m| m.len()) {
            Ok(len) if len > 32 << 20 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    assert!(
        !snapshot.join("manifest.json").exists(),
        "written too fast to kill mid-write"
    );
    d.restart();
    let _ = stop.wait(Duration::from_secs(30));
    let found = d.instance("big").unwrap();
    assert!(
        found.saved_snapshot.is_none(),
        "a half-written snapshot counts: {found:?}"
    );
    d.aegis(["instance", "start", "big"]).expect_success();
    d.wait_state("big", InstanceStatus::Running, BOOT);
    let out = d.aegis(["exec", "big", "--", "sh", "-c", "echo alive"]);
    out.expect_success();
    assert!(out.stdout.contains("alive"), "{out}");

    // The next stop saves a whole snapshot, and it restores.
    d.aegis(["instance", "stop", "big"]).expect_success();
    let saved = d.instance("big").unwrap();
    assert!(
        saved.saved_snapshot.is_some(),
        "no snapshot with room on the disk: {saved:?}\n{}",
        d.log_tail()
    );
    d.aegis(["instance", "start", "big"]).expect_success();
    d.wait_state("big", InstanceStatus::Running, BOOT);
    assert_eq!(d.system_lines("big", "restored from the snapshot").len(), 1);
    let out = d.aegis(["exec", "big", "--", "sh", "-c", "ls -l /dev/shm/fill"]);
    out.expect_success();
    d.aegis(["instance", "delete", "big"]).expect_success();
}
