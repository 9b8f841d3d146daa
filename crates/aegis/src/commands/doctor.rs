//! `aegis doctor`: checks what Aegis needs on this machine, one line per check, each failing line
//! saying how to fix it. Works without the daemon.

use std::io::Write;
use std::path::{Path, PathBuf};

use aegis_vmm::accel::{Accelerator, AcceleratorChoice, HostProbe, ACCEL_ENV};
use aegis_vmm::boot::GuestKernel;

use crate::exit::Exit;
use crate::locate;
use crate::term::{Paint, Term};
use crate::Ctx;

/// Below this much free space under `AEGIS_HOME`, images and instance disks may not fit.
pub const LOW_DISK_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// `aegis doctor`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    /// Works, but worse than it could (exit code stays 0).
    Warn,
    /// Aegis cannot work until this is fixed (exit code 1).
    Fail,
}

#[derive(Debug)]
struct Check {
    name: &'static str,
    verdict: Verdict,
    detail: String,
    fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            verdict: Verdict::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn bad(
        name: &'static str,
        verdict: Verdict,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name,
            verdict,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn render(&self, term: Term) -> String {
        let (mark, paint) = match (self.verdict, term.out_tty) {
            (Verdict::Ok, true) => ("✓", Paint::Green),
            (Verdict::Warn, true) => ("!", Paint::Yellow),
            (Verdict::Fail, true) => ("✗", Paint::Red),
            (Verdict::Ok, false) => ("ok  ", Paint::Green),
            (Verdict::Warn, false) => ("warn", Paint::Yellow),
            (Verdict::Fail, false) => ("FAIL", Paint::Red),
        };
        let mut line = format!("{} {}: {}", term.out(paint, mark), self.name, self.detail);
        if let Some(fix) = &self.fix {
            line.push_str(&format!("; fix: {fix}"));
        }
        line
    }
}

/// Runs `aegis doctor`.
pub async fn run(_args: Args, ctx: &Ctx) -> anyhow::Result<Exit> {
    let checks = vec![
        accelerator(),
        qemu(),
        tool("qemu-img", "apt-get install qemu-utils"),
        tool("mke2fs", "apt-get install e2fsprogs"),
        tool("debugfs", "apt-get install e2fsprogs"),
        virtiofsd(),
        kernel(&ctx.home),
        daemon_binary(),
        harness(),
        default_image(&ctx.home),
        daemon(ctx).await,
        disk(&ctx.home),
    ];
    let mut out = std::io::stdout().lock();
    for check in &checks {
        writeln!(out, "{}", check.render(ctx.term))?;
    }
    if checks.iter().any(|c| c.verdict == Verdict::Fail) {
        Ok(Exit::ChecksFailed)
    } else {
        Ok(Exit::Success)
    }
}

fn accelerator() -> Check {
    const NAME: &str = "accelerator";
    let choice = match AcceleratorChoice::detect() {
        Ok(choice) => choice,
        Err(e) => {
            return Check::bad(
                NAME,
                Verdict::Fail,
                format!("{ACCEL_ENV}: {e}"),
                format!("set {ACCEL_ENV} to kvm, hvf or tcg, or unset it"),
            )
        }
    };
    let host = HostProbe::read();
    let detail = format!("{} ({})", choice.accelerator, choice.reason);
    match choice.accelerator {
        Accelerator::Kvm if !(host.kvm_device_usable && host.cpu_has_virt) => {
            let why = if host.kvm_is_pvm {
                "KVM on this host is PVM and cannot boot a stock guest kernel"
            } else if !host.kvm_device_usable {
                "/dev/kvm is missing or not accessible"
            } else {
                "the CPU does not advertise vmx/svm"
            };
            Check::bad(
                NAME,
                Verdict::Fail,
                format!("kvm is forced but {why}"),
                format!("unset {ACCEL_ENV} (Aegis then picks tcg here)"),
            )
        }
        Accelerator::Tcg
            if host.cpu_has_virt && !host.kvm_device_usable && !host.kvm_is_pvm && !host.macos =>
        {
            Check::bad(
                NAME,
                Verdict::Warn,
                detail,
                "give your user read-write access to /dev/kvm (e.g. add it to the kvm group) for \
                 hardware speed",
            )
        }
        Accelerator::Tcg => Check::ok(
            NAME,
            format!("{detail}; guest code runs 10-50x slower than with hardware acceleration"),
        ),
        Accelerator::Kvm | Accelerator::Hvf => Check::ok(NAME, detail),
    }
}

fn qemu() -> Check {
    let program = aegis_vmm::qemu::default_program();
    match aegis_vmm::qemu::find_program(&program) {
        Some(path) => Check::ok("qemu", path.display().to_string()),
        None => {
            let package = if cfg!(target_os = "macos") {
                "brew install qemu"
            } else if cfg!(target_arch = "aarch64") {
                "apt-get install qemu-system-arm"
            } else {
                "apt-get install qemu-system-x86"
            };
            Check::bad(
                "qemu",
                Verdict::Fail,
                format!("{program} not found"),
                format!(
                    "{package}, or point {} at a QEMU binary",
                    aegis_vmm::qemu::QEMU_ENV
                ),
            )
        }
    }
}

/// A helper program, looked for in `PATH` and in the sbin directories a normal user's `PATH`
/// often lacks (Debian installs e2fsprogs there).
fn tool(name: &'static str, fix: &str) -> Check {
    let found = locate::in_path(name).or_else(|| {
        ["/usr/sbin", "/sbin", "/usr/local/sbin"]
            .iter()
            .map(|dir| Path::new(dir).join(name))
            .find(|p| p.is_file())
    });
    match found {
        Some(path) => Check::ok(name, path.display().to_string()),
        None => Check::bad(name, Verdict::Fail, "not found", fix),
    }
}

/// Host-directory and named directory workspaces cannot start without it, so its absence
/// fails like QEMU's: a set-up that lacks it is incomplete.
fn virtiofsd() -> Check {
    match aegis_vmm::qemu::virtiofs::find() {
        Some(path) => Check::ok("virtiofsd", path.display().to_string()),
        None => Check::bad(
            "virtiofsd",
            Verdict::Fail,
            "not found (host-directory and named workspaces need it)",
            format!(
                "run `./setup.sh` (it builds virtiofsd from crates.io), or point {} at it",
                aegis_vmm::qemu::virtiofs::VIRTIOFSD_ENV
            ),
        ),
    }
}

fn kernel(home: &Path) -> Check {
    match GuestKernel::locate(&home.join("kernel")) {
        Ok(kernel) => Check::ok(
            "guest kernel",
            match &kernel.modules_dir {
                Some(dir) => format!("{} (modules in {})", kernel.image.display(), dir.display()),
                None => kernel.image.display().to_string(),
            },
        ),
        Err(e) => Check::bad("guest kernel", Verdict::Fail, e.to_string(), e.hint()),
    }
}

fn daemon_binary() -> Check {
    match locate::aegisd() {
        Some(path) if path.is_file() => Check::ok("aegisd", path.display().to_string()),
        Some(path) => Check::bad(
            "aegisd",
            Verdict::Fail,
            format!("{} does not exist", path.display()),
            format!("run `scripts/build.sh`, or fix {}", locate::DAEMON_ENV),
        ),
        None => Check::bad(
            "aegisd",
            Verdict::Fail,
            "not found next to aegis or in PATH",
            "run `scripts/build.sh` (or `./setup.sh`, which also links it into PATH)",
        ),
    }
}

fn harness() -> Check {
    const FIX: &str = "run `scripts/build.sh` (it builds the static harness next to aegisd), or \
                       point AEGIS_HARNESS at it";
    match locate::harness() {
        Some(path) if path.is_file() => Check::ok("guest harness", path.display().to_string()),
        Some(path) => Check::bad(
            "guest harness",
            Verdict::Fail,
            format!("no harness at {}", path.display()),
            FIX,
        ),
        None => Check::bad(
            "guest harness",
            Verdict::Fail,
            "not looked for: aegisd was not found, and the harness belongs next to it",
            FIX,
        ),
    }
}

/// The daemon has no image route yet, so this only checks that the set-up step filled the image
/// store.
fn default_image(home: &Path) -> Check {
    let dir: PathBuf = home.join("images");
    let filled = std::fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_some());
    if filled {
        Check::ok("default image", format!("image store {}", dir.display()))
    } else {
        Check::bad(
            "default image",
            Verdict::Fail,
            format!("no image store at {}", dir.display()),
            "run `./setup.sh` (it builds the default image)",
        )
    }
}

