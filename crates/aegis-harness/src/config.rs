//! The harness's boot configuration: `aegis.*` options on the kernel command line, turned into a
//! typed [`Config`].
//!
//! Parsing has two levels: [`RawOptions::parse`] splits the command line and keeps the last value
//! of each known `aegis.*` option (noting unknown ones), then [`Config::from_raw`] validates the
//! values together. Options the kernel or other programs use (no `aegis.` prefix) are ignored.
//! Secrets never come this way: they arrive in `run`/`exec` parameters.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

/// Where the kernel command line is read from.
pub const CMDLINE_PATH: &str = "/proc/cmdline";

/// Root block device, or `none` to stay in the initramfs root.
pub const OPT_ROOT: &str = "aegis.root";
/// Filesystem type of the root device.
pub const OPT_ROOTFSTYPE: &str = "aegis.rootfstype";
/// Mount data (options) for the root device, passed to mount(2) as is.
pub const OPT_ROOTFLAGS: &str = "aegis.rootflags";
/// Hostname of the guest.
pub const OPT_HOSTNAME: &str = "aegis.hostname";
/// IPv4 address and prefix length of `eth0`, e.g. `10.0.2.15/24`. Absent: only `lo` comes up.
pub const OPT_IP: &str = "aegis.ip";
/// IPv4 default gateway.
pub const OPT_GW: &str = "aegis.gw";
/// Nameserver written to `/etc/resolv.conf`.
pub const OPT_DNS: &str = "aegis.dns";
/// AF_VSOCK port on the host (CID 2); when given, the channel uses vsock instead of the
/// virtio-serial port.
pub const OPT_VSOCK_PORT: &str = "aegis.vsock_port";

/// The workspace mounted at `/workspace`: a block device holding ext4 (`/dev/vdb`) or
/// `virtiofs:TAG` for a shared host directory. Absent: no workspace.
pub const OPT_WORKSPACE: &str = "aegis.workspace";

/// Every option this harness understands; anything else with the `aegis.` prefix is reported.
const KNOWN_OPTIONS: [&str; 9] = [
    OPT_ROOT,
    OPT_ROOTFSTYPE,
    OPT_ROOTFLAGS,
    OPT_HOSTNAME,
    OPT_IP,
    OPT_GW,
    OPT_DNS,
    OPT_VSOCK_PORT,
    OPT_WORKSPACE,
];

/// The root device of the QEMU backend: the first virtio-blk disk.
pub const DEFAULT_ROOT_DEVICE: &str = "/dev/vda";
/// The base images Aegis builds are ext4.
pub const DEFAULT_ROOT_FSTYPE: &str = "ext4";
/// Hostname when the host does not name the guest.
pub const DEFAULT_HOSTNAME: &str = "aegis";
/// Value of `aegis.root` that keeps the initramfs as the root (tests, rescue).
pub const ROOT_NONE: &str = "none";

/// Longest hostname the kernel accepts (`HOST_NAME_MAX`).
const MAX_HOSTNAME_BYTES: usize = 64;

/// Why the command line cannot be turned into a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The command line could not be read.
    #[error("cannot read the kernel command line from {path}")]
    Read {
        /// Where it was read from.
        path: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An option has a value that does not parse.
    #[error("invalid value {value:?} for {option}: expected {expected}")]
    InvalidValue {
        /// The option.
        option: &'static str,
        /// What was given.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },
}

/// Raw `aegis.*` values as found on the command line, before validation.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RawOptions {
    values: BTreeMap<&'static str, String>,
    /// Console lines about options that were ignored.
    pub notes: Vec<String>,
}

impl RawOptions {
    /// Splits a kernel command line the way the kernel does (whitespace-separated, double quotes
    /// group) and keeps the last value of every known `aegis.*` option.
    pub fn parse(cmdline: &str) -> RawOptions {
        let mut raw = RawOptions::default();
        for token in split_cmdline(cmdline) {
            let Some(rest) = token.strip_prefix("aegis.") else {
                continue;
            };
            let (name, value) = match rest.split_once('=') {
                Some((name, value)) => (name, value),
                None => (rest, ""),
            };
            match KNOWN_OPTIONS
                .iter()
                .find(|known| known.strip_prefix("aegis.") == Some(name))
            {
                Some(known) => {
                    raw.values.insert(known, value.to_owned());
                }
                None => raw
                    .notes
                    .push(format!("ignoring unknown option aegis.{name}")),
            }
        }
        raw
    }

