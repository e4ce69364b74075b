//! Admission: the limits that keep one node proxy serving every pod when some of them misbehave.
//!
//! - a node-wide cap on downstream connections (Envoy's overload manager
//!   `global_downstream_max_connections`): a connection over it is closed at once, before any work;
//! - per client pod, a cap on connections and on requests in flight, so that one noisy pod cannot
//!   take the capacity another pod needs (a shared node proxy has no per-pod sidecar to isolate
//!   them). A connection over its pod's cap is closed at once; a request over it gets Envoy's
//!   overflow reply at once (503, `x-envoy-overloaded: true`, flag `UO`), never a queue;
//! - per client pod, an optional request rate (`--max-request-rate-per-pod`) that *paces*: a request
//!   over the rate waits for its turn before it counts against the in-flight cap, and only one that
//!   would wait longer than [`PACE_MAX_DELAY`] is refused with Envoy's local rate limit reply (429
//!   `local_rate_limited`, flag `RL`), so at most the rate times that wait are ever waiting.
//!   Pacing rather than refusing is what bounds a closed-loop flood: a client that gets a fast
//!   refusal just asks again, and its requests keep costing the node's CPU, which every other pod
//!   shares;
//! - the timeouts that evict slow clients (header read, request body idle) and the HTTP/2 limits,
//!   carried here so that one value reaches every worker.
//!
//! Counting is lock-free on the request path: the pod's counters are found once per connection.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// Requests per second one client pod may start; `None`: no rate limit.
    pub max_request_rate_per_pod: Option<NonZeroU32>,
}

/// The longest a paced request waits for its turn; one that would wait longer gets 429 at once.
pub const PACE_MAX_DELAY: Duration = Duration::from_secs(1);

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
            max_request_rate_per_pod: None,
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
    /// The pod's rate limiter: the theoretical arrival time of its next request (GCRA), in
    /// nanoseconds since [`Admission::epoch`]. At or before now, the pod has its full burst.
    next_turn_ns: AtomicU64,
}

/// What the rate limit says of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Within the rate (or its burst): go on.
    Now,
    /// Over the rate: go on after this wait.
    After(Duration),
    /// Its turn is more than [`PACE_MAX_DELAY`] away: refuse (429).
    Refused,
}

/// A per-pod rate as the generic cell rate algorithm keeps it: one request every `interval_ns`,
/// with `burst` requests allowed back to back (a tenth of a second's worth, at least one).
#[derive(Debug, Clone, Copy)]
struct Rate {
    interval_ns: u64,
    tolerance_ns: u64,
    max_delay_ns: u64,
}

