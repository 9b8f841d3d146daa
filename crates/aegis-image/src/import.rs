//! Offline ways into the store: root filesystem tarballs, OCI image layouts and `docker save`
//! archives.
//!
//! [`import_rootfs_tar`] turns a plain root filesystem tarball (what `mmdebstrap` writes) into a
//! one-layer OCI image, so the default image the set-up step builds is stored, listed and booted
//! exactly like a pulled one. [`import_archive`] reads OCI image layouts (a directory, or a tar
//! of one) and `docker save` archives (`manifest.json` + layer tars), optionally compressed with
//! gzip or zstd. Archives are read in place: a tar is indexed once and each blob is streamed from
//! its offset, verified and stored; nothing is extracted to disk except when the archive itself
//! is compressed. Building base images is left to [`crate::rootfs`].

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::Digest as _;
use time::OffsetDateTime;

use crate::manifest::{
    ConfigFile, Descriptor, ImageConfig, Index, Manifest, ManifestDocument, ManifestError,
    Platform, ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, MEDIA_DOCKER_CONFIG,
    MEDIA_DOCKER_LAYER_GZIP, MEDIA_DOCKER_LAYER_TAR, MEDIA_DOCKER_MANIFEST,
    MEDIA_DOCKER_MANIFEST_LIST, MEDIA_OCI_CONFIG, MEDIA_OCI_INDEX, MEDIA_OCI_LAYER_GZIP,
    MEDIA_OCI_LAYER_TAR, MEDIA_OCI_LAYER_ZSTD, MEDIA_OCI_MANIFEST,
};
use crate::reference::{Digest, ImageRef, ReferenceError};
use crate::store::{ImageRecord, ImageStore, StoreError};
use crate::tar_reader::{ExtendedHeader, TarError, TarReader, MAX_EXTENDED_HEADER_BYTES};
use crate::unpack::ByteSize;

/// Indexes nested deeper than this are refused (real layouts nest at most twice).
const MAX_INDEX_DEPTH: usize = 4;
/// Symlinks followed inside an archive while looking a member up.
const MAX_MEMBER_LINKS: usize = 40;
/// Largest JSON document (index, manifest, config) read from an archive into memory.
const MAX_DOCUMENT_BYTES: u64 = 16 << 20;
/// Members of an archive indexed. Archives hold a few files per image and layer; this bounds
/// the index's memory for an archive of millions of empty files.
pub const MAX_ARCHIVE_MEMBERS: usize = 100_000;
/// Longest member name (and link target) indexed, Linux's `PATH_MAX`: the names Aegis looks up
/// (`index.json`, `blobs/sha256/<hex>`, `<id>/layer.tar`) are far shorter, so longer ones are
/// skipped rather than kept in memory.
const MAX_MEMBER_NAME_BYTES: usize = 4096;
/// Media type docker uses for zstd layers in `docker save` archives.
const MEDIA_DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file or directory could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The archive, directory or member path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Neither an OCI layout (`index.json`) nor a `docker save` archive (`manifest.json`).
    #[error("{path} is neither an OCI image layout (no index.json) nor a docker save archive (no manifest.json)")]
    NotAnImage {
        /// The archive or directory.
        path: PathBuf,
    },
    /// The archive refers to a member it does not contain.
    #[error("{archive} has no member {member:?}")]
    MissingMember {
        /// The archive or directory.
        archive: PathBuf,
        /// The member path.
        member: String,
    },
    /// A member path in `manifest.json` tries to leave the archive.
    #[error("{archive} refers to {member:?}, which points outside the archive")]
    UnsafeMember {
        /// The archive or directory.
        archive: PathBuf,
        /// The member path.
        member: String,
    },
    /// `index.json` or `manifest.json` is malformed.
    #[error("{member} in {archive} is malformed")]
    Document {
        /// The archive or directory.
        archive: PathBuf,
        /// The document.
        member: String,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A manifest, index or config is unusable.
    #[error("cannot import an image from {archive}")]
    Manifest {
        /// The archive or directory.
        archive: PathBuf,
        /// What is wrong.
        #[source]
        source: ManifestError,
    },
    /// A blob could not be stored (its digest did not match, or the store failed).
    #[error("cannot store {member} from {archive}")]
    Blob {
        /// The archive or directory.
        archive: PathBuf,
        /// The member the blob came from.
        member: String,
        /// What failed.
        #[source]
        source: StoreError,
    },
    /// The store failed outside of blob copying.
    #[error("cannot record images from {archive}")]
    Store {
        /// The archive or directory.
        archive: PathBuf,
        /// What failed.
        #[source]
        source: StoreError,
    },
    /// A name in the archive is not a valid reference.
    #[error("{archive} names an image {name:?}, which is not a valid reference")]
    BadName {
        /// The archive or directory.
        archive: PathBuf,
        /// The name.
        name: String,
        /// Why it is invalid.
        #[source]
        source: ReferenceError,
    },
    /// An image in the archive has no name and none was given.
    #[error("image {manifest} in {archive} has no name")]
    Unnamed {
        /// The archive or directory.
        archive: PathBuf,
        /// Its manifest digest.
        manifest: Digest,
    },
    /// A compressed archive decompresses to more than the store's image size limit
    /// ([`crate::unpack::UnpackLimits::max_unpacked_bytes`]); the partial copy was removed.
    #[error("{archive} decompresses to more than {limit} bytes ({}), the limit on an image's unpacked size", ByteSize(*.limit))]
    TooLarge {
        /// The archive.
        archive: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
    /// The archive has more than [`MAX_ARCHIVE_MEMBERS`] members.
    #[error(
        "{archive} has more than {MAX_ARCHIVE_MEMBERS} members, the limit on an image archive"
    )]
    TooManyMembers {
        /// The archive.
        archive: PathBuf,
    },
    /// An extended tar header larger than [`MAX_EXTENDED_HEADER_BYTES`]; refused unread.
    #[error("{archive} has a {kind} of {size} bytes, more than the {MAX_EXTENDED_HEADER_BYTES}-byte limit on tar extended headers")]
    HeaderTooLarge {
        /// The archive.
        archive: PathBuf,
        /// Which kind of header.
        kind: ExtendedHeader,
        /// The size it claims.
        size: u64,
    },
    /// A docker layer does not hash to the diff id its config lists.
    #[error(
        "layer {member} in {archive} hashes to {actual}, but the image config expects {expected}"
    )]
    DiffIdMismatch {
        /// The archive or directory.
        archive: PathBuf,
        /// The layer member.
        member: String,
        /// The diff id from the config.
        expected: Digest,
        /// The digest of the layer.
        actual: Digest,
    },
}

