//! Envoy's cluster circuit breakers, kept per (client pod, cluster) as a sidecar keeps them per pod
//! (§2.3, Appendix A.2): connections, pending requests, requests and concurrent retries. Istio writes
//! every limit as 2^32−1 unless the DestinationRule's `connectionPool` (or `retryBudget`) sets it.
//!
//! A [`Breaker`] only counts; the pool decides when to ask (see `pool`). Every `try_*` that
//! succeeds is paired with exactly one `release_*`, done by an RAII slot in the pool.
//!
//! Invariant: counts never exceed their limit, except connections, where a per-endpoint pool with
//! no connection at all may open one anyway (Envoy's leeway: without it, requests queued for that
//! endpoint could never be served). So with `maxConnections: 1` and N endpoints a client may hold up
//! to N connections, as an Envoy sidecar may.

use std::sync::atomic::{AtomicU32, Ordering};

use super::policy::ClusterPolicy;

/// Istio's "no limit": 2^32−1.
const UNLIMITED: u32 = u32::MAX;

/// How many retries may run at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RetryLimit {
    /// `connectionPool.http.maxRetries`.
    Max(u32),
    /// `retryBudget`: `percent` of the active and pending requests, at least `min_concurrency`.
    Budget { percent: f64, min_concurrency: u32 },
}

/// The limits of one (client, cluster).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// `tcp.maxConnections`.
    pub max_connections: u32,
    /// `http.http1MaxPendingRequests`.
    pub max_pending_requests: u32,
    /// `http.http2MaxRequests`.
    pub max_requests: u32,
    /// `http.maxRetries` or `retryBudget`.
    pub retries: RetryLimit,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: UNLIMITED,
            max_pending_requests: UNLIMITED,
            max_requests: UNLIMITED,
            retries: RetryLimit::Max(UNLIMITED),
        }
    }
}

impl Limits {
    /// The limits `policy` sets; unset ones are unlimited. A retry budget replaces `maxRetries`.
    pub fn from_policy(policy: &ClusterPolicy) -> Self {
        let pool = policy.connection_pool.as_ref();
        let or_unlimited = |v: Option<u32>| v.unwrap_or(UNLIMITED);
        Self {
            max_connections: or_unlimited(pool.and_then(|p| p.tcp_max_connections)),
            max_pending_requests: or_unlimited(pool.and_then(|p| p.http1_max_pending_requests)),
            max_requests: or_unlimited(pool.and_then(|p| p.http2_max_requests)),
            retries: match &policy.retry_budget {
                Some(b) => RetryLimit::Budget {
                    percent: b.percent,
                    min_concurrency: b.min_retry_concurrency,
                },
                None => RetryLimit::Max(or_unlimited(pool.and_then(|p| p.max_retries))),
            },
        }
    }
}

/// Envoy's names of the breaker gauges, under the cluster.
pub const OPEN_GAUGES: [&str; 4] = [
    "circuit_breakers.default.cx_open",
    "circuit_breakers.default.rq_pending_open",
    "circuit_breakers.default.rq_open",
    "circuit_breakers.default.rq_retry_open",
];

/// What a breaker counts.
#[derive(Debug, Default)]
pub struct Breaker {
    connections: AtomicU32,
    pending: AtomicU32,
    requests: AtomicU32,
    retries: AtomicU32,
}

/// Take one unit of `count` unless it is at `limit`.
fn try_take(count: &AtomicU32, limit: u32) -> bool {
    count
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then_some(n + 1)
        })
        .is_ok()
}

fn give_back(count: &AtomicU32) {
    // Saturating: a release without a take would be a bug, never a wrap-around.
    let _ = count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
}

impl Breaker {
    /// Open a connection unless the client is at `maxConnections`; an endpoint without any
    /// connection (`endpoint_has_none`) may always open one (Envoy's leeway).
    pub fn try_connection(&self, limits: &Limits, endpoint_has_none: bool) -> bool {
        if endpoint_has_none {
            self.connections.fetch_add(1, Ordering::AcqRel);
            return true;
        }
        try_take(&self.connections, limits.max_connections)
    }

    /// A connection closed (or was never opened).
    pub fn release_connection(&self) {
        give_back(&self.connections);
    }

    /// Queue a request for a connection unless `http1MaxPendingRequests` are queued already.
    pub fn try_pending(&self, limits: &Limits) -> bool {
        try_take(&self.pending, limits.max_pending_requests)
    }

    /// A queued request got its connection or went away.
    pub fn release_pending(&self) {
        give_back(&self.pending);
    }

    /// Start a request unless `http2MaxRequests` are in flight.
    pub fn try_request(&self, limits: &Limits) -> bool {
        try_take(&self.requests, limits.max_requests)
    }

    /// A request finished.
    pub fn release_request(&self) {
        give_back(&self.requests);
    }

