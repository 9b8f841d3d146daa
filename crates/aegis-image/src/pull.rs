//! Pulls images from OCI distribution registries into the store, with typed progress events.
//!
//! The protocol (auth challenges, bearer tokens, manifest and blob requests) is `oci-client`'s;
//! this module decides what to fetch. Manifests are fetched raw and kept byte for byte; an index
//! is resolved to the host's platform; every blob is streamed to a temporary file while its
//! digest is computed and only renamed into the store once it matches (a mismatch leaves no blob,
//! no record and no reference). Blobs already in the store are not fetched again.
//!
//! Cache and tag policy ([`PullPolicy`]):
//! - a reference pinned by digest whose image is stored is served from the store without any
//!   network access (content cannot change);
//! - [`PullPolicy::Always`] (the default, what `aegis image pull` does) resolves a tag with one
//!   manifest GET — tags move — and stops there when the resolved manifest is already stored;
//! - [`PullPolicy::IfMissing`] (for `--image` on `run`, and offline use) uses a stored reference
//!   without contacting the registry at all, and pulls only when the reference is unknown.
//!
//! Building the ext4 base image is [`crate::rootfs`]'s job; `pull` calls it at the end unless
//! told not to, so that the first start of the image does no unpacking.
//!
//! A registry is a peer that may be hostile or broken, so every answer is bounded: manifests by
//! [`MAX_MANIFEST_BYTES`] (from `Content-Length` and again while reading; they are fetched here,
//! not through `oci-client`, which reads them whole), configs by [`MAX_CONFIG_BYTES`] and blobs by
//! their descriptor's size, and time by [`PullOptions::deadline`] for the whole exchange with the
//! registry plus [`PullOptions::stall_timeout`]: every response must deliver
//! [`MIN_PROGRESS_BYTES`] per stall timeout or finish, so a registry dripping one byte a second
//! fails the pull in a minute rather than an hour. A failed pull keeps no blob it was writing and
//! changes no reference.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciEnvelope, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};
use tokio::sync::{mpsc, OnceCell};
use tokio::time::Instant;

use crate::auth::{self, CredentialsError};
use crate::manifest::{
    ConfigFile, Descriptor, Manifest, ManifestDocument, ManifestError, Platform,
    MEDIA_DOCKER_MANIFEST, MEDIA_DOCKER_MANIFEST_LIST, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST,
};
use crate::reference::{Digest, ImageRef};
use crate::rootfs::BuildError;
use crate::store::{ImageRecord, ImageStore, StoreError};

/// How long to wait for a TCP (and TLS) connection to a registry.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a registry may stay silent in the middle of a response before the pull fails.
/// Generous for slow links and proxies; finite so a stuck registry cannot hang a pull.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Layers downloaded at the same time: enough to hide per-request latency, few enough not to
/// starve a slow link.
const MAX_CONCURRENT_LAYERS: usize = 3;
/// A `LayerProgress` event is sent at most once per this many bytes of a layer.
const PROGRESS_STEP: u64 = 256 << 10;
/// Largest image config accepted (real configs are a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// Largest manifest or index accepted: containerd's and distribution's limit (real manifests
/// are a few KiB; indexes of many platforms a few tens).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Default [`PullOptions::deadline`]: a 10 GiB image over a 25 Mbit/s link takes under an hour.
pub const DEFAULT_PULL_DEADLINE: Duration = Duration::from_secs(3600);
/// Default [`PullOptions::stall_timeout`], as long as a registry may stay silent
/// ([`READ_TIMEOUT`]).
pub const DEFAULT_STALL_TIMEOUT: Duration = READ_TIMEOUT;
/// Bytes a response must deliver per stall timeout (unless it ends first): about 500 bytes a
/// second with the default timeout, far below any working link, far above a drip.
pub const MIN_PROGRESS_BYTES: u64 = 32 << 10;
/// Bytes of an error response read for the registry's error message.
const MAX_ERROR_BODY_BYTES: u64 = 64 << 10;
/// Chunks buffered between the network and the blob-writing thread.
const WRITE_QUEUE_CHUNKS: usize = 16;
/// Manifest media types asked for, in order of preference.
const ACCEPTED_MANIFESTS: [&str; 4] = [
    MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST,
    MEDIA_DOCKER_MANIFEST_LIST,
    MEDIA_DOCKER_MANIFEST,
];

/// When to contact the registry (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// Resolve tags at the registry; download what is not stored.
    #[default]
    Always,
    /// Use a stored reference as is; contact the registry only for unknown references.
    IfMissing,
}

/// Whether `pull` also builds the image's ext4 base image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BaseImagePolicy {
    /// Build it (sending [`PullEvent::Unpacking`]), so the first start does no unpacking.
    #[default]
    Build,
    /// Only store the blobs; [`ImageStore::base_image`] builds on first use.
    Skip,
}

/// Where registry credentials come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CredentialSource {
    /// docker's config: `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`.
    #[default]
    DockerConfig,
    /// A docker-format config file at this path.
    DockerConfigFile(PathBuf),
    /// No credentials.
    Anonymous,
}

