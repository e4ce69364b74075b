//! `/clusters` as Envoy prints it: `<cluster>::<field>::<value>` lines (`::observability_name::`,
//! `::default_priority::max_connections::`, ..., and per endpoint `<cluster>::<ip:port>::cx_active::`,
//! `::rq_active::`, `::rq_total::`, `::health_flags::`, `::weight::`, `::region::`, `::zone::`,
//! `::sub_zone::`), or `?format=json` in Envoy's `cluster_statuses` shape.
//!
//! Health and load are per client pod here, as each sidecar has its own. `?client=<ns>/<pod>` shows
//! that pod's view only. Without it, counts are summed over the clients, `health_flags` is
//! `/failed_outlier_check` when any client ejects the endpoint, and a Keel line
//! `<cluster>::<ip:port>::ejected_by::<ns>/<pod>,...` names those clients.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::state::NodeState;
use crate::upstream::breaker::RetryLimit;
use crate::upstream::client::HostView;
use crate::upstream::{ClientId, Cluster};

/// One endpoint of one cluster, as the admin reports it.
#[derive(Debug, Default, Clone)]
struct Endpoint {
    cx_active: u64,
    rq_active: u64,
    rq_total: u64,
    weight: u32,
    region: String,
    zone: String,
    sub_zone: String,
    /// Clients whose outlier detection ejects it now.
    ejected_by: Vec<String>,
}

/// One cluster name's limits and endpoints.
#[derive(Debug, Default)]
struct ClusterView {
    limits: Vec<(&'static str, String)>,
    endpoints: BTreeMap<SocketAddr, Endpoint>,
}

/// The name of a client's state: its pod, or `node` for node-wide state.
fn client_name(node: &NodeState, id: ClientId) -> String {
    if id == ClientId::NODE {
        return "node".to_string();
    }
    match node.pod_by_cgroup.get(&id.0) {
        Some(pod) => node.pod_name(*pod),
        None => format!("cgroup:{}", id.0),
    }
}

fn limits(cluster: &Cluster) -> Vec<(&'static str, String)> {
    let l = &cluster.pool_config().limits;
    let retries = match l.retries {
        RetryLimit::Max(n) => n.to_string(),
        RetryLimit::Budget {
            min_concurrency, ..
        } => min_concurrency.to_string(),
    };
    vec![
        ("max_connections", l.max_connections.to_string()),
        ("max_pending_requests", l.max_pending_requests.to_string()),
        ("max_requests", l.max_requests.to_string()),
        ("max_retries", retries),
    ]
}

/// Every cluster's view: `client` = that client's only, else every client's summed.
fn collect(
    clusters: &[Arc<Cluster>],
    node: &NodeState,
    client: Option<ClientId>,
) -> BTreeMap<String, ClusterView> {
    let mut out: BTreeMap<String, ClusterView> = BTreeMap::new();
    for cluster in clusters {
        let view = out.entry(cluster.key.to_string()).or_default();
        view.limits = limits(cluster);
        let set = cluster.endpoint_set();
        for (i, addr) in set.addrs.iter().enumerate() {
            let e = view.endpoints.entry(*addr).or_default();
            e.weight = 1;
            if let Some(t) = set.topology.get(i) {
                e.region.clone_from(&t.locality.region);
                e.zone.clone_from(&t.locality.zone);
                e.sub_zone.clone_from(&t.locality.subzone);
            }
        }
        let states = match client {
            Some(id) => cluster
                .client_state(id)
                .map(|c| vec![(id, c)])
                .unwrap_or_default(),
            None => cluster.client_states(),
        };
        for (id, state) in states {
            for h in state.host_views(&set) {
                let HostView {
                    addr,
                    weight,
                    rq_total,
                    rq_active,
                    cx_active,
                    ejected,
                } = h;
                let e = view.endpoints.entry(addr).or_default();
                e.weight = weight;
                e.rq_total += rq_total;
                e.rq_active += u64::from(rq_active);
                e.cx_active += u64::from(cx_active);
                if ejected {
                    e.ejected_by.push(client_name(node, id));
                }
            }
        }
    }
    out
}

fn health_flags(e: &Endpoint) -> &'static str {
    if e.ejected_by.is_empty() {
        "healthy"
    } else {
        "/failed_outlier_check"
    }
}

