//! `aegis image prune`: delete blobs and root disks that no reference and no instance uses.

use std::io::Write;

use anyhow::Context;
use indicatif::HumanBytes;

use crate::exit::Exit;
use crate::printer::print_json;
use crate::Ctx;

/// `aegis image prune`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print what was removed as JSON
    #[arg(long)]
    pub json: bool,
}

/// Runs `aegis image prune`.
pub async fn run(args: Args, ctx: &Ctx) -> anyhow::Result<Exit> {
    let report = ctx
        .client
        .prune_images()
        .await
        .context("cannot prune images")?;
    let mut out = std::io::stdout().lock();
    if args.json {
        print_json(&mut out, &report)?;
        return Ok(Exit::Success);
    }
    writeln!(
        out,
        "removed {} images, {} blobs and {} root disks; reclaimed {}",
        report.removed_images.len(),
        report.removed_blobs,
        report.removed_base_images,
        HumanBytes(report.reclaimed_bytes)
    )?;
    Ok(Exit::Success)
}
