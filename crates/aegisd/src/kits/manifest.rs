//! Parsing and validating kit manifests (schema v1, YAML or JSON). Every error names the
//! offending field by its path (`resources.max_memory_mb`, `secrets.required[1].name`), so a
//! kit author can fix a manifest from the message alone. Storing kits is [`super::store`]'s
//! job; applying them to instances is [`super::preset`]'s.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use aegis_proto::kit::KitManifest;

use crate::config::{MEMORY_RANGE_MIB, VCPU_RANGE};
use crate::lifecycle::spec::{check_command, ExposeProtocol};
use crate::names::{self, valid_env_name, NameKind};

/// Largest manifest accepted: manifests are a few hundred bytes; this leaves room for comments.
pub const MAX_MANIFEST_BYTES: usize = 1024 * 1024;

/// Why a manifest is not a valid kit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The text is not YAML/JSON of the manifest's shape.
    #[error("{}: {problem}{}", show_path(path), location.as_deref().map(|l| format!(" ({l})")).unwrap_or_default())]
    Syntax {
        /// Path of the field the parser was in (`""` for the document).
        path: String,
        /// What the parser said.
        problem: String,
        /// `line L column C`, when known.
        location: Option<String>,
    },
    /// A field has a value the schema does not allow.
    #[error("{field}: {problem}")]
    Invalid {
        /// Path of the offending field.
        field: String,
        /// What is wrong and what is allowed.
        problem: String,
    },
    /// The text is larger than [`MAX_MANIFEST_BYTES`].
    #[error("manifest is {bytes} bytes, more than the {MAX_MANIFEST_BYTES} allowed")]
    TooLarge {
        /// Its size.
        bytes: usize,
    },
}

fn show_path(path: &str) -> &str {
    if path.is_empty() || path == "." {
        "manifest"
    } else {
        path
    }
}

impl ManifestError {
    /// The path of the offending field (`manifest` for the whole document).
    pub fn field(&self) -> &str {
        match self {
            ManifestError::Syntax { path, .. } => show_path(path),
            ManifestError::Invalid { field, .. } => field,
            ManifestError::TooLarge { .. } => "manifest",
        }
    }
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ManifestError {
    ManifestError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

/// The text's format. YAML is a superset of JSON, but JSON text gets JSON's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

impl Format {
    /// Guesses from the text: JSON documents start with `{`.
    pub fn sniff(text: &str) -> Format {
        if text.trim_start().starts_with('{') {
            Format::Json
        } else {
            Format::Yaml
        }
    }
}

/// Parses and validates a manifest. Relative daemon programs are resolved against `base_dir`
/// (refused without one).
///
/// # Errors
/// [`ManifestError`] naming the first offending field.
pub fn parse(text: &str, base_dir: Option<&Path>) -> Result<KitManifest, ManifestError> {
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge { bytes: text.len() });
    }
    if text.trim().is_empty() {
        return Err(invalid("manifest", "is empty"));
    }
    let mut manifest = match Format::sniff(text) {
        Format::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            serde_path_to_error::deserialize::<_, KitManifest>(&mut de).map_err(|e| {
                let inner = e.inner();
                ManifestError::Syntax {
                    path: e.path().to_string(),
                    problem: strip_location(&inner.to_string()),
                    location: Some(format!("line {} column {}", inner.line(), inner.column())),
                }
            })?
        }
        Format::Yaml => {
            let de = serde_norway::Deserializer::from_str(text);
            serde_path_to_error::deserialize::<_, KitManifest>(de).map_err(|e| {
                let inner = e.inner();
                let path = e.path().to_string();
                // The YAML parser names the path itself; it is said once, in front.
                let message = strip_location(&inner.to_string());
                let problem = match message.split_once(": ") {
                    Some((prefix, rest)) if path.starts_with(prefix) => rest.to_owned(),
                    _ => message,
                };
                ManifestError::Syntax {
                    path,
                    problem,
                    location: inner
                        .location()
                        .map(|l| format!("line {} column {}", l.line(), l.column())),
                }
            })?
        }
    };
    validate(&mut manifest, base_dir)?;
    Ok(manifest)
}

