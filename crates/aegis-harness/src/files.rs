//! File operations of the data service: stat, list, mkdir, remove, rename, read, an atomic
//! write, and tar archives out of and into the guest. Paths are guest paths, resolved here by
//! the guest's kernel; the harness runs as root, so ownership is given explicitly (`owner`).
//!
//! Each operation runs on a blocking thread with the connection in blocking mode: file system
//! calls may take long (a recursive remove, a large archive) and must never hold up the
//! control channel or the runtime. Transfers use the frames of `aegis_proto::control` with an
//! idle limit, so a host that goes silent releases the thread.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aegis_proto::control::{
    frame_header, DataReply, DataRequest, FileEntry, FileErrorKind, FileKind, MAX_FRAME_BYTES,
    MAX_LIST_DEPTH, MAX_LIST_ENTRIES,
};

use crate::process::user::Accounts;

/// How long a transfer may wait for the host's next bytes, or for the host to take ours.
const IDLE_LIMIT: Duration = Duration::from_secs(60);
/// Payload gathered before a frame is sent.
const FRAME_TARGET: usize = 256 * 1024;

/// A failed file operation: what kind, and the message the user sees.
#[derive(Debug)]
struct Failure {
    kind: FileErrorKind,
    message: String,
}

type Outcome<T> = Result<T, Failure>;

fn invalid(message: String) -> Failure {
    Failure {
        kind: FileErrorKind::Invalid,
        message,
    }
}

/// Names the failing operation and path, and classifies the error as the host needs it.
fn io_failure(what: &str, path: &Path, e: &io::Error) -> Failure {
    let kind = match (e.kind(), e.raw_os_error()) {
        (io::ErrorKind::NotFound, _) => FileErrorKind::NotFound,
        (io::ErrorKind::AlreadyExists, _) => FileErrorKind::Exists,
        (io::ErrorKind::PermissionDenied, _) => FileErrorKind::Denied,
        (_, Some(libc::EISDIR)) => FileErrorKind::IsDir,
        (_, Some(libc::ENOTDIR)) => FileErrorKind::NotDir,
        (_, Some(libc::ENOTEMPTY)) => FileErrorKind::NotEmpty,
        (_, Some(libc::ENOSPC | libc::EDQUOT)) => FileErrorKind::NoSpace,
        (_, Some(libc::EROFS)) => FileErrorKind::Denied,
        (_, Some(libc::EINVAL | libc::ENAMETOOLONG | libc::ELOOP)) => FileErrorKind::Invalid,
        _ => FileErrorKind::Other,
    };
    Failure {
        kind,
        message: format!("cannot {what} {}: {e}", path.display()),
    }
}

/// Serves one file request on `stream` (blocking), `leftover` being bytes already read past
/// the request line.
pub fn serve(request: DataRequest, mut stream: TcpStream, leftover: Vec<u8>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(IDLE_LIMIT));
    let _ = stream.set_write_timeout(Some(IDLE_LIMIT));
    let outcome = match request {
        DataRequest::Stdin { .. } | DataRequest::Terminal { .. } => {
            Err(invalid("not a file operation".to_owned()))
        }
        DataRequest::Stat { path } => absolute(&path)
            .and_then(|p| entry(&p, &Accounts::load(Path::new("/"))))
            .map(|file| DataReply {
                file: Some(file),
                ..DataReply::ok()
            }),
        DataRequest::List { path, depth } => list(&path, depth).map(|entries| DataReply {
            entries: Some(entries),
            ..DataReply::ok()
        }),
        DataRequest::Mkdir {
            path,
            parents,
            mode,
            owner,
        } => mkdir(&path, parents, mode, owner.as_deref()).map(|file| DataReply {
            file: Some(file),
            ..DataReply::ok()
        }),
        DataRequest::Remove { path, recursive } => {
            remove(&path, recursive).map(|()| DataReply::ok())
        }
        DataRequest::Rename { from, to } => rename(&from, &to).map(|file| DataReply {
            file: Some(file),
            ..DataReply::ok()
        }),
        DataRequest::Read {
            path,
            offset,
            length,
        } => return read(&mut stream, &path, offset, length),
        DataRequest::Write {
            path,
            parents,
            mode,
            owner,
        } => {
            let incoming =
                Frames::new(io::Cursor::new(leftover).chain(stream.try_clone_or_empty()));
            return write(
                &mut stream,
                incoming,
                &path,
                parents,
                mode,
                owner.as_deref(),
            );
        }
        DataRequest::TarOut { path } => return tar_out(&mut stream, &path),
        DataRequest::TarIn { path } => {
            let incoming =
                Frames::new(io::Cursor::new(leftover).chain(stream.try_clone_or_empty()));
            return tar_in(&mut stream, incoming, &path);
        }
    };
    send_outcome(&mut stream, outcome);
}

