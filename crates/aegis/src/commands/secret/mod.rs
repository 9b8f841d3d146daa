//! `aegis secret …`: the daemon's encrypted secret store. Values go in (`set`), names and dates
//! come out (`list`); nothing ever prints a value. Instances get secrets only when asked
//! (`--secret KEY` or `--secret '*'` on `run` and `instance start`, `aegis instance secrets`).

pub mod delete;
pub mod list;
pub mod set;

use crate::exit::Exit;
use crate::Ctx;

/// `aegis secret <subcommand>`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create or replace a secret; the value comes from stdin or a hidden prompt when omitted
    Set(set::Args),
    /// List secrets: names and dates, never values
    #[command(visible_alias = "ls")]
    List(list::Args),
    /// Delete a secret (instances that ask for it fail to start until it is set again)
    #[command(visible_alias = "rm")]
    Delete(delete::Args),
}

/// Runs `aegis secret <subcommand>`.
pub async fn run(command: Command, ctx: &Ctx) -> anyhow::Result<Exit> {
    match command {
        Command::Set(args) => set::run(args, ctx).await,
        Command::List(args) => list::run(args, ctx).await,
        Command::Delete(args) => delete::run(args, ctx).await,
    }
}
