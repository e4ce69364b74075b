//! Table tests for conversion and validation, and the shipped config directories.

use std::path::PathBuf;

use super::*;
use crate::source::split_documents;

fn config_dir(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("config")
        .join(rel)
}

fn load(yaml: &str) -> LoadReport {
    build(&split_documents("test.yaml", yaml))
}

fn assert_clean(dir: &str) -> LoadReport {
    let path = config_dir(dir);
    let report = load_dir(&path).unwrap_or_else(|e| panic!("{e}"));
    let errors: Vec<String> = report.errors.iter().map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{dir} has errors:\n{}",
        errors.join("\n")
    );
    report
}

#[test]
fn demo_loads_cleanly() {
    let report = assert_clean("demo");
    let warnings: Vec<String> = report.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        warnings.is_empty(),
        "demo has warnings:\n{}",
        warnings.join("\n")
    );
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
    assert_eq!(
        split,
        vec![(Some("v1"), 10), (Some("v2"), 10), (Some("v3"), 80)]
    );
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

/// A VirtualService document named `t` in namespace `ns1` with the given `spec` body (indented 2).
fn vs(spec: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: t\n  namespace: ns1\nspec:\n{spec}")
}

fn dr(spec: &str) -> String {
    format!("apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata:\n  name: t\n  namespace: ns1\nspec:\n{spec}")
}

