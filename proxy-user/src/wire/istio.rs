//! Istio `networking.istio.io` resources (`v1alpha3`, `v1beta1`, `v1`: the same schema).
//!
//! Field names are the CRD schemas' property names: lowerCamelCase, plus the one snake_case property the
//! schemas declare (`mirror_percent`). istiod's protobuf decoder would also read snake_case names
//! (`export_to`), but the API server rejects (or prunes) fields its schema does not declare first.
//! Every `spec` type denies unknown fields, so a typo (`subnet:` for `subset:`) is an error instead of a
//! silently ignored rule. Oneofs are plain optional fields here; `policy::validate` rejects combinations.
//! Integers are `i64` so that out-of-range values (negative weights, port 70000) reach validation and get a
//! precise message rather than a generic deserialization error. Durations stay strings
//! (see [`crate::wire::duration`]) for the same reason.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::k8s::ObjectMeta;

/// An Istio object: `apiVersion`, `kind`, `metadata`, `spec` (and an ignored `status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioObject<S> {
    /// `networking.istio.io/v1alpha3`, `v1beta1` or `v1`.
    pub api_version: String,
    /// Resource kind.
    pub kind: String,
    /// Object metadata.
    pub metadata: ObjectMeta,
    /// The resource spec.
    pub spec: S,
    /// Written by istiod; read and ignored so `kubectl get -o yaml` output loads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_yaml::Value>,
}

/// Label map (`sourceLabels`, subset `labels`, selectors).
pub type LabelMap = BTreeMap<String, String>;

// ---------------------------------------------------------------------------------------------------------
// VirtualService

/// `VirtualService.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceSpec {
    /// Destination hosts; required unless this is a delegate VS.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Gateways (`mesh` = sidecars); empty means `mesh`.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Ordered HTTP rules.
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    /// Ordered TLS (SNI) rules.
    #[serde(default)]
    pub tls: Vec<TlsRoute>,
    /// Ordered TCP rules.
    #[serde(default)]
    pub tcp: Vec<TcpRoute>,
    /// Namespaces this VS is visible to (`*`, `.`, names).
    #[serde(default)]
    pub export_to: Vec<String>,
}

/// `Destination`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    /// Service host (short name, FQDN or ServiceEntry host).
    #[serde(default)]
    pub host: Option<String>,
    /// DestinationRule subset name.
    #[serde(default)]
    pub subset: Option<String>,
    /// Service port.
    #[serde(default)]
    pub port: Option<PortSelector>,
}

/// `PortSelector`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    /// Port number.
    #[serde(default, deserialize_with = "super::num::opt_i64")]
    pub number: Option<i64>,
}

/// `HTTPRoute`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    /// Route name (access logs).
    #[serde(default)]
    pub name: Option<String>,
    /// Match blocks (ORed); absent = catch-all.
    #[serde(default, rename = "match")]
    pub match_: Vec<HttpMatchRequest>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<HttpRouteDestination>,
    /// Redirect instead of forwarding.
    #[serde(default)]
    pub redirect: Option<HttpRedirect>,
    /// Local response instead of forwarding.
    #[serde(default)]
    pub direct_response: Option<HttpDirectResponse>,
    /// Delegate to another VS.
    #[serde(default)]
    pub delegate: Option<Delegate>,
    /// Path/authority rewrite.
    #[serde(default)]
    pub rewrite: Option<HttpRewrite>,
    /// Route timeout (duration string).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Retry policy.
    #[serde(default)]
    pub retries: Option<HttpRetry>,
    /// Fault injection.
    #[serde(default)]
    pub fault: Option<HttpFaultInjection>,
    /// Single mirror destination (exclusive with `mirrors`).
    #[serde(default)]
    pub mirror: Option<Destination>,
    /// Several mirror destinations.
    #[serde(default)]
    pub mirrors: Vec<HttpMirrorPolicy>,
    /// Deprecated integer mirror percentage.
    #[serde(
        default,
        alias = "mirror_percent",
        deserialize_with = "super::num::opt_i64"
    )]
    pub mirror_percent: Option<i64>,
    /// Mirror percentage (wins over `mirror_percent`).
    #[serde(default)]
    pub mirror_percentage: Option<Percent>,
    /// CORS policy.
    #[serde(default)]
    pub cors_policy: Option<CorsPolicy>,
    /// Header manipulation.
    #[serde(default)]
    pub headers: Option<Headers>,
}

