//! `/v1/instances/{id}/files`: read, write, stat, list, mkdir, remove, rename, and directories
//! as tar archives, through the guest harness's data service. Every call wakes the instance as
//! exec does and counts as activity while it runs. Paths are guest paths, resolved and
//! enforced inside the guest: nothing here looks at them beyond passing them on.

use aegis_proto::api::{parse_mode, FileInfo, MkdirRequest, RenameRequest};
use aegis_proto::control::{DataRequest, FileEntry};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;

use super::error::ApiError;
use super::instances::find;
use super::json::{ApiJson, ApiPath, ApiQuery};
use super::AppState;
use crate::lifecycle::command::{Command, GuestLink};
use crate::lifecycle::data;
use crate::lifecycle::instances::{ActivityGuard, InstanceHandle};
use crate::logs::format_ts;

/// A woken guest, and the activity the call counts as while it runs.
async fn guest(state: &AppState, id: &str) -> Result<(GuestLink, ActivityGuard), ApiError> {
    let handle: InstanceHandle = find(state, id)?;
    let link = handle.request(|reply| Command::Wake { reply }).await?;
    Ok((link, handle.activity_started()))
}

/// The API's view of a guest's file entry.
fn info(entry: FileEntry) -> FileInfo {
    FileInfo {
        name: entry.name,
        path: entry.path,
        kind: entry.kind,
        size: entry.size,
        mode: format!("{:04o}", entry.mode),
        uid: entry.uid,
        gid: entry.gid,
        owner: entry.owner,
        group: entry.group,
        modified: time::OffsetDateTime::from_unix_timestamp(entry.mtime)
            .map(format_ts)
            .unwrap_or_default(),
        target: entry.target,
    }
}

fn the_file(reply: aegis_proto::control::DataReply) -> Result<Json<FileInfo>, ApiError> {
    reply
        .file
        .map(|entry| Json(info(entry)))
        .ok_or_else(|| ApiError::Internal("the guest's answer has no file".to_owned()))
}

fn mode(text: Option<&str>) -> Result<Option<u32>, ApiError> {
    text.map(parse_mode)
        .transpose()
        .map_err(ApiError::BadRequest)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathQuery {
    path: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    path: String,
    offset: Option<u64>,
    length: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteQuery {
    path: String,
    parents: Option<bool>,
    mode: Option<String>,
    owner: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    path: String,
    depth: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveQuery {
    path: String,
    recursive: Option<bool>,
}

/// `GET /files?path=&offset=&length=`: the file's bytes, streamed.
pub async fn read(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ReadQuery>,
) -> Result<Response, ApiError> {
    let (link, busy) = guest(&state, &id).await?;
    let request = DataRequest::Read {
        path: q.path,
        offset: q.offset.unwrap_or(0),
        length: q.length,
    };
    let (stream, accepted) = data::open_with_reply(&link, &request).await?;
    let bytes = futures::StreamExt::map(data::download(stream), move |piece| {
        let _held = &busy;
        piece
    });
    let mut response = Response::builder().header(header::CONTENT_TYPE, "application/octet-stream");
    if let Some(length) = accepted.bytes {
        response = response.header(header::CONTENT_LENGTH, length);
    }
    response
        .body(Body::from_stream(bytes))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// `PUT /files?path=&parents=&mode=&owner=`: the body, streamed, replaces the file atomically.
pub async fn write(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<WriteQuery>,
    request: Request,
) -> Result<Json<FileInfo>, ApiError> {
    let request_mode = mode(q.mode.as_deref())?;
    let (link, _busy) = guest(&state, &id).await?;
    let write = DataRequest::Write {
        path: q.path,
        parents: q.parents.unwrap_or(false),
        mode: request_mode,
        owner: q.owner,
    };
    let reply = data::upload(&link, &write, request.into_body().into_data_stream()).await?;
    the_file(reply)
}

/// `DELETE /files?path=&recursive=`.
pub async fn remove(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<RemoveQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (link, _busy) = guest(&state, &id).await?;
    let request = DataRequest::Remove {
        path: q.path,
        recursive: q.recursive.unwrap_or(false),
    };
    data::call(&link, &request).await?;
    Ok(Json(serde_json::json!({})))
}

/// `GET /files/stat?path=`.
pub async fn stat(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PathQuery>,
) -> Result<Json<FileInfo>, ApiError> {
    let (link, _busy) = guest(&state, &id).await?;
    the_file(data::call(&link, &DataRequest::Stat { path: q.path }).await?)
}

/// `GET /files/list?path=&depth=`.
pub async fn list(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<FileInfo>>, ApiError> {
    let (link, _busy) = guest(&state, &id).await?;
    let request = DataRequest::List {
        path: q.path,
        depth: q.depth.unwrap_or(1),
    };
    let reply = data::call(&link, &request).await?;
    Ok(Json(
        reply
            .entries
            .unwrap_or_default()
            .into_iter()
            .map(info)
            .collect(),
    ))
}

/// `POST /files/mkdir`.
pub async fn mkdir(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<MkdirRequest>,
) -> Result<Json<FileInfo>, ApiError> {
    let request_mode = mode(req.mode.as_deref())?;
    let (link, _busy) = guest(&state, &id).await?;
    let request = DataRequest::Mkdir {
        path: req.path,
        parents: req.parents,
        mode: request_mode,
        owner: req.owner,
    };
    the_file(data::call(&link, &request).await?)
}

/// `POST /files/rename`.
pub async fn rename(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<RenameRequest>,
) -> Result<Json<FileInfo>, ApiError> {
    let (link, _busy) = guest(&state, &id).await?;
    let request = DataRequest::Rename {
        from: req.from,
        to: req.to,
    };
    the_file(data::call(&link, &request).await?)
}

/// `GET /files/archive?path=`: a tar archive of the file or directory, streamed.
pub async fn archive_out(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PathQuery>,
) -> Result<Response, ApiError> {
    let (link, busy) = guest(&state, &id).await?;
    let (stream, _) = data::open_with_reply(&link, &DataRequest::TarOut { path: q.path }).await?;
    let bytes = futures::StreamExt::map(data::download(stream), move |piece| {
        let _held = &busy;
        piece
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-tar")
        .body(Body::from_stream(bytes))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// `PUT /files/archive?path=`: unpacks the tar archive of the body into the directory.
pub async fn archive_in(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PathQuery>,
    request: Request,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (link, _busy) = guest(&state, &id).await?;
    let request_in = DataRequest::TarIn { path: q.path };
    data::upload(&link, &request_in, request.into_body().into_data_stream()).await?;
    Ok(Json(serde_json::json!({})))
}