impl ImportError {
    /// What the user can do about the error, when there is something.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Unnamed { archive, .. } => Some(format!(
                "give it a name: `aegis image import {} --tag NAME:TAG`",
                archive.display()
            )),
            Self::NotAnImage { .. } => Some(
                "create one with `docker save IMAGE -o FILE.tar` or `skopeo copy … oci-archive:FILE.tar`"
                    .to_owned(),
            ),
            Self::Store { source, .. } | Self::Blob { source, .. } => source.hint(),
            Self::Read { .. }
            | Self::MissingMember { .. }
            | Self::UnsafeMember { .. }
            | Self::Document { .. }
            | Self::Manifest { .. }
            | Self::BadName { .. }
            | Self::DiffIdMismatch { .. }
            | Self::TooLarge { .. }
            | Self::TooManyMembers { .. }
            | Self::HeaderTooLarge { .. } => None,
        }
    }
}

/// How to name what an archive contains.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// A reference for images the archive does not name, and the repository for images named
    /// only by a tag (OCI layouts often carry just `org.opencontainers.image.ref.name: latest`).
    pub name: Option<ImageRef>,
}

/// Stores the root filesystem tarball `tar_path` (plain, gzip or zstd) as a one-layer image
/// under `reference`, with `config` as its run-time settings. The tarball becomes the layer blob
/// as is; the generated config and manifest are OCI documents. The image's creation time is the
/// tarball's mtime, so importing the same file twice yields the same manifest digest (and reuses
/// its base image).
///
/// Blocking: hashes and copies the whole tarball.
///
/// # Errors
/// [`ImportError`] naming the file or store step that failed.
pub fn import_rootfs_tar(
    store: &ImageStore,
    tar_path: &Path,
    reference: &ImageRef,
    config: &ImageConfig,
) -> Result<ImageRecord, ImportError> {
    let archive = tar_path.to_owned();
    let read_err = |source| ImportError::Read {
        path: archive.clone(),
        source,
    };
    let store_err = |source| ImportError::Store {
        archive: archive.clone(),
        source,
    };
    let _writer = store.lock_shared().map_err(store_err)?;
    let file = File::open(tar_path).map_err(read_err)?;
    let mtime = file
        .metadata()
        .and_then(|m| m.modified())
        .map_err(read_err)?;
    let created = OffsetDateTime::from(mtime)
        .replace_nanosecond(0)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .format(&time::format_description::well_known::Rfc3339)
        .expect("an RFC 3339 date always formats");

    let member = tar_path.display().to_string();
    let (layer_digest, layer_size) =
        copy_blob(store, file, None).map_err(|source| match source {
            CopyError::Read(source) => read_err(source),
            CopyError::Store(source) => ImportError::Blob {
                archive: archive.clone(),
                member: member.clone(),
                source,
            },
        })?;
    let compression = sniff_compression(&store.blob_path(&layer_digest)).map_err(read_err)?;
    let (layer_media_type, diff_id) = match compression {
        Compression::None => (MEDIA_OCI_LAYER_TAR, layer_digest.clone()),
        Compression::Gzip => (
            MEDIA_OCI_LAYER_GZIP,
            uncompressed_digest(&store.blob_path(&layer_digest), compression).map_err(read_err)?,
        ),
        Compression::Zstd => (
            MEDIA_OCI_LAYER_ZSTD,
            uncompressed_digest(&store.blob_path(&layer_digest), compression).map_err(read_err)?,
        ),
    };
    let config_file = ConfigFile::for_host(config, &created, vec![diff_id]);
    let config_bytes = serde_json::to_vec(&config_file).expect("a config always serialises");
    let config_digest = store.put_blob(&config_bytes, None).map_err(store_err)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_OCI_MANIFEST.to_owned()),
        config: descriptor(MEDIA_OCI_CONFIG, config_digest, config_bytes.len() as u64),
        layers: vec![descriptor(layer_media_type, layer_digest, layer_size)],
        annotations: None,
    };
    let manifest_bytes = serde_json::to_vec(&manifest).expect("a manifest always serialises");
    let manifest_digest = store.put_blob(&manifest_bytes, None).map_err(store_err)?;
    store
        .put_image(&manifest_digest, &manifest, &config_file)
        .map_err(store_err)?;
    store
        .set_reference(reference, &manifest_digest)
        .map_err(store_err)?;
    store
        .record_for(&manifest_digest, reference)
        .map_err(store_err)?
        .ok_or_else(|| {
            store_err(StoreError::MissingRecord {
                reference: reference.clone(),
                manifest: manifest_digest.clone(),
            })
        })
}

