//! `aegis instance info <ID|HANDLE>`.

use std::io::Write;

use anyhow::Context;
use time::OffsetDateTime;

use aegis_proto::api::Instance;

use crate::display::{age, quote_command};
use crate::exit::Exit;
use crate::printer::print_json;
use crate::Ctx;

/// `aegis instance info`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Instance id (inst-…) or handle
    #[arg(value_name = "ID|HANDLE")]
    pub target: String,
    /// Print the instance object as JSON
    #[arg(long)]
    pub json: bool,
}

/// Runs `aegis instance info`.
pub async fn run(args: Args, ctx: &Ctx) -> anyhow::Result<Exit> {
    let instance = ctx
        .client
        .instance(&args.target)
        .await
        .with_context(|| format!("cannot get instance {:?}", args.target))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        print_json(&mut out, &instance)?;
    } else {
        out.write_all(render(&instance, OffsetDateTime::now_utc()).as_bytes())?;
    }
    Ok(Exit::Success)
}

fn render(i: &Instance, now: OffsetDateTime) -> String {
    let when = |t: &str| format!("{t} ({})", age(t, now));
    let mut rows: Vec<(&str, String)> = vec![
        ("id", i.id.clone()),
        ("handle", i.handle.clone().unwrap_or_else(|| "-".to_owned())),
        (
            "state",
            format!("{}{}", i.state, if i.enabled { "" } else { " (disabled)" }),
        ),
        ("image", i.image_ref.clone()),
        ("command", quote_command(&i.command)),
        ("memory", format!("{} MiB", i.memory_mb)),
        ("vcpus", i.vcpus.to_string()),
        (
            "snapshot",
            (if i.snapshot { "on" } else { "off" }).to_owned(),
        ),
        ("created", when(&i.created_at)),
    ];
    let optional = [
        ("last active", i.last_active_at.as_deref().map(when)),
        ("stopped", i.stopped_at.as_deref().map(when)),
        ("exit code", i.exit_code.map(|c| c.to_string())),
        (
            "expires",
            i.expires_at.as_deref().map(|at| {
                let what = match i.on_timeout.unwrap_or_default() {
                    aegis_proto::api::OnTimeout::Delete => "deleted",
                    aegis_proto::api::OnTimeout::Stop => "stopped",
                };
                format!("{at}, then {what}")
            }),
        ),
        ("reason", i.reason.clone()),
        (
            "env",
            (!i.env_keys.is_empty()).then(|| i.env_keys.join(", ")),
        ),
        (
            "secrets",
            (!i.secret_keys.is_empty()).then(|| i.secret_keys.join(", ")),
        ),
        (
            "endpoints",
            (!i.endpoints.is_empty()).then(|| {
                i.endpoints
                    .iter()
                    .map(|e| format!("{}:{}/{}", e.public_port, e.guest_port, e.protocol))
                    .collect::<Vec<_>>()
                    .join(", ")
            }),
        ),
        (
            "workspace",
            i.workspace
                .as_ref()
                .map(|w| match (w.kind.as_str(), &w.name, w.size_mb) {
                    ("named", Some(name), _) => format!("{name} (named: {})", w.path),
                    ("volume", _, Some(mb)) => format!("own volume, {mb} MiB ({})", w.path),
                    ("host", _, _) => format!("host directory {}", w.path),
                    (kind, _, _) => format!("{kind} {}", w.path),
                }),
        ),
        ("kit", i.kit.clone()),
        ("vmm pid", i.vmm_pid.map(|p| p.to_string())),
        (
            "egress hint",
            (!i.egress_hints.is_empty()).then(|| i.egress_hints.join(", ")),
        ),
        (
            "daemons",
            (!i.daemons.is_empty()).then(|| {
                i.daemons
                    .iter()
                    .map(|d| {
                        let mut s = format!("{} {}", d.name, d.state);
                        if let Some(pid) = d.pid {
                            s.push_str(&format!(" (pid {pid})"));
                        }
                        if d.restarts > 0 {
                            s.push_str(&format!(", {} restarts", d.restarts));
                        }
                        s
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            }),
        ),
        (
            "saved",
            i.saved_snapshot.as_ref().map(|s| {
                format!(
                    "snapshot of {:.1} MiB taken {}",
                    s.size_bytes as f64 / (1024.0 * 1024.0),
                    when(&s.created_at)
                )
            }),
        ),
    ];
    rows.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
    rows.iter()
        .map(|(key, value)| format!("{:<13}{value}\n", format!("{key}:")))
        .collect()
}
