//! Refusals that reach a client still sending its body. A handler that refuses a streamed
//! upload (`.../stdin` of a process without one, `PUT .../files` to a missing directory)
//! answers before it reads the body; closing the connection with the client's bytes unread
//! resets it, and the client then sees a broken pipe instead of the answer. So the rest of a
//! refused request's body is read and dropped, up to [`DRAIN_LIMIT`] bytes within
//! [`DRAIN_WAIT`], before the answer goes out. A larger body still gets its connection closed:
//! the client then learns only that the request failed.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use futures::StreamExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::oneshot;

/// At most this much of a refused body is read.
pub const DRAIN_LIMIT: usize = 4 * 1024 * 1024;
/// For at most this long.
pub const DRAIN_WAIT: Duration = Duration::from_secs(2);

/// The middleware: gives the handler a body that hands itself back when dropped unfinished,
/// and drains it when the answer is an error.
pub async fn drain_refused(request: Request, next: Next) -> Response {
    let (back, returned) = oneshot::channel();
    let (parts, body) = request.into_parts();
    let body = Body::new(Returning {
        inner: Some(body),
        back: Some(back),
    });
    let response = next.run(Request::from_parts(parts, body)).await;
    let refused = response.status().is_client_error() || response.status().is_server_error();
    if refused {
        // Only a body the handler has let go of: one still held (by a task it started) is
        // not waited for.
        let mut returned = returned;
        if let Ok(rest) = returned.try_recv() {
            drain(rest).await;
        }
    }
    response
}

async fn drain(body: Body) {
    let started = Instant::now();
    let mut stream = body.into_data_stream();
    let mut read = 0;
    while read < DRAIN_LIMIT {
        let left = DRAIN_WAIT.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.next()).await {
            Ok(Some(Ok(chunk))) => read += chunk.len(),
            _ => break,
        }
    }
}

/// A request body that sends itself back through `back` when dropped before its end.
struct Returning {
    inner: Option<Body>,
    back: Option<oneshot::Sender<Body>>,
}

impl HttpBody for Returning {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        match self.get_mut().inner.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if let (Some(body), Some(back)) = (self.inner.take(), self.back.take()) {
            if !body.is_end_stream() {
                let _ = back.send(body);
            }
        }
    }
}