/// How to pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullOptions {
    /// When to contact the registry.
    pub policy: PullPolicy,
    /// Whether to build the base image as part of the pull.
    pub base_image: BaseImagePolicy,
    /// Where credentials come from.
    pub credentials: CredentialSource,
    /// The platform to pick from multi-platform images (the host's by default).
    pub platform: Platform,
    /// How long the exchange with the registry may take in all (building the base image
    /// afterwards is not counted).
    pub deadline: Duration,
    /// How long any response may take to deliver its next [`MIN_PROGRESS_BYTES`].
    pub stall_timeout: Duration,
}

impl Default for PullOptions {
    fn default() -> Self {
        Self {
            policy: PullPolicy::default(),
            base_image: BaseImagePolicy::default(),
            credentials: CredentialSource::default(),
            platform: Platform::host(),
            deadline: DEFAULT_PULL_DEADLINE,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
        }
    }
}

/// Where a pulled image came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullOutcome {
    /// At least the manifest was downloaded and stored.
    Downloaded,
    /// The image was already stored; nothing was downloaded.
    Cached,
}

/// Progress of a pull, in the order they happen. Layers may interleave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullEvent {
    /// Asking the registry what the reference points at.
    Resolving {
        /// The reference being pulled.
        reference: ImageRef,
    },
    /// A layer download starts.
    LayerStart {
        /// The layer.
        digest: Digest,
        /// Its size in bytes.
        size: u64,
    },
    /// Bytes of a layer received so far.
    LayerProgress {
        /// The layer.
        digest: Digest,
        /// Bytes received so far.
        bytes: u64,
    },
    /// A layer was downloaded and verified.
    LayerDone {
        /// The layer.
        digest: Digest,
    },
    /// A layer is already in the store and is not downloaded.
    LayerCached {
        /// The layer.
        digest: Digest,
        /// Its size in bytes.
        size: u64,
    },
    /// The base image is being built (layers unpacked, ext4 created).
    Unpacking {
        /// The image's manifest digest.
        manifest: Digest,
    },
    /// The pull finished.
    Done {
        /// The image's manifest digest.
        manifest: Digest,
        /// Whether anything was downloaded.
        outcome: PullOutcome,
    },
}

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The registry has no such repository, tag or digest (HTTP 404).
    #[error("image {reference} not found in registry {registry}")]
    NotFound {
        /// The reference pulled.
        reference: ImageRef,
        /// The registry asked.
        registry: String,
    },
    /// The registry refused access (HTTP 401 or 403).
    #[error("registry {registry} refused access to {reference}")]
    Unauthorized {
        /// The reference pulled.
        reference: ImageRef,
        /// The registry asked.
        registry: String,
        /// The docker config the credentials came from, if any were sent.
        credentials_from: Option<PathBuf>,
        /// The registry's answer.
        #[source]
        source: OciDistributionError,
    },
    /// The registry could not be reached (DNS, connection refused, TLS, timeout).
    #[error("cannot reach registry {registry}")]
    Unreachable {
        /// The registry.
        registry: String,
        /// The transport error.
        #[source]
        source: OciDistributionError,
    },
    /// A blob or manifest did not match its digest; it was discarded.
    #[error("blob {digest} of {reference} from {registry} does not match its digest (it hashes to {actual}); nothing was stored")]
    DigestMismatch {
        /// The reference pulled.
        reference: ImageRef,
        /// The registry.
        registry: String,
        /// The digest the content was announced with.
        digest: Digest,
        /// What it hashed to (`unknown` when the registry did not say).
        actual: String,
    },
    /// A blob was longer than its descriptor says; the download was aborted.
    #[error("blob {digest} of {reference} is larger than the {size} bytes its manifest declares")]
    Oversized {
        /// The reference pulled.
        reference: ImageRef,
        /// The blob.
        digest: Digest,
        /// The declared size.
        size: u64,
    },
    /// A manifest or index larger than [`MAX_MANIFEST_BYTES`]; refused without reading it all.
    #[error("registry {registry} sent a manifest for {reference} larger than {MAX_MANIFEST_BYTES} bytes, the limit on manifests")]
    ManifestTooLarge {
        /// The reference pulled.
        reference: ImageRef,
        /// The registry.
        registry: String,
    },
    /// An image config whose descriptor declares more than [`MAX_CONFIG_BYTES`].
    #[error("config {digest} of {reference} declares {size} bytes, more than the {MAX_CONFIG_BYTES}-byte limit on image configs")]
    ConfigTooLarge {
        /// The reference pulled.
        reference: ImageRef,
        /// The config blob.
        digest: Digest,
        /// The size its descriptor declares.
        size: u64,
    },
    /// The layers together declare more bytes than an image may unpack to: refused before any
    /// is downloaded, so a hostile manifest cannot fill the disk with blobs (compressed layers
    /// are never larger than what they unpack to by more than a header).
    #[error(
        "{reference} declares {declared} bytes of layers, more than the {limit}-byte limit on an image's unpacked size"
    )]
    LayersTooLarge {
        /// The reference pulled.
        reference: ImageRef,
        /// The sum of the layers' declared sizes.
        declared: u64,
        /// [`crate::unpack::UnpackLimits::max_unpacked_bytes`].
        limit: u64,
    },
    /// The exchange with the registry took longer than [`PullOptions::deadline`].
    #[error(
        "pull of {reference} from {registry} did not finish within {deadline:?}, the pull deadline"
    )]
    DeadlineExceeded {
        /// The reference pulled.
        reference: ImageRef,
        /// The registry.
        registry: String,
        /// The deadline.
        deadline: Duration,
    },
    /// A response delivered less than [`MIN_PROGRESS_BYTES`] within [`PullOptions::stall_timeout`].
    #[error("registry {registry} sent less than {MIN_PROGRESS_BYTES} bytes in {stall_timeout:?} while pulling {reference}, below the minimum transfer rate")]
    Stalled {
        /// The reference pulled.
        reference: ImageRef,
        /// The registry.
        registry: String,
        /// The stall timeout.
        stall_timeout: Duration,
    },
    /// Another registry error (unexpected status, protocol violation).
    #[error("registry {registry} failed while pulling {reference}")]
    Registry {
        /// The reference pulled.
        reference: ImageRef,
        /// The registry.
        registry: String,
        /// What went wrong.
        #[source]
        source: OciDistributionError,
    },
    /// The image's documents are unusable (unsupported artifact, no image for this platform).
    #[error("cannot use image {reference}")]
    Manifest {
        /// The reference pulled.
        reference: ImageRef,
        /// What is wrong.
        #[source]
        source: ManifestError,
    },
    /// The docker config holding credentials is unusable.
    #[error("cannot read registry credentials for {reference}")]
    Credentials {
        /// The reference pulled.
        reference: ImageRef,
        /// What is wrong.
        #[source]
        source: CredentialsError,
    },
    /// The store failed.
    #[error("cannot store image {reference}")]
    Store {
        /// The reference pulled.
        reference: ImageRef,
        /// What failed.
        #[source]
        source: StoreError,
    },
    /// The base image could not be built.
    #[error("cannot prepare image {reference}")]
    Build {
        /// The reference pulled.
        reference: ImageRef,
        /// What failed.
        #[source]
        source: BuildError,
    },
    /// A blocking task panicked or was cancelled (a bug or a shutdown).
    #[error("pull of {reference} was interrupted")]
    Interrupted {
        /// The reference pulled.
        reference: ImageRef,
        /// The join error.
        #[source]
        source: tokio::task::JoinError,
    },
}

