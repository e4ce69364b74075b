//! Load balancing: which endpoint of a cluster one attempt goes to (§2.2).
//!
//! A [`Balancer`] is one client's balancer for one cluster, built from the cluster's
//! `loadBalancer` block: `ROUND_ROBIN`, `RANDOM`, `LEAST_REQUEST` (power of two choices, Istio's
//! default; `LEAST_CONN` is its alias) or consistent hashing. Its mutable state (the round-robin
//! cursor) is per client; the per-host load it reads ([`Host::active`]) is the client's too.
//! Consistent hashing reads a [`HashTable`] (ring hash or Maglev) built once per endpoint-set
//! generation and shared by every client of the cluster.
//!
//! Every pick takes an eligibility filter: retries use it to avoid hosts already tried, outlier
//! detection to skip ejected hosts. A consistent-hash pick walks on to the next eligible host on the
//! ring or table, so a key keeps a stable fallback. Picks do not allocate.
//!
//! Hosts carry a weight (1 unless something sets another, e.g. locality weights or slow start):
//! `RANDOM`, `LEAST_REQUEST` and the ring honour it; `ROUND_ROBIN` and Maglev treat hosts as equal.

pub mod digest;
pub mod hash;
pub mod hash_key;
pub mod simple;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::policy::{HashAlgorithm, LoadBalancer};

pub use hash::HashTable;

/// One endpoint as one client's balancer sees it.
#[derive(Debug)]
pub struct Host {
    /// The endpoint.
    pub addr: SocketAddr,
    /// Relative weight (≥ 1).
    weight: u32,
    /// This client's requests (or TCP connections) in flight to the endpoint.
    active: AtomicU32,
    /// This client's requests (or TCP connections) sent to the endpoint so far (admin `rq_total`).
    total: AtomicU64,
}

impl Host {
    /// A host with `weight` (0 is read as 1) and nothing in flight.
    pub fn new(addr: SocketAddr, weight: u32) -> Self {
        Self {
            addr,
            weight: weight.max(1),
            active: AtomicU32::new(0),
            total: AtomicU64::new(0),
        }
    }

