//! `aegis instance secrets <ID|HANDLE> KEY...`: choose the secrets an instance gets. They are
//! resolved at each boot: a stopped instance gets them at its next start; a running one keeps
//! what it booted with until it restarts.

use std::io::Write;

use anyhow::Context;

use aegis_proto::api::InstanceStatus;

use crate::args::parse_secret_selector;
use crate::display::label;
use crate::exit::Exit;
use crate::Ctx;

/// `aegis instance secrets`.
#[derive(Debug, clap::Args)]
#[command(
    group(clap::ArgGroup::new("which").required(true).args(["keys", "none"])),
    override_usage = "aegis instance secrets <ID|HANDLE> <KEY...|--none>"
)]
pub struct Args {
    /// Instance id (inst-…) or handle
    #[arg(value_name = "ID|HANDLE")]
    pub target: String,
    /// Secrets to inject as environment variables, or '*' for all (replaces the current set)
    #[arg(value_name = "KEY", value_parser = parse_secret_selector)]
    pub keys: Vec<String>,
    /// Inject no secrets
    #[arg(long, conflicts_with = "keys")]
    pub none: bool,
}

/// Runs `aegis instance secrets`.
pub async fn run(args: Args, ctx: &Ctx) -> anyhow::Result<Exit> {
    let instance = ctx
        .client
        .set_instance_secrets(&args.target, &args.keys)
        .await
        .with_context(|| format!("cannot set the secrets of instance {:?}", args.target))?;
    let shown = if instance.secret_keys.is_empty() {
        "none".to_owned()
    } else {
        instance.secret_keys.join(", ")
    };
    let mut out = std::io::stdout();
    writeln!(out, "{}: secrets {shown}", label(&instance))?;
    if instance.state != InstanceStatus::Stopped {
        writeln!(
            out,
            "the running VM keeps the secrets it booted with; `aegis instance restart {}` applies \
             the change",
            args.target
        )?;
    }
    Ok(Exit::Success)
}
