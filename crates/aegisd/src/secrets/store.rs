//! [`SecretStore`]: set, list, delete and resolve secrets. Sealing, opening and the key file run
//! on the blocking pool; the registry holds only ciphertexts.

use std::path::PathBuf;

use super::cipher::{self, Sealed};
use super::key::{KeyError, MasterKey};
use super::name::{SecretName, SecretSelection};
use super::value::{SecretEnv, SecretValue, MAX_INJECTED_BYTES};
use crate::logs::now_ts;
use crate::registry::{Registry, RegistryError, SecretMeta, SecretRow};

/// Why a secret operation failed. Messages name secrets, never values.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Not a valid name.
    #[error(transparent)]
    InvalidName(#[from] crate::names::NameError),
    /// The value cannot be stored.
    #[error("cannot store secret {name}: {problem}")]
    InvalidValue {
        /// The secret.
        name: String,
        /// What is wrong (never the value itself).
        problem: String,
    },
    /// Requested secrets do not exist.
    #[error("{}", not_found(names))]
    NotFound {
        /// The missing names, in the order requested.
        names: Vec<String>,
    },
    /// A stored value does not decrypt: the key file was replaced or the row was altered.
    #[error("secret {name} cannot be decrypted: its stored ciphertext was altered or was sealed with another master key")]
    Decrypt {
        /// The secret.
        name: String,
    },
    /// Encryption failed.
    #[error("cannot encrypt secret {name}")]
    Encrypt {
        /// The secret.
        name: String,
    },
    /// Together the selected secrets are too large for one process environment.
    #[error(
        "the selected secrets take {bytes} bytes, more than the {max} one process may receive"
    )]
    TooLarge {
        /// Encoded size.
        bytes: usize,
        /// The bound.
        max: usize,
    },
    /// A wrapped data key does not open: altered, moved to another purpose, or sealed with
    /// another master key.
    #[error("the key of {purpose} cannot be decrypted: it was altered or sealed with another master key")]
    WrappedKey {
        /// What the key protects.
        purpose: String,
    },
    /// The master key cannot be used.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The registry failed.
    #[error("cannot access the secret store")]
    Registry(#[source] RegistryError),
    /// A blocking task died.
    #[error("secret store task failed: {0}")]
    Task(String),
}

fn not_found(names: &[String]) -> String {
    match names {
        [one] => format!("secret {one} does not exist"),
        many => format!("secrets {} do not exist", many.join(", ")),
    }
}

impl SecretError {
    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            SecretError::NotFound { names } => Some(format!(
                "`aegis secret list` shows the secrets; `aegis secret set {}` creates it",
                names.first().map_or("NAME", String::as_str)
            )),
            SecretError::Decrypt { name } => Some(format!(
                "set it again with `aegis secret set {name}`; if the master key file was \
                 replaced, restore the original"
            )),
            SecretError::Key(e) => e.hint(),
            SecretError::Registry(e) => e.hint(),
            SecretError::InvalidName(_)
            | SecretError::InvalidValue { .. }
            | SecretError::Encrypt { .. }
            | SecretError::WrappedKey { .. }
            | SecretError::TooLarge { .. }
            | SecretError::Task(_) => None,
        }
    }
}

/// The secret store of one daemon; cheap to clone.
#[derive(Debug, Clone)]
pub struct SecretStore {
    registry: Registry,
    key_path: PathBuf,
}

impl SecretStore {
    /// A store keeping ciphertexts in `registry` under the key at `key_path`.
    pub fn new(registry: Registry, key_path: PathBuf) -> SecretStore {
        SecretStore { registry, key_path }
    }

    /// The master key file.
    pub fn key_path(&self) -> &std::path::Path {
        &self.key_path
    }

    /// Creates or replaces a secret (creating the master key on first use). Returns what may be
    /// shown of it and whether it is new.
    ///
    /// # Errors
    /// [`SecretError`]: invalid name or value, key file refused, registry failure.
    pub async fn set(
        &self,
        name: &str,
        value: SecretValue,
    ) -> Result<(SecretMeta, bool), SecretError> {
        let name = parse_name(name)?;
        if let Some(problem) = value.problem() {
            return Err(SecretError::InvalidValue {
                name: name.to_string(),
                problem,
            });
        }
        let key_path = self.key_path.clone();
        let sealed_name = name.clone();
        let sealed = blocking(move || {
            let key = MasterKey::load_or_create(&key_path)?;
            cipher::seal(&key, &sealed_name, &value).map_err(|_| SecretError::Encrypt {
                name: sealed_name.to_string(),
            })
        })
        .await?;
        self.registry
            .put_secret(name.to_string(), sealed.nonce, sealed.ciphertext, now_ts())
            .await
            .map_err(SecretError::Registry)
    }

