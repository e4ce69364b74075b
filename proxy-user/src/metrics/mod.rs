//! Istio's standard metrics (`istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes`, `istio_response_bytes`, `istio_tcp_*`), reported as a client sidecar
//! reports them (`reporter="source"`), attributed to the kernel-attested client pod. The admin
//! server only reads them ([`Metrics::encode`]).
//!
//! Cost on the request path: a label set is resolved from config (pods, services) once per
//! (client pod, destination, endpoint, outcome) and cached with its series; a request then costs
//! one read-locked lookup of a small fixed-size key and a few atomic adds (three histogram
//! observations). No label string is built per request.
//!
//! Memory: each label set is one allocation in the [`store`] holding all its metrics as atomics,
//! its label pieces shared with the other series.
//!
//! Cardinality: label values come from config only (pod labels and owners, service hosts, Envoy
//! response flags, status codes), never from request data, and the number of label sets is capped
//! at [`MAX_SERIES`]; recordings for label sets beyond it are dropped and counted in
//! `keel_metrics_series_overflow_total`.

pub mod access_log;
pub mod keel;
pub mod labels;
pub mod log_sink;
pub mod span;
pub mod store;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use crate::outcome::ResponseFlags;
use crate::state::NodeState;
use labels::{PeerLabels, ServiceLabels};
pub use store::{HttpSeries, TcpSeries};

/// Envoy's default histogram buckets, which Istio uses for its duration and size histograms.
pub const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// The most label sets kept (HTTP and TCP together).
pub const MAX_SERIES: usize = 10_000;

/// The `Content-Type` of the exposition (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// `request_protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestProtocol {
    Http,
    Grpc,
    Tcp,
}

impl RequestProtocol {
    fn as_str(self) -> &'static str {
        match self {
            RequestProtocol::Http => "http",
            RequestProtocol::Grpc => "grpc",
            RequestProtocol::Tcp => "tcp",
        }
    }
}

/// What an HTTP request ended with (the labels TCP metrics do not have).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HttpResult {
    /// `response_code` (`0`: no response was sent).
    pub code: u16,
    /// `grpc_response_status` (empty for non-gRPC requests).
    pub grpc_status: Option<u32>,
}

/// One Istio label set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IstioLabels {
    source: Arc<PeerLabels>,
    destination: Arc<PeerLabels>,
    service: Arc<ServiceLabels>,
    protocol: RequestProtocol,
    http: Option<HttpResult>,
    flags: ResponseFlags,
}

impl EncodeLabelSet for IstioLabels {
    fn encode(&self, e: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let (s, d, svc) = (&*self.source, &*self.destination, &*self.service);
        let pairs: [(&str, &str); 22] = [
            ("reporter", "source"),
            ("source_workload", &s.workload),
            ("source_workload_namespace", &s.namespace),
            ("source_principal", &s.principal),
            ("source_app", &s.app),
            ("source_version", &s.version),
            ("source_canonical_service", &s.canonical_service),
            ("source_canonical_revision", &s.canonical_revision),
            ("source_cluster", &s.cluster),
            ("destination_workload", &d.workload),
            ("destination_workload_namespace", &d.namespace),
            ("destination_principal", &d.principal),
            ("destination_app", &d.app),
            ("destination_version", &d.version),
            ("destination_service", &svc.host),
            ("destination_service_name", &svc.name),
            ("destination_service_namespace", &svc.namespace),
            ("destination_canonical_service", &d.canonical_service),
            ("destination_canonical_revision", &d.canonical_revision),
            ("destination_cluster", &d.cluster),
            ("request_protocol", self.protocol.as_str()),
            // A client-side proxy cannot tell the server's policy.
            ("connection_security_policy", labels::UNKNOWN),
        ];
        for pair in pairs {
            pair.encode(e.encode_label())?;
        }
        if let Some(http) = self.http {
            ("response_code", http.code).encode(e.encode_label())?;
            match http.grpc_status {
                Some(g) => ("grpc_response_status", g).encode(e.encode_label())?,
                None => ("grpc_response_status", "").encode(e.encode_label())?,
            }
        }
        ("response_flags", self.flags.to_string().as_str()).encode(e.encode_label())
    }
}

