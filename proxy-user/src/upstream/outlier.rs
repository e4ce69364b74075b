//! Outlier detection (DestinationRule `outlierDetection`) for one (client pod, cluster) pair, as Envoy
//! applies it with the settings istiod gives it: consecutive 5xx, consecutive gateway errors and,
//! with `splitExternalLocalOriginErrors`, consecutive local-origin failures. Success-rate and
//! failure-percentage ejection are off, as Istio leaves them.
//!
//! Invariants and design:
//! - State is per endpoint address. [`OutlierDetector::set_hosts`] keeps the state of endpoints that
//!   stay and forgets removed ones; results for an address it does not know are ignored (Envoy drops
//!   them the same way once a host has left the cluster).
//! - Ejection is decided inline in [`OutlierDetector::record`], when a counter reaches its threshold.
//! - Un-ejection and the decay of the ejection multiplier happen at *sweeps*, every `interval` from the
//!   detector's creation (`created + n × interval`, n ≥ 1), as Envoy's interval timer does. Sweeps are
//!   lazy: there is no task or timer per detector (a node may hold 10,000 of them). Every call that
//!   takes a `now` first runs, in order, all sweeps due by `now`; a long idle gap is caught up in one
//!   pass per host (closed form), not one pass per sweep. When nothing is ejected the only effect of a
//!   sweep is the multiplier decay, which matters only at the next ejection, so the balancer's fast
//!   path ([`OutlierDetector::ejected_count`] = 0) may skip sweeping without changing any outcome.
//! - `ejected` always equals the number of ejected hosts in the map; it changes only under the lock.
//! - Memory: 184 bytes per detector plus about 65 bytes per endpoint (a 32-byte `HostState` keyed by
//!   a 32-byte `SocketAddr`, one control byte, at most 7/8 load): about 0.5 KB for a pair with 3
//!   endpoints, 1.2 KB with 10.
//! - Circuit-breaker overflow (`UO`) never reaches the detector: the caller does not record it, as
//!   Envoy does not report overflow to outlier detection (ejecting hosts because the *cluster* is
//!   overloaded would make things worse).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::outcome::AttemptOutcome;
use crate::policy::model::OutlierDetection;

/// Envoy's `max_ejection_time` default; istiod never sets it. The cap is max(this, baseEjectionTime).
const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);
/// Envoy's default threshold for `consecutive_gateway_failure` (detected, not enforced, when unset).
const ENVOY_DEFAULT_GATEWAY_THRESHOLD: u32 = 5;
/// Envoy's default overprovisioning factor, in percent: a priority with at least 100/1.4 ≈ 71.4%
/// healthy hosts counts as fully available and is never in panic.
const OVERPROVISIONING_PERCENT: u64 = 140;

/// How one attempt to an endpoint ended, as outlier detection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostResult {
    /// Response headers with this HTTP status (for gRPC, the status Envoy maps a header
    /// `grpc-status` to). A TCP proxy records a successful connect as `Response(200)`, which is what
    /// Envoy's `LOCAL_ORIGIN_CONNECT_SUCCESS_FINAL` amounts to.
    Response(u16),
    /// The pool handed out a connection or stream to the host. Counts only with
    /// `splitExternalLocalOriginErrors`, where it resets the local-origin counter (Envoy's
    /// `LOCAL_ORIGIN_CONNECT_SUCCESS`).
    ConnectSuccess,
    /// No connection could be made (local origin).
    ConnectFailure,
    /// The connection or stream broke before response headers (local origin).
    Reset,
    /// A per-try timeout or the route timeout fired before response headers (local origin).
    Timeout,
}

impl HostResult {
    /// The result of a finished attempt ([`AttemptOutcome`]).
    pub fn from_outcome(outcome: &AttemptOutcome) -> HostResult {
        match *outcome {
            AttemptOutcome::Response {
                status,
                grpc_status,
                ..
            } => HostResult::Response(grpc_status.map_or(status, grpc_to_http_status)),
            AttemptOutcome::ConnectFailure => HostResult::ConnectFailure,
            AttemptOutcome::Reset { .. } => HostResult::Reset,
            AttemptOutcome::PerTryTimeout => HostResult::Timeout,
        }
    }
}

/// The HTTP status Envoy reports to outlier detection for a gRPC status in response headers.
fn grpc_to_http_status(grpc: u32) -> u16 {
    match grpc {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    }
}

/// Outlier-detection counters of one cluster, shared by the detectors of all its clients and named
/// as Envoy names them under `cluster.<name>.outlier_detection.`.
#[derive(Debug, Default)]
pub struct OutlierStats {
    /// Gauge: hosts ejected now (summed over clients).
    pub ejections_active: AtomicU64,
    /// Ejections carried out, any reason.
    pub ejections_enforced_total: AtomicU64,
    /// Ejections refused by `maxEjectionPercent`.
    pub ejections_overflow: AtomicU64,
    /// Ejections carried out for consecutive 5xx.
    pub ejections_enforced_consecutive_5xx: AtomicU64,
    /// Consecutive-5xx thresholds reached (ejected or not).
    pub ejections_detected_consecutive_5xx: AtomicU64,
    /// Ejections carried out for consecutive gateway errors.
    pub ejections_enforced_consecutive_gateway_failure: AtomicU64,
    /// Consecutive-gateway-error thresholds reached (ejected or not).
    pub ejections_detected_consecutive_gateway_failure: AtomicU64,
    /// Ejections carried out for consecutive local-origin failures.
    pub ejections_enforced_consecutive_local_origin_failure: AtomicU64,
    /// Consecutive-local-origin-failure thresholds reached (ejected or not).
    pub ejections_detected_consecutive_local_origin_failure: AtomicU64,
    /// Deprecated in Envoy and kept with its meaning: consecutive-5xx detections within
    /// `maxEjectionPercent`, enforced or not.
    pub ejections_total: AtomicU64,
}

