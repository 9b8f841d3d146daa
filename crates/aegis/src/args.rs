//! Flag values shared by several commands, parsed and validated before anything is sent to the
//! daemon: clap calls these parsers, so bad input is a usage error (exit 2) naming the flag.

use std::collections::BTreeMap;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use aegis_proto::api::{
    validate_handle, CreateInstance, ExposeRequest, IdleTimeout, InstanceStatus, OnTimeout,
};

/// The options of `aegis run` and `aegis instance start` that describe a new instance.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct InstanceOptions {
    /// Unique handle to refer to the instance by (letters, digits, '.', '_', '-')
    #[arg(long, value_name = "HANDLE", value_parser = parse_handle)]
    pub name: Option<String>,
    /// Preset from an installed kit (`aegis kit list`): image, command, ports, resources,
    /// secrets, idle timeouts and instance daemons; the other flags override its values
    #[arg(long, value_name = "KIT")]
    pub kit: Option<String>,
    /// Image reference for the root filesystem [default: the image built by setup]
    #[arg(long, value_name = "REF")]
    pub image: Option<String>,
    /// Program to run instead of the image's entrypoint, as `docker run --entrypoint`: CMD
    /// becomes its arguments and the image's cmd is not used; "" clears the entrypoint
    #[arg(long, value_name = "PROGRAM")]
    pub entrypoint: Option<String>,
    /// Environment variable for the command; `--env KEY` alone copies KEY from this shell
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<EnvVar>,
    /// Guest memory in MiB
    #[arg(long, value_name = "MIB", value_parser = parse_memory)]
    pub memory: Option<u32>,
    /// Number of virtual CPUs
    #[arg(long, value_name = "N", value_parser = parse_vcpus)]
    pub vcpus: Option<u32>,
    /// Working directory of the command inside the guest
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Expose a guest port through the router: `[PUBLIC:]GUEST[/tcp|/http]` (repeatable; a free
    /// public port is chosen when none is given)
    #[arg(long, value_name = "[PUBLIC:]GUEST[/PROTO]", value_parser = parse_expose)]
    pub expose: Vec<ExposeRequest>,
    /// Pause after this long without activity: seconds, 90s, 5m, 1h or never [default: 60s]
    #[arg(long, value_name = "DURATION", value_parser = parse_idle)]
    pub idle_pause: Option<IdleTimeout>,
    /// Stop after this long paused: seconds, 90s, 5m, 1h or never [default: 5m]
    #[arg(long, value_name = "DURATION", value_parser = parse_idle)]
    pub idle_stop: Option<IdleTimeout>,
    /// Outbound network access of the guest
    #[arg(long, value_name = "all|none", value_parser = ["all", "none"])]
    pub egress: Option<String>,
    /// Save a snapshot on `aegis instance stop` and idle stops, and wake from it (default: the
    /// daemon's AEGIS_SNAPSHOT, on)
    #[arg(long, value_name = "on|off", value_parser = ["on", "off"])]
    pub snapshot: Option<String>,
    /// Inject this secret (`aegis secret set`) as an environment variable; repeatable, '*' for
    /// all. Resolved at each boot; an explicit --env of the same name wins
    #[arg(long = "secret", value_name = "KEY|*", value_parser = parse_secret_selector)]
    pub secrets: Vec<String>,
    /// What /workspace holds: a workspace NAME kept by Aegis (created on first use, shared with
    /// every instance naming it), a host directory (./dir, /dir or ~/dir, shared live), or none
    /// [default: the instance's own volume, deleted with it]
    #[arg(long, value_name = "NAME|PATH|none", value_parser = parse_workspace)]
    pub workspace: Option<String>,
    /// Capacity of the instance's own workspace volume: 512M, 8G, ... (a sparse file: only
    /// what is written takes room) [default: 8G]
    #[arg(long, value_name = "SIZE", value_parser = parse_size_mib, conflicts_with = "workspace")]
    pub workspace_size: Option<u64>,
    /// Lifetime (`30m`, `2h`, seconds): when it runs out the instance is deleted (or stopped,
    /// with --on-timeout stop). Wall-clock time: paused and stopped time count too
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    pub timeout: Option<u64>,
    /// What happens when the lifetime runs out
    #[arg(long, value_name = "delete|stop", value_parser = parse_on_timeout, requires = "timeout")]
    pub on_timeout: Option<OnTimeout>,
}

/// `delete` or `stop`.
pub fn parse_on_timeout(s: &str) -> Result<OnTimeout, String> {
    match s {
        "delete" => Ok(OnTimeout::Delete),
        "stop" => Ok(OnTimeout::Stop),
        other => Err(format!(
            "invalid --on-timeout {other:?}: use delete or stop"
        )),
    }
}

