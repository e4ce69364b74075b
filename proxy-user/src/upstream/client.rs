//! Per-client upstream state: what a sidecar would hold for its own pod, kept per (client pod,
//! cluster) so one pod's load never moves another pod's balancer, breaker or outlier state.
//!
//! The client is the kernel-attested pod (its cgroup id), never anything the pod sends. State is
//! created on a client's first request to a cluster and reclaimed after it has been idle for
//! [`IDLE_RECLAIM`]; reclaiming is lazy (done while creating state), so idle nodes run no timers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::cluster::EndpointSet;
use super::lb::{Balancer, Host, HostSet};
use super::policy::ClusterPolicy;

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

/// One client's state for one cluster.
#[derive(Debug)]
pub struct ClientCluster {
    hosts: ArcSwap<HostSet>,
    /// This client's balancer (its round-robin cursor and the like), from the cluster's policy.
    balancer: Balancer,
    /// When a request last started, in [`epoch_secs`].
    last_used: AtomicU64,
}

/// Counts one request in flight on an endpoint until dropped.
#[derive(Debug)]
pub struct InFlight {
    host: Arc<Host>,
}

impl InFlight {
    pub fn addr(&self) -> SocketAddr {
        self.host.addr
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.host.end();
    }
}

impl ClientCluster {
    pub(super) fn new(policy: &ClusterPolicy) -> Self {
        Self {
            hosts: ArcSwap::from_pointee(HostSet::default()),
            balancer: Balancer::new(policy.load_balancer.as_ref()),
            last_used: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        self.last_used.store(epoch_secs(), Ordering::Relaxed);
    }

    /// This client's hosts for `set`, re-aligned when the cluster's endpoints changed (state of
    /// endpoints that stay is kept).
    fn hosts_for(&self, set: &EndpointSet) -> Arc<HostSet> {
        let current = self.hosts.load_full();
        if current.generation == set.generation {
            return current;
        }
        let by_addr: HashMap<SocketAddr, &Arc<Host>> =
            current.hosts.iter().map(|h| (h.addr, h)).collect();
        let hosts = set
            .addrs
            .iter()
            .map(|a| {
                by_addr
                    .get(a)
                    .map(|h| Arc::clone(h))
                    .unwrap_or_else(|| Arc::new(Host::new(*a, 1)))
            })
            .collect();
        let next = Arc::new(HostSet::new(set.generation, hosts));
        self.hosts.store(Arc::clone(&next));
        next
    }

    /// Pick an endpoint of `set` with this client's balancer; `hash` is the request's hash key
    /// (consistent-hash clusters). Endpoints in `avoid` are skipped while another one is left
    /// (Envoy's `previous_hosts` retry predicate). `None` = no healthy upstream.
    pub fn pick(
        &self,
        set: &EndpointSet,
        hash: Option<u64>,
        avoid: &[SocketAddr],
    ) -> Option<InFlight> {
        let hosts = self.hosts_for(set);
        let table = set.table.as_ref();
        let mut chosen = self
            .balancer
            .pick(&hosts, table, hash, |a| !avoid.contains(&a));
        if chosen.is_none() && !avoid.is_empty() {
            chosen = self.balancer.pick(&hosts, table, hash, |_| true);
        }
        let host = hosts.hosts.get(chosen?)?;
        host.begin();
        Some(InFlight {
            host: Arc::clone(host),
        })
    }
}
