//! Per-client upstream state: what a sidecar would hold for its own pod, kept per (client pod,
//! cluster) so one pod's load never moves another pod's balancer, breaker or outlier state.
//!
//! The client is the kernel-attested pod (its cgroup id), never anything the pod sends. State is
//! created on a client's first request to a cluster and reclaimed after it has been idle for
//! [`IDLE_RECLAIM`]; reclaiming is lazy (done while creating state), so idle nodes run no timers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::cluster::EndpointSet;
use super::policy::ClusterPolicy;
use super::pool::{ClientPool, PoolConfig};

/// State idle this long (no request started) is dropped, unless a request still holds it.
pub const IDLE_RECLAIM: Duration = Duration::from_secs(300);
/// How often creating new state also sweeps idle state.
const RECLAIM_EVERY: Duration = Duration::from_secs(30);

/// Whose state: the client pod's kernel cgroup id, or [`ClientId::NODE`] when state is node-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u64);

impl ClientId {
    /// One state shared by every client (node-wide mode, and traffic without a known pod).
    pub const NODE: ClientId = ClientId(0);
}

/// The clients of one cluster.
#[derive(Debug)]
pub(super) struct ClientTable {
    clients: Mutex<HashMap<ClientId, Arc<ClientCluster>>>,
    last_reclaim: Mutex<Instant>,
}

impl Default for ClientTable {
    fn default() -> Self {
        Self {
            clients: Mutex::new(HashMap::new()),
            last_reclaim: Mutex::new(Instant::now()),
        }
    }
}

impl ClientTable {
    pub(super) fn get_or_create(
        &self,
        id: ClientId,
        create: impl FnOnce() -> ClientCluster,
    ) -> Arc<ClientCluster> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&id) {
            c.touch();
            return Arc::clone(c);
        }
        self.reclaim_idle(&mut clients);
        let c = Arc::new(create());
        c.touch();
        clients.insert(id, Arc::clone(&c));
        c
    }

    pub(super) fn len(&self) -> usize {
        self.clients.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Drop state nobody has used for [`IDLE_RECLAIM`] and nobody holds.
    fn reclaim_idle(&self, clients: &mut HashMap<ClientId, Arc<ClientCluster>>) {
        let mut last = self.last_reclaim.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed() < RECLAIM_EVERY {
            return;
        }
        *last = Instant::now();
        let now = epoch_secs();
        clients.retain(|_, c| {
            Arc::strong_count(c) > 1
                || now.saturating_sub(c.last_used.load(Ordering::Relaxed)) < IDLE_RECLAIM.as_secs()
        });
    }
}

/// Seconds since the process started (cheap idle bookkeeping).
fn epoch_secs() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs()
}

/// One endpoint as one client sees it.
#[derive(Debug)]
pub struct HostState {
    pub addr: SocketAddr,
    /// This client's requests (or TCP connections) in flight to the endpoint.
    active: AtomicU32,
}

impl HostState {
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

/// The client's view of the cluster's endpoints, aligned with one [`EndpointSet`] generation.
#[derive(Debug, Default)]
struct Hosts {
    generation: u64,
    hosts: Vec<Arc<HostState>>,
}

/// One client's state for one cluster.
#[derive(Debug)]
pub struct ClientCluster {
    hosts: ArcSwap<Hosts>,
    /// Rotates the starting point so ties between idle endpoints spread evenly.
    cursor: AtomicUsize,
    /// When a request last started, in [`epoch_secs`].
    last_used: AtomicU64,
    /// This client's connection pools and circuit breaker for the cluster.
    pool: Arc<ClientPool>,
}

impl Drop for ClientCluster {
    fn drop(&mut self) {
        // Reclaimed (or its cluster replaced): its idle upstream connections go too.
        self.pool.close_idle();
    }
}

/// Counts one request in flight on an endpoint until dropped.
#[derive(Debug)]
pub struct InFlight {
    host: Arc<HostState>,
}

impl InFlight {
    pub fn addr(&self) -> SocketAddr {
        self.host.addr
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.host.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ClientCluster {
    pub(super) fn new(_policy: &ClusterPolicy, pool: &Arc<PoolConfig>) -> Self {
        Self {
            hosts: ArcSwap::from_pointee(Hosts::default()),
            cursor: AtomicUsize::new(0),
            last_used: AtomicU64::new(0),
            pool: Arc::new(ClientPool::new(Arc::clone(pool))),
        }
    }

    /// This client's connection pools and circuit breaker for the cluster.
    pub fn pool(&self) -> &Arc<ClientPool> {
        &self.pool
    }

    fn touch(&self) {
        self.last_used.store(epoch_secs(), Ordering::Relaxed);
    }

    /// This client's hosts for `set`, re-aligned when the cluster's endpoints changed (state of
    /// endpoints that stay is kept).
    fn hosts_for(&self, set: &EndpointSet) -> Arc<Hosts> {
        let current = self.hosts.load_full();
        if current.generation == set.generation {
            return current;
        }
        let by_addr: HashMap<SocketAddr, &Arc<HostState>> =
            current.hosts.iter().map(|h| (h.addr, h)).collect();
        let hosts = set
            .addrs
            .iter()
            .map(|a| {
                by_addr
                    .get(a)
                    .map(|h| Arc::clone(h))
                    .unwrap_or_else(|| Arc::new(HostState::new(*a)))
            })
            .collect();
        let next = Arc::new(Hosts {
            generation: set.generation,
            hosts,
        });
        self.hosts.store(Arc::clone(&next));
        next
    }

    /// Pick an endpoint of `set`: Istio's default `LEAST_REQUEST` as Envoy does it (power of two
    /// choices), which degrades to round robin when all endpoints are equally loaded. Endpoints in
    /// `avoid` are skipped when another one is available. `None` = no healthy upstream.
    pub fn pick(&self, set: &EndpointSet, avoid: &[SocketAddr]) -> Option<InFlight> {
        let hosts = self.hosts_for(set);
        let all = &hosts.hosts;
        // Retries skip tried endpoints when another one is left (Envoy's `previous_hosts`).
        let fresh: Vec<&Arc<HostState>>;
        let eligible: &[&Arc<HostState>] = if avoid.is_empty() {
            fresh = all.iter().collect();
            &fresh
        } else {
            let untried: Vec<_> = all.iter().filter(|h| !avoid.contains(&h.addr)).collect();
            fresh = if untried.is_empty() {
                all.iter().collect()
            } else {
                untried
            };
            &fresh
        };
        let n = eligible.len();
        let chosen = match n {
            0 => return None,
            1 => eligible[0],
            _ => {
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                let a = eligible[start % n];
                let b = eligible[(start + 1 + rand::random_range(0..n - 1)) % n];
                if b.active() < a.active() {
                    b
                } else {
                    a
                }
            }
        };
        chosen.active.fetch_add(1, Ordering::Relaxed);
        Some(InFlight {
            host: Arc::clone(chosen),
        })
    }
}