/// Envoy's `/clusters` text.
pub fn text(clusters: &[Arc<Cluster>], node: &NodeState, client: Option<ClientId>) -> String {
    let mut out = String::new();
    for (name, view) in collect(clusters, node, client) {
        out.push_str(&format!("{name}::observability_name::{name}\n"));
        for (limit, value) in &view.limits {
            out.push_str(&format!("{name}::default_priority::{limit}::{value}\n"));
        }
        out.push_str(&format!("{name}::added_via_api::true\n"));
        for (addr, e) in &view.endpoints {
            let host = format!("{name}::{addr}");
            out.push_str(&format!("{host}::cx_active::{}\n", e.cx_active));
            out.push_str(&format!("{host}::rq_active::{}\n", e.rq_active));
            out.push_str(&format!("{host}::rq_total::{}\n", e.rq_total));
            out.push_str(&format!("{host}::health_flags::{}\n", health_flags(e)));
            out.push_str(&format!("{host}::weight::{}\n", e.weight));
            out.push_str(&format!("{host}::region::{}\n", e.region));
            out.push_str(&format!("{host}::zone::{}\n", e.zone));
            out.push_str(&format!("{host}::sub_zone::{}\n", e.sub_zone));
            if client.is_none() && !e.ejected_by.is_empty() {
                out.push_str(&format!("{host}::ejected_by::{}\n", e.ejected_by.join(",")));
            }
        }
    }
    out
}

/// Envoy's `/clusters?format=json` (`cluster_statuses`; counters as strings, as Envoy's proto JSON
/// writes 64-bit integers), plus `ejected_by` per host.
pub fn json(
    clusters: &[Arc<Cluster>],
    node: &NodeState,
    client: Option<ClientId>,
) -> serde_json::Value {
    let statuses: Vec<serde_json::Value> = collect(clusters, node, client)
        .into_iter()
        .map(|(name, view)| {
            let hosts: Vec<serde_json::Value> = view
                .endpoints
                .iter()
                .map(|(addr, e)| {
                    serde_json::json!({
                        "address": {"socket_address": {
                            "address": addr.ip().to_string(),
                            "port_value": addr.port(),
                        }},
                        "stats": [
                            {"name": "cx_active", "type": "GAUGE", "value": e.cx_active.to_string()},
                            {"name": "rq_active", "type": "GAUGE", "value": e.rq_active.to_string()},
                            {"name": "rq_total", "value": e.rq_total.to_string()},
                        ],
                        "health_status": {
                            "eds_health_status": "HEALTHY",
                            "failed_outlier_check": !e.ejected_by.is_empty(),
                        },
                        "weight": e.weight,
                        "locality": {"region": e.region, "zone": e.zone, "sub_zone": e.sub_zone},
                        "ejected_by": e.ejected_by,
                    })
                })
                .collect();
            let thresholds: serde_json::Map<String, serde_json::Value> = view
                .limits
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone())))
                .collect();
            serde_json::json!({
                "name": name,
                "observability_name": name,
                "added_via_api": true,
                "circuit_breakers": {"thresholds": [thresholds]},
                "host_statuses": hosts,
            })
        })
        .collect();
    serde_json::json!({ "cluster_statuses": statuses })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{
        ClusterKey, ClusterPolicy, ClusterRegistry, Discovery, UpstreamProtocol,
    };

    fn cluster() -> Arc<Cluster> {
        ClusterRegistry::default().ensure(
            ClusterKey {
                host: "reviews.default.svc.cluster.local".into(),
                port: 9080,
                subset: Some("v1".into()),
                scope: String::new(),
            },
            UpstreamProtocol::Http1,
            ClusterPolicy::default(),
            Discovery::Static,
            vec![SocketAddr::from(([10, 244, 1, 2], 9080))],
        )
    }

    #[test]
    fn text_names_every_endpoint_field_as_envoy() {
        let node = NodeState::default();
        let out = text(&[cluster()], &node, None);
        let c = "outbound|9080|v1|reviews.default.svc.cluster.local";
        for line in [
            format!("{c}::observability_name::{c}"),
            format!("{c}::default_priority::max_connections::4294967295"),
            format!("{c}::10.244.1.2:9080::cx_active::0"),
            format!("{c}::10.244.1.2:9080::rq_total::0"),
            format!("{c}::10.244.1.2:9080::health_flags::healthy"),
            format!("{c}::10.244.1.2:9080::weight::1"),
            format!("{c}::10.244.1.2:9080::zone::"),
        ] {
            assert!(out.lines().any(|l| l == line), "no {line:?} in\n{out}");
        }
    }

    #[test]
    fn json_has_cluster_statuses() {
        let node = NodeState::default();
        let v = json(&[cluster()], &node, None);
        let host = &v["cluster_statuses"][0]["host_statuses"][0];
        assert_eq!(
            host["address"]["socket_address"]["address"],
            serde_json::json!("10.244.1.2")
        );
        assert_eq!(
            host["health_status"]["failed_outlier_check"],
            serde_json::json!(false)
        );
    }
}
