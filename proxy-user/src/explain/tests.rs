use super::*;

const BASE: &str = "\
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  clusterIP: 10.96.0.20
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec:
  clusterIP: 10.96.0.30
  selector: {app: db}
  ports: [{name: tcp, port: 5432}]
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1, namespace: default, labels: {app: reviews, version: v1}}
status: {podIP: 10.244.0.12}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v2, namespace: default, labels: {app: reviews, version: v2}}
status: {podIP: 10.244.0.13}
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: default, labels: {app: db}}
status: {podIP: 10.244.0.30}
---
apiVersion: v1
kind: Pod
metadata: {name: sleep, namespace: default, labels: {app: sleep}}
status: {podIP: 10.244.0.20}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: other, labels: {app: other}}
status: {podIP: 10.244.0.21}
";

const SUBSETS: &str = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
";

const JASON: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match:
    - headers:
        end-user: {exact: jason}
    route:
    - destination: {host: reviews, subset: v2}
  - route:
    - destination: {host: reviews, subset: v1}
";

fn load(extra: &[&str]) -> (Snapshot, RouteTable) {
    let mut text = BASE.to_string();
    for e in extra {
        text.push_str("---\n");
        text.push_str(e);
    }
    let docs = crate::source::split_documents("mesh.yaml", &text);
    let report = crate::policy::build(&docs);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let routes = RouteTable::build(&report.snapshot, &ClusterRegistry::default());
    (report.snapshot, routes)
}

use crate::upstream::ClusterRegistry;

fn query(from: &str, url: &str, headers: &[(&str, &str)]) -> Query {
    Query {
        from: from.to_string(),
        url: url.to_string(),
        method: None,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        sni: None,
    }
}

fn run(snap: &Snapshot, routes: &RouteTable, q: &Query) -> Result<Explanation, Error> {
    explain(snap, routes, q, Health::Unknown)
}

fn rule<'e>(e: &'e Explanation, label: &str) -> &'e RuleExplained {
    match e.rules.iter().find(|r| r.rule == label) {
        Some(r) => r,
        None => panic!("no rule {label} in {:#?}", e.rules),
    }
}

