//! `--kit NAME` as a preset: fills the fields of a create request that the caller left out
//! from the kit's manifest, enforces the kit's resource maxima, and keeps what the instance
//! needs of its kit afterwards ([`KitBinding`], stored in its configuration) so that starting
//! it again never needs the kit, even after the kit was changed or removed.
//!
//! Explicit values win field by field: `image_ref`, `command`, `workdir`, `memory_mb`,
//! `vcpus`, `idle_pause` and `idle_stop` replace the kit's; `env` is merged over the kit's
//! `defaults.env`; `exposes` are merged by guest port (an explicit entry for a guest port the
//! kit exposes replaces the kit's entry, others are added).

use aegis_proto::api::{CreateInstance, ExposeRequest};
use aegis_proto::kit::{InstanceDaemonSpec, KitManifest, SecretRequirement};
use serde::{Deserialize, Serialize};

use crate::config::{DEFAULT_MEMORY_MIB, DEFAULT_VCPUS};
use crate::secrets::{SecretError, SecretStore, ALL};

/// What an instance keeps of its kit: resolved at creation, stored in its configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KitBinding {
    /// The kit's name.
    pub name: String,
    /// The kit's version when the instance was created.
    pub version: String,
    /// Secrets the instance does not start without.
    #[serde(default)]
    pub required_secrets: Vec<SecretRequirement>,
    /// Secrets injected when they exist.
    #[serde(default)]
    pub optional_secrets: Vec<SecretRequirement>,
    /// Egress hints.
    #[serde(default)]
    pub egress: Vec<String>,
    /// Instance daemons (programs resolved).
    #[serde(default)]
    pub daemons: Vec<InstanceDaemonSpec>,
}

/// A request the kit refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresetError {
    /// More memory than the kit allows.
    #[error("memory_mb {value} is above the maximum of kit {kit:?} ({max} MiB)")]
    MemoryAboveMax {
        /// The kit.
        kit: String,
        /// Requested.
        value: u32,
        /// The kit's `resources.max_memory_mb`.
        max: u32,
    },
    /// More vCPUs than the kit allows.
    #[error("vcpus {value} is above the maximum of kit {kit:?} ({max})")]
    VcpusAboveMax {
        /// The kit.
        kit: String,
        /// Requested.
        value: u32,
        /// The kit's `resources.max_vcpus`.
        max: u32,
    },
    /// Required secrets are not in the store.
    #[error("{}", missing_message(kit, missing))]
    MissingSecrets {
        /// The kit.
        kit: String,
        /// The missing secrets with their descriptions, in manifest order.
        missing: Vec<SecretRequirement>,
    },
}

fn missing_message(kit: &str, missing: &[SecretRequirement]) -> String {
    let list: Vec<String> = missing
        .iter()
        .map(|s| {
            if s.description.is_empty() {
                s.name.clone()
            } else {
                format!("{} ({})", s.name, s.description)
            }
        })
        .collect();
    let (noun, verb) = if missing.len() == 1 {
        ("secret", "is")
    } else {
        ("secrets", "are")
    };
    format!(
        "kit {kit:?} requires {noun} that {verb} not set: {}",
        list.join(", ")
    )
}

impl PresetError {
    /// What to do about it.
    pub fn hint(&self) -> String {
        match self {
            PresetError::MemoryAboveMax { max, .. } => {
                format!("ask for at most {max} MiB (--memory), or raise resources.max_memory_mb in the kit's manifest")
            }
            PresetError::VcpusAboveMax { max, .. } => {
                format!("ask for at most {max} vCPUs (--vcpus), or raise resources.max_vcpus in the kit's manifest")
            }
            PresetError::MissingSecrets { missing, .. } => {
                let first = missing.first().map_or("NAME", |s| s.name.as_str());
                format!("set each with `aegis secret set NAME` (e.g. `aegis secret set {first}`), then start the instance again")
            }
        }
    }
}

