//! E2B's control plane: sandboxes created from a template, listed, inspected, killed, given a
//! new timeout, paused and connected to again. A sandbox is an instance whose primary process
//! sleeps (its work is done by commands), that never idles out (E2B sandboxes live by their
//! timeout), with the E2B side of it in the registry.
//!
//! - A template name is a kit when one of that name is installed, else an image reference;
//!   `base` (the SDKs' default) is the default image.
//! - `timeout` is the instance's lifetime; when it runs out the instance is deleted, or
//!   stopped with a snapshot when `autoPause` is set.
//! - Pause stops the instance with a snapshot (its memory and processes are kept on disk and
//!   come back on connect) and lifts the lifetime: as in E2B, a paused sandbox does not time
//!   out. Connect wakes it and gives it the requested timeout again.

use std::collections::BTreeMap;

use aegis_client::InstanceAction;
use aegis_proto::api::{
    CreateInstance, IdleTimeout, Instance, InstanceStatus, OnTimeout, SetTimeout,
};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::RngCore;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::E2bError;
use super::keys;
use super::{E2bState, ENVD_VERSION};
use crate::logs::now_ts;
use crate::registry::E2bSandboxRow;

/// The template the SDKs create when none is named.
const DEFAULT_TEMPLATE: &str = "base";
/// The SDKs' default timeout, used when a request gives none.
const DEFAULT_TIMEOUT_SECS: u64 = 300;
/// The longest timeout accepted (E2B's own limit for its largest plan).
const MAX_TIMEOUT_SECS: u64 = 24 * 3600;
/// What a sandbox's primary process is: it only has to be there.
const KEEP_ALIVE: [&str; 2] = ["sleep", "infinity"];

pub fn routes() -> Router<E2bState> {
    Router::new()
        .route("/sandboxes", post(create).get(list_v1))
        .route("/v2/sandboxes", post(create).get(list_v2))
        .route("/sandboxes/:id", get(info).delete(kill))
        .route("/sandboxes/:id/timeout", post(set_timeout))
        .route("/sandboxes/:id/refreshes", post(refresh))
        .route("/sandboxes/:id/pause", post(pause))
        .route("/sandboxes/:id/resume", post(resume))
        .route("/sandboxes/:id/connect", post(connect))
        .route("/v2/sandboxes/:id/connect", post(connect))
}

/// The API key of a control-plane request (`X-API-KEY`, or a bearer token).
async fn authenticate(
    state: &E2bState,
    headers: &HeaderMap,
) -> Result<aegis_proto::api::E2bKeyInfo, E2bError> {
    let presented = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        })
        .map(str::trim);
    let Some(presented) = presented else {
        return Err(E2bError::new(
            StatusCode::UNAUTHORIZED,
            "no API key: set E2B_API_KEY to a key from `aegis e2b key create`",
        ));
    };
    keys::authenticate(&state.registry, presented)
        .await
        .map_err(E2bError::internal)?
        .ok_or_else(|| {
            E2bError::new(
                StatusCode::UNAUTHORIZED,
                "invalid API key: it is not one of `aegis e2b key list` (revoked, or from \
                 another daemon)",
            )
        })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewSandbox {
    #[serde(rename = "templateID")]
    template_id: Option<String>,
    timeout: Option<u64>,
    #[serde(default)]
    auto_pause: bool,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    env_vars: BTreeMap<String, String>,
    #[serde(rename = "allow_internet_access")]
    allow_internet_access: Option<bool>,
}

fn check_timeout(secs: Option<u64>) -> Result<u64, E2bError> {
    let secs = secs.filter(|s| *s > 0).unwrap_or(DEFAULT_TIMEOUT_SECS);
    if secs > MAX_TIMEOUT_SECS {
        return Err(E2bError::bad_request(format!(
            "timeout {secs} s is longer than the longest allowed, {MAX_TIMEOUT_SECS} s"
        )));
    }
    Ok(secs)
}

