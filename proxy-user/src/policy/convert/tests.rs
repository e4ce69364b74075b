//! Table tests for conversion and validation, and the shipped config directories.

use std::path::PathBuf;

use super::*;
use crate::source::split_documents;

fn config_dir(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("config").join(rel)
}

fn load(yaml: &str) -> LoadReport {
    build(&split_documents("test.yaml", yaml))
}

fn assert_clean(dir: &str) -> LoadReport {
    let path = config_dir(dir);
    let report = load_dir(&path).unwrap_or_else(|e| panic!("{e}"));
    let errors: Vec<String> = report.errors.iter().map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{dir} has errors:\n{}", errors.join("\n"));
    report
}

#[test]
fn demo_loads_cleanly() {
    let report = assert_clean("demo");
    let warnings: Vec<String> = report.warnings.iter().map(|w| w.to_string()).collect();
    assert!(warnings.is_empty(), "demo has warnings:\n{}", warnings.join("\n"));
    let s = &report.snapshot;
    assert_eq!(s.services.len(), 4);
    assert_eq!(s.pods.len(), 7);
    let reviews = s.service_by_host["reviews.default.svc.cluster.local"];
    let vip: std::net::IpAddr = "10.96.10.12".parse().expect("ip");
    assert_eq!(s.service_by_vip[&(vip, 9080)], (reviews, 0));
    assert_eq!(s.services[reviews].ports[0].protocol, Protocol::Http);
    let vs = &s.virtual_services[0];
    assert_eq!(vs.hosts, vec!["reviews.default.svc.cluster.local"]);
    let HttpAction::Route(dests) = &vs.http[0].action else {
        panic!("expected a route action");
    };
    let split: Vec<(Option<&str>, u32)> = dests
        .iter()
        .map(|d| (d.destination.subset.as_deref(), d.weight))
        .collect();
    assert_eq!(split, vec![(Some("v1"), 10), (Some("v2"), 10), (Some("v3"), 80)]);
    let dr = s
        .destination_rules
        .iter()
        .find(|d| d.host == "reviews.default.svc.cluster.local")
        .expect("reviews DR");
    let v3 = dr.subset("v3").expect("v3");
    assert_eq!(s.endpoints(reviews, 0, Some(&v3.labels)).len(), 1);
    assert_eq!(s.endpoints(reviews, 0, None).len(), 3);
    assert!(s.pod_by_name.contains_key("default/sleep"));
    assert_eq!(
        crate::policy::summary(&report),
        "4 services, 7 pods, 1 virtual service, 4 destination rules"
    );
}
