//! REST API bodies of `aegisd` (HTTP/1.1 + JSON on a unix socket). Shapes follow the original
//! AegisVM clients (design brief §3.8) and extend rather than rename. Request bodies reject
//! unknown fields, so a misspelt field is a 400 that names it.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// API version prefix of every route.
pub const API_PREFIX: &str = "/v1";

/// Lifecycle status of an instance, as persisted and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceStatus {
    /// The VM is booting.
    Starting,
    /// The VM runs.
    Running,
    /// The VM's vCPUs are frozen; memory is kept.
    Paused,
    /// No VM; woken by exec or traffic unless disabled.
    Stopped,
}

impl InstanceStatus {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceStatus::Starting => "starting",
            InstanceStatus::Running => "running",
            InstanceStatus::Paused => "paused",
            InstanceStatus::Stopped => "stopped",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<InstanceStatus> {
        [
            InstanceStatus::Starting,
            InstanceStatus::Running,
            InstanceStatus::Paused,
            InstanceStatus::Stopped,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

impl fmt::Display for InstanceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `POST /v1/instances`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateInstance {
    /// Unique alias (letters, digits, `.`, `_`, `-`; starts with a letter or digit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
    /// The primary process; the image's entrypoint + cmd when empty.
    #[serde(default)]
    pub command: Vec<String>,
    /// Replaces the image's entrypoint, as `docker run --entrypoint` does: the primary process
    /// is `entrypoint` followed by `command`, and the image's cmd is not used. `[]` clears the
    /// entrypoint, so `command` alone runs. Absent: the image's entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Delete the instance by itself once it has stayed stopped for a short grace period
    /// (`aegis run` sets it, as `docker run --rm`): nothing is left behind when the client that
    /// created it goes away before it could delete it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_remove: bool,
    /// Image reference; the default image when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_ref: Option<String>,
    /// Environment of the primary process and of execs.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Secrets to inject (names, or `*` for all). Accepted for AegisVM clients.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Workspace at `/workspace`: a named workspace (created on first use), an absolute host
    /// directory shared live, or `none`. Absent: the instance's own volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// Size of the instance's own workspace volume in MiB (only without `workspace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_size_mb: Option<u64>,
    /// Guest memory in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    /// vCPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// Kit preset. Accepted for AegisVM clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kit: Option<String>,
    /// Ports to expose. Accepted for AegisVM clients.
    #[serde(default)]
    pub exposes: Vec<ExposeRequest>,
    /// Working directory of the primary process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Pause after this long without activity: seconds (`60`, `"60"`), a duration (`"90s"`,
    /// `"5m"`, `"1h"`) or `"never"`. Default 60 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_pause: Option<IdleTimeout>,
    /// Stop after this long paused; same forms. Default 300 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_stop: Option<IdleTimeout>,
    /// Outbound network: `all` (default) or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<String>,
    /// Save a snapshot when stopped (by request or idleness) and restore it at the next wake:
    /// `on` or `off`. The daemon's default (`AEGIS_SNAPSHOT`, on unless set to off) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Lifetime in seconds from now (at least 1): when it runs out the instance is deleted, or
    /// stopped with `on_timeout: "stop"`. Paused and stopped time counts too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// What happens when the lifetime runs out (`delete` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<OnTimeout>,
    /// Give the primary process a stdin pipe at each boot, fed by
    /// `POST /v1/instances/{id}/stdin` (`aegis run -i`); `/dev/null` otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin: bool,
    /// Run the primary process on a pseudo-terminal of this size at each boot (`aegis run -t`),
    /// attached through `POST /v1/instances/{id}/terminal` and resized through `.../resize`.
    /// Its output is then the terminal's, not in the instance's logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<TerminalSize>,
}

/// An idle timeout as given: a number of seconds or a string (`"90s"`, `"5m"`, `"never"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IdleTimeout {
    /// Seconds.
    Seconds(u64),
    /// Text form.
    Text(String),
}

impl IdleTimeout {
    /// Seconds, or `None` for never.
    ///
    /// # Errors
    /// A message naming the accepted forms.
    pub fn seconds(&self) -> Result<Option<u64>, String> {
        let text = match self {
            IdleTimeout::Seconds(s) => return Ok(Some(*s)),
            IdleTimeout::Text(t) => t.trim(),
        };
        if text == "never" {
            return Ok(None);
        }
        let (digits, unit) = text.split_at(
            text.find(|c: char| !c.is_ascii_digit())
                .unwrap_or(text.len()),
        );
        let factor = match unit {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => 0,
        };
        match digits.parse::<u64>() {
            Ok(n) if factor > 0 => Ok(Some(n.saturating_mul(factor))),
            _ => Err(format!(
                "invalid idle timeout {text:?}: use seconds, a duration like 90s, 5m or 1h, or never"
            )),
        }
    }
}

/// A port to expose (`POST /v1/instances/{id}/expose` and `exposes` on create).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExposeRequest {
    /// Guest port.
    pub port: u16,
    /// Public (host) port; chosen when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_port: Option<u16>,
    /// `tcp` or `http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// An exposed port as shown (also the answer to `POST .../expose`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Guest port.
    pub guest_port: u16,
    /// Public (host) port.
    pub public_port: u16,
    /// `tcp` or `http`.
    pub protocol: String,
    /// Where to connect (`http://127.0.0.1:8080` or `tcp://127.0.0.1:8080`).
    #[serde(default)]
    pub url: String,
}

/// An instance as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// `inst-<nanos>`.
    pub id: String,
    /// Alias, if any.
    pub handle: Option<String>,
    /// Lifecycle status.
    pub state: InstanceStatus,
    /// `false` once disabled: never woken until started again.
    pub enabled: bool,
    /// Image reference.
    pub image_ref: String,
    /// Primary process.
    pub command: Vec<String>,
    /// The entrypoint that replaces the image's (`[]`: cleared); absent: the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Deleted by the daemon once stopped for a short grace period (`aegis run`).
    #[serde(default)]
    pub auto_remove: bool,
    /// Environment names (values are not shown: they may be credentials).
    pub env_keys: Vec<String>,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 time of the last stop.
    pub stopped_at: Option<String>,
    /// RFC 3339 time of the last activity.
    pub last_active_at: Option<String>,
    /// Exposed ports.
    pub endpoints: Vec<Endpoint>,
    /// Secret names injected.
    pub secret_keys: Vec<String>,
    /// Kit, if any.
    pub kit: Option<String>,
    /// Guest memory in MiB.
    pub memory_mb: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// What is mounted at `/workspace`; `None` without a workspace.
    #[serde(default)]
    pub workspace: Option<WorkspaceView>,
    /// Why the instance is stopped, or why its last boot failed.
    pub reason: Option<String>,
    /// Exit code of the primary process's last run.
    pub exit_code: Option<i32>,
    /// Host pid of the VMM process while a VM exists.
    pub vmm_pid: Option<u32>,
    /// Seconds without activity before a pause; `None` = never.
    pub idle_pause_secs: Option<u64>,
    /// Seconds paused before a stop; `None` = never.
    pub idle_stop_secs: Option<u64>,
    /// Whether the guest may open outbound connections.
    pub egress: bool,
    /// Whether a stop saves a snapshot that the next wake restores.
    #[serde(default)]
    pub snapshot: bool,
    /// The saved snapshot, while the instance is stopped with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved_snapshot: Option<SnapshotView>,
    /// Hosts its kit expects it to reach (recorded and shown, not enforced).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_hints: Vec<String>,
    /// Its kit's instance daemons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub daemons: Vec<DaemonStatus>,
    /// When the instance's lifetime runs out (RFC 3339), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// What happens then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<OnTimeout>,
}

