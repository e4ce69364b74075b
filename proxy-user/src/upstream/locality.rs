//! Locality load balancing: Istio's `localityLbSetting` as Envoy applies it, for one client.
//!
//! Istio turns the setting into Envoy endpoint *priorities* (failover) or *locality weights*
//! (`distribute`) relative to the client's locality and labels; Envoy then sends traffic to the best
//! priority that is healthy enough and spreads it over localities by weight. Keel computes the same
//! per endpoint ([`Plan::new`], once per client and endpoint set) and a balancer asks the plan
//! which priority to use ([`Plan::priority_load`], [`choose_priority`]) and with which weight to
//! treat each host of it ([`Plan::weights`]).
//!
//! Pure: no clock, no randomness, no I/O.

use crate::policy::{Labels, Locality, LocalityLbSetting, LABEL_REGION, LABEL_SUBZONE, LABEL_ZONE};

/// Envoy's default overprovisioning factor (1.4), in percent: a level or locality with at least
/// 100/1.4 ≈ 71.4 % healthy hosts counts as fully healthy.
pub const OVERPROVISIONING_PERCENT: u64 = 140;

/// What locality load balancing knows of a workload (an endpoint, or the client pod).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// `region/zone/subzone`.
    pub locality: Locality,
    /// The labels `failoverPriority` may name (the topology labels come from `locality`).
    pub labels: Labels,
}

impl Topology {
    /// The value of label `key` as Istio sees it: topology keys from the locality (Istio adds them to
    /// workload labels), others from the labels.
    fn label(&self, key: &str) -> Option<&str> {
        let topo = match key {
            LABEL_REGION => Some(&self.locality.region),
            LABEL_ZONE => Some(&self.locality.zone),
            LABEL_SUBZONE => Some(&self.locality.subzone),
            _ => None,
        };
        match topo {
            Some(v) if !v.is_empty() => Some(v.as_str()),
            _ => self.labels.get(key).map(String::as_str),
        }
    }

    /// Whether this topology holds any label or locality (Istio skips `failoverPriority` for a
    /// client without labels).
    fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.locality.labels().next().is_none()
    }
}

/// Where one endpoint stands for one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPlace {
    /// Envoy priority: 0 is preferred; levels are dense (0..levels).
    pub priority: u32,
    /// Index into [`Plan::locality_weights`] when `distribute` weights localities.
    pub group: Option<usize>,
}

/// The locality plan of one client for one endpoint set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Per endpoint (same order as the endpoint set); `None` = no traffic (a `distribute` rule
    /// for the client names no locality of it).
    pub hosts: Vec<Option<HostPlace>>,
    /// Number of priority levels.
    pub levels: u32,
    /// Weight per locality group (`distribute`); empty when localities are not weighted.
    pub locality_weights: Vec<u32>,
}

impl Plan {
    /// Every endpoint at priority 0 with equal weight: locality load balancing off, or nothing in
    /// the setting applies to this client.
    pub fn flat(endpoints: usize) -> Self {
        Self {
            hosts: vec![
                Some(HostPlace {
                    priority: 0,
                    group: None
                });
                endpoints
            ],
            levels: u32::from(endpoints > 0),
            locality_weights: Vec::new(),
        }
    }

    /// The plan for `client` over `endpoints` (Istio's `ApplyLocalityLoadBalancer`):
    /// `setting` is the setting in force (`None` = disabled); `failover` says whether priorities
    /// apply at all (the cluster has outlier detection). `distribute` weights localities whether
    /// or not `failover` holds; otherwise priorities come from `failoverPriority` labels and/or
    /// region/zone/subzone proximity with `failover` regions.
    pub fn new(
        setting: Option<&LocalityLbSetting>,
        failover: bool,
        client: &Topology,
        endpoints: &[Topology],
    ) -> Self {
        let Some(setting) = setting else {
            return Self::flat(endpoints.len());
        };
        if !setting.distribute.is_empty() {
            return Self::distribute(setting, client, endpoints);
        }
        if !failover {
            return Self::flat(endpoints.len());
        }
        let raw: Vec<u32> = if !setting.failover_priority.is_empty() {
            let labels = label_priorities(&setting.failover_priority, client, endpoints);
            if setting.failover.is_empty() {
                labels
            } else {
                // Istio keeps the label order and refines it by locality: label level × 5 +
                // locality level (0..=4), then renumbers densely.
                labels
                    .iter()
                    .zip(endpoints)
                    .map(|(l, e)| l * 5 + locality_priority(&setting.failover, client, e))
                    .collect()
            }
        } else {
            endpoints
                .iter()
                .map(|e| locality_priority(&setting.failover, client, e))
                .collect()
        };
        let (dense, levels) = densify(&raw);
        Self {
            hosts: dense
                .into_iter()
                .map(|priority| {
                    Some(HostPlace {
                        priority,
                        group: None,
                    })
                })
                .collect(),
            levels,
            locality_weights: Vec::new(),
        }
    }