/// Applies `kit` to `req`: returns the request with the kit's values where `req` has none,
/// and the binding to store with the instance.
///
/// # Errors
/// [`PresetError`] when a requested resource is above the kit's maximum.
pub fn apply(
    kit: &KitManifest,
    mut req: CreateInstance,
) -> Result<(CreateInstance, KitBinding), PresetError> {
    if req.image_ref.as_deref().is_none_or(|s| s.trim().is_empty()) {
        req.image_ref.clone_from(&kit.image);
    }
    if req.command.is_empty() {
        req.command.clone_from(&kit.defaults.command);
    }
    let mut env = kit.defaults.env.clone();
    env.append(&mut req.env);
    req.env = env;
    if req.workdir.is_none() {
        req.workdir.clone_from(&kit.defaults.workdir);
    }
    if req.idle_pause.is_none() {
        req.idle_pause.clone_from(&kit.defaults.idle_pause);
    }
    if req.idle_stop.is_none() {
        req.idle_stop.clone_from(&kit.defaults.idle_stop);
    }
    let memory = req
        .memory_mb
        .or(kit.resources.memory_mb)
        .unwrap_or(DEFAULT_MEMORY_MIB);
    if let Some(max) = kit.resources.max_memory_mb.filter(|max| memory > *max) {
        return Err(PresetError::MemoryAboveMax {
            kit: kit.name.clone(),
            value: memory,
            max,
        });
    }
    req.memory_mb = Some(memory);
    let vcpus = req.vcpus.or(kit.resources.vcpus).unwrap_or(DEFAULT_VCPUS);
    if let Some(max) = kit.resources.max_vcpus.filter(|max| vcpus > *max) {
        return Err(PresetError::VcpusAboveMax {
            kit: kit.name.clone(),
            value: vcpus,
            max,
        });
    }
    req.vcpus = Some(vcpus);
    let mut exposes: Vec<ExposeRequest> = kit
        .exposes
        .iter()
        .filter(|k| !req.exposes.iter().any(|e| e.port == k.port))
        .map(|k| ExposeRequest {
            port: k.port,
            public_port: None,
            protocol: k.protocol.clone(),
        })
        .collect();
    exposes.append(&mut req.exposes);
    req.exposes = exposes;
    req.kit = Some(kit.name.clone());
    let binding = KitBinding {
        name: kit.name.clone(),
        version: kit.version.clone(),
        required_secrets: kit.secrets.required.clone(),
        optional_secrets: kit.secrets.optional.clone(),
        egress: kit.egress.clone(),
        daemons: kit.instance_daemons.clone(),
    };
    Ok((req, binding))
}