/// Imports every image in an OCI image layout (directory or tar) or a `docker save` archive,
/// under the names the archive gives (annotations, `RepoTags`) completed by `options`. Returns
/// one record per stored reference.
///
/// Blocking: reads and hashes every blob.
///
/// # Errors
/// [`ImportError`] naming the archive and member that failed. Blobs stored before the failure
/// stay (they are valid content) until `prune` removes them; no reference is created for an
/// image whose blobs are not all present.
pub fn import_archive(
    store: &ImageStore,
    path: &Path,
    options: &ImportOptions,
) -> Result<Vec<ImageRecord>, ImportError> {
    let archive = path.to_owned();
    let _writer = store.lock_shared().map_err(|source| ImportError::Store {
        archive: archive.clone(),
        source,
    })?;
    let meta = fs::metadata(path).map_err(|source| ImportError::Read {
        path: archive.clone(),
        source,
    })?;
    // A compressed archive cannot be read at offsets: decompress it into the store's tmp/ first
    // (removed when the import ends).
    let mut decompressed_copy = None;
    let source = if meta.is_dir() {
        Source::Dir(path.to_owned())
    } else {
        let read_err = |source| ImportError::Read {
            path: archive.clone(),
            source,
        };
        let compression = sniff_compression(path).map_err(read_err)?;
        let tar_path = if compression == Compression::None {
            path.to_owned()
        } else {
            let temp = store.temp_path("import");
            let mut out = File::create(temp.path()).map_err(|source| ImportError::Read {
                path: temp.path().to_owned(),
                source,
            })?;
            let input =
                decompressor(File::open(path).map_err(read_err)?, compression).map_err(read_err)?;
            // A small compressed archive can expand without end (a gzip bomb): stop one byte
            // past the limit, so the disk fills no further than it.
            let limit = store.unpack_limits().max_unpacked_bytes;
            let copied =
                io::copy(&mut input.take(limit.saturating_add(1)), &mut out).map_err(read_err)?;
            if copied > limit {
                return Err(ImportError::TooLarge { archive, limit });
            }
            let p = temp.path().to_owned();
            decompressed_copy = Some(temp);
            p
        };
        Source::Tar(TarIndex::build(&tar_path, &archive)?)
    };
    let importer = Importer {
        store,
        archive,
        source,
        options,
    };
    let imported = if importer.source.exists("index.json") {
        importer.import_oci_layout()
    } else if importer.source.exists("manifest.json") {
        importer.import_docker_save()
    } else {
        Err(ImportError::NotAnImage {
            path: importer.archive,
        })
    };
    drop(decompressed_copy);
    imported
}

