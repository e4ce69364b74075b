//! The traffic policy of one cluster, resolved once per config from its DestinationRule (§2.1):
//! the rule's top-level `trafficPolicy`, its `portLevelSettings` entry for the cluster's port, then
//! the subset's policy (itself port-level resolved). Each step replaces whole blocks
//! (`loadBalancer`, `connectionPool`, `outlierDetection`, `tls`); there is no field-level merge.

use crate::policy::{
    ClientTls, ConnectionPool, HashKey, LoadBalancer, LocalityLbSetting, OutlierDetection,
    RetryBudget, TrafficPolicy, Warmup,
};

/// What a DestinationRule decides for one cluster. `None` blocks take Istio's defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterPolicy {
    /// `loadBalancer`; `None` = `LEAST_REQUEST`.
    pub load_balancer: Option<LoadBalancer>,
    /// `loadBalancer.localityLbSetting`; `None` = the mesh default (`{enabled: true}`).
    pub locality_lb_setting: Option<LocalityLbSetting>,
    /// `loadBalancer.warmup`; `None` = no slow start.
    pub warmup: Option<Warmup>,
    /// `connectionPool`; `None` = no limits (Istio writes every limit as 2^32−1).
    pub connection_pool: Option<ConnectionPool>,
    /// `outlierDetection`; `None` = no ejection at all.
    pub outlier_detection: Option<OutlierDetection>,
    /// `retryBudget`; when set it replaces `connectionPool.http.maxRetries`. Not a port-level block:
    /// it comes from the rule's (or the subset's) own `trafficPolicy`.
    pub retry_budget: Option<RetryBudget>,
    /// `tls`; `None` = plaintext (as `DISABLE`).
    pub tls: Option<ClientTls>,
}

impl ClusterPolicy {
    /// The policy of the cluster for `port`, from the rule's top-level policy and, for a subset
    /// cluster, the subset's policy.
    pub fn resolve(top: Option<&TrafficPolicy>, subset: Option<&TrafficPolicy>, port: u16) -> Self {
        Self::resolve_traced(top, subset, port).0
    }

    /// [`ClusterPolicy::resolve`], with the level each block came from (for `keel explain`).
    pub fn resolve_traced(
        top: Option<&TrafficPolicy>,
        subset: Option<&TrafficPolicy>,
        port: u16,
    ) -> (Self, PolicySources) {
        let mut sources = PolicySources::default();
        let mut policy = match top {
            Some(tp) => {
                let (policy, port_level) = Self::for_port(tp, port);
                let level = if port_level {
                    PolicyLevel::PortLevel
                } else {
                    PolicyLevel::TopLevel
                };
                sources.set_from(&policy, level);
                if policy.retry_budget.is_some() {
                    // `retryBudget` is never port level.
                    sources.retry_budget = PolicyLevel::TopLevel;
                }
                policy
            }
            None => Self::default(),
        };
        if let Some(sub) = subset {
            let (own, port_level) = Self::for_port(sub, port);
            if port_level {
                // A subset's port-level entry replaces every block, unset ones included.
                sources = PolicySources::default();
                sources.set_from(&own, PolicyLevel::SubsetPortLevel);
                if own.retry_budget.is_some() {
                    sources.retry_budget = PolicyLevel::Subset;
                }
                policy = own;
            } else {
                sources.set_from(&own, PolicyLevel::Subset);
                // Otherwise each block the subset sets replaces the parent's; the rest is inherited.
                // `loadBalancer` is one block: algorithm, locality and warmup go together.
                if own.has_load_balancer_block() {
                    policy.load_balancer = own.load_balancer;
                    policy.locality_lb_setting = own.locality_lb_setting;
                    policy.warmup = own.warmup;
                }
                if own.connection_pool.is_some() {
                    policy.connection_pool = own.connection_pool;
                }
                if own.outlier_detection.is_some() {
                    policy.outlier_detection = own.outlier_detection;
                }
                if own.retry_budget.is_some() {
                    policy.retry_budget = own.retry_budget;
                }
                if own.tls.is_some() {
                    policy.tls = own.tls;
                }
            }
        }
        (policy, sources)
    }

    /// The blocks of `tp` for `port`, and whether a port-level entry supplied them. A port-level
    /// entry replaces the top-level blocks as a whole: blocks it omits take defaults, not the
    /// top-level values.
    fn for_port(tp: &TrafficPolicy, port: u16) -> (Self, bool) {
        match tp.port_level.iter().find(|(p, _)| *p == port) {
            Some((_, pl)) => (
                Self {
                    retry_budget: tp.retry_budget,
                    ..Self::blocks(pl)
                },
                true,
            ),
            None => (Self::blocks(tp), false),
        }
    }

