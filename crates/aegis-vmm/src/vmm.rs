//! The backend-neutral VMM interface. `aegisd` drives VMs only through [`Vmm`] and [`Vm`], so
//! Firecracker, Cloud Hypervisor or libkrun can be added as new implementations without touching
//! the daemon.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::accel::Accelerator;
use crate::boot::GuestKernel;

/// Everything needed to boot one VM. The caller owns `run_dir` (one per VM) and keeps it while
/// the VM lives: sockets, pid file and the console log are created there.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmSpec {
    /// Directory for this VM's runtime files.
    pub run_dir: PathBuf,
    /// Kernel to boot.
    pub kernel: GuestKernel,
    /// Initramfs holding the harness.
    pub initramfs: PathBuf,
    /// Root disk (the harness mounts `/dev/vda`).
    pub root_disk: DiskSpec,
    /// Further disks, in order (`/dev/vdb`, ...).
    pub extra_disks: Vec<DiskSpec>,
    /// Host directories shared with the guest (virtio-fs), mounted by tag.
    pub shares: Vec<ShareSpec>,
    /// Further `aegis.*` options for the harness on the kernel command line (never secrets:
    /// the command line is visible in the VMM's argv).
    pub harness_options: Vec<String>,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Guest host name.
    pub hostname: String,
    /// Networking.
    pub network: NetworkSpec,
    /// Accelerator to use.
    pub accelerator: Accelerator,
}

/// A disk image attached to the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    /// The image file.
    pub path: PathBuf,
    /// Attach read-only.
    pub read_only: bool,
}

/// A host directory shared live with the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareSpec {
    /// The guest mounts it by this tag (at most 36 bytes).
    pub tag: String,
    /// The host directory; the guest can reach nothing outside it.
    pub host_dir: PathBuf,
    /// Whether the guest may only read.
    pub read_only: bool,
}

/// Guest networking.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// Whether the guest may open connections to the outside (NAT). Inbound forwards work either
    /// way.
    pub egress: bool,
    /// Host loopback ports forwarded to guest ports.
    pub forwards: Vec<PortForward>,
}

/// A host port forwarded to a guest TCP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortForward {
    /// Port on the host's loopback interface.
    pub host_port: u16,
    /// Port in the guest.
    pub guest_port: u16,
}

/// How the daemon reaches the guest harness's control channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlEndpoint {
    /// A unix stream socket (QEMU chardev backing the virtio-serial port).
    UnixSocket(PathBuf),
}

/// What a backend can do, reported by `GET /v1/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// Pause and resume vCPUs.
    pub pause_resume: bool,
    /// Save and restore a VM's memory to a file.
    pub snapshot: bool,
    /// Forward host ports to the guest.
    pub port_forwarding: bool,
    /// Add forwards while the VM runs.
    pub runtime_port_forwarding: bool,
}

/// Where [`Vm::snapshot`] writes a VM's state. The backend only moves bytes: where they are
/// stored, and sealed, is the caller's business. It is dropped (closed) when the state is
/// written.
pub type SnapshotSink = Box<dyn AsyncWrite + Send + Unpin>;

/// Where [`Vmm::restore`] reads a VM's state from, as [`Vm::snapshot`] wrote it.
pub type SnapshotSource = Box<dyn AsyncRead + Send + Unpin>;

/// A snapshot written by [`Vm::snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    /// Bytes of state written.
    pub bytes: u64,
    /// How long writing it took.
    pub took: Duration,
}

/// Why a VM is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmExit {
    /// Exit code of the VMM process when known (it is not after a re-attach).
    pub code: Option<i32>,
    /// Signal that killed the VMM process, if one did.
    pub signal: Option<i32>,
}

impl fmt::Display for VmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (_, Some(sig)) => write!(f, "VMM process killed by signal {sig}"),
            (Some(code), None) => write!(f, "VMM process exited with code {code}"),
            (None, None) => write!(f, "VMM process ended"),
        }
    }
}

