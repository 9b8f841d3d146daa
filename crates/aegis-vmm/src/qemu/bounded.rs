//! Keeps a VM's append-only files (the guest's serial console, QEMU's own log) from growing
//! without bound: guest root can write to `/dev/ttyS0` for ever, and QEMU logs what guests make
//! it say. Every [`CHECK_INTERVAL`] a file past [`MAX_FILE_BYTES`] has its last [`KEEP_BYTES`]
//! copied to `<name>.1` and is truncated; its writers opened it with `O_APPEND`, so they go on
//! writing at the new end. A file takes at most about `MAX_FILE_BYTES + KEEP_BYTES` plus what
//! is written in one interval.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;

use crate::VmExit;

/// Size past which a file is cut.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// What of its end is kept in `<name>.1` when it is cut.
pub const KEEP_BYTES: u64 = 256 * 1024;
/// How often the files are looked at.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Watches `files` until the VM exits.
pub fn watch(files: Vec<PathBuf>, mut exited: watch::Receiver<Option<VmExit>>) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(CHECK_INTERVAL) => {}
                changed = exited.changed() => if changed.is_err() { return },
            }
            if exited.borrow().is_some() {
                return;
            }
            for file in &files {
                if let Err(e) = cut_if_large(file, MAX_FILE_BYTES, KEEP_BYTES) {
                    tracing::debug!(path = %file.display(), error = %e, "cannot bound a VM log file");
                }
            }
        }
    });
}

/// Cuts `path` when it is larger than `max`, keeping its last `keep` bytes in `<path>.1`.
/// Returns whether it was cut.
///
/// # Errors
/// The I/O error of reading, copying or truncating.
pub fn cut_if_large(path: &Path, max: u64, keep: u64) -> io::Result<bool> {
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len <= max {
        return Ok(false);
    }
    file.seek(SeekFrom::Start(len - keep.min(len)))?;
    let mut tail = Vec::new();
    (&mut file).take(keep).read_to_end(&mut tail)?;
    let mut kept = File::create(rotated(path))?;
    writeln!(
        kept,
        "[aegis: {} bytes before this were discarded]",
        len - tail.len() as u64
    )?;
    kept.write_all(&tail)?;
    file.set_len(0)?;
    Ok(true)
}

/// The last `max` bytes of `path` as text (lossy): what error messages quote.
pub fn tail_text(path: &Path, max: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut bytes = Vec::new();
    let _ = file.take(max).read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_past_the_limit_keeps_its_end_and_its_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        writer.write_all(&vec![b'a'; 1000]).unwrap();
        writer.write_all(b"the end\n").unwrap();
        assert!(!cut_if_large(&path, 2000, 100).unwrap());
        assert!(cut_if_large(&path, 500, 100).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        let kept = std::fs::read_to_string(dir.path().join("console.log.1")).unwrap();
        assert!(
            kept.starts_with("[aegis: 908 bytes before this were discarded]\n"),
            "{kept}"
        );
        assert!(kept.ends_with("the end\n"));
        writer.write_all(b"more\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "more\n");
        assert_eq!(tail_text(&dir.path().join("console.log.1"), 8), "the end\n");
        assert!(!cut_if_large(&dir.path().join("missing"), 1, 1).unwrap());
    }
}