/// `Delegate`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delegate {
    /// Delegate VS name.
    #[serde(default)]
    pub name: Option<String>,
    /// Delegate VS namespace (default: the root VS's).
    #[serde(default)]
    pub namespace: Option<String>,
}

/// `Headers`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Headers {
    /// Operations on the request sent upstream.
    #[serde(default)]
    pub request: Option<HeaderOperations>,
    /// Operations on the response sent to the client.
    #[serde(default)]
    pub response: Option<HeaderOperations>,
}

/// `Headers.HeaderOperations`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOperations {
    /// Overwrite.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Append.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `TLSRoute`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsRoute {
    /// Match blocks (required).
    #[serde(default, rename = "match")]
    pub match_: Vec<TlsMatchAttributes>,
    /// Destinations.
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

/// `TCPRoute`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRoute {
    /// Match blocks; absent = catch-all.
    #[serde(default, rename = "match")]
    pub match_: Vec<L4MatchAttributes>,
    /// Destinations.
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

/// `HTTPMatchRequest`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatchRequest {
    /// Match name (appended to the route name).
    #[serde(default)]
    pub name: Option<String>,
    /// `:path` match.
    #[serde(default)]
    pub uri: Option<StringMatch>,
    /// `:scheme` match.
    #[serde(default)]
    pub scheme: Option<StringMatch>,
    /// `:method` match.
    #[serde(default)]
    pub method: Option<StringMatch>,
    /// `:authority` / `Host` match.
    #[serde(default)]
    pub authority: Option<StringMatch>,
    /// Header matches (`null` values are rejected by validation).
    #[serde(default)]
    pub headers: BTreeMap<String, Option<StringMatch>>,
    /// Service port the request was sent to.
    #[serde(default, deserialize_with = "super::num::opt_i64")]
    pub port: Option<i64>,
    /// Client workload labels.
    #[serde(default)]
    pub source_labels: Option<LabelMap>,
    /// Gateways this block applies to.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Query parameter matches.
    #[serde(default)]
    pub query_params: BTreeMap<String, Option<StringMatch>>,
    /// Case-insensitive `exact`/`prefix` URI match.
    #[serde(default)]
    pub ignore_uri_case: Option<bool>,
    /// Negated header matches.
    #[serde(default)]
    pub without_headers: BTreeMap<String, Option<StringMatch>>,
    /// Client namespace.
    #[serde(default)]
    pub source_namespace: Option<String>,
    /// Envoy route stat prefix.
    #[serde(default)]
    pub stat_prefix: Option<String>,
}

/// `HTTPRouteDestination`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteDestination {
    /// Target.
    #[serde(default)]
    pub destination: Option<Destination>,
    /// Relative weight.
    #[serde(default, deserialize_with = "super::num::opt_i64")]
    pub weight: Option<i64>,
    /// Per-destination header operations.
    #[serde(default)]
    pub headers: Option<Headers>,
}

/// `RouteDestination` (TCP/TLS).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteDestination {
    /// Target.
    #[serde(default)]
    pub destination: Option<Destination>,
    /// Relative weight.
    #[serde(default, deserialize_with = "super::num::opt_i64")]
    pub weight: Option<i64>,
}

/// `L4MatchAttributes`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4MatchAttributes {
    /// Destination IPs/CIDRs.
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    /// Service port.
    #[serde(default, deserialize_with = "super::num::opt_i64")]
    pub port: Option<i64>,
    /// Hidden in Istio's API and unused; accepted so such YAML still loads.
    #[serde(default)]
    pub source_subnet: Option<String>,
    /// Client workload labels.
    #[serde(default)]
    pub source_labels: Option<LabelMap>,
    /// Gateways.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Client namespace.
    #[serde(default)]
    pub source_namespace: Option<String>,
}

/// `TLSMatchAttributes`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsMatchAttributes {
    /// SNI values (required).
    #[serde(default)]
    pub sni_hosts: Vec<String>,
    /// Destination IPs/CIDRs.
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    /// Service port.
    #[serde(default, deserialize_with = "super::num::opt_i64")]
    pub port: Option<i64>,
    /// Client workload labels.
    #[serde(default)]
    pub source_labels: Option<LabelMap>,
    /// Gateways.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Client namespace.
    #[serde(default)]
    pub source_namespace: Option<String>,
}

