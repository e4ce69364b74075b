//! Retries and timeouts with Envoy's retry policy (istio-semantics §1.10, §1.11, §1.17, §5 items 16,
//! 18–20), counted at the backends: every backend logs each request it receives, so the number of
//! attempts, their `x-envoy-attempt-count` and what each carried are read, not inferred. The reply
//! bodies, attempt counts and `x-envoy-expected-rq-timeout-ms` values were checked against Envoy 1.40
//! with Istio's translation of these routes.
//!
//! Subnet indices 85..=91 belong to this file.

mod common;

use std::collections::BTreeSet;

use anyhow::{ensure, Context, Result};
use common::{attempt_counts, ensure_binomial, reviews_vip, with_header, Fixture};
use keel_tests::{
    body_hash, body_pattern, GrpcCall, GrpcServerOpts, HttpGet, HttpGetReport, HttpServerOpts,
    RequestRecord,
};

const PREFIX: &str = "ktretry";
/// Envoy's route / per-try timeout reply body.
const TIMEOUT_BODY: &str = "upstream request timeout";

fn reviews(path: &str) -> HttpGet {
    HttpGet::new(format!("http://reviews:9080{path}")).connect_to(reviews_vip())
}

/// Every record of the logged backends `names`, ordered by arrival.
fn records_of(fx: &Fixture, names: &[&str]) -> Result<Vec<RequestRecord>> {
    let mut all = Vec::new();
    for n in names {
        all.extend(fx.log(n)?.read()?);
    }
    all.sort_by_key(|r| r.ts_ms);
    Ok(all)
}

/// The attempts of the one request tagged `x-req: <tag>`, ordered by `x-envoy-attempt-count`.
fn attempts(fx: &Fixture, names: &[&str], tag: &str) -> Result<Vec<RequestRecord>> {
    let all = records_of(fx, names)?;
    let mut mine: Vec<RequestRecord> = with_header(&all, "x-req", tag)
        .into_iter()
        .cloned()
        .collect();
    mine.sort_by_key(|r| (r.attempt_count().unwrap_or(0), r.ts_ms));
    Ok(mine)
}

/// The attempts carried `x-envoy-attempt-count` 1, 2, ..., n.
fn ensure_attempt_counts(what: &str, records: &[RequestRecord], n: u32) -> Result<()> {
    let refs: Vec<&RequestRecord> = records.iter().collect();
    let got = attempt_counts(&refs);
    let want: Vec<u32> = (1..=n).collect();
    ensure!(
        got == want,
        "{what}: expected {n} upstream attempt(s) with x-envoy-attempt-count {want:?}, got {got:?}"
    );
    Ok(())
}

fn ensure_local_reply(what: &str, r: &HttpGetReport, status: u16, body: &str) -> Result<()> {
    ensure!(
        r.responses == 1 && r.with_body(status, body) == 1,
        "{what}: expected {status} {body:?}, got {:?} {:?} (error {:?})",
        r.by_status,
        r.other_bodies,
        r.first_error
    );
    Ok(())
}

