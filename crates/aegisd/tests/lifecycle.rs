//! The instance actor's state machine against a fake VMM (`aegis_vmm::fake`): the paths a real VM
//! cannot be made to take on demand — a VMM that does not start, a guest that never answers,
//! a stop while booting, wakes that arrive during one boot, a crash while paused, a restore
//! that fails — driven through the daemon's own instance map and commands, with a real
//! registry, real sealed snapshot files and the real harness on the other end of the control
//! channel.
//!
//! Needs the default image of `./setup.sh` (its digest and base disk; nothing boots it) and the
//! static harness of `scripts/build.sh`.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use aegis_proto::api::{CreateInstance, Instance, InstanceStatus};
use aegis_vmm::fake::{self as fake_vmm, FakeVmm};
use aegis_vmm::{Accelerator, VmmError};
use aegisd::config::{Config, DEFAULT_IMAGE};
use aegisd::images::Images;
use aegisd::lifecycle::boot::{BootEnv, BootError, HARNESS_READY_TIMEOUT};
use aegisd::lifecycle::command::{reply_channel, Command, LifecycleError, StopMode};
use aegisd::lifecycle::instances::{InstanceHandle, Instances};
use aegisd::lifecycle::spec::InstanceSpec;
use aegisd::lifecycle::{Ctx, ExplicitSecrets};
use aegisd::registry::{InstanceRow, Registry};
use aegisd::secrets::SecretStore;
use aegisd::workspaces::WorkspaceStore;

/// Generous: nothing here boots a kernel, but the suite runs beside VM tests on two cores.
const SETTLE: Duration = Duration::from_secs(60);

fn shared_home() -> PathBuf {
    std::env::var_os("AEGIS_TEST_SHARED_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".aegis"))
}

/// The suite's static harness (built by `scripts/build.sh`): the boot packs it into an
/// initramfs, and the fake VMM runs it.
fn static_harness() -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|v| !v.is_empty())
        .map_or_else(|| workspace.join("target"), |dir| workspace.join(dir));
    let harness = target.join("release/guest/aegis-harness");
    assert!(
        harness.is_file(),
        "no static harness at {}: run `scripts/build.sh`",
        harness.display()
    );
    harness
}

/// A daemon core with the fake VMM: its own home (registry, instances, snapshot key), the
/// set-up step's image store.
struct Rig {
    home: tempfile::TempDir,
    vmm: Arc<FakeVmm>,
    instances: Arc<Instances>,
}

impl Rig {
    async fn new(ready_timeout: Duration) -> Rig {
        let home = tempfile::tempdir().unwrap();
        let config = Config {
            home: home.path().to_path_buf(),
            harness: static_harness(),
            stop_grace: Duration::from_secs(5),
            snapshot_default: true,
        };
        // The fake boots no kernel, but the boot still locates one and builds the initramfs.
        std::fs::create_dir_all(config.kernel_dir()).unwrap();
        std::fs::write(config.kernel_dir().join("vmlinuz"), b"not a kernel").unwrap();
        let vmm = Arc::new(FakeVmm::new(config.harness.clone()));
        let registry = Registry::open(&config.database()).unwrap();
        let store = aegis_image::store::ImageStore::open(shared_home().join("images"))
            .expect("open the image store: run `./setup.sh`");
        let ctx = Arc::new(Ctx {
            boot: BootEnv {
                vmm: Arc::clone(&vmm) as Arc<dyn aegis_vmm::Vmm>,
                accelerator: Accelerator::Tcg,
                kernel_dir: config.kernel_dir(),
                harness: config.harness.clone(),
                cache_dir: config.cache_dir(),
                ready_timeout,
            },
            secrets: SecretStore::new(registry.clone(), config.master_key()),
            registry,
            images: Images::new(store, DEFAULT_IMAGE),
            workspaces: WorkspaceStore::new(config.workspaces_dir()),
            policy: Arc::new(ExplicitSecrets),
            config,
        });
        let instances = Instances::load(Arc::clone(&ctx)).await.unwrap();
        Rig {
            home,
            vmm,
            instances,
        }
    }

    /// A new instance of the default image whose primary process sleeps.
    async fn add(&self, snapshot: bool) -> InstanceHandle {
        let request = CreateInstance {
            command: vec!["sleep".to_owned(), "600".to_owned()],
            ..CreateInstance::default()
        };
        let mut spec = InstanceSpec::from_request(&request).unwrap();
        let images = Images::new(
            aegis_image::store::ImageStore::open(shared_home().join("images")).unwrap(),
            DEFAULT_IMAGE,
        );
        let resolved = tokio::task::spawn_blocking(move || {
            images
                .resolve_blocking(DEFAULT_IMAGE, None)
                .unwrap_or_else(|e| {
                    panic!(
                        "default image unavailable ({}): run `./setup.sh`",
                        aegisd::images::error_chain(&e)
                    )
                })
        })
        .await
        .unwrap();
        spec.image_ref = DEFAULT_IMAGE.to_owned();
        spec.image_digest = Some(resolved.digest);
        spec.snapshot = snapshot;
        let row = InstanceRow::created(
            self.instances.new_id(),
            None,
            aegisd::logs::now_ts(),
            serde_json::to_string(&spec).unwrap(),
        );
        self.instances.add(row, spec).await.unwrap()
    }

