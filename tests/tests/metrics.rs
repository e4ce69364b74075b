//! Istio's standard metrics on the admin address (`/stats/prometheus`, `/metrics`; istio-semantics
//! §4.1, §4.4): after known traffic from two client pods, the exact counters, histogram counts and
//! labels of each pod's series (attribution to the kernel-attested client pod, workload names from
//! owner references, Istio's canonical labels), local replies with their response flags (404 `NR`,
//! fault abort `FI`), gRPC statuses from trailers, and the TCP byte and connection counters. The
//! admin port is not reachable from pods.
//!
//! Subnet indices 155..=159 and 190 belong to this file.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::{reviews_vip, vip, Fixture};
use keel_tests::config::service_yaml;
use keel_tests::{ConnectOutcome, GrpcCall, GrpcServerOpts, HttpGet, Keel, KeelOptions, SvcPort};

const PREFIX: &str = "ktme";
const REVIEWS: &str = "reviews.default.svc.cluster.local";
const ECHO: &str = "echo.default.svc.cluster.local";
/// Envoy's fault-abort body (§1.17).
const ABORT_BODY: &str = "fault filter abort";

/// `/ok` goes to reviews, `/abort` is aborted with 418 by the fault filter, anything else has no
/// route (404 `NR`).
const ROUTES: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
spec:
  hosts:
  - reviews
  http:
  - match:
    - uri:
        prefix: /abort
    fault:
      abort:
        httpStatus: 418
        percentage:
          value: 100
    route:
    - destination:
        host: reviews
  - match:
    - uri:
        prefix: /ok
    route:
    - destination:
        host: reviews
";

/// A Pod document, with `ownerReferences` when `owner` names one.
fn pod_doc(
    name: &str,
    ip: Ipv4Addr,
    labels: &[(&str, &str)],
    owner: Option<(&str, &str)>,
) -> String {
    let mut y =
        format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n");
    y.push_str("  labels:\n");
    for (k, v) in labels {
        y.push_str(&format!("    {k}: \"{v}\"\n"));
    }
    if let Some((kind, owner_name)) = owner {
        y.push_str(&format!(
            "  ownerReferences:\n  - apiVersion: apps/v1\n    kind: {kind}\n    name: {owner_name}\n    \
             uid: 00000000-0000-0000-0000-000000000001\n    controller: true\n"
        ));
    }
    y.push_str(&format!(
        "status:\n  phase: Running\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n"
    ));
    y
}

/// One sample of the exposition: metric name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: String,
}

/// Parses `name{k="v",...} value` lines (label values here never hold escapes).
fn parse(text: &str) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line
            .rsplit_once(' ')
            .with_context(|| format!("no value in {line:?}"))?;
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .with_context(|| format!("unterminated labels in {line:?}"))?;
                let mut labels = BTreeMap::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (key, after) = rest
                        .split_once("=\"")
                        .with_context(|| format!("bad label in {line:?}"))?;
                    let (val, after) = after
                        .split_once('"')
                        .with_context(|| format!("bad label value in {line:?}"))?;
                    labels.insert(key.to_string(), val.to_string());
                    rest = after.strip_prefix(',').unwrap_or(after);
                }
                (name, labels)
            }
            None => (series, BTreeMap::new()),
        };
        out.push(Sample {
            name: name.to_string(),
            labels,
            value: value.to_string(),
        });
    }
    Ok(out)
}

/// The scraped metrics.
struct Scrape {
    samples: Vec<Sample>,
    text: String,
}

