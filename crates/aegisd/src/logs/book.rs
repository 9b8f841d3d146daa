//! One instance's log: ring buffer + NDJSON file + broadcast to followers.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aegis_proto::api::{LogEntry, LogSource, LogStream};
use tokio::sync::broadcast;

/// Entries kept in memory per instance; older ones are only in the file.
pub const RING_ENTRIES: usize = 10_000;
/// Bytes of line text kept in memory per instance; the oldest entries go first.
pub const RING_BYTES: usize = 16 * 1024 * 1024;
/// Entries a slow follower may lag behind before it misses some (it is told how many).
const FOLLOW_BUFFER: usize = 4096;

/// Which entries a query wants.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    /// Only entries at or after this timestamp (log timestamp format).
    pub since: Option<String>,
    /// Only the last N matching entries.
    pub tail: Option<usize>,
    /// Only entries of this exec.
    pub exec_id: Option<String>,
}

impl LogFilter {
    /// Whether `e` passes the since and exec filters.
    pub fn matches(&self, e: &LogEntry) -> bool {
        self.since
            .as_ref()
            .is_none_or(|s| e.ts.as_str() >= s.as_str())
            && self
                .exec_id
                .as_ref()
                .is_none_or(|x| e.exec_id.as_deref() == Some(x.as_str()))
    }
}

#[derive(Debug)]
struct Inner {
    ring: VecDeque<(u64, LogEntry)>,
    ring_bytes: usize,
    next_seq: u64,
    file: Option<File>,
    write_failed: bool,
}

/// The log of one instance.
#[derive(Debug)]
pub struct InstanceLog {
    instance_id: String,
    path: PathBuf,
    inner: Mutex<Inner>,
    live: broadcast::Sender<(u64, LogEntry)>,
}

/// A live follower: history first, then new entries, without gaps or duplicates.
#[derive(Debug)]
pub struct LogSubscription {
    /// Entries that existed when subscribing (filtered).
    pub history: Vec<LogEntry>,
    last_seq: u64,
    rx: broadcast::Receiver<(u64, LogEntry)>,
}

