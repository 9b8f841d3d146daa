//! Mounts the instance's workspace at `/workspace`, after the root switch so it lands in the
//! instance's root.
//!
//! A workspace the host attached but the guest cannot mount fails the boot: carrying on would let
//! programs write "durable" files onto the root disk's empty `/workspace` directory, where the
//! next instance would never see them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{mount, MsFlags};

use crate::config::WorkspaceConfig;
use crate::init::rootfs::{create_dir, ROOT_DEVICE_POLL};
use crate::wait;

/// Where the workspace is mounted.
pub const MOUNT_POINT: &str = "/workspace";

/// How long the workspace's block device gets to appear (it probes with the root disk).
const DEVICE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the workspace could not be mounted.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// The block device never appeared.
    #[error("workspace device {} did not appear within {} s", device.display(), DEVICE_TIMEOUT.as_secs())]
    DeviceTimeout {
        /// The device.
        device: PathBuf,
    },
    /// `/workspace` could not be created.
    #[error("cannot create {MOUNT_POINT}")]
    MountPoint(#[source] crate::init::rootfs::RootfsError),
    /// mount(2) failed.
    #[error("cannot mount the workspace {what} on {MOUNT_POINT}")]
    Mount {
        /// The device or virtio-fs tag.
        what: String,
        /// The cause.
        #[source]
        source: nix::Error,
    },
}

/// Gives a fresh workspace volume to the user a process runs as: a new ext4 volume's root is
/// `root:root 0755`, which an image whose `User` is not root could not write to. Only a volume
/// still empty (nothing but `lost+found`) and still owned by root is handed over, so the first
/// non-root process decides and nothing a user arranged is ever changed; shared directories
/// (virtio-fs) are the host's and are never touched.
pub fn hand_over_if_fresh(uid: u32, gid: u32) {
    use std::os::unix::fs::MetadataExt;
    const EXT4_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::FsType(0xef53);
    if uid == 0 {
        return;
    }
    let root = Path::new(MOUNT_POINT);
    let is_volume = nix::sys::statfs::statfs(root)
        .is_ok_and(|fs| fs.filesystem_type() == EXT4_MAGIC)
        && std::fs::metadata(root)
            .ok()
            .zip(std::fs::metadata("/").ok())
            .is_some_and(|(ws, slash)| ws.dev() != slash.dev());
    let fresh = std::fs::metadata(root).is_ok_and(|m| m.uid() == 0 && m.gid() == 0)
        && std::fs::read_dir(root).is_ok_and(|entries| {
            entries
                .filter_map(Result::ok)
                .all(|e| e.file_name() == "lost+found")
        });
    if is_volume && fresh {
        let owner = (
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        );
        match nix::unistd::chown(root, owner.0, owner.1) {
            Ok(()) => crate::console::line(format_args!(
                "workspace handed to {uid}:{gid} (a fresh volume)"
            )),
            Err(e) => crate::console::line(format_args!(
                "cannot hand the workspace to {uid}:{gid}: {e} (continuing)"
            )),
        }
    }
}

/// Mounts `config` at [`MOUNT_POINT`]; returns a description for the console.
///
/// # Errors
/// [`WorkspaceError`]; the caller treats it as fatal.
pub fn mount_workspace(config: &WorkspaceConfig) -> Result<String, WorkspaceError> {
    create_dir(Path::new(MOUNT_POINT), 0o755).map_err(WorkspaceError::MountPoint)?;
    // No device files, no set-user-ID programs from a volume the host or another instance may
    // have written.
    let flags = MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    match config {
        WorkspaceConfig::Block(device) => {
            if !wait::wait_for_path(device, DEVICE_TIMEOUT, ROOT_DEVICE_POLL) {
                return Err(WorkspaceError::DeviceTimeout {
                    device: device.clone(),
                });
            }
            mount(
                Some(device.as_path()),
                MOUNT_POINT,
                Some("ext4"),
                flags,
                None::<&str>,
            )
            .map_err(|source| WorkspaceError::Mount {
                what: device.display().to_string(),
                source,
            })?;
            Ok(format!("{} (ext4)", device.display()))
        }
        WorkspaceConfig::Virtiofs(tag) => {
            mount(
                Some(tag.as_str()),
                MOUNT_POINT,
                Some("virtiofs"),
                flags,
                None::<&str>,
            )
            .map_err(|source| WorkspaceError::Mount {
                what: format!("virtiofs:{tag}"),
                source,
            })?;
            Ok(format!("virtiofs:{tag}"))
        }
    }
}