/// `try_clone` for the reading side; a stream that cannot be cloned reads as empty (the
/// transfer then fails as an early end).
trait CloneForReading {
    fn try_clone_or_empty(&self) -> Box<dyn Read + Send>;
}

impl CloneForReading for TcpStream {
    fn try_clone_or_empty(&self) -> Box<dyn Read + Send> {
        match self.try_clone() {
            Ok(clone) => Box::new(clone),
            Err(_) => Box::new(io::empty()),
        }
    }
}

fn send_outcome(stream: &mut TcpStream, outcome: Outcome<DataReply>) {
    let reply = outcome.unwrap_or_else(|f| DataReply::failed(Some(f.kind), f.message));
    let _ = send_reply(stream, &reply);
}

fn send_reply(stream: &mut TcpStream, reply: &DataReply) -> io::Result<()> {
    let mut line = serde_json::to_vec(reply).unwrap_or_default();
    line.push(b'\n');
    stream.write_all(&line)
}

/// A guest path as given: absolute, no NUL.
fn absolute(path: &str) -> Outcome<PathBuf> {
    if !path.starts_with('/') {
        return Err(invalid(format!("{path:?} is not an absolute path")));
    }
    if path.contains('\0') {
        return Err(invalid("a path cannot contain NUL".to_owned()));
    }
    Ok(PathBuf::from(path))
}

fn entry(path: &Path, accounts: &Accounts) -> Outcome<FileEntry> {
    let meta = fs::symlink_metadata(path).map_err(|e| io_failure("stat", path, &e))?;
    let kind = if meta.is_dir() {
        FileKind::Dir
    } else if meta.is_file() {
        FileKind::File
    } else if meta.file_type().is_symlink() {
        FileKind::Symlink
    } else {
        FileKind::Other
    };
    let target = (kind == FileKind::Symlink)
        .then(|| fs::read_link(path).ok())
        .flatten()
        .map(|t| t.to_string_lossy().into_owned());
    Ok(FileEntry {
        name: path
            .file_name()
            .map_or_else(|| "/".to_owned(), |n| n.to_string_lossy().into_owned()),
        path: path.to_string_lossy().into_owned(),
        kind,
        size: meta.len(),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        owner: accounts.user_name(meta.uid()).map(str::to_owned),
        group: accounts.group_name(meta.gid()).map(str::to_owned),
        mtime: meta.mtime(),
        target,
    })
}

fn list(path: &str, depth: u32) -> Outcome<Vec<FileEntry>> {
    let root = absolute(path)?;
    if !(1..=MAX_LIST_DEPTH).contains(&depth) {
        return Err(invalid(format!(
            "depth {depth} is out of range (1 to {MAX_LIST_DEPTH})"
        )));
    }
    let meta = fs::metadata(&root).map_err(|e| io_failure("list", &root, &e))?;
    if !meta.is_dir() {
        return Err(Failure {
            kind: FileErrorKind::NotDir,
            message: format!("cannot list {}: not a directory", root.display()),
        });
    }
    let accounts = Accounts::load(Path::new("/"));
    let mut out = Vec::new();
    let mut level = vec![root];
    for _ in 0..depth {
        let mut next = Vec::new();
        for dir in level {
            let mut names: Vec<PathBuf> = match fs::read_dir(&dir) {
                Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
                // A subdirectory that cannot be read is left out; the top one is an error.
                Err(e) if out.is_empty() && next.is_empty() => {
                    return Err(io_failure("list", &dir, &e))
                }
                Err(_) => continue,
            };
            names.sort();
            for path in names {
                let Ok(file) = entry(&path, &accounts) else {
                    continue;
                };
                if file.kind == FileKind::Dir {
                    next.push(path);
                }
                out.push(file);
                if out.len() > MAX_LIST_ENTRIES {
                    return Err(invalid(format!(
                        "more than {MAX_LIST_ENTRIES} entries: list a smaller depth or a \
                         subdirectory"
                    )));
                }
            }
        }
        level = next;
    }
    Ok(out)
}

