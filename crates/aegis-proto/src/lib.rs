//! Wire types shared by the Aegis daemon, CLI and guest harness.
//!
//! This crate holds types only: the JSON-RPC 2.0 control channel between `aegisd` and the guest
//! harness ([`control`]), the REST API bodies ([`api`]) and the kit manifest ([`kit`]). Every string that crosses a wire is
//! spelled here, once, through serde attributes. Nothing in this crate performs I/O.
#![warn(missing_docs)]

pub mod api;
pub mod control;
pub mod kit;
