//! VirtualService fault injection as an Istio user sees it (istio-semantics §1.12, §5 items 21–23, and
//! the seed tutorials' `jason` scenarios): aborts answered locally with Envoy's exact reply and never
//! forwarded, percentages drawn per request, delays before the router (so a route timeout starts after
//! the delay), and the gRPC abort as a trailers-only reply.
//!
//! What reached a backend is read from its request log, so "0 upstream requests" is checked, not assumed.
//! The abort replies (HTTP and gRPC) were checked against Envoy 1.40.
//!
//! Subnet indices 80..=84 belong to this file.

mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::{ensure_binomial, reviews_vip, wait_until, with_header, Fixture, REVIEWS_PORT};
use keel_tests::{GrpcCall, GrpcServerOpts, HttpGet, HttpGetReport, HttpServerOpts};

const PREFIX: &str = "ktfault";
/// Envoy's fault filter reply body.
const ABORT_BODY: &str = "fault filter abort";
/// How long to keep watching a backend's log for requests that must never come.
const QUIET: Duration = Duration::from_millis(300);

/// The DestinationRule every test here uses for reviews.
const REVIEWS_DR: &str = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: default
spec:
  host: reviews
  subsets:
  - name: v1
    labels:
      version: v1
";

fn reviews(path: &str) -> HttpGet {
    HttpGet::new(format!("http://reviews:9080{path}")).connect_to(reviews_vip())
}

/// Every response was `status` with Envoy's fault-abort reply: body exactly `fault filter abort`,
/// `content-type: text/plain`.
fn ensure_abort_replies(r: &HttpGetReport, status: u16, n: u64) -> Result<()> {
    ensure!(
        r.errors == 0 && r.status(status) == n && r.with_body(status, ABORT_BODY) == n,
        "expected {n} x {status} {ABORT_BODY:?}, got statuses {:?}, bodies {:?} (first error {:?})",
        r.by_status,
        r.other_bodies,
        r.first_error
    );
    ensure!(
        r.last_header_value("content-type") == Some("text/plain"),
        "a fault abort is a text/plain local reply: {:?}",
        r.last_headers
    );
    ensure!(
        r.last_header_value("content-length") == Some("18"),
        "body {ABORT_BODY:?} is 18 bytes: {:?}",
        r.last_headers
    );
    Ok(())
}

#[test]
fn abort_418_is_answered_locally_and_never_reaches_the_backend() -> Result<()> {
    let fx = Fixture::reviews_logged(PREFIX, 80, &["v1"])?;
    fx.config.write("destinationrule.yaml", REVIEWS_DR)?;
    // Item 21: the retry policy on the same route changes nothing — the fault filter answers before
    // the router, so there is nothing to retry.
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
  - fault:
      abort:
        httpStatus: 418
        percentage:
          value: 100
    retries:
      attempts: 3
      retryOn: \"418\"
    route:
    - destination:
        host: reviews
        subset: v1
",
    )?;
    let _keel = fx.start_keel_strict()?;

    let r = fx.get(&reviews("/productpage").count(50))?;
    ensure_abort_replies(&r, 418, 50)?;
    ensure!(
        r.last_header_value("server") == Some("envoy"),
        "local replies carry server: envoy: {:?}",
        r.last_headers
    );
    // A local reply does not cost the client its keep-alive connection.
    ensure!(
        r.connections == 1,
        "50 aborted requests should share one connection: {} connections",
        r.connections
    );
    let upstream = fx.log("reviews-v1")?.settle(QUIET, QUIET * 3)?;
    ensure!(
        upstream.is_empty(),
        "an aborted request must never reach the backend; it got {}: {:?}",
        upstream.len(),
        upstream.first()
    );
    Ok(())
}

