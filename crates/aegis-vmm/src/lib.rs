//! The virtual machine monitor layer: the [`Vmm`] trait that `aegisd` drives, its QEMU backend,
//! accelerator selection, and the guest boot artifacts (kernel lookup and initramfs).
//!
//! This crate starts, pauses, resumes and ends VMs and tells when one has died. It knows nothing of
//! instances, processes or logs: the control channel to the guest harness is exposed as an
//! endpoint ([`ControlEndpoint`]) that the daemon connects to.
#![warn(missing_docs)]

pub mod accel;
pub mod boot;
#[cfg(feature = "fake")]
pub mod fake;
pub mod qemu;
mod vmm;

pub use accel::{Accelerator, AcceleratorChoice};
pub use vmm::{
    wait_for_exit, Capabilities, ControlEndpoint, DiskSpec, NetworkSpec, PortForward, ShareSpec,
    SnapshotInfo, SnapshotSink, SnapshotSource, Vm, VmExit, VmSpec, Vmm, VmmError,
};