impl PullError {
    /// What the user can do about the error, when there is something.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::NotFound { reference, .. } => Some(format!(
                "check the repository and tag of {reference}; `aegis image list` shows local images"
            )),
            Self::Unauthorized {
                registry,
                credentials_from: Some(path),
                ..
            } => Some(format!(
                "the credentials for {registry} in {} were rejected: run `docker login {registry}` again",
                path.display()
            )),
            Self::Unauthorized { registry, .. } => Some(format!(
                "run `docker login {registry}`, or add credentials for {registry} to ~/.docker/config.json"
            )),
            Self::Unreachable { registry, .. } => Some(format!(
                "check the network and proxy settings for {registry}; offline, load the image with `aegis image import FILE`"
            )),
            Self::DigestMismatch { .. } | Self::Oversized { .. } => Some(
                "the registry or a proxy served corrupt data; retry, and report it to the registry's operator if it persists"
                    .to_owned(),
            ),
            Self::Store { source, .. } => source.hint(),
            Self::Build { source, .. } => source.hint(),
            Self::Credentials { .. } => Some(
                "fix or remove the docker config file, or run `docker login` again".to_owned(),
            ),
            Self::DeadlineExceeded { registry, .. } | Self::Stalled { registry, .. } => Some(format!(
                "{registry} or the network to it is too slow: retry later, or load the image with `aegis image import FILE`"
            )),
            Self::Registry { .. }
            | Self::Manifest { .. }
            | Self::Interrupted { .. }
            | Self::ManifestTooLarge { .. }
            | Self::ConfigTooLarge { .. }
            | Self::LayersTooLarge { .. } => None,
        }
    }
}

