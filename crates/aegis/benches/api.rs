//! API and CLI benchmark (issue 3): p50/p95/p99 of
//!
//! - `aegis exec <warm instance> -- true` end to end: the release CLI binary spawned, its request
//!   to the daemon, the exec in the guest, the exit code streamed back, the process reaped;
//! - `aegis instance info <id>`: the same CLI process and one API call, without the VM, to tell
//!   the CLI's own share of the exec figure;
//! - `GET /v1/instances/{id}` with `aegis_client::Client` (a new unix-socket connection per
//!   request, JSON decoded), an API round trip that does not touch the VM;
//!
//! with 1 and with 100 instances registered. Two daemons run side by side, one per registry size,
//! each with one warm instance (`sleep infinity`, `--idle-pause never`), and the samples
//! alternate between them, so that load from elsewhere on the machine hits both alike. The 99
//! other instances of the second daemon are created through the API and disabled at once (their
//! boot is cancelled): real registry rows with their actors, overlays and log files, but no VM
//! (100 VMs of 512 MiB do not fit a development machine under TCG, and a stopped instance is what
//! an idle fleet mostly is).
//!
//! Needs the release binaries (`scripts/build.sh`) and a set-up `~/.aegis` (`./setup.sh`). Run
//! with `cargo bench -p aegis --bench api`. Sample sizes: `AEGIS_BENCH_EXECS` (default 50: CLI
//! runs per measure) and `AEGIS_BENCH_GETS` (default 1000: API round trips per measure).

mod support;

use std::time::{Duration, Instant};

use aegis_client::{Client, InstanceAction};
use aegis_proto::api::{CreateInstance, IdleTimeout, InstanceStatus};
use aegis_testkit::{env_usize, print_load, report_ms, Daemon};

use support::{release_cli, time_cli, wait_state, BOOT};

/// Deadline of one CLI run that does not boot anything.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// Instances registered in the second round.
const FLEET: usize = 100;
/// Unmeasured runs before each measure (connection set-up, page cache, the guest's first exec).
const WARM_UP: usize = 3;

/// Which daemon goes first in a round: they take turns, so that neither always runs right after
/// the other.
fn order(round: usize) -> [usize; 2] {
    if round.is_multiple_of(2) {
        [0, 1]
    } else {
        [1, 0]
    }
}

/// One daemon under test: its warm instance and a client.
struct Setup {
    daemon: Daemon,
    client: Client,
    warm: String,
    registered: usize,
}

fn main() {
    let execs = env_usize("AEGIS_BENCH_EXECS", 50);
    let gets = env_usize("AEGIS_BENCH_GETS", 1000);
    let cli = release_cli();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");

    let (small, large) = (Daemon::start(), Daemon::start());
    println!("accelerator: {}", support::accelerator(&small));
    print_load("at start");
    let t = Instant::now();
    for d in [&small, &large] {
        d.aegis([
            "instance",
            "start",
            "--name",
            "bench-warm",
            "--idle-pause",
            "never",
            "--",
            "sleep",
            "infinity",
        ])
        .expect_success();
    }
    let mut setups = Vec::new();
    for (daemon, registered) in [(small, 1), (large, FLEET)] {
        let warm = wait_state(&daemon, "bench-warm", InstanceStatus::Running, BOOT).id;
        let client = Client::new(daemon.socket());
        setups.push(Setup {
            daemon,
            client,
            warm,
            registered,
        });
    }
    println!(
        "two warm instances running after {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let large = &setups[1];
    runtime.block_on(async {
        for i in 1..FLEET {
            let body = CreateInstance {
                handle: Some(format!("bench-idle-{i:03}")),
                command: vec!["sleep".into(), "infinity".into()],
                idle_pause: Some(IdleTimeout::Text("never".into())),
                ..Default::default()
            };
            let created = large
                .client
                .create_instance(&body)
                .await
                .unwrap_or_else(|e| panic!("create bench-idle-{i:03}: {e}"));
            large
                .client
                .instance_action(&created.instance.id, InstanceAction::Disable)
                .await
                .unwrap_or_else(|e| panic!("disable bench-idle-{i:03}: {e}"));
        }
    });
    println!(
        "created and disabled {} instances in {:.1} s",
        FLEET - 1,
        t.elapsed().as_secs_f64()
    );
    for setup in &setups {
        let registered = runtime
            .block_on(setup.client.list_instances(None))
            .expect("list instances");
        let stopped = registered
            .iter()
            .filter(|i| i.state == InstanceStatus::Stopped)
            .count();
        assert_eq!(registered.len(), setup.registered, "instances registered");
        assert_eq!(stopped, setup.registered - 1, "instances stopped");
    }

    // Exec and info through the CLI, interleaved across both daemons.
    let exec_args = |s: &Setup| {
        [
            "exec".to_owned(),
            s.warm.clone(),
            "--".into(),
            "true".into(),
        ]
    };
    let info_args = |s: &Setup| ["instance".to_owned(), "info".into(), s.warm.clone()];
    let mut exec_times = vec![Vec::new(), Vec::new()];
    let mut info_times = vec![Vec::new(), Vec::new()];
    for round in 0..WARM_UP + execs {
        for i in order(round) {
            let s = &setups[i];
            let exec = time_cli(&s.daemon, &cli, &exec_args(s), CLI_TIMEOUT);
            let info = time_cli(&s.daemon, &cli, &info_args(s), CLI_TIMEOUT);
            if round >= WARM_UP {
                exec_times[i].push(exec);
                info_times[i].push(info);
            }
        }
    }
    for (s, times) in setups.iter().zip(exec_times) {
        report_ms(
            &format!("`aegis exec <warm> -- true`, {} registered", s.registered),
            times,
        );
    }
    for (s, times) in setups.iter().zip(info_times) {
        report_ms(
            &format!("`aegis instance info <id>`, {} registered", s.registered),
            times,
        );
    }

    // The API round trip, interleaved likewise.
    let get_times = runtime.block_on(async {
        let mut times = vec![Vec::with_capacity(gets), Vec::with_capacity(gets)];
        for round in 0..WARM_UP + gets {
            for i in order(round) {
                let s = &setups[i];
                let t = Instant::now();
                let instance = s.client.instance(&s.warm).await.expect("GET instance");
                let elapsed = t.elapsed();
                assert_eq!(instance.id, s.warm);
                if round >= WARM_UP {
                    times[i].push(elapsed);
                }
            }
        }
        times
    });
    for (s, times) in setups.iter().zip(get_times) {
        report_ms(
            &format!("GET /v1/instances/{{id}}, {} registered", s.registered),
            times,
        );
    }
    print_load("at end");
}
