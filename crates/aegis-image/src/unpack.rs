//! Applies image layers, bottom first, into a staging directory — safely, and without root.
//!
//! The daemon is not root, so it cannot `chown` or `mknod` on the host. Regular file contents,
//! directories and symlinks are therefore written into the staging directory with permissive
//! host modes, and the real metadata — owner, group, mode including setuid/setgid/sticky, device
//! numbers, xattrs, mtime — is kept in a table keyed by path ([`RootfsTree::entries`]). Device
//! nodes and fifos exist only in the table. [`crate::ext4`] later builds the file system from the
//! staging directory and applies the table.
//!
//! Layer semantics follow the OCI image spec: later layers override earlier entries; `.wh.NAME`
//! deletes NAME from lower layers and `.wh..wh..opq` hides a directory's lower contents; both
//! remove entries from the staging directory and from the table.
//!
//! Safety: no entry may escape the root. Entry paths are split into components; `..` is refused,
//! a leading `/` is ignored (absolute paths land inside the root, as with docker). Every parent
//! directory is resolved component by component with `symlink_metadata`, never through the OS's
//! path walk: a symlink met on the way is interpreted as if the root were `/` (its target is
//! re-resolved inside the root, `..` stops at the root), so `evil -> /` followed by `evil/etc/x`
//! writes `<root>/etc/x`, not the host's `/etc/x`. Final components are never followed: an
//! existing entry is unlinked before a new one is created with `O_EXCL|O_NOFOLLOW`.
//!
//! Bounds ([`UnpackLimits`]): a hostile image must not fill the disk or the daemon's memory, so
//! one image may unpack to at most `max_unpacked_bytes` of tar stream (a gzip bomb is refused at
//! the entry that crosses it, from its header), hold at most `max_entries` entries and at most
//! `max_metadata_bytes` of paths, link targets and xattrs in the table. Extended tar headers are
//! bounded by [`crate::tar_reader`], which frames the stream.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::reference::Digest;
use crate::tar_reader::{
    EntryData, ExtendedHeader, SparseMap, TarEntry, TarError, TarReader, MAX_EXTENDED_HEADER_BYTES,
};

/// Symlinks followed while resolving one path before giving up, like the kernel's `MAXSYMLINKS`.
const MAX_SYMLINK_HOPS: u32 = 40;
/// Host mode of staged directories: we must be able to write into them for later layers.
const STAGED_DIR_MODE: u32 = 0o755;
/// Host mode of staged files: readable by `mke2fs`; the real mode is in the table.
const STAGED_FILE_MODE: u32 = 0o644;
/// Prefix of a whiteout file name.
const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of an opaque-directory marker.
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Prefix of AUFS-internal names (hard-link directories) that carry no content.
const AUFS_META_PREFIX: &str = ".wh..wh.";
/// PAX record prefix for extended attributes (GNU tar, bsdtar, docker, buildkit).
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";
/// Longest xattr name Linux accepts (`XATTR_NAME_MAX`).
pub const MAX_XATTR_NAME_BYTES: usize = 255;
/// Largest xattr value Linux accepts (`XATTR_SIZE_MAX`).
pub const MAX_XATTR_VALUE_BYTES: usize = 65536;
/// Most xattrs one entry may carry; ext4 keeps them in the inode and one block, so real images
/// have a handful.
pub const MAX_XATTRS_PER_ENTRY: usize = 64;
/// The xattr namespaces the kernel knows; a name in any other is refused, as the kernel would.
const XATTR_NAMESPACES: [&str; 4] = ["user.", "trusted.", "security.", "system."];
/// Default [`UnpackLimits::max_unpacked_bytes`]: twice the largest images in common use (CUDA
/// and ML images reach 15 GiB), small enough that a bomb cannot fill a typical host disk.
pub const DEFAULT_MAX_UNPACKED_BYTES: u64 = 32 << 30;
/// Default [`UnpackLimits::max_entries`]: large distributions with toolchains hold a few hundred
/// thousand files.
pub const DEFAULT_MAX_ENTRIES: u64 = 1_000_000;
/// Default [`UnpackLimits::max_metadata_bytes`]: real entries take about 100 bytes of path, so
/// this fits [`DEFAULT_MAX_ENTRIES`] with room to spare, while keeping the table (which stays in
/// the daemon's memory until the ext4 image is built) well under a GiB.
pub const DEFAULT_MAX_METADATA_BYTES: u64 = 256 << 20;

/// How much one image may unpack to; every bound names itself in its [`UnpackError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Total bytes of decompressed tar stream over all layers (headers, data and the holes of
    /// sparse files included).
    pub max_unpacked_bytes: u64,
    /// Total entries over all layers, including directories created implicitly for a path.
    pub max_entries: u64,
    /// Total bytes of paths, link targets and xattr names and values over all entries.
    pub max_metadata_bytes: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self {
            max_unpacked_bytes: DEFAULT_MAX_UNPACKED_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
            max_metadata_bytes: DEFAULT_MAX_METADATA_BYTES,
        }
    }
}

