//! In-process tests of the request path: a real config snapshot, the real routing tables and filter
//! chain, and fake upstreams on loopback that record what reaches them. Pure pieces (fault draws,
//! back-off, policy resolution) have table tests next to their code; these check the wiring.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::accept::ConnContext;
use crate::admin::Stats;
use crate::state::State;

/// One request as a fake upstream saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: http::HeaderMap,
    body: Bytes,
}

/// What a fake upstream answers: status, delay.
type Script = Arc<dyn Fn(usize, &Seen) -> (u16, Duration) + Send + Sync>;

/// A loopback HTTP/1.1 server recording every request.
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    async fn start(script: Script) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = Arc::clone(&log);
                let script = Arc::clone(&script);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let log = Arc::clone(&log);
                        let script = Arc::clone(&script);
                        async move {
                            let path = req.uri().to_string();
                            let headers = req.headers().clone();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let seen = Seen {
                                path,
                                headers,
                                body,
                            };
                            let n = {
                                let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
                                l.push(seen.clone());
                                l.len()
                            };
                            let (status, delay) = script(n, &seen);
                            tokio::time::sleep(delay).await;
                            let mut resp = Response::new(Full::new(Bytes::from(seen.path)));
                            *resp.status_mut() =
                                StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream { addr, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A node with services `reviews-v1` (10.96.1.1:9080) and `reviews-v2` (10.96.1.2:9080), each with
/// one pod on a loopback upstream, and the client pod `default/sleep`; `vs` (the `http:` list of a
/// VirtualService for `reviews-v1`, indented by 2) is in force.
fn context(v1: &Upstream, v2: &Upstream, vs: &str) -> ConnContext {
    context_with_ports(v1.addr.port(), v2.addr.port(), vs)
}

fn context_with_ports(v1: u16, v2: u16, vs: &str) -> ConnContext {
    let mut yaml = String::new();
    for (name, version, port) in [("reviews-v1", "v1", v1), ("reviews-v2", "v2", v2)] {
        // Each version gets its own Service port mapping via a per-version Service, so two
        // loopback servers on different ports can stand in for two pods.
        yaml.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
             spec:\n  clusterIP: 10.96.1.{octet}\n  selector: {{app: reviews, version: {version}}}\n  \
             ports:\n  - {{name: http, port: 9080, targetPort: {port}}}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  \
             labels: {{app: reviews, version: {version}}}\nstatus:\n  phase: Running\n  podIP: 127.0.0.1\n---\n",
            octet = if version == "v1" { 1 } else { 2 },
        ));
    }
    yaml.push_str(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: sleep, namespace: default, labels: {app: sleep}}\n\
         status: {phase: Running, podIP: 127.0.0.9}\n---\n",
    );
    yaml.push_str(&format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
         metadata: {{name: reviews, namespace: default}}\nspec:\n  hosts: [reviews-v1]\n  http:\n{vs}"
    ));
    let report = crate::policy::build(&crate::source::split_documents("test.yaml", &yaml));
    let errors: Vec<String> = report.errors.iter().map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let snapshot = Arc::new(report.snapshot);
    let sleep = *snapshot
        .pod_by_name
        .get("default/sleep")
        .expect("sleep pod");
    let state = Arc::new(State::default());
    // The kernel would attribute the connection to `sleep` by its cgroup (7, see below).
    state.publish(
        Arc::clone(&snapshot),
        crate::state::PodCgroups::captured_only(std::collections::HashMap::from([(7, sleep)])),
    );
    let view = Arc::clone(
        state
            .load()
            .routes
            .view_for_pod(sleep)
            .expect("a view for sleep"),
    );
    let stats = Arc::new(Stats::default());
    let admission =
        crate::admission::Admission::new(crate::admission::Limits::default(), Arc::clone(&stats));
    ConnContext {
        state,
        budget: admission.unattached(),
        stats,
        metrics: Arc::new(crate::metrics::Metrics::default()),
        original_dst: SocketAddr::from(([10, 96, 1, 1], 9080)),
        peer: SocketAddr::from(([127, 0, 0, 9], 40000)),
        pod_cgroup_id: 7,
        client: crate::upstream::ClientId(7),
        listener: view
            .lookup(SocketAddr::from(([10, 96, 1, 1], 9080)))
            .listener(),
        view,
    }
}

fn request(path: &str, headers: &[(&str, &str)], body: &'static str) -> Request<Full<Bytes>> {
    let mut req = Request::builder()
        .uri(path)
        .method(if body.is_empty() { "GET" } else { "POST" })
        .header("host", "reviews-v1:9080");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("request")
}