#[test]
fn explicit_retries_count_attempts_per_retry_on() -> Result<()> {
    let versions = ["v1", "v2", "v3", "v4"];
    let names = ["reviews-v1", "reviews-v2", "reviews-v3", "reviews-v4"];
    let fx = Fixture::reviews_logged(PREFIX, 85, &versions)?;
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
          exact: 5xx
    retries:
      attempts: 3
      retryOn: 5xx
    route:
    - destination:
        host: reviews
  - match:
    - headers:
        x-case:
          exact: \"503\"
    retries:
      attempts: 3
      retryOn: \"503\"
    route:
    - destination:
        host: reviews
  - match:
    - headers:
        x-case:
          exact: zero
    retries:
      attempts: 0
    route:
    - destination:
        host: reviews
  - route:
    - destination:
        host: reviews
",
    )?;
    let _keel = fx.start_keel_strict()?;

    // `attempts: 3, retryOn: 5xx` on /status/500: 4 upstream requests, the client gets the last 500.
    let mut repeats = 0;
    for i in 0..10 {
        let tag = format!("5xx-{i}");
        let r = fx.get(
            &reviews("/status/500")
                .header("x-case", "5xx")
                .header("x-req", &tag),
        )?;
        ensure!(
            r.responses == 1 && r.status(500) == 1,
            "retries exhausted: the client gets the upstream's own 500: {r:?}"
        );
        let tries = attempts(&fx, &names, &tag)?;
        ensure_attempt_counts("attempts: 3, retryOn: 5xx, /status/500", &tries, 4)?;
        let last = tries.last().context("no attempt")?;
        let answered_by = r.last_body.as_ref().map(|b| b.pod.as_str());
        ensure!(
            answered_by == Some(last.pod.as_str()),
            "the response is the last attempt's (from {}), got one from {answered_by:?}",
            last.pod
        );
        // Retries resend the same request: one x-request-id for all attempts.
        let ids: BTreeSet<Option<&str>> = tries.iter().map(|t| t.header("x-request-id")).collect();
        ensure!(
            ids.len() == 1 && !ids.contains(&None),
            "all attempts of one request carry the same x-request-id: {ids:?}"
        );
        let mut seen = BTreeSet::new();
        for t in &tries {
            if !seen.insert(t.pod.clone()) {
                repeats += 1;
            }
        }
    }
    // Envoy's previous_hosts predicate (5 host-selection attempts) steers retries away from hosts
    // already tried: ≈2.7 repeats expected in these 40 attempts over 4 hosts, vs ≈15 for a balancer
    // that ignores earlier attempts. The predicate is best effort in Envoy, so the bound is loose.
    ensure!(
        repeats <= 7,
        "retries should prefer endpoints not tried yet: {repeats} of 30 retries went to an endpoint \
         the same request had already tried"
    );

    // `retryOn: "503"`: only that code is retried.
    let r503 = fx.get(
        &reviews("/status/503")
            .header("x-case", "503")
            .header("x-req", "503-a"),
    )?;
    ensure!(r503.status(503) == 1, "{r503:?}");
    ensure_attempt_counts(
        "retryOn \"503\", /status/503",
        &attempts(&fx, &names, "503-a")?,
        4,
    )?;
    let r500 = fx.get(
        &reviews("/status/500")
            .header("x-case", "503")
            .header("x-req", "503-b"),
    )?;
    ensure!(r500.status(500) == 1, "{r500:?}");
    ensure_attempt_counts(
        "retryOn \"503\", /status/500",
        &attempts(&fx, &names, "503-b")?,
        1,
    )?;

    // `attempts: 0` disables retries.
    let zero = fx.get(
        &reviews("/status/503")
            .header("x-case", "zero")
            .header("x-req", "zero"),
    )?;
    ensure!(zero.status(503) == 1, "{zero:?}");
    ensure_attempt_counts("attempts: 0", &attempts(&fx, &names, "zero")?, 1)?;

    // No `retries`: Istio's default policy does not retry a plain 503 (since 1.24).
    let default = fx.get(&reviews("/status/503").header("x-req", "default"))?;
    ensure!(default.status(503) == 1, "{default:?}");
    ensure_attempt_counts(
        "default retry policy, /status/503",
        &attempts(&fx, &names, "default")?,
        1,
    )?;
    Ok(())
}

