//! The Istio series, stored compactly: one allocation per label set holding every metric of it
//! (the three histograms of an HTTP series, the four counters of a TCP series) as plain atomics,
//! and label pieces interned so that series share them.
//!
//! Invariants:
//! - A series is created once per distinct [`IstioLabels`] and never removed; the store holds at
//!   most `max_series` of them (HTTP and TCP together). The series lists keep creation order,
//!   which is the exposition's order within a family.
//! - Recording into a series takes no lock: bucket counts and sums are independent atomics
//!   (`Relaxed`: a scrape may see one request's duration but not yet its sizes, never a torn
//!   value). The request count is the duration histogram's count: both count the same finished
//!   requests, so storing it twice would only cost memory.
//! - The store's lock is taken on a label-set miss (write) and on a scrape (read, only to copy the
//!   series handles; the text is written after it is released).
//! - Interned pieces (strings, peer and service labels) are referenced by admitted series only,
//!   so they are bounded by the series cap.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::Counter as PromCounter;
use prometheus_client::metrics::MetricType;

use super::labels::{PeerLabels, ServiceLabels};
use super::{IstioLabels, BUCKETS};
use crate::admin::Counter;

/// Bucket counts per histogram: one per bound of [`BUCKETS`] and one for `+Inf`.
const SLOTS: usize = BUCKETS.len() + 1;

/// The bucket counts of one histogram over [`BUCKETS`]: slot `i` counts the observations `v` with
/// `BUCKETS[i - 1] < v <= BUCKETS[i]`, the last slot those above every bound (and NaN), as the
/// Prometheus client counts them. Cumulated only when written.
#[derive(Debug, Default)]
struct Buckets([AtomicU64; SLOTS]);

impl Buckets {
    fn observe(&self, v: f64) {
        let slot = BUCKETS
            .iter()
            .position(|le| v <= *le)
            .unwrap_or(BUCKETS.len());
        if let Some(count) = self.0.get(slot) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `(upper bound, count in that slot)` pairs, `+Inf` last, and their total.
    fn read(&self) -> ([(f64, u64); SLOTS], u64) {
        let mut out = [(f64::INFINITY, 0); SLOTS];
        let mut total = 0u64;
        for (i, (slot, count)) in out.iter_mut().zip(&self.0).enumerate() {
            let n = count.load(Ordering::Relaxed);
            *slot = (BUCKETS.get(i).copied().unwrap_or(f64::INFINITY), n);
            total = total.wrapping_add(n);
        }
        (out, total)
    }
}

/// The metrics of one HTTP (or gRPC) label set: `istio_requests_total` and the duration, request
/// size and response size histograms.
#[derive(Debug)]
pub struct HttpSeries {
    labels: IstioLabels,
    duration: Buckets,
    /// The sum of the durations in milliseconds, as `f64` bits (durations are fractional).
    duration_sum: AtomicU64,
    request_bytes: Buckets,
    request_bytes_sum: AtomicU64,
    response_bytes: Buckets,
    response_bytes_sum: AtomicU64,
}

impl HttpSeries {
    fn new(labels: IstioLabels) -> HttpSeries {
        HttpSeries {
            labels,
            duration: Buckets::default(),
            duration_sum: AtomicU64::new(0f64.to_bits()),
            request_bytes: Buckets::default(),
            request_bytes_sum: AtomicU64::new(0),
            response_bytes: Buckets::default(),
            response_bytes_sum: AtomicU64::new(0),
        }
    }

    /// The label set.
    pub fn labels(&self) -> &IstioLabels {
        &self.labels
    }

