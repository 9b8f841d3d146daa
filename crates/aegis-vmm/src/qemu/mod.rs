//! The QEMU backend: one `qemu-system-*` process per VM, started in its own session so it
//! outlives the daemon, driven through QMP, watched through its QMP socket and (while it is our
//! child) its exit status.

pub mod argv;
pub mod bounded;
mod confinement;
mod process;
pub mod qmp;
pub mod virtiofs;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use self::argv::RunFiles;
use self::qmp::Qmp;
use crate::vmm::{
    Capabilities, ControlEndpoint, PortForward, SnapshotInfo, SnapshotSink, SnapshotSource, Vm,
    VmExit, VmSpec, Vmm, VmmError,
};

/// Environment variable overriding the QEMU program.
pub const QEMU_ENV: &str = "AEGIS_QEMU";

/// How long QEMU gets to open its QMP socket after it was started. Start-up is fast (well under a
/// second) even under TCG; this bound only catches a wedged host.
pub const QMP_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long writing a snapshot may take. Measured: ~0.8 s for a 256 MiB guest under TCG; the
/// bound leaves room for several GiB on a slow disk, and a wedged migration is cancelled.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);

/// How long QEMU may take to load a snapshot given with `-incoming`. Measured: ~0.2 s for a
/// 256 MiB guest; the bound only catches a wedged host.
pub const RESTORE_LOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// The name under which the outgoing migration's socket is passed to QEMU.
const MIGRATION_FD_NAME: &str = "aegis-migration";

/// How long QEMU gets to listen on the incoming migration socket. It does within
/// milliseconds; the bound only catches a wedged host.
const MIGRATION_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Buffer of the copies between the migration socket and the snapshot's sink or source: large
/// writes, few system calls (`tokio::io::copy` moves 8 KiB at a time).
const STREAM_BUFFER: usize = 1 << 20;

/// How often a running migration is polled.
const MIGRATION_POLL: Duration = Duration::from_millis(10);

/// The QEMU program for this host's architecture.
pub fn default_program() -> String {
    if let Some(p) = std::env::var_os(QEMU_ENV).filter(|p| !p.is_empty()) {
        return p.to_string_lossy().into_owned();
    }
    if cfg!(target_arch = "aarch64") {
        "qemu-system-aarch64".to_owned()
    } else {
        "qemu-system-x86_64".to_owned()
    }
}

/// Finds `program` in `PATH` (or takes it as a path).
pub fn find_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The QEMU backend.
#[derive(Debug, Clone)]
pub struct QemuVmm {
    program: String,
    identity: std::sync::OnceLock<String>,
    confinement: std::sync::OnceLock<argv::Confinement>,
}

impl QemuVmm {
    /// A backend using `program` (see [`default_program`]).
    pub fn new(program: String) -> QemuVmm {
        QemuVmm {
            program,
            identity: std::sync::OnceLock::new(),
            confinement: std::sync::OnceLock::new(),
        }
    }

