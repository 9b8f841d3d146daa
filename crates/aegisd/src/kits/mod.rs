//! Kits: declarative presets for instances. [`manifest`] parses and validates schema v1
//! manifests, [`store`] keeps the installed ones in `~/.aegis/kits/`, [`preset`] applies a kit
//! to a create request, and [`daemons`] supervises the host-side instance daemons a kit
//! declares. Nothing here knows what any kit's application does: a kit only ever supplies
//! values core already understands.

pub mod daemons;
pub mod manifest;
pub mod preset;
pub mod store;

pub use daemons::{
    DaemonContext, Daemons, RestartPolicy, ScopedApi, ScopedSocket, ScopedSocketError,
};
pub use manifest::ManifestError;
pub use preset::{KitBinding, PresetError, SelectError};
pub use store::{InstalledKit, KitError, KitStore};