/// Invalid samples: each must produce exactly one rejected resource whose error line contains `want`.
#[test]
fn invalid_resources_are_rejected_with_precise_errors() {
    let route = "    route:\n    - destination:\n        host: reviews\n";
    let item = "  - route:\n    - destination:\n        host: reviews\n";
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "negative weight",
            vs("  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: -1\n    - destination: {host: reviews, subset: v2}\n      weight: 10\n"),
            "test.yaml:11: VirtualService ns1/t: spec.http[0].route[0].weight: weight -1 must not be negative",
        ),
        (
            "all zero weights",
            vs("  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 0\n    - destination: {host: reviews, subset: v2}\n"),
            "spec.http[0].route: total destination weight = 0",
        ),
        (
            "mirror and mirrors",
            vs(&format!("  hosts: [reviews]\n  http:\n{}    mirror: {{host: reviews}}\n    mirrors:\n    - destination: {{host: reviews}}\n", item)),
            "spec.http[0]: mirror and mirrors cannot be set together",
        ),
        (
            "route and redirect",
            vs(&format!("  hosts: [reviews]\n  http:\n{}    redirect: {{uri: /x}}\n", item)),
            "spec.http[0]: route and redirect cannot be set together",
        ),
        (
            "no action",
            vs("  hosts: [reviews]\n  http:\n  - timeout: 1s\n"),
            "HTTP route, redirect, direct_response or delegate is required",
        ),
        (
            "bad regex",
            vs(&format!("  hosts: [reviews]\n  http:\n  - match:\n    - uri:\n        regex: \"(\"\n{route}")),
            "test.yaml:10: VirtualService ns1/t: spec.http[0].match[0].uri: invalid regex \"(\"",
        ),
        (
            "regex too long",
            vs(&format!("  hosts: [reviews]\n  http:\n  - match:\n    - uri:\n        regex: \"{}\"\n{route}", "a".repeat(1025))),
            "regex is 1025 characters long",
        ),
        (
            "empty header prefix",
            vs(&format!("  hosts: [reviews]\n  http:\n  - match:\n    - headers:\n        end-user:\n          prefix: \"\"\n{route}")),
            "spec.http[0].match[0].headers.end-user: empty prefix is only allowed for uri",
        ),
        (
            "bad duration",
            vs(&format!("  hosts: [reviews]\n  http:\n{}    timeout: 5sec\n", item)),
            "spec.http[0].timeout: duration \"5sec\" has unknown unit \"sec\"",
        ),
        (
            "zero timeout",
            vs(&format!("  hosts: [reviews]\n  http:\n{}    timeout: 0s\n", item)),
            "spec.http[0].timeout: duration \"0s\" must be at least 1ms",
        ),
        (
            "star host bound to mesh",
            vs(&format!("  hosts: [\"*\"]\n  http:\n{}", item)),
            "spec.hosts[0]: wildcard host \"*\" is not allowed here for virtual services bound to the mesh gateway",
        ),
        (
            "partial wildcard",
            vs(&format!("  hosts: [\"foo*.com\"]\n  http:\n{}", item)),
            "a wildcard is only allowed as the whole first label",
        ),
        (
            "overlapping hosts",
            vs(&format!("  hosts: [\"*.foo.com\", a.foo.com]\n  http:\n{}", item)),
            "hosts \"*.foo.com\" and \"a.foo.com\" overlap",
        ),
        (
            "no routes at all",
            vs("  hosts: [reviews]\n"),
            "spec: at least one of http, tcp or tls is required",
        ),
        (
            "unknown field",
            vs("  hosts: [reviews]\n  http:\n  - route:\n    - destination:\n        host: reviews\n        subnet: v1\n"),
            "test.yaml:12: VirtualService ns1/t: spec.http[0].route[0].destination.subnet: unknown field `subnet`",
        ),
        (
            "mirror percentage out of range",
            vs(&format!("  hosts: [reviews]\n  http:\n{}    mirror: {{host: reviews}}\n    mirrorPercentage: {{value: 150}}\n", item)),
            "spec.http[0].mirrorPercentage.value: percentage 150 must be in [0, 100]",
        ),
        (
            "port out of range",
            vs("  hosts: [reviews]\n  http:\n  - route:\n    - destination:\n        host: reviews\n        port:\n          number: 70000\n"),
            "spec.http[0].route[0].destination.port.number: port number 70000 is out of range 1..65535",
        ),
        (
            "retry on with space",
            vs(&format!("  hosts: [reviews]\n  http:\n{}    retries: {{attempts: 3, retryOn: \"5xx, reset\"}}\n", item)),
            "unknown retryOn condition \" reset\"",
        ),
        (
            "attempts zero with perTryTimeout",
            vs(&format!("  hosts: [reviews]\n  http:\n{}    retries: {{attempts: 0, perTryTimeout: 1s}}\n", item)),
            "attempts is 0 (retries disabled) but perTryTimeout",
        ),
        (
            "fault percentage too small",
            vs(&format!("  hosts: [reviews]\n  http:\n{}    fault:\n      abort:\n        httpStatus: 500\n        percentage: {{value: 0.00005}}\n", item)),
            "spec.http[0].fault.abort.percentage.value: percentage 0.00005 must be in {0} or [0.0001, 100]",
        ),
        (
            "bad grpc status",
            vs(&format!("  hosts: [reviews]\n  http:\n{}    fault:\n      abort:\n        grpcStatus: \"14\"\n        percentage: {{value: 1}}\n", item)),
            "unknown gRPC status \"14\"",
        ),
        (
            "redirect code not translatable",
            vs("  hosts: [reviews]\n  http:\n  - redirect:\n      uri: /new\n      redirectCode: 399\n"),
            "redirectCode 399 cannot be served",
        ),
        (
            "direct response status",
            vs("  hosts: [reviews]\n  http:\n  - directResponse:\n      status: 700\n"),
            "spec.http[0].directResponse.status: status 700 must be in 200..599",
        ),
        (
            "authority twice",
            vs(&format!("  hosts: [reviews]\n  http:\n{}    rewrite: {{authority: a}}\n    headers:\n      request:\n        set: {{\":authority\": b}}\n", item)),
            "authority is rewritten in more than one place",
        ),
        (
            "pseudo header in remove",
            vs(&format!("  hosts: [reviews]\n  http:\n{}    headers:\n      request:\n        remove: [\":path\"]\n", item)),
            "spec.http[0].headers.request.remove[0]: header \":path\" cannot be used here",
        ),
        (
            "exportTo star with others",
            vs(&format!("  hosts: [reviews]\n  exportTo: [\"*\", \".\"]\n  http:\n{}", item)),
            "spec.exportTo: \"*\" cannot be combined with other exportTo entries",
        ),
        (
            "tilde exportTo on VS",
            vs(&format!("  hosts: [reviews]\n  exportTo: [\"~\"]\n  http:\n{}", item)),
            "not allowed for Istio configuration objects",
        ),
        (
            "rewrite uri and regex",
            vs(&format!("  hosts: [reviews]\n  http:\n{}    rewrite:\n      uri: /a\n      uriRegexRewrite: {{match: a, rewrite: b}}\n", item)),
            "uri and uriRegexRewrite cannot be set together",
        ),
        (
            "tls route sni outside hosts",
            vs("  hosts: [a.example.com]\n  tls:\n  - match:\n    - sniHosts: [b.example.com]\n    route:\n    - destination: {host: a.example.com}\n"),
            "SNI host \"b.example.com\" is not a subset of any of the virtual service's hosts",
        ),
        (
            "tcp route without route",
            vs("  hosts: [reviews]\n  tcp:\n  - match:\n    - port: 27017\n"),
            "spec.tcp[0].route: route is required",
        ),
        (
            "delegate with gateways",
            vs("  gateways: [mesh]\n  http:\n  - route:\n    - destination: {host: reviews}\n"),
            "a delegate virtual service (no hosts) must not set gateways",
        ),
        (
            "duplicate subset",
            dr("  host: reviews\n  subsets:\n  - name: v1\n    labels: {version: v1}\n  - name: v1\n    labels: {version: v2}\n"),
            "test.yaml:11: DestinationRule ns1/t: spec.subsets[1].name: duplicate subset \"v1\"",
        ),
        (
            "bad subset name",
            dr("  host: reviews\n  subsets:\n  - name: V_1\n"),
            "subset name \"V_1\" is not a DNS-1123 label",
        ),
        (
            "empty traffic policy",
            dr("  host: reviews\n  trafficPolicy: {}\n"),
            "spec.trafficPolicy: trafficPolicy must set at least one field",
        ),
        (
            "simple and consistent hash",
            dr("  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      simple: ROUND_ROBIN\n      consistentHash: {useSourceIp: true}\n"),
            "simple and consistentHash cannot be set together",
        ),
        (
            "unknown lb",
            dr("  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      simple: FASTEST\n"),
            "spec.trafficPolicy.loadBalancer.simple: unknown value \"FASTEST\"",
        ),
        (
            "cookie without name",
            dr("  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      consistentHash:\n        httpCookie: {ttl: 10s}\n"),
            "httpCookie.name is required",
        ),
        (
            "maglev not prime",
            dr("  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      consistentHash:\n        useSourceIp: true\n        maglev: {tableSize: 1000}\n"),
            "maglev.tableSize 1000 must be a prime",
        ),
        (
            "max ejection percent",
            dr("  host: reviews\n  trafficPolicy:\n    outlierDetection:\n      maxEjectionPercent: 150\n"),
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent: maxEjectionPercent 150 must be in 0..100",
        ),
        (
            "negative max connections",
            dr("  host: reviews\n  trafficPolicy:\n    connectionPool:\n      tcp: {maxConnections: -1}\n"),
            "maxConnections -1 must be in 0..2147483647",
        ),
        (
            "empty connection pool",
            dr("  host: reviews\n  trafficPolicy:\n    connectionPool: {}\n"),
            "connectionPool (tcp or http) must set at least one field",
        ),
        (
            "port level without port",
            dr("  host: reviews\n  trafficPolicy:\n    portLevelSettings:\n    - loadBalancer: {simple: RANDOM}\n"),
            "spec.trafficPolicy.portLevelSettings[0].port: port number is required",
        ),
        (
            "workload selector exported elsewhere",
            dr("  host: reviews\n  exportTo: [\"*\"]\n  workloadSelector:\n    matchLabels: {app: sleep}\n  subsets:\n  - name: v1\n"),
            "can only be exported to its own namespace",
        ),
        (
            "mutual tls without certs",
            dr("  host: reviews\n  trafficPolicy:\n    tls: {mode: MUTUAL}\n"),
            "clientCertificate for MUTUAL (or credentialName) is required",
        ),
        (
            "service port out of range",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  clusterIP: 10.96.0.5\n  ports:\n  - port: 0\n".to_string(),
            "test.yaml:8: Service default/s: spec.ports[0].port: port number 0 is out of range",
        ),
        (
            "service bad cluster ip",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  clusterIP: 10.96.0.500\n  ports:\n  - port: 80\n".to_string(),
            "spec.clusterIP: \"10.96.0.500\" is not an IP address",
        ),
        (
            "multi-port service without names",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  ports:\n  - port: 80\n  - port: 81\n".to_string(),
            "port name is required when a Service has several ports",
        ),
        (
            "pod bad ip",
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nstatus:\n  podIP: nope\n".to_string(),
            "test.yaml:6: Pod default/p: status.podIP: \"nope\" is not an IP address",
        ),
        (
            "missing name",
            "apiVersion: v1\nkind: Pod\nmetadata:\n  namespace: x\n".to_string(),
            "metadata.name: metadata.name is required",
        ),
        (
            "service entry star host",
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: se\nspec:\n  hosts: [\"*\"]\n  ports:\n  - {number: 80, name: http, protocol: HTTP}\n".to_string(),
            "wildcard host \"*\" is not allowed here in a ServiceEntry",
        ),
        (
            "service entry none with endpoints",
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: se\nspec:\n  hosts: [a.com]\n  ports:\n  - {number: 80, name: http, protocol: HTTP}\n  resolution: NONE\n  endpoints:\n  - address: 1.2.3.4\n".to_string(),
            "resolution NONE forwards to the dialled address",
        ),
        (
            "mesh config bad mode",
            "apiVersion: keel.io/v1alpha1\nkind: MeshConfig\nmetadata:\n  name: m\nspec:\n  outboundTrafficPolicy:\n    mode: DENY\n".to_string(),
            "test.yaml:7: MeshConfig m: spec.outboundTrafficPolicy.mode: unknown value \"DENY\"",
        ),
        (
            "yaml syntax",
            "apiVersion: v1\nkind: Pod\nmetadata: [unclosed\n".to_string(),
            "YAML syntax error",
        ),
    ];
    let mut failures = Vec::new();
    for (name, yaml, want) in cases {
        let report = load(&yaml);
        let errors: Vec<String> = report.errors.iter().map(|e| e.to_string()).collect();
        if !errors.iter().any(|e| e.contains(want)) {
            failures.push(format!(
                "{name}: expected an error containing {want:?}, got {errors:#?}"
            ));
        }
        let s = &report.snapshot;
        let kept = s.virtual_services.len()
            + s.destination_rules.len()
            + s.services.len()
            + s.pods.len()
            + s.service_entries.len();
        if kept != 0 {
            failures.push(format!("{name}: the invalid resource must be dropped"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A bad resource is dropped alone; the rest still builds the snapshot.
#[test]
fn rejection_is_per_resource() {
    let yaml = format!(
        "{}\n---\n{}",
        vs("  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n      weight: -5\n"),
        vs("  hosts: [ratings]\n  http:\n  - route:\n    - destination: {host: ratings}\n").replace("name: t", "name: ok")
    );
    let report = load(&yaml);
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    assert_eq!(report.snapshot.virtual_services.len(), 1);
    assert_eq!(report.snapshot.virtual_services[0].meta.name, "ok");
}

#[test]
fn weights_follow_istio_rules() {
    let one = load(&vs("  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n      weight: 0\n"));
    let HttpAction::Route(d) = &one.snapshot.virtual_services[0].http[0].action else {
        panic!("route");
    };
    assert_eq!(d[0].weight, 100, "a single destination always gets 100%");

    let rel = load(&vs("  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 1\n    - destination: {host: reviews, subset: v2}\n      weight: 3\n    - destination: {host: reviews, subset: v3}\n      weight: 0\n"));
    assert!(rel.errors.is_empty(), "{:?}", rel.errors);
    let HttpAction::Route(d) = &rel.snapshot.virtual_services[0].http[0].action else {
        panic!("route");
    };
    let w: Vec<u32> = d.iter().map(|d| d.weight).collect();
    assert_eq!(
        w,
        vec![1, 3],
        "weight-0 entries are dropped, the rest stay relative"
    );
}

#[test]
fn conversion_details() {
    let report = load(&vs(concat!(
        "  hosts: [reviews, reviews.other, \"*.example.com\"]\n",
        "  http:\n",
        "  - match:\n",
        "    - headers:\n",
        "        End-User: {exact: jason}\n",
        "        x-any: {}\n",
        "      queryParams:\n",
        "        v: {regex: \"\\\\d+\"}\n",
        "    mirror: {host: reviews, subset: v2}\n",
        "    mirror_percent: 30\n",
        "    route:\n",
        "    - destination: {host: reviews, subset: v1}\n",
        "    rewrite:\n",
        "      uriRegexRewrite: {match: \"^/service/([^/]+)(/.*)$\", rewrite: \"/p\\\\2/\\\\1\"}\n",
        "    headers:\n",
        "      request:\n",
        "        set: {host: other, x-pct: \"100%%\"}\n",
        "    retries: {attempts: 3}\n",
        "    fault:\n",
        "      delay: {fixedDelay: 100ms, percent: 50}\n",
        "  - route:\n",
        "    - destination: {host: reviews, subset: v1}\n",
        "    mirrorPercentage: {value: 5}\n",
        "    mirror_percent: 50\n",
        "    mirror: {host: reviews}\n",
    )));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let vs = &report.snapshot.virtual_services[0];
    assert_eq!(
        vs.hosts,
        vec![
            "reviews.ns1.svc.cluster.local",
            "reviews.other",
            "*.example.com"
        ]
    );
    let r0 = &vs.http[0];
    let m = &r0.matches[0];
    assert_eq!(m.headers[0].0, "end-user", "header names are lower-cased");
    assert!(matches!(m.headers[1].1, StringMatch::Present));
    let StringMatch::Regex(re) = &m.query_params[0].1 else {
        panic!("regex");
    };
    assert!(
        re.is_match("123") && !re.is_match("a123"),
        "regexes are anchored"
    );
    assert_eq!(
        r0.mirrors[0].percentage, 30.0,
        "mirror_percent applies without mirrorPercentage"
    );
    assert_eq!(
        vs.http[1].mirrors[0].percentage, 5.0,
        "mirrorPercentage wins over mirror_percent"
    );
    let rw = r0.rewrite.as_ref().expect("rewrite");
    assert_eq!(
        rw.authority.as_deref(),
        Some("other"),
        "host in request.set becomes an authority rewrite"
    );
    let (re, tpl) = rw.uri_regex.as_ref().expect("regex rewrite");
    assert_eq!(
        re.replace_all("/service/update/v1/api", tpl.as_str()),
        "/p/v1/api/update"
    );
    assert_eq!(
        r0.headers.request.set,
        vec![("x-pct".to_string(), "100%%".to_string())],
        "values stay Envoy templates; the filters turn %% into %"
    );
    let retries = r0.retries.as_ref().expect("retries");
    assert_eq!(retries.retry_on, crate::policy::validate::DEFAULT_RETRY_ON);
    let delay = r0
        .fault
        .as_ref()
        .and_then(|f| f.delay.as_ref())
        .expect("delay");
    assert_eq!(delay.percentage, Some(50.0));
    let warnings: Vec<String> = report.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("mirror_percent is deprecated")),
        "{warnings:#?}"
    );
}

#[test]
fn warnings_for_unreachable_rules_and_unknown_subsets() {
    let yaml = format!(
        "{}\n---\n{}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: reviews\n  namespace: ns1\nspec:\n  ports:\n  - port: 9080\n",
        vs(concat!(
            "  hosts: [reviews]\n",
            "  http:\n",
            "  - match:\n",
            "    - uri: {prefix: /api}\n",
            "    route:\n",
            "    - destination: {host: reviews, subset: v1}\n",
            "  - match:\n",
            "    - uri: {prefix: /api/v2}\n",
            "    route:\n",
            "    - destination: {host: reviews, subset: v9}\n",
            "  - route:\n",
            "    - destination: {host: reviews, subset: v1}\n",
            "  - route:\n",
            "    - destination: {host: reviews, subset: v2}\n",
        )),
        dr("  host: reviews\n  subsets:\n  - name: v1\n  - name: v2\n")
    );
    let report = load(&yaml);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let warnings: Vec<String> = report.warnings.iter().map(|w| w.to_string()).collect();
    let expect = [
        "spec.http[1].match[0]: warning: this match can never be reached: spec.http[0] already matches every URI starting with \"/api\"",
        "spec.http[3]: warning: this rule follows the catch-all rule spec.http[2] and can never match",
        "spec.http[1].route[0].destination: warning: subset \"v9\" of reviews.ns1.svc.cluster.local is not defined",
        "test.yaml:35: Deployment default/d: warning: ignoring apps/v1 Deployment",
    ];
    for want in expect {
        assert!(
            warnings.iter().any(|w| w.contains(want)),
            "missing {want:?} in {warnings:#?}"
        );
    }
    assert_eq!(report.ignored, 1);
}

#[test]
fn duplicates_and_vip_conflicts_are_rejected() {
    let svc = |name: &str, ip: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  clusterIP: {ip}\n  ports:\n  - port: 80\n")
    };
    let yaml = [
        svc("a", "10.96.0.1"),
        svc("a", "10.96.0.2"),
        svc("b", "10.96.0.1"),
    ]
    .join("---\n");
    let report = load(&yaml);
    let errors: Vec<String> = report.errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(
        errors[0].contains(
            "Service default/a: metadata.name: duplicate resource (first defined at test.yaml:1)"
        ),
        "{errors:#?}"
    );
    assert!(
        errors[1].contains("10.96.0.1:80 is already the address of Service default/a"),
        "{errors:#?}"
    );
    assert_eq!(report.snapshot.services.len(), 1);
}

#[test]
fn pods_readiness_capture_and_ports() {
    let pod = |extra: &str| format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n{extra}");
    let cases = [
        ("status:\n  podIP: 10.244.0.9\n", true, true),
        ("status:\n  phase: Pending\n  podIP: 10.244.0.9\n", false, true),
        ("status:\n  phase: Running\n  podIP: 10.244.0.9\n  conditions:\n  - {type: Ready, status: \"False\"}\n", false, true),
        ("  annotations:\n    keel.io/capture: \"false\"\nstatus:\n  podIP: 10.244.0.9\n", true, false),
    ];
    for (extra, ready, capture) in cases {
        let report = load(&pod(extra));
        assert!(report.errors.is_empty(), "{extra}: {:?}", report.errors);
        let p = &report.snapshot.pods[0];
        assert_eq!((p.ready, p.capture), (ready, capture), "{extra}");
        assert_eq!(
            p.ips,
            vec!["10.244.0.9".parse::<std::net::IpAddr>().expect("ip")]
        );
    }
}

#[test]
fn pods_a_service_selects_but_that_can_never_serve_are_warned() {
    let service = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {app: web}\n  ports:\n  - {name: http, port: 80, targetPort: http}\n";
    let pod = |name: &str, app: &str, rest: &str| {
        format!("---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: {app}}}\nspec:\n  containers:\n  - name: c\n{rest}")
    };
    let ports = "    ports:\n    - {name: http, containerPort: 8080}\n";
    let yaml = [
        service.to_string(),
        pod(
            "serves",
            "web",
            &format!("{ports}status:\n  podIP: 10.244.0.2\n"),
        ),
        pod("no-ip", "web", ports),
        pod(
            "failed",
            "web",
            &format!("{ports}status:\n  phase: Failed\n  podIP: 10.244.0.4\n"),
        ),
        pod("no-port", "web", "status:\n  podIP: 10.244.0.5\n"),
        // Not selected: nothing to say, whatever its state.
        pod("client", "sleep", ""),
        // Pending may still start: not "never".
        pod(
            "pending",
            "web",
            &format!("{ports}status:\n  phase: Pending\n  podIP: 10.244.0.6\n"),
        ),
    ]
    .concat();
    let report = load(&yaml);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let mut warnings: Vec<String> = report.warnings.iter().map(|w| w.to_string()).collect();
    warnings.sort();
    assert_eq!(
        warnings,
        vec![
            "test.yaml:23: Pod default/no-ip: status: warning: Service web selects this pod, but it can never be an endpoint: it has no status.podIP or status.podIPs".to_string(),
            "test.yaml:44: Pod default/failed: status: warning: Service web selects this pod, but it can never be an endpoint: its phase is Failed, and a finished pod never serves".to_string(),
            "test.yaml:56: Pod default/no-port: status: warning: Service web port 80 targets the container port named \"http\", which this pod does not declare: it can never be an endpoint of that port".to_string(),
        ]
    );
}

#[test]
fn mesh_config_maps_to_policy() {
    let report = load("apiVersion: keel.io/v1alpha1\nkind: MeshConfig\nmetadata:\n  name: m\nspec:\n  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n  defaultHttpTimeout: 0s\n  mirrorShadowSuffix: false\n  rootNamespace: mesh-root\n  protocolDetectionTimeout: 250ms\n");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let m = &report.snapshot.mesh;
    assert_eq!(
        m.outbound_traffic_policy,
        OutboundTrafficPolicy::RegistryOnly
    );
    assert_eq!(m.default_http_timeout, None);
    assert!(!m.mirror_shadow_suffix);
    assert_eq!(m.root_namespace, "mesh-root");
    assert_eq!(
        m.protocol_detection_timeout,
        std::time::Duration::from_millis(250)
    );
}

#[test]
fn traffic_policy_conversion() {
    let report = load(&dr(concat!(
        "  host: reviews\n",
        "  trafficPolicy:\n",
        "    loadBalancer:\n",
        "      consistentHash:\n",
        "        httpCookie:\n",
        "          {name: user, ttl: 60s, path: /, attributes: [{name: SameSite, value: Strict}, {name: Secure}]}\n",
        "    connectionPool:\n",
        "      tcp: {maxConnections: 1, idleTimeout: 0s}\n",
        "      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}\n",
        "    outlierDetection:\n",
        "      consecutiveErrors: 7\n",
        "      interval: 1s\n",
        "    portLevelSettings:\n",
        "    - port: {number: 9080}\n",
        "      loadBalancer: {simple: RANDOM}\n",
    )));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let tp = report.snapshot.destination_rules[0]
        .traffic_policy
        .as_ref()
        .expect("policy");
    assert_eq!(
        tp.load_balancer,
        Some(LoadBalancer::ConsistentHash(ConsistentHash {
            key: HashKey::Cookie {
                name: "user".into(),
                path: Some("/".into()),
                ttl: Some(std::time::Duration::from_secs(60)),
                attributes: vec![
                    ("SameSite".into(), "Strict".into()),
                    ("Secure".into(), String::new())
                ],
            },
            algorithm: HashAlgorithm::RingHash {
                minimum_ring_size: 1024
            },
        }))
    );
    let cp = tp.connection_pool.as_ref().expect("pool");
    assert_eq!(cp.tcp_max_connections, Some(1));
    assert_eq!(cp.http1_max_pending_requests, Some(1));
    assert_eq!(cp.idle_timeout, Some(std::time::Duration::ZERO));
    let od = tp.outlier_detection.as_ref().expect("od");
    assert_eq!(
        od.consecutive_5xx_errors,
        Some(5),
        "deprecated consecutiveErrors is ignored, default 5"
    );
    assert_eq!(od.interval, std::time::Duration::from_secs(1));
    assert_eq!(od.base_ejection_time, std::time::Duration::from_secs(30));
    assert_eq!(od.max_ejection_percent, 10);
    assert_eq!(tp.port_level[0].0, 9080);
    assert_eq!(tp.port_level[0].1.load_balancer, Some(LoadBalancer::Random));
    // maglev and ringHash pick the algorithm; neither means a ring of 1024.
    for (yaml, want) in [
        (
            "{httpHeaderName: x, maglev: {tableSize: 65537}}",
            HashAlgorithm::Maglev { table_size: 65537 },
        ),
        (
            "{httpHeaderName: x, ringHash: {minimumRingSize: 4096}}",
            HashAlgorithm::RingHash {
                minimum_ring_size: 4096,
            },
        ),
        (
            "{httpHeaderName: x, minimumRingSize: 2048}",
            HashAlgorithm::RingHash {
                minimum_ring_size: 2048,
            },
        ),
    ] {
        let report = load(&dr(&format!(
            "  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      consistentHash: {yaml}\n"
        )));
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let lb = report.snapshot.destination_rules[0]
            .traffic_policy
            .as_ref()
            .and_then(|tp| tp.load_balancer.clone());
        match lb {
            Some(LoadBalancer::ConsistentHash(ch)) => assert_eq!(ch.algorithm, want, "{yaml}"),
            other => panic!("{yaml}: {other:?}"),
        }
    }
    assert!(report.warnings.iter().any(|w| w.at.field
        == "spec.trafficPolicy.outlierDetection.consecutiveErrors"
        && w.message
            == "consecutiveErrors is deprecated and ignored, as in Istio; use consecutive5xxErrors or consecutiveGatewayErrors"));
    assert!(
        !report
            .warnings
            .iter()
            .any(|w| w.at.field.contains("outlierDetection") && w.message.starts_with(NOT_APPLIED)),
        "outlier detection is applied: {:?}",
        report.warnings
    );
}

/// Policies istiod accepts although they look odd, converted to what Envoy does with them.
#[test]
fn destination_rule_istiod_quirks_in_the_model() {
    let policy_of = |yaml: &str| -> Result<TrafficPolicy, String> {
        let report = load(&format!(
            "{REVIEWS_NS1}{}",
            dr(&format!("  host: reviews\n  trafficPolicy:\n{yaml}"))
        ));
        if !report.errors.is_empty() {
            return Err(format!("{yaml}: {:?}", report.errors));
        }
        report
            .snapshot
            .destination_rules
            .first()
            .and_then(|d| d.traffic_policy.clone())
            .ok_or_else(|| format!("{yaml}: no policy"))
    };
    let lb = |yaml: &str| policy_of(yaml).map(|tp| tp.load_balancer);
    // A consistentHash that hashes nothing picks endpoints at random, as Envoy does.
    assert_eq!(
        lb("    loadBalancer: {consistentHash: {}}\n"),
        Ok(Some(LoadBalancer::Random))
    );
    assert_eq!(
        lb("    loadBalancer: {consistentHash: {useSourceIp: false}}\n"),
        Ok(Some(LoadBalancer::Random))
    );
    // Header names are matched lower-case; maglev tableSize 1 is "prime" to Envoy and istiod.
    assert_eq!(
        lb("    loadBalancer: {consistentHash: {httpHeaderName: X-User, maglev: {tableSize: 1}}}\n"),
        Ok(Some(LoadBalancer::ConsistentHash(ConsistentHash {
            key: HashKey::Header("x-user".into()),
            algorithm: HashAlgorithm::Maglev { table_size: 1 },
        })))
    );
    // A tcp idleTimeout under 1ms is 0 whole milliseconds: no timeout.
    let tp = policy_of("    connectionPool: {tcp: {idleTimeout: 0.5ms}}\n");
    assert_eq!(
        tp.map(|tp| tp.connection_pool.and_then(|cp| cp.tcp_idle_timeout)),
        Ok(Some(std::time::Duration::ZERO))
    );
    // The first entry for a port applies; a number that is no service port never does.
    let tp = policy_of(concat!(
        "    portLevelSettings:\n",
        "    - {port: {number: 9080}, loadBalancer: {simple: RANDOM}}\n",
        "    - {port: {number: 9080}, loadBalancer: {simple: ROUND_ROBIN}}\n",
        "    - {port: {number: 65536}, loadBalancer: {simple: ROUND_ROBIN}}\n",
    ));
    assert_eq!(
        tp.map(|tp| {
            tp.port_level
                .iter()
                .map(|(p, pl)| (*p, pl.load_balancer.clone()))
                .collect::<Vec<_>>()
        }),
        Ok(vec![(9080, Some(LoadBalancer::Random))])
    );
    // warmup wins over the deprecated warmupDurationSecs.
    let tp = policy_of("    loadBalancer: {warmup: {duration: 10s}, warmupDurationSecs: 20s}\n");
    assert_eq!(
        tp.map(|tp| tp.warmup.map(|w| w.duration)),
        Ok(Some(std::time::Duration::from_secs(10)))
    );
    // With DISABLE nothing uses a credentialName, so it is accepted.
    let tp =
        policy_of("    tls: {mode: DISABLE, credentialName: unused, insecureSkipVerify: true}\n");
    assert_eq!(
        tp.map(|tp| tp.tls.map(|t| t.mode)),
        Ok(Some(TlsMode::Disable))
    );
}

/// The outlier-detection block as istiod translates it: defaults, explicit zeros, split local-origin
/// counting and error codes.
#[test]
fn outlier_detection_defaults_and_zeros_follow_istio() {
    let od_of = |yaml: &str| -> (Option<OutlierDetection>, LoadReport) {
        let report = load(&format!(
            "{REVIEWS_NS1}{}",
            dr(&format!(
                "  host: reviews\n  trafficPolicy:\n    outlierDetection: {yaml}\n"
            ))
        ));
        let od = report.snapshot.destination_rules.first().and_then(|d| {
            d.traffic_policy
                .as_ref()
                .and_then(|tp| tp.outlier_detection.clone())
        });
        (od, report)
    };

    let (od, report) = od_of("{interval: 1s}");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(warning_fields(&report), vec![]);
    let od = od.expect("block present");
    assert_eq!(od.consecutive_5xx_errors, Some(5), "Envoy default");
    assert_eq!(
        od.consecutive_gateway_errors, None,
        "unset: detected, not enforced"
    );
    assert!(!od.split_external_local_origin_errors);
    assert_eq!(
        od.consecutive_local_origin_failures, None,
        "only with split"
    );
    assert!(od.http_error_codes.is_empty());
    assert_eq!(od.interval, std::time::Duration::from_secs(1));
    assert_eq!(od.base_ejection_time, std::time::Duration::from_secs(30));
    assert_eq!(od.max_ejection_percent, 10);
    assert_eq!(od.min_health_percent, 0);

    let (od, report) = od_of("{consecutive5xxErrors: 0, consecutiveGatewayErrors: 0}");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let od = od.expect("block present");
    assert_eq!(od.consecutive_5xx_errors, None, "explicit 0 disables");
    assert_eq!(
        od.consecutive_gateway_errors,
        Some(0),
        "explicit 0 never detects"
    );

    let (od, report) = od_of("{consecutiveGatewayErrors: 2, splitExternalLocalOriginErrors: true}");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let od = od.expect("block present");
    assert_eq!(od.consecutive_gateway_errors, Some(2));
    assert!(od.split_external_local_origin_errors);
    assert_eq!(
        od.consecutive_local_origin_failures,
        Some(5),
        "Envoy default with split"
    );

    let (od, _) =
        od_of("{splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 0}");
    assert_eq!(
        od.expect("block").consecutive_local_origin_failures,
        Some(5)
    );
    let (od, _) =
        od_of("{splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 2}");
    assert_eq!(
        od.expect("block").consecutive_local_origin_failures,
        Some(2)
    );

    // Without split a positive local-origin threshold is rejected, as istiod does; 0 is not.
    let (od, report) = od_of("{consecutiveLocalOriginFailures: 2}");
    assert!(od.is_none());
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    let (od, report) = od_of("{consecutiveLocalOriginFailures: 0}");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(od.expect("block").consecutive_local_origin_failures, None);

    let (od, report) = od_of("{outlierDetectionHttpErrorCodes: [500, 429]}");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(od.expect("block").http_error_codes, vec![500, 429]);
    let (od, report) = od_of("{outlierDetectionHttpErrorCodes: [99]}");
    assert!(od.is_none());
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);

    let (od, report) = od_of("{maxEjectionPercent: 0, minHealthPercent: 50}");
    let od = od.expect("block present");
    assert_eq!(od.max_ejection_percent, 10, "istiod drops a 0");
    assert_eq!(od.min_health_percent, 50);
    assert_eq!(
        warning_fields(&report),
        vec![(
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent".to_string(),
            "maxEjectionPercent 0 means the default 10 (as in Istio); up to 10% of endpoints may be ejected".to_string()
        )]
    );
}

