//! The synchronous boot phases that run before the async runtime: mounts, kernel modules, the
//! root filesystem switch, the workspace and networking. `main` calls them in order.

pub mod modules;
pub mod mounts;
pub mod net;
pub mod rootfs;
pub mod workspace;
