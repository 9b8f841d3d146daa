//! Aegis images: pull OCI images from registries, import archives, keep them in a
//! content-addressed store and turn each image into a read-only ext4 base image for microVMs.
//!
//! The pieces, in the order an image travels through them:
//! - [`reference`]: image references and digests, parsed and normalised like docker does;
//! - [`manifest`]: the OCI/docker documents (manifests, indexes, configs, platforms);
//! - [`import`]: root filesystem tarballs, OCI layouts and `docker save` archives;
//! - [`store`]: the on-disk blob store, image records and references, safe for two processes;
//! - [`unpack`]: apply layers (whiteouts, links, devices) into a staging directory, keeping
//!   ownership and modes in a table since the daemon is not root;
//! - [`ext4`]: build the ext4 file with `mke2fs -d` and fix metadata with `debugfs`;
//! - [`rootfs`]: build-once orchestration of unpack + ext4 per manifest digest.
#![warn(missing_docs)]

pub mod ext4;
pub mod import;
pub mod manifest;
pub mod reference;
pub mod rootfs;
pub mod store;
pub mod unpack;

pub use ext4::Ext4Error;
pub use import::{import_archive, import_rootfs_tar, ImportError, ImportOptions};
pub use manifest::{ImageConfig, ManifestError, Platform};
pub use reference::{Digest, DigestError, ImageRef, ReferenceError};
pub use rootfs::BuildError;
pub use store::{ImageRecord, ImageStore, LayerInfo, PruneReport, StoreError};
pub use unpack::UnpackError;