/// Resolves an owner spec to (uid, gid).
fn owner_ids(owner: Option<&str>) -> Outcome<Option<(u32, u32)>> {
    let Some(spec) = owner else {
        return Ok(None);
    };
    let identity = Accounts::load(Path::new("/"))
        .resolve(spec)
        .map_err(|e| invalid(format!("owner: {e}")))?;
    Ok(Some((identity.uid, identity.gid)))
}

fn check_mode(mode: Option<u32>) -> Outcome<()> {
    match mode {
        Some(m) if m > 0o7777 => Err(invalid(format!(
            "mode {m:o} is not a permission mode (at most 7777 in octal)"
        ))),
        _ => Ok(()),
    }
}

fn chown(path: &Path, ids: Option<(u32, u32)>) -> Outcome<()> {
    if let Some((uid, gid)) = ids {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .map_err(|e| io_failure("set the owner of", path, &e))?;
    }
    Ok(())
}

fn mkdir(path: &str, parents: bool, mode: Option<u32>, owner: Option<&str>) -> Outcome<FileEntry> {
    let path = absolute(path)?;
    check_mode(mode)?;
    let ids = owner_ids(owner)?;
    let made = if parents {
        fs::create_dir_all(&path)
    } else {
        fs::create_dir(&path)
    };
    made.map_err(|e| io_failure("create the directory", &path, &e))?;
    let meta = fs::metadata(&path).map_err(|e| io_failure("stat", &path, &e))?;
    if !meta.is_dir() {
        return Err(Failure {
            kind: FileErrorKind::Exists,
            message: format!("{} exists and is not a directory", path.display()),
        });
    }
    // Explicit, so the harness's umask does not decide.
    fs::set_permissions(&path, fs::Permissions::from_mode(mode.unwrap_or(0o755)))
        .map_err(|e| io_failure("set the mode of", &path, &e))?;
    chown(&path, ids)?;
    entry(&path, &Accounts::load(Path::new("/")))
}

fn remove(path: &str, recursive: bool) -> Outcome<()> {
    let path = absolute(path)?;
    if path == Path::new("/") {
        return Err(invalid("refusing to remove /".to_owned()));
    }
    let meta = fs::symlink_metadata(&path).map_err(|e| io_failure("remove", &path, &e))?;
    let removed = match (meta.is_dir(), recursive) {
        (true, true) => fs::remove_dir_all(&path),
        (true, false) => fs::remove_dir(&path),
        (false, _) => fs::remove_file(&path),
    };
    removed.map_err(|e| io_failure("remove", &path, &e))
}

fn rename(from: &str, to: &str) -> Outcome<FileEntry> {
    let (from, to) = (absolute(from)?, absolute(to)?);
    fs::rename(&from, &to).map_err(|e| io_failure("rename", &from, &e))?;
    entry(&to, &Accounts::load(Path::new("/")))
}

/// Sends payloads as frames, gathered to about [`FRAME_TARGET`] bytes.
struct FrameWriter<'a> {
    stream: &'a mut TcpStream,
    pending: Vec<u8>,
    sent: u64,
}

impl<'a> FrameWriter<'a> {
    fn new(stream: &'a mut TcpStream) -> FrameWriter<'a> {
        FrameWriter {
            stream,
            pending: Vec::with_capacity(FRAME_TARGET),
            sent: 0,
        }
    }

    fn send_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.stream.write_all(&frame_header(self.pending.len()))?;
        self.stream.write_all(&self.pending)?;
        self.sent += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// Sends what is pending and the empty frame; returns the payload bytes sent.
    fn finish(mut self) -> io::Result<u64> {
        self.send_pending()?;
        self.stream.write_all(&frame_header(0))?;
        Ok(self.sent)
    }
}

impl Write for FrameWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = FRAME_TARGET.saturating_sub(self.pending.len()).max(1);
        let n = buf.len().min(room);
        self.pending.extend_from_slice(&buf[..n]);
        if self.pending.len() >= FRAME_TARGET {
            self.send_pending()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_pending()
    }
}

/// Reads the payloads of incoming frames as one stream; end-of-file at the empty frame. A
/// connection that ends before it is an error ([`io::ErrorKind::UnexpectedEof`]), so nothing
/// treats a cut transfer as a complete one.
struct Frames<R> {
    inner: R,
    left: usize,
    ended: bool,
}

impl<R: Read> Frames<R> {
    fn new(inner: R) -> Frames<R> {
        Frames {
            inner,
            left: 0,
            ended: false,
        }
    }
}