/// Why the secrets of a kit instance cannot be selected.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    /// Required secrets are missing.
    #[error(transparent)]
    Preset(#[from] PresetError),
    /// The store cannot be read.
    #[error(transparent)]
    Store(#[from] SecretError),
}

/// The secrets to inject into an instance of a kit: what it asked for explicitly, the kit's
/// required secrets, and those of its optional ones that exist now. Missing required secrets
/// are an error listing them with their descriptions.
///
/// # Errors
/// [`SelectError`].
pub async fn secret_selection(
    store: &SecretStore,
    binding: &KitBinding,
    explicit: &[String],
) -> Result<Vec<String>, SelectError> {
    if binding.required_secrets.is_empty() && binding.optional_secrets.is_empty() {
        return Ok(explicit.to_vec());
    }
    let existing: Vec<String> = store.list().await?.into_iter().map(|m| m.name).collect();
    let missing: Vec<SecretRequirement> = binding
        .required_secrets
        .iter()
        .filter(|s| !existing.contains(&s.name))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(PresetError::MissingSecrets {
            kit: binding.name.clone(),
            missing,
        }
        .into());
    }
    if explicit.iter().any(|s| s == ALL) {
        return Ok(explicit.to_vec());
    }
    let mut names = explicit.to_vec();
    let kit_names = binding.required_secrets.iter().chain(
        binding
            .optional_secrets
            .iter()
            .filter(|s| existing.contains(&s.name)),
    );
    for s in kit_names {
        if !names.contains(&s.name) {
            names.push(s.name.clone());
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aegis_proto::api::IdleTimeout;
    use aegis_proto::kit::{KitDefaults, KitExpose, KitResources};

    fn kit() -> KitManifest {
        KitManifest {
            name: "web".into(),
            version: "1".into(),
            image: Some("alpine:3".into()),
            defaults: KitDefaults {
                command: vec!["serve".into()],
                env: [
                    ("A".to_owned(), "kit".to_owned()),
                    ("B".to_owned(), "kit".to_owned()),
                ]
                .into(),
                idle_pause: Some(IdleTimeout::Text("5m".into())),
                ..Default::default()
            },
            exposes: vec![
                KitExpose {
                    port: 80,
                    protocol: Some("http".into()),
                },
                KitExpose {
                    port: 22,
                    protocol: None,
                },
            ],
            resources: KitResources {
                memory_mb: Some(256),
                vcpus: None,
                max_memory_mb: Some(1024),
                max_vcpus: Some(2),
            },
            egress: vec!["api.example.com".into()],
            ..Default::default()
        }
    }

    #[test]
    fn kit_values_fill_what_the_request_leaves_out() {
        let (req, binding) = apply(&kit(), CreateInstance::default()).unwrap();
        assert_eq!(req.image_ref.as_deref(), Some("alpine:3"));
        assert_eq!(req.command, ["serve"]);
        assert_eq!((req.memory_mb, req.vcpus), (Some(256), Some(DEFAULT_VCPUS)));
        assert_eq!(req.idle_pause, Some(IdleTimeout::Text("5m".into())));
        assert_eq!(
            req.exposes.iter().map(|e| e.port).collect::<Vec<_>>(),
            [80, 22]
        );
        assert_eq!(req.kit.as_deref(), Some("web"));
        assert_eq!(binding.egress, ["api.example.com"]);
    }

    #[test]
    fn explicit_values_win() {
        let explicit = CreateInstance {
            image_ref: Some("debian:12".into()),
            command: vec!["sh".into()],
            env: [("B".to_owned(), "me".to_owned())].into(),
            memory_mb: Some(1024),
            vcpus: Some(2),
            exposes: vec![ExposeRequest {
                port: 80,
                public_port: Some(9000),
                protocol: None,
            }],
            idle_pause: Some(IdleTimeout::Text("never".into())),
            ..Default::default()
        };
        let (req, _) = apply(&kit(), explicit).unwrap();
        assert_eq!(req.image_ref.as_deref(), Some("debian:12"));
        assert_eq!(req.command, ["sh"]);
        assert_eq!(req.env.get("A").map(String::as_str), Some("kit"));
        assert_eq!(req.env.get("B").map(String::as_str), Some("me"));
        assert_eq!(req.memory_mb, Some(1024));
        let ports: Vec<(u16, Option<u16>)> = req
            .exposes
            .iter()
            .map(|e| (e.port, e.public_port))
            .collect();
        assert_eq!(ports, [(22, None), (80, Some(9000))]);
        assert_eq!(req.idle_pause, Some(IdleTimeout::Text("never".into())));
    }

    #[test]
    fn maxima_are_enforced() {
        let too_much = CreateInstance {
            memory_mb: Some(2048),
            ..Default::default()
        };
        let err = apply(&kit(), too_much).unwrap_err();
        assert_eq!(
            err.to_string(),
            "memory_mb 2048 is above the maximum of kit \"web\" (1024 MiB)"
        );
        let err = apply(
            &kit(),
            CreateInstance {
                vcpus: Some(3),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "vcpus 3 is above the maximum of kit \"web\" (2)"
        );
    }

    #[test]
    fn missing_secrets_are_listed_with_descriptions() {
        let err = PresetError::MissingSecrets {
            kit: "web".into(),
            missing: vec![
                SecretRequirement {
                    name: "A".into(),
                    description: "the A key".into(),
                },
                SecretRequirement {
                    name: "B".into(),
                    description: String::new(),
                },
            ],
        };
        assert_eq!(
            err.to_string(),
            "kit \"web\" requires secrets that are not set: A (the A key), B"
        );
    }
}
