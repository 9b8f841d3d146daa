//! Booting one guest: overlay disk, initramfs, VMM process, control channel, harness ready. Also
//! re-attaching to a guest a previous daemon started. Every step has a deadline, so a missing
//! kernel, a dead VMM or a harness that never answers ends in a [`BootError`], never a hang.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::net::SocketAddr;

use aegis_proto::control::{
    ingress_header, HealthResult, IngressStatus, Method, SetIngressKeyParams, INGRESS_KEY_BYTES,
    INGRESS_PORT,
};
use aegis_vmm::boot::{GuestKernel, Initramfs, InitramfsError, KernelError};
use aegis_vmm::{
    Accelerator, ControlEndpoint, DiskSpec, NetworkSpec, PortForward, ShareSpec, Vm, VmExit,
    VmSpec, Vmm, VmmError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use tokio_util::sync::CancellationToken;

use crate::control::{ControlChannel, ControlError, NotificationSink, CONTROL_CALL_TIMEOUT};
use crate::workspaces::{ensure_volume, Attachment, WorkspaceError, SHARE_TAG};

/// How long a guest gets from VMM start to a harness answering `health`. A cold boot takes
/// 4–10 s under TCG on an idle host; parallel boots on a loaded two-core machine take several
/// times that. Finite everywhere, so `aegis run` never hangs on a guest that will not come up.
pub const HARNESS_READY_TIMEOUT: Duration = Duration::from_secs(120);

/// How long to wait for the VMM's exit to be reported after its control socket closed.
const VMM_EXIT_GRACE: Duration = Duration::from_secs(5);

/// How long a restored guest's harness gets to answer after its vCPUs run again. Measured:
/// ~230 ms under TCG; a harness that has not answered after this long is taken as a snapshot
/// that does not work, and the instance cold-boots instead.
pub const RESTORE_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a re-attached harness gets to answer (it is already running).
pub const ATTACH_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a VM found but not answering gets to quit before it is killed.
const ATTACH_KILL_GRACE: Duration = Duration::from_secs(3);

/// What every boot shares: the backend and the boot artifacts.
#[derive(Debug, Clone)]
pub struct BootEnv {
    /// The VMM backend.
    pub vmm: Arc<dyn Vmm>,
    /// Accelerator for new VMs.
    pub accelerator: Accelerator,
    /// Directory of the set-up step's kernel.
    pub kernel_dir: PathBuf,
    /// The static harness binary.
    pub harness: PathBuf,
    /// Where built initramfs files are cached.
    pub cache_dir: PathBuf,
    /// How long a new guest's harness gets to answer ([`HARNESS_READY_TIMEOUT`] by default).
    pub ready_timeout: Duration,
}

/// One boot's parameters.
#[derive(Debug, Clone)]
pub struct BootPlan {
    /// Runtime directory of this VM (sockets, console log).
    pub run_dir: PathBuf,
    /// Read-only base image of the root filesystem.
    pub base_image: PathBuf,
    /// The instance's copy-on-write overlay; created on first boot, kept afterwards.
    pub overlay: PathBuf,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest host name.
    pub hostname: String,
    /// Outbound network access.
    pub egress: bool,
    /// Host ports forwarded to the guest.
    pub forwards: Vec<PortForward>,
    /// What is mounted at `/workspace`.
    pub workspace: Option<Attachment>,
}

/// The way into a guest's ports: the host address QEMU forwards to the harness's ingress proxy,
/// and the key its headers must carry (the address is on loopback, open to every local user).
#[derive(Clone, Copy)]
pub struct IngressForward {
    /// Where the router connects.
    pub addr: SocketAddr,
    /// Drawn per boot by the daemon and given to the harness over the control channel.
    pub key: [u8; INGRESS_KEY_BYTES],
}

/// How long the harness gets to answer an ingress header. It connects to the guest port first;
/// a guest that was just resumed under TCG may take a moment to be scheduled.
const INGRESS_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

impl IngressForward {
    /// Opens a connection to guest port `port` (or the harness's data service, for
    /// [`aegis_proto::control::DATA_SERVICE_PORT`]) through the harness's ingress proxy.
    ///
    /// # Errors
    /// The proxy's status when it answered with another than `Connected`; `None` when the
    /// connection failed before an answer (the proxy is not up yet, or the VM is gone).
    pub async fn open(self, port: u16) -> Result<TcpStream, Option<IngressStatus>> {
        let mut stream = TcpStream::connect(self.addr).await.map_err(|_| None)?;
        let _ = stream.set_nodelay(true);
        stream
            .write_all(&ingress_header(&self.key, port))
            .await
            .map_err(|_| None)?;
        let mut status = [0u8; 1];
        match tokio::time::timeout(INGRESS_ANSWER_TIMEOUT, stream.read_exact(&mut status)).await {
            Ok(Ok(_)) => match IngressStatus::from_byte(status[0]) {
                IngressStatus::Connected => Ok(stream),
                other => Err(Some(other)),
            },
            Ok(Err(_)) => Err(None),
            Err(_) => Err(Some(IngressStatus::Failed)),
        }
    }
}

impl std::fmt::Debug for IngressForward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngressForward")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// A guest whose harness answers.
#[derive(Debug)]
pub struct Guest {
    /// The VM.
    pub vm: Box<dyn Vm>,
    /// The way into its ports (the router connects here).
    pub ingress: Option<IngressForward>,
    /// The harness's control channel.
    pub control: ControlChannel,
    /// The harness's first health answer.
    pub health: HealthResult,
    /// What the VM was started with (kept in the run directory, so a re-attached VM has it
    /// too); `None` when that record is missing.
    pub spec: Option<Box<VmSpec>>,
}

/// A VM ready to be started: its spec, with the ingress forward chosen.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The VM.
    pub spec: VmSpec,
    /// Host port forwarded to the harness's ingress proxy.
    pub ingress_port: u16,
}

