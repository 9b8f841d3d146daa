//! The control channel: newline-delimited JSON-RPC 2.0 between `aegisd` (host) and `aegis-harness`
//! (guest PID 1), one channel per VM.
//!
//! Each frame is one JSON object on one line. Both sides may send requests and notifications; the
//! host sends the requests in [`Method`], the guest sends the notifications in [`Notification`].
//! Types here ignore unknown fields so that a newer daemon can talk to an older harness that is
//! still running inside a VM (and the other way round).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Version of the harness ↔ daemon protocol. Bumped on incompatible changes; reported by `health`.
pub const PROTOCOL_VERSION: u32 = 5;

/// Name of the virtio-serial port carrying the channel (`/sys/class/virtio-ports/*/name`).
pub const CONTROL_PORT_NAME: &str = "org.aegis.control";

/// Largest frame the host sends to the guest. `run`/`exec` parameters (argv + env) are the biggest
/// requests; 1 MiB is far above any real command line and keeps the guest's line buffer bounded.
pub const MAX_HOST_FRAME_BYTES: usize = 1024 * 1024;

/// Raw bytes of process output carried by one `output` notification. Longer lines are split into
/// several notifications with `eol: false`; the receiver joins them.
pub const OUTPUT_CHUNK_BYTES: usize = 32 * 1024;

/// Largest frame the guest may send. An output chunk expands at most six-fold when escaped as JSON
/// (`\u00XX`), plus the envelope; anything bigger is a misbehaving guest and is discarded.
pub const MAX_GUEST_FRAME_BYTES: usize = OUTPUT_CHUNK_BYTES * 6 + 4096;

/// Maximum number of processes (primary + execs) the harness runs at once.
pub const MAX_PROCESSES: usize = 256;

/// The JSON-RPC version string every frame carries.
pub const JSONRPC: &str = "2.0";

/// Methods the host calls on the guest harness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Start the primary process ([`RunParams`] → [`SpawnResult`]). At most one at a time.
    Run,
    /// Start an additional process ([`ExecParams`] → [`SpawnResult`]).
    Exec,
    /// Send a signal to a process ([`SignalParams`] → `{}`).
    Signal,
    /// Liveness and version ([`HealthParams`] → [`HealthResult`]).
    Health,
    /// Stop all processes gracefully, sync, power off ([`ShutdownParams`] → `{}`, then the VM ends).
    Shutdown,
    /// Set the guest's wall clock, after a restore from a snapshot ([`SetTimeParams`] → `{}`).
    SetTime,
    /// Set the key ingress headers must carry ([`SetIngressKeyParams`] → `{}`). Until it is set,
    /// the ingress proxy turns every connection away.
    SetIngressKey,
    /// Set the window size of an exec's terminal ([`ResizeParams`] → `{}`). Protocol 4.
    Resize,
}