/// Why a layer could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The staging directory could not be prepared.
    #[error("cannot prepare staging directory {path}")]
    Staging {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The layer blob could not be opened.
    #[error("cannot open layer {layer} at {path}")]
    OpenLayer {
        /// The layer.
        layer: Digest,
        /// Its blob file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The layer is compressed with something other than gzip or zstd.
    #[error("layer {layer} is compressed with {format}, which Aegis does not unpack (gzip and zstd are supported)")]
    UnsupportedCompression {
        /// The layer.
        layer: Digest,
        /// The format recognised from its magic bytes.
        format: &'static str,
    },
    /// The layer's media type announces a compression its content does not have.
    #[error("layer {layer} has media type {media_type:?} but its content is not {expected}")]
    CompressionMismatch {
        /// The layer.
        layer: Digest,
        /// Its media type.
        media_type: String,
        /// The compression the media type announces.
        expected: &'static str,
    },
    /// The tar stream is malformed or could not be decompressed.
    #[error("layer {layer} is not a readable tar archive")]
    Read {
        /// The layer.
        layer: Digest,
        /// The decoder's complaint.
        #[source]
        source: io::Error,
    },
    /// An entry's path contains `..`.
    #[error(
        "layer {layer} contains entry {path:?} with a '..' component, which could escape the root"
    )]
    UnsafePath {
        /// The layer.
        layer: Digest,
        /// The entry path as in the archive.
        path: String,
    },
    /// A hard link points at `..` or at nothing unpacked so far.
    #[error("layer {layer} has hard link {path:?} to {target:?}, which is not a file unpacked before it")]
    BadHardLink {
        /// The layer.
        layer: Digest,
        /// The link's path.
        path: String,
        /// Its target as in the archive.
        target: String,
    },
    /// Resolving a parent directory met too many symlinks.
    #[error("layer {layer} entry {path:?}: too many levels of symbolic links")]
    SymlinkLoop {
        /// The layer.
        layer: Digest,
        /// The entry path.
        path: String,
    },
    /// A parent of an entry is a regular file or a device.
    #[error("layer {layer} entry {path:?}: a parent is not a directory")]
    NotADirectory {
        /// The layer.
        layer: Digest,
        /// The entry path.
        path: String,
    },
    /// A header field is out of range (e.g. a uid above 2^32).
    #[error("layer {layer} entry {path:?} has an invalid {field}")]
    BadHeader {
        /// The layer.
        layer: Digest,
        /// The entry path.
        path: String,
        /// The field.
        field: &'static str,
    },
    /// A whiteout that names no entry of its directory (`.wh.`, `.wh..`, `.wh...`).
    #[error("layer {layer} has whiteout {path:?}, which names no entry ('.wh.' followed by nothing, '.' or '..')")]
    BadWhiteout {
        /// The layer.
        layer: Digest,
        /// The whiteout's path.
        path: String,
    },
    /// An extended attribute that Linux would not accept either.
    #[error("layer {layer} entry {path:?} has xattr {name:?}, which is refused: {problem}")]
    BadXattr {
        /// The layer.
        layer: Digest,
        /// The entry path.
        path: String,
        /// The name, shortened to 80 characters.
        name: String,
        /// What is wrong with it.
        problem: XattrProblem,
    },
    /// The image unpacks to more than [`UnpackLimits::max_unpacked_bytes`].
    #[error("layer {layer} takes the image past {limit} bytes unpacked ({}), the limit on an image's unpacked size", ByteSize(*.limit))]
    TooLarge {
        /// The layer.
        layer: Digest,
        /// The limit in bytes.
        limit: u64,
    },
    /// The image has more than [`UnpackLimits::max_entries`] entries.
    #[error(
        "layer {layer} takes the image past {limit} entries, the limit on the files in an image"
    )]
    TooManyEntries {
        /// The layer.
        layer: Digest,
        /// The limit.
        limit: u64,
    },
    /// The image's paths, link targets and xattrs exceed [`UnpackLimits::max_metadata_bytes`].
    #[error("layer {layer} takes the image's paths, link targets and xattrs past {limit} bytes ({}), the limit on an image's metadata", ByteSize(*.limit))]
    TooMuchMetadata {
        /// The layer.
        layer: Digest,
        /// The limit in bytes.
        limit: u64,
    },
    /// An extended tar header larger than [`MAX_EXTENDED_HEADER_BYTES`]; refused unread.
    #[error("layer {layer} has a {kind} of {size} bytes, more than the {MAX_EXTENDED_HEADER_BYTES}-byte limit on tar extended headers")]
    HeaderTooLarge {
        /// The layer.
        layer: Digest,
        /// Which kind of header.
        kind: ExtendedHeader,
        /// The size it claims.
        size: u64,
    },
    /// Writing into the staging directory failed.
    #[error("cannot write {path} while unpacking layer {layer}")]
    Write {
        /// The layer.
        layer: Digest,
        /// The staging path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl UnpackError {
    /// What the user can do about the error, when there is something: only a full disk under
    /// the staging directory has a remedy; a bad layer is the image's fault.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Staging { source, .. } | Self::Write { source, .. }
                if crate::store::is_disk_full(source) =>
            {
                Some(crate::store::DISK_FULL_HINT.to_owned())
            }
            Self::Staging { .. }
            | Self::OpenLayer { .. }
            | Self::UnsupportedCompression { .. }
            | Self::CompressionMismatch { .. }
            | Self::Read { .. }
            | Self::UnsafePath { .. }
            | Self::BadHardLink { .. }
            | Self::SymlinkLoop { .. }
            | Self::NotADirectory { .. }
            | Self::BadHeader { .. }
            | Self::BadWhiteout { .. }
            | Self::BadXattr { .. }
            | Self::TooLarge { .. }
            | Self::TooManyEntries { .. }
            | Self::TooMuchMetadata { .. }
            | Self::HeaderTooLarge { .. }
            | Self::Write { .. } => None,
        }
    }
}

/// A byte count in the largest binary unit that divides it, for error messages (`64 MiB`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ByteSize(pub u64);

impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let units = [(30, "GiB"), (20, "MiB"), (10, "KiB")];
        match units
            .iter()
            .find(|(shift, _)| self.0 != 0 && self.0.is_multiple_of(1 << shift))
        {
            Some((shift, unit)) => write!(f, "{} {unit}", self.0 >> shift),
            None => write!(f, "{} bytes", self.0),
        }
    }
}

/// Why an xattr is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum XattrProblem {
    /// The name is longer than [`MAX_XATTR_NAME_BYTES`].
    #[error("its name is longer than {MAX_XATTR_NAME_BYTES} bytes")]
    NameTooLong,
    /// The name is not in `user.`, `trusted.`, `security.` or `system.`, or has nothing after
    /// the namespace, or holds a NUL byte or a control character.
    #[error("its name is not in a namespace the kernel knows (user., trusted., security., system.) or holds control characters")]
    BadName,
    /// The value is larger than [`MAX_XATTR_VALUE_BYTES`].
    #[error("its value is larger than {MAX_XATTR_VALUE_BYTES} bytes")]
    ValueTooLarge,
    /// The entry has more than [`MAX_XATTRS_PER_ENTRY`] xattrs.
    #[error("the entry has more than {MAX_XATTRS_PER_ENTRY} xattrs")]
    TooMany,
}

/// Checks one xattr as the kernel's `setxattr` would, before its name goes anywhere.
fn check_xattr(name: &str, value: &[u8], count: usize) -> Result<(), XattrProblem> {
    if count >= MAX_XATTRS_PER_ENTRY {
        return Err(XattrProblem::TooMany);
    }
    if name.len() > MAX_XATTR_NAME_BYTES {
        return Err(XattrProblem::NameTooLong);
    }
    let known = XATTR_NAMESPACES
        .iter()
        .any(|ns| name.strip_prefix(ns).is_some_and(|rest| !rest.is_empty()));
    if !known || name.chars().any(char::is_control) {
        return Err(XattrProblem::BadName);
    }
    if value.len() > MAX_XATTR_VALUE_BYTES {
        return Err(XattrProblem::ValueTooLarge);
    }
    Ok(())
}

/// The type of a file system entry, with what only that type has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory (staged on the host).
    Directory,
    /// A regular file (staged on the host; hard links are staged as host hard links).
    File,
    /// A symbolic link (staged on the host with the same target).
    Symlink {
        /// The link target, uninterpreted.
        target: PathBuf,
    },
    /// A character device (table only).
    CharDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A block device (table only).
    BlockDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A named pipe (table only).
    Fifo,
}

impl EntryKind {
    /// The `S_IFMT` bits of this type.
    pub fn type_bits(&self) -> u32 {
        match self {
            Self::Directory => 0o040_000,
            Self::File => 0o100_000,
            Self::Symlink { .. } => 0o120_000,
            Self::CharDevice { .. } => 0o020_000,
            Self::BlockDevice { .. } => 0o060_000,
            Self::Fifo => 0o010_000,
        }
    }

    /// True when the entry exists only in the table, not in the staging directory.
    pub fn is_table_only(&self) -> bool {
        matches!(
            self,
            Self::CharDevice { .. } | Self::BlockDevice { .. } | Self::Fifo
        )
    }
}

/// The real metadata of one entry, as the image states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryMeta {
    /// Type and type-specific data.
    pub kind: EntryKind,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Permission bits including setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Extended attributes, by full name (`security.capability`, `user.x`).
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

impl EntryMeta {
    fn directory(mtime: i64) -> Self {
        Self {
            kind: EntryKind::Directory,
            uid: 0,
            gid: 0,
            mode: 0o755,
            mtime,
            xattrs: BTreeMap::new(),
        }
    }
}

/// The unpacked root file system: a staging directory plus the metadata table.
#[derive(Debug)]
pub struct RootfsTree {
    /// The staging directory holding files, directories and symlinks.
    pub root: PathBuf,
    /// Metadata of every entry, keyed by path relative to the root (`""` is the root itself).
    pub entries: BTreeMap<PathBuf, EntryMeta>,
}

