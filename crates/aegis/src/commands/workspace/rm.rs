//! `aegis workspace rm NAME`.

use std::io::Write;

use anyhow::Context;

use crate::args::parse_workspace_name;
use crate::exit::Exit;
use crate::Ctx;

/// `aegis workspace rm`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Name of the workspace
    #[arg(value_name = "NAME", value_parser = parse_workspace_name)]
    pub name: String,
}

/// Runs `aegis workspace rm`.
pub async fn run(args: Args, ctx: &Ctx) -> anyhow::Result<Exit> {
    let deleted = ctx
        .client
        .delete_workspace(&args.name)
        .await
        .with_context(|| format!("cannot remove workspace {}", args.name))?;
    writeln!(std::io::stdout(), "workspace {} removed", deleted.deleted)?;
    Ok(Exit::Success)
}
