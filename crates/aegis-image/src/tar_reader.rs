//! Reads a tar stream entry by entry with every header bounded, for layers and archives.
//!
//! The `tar` crate reads GNU long names, long links and PAX extended headers whole into memory,
//! whatever size their header claims, and gives its caller no chance to refuse them first; a
//! layer of a few KiB of gzip can claim (and, decompressed, deliver) a 1 GiB "file name". This
//! reader therefore frames the stream itself, 512-byte block by block, and uses `tar::Header`
//! only to decode fields. It refuses, from the header and before reading the body:
//! - an extended header (PAX `x`/`g`, GNU `L`/`K`) larger than [`MAX_EXTENDED_HEADER_BYTES`],
//!   and a GNU sparse map longer than that;
//! - any header or data that would take the stream past the byte budget its caller sets (the
//!   image size limit of [`crate::unpack`]), so a gzip bomb is refused at the entry that crosses
//!   the limit, without writing it.
//!
//! The entries are read as the `tar` crate reads them: PAX `path`, `linkpath`, `size`, `uid` and
//! `gid` override the header, GNU long names override both, a zero block ends the archive, and
//! GNU sparse files come with their map. What entries mean (paths, types, whiteouts) is left to
//! [`crate::unpack`] and [`crate::import`].

use std::fmt;
use std::io::{self, Read};

/// Largest extended header (PAX record block, GNU long name or long link, GNU sparse map)
/// accepted. Real ones hold a path of at most `PATH_MAX` (4 KiB) or a few xattrs of which the
/// largest the kernel takes is 64 KiB; 1 MiB leaves room for all of them at once.
pub const MAX_EXTENDED_HEADER_BYTES: u64 = 1 << 20;
/// Size of a tar block: headers are one block, bodies are padded to whole blocks.
const BLOCK: u64 = 512;
/// Blocks of a GNU sparse map (after the header) accepted, per [`MAX_EXTENDED_HEADER_BYTES`].
const MAX_SPARSE_MAP_BLOCKS: u64 = MAX_EXTENDED_HEADER_BYTES / BLOCK;

/// The kinds of header that describe the next entry instead of being one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtendedHeader {
    /// A PAX extended header (`x`): records for the next entry.
    Pax,
    /// A PAX global header (`g`): records for all entries (ignored, as by the `tar` crate).
    PaxGlobal,
    /// A GNU long name (`L`, `././@LongLink`).
    GnuLongName,
    /// A GNU long link target (`K`).
    GnuLongLink,
    /// The extension blocks of a GNU sparse file's map.
    GnuSparseMap,
}

impl fmt::Display for ExtendedHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pax => "PAX extended header",
            Self::PaxGlobal => "PAX global header",
            Self::GnuLongName => "GNU long name header",
            Self::GnuLongLink => "GNU long link header",
            Self::GnuSparseMap => "GNU sparse map",
        })
    }
}

/// Why the stream could not be read. The callers add which layer or archive it was.
#[derive(Debug)]
pub(crate) enum TarError {
    /// The stream failed, ended early or is not a tar archive.
    Read(io::Error),
    /// An extended header claims more than [`MAX_EXTENDED_HEADER_BYTES`].
    ExtendedHeaderTooLarge {
        /// Which kind.
        kind: ExtendedHeader,
        /// The size it claims (for a sparse map: the bytes read before giving up).
        size: u64,
    },
    /// The next header or body would take the stream past its budget.
    OverBudget,
}

fn malformed(what: &str) -> TarError {
    TarError::Read(io::Error::new(io::ErrorKind::InvalidData, what.to_owned()))
}

/// The data chunks of a GNU sparse file: `(offset in the file, length)`, in order; the archive
/// holds the chunks back to back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SparseMap {
    /// The chunks.
    pub chunks: Vec<(u64, u64)>,
    /// The file's size, holes included.
    pub real_size: u64,
}

/// One entry's header, with its extended headers applied.
#[derive(Debug)]
pub(crate) struct TarEntry {
    /// The header block; `uid` and `gid` already carry the PAX overrides.
    pub header: tar::Header,
    /// The path (GNU long name, else PAX `path`, else the header's).
    pub path: Vec<u8>,
    /// The link target (GNU long link, else PAX `linkpath`, else the header's); empty if none.
    pub link_name: Vec<u8>,
    /// The PAX records of this entry, raw.
    pub pax: Option<Vec<u8>>,
    /// Bytes of data in the archive.
    pub size: u64,
    /// Offset of the data in the stream.
    pub data_position: u64,
    /// The map of a GNU sparse file.
    pub sparse: Option<SparseMap>,
}

/// A tar stream read entry by entry (see the module docs).
pub(crate) struct TarReader<R> {
    inner: R,
    position: u64,
    budget: u64,
    charged: u64,
    data_left: u64,
    padding_left: u64,
    finished: bool,
}