impl Method {
    /// The wire spelling of the method.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Run => "run",
            Method::Exec => "exec",
            Method::Signal => "signal",
            Method::Health => "health",
            Method::Shutdown => "shutdown",
            Method::SetTime => "set_time",
            Method::SetIngressKey => "set_ingress_key",
            Method::Resize => "resize",
        }
    }

    /// Parses a wire spelling.
    pub fn parse(s: &str) -> Option<Method> {
        [
            Method::Run,
            Method::Exec,
            Method::Signal,
            Method::Health,
            Method::Shutdown,
            Method::SetTime,
            Method::SetIngressKey,
            Method::Resize,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identifies an exec process on the wire. The primary process has no exec id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ExecId(pub String);

impl fmt::Display for ExecId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What to start inside the guest. `run` takes it directly; `exec` wraps it in [`ExecParams`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// Program and arguments; `argv[0]` is looked up in `PATH` when it has no slash.
    pub argv: Vec<String>,
    /// Environment of the process, in addition to the harness defaults (`PATH`, `HOME`, `TERM`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory; `/` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// User to run as: `name`, `uid`, `name:group` or `uid:gid`, resolved against the guest's
    /// `/etc/passwd` and `/etc/group`. Root when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// Parameters of `run`: the primary process, and whether it gets a stdin pipe (fed through the
/// data service with no exec id; protocol 3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunParams {
    /// What to run.
    #[serde(flatten)]
    pub process: ProcessSpec,
    /// Give the process a stdin pipe; `/dev/null` otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin: bool,
    /// Run it on a pseudo-terminal of this size instead (attached through the data service's
    /// terminal without an exec id; protocol 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<WindowSize>,
}

/// Parameters of `exec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecParams {
    /// Chosen by the host, unique per VM; tags this process's output and exit.
    pub exec_id: ExecId,
    /// What to run.
    #[serde(flatten)]
    pub process: ProcessSpec,
    /// Give the process a stdin pipe, fed through the data service ([`DataRequest::Stdin`]);
    /// `/dev/null` otherwise. Protocol 3.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin: bool,
    /// Kill the process (its whole process group, SIGKILL) this many milliseconds after it
    /// started; its exit then says `timed_out`. Protocol 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Run the process on a pseudo-terminal of this size instead of pipes: its stdin, stdout
    /// and stderr are the terminal, which the host reaches through the data service
    /// ([`DataRequest::Terminal`]) as raw bytes; its output is not sent as `output`
    /// notifications. Protocol 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<WindowSize>,
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSize {
    /// Lines.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// Parameters of `resize`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResizeParams {
    /// An exec started with `tty`; the primary process when absent (protocol 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_id: Option<ExecId>,
    /// The new size; the process gets `SIGWINCH`.
    #[serde(flatten)]
    pub size: WindowSize,
}

/// Reply to `run` and `exec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnResult {
    /// Guest pid of the new process.
    pub pid: u32,
}

/// Parameters of `signal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalParams {
    /// The exec to signal; the primary process when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_id: Option<ExecId>,
    /// Signal number (Linux numbering, e.g. 15 for SIGTERM).
    pub signal: i32,
}

/// Parameters of `health` (none today; an object so fields can be added).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthParams {}

/// Reply to `health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthResult {
    /// Version of the harness binary (its crate version).
    pub harness_version: String,
    /// [`PROTOCOL_VERSION`] the harness speaks.
    pub protocol: u32,
    /// Milliseconds since the harness started.
    pub uptime_ms: u64,
    /// Processes currently running (primary + execs).
    pub processes: u32,
    /// Whether the primary process is running.
    pub primary_running: bool,
}

impl HealthResult {
    /// A placeholder for a harness that was not asked yet (a paused guest after a daemon
    /// restart).
    pub fn unknown() -> HealthResult {
        HealthResult {
            harness_version: String::new(),
            protocol: PROTOCOL_VERSION,
            uptime_ms: 0,
            processes: 0,
            primary_running: true,
        }
    }
}

/// Parameters of `shutdown`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownParams {
    /// How long processes get between SIGTERM and SIGKILL.
    pub grace_ms: u64,
}

/// Parameters of `set_time`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetTimeParams {
    /// Wall-clock time as nanoseconds since the Unix epoch.
    pub unix_nanos: u128,
}

/// Parameters of `set_ingress_key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetIngressKeyParams {
    /// The key, random per boot, chosen by the host.
    pub key: [u8; INGRESS_KEY_BYTES],
}

/// Notifications the guest sends to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", content = "params", rename_all = "snake_case")]
pub enum Notification {
    /// A chunk of a process's output.
    Output(OutputParams),
    /// A process ended. Sent after all of its output.
    Exit(ExitParams),
    /// Periodic heartbeat: what the guest did since the previous one (see [`ActivityParams`]).
    Activity(ActivityParams),
}

/// How often the harness sends [`Notification::Activity`].
pub const ACTIVITY_INTERVAL_MS: u64 = 5_000;

/// Directory in the guest where programs hold keepalive leases: while it contains at least one
/// entry, the instance is never paused for idleness. `touch /run/aegis/keepalive/NAME` takes a
/// lease, `rm` releases it. The harness creates the directory (mode 1777).
pub const KEEPALIVE_DIR: &str = "/run/aegis/keepalive";

/// Parameters of the `activity` notification: counters over the last interval and the current
/// gauges. The daemon decides what counts as idle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityParams {
    /// Milliseconds the interval covered.
    pub interval_ms: u64,
    /// CPU time (user + system, all CPUs) spent by guest processes, in milliseconds, excluding
    /// the harness itself.
    pub cpu_ms: u64,
    /// Bytes received plus sent on eth0 during the interval.
    pub net_bytes: u64,
    /// Established TCP connections now (both directions, IPv4 and IPv6).
    pub tcp_established: u32,
    /// Running exec processes now.
    pub execs: u32,
    /// Keepalive leases held now (entries in [`KEEPALIVE_DIR`]).
    pub leases: u32,
}

