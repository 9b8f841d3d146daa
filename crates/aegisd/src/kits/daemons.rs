//! Instance daemons: the host processes a kit declares, one per declared daemon per instance,
//! supervised by `aegisd`.
//!
//! - They run while their instance is enabled, whatever its VM does: started when the instance
//!   is created, started or re-enabled, and when `aegisd` starts; stopped when it is disabled or
//!   deleted and when `aegisd` shuts down. A paused or idle-stopped VM does not stop them.
//! - A daemon that exits is started again after a backoff delay ([`RestartPolicy`]); after
//!   [`RestartPolicy::max_fast_crashes`] exits in a row, each within
//!   [`RestartPolicy::fast_window`] of its start, Aegis gives up with a system log line until
//!   the instance is started again.
//! - Each runs in its own process group in the instance's config directory
//!   (`~/.aegis/kits/HANDLE/`) with the environment of [`daemon_env`], stdin closed, stdout and
//!   stderr captured into the instance's log (source `daemon`, field `daemon` = its name). It
//!   gets SIGTERM when `aegisd` dies, however it dies (`PR_SET_PDEATHSIG`), so a daemon never
//!   outlives the supervisor that would restart it twice.
//! - Config changes: the config directory is checked every [`CONFIG_POLL_INTERVAL`]; when a file
//!   in it (or one level below) was added, removed or changed, the daemon gets SIGHUP.
//! - API access: the daemons of an instance share one socket scoped to that instance (its
//!   `AEGIS_SOCKET`), bound when the first of them starts and removed when they are stopped.
//!   Binding it is left to a [`ScopedApi`] the daemon's wiring sets once
//!   ([`Daemons::set_scoped_api`]), so this module knows nothing of the API it serves. The main
//!   socket never reaches a daemon's environment.
//!
//! One supervisor task per daemon owns its process; [`Daemons`] only keeps the tasks' handles
//! and status boards (short synchronous lock, never held across `.await`).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use aegis_proto::api::{Instance, InstanceStatus, LogEntry, LogSource, LogStream};
use aegis_proto::kit::{DaemonState, DaemonStatus, InstanceDaemonSpec};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::images::error_chain;
use crate::logs::{now_ts, InstanceLog};

/// How often a daemon's config directory is checked for changes. A second is quick enough
/// for a person editing a file and costs a few `stat` calls.
pub const CONFIG_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Between SIGTERM and SIGKILL when a daemon is stopped.
pub const DAEMON_STOP_GRACE: Duration = Duration::from_secs(5);
/// Longest output line kept whole; longer lines are split (a daemon cannot make us buffer
/// without bound).
pub const MAX_DAEMON_LINE_BYTES: usize = 64 * 1024;
/// Most files looked at in a config directory; more are ignored for change detection.
const MAX_CONFIG_FILES: usize = 1000;

/// When a crashed daemon is started again, and when Aegis gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// An exit this soon after the start counts as a fast crash.
    pub fast_window: Duration,
    /// Fast crashes in a row after which Aegis gives up.
    pub max_fast_crashes: u32,
    /// Delay before the first restart; doubled for each further fast crash in a row.
    pub base_delay: Duration,
    /// Longest delay.
    pub max_delay: Duration,
}

impl RestartPolicy {
    /// The policy of every instance daemon: 1 s, 2 s, 4 s, 8 s, then give up after the fifth
    /// crash in a row within 10 s of starting (about 15 s of trying).
    pub const DEFAULT: RestartPolicy = RestartPolicy {
        fast_window: Duration::from_secs(10),
        max_fast_crashes: 5,
        base_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(60),
    };

    /// The delay before the next start after `fast_crashes` fast crashes in a row (0 after a
    /// run that lasted), or `None` to give up.
    pub fn next_delay(&self, fast_crashes: u32) -> Option<Duration> {
        if fast_crashes >= self.max_fast_crashes {
            return None;
        }
        let doublings = fast_crashes.saturating_sub(1).min(16);
        Some(
            self.base_delay
                .saturating_mul(1 << doublings)
                .min(self.max_delay),
        )
    }
}

