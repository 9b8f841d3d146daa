//! `aegis process …`: the processes started in an instance through Aegis (`aegis exec`, with
//! `-d` in the background): list them, wait for one, signal it, feed its stdin, attach to its
//! terminal. Their output (a terminal's excepted) is
//! in the instance's log: `aegis logs ID --exec EXEC_ID [--follow]` replays it and follows it
//! until the process ends.

use std::io::Write;

use anyhow::Context;
use time::OffsetDateTime;

use aegis_proto::api::{ExecInfo, ExecState};

use crate::display::{age, quote_command, table, truncate};
use crate::exit::Exit;
use crate::printer::print_json;
use crate::Ctx;

/// `aegis process <subcommand>`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List the processes started in an instance: id, state, exit code, age, command
    #[command(visible_alias = "ls")]
    List(ListArgs),
    /// Wait until a process ends; exits with its exit code
    Wait(Target),
    /// Send a signal to a process (its whole process group)
    Kill(KillArgs),
    /// Stream this shell's stdin to a process started with `-i -d`
    Input(InputArgs),
    /// Attach this terminal to a process started with `-t` (`-d -t`, or after leaving it)
    Attach(Target),
}

/// An instance.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Instance id (inst-…) or handle
    #[arg(value_name = "ID|HANDLE")]
    pub target: String,
    /// Print them as a JSON array
    #[arg(long)]
    pub json: bool,
}

/// A process of an instance.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// Instance id (inst-…) or handle
    #[arg(value_name = "ID|HANDLE")]
    pub target: String,
    /// The process's exec id (printed by `aegis exec -d`, listed by `aegis process list`)
    #[arg(value_name = "EXEC_ID")]
    pub exec_id: String,
}

/// `aegis process kill`.
#[derive(Debug, clap::Args)]
pub struct KillArgs {
    #[command(flatten)]
    pub process: Target,
    /// The signal: a name (TERM, KILL, INT, HUP…) or a number
    #[arg(long, short = 's', default_value = "KILL")]
    pub signal: String,
}

/// `aegis process input`.
#[derive(Debug, clap::Args)]
pub struct InputArgs {
    #[command(flatten)]
    pub process: Target,
    /// Leave the process's stdin open after this input, for a later `aegis process input`
    #[arg(long)]
    pub keep_open: bool,
}

/// Runs `aegis process <subcommand>`.
pub async fn run(command: Command, ctx: &Ctx) -> anyhow::Result<Exit> {
    match command {
        Command::List(args) => list(args, ctx).await,
        Command::Wait(p) => {
            let info = ctx
                .client
                .wait_exec(&p.target, &p.exec_id)
                .await
                .with_context(|| format!("cannot wait for {} in {:?}", p.exec_id, p.target))?;
            super::terminal::exit_of(&info)
        }
        Command::Kill(args) => {
            let p = args.process;
            ctx.client
                .signal_exec(&p.target, &p.exec_id, &args.signal)
                .await
                .with_context(|| format!("cannot signal {} in {:?}", p.exec_id, p.target))?;
            Ok(Exit::Success)
        }
        Command::Attach(p) => {
            let stream = ctx
                .client
                .attach_terminal(&p.target, &p.exec_id)
                .await
                .with_context(|| {
                    format!(
                        "cannot attach to the terminal of {} in {:?}",
                        p.exec_id, p.target
                    )
                })?;
            // The terminal has the size its last client gave it; this one may differ.
            let _ = ctx
                .client
                .resize_terminal(&p.target, &p.exec_id, super::terminal::local_size())
                .await;
            super::terminal::session(&ctx.client, &p.target, &p.exec_id, stream, true, None).await
        }
        Command::Input(args) => {
            let p = args.process;
            ctx.client
                .exec_stdin(&p.target, &p.exec_id, tokio::io::stdin(), args.keep_open)
                .await
                .with_context(|| {
                    format!("cannot feed the stdin of {} in {:?}", p.exec_id, p.target)
                })?;
            Ok(Exit::Success)
        }
    }
}

async fn list(args: ListArgs, ctx: &Ctx) -> anyhow::Result<Exit> {
    let execs = ctx
        .client
        .execs(&args.target)
        .await
        .with_context(|| format!("cannot list the processes of instance {:?}", args.target))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        print_json(&mut out, &execs)?;
        return Ok(Exit::Success);
    }
    let now = OffsetDateTime::now_utc();
    let rows: Vec<Vec<String>> = execs.iter().map(|e| row(e, now)).collect();
    let text = table(
        &["EXEC ID", "STATE", "EXIT", "STARTED", "COMMAND"],
        &rows,
        |_, cell| cell.to_owned(),
    );
    out.write_all(text.as_bytes())?;
    Ok(Exit::Success)
}

fn row(e: &ExecInfo, now: OffsetDateTime) -> Vec<String> {
    let state = match e.state {
        ExecState::Running if e.detached => "running (detached)",
        ExecState::Running => "running",
        ExecState::Exited if e.timed_out => "timed out",
        ExecState::Exited => "exited",
        ExecState::Lost => "lost",
    };
    vec![
        e.exec_id.clone(),
        state.to_owned(),
        e.exit_code.map(|c| c.to_string()).unwrap_or_default(),
        age(&e.started_at, now),
        truncate(&quote_command(&e.command), 60),
    ]
}
