//! Instance lifecycle, the daemon's core: the state machine, the per-instance actor that owns a
//! VM, booting guests, routing their output, and the id/handle map that finds an actor.
//!
//! It receives resolved specifications and knows nothing of the layers above it (kits, the
//! router, the API): what those decide for an instance, such as which secrets it gets at a
//! boot, comes in through [`AppPolicy`].

pub mod actor;
pub mod auto_remove;
pub mod boot;
pub mod command;
pub mod data;
pub mod exec;
pub mod idle;
pub mod instances;
pub mod lifetime;
pub mod output;
pub mod processes;
pub mod snapshot;
pub mod spec;
pub mod state;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::Config;
use crate::images::Images;
use crate::registry::Registry;
use crate::secrets::{SecretError, SecretStore};
use crate::workspaces::WorkspaceStore;

/// What every actor shares: configuration, boot environment, registry, images, secrets.
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
    /// Named workspaces.
    pub workspaces: WorkspaceStore,
    /// What the layer above decides for its instances.
    pub policy: Arc<dyn AppPolicy>,
}

/// What the layer that creates instances decides for them, from the data it keeps with each
/// ([`spec::InstanceSpec::app`]).
#[async_trait]
pub trait AppPolicy: Send + Sync + std::fmt::Debug {
    /// The names (or `*`) of the secrets the instance configured by `spec` gets at this boot;
    /// asked at every boot, so a secret set after the instance was created can apply.
    ///
    /// # Errors
    /// [`SelectionError`].
    async fn secrets(&self, spec: &spec::InstanceSpec) -> Result<Vec<String>, SelectionError>;

    /// Adds what the layer shows of an instance to its view (a kit's name and egress hints).
    fn present(&self, app: &spec::AppData, view: &mut aegis_proto::api::Instance);
}

/// Why the secrets of a boot could not be chosen.
#[derive(Debug, thiserror::Error)]
pub enum SelectionError {
    /// The secret store failed.
    #[error(transparent)]
    Store(#[from] SecretError),
    /// The layer that created the instance refuses the start (a required secret is missing).
    #[error("{reason}")]
    Refused {
        /// Why, in full.
        reason: String,
        /// What the user can do.
        hint: Option<String>,
    },
}

/// The policy of instances that only ever name their secrets themselves: exactly those, and
/// nothing added to the view.
#[derive(Debug, Default)]
pub struct ExplicitSecrets;

#[async_trait]
impl AppPolicy for ExplicitSecrets {
    async fn secrets(&self, spec: &spec::InstanceSpec) -> Result<Vec<String>, SelectionError> {
        Ok(spec.secrets.clone())
    }

    fn present(&self, _app: &spec::AppData, _view: &mut aegis_proto::api::Instance) {}
}
