//! Where a route leads (*concrete* tier): a cluster of known endpoints, the connection's original
//! destination (ServiceEntry `NONE`, Istio's `PassthroughCluster`), names resolved at connect time
//! (ServiceEntry `DNS`), or nothing (unknown host or subset).
//!
//! Targets are built with the routing tables, once per snapshot; the request path only picks an
//! endpoint from one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::upstream::{Cluster, ClusterKey, InFlight, UpstreamProtocol};

/// How long a `DNS` target may take to resolve before the attempt counts as "no healthy upstream".
const DNS_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a destination leads.
#[derive(Debug, Clone)]
pub enum Target {
    /// Endpoints known when the table was built (Kubernetes pods, ServiceEntry `STATIC`).
    Cluster(Arc<Cluster>),
    /// Connect to the address the client dialled: ServiceEntry `NONE`, and Istio's
    /// `PassthroughCluster` for unknown destinations under `ALLOW_ANY`.
    OriginalDst(Arc<OriginalDst>),
    /// Resolve names when connecting: ServiceEntry `DNS` / `DNS_ROUND_ROBIN`.
    Dns(Arc<DnsTarget>),
    /// Unknown host or subset, or a host the client cannot see: Envoy answers 503 `NC`.
    Missing(ClusterKey),
}

/// A target that forwards to the connection's original destination.
#[derive(Debug)]
pub struct OriginalDst {
    /// Name for logs: `outbound|<port>||<host>` for a ServiceEntry, `PassthroughCluster` otherwise.
    pub key: ClusterKey,
    /// How to speak to the destination.
    pub protocol: UpstreamProtocol,
}

/// A target whose endpoints are DNS names (or IP literals) resolved per connection.
///
/// Resolution goes through the system resolver (`tokio::net::lookup_host`) on every pick, so the
/// record's TTL is honoured trivially; there is no balancer or outlier state for these endpoints yet.
#[derive(Debug)]
pub struct DnsTarget {
    /// Istio's cluster name (plus scope).
    pub key: ClusterKey,
    /// How to speak to the endpoints.
    pub protocol: UpstreamProtocol,
    /// `(name, port)` pairs: the entry's endpoint addresses, or its host when it lists none.
    pub names: Vec<(String, u16)>,
    /// `DNS_ROUND_ROBIN` (Envoy `LOGICAL_DNS`): use only the first address of an answer.
    pub first_only: bool,
}

/// The endpoint chosen for one attempt; dropping it ends the attempt's load accounting.
#[derive(Debug)]
pub struct Picked {
    addr: SocketAddr,
    _in_flight: Option<InFlight>,
}

impl Picked {
    /// The address to connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Why no endpoint could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickError {
    /// The target does not exist (503 `NC`).
    NoCluster,
    /// No endpoint is available or resolvable (503 `UH`).
    NoHealthyUpstream,
}

impl Target {
    /// The cluster key, for logs and metrics.
    pub fn key(&self) -> &ClusterKey {
        match self {
            Target::Cluster(c) => &c.key,
            Target::OriginalDst(o) => &o.key,
            Target::Dns(d) => &d.key,
            Target::Missing(k) => k,
        }
    }

    /// How to speak to the endpoints; `None` for a missing target.
    pub fn protocol(&self) -> Option<UpstreamProtocol> {
        match self {
            Target::Cluster(c) => Some(c.protocol),
            Target::OriginalDst(o) => Some(o.protocol),
            Target::Dns(d) => Some(d.protocol),
            Target::Missing(_) => None,
        }
    }

    /// Choose the endpoint for one attempt. `original_dst` is the address the client dialled (used by
    /// original-destination targets only).
    pub async fn pick(&self, original_dst: SocketAddr) -> Result<Picked, PickError> {
        match self {
            Target::Cluster(c) => c
                .pick()
                .map(|f| Picked {
                    addr: f.addr(),
                    _in_flight: Some(f),
                })
                .ok_or(PickError::NoHealthyUpstream),
            Target::OriginalDst(_) => Ok(Picked {
                addr: original_dst,
                _in_flight: None,
            }),
            Target::Dns(d) => d
                .resolve()
                .await
                .map(|addr| Picked {
                    addr,
                    _in_flight: None,
                })
                .ok_or(PickError::NoHealthyUpstream),
            Target::Missing(_) => Err(PickError::NoCluster),
        }
    }
}

impl Target {
    /// Choose the endpoint for a retry, avoiding `tried` endpoints when another one is available:
    /// up to `attempts` picks (Envoy's `previous_hosts` predicate with
    /// `host_selection_retry_max_attempts`), else the last pick.
    pub async fn pick_avoiding(
        &self,
        original_dst: SocketAddr,
        tried: &[SocketAddr],
        attempts: u32,
    ) -> Result<Picked, PickError> {
        let mut picked = self.pick(original_dst).await?;
        for _ in 1..attempts.max(1) {
            if !tried.contains(&picked.addr) {
                break;
            }
            picked = self.pick(original_dst).await?;
        }
        Ok(picked)
    }
}

impl DnsTarget {
    /// Resolve every name (bounded by [`DNS_TIMEOUT`]) and pick one address at random; `None` when
    /// nothing resolves. IP literals resolve without a query.
    async fn resolve(&self) -> Option<SocketAddr> {
        let lookups = async {
            let mut addrs = Vec::new();
            for (name, port) in &self.names {
                match tokio::net::lookup_host((name.as_str(), *port)).await {
                    Ok(found) if self.first_only => addrs.extend(found.take(1)),
                    Ok(found) => addrs.extend(found),
                    Err(e) => {
                        tracing::debug!(cluster = %self.key, %name, error = %e, "resolution failed")
                    }
                }
            }
            addrs
        };
        let addrs = tokio::time::timeout(DNS_TIMEOUT, lookups)
            .await
            .unwrap_or_default();
        match addrs.len() {
            0 => None,
            n => addrs.get(rand::random_range(0..n)).copied(),
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

    #[tokio::test]
    async fn original_dst_and_dns_literals_pick_without_the_network() {
        let key = ClusterKey {
            host: "PassthroughCluster".into(),
            port: 80,
            subset: None,
            scope: String::new(),
        };
        let dst = SocketAddr::from(([192, 0, 2, 7], 8080));
        let passthrough = Target::OriginalDst(Arc::new(OriginalDst {
            key: key.clone(),
            protocol: UpstreamProtocol::Tcp,
        }));
        assert_eq!(passthrough.pick(dst).await.map(|p| p.addr()), Ok(dst));
        // An IP literal "resolves" locally; tests never send DNS queries off the box.
        let dns = Target::Dns(Arc::new(DnsTarget {
            key: key.clone(),
            protocol: UpstreamProtocol::Tcp,
            names: vec![("192.0.2.9".into(), 9000)],
            first_only: false,
        }));
        assert_eq!(
            dns.pick(dst).await.map(|p| p.addr()),
            Ok(SocketAddr::from(([192, 0, 2, 9], 9000)))
        );
        assert_eq!(
            Target::Missing(key).pick(dst).await.map(|p| p.addr()),
            Err(PickError::NoCluster)
        );
    }
}