impl OutlierStats {
    /// Every counter with its Envoy name under the cluster (`outlier_detection.<stat>`), for the
    /// admin API.
    pub fn for_each(&self, mut f: impl FnMut(&'static str, u64)) {
        let all: [(&'static str, &AtomicU64); 10] = [
            ("outlier_detection.ejections_active", &self.ejections_active),
            (
                "outlier_detection.ejections_enforced_total",
                &self.ejections_enforced_total,
            ),
            (
                "outlier_detection.ejections_overflow",
                &self.ejections_overflow,
            ),
            (
                "outlier_detection.ejections_enforced_consecutive_5xx",
                &self.ejections_enforced_consecutive_5xx,
            ),
            (
                "outlier_detection.ejections_detected_consecutive_5xx",
                &self.ejections_detected_consecutive_5xx,
            ),
            (
                "outlier_detection.ejections_enforced_consecutive_gateway_failure",
                &self.ejections_enforced_consecutive_gateway_failure,
            ),
            (
                "outlier_detection.ejections_detected_consecutive_gateway_failure",
                &self.ejections_detected_consecutive_gateway_failure,
            ),
            (
                "outlier_detection.ejections_enforced_consecutive_local_origin_failure",
                &self.ejections_enforced_consecutive_local_origin_failure,
            ),
            (
                "outlier_detection.ejections_detected_consecutive_local_origin_failure",
                &self.ejections_detected_consecutive_local_origin_failure,
            ),
            ("outlier_detection.ejections_total", &self.ejections_total),
        ];
        for (name, v) in all {
            f(name, v.load(Ordering::Relaxed));
        }
    }
}

/// Where a detector counts: its cluster's sums and, per client pod, the client's own counters
/// (two atomics per event, never a lock).
#[derive(Debug)]
pub struct OutlierSinks {
    cluster: Arc<OutlierStats>,
    client: Option<Arc<OutlierStats>>,
}

impl OutlierSinks {
    /// Counts into `cluster` and `client`.
    pub fn new(cluster: Arc<OutlierStats>, client: Arc<OutlierStats>) -> Self {
        Self {
            cluster,
            client: Some(client),
        }
    }

    fn inc(&self, f: impl Fn(&OutlierStats) -> &AtomicU64) {
        self.add(f, 1);
    }

    fn add(&self, f: impl Fn(&OutlierStats) -> &AtomicU64, n: u64) {
        f(&self.cluster).fetch_add(n, Ordering::Relaxed);
        if let Some(c) = &self.client {
            f(c).fetch_add(n, Ordering::Relaxed);
        }
    }

    fn sub(&self, f: impl Fn(&OutlierStats) -> &AtomicU64, n: u64) {
        f(&self.cluster).fetch_sub(n, Ordering::Relaxed);
        if let Some(c) = &self.client {
            f(c).fetch_sub(n, Ordering::Relaxed);
        }
    }
}

impl From<Arc<OutlierStats>> for OutlierSinks {
    /// Cluster sums only (tests, node-wide state).
    fn from(cluster: Arc<OutlierStats>) -> Self {
        Self {
            cluster,
            client: None,
        }
    }
}

/// Why a host is ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Consecutive5xx,
    ConsecutiveGateway,
    ConsecutiveLocalOrigin,
}

/// The detector's settings, resolved once from the model.
#[derive(Debug)]
struct Settings {
    /// Consecutive 5xx threshold; 0 = never detected.
    consecutive_5xx: u32,
    /// Consecutive gateway-error threshold; 0 = never detected.
    consecutive_gateway: u32,
    /// Whether a gateway detection ejects (only when `consecutiveGatewayErrors` > 0).
    gateway_enforced: bool,
    /// Consecutive local-origin threshold, used only with `split`; 0 = never detected.
    consecutive_local_origin: u32,
    split: bool,
    /// Statuses that count as errors; empty = 5xx.
    http_error_codes: Box<[u16]>,
    /// Sweep period in nanoseconds, ≥ 1.
    interval_ns: u64,
    base_ejection_time: Duration,
    max_ejection_time: Duration,
    max_ejection_percent: u64,
    min_health_percent: u64,
}

/// One endpoint's record. Times are sweep numbers (sweep n runs at `created + n × interval`).
#[derive(Debug, Clone, Copy, Default)]
struct HostState {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    consecutive_local_origin: u32,
    /// Envoy's ejection-time multiplier k: +1 per ejection (capped where k × base reaches the maximum
    /// ejection time), −1 per sweep while healthy.
    backoff: u32,
    /// The sweep that un-ejects the host; 0 = not ejected.
    uneject_at: u64,
    /// The sweep that last un-ejected the host; 0 = never ejected.
    last_uneject: u64,
}

impl HostState {
    fn ejected(&self) -> bool {
        self.uneject_at != 0
    }

    fn reset_counters(&mut self) {
        self.consecutive_5xx = 0;
        self.consecutive_gateway = 0;
        self.consecutive_local_origin = 0;
    }

    /// Applies sweeps `from + 1 ..= to` to this host. Returns whether the host was un-ejected.
    fn sweep(&mut self, from: u64, to: u64) -> bool {
        if self.ejected() {
            if self.uneject_at > to {
                return false;
            }
            let at = self.uneject_at.max(from + 1);
            self.uneject_at = 0;
            self.last_uneject = at;
            // Envoy resets the counters so that a few new errors do not re-eject at once.
            self.reset_counters();
            self.decay(to - at);
            return true;
        }
        if self.last_uneject != 0 {
            // A sweep decays k when at least one interval has passed since the un-ejection.
            let after = from.max(self.last_uneject);
            self.decay(to.saturating_sub(after));
        }
        false
    }

