//! The daemon's view of the image store: resolve an instance's image reference to a read-only
//! base disk and the image's run-time settings. Pulling, unpacking and building live in the
//! `aegis-image` crate; this module only wires it to instances.

use std::path::PathBuf;

use aegis_image::manifest::ImageConfig;
use aegis_image::reference::ImageRef;
use aegis_image::store::{ImageStore, StoreError};

/// An image ready to boot.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The read-only ext4 base image.
    pub base: PathBuf,
    /// Run-time settings (env, workdir, user, entrypoint, cmd).
    pub config: ImageConfig,
}

/// Why an image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference does not parse.
    #[error("invalid image reference {reference:?}")]
    InvalidReference {
        /// As given.
        reference: String,
        /// Cause.
        #[source]
        source: aegis_image::reference::ReferenceError,
    },
    /// Not in the store.
    #[error("image {reference} is not in the image store")]
    NotFound {
        /// As given.
        reference: String,
        /// Whether it is the default image (which set-up builds).
        default: bool,
    },
    /// The store failed.
    #[error("image store failure")]
    Store(#[source] StoreError),
    /// The ext4 base image could not be built.
    #[error("cannot build the root filesystem of {reference}: {message}")]
    Build {
        /// The image.
        reference: String,
        /// What failed.
        message: String,
    },
}

impl ImageError {
    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            ImageError::NotFound { default: true, .. } => {
                Some("run `./setup.sh` to build the default image".to_owned())
            }
            ImageError::NotFound { reference, .. } => {
                Some(format!("run `aegis image pull {reference}`"))
            }
            ImageError::Store(e) => e.hint(),
            ImageError::InvalidReference { .. } | ImageError::Build { .. } => None,
        }
    }
}

/// The image store as the daemon uses it.
#[derive(Debug, Clone)]
pub struct Images {
    store: ImageStore,
    default_ref: String,
}

impl Images {
    /// Wraps a store.
    pub fn new(store: ImageStore, default_ref: &str) -> Images {
        Images {
            store,
            default_ref: default_ref.to_owned(),
        }
    }

    /// The underlying store.
    pub fn store(&self) -> &ImageStore {
        &self.store
    }

    /// Finds `reference` in the store and makes sure its base disk exists. Blocking (it may
    /// build an ext4 image): call on the blocking pool.
    ///
    /// # Errors
    /// [`ImageError`].
    pub fn resolve_blocking(&self, reference: &str) -> Result<ResolvedImage, ImageError> {
        let parsed = ImageRef::parse(reference).map_err(|source| ImageError::InvalidReference {
            reference: reference.to_owned(),
            source,
        })?;
        let record = self
            .store
            .lookup(&parsed)
            .map_err(ImageError::Store)?
            .ok_or_else(|| ImageError::NotFound {
                reference: reference.to_owned(),
                default: reference == self.default_ref,
            })?;
        let base = self
            .store
            .base_image(&record)
            .map_err(|e| ImageError::Build {
                reference: reference.to_owned(),
                message: error_chain(&e),
            })?;
        Ok(ResolvedImage {
            base,
            config: record.config,
        })
    }
}

/// `a: b: c` for an error and its sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
