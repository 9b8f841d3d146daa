//! The application layer: everything between an API request and the lifecycle's resolved
//! specification. Creating an instance (kit preset and maxima, secrets, workspace, image,
//! public ports), exposing and unexposing ports, deleting, and wiring each instance to what
//! follows it: its public listeners in the router and its kit's instance daemons.
//!
//! The lifecycle below knows none of this; what a kit decides at each boot reaches it through
//! [`policy::KitPolicy`].

pub mod policy;

use std::sync::Arc;

use aegis_proto::api::{CreateInstance, Endpoint, ExposeRequest, Instance, InstanceStatus};
use tokio::net::TcpListener;

use crate::ids::Handle;
use crate::images::ImageError;
use crate::kits::{
    DaemonContext, Daemons, KitBinding, KitError, KitStore, PresetError, SelectError,
};
use crate::lifecycle::command::{Command, LifecycleError};
use crate::lifecycle::instances::{AddError, InstanceHandle, Instances};
use crate::lifecycle::spec::{ExposeSpec, InstanceSpec, SpecError};
use crate::lifecycle::Ctx;
use crate::logs::now_ts;
use crate::registry::{InstanceRow, RegistryError};
use crate::router::{RouteTarget, Router, RouterError};
use crate::secrets::SecretError;

/// Why an instance could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// Invalid request.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// No command and the image has none.
    #[error("no command given and image {image} has no entrypoint or cmd")]
    NoCommand {
        /// The image.
        image: String,
    },
    /// Handle in use by another instance that is not stopped.
    #[error("handle {handle:?} is in use by instance {id}, which is {state}")]
    HandleInUse {
        /// The handle.
        handle: String,
        /// Its owner.
        id: String,
        /// Its state.
        state: InstanceStatus,
    },
    /// The image cannot be used.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The instance directory could not be prepared.
    #[error("cannot create instance directory {path}")]
    Dir {
        /// The directory.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Starting it failed.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// A public port is taken.
    #[error(transparent)]
    Router(#[from] RouterError),
    /// A requested secret is invalid, missing or cannot be decrypted.
    #[error(transparent)]
    Secrets(#[from] SecretError),
    /// The kit asked for is not installed or not valid.
    #[error(transparent)]
    Kit(#[from] KitError),
    /// The kit refuses the request (resources above its maxima, required secrets missing).
    #[error(transparent)]
    Preset(#[from] PresetError),
}

/// Why a port could not be exposed.
#[derive(Debug, thiserror::Error)]
pub enum ExposeError {
    /// Invalid request.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The public port is taken.
    #[error(transparent)]
    Router(#[from] RouterError),
    /// The instance refused.
    #[error(transparent)]
    Lifecycle(LifecycleError),
}

/// The answer to an expose request.
#[derive(Debug)]
pub enum Exposed {
    /// The port is exposed now.
    New(ExposeSpec),
    /// The port was exposed already, like this.
    Existing(Endpoint),
}

/// Creates instances and wires them to the router and their kit's daemons.
#[derive(Debug)]
pub struct Provisioner {
    ctx: Arc<Ctx>,
    instances: Arc<Instances>,
    /// Installed kits.
    pub kits: KitStore,
    /// Instance daemons of kit instances.
    pub daemons: Daemons,
    /// Public listeners.
    pub router: Arc<Router>,
}

impl Provisioner {
    /// The layer over `instances`.
    pub fn new(
        ctx: Arc<Ctx>,
        instances: Arc<Instances>,
        kits: KitStore,
        daemons: Daemons,
        router: Arc<Router>,
    ) -> Provisioner {
        Provisioner {
            ctx,
            instances,
            kits,
            daemons,
            router,
        }
    }

    /// The instances.
    pub fn instances(&self) -> &Arc<Instances> {
        &self.instances
    }

    /// Wires every loaded instance: listens on its public ports and follows it with its kit's
    /// daemons. A port that cannot be listened on again is said on the instance's log.
    pub async fn adopt_loaded(&self) {
        for handle in self.instances.handles() {
            for e in handle.view().endpoints {
                let expose = ExposeSpec {
                    guest_port: e.guest_port,
                    public_port: e.public_port,
                    protocol: crate::lifecycle::spec::ExposeProtocol::parse(&e.protocol)
                        .unwrap_or(crate::lifecycle::spec::ExposeProtocol::Tcp),
                };
                match self.router.listen(e.public_port).await {
                    Ok(listener) => self.serve(&handle, listener, &expose),
                    Err(err) => {
                        let line = format!(
                            "cannot listen on public port {} for guest port {}: {}",
                            e.public_port,
                            e.guest_port,
                            crate::images::error_chain(&err)
                        );
                        tracing::error!(instance = %handle.id, "{line}");
                        handle.log.system(line);
                    }
                }
            }
            self.follow_daemons(&handle);
        }
    }

    fn serve(&self, handle: &InstanceHandle, listener: TcpListener, e: &ExposeSpec) {
        // An instance deleted by the lifecycle itself (auto-remove, an expired lifetime) gives
        // its public ports back too: its actor's end closes the view channel.
        let mut views = handle.watch();
        let router = Arc::clone(&self.router);
        let id = handle.id.to_string();
        tokio::spawn(async move {
            while views.changed().await.is_ok() {}
            router.unbind_instance(&id);
        });
        self.router.serve(
            listener,
            RouteTarget {
                instance: handle.waker(),
                guest_port: e.guest_port,
                protocol: e.protocol,
            },
        );
    }

    /// Has the kit's daemons follow the instance's state, if its kit declares any.
    fn follow_daemons(&self, handle: &InstanceHandle) {
        let Some(kit) = policy::kit_binding(&handle.app).filter(|k| !k.daemons.is_empty()) else {
            return;
        };
        let view = handle.view();
        let ctx = DaemonContext {
            instance_id: handle.id.to_string(),
            handle: view.handle.clone(),
            kit: (kit.name.clone(), kit.version.clone()),
            daemons: kit.daemons,
            ports: Vec::new(),
            log: Arc::clone(&handle.log),
        };
        self.daemons.follow(ctx, handle.watch());
    }

    /// Creates and starts an instance; or, for the handle of an existing stopped instance,
    /// starts that one with its stored configuration. Returns the view and whether it is new.
    ///
    /// # Errors
    /// [`CreateError`].
    pub async fn create(&self, req: CreateInstance) -> Result<(Instance, bool), CreateError> {
        // The handle names the instance's kit config directory: checked before anything else.
        let handle = req
            .handle
            .as_deref()
            .map(Handle::parse)
            .transpose()
            .map_err(SpecError::Handle)?;
        let (req, kit) = self.apply_kit(req).await?;
        if let Some(h) = &handle {
            if let Some(existing) = self.instances.find(h.as_str()) {
                let view = existing.view();
                if view.state != InstanceStatus::Stopped {
                    return Err(CreateError::HandleInUse {
                        handle: h.to_string(),
                        id: view.id,
                        state: view.state,
                    });
                }
                self.add_secrets(&existing, &view, &req.secrets).await?;
                if let Some(secs) = req.timeout_secs {
                    // A lifetime given at this start counts from now.
                    let on_timeout = req.on_timeout.or(view.on_timeout).unwrap_or_default();
                    let lifetime = Some(crate::lifecycle::spec::Lifetime::from_now(
                        secs, on_timeout,
                    )?);
                    existing
                        .request(|reply| Command::SetLifetime { lifetime, reply })
                        .await?;
                }
                let view = existing.request(|reply| Command::Start { reply }).await?;
                return Ok((view, false));
            }
        }
        let mut spec = InstanceSpec::from_request(&req)?;
        let users = self.instances.list();
        spec.workspace = Some(
            self.ctx
                .workspaces
                .prepare(spec.workspace(), |name| {
                    users
                        .iter()
                        .find(|i| {
                            i.workspace.as_ref().and_then(|w| w.name.as_deref()) == Some(name)
                        })
                        .map(|i| i.handle.clone().unwrap_or_else(|| i.id.clone()))
                })
                .map_err(SpecError::Workspace)?,
        );
        if req.snapshot.is_none() {
            spec.snapshot = self.ctx.config.snapshot_default;
        }
        if let Some(kit) = &kit {
            let wanted =
                crate::kits::preset::secret_selection(&self.ctx.secrets, kit, &spec.secrets)
                    .await
                    .map_err(|e| match e {
                        SelectError::Preset(e) => CreateError::Preset(e),
                        SelectError::Store(e) => CreateError::Secrets(e),
                    })?;
            self.ctx.secrets.check(&wanted).await?;
        }
        if let Some(name) = &req.kit {
            policy::bind_kit(&mut spec.app, name, kit.as_ref());
        }
        // A missing or broken secret fails the create before anything is stored (and again at
        // each boot, where the values are resolved for real).
        spec.secrets = self.ctx.secrets.check(&spec.secrets).await?;
        // Bind the public ports first: a taken port fails the create before anything is stored.
        let mut listeners = Vec::new();
        for e in &mut spec.exposes {
            let listener = self.router.listen(e.public_port).await?;
            e.public_port = listener
                .local_addr()
                .map(|a| a.port())
                .unwrap_or(e.public_port);
            listeners.push((listener, *e));
        }
        let resolved = self.ctx.images.ensure(&spec.image_ref).await?;
        spec.image_digest = Some(resolved.digest.clone());
        if spec.argv(&resolved.config).is_empty() {
            return Err(CreateError::NoCommand {
                image: spec.image_ref,
            });
        }
        let id = self.instances.new_id();
        let stored = serde_json::to_string(&spec).map_err(|e| RegistryError::Corrupt {
            id: id.to_string(),
            reason: e.to_string(),
        })?;
        let row = InstanceRow::created(id, handle, now_ts(), stored);
        let instance = match self.instances.add(row, spec).await {
            Ok(instance) => instance,
            Err(AddError::HandleTaken(taken)) => {
                // Lost a race with a concurrent create of the same handle.
                let owner = self.instances.find(&taken).map(|h| h.view());
                return Err(CreateError::HandleInUse {
                    handle: taken,
                    id: owner.as_ref().map(|v| v.id.clone()).unwrap_or_default(),
                    state: owner.map_or(InstanceStatus::Starting, |v| v.state),
                });
            }
            Err(AddError::Registry(e)) => return Err(e.into()),
            Err(AddError::Dir { path, source }) => return Err(CreateError::Dir { path, source }),
        };
        for (listener, e) in listeners {
            self.serve(&instance, listener, &e);
        }
        self.follow_daemons(&instance);
        let view = instance.request(|reply| Command::Start { reply }).await?;
        Ok((view, true))
    }

    /// Starting a stopped instance by its handle keeps its stored configuration, except that
    /// secrets the request names are added to those it already injects (`aegis instance start
    /// --name X --secret B`), checked like a create's before anything changes.
    async fn add_secrets(
        &self,
        existing: &InstanceHandle,
        view: &Instance,
        requested: &[String],
    ) -> Result<(), CreateError> {
        let mut secrets = view.secret_keys.clone();
        for name in requested {
            if !secrets.contains(name) {
                secrets.push(name.clone());
            }
        }
        if secrets.len() == view.secret_keys.len() {
            return Ok(());
        }
        let secrets = self.ctx.secrets.check(&secrets).await?;
        existing
            .request(|reply| Command::SetSecrets { secrets, reply })
            .await?;
        Ok(())
    }

    /// Applies the kit a create request names (`kit`), unless the request starts an existing
    /// instance by its handle, which keeps the configuration it was created with.
    async fn apply_kit(
        &self,
        req: CreateInstance,
    ) -> Result<(CreateInstance, Option<KitBinding>), CreateError> {
        let existing = req
            .handle
            .as_deref()
            .is_some_and(|h| self.instances.find(h).is_some());
        let Some(name) = req.kit.clone().filter(|_| !existing) else {
            return Ok((req, None));
        };
        let kit = self.kits.get(&name).await?;
        let (req, binding) = crate::kits::preset::apply(&kit.manifest, req)?;
        Ok((req, Some(binding)))
    }

    /// Exposes a guest port on a public port (chosen when 0). Exposing a guest port that is
    /// already exposed answers with the existing mapping (`Exposed::Existing`) when the request
    /// names no other public port or protocol, so a client may repeat the call.
    ///
    /// # Errors
    /// [`ExposeError`]; [`LifecycleError::AlreadyExposed`] when the port is exposed on another
    /// public port or with another protocol than the one asked for.
    pub async fn expose(
        &self,
        handle: &InstanceHandle,
        req: &ExposeRequest,
    ) -> Result<Exposed, ExposeError> {
        let mut expose = ExposeSpec::from_request(req)?;
        let current = handle
            .view()
            .endpoints
            .into_iter()
            .find(|e| e.guest_port == expose.guest_port);
        if let Some(current) = current {
            let same_port = req.public_port.is_none_or(|p| p == current.public_port);
            let same_protocol = req
                .protocol
                .as_deref()
                .is_none_or(|p| p == current.protocol);
            if same_port && same_protocol {
                return Ok(Exposed::Existing(current));
            }
            return Err(ExposeError::Lifecycle(LifecycleError::AlreadyExposed {
                id: handle.id.clone(),
                port: expose.guest_port,
            }));
        }
        let listener = self.router.listen(expose.public_port).await?;
        expose.public_port = listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(expose.public_port);
        match handle
            .request(|reply| Command::Expose { expose, reply })
            .await
        {
            Ok(_) => {
                self.serve(handle, listener, &expose);
                handle.log.system(format!(
                    "exposed guest port {} on public port {} ({})",
                    expose.guest_port,
                    expose.public_port,
                    expose.protocol.as_str()
                ));
                Ok(Exposed::New(expose))
            }
            Err(e) => Err(ExposeError::Lifecycle(e)),
        }
    }

    /// Stops exposing a guest port.
    ///
    /// # Errors
    /// [`LifecycleError::NotExposed`] and the actor's errors.
    pub async fn unexpose(
        &self,
        handle: &InstanceHandle,
        guest_port: u16,
    ) -> Result<(), LifecycleError> {
        let removed = handle
            .request(|reply| Command::Unexpose { guest_port, reply })
            .await?;
        self.router.unbind(removed.public_port);
        handle.log.system(format!(
            "unexposed guest port {} (public port {})",
            removed.guest_port, removed.public_port
        ));
        Ok(())
    }

    /// Deletes an instance: its kit's daemons first (they may still use the API while they
    /// stop), then its VM and files; its public ports are free when this returns.
    ///
    /// # Errors
    /// The actor's error.
    pub async fn delete(&self, handle: &InstanceHandle) -> Result<(), LifecycleError> {
        self.daemons.stop(handle.id.as_str()).await;
        self.instances.delete(handle).await?;
        self.router.unbind_instance(handle.id.as_str());
        Ok(())
    }
}
