//! Child processes of tests: each in its own process group, with a hard timeout, killed and
//! reaped whatever happens; and finding processes by their command line for cleanup.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// Hard timeout of one `aegis` invocation: above a cold boot under TCG plus a command, far below
/// "hung".
pub const DEFAULT_CLI_TIMEOUT: Duration = Duration::from_secs(180);

/// What a finished command printed and how it ended.
#[derive(Debug, Clone)]
pub struct Output {
    /// The command line, for messages.
    pub command: String,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
    /// Exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
}

impl Output {
    /// Panics, showing everything, unless the exit code is `code`.
    pub fn expect_code(&self, code: i32) -> &Output {
        assert_eq!(self.code, Some(code), "unexpected exit of {self}");
        self
    }

    /// Panics unless the command exited 0.
    pub fn expect_success(&self) -> &Output {
        self.expect_code(0)
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}`: code {:?}, signal {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command, self.code, self.signal, self.stdout, self.stderr
        )
    }
}

/// A command running in the background (for signal tests).
#[derive(Debug)]
pub struct Background {
    command: String,
    child: Option<Child>,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

impl Background {
    /// Starts `command` in its own process group with stdout and stderr captured (stdin is
    /// `/dev/null`).
    pub fn spawn(command: Command) -> Background {
        Background::spawn_with_stdin(command, Stdio::null())
    }

    /// [`Background::spawn`] with `stdin` as the command's standard input.
    pub fn spawn_with_stdin(mut command: Command, stdin: Stdio) -> Background {
        let shown = format!("{command:?}");
        command
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
        let stdout = child.stdout.take().map(drain);
        let stderr = child.stderr.take().map(drain);
        Background {
            command: shown,
            child: Some(child),
            stdout,
            stderr,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends `signal` to the process (not its group, as a terminal's Ctrl-C would reach only
    /// the foreground job, which this process is).
    pub fn signal(&self, signal: Signal) {
        if let Ok(pid) = i32::try_from(self.pid()) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    /// Waits for the exit, at most `timeout`; on timeout kills the group and panics with what
    /// it printed.
    pub fn wait(mut self, timeout: Duration) -> Output {
        let mut child = self.child.take().expect("a Background is waited for once");
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() >= deadline => break None,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("cannot wait for {}: {e}", self.command),
            }
        };
        if status.is_none() {
            kill_group(child.id());
            let _ = child.wait();
        }
        let output = Output {
            command: self.command.clone(),
            stdout: join(self.stdout.take()),
            stderr: join(self.stderr.take()),
            code: status.and_then(|s| s.code()),
            signal: status.and_then(|s| s.signal()),
        };
        if status.is_none() {
            panic!("timed out after {timeout:?}: {output}");
        }
        output
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(child.id());
            let _ = child.wait();
        }
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn join(handle: Option<JoinHandle<String>>) -> String {
    handle.and_then(|h| h.join().ok()).unwrap_or_default()
}

/// SIGKILL to the process group led by `pid`.
pub(crate) fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// True while `pid` exists.
pub(crate) fn alive(pid: u32) -> bool {
    match i32::try_from(pid) {
        Ok(pid) => !matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH)),
        Err(_) => false,
    }
}

/// Pids of the processes whose command line contains `needle` (this process excluded).
pub(crate) fn pids_with_cmdline(needle: &Path) -> Vec<u32> {
    let needle = needle.as_os_str().as_encoded_bytes();
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

/// True when `pid` runs a binary named `name`.
pub(crate) fn runs_binary(pid: u32, name: &str) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .is_ok_and(|exe| exe.file_name().is_some_and(|n| n == name))
}

/// SIGKILL to one process.
pub(crate) fn kill9(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}
