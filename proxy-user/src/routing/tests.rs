//! Table tests for request matching and route selection.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::HeaderMap;

use super::*;
use crate::policy::{
    Destination, DestinationRule, Headers, HttpRoute, IpFamily, Meta, Pod, Protocol, Service,
    ServicePort, Snapshot, Subset, TargetPort, VirtualService, WeightedDestination,
};
use crate::upstream::{ClusterRegistry, Discovery};

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
        weighted: false,
    }
}

/// reviews with pods v1/v2/v3 and a DR defining those subsets; `http` becomes its VirtualService.
fn snapshot(http: Vec<HttpRoute>) -> Snapshot {
    let vip: IpAddr = "10.96.0.20".parse().expect("ip");
    let mut snap = Snapshot::default();
    snap.services.push(Arc::new(Service {
        meta: meta("Service", "default", "reviews", 0),
        hostname: HOST.into(),
        cluster_ips: vec![vip],
        ip_families: vec![IpFamily::V4],
        ports: vec![ServicePort {
            name: Some("http".into()),
            port: 9080,
            target_port: TargetPort::Number(9080),
            protocol: Protocol::Http,
        }],
        selector: Some(labels(&[("app", "reviews")])),
    }));
    for (i, v) in ["v1", "v2", "v3"].iter().enumerate() {
        snap.pods.push(Arc::new(Pod {
            meta: meta("Pod", "default", &format!("reviews-{v}"), i + 1),
            labels: labels(&[("app", "reviews"), ("version", v)]),
            annotations: Labels::new(),
            ips: vec![format!("10.244.0.{}", 10 + i).parse().expect("ip")],
            ready: true,
            capture: true,
            container_ports: Vec::new(),
            node_name: None,
            owner: None,
            uid: None,
            qos_class: None,
            host_network: false,
            sidecar: false,
            traffic: None,
        }));
    }
    snap.service_by_vip.insert((vip, 9080), (0, 0));
    snap.service_by_host.insert(HOST.into(), 0);
    snap.destination_rules.push(Arc::new(DestinationRule {
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
    }));
    if !http.is_empty() {
        snap.virtual_services.push(Arc::new(VirtualService {
            meta: meta("VirtualService", "default", "reviews", 11),
            hosts: vec![HOST.into()],
            gateways: Vec::new(),
            http,
            tcp: Vec::new(),
            tls: Vec::new(),
            export_to: Vec::new(),
        }));
    }
    snap
}

fn client(ns: &str, pairs: &[(&str, &str)]) -> ClientInfo {
    ClientInfo {
        namespace: ns.into(),
        labels: labels(pairs),
    }
}

/// `snap` plus a captured, not-ready (so never an endpoint) pod of the client's class.
fn with_client(snap: &Snapshot, client: &ClientInfo) -> Snapshot {
    let mut snap = snap.clone();
    let order = snap.pods.len() + 100;
    snap.pods.push(Arc::new(Pod {
        meta: meta("Pod", &client.namespace, &format!("client-{order}"), order),
        labels: client.labels.clone(),
        annotations: Labels::new(),
        ips: Vec::new(),
        ready: false,
        capture: true,
        container_ports: Vec::new(),
        node_name: None,
        owner: None,
        uid: None,
        qos_class: None,
        host_network: false,
        sidecar: false,
        traffic: None,
    }));
    snap
}

/// The view of `client` in a table built from `snap` (with a pod of the client's class added).
fn view_of(snap: &Snapshot, client: &ClientInfo) -> Arc<ClientView> {
    let registry = ClusterRegistry::default();
    let table = RouteTable::build(&with_client(snap, client), &registry);
    Arc::clone(
        table
            .view_for(client)
            .expect("a view for the client's class"),
    )
}

const REVIEWS: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(10, 96, 0, 20)), 9080);

/// Route `path` with `headers` and return the chosen subset, or what else happened.
fn decide(snap: &Snapshot, client: &ClientInfo, path: &str, headers: &[(&str, &str)]) -> String {
    let view = view_of(snap, client);
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
    match route_http(&view, REVIEWS, &facts) {
        RouteDecision::Forward { target, .. } => match target {
            Target::Missing(k) => format!("missing {k}"),
            t => t.key().subset.clone().unwrap_or_else(|| "default".into()),
        },
        RouteDecision::Passthrough(_) => "passthrough".into(),
        RouteDecision::Blocked => "502".into(),
        RouteDecision::Local { .. } => "local".into(),
        RouteDecision::NoRoute => "404".into(),
        RouteDecision::NoDestination => "no destination".into(),
    }
}

