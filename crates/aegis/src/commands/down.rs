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

/// True while process `pid` runs: it exists (signal 0 checks without sending anything) and is
/// not a zombie waiting for its parent to reap it (a daemon started by a test harness is that
/// harness's child; one started by `aegis up` is reaped by init).
fn alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if matches!(
        nix::sys::signal::kill(Pid::from_raw(raw), None),
        Err(Errno::ESRCH)
    ) {
        return false;
    }
    !is_zombie(pid)
}

/// Reads the state letter of `/proc/<pid>/stat` (after the parenthesised command name).
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, rest) = stat.rsplit_once(')')?;
            rest.split_whitespace().next().map(|state| state == "Z")
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_not_a_zombie() {
        assert!(alive(std::process::id()));
        assert!(!alive(u32::MAX));
    }
}
