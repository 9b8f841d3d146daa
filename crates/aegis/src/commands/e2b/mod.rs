//! `aegis e2b …`: the E2B-compatible listener (started with `aegis up --e2b ADDR`) and its API
//! keys. `key create` prints a key once; the daemon keeps only its hash.

use std::io::Write;

use anyhow::Context;
use time::OffsetDateTime;

use crate::display::{age, table};
use crate::exit::Exit;
use crate::printer::print_json;
use crate::Ctx;

/// `aegis e2b <subcommand>`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Manage the API keys E2B SDKs authenticate with (`E2B_API_KEY`)
    #[command(subcommand)]
    Key(KeyCommand),
}

/// `aegis e2b key <subcommand>`.
#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// Create a key and print it (it is shown this once)
    Create {
        /// What the key is for
        name: String,
        /// Print `{id, name, created_at, key}` as JSON
        #[arg(long)]
        json: bool,
    },
    /// List keys: ids, names and dates, never the keys
    #[command(visible_alias = "ls")]
    List {
        /// Print the keys as a JSON array
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id or name: requests with it are refused from now on
    #[command(visible_alias = "rm")]
    Revoke {
        /// The key's id or name
        key: String,
    },
}

/// Runs `aegis e2b <subcommand>`.
pub async fn run(command: Command, ctx: &Ctx) -> anyhow::Result<Exit> {
    let Command::Key(command) = command;
    let mut out = std::io::stdout().lock();
    match command {
        KeyCommand::Create { name, json } => {
            let created = ctx
                .client
                .create_e2b_key(&name)
                .await
                .with_context(|| format!("cannot create E2B key {name:?}"))?;
            if json {
                print_json(&mut out, &created)?;
            } else {
                writeln!(out, "{}", created.key)?;
                eprintln!(
                    "aegis: key {} ({}) created; it is not shown again. Use it as E2B_API_KEY, \
                     with E2B_API_URL and E2B_SANDBOX_URL set to the address of `aegis up --e2b`.",
                    created.info.id, created.info.name
                );
            }
        }
        KeyCommand::List { json } => {
            let keys = ctx
                .client
                .list_e2b_keys()
                .await
                .context("cannot list E2B keys")?;
            if json {
                print_json(&mut out, &keys)?;
                return Ok(Exit::Success);
            }
            let now = OffsetDateTime::now_utc();
            let rows: Vec<Vec<String>> = keys
                .iter()
                .map(|k| {
                    vec![
                        k.id.clone(),
                        k.name.clone(),
                        age(&k.created_at, now),
                        k.last_used_at
                            .as_deref()
                            .map_or_else(|| "never".to_owned(), |t| age(t, now)),
                    ]
                })
                .collect();
            let text = table(&["ID", "NAME", "CREATED", "LAST USED"], &rows, |_, cell| {
                cell.to_owned()
            });
            out.write_all(text.as_bytes())?;
        }
        KeyCommand::Revoke { key } => {
            ctx.client
                .revoke_e2b_key(&key)
                .await
                .with_context(|| format!("cannot revoke E2B key {key:?}"))?;
            writeln!(out, "revoked {key}")?;
        }
    }
    Ok(Exit::Success)
}
