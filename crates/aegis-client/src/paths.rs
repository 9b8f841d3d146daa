//! Where the daemon's socket is by convention: `$AEGIS_HOME/aegisd.sock`, with `AEGIS_HOME`
//! defaulting to `~/.aegis`. The daemon resolves the same directory the same way.

use std::path::{Path, PathBuf};

/// Environment variable naming Aegis's data directory.
pub const HOME_ENV: &str = "AEGIS_HOME";
/// File name of the API socket inside the data directory.
pub const SOCKET_NAME: &str = "aegisd.sock";

/// The data directory: `$AEGIS_HOME`, else `~/.aegis` (`/tmp/.aegis` when `HOME` is unset).
pub fn home_from_env() -> PathBuf {
    if let Some(home) = std::env::var_os(HOME_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(home);
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join(".aegis")
}

/// The API socket inside `home`.
pub fn socket_in(home: &Path) -> PathBuf {
    home.join(SOCKET_NAME)
}