/// What identifies an HTTP label set within one config generation: all fixed-size, so a lookup
/// allocates nothing. The cluster is its address (clusters outlive the generation's lookups; the
/// cache is emptied when the generation changes, so an address is never reused within it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HttpKey {
    /// The client pod's cgroup id.
    pub source: u64,
    /// The VIP:port the client connected to.
    pub original_dst: SocketAddr,
    /// The routed cluster (`Arc` address), 0 when none was chosen.
    pub cluster: usize,
    pub endpoint: Option<SocketAddr>,
    pub protocol: RequestProtocol,
    pub result: HttpResult,
    pub flags: ResponseFlags,
}

/// Like [`HttpKey`] for a TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpKey {
    pub source: u64,
    pub original_dst: SocketAddr,
    pub cluster: usize,
    pub endpoint: Option<SocketAddr>,
    pub flags: ResponseFlags,
}

/// Where a request or connection went, for resolving labels on a cache miss.
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    /// The routed cluster's host (`None`: nothing routed; the VIP's service names it).
    pub host: Option<&'a str>,
    pub endpoint: Option<SocketAddr>,
}

/// Interned handles of one config generation (`None`: over the series cap).
struct Cache<K, V> {
    generation: u64,
    map: HashMap<K, Option<Arc<V>>>,
}

impl<K, V> Default for Cache<K, V> {
    fn default() -> Self {
        Cache {
            generation: 0,
            map: HashMap::new(),
        }
    }
}

/// The most cached keys per protocol before the cache is emptied (keys are finer than label sets:
/// several endpoints of one unknown workload share a label set).
const CACHE_LIMIT: usize = 4 * MAX_SERIES;

/// The Istio series and the caches that find them.
pub struct Metrics {
    /// Holds one collector, [`store::Exposition`]: it writes the Istio families from the store and
    /// Keel's three metrics counters, in the order they were registered before the store.
    registry: Registry,
    store: Arc<store::Store>,
    overflow: Counter,
    /// `keel run --no-metrics` turns the Istio families off: nothing is looked up or recorded.
    istio_off: std::sync::atomic::AtomicBool,
    /// The access log, fed from the same end-of-request record as the metrics (off by default).
    pub access_log: log_sink::AccessLog,
    /// The proxy's spans, exported over OTLP when a collector is configured (off by default).
    pub tracer: span::Tracer,
    max_series: usize,
    http: RwLock<Cache<HttpKey, HttpSeries>>,
    tcp: RwLock<Cache<TcpKey, TcpSeries>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("max_series", &self.max_series)
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::with_limit(MAX_SERIES)
    }
}

impl Metrics {
    /// An empty store keeping at most `max_series` label sets.
    pub fn with_limit(max_series: usize) -> Metrics {
        let store = Arc::new(store::Store::new(max_series));
        let overflow = Counter::default();
        let access_log = log_sink::AccessLog::default();
        let tracer = span::Tracer::default();
        let mut registry = Registry::default();
        registry.register_collector(Box::new(store::Exposition {
            store: store.clone(),
            overflow: overflow.clone(),
            access_log_dropped: access_log.dropped().clone(),
            spans_dropped: tracer.dropped().clone(),
        }));
        Metrics {
            registry,
            store,
            overflow,
            istio_off: std::sync::atomic::AtomicBool::new(false),
            access_log,
            tracer,
            max_series,
            http: RwLock::default(),
            tcp: RwLock::default(),
        }
    }

