//! An instance's validated configuration, built once from an API request and stored as JSON in
//! the registry so a restart uses exactly what was asked for.

use std::collections::BTreeMap;

use aegis_proto::api::{CreateInstance, OnTimeout, TerminalSize};
use serde::{Deserialize, Serialize};

use crate::config::{
    DEFAULT_IMAGE, DEFAULT_MEMORY_MIB, DEFAULT_VCPUS, MEMORY_RANGE_MIB, VCPU_RANGE,
};
use crate::names::{valid_env_name, NameError};
use crate::workspaces::{WorkspaceError, WorkspaceSpec};

/// The configuration of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSpec {
    /// Image reference as given (or the default image).
    pub image_ref: String,
    /// Manifest digest the instance was created from; every boot uses exactly this image, so a
    /// tag that moves never changes the base disk under the instance's overlay.
    #[serde(default)]
    pub image_digest: Option<String>,
    /// Primary process; empty means the image's entrypoint + cmd.
    pub command: Vec<String>,
    /// Replaces the image's entrypoint (`Some([])` clears it); the image's cmd is then unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Deleted by the daemon once it has stayed stopped for
    /// [`crate::lifecycle::auto_remove::GRACE`] (`aegis run`).
    #[serde(default)]
    pub auto_remove: bool,
    /// Environment given explicitly (wins over the image's).
    pub env: BTreeMap<String, String>,
    /// Working directory of the primary process.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Guest memory.
    pub memory_mib: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// Secret names to inject.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// What is mounted at `/workspace`. `None` in configurations stored before workspaces
    /// existed: they get the default, the instance's own volume.
    #[serde(default)]
    pub workspace: Option<WorkspaceSpec>,
    /// What the layer that created the instance keeps with it (a kit's name and what the
    /// instance keeps of the kit): stored with the rest and handed back unchanged, never read
    /// by the lifecycle. Its keys sit beside the fields above in the stored JSON.
    #[serde(default, flatten)]
    pub app: AppData,
    /// Exposed ports with their public ports (chosen once, kept across restarts).
    #[serde(default)]
    pub exposes: Vec<ExposeSpec>,
    /// Seconds without activity before a pause; `None` = never.
    #[serde(default = "default_idle_pause")]
    pub idle_pause_secs: Option<u64>,
    /// Seconds paused before a stop; `None` = never.
    #[serde(default = "default_idle_stop")]
    pub idle_stop_secs: Option<u64>,
    /// Outbound network access.
    #[serde(default = "default_egress")]
    pub egress: bool,
    /// Whether a stop by request or idleness saves a snapshot that the next wake restores.
    #[serde(default = "default_snapshot")]
    pub snapshot: bool,
    /// The primary process gets a stdin pipe at each boot, fed by `POST .../stdin`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin: bool,
    /// The primary process runs on a terminal of this size at each boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<TerminalSize>,
    /// When the instance's lifetime runs out, and what happens then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<Lifetime>,
}

/// Application data kept with an instance, by key.
pub type AppData = BTreeMap<String, serde_json::Value>;

/// An instance's lifetime (see `lifecycle::lifetime`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifetime {
    /// RFC 3339.
    pub expires_at: String,
    /// Delete or stop.
    #[serde(default)]
    pub on_timeout: OnTimeout,
}

impl Lifetime {
    /// A lifetime of `secs` from now.
    ///
    /// # Errors
    /// [`SpecError::Timeout`] for 0 or a time past what can be written.
    pub fn from_now(secs: u64, on_timeout: OnTimeout) -> Result<Lifetime, SpecError> {
        let expires = i64::try_from(secs)
            .ok()
            .filter(|s| *s >= 1)
            .and_then(|s| time::OffsetDateTime::now_utc().checked_add(time::Duration::seconds(s)))
            .filter(|t| t.year() <= 9999)
            .ok_or(SpecError::Timeout(secs))?;
        Ok(Lifetime {
            expires_at: crate::logs::format_ts(expires),
            on_timeout,
        })
    }
}