    fn log(&self, handle: &InstanceHandle) -> String {
        let path = self
            .home
            .path()
            .join("instances")
            .join(&handle.view().id)
            .join("logs.ndjson");
        std::fs::read_to_string(path).unwrap_or_default()
    }

    fn snapshot_dir(&self, handle: &InstanceHandle) -> PathBuf {
        self.home
            .path()
            .join("instances")
            .join(&handle.view().id)
            .join("snapshot")
    }

    /// Stops everything and checks that no fake VM is left running.
    async fn finish(self) {
        self.instances.shutdown_all().await;
        let left = self.vmm.live_pids();
        assert!(left.is_empty(), "VMs left running after shutdown: {left:?}");
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // A failed test leaves no harness (and its sleeping primary) behind.
        for pid in self.vmm.live_pids() {
            fake_vmm::crash(pid);
        }
    }
}

async fn wake(handle: &InstanceHandle) -> Result<(), LifecycleError> {
    handle
        .request(|reply| Command::Wake { reply })
        .await
        .map(drop)
}

async fn stop(handle: &InstanceHandle, mode: StopMode) -> Instance {
    tokio::time::timeout(
        SETTLE,
        handle.request(|reply| Command::Stop { mode, reply }),
    )
    .await
    .expect("the stop did not finish")
    .unwrap()
}

