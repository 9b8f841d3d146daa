//! The initramfs: the static harness as `/init` plus the kernel modules it must load before it can
//! see its disk and control port, resolved through `modules.dep`. Built once per content hash and
//! cached, so a changed harness or kernel yields a new file and an unchanged one costs a hash.
//!
//! Layout inside the archive (the harness reads exactly this):
//! `/lib/modules/aegis/order` lists module file names in load order, one per line;
//! `/lib/modules/aegis/<name>.ko` are the uncompressed modules.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::cpio::CpioWriter;
use super::kernel::GuestKernel;

/// Modules the harness loads: PCI virtio transport, disk, network, control port, vsock, virtiofs,
/// overlayfs, and crc32c (ext4 metadata checksums need it and it is a module in Debian's kernel).
/// A module the kernel has built in is simply not found in `modules.dep` and skipped.
pub const REQUIRED_MODULES: &[&str] = &[
    "crc32c_generic",
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "virtio_rng",
    "vsock",
    "vmw_vsock_virtio_transport",
    "fuse",
    "virtiofs",
    "overlay",
];

/// Bump when the archive layout changes so cached files from an older layout are not reused.
const LAYOUT_VERSION: &str = "aegis-initramfs-1";

/// A built initramfs on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initramfs {
    /// The cpio file to pass to `-initrd`.
    pub path: PathBuf,
}

/// Building the initramfs failed.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// The harness binary is missing or unreadable.
    #[error("cannot read the guest harness at {}", path.display())]
    ReadHarness {
        /// Where it was looked for.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The harness is not a statically linked executable: as `/init` it would need a dynamic
    /// loader and libraries the initramfs does not have, and the kernel would panic at boot.
    #[error(
        "the guest harness at {} is {what}; it must be a statically linked executable \
         (build it with scripts/build.sh, or point AEGIS_HARNESS at one)",
        path.display()
    )]
    NotStatic {
        /// The harness file.
        path: PathBuf,
        /// What it is instead.
        what: &'static str,
    },
    /// `modules.dep` or a module file could not be read.
    #[error("cannot read kernel module file {}", path.display())]
    ReadModule {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A module is compressed; the harness loads plain `.ko` files only.
    #[error("kernel module {} is compressed; only uncompressed .ko modules are supported", path.display())]
    CompressedModule {
        /// The module file.
        path: PathBuf,
    },
    /// The cache file could not be written.
    #[error("cannot write initramfs {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

impl Initramfs {
    /// Returns the cached initramfs for this harness and kernel, building it first if needed.
    ///
    /// # Errors
    /// When the harness or a module cannot be read or the cache cannot be written.
    pub fn ensure(
        harness: &Path,
        kernel: &GuestKernel,
        cache_dir: &Path,
    ) -> Result<Initramfs, InitramfsError> {
        let harness_bytes =
            std::fs::read(harness).map_err(|source| InitramfsError::ReadHarness {
                path: harness.to_path_buf(),
                source,
            })?;
        if let Some(what) = not_static(&harness_bytes) {
            return Err(InitramfsError::NotStatic {
                path: harness.to_path_buf(),
                what,
            });
        }
        let modules = match &kernel.modules_dir {
            Some(dir) => load_modules(dir, REQUIRED_MODULES)?,
            None => Vec::new(),
        };
        let mut hasher = Sha256::new();
        hasher.update(LAYOUT_VERSION);
        hasher.update(&harness_bytes);
        for (name, bytes) in &modules {
            hasher.update(name.as_bytes());
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        }
        let digest = hex::encode(hasher.finalize());
        let path = cache_dir.join(format!("initramfs-{}.cpio", &digest[..16]));
        if path.is_file() {
            return Ok(Initramfs { path });
        }
        let write_err = |source| InitramfsError::Write {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(cache_dir).map_err(write_err)?;
        let archive = build_archive(&harness_bytes, &modules).map_err(write_err)?;
        let tmp = cache_dir.join(format!(
            ".initramfs-{}.{}",
            &digest[..16],
            std::process::id()
        ));
        std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(&archive).and_then(|()| f.sync_all()))
            .map_err(write_err)?;
        std::fs::rename(&tmp, &path).map_err(write_err)?;
        Ok(Initramfs { path })
    }
}

/// Why `bytes` cannot serve as `/init`, or `None` when it is a static ELF executable (one without
/// a `PT_INTERP` program header naming a dynamic loader).
fn not_static(bytes: &[u8]) -> Option<&'static str> {
    use object::read::elf::{FileHeader, ProgramHeader};
    let Ok(header) = object::elf::FileHeader64::<object::Endianness>::parse(bytes) else {
        return Some("not a 64-bit ELF executable");
    };
    let Ok(endian) = header.endian() else {
        return Some("an ELF file of unknown byte order");
    };
    let Ok(headers) = header.program_headers(endian, bytes) else {
        return Some("an ELF file with unreadable program headers");
    };
    headers
        .iter()
        .any(|ph| ph.p_type(endian) == object::elf::PT_INTERP)
        .then_some("dynamically linked")
}

fn build_archive(harness: &[u8], modules: &[(String, Vec<u8>)]) -> std::io::Result<Vec<u8>> {
    let mut w = CpioWriter::new(Vec::with_capacity(harness.len() + (4 << 20)));
    for dir in [
        "dev",
        "proc",
        "sys",
        "newroot",
        "lib",
        "lib/modules",
        "lib/modules/aegis",
    ] {
        w.dir(dir, 0o755)?;
    }
    // The kernel opens /dev/console for init's stdio before devtmpfs is mounted.
    w.char_device("dev/console", 0o600, 5, 1)?;
    w.char_device("dev/null", 0o666, 1, 3)?;
    w.file("init", 0o755, harness)?;
    let mut order = String::new();
    for (name, bytes) in modules {
        w.file(&format!("lib/modules/aegis/{name}"), 0o644, bytes)?;
        order.push_str(name);
        order.push('\n');
    }
    w.file("lib/modules/aegis/order", 0o644, order.as_bytes())?;
    w.finish()
}

