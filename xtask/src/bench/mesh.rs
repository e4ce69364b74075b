//! The mesh under test as plain data (services, subsets, endpoints, route policy), and what each data
//! path is configured with from it: nginx for the backends, Kubernetes + Istio YAML for Keel. Envoy's
//! YAML is in [`super::envoy`]. One model feeds every mode, so "same routing" holds by construction.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use serde::Serialize;

/// Size of every backend response body, like Istio's performance benchmarks (fortio, 1 KiB payload).
pub const BODY_BYTES: usize = 1024;
/// Backend port for HTTP/1.1.
pub const APP_PORT_H1: u16 = 8080;
/// Backend port for h2c (nginx speaks prior-knowledge h2c only on an `http2` listener).
pub const APP_PORT_H2: u16 = 8081;
/// Service (VIP) port.
pub const SERVICE_PORT: u16 = 80;
/// Namespace of every bench resource.
pub const NAMESPACE: &str = "bench";
/// Response header carrying the backend's identity (its subset).
pub const BACKEND_HEADER: &str = "x-backend";

/// The VirtualService every benchmarked service gets (`cargo xtask bench --route-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoutePolicy {
    /// One rule: the weighted canary, with Istio's defaults (no timeout, the default retry policy).
    Plain,
    /// The features users turn on: first a rule matching [`DEBUG_HEADER`] that routes to subset v2
    /// (the load never sends the header, so every request evaluates it and falls through), then the
    /// weighted canary with [`RETRIES`] and a [`ROUTE_TIMEOUT_S`] timeout.
    Features,
}

impl RoutePolicy {
    /// The name used on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            RoutePolicy::Plain => "plain",
            RoutePolicy::Features => "features",
        }
    }

    /// What the policy configures, for the report's Settings line.
    pub fn describe(self) -> String {
        match self {
            RoutePolicy::Plain => "`plain` (the weighted canary rule only, Istio's default retries, \
                                   no timeout)"
                .into(),
            RoutePolicy::Features => format!(
                "`features` (rule 1: header `{}: {{exact: \"{}\"}}` -> v2, never sent by the load; \
                 rule 2: the weighted canary with retries {{attempts: {}, perTryTimeout: {}s, retryOn: \
                 \"{}\"}} and timeout {}s)",
                DEBUG_HEADER.0,
                DEBUG_HEADER.1,
                RETRIES.attempts,
                RETRIES.per_try_timeout_s,
                RETRIES.retry_on,
                ROUTE_TIMEOUT_S
            ),
        }
    }
}

/// The DestinationRule `trafficPolicy` every benchmarked service gets (`cargo xtask bench
/// --traffic-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrafficPolicy {
    /// No `trafficPolicy`: Istio's defaults (no limits, no outlier detection).
    None,
    /// A connection pool and outlier detection with limits the load never reaches ([`POOL`]), so
    /// every request pays for the breaker and detector bookkeeping without being rejected.
    PoolOutlier,
}

/// Limits of [`TrafficPolicy::PoolOutlier`], written into both Keel's and Envoy's config.
pub struct PoolLimits {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
    pub consecutive_5xx: u32,
    pub interval_s: u64,
    pub base_ejection_s: u64,
    pub max_ejection_percent: u32,
}

/// The pool and outlier settings of [`TrafficPolicy::PoolOutlier`].
pub const POOL: PoolLimits = PoolLimits {
    max_connections: 1024,
    max_pending_requests: 1024,
    max_requests: 4096,
    max_retries: 64,
    consecutive_5xx: 5,
    interval_s: 10,
    base_ejection_s: 30,
    max_ejection_percent: 50,
};

