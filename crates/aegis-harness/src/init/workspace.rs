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
