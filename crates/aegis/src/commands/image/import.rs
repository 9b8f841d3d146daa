//! `aegis image import FILE`: store an image from a file on this machine (offline use). FILE is
//! made absolute against the current directory before it is sent, since the daemon reads it.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use indicatif::HumanBytes;

use aegis_proto::api::ImportRequest;

use crate::exit::Exit;
use crate::progress::{self, short_digest, Display};
use crate::report::Hinted;
use crate::Ctx;

/// `aegis image import`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// An OCI image layout (directory, or tar, optionally compressed), a `docker save` archive,
    /// or with `--rootfs` a root filesystem tarball
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Reference to store the image under (required with `--rootfs`; names unnamed archives)
    #[arg(long, value_name = "REF")]
    pub tag: Option<String>,
    /// FILE is a plain root filesystem tarball (e.g. from mmdebstrap), not an image archive
    #[arg(long, requires = "tag")]
    pub rootfs: bool,
    /// Print the daemon's progress events as JSON lines
    #[arg(long)]
    pub json: bool,
}

/// Runs `aegis image import`.
pub async fn run(args: Args, ctx: &Ctx) -> anyhow::Result<Exit> {
    let path = absolute(&args.file)?;
    let request = ImportRequest {
        path: path.to_string_lossy().into_owned(),
        rootfs: args.rootfs,
        tag: args.tag,
    };
    let shown = args.file.display().to_string();
    let stream = ctx
        .client
        .import_image(&request)
        .await
        .with_context(|| format!("cannot import {shown}"))?;
    let display = if args.json {
        Display::Json
    } else {
        Display::Human
    };
    let finished = progress::follow(stream, display, ctx.term, &format!("import of {shown}"))
        .await
        .with_context(|| format!("cannot import {shown}"))?;
    if args.json {
        return Ok(Exit::Success);
    }
    let mut out = std::io::stdout().lock();
    for image in &finished.images {
        writeln!(
            out,
            "imported {} ({}, {} layers, {})",
            image.reference,
            short_digest(&image.digest),
            image.layers,
            HumanBytes(image.size)
        )?;
    }
    Ok(Exit::Success)
}

/// `file` as an absolute, canonical path against this process's directory, checked to exist (the daemon,
/// whose directory differs, would otherwise report a path the user never typed).
fn absolute(file: &Path) -> anyhow::Result<PathBuf> {
    let path =
        std::path::absolute(file).with_context(|| format!("cannot resolve {}", file.display()))?;
    std::fs::canonicalize(&path).map_err(|e| {
        Hinted {
            message: format!("cannot read {}: {e}", path.display()),
            hint: "give the path of an OCI layout, a `docker save` archive or, with --rootfs, a \
                   root filesystem tarball"
                .to_owned(),
        }
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_become_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let dir_path = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::write(dir.path().join("img.tar"), b"").unwrap();
        let cwd = std::env::current_dir().unwrap();
        let rel = pathdiff(&dir_path.join("img.tar"), &cwd);
        assert!(rel.is_relative());
        assert_eq!(absolute(&rel).unwrap(), dir_path.join("img.tar"));
        let err = absolute(Path::new("no/such/file.tar")).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot read {}: No such file or directory (os error 2)",
                cwd.join("no/such/file.tar").display()
            )
        );
    }

    /// `target` relative to `base` (both absolute).
    fn pathdiff(target: &Path, base: &Path) -> PathBuf {
        let depth = base.components().count() - 1;
        let mut rel: PathBuf = std::iter::repeat_n("..", depth).collect();
        rel.push(target.strip_prefix("/").unwrap());
        rel
    }
}
