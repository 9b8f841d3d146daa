//! The SQLite registry (WAL): instances and their configuration, and encrypted secrets. The
//! only module that contains SQL. One connection behind a short synchronous lock; callers run
//! it on the blocking pool.
//!
//! A damaged file is refused at open, before anything is written to it, so the daemon does not
//! start on it and the user can restore it; a write that finds the disk full fails whole
//! (SQLite rolls the transaction back) with an error naming the file.

mod e2b;
mod instances;
mod migrations;
mod secrets;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, ErrorCode};

pub use e2b::{E2bKeyRow, E2bSandboxRow};
pub use instances::InstanceRow;
pub use secrets::{SecretMeta, SecretRow};

/// Registry failures.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The database could not be opened or migrated.
    #[error("cannot open the registry {}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: rusqlite::Error,
    },
    /// The file is not a SQLite database, or a damaged one. The remedy is part of the message:
    /// the daemon refuses to start on it, and a failed start prints only the error.
    #[error(
        "the registry {p} is damaged or is not a SQLite database; it was left as it is: move it \
         aside (`mv {p} {p}.damaged`) and restore a backup, or start without it to begin with \
         no instances and no secrets",
        p = path.display()
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What SQLite found.
        #[source]
        source: rusqlite::Error,
    },
    /// A write found no space left on the registry's file system; nothing of it was stored.
    #[error("cannot {what}: the disk holding the registry {} is full", path.display())]
    DiskFull {
        /// What was being done.
        what: &'static str,
        /// The database file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: rusqlite::Error,
    },
    /// A query failed.
    #[error("registry query failed: {what}")]
    Query {
        /// What was being done.
        what: &'static str,
        /// Cause.
        #[source]
        source: rusqlite::Error,
    },
    /// A stored row could not be decoded.
    #[error("registry row for {id} is corrupt: {reason}")]
    Corrupt {
        /// The row's id.
        id: String,
        /// What is wrong.
        reason: String,
    },
}

impl RegistryError {
    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            RegistryError::DiskFull { path, .. } => {
                let dir = path.parent().unwrap_or(path).display();
                Some(format!(
                    "free space on the file system of {dir} (`df -h {dir}` shows it), then \
                     retry; what was stored before is unchanged"
                ))
            }
            RegistryError::Open { .. }
            | RegistryError::Damaged { .. }
            | RegistryError::Query { .. }
            | RegistryError::Corrupt { .. } => None,
        }
    }
}

/// The SQLite error codes of a write that found the disk full.
fn is_disk_full(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(ErrorCode::DiskFull)
}

/// The SQLite error codes of a file that is not a database, or a damaged one.
fn is_damaged(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
    )
}

/// Handle to the registry; cheap to clone.
#[derive(Debug, Clone)]
pub struct Registry {
    conn: Arc<Mutex<Connection>>,
    /// The database file, for errors.
    path: Arc<Path>,
}

impl Registry {
    /// Opens (creating and migrating) the database at `path`. The whole file is checked first
    /// (`PRAGMA quick_check`, a read of a few pages for a registry of this size): a damaged one
    /// is refused before the first write could change it.
    ///
    /// # Errors
    /// [`RegistryError::Damaged`] when the file is not a SQLite database or a damaged one;
    /// [`RegistryError::Open`] when it cannot be opened or migrated otherwise.
    pub fn open(path: &Path) -> Result<Registry, RegistryError> {
        let open_err = |source: rusqlite::Error| {
            if is_damaged(&source) {
                RegistryError::Damaged {
                    path: path.to_path_buf(),
                    source,
                }
            } else {
                RegistryError::Open {
                    path: path.to_path_buf(),
                    source,
                }
            }
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        check_whole(&conn).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        migrations::migrate(&mut conn).map_err(open_err)?;
        Ok(Registry {
            conn: Arc::new(Mutex::new(conn)),
            path: Arc::from(path),
        })
    }

    /// Runs `f` with the connection on the blocking pool. A query that failed because the disk
    /// is full comes back as [`RegistryError::DiskFull`], naming the file.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, RegistryError> + Send + 'static,
    ) -> Result<T, RegistryError> {
        let conn = Arc::clone(&self.conn);
        let result = tokio::task::spawn_blocking(move || {
            let guard = conn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&guard)
        })
        .await
        .unwrap_or_else(|e| {
            Err(RegistryError::Corrupt {
                id: String::new(),
                reason: format!("registry task failed: {e}"),
            })
        });
        result.map_err(|e| match e {
            RegistryError::Query { what, source } if is_disk_full(&source) => {
                RegistryError::DiskFull {
                    what,
                    path: self.path.to_path_buf(),
                    source,
                }
            }
            other => other,
        })
    }
}

/// `PRAGMA quick_check`: every page of the file is read and its structure checked (not the
/// indexes against their tables, which `integrity_check` adds at far greater cost).
fn check_whole(conn: &Connection) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare("PRAGMA quick_check")?;
    let problems: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<_>>()?;
    match problems.as_slice() {
        [ok] if ok == "ok" => Ok(()),
        _ => Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            Some(problems.join("; ")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_file_is_refused_and_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aegis.db");
        let garbage: Vec<u8> = (0..64u32 << 10)
            .map(|i| u8::try_from(i * 7919 % 251).unwrap())
            .collect();
        std::fs::write(&path, &garbage).unwrap();
        let err = Registry::open(&path).unwrap_err();
        assert!(matches!(err, RegistryError::Damaged { .. }), "{err:?}");
        assert!(err.to_string().starts_with(&format!(
            "the registry {} is damaged or is not a SQLite database; it was left as it is",
            path.display()
        )));
        assert_eq!(std::fs::read(&path).unwrap(), garbage);

        // A valid file cut in the middle: its header reads, its pages do not.
        let valid = dir.path().join("valid.db");
        {
            let conn = Connection::open(&valid).unwrap();
            conn.execute_batch("CREATE TABLE t (v TEXT)").unwrap();
            for _ in 0..100 {
                conn.execute("INSERT INTO t VALUES (?1)", ["x".repeat(2000)])
                    .unwrap();
            }
        }
        let mut cut = std::fs::read(&valid).unwrap();
        cut.truncate(cut.len() / 2 + 100);
        std::fs::write(&path, &cut).unwrap();
        let err = Registry::open(&path).unwrap_err();
        assert!(matches!(err, RegistryError::Damaged { .. }), "{err:?}");
        assert_eq!(std::fs::read(&path).unwrap(), cut);
    }

    #[test]
    fn an_empty_or_new_file_opens() {
        let dir = tempfile::tempdir().unwrap();
        Registry::open(&dir.path().join("new.db")).unwrap();
        let empty = dir.path().join("empty.db");
        std::fs::write(&empty, b"").unwrap();
        Registry::open(&empty).unwrap();
    }
}
