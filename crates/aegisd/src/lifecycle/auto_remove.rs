//! Instances created with `auto_remove` (what `aegis run` asks for, like `docker run --rm`) are
//! deleted by the daemon once they have stayed stopped for [`GRACE`], whatever stopped them: the
//! primary process exiting, a failed boot, a crashed VM. The client that created one normally
//! reads the exit code and deletes it at once; the grace leaves it that time, and the watch
//! covers the client that never comes back (killed, lost its terminal, the daemon restarted
//! under it).

use std::sync::Weak;
use std::time::Duration;

use aegis_proto::api::InstanceStatus;

use super::instances::{InstanceHandle, Instances};

/// How long a stopped auto-remove instance is kept for its client to read how it ended. A
/// client reconnecting to a restarted daemon finds it again within a few seconds.
pub const GRACE: Duration = Duration::from_secs(30);

/// Deletes `handle`'s instance once it has been stopped for [`GRACE`]; ends when the instance
/// is deleted by anyone or the daemon is going away.
pub async fn watch(instances: Weak<Instances>, handle: InstanceHandle) {
    let mut views = handle.watch();
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
    let Some(instances) = instances.upgrade() else {
        return;
    };
    if instances.find(handle.id.as_str()).is_none() {
        return;
    }
    match instances.delete(&handle).await {
        Ok(()) => tracing::info!(
            instance = %handle.id,
            grace_secs = GRACE.as_secs(),
            "auto-remove instance deleted after it stayed stopped"
        ),
        Err(e) => tracing::warn!(instance = %handle.id, error = %e, "cannot auto-remove instance"),
    }
}
