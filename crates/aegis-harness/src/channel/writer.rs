//! The single writer of the control channel: every frame the guest sends passes through here, in
//! order, one at a time.
//!
//! Producers (the RPC server, output pumps) hand encoded frames to an [`OutboxSender`]. The
//! writer task keeps them in a bounded [`Outbox`] and writes them whenever the host reads. While
//! the host is away (or has stopped reading for [`STALL_TIMEOUT`]) the writer keeps accepting
//! frames so processes never block on their output: when the outbox is full the oldest
//! *droppable* frames (`output` and `activity` notifications) are dropped (counted, noted once on
//! the console), while responses and `exit` notifications are always kept. While the host is
//! reading, a full outbox instead makes producers wait, which throttles the processes through
//! their pipes — nothing is lost.
//!
//! Writes are non-blocking and retried after a short, growing delay when the transport is full
//! ([`WRITE_RETRY_MIN`] to [`WRITE_RETRY`]) rather than through the reactor: a virtio-serial
//! port's hang-up state comes and goes with the host, which tokio's readiness cannot follow.

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use aegis_proto::control::{Notification, NotificationFrame, ResponseFrame};
use tokio::sync::{mpsc, oneshot};

use super::framing;
use std::os::fd::AsFd;

use crate::async_fd;
use crate::console;

/// Bytes of frames held while the host is not reading. 8 MiB covers a daemon restart of several
/// seconds of chatty output and is small next to the guest's memory.
pub const OUTBOX_LIMIT_BYTES: usize = 8 * 1024 * 1024;

/// Frames in flight between producers and the writer task (on top of the outbox).
pub const OUTGOING_CAPACITY: usize = 256;

/// A host that is connected but has not taken a byte for this long is treated as absent, so a
/// hung daemon cannot stall the guest's processes forever.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(2);

/// First retry delay after the transport refused bytes (its buffers are full); doubles while it
/// stays full. A virtio queue drains in well under a millisecond once the host reads.
pub const WRITE_RETRY_MIN: Duration = Duration::from_millis(1);

/// Longest retry delay, and how often an absent host is checked for.
pub const WRITE_RETRY: Duration = Duration::from_millis(100);

/// Whether a frame may be dropped when the host does not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameClass {
    /// Process output and activity heartbeats: dropped oldest-first when the outbox is full.
    Droppable,
    /// Responses and `exit` notifications: never dropped.
    Essential,
}

/// A message to the writer task.
#[derive(Debug)]
pub enum Outgoing {
    /// A complete, newline-terminated frame.
    Frame {
        /// The encoded frame.
        bytes: Vec<u8>,
        /// Its drop class.
        class: FrameClass,
    },
    /// Answered once every frame queued before it has been written.
    Flush(oneshot::Sender<()>),
}

/// The producers' handle on the writer.
#[derive(Debug, Clone)]
pub struct OutboxSender {
    tx: mpsc::Sender<Outgoing>,
}

impl OutboxSender {
    /// Queues a response (never dropped).
    pub async fn respond(&self, response: &ResponseFrame) {
        self.send(response, FrameClass::Essential).await;
    }

    /// Queues a notification: `output` and `activity` may be dropped under pressure, `exit`
    /// never is.
    pub async fn notify(&self, notification: Notification) {
        let class = class_of(&notification);
        self.send(&NotificationFrame::new(notification), class)
            .await;
    }

    async fn send<T: serde::Serialize>(&self, frame: &T, class: FrameClass) {
        match framing::encode(frame) {
            // The writer task lives as long as the harness; if it is gone there is nobody to
            // send to and nothing better to do with the frame.
            Ok(bytes) => {
                let _ = self.tx.send(Outgoing::Frame { bytes, class }).await;
            }
            Err(e) => console::line(format_args!("cannot encode a frame: {e}")),
        }
    }

    /// Waits until everything queued so far is written, at most `timeout`. Returns whether it
    /// was.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let (done, written) = oneshot::channel();
        let flushed =
            async { self.tx.send(Outgoing::Flush(done)).await.is_ok() && written.await.is_ok() };
        tokio::time::timeout(timeout, flushed)
            .await
            .unwrap_or(false)
    }
}