/// Guest TCP port on which the harness accepts ingress connections from the host router (a
/// privileged port, so unprivileged guest programs cannot take it; reserved).
///
/// Protocol, per connection: the host sends [`INGRESS_MAGIC`], the key it set with
/// [`Method::SetIngressKey`] and the target guest port as a big-endian `u16` (see
/// [`ingress_header`]); the harness connects to that port on `127.0.0.1` (so servers listening only
/// on loopback are reachable too; falling back to the guest's own address) and answers one
/// byte, an [`IngressStatus`]. On `Connected` both sides then relay raw bytes, with half-close;
/// otherwise the harness closes the connection.
pub const INGRESS_PORT: u16 = 1000;

/// First two bytes of an ingress header (the second one versions the protocol).
pub const INGRESS_MAGIC: [u8; 2] = [0xAE, 0x02];

/// Bytes of the ingress key. The forward to the proxy listens on host loopback, where any local
/// user can connect: the key is what makes a connection the router's.
pub const INGRESS_KEY_BYTES: usize = 32;

/// Bytes of an ingress header: magic, key, port.
pub const INGRESS_HEADER_BYTES: usize = INGRESS_MAGIC.len() + INGRESS_KEY_BYTES + 2;

/// The header that asks the ingress proxy for `port`.
pub fn ingress_header(key: &[u8; INGRESS_KEY_BYTES], port: u16) -> [u8; INGRESS_HEADER_BYTES] {
    let mut header = [0u8; INGRESS_HEADER_BYTES];
    header[..2].copy_from_slice(&INGRESS_MAGIC);
    header[2..2 + INGRESS_KEY_BYTES].copy_from_slice(key);
    header[2 + INGRESS_KEY_BYTES..].copy_from_slice(&port.to_be_bytes());
    header
}

/// The port an ingress header names to reach the harness's data service instead of a guest
/// port (no TCP port is 0). After the `Connected` status the host sends one [`DataRequest`] as
/// a JSON line of at most [`MAX_DATA_REQUEST_BYTES`]; the harness answers one [`DataReply`]
/// line, then the operation's bytes flow:
/// - `stdin`: raw bytes host to guest until the host's end-of-file, after which the harness
///   closes (or keeps) the process's stdin and sends a final [`DataReply`] with the byte count;
/// - `terminal`: raw bytes both ways, with no final reply (see [`DataRequest::Terminal`]);
/// - `read` and `tar_out`: frames (see [`frame_header`]) guest to host, an empty frame, then a
///   final [`DataReply`] (an error after the start is reported there, never as a short file);
/// - `write` and `tar_in`: frames host to guest and an empty frame, then the final
///   [`DataReply`]; a connection that ends before the empty frame changes nothing;
/// - the other file operations: no bytes, the first reply is the answer.
///
/// Bulk data goes here rather than over the control channel so that it has TCP's flow control
/// and never delays control frames; file work runs on the harness's blocking threads, never in
/// the control task.
pub const DATA_SERVICE_PORT: u16 = 0;

/// Longest request line the data service reads.
pub const MAX_DATA_REQUEST_BYTES: usize = 64 * 1024;

/// Largest frame payload of a file transfer.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;

/// The 4-byte big-endian length that precedes a frame's payload in a file transfer. An empty
/// payload ends the transfer.
pub fn frame_header(len: usize) -> [u8; 4] {
    u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes()
}

/// Deepest listing of `list`.
pub const MAX_LIST_DEPTH: u32 = 16;
/// Most entries one `list` returns.
pub const MAX_LIST_ENTRIES: usize = 10_000;

