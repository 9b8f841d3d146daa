//! The QEMU command line for a [`VmSpec`]: q35 with virtio-pci devices, the kernel booted directly
//! with the harness's options on its command line, user-mode networking, QMP and the control port
//! on unix sockets in the VM's run directory.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use aegis_proto::control::CONTROL_PORT_NAME;

use super::virtiofs;
use crate::accel::Accelerator;
use crate::vmm::{PortForward, VmSpec};

/// Guest address, gateway and DNS server of QEMU's user-mode network.
pub const GUEST_IP: &str = "10.0.2.15/24";
/// Gateway of QEMU's user-mode network.
pub const GUEST_GATEWAY: &str = "10.0.2.2";
/// DNS forwarder of QEMU's user-mode network.
pub const GUEST_DNS: &str = "10.0.2.3";
/// QEMU id of the user-mode network backend, used by `hostfwd_add`.
pub const NETDEV_ID: &str = "net0";

/// Runtime files inside a VM's run directory.
#[derive(Debug, Clone)]
pub struct RunFiles {
    /// QMP socket.
    pub qmp: PathBuf,
    /// Chardev socket behind the `org.aegis.control` port.
    pub control: PathBuf,
    /// Guest serial console.
    pub console: PathBuf,
    /// QEMU's own stdout/stderr.
    pub qemu_log: PathBuf,
    /// QEMU's pid file.
    pub pid: PathBuf,
    /// Socket QEMU listens on for a snapshot's state when it restores one (`-incoming`).
    pub migration: PathBuf,
}

impl RunFiles {
    /// The files of `run_dir`.
    pub fn new(run_dir: &Path) -> RunFiles {
        RunFiles {
            qmp: run_dir.join("qmp.sock"),
            control: run_dir.join("control.sock"),
            console: run_dir.join("console.log"),
            qemu_log: run_dir.join("qemu.log"),
            pid: run_dir.join("qemu.pid"),
            migration: run_dir.join("migration.sock"),
        }
    }
}

/// The kernel command line: console on the first serial port, panics end the VM (QEMU runs
/// with `-no-reboot`), and the harness's `aegis.*` options.
pub fn kernel_cmdline(spec: &VmSpec) -> String {
    let mut parts = vec![
        "console=ttyS0".to_owned(),
        "loglevel=4".to_owned(),
        "panic=-1".to_owned(),
        "reboot=t".to_owned(),
        "i8042.noaux".to_owned(),
        "i8042.nomux".to_owned(),
        "i8042.nopnp".to_owned(),
        "aegis.root=/dev/vda".to_owned(),
        format!("aegis.hostname={}", spec.hostname),
        format!("aegis.ip={GUEST_IP}"),
        format!("aegis.gw={GUEST_GATEWAY}"),
        format!("aegis.dns={GUEST_DNS}"),
    ];
    parts.extend(spec.harness_options.iter().cloned());
    if spec.accelerator == Accelerator::Tcg {
        // Skips the TSC calibration loop, which is slow and unreliable under emulation.
        parts.push("tsc=reliable".to_owned());
    }
    parts.join(" ")
}

/// Formats a forward the way `-netdev user,hostfwd=` and `hostfwd_add` expect.
pub fn hostfwd(forward: PortForward) -> String {
    format!(
        "tcp:127.0.0.1:{}-:{}",
        forward.host_port, forward.guest_port
    )
}

/// Who QEMU runs as once it has opened its files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Confinement {
    /// The unprivileged user QEMU switches to after opening its disks, sockets and logs and
    /// before the guest runs; `None` keeps the daemon's user.
    pub user: Option<String>,
    /// QEMU 9.1 and later spell the switch `-run-with user=`, earlier ones `-runas`.
    pub run_with: bool,
}

/// The root disk, then the extra disks, in the order the guest sees them.
pub fn disks(spec: &VmSpec) -> impl Iterator<Item = &crate::vmm::DiskSpec> {
    std::iter::once(&spec.root_disk).chain(&spec.extra_disks)
}

/// A disk file the daemon opens and QEMU inherits as `child_fd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskFd {
    /// Index into [`disks`].
    pub disk: usize,
    /// Opened for writing (else read-only).
    pub writable: bool,
    /// Its number in QEMU.
    pub child_fd: i32,
}