/// An instance's workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceView {
    /// `volume` (the instance's own ext4 volume, removed with it), `named` (kept by Aegis,
    /// shareable) or `host` (a host directory shared live).
    pub kind: String,
    /// The named workspace's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Where it lives on the host (volume file or directory).
    pub path: String,
    /// Capacity of a volume in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_mb: Option<u64>,
}

/// A named workspace (`GET /v1/workspaces`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceInfo {
    /// Its name.
    pub name: String,
    /// `directory` (shared live over virtio-fs; several instances at once) or `volume` (an ext4
    /// volume file; one instance at a time).
    pub kind: String,
    /// The directory or volume file on the host.
    pub path: String,
    /// Capacity of a volume in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_mb: Option<u64>,
    /// Bytes it takes on the host's disk.
    pub used_bytes: u64,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// Instances (ids) configured to use it.
    pub instances: Vec<String>,
}

/// `POST /v1/workspaces`: create a named workspace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkspace {
    /// Its name (letters, digits, `.`, `_`, `-`).
    pub name: String,
    /// `directory` (default) or `volume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Capacity of a volume in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_mb: Option<u64>,
}

/// A stopped instance's snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotView {
    /// Size of the memory file in bytes.
    pub size_bytes: u64,
    /// RFC 3339 time it was taken.
    pub created_at: String,
}