/// What a data-service connection is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum DataRequest {
    /// Feed the stdin of an exec started with `stdin: true`, one connection at a time.
    Stdin {
        /// The exec; the primary process when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exec_id: Option<ExecId>,
        /// Keep the process's stdin open after this connection's end-of-file, for a later
        /// connection to go on feeding it (a background process given input piece by piece).
        /// By default the end of the connection is the end of the process's input.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        keep_open: bool,
    },
    /// Attach to the terminal of an exec started with `tty`, one connection at a time: after
    /// the first reply, the terminal's output flows guest to host and the host's bytes are its
    /// input, raw both ways, until the process has ended and its output is drained (then the
    /// harness closes the connection) or the host goes away (the process goes on, and a later
    /// connection attaches again). The host's end-of-file only ends the input.
    Terminal {
        /// The exec; the primary process when absent (protocol 5).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exec_id: Option<ExecId>,
    },
    /// What is at `path` (a symbolic link itself, not its target): `file` of the reply.
    Stat {
        /// Absolute guest path.
        path: String,
    },
    /// The entries under the directory `path`, `depth` levels down (1: its children):
    /// `entries` of the reply, at most [`MAX_LIST_ENTRIES`].
    List {
        /// Absolute guest path.
        path: String,
        /// 1 to [`MAX_LIST_DEPTH`].
        #[serde(default = "one")]
        depth: u32,
    },
    /// Creates the directory `path`.
    Mkdir {
        /// Absolute guest path.
        path: String,
        /// Create missing parents too, and accept an existing directory.
        #[serde(default)]
        parents: bool,
        /// Permission bits (0o755 when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
        /// Owner, as a user spec (`name`, `uid`, `user:group`); root when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
    },
    /// Removes `path` (a directory only when empty, unless `recursive`).
    Remove {
        /// Absolute guest path.
        path: String,
        /// Remove a directory with everything in it.
        #[serde(default)]
        recursive: bool,
    },
    /// Renames `from` to `to` (replacing a file at `to`, as rename(2)).
    Rename {
        /// Absolute guest path.
        from: String,
        /// Absolute guest path.
        to: String,
    },
    /// The file's bytes from `offset`, at most `length` of them.
    Read {
        /// Absolute guest path.
        path: String,
        /// First byte.
        #[serde(default)]
        offset: u64,
        /// How many bytes at most (to the end when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        length: Option<u64>,
    },
    /// Replaces (or creates) the file with the bytes sent, atomically: they go to a temporary
    /// file beside it, which is synced and renamed over it once complete.
    Write {
        /// Absolute guest path.
        path: String,
        /// Create missing parent directories.
        #[serde(default)]
        parents: bool,
        /// Permission bits; the existing file's, or 0o644, when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
        /// Owner, as a user spec; the existing file's, or root, when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
    },
    /// A tar archive of `path` (a file or a directory with everything under it, symbolic links
    /// kept as links) whose top entry is named after `path`'s last component.
    TarOut {
        /// Absolute guest path.
        path: String,
    },
    /// Unpacks the tar archive sent into the existing directory `path`.
    TarIn {
        /// Absolute guest path.
        path: String,
    },
}

fn one() -> u32 {
    1
}

/// What kind of file an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// Anything else (device, socket, FIFO).
    Other,
}

/// A file as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Last path component.
    pub name: String,
    /// Absolute guest path.
    pub path: String,
    /// Kind.
    pub kind: FileKind,
    /// Bytes.
    pub size: u64,
    /// Permission bits (with setuid, setgid, sticky).
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Owner name, when `/etc/passwd` has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Group name, when `/etc/group` has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Last modification, Unix seconds.
    pub mtime: i64,
    /// Where a symbolic link points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// Why a file operation failed, for the host to choose its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileErrorKind {
    /// No such file or directory.
    NotFound,
    /// Something is already there.
    Exists,
    /// A directory where a file was needed.
    IsDir,
    /// A file where a directory was needed.
    NotDir,
    /// A directory that is not empty.
    NotEmpty,
    /// Permission denied, or a read-only file system.
    Denied,
    /// The request is malformed (a relative path, a bad mode, an unknown owner).
    Invalid,
    /// The guest's disk is full.
    NoSpace,
    /// Anything else.
    Other,
}

/// The data service's answer: once when the request is accepted or refused, and once more
/// when the operation is complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataReply {
    /// Whether the request is accepted (first line) or the operation succeeded (last line).
    pub ok: bool,
    /// Why not, when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Bytes moved, on the last line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// What kind of failure, for file operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<FileErrorKind>,
    /// The file operated on (`stat`, `mkdir`, `rename`; `write` on its last line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileEntry>,
    /// A directory's entries (`list`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<Vec<FileEntry>>,
}

