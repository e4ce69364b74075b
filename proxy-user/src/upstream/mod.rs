//! Upstream side: clusters (service, port, subset), their endpoints and load balancing, and the HTTP
//! connection pools the request path forwards through.
//!
//! Invariant: a `Cluster` is identified by its `ClusterKey` and lives across config pushes (the
//! `ClusterRegistry` hands out the same `Arc` for the same key), so balancer and, later, circuit-breaker
//! and outlier state survive a push. Only the endpoint list is swapped.

pub mod pool;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

/// Istio's cluster identity: `outbound|<port>|<subset>|<host>`, plus the config that shaped it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterKey {
    pub host: String,
    pub port: u16,
    pub subset: Option<String>,
    /// Which resources defined the cluster beyond its Istio name (e.g. `dr:ns/name`, `se:ns/name`);
    /// empty for a plain Kubernetes Service. Istio builds clusters per client sidecar, so two clients
    /// that see different DestinationRules for one host get different `v1` subsets under the same
    /// name; a node proxy keeps them apart with this. Not part of the displayed name.
    pub scope: String,
}

impl std::fmt::Display for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "outbound|{}|{}|{}",
            self.port,
            self.subset.as_deref().unwrap_or(""),
            self.host
        )
    }
}

/// How the proxy talks to a cluster's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive pooling.
    Http1,
    /// HTTP/2 prior knowledge (h2c), one multiplexed connection per endpoint.
    Http2,
    /// An auto-detected port: speak upstream what the client spoke downstream (Envoy's
    /// `USE_DOWNSTREAM_PROTOCOL`).
    SameAsDownstream,
    /// Bytes, not requests.
    Tcp,
}

impl UpstreamProtocol {
    /// Whether requests go upstream as HTTP/2, given what the client spoke.
    pub fn speaks_http2(self, downstream_h2: bool) -> bool {
        match self {
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::SameAsDownstream => downstream_h2,
            UpstreamProtocol::Http1 | UpstreamProtocol::Tcp => false,
        }
    }
}

/// One endpoint with the load the balancer looks at.
#[derive(Debug)]
pub struct EndpointState {
    pub addr: SocketAddr,
    /// Requests (or TCP connections) in flight to this endpoint.
    active: AtomicU32,
}

impl EndpointState {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            active: AtomicU32::new(0),
        }
    }

    /// Requests currently in flight.
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }
}

/// Counts one request in flight on an endpoint until dropped.
#[derive(Debug)]
pub struct InFlight {
    endpoint: Arc<EndpointState>,
}

