//! `/config_dump`: the active snapshot (services with ports and endpoints, VirtualServices,
//! DestinationRules and the other Istio kinds with where each came from), the config generation,
//! the latest load's rejections (each with its reason and whether its previous version keeps
//! serving) and the kernel's state (map occupancy, meshed destinations, pod cgroups).

use std::collections::HashMap;
use std::net::SocketAddr;

use serde_json::{json, Value};

use super::AdminContext;
use crate::policy::Meta;

/// `file:line` of a resource, or `-` when it came from elsewhere.
fn source(meta: &Meta) -> String {
    match (&meta.file, meta.line) {
        (Some(file), Some(line)) => format!("{file}:{line}"),
        (Some(file), None) => file.clone(),
        _ => "-".to_string(),
    }
}

fn resource(meta: &Meta) -> Value {
    json!({"name": meta.display_name(), "source": source(meta)})
}

/// The whole dump.
pub fn dump(ctx: &AdminContext) -> Value {
    let node = ctx.state.load();
    let snap = &node.snapshot;
    // Each Kubernetes Service port's endpoints, from its subset-less cluster.
    let mut endpoints: HashMap<(String, u16), Vec<SocketAddr>> = HashMap::new();
    for cluster in ctx.state.clusters() {
        if cluster.key.subset.is_none() {
            endpoints
                .entry((cluster.key.host.clone(), cluster.key.port))
                .or_default()
                .extend(cluster.endpoint_addrs());
        }
    }
    let services: Vec<Value> = snap
        .services
        .iter()
        .map(|s| {
            let ports: Vec<Value> = s
                .ports
                .iter()
                .map(|p| {
                    let mut eps = endpoints
                        .get(&(s.hostname.clone(), p.port))
                        .cloned()
                        .unwrap_or_default();
                    eps.sort();
                    eps.dedup();
                    json!({
                        "name": p.name,
                        "port": p.port,
                        "protocol": format!("{:?}", p.protocol),
                        "endpoints": eps.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json!({
                "host": s.hostname,
                "name": s.meta.display_name(),
                "source": source(&s.meta),
                "cluster_ips": s.cluster_ips,
                "ip_families": s.ip_families,
                "ports": ports,
            })
        })
        .collect();
    let status = ctx
        .config_status
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    let kernel = (ctx.kernel_stats)();
    let mut pod_cgroups: Vec<Value> = node
        .pod_by_cgroup
        .iter()
        .map(|(cgroup, pod)| {
            let mut entry = json!({"cgroup_id": cgroup, "pod": node.pod_name(*pod)});
            // The pod's Istio traffic annotations, as the kernel applies them.
            if let Some(t) = snap.pods.get(*pod).and_then(|p| p.traffic.as_ref()) {
                entry["traffic"] = crate::pods::traffic::to_json(t);
            }
            entry
        })
        .collect();
    pod_cgroups.sort_by_key(|v| v["pod"].as_str().map(str::to_owned));
    json!({
        "generation": ctx.stats.config_reloads.get().saturating_add(1),
        "services": services,
        "virtual_services": snap.virtual_services.iter().map(|v| {
            let mut r = resource(&v.meta);
            r["hosts"] = json!(v.hosts);
            r
        }).collect::<Vec<_>>(),
        "destination_rules": snap.destination_rules.iter().map(|d| {
            let mut r = resource(&d.meta);
            r["host"] = json!(d.host);
            r["subsets"] = json!(d.subsets.iter().map(|s| s.name.clone()).collect::<Vec<_>>());
            r
        }).collect::<Vec<_>>(),
        "service_entries": snap.service_entries.iter().map(|e| resource(&e.meta)).collect::<Vec<_>>(),
        "sidecars": snap.sidecars.iter().map(|e| resource(&e.meta)).collect::<Vec<_>>(),
        "gateways": snap.gateways.iter().map(|e| resource(&e.meta)).collect::<Vec<_>>(),
        "captured_pods": node.pod_by_cgroup.values().map(|p| node.pod_name(*p)).collect::<Vec<_>>(),
        "meshed_destinations": snap.meshed_destinations(),
        "rejected": status.rejected,
        "warnings": status.warnings,
        "kernel": {
            "maps": kernel.as_ref().map(|k| k.maps.clone()).unwrap_or_default(),
            "meshed_destinations": snap.meshed_destinations().len(),
            "pod_cgroups": pod_cgroups,
        },
    })
}
