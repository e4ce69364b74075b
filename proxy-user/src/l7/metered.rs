//! The response body that records a request's Istio metrics and its access log line when its last
//! byte has gone (or the client stopped reading): duration to the last byte, body sizes, and a gRPC
//! status sent in trailers. One record of the finished request feeds both.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::metrics::access_log::Entry;
use crate::metrics::log_sink::Sink;
use crate::metrics::span::{SpanEnd, SpanStart};
use crate::metrics::{Destination, HttpKey, HttpResult, Metrics, RequestProtocol};
use crate::outcome::{ResponseFlag, ResponseFlags};
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
    /// The access log is on: name the route (`route_name`).
    pub logging: bool,
    /// `%ROUTE_NAME%`, when logging.
    pub route_name: Option<String>,
}

impl Served {
    /// The Istio cluster name for `%UPSTREAM_CLUSTER%`.
    pub fn cluster_name(&self) -> Option<String> {
        cluster_name(self.target.as_ref(), self.blocked)
    }
}

/// The Istio cluster name of a routed target (`PassthroughCluster`, `BlackHoleCluster` for unknown
/// destinations); `None` when nothing was routed or the cluster does not exist.
pub fn cluster_name(target: Option<&Target>, blocked: bool) -> Option<String> {
    match target {
        Some(Target::Cluster(c)) if c.key.port == 0 => Some(c.key.host.clone()),
        Some(Target::Cluster(c)) => Some(c.key.to_string()),
        _ if blocked => Some(BLACK_HOLE.to_string()),
        _ => None,
    }
}

/// What the access log needs from a request before it is consumed: taken only when the log is on.
pub struct LogStart {
    sink: Arc<Sink>,
    start_time: SystemTime,
    protocol: &'static str,
    request: Vec<Option<String>>,
    response: Vec<Option<String>>,
}

impl LogStart {
    /// Capture the request headers the format reads (pseudo headers included).
    pub fn capture<B>(sink: Arc<Sink>, req: &http::Request<B>, authority: &str) -> LogStart {
        let request = sink
            .format()
            .request_headers()
            .iter()
            .map(|name| match name.as_str() {
                ":method" => Some(req.method().as_str().to_string()),
                ":path" => Some(
                    req.uri()
                        .path_and_query()
                        .map_or("/", |p| p.as_str())
                        .to_string(),
                ),
                ":authority" => Some(authority.to_string()),
                ":scheme" => Some("http".to_string()),
                other => req
                    .headers()
                    .get(other)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            })
            .collect();
        LogStart {
            sink,
            start_time: SystemTime::now(),
            protocol: match req.version() {
                http::Version::HTTP_2 => "HTTP/2",
                http::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            request,
            response: Vec::new(),
        }
    }

    /// Capture the response headers the format reads.
    pub fn response(&mut self, status: u16, headers: &http::HeaderMap) {
        self.response = self
            .sink
            .format()
            .response_headers()
            .iter()
            .map(|name| match name.as_str() {
                ":status" => Some(status.to_string()),
                other => headers
                    .get(other)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            })
            .collect();
    }
}

/// Envoy's `%RESPONSE_CODE_DETAILS%` for a request's outcome.
fn code_details(flags: ResponseFlags, answered: bool) -> &'static str {
    use ResponseFlag as F;
    if answered {
        return "via_upstream";
    }
    let by_flag = [
        (F::NoRouteFound, "route_not_found"),
        (F::NoClusterFound, "cluster_not_found"),
        (F::NoHealthyUpstream, "no_healthy_upstream"),
        (
            F::UpstreamOverflow,
            "upstream_reset_before_response_started{overflow}",
        ),
        (
            F::UpstreamConnectionFailure,
            "upstream_reset_before_response_started{connection_failure}",
        ),
        (
            F::UpstreamConnectionTermination,
            "upstream_reset_before_response_started{connection_termination}",
        ),
        (
            F::UpstreamRemoteReset,
            "upstream_reset_before_response_started{remote_reset}",
        ),
        (F::UpstreamRequestTimeout, "response_timeout"),
        (F::FaultInjected, "fault_filter_abort"),
        (F::DownstreamProtocolError, "downstream_protocol_error"),
        (F::RateLimited, "local_rate_limited"),
        (F::OverloadManager, "overload"),
    ];
    by_flag
        .iter()
        .find(|(f, _)| flags.has(*f))
        .map_or("direct_response", |(_, d)| d)
}

/// Everything needed to record one request once its response is done.
pub struct Finish {
    pub metrics: Arc<Metrics>,
    pub node: Arc<NodeState>,
    pub source: u64,
    pub original_dst: SocketAddr,
    /// The client pod's address (`%DOWNSTREAM_REMOTE_ADDRESS%`).
    pub peer: SocketAddr,
    pub served: Served,
    pub flags: ResponseFlags,
    pub protocol: RequestProtocol,
    pub code: u16,
    pub grpc_status: Option<u32>,
    pub started: Instant,
    pub request_bytes: Arc<AtomicU64>,
    /// Set when the access log is on.
    pub log: Option<Box<LogStart>>,
    /// Set when spans are exported.
    pub span: Option<Box<SpanStart>>,
}

impl Finish {
    fn record(self, response_bytes: u64) {
        let request_bytes = self.request_bytes.load(Ordering::Relaxed);
        let duration = self.started.elapsed();
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
            series.record(duration, request_bytes, response_bytes);
        }
        if let Some(start) = self.span {
            let (source_workload, source_namespace) = self
                .node
                .pod_by_cgroup
                .get(&self.source)
                .and_then(|p| self.node.snapshot.pods.get(*p))
                .map(|pod| {
                    let labels = crate::metrics::labels::PeerLabels::of_pod(pod);
                    (labels.workload.to_string(), labels.namespace.to_string())
                })
                .unwrap_or_else(|| ("unknown".to_string(), "unknown".to_string()));
            let upstream_host_port = match &self.served.target {
                Some(Target::Cluster(c)) if c.key.port != 0 => {
                    Some(format!("{}:{}", c.key.host, c.key.port))
                }
                _ => None,
            };
            self.metrics.tracer.finish(
                *start,
                SpanEnd {
                    code: self.code,
                    flags: self.flags,
                    upstream_cluster: self.served.cluster_name(),
                    upstream_host_port,
                    upstream_address: self.served.endpoint,
                    source_workload,
                    source_namespace,
                    peer: self.peer,
                    request_size: request_bytes,
                    response_size: response_bytes,
                },
            );
        }
        if let Some(log) = self.log {
            let log = *log;
            let entry = Entry {
                start_time: log.start_time,
                protocol: Some(log.protocol),
                code: self.code,
                flags: self.flags,
                details: Some(code_details(self.flags, self.served.endpoint.is_some())),
                bytes_received: request_bytes,
                bytes_sent: response_bytes,
                duration,
                request: log.request,
                response: log.response,
                upstream_host: self.served.endpoint,
                upstream_cluster: self.served.cluster_name(),
                downstream_local: self.original_dst,
                downstream_remote: self.peer,
                requested_server_name: None,
                route_name: self.served.route_name,
                grpc_status: self.grpc_status,
            };
            log.sink.submit(&entry);
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
