//! Admission: the limits that keep one node proxy serving every pod when some of them misbehave.
//!
//! - a node-wide cap on downstream connections (Envoy's overload manager
//!   `global_downstream_max_connections`): a connection over it is closed at once, before any work;
//! - per client pod, a cap on connections and on requests in flight, so that one noisy pod cannot
//!   take the capacity another pod needs (a shared node proxy has no per-pod sidecar to isolate
//!   them). A connection over its pod's cap is closed at once; a request over it gets Envoy's
//!   overflow reply at once (503, `x-envoy-overloaded: true`, flag `UO`), never a queue;
//! - the timeouts that evict slow clients (header read, request body idle) and the HTTP/2 limits,
//!   carried here so that one value reaches every worker.
//!
//! Counting is lock-free on the request path: the pod's counters are found once per connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::admin::Stats;
use crate::overload::Overload;

/// The configured limits (`keel run` flags).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Downstream connections open at once, node-wide.
    pub max_connections: usize,
    /// Downstream connections open at once from one client pod.
    pub max_connections_per_pod: usize,
    /// HTTP requests in flight (until their response headers) from one client pod.
    pub max_requests_per_pod: usize,
    /// How long an HTTP/1 client may take to send a request's headers, and how long a kept-alive
    /// connection may wait for its next request (hyper's header read timeout).
    pub header_read_timeout: Duration,
    /// How long a request body may go without a byte before the request is reset (Envoy's
    /// `stream_idle_timeout`, 5 minutes).
    pub body_idle_timeout: Duration,
    /// HTTP/2 streams one downstream connection may have open (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub h2_max_concurrent_streams: u32,
}

/// Envoy's `stream_idle_timeout` default.
pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// hyper's default, which is also what a slowloris-hardened server uses (Envoy leaves it unset).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-pod connection cap: room for a busy gateway-like pod, far below the node-wide cap.
pub const DEFAULT_MAX_CONNECTIONS_PER_POD: usize = 4096;
/// Per-pod in-flight request cap.
pub const DEFAULT_MAX_REQUESTS_PER_POD: usize = 4096;
/// Envoy's HTTP/2 `max_concurrent_streams` is 2^31-1; Keel keeps hyper's 200 per connection
/// (well above what a client multiplexes on one connection, and each stream costs a task), and the
/// per-pod request cap bounds the total.
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 200;

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: default_max_connections(),
            max_connections_per_pod: DEFAULT_MAX_CONNECTIONS_PER_POD,
            max_requests_per_pod: DEFAULT_MAX_REQUESTS_PER_POD,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            body_idle_timeout: DEFAULT_BODY_IDLE_TIMEOUT,
            h2_max_concurrent_streams: DEFAULT_H2_MAX_CONCURRENT_STREAMS,
        }
    }
}

/// A quarter of the process's open-file limit: a proxied connection holds two descriptors
/// (downstream and upstream), so at the cap at most half the descriptors are in use and accept,
/// the admin API and config reads still have room. At least 256.
pub fn default_max_connections() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    let soft = if ok && limit.rlim_cur != libc::RLIM_INFINITY {
        usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
    } else {
        1 << 20
    };
    (soft / 4).max(256)
}

/// One client pod's load.
#[derive(Debug, Default)]
pub struct PodLoad {
    connections: AtomicUsize,
    requests: AtomicUsize,
}

/// The node's admission state, shared by every worker.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    pods: Mutex<HashMap<u64, Arc<PodLoad>>>,
    overload: Arc<Overload>,
    stats: Arc<Stats>,
}

impl Admission {
    /// Admission under `limits`, counting refusals in `stats`.
    pub fn new(limits: Limits, stats: Arc<Stats>) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            pods: Mutex::new(HashMap::new()),
            overload: Overload::new(Arc::clone(&stats)),
            stats,
        })
    }

    /// The memory overload manager whose actions admission and the request path apply.
    pub fn overload(&self) -> &Arc<Overload> {
        &self.overload
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Downstream connections open now.
    pub fn connections(&self) -> usize {
        usize::try_from(self.stats.downstream_cx_active.get()).unwrap_or(usize::MAX)
    }

    /// A slot under the node-wide cap, or `None` (counted) when it is full.
    pub fn connection(self: &Arc<Self>) -> Option<ConnectionSlot> {
        // The gauge is the count itself, so `/stats` never shows a stale value.
        let taken = self.stats.downstream_cx_active.inc();
        if usize::try_from(taken).unwrap_or(usize::MAX) >= self.limits.max_connections {
            self.stats.downstream_cx_active.dec();
            self.stats.refused_global_limit.inc();
            return None;
        }
        Some(ConnectionSlot {
            admission: Arc::clone(self),
        })
    }

    /// A slot under the pod's connection cap, or `None` (counted) when the pod has used them all.
    pub fn pod_connection(self: &Arc<Self>, cgroup: u64) -> Option<PodSlot> {
        let mut pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
        let load = Arc::clone(pods.entry(cgroup).or_default());
        let taken = load.connections.fetch_add(1, Ordering::AcqRel);
        if taken >= self.limits.max_connections_per_pod {
            load.connections.fetch_sub(1, Ordering::AcqRel);
            if taken == 0 {
                pods.remove(&cgroup);
            }
            drop(pods);
            self.stats.refused_pod_limit.inc();
            return None;
        }
        drop(pods);
        Some(PodSlot {
            admission: Arc::clone(self),
            cgroup,
            load,
        })
    }

    /// A budget without a pod connection (tests, and callers that count elsewhere).
    pub fn unattached(self: &Arc<Self>) -> RequestBudget {
        RequestBudget {
            admission: Arc::clone(self),
            load: Arc::default(),
        }
    }
}

