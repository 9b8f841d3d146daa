//! Replaces the initramfs root with the instance's root filesystem while staying PID 1.
//!
//! The classic sequence: wait for the block device, mount it at [`NEW_ROOT`], move `/proc`,
//! `/sys` and `/dev` into it, free the initramfs files, then `chdir`, `mount(".", "/", MS_MOVE)`
//! and `chroot(".")`. The new root can be any OCI image, so the mount points it lacks are created
//! here. The pseudo-filesystems mounted afterwards are `mounts`' business.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{mount, MsFlags};
use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};
use nix::unistd::{chdir, chroot};

use crate::wait;

/// Where the root device is mounted before the switch.
pub const NEW_ROOT: &str = "/newroot";

/// How long to wait for the root device node after the block driver loaded. virtio-blk probes
/// in milliseconds under KVM and well under a second under TCG; ten seconds means "it is not
/// coming".
pub const ROOT_DEVICE_TIMEOUT: Duration = Duration::from_secs(10);

/// Poll interval while waiting for the device node.
pub const ROOT_DEVICE_POLL: Duration = Duration::from_millis(10);

/// Mounts carried from the initramfs into the new root.
const CARRIED_MOUNTS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Directories the harness and its processes rely on, with their modes; created when the image
/// lacks them.
const ROOT_DIRS: [(&str, u32); 5] = [
    ("/proc", 0o555),
    ("/sys", 0o555),
    ("/dev", 0o755),
    ("/etc", 0o755),
    ("/run", 0o755),
];

/// `statfs` magic of ramfs, the other filesystem the initramfs root can be.
const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);

/// Why the root filesystem could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// The device node never appeared.
    #[error("root device {device} did not appear within {} s (is its driver in the module list?)", .waited.as_secs())]
    DeviceTimeout {
        /// The device.
        device: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
    /// A directory could not be created.
    #[error("cannot create directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The root device could not be mounted.
    #[error("cannot mount root device {device} ({fstype}) on {target}")]
    MountRoot {
        /// The device.
        device: PathBuf,
        /// Its filesystem type.
        fstype: String,
        /// Where.
        target: &'static str,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// A mount could not be moved into the new root.
    #[error("cannot move mount {from} to {to}")]
    MoveMount {
        /// The old mount point.
        from: &'static str,
        /// The new one.
        to: PathBuf,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// One of the switch-root system calls failed.
    #[error("cannot switch root to {new_root}: {step} failed")]
    Switch {
        /// The new root.
        new_root: &'static str,
        /// Which call.
        step: &'static str,
        /// The cause.
        #[source]
        source: nix::Error,
    },
}

/// Mounts `device` and makes it `/`. Returns how many initramfs entries were freed.
///
/// # Errors
/// [`RootfsError`] naming the step that failed; the caller treats it as fatal.
pub fn switch_to(device: &Path, fstype: &str, flags: Option<&str>) -> Result<usize, RootfsError> {
    if !wait::wait_for_path(device, ROOT_DEVICE_TIMEOUT, ROOT_DEVICE_POLL) {
        return Err(RootfsError::DeviceTimeout {
            device: device.to_owned(),
            waited: ROOT_DEVICE_TIMEOUT,
        });
    }
    create_dir(Path::new(NEW_ROOT), 0o755)?;
    mount(
        Some(device),
        NEW_ROOT,
        Some(fstype),
        MsFlags::empty(),
        flags,
    )
    .map_err(|source| RootfsError::MountRoot {
        device: device.to_owned(),
        fstype: fstype.to_owned(),
        target: NEW_ROOT,
        source,
    })?;
    ensure_dirs(Path::new(NEW_ROOT))?;
    for from in CARRIED_MOUNTS {
        let to = Path::new(NEW_ROOT).join(from.trim_start_matches('/'));
        mount(
            Some(from),
            &to,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|source| RootfsError::MoveMount { from, to, source })?;
    }
    // Best effort: the files stay in RAM otherwise, but a failure to delete them must not stop
    // the boot.
    let freed = free_initramfs().unwrap_or(0);

    let step = |step: &'static str| {
        move |source| RootfsError::Switch {
            new_root: NEW_ROOT,
            step,
            source,
        }
    };
    chdir(NEW_ROOT).map_err(step("chdir"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(step("mount --move . /"))?;
    chroot(".").map_err(step("chroot"))?;
    chdir("/").map_err(step("chdir /"))?;
    Ok(freed)
}

/// Creates the [`ROOT_DIRS`] missing under `root`.
///
/// # Errors
/// [`RootfsError::CreateDir`] naming the directory.
pub fn ensure_dirs(root: &Path) -> Result<(), RootfsError> {
    for (dir, mode) in ROOT_DIRS {
        create_dir(&root.join(dir.trim_start_matches('/')), mode)?;
    }
    Ok(())
}

/// Creates `path` (and missing parents) with `mode` unless it is already a directory.
pub fn create_dir(path: &Path, mode: u32) -> Result<(), RootfsError> {
    if path.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|source| RootfsError::CreateDir {
            path: path.to_owned(),
            source,
        })
}

/// Deletes the initramfs files (modules, the harness's own file) so their RAM is returned, as
/// busybox's `switch_root` does. Only entries on the root's own device are touched, so the new
/// root (a different device, mounted inside) is never entered; and only when `/` really is the
/// initramfs (tmpfs or ramfs).
fn free_initramfs() -> io::Result<usize> {
    let magic = statfs("/").map_err(io::Error::from)?.filesystem_type();
    if magic != TMPFS_MAGIC && magic != RAMFS_MAGIC {
        return Ok(0);
    }
    let root_dev = std::fs::symlink_metadata("/")?.dev();
    remove_tree_on_device(Path::new("/"), root_dev)
}

fn remove_tree_on_device(dir: &Path, dev: u64) -> io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            removed += remove_tree_on_device(&path, dev)?;
            // A directory holding a mount point cannot go; that is fine.
            if std::fs::remove_dir(&path).is_ok() {
                removed += 1;
            }
        } else if std::fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_only_entries_on_the_given_device() {
        let dir = std::env::temp_dir().join(format!("aegis-harness-rootfs-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/b/file"), b"x").unwrap();
        std::fs::write(dir.join("top"), b"y").unwrap();
        let dev = std::fs::metadata(&dir).unwrap().dev();
        // A device number that matches nothing: nothing is removed.
        assert_eq!(remove_tree_on_device(&dir, dev.wrapping_add(1)).unwrap(), 0);
        assert!(dir.join("a/b/file").exists());
        assert_eq!(remove_tree_on_device(&dir, dev).unwrap(), 4);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn ensure_dirs_creates_missing_mount_points() {
        let dir = std::env::temp_dir().join(format!("aegis-harness-dirs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        ensure_dirs(&dir).unwrap();
        for (d, _) in ROOT_DIRS {
            assert!(dir.join(d.trim_start_matches('/')).is_dir(), "{d}");
        }
        // Idempotent.
        ensure_dirs(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
