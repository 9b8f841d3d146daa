//! Routes a guest's notifications: output lines to the instance log (source `server` for the
//! primary process, `exec` with its id for execs) and to the exec's live stream; exits to the
//! exec's stream and the instance's process table or, for the primary process, to the
//! instance actor.
//!
//! One router task per booted guest. It never calls the guest, so it can never wait on the
//! channel whose notifications it drains, and it never waits for an API client: a slow one
//! loses lines from its live stream (they stay in the log), never its final record.

use std::collections::HashMap;
use std::sync::Arc;

use aegis_proto::api::{ExecEvent, LogEntry, LogSource, LogStream};
use aegis_proto::control::{ActivityParams, ExecId, ExitStatus, Notification, Stream};
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{mpsc, oneshot};

use super::processes::ProcessTable;
use crate::control::{NotificationSink, EXIT_RESERVE};

/// How often at most the instance log is told that output was dropped.
const DROP_REPORT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Tells the instance's log when the guest's output outran the daemon and some was dropped,
/// so a reader knows the log has gaps and why.
struct Drops {
    dropped: Arc<std::sync::atomic::AtomicU64>,
    reported: u64,
    last: tokio::time::Instant,
}

impl Drops {
    fn new(dropped: Arc<std::sync::atomic::AtomicU64>) -> Drops {
        Drops {
            dropped,
            reported: 0,
            last: tokio::time::Instant::now(),
        }
    }

    fn report(&mut self, log: &InstanceLog, now: bool) {
        if !now && self.last.elapsed() < DROP_REPORT_INTERVAL {
            return;
        }
        self.last = tokio::time::Instant::now();
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped > self.reported {
            log.system(format!(
                "{} output chunks were dropped: the guest wrote faster than aegisd could keep them (the log has a gap here)",
                dropped - self.reported
            ));
            self.reported = dropped;
        }
    }
}
use crate::logs::{now_ts, InstanceLog, LineAssembler};

/// Notifications buffered between the channel's demuxer and the router, of which
/// [`EXIT_RESERVE`] are kept for exits: at most 768 output chunks of 32 KiB, 24 MiB.
pub const NOTIFICATION_BUFFER: usize = 1024;
const _: () = assert!(NOTIFICATION_BUFFER > 2 * EXIT_RESERVE);
/// Output entries an exec stream's channel can hold. The real bound is [`EXEC_STREAM_BYTES`]:
/// one 32 KiB chunk of short lines is thousands of entries, which a client cannot have read
/// before the router hands them over, so a count bound this low would drop lines of any fast
/// command.
pub const EXEC_STREAM_BUFFER: usize = 64 * 1024;
/// Memory buffered per exec stream, counting each entry's text and [`ENTRY_COST`]. When an API
/// client reads slower than the guest writes past this, further lines are dropped from its live
/// stream (they stay in the instance log).
pub const EXEC_STREAM_BYTES: usize = 8 * 1024 * 1024;
/// What an entry costs beyond its text (timestamp, ids, the channel's slot), for the budget.
const ENTRY_COST: usize = 256;

/// Registers exec streams with a router.
#[derive(Debug, Clone)]
pub struct OutputRouter {
    register: mpsc::Sender<(ExecId, ExecStream)>,
}

/// The live output of one exec as its API client reads it: lines, then one final record
/// (`Done`, or `Error` when the VM went away first).
#[derive(Debug)]
pub struct ExecFeed {
    lines: mpsc::Receiver<LogEntry>,
    end: Option<oneshot::Receiver<ExecEvent>>,
    buffered: Arc<AtomicUsize>,
}

impl ExecFeed {
    /// The next record; `None` after the final one.
    pub async fn next(&mut self) -> Option<ExecEvent> {
        if let Some(entry) = self.lines.recv().await {
            self.buffered
                .fetch_sub(entry.line.len() + ENTRY_COST, Ordering::Relaxed);
            return Some(ExecEvent::Output(entry));
        }
        // The router drops the line sender only after it has set the final record.
        self.end.take()?.await.ok()
    }
}

