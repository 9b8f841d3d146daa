//! Registry credentials from docker's `config.json`, the file `docker login` writes.
//!
//! Only inline credentials are read (`auths.<registry>.auth`, base64 `user:password`, or
//! `username`/`password`). Credential helpers (`credsStore`, `credHelpers`) run external programs
//! and are not supported; a registry configured only through one is accessed anonymously, with a
//! warning. Using the credentials is left to [`crate::pull`](mod@crate::pull).

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

/// Registry keys `docker login` writes for Docker Hub, all meaning `docker.io`.
const DOCKER_HUB_KEYS: [&str; 4] = [
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
];

/// Why the docker config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The file exists but cannot be read.
    #[error("cannot read docker config {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file is not valid JSON of docker's shape.
    #[error("docker config {path} is malformed")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// An `auth` entry is not base64 of `user:password`.
    #[error("the credentials for {registry} in {path} are not base64 of user:password")]
    BadAuth {
        /// The file.
        path: PathBuf,
        /// The registry entry.
        registry: String,
    },
}

/// A user name and password for one registry. `Debug` never prints the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    password: String,
}

impl Credentials {
    /// Credentials from a user name and password.
    pub fn new(username: String, password: String) -> Self {
        Self { username, password }
    }

    /// The password (kept out of `Debug` and logs).
    pub fn password(&self) -> &str {
        &self.password
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .finish()
    }
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// Where docker keeps its config: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn default_docker_config() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(Path::new(&dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|home| Path::new(&home).join(".docker/config.json"))
}

/// The credentials for `registry` (`host[:port]`) in the docker config at `path`; `None` when
/// the file does not exist or has no entry for the registry.
///
/// # Errors
/// [`CredentialsError`] when the file exists but is unreadable or malformed.
pub fn load(path: &Path, registry: &str) -> Result<Option<Credentials>, CredentialsError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CredentialsError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    let config: DockerConfig =
        serde_json::from_slice(&bytes).map_err(|source| CredentialsError::Parse {
            path: path.to_owned(),
            source,
        })?;
    let wanted = normalise_registry(registry);
    let found = config
        .auths
        .iter()
        .find(|(key, _)| normalise_registry(key) == wanted);
    let Some((key, entry)) = found else {
        if config.cred_helpers.contains_key(registry) || config.creds_store.is_some() {
            tracing::warn!(
                registry,
                path = %path.display(),
                "docker credential helpers are not supported; pulling anonymously"
            );
        }
        return Ok(None);
    };
    let bad_auth = || CredentialsError::BadAuth {
        path: path.to_owned(),
        registry: key.clone(),
    };
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| bad_auth())?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad_auth())?;
        let (username, password) = decoded.split_once(':').ok_or_else(bad_auth)?;
        return Ok(Some(Credentials::new(
            username.to_owned(),
            password.to_owned(),
        )));
    }
    match (&entry.username, &entry.password) {
        (Some(username), Some(password)) => {
            Ok(Some(Credentials::new(username.clone(), password.clone())))
        }
        _ => Ok(None),
    }
}

/// `https://index.docker.io/v1/` → `docker.io`; `http://localhost:5000` → `localhost:5000`.
fn normalise_registry(key: &str) -> String {
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = without_scheme
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if DOCKER_HUB_KEYS.contains(&host.as_str()) {
        "docker.io".to_owned()
    } else {
        host
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(content: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, content).unwrap();
        (dir, path)
    }

    #[test]
    fn credentials_are_found_by_normalised_registry() {
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cr:et");
        let (_dir, path) = write(&format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{auth}"}},
                "http://localhost:5000": {{"username": "bob", "password": "pw"}},
                "ghcr.io": {{}}
            }}}}"#
        ));
        let hub = load(&path, "docker.io").unwrap().unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password()),
            ("alice", "s3cr:et")
        );
        let local = load(&path, "localhost:5000").unwrap().unwrap();
        assert_eq!(local.username, "bob");
        assert!(load(&path, "ghcr.io").unwrap().is_none());
        assert!(load(&path, "quay.io").unwrap().is_none());
        assert!(
            !format!("{hub:?}").contains("s3cr"),
            "Debug must not print the password"
        );
    }

    #[test]
    fn missing_and_malformed_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(&dir.path().join("nope.json"), "docker.io")
            .unwrap()
            .is_none());
        let (_d, path) = write("not json");
        assert!(matches!(
            load(&path, "docker.io"),
            Err(CredentialsError::Parse { .. })
        ));
        let (_d, path) = write(r#"{"auths": {"docker.io": {"auth": "!!!"}}}"#);
        assert!(matches!(
            load(&path, "docker.io"),
            Err(CredentialsError::BadAuth { .. })
        ));
    }
}
