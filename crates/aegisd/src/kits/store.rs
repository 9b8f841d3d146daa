//! Installed kits: one manifest file per kit in `~/.aegis/kits/` (`NAME.json` as installed by
//! `aegis kit install`, or `NAME.yaml`, `NAME.yml`, `NAME.json` put there by hand). The files
//! are read at each use, so an edited manifest applies to the next instance created from it;
//! instances already created keep the configuration they were created with.
//!
//! The same directory holds the per-instance config directories of instance daemons
//! (`~/.aegis/kits/HANDLE/`): only files are manifests, directories are never read as kits.

use std::path::{Path, PathBuf};

use aegis_proto::kit::{InstallKit, KitManifest};

use super::manifest::{self, ManifestError};
use crate::names::{self, NameError, NameKind};

/// Manifest file extensions, in the order a name is looked up.
const EXTENSIONS: [&str; 3] = ["json", "yaml", "yml"];

/// Why a kit operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    /// A name no kit can have (checked before it is looked up in the kit directory).
    #[error(transparent)]
    BadName(#[from] NameError),
    /// No kit of that name is installed.
    #[error("kit {name:?} is not installed")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// The manifest is not valid.
    #[error("invalid kit manifest")]
    Manifest(#[source] ManifestError),
    /// An installed manifest file is not valid.
    #[error("invalid kit manifest {}", path.display())]
    Installed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: ManifestError,
    },
    /// A kit of the same name is installed and `replace` was not asked for.
    #[error("kit {name:?} is already installed (version {version})")]
    AlreadyInstalled {
        /// Its name.
        name: String,
        /// The installed version.
        version: String,
    },
    /// `base_dir` is not an absolute path.
    #[error("base_dir {0:?} must be an absolute path")]
    BaseDir(String),
    /// A file of the kit store could not be read or written.
    #[error("cannot access {}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A blocking task died.
    #[error("kit store task failed: {0}")]
    Task(String),
}

impl KitError {
    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            KitError::NotFound { .. } => Some(
                "`aegis kit list` shows the installed kits; `aegis kit install PATH` adds one"
                    .to_owned(),
            ),
            KitError::AlreadyInstalled { .. } => {
                Some("pass --replace to install this manifest over it".to_owned())
            }
            KitError::Installed { path, .. } => Some(format!(
                "fix or remove {}, or install a valid manifest with `aegis kit install --replace PATH`",
                path.display()
            )),
            KitError::BadName(_)
            | KitError::Manifest(_)
            | KitError::BaseDir(_)
            | KitError::Io { .. }
            | KitError::Task(_) => None,
        }
    }
}

/// A kit as read from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledKit {
    /// The validated manifest.
    pub manifest: KitManifest,
    /// Its file.
    pub path: PathBuf,
}

/// The kit directory of one daemon; cheap to clone.
#[derive(Debug, Clone)]
pub struct KitStore {
    dir: PathBuf,
}

