//! `aegis secret delete KEY`.

use std::io::Write;

use anyhow::Context;

use crate::args::parse_secret_key;
use crate::exit::Exit;
use crate::Ctx;

/// `aegis secret delete`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Name of the secret
    #[arg(value_name = "KEY", value_parser = parse_secret_key)]
    pub key: String,
}

/// Runs `aegis secret delete`.
pub async fn run(args: Args, ctx: &Ctx) -> anyhow::Result<Exit> {
    let deleted = ctx
        .client
        .delete_secret(&args.key)
        .await
        .with_context(|| format!("cannot delete secret {}", args.key))?;
    writeln!(std::io::stdout(), "secret {} deleted", deleted.deleted)?;
    Ok(Exit::Success)
}
