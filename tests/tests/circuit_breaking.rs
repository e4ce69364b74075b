//! DestinationRule `connectionPool`: circuit breaking and connection limits (istio-semantics §2.3,
//! §1.17, §4.2, Appendix A.2), with Envoy's reply, flag and counters, kept per client pod as each
//! pod's sidecar keeps them. The backends log every request they receive (with the proxy's peer
//! address and port), so what reached them is counted, not inferred; the proxy's side is read from
//! the admin API's `cluster.<name>.<stat>` lines.
//!
//! Subnet indices 145..=154 belong to this file (154: node-wide state; 151: idle connections).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::{reviews_vip, Fixture, REVIEWS_FQDN};
use keel_tests::{ConnectOutcome, HttpGet, HttpGetReport, HttpServerOpts, Keel};

const PREFIX: &str = "ktcb";
/// Envoy's circuit-breaker reply body (§1.17).
const OVERFLOW_BODY: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: overflow";
/// The reviews cluster's Envoy name.
fn reviews_cluster() -> String {
    format!("outbound|9080||{REVIEWS_FQDN}")
}

/// The seeds' circuit breaker (Istio's circuit-breaking task): one connection, one pending request,
/// no keep-alive.
const SEED_BREAKER: &str = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: default
spec:
  host: reviews
  trafficPolicy:
    connectionPool:
      tcp:
        maxConnections: 1
      http:
        http1MaxPendingRequests: 1
        maxRequestsPerConnection: 1
";

/// A DestinationRule for `host` with `pool` (YAML lines under `connectionPool:`, 6-space indented).
fn pool_rule(name: &str, host: &str, pool: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: {name}\n  \
         namespace: default\nspec:\n  host: {host}\n  trafficPolicy:\n    connectionPool:\n{pool}"
    )
}

/// `cluster.<cluster>.<stat>` from the admin API's Envoy-style stats.
fn cluster_stat(keel: &Keel, cluster: &str, stat: &str) -> Result<u64> {
    let resp = keel_tests::http::get(
        keel.options().admin_addr,
        "/stats?format=text",
        Duration::from_secs(5),
    )?;
    ensure!(
        resp.status == 200,
        "/stats?format=text answered {}",
        resp.status
    );
    let text = resp.text();
    let key = format!("cluster.{cluster}.{stat}: ");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .with_context(|| format!("no {key} line in:\n{text}"))?;
    line.trim().parse().context("stat value")
}

/// A backend that waits `delay_ms` before answering.
fn slow(delay_ms: u64) -> HttpServerOpts {
    HttpServerOpts {
        delay_ms: Some(delay_ms),
        ..HttpServerOpts::default()
    }
}

/// `count` GETs of reviews over `concurrency` keep-alive connections (fortio's `-c` and `-n`).
fn fortio(concurrency: u32, count: u32) -> HttpGet {
    HttpGet::new("http://reviews:9080/")
        .connect_to(reviews_vip())
        .count(count)
        .concurrency(concurrency)
        .timeout(Duration::from_secs(60))
}

/// Every answer is a 200 from the backend or Envoy's overflow reply (503, exact body,
/// `x-envoy-overloaded: true`); returns the number of overflows.
fn ensure_ok_or_overflow(what: &str, r: &HttpGetReport) -> Result<u64> {
    let ok = r.status(200);
    let overflow = r.with_body(503, OVERFLOW_BODY);
    ensure!(
        r.errors == 0 && !r.timed_out && r.responses == r.requested && ok + overflow == r.requested,
        "{what}: expected only 200s and 503 overflow replies, got {:?} {:?} (errors {}, first {:?})",
        r.by_status,
        r.other_bodies,
        r.errors,
        r.first_error
    );
    let marked = r
        .header_presence
        .get("x-envoy-overloaded")
        .copied()
        .unwrap_or(0);
    ensure!(
        marked == overflow,
        "{what}: {overflow} overflow replies but {marked} carry x-envoy-overloaded"
    );
    if overflow > 0 {
        ensure!(
            r.last_status != 503 || r.last_header_value("x-envoy-overloaded") == Some("true"),
            "{what}: x-envoy-overloaded should be `true`: {:?}",
            r.last_headers
        );
    }
    Ok(overflow)
}

