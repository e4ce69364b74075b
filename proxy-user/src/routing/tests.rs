//! Table tests for request matching and route selection.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;

use super::*;
use crate::policy::{
    Destination, DestinationRule, Headers, HttpRoute, Meta, Pod, Protocol, Service, ServicePort,
    Snapshot, Subset, TargetPort, VirtualService, WeightedDestination,
};
use crate::upstream::ClusterRegistry;

fn meta(kind: &str, ns: &str, name: &str, order: usize) -> Meta {
    Meta {
        kind: kind.into(),
        namespace: ns.into(),
        name: name.into(),
        file: None,
        line: None,
        creation_timestamp: None,
        order,
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn exact(s: &str) -> StringMatch {
    StringMatch::Exact(s.into())
}

fn regex(s: &str) -> StringMatch {
    StringMatch::Regex(regex::Regex::new(&format!("^(?:{s})$")).expect("test regex"))
}

const HOST: &str = "reviews.default.svc.cluster.local";

fn dest(subset: &str, weight: u32) -> WeightedDestination {
    WeightedDestination {
        destination: Destination {
            host: HOST.into(),
            subset: Some(subset.into()),
            port: None,
        },
        weight,
        headers: Headers::default(),
    }
}

fn http_route(matches: Vec<HttpMatch>, dests: Vec<WeightedDestination>) -> HttpRoute {
    HttpRoute {
        name: None,
        matches,
        action: HttpAction::Route(dests),
        rewrite: None,
        timeout: None,
        retries: None,
        fault: None,
        mirrors: Vec::new(),
        cors_policy: None,
        headers: Headers::default(),
    }
}

/// reviews with pods v1/v2/v3 and a DR defining those subsets; `http` becomes its VirtualService.
fn snapshot(http: Vec<HttpRoute>) -> Snapshot {
    let vip: IpAddr = "10.96.0.20".parse().expect("ip");
    let mut snap = Snapshot::default();
    snap.services.push(Service {
        meta: meta("Service", "default", "reviews", 0),
        hostname: HOST.into(),
        cluster_ips: vec![vip],
        ports: vec![ServicePort {
            name: Some("http".into()),
            port: 9080,
            target_port: TargetPort::Number(9080),
            protocol: Protocol::Http,
        }],
        selector: Some(labels(&[("app", "reviews")])),
    });
    for (i, v) in ["v1", "v2", "v3"].iter().enumerate() {
        snap.pods.push(Pod {
            meta: meta("Pod", "default", &format!("reviews-{v}"), i + 1),
            labels: labels(&[("app", "reviews"), ("version", v)]),
            annotations: Labels::new(),
            ips: vec![format!("10.244.0.{}", 10 + i).parse().expect("ip")],
            ready: true,
            capture: true,
            container_ports: Vec::new(),
        });
    }
    snap.service_by_vip.insert((vip, 9080), (0, 0));
    snap.service_by_host.insert(HOST.into(), 0);
    snap.destination_rules.push(DestinationRule {
        meta: meta("DestinationRule", "default", "reviews", 10),
        host: HOST.into(),
        traffic_policy: None,
        subsets: ["v1", "v2", "v3"]
            .iter()
            .map(|v| Subset {
                name: v.to_string(),
                labels: labels(&[("version", v)]),
                traffic_policy: None,
            })
            .collect(),
        export_to: Vec::new(),
        workload_selector: None,
    });
    if !http.is_empty() {
        snap.virtual_services.push(VirtualService {
            meta: meta("VirtualService", "default", "reviews", 11),
            hosts: vec![HOST.into()],
            gateways: Vec::new(),
            http,
            tcp: Vec::new(),
            tls: Vec::new(),
            export_to: Vec::new(),
        });
    }
    snap
}

fn client(ns: &str, pairs: &[(&str, &str)]) -> ClientInfo {
    ClientInfo {
        namespace: ns.into(),
        labels: labels(pairs),
    }
}

/// Route `path` with `headers` and return the chosen subset, or what else happened.
fn decide(snap: &Snapshot, client: &ClientInfo, path: &str, headers: &[(&str, &str)]) -> String {
    let registry = ClusterRegistry::default();
    let table = RouteTable::build(snap, &registry);
    let routes = table
        .lookup(SocketAddr::from(([10, 96, 0, 20], 9080)))
        .expect("service port in table");
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            v.parse().expect("value"),
        );
    }
    let facts = RequestFacts {
        method: "GET",
        path_and_query: path,
        authority: "reviews:9080",
        scheme: "http",
        headers: &map,
    };
    match route_http(routes, client, &facts) {
        RouteDecision::Forward { target, .. } => match target {
            Target::Cluster(c) => c.key.subset.clone().unwrap_or_else(|| "default".into()),
            Target::Missing(k) => format!("missing {k}"),
        },
        RouteDecision::Local(_) => "local".into(),
        RouteDecision::NoRoute => "404".into(),
        RouteDecision::NoDestination => "no destination".into(),
    }
}

