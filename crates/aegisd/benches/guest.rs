//! Guest benchmark: cold boot to harness ready, a `run`-style round trip of `true` on a ready VM
//! (exec of `true` until its exit notification), and pause / resume latency. Prints
//! p50/p95/p99. Run with `cargo bench -p aegisd --bench guest` after `./setup.sh`.
//!
//! `AEGIS_BENCH_BOOTS` (default 5) and `AEGIS_BENCH_ROUNDS` (default 50) set the sample sizes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_proto::control::{ExecId, ExecParams, Method, Notification, ProcessSpec, SpawnResult};
use aegis_testkit::{env_usize, report_ms};
use aegis_vmm::qemu::QemuVmm;
use aegis_vmm::{Accelerator, AcceleratorChoice};
use aegisd::control::NotificationSink;
use aegisd::lifecycle::boot::{boot, BootEnv, BootPlan, HARNESS_READY_TIMEOUT};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let home = std::env::var_os("AEGIS_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").expect("HOME")).join(".aegis"));
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let store = aegis_image::store::ImageStore::open(home.join("images")).expect("image store");
    let images = aegisd::images::Images::new(store, aegisd::config::DEFAULT_IMAGE);
    let base = images
        .resolve_blocking(aegisd::config::DEFAULT_IMAGE, None)
        .expect("default image: run ./setup.sh")
        .base;
    let accel = AcceleratorChoice::detect()
        .map(|c| c.accelerator)
        .unwrap_or(Accelerator::Tcg);
    let dir = tempfile::Builder::new()
        .prefix("aegis-b-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let env = BootEnv {
        vmm: Arc::new(QemuVmm::default()),
        accelerator: accel,
        kernel_dir: home.join("kernel"),
        harness: workspace.join("target/release/guest/aegis-harness"),
        cache_dir: dir.path().join("cache"),
        ready_timeout: HARNESS_READY_TIMEOUT,
    };
    println!("accelerator: {accel}");
    let boots = env_usize("AEGIS_BENCH_BOOTS", 5);
    let rounds = env_usize("AEGIS_BENCH_ROUNDS", 50);

    let mut boot_times = Vec::new();
    let mut kept = None;
    for i in 0..boots {
        let vm_dir = dir.path().join(format!("vm{i}"));
        let plan = BootPlan {
            run_dir: vm_dir.join("run"),
            base_image: base.clone(),
            overlay: vm_dir.join("root.qcow2"),
            memory_mib: 512,
            vcpus: 1,
            hostname: "bench".into(),
            egress: true,
            forwards: vec![],
            workspace: None,
        };
        std::fs::create_dir_all(&vm_dir).expect("vm dir");
        let (sink, rx) = mpsc::channel(4096);
        let t = Instant::now();
        let guest = boot(
            &env,
            &plan,
            NotificationSink::new(sink),
            &CancellationToken::new(),
        )
        .await
        .expect("boot");
        boot_times.push(t.elapsed());
        if let Some((old, _)) = kept.replace((guest, rx)) {
            let old: aegisd::lifecycle::boot::Guest = old;
            old.vm.kill(Duration::from_secs(2)).await;
        }
    }
    report_ms("cold boot to harness ready", boot_times);

    let (guest, mut rx) = kept.expect("at least one boot");
    let mut round_trips = Vec::new();
    for i in 0..rounds {
        let params = ExecParams {
            exec_id: ExecId(format!("b{i}")),
            process: ProcessSpec {
                argv: vec!["true".into()],
                ..Default::default()
            },
            stdin: false,
            timeout_ms: None,
            tty: None,
        };
        let t = Instant::now();
        let _: SpawnResult = guest
            .control
            .call(Method::Exec, &params, Duration::from_secs(30))
            .await
            .expect("exec");
        loop {
            match rx.recv().await.expect("notifications") {
                Notification::Exit(e) if e.exec_id == Some(params.exec_id.clone()) => break,
                _ => {}
            }
        }
        round_trips.push(t.elapsed());
    }
    report_ms("run `true` round trip (ready VM)", round_trips);

    let (mut pauses, mut resumes) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        guest.vm.pause().await.expect("pause");
        pauses.push(t.elapsed());
        let t = Instant::now();
        guest.vm.resume().await.expect("resume");
        resumes.push(t.elapsed());
    }
    report_ms("pause", pauses);
    report_ms("resume", resumes);
    guest.vm.kill(Duration::from_secs(2)).await;
}
