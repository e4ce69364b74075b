//! Envoy bootstrap configs (static resources) for the two Envoy-based modes, shaped like what istiod
//! and Cilium generate for the same VirtualService/DestinationRule:
//!
//! - sidecar outbound (`virtualOutbound`, 15001, original-dst): one HTTP connection manager for the
//!   service port with a virtual host per service (Istio's `80` route) whose route is the weighted
//!   canary over the clusters `outbound|80|v1|<fqdn>` / `outbound|80|v2|<fqdn>`; endpoints are pod
//!   IP:targetPort, where the server pod's iptables sends the connection to its inbound sidecar;
//! - sidecar inbound (`virtualInbound`, 15006, original-dst): per app port an HTTP connection manager
//!   forwarding to the app on the pod IP (Envoy runs as UID 1337, which the pod's iptables exempts);
//! - node Envoy: one listener on the bridge IP with the outbound route table.
//!
//! The routes are what istiod writes for the service's [`RoutePolicy`]: `plain` is the weighted canary
//! alone with Istio's default retry policy and `timeout: 0s`; `features` puts the header-match route
//! to v2 first (Istio's defaults), then the canary with the VirtualService's retries (as a
//! `retry_policy`, with the previous-hosts predicate Istio adds) and its timeout.
//!
//! Like Istio: codec AUTO downstream (HTTP/1.1 or h2c), h2c upstream for `http2` ports, unlimited
//! circuit breakers, round-robin (Istio's default is LEAST_REQUEST; with two endpoints per
//! subset-of-one the choice does not matter). Configs are JSON (a YAML subset, and what Envoy reads for
//! `*.json`).

use std::net::Ipv4Addr;

use serde_json::{json, Value};

use super::mesh::{
    Retries, RoutePolicy, Service, TrafficPolicy, DEBUG_HEADER, DEBUG_SUBSET, POOL, RETRIES,
    ROUTE_TIMEOUT_S, SERVICE_PORT,
};

/// Admin port of every sidecar (inside its own pod netns, on 127.0.0.1), like Istio's 15000.
pub const SIDECAR_ADMIN_PORT: u16 = 15000;
/// Outbound capture port.
pub const OUTBOUND_PORT: u16 = 15001;
/// Inbound capture port.
pub const INBOUND_PORT: u16 = 15006;
/// UID the sidecars run as; the pods' iptables rules let its traffic through uncaptured.
pub const PROXY_UID: u32 = 1337;
/// Worker threads per Envoy (`--concurrency`), as the brief for the bench fixes it.
pub const CONCURRENCY: u32 = 2;

/// Outbound cluster name, Istio's format `outbound|<port>|<subset>|<fqdn>`.
pub fn outbound_cluster(s: &Service, subset: Option<&str>) -> String {
    format!(
        "outbound|{SERVICE_PORT}|{}|{}",
        subset.unwrap_or(""),
        s.fqdn()
    )
}

fn admin(port: u16) -> Value {
    json!({ "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } } })
}

fn router() -> Value {
    json!([{
        "name": "envoy.filters.http.router",
        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }
    }])
}

fn original_dst_filter() -> Value {
    json!([{
        "name": "envoy.filters.listener.original_dst",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
        }
    }])
}

fn hcm(stat_prefix: &str, route_config: Value) -> Value {
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            "codec_type": "AUTO",
            "route_config": route_config,
            "http_filters": router(),
            // Istio sets these on sidecars: no idle stream timeout surprises under load.
            "stream_idle_timeout": "0s",
            "normalize_path": true,
            "use_remote_address": false
        }
    })
}

/// Istio's default per-route retry policy (a route whose rule sets no `retries`).
fn istio_retry_policy() -> Value {
    retry_policy(
        "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
        2,
        None,
    )
}

