//! `aegis workspace …`: the named workspaces, kept by Aegis until removed and shared by every
//! instance started with `--workspace NAME`. An instance's own workspace volume needs no command:
//! it is created with the instance and deleted with it.

pub mod create;
pub mod list;
pub mod rm;

use crate::exit::Exit;
use crate::Ctx;

/// `aegis workspace <subcommand>`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List the named workspaces, their size on disk and the instances that use them
    #[command(visible_alias = "ls")]
    List(list::Args),
    /// Create a named workspace (`--workspace NAME` also creates a directory one on first use)
    Create(create::Args),
    /// Remove a named workspace and its files (refused while an instance uses it)
    #[command(visible_alias = "delete")]
    Rm(rm::Args),
}

/// Runs `aegis workspace <subcommand>`.
pub async fn run(command: Command, ctx: &Ctx) -> anyhow::Result<Exit> {
    match command {
        Command::List(args) => list::run(args, ctx).await,
        Command::Create(args) => create::run(args, ctx).await,
        Command::Rm(args) => rm::run(args, ctx).await,
    }
}