    /// One finished request.
    pub fn record(&self, duration: Duration, request_bytes: u64, response_bytes: u64) {
        let ms = duration.as_secs_f64() * 1000.0;
        self.duration.observe(ms);
        // Never fails: the closure always returns a value.
        let _ = self
            .duration_sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + ms).to_bits())
            });
        // Sizes are whole bytes: an integer sum is exact where an `f64` one rounds past 2^53.
        self.request_bytes.observe(request_bytes as f64);
        self.request_bytes_sum
            .fetch_add(request_bytes, Ordering::Relaxed);
        self.response_bytes.observe(response_bytes as f64);
        self.response_bytes_sum
            .fetch_add(response_bytes, Ordering::Relaxed);
    }
}

// The point of the store: an HTTP series is its three histograms (20 buckets and a sum each) and
// its labels (three shared pointers and the outcome), with no lock and no other copy of the labels.
const _: () = assert!(std::mem::size_of::<HttpSeries>() <= 3 * (SLOTS + 1) * 8 + 48);
const _: () = assert!(std::mem::size_of::<TcpSeries>() <= 4 * 8 + 48);

/// The metrics of one TCP label set.
#[derive(Debug)]
pub struct TcpSeries {
    labels: IstioLabels,
    /// Connections opened.
    pub opened: Counter,
    /// Connections closed.
    pub closed: Counter,
    /// Bytes sent to the client.
    pub sent: Counter,
    /// Bytes received from the client.
    pub received: Counter,
}

impl TcpSeries {
    /// The label set.
    pub fn labels(&self) -> &IstioLabels {
        &self.labels
    }

    fn new(labels: IstioLabels) -> TcpSeries {
        TcpSeries {
            labels,
            opened: Counter::default(),
            closed: Counter::default(),
            sent: Counter::default(),
            received: Counter::default(),
        }
    }
}

/// A series and its label set.
trait Labeled {
    fn labels(&self) -> &IstioLabels;
}

impl Labeled for HttpSeries {
    fn labels(&self) -> &IstioLabels {
        &self.labels
    }
}

impl Labeled for TcpSeries {
    fn labels(&self) -> &IstioLabels {
        &self.labels
    }
}

/// A series in the index, hashed and compared by its labels, so a lookup by [`IstioLabels`] needs
/// no second copy of them.
struct ByLabels<T>(Arc<T>);

impl<T: Labeled> PartialEq for ByLabels<T> {
    fn eq(&self, other: &Self) -> bool {
        self.0.labels() == other.0.labels()
    }
}

impl<T: Labeled> Eq for ByLabels<T> {}

impl<T: Labeled> Hash for ByLabels<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.labels().hash(state);
    }
}

impl<T: Labeled> std::borrow::Borrow<IstioLabels> for ByLabels<T> {
    fn borrow(&self) -> &IstioLabels {
        self.0.labels()
    }
}

/// The series of one kind: creation order for the exposition, an index for admission.
struct Kind<T> {
    order: Vec<Arc<T>>,
    index: HashSet<ByLabels<T>>,
}

impl<T> Default for Kind<T> {
    fn default() -> Self {
        Kind {
            order: Vec::new(),
            index: HashSet::new(),
        }
    }
}

impl<T: Labeled> Kind<T> {
    fn get(&self, labels: &IstioLabels) -> Option<Arc<T>> {
        self.index.get(labels).map(|s| s.0.clone())
    }

    fn insert(&mut self, series: Arc<T>) {
        self.index.insert(ByLabels(series.clone()));
        self.order.push(series);
    }
}

/// The interned label pieces of admitted series.
#[derive(Default)]
struct Interner {
    strings: HashSet<Arc<str>>,
    peers: HashSet<Arc<PeerLabels>>,
    services: HashSet<Arc<ServiceLabels>>,
}

impl Interner {
    fn string(&mut self, s: &Arc<str>) -> Arc<str> {
        if let Some(found) = self.strings.get(&**s) {
            return found.clone();
        }
        self.strings.insert(s.clone());
        s.clone()
    }

