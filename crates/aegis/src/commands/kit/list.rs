//! `aegis kit list`.

use std::io::Write;

use anyhow::Context;

use crate::display::{table, truncate};
use crate::exit::Exit;
use crate::printer::print_json;
use crate::Ctx;

/// `aegis kit list`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the kits as a JSON array of `{manifest, path, instances}`
    #[arg(long)]
    pub json: bool,
}

/// Runs `aegis kit list`.
pub async fn run(args: Args, ctx: &Ctx) -> anyhow::Result<Exit> {
    let kits = ctx.client.list_kits().await.context("cannot list kits")?;
    let mut out = std::io::stdout().lock();
    if args.json {
        print_json(&mut out, &kits)?;
        return Ok(Exit::Success);
    }
    if kits.is_empty() {
        writeln!(out, "no kits installed; `aegis kit install PATH` adds one")?;
        return Ok(Exit::Success);
    }
    let rows: Vec<Vec<String>> = kits
        .iter()
        .map(|k| {
            vec![
                k.manifest.name.clone(),
                k.manifest.version.clone(),
                k.instances.len().to_string(),
                truncate(&k.manifest.description, 60),
            ]
        })
        .collect();
    let text = table(
        &["NAME", "VERSION", "INSTANCES", "DESCRIPTION"],
        &rows,
        |_, cell| cell.to_owned(),
    );
    out.write_all(text.as_bytes())?;
    Ok(Exit::Success)
}