/// Parser messages end with their own `at line L column C`; the error adds it once, uniformly.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// The semantic rules of schema v1. Resolves relative daemon programs in place.
fn validate(m: &mut KitManifest, base_dir: Option<&Path>) -> Result<(), ManifestError> {
    names::check(NameKind::Kit, &m.name).map_err(|e| invalid("name", e.to_string()))?;
    if m.version.trim().is_empty() || m.version.chars().any(char::is_whitespace) {
        return Err(invalid(
            "version",
            format!(
                "invalid version {:?}: give a non-empty version without spaces, e.g. \"1.0.0\"",
                m.version
            ),
        ));
    }
    if let Some(image) = &m.image {
        aegis_image::reference::ImageRef::parse(image)
            .map_err(|e| invalid("image", e.to_string()))?;
    }
    check_command(&m.defaults.command).map_err(|e| invalid("defaults.command", e.to_string()))?;
    for key in m.defaults.env.keys() {
        if !valid_env_name(key) {
            return Err(invalid(
                format!("defaults.env.{key}"),
                "invalid environment variable name: use letters, digits and '_', not starting with a digit",
            ));
        }
    }
    for (field, t) in [
        ("defaults.idle_pause", &m.defaults.idle_pause),
        ("defaults.idle_stop", &m.defaults.idle_stop),
    ] {
        if let Some(t) = t {
            t.seconds().map_err(|p| invalid(field, p))?;
        }
    }
    let mut secret_names = BTreeSet::new();
    for (list, entries) in [
        ("required", &m.secrets.required),
        ("optional", &m.secrets.optional),
    ] {
        for (i, s) in entries.iter().enumerate() {
            let field = format!("secrets.{list}[{i}].name");
            if let Err(e) = names::check(NameKind::Secret, &s.name) {
                return Err(invalid(field, e.to_string()));
            }
            if !secret_names.insert(s.name.clone()) {
                return Err(invalid(field, format!("secret {} is listed twice", s.name)));
            }
        }
    }
    let mut ports = BTreeSet::new();
    for (i, e) in m.exposes.iter().enumerate() {
        if e.port == 0 {
            return Err(invalid(
                format!("exposes[{i}].port"),
                "guest port must be between 1 and 65535",
            ));
        }
        if !ports.insert(e.port) {
            return Err(invalid(
                format!("exposes[{i}].port"),
                format!("guest port {} is exposed twice", e.port),
            ));
        }
        if let Some(p) = &e.protocol {
            ExposeProtocol::parse(p)
                .map_err(|err| invalid(format!("exposes[{i}].protocol"), err.to_string()))?;
        }
    }
    validate_resources(m)?;
    for (i, host) in m.egress.iter().enumerate() {
        if host.is_empty() || host.len() > 253 || host.chars().any(|c| c.is_whitespace()) {
            return Err(invalid(
                format!("egress[{i}]"),
                format!("invalid host {host:?}: give a host name or host:port without spaces"),
            ));
        }
    }
    let mut daemon_names = BTreeSet::new();
    for (i, d) in m.instance_daemons.iter_mut().enumerate() {
        names::check(NameKind::Daemon, &d.name)
            .map_err(|e| invalid(format!("instance_daemons[{i}].name"), e.to_string()))?;
        if !daemon_names.insert(d.name.clone()) {
            return Err(invalid(
                format!("instance_daemons[{i}].name"),
                format!("daemon {} is declared twice", d.name),
            ));
        }
        if d.command.is_empty() {
            return Err(invalid(
                format!("instance_daemons[{i}].command"),
                "is empty: give the program and its arguments",
            ));
        }
        check_command(&d.command)
            .map_err(|e| invalid(format!("instance_daemons[{i}].command"), e.to_string()))?;
        for key in d.env.keys() {
            if !valid_env_name(key) {
                return Err(invalid(
                    format!("instance_daemons[{i}].env.{key}"),
                    "invalid environment variable name: use letters, digits and '_', not starting with a digit",
                ));
            }
        }
        d.command[0] = resolve_program(&d.command[0], base_dir)
            .map_err(|p| invalid(format!("instance_daemons[{i}].command[0]"), p))?;
    }
    Ok(())
}