    fn decay(&mut self, sweeps: u64) {
        let by = u32::try_from(sweeps).unwrap_or(u32::MAX);
        self.backoff = self.backoff.saturating_sub(by);
    }
}

#[derive(Debug, Default)]
struct State {
    /// Sweeps run so far.
    sweeps: u64,
    hosts: HashMap<SocketAddr, HostState>,
}

/// Outlier detection for one (client, cluster) pair. Cheap to consult when nothing is ejected: see
/// [`OutlierDetector::ejected_count`].
#[derive(Debug)]
pub struct OutlierDetector {
    settings: Settings,
    /// Sweep 0; sweeps run at `created + n × interval`.
    created: Instant,
    /// Hosts ejected now (mirrors the map; written under the lock).
    ejected: AtomicUsize,
    stats: OutlierSinks,
    state: Mutex<State>,
}

impl OutlierDetector {
    /// A detector for `hosts`, created at `now` (its sweeps run every `interval` from `now`).
    pub fn new(
        od: &OutlierDetection,
        stats: impl Into<OutlierSinks>,
        hosts: &[SocketAddr],
        now: Instant,
    ) -> Self {
        let (consecutive_gateway, gateway_enforced) = match od.consecutive_gateway_errors {
            None => (ENVOY_DEFAULT_GATEWAY_THRESHOLD, false),
            Some(n) => (n, n > 0),
        };
        let settings = Settings {
            consecutive_5xx: od.consecutive_5xx_errors.unwrap_or(0),
            consecutive_gateway,
            gateway_enforced,
            consecutive_local_origin: if od.split_external_local_origin_errors {
                od.consecutive_local_origin_failures.unwrap_or(0)
            } else {
                0
            },
            split: od.split_external_local_origin_errors,
            http_error_codes: od.http_error_codes.clone().into_boxed_slice(),
            interval_ns: u64::try_from(od.interval.as_nanos())
                .unwrap_or(u64::MAX)
                .max(1),
            base_ejection_time: od.base_ejection_time,
            max_ejection_time: MAX_EJECTION_TIME.max(od.base_ejection_time),
            max_ejection_percent: u64::from(od.max_ejection_percent.min(100)),
            min_health_percent: u64::from(od.min_health_percent.min(100)),
        };
        let detector = OutlierDetector {
            settings,
            created: now,
            ejected: AtomicUsize::new(0),
            stats: stats.into(),
            state: Mutex::new(State::default()),
        };
        detector.set_hosts(hosts);
        detector
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The sweep number due at `now` (the last sweep at or before it).
    fn sweep_at(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.created).as_nanos();
        u64::try_from(elapsed / u128::from(self.settings.interval_ns)).unwrap_or(u64::MAX)
    }

    /// Runs every sweep due by `now`, in order.
    fn run_sweeps(&self, state: &mut State, now: Instant) {
        let due = self.sweep_at(now);
        if due <= state.sweeps {
            return;
        }
        let from = state.sweeps;
        let mut unejected = 0;
        for host in state.hosts.values_mut() {
            if host.sweep(from, due) {
                unejected += 1;
            }
        }
        state.sweeps = due;
        if unejected > 0 {
            self.ejected.fetch_sub(unejected, Ordering::Relaxed);
            self.stats.sub(|s| &s.ejections_active, unejected as u64);
        }
    }

    /// The endpoints are now exactly `hosts`: new ones start clean, remaining ones keep their state,
    /// removed ones are forgotten (an ejected one leaves the ejected count). Called when the cluster's
    /// endpoints change, never per request.
    pub fn set_hosts(&self, hosts: &[SocketAddr]) {
        let wanted: HashSet<&SocketAddr> = hosts.iter().collect();
        let mut state = self.lock();
        let mut removed_ejected = 0;
        state.hosts.retain(|addr, h| {
            let keep = wanted.contains(addr);
            if !keep && h.ejected() {
                removed_ejected += 1;
            }
            keep
        });
        for addr in hosts {
            state.hosts.entry(*addr).or_default();
        }
        if removed_ejected > 0 {
            self.ejected.fetch_sub(removed_ejected, Ordering::Relaxed);
            self.stats
                .sub(|s| &s.ejections_active, removed_ejected as u64);
        }
    }

