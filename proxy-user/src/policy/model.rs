//! The validated, immutable config model (a `Snapshot`).
//!
//! Everything here has already been converted from the wire types (`crate::wire`) and checked: hosts are
//! lower-case FQDNs, regexes are compiled, weights are validated. The request path reads these values and
//! never re-validates. Field names follow Istio's so a user can grep from YAML to code.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

/// Cluster DNS domain used to expand short names (`reviews` -> `reviews.<ns>.svc.cluster.local`).
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Where a resource came from, for error messages and tie-breaking ("oldest wins").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// `kind` as written in the YAML, e.g. `VirtualService`.
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// File the resource was read from (absent for API-server sources).
    pub file: Option<String>,
    /// 1-based line of the document's first line in `file`.
    pub line: Option<usize>,
    /// `metadata.creationTimestamp` as RFC 3339, if given; else the load order breaks ties.
    pub creation_timestamp: Option<String>,
    /// Position in load order (file name order, then document order).
    pub order: usize,
}

impl Meta {
    /// `kind namespace/name`, the way errors name a resource.
    pub fn display_name(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// Label set (`metadata.labels`, selectors).
pub type Labels = BTreeMap<String, String>;

/// True if every key/value of `selector` is present in `labels` (an empty selector selects all).
pub fn selector_matches(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Keel's equivalent of Istio's MeshConfig (the parts a node proxy needs).
#[derive(Debug, Clone, PartialEq)]
pub struct MeshConfig {
    /// `outboundTrafficPolicy.mode`; default `ALLOW_ANY`.
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    /// Route timeout applied when a route sets none. `None` = disabled (current Istio);
    /// the seed tutorials' behaviour is 15 s.
    pub default_http_timeout: Option<Duration>,
    /// Append `-shadow` to the host of mirrored requests (Envoy's historic behaviour).
    pub mirror_shadow_suffix: bool,
    /// Namespace whose resources apply mesh-wide (Istio's `rootNamespace`); default `istio-system`.
    pub root_namespace: String,
    /// Give up sniffing the protocol of an auto-detect port after this long and treat it as TCP.
    pub protocol_detection_timeout: Duration,
    /// `accessLogFile`: where access log lines go; `None` = off (Istio's default).
    pub access_log_file: Option<String>,
    /// `accessLogEncoding`; default TEXT.
    pub access_log_encoding: crate::metrics::access_log::Encoding,
    /// `accessLogFormat` (validated: only supported command operators); `None` = Istio's default.
    pub access_log_format: Option<String>,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            outbound_traffic_policy: OutboundTrafficPolicy::AllowAny,
            default_http_timeout: Some(Duration::from_secs(15)),
            mirror_shadow_suffix: true,
            root_namespace: "istio-system".to_string(),
            protocol_detection_timeout: Duration::from_millis(100),
            access_log_file: None,
            access_log_encoding: crate::metrics::access_log::Encoding::Text,
            access_log_format: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundTrafficPolicy {
    AllowAny,
    RegistryOnly,
}

/// The port protocol as Istio decides it (`appProtocol`, else the port-name prefix, else sniffed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    GrpcWeb,
    Https,
    Tls,
    Tcp,
    Mongo,
    Redis,
    Mysql,
    Udp,
    /// Not declared: sniff HTTP/1, HTTP/2 prior knowledge, else opaque TCP.
    Auto,
}

impl Protocol {
    /// Istio's rule: `appProtocol` wins, else the port name up to the first `-`, else auto
    /// (well-known TCP ports excepted).
    pub fn from_port(app_protocol: Option<&str>, name: Option<&str>, port: u16) -> Protocol {
        if let Some(p) = app_protocol.and_then(Self::parse) {
            return p;
        }
        if let Some(p) = name
            .map(|n| n.split('-').next().unwrap_or(n))
            .and_then(Self::parse)
        {
            return p;
        }
        match port {
            25 | 53 | 3306 | 27017 => Protocol::Tcp,
            _ => Protocol::Auto,
        }
    }

    fn parse(s: &str) -> Option<Protocol> {
        Some(match s.to_ascii_lowercase().as_str() {
            "http" | "kubernetes.io/ws" => Protocol::Http,
            "http2" | "kubernetes.io/h2c" => Protocol::Http2,
            "grpc" => Protocol::Grpc,
            "grpc-web" => Protocol::GrpcWeb,
            "https" | "kubernetes.io/wss" => Protocol::Https,
            "tls" => Protocol::Tls,
            "tcp" => Protocol::Tcp,
            "mongo" => Protocol::Mongo,
            "redis" => Protocol::Redis,
            "mysql" => Protocol::Mysql,
            "udp" => Protocol::Udp,
            _ => return None,
        })
    }

    /// Ports whose traffic goes through the `http` routes.
    pub fn is_http(self) -> bool {
        matches!(
            self,
            Protocol::Http | Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb
        )
    }

    /// Upstream speaks HTTP/2 (prior knowledge) on this port.
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }
}

/// Index of a service in `Snapshot::services`.
pub type ServiceId = usize;
/// Index of a pod in `Snapshot::pods`.
pub type PodId = usize;

/// A Kubernetes Service (later also ServiceEntry hosts) as the mesh sees it.
#[derive(Debug, Clone)]
pub struct Service {
    pub meta: Meta,
    /// Lower-case FQDN, e.g. `reviews.default.svc.cluster.local`.
    pub hostname: String,
    /// Cluster IPs (`spec.clusterIP` and `spec.clusterIPs`); empty for headless services.
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.ipFamilies`, else the families of `cluster_ips`, primary first; empty when neither
    /// says (any family). Endpoints are pod addresses of these families, one per pod.
    pub ip_families: Vec<IpFamily>,
    pub ports: Vec<ServicePort>,
    /// `spec.selector`; `None` means endpoints are not derived from pods.
    pub selector: Option<Labels>,
}

/// An IP family, as a Service's `spec.ipFamilies[]` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum IpFamily {
    /// `IPv4`.
    #[serde(rename = "IPv4")]
    V4,
    /// `IPv6`.
    #[serde(rename = "IPv6")]
    V6,
}

impl IpFamily {
    /// The family of `ip`; a v4-mapped IPv6 address is IPv4 (that is what it carries).
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }
}

/// The address a pod with `pod_ips` (in `status.podIPs` order) has as an endpoint of a Service of
/// `families`: the pod's first address of the primary family, else of the secondary one; `None`
/// when it has neither (Kubernetes' EndpointSlice controller lists a pod only in the slices of the
/// Service's families). No families: the pod's first address. One endpoint per pod, never one per
/// address, so a dual-stack pod weighs what a single-stack one does in load balancing, outlier
/// detection and the circuit breakers (Istio's dual-stack endpoints are likewise one per pod).
pub fn endpoint_ip(pod_ips: &[IpAddr], families: &[IpFamily]) -> Option<IpAddr> {
    if families.is_empty() {
        return pod_ips.first().copied();
    }
    families
        .iter()
        .find_map(|f| pod_ips.iter().copied().find(|ip| IpFamily::of(*ip) == *f))
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    pub target_port: TargetPort,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    /// A named container port, resolved per pod.
    Name(String),
}

/// Node label giving the region of a workload (Kubernetes well-known label).
pub const LABEL_REGION: &str = "topology.kubernetes.io/region";
/// Node label giving the zone of a workload (Kubernetes well-known label).
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
/// Node label giving the subzone of a workload (Istio's).
pub const LABEL_SUBZONE: &str = "topology.istio.io/subzone";
/// Pre-1.17 Kubernetes spellings of the region and zone labels, read when the current ones are absent.
const LEGACY_REGION: &str = "failure-domain.beta.kubernetes.io/region";
const LEGACY_ZONE: &str = "failure-domain.beta.kubernetes.io/zone";
/// Pod label that overrides the node's locality, written `region.zone.subzone` (Istio's
/// `istio-locality`; label values cannot hold `/`).
pub const LABEL_ISTIO_LOCALITY: &str = "istio-locality";

/// Where a workload runs: Istio's `region/zone/subzone`. An empty part is unknown; two unknown
/// parts compare equal, as in Istio.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Locality {
    /// From `region/zone/subzone` (trailing parts may be missing).
    pub fn parse(s: &str) -> Self {
        let mut parts = s.splitn(3, '/').map(str::to_string);
        Self {
            region: parts.next().unwrap_or_default(),
            zone: parts.next().unwrap_or_default(),
            subzone: parts.next().unwrap_or_default(),
        }
    }

    /// From a node's topology labels.
    pub fn from_node_labels(labels: &Labels) -> Self {
        let get = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| labels.get(*k))
                .cloned()
                .unwrap_or_default()
        };
        Self {
            region: get(&[LABEL_REGION, LEGACY_REGION]),
            zone: get(&[LABEL_ZONE, LEGACY_ZONE]),
            subzone: get(&[LABEL_SUBZONE]),
        }
    }

    /// A pod's `istio-locality` label, if set (`region.zone.subzone`).
    pub fn from_pod_label(labels: &Labels) -> Option<Self> {
        labels
            .get(LABEL_ISTIO_LOCALITY)
            .filter(|v| !v.is_empty())
            .map(|v| Self::parse(&v.replace('.', "/")))
    }

    /// The locality as the topology labels Istio adds to workload labels (for `failoverPriority`);
    /// unknown parts are left out.
    pub fn labels(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            (LABEL_REGION, self.region.as_str()),
            (LABEL_ZONE, self.zone.as_str()),
            (LABEL_SUBZONE, self.subzone.as_str()),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
    }
}

impl std::fmt::Display for Locality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.region, self.zone, self.subzone)
    }
}

/// A Kubernetes `Node`: only its topology matters to Keel.
#[derive(Debug, Clone)]
pub struct Node {
    pub meta: Meta,
    /// From the node's `topology.*` labels.
    pub locality: Locality,
}

/// A pod known to the node (file mode: `Pod` resources; cluster mode: pods scheduled on this node).
#[derive(Debug, Clone)]
pub struct Pod {
    pub meta: Meta,
    pub labels: Labels,
    pub annotations: Labels,
    /// `status.podIP` (plus `status.podIPs`).
    pub ips: Vec<IpAddr>,
    /// Ready to receive traffic (phase Running or unset, and not marked not-ready).
    pub ready: bool,
    /// False when annotated `keel.io/capture: "false"`.
    pub capture: bool,
    /// Named container ports (`spec.containers[].ports[]`), for named `targetPort`s.
    pub container_ports: Vec<(String, u16)>,
    /// `spec.nodeName`: the node whose topology labels give the pod's locality.
    pub node_name: Option<String>,
    /// The managing controller (`metadata.ownerReferences[]` with `controller: true`, else the
    /// first owner): the pod's workload name in metrics.
    pub owner: Option<PodOwner>,
    /// `metadata.uid`: names the pod's cgroup under kubelet (`crate::pods::kubelet`).
    pub uid: Option<String>,
    /// `status.qosClass`: which kubelet QoS cgroup the pod's cgroup sits in.
    pub qos_class: Option<QosClass>,
    /// `spec.hostNetwork`: the pod shares the node's network namespace and address.
    pub host_network: bool,
    /// The pod has an Istio sidecar (annotation `sidecar.istio.io/status`, or a container or init
    /// container named `istio-proxy`); Keel leaves such pods to it.
    pub sidecar: bool,
    /// Istio's outbound capture annotations (`traffic.sidecar.istio.io/*`); `None` when the pod
    /// sets none of them (every meshed destination is captured).
    pub traffic: Option<OutboundTraffic>,
}

/// An IP range of a pod's traffic annotations, as written (host bits kept; the kernel form clears
/// them, as iptables does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpRange {
    /// The address part.
    pub addr: IpAddr,
    /// Prefix length: at most 32 for IPv4, 128 for IPv6.
    pub prefix_len: u8,
}

impl std::fmt::Display for IpRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// `traffic.sidecar.istio.io/includeOutboundIPRanges`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncludeRanges {
    /// `*` (also Istio's default when the annotation is absent): every address.
    All,
    /// Only these ranges; an empty list (the annotation set to `""`) includes no address.
    Only(Vec<IpRange>),
}

/// Which of a pod's outbound connections are captured, from Istio's sidecar annotations; applied in
/// the kernel in Istio's order (`pods::traffic`, `proxy_common::TrafficRules::decide`). Keel only
/// ever captures meshed destinations: "captured" here still needs the destination to be meshed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundTraffic {
    /// `excludeOutboundPorts`: these destination ports go direct. Sorted, no duplicates.
    pub exclude_ports: Vec<u16>,
    /// `includeOutboundPorts`: these destination ports are captured whatever the address.
    pub include_ports: Vec<u16>,
    /// `excludeOutboundIPRanges`: these destinations go direct (unless their port is included).
    pub exclude_ranges: Vec<IpRange>,
    /// `includeOutboundIPRanges` (default `*`).
    pub include_ranges: IncludeRanges,
}

/// A pod's Kubernetes quality-of-service class (`status.qosClass`), which kubelet derives from its
/// containers' requests and limits and which places its cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QosClass {
    /// Every container has equal CPU and memory requests and limits.
    Guaranteed,
    /// Some request or limit set, but not Guaranteed.
    Burstable,
    /// No requests or limits at all.
    BestEffort,
}

impl QosClass {
    /// Every class, in kubelet's order of precedence.
    pub const ALL: [QosClass; 3] = [
        QosClass::Guaranteed,
        QosClass::Burstable,
        QosClass::BestEffort,
    ];

    /// The API spelling (`Guaranteed`, `Burstable`, `BestEffort`).
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }

    /// Parses the API spelling (case-sensitive, as the API server writes it).
    pub fn parse(s: &str) -> Option<QosClass> {
        QosClass::ALL.into_iter().find(|q| q.as_str() == s)
    }
}

impl std::fmt::Display for QosClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A pod's owner, as `ownerReferences` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodOwner {
    /// `ReplicaSet`, `StatefulSet`, `DaemonSet`, `Job`, ...
    pub kind: String,
    pub name: String,
}

/// A Kubernetes `Namespace`: its labels decide whether its pods are captured in cluster mode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub name: String,
    pub labels: Labels,
}

/// A `discovery.k8s.io/v1` EndpointSlice: the endpoints of one Service as the API server publishes
/// them. A Service that any slice names gets its endpoints from its slices, not from its selector.
#[derive(Debug, Clone)]
pub struct EndpointSlice {
    pub meta: Meta,
    /// The Service it belongs to (label `kubernetes.io/service-name`, same namespace).
    pub service: String,
    /// `ports[]`: the Service port name (empty when unnamed) and the endpoint port.
    pub ports: Vec<(String, u16)>,
    pub endpoints: Vec<SliceEndpoint>,
}

/// One `endpoints[]` entry of an [`EndpointSlice`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub addresses: Vec<IpAddr>,
    /// Istio sends only healthy endpoints: `conditions.ready` unset or true, and not terminating
    /// (a terminating endpoint that still serves is draining; Istio leaves it out too).
    pub healthy: bool,
    /// `targetRef` when it names a Pod: `namespace/name`.
    pub pod: Option<String>,
}

/// One backend address of a service port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: std::net::SocketAddr,
    pub pod: PodId,
}

/// `StringMatch` with its regex compiled (RE2 full match).
#[derive(Debug, Clone)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    /// Anchored `^(?:re)$` at conversion time.
    Regex(regex::Regex),
    /// `{}`, a null `queryParams` / `withoutHeaders` entry, or `regex: "*"` in `withoutHeaders`: the
    /// header / parameter is present, any value.
    Present,
}

impl StringMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(p) => value.starts_with(p.as_str()),
            StringMatch::Regex(re) => re.is_match(value),
            StringMatch::Present => true,
        }
    }
}

/// One `HTTPMatchRequest`: all conditions must hold.
#[derive(Debug, Clone, Default)]
pub struct HttpMatch {
    pub name: Option<String>,
    pub uri: Option<StringMatch>,
    pub scheme: Option<StringMatch>,
    pub method: Option<StringMatch>,
    pub authority: Option<StringMatch>,
    /// Lower-case header names.
    pub headers: Vec<(String, StringMatch)>,
    pub without_headers: Vec<(String, StringMatch)>,
    pub query_params: Vec<(String, StringMatch)>,
    pub ignore_uri_case: bool,
    // Static predicates, evaluated per client class when routing tables are built:
    pub port: Option<u16>,
    pub source_labels: Option<Labels>,
    pub source_namespace: Option<String>,
    pub gateways: Vec<String>,
}

/// `Destination`: a service host, optional subset and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    /// Lower-case FQDN after short-name expansion in the rule's namespace.
    pub host: String,
    pub subset: Option<String>,
    pub port: Option<u16>,
}

/// `Headers` operations for requests or responses. Names are lower-case; `set`/`add` values are Envoy
/// header templates as written (`%%` is a literal `%`, `%HOSTNAME%` an operator; see
/// [`header_template`](crate::policy::header_template)), validated at conversion and compiled by
/// `l7::filters::headers`. Entries are sorted by name, as Istio emits them.
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    /// Replace every value of the header (Envoy `OVERWRITE_IF_EXISTS_OR_ADD`).
    pub set: Vec<(String, String)>,
    /// Append one more value (Envoy `APPEND_IF_EXISTS_OR_ADD`).
    pub add: Vec<(String, String)>,
    /// Remove the header (applied before `set`/`add`).
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Headers {
    pub request: HeaderOps,
    pub response: HeaderOps,
}

#[derive(Debug, Clone)]
pub struct WeightedDestination {
    pub destination: Destination,
    /// Relative weight (`w / Σw`); 0-weight entries are dropped at conversion when there are several.
    pub weight: u32,
    /// Per-destination header ops; a `("host", v)` entry in `request.set` is this destination's authority
    /// rewrite (Istio turns `:authority`/`host` set/add into `host_rewrite_literal`).
    pub headers: Headers,
}

/// `HTTPRedirect`: answered locally with `redirect_code` and a `location` (see `l7::filters::redirect`).
#[derive(Debug, Clone)]
pub struct Redirect {
    /// Replaces the whole path (Envoy `path_redirect`); the query is kept unless this has one.
    pub uri: Option<String>,
    /// Replaces the matched prefix of the path (Envoy `prefix_rewrite`, Istio 1.31 alpha); only with
    /// `uri` prefix matches, never with `uri`.
    pub prefix_rewrite: Option<String>,
    /// Replaces host and port (Envoy `host_redirect`).
    pub authority: Option<String>,
    /// Explicit port (Envoy `port_redirect`).
    pub port: Option<u16>,
    /// `derivePort` (exclusive with `port`).
    pub derive_port: Option<DerivePort>,
    /// `http` or `https`; default: the request's scheme.
    pub scheme: Option<String>,
    /// 301, 302, 303, 307 or 308 (default 301; other codes are rejected at conversion).
    pub redirect_code: u16,
}

/// `HTTPRedirect.derivePort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DerivePort {
    /// No explicit port: the scheme's default (Envoy's behaviour without `port_redirect`).
    FromProtocolDefault,
    /// The service port the request arrived on.
    FromRequestPort,
}

#[derive(Debug, Clone)]
pub struct DirectResponse {
    pub status: u16,
    pub body: Option<bytes::Bytes>,
}

#[derive(Debug, Clone)]
pub enum HttpAction {
    Route(Vec<WeightedDestination>),
    Redirect(Redirect),
    DirectResponse(DirectResponse),
    /// Root VS delegating to `namespace/name`; resolved when routing tables are built.
    Delegate {
        name: String,
        namespace: String,
    },
}

#[derive(Debug, Clone)]
pub struct Rewrite {
    pub uri: Option<String>,
    /// `uriRegexRewrite`: (compiled match, rewrite template). The match is unanchored (every match in the
    /// path is replaced); the template is already in the `regex` crate's syntax (Istio's `\1` became
    /// `${1}`, a literal `$` became `$$`), so `re.replace_all(path, template.as_str())` is the rewrite.
    pub uri_regex: Option<(regex::Regex, String)>,
    /// New authority; also carries `:authority`/`host` from the route's `headers.request.set/add`.
    pub authority: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Retries {
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    /// `retryOn` tokens, e.g. `5xx`, `connect-failure`, or numeric status codes.
    pub retry_on: Vec<String>,
    pub retry_remote_localities: bool,
    /// `backoff`: base interval of the jittered exponential back-off; `None` = Envoy's 25 ms.
    pub backoff: Option<Duration>,
    /// `retryIgnorePreviousHosts`: a retry avoids endpoints already tried. `None` = Istio's
    /// default: avoid them unless the route hashes to one endpoint (consistent hashing).
    pub retry_ignore_previous_hosts: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct FaultDelay {
    pub fixed_delay: Duration,
    /// Percentage 0..=100 of requests; `None` = never (Istio: no percentage, no fault).
    pub percentage: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct FaultAbort {
    pub http_status: Option<u16>,
    pub grpc_status: Option<String>,
    pub percentage: Option<f64>,
}

#[derive(Debug, Clone, Default)]
pub struct Fault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone)]
pub struct Mirror {
    pub destination: Destination,
    /// 0..=100; 100 when unset.
    pub percentage: f64,
}

/// `CorsPolicy` (see `l7::filters::cors`).
#[derive(Debug, Clone)]
pub struct CorsPolicy {
    /// `allowOrigins`, or the deprecated exact `allowOrigin` strings when `allowOrigins` is empty.
    pub allow_origins: Vec<StringMatch>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    /// Whole seconds (sub-second values are rejected).
    pub max_age: Option<Duration>,
    pub allow_credentials: Option<bool>,
    /// What happens to a preflight from an origin that is not allowed.
    pub unmatched_preflights: UnmatchedPreflights,
}

/// `CorsPolicy.unmatchedPreflights`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnmatchedPreflights {
    /// `UNSPECIFIED` or `FORWARD`: the preflight goes upstream like any request.
    #[default]
    Forward,
    /// `IGNORE`: answered locally (Envoy `forward_not_matching_preflights: false`).
    Ignore,
}

/// One `HTTPRoute`.
#[derive(Debug, Clone)]
pub struct HttpRoute {
    pub name: Option<String>,
    /// Empty = catch-all.
    pub matches: Vec<HttpMatch>,
    pub action: HttpAction,
    pub rewrite: Option<Rewrite>,
    /// `None` = not set on the route (mesh default applies).
    pub timeout: Option<Duration>,
    pub retries: Option<Retries>,
    pub fault: Option<Fault>,
    pub mirrors: Vec<Mirror>,
    pub cors_policy: Option<CorsPolicy>,
    pub headers: Headers,
    /// The rule lists several destinations as written (before weight-0 entries were dropped): Envoy
    /// then applies destination-level header operations before route-level ones.
    pub weighted: bool,
}

/// `L4MatchAttributes` (TCP) / `TLSMatchAttributes` share these.
#[derive(Debug, Clone, Default)]
pub struct L4Match {
    pub destination_subnets: Vec<String>,
    pub port: Option<u16>,
    pub source_labels: Option<Labels>,
    pub source_namespace: Option<String>,
    pub gateways: Vec<String>,
    /// TLS only.
    pub sni_hosts: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct L4Route {
    pub matches: Vec<L4Match>,
    pub route: Vec<WeightedDestination>,
}

#[derive(Debug, Clone)]
pub struct VirtualService {
    pub meta: Meta,
    /// Lower-case FQDNs or wildcards (`*.foo.com`); empty for delegates.
    pub hosts: Vec<String>,
    /// Empty = `["mesh"]`.
    pub gateways: Vec<String>,
    pub http: Vec<HttpRoute>,
    pub tcp: Vec<L4Route>,
    pub tls: Vec<L4Route>,
    /// Empty = exported everywhere (`*`).
    pub export_to: Vec<String>,
}

impl VirtualService {
    /// Applies to sidecars (and so to Keel's node proxy): `gateways` empty or containing `mesh`.
    pub fn applies_to_mesh(&self) -> bool {
        self.gateways.is_empty() || self.gateways.iter().any(|g| g == "mesh")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum LoadBalancer {
    /// Istio's default.
    LeastRequest,
    RoundRobin,
    Random,
    Passthrough,
    /// `consistentHash`: sticky sessions.
    ConsistentHash(ConsistentHash),
}

/// What a `consistentHash` policy hashes (one per policy).
#[derive(Debug, Clone, PartialEq)]
pub enum HashKey {
    /// `httpHeaderName`: the header's values.
    Header(String),
    /// `httpCookie`: the cookie's value; absent and `ttl` set: Keel issues one.
    Cookie {
        name: String,
        /// `Path` of an issued cookie.
        path: Option<String>,
        /// `Max-Age` of an issued cookie (0 = session cookie); `None` = never issue one.
        ttl: Option<Duration>,
        /// Extra attributes of an issued cookie: `(name, value)`, value empty = bare name.
        attributes: Vec<(String, String)>,
    },
    /// `useSourceIp`: the client pod's IP address.
    SourceIp,
    /// `httpQueryParameterName`: the parameter's first value.
    QueryParameter(String),
}

/// Which consistent-hash structure a cluster builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgorithm {
    /// `ringHash` (also when neither is set): at least `minimum_ring_size` points (default 1024).
    RingHash { minimum_ring_size: u64 },
    /// `maglev`: a lookup table of `table_size` slots (a prime).
    Maglev { table_size: u64 },
}

/// `consistentHash`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsistentHash {
    pub key: HashKey,
    pub algorithm: HashAlgorithm,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConnectionPool {
    /// `tcp.maxConnections`; `None` = unlimited.
    pub tcp_max_connections: Option<u32>,
    /// `tcp.connectTimeout`; `None` = the mesh default, 10 s.
    pub tcp_connect_timeout: Option<Duration>,
    /// `tcp.tcpKeepalive`; `None` = SO_KEEPALIVE off.
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// `tcp.maxConnectionDuration`; `None` = unbounded.
    pub max_connection_duration: Option<Duration>,
    /// `tcp.idleTimeout` (TCP relays); `None` = 1 h, zero = disabled.
    pub tcp_idle_timeout: Option<Duration>,
    /// `http.http1MaxPendingRequests`; `None` = unlimited.
    pub http1_max_pending_requests: Option<u32>,
    /// `http.http2MaxRequests`; `None` = unlimited.
    pub http2_max_requests: Option<u32>,
    /// `http.maxRequestsPerConnection`; `None` = unlimited.
    pub max_requests_per_connection: Option<u32>,
    /// `http.maxRetries`; `None` = unlimited.
    pub max_retries: Option<u32>,
    /// HTTP idle timeout: `http.idleTimeout`, else `tcp.idleTimeout`; `None` = 1 h, zero = disabled.
    pub idle_timeout: Option<Duration>,
    /// `http.h2UpgradePolicy`.
    pub h2_upgrade_policy: H2UpgradePolicy,
    /// `http.useClientProtocol`.
    pub use_client_protocol: bool,
    /// `http.maxConcurrentStreams`: streams per HTTP/2 connection; `None` = unlimited.
    pub max_concurrent_streams: Option<u32>,
    /// `http.http2KeepAlive`: PING interval and the time to wait for its answer.
    pub http2_keep_alive: Option<Http2KeepAlive>,
}

/// `connectionPool.tcp.tcpKeepalive`: unset fields keep the OS defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpKeepalive {
    /// Unanswered probes before the connection is dropped.
    pub probes: Option<u32>,
    /// Idle time before the first probe.
    pub time: Option<Duration>,
    /// Time between probes.
    pub interval: Option<Duration>,
}

/// `connectionPool.http.h2UpgradePolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum H2UpgradePolicy {
    /// The mesh default (`DO_NOT_UPGRADE`).
    #[default]
    Default,
    /// Never upgrade.
    DoNotUpgrade,
    /// HTTP/1.1 ports go upstream as HTTP/2 (h2c).
    Upgrade,
}

/// `connectionPool.http.http2KeepAlive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2KeepAlive {
    /// Time between PINGs.
    pub interval: Duration,
    /// Time to wait for a PING's answer before closing the connection.
    pub timeout: Duration,
}

/// `trafficPolicy.retryBudget`: concurrent retries allowed as a share of active requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    /// Percent of active plus pending requests that may be retries (default 20).
    pub percent: f64,
    /// Concurrent retries always allowed (default 3).
    pub min_retry_concurrency: u32,
}

/// `outlierDetection` as Istio hands it to Envoy: defaults filled in and explicit `0`s resolved the way
/// istiod resolves them, so the detector (`upstream::outlier`) needs no Istio knowledge.
///
/// The deprecated `consecutiveErrors` has no field: istiod ignores it (validation warning only), so Keel
/// does too.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierDetection {
    /// `consecutive5xxErrors`: 5xx responses (and, unless split, local-origin failures) in a row that
    /// eject a host. Unset = 5 (Envoy's default); `None` = explicit `0`, the check is off.
    pub consecutive_5xx_errors: Option<u32>,
    /// `consecutiveGatewayErrors` as written: `None` = unset, then Envoy still *detects* 5 gateway
    /// errors in a row (stats) but never ejects for them; `Some(0)` = never detected; `Some(n)` = eject
    /// after n.
    pub consecutive_gateway_errors: Option<u32>,
    /// `splitExternalLocalOriginErrors`: count local-origin failures (connect failure, reset,
    /// timeout) on their own counter instead of as 5xx/gateway errors.
    pub split_external_local_origin_errors: bool,
    /// `consecutiveLocalOriginFailures` in effect: `Some(n)` only when split (unset or `0` = Envoy's
    /// default 5, enforced); `None` without split.
    pub consecutive_local_origin_failures: Option<u32>,
    /// `outlierDetectionHttpErrorCodes`: when non-empty, exactly these statuses count as errors
    /// (instead of 5xx).
    pub http_error_codes: Vec<u16>,
    /// `interval`: the sweep period (default 10 s); un-ejection happens only at sweeps.
    pub interval: Duration,
    /// `baseEjectionTime` (default 30 s): ejection time is this × the host's ejection count, capped
    /// at max(300 s, baseEjectionTime).
    pub base_ejection_time: Duration,
    /// `maxEjectionPercent` (default 10; `0` also means 10, as istiod only sets non-zero values).
    pub max_ejection_percent: u32,
    /// `minHealthPercent`: panic threshold in percent of healthy hosts (default 0 = never panic).
    pub min_health_percent: u32,
}

/// `loadBalancer.localityLbSetting` (validated: `distribute` and `failover` are exclusive, weights
/// sum to 100).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LocalityLbSetting {
    /// `enabled` (unset = true); `false` turns locality load balancing off for the cluster.
    pub enabled: bool,
    /// `distribute[]`: from a client locality pattern, weights per endpoint locality pattern.
    pub distribute: Vec<LocalityDistribute>,
    /// `failover[]`: `(from region, to region)`.
    pub failover: Vec<(String, String)>,
    /// `failoverPriority[]`: ordered labels, each `key` or `key=value`.
    pub failover_priority: Vec<String>,
}

impl LocalityLbSetting {
    /// Istio's mesh default (`localityLbSetting: {enabled: true}`), used when a cluster's
    /// DestinationRule sets none.
    pub fn mesh_default() -> Self {
        Self {
            enabled: true,
            ..Default::default()
        }
    }
}

/// One `distribute` entry: localities are patterns `region/zone/subzone`, `*` ending one.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LocalityDistribute {
    pub from: String,
    /// Endpoint locality pattern -> weight (1..100, summing to 100).
    pub to: Vec<(String, u32)>,
}

/// `loadBalancer.warmup` (or deprecated `warmupDurationSecs`): slow start for new endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct Warmup {
    /// How long after an endpoint appears its weight ramps up.
    pub duration: Duration,
    /// The least share of its weight a new endpoint gets, in percent (default 10).
    pub minimum_percent: f64,
    /// Curve of the ramp (default 1.0 = linear; > 1 ramps faster early).
    pub aggression: f64,
}

impl Warmup {
    /// Defaults Istio gives `minimumPercent` and `aggression`.
    pub const DEFAULT_MINIMUM_PERCENT: f64 = 10.0;
    pub const DEFAULT_AGGRESSION: f64 = 1.0;
}

impl Default for OutlierDetection {
    /// The values Envoy applies when the block is present with no field set.
    fn default() -> Self {
        Self {
            consecutive_5xx_errors: Some(5),
            consecutive_gateway_errors: None,
            split_external_local_origin_errors: false,
            consecutive_local_origin_failures: None,
            http_error_codes: Vec::new(),
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 10,
            min_health_percent: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrafficPolicy {
    pub load_balancer: Option<LoadBalancer>,
    /// `loadBalancer.localityLbSetting` (part of the `loadBalancer` block).
    pub locality_lb_setting: Option<LocalityLbSetting>,
    /// `loadBalancer.warmup` / `warmupDurationSecs` (part of the `loadBalancer` block).
    pub warmup: Option<Warmup>,
    pub connection_pool: Option<ConnectionPool>,
    pub outlier_detection: Option<OutlierDetection>,
    /// `retryBudget` (top level and subsets only).
    pub retry_budget: Option<RetryBudget>,
    /// `tls`: how connections to the cluster's endpoints are secured (`None` = plaintext, as `DISABLE`).
    pub tls: Option<ClientTls>,
    /// `portLevelSettings`: port -> policy replacing whole blocks for that port.
    pub port_level: Vec<(u16, TrafficPolicy)>,
}

/// `trafficPolicy.tls.mode` values Keel applies (`ISTIO_MUTUAL` is rejected at conversion).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plaintext (also the meaning of an absent `tls`).
    Disable,
    /// TLS origination, server verified.
    Simple,
    /// TLS origination presenting a client certificate.
    Mutual,
}

/// A file named in config, read and parsed when the config was converted.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedFile<T> {
    /// The path as resolved (absolute, or joined to the config file's directory).
    pub path: String,
    /// What it held.
    pub content: T,
}

/// `ClientTLSSettings`, with its files loaded. Field names follow Istio's.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientTls {
    pub mode: TlsMode,
    /// `clientCertificate`: the chain presented in `MUTUAL` mode (leaf first).
    pub client_certificate: Option<LoadedFile<Vec<CertificateDer<'static>>>>,
    /// `privateKey` for `clientCertificate`.
    pub private_key: Option<LoadedFile<Arc<PrivateKeyDer<'static>>>>,
    /// `caCertificates`: the roots trusted for the server; `None` = the OS trust store.
    pub ca_certificates: Option<LoadedFile<Vec<CertificateDer<'static>>>>,
    /// `caCrl`: revoked server certificates.
    pub ca_crl: Option<LoadedFile<Vec<CertificateRevocationListDer<'static>>>>,
    /// `sni`; `None` = the request's authority host (Istio's auto SNI).
    pub sni: Option<String>,
    /// `subjectAltNames`: the server certificate must carry one of these (DNS names or IPs).
    pub subject_alt_names: Vec<String>,
    /// `insecureSkipVerify`: no server verification at all.
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Clone)]
pub struct Subset {
    pub name: String,
    pub labels: Labels,
    pub traffic_policy: Option<TrafficPolicy>,
}

#[derive(Debug, Clone)]
pub struct DestinationRule {
    pub meta: Meta,
    /// Lower-case FQDN or wildcard.
    pub host: String,
    pub traffic_policy: Option<TrafficPolicy>,
    pub subsets: Vec<Subset>,
    pub export_to: Vec<String>,
    /// Selects client pods; `None` = all.
    pub workload_selector: Option<Labels>,
}

impl DestinationRule {
    pub fn subset(&self, name: &str) -> Option<&Subset> {
        self.subsets.iter().find(|s| s.name == name)
    }
}

/// One validated, immutable view of the whole config. Built once per change, shared with `Arc`.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub mesh: MeshConfig,
    pub services: Vec<Arc<Service>>,
    pub pods: Vec<Arc<Pod>>,
    /// Kubernetes `Node`s (their topology).
    pub nodes: Vec<Node>,
    /// Node name -> index into `nodes`.
    pub node_by_name: HashMap<String, usize>,
    pub virtual_services: Vec<Arc<VirtualService>>,
    pub destination_rules: Vec<Arc<DestinationRule>>,
    /// (cluster IP, service port) -> (service, index into `ports`).
    pub service_by_vip: HashMap<(IpAddr, u16), (ServiceId, usize)>,
    /// FQDN -> service.
    pub service_by_host: HashMap<String, ServiceId>,
    /// `namespace/name` -> pod.
    pub pod_by_name: HashMap<String, PodId>,
    /// ServiceEntries: registry hosts for routing, and (exact addresses) meshed destinations.
    pub service_entries: Vec<ServiceEntry>,
    /// Sidecars: per-client egress imports and outbound traffic policy (see `routing::scope`).
    pub sidecars: Vec<Sidecar>,
    /// Gateways (validated; Keel only uses them to check VirtualService references).
    pub gateways: Vec<Gateway>,
    /// Namespaces by name.
    pub namespaces: HashMap<String, NamespaceInfo>,
    /// EndpointSlices, in load order.
    pub endpoint_slices: Vec<EndpointSlice>,
    /// `namespace/service` -> indexes into `endpoint_slices`.
    pub slices_by_service: HashMap<String, Vec<usize>>,
}

/// Namespace label that decides what the kernel does with a pod's meshed connects while no keel
/// serves (crash, OOM kill, SIGSTOP): `closed` refuses them at once; anything else, or no label,
/// lets them go direct (fail open).
pub const FAIL_MODE_LABEL: &str = "keel.io/fail-mode";

impl Snapshot {
    /// Whether `pod`'s namespace is labelled [`FAIL_MODE_LABEL`]`=closed`.
    pub fn fail_closed(&self, pod: PodId) -> bool {
        self.pods
            .get(pod)
            .and_then(|p| self.namespaces.get(&p.meta.namespace))
            .and_then(|ns| ns.labels.get(FAIL_MODE_LABEL))
            .is_some_and(|mode| mode == "closed")
    }

    /// The address:port pairs the kernel must redirect: every cluster IP x service port (TCP), and
    /// every exact ServiceEntry address x entry port ([`Snapshot::service_entry_destinations`]).
    pub fn meshed_destinations(&self) -> Vec<std::net::SocketAddr> {
        let mut out: Vec<_> = self
            .service_by_vip
            .keys()
            .map(|(ip, port)| std::net::SocketAddr::new(*ip, *port))
            .chain(
                self.service_entry_destinations()
                    .into_iter()
                    .map(|d| d.addr),
            )
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// ServiceEntry `addresses` x `ports` the kernel can capture, in precedence order (entries oldest
    /// first, then as written).
    ///
    /// The kernel's meshed set is an exact `(ip, port)` map, so only single addresses (`10.0.0.1`,
    /// `10.0.0.1/32`, `fd00::1/128`) are capturable; wider CIDRs are left out (see
    /// [`service_entry_cidr`]; conversion warns about them). Left out as well: UDP ports (the kernel
    /// redirects TCP only), an address:port a Kubernetes Service already owns (the Service wins), and
    /// entries whose hosts are all Kubernetes Service hosts (such an entry only decorates the Service,
    /// §3.1). Several entries may list the same address:port: all are returned, the router picks per
    /// client the first one visible to it.
    pub fn service_entry_destinations(&self) -> Vec<ServiceEntryDestination> {
        let mut entries: Vec<usize> = (0..self.service_entries.len()).collect();
        entries.sort_by_key(|&i| {
            let m = &self.service_entries[i].meta;
            (
                m.creation_timestamp.is_none(),
                m.creation_timestamp.clone(),
                m.order,
            )
        });
        let mut out = Vec::new();
        for entry in entries {
            let se = &self.service_entries[entry];
            if se
                .hosts
                .iter()
                .all(|h| self.service_by_host.contains_key(h))
            {
                continue;
            }
            for ip in se.addresses.iter().filter_map(|a| exact_address(a)) {
                for (port_index, port) in se.ports.iter().enumerate() {
                    if port.protocol == Protocol::Udp
                        || self.service_by_vip.contains_key(&(ip, port.number))
                    {
                        continue;
                    }
                    out.push(ServiceEntryDestination {
                        addr: std::net::SocketAddr::new(ip, port.number),
                        entry,
                        port_index,
                    });
                }
            }
        }
        out
    }

    /// The locality of `node` (unknown node: unknown locality).
    pub fn node_locality(&self, node: &str) -> Locality {
        self.node_by_name
            .get(node)
            .and_then(|&i| self.nodes.get(i))
            .map(|n| n.locality.clone())
            .unwrap_or_default()
    }

    /// A pod's locality as Istio derives it: its `istio-locality` label, else its node's topology
    /// labels; a pod without `spec.nodeName` is taken to run on `default_node` (Keel's own node,
    /// for client pods written without one).
    pub fn pod_locality(&self, pod: &Pod, default_node: Option<&str>) -> Locality {
        if let Some(l) = Locality::from_pod_label(&pod.labels) {
            return l;
        }
        pod.node_name
            .as_deref()
            .or(default_node)
            .map(|n| self.node_locality(n))
            .unwrap_or_default()
    }

    /// Ready endpoints of `service` port `port_index` whose pods carry all `subset_labels`.
    pub fn endpoints(
        &self,
        service: ServiceId,
        port_index: usize,
        subset_labels: Option<&Labels>,
    ) -> Vec<Endpoint> {
        self.endpoints_among(service, port_index, subset_labels, 0..self.pods.len())
    }

    /// [`Snapshot::endpoints`] looked for among `candidates` only: ascending pod ids that include
    /// every pod the service (and subset) can select, e.g. from an index by label.
    pub fn endpoints_among(
        &self,
        service: ServiceId,
        port_index: usize,
        subset_labels: Option<&Labels>,
        candidates: impl IntoIterator<Item = PodId>,
    ) -> Vec<Endpoint> {
        let Some(svc) = self.services.get(service) else {
            return Vec::new();
        };
        let Some(port) = svc.ports.get(port_index) else {
            return Vec::new();
        };
        let service_key = format!("{}/{}", svc.meta.namespace, svc.meta.name);
        if let Some(slices) = self.slices_by_service.get(&service_key) {
            return self.slice_endpoints(slices, port, subset_labels, &svc.ip_families);
        }
        let Some(selector) = svc.selector.as_ref() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for pod_id in candidates {
            let Some(pod) = self.pods.get(pod_id) else {
                continue;
            };
            if !pod.ready
                || pod.meta.namespace != svc.meta.namespace
                || !selector_matches(selector, &pod.labels)
                || !subset_labels.is_none_or(|l| selector_matches(l, &pod.labels))
            {
                continue;
            }
            let target = match &port.target_port {
                TargetPort::Number(n) => Some(*n),
                TargetPort::Name(name) => pod
                    .container_ports
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, p)| *p),
            };
            let Some(target) = target else { continue };
            if let Some(ip) = endpoint_ip(&pod.ips, &svc.ip_families) {
                out.push(Endpoint {
                    addr: std::net::SocketAddr::new(ip, target),
                    pod: pod_id,
                });
            }
        }
        out
    }
}

impl Snapshot {
    /// The healthy endpoints `slices` give for `port`, whose pods carry all `subset_labels`. An
    /// endpoint whose pod is not known (yet) is left out: a pod's labels decide subsets, and its
    /// identity the metrics. A dual-stack Service has one slice per family, each listing the pod:
    /// the pod is one endpoint, at its address of the Service's primary family ([`endpoint_ip`]).
    fn slice_endpoints(
        &self,
        slices: &[usize],
        port: &ServicePort,
        subset_labels: Option<&Labels>,
        families: &[IpFamily],
    ) -> Vec<Endpoint> {
        let port_name = port.name.as_deref().unwrap_or("");
        // (pod, port, its addresses in slice order), in first-seen order.
        let mut found: Vec<(PodId, u16, Vec<IpAddr>)> = Vec::new();
        for slice in slices.iter().filter_map(|&i| self.endpoint_slices.get(i)) {
            let Some(&(_, number)) = slice.ports.iter().find(|(name, _)| name == port_name) else {
                continue;
            };
            for endpoint in slice.endpoints.iter().filter(|e| e.healthy) {
                let Some(&pod_id) = endpoint.pod.as_ref().and_then(|p| self.pod_by_name.get(p))
                else {
                    continue;
                };
                let Some(pod) = self.pods.get(pod_id) else {
                    continue;
                };
                if !subset_labels.is_none_or(|l| selector_matches(l, &pod.labels)) {
                    continue;
                }
                match found
                    .iter_mut()
                    .find(|(p, n, _)| *p == pod_id && *n == number)
                {
                    Some((_, _, ips)) => ips.extend(&endpoint.addresses),
                    None => found.push((pod_id, number, endpoint.addresses.clone())),
                }
            }
        }
        found
            .into_iter()
            .filter_map(|(pod, number, ips)| {
                endpoint_ip(&ips, families).map(|ip| Endpoint {
                    addr: std::net::SocketAddr::new(ip, number),
                    pod,
                })
            })
            .collect()
    }
}

/// One capturable ServiceEntry address:port ([`Snapshot::service_entry_destinations`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceEntryDestination {
    /// The exact address:port the kernel redirects.
    pub addr: std::net::SocketAddr,
    /// Index into `Snapshot::service_entries`.
    pub entry: usize,
    /// Index into that entry's `ports`.
    pub port_index: usize,
}

/// A ServiceEntry address that names exactly one IP (`a.b.c.d`, `a.b.c.d/32`, `x::y/128`), canonical
/// (IPv4-mapped IPv6 becomes IPv4); `None` for a wider CIDR or anything unparsable.
pub fn exact_address(address: &str) -> Option<IpAddr> {
    let (ip, len) = match address.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (address, None),
    };
    let ip: IpAddr = ip.parse().ok()?;
    let full = if ip.is_ipv4() { "32" } else { "128" };
    (len.is_none_or(|l| l == full)).then_some(ip.to_canonical())
}

/// A ServiceEntry address that is a real range (`10.0.0.0/24`): such traffic cannot be captured by the
/// kernel's exact-match map. Returns `None` for single addresses and unparsable text.
pub fn service_entry_cidr(address: &str) -> Option<&str> {
    (exact_address(address).is_none() && address.contains('/')).then_some(address)
}

/// Shared handle to the current snapshot.
pub type SharedSnapshot = Arc<Snapshot>;

// ---------------------------------------------------------------------------------------------------------
// Added with the config loader (additive). ServiceEntry and Sidecar feed the per-client routing views
// (`routing::view`); Gateway is only used to check VirtualService references.

/// `ServiceEntry.location`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeshLocation {
    /// Outside the mesh (default).
    MeshExternal,
    /// Part of the mesh.
    MeshInternal,
}

/// `ServiceEntry.resolution`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Forward to the address the client dialled (default).
    None,
    /// Use `endpoints` / `workloadSelector`.
    Static,
    /// Resolve endpoint names (or the host) and use every address.
    Dns,
    /// Resolve and use the first address only.
    DnsRoundRobin,
    /// Resolve the request's Host/SNI at request time (wildcard hosts).
    DynamicDns,
}

/// One port of a ServiceEntry.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceEntryPort {
    /// Port number.
    pub number: u16,
    /// Port name (unique within the entry).
    pub name: String,
    /// Declared protocol.
    pub protocol: Protocol,
    /// Endpoint port when different from `number`.
    pub target_port: Option<u16>,
}

/// One static endpoint (`WorkloadEntry`) of a ServiceEntry.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadEntry {
    /// IP, host name (DNS resolutions) or `unix://` path.
    pub address: String,
    /// Port name -> endpoint port.
    pub ports: BTreeMap<String, u16>,
    /// Labels (DestinationRule subsets select on these).
    pub labels: Labels,
    /// Load-balancing weight (0 = unset).
    pub weight: u32,
    /// `locality` (`region/zone/subzone`); `None` = unknown.
    pub locality: Option<Locality>,
}

/// A validated `ServiceEntry`.
#[derive(Debug, Clone)]
pub struct ServiceEntry {
    /// Where it came from.
    pub meta: Meta,
    /// Lower-case hosts, used as given (no short-name expansion), wildcards allowed.
    pub hosts: Vec<String>,
    /// VIPs or CIDRs, as written.
    pub addresses: Vec<String>,
    /// Ports.
    pub ports: Vec<ServiceEntryPort>,
    /// Mesh-internal or external.
    pub location: MeshLocation,
    /// How endpoints are found.
    pub resolution: Resolution,
    /// Static endpoints.
    pub endpoints: Vec<WorkloadEntry>,
    /// Pods selected as endpoints (exclusive with `endpoints`).
    pub workload_selector: Option<Labels>,
    /// Empty = exported everywhere.
    pub export_to: Vec<String>,
}

/// One `egress` listener of a `Sidecar`.
#[derive(Debug, Clone, PartialEq)]
pub struct SidecarEgress {
    /// Restrict to this port.
    pub port: Option<u16>,
    /// `namespace/dnsName` imports, as written (`*/*`, `./reviews.default.svc.cluster.local`, `~/*`).
    pub hosts: Vec<String>,
}

/// A validated `Sidecar` (egress scoping for the selected client pods).
#[derive(Debug, Clone)]
pub struct Sidecar {
    /// Where it came from.
    pub meta: Meta,
    /// Selected client pods in the Sidecar's namespace; `None` = the whole namespace.
    pub workload_selector: Option<Labels>,
    /// Egress listeners.
    pub egress: Vec<SidecarEgress>,
    /// Overrides the mesh `outboundTrafficPolicy` for the selected clients.
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

/// One server of a `Gateway`.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayServer {
    /// Listening port.
    pub port: u16,
    /// Port name.
    pub name: Option<String>,
    /// Declared protocol.
    pub protocol: Protocol,
    /// `namespace/dnsName` hosts.
    pub hosts: Vec<String>,
}

/// A validated `Gateway`. Keel is not a gateway; these are kept so VirtualService `gateways` references
/// can be checked.
#[derive(Debug, Clone)]
pub struct Gateway {
    /// Where it came from.
    pub meta: Meta,
    /// Gateway pod selector.
    pub selector: Labels,
    /// Servers.
    pub servers: Vec<GatewayServer>,
}