/// `(field, message)` of every warning.
fn warning_fields(report: &LoadReport) -> Vec<(String, String)> {
    report
        .warnings
        .iter()
        .map(|w| (w.at.field.clone(), w.message.clone()))
        .collect()
}

/// Service `reviews` in `ns1`, so DestinationRules for it have a known host.
const REVIEWS_NS1: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: ns1}\nspec:\n  clusterIP: 10.96.0.20\n  ports: [{port: 9080, name: http}]\n---\n";

/// Every trafficPolicy field Keel does not apply, at every level, says so once, with its path, and what
/// Keel does instead; `outlierDetection`, `connectionPool`, `retryBudget` (but its `budgetInterval`) and
/// `loadBalancer` (but `zoneAwareLbSetting`) are applied and say nothing.
#[test]
fn every_traffic_policy_field_set_is_accepted_not_applied() {
    let report = load(&format!("{REVIEWS_NS1}{}", dr(concat!(
        "  host: reviews\n",
        "  trafficPolicy:\n",
        "    loadBalancer:\n",
        "      simple: ROUND_ROBIN\n",
        "      localityLbSetting: {enabled: true}\n",
        "    connectionPool:\n",
        "      tcp: {maxConnections: 100, connectTimeout: 30ms, tcpKeepalive: {time: 7200s}}\n",
        "      http: {http1MaxPendingRequests: 1, maxRetries: 3, idleTimeout: 5s, h2UpgradePolicy: DEFAULT}\n",
        "    outlierDetection:\n",
        "      consecutive5xxErrors: 7\n",
        "      interval: 5m\n",
        "    tls: {mode: SIMPLE, sni: reviews.example}\n",
        "    portLevelSettings:\n",
        "    - port: {number: 9080}\n",
        "      loadBalancer: {consistentHash: {httpHeaderName: x-user}}\n",
        "      tls: {mode: DISABLE}\n",
        "  subsets:\n",
        "  - name: v1\n",
        "    labels: {version: v1}\n",
        "    trafficPolicy:\n",
        "      connectionPool: {http: {maxRequestsPerConnection: 1}}\n",
        "      retryBudget: {percent: 20, budgetInterval: 10s}\n",
    ))));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let sub = "spec.subsets[0].trafficPolicy";
    let want: Vec<(String, &str)> = vec![(
        format!("{sub}.retryBudget.budgetInterval"),
        "Keel's retry budget bounds concurrent retries, as Envoy's does; no interval applies",
    )];
    let want: Vec<(String, String)> = want
        .into_iter()
        .map(|(field, today)| {
            let message = format!("accepted, not applied: {field}: {today}");
            (field, message)
        })
        .collect();
    assert_eq!(warning_fields(&report), want);
    // `h2UpgradePolicy: DEFAULT` asks for what Keel does, and `tls` is applied: no warning.
}

