//! A real guest: boots one VM (QEMU, the set-up step's kernel, the default image, our harness as
//! PID 1) and checks what the harness promises over the control channel. The VM is shared by
//! the assertions of `one_guest_end_to_end` because a boot costs seconds under TCG.
//!
//! Needs `./setup.sh` (kernel, default image) and `scripts/build.sh` (static harness).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aegis_proto::control::{
    codes, ExecId, ExecParams, ExitParams, HealthResult, Method, Notification, ProcessSpec,
    SignalParams, SpawnResult, Stream,
};
use aegis_vmm::qemu::QemuVmm;
use aegis_vmm::{Accelerator, AcceleratorChoice};
use aegisd::control::{ControlChannel, NotificationSink};
use aegisd::lifecycle::boot::{boot, BootEnv, BootError, BootPlan, Guest, HARNESS_READY_TIMEOUT};
use aegisd::logs::LineAssembler;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const CALL: Duration = Duration::from_secs(60);

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn shared_home() -> PathBuf {
    std::env::var_os("AEGIS_TEST_SHARED_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".aegis"))
}

fn harness() -> PathBuf {
    let p = workspace().join("target/release/guest/aegis-harness");
    assert!(
        p.is_file(),
        "no static harness at {}: run `scripts/build.sh`",
        p.display()
    );
    p
}

/// The default image's ext4 base, from the image store the set-up step filled.
fn default_base_image() -> PathBuf {
    if let Some(p) = std::env::var_os("AEGIS_TEST_ROOTFS") {
        return PathBuf::from(p);
    }
    let store = aegis_image::store::ImageStore::open(shared_home().join("images"))
        .expect("open the image store: run `./setup.sh`");
    let images = aegisd::images::Images::new(store, aegisd::config::DEFAULT_IMAGE);
    images
        .resolve_blocking(aegisd::config::DEFAULT_IMAGE, None)
        .unwrap_or_else(|e| {
            panic!(
                "default image unavailable ({}): run `./setup.sh`",
                aegisd::images::error_chain(&e)
            )
        })
        .base
}

fn env(dir: &std::path::Path) -> BootEnv {
    BootEnv {
        vmm: Arc::new(QemuVmm::default()),
        accelerator: AcceleratorChoice::detect()
            .map(|c| c.accelerator)
            .unwrap_or(Accelerator::Tcg),
        kernel_dir: shared_home().join("kernel"),
        harness: harness(),
        cache_dir: dir.join("cache"),
        ready_timeout: HARNESS_READY_TIMEOUT,
    }
}

fn plan(dir: &std::path::Path, base: PathBuf) -> BootPlan {
    BootPlan {
        run_dir: dir.join("run"),
        base_image: base,
        overlay: dir.join("root.qcow2"),
        memory_mib: 512,
        vcpus: 1,
        hostname: "guest-test".into(),
        egress: true,
        forwards: vec![],
        workspace: None,
    }
}

/// A process's lines so far and, once it ended, its exit.
type Finished = (Vec<(Stream, String)>, Option<ExitParams>);

/// Collects notifications and answers "what did process X print / how did it end".
struct Outputs {
    rx: mpsc::Receiver<Notification>,
    lines: LineAssembler,
    done: BTreeMap<Option<ExecId>, Finished>,
}

impl Outputs {
    fn new(rx: mpsc::Receiver<Notification>) -> Self {
        Outputs {
            rx,
            lines: LineAssembler::default(),
            done: BTreeMap::new(),
        }
    }

    /// Waits until process `id` exited; returns its lines and exit.
    async fn wait(&mut self, id: Option<ExecId>) -> (Vec<(Stream, String)>, ExitParams) {
        let deadline = tokio::time::Instant::now() + CALL;
        loop {
            if let Some((_, Some(_))) = self.done.get(&id) {
                let (lines, exit) = self.done.remove(&id).unwrap();
                return (lines, exit.unwrap());
            }
            let note = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no exit of {id:?} within {CALL:?}; got so far: {:?}",
                        self.done.get(&id)
                    )
                })
                .expect("notification channel closed");
            match note {
                Notification::Output(o) => {
                    for (text, _) in self.lines.push(o.exec_id.clone(), o.stream, &o.data, o.eol) {
                        self.done
                            .entry(o.exec_id.clone())
                            .or_default()
                            .0
                            .push((o.stream, text));
                    }
                }
                Notification::Activity(_) => {}
                Notification::Exit(e) => {
                    for (stream, text) in self.lines.finish(&e.exec_id) {
                        self.done
                            .entry(e.exec_id.clone())
                            .or_default()
                            .0
                            .push((stream, text));
                    }
                    let key = e.exec_id.clone();
                    self.done.entry(key).or_default().1 = Some(e);
                }
            }
        }
    }
}

