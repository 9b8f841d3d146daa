//! Aegis images: pull OCI images from registries, import archives, keep them in a
//! content-addressed store and turn each image into a read-only ext4 base image for microVMs.
//!
//! The pieces, in the order an image travels through them:
//! - [`reference`](mod@reference): image references and digests, parsed and normalised like docker does;
//! - [`manifest`]: the OCI/docker documents (manifests, indexes, configs, platforms);
//! - [`pull`](mod@pull) (with credentials from [`auth`]): fetch images from OCI registries;
//! - [`import`]: root filesystem tarballs, OCI layouts and `docker save` archives;
//! - [`store`]: the on-disk blob store, image records and references, safe for two processes;
//! - [`tar_reader`]: frame tar streams with every header bounded (for unpack and import);
//! - [`unpack`]: apply layers (whiteouts, links, devices) into a staging directory, keeping
//!   ownership and modes in a table since the daemon is not root;
//! - [`ext4`]: build the ext4 file with `mke2fs -d` and fix metadata with `debugfs`;
//! - [`rootfs`]: build-once orchestration of unpack + ext4 per manifest digest.
#![warn(missing_docs)]
// Errors here carry their context as typed fields (STYLE §5: reference, registry, digest, path)
// and are only built on failure paths of operations dominated by network and disk I/O, so their
// size costs nothing measurable; boxing every field would only make them harder to match on.
#![allow(clippy::result_large_err)]

pub mod auth;
pub mod ext4;
pub mod import;
pub mod manifest;
pub mod pull;
pub mod reference;
pub mod rootfs;
pub mod store;
pub mod tar_reader;
pub mod unpack;

pub use ext4::Ext4Error;
pub use import::{import_archive, import_rootfs_tar, ImportError, ImportOptions};
pub use manifest::{ImageConfig, ManifestError, Platform};
pub use pull::{
    pull, BaseImagePolicy, CredentialSource, PullError, PullEvent, PullOptions, PullOutcome,
    PullPolicy,
};
pub use reference::{Digest, DigestError, ImageRef, ReferenceError};
pub use rootfs::BuildError;
pub use store::{ImageRecord, ImageStore, LayerInfo, PruneReport, StoreError};
pub use unpack::{UnpackError, UnpackLimits};
