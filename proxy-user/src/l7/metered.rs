//! The response body that records a request's Istio metrics when its last byte has gone (or the
//! client stopped reading): duration to the last byte, body sizes, and a gRPC status sent in
//! trailers.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::metrics::{Destination, HttpKey, HttpResult, Metrics, RequestProtocol};
use crate::outcome::ResponseFlags;
use crate::routing::Target;
use crate::state::NodeState;
use crate::upstream::pool::{BoxError, ProxyBody};

/// `Target` host for `BlackHoleCluster` replies, which have no target.
pub const BLACK_HOLE: &str = "BlackHoleCluster";

/// Where a request went, filled in while it is served.
#[derive(Default)]
pub struct Served {
    /// The routed target (a `Missing` one counts as none).
    pub target: Option<Target>,
    /// The unknown destination was blocked (`BlackHoleCluster`).
    pub blocked: bool,
    /// The endpoint that answered.
    pub endpoint: Option<SocketAddr>,
}

/// Everything needed to record one request once its response is done.
pub struct Finish {
    pub metrics: Arc<Metrics>,
    pub node: Arc<NodeState>,
    pub source: u64,
    pub original_dst: SocketAddr,
    pub served: Served,
    pub flags: ResponseFlags,
    pub protocol: RequestProtocol,
    pub code: u16,
    pub grpc_status: Option<u32>,
    pub started: Instant,
    pub request_bytes: Arc<AtomicU64>,
}

impl Finish {
    fn record(self, response_bytes: u64) {
        let cluster = match &self.served.target {
            Some(Target::Cluster(c)) => Arc::as_ptr(c) as usize,
            // Distinct from "nothing routed" so the two never share a cached label set.
            _ if self.served.blocked => 1,
            _ => 0,
        };
        let host = match &self.served.target {
            Some(Target::Cluster(c)) => Some(c.key.host.as_str()),
            _ if self.served.blocked => Some(BLACK_HOLE),
            _ => None,
        };
        let key = HttpKey {
            source: self.source,
            original_dst: self.original_dst,
            cluster,
            endpoint: self.served.endpoint,
            protocol: self.protocol,
            result: HttpResult {
                code: self.code,
                grpc_status: if self.protocol == RequestProtocol::Grpc {
                    self.grpc_status
                } else {
                    None
                },
            },
            flags: self.flags,
        };
        let dest = Destination {
            host,
            endpoint: self.served.endpoint,
        };
        if let Some(series) = self.metrics.http_series(&self.node, key, dest) {
            series.record(
                self.started.elapsed(),
                self.request_bytes.load(Ordering::Relaxed),
                response_bytes,
            );
        }
    }
}

/// A response body that records its request when it ends or is dropped.
pub struct MeteredBody {
    inner: ProxyBody,
    bytes: u64,
    finish: Option<Finish>,
}

impl MeteredBody {
    /// Wrap `inner`; an already empty body records at once.
    pub fn new(inner: ProxyBody, finish: Finish) -> MeteredBody {
        let mut body = MeteredBody {
            inner,
            bytes: 0,
            finish: Some(finish),
        };
        if body.inner.is_end_stream() {
            body.done();
        }
        body
    }

    fn done(&mut self) {
        if let Some(finish) = self.finish.take() {
            finish.record(self.bytes);
        }
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        self.done();
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                } else if let Some(trailers) = frame.trailers_ref() {
                    let status = trailers
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|s| s.trim().parse().ok());
                    if let (Some(status), Some(finish)) = (status, self.finish.as_mut()) {
                        finish.grpc_status = Some(status);
                    }
                }
                if self.inner.is_end_stream() {
                    self.done();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.done(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