impl DataReply {
    /// An acceptance or success without data.
    pub fn ok() -> DataReply {
        DataReply {
            ok: true,
            error: None,
            bytes: None,
            kind: None,
            file: None,
            entries: None,
        }
    }

    /// A refusal or failure.
    pub fn failed(kind: Option<FileErrorKind>, error: String) -> DataReply {
        DataReply {
            ok: false,
            error: Some(error),
            kind,
            ..DataReply::ok()
        }
    }
}

/// The harness's answer to an ingress header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum IngressStatus {
    /// Connected to the guest port; bytes follow.
    Connected = 0,
    /// Nothing listens on the guest port.
    Refused = 1,
    /// The header was malformed or the connection failed otherwise.
    Failed = 2,
}

impl IngressStatus {
    /// Decodes the status byte.
    pub fn from_byte(b: u8) -> IngressStatus {
        match b {
            0 => IngressStatus::Connected,
            1 => IngressStatus::Refused,
            _ => IngressStatus::Failed,
        }
    }
}

/// Which output stream of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Parameters of the `output` notification.
///
/// A line longer than [`OUTPUT_CHUNK_BYTES`] arrives as several chunks, all but the last with
/// `eol: false`. Output that ends without a newline is flushed with `eol: false` when the stream
/// closes. `data` never contains the newline itself. Bytes that are not UTF-8 are replaced with
/// U+FFFD; a multi-byte character is never split across chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputParams {
    /// The exec this output belongs to; the primary process when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_id: Option<ExecId>,
    /// Which stream.
    pub stream: Stream,
    /// The text, without the trailing newline.
    pub data: String,
    /// Whether a newline ended this chunk.
    pub eol: bool,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code when the process exited; `128 + signal` when a signal killed it.
    pub code: i32,
    /// The signal that killed it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
}

impl ExitStatus {
    /// A normal exit with `code`.
    pub fn exited(code: i32) -> Self {
        ExitStatus { code, signal: None }
    }

    /// Death by `signal`, reported as `128 + signal` as shells do.
    pub fn signaled(signal: i32) -> Self {
        ExitStatus {
            code: 128 + signal,
            signal: Some(signal),
        }
    }
}

/// Parameters of the `exit` notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitParams {
    /// The exec that ended; the primary process when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_id: Option<ExecId>,
    /// How it ended.
    #[serde(flatten)]
    pub status: ExitStatus,
    /// Whether the harness killed it because its `timeout_ms` expired.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timed_out: bool,
}

/// A JSON-RPC request id. Aegis uses numbers; strings are accepted from other peers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestId {
    /// Numeric id.
    Number(u64),
    /// String id.
    String(String),
}

/// A request frame as sent on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestFrame {
    /// Always `"2.0"`.
    pub jsonrpc: String,
    /// Id the response will carry.
    pub id: RequestId,
    /// Method name.
    pub method: String,
    /// Parameters object.
    #[serde(default)]
    pub params: Value,
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpcError {
    /// One of the codes in [`codes`].
    pub code: i64,
    /// Human-readable explanation.
    pub message: String,
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

/// JSON-RPC error codes: the standard ones and Aegis's own range (-32000 to -32099).
pub mod codes {
    /// The frame is not valid JSON (or not one line).
    pub const PARSE_ERROR: i64 = -32700;
    /// Valid JSON but not a JSON-RPC request object.
    pub const INVALID_REQUEST: i64 = -32600;
    /// Unknown method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Parameters do not match the method.
    pub const INVALID_PARAMS: i64 = -32602;
    /// The harness failed internally.
    pub const INTERNAL_ERROR: i64 = -32603;
    /// The process could not be started (no such program, bad user, bad workdir).
    pub const SPAWN_FAILED: i64 = -32000;
    /// No such process (unknown or already exited exec id, no primary process).
    pub const NO_SUCH_PROCESS: i64 = -32001;
    /// [`super::MAX_PROCESSES`] reached.
    pub const TOO_MANY_PROCESSES: i64 = -32002;
    /// `run` while a primary process is already running, or an exec id reused.
    pub const ALREADY_RUNNING: i64 = -32003;
    /// The frame exceeded [`super::MAX_HOST_FRAME_BYTES`].
    pub const FRAME_TOO_LARGE: i64 = -32004;
    /// The harness is shutting down and accepts no new work.
    pub const SHUTTING_DOWN: i64 = -32005;
}

/// A response frame as sent on the wire: exactly one of `result` and `error` is present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseFrame {
    /// Always `"2.0"`.
    pub jsonrpc: String,
    /// Id of the request answered; `null` when the request could not be parsed far enough.
    pub id: Option<RequestId>,
    /// Result on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Error on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RpcError>,
}

