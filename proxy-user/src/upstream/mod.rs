//! Upstream side: clusters with their resolved DestinationRule policy, where their endpoints come
//! from, the per-client state the request path works with (balancer, later breakers and outlier
//! detection), and the connection pools requests are forwarded through.
//!
//! Layout: [`policy`] resolves a cluster's traffic policy once per config; [`cluster`] holds a
//! cluster and picks endpoints; [`client`] is one client pod's state for one cluster; [`lb`] holds
//! the balancers, consistent hashing and request hash keys; [`pool`] sends requests.

pub mod client;
pub mod cluster;
pub mod lb;
pub mod policy;
pub mod pool;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

pub use client::{ClientCluster, ClientId};
pub use cluster::{Cluster, Discovery, PickError, PickRequest, Picked};
pub use policy::ClusterPolicy;

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

/// Hands out one `Cluster` per key across config pushes.
#[derive(Debug, Default)]
pub struct ClusterRegistry {
    clusters: Mutex<HashMap<ClusterKey, Arc<Cluster>>>,
}

impl ClusterRegistry {
    /// The cluster for `key` with `policy`, `discovery` and (for static discovery) exactly
    /// `endpoints`, created if new or if anything but the endpoint list changed. Called when routing
    /// tables are built, never per request.
    pub fn ensure(
        &self,
        key: ClusterKey,
        protocol: UpstreamProtocol,
        policy: ClusterPolicy,
        discovery: Discovery,
        endpoints: Vec<SocketAddr>,
    ) -> Arc<Cluster> {
        let mut clusters = self
            .clusters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let same =
            |c: &Cluster| c.protocol == protocol && *c.policy == policy && c.discovery == discovery;
        let cluster = match clusters.get(&key) {
            Some(c) if same(c) => Arc::clone(c),
            _ => {
                let c = Arc::new(Cluster::new(
                    key.clone(),
                    protocol,
                    Arc::new(policy),
                    discovery,
                ));
                clusters.insert(key, Arc::clone(&c));
                c
            }
        };
        cluster.set_endpoints(endpoints);
        cluster
    }