/// The seeds' tutorial: fortio with 2 and then 3 concurrent connections against `maxConnections: 1`,
/// `http1MaxPendingRequests: 1`, `maxRequestsPerConnection: 1`. Some requests overflow; every 503
/// is Envoy's overflow reply and is counted in `upstream_rq_pending_overflow`; every 200 reached the
/// backend, each on a connection of its own.
#[test]
fn seed_circuit_breaker_overflows_and_the_counters_match() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 145, &[])?;
    fx.add_logged_backend(
        "reviews-v1",
        11,
        9080,
        "v1",
        &[("app", "reviews"), ("version", "v1")],
        slow(100),
    )?;
    fx.config.write("destinationrule.yaml", SEED_BREAKER)?;
    let keel = fx.start_keel_strict()?;
    let cluster = reviews_cluster();
    let log = fx.log("reviews-v1")?;

    let mut overflowed_at_3 = 0;
    let mut upstream_seen = 0;
    for (concurrency, count) in [(2, 20), (3, 30)] {
        let before = cluster_stat(&keel, &cluster, "upstream_rq_pending_overflow")?;
        let r = fx.get(&fortio(concurrency, count))?;
        let what = format!("-c {concurrency} -n {count}");
        let overflow = ensure_ok_or_overflow(&what, &r)?;
        let after = cluster_stat(&keel, &cluster, "upstream_rq_pending_overflow")?;
        ensure!(
            after - before == overflow,
            "{what}: {overflow} overflow replies, upstream_rq_pending_overflow moved by {}",
            after - before
        );
        eprintln!(
            "{what}: {} x 200, {overflow} x 503 overflow, upstream_rq_pending_overflow +{}",
            r.status(200),
            after - before
        );
        upstream_seen += r.status(200);
        let records = log.settle(Duration::from_millis(300), Duration::from_secs(5))?;
        ensure!(
            records.len() as u64 == upstream_seen,
            "{what}: the backend saw {} requests, the client got {upstream_seen} 200s in total",
            records.len()
        );
        if concurrency == 3 {
            overflowed_at_3 = overflow;
        }
    }
    ensure!(
        overflowed_at_3 > 0,
        "3 concurrent connections against 1 connection + 1 pending request must overflow"
    );
    // maxRequestsPerConnection: 1: a new upstream connection (peer port) per request.
    let records = log.read()?;
    let ports: BTreeSet<&str> = records.iter().map(|r| r.peer.as_str()).collect();
    ensure!(
        ports.len() == records.len(),
        "{} requests arrived on {} connections",
        records.len(),
        ports.len()
    );
    ensure!(cluster_stat(&keel, &cluster, "upstream_cx_max_requests")? == upstream_seen);
    ensure!(cluster_stat(&keel, &cluster, "upstream_cx_overflow")? > 0);
    ensure!(cluster_stat(&keel, &cluster, "upstream_cx_total")? == upstream_seen);
    // Nothing is left open or queued once the load is over.
    common::wait_until("connections closed", Duration::from_secs(5), || {
        Ok(cluster_stat(&keel, &cluster, "upstream_cx_active")? == 0
            && cluster_stat(&keel, &cluster, "upstream_rq_pending_active")? == 0
            && cluster_stat(&keel, &cluster, "upstream_rq_active")? == 0)
    })?;
    Ok(())
}