/// `connectionPool` and `retryBudget` reach the model with Istio's defaults for what is unset.
#[test]
fn connection_pool_and_retry_budget_convert() {
    let report = load(&format!("{REVIEWS_NS1}{}", dr(concat!(
        "  host: reviews\n",
        "  trafficPolicy:\n",
        "    connectionPool:\n",
        "      tcp: {maxConnections: 1, connectTimeout: 30ms, tcpKeepalive: {time: 7200s, probes: 3}, maxConnectionDuration: 1m, idleTimeout: 0s}\n",
        "      http: {http1MaxPendingRequests: 2, http2MaxRequests: 3, maxRequestsPerConnection: 1, maxRetries: 4, h2UpgradePolicy: UPGRADE, maxConcurrentStreams: 5, http2KeepAlive: {interval: 10s, timeout: 2s}}\n",
        "    retryBudget: {minRetryConcurrency: 7}\n",
    ))));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(warning_fields(&report), vec![]);
    let tp = report.snapshot.destination_rules[0]
        .traffic_policy
        .clone()
        .expect("policy");
    let s = std::time::Duration::from_secs;
    assert_eq!(
        tp.connection_pool,
        Some(ConnectionPool {
            tcp_max_connections: Some(1),
            tcp_connect_timeout: Some(std::time::Duration::from_millis(30)),
            tcp_keepalive: Some(TcpKeepalive {
                probes: Some(3),
                time: Some(s(7200)),
                interval: None,
            }),
            max_connection_duration: Some(s(60)),
            tcp_idle_timeout: Some(s(0)),
            http1_max_pending_requests: Some(2),
            http2_max_requests: Some(3),
            max_requests_per_connection: Some(1),
            max_retries: Some(4),
            // The TCP idle timeout stands in for the unset HTTP one.
            idle_timeout: Some(s(0)),
            h2_upgrade_policy: H2UpgradePolicy::Upgrade,
            use_client_protocol: false,
            max_concurrent_streams: Some(5),
            http2_keep_alive: Some(Http2KeepAlive {
                interval: s(10),
                timeout: s(2),
            }),
        })
    );
    assert_eq!(
        tp.retry_budget,
        Some(RetryBudget {
            percent: 20.0,
            min_retry_concurrency: 7
        })
    );
}

