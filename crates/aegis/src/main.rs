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
    /// The E2B-compatible API (`aegis up --e2b ADDR`): its API keys
    #[command(subcommand)]
    E2b(commands::e2b::Command),
    /// Run a command in a running instance (waking it if it sleeps)
    Exec(commands::exec::Args),
    /// Copy files and directories between this machine and an instance (as `docker cp`)
    Cp(commands::cp::Args),
    /// Print an instance's logs
    Logs(commands::logs::Args),
    /// The processes started in an instance: list, wait, kill, feed input
    #[command(subcommand)]
    Process(commands::process::Command),
    /// Run a command in a new instance, print its output, delete the instance
    #[command(after_help = EXIT_CODES_HELP)]
    Run(commands::run::Args),
    /// Serve sandboxes to assistants over the Model Context Protocol (stdio, or --http)
    Mcp(commands::mcp::Args),
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
    // A read of the terminal for `-i` cannot be cancelled: waiting for it would hang the exit
    // until the user pressed Enter.
    runtime.shutdown_background();
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
        Command::E2b(command) => commands::e2b::run(command, ctx).await,
        Command::Exec(args) => commands::exec::run(args, ctx).await,
        Command::Cp(args) => commands::cp::run(args, ctx).await,
        Command::Logs(args) => commands::logs::run(args, ctx).await,
        Command::Process(command) => commands::process::run(command, ctx).await,
        Command::Run(args) => commands::run::run(args, ctx).await,
        Command::Mcp(args) => commands::mcp::run(args, ctx).await,
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
            // An unknown flag is a usage error, never the command (issue 20).
            &["run", "--imge", "x", "--", "true"],
            &["run", "--imge", "x"],
            &["exec", "web", "--entrypoint", "/bin/echo"],
            &["instance", "start", "web", "--entrypoint", "/bin/sh"],
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

        // After the first word of the command, hyphens belong to it.
        let cli = parse(&["run", "echo", "-n", "--env", "x"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.command, ["echo", "-n", "--env", "x"]);
        assert!(args.options.env.is_empty());
        let cli = parse(&["run", "--entrypoint", "/bin/echo", "--", "hi"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        let request = args.options.into_request(args.command);
        assert_eq!(request.entrypoint, Some(vec!["/bin/echo".to_owned()]));
        assert_eq!(request.command, ["hi"]);
        let cli = parse(&["run", "--image", "x", "--entrypoint", ""]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(
            args.options.into_request(args.command).entrypoint,
            Some(vec![])
        );

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

    /// Every `aegis …` command and every `--flag` quoted in the code of the crates whose
    /// messages reach the user must exist: a hint that names a flag the CLI lacks is a bug
    /// (issue 20: `image import` suggested `--name`).
    #[test]
    fn hints_name_only_real_flags() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = Vec::new();
        for krate in [
            "aegis",
            "aegisd",
            "aegis-client",
            "aegis-image",
            "aegis-vmm",
            "aegis-proto",
        ] {
            collect_rs(&root.join(krate).join("src"), &mut files);
        }
        assert!(files.len() > 20, "found only {} source files", files.len());
        let cli = Cli::command();
        let mut problems = Vec::new();
        let mut checked = 0;
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            // String continuations: "…`aegis exec {name} \\\n   -- …`" is one snippet.
            let joined = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .map(|l| l.trim_start())
                .collect::<Vec<_>>()
                .join("\n")
                .replace("\\\n", "");
            for line in joined.split("\n") {
                for (i, snippet) in line.split('`').enumerate() {
                    if i % 2 == 1 {
                        if let Some(problem) = check_snippet(&cli, snippet) {
                            problems.push(format!("{}: `{snippet}`: {problem}", file.display()));
                        }
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 50, "only {checked} snippets seen");
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    fn collect_rs(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                collect_rs(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    fn has_long(cmd: &clap::Command, flag: &str) -> bool {
        cmd.get_arguments().any(|a| {
            a.get_long() == Some(flag) || a.get_all_aliases().is_some_and(|al| al.contains(&flag))
        }) || flag == "help"
    }

    /// What is wrong with a quoted snippet, if it is an `aegis` command line or a flag.
    fn check_snippet(cli: &clap::Command, snippet: &str) -> Option<String> {
        let words: Vec<&str> = snippet.split_whitespace().collect();
        if words.first() == Some(&"aegis") {
            let mut cmd = cli.clone();
            let mut rest = &words[1..];
            while let Some(word) = rest.first() {
                match cmd.find_subcommand(word) {
                    Some(sub) => {
                        cmd = sub.clone();
                        rest = &rest[1..];
                    }
                    None => break,
                }
            }
            for word in rest {
                if *word == "--" {
                    break; // the guest command follows
                }
                if let Some(flag) = word.strip_prefix("--") {
                    let flag = flag.split('=').next().unwrap_or(flag);
                    if !has_long(&cmd, flag) {
                        return Some(format!("`{}` has no --{flag}", cmd.get_name()));
                    }
                }
            }
            return None;
        }
        // A lone flag such as `--tag NAME:TAG`: some command must have it.
        let flag = words.first()?.strip_prefix("--")?.split('=').next()?;
        if flag.is_empty() || !flag.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
            return None;
        }
        fn anywhere(cmd: &clap::Command, flag: &str) -> bool {
            has_long(cmd, flag) || cmd.get_subcommands().any(|s| anywhere(s, flag))
        }
        (!anywhere(cli, flag)).then(|| format!("no aegis command has --{flag}"))
    }
}
