//! The downstream request body, streamed to the current attempt and recorded so that a retry or a
//! mirror can send it again.
//!
//! Invariants: at most one attempt reads at a time (attempts are sequential), and it is the only
//! reader that pulls from the client. Frames are kept while their total stays within
//! [`RETRY_BUFFER_LIMIT`]; past it the recording is dropped and the request can no longer be retried
//! or mirrored (Envoy's `retry_or_shadow_abandoned`). The body is never buffered before forwarding:
//! the first attempt streams it, so long or interactive bodies (gRPC streams) are not delayed.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::watch;

use crate::upstream::pool::{BoxError, ProxyBody};

/// The most request body bytes kept for retries and mirrors (Envoy's default per-connection buffer
/// limit). Larger bodies are streamed once and not retried.
pub const RETRY_BUFFER_LIMIT: usize = 1 << 20;

#[derive(Debug, Clone)]
enum Recorded {
    Data(Bytes),
    Trailers(HeaderMap),
}

struct Recording {
    source: Option<ProxyBody>,
    frames: Vec<Recorded>,
    bytes: usize,
    limit: usize,
    /// The recording was dropped (too large, or the client's body failed).
    abandoned: bool,
    /// The client's body ended (all frames are in `frames` unless `abandoned`).
    ended: bool,
    /// The client's body broke (a framing error, a reset): the request is the client's fault.
    client_failed: bool,
    size_hint: SizeHint,
}

/// A request body that can be read again by later attempts and copied for mirrors.
#[derive(Clone)]
pub struct RecordedBody {
    shared: Arc<Mutex<Recording>>,
    ended: watch::Receiver<bool>,
    ended_tx: Arc<watch::Sender<bool>>,
}

impl RecordedBody {
    /// Wrap the client's body, recording up to `limit` bytes.
    pub fn new(source: ProxyBody, limit: usize) -> RecordedBody {
        let ended = source.is_end_stream();
        let size_hint = source.size_hint();
        let (tx, rx) = watch::channel(ended);
        RecordedBody {
            shared: Arc::new(Mutex::new(Recording {
                source: (!ended).then_some(source),
                frames: Vec::new(),
                bytes: 0,
                limit,
                abandoned: false,
                ended,
                client_failed: false,
                size_hint,
            })),
            ended: rx,
            ended_tx: Arc::new(tx),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recording> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether reading the client's body failed (e.g. malformed chunked framing): the attempt's
    /// failure is then a client error (400), not an upstream one.
    pub fn client_failed(&self) -> bool {
        self.lock().client_failed
    }

    /// Whether another attempt can still send the whole body.
    pub fn replayable(&self) -> bool {
        !self.lock().abandoned
    }

    /// A body for the next attempt: the recorded frames, then the rest of the client's body.
    pub fn attempt(&self) -> ProxyBody {
        use http_body_util::BodyExt;
        AttemptBody {
            body: self.clone(),
            pos: 0,
        }
        .boxed()
    }

    /// The whole body once the client has sent it (for a mirror), or `None` if it was abandoned or
    /// did not end before `wait` elapsed.
    pub async fn complete(&self, wait: std::time::Duration) -> Option<ProxyBody> {
        use http_body_util::BodyExt;
        let mut ended = self.ended.clone();
        let finished = tokio::time::timeout(wait, ended.wait_for(|e| *e))
            .await
            .ok()?
            .is_ok();
        if !finished {
            return None;
        }
        let rec = self.lock();
        if rec.abandoned {
            return None;
        }
        let frames = rec.frames.clone();
        drop(rec);
        Some(
            ReplayFrames {
                frames: frames.into_iter(),
            }
            .boxed(),
        )
    }
}

/// One attempt's view of the body.
struct AttemptBody {
    body: RecordedBody,
    pos: usize,
}

impl Body for AttemptBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut rec = this.body.lock();
        if let Some(f) = rec.frames.get(this.pos) {
            this.pos += 1;
            return Poll::Ready(Some(Ok(to_frame(f.clone()))));
        }
        if rec.ended {
            return Poll::Ready(None);
        }
        let Some(source) = rec.source.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(source).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                rec.ended = true;
                rec.source = None;
                drop(rec);
                this.body.ended_tx.send_replace(true);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                // The client's body broke: nothing can be replayed.
                rec.abandoned = true;
                rec.client_failed = true;
                rec.frames.clear();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                // A reader that knows the length (HTTP/1 content-length) stops polling after the
                // last byte, so the end is noticed here rather than by a final `None`.
                let finished = rec.source.as_ref().is_some_and(Body::is_end_stream);
                if !rec.abandoned {
                    let len = frame.data_ref().map_or(0, Bytes::len);
                    if rec.bytes + len > rec.limit {
                        rec.abandoned = true;
                        rec.frames.clear();
                    } else {
                        rec.bytes += len;
                        let copy = match frame.data_ref() {
                            Some(d) => Some(Recorded::Data(d.clone())),
                            None => frame.trailers_ref().cloned().map(Recorded::Trailers),
                        };
                        if let Some(c) = copy {
                            rec.frames.push(c);
                            this.pos = rec.frames.len();
                        }
                    }
                }
                if finished {
                    rec.ended = true;
                    rec.source = None;
                    drop(rec);
                    this.body.ended_tx.send_replace(true);
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let rec = self.body.lock();
        rec.ended && self.pos >= rec.frames.len()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.lock().size_hint
    }
}

/// A finished recording played back (mirrors).
struct ReplayFrames {
    frames: std::vec::IntoIter<Recorded>,
}

impl Body for ReplayFrames {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.frames.next().map(|f| Ok(to_frame(f))))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.len() == 0
    }
}

