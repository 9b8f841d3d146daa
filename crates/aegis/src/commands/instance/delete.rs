//! `aegis instance delete <ID|HANDLE>`.

use std::io::Write;

use anyhow::Context;

use crate::exit::Exit;
use crate::Ctx;

/// `aegis instance delete`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Instance id (inst-…) or handle
    #[arg(value_name = "ID|HANDLE")]
    pub target: String,
}

/// Runs `aegis instance delete`.
pub async fn run(args: Args, ctx: &Ctx) -> anyhow::Result<Exit> {
    let deleted = ctx
        .client
        .delete_instance(&args.target)
        .await
        .with_context(|| format!("cannot delete instance {:?}", args.target))?;
    writeln!(std::io::stdout(), "deleted {}", deleted.deleted)?;
    Ok(Exit::Success)
}