/// What a daemon's process needs to know about its instance.
#[derive(Debug, Clone)]
pub struct DaemonContext {
    /// The instance id.
    pub instance_id: String,
    /// Its handle, if any.
    pub handle: Option<String>,
    /// The kit's name and version.
    pub kit: (String, String),
    /// The daemons to run.
    pub daemons: Vec<InstanceDaemonSpec>,
    /// Exposed ports: (guest, public, protocol).
    pub ports: Vec<(u16, u16, &'static str)>,
    /// The instance's log.
    pub log: Arc<InstanceLog>,
}

/// An instance's exposed ports as daemons get them: (guest, public, protocol).
fn exposed_ports(view: &Instance) -> Vec<(u16, u16, &'static str)> {
    view.endpoints
        .iter()
        .map(|e| {
            let protocol = if e.protocol == "http" { "http" } else { "tcp" };
            (e.guest_port, e.public_port, protocol)
        })
        .collect()
}

impl DaemonContext {
    /// The name of the instance's config directory: its handle, or its id without one.
    pub fn config_name(&self) -> &str {
        self.handle.as_deref().unwrap_or(&self.instance_id)
    }
}

#[derive(Debug)]
struct Supervised {
    name: String,
    status: Arc<Mutex<DaemonStatus>>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct InstanceDaemons {
    cancel: CancellationToken,
    daemons: Vec<Supervised>,
    /// The socket scoped to the instance, while its daemons run (none when binding failed).
    socket: Option<ScopedSocket>,
}

/// Binds sockets that reach only one instance's part of the API. The daemon's wiring
/// implements it with the API (which `kits` must not import: the API imports `kits`) and sets
/// it once with [`Daemons::set_scoped_api`].
pub trait ScopedApi: Send + Sync + std::fmt::Debug {
    /// Binds a socket (mode 0600) that answers only requests about the instance `instance_id`
    /// and starts serving it; the returned guard stops serving and removes it.
    ///
    /// # Errors
    /// [`ScopedSocketError`] when the socket cannot be bound.
    fn bind(&self, instance_id: &str) -> Result<ScopedSocket, ScopedSocketError>;
}

/// Why no socket scoped to an instance could be bound.
#[derive(Debug, thiserror::Error)]
pub enum ScopedSocketError {
    /// The directory of the scoped sockets could not be prepared.
    #[error("cannot prepare the directory {}", path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The socket could not be bound (a path over the 107 bytes a unix socket path may have,
    /// say).
    #[error("cannot bind the socket {}", path.display())]
    Bind {
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// A socket scoped to one instance, served until this guard is dropped. Dropping it stops the
/// serving (cancels `stop`: no new connection, the open ones closed) and removes the socket
/// file, unless another socket has taken its path since.
#[derive(Debug)]
pub struct ScopedSocket {
    path: PathBuf,
    /// Device and inode of the socket file when it was bound.
    file: Option<(u64, u64)>,
    stop: CancellationToken,
}

impl ScopedSocket {
    /// The guard of the socket just bound at `path`, whose serving ends when `stop` is
    /// cancelled.
    pub fn new(path: PathBuf, stop: CancellationToken) -> ScopedSocket {
        let file = std::fs::symlink_metadata(&path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        ScopedSocket { path, file, stop }
    }

    /// Where the socket is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScopedSocket {
    fn drop(&mut self) {
        self.stop.cancel();
        let now = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if now.is_some() && now == self.file {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Everything the supervisors of one `aegisd` share.
#[derive(Debug)]
struct Env {
    /// The main API socket: kept out of every daemon's environment.
    main_socket: PathBuf,
    home: PathBuf,
    kits_dir: PathBuf,
    policy: RestartPolicy,
    scoped: OnceLock<Arc<dyn ScopedApi>>,
}

/// The instance daemons of one `aegisd`; cheap to clone.
#[derive(Debug, Clone)]
pub struct Daemons {
    env: Arc<Env>,
    running: Arc<Mutex<HashMap<String, InstanceDaemons>>>,
}

impl Daemons {
    /// Supervisors for the daemon whose main API socket is `main_socket` (which no daemon
    /// gets), with data in `home` and per-instance config directories in `kits_dir`.
    pub fn new(main_socket: PathBuf, home: PathBuf, kits_dir: PathBuf) -> Daemons {
        Daemons::with_policy(main_socket, home, kits_dir, RestartPolicy::DEFAULT)
    }

    /// [`Daemons::new`] with another restart policy (tests).
    pub fn with_policy(
        main_socket: PathBuf,
        home: PathBuf,
        kits_dir: PathBuf,
        policy: RestartPolicy,
    ) -> Daemons {
        Daemons {
            env: Arc::new(Env {
                main_socket,
                home,
                kits_dir,
                policy,
                scoped: OnceLock::new(),
            }),
            running: Arc::default(),
        }
    }

    /// Sets what binds the socket scoped to each instance (its daemons' `AEGIS_SOCKET`). Set it
    /// once, before the first [`Daemons::ensure`]: until then daemons start without
    /// `AEGIS_SOCKET`. A second call is ignored.
    pub fn set_scoped_api(&self, api: Arc<dyn ScopedApi>) {
        if self.env.scoped.set(api).is_err() {
            tracing::debug!("the scoped API of the instance daemons is already set");
        }
    }

    /// The config directory of an instance daemon set.
    pub fn config_dir(&self, ctx: &DaemonContext) -> PathBuf {
        self.env.kits_dir.join(ctx.config_name())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, InstanceDaemons>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes sure every daemon of the instance runs: starts those that do not, including
    /// those Aegis gave up on. Must be called from within the runtime.
    pub fn ensure(&self, ctx: &DaemonContext) {
        if ctx.daemons.is_empty() {
            return;
        }
        let config_dir = self.config_dir(ctx);
        if let Err(e) = std::fs::create_dir_all(&config_dir) {
            ctx.log.system(format!(
                "cannot create the config directory {} of the instance daemons: {e}",
                config_dir.display()
            ));
        }
        let mut running = self.lock();
        let set = running
            .entry(ctx.instance_id.clone())
            .or_insert_with(|| InstanceDaemons {
                cancel: CancellationToken::new(),
                daemons: Vec::new(),
                socket: None,
            });
        if set.socket.is_none() {
            set.socket = self.bind_scoped(ctx);
        }
        let socket = set.socket.as_ref().map(|s| s.path().to_path_buf());
        for spec in &ctx.daemons {
            let existing = set.daemons.iter().position(|d| d.name == spec.name);
            if let Some(i) = existing {
                if !set.daemons[i].task.is_finished() {
                    continue;
                }
                set.daemons.remove(i);
            }
            let status = Arc::new(Mutex::new(DaemonStatus {
                name: spec.name.clone(),
                state: DaemonState::Stopped,
                pid: None,
                restarts: 0,
                last_exit: None,
                since: now_ts(),
            }));
            let supervisor = Supervisor {
                env: Arc::clone(&self.env),
                spec: spec.clone(),
                ctx: ctx.clone(),
                config_dir: config_dir.clone(),
                socket: socket.clone(),
                status: Arc::clone(&status),
                cancel: set.cancel.clone(),
            };
            let task = tokio::spawn(supervisor.run());
            set.daemons.push(Supervised {
                name: spec.name.clone(),
                status,
                task,
            });
        }
    }

    /// The socket scoped to the instance, or `None` (said on the instance's log) when it
    /// cannot be bound: the daemons then run without `AEGIS_SOCKET` rather than with the main
    /// socket.
    fn bind_scoped(&self, ctx: &DaemonContext) -> Option<ScopedSocket> {
        let api = self.env.scoped.get()?;
        match api.bind(&ctx.instance_id) {
            Ok(socket) => Some(socket),
            Err(e) => {
                let line = format!(
                    "cannot bind the API socket of the instance daemons: {}; they run without \
                     AEGIS_SOCKET",
                    error_chain(&e)
                );
                tracing::warn!(instance = %ctx.instance_id, "{line}");
                ctx.log.system(line);
                None
            }
        }
    }

    /// Runs the instance's daemons as its published views say: started when it is (or becomes)
    /// enabled and again at each boot (which restarts those Aegis gave up on), stopped when it
    /// is disabled and when it is gone (deleted, or aegisd shuts down). Must be called from
    /// within the runtime.
    pub fn follow(&self, mut ctx: DaemonContext, mut views: watch::Receiver<Instance>) {
        if ctx.daemons.is_empty() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let mut was: Option<(bool, InstanceStatus)> = None;
            loop {
                let (enabled, state, ports) = {
                    let view = views.borrow_and_update();
                    (view.enabled, view.state, exposed_ports(&view))
                };
                let enabled_now = enabled && was.is_none_or(|(e, _)| !e);
                let booting = state == InstanceStatus::Starting
                    && was.is_some_and(|(_, s)| s != InstanceStatus::Starting);
                if enabled && (enabled_now || booting) {
                    ctx.ports = ports;
                    this.ensure(&ctx);
                } else if !enabled && was.is_some_and(|(e, _)| e) {
                    this.stop(&ctx.instance_id).await;
                }
                was = Some((enabled, state));
                if views.changed().await.is_err() {
                    break;
                }
            }
            this.stop(&ctx.instance_id).await;
        });
    }

    /// Stops the instance's daemons (SIGTERM, then SIGKILL after [`DAEMON_STOP_GRACE`]), waits
    /// for them, then closes and removes their scoped socket (kept until then: a daemon may
    /// use the API while it stops).
    pub async fn stop(&self, instance_id: &str) {
        let removed = self.lock().remove(instance_id);
        if let Some(set) = removed {
            set.cancel.cancel();
            for d in set.daemons {
                let _ = d.task.await;
            }
            drop(set.socket);
        }
    }

    /// Stops every daemon of every instance (daemon shutdown).
    pub async fn stop_all(&self) {
        let ids: Vec<String> = self.lock().keys().cloned().collect();
        futures::future::join_all(ids.iter().map(|id| self.stop(id))).await;
    }

    /// The status of the instance's daemons, in manifest order.
    pub fn status(&self, instance_id: &str) -> Vec<DaemonStatus> {
        let running = self.lock();
        running
            .get(instance_id)
            .map(|set| {
                set.daemons
                    .iter()
                    .map(|d| {
                        d.status
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .clone()
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The environment of a daemon's process: its manifest `env`, then these, which win:
///
/// | variable | value |
/// |---|---|
/// | `AEGIS_INSTANCE_ID` | the instance id (`inst-…`) |
/// | `AEGIS_INSTANCE_HANDLE` | its handle, or its id when it has none |
/// | `AEGIS_KIT`, `AEGIS_KIT_VERSION` | the kit it was created from |
/// | `AEGIS_DAEMON_NAME` | the daemon's name in the manifest |
/// | `AEGIS_KIT_CONFIG_DIR` | `~/.aegis/kits/HANDLE` (also its working directory) |
/// | `AEGIS_SOCKET` | a socket of the API scoped to this instance (`~/.aegis/run/kit-api/ID.sock`): `GET /v1/status`, `GET /v1/openapi.json`, and for this instance only info, start, stop, restart, pause, resume, exec, logs, expose and unexpose; anything else is a 403. Absent when it could not be bound (a system line says why) |
/// | `AEGIS_HOME` | `aegisd`'s data directory |
/// | `AEGIS_EXPOSES` | `GUEST:PUBLIC/PROTO` for each exposed port, comma-separated |
/// | `AEGIS_PUBLIC_PORT_<GUEST>` | the public port of each exposed guest port |
///
/// The main API socket is never among them, and variables `aegisd` itself inherited that name
/// it (or are `AEGIS_SOCKET`) are removed from the daemon's environment when it is spawned.
pub fn daemon_env(
    spec: &InstanceDaemonSpec,
    ctx: &DaemonContext,
    config_dir: &Path,
    socket: Option<&Path>,
    home: &Path,
) -> BTreeMap<String, String> {
    let mut env = spec.env.clone();
    env.insert("AEGIS_INSTANCE_ID".into(), ctx.instance_id.clone());
    env.insert("AEGIS_INSTANCE_HANDLE".into(), ctx.config_name().to_owned());
    env.insert("AEGIS_KIT".into(), ctx.kit.0.clone());
    env.insert("AEGIS_KIT_VERSION".into(), ctx.kit.1.clone());
    env.insert("AEGIS_DAEMON_NAME".into(), spec.name.clone());
    env.insert(
        "AEGIS_KIT_CONFIG_DIR".into(),
        config_dir.display().to_string(),
    );
    if let Some(socket) = socket {
        env.insert("AEGIS_SOCKET".into(), socket.display().to_string());
    }
    env.insert("AEGIS_HOME".into(), home.display().to_string());
    let exposes: Vec<String> = ctx
        .ports
        .iter()
        .map(|(guest, public, proto)| format!("{guest}:{public}/{proto}"))
        .collect();
    env.insert("AEGIS_EXPOSES".into(), exposes.join(","));
    for (guest, public, _) in &ctx.ports {
        env.insert(format!("AEGIS_PUBLIC_PORT_{guest}"), public.to_string());
    }
    env
}

/// Supervises one daemon of one instance until cancelled or given up on.
struct Supervisor {
    env: Arc<Env>,
    spec: InstanceDaemonSpec,
    ctx: DaemonContext,
    config_dir: PathBuf,
    /// The instance's scoped API socket, if one could be bound.
    socket: Option<PathBuf>,
    status: Arc<Mutex<DaemonStatus>>,
    cancel: CancellationToken,
}

/// How one run of a daemon ended.
enum RunEnd {
    /// The process exited (or could not be started): how.
    Exited(String),
    /// Cancelled: the process was stopped.
    Cancelled,
}

impl Supervisor {
    fn set(&self, f: impl FnOnce(&mut DaemonStatus)) {
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut status);
        status.since = now_ts();
    }

    fn name(&self) -> &str {
        &self.spec.name
    }

    async fn run(self) {
        let policy = self.env.policy;
        let mut fast_crashes = 0;
        let mut restarts = 0;
        loop {
            let started = Instant::now();
            let how = match self.run_once().await {
                RunEnd::Cancelled => {
                    self.set(|s| {
                        s.state = DaemonState::Stopped;
                        s.pid = None;
                    });
                    return;
                }
                RunEnd::Exited(how) => how,
            };
            if started.elapsed() < policy.fast_window {
                fast_crashes += 1;
            } else {
                fast_crashes = 1;
            }
            let Some(delay) = policy.next_delay(fast_crashes) else {
                let line = format!(
                    "instance daemon {} {how} {fast_crashes} times in a row within {} s of \
                     starting: giving up; `aegis instance start` tries again",
                    self.name(),
                    policy.fast_window.as_secs()
                );
                tracing::warn!(instance = %self.ctx.instance_id, daemon = %self.name(), "{line}");
                self.ctx.log.system(line);
                self.set(|s| {
                    s.state = DaemonState::Failed;
                    s.pid = None;
                    s.last_exit = Some(how.clone());
                });
                return;
            };
            self.ctx.log.system(format!(
                "instance daemon {} {how}; restarting in {} ms",
                self.name(),
                delay.as_millis()
            ));
            self.set(|s| {
                s.state = DaemonState::Restarting;
                s.pid = None;
                s.last_exit = Some(how.clone());
            });
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.cancel.cancelled() => {
                    self.set(|s| s.state = DaemonState::Stopped);
                    return;
                }
            }
            restarts += 1;
            self.set(|s| s.restarts = restarts);
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.spec.command[0]);
        // What `aegisd` inherited must not hand a daemon the main socket.
        for (key, value) in std::env::vars_os() {
            if key == "AEGIS_SOCKET" || names_path(&value, &self.env.main_socket) {
                cmd.env_remove(key);
            }
        }
        cmd.args(&self.spec.command[1..])
            .envs(daemon_env(
                &self.spec,
                &self.ctx,
                &self.config_dir,
                self.socket.as_deref(),
                &self.env.home,
            ))
            .current_dir(&self.config_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let parent = nix::unistd::getpid();
        // SAFETY: the closure runs in the forked child before exec and only makes the
        // async-signal-safe calls prctl(2), sigaction(2) and getppid(2); it allocates nothing
        // and takes no lock.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)?;
                // SIGHUP is how a daemon learns of a config change, and a shell cannot trap a
                // signal that was ignored when it started: an aegisd started under `nohup`
                // must not pass its ignored SIGHUP on.
                nix::sys::signal::signal(Signal::SIGHUP, nix::sys::signal::SigHandler::SigDfl)
                    .map_err(std::io::Error::from)?;
                // The parent may have died before the prctl: then nobody supervises us.
                if nix::unistd::getppid() != parent {
                    return Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
                }
                Ok(())
            });
        }
        cmd
    }

    async fn run_once(&self) -> RunEnd {
        if self.cancel.is_cancelled() {
            return RunEnd::Cancelled;
        }
        let mut child = match self.command().spawn() {
            Ok(child) => child,
            Err(e) => {
                self.ctx.log.system(format!(
                    "cannot start instance daemon {} ({}): {e}",
                    self.name(),
                    self.spec.command[0]
                ));
                return RunEnd::Exited("could not be started".to_owned());
            }
        };
        let pid = child.id();
        self.set(|s| {
            s.state = DaemonState::Running;
            s.pid = pid;
        });
        self.ctx.log.system(format!(
            "instance daemon {} started (pid {})",
            self.name(),
            pid.map_or_else(|| "?".to_owned(), |p| p.to_string())
        ));
        if let Some(out) = child.stdout.take() {
            tokio::spawn(pump(
                out,
                LogStream::Stdout,
                self.ctx.log.clone(),
                self.spec.name.clone(),
            ));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(pump(
                err,
                LogStream::Stderr,
                self.ctx.log.clone(),
                self.spec.name.clone(),
            ));
        }
        let mut seen = fingerprint(&self.config_dir);
        let mut poll = tokio::time::interval(CONFIG_POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                status = child.wait() => {
                    return RunEnd::Exited(match status {
                        Ok(status) => describe_exit(status),
                        Err(e) => format!("could not be waited for ({e})"),
                    });
                }
                () = self.cancel.cancelled() => {
                    self.terminate(&mut child).await;
                    return RunEnd::Cancelled;
                }
                _ = poll.tick() => {
                    let now = fingerprint(&self.config_dir);
                    if now != seen {
                        seen = now;
                        if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGHUP);
                            self.ctx.log.system(format!(
                                "config of instance daemon {} changed: sent SIGHUP",
                                self.name()
                            ));
                        }
                    }
                }
            }
        }
    }

    /// SIGTERM to the daemon's process group, SIGKILL after the grace period.
    async fn terminate(&self, child: &mut Child) {
        let Some(pgid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
            return;
        };
        let group = Pid::from_raw(pgid);
        let _ = killpg(group, Signal::SIGTERM);
        let how = match tokio::time::timeout(DAEMON_STOP_GRACE, child.wait()).await {
            Ok(status) => status.map(describe_exit).unwrap_or_default(),
            Err(_) => {
                let _ = killpg(group, Signal::SIGKILL);
                let _ = child.wait().await;
                "killed after the grace period".to_owned()
            }
        };
        // Whatever it left behind in its group goes too.
        let _ = killpg(group, Signal::SIGKILL);
        self.ctx
            .log
            .system(format!("instance daemon {} stopped ({how})", self.name()));
    }
}

/// Whether `value` contains the path `path`.
fn names_path(value: &OsStr, path: &Path) -> bool {
    let needle = path.as_os_str().as_bytes();
    !needle.is_empty()
        && value
            .as_bytes()
            .windows(needle.len())
            .any(|window| window == needle)
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "exited".to_owned(),
    }
}

/// Copies a daemon's output into the instance's log, line by line (split at
/// [`MAX_DAEMON_LINE_BYTES`]).
async fn pump(
    reader: impl AsyncRead + Unpin,
    stream: LogStream,
    log: Arc<InstanceLog>,
    daemon: String,
) {
    let mut reader = BufReader::new(reader);
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let chunk = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(chunk) => chunk,
        };
        let room = MAX_DAEMON_LINE_BYTES - buf.len();
        match chunk.iter().position(|&b| b == b'\n') {
            Some(i) if i <= room => {
                buf.extend_from_slice(&chunk[..i]);
                reader.consume(i + 1);
                emit(&log, stream, &daemon, &buf, false);
                buf.clear();
            }
            _ => {
                let take = chunk.len().min(room);
                buf.extend_from_slice(&chunk[..take]);
                reader.consume(take);
                if buf.len() >= MAX_DAEMON_LINE_BYTES {
                    emit(&log, stream, &daemon, &buf, true);
                    buf.clear();
                }
            }
        }
    }
    if !buf.is_empty() {
        emit(&log, stream, &daemon, &buf, true);
    }
}

fn emit(log: &InstanceLog, stream: LogStream, daemon: &str, bytes: &[u8], partial: bool) {
    log.append(LogEntry {
        ts: now_ts(),
        stream,
        line: String::from_utf8_lossy(bytes).into_owned(),
        source: LogSource::Daemon,
        instance_id: log.instance_id().to_owned(),
        exec_id: None,
        daemon: Some(daemon.to_owned()),
        partial,
    });
}

/// Names, sizes and modification times of the files in `dir` and one level below, sorted.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    let mut dirs = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            if out.len() >= MAX_CONFIG_FILES {
                break;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                if depth == 0 {
                    dirs.push((entry.path(), depth + 1));
                }
                continue;
            }
            out.push((entry.path(), meta.len(), meta.modified().ok()));
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_gives_up() {
        let p = RestartPolicy::DEFAULT;
        let delays: Vec<Option<u64>> = (1..=5)
            .map(|n| p.next_delay(n).map(|d| d.as_secs()))
            .collect();
        assert_eq!(delays, [Some(1), Some(2), Some(4), Some(8), None]);
        let long = RestartPolicy {
            max_fast_crashes: 100,
            ..p
        };
        assert_eq!(long.next_delay(40), Some(Duration::from_secs(60)));
    }