    /// Turns Istio's standard metrics on or off (`keel run --no-metrics`); the access log and
    /// spans are separate.
    pub fn set_istio_metrics(&self, on: bool) {
        self.istio_off
            .store(!on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether Istio's standard metrics are recorded.
    pub fn istio_metrics(&self) -> bool {
        !self.istio_off.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The Prometheus text exposition of every family.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// The handles for an HTTP request's label set (`None` when over the cap).
    pub fn http_series(
        &self,
        node: &NodeState,
        key: HttpKey,
        dest: Destination<'_>,
    ) -> Option<Arc<HttpSeries>> {
        if !self.istio_metrics() {
            return None;
        }
        let generation = node.routes.id();
        if let Some(hit) = cached(&self.http, generation, &key) {
            if hit.is_none() {
                self.overflow.inc();
            }
            return hit;
        }
        let labels = self.resolve(
            node,
            key.source,
            key.original_dst,
            dest,
            key.protocol,
            Some(key.result),
            key.flags,
        );
        let series = self.http_handles(&labels);
        remember(&self.http, generation, key, series.clone());
        series
    }

    /// The series of an HTTP label set; `None` (counted) over the cap.
    fn http_handles(&self, labels: &IstioLabels) -> Option<Arc<HttpSeries>> {
        let series = self.store.http(labels);
        if series.is_none() {
            self.overflow.inc();
        }
        series
    }

    /// The handles for a TCP connection's label set (`None` when over the cap).
    pub fn tcp_series(
        &self,
        node: &NodeState,
        key: TcpKey,
        dest: Destination<'_>,
    ) -> Option<Arc<TcpSeries>> {
        if !self.istio_metrics() {
            return None;
        }
        let generation = node.routes.id();
        if let Some(hit) = cached(&self.tcp, generation, &key) {
            if hit.is_none() {
                self.overflow.inc();
            }
            return hit;
        }
        let labels = self.resolve(
            node,
            key.source,
            key.original_dst,
            dest,
            RequestProtocol::Tcp,
            None,
            key.flags,
        );
        let series = self.tcp_handles(&labels);
        remember(&self.tcp, generation, key, series.clone());
        series
    }

    /// The series of a TCP label set; `None` (counted) over the cap.
    fn tcp_handles(&self, labels: &IstioLabels) -> Option<Arc<TcpSeries>> {
        let series = self.store.tcp(labels);
        if series.is_none() {
            self.overflow.inc();
        }
        series
    }

    /// Label values from config: the client pod, the routed service (else the VIP's), the
    /// endpoint's pod.
    #[allow(clippy::too_many_arguments)]
    fn resolve(
        &self,
        node: &NodeState,
        source_cgroup: u64,
        original_dst: SocketAddr,
        dest: Destination<'_>,
        protocol: RequestProtocol,
        http: Option<HttpResult>,
        flags: ResponseFlags,
    ) -> IstioLabels {
        let snap = &node.snapshot;
        let source = node
            .pod_by_cgroup
            .get(&source_cgroup)
            .and_then(|&id| snap.pods.get(id))
            .map_or_else(PeerLabels::unknown, |pod| PeerLabels::of_pod(pod));
        let host = dest.host.or_else(|| {
            snap.service_by_vip
                .get(&(original_dst.ip(), original_dst.port()))
                .and_then(|&(id, _)| snap.services.get(id))
                .map(|s| s.hostname.as_str())
        });
        let service = host.map_or_else(ServiceLabels::unknown, |h| ServiceLabels::of_host(snap, h));
        let destination = dest
            .endpoint
            .and_then(|ep| {
                let ip = ep.ip().to_canonical();
                snap.pods.iter().find(|p| p.ips.contains(&ip))
            })
            .map_or_else(PeerLabels::unknown, |pod| PeerLabels::of_pod(pod));
        IstioLabels {
            source: Arc::new(source),
            destination: Arc::new(destination),
            service: Arc::new(service),
            protocol,
            http,
            flags,
        }
    }
}

/// A cached handle of `generation` (outer `None`: not cached).
fn cached<K: Eq + std::hash::Hash, V>(
    cache: &RwLock<Cache<K, V>>,
    generation: u64,
    key: &K,
) -> Option<Option<Arc<V>>> {
    let cache = cache.read().unwrap_or_else(|p| p.into_inner());
    if cache.generation != generation {
        return None;
    }
    cache.map.get(key).cloned()
}

/// Cache a handle; a newer generation empties the cache, an older one (a request still finishing
/// under the previous config) is not cached.
fn remember<K: Eq + std::hash::Hash, V>(
    cache: &RwLock<Cache<K, V>>,
    generation: u64,
    key: K,
    series: Option<Arc<V>>,
) {
    let mut cache = cache.write().unwrap_or_else(|p| p.into_inner());
    if generation > cache.generation || cache.map.len() >= CACHE_LIMIT {
        cache.map.clear();
        cache.generation = cache.generation.max(generation);
    }
    if generation == cache.generation {
        cache.map.insert(key, series);
    }
}

#[cfg(test)]
mod tests;