#[test]
fn no_virtual_service_uses_the_default_route_with_all_endpoints() {
    let snap = snapshot(Vec::new());
    let view = view_of(&snap, &client("default", &[]));
    let Outbound::Service(routes) = view.lookup(REVIEWS) else {
        panic!("reviews is a service for the client");
    };
    match &routes.default_target {
        Target::Cluster(c) => assert_eq!(c.endpoint_addrs().len(), 3),
        t => panic!("default route is not a cluster: {}", t.key()),
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
    Arc::make_mut(&mut snap.virtual_services[0]).export_to = vec![".".into()];
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
    let view = view_of(&snap, &client("default", &[]));
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
        if let RouteDecision::Forward { target, .. } = route_http(&view, REVIEWS, &facts) {
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
    let Outbound::Service(routes) = view.lookup(REVIEWS) else {
        panic!("reviews is a service for the client");
    };
    let rules = routes.http.as_ref().expect("the VirtualService applies");
    for t in &rules[0].targets.targets {
        match &t.target {
            Target::Cluster(c) => assert_eq!(c.endpoint_addrs().len(), 1, "{}", c.key),
            other => panic!("not a cluster: {}", other.key()),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Per-client views, ServiceEntry, Sidecar, delegation and the outbound traffic policy. These fixtures are
// YAML so each case reads like the config a user writes; they go through the real conversion.

/// `reviews` (10.96.0.20:9080, http) in `default` with pods v1/v2/v3 at 10.244.0.10-12, plus `extra`
/// documents and one captured client pod (no IP, so never an endpoint) per entry of `clients`.
fn load(extra: &str, clients: &[(&str, &[(&str, &str)])]) -> Snapshot {
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: default}\n\
         spec:\n  clusterIP: 10.96.0.20\n  selector: {app: reviews}\n  ports:\n  - {name: http, port: 9080, targetPort: 9080}\n",
    );
    for (i, v) in ["v1", "v2", "v3"].iter().enumerate() {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: reviews-{v}, namespace: default, labels: {{app: reviews, version: {v}}}}}\n\
             spec: {{containers: [{{name: c, image: i}}]}}\nstatus: {{podIP: 10.244.0.{}}}\n",
            10 + i
        ));
    }
    for (i, (ns, labels)) in clients.iter().enumerate() {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: client-{i}, namespace: {ns}, labels: {{{}}}}}\n\
             spec: {{containers: [{{name: c, image: i}}]}}\n",
            labels.join(", ")
        ));
    }
    if !extra.is_empty() {
        yaml.push_str("---\n");
        yaml.push_str(extra);
    }
    let report = crate::policy::build(&crate::source::split_documents("test.yaml", &yaml));
    let errors: Vec<String> = report.errors.iter().map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "fixture errors:\n{}", errors.join("\n"));
    report.snapshot
}

/// A target as a short literal: endpoint addresses, `original-dst`, `dns name:port`, or `missing`.
fn describe(target: &Target) -> String {
    match target {
        Target::Cluster(c) => match &c.discovery {
            Discovery::Static => {
                let mut addrs: Vec<String> =
                    c.endpoint_addrs().iter().map(|a| a.to_string()).collect();
                addrs.sort();
                addrs.join(",")
            }
            Discovery::OriginalDst => "original-dst".into(),
            Discovery::Dns { names, .. } => {
                let names: Vec<String> = names.iter().map(|(n, p)| format!("{n}:{p}")).collect();
                format!("dns {}", names.join(","))
            }
        },
        Target::Missing(k) => format!("missing {k}"),
    }
}

/// Route a plain `GET path` from `client` to `dst` under `table`.
fn get(
    table: &RouteTable,
    client: &ClientInfo,
    dst: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> String {
    let view = table
        .view_for(client)
        .expect("a view for the client's class");
    let dst: SocketAddr = dst.parse().expect("dst");
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
        authority: "host",
        scheme: "http",
        headers: &map,
    };
    match route_http(view, dst, &facts) {
        RouteDecision::Forward { target, .. } => describe(target),
        RouteDecision::Passthrough(_) => "passthrough".into(),
        RouteDecision::Blocked => "502".into(),
        RouteDecision::Local { .. } => "local".into(),
        RouteDecision::NoRoute => "404".into(),
        RouteDecision::NoDestination => "no destination".into(),
    }
}

fn tcp(table: &RouteTable, client: &ClientInfo, dst: &str) -> String {
    let view = table
        .view_for(client)
        .expect("a view for the client's class");
    match route_tcp(view, dst.parse().expect("dst")) {
        TcpDecision::Forward(t) => describe(t),
        TcpDecision::Passthrough(_) => "passthrough".into(),
        TcpDecision::Close => "close".into(),
    }
}

const V1: &str = "10.244.0.10:9080";
const V2: &str = "10.244.0.11:9080";
const V3: &str = "10.244.0.12:9080";
const ALL: &str = "10.244.0.10:9080,10.244.0.11:9080,10.244.0.12:9080";
const VIP: &str = "10.96.0.20:9080";

/// A VirtualService for reviews in `ns` sending everything to subset `subset`, exported as given.
fn vs_to_subset(ns: &str, name: &str, subset: &str, export_to: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec:\n  hosts: [reviews.default.svc.cluster.local]\n  exportTo: {export_to}\n  http:\n  \
         - route:\n    - destination: {{host: reviews.default.svc.cluster.local, subset: {subset}}}\n"
    )
}

/// A DestinationRule for reviews in `ns` whose subset `s` selects `version: <version>`.
fn dr_subset_s(ns: &str, name: &str, version: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec:\n  host: reviews.default.svc.cluster.local\n{extra_spec}  subsets:\n  - name: s\n    labels: {{version: {version}}}\n"
    )
}

