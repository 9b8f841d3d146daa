//! The id → actor map (the only shared map, behind a short synchronous lock that is never held
//! across `.await`): adding an instance from a resolved specification, lookup by id or handle,
//! deleting, and the handles others hold to reach an actor ([`InstanceHandle`], and the narrow
//! [`WakeHandle`] the router gets).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use aegis_proto::api::{Instance, OnTimeout};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::actor::Actor;
use super::boot::{IngressForward, HARNESS_READY_TIMEOUT};
use super::command::{reply_channel, Command, LifecycleError, Reply};
use super::processes::ProcessTable;
use super::spec::{AppData, InstanceSpec};
use super::Ctx;
use crate::ids::{Handle, InstanceId};
use crate::logs::InstanceLog;
use crate::registry::{InstanceRow, RegistryError};

/// Longest an API call waits for an actor: a wake may include a whole boot.
pub const ACTOR_REPLY_DEADLINE: Duration =
    Duration::from_secs(HARNESS_READY_TIMEOUT.as_secs() + 60);

/// A cheap handle to one instance's actor.
#[derive(Debug, Clone)]
pub struct InstanceHandle {
    /// The instance id.
    pub id: InstanceId,
    tx: mpsc::Sender<Command>,
    snapshot: watch::Receiver<Instance>,
    /// The instance's log.
    pub log: Arc<InstanceLog>,
    /// The manifest digest of its image.
    pub image_digest: Option<String>,
    /// What the layer that created it keeps with it (fixed at creation).
    pub app: Arc<AppData>,
    /// Open routed connections and running execs.
    connections: Arc<AtomicUsize>,
    /// The processes started through the API.
    pub processes: Arc<ProcessTable>,
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

/// What the router may do with an instance: wake it, count a connection, and learn where its
/// guest's ingress proxy listens.
#[derive(Debug, Clone)]
pub struct WakeHandle(InstanceHandle);

/// Where a woken guest takes connections.
#[derive(Debug, Clone, Copy)]
pub struct Ingress {
    /// The host address of the guest's ingress proxy (none for a VM an older daemon started).
    pub forward: Option<IngressForward>,
    /// Whether this wake had to boot or resume the guest (its servers may still be starting).
    pub woke: bool,
}

impl WakeHandle {
    /// The instance's id.
    pub fn id(&self) -> &InstanceId {
        &self.0.id
    }

    /// Counts a connection as activity while the guard lives.
    pub fn busy(&self) -> ActivityGuard {
        self.0.activity_started()
    }

    /// Boots or resumes the guest as needed.
    ///
    /// # Errors
    /// The actor's: the instance is disabled, its boot failed, it is gone.
    pub async fn wake(&self) -> Result<Ingress, LifecycleError> {
        let link = self.0.request(|reply| Command::Wake { reply }).await?;
        Ok(Ingress {
            forward: link.ingress,
            woke: link.woke,
        })
    }