#[test]
fn no_virtual_service_uses_the_default_route_with_all_endpoints() {
    let snap = snapshot(Vec::new());
    let registry = ClusterRegistry::default();
    let table = RouteTable::build(&snap, &registry);
    let routes = table
        .lookup(SocketAddr::from(([10, 96, 0, 20], 9080)))
        .expect("route");
    match &routes.default_target {
        Target::Cluster(c) => assert_eq!(c.endpoint_addrs().len(), 3),
        Target::Missing(k) => panic!("default route missing: {k}"),
    }
    assert_eq!(decide(&snap, &client("default", &[]), "/", &[]), "default");
}

#[test]
fn first_matching_rule_wins_in_order() {
    let by_header = HttpMatch {
        headers: vec![("end-user".into(), exact("jason"))],
        ..Default::default()
    };
    let snap = snapshot(vec![
        http_route(vec![by_header], vec![dest("v2", 100)]),
        http_route(Vec::new(), vec![dest("v1", 100)]),
        http_route(Vec::new(), vec![dest("v3", 100)]),
    ]);
    let c = client("default", &[]);
    let cases = [
        (vec![("end-user", "jason")], "v2"),
        (vec![("end-user", "Jason")], "v1"),
        (vec![], "v1"),
    ];
    for (headers, want) in cases {
        assert_eq!(
            decide(&snap, &c, "/", &headers),
            want,
            "headers {headers:?}"
        );
    }
}

#[test]
fn conditions_in_a_block_are_anded_blocks_are_ored() {
    let both = HttpMatch {
        uri: Some(StringMatch::Prefix("/api".into())),
        headers: vec![("x-canary".into(), exact("1"))],
        ..Default::default()
    };
    let other = HttpMatch {
        uri: Some(exact("/beta")),
        ..Default::default()
    };
    let snap = snapshot(vec![http_route(vec![both, other], vec![dest("v3", 1)])]);
    let c = client("default", &[]);
    let cases = [
        ("/api/x", vec![("x-canary", "1")], "v3"),
        ("/api/x", vec![], "404"),
        ("/beta", vec![], "v3"),
        ("/beta?x=1", vec![], "v3"),
        ("/betax", vec![], "404"),
    ];
    for (path, headers, want) in cases {
        assert_eq!(
            decide(&snap, &c, path, &headers),
            want,
            "{path} {headers:?}"
        );
    }
}

#[test]
fn string_matches_follow_envoy() {
    // (match block, :path, request headers, expected)
    type Case<'a> = (HttpMatch, &'a str, Vec<(&'a str, &'a str)>, bool);
    let cases: Vec<Case> = vec![
        // Regex is a full match.
        (
            HttpMatch {
                query_params: vec![("id".into(), regex(r"\d+"))],
                ..Default::default()
            },
            "/?id=123",
            vec![],
            true,
        ),
        (
            HttpMatch {
                query_params: vec![("id".into(), regex(r"\d+"))],
                ..Default::default()
            },
            "/?id=a123",
            vec![],
            false,
        ),
        // Exact empty query value matches `?key` and `?key=`.
        (
            HttpMatch {
                query_params: vec![("debug".into(), exact(""))],
                ..Default::default()
            },
            "/?debug",
            vec![],
            true,
        ),
        // Only the first occurrence of a query parameter counts.
        (
            HttpMatch {
                query_params: vec![("v".into(), exact("2"))],
                ..Default::default()
            },
            "/?v=1&v=2",
            vec![],
            false,
        ),
        // Presence.
        (
            HttpMatch {
                headers: vec![("x-debug".into(), StringMatch::Present)],
                ..Default::default()
            },
            "/",
            vec![("x-debug", "")],
            true,
        ),
        // withoutHeaders: absent header with a value matcher counts as "" (no match -> block holds).
        (
            HttpMatch {
                without_headers: vec![("end-user".into(), exact("jason"))],
                ..Default::default()
            },
            "/",
            vec![],
            true,
        ),
        (
            HttpMatch {
                without_headers: vec![("end-user".into(), exact("jason"))],
                ..Default::default()
            },
            "/",
            vec![("end-user", "jason")],
            false,
        ),
        // withoutHeaders {}: header must be absent.
        (
            HttpMatch {
                without_headers: vec![("x-debug".into(), StringMatch::Present)],
                ..Default::default()
            },
            "/",
            vec![("x-debug", "1")],
            false,
        ),
        // Prefix is case-sensitive unless ignoreUriCase.
        (
            HttpMatch {
                uri: Some(StringMatch::Prefix("/API".into())),
                ..Default::default()
            },
            "/api/v1",
            vec![],
            false,
        ),
        (
            HttpMatch {
                uri: Some(StringMatch::Prefix("/API".into())),
                ignore_uri_case: true,
                ..Default::default()
            },
            "/api/v1",
            vec![],
            true,
        ),
        // Authority includes the port the client sent.
        (
            HttpMatch {
                authority: Some(exact("reviews")),
                ..Default::default()
            },
            "/",
            vec![],
            false,
        ),
        // Multiple header values are joined with ','.
        (
            HttpMatch {
                headers: vec![("x-tag".into(), exact("a,b"))],
                ..Default::default()
            },
            "/",
            vec![("x-tag", "a"), ("x-tag", "b")],
            true,
        ),
    ];
    for (i, (m, path, headers, want)) in cases.into_iter().enumerate() {
        let mut map = HeaderMap::new();
        for (k, v) in &headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        let facts = RequestFacts {
            method: "GET",
            path_and_query: path,
            authority: "reviews:9080",
            scheme: "http",
            headers: &map,
        };
        assert_eq!(
            request_match(&m, &facts),
            want,
            "case {i}: {path} {headers:?}"
        );
    }
}

