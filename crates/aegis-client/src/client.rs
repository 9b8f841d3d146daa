//! [`Client`]: one method per `aegisd` route, typed with the bodies of [`aegis_proto::api`].

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::{Method, StatusCode};
use serde::de::DeserializeOwned;

use aegis_proto::api::{
    CreateInstance, Deleted, ExecEvent, ExecInfo, ExecRequest, Instance, InstanceStatus, LogEntry,
    Status, TerminalSize, API_PREFIX, EXEC_ID_HEADER, EXEC_UPGRADE_PROTOCOL,
};

use crate::error::ClientError;
use crate::ndjson::NdjsonStream;
use crate::paths;
use crate::transport::{self, Exchange};

/// Deadline of a request that is not a stream. Actions such as `start` or `restart` wait for a
/// guest to boot, which takes 5–10 s under software emulation and is bounded by the daemon's own
/// boot deadline; this only catches a daemon that stopped answering.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Largest JSON answer read (an instance list with thousands of entries fits easily).
pub(crate) const MAX_JSON_BODY: usize = 64 * 1024 * 1024;

/// A client of one daemon, identified by its socket.
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) socket: PathBuf,
    timeout: Duration,
}

/// The answer to [`Client::create_instance`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The instance.
    pub instance: Instance,
    /// True when the handle named an existing stopped instance, which was started again with its
    /// stored configuration (HTTP 200 instead of 201).
    pub restarted: bool,
}

/// A lifecycle action on an instance (`POST /v1/instances/{id}/{action}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceAction {
    /// Boot a stopped instance (and enable it again if it was disabled).
    Start,
    /// Stop the VM; traffic or exec wakes it later.
    Stop,
    /// Stop the VM and never wake it until started again.
    Disable,
    /// Stop, then start.
    Restart,
    /// Freeze the vCPUs, keep memory.
    Pause,
    /// Unfreeze a paused instance.
    Resume,
}

impl InstanceAction {
    /// The route segment.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceAction::Start => "start",
            InstanceAction::Stop => "stop",
            InstanceAction::Disable => "disable",
            InstanceAction::Restart => "restart",
            InstanceAction::Pause => "pause",
            InstanceAction::Resume => "resume",
        }
    }
}

/// Filters of `GET /v1/instances/{id}/logs`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogsQuery {
    /// Keep the stream open for new lines until the instance stops.
    pub follow: bool,
    /// Only lines at or after this RFC 3339 time.
    pub since: Option<String>,
    /// Only the last `tail` lines (before following).
    pub tail: Option<u64>,
    /// Only the lines of this exec.
    pub exec_id: Option<String>,
}

impl LogsQuery {
    fn to_query(&self) -> String {
        let mut params = Vec::new();
        if self.follow {
            params.push(("follow", "1".to_owned()));
        }
        if let Some(since) = &self.since {
            params.push(("since", since.clone()));
        }
        if let Some(tail) = self.tail {
            params.push(("tail", tail.to_string()));
        }
        if let Some(exec_id) = &self.exec_id {
            params.push(("exec_id", exec_id.clone()));
        }
        query_string(&params)
    }
}

impl Client {
    /// A client of the daemon listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// A client of the daemon of `$AEGIS_HOME` (default `~/.aegis`).
    pub fn from_env() -> Client {
        Client::new(paths::socket_in(&paths::home_from_env()))
    }

