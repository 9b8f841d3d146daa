//! Helpers shared by the integration tests: layer tarballs, ext4 inspection with debugfs, a real
//! `docker-registry` on loopback, and pushing test images to it.
#![allow(dead_code)] // Each test binary uses a different subset.
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

pub mod debugfs;
pub mod image;
pub mod layers;
pub mod registry;

use std::path::PathBuf;

/// Fails (never skips) when `tool` is missing, naming the Debian package that provides it.
pub fn require_tool(tool: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("this test needs `{tool}`: install it with `sudo apt-get install {package}`")
        })
}
