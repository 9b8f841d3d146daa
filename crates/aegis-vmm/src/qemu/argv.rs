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
    /// Socket a snapshot's state passes through (QEMU migration over a unix socket).
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

/// The full argument list (without the program name).
pub fn build(spec: &VmSpec, files: &RunFiles) -> Vec<OsString> {
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
        // QEMU parses everything the guest sends; if the guest breaks it, the seccomp filter
        // keeps it from starting programs, gaining privileges or changing its own limits.
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    ]);
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
    for (i, disk) in std::iter::once(&spec.root_disk)
        .chain(&spec.extra_disks)
        .enumerate()
    {
        let format = if disk.path.extension().is_some_and(|e| e == "qcow2") {
            "qcow2"
        } else {
            "raw"
        };
        let ro = if disk.read_only { ",read-only=on" } else { "" };
        path_arg(
            &mut args,
            "-drive",
            "file=",
            &disk.path,
            &format!(",if=none,id=disk{i},format={format},cache=writeback,discard=unmap{ro}"),
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
        let args: Vec<String> = build(&spec, &RunFiles::new(&spec.run_dir))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("-accel tcg -cpu max -m 256 -smp 2"));
        assert!(joined.contains("-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny"));
        assert!(joined.contains("user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:4000-:80"));
        assert!(joined.contains("virtserialport,chardev=control,name=org.aegis.control"));
        assert!(joined.contains("file=/d/root.qcow2,if=none,id=disk0,format=qcow2"));
        assert!(joined.contains("-qmp unix:/run/vm/qmp.sock,server=on,wait=off"));
        let cmdline = &args[args.iter().position(|a| a == "-append").unwrap() + 1];
        assert!(cmdline.contains("aegis.hostname=web"));
        assert!(cmdline.contains("aegis.ip=10.0.2.15/24"));
        assert!(cmdline.contains("aegis.workspace=virtiofs:workspace"));
        assert!(joined.contains("memory-backend-memfd,id=mem,size=256M,share=on"));
        assert!(joined.contains("-chardev socket,id=fs0,path=/run/vm/virtiofs-0.sock"));
        assert!(joined.contains("vhost-user-fs-pci,chardev=fs0,tag=workspace"));
    }
}
