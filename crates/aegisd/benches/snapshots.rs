//! Snapshot benchmark (issue 9), in one run against one daemon with real VMs:
//!
//! - **Time to first byte through the router** of a request to a stopped instance: waking from
//!   a snapshot versus a cold boot (`--snapshot off`), p50/p95/p99 and the ratio of the medians.
//!   Measured from connect until the first byte of the answer; the cold boot includes the guest
//!   server (Python) starting again, as the instance's primary process.
//! - **Snapshot write time and size** of `aegis instance stop` for 256 MiB and 1 GiB guests
//!   (from the snapshot manifest, which records the write time of the memory file).
//!
//! Needs the release binaries (`scripts/build.sh`) and a set-up `~/.aegis` (`./setup.sh`). Run
//! with `cargo bench -p aegisd --bench snapshots`; `AEGIS_BENCH_ROUNDS` (default 5) sets the
//! number of stop/wake rounds per case.

// Benchmark code: a failed unwrap is a failed run.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use aegis_proto::api::InstanceStatus;
use aegis_testkit::{env_usize, free_port, report, wait_until, Daemon};

const BOOT: Duration = Duration::from_secs(180);
const SERVER: &str = "python3 -m http.server 8000 --bind 127.0.0.1 --directory /";

/// Connect, send `GET /`, read the first byte of the answer: the elapsed time.
fn ttfb(port: u16) -> Result<Duration, String> {
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(BOOT)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut first = [0u8; 1];
    s.read_exact(&mut first).map_err(|e| format!("read: {e}"))?;
    let took = started.elapsed();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    if first[0] != b'H' || !rest.starts_with(b"TTP/1.0 200") {
        return Err(format!("not a 200: {:?}", String::from_utf8_lossy(&rest)));
    }
    Ok(took)
}

fn create(d: &Daemon, name: &str, memory: u32, snapshot: &str) -> (String, u16) {
    let port = free_port();
    d.aegis_with_timeout(
        [
            "instance",
            "start",
            "--name",
            name,
            "--idle-pause",
            "never",
            "--memory",
            &memory.to_string(),
            "--snapshot",
            snapshot,
            "--expose",
            &format!("{port}:8000/http"),
            "--",
            "sh",
            "-c",
            SERVER,
        ],
        BOOT,
    )
    .expect_success();
    wait_until(BOOT, &format!("{name} to serve"), || ttfb(port));
    (d.instance(name).unwrap().id, port)
}

fn stop(d: &Daemon, name: &str) {
    d.aegis_with_timeout(["instance", "stop", name], BOOT)
        .expect_success();
    assert_eq!(d.instance(name).unwrap().state, InstanceStatus::Stopped);
}

/// Stops and wakes `rounds` times; returns TTFBs (ms), snapshot write times (ms), sizes (MiB).
fn rounds(d: &Daemon, name: &str, id: &str, port: u16, n: usize) -> [Vec<f64>; 3] {
    let (mut wakes, mut writes, mut sizes) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        stop(d, name);
        let manifest = d
            .home()
            .join("instances")
            .join(id)
            .join("snapshot/manifest.json");
        if let Ok(text) = std::fs::read(&manifest) {
            let m: serde_json::Value = serde_json::from_slice(&text).unwrap();
            writes.push(m["write_ms"].as_f64().unwrap());
            sizes.push(m["size_bytes"].as_f64().unwrap() / (1024.0 * 1024.0));
        }
        let took = ttfb(port).unwrap_or_else(|e| panic!("wake of {name}: {e}\n{}", d.log_tail()));
        wakes.push(took.as_secs_f64() * 1000.0);
    }
    [wakes, writes, sizes]
}

fn main() {
    let n = env_usize("AEGIS_BENCH_ROUNDS", 5);
    let d = Daemon::start();
    println!(
        "snapshots: {n} stop/wake rounds per case, TCG guests, time to first byte via the router"
    );

    let (id, port) = create(&d, "snap256", 256, "on");
    let [restore, writes, sizes] = rounds(&d, "snap256", &id, port, n);
    let [restore_p50, ..] = report("wake from snapshot, 256 MiB: TTFB", restore, "ms");
    report("snapshot write, 256 MiB", writes, "ms");
    report("snapshot size, 256 MiB", sizes, "MiB");
    d.aegis(["instance", "delete", "snap256"]).expect_success();

    let (id, port) = create(&d, "cold256", 256, "off");
    let [cold, _, _] = rounds(&d, "cold256", &id, port, n);
    let [cold_p50, ..] = report("cold boot, 256 MiB: TTFB", cold, "ms");
    d.aegis(["instance", "delete", "cold256"]).expect_success();
    println!(
        "{:<52} {:.1}x faster (p50 cold / p50 snapshot)",
        "wake from snapshot vs cold boot",
        cold_p50 / restore_p50
    );

    let (id, port) = create(&d, "snap1g", 1024, "on");
    let [restore, writes, sizes] = rounds(&d, "snap1g", &id, port, n);
    report("wake from snapshot, 1 GiB: TTFB", restore, "ms");
    report("snapshot write, 1 GiB", writes, "ms");
    report("snapshot size, 1 GiB", sizes, "MiB");
    d.aegis(["instance", "delete", "snap1g"]).expect_success();
}