/// Default idle pause: a minute without activity.
pub const DEFAULT_IDLE_PAUSE_SECS: u64 = 60;
/// Default idle stop: five minutes paused.
pub const DEFAULT_IDLE_STOP_SECS: u64 = 300;

fn default_idle_pause() -> Option<u64> {
    Some(DEFAULT_IDLE_PAUSE_SECS)
}
fn default_idle_stop() -> Option<u64> {
    Some(DEFAULT_IDLE_STOP_SECS)
}
fn default_egress() -> bool {
    true
}
fn default_snapshot() -> bool {
    true
}

/// Parses an `on`/`off` setting (`snapshot`).
///
/// # Errors
/// [`SpecError::Snapshot`] for anything else.
pub fn parse_on_off(s: &str) -> Result<bool, SpecError> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(SpecError::Snapshot(other.to_owned())),
    }
}

/// The protocol of an exposed port: decides how the router answers when nothing listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExposeProtocol {
    /// Raw TCP: a connection to a port nobody listens on is closed. An HTTP request is still
    /// recognised and answered with 503.
    Tcp,
    /// HTTP: always answered with 503 when nobody listens.
    Http,
}

impl ExposeProtocol {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ExposeProtocol::Tcp => "tcp",
            ExposeProtocol::Http => "http",
        }
    }

    /// Parses `tcp` / `http`.
    ///
    /// # Errors
    /// [`SpecError::Protocol`].
    pub fn parse(s: &str) -> Result<ExposeProtocol, SpecError> {
        match s {
            "tcp" => Ok(ExposeProtocol::Tcp),
            "http" => Ok(ExposeProtocol::Http),
            other => Err(SpecError::Protocol(other.to_owned())),
        }
    }
}

/// One exposed port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExposeSpec {
    /// Port in the guest.
    pub guest_port: u16,
    /// Public port on the host; 0 until the router chose one.
    pub public_port: u16,
    /// Protocol.
    pub protocol: ExposeProtocol,
}

impl ExposeSpec {
    /// The API view of the exposed port.
    pub fn endpoint(&self) -> aegis_proto::api::Endpoint {
        let scheme = match self.protocol {
            ExposeProtocol::Http => "http",
            ExposeProtocol::Tcp => "tcp",
        };
        aegis_proto::api::Endpoint {
            guest_port: self.guest_port,
            public_port: self.public_port,
            protocol: self.protocol.as_str().to_owned(),
            url: format!("{scheme}://127.0.0.1:{}", self.public_port),
        }
    }

    /// Validates an API expose request (public port 0 = choose one).
    ///
    /// # Errors
    /// [`SpecError`] for port 0 or an unknown protocol.
    pub fn from_request(req: &aegis_proto::api::ExposeRequest) -> Result<ExposeSpec, SpecError> {
        if req.port == 0 {
            return Err(SpecError::Port);
        }
        Ok(ExposeSpec {
            guest_port: req.port,
            public_port: req.public_port.unwrap_or(0),
            protocol: req
                .protocol
                .as_deref()
                .map(ExposeProtocol::parse)
                .transpose()?
                .unwrap_or(ExposeProtocol::Tcp),
        })
    }
}