/// `HTTPRedirect`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRedirect {
    /// New path.
    #[serde(default)]
    pub uri: Option<String>,
    /// New authority.
    #[serde(default)]
    pub authority: Option<String>,
    /// New port.
    #[serde(default, deserialize_with = "super::num::opt_i64")]
    pub port: Option<i64>,
    /// `FROM_PROTOCOL_DEFAULT` or `FROM_REQUEST_PORT`.
    #[serde(default)]
    pub derive_port: Option<String>,
    /// `http` or `https`.
    #[serde(default)]
    pub scheme: Option<String>,
    /// Status code (default 301).
    #[serde(default, deserialize_with = "super::num::opt_i64")]
    pub redirect_code: Option<i64>,
    /// Replace the matched prefix (Istio 1.31-alpha).
    #[serde(default)]
    pub prefix_rewrite: Option<String>,
}

/// `HTTPDirectResponse`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpDirectResponse {
    /// Status code.
    #[serde(default, deserialize_with = "super::num::opt_i64")]
    pub status: Option<i64>,
    /// Body.
    #[serde(default)]
    pub body: Option<HttpBody>,
}

/// `HTTPBody` (oneof `string` / `bytes`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpBody {
    /// Text body.
    #[serde(default)]
    pub string: Option<String>,
    /// Base64-encoded binary body.
    #[serde(default)]
    pub bytes: Option<String>,
}

/// `HTTPRewrite`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRewrite {
    /// Replacement for the matched path part.
    #[serde(default)]
    pub uri: Option<String>,
    /// New authority.
    #[serde(default)]
    pub authority: Option<String>,
    /// Regex path rewrite.
    #[serde(default)]
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// `RegexRewrite`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegexRewrite {
    /// RE2 pattern.
    #[serde(default, rename = "match")]
    pub match_: Option<String>,
    /// Replacement (`\1` capture references).
    #[serde(default)]
    pub rewrite: Option<String>,
}

/// `StringMatch`: at most one of the three; none at all means "present".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMatch {
    /// Exact value.
    #[serde(default)]
    pub exact: Option<String>,
    /// Prefix.
    #[serde(default)]
    pub prefix: Option<String>,
    /// RE2 regex, full match.
    #[serde(default)]
    pub regex: Option<String>,
}

/// `HTTPRetry`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRetry {
    /// Number of retries.
    #[serde(default, deserialize_with = "super::num::opt_i64")]
    pub attempts: Option<i64>,
    /// Per-attempt timeout.
    #[serde(default)]
    pub per_try_timeout: Option<String>,
    /// Comma-separated retry conditions.
    #[serde(default)]
    pub retry_on: Option<String>,
    /// Prefer other localities on retry.
    #[serde(default)]
    pub retry_remote_localities: Option<bool>,
    /// Avoid hosts already tried (Istio default true).
    #[serde(default)]
    pub retry_ignore_previous_hosts: Option<bool>,
    /// Base back-off interval.
    #[serde(default)]
    pub backoff: Option<String>,
}

/// `CorsPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsPolicy {
    /// Deprecated exact origins.
    #[serde(default)]
    pub allow_origin: Vec<String>,
    /// Origin matchers.
    #[serde(default)]
    pub allow_origins: Vec<StringMatch>,
    /// Allowed methods.
    #[serde(default)]
    pub allow_methods: Vec<String>,
    /// Allowed request headers.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Exposed response headers.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Preflight cache duration.
    #[serde(default)]
    pub max_age: Option<String>,
    /// `access-control-allow-credentials`.
    #[serde(default)]
    pub allow_credentials: Option<bool>,
    /// `UNSPECIFIED`, `FORWARD`, `IGNORE`.
    #[serde(default)]
    pub unmatched_preflights: Option<String>,
}

/// `HTTPFaultInjection`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpFaultInjection {
    /// Delay fault.
    #[serde(default)]
    pub delay: Option<FaultDelay>,
    /// Abort fault.
    #[serde(default)]
    pub abort: Option<FaultAbort>,
}

/// `HTTPFaultInjection.Delay`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    /// Deprecated integer percentage.
    #[serde(default, deserialize_with = "super::num::opt_i64")]
    pub percent: Option<i64>,
    /// Fixed delay.
    #[serde(default)]
    pub fixed_delay: Option<String>,
    /// Not supported by Istio.
    #[serde(default)]
    pub exponential_delay: Option<String>,
    /// Fraction of requests delayed.
    #[serde(default)]
    pub percentage: Option<Percent>,
}