impl TrafficPolicy {
    /// The name used on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            TrafficPolicy::None => "none",
            TrafficPolicy::PoolOutlier => "pool-outlier",
        }
    }

    /// What the policy configures, for the report's Settings line.
    pub fn describe(self) -> String {
        match self {
            TrafficPolicy::None => "`none` (no DestinationRule trafficPolicy)".into(),
            TrafficPolicy::PoolOutlier => format!(
                "`pool-outlier` (connectionPool maxConnections {}, http1MaxPendingRequests {}, \
                 http2MaxRequests {}, maxRetries {}; outlierDetection consecutive5xxErrors {}, interval \
                 {}s, baseEjectionTime {}s, maxEjectionPercent {})",
                POOL.max_connections,
                POOL.max_pending_requests,
                POOL.max_requests,
                POOL.max_retries,
                POOL.consecutive_5xx,
                POOL.interval_s,
                POOL.base_ejection_s,
                POOL.max_ejection_percent
            ),
        }
    }

    /// The DestinationRule `trafficPolicy` block (indented under `spec:`), empty for `none`.
    fn yaml(self) -> String {
        match self {
            TrafficPolicy::None => String::new(),
            TrafficPolicy::PoolOutlier => format!(
                "  trafficPolicy:\n    connectionPool:\n      tcp:\n        maxConnections: {}\n      \
                 http:\n        http1MaxPendingRequests: {}\n        http2MaxRequests: {}\n        \
                 maxRetries: {}\n    outlierDetection:\n      consecutive5xxErrors: {}\n      interval: \
                 {}s\n      baseEjectionTime: {}s\n      maxEjectionPercent: {}\n",
                POOL.max_connections,
                POOL.max_pending_requests,
                POOL.max_requests,
                POOL.max_retries,
                POOL.consecutive_5xx,
                POOL.interval_s,
                POOL.base_ejection_s,
                POOL.max_ejection_percent
            ),
        }
    }
}

/// The header (name, exact value) of the [`RoutePolicy::Features`] rule that routes to subset v2.
pub const DEBUG_HEADER: (&str, &str) = ("x-bench-debug", "1");
/// Subset the header rule routes to.
pub const DEBUG_SUBSET: &str = "v2";
/// Timeout of the canary rule under [`RoutePolicy::Features`], seconds.
pub const ROUTE_TIMEOUT_S: u64 = 5;

/// An Istio `HTTPRetry`, as both Keel's YAML and Envoy's `retry_policy` are written from it.
#[derive(Debug, Clone, Copy)]
pub struct Retries {
    /// Retries after the first try (`attempts`, Envoy `num_retries`).
    pub attempts: u32,
    /// `perTryTimeout`, seconds.
    pub per_try_timeout_s: u64,
    /// `retryOn` (Envoy `retry_on`), comma separated without spaces.
    pub retry_on: &'static str,
}

/// Retries of the canary rule under [`RoutePolicy::Features`].
pub const RETRIES: Retries = Retries {
    attempts: 2,
    per_try_timeout_s: 2,
    retry_on: "connect-failure,refused-stream,5xx",
};

/// One endpoint of a service: a pod and the subset (`version` label) it belongs to.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Pod name.
    pub pod: String,
    /// Pod IP.
    pub ip: Ipv4Addr,
    /// Value of the pod's `version` label, which the DestinationRule's subsets select on.
    pub version: String,
}

/// A Service with a weighted canary between subsets `v1` and `v2`.
#[derive(Debug, Clone)]
pub struct Service {
    /// Service name (namespace is [`NAMESPACE`]).
    pub name: String,
    /// ClusterIP.
    pub vip: Ipv4Addr,
    /// Pod port behind [`SERVICE_PORT`].
    pub target_port: u16,
    /// Whether the port is declared `http2` (upstream speaks h2c).
    pub http2: bool,
    /// Value of the `app` label the Service selects.
    pub app: String,
    /// The selected pods.
    pub endpoints: Vec<Endpoint>,
    /// Percent of requests routed to subset v1; v2 gets the rest.
    pub v1_weight: u32,
    /// Which VirtualService the service gets.
    pub policy: RoutePolicy,
    /// Which DestinationRule `trafficPolicy` the service gets.
    pub traffic: TrafficPolicy,
}

impl Service {
    /// `<name>.<namespace>.svc.cluster.local`.
    pub fn fqdn(&self) -> String {
        format!("{}.{NAMESPACE}.svc.cluster.local", self.name)
    }