fn descriptor(media_type: &str, digest: Digest, size: u64) -> Descriptor {
    Descriptor {
        media_type: media_type.to_owned(),
        digest,
        size,
        platform: None,
        annotations: None,
    }
}

/// Where archive members are read from.
enum Source {
    Dir(PathBuf),
    Tar(TarIndex),
}

impl Source {
    fn exists(&self, member: &str) -> bool {
        match self {
            Self::Dir(root) => root.join(member).is_file(),
            Self::Tar(index) => index.lookup(member).is_some(),
        }
    }
}

/// Regular files and links of an uncompressed tar, by normalised path.
struct TarIndex {
    path: PathBuf,
    members: HashMap<String, TarMember>,
}

enum TarMember {
    File { offset: u64, size: u64 },
    Symlink(String),
    HardLink(String),
}

impl TarIndex {
    /// Indexes the tar at `path`; errors name `archive`, the file the user gave.
    fn build(path: &Path, archive: &Path) -> Result<Self, ImportError> {
        let read_err = |source| ImportError::Read {
            path: archive.to_owned(),
            source,
        };
        let file = File::open(path).map_err(read_err)?;
        // The archive is on disk already: reading it costs no space, so no byte budget.
        let mut reader = TarReader::new(BufReader::new(file), u64::MAX);
        let mut members = HashMap::new();
        loop {
            let entry = match reader.next_entry() {
                Ok(Some(entry)) => entry,
                Ok(None) => break,
                Err(TarError::Read(source)) => return Err(read_err(source)),
                Err(TarError::ExtendedHeaderTooLarge { kind, size }) => {
                    return Err(ImportError::HeaderTooLarge {
                        archive: archive.to_owned(),
                        kind,
                        size,
                    })
                }
                // Only sizes summing past 2^64 exceed a budget of u64::MAX.
                Err(TarError::OverBudget) => {
                    return Err(read_err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "entry sizes past 2^64 bytes",
                    )))
                }
            };
            if members.len() >= MAX_ARCHIVE_MEMBERS {
                return Err(ImportError::TooManyMembers {
                    archive: archive.to_owned(),
                });
            }
            if entry.path.len() > MAX_MEMBER_NAME_BYTES
                || entry.link_name.len() > MAX_MEMBER_NAME_BYTES
            {
                continue;
            }
            let Some(name) = normalise_member(&entry.path) else {
                continue;
            };
            let kind = entry.header.entry_type();
            let member = if kind.is_file() || kind.is_contiguous() {
                TarMember::File {
                    offset: entry.data_position,
                    size: entry.size,
                }
            } else if kind.is_symlink() || kind.is_hard_link() {
                let target = String::from_utf8_lossy(&entry.link_name).into_owned();
                if kind.is_symlink() {
                    TarMember::Symlink(target)
                } else {
                    TarMember::HardLink(target)
                }
            } else {
                continue;
            };
            members.insert(name, member);
        }
        Ok(Self {
            path: path.to_owned(),
            members,
        })
    }

    /// Offset and size of `member`, following links inside the archive.
    fn lookup(&self, member: &str) -> Option<(u64, u64)> {
        let mut name = normalise_member(member.as_bytes())?;
        for _ in 0..MAX_MEMBER_LINKS {
            match self.members.get(&name)? {
                TarMember::File { offset, size } => return Some((*offset, *size)),
                TarMember::HardLink(target) => name = normalise_member(target.as_bytes())?,
                TarMember::Symlink(target) => {
                    // Relative to the link's directory; `..` may not leave the archive.
                    let dir = name.rsplit_once('/').map_or("", |(d, _)| d);
                    name = resolve_relative(dir, target)?;
                }
            }
        }
        None
    }
}

/// `a/./b` → `a/b`; `None` for paths with `..` (never followed in archives) or empty paths.
fn normalise_member(raw: &[u8]) -> Option<String> {
    let mut parts = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return None,
            p => parts.push(String::from_utf8_lossy(p).into_owned()),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Resolves a symlink `target` found in directory `dir` of an archive; `None` if it leaves it.
fn resolve_relative(dir: &str, target: &str) -> Option<String> {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        dir.split('/').filter(|p| !p.is_empty()).collect()
    };
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

enum CopyError {
    Read(io::Error),
    Store(StoreError),
}

/// Streams `reader` into a new blob, verified against `expected` when given. Read errors
/// (the source's fault) are told apart from write errors (the store's).
fn copy_blob(
    store: &ImageStore,
    reader: impl Read,
    expected: Option<&Digest>,
) -> Result<(Digest, u64), CopyError> {
    struct Tracked<R> {
        inner: R,
        failed: bool,
    }
    impl<R: Read> Read for Tracked<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.inner.read(buf).inspect_err(|_| self.failed = true)
        }
    }
    let mut writer = store.blob_writer().map_err(CopyError::Store)?;
    let mut tracked = Tracked {
        inner: reader,
        failed: false,
    };
    if let Err(e) = io::copy(&mut tracked, &mut writer) {
        return Err(if tracked.failed {
            CopyError::Read(e)
        } else {
            CopyError::Store(StoreError::Write {
                path: writer.path().to_owned(),
                source: e,
            })
        });
    }
    writer.commit(store, expected).map_err(CopyError::Store)
}