impl Scrape {
    fn get(keel: &Keel, path: &str) -> Result<Scrape> {
        let resp = keel_tests::http::get(keel.options().admin_addr, path, Duration::from_secs(5))?;
        ensure!(resp.status == 200, "{path} answered {}", resp.status);
        let content_type = resp
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.as_str());
        ensure!(
            content_type == Some("text/plain; version=0.0.4; charset=utf-8"),
            "{path}: Prometheus text format expected, content-type {content_type:?}"
        );
        let text = resp.text();
        Ok(Scrape {
            samples: parse(&text)?,
            text,
        })
    }

    /// The value of the one `name` series whose labels include `want` (0 when there is none).
    fn value(&self, name: &str, want: &[(&str, &str)]) -> Result<u64> {
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| {
                s.name == name
                    && want
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        match found.as_slice() {
            [] => Ok(0),
            [one] => {
                let v: f64 = one.value.parse().context("sample value")?;
                ensure!(
                    v.fract() == 0.0 && v >= 0.0,
                    "{name}: not a count: {}",
                    one.value
                );
                Ok(v as u64)
            }
            many => bail!("{} series of {name} match {want:?}: {many:?}", many.len()),
        }
    }

    /// The labels of the one `name` series whose labels include `want`.
    fn labels(&self, name: &str, want: &[(&str, &str)]) -> Result<&BTreeMap<String, String>> {
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| {
                s.name == name
                    && want
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        match found.as_slice() {
            [one] => Ok(&one.labels),
            other => bail!(
                "expected one series of {name} with {want:?}, found {}:\n{}",
                other.len(),
                self.text
            ),
        }
    }
}

/// The source labels of each client pod.
const SLEEP: (&str, &str) = ("source_workload", "sleep-deploy");
const OTHER: (&str, &str) = ("source_workload", "other");

#[test]
fn http_and_tcp_metrics_per_client_pod() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 155, &[])?;
    let backend = fx.add_logged_backend(
        "reviews-v1",
        11,
        9080,
        "v1",
        &[("app", "reviews"), ("version", "v1")],
        keel_tests::HttpServerOpts::default(),
    )?;
    let other = fx.add_pod("other", 3, &[("app", "other")], &[], false)?;
    let echo = fx.add_pod("echo-v1", 12, &[("app", "echo")], &[], false)?;
    fx.servers.push(fx.agent.tcp_echo_server(&echo, 7000)?);
    fx.add_service(service_yaml(
        "echo",
        "default",
        Ipv4Addr::new(10, 96, 0, 40),
        &[SvcPort {
            name: "tcp",
            port: 7000,
            target_port: 7000,
        }],
        &[("app", "echo")],
    ))?;
    // The Pod resources as the API server would give them: Deployment-owned ReplicaSets (with
    // `pod-template-hash`) for sleep and reviews, a bare pod with a canonical-name label for other.
    let pods = [
        pod_doc(
            "sleep",
            fx.sleep.ip,
            &[
                ("app", "sleep"),
                ("version", "v1"),
                ("pod-template-hash", "6d5f7c8b9b"),
            ],
            Some(("ReplicaSet", "sleep-deploy-6d5f7c8b9b")),
        ),
        pod_doc(
            "other",
            other.ip,
            &[
                ("app", "other"),
                ("service.istio.io/canonical-name", "other-canon"),
            ],
            None,
        ),
        pod_doc(
            "reviews-v1",
            backend.ip,
            &[
                ("app", "reviews"),
                ("version", "v1"),
                ("pod-template-hash", "5b64f47978"),
            ],
            Some(("ReplicaSet", "reviews-v1-5b64f47978")),
        ),
        pod_doc("echo-v1", echo.ip, &[("app", "echo")], None),
    ];
    fx.config.write("pods.yaml", &pods.join("---\n"))?;
    fx.config.write("virtualservice.yaml", ROUTES)?;
    let keel = fx.start_keel_strict()?;

    let url =
        |path: &str| HttpGet::new(format!("http://reviews:9080{path}")).connect_to(reviews_vip());
    // sleep: 3 x 200, 1 x 404 NR, 2 x 418 FI.
    let ok = fx.get(&url("/ok").count(3))?;
    ensure!(ok.status(200) == 3, "sleep /ok: {:?}", ok.by_status);
    let nr = fx.get(&url("/nope"))?;
    ensure!(nr.status(404) == 1, "sleep /nope: {:?}", nr.by_status);
    let fi = fx.get(&url("/abort").count(2))?;
    ensure!(
        fi.with_body(418, ABORT_BODY) == 2,
        "sleep /abort: {:?} {:?}",
        fi.by_status,
        fi.other_bodies
    );
    // other: 2 POSTs of 5 bytes -> 200.
    let posted = fx
        .agent
        .http_get(&other, &url("/ok").method("POST").body("hello").count(2))?;
    ensure!(posted.status(200) == 2, "other /ok: {:?}", posted.by_status);
    // TCP: sleep echoes 1000 bytes once, other 300 bytes twice.
    let echo_vip = vip(40, 7000);
    for (pod, size, times) in [(&fx.sleep, 1000usize, 1), (&other, 300, 2)] {
        for _ in 0..times {
            let e = fx.agent.tcp_echo(pod, echo_vip, size)?;
            ensure!(
                e.error.is_none() && e.matched && e.received == size as u64,
                "echo of {size} bytes from {} failed: {e:?}",
                pod.name
            );
        }
    }

    let requests = "istio_requests_total";
    let want_other_closed = [OTHER, ("request_protocol", "tcp")];
    // Recording happens when a response body / relay ends: wait for the last ones to land.
    common::wait_until("metrics recorded", Duration::from_secs(5), || {
        let s = Scrape::get(&keel, "/stats/prometheus")?;
        Ok(s.value(requests, &[OTHER, ("response_code", "200")])? == 2
            && s.value("istio_tcp_connections_closed_total", &want_other_closed)? == 2)
    })?;
    let s = Scrape::get(&keel, "/stats/prometheus")?;
    for line in s.text.lines().filter(|l| {
        l.starts_with("istio_requests_total")
            || l.starts_with("istio_tcp_")
            || l.starts_with("istio_request_duration_milliseconds_count")
    }) {
        eprintln!("{line}");
    }

    // The sleep pod's 200s: every label, exactly.
    let ok_labels = s.labels(requests, &[SLEEP, ("response_code", "200")])?;
    let expected: BTreeMap<String, String> = [
        ("reporter", "source"),
        ("source_workload", "sleep-deploy"),
        ("source_workload_namespace", "default"),
        ("source_principal", "unknown"),
        ("source_app", "sleep"),
        ("source_version", "v1"),
        ("source_canonical_service", "sleep"),
        ("source_canonical_revision", "v1"),
        ("source_cluster", "Kubernetes"),
        ("destination_workload", "reviews-v1"),
        ("destination_workload_namespace", "default"),
        ("destination_principal", "unknown"),
        ("destination_app", "reviews"),
        ("destination_version", "v1"),
        ("destination_service", REVIEWS),
        ("destination_service_name", "reviews"),
        ("destination_service_namespace", "default"),
        ("destination_canonical_service", "reviews"),
        ("destination_canonical_revision", "v1"),
        ("destination_cluster", "Kubernetes"),
        ("request_protocol", "http"),
        ("response_code", "200"),
        ("grpc_response_status", ""),
        ("response_flags", "-"),
        ("connection_security_policy", "unknown"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    ensure!(
        *ok_labels == expected,
        "sleep's 200 series:\n{ok_labels:#?}\nexpected:\n{expected:#?}"
    );
    let sleep_ok = [SLEEP, ("response_code", "200"), ("response_flags", "-")];
    ensure!(s.value(requests, &sleep_ok)? == 3, "{}", s.text);
    ensure!(
        s.value("istio_request_duration_milliseconds_count", &sleep_ok)? == 3,
        "{}",
        s.text
    );
    ensure!(s.value("istio_request_bytes_count", &sleep_ok)? == 3);
    ensure!(s.value("istio_request_bytes_sum", &sleep_ok)? == 0);
    ensure!(s.value("istio_response_bytes_count", &sleep_ok)? == 3);
    // Every duration is below an hour: the last finite bucket holds them all.
    ensure!(
        s.value(
            "istio_request_duration_milliseconds_bucket",
            &[SLEEP, ("response_code", "200"), ("le", "3.6e+06")]
        )? == 3,
        "{}",
        s.text
    );

    // No route: 404 NR, attributed to sleep, destination the service the client called (no
    // endpoint, so the workload is unknown).
    let nr = [SLEEP, ("response_code", "404"), ("response_flags", "NR")];
    ensure!(s.value(requests, &nr)? == 1, "{}", s.text);
    let nr_labels = s.labels(requests, &nr)?;
    ensure!(
        nr_labels.get("destination_service").map(String::as_str) == Some(REVIEWS)
            && nr_labels.get("destination_workload").map(String::as_str) == Some("unknown"),
        "{nr_labels:?}"
    );
    // Fault abort: 418 FI, twice, with Envoy's body size.
    let fi = [SLEEP, ("response_code", "418"), ("response_flags", "FI")];
    ensure!(s.value(requests, &fi)? == 2, "{}", s.text);
    ensure!(
        s.value("istio_response_bytes_sum", &fi)? == 2 * ABORT_BODY.len() as u64,
        "{}",
        s.text
    );

    // The other pod: its own series, its canonical-name label, no owner (workload = pod name).
    let other_ok = [OTHER, ("response_code", "200")];
    let other_labels = s.labels(requests, &other_ok)?;
    ensure!(
        other_labels
            .get("source_canonical_service")
            .map(String::as_str)
            == Some("other-canon")
            && other_labels
                .get("source_canonical_revision")
                .map(String::as_str)
                == Some("latest")
            && other_labels.get("source_version").map(String::as_str) == Some("unknown")
            && other_labels.get("destination_workload").map(String::as_str) == Some("reviews-v1"),
        "{other_labels:?}"
    );
    ensure!(s.value(requests, &other_ok)? == 2);
    ensure!(s.value("istio_request_bytes_sum", &other_ok)? == 10);
    // Nothing of other's leaked into sleep's series or back.
    ensure!(s.value(requests, &[OTHER, ("response_code", "404")])? == 0);
    let total: u64 = s
        .samples
        .iter()
        .filter(|x| x.name == requests)
        .map(|x| x.value.parse::<f64>().unwrap_or(f64::NAN) as u64)
        .sum();
    ensure!(
        total == 3 + 1 + 2 + 2,
        "{total} requests counted:\n{}",
        s.text
    );

    // TCP, per client pod.
    let tcp = |who: (&'static str, &'static str)| {
        [
            who,
            ("request_protocol", "tcp"),
            ("destination_service", ECHO),
            ("destination_workload", "echo-v1"),
            ("response_flags", "-"),
        ]
    };
    for (who, conns, bytes) in [(SLEEP, 1u64, 1000u64), (OTHER, 2, 600)] {
        let l = tcp(who);
        let got = (
            s.value("istio_tcp_connections_opened_total", &l)?,
            s.value("istio_tcp_connections_closed_total", &l)?,
            s.value("istio_tcp_received_bytes_total", &l)?,
            s.value("istio_tcp_sent_bytes_total", &l)?,
        );
        ensure!(
            got == (conns, conns, bytes, bytes),
            "{who:?}: opened/closed/received/sent {got:?}, expected ({conns}, {conns}, {bytes}, \
             {bytes}):\n{}",
            s.text
        );
        ensure!(!s
            .labels("istio_tcp_sent_bytes_total", &l)?
            .contains_key("response_code"));
    }
    ensure!(s.value("keel_metrics_series_overflow_total", &[])? == 0);

    // `/metrics` serves the same families.
    let m = Scrape::get(&keel, "/metrics")?;
    ensure!(m.value(requests, &sleep_ok)? == 3);
    Ok(())
}

/// gRPC calls are `request_protocol="grpc"` with the `grpc-status` the server sent in its trailers.
#[test]
fn grpc_status_from_trailers_labels_the_request() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 157, &[])?;
    fx.add_grpc_backend(
        "greeter-v1",
        31,
        9090,
        "v1",
        &[("app", "greeter"), ("version", "v1")],
        GrpcServerOpts::default(),
    )?;
    let greeter = fx.add_simple_service("greeter", 30, "grpc", 9090, 9090)?;
    let keel = fx.start_keel_strict()?;
    let url = "http://greeter:9090/keel.test.Echo/Call";
    let ok = fx
        .agent
        .grpc_call(&fx.sleep, &GrpcCall::new(url, greeter).count(2))?;
    ensure!(
        ok.calls.len() == 2
            && ok
                .calls
                .iter()
                .all(|c| c.grpc_status == Some(0) && c.status_from == "trailers"),
        "{ok:?}"
    );
    let unavailable = fx.agent.grpc_call(
        &fx.sleep,
        &GrpcCall::new(url, greeter).header("x-test-grpc-status", "14"),
    )?;
    ensure!(
        unavailable.calls.first().and_then(|c| c.grpc_status) == Some(14),
        "{unavailable:?}"
    );
    let grpc = |status: &'static str| {
        [
            ("source_workload", "sleep"),
            ("destination_workload", "greeter-v1"),
            ("destination_service", "greeter.default.svc.cluster.local"),
            ("request_protocol", "grpc"),
            ("response_code", "200"),
            ("grpc_response_status", status),
            ("response_flags", "-"),
        ]
    };
    common::wait_until("grpc metrics recorded", Duration::from_secs(5), || {
        let s = Scrape::get(&keel, "/stats/prometheus")?;
        Ok(s.value("istio_requests_total", &grpc("14"))? == 1)
    })?;
    let s = Scrape::get(&keel, "/stats/prometheus")?;
    for line in s
        .text
        .lines()
        .filter(|l| l.starts_with("istio_requests_total"))
    {
        eprintln!("{line}");
    }
    ensure!(
        s.value("istio_requests_total", &grpc("0"))? == 2,
        "{}",
        s.text
    );
    ensure!(
        s.value("istio_requests_total", &grpc("14"))? == 1,
        "{}",
        s.text
    );
    Ok(())
}

