//! Sealing byte streams too large for one AEAD call, such as a snapshot's memory file: guest
//! memory holds whatever the guest was given, secrets included, so it never reaches the disk in
//! clear.
//!
//! Each stream gets a one-time random data key, kept only wrapped by the master key (bound to a
//! purpose string) beside the file. The stream is cut into chunks of at most [`CHUNK_BYTES`],
//! each sealed with AES-256-GCM under a nonce made of the chunk's index and a last-chunk flag
//! (the STREAM construction): a chunk altered, moved, dropped or cut off makes the open fail at
//! that chunk, and nothing of a chunk is passed on before it has been authenticated.
//!
//! Layout: [`MAGIC`], then per chunk its sealed length (u32, little endian) and the sealed bytes.
//! Every chunk but the last holds exactly [`CHUNK_BYTES`]; the last holds fewer (maybe none).

use aes_gcm::aead::{Aead, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Nonce};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroizing;

use super::cipher::{self, Sealed};
use super::key::{cipher_of, KeyError, MasterKey, KEY_BYTES};
use super::store::{blocking, SecretError, SecretStore};

/// Plaintext bytes per chunk.
pub const CHUNK_BYTES: usize = 1 << 20;
/// AES-GCM's tag, appended to every sealed chunk.
const TAG_BYTES: usize = 16;
/// The first bytes of a sealed stream (format version 1).
pub const MAGIC: &[u8; 8] = b"AEGSTRM1";

/// A stream's data key, zeroised on drop; `Debug` prints `[redacted]`.
pub struct StreamKey(Zeroizing<[u8; KEY_BYTES]>);

impl std::fmt::Debug for StreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamKey([redacted])")
    }
}

impl StreamKey {
    fn cipher(&self) -> Aes256Gcm {
        cipher_of(&self.0)
    }

    /// A random key (tests; the daemon gets its keys from [`SecretStore::new_stream_key`]).
    #[cfg(test)]
    pub fn random() -> StreamKey {
        StreamKey(Zeroizing::new(Aes256Gcm::generate_key(&mut OsRng).into()))
    }
}

/// A data key sealed by the master key, as stored beside the stream (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// The nonce of the wrapping.
    pub nonce: String,
    /// The sealed key and its tag.
    pub ciphertext: String,
}

/// Why a sealed stream cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Reading the input or writing the output failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The input does not start like a sealed stream.
    #[error("it is not a sealed stream (unknown header)")]
    NotSealed,
    /// A chunk failed authentication.
    #[error("chunk {0} does not decrypt: the file was altered or sealed with another key")]
    Corrupt(u64),
    /// The input ends before the last chunk.
    #[error("it ends before its last chunk (truncated)")]
    Truncated,
    /// A chunk length no writer produces.
    #[error("chunk {index} claims {len} bytes, which no chunk has")]
    BadLength {
        /// The chunk.
        index: u64,
        /// The length it claims.
        len: usize,
    },
    /// Bytes follow the last chunk.
    #[error("bytes follow its last chunk")]
    Trailing,
}

fn nonce(index: u64, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&index.to_be_bytes());
    n[11] = u8::from(last);
    n
}

/// Reads until `buf` is full or the input ends; returns how much was read.
async fn read_full<R: AsyncRead + Unpin>(input: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]).await? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Seals everything `input` yields into `output`; returns the bytes written.
///
/// # Errors
/// When reading or writing fails.
pub async fn seal_stream<R, W>(key: &StreamKey, mut input: R, mut output: W) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let cipher = key.cipher();
    output.write_all(MAGIC).await?;
    let mut written = MAGIC.len() as u64;
    let mut buf = Zeroizing::new(vec![0u8; CHUNK_BYTES]);
    for index in 0u64.. {
        let filled = read_full(&mut input, &mut buf).await?;
        let last = filled < CHUNK_BYTES;
        let sealed = cipher
            .encrypt(Nonce::from_slice(&nonce(index, last)), &buf[..filled])
            .map_err(|_| std::io::Error::other("encryption failed"))?;
        let len = u32::try_from(sealed.len()).map_err(std::io::Error::other)?;
        output.write_all(&len.to_le_bytes()).await?;
        output.write_all(&sealed).await?;
        written += 4 + sealed.len() as u64;
        if last {
            break;
        }
    }
    output.flush().await?;
    output.shutdown().await?;
    Ok(written)
}

