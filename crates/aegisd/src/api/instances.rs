//! `/v1/instances`: create, list, info, delete, lifecycle actions.

use crate::lifecycle::spec::Lifetime;
use aegis_proto::api::{
    CreateInstance, Endpoint, ExposeRequest, Instance, InstanceStatus, SetTimeout,
};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::error::ApiError;
use super::json::{ApiJson, ApiPath, ApiQuery};
use super::AppState;
use crate::lifecycle::command::{Command, StopMode};
use crate::lifecycle::instances::InstanceHandle;
use crate::names::{self, NameKind};
use crate::provision::Exposed;

/// The view with the current status of its instance daemons (they change without the actor).
fn with_daemons(state: &AppState, mut view: Instance) -> Instance {
    view.daemons = state.provision.daemons.status(&view.id);
    view
}

/// Finds an instance by id or handle: 400 for a name no instance can have, else 404 when none
/// has it.
pub fn find(state: &AppState, id: &str) -> Result<InstanceHandle, ApiError> {
    names::check(NameKind::InstanceRef, id)?;
    state
        .instances
        .find(id)
        .ok_or_else(|| ApiError::UnknownInstance(id.to_owned()))
}

pub async fn create(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateInstance>,
) -> Result<(StatusCode, Json<Instance>), ApiError> {
    let (view, created) = state.provision.create(req).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(with_daemons(&state, view))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<Instance>>, ApiError> {
    let filter = match q.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(InstanceStatus::parse(s).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "invalid state {s:?}: expected starting, running, paused or stopped"
            ))
        })?),
    };
    let views = state
        .instances
        .list()
        .into_iter()
        .filter(|v| filter.is_none_or(|f| v.state == f))
        .map(|v| with_daemons(&state, v))
        .collect();
    Ok(Json(views))
}

pub async fn info(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Instance>, ApiError> {
    Ok(Json(with_daemons(&state, find(&state, &id)?.view())))
}

pub async fn delete(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let handle = find(&state, &id)?;
    state.provision.delete(&handle).await?;
    Ok(Json(serde_json::json!({ "deleted": handle.id.as_str() })))
}

pub async fn action(
    State(state): State<AppState>,
    ApiPath((id, action)): ApiPath<(String, String)>,
) -> Result<Json<Instance>, ApiError> {
    let handle = find(&state, &id)?;
    let view = match action.as_str() {
        "start" => handle.request(|reply| Command::Start { reply }).await?,
        "stop" => {
            handle
                .request(|reply| Command::Stop { mode: StopMode::Graceful, reply })
                .await?
        }
        "disable" => handle.request(|reply| Command::Disable { reply }).await?,
        "restart" => handle.request(|reply| Command::Restart { reply }).await?,
        "pause" => handle.request(|reply| Command::Pause { reply }).await?,
        "resume" => handle.request(|reply| Command::Resume { reply }).await?,
        other => {
            return Err(ApiError::NoRoute(format!(
                "/v1/instances/{id}/{other} (actions: start, stop, disable, restart, pause, resume, exec, logs)"
            )))
        }
    };
    Ok(Json(with_daemons(&state, view)))
}

/// `POST /v1/instances/{id}/timeout`: a new lifetime counted from now (the old one is
/// replaced), or none. `on_timeout` defaults to what the instance had, else `delete`.
pub async fn set_timeout(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<SetTimeout>,
) -> Result<Json<Instance>, ApiError> {
    let handle = find(&state, &id)?;
    let lifetime = match req.timeout_secs {
        None => None,
        Some(secs) => {
            let on_timeout = req
                .on_timeout
                .or(handle.view().on_timeout)
                .unwrap_or_default();
            Some(
                Lifetime::from_now(secs, on_timeout)
                    .map_err(|e| ApiError::BadRequest(e.to_string()))?,
            )
        }
    };
    let view = handle
        .request(|reply| Command::SetLifetime { lifetime, reply })
        .await?;
    Ok(Json(with_daemons(&state, view)))
}

pub async fn expose(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ExposeRequest>,
) -> Result<(StatusCode, Json<Endpoint>), ApiError> {
    let handle = find(&state, &id)?;
    Ok(match state.provision.expose(&handle, &req).await? {
        Exposed::New(exposed) => (StatusCode::CREATED, Json(exposed.endpoint())),
        Exposed::Existing(endpoint) => (StatusCode::OK, Json(endpoint)),
    })
}

pub async fn unexpose(
    State(state): State<AppState>,
    ApiPath((id, guest_port)): ApiPath<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let handle = find(&state, &id)?;
    let port: u16 = guest_port
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("invalid guest port {guest_port:?}")))?;
    state.provision.unexpose(&handle, port).await?;
    Ok(Json(serde_json::json!({ "unexposed": port })))
}