#[test]
fn default_policy_retries_around_a_dead_endpoint() -> Result<()> {
    // reviews-v1 serves; reviews-v2 is in the Service but nothing listens (connection refused).
    let mut fx = Fixture::reviews_logged(PREFIX, 86, &["v1"])?;
    fx.add_pod(
        "reviews-v2",
        12,
        &[("app", "reviews"), ("version", "v2")],
        &[],
        false,
    )?;
    let _keel = fx.start_keel_strict()?;

    let r = fx.get(&reviews("/").count(100))?;
    ensure!(
        r.errors == 0 && r.status(200) == 100 && r.by_pod.get("reviews-v1") == Some(&100),
        "the default policy retries connect failures on another endpoint: all 100 must succeed \
         from reviews-v1: {:?} {:?} {:?}",
        r.by_status,
        r.by_pod,
        r.other_bodies
    );
    let records = fx.log("reviews-v1")?.read()?;
    ensure!(
        records.len() == 100,
        "a refused connection never reaches a backend, so v1 sees each request once: {}",
        records.len()
    );
    let counts: Vec<u32> = records
        .iter()
        .map(|r| r.attempt_count().unwrap_or(0))
        .collect();
    ensure!(
        counts.iter().all(|c| (1..=3).contains(c)),
        "attempt counts must be 1..=3 (2 default retries): {counts:?}"
    );
    // Without outlier detection the balancer keeps picking the dead endpoint about half the time, so
    // many requests reach v1 on their second attempt.
    ensure!(
        counts.iter().any(|c| *c >= 2),
        "some requests should have been retried after a refused connection (attempt count 2): \
         {counts:?}"
    );
    Ok(())
}

/// One timeout scenario: the `x-case` rule, the path, the upstream attempts expected, the window (ms)
/// the 504 must arrive in, and the first attempt's `x-envoy-expected-rq-timeout-ms`.
struct TimeoutCase {
    case: &'static str,
    path: &'static str,
    attempts: u32,
    window: (u64, u64),
    expected_timeout: &'static str,
}

impl TimeoutCase {
    fn new(
        case: &'static str,
        path: &'static str,
        attempts: u32,
        window: (u64, u64),
        expected_timeout: &'static str,
    ) -> TimeoutCase {
        TimeoutCase {
            case,
            path,
            attempts,
            window,
            expected_timeout,
        }
    }
}

