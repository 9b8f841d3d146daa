//! `/v1/images`: list, inspect, remove, prune, and pull / import with NDJSON progress.
//! References travel percent-encoded in the path (`docker.io%2Flibrary%2Falpine:3`).

use std::convert::Infallible;

use aegis_proto::api::{
    ImageDetail, ImageEvent, ImageSummary, ImportRequest, PruneResult, PullRequest, RemovedImage,
};
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::Json;
use bytes::Bytes;
use tokio::sync::mpsc;

use super::error::ApiError;
use super::exec::ndjson;
use super::json::{ApiJson, ApiPath};
use super::AppState;
use crate::images::{error_chain, ImageError, Images};

/// Progress events buffered per stream; progress is best effort, the final record is not.
const PROGRESS_BUFFER: usize = 256;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::BadRequest(format!("image task failed: {e}")))?
        .map_err(ApiError::Image)
}

pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<ImageSummary>>, ApiError> {
    let images = state.ctx.images.clone();
    Ok(Json(blocking(move || images.list_blocking()).await?))
}

pub async fn inspect(
    State(state): State<AppState>,
    ApiPath(reference): ApiPath<String>,
) -> Result<Json<ImageDetail>, ApiError> {
    let images = state.ctx.images.clone();
    Ok(Json(
        blocking(move || images.inspect_blocking(&reference)).await?,
    ))
}

pub async fn remove(
    State(state): State<AppState>,
    ApiPath(reference): ApiPath<String>,
) -> Result<Json<RemovedImage>, ApiError> {
    let images = state.ctx.images.clone();
    let r = reference.clone();
    let digest = blocking(move || images.remove_blocking(&r)).await?;
    Ok(Json(RemovedImage {
        removed: reference,
        digest,
    }))
}

pub async fn prune(State(state): State<AppState>) -> Result<Json<PruneResult>, ApiError> {
    // Images that instances were created from stay, whatever their references.
    let in_use: Vec<String> = state.instances.image_digests();
    let images = state.ctx.images.clone();
    Ok(Json(
        blocking(move || images.prune_blocking(&in_use)).await?,
    ))
}

pub async fn pull(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<PullRequest>,
) -> Result<Response, ApiError> {
    let images: Images = state.ctx.images.clone();
    Ok(progress_stream(move |tx| async move {
        let progress = tx.clone();
        match images
            .pull(&req.reference, move |ev| {
                let _ = progress.try_send(ev);
            })
            .await
        {
            Ok((summary, cached)) => ImageEvent::Done {
                images: vec![summary],
                cached,
            },
            Err(e) => failure(&e),
        }
    }))
}

pub async fn import(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ImportRequest>,
) -> Result<Response, ApiError> {
    let path = std::path::PathBuf::from(&req.path);
    if !path.is_absolute() {
        return Err(ApiError::BadRequest(format!(
            "import path {:?} must be absolute (it is read by the daemon)",
            req.path
        )));
    }
    check_import_source(&path)?;
    let images = state.ctx.images.clone();
    Ok(progress_stream(move |tx| async move {
        let res = tokio::task::spawn_blocking(move || {
            images.import_blocking(&path, req.rootfs, req.tag.as_deref(), |ev| {
                let _ = tx.try_send(ev);
            })
        })
        .await;
        match res {
            Ok(Ok(summaries)) => ImageEvent::Done {
                images: summaries,
                cached: false,
            },
            Ok(Err(e)) => failure(&e),
            Err(e) => ImageEvent::Error {
                error: format!("import task failed: {e}"),
                hint: None,
            },
        }
    }))
}

/// Refuses an import source that is neither a regular file nor a directory before the import
/// starts. Found by fuzzing the API: `{"path": "/dev/zero", "rootfs": true}` read without end
/// into a blob under `images/tmp` (gigabytes a second, on after the client had gone), and a
/// FIFO would block an import thread forever. A missing path is left to the import, which
/// names it.
fn check_import_source(path: &std::path::Path) -> Result<(), ApiError> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    let kind = meta.file_type();
    if kind.is_file() || kind.is_dir() {
        return Ok(());
    }
    let what = if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    };
    Err(ApiError::BadRequest(format!(
        "cannot import {}: it is {what}; give an OCI image layout directory, an OCI or \
         `docker save` archive, or a root filesystem tar (with rootfs)",
        path.display()
    )))
}

fn failure(e: &ImageError) -> ImageEvent {
    ImageEvent::Error {
        error: error_chain(e),
        hint: e.hint(),
    }
}

/// Runs `work` in a task, streaming the events it sends and then its final event as NDJSON.
fn progress_stream<F, Fut>(work: F) -> Response
where
    F: FnOnce(mpsc::Sender<ImageEvent>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ImageEvent> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(PROGRESS_BUFFER);
    let last = tx.clone();
    tokio::spawn(async move {
        let final_event = work(tx).await;
        let _ = last.send(final_event).await;
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let ev = rx.recv().await?;
        let mut line = serde_json::to_vec(&ev).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<Bytes, Infallible>(Bytes::from(line)), rx))
    });
    ndjson(Body::from_stream(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_read_only_files_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let socket = dir.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let rows = [
            ("/dev/zero".into(), "it is a character device"),
            ("/dev/urandom".into(), "it is a character device"),
            (fifo, "it is a FIFO"),
            (socket, "it is a socket"),
        ];
        for (path, want) in rows {
            let err = check_import_source(&path).unwrap_err();
            assert_eq!(err.status().as_u16(), 400, "{}", path.display());
            assert!(err.to_string().contains(want), "{err}");
        }
        let file = dir.path().join("image.tar");
        std::fs::write(&file, b"").unwrap();
        for ok in [
            file.as_path(),
            dir.path(),
            std::path::Path::new("/nonexistent/x.tar"),
        ] {
            check_import_source(ok).unwrap();
        }
    }
}
