//! The control channel to one guest: a writer task, a reader task (the demuxer) and a table of
//! pending calls. Cloning a [`ControlChannel`] is cheap; all clones share the connection.
//!
//! Notifications go to a bounded [`NotificationSink`] with `try_send`: if its consumer falls
//! behind, output is dropped and counted rather than letting the guest stall the reader, which
//! also carries the responses every caller waits for. Exits have slots of their own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aegis_proto::control::{
    codes, Frame, HealthParams, HealthResult, Method, Notification, RequestFrame, RequestId,
    ResponseFrame, RpcError, JSONRPC, MAX_GUEST_FRAME_BYTES, OUTPUT_CHUNK_BYTES,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};

use super::framing::{FrameReader, ReadFrame};

/// Default deadline of one control call. Calls are cheap (spawn a process, send a signal);
/// under TCG a loaded guest can still take seconds to schedule the harness.
pub const CONTROL_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How often `wait_ready` asks the harness for its health while the guest boots.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Outgoing frames queued for the writer task.
const WRITE_QUEUE: usize = 64;

/// Slots of the notification queue only exits may take (see [`queue`]). The queue's capacity
/// must exceed it; [`crate::lifecycle`]'s router gives it 1,024.
pub const EXIT_RESERVE: usize = 256;

/// Where notifications from the guest are delivered, with the count of those dropped on the way
/// (shared with the consumer, which reports it in the instance's log).
#[derive(Debug, Clone)]
pub struct NotificationSink {
    tx: mpsc::Sender<Notification>,
    dropped: Arc<AtomicU64>,
}

impl NotificationSink {
    /// A sink feeding `tx`.
    pub fn new(tx: mpsc::Sender<Notification>) -> NotificationSink {
        NotificationSink {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The number of notifications dropped so far, kept up to date.
    pub fn dropped(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.dropped)
    }
}

/// Failures of control calls.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The control socket could not be reached.
    #[error("cannot connect to the guest control socket {}", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The channel closed (the VM stopped or the socket broke).
    #[error("the guest control channel is closed")]
    Closed,
    /// No answer in time.
    #[error("the guest harness did not answer `{method}` within {}s", after.as_secs())]
    Timeout {
        /// The method called.
        method: Method,
        /// The deadline.
        after: Duration,
    },
    /// The harness answered with an error.
    #[error("the guest harness refused `{method}`: {error}")]
    Rpc {
        /// The method called.
        method: Method,
        /// Its error.
        error: RpcError,
    },
    /// The harness answered with something we cannot decode.
    #[error("cannot decode the guest harness's answer to `{method}`: {reason}")]
    Decode {
        /// The method called.
        method: Method,
        /// What is wrong.
        reason: String,
    },
}

type Pending = oneshot::Sender<Result<Value, RpcError>>;

#[derive(Debug)]
struct Shared {
    writer: mpsc::Sender<Vec<u8>>,
    pending: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
    oversized_output: AtomicU64,
    closed: watch::Receiver<bool>,
}

/// A connected control channel.
#[derive(Debug, Clone)]
pub struct ControlChannel {
    shared: Arc<Shared>,
}