/// `POST /v1/instances/{id}/exec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Extra environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Stream the client's input to the process: the request must then ask for an HTTP
    /// upgrade to `aegis-exec` (see the OpenAPI document); without it the process's stdin is
    /// empty (`/dev/null`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin: bool,
    /// Kill the process after this many seconds (the end record says `timed_out`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Start the process in the background: the answer is its [`ExecInfo`] as soon as it runs,
    /// and it goes on after the call (see `/execs/{exec_id}`). With `stdin`, its input is fed
    /// later through `POST /execs/{exec_id}/stdin`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub detach: bool,
    /// Run the process on a pseudo-terminal of this size (`{}` for 24 by 80): stdin, stdout
    /// and stderr are the terminal, and the upgraded connection carries its raw bytes both ways
    /// instead of NDJSON records (see the OpenAPI document). Its output is not in the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<TerminalSize>,
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminalSize {
    /// Lines, 1 to 1000 (24 when absent).
    #[serde(default = "default_rows")]
    pub rows: u16,
    /// Columns, 1 to 1000 (80 when absent).
    #[serde(default = "default_cols")]
    pub cols: u16,
}

impl Default for TerminalSize {
    fn default() -> TerminalSize {
        TerminalSize {
            rows: default_rows(),
            cols: default_cols(),
        }
    }
}

fn default_rows() -> u16 {
    24
}

fn default_cols() -> u16 {
    80
}

impl TerminalSize {
    /// Largest number of rows or columns accepted.
    pub const MAX: u16 = 1000;

    /// Checks both dimensions are within 1 to [`TerminalSize::MAX`].
    ///
    /// # Errors
    /// What is out of range.
    pub fn check(self) -> Result<TerminalSize, String> {
        if (1..=Self::MAX).contains(&self.rows) && (1..=Self::MAX).contains(&self.cols) {
            Ok(self)
        } else {
            Err(format!(
                "a terminal of {} rows by {} columns is out of range (1 to {} each)",
                self.rows,
                self.cols,
                Self::MAX
            ))
        }
    }
}

impl From<TerminalSize> for crate::control::WindowSize {
    fn from(size: TerminalSize) -> crate::control::WindowSize {
        crate::control::WindowSize {
            rows: size.rows,
            cols: size.cols,
        }
    }
}

/// The response header naming the exec of an upgraded terminal connection, which resize and
/// wait calls need.
pub const EXEC_ID_HEADER: &str = "aegis-exec-id";

/// What became of a process started through Aegis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecState {
    /// Running (also while the instance is paused or stopped with a snapshot: it goes on when
    /// the instance wakes).
    Running,
    /// It ended; `exit_code` says how.
    Exited,
    /// The VM it ran in ended without a snapshot, so how it would have ended is unknown.
    Lost,
}

