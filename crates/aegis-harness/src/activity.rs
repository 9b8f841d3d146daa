//! The activity heartbeat: every interval ([`ACTIVITY_INTERVAL_MS`] in a guest) an `activity`
//! notification tells the host what the guest did since the previous one, so the daemon can tell
//! an idle guest from a busy one. The daemon decides what counts as idle; the harness only
//! measures.
//!
//! What is measured, from the kernel's own counters:
//! - `cpu_ms`: busy time of all CPUs (`/proc/stat`: user, nice, system, irq, softirq) minus the
//!   harness's own (`/proc/self/stat`: utime + stime of all its threads, so relaying ingress
//!   traffic or sending this heartbeat does not count), in `sysconf(_SC_CLK_TCK)` ticks;
//! - `net_bytes`: received + sent bytes of `eth0` (`/sys/class/net/eth0/statistics`), 0
//!   without it;
//! - `tcp_established`: `ESTABLISHED` entries of `/proc/net/tcp` and `/proc/net/tcp6` (a
//!   loopback connection has two, one per end);
//! - `execs`: execs in the process table (published by the RPC server, which owns it);
//! - `leases`: entries of [`KEEPALIVE_DIR`].
//!
//! Reading the files is done on the blocking pool, so the runtime that serves the control
//! channel never waits on the filesystem. Heartbeats go through the writer like `output` and may
//! be dropped the same way when no host reads (`writer::class_of`).

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aegis_proto::control::{ActivityParams, Notification, ACTIVITY_INTERVAL_MS, KEEPALIVE_DIR};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::channel::writer::OutboxSender;
use crate::console;

/// The guest's `/proc`.
pub const PROC_DIR: &str = "/proc";

/// Counters of the guest's network interface (`eth0`).
pub const ETH0_STATISTICS: &str = "/sys/class/net/eth0/statistics";

/// Mode of [`KEEPALIVE_DIR`]: anyone may take a lease, only its owner may release it.
pub const KEEPALIVE_DIR_MODE: u32 = 0o1777;

/// Mode of the directories created above [`KEEPALIVE_DIR`].
pub const KEEPALIVE_PARENT_MODE: u32 = 0o755;

/// `sysconf(_SC_CLK_TCK)` when sysconf cannot tell (the value on every Linux architecture).
const DEFAULT_CLOCK_TICKS: u64 = 100;

/// Where the measurements come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    /// `/proc` as the harness sees it (its network namespace, itself as `self`).
    pub proc_dir: PathBuf,
    /// The `statistics` directory of the interface whose bytes count; `None`: `net_bytes` is 0.
    pub net_statistics: Option<PathBuf>,
    /// The keepalive lease directory.
    pub keepalive_dir: PathBuf,
}

/// How the heartbeat runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Time between heartbeats.
    pub interval: Duration,
    /// What to read.
    pub sources: Sources,
}

impl Config {
    /// The guest's heartbeat: every [`ACTIVITY_INTERVAL_MS`], `eth0`, [`KEEPALIVE_DIR`].
    pub fn guest() -> Config {
        Config {
            interval: Duration::from_millis(ACTIVITY_INTERVAL_MS),
            sources: Sources {
                proc_dir: PathBuf::from(PROC_DIR),
                net_statistics: Some(PathBuf::from(ETH0_STATISTICS)),
                keepalive_dir: PathBuf::from(KEEPALIVE_DIR),
            },
        }
    }
}

/// Why the keepalive directory could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KeepaliveDirError {
    /// mkdir or chmod failed.
    #[error("cannot create the keepalive lease directory {path}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Something else is in its place.
    #[error("{path} exists and is not a directory: keepalive leases cannot be taken")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
}

/// Creates `dir` with mode 1777 (and missing parents with 0755). Idempotent.
///
/// # Errors
/// [`KeepaliveDirError`] naming the directory.
pub fn create_keepalive_dir(dir: &Path) -> Result<(), KeepaliveDirError> {
    let error = |source| KeepaliveDirError::Create {
        path: dir.to_owned(),
        source,
    };
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(KEEPALIVE_PARENT_MODE)
            .create(parent)
            .map_err(error)?;
    }
    match std::fs::DirBuilder::new()
        .mode(KEEPALIVE_DIR_MODE)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if !dir.is_dir() {
                return Err(KeepaliveDirError::NotADirectory {
                    path: dir.to_owned(),
                });
            }
        }
        Err(e) => return Err(error(e)),
    }
    // mkdir applies the umask and drops the sticky bit on some filesystems: set the mode itself.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(KEEPALIVE_DIR_MODE))
        .map_err(error)
}

