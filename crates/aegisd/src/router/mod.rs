//! The router: `aegisd` owns every public listener. A connection wakes its instance (resume
//! when paused, boot when stopped — coalesced by the instance actor), then is relayed to the
//! guest through the harness's ingress proxy. Nothing else accepts traffic for a VM.
//!
//! Connections are bounded: at most [`MAX_CONNECTIONS_PER_PORT`] per public port and a total
//! the daemon derives from its descriptor limit; past either, further clients wait in the
//! kernel's listen backlog instead of costing descriptors. A relayed connection on which nothing
//! moves for [`CONNECTION_IDLE_TIMEOUT`] is closed.
//!
//! Ports are reserved in two steps — [`Router::listen`] binds (and so proves the port free),
//! [`Router::serve`] starts accepting for an instance — so an instance can be created with its
//! ports chosen before its actor exists.

mod idle;
mod relay;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;

use crate::lifecycle::instances::WakeHandle;
use crate::lifecycle::spec::ExposeProtocol;

/// Environment variable setting the address public listeners bind to (default 127.0.0.1).
pub const BIND_ENV: &str = "AEGIS_ROUTER_BIND";

/// Connections relayed at once through one public port (the harness's ingress proxy takes as
/// many per guest).
pub const MAX_CONNECTIONS_PER_PORT: usize = 1024;

/// A relayed connection on which no byte moved in either direction for this long is closed.
/// Long enough for a quiet WebSocket or a long poll; clients that keep a connection open for
/// longer send keepalives anyway.
pub const CONNECTION_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Each relayed connection holds two descriptors (client and guest side).
const DESCRIPTORS_PER_CONNECTION: u64 = 2;
/// Descriptors kept for everything but relayed connections: the API, VMs' control sockets and
/// logs, images being pulled.
const RESERVED_DESCRIPTORS: u64 = 1024;

/// Where a public port leads.
#[derive(Debug, Clone)]
pub struct RouteTarget {
    /// The instance.
    pub instance: WakeHandle,
    /// Its port.
    pub guest_port: u16,
    /// How to answer when nothing listens there.
    pub protocol: ExposeProtocol,
}

/// A public port could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The port is taken (by another instance or another program).
    #[error("public port {port} is already in use")]
    PortInUse {
        /// The port.
        port: u16,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Binding failed otherwise.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug)]
struct Route {
    instance_id: String,
    task: AbortHandle,
}

/// All public listeners.
#[derive(Debug)]
pub struct Router {
    bind: IpAddr,
    routes: Mutex<HashMap<u16, Route>>,
    connections: Arc<Semaphore>,
}

impl Router {
    /// A router binding its listeners to `bind`, relaying as many connections at once as
    /// `open_files` (the daemon's descriptor limit) leaves room for.
    pub fn new(bind: IpAddr, open_files: u64) -> Arc<Router> {
        Arc::new(Router {
            bind,
            routes: Mutex::new(HashMap::new()),
            connections: Arc::new(Semaphore::new(Self::connection_budget(open_files))),
        })
    }

    /// Connections relayed at once over all ports, for a descriptor limit.
    pub fn connection_budget(open_files: u64) -> usize {
        let spare = open_files.saturating_sub(RESERVED_DESCRIPTORS) / DESCRIPTORS_PER_CONNECTION;
        usize::try_from(spare.clamp(64, 1 << 16)).unwrap_or(64)
    }

    /// The address from `AEGIS_ROUTER_BIND`, or loopback.
    ///
    /// # Errors
    /// When the variable is not an IP address.
    pub fn bind_from_env() -> Result<IpAddr, String> {
        match std::env::var(BIND_ENV) {
            Ok(v) if !v.trim().is_empty() => v
                .trim()
                .parse()
                .map_err(|_| format!("{BIND_ENV}={v:?} is not an IP address")),
            _ => Ok(IpAddr::from([127, 0, 0, 1])),
        }
    }

    /// Binds a public port (0: any free port). The listener is not served yet.
    ///
    /// # Errors
    /// [`RouterError`] when the port is taken.
    pub async fn listen(&self, port: u16) -> Result<TcpListener, RouterError> {
        let addr = SocketAddr::new(self.bind, port);
        TcpListener::bind(addr).await.map_err(|source| {
            if source.kind() == std::io::ErrorKind::AddrInUse {
                RouterError::PortInUse { port, source }
            } else {
                RouterError::Bind { addr, source }
            }
        })
    }

    /// Starts accepting on `listener` for `target`, until the port is unbound or the instance
    /// is gone.
    pub fn serve(&self, listener: TcpListener, target: RouteTarget) {
        let Ok(port) = listener.local_addr().map(|a| a.port()) else {
            return;
        };
        let instance_id = target.instance.id().to_string();
        let target = Arc::new(target);
        let all = Arc::clone(&self.connections);
        let task = tokio::spawn(async move {
            let instance = target.instance.clone();
            tokio::select! {
                () = accept_loop(port, listener, target, all) => {}
                () = instance.gone() => {}
            }
        });
        let old = self.lock().insert(
            port,
            Route {
                instance_id,
                task: task.abort_handle(),
            },
        );
        if let Some(old) = old {
            old.task.abort();
        }
    }

    /// Stops listening on `port`.
    pub fn unbind(&self, port: u16) {
        if let Some(route) = self.lock().remove(&port) {
            route.task.abort();
        }
    }

    /// Stops every listener of an instance.
    pub fn unbind_instance(&self, instance_id: &str) {
        self.lock().retain(|_, route| {
            let keep = route.instance_id != instance_id;
            if !keep {
                route.task.abort();
            }
            keep
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u16, Route>> {
        self.routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Accepts connections on one public port and relays each in its own task.
async fn accept_loop(
    port: u16,
    listener: TcpListener,
    target: Arc<RouteTarget>,
    all: Arc<Semaphore>,
) {
    let this_port = Arc::new(Semaphore::new(MAX_CONNECTIONS_PER_PORT));
    let mut full = false;
    loop {
        // Permits before accept: past the caps clients wait in the backlog.
        let (Ok(port_permit), Ok(permit)) = (
            Arc::clone(&this_port).acquire_owned().await,
            Arc::clone(&all).acquire_owned().await,
        ) else {
            return;
        };
        match listener.accept().await {
            Ok((client, _)) => {
                full = false;
                let _ = client.set_nodelay(true);
                let target = Arc::clone(&target);
                tokio::spawn(async move {
                    relay::serve_connection(client, target).await;
                    drop((port_permit, permit));
                });
            }
            Err(e) => {
                // Out of descriptors or memory: noted once, then retried gently rather than in
                // a busy loop.
                if !full {
                    tracing::warn!(port, error = %e, "accept failed; retrying");
                    full = true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}