/// A process started through the API (`aegis exec`, attached or not), as the daemon knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecInfo {
    /// Its id: its output is in the instance's log under it.
    pub exec_id: String,
    /// Program and arguments.
    pub command: Vec<String>,
    /// Running, exited or lost.
    pub state: ExecState,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339, once it is no longer running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// Exit code once exited (`128 + signal` after a signal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Whether it was killed because its timeout expired.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timed_out: bool,
    /// Whether it was started in the background.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub detached: bool,
    /// Whether its stdin is a pipe that `POST .../stdin` feeds.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin: bool,
    /// Whether it runs on a terminal (`POST .../terminal` attaches to it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
}

/// What happens to an instance whose lifetime runs out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnTimeout {
    /// Deleted, with its disk and logs.
    #[default]
    Delete,
    /// Stopped (without a snapshot); its lifetime is then over, and it can be started again.
    Stop,
}

/// `POST /v1/instances/{id}/timeout`: a new lifetime, counted from now, or none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetTimeout {
    /// Seconds from now (at least 1); `null` removes the lifetime.
    pub timeout_secs: Option<u64>,
    /// What happens when it runs out; unchanged (or `delete`) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<OnTimeout>,
}

/// A file in an instance, as `/files` answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// Last path component.
    pub name: String,
    /// Absolute guest path.
    pub path: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: crate::control::FileKind,
    /// Bytes.
    pub size: u64,
    /// Permission bits as an octal string (`"0644"`).
    pub mode: String,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Owner name, when the guest's `/etc/passwd` has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Group name, when the guest's `/etc/group` has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Last modification, RFC 3339.
    pub modified: String,
    /// Where a symbolic link points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// `POST /v1/instances/{id}/files/mkdir`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MkdirRequest {
    /// Absolute guest path.
    pub path: String,
    /// Create missing parents, and accept an existing directory (`mkdir -p`).
    #[serde(default)]
    pub parents: bool,
    /// Permission bits in octal (`"0755"`, the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Owner: a user name, uid, or `user:group`; root when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// `POST /v1/instances/{id}/files/rename`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameRequest {
    /// Absolute guest path.
    pub from: String,
    /// Absolute guest path; a file there is replaced.
    pub to: String,
}

/// Parses permission bits written in octal (`"644"`, `"0644"`, `"0o644"`).
///
/// # Errors
/// What is wrong with it.
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o7777 && !digits.is_empty() => Ok(mode),
        _ => Err(format!(
            "invalid mode {text:?}: expected octal permission bits such as 0644"
        )),
    }
}

/// `POST /v1/instances/{id}/execs/{exec_id}/signal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    /// A name (`TERM`, `SIGTERM`, `kill`) or a number (`15`).
    pub signal: String,
}

/// The `Upgrade` protocol of an exec that streams stdin: after `101 Switching Protocols` the
/// daemon sends the exec's NDJSON records and the client sends the raw bytes of stdin, ending
/// them by half-closing its side of the connection.
pub const EXEC_UPGRADE_PROTOCOL: &str = "aegis-exec";

/// One line of the exec NDJSON stream: the start record, output entries, then the end record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ExecEvent {
    /// Last record.
    Done {
        /// Always true.
        done: bool,
        /// Exit code (`128 + signal` after a signal).
        exit_code: i32,
        /// Signal that killed the process, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        /// The exec.
        exec_id: String,
        /// Whether it was killed because its timeout expired.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        timed_out: bool,
    },
    /// An output line.
    Output(LogEntry),
    /// First record.
    Started {
        /// The exec.
        exec_id: String,
        /// RFC 3339.
        started_at: String,
    },
    /// The exec failed after it started streaming (the VM died, the channel closed).
    Error {
        /// What went wrong.
        error: String,
    },
}

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogSource {
    /// The primary process.
    Server,
    /// An exec.
    Exec,
    /// Aegis itself (lifecycle lines).
    System,
    /// A kit's instance daemon on the host (its name is in `daemon`).
    Daemon,
}