impl ResponseFrame {
    /// A success response.
    pub fn ok(id: RequestId, result: Value) -> Self {
        ResponseFrame {
            jsonrpc: JSONRPC.to_owned(),
            id: Some(id),
            result: Some(result),
            error: None,
        }
    }

    /// An error response.
    pub fn err(id: Option<RequestId>, code: i64, message: impl Into<String>) -> Self {
        ResponseFrame {
            jsonrpc: JSONRPC.to_owned(),
            id,
            result: None,
            error: Some(RpcError {
                code,
                message: message.into(),
            }),
        }
    }
}

/// A notification frame as sent on the wire (no id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotificationFrame {
    /// Always `"2.0"`.
    pub jsonrpc: String,
    /// The notification itself (`method` + `params`).
    #[serde(flatten)]
    pub notification: Notification,
}

impl NotificationFrame {
    /// Wraps a notification in its envelope.
    pub fn new(notification: Notification) -> Self {
        NotificationFrame {
            jsonrpc: JSONRPC.to_owned(),
            notification,
        }
    }
}

/// Any incoming frame, classified by shape: a request has `method` and `id`, a notification has
/// `method` only, a response has `result` or `error`.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A request.
    Request(RequestFrame),
    /// A notification, with method name and raw params (decoded by the receiver, which may not
    /// know a newer peer's notifications).
    Notification {
        /// Method name.
        method: String,
        /// Raw params.
        params: Value,
    },
    /// A response.
    Response(ResponseFrame),
}

/// Why a line could not be classified as a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Not JSON.
    Parse(String),
    /// JSON, but not a JSON-RPC 2.0 object; carries the id when one could be read.
    Invalid {
        /// The id of the offending message, if it had a usable one.
        id: Option<RequestId>,
        /// What is wrong.
        reason: String,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Parse(e) => write!(f, "frame is not valid JSON: {e}"),
            FrameError::Invalid { reason, .. } => write!(f, "invalid JSON-RPC frame: {reason}"),
        }
    }
}

impl std::error::Error for FrameError {}

