use std::time::Duration;

use super::*;
use crate::outcome::ResponseFlag;

fn peer(workload: &str) -> Arc<PeerLabels> {
    let mut p = PeerLabels::unknown();
    p.workload = workload.into();
    p.namespace = "default".into();
    Arc::new(p)
}

fn labels(source: &str, code: u16, flags: ResponseFlags) -> IstioLabels {
    IstioLabels {
        source: peer(source),
        destination: Arc::new(PeerLabels::unknown()),
        service: Arc::new(ServiceLabels {
            host: "reviews.default.svc.cluster.local".into(),
            name: "reviews".into(),
            namespace: "default".into(),
        }),
        protocol: RequestProtocol::Http,
        http: Some(HttpResult {
            code,
            grpc_status: None,
        }),
        flags,
    }
}

#[test]
fn exposition_has_istio_names_labels_and_buckets() -> Result<(), std::fmt::Error> {
    let m = Metrics::default();
    let mut nr = ResponseFlags::default();
    nr.set(ResponseFlag::NoRouteFound);
    let series = m.http_handles(&labels("sleep", 404, nr));
    assert!(series.is_some());
    if let Some(s) = series {
        s.record(Duration::from_millis(3), 0, 10);
        s.record(Duration::from_millis(30), 5, 10);
    }
    let text = m.encode()?;
    assert!(
        text.contains("# TYPE istio_requests_total counter\n"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE istio_request_duration_milliseconds histogram\n"),
        "{text}"
    );
    let want = "istio_requests_total{reporter=\"source\",source_workload=\"sleep\",\
        source_workload_namespace=\"default\",source_principal=\"unknown\",source_app=\"unknown\",\
        source_version=\"unknown\",source_canonical_service=\"unknown\",\
        source_canonical_revision=\"unknown\",source_cluster=\"unknown\",\
        destination_workload=\"unknown\",destination_workload_namespace=\"unknown\",\
        destination_principal=\"unknown\",destination_app=\"unknown\",\
        destination_version=\"unknown\",\
        destination_service=\"reviews.default.svc.cluster.local\",\
        destination_service_name=\"reviews\",destination_service_namespace=\"default\",\
        destination_canonical_service=\"unknown\",destination_canonical_revision=\"unknown\",\
        destination_cluster=\"unknown\",request_protocol=\"http\",\
        connection_security_policy=\"unknown\",response_code=\"404\",\
        grpc_response_status=\"\",response_flags=\"NR\"} 2\n";
    assert!(text.contains(want), "{want}\nnot in\n{text}");
    // Envoy's buckets: 3 ms falls in le=5, 30 ms in le=50.
    let bucket = |le: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("istio_request_duration_milliseconds_bucket{")
                    && l.contains(&format!("le=\"{le}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_string)
    };
    assert_eq!(bucket("1").as_deref(), Some("0"));
    assert_eq!(bucket("5").as_deref(), Some("1"));
    assert_eq!(bucket("50").as_deref(), Some("2"));
    assert_eq!(bucket("3.6e+06").as_deref(), Some("2"));
    assert_eq!(bucket("+Inf").as_deref(), Some("2"));
    assert!(text.contains("istio_response_bytes_sum{"), "{text}");
    Ok(())
}

#[test]
fn label_sets_beyond_the_cap_are_dropped_and_counted() -> Result<(), std::fmt::Error> {
    let m = Metrics::with_limit(2);
    let ok = ResponseFlags::default();
    assert!(m.http_handles(&labels("a", 200, ok)).is_some());
    assert!(m.http_handles(&labels("b", 200, ok)).is_some());
    assert!(m.http_handles(&labels("c", 200, ok)).is_none());
    assert!(m.http_handles(&labels("c", 503, ok)).is_none());
    // Known label sets still record.
    assert!(m.http_handles(&labels("a", 200, ok)).is_some());
    let text = m.encode()?;
    assert!(
        text.contains("keel_metrics_series_overflow_total 2\n"),
        "{text}"
    );
    assert!(!text.contains("source_workload=\"c\""), "{text}");
    Ok(())
}

#[test]
fn tcp_label_sets_have_no_response_code() -> Result<(), std::fmt::Error> {
    let m = Metrics::default();
    let mut l = labels("sleep", 0, ResponseFlags::default());
    l.protocol = RequestProtocol::Tcp;
    l.http = None;
    let series = m.tcp_handles(&l);
    assert!(series.is_some());
    if let Some(s) = series {
        s.opened.inc();
    }
    let text = m.encode()?;
    let line = text
        .lines()
        .find(|x| x.starts_with("istio_tcp_connections_opened_total{"))
        .unwrap_or_default();
    assert!(line.contains("request_protocol=\"tcp\""), "{line}");
    assert!(line.contains("response_flags=\"-\"} 1"), "{line}");
    assert!(!line.contains("response_code"), "{line}");
    Ok(())
}

/// A peer with every workload label set, so the pinned exposition shows each label's place.
fn workload(name: &str, namespace: &str, version: &str) -> Arc<PeerLabels> {
    Arc::new(PeerLabels {
        workload: format!("{name}-{version}").into(),
        namespace: namespace.into(),
        principal: labels::UNKNOWN.into(),
        app: name.into(),
        version: version.into(),
        canonical_service: name.into(),
        canonical_revision: version.into(),
        cluster: "Kubernetes".into(),
    })
}

fn reviews() -> Arc<ServiceLabels> {
    Arc::new(ServiceLabels {
        host: "reviews.shop.svc.cluster.local".into(),
        name: "reviews".into(),
        namespace: "shop".into(),
    })
}

fn istio(
    protocol: RequestProtocol,
    http: Option<HttpResult>,
    flags: &[ResponseFlag],
) -> IstioLabels {
    let mut f = ResponseFlags::default();
    for flag in flags {
        f.set(*flag);
    }
    IstioLabels {
        source: workload("sleep", "shop", "v1"),
        destination: workload("reviews", "shop", "v2"),
        service: reviews(),
        protocol,
        http,
        flags: f,
    }
}

fn http_result(code: u16, grpc_status: Option<u32>) -> Option<HttpResult> {
    Some(HttpResult { code, grpc_status })
}

/// Series in the order they are created: HTTP 200, HTTP 503 (UF, URX), gRPC 14, TCP, TCP (UF).
fn record_pinned_series(m: &Metrics) -> Result<(), &'static str> {
    let ok = m
        .http_handles(&istio(RequestProtocol::Http, http_result(200, None), &[]))
        .ok_or("http 200 admitted")?;
    ok.record(Duration::from_millis(3), 0, 10);
    ok.record(Duration::from_millis(30), 5, 10);
    ok.record(Duration::from_micros(1_234), 2_048, 1_000_000);
    ok.record(Duration::from_secs(2), 700, 0);
    let failed = m
        .http_handles(&istio(
            RequestProtocol::Http,
            http_result(503, None),
            &[
                ResponseFlag::UpstreamConnectionFailure,
                ResponseFlag::UpstreamRetryLimitExceeded,
            ],
        ))
        .ok_or("http 503 admitted")?;
    failed.record(Duration::from_nanos(123_456_789), 0, 91);
    let grpc = m
        .http_handles(&istio(
            RequestProtocol::Grpc,
            http_result(200, Some(14)),
            &[],
        ))
        .ok_or("grpc admitted")?;
    grpc.record(Duration::from_millis(7), 12, 34);
    let tcp = m
        .tcp_handles(&istio(RequestProtocol::Tcp, None, &[]))
        .ok_or("tcp admitted")?;
    tcp.opened.inc();
    tcp.opened.inc();
    tcp.opened.inc();
    tcp.closed.inc();
    tcp.closed.inc();
    tcp.sent.add(1_234);
    tcp.received.add(99);
    let refused = m
        .tcp_handles(&istio(
            RequestProtocol::Tcp,
            None,
            &[ResponseFlag::UpstreamConnectionFailure],
        ))
        .ok_or("tcp UF admitted")?;
    refused.opened.inc();
    refused.closed.inc();
    // Over the cap of 5: dropped and counted.
    if m.http_handles(&istio(RequestProtocol::Http, http_result(404, None), &[]))
        .is_some()
    {
        return Err("a sixth label set over a cap of 5");
    }
    Ok(())
}

/// The exposition split into series (a counter line, or a histogram's buckets, sum and count),
/// the series of each family sorted: the order of series within a family is not defined.
fn series_of(text: &str) -> Vec<Vec<Vec<&str>>> {
    let mut families: Vec<Vec<Vec<&str>>> = Vec::new();
    let mut series: Vec<&str> = Vec::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") {
            families.push(Vec::new());
        }
        series.push(line);
        let part_of_histogram = line.contains("_bucket{") || line.contains("_sum{");
        if !part_of_histogram {
            if let Some(family) = families.last_mut() {
                family.push(std::mem::take(&mut series));
            }
        }
    }
    for family in &mut families {
        family.sort();
    }
    families
}

