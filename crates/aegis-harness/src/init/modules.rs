//! Loads the kernel modules the host packed into the initramfs.
//!
//! The host resolves dependencies (through `modules.dep`) and writes the load order to
//! [`ORDER_FILE`]; this module only loads the files in that order with `finit_module`. A module
//! that fails is reported and skipped: the driver may be built into the kernel, and a missing
//! device shows up later as a clear "device did not appear" error.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Directory holding the modules and the order file.
pub const MODULE_DIR: &str = "/lib/modules/aegis";
/// One module file name per line, dependencies first.
pub const ORDER_FILE: &str = "/lib/modules/aegis/order";

/// What happened to the modules, for the boot log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LoadSummary {
    /// Newly loaded.
    pub loaded: usize,
    /// Already present (EEXIST).
    pub present: usize,
    /// Failed (each reported on the console).
    pub failed: usize,
}

/// Why one module was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// The order file exists but could not be read.
    #[error("cannot read the module list {path}")]
    ReadOrder {
        /// The order file.
        path: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The module file could not be opened.
    #[error("cannot open module {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The kernel refused the module.
    #[error("kernel refused module {path}")]
    Load {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

enum Loaded {
    New,
    AlreadyPresent,
}

/// Reads the module names from the order file's text: one per line, blank lines and `#`
/// comments skipped. A name without `.ko` gets it appended, so both `virtio_net` and
/// `virtio_net.ko` work.
pub fn parse_order(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            if line.ends_with(".ko") {
                line.to_owned()
            } else {
                format!("{line}.ko")
            }
        })
        .collect()
}

/// Loads every module listed in [`ORDER_FILE`], reporting failures through `report` and going
/// on. A missing order file means "nothing to load" (a kernel with everything built in).
///
/// # Errors
/// [`ModuleError::ReadOrder`] when the order file exists but cannot be read.
pub fn load_all(mut report: impl FnMut(&ModuleError)) -> Result<LoadSummary, ModuleError> {
    let text = match std::fs::read_to_string(ORDER_FILE) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(LoadSummary::default()),
        Err(source) => {
            return Err(ModuleError::ReadOrder {
                path: ORDER_FILE,
                source,
            })
        }
    };
    let mut summary = LoadSummary::default();
    for name in parse_order(&text) {
        let path = Path::new(MODULE_DIR).join(&name);
        match load_one(&path) {
            Ok(Loaded::New) => summary.loaded += 1,
            Ok(Loaded::AlreadyPresent) => summary.present += 1,
            Err(e) => {
                summary.failed += 1;
                report(&e);
            }
        }
    }
    Ok(summary)
}

fn load_one(path: &Path) -> Result<Loaded, ModuleError> {
    let file = File::open(path).map_err(|source| ModuleError::Open {
        path: path.to_owned(),
        source,
    })?;
    let no_params = c"";
    // SAFETY: finit_module reads the open module file descriptor and a NUL-terminated parameter
    // string; both outlive the call. Flags 0: plain, uncompressed module.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            no_params.as_ptr(),
            0,
        )
    };
    if rc == 0 {
        return Ok(Loaded::New);
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EEXIST) {
        return Ok(Loaded::AlreadyPresent);
    }
    Err(ModuleError::Load {
        path: path.to_owned(),
        source: error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_file_names() {
        let text = "virtio.ko\nvirtio_ring.ko\n\n# networking\nvirtio_pci\n  virtio_net.ko  \r\n";
        assert_eq!(
            parse_order(text),
            vec![
                "virtio.ko",
                "virtio_ring.ko",
                "virtio_pci.ko",
                "virtio_net.ko"
            ]
        );
    }
}
