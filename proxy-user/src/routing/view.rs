//! Per-client views (§0.1 "Crucial framing", Appendix A.1): what one class of equivalent clients sees
//! of the mesh, computed once per snapshot when the tables are built, never per request.
//!
//! Two clients are equivalent when they share a namespace and the values of every label some
//! `sourceLabels`, DestinationRule `workloadSelector` or Sidecar `workloadSelector` mentions: every
//! client-dependent decision (exportTo, Sidecar imports, static match conditions, DestinationRule
//! choice) reads only those facts, so one view serves the whole class.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::policy::{HashKey, HttpRoute, Labels, MeshLocation, OutboundTrafficPolicy, Protocol};
use crate::upstream::locality::Topology;

use super::policy::RoutePolicy;
use super::target::{Target, WeightedTargets};
use super::tls::TlsRoutes;
use super::ClientInfo;

/// The facts that decide a client's view: its namespace and the labels that matter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientClass {
    /// The client pod's namespace.
    pub namespace: String,
    /// The client's labels restricted to the keys some selector reads.
    pub labels: Labels,
}

impl ClientClass {
    /// The class of a client given the label keys that matter.
    pub fn of(namespace: &str, labels: &Labels, keys: &BTreeSet<String>) -> Self {
        Self {
            namespace: namespace.to_string(),
            labels: labels
                .iter()
                .filter(|(k, _)| keys.contains(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// The class as routing facts (label keys that do not matter are absent).
    pub fn client(&self) -> ClientInfo {
        ClientInfo {
            namespace: self.namespace.clone(),
            labels: self.labels.clone(),
        }
    }
}

/// One `http` rule of a VirtualService, compiled for one client and service port.
#[derive(Debug, Clone)]
pub struct CompiledHttpRoute {
    /// The rule (after delegation), shared by every view.
    pub spec: Arc<HttpRoute>,
    /// Index of the rule among the VirtualService's delegation-expanded `http` rules.
    pub rule: usize,
    /// What the request path does for this rule (timeout, retries, fault, ...), shared by every view.
    pub policy: Arc<RoutePolicy>,
    /// Indices into `spec.matches` of the blocks whose static conditions hold for this client.
    /// Empty means the rule has no blocks (catch-all): a rule whose blocks all fail is not compiled.
    pub blocks: Vec<usize>,
    /// The rule's destinations, resolved for this client.
    pub targets: WeightedTargets,
    /// Mirror targets with their percentage (0..=100).
    pub mirrors: Vec<(Target, f64)>,
}

/// The *logical* service port one meshed destination is for one client.
#[derive(Debug, Clone)]
pub struct ServicePortRoutes {
    /// The service's host (Kubernetes FQDN or ServiceEntry host).
    pub hostname: String,
    /// The service port.
    pub port: u16,
    /// The port's declared protocol (decides HTTP vs TCP handling and sniffing).
    pub protocol: Protocol,
    /// ServiceEntry `location` (Kubernetes Services are `MeshInternal`), for telemetry and, later,
    /// mTLS decisions.
    pub location: MeshLocation,
    /// `kind namespace/name` of the VirtualService in force for this client, if any.
    pub virtual_service: Option<String>,
    /// The VirtualService's HTTP rules for this client; `None` = the default route.
    pub http: Option<Vec<CompiledHttpRoute>>,
    /// The first `tcp` rule whose static conditions hold (port, source, `destinationSubnets` against
    /// this destination); `None` = the default route. Never set on TLS/HTTPS ports (Istio applies
    /// only `tls` rules there).
    pub tcp: Option<WeightedTargets>,
    /// On TLS/HTTPS ports, the `tls` rules for this client, routed by SNI per connection; `None` = no
    /// rule applies to the client (or not a TLS port): opaque TCP to the default route.
    pub tls: Option<TlsRoutes>,
    /// The route used when no VirtualService rule applies: the whole service, balanced.
    pub default_target: Target,
    /// The default route's consistent-hash key (the DestinationRule's, port-level first).
    pub default_hash: Option<Arc<HashKey>>,
    /// The default route's policy (mesh timeout, Istio's default retries).
    pub default_policy: Arc<RoutePolicy>,
}

impl ServicePortRoutes {
    /// Every target the routes lead to (default, rules, mirrors).
    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        let http = self.http.iter().flatten().flat_map(|r| {
            r.targets
                .targets
                .iter()
                .map(|t| &t.target)
                .chain(r.mirrors.iter().map(|(t, _)| t))
        });
        let tcp = self
            .tcp
            .iter()
            .flat_map(|t| t.targets.iter().map(|t| &t.target));
        let tls = self.tls.iter().flat_map(TlsRoutes::targets);
        std::iter::once(&self.default_target)
            .chain(http)
            .chain(tcp)
            .chain(tls)
    }
}

/// What an original destination is for a client.
#[derive(Debug, Clone, Copy)]
pub enum Outbound<'a> {
    /// A service port the client sees.
    Service(&'a ServicePortRoutes),
    /// Unknown to this client (not meshed, not exported to it, or not imported by its Sidecar)
    /// under `ALLOW_ANY`: forward to the original destination (`PassthroughCluster`).
    Passthrough { protocol: Protocol },
    /// Unknown under `REGISTRY_ONLY`: HTTP gets 502 (`block_all`), TCP is closed (`BlackHoleCluster`).
    Blocked { protocol: Protocol },
}

/// What a connection to a destination is accepted as: Envoy's listener-level facts (the port's
/// protocol, and whether it is a mesh service, passed through or blocked). A push that changes
/// them for an open connection is, in Envoy, a listener change: the connection drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Service(Protocol),
    Passthrough(Protocol),
    Blocked(Protocol),
}

impl Outbound<'_> {
    /// The listener-level facts of this destination.
    pub fn listener(&self) -> Listener {
        match *self {
            Outbound::Service(routes) => Listener::Service(routes.protocol),
            Outbound::Passthrough { protocol } => Listener::Passthrough(protocol),
            Outbound::Blocked { protocol } => Listener::Blocked(protocol),
        }
    }
}

/// Everything one class of clients sees, indexed by original destination.
#[derive(Debug)]
pub struct ClientView {
    /// Identifies the route table this view belongs to.
    pub(super) table_id: u64,
    /// The class this view serves.
    pub class: ClientClass,
    /// The class's locality (the proxy's node) and labels, for locality load balancing.
    pub topology: Arc<Topology>,
    /// `namespace/name` of the Sidecar in force, if any.
    pub sidecar: Option<String>,
    /// Mesh policy, or the Sidecar's override.
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    /// Meshed destination -> slot (shared by every view of the table).
    pub(super) index: Arc<HashMap<(IpAddr, u16), usize>>,
    /// Declared protocol per slot (shared), for traffic the client does not see.
    pub(super) protocols: Arc<Vec<Protocol>>,
    /// Per slot: the service port this client sees there, if any (shared with the next table's
    /// view of the class when nothing it depends on changed).
    pub(super) slots: Vec<Option<Arc<ServicePortRoutes>>>,
    /// Istio's `PassthroughCluster` (shared).
    pub(super) passthrough: Target,
}

impl ClientView {
    /// What `original_dst` is for this client. A destination the table does not know (it stopped
    /// being meshed after the kernel redirected the connection) is unknown traffic with a sniffed
    /// protocol.
    pub fn lookup(&self, original_dst: SocketAddr) -> Outbound<'_> {
        let key = (original_dst.ip().to_canonical(), original_dst.port());
        let slot = self.index.get(&key).copied();
        if let Some(routes) = slot
            .and_then(|s| self.slots.get(s))
            .and_then(Option::as_deref)
        {
            return Outbound::Service(routes);
        }
        let protocol = slot
            .and_then(|s| self.protocols.get(s).copied())
            .unwrap_or(Protocol::Auto);
        match self.outbound_traffic_policy {
            OutboundTrafficPolicy::AllowAny => Outbound::Passthrough { protocol },
            OutboundTrafficPolicy::RegistryOnly => Outbound::Blocked { protocol },
        }
    }

    /// The service port this client sees at each meshed destination of the table, in slot order.
    pub fn service_ports(&self) -> impl Iterator<Item = Option<&ServicePortRoutes>> {
        self.slots.iter().map(Option::as_deref)
    }

    /// Istio's `PassthroughCluster`: forward to the original destination.
    pub fn passthrough(&self) -> &Target {
        &self.passthrough
    }

    /// The id of the [`super::RouteTable`] this view was built with.
    pub fn table_id(&self) -> u64 {
        self.table_id
    }
}