    /// Completes once the instance is gone (deleted, or the daemon shuts down).
    pub async fn gone(&self) {
        let mut views = self.0.watch();
        while views.changed().await.is_ok() {}
    }
}

impl InstanceHandle {
    /// The narrow handle the router gets.
    pub fn waker(&self) -> WakeHandle {
        WakeHandle(self.clone())
    }

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

#[derive(Debug, Default)]
struct Maps {
    by_id: HashMap<InstanceId, InstanceHandle>,
    by_handle: HashMap<Handle, InstanceId>,
}

/// Why an instance could not be added.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    /// Another instance has the handle (a concurrent create won).
    #[error("handle {0:?} is already in use")]
    HandleTaken(String),
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
                    this.spawn_actor(row, spec, log, true);
                }
                Err(e) => {
                    tracing::error!(instance = %row.id, error = %e, "cannot open instance log")
                }
            }
        }
        Ok(this)
    }

    fn open_log(&self, id: &InstanceId) -> std::io::Result<Arc<InstanceLog>> {
        let dir = self.ctx.config.instance_dir(id);
        std::fs::create_dir_all(&dir)?;
        Ok(Arc::new(InstanceLog::open(
            id.as_str(),
            &dir.join("logs.ndjson"),
        )?))
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
        let app = Arc::new(spec.app.clone());
        let auto_remove = spec.auto_remove;
        let connections = Arc::new(AtomicUsize::new(0));
        let processes = Arc::new(ProcessTable::default());
        let (actor, tx, snapshot) = Actor::new(
            Arc::clone(&self.ctx),
            row,
            spec,
            Arc::clone(&log),
            Arc::clone(&connections),
            Arc::clone(&processes),
        );
        let handle = InstanceHandle {
            id: id.clone(),
            tx,
            snapshot,
            log,
            image_digest,
            app,
            connections,
            processes,
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
        {
            let instances = self.me.clone();
            let doomed = handle.clone();
            actors.spawn(super::lifetime::watch(handle.watch(), move |on_timeout| {
                expire(instances.clone(), doomed.clone(), on_timeout)
            }));
        }
        if auto_remove {
            let instances = self.me.clone();
            let doomed = handle.clone();
            actors.spawn(super::auto_remove::watch(handle.watch(), move || {
                remove_stopped(instances, doomed)
            }));
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

    /// Every instance's handle.
    pub fn handles(&self) -> Vec<InstanceHandle> {
        self.lock().by_id.values().cloned().collect()
    }

    /// Views of all instances, oldest first.
    pub fn list(&self) -> Vec<Instance> {
        let mut views: Vec<Instance> = self.handles().iter().map(InstanceHandle::view).collect();
        views.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        views
    }

    /// Manifest digests of the images instances were created from (kept by `image prune`).
    pub fn image_digests(&self) -> Vec<String> {
        self.handles()
            .iter()
            .filter_map(|h| h.image_digest.clone())
            .collect()
    }

    /// A fresh instance id.
    pub fn new_id(&self) -> InstanceId {
        let mut nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
        let maps = self.lock();
        loop {
            let id = InstanceId::minted(nanos);
            if !maps.by_id.contains_key(&id) {
                return id;
            }
            nanos += 1;
        }
    }

    /// Records a new instance with its resolved specification and starts its actor (which
    /// does not boot it: send it [`Command::Start`]).
    ///
    /// # Errors
    /// [`AddError`]; nothing is left behind.
    pub async fn add(
        &self,
        row: InstanceRow,
        spec: InstanceSpec,
    ) -> Result<InstanceHandle, AddError> {
        let id = row.id.clone();
        if let Err(taken) = self.ctx.registry.insert_instance(row.clone()).await? {
            return Err(AddError::HandleTaken(taken.0));
        }
        let log = match self.open_log(&id) {
            Ok(log) => log,
            Err(source) => {
                let _ = self.ctx.registry.delete_instance(id.clone()).await;
                return Err(AddError::Dir {
                    path: self.ctx.config.instance_dir(&id).display().to_string(),
                    source,
                });
            }
        };
        log.system(format!("created from image {}", spec.image_ref));
        Ok(self.spawn_actor(row, spec, log, false))
    }

    /// Deletes an instance (stopping its VM).
    ///
    /// # Errors
    /// The actor's error.
    pub async fn delete(&self, handle: &InstanceHandle) -> Result<(), LifecycleError> {
        handle.request(|reply| Command::Delete { reply }).await?;
        let mut maps = self.lock();
        maps.by_id.remove(&handle.id);
        maps.by_handle.retain(|_, id| id != &handle.id);
        Ok(())
    }

    /// Stops every VM gracefully and ends the actors (`aegis down`).
    pub async fn shutdown_all(&self) {
        let handles = self.handles();
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

/// Deletes an auto-remove instance that stayed stopped (see [`super::auto_remove`]), unless it
/// is already gone or the daemon is.
/// Ends an instance whose lifetime ran out: deletes it, or stops it and removes its lifetime.
async fn expire(instances: Weak<Instances>, handle: InstanceHandle, on_timeout: OnTimeout) {
    let Some(instances) = instances.upgrade() else {
        return;
    };
    match on_timeout {
        OnTimeout::Delete => {
            tracing::info!(instance = %handle.id, "lifetime ran out: deleting the instance");
            if let Err(e) = instances.delete(&handle).await {
                tracing::warn!(instance = %handle.id, error = %e, "cannot delete an expired instance");
            }
        }
        OnTimeout::Stop => {
            handle.log.system("lifetime ran out: stopping".to_owned());
            let stopped = handle
                .request(|reply| Command::Stop {
                    mode: super::command::StopMode::Graceful,
                    reply,
                })
                .await;
            if let Err(e) = stopped {
                tracing::warn!(instance = %handle.id, error = %e, "cannot stop an expired instance");
            }
            let _ = handle
                .request(|reply| Command::SetLifetime {
                    lifetime: None,
                    reply,
                })
                .await;
        }
    }
}

async fn remove_stopped(instances: Weak<Instances>, handle: InstanceHandle) {
    let Some(instances) = instances.upgrade() else {
        return;
    };
    if instances.find(handle.id.as_str()).is_none() {
        return;
    }
    match instances.delete(&handle).await {
        Ok(()) => tracing::info!(
            instance = %handle.id,
            grace_secs = super::auto_remove::GRACE.as_secs(),
            "auto-remove instance deleted after it stayed stopped"
        ),
        Err(e) => tracing::warn!(instance = %handle.id, error = %e, "cannot auto-remove instance"),
    }
}
