//! Guest networking and identity: `lo` and `eth0` up, the default route, `/etc/resolv.conf`,
//! the hostname, `/etc/hostname` and `/etc/hosts`.
//!
//! Interfaces are configured with the classic `SIOCSIF*` / `SIOCADDRT` ioctls, which need no
//! netlink code and cover a static IPv4 setup (QEMU user-mode networking hands out fixed
//! addresses). Every step is independent: a failure is returned for the boot log and the other
//! steps still run, since a guest without network can still run most workloads.

use std::ffi::{c_char, c_int, c_short, CString};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use crate::config::{Config, NetConfig};
use crate::wait;

/// The interface QEMU's first virtio-net device becomes.
pub const ETH0: &str = "eth0";
/// The loopback interface.
pub const LO: &str = "lo";

/// How long to wait for `eth0` after `virtio_net` loaded; the probe is asynchronous.
pub const INTERFACE_TIMEOUT: Duration = Duration::from_secs(10);
/// Poll interval while waiting for the interface.
pub const INTERFACE_POLL: Duration = Duration::from_millis(20);

/// Files written in the (new) root.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// The hostname file.
pub const HOSTNAME_FILE: &str = "/etc/hostname";
/// The static host table.
pub const HOSTS_FILE: &str = "/etc/hosts";

/// `AF_INET` as the `sa_family_t` socket addresses carry.
const AF_INET_FAMILY: libc::sa_family_t = 2;
const _: () = assert!(AF_INET_FAMILY as c_int == libc::AF_INET);

/// `IFF_UP | IFF_RUNNING` as the `short` that `ifr_flags` holds.
const IFF_UP_RUNNING: c_short = 0x41;
const _: () = assert!(IFF_UP_RUNNING as c_int == libc::IFF_UP | libc::IFF_RUNNING);