/// Applies layers one after another into a staging directory.
#[derive(Debug)]
pub struct Unpacker {
    tree: RootfsTree,
    limits: UnpackLimits,
    /// Budget used by the layers applied so far.
    unpacked_bytes: u64,
    entries: u64,
    metadata_bytes: u64,
}

/// The compression of a layer stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

/// One layer's work in progress: which layer, and which paths it has created so far (an opaque
/// marker hides only what lower layers put in the directory).
struct LayerCtx {
    layer: Digest,
    created: HashSet<PathBuf>,
}

impl Unpacker {
    /// Starts an unpack into `staging`, which is created (it must not exist yet, or be empty),
    /// with the default [`UnpackLimits`].
    ///
    /// # Errors
    /// [`UnpackError::Staging`] when the directory cannot be created or is not empty.
    pub fn new(staging: &Path) -> Result<Self, UnpackError> {
        Self::with_limits(staging, UnpackLimits::default())
    }

    /// Starts an unpack into `staging` (see [`Unpacker::new`]) bounded by `limits`.
    ///
    /// # Errors
    /// [`UnpackError::Staging`] when the directory cannot be created or is not empty.
    pub fn with_limits(staging: &Path, limits: UnpackLimits) -> Result<Self, UnpackError> {
        let staging_err = |source| UnpackError::Staging {
            path: staging.to_owned(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(STAGED_DIR_MODE)
            .create(staging)
            .map_err(staging_err)?;
        if fs::read_dir(staging).map_err(staging_err)?.next().is_some() {
            return Err(staging_err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "staging directory is not empty",
            )));
        }
        let mut entries = BTreeMap::new();
        entries.insert(PathBuf::new(), EntryMeta::directory(0));
        Ok(Self {
            tree: RootfsTree {
                root: staging.to_owned(),
                entries,
            },
            limits,
            unpacked_bytes: 0,
            entries: 0,
            metadata_bytes: 0,
        })
    }

    /// Applies the layer blob at `path` (see [`Unpacker::apply_layer`]).
    ///
    /// # Errors
    /// [`UnpackError::OpenLayer`] when the blob cannot be opened, else as `apply_layer`.
    pub fn apply_layer_file(
        &mut self,
        path: &Path,
        layer: &Digest,
        media_type: &str,
    ) -> Result<(), UnpackError> {
        let file = fs::File::open(path).map_err(|source| UnpackError::OpenLayer {
            layer: layer.clone(),
            path: path.to_owned(),
            source,
        })?;
        self.apply_layer(file, layer, media_type)
    }

