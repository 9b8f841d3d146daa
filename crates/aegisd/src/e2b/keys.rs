//! API keys of the E2B-compatible listener: minted here, shown once, stored as their SHA-256
//! (a key is 20 random bytes, so there is nothing for a slow hash to protect), looked up by
//! that hash on every request.

use aegis_proto::api::{E2bKeyCreated, E2bKeyInfo};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::logs::now_ts;
use crate::registry::{E2bKeyRow, Registry, RegistryError};

/// What every key starts with, as E2B's own do.
pub const KEY_PREFIX: &str = "e2b_";

/// The longest key name.
const NAME_MAX: usize = 64;

fn hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

fn info(row: E2bKeyRow) -> E2bKeyInfo {
    E2bKeyInfo {
        id: row.id,
        name: row.name,
        created_at: row.created_at,
        last_used_at: row.last_used_at,
    }
}

/// Why a key was not created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The name is empty, too long or has characters other than letters, digits, `-`, `_`, `.`.
    #[error("a key name is 1 to {NAME_MAX} letters, digits, '-', '_' or '.'; {0:?} is not")]
    BadName(String),
    /// A key of that name exists.
    #[error("a key named {0:?} exists; revoke it first or choose another name")]
    Exists(String),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Mints a key named `name` and stores its hash; the key is in the answer and nowhere else.
///
/// # Errors
/// [`KeyError`].
pub async fn create(registry: &Registry, name: &str) -> Result<E2bKeyCreated, KeyError> {
    let valid = !name.is_empty()
        && name.len() <= NAME_MAX
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        return Err(KeyError::BadName(name.to_owned()));
    }
    if registry
        .list_e2b_keys()
        .await?
        .iter()
        .any(|k| k.name == name)
    {
        return Err(KeyError::Exists(name.to_owned()));
    }
    let mut secret = [0u8; 20];
    rand::thread_rng().fill_bytes(&mut secret);
    let key = format!("{KEY_PREFIX}{}", hex::encode(secret));
    let mut id = [0u8; 6];
    rand::thread_rng().fill_bytes(&mut id);
    let row = E2bKeyRow {
        id: format!("key_{}", hex::encode(id)),
        name: name.to_owned(),
        created_at: now_ts(),
        last_used_at: None,
    };
    registry.add_e2b_key(row.clone(), hash(&key)).await?;
    Ok(E2bKeyCreated {
        info: info(row),
        key,
    })
}

/// Every key, oldest first.
///
/// # Errors
/// Registry failures.
pub async fn list(registry: &Registry) -> Result<Vec<E2bKeyInfo>, RegistryError> {
    Ok(registry
        .list_e2b_keys()
        .await?
        .into_iter()
        .map(info)
        .collect())
}

/// The key `presented` authenticates, if any.
///
/// # Errors
/// Registry failures.
pub async fn authenticate(
    registry: &Registry,
    presented: &str,
) -> Result<Option<E2bKeyInfo>, RegistryError> {
    if !presented.starts_with(KEY_PREFIX) {
        return Ok(None);
    }
    Ok(registry
        .use_e2b_key(hash(presented), now_ts())
        .await?
        .map(info))
}
