//! Serving the API: one accept loop per listener, one task per connection, all tracked by one
//! [`Server`] so shutdown can wait for them. The main socket, the sockets scoped to one
//! instance ([`super::scoped`]) and the E2B-compatible TCP listener (`crate::e2b`) are served
//! by this one mechanism; what a listener allows is decided by the router it is given, not
//! here.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Wait after a failed accept before the next one. Accepting fails when the daemon is out of
/// descriptors, and a retry at once would fail the same way, in a busy loop; a tenth of a
/// second lets connections end meanwhile and is short for a client.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// What happens to a listener's open connections once it stops accepting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStop {
    /// They are served to their end: the main socket, so `POST /v1/shutdown` still gets its
    /// answer and the requests under way finish while the daemon stops.
    Finish,
    /// They are closed at once: a scoped socket whose instance daemons are gone, so no
    /// stream (`logs?follow=1`, an exec) outlives the daemons it was made for.
    Close,
}

/// The API's accept loops and connections; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Server {
    tasks: TaskTracker,
}

impl Server {
    /// A server with no listener yet.
    pub fn new() -> Server {
        Server::default()
    }

    /// Runs `task` (an API task: [`Server::serve`], or one that prepares it) as a task of this
    /// server, so [`Server::wait`] waits for it.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Accepts connections on `listener` and serves each with `app` until `stop` is cancelled;
    /// then drops the listener and treats the open connections as `on_stop` says.
    pub async fn serve<L: Listener>(
        self,
        listener: L,
        app: Router,
        stop: CancellationToken,
        on_stop: OnStop,
    ) {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept_one() => accepted,
                () = stop.cancelled() => return,
            };
            let stream = match accepted {
                Ok(stream) => stream,
                Err(e) => {
                    // Out of descriptors: a retry at once would fail the same way, in a busy
                    // loop. The router's caps make this rare; say so and wait.
                    tracing::warn!(error = %e, "cannot accept an API connection; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(ACCEPT_RETRY_DELAY) => continue,
                        () = stop.cancelled() => return,
                    }
                }
            };
            let connection = serve_connection(stream, app.clone());
            match on_stop {
                OnStop::Finish => self.tasks.spawn(connection),
                OnStop::Close => {
                    let stop = stop.clone();
                    self.tasks.spawn(async move {
                        tokio::select! {
                            () = connection => {}
                            () = stop.cancelled() => {}
                        }
                    })
                }
            };
        }
    }

    /// Waits up to `grace` for every task of this server to end (daemon shutdown).
    pub async fn wait(&self, grace: Duration) {
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::debug!(
                open = self.tasks.len(),
                "api connections still open at shutdown"
            );
        }
    }
}

/// A listener [`Server::serve`] accepts connections from.
pub trait Listener: Send + 'static {
    /// A connection.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next connection.
    fn accept_one(&self) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Listener for UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept_one(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

impl Listener for TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept_one(&self) -> std::io::Result<Self::Stream> {
        let (stream, _) = self.accept().await?;
        // Connect's streams are small frames each way: Nagle would hold them.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

/// Serves one API connection (HTTP/1.1 or HTTP/2) with `app` until the client closes it.
pub async fn serve_connection<S>(stream: S, app: Router)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app);
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(error = %e, "api connection ended with an error");
    }
}
