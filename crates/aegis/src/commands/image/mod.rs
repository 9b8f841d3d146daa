//! `aegis image …`: pull, import, list, inspect and remove the images instances boot from. One
//! file per subcommand; the progress display of pull and import is in `crate::progress`.

pub mod import;
pub mod inspect;
pub mod list;
pub mod prune;
pub mod pull;
pub mod rm;

use crate::exit::Exit;
use crate::Ctx;

/// `aegis image <subcommand>`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Download an image from a registry into the local store
    Pull(pull::Args),
    /// Store an image from a file: an OCI layout (directory or tar), a `docker save` archive,
    /// or with `--rootfs` a root filesystem tarball
    Import(import::Args),
    /// List stored images
    #[command(visible_alias = "ls")]
    List(list::Args),
    /// Show one stored image: digest, layers and run-time settings
    Inspect(inspect::Args),
    /// Remove an image reference (its data stays until `aegis image prune`)
    #[command(visible_alias = "remove")]
    Rm(rm::Args),
    /// Delete the data of images that no reference and no instance uses
    Prune(prune::Args),
}

/// Runs `aegis image <subcommand>`.
pub async fn run(command: Command, ctx: &Ctx) -> anyhow::Result<Exit> {
    match command {
        Command::Pull(args) => pull::run(args, ctx).await,
        Command::Import(args) => import::run(args, ctx).await,
        Command::List(args) => list::run(args, ctx).await,
        Command::Inspect(args) => inspect::run(args, ctx).await,
        Command::Rm(args) => rm::run(args, ctx).await,
        Command::Prune(args) => prune::run(args, ctx).await,
    }
}
