//! `aegis status`: what the daemon reports about itself.

use std::io::Write;

use anyhow::Context;

use crate::exit::Exit;
use crate::printer::print_json;
use crate::term::Paint;
use crate::Ctx;

/// `aegis status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the daemon's status object as JSON
    #[arg(long)]
    pub json: bool,
}

/// Runs `aegis status`.
pub async fn run(args: Args, ctx: &Ctx) -> anyhow::Result<Exit> {
    let status = ctx
        .client
        .status()
        .await
        .context("cannot get the daemon's status")?;
    let mut out = std::io::stdout().lock();
    if args.json {
        print_json(&mut out, &status)?;
        return Ok(Exit::Success);
    }
    let counts = ["starting", "running", "paused", "stopped"]
        .iter()
        .map(|state| {
            format!(
                "{} {state}",
                status.instances.get(*state).copied().unwrap_or(0)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let capabilities: Vec<&str> = status
        .capabilities
        .iter()
        .filter(|(_, on)| **on)
        .map(|(name, _)| name.as_str())
        .collect();
    writeln!(
        out,
        "aegisd {} is {} (pid {})",
        status.version,
        ctx.term.out(Paint::Green, &status.status),
        status.pid
    )?;
    writeln!(out, "socket:       {}", ctx.client.socket().display())?;
    writeln!(out, "backend:      {}", status.backend)?;
    writeln!(
        out,
        "accelerator:  {} ({})",
        status.accelerator, status.accelerator_reason
    )?;
    writeln!(out, "instances:    {counts}")?;
    writeln!(
        out,
        "snapshots:    {:.1} MiB",
        status.snapshot_bytes as f64 / (1024.0 * 1024.0)
    )?;
    if !capabilities.is_empty() {
        writeln!(out, "capabilities: {}", capabilities.join(", "))?;
    }
    Ok(Exit::Success)
}