/// Monotonic counters, compared between two samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Busy ticks of all CPUs since boot; `None` when `/proc/stat` could not be read.
    pub busy_ticks: Option<u64>,
    /// CPU ticks of the harness itself since it started.
    pub own_ticks: u64,
    /// Bytes received plus sent on the interface since it came up.
    pub net_bytes: u64,
}

/// Values that are reported as they are now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    /// `ESTABLISHED` TCP sockets (IPv4 and IPv6).
    pub tcp_established: u32,
    /// Entries in the keepalive directory.
    pub leases: u32,
}

/// One reading of every source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// Counters, for the delta to the next sample.
    pub counters: Counters,
    /// Gauges, reported as read.
    pub gauges: Gauges,
}

/// Reads every source. Blocking (file reads); a source that cannot be read counts as zero
/// (no `eth0`, IPv6 disabled, no keepalive directory are all normal).
pub fn read_sample(sources: &Sources) -> Sample {
    let read = |path: PathBuf| std::fs::read_to_string(path).ok();
    let proc_dir = &sources.proc_dir;
    let busy_ticks = read(proc_dir.join("stat")).and_then(|text| cpu_busy_ticks(&text));
    let own_ticks = read(proc_dir.join("self/stat"))
        .and_then(|text| process_cpu_ticks(&text))
        .unwrap_or(0);
    let net_bytes = sources.net_statistics.as_ref().map_or(0, |dir| {
        ["rx_bytes", "tx_bytes"]
            .iter()
            .filter_map(|name| read(dir.join(name)))
            .filter_map(|text| text.trim().parse::<u64>().ok())
            .fold(0u64, u64::saturating_add)
    });
    let tcp_established = ["net/tcp", "net/tcp6"]
        .iter()
        .filter_map(|name| read(proc_dir.join(name)))
        .map(|text| count_established(&text))
        .fold(0u32, u32::saturating_add);
    let leases = count_entries(&sources.keepalive_dir);
    Sample {
        counters: Counters {
            busy_ticks,
            own_ticks,
            net_bytes,
        },
        gauges: Gauges {
            tcp_established,
            leases,
        },
    }
}

/// Busy ticks of all CPUs from `/proc/stat`'s aggregate `cpu` line: the sum of user, nice,
/// system, irq and softirq. Idle, iowait and steal (time the hypervisor gave to others) are not
/// work of the guest; guest and guest_nice are already part of user and nice.
pub fn cpu_busy_ticks(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().find(|line| {
        line.split_whitespace()
            .next()
            .is_some_and(|label| label == "cpu")
    })?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle [iowait irq softirq steal guest guest_nice]
    if fields.len() < 4 {
        return None;
    }
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    Some(
        [0, 1, 2, 5, 6]
            .into_iter()
            .map(field)
            .fold(0u64, u64::saturating_add),
    )
}

/// utime + stime (fields 14 and 15) from a `/proc/<pid>/stat` line. The command name (field 2)
/// is in parentheses and may itself contain spaces and parentheses, so fields are counted from
/// the last `)`.
pub fn process_cpu_ticks(pid_stat: &str) -> Option<u64> {
    let after_name = &pid_stat[pid_stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // Field 3 (state) is the first after the name; utime is field 14.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime.saturating_add(stime))
}

/// `ESTABLISHED` (state `01`) entries of a `/proc/net/tcp` or `/proc/net/tcp6` table; the first
/// line is the header.
pub fn count_established(table: &str) -> u32 {
    let count = table
        .lines()
        .skip(1)
        .filter(|line| line.split_whitespace().nth(3) == Some("01"))
        .count();
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// Entries of `dir` (0 when it cannot be read).
pub fn count_entries(dir: &Path) -> u32 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        u32::try_from(entries.filter(Result::is_ok).count()).unwrap_or(u32::MAX)
    })
}

/// The heartbeat for the interval between two samples.
pub fn activity(
    previous: &Counters,
    sample: &Sample,
    interval: Duration,
    execs: u32,
    ticks_per_second: u64,
) -> ActivityParams {
    let now = &sample.counters;
    let busy = match (previous.busy_ticks, now.busy_ticks) {
        (Some(before), Some(after)) => after.saturating_sub(before),
        _ => 0,
    };
    let own = now.own_ticks.saturating_sub(previous.own_ticks);
    let guest_ticks = busy.saturating_sub(own);
    let cpu_ms =
        u64::try_from(u128::from(guest_ticks) * 1000 / u128::from(ticks_per_second.max(1)))
            .unwrap_or(u64::MAX);
    ActivityParams {
        interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
        cpu_ms,
        net_bytes: now.net_bytes.saturating_sub(previous.net_bytes),
        tcp_established: sample.gauges.tcp_established,
        execs,
        leases: sample.gauges.leases,
    }
}

