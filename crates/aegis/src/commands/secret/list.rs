//! `aegis secret list`: names and dates, never values.

use std::io::Write;

use anyhow::Context;
use time::OffsetDateTime;

use crate::display::{age, table};
use crate::exit::Exit;
use crate::printer::print_json;
use crate::Ctx;

/// `aegis secret list`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the secrets as a JSON array of `{name, created_at, updated_at}`
    #[arg(long)]
    pub json: bool,
}

/// Runs `aegis secret list`.
pub async fn run(args: Args, ctx: &Ctx) -> anyhow::Result<Exit> {
    let secrets = ctx
        .client
        .list_secrets()
        .await
        .context("cannot list secrets")?;
    let mut out = std::io::stdout().lock();
    if args.json {
        print_json(&mut out, &secrets)?;
        return Ok(Exit::Success);
    }
    let now = OffsetDateTime::now_utc();
    let rows: Vec<Vec<String>> = secrets
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                age(&s.created_at, now),
                age(&s.updated_at, now),
            ]
        })
        .collect();
    let text = table(&["NAME", "CREATED", "UPDATED"], &rows, |_, cell| {
        cell.to_owned()
    });
    out.write_all(text.as_bytes())?;
    Ok(Exit::Success)
}
