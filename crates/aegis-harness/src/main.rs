//! `aegis-harness`: PID 1 of an Aegis guest.
//!
//! As PID 1 it boots the guest in phases — early mounts, kernel modules, the control port, the
//! root filesystem switch, late mounts, network — then serves JSON-RPC on the control channel
//! from a current-thread tokio runtime until `shutdown`, and powers the VM off. Next to the
//! channel the same runtime runs the ingress proxy (with a network) and the activity heartbeat.
//! It never returns and never unwinds: any fatal error or panic prints one line to the console,
//! syncs and powers off. With `--stdio` (and not PID 1) it skips the boot and serves on
//! stdin/stdout, for tests.

mod activity;
mod async_fd;
mod channel;
mod config;
mod console;
mod data;
mod files;
mod ingress;
mod init;
mod limits;
mod process;
mod rpc;
mod wait;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aegis_proto::control::{KEEPALIVE_DIR, PROTOCOL_VERSION};
use nix::sys::reboot::{reboot, RebootMode};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::channel::transport::{Stdio, Transport, TransportError, VirtioSerial, Vsock};
use crate::channel::{reader, writer};
use crate::config::{Config, ConfigError, RootConfig, StdioOptions, TransportChoice};
use crate::init::modules::ModuleError;
use crate::init::mounts::MountError;
use crate::init::rootfs::RootfsError;
use crate::init::workspace::WorkspaceError;
use crate::init::{modules, mounts, net, rootfs, workspace};
use crate::process::reaper::{Reaper, ReaperError, ReaperRole};
use crate::rpc::{Outcome, Role, Server};

/// The flag selecting development mode.
const STDIO_FLAG: &str = "--stdio";

/// Exit status for a usage error.
const EXIT_USAGE: i32 = 2;
/// Exit status when `--stdio` mode cannot run.
const EXIT_FAILURE: i32 = 1;