/// `HTTPFaultInjection.Abort`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    /// HTTP status to return.
    #[serde(default, deserialize_with = "super::num::opt_i64")]
    pub http_status: Option<i64>,
    /// gRPC status name to return.
    #[serde(default)]
    pub grpc_status: Option<String>,
    /// Not supported by Istio.
    #[serde(default)]
    pub http2_error: Option<String>,
    /// Fraction of requests aborted.
    #[serde(default)]
    pub percentage: Option<Percent>,
}

/// `HTTPMirrorPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMirrorPolicy {
    /// Mirror target.
    #[serde(default)]
    pub destination: Option<Destination>,
    /// Fraction mirrored (default 100).
    #[serde(default)]
    pub percentage: Option<Percent>,
}

/// `Percent`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Percent {
    /// 0..=100.
    #[serde(default)]
    pub value: Option<f64>,
}

// ---------------------------------------------------------------------------------------------------------
// DestinationRule

/// `DestinationRule.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRuleSpec {
    /// Service host.
    #[serde(default)]
    pub host: Option<String>,
    /// Policy for all ports/subsets.
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
    /// Named subsets.
    #[serde(default)]
    pub subsets: Vec<Subset>,
    /// Visibility.
    #[serde(default)]
    pub export_to: Vec<String>,
    /// Client selector (`matchLabels`).
    #[serde(default)]
    pub workload_selector: Option<MatchLabelsSelector>,
}

/// `istio.type.v1beta1.WorkloadSelector` (used by DestinationRule).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchLabelsSelector {
    /// Labels the client must carry.
    #[serde(default)]
    pub match_labels: LabelMap,
}

/// `TrafficPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    /// Load balancing.
    #[serde(default)]
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection pool / circuit breaker.
    #[serde(default)]
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Outlier detection.
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    /// Upstream TLS.
    #[serde(default)]
    pub tls: Option<ClientTlsSettings>,
    /// Per-port overrides.
    #[serde(default)]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    /// HTTP CONNECT/POST tunnelling.
    #[serde(default)]
    pub tunnel: Option<TunnelSettings>,
    /// PROXY protocol towards the upstream.
    #[serde(default)]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Retry budget.
    #[serde(default)]
    pub retry_budget: Option<RetryBudget>,
}

/// `TrafficPolicy.PortTrafficPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTrafficPolicy {
    /// The port.
    #[serde(default)]
    pub port: Option<PortSelector>,
    /// Load balancing.
    #[serde(default)]
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection pool.
    #[serde(default)]
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Outlier detection.
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    /// Upstream TLS.
    #[serde(default)]
    pub tls: Option<ClientTlsSettings>,
}

/// `TrafficPolicy.TunnelSettings`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TunnelSettings {
    /// `CONNECT` or `POST`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// Tunnel proxy host.
    #[serde(default)]
    pub target_host: Option<String>,
    /// Tunnel proxy port.
    #[serde(default, deserialize_with = "super::num::opt_i64")]
    pub target_port: Option<i64>,
}

/// `TrafficPolicy.ProxyProtocol`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyProtocol {
    /// `V1` or `V2`.
    #[serde(default)]
    pub version: Option<String>,
}

/// `TrafficPolicy.RetryBudget`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    /// Percent of active requests that may be retries.
    #[serde(default)]
    pub percent: Option<f64>,
    /// Retries always allowed.
    #[serde(default, deserialize_with = "super::num::opt_i64")]
    pub min_retry_concurrency: Option<i64>,
    /// Window.
    #[serde(default)]
    pub budget_interval: Option<String>,
}

/// `Subset`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    /// Subset name (DNS-1123 label).
    #[serde(default)]
    pub name: Option<String>,
    /// Endpoint labels.
    #[serde(default)]
    pub labels: LabelMap,
    /// Subset policy (block-wise override).
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
}

