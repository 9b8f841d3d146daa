//! One instance's log: ring buffer + NDJSON file + broadcast to followers.
//!
//! Queries answer from the ring while it holds everything; once older entries have left it,
//! from the files (the rotated one and the current one, up to what was written when the query
//! began), so `aegis logs` shows an instance's whole history, as `docker logs` does.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aegis_proto::api::{LogEntry, LogSource, LogStream};
use tokio::sync::watch;

/// Entries kept in memory per instance; older ones are only in the files.
pub const RING_ENTRIES: usize = 10_000;
/// Bytes of line text kept in memory per instance; the oldest entries go first.
pub const RING_BYTES: usize = 16 * 1024 * 1024;
/// Size at which the NDJSON file is rotated: it moves to `<name>.1` (replacing the previous one)
/// and a new file starts, so an instance's logs take at most about twice this on disk and a
/// daemon start reads at most that much per instance.
pub const FILE_ROTATE_BYTES: u64 = 64 * 1024 * 1024;
/// How much of the files' end a daemon start reads to refill the ring: twice the ring's text,
/// so the ring fills, without reading up to two full files per instance.
pub const LOAD_BYTES: u64 = 2 * RING_BYTES as u64;

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
    file_bytes: u64,
    rotate_at: u64,
    write_failed: bool,
    /// Whether entries have left the ring (queries must then read the files).
    ring_dropped: bool,
}

/// The log files as they were at one moment: opened while the log was locked (a later rotation
/// renames them, which does not move what is open) with the length they had then.
#[derive(Debug)]
struct FileCut(Vec<(File, u64)>);

/// The entries a query answers with, fixed when it began: see [`InstanceLog::history`].
#[derive(Debug)]
pub struct History {
    source: Source,
    last_seq: u64,
}

/// Where a query's history comes from.
#[derive(Debug)]
enum Source {
    Ring(Vec<LogEntry>),
    Files(FileCut),
}

/// The log of one instance.
#[derive(Debug)]
pub struct InstanceLog {
    instance_id: String,
    path: PathBuf,
    inner: Mutex<Inner>,
    /// The sequence number of the newest entry, for followers to wake on.
    newest: watch::Sender<u64>,
}

/// A live follower: history first, then new entries, without gaps or duplicates. It reads new
/// entries from the ring, so a follower that stops reading holds no memory: once the ring has
/// moved past it, it is told how many entries it missed.
#[derive(Debug)]
pub struct LogSubscription {
    last_seq: u64,
    log: Arc<InstanceLog>,
    newest: watch::Receiver<u64>,
}

impl LogSubscription {
    /// The next new entry; `Err(n)` when `n` entries were skipped because the follower lagged.
    pub async fn next(&mut self) -> Option<Result<LogEntry, u64>> {
        loop {
            self.newest.borrow_and_update();
            if let Some(found) = self.take() {
                return Some(found);
            }
            self.newest.changed().await.ok()?;
        }
    }

    /// An entry already appended, without waiting; entries the follower missed are skipped.
    pub fn try_next(&mut self) -> Option<LogEntry> {
        loop {
            if let Ok(entry) = self.take()? {
                return Some(entry);
            }
        }
    }

    fn take(&mut self) -> Option<Result<LogEntry, u64>> {
        let inner = self.log.lock();
        let first = inner.ring.front()?.0;
        let wanted = self.last_seq + 1;
        if first > wanted {
            self.last_seq = first - 1;
            return Some(Err(first - wanted));
        }
        let (seq, entry) = inner.ring.get(usize::try_from(wanted - first).ok()?)?;
        self.last_seq = *seq;
        Some(Ok(entry.clone()))
    }
}

impl InstanceLog {
    /// Opens the log file of an instance, loading its most recent entries (from the rotated file
    /// too) into memory.
    ///
    /// # Errors
    /// When a file exists but cannot be read, or the file cannot be created.
    pub fn open(instance_id: &str, path: &Path) -> std::io::Result<InstanceLog> {
        Self::open_with(instance_id, path, FILE_ROTATE_BYTES, LOAD_BYTES)
    }

