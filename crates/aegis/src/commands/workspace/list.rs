//! `aegis workspace list`.

use std::io::Write;

use anyhow::Context;
use time::OffsetDateTime;

use crate::display::{age, table};
use crate::exit::Exit;
use crate::printer::print_json;
use crate::Ctx;

/// `aegis workspace list`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the workspaces as a JSON array
    #[arg(long)]
    pub json: bool,
}

/// Runs `aegis workspace list`.
pub async fn run(args: Args, ctx: &Ctx) -> anyhow::Result<Exit> {
    let workspaces = ctx
        .client
        .list_workspaces()
        .await
        .context("cannot list workspaces")?;
    let mut out = std::io::stdout().lock();
    if args.json {
        print_json(&mut out, &workspaces)?;
        return Ok(Exit::Success);
    }
    let now = OffsetDateTime::now_utc();
    let rows: Vec<Vec<String>> = workspaces
        .iter()
        .map(|w| {
            let kind = match w.size_mb {
                Some(mb) => format!("{} ({mb} MiB)", w.kind),
                None => w.kind.clone(),
            };
            vec![
                w.name.clone(),
                kind,
                format!("{:.1} MiB", w.used_bytes as f64 / (1024.0 * 1024.0)),
                age(&w.created_at, now),
                if w.instances.is_empty() {
                    "-".to_owned()
                } else {
                    w.instances.join(", ")
                },
            ]
        })
        .collect();
    let text = table(
        &["NAME", "KIND", "USED", "CREATED", "INSTANCES"],
        &rows,
        |_, cell| cell.to_owned(),
    );
    out.write_all(text.as_bytes())?;
    Ok(Exit::Success)
}
