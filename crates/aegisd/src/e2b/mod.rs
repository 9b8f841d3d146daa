//! The E2B-compatible listener: E2B's control plane (`/sandboxes`, `/v2/sandboxes`) and its
//! in-sandbox daemon's protocol ("envd": Connect RPC for processes and the file system, HTTP
//! for file transfer) on one TCP address, so the unchanged E2B SDKs drive Aegis instances with
//! `E2B_API_URL` and `E2B_SANDBOX_URL` both set to it.
//!
//! It is a front end, not a second runtime: every call becomes a call of the daemon's own API
//! on its unix socket (through `aegis_client`, as the CLI and `aegis mcp` make them), so a
//! sandbox is an ordinary instance with the same wake, lifetime, validation and errors, and
//! nothing E2B-specific runs in the guest. What E2B has and Aegis does not keep here: the API
//! keys (hashed), each sandbox's template name, metadata and access token (in the registry,
//! removed with the instance), and the E2B process ids of each sandbox's commands (in memory).
//!
//! Off unless `AEGIS_E2B_LISTEN` names an address (`aegis up --e2b ADDR`); a loopback
//! address unless `AEGIS_E2B_PUBLIC=1` says otherwise.

mod connect;
mod control;
mod envd;
mod error;
pub mod keys;
mod processes;

use std::net::SocketAddr;
use std::sync::Arc;

use aegis_client::Client;
use axum::Router;

use crate::registry::Registry;

/// The address to listen on.
pub const LISTEN_ENV: &str = "AEGIS_E2B_LISTEN";
/// Set to `1` to allow a non-loopback address.
pub const PUBLIC_ENV: &str = "AEGIS_E2B_PUBLIC";

/// The envd version the listener reports: the SDKs enable their newer calls by it.
pub const ENVD_VERSION: &str = "0.5.7";

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct E2bState {
    /// The daemon's own API.
    client: Client,
    registry: Registry,
    processes: Arc<processes::Processes>,
}

/// The configured address, if any.
///
/// # Errors
/// A value that is not a socket address, or a non-loopback one without [`PUBLIC_ENV`].
pub fn listen_from_env() -> Result<Option<SocketAddr>, String> {
    let Ok(value) = std::env::var(LISTEN_ENV) else {
        return Ok(None);
    };
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    let addr: SocketAddr = value
        .parse()
        .map_err(|_| format!("{LISTEN_ENV}={value:?} is not an address such as 127.0.0.1:3000"))?;
    let public = std::env::var(PUBLIC_ENV).is_ok_and(|v| v.trim() == "1");
    if !addr.ip().is_loopback() && !public {
        return Err(format!(
            "{LISTEN_ENV}={addr} is not a loopback address: the E2B listener runs code for \
             whoever holds a key, so it listens on the network only with {PUBLIC_ENV}=1"
        ));
    }
    Ok(Some(addr))
}

/// The listener's routes, served with `client` (the daemon's own socket) and `registry`.
pub fn router(client: Client, registry: Registry) -> Router {
    let state = E2bState {
        client,
        registry,
        processes: Arc::default(),
    };
    control::routes()
        .merge(envd::routes())
        .fallback(error::no_route)
        .with_state(state)
}