#[test]
fn abort_percentage_missing_means_never_and_fifty_means_half() -> Result<()> {
    let fx = Fixture::reviews_logged(PREFIX, 81, &["v1"])?;
    fx.config.write("destinationrule.yaml", REVIEWS_DR)?;
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
          exact: no-percentage
    fault:
      abort:
        httpStatus: 503
    route:
    - destination:
        host: reviews
        subset: v1
  - match:
    - headers:
        x-case:
          exact: half
    fault:
      abort:
        httpStatus: 503
        percentage:
          value: 50
    route:
    - destination:
        host: reviews
        subset: v1
",
    )?;
    let _keel = fx.start_keel_strict()?;

    // No percentage: Envoy's default fraction is 0, so nothing is ever injected.
    let none = fx.get(&reviews("/").header("x-case", "no-percentage").count(500))?;
    ensure!(
        none.errors == 0 && none.status(200) == 500 && none.by_version.get("v1") == Some(&500),
        "an abort without percentage must never fire: {:?} {:?}",
        none.by_status,
        none.other_bodies
    );

    // 50%: an independent draw per request.
    let n: u64 = 1_000;
    let half = fx.get(&reviews("/").header("x-case", "half").count(1_000))?;
    let aborted = half.with_body(503, ABORT_BODY);
    ensure!(
        half.errors == 0 && aborted + half.status(200) == n,
        "every request is either aborted or served: {:?} {:?}",
        half.by_status,
        half.other_bodies
    );
    ensure_binomial("aborted at 50%", aborted, n, 0.5)?;

    let records = fx
        .log("reviews-v1")?
        .wait_for(500 + 1_000, Duration::from_secs(2))?;
    let reached_none = with_header(&records, "x-case", "no-percentage").len() as u64;
    let reached_half = with_header(&records, "x-case", "half").len() as u64;
    ensure!(
        reached_none == 500 && reached_half == half.status(200),
        "the backend must see exactly the requests that were not aborted: {reached_none} of 500 \
         (no percentage), {reached_half} for {} served at 50%",
        half.status(200)
    );
    Ok(())
}

#[test]
fn delay_happens_before_the_route_timeout_starts() -> Result<()> {
    let fx = Fixture::reviews_logged(PREFIX, 82, &["v1"])?;
    fx.config.write("destinationrule.yaml", REVIEWS_DR)?;
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
          exact: delay
    fault:
      delay:
        fixedDelay: 1s
        percentage:
          value: 100
    route:
    - destination:
        host: reviews
        subset: v1
  - match:
    - headers:
        x-case:
          exact: delay-and-timeout
    fault:
      delay:
        fixedDelay: 1s
        percentage:
          value: 100
    timeout: 500ms
    route:
    - destination:
        host: reviews
        subset: v1
",
    )?;
    let _keel = fx.start_keel_strict()?;

    // A delayed request is answered by the backend, at least 1 s later.
    let d = fx.get(&reviews("/").header("x-case", "delay").count(2))?;
    ensure!(
        d.errors == 0 && d.by_version.get("v1") == Some(&2),
        "a delayed request is still served by the backend: {d:?}"
    );
    ensure!(
        d.min_latency_ms() >= 1_000 && d.max_latency_ms() < 2_500,
        "fixedDelay 1s: each request should take 1.0–2.5 s, took {:?} ms",
        d.latencies_ms
    );

    // Delay 1 s > route timeout 500 ms, fast upstream: the timer starts after the delay, so 200.
    let fast = fx.get(&reviews("/").header("x-case", "delay-and-timeout").count(2))?;
    ensure!(
        fast.errors == 0 && fast.by_version.get("v1") == Some(&2),
        "the route timeout must not count the injected delay (expected 2 x 200 from v1): {:?} {:?}",
        fast.by_status,
        fast.other_bodies
    );
    ensure!(
        fast.min_latency_ms() >= 1_000,
        "still delayed by 1 s: {:?} ms",
        fast.latencies_ms
    );

    // Same route, upstream slower than the timeout: 504 about 1 s (delay) + 0.5 s (timeout) in.
    let slow = fx.get(&reviews("/delay/2000").header("x-case", "delay-and-timeout"))?;
    ensure!(
        slow.status(504) == 1 && slow.with_body(504, "upstream request timeout") == 1,
        "expected 504 upstream request timeout: {:?} {:?}",
        slow.by_status,
        slow.other_bodies
    );
    ensure!(
        (1_400..2_400).contains(&slow.max_latency_ms()),
        "delay 1 s + timeout 0.5 s should answer after ≈1.5 s, took {} ms",
        slow.max_latency_ms()
    );
    let records = fx.log("reviews-v1")?.wait_for(7, Duration::from_secs(2))?;
    ensure!(
        with_header(&records, "x-case", "delay").len() == 2
            && with_header(&records, "x-case", "delay-and-timeout").len() == 3,
        "each delayed request reaches the backend exactly once (2 + 3): {records:?}"
    );
    Ok(())
}

