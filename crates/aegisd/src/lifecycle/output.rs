//! Routes a guest's notifications: output lines to the instance log (source `server` for the
//! primary process, `exec` with its id for execs) and to the exec's live stream; exits to the
//! exec's stream or, for the primary process, to the instance actor.
//!
//! One router task per booted guest. It never calls the guest, so it can never wait on the
//! channel whose notifications it drains.

use std::collections::HashMap;
use std::sync::Arc;

use aegis_proto::api::{ExecEvent, LogEntry, LogSource, LogStream};
use aegis_proto::control::{ExecId, Notification, Stream};
use tokio::sync::mpsc;

use super::command::Command;
use crate::logs::{now_ts, InstanceLog, LineAssembler};

/// Notifications buffered between the channel's demuxer and the router.
pub const NOTIFICATION_BUFFER: usize = 4096;
/// Output entries buffered per exec stream. When an API client reads slower than the guest
/// writes, further lines are dropped from the live stream (they stay in the instance log) and
/// the client is told how many.
pub const EXEC_STREAM_BUFFER: usize = 1024;

/// Registers exec streams with a router.
#[derive(Debug, Clone)]
pub struct OutputRouter {
    register: mpsc::Sender<(ExecId, mpsc::Sender<ExecEvent>)>,
}

impl OutputRouter {
    /// Starts a router for one guest. Returns the sink to give the control channel and the
    /// router handle.
    pub fn spawn(
        log: Arc<InstanceLog>,
        actor: mpsc::Sender<Command>,
        generation: u64,
    ) -> (mpsc::Sender<Notification>, OutputRouter) {
        let (sink, notes) = mpsc::channel(NOTIFICATION_BUFFER);
        let (register, registrations) = mpsc::channel(64);
        tokio::spawn(route(log, actor, generation, notes, registrations));
        (sink, OutputRouter { register })
    }

    /// Subscribes to an exec's output before the exec is started, so nothing is missed.
    ///
    /// Returns `None` when the guest is gone.
    pub async fn subscribe(&self, exec_id: ExecId) -> Option<mpsc::Receiver<ExecEvent>> {
        let (tx, rx) = mpsc::channel(EXEC_STREAM_BUFFER);
        self.register.send((exec_id, tx)).await.ok()?;
        Some(rx)
    }
}

struct ExecStream {
    tx: mpsc::Sender<ExecEvent>,
    dropped: u64,
}

async fn route(
    log: Arc<InstanceLog>,
    actor: mpsc::Sender<Command>,
    generation: u64,
    mut notes: mpsc::Receiver<Notification>,
    mut registrations: mpsc::Receiver<(ExecId, mpsc::Sender<ExecEvent>)>,
) {
    let mut lines = LineAssembler::default();
    let mut execs: HashMap<ExecId, ExecStream> = HashMap::new();
    loop {
        tokio::select! {
            // Registrations first: one is always sent before its exec starts.
            biased;
            reg = registrations.recv() => {
                if let Some((id, tx)) = reg {
                    execs.insert(id, ExecStream { tx, dropped: 0 });
                }
            }
            note = notes.recv() => {
                let Some(note) = note else { break };
                match note {
                    Notification::Output(o) => {
                        for (text, eol) in lines.push(o.exec_id.clone(), o.stream, &o.data, o.eol) {
                            emit(&log, &mut execs, o.exec_id.as_ref(), o.stream, text, !eol);
                        }
                    }
                    Notification::Activity(activity) => {
                        let _ = actor.try_send(Command::Heartbeat { generation, activity });
                    }
                    Notification::Exit(e) => {
                        for (stream, text) in lines.finish(&e.exec_id) {
                            emit(&log, &mut execs, e.exec_id.as_ref(), stream, text, true);
                        }
                        match e.exec_id {
                            Some(id) => {
                                if let Some(stream) = execs.remove(&id) {
                                    let done = ExecEvent::Done {
                                        done: true,
                                        exit_code: e.status.code,
                                        signal: e.status.signal,
                                        exec_id: id.0,
                                    };
                                    // The final record must not be lost to a full buffer.
                                    let _ = stream.tx.send(done).await;
                                }
                            }
                            None => {
                                log.system(format!("process exited (code={})", e.status.code));
                                let _ = actor
                                    .send(Command::PrimaryExited { generation, status: e.status })
                                    .await;
                            }
                        }
                    }
                }
            }
        }
    }
    for (_, stream) in execs {
        let _ = stream
            .tx
            .send(ExecEvent::Error {
                error: "the VM stopped before the process ended".to_owned(),
            })
            .await;
    }
}

fn emit(
    log: &InstanceLog,
    execs: &mut HashMap<ExecId, ExecStream>,
    exec_id: Option<&ExecId>,
    stream: Stream,
    line: String,
    partial: bool,
) {
    let entry = LogEntry {
        ts: now_ts(),
        stream: match stream {
            Stream::Stdout => LogStream::Stdout,
            Stream::Stderr => LogStream::Stderr,
        },
        line,
        source: if exec_id.is_some() {
            LogSource::Exec
        } else {
            LogSource::Server
        },
        instance_id: log.instance_id().to_owned(),
        exec_id: exec_id.map(|e| e.0.clone()),
        daemon: None,
        partial,
    };
    if let Some(exec) = exec_id.and_then(|id| execs.get_mut(id)) {
        if exec.tx.try_send(ExecEvent::Output(entry.clone())).is_err() {
            exec.dropped += 1;
            if exec.dropped == 1 {
                tracing::warn!(instance = log.instance_id(), exec = %exec_id.map(|e| e.0.as_str()).unwrap_or(""), "exec client reads too slowly; dropping lines from its stream (kept in the log)");
            }
        }
    }
    log.append(entry);
}