    /// Applies one layer on top of what is unpacked so far. The compression (none, gzip, zstd)
    /// is recognised from the magic bytes and checked against `media_type`.
    ///
    /// # Errors
    /// [`UnpackError`] naming the layer and the entry that failed. The staging directory is
    /// then in an undefined state and should be discarded.
    pub fn apply_layer(
        &mut self,
        reader: impl Read,
        layer: &Digest,
        media_type: &str,
    ) -> Result<(), UnpackError> {
        let mut reader = BufReader::with_capacity(1 << 16, reader);
        let read_err = |source| UnpackError::Read {
            layer: layer.clone(),
            source,
        };
        let magic = reader.fill_buf().map_err(read_err)?;
        let compression = detect_compression(magic, layer)?;
        let announced = if media_type.ends_with("gzip") {
            Some((Compression::Gzip, "gzip"))
        } else if media_type.ends_with("zstd") {
            Some((Compression::Zstd, "zstd"))
        } else {
            None
        };
        // Docker mislabels some uncompressed layers as gzip; a gzip or zstd stream labelled as a
        // plain tar is decompressed all the same. Only a compressed label on an uncompressed
        // stream that does not look like tar is an error.
        if let Some((expected_compression, expected)) = announced {
            if compression != expected_compression && !looks_like_tar(magic) {
                return Err(UnpackError::CompressionMismatch {
                    layer: layer.clone(),
                    media_type: media_type.to_owned(),
                    expected,
                });
            }
        }
        let decoded: Box<dyn Read + '_> = match compression {
            Compression::None => Box::new(reader),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
            Compression::Zstd => {
                Box::new(zstd::stream::read::Decoder::with_buffer(reader).map_err(read_err)?)
            }
        };
        let mut ctx = LayerCtx {
            layer: layer.clone(),
            created: HashSet::new(),
        };
        let budget = self
            .limits
            .max_unpacked_bytes
            .saturating_sub(self.unpacked_bytes);
        let mut archive = TarReader::new(decoded, budget);
        let result = self.apply_entries(&mut archive, &mut ctx);
        self.unpacked_bytes += archive.charged();
        result
    }

    fn apply_entries<R: Read>(
        &mut self,
        archive: &mut TarReader<R>,
        ctx: &mut LayerCtx,
    ) -> Result<(), UnpackError> {
        loop {
            let entry = match archive.next_entry() {
                Ok(Some(entry)) => entry,
                Ok(None) => return Ok(()),
                Err(TarError::Read(source)) => {
                    return Err(UnpackError::Read {
                        layer: ctx.layer.clone(),
                        source,
                    })
                }
                Err(TarError::OverBudget) => {
                    return Err(UnpackError::TooLarge {
                        layer: ctx.layer.clone(),
                        limit: self.limits.max_unpacked_bytes,
                    })
                }
                Err(TarError::ExtendedHeaderTooLarge { kind, size }) => {
                    return Err(UnpackError::HeaderTooLarge {
                        layer: ctx.layer.clone(),
                        kind,
                        size,
                    })
                }
            };
            let metadata = entry.path.len() + entry.link_name.len();
            self.count_entry(metadata as u64, ctx)?;
            self.apply_entry(&entry, archive.data(), ctx)?;
        }
    }

    /// Counts one more entry with `metadata_bytes` of paths and xattrs against the limits.
    fn count_entry(&mut self, metadata_bytes: u64, ctx: &LayerCtx) -> Result<(), UnpackError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(UnpackError::TooManyEntries {
                layer: ctx.layer.clone(),
                limit: self.limits.max_entries,
            });
        }
        self.count_metadata(metadata_bytes, ctx)
    }

    fn count_metadata(&mut self, bytes: u64, ctx: &LayerCtx) -> Result<(), UnpackError> {
        self.metadata_bytes = self.metadata_bytes.saturating_add(bytes);
        if self.metadata_bytes > self.limits.max_metadata_bytes {
            return Err(UnpackError::TooMuchMetadata {
                layer: ctx.layer.clone(),
                limit: self.limits.max_metadata_bytes,
            });
        }
        Ok(())
    }

    /// The unpacked tree.
    pub fn finish(self) -> RootfsTree {
        self.tree
    }

    fn apply_entry<R: Read>(
        &mut self,
        entry: &TarEntry,
        mut data: EntryData<'_, R>,
        ctx: &mut LayerCtx,
    ) -> Result<(), UnpackError> {
        let entry_type = entry.header.entry_type();
        let display_path = String::from_utf8_lossy(&entry.path).into_owned();
        let components = clean_components(&entry.path).ok_or_else(|| UnpackError::UnsafePath {
            layer: ctx.layer.clone(),
            path: display_path.clone(),
        })?;
        let Some((name, parents)) = components.split_last() else {
            // The root itself ("./" or "/"): only its metadata changes.
            let meta = self.header_meta(entry, EntryKind::Directory, ctx, &display_path)?;
            self.tree.entries.insert(PathBuf::new(), meta);
            return Ok(());
        };

        let name_str = name.to_string_lossy();
        if name_str.starts_with(WHITEOUT_PREFIX) {
            let Some(parent) = self.resolve_dir(parents, false, ctx, &display_path)? else {
                return Ok(()); // Nothing below to hide.
            };
            if name_str == OPAQUE_MARKER {
                return self.make_opaque(&parent, ctx);
            }
            if name_str.starts_with(AUFS_META_PREFIX) {
                return Ok(());
            }
            let hidden = &name.as_bytes()[WHITEOUT_PREFIX.len()..];
            if matches!(hidden, b"" | b"." | b"..") {
                // `.wh.`, `.wh..` and `.wh...` would remove the directory itself or its parent,
                // above the root for a top-level entry.
                return Err(UnpackError::BadWhiteout {
                    layer: ctx.layer.clone(),
                    path: display_path,
                });
            }
            let target = parent.join(OsStr::from_bytes(hidden));
            return self.remove_path(&target, ctx);
        }

        let parent = self
            .resolve_dir(parents, true, ctx, &display_path)?
            .expect("resolve_dir with create always yields a directory");
        let rel = parent.join(name);
        let host = self.tree.root.join(&rel);

        if entry_type.is_hard_link() {
            return self.apply_hard_link(entry, &rel, &display_path, ctx);
        }
        let kind = if entry_type.is_dir() {
            EntryKind::Directory
        } else if entry_type.is_file() || entry_type.is_contiguous() || entry_type.is_gnu_sparse() {
            EntryKind::File
        } else if entry_type.is_symlink() {
            EntryKind::Symlink {
                target: PathBuf::from(OsString::from_vec(entry.link_name.clone())),
            }
        } else if entry_type.is_character_special() || entry_type.is_block_special() {
            let bad = |field| UnpackError::BadHeader {
                layer: ctx.layer.clone(),
                path: display_path.clone(),
                field,
            };
            let major = entry
                .header
                .device_major()
                .map_err(|_| bad("device major"))?
                .unwrap_or(0);
            let minor = entry
                .header
                .device_minor()
                .map_err(|_| bad("device minor"))?
                .unwrap_or(0);
            if entry_type.is_character_special() {
                EntryKind::CharDevice { major, minor }
            } else {
                EntryKind::BlockDevice { major, minor }
            }
        } else if entry_type.is_fifo() {
            EntryKind::Fifo
        } else {
            tracing::debug!(layer = %ctx.layer, path = %display_path, ?entry_type, "skipping unsupported tar entry type");
            return Ok(());
        };
        let meta = self.header_meta(entry, kind.clone(), ctx, &display_path)?;
        let write_err = |source| UnpackError::Write {
            layer: ctx.layer.clone(),
            path: host.clone(),
            source,
        };

        match &kind {
            EntryKind::Directory => {
                let is_dir = fs::symlink_metadata(&host).is_ok_and(|m| m.is_dir());
                if !is_dir {
                    self.remove_path(&rel, ctx)?;
                    fs::DirBuilder::new()
                        .mode(STAGED_DIR_MODE)
                        .create(&host)
                        .map_err(write_err)?;
                }
            }
            EntryKind::File => {
                self.remove_path(&rel, ctx)?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(STAGED_FILE_MODE)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&host)
                    .map_err(write_err)?;
                let copied = match &entry.sparse {
                    None => io::copy(&mut data, &mut file).map(drop),
                    Some(map) => write_sparse(&mut data, &mut file, map),
                };
                copied.map_err(|source| {
                    // A short read is the archive's fault; a failed write is ours.
                    if source.kind() == io::ErrorKind::UnexpectedEof
                        || source.kind() == io::ErrorKind::InvalidData
                    {
                        UnpackError::Read {
                            layer: ctx.layer.clone(),
                            source,
                        }
                    } else {
                        write_err(source)
                    }
                })?;
            }
            EntryKind::Symlink { target } => {
                self.remove_path(&rel, ctx)?;
                std::os::unix::fs::symlink(target, &host).map_err(write_err)?;
            }
            EntryKind::CharDevice { .. } | EntryKind::BlockDevice { .. } | EntryKind::Fifo => {
                self.remove_path(&rel, ctx)?;
            }
        }
        self.tree.entries.insert(rel.clone(), meta);
        ctx.created.insert(rel);
        Ok(())
    }

    fn apply_hard_link(
        &mut self,
        entry: &TarEntry,
        rel: &Path,
        display_path: &str,
        ctx: &mut LayerCtx,
    ) -> Result<(), UnpackError> {
        let raw_target = entry.link_name.clone();
        let layer = ctx.layer.clone();
        let bad_link = || UnpackError::BadHardLink {
            layer: layer.clone(),
            path: display_path.to_owned(),
            target: String::from_utf8_lossy(&raw_target).into_owned(),
        };
        let components = clean_components(&raw_target).ok_or_else(bad_link)?;
        let (name, parents) = components.split_last().ok_or_else(bad_link)?;
        let target_parent = self
            .resolve_dir(parents, false, ctx, display_path)?
            .ok_or_else(bad_link)?;
        let target = target_parent.join(name);
        if target == rel {
            return Ok(());
        }
        let meta = match self.tree.entries.get(&target) {
            Some(meta) if meta.kind != EntryKind::Directory => meta.clone(),
            Some(_) | None => return Err(bad_link()),
        };
        self.remove_path(rel, ctx)?;
        let host = self.tree.root.join(rel);
        let write_err = |source| UnpackError::Write {
            layer: ctx.layer.clone(),
            path: host.clone(),
            source,
        };
        match &meta.kind {
            EntryKind::File => {
                fs::hard_link(self.tree.root.join(&target), &host).map_err(write_err)?;
            }
            EntryKind::Symlink { target } => {
                // A hard link to a symlink behaves like a copy of it.
                std::os::unix::fs::symlink(target, &host).map_err(write_err)?;
            }
            // Devices and fifos live in the table only; a second node with the same numbers is
            // indistinguishable from a hard link for every purpose but the link count.
            EntryKind::CharDevice { .. } | EntryKind::BlockDevice { .. } | EntryKind::Fifo => {}
            EntryKind::Directory => unreachable!("hard links to directories were rejected above"),
        }
        self.tree.entries.insert(rel.to_owned(), meta);
        ctx.created.insert(rel.to_owned());
        Ok(())
    }

    /// Reads owner, group, mode, mtime and xattrs from the entry's headers.
    fn header_meta(
        &mut self,
        entry: &TarEntry,
        kind: EntryKind,
        ctx: &LayerCtx,
        display_path: &str,
    ) -> Result<EntryMeta, UnpackError> {
        let bad = |field| UnpackError::BadHeader {
            layer: ctx.layer.clone(),
            path: display_path.to_owned(),
            field,
        };
        let header = &entry.header;
        let uid = header
            .uid()
            .ok()
            .and_then(|u| u32::try_from(u).ok())
            .ok_or_else(|| bad("uid"))?;
        let gid = header
            .gid()
            .ok()
            .and_then(|g| u32::try_from(g).ok())
            .ok_or_else(|| bad("gid"))?;
        let mode = header.mode().map_err(|_| bad("mode"))? & 0o7777;
        // Some writers leave mtime empty; a wrong time is harmless, unlike a wrong owner.
        let mtime = header
            .mtime()
            .ok()
            .and_then(|m| i64::try_from(m).ok())
            .unwrap_or(0);
        let mut xattrs = BTreeMap::new();
        if let Some(records) = &entry.pax {
            for extension in tar::PaxExtensions::new(records) {
                let extension = extension.map_err(|source| UnpackError::Read {
                    layer: ctx.layer.clone(),
                    source,
                })?;
                if let Some(name) = extension
                    .key()
                    .ok()
                    .and_then(|k| k.strip_prefix(PAX_XATTR_PREFIX))
                {
                    let value = extension.value_bytes();
                    check_xattr(name, value, xattrs.len()).map_err(|problem| {
                        UnpackError::BadXattr {
                            layer: ctx.layer.clone(),
                            path: display_path.to_owned(),
                            name: name.chars().take(80).collect(),
                            problem,
                        }
                    })?;
                    self.count_metadata((name.len() + value.len()) as u64, ctx)?;
                    xattrs.insert(name.to_owned(), value.to_vec());
                }
            }
        }
        Ok(EntryMeta {
            kind,
            uid,
            gid,
            mode,
            mtime,
            xattrs,
        })
    }

    /// Resolves the directory `components` inside the root without leaving it (see the module
    /// docs). With `create`, missing directories are created (root-owned, 0755, like docker);
    /// without, a missing one yields `None`.
    fn resolve_dir(
        &mut self,
        components: &[OsString],
        create: bool,
        ctx: &mut LayerCtx,
        display_path: &str,
    ) -> Result<Option<PathBuf>, UnpackError> {
        let mut resolved = PathBuf::new();
        let mut pending: VecDeque<OsString> = components.iter().cloned().collect();
        let mut hops = 0;
        while let Some(component) = pending.pop_front() {
            // Only symlink targets contribute "." and ".."; ".." stops at the root.
            if component == "." || component.is_empty() {
                continue;
            }
            if component == ".." {
                resolved.pop();
                continue;
            }
            let candidate = resolved.join(&component);
            let host = self.tree.root.join(&candidate);
            match fs::symlink_metadata(&host) {
                Ok(meta) if meta.is_dir() => resolved = candidate,
                Ok(meta) if meta.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(UnpackError::SymlinkLoop {
                            layer: ctx.layer.clone(),
                            path: display_path.to_owned(),
                        });
                    }
                    let target = fs::read_link(&host).map_err(|source| UnpackError::Write {
                        layer: ctx.layer.clone(),
                        path: host.clone(),
                        source,
                    })?;
                    let target = target.as_os_str().as_bytes();
                    if target.starts_with(b"/") {
                        resolved = PathBuf::new();
                    }
                    for part in target.split(|b| *b == b'/').rev() {
                        pending.push_front(OsStr::from_bytes(part).to_owned());
                    }
                }
                Ok(_) => {
                    return Err(UnpackError::NotADirectory {
                        layer: ctx.layer.clone(),
                        path: display_path.to_owned(),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(None);
                    }
                    self.count_entry(candidate.as_os_str().len() as u64, ctx)?;
                    // A table-only entry (device, fifo) at this path is replaced by the directory.
                    self.tree.entries.remove(&candidate);
                    fs::DirBuilder::new()
                        .mode(STAGED_DIR_MODE)
                        .create(&host)
                        .map_err(|source| UnpackError::Write {
                            layer: ctx.layer.clone(),
                            path: host.clone(),
                            source,
                        })?;
                    let mtime = self.tree.entries.get(&resolved).map_or(0, |m| m.mtime);
                    self.tree
                        .entries
                        .insert(candidate.clone(), EntryMeta::directory(mtime));
                    ctx.created.insert(candidate.clone());
                    resolved = candidate;
                }
                Err(source) => {
                    return Err(UnpackError::Write {
                        layer: ctx.layer.clone(),
                        path: host,
                        source,
                    })
                }
            }
        }
        Ok(Some(resolved))
    }

    /// Removes `rel` (and everything below it) from the staging directory and the table.
    fn remove_path(&mut self, rel: &Path, ctx: &LayerCtx) -> Result<(), UnpackError> {
        let host = self.tree.root.join(rel);
        let result = match fs::symlink_metadata(&host) {
            Ok(meta) if meta.is_dir() => fs::remove_dir_all(&host),
            Ok(_) => fs::remove_file(&host),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        result.map_err(|source| UnpackError::Write {
            layer: ctx.layer.clone(),
            path: host,
            source,
        })?;
        let doomed: Vec<PathBuf> = self
            .tree
            .entries
            .range(rel.to_owned()..)
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(rel))
            .cloned()
            .collect();
        for key in doomed {
            self.tree.entries.remove(&key);
        }
        Ok(())
    }

    /// Hides everything lower layers put below `dir`; entries this layer created stay.
    fn make_opaque(&mut self, dir: &Path, ctx: &LayerCtx) -> Result<(), UnpackError> {
        let below: Vec<PathBuf> = self
            .tree
            .entries
            .range(dir.to_owned()..)
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(dir))
            .filter(|k| k.as_path() != dir)
            .cloned()
            .collect();
        // Deepest first, so directories are empty (or hold this layer's entries) when reached.
        for key in below.into_iter().rev() {
            if ctx.created.contains(&key) {
                continue;
            }
            let host = self.tree.root.join(&key);
            let result = match fs::symlink_metadata(&host) {
                Ok(meta) if meta.is_dir() => match fs::remove_dir(&host) {
                    // Still holds entries of this layer: keep it.
                    Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => continue,
                    other => other,
                },
                Ok(_) => fs::remove_file(&host),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            };
            result.map_err(|source| UnpackError::Write {
                layer: ctx.layer.clone(),
                path: host,
                source,
            })?;
            self.tree.entries.remove(&key);
        }
        Ok(())
    }
}