/// One failed networking step.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The control socket for ioctls could not be created.
    #[error("cannot create a socket for interface configuration")]
    Socket(#[source] io::Error),
    /// The interface never appeared.
    #[error("interface {interface} did not appear within {} s (is virtio_net in the module list?)", .waited.as_secs())]
    InterfaceTimeout {
        /// The interface.
        interface: &'static str,
        /// How long we waited.
        waited: Duration,
    },
    /// An interface ioctl failed.
    #[error("cannot {action} on {interface}")]
    Interface {
        /// What was being done.
        action: &'static str,
        /// The interface.
        interface: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The default route could not be added.
    #[error("cannot add default route via {gateway}")]
    Route {
        /// The gateway.
        gateway: Ipv4Addr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// sethostname failed.
    #[error("cannot set hostname {hostname:?}")]
    Hostname {
        /// The name.
        hostname: String,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// A configuration file could not be written.
    #[error("cannot write {path}")]
    WriteFile {
        /// The file.
        path: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// What [`setup`] did, for the boot log.
#[derive(Debug, Default)]
pub struct NetReport {
    /// `eth0` was configured with this.
    pub eth0: Option<NetConfig>,
    /// Steps that failed.
    pub errors: Vec<NetError>,
}

/// Runs every networking step; failures are collected, not fatal.
pub fn setup(config: &Config) -> NetReport {
    let mut report = NetReport::default();
    let mut record = |result: Result<(), NetError>| {
        if let Err(e) = result {
            report.errors.push(e);
        }
    };
    match IfSocket::open() {
        Ok(socket) => {
            record(socket.set_up(LO));
            if let Some(net) = config.network {
                let configured = configure_eth0(&socket, &net);
                if configured.is_ok() {
                    report.eth0 = Some(net);
                }
                record(configured);
            }
        }
        Err(e) => record(Err(e)),
    }
    if let Some(dns) = config.dns {
        record(write_resolv_conf(dns));
    }
    record(set_hostname(&config.hostname));
    report
}

fn configure_eth0(socket: &IfSocket, net: &NetConfig) -> Result<(), NetError> {
    let sys_path = Path::new("/sys/class/net").join(ETH0);
    if !wait::wait_for_path(&sys_path, INTERFACE_TIMEOUT, INTERFACE_POLL) {
        return Err(NetError::InterfaceTimeout {
            interface: ETH0,
            waited: INTERFACE_TIMEOUT,
        });
    }
    let netmask = net.netmask();
    let broadcast = Ipv4Addr::from(u32::from(net.address) | !u32::from(netmask));
    socket.set_addr(ETH0, libc::SIOCSIFADDR, "set the address", net.address)?;
    socket.set_addr(ETH0, libc::SIOCSIFNETMASK, "set the netmask", netmask)?;
    socket.set_addr(
        ETH0,
        libc::SIOCSIFBRDADDR,
        "set the broadcast address",
        broadcast,
    )?;
    socket.set_up(ETH0)?;
    if let Some(gateway) = net.gateway {
        socket.add_default_route(ETH0, gateway)?;
    }
    Ok(())
}

/// An `AF_INET` datagram socket, the handle the interface ioctls operate through.
#[derive(Debug)]
struct IfSocket(OwnedFd);

impl IfSocket {
    fn open() -> Result<IfSocket, NetError> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(NetError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        Ok(IfSocket(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ioctl<T>(&self, request: libc::c_ulong, arg: &mut T) -> io::Result<()> {
        // SAFETY: every request used here (SIOC[GS]IF*, SIOCADDRT) takes a pointer to the
        // struct type the caller passes (ifreq or rtentry), which lives for the whole call.
        let rc = unsafe { libc::ioctl(self.0.as_raw_fd(), request, arg as *mut T) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn set_addr(
        &self,
        interface: &'static str,
        request: libc::c_ulong,
        action: &'static str,
        addr: Ipv4Addr,
    ) -> Result<(), NetError> {
        let mut req = ifreq(interface);
        req.ifr_ifru.ifru_addr = sockaddr(addr);
        self.ioctl(request, &mut req)
            .map_err(|source| NetError::Interface {
                action,
                interface,
                source,
            })
    }

    fn set_up(&self, interface: &'static str) -> Result<(), NetError> {
        let mut req = ifreq(interface);
        let err = |action| {
            move |source| NetError::Interface {
                action,
                interface,
                source,
            }
        };
        self.ioctl(libc::SIOCGIFFLAGS, &mut req)
            .map_err(err("read the flags"))?;
        // SAFETY: SIOCGIFFLAGS filled the `ifru_flags` member of the union.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        req.ifr_ifru.ifru_flags = flags | IFF_UP_RUNNING;
        self.ioctl(libc::SIOCSIFFLAGS, &mut req)
            .map_err(err("bring the link up"))
    }

    fn add_default_route(
        &self,
        interface: &'static str,
        gateway: Ipv4Addr,
    ) -> Result<(), NetError> {
        let device = CString::new(interface).map_err(|e| NetError::Route {
            gateway,
            source: io::Error::new(io::ErrorKind::InvalidInput, e),
        })?;
        // SAFETY: rtentry is plain data for which all-zero bytes are a valid value.
        let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
        route.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
        route.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
        route.rt_gateway = sockaddr(gateway);
        route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        // The kernel only reads the name; `device` outlives the ioctl.
        route.rt_dev = device.as_ptr().cast_mut();
        match self.ioctl(libc::SIOCADDRT, &mut route) {
            // Already there (the harness configured it before): the state we want.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other.map_err(|source| NetError::Route { gateway, source }),
        }
    }
}

fn ifreq(interface: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data (a name array and a union of plain members); all-zero bytes
    // are a valid value and leave the name NUL-terminated.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // Interface names here are constants shorter than IFNAMSIZ; the last byte stays NUL.
    for (dst, src) in req
        .ifr_name
        .iter_mut()
        .take(libc::IFNAMSIZ - 1)
        .zip(interface.bytes())
    {
        *dst = src as c_char;
    }
    req
}

fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: AF_INET_FAMILY,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16-byte plain-data structs; the kernel reads a
    // sockaddr whose family says it is a sockaddr_in, which is how the C API is meant to be used.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Writes `nameserver <dns>`. A dangling symlink (images often point it at a resolver's file
/// under `/run`, which is a fresh tmpfs here) is replaced with a regular file.
fn write_resolv_conf(dns: IpAddr) -> Result<(), NetError> {
    let error = |source| NetError::WriteFile {
        path: RESOLV_CONF,
        source,
    };
    replace_dangling_symlink(Path::new(RESOLV_CONF)).map_err(error)?;
    std::fs::write(RESOLV_CONF, format!("nameserver {dns}\n")).map_err(error)
}

fn set_hostname(hostname: &str) -> Result<(), NetError> {
    nix::unistd::sethostname(hostname).map_err(|source| NetError::Hostname {
        hostname: hostname.to_owned(),
        source,
    })?;
    std::fs::write(HOSTNAME_FILE, format!("{hostname}\n")).map_err(|source| {
        NetError::WriteFile {
            path: HOSTNAME_FILE,
            source,
        }
    })?;
    let hosts_error = |source| NetError::WriteFile {
        path: HOSTS_FILE,
        source,
    };
    replace_dangling_symlink(Path::new(HOSTS_FILE)).map_err(hosts_error)?;
    let existing = match std::fs::read_to_string(HOSTS_FILE) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(hosts_error(e)),
    };
    if let Some(updated) = hosts_with(existing.as_deref(), hostname) {
        std::fs::write(HOSTS_FILE, updated).map_err(hosts_error)?;
    }
    Ok(())
}

fn replace_dangling_symlink(path: &Path) -> io::Result<()> {
    let is_symlink = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if is_symlink && !path.exists() {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

/// The new contents of `/etc/hosts` so that `127.0.0.1` maps `localhost` and `hostname` resolves;
/// `None` when the file already does both. Existing lines are kept.
fn hosts_with(existing: Option<&str>, hostname: &str) -> Option<String> {
    let mut has_localhost = false;
    let mut has_hostname = false;
    for line in existing.unwrap_or("").lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        let Some(address) = fields.next() else {
            continue;
        };
        for name in fields {
            has_localhost |= address == "127.0.0.1" && name == "localhost";
            has_hostname |= name == hostname;
        }
    }
    if has_localhost && has_hostname {
        return None;
    }
    let mut text = existing.unwrap_or("").to_owned();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    if !has_localhost {
        text.push_str("127.0.0.1\tlocalhost\n");
    }
    if existing.is_none() {
        text.push_str("::1\tlocalhost ip6-localhost ip6-loopback\n");
    }
    if !has_hostname {
        text.push_str(&format!("127.0.0.1\t{hostname}\n"));
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_file_created_when_missing() {
        assert_eq!(
            hosts_with(None, "web").unwrap(),
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.0.1\tweb\n"
        );
    }

    #[test]
    fn hosts_file_extended_not_rewritten() {
        let existing = "# image hosts\n127.0.0.1 localhost\n::1 localhost";
        assert_eq!(
            hosts_with(Some(existing), "web").unwrap(),
            "# image hosts\n127.0.0.1 localhost\n::1 localhost\n127.0.0.1\tweb\n"
        );
        let complete = "127.0.0.1 localhost\n10.0.2.15 web web.local\n";
        assert_eq!(hosts_with(Some(complete), "web"), None);
        // A commented-out mapping does not count.
        let commented = "#127.0.0.1 localhost web\n";
        assert!(hosts_with(Some(commented), "web")
            .unwrap()
            .ends_with("127.0.0.1\tlocalhost\n127.0.0.1\tweb\n"));
    }

    #[test]
    fn sockaddr_is_network_order_inet() {
        let sa = sockaddr(Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(i32::from(sa.sa_family), libc::AF_INET);
        // Port (2 bytes) then the address, as the kernel reads it.
        assert_eq!(&sa.sa_data[2..6], &[10, 0, 2, 15]);
    }

    #[test]
    fn ifreq_name_is_nul_terminated() {
        let req = ifreq("eth0");
        assert_eq!(&req.ifr_name[..5], &[101, 116, 104, 48, 0]);
    }
}
