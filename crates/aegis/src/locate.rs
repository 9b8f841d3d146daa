//! Where the daemon and guest harness binaries are: `aegis up` starts the first, `aegis doctor`
//! checks both.

use std::path::PathBuf;

/// Environment variable naming the `aegisd` binary `aegis up` starts (tests use it to pick a
/// build; by default `aegisd` is looked for next to `aegis`, then in `PATH`).
pub const DAEMON_ENV: &str = "AEGIS_DAEMON";
/// Environment variable naming the guest harness (read by `aegisd` too).
pub const HARNESS_ENV: &str = "AEGIS_HARNESS";

/// The `aegisd` binary: `$AEGIS_DAEMON`, else next to this executable (where
/// `scripts/build.sh` puts both), else in `PATH`.
pub fn aegisd() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(DAEMON_ENV).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("aegisd")))
        .filter(|p| p.is_file());
    sibling.or_else(|| in_path("aegisd"))
}

/// The guest harness the daemon will use: `$AEGIS_HARNESS`, else `guest/aegis-harness` beside
/// `aegisd` (the daemon's own default; the `aegis-harness` right beside it is cargo's
/// dynamically linked build, which cannot boot).
pub fn harness() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(HARNESS_ENV).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let daemon = aegisd()?;
    let daemon = std::fs::canonicalize(&daemon).unwrap_or(daemon);
    Some(daemon.parent()?.join("guest/aegis-harness"))
}

/// `name` in one of the directories of `PATH`.
pub fn in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}