/// One downstream connection under the node-wide cap; frees it on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    admission: Arc<Admission>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.admission.stats.downstream_cx_active.dec();
    }
}

/// One connection counted against its pod; frees it on drop (and forgets an idle pod).
#[derive(Debug)]
pub struct PodSlot {
    admission: Arc<Admission>,
    cgroup: u64,
    load: Arc<PodLoad>,
}

impl PodSlot {
    /// The pod's request budget, for the connection's requests.
    pub fn budget(&self) -> RequestBudget {
        RequestBudget {
            admission: Arc::clone(&self.admission),
            load: Arc::clone(&self.load),
        }
    }
}

impl Drop for PodSlot {
    fn drop(&mut self) {
        let mut pods = self
            .admission
            .pods
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if self.load.connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last connection of the pod: forget it (the map holds active pods only). A pod's
            // requests live inside its connections, so none is left.
            if pods
                .get(&self.cgroup)
                .is_some_and(|l| Arc::ptr_eq(l, &self.load))
            {
                pods.remove(&self.cgroup);
            }
        }
    }
}

/// What a connection's requests count against: its pod's in-flight requests.
#[derive(Debug, Clone)]
pub struct RequestBudget {
    admission: Arc<Admission>,
    load: Arc<PodLoad>,
}

impl RequestBudget {
    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.admission.limits
    }

    /// The node's counters.
    pub fn stats(&self) -> &Stats {
        &self.admission.stats
    }

    /// The memory overload manager.
    pub fn overload(&self) -> &Arc<Overload> {
        &self.admission.overload
    }

    /// A request slot, or `None` (counted) when the pod has its cap in flight.
    pub fn request(&self) -> Option<RequestSlot> {
        let taken = self.load.requests.fetch_add(1, Ordering::AcqRel);
        if taken >= self.admission.limits.max_requests_per_pod {
            self.load.requests.fetch_sub(1, Ordering::AcqRel);
            self.admission.stats.pod_request_overflow.inc();
            return None;
        }
        Some(RequestSlot {
            load: Arc::clone(&self.load),
        })
    }
}

/// One request in flight; frees its slot on drop.
#[derive(Debug)]
pub struct RequestSlot {
    load: Arc<PodLoad>,
}

impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.load.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(global: usize, per_pod: usize, requests: usize) -> Arc<Admission> {
        Admission::new(
            Limits {
                max_connections: global,
                max_connections_per_pod: per_pod,
                max_requests_per_pod: requests,
                ..Limits::default()
            },
            Arc::new(Stats::default()),
        )
    }

    #[test]
    fn global_cap_refuses_and_frees() {
        let a = admission(2, 10, 10);
        let one = a.connection();
        let two = a.connection();
        assert!(one.is_some() && two.is_some());
        assert!(a.connection().is_none());
        assert_eq!(a.stats.refused_global_limit.get(), 1);
        assert_eq!(a.stats.downstream_cx_active.get(), 2);
        drop(one);
        assert_eq!(a.connections(), 1);
        assert!(a.connection().is_some());
    }

    #[test]
    fn pod_cap_is_per_pod_and_forgets_idle_pods() {
        let a = admission(100, 2, 10);
        let a1 = a.pod_connection(1);
        let a2 = a.pod_connection(1);
        assert!(a1.is_some() && a2.is_some());
        assert!(a.pod_connection(1).is_none(), "pod 1 is at its cap");
        let b = a.pod_connection(2);
        assert!(b.is_some(), "pod 2 has its own cap");
        assert_eq!(a.stats.refused_pod_limit.get(), 1);
        drop((a1, a2, b));
        assert!(a.pods.lock().map(|p| p.is_empty()).unwrap_or(false));
    }

    #[test]
    fn pod_requests_share_one_cap_across_connections() {
        let a = admission(100, 10, 3);
        let (Some(c1), Some(c2)) = (a.pod_connection(1), a.pod_connection(1)) else {
            panic!("two connections fit");
        };
        let held: Vec<_> = [c1.budget(), c2.budget(), c1.budget()]
            .iter()
            .filter_map(RequestBudget::request)
            .collect();
        assert_eq!(held.len(), 3);
        assert!(c2.budget().request().is_none());
        assert_eq!(a.stats.pod_request_overflow.get(), 1);
        drop(held);
        assert!(c2.budget().request().is_some());
    }
}
