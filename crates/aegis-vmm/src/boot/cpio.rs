//! A writer for the `newc` cpio format, the only archive format the kernel unpacks as an
//! initramfs. Entries carry their own owner, mode and device numbers, so device nodes such as
//! `/dev/console` can be written without privileges.

use std::io::{self, Write};

const NEWC_MAGIC: &str = "070701";
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;

/// Streams cpio entries to `W`; call [`CpioWriter::finish`] to write the trailer.
#[derive(Debug)]
pub struct CpioWriter<W: Write> {
    out: W,
    next_inode: u32,
    written: usize,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            next_inode: 1,
            written: 0,
        }
    }

    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.entry(name, S_IFDIR | perm, 2, (0, 0), &[])
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, S_IFREG | perm, 1, (0, 0), data)
    }

    pub fn char_device(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(name, S_IFCHR | perm, 1, (major, minor), &[])
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[])?;
        Ok(self.out)
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let inode = self.next_inode;
        self.next_inode += 1;
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cpio entry over 4 GiB"))?;
        let name_size = u32::try_from(name.len() + 1)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cpio name too long"))?;
        let header = format!(
            "{NEWC_MAGIC}{inode:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}\
             {maj:08x}{min:08x}{rmaj:08x}{rmin:08x}{name_size:08x}{check:08x}",
            uid = 0,
            gid = 0,
            mtime = 0,
            maj = 0,
            min = 0,
            rmaj = rdev.0,
            rmin = rdev.1,
            check = 0,
        );
        self.write(header.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()?;
        self.write(data)?;
        self.pad()
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len();
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let pad = (4 - self.written % 4) % 4;
        self.write(&[0u8; 3][..pad])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_four_byte_aligned_and_end_with_trailer() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("dev", 0o755).unwrap();
        w.file("init", 0o755, b"abc").unwrap();
        w.char_device("dev/console", 0o600, 5, 1).unwrap();
        let out = w.finish().unwrap();
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("TRAILER!!!"));
        assert!(text.contains("init\0"));
    }

    #[test]
    fn roundtrips_through_system_cpio() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = CpioWriter::new(Vec::new());
        w.dir("d", 0o755).unwrap();
        w.file("d/hello", 0o644, b"hello world").unwrap();
        let bytes = w.finish().unwrap();
        let mut child = std::process::Command::new(aegis_testkit::tool("cpio"))
            .args(["-t"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .current_dir(dir.path())
            .spawn()
            .expect("cannot run cpio");
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "d\nd/hello\n");
    }
}