async fn exec(control: &ControlChannel, id: &str, argv: &[&str]) -> Option<ExecId> {
    let exec_id = ExecId(id.to_owned());
    let params = ExecParams {
        exec_id: exec_id.clone(),
        process: ProcessSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
        stdin: false,
        timeout_ms: None,
        tty: None,
    };
    let _: SpawnResult = control
        .call(Method::Exec, &params, CALL)
        .await
        .expect("exec");
    Some(exec_id)
}

async fn run_one(
    control: &ControlChannel,
    out: &mut Outputs,
    id: &str,
    argv: &[&str],
) -> (Vec<(Stream, String)>, ExitParams) {
    let exec_id = exec(control, id, argv).await;
    out.wait(exec_id).await
}

fn stdout_of(lines: &[(Stream, String)]) -> Vec<&str> {
    lines
        .iter()
        .filter(|(s, _)| *s == Stream::Stdout)
        .map(|(_, l)| l.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_guest_end_to_end() {
    let dir = tempfile::Builder::new()
        .prefix("aegis-g-")
        .tempdir_in("/tmp")
        .unwrap();
    let (sink, rx) = mpsc::channel(4096);
    let guest: Guest = boot(
        &env(dir.path()),
        &plan(dir.path(), default_base_image()),
        NotificationSink::new(sink),
        &CancellationToken::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("boot failed: {}", aegisd::images::error_chain(&e)));
    let control = guest.control.clone();
    let mut out = Outputs::new(rx);
    assert_eq!(
        guest.health.protocol,
        aegis_proto::control::PROTOCOL_VERSION
    );

    // The primary process through `run`, with env and workdir.
    let run = ProcessSpec {
        argv: vec![
            "sh".into(),
            "-c".into(),
            "echo hello; echo \"$GREETING from $(pwd)\"".into(),
        ],
        env: [("GREETING".to_owned(), "hi".to_owned())].into(),
        workdir: Some("/tmp".into()),
        user: None,
    };
    let _: SpawnResult = control.call(Method::Run, &run, CALL).await.unwrap();
    let (lines, exit) = out.wait(None).await;
    assert_eq!(stdout_of(&lines), ["hello", "hi from /tmp"]);
    assert_eq!((exit.status.code, exit.status.signal), (0, None));

    // echo hello via exec; an exit code; stderr tagged as stderr.
    let (lines, exit) = run_one(&control, &mut out, "e-echo", &["echo", "hello"]).await;
    assert_eq!(stdout_of(&lines), ["hello"]);
    assert_eq!(exit.status.code, 0);
    let (_, exit) = run_one(&control, &mut out, "e-42", &["sh", "-c", "exit 42"]).await;
    assert_eq!(exit.status.code, 42);
    let (lines, _) = run_one(&control, &mut out, "e-err", &["sh", "-c", "echo oops >&2"]).await;
    assert_eq!(lines, vec![(Stream::Stderr, "oops".to_owned())]);

    // Killed by a signal: reported as the signal and 128 + signal.
    let id = exec(&control, "e-sleep", &["sleep", "600"]).await;
    let _: serde_json::Value = control
        .call(
            Method::Signal,
            &SignalParams {
                exec_id: id.clone(),
                signal: 9,
            },
            CALL,
        )
        .await
        .unwrap();
    let (_, exit) = out.wait(id).await;
    assert_eq!((exit.status.code, exit.status.signal), (137, Some(9)));

    // Two concurrent execs, each with its own output.
    let a = exec(&control, "e-a", &["sh", "-c", "sleep 1; echo from-a"]).await;
    let b = exec(&control, "e-b", &["sh", "-c", "echo from-b"]).await;
    let (lb, eb) = out.wait(b).await;
    let (la, ea) = out.wait(a).await;
    assert_eq!(
        (stdout_of(&la), stdout_of(&lb)),
        (vec!["from-a"], vec!["from-b"])
    );
    assert_eq!((ea.status.code, eb.status.code), (0, 0));

    // A 1 MiB line arrives whole; output without a trailing newline arrives too.
    let (lines, _) = run_one(
        &control,
        &mut out,
        "e-big",
        &["python3", "-c", "print('x' * (1 << 20))"],
    )
    .await;
    assert_eq!(lines.len(), 1, "one line expected");
    assert_eq!(lines[0].1.len(), 1 << 20);
    assert!(lines[0].1.bytes().all(|c| c == b'x'));
    let (lines, _) = run_one(&control, &mut out, "e-nonl", &["printf", "no newline"]).await;
    assert_eq!(stdout_of(&lines), ["no newline"]);

    // Hostname, default route, resolv.conf.
    let (lines, _) = run_one(&control, &mut out, "e-host", &["hostname"]).await;
    assert_eq!(stdout_of(&lines), ["guest-test"]);
    let (lines, _) = run_one(
        &control,
        &mut out,
        "e-route",
        &["ip", "route", "show", "default"],
    )
    .await;
    assert!(
        stdout_of(&lines)
            .iter()
            .any(|l| l.starts_with("default via 10.0.2.2")),
        "{lines:?}"
    );
    let (lines, _) = run_one(&control, &mut out, "e-dns", &["cat", "/etc/resolv.conf"]).await;
    assert!(
        stdout_of(&lines).contains(&"nameserver 10.0.2.3"),
        "{lines:?}"
    );

    // Pause then resume keeps a running process alive.
    let counter = exec(
        &control,
        "e-count",
        &[
            "sh",
            "-c",
            "for i in 1 2 3 4 5 6; do echo $i; sleep 0.5; done",
        ],
    )
    .await;
    guest.vm.pause().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await; // a pause that actually lasts
    guest.vm.resume().await.unwrap();
    let (lines, exit) = out.wait(counter).await;
    assert_eq!(stdout_of(&lines), ["1", "2", "3", "4", "5", "6"]);
    assert_eq!(exit.status.code, 0);

    // Zombies are reaped: an orphaned grandchild does not linger.
    let (_, exit) = run_one(
        &control,
        &mut out,
        "e-orphan",
        &["sh", "-c", "(sleep 0.2 &) ; exit 0"],
    )
    .await;
    assert_eq!(exit.status.code, 0);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (lines, _) = run_one(
        &control,
        &mut out,
        "e-zombies",
        &[
            "sh",
            "-c",
            "grep -l '^State:.*Z' /proc/[0-9]*/status | wc -l",
        ],
    )
    .await;
    assert_eq!(stdout_of(&lines), ["0"], "zombie processes remain");

    // Errors: unknown program, unknown exec id. The channel keeps working.
    let bad = ExecParams {
        exec_id: ExecId("e-missing".into()),
        process: ProcessSpec {
            argv: vec!["/no/such".into()],
            ..Default::default()
        },
        stdin: false,
        timeout_ms: None,
        tty: None,
    };
    let err = control
        .call::<SpawnResult>(Method::Exec, &bad, CALL)
        .await
        .unwrap_err();
    assert!(
        matches!(err, aegisd::control::ControlError::Rpc { ref error, .. } if error.code == codes::SPAWN_FAILED),
        "{err}"
    );
    let err = control
        .call::<serde_json::Value>(
            Method::Signal,
            &SignalParams {
                exec_id: Some(ExecId("nope".into())),
                signal: 15,
            },
            CALL,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, aegisd::control::ControlError::Rpc { ref error, .. } if error.code == codes::NO_SUCH_PROCESS),
        "{err}"
    );
    let health: HealthResult = control
        .call(Method::Health, &serde_json::json!({}), CALL)
        .await
        .unwrap();
    assert!(health.uptime_ms > 0);

    // Shutdown stops processes and powers the VM off.
    let _ = exec(&control, "e-long", &["sleep", "600"]).await;
    let _: serde_json::Value = control
        .call(
            Method::Shutdown,
            &aegis_proto::control::ShutdownParams { grace_ms: 1000 },
            CALL,
        )
        .await
        .unwrap();
    let mut exited = guest.vm.exited();
    let exit = tokio::time::timeout(
        Duration::from_secs(60),
        aegis_vmm::wait_for_exit(&mut exited),
    )
    .await
    .expect("the VM powers off after shutdown");
    assert_eq!(exit.signal, None, "{exit}");
}

#[tokio::test]
async fn missing_kernel_is_a_clear_error() {
    let dir = tempfile::Builder::new()
        .prefix("aegis-g-")
        .tempdir_in("/tmp")
        .unwrap();
    let mut env = env(dir.path());
    env.kernel_dir = dir.path().join("no-kernel");
    let (sink, _rx) = mpsc::channel(16);
    let err = boot(
        &env,
        &plan(dir.path(), dir.path().join("x.ext4")),
        NotificationSink::new(sink),
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, BootError::Kernel(_)));
    assert!(
        aegisd::images::error_chain(&err).contains("no guest kernel at"),
        "{err}"
    );
    assert!(err.hint().unwrap().contains("./setup.sh"));
}