/// Every label set as the exposition writes it, keyed by its placeholder in [`PINNED`].
const PINNED_LABELS: [(&str, &str); 5] = [
    (
        "{http200}",
        "reporter=\"source\",source_workload=\"sleep-v1\",source_workload_namespace=\"shop\",source_principal=\"unknown\",source_app=\"sleep\",source_version=\"v1\",source_canonical_service=\"sleep\",source_canonical_revision=\"v1\",source_cluster=\"Kubernetes\",destination_workload=\"reviews-v2\",destination_workload_namespace=\"shop\",destination_principal=\"unknown\",destination_app=\"reviews\",destination_version=\"v2\",destination_service=\"reviews.shop.svc.cluster.local\",destination_service_name=\"reviews\",destination_service_namespace=\"shop\",destination_canonical_service=\"reviews\",destination_canonical_revision=\"v2\",destination_cluster=\"Kubernetes\",request_protocol=\"http\",connection_security_policy=\"unknown\",response_code=\"200\",grpc_response_status=\"\",response_flags=\"-\"",
    ),
    (
        "{http503}",
        "reporter=\"source\",source_workload=\"sleep-v1\",source_workload_namespace=\"shop\",source_principal=\"unknown\",source_app=\"sleep\",source_version=\"v1\",source_canonical_service=\"sleep\",source_canonical_revision=\"v1\",source_cluster=\"Kubernetes\",destination_workload=\"reviews-v2\",destination_workload_namespace=\"shop\",destination_principal=\"unknown\",destination_app=\"reviews\",destination_version=\"v2\",destination_service=\"reviews.shop.svc.cluster.local\",destination_service_name=\"reviews\",destination_service_namespace=\"shop\",destination_canonical_service=\"reviews\",destination_canonical_revision=\"v2\",destination_cluster=\"Kubernetes\",request_protocol=\"http\",connection_security_policy=\"unknown\",response_code=\"503\",grpc_response_status=\"\",response_flags=\"UF,URX\"",
    ),
    (
        "{grpc14}",
        "reporter=\"source\",source_workload=\"sleep-v1\",source_workload_namespace=\"shop\",source_principal=\"unknown\",source_app=\"sleep\",source_version=\"v1\",source_canonical_service=\"sleep\",source_canonical_revision=\"v1\",source_cluster=\"Kubernetes\",destination_workload=\"reviews-v2\",destination_workload_namespace=\"shop\",destination_principal=\"unknown\",destination_app=\"reviews\",destination_version=\"v2\",destination_service=\"reviews.shop.svc.cluster.local\",destination_service_name=\"reviews\",destination_service_namespace=\"shop\",destination_canonical_service=\"reviews\",destination_canonical_revision=\"v2\",destination_cluster=\"Kubernetes\",request_protocol=\"grpc\",connection_security_policy=\"unknown\",response_code=\"200\",grpc_response_status=\"14\",response_flags=\"-\"",
    ),
    (
        "{tcp}",
        "reporter=\"source\",source_workload=\"sleep-v1\",source_workload_namespace=\"shop\",source_principal=\"unknown\",source_app=\"sleep\",source_version=\"v1\",source_canonical_service=\"sleep\",source_canonical_revision=\"v1\",source_cluster=\"Kubernetes\",destination_workload=\"reviews-v2\",destination_workload_namespace=\"shop\",destination_principal=\"unknown\",destination_app=\"reviews\",destination_version=\"v2\",destination_service=\"reviews.shop.svc.cluster.local\",destination_service_name=\"reviews\",destination_service_namespace=\"shop\",destination_canonical_service=\"reviews\",destination_canonical_revision=\"v2\",destination_cluster=\"Kubernetes\",request_protocol=\"tcp\",connection_security_policy=\"unknown\",response_flags=\"-\"",
    ),
    (
        "{tcpUF}",
        "reporter=\"source\",source_workload=\"sleep-v1\",source_workload_namespace=\"shop\",source_principal=\"unknown\",source_app=\"sleep\",source_version=\"v1\",source_canonical_service=\"sleep\",source_canonical_revision=\"v1\",source_cluster=\"Kubernetes\",destination_workload=\"reviews-v2\",destination_workload_namespace=\"shop\",destination_principal=\"unknown\",destination_app=\"reviews\",destination_version=\"v2\",destination_service=\"reviews.shop.svc.cluster.local\",destination_service_name=\"reviews\",destination_service_namespace=\"shop\",destination_canonical_service=\"reviews\",destination_canonical_revision=\"v2\",destination_cluster=\"Kubernetes\",request_protocol=\"tcp\",connection_security_policy=\"unknown\",response_flags=\"UF\"",
    ),
];