/// Writes a GNU sparse file's chunks at their offsets, leaving holes unwritten.
fn write_sparse(data: &mut impl Read, file: &mut fs::File, map: &SparseMap) -> io::Result<()> {
    use std::io::{Seek, SeekFrom};
    for (offset, length) in &map.chunks {
        file.seek(SeekFrom::Start(*offset))?;
        let copied = io::copy(&mut (&mut *data).take(*length), file)?;
        if copied != *length {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside a sparse file's data",
            ));
        }
    }
    file.set_len(map.real_size)
}

/// Splits an archive path into components, dropping empty and `.` components and a leading
/// `/`. Returns `None` when a component is `..`.
fn clean_components(raw: &[u8]) -> Option<Vec<OsString>> {
    let mut components = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return None,
            name => components.push(OsStr::from_bytes(name).to_owned()),
        }
    }
    Some(components)
}

fn detect_compression(magic: &[u8], layer: &Digest) -> Result<Compression, UnpackError> {
    let unsupported = |format| UnpackError::UnsupportedCompression {
        layer: layer.clone(),
        format,
    };
    if magic.starts_with(&[0x1f, 0x8b]) {
        Ok(Compression::Gzip)
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Compression::Zstd)
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Err(unsupported("xz"))
    } else if magic.starts_with(b"BZh") {
        Err(unsupported("bzip2"))
    } else {
        Ok(Compression::None)
    }
}