#[test]
fn export_to_dot_star_and_named_namespaces() {
    let dr = dr_subset_s("default", "reviews", "v2", "");
    // (exportTo, client namespace, expected endpoints)
    let cases = [
        ("[.]", "default", V2),
        ("[.]", "team-a", ALL),
        ("['*']", "team-a", V2),
        ("[team-a]", "team-a", V2),
        ("[team-a]", "team-b", ALL),
        ("[]", "team-b", V2),
    ];
    for (export_to, ns, want) in cases {
        let snap = load(
            &format!("{}---\n{dr}", vs_to_subset("default", "r", "s", export_to)),
            &[(ns, &[])],
        );
        let table = RouteTable::build(&snap, &ClusterRegistry::default());
        assert_eq!(
            get(&table, &client(ns, &[]), VIP, "/", &[]),
            want,
            "exportTo {export_to} seen from {ns}"
        );
    }
}

#[test]
fn destination_rule_lookup_is_client_namespace_then_service_namespace_then_root() {
    // The VirtualService routes everyone to subset `s`; three namespaces define `s` differently.
    let vs = vs_to_subset("default", "r", "s", "['*']");
    let client_ns = dr_subset_s("team-a", "mine", "v1", "");
    let service_ns = dr_subset_s("default", "svc", "v2", "");
    let service_ns_private = dr_subset_s("default", "svc", "v2", "  exportTo: [.]\n");
    let root = dr_subset_s("istio-system", "mesh", "v3", "");
    // (DRs present, client namespace, expected endpoints)
    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        (vec![&client_ns, &service_ns, &root], "team-a", V1),
        (vec![&client_ns, &service_ns, &root], "team-b", V2),
        (vec![&client_ns, &service_ns, &root], "default", V2),
        (vec![&client_ns, &root], "team-b", V3),
        // A service-namespace rule not exported to the client is skipped; the root one applies.
        (vec![&service_ns_private, &root], "team-b", V3),
        // A rule in some third namespace is never used, whatever its exportTo.
        (
            vec![&client_ns],
            "team-b",
            "missing outbound|9080|s|reviews.default.svc.cluster.local",
        ),
    ];
    for (drs, ns, want) in cases {
        let extra = std::iter::once(vs.as_str())
            .chain(drs)
            .collect::<Vec<_>>()
            .join("---\n");
        let snap = load(&extra, &[(ns, &[])]);
        let table = RouteTable::build(&snap, &ClusterRegistry::default());
        assert_eq!(
            get(&table, &client(ns, &[]), VIP, "/", &[]),
            want,
            "client in {ns}"
        );
    }
    // Both clients' `s` clusters coexist: same Istio name, different rules, different endpoints.
    let extra = [vs.as_str(), &client_ns, &service_ns].join("---\n");
    let snap = load(&extra, &[("team-a", &[]), ("team-b", &[])]);
    let registry = ClusterRegistry::default();
    let table = RouteTable::build(&snap, &registry);
    assert_eq!(get(&table, &client("team-a", &[]), VIP, "/", &[]), V1);
    assert_eq!(get(&table, &client("team-b", &[]), VIP, "/", &[]), V2);
}

#[test]
fn destination_rule_workload_selector_selects_clients_in_its_namespace() {
    let vs = vs_to_subset("default", "r", "s", "['*']");
    let selected = dr_subset_s(
        "default",
        "for-productpage",
        "v3",
        "  workloadSelector: {matchLabels: {app: productpage}}\n",
    );
    let plain = dr_subset_s("default", "reviews", "v1", "");
    let extra = [vs.as_str(), &selected, &plain].join("---\n");
    let clients: [(&str, &[(&str, &str)]); 3] = [
        ("default", &[("app", "productpage")]),
        ("default", &[("app", "other")]),
        ("team-a", &[("app", "productpage")]),
    ];
    let snap = load(&extra, &clients);
    let table = RouteTable::build(&snap, &ClusterRegistry::default());
    let cases = [
        (client("default", &[("app", "productpage")]), V3),
        (client("default", &[("app", "other")]), V1),
        // Selector rules only apply in their own namespace.
        (client("team-a", &[("app", "productpage")]), V1),
    ];
    for (c, want) in cases {
        assert_eq!(get(&table, &c, VIP, "/", &[]), want, "{c:?}");
    }
}

#[test]
fn clients_differing_only_in_irrelevant_labels_share_one_view() {
    let extra = vs_to_subset("default", "r", "v1", "['*']");
    let clients: [(&str, &[(&str, &str)]); 3] = [
        ("default", &[("pod-template-hash", "a")]),
        ("default", &[("pod-template-hash", "b")]),
        ("team-a", &[]),
    ];
    let snap = load(&extra, &clients);
    let table = RouteTable::build(&snap, &ClusterRegistry::default());
    assert_eq!(table.view_count(), 2, "one view per namespace");
    let a = table.view_for(&client("default", &[("pod-template-hash", "a")]));
    let b = table.view_for(&client("default", &[("pod-template-hash", "b")]));
    assert!(matches!((a, b), (Some(a), Some(b)) if Arc::ptr_eq(a, b)));
}

