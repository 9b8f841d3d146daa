//! The tables of the E2B-compatible front end: API keys (only their hashes) and the E2B side
//! of the instances it created.

use rusqlite::{params, OptionalExtension, Row};

use super::{Registry, RegistryError};

/// An API key as stored and listed: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct E2bKeyRow {
    /// `key_` and hex digits.
    pub id: String,
    /// What the user called it.
    pub name: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; the last request it authenticated.
    pub last_used_at: Option<String>,
}

/// The E2B side of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct E2bSandboxRow {
    /// The instance.
    pub instance_id: String,
    /// The template name the sandbox was created from.
    pub template: String,
    /// Its metadata, a JSON object of strings.
    pub metadata: String,
    /// The token its in-sandbox calls carry (`X-Access-Token`).
    pub access_token: String,
    /// The key that created it.
    pub key_id: String,
    /// RFC 3339.
    pub created_at: String,
}

fn key_from_row(r: &Row<'_>) -> rusqlite::Result<E2bKeyRow> {
    Ok(E2bKeyRow {
        id: r.get(0)?,
        name: r.get(1)?,
        created_at: r.get(2)?,
        last_used_at: r.get(3)?,
    })
}

fn sandbox_from_row(r: &Row<'_>) -> rusqlite::Result<E2bSandboxRow> {
    Ok(E2bSandboxRow {
        instance_id: r.get(0)?,
        template: r.get(1)?,
        metadata: r.get(2)?,
        access_token: r.get(3)?,
        key_id: r.get(4)?,
        created_at: r.get(5)?,
    })
}

const SANDBOX_COLUMNS: &str = "instance_id, template, metadata, access_token, key_id, created_at";

fn query_err(what: &'static str) -> impl FnOnce(rusqlite::Error) -> RegistryError {
    move |source| RegistryError::Query { what, source }
}

impl Registry {
    /// Stores a new key by its hash.
    ///
    /// # Errors
    /// Database failures.
    pub async fn add_e2b_key(&self, row: E2bKeyRow, hash: Vec<u8>) -> Result<(), RegistryError> {
        self.with(move |c| {
            c.execute(
                "INSERT INTO e2b_keys (id, name, hash, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![row.id, row.name, hash, row.created_at],
            )
            .map(drop)
            .map_err(query_err("store E2B key"))
        })
        .await
    }

    /// Every key, oldest first.
    ///
    /// # Errors
    /// Database failures.
    pub async fn list_e2b_keys(&self) -> Result<Vec<E2bKeyRow>, RegistryError> {
        self.with(|c| {
            let query = |c: &rusqlite::Connection| -> rusqlite::Result<Vec<E2bKeyRow>> {
                let mut stmt = c.prepare(
                    "SELECT id, name, created_at, last_used_at FROM e2b_keys
                     ORDER BY created_at, id",
                )?;
                let rows = stmt.query_map([], key_from_row)?;
                rows.collect()
            };
            query(c).map_err(query_err("list E2B keys"))
        })
        .await
    }

    /// The key whose hash is `hash`, marked used at `now`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn use_e2b_key(
        &self,
        hash: Vec<u8>,
        now: String,
    ) -> Result<Option<E2bKeyRow>, RegistryError> {
        self.with(move |c| {
            c.execute(
                "UPDATE e2b_keys SET last_used_at = ?2 WHERE hash = ?1",
                params![hash, now],
            )
            .map_err(query_err("mark E2B key used"))?;
            c.query_row(
                "SELECT id, name, created_at, last_used_at FROM e2b_keys WHERE hash = ?1",
                params![hash],
                key_from_row,
            )
            .optional()
            .map_err(query_err("look up E2B key"))
        })
        .await
    }

    /// Revokes the key with this id or name; false when there is none.
    ///
    /// # Errors
    /// Database failures.
    pub async fn revoke_e2b_key(&self, id_or_name: String) -> Result<bool, RegistryError> {
        self.with(move |c| {
            c.execute(
                "DELETE FROM e2b_keys WHERE id = ?1 OR name = ?1",
                params![id_or_name],
            )
            .map(|n| n > 0)
            .map_err(query_err("revoke E2B key"))
        })
        .await
    }

    /// Records the E2B side of an instance.
    ///
    /// # Errors
    /// Database failures (the instance must exist).
    pub async fn add_e2b_sandbox(&self, row: E2bSandboxRow) -> Result<(), RegistryError> {
        self.with(move |c| {
            c.execute(
                &format!(
                    "INSERT INTO e2b_sandboxes ({SANDBOX_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
                ),
                params![
                    row.instance_id,
                    row.template,
                    row.metadata,
                    row.access_token,
                    row.key_id,
                    row.created_at
                ],
            )
            .map(drop)
            .map_err(query_err("store E2B sandbox"))
        })
        .await
    }

    /// The E2B side of one instance.
    ///
    /// # Errors
    /// Database failures.
    pub async fn e2b_sandbox(
        &self,
        instance_id: String,
    ) -> Result<Option<E2bSandboxRow>, RegistryError> {
        self.with(move |c| {
            c.query_row(
                &format!("SELECT {SANDBOX_COLUMNS} FROM e2b_sandboxes WHERE instance_id = ?1"),
                params![instance_id],
                sandbox_from_row,
            )
            .optional()
            .map_err(query_err("look up E2B sandbox"))
        })
        .await
    }

    /// Every sandbox, oldest first.
    ///
    /// # Errors
    /// Database failures.
    pub async fn list_e2b_sandboxes(&self) -> Result<Vec<E2bSandboxRow>, RegistryError> {
        self.with(|c| {
            let query = |c: &rusqlite::Connection| -> rusqlite::Result<Vec<E2bSandboxRow>> {
                let mut stmt = c.prepare(&format!(
                    "SELECT {SANDBOX_COLUMNS} FROM e2b_sandboxes ORDER BY created_at, instance_id"
                ))?;
                let rows = stmt.query_map([], sandbox_from_row)?;
                rows.collect()
            };
            query(c).map_err(query_err("list E2B sandboxes"))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_found_by_hash_and_revoked_by_id_or_name() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(&dir.path().join("r.db")).unwrap();
        for (id, name, hash) in [("key_1", "ci", 1u8), ("key_2", "laptop", 2)] {
            let row = E2bKeyRow {
                id: id.into(),
                name: name.into(),
                created_at: format!("t{hash}"),
                last_used_at: None,
            };
            reg.add_e2b_key(row, vec![hash; 32]).await.unwrap();
        }
        let found = reg.use_e2b_key(vec![2; 32], "t9".into()).await.unwrap();
        assert_eq!(
            found.map(|k| (k.id, k.last_used_at)),
            Some(("key_2".into(), Some("t9".into())))
        );
        assert!(reg
            .use_e2b_key(vec![3; 32], "t9".into())
            .await
            .unwrap()
            .is_none());
        assert!(reg.revoke_e2b_key("laptop".into()).await.unwrap());
        assert!(reg.revoke_e2b_key("key_1".into()).await.unwrap());
        assert!(!reg.revoke_e2b_key("key_1".into()).await.unwrap());
        assert!(reg.list_e2b_keys().await.unwrap().is_empty());
    }
}