/// The instance a template name starts: `(kit, image)`.
async fn template(
    state: &E2bState,
    name: &str,
) -> Result<(Option<String>, Option<String>), E2bError> {
    if name == DEFAULT_TEMPLATE {
        return Ok((None, None));
    }
    if state.client.kit(name).await.is_ok() {
        return Ok((Some(name.to_owned()), None));
    }
    match state.client.image(name).await {
        Ok(_) => Ok((None, Some(name.to_owned()))),
        Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Err(E2bError::new(
            StatusCode::NOT_FOUND,
            format!(
                "template {name:?} not found: it is neither an installed kit nor an image in \
                 the store (`aegis image pull {name}`), and {DEFAULT_TEMPLATE:?} is the default image"
            ),
        )),
        Err(e) if e.status() == Some(StatusCode::BAD_REQUEST) => Err(E2bError::bad_request(
            format!("template {name:?} is not a kit name or an image reference: {e}"),
        )),
        Err(e) => Err(E2bError::daemon(&e)),
    }
}

/// `POST /sandboxes`.
async fn create(
    State(state): State<E2bState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, E2bError> {
    let key = authenticate(&state, &headers).await?;
    let req: NewSandbox = serde_json::from_slice(&body)
        .map_err(|e| E2bError::bad_request(format!("invalid sandbox request: {e}")))?;
    let template_name = req
        .template_id
        .filter(|t| !t.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_TEMPLATE.to_owned());
    let timeout = check_timeout(req.timeout)?;
    let (kit, image_ref) = template(&state, &template_name).await?;
    let create = CreateInstance {
        command: KEEP_ALIVE.iter().map(|s| (*s).to_owned()).collect(),
        kit,
        image_ref,
        env: req.env_vars,
        idle_pause: Some(IdleTimeout::Text("never".to_owned())),
        idle_stop: Some(IdleTimeout::Text("never".to_owned())),
        egress: match req.allow_internet_access {
            Some(false) => Some("none".to_owned()),
            _ => None,
        },
        timeout_secs: Some(timeout),
        on_timeout: Some(if req.auto_pause {
            OnTimeout::Stop
        } else {
            OnTimeout::Delete
        }),
        ..CreateInstance::default()
    };
    let created = state.client.create_instance(&create).await?;
    let mut token = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut token);
    let row = E2bSandboxRow {
        instance_id: created.instance.id.clone(),
        template: template_name,
        metadata: serde_json::to_string(&req.metadata).unwrap_or_else(|_| "{}".to_owned()),
        access_token: hex::encode(token),
        key_id: key.id,
        created_at: now_ts(),
    };
    if let Err(e) = state.registry.add_e2b_sandbox(row.clone()).await {
        // Not a sandbox without its record: do not leave an instance nobody can reach.
        let _ = state.client.delete_instance(&created.instance.id).await;
        return Err(E2bError::internal(e));
    }
    Ok((StatusCode::CREATED, Json(sandbox(&row, &created.instance))).into_response())
}

/// What create and connect answer.
fn sandbox(row: &E2bSandboxRow, instance: &Instance) -> Value {
    json!({
        "sandboxID": instance.id,
        "templateID": row.template,
        "clientID": "aegis",
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": row.access_token,
        "domain": null,
        "alias": row.template,
    })
}

fn state_name(state: InstanceStatus) -> &'static str {
    match state {
        InstanceStatus::Starting | InstanceStatus::Running => "running",
        InstanceStatus::Paused | InstanceStatus::Stopped => "paused",
    }
}

/// What get and list answer.
fn detail(row: &E2bSandboxRow, instance: &Instance) -> Value {
    let metadata: Value = serde_json::from_str(&row.metadata).unwrap_or_else(|_| json!({}));
    json!({
        "sandboxID": instance.id,
        "templateID": row.template,
        "alias": row.template,
        "clientID": "aegis",
        "startedAt": row.created_at,
        // A paused sandbox has no end: far enough ahead that no SDK takes it for expired.
        "endAt": instance.expires_at.clone().unwrap_or_else(|| "9999-12-31T23:59:59Z".to_owned()),
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": row.access_token,
        "domain": null,
        "cpuCount": instance.vcpus,
        "memoryMB": instance.memory_mb,
        "diskSizeMB": 0,
        "metadata": metadata,
        "state": state_name(instance.state),
    })
}