#[test]
fn per_try_timeout_and_route_timeout_interplay() -> Result<()> {
    let fx = Fixture::reviews_logged(PREFIX, 87, &["v1"])?;
    let names = ["reviews-v1"];
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
          exact: a
    retries:
      attempts: 2
      perTryTimeout: 1s
    route:
    - destination:
        host: reviews
  - match:
    - headers:
        x-case:
          exact: b
    retries:
      attempts: 2
      perTryTimeout: 1s
      retryOn: 5xx
    route:
    - destination:
        host: reviews
  - match:
    - headers:
        x-case:
          exact: c
    timeout: 3s
    retries:
      attempts: 5
      perTryTimeout: 1s
      retryOn: 5xx
    route:
    - destination:
        host: reviews
  - match:
    - headers:
        x-case:
          exact: d
    timeout: 2s
    retries:
      attempts: 2
      perTryTimeout: 2s
      retryOn: 5xx
    route:
    - destination:
        host: reviews
  - match:
    - headers:
        x-case:
          exact: e
    timeout: 1s
    route:
    - destination:
        host: reviews
",
    )?;
    let _keel = fx.start_keel_strict()?;

    let cases = [
        // (a) per-try timeout, default retryOn: a per-try timeout is a local reset, which the default
        // tokens do not retry -> one attempt, 504 after 1 s.
        TimeoutCase::new("a", "/delay/5000", 1, (900, 1_900), "1000"),
        // (b) + retryOn 5xx, no route timeout: 3 attempts of 1 s.
        TimeoutCase::new("b", "/delay/5000", 3, (2_900, 4_300), "1000"),
        // (c) route timeout 3 s caps 5 retries of 1 s: exactly 3 attempts, 504 at 3 s.
        TimeoutCase::new("c", "/delay/5000", 3, (2_900, 3_900), "1000"),
        // (d) perTryTimeout >= timeout is ignored: one attempt, 504 at 2 s (a global timeout is
        // never retried).
        TimeoutCase::new("d", "/delay/5000", 1, (1_900, 2_900), "2000"),
        // (e) item 16: route timeout 1 s, upstream 3 s: 504 at 1 s, exactly one attempt.
        TimeoutCase::new("e", "/delay/3000", 1, (900, 1_700), "1000"),
    ];
    let mut problems = Vec::new();
    for TimeoutCase {
        case,
        path,
        attempts: n,
        window: (lo, hi),
        expected_timeout,
    } in cases
    {
        let tag = format!("case-{case}");
        let r = fx.get(&reviews(path).header("x-case", case).header("x-req", &tag))?;
        let tries = attempts(&fx, &names, &tag)?;
        let check = || -> Result<()> {
            ensure_local_reply("504", &r, 504, TIMEOUT_BODY)?;
            ensure!(
                (lo..hi).contains(&r.elapsed_ms),
                "answered after {} ms, expected {lo}..{hi} ms",
                r.elapsed_ms
            );
            ensure!(
                r.last_header_value("content-type") == Some("text/plain"),
                "local replies are text/plain: {:?}",
                r.last_headers
            );
            ensure_attempt_counts("attempts", &tries, n)?;
            let first = tries.first().context("no attempt")?;
            ensure!(
                first.header("x-envoy-expected-rq-timeout-ms") == Some(expected_timeout),
                "first attempt's x-envoy-expected-rq-timeout-ms should be {expected_timeout}: {:?}",
                first.header("x-envoy-expected-rq-timeout-ms")
            );
            if n > 1 {
                // Each retry starts when the previous attempt's 1 s per-try timeout fired.
                for w in tries.windows(2) {
                    let gap = w[1].ts_ms.saturating_sub(w[0].ts_ms);
                    ensure!(
                        (900..1_600).contains(&gap),
                        "attempts should be ≈1 s apart (per-try timeout + back-off), got {gap} ms"
                    );
                }
            }
            Ok(())
        };
        if let Err(e) = check() {
            problems.push(format!("case ({case}) {path}: {e:#}"));
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

#[test]
fn retried_requests_resend_the_same_body() -> Result<()> {
    let fx = Fixture::reviews_logged(PREFIX, 88, &["v1"])?;
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
  - retries:
      attempts: 2
      retryOn: 5xx
    route:
    - destination:
        host: reviews
",
    )?;
    let _keel = fx.start_keel_strict()?;

    const SIZE: usize = 20_000;
    let r = fx.get(
        &reviews("/orders/status/503?id=7")
            .method("POST")
            .body_size(SIZE)
            .header("x-req", "post"),
    )?;
    ensure!(
        r.responses == 1 && r.status(503) == 1,
        "the client gets the last attempt's 503: {r:?}"
    );
    let tries = attempts(&fx, &["reviews-v1"], "post")?;
    ensure_attempt_counts("POST with a body, attempts: 2, retryOn: 5xx", &tries, 3)?;
    let want = body_hash(&body_pattern(SIZE));
    for t in &tries {
        ensure!(
            t.method == "POST"
                && t.path == "/orders/status/503?id=7"
                && t.body_len == SIZE as u64
                && t.body_hash == want,
            "every attempt must carry the whole original body ({SIZE} bytes, hash {want}): \
             attempt {:?} had {} {} {} bytes hash {}",
            t.attempt_count(),
            t.method,
            t.path,
            t.body_len,
            t.body_hash
        );
    }
    Ok(())
}

#[test]
fn gateway_error_retries_an_upstream_reset() -> Result<()> {
    let fx = Fixture::reviews_logged(PREFIX, 89, &["v1"])?;
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
          exact: gateway-error
    retries:
      attempts: 2
      retryOn: gateway-error
    route:
    - destination:
        host: reviews
  - route:
    - destination:
        host: reviews
",
    )?;
    let _keel = fx.start_keel_strict()?;

    // The backend resets the connection after reading each request (no response at all).
    let r = fx.get(
        &reviews("/reset")
            .header("x-case", "gateway-error")
            .header("x-req", "gw"),
    )?;
    ensure_local_reply(
        "retried resets",
        &r,
        503,
        "upstream connect error or disconnect/reset before headers. retried and the latest reset \
         reason: connection termination",
    )?;
    ensure_attempt_counts(
        "retryOn gateway-error on a reset",
        &attempts(&fx, &["reviews-v1"], "gw")?,
        3,
    )?;

    // The default tokens (connect-failure, refused-stream, ...) do not cover a reset after connect.
    let d = fx.get(&reviews("/reset").header("x-req", "default"))?;
    ensure_local_reply(
        "default policy on a reset",
        &d,
        503,
        "upstream connect error or disconnect/reset before headers. reset reason: connection \
         termination",
    )?;
    ensure_attempt_counts(
        "default policy on a reset",
        &attempts(&fx, &["reviews-v1"], "default")?,
        1,
    )?;
    Ok(())
}