impl<R: Read> TarReader<R> {
    /// Reads `inner`, never past `budget` bytes (GNU sparse holes count as bytes).
    pub fn new(inner: R, budget: u64) -> Self {
        Self {
            inner,
            position: 0,
            budget,
            charged: 0,
            data_left: 0,
            padding_left: 0,
            finished: false,
        }
    }

    /// Bytes of the budget used so far.
    pub fn charged(&self) -> u64 {
        self.charged
    }

    /// The next entry, skipping what is left of the current one's data; `None` at the end.
    pub fn next_entry(&mut self) -> Result<Option<TarEntry>, TarError> {
        if self.finished {
            return Ok(None);
        }
        self.skip_rest()?;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax: Option<Vec<u8>> = None;
        loop {
            let Some(mut header) = self.read_header()? else {
                self.finished = true;
                if long_name.is_some() || long_link.is_some() || pax.is_some() {
                    return Err(malformed(
                        "extended headers at the end of the archive describe no entry",
                    ));
                }
                return Ok(None);
            };
            let entry_type = header.entry_type();
            let extended = if entry_type.is_pax_local_extensions() {
                Some(ExtendedHeader::Pax)
            } else if entry_type.is_pax_global_extensions() {
                Some(ExtendedHeader::PaxGlobal)
            } else if entry_type.is_gnu_longname() {
                Some(ExtendedHeader::GnuLongName)
            } else if entry_type.is_gnu_longlink() {
                Some(ExtendedHeader::GnuLongLink)
            } else {
                None
            };
            if let Some(kind) = extended {
                let size = header.entry_size().map_err(TarError::Read)?;
                if size > MAX_EXTENDED_HEADER_BYTES {
                    return Err(TarError::ExtendedHeaderTooLarge { kind, size });
                }
                let body = self.read_body(size)?;
                let slot = match kind {
                    ExtendedHeader::Pax => &mut pax,
                    ExtendedHeader::GnuLongName => &mut long_name,
                    ExtendedHeader::GnuLongLink => &mut long_link,
                    ExtendedHeader::PaxGlobal | ExtendedHeader::GnuSparseMap => continue,
                };
                if slot.replace(body).is_some() {
                    return Err(malformed("two extended headers of one kind for one entry"));
                }
                continue;
            }

            let records = pax.as_deref();
            if let Some(uid) = records.and_then(|p| pax_number(p, "uid")) {
                header.set_uid(uid);
            }
            if let Some(gid) = records.and_then(|p| pax_number(p, "gid")) {
                header.set_gid(gid);
            }
            let size = match records.and_then(|p| pax_number(p, "size")) {
                Some(size) => size,
                None => header.entry_size().map_err(TarError::Read)?,
            };
            let path = match (long_name, records.and_then(|p| pax_bytes(p, "path"))) {
                (Some(name), _) => strip_nul(name),
                (None, Some(path)) => path,
                (None, None) => header.path_bytes().into_owned(),
            };
            let link_name = match (long_link, records.and_then(|p| pax_bytes(p, "linkpath"))) {
                (Some(name), _) => strip_nul(name),
                (None, Some(link)) => link,
                (None, None) => header
                    .link_name_bytes()
                    .map(|l| l.into_owned())
                    .unwrap_or_default(),
            };
            let sparse = if entry_type.is_gnu_sparse() {
                Some(self.read_sparse_map(&header, size)?)
            } else {
                None
            };
            let padding = padding(size);
            // Holes of a sparse file become bytes on disk: they count like data.
            let holes = sparse
                .as_ref()
                .map_or(0, |s| s.real_size.saturating_sub(size));
            self.charge(
                size.checked_add(padding)
                    .and_then(|n| n.checked_add(holes))
                    .ok_or(TarError::OverBudget)?,
            )?;
            self.data_left = size;
            self.padding_left = padding;
            return Ok(Some(TarEntry {
                header,
                path,
                link_name,
                pax,
                size,
                data_position: self.position,
                sparse,
            }));
        }
    }