/// Output stream of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// Standard output (and system lines).
    Stdout,
    /// Standard error.
    Stderr,
}

/// One log line (`GET /v1/instances/{id}/logs` NDJSON, and exec output).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// RFC 3339 with nanoseconds.
    pub ts: String,
    /// Stream.
    pub stream: LogStream,
    /// The text, without a newline.
    pub line: String,
    /// Source.
    pub source: LogSource,
    /// Instance id.
    pub instance_id: String,
    /// Exec id for `exec` lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_id: Option<String>,
    /// Instance daemon name for `daemon` lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon: Option<String>,
    /// True when the process's output ended without a newline after this text.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
}

/// `DELETE /v1/instances/{id}` → `{"deleted": "<id>"}`, and `DELETE /v1/secrets/{name}` →
/// `{"deleted": "<name>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    /// Id of the instance (or name of the secret) that was deleted.
    pub deleted: String,
}

/// `PUT /v1/secrets/{name}`: create or replace a secret. `Debug` never shows the value.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutSecret {
    /// The plaintext; stored encrypted, never returned by any route.
    pub value: String,
}

impl fmt::Debug for PutSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PutSecret")
            .field("value", &"[redacted]")
            .finish()
    }
}

/// A secret as shown (`GET /v1/secrets` lists them; `PUT /v1/secrets/{name}` answers with one):
/// never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretInfo {
    /// Name (the environment variable it becomes).
    pub name: String,
    /// RFC 3339 time it was first set.
    pub created_at: String,
    /// RFC 3339 time its value was last set.
    pub updated_at: String,
}

/// `POST /v1/e2b/keys`: a new API key of the E2B-compatible listener.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateE2bKey {
    /// What the key is for (shown in lists, usable to revoke it).
    pub name: String,
}

/// An API key of the E2B-compatible listener as listed: never the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct E2bKeyInfo {
    /// `key_` and hex digits.
    pub id: String,
    /// Its name.
    pub name: String,
    /// RFC 3339 time it was created.
    pub created_at: String,
    /// RFC 3339 time it last authenticated a request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<String>,
}

/// The answer to `POST /v1/e2b/keys`: the key itself, shown this once (only its hash is kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct E2bKeyCreated {
    /// What is listed of it.
    #[serde(flatten)]
    pub info: E2bKeyInfo,
    /// The key, `e2b_` and 40 hex digits: `E2B_API_KEY`.
    pub key: String,
}

/// `PUT /v1/instances/{id}/secrets`: the secrets injected at the instance's next boot (names,
/// or `*` for all). The instance answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetInstanceSecrets {
    /// Names, or `["*"]`; empty for none.
    pub secrets: Vec<String>,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Always `running`.
    pub status: String,
    /// Daemon version.
    pub version: String,
    /// VMM backend (`qemu`).
    pub backend: String,
    /// Accelerator in use (`kvm`, `hvf`, `tcg`).
    pub accelerator: String,
    /// Why that accelerator.
    pub accelerator_reason: String,
    /// What the backend and daemon support.
    pub capabilities: BTreeMap<String, bool>,
    /// Number of instances by status.
    pub instances: BTreeMap<String, u32>,
    /// Daemon pid.
    pub pid: u32,
    /// Total size of the snapshots of stopped instances, in bytes.
    #[serde(default)]
    pub snapshot_bytes: u64,
    /// The address of the E2B-compatible listener, when it is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2b: Option<String>,
}

/// Every error body: `{"error": "...", "hint": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error chain, joined by `": "`.
    pub error: String,
    /// What to do about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// Checks a handle: starts with a letter or digit, then letters, digits, `.`, `_` or `-`, at most