/// Opens a stream sealed by [`seal_stream`] with the same key into `output`, chunk by chunk;
/// returns the plaintext bytes. On failure `output` has received the chunks before the bad one.
///
/// # Errors
/// [`StreamError`] saying what is wrong with the input, or the I/O failure.
pub async fn open_stream<R, W>(
    key: &StreamKey,
    mut input: R,
    mut output: W,
) -> Result<u64, StreamError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let cipher = key.cipher();
    let truncated = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => StreamError::Truncated,
        _ => StreamError::Io(e),
    };
    let mut magic = [0u8; MAGIC.len()];
    input
        .read_exact(&mut magic)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => StreamError::NotSealed,
            _ => StreamError::Io(e),
        })?;
    if &magic != MAGIC {
        return Err(StreamError::NotSealed);
    }
    let mut total = 0u64;
    let mut sealed = vec![0u8; CHUNK_BYTES + TAG_BYTES];
    for index in 0u64.. {
        let mut len = [0u8; 4];
        input.read_exact(&mut len).await.map_err(truncated)?;
        let len = u32::from_le_bytes(len) as usize;
        if !(TAG_BYTES..=CHUNK_BYTES + TAG_BYTES).contains(&len) {
            return Err(StreamError::BadLength { index, len });
        }
        // Only the last chunk is short; a length changed to pretend otherwise fails the tag.
        let last = len < CHUNK_BYTES + TAG_BYTES;
        input
            .read_exact(&mut sealed[..len])
            .await
            .map_err(truncated)?;
        let plain = Zeroizing::new(
            cipher
                .decrypt(Nonce::from_slice(&nonce(index, last)), &sealed[..len])
                .map_err(|_| StreamError::Corrupt(index))?,
        );
        output.write_all(&plain).await?;
        total += plain.len() as u64;
        if last {
            break;
        }
    }
    if input.read(&mut [0u8; 1]).await? != 0 {
        return Err(StreamError::Trailing);
    }
    output.flush().await?;
    output.shutdown().await?;
    Ok(total)
}

impl SecretStore {
    /// A fresh data key for a stream, and its wrapping by the master key bound to `purpose`
    /// (created on first use, like for secrets). `purpose` names the stream, such as
    /// `snapshot:inst-…`; it contains a ':' so it can never be a secret's name.
    ///
    /// # Errors
    /// When the master key cannot be read or created.
    pub async fn new_stream_key(
        &self,
        purpose: &str,
    ) -> Result<(StreamKey, WrappedKey), SecretError> {
        let key_path = self.key_path().to_path_buf();
        let purpose = purpose.to_owned();
        blocking(move || {
            let master = MasterKey::load_or_create(&key_path)?;
            let raw: Zeroizing<[u8; KEY_BYTES]> =
                Zeroizing::new(Aes256Gcm::generate_key(&mut OsRng).into());
            let sealed = cipher::seal_bytes(&master, purpose.as_bytes(), &raw[..])
                .map_err(|_| SecretError::Encrypt { name: purpose })?;
            let wrapped = WrappedKey {
                nonce: hex::encode(&sealed.nonce),
                ciphertext: hex::encode(&sealed.ciphertext),
            };
            Ok((StreamKey(raw), wrapped))
        })
        .await
    }

