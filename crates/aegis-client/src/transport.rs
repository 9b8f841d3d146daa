//! One HTTP/1.1 exchange over a fresh unix-socket connection. The connection is driven by a task
//! owned by a [`ConnGuard`], which aborts it when the response (or its body stream) is dropped.

use std::path::Path;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited, StreamBody};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

use aegis_proto::api::ErrorBody;

use crate::error::ClientError;

/// Largest error body read; daemon errors are one or two sentences.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Owns the task that drives one connection; aborting it closes the connection.
#[derive(Debug)]
pub(crate) struct ConnGuard(JoinHandle<()>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A response whose body is still to be read, and the connection it arrives on.
#[derive(Debug)]
pub(crate) struct Exchange {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) response: Response<Incoming>,
    pub(crate) conn: ConnGuard,
}

/// What a request carries.
pub(crate) enum Outgoing {
    /// Nothing.
    Empty,
    /// A JSON document.
    Json(Vec<u8>),
    /// Raw bytes, streamed as they are read (`application/octet-stream`).
    Stream(UnsyncBoxBody<Bytes, std::io::Error>),
}

impl Outgoing {
    /// A body read from `reader` piece by piece: the request never holds it whole, and the
    /// reader is read no faster than the daemon takes it.
    pub(crate) fn reader(reader: impl tokio::io::AsyncRead + Send + 'static) -> Outgoing {
        use futures::TryStreamExt;
        let frames = tokio_util::io::ReaderStream::new(reader).map_ok(hyper::body::Frame::data);
        Outgoing::Stream(BodyExt::boxed_unsync(StreamBody::new(frames)))
    }
}

impl From<Option<Vec<u8>>> for Outgoing {
    fn from(json: Option<Vec<u8>>) -> Outgoing {
        json.map_or(Outgoing::Empty, Outgoing::Json)
    }
}

/// Connects to `socket`, sends one request and waits for the response head. Error statuses are
/// turned into [`ClientError::Api`] here, so callers only see successful responses.
pub(crate) async fn send(
    socket: &Path,
    method: Method,
    path: String,
    body: Option<Vec<u8>>,
) -> Result<Exchange, ClientError> {
    send_upgrading(socket, method, path, body.into(), None).await
}

/// [`send`], asking to upgrade the connection to `upgrade` when given (the response is then a
/// `101` whose connection [`hyper::upgrade::on`] takes over).
pub(crate) async fn send_upgrading(
    socket: &Path,
    method: Method,
    path: String,
    body: Outgoing,
    upgrade: Option<&'static str>,
) -> Result<Exchange, ClientError> {
    let stream = UnixStream::connect(socket).await.map_err(|source| {
        match source.kind() {
            // A missing socket, or a stale one left by a daemon that died.
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning {
                    socket: socket.to_path_buf(),
                    source,
                }
            }
            _ => ClientError::Connect {
                socket: socket.to_path_buf(),
                source,
            },
        }
    })?;
    let request_failed = |source| ClientError::Request {
        method: method.clone(),
        path: path.clone(),
        source,
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(request_failed)?;
    let conn = ConnGuard(tokio::spawn(async move {
        // Its errors surface through the request or the body, where they have context.
        let _ = connection.with_upgrades().await;
    }));

    let mut builder = Request::builder()
        .method(method.clone())
        .uri(&path)
        .header(hyper::header::HOST, "aegisd");
    if let Some(protocol) = upgrade {
        builder = builder
            .header(hyper::header::CONNECTION, "upgrade")
            .header(hyper::header::UPGRADE, protocol);
    }
    let body = match body {
        Outgoing::Json(json) => {
            builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
            Full::new(Bytes::from(json))
                .map_err(|never| match never {})
                .boxed_unsync()
        }
        Outgoing::Stream(stream) => {
            builder = builder.header(hyper::header::CONTENT_TYPE, "application/octet-stream");
            stream
        }
        Outgoing::Empty => Empty::new().map_err(|never| match never {}).boxed_unsync(),
    };
    let request = builder
        .body(body)
        .expect("method, a path we built and static headers always make a valid request");
    let response = sender.send_request(request).await.map_err(request_failed)?;

    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        let text = read_limited(response.into_body(), MAX_ERROR_BODY)
            .await
            .unwrap_or_default();
        return Err(ClientError::Api {
            method,
            path,
            status,
            body: error_body(status, &text),
        });
    }
    Ok(Exchange {
        method,
        path,
        response,
        conn,
    })
}

impl Exchange {
    /// Reads the whole body (at most `limit` bytes) and decodes it as JSON.
    pub(crate) async fn json<T: serde::de::DeserializeOwned>(
        self,
        limit: usize,
    ) -> Result<T, ClientError> {
        let Exchange {
            method,
            path,
            response,
            conn,
        } = self;
        let bytes = match read_limited(response.into_body(), limit).await {
            Ok(bytes) => bytes,
            Err(source) => {
                return Err(ClientError::Body {
                    method,
                    path,
                    source,
                })
            }
        };
        drop(conn);
        serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode {
            method,
            path,
            source,
        })
    }
}

async fn read_limited(
    body: Incoming,
    limit: usize,
) -> Result<Bytes, Box<dyn std::error::Error + Send + Sync>> {
    Ok(Limited::new(body, limit).collect().await?.to_bytes())
}

/// The daemon's JSON error body, or one made from whatever text came instead (a proxy, an
/// extractor rejection that escaped the daemon's error mapping).
fn error_body(status: hyper::StatusCode, text: &[u8]) -> ErrorBody {
    if let Ok(body) = serde_json::from_slice::<ErrorBody>(text) {
        return body;
    }
    let text = String::from_utf8_lossy(text);
    let text = text.trim();
    ErrorBody {
        error: if text.is_empty() {
            format!("aegisd answered {status}")
        } else {
            format!("aegisd answered {status}: {text}")
        },
        hint: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies() {
        let json = error_body(
            hyper::StatusCode::CONFLICT,
            br#"{"error":"handle \"web\" is taken","hint":"pick another --name"}"#,
        );
        assert_eq!(json.error, "handle \"web\" is taken");
        assert_eq!(json.hint.as_deref(), Some("pick another --name"));
        let text = error_body(hyper::StatusCode::BAD_REQUEST, b"Failed to parse\n");
        assert_eq!(
            text.error,
            "aegisd answered 400 Bad Request: Failed to parse"
        );
        let empty = error_body(hyper::StatusCode::BAD_GATEWAY, b"");
        assert_eq!(empty.error, "aegisd answered 502 Bad Gateway");
    }
}