fn validate_resources(m: &KitManifest) -> Result<(), ManifestError> {
    let r = &m.resources;
    let in_range = |field: &str, value: Option<u32>, (min, max): (u32, u32), unit: &str| match value
    {
        Some(v) if !(min..=max).contains(&v) => Err(invalid(
            format!("resources.{field}"),
            format!("{v}{unit} is out of range ({min}..={max})"),
        )),
        _ => Ok(()),
    };
    in_range("memory_mb", r.memory_mb, MEMORY_RANGE_MIB, " MiB")?;
    in_range("max_memory_mb", r.max_memory_mb, MEMORY_RANGE_MIB, " MiB")?;
    in_range("vcpus", r.vcpus, VCPU_RANGE, "")?;
    in_range("max_vcpus", r.max_vcpus, VCPU_RANGE, "")?;
    let default_memory = r.memory_mb.unwrap_or(crate::config::DEFAULT_MEMORY_MIB);
    if let Some(max) = r.max_memory_mb {
        if default_memory > max {
            return Err(invalid(
                "resources.max_memory_mb",
                format!("{max} MiB is below the default memory of {default_memory} MiB"),
            ));
        }
    }
    let default_vcpus = r.vcpus.unwrap_or(crate::config::DEFAULT_VCPUS);
    if let Some(max) = r.max_vcpus {
        if default_vcpus > max {
            return Err(invalid(
                "resources.max_vcpus",
                format!("{max} is below the default of {default_vcpus} vCPUs"),
            ));
        }
    }
    Ok(())
}

/// A daemon's program as it will be run: bare names stay (looked up in `PATH` at start);
/// absolute paths stay; relative paths are joined to the manifest's directory and must exist.
fn resolve_program(program: &str, base_dir: Option<&Path>) -> Result<String, String> {
    if !program.contains('/') {
        return Ok(program.to_owned());
    }
    let path = Path::new(program);
    let full: PathBuf = if path.is_absolute() {
        path.to_path_buf()
    } else {
        match base_dir {
            Some(base) => base.join(path),
            None => {
                return Err(format!(
                    "relative program {program:?} needs the manifest's directory: install the \
                     kit from its file with `aegis kit install PATH`, or use an absolute path"
                ))
            }
        }
    };
    let full = normalize(&full);
    if !full.is_file() {
        return Err(format!("program {} does not exist", full.display()));
    }
    Ok(full.display().to_string())
}

/// Removes `.` and `..` components lexically (the manifest's directory may not exist on the
/// daemon's side under the same symlinks, so no canonicalisation).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name: web
version: "1.2.0"
description: "A web server"
image: alpine:3
defaults:
  command: [python3, -m, http.server, "80"]
  env: {MODE: prod}
  idle_pause: 5m
  idle_stop: never
secrets:
  required:
    - name: API_KEY
      description: "the key"
  optional:
    - name: EXTRA
exposes:
  - port: 80
    protocol: http
resources:
  memory_mb: 256
  vcpus: 1
  max_memory_mb: 1024
  max_vcpus: 2
egress:
  - api.example.com
instance_daemons:
  - name: gateway
    command: [sh, -c, "sleep 1"]