/// `LoadBalancerSettings`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSettings {
    /// `UNSPECIFIED`, `LEAST_CONN`, `RANDOM`, `PASSTHROUGH`, `ROUND_ROBIN`, `LEAST_REQUEST`.
    #[serde(default)]
    pub simple: Option<String>,
    /// Consistent hashing (sticky sessions).
    #[serde(default)]
    pub consistent_hash: Option<ConsistentHashLb>,
    /// Locality weighting / failover.
    #[serde(default)]
    pub locality_lb_setting: Option<LocalityLbSetting>,
    /// Zone-aware routing (Istio 1.31-alpha).
    #[serde(default)]
    pub zone_aware_lb_setting: Option<ZoneAwareLbSetting>,
    /// Deprecated slow-start window.
    #[serde(default)]
    pub warmup_duration_secs: Option<String>,
    /// Slow start.
    #[serde(default)]
    pub warmup: Option<WarmupConfiguration>,
}

/// `ZoneAwareLoadBalancerSetting` (Istio 1.31-alpha).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneAwareLbSetting {
    /// Enable zone-aware routing.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Region failover.
    #[serde(default)]
    pub failover: Vec<LocalityFailover>,
    /// Label-based priorities.
    #[serde(default)]
    pub failover_priority: Vec<String>,
    /// Minimum cluster size for zone-aware routing.
    #[serde(default, deserialize_with = "super::num::opt_i64")]
    pub min_cluster_size: Option<i64>,
}

/// `LoadBalancerSettings.ConsistentHashLB`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHashLb {
    /// Hash a request header.
    #[serde(default)]
    pub http_header_name: Option<String>,
    /// Hash a cookie (generated when absent and `ttl` is set).
    #[serde(default)]
    pub http_cookie: Option<HttpCookie>,
    /// Hash the client IP.
    #[serde(default)]
    pub use_source_ip: Option<bool>,
    /// Hash a query parameter.
    #[serde(default)]
    pub http_query_parameter_name: Option<String>,
    /// Ring hash algorithm.
    #[serde(default)]
    pub ring_hash: Option<RingHash>,
    /// Maglev algorithm.
    #[serde(default)]
    pub maglev: Option<Maglev>,
    /// Deprecated ring size.
    #[serde(default, deserialize_with = "super::num::opt_i64")]
    pub minimum_ring_size: Option<i64>,
}

/// `ConsistentHashLB.RingHash`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RingHash {
    /// Minimum ring size (Envoy default 1024).
    #[serde(default, deserialize_with = "super::num::opt_i64")]
    pub minimum_ring_size: Option<i64>,
}

/// `ConsistentHashLB.MagLev`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Maglev {
    /// Table size (prime).
    #[serde(default, deserialize_with = "super::num::opt_i64")]
    pub table_size: Option<i64>,
}

/// `ConsistentHashLB.HTTPCookie`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpCookie {
    /// Cookie name (required).
    #[serde(default)]
    pub name: Option<String>,
    /// Cookie path.
    #[serde(default)]
    pub path: Option<String>,
    /// Lifetime of a generated cookie.
    #[serde(default)]
    pub ttl: Option<String>,
    /// Extra cookie attributes.
    #[serde(default)]
    pub attributes: Vec<CookieAttribute>,
}

/// `HTTPCookie.Attribute`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CookieAttribute {
    /// Attribute name.
    #[serde(default)]
    pub name: Option<String>,
    /// Attribute value.
    #[serde(default)]
    pub value: Option<String>,
}

/// `WarmupConfiguration`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WarmupConfiguration {
    /// Slow-start window (required).
    #[serde(default)]
    pub duration: Option<String>,
    /// Starting weight percent (default 10).
    #[serde(default)]
    pub minimum_percent: Option<f64>,
    /// Curve (default 1.0, > 0).
    #[serde(default)]
    pub aggression: Option<f64>,
}

/// `LocalityLoadBalancerSetting`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityLbSetting {
    /// Weighted distribution.
    #[serde(default)]
    pub distribute: Vec<LocalityDistribute>,
    /// Region failover.
    #[serde(default)]
    pub failover: Vec<LocalityFailover>,
    /// Label-based priorities.
    #[serde(default)]
    pub failover_priority: Vec<String>,
    /// Enable/disable locality LB.
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// `LocalityLoadBalancerSetting.Distribute`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityDistribute {
    /// Origin locality.
    #[serde(default)]
    pub from: Option<String>,
    /// Locality -> weight.
    #[serde(default)]
    pub to: BTreeMap<String, i64>,
}

/// `LocalityLoadBalancerSetting.Failover`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityFailover {
    /// Origin region.
    #[serde(default)]
    pub from: Option<String>,
    /// Failover region.
    #[serde(default)]
    pub to: Option<String>,
}