#[test]
fn header_routing_says_which_rule_matched_and_why_the_first_did_not() -> Result<(), Error> {
    let (snap, routes) = load(&[SUBSETS, JASON]);
    let jason = run(
        &snap,
        &routes,
        &query(
            "default/sleep",
            "http://reviews:9080/x",
            &[("end-user", "jason")],
        ),
    )?;
    assert_eq!(rule(&jason, "http[0]").outcome, "matched");
    assert_eq!(
        rule(&jason, "http[0]").details,
        ["match[0]: header end-user exact \"jason\""]
    );
    assert_eq!(rule(&jason, "http[1]").outcome, "not evaluated");
    assert_eq!(
        jason.result,
        "VirtualService default/reviews http[0] -> outbound|9080|v2|reviews.default.svc.cluster.local 100%"
    );
    assert_eq!(
        jason.service.as_deref(),
        Some("reviews.default.svc.cluster.local:9080 (HTTP)")
    );
    assert_eq!(jason.destination, "10.96.0.20:9080");
    let ep = &jason.clusters[0].endpoints;
    assert_eq!(ep.len(), 1);
    assert_eq!(ep[0].pod, "default/reviews-v2");
    assert_eq!(ep[0].address, "10.244.0.13:9080");
    assert_eq!(ep[0].health, "unknown");

    let anonymous = run(
        &snap,
        &routes,
        &query("default/sleep", "http://reviews:9080/x", &[]),
    )?;
    assert_eq!(rule(&anonymous, "http[0]").outcome, "no match");
    assert_eq!(
        rule(&anonymous, "http[0]").details,
        ["match[0]: header end-user exact \"jason\": request has none"]
    );
    assert_eq!(rule(&anonymous, "http[1]").outcome, "matched");
    assert_eq!(
        rule(&anonymous, "http[1]").details,
        ["no match conditions (catch-all)"]
    );
    let other_user = run(
        &snap,
        &routes,
        &query(
            "default/sleep",
            "http://reviews:9080/",
            &[("End-User", "mike")],
        ),
    )?;
    assert_eq!(
        rule(&other_user, "http[0]").details,
        ["match[0]: header end-user exact \"jason\": request has \"mike\""]
    );
    // The text form names the rule and the reason on one line each.
    let text = render(&anonymous);
    assert!(
        text.contains(
            "  http[0]  no match  match[0]: header end-user exact \"jason\": request has none\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("  http[1]  matched   no match conditions (catch-all)\n"),
        "{text}"
    );
    Ok(())
}

#[test]
fn the_explained_rule_is_the_one_the_request_path_takes() -> Result<(), Error> {
    let vs = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match:
    - uri: {prefix: /admin}
      method: {exact: POST}
    - queryParams: {test: {exact: 'true'}}
    route:
    - destination: {host: reviews, subset: v2}
  - match:
    - headers: {x-canary: {}}
      withoutHeaders: {x-block: {exact: yes}}
    route:
    - destination: {host: reviews, subset: v2}
      weight: 25
    - destination: {host: reviews, subset: v1}
      weight: 75
  - match:
    - uri: {regex: '/api/v[0-9]+'}
    directResponse: {status: 418}
";
    let (snap, routes) = load(&[SUBSETS, vs]);
    /// (method, URL, headers, the rule that matches).
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], Option<&'a str>);
    let cases: [Case; 6] = [
        ("GET", "http://reviews:9080/admin", &[], None),
        ("POST", "http://reviews:9080/admin/x", &[], Some("http[0]")),
        (
            "GET",
            "http://reviews:9080/p?test=true",
            &[],
            Some("http[0]"),
        ),
        (
            "GET",
            "http://reviews:9080/p",
            &[("x-canary", "1")],
            Some("http[1]"),
        ),
        (
            "GET",
            "http://reviews:9080/p",
            &[("x-canary", "1"), ("x-block", "yes")],
            None,
        ),
        ("GET", "http://reviews:9080/api/v2", &[], Some("http[2]")),
    ];
    for (method, url, headers, want) in cases {
        let mut q = query("default/sleep", url, headers);
        q.method = Some(method.to_string());
        let e = run(&snap, &routes, &q)?;
        let matched: Vec<&str> = e
            .rules
            .iter()
            .filter(|r| r.outcome == "matched")
            .map(|r| r.rule.as_str())
            .collect();
        assert_eq!(
            matched,
            want.into_iter().collect::<Vec<_>>(),
            "{method} {url} {headers:?}"
        );
        if want.is_none() {
            assert_eq!(
                e.result,
                "no rule of VirtualService default/reviews matches: 404 (NR)"
            );
        }
    }
    let mut q = query("default/sleep", "http://reviews:9080/admin", &[]);
    q.method = Some("GET".to_string());
    let e = run(&snap, &routes, &q)?;
    assert_eq!(
        rule(&e, "http[0]").details,
        [
            "match[0]: method exact \"POST\": request is GET",
            "match[1]: queryParams test exact \"true\": request has none"
        ]
    );
    assert_eq!(
        rule(&e, "http[2]").details,
        ["match[0]: uri regex \"/api/v[0-9]+\" does not match \"/admin\""]
    );
    let blocked = run(
        &snap,
        &routes,
        &query(
            "default/sleep",
            "http://reviews:9080/p",
            &[("x-canary", "1"), ("x-block", "yes")],
        ),
    )?;
    assert_eq!(
        rule(&blocked, "http[1]").details,
        ["match[0]: withoutHeaders x-block exact \"yes\": request has \"yes\""]
    );
    let split = run(
        &snap,
        &routes,
        &query(
            "default/sleep",
            "http://reviews:9080/p",
            &[("x-canary", "1")],
        ),
    )?;
    let route = split
        .route
        .as_ref()
        .map(|r| r.destinations.clone())
        .unwrap_or_default();
    let shares: Vec<(u32, f64, &str)> = route
        .iter()
        .map(|d| (d.weight, d.percent, d.cluster.as_str()))
        .collect();
    assert_eq!(
        shares,
        [
            (
                25,
                25.0,
                "outbound|9080|v2|reviews.default.svc.cluster.local"
            ),
            (
                75,
                75.0,
                "outbound|9080|v1|reviews.default.svc.cluster.local"
            )
        ]
    );
    let teapot = run(
        &snap,
        &routes,
        &query("default/sleep", "http://reviews:9080/api/v2", &[]),
    )?;
    assert_eq!(
        teapot.result,
        "VirtualService default/reviews http[2]: direct response 418"
    );
    Ok(())
}