impl<R: Read> Read for Frames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.ended || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut header = [0u8; 4];
            self.inner.read_exact(&mut header)?;
            let len = u32::from_be_bytes(header) as usize;
            if len == 0 {
                self.ended = true;
                return Ok(0);
            }
            if len > MAX_FRAME_BYTES {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a frame of {len} bytes is over the {MAX_FRAME_BYTES}-byte limit"),
                ));
            }
            self.left = len;
        }
        let want = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= n;
        Ok(n)
    }
}

fn read(stream: &mut TcpStream, path: &str, offset: u64, length: Option<u64>) {
    let opened = absolute(path).and_then(|path| {
        let file = File::open(&path).map_err(|e| io_failure("read", &path, &e))?;
        let meta = file.metadata().map_err(|e| io_failure("read", &path, &e))?;
        if meta.is_dir() {
            return Err(Failure {
                kind: FileErrorKind::IsDir,
                message: format!("cannot read {}: it is a directory", path.display()),
            });
        }
        Ok((path, file, meta.len()))
    });
    let (path, mut file, size) = match opened {
        Ok(opened) => opened,
        Err(failure) => return send_outcome(stream, Err(failure)),
    };
    let available = size.saturating_sub(offset);
    let count = length.map_or(available, |l| l.min(available));
    let accepted = DataReply {
        bytes: Some(count),
        ..DataReply::ok()
    };
    if send_reply(stream, &accepted).is_err() {
        return;
    }
    let copied = file
        .seek(SeekFrom::Start(offset))
        .and_then(|_| {
            let mut frames = FrameWriter::new(stream);
            io::copy(&mut (&mut file).take(count), &mut frames)?;
            frames.finish()
        })
        .map_err(|e| io_failure("read", &path, &e));
    let last = copied.map(|bytes| DataReply {
        bytes: Some(bytes),
        ..DataReply::ok()
    });
    send_outcome(stream, last);
}

/// A write's target, checked before the host sends anything: the path, the mode the file gets,
/// and its owner when one is set.
struct Target {
    path: PathBuf,
    mode: u32,
    ids: Option<(u32, u32)>,
}

/// Where a write goes, checked before the host sends anything.
fn prepare_write(
    path: &str,
    parents: bool,
    mode: Option<u32>,
    owner: Option<&str>,
) -> Outcome<Target> {
    let path = absolute(path)?;
    check_mode(mode)?;
    let mut ids = owner_ids(owner)?;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| invalid("cannot write /".to_owned()))?;
    if parents {
        fs::create_dir_all(parent).map_err(|e| io_failure("create the directory", parent, &e))?;
    }
    let mut final_mode = mode.unwrap_or(0o644);
    match fs::metadata(&path) {
        Ok(meta) if meta.is_dir() => {
            return Err(Failure {
                kind: FileErrorKind::IsDir,
                message: format!("cannot write {}: it is a directory", path.display()),
            })
        }
        // Replacing a file keeps what it was unless told otherwise.
        Ok(meta) => {
            final_mode = mode.unwrap_or(meta.mode() & 0o7777);
            ids = ids.or(Some((meta.uid(), meta.gid())));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let meta = fs::metadata(parent).map_err(|e| io_failure("write into", parent, &e))?;
            if !meta.is_dir() {
                return Err(Failure {
                    kind: FileErrorKind::NotDir,
                    message: format!("cannot write into {}: not a directory", parent.display()),
                });
            }
        }
        Err(e) => return Err(io_failure("write", &path, &e)),
    }
    Ok(Target {
        path,
        mode: final_mode,
        ids,
    })
}

/// A temporary file beside the target, removed unless it was renamed into place.
struct Staged {
    path: PathBuf,
    done: bool,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn write(
    stream: &mut TcpStream,
    mut incoming: Frames<impl Read>,
    path: &str,
    parents: bool,
    mode: Option<u32>,
    owner: Option<&str>,
) {
    let Target { path, mode, ids } = match prepare_write(path, parents, mode, owner) {
        Ok(prepared) => prepared,
        Err(failure) => return send_outcome(stream, Err(failure)),
    };
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let mut staged = Staged {
        path: path.with_file_name(format!(".{name}.aegis-{:08x}", nonce())),
        done: false,
    };
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staged.path);
    let file = match file {
        Ok(file) => file,
        Err(e) => return send_outcome(stream, Err(io_failure("write", &path, &e))),
    };
    if send_reply(stream, &DataReply::ok()).is_err() {
        return;
    }
    let written = (|| -> Outcome<u64> {
        let mut out = BufWriter::with_capacity(FRAME_TARGET, file);
        let bytes = io::copy(&mut incoming, &mut out).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                Failure {
                    kind: FileErrorKind::Other,
                    message: format!(
                        "the upload of {} ended early; the file is unchanged",
                        path.display()
                    ),
                }
            }
            _ => io_failure("write", &path, &e),
        })?;
        let file = out
            .into_inner()
            .map_err(|e| io_failure("write", &path, e.error()))?;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| io_failure("set the mode of", &path, &e))?;
        chown(&staged.path, ids)?;
        file.sync_all().map_err(|e| io_failure("sync", &path, &e))?;
        fs::rename(&staged.path, &path).map_err(|e| io_failure("write", &path, &e))?;
        staged.done = true;
        if let Some(parent) = path.parent() {
            // The rename itself survives a crash once the directory is synced.
            let _ = File::open(parent).and_then(|d| d.sync_all());
        }
        Ok(bytes)
    })();
    let last = written.and_then(|bytes| {
        Ok(DataReply {
            bytes: Some(bytes),
            file: Some(entry(&path, &Accounts::load(Path::new("/")))?),
            ..DataReply::ok()
        })
    });
    send_outcome(stream, last);
}

