//! The `secrets` table: one row per secret with its nonce and ciphertext. Plaintext never
//! reaches this module (the `secrets` module seals values before they are stored).

use rusqlite::{params, OptionalExtension, Row};

use super::{Registry, RegistryError};

/// One secret as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRow {
    /// Environment-variable name.
    pub name: String,
    /// AES-GCM nonce.
    pub nonce: Vec<u8>,
    /// Ciphertext with its tag.
    pub ciphertext: Vec<u8>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; the last time the value was set.
    pub updated_at: String,
}

/// What may be shown of a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMeta {
    /// Name.
    pub name: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

fn meta_from_row(r: &Row<'_>) -> rusqlite::Result<SecretMeta> {
    Ok(SecretMeta {
        name: r.get(0)?,
        created_at: r.get(1)?,
        updated_at: r.get(2)?,
    })
}

fn from_row(r: &Row<'_>) -> rusqlite::Result<SecretRow> {
    Ok(SecretRow {
        name: r.get(0)?,
        nonce: r.get(1)?,
        ciphertext: r.get(2)?,
        created_at: r.get(3)?,
        updated_at: r.get(4)?,
    })
}

fn query_err(what: &'static str) -> impl FnOnce(rusqlite::Error) -> RegistryError {
    move |source| RegistryError::Query { what, source }
}

impl Registry {
    /// Stores a secret's new ciphertext, keeping `created_at` when it exists. Returns what may
    /// be shown of it and whether it is new.
    ///
    /// # Errors
    /// Database failures.
    pub async fn put_secret(
        &self,
        name: String,
        nonce: Vec<u8>,
        ciphertext: Vec<u8>,
        now: String,
    ) -> Result<(SecretMeta, bool), RegistryError> {
        self.with(move |c| {
            let existed: Option<String> = c
                .query_row(
                    "SELECT created_at FROM secrets WHERE name = ?1",
                    params![name],
                    |r| r.get(0),
                )
                .optional()
                .map_err(query_err("look up secret"))?;
            c.execute(
                "INSERT INTO secrets (name, nonce, ciphertext, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT(name) DO UPDATE SET
                   nonce = excluded.nonce, ciphertext = excluded.ciphertext,
                   updated_at = excluded.updated_at",
                params![name, nonce, ciphertext, now],
            )
            .map_err(query_err("store secret"))?;
            let created = existed.is_none();
            let meta = SecretMeta {
                name,
                created_at: existed.unwrap_or_else(|| now.clone()),
                updated_at: now,
            };
            Ok((meta, created))
        })
        .await
    }

    /// Names and dates of every secret, by name.
    ///
    /// # Errors
    /// Database failures.
    pub async fn list_secrets(&self) -> Result<Vec<SecretMeta>, RegistryError> {
        self.with(|c| {
            let query = |c: &rusqlite::Connection| -> rusqlite::Result<Vec<SecretMeta>> {
                let mut stmt =
                    c.prepare("SELECT name, created_at, updated_at FROM secrets ORDER BY name")?;
                let rows = stmt.query_map([], meta_from_row)?;
                rows.collect()
            };
            query(c).map_err(query_err("list secrets"))
        })
        .await
    }

    /// The stored rows of `names` (those that exist), or of every secret when `names` is
    /// `None`, by name.
    ///
    /// # Errors
    /// Database failures.
    pub async fn secret_rows(
        &self,
        names: Option<Vec<String>>,
    ) -> Result<Vec<SecretRow>, RegistryError> {
        self.with(move |c| {
            let query = |c: &rusqlite::Connection| -> rusqlite::Result<Vec<SecretRow>> {
                const COLUMNS: &str = "name, nonce, ciphertext, created_at, updated_at";
                match &names {
                    None => {
                        let mut stmt =
                            c.prepare(&format!("SELECT {COLUMNS} FROM secrets ORDER BY name"))?;
                        let rows = stmt.query_map([], from_row)?;
                        rows.collect()
                    }
                    Some(names) => {
                        let mut stmt =
                            c.prepare(&format!("SELECT {COLUMNS} FROM secrets WHERE name = ?1"))?;
                        let mut out = Vec::with_capacity(names.len());
                        for name in names {
                            if let Some(row) = stmt.query_row(params![name], from_row).optional()? {
                                out.push(row);
                            }
                        }
                        out.sort_by(|a, b| a.name.cmp(&b.name));
                        Ok(out)
                    }
                }
            };
            query(c).map_err(query_err("read secrets"))
        })
        .await
    }

    /// Deletes a secret; false when there was none of that name.
    ///
    /// # Errors
    /// Database failures.
    pub async fn delete_secret(&self, name: String) -> Result<bool, RegistryError> {
        self.with(move |c| {
            c.execute("DELETE FROM secrets WHERE name = ?1", params![name])
                .map(|n| n > 0)
                .map_err(query_err("delete secret"))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_list_read_delete() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(&dir.path().join("r.db")).unwrap();
        let (meta, created) = reg
            .put_secret("B".into(), vec![1; 12], vec![2; 20], "t1".into())
            .await
            .unwrap();
        assert!(created);
        assert_eq!(
            (meta.created_at.as_str(), meta.updated_at.as_str()),
            ("t1", "t1")
        );
        reg.put_secret("A".into(), vec![3; 12], vec![4; 20], "t2".into())
            .await
            .unwrap();
        let (meta, created) = reg
            .put_secret("B".into(), vec![5; 12], vec![6; 20], "t3".into())
            .await
            .unwrap();
        assert!(!created);
        assert_eq!(
            (meta.created_at.as_str(), meta.updated_at.as_str()),
            ("t1", "t3")
        );

        let names: Vec<String> = reg
            .list_secrets()
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(names, ["A", "B"]);
        let all = reg.secret_rows(None).await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].nonce, vec![5; 12]);
        assert_eq!(all[1].ciphertext, vec![6; 20]);
        let some = reg
            .secret_rows(Some(vec!["B".into(), "NOPE".into()]))
            .await
            .unwrap();
        assert_eq!(some.len(), 1);
        assert_eq!(some[0].name, "B");

        assert!(reg.delete_secret("A".into()).await.unwrap());
        assert!(!reg.delete_secret("A".into()).await.unwrap());
        assert_eq!(reg.list_secrets().await.unwrap().len(), 1);
    }
}
