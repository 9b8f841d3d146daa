//! Instance lifecycle: the state machine, the per-instance actor that owns a VM, booting guests,
//! routing their output, and the id/handle map that finds an actor.

pub mod actor;
pub mod auto_remove;
pub mod boot;
pub mod command;
pub mod idle;
pub mod instances;
pub mod output;
pub mod snapshot;
pub mod spec;
pub mod state;

use crate::config::Config;
use crate::images::Images;
use crate::registry::Registry;
use crate::router::Router;
use crate::secrets::SecretStore;

/// What every actor shares: configuration, boot environment, registry, images.
#[derive(Debug)]
pub struct Ctx {
    /// Paths and defaults.
    pub config: Config,
    /// VMM backend and boot artifacts.
    pub boot: boot::BootEnv,
    /// The registry.
    pub registry: Registry,
    /// The image store.
    pub images: Images,
    /// The secret store.
    pub secrets: SecretStore,
    /// Public listeners.
    pub router: std::sync::Arc<Router>,
    /// Installed kits.
    pub kits: crate::kits::KitStore,
    /// Instance daemons of kit instances.
    pub daemons: crate::kits::Daemons,
    /// Named workspaces.
    pub workspaces: crate::workspaces::WorkspaceStore,
}