/// A request that does not describe a valid instance.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A lifetime of 0 or beyond the year 9999.
    #[error("timeout_secs {0} is out of range: at least 1 second, and within the year 9999")]
    Timeout(u64),
    /// Bad handle.
    #[error(transparent)]
    Handle(NameError),
    /// An environment variable name is not valid.
    #[error("invalid environment variable name {0:?}: use letters, digits and '_', not starting with a digit")]
    EnvName(String),
    /// Memory out of range.
    #[error("memory_mb {value} is out of range ({min}..={max})")]
    Memory {
        /// Requested.
        value: u32,
        /// Lower bound.
        min: u32,
        /// Upper bound.
        max: u32,
    },
    /// vCPUs out of range.
    #[error("vcpus {value} is out of range ({min}..={max})")]
    Vcpus {
        /// Requested.
        value: u32,
        /// Lower bound.
        min: u32,
        /// Upper bound.
        max: u32,
    },
    /// Unknown expose protocol.
    #[error("invalid protocol {0:?}: expected tcp or http")]
    Protocol(String),
    /// Guest port 0.
    #[error("guest port must be between 1 and 65535")]
    Port,
    /// The same guest port twice.
    #[error("guest port {0} is exposed twice")]
    DuplicatePort(u16),
    /// Bad idle timeout.
    #[error("{0}")]
    Idle(String),
    /// Bad egress value.
    #[error("invalid egress {0:?}: expected all or none")]
    Egress(String),
    /// Bad snapshot value.
    #[error("invalid snapshot {0:?}: expected on or off")]
    Snapshot(String),
    /// A bad workspace.
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    /// A command element is empty or the command holds a NUL byte.
    #[error("command contains an empty program name or a NUL byte")]
    Command,
    /// A terminal size out of range.
    #[error("{0}")]
    Terminal(String),
}

/// Checks an environment map.
///
/// # Errors
/// The first invalid name.
pub fn check_env(env: &BTreeMap<String, String>) -> Result<(), SpecError> {
    match env.keys().find(|k| !valid_env_name(k)) {
        Some(bad) => Err(SpecError::EnvName(bad.clone())),
        None => Ok(()),
    }
}

/// Checks an argv: no empty program, no NUL anywhere.
///
/// # Errors
/// [`SpecError::Command`].
pub fn check_command(command: &[String]) -> Result<(), SpecError> {
    if command.first().is_some_and(String::is_empty) || command.iter().any(|a| a.contains('\0')) {
        return Err(SpecError::Command);
    }
    Ok(())
}

impl InstanceSpec {
    /// The primary process's argv for an image with `image`'s configuration.
    pub fn argv(&self, image: &aegis_image::ImageConfig) -> Vec<String> {
        image.argv_with(self.entrypoint.as_deref(), &self.command)
    }

    /// The workspace (the default for configurations stored before workspaces existed).
    pub fn workspace(&self) -> WorkspaceSpec {
        self.workspace.clone().unwrap_or_default()
    }

    /// Whether a stop may save a snapshot: asked for and [`InstanceSpec::snapshot_obstacle`]
    /// finds nothing against it.
    pub fn snapshot_possible(&self) -> bool {
        self.snapshot && self.snapshot_obstacle().is_none()
    }

