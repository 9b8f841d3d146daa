//! `aegis instance start`: create an instance running `-- CMD...` (or, with `--image` alone, the
//! image's Entrypoint + Cmd), or boot a stopped one named by id or handle.

use std::io::Write;

use anyhow::Context;

use aegis_client::InstanceAction;
use aegis_proto::api::InstanceStatus;

use crate::args::InstanceOptions;
use crate::display::label;
use crate::exit::Exit;
use crate::Ctx;

/// `aegis instance start`.
#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("what")
        .required(true)
        .multiple(true)
        .args(["target", "command", "image", "kit", "name"])
))]
pub struct Args {
    /// A stopped instance to boot (id or handle); give `-- CMD...` instead to create one. With
    /// --secret, its secrets are replaced first
    #[arg(
        value_name = "ID|HANDLE",
        conflicts_with_all = [
            "command", "name", "image", "entrypoint", "kit", "env", "memory", "vcpus", "workdir", "expose", "idle_pause",
            "idle_stop", "egress", "snapshot"
        ]
    )]
    pub target: Option<String>,
    #[command(flatten)]
    pub options: InstanceOptions,
    /// The command to run as the instance's primary process [default with --image: the
    /// image's Entrypoint + Cmd]
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Runs `aegis instance start`.
pub async fn run(args: Args, ctx: &Ctx) -> anyhow::Result<Exit> {
    let mut out = std::io::stdout();
    if let Some(target) = args.target {
        if !args.options.secrets.is_empty() {
            // Resolved at each boot: stored first, so this start (or the next) injects them.
            let before = ctx
                .client
                .set_instance_secrets(&target, &args.options.secrets)
                .await
                .with_context(|| format!("cannot set the secrets of instance {target:?}"))?;
            if before.state != InstanceStatus::Stopped {
                eprintln!(
                    "note: {} is {}: it keeps the secrets it booted with; `aegis instance restart \
                     {target}` applies the new ones",
                    label(&before),
                    before.state
                );
            }
        }
        let instance = ctx
            .client
            .instance_action(&target, InstanceAction::Start)
            .await
            .with_context(|| format!("cannot start instance {target:?}"))?;
        writeln!(out, "{}: {}", label(&instance), instance.state)?;
        return Ok(Exit::Success);
    }
    let request = args.options.into_request(args.command);
    let created = ctx
        .client
        .create_instance(&request)
        .await
        .context("cannot create the instance")?;
    let instance = &created.instance;
    if created.restarted {
        writeln!(
            out,
            "{}: {} (existing instance started again with its stored configuration)",
            label(instance),
            instance.state
        )?;
    } else {
        writeln!(out, "{}: {}", label(instance), instance.state)?;
    }
    for e in &instance.endpoints {
        writeln!(
            out,
            "  {} -> guest port {} ({})",
            e.url, e.guest_port, e.protocol
        )?;
    }
    Ok(Exit::Success)
}
