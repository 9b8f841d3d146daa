//! The master key file `$AEGIS_HOME/master.key`: 32 random bytes, mode 0600, created on first
//! use. A file of another length, or one that group or others may access, is refused: the first
//! means it is not our key, the second that it may have leaked.

use std::fmt;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::{KeyInit, OsRng};
use aes_gcm::Aes256Gcm;
use zeroize::Zeroizing;

/// The key file's name inside `$AEGIS_HOME`.
pub const KEY_FILE: &str = "master.key";
/// AES-256 key length.
pub const KEY_BYTES: usize = 32;
/// Mode bits that must be clear: any access by group or others.
const FORBIDDEN_MODE: u32 = 0o077;

/// Why the master key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file exists but cannot be read.
    #[error("cannot read the master key {}", path.display())]
    Read {
        /// The key file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file could not be created.
    #[error("cannot create the master key {}", path.display())]
    Create {
        /// The key file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not 32 bytes long.
    #[error("master key {} has {len} bytes, expected {KEY_BYTES}", path.display())]
    WrongLength {
        /// The key file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// Group or others may access the file.
    #[error(
        "master key {} is accessible by group or others (mode {mode:04o}), so it may have leaked",
        path.display()
    )]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Secrets are stored but their key file is gone.
    #[error("master key {} is missing, so the stored secrets cannot be decrypted", path.display())]
    Missing {
        /// The key file.
        path: PathBuf,
    },
}

impl KeyError {
    /// The fix.
    pub fn hint(&self) -> Option<String> {
        match self {
            KeyError::Permissions { path, .. } => Some(format!(
                "run `chmod 600 {}`; if others could read it, also rotate every secret \
                 (`aegis secret set NAME`)",
                path.display()
            )),
            KeyError::WrongLength { path, .. } => Some(format!(
                "restore the original {KEY_BYTES}-byte key file at {}; to start over instead, \
                 move it away and set every secret again (`aegis secret set NAME`)",
                path.display()
            )),
            KeyError::Missing { path } => Some(format!(
                "restore the key file at {}, or set every secret again (`aegis secret set NAME`)",
                path.display()
            )),
            KeyError::Read { path, .. } | KeyError::Create { path, .. } => Some(format!(
                "check that the daemon's user owns {} and its directory",
                path.display()
            )),
        }
    }
}

/// AES-256-GCM under a raw key (the master key, or a stream's data key).
pub(super) fn cipher_of(key: &[u8; KEY_BYTES]) -> Aes256Gcm {
    Aes256Gcm::new(aes_gcm::Key::<Aes256Gcm>::from_slice(&key[..]))
}

/// The master key, zeroised on drop; `Debug` prints `[redacted]`.
pub struct MasterKey(Zeroizing<[u8; KEY_BYTES]>);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

