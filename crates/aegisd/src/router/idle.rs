//! A relay that gives up on a connection nobody uses: both directions are copied as by
//! `tokio::io::copy_bidirectional`, and when neither has moved a byte for the idle timeout the
//! connection is closed, so idle clients cannot pin descriptors forever.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both sides closed.
    Closed,
    /// Nothing moved for the idle timeout.
    Idle,
}

/// Relays `a` and `b` until both close or nothing moves for `idle`.
///
/// # Errors
/// The first I/O error of either side.
pub async fn relay<A, B>(a: &mut A, b: &mut B, idle: Duration) -> io::Result<RelayEnd>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut a = Stamped {
        inner: a,
        start,
        last: Arc::clone(&last),
    };
    let copy = tokio::io::copy_bidirectional(&mut a, b);
    tokio::pin!(copy);
    loop {
        let since = Duration::from_millis(last.load(Ordering::Relaxed));
        let deadline = start + since + idle;
        tokio::select! {
            done = &mut copy => return done.map(|_| RelayEnd::Closed),
            () = tokio::time::sleep_until(deadline) => {
                if Duration::from_millis(last.load(Ordering::Relaxed)) == since {
                    return Ok(RelayEnd::Idle);
                }
            }
        }
    }
}

/// One side of a relay that notes when bytes last went through it. Both directions pass
/// through one side, so stamping it is enough.
struct Stamped<'a, T> {
    inner: &'a mut T,
    start: Instant,
    last: Arc<AtomicU64>,
}

impl<T> Stamped<'_, T> {
    fn stamp(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Stamped<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut *self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.stamp();
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stamped<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut *self.inner).poll_write(cx, data);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.stamp();
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn closes_an_idle_relay_but_not_a_busy_one() {
        let (mut client, mut a) = tokio::io::duplex(1024);
        let (mut b, mut server) = tokio::io::duplex(1024);
        let relay =
            tokio::spawn(async move { relay(&mut a, &mut b, Duration::from_secs(60)).await });
        // Traffic every 40 s keeps it open past the 60 s timeout.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_secs(40)).await;
            client.write_all(b"ping").await.unwrap();
            let mut got = [0u8; 4];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"ping");
        }
        assert!(!relay.is_finished());
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert!(matches!(relay.await.unwrap().unwrap(), RelayEnd::Idle));
    }
}