/// Seed 003 ("HTTP Error 503" and "Retry"): customer -> preference -> recommendation, recommendation's
/// VirtualService aborts 50% with 503 (config/examples/49). The tutorial shows half of the calls failing
/// as `customer => Error: 503 - preference => Error: 503 - fault filter abort`; retries on the caller's
/// route to preference then hide most of them (each attempt is a fresh 50% draw one hop down).
/// Here `sleep` plays customer, and `preference-v1` is an application that calls recommendation.
#[test]
fn seed_fifty_percent_aborts_behind_a_retrying_caller() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 90, &[])?;
    let recommendation = fx.add_simple_service("recommendation", 22, "http", 8080, 8080)?;
    let preference = fx.add_simple_service("preference", 21, "http", 8080, 8080)?;
    for (name, suffix, version) in [
        ("recommendation-v1", 41, "v1"),
        ("recommendation-v2", 42, "v2"),
    ] {
        fx.add_logged_backend(
            name,
            suffix,
            8080,
            version,
            &[("app", "recommendation"), ("version", version)],
            HttpServerOpts::default(),
        )?;
    }
    fx.add_logged_backend(
        "preference-v1",
        31,
        8080,
        "v1",
        &[("app", "preference"), ("version", "v1")],
        HttpServerOpts {
            call: Some(("http://recommendation:8080/".to_string(), recommendation)),
            ..HttpServerOpts::default()
        },
    )?;
    fx.config.write(
        "recommendation.yaml",
        "\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: recommendation-abort
  namespace: default
spec:
  hosts:
  - recommendation
  http:
  - route:
    - destination:
        host: recommendation
    fault:
      abort:
        httpStatus: 503
        percentage:
          value: 50
",
    )?;
    fx.config.write(
        "preference.yaml",
        "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: preference
  namespace: default
spec:
  hosts:
  - preference
  http:
  - match:
    - headers:
        x-case:
          exact: retry
    retries:
      attempts: 3
      retryOn: 5xx
    route:
    - destination:
        host: preference
  - route:
    - destination:
        host: preference
",
    )?;
    let _keel = fx.start_keel_strict()?;
    const N: u32 = 300;
    let abort_body = "preference-v1 => Error: 503 - fault filter abort";
    let recommendation_seen = |fx: &Fixture| -> Result<usize> {
        Ok(fx.log("recommendation-v1")?.read()?.len() + fx.log("recommendation-v2")?.read()?.len())
    };
    let customer = || HttpGet::new("http://preference:8080/").connect_to(preference);

    // No retries for 503 on the caller's route (the default policy): about half fail.
    let plain = fx.get(&customer().count(N))?;
    let failed = plain.with_body(503, abort_body);
    ensure!(
        plain.errors == 0 && failed + plain.status(200) == u64::from(N),
        "each call either succeeds or shows recommendation's abort through preference: {:?} {:?}",
        plain.by_status,
        plain
            .other_bodies
            .iter()
            .filter(|(k, _)| k.starts_with("503"))
            .collect::<Vec<_>>()
    );
    ensure_binomial(
        "calls failing with the 50% abort",
        failed,
        u64::from(N),
        0.5,
    )?;
    let pref_plain = fx.log("preference-v1")?.read()?;
    ensure!(
        pref_plain.len() == N as usize,
        "without retries preference is called once per request: {}",
        pref_plain.len()
    );
    let rec_plain = recommendation_seen(&fx)?;
    ensure!(
        rec_plain as u64 == plain.status(200),
        "aborted calls never reach recommendation: it saw {rec_plain}, {} calls succeeded",
        plain.status(200)
    );

    // retries {attempts: 3, retryOn: 5xx} on the caller's route: a call fails only if 4 fresh draws
    // all abort (1/16).
    let retried = fx.get(&customer().header("x-case", "retry").count(N))?;
    let still_failed = retried.with_body(503, abort_body);
    ensure!(
        retried.errors == 0 && still_failed + retried.status(200) == u64::from(N),
        "{:?}",
        retried.by_status
    );
    ensure_binomial(
        "calls still failing after 3 retries",
        still_failed,
        u64::from(N),
        1.0 / 16.0,
    )?;
    let pref_all = fx.log("preference-v1")?.read()?;
    let pref_retry: Vec<&RequestRecord> = with_header(&pref_all, "x-case", "retry");
    let count_attempt = |k: u32| {
        pref_retry
            .iter()
            .filter(|r| r.attempt_count() == Some(k))
            .count()
    };
    ensure!(
        count_attempt(1) == N as usize
            && count_attempt(2) <= count_attempt(1)
            && count_attempt(3) <= count_attempt(2)
            && count_attempt(4) <= count_attempt(3)
            && count_attempt(4) as u64 >= still_failed
            && pref_retry.len() == (1..=4).map(count_attempt).sum::<usize>(),
        "preference attempts by x-envoy-attempt-count 1..4: {:?} ({} failures)",
        (1..=4).map(count_attempt).collect::<Vec<_>>(),
        still_failed
    );
    let rec_retry = recommendation_seen(&fx)? - rec_plain;
    ensure!(
        rec_retry as u64 == retried.status(200),
        "each successful call reached recommendation exactly once: {rec_retry} vs {}",
        retried.status(200)
    );
    Ok(())
}