"#;

    #[test]
    fn parses_yaml_and_json() {
        let m = parse(GOOD, None).unwrap();
        assert_eq!(m.name, "web");
        assert_eq!(m.resources.max_memory_mb, Some(1024));
        assert_eq!(m.instance_daemons[0].command[0], "sh");
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(parse(&json, None).unwrap(), m);
    }

    /// Each row: a replacement of one line of [`GOOD`] and the exact start of the message.
    #[test]
    fn errors_name_the_field() {
        let rows: &[(&str, &str, &str)] = &[
            ("name: web", "name: Web", "name: invalid kit name \"Web\""),
            ("name: web", "name: ../x", "name: invalid kit name \"../x\""),
            ("name: web", "name: a/b", "name: invalid kit name \"a/b\""),
            (
                "name: web",
                "name: \"\"",
                "name: invalid kit name \"\": it is empty",
            ),
            (
                "name: web",
                "name: \"a\\0b\"",
                "name: invalid kit name \"a\\0b\"",
            ),
            (
                "version: \"1.2.0\"",
                "version: \"\"",
                "version: invalid version",
            ),
            (
                "  max_memory_mb: 1024",
                "  max_memory_mb: lots",
                "resources.max_memory_mb: invalid type: string \"lots\", expected u32 (line ",
            ),
            (
                "  max_memory_mb: 1024",
                "  max_memory_mb: 128",
                "resources.max_memory_mb: 128 MiB is below the default memory of 256 MiB",
            ),
            (
                "  max_memory_mb: 1024",
                "  max_memory_mb: 999999",
                "resources.max_memory_mb: 999999 MiB is out of range",
            ),
            (
                "  max_vcpus: 2",
                "  max_cpus: 2",
                "resources.max_cpus: unknown field `max_cpus`, expected one of",
            ),
            (
                "    - name: EXTRA",
                "    - name: API_KEY",
                "secrets.optional[0].name: secret API_KEY is listed twice",
            ),
            (
                "    - name: EXTRA",
                "    - name: 1X",
                "secrets.optional[0].name: invalid secret name",
            ),
            (
                "    protocol: http",
                "    protocol: udp",
                "exposes[0].protocol: invalid protocol \"udp\"",
            ),
            (
                "  - port: 80",
                "  - port: 0",
                "exposes[0].port: guest port must be between 1 and 65535",
            ),
            (
                "  idle_pause: 5m",
                "  idle_pause: soon",
                "defaults.idle_pause: invalid idle timeout",
            ),
            (
                "image: alpine:3",
                "image: \"Bad Image\"",
                "image: invalid image reference",
            ),
            (
                "  - api.example.com",
                "  - \"a b\"",
                "egress[0]: invalid host",
            ),
            (
                "  - name: gateway",
                "  - name: Gate way",
                "instance_daemons[0].name: invalid instance daemon name",
            ),
            (
                "    command: [sh, -c, \"sleep 1\"]",
                "    command: []",
                "instance_daemons[0].command: is empty",
            ),
            (
                "    command: [sh, -c, \"sleep 1\"]",
                "    command: [./gw.sh]",
                "instance_daemons[0].command[0]: relative program \"./gw.sh\" needs",
            ),
            (
                "    command: [sh, -c, \"sleep 1\"]",
                "    command: [/nonexistent/gw]",
                "instance_daemons[0].command[0]: program /nonexistent/gw does not exist",
            ),
            (
                "  env: {MODE: prod}",
                "  env: {1MODE: prod}",
                "defaults.env.1MODE: invalid environment variable name",
            ),
        ];
        for (from, to, want) in rows {
            assert!(GOOD.contains(from), "{from}");
            let text = GOOD.replacen(from, to, 1);
            let err = parse(&text, None).unwrap_err().to_string();
            assert!(err.starts_with(want), "{to}: got {err}");
        }
        let err = parse("{\"name\": \"x\", \"version\": 1}", None).unwrap_err();
        assert_eq!(err.field(), "version");
        assert!(
            err.to_string().starts_with(
                "version: invalid type: integer `1`, expected a string (line 1 column"
            ),
            "{err}"
        );
        assert_eq!(
            parse("", None).unwrap_err().to_string(),
            "manifest: is empty"
        );
        let err = parse("name: x\n", None).unwrap_err().to_string();
        assert!(
            err.starts_with("manifest: missing field `version`"),
            "{err}"
        );
    }

    #[test]
    fn relative_programs_resolve_against_the_manifest_dir() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::fs::write(dir.path().join("bin/gw"), "#!/bin/sh\n").unwrap();
        let text = GOOD.replacen("[sh, -c, \"sleep 1\"]", "[./bin/gw, --flag]", 1);
        let m = parse(&text, Some(dir.path())).unwrap();
        assert_eq!(
            m.instance_daemons[0].command,
            [
                dir.path().join("bin/gw").display().to_string(),
                "--flag".into()
            ]
        );
    }

    #[test]
    fn repository_kits_are_valid() {
        let kits = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kits");
        for name in ["famiglia", "example"] {
            let dir = kits.join(name);
            let text = std::fs::read_to_string(dir.join("kit.yaml")).unwrap();
            let m = parse(&text, Some(&dir)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(m.name, name);
        }
    }
}