    /// The port name, whose prefix tells Istio and Keel the protocol.
    pub fn port_name(&self) -> &'static str {
        if self.http2 {
            "http2"
        } else {
            "http"
        }
    }

    /// Every name a client may put in `Host` for this service (Istio's virtual-host domains).
    pub fn domains(&self) -> Vec<String> {
        let short = &self.name;
        let names = [
            short.clone(),
            format!("{short}.{NAMESPACE}"),
            format!("{short}.{NAMESPACE}.svc"),
            self.fqdn(),
            self.vip.to_string(),
        ];
        names
            .iter()
            .flat_map(|n| [n.clone(), format!("{n}:{SERVICE_PORT}")])
            .collect()
    }

    /// Endpoints of `subset` (`None`: all).
    pub fn subset_endpoints(&self, subset: Option<&str>) -> Vec<&Endpoint> {
        self.endpoints
            .iter()
            .filter(|e| subset.is_none_or(|s| e.version == s))
            .collect()
    }

    /// `(subset, weight)` of the canary route.
    pub fn route(&self) -> [(&'static str, u32); 2] {
        [("v1", self.v1_weight), ("v2", 100 - self.v1_weight)]
    }
}

/// nginx for one backend pod: `return 200` with a 1 KiB body and the pod's identity in a header, on
/// [`APP_PORT_H1`] (HTTP/1.1) and [`APP_PORT_H2`] (h2c). Access logs off, keep-alive effectively
/// unlimited, so the backend is as cheap as it can be and never closes a load generator's connection.
pub fn nginx_conf(prefix_dir: &str, identity: &str) -> String {
    // Printable, deterministic filler; nginx string literals need no escaping for [a-z0-9].
    let body: String = (0..BODY_BYTES)
        .map(|i| char::from(b'a' + u8::try_from(i % 26).unwrap_or(0)))
        .collect();
    let mut c = String::new();
    let _ = write!(
        c,
        r#"# Generated by `cargo xtask bench`.
daemon off;
master_process on;
worker_processes 2;
pid {prefix_dir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix_dir}/tmp/body;
    proxy_temp_path {prefix_dir}/tmp/proxy;
    fastcgi_temp_path {prefix_dir}/tmp/fastcgi;
    uwsgi_temp_path {prefix_dir}/tmp/uwsgi;
    scgi_temp_path {prefix_dir}/tmp/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    default_type text/plain;
    server {{
        listen {APP_PORT_H1} reuseport backlog=4096;
        location / {{ add_header {BACKEND_HEADER} {identity} always; return 200 "{body}"; }}
    }}
    server {{
        listen {APP_PORT_H2} http2 reuseport backlog=4096;
        location / {{ add_header {BACKEND_HEADER} {identity} always; return 200 "{body}"; }}
    }}
}}
"#
    );
    c
}

/// A pod for Keel's config: name, IP and labels.
#[derive(Debug, Clone)]
pub struct PodDef {
    /// Pod name (namespace is [`NAMESPACE`]).
    pub name: String,
    /// `status.podIP`.
    pub ip: Ipv4Addr,
    /// Labels.
    pub labels: Vec<(String, String)>,
}

/// Keel's config directory content (one multi-document YAML): the Services, the Pods (clients
/// included: Keel identifies a client by its pod's cgroup), and per service the DestinationRule with
/// subsets v1/v2 and the VirtualService with the weighted canary.
pub fn keel_yaml(services: &[Service], pods: &[PodDef]) -> String {
    keel_yaml_with(services, pods, true)
}