/// A TCP connection Keel closes at once because the service has no endpoint is opened and closed
/// with `UH`, attributed to its client.
#[test]
fn tcp_connection_without_an_endpoint_is_counted_with_uh() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 158, &[])?;
    fx.add_service(service_yaml(
        "empty",
        "default",
        Ipv4Addr::new(10, 96, 0, 41),
        &[SvcPort {
            name: "tcp",
            port: 7001,
            target_port: 7001,
        }],
        &[("app", "nobody")],
    ))?;
    let keel = fx.start_keel_strict()?;
    let r = fx
        .agent
        .tcp_connect(&fx.sleep, vip(41, 7001), Some("ping"))?;
    ensure!(
        r.connected && r.data.is_empty(),
        "keel accepts and closes the connection without an answer: {r:?}"
    );
    let uh = [
        ("source_workload", "sleep"),
        ("destination_service", "empty.default.svc.cluster.local"),
        ("destination_workload", "unknown"),
        ("request_protocol", "tcp"),
        ("response_flags", "UH"),
    ];
    common::wait_until("tcp UH recorded", Duration::from_secs(5), || {
        let s = Scrape::get(&keel, "/stats/prometheus")?;
        Ok(s.value("istio_tcp_connections_closed_total", &uh)? == 1)
    })?;
    let s = Scrape::get(&keel, "/stats/prometheus")?;
    ensure!(
        s.value("istio_tcp_connections_opened_total", &uh)? == 1,
        "{}",
        s.text
    );
    ensure!(
        s.value("istio_tcp_received_bytes_total", &uh)? == 0,
        "{}",
        s.text
    );
    Ok(())
}

