//! [`Daemon`]: a real `aegisd` in a temporary `AEGIS_HOME` that reuses the guest kernel and the
//! images of the machine's set-up home, stopped and cleaned up on drop.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aegis_proto::api::{Instance, InstanceStatus};

use crate::http::{self, ApiResponse};
use crate::process::{self, Background, Output, DEFAULT_CLI_TIMEOUT};
use crate::terminal::TerminalSession;
use crate::wait::try_wait_until;

/// Environment variable naming the set-up home whose `kernel` and `images` tests reuse
/// (default `~/.aegis`).
pub const SHARED_HOME_ENV: &str = "AEGIS_TEST_SHARED_HOME";

/// Prefix of temporary homes (and of the testkit's other directories in `/tmp`). Short and under
/// `/tmp`: a unix socket path must fit in 108 bytes.
pub(crate) const HOME_PREFIX: &str = "aegis-t-";
/// File in a temporary home holding the pid of the test process that owns it.
pub(crate) const OWNER_FILE: &str = "testkit.owner";
/// File in a temporary home holding the pid of the last daemon started there.
const DAEMON_PID_FILE: &str = "testkit.daemon";
/// A home without an owner file older than this is a leftover (its creator died before writing
/// the file).
const ORPHAN_AGE: Duration = Duration::from_secs(600);

/// How long a daemon gets to answer after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a daemon gets to stop its VMs and exit after `POST /v1/shutdown`.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of one raw API request made by the testkit.
const API_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines of `aegisd.log` in failure messages.
const LOG_TAIL_LINES: usize = 60;

/// Where a test daemon's image store comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
enum Images {
    /// A link to the set-up home's store (the default image is there).
    #[default]
    Shared,
    /// An empty store in the temporary home (the daemon creates it).
    Own,
    /// An empty store in this directory (the home's `images` links to it).
    At(PathBuf),
}

/// How a test daemon's home is set up: [`Daemon::builder`].
#[derive(Debug, Default)]
pub struct DaemonBuilder {
    images: Images,
    env: Vec<(String, String)>,
    parent: Option<PathBuf>,
}

impl DaemonBuilder {
    /// An empty image store of the daemon's own (see [`Daemon::start_with_own_images`]).
    pub fn own_images(mut self) -> DaemonBuilder {
        self.images = Images::Own;
        self
    }

    /// An empty image store of the daemon's own in `dir` (e.g. on a small [`crate::Tmpfs`]):
    /// the home's `images` links there.
    pub fn images_in(mut self, dir: &Path) -> DaemonBuilder {
        self.images = Images::At(dir.to_path_buf());
        self
    }

    /// `key=value` in the daemon's environment.
    pub fn env(mut self, key: &str, value: &str) -> DaemonBuilder {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Creates the home inside `dir` instead of `/tmp` (e.g. on a small [`crate::Tmpfs`]). The
    /// path of the socket in it must stay under 108 bytes.
    pub fn home_in(mut self, dir: &Path) -> DaemonBuilder {
        self.parent = Some(dir.to_path_buf());
        self
    }

    /// Prepares the home and starts the daemon, waiting until it answers.
    ///
    /// # Panics
    /// As [`Daemon::start`].
    pub fn start(self) -> Daemon {
        let mut daemon = self.unstarted();
        daemon.spawn();
        daemon
    }

    /// Prepares the home and starts nothing: the test puts files there first (a corrupt
    /// `aegis.db`, …), then calls [`Daemon::launch`] or [`Daemon::launch_expecting_failure`].
    ///
    /// # Panics
    /// As [`Daemon::start`], except that no daemon is started.
    pub fn unstarted(self) -> Daemon {
        Daemon::prepare(self)
    }
}

/// A running `aegisd` with its own temporary `AEGIS_HOME`.
#[derive(Debug)]
pub struct Daemon {
    home: PathBuf,
    workspace: PathBuf,
    cli: PathBuf,
    /// Extra environment of the daemon process.
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// Removed (with everything in it) after the daemon and its VMs are gone.
    dir: Option<tempfile::TempDir>,
}

impl Daemon {
    /// Creates a temporary home, links the set-up home's `kernel` and `images` into it, starts
    /// `aegisd` of the release build (`$CARGO_TARGET_DIR/release`, else
    /// `<workspace>/target/release`) there and waits until it answers.
    ///
    /// # Panics
    /// When a binary, the guest kernel or the default image is missing (the message names the
    /// command that provides it), or the daemon does not come up.
    pub fn start() -> Daemon {
        Daemon::builder().start()
    }

