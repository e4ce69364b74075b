//! L7 protocols and the headers Envoy adds (istio-semantics §1.10, §1.17, §4.5): WebSocket upgrades on
//! an `http` port, unary gRPC over h2c on a `grpc` port (trailers delivered, errors in trailers,
//! `grpc-timeout` honoured with a trailers-only reply), and the request/response headers a sidecar user
//! sees on every proxied request.
//!
//! Subnet indices 102..=106 belong to this file.

mod common;

use std::collections::BTreeSet;

use anyhow::{ensure, Context, Result};
use common::{reviews_vip, with_header, Fixture};
use keel_tests::{EchoBody, GrpcCall, GrpcServerOpts, HttpGet, WsClient};

const PREFIX: &str = "ktl7";
/// The gRPC method every call here uses.
const GRPC_URL: &str = "http://greeter:9090/keel.test.Echo/Call";

fn reviews(path: &str) -> HttpGet {
    HttpGet::new(format!("http://reviews:9080{path}")).connect_to(reviews_vip())
}

/// `8-4-4-4-12` lower- or upper-case hex, as Envoy generates (UUID v4).
fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

#[test]
fn websocket_upgrade_echoes_both_ways() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 102, &[])?;
    fx.add_ws_backend("chat-v1", 31, 8080, &[("app", "chat"), ("version", "v1")])?;
    let chat = fx.add_simple_service("chat", 30, "http", 8080, 8080)?;
    let _keel = fx.start_keel_strict()?;

    let sent = ["one", "two", "three"];
    let r = fx.agent.ws_client(
        &fx.sleep,
        &WsClient::new("ws://chat:8080/room?id=1", chat, &sent).binary(70_000),
    )?;
    ensure!(
        r.status == 101,
        "the upgrade must pass through keel as 101 Switching Protocols: {r:?}"
    );
    ensure!(
        r.headers
            .get("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
            && r.headers.get("x-ws-pod").map(String::as_str) == Some("chat-v1"),
        "the backend's 101 headers reach the client (upgrade: websocket, x-ws-pod): {:?}",
        r.headers
    );
    ensure!(
        r.error.is_none()
            && r.received == sent
            && r.binary_echo_ok == Some(true)
            && r.closed_cleanly,
        "every message must come back in order, the 70,000-byte binary one intact, then a clean \
         close: {r:?}"
    );
    let upgrades = fx.log("chat-v1")?.read()?;
    ensure!(
        upgrades.len() == 1,
        "one handshake reaches the backend: {upgrades:?}"
    );
    let h = upgrades.first().context("no handshake")?;
    ensure!(
        h.method == "GET"
            && h.path == "/room?id=1"
            && h.header("upgrade")
                .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
            && h.header("host") == Some("chat:8080"),
        "the backend sees the client's upgrade request: {h:?}"
    );
    Ok(())
}

#[test]
fn grpc_unary_ok_and_error_status_in_trailers() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 103, &[])?;
    fx.add_grpc_backend(
        "greeter-v1",
        31,
        9090,
        "v1",
        &[("app", "greeter"), ("version", "v1")],
        GrpcServerOpts::default(),
    )?;
    let greeter = fx.add_simple_service("greeter", 30, "grpc", 9090, 9090)?;
    let _keel = fx.start_keel_strict()?;

    let ok = fx
        .agent
        .grpc_call(&fx.sleep, &GrpcCall::new(GRPC_URL, greeter))?;
    let c = ok.calls.first().context("no call")?;
    ensure!(
        c.error.is_none()
            && c.http_status == 200
            && c.trailers_received
            && c.status_from == "trailers"
            && c.grpc_status == Some(0)
            && c.messages == 1,
        "an OK unary call: HTTP 200, one message, grpc-status 0 in trailers: {c:?}"
    );
    let echo: EchoBody = serde_json::from_str(c.first_message.as_deref().unwrap_or_default())
        .context("the reply message is the server's echo")?;
    ensure!(
        echo.protocol == "HTTP/2.0"
            && echo.method == "POST"
            && echo.path == "/keel.test.Echo/Call"
            && echo.headers.get("te").map(String::as_str) == Some("trailers")
            && echo.headers.get("content-type").map(String::as_str) == Some("application/grpc"),
        "the server sees an HTTP/2 POST with te: trailers and content-type application/grpc: {echo:?}"
    );

    let err = fx.agent.grpc_call(
        &fx.sleep,
        &GrpcCall::new(GRPC_URL, greeter)
            .header("x-test-grpc-status", "5")
            .header("x-test-grpc-message", "no such item"),
    )?;
    let c = err.calls.first().context("no call")?;
    ensure!(
        c.error.is_none()
            && c.http_status == 200
            && c.trailers_received
            && c.grpc_status == Some(5)
            && c.grpc_message.as_deref() == Some("no such item")
            && c.messages == 1,
        "an error status sent in trailers must reach the client in trailers: {c:?}"
    );
    let records = fx.log("greeter-v1")?.read()?;
    ensure!(
        records.len() == 2 && records.iter().all(|r| r.protocol == "HTTP/2.0"),
        "two calls over HTTP/2 reach the server: {records:?}"
    );
    Ok(())
}

