//! The on-disk image store: content-addressed blobs, image records, references and locks.
//!
//! Layout under the root the caller chooses (the daemon passes `$AEGIS_HOME/images`):
//!
//! ```text
//! store.lock                 flock: shared while pulling/importing/building, exclusive to prune
//! refs.lock                  flock: exclusive while rewriting refs.json
//! refs.json                  {"refs": {"docker.io/library/alpine:latest": "sha256:…"}}
//! blobs/sha256/<hex>         manifests, configs and layers, named by their digest
//! images/sha256/<hex>.json   one record per manifest digest (config digest, layers, parsed config)
//! rootfs/<hex>.ext4          read-only ext4 base image per manifest digest (see crate::rootfs)
//! locks/<hex>.lock           flock: one builder of a base image at a time
//! tmp/                       temporary files; renamed into place only once complete and verified
//! ```
//!
//! Every file that other readers see appears by `rename(2)` from `tmp/` after it is complete (and,
//! for blobs, after its digest was verified), so a crash or a bad download never leaves a bad blob
//! or a half-written record. Fetching content is left to [`crate::pull`](mod@crate::pull) and [`crate::import`].

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use time::OffsetDateTime;

use crate::manifest::{ConfigFile, ImageConfig, Manifest, Platform};
use crate::reference::{Digest, ImageRef};
use crate::unpack::UnpackLimits;

/// How long `prune` waits for running pulls, imports and builds to finish before giving up. Pulls
/// of large images can take minutes; prune is a rare, interactive command, so it reports "busy"
/// rather than blocking the user indefinitely.
pub const PRUNE_LOCK_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a waiting `prune` retries the lock.
const LOCK_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Version of the refs.json and record format, bumped on incompatible changes.
const FORMAT_VERSION: u32 = 1;

/// What went wrong in the image store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A store directory could not be created.
    #[error("cannot create image store directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A store file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A store file could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A store file could not be removed.
    #[error("cannot remove {path}")]
    Remove {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A lock file could not be locked.
    #[error("cannot lock {path}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Another process is pulling, importing or building and did not finish in time.
    #[error("image store {path} is busy: a pull, import or base-image build is running")]
    Busy {
        /// The lock file.
        path: PathBuf,
    },
    /// A record or the reference table is not valid JSON.
    #[error("image store file {path} is corrupt")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// Content did not hash to the digest it was announced with; it was discarded.
    #[error("content of blob {expected} hashes to {actual}; discarded")]
    DigestMismatch {
        /// The digest the content should have had.
        expected: Digest,
        /// The digest it had.
        actual: Digest,
    },
    /// No reference by that name is stored.
    #[error("no image {reference} in the store")]
    UnknownReference {
        /// The reference looked up.
        reference: ImageRef,
    },
    /// A record names a blob that is not in the store.
    #[error("blob {digest} of image {manifest} is missing from the store")]
    MissingBlob {
        /// The missing blob.
        digest: Digest,
        /// The image that needs it.
        manifest: Digest,
    },
    /// A reference points at a manifest whose record is missing.
    #[error("reference {reference} points at image {manifest}, which has no record")]
    MissingRecord {
        /// The reference.
        reference: ImageRef,
        /// The manifest digest it points at.
        manifest: Digest,
    },
}

/// True when `error` says the file system is full (or the user's quota on it is used up).
pub(crate) fn is_disk_full(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error().map(Errno::from_raw),
        Some(Errno::ENOSPC | Errno::EDQUOT)
    )
}

/// The remedy for a write into the store that found the disk full (the error names the file).
pub(crate) const DISK_FULL_HINT: &str = "that disk is full: free space on it (`aegis image \
     prune` removes what no image or instance uses), then try again; nothing half-written was \
     kept";