impl KitStore {
    /// The store in `dir` (created on first install).
    pub fn new(dir: PathBuf) -> KitStore {
        KitStore { dir }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every valid installed kit, by name. Invalid files are skipped with a warning (`get`
    /// explains them).
    ///
    /// # Errors
    /// When the directory cannot be read.
    pub async fn list(&self) -> Result<Vec<InstalledKit>, KitError> {
        let this = self.clone();
        blocking(move || this.list_blocking()).await
    }

    /// The kit called `name`.
    ///
    /// # Errors
    /// [`KitError::NotFound`], or [`KitError::Installed`] when its file is not valid.
    pub async fn get(&self, name: &str) -> Result<InstalledKit, KitError> {
        let this = self.clone();
        let name = name.to_owned();
        blocking(move || this.get_blocking(&name)).await
    }

    /// Validates and installs a manifest as `NAME.json`, replacing any other file of that name
    /// when `replace` is set. Returns the kit and whether it replaced an installed one.
    ///
    /// # Errors
    /// [`KitError::Manifest`], [`KitError::AlreadyInstalled`], I/O failures.
    pub async fn install(&self, req: InstallKit) -> Result<(InstalledKit, bool), KitError> {
        let this = self.clone();
        blocking(move || this.install_blocking(&req)).await
    }

    /// Removes a kit's manifest file(s). Instances created from it keep their configuration.
    ///
    /// # Errors
    /// [`KitError::NotFound`], I/O failures.
    pub async fn remove(&self, name: &str) -> Result<(), KitError> {
        let this = self.clone();
        let name = name.to_owned();
        blocking(move || this.remove_blocking(&name)).await
    }

    fn files_of(&self, name: &str) -> Vec<PathBuf> {
        EXTENSIONS
            .iter()
            .map(|ext| self.dir.join(format!("{name}.{ext}")))
            .filter(|p| p.is_file())
            .collect()
    }

    fn get_blocking(&self, name: &str) -> Result<InstalledKit, KitError> {
        names::check(NameKind::Kit, name)?;
        let path = self
            .files_of(name)
            .into_iter()
            .next()
            .ok_or_else(|| KitError::NotFound {
                name: name.to_owned(),
            })?;
        self.read(&path)
    }

    fn read(&self, path: &Path) -> Result<InstalledKit, KitError> {
        let text = std::fs::read_to_string(path).map_err(|source| KitError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let manifest =
            manifest::parse(&text, Some(&self.dir)).map_err(|source| KitError::Installed {
                path: path.to_path_buf(),
                source,
            })?;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if stem != manifest.name {
            return Err(KitError::Installed {
                path: path.to_path_buf(),
                source: ManifestError::Invalid {
                    field: "name".to_owned(),
                    problem: format!(
                        "{:?} does not match the file name: a kit's file is NAME.json or NAME.yaml",
                        manifest.name
                    ),
                },
            });
        }
        Ok(InstalledKit {
            manifest,
            path: path.to_path_buf(),
        })
    }

    fn list_blocking(&self) -> Result<Vec<InstalledKit>, KitError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(KitError::Io {
                    path: self.dir.clone(),
                    source,
                })
            }
        };
        let mut kits: Vec<InstalledKit> = Vec::new();
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let is_manifest = path.is_file()
                && path
                    .extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| EXTENSIONS.contains(&e));
            if !is_manifest {
                continue;
            }
            match self.read(&path) {
                // Two files of one name: the first in lookup order wins, as in `get`.
                Ok(kit) if kits.iter().any(|k| k.manifest.name == kit.manifest.name) => {}
                Ok(kit) => kits.push(kit),
                Err(e) => {
                    tracing::warn!(error = %crate::images::error_chain(&e), "skipping an invalid kit manifest");
                }
            }
        }
        kits.sort_by(|a, b| a.manifest.name.cmp(&b.manifest.name));
        for kit in &mut kits {
            // `get`'s lookup order decides which of several files of a name counts.
            if let Ok(first) = self.get_blocking(&kit.manifest.name) {
                *kit = first;
            }
        }
        Ok(kits)
    }

    fn install_blocking(&self, req: &InstallKit) -> Result<(InstalledKit, bool), KitError> {
        let base = match req.base_dir.as_deref() {
            Some(dir) if !Path::new(dir).is_absolute() => {
                return Err(KitError::BaseDir(dir.to_owned()))
            }
            Some(dir) => Some(PathBuf::from(dir)),
            None => None,
        };
        let manifest =
            manifest::parse(&req.manifest, base.as_deref()).map_err(KitError::Manifest)?;
        let name = manifest.name.clone();
        let replaced = !self.files_of(&name).is_empty();
        if !req.replace {
            match self.get_blocking(&name) {
                Ok(existing) => {
                    return Err(KitError::AlreadyInstalled {
                        name,
                        version: existing.manifest.version,
                    })
                }
                Err(KitError::Installed { .. }) => {
                    return Err(KitError::AlreadyInstalled {
                        name,
                        version: "unreadable".to_owned(),
                    })
                }
                Err(_) => {}
            }
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| KitError::Io { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let path = self.dir.join(format!("{name}.json"));
        let mut text = serde_json::to_string_pretty(&manifest)
            .expect("a kit manifest is plain data and always serializes");
        text.push('\n');
        crate::durable::write(&path, text.as_bytes(), 0o644).map_err(io(&path))?;
        for other in self.files_of(&name) {
            if other != path {
                std::fs::remove_file(&other).map_err(io(&other))?;
            }
        }
        Ok((InstalledKit { manifest, path }, replaced))
    }

    fn remove_blocking(&self, name: &str) -> Result<(), KitError> {
        names::check(NameKind::Kit, name)?;
        let files = self.files_of(name);
        if files.is_empty() {
            return Err(KitError::NotFound {
                name: name.to_owned(),
            });
        }
        for path in files {
            std::fs::remove_file(&path).map_err(|source| KitError::Io { path, source })?;
        }
        Ok(())
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KitError> + Send + 'static,
) -> Result<T, KitError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| KitError::Task(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str) -> InstallKit {
        InstallKit {
            manifest: text.to_owned(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn install_list_get_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = KitStore::new(dir.path().join("kits"));
        assert!(store.list().await.unwrap().is_empty());
        let (kit, replaced) = store
            .install(req("name: web\nversion: \"1\"\n"))
            .await
            .unwrap();
        assert_eq!(kit.path, dir.path().join("kits/web.json"));
        assert!(!replaced);
        let err = store
            .install(req("name: web\nversion: \"2\"\n"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, KitError::AlreadyInstalled { ref version, .. } if version == "1"),
            "{err}"
        );
        let mut again = req("{\"name\": \"web\", \"version\": \"2\"}");
        again.replace = true;
        assert!(store.install(again).await.unwrap().1);
        assert_eq!(store.get("web").await.unwrap().manifest.version, "2");
        // A hand-written YAML file and an invalid one beside it; a per-instance directory.
        std::fs::write(
            dir.path().join("kits/db.yaml"),
            "name: db\nversion: \"3\"\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("kits/bad.yaml"), "name: bad\n").unwrap();
        std::fs::create_dir(dir.path().join("kits/my-agent")).unwrap();
        let names: Vec<String> = store
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.manifest.name)
            .collect();
        assert_eq!(names, ["db", "web"]);
        let err = store.get("bad").await.unwrap_err();
        assert!(
            crate::images::error_chain(&err).contains("missing field `version`"),
            "{err}"
        );
        store.remove("web").await.unwrap();
        assert!(matches!(
            store.get("web").await.unwrap_err(),
            KitError::NotFound { .. }
        ));
        assert!(matches!(
            store.remove("web").await.unwrap_err(),
            KitError::NotFound { .. }
        ));
    }

    #[tokio::test]
    async fn path_like_names_are_refused_before_the_directory_is_read() {
        let dir = tempfile::tempdir().unwrap();
        // A manifest outside the kit directory that `../outside` would name.
        std::fs::write(
            dir.path().join("outside.yaml"),
            "name: outside\nversion: \"1\"\n",
        )
        .unwrap();
        let store = KitStore::new(dir.path().join("kits"));
        let long = "k".repeat(4096);
        for name in [
            "../outside",
            "/etc/passwd",
            "a/b",
            ".",
            "..",
            "",
            "a\0b",
            "a\nb",
            &long,
        ] {
            let err = store.get(name).await.unwrap_err();
            assert!(matches!(err, KitError::BadName(_)), "{name:?}: {err}");
            assert!(err.to_string().starts_with("invalid kit name "), "{err}");
            let err = store.remove(name).await.unwrap_err();
            assert!(matches!(err, KitError::BadName(_)), "{name:?}: {err}");
        }
        assert!(dir.path().join("outside.yaml").is_file());
        assert!(!dir.path().join("kits").exists());
    }
}
