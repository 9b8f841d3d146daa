//! The JSON-RPC server: turns each line from the host into a typed request, calls one function,
//! and maps the result to a response or an error code.
//!
//! One task runs the server and owns the process table; it also collects finished processes
//! (sending their `exit` notifications) and drives the shutdown sequence. A bad message gets an
//! error on its own id (or `null` when none can be read) and the server carries on; nothing a
//! host sends ends the loop except `shutdown`, or the peer closing in `--stdio` mode.

use std::time::Duration;

use aegis_proto::control::{
    codes, ExecParams, ExitParams, Frame, FrameError, HealthParams, HealthResult, Method,
    Notification, ProcessSpec, RequestFrame, RequestId, ResizeParams, ResponseFrame, RunParams,
    SetIngressKeyParams, SetTimeParams, ShutdownParams, SignalParams, SpawnResult,
    MAX_HOST_FRAME_BYTES, PROTOCOL_VERSION,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::ingress::IngressKey;
use tokio::time::Instant;

use crate::channel::reader::Incoming;
use crate::channel::writer::OutboxSender;
use crate::console;
use crate::process::input::Inputs;
use crate::process::reaper::Reaper;
use crate::process::table::{
    Finished, Processes, ResizeError, SignalError, Slot, StartError, StartOptions, Supervisor,
};

/// Longest grace a `shutdown` may ask for; a bigger value is clamped so shutdown stays bounded.
pub const MAX_SHUTDOWN_GRACE: Duration = Duration::from_secs(300);

/// Grace given to processes when the peer closes the channel in `--stdio` mode.
pub const PEER_CLOSED_GRACE: Duration = Duration::from_secs(1);

/// How long to wait after SIGKILL for the last processes to be reaped and their pipes to close
/// (a process stuck in uninterruptible sleep never will).
pub const KILL_WAIT: Duration = Duration::from_secs(2);

/// How long the last frames (the `exit` notifications) get to reach the host before the harness
/// exits or powers off.
pub const FINAL_FLUSH: Duration = Duration::from_secs(2);

/// Whether the harness is the guest's init or a development server on stdin/stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// PID 1 in a VM: shutdown signals every process and powers off; `set_time` sets the clock.
    Init,
    /// `--stdio` on a developer's machine: shutdown touches only our own processes and exits;
    /// `set_time` is refused (it would set the host's clock).
    Stdio,
}

/// How the server ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Power the VM off (PID 1).
    PowerOff,
    /// Exit the process with status 0 (`--stdio`).
    Exit,
}

/// A request with decoded parameters.
#[derive(Debug)]
enum Request {
    Run(RunParams),
    Exec(ExecParams),
    Signal(SignalParams),
    Health(HealthParams),
    Shutdown(ShutdownParams),
    SetTime(SetTimeParams),
    SetIngressKey(SetIngressKeyParams),
    Resize(ResizeParams),
}

/// Decodes `params` for `method`. A missing `params` counts as `{}`.
fn decode(method: Method, params: Value) -> Result<Request, serde_json::Error> {
    fn parse<T: DeserializeOwned>(params: Value) -> Result<T, serde_json::Error> {
        match params {
            Value::Null => serde_json::from_value(Value::Object(serde_json::Map::new())),
            params => serde_json::from_value(params),
        }
    }
    Ok(match method {
        Method::Run => Request::Run(parse(params)?),
        Method::Exec => Request::Exec(parse(params)?),
        Method::Signal => Request::Signal(parse(params)?),
        Method::Health => Request::Health(parse(params)?),
        Method::Shutdown => Request::Shutdown(parse(params)?),
        Method::SetTime => Request::SetTime(parse(params)?),
        Method::SetIngressKey => Request::SetIngressKey(parse(params)?),
        Method::Resize => Request::Resize(parse(params)?),
    })
}

