//! Routing tables: built once per snapshot, read by every request.
//!
//! For every meshed destination (cluster IP, port) the table holds the *logical* service port: the
//! VirtualServices that may apply to it in precedence order, already compiled (destinations resolved to
//! clusters), plus the default route used when no VirtualService applies to a client.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::policy::{
    Destination, DestinationRule, HttpAction, HttpRoute, L4Match, Labels, Protocol, ServiceId,
    Snapshot, VirtualService,
};
use crate::upstream::{Cluster, ClusterKey, ClusterRegistry, UpstreamProtocol};

/// Where a destination leads: a cluster, or nowhere (unknown host or subset: Envoy answers 503 `NC`).
#[derive(Debug, Clone)]
pub enum Target {
    Cluster(Arc<Cluster>),
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
}

/// A destination of a route with its relative weight.
#[derive(Debug, Clone)]
pub struct WeightedTarget {
    pub target: Target,
    pub weight: u32,
    /// Index into the route's `route` list (for per-destination header operations).
    pub index: usize,
}

/// Destinations of one route; picked per request by weight.
#[derive(Debug, Clone, Default)]
pub struct WeightedTargets {
    pub targets: Vec<WeightedTarget>,
    total: u64,
}

impl WeightedTargets {
    fn new(targets: Vec<WeightedTarget>) -> Self {
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

/// One `http` rule of a VirtualService with its destinations resolved.
#[derive(Debug, Clone)]
pub struct CompiledHttpRoute {
    pub spec: HttpRoute,
    pub targets: WeightedTargets,
    pub mirrors: Vec<(Target, f64)>,
}

/// One `tcp` rule of a VirtualService with its destinations resolved.
#[derive(Debug, Clone)]
pub struct CompiledL4Route {
    pub matches: Vec<L4Match>,
    pub targets: WeightedTargets,
}

/// A VirtualService compiled for one service port.
#[derive(Debug, Clone)]
pub struct CompiledVirtualService {
    /// `kind namespace/name`, for logs.
    pub name: String,
    pub namespace: String,
    pub export_to: Vec<String>,
    pub http: Vec<CompiledHttpRoute>,
    pub tcp: Vec<CompiledL4Route>,
}

impl CompiledVirtualService {
    /// `exportTo` as Istio reads it: empty or `*` = everywhere, `.` = own namespace, else listed names.
    pub fn visible_to(&self, client_namespace: &str) -> bool {
        self.export_to.is_empty()
            || self.export_to.iter().any(|e| {
                e == "*"
                    || e == client_namespace
                    || (e == "." && self.namespace == client_namespace)
            })
    }
}

/// The logical service port a meshed destination leads to.
#[derive(Debug, Clone)]
pub struct ServicePortRoutes {
    pub service: ServiceId,
    pub hostname: String,
    pub port: u16,
    pub protocol: Protocol,
    /// Candidates in precedence order: exact host before wildcard, then oldest first.
    pub virtual_services: Vec<Arc<CompiledVirtualService>>,
    /// The route used when no VirtualService applies: all ready endpoints, balanced.
    pub default_target: Target,
}

/// All routing state derived from one snapshot.
#[derive(Debug, Default)]
pub struct RouteTable {
    by_destination: HashMap<(IpAddr, u16), Arc<ServicePortRoutes>>,
}

impl RouteTable {
    /// Build the table for `snapshot`, reusing clusters from `registry` so their state survives.
    pub fn build(snapshot: &Snapshot, registry: &ClusterRegistry) -> RouteTable {
        let mut builder = Builder {
            snapshot,
            registry,
            live: HashSet::new(),
        };
        let mut by_destination = HashMap::new();
        let mut per_port: HashMap<(ServiceId, usize), Arc<ServicePortRoutes>> = HashMap::new();
        for (&(ip, port), &(service, port_index)) in &snapshot.service_by_vip {
            let routes = per_port
                .entry((service, port_index))
                .or_insert_with(|| Arc::new(builder.service_port(service, port_index)))
                .clone();
            by_destination.insert((ip, port), routes);
        }
        registry.retain(&builder.live);
        RouteTable { by_destination }
    }

    /// The service port a connection's original destination belongs to.
    pub fn lookup(&self, original_dst: SocketAddr) -> Option<&Arc<ServicePortRoutes>> {
        self.by_destination
            .get(&(original_dst.ip().to_canonical(), original_dst.port()))
    }
}

struct Builder<'a> {
    snapshot: &'a Snapshot,
    registry: &'a ClusterRegistry,
    live: HashSet<ClusterKey>,
}

impl<'a> Builder<'a> {
    fn service_port(&mut self, service: ServiceId, port_index: usize) -> ServicePortRoutes {
        let svc = &self.snapshot.services[service];
        let port = &svc.ports[port_index];
        let default_target = self.resolve(
            &Destination {
                host: svc.hostname.clone(),
                subset: None,
                port: Some(port.port),
            },
            port.port,
            &svc.meta.namespace,
        );
        let virtual_services = self
            .virtual_services_for(&svc.hostname)
            .into_iter()
            .map(|vs| Arc::new(self.compile_vs(vs, port.port)))
            .collect();
        ServicePortRoutes {
            service,
            hostname: svc.hostname.clone(),
            port: port.port,
            protocol: port.protocol,
            virtual_services,
            default_target,
        }
    }

