//! The response side of the stream idle timeout: a client that stops reading (a slow-read attack,
//! or an application that hangs with a response half taken) blocks keel's writes to its socket.
//! hyper then stops taking response bytes and keel stops reading the upstream (flow control), so
//! memory stays flat, but the request would hold its upstream connection and its pod's slots
//! forever. Envoy resets such a stream after `stream_idle_timeout`; keel closes the connection once
//! no byte could be written to it for the same timeout (`--body-idle-timeout`).
//!
//! The watch is per connection: a socket that takes no byte stalls every stream on it alike.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// Whether, and since when, writes to one connection are blocked.
#[derive(Debug)]
pub struct WriteStall {
    /// Reference point of `blocked_since`.
    epoch: Instant,
    /// Milliseconds after `epoch` plus one at which the current block started; 0 while writes go
    /// through.
    blocked_since: AtomicU64,
    /// Woken when a block starts.
    notify: Notify,
}

impl Default for WriteStall {
    fn default() -> Self {
        WriteStall {
            epoch: Instant::now(),
            blocked_since: AtomicU64::new(0),
            notify: Notify::new(),
        }
    }
}

impl WriteStall {
    fn blocked(&self) {
        if self.blocked_since.load(Ordering::Relaxed) == 0 {
            let since = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
            self.blocked_since.store(since + 1, Ordering::Release);
            self.notify.notify_waiters();
        }
    }

    fn progressed(&self) {
        if self.blocked_since.load(Ordering::Relaxed) != 0 {
            self.blocked_since.store(0, Ordering::Release);
        }
    }

    /// Completes once writes have been blocked, without a byte going through, for `timeout`.
    pub async fn expired(&self, timeout: Duration) {
        loop {
            let notified = self.notify.notified();
            let since = self.blocked_since.load(Ordering::Acquire);
            if since == 0 {
                notified.await;
                continue;
            }
            let deadline = self.epoch + Duration::from_millis(since - 1) + timeout;
            if Instant::now() >= deadline {
                return;
            }
            // Re-read after the sleep: writes may have gone through (and blocked again) meanwhile.
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A downstream connection whose write progress feeds a [`WriteStall`].
pub struct StallWatched<I> {
    io: I,
    stall: std::sync::Arc<WriteStall>,
}

impl<I> StallWatched<I> {
    /// Watch the writes of `io`.
    pub fn new(io: I, stall: std::sync::Arc<WriteStall>) -> StallWatched<I> {
        StallWatched { io, stall }
    }

    fn note<T>(&self, polled: &Poll<io::Result<T>>) {
        match polled {
            Poll::Pending => self.stall.blocked(),
            Poll::Ready(_) => self.stall.progressed(),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for StallWatched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for StallWatched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.note(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.note(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.note(&polled);
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;

    /// A client that never reads: the writer blocks once the duplex buffer is full, and the stall
    /// expires after the timeout (paused clock), not before.
    #[tokio::test(start_paused = true)]
    async fn a_reader_that_never_reads_expires_the_stall() {
        let (near, _far) = tokio::io::duplex(1024);
        let stall = Arc::new(WriteStall::default());
        let mut watched = StallWatched::new(near, Arc::clone(&stall));
        let writer = tokio::spawn(async move {
            let chunk = [7u8; 4096];
            let _ = watched.write_all(&chunk).await;
        });
        let started = tokio::time::Instant::now();
        stall.expired(Duration::from_secs(5)).await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
            "{waited:?}"
        );
        writer.abort();
    }

    /// Writes that keep going through never expire the stall.
    #[tokio::test(start_paused = true)]
    async fn a_reader_that_keeps_reading_never_expires() {
        use tokio::io::AsyncReadExt;
        let (near, mut far) = tokio::io::duplex(1024);
        let stall = Arc::new(WriteStall::default());
        let mut watched = StallWatched::new(near, Arc::clone(&stall));
        tokio::spawn(async move {
            let chunk = [7u8; 512];
            for _ in 0..100 {
                if watched.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                match far.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        });
        let expired = tokio::time::timeout(
            Duration::from_secs(30),
            stall.expired(Duration::from_secs(2)),
        )
        .await;
        assert!(expired.is_err(), "a reading client's stall expired");
    }
}