    /// Requests currently in flight.
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Requests sent so far.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Relative weight.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Count one more request in flight; [`Host::end`] undoes it.
    pub fn begin(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    /// Count one request in flight less.
    pub fn end(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One client's hosts of a cluster, aligned (same order) with one endpoint-set generation.
#[derive(Debug, Default)]
pub struct HostSet {
    /// The endpoint set generation the hosts follow.
    pub generation: u64,
    /// The hosts, in the endpoint set's order.
    pub hosts: Vec<Arc<Host>>,
    /// Every host has the same weight (the common case; picks skip weight arithmetic).
    uniform: bool,
    total_weight: u64,
}

impl HostSet {
    /// The set of `hosts` for endpoint generation `generation`.
    pub fn new(generation: u64, hosts: Vec<Arc<Host>>) -> Self {
        let uniform = hosts.windows(2).all(|w| w[0].weight == w[1].weight);
        let total_weight = hosts.iter().map(|h| u64::from(h.weight)).sum();
        Self {
            generation,
            hosts,
            uniform,
            total_weight,
        }
    }
}

/// One client's balancer for one cluster.
#[derive(Debug)]
pub enum Balancer {
    /// `ROUND_ROBIN`.
    RoundRobin(simple::RoundRobin),
    /// `RANDOM`.
    Random,
    /// `LEAST_REQUEST` / `LEAST_CONN` / unset.
    LeastRequest(simple::LeastRequest),
    /// `consistentHash`: the cluster's [`HashTable`] decides.
    ConsistentHash,
    /// `PASSTHROUGH`: the cluster connects to the original destination; never asked to pick.
    Passthrough,
}

impl Balancer {
    /// The balancer for a cluster's `loadBalancer` block (`None` = Istio's default).
    pub fn new(lb: Option<&LoadBalancer>) -> Self {
        match lb {
            None | Some(LoadBalancer::LeastRequest) => {
                Balancer::LeastRequest(simple::LeastRequest::default())
            }
            Some(LoadBalancer::RoundRobin) => Balancer::RoundRobin(simple::RoundRobin::new()),
            Some(LoadBalancer::Random) => Balancer::Random,
            Some(LoadBalancer::ConsistentHash(_)) => Balancer::ConsistentHash,
            Some(LoadBalancer::Passthrough) => Balancer::Passthrough,
        }
    }

    /// Index into `hosts` of the host for one attempt, among those `eligible` accepts; `None` when
    /// none is. `table` is the cluster's hash table for the same endpoint generation as `hosts`
    /// (same order); `hash` is the request's hash key, if its route has a hash policy (a hashing
    /// cluster picks at random without one, as Envoy does; other balancers ignore it).
    pub fn pick(
        &self,
        hosts: &HostSet,
        table: Option<&HashTable>,
        hash: Option<u64>,
        eligible: impl Fn(SocketAddr) -> bool,
    ) -> Option<usize> {
        let n = hosts.hosts.len();
        if n == 0 {
            return None;
        }
        let ok = |i: usize| hosts.hosts.get(i).is_some_and(|h| eligible(h.addr));
        match self {
            Balancer::RoundRobin(rr) => rr.pick(n, ok),
            Balancer::Random | Balancer::Passthrough => simple::random(hosts, ok),
            Balancer::LeastRequest(lr) => lr.pick(hosts, ok),
            Balancer::ConsistentHash => match table {
                Some(t) => t.pick(hash.unwrap_or_else(rand::random), n, ok),
                None => simple::random(hosts, ok),
            },
        }
    }
}

/// The shared hash table for a cluster with `lb` over `addrs` (sorted, as the endpoint set keeps
/// them); `None` unless the cluster hashes. Built once per endpoint-set generation.
pub fn table_for(lb: Option<&LoadBalancer>, addrs: &[SocketAddr]) -> Option<HashTable> {
    match lb {
        Some(LoadBalancer::ConsistentHash(ch)) if !addrs.is_empty() => Some(match ch.algorithm {
            HashAlgorithm::RingHash { minimum_ring_size } => {
                HashTable::ring(addrs, &[], minimum_ring_size)
            }
            HashAlgorithm::Maglev { table_size } => HashTable::maglev(addrs, table_size),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn addr(i: usize) -> SocketAddr {
        SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 8080))
    }

    fn hosts(n: usize) -> HostSet {
        HostSet::new(1, (0..n).map(|i| Arc::new(Host::new(addr(i), 1))).collect())
    }

    fn counts(b: &Balancer, set: &HostSet, picks: usize) -> Vec<usize> {
        let mut c = vec![0; set.hosts.len()];
        for _ in 0..picks {
            if let Some(i) = b.pick(set, None, None, |_| true) {
                c[i] += 1;
            }
        }
        c
    }

    /// `k` within `sigmas` standard deviations of the binomial mean for `picks` draws at `p`.
    fn within(k: usize, picks: usize, p: f64, sigmas: f64) -> bool {
        let mean = picks as f64 * p;
        let sd = (picks as f64 * p * (1.0 - p)).sqrt();
        (k as f64 - mean).abs() <= sigmas * sd
    }

    #[test]
    fn round_robin_splits_exactly() {
        let set = hosts(4);
        let b = Balancer::new(Some(&LoadBalancer::RoundRobin));
        assert_eq!(counts(&b, &set, 400), vec![100; 4]);
        // In turn: each window of 4 picks visits every host once.
        let seq: Vec<_> = (0..8)
            .filter_map(|_| b.pick(&set, None, None, |_| true))
            .collect();
        for w in seq.chunks(4) {
            let mut w = w.to_vec();
            w.sort_unstable();
            assert_eq!(w, vec![0, 1, 2, 3]);
        }
    }

    #[test]
    fn random_is_uniform_within_bounds() {
        let set = hosts(5);
        let c = counts(&Balancer::new(Some(&LoadBalancer::Random)), &set, 10_000);
        for k in c {
            assert!(within(k, 10_000, 0.2, 5.0), "{k}");
        }
    }

    #[test]
    fn random_honours_weights() {
        let set = HostSet::new(
            1,
            vec![
                Arc::new(Host::new(addr(0), 1)),
                Arc::new(Host::new(addr(1), 3)),
            ],
        );
        let c = counts(&Balancer::Random, &set, 8_000);
        assert!(within(c[1], 8_000, 0.75, 5.0), "{c:?}");
    }

    #[test]
    fn least_request_spreads_idle_load_and_avoids_busy_hosts() {
        let set = hosts(3);
        let b = Balancer::new(None);
        let c = counts(&b, &set, 3_000);
        for k in &c {
            assert!((900..=1100).contains(k), "{c:?}");
        }
        // A host with requests in flight is chosen only when both candidates are it, never here:
        // with two idle hosts, P2C always prefers an idle one over a busy one.
        for _ in 0..5 {
            set.hosts[0].begin();
        }
        let c = counts(&b, &set, 3_000);
        assert_eq!(c[0], 0, "{c:?}");
        assert!(within(c[1], 3_000, 0.5, 5.0), "{c:?}");
        // LEAST_CONN is converted to the same balancer (the converter maps it).
        assert!(matches!(
            Balancer::new(Some(&LoadBalancer::LeastRequest)),
            Balancer::LeastRequest(_)
        ));
    }

    #[test]
    fn every_balancer_honours_eligibility() {
        let set = hosts(4);
        let banned = [addr(1), addr(2)];
        let ring = HashTable::ring(
            &set.hosts.iter().map(|h| h.addr).collect::<Vec<_>>(),
            &[],
            1024,
        );
        for b in [
            Balancer::new(Some(&LoadBalancer::RoundRobin)),
            Balancer::Random,
            Balancer::new(None),
            Balancer::ConsistentHash,
        ] {
            for key in 0..200u64 {
                let i = b.pick(
                    &set,
                    Some(&ring),
                    Some(digest::xxh64(&key.to_le_bytes(), 0)),
                    |a| !banned.contains(&a),
                );
                assert!(matches!(i, Some(0 | 3)), "{b:?} picked {i:?}");
            }
            assert_eq!(b.pick(&set, Some(&ring), Some(1), |_| false), None, "{b:?}");
        }
    }

    fn addrs(n: usize) -> Vec<SocketAddr> {
        (0..n).map(addr).collect()
    }

    /// Which host each of `keys` lands on.
    fn placement(table: &HashTable, set: &[SocketAddr], keys: u64) -> Vec<SocketAddr> {
        (0..keys)
            .map(|k| {
                let h = digest::xxh64(format!("key-{k}").as_bytes(), 0);
                table
                    .pick(h, set.len(), |_| true)
                    .map_or(addr(9999), |i| set[i])
            })
            .collect()
    }

    fn movement(build: impl Fn(&[SocketAddr]) -> HashTable, n: usize) -> f64 {
        let keys = 20_000;
        let before_set = addrs(n);
        let after_set = addrs(n + 1);
        let before = placement(&build(&before_set), &before_set, keys);
        let after = placement(&build(&after_set), &after_set, keys);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        // Some keys also shift between old hosts, as each host's share of the ring (Envoy sizes it
        // per host count) or of the Maglev table is recomputed; the total is what is bounded.
        let to_new = after
            .iter()
            .zip(&before)
            .filter(|(b, a)| a != b && **b == addr(n))
            .count();
        eprintln!("n={n}: {moved} moved, {to_new} of them to the new host");
        moved as f64 / keys as f64
    }

    #[test]
    fn adding_a_host_moves_few_keys() {
        for n in [3, 10, 20] {
            let ideal = 1.0 / (n + 1) as f64;
            let ring = movement(|a| HashTable::ring(a, &[], 1024), n);
            assert!(ring <= 1.5 * ideal, "ring n={n}: {ring} vs ideal {ideal}");
            let maglev = movement(|a| HashTable::maglev(a, 65_537), n);
            assert!(
                maglev <= 1.5 * ideal,
                "maglev n={n}: {maglev} vs ideal {ideal}"
            );
            eprintln!("n={n}: ideal {ideal:.4}, ring {ring:.4}, maglev {maglev:.4}");
        }
    }

    #[test]
    fn same_key_same_host_and_keys_spread() {
        let set = addrs(5);
        for table in [
            HashTable::ring(&set, &[], 1024),
            HashTable::maglev(&set, 65_537),
        ] {
            let first = placement(&table, &set, 5_000);
            assert_eq!(first, placement(&table, &set, 5_000));
            let mut per_host: HashMap<SocketAddr, usize> = HashMap::new();
            for a in &first {
                *per_host.entry(*a).or_default() += 1;
            }
            assert_eq!(per_host.len(), 5);
            // Ring shares vary more than Maglev's; both stay near 1/5.
            for (a, k) in per_host {
                assert!((600..=1400).contains(&k), "{a}: {k}");
            }
        }
    }

    #[test]
    fn eligibility_walks_to_the_next_host_on_the_ring_and_table() {
        let set = addrs(4);
        for table in [
            HashTable::ring(&set, &[], 1024),
            HashTable::maglev(&set, 65_537),
        ] {
            for k in 0..500u64 {
                let h = digest::xxh64(&k.to_le_bytes(), 0);
                let home = table.pick(h, 4, |_| true);
                let Some(home) = home else {
                    panic!("no host");
                };
                let fallback = table.pick(h, 4, |i| i != home);
                assert!(fallback.is_some_and(|f| f != home));
                // Stable per key.
                assert_eq!(fallback, table.pick(h, 4, |i| i != home));
            }
        }
    }

    #[test]
    fn ring_size_follows_minimum_ring_size_and_caps() {
        let set = addrs(3);
        // minimumRingSize points per host.
        assert_eq!(HashTable::ring(&set, &[], 1024).len(), 3 * 1024);
        assert_eq!(HashTable::ring(&set, &[], 10).len(), 30);

        assert_eq!(HashTable::maglev(&set, 65_537).len(), 65_537);
        // Weights scale a host's share of the ring.
        let weighted = HashTable::ring(&set[..2], &[1, 3], 1024);
        let HashTable::Ring(points) = &weighted else {
            panic!("not a ring");
        };
        let heavy = points.iter().filter(|(_, i)| *i == 1).count();
        assert_eq!(heavy, 3 * (points.len() - heavy));
    }

    #[test]
    fn tables_are_built_only_for_hashing_clusters() {
        use crate::policy::{ConsistentHash, HashKey};
        let set = addrs(3);
        assert!(table_for(None, &set).is_none());
        assert!(table_for(Some(&LoadBalancer::RoundRobin), &set).is_none());
        let maglev = LoadBalancer::ConsistentHash(ConsistentHash {
            key: HashKey::SourceIp,
            algorithm: HashAlgorithm::Maglev { table_size: 7 },
        });
        assert_eq!(table_for(Some(&maglev), &set).map(|t| t.len()), Some(7));
        assert!(table_for(Some(&maglev), &[]).is_none());
    }
}