    /// Hosts ejected now. A balancer that reads 0 skips every other call.
    pub fn ejected_count(&self) -> usize {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Whether `host` is ejected at `now`.
    pub fn is_ejected(&self, host: SocketAddr, now: Instant) -> bool {
        if self.ejected_count() == 0 {
            return false;
        }
        let mut state = self.lock();
        self.run_sweeps(&mut state, now);
        state.hosts.get(&host).is_some_and(HostState::ejected)
    }

    /// Whether the cluster is in panic at `now` with `total_hosts` endpoints: fewer than
    /// `minHealthPercent` of them healthy, so the balancer uses all hosts, ejected ones included.
    /// As Envoy: never with `minHealthPercent` 0 (Istio's default), and never while the healthy
    /// share, scaled by the overprovisioning factor 1.4, still reaches 100%.
    pub fn panic(&self, total_hosts: usize, now: Instant) -> bool {
        if self.ejected_count() == 0 || self.settings.min_health_percent == 0 {
            return false;
        }
        let ejected = {
            let mut state = self.lock();
            self.run_sweeps(&mut state, now);
            self.ejected_count()
        };
        self.in_panic(total_hosts, ejected)
    }

    fn in_panic(&self, total_hosts: usize, ejected: usize) -> bool {
        let threshold = self.settings.min_health_percent;
        if threshold == 0 || total_hosts == 0 {
            return false;
        }
        let total = total_hosts as u64;
        let healthy = total.saturating_sub(ejected as u64);
        let available = (OVERPROVISIONING_PERCENT * healthy / total).min(100);
        available < 100 && 100 * healthy < threshold * total
    }

    /// The endpoints a balancer must not pick at `now` among `total_hosts`: the ejected ones, or none
    /// in panic. Empty without taking a lock when nothing is ejected.
    pub fn hosts_to_skip(&self, total_hosts: usize, now: Instant) -> Vec<SocketAddr> {
        if self.ejected_count() == 0 {
            return Vec::new();
        }
        let mut state = self.lock();
        self.run_sweeps(&mut state, now);
        if self.in_panic(total_hosts, self.ejected_count()) {
            return Vec::new();
        }
        state
            .hosts
            .iter()
            .filter(|(_, h)| h.ejected())
            .map(|(a, _)| *a)
            .collect()
    }

    /// Records how an attempt to `host` ended at `now`, with `total_hosts` endpoints in the cluster
    /// (for `maxEjectionPercent`); ejects `host` when a threshold is reached.
    pub fn record(&self, host: SocketAddr, result: HostResult, now: Instant, total_hosts: usize) {
        // Without split a connect success changes nothing: skip the lock on every request.
        if result == HostResult::ConnectSuccess && !self.settings.split {
            return;
        }
        let mut state = self.lock();
        self.run_sweeps(&mut state, now);
        let sweeps = state.sweeps;
        let Some(h) = state.hosts.get_mut(&host) else {
            return;
        };
        let s = &self.settings;
        let detected = if s.split {
            match result {
                HostResult::Response(status) => {
                    if self.is_error(status) {
                        // Envoy reports an error response as "external failure", which its split
                        // mode counts as a 503 (a gateway error too), whatever the status was.
                        self.external(h, 503)
                    } else {
                        h.consecutive_local_origin = 0;
                        self.external(h, 200)
                    }
                }
                HostResult::ConnectSuccess => {
                    h.consecutive_local_origin = 0;
                    [None, None]
                }
                HostResult::ConnectFailure | HostResult::Reset | HostResult::Timeout => {
                    h.consecutive_local_origin = h.consecutive_local_origin.saturating_add(1);
                    let hit = s.consecutive_local_origin > 0
                        && h.consecutive_local_origin == s.consecutive_local_origin;
                    [hit.then_some(Kind::ConsecutiveLocalOrigin), None]
                }
            }
        } else {
            match result {
                HostResult::Response(status) => {
                    let code = match (self.is_error(status), s.http_error_codes.is_empty()) {
                        (_, true) => status,
                        (true, false) if (500..=599).contains(&status) => status,
                        (true, false) => 500,
                        (false, false) => 200,
                    };
                    self.external(h, code)
                }
                HostResult::ConnectSuccess => [None, None],
                // Without split, local-origin failures are errors like the status Envoy maps them to.
                HostResult::ConnectFailure | HostResult::Reset => self.external(h, 503),
                HostResult::Timeout => self.external(h, 504),
            }
        };
        for kind in detected.into_iter().flatten() {
            self.detected(h, kind, sweeps, now, total_hosts);
        }
    }

    /// A threshold was reached: count it and eject `h` if `maxEjectionPercent` allows and the check
    /// is enforced.
    fn detected(
        &self,
        h: &mut HostState,
        kind: Kind,
        sweeps: u64,
        now: Instant,
        total_hosts: usize,
    ) {
        // Envoy ignores a detection for a host already ejected (e.g. used in panic, or just ejected
        // by the other check on the same response); its counters are reset at un-ejection.
        if h.ejected() {
            return;
        }
        let s = &self.settings;
        match kind {
            Kind::Consecutive5xx => {
                self.stats.inc(|s| &s.ejections_detected_consecutive_5xx);
                h.consecutive_5xx = 0;
            }
            Kind::ConsecutiveGateway => {
                self.stats
                    .inc(|s| &s.ejections_detected_consecutive_gateway_failure);
                h.consecutive_gateway = 0;
            }
            Kind::ConsecutiveLocalOrigin => {
                self.stats
                    .inc(|s| &s.ejections_detected_consecutive_local_origin_failure);
                h.consecutive_local_origin = 0;
            }
        }
        // Strict `<`, computed before ejecting this host: the first ejection always passes.
        let ejected = self.ejected_count() as u64;
        let total = total_hosts.max(1) as u64;
        if 100 * ejected >= s.max_ejection_percent * total {
            self.stats.inc(|s| &s.ejections_overflow);
            return;
        }
        if kind == Kind::Consecutive5xx {
            self.stats.inc(|s| &s.ejections_total);
        }
        if kind == Kind::ConsecutiveGateway && !s.gateway_enforced {
            return;
        }
        // k grows until k × base reaches the maximum ejection time.
        if s.base_ejection_time.saturating_mul(h.backoff) < s.max_ejection_time {
            h.backoff = h.backoff.saturating_add(1);
        }
        let duration = s
            .base_ejection_time
            .saturating_mul(h.backoff)
            .min(s.max_ejection_time);
        let since = now.saturating_duration_since(self.created).as_nanos();
        let until = since.saturating_add(duration.as_nanos());
        let interval = u128::from(s.interval_ns);
        // Un-ejected at the first sweep at or after the ejection time has elapsed.
        let uneject_at = u64::try_from(until.div_ceil(interval)).unwrap_or(u64::MAX);
        h.uneject_at = uneject_at.max(sweeps + 1);
        self.ejected.fetch_add(1, Ordering::Relaxed);
        self.stats.inc(|s| &s.ejections_active);
        self.stats.inc(|s| &s.ejections_enforced_total);
        self.stats.inc(|s| match kind {
            Kind::Consecutive5xx => &s.ejections_enforced_consecutive_5xx,
            Kind::ConsecutiveGateway => &s.ejections_enforced_consecutive_gateway_failure,
            Kind::ConsecutiveLocalOrigin => &s.ejections_enforced_consecutive_local_origin_failure,
        });
    }

    /// Whether a response status counts as an error: listed in `outlierDetectionHttpErrorCodes`, or
    /// 5xx when the list is empty.
    fn is_error(&self, status: u16) -> bool {
        if self.settings.http_error_codes.is_empty() {
            (500..=599).contains(&status)
        } else {
            self.settings.http_error_codes.contains(&status)
        }
    }

    /// Counts a status Envoy's host monitor sees (after any mapping); returns what it detected, the
    /// gateway check first as in Envoy.
    fn external(&self, h: &mut HostState, code: u16) -> [Option<Kind>; 2] {
        let s = &self.settings;
        if !(500..=599).contains(&code) {
            h.consecutive_5xx = 0;
            h.consecutive_gateway = 0;
            return [None, None];
        }
        let mut gateway = None;
        if (502..=504).contains(&code) {
            h.consecutive_gateway = h.consecutive_gateway.saturating_add(1);
            if s.consecutive_gateway > 0 && h.consecutive_gateway == s.consecutive_gateway {
                gateway = Some(Kind::ConsecutiveGateway);
            }
        } else {
            h.consecutive_gateway = 0;
        }
        h.consecutive_5xx = h.consecutive_5xx.saturating_add(1);
        let five_xx = (s.consecutive_5xx > 0 && h.consecutive_5xx == s.consecutive_5xx)
            .then_some(Kind::Consecutive5xx);
        [gateway, five_xx]
    }
}

impl Drop for OutlierDetector {
    /// Reclaimed client state takes its ejections out of the cluster's gauge.
    fn drop(&mut self) {
        let ejected = self.ejected_count() as u64;
        if ejected > 0 {
            self.stats.sub(|s| &s.ejections_active, ejected);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "10.0.0.1:80";
    const B: &str = "10.0.0.2:80";
    const C: &str = "10.0.0.3:80";

    fn addr(s: &str) -> SocketAddr {
        s.parse()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    fn addrs(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 80)))
            .collect()
    }

