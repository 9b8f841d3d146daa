//! Image references (`name:tag`, `name@sha256:…`) and content digests, parsed and validated once.
//!
//! Parsing follows docker's normalisation rules so that users can type what they type for docker:
//! `alpine` is `docker.io/library/alpine:latest`, `localhost:5000/x:y` keeps its registry. Looking a
//! reference up or fetching it is left to [`crate::store`] and [`crate::pull`](mod@crate::pull).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The registry assumed when a reference names none, as docker does.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The namespace docker puts single-component names in (`alpine` → `library/alpine`).
const DEFAULT_NAMESPACE: &str = "library";
/// The tag assumed when a reference names neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";
/// Docker limits tags to 128 characters.
const MAX_TAG_LEN: usize = 128;
/// Docker limits a full name (registry + repository) to 255 characters.
const MAX_NAME_LEN: usize = 255;

/// Why a digest string was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    /// The string has no `algorithm:` prefix.
    #[error("digest {input:?} has no algorithm prefix (expected sha256:<64 hex digits>)")]
    MissingAlgorithm {
        /// The rejected text.
        input: String,
    },
    /// Only sha256 digests are supported.
    #[error(
        "digest {input:?} uses unsupported algorithm {algorithm:?} (only sha256 is supported)"
    )]
    UnsupportedAlgorithm {
        /// The rejected text.
        input: String,
        /// The algorithm it names.
        algorithm: String,
    },
    /// The hex part is not 64 lowercase hex digits.
    #[error("digest {input:?} is not sha256 followed by 64 lowercase hex digits")]
    MalformedHex {
        /// The rejected text.
        input: String,
    },
}

/// A validated content digest (`sha256:<64 lowercase hex>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest {
    /// The 64 hex digits, without the algorithm prefix.
    hex: String,
}

impl Digest {
    /// The only algorithm Aegis accepts.
    pub const ALGORITHM: &'static str = "sha256";

    /// Parses `sha256:<hex>`.
    ///
    /// # Errors
    /// [`DigestError`] when the prefix is missing, the algorithm is not sha256 or the hex part is
    /// not 64 lowercase hex digits.
    pub fn parse(input: &str) -> Result<Self, DigestError> {
        let Some((algorithm, hex)) = input.split_once(':') else {
            return Err(DigestError::MissingAlgorithm {
                input: input.to_owned(),
            });
        };
        if algorithm != Self::ALGORITHM {
            return Err(DigestError::UnsupportedAlgorithm {
                input: input.to_owned(),
                algorithm: algorithm.to_owned(),
            });
        }
        Self::from_hex(hex).map_err(|_| DigestError::MalformedHex {
            input: input.to_owned(),
        })
    }

    /// Builds a digest from its 64 hex digits.
    ///
    /// # Errors
    /// [`DigestError::MalformedHex`] when `hex` is not 64 lowercase hex digits.
    pub fn from_hex(hex: &str) -> Result<Self, DigestError> {
        let valid = hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if valid {
            Ok(Self {
                hex: hex.to_owned(),
            })
        } else {
            Err(DigestError::MalformedHex {
                input: hex.to_owned(),
            })
        }
    }

    /// The digest of `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        use sha2::Digest as _;
        Self::from_sha256(sha2::Sha256::digest(bytes).as_slice())
    }

    /// The digest whose raw sha256 output is `raw`.
    pub(crate) fn from_sha256(raw: &[u8]) -> Self {
        Self {
            hex: hex::encode(raw),
        }
    }

    /// The 64 hex digits, as used in file names.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The first 12 hex digits, for display.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", Self::ALGORITHM, self.hex)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Digest {
    type Error = DigestError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Digest> for String {
    fn from(value: Digest) -> Self {
        value.to_string()
    }
}

/// Why an image reference was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    /// The reference is empty.
    #[error("image reference is empty")]
    Empty,
    /// The repository path has an empty or malformed component.
    #[error(
        "invalid image reference {input:?}: repository {repository:?} must be lowercase letters, \
         digits and separators (. _ -) between components"
    )]
    InvalidRepository {
        /// The rejected text.
        input: String,
        /// The repository part that failed.
        repository: String,
    },
    /// The registry part is malformed.
    #[error("invalid image reference {input:?}: registry {registry:?} is not a host[:port]")]
    InvalidRegistry {
        /// The rejected text.
        input: String,
        /// The registry part that failed.
        registry: String,
    },
    /// The tag is malformed.
    #[error(
        "invalid image reference {input:?}: tag {tag:?} must be 1-128 characters of letters, \
         digits, '_', '.' and '-', not starting with '.' or '-'"
    )]
    InvalidTag {
        /// The rejected text.
        input: String,
        /// The tag that failed.
        tag: String,
    },
    /// The name is longer than docker allows.
    #[error("invalid image reference {input:?}: name is longer than 255 characters")]
    TooLong {
        /// The rejected text.
        input: String,
    },
    /// The digest part is malformed.
    #[error("invalid image reference {input:?}")]
    InvalidDigest {
        /// The rejected text.
        input: String,
        /// What is wrong with the digest.
        #[source]
        source: DigestError,
    },
}