impl InFlight {
    pub fn addr(&self) -> SocketAddr {
        self.endpoint.addr
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A set of endpoints behind one `ClusterKey`, with balancer state.
#[derive(Debug)]
pub struct Cluster {
    pub key: ClusterKey,
    pub protocol: UpstreamProtocol,
    endpoints: ArcSwap<Vec<Arc<EndpointState>>>,
    /// Rotates the starting point so ties between idle endpoints spread evenly.
    cursor: AtomicUsize,
}

impl Cluster {
    fn new(key: ClusterKey, protocol: UpstreamProtocol) -> Self {
        Self {
            key,
            protocol,
            endpoints: ArcSwap::from_pointee(Vec::new()),
            cursor: AtomicUsize::new(0),
        }
    }

    /// Current endpoint addresses.
    pub fn endpoint_addrs(&self) -> Vec<SocketAddr> {
        self.endpoints.load().iter().map(|e| e.addr).collect()
    }

    /// Replace the endpoint set, keeping the state of endpoints that stay.
    fn set_endpoints(&self, mut addrs: Vec<SocketAddr>) {
        addrs.sort();
        addrs.dedup();
        let current = self.endpoints.load();
        if current.iter().map(|e| e.addr).eq(addrs.iter().copied()) {
            return;
        }
        let by_addr: HashMap<SocketAddr, &Arc<EndpointState>> =
            current.iter().map(|e| (e.addr, e)).collect();
        let next = addrs
            .into_iter()
            .map(|a| {
                by_addr
                    .get(&a)
                    .map(|e| Arc::clone(e))
                    .unwrap_or_else(|| Arc::new(EndpointState::new(a)))
            })
            .collect();
        self.endpoints.store(Arc::new(next));
    }

    /// Pick an endpoint: Istio's default `LEAST_REQUEST` as Envoy does it (power of two choices),
    /// which degrades to round robin when all endpoints are equally loaded.
    /// `None` = no healthy upstream.
    pub fn pick(&self) -> Option<InFlight> {
        let endpoints = self.endpoints.load();
        let n = endpoints.len();
        let chosen = match n {
            0 => return None,
            1 => &endpoints[0],
            _ => {
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                let a = &endpoints[start % n];
                let b = &endpoints[(start + 1 + rand::random_range(0..n - 1)) % n];
                if b.active() < a.active() {
                    b
                } else {
                    a
                }
            }
        };
        chosen.active.fetch_add(1, Ordering::Relaxed);
        Some(InFlight {
            endpoint: Arc::clone(chosen),
        })
    }
}

/// Hands out one `Cluster` per key across config pushes.
#[derive(Debug, Default)]
pub struct ClusterRegistry {
    clusters: Mutex<HashMap<ClusterKey, Arc<Cluster>>>,
}

impl ClusterRegistry {
    /// The cluster for `key` with exactly `endpoints`, created if new. Called when routing tables are
    /// built, never per request.
    pub fn ensure(
        &self,
        key: ClusterKey,
        protocol: UpstreamProtocol,
        endpoints: Vec<SocketAddr>,
    ) -> Arc<Cluster> {
        let mut clusters = self
            .clusters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let cluster = clusters
            .entry(key.clone())
            .and_modify(|c| {
                if c.protocol != protocol {
                    *c = Arc::new(Cluster::new(key.clone(), protocol));
                }
            })
            .or_insert_with(|| Arc::new(Cluster::new(key, protocol)));
        cluster.set_endpoints(endpoints);
        Arc::clone(cluster)
    }

    /// Forget clusters no routing table references any more.
    pub fn retain(&self, live: &std::collections::HashSet<ClusterKey>) {
        let mut clusters = self
            .clusters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        clusters.retain(|k, _| live.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 80))
    }

    #[test]
    fn idle_endpoints_are_used_evenly() {
        let reg = ClusterRegistry::default();
        let key = ClusterKey {
            host: "a".into(),
            port: 80,
            subset: None,
            scope: String::new(),
        };
        let c = reg.ensure(
            key,
            UpstreamProtocol::Http1,
            vec![addr(1), addr(2), addr(3)],
        );
        let mut counts = HashMap::new();
        for _ in 0..3000 {
            let picked = c.pick().map(|f| f.addr());
            *counts.entry(picked).or_insert(0) += 1;
        }
        for i in 1..=3 {
            let n = counts.get(&Some(addr(i))).copied().unwrap_or(0);
            assert!((900..=1100).contains(&n), "endpoint {i} got {n}");
        }
    }

    #[test]
    fn busy_endpoint_is_avoided() {
        let reg = ClusterRegistry::default();
        let key = ClusterKey {
            host: "a".into(),
            port: 80,
            subset: None,
            scope: String::new(),
        };
        let c = reg.ensure(key, UpstreamProtocol::Http1, vec![addr(1), addr(2)]);
        let held: Vec<_> = (0..10).filter_map(|_| c.pick()).collect();
        // With 10 in flight spread over two endpoints, the next 10 picks keep them balanced.
        let on_1 = held.iter().filter(|f| f.addr() == addr(1)).count();
        assert!((3..=7).contains(&on_1), "unbalanced: {on_1}");
    }

    #[test]
    fn state_survives_a_push_and_empty_means_none() {
        let reg = ClusterRegistry::default();
        let key = ClusterKey {
            host: "a".into(),
            port: 80,
            subset: Some("v1".into()),
            scope: String::new(),
        };
        let c1 = reg.ensure(key.clone(), UpstreamProtocol::Http1, vec![addr(1)]);
        let c2 = reg.ensure(key.clone(), UpstreamProtocol::Http1, vec![]);
        assert!(Arc::ptr_eq(&c1, &c2));
        assert!(c1.pick().is_none());
        assert_eq!(key.to_string(), "outbound|80|v1|a");
    }
}
