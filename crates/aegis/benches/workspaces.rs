//! Workspace benchmark (issue 7): sequential write and read throughput and the small-file create
//! rate in `/workspace` for each workspace kind, beside the same on the VM's root disk.
//!
//! Targets, each measured inside its own running VM by a Python script that times itself:
//! - **root disk**: a directory on `/` (the qcow2 overlay on the image's ext4 base);
//! - **own volume**: the default workspace, an ext4 volume file on a second virtio-blk disk;
//! - **named directory** and **host directory**: a directory shared over virtio-fs
//!   (`virtiofsd`, `--cache=auto`).
//!
//! One round writes `AEGIS_BENCH_MB` MiB (default 64) of random bytes in 1 MiB writes and
//! fsyncs, drops the guest's page cache, reads the file back, then creates `AEGIS_BENCH_FILES`
//! (default 500) files of 1 KiB and syncs. `AEGIS_BENCH_ROUNDS` (default 5) rounds per target.
//! Rates are printed as p50/p95/p99 where p95 and p99 are the slow end (the rate 95 % / 99 % of
//! rounds reached or beat). The host's page cache is not dropped: a read from a shared directory
//! may be served from it.
//!
//! Needs the release binaries (`scripts/build.sh`), `virtiofsd` and a set-up `~/.aegis`
//! (`./setup.sh`). Run with `cargo bench -p aegis --bench workspaces`.

mod support;

use std::time::Duration;

use aegis_proto::api::InstanceStatus;
use aegis_testkit::{env_usize, print_load, report_rate, Daemon};

use support::{accelerator, wait_state, BOOT};

/// Times one round in the guest and prints `write_s read_s create_s`.
const ROUND: &str = r#"
import os, sys, time
d, mb, files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(d, exist_ok=True)
p = os.path.join(d, "bench.bin")
buf = os.urandom(1 << 20)
t = time.monotonic()
fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
for _ in range(mb):
    os.write(fd, buf)
os.fsync(fd)
os.close(fd)
w = time.monotonic() - t
with open("/proc/sys/vm/drop_caches", "w") as f:
    f.write("3\n")
t = time.monotonic()
fd = os.open(p, os.O_RDONLY)
while os.read(fd, 1 << 20):
    pass
os.close(fd)
r = time.monotonic() - t
os.unlink(p)
sd = os.path.join(d, "small")
os.makedirs(sd, exist_ok=True)
data = b"x" * 1024
t = time.monotonic()
for i in range(files):
    with open(os.path.join(sd, "f%d" % i), "wb") as f:
        f.write(data)
os.sync()
c = time.monotonic() - t
for i in range(files):
    os.unlink(os.path.join(sd, "f%d" % i))
os.rmdir(sd)
print(w, r, c)
"#;

fn main() {
    let mb = env_usize("AEGIS_BENCH_MB", 64);
    let files = env_usize("AEGIS_BENCH_FILES", 500);
    let rounds = env_usize("AEGIS_BENCH_ROUNDS", 5);
    let d = Daemon::start();
    let host_dir = tempfile::tempdir().expect("a host directory");
    println!(
        "workspace benchmark: accelerator {}, {mb} MiB sequential, {files} files of 1 KiB, \
         {rounds} rounds per target",
        accelerator(&d)
    );
    print_load("before");
    let host = host_dir.path().to_str().expect("UTF-8 temp dir").to_owned();
    // (label, instance, --workspace, directory measured in the guest)
    let targets: [(&str, &str, Option<&str>, &str); 4] = [
        (
            "root disk (qcow2 overlay)",
            "bench-vol",
            None,
            "/var/tmp/bench",
        ),
        (
            "own volume (ext4 on virtio-blk)",
            "bench-vol",
            None,
            "/workspace/bench",
        ),
        (
            "named directory (virtio-fs)",
            "bench-named",
            Some("bench-ws"),
            "/workspace/bench",
        ),
        (
            "host directory (virtio-fs)",
            "bench-host",
            Some(host.as_str()),
            "/workspace/bench",
        ),
    ];
    for (_, name, workspace, _) in &targets {
        if d.instance(name).is_ok() {
            continue;
        }
        let mut args = vec![
            "instance",
            "start",
            "--name",
            *name,
            "--idle-pause",
            "never",
        ];
        if let Some(w) = workspace {
            args.extend(["--workspace", *w]);
        }
        args.extend(["--", "sleep", "infinity"]);
        d.aegis(&args).expect_success();
        wait_state(&d, name, InstanceStatus::Running, BOOT);
    }
    for (label, name, _, dir) in &targets {
        let (mut write, mut read, mut create) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let out = d.aegis_with_timeout(
                [
                    "exec",
                    name,
                    "--",
                    "python3",
                    "-c",
                    ROUND,
                    dir,
                    &mb.to_string(),
                    &files.to_string(),
                ],
                Duration::from_secs(600),
            );
            out.expect_success();
            let secs: Vec<f64> = out
                .stdout
                .split_whitespace()
                .map(|s| s.parse().expect("seconds"))
                .collect();
            write.push(mb as f64 / secs[0]);
            read.push(mb as f64 / secs[1]);
            create.push(files as f64 / secs[2]);
        }
        report_rate(&format!("{label}: sequential write"), write, "MiB/s");
        report_rate(&format!("{label}: sequential read"), read, "MiB/s");
        report_rate(&format!("{label}: create 1 KiB files"), create, "files/s");
    }
    print_load("after");
    for (_, name, _, _) in &targets[1..] {
        d.aegis(["instance", "delete", name]).expect_success();
    }
    d.aegis(["workspace", "rm", "bench-ws"]).expect_success();
}