/// Why a guest could not be booted or re-attached.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// No guest kernel.
    #[error("cannot find the guest kernel")]
    Kernel(#[source] KernelError),
    /// The initramfs could not be built.
    #[error("cannot build the initramfs")]
    Initramfs(#[source] InitramfsError),
    /// The root filesystem image is missing.
    #[error("root filesystem image {} is missing", path.display())]
    MissingBaseImage {
        /// The image.
        path: PathBuf,
    },
    /// The VMM failed.
    #[error("cannot start the VM")]
    Vmm(#[source] VmmError),
    /// The VM ended before its harness answered.
    #[error("the VM stopped during boot ({exit}); console: {console}")]
    DiedDuringBoot {
        /// How the VMM ended.
        exit: VmExit,
        /// Last lines of the guest console.
        console: String,
    },
    /// The harness never answered.
    #[error("the guest harness did not answer within {}s; console: {console}", timeout.as_secs())]
    HarnessTimeout {
        /// The deadline.
        timeout: Duration,
        /// Last lines of the guest console.
        console: String,
    },
    /// The control channel failed.
    #[error("cannot talk to the guest harness")]
    Control(#[source] ControlError),
    /// The workspace could not be attached.
    #[error("cannot attach the workspace")]
    Workspace(#[source] WorkspaceError),
    /// The boot was called off (stop or delete while starting).
    #[error("the boot was cancelled")]
    Cancelled,
}

impl BootError {
    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            BootError::Kernel(e) => Some(e.hint()),
            BootError::Initramfs(
                InitramfsError::ReadHarness { .. } | InitramfsError::NotStatic { .. },
            ) => Some(
                "build the guest harness with `scripts/build.sh` (or set AEGIS_HARNESS)".to_owned(),
            ),
            BootError::Initramfs(_) => {
                Some("re-run `./setup.sh` to reinstall the guest kernel".to_owned())
            }
            BootError::MissingBaseImage { .. } => {
                Some("pull or import the image again (`aegis image pull …`)".to_owned())
            }
            BootError::Vmm(e) => e.hint(),
            BootError::DiedDuringBoot { .. } | BootError::HarnessTimeout { .. } => Some(
                "the guest console above tells why; run `aegis doctor` to check the set-up"
                    .to_owned(),
            ),
            BootError::Workspace(WorkspaceError::Volume(e)) => e.hint(),
            BootError::Workspace(_) => Some(
                "recreate the workspace or its directory, or start the instance again with another \
                 --workspace"
                    .to_owned(),
            ),
            BootError::Control(_) | BootError::Cancelled => None,
        }
    }
}

/// Boots a guest cold and waits for its harness ([`prepare`], then [`launch`]).
///
/// # Errors
/// [`BootError`] naming the failed step; the VMM process is killed on failure.
pub async fn boot(
    env: &BootEnv,
    plan: &BootPlan,
    sink: NotificationSink,
    cancel: &CancellationToken,
) -> Result<Guest, BootError> {
    let prepared = prepare(env, plan).await?;
    launch(env, prepared, Origin::Boot, sink, cancel).await
}

/// Locates the kernel, builds the initramfs, creates the overlay if needed and picks the
/// ingress port: everything a start or a restore needs.
///
/// # Errors
/// [`BootError`] naming the missing piece.
pub async fn prepare(env: &BootEnv, plan: &BootPlan) -> Result<Prepared, BootError> {
    let kernel = GuestKernel::locate(&env.kernel_dir).map_err(BootError::Kernel)?;
    let (harness, cache_dir) = (env.harness.clone(), env.cache_dir.clone());
    let kernel_for_initramfs = kernel.clone();
    let initramfs = tokio::task::spawn_blocking(move || {
        Initramfs::ensure(&harness, &kernel_for_initramfs, &cache_dir)
    })
    .await
    .map_err(|e| {
        BootError::Initramfs(InitramfsError::Write {
            path: env.cache_dir.clone(),
            source: std::io::Error::other(e.to_string()),
        })
    })?
    .map_err(BootError::Initramfs)?;
    if !plan.base_image.is_file() {
        return Err(BootError::MissingBaseImage {
            path: plan.base_image.clone(),
        });
    }
    if !plan.overlay.exists() {
        env.vmm
            .create_overlay(&plan.base_image, &plan.overlay)
            .await
            .map_err(BootError::Vmm)?;
    }
    let (mut extra_disks, mut shares, mut harness_options) = (Vec::new(), Vec::new(), Vec::new());
    match &plan.workspace {
        Some(Attachment::Volume { path, size_mib }) => {
            let (path, size_mib) = (path.clone(), *size_mib);
            let volume = path.clone();
            tokio::task::spawn_blocking(move || ensure_volume(&volume, size_mib))
                .await
                .map_err(|e| {
                    BootError::Workspace(WorkspaceError::Io {
                        path: path.clone(),
                        source: std::io::Error::other(e.to_string()),
                    })
                })?
                .map_err(BootError::Workspace)?;
            // The second disk: the root is /dev/vda.
            extra_disks.push(DiskSpec {
                path,
                read_only: false,
            });
            harness_options.push("aegis.workspace=/dev/vdb".to_owned());
        }
        Some(Attachment::Directory { path }) => {
            if !path.is_dir() {
                return Err(BootError::Workspace(WorkspaceError::HostDir {
                    path: path.clone(),
                    why: "it no longer exists".to_owned(),
                }));
            }
            shares.push(ShareSpec {
                tag: SHARE_TAG.to_owned(),
                host_dir: path.clone(),
                read_only: false,
            });
            harness_options.push(format!("aegis.workspace=virtiofs:{SHARE_TAG}"));
        }
        None => {}
    }
    let ingress_port = free_loopback_port().map_err(|source| {
        BootError::Vmm(VmmError::Io {
            path: plan.run_dir.clone(),
            source,
        })
    })?;
    let mut forwards = plan.forwards.clone();
    forwards.push(PortForward {
        host_port: ingress_port,
        guest_port: INGRESS_PORT,
    });
    let spec = VmSpec {
        run_dir: plan.run_dir.clone(),
        kernel,
        initramfs: initramfs.path,
        root_disk: DiskSpec {
            path: plan.overlay.clone(),
            read_only: false,
        },
        extra_disks,
        shares,
        harness_options,
        memory_mib: plan.memory_mib,
        vcpus: plan.vcpus,
        hostname: plan.hostname.clone(),
        network: NetworkSpec {
            egress: plan.egress,
            forwards,
        },
        accelerator: env.accelerator,
    };
    Ok(Prepared { spec, ingress_port })
}

/// How a VM comes up.
pub enum Origin {
    /// A cold boot.
    Boot,
    /// A restore from a snapshot's state, read from this source.
    Snapshot(aegis_vmm::SnapshotSource),
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Origin::Boot => "Boot",
            Origin::Snapshot(_) => "Snapshot",
        })
    }
}