#[test]
fn grpc_timeout_header_bounds_the_call() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 104, &[])?;
    // No route timeout anywhere (as Istio): only the client's grpc-timeout bounds the call.
    fx.write_mesh(&["defaultHttpTimeout: 0s"])?;
    fx.add_grpc_backend(
        "greeter-v1",
        31,
        9090,
        "v1",
        &[("app", "greeter"), ("version", "v1")],
        GrpcServerOpts {
            delay_ms: Some(5_000),
            ..GrpcServerOpts::default()
        },
    )?;
    let greeter = fx.add_simple_service("greeter", 30, "grpc", 9090, 9090)?;
    let _keel = fx.start_keel_strict()?;

    let r = fx.agent.grpc_call(
        &fx.sleep,
        &GrpcCall::new(GRPC_URL, greeter).grpc_timeout("1S"),
    )?;
    let c = r.calls.first().context("no call")?;
    // Envoy's timeout is a 504 local reply, sent to a gRPC client as trailers-only with
    // grpc-status = Grpc::Utility::httpToGrpcStatus(504) = 14 UNAVAILABLE and the body as message
    // (checked against Envoy 1.40).
    ensure!(
        c.error.is_none()
            && c.http_status == 200
            && c.status_from == "headers"
            && c.grpc_status == Some(14)
            && c.grpc_message.as_deref() == Some("upstream request timeout")
            && c.messages == 0,
        "grpc-timeout 1S: expected a trailers-only reply, HTTP 200, grpc-status 14, grpc-message \
         \"upstream request timeout\": {c:?}"
    );
    ensure!(
        c.headers.get("content-type").map(String::as_str) == Some("application/grpc"),
        "{:?}",
        c.headers
    );
    ensure!(
        (900..1_900).contains(&c.elapsed_ms),
        "the call must end ≈1 s after it started, took {} ms",
        c.elapsed_ms
    );
    let records = fx.log("greeter-v1")?.read()?;
    ensure!(
        records.len() == 1,
        "a timed-out call is not retried: {} attempts",
        records.len()
    );
    Ok(())
}

#[test]
fn envoy_standard_request_and_response_headers() -> Result<()> {
    let fx = Fixture::reviews_logged(PREFIX, 105, &["v1"])?;
    // As Istio: no route timeout unless the VirtualService sets one.
    fx.write_mesh(&["defaultHttpTimeout: 0s"])?;
    fx.config.write(
        "virtualservice.yaml",
        "\
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
    - headers:
        x-case:
          exact: timeout
    timeout: 3s
    route:
    - destination:
        host: reviews
  - match:
    - headers:
        x-case:
          exact: per-try
    timeout: 3s
    retries:
      attempts: 1
      perTryTimeout: 1s
    route:
    - destination:
        host: reviews
  - route:
    - destination:
        host: reviews
",
    )?;
    let _keel = fx.start_keel_strict()?;

    let plain = fx.get(&reviews("/").count(10))?;
    ensure!(plain.status(200) == 10, "{plain:?}");
    ensure!(
        plain.header_presence.get("x-envoy-upstream-service-time") == Some(&10)
            && plain.header_presence.get("server") == Some(&10),
        "every proxied response carries x-envoy-upstream-service-time and server: {:?}",
        plain.header_presence
    );
    ensure!(
        plain
            .last_header_value("x-envoy-upstream-service-time")
            .is_some_and(|v| v.parse::<u64>().is_ok()),
        "x-envoy-upstream-service-time is a number of ms: {:?}",
        plain.last_header("x-envoy-upstream-service-time")
    );
    ensure!(
        plain.last_header_value("server") == Some("envoy"),
        "server: envoy (the outbound sidecar's): {:?}",
        plain.last_header("server")
    );
    let timeout = fx.get(&reviews("/").header("x-case", "timeout"))?;
    let per_try = fx.get(&reviews("/").header("x-case", "per-try"))?;
    ensure!(
        timeout.status(200) == 1 && per_try.status(200) == 1,
        "{timeout:?} {per_try:?}"
    );

    let records = fx.log("reviews-v1")?.read()?;
    let mut problems = Vec::new();
    let mut ids = BTreeSet::new();
    for r in &records {
        match r.header("x-request-id") {
            Some(id) if is_uuid(id) => {
                ids.insert(id.to_string());
            }
            other => problems.push(format!("x-request-id must be a UUID, got {other:?}")),
        }
        if r.header("x-forwarded-proto") != Some("http") {
            problems.push(format!(
                "x-forwarded-proto: http expected, got {:?}",
                r.header("x-forwarded-proto")
            ));
        }
        if r.header("x-envoy-attempt-count") != Some("1") {
            problems.push(format!(
                "x-envoy-attempt-count: 1 expected, got {:?}",
                r.header("x-envoy-attempt-count")
            ));
        }
    }
    if ids.len() != records.len() {
        problems.push(format!(
            "each request gets its own x-request-id: {} distinct for {} requests",
            ids.len(),
            records.len()
        ));
    }
    let expected = |case: Option<&str>| -> Vec<Option<String>> {
        records
            .iter()
            .filter(|r| r.header("x-case") == case)
            .map(|r| r.header("x-envoy-expected-rq-timeout-ms").map(String::from))
            .collect()
    };
    for (case, want) in [
        (None, None),
        (Some("timeout"), Some("3000")),
        (Some("per-try"), Some("1000")),
    ] {
        let got = expected(case);
        if got.is_empty() || got.iter().any(|g| g.as_deref() != want) {
            problems.push(format!(
                "case {case:?}: x-envoy-expected-rq-timeout-ms should be {want:?}, got {got:?}"
            ));
        }
    }
    ensure!(
        with_header(&records, "x-case", "timeout").len() == 1 && records.len() == 12,
        "12 requests expected at the backend: {}",
        records.len()
    );
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}
