//! Starts one process from a [`ProcessSpec`]: validation, environment, `PATH` lookup, working
//! directory, user switch, a new session, and pipes or a terminal for its stdin and output.
//!
//! The process is started with `std::process::Command` only for the fork/exec mechanics; its
//! `Child` is dropped at once and never waited on — the reaper owns waiting. Registration with
//! the reaper happens under a [`SpawnGuard`](super::reaper::SpawnGuard) taken before the fork.
//! Reading the pipes is `output`'s job; tracking the process is `table`'s.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use aegis_proto::control::{ExitStatus, ProcessSpec, WindowSize};
use tokio::sync::oneshot;

use super::reaper::{ChildKey, Reaper};
use super::terminal;
use super::user::{Accounts, UserError};
use crate::limits;

/// `PATH` when the request does not set one; the usual Debian/Docker default.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// `TERM` when the request does not set one.
pub const DEFAULT_TERM: &str = "xterm";
/// `HOME` when the user has no `/etc/passwd` entry.
pub const DEFAULT_HOME: &str = "/root";
/// Working directory when the request names none.
pub const DEFAULT_WORKDIR: &str = "/";

/// What a process's stdin, stdout and stderr are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    /// Pipes for stdout and stderr; a pipe for stdin too when `stdin`, `/dev/null` otherwise.
    Pipes {
        /// Whether stdin is a pipe.
        stdin: bool,
    },
    /// One pseudo-terminal of this size for all three, the process's controlling terminal.
    Terminal(WindowSize),
}

/// The harness's ends of a started process's [`Io`].
#[derive(Debug)]
pub enum SpawnedIo {
    /// [`Io::Pipes`].
    Pipes {
        /// Write end of its stdin pipe, when it was asked for.
        stdin: Option<OwnedFd>,
        /// Read end of its stdout pipe.
        stdout: OwnedFd,
        /// Read end of its stderr pipe.
        stderr: OwnedFd,
    },
    /// [`Io::Terminal`]: the terminal's master side.
    Terminal {
        /// The master side.
        master: OwnedFd,
    },
}

/// A started process, registered with the reaper.
#[derive(Debug)]
pub struct Spawned {
    /// Its identity for signals and exit reports.
    pub key: ChildKey,
    /// The harness's ends of its stdin, stdout and stderr.
    pub io: SpawnedIo,
    /// Resolves with its exit status once the reaper has reaped it.
    pub exited: oneshot::Receiver<ExitStatus>,
}

