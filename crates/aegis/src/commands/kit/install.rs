//! `aegis kit install PATH`: sends the manifest (YAML or JSON) to the daemon, which validates it
//! and installs it as `~/.aegis/kits/NAME.json`. Relative daemon programs in the manifest are
//! resolved against the manifest's directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use aegis_proto::kit::InstallKit;

use crate::exit::Exit;
use crate::Ctx;

/// File names looked for when PATH is a directory.
const MANIFEST_NAMES: [&str; 3] = ["kit.yaml", "kit.yml", "kit.json"];

/// `aegis kit install`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The manifest file, or a directory holding kit.yaml, kit.yml or kit.json
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
    /// Replace an installed kit of the same name
    #[arg(long)]
    pub replace: bool,
}

/// The manifest file PATH names.
fn manifest_file(path: &Path) -> anyhow::Result<PathBuf> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    MANIFEST_NAMES
        .iter()
        .map(|n| path.join(n))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "{} holds no kit manifest ({})",
                path.display(),
                MANIFEST_NAMES.join(", ")
            )
        })
}

/// Runs `aegis kit install`.
pub async fn run(args: Args, ctx: &Ctx) -> anyhow::Result<Exit> {
    let file = manifest_file(&args.path)?;
    let manifest = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let dir = std::path::absolute(&file)
        .with_context(|| format!("cannot resolve {}", file.display()))?
        .parent()
        .map(|d| d.display().to_string());
    let request = InstallKit {
        manifest,
        base_dir: dir,
        replace: args.replace,
    };
    let installed = ctx
        .client
        .install_kit(&request)
        .await
        .with_context(|| format!("cannot install the kit of {}", file.display()))?;
    let m = &installed.kit.manifest;
    writeln!(
        std::io::stdout(),
        "kit {} {} {} ({})",
        m.name,
        m.version,
        if installed.replaced {
            "replaced"
        } else {
            "installed"
        },
        installed.kit.path
    )?;
    Ok(Exit::Success)
}