/// Istio's translation of a rule's `retries`: its conditions, count and per-try timeout, plus the
/// previous-hosts predicate (`retryIgnorePreviousHosts` defaults to true).
fn vs_retry_policy(r: &Retries) -> Value {
    retry_policy(r.retry_on, r.attempts, Some(r.per_try_timeout_s))
}

fn retry_policy(retry_on: &str, num_retries: u32, per_try_timeout_s: Option<u64>) -> Value {
    let mut p = json!({
        "retry_on": retry_on,
        "num_retries": num_retries,
        "retry_host_predicate": [{
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate" }
        }],
        "host_selection_retry_max_attempts": "5"
    });
    if let Some(t) = per_try_timeout_s {
        p["per_try_timeout"] = json!(format!("{t}s"));
    }
    p
}

/// The routes of one service's virtual host, in the VirtualService's rule order.
fn service_routes(s: &Service) -> Vec<Value> {
    let clusters: Vec<Value> = s
        .route()
        .iter()
        .map(|(subset, weight)| json!({ "name": outbound_cluster(s, Some(subset)), "weight": weight }))
        .collect();
    let canary = |timeout: String, retries: Value| {
        json!({
            "name": "canary",
            "match": { "prefix": "/" },
            "route": {
                "weighted_clusters": { "clusters": clusters },
                "timeout": timeout,
                "retry_policy": retries
            }
        })
    };
    match s.policy {
        RoutePolicy::Plain => vec![canary("0s".into(), istio_retry_policy())],
        RoutePolicy::Features => {
            let (header, value) = DEBUG_HEADER;
            vec![
                json!({
                    "name": "debug",
                    "match": {
                        "prefix": "/",
                        "headers": [{ "name": header, "string_match": { "exact": value } }]
                    },
                    "route": {
                        "cluster": outbound_cluster(s, Some(DEBUG_SUBSET)),
                        "timeout": "0s",
                        "retry_policy": istio_retry_policy()
                    }
                }),
                canary(format!("{ROUTE_TIMEOUT_S}s"), vs_retry_policy(&RETRIES)),
            ]
        }
    }
}

/// The outbound route table (Istio's RDS route named after the port): one virtual host per service.
fn outbound_routes(services: &[Service]) -> Value {
    let vhosts: Vec<Value> = services
        .iter()
        .map(|s| {
            json!({
                "name": format!("{}:{SERVICE_PORT}", s.fqdn()),
                "domains": s.domains(),
                "routes": service_routes(s)
            })
        })
        .collect();
    json!({ "name": SERVICE_PORT.to_string(), "virtual_hosts": vhosts, "validate_clusters": false })
}

fn static_cluster(name: &str, endpoints: &[(Ipv4Addr, u16)], http2: bool) -> Value {
    let lb_endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(ip, port)| {
            json!({ "endpoint": { "address": { "socket_address": {
                "address": ip.to_string(), "port_value": port } } } })
        })
        .collect();
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "10s",
        "lb_policy": "ROUND_ROBIN",
        "circuit_breakers": { "thresholds": [{
            "max_connections": 4294967295u32,
            "max_pending_requests": 4294967295u32,
            "max_requests": 4294967295u32,
            "max_retries": 4294967295u32
        }] },
        "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": lb_endpoints }] }
    });
    if http2 {
        c["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} }
            }
        });
    }
    c
}

/// What Istio writes for the DestinationRule `trafficPolicy` of [`TrafficPolicy::PoolOutlier`]:
/// circuit-breaker thresholds and outlier detection (success-rate ejection off, as Istio sets it).
fn apply_traffic_policy(cluster: &mut Value, traffic: TrafficPolicy) {
    if traffic != TrafficPolicy::PoolOutlier {
        return;
    }
    cluster["circuit_breakers"] = json!({ "thresholds": [{
        "max_connections": POOL.max_connections,
        "max_pending_requests": POOL.max_pending_requests,
        "max_requests": POOL.max_requests,
        "max_retries": POOL.max_retries
    }] });
    cluster["outlier_detection"] = json!({
        "consecutive_5xx": POOL.consecutive_5xx,
        "interval": format!("{}s", POOL.interval_s),
        "base_ejection_time": format!("{}s", POOL.base_ejection_s),
        "max_ejection_percent": POOL.max_ejection_percent,
        "enforcing_success_rate": 0
    });
    cluster["common_lb_config"] = json!({ "healthy_panic_threshold": { "value": 0.0 } });
}

