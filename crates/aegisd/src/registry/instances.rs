//! The `instances` table.

use aegis_proto::api::InstanceStatus;
use rusqlite::types::Type;
use rusqlite::{params, OptionalExtension, Row};

use super::{Registry, RegistryError};
use crate::ids::{Handle, InstanceId};

/// One instance as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRow {
    /// `inst-...`.
    pub id: InstanceId,
    /// Unique alias.
    pub handle: Option<Handle>,
    /// RFC 3339.
    pub created_at: String,
    /// Configuration as JSON (see `lifecycle::spec::InstanceSpec`).
    pub spec: String,
    /// Status, stored by its wire spelling.
    pub status: InstanceStatus,
    /// False once disabled.
    pub enabled: bool,
    /// Why stopped / why the last boot failed.
    pub reason: Option<String>,
    /// Last exit code of the primary process.
    pub exit_code: Option<i32>,
    /// RFC 3339.
    pub stopped_at: Option<String>,
    /// RFC 3339.
    pub last_active_at: Option<String>,
}

impl InstanceRow {
    /// A new instance's row: stopped, enabled, never run.
    pub fn created(
        id: InstanceId,
        handle: Option<Handle>,
        created_at: String,
        spec: String,
    ) -> Self {
        InstanceRow {
            id,
            handle,
            created_at,
            spec,
            status: InstanceStatus::Stopped,
            enabled: true,
            reason: None,
            exit_code: None,
            stopped_at: None,
            last_active_at: None,
        }
    }
}

const COLUMNS: &str =
    "id, handle, created_at, spec, status, enabled, reason, exit_code, stopped_at, last_active_at";

/// A status column holding a spelling no version of Aegis writes.
#[derive(Debug, thiserror::Error)]
#[error("unknown instance status {0:?} (expected starting, running, paused or stopped)")]
pub struct UnknownStatus(pub String);

fn status_column(r: &Row<'_>, i: usize) -> rusqlite::Result<InstanceStatus> {
    let text: String = r.get(i)?;
    InstanceStatus::parse(&text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(i, Type::Text, Box::new(UnknownStatus(text)))
    })
}

fn from_row(r: &Row<'_>) -> rusqlite::Result<InstanceRow> {
    Ok(InstanceRow {
        id: r.get(0)?,
        handle: r.get(1)?,
        created_at: r.get(2)?,
        spec: r.get(3)?,
        status: status_column(r, 4)?,
        enabled: r.get(5)?,
        reason: r.get(6)?,
        exit_code: r.get(7)?,
        stopped_at: r.get(8)?,
        last_active_at: r.get(9)?,
    })
}

/// Inserting failed because the handle is taken.
#[derive(Debug, thiserror::Error)]
#[error("handle {0:?} is already in use")]
pub struct HandleTaken(pub String);

impl Registry {
    /// Inserts a new instance. `Ok(Err(HandleTaken))` when the handle is in use.
    ///
    /// # Errors
    /// Other database failures.
    pub async fn insert_instance(
        &self,
        row: InstanceRow,
    ) -> Result<Result<(), HandleTaken>, RegistryError> {
        self.with(move |c| {
            let res = c.execute(
                &format!("INSERT INTO instances ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
                params![
                    row.id, row.handle, row.created_at, row.spec, row.status.as_str(), row.enabled,
                    row.reason, row.exit_code, row.stopped_at, row.last_active_at
                ],
            );
            match res {
                Ok(_) => Ok(Ok(())),
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    Ok(Err(HandleTaken(row.handle.map(String::from).unwrap_or_default())))
                }
                Err(source) => Err(RegistryError::Query { what: "insert instance", source }),
            }
        })
        .await
    }

    /// Writes every mutable column of an existing instance.
    ///
    /// # Errors
    /// Database failures.
    pub async fn update_instance(&self, row: InstanceRow) -> Result<(), RegistryError> {
        self.with(move |c| {
            c.execute(
                "UPDATE instances SET spec = ?2, status = ?3, enabled = ?4, reason = ?5,
                 exit_code = ?6, stopped_at = ?7, last_active_at = ?8 WHERE id = ?1",
                params![
                    row.id,
                    row.spec,
                    row.status.as_str(),
                    row.enabled,
                    row.reason,
                    row.exit_code,
                    row.stopped_at,
                    row.last_active_at
                ],
            )
            .map(drop)
            .map_err(|source| RegistryError::Query {
                what: "update instance",
                source,
            })
        })
        .await
    }

