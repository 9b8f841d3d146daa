//! `aegis down`: ask the daemon to stop its VMs cleanly and exit, and wait until it is gone.

use std::time::{Duration, Instant};

use anyhow::Context;
use nix::errno::Errno;
use nix::unistd::Pid;

use crate::exit::Exit;
use crate::report::Hinted;
use crate::Ctx;

/// How long the daemon gets to stop every VM and exit. Each VM gets a graceful stop first
/// (the guest's processes get SIGTERM, then SIGKILL after a grace period), so allow for several.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(100);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `aegis down`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `aegis down`.
pub async fn run(_args: Args, ctx: &Ctx) -> anyhow::Result<Exit> {
    let pid = match ctx.client.status().await {
        Ok(status) => status.pid,
        Err(e) if e.is_not_running() => {
            println!("aegisd is not running");
            return Ok(Exit::Success);
        }
        Err(e) => return Err(e).context("cannot reach aegisd"),
    };
    ctx.client
        .shutdown()
        .await
        .context("cannot ask aegisd to shut down")?;

    let probe = ctx.client.clone().with_timeout(PROBE_TIMEOUT);
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        let socket_gone = matches!(probe.status().await, Err(e) if e.is_not_running());
        if socket_gone && !alive(pid) {
            println!("aegisd stopped");
            return Ok(Exit::Success);
        }
        if Instant::now() >= deadline {
            return Err(Hinted {
                message: format!(
                    "aegisd (pid {pid}) did not stop within {} s",
                    STOP_TIMEOUT.as_secs()
                ),
                hint: format!(
                    "see {}; `kill {pid}` ends it (its VMs keep running and the next aegisd \
                     re-attaches to them)",
                    ctx.home.join("aegisd.log").display()
                ),
            }
            .into());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// True while process `pid` exists (signal 0 checks without sending anything).
fn alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    !matches!(
        nix::sys::signal::kill(Pid::from_raw(pid), None),
        Err(Errno::ESRCH)
    )
}