    /// The current entry's data.
    pub fn data(&mut self) -> EntryData<'_, R> {
        EntryData { reader: self }
    }

    fn charge(&mut self, bytes: u64) -> Result<(), TarError> {
        let charged = self
            .charged
            .checked_add(bytes)
            .ok_or(TarError::OverBudget)?;
        if charged > self.budget {
            return Err(TarError::OverBudget);
        }
        self.charged = charged;
        Ok(())
    }

    /// Reads one header block; `None` at the end of the archive (end of stream or a zero block).
    fn read_header(&mut self) -> Result<Option<tar::Header>, TarError> {
        self.charge(BLOCK)?;
        let mut header = tar::Header::new_old();
        let block = header.as_mut_bytes();
        let mut filled = 0;
        while filled < block.len() {
            match self.inner.read(&mut block[filled..]) {
                Ok(0) if filled == 0 => return Ok(None),
                Ok(0) => return Err(malformed("the archive ends inside a header")),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TarError::Read(e)),
            }
        }
        self.position += BLOCK;
        if block.iter().all(|b| *b == 0) {
            return Ok(None);
        }
        let sum: u32 = block[..148]
            .iter()
            .chain(&block[156..])
            .map(|b| u32::from(*b))
            .sum::<u32>()
            + 8 * u32::from(b' ');
        if header.cksum().map_err(TarError::Read)? != sum {
            return Err(malformed("archive header checksum mismatch"));
        }
        Ok(Some(header))
    }

    /// Reads an extended header's body (`size` is already checked) and its padding.
    fn read_body(&mut self, size: u64) -> Result<Vec<u8>, TarError> {
        let padding = padding(size);
        self.charge(size + padding)?;
        let mut body = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        (&mut self.inner)
            .take(size)
            .read_to_end(&mut body)
            .map_err(TarError::Read)?;
        if body.len() as u64 != size {
            return Err(malformed("the archive ends inside an extended header"));
        }
        self.position += size;
        self.data_left = 0;
        self.padding_left = padding;
        self.skip_rest()?;
        Ok(body)
    }

    /// Reads the map of a GNU sparse file: four chunks in the header, more in extension blocks.
    fn read_sparse_map(&mut self, header: &tar::Header, size: u64) -> Result<SparseMap, TarError> {
        let gnu = header
            .as_gnu()
            .ok_or_else(|| malformed("a sparse entry without a GNU header"))?;
        let real_size = gnu.real_size().map_err(TarError::Read)?;
        let mut chunks = Vec::new();
        let mut add = |chunk: &tar::GnuSparseHeader| -> Result<(), TarError> {
            if !chunk.is_empty() {
                let offset = chunk.offset().map_err(TarError::Read)?;
                let length = chunk.length().map_err(TarError::Read)?;
                chunks.push((offset, length));
            }
            Ok(())
        };
        for chunk in &gnu.sparse {
            add(chunk)?;
        }
        let mut extended = gnu.is_extended();
        let mut blocks = 0;
        while extended {
            blocks += 1;
            if blocks > MAX_SPARSE_MAP_BLOCKS {
                return Err(TarError::ExtendedHeaderTooLarge {
                    kind: ExtendedHeader::GnuSparseMap,
                    size: blocks * BLOCK,
                });
            }
            self.charge(BLOCK)?;
            let mut ext = tar::GnuExtSparseHeader::new();
            self.inner
                .read_exact(ext.as_mut_bytes())
                .map_err(TarError::Read)?;
            self.position += BLOCK;
            for chunk in &ext.sparse {
                add(chunk)?;
            }
            extended = ext.is_extended();
        }
        let mut end = 0u64;
        let mut stored = 0u64;
        for (offset, length) in &chunks {
            if *offset < end {
                return Err(malformed("sparse chunks out of order or overlapping"));
            }
            end = offset
                .checked_add(*length)
                .ok_or_else(|| malformed("sparse chunk past the largest file size"))?;
            stored += length;
        }
        if end > real_size || stored != size {
            return Err(malformed(
                "sparse map does not match the entry's sizes in its header",
            ));
        }
        Ok(SparseMap { chunks, real_size })
    }

    /// Skips what is left of the current entry's data and padding.
    fn skip_rest(&mut self) -> Result<(), TarError> {
        let left = self.data_left + self.padding_left;
        if left == 0 {
            return Ok(());
        }
        let skipped =
            io::copy(&mut (&mut self.inner).take(left), &mut io::sink()).map_err(TarError::Read)?;
        self.position += skipped;
        if skipped != left {
            return Err(TarError::Read(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside an entry",
            )));
        }
        self.data_left = 0;
        self.padding_left = 0;
        Ok(())
    }
}

/// Reads the current entry's data; the stream ending early is an `UnexpectedEof` error.
pub(crate) struct EntryData<'a, R> {
    reader: &'a mut TarReader<R>,
}

impl<R: Read> Read for EntryData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let reader = &mut *self.reader;
        if reader.data_left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(reader.data_left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = reader.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside an entry's data",
            ));
        }
        reader.data_left -= n as u64;
        reader.position += n as u64;
        Ok(n)
    }
}

/// Zero bytes after a body of `size` bytes, up to the next block.
fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

/// A GNU long name or link without its terminating NUL.
fn strip_nul(mut name: Vec<u8>) -> Vec<u8> {
    if name.last() == Some(&0) {
        name.pop();
    }
    name
}

