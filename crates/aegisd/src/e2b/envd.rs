//! E2B's in-sandbox daemon ("envd") served from the host: the `process.Process` and
//! `filesystem.Filesystem` Connect services and the `/files` transfer routes, each call made
//! of the daemon's exec, process and file routes for the sandbox the request names
//! (`E2b-Sandbox-Id`, with its `X-Access-Token`).
//!
//! Processes are started in the background (`detach`), so they outlive the client's stream as
//! envd's do; a stream is the exec's log followed from its start, then its exit. Output comes
//! from the instance log, which keeps text: bytes that are not UTF-8 arrive replaced.
//! Served: Start, Connect, List, SendInput, SendSignal, CloseStdin; Stat, ListDir, MakeDir,
//! Move, Remove; `/files` both ways, `/health`. Refused with `unimplemented` and a message:
//! terminals (`pty`), Update, StreamInput, and the watchers.

use std::collections::BTreeMap;
use std::time::Duration;

use aegis_client::{LogsQuery, WriteOptions};
use aegis_proto::api::{ExecRequest, FileInfo, LogStream, MkdirRequest, RenameRequest};
use aegis_proto::control::FileKind;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use futures::TryStreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use super::connect::{self, Code, ConnectError};
use super::control;
use super::error::E2bError;
use super::processes::Entry;
use super::E2bState;

/// Between two keepalive events of a quiet process stream, unless the client asks for another
/// interval (`Keepalive-Ping-Interval`, seconds).
const KEEPALIVE: Duration = Duration::from_secs(30);
/// Where relative paths start: E2B's are the user's home, and commands here run as root.
const HOME: &str = "/root";

pub fn routes() -> Router<E2bState> {
    Router::new()
        .route("/process.Process/:method", post(process))
        .route("/filesystem.Filesystem/:method", post(filesystem))
        .route("/files", get(download).post(upload))
        .route("/health", get(|| async { StatusCode::NO_CONTENT }))
}

/// The sandbox a request is for, its access token checked.
async fn sandbox(state: &E2bState, headers: &HeaderMap) -> Result<String, ConnectError> {
    let id = headers
        .get("e2b-sandbox-id")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ConnectError::new(
                Code::InvalidArgument,
                "no E2b-Sandbox-Id header: set E2B_SANDBOX_URL to this listener so the SDK \
                 names the sandbox in each request",
            )
        })?;
    // The record alone, no daemon round trip per call: a call to an instance that is not
    // running gets the daemon's own refusal.
    let row = control::record(state, id).await?;
    let token = headers.get("x-access-token").and_then(|v| v.to_str().ok());
    if token != Some(row.access_token.as_str()) {
        return Err(ConnectError::new(
            Code::Unauthenticated,
            format!("the access token of sandbox {id:?} is missing or wrong"),
        ));
    }
    Ok(row.instance_id)
}