    /// Start a retry unless the retry limit (or budget) is used up.
    pub fn try_retry(&self, limits: &Limits) -> bool {
        let limit = match limits.retries {
            RetryLimit::Max(n) => n,
            RetryLimit::Budget {
                percent,
                min_concurrency,
            } => {
                let active =
                    self.requests.load(Ordering::Acquire) + self.pending.load(Ordering::Acquire);
                // Envoy rounds the budget down and never goes below the minimum.
                let budget = (percent / 100.0 * f64::from(active)).floor() as u32;
                budget.max(min_concurrency)
            }
        };
        try_take(&self.retries, limit)
    }

    /// A retry finished.
    pub fn release_retry(&self) {
        give_back(&self.retries);
    }

    /// Connections open (or being opened) now.
    pub fn connections(&self) -> u32 {
        self.connections.load(Ordering::Acquire)
    }

    /// Requests queued for a connection now.
    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Acquire)
    }

    /// Requests in flight now.
    pub fn requests(&self) -> u32 {
        self.requests.load(Ordering::Acquire)
    }

    /// Envoy's `circuit_breakers.default.*_open` gauges under `limits`, named as
    /// [`OPEN_GAUGES`]: 1 while a limit is reached (the next connection, queued request, request or
    /// retry would overflow), else 0.
    pub fn open_gauges(&self, limits: &Limits) -> [(&'static str, u64); 4] {
        let at = |count: &AtomicU32, limit: u32| u64::from(count.load(Ordering::Acquire) >= limit);
        let retry_limit = match limits.retries {
            RetryLimit::Max(n) => n,
            RetryLimit::Budget {
                percent,
                min_concurrency,
            } => {
                let active = self.requests() + self.pending();
                ((percent / 100.0 * f64::from(active)).floor() as u32).max(min_concurrency)
            }
        };
        let [cx, pending, rq, retry] = OPEN_GAUGES;
        [
            (cx, at(&self.connections, limits.max_connections)),
            (pending, at(&self.pending, limits.max_pending_requests)),
            (rq, at(&self.requests, limits.max_requests)),
            (retry, at(&self.retries, retry_limit)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{ConnectionPool, RetryBudget};

    #[test]
    fn open_gauges_say_which_limit_is_reached() {
        let limits = Limits {
            max_connections: 1,
            max_pending_requests: 2,
            ..Limits::default()
        };
        let b = Breaker::default();
        assert!(b.open_gauges(&limits).iter().all(|(_, v)| *v == 0));
        assert!(b.try_connection(&limits, false));
        assert!(b.try_pending(&limits));
        let open: Vec<u64> = b.open_gauges(&limits).iter().map(|(_, v)| *v).collect();
        assert_eq!(open, vec![1, 0, 0, 0]);
    }

    fn limits(cx: u32, pending: u32, rq: u32, retries: u32) -> Limits {
        Limits::from_policy(&ClusterPolicy {
            connection_pool: Some(ConnectionPool {
                tcp_max_connections: Some(cx),
                http1_max_pending_requests: Some(pending),
                http2_max_requests: Some(rq),
                max_retries: Some(retries),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    #[test]
    fn limits_hold_and_slots_come_back() {
        let l = limits(1, 1, 2, 1);
        let b = Breaker::default();
        assert!(b.try_connection(&l, false));
        assert!(!b.try_connection(&l, false));
        // Another endpoint without a connection may still open one.
        assert!(b.try_connection(&l, true));
        assert_eq!(b.connections(), 2);
        b.release_connection();
        b.release_connection();
        assert!(b.try_connection(&l, false));

        assert!(b.try_pending(&l));
        assert!(!b.try_pending(&l));
        b.release_pending();
        assert!(b.try_pending(&l));

        assert!(b.try_request(&l) && b.try_request(&l));
        assert!(!b.try_request(&l));
        b.release_request();
        assert!(b.try_request(&l));

        assert!(b.try_retry(&l));
        assert!(!b.try_retry(&l));
        b.release_retry();
        assert!(b.try_retry(&l));
        // An unpaired release never wraps around.
        b.release_retry();
        b.release_retry();
        assert!(b.try_retry(&l));
    }

    #[test]
    fn defaults_are_unlimited_and_a_budget_replaces_max_retries() {
        let l = Limits::from_policy(&ClusterPolicy::default());
        assert_eq!(l, Limits::default());
        let mut policy = ClusterPolicy {
            connection_pool: Some(ConnectionPool {
                max_retries: Some(1),
                ..Default::default()
            }),
            retry_budget: Some(RetryBudget {
                percent: 50.0,
                min_retry_concurrency: 2,
            }),
            ..Default::default()
        };
        let l = Limits::from_policy(&policy);
        let b = Breaker::default();
        // No requests: the minimum concurrency holds.
        assert!(b.try_retry(&l) && b.try_retry(&l));
        assert!(!b.try_retry(&l));
        // 10 in flight: 50 % = 5 concurrent retries.
        for _ in 0..10 {
            assert!(b.try_request(&l));
        }
        assert!(b.try_retry(&l) && b.try_retry(&l) && b.try_retry(&l));
        assert!(!b.try_retry(&l));
        policy.retry_budget = None;
        assert_eq!(Limits::from_policy(&policy).retries, RetryLimit::Max(1));
    }
}
