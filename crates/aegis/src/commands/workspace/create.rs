//! `aegis workspace create NAME [--volume [--size SIZE]]`.

use std::io::Write;

use aegis_proto::api::CreateWorkspace;
use anyhow::Context;

use crate::args::{parse_size_mib, parse_workspace_name};
use crate::exit::Exit;
use crate::Ctx;

/// `aegis workspace create`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Name of the workspace (letters, digits, '.', '_', '-')
    #[arg(value_name = "NAME", value_parser = parse_workspace_name)]
    pub name: String,
    /// An ext4 volume instead of a shared directory: faster for heavy I/O, one instance at a time
    #[arg(long)]
    pub volume: bool,
    /// Capacity of the volume: 512M, 8G, ... [default: 8G]
    #[arg(long, value_name = "SIZE", value_parser = parse_size_mib, requires = "volume")]
    pub size: Option<u64>,
}

/// Runs `aegis workspace create`.
pub async fn run(args: Args, ctx: &Ctx) -> anyhow::Result<Exit> {
    let req = CreateWorkspace {
        name: args.name.clone(),
        kind: Some(if args.volume { "volume" } else { "directory" }.to_owned()),
        size_mb: args.size,
    };
    let created = ctx
        .client
        .create_workspace(&req)
        .await
        .with_context(|| format!("cannot create workspace {}", args.name))?;
    writeln!(
        std::io::stdout(),
        "workspace {} created ({}, {})",
        created.name,
        created.kind,
        created.path
    )?;
    Ok(Exit::Success)
}