    fn get(&self, option: &'static str) -> Option<&str> {
        self.values.get(option).map(String::as_str)
    }
}

/// Splits at unquoted whitespace and removes the quotes, like the kernel's `next_arg`.
fn split_cmdline(cmdline: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    for c in cmdline.chars() {
        match c {
            '"' => in_quotes = !in_quotes,
            c if c.is_whitespace() && !in_quotes => {
                if !current.is_empty() {
                    tokens.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        tokens.push(current);
    }
    tokens
}

/// What becomes `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootConfig {
    /// Stay in the initramfs (`aegis.root=none`).
    Initramfs,
    /// Mount a block device and switch to it.
    Device {
        /// Device node, e.g. `/dev/vda`.
        device: PathBuf,
        /// Filesystem type for mount(2).
        fstype: String,
        /// Mount data, if any.
        flags: Option<String>,
    },
}

/// What is mounted at `/workspace`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkspaceConfig {
    /// An ext4 volume on this block device.
    Block(PathBuf),
    /// A host directory shared over virtio-fs under this tag.
    Virtiofs(String),
}

/// Static IPv4 configuration of `eth0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    /// Address of `eth0`.
    pub address: Ipv4Addr,
    /// Prefix length (0..=32).
    pub prefix_len: u8,
    /// Default gateway, if any.
    pub gateway: Option<Ipv4Addr>,
}

impl NetConfig {
    /// The netmask for [`NetConfig::prefix_len`].
    pub fn netmask(&self) -> Ipv4Addr {
        let bits = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0);
        Ipv4Addr::from(bits)
    }
}

/// Which transport carries the control channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportChoice {
    /// The virtio-serial port named [`aegis_proto::control::CONTROL_PORT_NAME`].
    VirtioSerial,
    /// AF_VSOCK to the host (CID 2) on this port.
    Vsock {
        /// The host's port.
        port: u32,
    },
}

/// The validated boot configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Root filesystem.
    pub root: RootConfig,
    /// Hostname to set.
    pub hostname: String,
    /// `eth0` configuration; `None` brings up `lo` only.
    pub network: Option<NetConfig>,
    /// Nameserver for `/etc/resolv.conf`.
    pub dns: Option<IpAddr>,
    /// Control channel transport.
    pub transport: TransportChoice,
    /// The workspace, if the host attached one.
    pub workspace: Option<WorkspaceConfig>,
}

impl Config {
    /// Reads [`CMDLINE_PATH`] and builds the configuration; also returns lines for the console
    /// about ignored options.
    ///
    /// # Errors
    /// [`ConfigError`] when the file cannot be read or a value is invalid.
    pub fn load() -> Result<(Config, Vec<String>), ConfigError> {
        let cmdline =
            std::fs::read_to_string(CMDLINE_PATH).map_err(|source| ConfigError::Read {
                path: CMDLINE_PATH,
                source,
            })?;
        let mut raw = RawOptions::parse(&cmdline);
        let config = Config::from_raw(&mut raw)?;
        Ok((config, raw.notes))
    }