/// What to do once the response is queued.
#[derive(Debug)]
enum After {
    Nothing,
    Supervise(Supervisor),
    Shutdown(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    /// SIGTERM sent; SIGKILL at `kill_at` unless everything ended.
    Terminating {
        kill_at: Instant,
    },
    /// SIGKILL sent; give up waiting at `give_up_at`.
    Killing {
        give_up_at: Instant,
    },
    /// Nothing left to wait for.
    Done,
}

/// Why `set_time` failed.
#[derive(Debug, thiserror::Error)]
enum SetTimeError {
    #[error("set_time is disabled in --stdio mode: it would set the host's clock")]
    Disabled,
    #[error("time {unix_nanos} ns is out of range")]
    OutOfRange { unix_nanos: u128 },
    #[error("cannot set the clock")]
    Clock(#[source] nix::Error),
}

/// The server task's state.
#[derive(Debug)]
pub struct Server {
    processes: Processes,
    supervisors: JoinSet<Finished>,
    outbox: OutboxSender,
    started: std::time::Instant,
    role: Role,
    phase: Phase,
    ingress_key: IngressKey,
}

impl Server {
    /// A server spawning through `reaper` (stdin pipes kept in `inputs`) and sending through
    /// `outbox`. `started` is when the
    /// harness started (for `health`); `ingress_key` is the ingress proxy's, which
    /// `set_ingress_key` sets.
    pub fn new(
        reaper: Reaper,
        inputs: Inputs,
        outbox: OutboxSender,
        role: Role,
        started: std::time::Instant,
        ingress_key: IngressKey,
    ) -> Server {
        Server {
            processes: Processes::new(reaper, inputs),
            supervisors: JoinSet::new(),
            outbox,
            started,
            role,
            phase: Phase::Serving,
            ingress_key,
        }
    }

    /// Follows the number of running execs (for the activity heartbeat).
    pub fn subscribe_execs(&self) -> watch::Receiver<u32> {
        self.processes.subscribe_execs()
    }

    /// Serves until shutdown has finished.
    pub async fn run(mut self, mut incoming: mpsc::Receiver<Incoming>) -> Outcome {
        let mut incoming_open = true;
        while self.phase != Phase::Done {
            let deadline = match self.phase {
                Phase::Terminating { kill_at } => Some(kill_at),
                Phase::Killing { give_up_at } => Some(give_up_at),
                Phase::Serving | Phase::Done => None,
            };
            tokio::select! {
                message = incoming.recv(), if incoming_open => match message {
                    Some(Incoming::Line(line)) => self.handle_line(&line).await,
                    Some(Incoming::TooLarge) => {
                        let message = format!("frame exceeds {MAX_HOST_FRAME_BYTES} bytes; discarded up to the next newline");
                        self.outbox.respond(&ResponseFrame::err(None, codes::FRAME_TOO_LARGE, message)).await;
                    }
                    Some(Incoming::Closed) | None => {
                        incoming_open = false;
                        console::line("the host closed the control channel");
                        self.begin_shutdown(PEER_CLOSED_GRACE);
                    }
                },
                Some(joined) = self.supervisors.join_next(), if !self.supervisors.is_empty() => {
                    match joined {
                        Ok(finished) => self.on_finished(finished).await,
                        // Panics end the harness in the hook, and nothing aborts supervisors.
                        Err(e) => console::line(format_args!("process supervisor failed: {e}")),
                    }
                }
                () = sleep_until(deadline), if deadline.is_some() => self.on_deadline(),
            }
            if self.phase != Phase::Serving && self.processes.is_empty() {
                self.phase = Phase::Done;
            }
        }
        if !self.outbox.flush(FINAL_FLUSH).await {
            console::line("the host did not take the last frames before shutdown");
        }
        match self.role {
            Role::Init => Outcome::PowerOff,
            Role::Stdio => Outcome::Exit,
        }
    }

    async fn handle_line(&mut self, line: &[u8]) {
        let request = match Frame::parse(line) {
            Ok(Frame::Request(request)) => request,
            // The host sends no notifications today; ignoring unknown ones keeps an older
            // harness working with a newer daemon. Responses would answer requests we never send.
            Ok(Frame::Notification { .. } | Frame::Response(_)) => return,
            Err(FrameError::Parse(e)) => {
                let message = format!("frame is not valid JSON: {e}");
                let response = ResponseFrame::err(None, codes::PARSE_ERROR, message);
                self.outbox.respond(&response).await;
                return;
            }
            Err(FrameError::Invalid { id, reason }) => {
                let message = format!("invalid JSON-RPC request: {reason}");
                let response = ResponseFrame::err(id, codes::INVALID_REQUEST, message);
                self.outbox.respond(&response).await;
                return;
            }
        };
        let (response, after) = self.dispatch(request);
        self.outbox.respond(&response).await;
        match after {
            After::Nothing => {}
            After::Supervise(supervisor) => {
                self.supervisors.spawn(supervisor.run());
            }
            After::Shutdown(grace) => self.begin_shutdown(grace),
        }
    }