/// The admin address (loopback of the node) cannot be reached from a pod, neither at the node's
/// bridge address nor at the pod's own loopback.
#[test]
fn admin_port_is_not_reachable_from_pods() -> Result<()> {
    let fx = Fixture::reviews(PREFIX, 156, &["v1"])?;
    let keel = fx.start_keel_strict()?;
    let admin = keel.options().admin_addr;
    // The admin API answers on the node itself.
    Scrape::get(&keel, "/stats/prometheus")?;
    for ip in [fx.net.bridge_ip(), Ipv4Addr::LOCALHOST] {
        let addr = SocketAddr::V4(SocketAddrV4::new(ip, admin.port()));
        let r = fx.agent.tcp_connect(&fx.sleep, addr, None)?;
        eprintln!("admin port from a pod at {addr}: {:?}", r.outcome);
        ensure!(
            !r.connected
                && matches!(
                    r.outcome,
                    ConnectOutcome::Refused | ConnectOutcome::Unreachable | ConnectOutcome::Timeout
                ),
            "the admin port must not be reachable from a pod at {addr}: {r:?}"
        );
    }
    Ok(())
}

/// The admin API's liveness probe and live log-level change, as an operator uses them: `/live` answers,
/// `POST /logging?level=` replaces the filter (and a bad one is refused with 400, keeping the old), and
/// keel's log, piped to a file, carries no colour codes.
#[test]
fn admin_live_and_log_level_change() -> Result<()> {
    let fx = Fixture::reviews(PREFIX, 159, &["v1"])?;
    let keel = fx.start_keel_strict()?;
    let admin = keel.options().admin_addr;
    let timeout = Duration::from_secs(5);
    let live = keel_tests::http::get(admin, "/live", timeout)?;
    ensure!(
        live.status == 200 && live.text() == "live\n",
        "/live: {live:?}"
    );
    let shown = keel_tests::http::get(admin, "/logging", timeout)?;
    ensure!(
        shown.status == 200 && shown.text().starts_with("log filter: "),
        "GET /logging: {} {:?}",
        shown.status,
        shown.text()
    );
    let set = keel_tests::http::post(admin, "/logging?level=keel%3Ddebug%2Cinfo", timeout)?;
    ensure!(
        set.status == 200 && is_filter(&set.text()),
        "POST /logging: {} {:?}",
        set.status,
        set.text()
    );
    let bad = keel_tests::http::post(admin, "/logging?level=keel%3Dloud", timeout)?;
    ensure!(
        bad.status == 400 && bad.text().contains("invalid log filter"),
        "a bad filter must be refused: {} {:?}",
        bad.status,
        bad.text()
    );
    let after = keel_tests::http::get(admin, "/logging", timeout)?;
    ensure!(
        is_filter(&after.text()),
        "the refused filter must leave the previous one: {:?}",
        after.text()
    );
    let log = keel.stderr();
    ensure!(log.contains("log filter changed"), "keel's log: {log}");
    fn is_filter(text: &str) -> bool {
        // The filter prints its directives in its own order.
        text.strip_prefix("log filter: ").is_some_and(|f| {
            let mut parts: Vec<&str> = f.trim().split(',').collect();
            parts.sort_unstable();
            parts == ["info", "keel=debug"]
        })
    }
    ensure!(
        !log.contains('\u{1b}'),
        "no colour codes when stderr is not a terminal: {log}"
    );
    Ok(())
}

