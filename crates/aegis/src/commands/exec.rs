//! `aegis exec <ID|HANDLE> -- CMD...`: run a command in an instance, stream its output to stdout
//! and stderr, and exit with its exit code. With `-i` this process's stdin becomes the
//! command's, streamed as it is read (never held in memory whole); with `--timeout` the guest
//! kills the command when it runs too long, and `aegis exec` exits 124 as `timeout(1)` does.
//! With `-t` the command runs on a terminal in the guest (see `terminal`). With `-d` it starts
//! the command in the background and prints its exec id (see `aegis process`).

use anyhow::Context;
use tokio::io::AsyncWriteExt;

use aegis_proto::api::{ExecEvent, ExecRequest};

use super::terminal;
use crate::args::{env_map, parse_env, parse_timeout, EnvVar};
use crate::exit::Exit;
use crate::printer::{LogPrinter, Show};
use crate::report::Hinted;
use crate::Ctx;

/// `aegis exec`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Instance id (inst-…) or handle
    #[arg(value_name = "ID|HANDLE")]
    pub target: String,
    /// Environment variable for the command; `--env KEY` alone copies KEY from this shell
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<EnvVar>,
    /// Working directory inside the guest
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Keep stdin open: stream it to the command (its end closes the command's stdin)
    #[arg(long, short = 'i')]
    pub interactive: bool,
    /// Kill the command after this long (`30`, `90s`, `5m`); exits 124 then
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    pub timeout: Option<u64>,
    /// Start it in the background and print its exec id (with -i, feed it later with
    /// `aegis process input`; with -t, attach later with `aegis process attach`)
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Run it on a terminal in the guest (with -i, this terminal goes in raw mode and every key
    /// goes to it, as with `docker exec -it`)
    #[arg(long, short = 't')]
    pub tty: bool,
    /// The command and its arguments
    #[arg(
        value_name = "CMD",
        required = true,
        num_args = 1..,
        trailing_var_arg = true
    )]
    pub command: Vec<String>,
}

/// Runs `aegis exec`.
pub async fn run(args: Args, ctx: &Ctx) -> anyhow::Result<Exit> {
    let timeout = args.timeout;
    let request = ExecRequest {
        command: args.command,
        env: env_map(args.env),
        workdir: args.workdir,
        stdin: args.interactive,
        timeout_secs: timeout,
        detach: args.detach,
        tty: args.tty.then(terminal::local_size),
    };
    let target = args.target;
    let failed = || format!("cannot exec in instance {target:?}");
    if args.tty && !args.detach {
        let stream = ctx
            .client
            .exec_terminal(&target, &request)
            .await
            .with_context(failed)?;
        let exec_id = stream
            .exec_id
            .clone()
            .context("the daemon did not name the exec of the terminal")?;
        return terminal::session(
            &ctx.client,
            &target,
            &exec_id,
            stream,
            args.interactive,
            timeout,
        )
        .await;
    }
    if args.detach {
        let info = ctx
            .client
            .exec_detached(&target, &request)
            .await
            .with_context(failed)?;
        println!("{}", info.exec_id);
        return Ok(Exit::Success);
    }
    let (mut events, feeding) = if args.interactive {
        let (events, mut input) = ctx
            .client
            .exec_with_stdin(&target, &request)
            .await
            .with_context(failed)?;
        // Copied as it is read: the daemon and the guest pass back-pressure along, so a large
        // input never sits in memory here.
        let feeding = tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let copied = tokio::io::copy(&mut stdin, &mut input).await;
            let _ = input.shutdown().await;
            copied
        });
        (events, Some(feeding))
    } else {
        let events = ctx
            .client
            .exec(&target, &request)
            .await
            .with_context(failed)?;
        (events, None)
    };
    let mut printer = LogPrinter::new(Show::Unchanged, ctx.term);
    let result = loop {
        let Some(event) = events.next().await else {
            break Err(Hinted {
                message: format!(
                    "the exec stream of instance {target:?} ended without an exit code"
                ),
                hint: format!("run `aegis logs {target}` for the instance's side"),
            }
            .into());
        };
        match event.with_context(|| format!("exec in instance {target:?} broke off"))? {
            ExecEvent::Started { .. } => {}
            ExecEvent::Output(entry) => printer.print(&entry)?,
            ExecEvent::Done {
                timed_out: true, ..
            } => {
                eprintln!(
                    "aegis: the command ran past its timeout of {} s and was killed",
                    timeout.unwrap_or_default()
                );
                break Ok(Exit::Guest(terminal::TIMED_OUT));
            }
            ExecEvent::Done { exit_code, .. } => break Ok(Exit::from_guest(exit_code)),
            ExecEvent::Error { error } => {
                break Err(Hinted {
                    message: format!("exec in instance {target:?} failed: {error}"),
                    hint: format!("run `aegis logs {target}` for the instance's side"),
                }
                .into())
            }
        }
    };
    // The command is done: input it did not read has nowhere to go.
    if let Some(feeding) = feeding {
        feeding.abort();
    }
    result
}