    fn open_with(
        instance_id: &str,
        path: &Path,
        rotate_at: u64,
        load_bytes: u64,
    ) -> std::io::Result<InstanceLog> {
        let mut inner = Inner {
            ring: VecDeque::new(),
            ring_bytes: 0,
            next_seq: 1,
            file: None,
            file_bytes: 0,
            rotate_at,
            write_failed: false,
            ring_dropped: false,
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        inner.file_bytes = file.metadata()?.len();
        // Oldest first: the rotated file's end, then the current file's.
        match File::open(rotated(path)) {
            Ok(old) => {
                let budget = load_bytes.saturating_sub(inner.file_bytes);
                load(&mut inner, &old, budget)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        load(&mut inner, &file, load_bytes)?;
        // A line torn by a crash must not swallow the next entry written after it.
        if inner.file_bytes > 0 {
            let mut last = [0u8; 1];
            file.seek(SeekFrom::End(-1))?;
            file.read_exact(&mut last)?;
            if last[0] != b'\n' {
                file.write_all(b"\n")?;
                inner.file_bytes += 1;
            }
        }
        inner.file = Some(file);
        let (newest, _) = watch::channel(0);
        Ok(InstanceLog {
            instance_id: instance_id.to_owned(),
            path: path.to_path_buf(),
            inner: Mutex::new(inner),
            newest,
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
        if inner.file.is_some() && inner.file_bytes >= inner.rotate_at {
            self.rotate(&mut inner);
        }
        if let Some(file) = inner.file.as_mut() {
            let mut text = serde_json::to_vec(&entry).unwrap_or_default();
            text.push(b'\n');
            match file.write_all(&text) {
                Ok(()) => inner.file_bytes += text.len() as u64,
                Err(e) => {
                    if !inner.write_failed {
                        tracing::error!(instance = %self.instance_id, path = %self.path.display(), error = %e, "cannot write instance log; keeping lines in memory only");
                        inner.write_failed = true;
                    }
                }
            }
        }
        let seq = push_ring(&mut inner, entry);
        self.newest.send_replace(seq);
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

    /// What matches `filter` now, to be read with [`InstanceLog::read`]. Cheap: it opens the
    /// files (when the ring no longer holds everything) but reads nothing.
    pub fn history(&self, filter: &LogFilter) -> History {
        let inner = self.lock();
        History {
            source: self.source(&inner, filter),
            last_seq: inner.next_seq - 1,
        }
    }

    /// The history matching `filter` and a live feed of what follows it.
    pub fn subscribe(self: &Arc<Self>, filter: &LogFilter) -> (History, LogSubscription) {
        let history = self.history(filter);
        let sub = LogSubscription {
            last_seq: history.last_seq,
            log: Arc::clone(self),
            newest: self.newest.subscribe(),
        };
        (history, sub)
    }

    /// Calls `each` with the entries of `history`, oldest first, until it returns `false`.
    /// Entries read from the files are handed on one by one, so a query holds at most its
    /// `tail` of them: call it off the async workers.
    pub fn read(
        &self,
        history: History,
        filter: &LogFilter,
        mut each: impl FnMut(LogEntry) -> bool,
    ) {
        let cut = match history.source {
            Source::Ring(entries) => {
                for entry in entries {
                    if !each(entry) {
                        return;
                    }
                }
                return;
            }
            Source::Files(cut) => cut,
        };
        let mut delivered = false;
        let read = read_cut(cut, filter, |entry| {
            delivered = true;
            each(entry)
        });
        if let Err(e) = read {
            tracing::warn!(instance = %self.instance_id, error = %e, "cannot read the log files; answering from memory");
            if !delivered {
                for entry in select(&self.lock(), filter, history.last_seq) {
                    if !each(entry) {
                        return;
                    }
                }
            }
        }
    }

    /// Entries matching `filter`, collected (tests and small queries).
    pub fn query(&self, filter: &LogFilter) -> Vec<LogEntry> {
        let mut out = Vec::new();
        self.read(self.history(filter), filter, |e| {
            out.push(e);
            true
        });
        out
    }

    /// The ring's answer, or the files to read when entries have left the ring (and the files
    /// hold everything).
    fn source(&self, inner: &Inner, filter: &LogFilter) -> Source {
        let covered = !inner.ring_dropped
            || inner.write_failed
            // `tail` entries found in the ring are the last ones;
            || filter.tail.is_some_and(|t| {
                inner.ring.iter().filter(|(_, e)| filter.matches(e)).count() >= t
            })
            // and so is all that follows `since` when the ring starts before it.
            || filter.since.as_ref().is_some_and(|since| {
                inner
                    .ring
                    .front()
                    .is_some_and(|(_, e)| e.ts.as_str() < since.as_str())
            });
        if covered {
            return Source::Ring(select(inner, filter, u64::MAX));
        }
        let mut parts = Vec::with_capacity(2);
        let rotated = rotated(&self.path);
        let opened = (|| {
            if let Ok(f) = File::open(&rotated) {
                let len = f.metadata()?.len();
                parts.push((f, len));
            }
            parts.push((File::open(&self.path)?, inner.file_bytes));
            Ok::<(), std::io::Error>(())
        })();
        match opened {
            Ok(()) => Source::Files(FileCut(parts)),
            Err(e) => {
                tracing::warn!(instance = %self.instance_id, error = %e, "cannot open the log files; answering from memory");
                Source::Ring(select(inner, filter, u64::MAX))
            }
        }
    }

    /// Moves the full file to `<name>.1` and starts a new one. On failure the current file
    /// keeps growing (logged once): losing lines would be worse than a large file.
    fn rotate(&self, inner: &mut Inner) {
        let fresh = std::fs::rename(&self.path, rotated(&self.path)).and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
        });
        match fresh {
            Ok(file) => {
                inner.file = Some(file);
                inner.file_bytes = 0;
            }
            Err(e) => {
                tracing::error!(instance = %self.instance_id, path = %self.path.display(), error = %e, "cannot rotate instance log; it keeps growing");
                inner.rotate_at = u64::MAX;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Where a full log file moves: `logs.ndjson` → `logs.ndjson.1`.
fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Calls `each` with every entry of an NDJSON log until it returns `false`. A torn or garbled
/// line (a crash mid-write) is skipped, not fatal.
fn for_each_entry(
    reader: impl BufRead,
    mut each: impl FnMut(LogEntry) -> bool,
) -> std::io::Result<()> {
    for line in reader.split(b'\n') {
        if let Ok(entry) = serde_json::from_slice::<LogEntry>(&line?) {
            if !each(entry) {
                break;
            }
        }
    }
    Ok(())
}

/// Hands on the entries of the files matching `filter` (the last `tail` of them when asked)
/// until `each` returns `false`.
fn read_cut(
    cut: FileCut,
    filter: &LogFilter,
    mut each: impl FnMut(LogEntry) -> bool,
) -> std::io::Result<()> {
    let Some(tail) = filter.tail else {
        for (file, len) in cut.0 {
            let mut wanted = true;
            for_each_entry(BufReader::new(file.take(len)), |entry| {
                if filter.matches(&entry) {
                    wanted = each(entry);
                }
                wanted
            })?;
            if !wanted {
                break;
            }
        }
        return Ok(());
    };
    let mut last = VecDeque::new();
    for (file, len) in cut.0 {
        for_each_entry(BufReader::new(file.take(len)), |entry| {
            if filter.matches(&entry) {
                last.push_back(entry);
                if last.len() > tail {
                    last.pop_front();
                }
            }
            true
        })?;
    }
    for entry in last {
        if !each(entry) {
            break;
        }
    }
    Ok(())
}

/// Loads the entries of the last `budget` bytes of a log file into the ring. What is left out
/// stays readable by queries (see [`InstanceLog::query`]).
fn load(inner: &mut Inner, file: &File, budget: u64) -> std::io::Result<()> {
    let len = file.metadata()?.len();
    let mut reader = BufReader::new(file);
    let start = len.saturating_sub(budget);
    reader.seek(SeekFrom::Start(start))?;
    if start > 0 {
        inner.ring_dropped = true;
        // The rest of a line cut by the seek.
        reader.read_until(b'\n', &mut Vec::new())?;
    }
    for_each_entry(reader, |entry| {
        push_ring(inner, entry);
        true
    })
}

/// Entries of the ring up to `last_seq` matching `filter`.
fn select(inner: &Inner, filter: &LogFilter, last_seq: u64) -> Vec<LogEntry> {
    let matching: Vec<&LogEntry> = inner
        .ring
        .iter()
        .filter(|(seq, e)| *seq <= last_seq && filter.matches(e))
        .map(|(_, e)| e)
        .collect();
    let skip = filter.tail.map_or(0, |t| matching.len().saturating_sub(t));
    matching.into_iter().skip(skip).cloned().collect()
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
            inner.ring_dropped = true;
        }
    }
    seq
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(log: &InstanceLog, history: History) -> Vec<LogEntry> {
        let mut out = Vec::new();
        log.read(history, &LogFilter::default(), |e| {
            out.push(e);
            true
        });
        out
    }

    #[test]
    fn a_full_disk_keeps_lines_in_memory_and_loses_none() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(InstanceLog::open("inst-1", &dir.path().join("logs.ndjson")).unwrap());
        log.append(entry("before", None));
        // Every write from now on fails with ENOSPC, as on a full disk.
        log.lock().file = Some(
            std::fs::OpenOptions::new()
                .append(true)
                .open("/dev/full")
                .unwrap(),
        );
        for i in 0..3 {
            log.append(entry(&format!("while full {i}"), None));
        }
        assert!(log.lock().write_failed);
        assert_eq!(
            lines(log.query(&LogFilter::default())),
            ["before", "while full 0", "while full 1", "while full 2"]
        );
    }

    #[tokio::test]
    async fn a_follower_that_stops_reading_holds_nothing_and_is_told_what_it_missed() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(InstanceLog::open("inst-1", &dir.path().join("logs.ndjson")).unwrap());
        let (_, mut sub) = log.subscribe(&LogFilter::default());
        let flood = RING_ENTRIES * 3;
        for i in 0..flood {
            log.append(entry(&format!("line {i}"), None));
        }
        // What it missed is gone from memory: only the ring holds entries.
        assert_eq!(log.lock().ring.len(), RING_ENTRIES);
        assert_eq!(sub.next().await, Some(Err((flood - RING_ENTRIES) as u64)));
        assert_eq!(
            sub.next().await.unwrap().unwrap().line,
            format!("line {}", flood - RING_ENTRIES)
        );
        // A query stops reading when its reader says so.
        let mut seen = 0;
        log.read(
            log.history(&LogFilter::default()),
            &LogFilter::default(),
            |_| {
                seen += 1;
                seen < 5
            },
        );
        assert_eq!(seen, 5);
    }

    /// The text of each entry.
    fn lines(entries: Vec<LogEntry>) -> Vec<String> {
        entries.into_iter().map(|e| e.line).collect()
    }

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
        let log = Arc::new(InstanceLog::open("inst-1", &path).unwrap());
        log.append(entry("a", None));
        log.append(entry("b", Some("e1")));
        log.system("process exited (code=0)");
        let (history, mut sub) = log.subscribe(&LogFilter::default());
        assert_eq!(read_all(&log, history).len(), 3);
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
        // The entry after the torn line survives the next reload.
        reopened.append(entry("d", None));
        drop(reopened);
        let again = InstanceLog::open("inst-1", &path).unwrap();
        let lines = lines(again.query(&LogFilter::default()));
        assert_eq!(lines.last().map(String::as_str), Some("d"));
        assert_eq!(lines.len(), 5);
    }

    #[test]
    fn history_past_the_ring_comes_from_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs.ndjson");
        let log = Arc::new(InstanceLog::open("inst-1", &path).unwrap());
        let total = RING_ENTRIES + 500;
        for i in 0..total {
            let exec = (i % 100 == 0).then_some("e1");
            log.append(entry(&format!("line {i}"), exec));
        }
        let all = lines(log.query(&LogFilter::default()));
        assert_eq!(all.len(), total);
        assert_eq!(all[0], "line 0");
        assert_eq!(all[total - 1], format!("line {}", total - 1));
        let execs = log.query(&LogFilter {
            exec_id: Some("e1".into()),
            ..Default::default()
        });
        assert_eq!(execs.len(), total.div_ceil(100));
        assert_eq!(execs[0].line, "line 0");
        let tail = lines(log.query(&LogFilter {
            tail: Some(RING_ENTRIES + 10),
            ..Default::default()
        }));
        assert_eq!(tail.len(), RING_ENTRIES + 10);
        assert_eq!(tail[0], "line 490");
        let short_tail = lines(log.query(&LogFilter {
            tail: Some(3),
            ..Default::default()
        }));
        assert_eq!(
            short_tail,
            [total - 3, total - 2, total - 1].map(|i| format!("line {i}"))
        );
        let (history, mut sub) = log.subscribe(&LogFilter::default());
        assert_eq!(read_all(&log, history).len(), total);
        log.append(entry("after", None));
        assert_eq!(sub.try_next().unwrap().line, "after");
        drop((sub, log));
        // A new daemon sees the whole history too, though it loads only the files' end.
        let reopened = InstanceLog::open("inst-1", &path).unwrap();
        assert_eq!(reopened.query(&LogFilter::default()).len(), total + 1);
        let partly = InstanceLog::open_with("inst-1", &path, FILE_ROTATE_BYTES, 5000).unwrap();
        let ring = partly.lock().ring.len();
        assert!(
            ring > 5 && ring < 100,
            "{ring} entries loaded from 5000 bytes"
        );
        assert_eq!(partly.query(&LogFilter::default()).len(), total + 1);
        let tail = partly.query(&LogFilter {
            tail: Some(2),
            ..Default::default()
        });
        assert_eq!(tail[1].line, "after");
    }

    #[test]
    fn rotates_a_full_file_and_reloads_both() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs.ndjson");
        let log = InstanceLog::open_with("inst-1", &path, 1000, LOAD_BYTES).unwrap();
        for i in 0..40 {
            log.append(entry(&format!("line {i}"), None));
        }
        let current = std::fs::metadata(&path).unwrap().len();
        let old = std::fs::metadata(rotated(&path)).unwrap().len();
        assert!(current <= 1000 + 200, "current file {current} bytes");
        assert!(old >= 1000, "rotated file {old} bytes");
        drop(log);
        // Entries from before the last rotation are gone from disk, the rest reload in order.
        let reopened = InstanceLog::open_with("inst-1", &path, 1000, LOAD_BYTES).unwrap();
        let lines = lines(reopened.query(&LogFilter::default()));
        assert_eq!(lines.last().map(String::as_str), Some("line 39"));
        assert!(lines.len() < 40 && lines.len() > 5, "{} lines", lines.len());
        let first: usize = lines[0].trim_start_matches("line ").parse().unwrap();
        assert_eq!(lines.len(), 40 - first);
    }
}
