//! The read-only ext4 base image of a stored image: built once per manifest digest, reused after.
//!
//! [`ImageStore::base_image`] unpacks the layers into a staging directory ([`crate::unpack`]),
//! builds the ext4 file ([`crate::ext4`]) in `tmp/`, and renames it to
//! `rootfs/<manifest-hex>.ext4`. A per-image lock makes concurrent callers (threads or processes)
//! wait for one build instead of racing. Instances put a qcow2 overlay on the result; creating
//! that overlay is the VMM layer's job.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use crate::ext4::{self, Ext4Error};
use crate::reference::Digest;
use crate::store::{ImageRecord, ImageStore, StoreError};
use crate::unpack::{UnpackError, Unpacker};

/// Why a base image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The store could not be locked or read.
    #[error("cannot build the base image of {manifest}")]
    Store {
        /// The image's manifest digest.
        manifest: Digest,
        /// What failed in the store.
        #[source]
        source: StoreError,
    },
    /// A layer could not be unpacked.
    #[error("cannot unpack image {manifest}")]
    Unpack {
        /// The image's manifest digest.
        manifest: Digest,
        /// What failed.
        #[source]
        source: UnpackError,
    },
    /// The ext4 file could not be built.
    #[error("cannot build the ext4 base image of {manifest}")]
    Ext4 {
        /// The image's manifest digest.
        manifest: Digest,
        /// What failed.
        #[source]
        source: Ext4Error,
    },
    /// The finished image could not be moved into place.
    #[error("cannot install base image {path}")]
    Install {
        /// The destination.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl BuildError {
    /// What the user can do about the error, when there is something.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Store { source, .. } => source.hint(),
            Self::Ext4 { source, .. } => source.hint(),
            Self::Unpack { source, .. } => source.hint(),
            Self::Install { source, .. } if crate::store::is_disk_full(source) => {
                Some(crate::store::DISK_FULL_HINT.to_owned())
            }
            Self::Install { .. } => None,
        }
    }
}

impl ImageStore {
    /// The path of the image's read-only ext4 base image, building it first if needed. A second
    /// call (from any process) returns the existing file without unpacking anything.
    ///
    /// Blocking: unpacks every layer and runs `mke2fs` and `debugfs`; call it from a blocking
    /// thread (`tokio::task::spawn_blocking`).
    ///
    /// # Errors
    /// [`BuildError`] naming the step that failed; nothing is left behind in `rootfs/`.
    pub fn base_image(&self, record: &ImageRecord) -> Result<PathBuf, BuildError> {
        let manifest = &record.manifest_digest;
        let dest = self.base_image_path(manifest);
        if dest.is_file() {
            return Ok(dest);
        }
        let store_err = |source| BuildError::Store {
            manifest: manifest.clone(),
            source,
        };
        let _writer = self.lock_shared().map_err(store_err)?;
        let _builder = self.lock_build(manifest).map_err(store_err)?;
        // Another process may have finished the build while we waited for the lock.
        if dest.is_file() {
            return Ok(dest);
        }
        for layer in &record.layers {
            if !self.has_blob(&layer.digest) {
                return Err(store_err(StoreError::MissingBlob {
                    digest: layer.digest.clone(),
                    manifest: manifest.clone(),
                }));
            }
        }

        let started = std::time::Instant::now();
        let staging = self.temp_path(&format!("unpack-{}", manifest.short()));
        let unpack_err = |source| BuildError::Unpack {
            manifest: manifest.clone(),
            source,
        };
        let mut unpacker =
            Unpacker::with_limits(staging.path(), self.unpack_limits()).map_err(unpack_err)?;
        for layer in &record.layers {
            unpacker
                .apply_layer_file(
                    &self.blob_path(&layer.digest),
                    &layer.digest,
                    &layer.media_type,
                )
                .map_err(unpack_err)?;
        }
        let tree = unpacker.finish();
        let unpacked_in = started.elapsed();

        let image = self.temp_path(&format!("rootfs-{}", manifest.short()));
        let work = self.temp_path(&format!("ext4work-{}", manifest.short()));
        ext4::build_ext4(&tree, image.path(), work.path()).map_err(|source| BuildError::Ext4 {
            manifest: manifest.clone(),
            source,
        })?;
        drop(staging);
        let install_err = |source| BuildError::Install {
            path: dest.clone(),
            source,
        };
        fs::set_permissions(image.path(), fs::Permissions::from_mode(0o444))
            .map_err(install_err)?;
        fs::rename(image.path(), &dest).map_err(install_err)?;
        tracing::info!(
            image = %record.reference,
            manifest = %manifest,
            entries = tree.entries.len(),
            unpack_ms = u64::try_from(unpacked_in.as_millis()).unwrap_or(u64::MAX),
            total_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "built base image"
        );
        Ok(dest)
    }
}