/// The drop class of a notification. A heartbeat describes the past and the next one follows
/// within seconds, so losing one under pressure costs nothing that an `exit` would.
pub fn class_of(notification: &Notification) -> FrameClass {
    match notification {
        Notification::Output(_) | Notification::Activity(_) => FrameClass::Droppable,
        Notification::Exit(_) => FrameClass::Essential,
    }
}

/// Creates the producers' handle and the receiving end for [`run`].
pub fn channel() -> (OutboxSender, mpsc::Receiver<Outgoing>) {
    let (tx, rx) = mpsc::channel(OUTGOING_CAPACITY);
    (OutboxSender { tx }, rx)
}

#[derive(Debug)]
enum Entry {
    Frame { bytes: Vec<u8>, class: FrameClass },
    Marker(oneshot::Sender<()>),
}

/// What happened to a pushed frame, for the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued, nothing dropped.
    Queued,
    /// Queued or dropped, and output was lost to make room.
    Dropped {
        /// Droppable frames dropped by this push.
        frames: u64,
    },
}

/// The bounded queue of frames waiting for the host, with its drop policy. Pure data; the
/// writer task owns the only instance.
#[derive(Debug)]
pub struct Outbox {
    entries: VecDeque<Entry>,
    bytes: usize,
    limit: usize,
    /// Bytes of the front frame already written.
    written: usize,
    /// A newline to send before the front frame (see [`Outbox::restart_front`]).
    separator: bool,
    /// Droppable frames dropped since the outbox was last empty.
    dropped: u64,
}

impl Outbox {
    /// An outbox that holds up to `limit` bytes of droppable frames.
    pub fn new(limit: usize) -> Outbox {
        Outbox {
            entries: VecDeque::new(),
            bytes: 0,
            limit,
            written: 0,
            separator: false,
            dropped: 0,
        }
    }

    /// Whether the outbox has reached its limit.
    pub fn is_full(&self) -> bool {
        self.bytes >= self.limit
    }

    /// Whether nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes queued.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Droppable frames dropped since the outbox was last empty.
    #[cfg(test)]
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Queues a frame, dropping the oldest droppable frames if it does not fit. Essential frames
    /// always get in (they are small, and their number is bounded by the host's requests and
    /// by processes ending); a droppable frame that finds only essential frames ahead is dropped
    /// itself.
    pub fn push(&mut self, bytes: Vec<u8>, class: FrameClass) -> Pushed {
        let mut dropped = 0;
        // The front frame is never dropped once partly written: that would corrupt the stream.
        let first_droppable = usize::from(self.written > 0 || self.separator);
        let mut i = first_droppable;
        while self.bytes + bytes.len() > self.limit && i < self.entries.len() {
            match &self.entries[i] {
                Entry::Frame {
                    bytes: old,
                    class: FrameClass::Droppable,
                } => {
                    self.bytes -= old.len();
                    self.entries.remove(i);
                    dropped += 1;
                }
                Entry::Frame { .. } | Entry::Marker(_) => i += 1,
            }
        }
        if self.bytes + bytes.len() > self.limit && class == FrameClass::Droppable {
            dropped += 1;
        } else {
            self.bytes += bytes.len();
            self.entries.push_back(Entry::Frame { bytes, class });
        }
        self.dropped += dropped;
        if dropped == 0 {
            Pushed::Queued
        } else {
            Pushed::Dropped { frames: dropped }
        }
    }

    /// Queues a marker answered when everything before it is written.
    pub fn push_marker(&mut self, done: oneshot::Sender<()>) {
        self.entries.push_back(Entry::Marker(done));
    }

    /// The bytes to write next, answering markers that reached the front. `None` when empty.
    pub fn next_bytes(&mut self) -> Option<&[u8]> {
        while let Some(Entry::Marker(_)) = self.entries.front() {
            if let Some(Entry::Marker(done)) = self.entries.pop_front() {
                let _ = done.send(());
            }
        }
        if self.separator {
            return Some(b"\n");
        }
        match self.entries.front() {
            Some(Entry::Frame { bytes, .. }) => Some(&bytes[self.written..]),
            Some(Entry::Marker(_)) | None => None,
        }
    }

    /// Records that `n` bytes of [`Outbox::next_bytes`] were written.
    pub fn advance(&mut self, n: usize) {
        if self.separator {
            self.separator = false;
            return;
        }
        self.written += n;
        let done = matches!(self.entries.front(), Some(Entry::Frame { bytes, .. }) if self.written >= bytes.len());
        if done {
            if let Some(Entry::Frame { bytes, .. }) = self.entries.pop_front() {
                self.bytes -= bytes.len();
            }
            self.written = 0;
        }
        if self.entries.is_empty() {
            self.dropped = 0;
        }
    }