/// Why a process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// `argv` is empty.
    #[error("argv is empty: name a program to run")]
    EmptyArgv,
    /// An argument or environment entry contains a NUL byte, which exec cannot pass.
    #[error("{what} contains a NUL byte")]
    NulByte {
        /// Which value, e.g. `argv[1]` or `env FOO`.
        what: String,
    },
    /// An environment variable name is empty or contains `=`.
    #[error("invalid environment variable name {name:?}")]
    EnvName {
        /// The name.
        name: String,
    },
    /// The working directory is missing or unreadable.
    #[error("cannot use working directory {path}")]
    Workdir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The working directory is not a directory.
    #[error("working directory {path} is not a directory")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// The user spec does not resolve.
    #[error("cannot run as user {spec:?}")]
    User {
        /// The spec.
        spec: String,
        /// The cause.
        #[source]
        source: UserError,
    },
    /// No executable of that name in `PATH`.
    #[error("no executable {program:?} in PATH {path}")]
    NotFound {
        /// The program.
        program: String,
        /// The `PATH` searched.
        path: String,
    },
    /// fork/exec (or the user switch before exec) failed.
    #[error("cannot start {program:?}")]
    Start {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl SpawnError {
    /// Whether the request itself is malformed (as opposed to naming something that does not
    /// exist in the guest).
    pub fn is_invalid_request(&self) -> bool {
        match self {
            SpawnError::EmptyArgv | SpawnError::NulByte { .. } | SpawnError::EnvName { .. } => true,
            SpawnError::Workdir { .. }
            | SpawnError::NotADirectory { .. }
            | SpawnError::User { .. }
            | SpawnError::NotFound { .. }
            | SpawnError::Start { .. } => false,
        }
    }
}

/// Starts `spec` in its own session with the stdin, stdout and stderr `io` says.
///
/// # Errors
/// [`SpawnError`] naming what was wrong: the request, the workdir, the user or the program.
pub fn spawn(spec: &ProcessSpec, io: Io, reaper: &Reaper) -> Result<Spawned, SpawnError> {
    validate(spec)?;
    let program = &spec.argv[0];
    let accounts = Accounts::load(Path::new("/"));
    let identity = match &spec.user {
        Some(user) => Some(accounts.resolve(user).map_err(|source| SpawnError::User {
            spec: user.clone(),
            source,
        })?),
        None => None,
    };
    let home = match &identity {
        Some(identity) => identity.home.clone(),
        None => accounts
            .home_of(nix::unistd::geteuid().as_raw())
            .map(str::to_owned),
    }
    .unwrap_or_else(|| DEFAULT_HOME.to_owned());
    let env = environment(&spec.env, &home);

    let workdir = Path::new("/").join(spec.workdir.as_deref().unwrap_or(DEFAULT_WORKDIR));
    match std::fs::metadata(&workdir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(SpawnError::NotADirectory { path: workdir }),
        Err(source) => {
            return Err(SpawnError::Workdir {
                path: workdir,
                source,
            })
        }
    }

    let search_path = env.get("PATH").map_or(DEFAULT_PATH, String::as_str);
    let executable =
        resolve_program(program, search_path, &workdir).ok_or_else(|| SpawnError::NotFound {
            program: program.clone(),
            path: search_path.to_owned(),
        })?;

    let mut command = Command::new(&executable);
    command
        .arg0(program)
        .args(&spec.argv[1..])
        .env_clear()
        .envs(&env)
        .current_dir(&workdir);
    let start_failed = |source| SpawnError::Start {
        program: program.clone(),
        source,
    };
    // The slave side is only in `command`, which is dropped when this function returns: the
    // master then reads end-of-file once the process (and whatever it started) closed it.
    let master = match io {
        Io::Pipes { stdin } => {
            command
                .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            None
        }
        Io::Terminal(size) => {
            let (master, slave) = terminal::open(size).map_err(start_failed)?;
            if let Some(id) = &identity {
                // As login(1) leaves it: the user's, writable by the tty group only.
                let _ = nix::unistd::fchown(
                    slave.as_raw_fd(),
                    Some(nix::unistd::Uid::from_raw(id.uid)),
                    Some(nix::unistd::Gid::from_raw(TTY_GID)),
                );
            }
            let stdout = slave.try_clone().map_err(start_failed)?;
            let stderr = slave.try_clone().map_err(start_failed)?;
            command
                .stdin(Stdio::from(slave))
                .stdout(Stdio::from(stdout))
                .stderr(Stdio::from(stderr));
            Some(master)
        }
    };
    if let Some(id) = &identity {
        crate::init::workspace::hand_over_if_fresh(id.uid, id.gid);
    }
    let switch = identity.map(|id| (id.uid, id.gid, id.groups));
    let nofile = limits::child_nofile();
    let controlling_terminal = master.is_some();
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (setsid, ioctl, setrlimit, setgroups, setgid, setuid) on
    // data prepared before the fork; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            enter_session_as(switch.as_ref(), nofile.as_ref(), controlling_terminal)
        });
    }

    let guard = reaper.guard();
    let mut child = command.spawn().map_err(start_failed)?;
    let pid = i32::try_from(child.id()).expect("Linux pids fit in an i32 (pid_max <= 2^22)");
    let (key, exited) = guard.register(pid);
    let io = match master {
        Some(master) => SpawnedIo::Terminal { master },
        None => SpawnedIo::Pipes {
            stdin: child.stdin.take().map(OwnedFd::from),
            stdout: child
                .stdout
                .take()
                .expect("stdout was configured as a pipe")
                .into(),
            stderr: child
                .stderr
                .take()
                .expect("stderr was configured as a pipe")
                .into(),
        },
    };
    // Dropping a Child neither waits nor kills: the reaper will collect it.
    drop(child);
    Ok(Spawned { key, io, exited })
}

/// The `tty` group of Debian and most images, which owns terminals.
const TTY_GID: u32 = 5;