impl ControlChannel {
    /// Connects to the guest's control socket and starts the demuxer.
    ///
    /// # Errors
    /// When the socket cannot be connected.
    pub async fn connect(
        path: &Path,
        sink: NotificationSink,
    ) -> Result<ControlChannel, ControlError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ControlError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self::from_stream(stream, sink))
    }

    /// Wraps an already connected stream (used by tests with a socket pair).
    pub fn from_stream(stream: UnixStream, sink: NotificationSink) -> ControlChannel {
        let (read, write) = stream.into_split();
        let (writer, write_rx) = mpsc::channel(WRITE_QUEUE);
        let (closed_tx, closed) = watch::channel(false);
        let shared = Arc::new(Shared {
            writer,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            oversized_output: AtomicU64::new(0),
            closed,
        });
        tokio::spawn(write_loop(write, write_rx));
        tokio::spawn(read_loop(
            FrameReader::new(BufReader::new(read), MAX_GUEST_FRAME_BYTES),
            Arc::clone(&shared),
            sink,
            closed_tx,
        ));
        ControlChannel { shared }
    }

    /// Calls `method` with `params` and decodes the result.
    ///
    /// # Errors
    /// [`ControlError`] for a closed channel, a timeout, an RPC error or an undecodable answer.
    pub async fn call<R: DeserializeOwned>(
        &self,
        method: Method,
        params: &impl Serialize,
        timeout: Duration,
    ) -> Result<R, ControlError> {
        let value = self.call_value(method, params, timeout).await?;
        serde_json::from_value(value).map_err(|e| ControlError::Decode {
            method,
            reason: e.to_string(),
        })
    }

    async fn call_value(
        &self,
        method: Method,
        params: &impl Serialize,
        timeout: Duration,
    ) -> Result<Value, ControlError> {
        if self.is_closed() {
            return Err(ControlError::Closed);
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let params = serde_json::to_value(params).map_err(|e| ControlError::Decode {
            method,
            reason: e.to_string(),
        })?;
        let frame = RequestFrame {
            jsonrpc: JSONRPC.to_owned(),
            id: RequestId::Number(id),
            method: method.as_str().to_owned(),
            params,
        };
        let mut line = serde_json::to_vec(&frame).map_err(|e| ControlError::Decode {
            method,
            reason: e.to_string(),
        })?;
        line.push(b'\n');
        let (tx, rx) = oneshot::channel();
        self.pending().insert(id, tx);
        let _forget = ForgetOnDrop {
            shared: &self.shared,
            id,
        };
        tracing::trace!(rpc_method = %method, rpc_id = id, "control call");
        // The send is inside the deadline: a guest that stops reading its port fills the write
        // queue, and a send outside it would block this call, and every later one, forever.
        let exchange = async {
            self.shared
                .writer
                .send(line)
                .await
                .map_err(|_| ControlError::Closed)?;
            rx.await.map_err(|_| ControlError::Closed)
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(error))) => Err(ControlError::Rpc { method, error }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ControlError::Timeout {
                method,
                after: timeout,
            }),
        }
    }

    /// Asks for the harness's health until it answers, the channel closes or `timeout` passes.
    ///
    /// # Errors
    /// [`ControlError::Closed`] or [`ControlError::Timeout`].
    pub async fn wait_ready(&self, timeout: Duration) -> Result<HealthResult, ControlError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(ControlError::Timeout {
                    method: Method::Health,
                    after: timeout,
                });
            }
            match self
                .call(
                    Method::Health,
                    &HealthParams {},
                    READY_POLL_INTERVAL.min(left),
                )
                .await
            {
                Ok(health) => return Ok(health),
                Err(ControlError::Timeout { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        *self.shared.closed.borrow()
    }

    /// A receiver that turns `true` when the connection closes.
    pub fn closed(&self) -> watch::Receiver<bool> {
        self.shared.closed.clone()
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        lock(&self.shared.pending)
    }
}

fn lock(m: &Mutex<HashMap<u64, Pending>>) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
    // A poisoned table only means a caller panicked while inserting; the map itself is intact.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Removes a call's pending entry however the call ends (answer, timeout, cancellation).
struct ForgetOnDrop<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        lock(&self.shared.pending).remove(&self.id);
    }
}

async fn write_loop(mut write: tokio::net::unix::OwnedWriteHalf, mut rx: mpsc::Receiver<Vec<u8>>) {
    while let Some(line) = rx.recv().await {
        if let Err(e) = write.write_all(&line).await {
            tracing::debug!(error = %e, "control channel write failed");
            break;
        }
    }
}

async fn read_loop(
    mut frames: FrameReader<BufReader<tokio::net::unix::OwnedReadHalf>>,
    shared: Arc<Shared>,
    sink: NotificationSink,
    closed: watch::Sender<bool>,
) {
    loop {
        let line = match frames.next().await {
            Ok(ReadFrame::Line(line)) => line,
            Ok(ReadFrame::Oversized(bytes)) => {
                tracing::warn!(bytes, "guest sent an oversized control frame; discarded");
                continue;
            }
            Ok(ReadFrame::Eof) => break,
            Err(e) => {
                tracing::debug!(error = %e, "control channel read failed");
                break;
            }
        };
        match Frame::parse(&line) {
            Ok(Frame::Response(resp)) => deliver(&shared, resp),
            Ok(Frame::Notification { method, params }) => {
                let note = serde_json::json!({ "method": method, "params": params });
                match serde_json::from_value::<Notification>(note) {
                    Ok(n) => queue(&shared, &sink, n),
                    Err(e) => {
                        tracing::debug!(%method, error = %e, "ignoring unknown guest notification")
                    }
                }
            }
            Ok(Frame::Request(req)) => {
                // The guest has no methods to call on the host yet; answer so it is not left waiting.
                let resp = ResponseFrame::err(
                    Some(req.id),
                    codes::METHOD_NOT_FOUND,
                    format!("unknown method {:?}", req.method),
                );
                if let Ok(mut text) = serde_json::to_vec(&resp) {
                    text.push(b'\n');
                    let _ = shared.writer.try_send(text);
                }
            }
            Err(e) => tracing::debug!(error = %e, "ignoring malformed guest frame"),
        }
    }
    lock(&shared.pending).clear();
    let _ = closed.send(true);
}

/// Queues a notification for the consumer without ever waiting for it. Output and heartbeats
/// leave [`EXIT_RESERVE`] slots free, so a process's end is not lost to its own chatter when the
/// consumer falls behind; output chunks larger than the harness ever sends are refused, so the
/// queue holds at most `(capacity - EXIT_RESERVE) * OUTPUT_CHUNK_BYTES` of text.
fn queue(shared: &Shared, sink: &NotificationSink, note: Notification) {
    let room = sink.tx.capacity();
    let refused = match &note {
        Notification::Exit(_) => room == 0,
        Notification::Output(o) if o.data.len() > OUTPUT_CHUNK_BYTES => {
            if shared.oversized_output.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!(
                    bytes = o.data.len(),
                    limit = OUTPUT_CHUNK_BYTES,
                    "guest sent an output chunk larger than the harness sends; discarded"
                );
            }
            return;
        }
        _ => room <= EXIT_RESERVE,
    };
    if refused || sink.tx.try_send(note).is_err() {
        let dropped = sink.dropped.fetch_add(1, Ordering::Relaxed);
        if dropped == 0 {
            tracing::warn!(
                "guest notifications arrive faster than they are consumed; dropping output"
            );
        }
    }
}

