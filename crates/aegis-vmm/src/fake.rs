//! A [`Vmm`] for tests that boots no VM (feature `fake`): each "VM" is the real guest harness
//! (any build of it) run on the host with
//! `--stdio`, its control channel bridged to the unix socket the daemon connects to, so the
//! actor talks the real control protocol to a real harness. Pausing is SIGSTOP, a crash is
//! SIGKILL of the harness and everything it started, and a snapshot is a known byte pattern
//! that a restore checks (so the sealing of the memory file is exercised both ways).
//!
//! The test scripts the failures through [`Script`]: a VMM that does not start, a guest that
//! never answers, a restore that fails, a start held until the test releases it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::{
    Capabilities, ControlEndpoint, PortForward, SnapshotInfo, SnapshotSink, SnapshotSource, Vm,
    VmExit, VmSpec, Vmm, VmmError,
};
use async_trait::async_trait;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::watch;

/// What the next starts and restores do; changed by the test between steps.
#[derive(Debug)]
pub struct Script {
    /// `start` fails as a VMM that exits during start-up does.
    pub fail_start: AtomicBool,
    /// The "VM" is a process that never answers its control channel.
    pub silent: AtomicBool,
    /// `restore` fails as a state that does not load does.
    pub fail_restore: AtomicBool,
    /// While true, `start` waits (after counting itself) until it is set false.
    held: watch::Sender<bool>,
}

impl Script {
    /// Holds every start until [`Script::release`].
    pub fn hold(&self) {
        self.held.send_replace(true);
    }

    /// Lets held starts go on.
    pub fn release(&self) {
        self.held.send_replace(false);
    }
}

/// The fake backend. Counts what it was asked to do and keeps the pid of every VM it started.
#[derive(Debug)]
pub struct FakeVmm {
    harness: PathBuf,
    /// The failures to play.
    pub script: Script,
    starts: AtomicUsize,
    restores: AtomicUsize,
    pids: Mutex<Vec<u32>>,
}

/// The bytes a fake VM's snapshot holds: a pattern long enough to span many sealed chunks.
fn state_bytes() -> Vec<u8> {
    let mut bytes = b"fake VM state v1\n".to_vec();
    bytes.extend((0..(1u32 << 20)).map(|i| u8::try_from(i.wrapping_mul(31) % 251).unwrap_or(0)));
    bytes
}

impl FakeVmm {
    /// A backend whose VMs run `harness --stdio`.
    pub fn new(harness: PathBuf) -> FakeVmm {
        FakeVmm {
            harness,
            script: Script {
                fail_start: AtomicBool::new(false),
                silent: AtomicBool::new(false),
                fail_restore: AtomicBool::new(false),
                held: watch::Sender::new(false),
            },
            starts: AtomicUsize::new(0),
            restores: AtomicUsize::new(0),
            pids: Mutex::new(Vec::new()),
        }
    }

    /// How often `start` was called.
    pub fn starts(&self) -> usize {
        self.starts.load(Ordering::SeqCst)
    }

    /// How often `restore` was called.
    pub fn restores(&self) -> usize {
        self.restores.load(Ordering::SeqCst)
    }

    /// Pids of the VMs started so far that still run (not reaped).
    pub fn live_pids(&self) -> Vec<u32> {
        let pids = self
            .pids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        pids.iter().copied().filter(|&pid| alive(pid)).collect()
    }

    async fn launch(&self, spec: &VmSpec) -> Result<Box<dyn Vm>, VmmError> {
        let silent = self.script.silent.load(Ordering::SeqCst);
        let vm = FakeVm::spawn(&spec.run_dir, &self.harness, silent).await?;
        self.pids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(vm.pid);
        Ok(Box::new(vm))
    }
}

#[async_trait]
impl Vmm for FakeVmm {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            pause_resume: true,
            snapshot: true,
            port_forwarding: true,
            runtime_port_forwarding: true,
        }
    }

    async fn start(&self, spec: &VmSpec) -> Result<Box<dyn Vm>, VmmError> {
        self.starts.fetch_add(1, Ordering::SeqCst);
        let mut held = self.script.held.subscribe();
        let _ = held.wait_for(|held| !*held).await;
        if self.script.fail_start.load(Ordering::SeqCst) {
            return Err(VmmError::EarlyExit {
                exit: VmExit {
                    code: Some(1),
                    signal: None,
                },
                log: "fake: scripted start failure".to_owned(),
            });
        }
        self.launch(spec).await
    }

    async fn attach(&self, run_dir: &Path) -> Result<Box<dyn Vm>, VmmError> {
        Err(VmmError::NothingToAttach {
            run_dir: run_dir.to_path_buf(),
        })
    }

    async fn restore(
        &self,
        spec: &VmSpec,
        mut source: SnapshotSource,
    ) -> Result<Box<dyn Vm>, VmmError> {
        self.restores.fetch_add(1, Ordering::SeqCst);
        let mut state = Vec::new();
        source
            .read_to_end(&mut state)
            .await
            .map_err(|e| VmmError::Snapshot {
                message: format!("fake: cannot read the state: {e}"),
            })?;
        if state != state_bytes() {
            return Err(VmmError::Snapshot {
                message: format!("fake: the state read back differs ({} bytes)", state.len()),
            });
        }
        if self.script.fail_restore.load(Ordering::SeqCst) {
            return Err(VmmError::Snapshot {
                message: "fake: scripted restore failure".to_owned(),
            });
        }
        self.launch(spec).await
    }

    fn program_identity(&self) -> String {
        "fake 1".to_owned()
    }

    async fn create_overlay(&self, base: &Path, overlay: &Path) -> Result<(), VmmError> {
        if !base.is_file() {
            return Err(VmmError::CreateDisk {
                path: overlay.to_path_buf(),
                base: base.to_path_buf(),
                message: "no base".to_owned(),
            });
        }
        std::fs::write(overlay, b"fake overlay").map_err(|source| VmmError::Io {
            path: overlay.to_path_buf(),
            source,
        })
    }
}