// ----- process.Process -----

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProcessConfig {
    cmd: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    envs: BTreeMap<String, String>,
    cwd: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartRequest {
    process: ProcessConfig,
    pty: Option<Value>,
    tag: Option<String>,
    stdin: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Selector {
    pid: Option<u32>,
    tag: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SelectRequest {
    #[serde(default)]
    process: Selector,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SendInputRequest {
    #[serde(default)]
    process: Selector,
    #[serde(default)]
    input: Input,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Input {
    stdin: Option<String>,
    pty: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SendSignalRequest {
    #[serde(default)]
    process: Selector,
    signal: Value,
}

async fn process(
    State(state): State<E2bState>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let streaming = connect::is_streaming(&headers);
    let result = async {
        let id = sandbox(&state, &headers).await?;
        match method.as_str() {
            "Start" => start(&state, &id, &headers, connect::request(&headers, &body)?).await,
            "Connect" => {
                let req: SelectRequest = connect::request(&headers, &body)?;
                let (pid, entry) = select(&state, &id, &req.process)?;
                Ok(follow(
                    state.clone(),
                    id,
                    pid,
                    entry.exec_id,
                    &headers,
                    false,
                ))
            }
            "List" => list(&state, &id).await,
            "SendInput" => send_input(&state, &id, connect::request(&headers, &body)?).await,
            "SendSignal" => send_signal(&state, &id, connect::request(&headers, &body)?).await,
            "CloseStdin" => {
                let req: SelectRequest = connect::request(&headers, &body)?;
                let (_, entry) = select(&state, &id, &req.process)?;
                state
                    .client
                    .exec_stdin(&id, &entry.exec_id, tokio::io::empty(), false)
                    .await?;
                Ok(connect::unary(&json!({})))
            }
            other => Err(ConnectError::new(
                Code::Unimplemented,
                format!("process.Process/{other} is not supported by Aegis"),
            )),
        }
    }
    .await;
    connect::answer(streaming, result)
}

fn select(state: &E2bState, id: &str, selector: &Selector) -> Result<(u32, Entry), ConnectError> {
    state
        .processes
        .find(id, selector.pid, selector.tag.as_deref())
        .ok_or_else(|| {
            let which = match (selector.pid, &selector.tag) {
                (Some(pid), _) => format!("pid {pid}"),
                (None, Some(tag)) => format!("tag {tag:?}"),
                (None, None) => "no pid or tag".to_owned(),
            };
            ConnectError::new(
                Code::NotFound,
                format!("sandbox {id:?} has no process with {which}"),
            )
        })
}

async fn start(
    state: &E2bState,
    id: &str,
    headers: &HeaderMap,
    req: StartRequest,
) -> Result<Response, ConnectError> {
    if req.pty.is_some() {
        return Err(ConnectError::new(
            Code::Unimplemented,
            "terminals (pty) are not served by Aegis's E2B listener yet: use `aegis exec -it`",
        ));
    }
    if req.process.cmd.is_empty() {
        return Err(ConnectError::new(
            Code::InvalidArgument,
            "process.cmd is empty",
        ));
    }
    let mut command = vec![req.process.cmd.clone()];
    command.extend(req.process.args.iter().cloned());
    let config = json!({
        "cmd": req.process.cmd,
        "args": req.process.args,
        "envs": req.process.envs,
        "cwd": req.process.cwd,
    });
    let exec = ExecRequest {
        command,
        env: req.process.envs,
        workdir: req.process.cwd,
        // envd keeps stdin open unless told otherwise.
        stdin: req.stdin.unwrap_or(true),
        detach: true,
        ..ExecRequest::default()
    };
    let info = state.client.exec_detached(id, &exec).await?;
    let pid = state.processes.add(
        id,
        Entry {
            exec_id: info.exec_id.clone(),
            tag: req.tag,
            config,
        },
    );
    Ok(follow(
        state.clone(),
        id.to_owned(),
        pid,
        info.exec_id,
        headers,
        true,
    ))
}

/// A process's events: `start` (for Start) with its pid, its output as `data`, then `end`;
/// `keepalive` while it is quiet.
fn follow(
    state: E2bState,
    id: String,
    pid: u32,
    exec_id: String,
    headers: &HeaderMap,
    started: bool,
) -> Response {
    let keepalive = headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map_or(KEEPALIVE, Duration::from_secs);
    let deadline = headers
        .get("connect-timeout-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Value, ConnectError>>(64);
    tokio::spawn(async move {
        let event = |e: Value| Ok(json!({ "event": e }));
        if started
            && tx
                .send(event(json!({ "start": { "pid": pid } })))
                .await
                .is_err()
        {
            return;
        }
        let query = LogsQuery {
            follow: true,
            exec_id: Some(exec_id.clone()),
            ..LogsQuery::default()
        };
        let mut lines = match state.client.logs(&id, &query).await {
            Ok(lines) => lines,
            Err(e) => {
                let _ = tx.send(Err(ConnectError::daemon(&e))).await;
                return;
            }
        };
        let until = deadline.map(|d| tokio::time::Instant::now() + d);
        let b64 = base64::engine::general_purpose::STANDARD;
        loop {
            let next = tokio::time::timeout(keepalive, lines.next());
            let next = match until {
                Some(until) => tokio::select! {
                    n = next => n,
                    () = tokio::time::sleep_until(until) => {
                        let _ = tx.send(Err(ConnectError::new(
                            Code::DeadlineExceeded,
                            "the call's deadline passed; the process goes on",
                        ))).await;
                        return;
                    }
                },
                None => next.await,
            };
            match next {
                Err(_) => {
                    if tx.send(event(json!({ "keepalive": {} }))).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    let _ = tx.send(Err(ConnectError::daemon(&e))).await;
                    return;
                }
                Ok(Some(Ok(entry))) => {
                    let mut text = entry.line;
                    if !entry.partial {
                        text.push('\n');
                    }
                    let key = match entry.stream {
                        LogStream::Stderr => "stderr",
                        _ => "stdout",
                    };
                    let data = json!({ "data": { key: b64.encode(text) } });
                    if tx.send(event(data)).await.is_err() {
                        return;
                    }
                }
            }
        }
        let end = match state.client.wait_exec(&id, &exec_id).await {
            Ok(info) => {
                let code = info.exit_code.unwrap_or(-1);
                let status = match info.signal {
                    Some(signal) => format!("signal: {}", signal_name(signal)),
                    None => format!("exit status {code}"),
                };
                let mut end = json!({
                    "exitCode": code,
                    "exited": info.signal.is_none(),
                    "status": status,
                });
                if code != 0 {
                    end["error"] = Value::String(status);
                }
                end
            }
            Err(e) => {
                let _ = tx.send(Err(ConnectError::daemon(&e))).await;
                return;
            }
        };
        let _ = tx.send(event(json!({ "end": end }))).await;
    });
    connect::streaming(tokio_stream_of(rx))
}

fn tokio_stream_of<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn signal_name(signal: i32) -> String {
    match signal {
        9 => "killed".to_owned(),
        15 => "terminated".to_owned(),
        2 => "interrupt".to_owned(),
        n => format!("signal {n}"),
    }
}

async fn list(state: &E2bState, id: &str) -> Result<Response, ConnectError> {
    let running = state.client.execs(id).await?;
    let processes: Vec<Value> = state
        .processes
        .all(id)
        .into_iter()
        .filter(|(_, entry)| {
            running.iter().any(|info| {
                info.exec_id == entry.exec_id && info.state == aegis_proto::api::ExecState::Running
            })
        })
        .map(|(pid, entry)| {
            let mut info = json!({ "config": entry.config, "pid": pid });
            if let Some(tag) = entry.tag {
                info["tag"] = Value::String(tag);
            }
            info
        })
        .collect();
    Ok(connect::unary(&json!({ "processes": processes })))
}

async fn send_input(
    state: &E2bState,
    id: &str,
    req: SendInputRequest,
) -> Result<Response, ConnectError> {
    let (_, entry) = select(state, id, &req.process)?;
    let Some(data) = req.input.stdin.or(req.input.pty) else {
        return Err(ConnectError::new(
            Code::InvalidArgument,
            "input.stdin is missing",
        ));
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| {
            ConnectError::new(Code::InvalidArgument, format!("input is not base64: {e}"))
        })?;
    state
        .client
        .exec_stdin(id, &entry.exec_id, std::io::Cursor::new(bytes), true)
        .await?;
    Ok(connect::unary(&json!({})))
}

async fn send_signal(
    state: &E2bState,
    id: &str,
    req: SendSignalRequest,
) -> Result<Response, ConnectError> {
    let (_, entry) = select(state, id, &req.process)?;
    let signal = match &req.signal {
        Value::String(s) if s == "SIGNAL_SIGKILL" => "KILL",
        Value::String(s) if s == "SIGNAL_SIGTERM" => "TERM",
        Value::Number(n) if n.as_u64() == Some(9) => "KILL",
        Value::Number(n) if n.as_u64() == Some(15) => "TERM",
        other => {
            return Err(ConnectError::new(
                Code::InvalidArgument,
                format!("signal {other} is not SIGNAL_SIGKILL or SIGNAL_SIGTERM"),
            ))
        }
    };
    state.client.signal_exec(id, &entry.exec_id, signal).await?;
    Ok(connect::unary(&json!({})))
}

// ----- filesystem.Filesystem -----

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PathRequest {
    path: String,
    #[serde(default)]
    depth: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MoveRequest {
    source: String,
    destination: String,
}

/// envd's `EntryInfo`.
fn entry(info: &FileInfo) -> Value {
    let kind = match info.kind {
        FileKind::File => "FILE_TYPE_FILE",
        FileKind::Dir => "FILE_TYPE_DIRECTORY",
        FileKind::Symlink => "FILE_TYPE_SYMLINK",
        _ => "FILE_TYPE_UNSPECIFIED",
    };
    let mode = u32::from_str_radix(&info.mode, 8).unwrap_or(0);
    let mut out = json!({
        "name": info.name,
        "type": kind,
        "path": info.path,
        "size": info.size.to_string(),
        "mode": mode,
        "permissions": permissions(info.kind, mode),
        "owner": info.owner,
        "group": info.group,
        "modifiedTime": info.modified,
    });
    if let Some(target) = &info.target {
        out["symlinkTarget"] = Value::String(target.clone());
    }
    out
}

/// `ls -l`'s permission string (`drwxr-xr-x`).
fn permissions(kind: FileKind, mode: u32) -> String {
    let first = match kind {
        FileKind::Dir => 'd',
        FileKind::Symlink => 'l',
        _ => '-',
    };
    let mut text = String::from(first);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        text.push(if bits & 4 != 0 { 'r' } else { '-' });
        text.push(if bits & 2 != 0 { 'w' } else { '-' });
        text.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    text
}

async fn filesystem(
    State(state): State<E2bState>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let streaming = connect::is_streaming(&headers);
    let result = async {
        let id = sandbox(&state, &headers).await?;
        let client = &state.client;
        match method.as_str() {
            "Stat" => {
                let req: PathRequest = connect::request(&headers, &body)?;
                let info = client.stat_file(&id, &guest_path(&req.path)).await?;
                Ok(connect::unary(&json!({ "entry": entry(&info) })))
            }
            "ListDir" => {
                let req: PathRequest = connect::request(&headers, &body)?;
                let depth = req.depth.filter(|d| *d > 0).unwrap_or(1);
                let list = client
                    .list_files(&id, &guest_path(&req.path), depth)
                    .await
                    ?;
                let entries: Vec<Value> = list.iter().map(entry).collect();
                Ok(connect::unary(&json!({ "entries": entries })))
            }
            "MakeDir" => {
                let req: PathRequest = connect::request(&headers, &body)?;
                if let Ok(existing) = client.stat_file(&id, &guest_path(&req.path)).await {
                    return Err(ConnectError::new(
                        Code::AlreadyExists,
                        format!("{} exists", existing.path),
                    ));
                }
                let made = client
                    .make_dir(
                        &id,
                        &MkdirRequest {
                            path: guest_path(&req.path),
                            parents: true,
                            ..MkdirRequest::default()
                        },
                    )
                    .await
                    ?;
                Ok(connect::unary(&json!({ "entry": entry(&made) })))
            }
            "Move" => {
                let req: MoveRequest = connect::request(&headers, &body)?;
                let moved = client
                    .rename_file(
                        &id,
                        &RenameRequest {
                            from: guest_path(&req.source),
                            to: guest_path(&req.destination),
                        },
                    )
                    .await
                    ?;
                Ok(connect::unary(&json!({ "entry": entry(&moved) })))
            }
            "Remove" => {
                let req: PathRequest = connect::request(&headers, &body)?;
                client
                    .remove_file(&id, &guest_path(&req.path), true)
                    .await
                    ?;
                Ok(connect::unary(&json!({})))
            }
            other => Err(ConnectError::new(
                Code::Unimplemented,
                format!("filesystem.Filesystem/{other} is not supported by Aegis (no file watching yet)"),
            )),
        }
    }
    .await;
    connect::answer(streaming, result)
}

// ----- /files -----

#[derive(Debug, Deserialize)]
struct FilesQuery {
    path: Option<String>,
}

async fn files_sandbox(state: &E2bState, headers: &HeaderMap) -> Result<String, E2bError> {
    sandbox(state, headers).await.map_err(|e| {
        let status = match e.code {
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            _ => StatusCode::BAD_REQUEST,
        };
        E2bError::new(status, e.message)
    })
}

/// `GET /files?path=`: the file's bytes.
async fn download(
    State(state): State<E2bState>,
    headers: HeaderMap,
    Query(q): Query<FilesQuery>,
) -> Result<Response, E2bError> {
    let id = files_sandbox(&state, &headers).await?;
    let path = q
        .path
        .ok_or_else(|| E2bError::bad_request("the path query parameter is missing"))?;
    let file = state
        .client
        .read_file(&id, &guest_path(&path), None, None)
        .await?;
    let length = file.length;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let mut response = Response::builder().header(header::CONTENT_TYPE, "application/octet-stream");
    if let Some(length) = length {
        response = response.header(header::CONTENT_LENGTH, length);
    }
    Ok(response.body(body).unwrap_or_default())
}

/// `POST /files?path=` with `application/octet-stream` (envd 0.5.7's streamed upload), or
/// multipart, each part a file; a part's file name is its path when the query names none. Each
/// file is written atomically, parents made. Answers the written entries.
async fn upload(
    State(state): State<E2bState>,
    headers: HeaderMap,
    Query(q): Query<FilesQuery>,
    request: Request,
) -> Result<Json<Vec<Value>>, E2bError> {
    let id = files_sandbox(&state, &headers).await?;
    if headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !v.eq_ignore_ascii_case("identity"))
    {
        return Err(E2bError::bad_request(
            "compressed uploads (gzip=True) are not supported by Aegis: upload uncompressed",
        ));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut written = Vec::new();
    if content_type.starts_with("application/octet-stream") {
        let path = q
            .path
            .ok_or_else(|| E2bError::bad_request("the path query parameter is missing"))?;
        let content = tokio_util::io::StreamReader::new(
            request
                .into_body()
                .into_data_stream()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        );
        written.push(write(&state, &id, &path, content).await?);
        return Ok(Json(written));
    }
    let boundary = multer::parse_boundary(content_type).map_err(|_| {
        E2bError::bad_request(
            "the upload is neither application/octet-stream nor multipart/form-data",
        )
    })?;
    let mut parts = multer::Multipart::new(request.into_body().into_data_stream(), boundary);
    while let Some(field) = parts
        .next_field()
        .await
        .map_err(|e| E2bError::bad_request(format!("the multipart body is malformed: {e}")))?
    {
        let path = match (&q.path, field.file_name()) {
            (Some(path), _) if written.is_empty() => path.clone(),
            (_, Some(name)) if !name.is_empty() => name.to_owned(),
            _ => {
                return Err(E2bError::bad_request(
                    "each file part needs a path (the path query or its file name)",
                ))
            }
        };
        let content = tokio_util::io::StreamReader::new(
            field.map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        );
        written.push(write(&state, &id, &path, content).await?);
    }
    Ok(Json(written))
}

async fn write(
    state: &E2bState,
    id: &str,
    path: &str,
    content: impl tokio::io::AsyncRead + Send + Unpin + 'static,
) -> Result<Value, E2bError> {
    let info = state
        .client
        .write_file(
            id,
            &guest_path(path),
            content,
            &WriteOptions {
                parents: true,
                ..WriteOptions::default()
            },
        )
        .await?;
    Ok(json!({ "name": info.name, "type": "file", "path": info.path }))
}

/// A path as envd reads it: relative to the user's home, which in an Aegis guest is root's.
fn guest_path(path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{HOME}/{}", path.trim_start_matches("./"))
    }
}
