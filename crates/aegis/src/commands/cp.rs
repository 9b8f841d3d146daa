//! `aegis cp SRC DEST`: copies files and directories between this machine and an instance, as
//! `docker cp` does. One side is `INSTANCE:PATH` (an absolute guest path); the other is a local
//! path, or `-` for a tar archive on stdin (into the instance) or stdout (out of it).
//!
//! Where the copy lands follows `docker cp`: into DEST when DEST is an existing directory
//! (keeping SRC's name), else as DEST itself, whose parent must exist. A single file goes into
//! the instance as one atomic write; a directory travels as a tar stream. What comes out of an
//! instance is untrusted: only regular files, directories and symbolic links are unpacked, each
//! inside the destination (the archive crate refuses `..` and paths through links), without
//! setuid bits or the guest's owners, and a file replacing DEST is unpacked beside it first and
//! renamed into place.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use tokio::io::AsyncWriteExt;

use aegis_client::WriteOptions;
use aegis_proto::control::FileKind;

use crate::exit::Exit;
use crate::Ctx;

/// `aegis cp`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to copy: a local path, `-` (a tar archive on stdin), or INSTANCE:PATH
    #[arg(value_name = "SRC")]
    pub src: String,
    /// Where to: a local path, `-` (a tar archive on stdout), or INSTANCE:PATH
    #[arg(value_name = "DEST")]
    pub dest: String,
}

/// One side of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    /// A path in an instance.
    Guest { instance: String, path: String },
    /// A path on this machine.
    Local(PathBuf),
    /// A tar archive on stdin or stdout.
    Stream,
}

/// Reads `INSTANCE:PATH` as a guest place when the part before the first `:` could be an
/// instance reference (no `/`, not empty) and the argument does not start like a local path,
/// as `docker cp` does; `./a:b` names a local file with a colon.
fn place(arg: &str) -> anyhow::Result<Place> {
    if arg == "-" {
        return Ok(Place::Stream);
    }
    match arg.split_once(':') {
        Some((instance, path))
            if !instance.is_empty() && !instance.contains('/') && !arg.starts_with('.') =>
        {
            if !path.starts_with('/') {
                bail!(
                    "{arg:?}: the guest path must be absolute (for example {instance}:/workspace/{path})"
                );
            }
            Ok(Place::Guest {
                instance: instance.to_owned(),
                path: path.to_owned(),
            })
        }
        _ => Ok(Place::Local(PathBuf::from(arg))),
    }
}

/// Runs `aegis cp`.
pub async fn run(args: Args, ctx: &Ctx) -> anyhow::Result<Exit> {
    match (place(&args.src)?, place(&args.dest)?) {
        (Place::Guest { .. }, Place::Guest { .. }) => {
            bail!("copying between two instances is not supported: copy through this machine")
        }
        (Place::Local(_) | Place::Stream, Place::Local(_) | Place::Stream) => {
            bail!("one side must be INSTANCE:PATH (a local copy is `cp`'s job)")
        }
        (Place::Stream, Place::Guest { instance, path }) => {
            ctx.client
                .archive_in(&instance, &path, tokio::io::stdin())
                .await
                .with_context(|| format!("cannot unpack the archive into {instance}:{path}"))?;
        }
        (Place::Local(src), Place::Guest { instance, path }) => {
            copy_in(ctx, &src, &instance, &path).await?;
        }
        (Place::Guest { instance, path }, Place::Stream) => {
            let mut archive = ctx
                .client
                .archive_out(&instance, &path)
                .await
                .with_context(|| format!("cannot copy {instance}:{path}"))?;
            let mut stdout = tokio::io::stdout();
            tokio::io::copy(&mut archive, &mut stdout)
                .await
                .with_context(|| format!("the copy of {instance}:{path} broke off"))?;
            stdout.flush().await?;
        }
        (Place::Guest { instance, path }, Place::Local(dest)) => {
            copy_out(ctx, &instance, &path, &dest).await?;
        }
    }
    Ok(Exit::Success)
}

/// The last component of a path, for naming the copy.
fn base_name(path: &str) -> anyhow::Result<String> {
    Path::new(path.trim_end_matches('/'))
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .with_context(|| format!("{path:?} has no name to copy it as"))
}

