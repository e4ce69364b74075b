//! Upstream side: clusters with their resolved DestinationRule policy, where their endpoints come
//! from, the per-client state the request path works with (balancer, later breakers and outlier
//! detection), and the connection pools requests are forwarded through.
//!
//! Layout: [`policy`] resolves a cluster's traffic policy once per config; [`cluster`] holds a
//! cluster and picks endpoints; [`client`] is one client pod's state for one cluster; [`locality`]
//! and [`slow_start`] turn `localityLbSetting` and `warmup` into per-host priorities and weights a
//! balancer consumes; [`outlier`] ejects failing endpoints; [`pool`] holds a client's connections and
//! sends requests, within the limits of its [`breaker`]; [`connect`] dials endpoints; [`stats`]
//! counts per cluster as Envoy does.

pub mod breaker;
pub mod client;
pub mod cluster;
pub mod connect;
pub mod lb;
pub mod locality;
pub mod outlier;
pub mod policy;
pub mod pool;
pub mod slow_start;
pub mod stats;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::policy::H2UpgradePolicy;

pub use client::{ClientCluster, ClientId, StateScope};
pub use cluster::{Cluster, ClusterEndpoint, Discovery, PickError, PickRequest, Picked};
pub use policy::{ClusterPolicy, PolicyLevel, PolicySources};

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
        // Istio's passthrough cluster has no port or subset in its name.
        if self.port == 0 && self.subset.is_none() && self.host == "PassthroughCluster" {
            return f.write_str(&self.host);
        }
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
    /// The protocol of a port's cluster under its `connectionPool.http` (§2.3): `useClientProtocol`
    /// speaks the client's protocol upstream; `h2UpgradePolicy: UPGRADE` sends an HTTP/1.1 port's
    /// requests as HTTP/2 (h2c). The mesh default is `DO_NOT_UPGRADE`.
    pub fn under(self, policy: &ClusterPolicy) -> Self {
        let Some(pool) = &policy.connection_pool else {
            return self;
        };
        match self {
            UpstreamProtocol::Tcp => self,
            _ if pool.use_client_protocol => UpstreamProtocol::SameAsDownstream,
            UpstreamProtocol::Http1 if pool.h2_upgrade_policy == H2UpgradePolicy::Upgrade => {
                UpstreamProtocol::Http2
            }
            other => other,
        }
    }

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
    /// The last routing table build's mark ([`ClusterRegistry::begin_build`]).
    generation: AtomicU64,
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
        let endpoints = endpoints.into_iter().map(ClusterEndpoint::from).collect();
        self.ensure_endpoints(key, protocol, policy, discovery, endpoints)
    }

    /// [`ClusterRegistry::ensure`] with each endpoint's topology (locality load balancing).
    pub fn ensure_endpoints(
        &self,
        key: ClusterKey,
        protocol: UpstreamProtocol,
        policy: ClusterPolicy,
        discovery: Discovery,
        endpoints: Vec<ClusterEndpoint>,
    ) -> Arc<Cluster> {
        let protocol = protocol.under(&policy);
        let mut clusters = self
            .clusters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let same =
            |c: &Cluster| c.protocol == protocol && *c.policy == policy && c.discovery == discovery;
        let cluster = match clusters.get(&key) {
            Some(c) if same(c) => Arc::clone(c),
            old => {
                // Counters are the cluster name's, as Envoy's stats: they survive a policy change.
                let stats = old.map(|c| Arc::clone(c.stats())).unwrap_or_default();
                let c = Arc::new(Cluster::new(
                    key.clone(),
                    protocol,
                    Arc::new(policy),
                    discovery,
                    stats,
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

    /// Starts building a routing table: returns the mark the build puts on every cluster it
    /// references ([`Cluster::mark_live`]), so that [`ClusterRegistry::retain_marked`] then drops
    /// the others. One build at a time (the control loop's).
    pub fn begin_build(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Forget clusters the build marked `generation` does not reference.
    pub fn retain_marked(&self, generation: u64) {
        let mut clusters = self
            .clusters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        clusters.retain(|_, c| c.live_mark() == generation);
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
        let topology = locality::Topology::default();
        let req = PickRequest {
            client: ClientId(client),
            original_dst: addr(99),
            avoid: &[],
            topology: &topology,
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
            topology: &locality::Topology::default(),
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

    #[test]
    fn names_are_envoys() {
        assert_eq!(key(None).to_string(), "outbound|80||a");
        let passthrough = ClusterKey {
            host: "PassthroughCluster".into(),
            port: 0,
            subset: None,
            scope: String::new(),
        };
        assert_eq!(passthrough.to_string(), "PassthroughCluster");
    }

    fn located(i: u8, loc: &str) -> ClusterEndpoint {
        ClusterEndpoint {
            addr: addr(i),
            topology: locality::Topology {
                locality: crate::policy::Locality::parse(loc),
                labels: Default::default(),
            },
        }
    }

    #[test]
    fn endpoint_topology_and_first_seen_follow_updates() {
        let reg = ClusterRegistry::default();
        let ensure = |eps: Vec<ClusterEndpoint>| {
            reg.ensure_endpoints(
                key(None),
                UpstreamProtocol::Http1,
                ClusterPolicy::default(),
                Discovery::Static,
                eps,
            )
        };
        let c = ensure(vec![located(2, "r1/z2"), located(1, "r1/z1")]);
        let first = c.endpoint_set();
        assert_eq!(first.addrs, [addr(1), addr(2)]);
        assert_eq!(first.topology[1].locality.zone, "z2");
        // The same list: same generation.
        let c = ensure(vec![located(1, "r1/z1"), located(2, "r1/z2")]);
        assert_eq!(c.endpoint_set().generation, first.generation);
        // An endpoint moving zone is a new generation; a kept endpoint keeps its first-seen time.
        std::thread::sleep(std::time::Duration::from_millis(5));
        let c = ensure(vec![
            located(1, "r1/z1"),
            located(2, "r1/z3"),
            located(3, "r1/z1"),
        ]);
        let next = c.endpoint_set();
        assert_ne!(next.generation, first.generation);
        assert_eq!(next.topology[1].locality.zone, "z3");
        assert_eq!(next.first_seen[0], first.first_seen[0]);
        assert_eq!(next.first_seen[1], first.first_seen[1]);
        assert!(next.first_seen[2] > first.first_seen[1]);
    }

    fn outlier_detection() -> crate::policy::OutlierDetection {
        crate::policy::OutlierDetection::default()
    }

    /// Picks per endpoint index (1-based last octet) for 2000 picks by a client at `client_loc`.
    async fn spread(c: &Arc<Cluster>, client_loc: &str) -> HashMap<u8, usize> {
        let topology = locality::Topology {
            locality: crate::policy::Locality::parse(client_loc),
            labels: Default::default(),
        };
        let mut counts = HashMap::new();
        for _ in 0..2000 {
            let req = PickRequest {
                client: ClientId(1),
                original_dst: addr(99),
                avoid: &[],
                topology: &topology,
                hash: None,
            };
            if let Ok(p) = c.pick(&req).await {
                let last = match p.addr().ip() {
                    std::net::IpAddr::V4(v4) => v4.octets()[3],
                    std::net::IpAddr::V6(_) => 0,
                };
                *counts.entry(last).or_insert(0) += 1;
            }
        }
        counts
    }

    fn two_zones(reg: &ClusterRegistry, policy: ClusterPolicy) -> Arc<Cluster> {
        reg.ensure_endpoints(
            key(None),
            UpstreamProtocol::Http1,
            policy,
            Discovery::Static,
            vec![
                located(1, "r1/z1"),
                located(2, "r1/z1"),
                located(3, "r1/z2"),
                located(4, "r1/z2"),
            ],
        )
    }

    #[tokio::test]
    async fn with_outlier_detection_traffic_stays_in_the_clients_zone() {
        let reg = ClusterRegistry::default();
        let c = two_zones(
            &reg,
            ClusterPolicy {
                outlier_detection: Some(outlier_detection()),
                ..Default::default()
            },
        );
        let counts = spread(&c, "r1/z1").await;
        assert_eq!(counts.get(&3).copied().unwrap_or(0), 0, "{counts:?}");
        assert_eq!(counts.get(&4).copied().unwrap_or(0), 0, "{counts:?}");
        let on_1 = counts.get(&1).copied().unwrap_or(0);
        assert!((900..=1100).contains(&on_1), "{counts:?}");
        // Another client's zone is its own P0.
        let counts = spread(&c, "r1/z2").await;
        assert_eq!(
            counts.get(&3).copied().unwrap_or(0) + counts.get(&4).copied().unwrap_or(0),
            2000
        );
    }

    #[tokio::test]
    async fn without_outlier_detection_or_when_disabled_all_zones_share() {
        let reg = ClusterRegistry::default();
        let disabled = ClusterPolicy {
            outlier_detection: Some(outlier_detection()),
            locality_lb_setting: Some(crate::policy::LocalityLbSetting::default()),
            ..Default::default()
        };
        for policy in [ClusterPolicy::default(), disabled] {
            let c = two_zones(&reg, policy);
            let counts = spread(&c, "r1/z1").await;
            for i in 1..=4 {
                let n = counts.get(&i).copied().unwrap_or(0);
                assert!((400..=600).contains(&n), "endpoint {i}: {counts:?}");
            }
        }
    }

    #[tokio::test]
    async fn distribute_splits_by_zone_weight() {
        let reg = ClusterRegistry::default();
        let setting = crate::policy::LocalityLbSetting {
            distribute: vec![crate::policy::LocalityDistribute {
                from: "r1/z1".into(),
                to: vec![("r1/z1".into(), 80), ("r1/z2".into(), 20)],
            }],
            ..crate::policy::LocalityLbSetting::mesh_default()
        };
        let c = two_zones(
            &reg,
            ClusterPolicy {
                locality_lb_setting: Some(setting),
                ..Default::default()
            },
        );
        let counts = spread(&c, "r1/z1").await;
        let z1 = counts.get(&1).copied().unwrap_or(0) + counts.get(&2).copied().unwrap_or(0);
        // 80 % of 2000 = 1600; a binomial standard deviation is ~18.
        assert!((1500..=1700).contains(&z1), "{counts:?}");
    }

    #[tokio::test]
    async fn a_new_endpoint_warms_up() {
        let reg = ClusterRegistry::default();
        let policy = ClusterPolicy {
            warmup: Some(crate::policy::Warmup {
                duration: std::time::Duration::from_secs(2),
                minimum_percent: 10.0,
                aggression: 1.0,
            }),
            ..Default::default()
        };
        let ensure = |eps: Vec<SocketAddr>| {
            reg.ensure(
                key(None),
                UpstreamProtocol::Http1,
                policy.clone(),
                Discovery::Static,
                eps,
            )
        };
        // Endpoints that appeared together ramp alike: an even split.
        let c = ensure(vec![addr(1), addr(2)]);
        let counts = spread(&c, "").await;
        let on_1 = counts.get(&1).copied().unwrap_or(0);
        assert!((900..=1100).contains(&on_1), "{counts:?}");
        // Once they are past the window, a newcomer starts at 10 % of their weight:
        // 0.1 / 2.1 of the picks, ~95 of 2000.
        std::thread::sleep(std::time::Duration::from_millis(2100));
        let c = ensure(vec![addr(1), addr(2), addr(3)]);
        let counts = spread(&c, "").await;
        let on_3 = counts.get(&3).copied().unwrap_or(0);
        assert!((40..=200).contains(&on_3), "{counts:?}");
        // A balancer that ignores slow start (RANDOM) gives the newcomer its full share at once.
        let random = ClusterPolicy {
            load_balancer: Some(crate::policy::LoadBalancer::Random),
            ..policy.clone()
        };
        assert!(random.slow_start().is_none());
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
