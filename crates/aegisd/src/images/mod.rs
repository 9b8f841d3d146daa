//! The daemon's view of the image store: resolve an instance's image reference to a read-only
//! base disk and the image's run-time settings. Pulling, unpacking and building live in the
//! `aegis-image` crate; this module only wires it to instances.

use std::path::PathBuf;

use aegis_image::manifest::ImageConfig;
use aegis_image::pull::{PullError, PullEvent, PullOptions, PullOutcome, PullPolicy};
use aegis_image::reference::{Digest, ImageRef};
use aegis_image::store::{ImageRecord, ImageStore, StoreError};
use aegis_image::{ImportError, ImportOptions};
use aegis_proto::api::{ImageDetail, ImageEvent, ImageRunConfig, ImageSummary, PruneResult};

/// An image ready to boot.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// Manifest digest: instances pin it, so a moved tag never changes the disk under them.
    pub digest: String,
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
    /// A root filesystem tarball names no image.
    #[error("importing a root filesystem tarball needs a tag to name the image")]
    TagRequired,
    /// Pulling failed (boxed: pull errors carry a reference, a registry and an OCI error, and
    /// `ImageError` travels inside every lifecycle and API error).
    #[error(transparent)]
    Pull(Box<PullError>),
    /// Importing failed (boxed like `Pull`).
    #[error(transparent)]
    Import(Box<ImportError>),
    /// The ext4 base image could not be built.
    #[error("cannot build the root filesystem of {reference}: {message}")]
    Build {
        /// The image.
        reference: String,
        /// What failed.
        message: String,
    },
}

impl From<PullError> for ImageError {
    fn from(e: PullError) -> Self {
        ImageError::Pull(Box::new(e))
    }
}

