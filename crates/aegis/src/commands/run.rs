//! `aegis run -- CMD...`: create an instance, print its primary process's output while it runs,
//! exit with its exit code and delete the instance. With `-i` this process's stdin becomes the
//! command's; with `-t` the command runs on a terminal in the guest that this one is attached
//! to (raw with `-i`, as `docker run -it`; see `terminal`). Ctrl-C (or SIGTERM) deletes the
//! instance,
//! which stops its VM, and exits 130. A failed boot prints the instance's system log lines and
//! deletes it too. The instance is created with `auto_remove`, so that the daemon deletes it
//! by itself when this process cannot (killed, or the daemon went away and came back).
//!
//! It never hangs on a broken stream: when the log stream ends or breaks, the instance's state
//! decides: stopped means done; otherwise the stream is reopened where it left off, and after
//! [`MAX_REOPENS`] the state is polled until it reaches `stopped`.

use std::time::{Duration, Instant};

use anyhow::Context;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::signal::unix::{signal, Signal, SignalKind};

use aegis_client::{ClientError, LogsQuery, StatusCode};
use aegis_proto::api::{CreateInstance, Instance, InstanceStatus, LogSource};

use super::terminal::{self, Owner};
use crate::args::InstanceOptions;
use crate::exit::Exit;
use crate::printer::{LogPrinter, Show};
use crate::report::Hinted;
use crate::term::Paint;
use crate::Ctx;

/// Times the log stream is reopened while the instance still runs before falling back to
/// polling its state (output is then no longer printed).
const MAX_REOPENS: u32 = 5;
/// Between two polls of the instance's state.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How long the daemon may stay unreachable before `aegis run` gives up. A restarted daemon
/// answers again within a second or two.
const DAEMON_LOST_AFTER: Duration = Duration::from_secs(60);
/// Deadline of the final delete, which first stops the VM.
const DELETE_TIMEOUT: Duration = Duration::from_secs(60);

/// `aegis run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub options: InstanceOptions,
    /// Keep stdin open: stream it to the command (its end closes the command's stdin)
    #[arg(long, short = 'i')]
    pub interactive: bool,
    /// Run the command on a terminal in the guest (with -i, this terminal goes in raw mode and
    /// every key goes to it, as with `docker run -it`); its output is not in the logs then
    #[arg(long, short = 't')]
    pub tty: bool,
    /// The command and its arguments [default with --kit: the kit's command; with --image: the
    /// image's Entrypoint + Cmd]
    #[arg(
        value_name = "CMD",
        required_unless_present_any = ["image", "kit", "entrypoint"],
        num_args = 1..,
        trailing_var_arg = true
    )]
    pub command: Vec<String>,
}

/// Runs `aegis run`.
pub async fn run(args: Args, ctx: &Ctx) -> anyhow::Result<Exit> {
    let mut signals = Signals::install()?;
    if let Some(name) = &args.options.name {
        refuse_existing(ctx, name).await?;
    }
    let request = CreateInstance {
        auto_remove: true,
        stdin: args.interactive && !args.tty,
        tty: args.tty.then(terminal::local_size),
        ..args.options.into_request(args.command)
    };

    let create = ctx.client.create_instance(&request);
    tokio::pin!(create);
    let created = tokio::select! {
        created = &mut create => created.context("cannot create the instance")?,
        () = signals.recv() => {
            // The request is with the daemon already: wait for its answer, then undo it.
            if let Ok(created) = create.await {
                delete(ctx, &created.instance.id).await;
            }
            return Ok(Exit::Interrupted);
        }
    };
    let id = created.instance.id;
    if args.tty {
        if let Some(exit) = on_terminal(ctx, &id, args.interactive, &mut signals).await? {
            return Ok(exit);
        }
    }
    // Streamed as it is read; the daemon wakes the guest and waits for the command first. What
    // the command leaves unread when it exits is dropped, as with a pipe.
    let feeding = (args.interactive && !args.tty).then(|| {
        let client = ctx.client.clone();
        let id = id.clone();
        tokio::spawn(async move { client.primary_stdin(&id, tokio::io::stdin()).await })
    });

    let outcome = tokio::select! {
        outcome = follow_until_stopped(ctx, &id) => outcome,
        () = signals.recv() => {
            eprintln!("{} stopping and deleting {id}", ctx.term.err(Paint::Yellow, "interrupted:"));
            delete(ctx, &id).await;
            return Ok(Exit::Interrupted);
        }
    };
    if let Some(feeding) = feeding {
        feeding.abort();
    }
    match outcome {
        Ok(Instance {
            exit_code: Some(code),
            ..
        }) => {
            delete(ctx, &id).await;
            Ok(Exit::from_guest(code))
        }
        // Aegis failed (boot failure, crashed VM): the instance goes too, so its system log
        // lines, which say why, are printed first.
        Ok(instance) => {
            print_system_lines(ctx, &id).await;
            delete(ctx, &id).await;
            Err(Hinted {
                message: format!(
                    "instance {id} stopped without an exit code: {}",
                    instance
                        .reason
                        .as_deref()
                        .unwrap_or("the daemon gave no reason")
                ),
                hint: "run `aegis doctor` to check the set-up; `aegis instance start` keeps a \
                       failed instance and its logs for a closer look"
                    .to_owned(),
            }
            .into())
        }
        Err(e) => {
            delete(ctx, &id).await;
            Err(e)
        }
    }
}

