//! Helpers shared by the integration tests: layer tarballs, ext4 inspection with debugfs, a real
//! `docker-registry` on loopback, pushing test images to it, and a hostile registry.
#![allow(dead_code)] // Each test binary uses a different subset.
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

pub mod debugfs;
pub mod hostile;
pub mod image;
pub mod layers;
pub mod registry;
