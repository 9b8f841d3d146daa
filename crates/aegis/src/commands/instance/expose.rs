//! `aegis instance expose` / `unexpose`: add or remove an exposed port at runtime.

use std::io::Write;

use anyhow::Context;

use aegis_proto::api::ExposeRequest;

use crate::args::parse_expose;
use crate::exit::Exit;
use crate::Ctx;

/// `aegis instance expose`.
#[derive(Debug, clap::Args)]
pub struct ExposeArgs {
    /// Instance id (inst-…) or handle
    #[arg(value_name = "ID|HANDLE")]
    pub target: String,
    /// `[PUBLIC:]GUEST[/tcp|/http]`; a free public port is chosen when none is given
    #[arg(value_name = "[PUBLIC:]GUEST[/PROTO]", value_parser = parse_expose)]
    pub mapping: ExposeRequest,
}

/// `aegis instance unexpose`.
#[derive(Debug, clap::Args)]
pub struct UnexposeArgs {
    /// Instance id (inst-…) or handle
    #[arg(value_name = "ID|HANDLE")]
    pub target: String,
    /// The guest port to stop exposing
    #[arg(value_name = "GUEST_PORT")]
    pub guest_port: u16,
}

/// Runs `aegis instance expose`.
pub async fn expose(args: ExposeArgs, ctx: &Ctx) -> anyhow::Result<Exit> {
    let endpoint = ctx
        .client
        .expose(&args.target, &args.mapping)
        .await
        .with_context(|| {
            format!(
                "cannot expose port {} of {:?}",
                args.mapping.port, args.target
            )
        })?;
    writeln!(
        std::io::stdout(),
        "{} -> guest port {} ({})",
        endpoint.url,
        endpoint.guest_port,
        endpoint.protocol
    )?;
    Ok(Exit::Success)
}

/// Runs `aegis instance unexpose`.
pub async fn unexpose(args: UnexposeArgs, ctx: &Ctx) -> anyhow::Result<Exit> {
    ctx.client
        .unexpose(&args.target, args.guest_port)
        .await
        .with_context(|| {
            format!(
                "cannot unexpose port {} of {:?}",
                args.guest_port, args.target
            )
        })?;
    Ok(Exit::Success)
}
