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
    let c = m.tcp_opened.get_or_create_owned(&l);
    c.inc();
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