    /// Validates raw options; notes about ignored values are added to `raw.notes`.
    ///
    /// # Errors
    /// [`ConfigError::InvalidValue`] naming the first bad option.
    pub fn from_raw(raw: &mut RawOptions) -> Result<Config, ConfigError> {
        let root = match raw.get(OPT_ROOT).unwrap_or(DEFAULT_ROOT_DEVICE) {
            ROOT_NONE => RootConfig::Initramfs,
            device if device.starts_with('/') => RootConfig::Device {
                device: PathBuf::from(device),
                fstype: non_empty(raw.get(OPT_ROOTFSTYPE))
                    .unwrap_or(DEFAULT_ROOT_FSTYPE)
                    .to_owned(),
                flags: non_empty(raw.get(OPT_ROOTFLAGS)).map(str::to_owned),
            },
            other => {
                return Err(invalid(
                    OPT_ROOT,
                    other,
                    "an absolute device path or `none`",
                ))
            }
        };

        let hostname = match raw.get(OPT_HOSTNAME) {
            None => DEFAULT_HOSTNAME.to_owned(),
            Some(name) if !name.is_empty() && name.len() <= MAX_HOSTNAME_BYTES => name.to_owned(),
            Some(other) => return Err(invalid(OPT_HOSTNAME, other, "1 to 64 bytes")),
        };

        let gateway = match raw.get(OPT_GW) {
            None => None,
            Some(gw) => Some(
                gw.parse::<Ipv4Addr>()
                    .map_err(|_| invalid(OPT_GW, gw, "an IPv4 address"))?,
            ),
        };
        let network = match raw.get(OPT_IP) {
            None => {
                if gateway.is_some() {
                    raw.notes
                        .push(format!("ignoring {OPT_GW}: no {OPT_IP} is given"));
                }
                None
            }
            Some(ip) => {
                let (address, prefix_len) = parse_cidr(ip).ok_or_else(|| {
                    invalid(OPT_IP, ip, "an IPv4 address with prefix, like 10.0.2.15/24")
                })?;
                Some(NetConfig {
                    address,
                    prefix_len,
                    gateway,
                })
            }
        };

        let dns = match raw.get(OPT_DNS) {
            None => None,
            Some(dns) => Some(
                dns.parse::<IpAddr>()
                    .map_err(|_| invalid(OPT_DNS, dns, "an IP address"))?,
            ),
        };

        let transport = match raw.get(OPT_VSOCK_PORT) {
            None => TransportChoice::VirtioSerial,
            Some(port) => TransportChoice::Vsock {
                port: port
                    .parse::<u32>()
                    .map_err(|_| invalid(OPT_VSOCK_PORT, port, "a port number"))?,
            },
        };

        let workspace = match non_empty(raw.get(OPT_WORKSPACE)) {
            None => None,
            Some(value) => Some(match value.strip_prefix("virtiofs:") {
                Some(tag) if !tag.is_empty() && tag.len() <= 36 => {
                    WorkspaceConfig::Virtiofs(tag.to_owned())
                }
                None if value.starts_with("/dev/") => WorkspaceConfig::Block(PathBuf::from(value)),
                _ => {
                    return Err(invalid(
                        OPT_WORKSPACE,
                        value,
                        "a /dev/ block device or virtiofs:TAG (1 to 36 bytes)",
                    ))
                }
            }),
        };

        Ok(Config {
            root,
            hostname,
            network,
            dns,
            transport,
            workspace,
        })
    }
}

/// `--stdio` mode: serve the ingress proxy on `127.0.0.1:<port>` (0: any free port, printed on
/// the console). Off when unset.
pub const ENV_INGRESS_PORT: &str = "AEGIS_HARNESS_INGRESS_PORT";
/// `--stdio` mode: send activity heartbeats every this many milliseconds. Off when unset.
pub const ENV_ACTIVITY_MS: &str = "AEGIS_HARNESS_ACTIVITY_MS";
/// `--stdio` mode: the directory whose entries count as keepalive leases (default
/// [`aegis_proto::control::KEEPALIVE_DIR`]).
pub const ENV_KEEPALIVE_DIR: &str = "AEGIS_HARNESS_KEEPALIVE_DIR";

/// Longest heartbeat interval `--stdio` mode accepts.
const MAX_ACTIVITY_MS: u64 = 3_600_000;

/// Options of `--stdio` mode, from the environment, for tests on the host. Never read as PID 1:
/// the kernel hands unknown command-line words to init as environment variables, and the guest's
/// behaviour is set by `aegis.*` options only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioOptions {
    /// [`ENV_INGRESS_PORT`].
    pub ingress_port: Option<u16>,
    /// [`ENV_ACTIVITY_MS`].
    pub activity_interval: Option<Duration>,
    /// [`ENV_KEEPALIVE_DIR`].
    pub keepalive_dir: Option<PathBuf>,
}