/// Failures of the VMM layer.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The VMM program is not installed.
    #[error("{program} not found")]
    VmmMissing {
        /// The program looked for.
        program: String,
    },
    /// A runtime file could not be created or read.
    #[error("cannot access {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The VMM process could not be started.
    #[error("cannot start {program}")]
    Spawn {
        /// The program.
        program: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The VMM process ended before it was ready; `log` is the tail of its output.
    #[error("the VMM exited during start-up ({exit}): {log}")]
    EarlyExit {
        /// How it ended.
        exit: VmExit,
        /// Its last output lines.
        log: String,
    },
    /// The VMM did not become ready in time.
    #[error("the VMM did not answer on {} within {}s", path.display(), timeout.as_secs())]
    NotReady {
        /// The control socket waited for.
        path: PathBuf,
        /// How long we waited.
        timeout: Duration,
    },
    /// The VMM's management channel failed.
    #[error("VMM command {command} failed: {message}")]
    Command {
        /// The command.
        command: String,
        /// The VMM's message.
        message: String,
    },
    /// The VM is gone.
    #[error("the VM is not running ({0})")]
    Gone(VmExit),
    /// Re-attaching found no live VMM for this run directory.
    #[error("no running VM in {}", run_dir.display())]
    NothingToAttach {
        /// The run directory.
        run_dir: PathBuf,
    },
    /// The backend cannot snapshot or restore VMs.
    #[error("the {backend} backend cannot snapshot or restore VMs")]
    SnapshotUnsupported {
        /// The backend.
        backend: &'static str,
    },
    /// Writing or loading a snapshot failed.
    #[error("snapshot failed: {message}")]
    Snapshot {
        /// What went wrong, with what the VMM said.
        message: String,
    },
    /// A disk image could not be created.
    #[error("cannot create disk {} on {}: {message}", path.display(), base.display())]
    CreateDisk {
        /// The overlay.
        path: PathBuf,
        /// Its base.
        base: PathBuf,
        /// What qemu-img said.
        message: String,
    },
}

impl VmmError {
    /// What the user can do about it, when there is something.
    pub fn hint(&self) -> Option<String> {
        match self {
            VmmError::VmmMissing { program } if program == "virtiofsd" => Some(
                "host-directory and named directory workspaces need virtiofsd: run `./setup.sh` \
                 (it builds it), or set AEGIS_VIRTIOFSD"
                    .to_owned(),
            ),
            VmmError::VmmMissing { .. } => Some(
                "install QEMU: run `./setup.sh` (Debian package qemu-system-x86), or set AEGIS_QEMU"
                    .to_owned(),
            ),
            VmmError::EarlyExit { .. } | VmmError::NotReady { .. } => {
                Some("run `aegis doctor` to check QEMU, the kernel and the accelerator".to_owned())
            }
            VmmError::CreateDisk { .. } => {
                Some("check free disk space and that qemu-img is installed (qemu-utils)".to_owned())
            }
            VmmError::Io { .. }
            | VmmError::Spawn { .. }
            | VmmError::Command { .. }
            | VmmError::Gone(_)
            | VmmError::NothingToAttach { .. }
            | VmmError::SnapshotUnsupported { .. }
            | VmmError::Snapshot { .. } => None,
        }
    }
}