/// [`keel_yaml`]; without `routes`, each service's DestinationRule has only its `trafficPolicy` (no
/// subsets) and there is no VirtualService: one cluster per service.
pub fn keel_yaml_with(services: &[Service], pods: &[PodDef], routes: bool) -> String {
    let mut docs = Vec::new();
    for s in services {
        docs.push(format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {NAMESPACE}\n\
             spec:\n  type: ClusterIP\n  clusterIP: {vip}\n  selector:\n    app: {app}\n  ports:\n  \
             - name: {port_name}\n    port: {SERVICE_PORT}\n    targetPort: {target}\n    protocol: TCP\n",
            name = s.name,
            vip = s.vip,
            app = s.app,
            port_name = s.port_name(),
            target = s.target_port,
        ));
        let subsets = if routes {
            "  subsets:\n  - name: v1\n    labels:\n      version: v1\n  - name: v2\n    labels:\n      \
             version: v2\n"
        } else {
            ""
        };
        docs.push(format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: {name}\n  \
             namespace: {NAMESPACE}\nspec:\n  host: {fqdn}\n{traffic}{subsets}",
            name = s.name,
            fqdn = s.fqdn(),
            traffic = s.traffic.yaml(),
        ));
        if routes {
            docs.push(virtual_service_yaml(s));
        }
    }
    for p in pods {
        let mut d = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {NAMESPACE}\n  labels:\n",
            p.name
        );
        for (k, v) in &p.labels {
            let _ = writeln!(d, "    {k}: \"{v}\"");
        }
        let _ = write!(
            d,
            "status:\n  phase: Running\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n",
            ip = p.ip
        );
        docs.push(d);
    }
    docs.join("---\n")
}

/// The VirtualService of `s` under its [`RoutePolicy`].
fn virtual_service_yaml(s: &Service) -> String {
    let fqdn = s.fqdn();
    let destination = |subset: &str| {
        format!(
            "    - destination:\n        host: {fqdn}\n        subset: {subset}\n        port:\n          \
             number: {SERVICE_PORT}\n"
        )
    };
    let mut vs = format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {name}\n  \
         namespace: {NAMESPACE}\nspec:\n  hosts:\n  - {fqdn}\n  http:\n",
        name = s.name,
    );
    if s.policy == RoutePolicy::Features {
        let (header, value) = DEBUG_HEADER;
        let _ = write!(
            vs,
            "  - name: debug\n    match:\n    - headers:\n        {header}:\n          exact: \"{value}\"\n    \
             route:\n{}",
            destination(DEBUG_SUBSET)
        );
    }
    vs.push_str("  - name: canary\n    route:\n");
    for (subset, weight) in s.route() {
        let _ = writeln!(vs, "{}      weight: {weight}", destination(subset));
    }
    if s.policy == RoutePolicy::Features {
        let _ = write!(
            vs,
            "    retries:\n      attempts: {}\n      perTryTimeout: {}s\n      retryOn: \"{}\"\n    \
             timeout: {ROUTE_TIMEOUT_S}s\n",
            RETRIES.attempts, RETRIES.per_try_timeout_s, RETRIES.retry_on
        );
    }
    vs
}

