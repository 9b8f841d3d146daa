//! The ingress proxy: the host router's way into guest ports, including ports that listen on
//! loopback only.
//!
//! The harness listens on [`INGRESS_PORT`] (privileged, so no unprivileged guest program can
//! take it). QEMU's user-mode network forwards the router's connections there. Per connection
//! (the protocol is documented on [`INGRESS_PORT`]): read the header ([`INGRESS_MAGIC`], the key
//! the host set with `set_ingress_key`, big-endian target port) within [`HEADER_TIMEOUT`], and
//! turn the connection away unless the key matches (the forward listens on host loopback, open
//! to every local user); connect to the target on `127.0.0.1`, then
//! `[::1]`, then the guest's own address (a server bound to one of them only is still reached);
//! answer one [`IngressStatus`] byte; on `Connected` relay bytes both ways until both directions
//! ended, passing each end-of-file on as a half-close. Any other status is followed by a
//! half-close and a short drain, so the status byte is not lost to a reset.
//!
//! Everything runs on the harness's runtime with non-blocking sockets; the number of
//! connections is bounded ([`MAX_CONNECTIONS`]), and so is the number of connections being
//! turned away ([`MAX_REJECTIONS`]). Failures of single connections are not logged (a port that
//! nothing listens on yet is normal); a listener that cannot accept, or a full proxy, is noted
//! once per episode.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use std::sync::{Arc, RwLock};

use aegis_proto::control::{
    IngressStatus, DATA_SERVICE_PORT, INGRESS_HEADER_BYTES, INGRESS_KEY_BYTES, INGRESS_MAGIC,
    INGRESS_PORT,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::console;
use crate::process::input::Inputs;

/// How long the host has to send the header after connecting.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long connecting to the target may take, over all candidate addresses. Local connects
/// finish at once; a server whose accept queue is full drops SYNs, and the kernel retries after
/// 1, 3, 7 and 15 s — the budget covers four retries and stays below the 30 s the host router
/// waits for the status byte.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Connections relayed at once; beyond this new ones are answered `Failed`.
pub const MAX_CONNECTIONS: usize = 1024;

/// Connections being turned away at once (each is held up to [`REJECT_LINGER`]); beyond this
/// they are closed without an answer.
pub const MAX_REJECTIONS: usize = 64;

/// How long a turned-away connection is drained after its status byte.
pub const REJECT_LINGER: Duration = Duration::from_secs(1);

/// Bytes drained from a turned-away connection at most.
const REJECT_DRAIN_BYTES: usize = 64 * 1024;

/// Pause after the listener failed for lack of resources (descriptors, memory).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Where the proxy listens and what it may connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// The listening address.
    pub listen: SocketAddr,
    /// The guest's own address, tried after loopback.
    pub guest_address: Option<IpAddr>,
}

impl Config {
    /// The guest's proxy: every interface, [`INGRESS_PORT`], falling back to `eth0`'s address.
    pub fn guest(eth0: Ipv4Addr) -> Config {
        Config {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, INGRESS_PORT)),
            guest_address: Some(IpAddr::V4(eth0)),
        }
    }
}

/// Why the proxy cannot start.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// bind or listen failed.
    #[error("cannot listen for ingress connections on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// The key ingress headers must carry: none until the host sets one.
#[derive(Debug, Clone, Default)]
pub struct IngressKey(Arc<RwLock<Option<[u8; INGRESS_KEY_BYTES]>>>);

impl IngressKey {
    /// Sets the key (a later call replaces it).
    pub fn set(&self, key: [u8; INGRESS_KEY_BYTES]) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(key);
    }

    fn get(&self) -> Option<[u8; INGRESS_KEY_BYTES]> {
        *self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What is wrong with a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The first two bytes are not [`INGRESS_MAGIC`] (not our protocol, or another version).
    #[error("bad ingress magic {found:02x?}, expected {INGRESS_MAGIC:02x?}")]
    BadMagic {
        /// The bytes received.
        found: [u8; 2],
    },
    /// The host has not set a key yet.
    #[error("no ingress key is set")]
    NoKey,
    /// The key does not match.
    #[error("wrong ingress key")]
    WrongKey,
    /// The target is the proxy itself, which would only nest the protocol.
    #[error("target port {port} is the ingress proxy itself")]
    Itself {
        /// The port.
        port: u16,
    },
}

/// Where a header asks to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A guest TCP port.
    Port(u16),
    /// The harness's data service ([`DATA_SERVICE_PORT`]).
    Data,
}