/// Breakers are per client pod: while one pod saturates the breaker, another pod's sequential
/// requests all succeed (a node-wide breaker would refuse some of them).
#[test]
fn one_pod_saturating_the_breaker_leaves_another_pod_alone() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 146, &[])?;
    fx.add_logged_backend(
        "reviews-v1",
        11,
        9080,
        "v1",
        &[("app", "reviews"), ("version", "v1")],
        slow(200),
    )?;
    let other = fx.add_pod("other", 3, &[("app", "other")], &[], false)?;
    fx.config.write("destinationrule.yaml", SEED_BREAKER)?;
    let keel = fx.start_keel_strict()?;

    // `sleep` saturates: 4 connections, 40 requests, in the background.
    let load = fortio(4, 40);
    let args = load.to_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut noisy = fx.sleep.spawn(fx.agent.bin(), &args, "noisy")?;
    std::thread::sleep(Duration::from_millis(300));
    let quiet = fx.agent.http_get(
        &other,
        &HttpGet::new("http://reviews:9080/")
            .connect_to(reviews_vip())
            .count(5),
    )?;
    let status = noisy.wait_or_kill(Duration::from_secs(70))?;
    ensure!(
        status.success(),
        "the noisy client failed: {}",
        noisy.stderr_tail()
    );
    let stdout = noisy.stdout();
    let noisy_report: HttpGetReport = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("no report from the noisy client:\n{stdout}"))?;
    let noisy_overflow = ensure_ok_or_overflow("noisy pod", &noisy_report)?;
    ensure!(
        noisy_overflow > 0,
        "the noisy pod should trip its own breaker: {:?}",
        noisy_report.by_status
    );
    // The quiet pod overlapped the noisy pod's load and was never refused.
    ensure!(
        quiet.status(200) == 5 && quiet.responses == 5,
        "the quiet pod must get only 200s: {:?} {:?}",
        quiet.by_status,
        quiet.other_bodies
    );
    ensure!(
        cluster_stat(&keel, &reviews_cluster(), "upstream_rq_pending_overflow")? == noisy_overflow,
        "only the noisy pod's requests overflowed"
    );
    Ok(())
}

/// `keel run --upstream-state node` shares one breaker per cluster among all pods of the node (the
/// documented opt-out of per-client state): while one pod saturates it, another pod's requests
/// overflow too.
#[test]
fn node_wide_state_shares_the_breaker_between_pods() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 154, &[])?;
    fx.add_logged_backend(
        "reviews-v1",
        11,
        9080,
        "v1",
        &[("app", "reviews"), ("version", "v1")],
        slow(2000),
    )?;
    let other = fx.add_pod("other", 3, &[("app", "other")], &[], false)?;
    fx.config.write("destinationrule.yaml", SEED_BREAKER)?;
    let out = keel_tests::keel::validate(fx.config.path())?;
    ensure!(out.code == Some(0), "{}", out.combined());
    let mut opts = keel_tests::KeelOptions::new(&fx.net, fx.config.path())?;
    opts.extra_args = vec!["--upstream-state".into(), "node".into()];
    let keel = Keel::start_with(&fx.net, opts)?;

    // `sleep` fills the breaker for about 2 s: one request in flight, then one pending.
    let wait_for = |stat: &str| -> Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while cluster_stat(&keel, &reviews_cluster(), stat)? < 1 {
            ensure!(std::time::Instant::now() < deadline, "{stat} never rose");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    };
    let one = fortio(1, 1);
    let args = one.to_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut first = fx.sleep.spawn(fx.agent.bin(), &args, "first")?;
    wait_for("upstream_rq_active")?;
    let mut second = fx.sleep.spawn(fx.agent.bin(), &args, "second")?;
    wait_for("upstream_rq_pending_active")?;
    // One request from another pod meets the same full breaker.
    let quiet = fx.agent.http_get(
        &other,
        &HttpGet::new("http://reviews:9080/")
            .connect_to(reviews_vip())
            .count(1),
    )?;
    for (name, noisy) in [("first", &mut first), ("second", &mut second)] {
        let status = noisy.wait_or_kill(Duration::from_secs(30))?;
        ensure!(
            status.success(),
            "the {name} client failed: {}",
            noisy.stderr_tail()
        );
    }
    ensure!(
        ensure_ok_or_overflow("quiet pod", &quiet)? == 1,
        "with node-wide state the other pod shares the full breaker: {:?}",
        quiet.by_status
    );
    ensure!(
        cluster_stat(&keel, &reviews_cluster(), "upstream_rq_pending_overflow")? == 1,
        "the shared breaker counted the other pod's overflow"
    );
    Ok(())
}