/// A Sidecar in `ns` (optionally selecting `app: <selector>`) importing `hosts`, with `policy`.
fn sidecar(
    ns: &str,
    name: &str,
    selector: Option<&str>,
    hosts: &str,
    policy: Option<&str>,
) -> String {
    let mut y = format!(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n"
    );
    if let Some(app) = selector {
        y.push_str(&format!("  workloadSelector: {{labels: {{app: {app}}}}}\n"));
    }
    y.push_str(&format!("  egress:\n  - hosts: {hosts}\n"));
    if let Some(mode) = policy {
        y.push_str(&format!("  outboundTrafficPolicy: {{mode: {mode}}}\n"));
    }
    y
}

#[test]
fn sidecar_egress_hosts_restrict_what_a_client_imports() {
    let vs = vs_to_subset("default", "r", "s", "['*']");
    let dr = dr_subset_s("default", "reviews", "v2", "");
    // (Sidecars, client namespace, client app label, expected)
    let cases: Vec<(Vec<String>, &str, &str, &str)> = vec![
        // No Sidecar: everything exported is imported.
        (vec![], "team-a", "x", V2),
        // `./*` imports only the client's namespace: reviews is unknown -> passthrough.
        (
            vec![sidecar("team-a", "own", None, "['./*']", Some("ALLOW_ANY"))],
            "team-a",
            "x",
            "passthrough",
        ),
        (
            vec![sidecar(
                "team-a",
                "own",
                None,
                "['./*']",
                Some("REGISTRY_ONLY"),
            )],
            "team-a",
            "x",
            "502",
        ),
        // Named namespace and host.
        (
            vec![sidecar(
                "team-a",
                "own",
                None,
                "['default/reviews.default.svc.cluster.local']",
                None,
            )],
            "team-a",
            "x",
            V2,
        ),
        (
            vec![sidecar("team-a", "own", None, "['*/*']", None)],
            "team-a",
            "x",
            V2,
        ),
        // `~/*` imports nothing; without its own outboundTrafficPolicy the mesh's ALLOW_ANY holds.
        (
            vec![sidecar("team-a", "own", None, "['~/*']", None)],
            "team-a",
            "x",
            "passthrough",
        ),
        // An exclusion wins over an include for the same host.
        (
            vec![sidecar(
                "team-a",
                "own",
                None,
                "['*/*', '~default/reviews.default.svc.cluster.local']",
                Some("REGISTRY_ONLY"),
            )],
            "team-a",
            "x",
            "502",
        ),
        // The workload-selected Sidecar beats the namespace default for the pods it selects only.
        (
            vec![
                sidecar("team-a", "own", None, "['./*']", Some("ALLOW_ANY")),
                sidecar("team-a", "wide", Some("x"), "['*/*']", None),
            ],
            "team-a",
            "x",
            V2,
        ),
        (
            vec![
                sidecar("team-a", "own", None, "['./*']", Some("ALLOW_ANY")),
                sidecar("team-a", "wide", Some("x"), "['*/*']", None),
            ],
            "team-a",
            "y",
            "passthrough",
        ),
        // The root namespace's Sidecar applies to namespaces without one.
        (
            vec![sidecar(
                "istio-system",
                "mesh",
                None,
                "['./*']",
                Some("ALLOW_ANY"),
            )],
            "team-a",
            "x",
            "passthrough",
        ),
        (
            vec![
                sidecar("istio-system", "mesh", None, "['./*']", Some("ALLOW_ANY")),
                sidecar("team-a", "own", None, "['*/*']", None),
            ],
            "team-a",
            "x",
            V2,
        ),
    ];
    for (i, (sidecars, ns, app, want)) in cases.into_iter().enumerate() {
        let mut docs = vec![vs.clone(), dr.clone()];
        docs.extend(sidecars);
        let snap = load(&docs.join("---\n"), &[(ns, &[("app", app)])]);
        let table = RouteTable::build(&snap, &ClusterRegistry::default());
        assert_eq!(
            get(&table, &client(ns, &[("app", app)]), VIP, "/", &[]),
            want,
            "case {i}"
        );
    }
}

#[test]
fn sidecar_that_imports_the_service_but_not_the_virtual_service_gets_the_default_route() {
    // The VirtualService lives in `routes`; the Sidecar imports only `default/*`.
    let vs = vs_to_subset("routes", "r", "s", "['*']");
    let dr = dr_subset_s("default", "reviews", "v2", "");
    let sc = sidecar("team-a", "own", None, "['default/*']", None);
    let snap = load(&[vs.as_str(), &dr, &sc].join("---\n"), &[("team-a", &[])]);
    let table = RouteTable::build(&snap, &ClusterRegistry::default());
    assert_eq!(get(&table, &client("team-a", &[]), VIP, "/", &[]), ALL);
}

#[test]
fn delegation_merges_root_and_delegate_matches_in_the_root_position() {
    let extra = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: root, namespace: default}\n\