#[test]
fn locality_lb_setting_and_warmup_become_the_model_without_warnings() {
    let report = load(&format!(
        "{REVIEWS_NS1}{}",
        dr(concat!(
            "  host: reviews\n",
            "  trafficPolicy:\n",
            "    loadBalancer:\n",
            "      localityLbSetting:\n",
            "        distribute:\n",
            "        - from: r1/z1/*\n",
            "          to: {\"r1/z1/*\": 80, \"r1/z2/*\": 20}\n",
            "      warmup: {duration: 30s, aggression: 2}\n",
            "  subsets:\n",
            "  - name: v1\n",
            "    labels: {version: v1}\n",
            "    trafficPolicy:\n",
            "      loadBalancer:\n",
            "        simple: LEAST_REQUEST\n",
            "        warmupDurationSecs: 10s\n",
            "        localityLbSetting: {enabled: false, failoverPriority: [net]}\n",
        ))
    ));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    // istiod warns about failoverPriority without outlierDetection even when the setting is disabled.
    assert_eq!(
        warning_fields(&report),
        vec![
            (
                "spec.subsets[0].trafficPolicy.loadBalancer.localityLbSetting".to_string(),
                "outlier detection policy must be provided for failover: without it no endpoint \
                 is ever unhealthy, so traffic does not fail over"
                    .to_string()
            ),
            (
                "spec.subsets[0].trafficPolicy.loadBalancer.warmupDurationSecs".to_string(),
                "warmupDurationSecs is deprecated, use warmup.duration".to_string()
            )
        ]
    );
    let rule = &report.snapshot.destination_rules[0];
    let tp = rule.traffic_policy.as_ref().expect("policy");
    assert_eq!(tp.load_balancer, None);
    assert_eq!(
        tp.locality_lb_setting,
        Some(LocalityLbSetting {
            enabled: true,
            distribute: vec![LocalityDistribute {
                from: "r1/z1/*".into(),
                to: vec![("r1/z1/*".into(), 80), ("r1/z2/*".into(), 20)],
            }],
            failover: Vec::new(),
            failover_priority: Vec::new(),
        })
    );
    assert_eq!(
        tp.warmup,
        Some(Warmup {
            duration: std::time::Duration::from_secs(30),
            minimum_percent: 10.0,
            aggression: 2.0,
        })
    );
    let sub = rule.subsets[0]
        .traffic_policy
        .as_ref()
        .expect("subset policy");
    let locality = sub.locality_lb_setting.as_ref().expect("locality");
    assert!(!locality.enabled);
    assert_eq!(locality.failover_priority, ["net"]);
    assert_eq!(
        sub.warmup.as_ref().map(|w| (w.duration, w.minimum_percent)),
        Some((std::time::Duration::from_secs(10), 10.0))
    );
}

#[test]
fn nodes_and_pod_node_names_give_localities() {
    let report = load(concat!(
        "apiVersion: v1\n",
        "kind: Node\n",
        "metadata:\n",
        "  name: node-a\n",
        "  labels: {topology.kubernetes.io/region: r1, topology.kubernetes.io/zone: z1, topology.istio.io/subzone: s1}\n",
        "---\n",
        "apiVersion: v1\n",
        "kind: Node\n",
        "metadata:\n",
        "  name: node-b\n",
        "  labels: {failure-domain.beta.kubernetes.io/region: r2, failure-domain.beta.kubernetes.io/zone: z2}\n",
        "---\n",
        "apiVersion: v1\n",
        "kind: Pod\n",
        "metadata: {name: p1, namespace: ns1}\n",
        "spec: {nodeName: node-a}\n",
        "---\n",
        "apiVersion: v1\n",
        "kind: Pod\n",
        "metadata: {name: p2, namespace: ns1, labels: {istio-locality: r9.z9}}\n",
        "spec: {nodeName: node-a}\n",
        "---\n",
        "apiVersion: v1\n",
        "kind: Pod\n",
        "metadata: {name: p3, namespace: ns1}\n",
        "---\n",
        "apiVersion: networking.istio.io/v1\n",
        "kind: ServiceEntry\n",
        "metadata: {name: se, namespace: ns1}\n",
        "spec:\n",
        "  hosts: [ext.example]\n",
        "  addresses: [10.1.0.1]\n",
        "  ports: [{number: 80, name: http, protocol: HTTP}]\n",
        "  resolution: STATIC\n",
        "  endpoints: [{address: 10.1.0.2, locality: r3/z3}]\n",
    ));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let snap = &report.snapshot;
    let pod = |name: &str| &snap.pods[snap.pod_by_name[&format!("ns1/{name}")]];
    assert_eq!(snap.pod_locality(pod("p1"), None).to_string(), "r1/z1/s1");
    // The pod label overrides the node.
    assert_eq!(snap.pod_locality(pod("p2"), None).to_string(), "r9/z9/");
    // No nodeName: Keel's own node, if known.
    assert_eq!(snap.pod_locality(pod("p3"), None), Locality::default());
    assert_eq!(
        snap.pod_locality(pod("p3"), Some("node-b")).to_string(),
        "r2/z2/"
    );
    assert_eq!(
        snap.service_entries[0].endpoints[0].locality,
        Some(Locality::parse("r3/z3"))
    );
}

#[test]
fn destination_rule_with_host_and_subsets_only_has_no_warnings() {
    let report = load(&format!(
        "{REVIEWS_NS1}{}",
        dr(concat!(
            "  host: reviews\n",
            "  exportTo: [\".\"]\n",
            "  subsets:\n",
            "  - {name: v1, labels: {version: v1}}\n",
            "  - {name: v2, labels: {version: v2}}\n",
        ))
    ));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(warning_fields(&report), vec![]);
    // Values that ask for what Keel does anyway are applied in effect.
    let report = load(&format!(
        "{REVIEWS_NS1}{}",
        dr(concat!(
        "  host: reviews\n",
        "  trafficPolicy:\n",
        "    loadBalancer: {simple: LEAST_REQUEST}\n",
        "    tls: {mode: DISABLE}\n",
        "    connectionPool: {http: {h2UpgradePolicy: DO_NOT_UPGRADE, useClientProtocol: false}}\n",
    ))
    ));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(warning_fields(&report), vec![]);
}

/// A rejected rule is not "accepted": it gets its errors, not `accepted, not applied` warnings.
#[test]
fn a_rejected_destination_rule_is_not_accepted_not_applied() {
    let report = load(&dr(concat!(
        "  host: reviews\n",
        "  trafficPolicy:\n",
        "    loadBalancer: {simple: RANDOM}\n",
        "    outlierDetection: {maxEjectionPercent: 150}\n",
    )));
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    assert!(
        !report
            .warnings
            .iter()
            .any(|w| w.message.starts_with(NOT_APPLIED)),
        "{:?}",
        report.warnings
    );
}

