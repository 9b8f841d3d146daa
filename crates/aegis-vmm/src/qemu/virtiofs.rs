//! `virtiofsd`, the vhost-user daemon behind a shared host directory: one process per share per
//! VM, started before QEMU in the VM's run directory and, like QEMU, in its own session so it
//! outlives the daemon. It ends by itself when QEMU disconnects.
//!
//! Confinement is virtiofsd's own: its default `namespace` sandbox pivots into the shared
//! directory inside fresh mount, PID and network namespaces, so no request the guest crafts (a
//! `..` lookup, a symlink, an open by handle) can name a host path outside it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::process;
use crate::vmm::{ShareSpec, VmmError};

/// Environment variable naming the `virtiofsd` program.
pub const VIRTIOFSD_ENV: &str = "AEGIS_VIRTIOFSD";

/// Where `virtiofsd` is looked for after `$AEGIS_VIRTIOFSD` and `$PATH`: Debian's package and
/// QEMU's older helper location.
const LIBEXEC_DIRS: [&str; 2] = ["/usr/libexec", "/usr/lib/qemu"];

/// How long `virtiofsd` gets to create its socket. It does so at once; the bound catches a
/// wedged host.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// Finds `virtiofsd`.
pub fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(VIRTIOFSD_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    if let Some(p) = super::find_program("virtiofsd") {
        return Some(p);
    }
    LIBEXEC_DIRS
        .iter()
        .map(|dir| Path::new(dir).join("virtiofsd"))
        .find(|p| p.is_file())
}

/// The vhost-user socket of share `index` in `run_dir`.
pub fn socket_path(run_dir: &Path, index: usize) -> PathBuf {
    run_dir.join(format!("virtiofs-{index}.sock"))
}

/// A started `virtiofsd`.
#[derive(Debug)]
pub struct Virtiofsd {
    pid: u32,
}

impl Virtiofsd {
    /// Kills it (when QEMU never connected, it would wait forever).
    pub fn kill(&self) {
        process::kill(self.pid);
    }
}

/// Starts `virtiofsd` for `share` and waits for its socket.
///
/// # Errors
/// [`VmmError`] when the program is missing, the directory is not one, or it does not come up.
pub async fn start(share: &ShareSpec, run_dir: &Path, index: usize) -> Result<Virtiofsd, VmmError> {
    let program = find().ok_or_else(|| VmmError::VmmMissing {
        program: "virtiofsd".to_owned(),
    })?;
    if !share.host_dir.is_dir() {
        return Err(VmmError::Io {
            path: share.host_dir.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the shared directory does not exist",
            ),
        });
    }
    let socket = socket_path(run_dir, index);
    let _ = std::fs::remove_file(&socket);
    let log = run_dir.join(format!("virtiofsd-{index}.log"));
    let mut args: Vec<OsString> = Vec::new();
    let mut socket_arg = OsString::from("--socket-path=");
    socket_arg.push(socket.as_os_str());
    args.push(socket_arg);
    let mut dir_arg = OsString::from("--shared-dir=");
    dir_arg.push(share.host_dir.as_os_str());
    args.push(dir_arg);
    // `auto`: the guest caches until the host changes a file's attributes, so host edits show up
    // within a second without paying a round trip on every stat.
    args.push("--cache=auto".into());
    args.push("--log-level=warn".into());
    if share.read_only {
        args.push("--readonly".into());
    }
    tracing::debug!(program = %program.display(), ?args, "starting virtiofsd");
    let mut child =
        process::spawn_detached(&program, &args, &log, process::COMMON_LIMITS, Vec::new())?;
    let pid = child.id().unwrap_or(0);
    let deadline = tokio::time::Instant::now() + SOCKET_TIMEOUT;
    loop {
        if socket.exists() {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(VmmError::EarlyExit {
                exit: process::exit_of(status),
                log: format!("virtiofsd: {}", process::log_tail(&log)),
            });
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.start_kill();
            return Err(VmmError::NotReady {
                path: socket,
                timeout: SOCKET_TIMEOUT,
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Reaps it when it ends (after QEMU disconnects); a daemon restart leaves that to init.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok(Virtiofsd { pid })
}
