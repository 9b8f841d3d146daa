//! `POST /v1/instances/{id}/exec`: wakes the instance if needed, starts the process and streams
//! NDJSON: `{exec_id, started_at}`, output entries, then `{done, exit_code, exec_id}`.

use std::convert::Infallible;

use aegis_proto::api::{ExecEvent, ExecRequest};
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;

use super::error::ApiError;
use super::instances::find;
use super::json::{ApiJson, ApiPath};
use super::AppState;
use crate::lifecycle::command::{Command, LifecycleError};
use crate::lifecycle::exec::{ExecSpec, ExecStarted};
use crate::lifecycle::output::ExecFeed;
use crate::lifecycle::spec::{check_command, check_env};
use crate::logs::now_ts;

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
    let spec = ExecSpec {
        argv: req.command,
        env: req.env,
        workdir: req.workdir,
    };
    let ExecStarted { exec_id, feed } = handle
        .request(|reply| Command::Exec {
            request: spec,
            reply,
        })
        .await
        .map_err(|e| match e {
            LifecycleError::Spawn { message, .. } => ApiError::Spawn(message),
            e => ApiError::Lifecycle(e),
        })?;
    // Held by the stream: a running exec keeps the instance from idling.
    let busy = handle.activity_started();
    let started = ExecEvent::Started {
        exec_id: exec_id.0.clone(),
        started_at: now_ts(),
    };
    let toucher = handle.clone();
    let rest = feed_stream(feed).map(move |ev| {
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
