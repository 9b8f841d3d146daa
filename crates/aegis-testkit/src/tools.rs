//! The host programs a test may run. Each must be listed in `scripts/requirements`, which
//! `setup.sh` installs from and `setup.sh --check` verifies, so a test cannot come to depend on
//! a program that was only ever installed by hand on one machine. Debian programs are found in
//! `PATH`; the programs of PyPI packages (kind `pip`) only in the virtual environment setup.sh
//! installs them into, `$AEGIS_HOME/tools/venv` of the set-up home.

use std::path::PathBuf;

use crate::daemon::shared_home;

/// `scripts/requirements`, as built into the test binaries.
const REQUIREMENTS: &str = include_str!("../../../scripts/requirements");

/// Where `setup.sh` creates the virtual environment of the `pip` requirements, in the set-up
/// home.
const VENV: &str = "tools/venv";
/// Where `setup.sh` installs the `npm` requirements (`npm install --prefix`).
const NPM: &str = "tools/npm";

/// How a listed program is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A Debian package (`command`) or a build of setup.sh (`built`): found in `PATH`.
    Host,
    /// A PyPI package in setup.sh's virtual environment.
    Pip,
}

fn requirement(program: &str) -> Option<(Kind, &'static str)> {
    REQUIREMENTS
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find_map(|line| {
            let mut words = line.split_whitespace();
            let kind = match words.next()? {
                "command" | "built" => Kind::Host,
                "pip" => Kind::Pip,
                _ => return None,
            };
            let name = words.next()?;
            let pkg = words.next()?;
            (name == program).then_some((kind, pkg))
        })
}

/// The Debian package, `setup.sh` step or pinned PyPI package that provides `program`, per
/// `scripts/requirements`.
pub fn provider(program: &str) -> Option<&'static str> {
    requirement(program).map(|(_, pkg)| pkg)
}

/// The virtual environment setup.sh installs the `pip` requirements into.
pub fn venv_dir() -> PathBuf {
    shared_home().join(VENV)
}

/// The prefix setup.sh installs the `npm` requirements into: a node script copied into it
/// imports them.
pub fn npm_dir() -> PathBuf {
    shared_home().join(NPM)
}

/// Points an E2B SDK client at the listener on `addr` with `key`: the three variables a user
/// sets (control plane, data plane, API key).
pub fn e2b_client(command: &mut std::process::Command, addr: &str, key: &str) {
    let url = format!("http://{addr}");
    command
        .env("E2B_API_URL", &url)
        .env("E2B_SANDBOX_URL", &url)
        .env("E2B_API_KEY", key);
}

/// Finds `program`: a Debian program in `PATH` or an sbin directory, a PyPI package's program
/// in [`venv_dir`]`/bin`.
///
/// # Panics
/// When `program` is not listed in `scripts/requirements` (add it there, with its package, so
/// `setup.sh` installs it), or when it is missing (the message names the package; tests never
/// skip).
pub fn tool(program: &str) -> PathBuf {
    let Some((kind, package)) = requirement(program) else {
        panic!(
            "this test runs `{program}`, which scripts/requirements does not list: add it there \
             with the Debian package that provides it, so that setup.sh installs it"
        )
    };
    let found = match kind {
        Kind::Host => {
            let path = std::env::var_os("PATH").unwrap_or_default();
            std::env::split_paths(&path)
                .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
                .map(|dir| dir.join(program))
                .find(|p| p.is_file())
        }
        Kind::Pip => Some(venv_dir().join("bin").join(program)).filter(|p| p.is_file()),
    };
    found.unwrap_or_else(|| match kind {
        Kind::Host => {
            panic!(
                "this test needs `{program}` (from {package}): run ./setup.sh, which installs it"
            )
        }
        Kind::Pip => panic!(
            "this test needs `{program}` ({package} from PyPI) in {}: run ./setup.sh, which \
             installs it there",
            venv_dir().display()
        ),
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
        assert!(
            provider("schemathesis").is_some_and(|p| p.starts_with("schemathesis==")),
            "a pip requirement is pinned"
        );
        assert_eq!(
            provider("ca-certificates"),
            None,
            "a package line is no program"
        );
        assert_eq!(provider("curl"), None);
        assert!(tool("mke2fs").is_file());
    }

    #[test]
    fn pip_programs_come_from_the_venv() {
        let st = tool("schemathesis");
        assert_eq!(st, venv_dir().join("bin/schemathesis"));
    }

    #[test]
    #[should_panic(expected = "scripts/requirements does not list")]
    fn unlisted_programs_are_refused() {
        tool("sh");
    }
}
