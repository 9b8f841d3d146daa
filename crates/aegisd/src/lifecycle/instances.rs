//! The id → actor map (the only shared map, behind a short synchronous lock that is never held
//! across `.await`), instance creation and lookup by id or handle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aegis_proto::api::{CreateInstance, Instance, InstanceStatus};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::actor::Actor;
use super::boot::HARNESS_READY_TIMEOUT;
use super::command::{reply_channel, Command, LifecycleError, Reply};
use super::spec::{ExposeSpec, InstanceSpec, SpecError};
use super::Ctx;
use crate::images::ImageError;
use crate::kits::preset::{self, secret_selection};
use crate::kits::{KitBinding, KitError, PresetError, SelectError};
use crate::logs::{now_ts, InstanceLog};
use crate::names::{self, NameKind};
use crate::registry::{InstanceRow, RegistryError};
use crate::router::{RouteTarget, RouterError};
use crate::secrets::SecretError;

/// Longest an API call waits for an actor: a wake may include a whole boot.
pub const ACTOR_REPLY_DEADLINE: Duration =
    Duration::from_secs(HARNESS_READY_TIMEOUT.as_secs() + 60);

/// A cheap handle to one instance's actor.
#[derive(Debug, Clone)]
pub struct InstanceHandle {
    /// The instance id.
    pub id: String,
    tx: mpsc::Sender<Command>,
    snapshot: watch::Receiver<Instance>,
    /// The instance's log.
    pub log: Arc<InstanceLog>,
    /// The manifest digest of its image.
    pub image_digest: Option<String>,
    /// Open routed connections and running execs.
    connections: Arc<AtomicUsize>,
}

/// Counts a routed connection or a running exec while it lives; its end is activity too.
#[derive(Debug)]
pub struct ActivityGuard {
    handle: InstanceHandle,
}

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.handle.connections.fetch_sub(1, Ordering::Relaxed);
        self.handle.notify(Command::Touch);
    }
}

impl InstanceHandle {
    /// The latest published view.
    pub fn view(&self) -> Instance {
        self.snapshot.borrow().clone()
    }

    /// A receiver of view changes.
    pub fn watch(&self) -> watch::Receiver<Instance> {
        self.snapshot.clone()
    }

    /// Sends a command built around a reply channel and awaits the reply with a deadline.
    ///
    /// # Errors
    /// The actor's error, or [`LifecycleError::Gone`] when the actor has ended.
    pub async fn request<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, LifecycleError> {
        let (reply, rx): (Reply<T>, oneshot::Receiver<_>) = reply_channel();
        let gone = || LifecycleError::Gone {
            id: self.id.clone(),
        };
        self.tx.send(make(reply)).await.map_err(|_| gone())?;
        match tokio::time::timeout(ACTOR_REPLY_DEADLINE, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(gone()),
            Err(_) => Err(LifecycleError::Stopped {
                id: self.id.clone(),
                reason: format!("no answer within {}s", ACTOR_REPLY_DEADLINE.as_secs()),
            }),
        }
    }

    /// Records a routed connection or an exec until the guard is dropped.
    pub fn activity_started(&self) -> ActivityGuard {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.notify(Command::Touch);
        ActivityGuard {
            handle: self.clone(),
        }
    }

    /// Sends a command that needs no reply.
    pub fn notify(&self, cmd: Command) {
        let _ = self.tx.try_send(cmd);
    }
}

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
    Existing(aegis_proto::api::Endpoint),
}

fn target(handle: &InstanceHandle, e: &ExposeSpec) -> RouteTarget {
    RouteTarget {
        instance: handle.clone(),
        guest_port: e.guest_port,
        protocol: e.protocol,
    }
}

#[derive(Debug, Default)]
struct Maps {
    by_id: HashMap<String, InstanceHandle>,
    by_handle: HashMap<String, String>,
}

/// All instances of the daemon.
#[derive(Debug)]
pub struct Instances {
    /// This map itself, for the tasks it starts that must not keep it alive.
    me: std::sync::Weak<Instances>,
    ctx: Arc<Ctx>,
    maps: Mutex<Maps>,
    actors: Mutex<JoinSet<()>>,
}