/// Decodes a header into its target. `own_port` is the proxy's listening port.
///
/// # Errors
/// [`HeaderError`] for a header the proxy does not serve.
pub fn parse_header(
    header: &[u8; INGRESS_HEADER_BYTES],
    key: Option<&[u8; INGRESS_KEY_BYTES]>,
    own_port: u16,
) -> Result<Target, HeaderError> {
    let (magic, rest) = header.split_at(INGRESS_MAGIC.len());
    let (sent_key, port) = rest.split_at(INGRESS_KEY_BYTES);
    if magic != INGRESS_MAGIC {
        return Err(HeaderError::BadMagic {
            found: [magic[0], magic[1]],
        });
    }
    let key = key.ok_or(HeaderError::NoKey)?;
    // Every byte compared whatever the first difference, so timing tells nothing of the key.
    let difference = key
        .iter()
        .zip(sent_key)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if difference != 0 {
        return Err(HeaderError::WrongKey);
    }
    match u16::from_be_bytes([port[0], port[1]]) {
        DATA_SERVICE_PORT => Ok(Target::Data),
        port if port == own_port => Err(HeaderError::Itself { port }),
        port => Ok(Target::Port(port)),
    }
}

/// The addresses tried for `port`, in order: IPv4 loopback, IPv6 loopback, the guest's own.
pub fn candidates(port: u16, guest_address: Option<IpAddr>) -> Vec<SocketAddr> {
    [
        Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        guest_address,
    ]
    .into_iter()
    .flatten()
    .map(|ip| SocketAddr::new(ip, port))
    .collect()
}

/// Why no connection to the target was made.
#[derive(Debug)]
pub enum ConnectFailure {
    /// Nothing listens on the port at any candidate address.
    Refused,
    /// Something else went wrong (timeout, no memory, unreachable). Not logged: the host
    /// learns it from the status byte, and a console line per connection would flood the log.
    Failed,
}

impl ConnectFailure {
    /// The status byte that reports it.
    pub fn status(&self) -> IngressStatus {
        match self {
            ConnectFailure::Refused => IngressStatus::Refused,
            ConnectFailure::Failed => IngressStatus::Failed,
        }
    }
}

/// Connects to the first candidate address that accepts. The answer is `Refused` when every
/// address that exists refused; an address the guest does not have (no IPv6) is skipped.
///
/// # Errors
/// [`ConnectFailure`].
pub async fn connect_target(
    port: u16,
    guest_address: Option<IpAddr>,
    timeout: Duration,
) -> Result<TcpStream, ConnectFailure> {
    let deadline = Instant::now() + timeout;
    let mut refused = false;
    let mut failed = false;
    for addr in candidates(port, guest_address) {
        match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => refused = true,
            Ok(Err(e)) if address_absent(&e) => {}
            Ok(Err(_)) => failed = true,
            // Out of time: the remaining addresses get none either.
            Err(_) => return Err(ConnectFailure::Failed),
        }
    }
    if refused && !failed {
        Err(ConnectFailure::Refused)
    } else {
        Err(ConnectFailure::Failed)
    }
}

/// The address family or address does not exist in this guest (IPv6 disabled, no `eth0`).
fn address_absent(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL | libc::ENETUNREACH)
    )
}

/// A bound proxy, ready to serve.
#[derive(Debug)]
pub struct Proxy {
    listener: TcpListener,
    local: SocketAddr,
    guest_address: Option<IpAddr>,
    key: IngressKey,
    inputs: Inputs,
    /// [`MAX_CONNECTIONS`], smaller in tests.
    max_connections: usize,
}

impl Proxy {
    /// Binds the listener. Must run inside the runtime.
    ///
    /// # Errors
    /// [`IngressError::Listen`].
    pub async fn bind(
        config: Config,
        key: IngressKey,
        inputs: Inputs,
    ) -> Result<Proxy, IngressError> {
        let error = |source| IngressError::Listen {
            addr: config.listen,
            source,
        };
        let listener = TcpListener::bind(config.listen).await.map_err(error)?;
        let local = listener.local_addr().map_err(error)?;
        Ok(Proxy {
            listener,
            local,
            guest_address: config.guest_address,
            key,
            inputs,
            max_connections: MAX_CONNECTIONS,
        })
    }