    /// `distribute`: the first rule whose `from` matches the client weights the localities its
    /// `to` patterns match (each locality gets its share of the pattern's weight in proportion to
    /// its endpoints, rounded up as Istio does); endpoints no pattern matches get no traffic. A
    /// client no rule matches balances over every endpoint alike.
    fn distribute(setting: &LocalityLbSetting, client: &Topology, endpoints: &[Topology]) -> Self {
        let Some(rule) = setting
            .distribute
            .iter()
            .find(|d| locality_matches(&client.locality, &d.from))
        else {
            return Self::flat(endpoints.len());
        };
        let mut hosts: Vec<Option<HostPlace>> = vec![None; endpoints.len()];
        let mut localities: Vec<&Locality> = Vec::new();
        let mut locality_weights: Vec<u32> = Vec::new();
        for (pattern, weight) in &rule.to {
            // Endpoints this pattern takes (an earlier pattern keeps what it matched).
            let taken: Vec<usize> = (0..endpoints.len())
                .filter(|&i| hosts[i].is_none())
                .filter(|&i| locality_matches(&endpoints[i].locality, pattern))
                .collect();
            if taken.is_empty() {
                continue;
            }
            let total = taken.len() as u64;
            let first_group = localities.len();
            let mut counts: Vec<u64> = Vec::new();
            for &i in &taken {
                let loc = &endpoints[i].locality;
                let group = match localities[first_group..].iter().position(|l| *l == loc) {
                    Some(g) => first_group + g,
                    None => {
                        localities.push(loc);
                        counts.push(0);
                        localities.len() - 1
                    }
                };
                counts[group - first_group] += 1;
                hosts[i] = Some(HostPlace {
                    priority: 0,
                    group: Some(group),
                });
            }
            for count in counts {
                let share = (count * u64::from(*weight)).div_ceil(total);
                locality_weights.push(u32::try_from(share).unwrap_or(u32::MAX));
            }
        }
        let levels = u32::from(hosts.iter().any(Option::is_some));
        Self {
            hosts,
            levels,
            locality_weights,
        }
    }

    /// Envoy's priority load: the percent of traffic each level gets given which hosts are
    /// healthy. A level's health is `min(100, 1.4 × healthy% )`; levels take their health in
    /// order until 100 % is given out, scaled up when the levels together are less than 100 %
    /// healthy; with no healthy host anywhere, everything goes to level 0. Hosts with no place
    /// are ignored.
    pub fn priority_load(&self, healthy: impl Fn(usize) -> bool) -> Vec<u32> {
        let levels = self.levels as usize;
        let mut counts = vec![(0u64, 0u64); levels];
        for (i, place) in self.hosts.iter().enumerate() {
            if let Some(p) = place {
                if let Some(c) = counts.get_mut(p.priority as usize) {
                    c.1 += 1;
                    if healthy(i) {
                        c.0 += 1;
                    }
                }
            }
        }
        priority_load(&counts)
    }