/// Why the harness cannot boot or serve. Every variant is fatal.
#[derive(Debug, thiserror::Error)]
enum BootError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(transparent)]
    Modules(#[from] ModuleError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Reaper(#[from] ReaperError),
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot start the control channel reader thread")]
    Reader(#[source] std::io::Error),
    #[error("cannot listen for SIGTERM and SIGINT")]
    Signals(#[source] std::io::Error),
    #[error("the {task} task ended unexpectedly")]
    TaskEnded { task: &'static str },
}

/// What runs next to the control channel.
#[derive(Debug, Default)]
struct Services {
    /// The ingress proxy; only with a network (or when a `--stdio` test asks for it).
    ingress: Option<ingress::Config>,
    /// The activity heartbeat; always in a guest, on request in `--stdio` mode.
    activity: Option<activity::Config>,
}

impl Services {
    /// `--stdio` mode: nothing unless the environment asks (see [`StdioOptions`]). The proxy
    /// listens on loopback only, the heartbeat counts no interface.
    fn stdio(options: StdioOptions) -> Services {
        Services {
            ingress: options.ingress_port.map(|port| ingress::Config {
                listen: std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port)),
                guest_address: None,
            }),
            activity: options.activity_interval.map(|interval| activity::Config {
                interval,
                sources: activity::Sources {
                    proc_dir: PathBuf::from(activity::PROC_DIR),
                    net_statistics: None,
                    keepalive_dir: options
                        .keepalive_dir
                        .unwrap_or_else(|| PathBuf::from(KEEPALIVE_DIR)),
                },
            }),
        }
    }
}

fn main() {
    let started = Instant::now();
    if std::process::id() == 1 {
        // The kernel passes unrecognised command-line words as arguments; they mean nothing here.
        init_main(started);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().map(String::as_str).eq([STDIO_FLAG]) {
        stdio_main(started);
    }
    eprintln!(
        "aegis-harness is the init process of Aegis guests; run as PID 1, or with {STDIO_FLAG} to \
         serve the control channel on stdin/stdout for testing"
    );
    std::process::exit(EXIT_USAGE);
}

fn init_main(started: Instant) -> ! {
    console::init(console::Sink::Device);
    install_panic_hook(Role::Init);
    match boot_and_serve(started) {
        Ok(()) => power_off(),
        Err(e) => {
            console::line(format_args!("fatal: {}", console::chain(&e)));
            power_off()
        }
    }
}

fn stdio_main(started: Instant) -> ! {
    console::init(console::Sink::Stderr);
    install_panic_hook(Role::Stdio);
    let options = match StdioOptions::from_env(|name| std::env::var_os(name)) {
        Ok(options) => options,
        Err(e) => {
            console::line(format_args!("fatal: {}", console::chain(&e)));
            std::process::exit(EXIT_USAGE)
        }
    };
    raise_nofile();
    match serve(
        Box::new(Stdio),
        Role::Stdio,
        Services::stdio(options),
        started,
    ) {
        Ok(Outcome::Exit | Outcome::PowerOff) => std::process::exit(0),
        Err(e) => {
            console::line(format_args!("fatal: {}", console::chain(&e)));
            std::process::exit(EXIT_FAILURE)
        }
    }
}

/// The boot phases, in order; then serve until shutdown.
fn boot_and_serve(started: Instant) -> Result<(), BootError> {
    console::phase(format_args!(
        "starting (version {}, protocol {PROTOCOL_VERSION})",
        env!("CARGO_PKG_VERSION")
    ));
    mounts::apply(mounts::EARLY)?;
    let (config, notes) = Config::load()?;
    for note in notes {
        console::line(note);
    }

    let summary = modules::load_all(|e| {
        console::line(format_args!("{} (continuing)", console::chain(e)));
    })?;
    console::phase(format_args!(
        "modules: {} loaded, {} already present, {} failed",
        summary.loaded, summary.present, summary.failed
    ));

    let transport: Box<dyn Transport> = match config.transport {
        TransportChoice::VirtioSerial => {
            let port = VirtioSerial::find()?;
            console::phase(format_args!("control port {}", port.describe()));
            Box::new(port)
        }
        TransportChoice::Vsock { port } => Box::new(Vsock::new(port)),
    };

    match &config.root {
        RootConfig::Device {
            device,
            fstype,
            flags,
        } => {
            rootfs::switch_to(device, fstype, flags.as_deref())?;
            console::phase(format_args!(
                "root switched to {} ({fstype})",
                device.display()
            ));
        }
        RootConfig::Initramfs => {
            rootfs::ensure_dirs(std::path::Path::new("/"))?;
            console::phase("staying in the initramfs root (aegis.root=none)");
        }
    }
    mounts::apply(mounts::LATE)?;
    mounts::link_dev_entries()?;
    if let Some(workspace) = &config.workspace {
        let what = workspace::mount_workspace(workspace)?;
        console::phase(format_args!(
            "workspace {what} mounted on {}",
            workspace::MOUNT_POINT
        ));
    }
    // Without the directory guest programs cannot take leases; not worth a failed boot.
    if let Err(e) = activity::create_keepalive_dir(Path::new(KEEPALIVE_DIR)) {
        console::line(format_args!("{} (continuing)", console::chain(&e)));
    }

    let report = net::setup(&config);
    for error in &report.errors {
        console::line(format_args!(
            "network: {} (continuing)",
            console::chain(error)
        ));
    }
    match report.eth0 {
        Some(eth0) => console::phase(format_args!(
            "network up: {} {}/{}{}",
            net::ETH0,
            eth0.address,
            eth0.prefix_len,
            eth0.gateway
                .map(|gw| format!(" via {gw}"))
                .unwrap_or_default()
        )),
        None => console::phase(format_args!("network: {} only", net::LO)),
    }

    raise_nofile();
    let services = Services {
        ingress: report.eth0.map(|eth0| ingress::Config::guest(eth0.address)),
        activity: Some(activity::Config::guest()),
    };
    match serve(transport, Role::Init, services, started)? {
        Outcome::PowerOff | Outcome::Exit => Ok(()),
    }
}

/// Raises the harness's open-file limit (see `limits`); without it the proxy runs out of
/// descriptors before its connection bound.
fn raise_nofile() {
    if let Err(e) = limits::raise_nofile() {
        console::line(format_args!(
            "cannot raise the open-file limit: {e} (continuing)"
        ));
    }
}

/// Builds the runtime and runs the channel, the reaper, the RPC server and the services until
/// shutdown.
fn serve(
    transport: Box<dyn Transport>,
    role: Role,
    services: Services,
    started: Instant,
) -> Result<Outcome, BootError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BootError::Runtime)?;
    runtime.block_on(async move {
        let reaper_role = match role {
            Role::Init => ReaperRole::Init,
            Role::Stdio => ReaperRole::Subreaper,
        };
        let (reaper, reaper_task) = Reaper::new(reaper_role)?;
        let (outbox, outgoing) = writer::channel();
        let (connections_tx, connections_rx) = mpsc::channel(1);
        let (lines_tx, lines_rx) = mpsc::channel(reader::INCOMING_CAPACITY);
        let description = transport.describe();

        let mut reaper_handle = tokio::spawn(reaper_task.run());
        let mut writer_handle = tokio::spawn(writer::run(outgoing, connections_rx));
        if role == Role::Stdio {
            // Killing the development server must not orphan its processes (they run in
            // sessions of their own): SIGTERM/SIGINT shut down like the peer closing.
            let mut terminate = signal(SignalKind::terminate()).map_err(BootError::Signals)?;
            let mut interrupt = signal(SignalKind::interrupt()).map_err(BootError::Signals)?;
            let closed = lines_tx.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
                let _ = closed.send(reader::Incoming::Closed).await;
            });
        }
        let ingress_key = ingress::IngressKey::default();
        let inputs = process::input::Inputs::default();
        let server = Server::new(
            reaper,
            inputs.clone(),
            outbox.clone(),
            role,
            started,
            ingress_key.clone(),
        );
        // Owned here: dropping the set when serving ends stops them. Neither is essential, so
        // neither ending stops the harness.
        let mut service_tasks = JoinSet::new();
        if let Some(config) = services.ingress {
            match ingress::Proxy::bind(config, ingress_key, inputs).await {
                Ok(proxy) => {
                    console::phase(format_args!(
                        "ingress proxy listening on {}",
                        proxy.local_addr()
                    ));
                    service_tasks.spawn(proxy.run());
                }
                Err(e) => console::line(format_args!(
                    "{} (continuing without ingress)",
                    console::chain(&e)
                )),
            }
        }
        if let Some(config) = services.activity {
            service_tasks.spawn(activity::run(config, outbox, server.subscribe_execs()));
        }
        // The reader thread ends by itself once the server (the receiver of its lines) is gone.
        let _reader =
            reader::spawn(transport, lines_tx, connections_tx).map_err(BootError::Reader)?;
        console::phase(format_args!("serving the control channel on {description}"));
        console::line("ready");

        tokio::select! {
            outcome = server.run(lines_rx) => Ok(outcome),
            _ = &mut reaper_handle => Err(BootError::TaskEnded { task: "reaper" }),
            _ = &mut writer_handle => Err(BootError::TaskEnded { task: "writer" }),
        }
    })
}

/// Makes every panic fatal before any unwinding: one console line, then power off (PID 1) or
/// abort (`--stdio`, where a half-working server would only hide the bug).
fn install_panic_hook(role: Role) {
    std::panic::set_hook(Box::new(move |info| {
        console::line(format_args!("fatal: {info}"));
        match role {
            Role::Init => power_off(),
            Role::Stdio => std::process::abort(),
        }
    }));
}

/// Syncs and powers the VM off. With the q35 machine QEMU exits, which the host sees. If the
/// kernel refuses, PID 1 still must not return (that would panic the kernel): it parks.
fn power_off() -> ! {
    console::line("powering off");
    nix::unistd::sync();
    let Err(e) = reboot(RebootMode::RB_POWER_OFF);
    console::line(format_args!("power off failed: {e}"));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