    fn ctx(log: Arc<InstanceLog>, command: &[&str]) -> DaemonContext {
        DaemonContext {
            instance_id: "inst-1".into(),
            handle: Some("web".into()),
            kit: ("k".into(), "1".into()),
            daemons: vec![InstanceDaemonSpec {
                name: "d".into(),
                command: command.iter().map(|s| (*s).to_owned()).collect(),
                env: BTreeMap::new(),
            }],
            ports: vec![(80, 8080, "http")],
            log,
        }
    }

    async fn wait_for(what: &str, mut probe: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !probe() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn lines(log: &InstanceLog) -> Vec<String> {
        log.query(&crate::logs::LogFilter::default())
            .into_iter()
            .map(|e| format!("{:?}:{}", e.source, e.line))
            .collect()
    }

    #[tokio::test]
    async fn crashing_daemon_is_restarted_then_given_up_on() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(InstanceLog::open("inst-1", &dir.path().join("log")).unwrap());
        let policy = RestartPolicy {
            fast_window: Duration::from_secs(5),
            max_fast_crashes: 3,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        };
        let daemons = Daemons::with_policy(
            dir.path().join("sock"),
            dir.path().to_path_buf(),
            dir.path().join("kits"),
            policy,
        );
        let c = ctx(
            Arc::clone(&log),
            &[
                "sh",
                "-c",
                "echo \"up $AEGIS_INSTANCE_HANDLE $AEGIS_PUBLIC_PORT_80 $(pwd)\"; exit 3",
            ],
        );
        daemons.ensure(&c);
        wait_for("giving up", || {
            daemons.status("inst-1").first().map(|s| s.state) == Some(DaemonState::Failed)
        })
        .await;
        let status = &daemons.status("inst-1")[0];
        assert_eq!(status.restarts, 2);
        assert_eq!(status.last_exit.as_deref(), Some("exited with code 3"));
        let text = lines(&log).join("\n");
        let cwd = dir.path().join("kits/web");
        assert!(
            text.contains(&format!("Daemon:up web 8080 {}", cwd.display())),
            "{text}"
        );
        assert!(text.contains("giving up"), "{text}");
        // Starting the instance again tries again.
        daemons.ensure(&c);
        wait_for("a new run", || {
            daemons
                .status("inst-1")
                .first()
                .is_some_and(|s| s.state != DaemonState::Failed)
        })
        .await;
        daemons.stop("inst-1").await;
        assert!(daemons.status("inst-1").is_empty());
    }

