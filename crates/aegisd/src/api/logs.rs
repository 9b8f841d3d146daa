//! `GET /v1/instances/{id}/logs`: NDJSON log entries, filtered by `since`, `tail` and `exec_id`;
//! with `follow`, new entries until the instance stops (as `docker logs -f`).

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
use crate::logs::{parse_since, LogFilter, LogSubscription};

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
    // Past the ring, history comes from the files: read them on the blocking pool.
    let log = std::sync::Arc::clone(&handle.log);
    let blocking_err = |e: tokio::task::JoinError| ApiError::Internal(format!("log query: {e}"));
    if !follow {
        let entries = tokio::task::spawn_blocking(move || log.query(&filter))
            .await
            .map_err(blocking_err)?;
        let body = entries
            .into_iter()
            .flat_map(|e| line(&e))
            .collect::<Vec<u8>>();
        return Ok(ndjson(Body::from(body)));
    }
    let watch = handle.watch();
    let wanted = filter.clone();
    let mut sub = tokio::task::spawn_blocking(move || log.subscribe(&wanted))
        .await
        .map_err(blocking_err)?;
    let history = futures::stream::iter(std::mem::take(&mut sub.history));
    let live = follow_stream(sub, watch, filter);
    let stream = history
        .chain(live)
        .map(|e| Ok::<Bytes, Infallible>(Bytes::from(line(&e))));
    Ok(ndjson(Body::from_stream(stream)))
}

fn line(e: &LogEntry) -> Vec<u8> {
    let mut v = serde_json::to_vec(e).unwrap_or_default();
    v.push(b'\n');
    v
}

enum Phase {
    Live,
    Draining,
}

fn follow_stream(
    sub: LogSubscription,
    watch: watch::Receiver<Instance>,
    filter: LogFilter,
) -> impl futures::Stream<Item = LogEntry> {
    futures::stream::unfold(
        (sub, watch, filter, Phase::Live),
        |(mut sub, mut watch, filter, phase)| async move {
            loop {
                match phase {
                    Phase::Draining => {
                        // The actor logs before it publishes `stopped`, so what is queued now
                        // is everything.
                        let e = sub.try_next()?;
                        if filter.matches(&e) {
                            return Some((e, (sub, watch, filter, Phase::Draining)));
                        }
                        continue;
                    }
                    Phase::Live => {}
                }
                if watch.borrow_and_update().state == InstanceStatus::Stopped {
                    return drain(sub, watch, filter);
                }
                tokio::select! {
                    e = sub.next() => match e {
                        Some(Ok(e)) if filter.matches(&e) => {
                            return Some((e, (sub, watch, filter, Phase::Live)));
                        }
                        Some(_) => continue,
                        None => return None,
                    },
                    changed = watch.changed() => {
                        if changed.is_err() {
                            return drain(sub, watch, filter);
                        }
                    }
                }
            }
        },
    )
}

type FollowState = (LogSubscription, watch::Receiver<Instance>, LogFilter, Phase);

fn drain(
    mut sub: LogSubscription,
    watch: watch::Receiver<Instance>,
    filter: LogFilter,
) -> Option<(LogEntry, FollowState)> {
    while let Some(e) = sub.try_next() {
        if filter.matches(&e) {
            return Some((e, (sub, watch, filter, Phase::Draining)));
        }
    }
    None
}
