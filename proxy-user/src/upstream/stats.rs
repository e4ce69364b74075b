//! Per-cluster upstream counters, named as Envoy names them (`cluster.<name>.<stat>`).
//!
//! Each event is counted twice, into the (client pod, cluster) pair's own [`ClusterStats`] (what that
//! pod's sidecar would show, `/stats?client=ns/pod`) and into the cluster's (the sum over every
//! client, the default `/stats`): a [`StatsPair`] holds both. Two relaxed atomic adds per event, no
//! lock and no allocation; the client's add is uncontended. Keeping the sum rather than adding up
//! the live pairs at read time keeps it exact when idle pairs are reclaimed.
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

/// How many distinct status codes one [`CodeCounts`] tells apart; a further code still counts in its
/// class (`upstream_rq_5xx`) but gets no line of its own.
pub const CODE_SLOTS: usize = 8;

/// Responses by status code (`upstream_rq_<code>`) and class (`upstream_rq_<N>xx`). Codes sit in a
/// few fixed slots claimed on first use (code in the top bits, count below), so counting never
/// allocates or locks.
#[derive(Debug, Default)]
pub struct CodeCounts {
    slots: [AtomicU64; CODE_SLOTS],
    classes: [Counter; 5],
}

/// Bits of a slot that hold the count; the code sits above them.
const COUNT_BITS: u32 = 48;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

