//! The pseudo-filesystems the guest needs, as declarative tables, and the one function that
//! applies a table idempotently.
//!
//! [`EARLY`] is mounted in the initramfs before anything else; those mounts are later moved into
//! the new root by `rootfs`. [`LATE`] is mounted once `/` is final. Applying a table twice is
//! harmless: a target that already carries the expected filesystem is left alone. Creating
//! missing mount points is part of applying, because the root can be any OCI image.

use std::io;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sys::statfs::{
    statfs, FsType, CGROUP2_SUPER_MAGIC, DEVPTS_SUPER_MAGIC, PROC_SUPER_MAGIC, SYSFS_MAGIC,
    TMPFS_MAGIC,
};

use crate::console;

/// Whether boot can go on without a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Boot fails without it.
    Required,
    /// Logged and skipped when the kernel lacks support.
    Optional,
}

/// One row of a mount table.
#[derive(Debug, Clone, Copy)]
pub struct MountSpec {
    /// Source argument of mount(2) (the filesystem name for pseudo-filesystems).
    pub source: &'static str,
    /// Absolute mount point.
    pub target: &'static str,
    /// Filesystem type.
    pub fstype: &'static str,
    /// Mount flags.
    pub flags: MsFlags,
    /// Filesystem-specific options.
    pub data: Option<&'static str>,
    /// `statfs` magic the mounted filesystem reports; used to detect an existing mount.
    pub magic: FsType,
    /// Whether a failure stops the boot.
    pub need: Need,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// Mounted first, in the initramfs: the kernel interfaces everything else reads.
pub const EARLY: &[MountSpec] = &[
    MountSpec {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
        magic: PROC_SUPER_MAGIC,
        need: Need::Required,
    },
    MountSpec {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
        magic: SYSFS_MAGIC,
        need: Need::Required,
    },
    MountSpec {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
        // devtmpfs is a tmpfs instance and reports tmpfs's magic.
        magic: TMPFS_MAGIC,
        need: Need::Required,
    },
];

/// Mounted once `/` is final (after the switch, or in the initramfs with `aegis.root=none`).
pub const LATE: &[MountSpec] = &[
    MountSpec {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        // A private instance whose ptmx anyone may open (`/dev/ptmx` links to it); gid 5 is the
        // conventional `tty` group.
        data: Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        magic: DEVPTS_SUPER_MAGIC,
        need: Need::Required,
    },
    MountSpec {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
        magic: TMPFS_MAGIC,
        need: Need::Required,
    },
    MountSpec {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
        magic: TMPFS_MAGIC,
        need: Need::Required,
    },
    MountSpec {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
        magic: TMPFS_MAGIC,
        need: Need::Required,
    },
    MountSpec {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
        magic: CGROUP2_SUPER_MAGIC,
        // Useful to workloads that read their limits, but not worth a failed boot.
        need: Need::Optional,
    },
];

/// Symlinks programs expect in `/dev` that devtmpfs does not create: (link, target).
pub const DEV_LINKS: &[(&str, &str)] = &[
    ("/dev/ptmx", "pts/ptmx"),
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
];

/// A required mount that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The mount point could not be created.
    #[error("cannot create mount point {target}")]
    CreateTarget {
        /// The mount point.
        target: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// mount(2) failed.
    #[error("cannot mount {fstype} on {target}")]
    Mount {
        /// Filesystem type.
        fstype: &'static str,
        /// The mount point.
        target: &'static str,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// A `/dev` symlink could not be made.
    #[error("cannot link {link} to {target}")]
    Link {
        /// The link path.
        link: &'static str,
        /// What it should point to.
        target: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Mounts every row of `table` that is not mounted yet.
///
/// # Errors
/// [`MountError`] for the first required row that fails; optional rows are logged and skipped.
pub fn apply(table: &[MountSpec]) -> Result<(), MountError> {
    for spec in table {
        match apply_one(spec) {
            Ok(()) => {}
            Err(e) if spec.need == Need::Optional => {
                console::line(format_args!(
                    "skipping optional mount: {}",
                    console::chain(&e)
                ));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn apply_one(spec: &MountSpec) -> Result<(), MountError> {
    if is_mounted(Path::new(spec.target), spec.magic) {
        return Ok(());
    }
    std::fs::create_dir_all(spec.target).map_err(|source| MountError::CreateTarget {
        target: spec.target,
        source,
    })?;
    mount(
        Some(spec.source),
        spec.target,
        Some(spec.fstype),
        spec.flags,
        spec.data,
    )
    .map_err(|source| MountError::Mount {
        fstype: spec.fstype,
        target: spec.target,
        source,
    })
}

/// A target counts as mounted when it carries the expected filesystem *and* is a mount point
/// (its device differs from its parent's). The magic alone is not enough: the initramfs root is
/// itself a tmpfs, so a plain `/tmp` directory there reports tmpfs's magic.
pub fn is_mounted(target: &Path, magic: FsType) -> bool {
    let Ok(fs) = statfs(target) else {
        return false;
    };
    if fs.filesystem_type() != magic {
        return false;
    }
    let parent = target.parent().unwrap_or(Path::new("/"));
    match (std::fs::metadata(target), std::fs::metadata(parent)) {
        (Ok(own), Ok(parent)) => own.dev() != parent.dev(),
        _ => false,
    }
}

/// Creates the [`DEV_LINKS`], replacing whatever else is at those paths (devtmpfs has a
/// `/dev/ptmx` node for the initial devpts instance, which our private instance must replace).
///
/// # Errors
/// [`MountError::Link`] naming the link that could not be made.
pub fn link_dev_entries() -> Result<(), MountError> {
    for &(link, target) in DEV_LINKS {
        if std::fs::read_link(link).is_ok_and(|current| current == Path::new(target)) {
            continue;
        }
        let made = match std::fs::symlink_metadata(link) {
            Ok(_) => std::fs::remove_file(link).and_then(|()| symlink(target, link)),
            Err(_) => symlink(target, link),
        };
        made.map_err(|source| MountError::Link {
            link,
            target,
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_absolute_and_ordered_parent_first() {
        for table in [EARLY, LATE] {
            for (i, spec) in table.iter().enumerate() {
                assert!(spec.target.starts_with('/'), "{}", spec.target);
                // A mount must come after any earlier row that is its parent, or it would be
                // hidden by it.
                for later in &table[i + 1..] {
                    assert!(
                        !spec.target.starts_with(&format!("{}/", later.target)),
                        "{} is listed before its parent {}",
                        spec.target,
                        later.target
                    );
                }
            }
        }
    }

    #[test]
    fn detects_existing_mounts_on_the_build_host() {
        // /proc is a mount point with the proc magic on any Linux host that runs these tests.
        assert!(is_mounted(Path::new("/proc"), PROC_SUPER_MAGIC));
        // The right filesystem type but not a mount point.
        assert!(!is_mounted(Path::new("/proc/self"), PROC_SUPER_MAGIC));
        assert!(!is_mounted(Path::new("/proc"), SYSFS_MAGIC));
        assert!(!is_mounted(Path::new("/definitely/not/here"), TMPFS_MAGIC));
    }
}