fn tar_out(stream: &mut TcpStream, path: &str) {
    let checked = absolute(path).and_then(|path| {
        fs::symlink_metadata(&path).map_err(|e| io_failure("archive", &path, &e))?;
        Ok(path)
    });
    let path = match checked {
        Ok(path) => path,
        Err(failure) => return send_outcome(stream, Err(failure)),
    };
    if send_reply(stream, &DataReply::ok()).is_err() {
        return;
    }
    let name = path
        .file_name()
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    let archived = (|| -> io::Result<u64> {
        let mut builder = tar::Builder::new(FrameWriter::new(stream));
        builder.follow_symlinks(false);
        if fs::symlink_metadata(&path)?.is_dir() {
            builder.append_dir_all(&name, &path)?;
        } else {
            builder.append_path_with_name(&path, &name)?;
        }
        builder.into_inner()?.finish()
    })()
    .map_err(|e| io_failure("archive", &path, &e));
    let last = archived.map(|bytes| DataReply {
        bytes: Some(bytes),
        ..DataReply::ok()
    });
    send_outcome(stream, last);
}

fn tar_in(stream: &mut TcpStream, incoming: Frames<impl Read>, path: &str) {
    let checked = absolute(path).and_then(|path| {
        let meta = fs::metadata(&path).map_err(|e| io_failure("unpack into", &path, &e))?;
        if !meta.is_dir() {
            return Err(Failure {
                kind: FileErrorKind::NotDir,
                message: format!("cannot unpack into {}: not a directory", path.display()),
            });
        }
        Ok(path)
    });
    let path = match checked {
        Ok(path) => path,
        Err(failure) => return send_outcome(stream, Err(failure)),
    };
    if send_reply(stream, &DataReply::ok()).is_err() {
        return;
    }
    let mut archive = tar::Archive::new(incoming);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    let unpacked = archive
        .unpack(&path)
        .map_err(|e| io_failure("unpack into", &path, &e));
    send_outcome(stream, unpacked.map(|()| DataReply::ok()));
}

/// A value for temporary names: the clock's nanoseconds and the thread, enough to keep two
/// writes of one file apart.
fn nonce() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    nanos ^ std::process::id().rotate_left(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_end_at_the_empty_frame_and_a_cut_is_an_error() {
        let mut wire = Vec::new();
        for payload in [&b"hello "[..], b"world"] {
            wire.extend_from_slice(&frame_header(payload.len()));
            wire.extend_from_slice(payload);
        }
        let mut whole = wire.clone();
        whole.extend_from_slice(&frame_header(0));
        let mut out = String::new();
        Frames::new(&whole[..]).read_to_string(&mut out).unwrap();
        assert_eq!(out, "hello world");
        let err = Frames::new(&wire[..])
            .read_to_string(&mut String::new())
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn errors_are_classified() {
        let path = Path::new("/x");
        let kind = |e: io::Error| io_failure("open", path, &e).kind;
        assert_eq!(
            kind(io::ErrorKind::NotFound.into()),
            FileErrorKind::NotFound
        );
        assert_eq!(
            kind(io::Error::from_raw_os_error(libc::ENOTEMPTY)),
            FileErrorKind::NotEmpty
        );
        assert_eq!(
            kind(io::Error::from_raw_os_error(libc::ENOSPC)),
            FileErrorKind::NoSpace
        );
        assert!(absolute("relative").is_err());
        assert!(check_mode(Some(0o10000)).is_err());
    }
}
