//! `GET /v1/instances/{id}/logs`: NDJSON log entries, filtered by `since`, `tail` and `exec_id`;
//! with `follow`, new entries until the instance stops (as `docker logs -f`) or, with `exec_id`,
//! until that exec ends.

use std::convert::Infallible;

use aegis_proto::api::{Instance, InstanceStatus, LogEntry};
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::watch;

use super::error::ApiError;
use super::exec::ndjson;
use super::instances::find;
use super::json::{ApiPath, ApiQuery};
use super::AppState;
use crate::logs::{parse_since, History, InstanceLog, LogFilter, LogSubscription};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    follow: Option<String>,
    since: Option<String>,
    tail: Option<String>,
    exec_id: Option<String>,
}

fn flag(v: Option<&str>) -> Result<bool, ApiError> {
    match v {
        None | Some("0" | "false" | "") => Ok(false),
        Some("1" | "true") => Ok(true),
        Some(other) => Err(ApiError::BadRequest(format!(
            "invalid follow={other:?}: expected 1 or 0"
        ))),
    }
}

pub async fn logs(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> Result<Response, ApiError> {
    let follow = flag(q.follow.as_deref())?;
    let filter = LogFilter {
        since: q
            .since
            .as_deref()
            .map(parse_since)
            .transpose()
            .map_err(ApiError::BadRequest)?,
        tail: q
            .tail
            .as_deref()
            .map(|t| {
                t.parse::<usize>().map_err(|_| {
                    ApiError::BadRequest(format!("invalid tail={t:?}: expected a number"))
                })
            })
            .transpose()?,
        exec_id: q.exec_id.filter(|s| !s.is_empty()),
    };
    let handle = find(&state, &id)?;
    let log = std::sync::Arc::clone(&handle.log);
    if !follow {
        let history = log.history(&filter);
        return Ok(ndjson(Body::from_stream(read_history(
            log, history, filter,
        ))));
    }
    let instance_stopped = stopped(handle.watch());
    // An exec's output ends with the exec, or with the instance when that stops first.
    let ended: Ended = match filter.exec_id.clone() {
        Some(exec_id) => {
            let processes = std::sync::Arc::clone(&handle.processes);
            Box::pin(async move {
                tokio::select! {
                    () = instance_stopped => {}
                    _ = processes.wait(&exec_id) => {}
                }
            })
        }
        None => Box::pin(instance_stopped),
    };
    let (history, sub) = log.subscribe(&filter);
    let live = follow_stream(sub, ended, filter.clone())
        .map(|e| Ok::<Bytes, Infallible>(Bytes::from(line(&e))));
    let stream = read_history(log, history, filter).chain(live);
    Ok(ndjson(Body::from_stream(stream)))
}

/// NDJSON pieces buffered between the reader and the client.
const HISTORY_PIECES: usize = 4;
/// Size a piece of history grows to before it is handed to the client.
const HISTORY_PIECE_BYTES: usize = 256 * 1024;

/// Streams a query's history, read on the blocking pool (past the ring it comes from the files)
/// in pieces, so a query holds about 1 MiB however large the logs, and a client that goes away
/// stops the read.
fn read_history(
    log: std::sync::Arc<InstanceLog>,
    history: History,
    filter: LogFilter,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(HISTORY_PIECES);
    tokio::task::spawn_blocking(move || {
        let mut piece = Vec::new();
        log.read(history, &filter, |e| {
            piece.extend_from_slice(&line(&e));
            piece.len() < HISTORY_PIECE_BYTES
                || tx
                    .blocking_send(Bytes::from(std::mem::take(&mut piece)))
                    .is_ok()
        });
        if !piece.is_empty() {
            let _ = tx.blocking_send(Bytes::from(piece));
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        let piece = rx.recv().await?;
        Some((Ok(piece), rx))
    })
}

fn line(e: &LogEntry) -> Vec<u8> {
    let mut v = serde_json::to_vec(e).unwrap_or_default();
    v.push(b'\n');
    v
}

/// Resolves when a followed source has ended: everything it wrote is in the log by then.
type Ended = futures::future::BoxFuture<'static, ()>;

/// When the instance is stopped (its actor logs before it publishes `stopped`).
async fn stopped(mut watch: watch::Receiver<Instance>) {
    while watch.borrow_and_update().state != InstanceStatus::Stopped {
        if watch.changed().await.is_err() {
            return;
        }
    }
}

/// Live entries matching `filter` until `ended`, then what is queued, then the end.
fn follow_stream(
    sub: LogSubscription,
    ended: Ended,
    filter: LogFilter,
) -> impl futures::Stream<Item = LogEntry> {
    futures::stream::unfold(
        (sub, Some(ended), filter),
        |(mut sub, mut ended, filter)| async move {
            loop {
                let Some(until) = ended.as_mut() else {
                    // Ended: what is queued now is everything.
                    let e = sub.try_next()?;
                    if filter.matches(&e) {
                        return Some((e, (sub, None, filter)));
                    }
                    continue;
                };
                tokio::select! {
                    e = sub.next() => match e {
                        Some(Ok(e)) if filter.matches(&e) => {
                            return Some((e, (sub, ended, filter)));
                        }
                        Some(_) => continue,
                        None => return None,
                    },
                    () = until => ended = None,
                }
            }
        },
    )
}