/// `ConnectionPoolSettings`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPoolSettings {
    /// TCP limits.
    #[serde(default)]
    pub tcp: Option<TcpSettings>,
    /// HTTP limits.
    #[serde(default)]
    pub http: Option<HttpSettings>,
}

/// `ConnectionPoolSettings.TCPSettings`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSettings {
    /// Max upstream connections.
    #[serde(default, deserialize_with = "super::num::opt_i64")]
    pub max_connections: Option<i64>,
    /// Connect timeout.
    #[serde(default)]
    pub connect_timeout: Option<String>,
    /// TCP keepalive.
    #[serde(default)]
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Max connection age.
    #[serde(default)]
    pub max_connection_duration: Option<String>,
    /// Idle timeout.
    #[serde(default)]
    pub idle_timeout: Option<String>,
}

/// `TCPSettings.TcpKeepalive`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpKeepalive {
    /// Probes before dropping.
    #[serde(default, deserialize_with = "super::num::opt_i64")]
    pub probes: Option<i64>,
    /// Idle time before probing.
    #[serde(default)]
    pub time: Option<String>,
    /// Probe interval.
    #[serde(default)]
    pub interval: Option<String>,
}

/// `ConnectionPoolSettings.HTTPSettings`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSettings {
    /// Max queued requests.
    #[serde(default, deserialize_with = "super::num::opt_i64")]
    pub http1_max_pending_requests: Option<i64>,
    /// Max outstanding requests.
    #[serde(default, deserialize_with = "super::num::opt_i64")]
    pub http2_max_requests: Option<i64>,
    /// Requests per connection (1 disables keep-alive).
    #[serde(default, deserialize_with = "super::num::opt_i64")]
    pub max_requests_per_connection: Option<i64>,
    /// Max concurrent retries.
    #[serde(default, deserialize_with = "super::num::opt_i64")]
    pub max_retries: Option<i64>,
    /// Upstream idle timeout.
    #[serde(default)]
    pub idle_timeout: Option<String>,
    /// `DEFAULT`, `DO_NOT_UPGRADE`, `UPGRADE`.
    #[serde(default)]
    pub h2_upgrade_policy: Option<String>,
    /// Use the client's HTTP version upstream.
    #[serde(default)]
    pub use_client_protocol: Option<bool>,
    /// HTTP/2 max concurrent streams.
    #[serde(default, deserialize_with = "super::num::opt_i64")]
    pub max_concurrent_streams: Option<i64>,
    /// HTTP/2 keepalive (1.31-alpha).
    #[serde(default)]
    pub http2_keep_alive: Option<ConnectionKeepalive>,
}

/// `HTTPSettings.ConnectionKeepalive`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionKeepalive {
    /// Ping interval.
    #[serde(default)]
    pub interval: Option<String>,
    /// Ping timeout.
    #[serde(default)]
    pub timeout: Option<String>,
}

/// `OutlierDetection`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Deprecated; ignored by Istio (warning).
    #[serde(default, deserialize_with = "super::num::opt_i64")]
    pub consecutive_errors: Option<i64>,
    /// Count local-origin failures separately.
    #[serde(default)]
    pub split_external_local_origin_errors: Option<bool>,
    /// Local-origin failure threshold (needs split).
    #[serde(default, deserialize_with = "super::num::opt_i64")]
    pub consecutive_local_origin_failures: Option<i64>,
    /// 502/503/504 threshold.
    #[serde(default, deserialize_with = "super::num::opt_i64")]
    pub consecutive_gateway_errors: Option<i64>,
    /// 5xx threshold (default 5).
    #[serde(default, deserialize_with = "super::num::opt_i64")]
    pub consecutive_5xx_errors: Option<i64>,
    /// Sweep interval (default 10s).
    #[serde(default)]
    pub interval: Option<String>,
    /// Base ejection time (default 30s).
    #[serde(default)]
    pub base_ejection_time: Option<String>,
    /// Max ejected percent (default 10).
    #[serde(default, deserialize_with = "super::num::opt_i64")]
    pub max_ejection_percent: Option<i64>,
    /// Panic threshold (default 0).
    #[serde(default, deserialize_with = "super::num::opt_i64")]
    pub min_health_percent: Option<i64>,
    /// Status codes that count as errors (1.31-alpha).
    #[serde(default)]
    pub outlier_detection_http_error_codes: Vec<i64>,
}