    /// Where it listens (the actual port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Accepts and serves connections forever.
    pub async fn run(self) {
        let mut connections = JoinSet::new();
        let mut rejections = JoinSet::new();
        let mut accept_failing = false;
        let mut full = false;
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        accept_failing = false;
                        if connections.len() < self.max_connections {
                            let own_port = self.local.port();
                            connections.spawn(serve_connection(
                                stream,
                                own_port,
                                self.guest_address,
                                self.key.clone(),
                                self.inputs.clone(),
                                HEADER_TIMEOUT,
                            ));
                            continue;
                        }
                        if !full {
                            full = true;
                            console::line(format_args!(
                                "ingress proxy: {} connections open; turning new ones away",
                                self.max_connections
                            ));
                        }
                        if rejections.len() < MAX_REJECTIONS {
                            rejections.spawn(reject(stream, IngressStatus::Failed));
                        }
                    }
                    Err(e) => {
                        if !accept_failing {
                            accept_failing = true;
                            console::line(format_args!(
                                "ingress proxy: cannot accept a connection: {e}; retrying"
                            ));
                        }
                        if lacks_resources(&e) {
                            tokio::time::sleep(ACCEPT_RETRY).await;
                        }
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {
                    // Panics end the harness in the hook; nothing aborts these tasks.
                    if full && connections.len() < self.max_connections {
                        full = false;
                        console::line("ingress proxy: accepting connections again");
                    }
                }
                Some(_) = rejections.join_next(), if !rejections.is_empty() => {}
            }
        }
    }
}

