//! Typed async client for the `aegisd` REST API: HTTP/1.1 + JSON on the daemon's unix socket,
//! one connection per request. Used by the `aegis` CLI and by the end-to-end tests.
//!
//! Request and response bodies are the types of [`aegis_proto::api`]; this crate adds only the
//! transport, the routes, NDJSON stream decoding and [`ClientError`]. It never retries and never
//! starts the daemon: that is the CLI's job (`aegis up`).
#![warn(missing_docs)]

mod client;
mod e2b;
mod error;
mod files;
mod images;
mod kits;
mod ndjson;
mod paths;
mod secrets;
mod transport;
mod workspaces;

pub use client::{
    Client, Created, ExecInput, InstanceAction, LogsQuery, TerminalStream, DEFAULT_TIMEOUT,
};
pub use error::ClientError;
pub use files::{Download, WriteOptions};
pub use hyper::StatusCode;
pub use kits::KitInstalled;
pub use ndjson::{NdjsonStream, MAX_LINE_BYTES};
pub use paths::{home_from_env, socket_in, HOME_ENV, SOCKET_NAME};
pub use secrets::SecretSet;