    /// VirtualServices bound to the mesh whose hosts cover `hostname`: exact hosts first, then
    /// wildcards from most to least specific, each group oldest first.
    fn virtual_services_for(&self, hostname: &str) -> Vec<&'a VirtualService> {
        let mut found: Vec<(usize, &VirtualService)> = Vec::new();
        for vs in &self.snapshot.virtual_services {
            if !vs.applies_to_mesh() {
                continue;
            }
            // Rank: 0 for an exact host; for wildcards, shorter suffixes rank after longer ones.
            let rank = vs
                .hosts
                .iter()
                .filter_map(|h| host_match_rank(h, hostname))
                .min();
            if let Some(rank) = rank {
                found.push((rank, vs));
            }
        }
        found.sort_by(|(ra, a), (rb, b)| {
            ra.cmp(rb)
                .then_with(|| creation_order(&a.meta).cmp(&creation_order(&b.meta)))
        });
        found.into_iter().map(|(_, vs)| vs).collect()
    }

    fn compile_vs(&mut self, vs: &VirtualService, request_port: u16) -> CompiledVirtualService {
        let ns = vs.meta.namespace.clone();
        let http = vs
            .http
            .iter()
            .map(|route| {
                let targets = match &route.action {
                    HttpAction::Route(dests) => dests
                        .iter()
                        .enumerate()
                        .map(|(index, d)| WeightedTarget {
                            target: self.resolve(&d.destination, request_port, &ns),
                            weight: d.weight,
                            index,
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                let mirrors = route
                    .mirrors
                    .iter()
                    .map(|m| {
                        (
                            self.resolve(&m.destination, request_port, &ns),
                            m.percentage,
                        )
                    })
                    .collect();
                CompiledHttpRoute {
                    spec: route.clone(),
                    targets: WeightedTargets::new(targets),
                    mirrors,
                }
            })
            .collect();
        let tcp = vs
            .tcp
            .iter()
            .map(|route| CompiledL4Route {
                matches: route.matches.clone(),
                targets: WeightedTargets::new(
                    route
                        .route
                        .iter()
                        .enumerate()
                        .map(|(index, d)| WeightedTarget {
                            target: self.resolve(&d.destination, request_port, &ns),
                            weight: d.weight,
                            index,
                        })
                        .collect(),
                ),
            })
            .collect();
        CompiledVirtualService {
            name: vs.meta.display_name(),
            namespace: ns,
            export_to: vs.export_to.clone(),
            http,
            tcp,
        }
    }

    /// Resolve a destination to a cluster: port = `destination.port`, else the service's only port,
    /// else the port the request arrived on; subset labels from the applicable DestinationRule.
    fn resolve(&mut self, dest: &Destination, request_port: u16, rule_namespace: &str) -> Target {
        let snapshot = self.snapshot;
        let Some(&service) = snapshot.service_by_host.get(&dest.host) else {
            return Target::Missing(ClusterKey {
                host: dest.host.clone(),
                port: dest.port.unwrap_or(request_port),
                subset: dest.subset.clone(),
            });
        };
        let svc = &snapshot.services[service];
        let port = dest.port.unwrap_or(match svc.ports.as_slice() {
            [only] => only.port,
            _ => request_port,
        });
        let key = ClusterKey {
            host: dest.host.clone(),
            port,
            subset: dest.subset.clone(),
        };
        let Some(port_index) = svc.ports.iter().position(|p| p.port == port) else {
            return Target::Missing(key);
        };
        let subset_labels: Option<Labels> = match &dest.subset {
            None => None,
            Some(name) => {
                let rule =
                    self.destination_rule_for(&dest.host, rule_namespace, &svc.meta.namespace);
                match rule.and_then(|r| r.subset(name)) {
                    Some(subset) => Some(subset.labels.clone()),
                    None => return Target::Missing(key),
                }
            }
        };
        let protocol = match svc.ports[port_index].protocol {
            p if p.is_http2() => UpstreamProtocol::Http2,
            Protocol::Auto => UpstreamProtocol::SameAsDownstream,
            p if p.is_http() => UpstreamProtocol::Http1,
            _ => UpstreamProtocol::Tcp,
        };
        let endpoints = snapshot
            .endpoints(service, port_index, subset_labels.as_ref())
            .into_iter()
            .map(|e| e.addr)
            .collect();
        self.live.insert(key.clone());
        Target::Cluster(self.registry.ensure(key, protocol, endpoints))
    }

    /// The DestinationRule for `host`: one in the rule's namespace, then the service's namespace,
    /// then the root namespace; among several, the oldest.
    fn destination_rule_for(
        &self,
        host: &str,
        rule_namespace: &str,
        service_namespace: &str,
    ) -> Option<&'a DestinationRule> {
        let root = self.snapshot.mesh.root_namespace.as_str();
        let candidates = |ns: &str| {
            self.snapshot
                .destination_rules
                .iter()
                .filter(move |dr| dr.meta.namespace == ns)
                .filter(|dr| host_match_rank(&dr.host, host).is_some())
                .min_by_key(|dr| creation_order(&dr.meta))
        };
        [rule_namespace, service_namespace, root]
            .into_iter()
            .find_map(candidates)
    }
}

/// Istio's "oldest wins": creation timestamp (RFC 3339 sorts as text), then load order.
fn creation_order(m: &crate::policy::Meta) -> (Option<String>, usize) {
    // Resources without a timestamp sort after those with one (they are "newer" than any applied one).
    (
        Some(
            m.creation_timestamp
                .clone()
                .unwrap_or_else(|| "~".to_string()),
        ),
        m.order,
    )
}

/// `Some(0)` when `pattern` is exactly `hostname`; for a wildcard `*.suffix` covering it, a rank that
/// grows as the suffix gets shorter (less specific); `None` when it does not cover it.
pub fn host_match_rank(pattern: &str, hostname: &str) -> Option<usize> {
    if pattern == hostname {
        return Some(0);
    }
    if pattern == "*" {
        return Some(usize::MAX);
    }
    let suffix = pattern.strip_prefix('*')?;
    if hostname.len() > suffix.len() && hostname.ends_with(suffix) {
        Some(1 + 1024usize.saturating_sub(suffix.len()))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_ranks() {
        assert_eq!(host_match_rank("a.b.c", "a.b.c"), Some(0));
        assert!(host_match_rank("*.b.c", "a.b.c").is_some());
        assert!(host_match_rank("*.b.c", "x.a.b.c").is_some());
        assert_eq!(host_match_rank("*.b.c", "b.c"), None);
        assert!(host_match_rank("*.b.c", "a.b.c") < host_match_rank("*.c", "a.b.c"));
    }

    fn wt(weight: u32, index: usize) -> WeightedTarget {
        WeightedTarget {
            target: Target::Missing(ClusterKey {
                host: format!("h{index}"),
                port: 80,
                subset: None,
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
}
