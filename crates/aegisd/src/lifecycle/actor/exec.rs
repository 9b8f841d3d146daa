//! `Command::Exec`: wakes the guest like any request, then starts the process from a task of
//! its own, so a wake that has to boot never holds the mailbox.

use super::Actor;
use crate::lifecycle::command::{reply_channel, LifecycleError, Reply};
use crate::lifecycle::exec::{self, ExecSpec, ExecStarted};

impl Actor {
    pub(super) async fn exec(&mut self, spec: ExecSpec, reply: Reply<ExecStarted>) {
        let (woken, link) = reply_channel();
        self.wake(woken).await;
        let id = self.id();
        tokio::spawn(async move {
            let started = match link.await {
                Ok(Ok(link)) => exec::spawn(&id, &link, spec).await,
                Ok(Err(e)) => Err(e),
                Err(_) => Err(LifecycleError::Gone { id }),
            };
            let _ = reply.send(started);
        });
    }
}