impl StoreError {
    /// What the user can do about the error, when there is something.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::CreateDir { source, .. } | Self::Write { source, .. } if is_disk_full(source) => {
                Some(DISK_FULL_HINT.to_owned())
            }
            Self::Busy { .. } => Some("retry when the running pull or import finishes".to_owned()),
            Self::Corrupt { path, .. } => Some(format!(
                "remove {} and pull the affected images again",
                path.display()
            )),
            Self::UnknownReference { reference } => Some(format!(
                "run `aegis image list` to see stored images, or `aegis image pull {reference}`"
            )),
            Self::MissingBlob { .. } | Self::MissingRecord { .. } => {
                Some("pull or import the image again".to_owned())
            }
            Self::CreateDir { .. }
            | Self::Read { .. }
            | Self::Write { .. }
            | Self::Remove { .. }
            | Self::Lock { .. }
            | Self::DigestMismatch { .. } => None,
        }
    }
}

/// One layer of an image, as its manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// Digest of the layer blob (compressed, as stored).
    pub digest: Digest,
    /// Media type (tells the compression).
    pub media_type: String,
    /// Size of the blob in bytes.
    pub size: u64,
}

/// A stored image as seen through one reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The reference the image was looked up or listed under.
    pub reference: ImageRef,
    /// Digest of the (platform-specific) image manifest; names the base image too.
    pub manifest_digest: Digest,
    /// Digest of the image config blob.
    pub config_digest: Digest,
    /// The run-time settings from the image config.
    pub config: ImageConfig,
    /// Layers, bottom first.
    pub layers: Vec<LayerInfo>,
    /// Bytes of manifest, config and layer blobs (layers as stored, i.e. compressed).
    pub size: u64,
    /// When the image was built, from its config (absent when the config does not say).
    #[serde(with = "time::serde::rfc3339::option")]
    pub created: Option<OffsetDateTime>,
    /// The platform the image was built for.
    pub platform: Platform,
}

/// The on-disk record, keyed by manifest digest (a record is shared by all its references).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredImage {
    version: u32,
    manifest_digest: Digest,
    manifest_media_type: String,
    config_digest: Digest,
    config: ImageConfig,
    layers: Vec<LayerInfo>,
    size: u64,
    #[serde(with = "time::serde::rfc3339::option")]
    created: Option<OffsetDateTime>,
    platform: Platform,
    #[serde(with = "time::serde::rfc3339")]
    stored_at: OffsetDateTime,
}

impl StoredImage {
    fn as_record(&self, reference: ImageRef) -> ImageRecord {
        ImageRecord {
            reference,
            manifest_digest: self.manifest_digest.clone(),
            config_digest: self.config_digest.clone(),
            config: self.config.clone(),
            layers: self.layers.clone(),
            size: self.size,
            created: self.created,
            platform: self.platform.clone(),
        }
    }

    fn blobs(&self) -> impl Iterator<Item = &Digest> {
        [&self.manifest_digest, &self.config_digest]
            .into_iter()
            .chain(self.layers.iter().map(|l| &l.digest))
    }
}

/// The reference table, `refs.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct RefTable {
    version: u32,
    refs: BTreeMap<ImageRef, Digest>,
}

/// What `prune` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Manifest digests of the image records removed.
    pub removed_images: Vec<Digest>,
    /// Number of blobs removed.
    pub removed_blobs: usize,
    /// Number of ext4 base images removed.
    pub removed_base_images: usize,
    /// Bytes freed on disk (blobs, base images and leftover temporary files; sparse base images
    /// count with their allocated size).
    pub reclaimed_bytes: u64,
}

/// Handle to an image store directory. Cheap to clone; every method works on the files, so two
/// handles (or two processes) on one directory see each other's changes.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
    /// Bounds on what one image may unpack to, for every pull, import and base-image build
    /// through this handle.
    unpack_limits: UnpackLimits,
}

/// An advisory lock on a store file, released on drop.
#[derive(Debug)]
pub(crate) struct StoreLock {
    _lock: Flock<File>,
}

/// A file under `tmp/` that is removed on drop unless it was renamed into place.
#[derive(Debug)]
pub(crate) struct TempPath {
    path: PathBuf,
}

