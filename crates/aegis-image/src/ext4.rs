//! Builds an ext4 file system image from an unpacked tree, without root.
//!
//! `mke2fs -d` copies the staging directory (contents, directories, symlinks, hard links) into a
//! new sparse file, owned by whoever runs it. A `debugfs -w` batch then applies the metadata
//! table exactly: owner, group, mode (with setuid/setgid/sticky), mtime and xattrs of every
//! entry, and creates device nodes and fifos with `mknod`. Neither step needs privileges. Where
//! the result goes and when it is built is left to [`crate::rootfs`].

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::unpack::{EntryKind, EntryMeta, RootfsTree};

/// The file system label; the guest harness may mount the root by it.
pub const ROOT_LABEL: &str = "aegis-root";
/// Smallest base image. The file is sparse, so unused space costs nothing on the host.
pub const MIN_IMAGE_BYTES: u64 = 512 << 20;
/// Free space added on top of the content (plus half the content again): instances write into a
/// copy-on-write overlay, but the file system inside still needs free blocks and inodes for it.
pub const HEADROOM_BYTES: u64 = 512 << 20;
/// Block size of the file system.
const BLOCK_SIZE: u64 = 4096;
/// Images are rounded up to whole MiB.
const SIZE_ALIGN: u64 = 1 << 20;
/// One inode per this many bytes at least (mke2fs's default ratio), and twice the entries the
/// image has, so instances can create files.
const BYTES_PER_INODE: u64 = 16384;
/// The package that provides `mke2fs` and `debugfs`.
const E2FSPROGS_PACKAGE: &str = "e2fsprogs";
/// `debugfs` refuses device numbers above this.
const MAX_DEVICE_NUMBER: u32 = 65535;
/// Directories searched for tools after `$PATH`: ordinary users' `$PATH` on Debian lacks the sbin
/// directories, where e2fsprogs installs.
const SBIN_DIRS: [&str; 3] = ["/usr/sbin", "/sbin", "/usr/local/sbin"];
/// How many debugfs complaints an error quotes.
const MAX_REPORTED_ERRORS: usize = 5;
/// Longest line the debugfs batch may hold, newline included. debugfs reads its command file
/// with `fgets` into a `BUFSIZ` (8,192-byte) buffer and runs each piece of a longer line as a
/// command of its own, and a piece that starts with `!` is handed to the shell: a line that
/// could be cut in two would let an image's file names run commands on the host. Every line is
/// checked against this bound before it is written (a path of PATH_MAX bytes, an xattr name of
/// 255 and the value file's path fit with room to spare).
pub const MAX_BATCH_LINE_BYTES: usize = 6144;
/// debugfs's read buffer (`BUFSIZ` in glibc), for the check below.
const DEBUGFS_LINE_BUFFER: usize = 8192;
const _: () = assert!(MAX_BATCH_LINE_BYTES < DEBUGFS_LINE_BUFFER);

