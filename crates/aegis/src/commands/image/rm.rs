//! `aegis image rm REF`: forget a reference. Its blobs and root disk stay until `aegis image
//! prune`, so instances created from it keep booting.

use std::io::Write;

use anyhow::Context;

use crate::exit::Exit;
use crate::progress::short_digest;
use crate::Ctx;

/// `aegis image rm`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image reference as stored (see `aegis image list`)
    #[arg(value_name = "REF")]
    pub reference: String,
}

/// Runs `aegis image rm`.
pub async fn run(args: Args, ctx: &Ctx) -> anyhow::Result<Exit> {
    let removed = ctx
        .client
        .remove_image(&args.reference)
        .await
        .with_context(|| format!("cannot remove image {}", args.reference))?;
    writeln!(
        std::io::stdout(),
        "removed {} ({}); `aegis image prune` frees its space",
        removed.removed,
        short_digest(&removed.digest)
    )?;
    Ok(Exit::Success)
}
