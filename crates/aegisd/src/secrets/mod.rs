//! The secret store: values encrypted at rest with AES-256-GCM under a master key file, kept in
//! the registry, and resolved into a [`SecretEnv`] at each boot of an instance that asks for
//! them. This module owns the cryptography and the key file; the registry only stores
//! ciphertexts, the API only translates, and the lifecycle decides where values are injected.
//!
//! The same master key wraps the one-time keys of sealed streams (snapshot memory files), see
//! [`stream`].
//!
//! Values live in [`SecretValue`], which is zeroised on drop and prints `[redacted]`; errors name
//! secrets, never values.

mod cipher;
mod key;
mod name;
mod store;
mod stream;
mod value;

pub use cipher::{Sealed, NONCE_BYTES};
pub use key::{KeyError, MasterKey, KEY_BYTES, KEY_FILE};
pub use name::{SecretName, SecretSelection, ALL};
pub use store::{SecretError, SecretStore};
pub use stream::{open_stream, seal_stream, StreamError, StreamKey, WrappedKey};
pub use value::{scrub_env, SecretEnv, SecretValue, MAX_INJECTED_BYTES, MAX_VALUE_BYTES};