/// ServiceEntry, Sidecar, Gateway and MeshConfig fields that Keel does not read say so, in the same words.
#[test]
fn other_kinds_report_fields_not_applied() {
    let yaml = concat!(
        "apiVersion: networking.istio.io/v1\n",
        "kind: ServiceEntry\n",
        "metadata: {name: se, namespace: ns1}\n",
        "spec:\n",
        "  hosts: [db.example.com]\n",
        "  addresses: [10.0.0.0/24, 10.1.0.1]\n",
        "  location: MESH_INTERNAL\n",
        "  resolution: STATIC\n",
        "  ports: [{number: 5432, name: tcp-pg, protocol: TCP}]\n",
        "  endpoints:\n",
        "  - {address: 10.1.0.1, weight: 3, locality: r1/z1, network: n1, serviceAccount: pg}\n",
        "  - {address: \"unix:///var/run/pg.sock\"}\n",
        "  subjectAltNames: [spiffe://pg]\n",
        "---\n",
        "apiVersion: networking.istio.io/v1\n",
        "kind: Sidecar\n",
        "metadata: {name: sc, namespace: ns1}\n",
        "spec:\n",
        "  ingress:\n",
        "  - port: {number: 9080, protocol: HTTP, name: http}\n",
        "    defaultEndpoint: 127.0.0.1:8080\n",
        "  inboundConnectionPool: {http: {http1MaxPendingRequests: 10}}\n",
        "  egress:\n",
        "  - port: {number: 9080, protocol: HTTP, name: http}\n",
        "    bind: 127.0.0.2\n",
        "    captureMode: NONE\n",
        "    hosts: [\"./*\"]\n",
        "---\n",
        "apiVersion: networking.istio.io/v1\n",
        "kind: Gateway\n",
        "metadata: {name: gw, namespace: ns1}\n",
        "spec:\n",
        "  selector: {istio: ingressgateway}\n",
        "  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [\"*\"]}]\n",
        "---\n",
        "apiVersion: keel.io/v1alpha1\n",
        "kind: MeshConfig\n",
        "metadata: {name: keel}\n",
        "spec: {mirrorShadowSuffix: false, rootNamespace: istio-system}\n",
    );
    let report = load(yaml);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let got: Vec<(String, String)> = warning_fields(&report);
    let want: Vec<(&str, &str)> = vec![
        ("spec.addresses[0]", "Keel's kernel redirect matches exact addresses only, so a range captures nothing (list single IPs)"),
        ("spec.location", "Keel treats MESH_INTERNAL entries like MESH_EXTERNAL ones"),
        ("spec.endpoints[0].weight", "Keel balances endpoints by least request, without weights"),
        ("spec.endpoints[0].network", "Keel treats all endpoints as one network"),
        ("spec.endpoints[0].serviceAccount", "Keel connects to upstreams in plaintext and checks no identity"),
        ("spec.endpoints[1].address", "Keel does not connect to unix sockets; it sends nothing to this endpoint"),
        ("spec.subjectAltNames", "Keel connects to upstreams in plaintext and checks no certificate"),
        ("spec.ingress", "Keel handles outbound traffic only"),
        ("spec.inboundConnectionPool.http.http1MaxPendingRequests", "Keel handles outbound traffic only"),
        ("spec.egress[0].bind", "Keel's kernel redirect captures by destination, not on a listener address"),
        ("spec.egress[0].captureMode", "Keel's kernel redirect captures every connection to a meshed destination"),
        ("spec.egress[0].port.protocol", "Keel takes the protocol from the destination's port"),
        ("spec.selector", "Keel is not a gateway and configures no gateway pod"),
        ("spec.servers", "Keel is not a gateway and opens no listener for these servers"),
    ];
    let want: Vec<(String, String)> = want
        .into_iter()
        .map(|(f, today)| {
            (
                f.to_string(),
                format!("accepted, not applied: {f}: {today}"),
            )
        })
        .collect();
    assert_eq!(got, want);
}

/// A Sidecar without egress listeners imports everything, as istiod's default `*/*` listener does; a
/// unix socket listener (port 0) imports nothing for connections Keel captures by address.
#[test]
fn sidecar_egress_defaults_and_unix_socket_listeners() {
    let yaml = concat!(
        "apiVersion: networking.istio.io/v1\n",
        "kind: Sidecar\n",
        "metadata: {name: only-policy, namespace: ns1}\n",
        "spec:\n",
        "  outboundTrafficPolicy: {mode: ALLOW_ANY}\n",
        "---\n",
        "apiVersion: networking.istio.io/v1\n",
        "kind: Sidecar\n",
        "metadata: {name: uds, namespace: ns2}\n",
        "spec:\n",
        "  egress:\n",
        "  - port: {number: 0, name: uds}\n",
        "    bind: unix:///var/run/app.sock\n",
        "    hosts: [\"./a.example.com\"]\n",
        "  - port: {number: 8080, name: http}\n",
        "    hosts: [\"./b.example.com\"]\n",
    );
    let report = load(yaml);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let egress: Vec<Vec<(Option<u16>, Vec<String>)>> = report
        .snapshot
        .sidecars
        .iter()
        .map(|s| s.egress.iter().map(|e| (e.port, e.hosts.clone())).collect())
        .collect();
    assert_eq!(
        egress,
        vec![
            vec![(None, vec!["*/*".to_string()])],
            vec![(Some(8080), vec!["./b.example.com".to_string()])],
        ]
    );
    assert_eq!(
        report.snapshot.sidecars[0].outbound_traffic_policy,
        Some(OutboundTrafficPolicy::AllowAny)
    );
}

/// A ServiceEntry without addresses is never captured: the kernel redirects by address. One that only
/// decorates a Service (same host) is captured through the Service's VIP.
#[test]
fn service_entry_without_addresses_is_not_captured() {
    let se = |name: &str, host: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: ns1}}\nspec:\n  hosts: [{host}]\n  resolution: DNS\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n---\n"
        )
    };
    let report = load(&format!(
        "{}{}{REVIEWS_NS1}",
        se("external", "httpbin.org"),
        se("decorates", "reviews.ns1.svc.cluster.local")
    ));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let got: Vec<String> = report.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(
        got[0].contains("ServiceEntry ns1/external: spec.hosts: warning: no addresses: Keel captures connections by destination address"),
        "{got:#?}"
    );
}

#[test]
fn json_report_serialises() {
    let report = load(&vs("  hosts: [reviews]\n"));
    let json = serde_json::to_value(crate::policy::report::JsonReport::new("x", &report, false))
        .expect("json");
    assert_eq!(json["valid"], false);
    assert_eq!(json["errors"][0]["kind"], "VirtualService");
    assert_eq!(json["errors"][0]["field"], "spec");
    assert_eq!(json["errors"][0]["code"], "InvalidHttpRoute");
}

/// Documents of every `*.yaml` file of `dir` whose name satisfies `keep`.
fn docs_of(dir: &str, keep: impl Fn(&str) -> bool) -> Vec<crate::source::Document> {
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(config_dir(dir))
        .expect("config dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&keep))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        out.extend(split_documents(&f.display().to_string(), &text));
    }
    out
}

#[test]
fn examples_dir_loads_without_errors() {
    let report = assert_clean("examples");
    // The seed-mistake fixtures live in examples/testdata and must not be loaded with the examples.
    assert!(report.errors.is_empty());
    assert!(report.snapshot.virtual_services.len() > 30);
}