    /// Why this instance cannot be snapshotted although it may want to be, if it cannot.
    pub fn snapshot_obstacle(&self) -> Option<&'static str> {
        // Secrets are no obstacle: the memory file is sealed (see `lifecycle::snapshot`).
        match self.workspace() {
            WorkspaceSpec::Volume { .. } | WorkspaceSpec::None => None,
            // The host side of a virtio-fs share is another process, whose state a snapshot
            // of the VM cannot hold.
            WorkspaceSpec::Named { .. } | WorkspaceSpec::Host { .. } => {
                Some("the workspace is a shared directory, which a snapshot cannot hold")
            }
        }
    }

    /// Validates a create request (the handle is checked separately by the caller).
    ///
    /// # Errors
    /// The first field that is invalid.
    pub fn from_request(req: &CreateInstance) -> Result<InstanceSpec, SpecError> {
        check_env(&req.env)?;
        check_command(&req.command)?;
        if let Some(entrypoint) = &req.entrypoint {
            check_command(entrypoint)?;
        }
        let memory_mib = req.memory_mb.unwrap_or(DEFAULT_MEMORY_MIB);
        if !(MEMORY_RANGE_MIB.0..=MEMORY_RANGE_MIB.1).contains(&memory_mib) {
            return Err(SpecError::Memory {
                value: memory_mib,
                min: MEMORY_RANGE_MIB.0,
                max: MEMORY_RANGE_MIB.1,
            });
        }
        let vcpus = req.vcpus.unwrap_or(DEFAULT_VCPUS);
        if !(VCPU_RANGE.0..=VCPU_RANGE.1).contains(&vcpus) {
            return Err(SpecError::Vcpus {
                value: vcpus,
                min: VCPU_RANGE.0,
                max: VCPU_RANGE.1,
            });
        }
        let mut exposes: Vec<ExposeSpec> = Vec::new();
        for e in &req.exposes {
            let spec = ExposeSpec::from_request(e)?;
            if exposes.iter().any(|x| x.guest_port == spec.guest_port) {
                return Err(SpecError::DuplicatePort(spec.guest_port));
            }
            exposes.push(spec);
        }
        let idle = |t: &Option<aegis_proto::api::IdleTimeout>, default: u64| match t {
            None => Ok(Some(default)),
            Some(t) => t.seconds().map_err(SpecError::Idle),
        };
        let egress = match req.egress.as_deref() {
            None | Some("all") => true,
            Some("none") => false,
            Some(other) => return Err(SpecError::Egress(other.to_owned())),
        };
        let snapshot = match req.snapshot.as_deref() {
            None => default_snapshot(),
            Some(s) => parse_on_off(s)?,
        };
        let lifetime = req
            .timeout_secs
            .map(|secs| Lifetime::from_now(secs, req.on_timeout.unwrap_or_default()))
            .transpose()?;
        Ok(InstanceSpec {
            stdin: req.stdin && req.tty.is_none(),
            tty: req
                .tty
                .map(TerminalSize::check)
                .transpose()
                .map_err(SpecError::Terminal)?,
            lifetime,
            snapshot,
            exposes,
            idle_pause_secs: idle(&req.idle_pause, DEFAULT_IDLE_PAUSE_SECS)?,
            idle_stop_secs: idle(&req.idle_stop, DEFAULT_IDLE_STOP_SECS)?,
            egress,
            image_ref: req
                .image_ref
                .clone()
                .filter(|s| !s.trim().is_empty())
                .unwrap_or_else(|| DEFAULT_IMAGE.to_owned()),
            image_digest: None,
            command: req.command.clone(),
            entrypoint: req.entrypoint.clone(),
            auto_remove: req.auto_remove,
            env: req.env.clone(),
            workdir: req.workdir.clone(),
            memory_mib,
            vcpus,
            secrets: req.secrets.clone(),
            workspace: Some(WorkspaceSpec::parse(
                req.workspace.as_deref(),
                req.workspace_size_mb,
            )?),
            app: AppData::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_fields() {
        let ok = CreateInstance {
            command: vec!["echo".into()],
            ..Default::default()
        };
        let spec = InstanceSpec::from_request(&ok).unwrap();
        assert_eq!(spec.image_ref, DEFAULT_IMAGE);
        assert_eq!(spec.memory_mib, DEFAULT_MEMORY_MIB);
        let rows: Vec<(CreateInstance, &str)> = vec![
            (
                CreateInstance {
                    memory_mb: Some(1),
                    ..ok.clone()
                },
                "memory_mb 1 is out of range",
            ),
            (
                CreateInstance {
                    vcpus: Some(0),
                    ..ok.clone()
                },
                "vcpus 0 is out of range",
            ),
            (
                CreateInstance {
                    env: [("1X".to_owned(), String::new())].into(),
                    ..ok.clone()
                },
                "invalid environment variable name \"1X\"",
            ),
            (
                CreateInstance {
                    command: vec![String::new()],
                    ..ok.clone()
                },
                "empty program name",
            ),
        ];
        for (req, want) in rows {
            let err = InstanceSpec::from_request(&req).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }
}
