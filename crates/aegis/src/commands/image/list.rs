//! `aegis image list`.

use std::io::Write;

use anyhow::Context;
use indicatif::HumanBytes;
use time::OffsetDateTime;

use aegis_proto::api::ImageSummary;

use crate::display::{age, table};
use crate::exit::Exit;
use crate::printer::print_json;
use crate::progress::short_digest;
use crate::Ctx;

/// `aegis image list`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the images as a JSON array
    #[arg(long)]
    pub json: bool,
}

/// Runs `aegis image list`.
pub async fn run(args: Args, ctx: &Ctx) -> anyhow::Result<Exit> {
    let images = ctx
        .client
        .list_images()
        .await
        .context("cannot list images")?;
    let mut out = std::io::stdout().lock();
    if args.json {
        print_json(&mut out, &images)?;
        return Ok(Exit::Success);
    }
    let now = OffsetDateTime::now_utc();
    let rows: Vec<Vec<String>> = images.iter().map(|i| row(i, now)).collect();
    let text = table(
        &[
            "REFERENCE",
            "DIGEST",
            "SIZE",
            "LAYERS",
            "PLATFORM",
            "CREATED",
        ],
        &rows,
        |_, cell| cell.to_owned(),
    );
    out.write_all(text.as_bytes())?;
    Ok(Exit::Success)
}

fn row(i: &ImageSummary, now: OffsetDateTime) -> Vec<String> {
    vec![
        i.reference.clone(),
        short_digest(&i.digest).to_owned(),
        HumanBytes(i.size).to_string(),
        i.layers.to_string(),
        i.platform.clone(),
        i.created
            .as_deref()
            .map_or_else(|| "-".to_owned(), |c| age(c, now)),
    ]
}
