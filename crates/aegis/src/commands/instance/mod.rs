//! `aegis instance …`: create, list, inspect and drive instances. One file per subcommand;
//! `action.rs` serves the six lifecycle actions, which differ only in the route they call.

pub mod action;
pub mod delete;
pub mod expose;
pub mod info;
pub mod list;
pub mod secrets;
pub mod start;
pub mod timeout;

use aegis_client::InstanceAction;

use crate::exit::Exit;
use crate::Ctx;

/// `aegis instance <subcommand>`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create an instance running CMD (`-- CMD...`), or boot a stopped one (`<ID|HANDLE>`)
    Start(Box<start::Args>),
    /// List instances
    #[command(visible_alias = "ls")]
    List(list::Args),
    /// Show one instance
    Info(info::Args),
    /// Stop an instance's VM; exec or traffic wakes it again
    Stop(action::Args),
    /// Stop an instance and keep it stopped until `aegis instance start`
    Disable(action::Args),
    /// Stop and boot an instance again
    Restart(action::Args),
    /// Freeze an instance's VM, keeping its memory
    Pause(action::Args),
    /// Unfreeze a paused instance
    Resume(action::Args),
    /// Expose a guest port through the router: `[PUBLIC:]GUEST[/tcp|/http]`
    Expose(expose::ExposeArgs),
    /// Stop exposing a guest port
    Unexpose(expose::UnexposeArgs),
    /// Choose the secrets injected at the instance's next boot (KEY..., '*' for all, or --none)
    Secrets(secrets::Args),
    /// Give an instance a new lifetime counted from now (`30m`), or none
    Timeout(timeout::Args),
    /// Stop an instance and remove it with its disk and logs
    #[command(visible_alias = "rm")]
    Delete(delete::Args),
}

/// Runs `aegis instance <subcommand>`.
pub async fn run(command: Command, ctx: &Ctx) -> anyhow::Result<Exit> {
    match command {
        Command::Start(args) => start::run(*args, ctx).await,
        Command::List(args) => list::run(args, ctx).await,
        Command::Info(args) => info::run(args, ctx).await,
        Command::Stop(args) => action::run(args, InstanceAction::Stop, ctx).await,
        Command::Disable(args) => action::run(args, InstanceAction::Disable, ctx).await,
        Command::Restart(args) => action::run(args, InstanceAction::Restart, ctx).await,
        Command::Pause(args) => action::run(args, InstanceAction::Pause, ctx).await,
        Command::Resume(args) => action::run(args, InstanceAction::Resume, ctx).await,
        Command::Delete(args) => delete::run(args, ctx).await,
        Command::Timeout(args) => timeout::run(args, ctx).await,
        Command::Secrets(args) => secrets::run(args, ctx).await,
        Command::Expose(args) => expose::expose(args, ctx).await,
        Command::Unexpose(args) => expose::unexpose(args, ctx).await,
    }
}