impl TempPath {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        match fs::symlink_metadata(&self.path) {
            Ok(m) if m.is_dir() => {
                if let Err(error) = fs::remove_dir_all(&self.path) {
                    tracing::warn!(path = %self.path.display(), %error, "cannot remove temporary directory");
                }
            }
            Ok(_) => {
                if let Err(error) = fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), %error, "cannot remove temporary file");
                }
            }
            Err(_) => {}
        }
    }
}

/// Streams content into a temporary file while hashing it; `commit` verifies the digest and
/// renames the file into `blobs/`.
#[derive(Debug)]
pub(crate) struct BlobWriter {
    temp: TempPath,
    file: BufWriter<File>,
    hasher: sha2::Sha256,
    len: u64,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl BlobWriter {
    /// The temporary file being written.
    pub(crate) fn path(&self) -> &Path {
        self.temp.path()
    }

    /// Verifies the content against `expected` (when given), makes it durable and moves it into
    /// the blob directory. On any error the temporary file is removed.
    pub(crate) fn commit(
        self,
        store: &ImageStore,
        expected: Option<&Digest>,
    ) -> Result<(Digest, u64), StoreError> {
        let Self {
            temp,
            file,
            hasher,
            len,
        } = self;
        let actual = Digest::from_sha256(hasher.finalize().as_slice());
        if let Some(expected) = expected {
            if *expected != actual {
                return Err(StoreError::DigestMismatch {
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        let write_err = |source| StoreError::Write {
            path: temp.path().to_owned(),
            source,
        };
        let file = file.into_inner().map_err(|e| write_err(e.into_error()))?;
        file.sync_all().map_err(write_err)?;
        file.set_permissions(fs::Permissions::from_mode(0o444))
            .map_err(write_err)?;
        drop(file);
        let dest = store.blob_path(&actual);
        if !dest.exists() {
            fs::rename(temp.path(), &dest).map_err(|source| StoreError::Write {
                path: dest.clone(),
                source,
            })?;
        }
        Ok((actual, len))
    }
}

impl ImageStore {
    /// Opens (creating if needed) the store rooted at `root`.
    ///
    /// # Errors
    /// [`StoreError::CreateDir`] when a store directory cannot be created.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let store = Self {
            root: root.into(),
            unpack_limits: UnpackLimits::default(),
        };
        for dir in [
            store.root.clone(),
            store.root.join("blobs/sha256"),
            store.root.join("images/sha256"),
            store.root.join("rootfs"),
            store.root.join("locks"),
            store.root.join("tmp"),
        ] {
            fs::create_dir_all(&dir).map_err(|source| StoreError::CreateDir {
                path: dir.clone(),
                source,
            })?;
        }
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// This handle with other bounds on what one image may unpack to (the defaults suit real
    /// images; tests set small ones).
    #[must_use]
    pub fn with_unpack_limits(mut self, limits: UnpackLimits) -> Self {
        self.unpack_limits = limits;
        self
    }

    /// The bounds on what one image may unpack to.
    pub fn unpack_limits(&self) -> UnpackLimits {
        self.unpack_limits
    }

    /// Where the blob with `digest` lives (whether or not it is present).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// True when the blob is in the store.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Where the ext4 base image of the manifest `digest` lives (whether or not it is built).
    pub fn base_image_path(&self, manifest: &Digest) -> PathBuf {
        self.root
            .join("rootfs")
            .join(format!("{}.ext4", manifest.hex()))
    }

    fn record_path(&self, manifest: &Digest) -> PathBuf {
        self.root
            .join("images/sha256")
            .join(format!("{}.json", manifest.hex()))
    }

    fn refs_path(&self) -> PathBuf {
        self.root.join("refs.json")
    }

    /// Looks `reference` up. A reference with a digest also finds an image stored under another
    /// name, since content is content.
    ///
    /// # Errors
    /// [`StoreError`] when the reference table or the record cannot be read.
    pub fn lookup(&self, reference: &ImageRef) -> Result<Option<ImageRecord>, StoreError> {
        let refs = self.read_refs()?;
        let manifest = match (refs.refs.get(reference), reference.digest()) {
            (Some(manifest), _) => manifest.clone(),
            (None, Some(digest)) => digest.clone(),
            (None, None) => return Ok(None),
        };
        match self.read_record(&manifest)? {
            Some(stored) => Ok(Some(stored.as_record(reference.clone()))),
            None if refs.refs.contains_key(reference) => Err(StoreError::MissingRecord {
                reference: reference.clone(),
                manifest,
            }),
            None => Ok(None),
        }
    }

    /// Every stored reference with its image, sorted by reference.
    ///
    /// # Errors
    /// [`StoreError`] when the reference table or a record cannot be read.
    pub fn list(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let refs = self.read_refs()?;
        let mut records = Vec::with_capacity(refs.refs.len());
        for (reference, manifest) in refs.refs {
            match self.read_record(&manifest)? {
                Some(stored) => records.push(stored.as_record(reference)),
                None => {
                    tracing::warn!(%reference, %manifest, "reference points at a missing image record; skipped");
                }
            }
        }
        Ok(records)
    }

    /// Removes `reference` and returns the manifest digest it pointed at. The image's blobs and
    /// base image stay until [`ImageStore::prune`] finds no reference using them.
    ///
    /// # Errors
    /// [`StoreError::UnknownReference`] when no such reference is stored; I/O errors otherwise.
    pub fn remove(&self, reference: &ImageRef) -> Result<Digest, StoreError> {
        let _guard = self.lock_refs()?;
        let mut refs = self.read_refs()?;
        let Some(manifest) = refs.refs.remove(reference) else {
            return Err(StoreError::UnknownReference {
                reference: reference.clone(),
            });
        };
        self.write_refs(&refs)?;
        Ok(manifest)
    }

    /// Removes image records, blobs and base images that no reference uses, and leftover
    /// temporary files. Waits up to [`PRUNE_LOCK_TIMEOUT`] for running pulls to finish.
    ///
    /// # Errors
    /// [`StoreError::Busy`] when pulls keep the store busy; I/O errors otherwise.
    pub fn prune(&self) -> Result<PruneReport, StoreError> {
        self.prune_keeping(&[])
    }

    /// Like [`ImageStore::prune`], but also keeps the images in `in_use` (manifest digests), e.g.
    /// the base images of instances whose reference was removed.
    ///
    /// # Errors
    /// As [`ImageStore::prune`].
    pub fn prune_keeping(&self, in_use: &[Digest]) -> Result<PruneReport, StoreError> {
        let _exclusive = self.lock_exclusive(PRUNE_LOCK_TIMEOUT)?;
        let mut report = PruneReport::default();
        let refs = self.read_refs()?;
        let keep_images: BTreeSet<Digest> = refs
            .refs
            .values()
            .cloned()
            .chain(in_use.iter().cloned())
            .collect();

        let mut keep_blobs = BTreeSet::new();
        for (digest, path) in self.list_dir_digests(&self.root.join("images/sha256"), ".json")? {
            if keep_images.contains(&digest) {
                if let Some(stored) = self.read_record(&digest)? {
                    keep_blobs.extend(stored.blobs().cloned());
                }
            } else {
                remove_file(&path)?;
                report.removed_images.push(digest);
            }
        }
        for (digest, path) in self.list_dir_digests(&self.root.join("blobs/sha256"), "")? {
            if !keep_blobs.contains(&digest) {
                report.reclaimed_bytes += allocated_bytes(&path);
                remove_file(&path)?;
                report.removed_blobs += 1;
            }
        }
        for (digest, path) in self.list_dir_digests(&self.root.join("rootfs"), ".ext4")? {
            if !keep_images.contains(&digest) {
                report.reclaimed_bytes += allocated_bytes(&path);
                remove_file(&path)?;
                report.removed_base_images += 1;
            }
        }
        // Writers hold the shared lock while their temporary files exist, so under the
        // exclusive lock everything in tmp/ is a leftover of a crashed process.
        let tmp = self.root.join("tmp");
        for entry in read_dir(&tmp)? {
            let path = entry.path();
            report.reclaimed_bytes += allocated_bytes(&path);
            drop(TempPath { path });
        }
        for entry in read_dir(&self.root.join("locks"))? {
            remove_file(&entry.path())?;
        }
        Ok(report)
    }

    /// Files in `dir` named `<64 hex><suffix>`, with their digest; other names are ignored.
    fn list_dir_digests(
        &self,
        dir: &Path,
        suffix: &str,
    ) -> Result<Vec<(Digest, PathBuf)>, StoreError> {
        let mut found = Vec::new();
        for entry in read_dir(dir)? {
            let name = entry.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(suffix)) else {
                continue;
            };
            if let Ok(digest) = Digest::from_hex(hex) {
                found.push((digest, entry.path()));
            }
        }
        Ok(found)
    }

    /// Reads a whole blob (for manifests and configs; layers are streamed from
    /// [`ImageStore::blob_path`]).
    pub(crate) fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        fs::read(&path).map_err(|source| StoreError::Read { path, source })
    }

    /// A fresh path under `tmp/`, removed on drop.
    pub(crate) fn temp_path(&self, prefix: &str) -> TempPath {
        let suffix: u64 = rand::random();
        TempPath {
            path: self
                .root
                .join("tmp")
                .join(format!("{prefix}-{}-{suffix:016x}", std::process::id())),
        }
    }

    /// A writer for a new blob.
    pub(crate) fn blob_writer(&self) -> Result<BlobWriter, StoreError> {
        let temp = self.temp_path("blob");
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(temp.path())
            .map_err(|source| StoreError::Write {
                path: temp.path().to_owned(),
                source,
            })?;
        Ok(BlobWriter {
            temp,
            file: BufWriter::with_capacity(1 << 20, file),
            hasher: sha2::Sha256::new(),
            len: 0,
        })
    }

    /// Stores `bytes` as a blob, checking them against `expected` when given.
    pub(crate) fn put_blob(
        &self,
        bytes: &[u8],
        expected: Option<&Digest>,
    ) -> Result<Digest, StoreError> {
        let mut writer = self.blob_writer()?;
        writer
            .write_all(bytes)
            .map_err(|source| StoreError::Write {
                path: writer.temp.path().to_owned(),
                source,
            })?;
        writer.commit(self, expected).map(|(digest, _)| digest)
    }

    /// Records an image whose manifest, config and layer blobs are all in the store.
    pub(crate) fn put_image(
        &self,
        manifest_digest: &Digest,
        manifest: &Manifest,
        config: &ConfigFile,
    ) -> Result<(), StoreError> {
        for digest in std::iter::once(manifest_digest)
            .chain(std::iter::once(&manifest.config.digest))
            .chain(manifest.layers.iter().map(|l| &l.digest))
        {
            if !self.has_blob(digest) {
                return Err(StoreError::MissingBlob {
                    digest: digest.clone(),
                    manifest: manifest_digest.clone(),
                });
            }
        }
        let manifest_size = fs::metadata(self.blob_path(manifest_digest))
            .map(|m| m.len())
            .unwrap_or_default();
        let created = config.created.as_deref().and_then(|c| {
            OffsetDateTime::parse(c, &time::format_description::well_known::Rfc3339).ok()
        });
        let stored = StoredImage {
            version: FORMAT_VERSION,
            manifest_digest: manifest_digest.clone(),
            manifest_media_type: manifest.media_type_or_default().to_owned(),
            config_digest: manifest.config.digest.clone(),
            config: config.image_config(),
            layers: manifest
                .layers
                .iter()
                .map(|l| LayerInfo {
                    digest: l.digest.clone(),
                    media_type: l.media_type.clone(),
                    size: l.size,
                })
                .collect(),
            size: manifest_size
                + manifest.config.size
                + manifest.layers.iter().map(|l| l.size).sum::<u64>(),
            created,
            platform: config.platform(),
            stored_at: OffsetDateTime::now_utc(),
        };
        let json = serde_json::to_vec_pretty(&stored).expect("a record always serialises");
        self.write_atomic(&self.record_path(manifest_digest), &json)
    }

    /// The record of the image with manifest `manifest`, seen through `reference`.
    pub(crate) fn record_for(
        &self,
        manifest: &Digest,
        reference: &ImageRef,
    ) -> Result<Option<ImageRecord>, StoreError> {
        Ok(self
            .read_record(manifest)?
            .map(|s| s.as_record(reference.clone())))
    }

    /// True when the image with manifest `manifest` is recorded and all its blobs are present.
    pub(crate) fn is_complete(&self, manifest: &Digest) -> Result<bool, StoreError> {
        Ok(self
            .read_record(manifest)?
            .is_some_and(|s| s.blobs().all(|d| self.has_blob(d))))
    }

    /// Points `reference` at the image with manifest `manifest`.
    pub(crate) fn set_reference(
        &self,
        reference: &ImageRef,
        manifest: &Digest,
    ) -> Result<(), StoreError> {
        let _guard = self.lock_refs()?;
        let mut refs = self.read_refs()?;
        refs.refs.insert(reference.clone(), manifest.clone());
        self.write_refs(&refs)
    }

    /// Every reference and the manifest it points at (reads the reference table only).
    ///
    /// # Errors
    /// [`StoreError`] when the reference table cannot be read.
    pub fn references(&self) -> Result<BTreeMap<ImageRef, Digest>, StoreError> {
        Ok(self.read_refs()?.refs)
    }

    /// Where `reference` points now, if anywhere (reads the reference table only).
    ///
    /// # Errors
    /// [`StoreError`] when the reference table cannot be read.
    pub fn reference_target(&self, reference: &ImageRef) -> Result<Option<Digest>, StoreError> {
        Ok(self.references()?.remove(reference))
    }

    /// Points `reference` back at `previous`, or removes it when it pointed nowhere: how a pull
    /// or import whose image turned out unusable (its base image could not be built) leaves the
    /// reference table as it found it.
    ///
    /// # Errors
    /// [`StoreError`] when the reference table cannot be read or written.
    pub fn restore_reference(
        &self,
        reference: &ImageRef,
        previous: Option<&Digest>,
    ) -> Result<(), StoreError> {
        let _guard = self.lock_refs()?;
        let mut refs = self.read_refs()?;
        match previous {
            Some(manifest) => refs.refs.insert(reference.clone(), manifest.clone()),
            None => refs.refs.remove(reference),
        };
        self.write_refs(&refs)
    }

    fn read_record(&self, manifest: &Digest) -> Result<Option<StoredImage>, StoreError> {
        let path = self.record_path(manifest);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StoreError::Corrupt { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Read { path, source }),
        }
    }

    fn read_refs(&self) -> Result<RefTable, StoreError> {
        let path = self.refs_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| StoreError::Corrupt { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(RefTable {
                version: FORMAT_VERSION,
                refs: BTreeMap::new(),
            }),
            Err(source) => Err(StoreError::Read { path, source }),
        }
    }

    fn write_refs(&self, refs: &RefTable) -> Result<(), StoreError> {
        let table = RefTable {
            version: FORMAT_VERSION,
            refs: refs.refs.clone(),
        };
        let json =
            serde_json::to_vec_pretty(&table).expect("the reference table always serialises");
        self.write_atomic(&self.refs_path(), &json)
    }

    /// Writes `bytes` to `dest` through a temporary file, fsync and rename.
    pub(crate) fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let temp = self.temp_path("write");
        let write_err = |source| StoreError::Write {
            path: dest.to_owned(),
            source,
        };
        let mut file = File::create(temp.path()).map_err(write_err)?;
        file.write_all(bytes).map_err(write_err)?;
        file.sync_all().map_err(write_err)?;
        fs::rename(temp.path(), dest).map_err(write_err)
    }