impl StdioOptions {
    /// Reads the options through `var` (`std::env::var_os` outside tests); empty values count
    /// as unset.
    ///
    /// # Errors
    /// [`ConfigError::InvalidValue`] naming the variable.
    pub fn from_env(var: impl Fn(&str) -> Option<OsString>) -> Result<StdioOptions, ConfigError> {
        let get = |name: &str| var(name).filter(|value| !value.is_empty());
        let text = |name: &'static str, value: OsString| {
            value
                .into_string()
                .map_err(|value| invalid(name, &value.to_string_lossy(), "UTF-8 text"))
        };
        let ingress_port = match get(ENV_INGRESS_PORT) {
            None => None,
            Some(value) => {
                let value = text(ENV_INGRESS_PORT, value)?;
                Some(value.parse::<u16>().map_err(|_| {
                    invalid(ENV_INGRESS_PORT, &value, "a TCP port (0 for any free port)")
                })?)
            }
        };
        let activity_interval = match get(ENV_ACTIVITY_MS) {
            None => None,
            Some(value) => {
                let value = text(ENV_ACTIVITY_MS, value)?;
                let ms = value
                    .parse::<u64>()
                    .ok()
                    .filter(|ms| (1..=MAX_ACTIVITY_MS).contains(ms))
                    .ok_or_else(|| invalid(ENV_ACTIVITY_MS, &value, "1 to 3600000 milliseconds"))?;
                Some(Duration::from_millis(ms))
            }
        };
        Ok(StdioOptions {
            ingress_port,
            activity_interval,
            keepalive_dir: get(ENV_KEEPALIVE_DIR).map(PathBuf::from),
        })
    }
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.filter(|v| !v.is_empty())
}

fn invalid(option: &'static str, value: &str, expected: &'static str) -> ConfigError {
    ConfigError::InvalidValue {
        option,
        value: value.to_owned(),
        expected,
    }
}