spec:
  hosts: [reviews.default.svc.cluster.local]
  http:
  - name: api
    match:
    - uri: {prefix: /api}
    delegate: {name: api, namespace: team-api}
  - route:
    - destination: {host: reviews.default.svc.cluster.local, subset: v1}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: team-api}
spec:
  http:
  - name: jason
    match:
    - headers: {end-user: {exact: jason}}
    route:
    - destination: {host: reviews.default.svc.cluster.local, subset: v2}
  - match:
    - uri: {prefix: /api/v3}
    route:
    - destination: {host: reviews.default.svc.cluster.local, subset: v3}
  - match:
    - uri: {prefix: /other}
    route:
    - destination: {host: reviews.default.svc.cluster.local, subset: v3}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews.default.svc.cluster.local
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
";
    let snap = load(extra, &[("default", &[])]);
    let table = RouteTable::build(&snap, &ClusterRegistry::default());
    let c = client("default", &[]);
    // (path, headers, expected)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 6] = [
        // Root prefix AND delegate header.
        ("/api/x", &[("end-user", "jason")], V2),
        // Delegate prefix narrowing the root prefix.
        ("/api/v3/x", &[], V3),
        // No delegate rule matched: evaluation continues with the root's next rule.
        ("/api/x", &[], V1),
        // The header alone is not enough: the root's /api condition is merged in.
        ("/x", &[("end-user", "jason")], V1),
        // `/other` cannot narrow `/api`: that delegate rule is dropped.
        ("/other", &[], V1),
        ("/api/other", &[], V1),
    ];
    for (path, headers, want) in cases {
        assert_eq!(
            get(&table, &c, VIP, path, headers),
            want,
            "{path} {headers:?}"
        );
    }
    // Merged names are root-leaf, as Istio names them.
    let view = table.view_for(&c).expect("view");
    let Outbound::Service(routes) = view.lookup(VIP.parse().expect("dst")) else {
        panic!("reviews is a service");
    };
    let names: Vec<Option<&str>> = routes
        .http
        .iter()
        .flatten()
        .map(|r| r.spec.name.as_deref())
        .collect();
    assert_eq!(names, vec![Some("api-jason"), Some("api"), None]);
}

#[test]
fn delegate_merge_conflict_rules_follow_istio() {
    let prefix = |p: &str| HttpMatch {
        uri: Some(StringMatch::Prefix(p.into())),
        ..Default::default()
    };
    let exact_uri = |p: &str| HttpMatch {
        uri: Some(exact(p)),
        ..Default::default()
    };
    let regex_uri = HttpMatch {
        uri: Some(regex("/a.*")),
        ..Default::default()
    };
    let with_port = |p: u16| HttpMatch {
        port: Some(p),
        ..Default::default()
    };
    // (root block, leaf block, conflict?)
    let cases = [
        (prefix("/a"), prefix("/a/b"), false),
        (prefix("/a/b"), prefix("/a"), true),
        (prefix("/a"), exact_uri("/a/x"), false),
        (exact_uri("/a"), exact_uri("/a"), false),
        (exact_uri("/a"), exact_uri("/b"), true),
        (exact_uri("/a"), prefix("/a"), true),
        (regex_uri.clone(), prefix("/a"), true),
        (prefix("/a"), regex_uri, true),
        (HttpMatch::default(), prefix("/x"), false),
        (with_port(80), with_port(8080), true),
        (with_port(80), HttpMatch::default(), false),
    ];
    for (i, (root, leaf, want)) in cases.iter().enumerate() {
        assert_eq!(delegate::has_conflict(root, leaf), *want, "case {i}");
    }
    // A leaf block fitting no root block makes the whole merge fail.
    assert!(delegate::merge_matches(&[prefix("/a")], &[prefix("/a/b"), prefix("/z")]).is_none());
    // An empty side takes the other's blocks.
    assert_eq!(
        delegate::merge_matches(&[], &[prefix("/z")]).map(|m| m.len()),
        Some(1)
    );
}

#[test]
fn delegate_not_exported_to_the_root_namespace_is_dropped() {
    let extra = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: root, namespace: default}\n\
spec:
  hosts: [reviews.default.svc.cluster.local]
  http:
  - delegate: {name: api, namespace: team-api}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: team-api}
spec:
  exportTo: [.]
  http:
  - route:
    - destination: {host: reviews.default.svc.cluster.local}
";
    let snap = load(extra, &[("default", &[])]);
    let table = RouteTable::build(&snap, &ClusterRegistry::default());
    // The root VS is left without rules, so the default route applies.
    assert_eq!(get(&table, &client("default", &[]), VIP, "/", &[]), ALL);
}

/// A ServiceEntry `ext/<name>` for `host` at `addresses` on HTTP port 80, with `rest` appended.
fn service_entry(name: &str, host: &str, addresses: &str, rest: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: ext}}\n\
         spec:\n  hosts: [{host}]\n  addresses: {addresses}\n  ports:\n  - {{number: 80, name: http, protocol: HTTP}}\n{rest}"
    )
}