#[test]
fn grpc_abort_is_a_trailers_only_unavailable() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 83, &[])?;
    fx.add_grpc_backend(
        "greeter-v1",
        31,
        9090,
        "v1",
        &[("app", "greeter"), ("version", "v1")],
        GrpcServerOpts::default(),
    )?;
    let greeter = fx.add_simple_service("greeter", 30, "grpc", 9090, 9090)?;
    fx.config.write(
        "virtualservice.yaml",
        "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: greeter
  namespace: default
spec:
  hosts:
  - greeter
  http:
  - fault:
      abort:
        grpcStatus: UNAVAILABLE
        percentage:
          value: 100
    route:
    - destination:
        host: greeter
",
    )?;
    let _keel = fx.start_keel_strict()?;

    let r = fx.agent.grpc_call(
        &fx.sleep,
        &GrpcCall::new("http://greeter:9090/keel.test.Echo/Call", greeter).count(3),
    )?;
    ensure!(
        r.error.is_none() && r.calls.len() == 3,
        "three calls expected: {r:?}"
    );
    for c in &r.calls {
        ensure!(
            c.error.is_none()
                && c.http_status == 200
                && c.status_from == "headers"
                && c.grpc_status == Some(14)
                && c.grpc_message.as_deref() == Some(ABORT_BODY)
                && c.messages == 0,
            "grpcStatus UNAVAILABLE must be a trailers-only reply: HTTP 200, grpc-status 14, \
             grpc-message {ABORT_BODY:?}, no message: {c:?}"
        );
        ensure!(
            c.headers.get("content-type").map(String::as_str) == Some("application/grpc"),
            "content-type application/grpc: {:?}",
            c.headers
        );
    }
    let upstream = fx.log("greeter-v1")?.settle(QUIET, QUIET * 3)?;
    ensure!(
        upstream.is_empty(),
        "an aborted call must never reach the server: {upstream:?}"
    );
    Ok(())
}

/// Seed 002 (config/examples/34 and 35): ratings delays user `jason` by 7 s, then aborts him with 500;
/// everybody else is served normally. Bookinfo's productpage gives its call to reviews 3 s (plus one
/// retry) in its own code, so the page fails for jason; here the calling application is the `sleep`
/// pod's client, with the same 3 s timeout of its own.
#[test]
fn seed_jason_delay_exposes_the_application_timeout_then_abort() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 84, &[])?;
    fx.add_logged_backend(
        "ratings-v1",
        21,
        REVIEWS_PORT,
        "v1",
        &[("app", "ratings"), ("version", "v1")],
        HttpServerOpts::default(),
    )?;
    let ratings = fx.add_simple_service("ratings", 21, "http", 9080, 9080)?;
    fx.config.write(
        "destinationrule.yaml",
        "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: ratings
  namespace: default
spec:
  host: ratings
  subsets:
  - name: v1
    labels:
      version: v1
",
    )?;
    let delay_vs = "\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: ratings-test-delay
  namespace: default