    /// Deletes an instance.
    ///
    /// # Errors
    /// Database failures.
    pub async fn delete_instance(&self, id: InstanceId) -> Result<(), RegistryError> {
        self.with(move |c| {
            c.execute("DELETE FROM instances WHERE id = ?1", params![id])
                .map(drop)
                .map_err(|source| RegistryError::Query {
                    what: "delete instance",
                    source,
                })
        })
        .await
    }

    /// All instances, oldest first.
    ///
    /// # Errors
    /// Database failures.
    pub async fn list_instances(&self) -> Result<Vec<InstanceRow>, RegistryError> {
        self.with(|c| {
            let query = |c: &rusqlite::Connection| -> rusqlite::Result<Vec<InstanceRow>> {
                let mut stmt = c.prepare(&format!(
                    "SELECT {COLUMNS} FROM instances ORDER BY created_at, id"
                ))?;
                let rows = stmt.query_map([], from_row)?;
                rows.collect()
            };
            query(c).map_err(|source| RegistryError::Query {
                what: "list instances",
                source,
            })
        })
        .await
    }

    /// One instance by id.
    ///
    /// # Errors
    /// Database failures.
    pub async fn get_instance(&self, id: InstanceId) -> Result<Option<InstanceRow>, RegistryError> {
        self.with(move |c| {
            c.query_row(
                &format!("SELECT {COLUMNS} FROM instances WHERE id = ?1"),
                params![id],
                from_row,
            )
            .optional()
            .map_err(|source| RegistryError::Query {
                what: "get instance",
                source,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, handle: Option<&str>) -> InstanceRow {
        InstanceRow::created(
            InstanceId::from_stored(id.into()),
            handle.map(|h| Handle::parse(h).unwrap()),
            "2026-01-01T00:00:00Z".into(),
            "{}".into(),
        )
    }

    #[tokio::test]
    async fn insert_update_list_delete_and_unique_handles() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(&dir.path().join("r.db")).unwrap();
        reg.insert_instance(row("inst-1", Some("web")))
            .await
            .unwrap()
            .unwrap();
        assert!(reg
            .insert_instance(row("inst-2", Some("web")))
            .await
            .unwrap()
            .is_err());
        reg.insert_instance(row("inst-3", None))
            .await
            .unwrap()
            .unwrap();
        reg.insert_instance(row("inst-4", None))
            .await
            .unwrap()
            .unwrap();
        let mut r = row("inst-1", Some("web"));
        r.status = InstanceStatus::Running;
        r.exit_code = Some(3);
        reg.update_instance(r.clone()).await.unwrap();
        assert_eq!(
            reg.get_instance(InstanceId::from_stored("inst-1".into()))
                .await
                .unwrap(),
            Some(r)
        );
        reg.delete_instance(InstanceId::from_stored("inst-3".into()))
            .await
            .unwrap();
        let ids: Vec<String> = reg
            .list_instances()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id.as_str().to_owned())
            .collect();
        assert_eq!(ids, ["inst-1", "inst-4"]);
        drop(reg);
        // Survives reopening (migrations are idempotent).
        let reg = Registry::open(&dir.path().join("r.db")).unwrap();
        assert_eq!(reg.list_instances().await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn an_unknown_status_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(&dir.path().join("r.db")).unwrap();
        reg.insert_instance(row("inst-1", None))
            .await
            .unwrap()
            .unwrap();
        reg.with(|c| {
            c.execute("UPDATE instances SET status = 'sleeping'", [])
                .map(drop)
                .map_err(|source| RegistryError::Query {
                    what: "test",
                    source,
                })
        })
        .await
        .unwrap();
        let err = reg.list_instances().await.unwrap_err();
        let chain = crate::images::error_chain(&err);
        assert!(
            chain.contains("unknown instance status \"sleeping\""),
            "{chain}"
        );
    }
}
