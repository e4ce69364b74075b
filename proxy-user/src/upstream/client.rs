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

use arc_swap::{ArcSwap, ArcSwapOption};

use super::cluster::EndpointSet;
use super::lb::{Balancer, Host, HostSet};
use super::locality::{self, Plan, Topology};
use super::outlier::{HostResult, OutlierDetector, OutlierSinks, OutlierStats};
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

    /// The state of `id`, if it has any (never creates it).
    pub(super) fn get(&self, id: ClientId) -> Option<Arc<ClientCluster>> {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    pub(super) fn len(&self) -> usize {
        self.clients.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Every client with state now, by id (admin).
    pub(super) fn all(&self) -> Vec<(ClientId, Arc<ClientCluster>)> {
        let mut all: Vec<_> = self
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, c)| (*id, Arc::clone(c)))
            .collect();
        all.sort_by_key(|(id, _)| *id);
        all
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

/// A client's locality plan for one endpoint set generation.
#[derive(Debug)]
struct CachedPlan {
    generation: u64,
    topology: Topology,
    plan: Plan,
}

/// One client's state for one cluster: what its sidecar would hold.
#[derive(Debug)]
pub struct ClientCluster {
    hosts: ArcSwap<HostSet>,
    /// This client's balancer (its round-robin cursor and the like), from the cluster's policy.
    balancer: Balancer,
    /// The locality setting in force, when it can make a difference: `None` when disabled, and
    /// when only priorities would apply but the cluster has no outlier detection (Istio then sets
    /// none).
    locality: Option<LocalityLbSetting>,
    /// Whether locality priorities apply (the cluster has outlier detection).
    failover: bool,
    /// The locality plan for the current endpoints and this client.
    plan: ArcSwapOption<CachedPlan>,
    /// Slow start, for balancers that honour it (round robin, least request).
    warmup: Option<Warmup>,
    /// This client's outlier detector, when the cluster has `outlierDetection`.
    outlier: Option<OutlierDetector>,
    /// When a request last started, in [`epoch_secs`].
    last_used: AtomicU64,
    /// This client's connections to the cluster's endpoints and its circuit breaker.
    pool: Arc<ClientPool>,
}

impl Drop for ClientCluster {
    fn drop(&mut self) {
        // Reclaimed (or its cluster replaced): its idle upstream connections go too.
        self.pool.close_idle();
    }
}

/// One endpoint as one client sees it (admin `/clusters`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostView {
    /// The endpoint.
    pub addr: SocketAddr,
    /// Its balancer weight.
    pub weight: u32,
    /// Requests (or TCP connections) this client sent it.
    pub rq_total: u64,
    /// Of those, in flight now.
    pub rq_active: u32,
    /// This client's connections to it, open or being opened.
    pub cx_active: u32,
    /// Ejected by this client's outlier detection now.
    pub ejected: bool,
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
    pub(super) fn new(
        policy: &ClusterPolicy,
        pool: &Arc<PoolConfig>,
        outlier_stats: &Arc<OutlierStats>,
        endpoints: &[SocketAddr],
    ) -> Self {
        let failover = policy.locality_failover();
        let locality = policy
            .locality()
            .filter(|l| failover || !l.distribute.is_empty())
            .cloned();
        let pool = Arc::new(ClientPool::new(Arc::clone(pool)));
        let outlier = policy.outlier_detection.as_ref().map(|od| {
            let sinks = OutlierSinks::new(
                Arc::clone(outlier_stats),
                Arc::clone(&pool.stats().client.outlier),
            );
            OutlierDetector::new(od, sinks, endpoints, Instant::now())
        });
        Self {
            hosts: ArcSwap::from_pointee(HostSet::default()),
            balancer: Balancer::new(policy.load_balancer.as_ref()),
            locality,
            failover,
            plan: ArcSwapOption::empty(),
            warmup: policy.slow_start().cloned(),
            outlier,
            last_used: AtomicU64::new(0),
            pool,
        }
    }

    /// This client's counters for the cluster, and the cluster's sums.
    pub fn stats(&self) -> &super::stats::StatsPair {
        self.pool.stats()
    }

    /// This client's view of each endpoint of `set`, for the admin API: address, weight, requests
    /// sent and in flight, connections, and whether outlier detection ejects it now.
    pub fn host_views(&self, set: &EndpointSet) -> Vec<HostView> {
        let hosts = self.hosts.load();
        let now = Instant::now();
        set.addrs
            .iter()
            .map(|addr| {
                let host = hosts.hosts.iter().find(|h| h.addr == *addr);
                HostView {
                    addr: *addr,
                    weight: host.map_or(1, |h| h.weight()),
                    rq_total: host.map_or(0, |h| h.total()),
                    rq_active: host.map_or(0, |h| h.active()),
                    cx_active: self.pool.connections_to(*addr),
                    ejected: self
                        .outlier
                        .as_ref()
                        .is_some_and(|od| od.is_ejected(*addr, now)),
                }
            })
            .collect()
    }

    /// Whether this client's outlier detection has `host` ejected now; `None` when the cluster has
    /// no outlier detection.
    pub fn is_ejected(&self, host: SocketAddr) -> Option<bool> {
        self.outlier
            .as_ref()
            .map(|od| od.is_ejected(host, Instant::now()))
    }

    /// This client's connection pools and circuit breaker for the cluster.
    pub fn pool(&self) -> &Arc<ClientPool> {
        &self.pool
    }

    fn touch(&self) {
        self.last_used.store(epoch_secs(), Ordering::Relaxed);
    }

    /// Tell outlier detection how an attempt to `host` ended (no-op without `outlierDetection`).
    /// Never called for circuit-breaker overflow or local replies that reached no endpoint.
    pub fn record(&self, host: SocketAddr, result: HostResult) {
        if let Some(od) = &self.outlier {
            let total = self.hosts.load().hosts.len();
            od.record(host, result, Instant::now(), total);
        }
    }

    /// This client's hosts for `set`, re-aligned when the cluster's endpoints changed (state of
    /// endpoints that stay is kept, in the balancer and in outlier detection).
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
        if let Some(od) = &self.outlier {
            od.set_hosts(&set.addrs);
        }
        let next = Arc::new(HostSet::new(set.generation, hosts));
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
    /// host counts alike: the locality plan's priority level (Envoy's priority load over the hosts
    /// outlier detection leaves healthy) and weights, scaled by the slow-start factor of endpoints
    /// still warming up.
    fn weights(
        &self,
        set: &EndpointSet,
        topology: &Topology,
        healthy: &dyn Fn(usize) -> bool,
        now: Instant,
    ) -> Option<Vec<f64>> {
        let plan = self.plan_for(set, topology).filter(|p| !p.plan.is_flat());
        let warming = self.warmup.as_ref().filter(|w| {
            set.first_seen
                .iter()
                .any(|t| slow_start::warming(w, now.saturating_duration_since(*t)))
        });
        if plan.is_none() && warming.is_none() {
            return None;
        }
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

    /// Pick an endpoint of `set` for a client at `topology` with this client's balancer; `hash` is
    /// the request's hash key (consistent-hash clusters). Outlier detection removes ejected hosts
    /// (all of them stay in panic); locality load balancing then narrows the hosts to one priority
    /// level and may weight them, as may slow start. Endpoints in `avoid` are skipped while another
    /// one is left (Envoy's `previous_hosts` retry predicate). `None` = no healthy upstream.
    pub fn pick(
        &self,
        set: &EndpointSet,
        hash: Option<u64>,
        avoid: &[SocketAddr],
        topology: &Topology,
    ) -> Option<InFlight> {
        let hosts = self.hosts_for(set);
        let now = Instant::now();
        // Ejected hosts; empty when nothing is ejected (no lock taken) or in panic.
        let ejected = match &self.outlier {
            Some(od) if od.ejected_count() > 0 => od.hosts_to_skip(hosts.hosts.len(), now),
            _ => Vec::new(),
        };
        let healthy = |i: usize| set.addrs.get(i).is_some_and(|a| !ejected.contains(a));
        let chosen = match self.weights(set, topology, &healthy, now) {
            Some(weights) => {
                let candidate = |i: usize| weights.get(i).is_some_and(|w| *w > 0.0) && healthy(i);
                self.pick_weighted(&hosts, &weights, |i| {
                    candidate(i) && !avoid.contains(&set.addrs[i])
                })
                .or_else(|| self.pick_weighted(&hosts, &weights, candidate))
            }
            None => {
                let table = set.table.as_ref();
                let up = |a: SocketAddr| !ejected.contains(&a);
                self.balancer
                    .pick(&hosts, table, hash, |a| up(a) && !avoid.contains(&a))
                    .or_else(|| {
                        if avoid.is_empty() {
                            None
                        } else {
                            self.balancer.pick(&hosts, table, hash, up)
                        }
                    })
            }
        };
        let host = hosts.hosts.get(chosen?)?;
        host.begin();
        Some(InFlight {
            host: Arc::clone(host),
        })
    }

    /// Index of a host among those `eligible` accepts, by `weights` (aligned with `hosts`): least
    /// request over equal weights (power of two choices), else a draw weighted by
    /// `weight / (active + 1)`, Envoy's least request with unequal weights.
    fn pick_weighted(
        &self,
        hosts: &HostSet,
        weights: &[f64],
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let candidates: Vec<usize> = (0..hosts.hosts.len()).filter(|i| eligible(*i)).collect();
        let first = *candidates.first()?;
        let weight = |i: usize| weights.get(i).copied().unwrap_or(0.0);
        let active = |i: usize| hosts.hosts.get(i).map_or(0, |h| h.active());
        if candidates.iter().all(|i| weight(*i) == weight(first)) {
            let n = candidates.len();
            let a = candidates[rand::random_range(0..n)];
            if n == 1 {
                return Some(a);
            }
            let b = candidates[rand::random_range(0..n)];
            return Some(if active(b) < active(a) { b } else { a });
        }
        let effective: Vec<f64> = candidates
            .iter()
            .map(|i| weight(*i) / f64::from(active(*i).saturating_add(1)))
            .collect();
        let total: f64 = effective.iter().sum();
        let mut roll = rand::random_range(0.0..total.max(f64::MIN_POSITIVE));
        for (i, e) in candidates.iter().zip(&effective) {
            if roll < *e {
                return Some(*i);
            }
            roll -= e;
        }
        candidates.last().copied()
    }
}
