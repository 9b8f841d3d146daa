//! Wiring: open the registry and image store, re-attach to running VMs, serve the API on the
//! main unix socket and the sockets scoped to one instance that kit instance daemons get, and
//! own shutdown.
//!
//! Two ways to end: `POST /v1/shutdown` (`aegis down`) stops every VM gracefully first; SIGTERM
//! or SIGINT (an upgrade, a service manager) leaves the VMs running for the next daemon to
//! re-attach, as a crash or `kill -9` does.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use aegis_image::store::ImageStore;
use aegis_vmm::qemu::QemuVmm;
use aegis_vmm::AcceleratorChoice;
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState, OnStop, ScopedSockets, Server};
use crate::config::{Config, DEFAULT_IMAGE};
use crate::images::Images;
use crate::kits::{Daemons, KitStore};
use crate::lifecycle::boot::BootEnv;
use crate::lifecycle::instances::Instances;
use crate::lifecycle::Ctx;
use crate::provision::policy::KitPolicy;
use crate::provision::Provisioner;
use crate::registry::{Registry, RegistryError};
use crate::router::Router;
use crate::secrets::SecretStore;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The data directory or socket could not be prepared.
    #[error("cannot prepare {}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Another daemon answers on the socket.
    #[error("another aegisd is already running on {}", socket.display())]
    AlreadyRunning {
        /// The socket.
        socket: PathBuf,
    },
    /// `AEGIS_ACCEL` is invalid.
    #[error(transparent)]
    Accel(#[from] aegis_vmm::accel::UnknownAccelerator),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A setting is invalid.
    #[error("{0}")]
    Config(String),
    /// The image store failed.
    #[error("cannot open the image store")]
    Images(#[source] aegis_image::store::StoreError),
}

/// How long open API connections get to finish once the daemon has stopped its VMs and
/// instance daemons.
const CONNECTION_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A file removed when the value is dropped.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Raises the soft limit on open descriptors to the hard limit (often 1,024 soft, far more
/// hard): each routed connection and each VM costs descriptors. Returns the limit in force.
fn raise_open_file_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft >= hard {
        return soft;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            tracing::debug!(from = soft, to = hard, "raised the open file limit");
            hard
        }
        Err(e) => {
            tracing::warn!(soft, hard, error = %e, "cannot raise the open file limit");
            soft
        }
    }
}

/// Runs the daemon until it is told to stop.
///
/// # Errors
/// [`DaemonError`] when start-up fails.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| DaemonError::Io { path, source }
    };
    std::fs::create_dir_all(&config.home).map_err(io(&config.home))?;
    let _ = std::fs::set_permissions(&config.home, std::fs::Permissions::from_mode(0o700));
    let socket = config.socket();
    if tokio::net::UnixStream::connect(&socket).await.is_ok() {
        return Err(DaemonError::AlreadyRunning { socket });
    }
    let _ = std::fs::remove_file(&socket);
    crate::durable::write(
        &config.pid_file(),
        format!("{}\n", std::process::id()).as_bytes(),
        0o644,
    )
    .map_err(io(&config.pid_file()))?;
    // Removed however start-up or the daemon ends, so no stale pid is left for the CLI.
    let _pid_file = RemoveOnDrop(config.pid_file());

    let e2b_listen = crate::e2b::listen_from_env().map_err(DaemonError::Config)?;
    let open_files = raise_open_file_limit();
    let accel = AcceleratorChoice::detect()?;
    tracing::info!(accelerator = %accel.accelerator, reason = %accel.reason, "accelerator chosen");
    let registry = Registry::open(&config.database())?;
    let store = ImageStore::open(config.images_dir()).map_err(DaemonError::Images)?;
    let server = Server::new();
    let scoped = Arc::new(
        ScopedSockets::open(config.kit_api_dir(), server.clone())
            .map_err(io(&config.kit_api_dir()))?,
    );
    let secrets = SecretStore::new(registry.clone(), config.master_key());
    let ctx = Arc::new(Ctx {
        boot: BootEnv {
            vmm: Arc::new(QemuVmm::default()),
            accelerator: accel.accelerator,
            kernel_dir: config.kernel_dir(),
            harness: config.harness.clone(),
            cache_dir: config.cache_dir(),
            ready_timeout: crate::lifecycle::boot::HARNESS_READY_TIMEOUT,
        },
        policy: Arc::new(KitPolicy::new(secrets.clone())),
        secrets,
        registry,
        images: Images::new(store, DEFAULT_IMAGE),
        workspaces: crate::workspaces::WorkspaceStore::new(config.workspaces_dir()),
        config: config.clone(),
    });
    let router = Router::new(
        Router::bind_from_env().map_err(DaemonError::Config)?,
        open_files,
    );
    let daemons = Daemons::new(socket.clone(), config.home.clone(), config.kits_dir());
    // The sockets serve once `attach` gives them the state below.
    daemons.set_scoped_api(scoped.clone());
    let instances = Instances::load(Arc::clone(&ctx)).await?;
    let provision = Arc::new(Provisioner::new(
        Arc::clone(&ctx),
        Arc::clone(&instances),
        KitStore::new(config.kits_dir()),
        daemons.clone(),
        router,
    ));
    provision.adopt_loaded().await;

    let listener = UnixListener::bind(&socket).map_err(io(&socket))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .map_err(io(&socket))?;
    let shutdown = CancellationToken::new();
    let state = AppState {
        instances: Arc::clone(&instances),
        ctx: Arc::clone(&ctx),
        provision: Arc::clone(&provision),
        accel,
        shutdown: shutdown.clone(),
        e2b: e2b_listen,
    };
    scoped.attach(&state);
    let app = api::router(state);

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(io(&socket))?;
    let stop_accepting = CancellationToken::new();
    let main_socket = server.spawn(server.clone().serve(
        listener,
        app,
        stop_accepting.clone(),
        OnStop::Finish,
    ));
    if let Some(addr) = e2b_listen {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            DaemonError::Config(format!("cannot listen for E2B clients on {addr}: {e}"))
        })?;
        let app = crate::e2b::router(aegis_client::Client::new(&socket), ctx.registry.clone());
        server.spawn(
            server
                .clone()
                .serve(listener, app, stop_accepting.clone(), OnStop::Close),
        );
        tracing::info!(%addr, "serving the E2B-compatible API");
    }
    tracing::info!(socket = %socket.display(), pid = std::process::id(), "aegisd ready");
    let stop_vms = tokio::select! {
        () = shutdown.cancelled() => true,
        _ = sigterm.recv() => false,
        _ = tokio::signal::ctrl_c() => false,
    };
    stop_accepting.cancel();
    // The listener is dropped when its accept loop has seen the cancel.
    let _ = main_socket.await;
    let _ = std::fs::remove_file(&socket);
    // Instance daemons are not left behind like VMs: the next daemon starts them again. Their
    // scoped sockets go with them. They stop first: they may be using their instances.
    daemons.stop_all().await;
    if stop_vms {
        tracing::info!("stopping all instances");
        instances.shutdown_all().await;
    } else {
        tracing::info!("leaving VMs running; the next aegisd re-attaches to them");
    }
    server.wait(CONNECTION_GRACE).await;
    tracing::info!("aegisd stopped");
    Ok(())
}
