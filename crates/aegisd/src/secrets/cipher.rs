//! Sealing and opening one value: AES-256-GCM with a fresh random 96-bit nonce per value and the
//! secret's name as associated data, so a ciphertext moved to another name does not open.

use aes_gcm::aead::{Aead, AeadCore, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

use super::key::MasterKey;
use super::name::SecretName;
use super::value::SecretValue;

/// AES-GCM's standard nonce length.
pub const NONCE_BYTES: usize = 12;

/// An encrypted value as stored: its nonce and the ciphertext with the 16-byte tag appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Random, never reused with this key.
    pub nonce: Vec<u8>,
    /// Ciphertext and tag.
    pub ciphertext: Vec<u8>,
}

/// Sealing failed (the AEAD refuses only inputs far larger than a value may be).
#[derive(Debug, thiserror::Error)]
#[error("encryption failed")]
pub struct SealError;

/// Opening failed: wrong key, wrong name, or an altered nonce or ciphertext. AES-GCM cannot say
/// which, by design.
#[derive(Debug, thiserror::Error)]
#[error("decryption failed")]
pub struct OpenError;

/// Encrypts `value` under `key`, bound to `name`.
///
/// # Errors
/// [`SealError`].
pub fn seal(key: &MasterKey, name: &SecretName, value: &SecretValue) -> Result<Sealed, SealError> {
    seal_bytes(key, name.as_str().as_bytes(), value.expose().as_bytes())
}

/// Decrypts a stored value of `name`.
///
/// # Errors
/// [`OpenError`] when the key, the name, the nonce or the ciphertext is not the one it was
/// sealed with, or the plaintext is not UTF-8.
pub fn open(key: &MasterKey, name: &SecretName, sealed: &Sealed) -> Result<SecretValue, OpenError> {
    let plain = open_bytes(key, name.as_str().as_bytes(), sealed)?;
    let text = std::str::from_utf8(&plain).map_err(|_| OpenError)?;
    Ok(SecretValue::new(text.to_owned()))
}

/// Encrypts `plain` under `key` with a fresh random nonce, bound to `aad`. Secrets use their
/// name as `aad`; other uses pick one a secret name cannot be (it contains a ':').
///
/// # Errors
/// [`SealError`].
pub fn seal_bytes(key: &MasterKey, aad: &[u8], plain: &[u8]) -> Result<Sealed, SealError> {
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let ciphertext = key
        .cipher()
        .encrypt(&nonce, Payload { msg: plain, aad })
        .map_err(|_| SealError)?;
    Ok(Sealed {
        nonce: nonce.to_vec(),
        ciphertext,
    })
}

/// Decrypts what [`seal_bytes`] sealed with the same `aad`.
///
/// # Errors
/// [`OpenError`] for another key, `aad`, nonce or ciphertext.
pub fn open_bytes(
    key: &MasterKey,
    aad: &[u8],
    sealed: &Sealed,
) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    if sealed.nonce.len() != NONCE_BYTES {
        return Err(OpenError);
    }
    let payload = Payload {
        msg: &sealed.ciphertext,
        aad,
    };
    key.cipher()
        .decrypt(Nonce::from_slice(&sealed.nonce), payload)
        .map(Zeroizing::new)
        .map_err(|_| OpenError)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> MasterKey {
        MasterKey::from_bytes([byte; 32])
    }

    fn name(s: &str) -> SecretName {
        SecretName::parse(s).unwrap()
    }

    #[test]
    fn round_trip_with_a_fresh_nonce_each_time() {
        let k = key(1);
        let v = SecretValue::new("s3cr3t value ✓".into());
        let a = seal(&k, &name("API_KEY"), &v).unwrap();
        let b = seal(&k, &name("API_KEY"), &v).unwrap();
        assert_eq!(a.nonce.len(), NONCE_BYTES);
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
        assert_eq!(a.ciphertext.len(), v.expose().len() + 16);
        assert!(!a.ciphertext.windows(6).any(|w| w == b"s3cr3t".as_slice()));
        for sealed in [&a, &b] {
            assert_eq!(
                open(&k, &name("API_KEY"), sealed).unwrap().expose(),
                "s3cr3t value ✓"
            );
        }
        let empty = seal(&k, &name("E"), &SecretValue::new(String::new())).unwrap();
        assert_eq!(open(&k, &name("E"), &empty).unwrap().expose(), "");
    }

    #[test]
    fn another_name_as_associated_data_fails() {
        let k = key(1);
        let sealed = seal(&k, &name("API_KEY"), &SecretValue::new("v".into())).unwrap();
        assert!(open(&k, &name("OTHER"), &sealed).is_err());
        assert!(open(&k, &name("api_key"), &sealed).is_err());
    }

    #[test]
    fn another_key_fails() {
        let sealed = seal(&key(1), &name("A"), &SecretValue::new("v".into())).unwrap();
        assert!(open(&key(2), &name("A"), &sealed).is_err());
    }

    #[test]
    fn any_tampering_fails() {
        let k = key(9);
        let sealed = seal(&k, &name("A"), &SecretValue::new("value".into())).unwrap();
        for i in 0..sealed.ciphertext.len() {
            let mut bad = sealed.clone();
            bad.ciphertext[i] ^= 0x01;
            assert!(open(&k, &name("A"), &bad).is_err(), "byte {i}");
        }
        for i in 0..sealed.nonce.len() {
            let mut bad = sealed.clone();
            bad.nonce[i] ^= 0x80;
            assert!(open(&k, &name("A"), &bad).is_err(), "nonce byte {i}");
        }
        let mut short = sealed.clone();
        short.ciphertext.truncate(short.ciphertext.len() - 1);
        assert!(open(&k, &name("A"), &short).is_err());
        let mut long_nonce = sealed.clone();
        long_nonce.nonce.push(0);
        assert!(open(&k, &name("A"), &long_nonce).is_err());
        let mut swapped = sealed;
        swapped.ciphertext.clear();
        assert!(open(&k, &name("A"), &swapped).is_err());
    }
}
