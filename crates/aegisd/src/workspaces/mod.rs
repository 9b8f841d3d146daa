//! Workspaces: what an instance has at `/workspace`, the durable place of seed 001 (caches go in
//! `/tmp`).
//!
//! Three kinds, chosen per instance ([`WorkspaceSpec`]):
//! - the instance's own **volume** (the default): a sparse ext4 file in its directory, attached as
//!   a second virtio-blk disk, removed with the instance. The fastest, and the only kind a
//!   snapshot can cover (its file is stamped like the root overlay).
//! - a **named** workspace kept by Aegis under `workspaces/NAME/` until `aegis workspace rm`:
//!   a `directory` shared live over virtio-fs (several instances at once) or a `volume` (one
//!   instance at a time: two kernels mounting one ext4 would corrupt it).
//! - a **host** directory, shared live over virtio-fs.
//!
//! Named workspaces live only on disk: `workspaces/NAME/workspace.json` says what they are, so
//! the registry holds nothing that could disagree with the files.

use std::path::{Path, PathBuf};

use aegis_proto::api::{WorkspaceInfo, WorkspaceView};
use serde::{Deserialize, Serialize};

use crate::names::{self, NameError, NameKind};

/// Capacity of an instance's own volume when none is asked for. The file is sparse: only what
/// the guest writes takes room on the host.
pub const DEFAULT_VOLUME_MIB: u64 = 8192;
/// Accepted volume capacities in MiB (64 MiB to 16 TiB).
pub const VOLUME_RANGE_MIB: (u64, u64) = (64, 16 << 20);
/// The virtio-fs tag of a shared directory.
pub const SHARE_TAG: &str = "workspace";
/// File name of an instance's own volume, in its directory.
const INSTANCE_VOLUME: &str = "workspace.ext4";
/// The metadata file of a named workspace.
const META_FILE: &str = "workspace.json";
/// A named directory's shared directory.
const DATA_DIR: &str = "data";
/// A named volume's file.
const VOLUME_FILE: &str = "volume.ext4";
/// Value of `workspace` that asks for no workspace.
pub const NONE: &str = "none";

/// An instance's workspace, as stored in its configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkspaceSpec {
    /// The instance's own ext4 volume.
    Volume {
        /// Capacity.
        size_mib: u64,
    },
    /// A named workspace.
    Named {
        /// Its name.
        name: String,
    },
    /// A host directory (canonical, absolute).
    Host {
        /// The directory.
        path: PathBuf,
    },
    /// Nothing at `/workspace`.
    None,
}

impl Default for WorkspaceSpec {
    fn default() -> Self {
        WorkspaceSpec::Volume {
            size_mib: DEFAULT_VOLUME_MIB,
        }
    }
}

/// The kind of a named workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamedKind {
    /// A directory shared over virtio-fs.
    Directory,
    /// An ext4 volume file.
    Volume,
}

impl NamedKind {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            NamedKind::Directory => "directory",
            NamedKind::Volume => "volume",
        }
    }
}

/// What a named workspace's `workspace.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct NamedMeta {
    kind: NamedKind,
    #[serde(default)]
    size_mib: Option<u64>,
    created_at: String,
}

/// What a boot attaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attachment {
    /// An ext4 volume file, created with this capacity when missing.
    Volume {
        /// The file.
        path: PathBuf,
        /// Its capacity.
        size_mib: u64,
    },
    /// A directory shared over virtio-fs.
    Directory {
        /// The directory.
        path: PathBuf,
    },
}