/// `a.b.c.d/len`; a bare address means /32 would be surprising, so the prefix is required.
fn parse_cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (address, prefix) = text.split_once('/')?;
    let address = address.parse::<Ipv4Addr>().ok()?;
    let prefix = prefix.parse::<u8>().ok().filter(|p| *p <= 32)?;
    Some((address, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(cmdline: &str) -> Result<(Config, Vec<String>), ConfigError> {
        let mut raw = RawOptions::parse(cmdline);
        let config = Config::from_raw(&mut raw)?;
        Ok((config, raw.notes))
    }

    #[test]
    fn defaults_when_nothing_is_given() {
        let (config, notes) = parse("console=ttyS0 quiet panic=-1\n").unwrap();
        assert_eq!(
            config,
            Config {
                root: RootConfig::Device {
                    device: PathBuf::from("/dev/vda"),
                    fstype: "ext4".into(),
                    flags: None,
                },
                hostname: "aegis".into(),
                network: None,
                dns: None,
                transport: TransportChoice::VirtioSerial,
                workspace: None,
            }
        );
        assert!(notes.is_empty());
    }

    #[test]
    fn full_command_line() {
        let (config, notes) = parse(
            "console=ttyS0 aegis.root=/dev/vdb aegis.rootfstype=xfs aegis.rootflags=noatime,discard \
             aegis.hostname=web-1 aegis.ip=10.0.2.15/24 aegis.gw=10.0.2.2 aegis.dns=10.0.2.3 \
             aegis.vsock_port=1024 aegis.workspace=virtiofs:ws",
        )
        .unwrap();
        assert_eq!(
            config.root,
            RootConfig::Device {
                device: PathBuf::from("/dev/vdb"),
                fstype: "xfs".into(),
                flags: Some("noatime,discard".into()),
            }
        );
        assert_eq!(config.hostname, "web-1");
        let net = config.network.unwrap();
        assert_eq!(net.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(net.prefix_len, 24);
        assert_eq!(net.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(net.gateway, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(config.dns, Some(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 3))));
        assert_eq!(config.transport, TransportChoice::Vsock { port: 1024 });
        assert_eq!(
            config.workspace,
            Some(WorkspaceConfig::Virtiofs("ws".into()))
        );
        assert!(notes.is_empty());
    }

    #[test]
    fn root_none_stays_in_initramfs() {
        let (config, _) = parse("aegis.root=none").unwrap();
        assert_eq!(config.root, RootConfig::Initramfs);
    }

    #[test]
    fn last_value_wins_and_quotes_group() {
        let (config, _) =
            parse(r#"aegis.hostname=first aegis.hostname="second" "aegis.rootflags=a b""#).unwrap();
        assert_eq!(config.hostname, "second");
        assert!(matches!(config.root, RootConfig::Device { flags: Some(f), .. } if f == "a b"));
    }

    #[test]
    fn unknown_options_are_noted_not_fatal() {
        let (_, notes) = parse("aegis.colour=blue aegis.debug aegisx=1").unwrap();
        assert_eq!(
            notes,
            vec![
                "ignoring unknown option aegis.colour".to_owned(),
                "ignoring unknown option aegis.debug".to_owned(),
            ]
        );
    }

    #[test]
    fn gateway_without_address_is_noted() {
        let (config, notes) = parse("aegis.gw=10.0.2.2").unwrap();
        assert_eq!(config.network, None);
        assert_eq!(
            notes,
            vec!["ignoring aegis.gw: no aegis.ip is given".to_owned()]
        );
    }

    #[test]
    fn netmask_edges() {
        let net = |prefix_len| NetConfig {
            address: Ipv4Addr::UNSPECIFIED,
            prefix_len,
            gateway: None,
        };
        assert_eq!(net(0).netmask(), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(net(8).netmask(), Ipv4Addr::new(255, 0, 0, 0));
        assert_eq!(net(20).netmask(), Ipv4Addr::new(255, 255, 240, 0));
        assert_eq!(net(32).netmask(), Ipv4Addr::new(255, 255, 255, 255));
    }

    #[test]
    fn invalid_values_name_the_option() {
        let cases = [
            ("aegis.ip=10.0.2.15", OPT_IP),
            ("aegis.ip=10.0.2.15/33", OPT_IP),
            ("aegis.ip=nope/24", OPT_IP),
            ("aegis.ip=10.0.2.15/24 aegis.gw=gateway", OPT_GW),
            ("aegis.dns=dns.example", OPT_DNS),
            ("aegis.root=vda", OPT_ROOT),
            ("aegis.workspace=vdb", OPT_WORKSPACE),
            ("aegis.workspace=virtiofs:", OPT_WORKSPACE),
            ("aegis.hostname=", OPT_HOSTNAME),
            ("aegis.vsock_port=-1", OPT_VSOCK_PORT),
        ];
        for (cmdline, expected) in cases {
            match parse(cmdline) {
                Err(ConfigError::InvalidValue { option, .. }) => {
                    assert_eq!(option, expected, "{cmdline}")
                }
                other => panic!("{cmdline}: expected an invalid value, got {other:?}"),
            }
        }
        let long = format!("aegis.hostname={}", "h".repeat(65));
        assert!(parse(&long).is_err());
    }

    #[test]
    fn ipv6_nameserver_is_accepted() {
        let (config, _) = parse("aegis.dns=fd00::3").unwrap();
        assert_eq!(config.dns, Some("fd00::3".parse().unwrap()));
    }

    #[test]
    fn stdio_options_come_from_the_environment() {
        let env = |pairs: &[(&str, &str)]| {
            let pairs: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        assert_eq!(
            StdioOptions::from_env(env(&[])).unwrap(),
            StdioOptions::default()
        );
        assert_eq!(
            StdioOptions::from_env(env(&[
                (ENV_INGRESS_PORT, "0"),
                (ENV_ACTIVITY_MS, "250"),
                (ENV_KEEPALIVE_DIR, "/tmp/k"),
            ]))
            .unwrap(),
            StdioOptions {
                ingress_port: Some(0),
                activity_interval: Some(Duration::from_millis(250)),
                keepalive_dir: Some(PathBuf::from("/tmp/k")),
            }
        );
        // Empty means unset.
        assert_eq!(
            StdioOptions::from_env(env(&[(ENV_INGRESS_PORT, "")])).unwrap(),
            StdioOptions::default()
        );
        for (name, value) in [
            (ENV_INGRESS_PORT, "65536"),
            (ENV_INGRESS_PORT, "http"),
            (ENV_ACTIVITY_MS, "0"),
            (ENV_ACTIVITY_MS, "-5"),
        ] {
            let err = StdioOptions::from_env(env(&[(name, value)])).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
    }
}