async fn send(
    ctx: &ConnContext,
    req: Request<Full<Bytes>>,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let resp = super::handle(ctx, req).await;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    (parts.status, parts.headers, body)
}

fn always(status: u16) -> Script {
    Arc::new(move |_, _| (status, Duration::ZERO))
}

const TO_V1: &str = "    route:\n    - destination: {host: reviews-v1}\n";
/// A rule with only the route to v1.
const ONLY_TO_V1: &str = "  - route:\n    - destination: {host: reviews-v1}\n";

#[tokio::test]
async fn explicit_retries_on_5xx_resend_the_body_and_count_attempts() {
    let v1 = Upstream::start(always(500)).await;
    let v2 = Upstream::start(always(200)).await;
    let vs = format!("  - retries: {{attempts: 3, retryOn: 5xx}}\n{TO_V1}");
    let ctx = context(&v1, &v2, &vs);
    let (status, headers, body) = send(&ctx, request("/r", &[], "payload")).await;
    assert_eq!(status, 500, "the last upstream answer is returned");
    assert_eq!(body, "/r");
    assert_eq!(headers["server"], "envoy");
    assert!(headers.contains_key("x-envoy-upstream-service-time"));
    let seen = v1.seen();
    assert_eq!(seen.len(), 4, "1 try + 3 retries");
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.headers["x-envoy-attempt-count"], (i + 1).to_string());
        assert_eq!(s.body, "payload", "every attempt carries the whole body");
    }
    assert_eq!(ctx.stats.upstream_rq_retry.get(), 3);
    assert_eq!(ctx.stats.upstream_rq_retry_limit_exceeded.get(), 1);
}

#[tokio::test]
async fn default_policy_does_not_retry_a_503() {
    let v1 = Upstream::start(always(503)).await;
    let v2 = Upstream::start(always(200)).await;
    let ctx = context(&v1, &v2, ONLY_TO_V1);
    let (status, _, _) = send(&ctx, request("/", &[], "")).await;
    assert_eq!(status, 503);
    assert_eq!(v1.seen().len(), 1);
}

#[tokio::test]
async fn retry_on_a_status_code_stops_at_the_first_other_answer() {
    let v1 = Upstream::start(Arc::new(|n, _| {
        (if n < 3 { 503 } else { 200 }, Duration::ZERO)
    }))
    .await;
    let v2 = Upstream::start(always(200)).await;
    let vs = format!("  - retries: {{attempts: 5, retryOn: \"503\"}}\n{TO_V1}");
    let ctx = context(&v1, &v2, &vs);
    let (status, _, _) = send(&ctx, request("/", &[], "")).await;
    assert_eq!(status, 200);
    assert_eq!(v1.seen().len(), 3);
    assert_eq!(ctx.stats.upstream_rq_retry_success.get(), 1);
}

#[tokio::test]
async fn per_try_timeout_is_retried_with_5xx_and_answers_504() {
    let v1 = Upstream::start(Arc::new(|_, _| (200, Duration::from_millis(400)))).await;
    let v2 = Upstream::start(always(200)).await;
    let vs = format!("  - retries: {{attempts: 2, perTryTimeout: 50ms, retryOn: 5xx}}\n{TO_V1}");
    let ctx = context(&v1, &v2, &vs);
    let (status, _, body) = send(&ctx, request("/", &[], "")).await;
    assert_eq!(status, 504);
    assert_eq!(body, "upstream request timeout");
    assert_eq!(v1.seen().len(), 3);
    assert_eq!(v1.seen()[0].headers["x-envoy-expected-rq-timeout-ms"], "50");
}