/// `keel run --no-metrics`: requests are served as before, no `istio_*` series is recorded, and
/// Keel's own `keel_*` metrics stay.
#[test]
fn no_metrics_records_no_istio_series() -> Result<()> {
    let fx = Fixture::reviews(PREFIX, 190, &["v1"])?;
    let mut opts = KeelOptions::new(&fx.net, fx.config.path())?;
    opts.extra_args.push("--no-metrics".into());
    let keel = Keel::start_with(&fx.net, opts)?;
    let report = fx.get_reviews(5)?;
    ensure!(
        report.status(200) == 5,
        "5 requests through keel should all be 200: {report:?}"
    );
    ensure!(
        keel.stats()?["keel.http_requests"].as_u64() == Some(5),
        "keel should have served the 5 requests: {}",
        keel.stats()?
    );
    let r = keel_tests::http::get(
        keel.options().admin_addr,
        "/stats/prometheus",
        Duration::from_secs(5),
    )?;
    let text = r.text();
    ensure!(
        r.status == 200 && !text.lines().any(|l| l.starts_with("istio_")),
        "with --no-metrics no istio_* series may be recorded:\n{text}"
    );
    ensure!(
        text.lines()
            .any(|l| l.starts_with("keel_config_reloads_total ")),
        "keel's own metrics must stay:\n{text}"
    );
    Ok(())
}
