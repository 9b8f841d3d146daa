//! `aegis image pull REF`: download an image through the daemon, with progress.

use std::io::Write;

use anyhow::Context;
use indicatif::HumanBytes;

use crate::exit::Exit;
use crate::progress::{self, short_digest, Display};
use crate::Ctx;

/// `aegis image pull`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image reference: `[REGISTRY/]REPOSITORY[:TAG|@DIGEST]` (e.g. `alpine:3.20`)
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Print the daemon's progress events as JSON lines instead of bars
    #[arg(long)]
    pub json: bool,
}

/// Runs `aegis image pull`.
pub async fn run(args: Args, ctx: &Ctx) -> anyhow::Result<Exit> {
    let what = format!("pull of {}", args.reference);
    let stream = ctx
        .client
        .pull_image(&args.reference)
        .await
        .with_context(|| format!("cannot pull {}", args.reference))?;
    let display = if args.json {
        Display::Json
    } else {
        Display::Human
    };
    let finished = progress::follow(stream, display, ctx.term, &what)
        .await
        .with_context(|| format!("cannot pull {}", args.reference))?;
    if args.json {
        return Ok(Exit::Success);
    }
    let mut out = std::io::stdout().lock();
    for image in &finished.images {
        if finished.cached {
            writeln!(
                out,
                "{} is up to date ({}, served from the local cache)",
                image.reference,
                short_digest(&image.digest)
            )?;
        } else {
            writeln!(
                out,
                "pulled {} ({}, {} layers, {})",
                image.reference,
                short_digest(&image.digest),
                image.layers,
                HumanBytes(image.size)
            )?;
        }
    }
    Ok(Exit::Success)
}