#[test]
fn service_entry_addresses_are_meshed_and_resolve_by_resolution() {
    let static_se = service_entry(
        "static",
        "static.example.com",
        "[240.0.0.1, 240.0.0.2/32, 240.1.0.0/16]",
        "  resolution: STATIC\n  endpoints:\n  - {address: 192.0.2.10, ports: {http: 8080}}\n  - {address: 192.0.2.11}\n",
    );
    let none_se = service_entry(
        "none",
        "none.example.com",
        "[240.0.0.3]",
        "  resolution: NONE\n",
    );
    let dns_se = service_entry(
        "dns",
        "dns.example.com",
        "[240.0.0.4]",
        "  resolution: DNS\n  endpoints:\n  - {address: 192.0.2.20}\n",
    );
    // The /16 is accepted (Istio allows CIDRs for STATIC) but conversion warns it is not captured.
    let report = crate::policy::build(&crate::source::split_documents("t.yaml", &static_se));
    assert!(
        report.warnings.iter().any(|w| w
            .to_string()
            .contains("spec.addresses[2]: Keel's kernel redirect matches exact addresses only")),
        "{:?}",
        report
            .warnings
            .iter()
            .map(|w| w.to_string())
            .collect::<Vec<_>>()
    );
    let snap = load(
        &[static_se.as_str(), &none_se, &dns_se].join("---\n"),
        &[("default", &[])],
    );
    let meshed: Vec<String> = snap
        .meshed_destinations()
        .iter()
        .map(|a| a.to_string())
        .collect();
    // Exact addresses (and /32) are published; the /16 range cannot be (exact-match kernel map).
    assert_eq!(
        meshed,
        vec![
            "10.96.0.20:9080",
            "240.0.0.1:80",
            "240.0.0.2:80",
            "240.0.0.3:80",
            "240.0.0.4:80"
        ]
    );
    let table = RouteTable::build(&snap, &ClusterRegistry::default());
    let c = client("default", &[]);
    let cases = [
        // STATIC: endpoint addresses, port from `endpoints[].ports`, else the service port.
        ("240.0.0.1:80", "192.0.2.10:8080,192.0.2.11:80"),
        ("240.0.0.2:80", "192.0.2.10:8080,192.0.2.11:80"),
        // NONE: the address the client dialled.
        ("240.0.0.3:80", "original-dst"),
        // DNS: resolved when connecting.
        ("240.0.0.4:80", "dns 192.0.2.20:80"),
    ];
    for (dst, want) in cases {
        assert_eq!(get(&table, &c, dst, "/", &[]), want, "{dst}");
        assert_eq!(tcp(&table, &c, dst), want, "{dst} as TCP");
    }
    let view = table.view_for(&c).expect("view");
    let Outbound::Service(routes) = view.lookup("240.0.0.3:80".parse().expect("dst")) else {
        panic!("the entry is a service");
    };
    assert_eq!(
        (routes.hostname.as_str(), routes.location),
        (
            "none.example.com",
            crate::policy::MeshLocation::MeshExternal
        )
    );
}

#[test]
fn service_entry_hosts_are_route_destinations_and_honour_export_to() {
    let se = service_entry(
        "api",
        "api.example.com",
        "[240.0.0.1]",
        "  resolution: STATIC\n  exportTo: [default]\n  endpoints:\n  - {address: 192.0.2.10, labels: {v: a}}\n  - {address: 192.0.2.11, labels: {v: b}}\n",
    );
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: default}\n\
spec:
  hosts: [reviews.default.svc.cluster.local]
  http:
  - route:
    - destination: {host: api.example.com, subset: b, port: {number: 80}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: default}
spec:
  host: api.example.com
  subsets:
  - {name: b, labels: {v: b}}
";
    let snap = load(
        &[se.as_str(), vs].join("---\n"),
        &[("default", &[]), ("team-a", &[])],
    );
    let table = RouteTable::build(&snap, &ClusterRegistry::default());
    let cases = [
        // The VS sends reviews traffic to the entry's subset.
        ("default", VIP, "192.0.2.11:80"),
        ("default", "240.0.0.1:80", "192.0.2.10:80,192.0.2.11:80"),
        // team-a does not see the entry: its route target is missing, its address is unknown.
        ("team-a", VIP, "missing outbound|80|b|api.example.com"),
        ("team-a", "240.0.0.1:80", "passthrough"),
    ];
    for (ns, dst, want) in cases {
        assert_eq!(
            get(&table, &client(ns, &[]), dst, "/", &[]),
            want,
            "{ns} -> {dst}"
        );
    }
}