/// The descriptors QEMU gets for its disks, in `-add-fd` fd sets, instead of paths. QEMU opens
/// a disk again whenever the access it needs changes (read-only when a snapshot finishes,
/// read-write when a restored guest resumes), and a QEMU running as another user cannot open
/// the daemon's files: from an fd set it takes a copy of a descriptor with the access asked
/// for. A writable disk gets one of each kind, a read-only one a read-only one.
pub fn disk_fds(spec: &VmSpec) -> Vec<DiskFd> {
    let mut fds = Vec::new();
    let mut next = 3;
    for (disk, spec) in disks(spec).enumerate() {
        for writable in [true, false] {
            if writable && spec.read_only {
                continue;
            }
            fds.push(DiskFd {
                disk,
                writable,
                child_fd: next,
            });
            next += 1;
        }
    }
    fds
}

/// The full argument list (without the program name).
pub fn build(spec: &VmSpec, files: &RunFiles, confinement: &Confinement) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
    let cpu = match spec.accelerator {
        Accelerator::Kvm | Accelerator::Hvf => "host",
        Accelerator::Tcg => "max",
    };
    let memory = spec.memory_mib.to_string();
    let vcpus = spec.vcpus.to_string();
    push(&[
        "-M",
        "q35",
        "-accel",
        spec.accelerator.as_str(),
        "-cpu",
        cpu,
        "-m",
        &memory,
        "-smp",
        &vcpus,
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
    ]);
    // QEMU parses everything the guest sends; if the guest breaks it, the seccomp filter keeps
    // it from starting programs or changing its own limits, and a QEMU of another user from
    // reaching the daemon's files. The switch of user is QEMU's own set*id calls, made after
    // the filter is in place, so those must stay allowed; once made, QEMU has no privilege
    // left to raise.
    args.push("-sandbox".into());
    match &confinement.user {
        Some(user) => {
            args.push(
                "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny".into(),
            );
            if confinement.run_with {
                args.push("-run-with".into());
                args.push(format!("user={user}").into());
            } else {
                args.push("-runas".into());
                args.push(user.into());
            }
        }
        None => args
            .push("on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into()),
    }
    path_arg(&mut args, "-kernel", "", &spec.kernel.image, "");
    path_arg(&mut args, "-initrd", "", &spec.initramfs, "");
    // Appending, so the console can be cut while QEMU writes it (see `bounded`).
    path_arg(
        &mut args,
        "-chardev",
        "file,id=console,append=on,path=",
        &files.console,
        "",
    );
    args.extend(["-serial".into(), "chardev:console".into()]);
    path_arg(
        &mut args,
        "-qmp",
        "unix:",
        &files.qmp,
        ",server=on,wait=off",
    );
    path_arg(&mut args, "-pidfile", "", &files.pid, "");
    for (i, disk) in disks(spec).enumerate() {
        let format = if disk.path.extension().is_some_and(|e| e == "qcow2") {
            "qcow2"
        } else {
            "raw"
        };
        let ro = if disk.read_only { ",read-only=on" } else { "" };
        let set = i + 1;
        for fd in disk_fds(spec).into_iter().filter(|fd| fd.disk == i) {
            args.push("-add-fd".into());
            args.push(format!("fd={},set={set}", fd.child_fd).into());
        }
        args.push("-drive".into());
        args.push(
            format!(
                "file=/dev/fdset/{set},if=none,id=disk{i},format={format},cache=writeback,discard=unmap{ro}"
            )
            .into(),
        );
        args.push("-device".into());
        args.push(format!("virtio-blk-pci,drive=disk{i}").into());
    }
    if !spec.shares.is_empty() {
        // vhost-user devices need guest memory the backend process can map.
        args.push("-object".into());
        args.push(format!("memory-backend-memfd,id=mem,size={memory}M,share=on").into());
        args.push("-numa".into());
        args.push("node,memdev=mem".into());
    }
    for (i, share) in spec.shares.iter().enumerate() {
        path_arg(
            &mut args,
            "-chardev",
            &format!("socket,id=fs{i},path="),
            &virtiofs::socket_path(&spec.run_dir, i),
            "",
        );
        args.push("-device".into());
        args.push(format!("vhost-user-fs-pci,chardev=fs{i},tag={}", share.tag).into());
    }
    let mut netdev = format!("user,id={NETDEV_ID}");
    if !spec.network.egress {
        netdev.push_str(",restrict=on");
    }
    for forward in &spec.network.forwards {
        netdev.push_str(",hostfwd=");
        netdev.push_str(&hostfwd(*forward));
    }
    args.push("-netdev".into());
    args.push(netdev.into());
    args.push("-device".into());
    args.push(format!("virtio-net-pci,netdev={NETDEV_ID}").into());
    args.push("-device".into());
    args.push("virtio-rng-pci".into());
    args.push("-device".into());
    args.push("virtio-serial-pci".into());
    // The chardev is a server socket so the daemon can reconnect after a restart; `wait=off`
    // lets the VM boot before anyone connects.
    let mut chardev = OsString::from("socket,id=control,path=");
    chardev.push(files.control.as_os_str());
    chardev.push(",server=on,wait=off");
    args.push("-chardev".into());
    args.push(chardev);
    args.push("-device".into());
    args.push(format!("virtserialport,chardev=control,name={CONTROL_PORT_NAME}").into());
    args.push("-append".into());
    args.push(kernel_cmdline(spec).into());
    args
}