impl From<ImportError> for ImageError {
    fn from(e: ImportError) -> Self {
        ImageError::Import(Box::new(e))
    }
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
            ImageError::Pull(e) => e.hint(),
            ImageError::Import(e) => e.hint(),
            ImageError::TagRequired => Some("pass `--tag NAME:TAG`".to_owned()),
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
    pub fn resolve_blocking(
        &self,
        reference: &str,
        pinned: Option<&str>,
    ) -> Result<ResolvedImage, ImageError> {
        let mut parsed = parse_ref(reference)?;
        if let Some(digest) = pinned.and_then(|d| Digest::parse(d).ok()) {
            parsed = parsed.with_digest(digest);
        }
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
            digest: record.manifest_digest.to_string(),
            base,
            config: record.config,
        })
    }

    /// Makes sure `reference` is stored, pulling it on first use (never re-resolving a stored
    /// tag), then resolves it.
    ///
    /// # Errors
    /// [`ImageError`].
    pub async fn ensure(&self, reference: &str) -> Result<ResolvedImage, ImageError> {
        let parsed = parse_ref(reference)?;
        let stored = {
            let (store, parsed) = (self.store.clone(), parsed.clone());
            blocking(move || store.lookup(&parsed))
                .await?
                .map_err(ImageError::Store)?
        };
        if stored.is_none() && reference != self.default_ref {
            let options = PullOptions {
                policy: PullPolicy::IfMissing,
                ..PullOptions::default()
            };
            aegis_image::pull::pull(&self.store, &parsed, &options, |_| {}).await?;
        }
        let this = self.clone();
        let reference = reference.to_owned();
        blocking(move || this.resolve_blocking(&reference, None)).await?
    }

    /// Pulls `reference` (resolving tags at the registry), reporting progress.
    ///
    /// # Errors
    /// [`ImageError`].
    pub async fn pull(
        &self,
        reference: &str,
        mut progress: impl FnMut(ImageEvent) + Send,
    ) -> Result<(ImageSummary, bool), ImageError> {
        let parsed = parse_ref(reference)?;
        let mut cached = false;
        let record = aegis_image::pull::pull(&self.store, &parsed, &PullOptions::default(), |e| {
            if let PullEvent::Done { outcome, .. } = &e {
                cached = *outcome == PullOutcome::Cached;
            }
            if let Some(ev) = event_of(e) {
                progress(ev);
            }
        })
        .await?;
        let summary = self.summary(&record);
        Ok((summary, cached))
    }

    /// Imports an archive (OCI layout, `docker save`) or a root filesystem tarball, then builds
    /// the base disks, reporting [`ImageEvent::Unpacking`] before each build. Blocking.
    ///
    /// # Errors
    /// [`ImageError`].
    pub fn import_blocking(
        &self,
        path: &std::path::Path,
        rootfs: bool,
        tag: Option<&str>,
        mut progress: impl FnMut(ImageEvent),
    ) -> Result<Vec<ImageSummary>, ImageError> {
        let tag = tag.map(parse_ref).transpose()?;
        // Where each reference pointed before: an image whose base disk cannot be built is
        // unusable, and a failed import must leave the references as it found them.
        let before = self.store.references().map_err(ImageError::Store)?;
        let records = if rootfs {
            let Some(tag) = tag else {
                return Err(ImageError::TagRequired);
            };
            vec![aegis_image::import_rootfs_tar(
                &self.store,
                path,
                &tag,
                &ImageConfig::default(),
            )?]
        } else {
            aegis_image::import_archive(&self.store, path, &ImportOptions { name: tag })?
        };
        let mut summaries = Vec::new();
        for r in &records {
            if !self.store.base_image_path(&r.manifest_digest).is_file() {
                progress(ImageEvent::Unpacking {
                    digest: r.manifest_digest.to_string(),
                });
            }
            if let Err(e) = self.store.base_image(r) {
                for undo in &records {
                    let previous = before.get(&undo.reference);
                    if let Err(err) = self.store.restore_reference(&undo.reference, previous) {
                        tracing::warn!(reference = %undo.reference, error = %err, "cannot restore the reference after a failed import");
                    }
                }
                return Err(ImageError::Build {
                    reference: r.reference.to_string(),
                    message: error_chain(&e),
                });
            }
            summaries.push(self.summary(r));
        }
        Ok(summaries)
    }

    /// Every stored reference. Blocking.
    ///
    /// # Errors
    /// [`ImageError::Store`].
    pub fn list_blocking(&self) -> Result<Vec<ImageSummary>, ImageError> {
        let records = self.store.list().map_err(ImageError::Store)?;
        Ok(records.iter().map(|r| self.summary(r)).collect())
    }

    /// One stored reference in detail. Blocking.
    ///
    /// # Errors
    /// [`ImageError`].
    pub fn inspect_blocking(&self, reference: &str) -> Result<ImageDetail, ImageError> {
        let record = self.lookup_blocking(reference)?;
        Ok(ImageDetail {
            summary: self.summary(&record),
            config: ImageRunConfig {
                env: record.config.env.clone(),
                working_dir: record.config.working_dir.clone(),
                user: record.config.user.clone(),
                entrypoint: record.config.entrypoint.clone(),
                cmd: record.config.cmd.clone(),
            },
            layer_digests: record.layers.iter().map(|l| l.digest.to_string()).collect(),
        })
    }

    /// Removes a reference (blobs stay until `prune`). Blocking.
    ///
    /// # Errors
    /// [`ImageError`].
    pub fn remove_blocking(&self, reference: &str) -> Result<String, ImageError> {
        let parsed = parse_ref(reference)?;
        self.lookup_blocking(reference)?;
        Ok(self
            .store
            .remove(&parsed)
            .map_err(ImageError::Store)?
            .to_string())
    }

    /// Removes what no reference and no instance (`in_use` manifest digests) needs. Blocking.
    ///
    /// # Errors
    /// [`ImageError::Store`].
    pub fn prune_blocking(&self, in_use: &[String]) -> Result<PruneResult, ImageError> {
        let keep: Vec<Digest> = in_use
            .iter()
            .filter_map(|d| Digest::parse(d).ok())
            .collect();
        let report = self.store.prune_keeping(&keep).map_err(ImageError::Store)?;
        Ok(PruneResult {
            removed_images: report
                .removed_images
                .iter()
                .map(ToString::to_string)
                .collect(),
            removed_blobs: report.removed_blobs as u64,
            removed_base_images: report.removed_base_images as u64,
            reclaimed_bytes: report.reclaimed_bytes,
        })
    }

    fn lookup_blocking(&self, reference: &str) -> Result<ImageRecord, ImageError> {
        let parsed = parse_ref(reference)?;
        self.store
            .lookup(&parsed)
            .map_err(ImageError::Store)?
            .ok_or_else(|| ImageError::NotFound {
                reference: reference.to_owned(),
                default: reference == self.default_ref,
            })
    }

    fn summary(&self, r: &ImageRecord) -> ImageSummary {
        ImageSummary {
            reference: r.reference.to_string(),
            digest: r.manifest_digest.to_string(),
            size: r.size,
            created: r.created.and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            }),
            layers: u32::try_from(r.layers.len()).unwrap_or(u32::MAX),
            platform: r.platform.to_string(),
            base_image_built: self.store.base_image_path(&r.manifest_digest).is_file(),
        }
    }
}

fn parse_ref(reference: &str) -> Result<ImageRef, ImageError> {
    ImageRef::parse(reference).map_err(|source| ImageError::InvalidReference {
        reference: reference.to_owned(),
        source,
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ImageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ImageError::Build {
            reference: String::new(),
            message: format!("image task failed: {e}"),
        })
}

/// The API form of a pull event (`Done` is sent by the caller with the summary).
fn event_of(e: PullEvent) -> Option<ImageEvent> {
    Some(match e {
        PullEvent::Resolving { reference } => ImageEvent::Resolving {
            reference: reference.to_string(),
        },
        PullEvent::LayerStart { digest, size } => ImageEvent::LayerStart {
            digest: digest.to_string(),
            size,
        },
        PullEvent::LayerProgress { digest, bytes } => ImageEvent::LayerProgress {
            digest: digest.to_string(),
            bytes,
        },
        PullEvent::LayerDone { digest } => ImageEvent::LayerDone {
            digest: digest.to_string(),
        },
        PullEvent::LayerCached { digest, size } => ImageEvent::LayerCached {
            digest: digest.to_string(),
            size,
        },
        PullEvent::Unpacking { manifest } => ImageEvent::Unpacking {
            digest: manifest.to_string(),
        },
        PullEvent::Done { .. } => return None,
    })
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
