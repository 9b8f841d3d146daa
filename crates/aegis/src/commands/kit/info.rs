//! `aegis kit info NAME`.

use std::io::Write;

use anyhow::Context;

use aegis_proto::api::IdleTimeout;
use aegis_proto::kit::{KitInfo, SecretRequirement};

use crate::display::quote_command;
use crate::exit::Exit;
use crate::printer::print_json;
use crate::Ctx;

/// `aegis kit info`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The kit's name
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Print the kit as JSON (`{manifest, path, instances}`)
    #[arg(long)]
    pub json: bool,
}

/// Runs `aegis kit info`.
pub async fn run(args: Args, ctx: &Ctx) -> anyhow::Result<Exit> {
    let kit = ctx
        .client
        .kit(&args.name)
        .await
        .with_context(|| format!("cannot get kit {:?}", args.name))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        print_json(&mut out, &kit)?;
    } else {
        out.write_all(render(&kit).as_bytes())?;
    }
    Ok(Exit::Success)
}

fn secrets(list: &[SecretRequirement]) -> Option<String> {
    (!list.is_empty()).then(|| {
        list.iter()
            .map(|s| {
                if s.description.is_empty() {
                    s.name.clone()
                } else {
                    format!("{} ({})", s.name, s.description)
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    })
}

fn idle(t: Option<&IdleTimeout>) -> Option<String> {
    t.map(|t| match t {
        IdleTimeout::Seconds(s) => format!("{s}s"),
        IdleTimeout::Text(s) => s.clone(),
    })
}

fn render(kit: &KitInfo) -> String {
    let m = &kit.manifest;
    let r = &m.resources;
    let pair = |default: Option<u32>, max: Option<u32>, unit: &str| {
        let default = default.map_or_else(|| "Aegis default".to_owned(), |d| format!("{d}{unit}"));
        match max {
            Some(max) => format!("{default} (max {max}{unit})"),
            None => default,
        }
    };
    let rows: Vec<(&str, Option<String>)> = vec![
        ("name", Some(m.name.clone())),
        ("version", Some(m.version.clone())),
        (
            "description",
            (!m.description.is_empty()).then(|| m.description.clone()),
        ),
        (
            "image",
            Some(
                m.image
                    .clone()
                    .unwrap_or_else(|| "Aegis default image".to_owned()),
            ),
        ),
        (
            "command",
            (!m.defaults.command.is_empty()).then(|| quote_command(&m.defaults.command)),
        ),
        (
            "env",
            (!m.defaults.env.is_empty()).then(|| {
                m.defaults
                    .env
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            }),
        ),
        ("workdir", m.defaults.workdir.clone()),
        ("idle pause", idle(m.defaults.idle_pause.as_ref())),
        ("idle stop", idle(m.defaults.idle_stop.as_ref())),
        ("memory", Some(pair(r.memory_mb, r.max_memory_mb, " MiB"))),
        ("vcpus", Some(pair(r.vcpus, r.max_vcpus, ""))),
        ("secrets", secrets(&m.secrets.required)),
        ("optional", secrets(&m.secrets.optional)),
        (
            "exposes",
            (!m.exposes.is_empty()).then(|| {
                m.exposes
                    .iter()
                    .map(|e| format!("{}/{}", e.port, e.protocol.as_deref().unwrap_or("tcp")))
                    .collect::<Vec<_>>()
                    .join(", ")
            }),
        ),
        (
            "egress",
            (!m.egress.is_empty()).then(|| m.egress.join(", ")),
        ),
        ("file", Some(kit.path.clone())),
        (
            "instances",
            (!kit.instances.is_empty()).then(|| kit.instances.join(", ")),
        ),
    ];
    let mut text: String = rows
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| format!("{:<13}{v}\n", format!("{k}:"))))
        .collect();
    for d in &m.instance_daemons {
        text.push_str(&format!(
            "{:<13}{}: {}\n",
            "daemon:",
            d.name,
            quote_command(&d.command)
        ));
    }
    text
}
