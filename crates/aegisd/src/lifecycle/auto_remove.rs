//! Instances created with `auto_remove` (what `aegis run` asks for, like `docker run --rm`) are
//! deleted by the daemon once they have stayed stopped for [`GRACE`], whatever stopped them: the
//! primary process exiting, a failed boot, a crashed VM. The client that created one normally
//! reads the exit code and deletes it at once; the grace leaves it that time, and the watch
//! covers the client that never comes back (killed, lost its terminal, the daemon restarted
//! under it).

use std::future::Future;
use std::time::Duration;

use aegis_proto::api::{Instance, InstanceStatus};
use tokio::sync::watch;

/// How long a stopped auto-remove instance is kept for its client to read how it ended. A
/// client reconnecting to a restarted daemon finds it again within a few seconds.
pub const GRACE: Duration = Duration::from_secs(30);

/// Calls `remove` once the instance whose `views` these are has been stopped for [`GRACE`];
/// ends without calling it when the instance's actor ends first (deleted by anyone, or the
/// daemon going away).
pub async fn watch<F, Fut>(mut views: watch::Receiver<Instance>, remove: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        if views
            .wait_for(|v| v.state == InstanceStatus::Stopped)
            .await
            .is_err()
        {
            return; // the actor ended: deleted, or the daemon shuts down
        }
        match tokio::time::timeout(
            GRACE,
            views.wait_for(|v| v.state != InstanceStatus::Stopped),
        )
        .await
        {
            Ok(Ok(_)) => continue, // started again within the grace period
            Ok(Err(_)) => return,
            Err(_elapsed) => break,
        }
    }
    remove().await;
}
