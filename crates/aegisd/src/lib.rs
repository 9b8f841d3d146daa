//! `aegisd`, the Aegis daemon: owns instances and their VMs, serves the REST API on a unix
//! socket, keeps the SQLite registry and the logs. `main.rs` only parses flags and calls
//! [`daemon::run`].
#![warn(missing_docs)]
// Errors carry their context (paths, ids, causes) as fields by design; they travel on cold paths
// only, so their size does not matter.
#![allow(clippy::result_large_err)]

pub mod api;
pub mod config;
pub mod control;
pub mod daemon;
pub mod durable;
pub mod e2b;
pub mod ids;
pub mod images;
pub mod kits;
pub mod lifecycle;
pub mod logs;
pub mod names;
pub mod provision;
pub mod registry;
pub mod router;
pub mod secrets;
pub mod workspaces;