    /// Istio's defaults for a present block, with the knobs the tests turn.
    fn od(consecutive_5xx: Option<u32>) -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx_errors: consecutive_5xx,
            consecutive_gateway_errors: None,
            split_external_local_origin_errors: false,
            consecutive_local_origin_failures: None,
            http_error_codes: Vec::new(),
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(10),
            max_ejection_percent: 100,
            min_health_percent: 0,
        }
    }

    struct Harness {
        t0: Instant,
        d: OutlierDetector,
        stats: Arc<OutlierStats>,
        total: usize,
    }

    impl Harness {
        fn new(cfg: &OutlierDetection, hosts: &[SocketAddr]) -> Self {
            let t0 = Instant::now();
            let stats = Arc::new(OutlierStats::default());
            Harness {
                t0,
                d: OutlierDetector::new(cfg, Arc::clone(&stats), hosts, t0),
                stats,
                total: hosts.len(),
            }
        }

        fn at(&self, ms: u64) -> Instant {
            self.t0 + Duration::from_millis(ms)
        }

        fn record(&self, host: &str, result: HostResult, ms: u64) {
            self.d.record(addr(host), result, self.at(ms), self.total);
        }

        fn fail(&self, host: &str, status: u16, times: usize, ms: u64) {
            for _ in 0..times {
                self.record(host, HostResult::Response(status), ms);
            }
        }

        fn ejected(&self, host: &str, ms: u64) -> bool {
            self.d.is_ejected(addr(host), self.at(ms))
        }

        fn stat(&self, name: &str) -> u64 {
            let mut found = None;
            self.stats.for_each(|n, v| {
                if n.strip_prefix("outlier_detection.") == Some(name) {
                    found = Some(v);
                }
            });
            found.unwrap_or(u64::MAX)
        }
    }

    #[test]
    fn three_500s_eject_for_base_then_twice_then_three_times_until_the_sweep() {
        let h = Harness::new(&od(Some(3)), &[addr(A), addr(B)]);
        h.fail(B, 500, 2, 500);
        assert!(!h.ejected(B, 500));
        assert_eq!(h.d.ejected_count(), 0);
        h.fail(B, 500, 1, 500);
        assert_eq!(h.d.ejected_count(), 1);
        assert!(h.ejected(B, 500));
        assert!(!h.ejected(A, 500));
        assert_eq!(h.stat("ejections_active"), 1);
        // Ejected at 0.5 s for 10 s: back at the first sweep at or after 10.5 s, the one at 11 s.
        assert!(h.ejected(B, 10_999));
        assert!(!h.ejected(B, 11_000));
        assert_eq!(h.stat("ejections_active"), 0);

        // Failing again at once: 2 × base = 20 s from 11.2 s, back at the 32 s sweep.
        h.fail(B, 500, 3, 11_200);
        assert!(h.ejected(B, 11_200));
        assert!(h.ejected(B, 31_999));
        assert!(!h.ejected(B, 32_000));

        // Ejected exactly at a sweep (32 s): 3 × base = 30 s, back exactly at the 62 s sweep.
        h.fail(B, 500, 3, 32_000);
        assert!(h.ejected(B, 61_999));
        assert!(!h.ejected(B, 62_000));

        assert_eq!(h.stat("ejections_enforced_consecutive_5xx"), 3);
        assert_eq!(h.stat("ejections_detected_consecutive_5xx"), 3);
        assert_eq!(h.stat("ejections_enforced_total"), 3);
        assert_eq!(h.stat("ejections_total"), 3);
        assert_eq!(h.stat("ejections_overflow"), 0);
    }

    #[test]
    fn ejection_time_is_capped_at_300s_or_base() {
        let mut cfg = od(Some(1));
        cfg.base_ejection_time = Duration::from_secs(200);
        let h = Harness::new(&cfg, &[addr(A), addr(B)]);
        h.fail(B, 500, 1, 0);
        assert!(!h.ejected(B, 200_000), "200 s at the 200 s sweep");
        h.fail(B, 500, 1, 200_000);
        // 2 × 200 s = 400 s, capped at 300 s.
        assert!(h.ejected(B, 499_999));
        assert!(!h.ejected(B, 500_000));

        // A base above 300 s is its own cap.
        let mut cfg = od(Some(1));
        cfg.base_ejection_time = Duration::from_secs(400);
        let h = Harness::new(&cfg, &[addr(A), addr(B)]);
        h.fail(B, 500, 1, 0);
        assert!(!h.ejected(B, 400_000));
        h.fail(B, 500, 1, 400_000);
        assert!(h.ejected(B, 799_999));
        assert!(!h.ejected(B, 800_000));
    }

