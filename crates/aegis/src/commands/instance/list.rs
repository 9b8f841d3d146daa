//! `aegis instance list`.

use std::io::Write;

use anyhow::Context;
use time::OffsetDateTime;

use aegis_proto::api::{Instance, InstanceStatus};

use crate::args::parse_state;
use crate::display::{age, quote_command, table, truncate};
use crate::exit::Exit;
use crate::printer::print_json;
use crate::term::Paint;
use crate::Ctx;

/// Widest COMMAND cell; longer commands are cut (see `aegis instance info` for all of it).
const COMMAND_WIDTH: usize = 40;

/// `aegis instance list`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only instances in this state (starting, running, paused, stopped)
    #[arg(long, value_name = "STATE", value_parser = parse_state)]
    pub state: Option<InstanceStatus>,
    /// Print the instances as a JSON array
    #[arg(long)]
    pub json: bool,
}

/// Runs `aegis instance list`.
pub async fn run(args: Args, ctx: &Ctx) -> anyhow::Result<Exit> {
    let instances = ctx
        .client
        .list_instances(args.state)
        .await
        .context("cannot list instances")?;
    let mut out = std::io::stdout().lock();
    if args.json {
        print_json(&mut out, &instances)?;
        return Ok(Exit::Success);
    }
    let now = OffsetDateTime::now_utc();
    let rows: Vec<Vec<String>> = instances.iter().map(|i| row(i, now)).collect();
    let text = table(
        &["ID", "HANDLE", "STATE", "IMAGE", "COMMAND", "CREATED"],
        &rows,
        |column, cell| match (column, InstanceStatus::parse(cell)) {
            (2, Some(InstanceStatus::Running)) => ctx.term.out(Paint::Green, cell),
            (2, Some(InstanceStatus::Paused | InstanceStatus::Starting)) => {
                ctx.term.out(Paint::Yellow, cell)
            }
            (2, Some(InstanceStatus::Stopped)) => ctx.term.out(Paint::Dim, cell),
            _ => cell.to_owned(),
        },
    );
    out.write_all(text.as_bytes())?;
    Ok(Exit::Success)
}

fn row(i: &Instance, now: OffsetDateTime) -> Vec<String> {
    vec![
        i.id.clone(),
        i.handle.clone().unwrap_or_else(|| "-".to_owned()),
        i.state.to_string(),
        i.image_ref.clone(),
        truncate(&quote_command(&i.command), COMMAND_WIDTH),
        age(&i.created_at, now),
    ]
}
