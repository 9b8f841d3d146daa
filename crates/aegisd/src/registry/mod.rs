//! The SQLite registry (WAL): instances and their configuration, and encrypted secrets. The
//! only module that contains SQL. One connection behind a short synchronous lock; callers run
//! it on the blocking pool.

mod instances;
mod migrations;
mod secrets;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

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

/// Handle to the registry; cheap to clone.
#[derive(Debug, Clone)]
pub struct Registry {
    conn: Arc<Mutex<Connection>>,
}

impl Registry {
    /// Opens (creating and migrating) the database at `path`.
    ///
    /// # Errors
    /// When the file cannot be opened or migrated.
    pub fn open(path: &Path) -> Result<Registry, RegistryError> {
        let open_err = |source| RegistryError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
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
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, RegistryError> + Send + 'static,
    ) -> Result<T, RegistryError> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
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
        })
    }
}