/// A normalised image reference: registry, repository, and a tag and/or a digest.
///
/// At least one of tag and digest is present: a reference with neither gets the tag `latest`.
/// `Display` prints the fully qualified form (`docker.io/library/alpine:latest`), which is also
/// the key the store files references under.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl ImageRef {
    /// Parses and normalises a reference the way docker does.
    ///
    /// # Errors
    /// [`ReferenceError`] naming the part that is malformed.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let input_trimmed = input.trim();
        if input_trimmed.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (name_and_tag, digest) = match input_trimmed.split_once('@') {
            Some((name, digest)) => {
                let digest =
                    Digest::parse(digest).map_err(|source| ReferenceError::InvalidDigest {
                        input: input.to_owned(),
                        source,
                    })?;
                (name, Some(digest))
            }
            None => (input_trimmed, None),
        };
        // A ':' after the last '/' starts the tag; one before it belongs to a registry port.
        let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
            Some(i) => (
                &name_and_tag[..last_slash + i],
                Some(&name_and_tag[last_slash + i + 1..]),
            ),
            None => (name_and_tag, None),
        };
        if name.len() > MAX_NAME_LEN {
            return Err(ReferenceError::TooLong {
                input: input.to_owned(),
            });
        }
        let (registry, repository) = split_registry(name);
        if !valid_registry(&registry) {
            return Err(ReferenceError::InvalidRegistry {
                input: input.to_owned(),
                registry,
            });
        }
        if !valid_repository(&repository) {
            return Err(ReferenceError::InvalidRepository {
                input: input.to_owned(),
                repository,
            });
        }
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(ReferenceError::InvalidTag {
                    input: input.to_owned(),
                    tag: tag.to_owned(),
                });
            }
        }
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_owned()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_owned()),
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The registry host (and port), e.g. `docker.io` or `localhost:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path inside the registry, e.g. `library/alpine`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if the reference has one.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The manifest digest, if the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same repository pinned to `digest` (the tag is dropped).
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }

    /// The same repository with `tag` (any digest is dropped).
    ///
    /// # Errors
    /// [`ReferenceError::InvalidTag`] when `tag` is not a valid tag.
    pub fn with_tag(&self, tag: &str) -> Result<Self, ReferenceError> {
        if !valid_tag(tag) {
            return Err(ReferenceError::InvalidTag {
                input: format!("{}:{tag}", self.name()),
                tag: tag.to_owned(),
            });
        }
        Ok(Self {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: Some(tag.to_owned()),
            digest: None,
        })
    }

    /// True when the registry is on the loopback interface (`localhost`, `127.0.0.0/8`, `[::1]`),
    /// where plain HTTP is allowed.
    pub fn is_loopback_registry(&self) -> bool {
        is_loopback_host(&self.registry)
    }
}

/// True when `registry` (`host[:port]`) names a loopback host.
pub(crate) fn is_loopback_host(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        registry.split(':').next().unwrap_or_default()
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for ImageRef {
    type Error = ReferenceError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<ImageRef> for String {
    fn from(value: ImageRef) -> Self {
        value.to_string()
    }
}

/// Splits `name` into registry and repository using docker's rule: the first component is a
/// registry when it contains '.' or ':' or is `localhost`, or has an upper-case letter.
fn split_registry(name: &str) -> (String, String) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            let registry = if first == "index.docker.io" {
                DEFAULT_REGISTRY.to_owned()
            } else {
                first.to_owned()
            };
            let repository = if registry == DEFAULT_REGISTRY && !rest.contains('/') {
                format!("{DEFAULT_NAMESPACE}/{rest}")
            } else {
                rest.to_owned()
            };
            (registry, repository)
        }
        Some(_) => (DEFAULT_REGISTRY.to_owned(), name.to_owned()),
        None => (
            DEFAULT_REGISTRY.to_owned(),
            format!("{DEFAULT_NAMESPACE}/{name}"),
        ),
    }
}

fn valid_registry(registry: &str) -> bool {
    !registry.is_empty()
        && registry
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        && !registry.starts_with(['.', '-', ':'])
}

/// Each '/'-separated component is `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`.
fn valid_repository(repository: &str) -> bool {
    !repository.is_empty() && repository.split('/').all(valid_path_component)
}

fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator run: '.', '_', '__' or any number of '-'.
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn valid_tag(tag: &str) -> bool {
    let Some(first) = tag.chars().next() else {
        return false;
    };
    tag.len() <= MAX_TAG_LEN
        && (first.is_ascii_alphanumeric() || first == '_')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn references_normalise_like_docker() {
        let cases = [
            ("alpine", "docker.io/library/alpine:latest"),
            ("alpine:3.19", "docker.io/library/alpine:3.19"),
            ("library/alpine", "docker.io/library/alpine:latest"),
            ("user/app:v1", "docker.io/user/app:v1"),
            ("docker.io/alpine", "docker.io/library/alpine:latest"),
            ("index.docker.io/alpine", "docker.io/library/alpine:latest"),
            ("localhost:5000/x:y", "localhost:5000/x:y"),
            ("localhost/x", "localhost/x:latest"),
            ("127.0.0.1:5000/a/b/c:t", "127.0.0.1:5000/a/b/c:t"),
            (
                "ghcr.io/famiglia/agent-base:latest",
                "ghcr.io/famiglia/agent-base:latest",
            ),
            ("aegis.local/default", "aegis.local/default:latest"),
            ("[::1]:5000/img:t", "[::1]:5000/img:t"),
            ("my-app__x.y", "docker.io/library/my-app__x.y:latest"),
        ];
        for (input, expected) in cases {
            let parsed = ImageRef::parse(input).unwrap();
            assert_eq!(parsed.to_string(), expected, "input {input}");
            assert_eq!(
                ImageRef::parse(expected).unwrap(),
                parsed,
                "round trip {input}"
            );
        }
    }

    #[test]
    fn digest_references_keep_tag_and_digest() {
        let r = ImageRef::parse(&format!("alpine@sha256:{HEX}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().unwrap().hex(), HEX);
        assert_eq!(
            r.to_string(),
            format!("docker.io/library/alpine@sha256:{HEX}")
        );
        let both = ImageRef::parse(&format!("localhost:5000/a:t@sha256:{HEX}")).unwrap();
        assert_eq!(both.tag(), Some("t"));
        assert_eq!(both.registry(), "localhost:5000");
        assert_eq!(both.to_string(), format!("localhost:5000/a:t@sha256:{HEX}"));
    }

    #[test]
    fn bad_references_are_rejected_with_the_part_named() {
        assert_eq!(ImageRef::parse(" "), Err(ReferenceError::Empty));
        assert!(matches!(
            ImageRef::parse("Alpine"),
            Err(ReferenceError::InvalidRepository { .. })
        ));
        assert!(matches!(
            ImageRef::parse("a//b"),
            Err(ReferenceError::InvalidRepository { .. })
        ));
        assert!(matches!(
            ImageRef::parse("a-:x"),
            Err(ReferenceError::InvalidRepository { .. })
        ));
        assert!(matches!(
            ImageRef::parse("alpine:-x"),
            Err(ReferenceError::InvalidTag { .. })
        ));
        assert!(matches!(
            ImageRef::parse("alpine:"),
            Err(ReferenceError::InvalidTag { .. })
        ));
        assert!(matches!(
            ImageRef::parse("alpine@sha256:abc"),
            Err(ReferenceError::InvalidDigest { .. })
        ));
        assert!(matches!(
            ImageRef::parse("a_b.c:5000/x"),
            Err(ReferenceError::InvalidRegistry { .. })
        ));
        assert!(matches!(
            ImageRef::parse(&"a".repeat(300)),
            Err(ReferenceError::TooLong { .. })
        ));
    }

    #[test]
    fn digests_are_validated() {
        assert!(Digest::parse(&format!("sha256:{HEX}")).is_ok());
        assert!(matches!(
            Digest::parse(HEX),
            Err(DigestError::MissingAlgorithm { .. })
        ));
        assert!(matches!(
            Digest::parse(&format!("sha512:{HEX}")),
            Err(DigestError::UnsupportedAlgorithm { .. })
        ));
        assert!(matches!(
            Digest::parse(&format!("sha256:{}", HEX.to_uppercase())),
            Err(DigestError::MalformedHex { .. })
        ));
        assert_eq!(
            Digest::of_bytes(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn loopback_registries_are_recognised() {
        for (r, loopback) in [
            ("localhost:5000/a", true),
            ("127.0.0.1:5000/a", true),
            ("127.1.2.3/a", true),
            ("[::1]:5000/a", true),
            ("docker.io/a", false),
            ("localhost.example.com/a", false),
            ("10.0.0.1:5000/a", false),
        ] {
            assert_eq!(
                ImageRef::parse(r).unwrap().is_loopback_registry(),
                loopback,
                "{r}"
            );
        }
    }
}