    /// Names and dates of every secret.
    ///
    /// # Errors
    /// Registry failures.
    pub async fn list(&self) -> Result<Vec<SecretMeta>, SecretError> {
        self.registry
            .list_secrets()
            .await
            .map_err(SecretError::Registry)
    }

    /// Deletes a secret. Instances that ask for it fail their next start until it is set again.
    ///
    /// # Errors
    /// [`SecretError::NotFound`] when there is none of that name.
    pub async fn delete(&self, name: &str) -> Result<(), SecretError> {
        let name = parse_name(name)?;
        if self
            .registry
            .delete_secret(name.to_string())
            .await
            .map_err(SecretError::Registry)?
        {
            Ok(())
        } else {
            Err(SecretError::NotFound {
                names: vec![name.to_string()],
            })
        }
    }

    /// Decrypts the selected secrets. All or nothing: any missing or undecryptable secret fails
    /// the whole resolution, naming it.
    ///
    /// # Errors
    /// [`SecretError::NotFound`], [`SecretError::Decrypt`], key and registry failures.
    pub async fn resolve(&self, selection: &SecretSelection) -> Result<SecretEnv, SecretError> {
        let (names, wanted) = match selection {
            SecretSelection::All => (Vec::new(), None),
            SecretSelection::Names(names) if names.is_empty() => return Ok(SecretEnv::new()),
            SecretSelection::Names(names) => (
                names.clone(),
                Some(names.iter().map(ToString::to_string).collect()),
            ),
        };
        let rows = self
            .registry
            .secret_rows(wanted)
            .await
            .map_err(SecretError::Registry)?;
        let missing: Vec<String> = names
            .iter()
            .filter(|n| !rows.iter().any(|r| r.name == n.as_str()))
            .map(ToString::to_string)
            .collect();
        if !missing.is_empty() {
            return Err(SecretError::NotFound { names: missing });
        }
        if rows.is_empty() {
            return Ok(SecretEnv::new());
        }
        let key_path = self.key_path.clone();
        let env = blocking(move || open_all(&key_path, rows)).await?;
        let bytes = env.encoded_len();
        if bytes > MAX_INJECTED_BYTES {
            return Err(SecretError::TooLarge {
                bytes,
                max: MAX_INJECTED_BYTES,
            });
        }
        Ok(env)
    }

    /// Validates a requested selection (names or `*`) and checks that it resolves now, so a
    /// request naming a missing or broken secret fails before anything is created or changed.
    /// Returns the canonical list to store.
    ///
    /// # Errors
    /// See [`SecretStore::resolve`]; [`SecretError::InvalidName`] for a bad entry.
    pub async fn check(&self, requested: &[String]) -> Result<Vec<String>, SecretError> {
        let selection = SecretSelection::parse(requested).map_err(SecretError::InvalidName)?;
        drop(self.resolve(&selection).await?);
        Ok(selection.to_list())
    }
}

fn parse_name(name: &str) -> Result<SecretName, SecretError> {
    SecretName::parse(name).map_err(SecretError::InvalidName)
}

