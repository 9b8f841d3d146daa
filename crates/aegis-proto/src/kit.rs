//! Kit manifest schema v1 and the bodies of the `/v1/kits` routes.
//!
//! A kit is a declarative preset: an image, a default command, secrets it needs, ports it
//! exposes, resource defaults and maxima, egress hints and the host-side instance daemons that
//! run beside each of its instances. Manifests are written in YAML or JSON; both map onto
//! [`KitManifest`]. Every struct rejects unknown fields, so a misspelt key is an error naming
//! it. Semantic checks (ranges, names, duplicates) belong to the daemon, which reports them
//! with the offending field's path (`resources.max_memory_mb`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::IdleTimeout;
pub use crate::api::{DaemonState, DaemonStatus};

/// A kit manifest (schema v1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KitManifest {
    /// The kit's name: what `--kit NAME` refers to (lowercase letters, digits, `.`, `_`, `-`).
    pub name: String,
    /// The kit's version, as its authors spell it (`"1.0.0"`).
    pub version: String,
    /// One line saying what the kit is for.
    #[serde(default)]
    pub description: String,
    /// Default image reference of its instances; Aegis's default image when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Defaults of its instances' primary process and idle timeouts.
    #[serde(default)]
    pub defaults: KitDefaults,
    /// Secrets its instances need (required) or use when they exist (optional).
    #[serde(default)]
    pub secrets: KitSecrets,
    /// Guest ports exposed through the router by default.
    #[serde(default)]
    pub exposes: Vec<KitExpose>,
    /// Resource defaults and maxima.
    #[serde(default)]
    pub resources: KitResources,
    /// Hosts its instances are expected to reach: recorded and shown, not enforced.
    #[serde(default)]
    pub egress: Vec<String>,
    /// Host processes run beside each instance of the kit, supervised by `aegisd`.
    #[serde(default)]
    pub instance_daemons: Vec<InstanceDaemonSpec>,
}

/// `defaults`: what an instance of the kit gets unless a flag says otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KitDefaults {
    /// The primary process; the image's entrypoint + cmd when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Environment of the primary process and of execs (not secret: secrets go in `secrets`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory of the primary process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Pause after this long without activity (same forms as `--idle-pause`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_pause: Option<IdleTimeout>,
    /// Stop after this long paused (same forms as `--idle-stop`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_stop: Option<IdleTimeout>,
}

/// `secrets`: names of secrets in Aegis's store, injected as environment variables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KitSecrets {
    /// Without these an instance does not start.
    #[serde(default)]
    pub required: Vec<SecretRequirement>,
    /// Injected when they exist.
    #[serde(default)]
    pub optional: Vec<SecretRequirement>,
}

/// One secret a kit asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRequirement {
    /// The secret's name: the environment variable it becomes.
    pub name: String,
    /// What it is, shown when it is missing.
    #[serde(default)]
    pub description: String,
}

/// A guest port a kit exposes by default (the router picks a free public port unless
/// `--expose PUBLIC:GUEST` says which).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KitExpose {
    /// The guest port.
    pub port: u16,
    /// `tcp` (default) or `http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// `resources`: defaults and maxima of guest memory and vCPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KitResources {
    /// Default guest memory in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    /// Default number of vCPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// Most memory an instance of the kit may ask for, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_mb: Option<u32>,
    /// Most vCPUs an instance of the kit may ask for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vcpus: Option<u32>,
}

/// One instance daemon: a host process started for each instance of the kit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceDaemonSpec {
    /// Its name, unique within the kit: its log tag and its entry in `instance info`.
    pub name: String,
    /// Program and arguments. A program without `/` is looked up in `aegisd`'s `PATH`; a
    /// relative path is resolved against the manifest's directory when the kit is installed.
    pub command: Vec<String>,
    /// Extra environment (the `AEGIS_*` variables Aegis sets win over these).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// `POST /v1/kits`: install (or with `replace`, upgrade) a kit from its manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallKit {
    /// The manifest's text, YAML or JSON.
    pub manifest: String,
    /// Absolute directory the manifest came from; relative daemon programs are resolved
    /// against it. Without it, relative programs are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_dir: Option<String>,
    /// Replace an installed kit of the same name instead of answering 409.
    #[serde(default)]
    pub replace: bool,
}

/// An installed kit (`GET /v1/kits`, `GET /v1/kits/{name}`, the answer to `POST /v1/kits`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KitInfo {
    /// The validated manifest, daemon programs resolved.
    pub manifest: KitManifest,
    /// The file it is installed as.
    pub path: String,
    /// Instances (ids) created from it.
    #[serde(default)]
    pub instances: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_manifest_round_trips_and_rejects_unknown_fields() {
        let text = r#"{"name":"web","version":"1.0.0","image":"alpine:3",
            "defaults":{"command":["sh"],"idle_pause":"5m"},
            "secrets":{"required":[{"name":"API_KEY","description":"the key"}]},
            "exposes":[{"port":80,"protocol":"http"}],
            "resources":{"memory_mb":256,"max_memory_mb":1024},
            "egress":["api.example.com"],
            "instance_daemons":[{"name":"gw","command":["gw","--x"]}]}"#;
        let m: KitManifest = serde_json::from_str(text).unwrap();
        assert_eq!(m.secrets.required[0].name, "API_KEY");
        assert_eq!(m.defaults.idle_pause, Some(IdleTimeout::Text("5m".into())));
        let again: KitManifest = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(again, m);
        let err = serde_json::from_str::<KitManifest>(
            r#"{"name":"x","version":"1","resources":{"max_memory":1}}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("unknown field `max_memory`"),
            "{err}"
        );
    }
}
