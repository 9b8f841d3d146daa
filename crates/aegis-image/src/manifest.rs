//! OCI and docker image documents: manifests, indexes, image configs and platforms.
//!
//! Only the fields Aegis uses are modelled; the documents themselves are stored byte for byte in
//! the blob store, so nothing is lost by parsing less. Fetching documents is left to
//! [`crate::pull`](mod@crate::pull) and [`crate::import`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::reference::Digest;

/// OCI image manifest.
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index (multi-platform).
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest.
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (multi-platform).
pub const MEDIA_DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image config.
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config.
pub const MEDIA_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Uncompressed OCI layer.
pub const MEDIA_OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// gzip-compressed OCI layer.
pub const MEDIA_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// zstd-compressed OCI layer.
pub const MEDIA_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Uncompressed docker layer (as in `docker save`).
pub const MEDIA_DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// gzip-compressed docker layer.
pub const MEDIA_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Annotation holding a tag (or a full reference) in an OCI layout's `index.json`.
pub(crate) const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Annotation containerd and docker ≥ 25 put the full image name in.
pub(crate) const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// Why an image document could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The document is not valid JSON of the expected shape.
    #[error("{what} {digest} is not a valid image document")]
    Parse {
        /// Which document ("manifest", "image config", "index").
        what: &'static str,
        /// Its digest.
        digest: Digest,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// The manifest's media type is one Aegis cannot run (e.g. a helm chart or a signature).
    #[error("manifest {digest} has unsupported media type {media_type:?}")]
    UnsupportedMediaType {
        /// The manifest's digest.
        digest: Digest,
        /// Its media type.
        media_type: String,
    },
    /// A layer uses a media type Aegis cannot unpack (e.g. an encrypted layer).
    #[error("layer {digest} has unsupported media type {media_type:?}")]
    UnsupportedLayer {
        /// The layer's digest.
        digest: Digest,
        /// Its media type.
        media_type: String,
    },
    /// An index has no manifest for this host's platform.
    #[error("index {digest} has no image for platform {wanted} (it has: {available})")]
    NoMatchingPlatform {
        /// The index digest.
        digest: Digest,
        /// The host platform.
        wanted: Platform,
        /// The platforms it offers, comma-separated.
        available: String,
    },
    /// The image was built for another platform; a VM cannot run it.
    #[error("image {digest} is built for {image}, but this host runs {host}")]
    WrongPlatform {
        /// The manifest digest.
        digest: Digest,
        /// The image's platform.
        image: Platform,
        /// The host's platform.
        host: Platform,
    },
    /// An index nests deeper than Aegis follows.
    #[error("index {digest} nests other indexes too deeply")]
    NestedTooDeep {
        /// The index digest.
        digest: Digest,
    },
}

/// A content descriptor: what a manifest or index says about a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The blob's media type.
    pub media_type: String,
    /// The blob's digest.
    pub digest: Digest,
    /// The blob's size in bytes.
    pub size: u64,
    /// The platform, for entries of an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An image manifest (OCI or docker schema 2): a config and an ordered list of layers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// The manifest's own media type, when it states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image config blob.
    pub config: Descriptor,
    /// Layers, bottom first.
    pub layers: Vec<Descriptor>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An image index (OCI) or manifest list (docker): one manifest per platform.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// The index's own media type, when it states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The manifests it lists.
    pub manifests: Vec<Descriptor>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// A parsed top-level document: either a single-platform manifest or an index.
#[derive(Debug, Clone)]
pub enum ManifestDocument {
    /// A single image.
    Manifest(Manifest),
    /// A list of images, one per platform.
    Index(Index),
}

/// Just enough of a document to tell manifests and indexes apart.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
}