/// A VMM backend: creates VMs and re-attaches to VMs a previous daemon started.
#[async_trait]
pub trait Vmm: Send + Sync + fmt::Debug {
    /// Backend name (`qemu`).
    fn name(&self) -> &'static str;
    /// What this backend supports.
    fn capabilities(&self) -> Capabilities;
    /// Boots a VM. Returns once the VMM process runs and answers its management channel; the
    /// guest harness may still be booting.
    async fn start(&self, spec: &VmSpec) -> Result<Box<dyn Vm>, VmmError>;
    /// Re-attaches to a VM started earlier (by this or a previous daemon) in `run_dir`.
    async fn attach(&self, run_dir: &Path) -> Result<Box<dyn Vm>, VmmError>;
    /// The pid of the VMM process running in `run_dir`, if one does: what [`Vmm::attach`] would
    /// attach to, known without connecting (a daemon shows it while re-attaching).
    fn running_pid(&self, run_dir: &Path) -> Option<u32> {
        let _ = run_dir;
        None
    }
    /// Starts a VM from a snapshot written by [`Vm::snapshot`] of a VM with the same `spec`
    /// (only the network forwards and the run directory may differ). Returns once the state is
    /// loaded and the vCPUs run again: the guest carries on where it was paused.
    ///
    /// # Errors
    /// [`VmmError::SnapshotUnsupported`] for backends without snapshots (the default); otherwise
    /// the start or load failure. The VMM process is gone when this fails.
    async fn restore(
        &self,
        spec: &VmSpec,
        source: SnapshotSource,
    ) -> Result<Box<dyn Vm>, VmmError> {
        let _ = (spec, source);
        Err(VmmError::SnapshotUnsupported {
            backend: self.name(),
        })
    }
    /// The VMM program's identity (path and version), recorded with a snapshot: a snapshot is
    /// only restored by the program that wrote it.
    fn program_identity(&self) -> String {
        self.name().to_owned()
    }
    /// Creates a copy-on-write disk on a read-only base image.
    async fn create_overlay(&self, base: &Path, overlay: &Path) -> Result<(), VmmError>;
}

/// One running VM. Dropping it does not end the VM: VMs outlive the daemon.
#[async_trait]
pub trait Vm: Send + Sync + fmt::Debug {
    /// Host pid of the VMM process.
    fn pid(&self) -> u32;
    /// Where the guest harness's control channel is reached.
    fn control(&self) -> &ControlEndpoint;
    /// File receiving the guest's serial console.
    fn console_log(&self) -> PathBuf;
    /// Resolves to `Some` once the VMM process is gone.
    fn exited(&self) -> watch::Receiver<Option<VmExit>>;
    /// Freezes the vCPUs.
    async fn pause(&self) -> Result<(), VmmError>;
    /// Unfreezes the vCPUs.
    async fn resume(&self) -> Result<(), VmmError>;
    /// Ends the VM now (no guest cooperation): asks the VMM to quit, then kills it after
    /// `grace`. Returns how it ended.
    async fn kill(&self, grace: Duration) -> VmExit;
    /// Writes the memory and device state of a *paused* VM to `sink`.
    /// The VM stays paused and should be ended afterwards: its disk must not change any more
    /// for the snapshot to be restorable.
    ///
    /// # Errors
    /// [`VmmError::SnapshotUnsupported`] for backends without snapshots (the default), or the
    /// write failure.
    async fn snapshot(&self, sink: SnapshotSink) -> Result<SnapshotInfo, VmmError> {
        let _ = sink;
        Err(VmmError::SnapshotUnsupported { backend: "this" })
    }
    /// Forwards a host loopback port to a guest port while the VM runs.
    async fn add_forward(&self, forward: PortForward) -> Result<(), VmmError>;
    /// Removes a forward added earlier.
    async fn remove_forward(&self, forward: PortForward) -> Result<(), VmmError>;
    /// Host address to reach a forwarded guest port.
    fn host_address(&self, forward: PortForward) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], forward.host_port))
    }
}

/// Waits until a VM's exit watch (see [`Vm::exited`]) reports an exit. A watch whose sender is
/// gone without an exit reports an unknown exit.
pub async fn wait_for_exit(exited: &mut watch::Receiver<Option<VmExit>>) -> VmExit {
    match exited.wait_for(Option::is_some).await {
        Ok(exit) => exit.clone().unwrap_or(VmExit {
            code: None,
            signal: None,
        }),
        Err(_) => VmExit {
            code: None,
            signal: None,
        },
    }
}