fn deliver(shared: &Shared, resp: ResponseFrame) {
    let Some(RequestId::Number(id)) = resp.id else {
        return;
    };
    let Some(reply) = lock(&shared.pending).remove(&id) else {
        return;
    };
    let result = match (resp.result, resp.error) {
        (_, Some(error)) => Err(error),
        (Some(value), None) => Ok(value),
        (None, None) => Ok(Value::Null),
    };
    let _ = reply.send(result);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;

    #[tokio::test]
    async fn routes_responses_and_notifications_and_survives_garbage() {
        let (host, guest) = UnixStream::pair().unwrap();
        let (sink, mut notes) = mpsc::channel(EXIT_RESERVE + 8);
        let chan = ControlChannel::from_stream(host, NotificationSink::new(sink));
        let (gr, mut gw) = guest.into_split();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(gr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let req: RequestFrame = serde_json::from_str(&line).unwrap();
                let out = format!(
                    "garbage\n{}\n{{\"jsonrpc\":\"2.0\",\"method\":\"output\",\"params\":{{\"stream\":\"stdout\",\"data\":\"x\",\"eol\":true}}}}\n{}\n",
                    "x".repeat(MAX_GUEST_FRAME_BYTES + 10),
                    serde_json::to_string(&ResponseFrame::ok(req.id, serde_json::json!({"pid": 7}))).unwrap()
                );
                gw.write_all(out.as_bytes()).await.unwrap();
            }
        });
        let res: aegis_proto::control::SpawnResult = chan
            .call(
                Method::Run,
                &serde_json::json!({"argv": ["true"]}),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(res.pid, 7);
        assert!(matches!(notes.recv().await, Some(Notification::Output(o)) if o.data == "x"));
    }

    fn output_frame(data: &str) -> String {
        format!(
            "{{\"jsonrpc\":\"2.0\",\"method\":\"output\",\"params\":{{\"stream\":\"stdout\",\"data\":{},\"eol\":true}}}}\n",
            serde_json::to_string(data).unwrap()
        )
    }

    #[tokio::test]
    async fn exits_get_through_a_queue_full_of_output_and_oversized_chunks_are_refused() {
        let (host, mut guest) = UnixStream::pair().unwrap();
        let capacity = EXIT_RESERVE + 16;
        let (tx, mut notes) = mpsc::channel(capacity);
        let sink = NotificationSink::new(tx);
        let dropped = sink.dropped();
        let chan = ControlChannel::from_stream(host, sink);
        let mut flood = output_frame(&"x".repeat(OUTPUT_CHUNK_BYTES + 1));
        for i in 0..1000 {
            flood.push_str(&output_frame(&format!("line {i}")));
        }
        flood.push_str(r#"{"jsonrpc":"2.0","method":"exit","params":{"exec_id":"e1","code":3}}"#);
        flood.push('\n');
        guest.write_all(flood.as_bytes()).await.unwrap();
        // Nothing was read meanwhile: 16 output slots, then the exit in the reserve.
        let mut got = Vec::new();
        while got.len() < 17 {
            got.push(
                tokio::time::timeout(Duration::from_secs(5), notes.recv())
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        assert!(got[..16]
            .iter()
            .all(|n| matches!(n, Notification::Output(o) if o.data.starts_with("line "))));
        assert!(
            matches!(&got[16], Notification::Exit(e) if e.status.code == 3),
            "{:?}",
            got[16]
        );
        assert_eq!(dropped.load(Ordering::Relaxed), 1000 - 16);
        assert_eq!(chan.shared.oversized_output.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_guest_that_stops_reading_times_calls_out_instead_of_blocking_them() {
        // The guest end is never read: once the socket buffer and the write queue are full,
        // a send would wait for ever.
        let (host, _guest) = UnixStream::pair().unwrap();
        let (sink, _notes) = mpsc::channel(EXIT_RESERVE + 1);
        let chan = ControlChannel::from_stream(host, NotificationSink::new(sink));
        let big = serde_json::json!({ "argv": ["x".repeat(512 * 1024)] });
        let mut timeouts = 0;
        for _ in 0..(WRITE_QUEUE + 8) {
            match chan
                .call::<Value>(Method::Run, &big, Duration::from_millis(50))
                .await
            {
                Err(ControlError::Timeout { .. }) => timeouts += 1,
                other => panic!("expected a timeout, got {other:?}"),
            }
        }
        assert_eq!(timeouts, WRITE_QUEUE + 8);
    }
}
