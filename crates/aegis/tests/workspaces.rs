//! Workspaces (issue 7), end to end with real VMs: an instance's own volume keeps `/workspace`
//! across stop, start and a daemon restart and goes with the instance; a host directory is
//! shared live both ways and a symlink cannot lead the guest out of it; two instances on one
//! named workspace see each other's files, and the named workspace outlives them.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use aegis_proto::api::{Instance, InstanceStatus, WorkspaceInfo};
use aegis_testkit::{wait_until, Daemon};

const BOOT: Duration = Duration::from_secs(150);

fn wait_state(d: &Daemon, target: &str, state: InstanceStatus) -> Instance {
    d.wait_state(target, state, BOOT)
}

/// `aegis exec TARGET -- sh -c SCRIPT`, expected to succeed; its stdout.
fn sh(d: &Daemon, target: &str, script: &str) -> String {
    let out = d.aegis(["exec", target, "--", "sh", "-c", script]);
    out.expect_success();
    out.stdout.clone()
}

fn workspaces(d: &Daemon) -> Vec<WorkspaceInfo> {
    let out = d.aegis(["workspace", "list", "--json"]);
    out.expect_success();
    serde_json::from_str(&out.stdout).unwrap()
}

#[test]
fn own_volume_survives_stop_start_and_daemon_restart_and_goes_with_the_instance() {
    let mut d = Daemon::start();

    // Bad input is refused before anything is created.
    let out = d.aegis(["run", "--workspace", "./no-such-dir", "--", "true"]);
    out.expect_code(2);
    assert!(out.stderr.contains("is not a directory"), "{}", out.stderr);
    let out = d.aegis(["run", "--workspace-size", "1M", "--", "true"]);
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("out of range"), "{}", out.stderr);
    let out = d.aegis(["run", "--workspace", "a b", "--", "true"]);
    out.expect_code(2);
    assert!(out.stderr.contains("workspace name"), "{}", out.stderr);

    // Snapshots off: every start below is a real boot that mounts the volume again.
    d.aegis([
        "instance",
        "start",
        "--name",
        "vol",
        "--workspace-size",
        "256M",
        "--snapshot",
        "off",
        "--",
        "sleep",
        "infinity",
    ])
    .expect_success();
    let info = wait_state(&d, "vol", InstanceStatus::Running);
    let ws = info.workspace.clone().unwrap();
    assert_eq!((ws.kind.as_str(), ws.size_mb), ("volume", Some(256)));
    let volume = Path::new(&ws.path).to_path_buf();
    assert!(volume.is_file(), "{}", volume.display());

    let mounted = sh(&d, "vol", "grep ' /workspace ' /proc/mounts");
    assert!(mounted.starts_with("/dev/vdb /workspace ext4"), "{mounted}");
    let size_mb: u64 = sh(&d, "vol", "df -m /workspace | tail -1 | awk '{print $2}'")
        .trim()
        .parse()
        .unwrap();
    assert!((200..=256).contains(&size_mb), "{size_mb} MiB");
    sh(
        &d,
        "vol",
        "echo kept > /workspace/a.txt && mkdir -p /workspace/d && echo deep > /workspace/d/b.txt",
    );

    d.aegis(["instance", "stop", "vol"]).expect_success();
    wait_state(&d, "vol", InstanceStatus::Stopped);
    d.aegis(["instance", "start", "vol"]).expect_success();
    wait_state(&d, "vol", InstanceStatus::Running);
    assert_eq!(
        sh(&d, "vol", "cat /workspace/a.txt /workspace/d/b.txt"),
        "kept\ndeep\n"
    );

    // A daemon restart re-attaches the running VM; a later boot finds the volume again.
    d.restart();
    wait_state(&d, "vol", InstanceStatus::Running);
    assert_eq!(sh(&d, "vol", "cat /workspace/a.txt"), "kept\n");
    d.aegis(["instance", "restart", "vol"]).expect_success();
    wait_state(&d, "vol", InstanceStatus::Running);
    assert_eq!(sh(&d, "vol", "cat /workspace/a.txt"), "kept\n");
    let text = d.aegis(["instance", "info", "vol"]);
    assert!(
        text.stdout.contains("own volume, 256 MiB"),
        "{}",
        text.stdout
    );

    d.aegis(["instance", "delete", "vol"]).expect_success();
    assert!(!volume.exists(), "the volume outlived its instance");
}