const PINNED: &str = "\
# HELP istio_requests_total Requests, by client and destination workload and outcome.\n\
# TYPE istio_requests_total counter\n\
istio_requests_total{{http200}} 4\n\
istio_requests_total{{http503}} 1\n\
istio_requests_total{{grpc14}} 1\n\
# HELP istio_request_duration_milliseconds Request duration in milliseconds, until the response's last byte.\n\
# TYPE istio_request_duration_milliseconds histogram\n\
istio_request_duration_milliseconds_bucket{{http200},le=\"0.5\"} 0\n\
istio_request_duration_milliseconds_bucket{{http200},le=\"1\"} 0\n\
istio_request_duration_milliseconds_bucket{{http200},le=\"5\"} 2\n\
istio_request_duration_milliseconds_bucket{{http200},le=\"10\"} 2\n\
istio_request_duration_milliseconds_bucket{{http200},le=\"25\"} 2\n\
istio_request_duration_milliseconds_bucket{{http200},le=\"50\"} 3\n\
istio_request_duration_milliseconds_bucket{{http200},le=\"100\"} 3\n\
istio_request_duration_milliseconds_bucket{{http200},le=\"250\"} 3\n\
istio_request_duration_milliseconds_bucket{{http200},le=\"500\"} 3\n\
istio_request_duration_milliseconds_bucket{{http200},le=\"1000\"} 3\n\
istio_request_duration_milliseconds_bucket{{http200},le=\"2500\"} 4\n\
istio_request_duration_milliseconds_bucket{{http200},le=\"5000\"} 4\n\
istio_request_duration_milliseconds_bucket{{http200},le=\"10000\"} 4\n\
istio_request_duration_milliseconds_bucket{{http200},le=\"30000\"} 4\n\
istio_request_duration_milliseconds_bucket{{http200},le=\"60000\"} 4\n\
istio_request_duration_milliseconds_bucket{{http200},le=\"300000\"} 4\n\
istio_request_duration_milliseconds_bucket{{http200},le=\"600000\"} 4\n\
istio_request_duration_milliseconds_bucket{{http200},le=\"1.8e+06\"} 4\n\
istio_request_duration_milliseconds_bucket{{http200},le=\"3.6e+06\"} 4\n\
istio_request_duration_milliseconds_bucket{{http200},le=\"+Inf\"} 4\n\
istio_request_duration_milliseconds_sum{{http200}} 2034.234\n\
istio_request_duration_milliseconds_count{{http200}} 4\n\
istio_request_duration_milliseconds_bucket{{http503},le=\"0.5\"} 0\n\
istio_request_duration_milliseconds_bucket{{http503},le=\"1\"} 0\n\
istio_request_duration_milliseconds_bucket{{http503},le=\"5\"} 0\n\
istio_request_duration_milliseconds_bucket{{http503},le=\"10\"} 0\n\
istio_request_duration_milliseconds_bucket{{http503},le=\"25\"} 0\n\
istio_request_duration_milliseconds_bucket{{http503},le=\"50\"} 0\n\
istio_request_duration_milliseconds_bucket{{http503},le=\"100\"} 0\n\
istio_request_duration_milliseconds_bucket{{http503},le=\"250\"} 1\n\
istio_request_duration_milliseconds_bucket{{http503},le=\"500\"} 1\n\
istio_request_duration_milliseconds_bucket{{http503},le=\"1000\"} 1\n\
istio_request_duration_milliseconds_bucket{{http503},le=\"2500\"} 1\n\
istio_request_duration_milliseconds_bucket{{http503},le=\"5000\"} 1\n\
istio_request_duration_milliseconds_bucket{{http503},le=\"10000\"} 1\n\
istio_request_duration_milliseconds_bucket{{http503},le=\"30000\"} 1\n\
istio_request_duration_milliseconds_bucket{{http503},le=\"60000\"} 1\n\
istio_request_duration_milliseconds_bucket{{http503},le=\"300000\"} 1\n\
istio_request_duration_milliseconds_bucket{{http503},le=\"600000\"} 1\n\
istio_request_duration_milliseconds_bucket{{http503},le=\"1.8e+06\"} 1\n\
istio_request_duration_milliseconds_bucket{{http503},le=\"3.6e+06\"} 1\n\
istio_request_duration_milliseconds_bucket{{http503},le=\"+Inf\"} 1\n\
istio_request_duration_milliseconds_sum{{http503}} 123.456789\n\
istio_request_duration_milliseconds_count{{http503}} 1\n\
istio_request_duration_milliseconds_bucket{{grpc14},le=\"0.5\"} 0\n\
istio_request_duration_milliseconds_bucket{{grpc14},le=\"1\"} 0\n\
istio_request_duration_milliseconds_bucket{{grpc14},le=\"5\"} 0\n\
istio_request_duration_milliseconds_bucket{{grpc14},le=\"10\"} 1\n\
istio_request_duration_milliseconds_bucket{{grpc14},le=\"25\"} 1\n\
istio_request_duration_milliseconds_bucket{{grpc14},le=\"50\"} 1\n\
istio_request_duration_milliseconds_bucket{{grpc14},le=\"100\"} 1\n\
istio_request_duration_milliseconds_bucket{{grpc14},le=\"250\"} 1\n\
istio_request_duration_milliseconds_bucket{{grpc14},le=\"500\"} 1\n\
istio_request_duration_milliseconds_bucket{{grpc14},le=\"1000\"} 1\n\
istio_request_duration_milliseconds_bucket{{grpc14},le=\"2500\"} 1\n\
istio_request_duration_milliseconds_bucket{{grpc14},le=\"5000\"} 1\n\
istio_request_duration_milliseconds_bucket{{grpc14},le=\"10000\"} 1\n\
istio_request_duration_milliseconds_bucket{{grpc14},le=\"30000\"} 1\n\
istio_request_duration_milliseconds_bucket{{grpc14},le=\"60000\"} 1\n\
istio_request_duration_milliseconds_bucket{{grpc14},le=\"300000\"} 1\n\
istio_request_duration_milliseconds_bucket{{grpc14},le=\"600000\"} 1\n\
istio_request_duration_milliseconds_bucket{{grpc14},le=\"1.8e+06\"} 1\n\
istio_request_duration_milliseconds_bucket{{grpc14},le=\"3.6e+06\"} 1\n\
istio_request_duration_milliseconds_bucket{{grpc14},le=\"+Inf\"} 1\n\
istio_request_duration_milliseconds_sum{{grpc14}} 7.0\n\
istio_request_duration_milliseconds_count{{grpc14}} 1\n\
# HELP istio_request_bytes Request body size in bytes.\n\
# TYPE istio_request_bytes histogram\n\
istio_request_bytes_bucket{{http200},le=\"0.5\"} 1\n\
istio_request_bytes_bucket{{http200},le=\"1\"} 1\n\
istio_request_bytes_bucket{{http200},le=\"5\"} 2\n\
istio_request_bytes_bucket{{http200},le=\"10\"} 2\n\
istio_request_bytes_bucket{{http200},le=\"25\"} 2\n\
istio_request_bytes_bucket{{http200},le=\"50\"} 2\n\
istio_request_bytes_bucket{{http200},le=\"100\"} 2\n\
istio_request_bytes_bucket{{http200},le=\"250\"} 2\n\
istio_request_bytes_bucket{{http200},le=\"500\"} 2\n\
istio_request_bytes_bucket{{http200},le=\"1000\"} 3\n\
istio_request_bytes_bucket{{http200},le=\"2500\"} 4\n\
istio_request_bytes_bucket{{http200},le=\"5000\"} 4\n\
istio_request_bytes_bucket{{http200},le=\"10000\"} 4\n\
istio_request_bytes_bucket{{http200},le=\"30000\"} 4\n\
istio_request_bytes_bucket{{http200},le=\"60000\"} 4\n\
istio_request_bytes_bucket{{http200},le=\"300000\"} 4\n\
istio_request_bytes_bucket{{http200},le=\"600000\"} 4\n\
istio_request_bytes_bucket{{http200},le=\"1.8e+06\"} 4\n\
istio_request_bytes_bucket{{http200},le=\"3.6e+06\"} 4\n\
istio_request_bytes_bucket{{http200},le=\"+Inf\"} 4\n\
istio_request_bytes_sum{{http200}} 2753.0\n\
istio_request_bytes_count{{http200}} 4\n\
istio_request_bytes_bucket{{http503},le=\"0.5\"} 1\n\
istio_request_bytes_bucket{{http503},le=\"1\"} 1\n\
istio_request_bytes_bucket{{http503},le=\"5\"} 1\n\
istio_request_bytes_bucket{{http503},le=\"10\"} 1\n\
istio_request_bytes_bucket{{http503},le=\"25\"} 1\n\
istio_request_bytes_bucket{{http503},le=\"50\"} 1\n\
istio_request_bytes_bucket{{http503},le=\"100\"} 1\n\
istio_request_bytes_bucket{{http503},le=\"250\"} 1\n\
istio_request_bytes_bucket{{http503},le=\"500\"} 1\n\
istio_request_bytes_bucket{{http503},le=\"1000\"} 1\n\
istio_request_bytes_bucket{{http503},le=\"2500\"} 1\n\
istio_request_bytes_bucket{{http503},le=\"5000\"} 1\n\
istio_request_bytes_bucket{{http503},le=\"10000\"} 1\n\
istio_request_bytes_bucket{{http503},le=\"30000\"} 1\n\
istio_request_bytes_bucket{{http503},le=\"60000\"} 1\n\
istio_request_bytes_bucket{{http503},le=\"300000\"} 1\n\
istio_request_bytes_bucket{{http503},le=\"600000\"} 1\n\
istio_request_bytes_bucket{{http503},le=\"1.8e+06\"} 1\n\
istio_request_bytes_bucket{{http503},le=\"3.6e+06\"} 1\n\
istio_request_bytes_bucket{{http503},le=\"+Inf\"} 1\n\
istio_request_bytes_sum{{http503}} 0.0\n\
istio_request_bytes_count{{http503}} 1\n\
istio_request_bytes_bucket{{grpc14},le=\"0.5\"} 0\n\
istio_request_bytes_bucket{{grpc14},le=\"1\"} 0\n\
istio_request_bytes_bucket{{grpc14},le=\"5\"} 0\n\
istio_request_bytes_bucket{{grpc14},le=\"10\"} 0\n\
istio_request_bytes_bucket{{grpc14},le=\"25\"} 1\n\
istio_request_bytes_bucket{{grpc14},le=\"50\"} 1\n\
istio_request_bytes_bucket{{grpc14},le=\"100\"} 1\n\
istio_request_bytes_bucket{{grpc14},le=\"250\"} 1\n\
istio_request_bytes_bucket{{grpc14},le=\"500\"} 1\n\
istio_request_bytes_bucket{{grpc14},le=\"1000\"} 1\n\
istio_request_bytes_bucket{{grpc14},le=\"2500\"} 1\n\
istio_request_bytes_bucket{{grpc14},le=\"5000\"} 1\n\
istio_request_bytes_bucket{{grpc14},le=\"10000\"} 1\n\
istio_request_bytes_bucket{{grpc14},le=\"30000\"} 1\n\
istio_request_bytes_bucket{{grpc14},le=\"60000\"} 1\n\
istio_request_bytes_bucket{{grpc14},le=\"300000\"} 1\n\
istio_request_bytes_bucket{{grpc14},le=\"600000\"} 1\n\
istio_request_bytes_bucket{{grpc14},le=\"1.8e+06\"} 1\n\
istio_request_bytes_bucket{{grpc14},le=\"3.6e+06\"} 1\n\
istio_request_bytes_bucket{{grpc14},le=\"+Inf\"} 1\n\
istio_request_bytes_sum{{grpc14}} 12.0\n\
istio_request_bytes_count{{grpc14}} 1\n\
# HELP istio_response_bytes Response body size in bytes.\n\
# TYPE istio_response_bytes histogram\n\
istio_response_bytes_bucket{{http200},le=\"0.5\"} 1\n\
istio_response_bytes_bucket{{http200},le=\"1\"} 1\n\
istio_response_bytes_bucket{{http200},le=\"5\"} 1\n\
istio_response_bytes_bucket{{http200},le=\"10\"} 3\n\
istio_response_bytes_bucket{{http200},le=\"25\"} 3\n\
istio_response_bytes_bucket{{http200},le=\"50\"} 3\n\
istio_response_bytes_bucket{{http200},le=\"100\"} 3\n\
istio_response_bytes_bucket{{http200},le=\"250\"} 3\n\
istio_response_bytes_bucket{{http200},le=\"500\"} 3\n\
istio_response_bytes_bucket{{http200},le=\"1000\"} 3\n\
istio_response_bytes_bucket{{http200},le=\"2500\"} 3\n\
istio_response_bytes_bucket{{http200},le=\"5000\"} 3\n\
istio_response_bytes_bucket{{http200},le=\"10000\"} 3\n\
istio_response_bytes_bucket{{http200},le=\"30000\"} 3\n\
istio_response_bytes_bucket{{http200},le=\"60000\"} 3\n\
istio_response_bytes_bucket{{http200},le=\"300000\"} 3\n\
istio_response_bytes_bucket{{http200},le=\"600000\"} 3\n\
istio_response_bytes_bucket{{http200},le=\"1.8e+06\"} 4\n\
istio_response_bytes_bucket{{http200},le=\"3.6e+06\"} 4\n\
istio_response_bytes_bucket{{http200},le=\"+Inf\"} 4\n\
istio_response_bytes_sum{{http200}} 1000020.0\n\
istio_response_bytes_count{{http200}} 4\n\
istio_response_bytes_bucket{{http503},le=\"0.5\"} 0\n\
istio_response_bytes_bucket{{http503},le=\"1\"} 0\n\
istio_response_bytes_bucket{{http503},le=\"5\"} 0\n\
istio_response_bytes_bucket{{http503},le=\"10\"} 0\n\
istio_response_bytes_bucket{{http503},le=\"25\"} 0\n\
istio_response_bytes_bucket{{http503},le=\"50\"} 0\n\
istio_response_bytes_bucket{{http503},le=\"100\"} 1\n\
istio_response_bytes_bucket{{http503},le=\"250\"} 1\n\
istio_response_bytes_bucket{{http503},le=\"500\"} 1\n\
istio_response_bytes_bucket{{http503},le=\"1000\"} 1\n\
istio_response_bytes_bucket{{http503},le=\"2500\"} 1\n\
istio_response_bytes_bucket{{http503},le=\"5000\"} 1\n\
istio_response_bytes_bucket{{http503},le=\"10000\"} 1\n\
istio_response_bytes_bucket{{http503},le=\"30000\"} 1\n\
istio_response_bytes_bucket{{http503},le=\"60000\"} 1\n\
istio_response_bytes_bucket{{http503},le=\"300000\"} 1\n\
istio_response_bytes_bucket{{http503},le=\"600000\"} 1\n\
istio_response_bytes_bucket{{http503},le=\"1.8e+06\"} 1\n\
istio_response_bytes_bucket{{http503},le=\"3.6e+06\"} 1\n\
istio_response_bytes_bucket{{http503},le=\"+Inf\"} 1\n\
istio_response_bytes_sum{{http503}} 91.0\n\
istio_response_bytes_count{{http503}} 1\n\
istio_response_bytes_bucket{{grpc14},le=\"0.5\"} 0\n\
istio_response_bytes_bucket{{grpc14},le=\"1\"} 0\n\
istio_response_bytes_bucket{{grpc14},le=\"5\"} 0\n\
istio_response_bytes_bucket{{grpc14},le=\"10\"} 0\n\
istio_response_bytes_bucket{{grpc14},le=\"25\"} 0\n\
istio_response_bytes_bucket{{grpc14},le=\"50\"} 1\n\
istio_response_bytes_bucket{{grpc14},le=\"100\"} 1\n\
istio_response_bytes_bucket{{grpc14},le=\"250\"} 1\n\
istio_response_bytes_bucket{{grpc14},le=\"500\"} 1\n\
istio_response_bytes_bucket{{grpc14},le=\"1000\"} 1\n\
istio_response_bytes_bucket{{grpc14},le=\"2500\"} 1\n\
istio_response_bytes_bucket{{grpc14},le=\"5000\"} 1\n\
istio_response_bytes_bucket{{grpc14},le=\"10000\"} 1\n\
istio_response_bytes_bucket{{grpc14},le=\"30000\"} 1\n\
istio_response_bytes_bucket{{grpc14},le=\"60000\"} 1\n\
istio_response_bytes_bucket{{grpc14},le=\"300000\"} 1\n\
istio_response_bytes_bucket{{grpc14},le=\"600000\"} 1\n\
istio_response_bytes_bucket{{grpc14},le=\"1.8e+06\"} 1\n\
istio_response_bytes_bucket{{grpc14},le=\"3.6e+06\"} 1\n\
istio_response_bytes_bucket{{grpc14},le=\"+Inf\"} 1\n\
istio_response_bytes_sum{{grpc14}} 34.0\n\
istio_response_bytes_count{{grpc14}} 1\n\
# HELP istio_tcp_sent_bytes_total Bytes sent to the client on TCP connections.\n\
# TYPE istio_tcp_sent_bytes_total counter\n\
istio_tcp_sent_bytes_total{{tcp}} 1234\n\
istio_tcp_sent_bytes_total{{tcpUF}} 0\n\
# HELP istio_tcp_received_bytes_total Bytes received from the client on TCP connections.\n\
# TYPE istio_tcp_received_bytes_total counter\n\
istio_tcp_received_bytes_total{{tcp}} 99\n\
istio_tcp_received_bytes_total{{tcpUF}} 0\n\
# HELP istio_tcp_connections_opened_total TCP connections opened.\n\
# TYPE istio_tcp_connections_opened_total counter\n\
istio_tcp_connections_opened_total{{tcp}} 3\n\
istio_tcp_connections_opened_total{{tcpUF}} 1\n\
# HELP istio_tcp_connections_closed_total TCP connections closed.\n\
# TYPE istio_tcp_connections_closed_total counter\n\
istio_tcp_connections_closed_total{{tcp}} 2\n\
istio_tcp_connections_closed_total{{tcpUF}} 1\n\
# HELP keel_metrics_series_overflow_total Recordings dropped because the number of label sets reached its cap.\n\
# TYPE keel_metrics_series_overflow_total counter\n\
keel_metrics_series_overflow_total 1\n\
# HELP keel_access_log_dropped_total Access log lines dropped because the writer fell behind.\n\
# TYPE keel_access_log_dropped_total counter\n\
keel_access_log_dropped_total 0\n\
# HELP keel_trace_spans_dropped_total Spans not exported: the export queue was full or the collector failed.\n\
# TYPE keel_trace_spans_dropped_total counter\n\
keel_trace_spans_dropped_total 0\n\
";