impl LogSubscription {
    /// The next new entry; `Err(n)` when `n` entries were skipped because the follower lagged;
    /// `None` if the log was closed.
    pub async fn next(&mut self) -> Option<Result<LogEntry, u64>> {
        loop {
            match self.rx.recv().await {
                Ok((seq, entry)) if seq > self.last_seq => {
                    self.last_seq = seq;
                    return Some(Ok(entry));
                }
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => return Some(Err(n)),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// An entry already sent, without waiting.
    pub fn try_next(&mut self) -> Option<LogEntry> {
        loop {
            match self.rx.try_recv() {
                Ok((seq, entry)) if seq > self.last_seq => {
                    self.last_seq = seq;
                    return Some(entry);
                }
                Ok(_) => continue,
                Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    }
}

impl InstanceLog {
    /// Opens the log file of an instance, loading its most recent entries into memory.
    ///
    /// # Errors
    /// When the file exists but cannot be read, or cannot be created.
    pub fn open(instance_id: &str, path: &Path) -> std::io::Result<InstanceLog> {
        let mut inner = Inner {
            ring: VecDeque::new(),
            ring_bytes: 0,
            next_seq: 1,
            file: None,
            write_failed: false,
        };
        match File::open(path) {
            Ok(f) => {
                for line in BufReader::new(f).lines() {
                    let line = line?;
                    // A torn last line after a crash is skipped, not fatal.
                    if let Ok(entry) = serde_json::from_str::<LogEntry>(&line) {
                        push_ring(&mut inner, entry);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        inner.file = Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        );
        let (live, _) = broadcast::channel(FOLLOW_BUFFER);
        Ok(InstanceLog {
            instance_id: instance_id.to_owned(),
            path: path.to_path_buf(),
            inner: Mutex::new(inner),
            live,
        })
    }

    /// The instance this log belongs to.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The NDJSON file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends an entry: file, ring, followers. A page-cache append is microseconds, so it is
    /// done inline rather than on the blocking pool.
    pub fn append(&self, entry: LogEntry) {
        let mut inner = self.lock();
        if let Some(file) = inner.file.as_mut() {
            let mut text = serde_json::to_vec(&entry).unwrap_or_default();
            text.push(b'\n');
            if let Err(e) = file.write_all(&text) {
                if !inner.write_failed {
                    tracing::error!(instance = %self.instance_id, path = %self.path.display(), error = %e, "cannot write instance log; keeping lines in memory only");
                    inner.write_failed = true;
                }
            }
        }
        let seq = push_ring(&mut inner, entry.clone());
        // Sent under the lock so followers see entries in sequence order.
        let _ = self.live.send((seq, entry));
    }

    /// Appends a `system` line.
    pub fn system(&self, line: impl Into<String>) {
        self.append(LogEntry {
            ts: super::now_ts(),
            stream: LogStream::Stdout,
            line: line.into(),
            source: LogSource::System,
            instance_id: self.instance_id.clone(),
            exec_id: None,
            daemon: None,
            partial: false,
        });
    }

    /// Entries matching `filter`.
    pub fn query(&self, filter: &LogFilter) -> Vec<LogEntry> {
        let inner = self.lock();
        select(&inner, filter).0
    }

    /// History matching `filter` plus a live feed of what follows.
    pub fn subscribe(&self, filter: &LogFilter) -> LogSubscription {
        let inner = self.lock();
        let rx = self.live.subscribe();
        let (history, _) = select(&inner, filter);
        LogSubscription {
            history,
            last_seq: inner.next_seq - 1,
            rx,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn select(inner: &Inner, filter: &LogFilter) -> (Vec<LogEntry>, ()) {
    let matching: Vec<&LogEntry> = inner
        .ring
        .iter()
        .map(|(_, e)| e)
        .filter(|e| filter.matches(e))
        .collect();
    let skip = filter.tail.map_or(0, |t| matching.len().saturating_sub(t));
    (matching.into_iter().skip(skip).cloned().collect(), ())
}

fn push_ring(inner: &mut Inner, entry: LogEntry) -> u64 {
    let seq = inner.next_seq;
    inner.next_seq += 1;
    inner.ring_bytes += entry.line.len();
    inner.ring.push_back((seq, entry));
    while inner.ring.len() > RING_ENTRIES || (inner.ring_bytes > RING_BYTES && inner.ring.len() > 1)
    {
        if let Some((_, old)) = inner.ring.pop_front() {
            inner.ring_bytes -= old.line.len();
        }
    }
    seq
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(line: &str, exec: Option<&str>) -> LogEntry {
        LogEntry {
            ts: super::super::now_ts(),
            stream: LogStream::Stdout,
            line: line.into(),
            source: if exec.is_some() {
                LogSource::Exec
            } else {
                LogSource::Server
            },
            instance_id: "inst-1".into(),
            exec_id: exec.map(Into::into),
            daemon: None,
            partial: false,
        }
    }

    #[tokio::test]
    async fn persists_filters_and_follows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs.ndjson");
        let log = InstanceLog::open("inst-1", &path).unwrap();
        log.append(entry("a", None));
        log.append(entry("b", Some("e1")));
        log.system("process exited (code=0)");
        let mut sub = log.subscribe(&LogFilter::default());
        assert_eq!(sub.history.len(), 3);
        log.append(entry("c", None));
        assert_eq!(sub.next().await.unwrap().unwrap().line, "c");
        let only_exec = log.query(&LogFilter {
            exec_id: Some("e1".into()),
            ..Default::default()
        });
        assert_eq!(only_exec.len(), 1);
        let tail = log.query(&LogFilter {
            tail: Some(2),
            ..Default::default()
        });
        assert_eq!(
            tail.iter().map(|e| e.line.as_str()).collect::<Vec<_>>(),
            ["process exited (code=0)", "c"]
        );
        drop(log);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{torn")
            .unwrap();
        let reopened = InstanceLog::open("inst-1", &path).unwrap();
        assert_eq!(reopened.query(&LogFilter::default()).len(), 4);
    }
}