/// Why an ext4 image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    /// `mke2fs` or `debugfs` is not installed.
    #[error("{tool} not found in $PATH or /usr/sbin")]
    ToolMissing {
        /// The missing program.
        tool: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// A tool could not be started.
    #[error("cannot run {tool}")]
    Spawn {
        /// The program.
        tool: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `mke2fs` failed.
    #[error("mke2fs failed on {image} (exit status {status}): {stderr}")]
    Mke2fs {
        /// The image file.
        image: PathBuf,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// `debugfs` rejected commands of the metadata batch.
    #[error("debugfs could not apply metadata to {image}: {}", errors.join("; "))]
    Debugfs {
        /// The image file.
        image: PathBuf,
        /// Its first complaints.
        errors: Vec<String>,
    },
    /// A file name contains a line break or a NUL byte, which a debugfs batch cannot express.
    #[error("cannot represent file name {path:?} in the ext4 image (it contains a line break or a NUL byte)")]
    UnrepresentableName {
        /// The path in the image.
        path: String,
    },
    /// A command for one entry would be longer than a debugfs batch line may be.
    #[error("entry {path:?} needs a {bytes}-byte metadata command, above the limit of {limit} bytes (its path or an xattr name is too long)")]
    CommandTooLong {
        /// The path in the image (shortened).
        path: String,
        /// The command's length.
        bytes: usize,
        /// [`MAX_BATCH_LINE_BYTES`].
        limit: usize,
    },
    /// A device number is larger than debugfs accepts.
    #[error("device node {path:?} has numbers {major}:{minor}, above debugfs's limit of 65535")]
    DeviceNumberTooLarge {
        /// The path in the image.
        path: String,
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A working file could not be written or the staging directory could not be read.
    #[error("cannot access {path} while building an ext4 image")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl Ext4Error {
    /// What the user can do about the error, when there is something.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::ToolMissing { package, .. } => {
                Some(format!("install it: `sudo apt-get install {package}`"))
            }
            Self::Io { source, .. } if crate::store::is_disk_full(source) => {
                Some(crate::store::DISK_FULL_HINT.to_owned())
            }
            Self::Spawn { .. }
            | Self::Mke2fs { .. }
            | Self::Debugfs { .. }
            | Self::UnrepresentableName { .. }
            | Self::CommandTooLong { .. }
            | Self::DeviceNumberTooLarge { .. }
            | Self::Io { .. } => None,
        }
    }
}

/// Finds `tool` in `$PATH`, then in the sbin directories.
///
/// # Errors
/// [`Ext4Error::ToolMissing`] naming the package to install.
pub fn find_tool(tool: &'static str) -> Result<PathBuf, Ext4Error> {
    let path_dirs = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_dirs)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|candidate| {
            fs::metadata(candidate).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
        })
        .ok_or(Ext4Error::ToolMissing {
            tool,
            package: E2FSPROGS_PACKAGE,
        })
}

/// Builds the ext4 image `output` (which must not exist) from `tree`. `work_dir` holds the
/// debugfs batch and xattr values while the build runs.
///
/// # Errors
/// [`Ext4Error`] naming the tool or file that failed; `output` may then hold a partial image
/// and should be discarded.
pub fn build_ext4(tree: &RootfsTree, output: &Path, work_dir: &Path) -> Result<(), Ext4Error> {
    let mke2fs = find_tool("mke2fs")?;
    let debugfs = find_tool("debugfs")?;
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| Ext4Error::Io { path, source }
    };
    fs::create_dir_all(work_dir).map_err(io_err(work_dir))?;
    let batch_path = work_dir.join("metadata.debugfs");
    let batch = MetadataBatch::write(tree, &batch_path, work_dir)?;

    let size = image_size(batch.content_bytes);
    let inodes = (batch.entries * 2).max(size / BYTES_PER_INODE);
    let file = File::create_new(output).map_err(io_err(output))?;
    file.set_len(size).map_err(io_err(output))?;
    drop(file);

    let mut mkfs = Command::new(&mke2fs);
    mkfs.args(["-q", "-F", "-t", "ext4"])
        .args(["-b", &BLOCK_SIZE.to_string()])
        .args(["-N", &inodes.to_string()])
        .args(["-L", ROOT_LABEL])
        .args(["-E", "root_owner=0:0"])
        .arg("-d")
        .arg(&tree.root)
        .arg(output);
    run_mke2fs(&mut mkfs, output)?;

    let mut dbg = Command::new(&debugfs);
    dbg.arg("-w").arg("-f").arg(&batch_path).arg(output);
    let out = run(&mut dbg, "debugfs")?;
    let errors = debugfs_errors(&out);
    if !out.status.success() || !errors.is_empty() {
        return Err(Ext4Error::Debugfs {
            image: output.to_owned(),
            errors: if errors.is_empty() {
                vec![format!("exit status {}", out.status)]
            } else {
                errors
            },
        });
    }
    File::open(output)
        .and_then(|f| f.sync_all())
        .map_err(io_err(output))?;
    Ok(())
}