    /// The host went away in the middle of the front frame: send it again whole to the next
    /// host, after a newline that ends whatever fragment the old connection left behind.
    pub fn restart_front(&mut self) {
        if self.written > 0 {
            self.written = 0;
            self.separator = true;
        }
    }
}

/// Runs the writer until `outgoing` closes and everything is written (or the host is gone).
/// New connections (after a vsock reconnect) arrive on `connections`.
pub async fn run(mut outgoing: mpsc::Receiver<Outgoing>, mut connections: mpsc::Receiver<OwnedFd>) {
    let mut outbox = Outbox::new(OUTBOX_LIMIT_BYTES);
    let mut writer: Option<OwnedFd> = None;
    let mut retry = WRITE_RETRY_MIN;
    let mut last_progress = Instant::now();
    let mut host_was_absent = false;
    // Droppable frames dropped since the outbox was last empty; noted on the console at the start
    // and the end of such an episode only.
    let mut episode_drops: u64 = 0;
    let mut producers_done = false;
    let mut connections_open = true;

    loop {
        let host_absent = writer.as_ref().is_none_or(|w| async_fd::hung_up(w.as_fd()));
        if host_absent && !host_was_absent {
            outbox.restart_front();
        }
        host_was_absent = host_absent;

        // Write as much as the host takes right now.
        let mut blocked = false;
        if let Some(fd) = writer.as_ref().filter(|_| !host_absent) {
            while let Some(bytes) = outbox.next_bytes() {
                match nix::unistd::write(fd, bytes) {
                    Ok(n) => {
                        outbox.advance(n);
                        last_progress = Instant::now();
                        retry = WRITE_RETRY_MIN;
                    }
                    Err(nix::Error::EINTR) => {}
                    Err(nix::Error::EAGAIN) => {
                        blocked = true;
                        break;
                    }
                    Err(e) => {
                        console::line(format_args!(
                            "control channel write failed: {}; waiting for the host",
                            io::Error::from(e)
                        ));
                        outbox.restart_front();
                        writer = None;
                        break;
                    }
                }
            }
        } else {
            // Answer flush markers even without a host, so a flush never waits for nothing.
            let _ = outbox.next_bytes();
        }
        if outbox.is_empty() {
            last_progress = Instant::now();
            if episode_drops > 0 {
                console::line(format_args!(
                    "control channel caught up; {episode_drops} output/activity frames were dropped"
                ));
                episode_drops = 0;
            }
            if producers_done {
                return;
            }
        }

        let stalled = !outbox.is_empty() && last_progress.elapsed() >= STALL_TIMEOUT;
        let accepting = !producers_done && (!outbox.is_full() || host_absent || stalled);
        let pending = !outbox.is_empty();

        tokio::select! {
            biased;
            connection = connections.recv(), if connections_open => match connection {
                Some(fd) => match async_fd::set_nonblocking(fd.as_fd()) {
                    Ok(()) => {
                        outbox.restart_front();
                        writer = Some(fd);
                    }
                    Err(e) => console::line(format_args!("cannot use the control channel for writing: {e}")),
                },
                // The reader is gone: no new connections will come; keep the current one.
                None => connections_open = false,
            },
            message = outgoing.recv(), if accepting => match message {
                Some(Outgoing::Frame { bytes, class }) => {
                    if let Pushed::Dropped { frames } = outbox.push(bytes, class) {
                        if episode_drops == 0 {
                            console::line(format_args!(
                                "host is not reading the control channel; dropping the oldest output and activity frames ({} MiB queued)",
                                OUTBOX_LIMIT_BYTES / (1024 * 1024)
                            ));
                        }
                        episode_drops += frames;
                    }
                }
                Some(Outgoing::Flush(done)) => outbox.push_marker(done),
                None => producers_done = true,
            },
            () = tokio::time::sleep(retry), if pending && blocked => {
                retry = (retry * 2).min(WRITE_RETRY);
            }
            () = tokio::time::sleep(WRITE_RETRY), if pending && !blocked => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(outbox: &mut Outbox) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(bytes) = outbox.next_bytes() {
            let bytes = bytes.to_vec();
            out.extend_from_slice(&bytes);
            outbox.advance(bytes.len());
        }
        out
    }

    #[test]
    fn heartbeats_and_output_are_droppable_exits_are_not() {
        use aegis_proto::control::{ActivityParams, ExitParams, ExitStatus, OutputParams, Stream};
        let output = Notification::Output(OutputParams {
            exec_id: None,
            stream: Stream::Stdout,
            data: "x".into(),
            eol: true,
        });
        let activity = Notification::Activity(ActivityParams::default());
        let exit = Notification::Exit(ExitParams {
            exec_id: None,
            status: ExitStatus::exited(0),
            timed_out: false,
        });
        assert_eq!(class_of(&output), FrameClass::Droppable);
        assert_eq!(class_of(&activity), FrameClass::Droppable);
        assert_eq!(class_of(&exit), FrameClass::Essential);
    }

    #[test]
    fn frames_come_out_in_order() {
        let mut outbox = Outbox::new(100);
        outbox.push(b"a\n".to_vec(), FrameClass::Droppable);
        outbox.push(b"b\n".to_vec(), FrameClass::Essential);
        assert_eq!(drain(&mut outbox), b"a\nb\n");
        assert!(outbox.is_empty());
        assert_eq!(outbox.bytes(), 0);
    }

    #[test]
    fn full_outbox_drops_oldest_output_but_keeps_essential_frames() {
        let mut outbox = Outbox::new(10);
        outbox.push(b"o1\n".to_vec(), FrameClass::Droppable);
        outbox.push(b"E1\n".to_vec(), FrameClass::Essential);
        outbox.push(b"o2\n".to_vec(), FrameClass::Droppable);
        assert_eq!(
            outbox.push(b"o3\n".to_vec(), FrameClass::Droppable),
            Pushed::Dropped { frames: 1 }
        );
        assert_eq!(
            outbox.push(b"E2\n".to_vec(), FrameClass::Essential),
            Pushed::Dropped { frames: 1 }
        );
        assert_eq!(outbox.dropped(), 2);
        assert_eq!(drain(&mut outbox), b"E1\no3\nE2\n");
        assert_eq!(outbox.dropped(), 0);
    }

    #[test]
    fn essential_frames_exceed_the_limit_rather_than_vanish() {
        let mut outbox = Outbox::new(4);
        outbox.push(b"E1\n".to_vec(), FrameClass::Essential);
        outbox.push(b"E2\n".to_vec(), FrameClass::Essential);
        assert_eq!(
            outbox.push(b"o1\n".to_vec(), FrameClass::Droppable),
            Pushed::Dropped { frames: 1 }
        );
        assert_eq!(drain(&mut outbox), b"E1\nE2\n");
    }

    #[test]
    fn partly_written_front_frame_is_never_dropped() {
        let mut outbox = Outbox::new(8);
        outbox.push(b"abcd\n".to_vec(), FrameClass::Droppable);
        let first = outbox.next_bytes().unwrap().to_vec();
        assert_eq!(first, b"abcd\n");
        outbox.advance(2);
        outbox.push(b"wxyz\n".to_vec(), FrameClass::Droppable);
        // The new frame could only fit by dropping the front, which is partly written: the new
        // one goes instead.
        assert_eq!(drain(&mut outbox), b"cd\n");
    }

    #[test]
    fn restarted_front_frame_is_resent_whole_after_a_newline() {
        let mut outbox = Outbox::new(100);
        outbox.push(b"{\"x\":1}\n".to_vec(), FrameClass::Essential);
        outbox.advance(3);
        outbox.restart_front();
        assert_eq!(drain(&mut outbox), b"\n{\"x\":1}\n");
        // Restarting an untouched frame changes nothing.
        outbox.push(b"y\n".to_vec(), FrameClass::Droppable);
        outbox.restart_front();
        assert_eq!(drain(&mut outbox), b"y\n");
    }

    #[test]
    fn markers_are_answered_in_order() {
        let mut outbox = Outbox::new(100);
        let (done, mut written) = oneshot::channel();
        outbox.push(b"a\n".to_vec(), FrameClass::Droppable);
        outbox.push_marker(done);
        let _ = outbox.next_bytes();
        assert!(written.try_recv().is_err());
        assert_eq!(drain(&mut outbox), b"a\n");
        assert!(outbox.next_bytes().is_none());
        assert!(written.try_recv().is_ok());
    }
}
