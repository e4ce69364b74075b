//! A cluster: Istio's `outbound|port|subset|host`, with its resolved traffic policy, where its
//! endpoints come from, and the per-client state the request path works with.
//!
//! Invariant: the `ClusterRegistry` hands out the same `Arc<Cluster>` for the same key, protocol,
//! policy and discovery across config pushes, so per-client balancer, breaker and outlier state
//! survives a push that keeps the cluster. Only a static endpoint list is swapped in place. A push
//! that changes the policy builds a new cluster with fresh state, as Envoy does on a cluster update.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::client::{ClientCluster, ClientId, ClientTable};
use super::lb::{self, HashTable};
use super::locality::Topology;
use super::policy::ClusterPolicy;
use super::pool::PoolConfig;
use super::stats::ClusterStats;
use super::{ClusterKey, UpstreamProtocol};

/// How long a `DNS` cluster may take to resolve before the attempt counts as "no healthy upstream".
const DNS_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a cluster's endpoints come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// Endpoints known when the table was built (Kubernetes pods, ServiceEntry `STATIC`).
    Static,
    /// The address the client dialled: ServiceEntry `NONE`, `loadBalancer.simple: PASSTHROUGH`,
    /// and Istio's `PassthroughCluster`.
    OriginalDst,
    /// Names resolved per connection (ServiceEntry `DNS` / `DNS_ROUND_ROBIN`): `(name, port)` pairs;
    /// `first_only` = `DNS_ROUND_ROBIN` (Envoy `LOGICAL_DNS`), the first address of an answer only.
    Dns {
        names: Vec<(String, u16)>,
        first_only: bool,
    },
}

/// One static endpoint as routing tables hand it to a cluster: its address and where it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterEndpoint {
    pub addr: SocketAddr,
    /// Locality and the labels `failoverPriority` reads (empty when the policy reads none).
    pub topology: Topology,
}

impl From<SocketAddr> for ClusterEndpoint {
    fn from(addr: SocketAddr) -> Self {
        Self {
            addr,
            topology: Topology::default(),
        }
    }
}

/// The static endpoints of a cluster at one moment. `generation` changes whenever the list (or an
/// endpoint's topology) does, so per-client state can tell when to re-align.
#[derive(Debug, Default)]
pub struct EndpointSet {
    pub generation: u64,
    /// Sorted, without duplicates.
    pub addrs: Vec<SocketAddr>,
    /// Per address (same order): locality and labels, for locality load balancing.
    pub topology: Vec<Topology>,
    /// Per address (same order): when the cluster first had the endpoint, for slow start. Kept
    /// across updates of the set.
    pub first_seen: Vec<Instant>,
    /// The consistent-hash ring or table over `addrs` (indices into it), for a hashing cluster;
    /// built once per generation and shared by every client.
    pub table: Option<HashTable>,
}

static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// One cluster.
#[derive(Debug)]
pub struct Cluster {
    pub key: ClusterKey,
    pub protocol: UpstreamProtocol,
    pub policy: Arc<ClusterPolicy>,
    pub discovery: Discovery,
    endpoints: ArcSwap<EndpointSet>,
    clients: ClientTable,
    /// Pool settings and counters every client's pools share.
    pool: Arc<PoolConfig>,
    /// Mirrored requests to this cluster in flight (`l7::filters::mirror` bounds them).
    mirrors_in_flight: AtomicUsize,
    /// The last routing table build that references this cluster (its registry drops the
    /// clusters the newest build did not mark).
    live_mark: AtomicU64,
}

/// What the request path knows when it asks for an endpoint.
#[derive(Debug, Clone, Copy)]
pub struct PickRequest<'a> {
    /// Whose per-client state to use.
    pub client: ClientId,
    /// The address the client dialled (original-destination clusters connect there).
    pub original_dst: SocketAddr,
    /// Endpoints a retry should avoid (empty for a first attempt).
    pub avoid: &'a [SocketAddr],
    /// The client's locality and labels, for locality load balancing.
    pub topology: &'a Topology,
    /// The request's hash key under its route's consistent-hash policy; `None` without one (or
    /// when the request lacks the key).
    pub hash: Option<u64>,
}

/// Why no endpoint could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickError {
    /// The target does not exist (503 `NC`).
    NoCluster,
    /// No endpoint is available or resolvable (503 `UH`).
    NoHealthyUpstream,
}

/// The endpoint chosen for one attempt, with the client's state for the cluster; dropping it ends
/// the attempt's load accounting.
#[derive(Debug)]
pub struct Picked {
    addr: SocketAddr,
    client: Arc<ClientCluster>,
    _in_flight: Option<super::client::InFlight>,
}

impl Picked {
    /// The address to connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The picking client's state for the cluster (pools, breaker, outlier detector).
    pub fn client(&self) -> &Arc<ClientCluster> {
        &self.client
    }
}

impl Cluster {
    pub(super) fn new(
        key: ClusterKey,
        protocol: UpstreamProtocol,
        policy: Arc<ClusterPolicy>,
        discovery: Discovery,
        stats: Arc<ClusterStats>,
    ) -> Self {
        let pool = Arc::new(PoolConfig::new(&policy, stats));
        Self {
            key,
            protocol,
            policy,
            discovery,
            endpoints: ArcSwap::from_pointee(EndpointSet::default()),
            clients: ClientTable::default(),
            pool,
            mirrors_in_flight: AtomicUsize::new(0),
            live_mark: AtomicU64::new(0),
        }
    }

