//! The request body idle timeout (Envoy's `stream_idle_timeout`, 5 minutes by default): a request
//! whose body stops arriving for that long is reset, so a slow-POST client cannot hold a request,
//! its upstream connection and its pod's request slot forever.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::admin::Stats;
use crate::upstream::pool::BoxError;

/// The error a request body reports once it went idle for too long.
#[derive(Debug, thiserror::Error)]
#[error("request body idle for {0:?}")]
pub struct BodyIdle(Duration);

/// A request body that fails after `timeout` without a frame.
pub struct IdleBody<B> {
    inner: B,
    timeout: Duration,
    /// Armed while the body waits for the client (none for a body that is never waited on).
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    stats: Arc<Stats>,
}

impl<B> IdleBody<B> {
    /// Wrap `inner`.
    pub fn new(inner: B, timeout: Duration, stats: Arc<Stats>) -> IdleBody<B> {
        IdleBody {
            inner,
            timeout,
            sleep: None,
            stats,
        }
    }
}

impl<B> Body for IdleBody<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                // Progress: the next wait starts a new idle period.
                this.sleep = None;
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if sleep.as_mut().poll(cx).is_ready() {
                    this.stats.request_body_idle_timeouts.inc();
                    return Poll::Ready(Some(Err(Box::new(BodyIdle(timeout)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

use std::future::Future as _;

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_fails_after_the_timeout() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let inner = http_body_util::StreamBody::new(tokio_stream_from(rx));
        let stats = Arc::new(Stats::default());
        let mut body = IdleBody::new(inner, Duration::from_secs(5), Arc::clone(&stats));
        let _ = tx.try_send(Ok(Frame::data(Bytes::from_static(b"a"))));
        let first = body.frame().await;
        assert!(matches!(first, Some(Ok(_))));
        // 4 s of silence, a frame, then 4 s again: no timeout, the period restarts.
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(4)).await;
            let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"b")))).await;
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(tx);
        });
        assert!(matches!(body.frame().await, Some(Ok(_))));
        let started = tokio::time::Instant::now();
        assert!(matches!(body.frame().await, Some(Err(_))));
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(stats.request_body_idle_timeouts.get(), 1);
        sender.abort();
    }

    /// A channel of frames as a stream.
    fn tokio_stream_from(
        mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
    ) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> + Unpin {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
