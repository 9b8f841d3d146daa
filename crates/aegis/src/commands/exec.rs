//! `aegis exec <ID|HANDLE> -- CMD...`: run a command in an instance, stream its output to stdout
//! and stderr, and exit with its exit code.

use anyhow::Context;

use aegis_proto::api::{ExecEvent, ExecRequest};

use crate::args::{env_map, parse_env, EnvVar};
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
    let request = ExecRequest {
        command: args.command,
        env: env_map(args.env),
        workdir: args.workdir,
    };
    let target = args.target;
    let mut events = ctx
        .client
        .exec(&target, &request)
        .await
        .with_context(|| format!("cannot exec in instance {target:?}"))?;
    let mut printer = LogPrinter::new(Show::Unchanged, ctx.term);
    while let Some(event) = events.next().await {
        match event.with_context(|| format!("exec in instance {target:?} broke off"))? {
            ExecEvent::Started { .. } => {}
            ExecEvent::Output(entry) => printer.print(&entry)?,
            ExecEvent::Done { exit_code, .. } => return Ok(Exit::from_guest(exit_code)),
            ExecEvent::Error { error } => {
                return Err(Hinted {
                    message: format!("exec in instance {target:?} failed: {error}"),
                    hint: format!("run `aegis logs {target}` for the instance's side"),
                }
                .into())
            }
        }
    }
    Err(Hinted {
        message: format!("the exec stream of instance {target:?} ended without an exit code"),
        hint: format!("run `aegis logs {target}` for the instance's side"),
    }
    .into())
}