/// The arguments that make QEMU wait for a snapshot's state on the unix socket `socket` (it
/// listens there) instead of booting.
pub fn incoming(socket: &Path) -> [OsString; 2] {
    let mut uri = OsString::from("unix:");
    uri.push(socket.as_os_str());
    [OsString::from("-incoming"), uri]
}

fn path_arg(args: &mut Vec<OsString>, flag: &str, prefix: &str, path: &Path, suffix: &str) {
    args.push(OsString::from(flag));
    let mut value = OsString::from(prefix);
    value.push(path.as_os_str());
    value.push(suffix);
    args.push(value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::GuestKernel;
    use crate::vmm::{DiskSpec, NetworkSpec};

    fn spec() -> VmSpec {
        VmSpec {
            run_dir: "/run/vm".into(),
            kernel: GuestKernel {
                image: "/k/vmlinuz".into(),
                modules_dir: None,
            },
            initramfs: "/k/initrd".into(),
            root_disk: DiskSpec {
                path: "/d/root.qcow2".into(),
                read_only: false,
            },
            extra_disks: vec![],
            shares: vec![crate::vmm::ShareSpec {
                tag: "workspace".into(),
                host_dir: "/srv/ws".into(),
                read_only: false,
            }],
            harness_options: vec!["aegis.workspace=virtiofs:workspace".into()],
            memory_mib: 256,
            vcpus: 2,
            hostname: "web".into(),
            network: NetworkSpec {
                egress: false,
                forwards: vec![PortForward {
                    host_port: 4000,
                    guest_port: 80,
                }],
            },
            accelerator: Accelerator::Tcg,
        }
    }

    #[test]
    fn argv_has_devices_sockets_and_cmdline() {
        let spec = spec();
        let args = strings(build(
            &spec,
            &RunFiles::new(&spec.run_dir),
            &Confinement::default(),
        ));
        let joined = args.join(" ");
        assert!(joined.contains("-accel tcg -cpu max -m 256 -smp 2"));
        assert!(joined.contains("-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny"));
        assert!(joined.contains("user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:4000-:80"));
        assert!(joined.contains("virtserialport,chardev=control,name=org.aegis.control"));
        assert!(joined.contains("-add-fd fd=3,set=1 -add-fd fd=4,set=1 -drive file=/dev/fdset/1,if=none,id=disk0,format=qcow2"));
        assert!(joined.contains("-qmp unix:/run/vm/qmp.sock,server=on,wait=off"));
        let cmdline = &args[args.iter().position(|a| a == "-append").unwrap() + 1];
        assert!(cmdline.contains("aegis.hostname=web"));
        assert!(cmdline.contains("aegis.ip=10.0.2.15/24"));
        assert!(cmdline.contains("aegis.workspace=virtiofs:workspace"));
        assert!(joined.contains("memory-backend-memfd,id=mem,size=256M,share=on"));
        assert!(joined.contains("-chardev socket,id=fs0,path=/run/vm/virtiofs-0.sock"));
        assert!(joined.contains("vhost-user-fs-pci,chardev=fs0,tag=workspace"));
    }

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn a_confined_qemu_switches_user_in_the_spelling_of_its_version() {
        let spec = spec();
        let files = RunFiles::new(&spec.run_dir);
        let mut confinement = Confinement {
            user: Some("aegis-vm".into()),
            run_with: false,
        };
        let old = strings(build(&spec, &files, &confinement)).join(" ");
        assert!(old.contains("elevateprivileges=allow,spawn=deny"));
        assert!(old.contains("-runas aegis-vm"));
        confinement.run_with = true;
        let new = strings(build(&spec, &files, &confinement)).join(" ");
        assert!(new.contains("-run-with user=aegis-vm"));
        assert!(!new.contains("-runas"));
    }
}