#[test]
fn exposition_of_recorded_series_is_pinned() -> Result<(), Box<dyn std::error::Error>> {
    let m = Metrics::with_limit(5);
    record_pinned_series(&m)?;
    let text = m.encode()?;
    let mut want = PINNED.to_string();
    for (placeholder, labels) in PINNED_LABELS {
        want = want.replace(placeholder, labels);
    }
    assert_eq!(series_of(&text), series_of(&want), "got\n{text}");
    // The store writes series in creation order, so the text is pinned byte for byte.
    assert_eq!(text, want);
    Ok(())
}

#[test]
fn series_share_interned_label_pieces() {
    let m = Metrics::default();
    let ok = ResponseFlags::default();
    // Separately built but equal labels, as two cache misses resolve them.
    let a = m.http_handles(&istio(RequestProtocol::Http, http_result(200, None), &[]));
    let b = m.http_handles(&istio(RequestProtocol::Http, http_result(503, None), &[]));
    let t = m.tcp_handles(&istio(RequestProtocol::Tcp, None, &[]));
    let other = m.http_handles(&labels("other", 200, ok));
    let (Some(a), Some(b), Some(t), Some(other)) = (a, b, t, other) else {
        panic!("all four label sets are under the cap");
    };
    let (la, lb, lt) = (a.labels(), b.labels(), t.labels());
    assert!(Arc::ptr_eq(&la.source, &lb.source));
    assert!(Arc::ptr_eq(&la.source, &lt.source));
    assert!(Arc::ptr_eq(&la.destination, &lb.destination));
    assert!(Arc::ptr_eq(&la.service, &lt.service));
    // Different peers still share equal strings: `shop`, `unknown`, `Kubernetes`.
    assert!(!Arc::ptr_eq(&la.source, &la.destination));
    assert!(Arc::ptr_eq(&la.source.namespace, &la.destination.namespace));
    assert!(Arc::ptr_eq(&la.source.principal, &la.destination.principal));
    assert!(Arc::ptr_eq(&la.source.cluster, &la.destination.cluster));
    let lo = other.labels();
    assert!(Arc::ptr_eq(&lo.destination.workload, &la.source.principal));
    // The same label set is the same series.
    let again = m.http_handles(&istio(RequestProtocol::Http, http_result(200, None), &[]));
    assert!(again.is_some_and(|again| Arc::ptr_eq(&again, &a)));
}