impl Frame {
    /// Classifies one line (without its newline).
    ///
    /// # Errors
    /// [`FrameError::Parse`] when the line is not JSON, [`FrameError::Invalid`] when it is not a
    /// JSON-RPC 2.0 message.
    pub fn parse(line: &[u8]) -> Result<Frame, FrameError> {
        let value: Value =
            serde_json::from_slice(line).map_err(|e| FrameError::Parse(e.to_string()))?;
        let Value::Object(obj) = value else {
            return Err(FrameError::Invalid {
                id: None,
                reason: "not an object".to_owned(),
            });
        };
        let id = obj
            .get("id")
            .and_then(|v| serde_json::from_value::<RequestId>(v.clone()).ok());
        if obj.get("jsonrpc").and_then(Value::as_str) != Some(JSONRPC) {
            return Err(FrameError::Invalid {
                id,
                reason: "\"jsonrpc\" must be \"2.0\"".to_owned(),
            });
        }
        let value = Value::Object(obj);
        if let Some(method) = value.get("method") {
            let Some(method) = method.as_str().map(str::to_owned) else {
                return Err(FrameError::Invalid {
                    id,
                    reason: "\"method\" must be a string".to_owned(),
                });
            };
            let params = value.get("params").cloned().unwrap_or(Value::Null);
            if !matches!(params, Value::Object(_) | Value::Null) {
                return Err(FrameError::Invalid {
                    id,
                    reason: "\"params\" must be an object".to_owned(),
                });
            }
            return match (value.get("id"), id) {
                (None, _) => Ok(Frame::Notification { method, params }),
                (Some(_), Some(id)) => Ok(Frame::Request(RequestFrame {
                    jsonrpc: JSONRPC.to_owned(),
                    id,
                    method,
                    params,
                })),
                (Some(_), None) => Err(FrameError::Invalid {
                    id: None,
                    reason: "\"id\" must be a number or a string".to_owned(),
                }),
            };
        }
        serde_json::from_value::<ResponseFrame>(value)
            .map(Frame::Response)
            .map_err(|e| FrameError::Invalid {
                id,
                reason: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_frames() {
        let req = Frame::parse(br#"{"jsonrpc":"2.0","id":1,"method":"health","params":{}}"#);
        assert!(matches!(req, Ok(Frame::Request(r)) if r.method == "health"));
        let note = Frame::parse(br#"{"jsonrpc":"2.0","method":"output","params":{"stream":"stdout","data":"hi","eol":true}}"#);
        assert!(matches!(note, Ok(Frame::Notification { ref method, .. }) if method == "output"));
        let resp = Frame::parse(br#"{"jsonrpc":"2.0","id":7,"result":{"pid":3}}"#);
        assert!(matches!(resp, Ok(Frame::Response(r)) if r.id == Some(RequestId::Number(7))));
    }

    #[test]
    fn rejects_garbage_with_id_when_possible() {
        assert!(matches!(Frame::parse(b"{nope"), Err(FrameError::Parse(_))));
        assert!(matches!(
            Frame::parse(b"[1,2]"),
            Err(FrameError::Invalid { id: None, .. })
        ));
        let bad_version = Frame::parse(br#"{"jsonrpc":"1.0","id":4,"method":"run"}"#);
        assert!(matches!(
            bad_version,
            Err(FrameError::Invalid {
                id: Some(RequestId::Number(4)),
                ..
            })
        ));
        let bad_params = Frame::parse(br#"{"jsonrpc":"2.0","id":5,"method":"run","params":[1]}"#);
        assert!(matches!(bad_params, Err(FrameError::Invalid { .. })));
    }

    #[test]
    fn notifications_round_trip() {
        let n = NotificationFrame::new(Notification::Exit(ExitParams {
            exec_id: Some(ExecId("e1".into())),
            status: ExitStatus::signaled(9),
            timed_out: false,
        }));
        let text = serde_json::to_string(&n).unwrap();
        assert_eq!(
            text,
            r#"{"jsonrpc":"2.0","method":"exit","params":{"exec_id":"e1","code":137,"signal":9}}"#
        );
        let back: NotificationFrame = serde_json::from_str(&text).unwrap();
        assert_eq!(back, n);
        // Protocol 3: a timeout says so; an older harness never sends the field.
        let timed_out = NotificationFrame::new(Notification::Exit(ExitParams {
            exec_id: Some(ExecId("e1".into())),
            status: ExitStatus::signaled(9),
            timed_out: true,
        }));
        let text = serde_json::to_string(&timed_out).unwrap();
        assert!(text.contains(r#""timed_out":true"#), "{text}");
        assert_eq!(
            serde_json::from_str::<NotificationFrame>(&text).unwrap(),
            timed_out
        );
    }

    #[test]
    fn data_requests_and_replies_are_one_json_line_each() {
        let request = DataRequest::Stdin {
            exec_id: Some(ExecId("exec-1".into())),
            keep_open: false,
        };
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(text, r#"{"op":"stdin","exec_id":"exec-1"}"#);
        assert_eq!(serde_json::from_str::<DataRequest>(&text).unwrap(), request);
        assert!(serde_json::from_str::<DataRequest>(r#"{"op":"format_disk"}"#).is_err());
        let reply: DataReply = serde_json::from_str(r#"{"ok":true,"bytes":3}"#).unwrap();
        assert_eq!(reply.bytes, Some(3));
        let params: ExecParams =
            serde_json::from_str(r#"{"exec_id":"e","argv":["cat"],"stdin":true,"timeout_ms":5}"#)
                .unwrap();
        assert!(params.stdin);
        assert_eq!(params.timeout_ms, Some(5));
    }

    #[test]
    fn method_spellings_round_trip() {
        for m in [
            Method::Run,
            Method::Exec,
            Method::Signal,
            Method::Health,
            Method::Shutdown,
            Method::SetTime,
        ] {
            assert_eq!(Method::parse(m.as_str()), Some(m));
            assert_eq!(serde_json::to_value(m).unwrap(), Value::from(m.as_str()));
        }
    }
}