    fn blocks(tp: &TrafficPolicy) -> Self {
        Self {
            load_balancer: tp.load_balancer.clone(),
            locality_lb_setting: tp.locality_lb_setting.clone(),
            warmup: tp.warmup.clone(),
            connection_pool: tp.connection_pool.clone(),
            outlier_detection: tp.outlier_detection.clone(),
            retry_budget: tp.retry_budget,
            tls: tp.tls.clone(),
        }
    }

    /// Whether a `loadBalancer` block was set (the model keeps its parts apart). A block that sets
    /// only fields Keel does not model (`zoneAwareLbSetting`) does not count.
    fn has_load_balancer_block(&self) -> bool {
        self.load_balancer.is_some() || self.locality_lb_setting.is_some() || self.warmup.is_some()
    }

    /// The locality setting in force: the DestinationRule's, else the mesh default; `None` when
    /// the rule disables locality load balancing (Istio's `GetLocalityLbSetting`).
    pub fn locality(&self) -> Option<&LocalityLbSetting> {
        static MESH_DEFAULT: std::sync::LazyLock<LocalityLbSetting> =
            std::sync::LazyLock::new(LocalityLbSetting::mesh_default);
        match &self.locality_lb_setting {
            Some(l) if !l.enabled => None,
            Some(l) => Some(l),
            None => Some(&MESH_DEFAULT),
        }
    }

    /// Whether locality priorities (default failover, `failover`, `failoverPriority`) apply:
    /// Istio sets them only on clusters with outlier detection, since without ejection Envoy would
    /// never move traffic to a lower priority.
    pub fn locality_failover(&self) -> bool {
        self.outlier_detection.is_some()
    }

    /// The slow-start setting, when the balancer honours it: Envoy applies `slow_start_config` to
    /// `ROUND_ROBIN` and `LEAST_REQUEST` (Istio's default) only.
    pub fn slow_start(&self) -> Option<&Warmup> {
        match self.load_balancer {
            None | Some(LoadBalancer::LeastRequest | LoadBalancer::RoundRobin) => {
                self.warmup.as_ref()
            }
            Some(_) => None,
        }
    }

    /// `loadBalancer.simple: PASSTHROUGH`: forward to the address the client dialled.
    pub fn is_passthrough(&self) -> bool {
        matches!(self.load_balancer, Some(LoadBalancer::Passthrough))
    }

    /// `consistentHash.useSourceIp`: TCP connections are hashed by the client pod's IP. (Istio
    /// reads this for TCP from the rule's top-level or subset policy; Keel reads the cluster's
    /// resolved policy, port-level entries included.)
    pub fn hashes_source_ip(&self) -> bool {
        matches!(&self.load_balancer, Some(LoadBalancer::ConsistentHash(ch)) if ch.key == HashKey::SourceIp)
    }
}

/// Where a block of a cluster's policy came from in its DestinationRule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PolicyLevel {
    /// Not set at any level: Istio's default.
    #[default]
    Default,
    /// The rule's top-level `trafficPolicy`.
    TopLevel,
    /// The top-level `trafficPolicy.portLevelSettings` entry for the cluster's port.
    PortLevel,
    /// The subset's `trafficPolicy`.
    Subset,
    /// The subset's `portLevelSettings` entry for the cluster's port.
    SubsetPortLevel,
}

impl PolicyLevel {
    /// How `keel explain` names the level.
    pub fn describe(self) -> &'static str {
        match self {
            PolicyLevel::Default => "default",
            PolicyLevel::TopLevel => "trafficPolicy",
            PolicyLevel::PortLevel => "trafficPolicy.portLevelSettings",
            PolicyLevel::Subset => "subset trafficPolicy",
            PolicyLevel::SubsetPortLevel => "subset portLevelSettings",
        }
    }
}

/// The level each block of a resolved [`ClusterPolicy`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolicySources {
    pub load_balancer: PolicyLevel,
    pub connection_pool: PolicyLevel,
    pub outlier_detection: PolicyLevel,
    pub retry_budget: PolicyLevel,
    pub tls: PolicyLevel,
}

