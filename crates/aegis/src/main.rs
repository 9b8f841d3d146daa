//! `aegis`, the command line of Aegis: parses the command line, runs one command against the
//! daemon (`aegisd`) and maps the outcome to an exit code. Errors are printed here, once, as
//! `error: <chain>` followed by `hint:` lines.

mod args;
mod commands;
mod display;
mod exit;
mod locate;
mod printer;
mod progress;
mod report;
mod term;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use aegis_client::Client;

use crate::exit::{Exit, EXIT_CODES_HELP};
use crate::term::Term;

/// Run commands in microVMs.
#[derive(Debug, Parser)]
#[command(
    name = "aegis",
    version,
    about = "Run commands in microVMs",
    long_about = "Run commands in microVMs.\n\nThe daemon `aegisd` owns the VMs; `aegis up` starts \
                  it. Data lives in $AEGIS_HOME (default ~/.aegis).",
    after_help = EXIT_CODES_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Start the daemon in the background (no-op when it runs)
    Up(commands::up::Args),
    /// Stop the daemon and all its VMs cleanly
    Down(commands::down::Args),
    /// Show the daemon's version, backend, accelerator and instance counts
    Status(commands::status::Args),
    /// Check this machine for what Aegis needs, and say how to fix what is missing
    Doctor(commands::doctor::Args),
    /// Manage instances (VMs running a command)
    #[command(subcommand)]
    Instance(commands::instance::Command),
    /// Manage images (pull, import, list, inspect, rm, prune)
    #[command(subcommand)]
    Image(commands::image::Command),
    /// Manage kits: declarative presets for instances (`--kit NAME`)
    #[command(subcommand)]
    Kit(commands::kit::Command),
    /// Manage secrets: encrypted values injected into instances that ask for them
    #[command(subcommand)]
    Secret(commands::secret::Command),
    /// Manage named workspaces: persistent /workspace directories or volumes shared by instances
    #[command(subcommand)]
    Workspace(commands::workspace::Command),
    /// Run a command in a running instance (waking it if it sleeps)
    Exec(commands::exec::Args),
    /// Print an instance's logs
    Logs(commands::logs::Args),
    /// Run a command in a new instance, print its output, delete the instance
    #[command(after_help = EXIT_CODES_HELP)]
    Run(commands::run::Args),
}

/// What every command gets: where the daemon lives and how to print.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// `$AEGIS_HOME`.
    pub home: PathBuf,
    /// A client of the daemon of `home`.
    pub client: Client,
    /// Colour decisions.
    pub term: Term,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let term = Term::detect();
    let home = aegis_client::home_from_env();
    let ctx = Ctx {
        client: Client::new(aegis_client::socket_in(&home)),
        home,
        term,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            report::error(
                &anyhow::Error::new(e).context("cannot start the async runtime"),
                term,
            );
            return Exit::AegisFailure.into();
        }
    };
    let outcome = runtime.block_on(dispatch(cli.command, &ctx));
    match outcome {
        Ok(exit) => exit.into(),
        // A closed pipe (`aegis logs x | head`) is the reader's choice, not a failure.
        Err(e) if report::is_broken_pipe(&e) => Exit::Success.into(),
        Err(e) => {
            report::error(&e, term);
            Exit::AegisFailure.into()
        }
    }
}