    /// The same client with another deadline for requests that are not streams (and for the
    /// response head of streams).
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /v1/status`.
    ///
    /// # Errors
    /// [`ClientError::NotRunning`] when no daemon answers; see [`ClientError`].
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.json(Method::GET, route("/status"), None).await
    }

    /// `POST /v1/instances`.
    ///
    /// # Errors
    /// 400 for invalid fields, 409 when the handle names a running instance; see [`ClientError`].
    pub async fn create_instance(&self, body: &CreateInstance) -> Result<Created, ClientError> {
        let path = route("/instances");
        let (method, shown) = (Method::POST, path.clone());
        self.within(&method, &shown, async {
            let exchange =
                transport::send(&self.socket, Method::POST, path, Some(encode(body))).await?;
            let restarted = exchange.response.status() == StatusCode::OK;
            let instance = exchange.json(MAX_JSON_BODY).await?;
            Ok(Created {
                instance,
                restarted,
            })
        })
        .await
    }

    /// `GET /v1/instances[?state=…]`.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn list_instances(
        &self,
        state: Option<InstanceStatus>,
    ) -> Result<Vec<Instance>, ClientError> {
        let query = match state {
            Some(state) => query_string(&[("state", state.as_str().to_owned())]),
            None => String::new(),
        };
        self.json(Method::GET, route(&format!("/instances{query}")), None)
            .await
    }

    /// `GET /v1/instances/{id-or-handle}`.
    ///
    /// # Errors
    /// 404 for an unknown instance; see [`ClientError`].
    pub async fn instance(&self, id_or_handle: &str) -> Result<Instance, ClientError> {
        self.json(Method::GET, instance_route(id_or_handle, ""), None)
            .await
    }

    /// `DELETE /v1/instances/{id-or-handle}`: stops the VM if it runs and removes the instance,
    /// its disk and its logs.
    ///
    /// # Errors
    /// 404 for an unknown instance; see [`ClientError`].
    pub async fn delete_instance(&self, id_or_handle: &str) -> Result<Deleted, ClientError> {
        self.json(Method::DELETE, instance_route(id_or_handle, ""), None)
            .await
    }

    /// `POST /v1/instances/{id-or-handle}/{action}`.
    ///
    /// # Errors
    /// 404 for an unknown instance, 409 for an action the state does not allow; see
    /// [`ClientError`].
    pub async fn instance_action(
        &self,
        id_or_handle: &str,
        action: InstanceAction,
    ) -> Result<Instance, ClientError> {
        let path = instance_route(id_or_handle, &format!("/{}", action.as_str()));
        self.json(Method::POST, path, None).await
    }

    /// `POST /v1/instances/{id-or-handle}/exec`: a stream of [`ExecEvent`]s, `Started` first and
    /// `Done` last.
    ///
    /// # Errors
    /// 400 for an empty command, 404 for an unknown instance, 409 for a disabled one; see
    /// [`ClientError`]. Errors after the stream started arrive as stream items.
    pub async fn exec(
        &self,
        id_or_handle: &str,
        body: &ExecRequest,
    ) -> Result<NdjsonStream<ExecEvent>, ClientError> {
        let path = instance_route(id_or_handle, "/exec");
        let exchange = self
            .exchange(Method::POST, path, Some(encode(body)))
            .await?;
        Ok(NdjsonStream::new(exchange))
    }

    /// `POST /v1/instances/{id-or-handle}/exec` with `"stdin": true` over an upgraded
    /// connection: the exec's records, and the process's stdin. Write the input to the
    /// [`ExecInput`] and shut it down to end it (the process then reads end-of-file).
    ///
    /// # Errors
    /// As [`Client::exec`]; and when the daemon does not upgrade the connection.
    pub async fn exec_with_stdin(
        &self,
        id_or_handle: &str,
        body: &ExecRequest,
    ) -> Result<(NdjsonStream<ExecEvent>, ExecInput), ClientError> {
        let path = instance_route(id_or_handle, "/exec");
        let body = ExecRequest {
            stdin: true,
            ..body.clone()
        };
        let upgraded = self
            .upgrade(path, transport::Outgoing::Json(encode(&body)))
            .await?;
        let (read, write) = tokio::io::split(upgraded.io);
        Ok((
            NdjsonStream::upgraded(upgraded.method, upgraded.path, read, upgraded.conn),
            ExecInput(write),
        ))
    }

    /// `POST /v1/instances/{id-or-handle}/exec` with `tty`, upgrading the connection: the
    /// process runs on a terminal whose raw bytes the returned [`TerminalStream`] carries both
    /// ways. It ends (reads end-of-file) once the process has ended; [`Client::wait_exec`] then
    /// says how. Resize with [`Client::resize_terminal`].
    ///
    /// # Errors
    /// As [`Client::exec`]; and when the daemon does not upgrade the connection.
    pub async fn exec_terminal(
        &self,
        id_or_handle: &str,
        body: &ExecRequest,
    ) -> Result<TerminalStream, ClientError> {
        let path = instance_route(id_or_handle, "/exec");
        let body = ExecRequest {
            tty: Some(body.tty.unwrap_or_default()),
            detach: false,
            ..body.clone()
        };
        self.upgrade(path, transport::Outgoing::Json(encode(&body)))
            .await
            .map(TerminalStream::from)
    }

    /// `POST /v1/instances/{id-or-handle}/execs/{exec_id}/terminal`: attaches to the terminal of
    /// a running exec started with `tty`, as [`Client::exec_terminal`] gives it.
    ///
    /// # Errors
    /// 409 when it has no terminal or has ended; see [`ClientError`].
    pub async fn attach_terminal(
        &self,
        id_or_handle: &str,
        exec_id: &str,
    ) -> Result<TerminalStream, ClientError> {
        let path = exec_route(id_or_handle, exec_id, "/terminal");
        self.upgrade(path, transport::Outgoing::Empty)
            .await
            .map(TerminalStream::from)
    }

    /// `POST /v1/instances/{id-or-handle}/execs/{exec_id}/resize`.
    ///
    /// # Errors
    /// 400 for a size out of range, 409 when it has no terminal or has ended; see
    /// [`ClientError`].
    pub async fn resize_terminal(
        &self,
        id_or_handle: &str,
        exec_id: &str,
        size: TerminalSize,
    ) -> Result<ExecInfo, ClientError> {
        let path = exec_route(id_or_handle, exec_id, "/resize");
        self.json(Method::POST, path, Some(encode(&size))).await
    }

    /// `POST /v1/instances/{id-or-handle}/terminal`: attaches to the terminal of the primary
    /// process of an instance created with `tty` (`aegis run -t`), waking it first.
    ///
    /// # Errors
    /// 409 when it has no terminal, or another connection is attached; see [`ClientError`].
    pub async fn attach_primary_terminal(
        &self,
        id_or_handle: &str,
    ) -> Result<TerminalStream, ClientError> {
        let path = instance_route(id_or_handle, "/terminal");
        self.upgrade(path, transport::Outgoing::Empty)
            .await
            .map(TerminalStream::from)
    }

    /// `POST /v1/instances/{id-or-handle}/resize`: the primary process's terminal size.
    ///
    /// # Errors
    /// 400 for a size out of range, 409 when it has no terminal; see [`ClientError`].
    pub async fn resize_primary_terminal(
        &self,
        id_or_handle: &str,
        size: TerminalSize,
    ) -> Result<(), ClientError> {
        let path = instance_route(id_or_handle, "/resize");
        drop(
            self.exchange(Method::POST, path, Some(encode(&size)))
                .await?,
        );
        Ok(())
    }

    /// A POST that upgrades its connection to [`EXEC_UPGRADE_PROTOCOL`].
    async fn upgrade(
        &self,
        path: String,
        body: transport::Outgoing,
    ) -> Result<Upgraded, ClientError> {
        let exchange = self
            .within(
                &Method::POST,
                &path,
                transport::send_upgrading(
                    &self.socket,
                    Method::POST,
                    path.clone(),
                    body,
                    Some(EXEC_UPGRADE_PROTOCOL),
                ),
            )
            .await?;
        let transport::Exchange {
            method,
            path,
            response,
            conn,
        } = exchange;
        let exec_id = response
            .headers()
            .get(EXEC_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let upgraded =
            hyper::upgrade::on(response)
                .await
                .map_err(|source| ClientError::Request {
                    method: method.clone(),
                    path: path.clone(),
                    source,
                })?;
        Ok(Upgraded {
            method,
            path,
            exec_id,
            io: hyper_util::rt::TokioIo::new(upgraded),
            conn,
        })
    }

    /// `POST /v1/instances/{id-or-handle}/exec` with `"detach": true`: starts the process in
    /// the background and answers as soon as it runs.
    ///
    /// # Errors
    /// As [`Client::exec`].
    pub async fn exec_detached(
        &self,
        id_or_handle: &str,
        body: &ExecRequest,
    ) -> Result<ExecInfo, ClientError> {
        let body = ExecRequest {
            detach: true,
            ..body.clone()
        };
        let path = instance_route(id_or_handle, "/exec");
        self.json(Method::POST, path, Some(encode(&body))).await
    }

    /// `GET /v1/instances/{id-or-handle}/execs`: the processes started through the API.
    ///
    /// # Errors
    /// 404 for an unknown instance; see [`ClientError`].
    pub async fn execs(&self, id_or_handle: &str) -> Result<Vec<ExecInfo>, ClientError> {
        self.json(Method::GET, instance_route(id_or_handle, "/execs"), None)
            .await
    }

    /// `GET /v1/instances/{id-or-handle}/execs/{exec_id}`.
    ///
    /// # Errors
    /// 404 for an unknown instance or exec; see [`ClientError`].
    pub async fn exec_info(
        &self,
        id_or_handle: &str,
        exec_id: &str,
    ) -> Result<ExecInfo, ClientError> {
        self.json(Method::GET, exec_route(id_or_handle, exec_id, ""), None)
            .await
    }

    /// `POST /v1/instances/{id-or-handle}/execs/{exec_id}/wait`: answers when the process no
    /// longer runs, however long that takes (no client timeout applies).
    ///
    /// # Errors
    /// 404 for an unknown instance or exec; see [`ClientError`].
    pub async fn wait_exec(
        &self,
        id_or_handle: &str,
        exec_id: &str,
    ) -> Result<ExecInfo, ClientError> {
        let path = exec_route(id_or_handle, exec_id, "/wait");
        transport::send(&self.socket, Method::POST, path, None)
            .await?
            .json(MAX_JSON_BODY)
            .await
    }

    /// `POST /v1/instances/{id-or-handle}/execs/{exec_id}/signal`.
    ///
    /// # Errors
    /// 400 for an unknown signal, 409 when the process no longer runs; see [`ClientError`].
    pub async fn signal_exec(
        &self,
        id_or_handle: &str,
        exec_id: &str,
        signal: &str,
    ) -> Result<ExecInfo, ClientError> {
        let body = aegis_proto::api::SignalRequest {
            signal: signal.to_owned(),
        };
        let path = exec_route(id_or_handle, exec_id, "/signal");
        self.json(Method::POST, path, Some(encode(&body))).await
    }

    /// `POST /v1/instances/{id-or-handle}/execs/{exec_id}/stdin`: streams `input` to the
    /// process's stdin; its end closes the process's stdin unless `keep_open`. Returns the bytes
    /// the process was given. No client timeout applies (the input may be long).
    ///
    /// # Errors
    /// 409 when the process takes no input; see [`ClientError`].
    pub async fn exec_stdin(
        &self,
        id_or_handle: &str,
        exec_id: &str,
        input: impl tokio::io::AsyncRead + Send + 'static,
        keep_open: bool,
    ) -> Result<u64, ClientError> {
        let path = exec_route(
            id_or_handle,
            exec_id,
            &format!("/stdin?close={}", !keep_open),
        );
        self.feed(path, input).await
    }

    /// `POST /v1/instances/{id-or-handle}/stdin`: streams `input` to the primary process of an
    /// instance created with `stdin`; its end closes the process's stdin. No client timeout.
    ///
    /// # Errors
    /// 409 when the process takes no input; see [`ClientError`].
    pub async fn primary_stdin(
        &self,
        id_or_handle: &str,
        input: impl tokio::io::AsyncRead + Send + 'static,
    ) -> Result<u64, ClientError> {
        self.feed(instance_route(id_or_handle, "/stdin"), input)
            .await
    }

    /// Streams `input` as the body of a stdin route; returns the bytes the process was given.
    async fn feed(
        &self,
        path: String,
        input: impl tokio::io::AsyncRead + Send + 'static,
    ) -> Result<u64, ClientError> {
        #[derive(serde::Deserialize)]
        struct Written {
            bytes: u64,
        }
        let written: Written = self.upload(Method::POST, path, input).await?;
        Ok(written.bytes)
    }

    /// `GET /v1/instances/{id-or-handle}/logs`: a stream of [`LogEntry`]s. With
    /// [`LogsQuery::follow`] it ends when the instance reaches `stopped`.
    ///
    /// # Errors
    /// 400 for a bad filter, 404 for an unknown instance; see [`ClientError`].
    pub async fn logs(
        &self,
        id_or_handle: &str,
        query: &LogsQuery,
    ) -> Result<NdjsonStream<LogEntry>, ClientError> {
        let path = instance_route(id_or_handle, &format!("/logs{}", query.to_query()));
        let exchange = self.exchange(Method::GET, path, None).await?;
        Ok(NdjsonStream::new(exchange))
    }

    /// `POST /v1/instances/{id-or-handle}/timeout`: a new lifetime from now, or none.
    ///
    /// # Errors
    /// 400 for a lifetime out of range, 404 for an unknown instance; see [`ClientError`].
    pub async fn set_timeout(
        &self,
        id_or_handle: &str,
        body: &aegis_proto::api::SetTimeout,
    ) -> Result<Instance, ClientError> {
        let path = instance_route(id_or_handle, "/timeout");
        self.json(Method::POST, path, Some(encode(body))).await
    }

    /// `POST /v1/instances/{id-or-handle}/expose`: exposes a guest port through the router.
    ///
    /// # Errors
    /// 409 when the public port is taken or the guest port already exposed; see
    /// [`ClientError`].
    pub async fn expose(
        &self,
        id_or_handle: &str,
        body: &aegis_proto::api::ExposeRequest,
    ) -> Result<aegis_proto::api::Endpoint, ClientError> {
        let path = instance_route(id_or_handle, "/expose");
        self.json(Method::POST, path, Some(encode(body))).await
    }

    /// `DELETE /v1/instances/{id-or-handle}/expose/{guest_port}`.
    ///
    /// # Errors
    /// 404 when the port is not exposed; see [`ClientError`].
    pub async fn unexpose(&self, id_or_handle: &str, guest_port: u16) -> Result<(), ClientError> {
        let path = instance_route(id_or_handle, &format!("/expose/{guest_port}"));
        let _: serde_json::Value = self.json(Method::DELETE, path, None).await?;
        Ok(())
    }

    /// `POST /v1/shutdown`: the daemon answers, then stops every VM cleanly and exits.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn shutdown(&self) -> Result<(), ClientError> {
        let exchange = self
            .exchange(Method::POST, route("/shutdown"), None)
            .await?;
        drop(exchange);
        Ok(())
    }

    /// `GET /v1/openapi.json`: the daemon's OpenAPI document.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        self.json(Method::GET, route("/openapi.json"), None).await
    }

    pub(crate) async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: String,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let (m, p) = (method.clone(), path.clone());
        self.within(&m, &p, async {
            let exchange = transport::send(&self.socket, method, path, body).await?;
            exchange.json(MAX_JSON_BODY).await
        })
        .await
    }

    /// Sends a request and waits, within the deadline, for the response head only.
    pub(crate) async fn exchange(
        &self,
        method: Method,
        path: String,
        body: Option<Vec<u8>>,
    ) -> Result<Exchange, ClientError> {
        let (m, p) = (method.clone(), path.clone());
        self.within(&m, &p, transport::send(&self.socket, method, path, body))
            .await
    }

    async fn within<T>(
        &self,
        method: &Method,
        path: &str,
        work: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| {
                Err(ClientError::Timeout {
                    method: method.clone(),
                    path: path.to_owned(),
                    after: self.timeout,
                })
            })
    }
}

pub(crate) fn encode<T: serde::Serialize>(body: &T) -> Vec<u8> {
    serde_json::to_vec(body).expect("API request bodies are plain data and always serialize")
}

pub(crate) fn route(rest: &str) -> String {
    format!("{API_PREFIX}{rest}")
}

pub(crate) fn instance_route(id_or_handle: &str, rest: &str) -> String {
    route(&format!(
        "/instances/{}{rest}",
        percent_encode(id_or_handle)
    ))
}

fn exec_route(id_or_handle: &str, exec_id: &str, rest: &str) -> String {
    instance_route(
        id_or_handle,
        &format!("/execs/{}{rest}", percent_encode(exec_id)),
    )
}

pub(crate) fn query_string(params: &[(&str, String)]) -> String {
    let mut out = String::new();
    for (i, (key, value)) in params.iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        out.push_str(key);
        out.push('=');
        out.push_str(&percent_encode(value));
    }
    out
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so a value is safe both as a
/// path segment and in a query (where `+` would otherwise read as a space).
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_encoded() {
        assert_eq!(instance_route("web", "/stop"), "/v1/instances/web/stop");
        assert_eq!(instance_route("a/b c", ""), "/v1/instances/a%2Fb%20c");
    }

    #[test]
    fn logs_query() {
        assert_eq!(LogsQuery::default().to_query(), "");
        let q = LogsQuery {
            follow: true,
            since: Some("2024-05-01T10:00:00+02:00".to_owned()),
            tail: Some(10),
            exec_id: Some("exec-1".to_owned()),
        };
        assert_eq!(
            q.to_query(),
            "?follow=1&since=2024-05-01T10%3A00%3A00%2B02%3A00&tail=10&exec_id=exec-1"
        );
    }

    #[tokio::test]
    async fn missing_socket_is_not_running() {
        let dir = std::env::temp_dir().join(format!("aegis-client-test-{}", std::process::id()));
        let err = Client::new(dir.join("aegisd.sock"))
            .status()
            .await
            .unwrap_err();
        assert!(err.is_not_running(), "{err:?}");
    }
}

/// An upgraded connection, and what the response said.
struct Upgraded {
    method: Method,
    path: String,
    exec_id: Option<String>,
    io: hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>,
    conn: transport::ConnGuard,
}

/// A connection to an exec's terminal ([`Client::exec_terminal`], [`Client::attach_terminal`]):
/// read the terminal's output from it, write its input to it.
#[derive(Debug)]
pub struct TerminalStream {
    /// The exec whose terminal this is (the daemon names it when it starts the process).
    pub exec_id: Option<String>,
    io: hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>,
    _conn: transport::ConnGuard,
}

impl From<Upgraded> for TerminalStream {
    fn from(upgraded: Upgraded) -> TerminalStream {
        TerminalStream {
            exec_id: upgraded.exec_id,
            io: upgraded.io,
            _conn: upgraded.conn,
        }
    }
}

impl tokio::io::AsyncRead for TerminalStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TerminalStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The stdin of an exec started with [`Client::exec_with_stdin`]: write to it, and shut it
/// down (`AsyncWriteExt::shutdown`) to close the process's stdin.
#[derive(Debug)]
pub struct ExecInput(tokio::io::WriteHalf<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>);

impl tokio::io::AsyncWrite for ExecInput {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