/// `http2MaxRequests` bounds the requests in flight (for HTTP/1.1 too); over it, 503 `UO` at once.
#[test]
fn http2_max_requests_bounds_requests_in_flight() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 147, &[])?;
    fx.add_logged_backend(
        "reviews-v1",
        11,
        9080,
        "v1",
        &[("app", "reviews"), ("version", "v1")],
        slow(200),
    )?;
    fx.config.write(
        "destinationrule.yaml",
        &pool_rule(
            "reviews",
            "reviews",
            "      http:\n        http2MaxRequests: 1\n",
        ),
    )?;
    let keel = fx.start_keel_strict()?;
    let r = fx.get(&fortio(3, 15))?;
    let overflow = ensure_ok_or_overflow("http2MaxRequests: 1", &r)?;
    ensure!(
        overflow > 0,
        "3 concurrent clients against 1 request must overflow"
    );
    ensure!(cluster_stat(&keel, &reviews_cluster(), "upstream_rq_pending_overflow")? == overflow);
    let records = fx
        .log("reviews-v1")?
        .settle(Duration::from_millis(300), Duration::from_secs(5))?;
    ensure!(
        records.len() as u64 == r.status(200),
        "backend saw {}, client got {} 200s",
        records.len(),
        r.status(200)
    );
    // Never more than one request at the backend at a time: each arrived after the previous one
    // was answered (200 ms each).
    let mut ts: Vec<u64> = records.iter().map(|r| r.ts_ms).collect();
    ts.sort_unstable();
    ensure!(
        ts.windows(2).all(|w| w[1] - w[0] >= 190),
        "requests overlapped at the backend: {ts:?}"
    );
    Ok(())
}

/// TCP `maxConnections`: a second concurrent connection from the same pod is closed at once; after
/// the first one ends, a new one works.
#[test]
fn tcp_max_connections_closes_the_connection_over_the_limit() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 148, &[])?;
    let db = fx.add_pod_in("default", "db", 21, &[("app", "db")])?;
    fx.servers.push(fx.agent.tcp_echo_server(&db, 5432)?);
    let vip = fx.add_simple_service("db", 30, "tcp", 5432, 5432)?;
    fx.config.write(
        "destinationrule.yaml",
        &pool_rule("db", "db", "      tcp:\n        maxConnections: 1\n"),
    )?;
    let keel = fx.start_keel_strict()?;
    let cluster = "outbound|5432||db.default.svc.cluster.local";

    // The first connection stays open (silent for 4 s).
    let vip_s = vip.to_string();
    let mut holder = fx.sleep.spawn(
        fx.agent.bin(),
        &["tcp-connect", "--addr", &vip_s, "--read-timeout-ms", "4000"],
        "holder",
    )?;
    common::wait_until("the first connection is up", Duration::from_secs(3), || {
        Ok(cluster_stat(&keel, cluster, "upstream_cx_active")? == 1)
    })?;
    let second = fx.agent.tcp_connect(&fx.sleep, vip, Some("hello"))?;
    ensure!(
        matches!(second.outcome, ConnectOutcome::Eof | ConnectOutcome::Reset),
        "the connection over maxConnections should be closed at once: {second:?}"
    );
    ensure!(cluster_stat(&keel, cluster, "upstream_cx_overflow")? == 1);
    ensure!(cluster_stat(&keel, cluster, "upstream_cx_total")? == 1);
    let status = holder.wait_or_kill(Duration::from_secs(10))?;
    ensure!(status.success(), "holder: {}", holder.stderr_tail());
    common::wait_until(
        "the first connection closed",
        Duration::from_secs(3),
        || Ok(cluster_stat(&keel, cluster, "upstream_cx_active")? == 0),
    )?;
    let third = fx.agent.tcp_connect(&fx.sleep, vip, Some("hello"))?;
    ensure!(
        third.outcome == ConnectOutcome::Data && third.data == "hello",
        "after the first connection ended a new one is relayed: {third:?}"
    );
    Ok(())
}