/// Creates an empty ext4 volume of `size_bytes` at `output` (which must not exist): a sparse file,
/// so only what is written takes room. The root directory belongs to root with mode 0755.
///
/// # Errors
/// [`Ext4Error`] naming the step that failed; `output` may then hold a partial file.
pub fn make_volume(output: &Path, size_bytes: u64, label: &str) -> Result<(), Ext4Error> {
    let mke2fs = find_tool("mke2fs")?;
    let file = File::create_new(output).map_err(|source| Ext4Error::Io {
        path: output.to_owned(),
        source,
    })?;
    file.set_len(size_bytes).map_err(|source| Ext4Error::Io {
        path: output.to_owned(),
        source,
    })?;
    drop(file);
    let mut mkfs = Command::new(&mke2fs);
    // No reserved blocks: nothing but the workspace's owner writes here. Lazy inode table and
    // journal initialisation keep creation instant whatever the size.
    mkfs.args(["-q", "-F", "-t", "ext4", "-m", "0"])
        .args(["-b", &BLOCK_SIZE.to_string()])
        .args(["-L", label])
        .args([
            "-E",
            "root_owner=0:0,lazy_itable_init=1,lazy_journal_init=1,discard",
        ])
        .arg(output);
    run_mke2fs(&mut mkfs, output)
}