/// Starts a prepared guest (booted or restored) and waits for its harness.
///
/// # Errors
/// [`BootError`] naming the failed step; the VMM process is killed on failure.
pub async fn launch(
    env: &BootEnv,
    prepared: Prepared,
    origin: Origin,
    sink: NotificationSink,
    cancel: &CancellationToken,
) -> Result<Guest, BootError> {
    let started = Instant::now();
    if cancel.is_cancelled() {
        return Err(BootError::Cancelled);
    }
    let Prepared { spec, ingress_port } = prepared;
    let restored = matches!(origin, Origin::Snapshot(_));
    let (vm, timeout) = match origin {
        Origin::Boot => (env.vmm.start(&spec).await, env.ready_timeout),
        Origin::Snapshot(source) => (env.vmm.restore(&spec, source).await, RESTORE_READY_TIMEOUT),
    };
    let vm = vm.map_err(BootError::Vmm)?;
    // And what it was started with, so a re-attached VM can still be snapshotted.
    if let Ok(text) = serde_json::to_vec(&spec) {
        if let Err(e) = crate::durable::write(&spec.run_dir.join(SPEC_FILE), &text, 0o600) {
            tracing::warn!(error = %e, "cannot keep the VM's start parameters; a re-attached VM stops without a snapshot");
        }
    }
    let forward = IngressForward {
        addr: SocketAddr::from(([127, 0, 0, 1], ingress_port)),
        key: rand::random(),
    };
    let ready = tokio::select! {
        r = connect_ready(vm.as_ref(), sink, timeout, true) => r,
        () = cancel.cancelled() => Err(BootError::Cancelled),
    };
    // A restored guest still holds the key of the boot it was saved from: it gets a new one too.
    let ready = match ready {
        Ok((control, health)) => set_ingress_key(&control, &spec.run_dir, forward)
            .await
            .map(|ingress| (control, health, ingress)),
        Err(e) => Err(e),
    };
    match ready {
        Ok((control, health, ingress)) => {
            tracing::info!(
                pid = vm.pid(),
                restored,
                took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "guest ready"
            );
            Ok(Guest {
                vm,
                ingress,
                control,
                health,
                spec: Some(Box::new(spec)),
            })
        }
        Err(e) => {
            vm.kill(Duration::from_secs(2)).await;
            Err(e)
        }
    }
}