#[tokio::test]
async fn missing_qemu_is_a_clear_error() {
    let dir = tempfile::Builder::new()
        .prefix("aegis-g-")
        .tempdir_in("/tmp")
        .unwrap();
    let mut env = env(dir.path());
    env.vmm = Arc::new(QemuVmm::new("qemu-system-does-not-exist".into()));
    let base = dir.path().join("base.ext4");
    std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
    let (sink, _rx) = mpsc::channel(16);
    let err = boot(
        &env,
        &plan(dir.path(), base),
        NotificationSink::new(sink),
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert_eq!(
        aegisd::images::error_chain(&err),
        "cannot start the VM: qemu-system-does-not-exist not found"
    );
    assert!(err.hint().unwrap().contains("qemu-system-x86"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_root_image_fails_boot_with_the_console_reason() {
    let dir = tempfile::Builder::new()
        .prefix("aegis-g-")
        .tempdir_in("/tmp")
        .unwrap();
    let base = dir.path().join("corrupt.ext4");
    std::fs::write(&base, vec![0x5au8; 64 << 20]).unwrap();
    let (sink, _rx) = mpsc::channel(16);
    let started = std::time::Instant::now();
    let err = boot(
        &env(dir.path()),
        &plan(dir.path(), base),
        NotificationSink::new(sink),
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    let text = aegisd::images::error_chain(&err);
    assert!(matches!(err, BootError::DiedDuringBoot { .. }), "{text}");
    assert!(
        text.contains("aegis-harness"),
        "console tail should carry the harness's reason: {text}"
    );
    assert!(started.elapsed() < HARNESS_READY_TIMEOUT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_harness_that_never_answers_times_out() {
    let dir = tempfile::Builder::new()
        .prefix("aegis-g-")
        .tempdir_in("/tmp")
        .unwrap();
    // A static init that never opens the control port.
    let src = dir.path().join("sleeper.c");
    std::fs::write(
        &src,
        "#include <unistd.h>\nint main(void){for(;;)pause();}\n",
    )
    .unwrap();
    let sleeper = dir.path().join("sleeper");
    let status = std::process::Command::new(aegis_testkit::tool("gcc"))
        .args(["-static", "-O2", "-o"])
        .arg(&sleeper)
        .arg(&src)
        .status()
        .expect("cannot run gcc");
    assert!(
        status.success(),
        "gcc -static failed (Debian package libc6-dev)"
    );
    let mut env = env(dir.path());
    env.harness = sleeper;
    env.ready_timeout = Duration::from_secs(20);
    let (sink, _rx) = mpsc::channel(16);
    let err = boot(
        &env,
        &plan(dir.path(), default_base_image()),
        NotificationSink::new(sink),
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, BootError::HarnessTimeout { .. }),
        "{}",
        aegisd::images::error_chain(&err)
    );
    assert!(err
        .to_string()
        .starts_with("the guest harness did not answer within 20s"));
}