impl ManifestDocument {
    /// Parses a manifest or index, telling them apart by media type (or, when the document does
    /// not state one, by the presence of `manifests`).
    ///
    /// # Errors
    /// [`ManifestError::Parse`] for malformed JSON, [`ManifestError::UnsupportedMediaType`] for
    /// artifacts that are not images.
    pub fn parse(bytes: &[u8], digest: &Digest) -> Result<Self, ManifestError> {
        let parse_err = |what, source| ManifestError::Parse {
            what,
            digest: digest.clone(),
            source,
        };
        let probe: Probe = serde_json::from_slice(bytes).map_err(|e| parse_err("manifest", e))?;
        let is_index = match probe.media_type.as_deref() {
            Some(MEDIA_OCI_INDEX | MEDIA_DOCKER_MANIFEST_LIST) => true,
            Some(MEDIA_OCI_MANIFEST | MEDIA_DOCKER_MANIFEST) => false,
            Some(other) => {
                return Err(ManifestError::UnsupportedMediaType {
                    digest: digest.clone(),
                    media_type: other.to_owned(),
                })
            }
            None => probe.manifests.is_some(),
        };
        if is_index {
            let index = serde_json::from_slice(bytes).map_err(|e| parse_err("index", e))?;
            Ok(Self::Index(index))
        } else {
            let manifest: Manifest =
                serde_json::from_slice(bytes).map_err(|e| parse_err("manifest", e))?;
            manifest.check_layers()?;
            Ok(Self::Manifest(manifest))
        }
    }
}

impl Manifest {
    /// The media type to report for this manifest (OCI when it does not say).
    pub fn media_type_or_default(&self) -> &str {
        self.media_type.as_deref().unwrap_or(MEDIA_OCI_MANIFEST)
    }

