//! `aegis instance stop|disable|restart|pause|resume <ID|HANDLE>`.

use std::io::Write;

use anyhow::Context;

use aegis_client::InstanceAction;

use crate::display::label;
use crate::exit::Exit;
use crate::Ctx;

/// The instance to act on.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Instance id (inst-…) or handle
    #[arg(value_name = "ID|HANDLE")]
    pub target: String,
}

/// Runs one lifecycle action and prints the instance's new state.
pub async fn run(args: Args, action: InstanceAction, ctx: &Ctx) -> anyhow::Result<Exit> {
    let instance = ctx
        .client
        .instance_action(&args.target, action)
        .await
        .with_context(|| format!("cannot {} instance {:?}", action.as_str(), args.target))?;
    writeln!(
        std::io::stdout(),
        "{}: {}{}",
        label(&instance),
        instance.state,
        if instance.enabled { "" } else { " (disabled)" }
    )?;
    Ok(Exit::Success)
}
