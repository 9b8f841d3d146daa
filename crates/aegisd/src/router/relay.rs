//! One routed connection: wake the instance, open the guest side through the harness's ingress
//! proxy, relay bytes both ways (half-close included). When nothing listens in the guest, an HTTP
//! client gets `503 Service Unavailable` and a raw TCP connection is closed.

use std::sync::Arc;
use std::time::Duration;

use aegis_proto::control::IngressStatus;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::idle::{self, RelayEnd};
use super::{RouteTarget, CONNECTION_IDLE_TIMEOUT};
use crate::images::error_chain;
use crate::lifecycle::boot::IngressForward;
use crate::lifecycle::spec::ExposeProtocol;

/// Attempts when the proxy is not listening yet (the first connection right after a boot).
const INGRESS_ATTEMPTS: u32 = 20;
/// Pause between those attempts.
const INGRESS_RETRY: Duration = Duration::from_millis(250);
/// How long a connection that woke its instance waits for the guest port to be listened on.
const WOKEN_LISTEN_GRACE: Duration = Duration::from_secs(30);
/// How long to wait for a raw-TCP client's first bytes to tell whether it speaks HTTP.
const SNIFF_TIMEOUT: Duration = Duration::from_millis(500);

/// Handles one client connection to a public port.
pub async fn serve_connection(mut client: TcpStream, target: Arc<RouteTarget>) {
    let _active = target.instance.busy();
    let link = match target.instance.wake().await {
        Ok(link) => link,
        Err(e) => {
            let reason = format!(
                "instance {} is unavailable: {}",
                target.instance.id(),
                error_chain(&e)
            );
            unavailable(&mut client, target.protocol, &reason).await;
            return;
        }
    };
    let Some(ingress) = link.forward else {
        unavailable(
            &mut client,
            target.protocol,
            "the VM has no ingress forward",
        )
        .await;
        return;
    };
    match open_guest(ingress, target.guest_port, link.woke).await {
        Ok(mut upstream) => {
            match idle::relay(&mut client, &mut upstream, CONNECTION_IDLE_TIMEOUT).await {
                Ok(RelayEnd::Closed) => {}
                Ok(RelayEnd::Idle) => {
                    tracing::debug!(instance = %target.instance.id(), "closed an idle connection");
                }
                Err(e) => {
                    tracing::debug!(instance = %target.instance.id(), error = %e, "relay ended with an error");
                }
            }
        }
        Err(status) => {
            let reason = match status {
                IngressStatus::Refused => format!(
                    "nothing is listening on port {} in instance {} yet",
                    target.guest_port,
                    target.instance.id()
                ),
                IngressStatus::Connected | IngressStatus::Failed => format!(
                    "cannot reach port {} in instance {}",
                    target.guest_port,
                    target.instance.id()
                ),
            };
            unavailable(&mut client, target.protocol, &reason).await;
        }
    }
}

/// Connects to the harness's ingress proxy and asks for `guest_port`. When this connection
/// woke the instance, a refused port is retried for [`WOKEN_LISTEN_GRACE`]: the guest's server
/// is most likely still starting, and the request that woke it should be served, not refused.
async fn open_guest(
    ingress: IngressForward,
    guest_port: u16,
    woke: bool,
) -> Result<TcpStream, IngressStatus> {
    let grace_until = tokio::time::Instant::now() + WOKEN_LISTEN_GRACE;
    let mut attempts = 0;
    loop {
        match ingress.open(guest_port).await {
            Ok(stream) => return Ok(stream),
            Err(Some(IngressStatus::Refused))
                if woke && tokio::time::Instant::now() < grace_until =>
            {
                tokio::time::sleep(INGRESS_RETRY).await;
            }
            // The proxy answered: no point retrying.
            Err(Some(status)) => return Err(status),
            // The forward accepted but the guest side closed: the proxy is not up yet.
            Err(None) => {
                attempts += 1;
                if attempts >= INGRESS_ATTEMPTS {
                    return Err(IngressStatus::Failed);
                }
                tokio::time::sleep(INGRESS_RETRY).await;
            }
        }
    }
}

/// Answers a client whose guest port cannot be reached.
async fn unavailable(client: &mut TcpStream, protocol: ExposeProtocol, reason: &str) {
    let http = match protocol {
        ExposeProtocol::Http => true,
        ExposeProtocol::Tcp => sniff_http(client).await,
    };
    if http {
        // Read what the client already sent so closing does not reset the connection under it.
        let mut buf = vec![0u8; 64 * 1024];
        let _ = tokio::time::timeout(Duration::from_millis(100), client.read(&mut buf)).await;
        let body = format!("503 Service Unavailable: {reason}\n");
        let response = format!(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = client.write_all(response.as_bytes()).await;
    }
    let _ = client.shutdown().await;
}

/// Whether the client's first bytes look like an HTTP request line.
async fn sniff_http(client: &TcpStream) -> bool {
    let mut buf = [0u8; 8];
    match tokio::time::timeout(SNIFF_TIMEOUT, client.peek(&mut buf)).await {
        Ok(Ok(n)) => looks_like_http(&buf[..n]),
        _ => false,
    }
}

fn looks_like_http(head: &[u8]) -> bool {
    const METHODS: [&[u8]; 9] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"HEAD ",
        b"DELETE ",
        b"OPTIONS ",
        b"PATCH ",
        b"CONNECT ",
        b"TRACE ",
    ];
    METHODS
        .iter()
        .any(|m| head.starts_with(&m[..m.len().min(head.len())]) && !head.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_request_lines() {
        assert!(looks_like_http(b"GET / HT"));
        assert!(looks_like_http(b"POST /x"));
        assert!(looks_like_http(b"DEL"));
        assert!(!looks_like_http(b"SSH-2.0-"));
        assert!(!looks_like_http(b""));
    }
}