fn join_guest(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

fn guest_parent(path: &str) -> String {
    match path.trim_end_matches('/').rsplit_once('/') {
        Some(("", _)) | None => "/".to_owned(),
        Some((parent, _)) => parent.to_owned(),
    }
}

async fn copy_in(ctx: &Ctx, src: &Path, instance: &str, dest: &str) -> anyhow::Result<()> {
    let meta =
        std::fs::symlink_metadata(src).with_context(|| format!("cannot copy {}", src.display()))?;
    let src_name = base_name(&src.to_string_lossy())?;
    // Where it lands: (directory in the guest, name in it).
    let (dir, name) = match ctx.client.stat_file(instance, dest).await {
        Ok(found) if found.kind == FileKind::Dir => (dest.to_owned(), src_name),
        Ok(_) if meta.is_dir() => {
            bail!(
                "cannot copy the directory {} onto the file {instance}:{dest}",
                src.display()
            )
        }
        Ok(_) => (guest_parent(dest), base_name(dest)?),
        Err(e) if e.status() == Some(aegis_client::StatusCode::NOT_FOUND) => {
            if dest.ends_with('/') {
                bail!("{instance}:{dest} does not exist (a path ending in / must be a directory)");
            }
            (guest_parent(dest), base_name(dest)?)
        }
        Err(e) => return Err(e).with_context(|| format!("cannot look at {instance}:{dest}")),
    };
    if meta.is_file() {
        use std::os::unix::fs::PermissionsExt;
        let file = tokio::fs::File::open(src)
            .await
            .with_context(|| format!("cannot read {}", src.display()))?;
        let options = WriteOptions {
            mode: Some(format!("{:04o}", meta.permissions().mode() & 0o7777)),
            ..WriteOptions::default()
        };
        let target = join_guest(&dir, &name);
        ctx.client
            .write_file(instance, &target, file, &options)
            .await
            .with_context(|| format!("cannot copy {} to {instance}:{target}", src.display()))?;
        return Ok(());
    }
    // A directory (or a link) as a tar stream, built as it is sent.
    let (reader, writer) = tokio::io::duplex(256 * 1024);
    let root = src.to_path_buf();
    let entry_name = name.clone();
    let builder = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut tar = tar::Builder::new(tokio_util::io::SyncIoBridge::new(writer));
        tar.follow_symlinks(false);
        if std::fs::symlink_metadata(&root)?.is_dir() {
            tar.append_dir_all(&entry_name, &root)?;
        } else {
            tar.append_path_with_name(&root, &entry_name)?;
        }
        tar.into_inner()?.shutdown()
    });
    let sent = ctx.client.archive_in(instance, &dir, reader).await;
    let built = builder.await.context("the archive builder failed")?;
    built.with_context(|| format!("cannot read {}", src.display()))?;
    sent.with_context(|| format!("cannot copy {} to {instance}:{dir}/{name}", src.display()))?;
    Ok(())
}

async fn copy_out(ctx: &Ctx, instance: &str, path: &str, dest: &Path) -> anyhow::Result<()> {
    let found = ctx
        .client
        .stat_file(instance, path)
        .await
        .with_context(|| format!("cannot copy {instance}:{path}"))?;
    let archive = ctx
        .client
        .archive_out(instance, path)
        .await
        .with_context(|| format!("cannot copy {instance}:{path}"))?;
    let reader = tokio_util::io::SyncIoBridge::new(archive);
    let top = found.name.clone();
    let dest = dest.to_path_buf();
    let what = format!("{instance}:{path}");
    tokio::task::spawn_blocking(move || unpack_out(reader, &top, found.kind, &dest, &what))
        .await
        .context("the unpacking task failed")?
}

/// Unpacks an archive from a guest whose top entry is `top` to `dest`, by the rules in the
/// module's documentation.
fn unpack_out(
    reader: impl std::io::Read,
    top: &str,
    kind: FileKind,
    dest: &Path,
    what: &str,
) -> anyhow::Result<()> {
    match std::fs::metadata(dest) {
        Ok(meta) if meta.is_dir() => return unpack_into(reader, dest, what),
        Ok(_) if kind == FileKind::Dir => {
            bail!(
                "cannot copy the directory {what} onto the file {}",
                dest.display()
            )
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot copy to {}", dest.display())),
    }
    // Unpacked beside DEST first, then renamed into place: DEST is whole or untouched.
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        bail!(
            "cannot copy to {}: {} is not a directory",
            dest.display(),
            parent.display()
        );
    }
    let staging = parent.join(format!(".aegis-cp-{}", std::process::id()));
    std::fs::create_dir(&staging)
        .with_context(|| format!("cannot create {}", staging.display()))?;
    let result = unpack_into(reader, &staging, what).and_then(|()| {
        std::fs::rename(staging.join(top), dest)
            .with_context(|| format!("cannot move the copy to {}", dest.display()))
    });
    let _ = std::fs::remove_dir_all(&staging);
    result
}

fn unpack_into(reader: impl std::io::Read, dir: &Path, what: &str) -> anyhow::Result<()> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(false);
    archive.set_overwrite(true);
    let entries = archive
        .entries()
        .with_context(|| format!("cannot read the archive of {what}"))?;
    for entry in entries {
        let mut entry = entry.with_context(|| format!("the archive of {what} is damaged"))?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
            let name = entry
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            eprintln!("aegis: skipped {name} of {what}: not a file, directory or link");
            continue;
        }
        entry
            .unpack_in(dir)
            .with_context(|| format!("cannot unpack the copy of {what} into {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_read_as_docker_cp_reads_them() {
        assert_eq!(
            place("web:/etc/hosts").unwrap(),
            Place::Guest {
                instance: "web".into(),
                path: "/etc/hosts".into()
            }
        );
        assert_eq!(place("-").unwrap(), Place::Stream);
        assert_eq!(place("./a:b").unwrap(), Place::Local("./a:b".into()));
        assert_eq!(place("/tmp/x:y").unwrap(), Place::Local("/tmp/x:y".into()));
        assert_eq!(place("file.txt").unwrap(), Place::Local("file.txt".into()));
        assert!(place("web:relative")
            .unwrap_err()
            .to_string()
            .contains("absolute"));
        assert_eq!(guest_parent("/a/b"), "/a");
        assert_eq!(guest_parent("/a"), "/");
        assert_eq!(base_name("/a/b/").unwrap(), "b");
    }
}