    /// Weights of the hosts for a pick in `level` (0.0 = not a candidate): 1.0 each, or with
    /// `distribute` each healthy host's share of its locality's weight, the locality's weight
    /// scaled by its availability (`min(1, 1.4 × healthy share)`) as Envoy's locality-weighted
    /// balancing does. Unhealthy hosts get 0.
    pub fn weights(&self, level: u32, healthy: impl Fn(usize) -> bool) -> Vec<f64> {
        let in_level = |p: &Option<HostPlace>| p.as_ref().filter(|p| p.priority == level).copied();
        if self.locality_weights.is_empty() {
            return self
                .hosts
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    if in_level(p).is_some() && healthy(i) {
                        1.0
                    } else {
                        0.0
                    }
                })
                .collect();
        }
        let mut counts = vec![(0u64, 0u64); self.locality_weights.len()];
        for (i, p) in self.hosts.iter().enumerate() {
            if let Some(g) = in_level(p).and_then(|p| p.group) {
                if let Some(c) = counts.get_mut(g) {
                    c.1 += 1;
                    if healthy(i) {
                        c.0 += 1;
                    }
                }
            }
        }
        self.hosts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let Some(g) = in_level(p).and_then(|p| p.group) else {
                    return 0.0;
                };
                let (Some(&(up, all)), Some(&weight)) =
                    (counts.get(g), self.locality_weights.get(g))
                else {
                    return 0.0;
                };
                if !healthy(i) || up == 0 {
                    return 0.0;
                }
                let availability =
                    ((OVERPROVISIONING_PERCENT * up) as f64 / (100 * all) as f64).min(1.0);
                f64::from(weight) * availability / up as f64
            })
            .collect()
    }

    /// Whether the plan changes anything compared to plain balancing over all hosts.
    pub fn is_flat(&self) -> bool {
        self.levels <= 1
            && self.locality_weights.is_empty()
            && self.hosts.iter().all(Option::is_some)
    }
}

/// Envoy's priority load from `(healthy, total)` host counts per level (see
/// [`Plan::priority_load`]); the result sums to 100 unless there are no levels.
pub fn priority_load(levels: &[(u64, u64)]) -> Vec<u32> {
    let health: Vec<u64> = levels
        .iter()
        .map(|&(up, all)| {
            (OVERPROVISIONING_PERCENT * up)
                .checked_div(all)
                .map_or(0, |h| h.min(100))
        })
        .collect();
    let mut load = vec![0u32; levels.len()];
    let normalized = health.iter().sum::<u64>().min(100);
    if normalized == 0 {
        if let Some(first) = load.first_mut() {
            *first = 100;
        }
        return load;
    }
    let mut left = 100u64;
    let mut first_healthy = None;
    for (i, h) in health.iter().enumerate() {
        let share = (h * 100 / normalized).min(left);
        left -= share;
        load[i] = share as u32;
        if *h > 0 && first_healthy.is_none() {
            first_healthy = Some(i);
        }
    }
    // Rounding leftovers go to the best healthy level.
    if let Some(i) = first_healthy {
        load[i] += left as u32;
    }
    load
}

/// The level a pick uses, given the priority load and a uniform `roll` in `0..100`.
pub fn choose_priority(load: &[u32], roll: u32) -> u32 {
    let mut acc = 0;
    for (level, share) in load.iter().enumerate() {
        acc += share;
        if roll < acc {
            return level as u32;
        }
    }
    0
}

/// Whether `locality` matches the pattern `region/zone/subzone` (`*` or a missing part matches
/// anything; Istio's `LocalityMatch`).
pub fn locality_matches(locality: &Locality, pattern: &str) -> bool {
    let mut parts = pattern.splitn(3, '/');
    let (region, zone, subzone) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    (region == "*" || region == locality.region)
        && (zone == "*" || zone.is_empty() || zone == locality.zone)
        && (subzone == "*" || subzone.is_empty() || subzone == locality.subzone)
}

/// Proximity priority of an endpoint to the client (Istio's `LbPriority` with `failover`): same
/// region/zone/subzone 0, same region/zone 1, same region 2, other region 3, and with a `failover`
/// entry for the client's region every other region but its `to` 4.
fn locality_priority(failover: &[(String, String)], client: &Topology, ep: &Topology) -> u32 {
    let (c, e) = (&client.locality, &ep.locality);
    if c.region == e.region {
        return if c.zone != e.zone {
            2
        } else if c.subzone != e.subzone {
            1
        } else {
            0
        };
    }
    match failover.iter().find(|(from, _)| *from == c.region) {
        Some((_, to)) if *to != e.region => 4,
        _ => 3,
    }
}

/// `failoverPriority` levels: an endpoint matching the client on every listed label is 0; one
/// whose first mismatch is at label `j` of `n` is `n - j`. A `key=value` entry compares the
/// endpoint's label with `value` instead of the client's. A client without labels gets all 0.
fn label_priorities(
    priority_labels: &[String],
    client: &Topology,
    endpoints: &[Topology],
) -> Vec<u32> {
    if client.is_empty() {
        return vec![0; endpoints.len()];
    }
    let n = priority_labels.len() as u32;
    let wanted: Vec<(&str, Option<&str>)> = priority_labels
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (l.as_str(), client.label(l)),
        })
        .collect();
    endpoints
        .iter()
        .map(|e| {
            wanted
                .iter()
                .position(|(key, value)| e.label(key) != *value)
                .map_or(0, |j| n - j as u32)
        })
        .collect()
}

