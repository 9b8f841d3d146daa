//! What one flooding guest costs everyone else: aegisd's resident memory and CPU while one
//! guest writes its log as fast as it can, next to the same daemon idle, and the latency of a
//! healthy instance behind the router in both cases (a new connection per request).
//!
//! `cargo bench -p aegis --bench flood`; `AEGIS_BENCH_REQUESTS` (default 200) sets the number of
//! requests per phase.

use std::time::{Duration, Instant};

use aegis_proto::api::InstanceStatus;
use aegis_testkit::{
    env_usize, free_port, get_status_line, print_load, report_ms, wait_until, Daemon,
};

const BOOT: Duration = Duration::from_secs(150);

fn get(port: u16) -> Result<Duration, String> {
    let t = Instant::now();
    let status = get_status_line(port)?;
    if status.contains(" 200 ") {
        Ok(t.elapsed())
    } else {
        Err(status)
    }
}

/// aegisd's CPU time so far (user + system) and resident memory now.
fn usage(pid: u32) -> (Duration, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("aegisd stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 =
        fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("aegisd status");
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    (Duration::from_millis(ticks * 1000 / hz), rss_kib)
}

/// Latencies of `requests` GETs, with aegisd's CPU share and peak RSS over them.
fn phase(name: &str, pid: u32, port: u16, requests: usize) {
    let (cpu0, _) = usage(pid);
    let t = Instant::now();
    let mut samples = Vec::with_capacity(requests);
    let mut peak = 0;
    for _ in 0..requests {
        samples.push(get(port).unwrap_or_else(|e| panic!("{name}: {e}")));
        peak = peak.max(usage(pid).1);
    }
    let (cpu1, _) = usage(pid);
    let share = (cpu1 - cpu0).as_secs_f64() / t.elapsed().as_secs_f64() * 100.0;
    report_ms(&format!("healthy instance GET /, {name}"), samples);
    println!(
        "{:<52} aegisd CPU {share:.0} % of one core, RSS peak {} MiB",
        "",
        peak >> 10
    );
}

fn main() {
    let requests = env_usize("AEGIS_BENCH_REQUESTS", 200);
    let d = Daemon::start();
    let pid = d.pid().expect("aegisd pid");
    print_load("at start");
    let port = free_port();
    d.aegis([
        "instance",
        "start",
        "--name",
        "healthy",
        "--idle-pause",
        "never",
        "--snapshot",
        "off",
        "--expose",
        &format!("{port}:8000/http"),
        "--",
        "python3",
        "-m",
        "http.server",
        "8000",
        "--bind",
        "127.0.0.1",
    ])
    .expect_success();
    d.wait_state("healthy", InstanceStatus::Running, BOOT);
    wait_until(BOOT, "the healthy instance to serve", || get(port));
    for _ in 0..10 {
        let _ = get(port);
    }
    phase("daemon otherwise idle", pid, port, requests);

    d.aegis([
        "instance",
        "start",
        "--name",
        "flood",
        "--idle-pause",
        "never",
        "--snapshot",
        "off",
        "--",
        "sh",
        "-c",
        "exec yes 'flood flood flood flood flood flood flood flood'",
    ])
    .expect_success();
    d.wait_state("flood", InstanceStatus::Running, BOOT);
    std::thread::sleep(Duration::from_secs(5));
    phase("another guest flooding its log", pid, port, requests);
    let info = d.instance("flood").expect("flood");
    let on_disk = d.log_bytes_on_disk(&info.id);
    println!("flooding instance's logs on disk: {} MiB", on_disk >> 20);
    print_load("at end");
}