/// `maxRetries`: concurrent retries beyond the limit are not attempted
/// (`upstream_rq_retry_overflow`); the backend sees one attempt per request plus the retries that
/// were allowed, exactly.
#[test]
fn max_retries_overflow_skips_the_retry() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 149, &[])?;
    fx.add_logged_backend(
        "reviews-v1",
        11,
        9080,
        "v1",
        &[("app", "reviews"), ("version", "v1")],
        HttpServerOpts {
            fail_status: Some(503),
            delay_ms: Some(300),
            ..HttpServerOpts::default()
        },
    )?;
    fx.config.write(
        "destinationrule.yaml",
        &pool_rule("reviews", "reviews", "      http:\n        maxRetries: 1\n"),
    )?;
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
      attempts: 1
      retryOn: 5xx
    route:
    - destination:
        host: reviews
",
    )?;
    let keel = fx.start_keel_strict()?;
    let requests = 3;
    let r = fx.get(&fortio(3, requests))?;
    ensure!(
        r.status(503) == u64::from(requests),
        "every request ends with the backend's 503: {:?}",
        r.by_status
    );
    let overflow = cluster_stat(&keel, &reviews_cluster(), "upstream_rq_retry_overflow")?;
    ensure!(
        overflow >= 1 && overflow < u64::from(requests),
        "3 simultaneous retries against maxRetries: 1: {overflow} overflowed"
    );
    let records = fx
        .log("reviews-v1")?
        .settle(Duration::from_millis(500), Duration::from_secs(5))?;
    let retried = u64::from(requests) - overflow;
    ensure!(
        records.len() as u64 == u64::from(requests) + retried,
        "backend saw {} attempts; {requests} requests, {retried} retries allowed",
        records.len()
    );
    let second_attempts = records
        .iter()
        .filter(|r| r.attempt_count() == Some(2))
        .count() as u64;
    ensure!(
        second_attempts == retried,
        "{second_attempts} second attempts"
    );
    Ok(())
}

/// `maxRequestsPerConnection: 1` disables keep-alive upstream: a new connection per request, while
/// a cluster without it reuses one connection for sequential requests.
#[test]
fn max_requests_per_connection_one_opens_a_connection_per_request() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 150, &[])?;
    fx.add_logged_backend(
        "reviews-v1",
        11,
        9080,
        "v1",
        &[("app", "reviews"), ("version", "v1")],
        HttpServerOpts::default(),
    )?;
    fx.add_logged_backend(
        "ratings-v1",
        12,
        9080,
        "v1",
        &[("app", "ratings"), ("version", "v1")],
        HttpServerOpts::default(),
    )?;
    let ratings = fx.add_simple_service("ratings", 31, "http", 9080, 9080)?;
    fx.config.write(
        "destinationrule.yaml",
        &pool_rule(
            "reviews",
            "reviews",
            "      http:\n        maxRequestsPerConnection: 1\n",
        ),
    )?;
    let keel = fx.start_keel_strict()?;
    let r = fx.get_reviews(6)?;
    common::ensure_all_ok_via_proxy(&r, &fx.net)?;
    let r = fx.get_from(&fx.sleep, "http://ratings:9080/", ratings, 6)?;
    common::ensure_all_ok_via_proxy(&r, &fx.net)?;

    let ports = |name: &str| -> Result<(usize, usize)> {
        let records = fx.log(name)?.wait_for(6, Duration::from_secs(5))?;
        let ports: BTreeSet<String> = records.iter().map(|r| r.peer.clone()).collect();
        Ok((records.len(), ports.len()))
    };
    let (n, conns) = ports("reviews-v1")?;
    ensure!(
        n == 6 && conns == 6,
        "maxRequestsPerConnection: 1: {n} requests on {conns} connections"
    );
    let (n, conns) = ports("ratings-v1")?;
    ensure!(
        n == 6 && conns == 1,
        "keep-alive: {n} requests on {conns} connections"
    );
    ensure!(cluster_stat(&keel, &reviews_cluster(), "upstream_cx_max_requests")? == 6);
    ensure!(cluster_stat(&keel, &reviews_cluster(), "upstream_cx_total")? == 6);
    ensure!(
        cluster_stat(
            &keel,
            "outbound|9080||ratings.default.svc.cluster.local",
            "upstream_cx_total"
        )? == 1
    );
    Ok(())
}

