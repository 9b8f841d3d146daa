//! `aegis logs <ID|HANDLE>`: print an instance's log lines to stdout and stderr by stream, or as
//! the daemon's NDJSON with `--json`.

use std::io::Write;

use anyhow::Context;

use aegis_client::LogsQuery;

use crate::args::parse_since;
use crate::exit::Exit;
use crate::printer::{LogPrinter, Show};
use crate::Ctx;

/// `aegis logs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Instance id (inst-…) or handle
    #[arg(value_name = "ID|HANDLE")]
    pub target: String,
    /// Keep printing new lines until the instance stops
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only the last N lines (before following)
    #[arg(long, short = 'n', value_name = "N")]
    pub tail: Option<u64>,
    /// Only lines since this time: RFC 3339 (2024-05-01T10:00:00Z) or a duration ago (30s, 10m, 2h, 1d)
    #[arg(long, value_name = "TIME", value_parser = parse_since)]
    pub since: Option<String>,
    /// Only the lines of this exec
    #[arg(long = "exec", value_name = "EXEC_ID")]
    pub exec_id: Option<String>,
    /// Print the log entries as NDJSON, one JSON object per line
    #[arg(long)]
    pub json: bool,
}

/// Runs `aegis logs`.
pub async fn run(args: Args, ctx: &Ctx) -> anyhow::Result<Exit> {
    let show = if args.exec_id.is_some() {
        Show::Unchanged
    } else {
        Show::Labelled
    };
    let query = LogsQuery {
        follow: args.follow,
        since: args.since,
        tail: args.tail,
        exec_id: args.exec_id,
    };
    let target = args.target;
    let mut entries = ctx
        .client
        .logs(&target, &query)
        .await
        .with_context(|| format!("cannot read the logs of instance {target:?}"))?;
    let mut printer = LogPrinter::new(show, ctx.term);
    if args.json {
        while let Some(line) = entries.next_raw().await {
            let line =
                line.with_context(|| format!("the logs of instance {target:?} broke off"))?;
            let mut out = std::io::stdout().lock();
            out.write_all(&line)?;
            out.write_all(b"\n")?;
            out.flush()?;
        }
    } else {
        while let Some(entry) = entries.next().await {
            let entry =
                entry.with_context(|| format!("the logs of instance {target:?} broke off"))?;
            printer.print(&entry)?;
        }
    }
    Ok(Exit::Success)
}