    /// Mirrored requests to this cluster in flight now; `l7::filters::mirror` takes and gives
    /// back its slots here.
    /// Marks the cluster as referenced by the routing table build `generation`.
    pub fn mark_live(&self, generation: u64) {
        self.live_mark.store(generation, Ordering::Relaxed);
    }

    /// The last build that marked the cluster.
    pub fn live_mark(&self) -> u64 {
        self.live_mark.load(Ordering::Relaxed)
    }

    pub fn mirrors_in_flight(&self) -> &AtomicUsize {
        &self.mirrors_in_flight
    }

    /// The cluster's counters (`cluster.<name>.<stat>` on the admin API), summed over its clients.
    pub fn stats(&self) -> &Arc<ClusterStats> {
        &self.pool.stats
    }

    /// The cluster's pool settings.
    pub fn pool_config(&self) -> &Arc<PoolConfig> {
        &self.pool
    }

    /// Current static endpoint addresses.
    pub fn endpoint_addrs(&self) -> Vec<SocketAddr> {
        self.endpoints.load().addrs.clone()
    }

    /// The current static endpoint set.
    pub fn endpoint_set(&self) -> arc_swap::Guard<Arc<EndpointSet>> {
        self.endpoints.load()
    }

    /// Replace the static endpoint set; per-client state and first-seen times of endpoints that
    /// stay are kept.
    pub(super) fn set_endpoints(&self, mut endpoints: Vec<ClusterEndpoint>) {
        endpoints.sort_by_key(|e| e.addr);
        endpoints.dedup_by_key(|e| e.addr);
        let current = self.endpoints.load();
        if current.addrs.len() == endpoints.len()
            && current
                .addrs
                .iter()
                .zip(&current.topology)
                .zip(&endpoints)
                .all(|((a, t), e)| *a == e.addr && *t == e.topology)
        {
            return;
        }
        let now = Instant::now();
        let first_seen = endpoints
            .iter()
            .map(|e| match current.addrs.binary_search(&e.addr) {
                Ok(i) => current.first_seen.get(i).copied().unwrap_or(now),
                Err(_) => now,
            })
            .collect();
        let (addrs, topology): (Vec<_>, Vec<_>) =
            endpoints.into_iter().map(|e| (e.addr, e.topology)).unzip();
        let table = lb::table_for(self.policy.load_balancer.as_ref(), &addrs);
        self.endpoints.store(Arc::new(EndpointSet {
            generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            addrs,
            topology,
            first_seen,
            table,
        }));
    }

    /// The state of `client` for this cluster, created on first use.
    pub fn client(self: &Arc<Self>, client: ClientId) -> Arc<ClientCluster> {
        self.clients.get_or_create(client, || {
            ClientCluster::new(
                &self.policy,
                &self.pool,
                &self.pool.stats.outlier,
                &self.endpoints.load().addrs,
            )
        })
    }

    /// The state of `client` for this cluster, if it has any (admin; never creates state).
    pub fn client_state(&self, client: ClientId) -> Option<Arc<ClientCluster>> {
        self.clients.get(client)
    }

    /// Every client with state for this cluster now, by id (admin).
    pub fn client_states(&self) -> Vec<(ClientId, Arc<ClientCluster>)> {
        self.clients.all()
    }

    /// Number of clients with state for this cluster (admin, memory accounting).
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Choose the endpoint for one attempt.
    pub async fn pick(self: &Arc<Self>, req: &PickRequest<'_>) -> Result<Picked, PickError> {
        let client = self.client(req.client);
        match &self.discovery {
            Discovery::Static => {
                let set = self.endpoints.load();
                let in_flight = client
                    .pick(&set, req.hash, req.avoid, req.topology)
                    .ok_or(PickError::NoHealthyUpstream)?;
                Ok(Picked {
                    addr: in_flight.addr(),
                    client,
                    _in_flight: Some(in_flight),
                })
            }
            Discovery::OriginalDst => Ok(Picked {
                addr: req.original_dst,
                client,
                _in_flight: None,
            }),
            Discovery::Dns { names, first_only } => {
                let addr = resolve(&self.key, names, *first_only)
                    .await
                    .ok_or(PickError::NoHealthyUpstream)?;
                Ok(Picked {
                    addr,
                    client,
                    _in_flight: None,
                })
            }
        }
    }
}

/// Resolve every name (bounded by [`DNS_TIMEOUT`]) and pick one address at random; `None` when
/// nothing resolves. IP literals resolve without a query. Resolution goes through the system resolver
/// on every pick, so the record's TTL is honoured trivially.
async fn resolve(
    key: &ClusterKey,
    names: &[(String, u16)],
    first_only: bool,
) -> Option<SocketAddr> {
    let lookups = async {
        let mut addrs = Vec::new();
        for (name, port) in names {
            match tokio::net::lookup_host((name.as_str(), *port)).await {
                Ok(found) if first_only => addrs.extend(found.take(1)),
                Ok(found) => addrs.extend(found),
                Err(e) => {
                    tracing::debug!(cluster = %key, %name, error = %e, "resolution failed")
                }
            }
        }
        addrs
    };
    let addrs = tokio::time::timeout(DNS_TIMEOUT, lookups)
        .await
        .unwrap_or_default();
    match addrs.len() {
        0 => None,
        n => addrs.get(rand::random_range(0..n)).copied(),
    }
}
