//! The host programs a test may run. Each must be listed in `scripts/requirements`, which
//! `setup.sh` installs from and `setup.sh --check` verifies, so a test cannot come to depend on
//! a program that was only ever installed by hand on one machine.

use std::path::PathBuf;

/// `scripts/requirements`, as built into the test binaries.
const REQUIREMENTS: &str = include_str!("../../../scripts/requirements");

/// The Debian package (or `setup.sh` step) that provides `program`, per `scripts/requirements`.
pub fn provider(program: &str) -> Option<&'static str> {
    REQUIREMENTS
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find_map(|line| {
            let mut words = line.split_whitespace();
            let kind = words.next()?;
            let name = words.next()?;
            let pkg = words.next()?;
            (matches!(kind, "command" | "built") && name == program).then_some(pkg)
        })
}

/// Finds `program` in `PATH` or an sbin directory.
///
/// # Panics
/// When `program` is not listed in `scripts/requirements` (add it there, with its package, so
/// `setup.sh` installs it), or when it is missing (the message names the package; tests never
/// skip).
pub fn tool(program: &str) -> PathBuf {
    let Some(package) = provider(program) else {
        panic!(
            "this test runs `{program}`, which scripts/requirements does not list: add it there \
             with the Debian package that provides it, so that setup.sh installs it"
        )
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "this test needs `{program}` (from {package}): run ./setup.sh, which installs it"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_name_their_providers() {
        assert_eq!(provider("qemu-img"), Some("qemu-utils"));
        assert_eq!(provider("debugfs"), Some("e2fsprogs"));
        assert_eq!(provider("virtiofsd"), Some("virtiofsd@1.14.0"));
        assert_eq!(
            provider("ca-certificates"),
            None,
            "a package line is no program"
        );
        assert_eq!(provider("curl"), None);
        assert!(tool("mke2fs").is_file());
    }

    #[test]
    #[should_panic(expected = "scripts/requirements does not list")]
    fn unlisted_programs_are_refused() {
        tool("sh");
    }
}
