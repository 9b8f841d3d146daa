//! The QEMU process: started detached (own session, so it survives the daemon), identified by pid
//! plus command line, killed as a last resort, and `qemu-img` for overlays.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;

use std::os::fd::OwnedFd;

use command_fds::{CommandFdExt, FdMapping};
use nix::sys::resource::{setrlimit, Resource};

use crate::vmm::{VmExit, VmmError};

/// A resource limit set on a child before it runs (soft and hard alike, so the child cannot
/// raise it again).
pub type Limit = (Resource, u64);

/// Limits every helper process gets: no core files (a crashed QEMU would dump the guest's whole
/// memory onto the host's disk).
pub const COMMON_LIMITS: &[Limit] = &[(Resource::RLIMIT_CORE, 0)];

/// Starts `program` in a new session with stdout and stderr appended to `log`, under `limits`,
/// with each of `pass` as the given descriptor number.
pub fn spawn_detached(
    program: &Path,
    args: &[OsString],
    log: &Path,
    limits: &[Limit],
    pass: Vec<(OwnedFd, i32)>,
) -> Result<tokio::process::Child, VmmError> {
    let io_err = |source| VmmError::Io {
        path: log.to_path_buf(),
        source,
    };
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_err)?;
    let err = out.try_clone().map_err(io_err)?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(false);
    let mappings = pass
        .into_iter()
        .map(|(parent_fd, child_fd)| FdMapping {
            parent_fd,
            child_fd,
        })
        .collect();
    cmd.fd_mappings(mappings).map_err(|e| VmmError::Spawn {
        program: program.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let limits = limits.to_vec();
    // SAFETY: setsid and setrlimit are async-signal-safe system calls and touch no memory of the
    // parent (the limits were copied before the fork). setsid makes QEMU a session leader so it
    // neither dies with the daemon nor receives its terminal's signals.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            for &(resource, value) in &limits {
                setrlimit(resource, value, value).map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|source| VmmError::Spawn {
        program: program.display().to_string(),
        source,
    })
}

/// Converts a process status into a [`VmExit`].
pub fn exit_of(status: std::process::ExitStatus) -> VmExit {
    VmExit {
        code: status.code(),
        signal: status.signal(),
    }
}

/// The last lines of a log file, for error messages.
pub fn log_tail(path: &Path) -> String {
    let text = super::bounded::tail_text(path, 64 * 1024);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(5);
    let tail = lines[start..].join("; ");
    if tail.is_empty() {
        "no output".to_owned()
    } else {
        tail
    }
}

/// Whether `pid` is a live (non-zombie) process.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name; Z is a zombie.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Whether `pid` is a live VMM whose command line mentions `run_dir`.
pub fn is_vmm_of(pid: u32, run_dir: &Path) -> bool {
    if !alive(pid) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = run_dir.as_os_str().as_encoded_bytes();
    cmdline.windows(needle.len()).any(|w| w == needle)
}

/// Sends SIGKILL to `pid`.
pub fn kill(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// `qemu-img create -f qcow2 -F raw -b base overlay`: an instant copy-on-write disk.
pub async fn create_overlay(base: &Path, overlay: &Path) -> Result<(), VmmError> {
    let fail = |message: String| VmmError::CreateDisk {
        path: overlay.to_path_buf(),
        base: base.to_path_buf(),
        message,
    };
    let output = tokio::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(base)
        .arg(overlay)
        .output()
        .await
        .map_err(|e| fail(format!("cannot run qemu-img: {e}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(fail(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ))
    }
}
