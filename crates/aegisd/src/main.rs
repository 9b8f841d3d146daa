//! `aegisd`: parse flags, set up tracing, run the daemon, map the result to an exit code.

use std::process::ExitCode;

use clap::Parser;

/// The Aegis daemon. Usually started by `aegis up`.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Data directory (default: $AEGIS_HOME or ~/.aegis).
    #[arg(long, env = "AEGIS_HOME")]
    home: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AEGIS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let mut config = aegisd::config::Config::from_env();
    if let Some(home) = args.home {
        config.home = home;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("aegisd: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(aegisd::daemon::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aegisd: error: {}", aegisd::images::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