    #[test]
    fn the_multiplier_decays_by_one_per_sweep_while_healthy() {
        // k = 2 after two ejections in a row; one healthy sweep brings it to 1, so the next
        // ejection is 2 × base, not 3 ×.
        let h = Harness::new(&od(Some(3)), &[addr(A), addr(B)]);
        h.fail(B, 500, 3, 500); // k = 1, back at 11 s
        h.fail(B, 500, 3, 11_500); // k = 2, 20 s, back at 32 s
        assert!(!h.ejected(B, 32_000));
        // The 33 s sweep decays k to 1.
        h.fail(B, 500, 3, 33_500); // k = 2: 20 s from 33.5 s, back at 54 s
        assert!(h.ejected(B, 53_999));
        assert!(!h.ejected(B, 54_000));

        // Without the healthy sweep in between: k = 3.
        let h = Harness::new(&od(Some(3)), &[addr(A), addr(B)]);
        h.fail(B, 500, 3, 500);
        h.fail(B, 500, 3, 11_500);
        h.fail(B, 500, 3, 32_500); // k = 3: 30 s from 32.5 s, back at 63 s
        assert!(h.ejected(B, 62_999));
        assert!(!h.ejected(B, 63_000));

        // Healthy long enough, k reaches 0 and the next ejection is base again.
        let h = Harness::new(&od(Some(3)), &[addr(A), addr(B)]);
        h.fail(B, 500, 3, 500); // k = 1, back at 11 s
        h.fail(B, 500, 3, 11_500); // k = 2, back at 32 s
        h.fail(B, 500, 3, 34_500); // sweeps 33 and 34 decayed k to 0: k = 1, back at 45 s
        assert!(h.ejected(B, 44_999));
        assert!(!h.ejected(B, 45_000));
    }

    #[test]
    fn lazy_sweeps_catch_up_after_a_long_idle_gap() {
        let h = Harness::new(&od(Some(3)), &[addr(A), addr(B)]);
        h.fail(B, 500, 3, 500); // k = 1
        h.fail(B, 500, 3, 11_500); // k = 2, back at 32 s
                                   // Nothing is called for 100 s; the first call runs sweeps 12..=132 in order: un-ejection at
                                   // 32, then k decays to 0 over the following sweeps.
        assert_eq!(h.d.ejected_count(), 1);
        h.fail(B, 500, 3, 132_500); // k = 1: back at 143 s
        assert!(h.ejected(B, 142_999));
        assert!(!h.ejected(B, 143_000));
        assert_eq!(h.stat("ejections_enforced_consecutive_5xx"), 3);
        assert_eq!(h.stat("ejections_active"), 0);
    }

    #[test]
    fn max_ejection_percent_three_hosts_at_ten_percent() {
        let mut cfg = od(Some(1));
        cfg.max_ejection_percent = 10;
        let h = Harness::new(&cfg, &[addr(A), addr(B), addr(C)]);
        // 0% ejected < 10%: the first ejection always happens.
        h.fail(A, 500, 1, 100);
        assert!(h.ejected(A, 100));
        // 33% ≥ 10%: refused.
        h.fail(B, 500, 1, 200);
        assert!(!h.ejected(B, 200));
        assert_eq!(h.stat("ejections_overflow"), 1);
        assert_eq!(h.stat("ejections_detected_consecutive_5xx"), 2);
        assert_eq!(h.stat("ejections_enforced_consecutive_5xx"), 1);
        assert_eq!(h.stat("ejections_total"), 1);
        // The counter was reset by the refused detection: one more error is a new detection.
        h.fail(B, 500, 1, 300);
        assert_eq!(h.stat("ejections_overflow"), 2);
        assert_eq!(h.d.hosts_to_skip(3, h.at(300)), vec![addr(A)]);
    }

    #[test]
    fn max_ejection_percent_ten_hosts_at_fifty_percent() {
        let mut cfg = od(Some(1));
        cfg.max_ejection_percent = 50;
        let hosts = addrs(10);
        let h = Harness::new(&cfg, &hosts);
        for host in &hosts {
            h.d.record(*host, HostResult::Response(503), h.at(100), 10);
        }
        // 0, 10, 20, 30, 40 % < 50 %: five ejections; at 50 % the rest overflow.
        assert_eq!(h.d.ejected_count(), 5);
        assert_eq!(h.stat("ejections_overflow"), 5);
        let mut skipped = h.d.hosts_to_skip(10, h.at(100));
        skipped.sort();
        assert_eq!(skipped, hosts[..5].to_vec());
    }

    #[test]
    fn default_ten_percent_allows_the_first_ejection_of_two_hosts() {
        let mut cfg = od(Some(1));
        cfg.max_ejection_percent = 10;
        let h = Harness::new(&cfg, &[addr(A), addr(B)]);
        h.fail(A, 500, 1, 0);
        h.fail(B, 500, 1, 0);
        assert!(h.ejected(A, 0));
        assert!(!h.ejected(B, 0));
    }

    #[test]
    fn all_ejected_without_panic_skips_every_host() {
        let h = Harness::new(&od(Some(1)), &[addr(A), addr(B)]);
        h.fail(A, 500, 1, 0);
        h.fail(B, 500, 1, 0);
        assert!(!h.d.panic(2, h.at(0)), "minHealthPercent 0 never panics");
        let mut skipped = h.d.hosts_to_skip(2, h.at(0));
        skipped.sort();
        assert_eq!(skipped, vec![addr(A), addr(B)], "503 no healthy upstream");
    }

    #[test]
    fn panic_below_min_health_percent_uses_all_hosts() {
        let mut cfg = od(Some(1));
        cfg.min_health_percent = 50;
        let h = Harness::new(&cfg, &[addr(A), addr(B), addr(C)]);
        h.fail(A, 500, 1, 0);
        // 2 of 3 healthy = 66.7% ≥ 50%: no panic.
        assert!(!h.d.panic(3, h.at(0)));
        assert_eq!(h.d.hosts_to_skip(3, h.at(0)), vec![addr(A)]);
        h.fail(B, 500, 1, 0);
        // 1 of 3 = 33% < 50%: panic, nothing skipped.
        assert!(h.d.panic(3, h.at(0)));
        assert_eq!(h.d.hosts_to_skip(3, h.at(0)), Vec::<SocketAddr>::new());
        // Back at the 10 s sweep: no panic.
        assert!(!h.d.panic(3, h.at(10_000)));
        assert_eq!(h.d.ejected_count(), 0);
    }

    #[test]
    fn panic_never_while_overprovisioned_health_is_full() {
        // 3 of 4 healthy = 75% < 80%, but 75% × 1.4 ≥ 100%: Envoy does not panic.
        let mut cfg = od(Some(1));
        cfg.min_health_percent = 80;
        let hosts = addrs(4);
        let h = Harness::new(&cfg, &hosts);
        h.d.record(hosts[0], HostResult::Response(500), h.at(0), 4);
        assert!(!h.d.panic(4, h.at(0)));
        // 2 of 4 = 50% < 80% and 70% < 100%: panic.
        h.d.record(hosts[1], HostResult::Response(500), h.at(0), 4);
        assert!(h.d.panic(4, h.at(0)));
    }

