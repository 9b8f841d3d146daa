//! `aegis kit remove NAME`.

use std::io::Write;

use anyhow::Context;

use crate::exit::Exit;
use crate::Ctx;

/// `aegis kit remove`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The kit's name
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// Runs `aegis kit remove`.
pub async fn run(args: Args, ctx: &Ctx) -> anyhow::Result<Exit> {
    let removed = ctx
        .client
        .remove_kit(&args.name)
        .await
        .with_context(|| format!("cannot remove kit {:?}", args.name))?;
    writeln!(std::io::stdout(), "kit {} removed", removed.deleted)?;
    Ok(Exit::Success)
}