fn lacks_resources(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// One connection from the host: header (within `header_timeout`), connect, status, relay;
/// or, for the data service, status and the service's own protocol (see `data`).
pub async fn serve_connection(
    mut inbound: TcpStream,
    own_port: u16,
    guest_address: Option<IpAddr>,
    key: IngressKey,
    inputs: Inputs,
    header_timeout: Duration,
) {
    let mut header = [0u8; INGRESS_HEADER_BYTES];
    let port = match tokio::time::timeout(header_timeout, inbound.read_exact(&mut header)).await {
        Ok(Ok(_)) => match parse_header(&header, key.get().as_ref(), own_port) {
            Ok(Target::Port(port)) => port,
            Ok(Target::Data) => {
                if inbound
                    .write_all(&[IngressStatus::Connected as u8])
                    .await
                    .is_ok()
                {
                    crate::data::serve(inbound, inputs).await;
                }
                return;
            }
            Err(_) => return reject(inbound, IngressStatus::Failed).await,
        },
        // Closed before a whole header, or too slow: answer in case it still reads.
        Ok(Err(_)) | Err(_) => return reject(inbound, IngressStatus::Failed).await,
    };
    let mut outbound = match connect_target(port, guest_address, CONNECT_TIMEOUT).await {
        Ok(stream) => stream,
        Err(failure) => return reject(inbound, failure.status()).await,
    };
    // Relayed bytes are someone else's protocol: forward them as they come.
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    if inbound
        .write_all(&[IngressStatus::Connected as u8])
        .await
        .is_err()
    {
        return;
    }
    // Each direction ends at its end-of-file, which becomes shutdown(SHUT_WR) on the other
    // socket; an error (a reset) ends both, and dropping the sockets closes them.
    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
}

/// Answers a non-zero status, half-closes, and drains briefly before closing: closing a socket
/// with unread input sends a reset, which can destroy the status byte before the host reads it.
async fn reject(mut stream: TcpStream, status: IngressStatus) {
    if stream.write_all(&[status as u8]).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut drained = 0;
        while drained < REJECT_DRAIN_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = tokio::time::timeout(REJECT_LINGER, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; INGRESS_KEY_BYTES] = [7; INGRESS_KEY_BYTES];

    fn raw(
        magic: [u8; 2],
        key: &[u8; INGRESS_KEY_BYTES],
        port: [u8; 2],
    ) -> [u8; INGRESS_HEADER_BYTES] {
        let mut h = aegis_proto::control::ingress_header(key, u16::from_be_bytes(port));
        h[..2].copy_from_slice(&magic);
        h
    }

    #[test]
    fn headers_decode_to_the_target_port() {
        let m = INGRESS_MAGIC;
        let parse = |h: [u8; INGRESS_HEADER_BYTES]| parse_header(&h, Some(&KEY), INGRESS_PORT);
        assert_eq!(parse(raw(m, &KEY, [0x1F, 0x90])), Ok(Target::Port(8080)));
        assert_eq!(parse(raw(m, &KEY, [0, 1])), Ok(Target::Port(1)));
        assert_eq!(parse(raw(m, &KEY, [0xFF, 0xFF])), Ok(Target::Port(65535)));
        assert_eq!(parse(raw(m, &KEY, [0, 0])), Ok(Target::Data));
        assert_eq!(
            parse(raw(m, &KEY, [0x03, 0xE8])),
            Err(HeaderError::Itself { port: 1000 })
        );
        assert_eq!(
            parse(raw(*b"GE", &KEY, [0, 80])),
            Err(HeaderError::BadMagic { found: *b"GE" })
        );
        // Another protocol version is refused rather than guessed at.
        assert_eq!(
            parse(raw([m[0], 0x01], &KEY, [0, 80])),
            Err(HeaderError::BadMagic {
                found: [m[0], 0x01]
            })
        );
    }

    #[test]
    fn a_header_without_the_key_reaches_nothing() {
        let mut wrong = KEY;
        wrong[INGRESS_KEY_BYTES - 1] ^= 1;
        let header = raw(INGRESS_MAGIC, &wrong, [0, 80]);
        assert_eq!(
            parse_header(&header, Some(&KEY), INGRESS_PORT),
            Err(HeaderError::WrongKey)
        );
        let header = raw(INGRESS_MAGIC, &KEY, [0, 80]);
        assert_eq!(
            parse_header(&header, None, INGRESS_PORT),
            Err(HeaderError::NoKey)
        );
    }

    #[test]
    fn loopback_is_tried_before_the_guest_address() {
        let eth0 = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(
            candidates(80, Some(eth0)),
            vec![
                "127.0.0.1:80".parse::<SocketAddr>().unwrap(),
                "[::1]:80".parse().unwrap(),
                "10.0.2.15:80".parse().unwrap(),
            ]
        );
        assert_eq!(candidates(80, None).len(), 2);
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A port on `ip` that nothing listens on (bound, then released).
    fn closed_port(ip: Ipv4Addr) -> u16 {
        let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
        listener.local_addr().unwrap().port()
    }

    #[test]
    fn a_server_on_the_guest_address_only_is_reached_after_loopback_refuses() {
        runtime().block_on(async {
            // 127.0.0.2 stands in for eth0's address: a different local address on which
            // 127.0.0.1 and ::1 refuse.
            let own = Ipv4Addr::new(127, 0, 0, 2);
            let server = TcpListener::bind((own, 0)).await.unwrap();
            let port = server.local_addr().unwrap().port();
            let stream = connect_target(port, Some(IpAddr::V4(own)), CONNECT_TIMEOUT)
                .await
                .unwrap();
            assert_eq!(stream.peer_addr().unwrap(), SocketAddr::from((own, port)));
            let refused = connect_target(port, None, CONNECT_TIMEOUT)
                .await
                .unwrap_err();
            assert!(matches!(refused, ConnectFailure::Refused), "{refused:?}");
            let port = closed_port(Ipv4Addr::LOCALHOST);
            let refused = connect_target(port, Some(IpAddr::V4(own)), CONNECT_TIMEOUT)
                .await
                .unwrap_err();
            assert_eq!(refused.status(), IngressStatus::Refused);
        });
    }

    #[test]
    fn a_silent_client_gets_failed_after_the_header_timeout() {
        runtime().block_on(async {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let mut client = TcpStream::connect(addr).await.unwrap();
            let (inbound, _) = listener.accept().await.unwrap();
            let timeout = Duration::from_millis(100);
            let started = Instant::now();
            let key = IngressKey::default();
            let server = tokio::spawn(serve_connection(
                inbound,
                addr.port(),
                None,
                key,
                Inputs::default(),
                timeout,
            ));
            client.write_all(&INGRESS_MAGIC).await.unwrap(); // half a header, then silence
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await.unwrap();
            assert_eq!(answer, [IngressStatus::Failed as u8]);
            assert!(started.elapsed() >= timeout);
            // The client closing ends the drain early.
            drop(client);
            server.await.unwrap();
        });
    }

    #[test]
    fn beyond_the_connection_bound_new_connections_are_turned_away() {
        runtime().block_on(async {
            let echo = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            let echo_port = echo.local_addr().unwrap().port();
            tokio::spawn(async move {
                loop {
                    let (mut stream, _) = echo.accept().await.unwrap();
                    tokio::spawn(async move {
                        let (mut r, mut w) = stream.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    });
                }
            });
            let key = IngressKey::default();
            key.set(KEY);
            let mut proxy = Proxy::bind(
                Config {
                    listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                    guest_address: None,
                },
                key,
                Inputs::default(),
            )
            .await
            .unwrap();
            proxy.max_connections = 1;
            let addr = proxy.local_addr();
            tokio::spawn(proxy.run());
            let header = |port: u16| aegis_proto::control::ingress_header(&KEY, port);
            let open = || async {
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(&header(echo_port)).await.unwrap();
                let mut status = [0u8; 1];
                s.read_exact(&mut status).await.unwrap();
                (s, IngressStatus::from_byte(status[0]))
            };
            let (mut first, status) = open().await;
            assert_eq!(status, IngressStatus::Connected);
            let (mut second, status) = open().await;
            assert_eq!(status, IngressStatus::Failed);
            let mut rest = Vec::new();
            second.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
            // The first one still works; once it is gone there is room again.
            first.write_all(b"ping").await.unwrap();
            let mut pong = [0u8; 4];
            first.read_exact(&mut pong).await.unwrap();
            assert_eq!(&pong, b"ping");
            drop(first);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let (_third, status) = open().await;
                if status == IngressStatus::Connected {
                    break;
                }
                assert!(Instant::now() < deadline, "the slot was never freed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
}