async fn dispatch(command: Command, ctx: &Ctx) -> anyhow::Result<Exit> {
    match command {
        Command::Up(args) => commands::up::run(args, ctx).await,
        Command::Down(args) => commands::down::run(args, ctx).await,
        Command::Status(args) => commands::status::run(args, ctx).await,
        Command::Doctor(args) => commands::doctor::run(args, ctx).await,
        Command::Instance(command) => commands::instance::run(command, ctx).await,
        Command::Kit(command) => commands::kit::run(command, ctx).await,
        Command::Image(command) => commands::image::run(command, ctx).await,
        Command::Secret(command) => commands::secret::run(command, ctx).await,
        Command::Workspace(command) => commands::workspace::run(command, ctx).await,
        Command::Exec(args) => commands::exec::run(args, ctx).await,
        Command::Logs(args) => commands::logs::run(args, ctx).await,
        Command::Run(args) => commands::run::run(args, ctx).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(argv: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("aegis").chain(argv.iter().copied()))
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn usage_errors_exit_2() {
        let bad: &[&[&str]] = &[
            &["run"],
            &["run", "--env", "1X=2", "--", "true"],
            &["run", "--memory", "lots", "--", "true"],
            &["run", "--vcpus", "0", "--", "true"],
            &["run", "--name", "-bad", "--", "true"],
            &["run", "--name", "inst-1", "--", "true"],
            &["exec", "web"],
            &["logs", "web", "--since", "yesterday"],
            &["logs", "web", "--tail", "-1"],
            &["instance", "list", "--state", "sleeping"],
            &["instance", "start"],
            &["instance", "start", "web", "--", "true"],
            &["instance", "start", "web", "--memory", "512"],
            &["instance", "info"],
            &["instance", "secrets", "web"],
            &["instance", "secrets", "web", "A", "--none"],
            &["instance", "secrets", "web", "A-B"],
            &["secret", "set"],
            &["secret", "set", "1BAD", "v"],
            &["secret", "set", "*", "v"],
            &["secret", "delete"],
            &["run", "--secret", "A-B", "--", "true"],
            &["image", "pull"],
            &["image", "import", "rootfs.tar", "--rootfs"],
            &["image", "inspect"],
            &["image", "rm"],
            &["kit", "info"],
            &["kit", "install"],
            &["kit", "remove"],
            &["instance", "start", "web", "--kit", "k"],
            &["frobnicate"],
        ];
        for argv in bad {
            let err = parse(argv).expect_err(&format!("{argv:?} should be refused"));
            assert_eq!(err.exit_code(), 2, "{argv:?}: {err}");
        }
    }

    #[test]
    fn commands_take_trailing_argv() {
        let cli = parse(&["exec", "web", "--", "sh", "-c", "echo --env"]).unwrap();
        let Command::Exec(args) = cli.command else {
            panic!("not exec")
        };
        assert_eq!(args.target, "web");
        assert_eq!(args.command, ["sh", "-c", "echo --env"]);

        let cli = parse(&["run", "--env", "A=1", "-e", "B=2", "--", "ls", "-l"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.command, ["ls", "-l"]);
        assert_eq!(args.options.env.len(), 2);

        let cli = parse(&["instance", "start", "--name", "web", "--", "sleep", "9"]).unwrap();
        let Command::Instance(commands::instance::Command::Start(args)) = cli.command else {
            panic!("not instance start")
        };
        assert_eq!(args.target, None);
        assert_eq!(args.command, ["sleep", "9"]);

        // With --image alone, the image's Entrypoint + Cmd run.
        let cli = parse(&["run", "--image", "alpine:3"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert!(args.command.is_empty());
        let cli = parse(&["instance", "start", "--image", "alpine:3"]).unwrap();
        let Command::Instance(commands::instance::Command::Start(args)) = cli.command else {
            panic!("not instance start")
        };
        assert_eq!(args.target, None);
        assert!(args.command.is_empty());
        let cli = parse(&["instance", "start", "--image", "alpine:3", "--", "true"]).unwrap();
        let Command::Instance(commands::instance::Command::Start(args)) = cli.command else {
            panic!("not instance start")
        };
        assert_eq!(args.command, ["true"]);

        let cli = parse(&["instance", "start", "web"]).unwrap();
        let Command::Instance(commands::instance::Command::Start(args)) = cli.command else {
            panic!("not instance start")
        };
        assert_eq!(args.target.as_deref(), Some("web"));
        assert!(args.command.is_empty());
    }
}