impl InstanceOptions {
    /// The `POST /v1/instances` body for these options and `command`.
    pub fn into_request(self, command: Vec<String>) -> CreateInstance {
        CreateInstance {
            handle: self.name,
            kit: self.kit,
            command,
            entrypoint: self
                .entrypoint
                .map(|e| if e.is_empty() { Vec::new() } else { vec![e] }),
            auto_remove: false,
            image_ref: self.image,
            env: env_map(self.env),
            memory_mb: self.memory,
            vcpus: self.vcpus,
            workdir: self.workdir,
            exposes: self.expose,
            idle_pause: self.idle_pause,
            idle_stop: self.idle_stop,
            egress: self.egress,
            snapshot: self.snapshot,
            secrets: self.secrets,
            workspace: self.workspace,
            workspace_size_mb: self.workspace_size,
            timeout_secs: self.timeout,
            on_timeout: self.on_timeout,
            stdin: false,
            tty: None,
        }
    }
}

/// `--workspace`: `none`, a workspace name, or a host directory, which is made absolute against
/// this process's working directory (the daemon's would mean nothing to the user).
pub fn parse_workspace(s: &str) -> Result<String, String> {
    parse_workspace_in(s, std::env::var_os("HOME").map(std::path::PathBuf::from))
}

fn parse_workspace_in(s: &str, home: Option<std::path::PathBuf>) -> Result<String, String> {
    let looks_like_path = s.contains('/') || s.starts_with('.') || s.starts_with('~');
    if !looks_like_path {
        if s == "none" {
            return Ok(s.to_owned());
        }
        return parse_workspace_name(s)
            .map_err(|e| format!("{e} (or a path such as ./{s} for a host directory)"));
    }
    let path = match s.strip_prefix('~') {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => home
            .ok_or("cannot expand ~: HOME is not set")?
            .join(rest.trim_start_matches('/')),
        _ => std::path::PathBuf::from(s),
    };
    let absolute = std::path::absolute(&path).map_err(|e| format!("cannot resolve {s}: {e}"))?;
    if !absolute.is_dir() {
        return Err(format!("{} is not a directory", absolute.display()));
    }
    absolute
        .into_os_string()
        .into_string()
        .map_err(|p| format!("{} is not valid UTF-8", std::path::Path::new(&p).display()))
}

/// A workspace name: the rules of instance handles, and not `none`.
pub fn parse_workspace_name(s: &str) -> Result<String, String> {
    if s == "none" {
        return Err("\"none\" is not a workspace name (it means no workspace)".to_owned());
    }
    validate_handle(s)
        .map(|()| s.to_owned())
        .map_err(|e| e.replacen("handle", "workspace name", 2))
}

/// A size in MiB: `512M`, `8G`, `1T` or a bare number of MiB.
pub fn parse_size_mib(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid size {s:?}: use a number with M, G or T, like 512M or 8G");
    let t = s.trim();
    let (digits, factor) = match t.char_indices().last() {
        Some((i, 'M' | 'm')) => (&t[..i], 1),
        Some((i, 'G' | 'g')) => (&t[..i], 1024),
        Some((i, 'T' | 't')) => (&t[..i], 1024 * 1024),
        _ => (t, 1),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    match n.checked_mul(factor) {
        Some(0) | None => Err(bad()),
        Some(mib) => Ok(mib),
    }
}

/// One `--env` value, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVar {
    /// The variable's name.
    pub key: String,
    /// Its value.
    pub value: String,
}

/// The `--env` values as a map; a later value of the same key wins.
pub fn env_map(vars: Vec<EnvVar>) -> BTreeMap<String, String> {
    vars.into_iter().map(|v| (v.key, v.value)).collect()
}

/// `KEY=VALUE`, or `KEY` alone to copy the value from this process's environment.
pub fn parse_env(s: &str) -> Result<EnvVar, String> {
    parse_env_with(s, |key| std::env::var(key).ok())
}

fn parse_env_with(s: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<EnvVar, String> {
    let (key, value) = match s.split_once('=') {
        Some((key, value)) => (key, Some(value)),
        None => (s, None),
    };
    if !valid_var_name(key) {
        return Err(format!(
            "invalid variable name {key:?}: use letters, digits and '_', not starting with a digit"
        ));
    }
    let value = match value {
        Some(value) => value.to_owned(),
        None => lookup(key)
            .ok_or_else(|| format!("{key} is not set in this shell; pass --env {key}=VALUE"))?,
    };
    Ok(EnvVar {
        key: key.to_owned(),
        value,
    })
}

/// Letters, digits and `_`, not starting with a digit.
fn valid_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// A secret's name: the environment variable it becomes.
pub fn parse_secret_key(s: &str) -> Result<String, String> {
    if valid_var_name(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "invalid secret name {s:?}: use letters, digits and '_', not starting with a digit"
        ))
    }
}