fn open_all(key_path: &std::path::Path, rows: Vec<SecretRow>) -> Result<SecretEnv, SecretError> {
    let key = MasterKey::load(key_path)?.ok_or_else(|| KeyError::Missing {
        path: key_path.to_path_buf(),
    })?;
    let mut env = SecretEnv::new();
    for row in rows {
        let decrypt_err = || SecretError::Decrypt {
            name: row.name.clone(),
        };
        // A stored name that is no longer valid cannot have been written by us.
        let name = SecretName::parse(&row.name).map_err(|_| decrypt_err())?;
        let sealed = Sealed {
            nonce: row.nonce,
            ciphertext: row.ciphertext,
        };
        let value = cipher::open(&key, &name, &sealed).map_err(|_| SecretError::Decrypt {
            name: name.to_string(),
        })?;
        env.insert(&name, value);
    }
    Ok(env)
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SecretError> + Send + 'static,
) -> Result<T, SecretError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(SecretError::Task(e.to_string())))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn store(dir: &std::path::Path) -> SecretStore {
        let registry = Registry::open(&dir.join("aegis.db")).unwrap();
        SecretStore::new(registry, dir.join("master.key"))
    }

    fn sel(names: &[&str]) -> SecretSelection {
        SecretSelection::parse(names).unwrap()
    }

    fn values(env: &SecretEnv) -> Vec<String> {
        let mut out = std::collections::BTreeMap::new();
        env.inject_into(&mut out);
        out.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    #[tokio::test]
    async fn set_resolve_rotate_delete() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        // Nothing asked, nothing stored: no key is created.
        assert!(s.resolve(&sel(&["*"])).await.unwrap().is_empty());
        assert!(!dir.path().join("master.key").exists());

        let (meta, created) = s.set("A", SecretValue::new("one".into())).await.unwrap();
        assert!(created && meta.name == "A");
        assert!(dir.path().join("master.key").exists());
        s.set("B", SecretValue::new("two".into())).await.unwrap();
        assert_eq!(values(&s.resolve(&sel(&["A"])).await.unwrap()), ["A=one"]);
        assert_eq!(
            values(&s.resolve(&sel(&["*"])).await.unwrap()),
            ["A=one", "B=two"]
        );
        let (meta, created) = s.set("A", SecretValue::new("uno".into())).await.unwrap();
        assert!(!created);
        assert!(meta.updated_at >= meta.created_at);
        assert_eq!(values(&s.resolve(&sel(&["A"])).await.unwrap()), ["A=uno"]);

        let err = s.resolve(&sel(&["A", "NOPE", "ALSO"])).await.unwrap_err();
        assert_eq!(err.to_string(), "secrets NOPE, ALSO do not exist");
        assert_eq!(
            s.check(&["GONE".into()]).await.unwrap_err().to_string(),
            "secret GONE does not exist"
        );
        assert_eq!(s.check(&["B".into(), "*".into()]).await.unwrap(), ["*"]);
        s.delete("B").await.unwrap();
        assert!(matches!(
            s.delete("B").await.unwrap_err(),
            SecretError::NotFound { .. }
        ));
        assert!(matches!(
            s.set("1BAD", SecretValue::new("x".into()))
                .await
                .unwrap_err(),
            SecretError::InvalidName(_)
        ));
        assert!(matches!(
            s.set("NUL", SecretValue::new("a\0b".into()))
                .await
                .unwrap_err(),
            SecretError::InvalidValue { .. }
        ));
    }

    #[tokio::test]
    async fn the_database_holds_no_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let value = "plaintext-canary-7f3a9c";
        s.set("CANARY", SecretValue::new(value.into()))
            .await
            .unwrap();
        drop(s);
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(!bytes.windows(value.len()).any(|w| w == value.as_bytes()));
        }
    }

    #[tokio::test]
    async fn tampered_rows_fail_naming_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        s.set("GOOD", SecretValue::new("g".into())).await.unwrap();
        s.set("BAD", SecretValue::new("b".into())).await.unwrap();
        let conn = rusqlite::Connection::open(dir.path().join("aegis.db")).unwrap();
        conn.execute(
            "UPDATE secrets SET ciphertext = CAST(? AS BLOB) WHERE name = 'BAD'",
            [b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10".to_vec()],
        )
        .unwrap();
        let err = s.resolve(&sel(&["GOOD", "BAD"])).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "secret BAD cannot be decrypted: its stored ciphertext was altered or was sealed \
             with another master key"
        );
        assert_eq!(
            err.hint().as_deref(),
            Some(
                "set it again with `aegis secret set BAD`; if the master key file was replaced, \
                 restore the original"
            )
        );
        // A ciphertext moved to another name does not open either.
        conn.execute(
            "UPDATE secrets SET (nonce, ciphertext) =
               (SELECT nonce, ciphertext FROM secrets WHERE name = 'GOOD') WHERE name = 'BAD'",
            [],
        )
        .unwrap();
        assert!(matches!(
            s.resolve(&sel(&["BAD"])).await.unwrap_err(),
            SecretError::Decrypt { name } if name == "BAD"
        ));
        assert_eq!(
            values(&s.resolve(&sel(&["GOOD"])).await.unwrap()),
            ["GOOD=g"]
        );
    }

    #[tokio::test]
    async fn key_file_problems_stop_everything() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        s.set("A", SecretValue::new("a".into())).await.unwrap();
        let key = dir.path().join("master.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = s.resolve(&sel(&["A"])).await.unwrap_err();
        assert!(matches!(
            err,
            SecretError::Key(KeyError::Permissions { .. })
        ));
        assert!(err.hint().unwrap().contains("chmod 600"));
        assert!(s.set("B", SecretValue::new("b".into())).await.is_err());
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::remove_file(&key).unwrap();
        let err = s.resolve(&sel(&["A"])).await.unwrap_err();
        assert!(
            matches!(err, SecretError::Key(KeyError::Missing { .. })),
            "{err}"
        );
    }
}
