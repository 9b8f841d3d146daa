//! Accelerator selection: `kvm` only where it can boot a stock kernel, `hvf` on macOS, `tcg`
//! otherwise, with `AEGIS_ACCEL` to override.
//!
//! A host whose KVM is PVM (`/sys/module/kvm_pvm` present, no `vmx`/`svm` CPU flag) exposes
//! `/dev/kvm` but can only run PVM-aware guest kernels; Aegis must use TCG there.

use std::fmt;
use std::fs::OpenOptions;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Environment variable that forces an accelerator.
pub const ACCEL_ENV: &str = "AEGIS_ACCEL";

/// A hardware or software accelerator QEMU can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accelerator {
    /// Linux hardware virtualisation.
    Kvm,
    /// macOS Hypervisor.framework.
    Hvf,
    /// QEMU's software emulation: works anywhere, 10–50× slower guest code.
    Tcg,
}

impl Accelerator {
    /// QEMU's spelling (`-accel <name>`).
    pub fn as_str(self) -> &'static str {
        match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Hvf => "hvf",
            Accelerator::Tcg => "tcg",
        }
    }
}

impl fmt::Display for Accelerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An `AEGIS_ACCEL` value that is not one of `kvm`, `hvf`, `tcg`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown accelerator {0:?}: expected kvm, hvf or tcg")]
pub struct UnknownAccelerator(pub String);

impl FromStr for Accelerator {
    type Err = UnknownAccelerator;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "kvm" => Ok(Accelerator::Kvm),
            "hvf" => Ok(Accelerator::Hvf),
            "tcg" => Ok(Accelerator::Tcg),
            _ => Err(UnknownAccelerator(s.to_owned())),
        }
    }
}

/// What the host offers, as read from the system.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HostProbe {
    /// `/dev/kvm` could be opened read-write.
    pub kvm_device_usable: bool,
    /// The CPU advertises `vmx` or `svm`.
    pub cpu_has_virt: bool,
    /// `/sys/module/kvm_pvm` exists: KVM here is PVM.
    pub kvm_is_pvm: bool,
    /// The host is macOS.
    pub macos: bool,
}

impl HostProbe {
    /// Reads the facts from the running system.
    pub fn read() -> HostProbe {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_has_virt = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        HostProbe {
            kvm_device_usable: OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .is_ok(),
            cpu_has_virt,
            kvm_is_pvm: Path::new("/sys/module/kvm_pvm").exists(),
            macos: cfg!(target_os = "macos"),
        }
    }
}

/// The accelerator chosen and why, for `aegis doctor` and `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AcceleratorChoice {
    /// The accelerator VMs will use.
    pub accelerator: Accelerator,
    /// One sentence explaining the choice.
    pub reason: String,
}

impl AcceleratorChoice {
    /// Chooses from the environment override and the host facts.
    ///
    /// # Errors
    /// When `AEGIS_ACCEL` holds an unknown value.
    pub fn detect() -> Result<AcceleratorChoice, UnknownAccelerator> {
        let forced = match std::env::var(ACCEL_ENV) {
            Ok(v) if !v.trim().is_empty() => Some(v.parse::<Accelerator>()?),
            _ => None,
        };
        Ok(Self::choose(forced, &HostProbe::read()))
    }

    /// The pure decision, separated from probing so it can be tested for every case.
    pub fn choose(forced: Option<Accelerator>, host: &HostProbe) -> AcceleratorChoice {
        if let Some(accelerator) = forced {
            return AcceleratorChoice {
                accelerator,
                reason: format!("forced by {ACCEL_ENV}={accelerator}"),
            };
        }
        let (accelerator, reason) = if host.macos {
            (
                Accelerator::Hvf,
                "macOS host: Hypervisor.framework".to_owned(),
            )
        } else if host.kvm_device_usable && host.cpu_has_virt {
            (
                Accelerator::Kvm,
                "/dev/kvm is usable and the CPU has hardware virtualisation".to_owned(),
            )
        } else if host.kvm_is_pvm {
            (
                Accelerator::Tcg,
                "KVM on this host is PVM (/sys/module/kvm_pvm, no vmx/svm): it cannot boot a stock \
                 guest kernel, so software emulation (TCG) is used"
                    .to_owned(),
            )
        } else if !host.kvm_device_usable {
            (
                Accelerator::Tcg,
                "/dev/kvm is missing or not accessible: software emulation (TCG) is used; add \
                 your user to the kvm group for hardware acceleration"
                    .to_owned(),
            )
        } else {
            (
                Accelerator::Tcg,
                "the CPU does not advertise vmx/svm: software emulation (TCG) is used".to_owned(),
            )
        };
        AcceleratorChoice {
            accelerator,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chooses_per_host() {
        let rows = [
            (
                None,
                HostProbe {
                    kvm_device_usable: true,
                    cpu_has_virt: true,
                    ..Default::default()
                },
                Accelerator::Kvm,
            ),
            (
                None,
                HostProbe {
                    kvm_device_usable: true,
                    kvm_is_pvm: true,
                    ..Default::default()
                },
                Accelerator::Tcg,
            ),
            (None, HostProbe::default(), Accelerator::Tcg),
            (
                None,
                HostProbe {
                    kvm_device_usable: true,
                    ..Default::default()
                },
                Accelerator::Tcg,
            ),
            (
                None,
                HostProbe {
                    macos: true,
                    ..Default::default()
                },
                Accelerator::Hvf,
            ),
            (
                Some(Accelerator::Kvm),
                HostProbe::default(),
                Accelerator::Kvm,
            ),
        ];
        for (forced, host, want) in rows {
            assert_eq!(
                AcceleratorChoice::choose(forced, &host).accelerator,
                want,
                "{host:?}"
            );
        }
        let pvm = HostProbe {
            kvm_device_usable: true,
            kvm_is_pvm: true,
            ..Default::default()
        };
        assert!(AcceleratorChoice::choose(None, &pvm).reason.contains("PVM"));
    }

    #[test]
    fn parses_override() {
        assert_eq!("KVM".parse::<Accelerator>(), Ok(Accelerator::Kvm));
        assert!("xen".parse::<Accelerator>().is_err());
    }
}