/// `sysconf(_SC_CLK_TCK)`: the unit of `/proc/stat` and `/proc/<pid>/stat` times.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks)
        .ok()
        .filter(|&t| t > 0)
        .unwrap_or(DEFAULT_CLOCK_TICKS)
}

/// Sends a heartbeat every `config.interval`, forever; the first one interval after the start.
pub async fn run(config: Config, outbox: OutboxSender, execs: watch::Receiver<u32>) {
    let ticks_per_second = clock_ticks_per_second();
    let sources = Arc::new(config.sources);
    let Some(mut previous) = sample(&sources).await else {
        return;
    };
    let mut sampled_at = Instant::now();
    if previous.counters.busy_ticks.is_none() {
        console::line(format_args!(
            "cannot read CPU time from {}/stat: heartbeats report cpu_ms 0",
            sources.proc_dir.display()
        ));
    }
    let mut ticker = tokio::time::interval_at(sampled_at + config.interval, config.interval);
    // A heartbeat held up (a full outbox while the host reads slowly) is not made up for with a
    // burst; interval_ms says how long the late one covered.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(current) = sample(&sources).await else {
            return;
        };
        let now = Instant::now();
        let execs = *execs.borrow();
        let params = activity(
            &previous.counters,
            &current,
            now - sampled_at,
            execs,
            ticks_per_second,
        );
        previous = current;
        sampled_at = now;
        outbox.notify(Notification::Activity(params)).await;
    }
}

