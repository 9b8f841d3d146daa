//! `/v1/workspaces`: the named workspaces (list, create, inspect, remove). An instance's own
//! workspace is part of the instance and goes with it.

use aegis_proto::api::{CreateWorkspace, Deleted, WorkspaceInfo};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::error::ApiError;
use super::json::{ApiJson, ApiPath};
use super::AppState;
use crate::workspaces::{Named, WorkspaceError};

/// The instances (handles where they have one, else ids) configured with workspace `name`.
fn users(state: &AppState, name: &str) -> Vec<String> {
    state
        .instances
        .list()
        .into_iter()
        .filter(|i| i.workspace.as_ref().and_then(|w| w.name.as_deref()) == Some(name))
        .map(|i| i.handle.unwrap_or(i.id))
        .collect()
}

fn info(state: &AppState, named: &Named) -> WorkspaceInfo {
    named.info(users(state, &named.name))
}

/// `GET /v1/workspaces` → every named workspace, by name.
pub async fn list(State(state): State<AppState>) -> Json<Vec<WorkspaceInfo>> {
    let store = state.ctx.workspaces.clone();
    let named = tokio::task::spawn_blocking(move || store.list())
        .await
        .unwrap_or_default();
    Json(named.iter().map(|n| info(&state, n)).collect())
}

/// `GET /v1/workspaces/{name}` → the workspace.
pub async fn get(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<WorkspaceInfo>, ApiError> {
    let named = state
        .ctx
        .workspaces
        .get(&name)?
        .ok_or(WorkspaceError::NotFound(name))?;
    Ok(Json(info(&state, &named)))
}

/// `POST /v1/workspaces` `{name, kind?, size_mb?}` → 201 with the workspace.
pub async fn create(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateWorkspace>,
) -> Result<(StatusCode, Json<WorkspaceInfo>), ApiError> {
    let named = state
        .ctx
        .workspaces
        .create(&req.name, req.kind.as_deref(), req.size_mb)?;
    Ok((StatusCode::CREATED, Json(info(&state, &named))))
}

/// `DELETE /v1/workspaces/{name}` → `{"deleted": name}`; refused while instances use it.
pub async fn delete(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Deleted>, ApiError> {
    let instances = users(&state, &name);
    if !instances.is_empty() {
        return Err(WorkspaceError::InUse { name, instances }.into());
    }
    let store = state.ctx.workspaces.clone();
    let doomed = name.clone();
    tokio::task::spawn_blocking(move || store.remove(&doomed))
        .await
        .map_err(|e| WorkspaceError::Io {
            path: name.clone().into(),
            source: std::io::Error::other(e.to_string()),
        })??;
    Ok(Json(Deleted { deleted: name }))
}