    #[test]
    fn gateway_errors_count_502_503_504_only() {
        let mut cfg = od(Some(5));
        cfg.consecutive_gateway_errors = Some(2);
        let h = Harness::new(&cfg, &[addr(A), addr(B)]);
        // A non-gateway 5xx breaks the gateway run but not the 5xx run.
        h.fail(B, 503, 1, 0);
        h.fail(B, 500, 1, 0);
        h.fail(B, 504, 1, 0);
        h.fail(B, 500, 1, 0);
        assert!(!h.ejected(B, 0));
        // Fifth 5xx in a row: ejected for 5xx.
        h.fail(B, 502, 1, 0);
        assert!(h.ejected(B, 0));
        assert_eq!(h.stat("ejections_enforced_consecutive_5xx"), 1);
        assert_eq!(h.stat("ejections_enforced_consecutive_gateway_failure"), 0);

        h.fail(A, 502, 1, 0);
        h.fail(A, 503, 1, 0);
        assert!(h.ejected(A, 0));
        assert_eq!(h.stat("ejections_enforced_consecutive_gateway_failure"), 1);
        assert_eq!(h.stat("ejections_detected_consecutive_gateway_failure"), 1);
    }

    #[test]
    fn unset_gateway_errors_are_detected_not_enforced() {
        // Istio leaves Envoy's gateway threshold (5) unenforced; 5 × 503 still eject by 5xx (5).
        let h = Harness::new(&od(Some(5)), &[addr(A), addr(B)]);
        h.fail(B, 503, 5, 0);
        assert!(h.ejected(B, 0));
        assert_eq!(h.stat("ejections_detected_consecutive_gateway_failure"), 1);
        assert_eq!(h.stat("ejections_enforced_consecutive_gateway_failure"), 0);
        assert_eq!(h.stat("ejections_enforced_consecutive_5xx"), 1);

        // With 5xx off, only the (unenforced) gateway detection remains.
        let h = Harness::new(&od(None), &[addr(A), addr(B)]);
        h.fail(B, 503, 10, 0);
        assert!(!h.ejected(B, 0));
        assert_eq!(h.d.ejected_count(), 0);
        assert_eq!(h.stat("ejections_detected_consecutive_gateway_failure"), 2);
        assert_eq!(h.stat("ejections_enforced_total"), 0);
    }

    #[test]
    fn local_origin_failures_count_as_5xx_and_gateway_without_split() {
        let h = Harness::new(&od(Some(3)), &[addr(A), addr(B)]);
        h.record(B, HostResult::ConnectFailure, 0);
        h.record(B, HostResult::Reset, 0);
        assert!(!h.ejected(B, 0));
        h.record(B, HostResult::Timeout, 0);
        assert!(h.ejected(B, 0));
        assert_eq!(h.stat("ejections_enforced_consecutive_5xx"), 1);

        let mut cfg = od(Some(10));
        cfg.consecutive_gateway_errors = Some(3);
        let h = Harness::new(&cfg, &[addr(A), addr(B)]);
        h.record(B, HostResult::ConnectFailure, 0);
        h.record(B, HostResult::Response(503), 0);
        h.record(B, HostResult::Timeout, 0);
        assert!(h.ejected(B, 0));
        assert_eq!(h.stat("ejections_enforced_consecutive_gateway_failure"), 1);
        // A connect success alone means nothing without split.
        let h = Harness::new(&od(Some(2)), &[addr(A), addr(B)]);
        h.record(B, HostResult::ConnectFailure, 0);
        h.record(B, HostResult::ConnectSuccess, 0);
        h.record(B, HostResult::ConnectFailure, 0);
        assert!(h.ejected(B, 0));
    }

    #[test]
    fn split_counts_local_origin_failures_on_their_own() {
        let mut cfg = od(Some(3));
        cfg.split_external_local_origin_errors = true;
        cfg.consecutive_local_origin_failures = Some(2);
        let h = Harness::new(&cfg, &[addr(A), addr(B)]);
        // Local failures neither add to nor break the 5xx run.
        h.fail(B, 500, 2, 0);
        h.record(B, HostResult::ConnectFailure, 0);
        assert!(!h.ejected(B, 0));
        h.fail(B, 500, 1, 0);
        assert!(h.ejected(B, 0));
        assert_eq!(h.stat("ejections_enforced_consecutive_5xx"), 1);
        assert_eq!(
            h.stat("ejections_detected_consecutive_local_origin_failure"),
            0
        );

        // Two local failures in a row eject; a connect success or a good response in between
        // resets the run.
        h.record(A, HostResult::ConnectFailure, 0);
        h.record(A, HostResult::ConnectSuccess, 0);
        h.record(A, HostResult::Timeout, 0);
        h.record(A, HostResult::Response(200), 0);
        h.record(A, HostResult::Reset, 0);
        assert!(!h.ejected(A, 0));
        h.record(A, HostResult::ConnectFailure, 0);
        assert!(h.ejected(A, 0));
        assert_eq!(
            h.stat("ejections_enforced_consecutive_local_origin_failure"),
            1
        );
    }

    #[test]
    fn split_reports_error_responses_as_gateway_errors_like_envoy() {
        let mut cfg = od(Some(5));
        cfg.split_external_local_origin_errors = true;
        cfg.consecutive_local_origin_failures = Some(5);
        cfg.consecutive_gateway_errors = Some(2);
        let h = Harness::new(&cfg, &[addr(A), addr(B)]);
        h.fail(B, 500, 2, 0);
        assert!(h.ejected(B, 0));
        assert_eq!(h.stat("ejections_enforced_consecutive_gateway_failure"), 1);
    }

    #[test]
    fn any_non_error_response_resets_the_run() {
        let h = Harness::new(&od(Some(3)), &[addr(A), addr(B)]);
        h.fail(B, 500, 2, 0);
        h.fail(B, 404, 1, 0);
        h.fail(B, 500, 2, 0);
        assert!(!h.ejected(B, 0));
        h.fail(B, 500, 1, 0);
        assert!(h.ejected(B, 0));
    }

