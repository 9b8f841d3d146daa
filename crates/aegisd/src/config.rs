//! Paths and defaults of one daemon, in one struct passed explicitly (no global config).
//! Everything lives under `AEGIS_HOME` (default `~/.aegis`).

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Environment variable overriding the data directory.
pub const HOME_ENV: &str = "AEGIS_HOME";
/// Environment variable naming the static guest harness binary.
pub const HARNESS_ENV: &str = "AEGIS_HARNESS";

/// Guest memory when none is requested. Enough for Python and a small server.
pub const DEFAULT_MEMORY_MIB: u32 = 512;
/// vCPUs when none are requested.
pub const DEFAULT_VCPUS: u32 = 1;
/// Bounds users may ask for.
pub const MEMORY_RANGE_MIB: (u32, u32) = (128, 65_536);
/// Bounds on vCPUs.
pub const VCPU_RANGE: (u32, u32) = (1, 64);

/// The image used when none is given; built by the set-up step.
pub const DEFAULT_IMAGE: &str = "aegis.local/default:latest";

/// Daemon-wide default of the per-instance `snapshot` setting: `on` (default) or `off`.
pub const SNAPSHOT_ENV: &str = "AEGIS_SNAPSHOT";

/// Where a daemon keeps its files.
#[derive(Debug, Clone)]
pub struct Config {
    /// The data directory.
    pub home: PathBuf,
    /// The static guest harness.
    pub harness: PathBuf,
    /// Grace period between SIGTERM and SIGKILL for guest processes on a graceful stop.
    pub stop_grace: Duration,
    /// Whether instances created without a `snapshot` setting save a snapshot when stopped
    /// (`AEGIS_SNAPSHOT=on|off`, default on).
    pub snapshot_default: bool,
}

impl Config {
    /// Reads `AEGIS_HOME` / `AEGIS_HARNESS` from the environment, with defaults.
    pub fn from_env() -> Config {
        let home = std::env::var_os(HOME_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(default_home);
        let harness = std::env::var_os(HARNESS_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(default_harness);
        let snapshot_default = !matches!(
            std::env::var(SNAPSHOT_ENV).as_deref().map(str::trim),
            Ok("off" | "0" | "false" | "no")
        );
        Config {
            home,
            harness,
            stop_grace: Duration::from_secs(5),
            snapshot_default,
        }
    }

    /// The API socket.
    pub fn socket(&self) -> PathBuf {
        self.home.join("aegisd.sock")
    }
    /// The SQLite registry.
    pub fn database(&self) -> PathBuf {
        self.home.join("aegis.db")
    }
    /// The master key of the secret store (created on first use, mode 0600).
    pub fn master_key(&self) -> PathBuf {
        self.home.join(crate::secrets::KEY_FILE)
    }
    /// The daemon's own log file.
    pub fn daemon_log(&self) -> PathBuf {
        self.home.join("aegisd.log")
    }
    /// The daemon's pid file.
    pub fn pid_file(&self) -> PathBuf {
        self.home.join("aegisd.pid")
    }
    /// Per-instance directories.
    pub fn instances_dir(&self) -> PathBuf {
        self.home.join("instances")
    }
    /// The directory of one instance.
    pub fn instance_dir(&self, id: impl AsRef<str>) -> PathBuf {
        self.instances_dir().join(id.as_ref())
    }
    /// The image store.
    pub fn images_dir(&self) -> PathBuf {
        self.home.join("images")
    }
    /// Installed kit manifests and the config directories of instance daemons.
    pub fn kits_dir(&self) -> PathBuf {
        self.home.join("kits")
    }
    /// The guest kernel installed by the set-up step.
    pub fn kernel_dir(&self) -> PathBuf {
        self.home.join("kernel")
    }
    /// Named workspaces.
    pub fn workspaces_dir(&self) -> PathBuf {
        self.home.join("workspaces")
    }

    /// Files that mean nothing once the daemon is gone (sockets).
    pub fn run_dir(&self) -> PathBuf {
        self.home.join("run")
    }
    /// The API sockets of kit instance daemons, one per instance (`ID.sock`), each scoped to
    /// its instance; emptied when the daemon starts. Short, so `HOME/run/kit-api/inst-….sock` stays well under the 108 bytes
    /// of a unix socket path.
    pub fn kit_api_dir(&self) -> PathBuf {
        self.run_dir().join("kit-api")
    }

    /// Caches (initramfs).
    pub fn cache_dir(&self) -> PathBuf {
        self.home.join("cache")
    }
}

fn default_home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join(".aegis")
}

/// The static harness in `guest/` beside the running binary (where `scripts/build.sh` puts it;
/// the `aegis-harness` right beside it is cargo's own dynamically linked build).
fn default_harness() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_default()
        .join("guest/aegis-harness")
}
