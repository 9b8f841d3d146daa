//! Messages to an instance actor: one variant per operation, each with a typed reply channel.

use aegis_proto::api::Instance;
use aegis_proto::control::{ActivityParams, ExitStatus, ProcessSpec};
use aegis_vmm::VmExit;
use tokio::sync::oneshot;

use aegis_image::manifest::ImageConfig;

use super::boot::{BootError, Guest};
use super::exec::{ExecSpec, ExecStarted};
use super::output::{GuestNote, OutputRouter};
use super::spec::ExposeSpec;
use super::state::InvalidTransition;
use crate::control::{ControlChannel, ControlError};
use crate::ids::InstanceId;
use crate::images::ImageError;
use crate::registry::RegistryError;
use crate::secrets::{SecretEnv, SecretError};

/// The reply half of a command.
pub type Reply<T> = oneshot::Sender<Result<T, LifecycleError>>;

/// How to stop a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Ask the harness: SIGTERM, grace period, SIGKILL, sync, power off.
    Graceful,
    /// End the VMM process now (delete).
    Force,
}

/// A guest that booted, with what the actor needs to start its primary process.
#[derive(Debug)]
pub struct Booted {
    /// The guest.
    pub guest: Guest,
    /// The image's run-time settings.
    pub image: ImageConfig,
    /// The guest's output router.
    pub output: OutputRouter,
    /// Whether the guest was restored from a snapshot (its processes already run).
    pub restored: bool,
}

/// What a caller needs to use a running guest: its channel, its output router, and the
/// environment, user and working directory execs inherit from the instance.
#[derive(Debug, Clone)]
pub struct GuestLink {
    /// The harness's control channel.
    pub control: ControlChannel,
    /// Where exec output is routed.
    pub output: OutputRouter,
    /// Defaults for execs (`argv` empty): the image's environment under the instance's
    /// explicit one. Holds no secret values.
    pub defaults: ProcessSpec,
    /// The secrets resolved at this boot, less those an explicit variable overrides; added to
    /// `defaults.env` for each process, whose own variables win.
    pub secrets: std::sync::Arc<SecretEnv>,
    /// Host address of the guest's ingress proxy.
    pub ingress: Option<super::boot::IngressForward>,
    /// Whether this wake had to boot or resume the guest (its servers may still be starting).
    pub woke: bool,
}

/// A message to an instance actor.
#[derive(Debug)]
pub enum Command {
    /// Boot (also re-enables a disabled instance).
    Start {
        /// Answered once the boot has begun.
        reply: Reply<Instance>,
    },
    /// Stop the VM; it can be woken again.
    Stop {
        /// How.
        mode: StopMode,
        /// Answered once stopped.
        reply: Reply<Instance>,
    },
    /// Stop and never wake until started again.
    Disable {
        /// Answered once stopped.
        reply: Reply<Instance>,
    },
    /// Replace the names of the secrets injected from the next boot on (already validated).
    SetSecrets {
        /// Names, or `["*"]`.
        secrets: Vec<String>,
        /// Answered once recorded.
        reply: Reply<Instance>,
    },
    /// Replace the instance's lifetime (already validated); `None` removes it.
    SetLifetime {
        /// The new lifetime.
        lifetime: Option<super::spec::Lifetime>,
        /// Answered once recorded.
        reply: Reply<Instance>,
    },
    /// Add an exposed port (its public port already bound by the router).
    Expose {
        /// The port.
        expose: ExposeSpec,
        /// Answered once recorded.
        reply: Reply<Instance>,
    },
    /// Remove an exposed port.
    Unexpose {
        /// The guest port.
        guest_port: u16,
        /// Answered with the removed entry.
        reply: Reply<ExposeSpec>,
    },
    /// Stop, then boot.
    Restart {
        /// Answered once the new boot has begun.
        reply: Reply<Instance>,
    },
    /// Freeze the vCPUs.
    Pause {
        /// Answered once paused.
        reply: Reply<Instance>,
    },
    /// Unfreeze the vCPUs.
    Resume {
        /// Answered once running.
        reply: Reply<Instance>,
    },
    /// Make sure the guest runs (boot or resume as needed) and hand out a link to it.
    Wake {
        /// Answered when the guest is ready.
        reply: Reply<GuestLink>,
    },
    /// Wake the guest as [`Command::Wake`] does, then start a process in it.
    Exec {
        /// What to run.
        request: ExecSpec,
        /// Answered once the process runs.
        reply: Reply<ExecStarted>,
    },
    /// Record activity (exec, connection) for idle bookkeeping.
    Touch,
    /// Stop the VM, remove files and registry row, end the actor.
    Delete {
        /// Answered once gone.
        reply: Reply<()>,
    },
    /// Daemon shutdown (`aegis down`): stop the VM gracefully and end the actor.
    Shutdown {
        /// Answered once stopped.
        reply: Reply<()>,
    },
    /// Sent by the actor's own boot task.
    BootFinished {
        /// Which boot.
        generation: u64,
        /// Its outcome (boxed: a guest is large next to the other messages).
        result: Result<Box<Booted>, LifecycleError>,
    },
    /// Sent by the VMM watcher.
    VmExited {
        /// Which boot's VM.
        generation: u64,
        /// How it ended.
        exit: VmExit,
    },
    /// Sent by the output router for each guest heartbeat.
    Heartbeat {
        /// Which boot's guest.
        generation: u64,
        /// What the guest did.
        activity: ActivityParams,
    },
    /// Sent by the output router when the primary process ended.
    PrimaryExited {
        /// Which boot's process.
        generation: u64,
        /// How it ended.
        status: ExitStatus,
    },
}

