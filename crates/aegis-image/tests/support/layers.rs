//! Builds layer tarballs entry by entry, including the odd entries real images contain
//! (whiteouts, device nodes, xattrs) and malicious ones (raw paths with `..`).

use std::io::Write;

/// A layer under construction.
pub struct Layer {
    builder: tar::Builder<Vec<u8>>,
}

/// The mtime every test entry gets.
pub const MTIME: u64 = 1_700_000_000;

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    pub fn new() -> Self {
        Self {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, uid: u64, gid: u64, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(MTIME);
        h.set_size(size);
        h.set_device_major(0).unwrap();
        h.set_device_minor(0).unwrap();
        h
    }

    pub fn dir(&mut self, path: &str, mode: u32, uid: u64, gid: u64) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Directory, mode, uid, gid, 0);
        self.builder.append_data(&mut h, path, &b""[..]).unwrap();
        self
    }

    pub fn file(&mut self, path: &str, mode: u32, uid: u64, gid: u64, data: &[u8]) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Regular, mode, uid, gid, data.len() as u64);
        self.builder.append_data(&mut h, path, data).unwrap();
        self
    }

    pub fn file_with_xattrs(
        &mut self,
        path: &str,
        mode: u32,
        data: &[u8],
        xattrs: &[(&str, &[u8])],
    ) -> &mut Self {
        let records: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
            .collect();
        self.builder
            .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
            .unwrap();
        self.file(path, mode, 0, 0, data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0, 0, 0);
        self.builder.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Link, 0o644, 0, 0, 0);
        self.builder.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Char, mode, 0, 0, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.builder.append_data(&mut h, path, &b""[..]).unwrap();
        self
    }

    pub fn fifo(&mut self, path: &str, mode: u32) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Fifo, mode, 0, 0, 0);
        self.builder.append_data(&mut h, path, &b""[..]).unwrap();
        self
    }

    /// Deletes `path` of lower layers.
    pub fn whiteout(&mut self, path: &str) -> &mut Self {
        let (dir, name) = path.rsplit_once('/').map_or(("", path), |(d, n)| (d, n));
        let wh = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.file(&wh, 0o644, 0, 0, b"")
    }

    /// Hides what lower layers have in `dir`.
    pub fn opaque(&mut self, dir: &str) -> &mut Self {
        self.file(&format!("{dir}/.wh..wh..opq"), 0o644, 0, 0, b"")
    }

    /// A regular file whose name is written verbatim into the header, bypassing the tar crate's
    /// path checks, to express malicious names such as `../x` or `/abs`.
    pub fn raw_file(&mut self, raw_path: &str, data: &[u8]) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Regular, 0o644, 0, 0, data.len() as u64);
        let name = &mut h.as_old_mut().name;
        name[..raw_path.len()].copy_from_slice(raw_path.as_bytes());
        h.set_cksum();
        self.builder.append(&h, data).unwrap();
        self
    }

    /// An entry of `kind` whose path and link target are written verbatim into the header.
    pub fn raw_link(
        &mut self,
        kind: tar::EntryType,
        raw_path: &str,
        raw_target: &str,
    ) -> &mut Self {
        let mut h = Self::header(kind, 0o777, 0, 0, 0);
        h.as_old_mut().name[..raw_path.len()].copy_from_slice(raw_path.as_bytes());
        h.as_old_mut().linkname[..raw_target.len()].copy_from_slice(raw_target.as_bytes());
        h.set_cksum();
        self.builder.append(&h, &b""[..]).unwrap();
        self
    }

    pub fn tar(self) -> Vec<u8> {
        self.builder.into_inner().unwrap()
    }

    pub fn gzip(self) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&self.tar()).unwrap();
        gz.finish().unwrap()
    }

    pub fn zstd(self) -> Vec<u8> {
        zstd::encode_all(self.tar().as_slice(), 3).unwrap()
    }
}

/// A gzip layer holding `files` files of `size` zero bytes each: a gzip bomb. Streamed into the
/// encoder, so the expanded bytes never exist in memory.
pub fn gzip_bomb(files: usize, size: u64) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let zeros = vec![0u8; 1 << 20];
    for i in 0..files {
        let mut h = Layer::header(tar::EntryType::Regular, 0o644, 0, 0, size);
        h.set_path(format!("zeros/{i}")).unwrap();
        h.set_cksum();
        gz.write_all(h.as_bytes()).unwrap();
        let mut left = size.div_ceil(512) * 512;
        while left > 0 {
            let n = usize::try_from(left.min(zeros.len() as u64)).unwrap();
            gz.write_all(&zeros[..n]).unwrap();
            left -= n as u64;
        }
    }
    gz.write_all(&[0u8; 1024]).unwrap();
    gz.finish().unwrap()
}

/// A gzip layer whose first header is an extended header (`kind`: `x`, `g`, `L` or `K`) claiming
/// `claimed` bytes, followed by `present` bytes of `a` and a regular file: built by hand, as the
/// tar crate writes no such thing.
pub fn huge_extended_header(kind: tar::EntryType, claimed: u64, present: u64) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut h = tar::Header::new_ustar();
    h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(claimed);
    h.set_cksum();
    gz.write_all(h.as_bytes()).unwrap();
    let fill = vec![b'a'; 1 << 20];
    let mut left = present;
    while left > 0 {
        let n = usize::try_from(left.min(fill.len() as u64)).unwrap();
        gz.write_all(&fill[..n]).unwrap();
        left -= n as u64;
    }
    let padding = (512 - present % 512) % 512;
    gz.write_all(&vec![0u8; usize::try_from(padding).unwrap()])
        .unwrap();
    let mut file = Layer::new();
    file.file("after", 0o644, 0, 0, b"x");
    gz.write_all(&file.tar()).unwrap();
    gz.finish().unwrap()
}