/// Module name as the kernel knows it: file stem without `.ko`, with `-` spelled `_`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// Parses `modules.dep` into name → (relative path, dependency paths).
fn parse_modules_dep(text: &str) -> BTreeMap<String, (String, Vec<String>)> {
    text.lines()
        .filter_map(|line| {
            let (module, deps) = line.split_once(':')?;
            let module = module.trim().to_owned();
            let deps = deps.split_whitespace().map(str::to_owned).collect();
            Some((module_name(&module), (module, deps)))
        })
        .collect()
}

/// Dependency-ordered list of module paths (relative to the module dir) for `wanted`.
fn load_order(dep: &BTreeMap<String, (String, Vec<String>)>, wanted: &[&str]) -> Vec<String> {
    fn visit(
        name: &str,
        dep: &BTreeMap<String, (String, Vec<String>)>,
        seen: &mut HashSet<String>,
        out: &mut Vec<String>,
    ) {
        if !seen.insert(name.to_owned()) {
            return;
        }
        let Some((path, deps)) = dep.get(name) else {
            return;
        };
        for d in deps {
            visit(&module_name(d), dep, seen, out);
        }
        out.push(path.clone());
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for name in wanted {
        if !dep.contains_key(*name) {
            tracing::debug!(
                module = name,
                "module not in modules.dep, assuming built in"
            );
        }
        visit(name, dep, &mut seen, &mut out);
    }
    out
}

fn load_modules(dir: &Path, wanted: &[&str]) -> Result<Vec<(String, Vec<u8>)>, InitramfsError> {
    let dep_path = dir.join("modules.dep");
    let text = std::fs::read_to_string(&dep_path).map_err(|source| InitramfsError::ReadModule {
        path: dep_path.clone(),
        source,
    })?;
    let dep = parse_modules_dep(&text);
    load_order(&dep, wanted)
        .into_iter()
        .map(|rel| {
            let path = dir.join(&rel);
            if !rel.ends_with(".ko") {
                return Err(InitramfsError::CompressedModule { path });
            }
            let bytes = std::fs::read(&path)
                .map_err(|source| InitramfsError::ReadModule { path, source })?;
            Ok((format!("{}.ko", module_name(&rel)), bytes))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/crypto/crc32c-generic.ko:
";

    #[test]
    fn orders_dependencies_first_without_duplicates() {
        let dep = parse_modules_dep(DEP);
        let order = load_order(
            &dep,
            &["virtio_pci", "virtio_blk", "crc32c_generic", "absent"],
        );
        let names: Vec<String> = order.iter().map(|p| module_name(p)).collect();
        assert_eq!(
            names,
            [
                "virtio_pci_modern_dev",
                "virtio_ring",
                "virtio",
                "virtio_pci",
                "virtio_blk",
                "crc32c_generic"
            ]
        );
    }

    #[test]
    fn caches_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let harness = dir.path().join("harness");
        std::fs::write(&harness, static_elf(1)).unwrap();
        let kernel = GuestKernel {
            image: dir.path().join("vmlinuz"),
            modules_dir: None,
        };
        let a = Initramfs::ensure(&harness, &kernel, &dir.path().join("cache")).unwrap();
        let b = Initramfs::ensure(&harness, &kernel, &dir.path().join("cache")).unwrap();
        assert_eq!(a, b);
        std::fs::write(&harness, static_elf(2)).unwrap();
        let c = Initramfs::ensure(&harness, &kernel, &dir.path().join("cache")).unwrap();
        assert_ne!(a, c);
    }

    /// A minimal little-endian x86-64 ELF header without program headers; `entry` varies the
    /// content.
    fn static_elf(entry: u64) -> Vec<u8> {
        let mut h = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
        h.resize(16, 0);
        h.extend_from_slice(&2u16.to_le_bytes()); // e_type: EXEC
        h.extend_from_slice(&0x3eu16.to_le_bytes()); // e_machine: x86-64
        h.extend_from_slice(&1u32.to_le_bytes()); // e_version
        h.extend_from_slice(&entry.to_le_bytes()); // e_entry
        h.extend_from_slice(&[0; 16]); // e_phoff, e_shoff
        h.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        for half in [64u16, 56, 0, 64, 0, 0] {
            h.extend_from_slice(&half.to_le_bytes()); // ehsize, phentsize, phnum, shentsize, ...
        }
        h
    }

    #[test]
    fn refuses_a_harness_that_is_not_static() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = GuestKernel {
            image: dir.path().join("vmlinuz"),
            modules_dir: None,
        };
        let script = dir.path().join("script");
        std::fs::write(&script, b"#!/bin/sh\n").unwrap();
        let err = Initramfs::ensure(&script, &kernel, dir.path()).unwrap_err();
        assert!(err.to_string().contains("not a 64-bit ELF"), "{err}");
        // Any dynamically linked program of the host will do.
        let dynamic = std::env::current_exe().unwrap();
        let err = Initramfs::ensure(&dynamic, &kernel, dir.path()).unwrap_err();
        assert!(err.to_string().contains("dynamically linked"), "{err}");
        assert!(err.to_string().contains("scripts/build.sh"), "{err}");
    }
}