/// True when `magic` starts with a tar header (`ustar` magic at offset 257) or is an empty
/// archive (all zeros).
fn looks_like_tar(magic: &[u8]) -> bool {
    magic.get(257..262) == Some(b"ustar")
        || (magic.len() >= 512 && magic[..512].iter().all(|b| *b == 0))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// Builds a tar archive from `(path, type, mode, uid, data_or_link)` rows, writing the raw
    /// path bytes so that malicious paths can be expressed.
    #[derive(Default)]
    struct TarBuilder {
        builder: Option<tar::Builder<Vec<u8>>>,
    }

    impl TarBuilder {
        fn new() -> Self {
            Self {
                builder: Some(tar::Builder::new(Vec::new())),
            }
        }

        fn raw(
            &mut self,
            path: &str,
            kind: tar::EntryType,
            mode: u32,
            ids: (u64, u64),
            data: &[u8],
            link: &str,
        ) -> &mut Self {
            let mut header = tar::Header::new_ustar();
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            if !link.is_empty() {
                let l = &mut header.as_old_mut().linkname;
                l[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_entry_type(kind);
            header.set_mode(mode);
            header.set_uid(ids.0);
            header.set_gid(ids.1);
            header.set_mtime(1_700_000_000);
            header
                .set_device_major(if path.contains("null") { 1 } else { 0 })
                .unwrap();
            header
                .set_device_minor(if path.contains("null") { 3 } else { 0 })
                .unwrap();
            header.set_size(data.len() as u64);
            header.set_cksum();
            self.builder
                .as_mut()
                .unwrap()
                .append(&header, data)
                .unwrap();
            self
        }

        fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
            self.raw(path, tar::EntryType::Regular, 0o644, (0, 0), data, "")
        }

        fn dir(&mut self, path: &str) -> &mut Self {
            self.raw(path, tar::EntryType::Directory, 0o755, (0, 0), b"", "")
        }

        fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
            self.raw(path, tar::EntryType::Symlink, 0o777, (0, 0), b"", target)
        }

        fn bytes(&mut self) -> Vec<u8> {
            self.builder.take().unwrap().into_inner().unwrap()
        }
    }

    fn layer(n: u8) -> Digest {
        Digest::of_bytes(&[n])
    }

    fn unpack(layers: &[Vec<u8>]) -> (tempfile::TempDir, Result<RootfsTree, UnpackError>) {
        let dir = tempfile::tempdir().unwrap();
        let mut unpacker = Unpacker::new(&dir.path().join("root")).unwrap();
        for (i, bytes) in layers.iter().enumerate() {
            let n = u8::try_from(i).unwrap();
            if let Err(e) = unpacker.apply_layer(
                bytes.as_slice(),
                &layer(n),
                "application/vnd.oci.image.layer.v1.tar",
            ) {
                return (dir, Err(e));
            }
        }
        (dir, Ok(unpacker.finish()))
    }

    fn keys(tree: &RootfsTree) -> Vec<String> {
        tree.entries
            .keys()
            .map(|k| k.display().to_string())
            .collect()
    }

    #[test]
    fn metadata_is_kept_in_the_table_not_on_the_host() {
        let mut t = TarBuilder::new();
        t.dir("./")
            .raw(
                "./usr/bin/su",
                tar::EntryType::Regular,
                0o4755,
                (0, 0),
                b"su",
                "",
            )
            .raw(
                "home/user/f",
                tar::EntryType::Regular,
                0o600,
                (1000, 1000),
                b"mine",
                "",
            )
            .raw("tmp", tar::EntryType::Directory, 0o1777, (0, 0), b"", "")
            .raw("dev/null", tar::EntryType::Char, 0o666, (0, 0), b"", "")
            .raw("run/fifo", tar::EntryType::Fifo, 0o600, (0, 0), b"", "");
        let bytes = t.bytes();
        let (_dir, tree) = unpack(&[bytes]);
        let tree = tree.unwrap();
        assert_eq!(
            keys(&tree),
            [
                "",
                "dev",
                "dev/null",
                "home",
                "home/user",
                "home/user/f",
                "run",
                "run/fifo",
                "tmp",
                "usr",
                "usr/bin",
                "usr/bin/su"
            ]
        );
        let su = &tree.entries[Path::new("usr/bin/su")];
        assert_eq!(
            (su.mode, su.uid, su.kind.clone()),
            (0o4755, 0, EntryKind::File)
        );
        let f = &tree.entries[Path::new("home/user/f")];
        assert_eq!((f.uid, f.gid, f.mode), (1000, 1000, 0o600));
        assert_eq!(tree.entries[Path::new("tmp")].mode, 0o1777);
        // Host copies are permissive and owned by us.
        let host = fs::metadata(tree.root.join("home/user/f")).unwrap();
        assert_eq!(host.mode() & 0o7777, STAGED_FILE_MODE);
        assert_eq!(host.uid(), nix::unistd::geteuid().as_raw());
        assert_eq!(fs::read(tree.root.join("home/user/f")).unwrap(), b"mine");
        // Devices and fifos exist only in the table.
        assert_eq!(
            tree.entries[Path::new("dev/null")].kind,
            EntryKind::CharDevice { major: 1, minor: 3 }
        );
        assert!(!tree.root.join("dev/null").exists());
        assert_eq!(tree.entries[Path::new("run/fifo")].kind, EntryKind::Fifo);
    }

    #[test]
    fn whiteouts_and_opaque_directories_remove_lower_entries() {
        let mut l1 = TarBuilder::new();
        l1.file("etc/deleted-me", b"x")
            .file("etc/kept", b"k")
            .file("opq/old", b"old")
            .file("opq/sub/old2", b"old")
            .file("gone/a/b", b"b");
        let mut l2 = TarBuilder::new();
        l2.file("etc/.wh.deleted-me", b"")
            .dir("opq")
            .file("opq/new", b"new")
            .file("opq/.wh..wh..opq", b"")
            .file(".wh.gone", b"")
            .file("etc/.wh..wh.plnk", b"");
        let (_dir, tree) = unpack(&[l1.bytes(), l2.bytes()]);
        let tree = tree.unwrap();
        assert_eq!(keys(&tree), ["", "etc", "etc/kept", "opq", "opq/new"]);
        assert!(!tree.root.join("etc/deleted-me").exists());
        assert!(!tree.root.join("opq/old").exists());
        assert!(!tree.root.join("opq/sub").exists());
        assert!(!tree.root.join("gone").exists());
        assert_eq!(fs::read(tree.root.join("opq/new")).unwrap(), b"new");
    }

    /// Issue 19: `.wh...` at a layer's top removed everything around the staging root, and
    /// `dir/.wh..` emptied `dir`.
    #[test]
    fn whiteouts_that_name_no_entry_are_refused() {
        for whiteout in [".wh...", ".wh..", ".wh.", "d/.wh..", "d/.wh...", "d/.wh."] {
            let mut lower = TarBuilder::new();
            lower.file("d/keep", b"k");
            let mut upper = TarBuilder::new();
            upper.file(whiteout, b"");
            let (dir, tree) = unpack(&[lower.bytes(), upper.bytes()]);
            match tree {
                Err(UnpackError::BadWhiteout { path, .. }) => assert_eq!(path, whiteout),
                other => panic!("{whiteout}: {other:?}"),
            }
            let beside = fs::read_dir(dir.path()).unwrap().count();
            assert!(
                beside > 0,
                "{whiteout}: the staging area's surroundings are intact"
            );
        }
    }

    #[test]
    fn later_layers_override_and_hard_links_keep_their_content() {
        let mut l1 = TarBuilder::new();
        l1.raw("bin/a", tar::EntryType::Regular, 0o755, (0, 0), b"one", "")
            .raw("bin/b", tar::EntryType::Link, 0o755, (0, 0), b"", "bin/a")
            .file("x/y", b"file under dir");
        let mut l2 = TarBuilder::new();
        l2.raw("bin/a", tar::EntryType::Regular, 0o700, (5, 5), b"two", "")
            .file("x", b"file replaces dir");
        let (_dir, tree) = unpack(&[l1.bytes(), l2.bytes()]);
        let tree = tree.unwrap();
        assert_eq!(fs::read(tree.root.join("bin/a")).unwrap(), b"two");
        assert_eq!(
            fs::read(tree.root.join("bin/b")).unwrap(),
            b"one",
            "the old inode survives in the link"
        );
        assert_eq!(tree.entries[Path::new("bin/a")].mode, 0o700);
        assert_eq!(tree.entries[Path::new("bin/b")].mode, 0o755);
        assert_eq!(fs::read(tree.root.join("x")).unwrap(), b"file replaces dir");
        assert!(!tree.entries.contains_key(Path::new("x/y")));

        let mut l = TarBuilder::new();
        l.file("a", b"a")
            .raw("b", tar::EntryType::Link, 0o644, (0, 0), b"", "a");
        let (_dir, tree) = unpack(&[l.bytes()]);
        let tree = tree.unwrap();
        assert_eq!(
            fs::metadata(tree.root.join("a")).unwrap().ino(),
            fs::metadata(tree.root.join("b")).unwrap().ino()
        );
    }

    #[test]
    fn dot_dot_and_bad_hard_links_are_rejected() {
        let mut l = TarBuilder::new();
        l.file("../escape", b"x");
        let (dir, tree) = unpack(&[l.bytes()]);
        assert!(
            matches!(tree, Err(UnpackError::UnsafePath { .. })),
            "{tree:?}"
        );
        assert!(!dir.path().join("escape").exists());

        let mut l = TarBuilder::new();
        l.file("a/../../escape", b"x");
        let (_dir, tree) = unpack(&[l.bytes()]);
        assert!(matches!(tree, Err(UnpackError::UnsafePath { .. })));

        let outside = tempfile::NamedTempFile::new().unwrap();
        let mut l = TarBuilder::new();
        l.raw(
            "link",
            tar::EntryType::Link,
            0o644,
            (0, 0),
            b"",
            outside.path().to_str().unwrap(),
        );
        let (_dir, tree) = unpack(&[l.bytes()]);
        assert!(
            matches!(tree, Err(UnpackError::BadHardLink { .. })),
            "{tree:?}"
        );

        let mut l = TarBuilder::new();
        l.raw(
            "link",
            tar::EntryType::Link,
            0o644,
            (0, 0),
            b"",
            "../../etc/passwd",
        );
        let (_dir, tree) = unpack(&[l.bytes()]);
        assert!(matches!(tree, Err(UnpackError::BadHardLink { .. })));
    }

    #[test]
    fn absolute_paths_and_symlink_parents_stay_inside_the_root() {
        let victim = tempfile::tempdir().unwrap();
        let victim_path = victim.path().to_str().unwrap().to_owned();
        let mut l1 = TarBuilder::new();
        l1.file("/abs/file", b"contained")
            .symlink("evil", &victim_path)
            .symlink("up", "../../../../..")
            .symlink("rel", "abs");
        let mut l2 = TarBuilder::new();
        l2.file("evil/planted", b"x")
            .file("up/planted2", b"y")
            .file("rel/via-rel", b"z");
        let l1 = l1.bytes();
        let (_dir, tree) = unpack(&[l1.clone(), l2.bytes()]);
        let tree = tree.unwrap();
        assert_eq!(fs::read(tree.root.join("abs/file")).unwrap(), b"contained");
        // `evil -> /tmp/victim` resolves inside the root: the file lands at <root>/tmp/victim/planted.
        assert!(
            !victim.path().join("planted").exists(),
            "wrote through a symlink out of the root"
        );
        let inside = tree
            .root
            .join(victim_path.trim_start_matches('/'))
            .join("planted");
        assert!(inside.is_file(), "{inside:?}");
        assert!(
            tree.root.join("planted2").is_file(),
            "`..` in a symlink target stops at the root"
        );
        assert!(tree.root.join("abs/via-rel").is_file());
        // The symlinks themselves are untouched and recorded.
        assert_eq!(
            tree.entries[Path::new("evil")].kind,
            EntryKind::Symlink {
                target: PathBuf::from(&victim_path)
            }
        );
        // A new file at a symlink's path replaces the symlink; it never writes through it.
        let mut l3 = TarBuilder::new();
        l3.file("evil", b"replaced");
        let (_dir, tree) = unpack(&[l1, l3.bytes()]);
        let tree = tree.unwrap();
        assert_eq!(fs::read(tree.root.join("evil")).unwrap(), b"replaced");
        assert!(fs::symlink_metadata(tree.root.join("evil"))
            .unwrap()
            .is_file());
    }

    #[test]
    fn symlink_loops_and_file_parents_fail_cleanly() {
        let mut l = TarBuilder::new();
        l.symlink("a", "b").symlink("b", "a").file("a/x", b"");
        let (_dir, tree) = unpack(&[l.bytes()]);
        assert!(
            matches!(tree, Err(UnpackError::SymlinkLoop { .. })),
            "{tree:?}"
        );

        let mut l = TarBuilder::new();
        l.file("f", b"").file("f/x", b"");
        let (_dir, tree) = unpack(&[l.bytes()]);
        assert!(
            matches!(tree, Err(UnpackError::NotADirectory { .. })),
            "{tree:?}"
        );
    }

    /// A layer of one root-owned file `path` whose PAX header carries `records`.
    fn pax_layer(path: &str, records: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        builder
            .append_pax_extensions(records.iter().copied())
            .unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_mode(0o755);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(1);
        builder.append_data(&mut header, path, &b"p"[..]).unwrap();
        builder.into_inner().unwrap()
    }

    #[test]
    fn xattrs_come_from_pax_headers() {
        let bytes = pax_layer(
            "bin/ping",
            &[
                ("SCHILY.xattr.security.capability", &b"\x01\x00\x00\x02"[..]),
                ("SCHILY.xattr.user.note", &b"hi"[..]),
            ],
        );
        let (_dir, tree) = unpack(&[bytes]);
        let tree = tree.unwrap();
        let xattrs = &tree.entries[Path::new("bin/ping")].xattrs;
        assert_eq!(xattrs["security.capability"], b"\x01\x00\x00\x02");
        assert_eq!(xattrs["user.note"], b"hi");
    }

    /// Issue 19: xattr names reach the ext4 builder's debugfs batch, so anything the kernel
    /// would refuse is refused here, naming the limit.
    #[test]
    fn xattrs_the_kernel_refuses_are_refused() {
        let layer = |key: &str, value: &[u8]| pax_layer("f", &[(key, value)]);
        let crafted = format!("SCHILY.xattr.user.{}!touch /tmp/pwned #", " ".repeat(16384));
        let too_big = vec![0u8; MAX_XATTR_VALUE_BYTES + 1];
        let rows: [(&str, &[u8], XattrProblem); 6] = [
            (&crafted, b"v", XattrProblem::NameTooLong),
            ("SCHILY.xattr.evil.name", b"v", XattrProblem::BadName),
            ("SCHILY.xattr.user.", b"v", XattrProblem::BadName),
            ("SCHILY.xattr.user.a\u{1}b", b"v", XattrProblem::BadName),
            ("SCHILY.xattr.userX", b"v", XattrProblem::BadName),
            (
                "SCHILY.xattr.user.big",
                &too_big,
                XattrProblem::ValueTooLarge,
            ),
        ];
        for (key, value, want) in rows {
            let (_dir, tree) = unpack(&[layer(key, value)]);
            match tree {
                Err(UnpackError::BadXattr { problem, name, .. }) => {
                    assert_eq!(problem, want, "{key:.40}");
                    assert!(name.chars().count() <= 80);
                }
                other => panic!("{key:.40}: {other:?}"),
            }
        }
        let err = unpack(&[layer(&crafted, b"v")]).1.unwrap_err().to_string();
        assert!(err.contains("its name is longer than 255 bytes"), "{err}");
        assert_eq!(check_xattr("trusted.overlay.opaque", b"y", 0), Ok(()));
        assert_eq!(check_xattr("system.posix_acl_access", b"", 0), Ok(()));
        assert_eq!(
            check_xattr("user.a", b"", MAX_XATTRS_PER_ENTRY),
            Err(XattrProblem::TooMany)
        );
    }

    fn unpack_limited(
        layers: &[Vec<u8>],
        limits: UnpackLimits,
    ) -> (tempfile::TempDir, Result<RootfsTree, UnpackError>) {
        let dir = tempfile::tempdir().unwrap();
        let mut unpacker = Unpacker::with_limits(&dir.path().join("root"), limits).unwrap();
        for (i, bytes) in layers.iter().enumerate() {
            let n = u8::try_from(i).unwrap();
            if let Err(e) = unpacker.apply_layer(bytes.as_slice(), &layer(n), "x") {
                return (dir, Err(e));
            }
        }
        (dir, Ok(unpacker.finish()))
    }

    fn staged_bytes(dir: &Path) -> u64 {
        let mut total = 0;
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let meta = fs::symlink_metadata(entry.path()).unwrap();
            total += if meta.is_dir() {
                staged_bytes(&entry.path())
            } else {
                meta.len()
            };
        }
        total
    }

    /// The image size limit counts every layer, and a file that would cross it is refused from
    /// its header: what is staged never exceeds the limit.
    #[test]
    fn the_unpacked_size_limit_spans_layers_and_is_checked_before_writing() {
        let limits = UnpackLimits {
            max_unpacked_bytes: 10 << 20,
            ..UnpackLimits::default()
        };
        let mut one = TarBuilder::new();
        for i in 0..3 {
            one.file(&format!("a{i}"), &vec![1u8; 2 << 20]);
        }
        let mut two = TarBuilder::new();
        for i in 0..3 {
            two.file(&format!("b{i}"), &vec![2u8; 2 << 20]);
        }
        let (dir, tree) = unpack_limited(&[one.bytes(), two.bytes()], limits);
        match tree {
            Err(UnpackError::TooLarge { limit, .. }) => assert_eq!(limit, 10 << 20),
            other => panic!("{other:?}"),
        }
        let staged = staged_bytes(&dir.path().join("root"));
        assert!(staged <= 10 << 20, "{staged} bytes staged");
        assert!(staged >= 8 << 20, "the files below the limit were written");
    }

    #[test]
    fn the_metadata_limit_counts_xattrs() {
        let limits = UnpackLimits {
            max_metadata_bytes: 100 << 10,
            ..UnpackLimits::default()
        };
        let value = vec![0u8; 60 << 10];
        let layers = [
            pax_layer("a", &[("SCHILY.xattr.user.big", &value)]),
            pax_layer("b", &[("SCHILY.xattr.user.big", &value)]),
        ];
        let (_dir, tree) = unpack_limited(&layers, limits);
        assert!(
            matches!(tree, Err(UnpackError::TooMuchMetadata { limit, .. }) if limit == 100 << 10),
            "{tree:?}"
        );
    }

    /// GNU sparse files (tar --sparse) keep their holes and content, and their holes count
    /// against the size limit.
    #[test]
    fn gnu_sparse_files_are_expanded_and_counted() {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::GNUSparse);
        header.set_path("sparse").unwrap();
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(1024);
        let gnu = header.as_gnu_mut().unwrap();
        gnu.sparse[0].offset = *b"00000000000\0";
        gnu.sparse[0].numbytes = *b"00000001000\0";
        gnu.sparse[1].offset = *b"00000010000\0";
        gnu.sparse[1].numbytes = *b"00000001000\0";
        gnu.set_real_size(8 << 20);
        header.set_cksum();
        let mut bytes = header.as_bytes().to_vec();
        bytes.extend(vec![b'a'; 512]);
        bytes.extend(vec![b'b'; 512]);
        bytes.extend([0; 1024]);
        let (_dir, tree) = unpack(&[bytes.clone()]);
        let tree = tree.unwrap();
        let content = fs::read(tree.root.join("sparse")).unwrap();
        assert_eq!(content.len(), 8 << 20);
        assert_eq!(&content[..512], &[b'a'; 512][..]);
        assert!(content[512..4096].iter().all(|b| *b == 0));
        assert_eq!(&content[4096..4608], &[b'b'; 512][..]);
        let limits = UnpackLimits {
            max_unpacked_bytes: 4 << 20,
            ..UnpackLimits::default()
        };
        let (_dir, tree) = unpack_limited(&[bytes], limits);
        assert!(
            matches!(tree, Err(UnpackError::TooLarge { .. })),
            "{tree:?}"
        );
    }

    #[test]
    fn byte_sizes_print_in_their_largest_exact_unit() {
        assert_eq!(ByteSize(32 << 30).to_string(), "32 GiB");
        assert_eq!(ByteSize(64 << 20).to_string(), "64 MiB");
        assert_eq!(ByteSize(64 << 10).to_string(), "64 KiB");
        assert_eq!(ByteSize(1000).to_string(), "1000 bytes");
        assert_eq!(ByteSize(0).to_string(), "0 bytes");
    }

    #[test]
    fn gzip_and_zstd_layers_are_recognised_by_magic() {
        let mut t = TarBuilder::new();
        t.file("hello", b"world");
        let plain = t.bytes();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(plain.as_slice(), 3).unwrap();
        for (bytes, media_type) in [
            (&gz, "application/vnd.oci.image.layer.v1.tar+gzip"),
            (&zst, "application/vnd.oci.image.layer.v1.tar+zstd"),
            (&gz, "application/vnd.docker.image.rootfs.diff.tar"),
            (&plain, "application/vnd.docker.image.rootfs.diff.tar.gzip"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let mut u = Unpacker::new(&dir.path().join("r")).unwrap();
            u.apply_layer(bytes.as_slice(), &layer(0), media_type)
                .unwrap();
            assert_eq!(
                fs::read(dir.path().join("r/hello")).unwrap(),
                b"world",
                "{media_type}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let mut u = Unpacker::new(&dir.path().join("r")).unwrap();
        let err = u
            .apply_layer(&b"BZh91AY&SY"[..], &layer(0), "x")
            .unwrap_err();
        assert!(matches!(
            err,
            UnpackError::UnsupportedCompression {
                format: "bzip2",
                ..
            }
        ));
        let err = u
            .apply_layer(
                &b"garbage that is not gzip"[..],
                &layer(0),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
            .unwrap_err();
        assert!(
            matches!(err, UnpackError::CompressionMismatch { .. }),
            "{err}"
        );
        let err = u
            .apply_layer(
                &gz[..gz.len() / 2],
                &layer(0),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
            .unwrap_err();
        assert!(matches!(err, UnpackError::Read { .. }), "{err}");
    }
}