    /// Shared lock held by every writer (pull, import, base-image build) for its whole run, so
    /// that `prune` never deletes what a writer is about to reference. Blocks while a prune runs.
    pub(crate) fn lock_shared(&self) -> Result<StoreLock, StoreError> {
        lock_file(&self.root.join("store.lock"), FlockArg::LockShared)
    }

    fn lock_exclusive(&self, timeout: Duration) -> Result<StoreLock, StoreError> {
        let path = self.root.join("store.lock");
        let deadline = Instant::now() + timeout;
        loop {
            match lock_file(&path, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(lock),
                Err(StoreError::Lock { source, .. })
                    if source.raw_os_error() == Some(Errno::EWOULDBLOCK as i32) =>
                {
                    if Instant::now() >= deadline {
                        return Err(StoreError::Busy { path });
                    }
                    std::thread::sleep(LOCK_POLL_INTERVAL);
                }
                Err(other) => return Err(other),
            }
        }
    }

    fn lock_refs(&self) -> Result<StoreLock, StoreError> {
        lock_file(&self.root.join("refs.lock"), FlockArg::LockExclusive)
    }

    /// Exclusive lock serialising builders of one base image across processes.
    pub(crate) fn lock_build(&self, manifest: &Digest) -> Result<StoreLock, StoreError> {
        lock_file(
            &self
                .root
                .join("locks")
                .join(format!("{}.lock", manifest.hex())),
            FlockArg::LockExclusive,
        )
    }
}