/// Pulls `reference` into `store` and returns its record. `progress` receives [`PullEvent`]s
/// as they happen (from the calling task; keep it quick, e.g. a channel send).
///
/// # Errors
/// [`PullError`], typed by cause: not found, unauthorized, unreachable, digest mismatch, ... The
/// store stays consistent: no reference or record is written unless every blob was verified.
pub async fn pull(
    store: &ImageStore,
    reference: &ImageRef,
    options: &PullOptions,
    progress: impl FnMut(PullEvent) + Send,
) -> Result<ImageRecord, PullError> {
    let progress = Mutex::new(progress);
    let emit = |event: PullEvent| {
        let mut progress = progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (*progress)(event);
    };
    let store_err = |source| PullError::Store {
        reference: reference.clone(),
        source,
    };

    // Hold the writer lock for the whole pull, so that prune cannot remove blobs or records
    // between our checks, writes and the reference that makes them live. (A cross-process
    // advisory lock, not a mutex: it is held across awaits on purpose; only prune ever waits for
    // it, and prune gives up after a deadline.)
    let lock_store = store.clone();
    let _writer = blocking(reference, move || lock_store.lock_shared())
        .await?
        .map_err(store_err)?;

    let (cache_store, cache_ref, policy) = (store.clone(), reference.clone(), options.policy);
    let cached = blocking(reference, move || {
        cached_without_network(&cache_store, &cache_ref, policy)
    })
    .await?
    .map_err(store_err)?;
    if let Some(record) = cached {
        return finish(store, record, None, options, &emit, PullOutcome::Cached).await;
    }
    // What the reference pointed at before this pull changes it: restored when the pulled
    // image cannot be used, so a failed pull keeps nothing.
    let (prev_store, prev_ref) = (store.clone(), reference.clone());
    let previous = blocking(reference, move || prev_store.reference_target(&prev_ref))
        .await?
        .map_err(store_err)?;

    emit(PullEvent::Resolving {
        reference: reference.clone(),
    });
    let session = Session::new(reference, options)?;
    let resolved = session.resolve(&options.platform).await?;
    let (cache_store, cache_ref, digest) =
        (store.clone(), reference.clone(), resolved.digest.clone());
    let cached = blocking(reference, move || {
        if !cache_store.is_complete(&digest)? {
            return Ok(None);
        }
        cache_store.set_reference(&cache_ref, &digest)?;
        cache_store.record_for(&digest, &cache_ref)
    })
    .await?
    .map_err(store_err)?;
    if let Some(record) = cached {
        let previous = Some(previous);
        return finish(store, record, previous, options, &emit, PullOutcome::Cached).await;
    }

    let (manifest_bytes, manifest) = match resolved.manifest {
        Some(fetched) => fetched,
        None => session.fetch_manifest(&resolved.digest).await?,
    };
    let config_bytes = session.fetch_config(store, &manifest.config).await?;
    let config = ConfigFile::parse(&config_bytes, &manifest.config.digest)
        .map_err(|e| session.manifest_err(e))?;
    config
        .check_platform(&resolved.digest)
        .map_err(|e| session.manifest_err(e))?;

    let declared = manifest
        .layers
        .iter()
        .fold(0u64, |sum, layer| sum.saturating_add(layer.size));
    let limit = store.unpack_limits().max_unpacked_bytes;
    if declared > limit {
        return Err(PullError::LayersTooLarge {
            reference: reference.clone(),
            declared,
            limit,
        });
    }
    let missing: Vec<&Descriptor> = manifest
        .layers
        .iter()
        .filter(|layer| {
            let cached = store.has_blob(&layer.digest);
            if cached {
                emit(PullEvent::LayerCached {
                    digest: layer.digest.clone(),
                    size: layer.size,
                });
            }
            !cached
        })
        .collect();
    // The futures are built eagerly (not in a `map` closure on the stream) so that the pull
    // future stays `Send`.
    let downloads: Vec<_> = missing
        .into_iter()
        .map(|layer| session.fetch_layer(store, layer, &emit))
        .collect();
    // Every download runs to its end before the first error is reported, so no writer thread
    // outlives the pull (a cancelled download's thread would remove its temporary file only
    // after the pull returned).
    let results: Vec<Result<(), PullError>> = futures::stream::iter(downloads)
        .buffer_unordered(MAX_CONCURRENT_LAYERS)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>, _>>()?;

    let finalize_store = store.clone();
    let manifest_digest = resolved.digest.clone();
    let finalize_ref = reference.clone();
    let record = blocking(reference, move || {
        finalize_store.put_blob(&manifest_bytes, Some(&manifest_digest))?;
        finalize_store.put_blob(&config_bytes, Some(&manifest.config.digest))?;
        finalize_store.put_image(&manifest_digest, &manifest, &config)?;
        finalize_store.set_reference(&finalize_ref, &manifest_digest)?;
        finalize_store.record_for(&manifest_digest, &finalize_ref)
    })
    .await?
    .map_err(store_err)?
    .ok_or_else(|| {
        store_err(StoreError::MissingRecord {
            reference: reference.clone(),
            manifest: resolved.digest.clone(),
        })
    })?;
    finish(
        store,
        record,
        Some(previous),
        options,
        &emit,
        PullOutcome::Downloaded,
    )
    .await
}

/// Runs store work (file I/O with fsync) on the blocking pool.
async fn blocking<T: Send + 'static>(
    reference: &ImageRef,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PullError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|source| PullError::Interrupted {
            reference: reference.clone(),
            source,
        })
}

/// The stored image to serve without asking the registry, per the cache policy.
fn cached_without_network(
    store: &ImageStore,
    reference: &ImageRef,
    policy: PullPolicy,
) -> Result<Option<ImageRecord>, StoreError> {
    let pinned = reference.digest().is_some();
    if !pinned && policy == PullPolicy::Always {
        return Ok(None);
    }
    let Some(record) = store.lookup(reference)? else {
        return Ok(None);
    };
    if !store.is_complete(&record.manifest_digest)? {
        return Ok(None);
    }
    if pinned {
        // Found by content under another name: remember this name too.
        store.set_reference(reference, &record.manifest_digest)?;
    }
    Ok(Some(record))
}