/// `--secret`: a secret's name, or `*` for every secret.
pub fn parse_secret_selector(s: &str) -> Result<String, String> {
    if s == "*" {
        Ok(s.to_owned())
    } else {
        parse_secret_key(s).map_err(|e| format!("{e} (or '*' for all secrets)"))
    }
}

/// `[PUBLIC:]GUEST[/tcp|/http]`, e.g. `80`, `8080:80`, `8080:80/http`.
pub fn parse_expose(s: &str) -> Result<ExposeRequest, String> {
    let bad =
        || format!("invalid port mapping {s:?}: use [PUBLIC:]GUEST[/tcp|/http], e.g. 8080:80/http");
    let (ports, protocol) = match s.split_once('/') {
        Some((ports, proto @ ("tcp" | "http"))) => (ports, Some(proto.to_owned())),
        Some(_) => return Err(bad()),
        None => (s, None),
    };
    let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad);
    let (public_port, guest) = match ports.split_once(':') {
        Some((public, guest)) => (Some(port(public)?), port(guest)?),
        None => (None, port(ports)?),
    };
    Ok(ExposeRequest {
        port: guest,
        public_port,
        protocol,
    })
}

/// An idle timeout: seconds, `90s`, `5m`, `1h` or `never`.
pub fn parse_idle(s: &str) -> Result<IdleTimeout, String> {
    let t = IdleTimeout::Text(s.to_owned());
    t.seconds()?;
    Ok(t)
}

/// A timeout of whole seconds: `30`, `90s`, `5m`, `1h30m`; at least one second.
pub fn parse_timeout(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid timeout {s:?}: use seconds or a duration like 90s, 5m or 1h30m");
    let seconds = match s.trim().parse::<u64>() {
        Ok(n) => n,
        Err(_) => {
            u64::try_from(parse_duration(s).ok_or_else(bad)?.whole_seconds()).map_err(|_| bad())?
        }
    };
    if seconds == 0 {
        return Err(format!(
            "invalid timeout {s:?}: it must be at least 1 second"
        ));
    }
    Ok(seconds)
}

/// A valid instance handle.
pub fn parse_handle(s: &str) -> Result<String, String> {
    validate_handle(s)?;
    Ok(s.to_owned())
}

/// Guest memory: a whole number of MiB.
pub fn parse_memory(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(mib) if mib > 0 => Ok(mib),
        _ => Err(format!(
            "expected guest memory as a whole number of MiB, e.g. 512 (got {s:?})"
        )),
    }
}

/// Number of vCPUs.
pub fn parse_vcpus(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "expected a number of vCPUs of at least 1 (got {s:?})"
        )),
    }
}

/// An instance state for `--state`.
pub fn parse_state(s: &str) -> Result<InstanceStatus, String> {
    InstanceStatus::parse(s)
        .ok_or_else(|| format!("unknown state {s:?}: use starting, running, paused or stopped"))
}

/// `--since`: an RFC 3339 time, or a duration before now such as `30s`, `10m`, `2h`, `1d` or
/// `1h30m`. Returns the RFC 3339 time to send.
pub fn parse_since(s: &str) -> Result<String, String> {
    parse_since_at(s, OffsetDateTime::now_utc())
}

fn parse_since_at(s: &str, now: OffsetDateTime) -> Result<String, String> {
    let bad = || {
        format!(
            "invalid time {s:?}: use RFC 3339 (2024-05-01T10:00:00Z) or a duration such as 30s, \
             10m, 2h, 1d"
        )
    };
    if let Ok(at) = OffsetDateTime::parse(s, &Rfc3339) {
        return at.format(&Rfc3339).map_err(|_| bad());
    }
    let ago = parse_duration(s).ok_or_else(bad)?;
    now.checked_sub(ago)
        .and_then(|at| at.format(&Rfc3339).ok())
        .ok_or_else(bad)
}

/// `<number><unit>` repeated, units `s`, `m`, `h`, `d`.
fn parse_duration(s: &str) -> Option<time::Duration> {
    let mut total: i64 = 0;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let n: i64 = rest[..digits].parse().ok()?;
        let unit = rest[digits..].chars().next()?;
        let seconds = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(seconds)?)?;
        rest = &rest[digits + unit.len_utf8()..];
    }
    Some(time::Duration::seconds(total))
}

#[cfg(test)]
mod tests {

    #[test]
    fn expose_mappings() {
        let e = parse_expose("8080:80/http").unwrap();
        assert_eq!(
            (e.port, e.public_port, e.protocol.as_deref()),
            (80, Some(8080), Some("http"))
        );
        let e = parse_expose("80").unwrap();
        assert_eq!((e.port, e.public_port, e.protocol), (80, None, None));
        for bad in ["", "0", "x:80", "80/udp", "70000", "1:2:3"] {
            assert!(parse_expose(bad).is_err(), "{bad}");
        }
        assert!(parse_idle("never").is_ok());
        assert!(parse_idle("5q").is_err());
    }
    use super::*;