#[test]
fn unknown_destinations_pass_through_under_allow_any_and_are_blocked_under_registry_only() {
    let hidden = service_entry(
        "hidden",
        "hidden.example.com",
        "[240.0.0.9]",
        "  resolution: NONE\n  exportTo: [.]\n",
    );
    for (mode, http_want, tcp_want) in [
        ("ALLOW_ANY", "passthrough", "passthrough"),
        ("REGISTRY_ONLY", "502", "close"),
    ] {
        let mesh = format!(
            "apiVersion: keel.io/v1alpha1\nkind: MeshConfig\nmetadata: {{name: keel}}\nspec:\n  outboundTrafficPolicy: {{mode: {mode}}}\n"
        );
        let snap = load(
            &[hidden.as_str(), &mesh].join("---\n"),
            &[("default", &[]), ("ext", &[])],
        );
        let table = RouteTable::build(&snap, &ClusterRegistry::default());
        let c = client("default", &[]);
        // Hidden by exportTo, and not meshed at all (stale redirect): both are unknown traffic.
        for dst in ["240.0.0.9:80", "198.51.100.1:443"] {
            assert_eq!(get(&table, &c, dst, "/", &[]), http_want, "{mode} {dst}");
            assert_eq!(tcp(&table, &c, dst), tcp_want, "{mode} {dst}");
        }
        // The entry's own namespace sees it regardless of the policy.
        assert_eq!(
            get(&table, &client("ext", &[]), "240.0.0.9:80", "/", &[]),
            "original-dst"
        );
        // Known services are unaffected.
        assert_eq!(get(&table, &c, VIP, "/", &[]), ALL);
    }
}

#[test]
fn tcp_rules_are_decided_per_client_and_destination() {
    let extra = "apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: default}\n\
spec:
  clusterIP: 10.96.0.30
  selector: {app: reviews}
  ports:
  - {name: tcp, port: 5432, targetPort: 5432}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: default}
spec:
  hosts: [db.default.svc.cluster.local]
  tcp:
  - match:
    - sourceLabels: {app: admin}
    route:
    - destination: {host: db.default.svc.cluster.local, subset: v1}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: default}
spec:
  host: db.default.svc.cluster.local
  subsets:
  - {name: v1, labels: {version: v1}}
";
    let clients: [(&str, &[(&str, &str)]); 2] =
        [("default", &[("app", "admin")]), ("default", &[])];
    let snap = load(extra, &clients);
    let table = RouteTable::build(&snap, &ClusterRegistry::default());
    assert_eq!(
        tcp(
            &table,
            &client("default", &[("app", "admin")]),
            "10.96.0.30:5432"
        ),
        "10.244.0.10:5432"
    );
    // No rule for this client: the default route (all endpoints), as istiod adds the service's
    // default filter chain.
    assert_eq!(
        tcp(&table, &client("default", &[]), "10.96.0.30:5432"),
        "10.244.0.10:5432,10.244.0.11:5432,10.244.0.12:5432"
    );
}

#[test]
fn destination_subnets_contain_addresses() {
    use super::subnet_contains;
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    assert!(subnet_contains("10.96.0.0/16", ip("10.96.3.4")));
    assert!(!subnet_contains("10.96.0.0/16", ip("10.97.0.1")));
    assert!(subnet_contains("10.96.0.20", ip("10.96.0.20")));
    assert!(!subnet_contains("10.96.0.20", ip("10.96.0.21")));
    assert!(subnet_contains("0.0.0.0/0", ip("192.0.2.1")));
    assert!(subnet_contains("fd00::/8", ip("fd00::1")));
    assert!(subnet_contains("10.0.0.0/8", ip("::ffff:10.1.2.3")));
    assert!(subnet_contains("::ffff:10.0.0.0/104", ip("10.1.2.3")));
    assert!(!subnet_contains("not-a-subnet", ip("10.1.2.3")));
}

#[test]
fn endpoints_carry_their_locality_and_clients_the_proxy_nodes() {
    let mut snap = snapshot(Vec::new());
    for (i, (node, zone)) in [("node-a", "z1"), ("node-b", "z2")].iter().enumerate() {
        snap.nodes.push(crate::policy::Node {
            meta: meta("Node", "", node, 20 + i),
            locality: crate::policy::Locality::parse(&format!("r1/{zone}")),
        });
        snap.node_by_name.insert(node.to_string(), i);
    }
    // v1 on node-a, v2 on node-b, v3 nowhere known.
    Arc::make_mut(&mut snap.pods[0]).node_name = Some("node-a".into());
    Arc::make_mut(&mut snap.pods[1]).node_name = Some("node-b".into());
    Arc::make_mut(&mut snap.pods[0])
        .labels
        .insert("track".into(), "blue".into());
    Arc::make_mut(&mut snap.destination_rules[0]).traffic_policy =
        Some(crate::policy::TrafficPolicy {
            locality_lb_setting: Some(crate::policy::LocalityLbSetting {
                failover_priority: vec!["track".into()],
                ..crate::policy::LocalityLbSetting::mesh_default()
            }),
            ..Default::default()
        });
    let client = client("default", &[("track", "green"), ("app", "sleep")]);
    let registry = ClusterRegistry::default();
    let table = RouteTable::build_for_node(&with_client(&snap, &client), &registry, Some("node-b"));
    let view = table.view_for(&client).expect("a view");
    // The client's locality is the proxy's node; `track` is a class key (failoverPriority reads it).
    assert_eq!(view.topology.locality.to_string(), "r1/z2/");
    assert_eq!(view.topology.labels, labels(&[("track", "green")]));
    let Outbound::Service(routes) = view.lookup(REVIEWS) else {
        panic!("reviews is a service for the client");
    };
    let Target::Cluster(c) = &routes.default_target else {
        panic!("default route is not a cluster");
    };
    let set = c.endpoint_set();
    let zones: Vec<&str> = set
        .topology
        .iter()
        .map(|t| t.locality.zone.as_str())
        .collect();
    assert_eq!(zones, ["z1", "z2", ""]);
    // Only the labels failoverPriority names are kept per endpoint.
    assert_eq!(set.topology[0].labels, labels(&[("track", "blue")]));
    assert!(set.topology[1].labels.is_empty());
}