/// The record of sandbox `id` (it goes with its instance: the registry cascades).
pub async fn record(state: &E2bState, id: &str) -> Result<E2bSandboxRow, E2bError> {
    state
        .registry
        .e2b_sandbox(id.to_owned())
        .await
        .map_err(E2bError::internal)?
        .ok_or_else(|| E2bError::no_sandbox(id))
}

/// The sandbox `id`: its record and its instance.
pub async fn find(state: &E2bState, id: &str) -> Result<(E2bSandboxRow, Instance), E2bError> {
    let row = record(state, id).await?;
    match state.client.instance(id).await {
        Ok(instance) => Ok((row, instance)),
        Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Err(E2bError::no_sandbox(id)),
        Err(e) => Err(E2bError::daemon(&e)),
    }
}

/// `GET /sandboxes/{id}`.
async fn info(
    State(state): State<E2bState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, E2bError> {
    authenticate(&state, &headers).await?;
    let (row, instance) = find(&state, &id).await?;
    Ok(Json(detail(&row, &instance)))
}

/// A list's page.
#[derive(Debug, Default)]
struct ListQuery {
    limit: Option<usize>,
    next_token: Option<String>,
}

/// The query's filters: metadata `k=v` pairs (a query string, percent-encoded however many
/// times the SDK did it) and states.
fn filters(raw: &str) -> (Vec<(String, String)>, Vec<String>, ListQuery) {
    let mut metadata = Vec::new();
    let mut states = Vec::new();
    let mut query = ListQuery::default();
    for (key, value) in url_pairs(raw) {
        match key.as_str() {
            "metadata" => {
                let mut text = value;
                // Decoded until it holds `=`: the SDKs encode the pairs, then the query.
                for _ in 0..3 {
                    if text.contains('=') {
                        break;
                    }
                    text = percent_encoding::percent_decode_str(&text)
                        .decode_utf8_lossy()
                        .into_owned();
                }
                for (k, v) in url_pairs(&text) {
                    metadata.push((k, v));
                }
            }
            "state" => states.extend(value.split(',').map(str::to_owned)),
            "limit" => query.limit = value.parse().ok(),
            "nextToken" => query.next_token = Some(value),
            _ => {}
        }
    }
    (metadata, states, query)
}

fn url_pairs(raw: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

async fn listed(
    state: &E2bState,
    raw_query: &str,
) -> Result<(Vec<Value>, Option<String>), E2bError> {
    let (metadata, states, query) = filters(raw_query);
    let rows = state
        .registry
        .list_e2b_sandboxes()
        .await
        .map_err(E2bError::internal)?;
    let instances = state.client.list_instances(None).await?;
    let mut out = Vec::new();
    for row in rows {
        let Some(instance) = instances.iter().find(|i| i.id == row.instance_id) else {
            continue;
        };
        let view = detail(&row, instance);
        let state_ok = states.is_empty() || states.iter().any(|s| view["state"] == s.as_str());
        let meta_ok = metadata
            .iter()
            .all(|(k, v)| view["metadata"][k].as_str() == Some(v.as_str()));
        if state_ok && meta_ok {
            out.push(view);
        }
    }
    // The token is the index of the next page's first sandbox.
    let start = query
        .next_token
        .and_then(|t| t.parse::<usize>().ok())
        .unwrap_or(0)
        .min(out.len());
    let limit = query.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
    let end = start.saturating_add(limit).min(out.len());
    let next = (end < out.len()).then(|| end.to_string());
    Ok((out.drain(start..end).collect(), next))
}

/// `GET /sandboxes` (running ones, as E2B's first version).
async fn list_v1(
    State(state): State<E2bState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Json<Vec<Value>>, E2bError> {
    authenticate(&state, &headers).await?;
    let (all, _) = listed(&state, uri.query().unwrap_or("")).await?;
    Ok(Json(all))
}

/// `GET /v2/sandboxes`: filtered by metadata and state, paginated with `X-Next-Token`.
async fn list_v2(
    State(state): State<E2bState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response, E2bError> {
    authenticate(&state, &headers).await?;
    let (page, next) = listed(&state, uri.query().unwrap_or("")).await?;
    let mut response = Json(page).into_response();
    if let Some(next) = next.and_then(|n| n.parse().ok()) {
        response.headers_mut().insert("x-next-token", next);
    }
    Ok(response)
}

/// `DELETE /sandboxes/{id}`.
async fn kill(
    State(state): State<E2bState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, E2bError> {
    authenticate(&state, &headers).await?;
    find(&state, &id).await?;
    state.client.delete_instance(&id).await?;
    state.processes.forget(&id);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
struct TimeoutBody {
    timeout: Option<u64>,
    duration: Option<u64>,
}

/// The sandbox's lifetime from now: `secs`, or none (a paused sandbox waits for its resume).
async fn new_lifetime(state: &E2bState, id: &str, secs: Option<u64>) -> Result<Instance, E2bError> {
    state
        .client
        .set_timeout(
            id,
            &SetTimeout {
                timeout_secs: secs,
                on_timeout: None,
            },
        )
        .await
        .map_err(E2bError::from)
}

/// `POST /sandboxes/{id}/timeout` (`{"timeout": seconds}`, from now).
async fn set_timeout(
    State(state): State<E2bState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<StatusCode, E2bError> {
    authenticate(&state, &headers).await?;
    let body: TimeoutBody = serde_json::from_slice(&body)
        .map_err(|e| E2bError::bad_request(format!("invalid timeout request: {e}")))?;
    find(&state, &id).await?;
    let secs = check_timeout(body.timeout.or(body.duration))?;
    new_lifetime(&state, &id, Some(secs)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /sandboxes/{id}/refreshes` (`{"duration": seconds}`).
async fn refresh(
    state: State<E2bState>,
    headers: HeaderMap,
    id: Path<String>,
    body: axum::body::Bytes,
) -> Result<StatusCode, E2bError> {
    set_timeout(state, headers, id, body).await
}

/// `POST /sandboxes/{id}/pause`.
async fn pause(
    State(state): State<E2bState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, E2bError> {
    authenticate(&state, &headers).await?;
    let (_, instance) = find(&state, &id).await?;
    if state_name(instance.state) == "paused" {
        return Err(E2bError::new(
            StatusCode::CONFLICT,
            format!("sandbox {id:?} is already paused"),
        ));
    }
    new_lifetime(&state, &id, None).await?;
    state
        .client
        .instance_action(&id, InstanceAction::Stop)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Wakes a paused sandbox (or finds it running) and gives it `timeout` from now. Whether it
/// was paused.
async fn wake(
    state: &E2bState,
    id: &str,
    timeout: Option<u64>,
) -> Result<(E2bSandboxRow, Instance, bool), E2bError> {
    let (row, instance) = find(state, id).await?;
    let secs = check_timeout(timeout)?;
    let paused = state_name(instance.state) == "paused";
    if paused {
        state
            .client
            .instance_action(id, InstanceAction::Start)
            .await?;
    }
    let instance = new_lifetime(state, id, Some(secs)).await?;
    Ok((row, instance, paused))
}

/// `POST /v2/sandboxes/{id}/connect`: 201 when it was paused and is resumed, else 200.
async fn connect(
    State(state): State<E2bState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, E2bError> {
    authenticate(&state, &headers).await?;
    let body: Option<TimeoutBody> = serde_json::from_slice(&body).ok();
    let (row, instance, resumed) = wake(&state, &id, body.and_then(|b| b.timeout)).await?;
    let status = if resumed {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(sandbox(&row, &instance))).into_response())
}

/// `POST /sandboxes/{id}/resume` (the older call): 409 unless paused.
async fn resume(
    State(state): State<E2bState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, E2bError> {
    authenticate(&state, &headers).await?;
    let (_, instance) = find(&state, &id).await?;
    if state_name(instance.state) != "paused" {
        return Err(E2bError::new(
            StatusCode::CONFLICT,
            format!("sandbox {id:?} is not paused"),
        ));
    }
    let body: Option<TimeoutBody> = serde_json::from_slice(&body).ok();
    let (row, instance, _) = wake(&state, &id, body.and_then(|b| b.timeout)).await?;
    Ok((StatusCode::CREATED, Json(sandbox(&row, &instance))).into_response())
}