#[tokio::test]
async fn route_timeout_answers_504_after_one_attempt() {
    let v1 = Upstream::start(Arc::new(|_, _| (200, Duration::from_millis(400)))).await;
    let v2 = Upstream::start(always(200)).await;
    let vs = format!("  - timeout: 100ms\n{TO_V1}");
    let ctx = context(&v1, &v2, &vs);
    let started = std::time::Instant::now();
    let (status, _, body) = send(&ctx, request("/", &[], "")).await;
    assert_eq!(status, 504);
    assert_eq!(body, "upstream request timeout");
    assert!(started.elapsed() < Duration::from_millis(350));
    assert_eq!(v1.seen().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn fault_delay_then_abort_never_reaches_the_upstream() {
    let v1 = Upstream::start(always(200)).await;
    let v2 = Upstream::start(always(200)).await;
    let vs = format!(
        "  - fault:\n      delay: {{fixedDelay: 7s, percentage: {{value: 100}}}}\n      \
         abort: {{httpStatus: 418, percentage: {{value: 100}}}}\n{TO_V1}"
    );
    let ctx = context(&v1, &v2, &vs);
    let started = tokio::time::Instant::now();
    let (status, headers, body) = send(&ctx, request("/", &[], "")).await;
    assert!(
        started.elapsed() >= Duration::from_secs(7),
        "the delay runs first"
    );
    assert_eq!(status, 418);
    assert_eq!(body, "fault filter abort");
    assert_eq!(headers["content-type"], "text/plain");
    assert!(v1.seen().is_empty());
    assert_eq!(ctx.stats.fault_aborts_injected.get(), 1);
}

#[tokio::test]
async fn grpc_abort_is_a_trailers_only_response() {
    let v1 = Upstream::start(always(200)).await;
    let v2 = Upstream::start(always(200)).await;
    let vs = format!(
        "  - fault:\n      abort: {{grpcStatus: UNAVAILABLE, percentage: {{value: 100}}}}\n{TO_V1}"
    );
    let ctx = context(&v1, &v2, &vs);
    let (status, headers, body) = send(
        &ctx,
        request("/pkg.Svc/Call", &[("content-type", "application/grpc")], ""),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["grpc-status"], "14");
    assert_eq!(headers["grpc-message"], "fault filter abort");
    assert!(body.is_empty());
    assert!(v1.seen().is_empty());
}

#[tokio::test]
async fn rewrite_and_header_operations_shape_the_upstream_request() {
    let v1 = Upstream::start(always(200)).await;
    let v2 = Upstream::start(always(200)).await;
    let vs = "  - match: [{uri: {prefix: /old/}}]\n    rewrite: {uri: /new/, authority: newhost}\n    \
              headers:\n      request:\n        set: {x-a: \"1\"}\n        add: {x-b: \"2\"}\n        remove: [x-c]\n      \
              response:\n        set: {x-resp: yes}\n    route:\n    - destination: {host: reviews-v1}\n";
    let ctx = context(&v1, &v2, vs);
    let (status, headers, _) = send(
        &ctx,
        request(
            "/old/a?x=1",
            &[("x-a", "0"), ("x-b", "1"), ("x-c", "gone")],
            "",
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-resp"], "yes");
    let seen = v1.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.path, "/new/a?x=1");
    assert_eq!(s.headers["x-envoy-original-path"], "/old/a?x=1");
    assert_eq!(s.headers["host"], "newhost");
    assert_eq!(s.headers.get_all("x-a").iter().count(), 1);
    assert_eq!(s.headers["x-a"], "1");
    let xb: Vec<_> = s.headers.get_all("x-b").iter().collect();
    assert_eq!(xb, ["1", "2"]);
    assert!(!s.headers.contains_key("x-c"));
    assert!(s.headers.contains_key("x-request-id"));
    assert_eq!(s.headers["x-forwarded-proto"], "http");
}

#[tokio::test]
async fn mirrors_get_a_copy_with_the_shadow_host_and_never_delay_the_primary() {
    let v1 = Upstream::start(always(200)).await;
    let v2 = Upstream::start(Arc::new(|_, _| (500, Duration::from_millis(300)))).await;
    let vs = format!("  - mirror: {{host: reviews-v2}}\n{TO_V1}");
    let ctx = context(&v1, &v2, &vs);
    let started = std::time::Instant::now();
    let (status, _, _) = send(&ctx, request("/m?q=1", &[("x-t", "1")], "data")).await;
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "the slow mirror is not awaited"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let copies = v2.seen();
    assert_eq!(
        copies.len(),
        1,
        "mirrors sent {} dropped {}",
        ctx.stats.mirror_requests.get(),
        ctx.stats.mirror_dropped.get()
    );
    assert_eq!(copies[0].path, "/m?q=1");
    assert_eq!(copies[0].body, "data");
    assert_eq!(copies[0].headers["x-t"], "1");
    assert_eq!(copies[0].headers["host"], "reviews-v1-shadow:9080");
    assert_eq!(v1.seen().len(), 1);
}

#[tokio::test]
async fn cors_preflight_from_an_allowed_origin_is_answered_locally() {
    let v1 = Upstream::start(always(200)).await;
    let v2 = Upstream::start(always(200)).await;
    let vs = format!(
        "  - corsPolicy:\n      allowOrigins: [{{exact: \"https://a.example\"}}]\n      \
         allowMethods: [GET, POST]\n      maxAge: 24h\n{TO_V1}"
    );
    let ctx = context(&v1, &v2, &vs);
    let mut pre = request(
        "/",
        &[
            ("origin", "https://a.example"),
            ("access-control-request-method", "POST"),
        ],
        "",
    );
    *pre.method_mut() = http::Method::OPTIONS;
    let (status, headers, _) = send(&ctx, pre).await;
    assert_eq!(status, 200);
    assert_eq!(headers["access-control-allow-origin"], "https://a.example");
    assert_eq!(headers["access-control-allow-methods"], "GET,POST");
    assert_eq!(headers["access-control-max-age"], "86400");
    assert!(v1.seen().is_empty());
    let (status, headers, _) =
        send(&ctx, request("/", &[("origin", "https://a.example")], "")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["access-control-allow-origin"], "https://a.example");
    let (_, headers, _) = send(
        &ctx,
        request("/", &[("origin", "https://evil.example")], ""),
    )
    .await;
    assert!(!headers.contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn a_refused_connection_is_retried_by_default_then_answers_uf() {
    let v2 = Upstream::start(always(200)).await;
    let dead = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead_port = dead.local_addr().expect("addr").port();
    drop(dead);
    let ctx = context_with_ports(dead_port, v2.addr.port(), ONLY_TO_V1);
    let (status, _, body) = send(&ctx, request("/", &[], "")).await;
    assert_eq!(status, 503);
    assert_eq!(
        body,
        "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: connection failure"
    );
    assert_eq!(
        ctx.stats.upstream_rq_retry.get(),
        2,
        "Istio's default: 2 retries"
    );
    assert_eq!(ctx.stats.upstream_rq_retry_limit_exceeded.get(), 1);
}

/// The last value of the `name` series whose labels hold `has`.
fn sample(text: &str, name: &str, has: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(has))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn a_retried_request_is_counted_once_with_its_final_outcome_and_body_sizes() {
    let v1 = Upstream::start(always(500)).await;
    let v2 = Upstream::start(always(200)).await;
    let vs = format!("  - retries: {{attempts: 2, retryOn: 5xx}}\n{TO_V1}");
    let ctx = context(&v1, &v2, &vs);
    let (status, _, body) = send(&ctx, request("/r", &[], "payload")).await;
    assert_eq!(status, 500);
    assert_eq!(body, "/r");
    assert_eq!(v1.seen().len(), 3);
    let text = ctx.metrics.encode().expect("exposition");
    let series = "source_workload=\"sleep\"";
    let line = text
        .lines()
        .find(|l| l.starts_with("istio_requests_total{") && l.contains(series))
        .unwrap_or_default();
    for label in [
        "source_app=\"sleep\"",
        "destination_workload=\"reviews-v1\"",
        "destination_version=\"v1\"",
        "destination_service=\"reviews-v1.default.svc.cluster.local\"",
        "destination_service_name=\"reviews-v1\"",
        "request_protocol=\"http\"",
        "response_code=\"500\"",
        "response_flags=\"URX\"",
    ] {
        assert!(line.contains(label), "{label} not in {line}\n{text}");
    }
    // One request, whatever the number of attempts; body sizes as the client sent and got them.
    assert_eq!(sample(&text, "istio_requests_total", series), Some(1.0));
    assert_eq!(sample(&text, "istio_request_bytes_sum", series), Some(7.0));
    assert_eq!(sample(&text, "istio_response_bytes_sum", series), Some(2.0));
    assert_eq!(
        sample(&text, "istio_request_duration_milliseconds_count", series),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_local_reply_is_counted_with_its_flag() {
    let v1 = Upstream::start(always(200)).await;
    let v2 = Upstream::start(always(200)).await;
    let vs = "  - match:\n    - uri: {prefix: /only}\n    route:\n    - destination: {host: reviews-v1}\n";
    let ctx = context(&v1, &v2, vs);
    let (status, _, _) = send(&ctx, request("/elsewhere", &[], "")).await;
    assert_eq!(status, 404);
    let text = ctx.metrics.encode().expect("exposition");
    let series = "response_flags=\"NR\"";
    assert_eq!(
        sample(&text, "istio_requests_total", series),
        Some(1.0),
        "{text}"
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("istio_requests_total{") && l.contains(series))
        .unwrap_or_default();
    assert!(line.contains("response_code=\"404\""), "{line}");
    assert!(line.contains("destination_workload=\"unknown\""), "{line}");
    assert!(
        line.contains("destination_service=\"reviews-v1.default.svc.cluster.local\""),
        "{line}"
    );
}

#[test]
fn te_keeps_only_the_trailers_token() {
    let accepts = |v: &'static str| super::te_accepts_trailers(&http::HeaderValue::from_static(v));
    assert!(accepts("trailers"));
    assert!(accepts("TRAILERS"));
    assert!(accepts("gzip, trailers"));
    assert!(accepts("deflate;q=0.5, trailers;q=1"));
    assert!(!accepts("gzip"));
    assert!(!accepts("trailersx"));
    assert!(!accepts(""));
}