impl Instances {
    /// Loads every registered instance and starts its actor, re-attaching to VMs that a
    /// previous daemon left running.
    ///
    /// # Errors
    /// When the registry cannot be read.
    pub async fn load(ctx: Arc<Ctx>) -> Result<Arc<Instances>, RegistryError> {
        let this = Arc::new_cyclic(|me| Instances {
            me: me.clone(),
            ctx: Arc::clone(&ctx),
            maps: Mutex::new(Maps::default()),
            actors: Mutex::new(JoinSet::new()),
        });
        for row in ctx.registry.list_instances().await? {
            let spec: InstanceSpec = match serde_json::from_str(&row.spec) {
                Ok(spec) => spec,
                Err(e) => {
                    tracing::error!(instance = %row.id, error = %e, "skipping instance with an unreadable configuration");
                    continue;
                }
            };
            match this.open_log(&row.id) {
                Ok(log) => {
                    let exposes = spec.exposes.clone();
                    let handle = this.spawn_actor(row, spec, log, true);
                    for e in exposes {
                        match ctx.router.listen(e.public_port).await {
                            Ok(listener) => ctx.router.serve(listener, target(&handle, &e)),
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
                }
                Err(e) => {
                    tracing::error!(instance = %row.id, error = %e, "cannot open instance log")
                }
            }
        }
        Ok(this)
    }

    fn open_log(&self, id: &str) -> std::io::Result<Arc<InstanceLog>> {
        let dir = self.ctx.config.instance_dir(id);
        std::fs::create_dir_all(&dir)?;
        Ok(Arc::new(InstanceLog::open(id, &dir.join("logs.ndjson"))?))
    }

    fn spawn_actor(
        &self,
        row: InstanceRow,
        spec: InstanceSpec,
        log: Arc<InstanceLog>,
        recover: bool,
    ) -> InstanceHandle {
        let id = row.id.clone();
        let handle_name = row.handle.clone();
        let image_digest = spec.image_digest.clone();
        let auto_remove = spec.auto_remove;
        let connections = Arc::new(AtomicUsize::new(0));
        let (actor, tx, snapshot) = Actor::new(
            Arc::clone(&self.ctx),
            row,
            spec,
            Arc::clone(&log),
            Arc::clone(&connections),
        );
        let handle = InstanceHandle {
            id: id.clone(),
            tx,
            snapshot,
            log,
            image_digest,
            connections,
        };
        {
            let mut maps = self.lock();
            maps.by_id.insert(id.clone(), handle.clone());
            if let Some(h) = handle_name {
                maps.by_handle.insert(h, id);
            }
        }
        let mut actors = self
            .actors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        actors.spawn(actor.run(recover));
        if auto_remove {
            actors.spawn(super::auto_remove::watch(self.me.clone(), handle.clone()));
        }
        drop(actors);
        handle
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Finds an instance by id or handle.
    pub fn find(&self, id_or_handle: &str) -> Option<InstanceHandle> {
        let maps = self.lock();
        maps.by_id.get(id_or_handle).cloned().or_else(|| {
            maps.by_handle
                .get(id_or_handle)
                .and_then(|id| maps.by_id.get(id))
                .cloned()
        })
    }

    /// Views of all instances, oldest first.
    pub fn list(&self) -> Vec<Instance> {
        let handles: Vec<InstanceHandle> = self.lock().by_id.values().cloned().collect();
        let mut views: Vec<Instance> = handles.iter().map(InstanceHandle::view).collect();
        views.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        views
    }

    /// Manifest digests of the images instances were created from (kept by `image prune`).
    pub fn image_digests(&self) -> Vec<String> {
        let handles: Vec<InstanceHandle> = self.lock().by_id.values().cloned().collect();
        handles
            .iter()
            .filter_map(|h| h.image_digest.clone())
            .collect()
    }

    /// Creates and starts an instance; or, for the handle of an existing stopped instance,
    /// starts that one with its stored configuration. Returns the view and whether it is new.
    ///
    /// # Errors
    /// [`CreateError`].
    pub async fn create(&self, req: CreateInstance) -> Result<(Instance, bool), CreateError> {
        // The handle names the instance's kit config directory: checked before anything else.
        if let Some(h) = &req.handle {
            names::check(NameKind::Handle, h).map_err(SpecError::Handle)?;
        }
        let (req, kit_config) = self.apply_kit(req).await?;
        if let Some(h) = &req.handle {
            if let Some(existing) = self.find(h) {
                let view = existing.view();
                if view.state != InstanceStatus::Stopped {
                    return Err(CreateError::HandleInUse {
                        handle: h.clone(),
                        id: view.id,
                        state: view.state,
                    });
                }
                self.add_secrets(&existing, &view, &req.secrets).await?;
                let view = existing.request(|reply| Command::Start { reply }).await?;
                return Ok((view, false));
            }
        }
        let mut spec = InstanceSpec::from_request(&req)?;
        let users = self.list();
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
        if let Some(kit) = &kit_config {
            let wanted = secret_selection(&self.ctx.secrets, kit, &spec.secrets)
                .await
                .map_err(|e| match e {
                    SelectError::Preset(e) => CreateError::Preset(e),
                    SelectError::Store(e) => CreateError::Secrets(e),
                })?;
            self.ctx.secrets.check(&wanted).await?;
            spec.kit_config = kit_config;
        }
        // A missing or broken secret fails the create before anything is stored (and again at
        // each boot, where the values are resolved for real).
        spec.secrets = self.ctx.secrets.check(&spec.secrets).await?;
        // Bind the public ports first: a taken port fails the create before anything is stored.
        let mut listeners = Vec::new();
        for e in &mut spec.exposes {
            let listener = self.ctx.router.listen(e.public_port).await?;
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
        let id = self.new_id();
        let row = InstanceRow {
            id: id.clone(),
            handle: req.handle.clone(),
            created_at: now_ts(),
            spec: serde_json::to_string(&spec).map_err(|e| RegistryError::Corrupt {
                id: id.clone(),
                reason: e.to_string(),
            })?,
            status: InstanceStatus::Stopped.as_str().to_owned(),
            enabled: true,
            reason: None,
            exit_code: None,
            stopped_at: None,
            last_active_at: None,
        };
        if let Err(taken) = self.ctx.registry.insert_instance(row.clone()).await? {
            // Lost a race with a concurrent create of the same handle.
            let owner = self.find(&taken.0).map(|h| h.view());
            return Err(CreateError::HandleInUse {
                handle: taken.0,
                id: owner.as_ref().map(|v| v.id.clone()).unwrap_or_default(),
                state: owner.map_or(InstanceStatus::Starting, |v| v.state),
            });
        }
        let log = match self.open_log(&id) {
            Ok(log) => log,
            Err(source) => {
                let _ = self.ctx.registry.delete_instance(id.clone()).await;
                return Err(CreateError::Dir {
                    path: self.ctx.config.instance_dir(&id).display().to_string(),
                    source,
                });
            }
        };
        log.system(format!("created from image {}", spec.image_ref));
        let handle = self.spawn_actor(row, spec, log, false);
        for (listener, e) in listeners {
            self.ctx.router.serve(listener, target(&handle, &e));
        }
        let view = handle.request(|reply| Command::Start { reply }).await?;
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
            .is_some_and(|h| self.find(h).is_some());
        let Some(name) = req.kit.clone().filter(|_| !existing) else {
            return Ok((req, None));
        };
        let kit = self.ctx.kits.get(&name).await?;
        let (req, binding) = preset::apply(&kit.manifest, req)?;
        Ok((req, Some(binding)))
    }

    fn new_id(&self) -> String {
        let mut nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
        let maps = self.lock();
        loop {
            let id = format!("inst-{nanos}");
            if !maps.by_id.contains_key(&id) {
                return id;
            }
            nanos += 1;
        }
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
        req: &aegis_proto::api::ExposeRequest,
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
        let listener = self.ctx.router.listen(expose.public_port).await?;
        expose.public_port = listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(expose.public_port);
        match handle
            .request(|reply| Command::Expose { expose, reply })
            .await
        {
            Ok(_) => {
                self.ctx.router.serve(listener, target(handle, &expose));
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
        self.ctx.router.unbind(removed.public_port);
        handle.log.system(format!(
            "unexposed guest port {} (public port {})",
            removed.guest_port, removed.public_port
        ));
        Ok(())
    }

    /// Deletes an instance (stopping its VM).
    ///
    /// # Errors
    /// The actor's error.
    pub async fn delete(&self, handle: &InstanceHandle) -> Result<(), LifecycleError> {
        handle.request(|reply| Command::Delete { reply }).await?;
        self.ctx.router.unbind_instance(&handle.id);
        let mut maps = self.lock();
        maps.by_id.remove(&handle.id);
        maps.by_handle.retain(|_, id| id != &handle.id);
        Ok(())
    }

    /// Stops every VM gracefully and ends the actors (`aegis down`).
    pub async fn shutdown_all(&self) {
        let handles: Vec<InstanceHandle> = self.lock().by_id.values().cloned().collect();
        let stops = handles
            .iter()
            .map(|h| h.request(|reply| Command::Shutdown { reply }));
        for (h, r) in handles.iter().zip(futures::future::join_all(stops).await) {
            if let Err(e) = r {
                tracing::warn!(instance = %h.id, error = %e, "stop at shutdown failed");
            }
        }
        let mut actors = std::mem::take(
            &mut *self
                .actors
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while actors.join_next().await.is_some() {}
        })
        .await;
    }
}