#[test]
fn concurrent_recordings_are_all_counted() -> Result<(), Box<dyn std::error::Error>> {
    const THREADS: u64 = 8;
    const EACH: u64 = 10_000;
    let m = Metrics::default();
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let m = &m;
            scope.spawn(move || {
                // Every thread finds the series itself, as concurrent cache misses do.
                let http =
                    m.http_handles(&istio(RequestProtocol::Http, http_result(200, None), &[]));
                let tcp = m.tcp_handles(&istio(RequestProtocol::Tcp, None, &[]));
                for i in 0..EACH {
                    if let Some(s) = &http {
                        // 1 ms or 100 ms, 3 or 7 bytes: sums stay exact in f64.
                        let slow = (i + t) % 2 == 0;
                        let ms = if slow { 100 } else { 1 };
                        s.record(Duration::from_millis(ms), 3, 7);
                    }
                    if let Some(s) = &tcp {
                        s.opened.inc();
                        s.sent.add(5);
                    }
                }
            });
        }
    });
    let text = m.encode()?;
    // One HTTP and one TCP series: the first line of a name is theirs.
    let value = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
    };
    let n = THREADS * EACH;
    let half = n / 2;
    let cases = [
        ("istio_requests_total{", n.to_string()),
        ("istio_request_duration_milliseconds_count{", n.to_string()),
        (
            "istio_request_duration_milliseconds_bucket{",
            "0".to_string(),
        ),
        (
            "istio_request_duration_milliseconds_sum{",
            format!("{}.0", half * 100 + half),
        ),
        ("istio_request_bytes_sum{", format!("{}.0", 3 * n)),
        ("istio_response_bytes_sum{", format!("{}.0", 7 * n)),
        ("istio_tcp_connections_opened_total{", n.to_string()),
        ("istio_tcp_sent_bytes_total{", (5 * n).to_string()),
    ];
    for (prefix, want) in cases {
        assert_eq!(value(prefix), Some(want.as_str()), "{prefix}\n{text}");
    }
    let bucket = |le: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("istio_request_duration_milliseconds_bucket{")
                    && l.contains(&format!(",le=\"{le}\"}}"))
            })
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_string)
    };
    assert_eq!(bucket("1"), Some(half.to_string()));
    assert_eq!(bucket("50"), Some(half.to_string()));
    assert_eq!(bucket("100"), Some(n.to_string()));
    assert_eq!(bucket("+Inf"), Some(n.to_string()));
    assert!(
        text.contains("keel_metrics_series_overflow_total 0\n"),
        "{text}"
    );
    Ok(())
}