/// The value of PAX record `key` (the last one wins, as in the `tar` crate's readers).
fn pax_bytes(records: &[u8], key: &str) -> Option<Vec<u8>> {
    tar::PaxExtensions::new(records)
        .filter_map(Result::ok)
        .filter(|r| r.key_bytes() == key.as_bytes())
        .last()
        .map(|r| r.value_bytes().to_vec())
}

/// A numeric PAX record; values that are not a plain decimal number are ignored.
fn pax_number(records: &[u8], key: &str) -> Option<u64> {
    pax_bytes(records, key).and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A raw ustar header block of type `kind` claiming `size` bytes.
    fn header(path: &str, kind: tar::EntryType, size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(size);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    /// `(path, data)` of every entry.
    type Entries = Vec<(Vec<u8>, Vec<u8>)>;

    fn read_all(bytes: &[u8], budget: u64) -> Result<Entries, TarError> {
        let mut reader = TarReader::new(bytes, budget);
        let mut out = Vec::new();
        while let Some(entry) = reader.next_entry()? {
            let mut data = Vec::new();
            reader
                .data()
                .read_to_end(&mut data)
                .map_err(TarError::Read)?;
            out.push((entry.path, data));
        }
        Ok(out)
    }

    #[test]
    fn reads_what_the_tar_crate_writes() {
        let mut b = tar::Builder::new(Vec::new());
        let long = "d/".repeat(120) + "file";
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
        b.append_pax_extensions([("path", &b"pax/name"[..]), ("uid", b"4242")])
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, "short", &b"x"[..]).unwrap();
        let bytes = b.into_inner().unwrap();

        let mut reader = TarReader::new(bytes.as_slice(), u64::MAX);
        let first = reader.next_entry().unwrap().unwrap();
        assert_eq!(first.path, long.as_bytes());
        assert_eq!(first.size, 3);
        // The data is skipped when not read.
        let second = reader.next_entry().unwrap().unwrap();
        assert_eq!(second.path, b"pax/name");
        assert_eq!(second.header.uid().unwrap(), 4242);
        let mut data = Vec::new();
        reader.data().read_to_end(&mut data).unwrap();
        assert_eq!(data, b"x");
        assert!(reader.next_entry().unwrap().is_none());
        assert_eq!(reader.charged(), bytes.len() as u64 - 1024 + 512);
    }

    #[test]
    fn huge_extended_headers_are_refused_from_their_header() {
        for (kind, want) in [
            (tar::EntryType::XHeader, ExtendedHeader::Pax),
            (tar::EntryType::XGlobalHeader, ExtendedHeader::PaxGlobal),
            (tar::EntryType::GNULongName, ExtendedHeader::GnuLongName),
            (tar::EntryType::GNULongLink, ExtendedHeader::GnuLongLink),
        ] {
            // The stream claims 1 GiB and holds 4 KiB: only the header is read.
            let mut bytes = header("././@LongLink", kind, 1 << 30);
            bytes.extend(std::iter::repeat_n(b'a', 4096));
            match read_all(&bytes, u64::MAX) {
                Err(TarError::ExtendedHeaderTooLarge { kind, size }) => {
                    assert_eq!((kind, size), (want, 1 << 30));
                }
                other => panic!("{want}: {other:?}"),
            }
        }
        // At the limit it is read.
        let mut bytes = header("././@LongLink", tar::EntryType::GNULongName, 1 << 20);
        bytes.extend(std::iter::repeat_n(b'n', 1 << 20));
        bytes.extend(header("ignored", tar::EntryType::Regular, 0));
        let entries = read_all(&bytes, u64::MAX).unwrap();
        assert_eq!(entries[0].0.len(), 1 << 20);
    }

    #[test]
    fn the_budget_is_checked_before_the_data_is_read() {
        let mut bytes = header("big", tar::EntryType::Regular, 10 << 20);
        bytes.extend(std::iter::repeat_n(0, 4096));
        assert!(matches!(
            read_all(&bytes, 1 << 20),
            Err(TarError::OverBudget)
        ));
        // A short stream is an error, not a silently short file.
        match read_all(&bytes, u64::MAX) {
            Err(TarError::Read(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_checksums_and_dangling_extensions_are_errors() {
        let mut bytes = header("f", tar::EntryType::Regular, 0);
        bytes[0] ^= 1;
        assert!(matches!(read_all(&bytes, u64::MAX), Err(TarError::Read(_))));
        let mut bytes = header("././@LongLink", tar::EntryType::GNULongName, 3);
        bytes.extend(b"abc");
        bytes.extend([0; 509]);
        assert!(matches!(read_all(&bytes, u64::MAX), Err(TarError::Read(_))));
    }
}