/// Istio's three clusters per service port: all endpoints, subset v1, subset v2.
fn outbound_clusters(services: &[Service]) -> Vec<Value> {
    let mut clusters = Vec::new();
    for s in services {
        for subset in [None, Some("v1"), Some("v2")] {
            let eps: Vec<(Ipv4Addr, u16)> = s
                .subset_endpoints(subset)
                .iter()
                .map(|e| (e.ip, s.target_port))
                .collect();
            let mut cluster = static_cluster(&outbound_cluster(s, subset), &eps, s.http2);
            apply_traffic_policy(&mut cluster, s.traffic);
            clusters.push(cluster);
        }
    }
    clusters
}

/// A sidecar: outbound listener for `services`, inbound listener for the app ports of this pod
/// (`(port, http2)`, app reached at `pod_ip:port`).
pub fn sidecar(services: &[Service], pod_ip: Ipv4Addr, app_ports: &[(u16, bool)]) -> Value {
    let outbound = json!({
        "name": "virtualOutbound",
        "address": { "socket_address": { "address": "0.0.0.0", "port_value": OUTBOUND_PORT } },
        "use_original_dst": true,
        "listener_filters": original_dst_filter(),
        "filter_chains": [{
            "filter_chain_match": { "destination_port": SERVICE_PORT },
            "filters": [hcm(&format!("outbound_0.0.0.0_{SERVICE_PORT}"), outbound_routes(services))]
        }]
    });
    let mut clusters = outbound_clusters(services);
    let mut inbound_chains = Vec::new();
    for &(port, http2) in app_ports {
        let name = format!("inbound|{port}||");
        inbound_chains.push(json!({
            "filter_chain_match": { "destination_port": port },
            "filters": [hcm(&format!("inbound_0.0.0.0_{port}"), json!({
                "name": name,
                "virtual_hosts": [{
                    "name": format!("inbound|http|{port}"),
                    "domains": ["*"],
                    "routes": [{
                        "name": "default",
                        "match": { "prefix": "/" },
                        "route": { "cluster": name, "timeout": "0s" }
                    }]
                }],
                "validate_clusters": false
            }))]
        }));
        clusters.push(static_cluster(&name, &[(pod_ip, port)], http2));
    }
    let mut listeners = vec![outbound];
    if !inbound_chains.is_empty() {
        listeners.push(json!({
            "name": "virtualInbound",
            "address": { "socket_address": { "address": "0.0.0.0", "port_value": INBOUND_PORT } },
            "listener_filters": original_dst_filter(),
            "filter_chains": inbound_chains
        }));
    }
    json!({
        "node": { "id": format!("sidecar~{pod_ip}~bench"), "cluster": "bench" },
        "admin": admin(SIDECAR_ADMIN_PORT),
        "static_resources": { "listeners": listeners, "clusters": clusters }
    })
}

/// The shared node Envoy: one listener on `listen:port`, routing on `Host` (clients address the VIP).
pub fn node(services: &[Service], listen: Ipv4Addr, port: u16, admin_port: u16) -> Value {
    json!({
        "node": { "id": "node~bench", "cluster": "bench" },
        "admin": admin(admin_port),
        "static_resources": {
            "listeners": [{
                "name": format!("{listen}_{port}"),
                "address": { "socket_address": { "address": listen.to_string(), "port_value": port } },
                "filter_chains": [{
                    "filters": [hcm("node_http", outbound_routes(services))]
                }]
            }],
            "clusters": outbound_clusters(services)
        }
    })
}