/// What the router tells the guest's owner, tagged with the boot it belongs to. The owner's
/// mailbox type converts it (the router does not know the owner's commands).
#[derive(Debug)]
pub enum GuestNote {
    /// The guest reported activity.
    Activity {
        /// Which boot's guest.
        generation: u64,
        /// What the guest did.
        activity: ActivityParams,
    },
    /// The primary process ended.
    PrimaryExited {
        /// Which boot's process.
        generation: u64,
        /// How it ended.
        status: ExitStatus,
    },
}

impl OutputRouter {
    /// Starts a router for one guest. Returns the sink to give the control channel and the
    /// router handle.
    pub fn spawn<C: From<GuestNote> + Send + 'static>(
        log: Arc<InstanceLog>,
        processes: Arc<ProcessTable>,
        actor: mpsc::Sender<C>,
        generation: u64,
    ) -> (NotificationSink, OutputRouter) {
        let (tx, notes) = mpsc::channel(NOTIFICATION_BUFFER);
        let sink = NotificationSink::new(tx);
        let (register, registrations) = mpsc::channel(64);
        let drops = Drops::new(sink.dropped());
        tokio::spawn(route(
            log,
            processes,
            actor,
            generation,
            notes,
            registrations,
            drops,
        ));
        (sink, OutputRouter { register })
    }

    /// Subscribes to an exec's output before the exec is started, so nothing is missed.
    ///
    /// Returns `None` when the guest is gone.
    pub async fn subscribe(&self, exec_id: ExecId) -> Option<ExecFeed> {
        let (lines, rx) = mpsc::channel(EXEC_STREAM_BUFFER);
        let (end, end_rx) = oneshot::channel();
        let buffered = Arc::new(AtomicUsize::new(0));
        let stream = ExecStream {
            lines,
            end,
            buffered: Arc::clone(&buffered),
            dropped: 0,
        };
        self.register.send((exec_id, stream)).await.ok()?;
        Some(ExecFeed {
            lines: rx,
            end: Some(end_rx),
            buffered,
        })
    }
}

#[derive(Debug)]
struct ExecStream {
    lines: mpsc::Sender<LogEntry>,
    end: oneshot::Sender<ExecEvent>,
    buffered: Arc<AtomicUsize>,
    dropped: u64,
}