    /// Binds plain sockets in `dir`, or fails every bind.
    #[derive(Debug)]
    struct FakeScopedApi {
        dir: PathBuf,
        fail: bool,
    }

    impl ScopedApi for FakeScopedApi {
        fn bind(&self, instance_id: &str) -> Result<ScopedSocket, ScopedSocketError> {
            let path = self.dir.join(format!("{instance_id}.sock"));
            if self.fail {
                return Err(ScopedSocketError::Bind {
                    path,
                    source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
                });
            }
            std::os::unix::net::UnixListener::bind(&path).unwrap();
            Ok(ScopedSocket::new(path, CancellationToken::new()))
        }
    }

    /// Daemons in `dir` whose scoped sockets a [`FakeScopedApi`] binds (or, with `fail`,
    /// cannot).
    fn with_fake_scoped_api(dir: &Path, fail: bool) -> Daemons {
        let daemons = Daemons::new(dir.join("main.sock"), dir.to_path_buf(), dir.join("kits"));
        daemons.set_scoped_api(Arc::new(FakeScopedApi {
            dir: dir.to_path_buf(),
            fail,
        }));
        daemons
    }

    const SHOW_SOCKET: &str = "echo \"socket=${AEGIS_SOCKET:-none}\"; \
                               env | grep -q main.sock && echo leaked; \
                               while :; do sleep 0.1; done";