/// Sum of `upstream_rq_total` over clusters whose name starts with `cluster.<prefix>|` in the text
/// output of Envoy's admin `/stats`.
pub fn sum_upstream_rq(stats_text: &str, prefix: &str) -> u64 {
    let want = format!("cluster.{prefix}|");
    stats_text
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, _)| k.starts_with(&want) && k.ends_with(".upstream_rq_total"))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::mesh::{vip, Endpoint, TrafficPolicy, APP_PORT_H1};

    #[test]
    fn sums_only_the_asked_direction() {
        let text = "cluster.outbound|80|v1|b.bench.svc.cluster.local.upstream_rq_total: 7\n\
                    cluster.outbound|80|v2|b.bench.svc.cluster.local.upstream_rq_total: 3\n\
                    cluster.outbound|80|v2|b.bench.svc.cluster.local.upstream_rq_200: 3\n\
                    cluster.inbound|8080||.upstream_rq_total: 5\n";
        assert_eq!(sum_upstream_rq(text, "outbound"), 10);
        assert_eq!(sum_upstream_rq(text, "inbound"), 5);
    }

    fn service(policy: RoutePolicy) -> Service {
        Service {
            name: "b".into(),
            vip: vip(0),
            target_port: APP_PORT_H1,
            http2: false,
            app: "b".into(),
            endpoints: vec![Endpoint {
                pod: "p".into(),
                ip: Ipv4Addr::new(10, 244, 9, 10),
                version: "v1".into(),
            }],
            v1_weight: 90,
            policy,
            traffic: TrafficPolicy::None,
        }
    }

    fn routes(c: &Value) -> &Value {
        &c["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            ["route_config"]["virtual_hosts"][0]["routes"]
    }

    #[test]
    fn sidecar_has_weighted_route_and_three_clusters_per_service() {
        let c = sidecar(
            &[service(RoutePolicy::Plain)],
            Ipv4Addr::new(10, 244, 9, 2),
            &[(8080, false)],
        );
        let clusters = c["static_resources"]["clusters"].as_array().map(Vec::len);
        assert_eq!(clusters, Some(4));
        let routes = routes(&c);
        assert_eq!(routes.as_array().map(Vec::len), Some(1));
        let route = &routes[0]["route"];
        assert_eq!(route["weighted_clusters"]["clusters"][1]["weight"], 10);
        assert_eq!(route["timeout"], "0s");
        assert_eq!(route["retry_policy"]["num_retries"], 2);
        assert!(route["retry_policy"]["per_try_timeout"].is_null());
    }

    #[test]
    fn features_put_the_header_route_first_and_retries_and_timeout_on_the_canary() {
        let c = node(
            &[service(RoutePolicy::Features)],
            Ipv4Addr::new(10, 244, 9, 1),
            15080,
            15000,
        );
        let routes = routes(&c);
        assert_eq!(routes.as_array().map(Vec::len), Some(2));
        let debug = &routes[0];
        assert_eq!(debug["match"]["prefix"], "/");
        assert_eq!(debug["match"]["headers"][0]["name"], "x-bench-debug");
        assert_eq!(debug["match"]["headers"][0]["string_match"]["exact"], "1");
        assert_eq!(
            debug["route"]["cluster"],
            "outbound|80|v2|b.bench.svc.cluster.local"
        );
        let canary = &routes[1];
        assert!(canary["match"]["headers"].is_null());
        assert_eq!(canary["route"]["timeout"], "5s");
        let retry = &canary["route"]["retry_policy"];
        assert_eq!(retry["retry_on"], "connect-failure,refused-stream,5xx");
        assert_eq!(retry["num_retries"], 2);
        assert_eq!(retry["per_try_timeout"], "2s");
        assert_eq!(
            canary["route"]["weighted_clusters"]["clusters"][0]["name"],
            "outbound|80|v1|b.bench.svc.cluster.local"
        );
    }
}