/// Runs in the child between fork and exec: a new session (and so a process group of its own,
/// which signals and shutdown target), the open-file limit the harness started with (it raised
/// its own, see `limits`), then the user switch, groups first while still root.
fn enter_session_as(
    switch: Option<&(u32, u32, Vec<u32>)>,
    nofile: Option<&libc::rlimit>,
    controlling_terminal: bool,
) -> io::Result<()> {
    // SAFETY: setsid takes no arguments; a freshly forked child is never a group leader, so it
    // succeeds.
    if unsafe { libc::setsid() } < 0 {
        return Err(io::Error::last_os_error());
    }
    if controlling_terminal {
        terminal::take_as_controlling()?;
    }
    if let Some(nofile) = nofile {
        // SAFETY: `nofile` points to a valid rlimit prepared before the fork; lowering the
        // soft limit back is always permitted.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, nofile) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    if let Some((uid, gid, groups)) = switch {
        // SAFETY: `groups` is a live slice of gid_t; its length and pointer are passed together.
        if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: plain id-setting calls with integer arguments.
        if unsafe { libc::setgid(*gid) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above; setuid comes last because it drops the right to change groups.
        if unsafe { libc::setuid(*uid) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn validate(spec: &ProcessSpec) -> Result<(), SpawnError> {
    if spec.argv.is_empty() || spec.argv[0].is_empty() {
        return Err(SpawnError::EmptyArgv);
    }
    for (i, arg) in spec.argv.iter().enumerate() {
        if arg.contains('\0') {
            return Err(SpawnError::NulByte {
                what: format!("argv[{i}]"),
            });
        }
    }
    for (name, value) in &spec.env {
        if name.is_empty() || name.contains('=') {
            return Err(SpawnError::EnvName { name: name.clone() });
        }
        if name.contains('\0') || value.contains('\0') {
            return Err(SpawnError::NulByte {
                what: format!("env {name:?}"),
            });
        }
    }
    if let Some(dir) = &spec.workdir {
        if dir.contains('\0') {
            return Err(SpawnError::NulByte {
                what: "workdir".to_owned(),
            });
        }
    }
    Ok(())
}

/// The harness defaults (`PATH`, `HOME`, `TERM`) overridden and extended by the request.
pub fn environment(request: &BTreeMap<String, String>, home: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::from([
        ("PATH".to_owned(), DEFAULT_PATH.to_owned()),
        ("HOME".to_owned(), home.to_owned()),
        ("TERM".to_owned(), DEFAULT_TERM.to_owned()),
    ]);
    env.extend(request.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// Finds the executable for `program`: as given (relative to `workdir`) when it contains a
/// slash, otherwise the first executable regular file in `search_path`. Empty `PATH` entries
/// mean the working directory, as in POSIX shells.
pub fn resolve_program(program: &str, search_path: &str, workdir: &Path) -> Option<PathBuf> {
    if program.contains('/') {
        // exec reports a missing file itself, with the path; no search to do.
        return Some(workdir.join(program));
    }
    search_path
        .split(':')
        .map(|dir| workdir.join(dir).join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_env_overrides_and_extends_defaults() {
        let request = BTreeMap::from([
            ("TERM".to_owned(), "dumb".to_owned()),
            ("FOO".to_owned(), "bar".to_owned()),
        ]);
        let env = environment(&request, "/home/app");
        assert_eq!(env["PATH"], DEFAULT_PATH);
        assert_eq!(env["HOME"], "/home/app");
        assert_eq!(env["TERM"], "dumb");
        assert_eq!(env["FOO"], "bar");
        assert_eq!(env.len(), 4);
    }

    #[test]
    fn program_lookup() {
        let root = Path::new("/");
        let sh = resolve_program("sh", DEFAULT_PATH, root).unwrap();
        assert!(sh.ends_with("sh") && sh.is_absolute(), "{}", sh.display());
        assert_eq!(
            resolve_program("no-such-program-aegis", DEFAULT_PATH, root),
            None
        );
        // A directory named like the program is not an executable.
        assert_eq!(resolve_program("tmp", "/", root), None);
        assert_eq!(
            resolve_program("./run.sh", DEFAULT_PATH, Path::new("/srv")),
            Some(PathBuf::from("/srv/./run.sh"))
        );
        assert_eq!(
            resolve_program("/bin/x", DEFAULT_PATH, Path::new("/srv")),
            Some(PathBuf::from("/bin/x"))
        );
    }

    #[test]
    fn invalid_requests_are_told_apart() {
        let spec = |argv: &[&str], env: &[(&str, &str)]| ProcessSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..ProcessSpec::default()
        };
        assert!(matches!(
            validate(&spec(&[], &[])),
            Err(SpawnError::EmptyArgv)
        ));
        assert!(matches!(
            validate(&spec(&[""], &[])),
            Err(SpawnError::EmptyArgv)
        ));
        assert!(matches!(
            validate(&spec(&["echo", "a\0b"], &[])),
            Err(SpawnError::NulByte { what }) if what == "argv[1]"
        ));
        assert!(matches!(
            validate(&spec(&["env"], &[("A=B", "c")])),
            Err(SpawnError::EnvName { .. })
        ));
        assert!(validate(&spec(&["env"], &[("A", "b=c")])).is_ok());
        assert!(SpawnError::EmptyArgv.is_invalid_request());
        assert!(!SpawnError::NotFound {
            program: "x".into(),
            path: DEFAULT_PATH.into()
        }
        .is_invalid_request());
    }
}