fn to_frame(r: Recorded) -> Frame<Bytes> {
    match r {
        Recorded::Data(d) => Frame::data(d),
        Recorded::Trailers(t) => Frame::trailers(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    fn source(chunks: &[&'static str]) -> ProxyBody {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames)).boxed()
    }

    async fn collect(b: ProxyBody) -> Bytes {
        b.collect().await.map(|c| c.to_bytes()).unwrap_or_default()
    }

    #[tokio::test]
    async fn a_second_attempt_gets_the_same_bytes() {
        let body = RecordedBody::new(source(&["ab", "cd", "ef"]), 1024);
        assert_eq!(collect(body.attempt()).await, "abcdef");
        assert!(body.replayable());
        assert_eq!(collect(body.attempt()).await, "abcdef");
        let mirror = body.complete(std::time::Duration::from_millis(10)).await;
        assert_eq!(collect(mirror.expect("complete")).await, "abcdef");
    }

    #[tokio::test]
    async fn a_half_read_attempt_is_continued_by_the_next() {
        let body = RecordedBody::new(source(&["ab", "cd", "ef"]), 1024);
        let mut first = body.attempt();
        let f = first.frame().await;
        assert!(matches!(f, Some(Ok(_))));
        drop(first);
        assert_eq!(collect(body.attempt()).await, "abcdef");
    }

    #[tokio::test]
    async fn too_large_bodies_stream_once_and_are_not_replayable() {
        let body = RecordedBody::new(source(&["abcd", "efgh"]), 6);
        assert_eq!(collect(body.attempt()).await, "abcdefgh");
        assert!(!body.replayable());
        assert!(body
            .complete(std::time::Duration::from_millis(10))
            .await
            .is_none());
    }

    #[tokio::test]
    async fn empty_bodies_are_complete_at_once() {
        let empty = Full::new(Bytes::new()).map_err(|e| match e {}).boxed();
        let body = RecordedBody::new(empty, 1024);
        assert!(body.attempt().is_end_stream());
        assert!(body
            .complete(std::time::Duration::from_millis(1))
            .await
            .is_some());
    }
}