/// A rebuild that takes routes over keeps the clusters the routes still use and drops the one an
/// edited VirtualService stopped using, as a table built from scratch would have them.
#[test]
fn a_rebuild_after_a_virtual_service_edit_keeps_exactly_the_clusters_in_use() {
    let client = client("default", &[]);
    let names = |registry: &ClusterRegistry| {
        let mut names: Vec<String> = registry
            .clusters()
            .iter()
            .map(|c| c.key.to_string())
            .collect();
        names.sort();
        names
    };
    let both = with_client(
        &snapshot(vec![http_route(
            Vec::new(),
            vec![dest("v1", 50), dest("v2", 50)],
        )]),
        &client,
    );
    let registry = ClusterRegistry::default();
    let first = RouteTable::build(&both, &registry);
    let hosts = Changes::VirtualServiceHosts(HashSet::from([HOST.to_string()]));
    let scratch = |snap: &Snapshot| {
        let registry = ClusterRegistry::default();
        drop(RouteTable::build(snap, &registry));
        names(&registry)
    };

    // Weights moved: the same clusters.
    let mut shifted = both.clone();
    Arc::make_mut(&mut shifted.virtual_services[0]).http =
        vec![http_route(Vec::new(), vec![dest("v1", 10), dest("v2", 90)])];
    let second = RouteTable::rebuild_for_node(&shifted, &registry, None, Some(&first), &hosts);
    assert_eq!(names(&registry), scratch(&shifted));
    assert!(names(&registry).iter().any(|n| n.contains("|v2|")));

    // v2 no longer routed to: its cluster goes.
    let mut v1_only = both.clone();
    Arc::make_mut(&mut v1_only.virtual_services[0]).http =
        vec![http_route(Vec::new(), vec![dest("v1", 100)])];
    drop(RouteTable::rebuild_for_node(
        &v1_only,
        &registry,
        None,
        Some(&second),
        &hosts,
    ));
    assert_eq!(names(&registry), scratch(&v1_only));
    assert!(!names(&registry).iter().any(|n| n.contains("|v2|")));
}

/// A large table is built on two threads, one half of the client classes each: every class gets
/// every service port, routed as its VirtualService says (here: subset v2 for everyone), and a
/// rebuild after one VirtualService edit takes over all the other routes.
#[test]
fn a_large_table_built_on_two_threads_routes_every_service_for_every_class() {
    const SERVICES: usize = 2100;
    let mut snap = snapshot(vec![http_route(Vec::new(), vec![dest("v2", 1)])]);
    for i in 1..SERVICES {
        let vip: IpAddr = format!("10.96.{}.{}", 10 + i / 250, 1 + i % 250)
            .parse()
            .expect("ip");
        let mut svc = (*snap.services[0]).clone();
        svc.meta = meta("Service", "default", &format!("svc-{i}"), 1000 + i);
        svc.hostname = format!("svc-{i}.default.svc.cluster.local");
        svc.cluster_ips = vec![vip];
        let id = snap.services.len();
        snap.service_by_vip.insert((vip, 9080), (id, 0));
        snap.service_by_host.insert(svc.hostname.clone(), id);
        snap.services.push(Arc::new(svc));
    }
    let a = client("default", &[]);
    let b = client("team-b", &[]);
    let snap = with_client(&with_client(&snap, &a), &b);
    let registry = ClusterRegistry::default();
    let table = RouteTable::build(&snap, &registry);
    assert_eq!(table.view_count(), 2);
    for c in [&a, &b] {
        let view = table.view_for(c).expect("a view per class");
        assert_eq!(view.service_ports().flatten().count(), SERVICES, "{c:?}");
        match view.lookup(REVIEWS) {
            Outbound::Service(routes) => {
                let http = routes.http.as_ref().expect("http routes");
                let target = &http[0].targets.targets[0].target;
                assert!(matches!(target, Target::Cluster(_)), "{c:?}: {target:?}");
                assert_eq!(target.key().subset.as_deref(), Some("v2"), "{c:?}");
            }
            other => panic!("{c:?}: {other:?}"),
        }
    }
    let mut edited = snap.clone();
    Arc::make_mut(&mut edited.virtual_services[0]).http =
        vec![http_route(Vec::new(), vec![dest("v1", 1)])];
    let hosts = Changes::VirtualServiceHosts(HashSet::from([HOST.to_string()]));
    let next = RouteTable::rebuild_for_node(&edited, &registry, None, Some(&table), &hosts);
    assert_eq!(next.reused_slots(), 2 * (SERVICES - 1));
}