/// Waits until the instance's published view satisfies `pred`.
async fn until(handle: &InstanceHandle, what: &str, pred: impl Fn(&Instance) -> bool) -> Instance {
    let mut watch = handle.watch();
    let seen = tokio::time::timeout(SETTLE, watch.wait_for(|v| pred(v)))
        .await
        .map(|r| r.map(|view| view.clone()));
    match seen {
        Ok(Ok(view)) => view,
        _ => panic!("instance never {what}: {:?}", handle.view()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmm_that_does_not_start_fails_the_wake_with_its_cause_and_the_next_wake_boots() {
    let rig = Rig::new(HARNESS_READY_TIMEOUT).await;
    let x = rig.add(false).await;
    rig.vmm.script.fail_start.store(true, Ordering::SeqCst);
    let err = wake(&x)
        .await
        .expect_err("a wake with a failing VMM succeeded");
    assert!(
        matches!(
            &err,
            LifecycleError::Boot {
                source: BootError::Vmm(VmmError::EarlyExit { .. }),
                ..
            }
        ),
        "not the VMM's failure: {err:?}"
    );
    let text = aegisd::images::error_chain(&err);
    assert!(text.contains("scripted start failure"), "{text}");
    assert!(
        err.hint().is_some_and(|h| h.contains("aegis doctor")),
        "no hint: {:?}",
        err.hint()
    );
    let view = x.view();
    assert_eq!(view.state, InstanceStatus::Stopped);
    assert!(
        view.reason
            .as_deref()
            .is_some_and(|r| r.starts_with("boot failed:") && r.contains("scripted start failure")),
        "{view:?}"
    );
    assert!(rig.log(&x).contains("boot failed:"), "{}", rig.log(&x));

    rig.vmm.script.fail_start.store(false, Ordering::SeqCst);
    wake(&x).await.unwrap();
    let view = x.view();
    assert_eq!(view.state, InstanceStatus::Running, "{view:?}");
    assert_eq!(view.reason, None);
    assert_eq!(rig.vmm.starts(), 2);
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_never_answers_fails_its_boot_after_the_deadline_and_is_killed() {
    let rig = Rig::new(Duration::from_secs(2)).await;
    let x = rig.add(false).await;
    rig.vmm.script.silent.store(true, Ordering::SeqCst);
    let err = wake(&x).await.expect_err("a silent guest booted");
    assert!(
        matches!(
            &err,
            LifecycleError::Boot {
                source: BootError::HarnessTimeout { .. },
                ..
            }
        ),
        "{err:?}"
    );
    let view = x.view();
    assert_eq!(view.state, InstanceStatus::Stopped);
    assert!(
        view.reason
            .as_deref()
            .is_some_and(|r| r.contains("did not answer within 2s")),
        "{view:?}"
    );
    assert!(
        rig.vmm.live_pids().is_empty(),
        "the silent VM was left running"
    );
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_the_boot_cancels_it_and_ends_the_vm() {
    let rig = Rig::new(HARNESS_READY_TIMEOUT).await;
    let x = rig.add(false).await;
    rig.vmm.script.silent.store(true, Ordering::SeqCst);
    let started = x.request(|reply| Command::Start { reply }).await.unwrap();
    assert_eq!(started.state, InstanceStatus::Starting);
    // The VM runs and the boot waits for a harness that will not answer before the deadline.
    let pid = tokio::time::timeout(SETTLE, async {
        loop {
            if let Some(&pid) = rig.vmm.live_pids().first() {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the fake VM never started");
    let view = stop(&x, StopMode::Graceful).await;
    assert_eq!(view.state, InstanceStatus::Stopped, "{view:?}");
    assert_eq!(view.reason.as_deref(), Some("boot cancelled"), "{view:?}");
    assert!(
        !fake_vmm::alive(pid),
        "the VM of the cancelled boot runs on"
    );
    assert!(rig.log(&x).contains("boot cancelled"));
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wakes_that_arrive_during_a_boot_share_it() {
    let rig = Rig::new(HARNESS_READY_TIMEOUT).await;
    let x = rig.add(false).await;
    rig.vmm.script.hold();
    let mut replies = Vec::new();
    for _ in 0..5 {
        let (reply, rx) = reply_channel();
        x.notify(Command::Wake { reply });
        replies.push(rx);
    }
    // The mailbox is first in, first out: once this start is answered, all five wakes were
    // handled, and the held boot cannot have finished.
    let view = x.request(|reply| Command::Start { reply }).await.unwrap();
    assert_eq!(view.state, InstanceStatus::Starting);
    // The boot task reaches the VMM after preparing the disk and initramfs.
    tokio::time::timeout(SETTLE, async {
        while rig.vmm.starts() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the boot never reached the VMM");
    rig.vmm.script.release();
    for (i, rx) in replies.into_iter().enumerate() {
        let link = tokio::time::timeout(SETTLE, rx)
            .await
            .unwrap_or_else(|_| panic!("wake {i} was never answered"))
            .unwrap()
            .unwrap_or_else(|e| panic!("wake {i} failed: {e}"));
        assert!(link.woke, "wake {i} did not see the boot it waited for");
    }
    assert_eq!(rig.vmm.starts(), 1, "the wakes booted more than once");
    assert_eq!(x.view().state, InstanceStatus::Running);
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_paused_stops_the_instance_with_the_cause() {
    let rig = Rig::new(HARNESS_READY_TIMEOUT).await;
    let x = rig.add(false).await;
    wake(&x).await.unwrap();
    let paused = x.request(|reply| Command::Pause { reply }).await.unwrap();
    assert_eq!(paused.state, InstanceStatus::Paused);
    let pid = paused.vmm_pid.expect("a paused instance shows its VMM pid");
    fake_vmm::crash(pid);
    let view = until(&x, "stopped after the crash", |v| {
        v.state == InstanceStatus::Stopped
    })
    .await;
    assert!(
        view.reason
            .as_deref()
            .is_some_and(|r| r.contains("VM exited unexpectedly") && r.contains("signal 9")),
        "{view:?}"
    );
    assert_eq!(view.vmm_pid, None);
    // And it can be woken again: a fresh boot.
    wake(&x).await.unwrap();
    assert_eq!(x.view().state, InstanceStatus::Running);
    assert_eq!(rig.vmm.starts(), 2);
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_that_fails_falls_back_to_a_cold_boot_and_a_good_one_is_used() {
    let rig = Rig::new(HARNESS_READY_TIMEOUT).await;
    let x = rig.add(true).await;
    wake(&x).await.unwrap();
    let stopped = stop(&x, StopMode::Graceful).await;
    assert!(
        stopped.saved_snapshot.is_some(),
        "no snapshot saved: {stopped:?}\n{}",
        rig.log(&x)
    );
    assert!(rig.snapshot_dir(&x).join("memory.sealed").is_file());

    rig.vmm.script.fail_restore.store(true, Ordering::SeqCst);
    wake(&x).await.unwrap();
    let view = x.view();
    assert_eq!(view.state, InstanceStatus::Running, "{view:?}");
    assert_eq!(view.saved_snapshot, None);
    assert_eq!((rig.vmm.restores(), rig.vmm.starts()), (1, 2));
    let log = rig.log(&x);
    assert!(
        log.contains("snapshot discarded, cold-booting instead: the restore failed")
            && log.contains("scripted restore failure"),
        "{log}"
    );
    assert!(
        !rig.snapshot_dir(&x).exists(),
        "the failed snapshot was kept"
    );

    // A snapshot that loads is used (and the sealed memory file read back is what was saved:
    // the fake's restore compares it byte for byte).
    rig.vmm.script.fail_restore.store(false, Ordering::SeqCst);
    let stopped = stop(&x, StopMode::Graceful).await;
    assert!(stopped.saved_snapshot.is_some(), "{stopped:?}");
    wake(&x).await.unwrap();
    assert_eq!(x.view().state, InstanceStatus::Running);
    assert_eq!((rig.vmm.restores(), rig.vmm.starts()), (2, 2));
    assert!(rig.log(&x).contains("restored from the snapshot"));
    rig.finish().await;
}