impl ExecStream {
    /// Hands a line to the client unless its buffer is full (by entries or bytes).
    fn offer(&mut self, entry: LogEntry) -> bool {
        let bytes = entry.line.len() + ENTRY_COST;
        if self.buffered.load(Ordering::Relaxed) + bytes > EXEC_STREAM_BYTES {
            return false;
        }
        self.buffered.fetch_add(bytes, Ordering::Relaxed);
        if self.lines.try_send(entry).is_err() {
            self.buffered.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Whether the client stopped reading.
    fn is_closed(&self) -> bool {
        self.lines.is_closed()
    }

    /// Sets the final record; dropping `self` then ends the client's line feed.
    fn finish(self, event: ExecEvent) {
        let _ = self.end.send(event);
    }
}

async fn route<C: From<GuestNote> + Send + 'static>(
    log: Arc<InstanceLog>,
    processes: Arc<ProcessTable>,
    actor: mpsc::Sender<C>,
    generation: u64,
    mut notes: mpsc::Receiver<Notification>,
    mut registrations: mpsc::Receiver<(ExecId, ExecStream)>,
    mut drops: Drops,
) {
    let mut lines = LineAssembler::default();
    let mut execs: HashMap<ExecId, ExecStream> = HashMap::new();
    // Only the first primary exit counts: any later one is the guest's invention.
    let mut primary_exited = false;
    // The owner drops its handle when it lets the guest go, often before the channel closes;
    // a closed registration queue answers at once, so it is polled no more (or, first in a
    // biased select, it would starve the notifications and no exec stream would ever end).
    let mut registering = true;
    loop {
        tokio::select! {
            // Registrations first: one is always sent before its exec starts.
            biased;
            reg = registrations.recv(), if registering => match reg {
                Some((id, stream)) => {
                    execs.insert(id, stream);
                }
                None => registering = false,
            },
            note = notes.recv() => {
                let Some(note) = note else { break };
                match note {
                    Notification::Output(o) => {
                        drops.report(&log, false);
                        for (text, eol) in lines.push(o.exec_id.clone(), o.stream, &o.data, o.eol) {
                            emit(&log, &mut execs, o.exec_id.as_ref(), o.stream, text, !eol);
                        }
                    }
                    Notification::Activity(activity) => {
                        let _ = actor.try_send(GuestNote::Activity { generation, activity }.into());
                    }
                    Notification::Exit(e) => {
                        drops.report(&log, true);
                        for (stream, text) in lines.finish(&e.exec_id) {
                            emit(&log, &mut execs, e.exec_id.as_ref(), stream, text, true);
                        }
                        match e.exec_id {
                            Some(id) => {
                                processes.exited(&id, e.status, e.timed_out);
                                if let Some(stream) = execs.remove(&id) {
                                    stream.finish(ExecEvent::Done {
                                        done: true,
                                        exit_code: e.status.code,
                                        signal: e.status.signal,
                                        exec_id: id.0,
                                        timed_out: e.timed_out,
                                    });
                                }
                            }
                            None if primary_exited => {}
                            None => {
                                primary_exited = true;
                                log.system(format!("process exited (code={})", e.status.code));
                                let _ = actor
                                    .send(GuestNote::PrimaryExited { generation, status: e.status }.into())
                                    .await;
                            }
                        }
                    }
                }
            }
        }
    }
    for (_, stream) in execs {
        stream.finish(ExecEvent::Error {
            error: "the VM stopped before the process ended".to_owned(),
        });
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
    if let Some(id) = exec_id.filter(|id| execs.get(*id).is_some_and(ExecStream::is_closed)) {
        // Its client left (or it runs in the background): the log alone keeps its output.
        execs.remove(id);
    }
    if let Some(exec) = exec_id.and_then(|id| execs.get_mut(id)) {
        if !exec.offer(entry.clone()) {
            exec.dropped += 1;
            if exec.dropped == 1 {
                tracing::warn!(instance = log.instance_id(), exec = %exec_id.map(|e| e.0.as_str()).unwrap_or(""), "exec client reads too slowly; dropping lines from its stream (kept in the log)");
            }
        }
    }
    log.append(entry);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;
    use tokio::net::UnixStream;

    use super::*;
    use crate::control::ControlChannel;

    #[derive(Debug)]
    struct Owner;

    impl From<GuestNote> for Owner {
        fn from(_: GuestNote) -> Owner {
            Owner
        }
    }

    #[tokio::test]
    async fn an_exec_stream_ends_after_its_owner_let_the_router_go() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(InstanceLog::open("i", &dir.path().join("logs.ndjson")).unwrap());
        let (actor, _mailbox) = mpsc::channel::<Owner>(8);
        let (sink, router) = OutputRouter::spawn(log, Arc::new(ProcessTable::default()), actor, 1);
        let (host, mut guest) = UnixStream::pair().unwrap();
        let _channel = ControlChannel::from_stream(host, sink);
        let exec = ExecId("e1".to_owned());
        let mut feed = router.subscribe(exec.clone()).await.unwrap();
        // The owner lets the guest go while the exec runs; the guest still reports its end.
        drop(router);
        tokio::task::yield_now().await;
        guest
            .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"exit\",\"params\":{\"exec_id\":\"e1\",\"code\":3}}\n")
            .await
            .unwrap();
        let end = tokio::time::timeout(Duration::from_secs(5), feed.next())
            .await
            .expect("the exec stream never ended");
        assert!(
            matches!(end, Some(ExecEvent::Done { exit_code: 3, .. })),
            "{end:?}"
        );
    }
}