    fn peer(&mut self, p: &Arc<PeerLabels>) -> Arc<PeerLabels> {
        if let Some(found) = self.peers.get(p) {
            return found.clone();
        }
        let p = Arc::new(PeerLabels {
            workload: self.string(&p.workload),
            namespace: self.string(&p.namespace),
            principal: self.string(&p.principal),
            app: self.string(&p.app),
            version: self.string(&p.version),
            canonical_service: self.string(&p.canonical_service),
            canonical_revision: self.string(&p.canonical_revision),
            cluster: self.string(&p.cluster),
        });
        self.peers.insert(p.clone());
        p
    }

    fn service(&mut self, s: &Arc<ServiceLabels>) -> Arc<ServiceLabels> {
        if let Some(found) = self.services.get(s) {
            return found.clone();
        }
        let s = Arc::new(ServiceLabels {
            host: self.string(&s.host),
            name: self.string(&s.name),
            namespace: self.string(&s.namespace),
        });
        self.services.insert(s.clone());
        s
    }

    /// `labels` with every piece replaced by its interned equal.
    fn labels(&mut self, labels: &IstioLabels) -> IstioLabels {
        IstioLabels {
            source: self.peer(&labels.source),
            destination: self.peer(&labels.destination),
            service: self.service(&labels.service),
            ..labels.clone()
        }
    }
}

#[derive(Default)]
struct Inner {
    http: Kind<HttpSeries>,
    tcp: Kind<TcpSeries>,
    interner: Interner,
}

impl Inner {
    fn len(&self) -> usize {
        self.http.order.len() + self.tcp.order.len()
    }
}

/// Every Istio series, capped at `max_series` label sets.
pub struct Store {
    inner: RwLock<Inner>,
    max_series: usize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("max_series", &self.max_series)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// An empty store keeping at most `max_series` label sets.
    pub fn new(max_series: usize) -> Store {
        Store {
            inner: RwLock::default(),
            max_series,
        }
    }

    /// The series of an HTTP label set, created if the cap allows (`None`: over the cap).
    pub fn http(&self, labels: &IstioLabels) -> Option<Arc<HttpSeries>> {
        self.admit(labels, |i| &mut i.http, HttpSeries::new)
    }

    /// The series of a TCP label set, created if the cap allows (`None`: over the cap).
    pub fn tcp(&self, labels: &IstioLabels) -> Option<Arc<TcpSeries>> {
        self.admit(labels, |i| &mut i.tcp, TcpSeries::new)
    }

    fn admit<T: Labeled>(
        &self,
        labels: &IstioLabels,
        kind: fn(&mut Inner) -> &mut Kind<T>,
        new: fn(IstioLabels) -> T,
    ) -> Option<Arc<T>> {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = kind(&mut inner).get(labels) {
            return Some(found);
        }
        if inner.len() >= self.max_series {
            return None;
        }
        let labels = inner.interner.labels(labels);
        let series = Arc::new(new(labels));
        kind(&mut inner).insert(series.clone());
        Some(series)
    }

    /// The series, in creation order.
    fn snapshot(&self) -> (Vec<Arc<HttpSeries>>, Vec<Arc<TcpSeries>>) {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        (inner.http.order.clone(), inner.tcp.order.clone())
    }
}

/// A Prometheus counter family or counter: the name without `_total` (the encoder appends it) and
/// the help text as the registry would write it (with its final period).
type Descriptor = (&'static str, &'static str);