/// One image found in an archive, before its blobs are stored.
struct Candidate {
    manifest: Descriptor,
    names: Vec<String>,
}

struct Importer<'a> {
    store: &'a ImageStore,
    archive: PathBuf,
    source: Source,
    options: &'a ImportOptions,
}

impl Importer<'_> {
    fn open(&self, member: &str) -> Result<(Box<dyn Read + '_>, u64), ImportError> {
        let missing = || ImportError::MissingMember {
            archive: self.archive.clone(),
            member: member.to_owned(),
        };
        let read_err = |path: &Path| {
            let path = path.to_owned();
            move |source| ImportError::Read { path, source }
        };
        match &self.source {
            Source::Dir(root) => {
                let rel = normalise_member(member.as_bytes()).ok_or_else(|| {
                    ImportError::UnsafeMember {
                        archive: self.archive.clone(),
                        member: member.to_owned(),
                    }
                })?;
                let path = root.join(rel);
                let file = match File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing()),
                    Err(e) => return Err(read_err(&path)(e)),
                };
                let size = file.metadata().map_err(read_err(&path))?.len();
                Ok((Box::new(BufReader::new(file)), size))
            }
            Source::Tar(index) => {
                let (offset, size) = index.lookup(member).ok_or_else(missing)?;
                let mut file = File::open(&index.path).map_err(read_err(&index.path))?;
                file.seek(SeekFrom::Start(offset))
                    .map_err(read_err(&index.path))?;
                Ok((Box::new(BufReader::new(file).take(size)), size))
            }
        }
    }

    fn read_document(&self, member: &str) -> Result<Vec<u8>, ImportError> {
        let (reader, size) = self.open(member)?;
        let mut bytes =
            Vec::with_capacity(usize::try_from(size.min(MAX_DOCUMENT_BYTES)).unwrap_or(0));
        reader
            .take(MAX_DOCUMENT_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|source| ImportError::Read {
                path: self.archive.join(member),
                source,
            })?;
        Ok(bytes)
    }

    fn manifest_err(&self, source: ManifestError) -> ImportError {
        ImportError::Manifest {
            archive: self.archive.clone(),
            source,
        }
    }

    fn store_err(&self, source: StoreError) -> ImportError {
        ImportError::Store {
            archive: self.archive.clone(),
            source,
        }
    }

    /// Stores the blob `digest` of an OCI layout (skipped when already stored).
    fn store_oci_blob(&self, digest: &Digest) -> Result<(), ImportError> {
        if self.store.has_blob(digest) {
            return Ok(());
        }
        let member = format!("blobs/sha256/{}", digest.hex());
        let (reader, _) = self.open(&member)?;
        copy_blob(self.store, reader, Some(digest))
            .map(|_| ())
            .map_err(|e| match e {
                CopyError::Read(source) => ImportError::Read {
                    path: self.archive.join(&member),
                    source,
                },
                CopyError::Store(source) => ImportError::Blob {
                    archive: self.archive.clone(),
                    member,
                    source,
                },
            })
    }

    fn read_oci_blob(&self, digest: &Digest) -> Result<Vec<u8>, ImportError> {
        self.store_oci_blob(digest)?;
        self.store.read_blob(digest).map_err(|e| self.store_err(e))
    }

    fn import_oci_layout(&self) -> Result<Vec<ImageRecord>, ImportError> {
        let index_bytes = self.read_document("index.json")?;
        let index: Index =
            serde_json::from_slice(&index_bytes).map_err(|source| ImportError::Document {
                archive: self.archive.clone(),
                member: "index.json".to_owned(),
                source,
            })?;
        let host = Platform::host();
        let mut candidates = Vec::new();
        for entry in &index.manifests {
            let names = entry_names(entry);
            let is_index = matches!(
                entry.media_type.as_str(),
                MEDIA_OCI_INDEX | MEDIA_DOCKER_MANIFEST_LIST
            );
            if is_index {
                let manifest = self.select_from_index(&entry.digest, &host, 0)?;
                candidates.push(Candidate { manifest, names });
            } else if entry.platform.as_ref().is_none_or(|p| host.runs(p)) {
                candidates.push(Candidate {
                    manifest: entry.clone(),
                    names,
                });
            }
        }
        if candidates.is_empty() {
            return Err(self.manifest_err(ManifestError::NoMatchingPlatform {
                digest: Digest::of_bytes(&index_bytes),
                wanted: host,
                available: index
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref().map(ToString::to_string))
                    .collect::<Vec<_>>()
                    .join(", "),
            }));
        }
        // Name every image before storing anything, so an unnamed image fails early.
        let mut planned = Vec::new();
        for candidate in candidates {
            let refs = self.references(&candidate.names, &candidate.manifest.digest)?;
            planned.push((candidate.manifest, refs));
        }
        let mut records = Vec::new();
        for (descriptor, refs) in planned {
            let bytes = self.read_oci_blob(&descriptor.digest)?;
            let manifest = match ManifestDocument::parse(&bytes, &descriptor.digest)
                .map_err(|e| self.manifest_err(e))?
            {
                ManifestDocument::Manifest(m) => m,
                ManifestDocument::Index(_) => {
                    return Err(self.manifest_err(ManifestError::UnsupportedMediaType {
                        digest: descriptor.digest.clone(),
                        media_type: MEDIA_OCI_INDEX.to_owned(),
                    }))
                }
            };
            let config_bytes = self.read_oci_blob(&manifest.config.digest)?;
            for layer in &manifest.layers {
                self.store_oci_blob(&layer.digest)?;
            }
            records.extend(self.record(&descriptor.digest, &manifest, &config_bytes, &refs)?);
        }
        Ok(records)
    }

    fn select_from_index(
        &self,
        digest: &Digest,
        host: &Platform,
        depth: usize,
    ) -> Result<Descriptor, ImportError> {
        if depth >= MAX_INDEX_DEPTH {
            return Err(self.manifest_err(ManifestError::NestedTooDeep {
                digest: digest.clone(),
            }));
        }
        let bytes = self.read_oci_blob(digest)?;
        match ManifestDocument::parse(&bytes, digest).map_err(|e| self.manifest_err(e))? {
            ManifestDocument::Index(index) => {
                let entry = index
                    .select(host, digest)
                    .map_err(|e| self.manifest_err(e))?
                    .clone();
                if matches!(
                    entry.media_type.as_str(),
                    MEDIA_OCI_INDEX | MEDIA_DOCKER_MANIFEST_LIST
                ) {
                    self.select_from_index(&entry.digest, host, depth + 1)
                } else {
                    Ok(entry)
                }
            }
            ManifestDocument::Manifest(_) => Ok(Descriptor {
                media_type: MEDIA_OCI_MANIFEST.to_owned(),
                digest: digest.clone(),
                size: bytes.len() as u64,
                platform: None,
                annotations: None,
            }),
        }
    }

    fn import_docker_save(&self) -> Result<Vec<ImageRecord>, ImportError> {
        #[derive(Deserialize)]
        struct Entry {
            #[serde(rename = "Config")]
            config: String,
            #[serde(rename = "RepoTags", default)]
            repo_tags: Option<Vec<String>>,
            #[serde(rename = "Layers")]
            layers: Vec<String>,
        }
        let bytes = self.read_document("manifest.json")?;
        let entries: Vec<Entry> =
            serde_json::from_slice(&bytes).map_err(|source| ImportError::Document {
                archive: self.archive.clone(),
                member: "manifest.json".to_owned(),
                source,
            })?;
        let mut records = Vec::new();
        for entry in entries {
            let (config_digest, config_bytes) = self.store_docker_member(&entry.config)?;
            let config = ConfigFile::parse(&config_bytes, &config_digest)
                .map_err(|e| self.manifest_err(e))?;
            // Name before storing layers, so an unnamed image fails early.
            let names = entry.repo_tags.clone().unwrap_or_default();
            let refs = self.references(&names, &config_digest)?;
            let mut layers = Vec::new();
            for (i, member) in entry.layers.iter().enumerate() {
                let (digest, size) = self.store_docker_layer(member)?;
                let path = self.store.blob_path(&digest);
                let compression = sniff_compression(&path).map_err(|source| ImportError::Read {
                    path: path.clone(),
                    source,
                })?;
                let media_type = match compression {
                    Compression::None => MEDIA_DOCKER_LAYER_TAR,
                    Compression::Gzip => MEDIA_DOCKER_LAYER_GZIP,
                    Compression::Zstd => MEDIA_DOCKER_LAYER_ZSTD,
                };
                if compression == Compression::None {
                    if let Some(expected) = config.rootfs.diff_ids.get(i) {
                        if *expected != digest {
                            return Err(ImportError::DiffIdMismatch {
                                archive: self.archive.clone(),
                                member: member.clone(),
                                expected: expected.clone(),
                                actual: digest,
                            });
                        }
                    }
                }
                layers.push(descriptor(media_type, digest, size));
            }
            let manifest = Manifest {
                schema_version: 2,
                media_type: Some(MEDIA_DOCKER_MANIFEST.to_owned()),
                config: descriptor(
                    MEDIA_DOCKER_CONFIG,
                    config_digest,
                    config_bytes.len() as u64,
                ),
                layers,
                annotations: None,
            };
            let manifest_bytes =
                serde_json::to_vec(&manifest).expect("a manifest always serialises");
            let manifest_digest = self
                .store
                .put_blob(&manifest_bytes, None)
                .map_err(|e| self.store_err(e))?;
            records.extend(self.record(&manifest_digest, &manifest, &config_bytes, &refs)?);
        }
        Ok(records)
    }

    /// The digest a docker-save member name promises: `<hex>.json`, `<hex>/layer.tar` in old
    /// archives are ids, not content digests, except the config's; `blobs/sha256/<hex>` is one.
    fn promised_digest(member: &str, is_config: bool) -> Option<Digest> {
        if let Some(hex) = member.strip_prefix("blobs/sha256/") {
            return Digest::from_hex(hex).ok();
        }
        if is_config {
            return member
                .strip_suffix(".json")
                .and_then(|hex| Digest::from_hex(hex).ok());
        }
        None
    }

    fn store_docker_member(&self, member: &str) -> Result<(Digest, Vec<u8>), ImportError> {
        let expected = Self::promised_digest(member, true);
        let bytes = self.read_document(member)?;
        let digest = self
            .store
            .put_blob(&bytes, expected.as_ref())
            .map_err(|source| ImportError::Blob {
                archive: self.archive.clone(),
                member: member.to_owned(),
                source,
            })?;
        Ok((digest, bytes))
    }

    fn store_docker_layer(&self, member: &str) -> Result<(Digest, u64), ImportError> {
        let expected = Self::promised_digest(member, false);
        if let Some(digest) = &expected {
            if self.store.has_blob(digest) {
                let size = fs::metadata(self.store.blob_path(digest))
                    .map(|m| m.len())
                    .unwrap_or_default();
                return Ok((digest.clone(), size));
            }
        }
        let (reader, _) = self.open(member)?;
        copy_blob(self.store, reader, expected.as_ref()).map_err(|e| match e {
            CopyError::Read(source) => ImportError::Read {
                path: self.archive.join(member),
                source,
            },
            CopyError::Store(source) => ImportError::Blob {
                archive: self.archive.clone(),
                member: member.to_owned(),
                source,
            },
        })
    }

    /// The references for an image named `names` in the archive: full references as they are,
    /// bare tags joined to `options.name`'s repository, and `options.name` itself when the
    /// archive names the image not at all.
    fn references(&self, names: &[String], id: &Digest) -> Result<Vec<ImageRef>, ImportError> {
        let mut refs = Vec::new();
        for name in names {
            let bare_tag = !name.contains(['/', ':', '@']);
            let parsed = match (&self.options.name, bare_tag) {
                (Some(base), true) => base.with_tag(name),
                (None, true) => continue,
                (_, false) => ImageRef::parse(name),
            };
            refs.push(parsed.map_err(|source| ImportError::BadName {
                archive: self.archive.clone(),
                name: name.clone(),
                source,
            })?);
        }
        if refs.is_empty() {
            match &self.options.name {
                Some(name) => refs.push(name.clone()),
                None => {
                    return Err(ImportError::Unnamed {
                        archive: self.archive.clone(),
                        manifest: id.clone(),
                    })
                }
            }
        }
        refs.dedup();
        Ok(refs)
    }

    fn record(
        &self,
        manifest_digest: &Digest,
        manifest: &Manifest,
        config_bytes: &[u8],
        refs: &[ImageRef],
    ) -> Result<Vec<ImageRecord>, ImportError> {
        let config = ConfigFile::parse(config_bytes, &manifest.config.digest)
            .map_err(|e| self.manifest_err(e))?;
        config
            .check_platform(manifest_digest)
            .map_err(|e| self.manifest_err(e))?;
        self.store
            .put_image(manifest_digest, manifest, &config)
            .map_err(|e| self.store_err(e))?;
        let mut records = Vec::new();
        for reference in refs {
            self.store
                .set_reference(reference, manifest_digest)
                .map_err(|e| self.store_err(e))?;
            if let Some(record) = self
                .store
                .record_for(manifest_digest, reference)
                .map_err(|e| self.store_err(e))?
            {
                records.push(record);
            }
        }
        Ok(records)
    }
}

