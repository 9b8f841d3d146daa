//! Files that must survive a crash whole: written beside their destination, flushed to disk,
//! renamed over it and the directory flushed, so a reader (or the next daemon after a power cut)
//! finds either the old contents or the new, never a torn or empty file.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Replaces `path` with `contents`, durably; the file gets `mode` (before umask).
///
/// # Errors
/// The I/O error of any step; `path` then still holds what it held before.
pub fn write(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let tmp = temporary(path);
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return written;
    }
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A temporary name beside `path`, hidden, unique to this write: two writers of one file (two
/// requests in this daemon) must not share it.
fn temporary(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(Default::default, |n| n.to_os_string());
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(
        ".{}.{:08x}.tmp",
        std::process::id(),
        rand::random::<u32>()
    ));
    path.with_file_name(tmp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_whole_with_the_mode_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm-spec.json");
        write(&path, b"old", 0o644).unwrap();
        write(&path, b"new contents", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new contents");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // A failed write keeps the old file.
        let missing = dir.path().join("no-such-dir/file");
        assert!(write(&missing, b"x", 0o644).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"new contents");
    }
}