    /// A daemon set up step by step: its image store, environment and where its home lives,
    /// started or not.
    pub fn builder() -> DaemonBuilder {
        DaemonBuilder::default()
    }

    /// [`Daemon::start`] with these variables in the daemon's environment (e.g. `AEGIS_QEMU`
    /// pointing at a program that fails, to make every boot fail).
    ///
    /// # Panics
    /// As [`Daemon::start`].
    pub fn start_with_env(env: &[(&str, &str)]) -> Daemon {
        with_env(Daemon::builder(), env).start()
    }

    /// [`Daemon::start`] with an empty image store of the daemon's own instead of a link to the
    /// set-up home's, so that pulls, imports, removals and prunes stay private to the test. The
    /// set-up home's images stay readable through [`Daemon::shared_images_dir`] (e.g. to import
    /// the default image's root filesystem).
    ///
    /// # Panics
    /// As [`Daemon::start`].
    pub fn start_with_own_images() -> Daemon {
        Daemon::builder().own_images().start()
    }

    /// [`Daemon::start_with_own_images`] with these variables in the daemon's environment: with
    /// no image and a VMM that does not exist, no request can boot a VM.
    ///
    /// # Panics
    /// As [`Daemon::start`].
    pub fn start_with_own_images_and_env(env: &[(&str, &str)]) -> Daemon {
        with_env(Daemon::builder().own_images(), env).start()
    }

    /// The image store of the set-up home (`$AEGIS_TEST_SHARED_HOME/images`, default
    /// `~/.aegis/images`). Tests must only read it.
    pub fn shared_images_dir() -> PathBuf {
        shared_home().join("images")
    }

    fn prepare(options: DaemonBuilder) -> Daemon {
        let DaemonBuilder {
            images,
            env,
            parent,
        } = options;
        remove_leftovers();
        let workspace = workspace_root();
        let release = release_dir(&workspace);
        for binary in ["aegisd", "aegis", "guest/aegis-harness"] {
            assert!(
                release.join(binary).is_file(),
                "{} is missing: run scripts/build.sh (it builds the release binaries and the \
                 static guest harness)",
                release.join(binary).display()
            );
        }
        let shared = shared_home();
        assert!(
            shared.join("kernel/vmlinuz").is_file(),
            "no guest kernel at {}: run ./setup.sh (or point {SHARED_HOME_ENV} at a set-up \
             AEGIS_HOME)",
            shared.join("kernel/vmlinuz").display()
        );
        let images_filled = std::fs::read_dir(shared.join("images"))
            .is_ok_and(|mut entries| entries.next().is_some());
        assert!(
            images_filled || images != Images::Shared,
            "no default image in {}: run ./setup.sh (or point {SHARED_HOME_ENV} at a set-up \
             AEGIS_HOME)",
            shared.join("images").display()
        );

        let dir = tempfile::Builder::new()
            .prefix(HOME_PREFIX)
            .tempdir_in(parent.as_deref().unwrap_or(Path::new("/tmp")))
            .unwrap_or_else(|e| panic!("cannot create a temporary AEGIS_HOME: {e}"));
        let home = dir.path().to_path_buf();
        write_pid(&home.join(OWNER_FILE), std::process::id());
        let mut linked = vec![(shared.join("kernel"), "kernel")];
        match images {
            Images::Shared => linked.push((shared.join("images"), "images")),
            Images::Own => {}
            Images::At(dir) => {
                std::fs::create_dir_all(&dir)
                    .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
                linked.push((dir, "images"));
            }
        }
        for (target, name) in linked {
            std::os::unix::fs::symlink(&target, home.join(name))
                .unwrap_or_else(|e| panic!("cannot link {} into {}: {e}", name, home.display()));
        }
        Daemon {
            home,
            cli: release.join("aegis"),
            env,
            workspace,
            child: None,
            dir: Some(dir),
        }
    }