/// One fake VM: a host process and the bridge from its stdin/stdout to the control socket.
#[derive(Debug)]
struct FakeVm {
    pid: u32,
    control: ControlEndpoint,
    console: PathBuf,
    exited: watch::Receiver<Option<VmExit>>,
}

impl FakeVm {
    async fn spawn(run_dir: &Path, harness: &Path, silent: bool) -> Result<FakeVm, VmmError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| VmmError::Io { path, source }
        };
        std::fs::create_dir_all(run_dir).map_err(io(run_dir))?;
        let socket = run_dir.join("control.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).map_err(io(&socket))?;
        let console = run_dir.join("console.log");
        let console_file = std::fs::File::create(&console).map_err(io(&console))?;
        // A silent guest: a process that reads nothing and writes nothing.
        let mut command = if silent {
            let mut c = tokio::process::Command::new("sleep");
            c.arg("600");
            c
        } else {
            let mut c = tokio::process::Command::new(harness);
            c.arg("--stdio");
            c
        };
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(console_file)
            .spawn()
            .map_err(|source| VmmError::Spawn {
                program: harness.display().to_string(),
                source,
            })?;
        let pid = child.id().unwrap_or(0);
        let (mut stdin, mut stdout) = (
            child.stdin.take().expect("piped stdin"),
            child.stdout.take().expect("piped stdout"),
        );
        let (exit_tx, exited) = watch::channel(None);
        tokio::spawn(async move {
            let status = child.wait().await;
            let exit = match status {
                Ok(status) => {
                    use std::os::unix::process::ExitStatusExt;
                    VmExit {
                        code: status.code(),
                        signal: status.signal(),
                    }
                }
                Err(_) => VmExit {
                    code: None,
                    signal: None,
                },
            };
            exit_tx.send_replace(Some(exit));
        });
        let mut gone = exited.clone();
        tokio::spawn(async move {
            let bridge = async {
                // One connection at a time, as the VMM's chardev serves the port.
                while let Ok((conn, _)) = listener.accept().await {
                    let (mut from_daemon, mut to_daemon) = conn.into_split();
                    tokio::select! {
                        _ = tokio::io::copy(&mut from_daemon, &mut stdin) => {}
                        _ = tokio::io::copy(&mut stdout, &mut to_daemon) => {}
                    }
                }
            };
            tokio::select! {
                () = bridge => {}
                _ = gone.wait_for(Option::is_some) => {}
            }
        });
        Ok(FakeVm {
            pid,
            control: ControlEndpoint::UnixSocket(socket),
            console,
            exited,
        })
    }
}

#[async_trait]
impl Vm for FakeVm {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn control(&self) -> &ControlEndpoint {
        &self.control
    }

    fn console_log(&self) -> PathBuf {
        self.console.clone()
    }

    fn exited(&self) -> watch::Receiver<Option<VmExit>> {
        self.exited.clone()
    }

    async fn pause(&self) -> Result<(), VmmError> {
        signal(self.pid, Signal::SIGSTOP)
    }

    async fn resume(&self) -> Result<(), VmmError> {
        signal(self.pid, Signal::SIGCONT)
    }

    async fn kill(&self, grace: Duration) -> VmExit {
        crash(self.pid);
        let mut exited = self.exited.clone();
        tokio::time::timeout(grace, crate::wait_for_exit(&mut exited))
            .await
            .unwrap_or(VmExit {
                code: None,
                signal: None,
            })
    }

    async fn snapshot(&self, mut sink: SnapshotSink) -> Result<SnapshotInfo, VmmError> {
        let state = state_bytes();
        let failed = |e: std::io::Error| VmmError::Snapshot {
            message: format!("fake: cannot write the state: {e}"),
        };
        sink.write_all(&state).await.map_err(failed)?;
        sink.shutdown().await.map_err(failed)?;
        Ok(SnapshotInfo {
            bytes: u64::try_from(state.len()).unwrap_or(u64::MAX),
            took: Duration::from_millis(1),
        })
    }

    async fn add_forward(&self, _forward: PortForward) -> Result<(), VmmError> {
        Ok(())
    }

    async fn remove_forward(&self, _forward: PortForward) -> Result<(), VmmError> {
        Ok(())
    }
}

fn signal(pid: u32, signal: Signal) -> Result<(), VmmError> {
    kill(Pid::from_raw(i32::try_from(pid).unwrap_or(0)), signal).map_err(|e| VmmError::Command {
        command: format!("{signal:?}"),
        message: e.to_string(),
    })
}

/// Whether `pid` runs (a zombie, exited but not reaped, counts as gone).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Kills a fake VM as a host crash would: the harness and every process it started (they
/// are the guest's processes; on a real host they die with the VM).
pub fn crash(pid: u32) {
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        tree.extend(children(tree[i]));
        i += 1;
    }
    for pid in tree {
        let _ = signal(pid, Signal::SIGKILL);
    }
}

fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}
