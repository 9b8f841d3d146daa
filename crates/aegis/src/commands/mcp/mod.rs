//! `aegis mcp`: a Model Context Protocol server, so that assistants (Claude Desktop, Cursor,
//! Codex, any MCP client) run code in Aegis sandboxes through tools. It is a client of aegisd
//! like the rest of the CLI (started first when it is not running), built on `rmcp`, the
//! protocol's Rust SDK: on stdio by default, or on the protocol's streamable HTTP transport on
//! loopback with `--http`. `aegis mcp config` prints what MCP clients put in their settings.
//!
//! Tool failures (an unknown instance, a refused secret, a boot failure) come back as tool
//! errors carrying the daemon's message, which the model reads; nothing a call does ends the
//! server.

mod tools;

use std::net::SocketAddr;

use anyhow::Context;
use rmcp::ServiceExt;

use crate::exit::Exit;
use crate::Ctx;

/// `aegis mcp`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Serve the streamable HTTP transport on this loopback address (e.g. 127.0.0.1:8765,
    /// endpoint /mcp) instead of stdio
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
}

/// `aegis mcp <subcommand>`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print the configuration snippet MCP clients (Claude Desktop, Cursor, VS Code…) expect
    Config,
}

/// Runs `aegis mcp`.
pub async fn run(args: Args, ctx: &Ctx) -> anyhow::Result<Exit> {
    if let Some(Command::Config) = args.command {
        println!("{}", config_snippet(ctx)?);
        return Ok(Exit::Success);
    }
    // Before anything is served: a client gets tools that work, or the server says at once
    // why it cannot (on stderr; stdout is the protocol's).
    match super::up::ensure_running(ctx).await? {
        super::up::Running::Started(status) => {
            eprintln!(
                "aegis mcp: started aegisd {} (pid {})",
                status.version, status.pid
            );
        }
        super::up::Running::Already(_) => {}
    }
    let server = tools::Sandboxes::new(ctx.client.clone());
    match args.http {
        None => {
            let service = server
                .serve(rmcp::transport::stdio())
                .await
                .context("cannot start the MCP session on stdio")?;
            service.waiting().await.context("the MCP session failed")?;
        }
        Some(addr) => serve_http(server, addr).await?,
    }
    Ok(Exit::Success)
}

/// The streamable HTTP transport on `addr`, which must be a loopback address: the tools run
/// code on this machine's VMs with the user's rights, so they are not offered to the network.
async fn serve_http(server: tools::Sandboxes, addr: SocketAddr) -> anyhow::Result<()> {
    use rmcp::transport::streamable_http_server::{
        session::local::LocalSessionManager, StreamableHttpServerConfig, StreamableHttpService,
    };
    if !addr.ip().is_loopback() {
        anyhow::bail!(
            "--http {addr} is not a loopback address: the MCP server runs code with your rights, \
             so it only listens on 127.0.0.1 or ::1"
        );
    }
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        LocalSessionManager::default().into(),
        // Hosts other than loopback names are refused by default (DNS rebinding); so is any
        // request that carries an Origin: MCP clients send none, and a web page in the user's
        // browser must not reach a server that runs code.
        StreamableHttpServerConfig::default().enforce_origin_validation(),
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    eprintln!("aegis mcp: serving MCP on http://{addr}/mcp");
    let app = axum::Router::new().nest_service("/mcp", service);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("the MCP HTTP server failed")
}

/// The `mcpServers` entry that Claude Desktop, Cursor, Windsurf and most clients read (VS Code
/// takes the same object under `servers`).
fn config_snippet(ctx: &Ctx) -> anyhow::Result<String> {
    let me = std::env::current_exe().context("cannot find the aegis binary's path")?;
    let snippet = serde_json::json!({
        "mcpServers": {
            "aegis": {
                "command": me,
                "args": ["mcp"],
                "env": { aegis_client::HOME_ENV: ctx.home },
            }
        }
    });
    Ok(serde_json::to_string_pretty(&snippet)?)
}