/// Builds the base image when asked to, then reports `Done`. When the build fails and this pull
/// changed the reference (`previous` is what it pointed at before), the reference is restored.
async fn finish(
    store: &ImageStore,
    record: ImageRecord,
    previous: Option<Option<Digest>>,
    options: &PullOptions,
    emit: &(impl Fn(PullEvent) + Sync),
    outcome: PullOutcome,
) -> Result<ImageRecord, PullError> {
    if options.base_image == BaseImagePolicy::Build
        && !store.base_image_path(&record.manifest_digest).is_file()
    {
        emit(PullEvent::Unpacking {
            manifest: record.manifest_digest.clone(),
        });
        let build_store = store.clone();
        let build_record = record.clone();
        let built = tokio::task::spawn_blocking(move || build_store.base_image(&build_record))
            .await
            .map_err(|source| PullError::Interrupted {
                reference: record.reference.clone(),
                source,
            })?;
        if let Err(source) = built {
            if let Some(previous) = previous {
                let (undo_store, undo_ref) = (store.clone(), record.reference.clone());
                let undone = blocking(&record.reference, move || {
                    undo_store.restore_reference(&undo_ref, previous.as_ref())
                })
                .await?;
                if let Err(e) = undone {
                    tracing::warn!(reference = %record.reference, error = %e, "cannot restore the reference after a failed build");
                }
            }
            return Err(PullError::Build {
                reference: record.reference.clone(),
                source,
            });
        }
    }
    emit(PullEvent::Done {
        manifest: record.manifest_digest.clone(),
        outcome,
    });
    Ok(record)
}

/// What the reference resolved to: the platform manifest's digest, and the manifest itself when
/// it was fetched on the way (a reference that named a manifest, not an index).
struct Resolved {
    digest: Digest,
    manifest: Option<(Vec<u8>, Manifest)>,
}

/// One pull's clients, credentials, reference and time limits.
struct Session {
    client: Client,
    /// For manifest GETs, whose size `oci-client` does not bound.
    http: reqwest::Client,
    scheme: &'static str,
    auth: RegistryAuth,
    /// The bearer token for manifest GETs (`None`: basic auth or none), fetched once.
    token: OnceCell<Option<String>>,
    credentials_from: Option<PathBuf>,
    reference: ImageRef,
    oci_ref: oci_client::Reference,
    pace: Pace,
}

/// The pull's deadline and minimum transfer rate, applied to every wait on the registry.
#[derive(Debug, Clone, Copy)]
struct Pace {
    deadline: Instant,
    total: Duration,
    stall_timeout: Duration,
}

/// Why a wait on the registry was cut short.
#[derive(Debug, Clone, Copy)]
enum Expired {
    Deadline,
    Stalled,
}

/// One request's progress against the [`Pace`]: each window of `stall_timeout` must bring
/// [`MIN_PROGRESS_BYTES`], or the answer's headers, or the end.
struct Transfer {
    pace: Pace,
    window_start: Instant,
    window_bytes: u64,
}

impl Transfer {
    fn start(pace: Pace) -> Self {
        Self {
            pace,
            window_start: Instant::now(),
            window_bytes: 0,
        }
    }

    /// Awaits `work` (connecting, a response, the next chunk) within the limits.
    async fn wait<F: std::future::Future>(&mut self, work: F) -> Result<F::Output, Expired> {
        let until = self
            .pace
            .deadline
            .min(self.window_start + self.pace.stall_timeout);
        match tokio::time::timeout_at(until, work).await {
            Ok(output) => Ok(output),
            Err(_) if Instant::now() >= self.pace.deadline => Err(Expired::Deadline),
            Err(_) => Err(Expired::Stalled),
        }
    }

    /// The registry answered: a new window starts.
    fn responded(&mut self) {
        self.window_start = Instant::now();
        self.window_bytes = 0;
    }

    /// `bytes` more arrived.
    fn received(&mut self, bytes: usize) {
        self.window_bytes += bytes as u64;
        if self.window_bytes >= MIN_PROGRESS_BYTES {
            self.responded();
        }
    }
}