    fn dispatch(&mut self, request: RequestFrame) -> (ResponseFrame, After) {
        let id = request.id;
        let Some(method) = Method::parse(&request.method) else {
            let message = format!("unknown method {:?}", request.method);
            return (
                ResponseFrame::err(Some(id), codes::METHOD_NOT_FOUND, message),
                After::Nothing,
            );
        };
        let request = match decode(method, request.params) {
            Ok(request) => request,
            Err(e) => {
                let message = format!("invalid params for {method}: {e}");
                return (
                    ResponseFrame::err(Some(id), codes::INVALID_PARAMS, message),
                    After::Nothing,
                );
            }
        };
        match request {
            Request::Run(params) => {
                let options = StartOptions {
                    stdin: params.stdin,
                    timeout: None,
                    tty: params.tty,
                };
                self.start(id, Slot::Primary, &params.process, options)
            }
            Request::Exec(params) => {
                if params.exec_id.0.is_empty() {
                    let message = "invalid params for exec: exec_id must not be empty";
                    return (
                        ResponseFrame::err(Some(id), codes::INVALID_PARAMS, message),
                        After::Nothing,
                    );
                }
                let options = StartOptions {
                    stdin: params.stdin,
                    timeout: params.timeout_ms.map(Duration::from_millis),
                    tty: params.tty,
                };
                self.start(id, Slot::Exec(params.exec_id), &params.process, options)
            }
            Request::Signal(params) => {
                let slot = Slot::from(params.exec_id);
                let response = match self.processes.signal(slot, params.signal) {
                    Ok(()) => ok(id, &serde_json::json!({})),
                    Err(e) => ResponseFrame::err(Some(id), signal_code(&e), console::chain(&e)),
                };
                (response, After::Nothing)
            }
            Request::Resize(params) => {
                let slot = Slot::from(params.exec_id);
                let response = match self.processes.resize(slot, params.size) {
                    Ok(()) => ok(id, &serde_json::json!({})),
                    Err(e) => {
                        let code = match e {
                            ResizeError::NoSuchProcess { .. } => codes::NO_SUCH_PROCESS,
                            ResizeError::NoTerminal { .. } => codes::INVALID_PARAMS,
                            ResizeError::Ioctl { .. } => codes::INTERNAL_ERROR,
                        };
                        ResponseFrame::err(Some(id), code, console::chain(&e))
                    }
                };
                (response, After::Nothing)
            }
            Request::Health(HealthParams {}) => (ok(id, &self.health()), After::Nothing),
            Request::Shutdown(params) => {
                let grace = Duration::from_millis(params.grace_ms).min(MAX_SHUTDOWN_GRACE);
                (ok(id, &serde_json::json!({})), After::Shutdown(grace))
            }
            Request::SetIngressKey(params) => {
                self.ingress_key.set(params.key);
                (ok(id, &serde_json::json!({})), After::Nothing)
            }
            Request::SetTime(params) => {
                let response = match set_time(self.role, &params) {
                    Ok(()) => ok(id, &serde_json::json!({})),
                    Err(e) => {
                        let code = match e {
                            SetTimeError::OutOfRange { .. } => codes::INVALID_PARAMS,
                            SetTimeError::Disabled | SetTimeError::Clock(_) => {
                                codes::INTERNAL_ERROR
                            }
                        };
                        ResponseFrame::err(Some(id), code, console::chain(&e))
                    }
                };
                (response, After::Nothing)
            }
        }
    }

    fn start(
        &mut self,
        id: RequestId,
        slot: Slot,
        spec: &ProcessSpec,
        options: StartOptions,
    ) -> (ResponseFrame, After) {
        match self.processes.start(slot, spec, options, &self.outbox) {
            Ok(supervisor) => {
                let result = SpawnResult {
                    pid: supervisor.pid(),
                };
                (ok(id, &result), After::Supervise(supervisor))
            }
            Err(e) => {
                let code = match &e {
                    StartError::AlreadyRunning { .. } => codes::ALREADY_RUNNING,
                    StartError::TooMany { .. } => codes::TOO_MANY_PROCESSES,
                    StartError::ShuttingDown => codes::SHUTTING_DOWN,
                    StartError::Spawn { source, .. } if source.is_invalid_request() => {
                        codes::INVALID_PARAMS
                    }
                    StartError::Spawn { .. } => codes::SPAWN_FAILED,
                };
                (
                    ResponseFrame::err(Some(id), code, console::chain(&e)),
                    After::Nothing,
                )
            }
        }
    }

    fn health(&self) -> HealthResult {
        HealthResult {
            harness_version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol: PROTOCOL_VERSION,
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            processes: u32::try_from(self.processes.len()).unwrap_or(u32::MAX),
            primary_running: self.processes.primary_running(),
        }
    }