    /// Spawns QEMU for `spec` (waiting for a snapshot on its migration socket when `incoming`)
    /// and connects to its QMP socket.
    async fn spawn(&self, spec: &VmSpec, incoming: bool) -> Result<QemuVm, VmmError> {
        let program = find_program(&self.program).ok_or_else(|| VmmError::VmmMissing {
            program: self.program.clone(),
        })?;
        let files = RunFiles::new(&spec.run_dir);
        std::fs::create_dir_all(&spec.run_dir).map_err(|source| VmmError::Io {
            path: spec.run_dir.clone(),
            source,
        })?;
        // The console is opened for appending (so it can be cut while QEMU writes): a new
        // start must not append to the previous boot's.
        for stale in [
            &files.qmp,
            &files.control,
            &files.pid,
            &files.migration,
            &files.console,
        ] {
            let _ = std::fs::remove_file(stale);
        }
        let confinement = self
            .confinement
            .get_or_init(|| confinement::detect(&program));
        let mut args = argv::build(spec, &files, confinement);
        if incoming {
            args.extend(argv::incoming(&files.migration));
        }
        let mut shares = Vec::with_capacity(spec.shares.len());
        for (i, share) in spec.shares.iter().enumerate() {
            match virtiofs::start(share, &spec.run_dir, i).await {
                Ok(daemon) => shares.push(daemon),
                Err(e) => {
                    shares.iter().for_each(virtiofs::Virtiofsd::kill);
                    return Err(e);
                }
            }
        }
        // Until QEMU has connected, a failed start leaves the share daemons waiting for ever.
        let kill_shares = || shares.iter().for_each(virtiofs::Virtiofsd::kill);
        tracing::debug!(program = %program.display(), ?args, "starting qemu");
        let disk_fds = match open_disks(spec) {
            Ok(fds) => fds,
            Err(e) => {
                kill_shares();
                return Err(e);
            }
        };
        let limits = confinement::limits(spec);
        let mut child =
            match process::spawn_detached(&program, &args, &files.qemu_log, &limits, disk_fds) {
                Ok(child) => child,
                Err(e) => {
                    kill_shares();
                    return Err(e);
                }
            };
        let pid = child.id().unwrap_or(0);
        let (exit_tx, exit_rx) = watch::channel(None);
        let deadline = tokio::time::Instant::now() + QMP_READY_TIMEOUT;
        let qmp = loop {
            if let Ok(qmp) = Qmp::connect(&files.qmp).await {
                break qmp;
            }
            if let Ok(Some(status)) = child.try_wait() {
                kill_shares();
                return Err(VmmError::EarlyExit {
                    exit: process::exit_of(status),
                    log: process::log_tail(&files.qemu_log),
                });
            }
            if tokio::time::Instant::now() > deadline {
                let _ = child.start_kill();
                kill_shares();
                return Err(VmmError::NotReady {
                    path: files.qmp.clone(),
                    timeout: QMP_READY_TIMEOUT,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // Our child: its exit status is authoritative, and waiting reaps it.
        let tx = exit_tx.clone();
        tokio::spawn(async move {
            let exit = match child.wait().await {
                Ok(status) => process::exit_of(status),
                Err(_) => VmExit {
                    code: None,
                    signal: None,
                },
            };
            tx.send_if_modified(|cur| set_once(cur, exit));
        });
        Ok(QemuVm::new(
            pid,
            spec.run_dir.clone(),
            files,
            qmp,
            exit_tx,
            exit_rx,
        ))
    }
}

/// Opens the disks of `spec` as [`argv::disk_fds`] lays them out.
fn open_disks(spec: &VmSpec) -> Result<Vec<(std::os::fd::OwnedFd, i32)>, VmmError> {
    let disks: Vec<_> = argv::disks(spec).collect();
    argv::disk_fds(spec)
        .into_iter()
        .map(|fd| {
            let path = &disks[fd.disk].path;
            std::fs::OpenOptions::new()
                .read(true)
                .write(fd.writable)
                .open(path)
                .map(|file| (file.into(), fd.child_fd))
                .map_err(|source| VmmError::Io {
                    path: path.clone(),
                    source,
                })
        })
        .collect()
}

/// Feeds `source` to QEMU's migration socket, which it listens on since its start.
async fn feed_restore(socket: PathBuf, source: SnapshotSource) -> std::io::Result<u64> {
    let deadline = tokio::time::Instant::now() + MIGRATION_CONNECT_TIMEOUT;
    let mut conn = loop {
        match tokio::net::UnixStream::connect(&socket).await {
            Ok(conn) => break conn,
            Err(e) if tokio::time::Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    let mut source = tokio::io::BufReader::with_capacity(STREAM_BUFFER, source);
    let bytes = tokio::io::copy_buf(&mut source, &mut conn).await?;
    conn.shutdown().await?;
    Ok(bytes)
}

/// Waits until QEMU has loaded an incoming snapshot, then lets the vCPUs run.
async fn finish_restore(vm: &QemuVm) -> Result<(), VmmError> {
    let failed = |message: String| VmmError::Snapshot { message };
    let deadline = tokio::time::Instant::now() + RESTORE_LOAD_TIMEOUT;
    loop {
        if let Some(exit) = vm.exit_rx.borrow().clone() {
            return Err(failed(format!(
                "QEMU could not load it ({exit}): {}",
                process::log_tail(&vm.files.qemu_log)
            )));
        }
        let status = match vm.qmp("query-status", Value::Null).await {
            Ok(status) => status,
            // QEMU exits when the load fails; the next round reports how.
            Err(VmmError::Gone(_)) | Err(VmmError::Command { .. })
                if vm.wait_exit(Duration::from_secs(2)).await.is_some() =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        match status.get("status").and_then(Value::as_str).unwrap_or("") {
            // Loaded. The snapshot was taken of a paused VM, so QEMU keeps it paused.
            "paused" | "postmigrate" | "prelaunch" => return vm.resume().await,
            "running" => return Ok(()),
            "inmigrate" | "restore-vm" => {}
            other => return Err(failed(format!("QEMU is in state {other:?} after loading"))),
        }
        if tokio::time::Instant::now() > deadline {
            return Err(failed(format!(
                "not loaded within {}s",
                RESTORE_LOAD_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(MIGRATION_POLL).await;
    }
}

/// `path`, its size and modification time, and the first line of `--version`.
fn identify(program: &Path) -> String {
    let meta = std::fs::metadata(program).ok();
    let size = meta.as_ref().map_or(0, std::fs::Metadata::len);
    let mtime = meta
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let version = version_line(program);
    format!(
        "{} ({size} bytes, mtime {mtime}): {version}",
        program.display()
    )
}

/// The first line of `program --version` (empty when it cannot be run).
fn version_line(program: &Path) -> String {
    std::process::Command::new(program)
        .arg("--version")
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default()
}

impl Default for QemuVmm {
    fn default() -> Self {
        QemuVmm::new(default_program())
    }
}

#[async_trait]
impl Vmm for QemuVmm {
    fn name(&self) -> &'static str {
        "qemu"
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
        Ok(Box::new(self.spawn(spec, false).await?))
    }

    /// Starts QEMU with the same command line as a cold start plus `-incoming unix:<socket>`,
    /// streams `source` into the socket, waits for the load to finish and continues the vCPUs
    /// (`cont` is done here, so the returned VM runs like a freshly started one).
    async fn restore(
        &self,
        spec: &VmSpec,
        source: SnapshotSource,
    ) -> Result<Box<dyn Vm>, VmmError> {
        let vm = self.spawn(spec, true).await?;
        let feeding = tokio::spawn(feed_restore(vm.files.migration.clone(), source));
        let loaded = finish_restore(&vm).await;
        let _ = std::fs::remove_file(&vm.files.migration);
        let fed = if loaded.is_ok() || feeding.is_finished() {
            Some(feeding.await)
        } else {
            feeding.abort();
            None
        };
        let failure = match (loaded, fed) {
            (Ok(()), Some(Ok(Ok(_)))) => None,
            // What stopped the feed says more than QEMU's "load failed".
            (_, Some(Ok(Err(e)))) => Some(VmmError::Snapshot {
                message: format!("cannot pass the state to QEMU: {e}"),
            }),
            (Ok(()), _) => Some(VmmError::Snapshot {
                message: "the state feed ended abnormally".to_owned(),
            }),
            (Err(e), _) => Some(e),
        };
        if let Some(e) = failure {
            vm.kill(Duration::from_secs(2)).await;
            return Err(e);
        }
        Ok(Box::new(vm))
    }

    fn program_identity(&self) -> String {
        self.identity
            .get_or_init(|| match find_program(&self.program) {
                Some(path) => identify(&path),
                None => format!("{} (not found)", self.program),
            })
            .clone()
    }

    fn running_pid(&self, run_dir: &Path) -> Option<u32> {
        let pid = std::fs::read_to_string(RunFiles::new(run_dir).pid)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())?;
        // A recycled pid must not be mistaken for our VM: its command line names our run dir.
        process::is_vmm_of(pid, run_dir).then_some(pid)
    }

    async fn attach(&self, run_dir: &Path) -> Result<Box<dyn Vm>, VmmError> {
        let files = RunFiles::new(run_dir);
        let nothing = || VmmError::NothingToAttach {
            run_dir: run_dir.to_path_buf(),
        };
        let pid = self.running_pid(run_dir).ok_or_else(nothing)?;
        let qmp = Qmp::connect(&files.qmp).await.map_err(|_| nothing())?;
        let (exit_tx, exit_rx) = watch::channel(None);
        Ok(Box::new(QemuVm::new(
            pid,
            run_dir.to_path_buf(),
            files,
            qmp,
            exit_tx,
            exit_rx,
        )))
    }

    async fn create_overlay(&self, base: &Path, overlay: &Path) -> Result<(), VmmError> {
        process::create_overlay(base, overlay).await
    }
}

fn set_once(cur: &mut Option<VmExit>, exit: VmExit) -> bool {
    if cur.is_some() {
        return false;
    }
    *cur = Some(exit);
    true
}

/// A VM run by a QEMU process.
#[derive(Debug)]
pub struct QemuVm {
    pid: u32,
    run_dir: PathBuf,
    files: RunFiles,
    control: ControlEndpoint,
    qmp: Qmp,
    exit_tx: watch::Sender<Option<VmExit>>,
    exit_rx: watch::Receiver<Option<VmExit>>,
}

impl QemuVm {
    fn new(
        pid: u32,
        run_dir: PathBuf,
        files: RunFiles,
        qmp: Qmp,
        exit_tx: watch::Sender<Option<VmExit>>,
        exit_rx: watch::Receiver<Option<VmExit>>,
    ) -> QemuVm {
        // QMP closing means QEMU is gone. For an attached VM that is the only signal we get;
        // confirm with the pid so a closed monitor alone is not taken for a death.
        let mut closed = qmp.closed();
        let tx = exit_tx.clone();
        tokio::spawn(async move {
            while !*closed.borrow() {
                if closed.changed().await.is_err() {
                    return;
                }
            }
            while process::alive(pid) {
                if tx.borrow().is_some() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tx.send_if_modified(|cur| {
                set_once(
                    cur,
                    VmExit {
                        code: None,
                        signal: None,
                    },
                )
            });
        });
        bounded::watch(
            vec![files.console.clone(), files.qemu_log.clone()],
            exit_rx.clone(),
        );
        QemuVm {
            pid,
            control: ControlEndpoint::UnixSocket(files.control.clone()),
            run_dir,
            files,
            qmp,
            exit_tx,
            exit_rx,
        }
    }

    async fn qmp(&self, command: &str, arguments: Value) -> Result<Value, VmmError> {
        if let Some(exit) = self.exit_rx.borrow().clone() {
            return Err(VmmError::Gone(exit));
        }
        self.qmp
            .execute(command, arguments)
            .await
            .map_err(|message| VmmError::Command {
                command: command.to_owned(),
                message,
            })
    }

    async fn wait_exit(&self, timeout: Duration) -> Option<VmExit> {
        let mut rx = self.exit_rx.clone();
        let waited = tokio::time::timeout(timeout, async {
            loop {
                if let Some(exit) = rx.borrow().clone() {
                    return exit;
                }
                if rx.changed().await.is_err() {
                    return VmExit {
                        code: None,
                        signal: None,
                    };
                }
            }
        })
        .await;
        waited.ok()
    }
}

#[async_trait]
impl Vm for QemuVm {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn control(&self) -> &ControlEndpoint {
        &self.control
    }

    fn console_log(&self) -> PathBuf {
        self.files.console.clone()
    }

    fn exited(&self) -> watch::Receiver<Option<VmExit>> {
        self.exit_rx.clone()
    }

    async fn pause(&self) -> Result<(), VmmError> {
        self.qmp("stop", Value::Null).await.map(drop)
    }

    async fn resume(&self) -> Result<(), VmmError> {
        self.qmp("cont", Value::Null).await.map(drop)
    }

    async fn kill(&self, grace: Duration) -> VmExit {
        if let Some(exit) = self.exit_rx.borrow().clone() {
            return exit;
        }
        let _ = self.qmp.execute("quit", Value::Null).await;
        if let Some(exit) = self.wait_exit(grace).await {
            return exit;
        }
        tracing::warn!(pid = self.pid, run_dir = %self.run_dir.display(), "qemu did not quit, killing it");
        process::kill(self.pid);
        match self.wait_exit(Duration::from_secs(5)).await {
            Some(exit) => exit,
            None => {
                let exit = VmExit {
                    code: None,
                    signal: Some(libc::SIGKILL),
                };
                self.exit_tx
                    .send_if_modified(|cur| set_once(cur, exit.clone()));
                exit
            }
        }
    }

    /// `migrate` into one end of a socket pair handed to QEMU over QMP (so QEMU, which may run
    /// as another user, needs no path of ours), copying what arrives into `sink` while
    /// `query-migrate` is polled until the migration completed, failed or ran past
    /// [`SNAPSHOT_TIMEOUT`] (then cancelled).
    async fn snapshot(&self, mut sink: SnapshotSink) -> Result<SnapshotInfo, VmmError> {
        let started = std::time::Instant::now();
        let failed = |message: String| VmmError::Snapshot { message };
        let pair_failed = |e: std::io::Error| failed(format!("creating the migration socket: {e}"));
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(pair_failed)?;
        ours.set_nonblocking(true).map_err(pair_failed)?;
        let conn = tokio::net::UnixStream::from_std(ours).map_err(pair_failed)?;
        self.qmp
            .pass_fd(MIGRATION_FD_NAME, theirs.into())
            .await
            .map_err(|message| VmmError::Command {
                command: "getfd".to_owned(),
                message,
            })?;
        self.qmp(
            "migrate",
            serde_json::json!({ "uri": format!("fd:{MIGRATION_FD_NAME}") }),
        )
        .await?;
        // The copy owns our end of the socket: when the copy fails (the sink's disk is full),
        // the end closes with it, QEMU's next write fails and so does the migration.
        let copying = async {
            let mut conn = tokio::io::BufReader::with_capacity(STREAM_BUFFER, conn);
            let bytes = tokio::io::copy_buf(&mut conn, &mut sink).await?;
            sink.shutdown().await?;
            Ok::<u64, std::io::Error>(bytes)
        };
        let polling = async {
            let deadline = tokio::time::Instant::now() + SNAPSHOT_TIMEOUT;
            loop {
                let info = self.qmp("query-migrate", Value::Null).await?;
                match info.get("status").and_then(Value::as_str).unwrap_or("") {
                    "completed" => return Ok(()),
                    "failed" | "cancelled" => {
                        let desc = info
                            .get("error-desc")
                            .and_then(Value::as_str)
                            .unwrap_or("no reason given");
                        return Err(failed(format!("migration failed: {desc}")));
                    }
                    _ => {}
                }
                if tokio::time::Instant::now() > deadline {
                    let _ = self.qmp("migrate_cancel", Value::Null).await;
                    return Err(failed(format!(
                        "not written within {}s",
                        SNAPSHOT_TIMEOUT.as_secs()
                    )));
                }
                tokio::time::sleep(MIGRATION_POLL).await;
            }
        };
        // Neither side can hang the other: a failed copy breaks QEMU's write and fails the
        // migration; a failed or cancelled migration closes the connection and ends the copy.
        let (copied, polled) = tokio::join!(copying, polling);
        // A failed copy is the cause of the failed migration that follows it.
        let bytes = copied.map_err(|e| failed(format!("cannot store the state: {e}")))?;
        polled?;
        Ok(SnapshotInfo {
            bytes,
            took: started.elapsed(),
        })
    }

    async fn add_forward(&self, forward: PortForward) -> Result<(), VmmError> {
        let line = format!("hostfwd_add {} {}", argv::NETDEV_ID, argv::hostfwd(forward));
        self.qmp
            .human(&line)
            .await
            .map_err(|message| VmmError::Command {
                command: line,
                message,
            })
    }

    async fn remove_forward(&self, forward: PortForward) -> Result<(), VmmError> {
        let line = format!(
            "hostfwd_remove {} tcp:127.0.0.1:{}",
            argv::NETDEV_ID,
            forward.host_port
        );
        self.qmp
            .human(&line)
            .await
            .map_err(|message| VmmError::Command {
                command: line,
                message,
            })
    }
}