impl Rate {
    fn new(per_second: NonZeroU32, max_delay: Duration) -> Rate {
        let per_second = u64::from(per_second.get());
        let interval_ns = (1_000_000_000 / per_second).max(1);
        let burst = (per_second / 10).max(1);
        Rate {
            interval_ns,
            tolerance_ns: (burst - 1) * interval_ns,
            max_delay_ns: u64::try_from(max_delay.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// Take the next turn in `next_turn_ns` for a request arriving at `now_ns`. A refused request
    /// takes no turn, so refusals do not push the pod's later requests further back.
    fn take(&self, next_turn_ns: &AtomicU64, now_ns: u64) -> Pace {
        let mut current = next_turn_ns.load(Ordering::Acquire);
        loop {
            let turn = current.max(now_ns);
            let wait = turn
                .saturating_sub(self.tolerance_ns)
                .saturating_sub(now_ns);
            if wait > self.max_delay_ns {
                return Pace::Refused;
            }
            match next_turn_ns.compare_exchange_weak(
                current,
                turn.saturating_add(self.interval_ns),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) if wait == 0 => return Pace::Now,
                Ok(_) => return Pace::After(Duration::from_nanos(wait)),
                Err(seen) => current = seen,
            }
        }
    }

    /// Whether a pod whose next turn is `next_turn_ns` has its full burst back at `now_ns` (its
    /// state can then be forgotten without letting it exceed the rate).
    fn rested(&self, next_turn_ns: u64, now_ns: u64) -> bool {
        next_turn_ns <= now_ns
    }
}

/// The node's admission state, shared by every worker.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    rate: Option<Rate>,
    /// Time zero of the pods' rate limiters.
    epoch: Instant,
    pods: Mutex<PodTable>,
    overload: Arc<Overload>,
    stats: Arc<Stats>,
}

impl Admission {
    /// Admission under `limits`, counting refusals in `stats`.
    pub fn new(limits: Limits, stats: Arc<Stats>) -> Arc<Admission> {
        Arc::new(Admission {
            rate: limits
                .max_request_rate_per_pod
                .map(|r| Rate::new(r, PACE_MAX_DELAY)),
            limits,
            epoch: Instant::now(),
            pods: Mutex::new(PodTable::default()),
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
        let known = pods.loads.len();
        let load = Arc::clone(pods.loads.entry(cgroup).or_default());
        if pods.loads.len() > known {
            pods.sweep_when_grown(self.rate.as_ref(), self.now_ns());
        }
        let taken = load.connections.fetch_add(1, Ordering::AcqRel);
        if taken >= self.limits.max_connections_per_pod {
            load.connections.fetch_sub(1, Ordering::AcqRel);
            if taken == 0 {
                pods.loads.remove(&cgroup);
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

    /// Nanoseconds since the rate limiters' time zero.
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether a pod with no connection left must still be remembered: its rate limiter has not
    /// given back its burst, and forgetting it would let a client that opens a connection per
    /// request escape the rate.
    fn remembers_idle(&self, load: &PodLoad) -> bool {
        self.rate.as_ref().is_some_and(|rate| {
            !rate.rested(load.next_turn_ns.load(Ordering::Acquire), self.now_ns())
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

/// The client pods admission knows: those with a connection open, and idle ones remembered for
/// their rate limiter until it has given back their burst.
#[derive(Debug, Default)]
struct PodTable {
    loads: HashMap<u64, Arc<PodLoad>>,
    /// Pods known after the last sweep of idle ones; the next sweep runs once the table has
    /// doubled, so sweeping costs O(1) per pod added.
    swept_len: usize,
}

impl PodTable {
    /// Forget idle pods whose rate limiter has rested, once the table has doubled since the last
    /// sweep.
    fn sweep_when_grown(&mut self, rate: Option<&Rate>, now_ns: u64) {
        if self.loads.len() <= (2 * self.swept_len).max(64) {
            return;
        }
        self.loads.retain(|_, load| {
            load.connections.load(Ordering::Acquire) > 0
                || rate
                    .is_some_and(|r| !r.rested(load.next_turn_ns.load(Ordering::Acquire), now_ns))
        });
        self.swept_len = self.loads.len();
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
        if self.load.connections.fetch_sub(1, Ordering::AcqRel) == 1
            && !self.admission.remembers_idle(&self.load)
        {
            // The last connection of the pod: forget it (the map holds active pods, and idle pods
            // whose rate limiter is still owed). A pod's requests live inside its connections, so
            // none is left.
            if pods
                .loads
                .get(&self.cgroup)
                .is_some_and(|l| Arc::ptr_eq(l, &self.load))
            {
                pods.loads.remove(&self.cgroup);
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

    /// Where the pod's request rate limit puts a request that starts now (counted when it is
    /// paced or refused). Without a rate limit, always [`Pace::Now`].
    pub fn pace(&self) -> Pace {
        let Some(rate) = &self.admission.rate else {
            return Pace::Now;
        };
        let pace = rate.take(&self.load.next_turn_ns, self.admission.now_ns());
        match pace {
            Pace::Now => {}
            Pace::After(_) => self.admission.stats.pod_requests_paced.inc(),
            Pace::Refused => self.admission.stats.pod_requests_rate_limited.inc(),
        }
        pace
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
        assert!(a.pods.lock().map(|p| p.loads.is_empty()).unwrap_or(false));
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

    fn ms(n: u64) -> u64 {
        n * 1_000_000
    }

    #[test]
    fn rate_allows_a_tenth_of_a_second_burst_then_paces() {
        // 100/s: one every 10 ms, a burst of 10.
        let rate = Rate::new(NonZeroU32::new(100).expect("non-zero"), PACE_MAX_DELAY);
        let turn = AtomicU64::new(0);
        let now = ms(5_000);
        for _ in 0..10 {
            assert_eq!(rate.take(&turn, now), Pace::Now);
        }
        assert_eq!(
            rate.take(&turn, now),
            Pace::After(Duration::from_millis(10))
        );
        assert_eq!(
            rate.take(&turn, now),
            Pace::After(Duration::from_millis(20))
        );
        // 10 ms later one more turn is free than before.
        assert_eq!(
            rate.take(&turn, now + ms(10)),
            Pace::After(Duration::from_millis(20))
        );
        // After a rest the whole burst is back.
        let later = now + ms(1_000);
        assert!(rate.rested(turn.load(Ordering::Acquire), later));
        for _ in 0..10 {
            assert_eq!(rate.take(&turn, later), Pace::Now);
        }
    }

    #[test]
    fn rate_refuses_beyond_the_longest_wait_without_taking_a_turn() {
        // 10/s: one every 100 ms, a burst of 1; waits up to 1 s are paced.
        let rate = Rate::new(NonZeroU32::new(10).expect("non-zero"), PACE_MAX_DELAY);
        let turn = AtomicU64::new(0);
        let now = ms(10_000);
        assert_eq!(rate.take(&turn, now), Pace::Now);
        for i in 1..=10 {
            assert_eq!(
                rate.take(&turn, now),
                Pace::After(Duration::from_millis(100 * i))
            );
        }
        let owed = turn.load(Ordering::Acquire);
        assert_eq!(rate.take(&turn, now), Pace::Refused);
        assert_eq!(
            turn.load(Ordering::Acquire),
            owed,
            "a refusal takes no turn"
        );
        // Arrivals every millisecond for a second: the admitted ones start 100 ms apart, and only
        // as far ahead as the longest wait.
        let starts: Vec<u64> = (0..1_000u64)
            .map(|i| now + ms(2_000) + ms(i))
            .filter_map(|t| match rate.take(&turn, t) {
                Pace::Now => Some(t),
                Pace::After(wait) => Some(t + u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX)),
                Pace::Refused => None,
            })
            .collect();
        assert!(
            starts.windows(2).all(|w| w[1] - w[0] >= ms(100)),
            "{starts:?}"
        );
        assert!((19..=21).contains(&starts.len()), "{starts:?}");
    }

    #[test]
    fn pod_rate_is_per_pod_and_survives_reconnects() {
        let a = Admission::new(
            Limits {
                max_request_rate_per_pod: NonZeroU32::new(10),
                ..Limits::default()
            },
            Arc::new(Stats::default()),
        );
        let first = a.pod_connection(1).expect("room");
        assert_eq!(first.budget().pace(), Pace::Now);
        assert!(matches!(first.budget().pace(), Pace::After(_)));
        // A connection per request does not reset the pod's turn.
        drop(first);
        let again = a.pod_connection(1).expect("room");
        assert!(matches!(again.budget().pace(), Pace::After(_)));
        // Another pod has its own rate.
        let other = a.pod_connection(2).expect("room");
        assert_eq!(other.budget().pace(), Pace::Now);
        assert_eq!(a.stats.pod_requests_paced.get(), 2);
        assert_eq!(a.stats.pod_requests_rate_limited.get(), 0);
    }

    #[test]
    fn idle_pods_kept_for_their_rate_are_swept_once_rested() {
        let rate = Rate::new(NonZeroU32::new(10).expect("non-zero"), PACE_MAX_DELAY);
        let mut table = PodTable::default();
        for cgroup in 0..100 {
            let load = Arc::new(PodLoad::default());
            load.next_turn_ns.store(ms(1_000), Ordering::Release);
            table.loads.insert(cgroup, load);
        }
        table.sweep_when_grown(Some(&rate), ms(500));
        assert_eq!(table.loads.len(), 100, "their turns are still owed");
        table.sweep_when_grown(Some(&rate), ms(1_000));
        assert_eq!(table.loads.len(), 100, "not grown since the last sweep");
        for cgroup in 100..201 {
            table.loads.insert(cgroup, Arc::new(PodLoad::default()));
        }
        table.sweep_when_grown(Some(&rate), ms(1_000));
        assert!(table.loads.is_empty(), "all rested and idle");
    }
}