#[test]
fn client_scoping_is_explained() -> Result<(), Error> {
    let by_source = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match:
    - sourceLabels: {app: productpage}
    - sourceNamespace: other
    route:
    - destination: {host: reviews, subset: v2}
  - match:
    - port: 8080
    route:
    - destination: {host: reviews, subset: v2}
  - route:
    - destination: {host: reviews, subset: v1}
  - route:
    - destination: {host: reviews, subset: v2}
";
    let hidden = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hidden, namespace: other, creationTimestamp: '2020-01-01T00:00:00Z'}
spec:
  hosts: [reviews.default.svc.cluster.local]
  exportTo: [.]
  http:
  - route:
    - destination: {host: reviews.default.svc.cluster.local, subset: v2}
";
    let (snap, routes) = load(&[SUBSETS, by_source, hidden]);
    let e = run(
        &snap,
        &routes,
        &query("default/sleep", "http://reviews:9080/", &[]),
    )?;
    let vss: Vec<(&str, &str)> = e
        .virtual_services
        .iter()
        .map(|v| (v.name.as_str(), v.verdict.as_str()))
        .collect();
    assert_eq!(
        vss,
        [
            ("other/hidden", "not visible to default/sleep: exportTo ."),
            ("default/reviews", "applies"),
        ]
    );
    assert_eq!(rule(&e, "http[0]").outcome, "not for this client");
    assert_eq!(
        rule(&e, "http[0]").details,
        [
            "match[0]: sourceLabels app=productpage do not select default/sleep (app=sleep)",
            "match[1]: sourceNamespace: default/sleep is in namespace default"
        ]
    );
    assert_eq!(
        rule(&e, "http[1]").details,
        ["match[0]: port 8080: the request is to port 9080"]
    );
    assert_eq!(rule(&e, "http[2]").outcome, "matched");
    assert_eq!(rule(&e, "http[3]").outcome, "not evaluated");
    // The pod in `other` sees its own namespace's VirtualService (older), which applies.
    let o = run(
        &snap,
        &routes,
        &query("other/other", "http://reviews.default:9080/", &[]),
    )?;
    assert_eq!(o.virtual_services[0].verdict, "applies");
    assert_eq!(
        o.virtual_services[1].verdict,
        "ignored: VirtualService other/hidden applies (older or more specific host)"
    );
    Ok(())
}

#[test]
fn sidecar_and_export_to_decide_visibility() -> Result<(), Error> {
    let sidecar = "\
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: only-db, namespace: default}
spec:
  egress:
  - hosts: [./db.default.svc.cluster.local]
";
    let (snap, routes) = load(&[sidecar]);
    let e = run(
        &snap,
        &routes,
        &query("default/sleep", "http://reviews:9080/", &[]),
    )?;
    assert_eq!(e.sidecar.as_deref(), Some("default/only-db"));
    assert!(
        e.result
            .starts_with("passthrough to the original destination"),
        "{}",
        e.result
    );
    assert_eq!(
        e.notes,
        ["Sidecar default/only-db of default/sleep does not import default/reviews.default.svc.cluster.local:9080"]
    );
    Ok(())
}

#[test]
fn destination_rule_policy_names_the_level_of_each_block() -> Result<(), Error> {
    let dr = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    tls: {mode: DISABLE}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      connectionPool:
        tcp: {maxConnections: 1}
        http: {http1MaxPendingRequests: 2}
      outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 3m, maxEjectionPercent: 100}
