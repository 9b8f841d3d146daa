//! [`Tmpfs`]: a small tmpfs mounted on a fresh directory, so that a test can put a daemon's home
//! (or its image store) on a disk it fills itself, and [`Filler`], the file that fills it. The
//! mount is undone on drop, and by the next test run when the test process died.
//!
//! Mounting needs root; a test that is not root fails with a message saying so (tests never
//! skip).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::daemon::{write_pid, HOME_PREFIX, OWNER_FILE};

/// Bytes written per call while filling: large enough to fill a few MiB quickly.
const FILL_CHUNK: usize = 64 << 10;
/// The page size of tmpfs, its unit of allocation.
const PAGE: u64 = 4096;

/// A tmpfs of a fixed size on a fresh directory under `/tmp`, unmounted (and the directory
/// removed) on drop. Declare it before the [`crate::Daemon`] whose home it holds, so that the
/// daemon is stopped first.
#[derive(Debug)]
pub struct Tmpfs {
    dir: Option<tempfile::TempDir>,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_bytes` (rounded up to whole pages by the kernel) on a new
    /// directory.
    ///
    /// # Panics
    /// When the test does not run as root, or the mount fails.
    pub fn mount(size_bytes: u64) -> Tmpfs {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test mounts a tmpfs to fill a disk and must run as root (run it with sudo, or \
             as root as setup.sh's machines do)"
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("{HOME_PREFIX}tmpfs-"))
            .tempdir_in("/tmp")
            .unwrap_or_else(|e| panic!("cannot create a mountpoint in /tmp: {e}"));
        let options = format!("size={size_bytes},mode=0700");
        mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options.as_str()),
        )
        .unwrap_or_else(|e| panic!("cannot mount a tmpfs ({options}) on {:?}: {e}", dir.path()));
        let tmpfs = Tmpfs { dir: Some(dir) };
        // Inside the mount: the next run finds it through this file when we die.
        write_pid(&tmpfs.path().join(OWNER_FILE), std::process::id());
        tmpfs
    }

    /// The mountpoint.
    pub fn path(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("the directory lives until drop")
            .path()
    }

    /// Bytes still free for an unprivileged writer.
    pub fn free_bytes(&self) -> u64 {
        let stat = nix::sys::statvfs::statvfs(self.path())
            .unwrap_or_else(|e| panic!("cannot statvfs {}: {e}", self.path().display()));
        stat.blocks_available() * stat.fragment_size()
    }

    /// Bytes in use.
    pub fn used_bytes(&self) -> u64 {
        let stat = nix::sys::statvfs::statvfs(self.path())
            .unwrap_or_else(|e| panic!("cannot statvfs {}: {e}", self.path().display()));
        (stat.blocks() - stat.blocks_free()) * stat.fragment_size()
    }

    /// Gives the file system a new size, its files kept (a disk that was full has room again).
    ///
    /// # Panics
    /// When the remount fails.
    pub fn resize(&self, size_bytes: u64) {
        let options = format!("size={size_bytes}");
        mount(
            None::<&str>,
            self.path(),
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options.as_str()),
        )
        .unwrap_or_else(|e| panic!("cannot resize the tmpfs on {:?}: {e}", self.path()));
    }

    /// Writes a file until the file system is full (ENOSPC), so that no page is left.
    ///
    /// # Panics
    /// When writing fails otherwise, or space is left afterwards.
    pub fn fill(&self) -> Filler {
        self.fill_leaving(0)
    }

    /// Fills the file system, then gives back `bytes` (rounded up to whole pages): exactly that
    /// much stays free.
    ///
    /// # Panics
    /// As [`Tmpfs::fill`].
    pub fn fill_leaving(&self, bytes: u64) -> Filler {
        let path = self.path().join("filler");
        let mut file =
            File::create(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        let chunk = vec![0xa5u8; FILL_CHUNK];
        let full = loop {
            if let Err(e) = file.write_all(&chunk) {
                break e;
            }
        };
        assert_eq!(
            full.raw_os_error(),
            Some(nix::libc::ENOSPC),
            "filling {} failed otherwise: {full}",
            path.display()
        );
        drop(file);
        assert_eq!(
            self.free_bytes(),
            0,
            "{} is full, yet space is left",
            path.display()
        );
        if bytes > 0 {
            let pages = bytes.div_ceil(PAGE);
            let len = std::fs::metadata(&path)
                .unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()))
                .len();
            // Whole pages off the end: tmpfs frees them at once.
            let kept = (len / PAGE).saturating_sub(pages) * PAGE;
            File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(kept))
                .unwrap_or_else(|e| panic!("cannot shorten {}: {e}", path.display()));
        }
        Filler { path }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else {
            return;
        };
        if let Err(e) = unmount(dir.path()) {
            eprintln!("testkit: cannot unmount {}: {e}", dir.path().display());
            // Keep the directory: removing it would empty a file system still mounted there.
            let _ = dir.keep();
            return;
        }
        if let Err(e) = dir.close() {
            eprintln!("testkit: cannot remove a mountpoint: {e}");
        }
    }
}

/// The file that fills a [`Tmpfs`]; [`Filler::remove`] gives the space back.
#[derive(Debug)]
pub struct Filler {
    path: PathBuf,
}

impl Filler {
    /// Deletes the file, freeing the space it took.
    ///
    /// # Panics
    /// When the file cannot be removed.
    pub fn remove(self) {
        std::fs::remove_file(&self.path)
            .unwrap_or_else(|e| panic!("cannot remove {}: {e}", self.path.display()));
    }
}

/// Detaches the file system mounted on `dir`: at once, even when a process still has a file
/// open there (a daemon being killed).
fn unmount(dir: &Path) -> io::Result<()> {
    umount2(dir, MntFlags::MNT_DETACH).map_err(io::Error::from)
}

/// Unmounts `dir` when a file system is mounted on it (a tmpfs of a test that died), so that
/// removing the directory does not only empty the mount.
pub(crate) fn unmount_leftover(dir: &Path) {
    let device = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    let parent = dir.parent().unwrap_or(Path::new("/"));
    if device(dir).is_some() && device(dir) != device(parent) {
        if let Err(e) = unmount(dir) {
            eprintln!("testkit: cannot unmount {}: {e}", dir.display());
        }
    }
}