/// Names an index entry carries: containerd's full name first, then the OCI ref name.
fn entry_names(entry: &Descriptor) -> Vec<String> {
    let Some(annotations) = &entry.annotations else {
        return Vec::new();
    };
    let mut names = Vec::new();
    if let Some(full) = annotations.get(ANNOTATION_CONTAINERD_NAME) {
        names.push(full.clone());
    }
    if let Some(r) = annotations.get(ANNOTATION_REF_NAME) {
        // Skip a bare tag that only repeats the full name's tag.
        let redundant = names.iter().any(|n| n.ends_with(&format!(":{r}")));
        if !redundant {
            names.push(r.clone());
        }
    }
    names
}

/// The compression of a file, from its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

fn sniff_compression(path: &Path) -> io::Result<Compression> {
    let mut reader = BufReader::new(File::open(path)?);
    let magic = reader.fill_buf()?;
    Ok(if magic.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    })
}

fn decompressor(file: File, compression: Compression) -> io::Result<Box<dyn Read>> {
    let reader = BufReader::new(file);
    Ok(match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader)?),
    })
}

/// The digest of the decompressed content of `path` (a layer's diff id).
fn uncompressed_digest(path: &Path, compression: Compression) -> io::Result<Digest> {
    let mut reader = decompressor(File::open(path)?, compression)?;
    let mut hasher = sha2::Sha256::new();
    io::copy(&mut reader, &mut hasher)?;
    Ok(Digest::from_sha256(hasher.finalize().as_slice()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// An archive of more members than any image needs is refused while indexing, before the
    /// index holds them all.
    #[test]
    fn the_archive_index_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("many.tar");
        let mut builder = tar::Builder::new(std::io::BufWriter::new(File::create(&path).unwrap()));
        let mut header = tar::Header::new_gnu();
        header.set_size(0);
        header.set_mode(0o644);
        for i in 0..=MAX_ARCHIVE_MEMBERS {
            builder
                .append_data(&mut header, format!("m{i}"), &b""[..])
                .unwrap();
        }
        builder.into_inner().unwrap();
        let err = TarIndex::build(&path, &path).err().unwrap();
        assert!(matches!(err, ImportError::TooManyMembers { .. }), "{err:?}");
        assert!(
            err.to_string()
                .ends_with("has more than 100000 members, the limit on an image archive"),
            "{err}"
        );
    }

    #[test]
    fn over_long_member_names_are_not_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("long.tar");
        let mut builder = tar::Builder::new(File::create(&path).unwrap());
        let long = "n".repeat(MAX_MEMBER_NAME_BYTES + 1);
        let mut header = tar::Header::new_gnu();
        header.set_size(0);
        header.set_mode(0o644);
        builder.append_data(&mut header, &long, &b""[..]).unwrap();
        builder
            .append_data(&mut header, "index.json", &b""[..])
            .unwrap();
        builder.into_inner().unwrap();
        let index = TarIndex::build(&path, &path).ok().unwrap();
        assert_eq!(index.members.len(), 1);
        assert!(index.lookup("index.json").is_some());
    }

    #[test]
    fn archive_member_paths_stay_inside() {
        assert_eq!(normalise_member(b"./a/./b").as_deref(), Some("a/b"));
        assert_eq!(normalise_member(b"/abs"), Some("abs".to_owned()));
        assert_eq!(normalise_member(b"a/../b"), None);
        assert_eq!(
            resolve_relative("x/y", "../z/layer.tar").as_deref(),
            Some("x/z/layer.tar")
        );
        assert_eq!(resolve_relative("x", "../../etc/passwd"), None);
        assert_eq!(resolve_relative("x", "/top").as_deref(), Some("top"));
    }

    #[test]
    fn names_combine_annotations_and_options() {
        let mut annotations = BTreeMap::new();
        annotations.insert(
            ANNOTATION_CONTAINERD_NAME.to_owned(),
            "docker.io/library/a:1".to_owned(),
        );
        annotations.insert(ANNOTATION_REF_NAME.to_owned(), "1".to_owned());
        let entry = Descriptor {
            media_type: MEDIA_OCI_MANIFEST.to_owned(),
            digest: Digest::of_bytes(b"m"),
            size: 1,
            platform: None,
            annotations: Some(annotations),
        };
        assert_eq!(entry_names(&entry), ["docker.io/library/a:1"]);
    }
}
