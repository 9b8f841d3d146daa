//! `POST /v1/instances/{id}/exec`: wakes the instance if needed, starts the process and streams
//! NDJSON: `{exec_id, started_at}`, output entries, then `{done, exit_code, exec_id}`.

use std::convert::Infallible;

use aegis_proto::api::{ExecEvent, ExecRequest};
use aegis_proto::control::{codes, ExecId, ExecParams, Method, ProcessSpec, SpawnResult};
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use rand::Rng;
use zeroize::Zeroize;

use super::error::ApiError;
use super::instances::find;
use super::json::{ApiJson, ApiPath};
use super::AppState;
use crate::control::{ControlError, CONTROL_CALL_TIMEOUT};
use crate::lifecycle::command::{Command, LifecycleError};
use crate::lifecycle::output::ExecFeed;
use crate::lifecycle::spec::{check_command, check_env};
use crate::logs::now_ts;
use crate::secrets::scrub_env;

pub async fn exec(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ExecRequest>,
) -> Result<Response, ApiError> {
    if req.command.is_empty() {
        return Err(ApiError::BadRequest("command must not be empty".to_owned()));
    }
    check_command(&req.command).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    check_env(&req.env).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let handle = find(&state, &id)?;
    let link = handle.request(|reply| Command::Wake { reply }).await?;
    let exec_id = ExecId(format!("exec-{:08x}", rand::thread_rng().gen::<u32>()));
    let stopped = || {
        ApiError::Lifecycle(LifecycleError::Stopped {
            id: handle.id.clone(),
            reason: "the VM stopped".to_owned(),
        })
    };
    let events = link
        .output
        .subscribe(exec_id.clone())
        .await
        .ok_or_else(stopped)?;
    // The image's and the instance's variables, the boot's secrets, then this exec's own.
    let mut env = link.defaults.env.clone();
    link.secrets.inject_into(&mut env);
    for (key, value) in req.env {
        if let Some(mut replaced) = env.insert(key, value) {
            replaced.zeroize();
        }
    }
    let mut params = ExecParams {
        exec_id: exec_id.clone(),
        process: ProcessSpec {
            argv: req.command,
            env,
            workdir: req.workdir.or(link.defaults.workdir.clone()),
            user: link.defaults.user.clone(),
        },
    };
    let spawned: Result<SpawnResult, ControlError> = link
        .control
        .call(Method::Exec, &params, CONTROL_CALL_TIMEOUT)
        .await;
    scrub_env(&mut params.process.env);
    match spawned {
        Ok(_) => {}
        Err(ControlError::Rpc { error, .. }) if error.code == codes::SPAWN_FAILED => {
            return Err(ApiError::Spawn(error.message));
        }
        Err(source) => {
            return Err(ApiError::Lifecycle(LifecycleError::Control {
                id: handle.id.clone(),
                source,
            }))
        }
    }
    // Held by the stream: a running exec keeps the instance from idling.
    let busy = handle.activity_started();
    let started = ExecEvent::Started {
        exec_id: exec_id.0.clone(),
        started_at: now_ts(),
    };
    let toucher = handle.clone();
    let rest = feed_stream(events).map(move |ev| {
        let _held = &busy;
        if matches!(ev, ExecEvent::Done { .. }) {
            toucher.notify(Command::Touch);
        }
        ev
    });
    let stream = futures::stream::once(async move { started })
        .chain(rest)
        .map(|ev| {
            let mut line = serde_json::to_vec(&ev).unwrap_or_default();
            line.push(b'\n');
            Ok::<Bytes, Infallible>(Bytes::from(line))
        });
    Ok(ndjson(Body::from_stream(stream)))
}

/// An exec's feed as a stream that ends after the final record.
fn feed_stream(feed: ExecFeed) -> impl futures::Stream<Item = ExecEvent> {
    futures::stream::unfold(feed, |mut feed| async move {
        let ev = feed.next().await?;
        Some((ev, feed))
    })
}

/// A streaming NDJSON response.
pub fn ndjson(body: Body) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(body)
        .unwrap_or_default()
}
