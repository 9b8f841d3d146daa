//! Guest kernel lookup. The set-up step extracts Debian's `linux-image-cloud-amd64` into
//! `$AEGIS_HOME/kernel/` (`vmlinuz` + `lib/modules/<version>/` with a `modules.dep` made by
//! `depmod`); `AEGIS_KERNEL` points at a user-supplied kernel instead.

use std::path::{Path, PathBuf};

/// Environment variable naming a user-supplied kernel image (bzImage).
pub const KERNEL_ENV: &str = "AEGIS_KERNEL";
/// Environment variable naming the module directory (holding `modules.dep`) of that kernel.
pub const KERNEL_MODULES_ENV: &str = "AEGIS_KERNEL_MODULES";

/// The kernel a VM boots, and its loadable modules if it has any.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuestKernel {
    /// The bzImage passed to `-kernel`.
    pub image: PathBuf,
    /// `lib/modules/<version>` directory with `modules.dep`; `None` for a kernel with everything
    /// built in.
    pub modules_dir: Option<PathBuf>,
}

/// The guest kernel could not be found.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// No kernel image at the expected path.
    #[error("no guest kernel at {}", path.display())]
    MissingImage {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The kernel's module directory has no `modules.dep`.
    #[error("no modules.dep in {}", dir.display())]
    MissingModulesDep {
        /// The module directory.
        dir: PathBuf,
    },
    /// The kernel directory could not be read.
    #[error("cannot read guest kernel directory {}", path.display())]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

impl KernelError {
    /// What the user should do about it.
    pub fn hint(&self) -> String {
        "run `./setup.sh` to fetch the guest kernel, or point AEGIS_KERNEL at a bzImage".to_owned()
    }
}

impl GuestKernel {
    /// Finds the kernel: `AEGIS_KERNEL` (+ `AEGIS_KERNEL_MODULES`) when set, else the one the
    /// set-up step put in `kernel_dir`.
    ///
    /// # Errors
    /// When the image or its `modules.dep` is missing.
    pub fn locate(kernel_dir: &Path) -> Result<GuestKernel, KernelError> {
        if let Some(image) = std::env::var_os(KERNEL_ENV).filter(|v| !v.is_empty()) {
            let image = PathBuf::from(image);
            if !image.is_file() {
                return Err(KernelError::MissingImage { path: image });
            }
            let modules_dir = std::env::var_os(KERNEL_MODULES_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from);
            if let Some(dir) = &modules_dir {
                check_modules_dep(dir)?;
            }
            return Ok(GuestKernel { image, modules_dir });
        }
        let image = kernel_dir.join("vmlinuz");
        if !image.is_file() {
            return Err(KernelError::MissingImage { path: image });
        }
        let modules_root = kernel_dir.join("lib/modules");
        let modules_dir = match std::fs::read_dir(&modules_root) {
            Ok(entries) => {
                let mut dirs: Vec<PathBuf> = entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect();
                dirs.sort();
                dirs.pop()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(KernelError::ReadDir {
                    path: modules_root,
                    source,
                })
            }
        };
        if let Some(dir) = &modules_dir {
            check_modules_dep(dir)?;
        }
        Ok(GuestKernel { image, modules_dir })
    }
}

fn check_modules_dep(dir: &Path) -> Result<(), KernelError> {
    if dir.join("modules.dep").is_file() {
        Ok(())
    } else {
        Err(KernelError::MissingModulesDep {
            dir: dir.to_path_buf(),
        })
    }
}
