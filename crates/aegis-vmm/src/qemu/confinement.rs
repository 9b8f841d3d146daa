//! What confines a QEMU process besides its seccomp filter: the user it runs as and the
//! resource limits it starts under.
//!
//! A daemon running as root hands each QEMU to an unprivileged user ([`VM_USER`], created by
//! `setup.sh`) once QEMU has opened its files, so a guest that breaks out of QEMU cannot read
//! the daemon's master key, secrets or other instances' disks: everything of the daemon's lives
//! under its home, which that user cannot enter. A daemon that is not root runs QEMU as itself.

use std::path::Path;

use nix::sys::resource::Resource;

use super::argv::Confinement;
use super::process::{Limit, COMMON_LIMITS};
use crate::vmm::VmSpec;

/// The user QEMU runs as when the daemon is root.
pub const VM_USER: &str = "aegis-vm";

/// Overrides [`VM_USER`]; empty keeps QEMU as the daemon's user.
pub const VM_USER_ENV: &str = "AEGIS_VM_USER";

/// Descriptors a QEMU may hold: its disks, sockets, eventfds and the guest's network
/// connections (slirp opens one per guest connection). The daemon raises its own limit for the
/// router; a guest must not inherit that.
const QEMU_OPEN_FILES: u64 = 4096;

/// Address space a QEMU may map beyond its guest's memory: TCG's translation buffer (1 GiB by
/// default), thread stacks, the block layer's caches and QEMU itself. Measured: a TCG QEMU
/// with a 512 MiB guest maps 2.1 GiB at its peak (`VmPeak`), the 4 GiB slack leaves room for
/// larger guests' page tables and caches.
const QEMU_ADDRESS_SPACE_SLACK: u64 = 4 << 30;

/// Who the QEMU at `program` runs as, and how its version spells the switch.
pub fn detect(program: &Path) -> Confinement {
    let user = user_for(
        nix::unistd::geteuid().is_root(),
        std::env::var(VM_USER_ENV).ok(),
    );
    let Some(user) = user else {
        return Confinement::default();
    };
    match nix::unistd::User::from_name(&user) {
        Ok(Some(_)) => Confinement {
            user: Some(user),
            run_with: spells_run_with(&super::version_line(program)),
        },
        _ => {
            tracing::warn!(
                user,
                "QEMU runs as root: there is no user {user} to hand it to (setup.sh creates it: \
                 useradd --system --no-create-home --shell /usr/sbin/nologin {user})"
            );
            Confinement::default()
        }
    }
}

/// The user to switch to: none unless the daemon is root, the override when given (empty for
/// none), [`VM_USER`] otherwise.
fn user_for(root: bool, configured: Option<String>) -> Option<String> {
    if !root {
        return None;
    }
    match configured {
        Some(name) if name.is_empty() => None,
        Some(name) => Some(name),
        None => Some(VM_USER.to_owned()),
    }
}

/// Whether the QEMU of `version_line` ("QEMU emulator version 9.2.0 …") takes
/// `-run-with user=` (9.1 and later deprecate `-runas`).
fn spells_run_with(version_line: &str) -> bool {
    let Some(version) = version_line
        .split("version ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
    else {
        return false;
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= (9, 1)
}

/// The limits a QEMU for `spec` starts under.
pub fn limits(spec: &VmSpec) -> Vec<Limit> {
    let mut limits = COMMON_LIMITS.to_vec();
    limits.push((Resource::RLIMIT_NOFILE, QEMU_OPEN_FILES));
    limits.push((
        Resource::RLIMIT_AS,
        (u64::from(spec.memory_mib) << 20) + QEMU_ADDRESS_SPACE_SLACK,
    ));
    limits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_root_daemon_switches_and_an_empty_override_keeps_its_user() {
        assert_eq!(user_for(false, None), None);
        assert_eq!(user_for(true, None).as_deref(), Some(VM_USER));
        assert_eq!(user_for(true, Some("vm".into())).as_deref(), Some("vm"));
        assert_eq!(user_for(true, Some(String::new())), None);
    }

    #[test]
    fn run_with_is_the_spelling_from_9_1() {
        assert!(!spells_run_with(
            "QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)"
        ));
        assert!(!spells_run_with("QEMU emulator version 9.0.2"));
        assert!(spells_run_with("QEMU emulator version 9.1.0"));
        assert!(spells_run_with(
            "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)"
        ));
        assert!(!spells_run_with(""));
    }
}