impl From<GuestNote> for Command {
    fn from(note: GuestNote) -> Command {
        match note {
            GuestNote::Activity {
                generation,
                activity,
            } => Command::Heartbeat {
                generation,
                activity,
            },
            GuestNote::PrimaryExited { generation, status } => {
                Command::PrimaryExited { generation, status }
            }
        }
    }
}

/// Why a lifecycle operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// Not allowed in the current state.
    #[error(transparent)]
    Invalid(#[from] InvalidTransition),
    /// The instance is disabled.
    #[error("instance {id} is disabled")]
    Disabled {
        /// The instance.
        id: InstanceId,
    },
    /// The guest could not be booted.
    #[error("cannot boot instance {id}")]
    Boot {
        /// The instance.
        id: InstanceId,
        /// Cause.
        #[source]
        source: BootError,
    },
    /// The image could not be resolved.
    #[error("cannot prepare the image of instance {id}")]
    Image {
        /// The instance.
        id: InstanceId,
        /// Cause.
        #[source]
        source: ImageError,
    },
    /// The guest's harness failed a call.
    #[error("instance {id}")]
    Control {
        /// The instance.
        id: InstanceId,
        /// Cause.
        #[source]
        source: ControlError,
    },
    /// The VMM failed.
    #[error("instance {id}: VMM operation failed")]
    Vmm {
        /// The instance.
        id: InstanceId,
        /// Cause.
        #[source]
        source: aegis_vmm::VmmError,
    },
    /// The registry failed.
    #[error("instance {id}: cannot record the change")]
    Registry {
        /// The instance.
        id: InstanceId,
        /// Cause.
        #[source]
        source: RegistryError,
    },
    /// The VM stopped while the operation waited for it.
    #[error("instance {id} stopped: {reason}")]
    Stopped {
        /// The instance.
        id: InstanceId,
        /// Why.
        reason: String,
    },
    /// The secrets the instance asks for cannot be resolved; nothing was started.
    #[error("cannot inject the secrets of instance {id}")]
    Secrets {
        /// The instance.
        id: InstanceId,
        /// Cause (names the secret, never a value).
        #[source]
        source: SecretError,
    },
    /// The layer that created the instance refuses the start (its kit's required secrets are
    /// missing).
    #[error("cannot start instance {id}: {reason}")]
    Refused {
        /// The instance.
        id: InstanceId,
        /// Why.
        reason: String,
        /// What the user can do.
        hint: Option<String>,
    },
    /// The guest cannot start the program of an exec.
    #[error("instance {id} cannot start the process: {message}")]
    Spawn {
        /// The instance.
        id: InstanceId,
        /// The guest's reason.
        message: String,
    },
    /// The guest port is already exposed.
    #[error("guest port {port} of instance {id} is already exposed")]
    AlreadyExposed {
        /// The instance.
        id: InstanceId,
        /// The port.
        port: u16,
    },
    /// The guest port is not exposed.
    #[error("guest port {port} of instance {id} is not exposed")]
    NotExposed {
        /// The instance.
        id: InstanceId,
        /// The port.
        port: u16,
    },
    /// The instance was deleted (or its actor is gone).
    #[error("instance {id} no longer exists")]
    Gone {
        /// The instance.
        id: InstanceId,
    },
}

impl LifecycleError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            LifecycleError::Disabled { id } => {
                Some(format!("start it first: `aegis instance start {id}`"))
            }
            LifecycleError::Boot { id, source } => Some(
                source
                    .hint()
                    .map(|h| format!("{h}; `aegis logs {id}` shows the instance log"))
                    .unwrap_or_else(|| format!("`aegis logs {id}` shows the instance log")),
            ),
            LifecycleError::Image { source, .. } => source.hint(),
            LifecycleError::Secrets { id, source } => Some(match source {
                SecretError::NotFound { names } => format!(
                    "set it with `aegis secret set {}`, or change the instance's secrets with \
                     `aegis instance secrets {id} NAME...`",
                    names.first().map_or("NAME", String::as_str)
                ),
                other => other
                    .hint()
                    .unwrap_or_else(|| format!("`aegis logs {id}` shows why")),
            }),
            LifecycleError::Stopped { id, .. } => Some(format!("`aegis logs {id}` shows why")),
            LifecycleError::Refused { hint, .. } => hint.clone(),
            LifecycleError::AlreadyExposed { id, port } => Some(format!(
                "remove it first: `aegis instance unexpose {id} {port}`"
            )),
            LifecycleError::Invalid(_)
            | LifecycleError::Spawn { .. }
            | LifecycleError::NotExposed { .. }
            | LifecycleError::Control { .. }
            | LifecycleError::Vmm { .. }
            | LifecycleError::Registry { .. }
            | LifecycleError::Gone { .. } => None,
        }
    }
}

/// Convenience: a oneshot pair for a command's reply.
pub fn reply_channel<T>() -> (Reply<T>, oneshot::Receiver<Result<T, LifecycleError>>) {
    oneshot::channel()
}