/// Re-attaches to a guest started earlier in `run_dir`.
///
/// # Errors
/// When no VMM runs there or its harness does not answer.
pub async fn attach(
    env: &BootEnv,
    run_dir: &Path,
    sink: NotificationSink,
    paused: bool,
) -> Result<Guest, BootError> {
    let vm = env.vmm.attach(run_dir).await.map_err(BootError::Vmm)?;
    if !paused {
        // A daemon killed while it saved a snapshot left the VM paused (the save pauses it
        // first); resuming a running VM does nothing.
        if let Err(e) = vm.resume().await {
            tracing::warn!(error = %e, "cannot resume the VM found");
        }
    }
    // A paused guest cannot answer `health`; its harness is asked once it is resumed.
    let (control, health) =
        match connect_ready(vm.as_ref(), sink, ATTACH_READY_TIMEOUT, !paused).await {
            Ok(ready) => ready,
            Err(e) => {
                // Left running, the lost VM would hold its disks and a fresh boot could not
                // open them.
                vm.kill(ATTACH_KILL_GRACE).await;
                return Err(e);
            }
        };
    let ingress = read_ingress(run_dir);
    // Missing (a VM started by an older daemon) or unreadable: the VM runs on, and stops
    // without a snapshot.
    let spec = std::fs::read(run_dir.join(SPEC_FILE))
        .ok()
        .and_then(|text| serde_json::from_slice::<VmSpec>(&text).ok())
        .filter(|spec| spec.run_dir == run_dir)
        .map(Box::new);
    Ok(Guest {
        vm,
        ingress,
        control,
        health,
        spec,
    })
}

