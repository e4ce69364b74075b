//! Where a route leads (*concrete* tier): a cluster (whose endpoints may be known pods, the
//! connection's original destination or names resolved at connect time), or nothing (unknown host
//! or subset).
//!
//! Targets are built with the routing tables, once per snapshot; endpoint choice belongs to
//! `upstream`.

use std::sync::Arc;

use crate::policy::HashKey;
use crate::upstream::{Cluster, ClusterKey, PickError, PickRequest, Picked, UpstreamProtocol};

/// Where a destination leads.
#[derive(Debug, Clone)]
pub enum Target {
    /// A cluster with its policy and per-client state.
    Cluster(Arc<Cluster>),
    /// Unknown host or subset, or a host the client cannot see: Envoy answers 503 `NC`.
    Missing(ClusterKey),
}

impl Target {
    /// The cluster key, for logs and metrics.
    pub fn key(&self) -> &ClusterKey {
        match self {
            Target::Cluster(c) => &c.key,
            Target::Missing(k) => k,
        }
    }

    /// How to speak to the endpoints; `None` for a missing target.
    pub fn protocol(&self) -> Option<UpstreamProtocol> {
        match self {
            Target::Cluster(c) => Some(c.protocol),
            Target::Missing(_) => None,
        }
    }

    /// The cluster, unless the target is missing.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        match self {
            Target::Cluster(c) => Some(c),
            Target::Missing(_) => None,
        }
    }

    /// Choose the endpoint for one attempt.
    pub async fn pick(&self, req: &PickRequest<'_>) -> Result<Picked, PickError> {
        match self {
            Target::Cluster(c) => c.pick(req).await,
            Target::Missing(_) => Err(PickError::NoCluster),
        }
    }
}

/// A destination of a route with its relative weight.
#[derive(Debug, Clone)]
pub struct WeightedTarget {
    /// Where this destination leads.
    pub target: Target,
    /// Relative weight.
    pub weight: u32,
    /// Index into the route's `route` list (for per-destination header operations).
    pub index: usize,
    /// The destination's consistent-hash key (HTTP routes only; see
    /// [`crate::upstream::policy::route_hash_key`]).
    pub hash: Option<Arc<HashKey>>,
}

/// Destinations of one route; picked per request by weight.
#[derive(Debug, Clone, Default)]
pub struct WeightedTargets {
    /// Destinations with non-zero weight, in route order.
    pub targets: Vec<WeightedTarget>,
    total: u64,
}

impl WeightedTargets {
    /// Weights as Istio reads them: relative; 0-weight entries dropped when there are several.
    pub fn new(targets: Vec<WeightedTarget>) -> Self {
        // One destination always takes all traffic, whatever its weight.
        let targets: Vec<WeightedTarget> = if targets.len() == 1 {
            targets
                .into_iter()
                .map(|mut t| {
                    t.weight = t.weight.max(1);
                    t
                })
                .collect()
        } else {
            targets.into_iter().filter(|t| t.weight > 0).collect()
        };
        let total = targets.iter().map(|t| u64::from(t.weight)).sum();
        Self { targets, total }
    }

    /// Pick by weight with a draw in `0..total` (Envoy's weighted clusters: cumulative ranges in order).
    pub fn pick_with(&self, draw: u64) -> Option<&WeightedTarget> {
        let mut acc = 0u64;
        for t in &self.targets {
            acc += u64::from(t.weight);
            if draw < acc {
                return Some(t);
            }
        }
        self.targets.last()
    }

    /// Pick by weight with a random draw.
    pub fn pick(&self) -> Option<&WeightedTarget> {
        if self.total == 0 {
            return None;
        }
        self.pick_with(rand::random_range(0..self.total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wt(weight: u32, index: usize) -> WeightedTarget {
        WeightedTarget {
            target: Target::Missing(ClusterKey {
                host: format!("h{index}"),
                port: 80,
                subset: None,
                scope: String::new(),
            }),
            weight,
            index,
            hash: None,
        }
    }

    #[test]
    fn weights_are_relative_and_zero_is_dropped() {
        let t = WeightedTargets::new(vec![wt(1, 0), wt(0, 1), wt(3, 2)]);
        assert_eq!(t.total, 4);
        assert_eq!(t.pick_with(0).map(|t| t.index), Some(0));
        assert_eq!(t.pick_with(1).map(|t| t.index), Some(2));
        assert_eq!(t.pick_with(3).map(|t| t.index), Some(2));
    }

    #[test]
    fn single_destination_takes_all_even_with_weight_zero() {
        let t = WeightedTargets::new(vec![wt(0, 0)]);
        assert_eq!(t.pick().map(|t| t.index), Some(0));
    }
}
