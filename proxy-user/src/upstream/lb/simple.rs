//! The balancers that need no key: `ROUND_ROBIN`, `RANDOM`, `LEAST_REQUEST` (power of two choices).
//!
//! Each takes `ok(index)`, the eligibility filter; an ineligible choice moves on to the next
//! eligible index, so a pick costs no allocation and at most one pass over the hosts.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::HostSet;

/// Random draws tried before walking from the last one (hosts mostly eligible: one draw).
const DRAWS: usize = 4;

/// The first index at or after `start` (wrapping) that `ok` accepts.
fn walk(n: usize, start: usize, ok: impl Fn(usize) -> bool) -> Option<usize> {
    (0..n).map(|k| (start + k) % n).find(|&i| ok(i))
}

/// `ROUND_ROBIN`: hosts in turn from a random starting point (so clients do not all begin with the
/// same host), skipping ineligible ones.
#[derive(Debug)]
pub struct RoundRobin {
    cursor: AtomicUsize,
}

impl RoundRobin {
    /// A cursor at a random host.
    pub fn new() -> Self {
        Self {
            cursor: AtomicUsize::new(rand::random_range(0..1024)),
        }
    }

    /// The next eligible host of `n`.
    pub fn pick(&self, n: usize, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        walk(n, start % n.max(1), ok)
    }
}

impl Default for RoundRobin {
    fn default() -> Self {
        Self::new()
    }
}

/// A host drawn at random, in proportion to its weight.
fn draw(hosts: &HostSet) -> usize {
    let n = hosts.hosts.len();
    if hosts.uniform {
        return rand::random_range(0..n);
    }
    let mut point = rand::random_range(0..hosts.total_weight);
    for (i, h) in hosts.hosts.iter().enumerate() {
        let w = u64::from(h.weight());
        if point < w {
            return i;
        }
        point -= w;
    }
    n - 1
}

/// `RANDOM`: a random eligible host (weighted).
pub fn random(hosts: &HostSet, ok: impl Fn(usize) -> bool) -> Option<usize> {
    let n = hosts.hosts.len();
    if n == 0 {
        return None;
    }
    let mut last = 0;
    for _ in 0..DRAWS {
        last = draw(hosts);
        if ok(last) {
            return Some(last);
        }
    }
    walk(n, last, ok)
}

/// `LEAST_REQUEST` as Envoy does it with `choice_count` 2: of two hosts, the one with fewer
/// requests in flight (relative to its weight). The first candidate rotates, the second is random
/// and distinct, so idle hosts share load evenly.
#[derive(Debug, Default)]
pub struct LeastRequest {
    cursor: AtomicUsize,
}

impl LeastRequest {
    /// The less loaded of two eligible hosts.
    pub fn pick(&self, hosts: &HostSet, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let all = &hosts.hosts;
        let n = all.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
        let a = walk(n, start, &ok)?;
        if n == 1 {
            return Some(a);
        }
        let b = walk(n, (a + 1 + rand::random_range(0..n - 1)) % n, &ok)?;
        let (ha, hb) = (&all[a], &all[b]);
        // active_b / weight_b < active_a / weight_a, without division.
        let load = |x: &super::Host, other: &super::Host| {
            u64::from(x.active()) * u64::from(other.weight())
        };
        Some(if load(hb, ha) < load(ha, hb) { b } else { a })
    }
}