/// `ClientTLSSettings`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTlsSettings {
    /// `DISABLE`, `SIMPLE`, `MUTUAL`, `ISTIO_MUTUAL`.
    #[serde(default)]
    pub mode: Option<String>,
    /// Client certificate file.
    #[serde(default)]
    pub client_certificate: Option<String>,
    /// Client key file.
    #[serde(default)]
    pub private_key: Option<String>,
    /// CA bundle file.
    #[serde(default)]
    pub ca_certificates: Option<String>,
    /// Kubernetes secret with the credentials.
    #[serde(default)]
    pub credential_name: Option<String>,
    /// Accepted server SANs.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    /// SNI to send.
    #[serde(default)]
    pub sni: Option<String>,
    /// Skip server verification.
    #[serde(default)]
    pub insecure_skip_verify: Option<bool>,
    /// CRL file.
    #[serde(default)]
    pub ca_crl: Option<String>,
}

// ---------------------------------------------------------------------------------------------------------
// ServiceEntry, Sidecar, Gateway

/// `ServiceEntry.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntrySpec {
    /// Hosts.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// VIPs / CIDRs.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Ports.
    #[serde(default)]
    pub ports: Vec<ServiceEntryPort>,
    /// `MESH_EXTERNAL` (default) or `MESH_INTERNAL`.
    #[serde(default)]
    pub location: Option<String>,
    /// `NONE` (default), `STATIC`, `DNS`, `DNS_ROUND_ROBIN`, `DYNAMIC_DNS`.
    #[serde(default)]
    pub resolution: Option<String>,
    /// Static endpoints; `Some(empty)` when written as `endpoints: []` (the CRD's CEL rules test presence).
    #[serde(default)]
    pub endpoints: Option<Vec<WorkloadEntry>>,
    /// Pod/WorkloadEntry selector.
    #[serde(default)]
    pub workload_selector: Option<WorkloadSelector>,
    /// Visibility (`~` allowed here).
    #[serde(default)]
    pub export_to: Vec<String>,
    /// SANs to verify.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

/// `ServicePort` of a ServiceEntry / `Port` of a Gateway server / `SidecarPort`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntryPort {
    /// Port number.
    #[serde(default, deserialize_with = "super::num::opt_i64")]
    pub number: Option<i64>,
    /// `HTTP`, `HTTPS`, `GRPC`, `HTTP2`, `MONGO`, `TCP`, `TLS`, ...
    #[serde(default)]
    pub protocol: Option<String>,
    /// Port name.
    #[serde(default)]
    pub name: Option<String>,
    /// Endpoint port.
    #[serde(default, deserialize_with = "super::num::opt_i64")]
    pub target_port: Option<i64>,
}

/// `WorkloadEntry` (ServiceEntry endpoint).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntry {
    /// IP, hostname or `unix://` path.
    #[serde(default)]
    pub address: Option<String>,
    /// Port name -> endpoint port; `Some(empty)` when written as `ports: {}` (the CRD's CEL rules test
    /// presence).
    #[serde(default)]
    pub ports: Option<BTreeMap<String, i64>>,
    /// Labels (matched by DR subsets).
    #[serde(default)]
    pub labels: LabelMap,
    /// Network.
    #[serde(default)]
    pub network: Option<String>,
    /// `region/zone/subzone`.
    #[serde(default)]
    pub locality: Option<String>,
    /// LB weight.
    #[serde(default, deserialize_with = "super::num::opt_i64")]
    pub weight: Option<i64>,
    /// Service account.
    #[serde(default)]
    pub service_account: Option<String>,
}

/// `WorkloadSelector` (ServiceEntry, Sidecar: field `labels`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Labels.
    #[serde(default)]
    pub labels: LabelMap,
}

/// `Sidecar.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarSpec {
    /// Client selector.
    #[serde(default)]
    pub workload_selector: Option<WorkloadSelector>,
    /// Inbound listeners.
    #[serde(default)]
    pub ingress: Vec<IstioIngressListener>,
    /// Outbound scoping.
    #[serde(default)]
    pub egress: Vec<IstioEgressListener>,
    /// Inbound pool.
    #[serde(default)]
    pub inbound_connection_pool: Option<ConnectionPoolSettings>,
    /// Unknown destinations.
    #[serde(default)]
    pub outbound_traffic_policy: Option<SidecarOutboundTrafficPolicy>,
}