    /// Unwraps the data key of the stream `purpose`.
    ///
    /// # Errors
    /// [`SecretError::WrappedKey`] when it does not open (altered, another purpose, or another
    /// master key); [`SecretError::Key`] when the master key is missing or refused.
    pub async fn open_stream_key(
        &self,
        purpose: &str,
        wrapped: &WrappedKey,
    ) -> Result<StreamKey, SecretError> {
        let key_path = self.key_path().to_path_buf();
        let purpose = purpose.to_owned();
        let wrapped = wrapped.clone();
        blocking(move || {
            let master = MasterKey::load(&key_path)?.ok_or(KeyError::Missing { path: key_path })?;
            let refused = || SecretError::WrappedKey {
                purpose: purpose.clone(),
            };
            let sealed = Sealed {
                nonce: hex::decode(&wrapped.nonce).map_err(|_| refused())?,
                ciphertext: hex::decode(&wrapped.ciphertext).map_err(|_| refused())?,
            };
            let raw =
                cipher::open_bytes(&master, purpose.as_bytes(), &sealed).map_err(|_| refused())?;
            let raw: [u8; KEY_BYTES] = raw[..].try_into().map_err(|_| refused())?;
            Ok(StreamKey(Zeroizing::new(raw)))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sealed(key: &StreamKey, plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let n = seal_stream(key, plain, &mut out).await.unwrap();
        assert_eq!(n, out.len() as u64);
        out
    }

    async fn opened(key: &StreamKey, sealed: &[u8]) -> Result<Vec<u8>, StreamError> {
        let mut out = Vec::new();
        let n = open_stream(key, sealed, &mut out).await?;
        assert_eq!(n, out.len() as u64);
        Ok(out)
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| u8::try_from(i % 251).unwrap()).collect()
    }

    #[tokio::test]
    async fn round_trips_at_every_chunk_boundary() {
        let key = StreamKey::random();
        for len in [
            0,
            1,
            CHUNK_BYTES - 1,
            CHUNK_BYTES,
            CHUNK_BYTES + 1,
            3 * CHUNK_BYTES,
        ] {
            let plain = pattern(len);
            let s = sealed(&key, &plain).await;
            let chunks = len / CHUNK_BYTES + 1;
            assert_eq!(
                s.len(),
                MAGIC.len() + len + chunks * (4 + TAG_BYTES),
                "{len}"
            );
            assert_eq!(opened(&key, &s).await.unwrap(), plain, "{len}");
        }
    }

    #[tokio::test]
    async fn the_plaintext_is_not_in_the_sealed_stream() {
        let key = StreamKey::random();
        let plain = b"OPENAI_API_KEY=sk-live-123456789".repeat(1000);
        let s = sealed(&key, &plain).await;
        assert!(!s.windows(20).any(|w| w == &plain[..20]));
        // Another key does not open it.
        assert!(matches!(
            opened(&StreamKey::random(), &s).await,
            Err(StreamError::Corrupt(0))
        ));
    }

    #[tokio::test]
    async fn alteration_reordering_and_truncation_fail() {
        let key = StreamKey::random();
        let plain = pattern(2 * CHUNK_BYTES + 100);
        let s = sealed(&key, &plain).await;
        let chunk = 4 + CHUNK_BYTES + TAG_BYTES;

        let mut flipped = s.clone();
        flipped[MAGIC.len() + chunk + 4 + 10] ^= 1;
        assert!(matches!(
            opened(&key, &flipped).await,
            Err(StreamError::Corrupt(1))
        ));

        // Chunks 0 and 1 swapped.
        let mut swapped = s[..MAGIC.len()].to_vec();
        swapped.extend_from_slice(&s[MAGIC.len() + chunk..MAGIC.len() + 2 * chunk]);
        swapped.extend_from_slice(&s[MAGIC.len()..MAGIC.len() + chunk]);
        swapped.extend_from_slice(&s[MAGIC.len() + 2 * chunk..]);
        assert!(matches!(
            opened(&key, &swapped).await,
            Err(StreamError::Corrupt(0))
        ));

        // Cut after a full chunk: the stream lacks its last chunk.
        let cut = &s[..MAGIC.len() + chunk];
        assert!(matches!(
            opened(&key, cut).await,
            Err(StreamError::Truncated)
        ));
        // Cut inside a chunk.
        assert!(matches!(
            opened(&key, &s[..s.len() - 5]).await,
            Err(StreamError::Truncated)
        ));
        // The last chunk dropped and the one before claimed to be last: its tag fails.
        let mut relabelled = s[..MAGIC.len() + chunk].to_vec();
        relabelled[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(
            &u32::try_from(CHUNK_BYTES + TAG_BYTES - 1)
                .unwrap()
                .to_le_bytes(),
        );
        relabelled.truncate(relabelled.len() - 1);
        assert!(matches!(
            opened(&key, &relabelled).await,
            Err(StreamError::Corrupt(0))
        ));

        let mut trailing = s.clone();
        trailing.push(0);
        assert!(matches!(
            opened(&key, &trailing).await,
            Err(StreamError::Trailing)
        ));
        assert!(matches!(
            opened(&key, b"AEGS").await,
            Err(StreamError::NotSealed)
        ));
        assert!(matches!(
            opened(&key, &plain[..64]).await,
            Err(StreamError::NotSealed)
        ));
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            opened(&key, &huge).await,
            Err(StreamError::BadLength { index: 0, .. })
        ));
    }

    #[tokio::test]
    async fn a_wrapped_key_opens_only_for_its_purpose_and_master_key() {
        let dir = tempfile::tempdir().unwrap();
        let registry = crate::registry::Registry::open(&dir.path().join("aegis.db")).unwrap();
        let store = SecretStore::new(registry, dir.path().join("master.key"));
        let (key, wrapped) = store.new_stream_key("snapshot:inst-1").await.unwrap();
        assert!(dir.path().join("master.key").exists());
        let again = store
            .open_stream_key("snapshot:inst-1", &wrapped)
            .await
            .unwrap();
        let s = sealed(&key, b"memory").await;
        assert_eq!(opened(&again, &s).await.unwrap(), b"memory");

        let err = store
            .open_stream_key("snapshot:inst-2", &wrapped)
            .await
            .unwrap_err();
        assert!(matches!(err, SecretError::WrappedKey { .. }), "{err}");
        let mut altered = wrapped.clone();
        let other = if wrapped.ciphertext.starts_with('0') {
            "1"
        } else {
            "0"
        };
        altered.ciphertext.replace_range(0..1, other);
        assert!(store
            .open_stream_key("snapshot:inst-1", &altered)
            .await
            .is_err());
        std::fs::remove_file(dir.path().join("master.key")).unwrap();
        let err = store
            .open_stream_key("snapshot:inst-1", &wrapped)
            .await
            .unwrap_err();
        assert!(
            matches!(err, SecretError::Key(KeyError::Missing { .. })),
            "{err}"
        );
    }
}