const REQUESTS: Descriptor = (
    "istio_requests",
    "Requests, by client and destination workload and outcome.",
);
const DURATION: Descriptor = (
    "istio_request_duration_milliseconds",
    "Request duration in milliseconds, until the response's last byte.",
);
const REQUEST_BYTES: Descriptor = ("istio_request_bytes", "Request body size in bytes.");
const RESPONSE_BYTES: Descriptor = ("istio_response_bytes", "Response body size in bytes.");
const TCP_SENT: Descriptor = (
    "istio_tcp_sent_bytes",
    "Bytes sent to the client on TCP connections.",
);
const TCP_RECEIVED: Descriptor = (
    "istio_tcp_received_bytes",
    "Bytes received from the client on TCP connections.",
);
const TCP_OPENED: Descriptor = ("istio_tcp_connections_opened", "TCP connections opened.");
const TCP_CLOSED: Descriptor = ("istio_tcp_connections_closed", "TCP connections closed.");
const OVERFLOW: Descriptor = (
    "keel_metrics_series_overflow",
    "Recordings dropped because the number of label sets reached its cap.",
);
const ACCESS_LOG_DROPPED: Descriptor = (
    "keel_access_log_dropped",
    "Access log lines dropped because the writer fell behind.",
);
const SPANS_DROPPED: Descriptor = (
    "keel_trace_spans_dropped",
    "Spans not exported: the export queue was full or the collector failed.",
);

/// Writes the store and Keel's metrics counters in the order the families were registered before
/// the store existed; a family without series is left out, as the registry leaves out an empty
/// `Family`.
#[derive(Debug)]
pub struct Exposition {
    /// The Istio series.
    pub store: Arc<Store>,
    /// `keel_metrics_series_overflow_total`.
    pub overflow: PromCounter,
    /// `keel_access_log_dropped_total`.
    pub access_log_dropped: PromCounter,
    /// `keel_trace_spans_dropped_total`.
    pub spans_dropped: PromCounter,
}

impl Exposition {
    fn counters<T>(
        encoder: &mut DescriptorEncoder,
        (name, help): Descriptor,
        series: &[Arc<T>],
        value: impl Fn(&T) -> u64,
    ) -> Result<(), std::fmt::Error>
    where
        T: Labeled,
    {
        if series.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for s in series {
            family
                .encode_family(s.labels())?
                .encode_counter::<NoLabelSet, _, u64>(&value(s), None)?;
        }
        Ok(())
    }

    fn histograms(
        encoder: &mut DescriptorEncoder,
        (name, help): Descriptor,
        series: &[Arc<HttpSeries>],
        histogram: impl Fn(&HttpSeries) -> (&Buckets, f64),
    ) -> Result<(), std::fmt::Error> {
        if series.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
        for s in series {
            let (buckets, sum) = histogram(s);
            let (buckets, count) = buckets.read();
            family
                .encode_family(&s.labels)?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        Ok(())
    }

    fn counter(
        encoder: &mut DescriptorEncoder,
        (name, help): Descriptor,
        counter: &PromCounter,
    ) -> Result<(), std::fmt::Error> {
        counter.encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
    }
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (http, tcp) = self.store.snapshot();
        let e = &mut encoder;
        Self::counters(e, REQUESTS, &http, |s| s.duration.read().1)?;
        Self::histograms(e, DURATION, &http, |s| {
            (
                &s.duration,
                f64::from_bits(s.duration_sum.load(Ordering::Relaxed)),
            )
        })?;
        Self::histograms(e, REQUEST_BYTES, &http, |s| {
            (
                &s.request_bytes,
                s.request_bytes_sum.load(Ordering::Relaxed) as f64,
            )
        })?;
        Self::histograms(e, RESPONSE_BYTES, &http, |s| {
            (
                &s.response_bytes,
                s.response_bytes_sum.load(Ordering::Relaxed) as f64,
            )
        })?;
        Self::counters(e, TCP_SENT, &tcp, |s| s.sent.get())?;
        Self::counters(e, TCP_RECEIVED, &tcp, |s| s.received.get())?;
        Self::counters(e, TCP_OPENED, &tcp, |s| s.opened.get())?;
        Self::counters(e, TCP_CLOSED, &tcp, |s| s.closed.get())?;
        Self::counter(e, OVERFLOW, &self.overflow)?;
        Self::counter(e, ACCESS_LOG_DROPPED, &self.access_log_dropped)?;
        Self::counter(e, SPANS_DROPPED, &self.spans_dropped)
    }
}