/// `IstioIngressListener`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioIngressListener {
    /// Port.
    #[serde(default)]
    pub port: Option<ServiceEntryPort>,
    /// Bind address.
    #[serde(default)]
    pub bind: Option<String>,
    /// `DEFAULT`, `IPTABLES`, `NONE`.
    #[serde(default)]
    pub capture_mode: Option<String>,
    /// `127.0.0.1:PORT` etc.
    #[serde(default)]
    pub default_endpoint: Option<String>,
    /// Inbound TLS.
    #[serde(default)]
    pub tls: Option<ServerTlsSettings>,
    /// Inbound pool.
    #[serde(default)]
    pub connection_pool: Option<ConnectionPoolSettings>,
}

/// `IstioEgressListener`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioEgressListener {
    /// Port.
    #[serde(default)]
    pub port: Option<ServiceEntryPort>,
    /// Bind address.
    #[serde(default)]
    pub bind: Option<String>,
    /// Capture mode.
    #[serde(default)]
    pub capture_mode: Option<String>,
    /// `namespace/dnsName` imports.
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// `Sidecar.OutboundTrafficPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarOutboundTrafficPolicy {
    /// `REGISTRY_ONLY` or `ALLOW_ANY`.
    #[serde(default)]
    pub mode: Option<String>,
    /// Egress proxy destination.
    #[serde(default)]
    pub egress_proxy: Option<Destination>,
}

/// `Gateway.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    /// Servers.
    #[serde(default)]
    pub servers: Vec<Server>,
    /// Gateway pod selector.
    #[serde(default)]
    pub selector: LabelMap,
}

/// `Server`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    /// Port.
    #[serde(default)]
    pub port: Option<ServiceEntryPort>,
    /// Bind address.
    #[serde(default)]
    pub bind: Option<String>,
    /// `ns/dnsName` hosts.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// TLS.
    #[serde(default)]
    pub tls: Option<ServerTlsSettings>,
    /// Default endpoint.
    #[serde(default)]
    pub default_endpoint: Option<String>,
    /// Server name.
    #[serde(default)]
    pub name: Option<String>,
}

/// `ServerTLSSettings`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTlsSettings {
    /// Redirect HTTP to HTTPS.
    #[serde(default)]
    pub https_redirect: Option<bool>,
    /// `PASSTHROUGH`, `SIMPLE`, `MUTUAL`, `AUTO_PASSTHROUGH`, `ISTIO_MUTUAL`, `OPTIONAL_MUTUAL`.
    #[serde(default)]
    pub mode: Option<String>,
    /// Certificate file.
    #[serde(default)]
    pub server_certificate: Option<String>,
    /// Key file.
    #[serde(default)]
    pub private_key: Option<String>,
    /// CA file.
    #[serde(default)]
    pub ca_certificates: Option<String>,
    /// CRL file.
    #[serde(default)]
    pub ca_crl: Option<String>,
    /// Secret name.
    #[serde(default)]
    pub credential_name: Option<String>,
    /// Secret names.
    #[serde(default)]
    pub credential_names: Vec<String>,
    /// CA secret name.
    #[serde(default)]
    pub ca_cert_credential_name: Option<String>,
    /// Certificates.
    #[serde(default)]
    pub tls_certificates: Vec<TlsCertificate>,
    /// Accepted client SANs.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    /// SPKI pins.
    #[serde(default)]
    pub verify_certificate_spki: Vec<String>,
    /// Certificate hash pins.
    #[serde(default)]
    pub verify_certificate_hash: Vec<String>,
    /// Minimum TLS version.
    #[serde(default)]
    pub min_protocol_version: Option<String>,
    /// Maximum TLS version.
    #[serde(default)]
    pub max_protocol_version: Option<String>,
    /// Cipher suites.
    #[serde(default)]
    pub cipher_suites: Vec<String>,
    /// Skip client verification.
    #[serde(default)]
    pub insecure_skip_verify: Option<bool>,
}

/// `ServerTLSSettings.TLSCertificate`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsCertificate {
    /// Certificate file.
    #[serde(default)]
    pub server_certificate: Option<String>,
    /// Key file.
    #[serde(default)]
    pub private_key: Option<String>,
    /// CA file.
    #[serde(default)]
    pub ca_certificates: Option<String>,
}