#[test]
fn shared_directories_host_and_named() {
    let d = Daemon::start();
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let canary = format!("HOST-ONLY-{}", std::process::id());
    std::fs::write(outside.join("secret.txt"), &canary).unwrap();
    std::os::unix::fs::symlink("../outside/secret.txt", ws.join("rel")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), ws.join("abs")).unwrap();
    std::os::unix::fs::symlink("..", ws.join("up")).unwrap();
    std::fs::write(ws.join("from-host.txt"), "hello guest\n").unwrap();

    // Relative to the CLI's working directory, not the daemon's.
    d.aegis_in(
        tmp.path(),
        [
            "instance",
            "start",
            "--name",
            "hostdir",
            "--workspace",
            "./ws",
            "--",
            "sleep",
            "infinity",
        ],
    )
    .expect_success();
    let info = wait_state(&d, "hostdir", InstanceStatus::Running);
    let view = info.workspace.unwrap();
    assert_eq!(view.kind, "host");
    assert_eq!(Path::new(&view.path), ws.canonicalize().unwrap());

    assert_eq!(
        sh(&d, "hostdir", "cat /workspace/from-host.txt"),
        "hello guest\n"
    );
    sh(
        &d,
        "hostdir",
        "echo from guest > /workspace/g.txt && mkdir /workspace/gd",
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("g.txt")).unwrap(),
        "from guest\n"
    );
    // Files the guest's root creates belong to the daemon's user on the host.
    assert_eq!(
        std::fs::metadata(ws.join("g.txt")).unwrap().uid(),
        std::fs::metadata(tmp.path()).unwrap().uid()
    );
    assert!(ws.join("gd").is_dir());
    // A host edit shows up in the running guest.
    std::fs::write(ws.join("from-host.txt"), "edited on the host\n").unwrap();
    wait_until(
        Duration::from_secs(20),
        "the host edit to reach the guest",
        || {
            let now = sh(&d, "hostdir", "cat /workspace/from-host.txt");
            if now == "edited on the host\n" {
                Ok(())
            } else {
                Err(now)
            }
        },
    );

    // Symlinks resolve inside the guest: none leads to the host file next to the workspace.
    let escape = d.aegis([
        "exec",
        "hostdir",
        "--",
        "sh",
        "-c",
        "cat /workspace/rel; cat /workspace/abs; cat /workspace/up/outside/secret.txt; \
         cat /workspace/../outside/secret.txt; ls -a /workspace/up/; echo done",
    ]);
    escape.expect_success();
    assert!(escape.stdout.contains("done"), "{}", escape.stdout);
    assert!(
        !escape.stdout.contains(&canary) && !escape.stderr.contains(&canary),
        "the guest read a host file outside its workspace:\n{}",
        escape.stdout
    );
    assert!(escape.stderr.contains("No such file"), "{}", escape.stderr);
    // `up` is the guest's own root directory, not the host's.
    assert!(escape.stdout.contains("workspace"), "{}", escape.stdout);

    // Two instances on one named workspace, created on first use.
    for name in ["n1", "n2"] {
        d.aegis([
            "instance",
            "start",
            "--name",
            name,
            "--workspace",
            "shared",
            "--",
            "sleep",
            "infinity",
        ])
        .expect_success();
    }
    wait_state(&d, "n1", InstanceStatus::Running);
    wait_state(&d, "n2", InstanceStatus::Running);
    sh(&d, "n1", "echo one > /workspace/one");
    assert_eq!(sh(&d, "n2", "cat /workspace/one"), "one\n");
    sh(&d, "n2", "echo two > /workspace/two");
    assert_eq!(sh(&d, "n1", "cat /workspace/two"), "two\n");

    let listed = workspaces(&d);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].name, "shared");
    assert_eq!(listed[0].kind, "directory");
    assert_eq!(listed[0].instances, ["n1", "n2"]);
    let data = Path::new(&listed[0].path).to_path_buf();
    let table = d.aegis(["workspace", "list"]);
    assert!(
        table.stdout.contains("shared") && table.stdout.contains("n1, n2"),
        "{}",
        table.stdout
    );

    let refused = d.aegis(["workspace", "rm", "shared"]);
    assert_ne!(refused.code, Some(0));
    assert!(
        refused.stderr.contains("is used by n1, n2"),
        "{}",
        refused.stderr
    );

    // Deleting the instances keeps the named workspace and the host directory.
    for name in ["n1", "n2", "hostdir"] {
        d.aegis(["instance", "delete", name]).expect_success();
    }
    assert_eq!(std::fs::read_to_string(data.join("two")).unwrap(), "two\n");
    assert_eq!(workspaces(&d)[0].instances, Vec::<String>::new());
    assert!(ws.join("g.txt").is_file() && outside.join("secret.txt").is_file());

    d.aegis(["workspace", "rm", "shared"]).expect_success();
    assert!(workspaces(&d).is_empty());
    assert!(!data.exists());
    let out = d.aegis(["workspace", "rm", "shared"]);
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("no workspace named"), "{}", out.stderr);
}
