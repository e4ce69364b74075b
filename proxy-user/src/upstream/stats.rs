//! Per-cluster upstream counters, named as Envoy names them (`cluster.<name>.<stat>`). Every client
//! pod's state of a cluster adds to the same counters, so the admin API shows the cluster as a
//! sidecar fleet's sum would; the limits themselves are per client (see `breaker`).
//!
//! Kept in `upstream` so the request path never imports `admin`; the admin API reads them through
//! `ClusterRegistry::clusters()`.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use super::outlier::OutlierStats;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (connections or requests open now).
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Add one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Subtract one.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// The current value (never below zero when increments and decrements pair up).
    pub fn get(&self) -> u64 {
        u64::try_from(self.0.load(Ordering::Relaxed)).unwrap_or(0)
    }
}

/// Envoy's per-cluster connection-pool and circuit-breaker stats.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Connections opened (HTTP and TCP).
    pub upstream_cx_total: Counter,
    /// Connections open or being opened now.
    pub upstream_cx_active: Gauge,
    /// A connection was needed but `maxConnections` was reached.
    pub upstream_cx_overflow: Counter,
    /// Requests refused because `http1MaxPendingRequests` or `http2MaxRequests` was reached.
    pub upstream_rq_pending_overflow: Counter,
    /// Requests that waited for a connection.
    pub upstream_rq_pending_total: Counter,
    /// Requests waiting for a connection now.
    pub upstream_rq_pending_active: Gauge,
    /// Requests in flight now.
    pub upstream_rq_active: Gauge,
    /// Retries not attempted because `maxRetries` (or the retry budget) was reached.
    pub upstream_rq_retry_overflow: Counter,
    /// Connects that did not finish within `connectTimeout`.
    pub upstream_cx_connect_timeout: Counter,
    /// Connects that failed (timeouts included, as in Envoy).
    pub upstream_cx_connect_fail: Counter,
    /// Connections closed after `idleTimeout` without requests (or bytes, for TCP).
    pub upstream_cx_idle_timeout: Counter,
    /// Connections closed because they served `maxRequestsPerConnection` requests.
    pub upstream_cx_max_requests: Counter,
    /// Connections closed because they reached `maxConnectionDuration`.
    pub upstream_cx_max_duration_reached: Counter,
    /// Outlier detection, summed over the cluster's clients.
    pub outlier: Arc<OutlierStats>,
}

impl ClusterStats {
    /// Every stat with its Envoy name, in a stable order.
    pub fn values(&self) -> Vec<(&'static str, u64)> {
        let mut values = vec![
            ("upstream_cx_total", self.upstream_cx_total.get()),
            ("upstream_cx_active", self.upstream_cx_active.get()),
            ("upstream_cx_overflow", self.upstream_cx_overflow.get()),
            (
                "upstream_rq_pending_overflow",
                self.upstream_rq_pending_overflow.get(),
            ),
            (
                "upstream_rq_pending_total",
                self.upstream_rq_pending_total.get(),
            ),
            (
                "upstream_rq_pending_active",
                self.upstream_rq_pending_active.get(),
            ),
            ("upstream_rq_active", self.upstream_rq_active.get()),
            (
                "upstream_rq_retry_overflow",
                self.upstream_rq_retry_overflow.get(),
            ),
            (
                "upstream_cx_connect_timeout",
                self.upstream_cx_connect_timeout.get(),
            ),
            (
                "upstream_cx_connect_fail",
                self.upstream_cx_connect_fail.get(),
            ),
            (
                "upstream_cx_idle_timeout",
                self.upstream_cx_idle_timeout.get(),
            ),
            (
                "upstream_cx_max_requests",
                self.upstream_cx_max_requests.get(),
            ),
            (
                "upstream_cx_max_duration_reached",
                self.upstream_cx_max_duration_reached.get(),
            ),
        ];
        self.outlier.for_each(|name, n| values.push((name, n)));
        values
    }
}