async fn daemon(ctx: &Ctx) -> Check {
    let socket = ctx.client.socket().display().to_string();
    match ctx.client.status().await {
        Ok(status) => Check::ok(
            "daemon",
            format!(
                "aegisd {} (pid {}) answers on {socket}",
                status.version, status.pid
            ),
        ),
        Err(e) if e.is_not_running() => Check::bad(
            "daemon",
            Verdict::Warn,
            format!("aegisd is not running (nothing answers on {socket})"),
            "run `aegis up`",
        ),
        Err(e) => {
            let hint = e
                .hint()
                .unwrap_or_else(|| "see aegisd.log in AEGIS_HOME".to_owned());
            Check::bad("daemon", Verdict::Fail, error_chain(&e), hint)
        }
    }
}

fn disk(home: &Path) -> Check {
    // AEGIS_HOME may not exist yet: measure the file system it will be created on.
    let dir = home
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    match nix::sys::statvfs::statvfs(dir) {
        Ok(stat) => {
            // The field types differ between platforms (u32 or u64); the conversion is a no-op
            // on Linux.
            #[allow(clippy::useless_conversion)]
            let free = u64::from(stat.blocks_available()) * u64::from(stat.fragment_size());
            let shown = format!("{} free under {}", gib(free), dir.display());
            if free < LOW_DISK_BYTES {
                Check::bad(
                    "disk space",
                    Verdict::Warn,
                    format!("only {shown}"),
                    format!(
                        "free space there or set AEGIS_HOME elsewhere; images and instance disks \
                         need at least {}",
                        gib(LOW_DISK_BYTES)
                    ),
                )
            } else {
                Check::ok("disk space", shown)
            }
        }
        Err(e) => Check::bad(
            "disk space",
            Verdict::Warn,
            format!("cannot measure free space under {}: {e}", dir.display()),
            "check that AEGIS_HOME is readable",
        ),
    }
}

fn gib(bytes: u64) -> String {
    // Display only: losing precision above 2^52 bytes does not matter.
    #[allow(clippy::cast_precision_loss)]
    let gib = bytes as f64 / (1024.0 * 1024.0 * 1024.0);
    format!("{gib:.1} GiB")
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_the_fix() {
        let plain = Term {
            out_colour: false,
            err_colour: false,
            out_tty: false,
        };
        let tty = Term {
            out_tty: true,
            ..plain
        };
        let bad = Check::bad("qemu", Verdict::Fail, "not found", "apt-get install qemu");
        assert_eq!(
            bad.render(plain),
            "FAIL qemu: not found; fix: apt-get install qemu"
        );
        assert_eq!(
            bad.render(tty),
            "✗ qemu: not found; fix: apt-get install qemu"
        );
        assert_eq!(
            Check::ok("mke2fs", "/sbin/mke2fs").render(plain),
            "ok   mke2fs: /sbin/mke2fs"
        );
        assert_eq!(gib(LOW_DISK_BYTES), "2.0 GiB");
    }
}