impl Session {
    fn new(reference: &ImageRef, options: &PullOptions) -> Result<Self, PullError> {
        let config_path = match &options.credentials {
            CredentialSource::DockerConfig => auth::default_docker_config(),
            CredentialSource::DockerConfigFile(path) => Some(path.clone()),
            CredentialSource::Anonymous => None,
        };
        let credentials = match &config_path {
            Some(path) => {
                auth::load(path, reference.registry()).map_err(|source| PullError::Credentials {
                    reference: reference.clone(),
                    source,
                })?
            }
            None => None,
        };
        let (auth, credentials_from) = match credentials {
            Some(c) => (
                RegistryAuth::Basic(c.username.clone(), c.password().to_owned()),
                config_path,
            ),
            None => (RegistryAuth::Anonymous, None),
        };
        let protocol = if reference.is_loopback_registry() {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        let scheme = match protocol {
            ClientProtocol::Http => "http",
            _ => "https",
        };
        let client = Client::new(ClientConfig {
            protocol,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            // Indexes are resolved here, against `PullOptions::platform`.
            platform_resolver: None,
            ..ClientConfig::default()
        });
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .build()
            .map_err(|e| PullError::Registry {
                reference: reference.clone(),
                registry: reference.registry().to_owned(),
                source: OciDistributionError::RequestError(e),
            })?;
        let oci_ref = match (reference.tag(), reference.digest()) {
            (_, Some(digest)) => oci_client::Reference::with_digest(
                reference.registry().to_owned(),
                reference.repository().to_owned(),
                digest.to_string(),
            ),
            (Some(tag), None) => oci_client::Reference::with_tag(
                reference.registry().to_owned(),
                reference.repository().to_owned(),
                tag.to_owned(),
            ),
            (None, None) => unreachable!("an ImageRef always has a tag or a digest"),
        };
        Ok(Self {
            client,
            http,
            scheme,
            auth,
            token: OnceCell::new(),
            credentials_from,
            reference: reference.clone(),
            oci_ref,
            pace: Pace {
                deadline: Instant::now() + options.deadline,
                total: options.deadline,
                stall_timeout: options.stall_timeout,
            },
        })
    }

    fn expired(&self, expired: Expired) -> PullError {
        let registry = self.reference.registry().to_owned();
        match expired {
            Expired::Deadline => PullError::DeadlineExceeded {
                reference: self.reference.clone(),
                registry,
                deadline: self.pace.total,
            },
            Expired::Stalled => PullError::Stalled {
                reference: self.reference.clone(),
                registry,
                stall_timeout: self.pace.stall_timeout,
            },
        }
    }

    /// GETs the manifest `reference` names, refusing one over [`MAX_MANIFEST_BYTES`] from its
    /// `Content-Length` or, without one, as soon as it grows past it.
    async fn get_manifest(
        &self,
        reference: &oci_client::Reference,
        blob: Option<&Digest>,
    ) -> Result<Vec<u8>, PullError> {
        let mut transfer = Transfer::start(self.pace);
        let request_err = |e| self.registry_err(OciDistributionError::RequestError(e), blob);
        // The token request is oci-client's (it caches the token for the blob requests too).
        let token = transfer
            .wait(self.token.get_or_try_init(|| {
                self.client
                    .auth(&self.oci_ref, &self.auth, RegistryOperation::Pull)
            }))
            .await
            .map_err(|e| self.expired(e))?
            .map_err(|e| self.registry_err(e, blob))?;
        transfer.responded();
        let url = format!(
            "{}://{}/v2/{}/manifests/{}",
            self.scheme,
            reference.resolve_registry(),
            reference.repository(),
            reference.digest().or(reference.tag()).unwrap_or("latest"),
        );
        let mut request = self
            .http
            .get(&url)
            .header(reqwest::header::ACCEPT, ACCEPTED_MANIFESTS.join(", "));
        request = match (token, &self.auth) {
            (Some(token), _) => request.bearer_auth(token),
            (None, RegistryAuth::Basic(user, password)) => request.basic_auth(user, Some(password)),
            (None, _) => request,
        };
        let mut response = transfer
            .wait(request.send())
            .await
            .map_err(|e| self.expired(e))?
            .map_err(request_err)?;
        transfer.responded();
        let status = response.status();
        let too_large = || PullError::ManifestTooLarge {
            reference: self.reference.clone(),
            registry: self.reference.registry().to_owned(),
        };
        let limit = if status.is_success() {
            MAX_MANIFEST_BYTES
        } else {
            MAX_ERROR_BODY_BYTES
        };
        if status.is_success() && response.content_length().is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = transfer
            .wait(response.chunk())
            .await
            .map_err(|e| self.expired(e))?
            .map_err(request_err)?
        {
            transfer.received(chunk.len());
            if (body.len() + chunk.len()) as u64 > limit {
                if status.is_success() {
                    return Err(too_large());
                }
                // An error page is only read for its message: keep its start.
                break;
            }
            body.extend_from_slice(&chunk);
        }
        if status == reqwest::StatusCode::OK {
            return Ok(body);
        }
        let error = match status {
            reqwest::StatusCode::UNAUTHORIZED => OciDistributionError::UnauthorizedError { url },
            s if s.is_client_error() => match serde_json::from_slice::<OciEnvelope>(&body) {
                Ok(envelope) => OciDistributionError::RegistryError { envelope, url },
                Err(_) => OciDistributionError::ServerError {
                    code: s.as_u16(),
                    url,
                    message: String::from_utf8_lossy(&body).into_owned(),
                },
            },
            s => OciDistributionError::ServerError {
                code: s.as_u16(),
                url,
                message: String::from_utf8_lossy(&body).into_owned(),
            },
        };
        Err(self.registry_err(error, blob))
    }

    /// Maps an `oci-client` error to its typed cause; `blob` names the blob being fetched.
    fn registry_err(&self, error: OciDistributionError, blob: Option<&Digest>) -> PullError {
        let registry = self.reference.registry().to_owned();
        let not_found = || PullError::NotFound {
            reference: self.reference.clone(),
            registry: registry.clone(),
        };
        let status_kind = match &error {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => Some(401),
            OciDistributionError::ServerError { code, .. } => Some(*code),
            OciDistributionError::RegistryError { envelope, .. } => {
                envelope.errors.iter().find_map(|e| match e.code {
                    OciErrorCode::Unauthorized | OciErrorCode::Denied => Some(401),
                    OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::NotFound
                    | OciErrorCode::BlobUnknown => Some(404),
                    _ => None,
                })
            }
            OciDistributionError::ImageManifestNotFoundError(_) => Some(404),
            _ => None,
        };
        match status_kind {
            Some(401 | 403) => {
                return PullError::Unauthorized {
                    reference: self.reference.clone(),
                    registry,
                    credentials_from: self.credentials_from.clone(),
                    source: error,
                }
            }
            Some(404) => return not_found(),
            _ => {}
        }
        if let OciDistributionError::DigestError(
            oci_client::errors::DigestError::VerificationError { expected, actual },
        ) = &error
        {
            if let Ok(digest) = Digest::parse(expected) {
                return PullError::DigestMismatch {
                    reference: self.reference.clone(),
                    registry,
                    digest,
                    actual: actual.clone(),
                };
            }
        }
        if let Some(digest) = blob {
            if let Some(mismatch) = digest_mismatch_in(&error) {
                return PullError::DigestMismatch {
                    reference: self.reference.clone(),
                    registry,
                    digest: digest.clone(),
                    actual: mismatch,
                };
            }
        }
        let unreachable = matches!(&error, OciDistributionError::RequestError(e) if e.is_connect() || e.is_timeout());
        if unreachable {
            PullError::Unreachable {
                registry,
                source: error,
            }
        } else {
            PullError::Registry {
                reference: self.reference.clone(),
                registry,
                source: error,
            }
        }
    }

    fn manifest_err(&self, source: ManifestError) -> PullError {
        PullError::Manifest {
            reference: self.reference.clone(),
            source,
        }
    }

    fn store_err(&self, source: StoreError) -> PullError {
        match source {
            StoreError::DigestMismatch { expected, actual } => PullError::DigestMismatch {
                reference: self.reference.clone(),
                registry: self.reference.registry().to_owned(),
                digest: expected,
                actual: actual.to_string(),
            },
            source => PullError::Store {
                reference: self.reference.clone(),
                source,
            },
        }
    }

    fn interrupted(&self, source: tokio::task::JoinError) -> PullError {
        PullError::Interrupted {
            reference: self.reference.clone(),
            source,
        }
    }

    /// One manifest GET: the reference's manifest, or its index resolved to `platform`.
    async fn resolve(&self, platform: &Platform) -> Result<Resolved, PullError> {
        let bytes = self
            .get_manifest(&self.oci_ref, self.reference.digest())
            .await?;
        let digest = Digest::of_bytes(&bytes);
        if let Some(pinned) = self.reference.digest() {
            if *pinned != digest {
                return Err(PullError::DigestMismatch {
                    reference: self.reference.clone(),
                    registry: self.reference.registry().to_owned(),
                    digest: pinned.clone(),
                    actual: digest.to_string(),
                });
            }
        }
        match ManifestDocument::parse(&bytes, &digest).map_err(|e| self.manifest_err(e))? {
            ManifestDocument::Manifest(manifest) => Ok(Resolved {
                digest,
                manifest: Some((bytes, manifest)),
            }),
            ManifestDocument::Index(index) => {
                let entry = index
                    .select(platform, &digest)
                    .map_err(|e| self.manifest_err(e))?;
                Ok(Resolved {
                    digest: entry.digest.clone(),
                    manifest: None,
                })
            }
        }
    }

    /// Fetches the platform manifest `digest` and checks it is one.
    async fn fetch_manifest(&self, digest: &Digest) -> Result<(Vec<u8>, Manifest), PullError> {
        let by_digest = self.oci_ref.clone_with_digest(digest.to_string());
        let bytes = self.get_manifest(&by_digest, Some(digest)).await?;
        let actual = Digest::of_bytes(&bytes);
        if actual != *digest {
            return Err(PullError::DigestMismatch {
                reference: self.reference.clone(),
                registry: self.reference.registry().to_owned(),
                digest: digest.clone(),
                actual: actual.to_string(),
            });
        }
        match ManifestDocument::parse(&bytes, digest).map_err(|e| self.manifest_err(e))? {
            ManifestDocument::Manifest(manifest) => Ok((bytes, manifest)),
            ManifestDocument::Index(_) => Err(self.manifest_err(ManifestError::NestedTooDeep {
                digest: digest.clone(),
            })),
        }
    }

    /// The image config: from the store when present, else from the registry (verified).
    async fn fetch_config(
        &self,
        store: &ImageStore,
        descriptor: &Descriptor,
    ) -> Result<Vec<u8>, PullError> {
        if store.has_blob(&descriptor.digest) {
            return store
                .read_blob(&descriptor.digest)
                .map_err(|e| self.store_err(e));
        }
        if descriptor.size > MAX_CONFIG_BYTES {
            return Err(PullError::ConfigTooLarge {
                reference: self.reference.clone(),
                digest: descriptor.digest.clone(),
                size: descriptor.size,
            });
        }
        let digest = descriptor.digest.to_string();
        let mut transfer = Transfer::start(self.pace);
        let mut stream = transfer
            .wait(self.client.pull_blob_stream(&self.oci_ref, digest.as_str()))
            .await
            .map_err(|e| self.expired(e))?
            .map_err(|e| self.registry_err(e, Some(&descriptor.digest)))?;
        transfer.responded();
        let mut bytes = Vec::new();
        while let Some(chunk) = transfer
            .wait(stream.next())
            .await
            .map_err(|e| self.expired(e))?
        {
            let chunk = chunk.map_err(|e| self.stream_err(e, &descriptor.digest))?;
            transfer.received(chunk.len());
            // Checked before keeping the chunk: the descriptor's size (at most
            // MAX_CONFIG_BYTES) bounds memory, whatever the registry sends.
            if (bytes.len() + chunk.len()) as u64 > descriptor.size {
                return Err(PullError::Oversized {
                    reference: self.reference.clone(),
                    digest: descriptor.digest.clone(),
                    size: descriptor.size,
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        let actual = Digest::of_bytes(&bytes);
        if actual != descriptor.digest {
            return Err(PullError::DigestMismatch {
                reference: self.reference.clone(),
                registry: self.reference.registry().to_owned(),
                digest: descriptor.digest.clone(),
                actual: actual.to_string(),
            });
        }
        Ok(bytes)
    }

    /// Streams a layer into the store through a blocking writer thread, verifying its size and
    /// digest; a failed or corrupt download leaves nothing behind.
    async fn fetch_layer(
        &self,
        store: &ImageStore,
        layer: &Descriptor,
        emit: &(impl Fn(PullEvent) + Sync),
    ) -> Result<(), PullError> {
        emit(PullEvent::LayerStart {
            digest: layer.digest.clone(),
            size: layer.size,
        });
        let digest = layer.digest.to_string();
        let mut transfer = Transfer::start(self.pace);
        let mut stream = transfer
            .wait(self.client.pull_blob_stream(&self.oci_ref, digest.as_str()))
            .await
            .map_err(|e| self.expired(e))?
            .map_err(|e| self.registry_err(e, Some(&layer.digest)))?;
        transfer.responded();

        let (tx, mut rx) = mpsc::channel::<WriterMsg>(WRITE_QUEUE_CHUNKS);
        let writer_store = store.clone();
        let expected = layer.digest.clone();
        let writer = tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            use std::io::Write as _;
            let mut blob = writer_store.blob_writer()?;
            while let Some(msg) = rx.blocking_recv() {
                match msg {
                    WriterMsg::Chunk(bytes) => {
                        blob.write_all(&bytes).map_err(|source| StoreError::Write {
                            path: blob.path().to_owned(),
                            source,
                        })?;
                    }
                    WriterMsg::Finish => {
                        blob.commit(&writer_store, Some(&expected))?;
                        return Ok(());
                    }
                }
            }
            // The sender went away without `Finish`: the download failed; discard.
            Ok(())
        });

        let mut received = 0u64;
        let mut reported = 0u64;
        let download = async {
            while let Some(chunk) = transfer
                .wait(stream.next())
                .await
                .map_err(|e| self.expired(e))?
            {
                let chunk = chunk.map_err(|e| self.stream_err(e, &layer.digest))?;
                transfer.received(chunk.len());
                received += chunk.len() as u64;
                if received > layer.size {
                    return Err(PullError::Oversized {
                        reference: self.reference.clone(),
                        digest: layer.digest.clone(),
                        size: layer.size,
                    });
                }
                if tx.send(WriterMsg::Chunk(chunk)).await.is_err() {
                    // The writer failed; its error is reported below.
                    return Ok(());
                }
                if received - reported >= PROGRESS_STEP || received == layer.size {
                    reported = received;
                    emit(PullEvent::LayerProgress {
                        digest: layer.digest.clone(),
                        bytes: received,
                    });
                }
            }
            // A closed writer means its error is reported below.
            let _ = tx.send(WriterMsg::Finish).await;
            Ok(())
        };
        let downloaded = download.await;
        drop(tx);
        let written = writer.await.map_err(|source| self.interrupted(source))?;
        downloaded?;
        written.map_err(|e| self.store_err(e))?;
        if !store.has_blob(&layer.digest) {
            // The stream ended early without an error from the registry.
            return Err(PullError::DigestMismatch {
                reference: self.reference.clone(),
                registry: self.reference.registry().to_owned(),
                digest: layer.digest.clone(),
                actual: format!(
                    "an incomplete download ({received} of {} bytes)",
                    layer.size
                ),
            });
        }
        emit(PullEvent::LayerDone {
            digest: layer.digest.clone(),
        });
        Ok(())
    }

    /// Maps an error from a blob stream: `oci-client` reports a digest mismatch at the end of
    /// the stream as an I/O error wrapping its `DigestError`.
    fn stream_err(&self, error: std::io::Error, digest: &Digest) -> PullError {
        if let Some(oci_client::errors::DigestError::VerificationError { actual, .. }) = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<oci_client::errors::DigestError>())
        {
            return PullError::DigestMismatch {
                reference: self.reference.clone(),
                registry: self.reference.registry().to_owned(),
                digest: digest.clone(),
                actual: actual.clone(),
            };
        }
        self.registry_err(OciDistributionError::IoError(error), Some(digest))
    }
}

enum WriterMsg {
    Chunk(bytes::Bytes),
    Finish,
}

/// The actual digest in an `oci-client` digest error, wherever it is nested.
fn digest_mismatch_in(error: &OciDistributionError) -> Option<String> {
    match error {
        OciDistributionError::DigestError(oci_client::errors::DigestError::VerificationError {
            actual,
            ..
        }) => Some(actual.clone()),
        OciDistributionError::IoError(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<oci_client::errors::DigestError>())
            .and_then(|e| match e {
                oci_client::errors::DigestError::VerificationError { actual, .. } => {
                    Some(actual.clone())
                }
                _ => None,
            }),
        _ => None,
    }
}
