//! What `keel explain` is asked and what it answers: plain data (serialized as the admin API's JSON
//! and read back by the CLI), worded by `explain` and rendered by `text`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::policy::PodId;

/// What to explain: a client pod and one request (or connection).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Query {
    /// `namespace/name` of the client pod.
    pub from: String,
    /// `http://host[:port]/path?query`, `https://…`, `tcp://host:port` or `tls://host:port`. A short
    /// host is resolved in the client's namespace, as Kubernetes DNS would (`reviews` is
    /// `reviews.<ns>.svc.cluster.local`).
    pub url: String,
    /// HTTP method (default `GET`).
    #[serde(default)]
    pub method: Option<String>,
    /// Request headers, `name: value`.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The ClientHello's server name (TLS routes); default: the URL's host for `https`/`tls`.
    #[serde(default)]
    pub sni: Option<String>,
}

/// Why nothing can be explained.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown pod {0:?} (give namespace/name of a Pod in the config)")]
    UnknownPod(String),
    #[error("pod {0} is not captured by keel (annotated keel.io/capture: \"false\")")]
    NotCaptured(String),
    #[error("invalid URL {0:?}: {1}")]
    BadUrl(String, String),
    #[error("invalid header {0:?}: write it as 'name: value'")]
    BadHeader(String),
    #[error("unknown host {host:?}: no Service or ServiceEntry {tried} with port {port}")]
    UnknownHost {
        host: String,
        tried: String,
        port: u16,
    },
}

/// Endpoint health: unknown (explained from files) or the running proxy's per-client state.
#[derive(Clone, Copy)]
pub enum Health<'a> {
    /// From a config directory: nothing has run.
    Unknown,
    /// From a running keel: its kernel cgroup id -> pod map (the client's state is keyed by its
    /// cgroup id, or by the node-wide id with `--upstream-state node`).
    Live(&'a HashMap<u64, PodId>),
}

/// The explanation of one request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// `namespace/name` of the client pod.
    pub client: String,
    /// The Sidecar in force for the client, `namespace/name`.
    pub sidecar: Option<String>,
    /// `GET http://reviews:9080/x`.
    pub request: String,
    /// The request headers, `name: value`.
    pub headers: Vec<String>,
    /// The address the client's connection goes to (Service VIP:port).
    pub destination: String,
    /// `host:port (protocol)` of the service the client sees there.
    pub service: Option<String>,
    /// Whether the kernel sends the connection to keel, when the client pod has Istio traffic
    /// annotations (`traffic.sidecar.istio.io/*`): `captured: <rule>` or `direct: <rule>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<String>,
    /// What happens, in one line.
    pub result: String,
    /// VirtualServices for the host, in precedence order, and whether each applies.
    pub virtual_services: Vec<Verdict>,
    /// The rules of the VirtualService that applies, in order.
    pub rules: Vec<RuleExplained>,
    /// The route taken.
    pub route: Option<RouteExplained>,
    /// The clusters the route leads to.
    pub clusters: Vec<ClusterExplained>,
    /// Anything else that decided the outcome.
    pub notes: Vec<String>,
}

/// A resource and what it means for the request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// `namespace/name`.
    pub name: String,
    /// `file:line` where it is defined, when known.
    pub location: Option<String>,
    /// What it means here.
    pub verdict: String,
}

/// How one rule fared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleExplained {
    /// `http[0]`, `http[1] "name"`, `tcp[0]`, `tls[2]`.
    pub rule: String,
    /// `matched`, `no match`, `not for this client`, `unreachable`, `not evaluated`.
    pub outcome: String,
    /// The matched block, or why each block did not match.
    pub details: Vec<String>,
}

/// The route taken and what it applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteExplained {
    /// The rule (`http[0]`) or `default route`.
    pub rule: String,
    /// Weighted destinations.
    pub destinations: Vec<DestinationExplained>,
    /// `timeout`, `retries`, `fault`, `mirror`, `rewrite`, `headers`, `cors`, `redirect`,
    /// `directResponse`, with where each value comes from.
    pub settings: Vec<Setting>,
}

/// One weighted destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DestinationExplained {
    /// `reviews subset v2 port 9080`.
    pub destination: String,
    pub weight: u32,
    /// Share of requests, 0..=100.
    pub percent: f64,
    /// The Envoy cluster name, or why there is none (503 `NC`).
    pub cluster: String,
}

/// One setting and the level it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Setting {
    pub name: String,
    pub value: String,
    /// `rule`, `mesh default`, `Istio default`, `trafficPolicy`, `subset trafficPolicy`, ...
    pub from: String,
}

/// A cluster: its DestinationRule, effective policy and endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterExplained {
    /// `outbound|9080|v2|reviews.default.svc.cluster.local`.
    pub name: String,
    /// The DestinationRule in force, if any.
    pub destination_rule: Option<Verdict>,
    /// `v2 (version=v2)` for a subset cluster.
    pub subset: Option<String>,
    /// `loadBalancer`, `connectionPool`, `outlierDetection`, `tls`, `retryBudget`.
    pub policy: Vec<Setting>,
    /// Where endpoints come from when not listed (`original destination`, DNS names).
    pub discovery: Option<String>,
    pub endpoints: Vec<EndpointExplained>,
}

/// One endpoint of a cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointExplained {
    /// `namespace/name` of its pod, or `-`.
    pub pod: String,
    pub address: String,
    /// `region/zone/subzone`, `-` when unknown.
    pub locality: String,
    /// `healthy`, `ejected`, `unknown` (from files), ...
    pub health: String,
}