spec:
  hosts:
  - ratings
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    fault:
      delay:
        percentage:
          value: 100.0
        fixedDelay: 7s
    route:
    - destination:
        host: ratings
        subset: v1
  - route:
    - destination:
        host: ratings
        subset: v1
";
    let abort_vs = "\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: ratings-test-abort
  namespace: default
spec:
  hosts:
  - ratings
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    fault:
      abort:
        percentage:
          value: 100.0
        httpStatus: 500
    route:
    - destination:
        host: ratings
        subset: v1
  - route:
    - destination:
        host: ratings
        subset: v1
";
    fx.config.write("ratings-fault.yaml", delay_vs)?;
    let _keel = fx.start_keel_strict()?;
    let ratings_get = || HttpGet::new("http://ratings:9080/ratings/0").connect_to(ratings);

    // jason: 7 s delay, but the application gives up after 3 s.
    let jason_started = Instant::now();
    let jason = fx.get(
        &ratings_get()
            .header("end-user", "jason")
            .request_timeout(Duration::from_secs(3)),
    )?;
    ensure!(
        jason.client_timeouts == 1 && jason.responses == 0,
        "jason's call must still be waiting (7 s delay) when the application's 3 s timeout fires: \
         {jason:?}"
    );
    ensure!(
        (2_900..5_000).contains(&jason.elapsed_ms),
        "the application timeout fires at 3 s: {} ms",
        jason.elapsed_ms
    );

    // Everybody else: no delay.
    for user in ["", "tester", "Jason"] {
        let mut req = ratings_get().count(3);
        if !user.is_empty() {
            req = req.header("end-user", user);
        }
        let r = fx.get(&req)?;
        ensure!(
            r.errors == 0 && r.by_version.get("v1") == Some(&3) && r.max_latency_ms() < 1_000,
            "user {user:?} must not be delayed (exact, case-sensitive match on jason): {r:?}"
        );
    }

    // The tutorial's next step: replace the delay with an abort for jason.
    fx.config.write("ratings-fault.yaml", abort_vs)?;
    let check = keel_tests::keel::validate(fx.config.path())?;
    ensure!(
        check.code == Some(0),
        "keel rejects the tutorial's abort VirtualService:\n{}",
        check.combined().trim()
    );
    wait_until(
        "the abort VirtualService to apply",
        Duration::from_secs(10),
        || {
            // Bounded: while the delay rule is still live the probe gives up like the application.
            let r = fx.get(
                &ratings_get()
                    .header("end-user", "jason")
                    .request_timeout(Duration::from_secs(2)),
            )?;
            Ok(r.status(500) == 1)
        },
    )?;
    let aborted = fx.get(&ratings_get().header("end-user", "jason").count(20))?;
    ensure_abort_replies(&aborted, 500, 20)?;
    let others = fx.get(&ratings_get().header("end-user", "tester").count(10))?;
    ensure!(
        others.errors == 0 && others.by_version.get("v1") == Some(&10),
        "only jason is aborted: {others:?}"
    );

    // jason's delayed request was abandoned before its delay ended, so Envoy never forwarded it (the
    // fault filter's timer dies with the stream); the aborted ones never go upstream either. Give the
    // 7 s delay time to have ended before looking.
    let seven_and_a_half = Duration::from_millis(7_500);
    if let Some(rest) = seven_and_a_half.checked_sub(jason_started.elapsed()) {
        std::thread::sleep(rest);
    }
    let records = fx.log("ratings-v1")?.read().context("ratings log")?;
    let jason_upstream = with_header(&records, "end-user", "jason");
    ensure!(
        jason_upstream.is_empty(),
        "no request of jason may reach ratings (abandoned during the delay, or aborted): {} did: {:?}",
        jason_upstream.len(),
        jason_upstream.first()
    );
    Ok(())
}