    /// Every cluster, for the admin API and memory accounting.
    pub fn clusters(&self) -> Vec<Arc<Cluster>> {
        let clusters = self
            .clusters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        clusters.values().cloned().collect()
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

    fn key(subset: Option<&str>) -> ClusterKey {
        ClusterKey {
            host: "a".into(),
            port: 80,
            subset: subset.map(str::to_string),
            scope: String::new(),
        }
    }

    fn ensure(reg: &ClusterRegistry, subset: Option<&str>, eps: Vec<SocketAddr>) -> Arc<Cluster> {
        reg.ensure(
            key(subset),
            UpstreamProtocol::Http1,
            ClusterPolicy::default(),
            Discovery::Static,
            eps,
        )
    }

    async fn pick(c: &Arc<Cluster>, client: u64) -> Option<Picked> {
        let req = PickRequest {
            client: ClientId(client),
            original_dst: addr(99),
            avoid: &[],
            hash: None,
        };
        c.pick(&req).await.ok()
    }

    #[tokio::test]
    async fn idle_endpoints_are_used_evenly() {
        let reg = ClusterRegistry::default();
        let c = ensure(&reg, None, vec![addr(1), addr(2), addr(3)]);
        let mut counts = HashMap::new();
        for _ in 0..3000 {
            let picked = pick(&c, 1).await.map(|p| p.addr());
            *counts.entry(picked).or_insert(0) += 1;
        }
        for i in 1..=3 {
            let n = counts.get(&Some(addr(i))).copied().unwrap_or(0);
            assert!((900..=1100).contains(&n), "endpoint {i} got {n}");
        }
    }

    #[tokio::test]
    async fn busy_endpoint_is_avoided_and_load_is_per_client() {
        let reg = ClusterRegistry::default();
        let c = ensure(&reg, None, vec![addr(1), addr(2)]);
        let mut held = Vec::new();
        for _ in 0..10 {
            held.extend(pick(&c, 1).await);
        }
        // With 10 in flight spread over two endpoints, the picks stay balanced.
        let on_1 = held.iter().filter(|p| p.addr() == addr(1)).count();
        assert!((3..=7).contains(&on_1), "unbalanced: {on_1}");
        // Another client's balancer does not see client 1's load.
        let other = pick(&c, 2).await;
        assert!(other.is_some());
        assert_eq!(c.client_count(), 2);
    }

    fn hashing(key: crate::policy::HashKey) -> ClusterPolicy {
        ClusterPolicy {
            load_balancer: Some(crate::policy::LoadBalancer::ConsistentHash(
                crate::policy::ConsistentHash {
                    key,
                    algorithm: crate::policy::HashAlgorithm::RingHash {
                        minimum_ring_size: 1024,
                    },
                },
            )),
            ..Default::default()
        }
    }

    async fn pick_with(
        c: &Arc<Cluster>,
        client: u64,
        hash: Option<u64>,
        avoid: &[SocketAddr],
    ) -> Option<SocketAddr> {
        let req = PickRequest {
            client: ClientId(client),
            original_dst: addr(99),
            avoid,
            hash,
        };
        c.pick(&req).await.ok().map(|p| p.addr())
    }

    #[tokio::test]
    async fn a_hashing_cluster_pins_keys_for_every_client_and_walks_past_avoided_hosts() {
        let reg = ClusterRegistry::default();
        let c = reg.ensure(
            key(None),
            UpstreamProtocol::Http1,
            hashing(crate::policy::HashKey::SourceIp),
            Discovery::Static,
            vec![addr(1), addr(2), addr(3)],
        );
        assert!(
            c.endpoint_set().table.is_some(),
            "table built with the endpoints"
        );
        for k in 0..50u64 {
            let home = pick_with(&c, 1, Some(k * 7919), &[]).await;
            // Another client shares the table: same key, same host.
            assert_eq!(home, pick_with(&c, 2, Some(k * 7919), &[]).await);
            let Some(home) = home else {
                panic!("no endpoint");
            };
            let next = pick_with(&c, 1, Some(k * 7919), &[home]).await;
            assert!(next.is_some_and(|n| n != home));
            // Everything tried: the home host again rather than nothing.
            let all = [addr(1), addr(2), addr(3)];
            assert!(pick_with(&c, 1, Some(k * 7919), &all).await.is_some());
        }
        // A new endpoint set gets a new table; a kept cluster keeps serving.
        let c2 = reg.ensure(
            key(None),
            UpstreamProtocol::Http1,
            hashing(crate::policy::HashKey::SourceIp),
            Discovery::Static,
            vec![addr(1), addr(2), addr(3), addr(4)],
        );
        assert!(Arc::ptr_eq(&c, &c2));
        assert_eq!(
            c2.endpoint_set().table.as_ref().map(|t| t.len()),
            Some(4 * 1024)
        );
    }

    #[tokio::test]
    async fn round_robin_state_is_per_client() {
        let reg = ClusterRegistry::default();
        let c = reg.ensure(
            key(None),
            UpstreamProtocol::Http1,
            ClusterPolicy {
                load_balancer: Some(crate::policy::LoadBalancer::RoundRobin),
                ..Default::default()
            },
            Discovery::Static,
            vec![addr(1), addr(2)],
        );
        // Client 1's picks alternate whatever client 2 does in between.
        let first = pick_with(&c, 1, None, &[]).await;
        for _ in 0..3 {
            let _ = pick_with(&c, 2, None, &[]).await;
        }
        let second = pick_with(&c, 1, None, &[]).await;
        assert!(first.is_some() && second.is_some() && first != second);
    }

    #[tokio::test]
    async fn state_survives_a_push_and_empty_means_none() {
        let reg = ClusterRegistry::default();
        let c1 = ensure(&reg, Some("v1"), vec![addr(1)]);
        let c2 = ensure(&reg, Some("v1"), vec![]);
        assert!(Arc::ptr_eq(&c1, &c2));
        assert!(pick(&c1, 1).await.is_none());
        assert_eq!(key(Some("v1")).to_string(), "outbound|80|v1|a");
    }

    #[tokio::test]
    async fn a_new_policy_is_a_new_cluster() {
        let reg = ClusterRegistry::default();
        let c1 = ensure(&reg, None, vec![addr(1)]);
        let policy = ClusterPolicy {
            load_balancer: Some(crate::policy::LoadBalancer::RoundRobin),
            ..Default::default()
        };
        let c2 = reg.ensure(
            key(None),
            UpstreamProtocol::Http1,
            policy,
            Discovery::Static,
            vec![addr(1)],
        );
        assert!(!Arc::ptr_eq(&c1, &c2));
    }

    #[tokio::test]
    async fn original_dst_and_dns_literals_pick_without_the_network() {
        let reg = ClusterRegistry::default();
        let dst = addr(99);
        let passthrough = reg.ensure(
            key(None),
            UpstreamProtocol::Tcp,
            ClusterPolicy::default(),
            Discovery::OriginalDst,
            Vec::new(),
        );
        assert_eq!(pick(&passthrough, 1).await.map(|p| p.addr()), Some(dst));
        // An IP literal "resolves" locally; tests never send DNS queries off the box.
        let dns = reg.ensure(
            key(Some("dns")),
            UpstreamProtocol::Tcp,
            ClusterPolicy::default(),
            Discovery::Dns {
                names: vec![("192.0.2.9".into(), 9000)],
                first_only: false,
            },
            Vec::new(),
        );
        assert_eq!(
            pick(&dns, 1).await.map(|p| p.addr()),
            Some(SocketAddr::from(([192, 0, 2, 9], 9000)))
        );
    }
}