/// Reads a sample on the blocking pool. `None` only when the runtime is shutting down.
async fn sample(sources: &Arc<Sources>) -> Option<Sample> {
    let sources = Arc::clone(sources);
    tokio::task::spawn_blocking(move || read_sample(&sources))
        .await
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROC_STAT: &str = "\
cpu  4705 356 584 3699 23 0 27 5 7 1
cpu0 1393 280 290 1812 11 0 23 3 0 0
cpu1 3312 76 294 1887 12 0 4 2 7 1
intr 114930548 113199788 3 0 5 263 0 4 [... lots more numbers ...]
ctxt 1990473
btime 1062191376
processes 2915
procs_running 1
procs_blocked 0
";

    #[test]
    fn busy_ticks_sum_user_nice_system_irq_softirq() {
        assert_eq!(cpu_busy_ticks(PROC_STAT), Some(4705 + 356 + 584 + 27));
        // Old kernels: four fields only.
        assert_eq!(cpu_busy_ticks("cpu 10 20 30 40\n"), Some(60));
        // The per-CPU lines are not the aggregate.
        assert_eq!(cpu_busy_ticks("cpu0 1 2 3 4\n"), None);
        assert_eq!(cpu_busy_ticks("cpu 1 2\n"), None);
        assert_eq!(cpu_busy_ticks("cpu 1 2 x 4\n"), None);
        assert_eq!(cpu_busy_ticks(""), None);
    }

    #[test]
    fn process_ticks_are_utime_plus_stime_after_the_name() {
        let stat = "1234 (aegis-harness) S 1 1234 1234 0 -1 4194560 200 0 0 0 37 12 0 0 20 0 3 0 \
                    100 10000000 300 18446744073709551615";
        assert_eq!(process_cpu_ticks(stat), Some(49));
        // A name with spaces and parentheses does not shift the fields.
        let tricky = "77 (a) b (c) d) R 1 77 77 0 -1 0 0 0 0 0 5 6 0 0 20 0 1 0 1 1 1";
        assert_eq!(process_cpu_ticks(tricky), Some(11));
        assert_eq!(process_cpu_ticks("77 (short) R 1 2"), None);
        assert_eq!(process_cpu_ticks("no parenthesis"), None);
    }

    #[test]
    fn established_entries_are_counted_in_both_tables() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:03E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 0F02000A:03E8 0202000A:D431 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
   3: 0100007F:C350 0100007F:1F90 06 00000000:00000000 03:00000DA3 00000000     0        0 0 3 0
";
        assert_eq!(count_established(tcp), 2);
        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:D3A2 01 00000000:00000000 00:00000000 00000000  1000        0 4 1 0 20 4 30 10 -1
";
        assert_eq!(count_established(tcp6), 1);
        // The header alone, or nothing.
        assert_eq!(count_established(tcp.lines().next().unwrap()), 0);
        assert_eq!(count_established(""), 0);
    }

    #[test]
    fn heartbeat_is_the_delta_without_the_harness() {
        let previous = Counters {
            busy_ticks: Some(1000),
            own_ticks: 50,
            net_bytes: 10_000,
        };
        let sample = Sample {
            counters: Counters {
                busy_ticks: Some(1250),
                own_ticks: 60,
                net_bytes: 12_345,
            },
            gauges: Gauges {
                tcp_established: 3,
                leases: 2,
            },
        };
        let params = activity(&previous, &sample, Duration::from_millis(5_003), 4, 100);
        assert_eq!(
            params,
            ActivityParams {
                interval_ms: 5_003,
                cpu_ms: 2_400,
                net_bytes: 2_345,
                tcp_established: 3,
                execs: 4,
                leases: 2,
            }
        );
    }

    #[test]
    fn counters_going_backwards_or_missing_give_zero_not_garbage() {
        let previous = Counters {
            busy_ticks: Some(1000),
            own_ticks: 50,
            net_bytes: 10_000,
        };
        // The interface was re-created (counters reset); the harness used more than the
        // rounding of /proc/stat showed.
        let sample = Sample {
            counters: Counters {
                busy_ticks: Some(1001),
                own_ticks: 55,
                net_bytes: 10,
            },
            gauges: Gauges::default(),
        };
        let params = activity(&previous, &sample, Duration::from_secs(5), 0, 100);
        assert_eq!((params.cpu_ms, params.net_bytes), (0, 0));
        let unreadable = Sample {
            counters: Counters {
                busy_ticks: None,
                ..sample.counters
            },
            ..sample
        };
        assert_eq!(
            activity(&previous, &unreadable, Duration::from_secs(5), 0, 100).cpu_ms,
            0
        );
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "aegis-harness-activity-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn keepalive_dir_is_sticky_and_world_writable_and_leases_are_counted() {
        let root = temp_dir("keepalive");
        let dir = root.join("run/aegis/keepalive");
        create_keepalive_dir(&dir).unwrap();
        create_keepalive_dir(&dir).unwrap(); // idempotent
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o1777);
        // Parents get at most 0755 (less under a stricter umask), never the sticky bit.
        assert_eq!(mode(&root.join("run/aegis")) & !0o755, 0);
        assert_eq!(count_entries(&dir), 0);
        std::fs::write(dir.join("build"), b"").unwrap();
        std::fs::write(dir.join(".hidden"), b"").unwrap();
        std::fs::create_dir(dir.join("sub")).unwrap();
        assert_eq!(count_entries(&dir), 3);
        assert_eq!(count_entries(&root.join("missing")), 0);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn keepalive_path_taken_by_a_file_is_an_error() {
        let root = temp_dir("notdir");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("keepalive"), b"").unwrap();
        assert!(matches!(
            create_keepalive_dir(&root.join("keepalive")),
            Err(KeepaliveDirError::NotADirectory { .. })
        ));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_fake_proc_tree_is_read_whole() {
        let root = temp_dir("proc");
        let proc_dir = root.join("proc");
        std::fs::create_dir_all(proc_dir.join("self")).unwrap();
        std::fs::create_dir_all(proc_dir.join("net")).unwrap();
        std::fs::write(proc_dir.join("stat"), PROC_STAT).unwrap();
        std::fs::write(
            proc_dir.join("self/stat"),
            "1 (init) S 0 1 1 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0 1 1 1",
        )
        .unwrap();
        std::fs::write(
            proc_dir.join("net/tcp"),
            "header\n 0: a b 01 x\n 1: a b 0A x\n",
        )
        .unwrap();
        // No tcp6 (IPv6 disabled): counts as none.
        let stats = root.join("statistics");
        std::fs::create_dir_all(&stats).unwrap();
        std::fs::write(stats.join("rx_bytes"), "100\n").unwrap();
        std::fs::write(stats.join("tx_bytes"), "23\n").unwrap();
        let keepalive = root.join("keepalive");
        std::fs::create_dir_all(&keepalive).unwrap();
        std::fs::write(keepalive.join("job"), b"").unwrap();
        let sources = Sources {
            proc_dir,
            net_statistics: Some(stats),
            keepalive_dir: keepalive,
        };
        assert_eq!(
            read_sample(&sources),
            Sample {
                counters: Counters {
                    busy_ticks: Some(4705 + 356 + 584 + 27),
                    own_ticks: 10,
                    net_bytes: 123,
                },
                gauges: Gauges {
                    tcp_established: 1,
                    leases: 1,
                },
            }
        );
        let without_net = Sources {
            net_statistics: None,
            ..sources
        };
        assert_eq!(read_sample(&without_net).counters.net_bytes, 0);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_real_proc_parses() {
        let sample = read_sample(&Sources {
            proc_dir: PathBuf::from(PROC_DIR),
            net_statistics: None,
            keepalive_dir: PathBuf::from("/nonexistent/aegis/keepalive"),
        });
        assert!(sample.counters.busy_ticks.is_some_and(|t| t > 0));
        assert!(clock_ticks_per_second() > 0);
        assert_eq!(sample.gauges.leases, 0);
    }
}
