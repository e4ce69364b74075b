//! Locality load balancing: Node topology labels and pod `spec.nodeName` give every endpoint a
//! locality, `keel run --node-name` gives the clients theirs, and a DestinationRule's
//! `localityLbSetting` (with the mesh default `{enabled: true}`) decides where traffic goes.
//!
//! Two zones: node `node-a` (r1/z1) hosts the client and `reviews-z1a`, `reviews-z1b`; node
//! `node-b` (r1/z2) hosts `reviews-z2a`, `reviews-z2b`. Keel runs as node-a's proxy.
//!
//! Subnet indices 140..=144 belong to this file.

mod common;

use anyhow::{ensure, Result};
use common::{ensure_all_ok_via_proxy, ensure_binomial, Fixture};
use keel_tests::{HttpGetReport, Keel, KeelOptions};

const PREFIX: &str = "ktlocal";
/// Requests per run.
const REQUESTS: u32 = 1_000;
/// Backends as `(version, node)`; pods are `reviews-<version>`.
const BACKENDS: [(&str, &str); 4] = [
    ("z1a", "node-a"),
    ("z1b", "node-a"),
    ("z2a", "node-b"),
    ("z2b", "node-b"),
];

const NODES: &str = "\
apiVersion: v1
kind: Node
metadata:
  name: node-a
  labels:
    topology.kubernetes.io/region: r1
    topology.kubernetes.io/zone: z1
---
apiVersion: v1
kind: Node
metadata:
  name: node-b
  labels:
    topology.kubernetes.io/region: r1
    topology.kubernetes.io/zone: z2
";

/// Labels as written in a test.
type Labels<'a> = &'a [(&'a str, &'a str)];

