//! `aegis kit …`: the installed kits, declarative presets for instances (`--kit NAME` on `run`
//! and `instance start`). Manifests are validated by the daemon, which names the offending
//! field of an invalid one.

pub mod info;
pub mod install;
pub mod list;
pub mod remove;

use crate::exit::Exit;
use crate::Ctx;

/// `aegis kit <subcommand>`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List the installed kits
    #[command(visible_alias = "ls")]
    List(list::Args),
    /// Show a kit's manifest: image, defaults, secrets, ports, resources, egress, daemons
    Info(info::Args),
    /// Validate a manifest (YAML or JSON) and install it into ~/.aegis/kits
    Install(install::Args),
    /// Remove an installed kit (instances created from it keep their configuration)
    #[command(visible_alias = "rm")]
    Remove(remove::Args),
}

/// Runs `aegis kit <subcommand>`.
pub async fn run(command: Command, ctx: &Ctx) -> anyhow::Result<Exit> {
    match command {
        Command::List(args) => list::run(args, ctx).await,
        Command::Info(args) => info::run(args, ctx).await,
        Command::Install(args) => install::run(args, ctx).await,
        Command::Remove(args) => remove::run(args, ctx).await,
    }
}