";
    let vs = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v2}
    timeout: 2s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: '5xx,reset'}
    fault:
      abort: {httpStatus: 503, percentage: {value: 10}}
    mirror: {host: reviews, subset: v1}
    mirrorPercentage: {value: 50}
    headers:
      request:
        set: {x-env: test}
";
    let (snap, routes) = load(&[dr, vs]);
    let e = run(
        &snap,
        &routes,
        &query("default/sleep", "http://reviews:9080/", &[]),
    )?;
    let cluster = &e.clusters[0];
    assert_eq!(
        cluster.name,
        "outbound|9080|v2|reviews.default.svc.cluster.local"
    );
    assert_eq!(cluster.subset.as_deref(), Some("v2 (version=v2)"));
    let policy: Vec<(&str, &str, &str)> = cluster
        .policy
        .iter()
        .map(|s| (s.name.as_str(), s.value.as_str(), s.from.as_str()))
        .collect();
    assert_eq!(
        policy,
        [
            ("loadBalancer", "ROUND_ROBIN", "trafficPolicy"),
            (
                "connectionPool",
                "maxConnections 1, http1MaxPendingRequests 2",
                "subset trafficPolicy v2"
            ),
            (
                "outlierDetection",
                "consecutive5xxErrors 3, interval 1s, baseEjectionTime 3m, maxEjectionPercent 100",
                "subset trafficPolicy v2"
            ),
            ("tls", "DISABLE", "trafficPolicy"),
        ]
    );
    let settings: Vec<(&str, &str, &str)> = e
        .route
        .as_ref()
        .map(|r| {
            r.settings
                .iter()
                .map(|s| (s.name.as_str(), s.value.as_str(), s.from.as_str()))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        settings,
        [
            ("timeout", "2s", "rule"),
            (
                "retries",
                "3 attempts, perTryTimeout 500ms, retryOn 5xx,reset",
                "rule"
            ),
            ("fault", "abort httpStatus 503 for 10%", "rule"),
            ("request headers", "set x-env: test", "rule"),
            (
                "mirror",
                "outbound|9080|v1|reviews.default.svc.cluster.local 50%",
                "rule"
            ),
        ]
    );
    Ok(())
}

#[test]
fn port_level_settings_replace_the_top_level_blocks() -> Result<(), Error> {
    let dr = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
    portLevelSettings:
    - port: {number: 9080}
      connectionPool: {tcp: {maxConnections: 7}}
";
    let (snap, routes) = load(&[dr]);
    let e = run(
        &snap,
        &routes,
        &query("default/sleep", "http://reviews:9080/", &[]),
    )?;
    assert_eq!(
        e.result,
        "default route (no VirtualService applies) -> outbound|9080||reviews.default.svc.cluster.local"
    );
    let policy: Vec<(&str, &str)> = e.clusters[0]
        .policy
        .iter()
        .map(|s| (s.name.as_str(), s.from.as_str()))
        .collect();
    assert_eq!(
        policy,
        [
            ("loadBalancer", "default"),
            (
                "connectionPool",
                "trafficPolicy.portLevelSettings port 9080"
            ),
            ("outlierDetection", "default"),
            ("tls", "default"),
        ]
    );
    assert_eq!(e.clusters[0].endpoints.len(), 2);
    Ok(())
}

#[test]
fn delegated_rules_say_where_they_come_from() -> Result<(), Error> {
    let root = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: root, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match:
    - uri: {prefix: /v2}
    delegate: {name: leaf, namespace: default}
  - route:
    - destination: {host: reviews, subset: v1}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: leaf, namespace: default}
spec:
  http:
  - name: jason
    match:
    - headers: {end-user: {exact: jason}}
    route:
    - destination: {host: reviews, subset: v2}
";
    let (snap, routes) = load(&[SUBSETS, root]);
    let e = run(
        &snap,
        &routes,
        &query("default/sleep", "http://reviews:9080/v2/x", &[]),
    )?;
    assert_eq!(
        e.rules[0].rule,
        "http[0] \"jason\" (delegate default/leaf http[0])"
    );
    assert_eq!(
        e.rules[0].details,
        ["match[0]: header end-user exact \"jason\": request has none"]
    );
    assert_eq!(e.rules[1].rule, "http[1]");
    assert_eq!(e.rules[1].outcome, "matched");
    Ok(())
}