fn lock_file(path: &Path, arg: FlockArg) -> Result<StoreLock, StoreError> {
    let lock_err = |source| StoreError::Lock {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)
        .map_err(lock_err)?;
    loop {
        match Flock::lock(file, arg) {
            Ok(lock) => return Ok(StoreLock { _lock: lock }),
            Err((f, Errno::EINTR)) => file = f,
            Err((_, errno)) => return Err(lock_err(io::Error::from(errno))),
        }
    }
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>, StoreError> {
    let read_err = |source| StoreError::Read {
        path: dir.to_owned(),
        source,
    };
    fs::read_dir(dir)
        .map_err(read_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err)
}

fn remove_file(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StoreError::Remove {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Bytes allocated on disk for `path` (files only; 0 when it cannot be read).
fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(path)
        .map(|m| if m.is_file() { m.blocks() * 512 } else { 0 })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Descriptor, MEDIA_OCI_CONFIG, MEDIA_OCI_LAYER_TAR, MEDIA_OCI_MANIFEST};

    /// Stores a one-layer image whose layer is `layer` and returns its manifest digest.
    fn put_test_image(store: &ImageStore, layer: &[u8]) -> Digest {
        let layer_digest = store.put_blob(layer, None).unwrap();
        let config = ConfigFile::for_host(
            &ImageConfig {
                cmd: vec!["sh".into()],
                ..ImageConfig::default()
            },
            "2024-01-01T00:00:00Z",
            vec![layer_digest.clone()],
        );
        let config_bytes = serde_json::to_vec(&config).unwrap();
        let config_digest = store.put_blob(&config_bytes, None).unwrap();
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(MEDIA_OCI_MANIFEST.into()),
            config: Descriptor {
                media_type: MEDIA_OCI_CONFIG.into(),
                digest: config_digest,
                size: config_bytes.len() as u64,
                platform: None,
                annotations: None,
            },
            layers: vec![Descriptor {
                media_type: MEDIA_OCI_LAYER_TAR.into(),
                digest: layer_digest,
                size: layer.len() as u64,
                platform: None,
                annotations: None,
            }],
            annotations: None,
        };
        let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
        let manifest_digest = store.put_blob(&manifest_bytes, None).unwrap();
        store
            .put_image(&manifest_digest, &manifest, &config)
            .unwrap();
        manifest_digest
    }

    #[test]
    fn bad_digest_leaves_no_blob_and_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let wrong = Digest::of_bytes(b"something else");
        let err = store.put_blob(b"content", Some(&wrong)).unwrap_err();
        assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
        assert!(!store.has_blob(&wrong));
        assert!(!store.has_blob(&Digest::of_bytes(b"content")));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);

        let good = store
            .put_blob(b"content", Some(&Digest::of_bytes(b"content")))
            .unwrap();
        assert_eq!(store.read_blob(&good).unwrap(), b"content");
    }

    #[test]
    fn references_list_inspect_remove_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let a = put_test_image(&store, b"layer a");
        let b = put_test_image(&store, b"layer b");
        let a_ref = ImageRef::parse("example.com/a:1").unwrap();
        let a_alias = ImageRef::parse("example.com/a:latest").unwrap();
        let b_ref = ImageRef::parse("b").unwrap();
        store.set_reference(&a_ref, &a).unwrap();
        store.set_reference(&a_alias, &a).unwrap();
        store.set_reference(&b_ref, &b).unwrap();

        let listed: Vec<String> = store
            .list()
            .unwrap()
            .iter()
            .map(|r| r.reference.to_string())
            .collect();
        assert_eq!(
            listed,
            [
                "docker.io/library/b:latest",
                "example.com/a:1",
                "example.com/a:latest"
            ]
        );
        let record = store.lookup(&a_ref).unwrap().unwrap();
        assert_eq!(record.manifest_digest, a);
        assert_eq!(record.config.cmd, ["sh"]);
        assert_eq!(record.layers.len(), 1);
        assert!(record.created.is_some());
        // A digest reference finds the content under any name.
        let by_digest = ImageRef::parse(&format!("other/name@{a}")).unwrap();
        assert_eq!(
            store.lookup(&by_digest).unwrap().unwrap().manifest_digest,
            a
        );
        assert!(store
            .lookup(&ImageRef::parse("nope").unwrap())
            .unwrap()
            .is_none());

        // Removing one of two references keeps the image.
        assert_eq!(store.remove(&a_ref).unwrap(), a);
        assert!(matches!(
            store.remove(&a_ref),
            Err(StoreError::UnknownReference { .. })
        ));
        let report = store.prune().unwrap();
        assert!(report.removed_images.is_empty());
        assert_eq!(report.removed_blobs, 0);

        // Removing b's only reference lets prune remove its record and blobs (not a's).
        store.remove(&b_ref).unwrap();
        fs::write(store.base_image_path(&b), b"pretend ext4").unwrap();
        fs::write(dir.path().join("tmp/leftover"), b"x").unwrap();
        let report = store.prune().unwrap();
        assert_eq!(report.removed_images, vec![b.clone()]);
        assert_eq!(report.removed_blobs, 3, "manifest, config and layer of b");
        assert_eq!(report.removed_base_images, 1);
        assert!(!store.base_image_path(&b).exists());
        assert!(!dir.path().join("tmp/leftover").exists());
        assert!(store.is_complete(&a).unwrap());
        assert!(!store.is_complete(&b).unwrap());
    }

    #[test]
    fn prune_keeps_images_in_use_and_waits_for_writers() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let a = put_test_image(&store, b"layer a");
        let report = store.prune_keeping(std::slice::from_ref(&a)).unwrap();
        assert!(report.removed_images.is_empty());
        assert!(store.is_complete(&a).unwrap());

        let writer = store.lock_shared().unwrap();
        let err = store
            .lock_exclusive(Duration::from_millis(100))
            .unwrap_err();
        assert!(matches!(err, StoreError::Busy { .. }), "{err}");
        drop(writer);
        store.lock_exclusive(Duration::from_millis(100)).unwrap();
    }

    #[test]
    fn two_handles_serialise_reference_updates() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let a = put_test_image(&store, b"layer a");
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let store = ImageStore::open(dir.path()).unwrap();
                let a = a.clone();
                std::thread::spawn(move || {
                    for j in 0..10 {
                        let r = ImageRef::parse(&format!("t/img:{i}-{j}")).unwrap();
                        store.set_reference(&r, &a).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(store.list().unwrap().len(), 80, "no update was lost");
    }
}