    async fn on_finished(&mut self, finished: Finished) {
        // Removed before the notification goes out, so a `run` sent in reaction to this `exit`
        // finds the slot free.
        self.processes.finish(&finished);
        if finished.slot == Slot::Primary {
            console::line(format_args!(
                "primary process exited (code {})",
                finished.status.code
            ));
        }
        let exit = ExitParams {
            exec_id: finished.slot.exec_id(),
            status: finished.status,
            timed_out: finished.timed_out,
        };
        self.outbox.notify(Notification::Exit(exit)).await;
    }

    fn begin_shutdown(&mut self, grace: Duration) {
        if self.phase != Phase::Serving {
            return;
        }
        console::line(format_args!(
            "shutting down: SIGTERM to {} processes, {} ms grace",
            self.processes.len(),
            grace.as_millis()
        ));
        self.processes.stop_accepting();
        self.processes.signal_all(libc::SIGTERM);
        if self.role == Role::Init {
            signal_everything(libc::SIGTERM);
        }
        self.phase = Phase::Terminating {
            kill_at: Instant::now() + grace,
        };
    }

    fn on_deadline(&mut self) {
        match self.phase {
            Phase::Terminating { .. } => {
                let killed = self.processes.signal_all(libc::SIGKILL);
                if self.role == Role::Init {
                    signal_everything(libc::SIGKILL);
                }
                if killed > 0 {
                    console::line(format_args!("grace expired: SIGKILL to {killed} processes"));
                }
                self.phase = Phase::Killing {
                    give_up_at: Instant::now() + KILL_WAIT,
                };
            }
            Phase::Killing { .. } => {
                console::line(format_args!(
                    "{} processes did not finish after SIGKILL; going on",
                    self.processes.len()
                ));
                self.phase = Phase::Done;
            }
            Phase::Serving | Phase::Done => {}
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// As PID 1, reaches daemons and orphans outside our process groups too.
fn signal_everything(signal: i32) {
    // SAFETY: kill(-1, sig) signals every process except init (us) and kernel threads, which
    // is what a shutting-down init means to do; only called in the Init role.
    unsafe {
        libc::kill(-1, signal);
    }
}

fn ok<T: Serialize>(id: RequestId, result: &T) -> ResponseFrame {
    match serde_json::to_value(result) {
        Ok(value) => ResponseFrame::ok(id, value),
        Err(e) => ResponseFrame::err(
            Some(id),
            codes::INTERNAL_ERROR,
            format!("cannot encode the result: {e}"),
        ),
    }
}

fn signal_code(error: &SignalError) -> i64 {
    match error {
        SignalError::InvalidSignal { .. } => codes::INVALID_PARAMS,
        SignalError::NoSuchProcess { .. } | SignalError::Exited { .. } => codes::NO_SUCH_PROCESS,
        SignalError::Kill { .. } => codes::INTERNAL_ERROR,
    }
}

fn set_time(role: Role, params: &SetTimeParams) -> Result<(), SetTimeError> {
    if role == Role::Stdio {
        return Err(SetTimeError::Disabled);
    }
    let out_of_range = || SetTimeError::OutOfRange {
        unix_nanos: params.unix_nanos,
    };
    let secs = i64::try_from(params.unix_nanos / 1_000_000_000).map_err(|_| out_of_range())?;
    let nanos = i64::try_from(params.unix_nanos % 1_000_000_000).map_err(|_| out_of_range())?;
    let time = libc::timespec {
        tv_sec: secs,
        tv_nsec: nanos,
    };
    // SAFETY: `time` is a valid timespec (nanoseconds below one second) that lives for the call.
    let rc = unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &time) };
    if rc == 0 {
        Ok(())
    } else {
        Err(SetTimeError::Clock(nix::Error::last()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_params_per_method() {
        assert!(matches!(
            decode(Method::Health, Value::Null),
            Ok(Request::Health(HealthParams {}))
        ));
        assert!(matches!(
            decode(Method::Run, serde_json::json!({"argv": ["echo", "hi"], "unknown": 1})),
            Ok(Request::Run(params)) if params.process.argv == ["echo", "hi"]
        ));
        let err = decode(Method::Run, serde_json::json!({"argv": "echo"})).unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
        assert!(decode(Method::Exec, serde_json::json!({"argv": ["x"]})).is_err());
        assert!(decode(Method::Signal, Value::Null).is_err());
        assert!(matches!(
            decode(Method::Shutdown, serde_json::json!({"grace_ms": 10})),
            Ok(Request::Shutdown(ShutdownParams { grace_ms: 10 }))
        ));
    }

    #[test]
    fn set_time_is_refused_in_stdio_mode() {
        let params = SetTimeParams {
            unix_nanos: 1_700_000_000_000_000_000,
        };
        assert!(matches!(
            set_time(Role::Stdio, &params),
            Err(SetTimeError::Disabled)
        ));
    }
}
