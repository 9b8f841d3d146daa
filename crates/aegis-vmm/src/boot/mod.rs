//! Guest boot artifacts: where the guest kernel and its modules are, and the initramfs Aegis
//! builds from the static harness and those modules.

mod cpio;
mod initramfs;
mod kernel;

pub use initramfs::{Initramfs, InitramfsError, REQUIRED_MODULES};
pub use kernel::{GuestKernel, KernelError, KERNEL_ENV, KERNEL_MODULES_ENV};
