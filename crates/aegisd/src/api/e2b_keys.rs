//! `/v1/e2b/keys`: the API keys of the E2B-compatible listener (`crate::e2b`). A key is in the
//! answer that creates it and nowhere else; lists show names and dates.

use aegis_proto::api::{CreateE2bKey, Deleted, E2bKeyCreated, E2bKeyInfo};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::error::ApiError;
use super::json::{ApiJson, ApiPath};
use super::AppState;
use crate::e2b::keys::{self, KeyError};

/// `POST /v1/e2b/keys` `{"name"}` → 201 with the key.
pub async fn create(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateE2bKey>,
) -> Result<(StatusCode, Json<E2bKeyCreated>), ApiError> {
    let created = keys::create(&state.ctx.registry, &req.name)
        .await
        .map_err(|e| match e {
            KeyError::BadName(_) => ApiError::BadRequest(e.to_string()),
            KeyError::Exists(_) => ApiError::Conflict(e.to_string()),
            KeyError::Registry(e) => ApiError::Internal(e.to_string()),
        })?;
    tracing::info!(key = %created.info.id, name = %created.info.name, "E2B key created");
    Ok((StatusCode::CREATED, Json(created)))
}

/// `GET /v1/e2b/keys`.
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<E2bKeyInfo>>, ApiError> {
    keys::list(&state.ctx.registry)
        .await
        .map(Json)
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// `DELETE /v1/e2b/keys/{id-or-name}`.
pub async fn revoke(
    State(state): State<AppState>,
    ApiPath(key): ApiPath<String>,
) -> Result<Json<Deleted>, ApiError> {
    let revoked = state
        .ctx
        .registry
        .revoke_e2b_key(key.clone())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if !revoked {
        return Err(ApiError::NotFound(format!(
            "no E2B key {key:?} (`aegis e2b key list` shows them)"
        )));
    }
    tracing::info!(%key, "E2B key revoked");
    Ok(Json(Deleted { deleted: key }))
}