/// Each example with the support files (`00-*`, which link the demo's services, pods and subsets): no
/// errors, and no references to unknown hosts or subsets.
#[test]
fn each_example_is_valid_with_its_support_files() {
    let support = docs_of("examples", |n| n.starts_with("00-"));
    let examples: Vec<String> = std::fs::read_dir(config_dir("examples"))
        .expect("examples")
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml") && !n.starts_with("00-"))
        .collect();
    assert!(examples.len() > 40, "{examples:?}");
    let mut failures = Vec::new();
    for name in examples {
        let mut docs = support.clone();
        docs.extend(docs_of("examples", |n| n == name));
        let report = build(&docs);
        for e in &report.errors {
            failures.push(format!("{name}: error: {e}"));
        }
        for w in &report.warnings {
            if w.message.contains("not defined") || w.message.contains("not a known") {
                failures.push(format!("{name}: {w}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The seeds' broken YAML (kept in examples/testdata/seed-mistakes) is rejected with the documented error.
#[test]
fn seed_mistakes_are_caught() {
    let dir = config_dir("examples/testdata/seed-mistakes");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("seed-mistakes")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(files.len() >= 10);
    let mut failures = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        // The second comment line of each fixture states the expected error.
        let want = text
            .lines()
            .nth(1)
            .and_then(|l| l.strip_prefix("#   "))
            .expect("expected-error comment")
            .to_string();
        let report = build(&split_documents(&f.display().to_string(), &text));
        // A mistake istiod accepts (a Gateway selector no pod can match) is caught as a warning.
        let errors: Vec<String> = (report.errors.iter().map(|e| e.to_string()))
            .chain(report.warnings.iter().map(|w| w.to_string()))
            .collect();
        if !errors.iter().any(|e| e.contains(&want)) {
            failures.push(format!("{}: wanted {want:?}, got {errors:#?}", f.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// PEM files of a throwaway CA for `tls` conversion tests, in their own directory.
struct TlsFiles {
    dir: PathBuf,
}

impl TlsFiles {
    fn new(test: &str) -> Self {
        use crate::upstream::tls::test_pki::{pem, Ca};
        let dir = std::env::temp_dir().join(format!("keel-convert-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ca = Ca::new("convert test CA").expect("CA");
        let client = ca.issue(&["client.test"], 7, true).expect("client cert");
        let other = ca.issue(&["other.test"], 8, true).expect("other cert");
        let files = [
            ("ca.pem", pem("CERTIFICATE", &ca.cert)),
            ("client.pem", pem("CERTIFICATE", &client.cert)),
            ("client-key.pem", pem("PRIVATE KEY", &client.key)),
            ("other-key.pem", pem("PRIVATE KEY", &other.key)),
            ("crl.pem", pem("X509 CRL", &ca.crl(&[8]).expect("CRL"))),
            (
                "garbled.pem",
                "-----BEGIN CERTIFICATE-----\n@@@\n-----END CERTIFICATE-----\n".into(),
            ),
            ("not-a-cert.pem", pem("CERTIFICATE", b"not DER")),
            ("not-a-crl.pem", pem("X509 CRL", b"not DER")),
            ("empty.pem", String::new()),
        ];
        for (name, text) in files {
            std::fs::write(dir.join(name), text).expect("write PEM");
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tls_dr(tls: &str) -> String {
    format!(
        "{REVIEWS_NS1}{}",
        dr(&format!(
            "  host: reviews\n  trafficPolicy:\n    tls: {tls}\n"
        ))
    )
}

#[test]
fn tls_files_are_read_and_parsed_at_conversion() {
    let f = TlsFiles::new("ok");
    let report = load(&tls_dr(&format!(
        "{{mode: MUTUAL, clientCertificate: {}, privateKey: {}, caCertificates: {}, caCrl: {}, sni: Reviews.Example, subjectAltNames: [reviews.example, 10.0.0.1]}}",
        f.path("client.pem"),
        f.path("client-key.pem"),
        f.path("ca.pem"),
        f.path("crl.pem"),
    )));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(warning_fields(&report), vec![]);
    let tp = report.snapshot.destination_rules[0]
        .traffic_policy
        .as_ref()
        .expect("policy");
    let tls = tp.tls.as_ref().expect("tls");
    assert_eq!(tls.mode, TlsMode::Mutual);
    assert_eq!(
        tls.client_certificate.as_ref().map(|c| c.content.len()),
        Some(1)
    );
    assert_eq!(
        tls.ca_certificates.as_ref().map(|c| c.path.clone()),
        Some(f.path("ca.pem"))
    );
    assert!(tls.private_key.is_some());
    assert_eq!(tls.ca_crl.as_ref().map(|c| c.content.len()), Some(1));
    assert_eq!(tls.sni.as_deref(), Some("reviews.example"));
    assert_eq!(tls.subject_alt_names, ["reviews.example", "10.0.0.1"]);
    assert!(!tls.insecure_skip_verify);
}

#[test]
fn tls_port_level_and_disable_are_converted() {
    let f = TlsFiles::new("port");
    let report = load(&format!(
        "{REVIEWS_NS1}{}",
        dr(&format!(
            "  host: reviews\n  trafficPolicy:\n    tls: {{mode: SIMPLE, caCertificates: {}}}\n    portLevelSettings:\n    - port: {{number: 9080}}\n      tls: {{mode: DISABLE}}\n",
            f.path("ca.pem")
        ))
    ));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let tp = report.snapshot.destination_rules[0]
        .traffic_policy
        .as_ref()
        .expect("policy");
    assert_eq!(tp.tls.as_ref().map(|t| t.mode), Some(TlsMode::Simple));
    let (port, pl) = &tp.port_level[0];
    assert_eq!(*port, 9080);
    assert_eq!(pl.tls.as_ref().map(|t| t.mode), Some(TlsMode::Disable));
}

/// Relative paths are resolved against the directory of the config file that names them.
#[test]
fn tls_relative_paths_start_at_the_config_file() {
    let f = TlsFiles::new("relative");
    let config = f.dir.join("dr.yaml").display().to_string();
    let text = tls_dr("{mode: SIMPLE, caCertificates: ca.pem}");
    let report = build(&split_documents(&config, &text));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let tls = report.snapshot.destination_rules[0]
        .traffic_policy
        .as_ref()
        .and_then(|tp| tp.tls.as_ref())
        .expect("tls");
    assert_eq!(
        tls.ca_certificates.as_ref().map(|c| c.path.clone()),
        Some(f.path("ca.pem"))
    );
}

#[test]
fn tls_errors_name_the_field_the_file_and_the_reason() {
    let f = TlsFiles::new("errors");
    let missing = f.path("missing.pem");
    let cases: Vec<(String, String)> = vec![
        (
            format!("{{mode: SIMPLE, caCertificates: {missing}}}"),
            format!("spec.trafficPolicy.tls.caCertificates: caCertificates {missing}: cannot read: No such file or directory"),
        ),
        (
            format!("{{mode: SIMPLE, caCertificates: {}}}", f.path("garbled.pem")),
            format!("spec.trafficPolicy.tls.caCertificates: caCertificates {}: not PEM: ", f.path("garbled.pem")),
        ),
        (
            format!("{{mode: SIMPLE, caCertificates: {}}}", f.path("empty.pem")),
            format!("caCertificates {}: no PEM CERTIFICATE block", f.path("empty.pem")),
        ),
        (
            format!("{{mode: SIMPLE, caCertificates: {}}}", f.path("not-a-cert.pem")),
            "1 of 1 certificates cannot be parsed as X.509 trust anchors".into(),
        ),
        (
            format!("{{mode: SIMPLE, caCertificates: {}, caCrl: {}}}", f.path("ca.pem"), f.path("not-a-crl.pem")),
            format!("spec.trafficPolicy.tls.caCrl: caCrl {}: not a valid X.509 CRL", f.path("not-a-crl.pem")),
        ),
        (
            format!("{{mode: MUTUAL, clientCertificate: {}, privateKey: {}}}", f.path("client.pem"), f.path("ca.pem")),
            format!("spec.trafficPolicy.tls.privateKey: privateKey {}: no PEM PRIVATE KEY block", f.path("ca.pem")),
        ),
        (
            format!("{{mode: MUTUAL, clientCertificate: {}, privateKey: {}}}", f.path("client.pem"), f.path("other-key.pem")),
            format!("spec.trafficPolicy.tls.privateKey: privateKey {}: ", f.path("other-key.pem")),
        ),
        (
            "{mode: ISTIO_MUTUAL}".into(),
            "spec.trafficPolicy.tls.mode: not supported by Keel: tls.mode ISTIO_MUTUAL: Keel has no mesh workload identity yet".into(),
        ),
        (
            "{mode: SIMPLE, credentialName: reviews-cert}".into(),
            "spec.trafficPolicy.tls.credentialName: not supported by Keel: tls.credentialName: Keel has no secret source yet".into(),
        ),
        (
            "{mode: SIMPLE, subjectAltNames: [\"spiffe://cluster.local/ns/default/sa/reviews\"]}".into(),
            "spec.trafficPolicy.tls.subjectAltNames[0]: not supported by Keel: subjectAltNames entry \"spiffe://cluster.local/ns/default/sa/reviews\": Keel matches DNS-name and IP-address SANs only".into(),
        ),
        (
            "{mode: SIMPLE, sni: 10.0.0.1}".into(),
            "spec.trafficPolicy.tls.sni: sni \"10.0.0.1\" is not a DNS name".into(),
        ),
    ];
    let mut failures = Vec::new();
    for (tls, want) in cases {
        let report = load(&tls_dr(&tls));
        let errors: Vec<String> = report.errors.iter().map(|e| e.to_string()).collect();
        let ok = errors.len() == 1
            && errors[0].contains("DestinationRule ns1/t: ")
            && errors[0].contains(&want)
            && report.snapshot.destination_rules.is_empty();
        if !ok {
            failures.push(format!("{tls}: wanted {want:?}, got {errors:#?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Port-level `tls` files are checked like top-level ones.
#[test]
fn tls_port_level_files_are_checked() {
    let f = TlsFiles::new("port-errors");
    let missing = f.path("missing.pem");
    let report = load(&format!(
        "{REVIEWS_NS1}{}",
        dr(&format!(
            "  host: reviews\n  trafficPolicy:\n    portLevelSettings:\n    - port: {{number: 9080}}\n      tls: {{mode: SIMPLE, caCertificates: {missing}}}\n"
        ))
    ));
    let errors: Vec<String> = report.errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains(&format!(
            "spec.trafficPolicy.portLevelSettings[0].tls.caCertificates: caCertificates {missing}: cannot read"
        )),
        "{errors:#?}"
    );
}

#[test]
fn slices_give_a_service_its_healthy_endpoints() {
    let text = std::fs::read_to_string(
        config_dir("testdata/valid/eps-service-endpoints").join("sample.yaml"),
    )
    .expect("sample");
    let report = crate::policy::build(&crate::source::split_documents("s.yaml", &text));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let s = &report.snapshot;
    let reviews = s.service_by_host["reviews.default.svc.cluster.local"];
    // The terminating, not-ready reviews-v2 is left out although the selector matches it.
    let eps = s.endpoints(reviews, 0, None);
    let addrs: Vec<String> = eps.iter().map(|e| e.addr.to_string()).collect();
    assert_eq!(addrs, ["10.244.0.12:9080"]);
    assert_eq!(eps[0].pod, s.pod_by_name["default/reviews-v1"]);
    // Subsets still select by the endpoint's pod labels.
    let v2: Labels = [("version".to_string(), "v2".to_string())].into();
    assert!(s.endpoints(reviews, 0, Some(&v2)).is_empty());
}

#[test]
fn pods_kubelet_facts_uid_qos_host_network_and_sidecar() {
    let pod = |extra: &str| format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n{extra}");
    let uid = "3f8e1c2a-6b4d-4e0f-9a7b-1c2d3e4f5a6b";
    // (extra YAML, uid, qos, host network, sidecar)
    let cases = [
        (String::new(), None, None, false, false),
        (
            format!("  uid: {uid}\nstatus:\n  qosClass: Burstable\n"),
            Some(uid),
            Some(QosClass::Burstable),
            false,
            false,
        ),
        (
            "  uid: 0123456789abcdef0123456789abcdef\nspec:\n  hostNetwork: true\nstatus:\n  qosClass: Guaranteed\n".to_string(),
            Some("0123456789abcdef0123456789abcdef"),
            Some(QosClass::Guaranteed),
            true,
            false,
        ),
        (
            "  annotations: {sidecar.istio.io/status: \"{}\"}\nstatus:\n  qosClass: BestEffort\n".to_string(),
            None,
            Some(QosClass::BestEffort),
            false,
            true,
        ),
        (
            "spec:\n  containers:\n  - name: app\n  - name: istio-proxy\n".to_string(),
            None,
            None,
            false,
            true,
        ),
        (
            "spec:\n  initContainers:\n  - name: istio-proxy\n  containers:\n  - name: app\n".to_string(),
            None,
            None,
            false,
            true,
        ),
        (
            "spec:\n  hostNetwork: false\n  initContainers:\n  - name: istio-init\n  containers:\n  - name: proxy\n".to_string(),
            None,
            None,
            false,
            false,
        ),
    ];
    for (extra, want_uid, qos, host_network, sidecar) in cases {
        let report = load(&pod(&extra));
        assert!(report.errors.is_empty(), "{extra}: {:?}", report.errors);
        let p = &report.snapshot.pods[0];
        assert_eq!(p.uid.as_deref(), want_uid, "{extra}");
        assert_eq!(p.qos_class, qos, "{extra}");
        assert_eq!(
            (p.host_network, p.sidecar),
            (host_network, sidecar),
            "{extra}"
        );
    }

    // A UID kubelet could not have named a cgroup after, and a QoS class the API does not have.
    for (extra, field) in [
        ("  uid: not-a-uid\n", "metadata.uid"),
        (
            "  uid: 3f8e1c2a6b4d4e0f9a7b1c2d3e4f5a6b00\n",
            "metadata.uid",
        ),
        ("status:\n  qosClass: guaranteed\n", "status.qosClass"),
    ] {
        let report = load(&pod(extra));
        let errors: Vec<String> = report.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 1, "{extra}: {errors:#?}");
        assert!(errors[0].contains(field), "{extra}: {errors:#?}");
    }
}

#[test]
fn service_ip_families_follow_ip_families_else_cluster_ips() {
    let svc = |spec: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n{spec}  ports:\n  - port: 80\n")
    };
    use IpFamily::{V4, V6};
    let cases: &[(&str, &[IpFamily])] = &[
        ("  clusterIP: 10.96.0.5\n", &[V4]),
        ("  clusterIP: fd00:10:96::5\n", &[V6]),
        (
            "  clusterIP: fd00:10:96::5\n  clusterIPs: [fd00:10:96::5, 10.96.0.5]\n",
            &[V6, V4],
        ),
        (
            "  clusterIP: 10.96.0.5\n  clusterIPs: [10.96.0.5, fd00:10:96::5]\n  ipFamilies: [IPv4, IPv6]\n  ipFamilyPolicy: RequireDualStack\n",
            &[V4, V6],
        ),
        // Headless: only ipFamilies says which endpoints there are.
        (
            "  clusterIP: None\n  ipFamilies: [IPv6]\n  ipFamilyPolicy: SingleStack\n",
            &[V6],
        ),
        ("  clusterIP: None\n", &[]),
    ];
    for (spec, want) in cases {
        let report = load(&svc(spec));
        assert!(report.errors.is_empty(), "{spec}: {:?}", report.errors);
        assert_eq!(report.snapshot.services[0].ip_families, *want, "{spec}");
    }
    let rejected = [
        (
            "  ipFamilies: [IPv5]\n",
            "spec.ipFamilies[0]: unknown value \"IPv5\"",
        ),
        (
            "  ipFamilies: [IPv4, IPv4]\n",
            "spec.ipFamilies[1]: IPv4 is listed twice",
        ),
        (
            "  ipFamilyPolicy: SingleStack\n  ipFamilies: [IPv4, IPv6]\n",
            "a SingleStack Service has one IP family",
        ),
        (
            "  ipFamilyPolicy: DualStack\n",
            "spec.ipFamilyPolicy: unknown value \"DualStack\"",
        ),
        (
            "  clusterIP: 10.96.0.5\n  ipFamilies: [IPv6]\n",
            "10.96.0.5 is IPv4, but ipFamilies[0] is IPv6",
        ),
        (
            "  clusterIPs: [10.96.0.5, 10.96.0.6]\n",
            "at most one cluster IP per family (IPv4 twice)",
        ),
    ];
    for (spec, want) in rejected {
        let errors: Vec<String> = load(&svc(spec))
            .errors
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.iter().any(|e| e.contains(want)),
            "{spec}: {errors:#?}"
        );
    }
}

#[test]
fn dual_stack_pods_are_one_endpoint_of_the_service_family() {
    let pod = |name: &str, ips: &[&str]| {
        let list: Vec<String> = ips.iter().map(|ip| format!("{{ip: \"{ip}\"}}")).collect();
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: web}}\nstatus:\n  podIP: \"{}\"\n  podIPs: [{}]\n",
            ips[0],
            list.join(", ")
        )
    };
    let pods = [
        pod("dual", &["10.244.0.2", "fd00:10:244::2"]),
        pod("dual6", &["fd00:10:244::3", "10.244.0.3"]),
        pod("only4", &["10.244.0.4"]),
        pod("only6", &["fd00:10:244::5"]),
    ]
    .concat();
    let svc = |name: &str, spec: &str| {
        format!("---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  selector: {{app: web}}\n{spec}  ports:\n  - {{name: http, port: 80}}\n")
    };
    let yaml = [
        pods,
        svc("v4", "  clusterIP: 10.96.0.1\n"),
        svc("v6", "  clusterIP: fd00:10:96::1\n"),
        svc(
            "dual",
            "  clusterIPs: [10.96.0.2, fd00:10:96::2]\n  ipFamilies: [IPv4, IPv6]\n",
        ),
        svc(
            "dual6",
            "  clusterIPs: [fd00:10:96::3, 10.96.0.3]\n  ipFamilies: [IPv6, IPv4]\n",
        ),
        svc("headless", "  clusterIP: None\n"),
    ]
    .concat();
    let report = load(&yaml);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let snap = &report.snapshot;
    let endpoints = |name: &str| -> Vec<String> {
        let id = snap
            .services
            .iter()
            .position(|s| s.meta.name == name)
            .expect("service");
        let mut eps: Vec<String> = snap
            .endpoints(id, 0, None)
            .iter()
            .map(|e| e.addr.to_string())
            .collect();
        eps.sort();
        eps
    };
    // One endpoint per pod that has an address of a Service family, of the primary family first.
    assert_eq!(
        endpoints("v4"),
        ["10.244.0.2:80", "10.244.0.3:80", "10.244.0.4:80"]
    );
    assert_eq!(
        endpoints("v6"),
        [
            "[fd00:10:244::2]:80",
            "[fd00:10:244::3]:80",
            "[fd00:10:244::5]:80"
        ]
    );
    assert_eq!(
        endpoints("dual"),
        [
            "10.244.0.2:80",
            "10.244.0.3:80",
            "10.244.0.4:80",
            "[fd00:10:244::5]:80"
        ]
    );
    assert_eq!(
        endpoints("dual6"),
        [
            "10.244.0.4:80",
            "[fd00:10:244::2]:80",
            "[fd00:10:244::3]:80",
            "[fd00:10:244::5]:80"
        ]
    );
    // No family known: each pod's first address.
    assert_eq!(
        endpoints("headless"),
        [
            "10.244.0.2:80",
            "10.244.0.4:80",
            "[fd00:10:244::3]:80",
            "[fd00:10:244::5]:80"
        ]
    );
}

#[test]
fn endpoint_ip_picks_by_family_order() {
    let ips: Vec<std::net::IpAddr> = ["10.0.0.1", "fd00::1", "::ffff:10.0.0.2"]
        .iter()
        .map(|s| s.parse().expect("ip"))
        .collect();
    use IpFamily::{V4, V6};
    assert_eq!(endpoint_ip(&ips, &[]), Some(ips[0]));
    assert_eq!(endpoint_ip(&ips, &[V6]), Some(ips[1]));
    assert_eq!(endpoint_ip(&ips, &[V6, V4]), Some(ips[1]));
    assert_eq!(endpoint_ip(&ips, &[V4, V6]), Some(ips[0]));
    assert_eq!(endpoint_ip(&ips[..1], &[V6]), None);
    // A v4-mapped address is IPv4.
    assert_eq!(endpoint_ip(&ips[1..], &[V4]), Some(ips[2]));
    assert_eq!(endpoint_ip(&[], &[V4]), None);
}

#[test]
fn pod_traffic_annotations_are_read_and_bad_values_reject_the_pod() {
    let pod = |annotations: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: app\n  namespace: shop\n  annotations:\n{annotations}status:\n  podIP: 10.244.0.9\n"
        )
    };
    let report = load(&pod(
        "    traffic.sidecar.istio.io/excludeOutboundPorts: \"5432, 3306\"\n    \
         traffic.sidecar.istio.io/includeOutboundPorts: \"9091\"\n    \
         traffic.sidecar.istio.io/excludeOutboundIPRanges: \"10.96.8.0/21,fd00::/8\"\n    \
         traffic.sidecar.istio.io/includeOutboundIPRanges: \"\"\n    \
         traffic.sidecar.istio.io/excludeInboundPorts: \"15020,15090\"\n",
    ));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let t = report.snapshot.pods[0].traffic.clone().expect("traffic");
    assert_eq!(t.exclude_ports, vec![3306, 5432]);
    assert_eq!(t.include_ports, vec![9091]);
    assert_eq!(
        t.exclude_ranges
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec!["10.96.8.0/21", "fd00::/8"]
    );
    assert_eq!(t.include_ranges, IncludeRanges::Only(vec![]));

    // Inbound only: no outbound rules, and includeInboundPorts says it is not applied.
    let report = load(&pod(
        "    traffic.sidecar.istio.io/includeInboundPorts: \"*\"\n",
    ));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.snapshot.pods[0].traffic, None);
    let warnings: Vec<String> = report.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        warnings,
        vec![
            "test.yaml:7: Pod shop/app: metadata.annotations[\"traffic.sidecar.istio.io/includeInboundPorts\"]: \
             warning: accepted, not applied: metadata.annotations[\"traffic.sidecar.istio.io/includeInboundPorts\"]: \
             Keel does not intercept inbound traffic: connections to this pod always arrive directly, on every port"
                .to_string()
        ]
    );

    // A bad value names file, line, resource, field and reason, and rejects the pod.
    let report = load(&pod(
        "    traffic.sidecar.istio.io/excludeOutboundPorts: \"5432,http\"\n",
    ));
    let errors: Vec<String> = report.errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        errors,
        vec![
            "test.yaml:7: Pod shop/app: metadata.annotations[\"traffic.sidecar.istio.io/excludeOutboundPorts\"]: \
             \"http\" is not a port number (a comma-separated list of numbers 0 to 65535, no ranges)"
                .to_string()
        ]
    );
    assert!(report.snapshot.pods.is_empty());
    for bad in [
        "    traffic.sidecar.istio.io/excludeOutboundIPRanges: \"*\"\n",
        "    traffic.sidecar.istio.io/includeOutboundIPRanges: \"10.0.0.0/8, 10.1.0.0/16\"\n",
        "    traffic.sidecar.istio.io/includeOutboundPorts: \"*\"\n",
        "    traffic.sidecar.istio.io/excludeInboundPorts: \"15020-15021\"\n",
        "    traffic.sidecar.istio.io/includeInboundPorts: \"80,*\"\n",
    ] {
        let report = load(&pod(bad));
        assert_eq!(report.errors.len(), 1, "{bad}: {:?}", report.errors);
        assert!(report.snapshot.pods.is_empty(), "{bad}");
    }
}