/// Runs a prepared `mke2fs` command that formats `image`.
fn run_mke2fs(mkfs: &mut Command, image: &Path) -> Result<(), Ext4Error> {
    let out = run(mkfs, "mke2fs")?;
    if out.status.success() {
        return Ok(());
    }
    Err(Ext4Error::Mke2fs {
        image: image.to_owned(),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

fn run(command: &mut Command, tool: &'static str) -> Result<Output, Ext4Error> {
    command
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Ext4Error::Spawn { tool, source })
}

/// debugfs reports failed commands on stderr but still exits 0; every stderr line other than its
/// version banner is a failure.
fn debugfs_errors(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("debugfs "))
        .take(MAX_REPORTED_ERRORS)
        .map(str::to_owned)
        .collect()
}

/// The image size for `content_bytes` of data: content, half again, plus headroom, at least
/// [`MIN_IMAGE_BYTES`], in whole MiB.
pub fn image_size(content_bytes: u64) -> u64 {
    let wanted = content_bytes
        .saturating_add(content_bytes / 2)
        .saturating_add(HEADROOM_BYTES)
        .max(MIN_IMAGE_BYTES);
    wanted.div_ceil(SIZE_ALIGN) * SIZE_ALIGN
}

/// The debugfs command file, and what writing it learnt about the tree.
struct MetadataBatch {
    entries: u64,
    content_bytes: u64,
}

impl MetadataBatch {
    /// Writes the batch for `tree` to `path`; xattr values go to files in `work_dir`.
    fn write(tree: &RootfsTree, path: &Path, work_dir: &Path) -> Result<Self, Ext4Error> {
        let io_err = |p: &Path| {
            let path = p.to_owned();
            move |source| Ext4Error::Io { path, source }
        };
        let file = File::create(path).map_err(io_err(path))?;
        let mut out = BatchFile {
            out: BufWriter::new(file),
            path: path.to_owned(),
        };
        let mut content_bytes = 0u64;
        let mut seen_inodes = HashSet::new();
        let mut xattr_files = 0usize;
        // BTreeMap order puts every directory before its contents.
        for (rel, meta) in &tree.entries {
            let image_path = Path::new("/").join(rel);
            let quoted = quote(image_path.as_os_str())?;
            content_bytes += BLOCK_SIZE / 16; // the inode itself
            match &meta.kind {
                EntryKind::File => {
                    let host = tree.root.join(rel);
                    let stat = fs::symlink_metadata(&host).map_err(io_err(&host))?;
                    if seen_inodes.insert(stat.ino()) {
                        content_bytes += stat.len().div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
                    }
                }
                EntryKind::Directory => content_bytes += BLOCK_SIZE,
                EntryKind::Symlink { target } => {
                    // Targets up to 60 bytes live in the inode.
                    if target.as_os_str().len() > 60 {
                        content_bytes += BLOCK_SIZE;
                    }
                }
                EntryKind::CharDevice { .. } | EntryKind::BlockDevice { .. } | EntryKind::Fifo => {
                    write_mknod(&mut out, &image_path, meta)?;
                }
            }
            let mode = meta.kind.type_bits() | (meta.mode & 0o7777);
            for (field, value) in [
                ("uid", meta.uid.to_string()),
                ("gid", meta.gid.to_string()),
                ("mode", format!("0{mode:o}")),
                ("mtime", format!("@{}", meta.mtime)),
            ] {
                out.line(
                    &[b"sif", &quoted, field.as_bytes(), value.as_bytes()],
                    &image_path,
                )?;
            }
            for (name, value) in &meta.xattrs {
                let value_path = work_dir.join(format!("xattr-{xattr_files}"));
                xattr_files += 1;
                fs::write(&value_path, value).map_err(io_err(&value_path))?;
                out.line(
                    &[
                        b"ea_set",
                        b"-f",
                        &quote(value_path.as_os_str())?,
                        &quoted,
                        &quote(OsStr::new(name))?,
                    ],
                    &image_path,
                )?;
            }
        }
        out.out.flush().map_err(io_err(path))?;
        Ok(Self {
            entries: tree.entries.len() as u64,
            content_bytes,
        })
    }
}

/// The debugfs command file being written. Every line goes through [`BatchFile::line`], the
/// one place that keeps bytes from an image from becoming a command of their own.
struct BatchFile {
    out: BufWriter<File>,
    path: PathBuf,
}

impl BatchFile {
    /// Writes one command for the image entry `entry`; its words are quoted already.
    fn line(&mut self, words: &[&[u8]], entry: &Path) -> Result<(), Ext4Error> {
        let line = checked_line(words, entry)?;
        self.out.write_all(&line).map_err(|source| Ext4Error::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// One batch line, newline included, or why it cannot be written safely: a line break or NUL
/// inside it, or a length debugfs would cut into pieces.
fn checked_line(words: &[&[u8]], entry: &Path) -> Result<Vec<u8>, Ext4Error> {
    let mut line = words.join(&b' ');
    if line.iter().any(|b| matches!(b, b'\n' | b'\r' | 0)) {
        return Err(Ext4Error::UnrepresentableName {
            path: shorten(entry),
        });
    }
    line.push(b'\n');
    if line.len() > MAX_BATCH_LINE_BYTES {
        return Err(Ext4Error::CommandTooLong {
            path: shorten(entry),
            bytes: line.len(),
            limit: MAX_BATCH_LINE_BYTES,
        });
    }
    Ok(line)
}

/// An image path for an error message, cut to a readable length.
fn shorten(path: &Path) -> String {
    const SHOWN: usize = 200;
    let text = path.to_string_lossy();
    match text.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.into_owned(),
    }
}

/// debugfs's `mknod` links the new node into the current directory under the name given, so it
/// runs from the parent directory.
fn write_mknod(out: &mut BatchFile, image_path: &Path, meta: &EntryMeta) -> Result<(), Ext4Error> {
    let display = image_path.display().to_string();
    let parent = image_path.parent().unwrap_or(Path::new("/"));
    let name = image_path.file_name().unwrap_or_default();
    let spec = match meta.kind {
        EntryKind::Fifo => "p".to_owned(),
        EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } => {
            if major > MAX_DEVICE_NUMBER || minor > MAX_DEVICE_NUMBER {
                return Err(Ext4Error::DeviceNumberTooLarge {
                    path: display,
                    major,
                    minor,
                });
            }
            let kind = if matches!(meta.kind, EntryKind::CharDevice { .. }) {
                'c'
            } else {
                'b'
            };
            format!("{kind} {major} {minor}")
        }
        EntryKind::Directory | EntryKind::File | EntryKind::Symlink { .. } => {
            unreachable!("only table-only entries are created with mknod")
        }
    };
    out.line(&[b"cd", &quote(parent.as_os_str())?], image_path)?;
    out.line(&[b"mknod", &quote(name)?, spec.as_bytes()], image_path)?;
    out.line(&[b"cd", b"/"], image_path)
}

/// Quotes `arg` for debugfs's command parser (`ss_parse`): wrapped in double quotes, with each
/// `"` doubled; other bytes (spaces, `!`, `#`, non-UTF-8) pass through untouched, which inside
/// quotes is safe only because no line is ever cut ([`checked_line`]). Line breaks and NUL
/// cannot be expressed: debugfs reads its batch line by line, as C strings.
fn quote(arg: &OsStr) -> Result<Vec<u8>, Ext4Error> {
    let bytes = arg.as_bytes();
    if bytes.iter().any(|b| matches!(b, b'\n' | b'\r' | 0)) {
        return Err(Ext4Error::UnrepresentableName {
            path: arg.to_string_lossy().into_owned(),
        });
    }
    let mut quoted = Vec::with_capacity(bytes.len() + 2);
    quoted.push(b'"');
    for b in bytes {
        if *b == b'"' {
            quoted.push(b'"');
        }
        quoted.push(*b);
    }
    quoted.push(b'"');
    Ok(quoted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_quotes_and_refuses_newlines() {
        assert_eq!(quote(OsStr::new("/a b/c")).unwrap(), b"\"/a b/c\"");
        assert_eq!(quote(OsStr::new("/x\"y")).unwrap(), b"\"/x\"\"y\"");
        assert!(matches!(
            quote(OsStr::new("/a\nb")),
            Err(Ext4Error::UnrepresentableName { .. })
        ));
    }

    /// Issue 19: a name debugfs would read in two pieces must never be written, since the
    /// second piece could start with `!` and run on the host.
    #[test]
    fn batch_lines_are_bounded() {
        let entry = Path::new("/etc/passwd");
        let ok = checked_line(&[b"sif", b"\"/etc/passwd\"", b"uid", b"0"], entry).unwrap();
        assert_eq!(ok, b"sif \"/etc/passwd\" uid 0\n");
        let mut crafted = vec![b' '; 16 * 1024];
        crafted.extend_from_slice(b"!touch /tmp/pwned #");
        let name = quote(OsStr::from_bytes(&crafted)).unwrap();
        let err = checked_line(&[b"ea_set", b"-f", b"\"/v\"", b"\"/f\"", &name], entry);
        match err {
            Err(Ext4Error::CommandTooLong { bytes, limit, path }) => {
                assert!(bytes > limit && limit == MAX_BATCH_LINE_BYTES);
                assert_eq!(path, "/etc/passwd");
            }
            other => panic!("{other:?}"),
        }
        // Exactly at the limit is fine, one byte above is not.
        let fill = vec![b'a'; MAX_BATCH_LINE_BYTES - 1];
        assert!(checked_line(&[&fill], entry).is_ok());
        let fill = vec![b'a'; MAX_BATCH_LINE_BYTES];
        assert!(checked_line(&[&fill], entry).is_err());
        assert!(matches!(
            checked_line(&[b"sif", b"\"/a\0b\""], entry),
            Err(Ext4Error::UnrepresentableName { .. })
        ));
        let long = "x".repeat(500);
        assert_eq!(shorten(Path::new(&long)).chars().count(), 201);
    }

    #[test]
    fn sizes_have_headroom_and_a_minimum() {
        assert_eq!(image_size(0), MIN_IMAGE_BYTES);
        assert_eq!(image_size(10 << 20), (512 + 15) << 20);
        assert_eq!(image_size(1 << 30), (1024 + 512 + 512) << 20);
        assert_eq!(image_size(1) % SIZE_ALIGN, 0);
    }
}
