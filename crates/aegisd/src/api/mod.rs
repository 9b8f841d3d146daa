//! The REST API: axum routes, one file per resource, served over unix sockets ([`server`]): the
//! main socket with every route, and one socket per kit instance with daemons that reaches only
//! that instance ([`scoped`]). Handlers only translate between HTTP and typed lifecycle
//! commands or calls of the application layer (`provision`).

mod drain;
mod e2b_keys;
mod error;
mod exec;
mod files;
mod images;
mod instances;
mod json;
mod kits;
mod logs;
mod processes;
pub mod scoped;
mod secrets;
pub mod server;
mod status;
mod workspaces;

use std::sync::Arc;

use aegis_vmm::AcceleratorChoice;
use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;
pub use scoped::ScopedSockets;
pub use server::{serve_connection, OnStop, Server};

use crate::lifecycle::instances::Instances;
use crate::lifecycle::Ctx;
use crate::provision::Provisioner;

/// What handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// All instances.
    pub instances: Arc<Instances>,
    /// The lifecycle's shared context (registry, images, secrets, workspaces).
    pub ctx: Arc<Ctx>,
    /// Creating instances, kits, instance daemons, public ports.
    pub provision: Arc<Provisioner>,
    /// The accelerator chosen at start-up, with its reason.
    pub accel: AcceleratorChoice,
    /// Cancelled by `POST /v1/shutdown`.
    pub shutdown: CancellationToken,
    /// Where the E2B-compatible listener is, when it is on.
    pub e2b: Option<std::net::SocketAddr>,
}

/// The checked-in OpenAPI document.
pub const OPENAPI: &str = include_str!("openapi.json");

/// All routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/status", get(status::status))
        .route("/v1/openapi.json", get(status::openapi))
        .route("/v1/shutdown", post(status::shutdown))
        .route("/v1/images", get(images::list))
        .route("/v1/images/pull", post(images::pull))
        .route("/v1/images/import", post(images::import))
        .route("/v1/images/prune", post(images::prune))
        .route(
            "/v1/images/:reference",
            get(images::inspect).delete(images::remove),
        )
        .route(
            "/v1/instances",
            post(instances::create).get(instances::list),
        )
        .route(
            "/v1/instances/:id",
            get(instances::info).delete(instances::delete),
        )
        .route("/v1/instances/:id/:action", post(instances::action))
        .route("/v1/instances/:id/exec", post(exec::exec))
        .route(
            "/v1/instances/:id/files",
            get(files::read).put(files::write).delete(files::remove),
        )
        .route("/v1/instances/:id/files/stat", get(files::stat))
        .route("/v1/instances/:id/files/list", get(files::list))
        .route("/v1/instances/:id/files/mkdir", post(files::mkdir))
        .route("/v1/instances/:id/files/rename", post(files::rename))
        .route(
            "/v1/instances/:id/files/archive",
            get(files::archive_out).put(files::archive_in),
        )
        .route("/v1/instances/:id/execs", get(processes::list))
        .route("/v1/instances/:id/execs/:exec_id", get(processes::get))
        .route(
            "/v1/instances/:id/execs/:exec_id/wait",
            post(processes::wait),
        )
        .route(
            "/v1/instances/:id/execs/:exec_id/signal",
            post(processes::signal),
        )
        .route(
            "/v1/instances/:id/execs/:exec_id/stdin",
            post(processes::stdin),
        )
        .route("/v1/instances/:id/expose", post(instances::expose))
        .route("/v1/instances/:id/timeout", post(instances::set_timeout))
        .route(
            "/v1/instances/:id/execs/:exec_id/terminal",
            post(processes::terminal),
        )
        .route(
            "/v1/instances/:id/execs/:exec_id/resize",
            post(processes::resize),
        )
        .route("/v1/instances/:id/stdin", post(processes::primary_stdin))
        .route(
            "/v1/instances/:id/terminal",
            post(processes::primary_terminal),
        )
        .route("/v1/instances/:id/resize", post(processes::primary_resize))
        .route(
            "/v1/instances/:id/expose/:guest_port",
            axum::routing::delete(instances::unexpose),
        )
        .route("/v1/instances/:id/logs", get(logs::logs))
        .route(
            "/v1/instances/:id/secrets",
            axum::routing::put(secrets::set_for_instance),
        )
        .route("/v1/e2b/keys", get(e2b_keys::list).post(e2b_keys::create))
        .route("/v1/e2b/keys/:key", axum::routing::delete(e2b_keys::revoke))
        .route("/v1/kits", get(kits::list).post(kits::install))
        .route("/v1/kits/:name", get(kits::get).delete(kits::remove))
        .route("/v1/secrets", get(secrets::list))
        .route(
            "/v1/secrets/:name",
            axum::routing::put(secrets::put).delete(secrets::delete),
        )
        .route(
            "/v1/workspaces",
            get(workspaces::list).post(workspaces::create),
        )
        .route(
            "/v1/workspaces/:name",
            get(workspaces::get).delete(workspaces::delete),
        )
        .fallback(error::not_found)
        .layer(axum::middleware::from_fn(drain::drain_refused))
        .with_state(state)
}
