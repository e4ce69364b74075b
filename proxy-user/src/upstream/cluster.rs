//! A cluster: Istio's `outbound|port|subset|host`, with its resolved traffic policy, where its
//! endpoints come from, and the per-client state the request path works with.
//!
//! Invariant: the `ClusterRegistry` hands out the same `Arc<Cluster>` for the same key, protocol,
//! policy and discovery across config pushes, so per-client balancer, breaker and outlier state
//! survives a push that keeps the cluster. Only a static endpoint list is swapped in place. A push
//! that changes the policy builds a new cluster with fresh state, as Envoy does on a cluster update.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::client::{ClientCluster, ClientId, ClientTable};
use super::lb::{self, HashTable};
use super::policy::ClusterPolicy;
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

/// The static endpoints of a cluster at one moment. `generation` changes whenever the list does, so
/// per-client state can tell when to re-align.
#[derive(Debug, Default)]
pub struct EndpointSet {
    pub generation: u64,
    /// Sorted, without duplicates.
    pub addrs: Vec<SocketAddr>,
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
    ) -> Self {
        Self {
            key,
            protocol,
            policy,
            discovery,
            endpoints: ArcSwap::from_pointee(EndpointSet::default()),
            clients: ClientTable::default(),
        }
    }

    /// Current static endpoint addresses.
    pub fn endpoint_addrs(&self) -> Vec<SocketAddr> {
        self.endpoints.load().addrs.clone()
    }

    /// The current static endpoint set.
    pub fn endpoint_set(&self) -> arc_swap::Guard<Arc<EndpointSet>> {
        self.endpoints.load()
    }

    /// Replace the static endpoint set; per-client state of endpoints that stay is kept.
    pub(super) fn set_endpoints(&self, mut addrs: Vec<SocketAddr>) {
        addrs.sort();
        addrs.dedup();
        if self.endpoints.load().addrs == addrs {
            return;
        }
        let table = lb::table_for(self.policy.load_balancer.as_ref(), &addrs);
        self.endpoints.store(Arc::new(EndpointSet {
            generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            addrs,
            table,
        }));
    }

    /// The state of `client` for this cluster, created on first use.
    pub fn client(self: &Arc<Self>, client: ClientId) -> Arc<ClientCluster> {
        self.clients
            .get_or_create(client, || ClientCluster::new(&self.policy))
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
                    .pick(&set, req.hash, req.avoid)
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