    #[test]
    fn http_error_codes_decide_what_is_an_error() {
        let mut cfg = od(Some(3));
        cfg.http_error_codes = vec![429, 503];
        cfg.consecutive_gateway_errors = Some(3);
        let h = Harness::new(&cfg, &[addr(A), addr(B), addr(C)]);
        // 500 is not listed: a success.
        h.fail(A, 500, 10, 0);
        assert!(!h.ejected(A, 0));
        // 429 is listed: counted as a (non-gateway) 5xx error.
        h.fail(B, 429, 3, 0);
        assert!(h.ejected(B, 0));
        assert_eq!(h.stat("ejections_enforced_consecutive_5xx"), 1);
        // A listed 503 keeps its status: a gateway error, detected first.
        h.fail(C, 503, 3, 0);
        assert!(h.ejected(C, 0));
        assert_eq!(h.stat("ejections_enforced_consecutive_gateway_failure"), 1);
    }

    #[test]
    fn zero_consecutive_5xx_disables_the_check() {
        let h = Harness::new(&od(None), &[addr(A), addr(B)]);
        h.fail(B, 500, 100, 0);
        for _ in 0..100 {
            h.record(B, HostResult::ConnectFailure, 0);
        }
        assert!(!h.ejected(B, 0));
        assert_eq!(h.stat("ejections_detected_consecutive_5xx"), 0);
        assert_eq!(h.stat("ejections_enforced_total"), 0);
    }

    #[test]
    fn hosts_removed_are_forgotten_and_remaining_keep_their_state() {
        let h = Harness::new(&od(Some(3)), &[addr(A), addr(B), addr(C)]);
        h.fail(B, 500, 3, 0);
        h.fail(A, 500, 2, 0);
        assert_eq!(h.stat("ejections_active"), 1);
        h.d.set_hosts(&[addr(A), addr(C)]);
        assert_eq!(h.d.ejected_count(), 0);
        assert_eq!(h.stat("ejections_active"), 0);
        // A result for an endpoint that has left is ignored.
        h.fail(B, 500, 3, 0);
        assert!(!h.ejected(B, 0));
        // A keeps its run of two: one more error ejects it.
        h.fail(A, 500, 1, 0);
        assert!(h.ejected(A, 0));
        // B comes back clean.
        h.d.set_hosts(&[addr(A), addr(B), addr(C)]);
        h.fail(B, 500, 2, 0);
        assert!(!h.ejected(B, 0));
        assert!(h.ejected(A, 0));
    }

    #[test]
    fn detectors_of_two_clients_share_stats_not_state() {
        let stats = Arc::new(OutlierStats::default());
        let t0 = Instant::now();
        let hosts = [addr(A), addr(B)];
        let one = OutlierDetector::new(&od(Some(1)), Arc::clone(&stats), &hosts, t0);
        let two = OutlierDetector::new(&od(Some(1)), Arc::clone(&stats), &hosts, t0);
        one.record(addr(B), HostResult::Response(500), t0, 2);
        assert!(one.is_ejected(addr(B), t0));
        assert!(!two.is_ejected(addr(B), t0));
        assert_eq!(two.ejected_count(), 0);
        assert_eq!(stats.ejections_active.load(Ordering::Relaxed), 1);
        // Reclaimed client state leaves the gauge.
        drop(one);
        assert_eq!(stats.ejections_active.load(Ordering::Relaxed), 0);
        assert_eq!(stats.ejections_enforced_total.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_ejected_host_used_in_panic_is_not_ejected_twice() {
        let mut cfg = od(Some(1));
        cfg.min_health_percent = 100;
        let h = Harness::new(&cfg, &[addr(A), addr(B)]);
        h.fail(B, 500, 1, 0);
        h.fail(B, 500, 5, 1_000);
        assert_eq!(h.stat("ejections_detected_consecutive_5xx"), 1);
        assert_eq!(h.d.ejected_count(), 1);
        // Un-ejection resets the counters.
        assert!(!h.ejected(B, 10_000));
        h.fail(B, 500, 1, 10_000);
        assert!(h.ejected(B, 10_000));
    }

    #[test]
    fn outcomes_map_to_results_as_envoy_reports_them() {
        let resp = |status, grpc_status| AttemptOutcome::Response {
            status,
            grpc_status,
            rate_limited: false,
        };
        assert_eq!(
            HostResult::from_outcome(&resp(500, None)),
            HostResult::Response(500)
        );
        assert_eq!(
            HostResult::from_outcome(&resp(200, Some(14))),
            HostResult::Response(503),
            "grpc UNAVAILABLE"
        );
        assert_eq!(
            HostResult::from_outcome(&resp(200, Some(0))),
            HostResult::Response(200)
        );
        assert_eq!(
            HostResult::from_outcome(&AttemptOutcome::ConnectFailure),
            HostResult::ConnectFailure
        );
        assert_eq!(
            HostResult::from_outcome(&AttemptOutcome::Reset {
                refused_stream: true
            }),
            HostResult::Reset
        );
        assert_eq!(
            HostResult::from_outcome(&AttemptOutcome::PerTryTimeout),
            HostResult::Timeout
        );
    }

    #[test]
    fn stats_print_with_envoy_names() {
        let stats = OutlierStats::default();
        stats.ejections_overflow.store(3, Ordering::Relaxed);
        let mut seen = Vec::new();
        stats.for_each(|n, v| seen.push((n, v)));
        assert_eq!(seen.len(), 10);
        assert!(seen.contains(&("outlier_detection.ejections_overflow", 3)));
        assert!(seen.contains(&("outlier_detection.ejections_active", 0)));
    }

    #[test]
    fn per_host_record_is_small() {
        assert_eq!(std::mem::size_of::<HostState>(), 32);
        assert_eq!(std::mem::size_of::<(SocketAddr, HostState)>(), 64);
        // 184 bytes on x86_64 today; the per-pair cost is quoted in the module docs.
        assert!(std::mem::size_of::<OutlierDetector>() <= 192);
    }
}