/// Attaches this terminal to the command's until the command ends; then its exit code comes
/// from following the instance as without `-t`. `Some` when `aegis run` ends here: interrupted
/// while the VM booted, or told to leave by SIGTERM or SIGHUP (the instance is deleted then).
///
/// # Errors
/// When the terminal cannot be attached (the boot failed, say): the instance is deleted, its
/// system log lines printed first.
async fn on_terminal(
    ctx: &Ctx,
    id: &str,
    input: bool,
    signals: &mut Signals,
) -> anyhow::Result<Option<Exit>> {
    // Waits for the boot: the daemon wakes the instance before it attaches.
    let stream = tokio::select! {
        stream = ctx.client.attach_primary_terminal(id) => stream,
        () = signals.recv() => {
            delete(ctx, id).await;
            return Ok(Some(Exit::Interrupted));
        }
    };
    let stream = match stream {
        Ok(stream) => stream,
        Err(e) => {
            print_system_lines(ctx, id).await;
            delete(ctx, id).await;
            return Err(e).context("cannot attach to the command's terminal");
        }
    };
    let left = terminal::attached(&ctx.client, id, Owner::Primary, stream, input).await;
    match left {
        Ok(None) => Ok(None),
        Ok(Some(signal)) => {
            delete(ctx, id).await;
            Ok(Some(terminal::left_on(signal)))
        }
        Err(e) => {
            delete(ctx, id).await;
            Err(e)
        }
    }
}

/// `aegis run` always creates: with the handle of an existing stopped instance the daemon would
/// start that one instead, and deleting it at the end would destroy someone's instance.
async fn refuse_existing(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    match ctx.client.instance(name).await {
        Ok(existing) => Err(Hinted {
            message: format!(
                "an instance with handle {name:?} already exists ({}, {})",
                existing.id, existing.state
            ),
            hint: format!(
                "`aegis run` creates a new instance: pick another --name, or use `aegis exec {name} \
                 -- …`"
            ),
        }
        .into()),
        Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Ok(()),
        Err(e) => Err(e).context("cannot check whether the handle is free"),
    }
}

/// Prints the primary process's output until the instance stops; returns it as last seen.
async fn follow_until_stopped(ctx: &Ctx, id: &str) -> anyhow::Result<Instance> {
    let mut printer = LogPrinter::new(Show::ServerOnly, ctx.term);
    // The newest entry printed, to resume a reopened stream without repeating lines.
    let mut last: Option<(OffsetDateTime, String)> = None;
    let mut reopens = 0;
    loop {
        if reopens <= MAX_REOPENS {
            let query = LogsQuery {
                follow: true,
                since: last.as_ref().map(|(_, text)| text.clone()),
                ..LogsQuery::default()
            };
            if let Ok(mut entries) = ctx.client.logs(id, &query).await {
                let mut resuming = last.is_some();
                while let Some(Ok(entry)) = entries.next().await {
                    let ts = OffsetDateTime::parse(&entry.ts, &Rfc3339).ok();
                    if resuming {
                        if let (Some(ts), Some((seen, _))) = (ts, &last) {
                            if ts <= *seen {
                                continue;
                            }
                        }
                        resuming = false;
                    }
                    if entry.source == LogSource::Server {
                        printer.print(&entry)?;
                    }
                    if let Some(ts) = ts {
                        last = Some((ts, entry.ts.clone()));
                    }
                }
            }
        } else {
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        // The stream ended, normally because the instance stopped; its state says.
        let instance = instance_patiently(ctx, id).await?;
        if instance.state == InstanceStatus::Stopped {
            return Ok(instance);
        }
        reopens += 1;
    }
}

/// `GET` the instance, retrying while the daemon is unreachable (it may be restarting).
async fn instance_patiently(ctx: &Ctx, id: &str) -> anyhow::Result<Instance> {
    let since = Instant::now();
    loop {
        match ctx.client.instance(id).await {
            Ok(instance) => return Ok(instance),
            Err(e @ ClientError::Api { .. }) => {
                return Err(e).with_context(|| format!("cannot follow instance {id}"))
            }
            Err(e) if since.elapsed() >= DAEMON_LOST_AFTER => {
                return Err(e).with_context(|| {
                    format!(
                        "lost contact with aegisd for {} s while instance {id} ran",
                        DAEMON_LOST_AFTER.as_secs()
                    )
                })
            }
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

/// How many of a failed instance's last system log lines are printed before it is deleted.
const SYSTEM_LINES_SHOWN: usize = 20;

/// Prints the instance's last system log lines (why it stopped) to stderr, from its last 200
/// entries.
async fn print_system_lines(ctx: &Ctx, id: &str) {
    let query = LogsQuery {
        tail: Some(200),
        ..LogsQuery::default()
    };
    let Ok(mut entries) = ctx.client.logs(id, &query).await else {
        return;
    };
    let mut lines = Vec::new();
    while let Some(Ok(entry)) = entries.next().await {
        if entry.source == LogSource::System {
            lines.push(entry.line);
        }
    }
    let skip = lines.len().saturating_sub(SYSTEM_LINES_SHOWN);
    for line in &lines[skip..] {
        eprintln!("{} {line}", ctx.term.err(Paint::Yellow, "system:"));
    }
}

/// Deletes the instance (stopping its VM). When that fails the daemon still removes it once it
/// has stopped (the request asked for `auto_remove`).
async fn delete(ctx: &Ctx, id: &str) {
    let client = ctx.client.clone().with_timeout(DELETE_TIMEOUT);
    match client.delete_instance(id).await {
        Ok(_) => {}
        Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => {}
        Err(e) => eprintln!(
            "{} cannot delete instance {id}: {e}; aegisd removes it by itself once it has \
             stopped",
            ctx.term.err(Paint::Yellow, "warning:")
        ),
    }
}

/// SIGINT and SIGTERM, caught so the instance can be deleted before exiting.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).context("cannot catch SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot catch SIGTERM")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