#[test]
fn tcp_rules_are_explained() -> Result<(), Error> {
    let vs = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: default}
spec:
  hosts: [db]
  tcp:
  - match:
    - port: 5433
    route:
    - destination: {host: reviews, port: {number: 9080}}
  - match:
    - sourceLabels: {app: sleep}
    route:
    - destination: {host: db}
";
    let (snap, routes) = load(&[vs]);
    let e = run(
        &snap,
        &routes,
        &query("default/sleep", "tcp://db:5432", &[]),
    )?;
    assert_eq!(e.request, "connect tcp://db:5432");
    assert_eq!(rule(&e, "tcp[0]").outcome, "no match");
    assert_eq!(
        rule(&e, "tcp[0]").details,
        ["match[0]: port 5433: the request is to port 5432"]
    );
    assert_eq!(rule(&e, "tcp[1]").outcome, "matched");
    assert_eq!(
        e.result,
        "VirtualService default/db tcp[1] -> outbound|5432||db.default.svc.cluster.local 100%"
    );
    assert_eq!(e.clusters[0].endpoints[0].pod, "default/db-0");
    Ok(())
}

#[test]
fn unknown_pods_and_hosts_are_errors() {
    let (snap, routes) = load(&[]);
    let e = run(
        &snap,
        &routes,
        &query("default/nope", "http://reviews:9080/", &[]),
    );
    assert!(matches!(e, Err(Error::UnknownPod(p)) if p == "default/nope"));
    let e = run(
        &snap,
        &routes,
        &query("default/sleep", "http://ratings:9080/", &[]),
    );
    let msg = e.map(|_| ()).map_err(|e| e.to_string());
    assert_eq!(
        msg,
        Err("unknown host \"ratings\": no Service or ServiceEntry ratings or ratings.default.svc.cluster.local with port 9080".to_string())
    );
    let e = run(
        &snap,
        &routes,
        &query("default/sleep", "http://reviews:80/", &[]),
    );
    assert!(matches!(e, Err(Error::UnknownHost { port: 80, .. })));
}

#[test]
fn tls_rules_are_chosen_by_sni() -> Result<(), Error> {
    let svc = "\
apiVersion: v1
kind: Service
metadata: {name: secure, namespace: default}
spec:
  clusterIP: 10.96.0.50
  selector: {app: reviews}
  ports: [{name: tls, port: 443}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: secure, namespace: default}
spec:
  host: secure
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: secure, namespace: default}
spec:
  hosts: [secure, a.secure.example, b.secure.example]
  tls:
  - match:
    - sniHosts: [a.secure.example]
    route:
    - destination: {host: secure, subset: v1}
  - match:
    - sniHosts: [b.secure.example]
    route:
    - destination: {host: secure, subset: v2}
";
    let (snap, routes) = load(&[svc]);
    let mut q = query("default/sleep", "tls://secure:443", &[]);
    q.sni = Some("b.secure.example".to_string());
    let e = run(&snap, &routes, &q)?;
    assert_eq!(
        e.result,
        "VirtualService default/secure tls[1] -> outbound|443|v2|secure.default.svc.cluster.local 100%"
    );
    assert_eq!(
        rule(&e, "default/secure tls[0]").outcome,
        "no match (SNI b.secure.example)"
    );
    assert_eq!(
        rule(&e, "default/secure tls[1]").outcome,
        "matched (SNI b.secure.example)"
    );
    assert_eq!(e.clusters[0].endpoints[0].pod, "default/reviews-v2");
    q.sni = Some("c.secure.example".to_string());
    let none = run(&snap, &routes, &q)?;
    assert_eq!(
        none.result,
        "no tls rule for SNI c.secure.example: default route -> outbound|443||secure.default.svc.cluster.local"
    );
    Ok(())
}