impl PolicySources {
    /// Marks the blocks `policy` sets as coming from `level`.
    fn set_from(&mut self, policy: &ClusterPolicy, level: PolicyLevel) {
        if policy.has_load_balancer_block() {
            self.load_balancer = level;
        }
        if policy.connection_pool.is_some() {
            self.connection_pool = level;
        }
        if policy.outlier_detection.is_some() {
            self.outlier_detection = level;
        }
        if policy.retry_budget.is_some() {
            self.retry_budget = level;
        }
        if policy.tls.is_some() {
            self.tls = level;
        }
    }
}

/// The hash key of an HTTP route destination (Envoy's route `hash_policy`), which Istio resolves
/// apart from the cluster's balancer (§2.1, last paragraph): the subset's port-level
/// `consistentHash`, else the subset's, else the rule's port-level, else the rule's top-level one.
/// Port-level entries count only when the destination names its port (`explicit_port`); the
/// default route of a service without a VirtualService passes its service port. A port-level or
/// subset policy without `consistentHash` does not hide a hash set above it.
pub fn route_hash_key(
    top: Option<&TrafficPolicy>,
    subset: Option<&TrafficPolicy>,
    explicit_port: Option<u16>,
) -> Option<HashKey> {
    fn own(tp: Option<&TrafficPolicy>) -> Option<&HashKey> {
        match tp?.load_balancer.as_ref()? {
            LoadBalancer::ConsistentHash(ch) => Some(&ch.key),
            _ => None,
        }
    }
    fn port_level(tp: Option<&TrafficPolicy>, port: Option<u16>) -> Option<&HashKey> {
        let port = port?;
        let (_, pl) = tp?.port_level.iter().find(|(p, _)| *p == port)?;
        own(Some(pl))
    }
    port_level(subset, explicit_port)
        .or_else(|| own(subset))
        .or_else(|| port_level(top, explicit_port))
        .or_else(|| own(top))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(max: u32) -> ConnectionPool {
        ConnectionPool {
            tcp_max_connections: Some(max),
            ..Default::default()
        }
    }

    fn lb_pool(lb: LoadBalancer, max: Option<u32>) -> TrafficPolicy {
        TrafficPolicy {
            load_balancer: Some(lb),
            connection_pool: max.map(pool),
            ..Default::default()
        }
    }

    #[test]
    fn port_level_replaces_whole_blocks_with_defaults() {
        let mut top = lb_pool(LoadBalancer::RoundRobin, Some(5));
        top.port_level = vec![(9080, lb_pool(LoadBalancer::Random, None))];
        let on_port = ClusterPolicy::resolve(Some(&top), None, 9080);
        assert_eq!(on_port.load_balancer, Some(LoadBalancer::Random));
        // The top-level pool is not inherited by the port-level entry.
        assert_eq!(on_port.connection_pool, None);
        let other = ClusterPolicy::resolve(Some(&top), None, 80);
        assert_eq!(other.load_balancer, Some(LoadBalancer::RoundRobin));
        assert_eq!(other.connection_pool, Some(pool(5)));
    }

    #[test]
    fn subset_blocks_replace_parent_blocks_and_inherit_the_rest() {
        let top = lb_pool(LoadBalancer::RoundRobin, Some(5));
        let sub = TrafficPolicy {
            connection_pool: Some(pool(1)),
            ..Default::default()
        };
        let p = ClusterPolicy::resolve(Some(&top), Some(&sub), 80);
        assert_eq!(p.load_balancer, Some(LoadBalancer::RoundRobin));
        assert_eq!(p.connection_pool, Some(pool(1)));
    }

    fn hashed(key: HashKey) -> LoadBalancer {
        LoadBalancer::ConsistentHash(crate::policy::ConsistentHash {
            key,
            algorithm: crate::policy::HashAlgorithm::RingHash {
                minimum_ring_size: 1024,
            },
        })
    }

    #[test]
    fn route_hash_precedence_is_istios() {
        let header = |h: &str| HashKey::Header(h.into());
        let mut top = lb_pool(hashed(header("top")), None);
        top.port_level = vec![(80, lb_pool(hashed(header("top-80")), None))];
        let mut sub = lb_pool(hashed(header("sub")), None);
        // Port-level entries count only with an explicit destination port.
        assert_eq!(route_hash_key(Some(&top), None, None), Some(header("top")));
        assert_eq!(
            route_hash_key(Some(&top), None, Some(80)),
            Some(header("top-80"))
        );
        assert_eq!(
            route_hash_key(Some(&top), None, Some(81)),
            Some(header("top"))
        );
        assert_eq!(
            route_hash_key(Some(&top), Some(&sub), Some(80)),
            Some(header("sub"))
        );
        sub.port_level = vec![(80, lb_pool(hashed(header("sub-80")), None))];
        assert_eq!(
            route_hash_key(Some(&top), Some(&sub), Some(80)),
            Some(header("sub-80"))
        );
        assert_eq!(
            route_hash_key(Some(&top), Some(&sub), None),
            Some(header("sub"))
        );
        // A subset with a simple balancer does not hide the rule's hash.
        let simple = lb_pool(LoadBalancer::RoundRobin, None);
        assert_eq!(
            route_hash_key(Some(&top), Some(&simple), None),
            Some(header("top"))
        );
        assert_eq!(route_hash_key(None, Some(&simple), Some(80)), None);
    }

    #[test]
    fn subset_port_level_entry_replaces_everything() {
        let top = lb_pool(LoadBalancer::RoundRobin, Some(5));
        let sub = TrafficPolicy {
            port_level: vec![(80, lb_pool(LoadBalancer::Random, None))],
            ..Default::default()
        };
        let p = ClusterPolicy::resolve(Some(&top), Some(&sub), 80);
        assert_eq!(p.load_balancer, Some(LoadBalancer::Random));
        assert_eq!(p.connection_pool, None);
        // On another port the subset sets nothing: the parent's blocks hold.
        let q = ClusterPolicy::resolve(Some(&top), Some(&sub), 81);
        assert_eq!(q.connection_pool, Some(pool(5)));
    }

    fn tls(sni: &str) -> ClientTls {
        ClientTls {
            mode: crate::policy::TlsMode::Simple,
            client_certificate: None,
            private_key: None,
            ca_certificates: None,
            ca_crl: None,
            sni: Some(sni.to_string()),
            subject_alt_names: Vec::new(),
            insecure_skip_verify: false,
        }
    }

    fn with_tls(sni: Option<&str>) -> TrafficPolicy {
        TrafficPolicy {
            tls: sni.map(tls),
            ..Default::default()
        }
    }

    fn sni(p: &ClusterPolicy) -> Option<&str> {
        p.tls.as_ref().and_then(|t| t.sni.as_deref())
    }

    /// A port-level entry replaces `tls` as a whole: one without `tls` means plaintext on that
    /// port, not the top-level block.
    #[test]
    fn port_level_replaces_tls_even_when_it_has_none() {
        let mut top = with_tls(Some("top.example"));
        top.port_level = vec![
            (9080, with_tls(Some("port.example"))),
            (9081, lb_pool(LoadBalancer::Random, None)),
        ];
        let resolve = |port| ClusterPolicy::resolve(Some(&top), None, port);
        assert_eq!(sni(&resolve(9080)), Some("port.example"));
        assert_eq!(resolve(9081).tls, None);
        assert_eq!(sni(&resolve(80)), Some("top.example"));
    }

    /// A subset's own `tls` replaces the parent's; a subset without one inherits it; a subset's
    /// port-level entry replaces it even without `tls`.
    #[test]
    fn subset_tls_replaces_inherits_or_is_reset_by_a_port_level_entry() {
        let mut top = with_tls(Some("top.example"));
        top.port_level = vec![(9080, with_tls(Some("port.example")))];
        let own = with_tls(Some("own.example"));
        let inherits = lb_pool(LoadBalancer::Random, Some(1));
        let port_without_tls = TrafficPolicy {
            tls: Some(tls("subset-top.example")),
            port_level: vec![(9080, lb_pool(LoadBalancer::Random, None))],
            ..Default::default()
        };
        let resolve =
            |sub: &TrafficPolicy, port| ClusterPolicy::resolve(Some(&top), Some(sub), port);
        assert_eq!(sni(&resolve(&own, 9080)), Some("own.example"));
        assert_eq!(sni(&resolve(&own, 80)), Some("own.example"));
        assert_eq!(sni(&resolve(&inherits, 9080)), Some("port.example"));
        assert_eq!(sni(&resolve(&inherits, 80)), Some("top.example"));
        assert_eq!(resolve(&port_without_tls, 9080).tls, None);
        assert_eq!(
            sni(&resolve(&port_without_tls, 80)),
            Some("subset-top.example")
        );
        // No rule-level policy at all: the subset's block alone.
        assert_eq!(
            sni(&ClusterPolicy::resolve(None, Some(&own), 9080)),
            Some("own.example")
        );
    }
}