    /// Rejects layers Aegis cannot unpack (encrypted, foreign archive formats, artifacts).
    fn check_layers(&self) -> Result<(), ManifestError> {
        for layer in &self.layers {
            if !is_supported_layer(&layer.media_type) {
                return Err(ManifestError::UnsupportedLayer {
                    digest: layer.digest.clone(),
                    media_type: layer.media_type.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Layer media types Aegis unpacks: OCI and docker tar layers, uncompressed, gzip or zstd,
/// including docker's "foreign" (non-distributable) variants.
pub(crate) fn is_supported_layer(media_type: &str) -> bool {
    matches!(
        media_type,
        MEDIA_OCI_LAYER_TAR
            | MEDIA_OCI_LAYER_GZIP
            | MEDIA_OCI_LAYER_ZSTD
            | MEDIA_DOCKER_LAYER_TAR
            | MEDIA_DOCKER_LAYER_GZIP
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd"
    )
}

impl Index {
    /// The entry for `platform`, preferring an exact variant match.
    ///
    /// # Errors
    /// [`ManifestError::NoMatchingPlatform`] listing what the index offers.
    pub fn select(
        &self,
        platform: &Platform,
        digest: &Digest,
    ) -> Result<&Descriptor, ManifestError> {
        let candidates = || {
            self.manifests
                .iter()
                .filter(|d| d.platform.as_ref().is_some_and(|p| platform.runs(p)))
        };
        candidates()
            .find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p.variant == platform.variant)
            })
            .or_else(|| candidates().next())
            .ok_or_else(|| ManifestError::NoMatchingPlatform {
                digest: digest.clone(),
                wanted: platform.clone(),
                available: self
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref().map(ToString::to_string))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// An operating system and CPU architecture, in OCI spelling (`linux/amd64`, `linux/arm64/v8`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`, ...
    pub architecture: String,
    /// `v8` for arm64, when stated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of the machine Aegis runs on; VMs run the host's architecture.
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "x86" => ("386", None),
            "riscv64" => ("riscv64", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            other => (other, None),
        };
        Self {
            os: "linux".to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
        }
    }

    /// True when an image built for `image` runs on this platform. A missing variant matches
    /// (arm64 images rarely state `v8`).
    pub fn runs(&self, image: &Platform) -> bool {
        self.os == image.os
            && self.architecture == image.architecture
            && (image.variant.is_none() || image.variant == self.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// The parts of an image config that decide how its processes run (docker's `config` object).
///
/// Empty vectors and `None` mean "not set by the image".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// Environment, `KEY=value` entries in image order.
    pub env: Vec<String>,
    /// Working directory for processes.
    pub working_dir: Option<String>,
    /// User (`name`, `uid`, `uid:gid`, `name:group`) processes run as.
    pub user: Option<String>,
    /// Entrypoint argv.
    pub entrypoint: Vec<String>,
    /// Default command (arguments to the entrypoint when it is set).
    pub cmd: Vec<String>,
}

impl ImageConfig {
    /// The argv to run for a user `command`, the way `docker run` does: the entrypoint followed
    /// by `command`, or by the image's `Cmd` when `command` is empty.
    pub fn argv(&self, command: &[String]) -> Vec<String> {
        self.argv_with(None, command)
    }

    /// [`ImageConfig::argv`] with the entrypoint replaced by `entrypoint` when given, as
    /// `docker run --entrypoint` does: the image's `Cmd` is then not used (an empty
    /// `entrypoint` clears it, so `command` runs alone).
    pub fn argv_with(&self, entrypoint: Option<&[String]>, command: &[String]) -> Vec<String> {
        match entrypoint {
            Some(entrypoint) => entrypoint.iter().chain(command).cloned().collect(),
            None => {
                let tail = if command.is_empty() {
                    &self.cmd
                } else {
                    command
                };
                self.entrypoint.iter().chain(tail).cloned().collect()
            }
        }
    }

    /// The environment for a process: the image's `Env` with `overrides` (`KEY=value`) applied
    /// on top, so explicit values win.
    pub fn env_with(&self, overrides: &[String]) -> Vec<String> {
        let key = |entry: &str| entry.split('=').next().unwrap_or_default().to_owned();
        let mut merged: Vec<String> = self
            .env
            .iter()
            .filter(|e| !overrides.iter().any(|o| key(o) == key(e)))
            .cloned()
            .collect();
        merged.extend(overrides.iter().cloned());
        merged
    }
}

/// The image config document (`application/vnd.oci.image.config.v1+json`), as far as Aegis
/// reads it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ContainerConfig>,
    #[serde(default)]
    pub rootfs: RootFs,
}

/// docker's capitalised `config` object.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ContainerConfig {
    #[serde(rename = "Env", default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub working_dir: Option<String>,
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

impl Default for RootFs {
    fn default() -> Self {
        Self {
            kind: "layers".to_owned(),
            diff_ids: Vec::new(),
        }
    }
}

impl ConfigFile {
    /// Parses a config blob.
    pub fn parse(bytes: &[u8], digest: &Digest) -> Result<Self, ManifestError> {
        serde_json::from_slice(bytes).map_err(|source| ManifestError::Parse {
            what: "image config",
            digest: digest.clone(),
            source,
        })
    }

    /// The run-time settings, with empty strings treated as unset.
    pub fn image_config(&self) -> ImageConfig {
        let c = self.config.clone().unwrap_or_default();
        let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
        ImageConfig {
            env: c.env.unwrap_or_default(),
            working_dir: non_empty(c.working_dir),
            user: non_empty(c.user),
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
        }
    }

    /// The platform the image was built for.
    pub fn platform(&self) -> Platform {
        Platform {
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant: self.variant.clone(),
        }
    }

    /// Refuses images for another architecture or OS (a config that does not say is accepted).
    pub fn check_platform(&self, digest: &Digest) -> Result<(), ManifestError> {
        let host = Platform::host();
        let image = self.platform();
        if image.architecture.is_empty() || host.runs(&image) {
            return Ok(());
        }
        Err(ManifestError::WrongPlatform {
            digest: digest.clone(),
            image,
            host,
        })
    }

    /// A config for `config` on the host platform, with one layer per diff id.
    pub fn for_host(config: &ImageConfig, created: &str, diff_ids: Vec<Digest>) -> Self {
        let host = Platform::host();
        let opt_vec = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        Self {
            created: Some(created.to_owned()),
            architecture: host.architecture,
            os: host.os,
            variant: host.variant,
            config: Some(ContainerConfig {
                env: opt_vec(&config.env),
                working_dir: config.working_dir.clone(),
                user: config.user.clone(),
                entrypoint: opt_vec(&config.entrypoint),
                cmd: opt_vec(&config.cmd),
            }),
            rootfs: RootFs {
                kind: "layers".to_owned(),
                diff_ids,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::of_bytes(&[n])
    }

    #[test]
    fn documents_are_told_apart() {
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MEDIA_DOCKER_MANIFEST}",
            "config":{{"mediaType":"{MEDIA_DOCKER_CONFIG}","digest":"{}","size":1}},
            "layers":[{{"mediaType":"{MEDIA_DOCKER_LAYER_GZIP}","digest":"{}","size":2}}]}}"#,
            digest(1),
            digest(2)
        );
        let ManifestDocument::Manifest(m) =
            ManifestDocument::parse(manifest.as_bytes(), &digest(0)).unwrap()
        else {
            panic!("expected a manifest");
        };
        assert_eq!(m.layers[0].digest, digest(2));

        // No mediaType: an index is recognised by its `manifests`.
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[
              {{"mediaType":"{MEDIA_OCI_MANIFEST}","digest":"{}","size":3,
                "platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
              {{"mediaType":"{MEDIA_OCI_MANIFEST}","digest":"{}","size":3,
                "platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            digest(3),
            digest(4)
        );
        let ManifestDocument::Index(i) =
            ManifestDocument::parse(index.as_bytes(), &digest(0)).unwrap()
        else {
            panic!("expected an index");
        };
        let amd64 = Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        };
        let arm64 = Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: Some("v8".into()),
        };
        assert_eq!(i.select(&amd64, &digest(0)).unwrap().digest, digest(4));
        assert_eq!(i.select(&arm64, &digest(0)).unwrap().digest, digest(3));
        let riscv = Platform {
            os: "linux".into(),
            architecture: "riscv64".into(),
            variant: None,
        };
        let err = i.select(&riscv, &digest(0)).unwrap_err();
        assert!(
            err.to_string().contains("linux/arm64/v8, linux/amd64"),
            "{err}"
        );
    }

    #[test]
    fn artifacts_and_encrypted_layers_are_refused() {
        let helm = r#"{"schemaVersion":2,"mediaType":"application/vnd.cncf.helm.chart.v1"}"#;
        assert!(matches!(
            ManifestDocument::parse(helm.as_bytes(), &digest(0)),
            Err(ManifestError::UnsupportedMediaType { .. })
        ));
        let encrypted = format!(
            r#"{{"schemaVersion":2,
            "config":{{"mediaType":"{MEDIA_OCI_CONFIG}","digest":"{}","size":1}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip+encrypted","digest":"{}","size":2}}]}}"#,
            digest(1),
            digest(2)
        );
        assert!(matches!(
            ManifestDocument::parse(encrypted.as_bytes(), &digest(0)),
            Err(ManifestError::UnsupportedLayer { .. })
        ));
    }

    #[test]
    fn config_fields_are_read_from_docker_spelling() {
        let json = br#"{"architecture":"amd64","os":"linux","created":"2024-01-02T03:04:05Z",
            "config":{"Env":["PATH=/bin","A=1"],"WorkingDir":"/srv","User":"1000:1000",
                      "Entrypoint":["/bin/sh","-c"],"Cmd":["echo hi"]},
            "rootfs":{"type":"layers","diff_ids":[]}}"#;
        let c = ConfigFile::parse(json, &digest(0)).unwrap().image_config();
        assert_eq!(c.env, ["PATH=/bin", "A=1"]);
        assert_eq!(c.working_dir.as_deref(), Some("/srv"));
        assert_eq!(c.user.as_deref(), Some("1000:1000"));
        assert_eq!(c.argv(&[]), ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(c.argv(&["ls".to_owned()]), ["/bin/sh", "-c", "ls"]);
        assert_eq!(c.env_with(&["A=2".to_owned()]), ["PATH=/bin", "A=2"]);

        let bare = ConfigFile::parse(br#"{"config":{"WorkingDir":"","Cmd":null}}"#, &digest(0))
            .unwrap()
            .image_config();
        assert_eq!(bare, ImageConfig::default());
    }
}
