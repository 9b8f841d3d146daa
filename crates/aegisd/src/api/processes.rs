//! `/v1/instances/{id}/execs`: the processes started through the API, attached or in the
//! background (`"detach": true` on exec): list, one, wait for its end, signal it, feed its
//! stdin, attach to its terminal and resize it. Output is in the instance's log under the exec
//! id (`logs?exec_id=`), except a terminal's, which goes to the attached connection only.

use aegis_proto::api::{ExecInfo, SignalRequest, TerminalSize};
use aegis_proto::control::{codes, ExecId, Method, ResizeParams, SignalParams, WindowSize};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use futures::TryStreamExt;
use serde::Deserialize;
use tokio_util::io::StreamReader;

use super::error::ApiError;
use super::exec::{needs_upgrade, take_upgrade, upgrade_to_terminal};
use super::instances::find;
use super::json::{ApiJson, ApiPath, ApiQuery};
use super::AppState;
use crate::control::{ControlError, CONTROL_CALL_TIMEOUT};
use crate::lifecycle::command::{Command, GuestLink, LifecycleError};
use crate::lifecycle::exec::{StdinSink, Terminal};
use crate::lifecycle::instances::InstanceHandle;

/// `GET /v1/instances/{id}/execs`.
pub async fn list(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Vec<ExecInfo>>, ApiError> {
    Ok(Json(find(&state, &id)?.processes.list()))
}

/// `GET /v1/instances/{id}/execs/{exec_id}`.
pub async fn get(
    State(state): State<AppState>,
    ApiPath((id, exec_id)): ApiPath<(String, String)>,
) -> Result<Json<ExecInfo>, ApiError> {
    let (_, info) = known(&state, &id, &exec_id)?;
    Ok(Json(info))
}

/// `POST /v1/instances/{id}/execs/{exec_id}/wait`: answers once the process is no longer
/// running. Waiting does not wake the instance or keep it awake.
pub async fn wait(
    State(state): State<AppState>,
    ApiPath((id, exec_id)): ApiPath<(String, String)>,
) -> Result<Json<ExecInfo>, ApiError> {
    let (handle, _) = known(&state, &id, &exec_id)?;
    handle
        .processes
        .wait(&exec_id)
        .await
        .map(Json)
        .ok_or_else(|| unknown(&id, &exec_id))
}

/// `POST /v1/instances/{id}/execs/{exec_id}/signal`: wakes the instance and signals the
/// process's group (a process that already ended is a 409).
pub async fn signal(
    State(state): State<AppState>,
    ApiPath((id, exec_id)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<SignalRequest>,
) -> Result<Json<ExecInfo>, ApiError> {
    let signal = parse_signal(&req.signal).map_err(ApiError::BadRequest)?;
    let (handle, info) = running(&state, &id, &exec_id)?;
    let params = SignalParams {
        exec_id: Some(ExecId(exec_id.clone())),
        signal,
    };
    call_guest(&handle, Method::Signal, &params).await?;
    Ok(Json(info))
}

/// `POST /v1/instances/{id}/execs/{exec_id}/terminal` with `Upgrade: aegis-exec`: attaches to
/// the terminal of an exec started with `tty` (in the background, or again after a client went
/// away): raw bytes both ways, as the exec call gives them.
pub async fn terminal(
    State(state): State<AppState>,
    ApiPath((id, exec_id)): ApiPath<(String, String)>,
    mut request: Request,
) -> Result<Response, ApiError> {
    let upgrade = take_upgrade(&mut request).ok_or_else(|| needs_upgrade("a terminal"))?;
    let (handle, _) = on_terminal(&state, &id, &exec_id)?;
    let link = wake(&handle).await?;
    let exec_id = ExecId(exec_id);
    let terminal = Terminal::connect(&link, Some(&exec_id)).await?;
    Ok(upgrade_to_terminal(
        upgrade,
        terminal,
        handle,
        Some(&exec_id),
    ))
}

/// `POST /v1/instances/{id}/terminal` with `Upgrade: aegis-exec`: attaches to the terminal of
/// the primary process of an instance created with `tty` (`aegis run -t`), as
/// `.../execs/{exec_id}/terminal` does for an exec. Wakes the instance first; a primary process
/// without a terminal, or one another connection is attached to, is a 409.
pub async fn primary_terminal(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    mut request: Request,
) -> Result<Response, ApiError> {
    let upgrade = take_upgrade(&mut request).ok_or_else(|| needs_upgrade("a terminal"))?;
    let handle = find(&state, &id)?;
    let link = wake(&handle).await?;
    let terminal = Terminal::connect(&link, None).await?;
    Ok(upgrade_to_terminal(upgrade, terminal, handle, None))
}

/// `POST /v1/instances/{id}/resize`: a new window size for the primary process's terminal.
pub async fn primary_resize(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(size): ApiJson<TerminalSize>,
) -> Result<StatusCode, ApiError> {
    let size = size.check().map_err(ApiError::BadRequest)?;
    let handle = find(&state, &id)?;
    let params = ResizeParams {
        exec_id: None,
        size: WindowSize::from(size),
    };
    match call_guest(&handle, Method::Resize, &params).await {
        // The harness's refusal says what is wrong: no terminal, or no primary process now.
        Err(ApiError::Lifecycle(LifecycleError::Control {
            source: ControlError::Rpc { error, .. },
            ..
        })) if error.code == codes::INVALID_PARAMS || error.code == codes::NO_SUCH_PROCESS => {
            Err(ApiError::Conflict(error.message))
        }
        other => other.map(|()| StatusCode::NO_CONTENT),
    }
}

/// `POST /v1/instances/{id}/execs/{exec_id}/resize`: a new window size for the terminal of an
/// exec started with `tty`; the process gets SIGWINCH.
pub async fn resize(
    State(state): State<AppState>,
    ApiPath((id, exec_id)): ApiPath<(String, String)>,
    ApiJson(size): ApiJson<TerminalSize>,
) -> Result<Json<ExecInfo>, ApiError> {
    let size = size.check().map_err(ApiError::BadRequest)?;
    let (handle, info) = on_terminal(&state, &id, &exec_id)?;
    let params = ResizeParams {
        exec_id: Some(ExecId(exec_id)),
        size: WindowSize::from(size),
    };
    call_guest(&handle, Method::Resize, &params).await?;
    Ok(Json(info))
}

/// As [`running`], and a 409 unless the process runs on a terminal.
fn on_terminal(
    state: &AppState,
    id: &str,
    exec_id: &str,
) -> Result<(InstanceHandle, ExecInfo), ApiError> {
    let (handle, info) = running(state, id, exec_id)?;
    if !info.tty {
        return Err(ApiError::Conflict(format!(
            "exec {exec_id} has no terminal (start it with \"tty\")"
        )));
    }
    Ok((handle, info))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdinQuery {
    /// `false` keeps the process's stdin open after this body, for a later call.
    close: Option<bool>,
}

/// What `POST .../stdin` answers.
#[derive(Debug, serde::Serialize)]
pub struct StdinWritten {
    /// Bytes the process was given.
    bytes: u64,
}

/// `POST /v1/instances/{id}/execs/{exec_id}/stdin?close=true|false`: the request body, streamed
/// (with back-pressure), becomes the process's input; by default its end closes the process's
/// stdin. One call at a time per process.
pub async fn stdin(
    State(state): State<AppState>,
    ApiPath((id, exec_id)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<StdinQuery>,
    request: Request,
) -> Result<Json<StdinWritten>, ApiError> {
    let (handle, info) = running(&state, &id, &exec_id)?;
    if !info.stdin {
        return Err(ApiError::Conflict(format!(
            "exec {exec_id} was started without stdin (start it with \"stdin\": true)"
        )));
    }
    feed(&handle, Some(&ExecId(exec_id)), &q, request).await
}

/// `POST /v1/instances/{id}/stdin?close=true|false`: as `.../execs/{exec_id}/stdin`, for the
/// primary process of an instance created with `"stdin": true` (`aegis run -i`).
pub async fn primary_stdin(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<StdinQuery>,
    request: Request,
) -> Result<Json<StdinWritten>, ApiError> {
    feed(&find(&state, &id)?, None, &q, request).await
}

/// Wakes the instance and streams the request's body to the stdin of `exec_id` (the primary
/// process when `None`).
async fn feed(
    handle: &InstanceHandle,
    exec_id: Option<&ExecId>,
    q: &StdinQuery,
    request: Request,
) -> Result<Json<StdinWritten>, ApiError> {
    let link = wake(handle).await?;
    let keep_open = !q.close.unwrap_or(true);
    let sink = StdinSink::connect(&link, exec_id, keep_open).await?;
    let body = request
        .into_body()
        .into_data_stream()
        .map_err(std::io::Error::other);
    let bytes = sink.feed(StreamReader::new(body)).await?;
    Ok(Json(StdinWritten { bytes }))
}

/// The instance and the process's entry, or a 404.
fn known(
    state: &AppState,
    id: &str,
    exec_id: &str,
) -> Result<(InstanceHandle, ExecInfo), ApiError> {
    let handle = find(state, id)?;
    let info = handle
        .processes
        .get(exec_id)
        .ok_or_else(|| unknown(id, exec_id))?;
    Ok((handle, info))
}

/// As [`known`], and a 409 unless the process still runs.
fn running(
    state: &AppState,
    id: &str,
    exec_id: &str,
) -> Result<(InstanceHandle, ExecInfo), ApiError> {
    let (handle, info) = known(state, id, exec_id)?;
    if info.state != aegis_proto::api::ExecState::Running {
        return Err(ApiError::Conflict(format!(
            "exec {exec_id} is no longer running ({})",
            match info.exit_code {
                Some(code) => format!("it exited with code {code}"),
                None => "the VM it ran in ended".to_owned(),
            }
        )));
    }
    Ok((handle, info))
}

fn unknown(id: &str, exec_id: &str) -> ApiError {
    ApiError::UnknownExec {
        instance: id.to_owned(),
        exec_id: exec_id.to_owned(),
    }
}

/// Wakes the instance and makes one control call that answers `{}`.
async fn call_guest(
    handle: &InstanceHandle,
    method: Method,
    params: &impl serde::Serialize,
) -> Result<(), ApiError> {
    let link = wake(handle).await?;
    link.control
        .call::<serde_json::Value>(method, params, CONTROL_CALL_TIMEOUT)
        .await
        .map(drop)
        .map_err(|source| {
            ApiError::Lifecycle(LifecycleError::Control {
                id: handle.id.clone(),
                source,
            })
        })
}

async fn wake(handle: &InstanceHandle) -> Result<GuestLink, ApiError> {
    Ok(handle.request(|reply| Command::Wake { reply }).await?)
}

/// A signal by name (`TERM`, `SIGTERM`, `term`) or number (1 to 64).
///
/// # Errors
/// What is wrong with it.
pub fn parse_signal(text: &str) -> Result<i32, String> {
    if let Ok(n) = text.parse::<i32>() {
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err(format!("signal {n} is out of range (1 to 64)"))
        };
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| format!("unknown signal {text:?} (a name such as TERM or KILL, or a number)"))
}

#[cfg(test)]
mod tests {
    use super::parse_signal;

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(parse_signal("TERM"), Ok(15));
        assert_eq!(parse_signal("sigkill"), Ok(9));
        assert_eq!(parse_signal("SIGINT"), Ok(2));
        assert_eq!(parse_signal("10"), Ok(10));
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("99").is_err());
        assert!(parse_signal("NOPE").unwrap_err().contains("unknown signal"));
    }
}