    #[test]
    fn env_values() {
        let lookup = |k: &str| (k == "HOME_DIR").then(|| "/home/me".to_owned());
        let ok = [
            ("A=1", "A", "1"),
            ("A=", "A", ""),
            ("_X1=a=b", "_X1", "a=b"),
            ("HOME_DIR", "HOME_DIR", "/home/me"),
        ];
        for (input, key, value) in ok {
            assert_eq!(
                parse_env_with(input, lookup),
                Ok(EnvVar {
                    key: key.to_owned(),
                    value: value.to_owned()
                }),
                "{input}"
            );
        }
        for bad in ["=1", "1A=x", "A-B=1", "A B=1", "", "UNSET_VAR"] {
            assert!(parse_env_with(bad, lookup).is_err(), "{bad}");
        }
        assert_eq!(
            parse_env_with("UNSET_VAR", lookup).unwrap_err(),
            "UNSET_VAR is not set in this shell; pass --env UNSET_VAR=VALUE"
        );
    }

    #[test]
    fn workspace_values() {
        let tmp = std::env::temp_dir();
        assert_eq!(parse_workspace_in("none", None), Ok("none".to_owned()));
        assert_eq!(parse_workspace_in("shared", None), Ok("shared".to_owned()));
        assert!(parse_workspace_in("-x", None)
            .unwrap_err()
            .contains("workspace name"));
        assert_eq!(
            parse_workspace_in("~/", Some(tmp.clone())),
            Ok(tmp.join("").display().to_string())
        );
        assert_eq!(
            parse_workspace_in(tmp.to_str().unwrap(), None),
            Ok(tmp.display().to_string())
        );
        assert!(parse_workspace_in("./no-such-dir-here", None)
            .unwrap_err()
            .contains("is not a directory"));
        assert_eq!(parse_size_mib("512M"), Ok(512));
        assert_eq!(parse_size_mib("8G"), Ok(8192));
        assert_eq!(parse_size_mib("100"), Ok(100));
        assert!(parse_size_mib("0").is_err());
        assert!(parse_size_mib("lots").is_err());
    }

    #[test]
    fn secret_names() {
        assert_eq!(parse_secret_key("API_KEY"), Ok("API_KEY".to_owned()));
        assert_eq!(parse_secret_selector("*"), Ok("*".to_owned()));
        assert_eq!(parse_secret_selector("_a1"), Ok("_a1".to_owned()));
        for bad in ["", "1A", "A-B", "A=1", "**"] {
            assert!(parse_secret_selector(bad).is_err(), "{bad}");
        }
        assert!(parse_secret_key("*").is_err());
    }

    #[test]
    fn later_env_wins() {
        let vars = ["A=1", "B=2", "A=3"].map(|s| parse_env(s).unwrap());
        let map = env_map(vars.to_vec());
        assert_eq!(map.get("A").map(String::as_str), Some("3"));
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn since_values() {
        let now = OffsetDateTime::parse("2024-05-01T12:00:00Z", &Rfc3339).unwrap();
        let rows = [
            ("30s", "2024-05-01T11:59:30Z"),
            ("10m", "2024-05-01T11:50:00Z"),
            ("2h", "2024-05-01T10:00:00Z"),
            ("1d", "2024-04-30T12:00:00Z"),
            ("1h30m", "2024-05-01T10:30:00Z"),
            ("2024-05-01T10:00:00Z", "2024-05-01T10:00:00Z"),
            ("2024-05-01T10:00:00.5+02:00", "2024-05-01T10:00:00.5+02:00"),
        ];
        for (input, want) in rows {
            assert_eq!(parse_since_at(input, now).as_deref(), Ok(want), "{input}");
        }
        for bad in [
            "",
            "10",
            "m",
            "10x",
            "-5m",
            "yesterday",
            "2024-05-01",
            "99999999999999d",
        ] {
            assert!(parse_since_at(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn numbers_and_handles() {
        assert_eq!(parse_memory("512"), Ok(512));
        assert!(parse_memory("0").is_err());
        assert!(parse_memory("1G").is_err());
        assert!(parse_memory("-1").is_err());
        assert_eq!(parse_vcpus("2"), Ok(2));
        assert!(parse_vcpus("0").is_err());
        assert_eq!(parse_handle("web-1"), Ok("web-1".to_owned()));
        assert!(parse_handle("-web").is_err());
        assert!(parse_handle("inst-1").is_err());
        assert_eq!(parse_state("paused"), Ok(InstanceStatus::Paused));
        assert!(parse_state("gone").is_err());
    }
}
