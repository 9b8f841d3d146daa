//! `POST /v1/instances/{id}/exec`: wakes the instance if needed, starts the process and streams
//! NDJSON: `{exec_id, started_at}`, output entries, then `{done, exit_code, exec_id}`. With
//! `Upgrade: aegis-exec` the same records go over the upgraded connection, and the client's
//! bytes on it become the process's stdin (`"stdin": true`), ended by the client's half-close.
//! With `"tty"` the process runs on a terminal and the upgraded connection carries the
//! terminal's raw bytes both ways instead (see [`upgrade_to_terminal`]).
//! With `"detach": true` the answer is the process's [`aegis_proto::api::ExecInfo`] as soon as
//! it runs, and the process goes on in the background (see `processes`).

use std::convert::Infallible;

use std::time::Duration;

use aegis_proto::api::{ExecEvent, ExecRequest, EXEC_ID_HEADER, EXEC_UPGRADE_PROTOCOL};
use aegis_proto::control::{ExecId, WindowSize};
use axum::body::Body;
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

use super::error::ApiError;
use super::instances::find;
use super::json::{ApiJson, ApiPath};
use super::AppState;
use crate::lifecycle::command::{Command, LifecycleError};
use crate::lifecycle::exec::{ExecInput, ExecSpec, ExecStarted, StdinSink, Terminal};
use crate::lifecycle::instances::InstanceHandle;
use crate::lifecycle::output::ExecFeed;
use crate::lifecycle::spec::{check_command, check_env};
use crate::logs::now_ts;

pub async fn exec(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    mut request: Request,
) -> Result<Response, ApiError> {
    let upgrade = take_upgrade(&mut request);
    let ApiJson(req) = ApiJson::<ExecRequest>::from_request(request, &state).await?;
    if req.command.is_empty() {
        return Err(ApiError::BadRequest("command must not be empty".to_owned()));
    }
    check_command(&req.command).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    check_env(&req.env).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let tty = req
        .tty
        .map(|size| size.check().map(WindowSize::from))
        .transpose()
        .map_err(ApiError::BadRequest)?;
    if (req.stdin || tty.is_some()) && !req.detach && upgrade.is_none() {
        return Err(needs_upgrade(if tty.is_some() {
            "an exec on a terminal"
        } else {
            "an exec with stdin"
        }));
    }
    if req.timeout_secs == Some(0) {
        return Err(ApiError::BadRequest(
            "timeout_secs must be at least 1 (leave it out for no timeout)".to_owned(),
        ));
    }
    let handle = find(&state, &id)?;
    let spec = ExecSpec {
        argv: req.command,
        env: req.env,
        workdir: req.workdir,
        stdin: req.stdin,
        timeout: req.timeout_secs.map(Duration::from_secs),
        detach: req.detach,
        tty,
    };
    let ExecStarted {
        exec_id,
        feed,
        input,
    } = handle
        .request(|reply| Command::Exec {
            request: spec,
            reply,
        })
        .await
        .map_err(|e| match e {
            LifecycleError::Spawn { message, .. } => ApiError::Spawn(message),
            e => ApiError::Lifecycle(e),
        })?;
    if req.detach {
        // Its output goes to the log only; a running process keeps the instance awake through
        // the guest's heartbeat.
        drop(feed);
        let info = handle
            .processes
            .get(&exec_id.0)
            .ok_or_else(|| ApiError::Internal(format!("exec {} is not recorded", exec_id.0)))?;
        return Ok(axum::Json(info).into_response());
    }
    let stdin = match input {
        Some(ExecInput::Terminal(terminal)) => {
            // Its end comes from the guest closing the terminal; how it ended from `/wait`.
            drop(feed);
            let upgrade = upgrade.ok_or_else(|| needs_upgrade("an exec on a terminal"))?;
            return Ok(upgrade_to_terminal(
                upgrade,
                terminal,
                handle,
                Some(&exec_id),
            ));
        }
        Some(ExecInput::Stdin(sink)) => Some(sink),
        None => None,
    };
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
    let lines = futures::stream::once(async move { started })
        .chain(rest)
        .map(|ev| {
            let mut line = serde_json::to_vec(&ev).unwrap_or_default();
            line.push(b'\n');
            Bytes::from(line)
        });
    match upgrade {
        None => Ok(ndjson(Body::from_stream(
            lines.map(Ok::<Bytes, Infallible>),
        ))),
        Some(upgrade) => {
            tokio::spawn(serve_upgraded(upgrade, lines, stdin));
            Ok(Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(header::CONNECTION, "upgrade")
                .header(header::UPGRADE, EXEC_UPGRADE_PROTOCOL)
                .body(Body::empty())
                .unwrap_or_default())
        }
    }
}