#[test]
fn source_labels_only_virtual_service_falls_back_to_default_for_other_clients() {
    let from_v2_clients = HttpMatch {
        source_labels: Some(labels(&[("app", "productpage"), ("version", "v2")])),
        ..Default::default()
    };
    let snap = snapshot(vec![http_route(vec![from_v2_clients], vec![dest("v3", 1)])]);
    assert_eq!(
        decide(
            &snap,
            &client("default", &[("app", "productpage"), ("version", "v2")]),
            "/",
            &[]
        ),
        "v3"
    );
    assert_eq!(
        decide(
            &snap,
            &client("default", &[("app", "productpage")]),
            "/",
            &[]
        ),
        "default"
    );
}

#[test]
fn port_and_namespace_conditions_are_static() {
    let other_port = HttpMatch {
        port: Some(8080),
        ..Default::default()
    };
    let from_ns = HttpMatch {
        source_namespace: Some("team-a".into()),
        ..Default::default()
    };
    let snap = snapshot(vec![
        http_route(vec![other_port], vec![dest("v2", 1)]),
        http_route(vec![from_ns], vec![dest("v3", 1)]),
    ]);
    assert_eq!(decide(&snap, &client("team-a", &[]), "/", &[]), "v3");
    assert_eq!(decide(&snap, &client("default", &[]), "/", &[]), "default");
}

#[test]
fn export_to_dot_hides_the_virtual_service_from_other_namespaces() {
    let mut snap = snapshot(vec![http_route(Vec::new(), vec![dest("v2", 1)])]);
    snap.virtual_services[0].export_to = vec![".".into()];
    assert_eq!(decide(&snap, &client("default", &[]), "/", &[]), "v2");
    assert_eq!(decide(&snap, &client("other", &[]), "/", &[]), "default");
}

#[test]
fn undefined_subset_is_a_missing_cluster() {
    let snap = snapshot(vec![http_route(Vec::new(), vec![dest("v9", 1)])]);
    assert_eq!(
        decide(&snap, &client("default", &[]), "/", &[]),
        "missing outbound|9080|v9|reviews.default.svc.cluster.local"
    );
}

#[test]
fn weighted_split_follows_weights() {
    let snap = snapshot(vec![http_route(
        Vec::new(),
        vec![dest("v1", 10), dest("v2", 10), dest("v3", 80)],
    )]);
    let c = client("default", &[]);
    let registry = ClusterRegistry::default();
    let table = RouteTable::build(&snap, &registry);
    let routes = table
        .lookup(SocketAddr::from(([10, 96, 0, 20], 9080)))
        .expect("route");
    let map = HeaderMap::new();
    let facts = RequestFacts {
        method: "GET",
        path_and_query: "/",
        authority: "reviews",
        scheme: "http",
        headers: &map,
    };
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..10_000 {
        if let RouteDecision::Forward { target, .. } = route_http(routes, &c, &facts) {
            *counts
                .entry(target.key().subset.clone().unwrap_or_default())
                .or_default() += 1;
        }
    }
    for (subset, want) in [("v1", 1000), ("v2", 1000), ("v3", 8000)] {
        let got = counts.get(subset).copied().unwrap_or(0);
        assert!(got.abs_diff(want) < 300, "{subset}: {got} vs {want}");
    }
    // Subset clusters hold only the pods carrying the subset's labels.
    if let Some(vs) = routes.virtual_services.first() {
        for t in &vs.http[0].targets.targets {
            if let Target::Cluster(c) = &t.target {
                assert_eq!(c.endpoint_addrs().len(), 1, "{}", c.key);
            }
        }
    }
}