/// 63 characters.
///
/// # Errors
/// A message saying what is wrong.
pub fn validate_handle(handle: &str) -> Result<(), String> {
    const MAX: usize = 63;
    let mut chars = handle.chars();
    match chars.next() {
        None => return Err("handle is empty".to_owned()),
        Some(c) if !c.is_ascii_alphanumeric() => {
            return Err(format!(
                "invalid handle {handle:?}: must start with a letter or digit"
            ))
        }
        Some(_) => {}
    }
    if let Some(bad) = chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "invalid handle {handle:?}: {bad:?} is not allowed (use letters, digits, '.', '_' and '-')"
        ));
    }
    if handle.len() > MAX {
        return Err(format!(
            "invalid handle {handle:?}: longer than {MAX} characters"
        ));
    }
    if handle.starts_with("inst-") {
        return Err(format!(
            "invalid handle {handle:?}: the prefix \"inst-\" is reserved for instance ids"
        ));
    }
    Ok(())
}

/// What an instance daemon is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DaemonState {
    /// Its process runs.
    Running,
    /// It exited and will be started again after a backoff delay.
    Restarting,
    /// It crashed too often right after starting; Aegis gave up until the instance is started
    /// again.
    Failed,
    /// Not running: its instance is disabled, or it is being stopped.
    Stopped,
}

impl DaemonState {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DaemonState::Running => "running",
            DaemonState::Restarting => "restarting",
            DaemonState::Failed => "failed",
            DaemonState::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for DaemonState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An instance daemon as `instance info` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// Its name in the kit.
    pub name: String,
    /// What it is doing.
    pub state: DaemonState,
    /// Host pid while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Times it was started again after exiting.
    pub restarts: u32,
    /// How its last run ended (`exit code 1`, `signal 9`), if it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    /// RFC 3339 time of the last change of state.
    pub since: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles() {
        for ok in ["web", "a", "9lives", "my-agent_1.2"] {
            assert_eq!(validate_handle(ok), Ok(()), "{ok}");
        }
        for bad in ["", "-x", ".x", "a b", "a/b", "ü", "inst-1"] {
            assert!(validate_handle(bad).is_err(), "{bad}");
        }
        assert!(validate_handle(&"a".repeat(64)).is_err());
    }

    #[test]
    fn exec_events_are_distinguishable() {
        let done = r#"{"done":true,"exit_code":3,"exec_id":"e"}"#;
        assert!(matches!(
            serde_json::from_str::<ExecEvent>(done).unwrap(),
            ExecEvent::Done { exit_code: 3, .. }
        ));
        let start = r#"{"exec_id":"e","started_at":"t"}"#;
        assert!(matches!(
            serde_json::from_str::<ExecEvent>(start).unwrap(),
            ExecEvent::Started { .. }
        ));
        let out = r#"{"ts":"t","stream":"stderr","line":"x","source":"exec","instance_id":"i","exec_id":"e"}"#;
        assert!(matches!(
            serde_json::from_str::<ExecEvent>(out).unwrap(),
            ExecEvent::Output(_)
        ));
    }

    #[test]
    fn idle_timeouts() {
        let rows = [
            (IdleTimeout::Seconds(5), Ok(Some(5))),
            (IdleTimeout::Text("90s".into()), Ok(Some(90))),
            (IdleTimeout::Text("5m".into()), Ok(Some(300))),
            (IdleTimeout::Text("1h".into()), Ok(Some(3600))),
            (IdleTimeout::Text("42".into()), Ok(Some(42))),
            (IdleTimeout::Text("never".into()), Ok(None)),
        ];
        for (t, want) in rows {
            assert_eq!(t.seconds(), want, "{t:?}");
        }
        assert!(IdleTimeout::Text("5x".into()).seconds().is_err());
        assert!(IdleTimeout::Text("m".into()).seconds().is_err());
    }