/// Why a workspace request or operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// A name that is not valid.
    #[error(transparent)]
    BadName(#[from] NameError),
    /// A host directory given as a relative path.
    #[error("host directory {0:?} must be an absolute path (the CLI resolves relative ones)")]
    RelativePath(String),
    /// A host directory that cannot be shared.
    #[error("cannot share host directory {}: {why}", path.display())]
    HostDir {
        /// The directory.
        path: PathBuf,
        /// Why not.
        why: String,
    },
    /// A size out of range.
    #[error("workspace size {value} MiB is out of range ({}..={} MiB)", VOLUME_RANGE_MIB.0, VOLUME_RANGE_MIB.1)]
    Size {
        /// Requested.
        value: u64,
    },
    /// A size given for a workspace that has none.
    #[error("a workspace size applies to volumes only, not to {0}")]
    SizeNotApplicable(String),
    /// An unknown kind.
    #[error("invalid workspace kind {0:?}: expected directory or volume")]
    Kind(String),
    /// No such named workspace.
    #[error("no workspace named {0:?}")]
    NotFound(String),
    /// The name is taken.
    #[error("a workspace named {0:?} already exists")]
    Exists(String),
    /// A named workspace in use by instances.
    #[error("workspace {name:?} is used by {}: delete {} first", instances.join(", "), if instances.len() == 1 { "it" } else { "them" })]
    InUse {
        /// Its name.
        name: String,
        /// The instances (handles or ids).
        instances: Vec<String>,
    },
    /// A named volume already attached to another instance.
    #[error("workspace {name:?} is a volume and {instance} uses it; a volume serves one instance at a time (use a directory workspace to share)")]
    VolumeTaken {
        /// Its name.
        name: String,
        /// The instance using it.
        instance: String,
    },
    /// A file of the workspace could not be read or written.
    #[error("cannot access {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// mke2fs failed.
    #[error("cannot create the workspace volume")]
    Volume(#[source] aegis_image::ext4::Ext4Error),
    /// A metadata file is damaged.
    #[error("workspace metadata {} is damaged: {why}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

impl WorkspaceSpec {
    /// Parses the API's `workspace` and `workspace_size_mb`: absent is the instance's own
    /// volume, `none` is nothing, an absolute path is a host directory (checked later by
    /// [`WorkspaceStore::prepare`]), anything else names a workspace.
    ///
    /// # Errors
    /// [`WorkspaceError`] for a relative path, a bad name or a misplaced or bad size.
    pub fn parse(value: Option<&str>, size_mib: Option<u64>) -> Result<Self, WorkspaceError> {
        let spec = match value.map(str::trim).filter(|v| !v.is_empty()) {
            None => {
                let size_mib = size_mib.unwrap_or(DEFAULT_VOLUME_MIB);
                if !(VOLUME_RANGE_MIB.0..=VOLUME_RANGE_MIB.1).contains(&size_mib) {
                    return Err(WorkspaceError::Size { value: size_mib });
                }
                return Ok(WorkspaceSpec::Volume { size_mib });
            }
            Some(NONE) => WorkspaceSpec::None,
            Some(path) if path.starts_with('/') => WorkspaceSpec::Host {
                path: PathBuf::from(path),
            },
            Some(path) if path.contains('/') || path.starts_with('.') || path.starts_with('~') => {
                return Err(WorkspaceError::RelativePath(path.to_owned()))
            }
            Some(name) => {
                validate_name(name)?;
                WorkspaceSpec::Named {
                    name: name.to_owned(),
                }
            }
        };
        match size_mib {
            Some(_) => Err(WorkspaceError::SizeNotApplicable(spec.describe())),
            None => Ok(spec),
        }
    }

    /// A short description for messages.
    pub fn describe(&self) -> String {
        match self {
            WorkspaceSpec::Volume { size_mib } => {
                format!("the instance's own volume ({size_mib} MiB)")
            }
            WorkspaceSpec::Named { name } => format!("workspace {name:?}"),
            WorkspaceSpec::Host { path } => format!("host directory {}", path.display()),
            WorkspaceSpec::None => "no workspace".to_owned(),
        }
    }

    /// The named workspace's name.
    pub fn name(&self) -> Option<&str> {
        match self {
            WorkspaceSpec::Named { name } => Some(name),
            _ => None,
        }
    }
}

/// Checks a workspace name: the rules of instance handles, and not `none`.
///
/// # Errors
/// [`WorkspaceError::BadName`].
pub fn validate_name(name: &str) -> Result<(), WorkspaceError> {
    Ok(names::check(NameKind::Workspace, name)?)
}

/// The named workspaces, under `workspaces/` in Aegis's home.
#[derive(Debug, Clone)]
pub struct WorkspaceStore {
    root: PathBuf,
}

/// A named workspace found on disk.
#[derive(Debug, Clone)]
pub struct Named {
    /// Its name.
    pub name: String,
    kind: NamedKind,
    size_mib: Option<u64>,
    created_at: String,
    dir: PathBuf,
}

impl Named {
    /// Its kind.
    pub fn kind(&self) -> NamedKind {
        self.kind
    }

    /// The directory or volume file a boot attaches.
    pub fn attachment(&self) -> Attachment {
        match self.kind {
            NamedKind::Directory => Attachment::Directory {
                path: self.dir.join(DATA_DIR),
            },
            NamedKind::Volume => Attachment::Volume {
                path: self.dir.join(VOLUME_FILE),
                size_mib: self.size_mib.unwrap_or(DEFAULT_VOLUME_MIB),
            },
        }
    }

    /// The API view, with the instances that use it.
    pub fn info(&self, instances: Vec<String>) -> WorkspaceInfo {
        let target = match self.attachment() {
            Attachment::Directory { path } | Attachment::Volume { path, .. } => path,
        };
        WorkspaceInfo {
            name: self.name.clone(),
            kind: self.kind.as_str().to_owned(),
            path: target.display().to_string(),
            size_mb: self.size_mib.filter(|_| self.kind == NamedKind::Volume),
            used_bytes: disk_usage(&target),
            created_at: self.created_at.clone(),
            instances,
        }
    }
}

impl WorkspaceStore {
    /// The store under `root`.
    pub fn new(root: PathBuf) -> WorkspaceStore {
        WorkspaceStore { root }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The named workspace `name`, if it exists.
    ///
    /// # Errors
    /// When its metadata cannot be read.
    pub fn get(&self, name: &str) -> Result<Option<Named>, WorkspaceError> {
        validate_name(name)?;
        let dir = self.dir(name);
        let meta_path = dir.join(META_FILE);
        let text = match std::fs::read(&meta_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(WorkspaceError::Io {
                    path: meta_path,
                    source,
                })
            }
        };
        let meta: NamedMeta =
            serde_json::from_slice(&text).map_err(|e| WorkspaceError::Corrupt {
                path: meta_path,
                why: e.to_string(),
            })?;
        Ok(Some(Named {
            name: name.to_owned(),
            kind: meta.kind,
            size_mib: meta.size_mib,
            created_at: meta.created_at,
            dir,
        }))
    }

    /// Every named workspace, by name. Damaged ones are skipped with a warning.
    pub fn list(&self) -> Vec<Named> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| validate_name(n).is_ok())
            .collect();
        names.sort();
        names
            .into_iter()
            .filter_map(|name| match self.get(&name) {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(workspace = %name, error = %e, "skipping a damaged workspace");
                    None
                }
            })
            .collect()
    }

    /// Creates a named workspace. A volume's file is created at its first boot.
    ///
    /// # Errors
    /// [`WorkspaceError::Exists`], a bad name, kind or size, or an I/O error.
    pub fn create(
        &self,
        name: &str,
        kind: Option<&str>,
        size_mib: Option<u64>,
    ) -> Result<Named, WorkspaceError> {
        validate_name(name)?;
        let kind = match kind.unwrap_or("directory") {
            "directory" | "dir" => NamedKind::Directory,
            "volume" => NamedKind::Volume,
            other => return Err(WorkspaceError::Kind(other.to_owned())),
        };
        let size_mib = match (kind, size_mib) {
            (NamedKind::Directory, Some(_)) => {
                return Err(WorkspaceError::SizeNotApplicable(
                    "a directory workspace".to_owned(),
                ))
            }
            (NamedKind::Directory, None) => None,
            (NamedKind::Volume, size) => {
                let size = size.unwrap_or(DEFAULT_VOLUME_MIB);
                if !(VOLUME_RANGE_MIB.0..=VOLUME_RANGE_MIB.1).contains(&size) {
                    return Err(WorkspaceError::Size { value: size });
                }
                Some(size)
            }
        };
        let dir = self.dir(name);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| WorkspaceError::Io { path, source }
        };
        std::fs::create_dir_all(&self.root).map_err(io(&self.root))?;
        // The directory is the lock: of two concurrent creates of one name, one fails here.
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(WorkspaceError::Exists(name.to_owned()))
            }
            Err(source) => return Err(WorkspaceError::Io { path: dir, source }),
        }
        if kind == NamedKind::Directory {
            std::fs::create_dir(dir.join(DATA_DIR)).map_err(io(&dir))?;
        }
        let meta = NamedMeta {
            kind,
            size_mib,
            created_at: crate::logs::now_ts(),
        };
        let meta_path = dir.join(META_FILE);
        let text = serde_json::to_vec_pretty(&meta).map_err(|e| WorkspaceError::Corrupt {
            path: meta_path.clone(),
            why: e.to_string(),
        })?;
        crate::durable::write(&meta_path, &text, 0o644).map_err(io(&meta_path))?;
        tracing::info!(workspace = %name, kind = kind.as_str(), "workspace created");
        Ok(Named {
            name: name.to_owned(),
            kind,
            size_mib,
            created_at: meta.created_at,
            dir,
        })
    }

    /// Removes a named workspace and its files. The caller checks that no instance uses it.
    ///
    /// # Errors
    /// [`WorkspaceError::NotFound`] or an I/O error.
    pub fn remove(&self, name: &str) -> Result<(), WorkspaceError> {
        if self.get(name)?.is_none() {
            return Err(WorkspaceError::NotFound(name.to_owned()));
        }
        let dir = self.dir(name);
        // Renamed away first so a half-removed workspace is never found under its name.
        let doomed = self
            .root
            .join(format!(".removing-{name}-{}", std::process::id()));
        std::fs::rename(&dir, &doomed).map_err(|source| WorkspaceError::Io {
            path: dir.clone(),
            source,
        })?;
        std::fs::remove_dir_all(&doomed).map_err(|source| WorkspaceError::Io {
            path: doomed,
            source,
        })?;
        tracing::info!(workspace = %name, "workspace removed");
        Ok(())
    }

    /// Why a (canonical) host directory must not be given to a guest, if it must not: the
    /// daemon's home holds the master key and every secret, so neither it, nor anything in it,
    /// nor a directory that contains it may be shared; nor the kernel's views of the host.
    fn unshareable(&self, dir: &Path) -> Option<String> {
        if dir == Path::new("/") {
            return Some("the root directory cannot be shared".to_owned());
        }
        for kernel in ["/proc", "/sys", "/dev"] {
            if dir.starts_with(kernel) {
                return Some(format!(
                    "{kernel} is the host kernel's and cannot be shared"
                ));
            }
        }
        let home = self.root.parent()?;
        let home = home.canonicalize().unwrap_or_else(|_| home.to_path_buf());
        if dir.starts_with(&home) {
            return Some(format!(
                "it is inside the Aegis home {}, which holds the master key and secrets",
                home.display()
            ));
        }
        if home.starts_with(dir) {
            return Some(format!(
                "it contains the Aegis home {}, which holds the master key and secrets",
                home.display()
            ));
        }
        None
    }

    /// Checks an instance's workspace before the instance is stored: a host directory must
    /// exist and is stored canonical (so a symlink swapped later cannot redirect it); a named
    /// workspace is created as a directory on first use. `users` lists the other instances that
    /// use each named volume.
    ///
    /// # Errors
    /// [`WorkspaceError`] saying what is wrong.
    pub fn prepare(
        &self,
        spec: WorkspaceSpec,
        volume_users: impl Fn(&str) -> Option<String>,
    ) -> Result<WorkspaceSpec, WorkspaceError> {
        match spec {
            WorkspaceSpec::Host { path } => {
                let canonical = path.canonicalize().map_err(|e| WorkspaceError::HostDir {
                    path: path.clone(),
                    why: e.to_string(),
                })?;
                if !canonical.is_dir() {
                    return Err(WorkspaceError::HostDir {
                        path,
                        why: "not a directory".to_owned(),
                    });
                }
                if let Some(why) = self.unshareable(&canonical) {
                    return Err(WorkspaceError::HostDir { path, why });
                }
                Ok(WorkspaceSpec::Host { path: canonical })
            }
            WorkspaceSpec::Named { name } => {
                let named = match self.get(&name)? {
                    Some(named) => named,
                    None => match self.create(&name, None, None) {
                        Ok(named) => named,
                        // Created concurrently by another request: use it.
                        Err(WorkspaceError::Exists(_)) => self
                            .get(&name)?
                            .ok_or_else(|| WorkspaceError::NotFound(name.clone()))?,
                        Err(e) => return Err(e),
                    },
                };
                if named.kind == NamedKind::Volume {
                    if let Some(instance) = volume_users(&name) {
                        return Err(WorkspaceError::VolumeTaken { name, instance });
                    }
                }
                Ok(WorkspaceSpec::Named { name })
            }
            other => Ok(other),
        }
    }

    /// What a boot of the instance in `instance_dir` attaches.
    ///
    /// # Errors
    /// When a named workspace has disappeared or is damaged.
    pub fn attachment(
        &self,
        spec: &WorkspaceSpec,
        instance_dir: &Path,
    ) -> Result<Option<Attachment>, WorkspaceError> {
        Ok(match spec {
            WorkspaceSpec::Volume { size_mib } => Some(Attachment::Volume {
                path: instance_dir.join(INSTANCE_VOLUME),
                size_mib: *size_mib,
            }),
            WorkspaceSpec::Named { name } => Some(
                self.get(name)?
                    .ok_or_else(|| WorkspaceError::NotFound(name.clone()))?
                    .attachment(),
            ),
            WorkspaceSpec::Host { path } => Some(Attachment::Directory { path: path.clone() }),
            WorkspaceSpec::None => None,
        })
    }

    /// The API view of an instance's workspace.
    pub fn view(&self, spec: &WorkspaceSpec, instance_dir: &Path) -> Option<WorkspaceView> {
        let attachment = self.attachment(spec, instance_dir).ok().flatten();
        let (path, size_mb) = match attachment {
            Some(Attachment::Volume { path, size_mib }) => (path, Some(size_mib)),
            Some(Attachment::Directory { path }) => (path, None),
            None if matches!(spec, WorkspaceSpec::Named { .. }) => {
                (PathBuf::from("(missing)"), None)
            }
            None => return None,
        };
        let kind = match spec {
            WorkspaceSpec::Volume { .. } => "volume",
            WorkspaceSpec::Named { .. } => "named",
            WorkspaceSpec::Host { .. } => "host",
            WorkspaceSpec::None => return None,
        };
        Some(WorkspaceView {
            kind: kind.to_owned(),
            name: spec.name().map(str::to_owned),
            path: path.display().to_string(),
            size_mb,
        })
    }
}

