//! `aegis up`: start `aegisd` in the background and return once it answers.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use aegis_client::HOME_ENV;

use crate::exit::Exit;
use crate::report::Hinted;
use crate::{locate, Ctx};

/// The daemon's variable naming the E2B listener's address (`aegisd::e2b::LISTEN_ENV`).
const E2B_LISTEN_ENV: &str = "AEGIS_E2B_LISTEN";
/// How long a fresh daemon gets to answer `GET /v1/status`. It opens its registry and re-attaches
/// to running VMs before it listens; neither boots anything, so this is generous.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Between two probes of the socket.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Deadline of one probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Lines of `aegisd.log` shown when the daemon does not come up.
const LOG_TAIL_LINES: usize = 20;

/// `aegis up`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also serve the E2B-compatible API on ADDR (loopback, such as 127.0.0.1:3000): point
    /// E2B_API_URL and E2B_SANDBOX_URL at http://ADDR and set E2B_API_KEY to a key from
    /// `aegis e2b key create`
    #[arg(long, value_name = "ADDR")]
    pub e2b: Option<std::net::SocketAddr>,
}

/// Runs `aegis up`.
pub async fn run(args: Args, ctx: &Ctx) -> anyhow::Result<Exit> {
    let e2b = |status: &aegis_proto::api::Status| match &status.e2b {
        Some(addr) => format!("; E2B API on http://{addr}"),
        None => String::new(),
    };
    match start_daemon(ctx, args.e2b).await? {
        Running::Already(status) => {
            if let Some(wanted) = args.e2b {
                if status.e2b.as_deref() != Some(wanted.to_string().as_str()) {
                    return Err(Hinted {
                        message: format!(
                            "aegisd is already running (pid {}) without the E2B API on {wanted}",
                            status.pid
                        ),
                        hint: format!(
                            "`aegis down`, then `aegis up --e2b {wanted}` (running VMs are kept)"
                        ),
                    }
                    .into());
                }
            }
            println!(
                "aegisd {} is already running (pid {}){}",
                status.version,
                status.pid,
                e2b(&status)
            );
        }
        Running::Started(status) => println!(
            "aegisd {} started (pid {}){}; log: {}",
            status.version,
            status.pid,
            e2b(&status),
            ctx.home.join("aegisd.log").display()
        ),
    }
    Ok(Exit::Success)
}

/// What [`ensure_running`] found or did.
#[derive(Debug)]
pub enum Running {
    /// The daemon was running.
    Already(aegis_proto::api::Status),
    /// It was started now.
    Started(aegis_proto::api::Status),
}

/// Starts `aegisd` in the background unless it runs, and returns once it answers. Prints
/// nothing (`aegis mcp` owns its stdout).
///
/// # Errors
/// When it cannot be found or started, or does not answer, with its log's last lines.
pub async fn ensure_running(ctx: &Ctx) -> anyhow::Result<Running> {
    start_daemon(ctx, None).await
}

/// [`ensure_running`], the daemon started with the E2B listener on `e2b` when given.
async fn start_daemon(ctx: &Ctx, e2b: Option<std::net::SocketAddr>) -> anyhow::Result<Running> {
    match ctx.client.status().await {
        Ok(status) => return Ok(Running::Already(status)),
        Err(e) if e.is_not_running() => {}
        Err(e) => return Err(e).context("cannot ask whether aegisd is running"),
    }

    let aegisd = locate::aegisd().ok_or_else(|| Hinted {
        message: "cannot find the aegisd binary next to aegis or in PATH".to_owned(),
        hint: format!(
            "run `scripts/build.sh` (it builds aegis and aegisd side by side), or set {}",
            locate::DAEMON_ENV
        ),
    })?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&ctx.home)
        .with_context(|| format!("cannot create {}", ctx.home.display()))?;
    let log_path = ctx.home.join("aegisd.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let log_err = log
        .try_clone()
        .with_context(|| format!("cannot open {}", log_path.display()))?;

    let mut command = Command::new(&aegisd);
    if let Some(addr) = e2b {
        command.env(E2B_LISTEN_ENV, addr.to_string());
    }
    command
        .env(HOME_ENV, &ctx.home)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    // SAFETY: `setsid` is async-signal-safe and touches no memory of this process; it only makes
    // the child a session leader, so the daemon does not get the terminal's SIGINT/SIGHUP and
    // outlives this command.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid()?;
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {}", aegisd.display()))?;

    let probe = ctx.client.clone().with_timeout(PROBE_TIMEOUT);
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(status) = probe.status().await {
            return Ok(Running::Started(status));
        }
        if let Ok(Some(exit)) = child.try_wait() {
            return Err(not_started(
                format!("aegisd exited during start-up ({exit})"),
                &log_path,
                log_start,
            ));
        }
        if Instant::now() >= deadline {
            // It is ours and useless: do not leave a half-started daemon behind.
            let _ = child.kill();
            let _ = child.wait();
            return Err(not_started(
                format!(
                    "aegisd did not answer within {} s and was stopped",
                    START_TIMEOUT.as_secs()
                ),
                &log_path,
                log_start,
            ));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn not_started(message: String, log_path: &Path, log_start: u64) -> anyhow::Error {
    let tail = log_tail(log_path, log_start, LOG_TAIL_LINES);
    let message = if tail.is_empty() {
        message
    } else {
        format!(
            "{message}; last lines of {}:\n{}",
            log_path.display(),
            tail.lines()
                .map(|l| format!("  | {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    };
    Hinted {
        message,
        hint: "run `aegis doctor` to check the machine".to_owned(),
    }
    .into()
}

/// The last `lines` lines written to `path` after byte `from`.
pub fn log_tail(path: &Path, from: u64, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        if file.seek(SeekFrom::Start(from)).is_ok() {
            let mut bytes = Vec::new();
            let _ = file.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
