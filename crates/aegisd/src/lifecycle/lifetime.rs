//! Instance lifetimes (`timeout_secs` at creation, `POST .../timeout` later): when one runs
//! out, the instance is deleted, or stopped when it asked for that. The deadline is wall-clock
//! time kept in the instance's spec, so paused and stopped time count, and a daemon restarted
//! after a deadline acts at once.
//!
//! One watch task per instance follows the actor's published view, so a changed or removed
//! lifetime applies at once; it ends with the actor.

use std::future::Future;

use aegis_proto::api::{Instance, OnTimeout};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::watch;

/// Waits for the instance's lifetime to run out and calls `expire` with what is to happen (then
/// goes on watching: a stopped instance may be given a new lifetime). Ends when the actor does.
pub async fn watch<F, Fut>(mut views: watch::Receiver<Instance>, mut expire: F)
where
    F: FnMut(OnTimeout) -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        let deadline = {
            let view = views.borrow_and_update();
            view.expires_at
                .as_deref()
                .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
                .map(|t| (t, view.on_timeout.unwrap_or_default()))
        };
        let Some((at, on_timeout)) = deadline else {
            if views.changed().await.is_err() {
                return;
            }
            continue;
        };
        let left = at - OffsetDateTime::now_utc();
        let sleep = std::time::Duration::try_from(left).unwrap_or_default();
        tokio::select! {
            changed = views.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep(sleep) => {
                expire(on_timeout).await;
                // What `expire` did is published; wait for that before looking again.
                if views.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}
