//! `/v1/kits`: list, inspect, install and remove kits. The store validates; handlers translate.

use aegis_proto::api::Deleted;
use aegis_proto::kit::{InstallKit, KitInfo};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::error::ApiError;
use super::json::{ApiJson, ApiPath};
use super::AppState;
use crate::kits::InstalledKit;

fn info(state: &AppState, kit: InstalledKit) -> KitInfo {
    let instances = state
        .instances
        .list()
        .into_iter()
        .filter(|i| i.kit.as_deref() == Some(kit.manifest.name.as_str()))
        .map(|i| i.id)
        .collect();
    KitInfo {
        manifest: kit.manifest,
        path: kit.path.display().to_string(),
        instances,
    }
}

/// `GET /v1/kits` → the valid installed kits, by name.
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<KitInfo>>, ApiError> {
    let kits = state.provision.kits.list().await?;
    Ok(Json(kits.into_iter().map(|k| info(&state, k)).collect()))
}

/// `GET /v1/kits/{name}` → one kit; 404 when not installed, 400 naming the offending field when
/// its file is not valid.
pub async fn get(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<KitInfo>, ApiError> {
    let kit = state.provision.kits.get(&name).await?;
    Ok(Json(info(&state, kit)))
}

/// `POST /v1/kits` `{manifest, base_dir?, replace?}` → 201 with the installed kit (200 when it
/// replaced one).
pub async fn install(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<InstallKit>,
) -> Result<(StatusCode, Json<KitInfo>), ApiError> {
    let (kit, replaced) = state.provision.kits.install(req).await?;
    tracing::info!(kit = %kit.manifest.name, version = %kit.manifest.version, "kit installed");
    let status = if replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(info(&state, kit))))
}

/// `DELETE /v1/kits/{name}` → `{"deleted": name}`. Instances created from the kit keep their
/// configuration and their instance daemons.
pub async fn remove(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Deleted>, ApiError> {
    state.provision.kits.remove(&name).await?;
    tracing::info!(kit = %name, "kit removed");
    Ok(Json(Deleted { deleted: name }))
}