impl CodeCounts {
    /// Count one response with `code` (100..=599; others count nowhere).
    pub fn inc(&self, code: u16) {
        if !(100..=599).contains(&code) {
            return;
        }
        self.classes[usize::from(code / 100 - 1)].inc();
        let tag = u64::from(code) << COUNT_BITS;
        for slot in &self.slots {
            let v = slot.load(Ordering::Relaxed);
            if v & !COUNT_MASK == tag {
                slot.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if v == 0 {
                match slot.compare_exchange(0, tag | 1, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => return,
                    // Another thread claimed it: for this code, count there.
                    Err(now) if now & !COUNT_MASK == tag => {
                        slot.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Err(_) => {}
                }
            }
        }
    }

    /// `(code, count)` of every code seen, in slot order.
    pub fn codes(&self) -> Vec<(u16, u64)> {
        self.slots
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|v| *v != 0)
            .map(|v| {
                let code = u16::try_from(v >> COUNT_BITS).unwrap_or(0);
                (code, v & COUNT_MASK)
            })
            .collect()
    }

    /// Count of class `n`xx (1..=5).
    pub fn class(&self, n: usize) -> u64 {
        n.checked_sub(1)
            .and_then(|i| self.classes.get(i))
            .map_or(0, Counter::get)
    }
}

/// Envoy's per-cluster request, connection-pool, circuit-breaker and outlier-detection stats.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Upstream requests sent to an endpoint (every attempt, retries included; not circuit-breaker
    /// overflows or attempts whose connect failed, which never carried the request).
    pub upstream_rq_total: Counter,
    /// Upstream requests that got a response.
    pub upstream_rq_completed: Counter,
    /// Upstream responses by code and class (local 503/504 for failed attempts included, as Envoy
    /// charges them).
    pub codes: CodeCounts,
    /// Retries sent.
    pub upstream_rq_retry: Counter,
    /// Retried requests that ended in a non-retriable response.
    pub upstream_rq_retry_success: Counter,
    /// Requests whose retries ran out while the last outcome was still retriable.
    pub upstream_rq_retry_limit_exceeded: Counter,
    /// Route (global) timeouts.
    pub upstream_rq_timeout: Counter,
    /// Per-try timeouts.
    pub upstream_rq_per_try_timeout: Counter,
    /// No healthy endpoint to pick (503 `UH`).
    pub upstream_cx_none_healthy: Counter,
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
    /// Every stat with its Envoy name, in a stable order (status codes: see [`Self::code_values`]).
    pub fn values(&self) -> Vec<(&'static str, u64)> {
        let mut values = vec![
            ("upstream_rq_total", self.upstream_rq_total.get()),
            ("upstream_rq_completed", self.upstream_rq_completed.get()),
            ("upstream_rq_retry", self.upstream_rq_retry.get()),
            (
                "upstream_rq_retry_success",
                self.upstream_rq_retry_success.get(),
            ),
            (
                "upstream_rq_retry_limit_exceeded",
                self.upstream_rq_retry_limit_exceeded.get(),
            ),
            ("upstream_rq_timeout", self.upstream_rq_timeout.get()),
            (
                "upstream_rq_per_try_timeout",
                self.upstream_rq_per_try_timeout.get(),
            ),
            (
                "upstream_cx_none_healthy",
                self.upstream_cx_none_healthy.get(),
            ),
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

impl ClusterStats {
    /// `upstream_rq_<N>xx` for every class and `upstream_rq_<code>` for every code seen.
    pub fn code_values(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = (1..=5)
            .map(|n| (format!("upstream_rq_{n}xx"), self.codes.class(n)))
            .collect();
        let mut codes = self.codes.codes();
        codes.sort_unstable();
        out.extend(
            codes
                .into_iter()
                .map(|(code, n)| (format!("upstream_rq_{code}"), n)),
        );
        out
    }
}

/// A (client pod, cluster) pair's counters and its cluster's: every event goes to both.
#[derive(Debug, Clone)]
pub struct StatsPair {
    /// This client's own counters.
    pub client: Arc<ClusterStats>,
    /// The cluster's sums over every client.
    pub cluster: Arc<ClusterStats>,
}

impl StatsPair {
    /// Fresh client counters that also count into `cluster`.
    pub fn new(cluster: &Arc<ClusterStats>) -> Self {
        Self {
            client: Arc::new(ClusterStats::default()),
            cluster: Arc::clone(cluster),
        }
    }

    /// One event on the counter `f` picks.
    pub fn inc(&self, f: impl Fn(&ClusterStats) -> &Counter) {
        f(&self.client).inc();
        f(&self.cluster).inc();
    }

    /// One more on the gauge `f` picks.
    pub fn up(&self, f: impl Fn(&ClusterStats) -> &Gauge) {
        f(&self.client).inc();
        f(&self.cluster).inc();
    }

    /// One less on the gauge `f` picks.
    pub fn down(&self, f: impl Fn(&ClusterStats) -> &Gauge) {
        f(&self.client).dec();
        f(&self.cluster).dec();
    }

    /// One response (or failed attempt charged as) `code`.
    pub fn code(&self, code: u16) {
        self.client.codes.inc(code);
        self.cluster.codes.inc(code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_count_by_slot_and_class() {
        let c = CodeCounts::default();
        for code in [200, 200, 503, 404, 200, 99, 600] {
            c.inc(code);
        }
        let mut codes = c.codes();
        codes.sort_unstable();
        assert_eq!(codes, vec![(200, 3), (404, 1), (503, 1)]);
        assert_eq!(
            (1..=5).map(|n| c.class(n)).collect::<Vec<_>>(),
            vec![0, 3, 0, 1, 1]
        );
    }

    #[test]
    fn codes_beyond_the_slots_still_count_in_their_class() {
        let c = CodeCounts::default();
        for code in 500..500 + CODE_SLOTS as u16 + 2 {
            c.inc(code);
        }
        assert_eq!(c.codes().len(), CODE_SLOTS);
        assert_eq!(c.class(5), CODE_SLOTS as u64 + 2);
    }

    #[test]
    fn a_pair_counts_into_client_and_cluster() {
        let cluster = Arc::new(ClusterStats::default());
        let a = StatsPair::new(&cluster);
        let b = StatsPair::new(&cluster);
        a.inc(|s| &s.upstream_rq_retry);
        b.inc(|s| &s.upstream_rq_retry);
        a.up(|s| &s.upstream_cx_active);
        a.code(200);
        assert_eq!(a.client.upstream_rq_retry.get(), 1);
        assert_eq!(b.client.upstream_rq_retry.get(), 1);
        assert_eq!(cluster.upstream_rq_retry.get(), 2);
        assert_eq!(cluster.upstream_cx_active.get(), 1);
        assert_eq!(b.client.upstream_cx_active.get(), 0);
        assert!(cluster
            .code_values()
            .contains(&("upstream_rq_200".to_string(), 1)));
    }
}