    #[tokio::test]
    async fn daemons_get_their_scoped_socket_until_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(InstanceLog::open("inst-1", &dir.path().join("log")).unwrap());
        let daemons = with_fake_scoped_api(dir.path(), false);
        daemons.ensure(&ctx(Arc::clone(&log), &["sh", "-c", SHOW_SOCKET]));
        let scoped = dir.path().join("inst-1.sock");
        let want = format!("Daemon:socket={}", scoped.display());
        wait_for("the socket line", || lines(&log).contains(&want)).await;
        assert!(scoped.exists());
        daemons.stop("inst-1").await;
        assert!(!scoped.exists(), "the scoped socket outlived its daemons");
        let text = lines(&log).join("\n");
        assert!(!text.contains("leaked"), "{text}");
    }

    #[tokio::test]
    async fn daemons_run_without_a_socket_when_none_can_be_bound() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(InstanceLog::open("inst-1", &dir.path().join("log")).unwrap());
        let daemons = with_fake_scoped_api(dir.path(), true);
        daemons.ensure(&ctx(Arc::clone(&log), &["sh", "-c", SHOW_SOCKET]));
        wait_for("the socket line", || {
            lines(&log).iter().any(|l| l == "Daemon:socket=none")
        })
        .await;
        let want = format!(
            "System:cannot bind the API socket of the instance daemons: cannot bind the socket \
             {}: permission denied; they run without AEGIS_SOCKET",
            dir.path().join("inst-1.sock").display()
        );
        let text = lines(&log).join("\n");
        assert!(text.contains(&want), "{text}");
        daemons.stop_all().await;
    }

    #[test]
    fn scoped_socket_guard_removes_its_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inst-1.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let stop = CancellationToken::new();
        let guard = ScopedSocket::new(path.clone(), stop.clone());
        assert_eq!(guard.path(), path);
        drop(guard);
        assert!(stop.is_cancelled());
        assert!(!path.exists());
        // Another socket took the path since: it stays.
        let guard = ScopedSocket::new(path.clone(), CancellationToken::new());
        let _newer = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(guard);
        assert!(path.exists());
    }

    #[test]
    fn env_has_the_scoped_socket_or_none_and_never_the_main_one() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(InstanceLog::open("inst-1", &dir.path().join("log")).unwrap());
        let c = ctx(log, &["true"]);
        let spec = &c.daemons[0];
        let scoped = Path::new("/h/run/kit-api/inst-1.sock");
        let env = daemon_env(
            spec,
            &c,
            Path::new("/h/kits/web"),
            Some(scoped),
            Path::new("/h"),
        );
        assert_eq!(env["AEGIS_SOCKET"], "/h/run/kit-api/inst-1.sock");
        let env = daemon_env(spec, &c, Path::new("/h/kits/web"), None, Path::new("/h"));
        assert!(!env.contains_key("AEGIS_SOCKET"), "{env:?}");
        let main = Path::new("/h/aegisd.sock");
        assert!(names_path(OsStr::new("/h/aegisd.sock"), main));
        assert!(names_path(OsStr::new("unix:/h/aegisd.sock?x"), main));
        assert!(!names_path(OsStr::new("/h/run/kit-api/inst-1.sock"), main));
        assert!(!names_path(OsStr::new("/h"), main));
    }

    #[tokio::test]
    async fn config_changes_send_sighup_and_stop_terminates() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(InstanceLog::open("inst-1", &dir.path().join("log")).unwrap());
        let daemons = Daemons::new(
            dir.path().join("sock"),
            dir.path().to_path_buf(),
            dir.path().join("kits"),
        );
        let script = "trap 'echo reloaded' HUP; trap 'echo bye; exit 0' TERM; echo ready; \
                      while :; do sleep 0.1; done";
        daemons.ensure(&ctx(Arc::clone(&log), &["sh", "-c", script]));
        wait_for("ready", || lines(&log).iter().any(|l| l == "Daemon:ready")).await;
        std::fs::write(dir.path().join("kits/web/config.json"), "{}").unwrap();
        wait_for("reloaded", || {
            lines(&log).iter().any(|l| l == "Daemon:reloaded")
        })
        .await;
        daemons.stop("inst-1").await;
        let text = lines(&log).join("\n");
        assert!(text.contains("Daemon:bye"), "{text}");
        assert!(
            text.contains("instance daemon d stopped (exited with code 0)"),
            "{text}"
        );
    }
}