/// An idle upstream connection outlives keel's parking of it (idle HTTP/1.1 connections keep only
/// their socket after 250 ms): a request after a pause reuses the same connection, and
/// `connectionPool.http.idleTimeout` still closes it on time, counted as Envoy counts it.
#[test]
fn idle_connections_are_reused_after_a_pause_and_close_at_the_idle_timeout() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 151, &[])?;
    fx.add_logged_backend(
        "reviews-v1",
        11,
        9080,
        "v1",
        &[("app", "reviews"), ("version", "v1")],
        HttpServerOpts::default(),
    )?;
    fx.config.write(
        "destinationrule.yaml",
        &pool_rule(
            "reviews",
            "reviews",
            "      http:\n        idleTimeout: 4s\n",
        ),
    )?;
    let keel = fx.start_keel_strict()?;
    let cluster = reviews_cluster();
    let connections = |expected: usize| -> Result<(usize, usize)> {
        let records = fx
            .log("reviews-v1")?
            .wait_for(expected, Duration::from_secs(5))?;
        let ports: BTreeSet<String> = records.iter().map(|r| r.peer.clone()).collect();
        Ok((records.len(), ports.len()))
    };

    // Two requests 2 s apart (the connection parks after 250 ms): one upstream connection.
    common::ensure_all_ok_via_proxy(&fx.get_reviews(1)?, &fx.net)?;
    std::thread::sleep(Duration::from_secs(2));
    common::ensure_all_ok_via_proxy(&fx.get_reviews(1)?, &fx.net)?;
    let (n, conns) = connections(2)?;
    ensure!(
        n == 2 && conns == 1,
        "two requests 2 s apart: {n} requests on {conns} connections"
    );
    ensure!(cluster_stat(&keel, &cluster, "upstream_cx_total")? == 1);
    ensure!(cluster_stat(&keel, &cluster, "upstream_cx_active")? == 1);
    ensure!(cluster_stat(&keel, &cluster, "upstream_cx_idle_timeout")? == 0);

    // 4 s after the second request the idle timeout closes it; the next request dials anew.
    common::wait_until("idle timeout", Duration::from_secs(8), || {
        Ok(cluster_stat(&keel, &cluster, "upstream_cx_idle_timeout")? == 1)
    })?;
    ensure!(cluster_stat(&keel, &cluster, "upstream_cx_active")? == 0);
    common::ensure_all_ok_via_proxy(&fx.get_reviews(1)?, &fx.net)?;
    let (n, conns) = connections(3)?;
    ensure!(
        n == 3 && conns == 2,
        "after the idle timeout: {n} requests on {conns} connections"
    );
    ensure!(cluster_stat(&keel, &cluster, "upstream_cx_total")? == 2);
    Ok(())
}