/// Renumbers priorities densely (0..levels) keeping their order; returns them and the level count.
fn densify(raw: &[u32]) -> (Vec<u32>, u32) {
    let mut distinct: Vec<u32> = raw.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let dense = raw
        .iter()
        .map(|p| distinct.partition_point(|d| d < p) as u32)
        .collect();
    (dense, distinct.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::LocalityDistribute;

    fn topo(loc: &str) -> Topology {
        Topology {
            locality: Locality::parse(loc),
            labels: Labels::new(),
        }
    }

    fn labelled(loc: &str, labels: &[(&str, &str)]) -> Topology {
        Topology {
            locality: Locality::parse(loc),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn priorities(plan: &Plan) -> Vec<Option<u32>> {
        plan.hosts.iter().map(|h| h.map(|h| h.priority)).collect()
    }

    fn enabled() -> LocalityLbSetting {
        LocalityLbSetting::mesh_default()
    }

    #[test]
    fn default_priorities_follow_proximity_only_with_outlier_detection() {
        let client = topo("r1/z1/s1");
        let eps = [
            topo("r1/z1/s1"),
            topo("r1/z1/s2"),
            topo("r1/z2/s1"),
            topo("r2/z1/s1"),
        ];
        let plan = Plan::new(Some(&enabled()), true, &client, &eps);
        assert_eq!(priorities(&plan), [Some(0), Some(1), Some(2), Some(3)]);
        assert_eq!(plan.levels, 4);
        // Without outlier detection Istio sets no priorities: every endpoint is alike.
        let flat = Plan::new(Some(&enabled()), false, &client, &eps);
        assert_eq!(priorities(&flat), [Some(0); 4]);
        assert!(flat.is_flat());
        // `enabled: false` (no setting in force) is flat too.
        assert!(Plan::new(None, true, &client, &eps).is_flat());
    }

    #[test]
    fn missing_levels_are_renumbered_densely() {
        let client = topo("r1/z1");
        let eps = [topo("r2/z9"), topo("r1/z1"), topo("r2/z1")];
        let plan = Plan::new(Some(&enabled()), true, &client, &eps);
        // Raw levels 3, 0, 3 -> 1, 0, 1.
        assert_eq!(priorities(&plan), [Some(1), Some(0), Some(1)]);
        assert_eq!(plan.levels, 2);
    }

    #[test]
    fn failover_puts_the_named_region_before_other_regions() {
        let setting = LocalityLbSetting {
            failover: vec![("r1".into(), "r3".into()), ("r2".into(), "r1".into())],
            ..enabled()
        };
        let client = topo("r1/z1");
        let eps = [topo("r1/z2"), topo("r2/z1"), topo("r3/z1"), topo("r1/z1")];
        let plan = Plan::new(Some(&setting), true, &client, &eps);
        // Raw: same region other zone 2, unlisted region 4, failover target 3, local 0.
        assert_eq!(priorities(&plan), [Some(1), Some(3), Some(2), Some(0)]);
        // A client in r2 fails over to r1 first.
        let plan = Plan::new(Some(&setting), true, &topo("r2/z1"), &eps);
        assert_eq!(priorities(&plan), [Some(1), Some(0), Some(2), Some(1)]);
        // A client whose region no entry names gets the default order.
        let plan = Plan::new(Some(&setting), true, &topo("r9/z1"), &eps);
        assert_eq!(priorities(&plan), [Some(0); 4]);
    }

    #[test]
    fn failover_priority_matches_the_clients_labels_in_order() {
        let setting = LocalityLbSetting {
            failover_priority: vec!["net".into(), "tier".into()],
            ..enabled()
        };
        let eps = [
            labelled("", &[("net", "a"), ("tier", "x")]),
            labelled("", &[("net", "a"), ("tier", "y")]),
            labelled("", &[("net", "b"), ("tier", "x")]),
            labelled("", &[("tier", "x")]),
        ];
        let client = labelled("", &[("net", "a"), ("tier", "x")]);
        let plan = Plan::new(Some(&setting), true, &client, &eps);
        // Both match: 0; first matches: 2 - 1 = 1; first mismatches: 2 -> dense 0, 1, 2, 2.
        assert_eq!(priorities(&plan), [Some(0), Some(1), Some(2), Some(2)]);
        // Per client: another client's labels give another order.
        let other = labelled("", &[("net", "b"), ("tier", "x")]);
        let plan = Plan::new(Some(&setting), true, &other, &eps);
        assert_eq!(priorities(&plan), [Some(1), Some(1), Some(0), Some(1)]);
    }

    #[test]
    fn failover_priority_key_value_and_topology_labels() {
        // `tier=y` prefers endpoints labelled tier=y whatever the client has; the zone label
        // comes from the endpoint's locality.
        let setting = LocalityLbSetting {
            failover_priority: vec!["tier=y".into(), LABEL_ZONE.into()],
            ..enabled()
        };
        let eps = [
            labelled("r1/z1", &[("tier", "x")]),
            labelled("r1/z1", &[("tier", "y")]),
            labelled("r1/z2", &[("tier", "y")]),
        ];
        let client = labelled("r1/z2", &[("tier", "x")]);
        let plan = Plan::new(Some(&setting), true, &client, &eps);
        assert_eq!(priorities(&plan), [Some(2), Some(1), Some(0)]);
    }

    #[test]
    fn failover_priority_with_failover_refines_by_locality() {
        let setting = LocalityLbSetting {
            failover_priority: vec!["net".into()],
            failover: vec![("r1".into(), "r2".into())],
            ..enabled()
        };
        let eps = [
            labelled("r1/z1", &[("net", "a")]),
            labelled("r2/z1", &[("net", "a")]),
            labelled("r3/z1", &[("net", "a")]),
            labelled("r1/z1", &[("net", "b")]),
        ];
        let client = labelled("r1/z1", &[("net", "a")]);
        let plan = Plan::new(Some(&setting), true, &client, &eps);
        // Raw 0*5+0, 0*5+3, 0*5+4, 1*5+0 -> 0, 1, 2, 3.
        assert_eq!(priorities(&plan), [Some(0), Some(1), Some(2), Some(3)]);
    }

    #[test]
    fn failover_priority_is_skipped_for_a_client_without_labels() {
        let setting = LocalityLbSetting {
            failover_priority: vec!["net".into()],
            ..enabled()
        };
        let eps = [labelled("", &[("net", "a")]), labelled("", &[])];
        let plan = Plan::new(Some(&setting), true, &Topology::default(), &eps);
        assert_eq!(priorities(&plan), [Some(0), Some(0)]);
    }

    fn distribute(from: &str, to: &[(&str, u32)]) -> LocalityLbSetting {
        LocalityLbSetting {
            distribute: vec![LocalityDistribute {
                from: from.into(),
                to: to.iter().map(|(l, w)| (l.to_string(), *w)).collect(),
            }],
            ..enabled()
        }
    }

    #[test]
    fn distribute_weights_localities_and_splits_them_over_their_endpoints() {
        let setting = distribute("r1/z1/*", &[("r1/z1/*", 80), ("r1/z2/*", 20)]);
        let eps = [
            topo("r1/z1/s1"),
            topo("r1/z2/s1"),
            topo("r1/z2/s1"),
            topo("r9/z9/s9"),
        ];
        let plan = Plan::new(Some(&setting), false, &topo("r1/z1/s1"), &eps);
        assert_eq!(plan.locality_weights, [80, 20]);
        let w = plan.weights(0, |_| true);
        // z1: one endpoint with 80; z2: two endpoints with 10 each; r9 is not listed: no traffic.
        assert_eq!(w, [80.0, 10.0, 10.0, 0.0]);
        assert_eq!(plan.hosts[3], None);
        assert!(!plan.is_flat());
        // A client no rule is for balances evenly.
        let other = Plan::new(Some(&setting), false, &topo("r2/z1/s1"), &eps);
        assert!(other.is_flat());
    }

    #[test]
    fn distribute_wildcard_shares_by_endpoint_count_rounding_up() {
        // One pattern covering two localities with 1 and 2 endpoints: ceil(1*100/3) = 34 and
        // ceil(2*100/3) = 67, as Istio computes.
        let setting = distribute("*", &[("r1/*", 100)]);
        let eps = [topo("r1/a"), topo("r1/b"), topo("r1/b")];
        let plan = Plan::new(Some(&setting), false, &topo("r1/a"), &eps);
        assert_eq!(plan.locality_weights, [34, 67]);
        assert_eq!(plan.weights(0, |_| true), [34.0, 33.5, 33.5]);
    }

    #[test]
    fn distributed_locality_weight_shrinks_with_its_availability() {
        let setting = distribute("r1", &[("r1/z1", 50), ("r1/z2", 50)]);
        let eps = [
            topo("r1/z1"),
            topo("r1/z1"),
            topo("r1/z1"),
            topo("r1/z1"),
            topo("r1/z2"),
        ];
        let plan = Plan::new(Some(&setting), false, &topo("r1/z1"), &eps);
        // Two of four z1 hosts down: availability min(1, 1.4 * 0.5) = 0.7 -> 35 over 2 hosts.
        let w = plan.weights(0, |i| i >= 2);
        assert_eq!(w[..2], [0.0, 0.0]);
        assert!(
            (w[2] - 17.5).abs() < 1e-9 && (w[3] - 17.5).abs() < 1e-9,
            "{w:?}"
        );
        assert_eq!(w[4], 50.0);
    }

    #[test]
    fn priority_load_spills_over_as_envoy_computes_it() {
        // All of P0 healthy: everything stays there.
        assert_eq!(priority_load(&[(10, 10), (10, 10)]), [100, 0]);
        // 80 % healthy × 1.4 = 112 -> still 100 %.
        assert_eq!(priority_load(&[(8, 10), (10, 10)]), [100, 0]);
        // 71 % × 1.4 = 99.4 -> 99 % (integer health), 1 % spills to P1.
        assert_eq!(priority_load(&[(71, 100), (10, 10)]), [99, 1]);
        // 50 % × 1.4 = 70 %.
        assert_eq!(priority_load(&[(5, 10), (10, 10)]), [70, 30]);
        // P0 dead, P1 half healthy (70), P2 healthy: 0, 70, 30.
        assert_eq!(priority_load(&[(0, 4), (2, 4), (4, 4)]), [0, 70, 30]);
        // Total health below 100 is scaled up: 28 + 28 = 56 -> 50 / 50.
        assert_eq!(priority_load(&[(2, 10), (2, 10)]), [50, 50]);
        // 14 + 42 = 56: 14*100/56 = 25, 42*100/56 = 75.
        assert_eq!(priority_load(&[(1, 10), (3, 10)]), [25, 75]);
        // Rounding leftovers go to the best healthy level: 14 and 28 of 42 -> 33 + 66 + 1.
        assert_eq!(priority_load(&[(1, 10), (2, 10)]), [34, 66]);
        // Nothing healthy anywhere: all to P0.
        assert_eq!(priority_load(&[(0, 3), (0, 3)]), [100, 0]);
        assert_eq!(priority_load(&[]), Vec::<u32>::new());
    }

    #[test]
    fn plan_priority_load_counts_only_placed_hosts() {
        let client = topo("r1/z1");
        let eps = [topo("r1/z1"), topo("r1/z1"), topo("r2/z1"), topo("r2/z1")];
        let plan = Plan::new(Some(&enabled()), true, &client, &eps);
        assert_eq!(plan.priority_load(|_| true), [100, 0]);
        // One of two P0 hosts ejected: 50 % × 1.4 = 70 % stays local.
        assert_eq!(plan.priority_load(|i| i != 0), [70, 30]);
        assert_eq!(plan.priority_load(|i| i >= 2), [0, 100]);
        assert_eq!(plan.weights(1, |_| true), [0.0, 0.0, 1.0, 1.0]);
    }

    #[test]
    fn choose_priority_walks_the_load() {
        let load = [70, 30];
        assert_eq!(choose_priority(&load, 0), 0);
        assert_eq!(choose_priority(&load, 69), 0);
        assert_eq!(choose_priority(&load, 70), 1);
        assert_eq!(choose_priority(&load, 99), 1);
        assert_eq!(choose_priority(&[0, 100], 0), 1);
    }

    #[test]
    fn locality_patterns_match_as_istio() {
        let l = Locality::parse("r1/z1/s1");
        for p in ["*", "r1", "r1/*", "r1/z1", "r1/z1/*", "r1/z1/s1", "r1/*/s1"] {
            assert!(locality_matches(&l, p), "{p}");
        }
        for p in ["r2", "r1/z2", "r1/z1/s2", "r2/*"] {
            assert!(!locality_matches(&l, p), "{p}");
        }
    }
}