    /// Runs this CLI binary instead of `target/release/aegis` (e.g. `env!("CARGO_BIN_EXE_aegis")`,
    /// the build under test).
    pub fn use_cli(mut self, cli: impl Into<PathBuf>) -> Daemon {
        self.cli = cli.into();
        self
    }

    /// Bytes an instance's log files (current and rotated) take on disk.
    pub fn log_bytes_on_disk(&self, instance_id: &str) -> u64 {
        let dir = self.home().join("instances").join(instance_id);
        ["logs.ndjson", "logs.ndjson.1"]
            .iter()
            .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
            .map(|m| m.len())
            .sum()
    }

    /// The temporary `AEGIS_HOME`.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The API socket.
    pub fn socket(&self) -> PathBuf {
        self.home.join("aegisd.sock")
    }

    /// The daemon's pid while this testkit started it.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs `aegis ARGS` against this daemon (`NO_COLOR=1`, no stdin) with
    /// [`DEFAULT_CLI_TIMEOUT`].
    ///
    /// # Panics
    /// On timeout, with what the command printed and the daemon's log.
    pub fn aegis<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.aegis_with_timeout(args, DEFAULT_CLI_TIMEOUT)
    }

    /// [`Daemon::aegis`] with another timeout.
    ///
    /// # Panics
    /// On timeout, with what the command printed and the daemon's log.
    pub fn aegis_with_timeout<I, S>(&self, args: I, timeout: Duration) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let background = self.spawn_aegis(args);
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| background.wait(timeout)));
        result.unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "aegis failed".to_owned());
            panic!("{message}\n--- aegisd.log ---\n{}", self.log_tail())
        })
    }

    /// [`Daemon::aegis_with_timeout`] with the file `input` as the CLI's standard input.
    ///
    /// # Panics
    /// When `input` cannot be opened; on timeout, with what the command printed.
    pub fn aegis_with_input<I, S>(&self, args: I, input: &Path, timeout: Duration) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let file = std::fs::File::open(input)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", input.display()));
        Background::spawn_with_stdin(self.cli_command(args), file.into()).wait(timeout)
    }

    /// Runs the shell `script` on a terminal of its own, with the environment of
    /// [`Daemon::aegis`] and the CLI as `$AEGIS`.
    pub fn on_terminal(&self, script: &str) -> TerminalSession {
        let mut env = self.cli_command(std::iter::empty::<&str>());
        env.env("AEGIS", &self.cli);
        TerminalSession::start(script, &env)
    }

    /// Starts `aegis ARGS` in the background (to signal it, or run it alongside others).
    pub fn spawn_aegis<I, S>(&self, args: I) -> Background
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Background::spawn(self.cli_command(args))
    }

    /// [`Daemon::aegis`] run in the working directory `dir` (for arguments the CLI resolves
    /// against it, like `--workspace ./dir`).
    ///
    /// # Panics
    /// On timeout, with what the command printed.
    pub fn aegis_in<I, S>(&self, dir: &Path, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = self.cli_command(args);
        command.current_dir(dir);
        Background::spawn(command).wait(DEFAULT_CLI_TIMEOUT)
    }

    fn cli_command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(&self.cli);
        command
            .args(args)
            .env("AEGIS_HOME", &self.home)
            .env("NO_COLOR", "1")
            .env("AEGIS_DAEMON", self.release("aegisd"))
            .env("AEGIS_HARNESS", self.release("guest/aegis-harness"));
        command
    }

    /// Waits until instance `target` is in `state`, for at most `within`.
    ///
    /// # Panics
    /// On timeout, and at once when a boot failed (with the reason and the daemon's log).
    pub fn wait_state(&self, target: &str, state: InstanceStatus, within: Duration) -> Instance {
        crate::wait::wait_until(within, &format!("{target} to be {state}"), || {
            match self.instance(target) {
                Ok(i) if i.state == state => Ok(i),
                Ok(i)
                    if i.reason
                        .as_deref()
                        .is_some_and(|r| r.starts_with("boot failed")) =>
                {
                    panic!(
                        "{target}: {:?}\n--- aegisd.log ---\n{}",
                        i.reason,
                        self.log_tail()
                    )
                }
                Ok(i) => Err(format!("{} ({:?})", i.state, i.reason)),
                Err(e) => Err(e),
            }
        })
    }

    /// One raw API request (`body` is sent as is, so it may be malformed on purpose).
    ///
    /// # Panics
    /// When the daemon does not answer.
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> ApiResponse {
        http::request(&self.socket(), method, path, body, API_TIMEOUT).unwrap_or_else(|e| {
            panic!(
                "{method} {path} got no answer: {e}\n--- aegisd.log ---\n{}",
                self.log_tail()
            )
        })
    }

    /// `GET /v1/instances/{id}` decoded, or a description of what came back instead.
    ///
    /// # Errors
    /// The status and body when it is not a 200 with an instance.
    pub fn instance(&self, id_or_handle: &str) -> Result<Instance, String> {
        let response = http::request(
            &self.socket(),
            "GET",
            &format!("/v1/instances/{id_or_handle}"),
            None,
            API_TIMEOUT,
        )
        .map_err(|e| e.to_string())?;
        if response.status != 200 {
            return Err(format!("{}: {}", response.status, response.body));
        }
        serde_json::from_str(&response.body).map_err(|e| format!("{e}: {}", response.body))
    }

    /// The system lines (`source: "system"`) of `target`'s log that contain `needle`.
    ///
    /// # Panics
    /// When `aegis logs` fails.
    pub fn system_lines(&self, target: &str, needle: &str) -> Vec<String> {
        let out = self.aegis(["logs", target, "--json"]);
        out.expect_success();
        out.stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["source"] == "system")
            .filter_map(|e| e["line"].as_str().map(str::to_owned))
            .filter(|l| l.contains(needle))
            .collect()
    }

    /// The last lines of the daemon's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.home.join("aegisd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    /// Kills the daemon with SIGKILL (only the daemon: its VMs, in their own sessions, live on)
    /// and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill9(child.id());
            let _ = child.wait();
        }
    }

    /// Starts a daemon again in the same home (after [`Daemon::kill9`]) and waits until it
    /// answers.
    ///
    /// # Panics
    /// When the daemon does not come up.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Starts the daemon of an [unstarted](DaemonBuilder::unstarted) home and waits until it
    /// answers.
    ///
    /// # Panics
    /// When a daemon of this testkit runs already, or the daemon does not come up.
    pub fn launch(&mut self) {
        assert!(self.child.is_none(), "aegisd runs already");
        self.spawn();
    }

    /// Starts the daemon of an [unstarted](DaemonBuilder::unstarted) home that must refuse to
    /// start, and returns how it ended and what it printed once it exited.
    ///
    /// # Panics
    /// When a daemon of this testkit runs already, or this one is still running after `within`
    /// (it is killed first).
    pub fn launch_expecting_failure(&mut self, within: Duration) -> Output {
        assert!(self.child.is_none(), "aegisd runs already");
        let mut command = Command::new(self.release("aegisd"));
        command
            .env("AEGIS_HOME", &self.home)
            .env("AEGIS_HARNESS", self.release("guest/aegis-harness"))
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        let background = Background::spawn(command);
        write_pid(&self.home.join(DAEMON_PID_FILE), background.pid());
        background.wait(within)
    }

    fn release(&self, binary: &str) -> PathBuf {
        release_dir(&self.workspace).join(binary)
    }

    fn spawn(&mut self) {
        let log_path = self.home.join("aegisd.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log_path.display()));
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log_path.display()));
        let child = Command::new(self.release("aegisd"))
            .env("AEGIS_HOME", &self.home)
            .env("AEGIS_HARNESS", self.release("guest/aegis-harness"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.release("aegisd").display()));
        write_pid(&self.home.join(DAEMON_PID_FILE), child.id());
        self.child = Some(child);

        let socket = self.socket();
        let ready = try_wait_until(READY_TIMEOUT, || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(Some(format!("aegisd exited during start-up ({status})")));
            }
            match http::request(&socket, "GET", "/v1/status", None, Duration::from_secs(2)) {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(Some(format!(
                    "GET /v1/status answered {}: {}",
                    r.status, r.body
                ))),
                Err(e) => Err(Some(e.to_string())),
            }
        });
        if let Err(last) = ready {
            panic!(
                "aegisd did not answer on {} within {READY_TIMEOUT:?}: {}\n--- aegisd.log ---\n{}",
                socket.display(),
                last.unwrap_or_default(),
                self.log_tail()
            );
        }
    }

    /// Pids of daemons serving this home: ours, whatever answers on the socket (a test may have
    /// started one with `aegis up`), and the last one recorded.
    fn daemon_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.child.iter().map(Child::id).collect();
        if let Ok(status) = http::request(
            &self.socket(),
            "GET",
            "/v1/status",
            None,
            Duration::from_secs(2),
        ) {
            if let Some(pid) = status.json()["pid"]
                .as_u64()
                .and_then(|p| u32::try_from(p).ok())
            {
                pids.push(pid);
            }
        }
        pids.extend(read_pid(&self.home.join(DAEMON_PID_FILE)));
        pids.sort_unstable();
        pids.dedup();
        pids.retain(|&pid| process::runs_binary(pid, "aegisd"));
        pids
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pids = self.daemon_pids();
        // A clean shutdown first: it stops the VMs the way users' daemons do.
        if http::request(
            &self.socket(),
            "POST",
            "/v1/shutdown",
            None,
            Duration::from_secs(5),
        )
        .is_ok()
        {
            let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
            while Instant::now() < deadline
                && pids
                    .iter()
                    .any(|&pid| process::alive(pid) && process::runs_binary(pid, "aegisd"))
            {
                if let Some(child) = self.child.as_mut() {
                    let _ = child.try_wait();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        for &pid in &pids {
            if process::alive(pid) && process::runs_binary(pid, "aegisd") {
                eprintln!("testkit: aegisd (pid {pid}) did not shut down; killing its group");
                process::kill_group(pid);
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        kill_vmms_of(&self.home);
        if let Some(dir) = self.dir.take() {
            if let Err(e) = dir.close() {
                eprintln!("testkit: cannot remove {}: {e}", self.home.display());
            }
        }
    }
}

fn with_env(builder: DaemonBuilder, env: &[(&str, &str)]) -> DaemonBuilder {
    env.iter().fold(builder, |b, (k, v)| b.env(k, v))
}

/// SIGKILL to the VMM processes (QEMU) whose command line names `home`: only this test's.
fn kill_vmms_of(home: &Path) {
    for pid in process::pids_with_cmdline(home) {
        if !process::runs_binary(pid, "aegisd") {
            process::kill9(pid);
        }
    }
}

/// Removes the homes (and kills the daemons and VMs) of test processes that died without
/// cleaning up, e.g. when a test run was interrupted.
fn remove_leftovers() {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let ours = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(HOME_PREFIX));
        if !ours || !path.is_dir() {
            continue;
        }
        let orphaned = match read_pid(&path.join(OWNER_FILE)) {
            Some(owner) => !process::alive(owner),
            None => entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > ORPHAN_AGE),
        };
        if !orphaned {
            continue;
        }
        // The home itself, or the homes inside a test's tmpfs.
        let nested = std::fs::read_dir(&path)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path());
        for home in std::iter::once(path.clone()).chain(nested) {
            if let Some(pid) = read_pid(&home.join(DAEMON_PID_FILE)) {
                if process::alive(pid) && process::runs_binary(pid, "aegisd") {
                    process::kill_group(pid);
                }
            }
        }
        kill_vmms_of(&path);
        crate::disk::unmount_leftover(&path);
        let _ = std::fs::remove_dir_all(&path);
    }
}

pub(crate) fn write_pid(path: &Path, pid: u32) {
    std::fs::write(path, pid.to_string())
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The workspace root (two levels above this crate).
fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::canonicalize(&root).unwrap_or(root)
}

/// The release build the tests drive: `$CARGO_TARGET_DIR/release` when cargo builds into
/// another target directory (a relative one is relative to the workspace), else
/// `<workspace>/target/release`.
fn release_dir(workspace: &Path) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|v| !v.is_empty())
        .map_or_else(|| workspace.join("target"), |dir| workspace.join(dir));
    target.join("release")
}

/// `$AEGIS_TEST_SHARED_HOME`, else `~/.aegis`.
pub(crate) fn shared_home() -> PathBuf {
    if let Some(home) = std::env::var_os(SHARED_HOME_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(home);
    }
    let user_home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    user_home.join(".aegis")
}