/// Creates an ext4 volume file of `size_mib` at `path` if there is none yet.
///
/// # Errors
/// [`WorkspaceError::Volume`] when mke2fs fails (the partial file is removed).
pub fn ensure_volume(path: &Path, size_mib: u64) -> Result<(), WorkspaceError> {
    if path.exists() {
        return Ok(());
    }
    let tmp = path.with_extension("ext4.new");
    let _ = std::fs::remove_file(&tmp);
    aegis_image::ext4::make_volume(&tmp, size_mib << 20, "workspace").map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        WorkspaceError::Volume(e)
    })?;
    std::fs::rename(&tmp, path).map_err(|source| WorkspaceError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Bytes `path` (a file or a directory tree) takes on disk.
fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return own;
    };
    own + entries
        .filter_map(Result::ok)
        .map(|e| disk_usage(&e.path()))
        .sum::<u64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_request() {
        assert_eq!(
            WorkspaceSpec::parse(None, None).unwrap(),
            WorkspaceSpec::Volume {
                size_mib: DEFAULT_VOLUME_MIB
            }
        );
        assert_eq!(
            WorkspaceSpec::parse(None, Some(256)).unwrap(),
            WorkspaceSpec::Volume { size_mib: 256 }
        );
        assert_eq!(
            WorkspaceSpec::parse(Some("none"), None).unwrap(),
            WorkspaceSpec::None
        );
        assert_eq!(
            WorkspaceSpec::parse(Some("shared"), None).unwrap(),
            WorkspaceSpec::Named {
                name: "shared".into()
            }
        );
        assert_eq!(
            WorkspaceSpec::parse(Some("/srv/x"), None).unwrap(),
            WorkspaceSpec::Host {
                path: "/srv/x".into()
            }
        );
        for (value, size, want) in [
            (Some("./x"), None, "must be an absolute path"),
            (Some("a/b"), None, "must be an absolute path"),
            (Some("-x"), None, "invalid workspace name"),
            (None, Some(1), "out of range"),
            (Some("shared"), Some(100), "applies to volumes only"),
        ] {
            let err = WorkspaceSpec::parse(value, size).unwrap_err().to_string();
            assert!(err.contains(want), "{value:?} {size:?}: {err}");
        }
    }

    #[test]
    fn path_like_names_are_refused_before_the_store_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        let store = WorkspaceStore::new(dir.path().join("workspaces"));
        let long = "w".repeat(4096);
        for name in [
            "../x", "/etc", "a/b", ".", "..", "", "a\0b", "a\nb", "a\u{1b}", "none", &long,
        ] {
            for err in [
                store.create(name, None, None).unwrap_err(),
                store.get(name).unwrap_err(),
                store.remove(name).unwrap_err(),
            ] {
                assert!(matches!(err, WorkspaceError::BadName(_)), "{name:?}: {err}");
                assert!(
                    err.to_string().starts_with("invalid workspace name "),
                    "{err}"
                );
            }
        }
        assert!(!dir.path().join("workspaces").exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // As an instance's `workspace`: a path-like value is a host directory that must be
        // absolute, anything else a name.
        for (value, want) in [
            ("../x", "must be an absolute path"),
            ("a/b", "must be an absolute path"),
            (".", "must be an absolute path"),
            ("..", "must be an absolute path"),
            ("a\0b", "invalid workspace name \"a\\0b\""),
            ("a\u{7f}", "invalid workspace name"),
            (long.as_str(), "invalid workspace name"),
        ] {
            let err = WorkspaceSpec::parse(Some(value), None)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{value:?}: {err}");
        }
    }

    #[test]
    fn named_workspaces_live_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = WorkspaceStore::new(dir.path().join("workspaces"));
        assert!(store.list().is_empty());
        let a = store.create("a", None, None).unwrap();
        assert!(matches!(a.attachment(), Attachment::Directory { path } if path.is_dir()));
        store.create("b", Some("volume"), Some(128)).unwrap();
        assert!(matches!(
            store.create("a", None, None),
            Err(WorkspaceError::Exists(_))
        ));
        assert!(matches!(
            store.create("c", Some("volume"), Some(1)),
            Err(WorkspaceError::Size { .. })
        ));
        let names: Vec<String> = store.list().into_iter().map(|n| n.name).collect();
        assert_eq!(names, ["a", "b"]);
        // A named volume serves one instance.
        let taken = store.prepare(WorkspaceSpec::Named { name: "b".into() }, |_| {
            Some("web".to_owned())
        });
        assert!(matches!(taken, Err(WorkspaceError::VolumeTaken { .. })));
        // First use creates a directory workspace.
        store
            .prepare(WorkspaceSpec::Named { name: "new".into() }, |_| None)
            .unwrap();
        assert_eq!(
            store.get("new").unwrap().unwrap().kind(),
            NamedKind::Directory
        );
        store.remove("a").unwrap();
        assert!(store.get("a").unwrap().is_none());
        assert!(matches!(
            store.remove("a"),
            Err(WorkspaceError::NotFound(_))
        ));
    }

    #[test]
    fn the_home_its_parents_and_the_kernels_views_are_never_shared() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home/.aegis");
        std::fs::create_dir_all(home.join("secrets")).unwrap();
        std::fs::create_dir_all(dir.path().join("home/project")).unwrap();
        let store = WorkspaceStore::new(home.join("workspaces"));
        let share = |path: PathBuf| store.prepare(WorkspaceSpec::Host { path }, |_| None);
        for refused in [
            home.clone(),
            home.join("secrets"),
            dir.path().join("home"),
            dir.path().to_path_buf(),
            PathBuf::from("/"),
            PathBuf::from("/proc"),
            PathBuf::from("/proc/self"),
            PathBuf::from("/sys/kernel"),
            PathBuf::from("/dev"),
        ] {
            let err = share(refused.clone()).unwrap_err();
            assert!(
                matches!(err, WorkspaceError::HostDir { .. }),
                "{} was shared: {err}",
                refused.display()
            );
        }
        let err = share(home.join("secrets")).unwrap_err().to_string();
        assert!(err.contains("master key"), "{err}");
        assert!(share(dir.path().join("home/project")).is_ok());
    }

    #[test]
    fn host_directories_are_canonical_and_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let store = WorkspaceStore::new(dir.path().join("home/workspaces"));
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
        let spec = store
            .prepare(
                WorkspaceSpec::Host {
                    path: dir.path().join("link"),
                },
                |_| None,
            )
            .unwrap();
        assert_eq!(
            spec,
            WorkspaceSpec::Host {
                path: dir.path().join("real").canonicalize().unwrap()
            }
        );
        let missing = store.prepare(
            WorkspaceSpec::Host {
                path: dir.path().join("missing"),
            },
            |_| None,
        );
        assert!(missing
            .unwrap_err()
            .to_string()
            .contains("cannot share host directory"));
        let root = store.prepare(WorkspaceSpec::Host { path: "/".into() }, |_| None);
        assert!(root.unwrap_err().to_string().contains("root directory"));
    }
}
