//! `aegis image inspect REF`.

use std::io::Write;

use anyhow::Context;
use indicatif::HumanBytes;
use time::OffsetDateTime;

use aegis_proto::api::ImageDetail;

use crate::display::{age, quote_command};
use crate::exit::Exit;
use crate::printer::print_json;
use crate::Ctx;

/// `aegis image inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image reference as stored (see `aegis image list`)
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Print the image as JSON
    #[arg(long)]
    pub json: bool,
}

/// Runs `aegis image inspect`.
pub async fn run(args: Args, ctx: &Ctx) -> anyhow::Result<Exit> {
    let image = ctx
        .client
        .image(&args.reference)
        .await
        .with_context(|| format!("cannot inspect image {}", args.reference))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        print_json(&mut out, &image)?;
    } else {
        out.write_all(render(&image, OffsetDateTime::now_utc()).as_bytes())?;
    }
    Ok(Exit::Success)
}

fn render(image: &ImageDetail, now: OffsetDateTime) -> String {
    let s = &image.summary;
    let c = &image.config;
    let mut rows: Vec<(&str, String)> = vec![
        ("reference", s.reference.clone()),
        ("digest", s.digest.clone()),
        ("platform", s.platform.clone()),
        ("size", HumanBytes(s.size).to_string()),
        (
            "created",
            s.created
                .as_deref()
                .map_or_else(|| "-".to_owned(), |t| format!("{t} ({})", age(t, now))),
        ),
        (
            "root disk",
            if s.base_image_built {
                "built".to_owned()
            } else {
                "built on first start".to_owned()
            },
        ),
        ("entrypoint", or_dash(&quote_command(&c.entrypoint))),
        ("cmd", or_dash(&quote_command(&c.cmd))),
        (
            "workdir",
            c.working_dir.clone().unwrap_or_else(|| "-".to_owned()),
        ),
        ("user", c.user.clone().unwrap_or_else(|| "-".to_owned())),
    ];
    rows.extend(c.env.iter().map(|e| ("env", e.clone())));
    rows.extend(image.layer_digests.iter().map(|d| ("layer", d.clone())));
    rows.iter()
        .map(|(key, value)| format!("{:<12}{value}\n", format!("{key}:")))
        .collect()
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}