impl MasterKey {
    /// Reads the key at `path`; `Ok(None)` when there is no file.
    ///
    /// # Errors
    /// [`KeyError`] for a file that cannot be read, has the wrong length, or is accessible by
    /// group or others.
    pub fn load(path: &Path) -> Result<Option<MasterKey>, KeyError> {
        let read_err = |source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_err(e)),
        };
        let meta = file.metadata().map_err(read_err)?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & FORBIDDEN_MODE != 0 {
            return Err(KeyError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        if meta.len() != KEY_BYTES as u64 {
            return Err(KeyError::WrongLength {
                path: path.to_path_buf(),
                len: meta.len(),
            });
        }
        let mut key = Zeroizing::new([0u8; KEY_BYTES]);
        file.read_exact(&mut key[..]).map_err(read_err)?;
        // The file may have grown between the length check and the read.
        let mut extra = [0u8; 1];
        if file.read(&mut extra).map_err(read_err)? != 0 {
            return Err(KeyError::WrongLength {
                path: path.to_path_buf(),
                len: meta.len() + 1,
            });
        }
        Ok(Some(MasterKey(key)))
    }

    /// Reads the key at `path`, creating a new random one (mode 0600) when there is none.
    /// Creation is atomic: a concurrent creator's key wins and is read back.
    ///
    /// # Errors
    /// See [`MasterKey::load`]; [`KeyError::Create`] when the file cannot be written.
    pub fn load_or_create(path: &Path) -> Result<MasterKey, KeyError> {
        if let Some(key) = MasterKey::load(path)? {
            return Ok(key);
        }
        let create_err = |source| KeyError::Create {
            path: path.to_path_buf(),
            source,
        };
        let mut bytes = Zeroizing::new([0u8; KEY_BYTES]);
        OsRng.fill_bytes(&mut bytes[..]);

        let dir = path.parent().unwrap_or_else(|| Path::new("."));
        std::fs::create_dir_all(dir).map_err(create_err)?;
        let tmp = dir.join(format!(
            ".{KEY_FILE}.{}.{}.tmp",
            std::process::id(),
            rand::random::<u32>()
        ));
        let written = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            file.write_all(&bytes[..])?;
            file.sync_all()?;
            // A hard link never replaces an existing file: of two creators, one wins.
            std::fs::hard_link(&tmp, path)
        })();
        let _ = std::fs::remove_file(&tmp);
        match written {
            Ok(()) => {
                if let Ok(d) = std::fs::File::open(dir) {
                    let _ = d.sync_all();
                }
                tracing::info!(path = %path.display(), "created the master key for secrets");
                Ok(MasterKey(bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => MasterKey::load(path)?
                .ok_or_else(|| KeyError::Missing {
                    path: path.to_path_buf(),
                }),
            Err(e) => Err(create_err(e)),
        }
    }

    /// The cipher for this key.
    pub(super) fn cipher(&self) -> Aes256Gcm {
        cipher_of(&self.0)
    }

    /// A key from raw bytes (tests).
    #[cfg(test)]
    pub(super) fn from_bytes(bytes: [u8; KEY_BYTES]) -> MasterKey {
        MasterKey(Zeroizing::new(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn created_on_first_use_with_mode_0600_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("home").join(KEY_FILE);
        assert!(MasterKey::load(&path).unwrap().is_none());
        let first = MasterKey::load_or_create(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), KEY_BYTES as u64);
        let again = MasterKey::load_or_create(&path).unwrap();
        assert_eq!(first.0[..], again.0[..]);
        assert_ne!(first.0[..], [0u8; KEY_BYTES]);
        // No temporary files left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [KEY_FILE]);
        assert_eq!(format!("{first:?}"), "MasterKey([redacted])");
    }

    #[test]
    fn refuses_group_or_world_access_naming_the_file_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        MasterKey::load_or_create(&path).unwrap();
        for bad in [0o644, 0o640, 0o604, 0o660, 0o601] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(bad)).unwrap();
            let err = MasterKey::load_or_create(&path).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "master key {} is accessible by group or others (mode {bad:04o}), so it may \
                     have leaked",
                    path.display()
                )
            );
            assert!(err
                .hint()
                .unwrap()
                .starts_with(&format!("run `chmod 600 {}`", path.display())));
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(MasterKey::load(&path).unwrap().is_some());
    }

    #[test]
    fn refuses_a_wrong_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        for len in [0usize, 16, 31, 33, 64] {
            std::fs::write(&path, vec![7u8; len]).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let err = MasterKey::load_or_create(&path).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("master key {} has {len} bytes, expected 32", path.display())
            );
            assert!(err.hint().unwrap().contains(&path.display().to_string()));
            // Never overwritten.
            assert_eq!(std::fs::read(&path).unwrap().len(), len);
        }
    }

    #[test]
    fn concurrent_creators_agree() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let keys: Vec<[u8; KEY_BYTES]> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| *MasterKey::load_or_create(&path).unwrap().0))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.windows(2).all(|w| w[0] == w[1]));
    }
}