/// The `i`-th ClusterIP of the bench, inside the (host-blackholed) service CIDR 10.96.0.0/16.
pub fn vip(i: u16) -> Ipv4Addr {
    let [hi, lo] = (i + 10).to_be_bytes();
    Ipv4Addr::new(10, 96, 100 + hi, lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> Service {
        Service {
            name: "bench".into(),
            vip: vip(0),
            target_port: APP_PORT_H1,
            http2: false,
            app: "bench".into(),
            endpoints: vec![
                Endpoint {
                    pod: "a".into(),
                    ip: Ipv4Addr::new(10, 244, 9, 10),
                    version: "v1".into(),
                },
                Endpoint {
                    pod: "b".into(),
                    ip: Ipv4Addr::new(10, 244, 9, 11),
                    version: "v2".into(),
                },
            ],
            v1_weight: 90,
            policy: RoutePolicy::Features,
            traffic: TrafficPolicy::None,
        }
    }

    #[test]
    fn vips_stay_in_the_service_cidr() {
        assert_eq!(vip(0), Ipv4Addr::new(10, 96, 100, 10));
        assert_eq!(vip(300), Ipv4Addr::new(10, 96, 101, 54));
    }

    #[test]
    fn canary_weights_add_up() {
        let s = svc();
        assert_eq!(s.route(), [("v1", 90), ("v2", 10)]);
        assert_eq!(s.subset_endpoints(Some("v2")).len(), 1);
        assert_eq!(s.subset_endpoints(None).len(), 2);
    }

    /// The VirtualService document of [`keel_yaml`] for `s`.
    fn virtual_service(s: &Service) -> serde_yaml::Value {
        keel_yaml(std::slice::from_ref(s), &[])
            .split("---\n")
            .filter_map(|d| serde_yaml::from_str::<serde_yaml::Value>(d).ok())
            .find(|d| d["kind"] == "VirtualService")
            .unwrap_or_default()
    }

    #[test]
    fn pool_outlier_sets_the_destination_rule_traffic_policy() {
        let s = Service {
            traffic: TrafficPolicy::PoolOutlier,
            ..svc()
        };
        let dr = keel_yaml(std::slice::from_ref(&s), &[])
            .split("---\n")
            .filter_map(|d| serde_yaml::from_str::<serde_yaml::Value>(d).ok())
            .find(|d| d["kind"] == "DestinationRule")
            .unwrap_or_default();
        let tp = &dr["spec"]["trafficPolicy"];
        assert_eq!(
            tp["connectionPool"]["tcp"]["maxConnections"].as_u64(),
            Some(u64::from(POOL.max_connections))
        );
        assert_eq!(
            tp["outlierDetection"]["baseEjectionTime"].as_str(),
            Some("30s")
        );
        assert_eq!(dr["spec"]["subsets"][1]["name"].as_str(), Some("v2"));
    }

    #[test]
    fn without_routes_each_service_is_one_cluster_with_its_traffic_policy() {
        let s = Service {
            traffic: TrafficPolicy::PoolOutlier,
            ..svc()
        };
        let docs: Vec<serde_yaml::Value> = keel_yaml_with(std::slice::from_ref(&s), &[], false)
            .split("---\n")
            .filter_map(|d| serde_yaml::from_str::<serde_yaml::Value>(d).ok())
            .collect();
        let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        assert_eq!(kinds, ["Service", "DestinationRule"]);
        let dr = &docs[1];
        assert!(dr["spec"]["subsets"].is_null());
        assert_eq!(
            dr["spec"]["trafficPolicy"]["outlierDetection"]["consecutive5xxErrors"].as_u64(),
            Some(u64::from(POOL.consecutive_5xx))
        );
    }

    #[test]
    fn plain_policy_is_the_canary_alone() {
        let s = Service {
            policy: RoutePolicy::Plain,
            ..svc()
        };
        let vs = virtual_service(&s);
        let http = vs["spec"]["http"]
            .as_sequence()
            .cloned()
            .unwrap_or_default();
        assert_eq!(http.len(), 1);
        assert_eq!(http[0]["name"], "canary");
        assert_eq!(http[0]["route"][0]["destination"]["subset"], "v1");
        assert_eq!(http[0]["route"][0]["weight"], 90);
        assert_eq!(http[0]["route"][1]["weight"], 10);
        assert!(http[0]["retries"].is_null() && http[0]["timeout"].is_null());
    }

    #[test]
    fn features_policy_has_header_rule_then_canary_with_retries_and_timeout() {
        let vs = virtual_service(&svc());
        let http = vs["spec"]["http"]
            .as_sequence()
            .cloned()
            .unwrap_or_default();
        assert_eq!(http.len(), 2);
        assert_eq!(
            http[0]["match"][0]["headers"]["x-bench-debug"]["exact"],
            "1"
        );
        assert_eq!(http[0]["route"][0]["destination"]["subset"], "v2");
        assert!(http[0]["route"][0]["weight"].is_null());
        assert!(http[0]["retries"].is_null() && http[0]["timeout"].is_null());
        assert_eq!(http[1]["name"], "canary");
        assert!(http[1]["match"].is_null());
        assert_eq!(http[1]["route"][1]["destination"]["subset"], "v2");
        assert_eq!(http[1]["route"][1]["weight"], 10);
        assert_eq!(http[1]["retries"]["attempts"], 2);
        assert_eq!(http[1]["retries"]["perTryTimeout"], "2s");
        assert_eq!(
            http[1]["retries"]["retryOn"],
            "connect-failure,refused-stream,5xx"
        );
        assert_eq!(http[1]["timeout"], "5s");
    }

    #[test]
    fn nginx_body_is_one_kib() {
        let conf = nginx_conf("/tmp/x", "v1");
        let body = conf
            .split("return 200 \"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_default();
        assert_eq!(body.len(), BODY_BYTES);
    }
}