/// The reviews fixture over both zones, with the Node resources and every pod's `nodeName`
/// (clients run on node-a). `clients` are extra client pods `(name, suffix, labels)`;
/// `extra_labels` adds labels to named pods.
fn two_zones(
    index: u8,
    clients: &[(&str, u8, Labels<'_>)],
    extra_labels: &[(&str, Labels<'_>)],
) -> Result<Fixture> {
    let versions: Vec<&str> = BACKENDS.iter().map(|(v, _)| *v).collect();
    let mut fx = Fixture::reviews(PREFIX, index, &versions)?;
    for (name, suffix, labels) in clients {
        fx.add_pod(name, *suffix, labels, &[], false)?;
    }
    fx.config.write("nodes.yaml", NODES)?;
    // `Fixture` writes pods without a node; write them again with theirs.
    let docs: Vec<String> = fx
        .specs
        .iter()
        .map(|s| {
            let mut labels: Vec<(&str, &str)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            for (pod, extra) in extra_labels {
                if *pod == s.pod.name {
                    labels.extend_from_slice(extra);
                }
            }
            let annotations: Vec<(&str, &str)> = s
                .annotations
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let node = BACKENDS
                .iter()
                .find(|(v, _)| s.pod.name == format!("reviews-{v}"))
                .map_or("node-a", |(_, n)| n);
            format!(
                "{}spec:\n  nodeName: {node}\n",
                keel_tests::pod_yaml(&s.pod, &labels, &annotations)
            )
        })
        .collect();
    fx.config.write("pods.yaml", &docs.join("---\n"))?;
    Ok(fx)
}

/// Keel as node-a's proxy (after `keel validate` accepts the config).
fn start_on_node_a(fx: &Fixture) -> Result<Keel> {
    let out = keel_tests::keel::validate(fx.config.path())?;
    ensure!(
        out.code == Some(0),
        "keel rejects this valid Istio config:\n{}",
        out.combined().trim()
    );
    let mut opts = KeelOptions::new(&fx.net, fx.config.path())?;
    opts.extra_args = vec!["--node-name".into(), "node-a".into()];
    Keel::start_with(&fx.net, opts)
}

/// A DestinationRule for reviews with `load_balancer` lines (indented under `loadBalancer:`) and
/// outlier detection when `outlier_detection`.
fn destination_rule(load_balancer: &[&str], outlier_detection: bool) -> String {
    let mut y = String::from(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: reviews\n  namespace: default\nspec:\n  host: reviews\n  trafficPolicy:\n",
    );
    if !load_balancer.is_empty() {
        y.push_str("    loadBalancer:\n");
        for l in load_balancer {
            y.push_str(&format!("      {l}\n"));
        }
    }
    if outlier_detection {
        y.push_str("    outlierDetection:\n      consecutive5xxErrors: 5\n      interval: 10s\n      baseEjectionTime: 30s\n");
    }
    y
}

fn count(r: &HttpGetReport, version: &str) -> u64 {
    r.by_version.get(version).copied().unwrap_or(0)
}

/// Responses from zone z1 and from zone z2 (printed, for the record of a run).
fn zones(r: &HttpGetReport) -> (u64, u64) {
    eprintln!("responses by backend: {:?}", r.by_version);
    (
        count(r, "z1a") + count(r, "z1b"),
        count(r, "z2a") + count(r, "z2b"),
    )
}

#[test]
fn with_outlier_detection_all_traffic_stays_in_the_clients_zone() -> Result<()> {
    // Istio's default failover priorities apply once the cluster has outlier detection: same
    // zone is P0, and with every P0 endpoint healthy it takes all traffic.
    let fx = two_zones(140, &[], &[])?;
    fx.config
        .write("destinationrule.yaml", &destination_rule(&[], true))?;
    let _keel = start_on_node_a(&fx)?;

    let r = fx.get_reviews(REQUESTS)?;
    ensure_all_ok_via_proxy(&r, &fx.net)?;
    let (z1, z2) = zones(&r);
    ensure!(
        z1 == u64::from(REQUESTS) && z2 == 0,
        "z1 {z1}, z2 {z2}: {r:?}"
    );
    // Both same-zone endpoints share the load (least request over P0).
    ensure_binomial("reviews-z1a", count(&r, "z1a"), z1, 0.5)?;
    Ok(())
}

#[test]
fn distribute_80_20_between_zones() -> Result<()> {
    // `distribute` weights localities whether or not outlier detection is set.
    let fx = two_zones(141, &[], &[])?;
    fx.config.write(
        "destinationrule.yaml",
        &destination_rule(
            &[
                "localityLbSetting:",
                "  distribute:",
                "  - from: r1/z1/*",
                "    to: {\"r1/z1/*\": 80, \"r1/z2/*\": 20}",
            ],
            false,
        ),
    )?;
    let _keel = start_on_node_a(&fx)?;

    let r = fx.get_reviews(REQUESTS)?;
    ensure_all_ok_via_proxy(&r, &fx.net)?;
    let (z1, z2) = zones(&r);
    ensure!(z1 + z2 == u64::from(REQUESTS), "{r:?}");
    ensure_binomial("zone z1", z1, z1 + z2, 0.8)?;
    // Within a zone the weight is split evenly over its endpoints.
    ensure_binomial("reviews-z2a within z2", count(&r, "z2a"), z2, 0.5)?;
    Ok(())
}

#[test]
fn locality_lb_disabled_spreads_evenly_despite_outlier_detection() -> Result<()> {
    let fx = two_zones(142, &[], &[])?;
    fx.config.write(
        "destinationrule.yaml",
        &destination_rule(&["localityLbSetting: {enabled: false}"], true),
    )?;
    let _keel = start_on_node_a(&fx)?;

    let r = fx.get_reviews(REQUESTS)?;
    ensure_all_ok_via_proxy(&r, &fx.net)?;
    let (z1, z2) = zones(&r);
    ensure_binomial("zone z1", z1, z1 + z2, 0.5)?;
    for (v, _) in BACKENDS {
        ensure!(count(&r, v) > 0, "reviews-{v} got nothing: {r:?}");
    }
    Ok(())
}

#[test]
fn failover_priority_follows_each_clients_labels() -> Result<()> {
    // `failoverPriority: [track]`: endpoints whose `track` equals the client's are P0 (with outlier
    // detection). Two clients on one node with different labels get different endpoints: the
    // priorities are per client, as with sidecars.
    let fx = two_zones(
        143,
        &[("sleep-green", 3, &[("app", "sleep"), ("track", "green")])],
        &[
            ("sleep", &[("track", "blue")]),
            ("reviews-z1a", &[("track", "green")]),
            ("reviews-z1b", &[("track", "green")]),
            ("reviews-z2a", &[("track", "blue")]),
            ("reviews-z2b", &[("track", "blue")]),
        ],
    )?;
    fx.config.write(
        "destinationrule.yaml",
        &destination_rule(&["localityLbSetting:", "  failoverPriority: [track]"], true),
    )?;
    let _keel = start_on_node_a(&fx)?;

    let half = REQUESTS / 2;
    let blue = fx.get_reviews(half)?;
    ensure_all_ok_via_proxy(&blue, &fx.net)?;
    let (z1, z2) = zones(&blue);
    ensure!(
        z1 == 0 && z2 == u64::from(half),
        "blue client: z1 {z1}, z2 {z2}: {blue:?}"
    );
    let green_pod = fx
        .specs
        .iter()
        .find(|s| s.pod.name == "sleep-green")
        .map(|s| s.pod.clone())
        .ok_or_else(|| anyhow::anyhow!("no sleep-green pod"))?;
    let green = fx.get_from(&green_pod, common::REVIEWS_URL, common::reviews_vip(), half)?;
    ensure_all_ok_via_proxy(&green, &fx.net)?;
    let (z1, z2) = zones(&green);
    ensure!(
        z1 == u64::from(half) && z2 == 0,
        "green client: z1 {z1}, z2 {z2}: {green:?}"
    );
    Ok(())
}