/// Connects to the VM's control socket and waits for `health`, racing the VMM's death.
async fn connect_ready(
    vm: &dyn Vm,
    sink: NotificationSink,
    timeout: Duration,
    wait_health: bool,
) -> Result<(ControlChannel, HealthResult), BootError> {
    let ControlEndpoint::UnixSocket(path) = vm.control().clone();
    let console = vm.console_log();
    let mut exited = vm.exited();
    let ready = async {
        let control = ControlChannel::connect(&path, sink)
            .await
            .map_err(BootError::Control)?;
        if !wait_health {
            return Ok((control, HealthResult::unknown()));
        }
        match control.wait_ready(timeout).await {
            Ok(health) => Ok((control, health)),
            Err(ControlError::Timeout { .. }) => Err(BootError::HarnessTimeout {
                timeout,
                console: console_tail(&console),
            }),
            Err(e) => Err(BootError::Control(e)),
        }
    };
    let result = tokio::select! {
        r = ready => r,
        exit = aegis_vmm::wait_for_exit(&mut exited) => {
            return Err(BootError::DiedDuringBoot { exit, console: console_tail(&console) });
        }
    };
    match result {
        // The channel closes when the VMM exits, often just before the exit is reported.
        Err(BootError::Control(ControlError::Closed | ControlError::Connect { .. })) => {
            match tokio::time::timeout(VMM_EXIT_GRACE, aegis_vmm::wait_for_exit(&mut exited)).await
            {
                Ok(exit) => Err(BootError::DiedDuringBoot {
                    exit,
                    console: console_tail(&console),
                }),
                Err(_) => Err(BootError::Control(ControlError::Closed)),
            }
        }
        other => other,
    }
}

/// File in the run directory holding the ingress forward's host port.
const INGRESS_FILE: &str = "ingress.port";
/// File in the run directory holding the ingress key (hex, mode 0600).
const INGRESS_KEY_FILE: &str = "ingress.key";

/// Gives the harness its ingress key and keeps the forward beside the VM, so a re-attaching
/// daemon finds it again. Without a key the guest's ports are unreachable (the VM still runs).
async fn set_ingress_key(
    control: &ControlChannel,
    run_dir: &Path,
    forward: IngressForward,
) -> Result<Option<IngressForward>, BootError> {
    let params = SetIngressKeyParams { key: forward.key };
    if let Err(e) = control
        .call::<serde_json::Value>(Method::SetIngressKey, &params, CONTROL_CALL_TIMEOUT)
        .await
    {
        return match e {
            ControlError::Rpc { .. } | ControlError::Decode { .. } => {
                tracing::warn!(error = %e, "the harness takes no ingress key; its ports are unreachable");
                Ok(None)
            }
            other => Err(BootError::Control(other)),
        };
    }
    let kept = crate::durable::write(
        &run_dir.join(INGRESS_KEY_FILE),
        hex::encode(forward.key).as_bytes(),
        0o600,
    )
    .and_then(|()| {
        let port = forward.addr.port().to_string();
        crate::durable::write(&run_dir.join(INGRESS_FILE), port.as_bytes(), 0o600)
    });
    if let Err(e) = kept {
        tracing::warn!(error = %e, "cannot keep the ingress forward beside the VM; a daemon restart loses it");
    }
    Ok(Some(forward))
}

/// The forward kept by [`set_ingress_key`].
fn read_ingress(run_dir: &Path) -> Option<IngressForward> {
    let port = std::fs::read_to_string(run_dir.join(INGRESS_FILE)).ok()?;
    let key = std::fs::read_to_string(run_dir.join(INGRESS_KEY_FILE)).ok()?;
    let key = hex::decode(key.trim()).ok()?.try_into().ok()?;
    Some(IngressForward {
        addr: SocketAddr::from(([127, 0, 0, 1], port.trim().parse::<u16>().ok()?)),
        key,
    })
}

/// The VM's [`VmSpec`] as JSON, beside the VM.
const SPEC_FILE: &str = "vm-spec.json";

/// A loopback port that is free now (the VMM binds it right after).
fn free_loopback_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

/// The last meaningful lines of a guest console, for error messages.
pub fn console_tail(path: &Path) -> String {
    // The end only: guest root can fill the console with anything.
    let text = aegis_vmm::qemu::bounded::tail_text(path, 64 * 1024);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = lines[lines.len().saturating_sub(6)..].join(" | ");
    if tail.is_empty() {
        "(empty)".to_owned()
    } else {
        tail
    }
}