    #[test]
    fn secret_values_never_print() {
        let body = PutSecret {
            value: "hunter2".into(),
        };
        assert_eq!(format!("{body:?}"), r#"PutSecret { value: "[redacted]" }"#);
        let err = serde_json::from_str::<PutSecret>(r#"{"valeu":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("valeu"));
    }

    #[test]
    fn create_rejects_unknown_fields() {
        let err = serde_json::from_str::<CreateInstance>(r#"{"comand":["x"]}"#).unwrap_err();
        assert!(err.to_string().contains("comand"));
    }
}

/// An image in the store (`GET /v1/images`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSummary {
    /// Normalised reference (`docker.io/library/alpine:latest`).
    pub reference: String,
    /// Manifest digest.
    pub digest: String,
    /// Bytes of manifest, config and (compressed) layers.
    pub size: u64,
    /// RFC 3339 build time from the image config, when it says.
    pub created: Option<String>,
    /// Number of layers.
    pub layers: u32,
    /// `os/arch`.
    pub platform: String,
    /// Whether the read-only ext4 base disk has been built.
    pub base_image_built: bool,
}

/// The run-time settings of an image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRunConfig {
    /// `KEY=value` entries.
    pub env: Vec<String>,
    /// Working directory.
    pub working_dir: Option<String>,
    /// User.
    pub user: Option<String>,
    /// Entrypoint.
    pub entrypoint: Vec<String>,
    /// Cmd.
    pub cmd: Vec<String>,
}

/// `GET /v1/images/{reference}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDetail {
    /// The summary.
    #[serde(flatten)]
    pub summary: ImageSummary,
    /// Run-time settings.
    pub config: ImageRunConfig,
    /// Layer digests, bottom first.
    pub layer_digests: Vec<String>,
}

/// `POST /v1/images/pull`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    /// What to pull.
    pub reference: String,
}

/// `POST /v1/images/import`: a file on the daemon's host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    /// Absolute path of an OCI layout (directory or tar), a `docker save` tar, or (with
    /// `rootfs`) a plain root filesystem tarball.
    pub path: String,
    /// Treat `path` as a root filesystem tarball.
    #[serde(default)]
    pub rootfs: bool,
    /// Reference for the imported image (required with `rootfs`; names unnamed archives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// One line of the NDJSON progress stream of a pull or import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ImageEvent {
    /// Asking the registry what the reference points at.
    Resolving {
        /// The reference.
        reference: String,
    },
    /// A layer download starts.
    LayerStart {
        /// Layer digest.
        digest: String,
        /// Bytes.
        size: u64,
    },
    /// Bytes of a layer received so far.
    LayerProgress {
        /// Layer digest.
        digest: String,
        /// Bytes so far.
        bytes: u64,
    },
    /// A layer was downloaded and verified.
    LayerDone {
        /// Layer digest.
        digest: String,
    },
    /// A layer was already stored.
    LayerCached {
        /// Layer digest.
        digest: String,
        /// Bytes.
        size: u64,
    },
    /// The root filesystem is being built.
    Unpacking {
        /// Manifest digest.
        digest: String,
    },
    /// Finished.
    Done {
        /// The image(s) now stored.
        images: Vec<ImageSummary>,
        /// True when nothing had to be downloaded.
        cached: bool,
    },
    /// Failed; nothing partial is left in the store.
    Error {
        /// The error chain.
        error: String,
        /// What to do.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hint: Option<String>,
    },
}

/// `DELETE /v1/images/{reference}`: the reference removed (its blobs stay until prune).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedImage {
    /// The reference as given.
    pub removed: String,
    /// The manifest digest it pointed at.
    pub digest: String,
}

/// `POST /v1/images/prune`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneResult {
    /// Manifest digests removed.
    pub removed_images: Vec<String>,
    /// Blobs removed.
    pub removed_blobs: u64,
    /// Base disks removed.
    pub removed_base_images: u64,
    /// Bytes freed.
    pub reclaimed_bytes: u64,
}