/// The 400 for a request that must upgrade its connection and did not ask to.
pub(super) fn needs_upgrade(what: &str) -> ApiError {
    ApiError::BadRequest(format!(
        "{what} streams over an upgraded connection: send `Connection: Upgrade` and \
         `Upgrade: {EXEC_UPGRADE_PROTOCOL}`"
    ))
}

/// Answers 101 and, once the connection is upgraded, joins it to the exec's terminal: raw bytes
/// both ways until the guest closes the terminal (the process ended) and the client closes in
/// turn. The exec id is in the [`EXEC_ID_HEADER`] header, for resizes and the wait for its exit.
pub(super) fn upgrade_to_terminal(
    upgrade: OnUpgrade,
    terminal: Terminal,
    handle: InstanceHandle,
    exec_id: Option<&ExecId>,
) -> Response {
    // An attached terminal keeps the instance from idling.
    let busy = handle.activity_started();
    tokio::spawn(async move {
        let _busy = busy;
        match upgrade.await {
            Ok(upgraded) => {
                let mut client = TokioIo::new(upgraded);
                let mut guest = terminal.stream;
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut guest).await {
                    tracing::debug!(error = %e, "terminal connection ended");
                }
            }
            Err(e) => tracing::debug!(error = %e, "terminal upgrade failed"),
        }
        handle.notify(Command::Touch);
    });
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, EXEC_UPGRADE_PROTOCOL);
    if let Some(exec_id) = exec_id {
        response = response.header(EXEC_ID_HEADER, exec_id.0.as_str());
    }
    response.body(Body::empty()).unwrap_or_default()
}

/// The pending upgrade of a request that asks to upgrade to the exec protocol.
pub(super) fn take_upgrade(request: &mut Request) -> Option<OnUpgrade> {
    let wanted = request.headers().get(header::UPGRADE).is_some_and(|v| {
        v.as_bytes()
            .eq_ignore_ascii_case(EXEC_UPGRADE_PROTOCOL.as_bytes())
    });
    wanted
        .then(|| request.extensions_mut().remove::<OnUpgrade>())
        .flatten()
}

/// The upgraded connection: the exec's records go out, the client's bytes go to the process's
/// stdin until the client half-closes. Once the process has ended, input still arriving has
/// nowhere to go and the connection is closed.
async fn serve_upgraded(
    upgrade: OnUpgrade,
    lines: impl futures::Stream<Item = Bytes>,
    stdin: Option<StdinSink>,
) {
    let io = match upgrade.await {
        Ok(upgraded) => TokioIo::new(upgraded),
        Err(e) => {
            tracing::debug!(error = %e, "exec upgrade failed");
            return;
        }
    };
    let (input, mut output) = tokio::io::split(io);
    let feeding = stdin.map(|sink| {
        tokio::spawn(async move {
            if let Err(why) = sink.feed(input).await {
                tracing::debug!(%why, "exec input ended early");
            }
        })
    });
    let mut lines = std::pin::pin!(lines);
    while let Some(line) = lines.next().await {
        if output.write_all(&line).await.is_err() {
            break;
        }
    }
    let _ = output.shutdown().await;
    if let Some(feeding) = feeding {
        feeding.abort();
    }
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