#[test]
fn grpc_unavailable_in_headers_is_retried_by_default() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 91, &[])?;
    fx.add_grpc_backend(
        "greeter-v1",
        31,
        9090,
        "v1",
        &[("app", "greeter"), ("version", "v1")],
        GrpcServerOpts {
            grpc_status: 14,
            grpc_message: Some("try again".to_string()),
            trailers_only: true,
            ..GrpcServerOpts::default()
        },
    )?;
    let greeter = fx.add_simple_service("greeter", 30, "grpc", 9090, 9090)?;
    let _keel = fx.start_keel_strict()?;
    let names = ["greeter-v1"];
    let call = |tag: &str| {
        GrpcCall::new("http://greeter:9090/keel.test.Echo/Call", greeter).header("x-req", tag)
    };

    // Trailers-only UNAVAILABLE (status in the headers): the default `unavailable` token retries it.
    let r = fx.agent.grpc_call(&fx.sleep, &call("unavailable"))?;
    let c = r.calls.first().context("no call")?;
    ensure!(
        c.error.is_none()
            && c.http_status == 200
            && c.grpc_status == Some(14)
            && c.grpc_message.as_deref() == Some("try again"),
        "after the retries the client sees the server's own UNAVAILABLE: {c:?}"
    );
    ensure_attempt_counts(
        "default policy, grpc-status 14 in headers",
        &attempts(&fx, &names, "unavailable")?,
        3,
    )?;

    // NOT_FOUND is not among the default tokens.
    let r = fx.agent.grpc_call(
        &fx.sleep,
        &call("not-found").header("x-test-grpc-status", "5"),
    )?;
    let c = r.calls.first().context("no call")?;
    ensure!(c.grpc_status == Some(5), "{c:?}");
    ensure_attempt_counts(
        "default policy, grpc-status 5",
        &attempts(&fx, &names, "not-found")?,
        1,
    )?;

    // UNAVAILABLE sent in trailers after a message is never retried (the response has started).
    let r = fx.agent.grpc_call(
        &fx.sleep,
        &call("in-trailers").header("x-test-trailers-only", "0"),
    )?;
    let c = r.calls.first().context("no call")?;
    ensure!(
        c.grpc_status == Some(14) && c.status_from == "trailers" && c.messages == 1,
        "{c:?}"
    );
    ensure_attempt_counts(
        "default policy, grpc-status 14 in trailers",
        &attempts(&fx, &names, "in-trailers")?,
        1,
    )?;
    Ok(())
}
