//! `aegis instance timeout <ID|HANDLE> <DURATION|none>`: gives an instance a new lifetime
//! counted from now, or removes it.

use std::io::Write;

use anyhow::Context;

use aegis_proto::api::{OnTimeout, SetTimeout};

use crate::args::{parse_on_timeout, parse_timeout};
use crate::display::label;
use crate::exit::Exit;
use crate::Ctx;

/// `aegis instance timeout`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Instance id (inst-…) or handle
    #[arg(value_name = "ID|HANDLE")]
    pub target: String,
    /// The new lifetime from now (`30m`, `2h`, seconds), or `none` to remove it
    #[arg(value_name = "DURATION|none", value_parser = parse_lifetime)]
    pub timeout: Lifetime,
    /// What happens when it runs out [default: what it was, else delete]
    #[arg(long, value_name = "delete|stop", value_parser = parse_on_timeout)]
    pub on_timeout: Option<OnTimeout>,
}

/// A lifetime in seconds, or none.
#[derive(Debug, Clone, Copy)]
pub struct Lifetime(Option<u64>);

fn parse_lifetime(s: &str) -> Result<Lifetime, String> {
    if s == "none" {
        return Ok(Lifetime(None));
    }
    parse_timeout(s).map(|secs| Lifetime(Some(secs)))
}

/// Runs `aegis instance timeout`.
pub async fn run(args: Args, ctx: &Ctx) -> anyhow::Result<Exit> {
    let body = SetTimeout {
        timeout_secs: args.timeout.0,
        on_timeout: args.on_timeout,
    };
    let instance = ctx
        .client
        .set_timeout(&args.target, &body)
        .await
        .with_context(|| format!("cannot set the lifetime of instance {:?}", args.target))?;
    let mut out = std::io::stdout();
    match (
        &instance.expires_at,
        instance.on_timeout.unwrap_or_default(),
    ) {
        (Some(at), OnTimeout::Delete) => writeln!(out, "{}: deleted at {at}", label(&instance))?,
        (Some(at), OnTimeout::Stop) => writeln!(out, "{}: stopped at {at}", label(&instance))?,
        (None, _) => writeln!(out, "{}: no lifetime", label(&instance))?,
    }
    Ok(Exit::Success)
}
