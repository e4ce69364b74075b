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

use arc_swap::{ArcSwap, ArcSwapOption};

use super::cluster::EndpointSet;
use super::locality::{self, Plan, Topology};
use super::policy::ClusterPolicy;
use super::pool::{ClientPool, PoolConfig};
use super::slow_start;
use crate::policy::{LocalityLbSetting, Warmup};

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

/// Whose state a connection uses: per client pod (as sidecars have it, the default) or one state
/// for the whole node (`keel run --upstream-state node`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StateScope {
    /// Pools, breakers, outlier detectors and balancers per (client pod, cluster): one pod's load
    /// never trips another pod's breaker, and results match sidecars.
    #[default]
    PerClient,
    /// One state per cluster shared by every pod on the node: fewer upstream connections, but
    /// limits such as `maxConnections` count the whole node's traffic.
    Node,
}

impl StateScope {
    /// The state key of a connection from the pod with kernel cgroup id `pod_cgroup_id`.
    pub fn client(self, pod_cgroup_id: u64) -> ClientId {
        match self {
            StateScope::PerClient => ClientId(pod_cgroup_id),
            StateScope::Node => ClientId::NODE,
        }
    }
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

/// A client's locality plan for one endpoint set generation.
#[derive(Debug)]
struct CachedPlan {
    generation: u64,
    topology: Topology,
    plan: Plan,
}

/// One client's state for one cluster.
#[derive(Debug)]
pub struct ClientCluster {
    hosts: ArcSwap<Hosts>,
    /// The locality setting in force, when it can make a difference: `None` when disabled, and
    /// when only priorities would apply but the cluster has no outlier detection (Istio then sets
    /// none).
    locality: Option<LocalityLbSetting>,
    /// Whether locality priorities apply (the cluster has outlier detection).
    failover: bool,
    /// The locality plan for the current endpoints and this client.
    plan: ArcSwapOption<CachedPlan>,
    /// Slow start, for balancers that honour it.
    warmup: Option<Warmup>,
    /// Rotates the starting point so ties between idle endpoints spread evenly.
    cursor: AtomicUsize,
    /// When a request last started, in [`epoch_secs`].
    last_used: AtomicU64,
    /// This client's connection pools and circuit breaker for the cluster.
    pool: Arc<ClientPool>,
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
    pub(super) fn new(policy: &ClusterPolicy, pool: &Arc<PoolConfig>) -> Self {
        let failover = policy.locality_failover();
        let locality = policy
            .locality()
            .filter(|l| failover || !l.distribute.is_empty())
            .cloned();
        Self {
            hosts: ArcSwap::from_pointee(Hosts::default()),
            locality,
            failover,
            plan: ArcSwapOption::empty(),
            warmup: policy.slow_start().cloned(),
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

    /// This client's locality plan for `set`, when locality load balancing can change anything.
    fn plan_for(&self, set: &EndpointSet, topology: &Topology) -> Option<Arc<CachedPlan>> {
        let setting = self.locality.as_ref()?;
        if let Some(cached) = self.plan.load_full() {
            if cached.generation == set.generation && cached.topology == *topology {
                return Some(cached);
            }
        }
        let plan = Plan::new(Some(setting), self.failover, topology, &set.topology);
        let cached = Arc::new(CachedPlan {
            generation: set.generation,
            topology: topology.clone(),
            plan,
        });
        self.plan.store(Some(Arc::clone(&cached)));
        Some(cached)
    }

    /// The weight of each host of `set` for one pick (0 = not a candidate), or `None` when every
    /// host counts alike: the locality plan's priority level (Envoy's priority load; every host
    /// counts as healthy until outlier detection says otherwise) and weights, scaled by the slow-start
    /// factor of endpoints still warming up.
    fn weights(&self, set: &EndpointSet, topology: &Topology) -> Option<Vec<f64>> {
        let plan = self.plan_for(set, topology).filter(|p| !p.plan.is_flat());
        let now = Instant::now();
        let warming = self.warmup.as_ref().filter(|w| {
            set.first_seen
                .iter()
                .any(|t| slow_start::warming(w, now.saturating_duration_since(*t)))
        });
        if plan.is_none() && warming.is_none() {
            return None;
        }
        let healthy = |_: usize| true;
        let mut weights = match plan {
            Some(p) => {
                let level = if p.plan.levels > 1 {
                    let load = p.plan.priority_load(healthy);
                    locality::choose_priority(&load, rand::random_range(0..100))
                } else {
                    0
                };
                p.plan.weights(level, healthy)
            }
            None => vec![1.0; set.addrs.len()],
        };
        if let Some(w) = warming {
            for (weight, seen) in weights.iter_mut().zip(&set.first_seen) {
                *weight *= slow_start::factor(w, now.saturating_duration_since(*seen));
            }
        }
        Some(weights)
    }

    /// Pick an endpoint of `set` for a client at `topology`: Istio's default `LEAST_REQUEST` as
    /// Envoy does it (power of two choices), which degrades to round robin when all endpoints are
    /// equally loaded. Locality load balancing first narrows the hosts to one priority level and
    /// may weight them, as may slow start; with unequal weights the choice is weighted by
    /// `weight / (active + 1)` (Envoy's least request with unequal weights). Endpoints in `avoid`
    /// are skipped when another one is available. `None` = no healthy upstream.
    pub fn pick(
        &self,
        set: &EndpointSet,
        avoid: &[SocketAddr],
        topology: &Topology,
    ) -> Option<InFlight> {
        let hosts = self.hosts_for(set);
        if let Some(weights) = self.weights(set, topology) {
            return self.pick_weighted(&hosts.hosts, &weights, avoid);
        }
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

    /// A pick among hosts with `weights` (aligned with `all`; 0 = not a candidate).
    fn pick_weighted(
        &self,
        all: &[Arc<HostState>],
        weights: &[f64],
        avoid: &[SocketAddr],
    ) -> Option<InFlight> {
        let weighted = || {
            all.iter()
                .zip(weights)
                .filter(|(_, w)| **w > 0.0)
                .map(|(h, w)| (h, *w))
        };
        let mut candidates: Vec<(&Arc<HostState>, f64)> = weighted()
            .filter(|(h, _)| !avoid.contains(&h.addr))
            .collect();
        if candidates.is_empty() {
            candidates = weighted().collect();
        }
        let first = candidates.first()?.1;
        let chosen = if candidates.iter().all(|(_, w)| *w == first) {
            // Equal weights: least request over the level's hosts, as for a flat cluster.
            let n = candidates.len();
            let start = self.cursor.fetch_add(1, Ordering::Relaxed);
            let a = candidates[start % n].0;
            if n == 1 {
                a
            } else {
                let b = candidates[(start + 1 + rand::random_range(0..n - 1)) % n].0;
                if b.active() < a.active() {
                    b
                } else {
                    a
                }
            }
        } else {
            let effective: Vec<f64> = candidates
                .iter()
                .map(|(h, w)| w / f64::from(h.active().saturating_add(1)))
                .collect();
            let total: f64 = effective.iter().sum();
            let mut roll = rand::random_range(0.0..total);
            let mut chosen = candidates[candidates.len() - 1].0;
            for ((h, _), e) in candidates.iter().zip(&effective) {
                if roll < *e {
                    chosen = h;
                    break;
                }
                roll -= e;
            }
            chosen
        };
        chosen.active.fetch_add(1, Ordering::Relaxed);
        Some(InFlight {
            host: Arc::clone(chosen),
        })
    }
}
