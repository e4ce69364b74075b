//! reliability-tests.md G1–G5, "VirtualService/DestinationRule semantics under faults": the figures
//! the functional tests do not measure. Every count is read at the backends (their request logs, and
//! for G2 their log of requests the proxy cancelled) or from the client's statuses; timings are the
//! client's own. Each test records its figures (`keel_tests::figures`); `KEEL_CHAOS=full` runs the
//! larger sizes.
//!
//! Covered by the functional tests and not repeated here:
//! - retries: `retries.rs` (attempt counts per `retryOn`, previous hosts avoided, per-try and route
//!   timeout interplay with `x-envoy-expected-rq-timeout-ms`, a retried body resent whole), and
//!   `circuit_breaking.rs` `max_retries_overflow_skips_the_retry` (`maxRetries` exactly);
//! - faults: `faults.rs` (abort replies, percentages at ±5σ, delays before the route timeout);
//! - weights: `routing.rs` (10/10/80 and 25/75 at ±3 points over 2,000 requests);
//! - mirrors: `mirroring.rs` (copies with the shadow Host, a slow, dead or failing mirror never
//!   slows the primary, percentages at ±5σ);
//! - breakers: `circuit_breaking.rs` (overflow replies and counters, `http2MaxRequests`, TCP
//!   `maxConnections`, per-pod breakers);
//! - outlier detection: `outlier.rs` — `a_failing_endpoint_is_ejected_for_base_then_twice_then_three_times`
//!   (ejection for baseEjectionTime × n, and the host restored after each), `no_block_no_ejection_and_the_default_is_five_errors`
//!   (Envoy's default of 5 consecutive 5xx), `max_ejection_percent_keeps_the_second_failing_endpoint`,
//!   `all_ejected_without_panic_is_no_healthy_upstream`, `panic_threshold_uses_every_endpoint`.
//!
//! Added here:
//! - G1: attempts 3 + perTryTimeout against endpoints that fail 2 of 3 ways (503, too slow): every
//!   request succeeds in at most 3 attempts; Keel's retry buffer is 1 MiB (Envoy's default
//!   `per_connection_buffer_limit_bytes`, not the reference's 64 KiB): a body of exactly 1 MiB is
//!   retried, one byte more is sent once and never again (`retry_or_shadow_abandoned`), and large
//!   bodies in flight cost bounded memory; with 100 % failure the upstream load is (1 + attempts) ×
//!   offered under Istio's defaults (no budget: `maxRetries` 2^32−1) and at most offered / (1 − 20 %)
//!   under Envoy's default retry budget (20 % of active requests, at least 3).
//! - G2: route and per-try timeouts answer within ±50 ms (95 % of 50 requests a case, 200 at full
//!   size; the rest, machine stalls, within +250 ms), and the backend sees each timed-out attempt
//!   cancelled (HTTP/1.1 connection closed, HTTP/2 stream reset) within the same bounds.
//! - G3: 50/50, 80/20 and 50/25/25 weights and 30 % abort / 20 % delay within ±3 points, faults only
//!   on the matching route. ±3 points over 1,000 requests is about 2σ (a correct random split
//!   fails it 1 time in 20 per share), so the test draws 4,000 (smoke) or 10,000 (full) per split.
//! - G4: primary p99 with a slow and with a dead mirror vs none (same run, interleaved), a retried
//!   request mirrored exactly once, `mirrorPercentage` within ±3 points, the `-shadow` Host, and
//!   mirrors over their bounds dropped, not queued: Keel's 256 mirrors in flight per mirror cluster
//!   (1,024 per proxy) and the mirror cluster's own circuit breakers (as Envoy's shadows go through
//!   them), memory bounded; a saturated slow mirror leaves another mirror target its copies (with
//!   the earlier single 512-per-proxy budget it took them all).
//! - G5: breaker overflows (pending, requests, TCP connections) answered in under 10 ms (p99; TCP
//!   p90 of its fewer samples; none over 50 ms); endpoint
//!   churn (20 % of the endpoints out and back every 2 s, EndpointSlices in the config dir) under
//!   ~1,000 rps: < 0.1 % errors and no request reaching a removed endpoint 1 s after its removal.
//!
//! Subnet indices 223..=229 belong to this file.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::{reviews_vip, vip, with_header, Fixture};
use keel_tests::config::service_yaml;
use keel_tests::figures::{self, sized};
use keel_tests::{
    body_hash, body_pattern, HttpGet, HttpGetReport, HttpServerOpts, Keel, RequestLog,
    RequestRecord, SvcPort,
};

const PREFIX: &str = "ktuf";
/// Keel's retry and mirror buffer (`l7::body::RETRY_BUFFER_LIMIT`), Envoy's default
/// `per_connection_buffer_limit_bytes`.
const RETRY_BUFFER: usize = 1 << 20;
/// Envoy's route / per-try timeout reply.
const TIMEOUT_BODY: &str = "upstream request timeout";
/// Envoy's circuit-breaker reply.
const OVERFLOW_BODY: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: overflow";
/// Envoy's fault filter reply.
const ABORT_BODY: &str = "fault filter abort";
/// The header `http-get --tag` puts on each request.
const TAG: &str = "x-keel-test-tag";

fn reviews(path: &str) -> HttpGet {
    HttpGet::new(format!("http://reviews:9080{path}")).connect_to(reviews_vip())
}

/// keel's resident memory (KiB), from /proc.
fn rss_kib(keel: &Keel) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", keel.pid()))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/<pid>/status")
}

/// A `keel.*` counter of `/stats`.
fn keel_stat(keel: &Keel, name: &str) -> Result<u64> {
    let stats = keel.stats()?;
    stats
        .get(name)
        .and_then(serde_json::Value::as_u64)
        .with_context(|| format!("no {name} in /stats: {stats}"))
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

/// The `q` quantile of `values` (nearest rank).
fn quantile(values: &[u64], q: f64) -> u64 {
    let mut v = values.to_vec();
    v.sort_unstable();
    if v.is_empty() {
        return 0;
    }
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Fails unless `got` of `n` is within ±3 percentage points of `want_percent`; returns the share.
fn ensure_three_points(what: &str, got: u64, n: u64, want_percent: f64) -> Result<f64> {
    let share = common::percent(got, n);
    ensure!(
        (share - want_percent).abs() <= 3.0,
        "{what}: {got} of {n} = {share:.2} %, expected {want_percent} % ± 3 points"
    );
    Ok(share)
}

/// Records of `log` grouped by their `x-keel-test-tag`, each group in `x-envoy-attempt-count` order.
fn by_tag(records: Vec<RequestRecord>) -> BTreeMap<String, Vec<RequestRecord>> {
    let mut out: BTreeMap<String, Vec<RequestRecord>> = BTreeMap::new();
    for r in records {
        if let Some(tag) = r.header(TAG) {
            out.entry(tag.to_string()).or_default().push(r);
        }
    }
    for v in out.values_mut() {
        v.sort_by_key(|r| (r.attempt_count().unwrap_or(0), r.ts_ms));
    }
    out
}

/// Every record of the logged backends `names`.
fn all_records(fx: &Fixture, names: &[&str]) -> Result<Vec<RequestRecord>> {
    let mut all = Vec::new();
    for n in names {
        all.extend(fx.log(n)?.read()?);
    }
    Ok(all)
}

/// Service `ratings` (10.96.0.30:9080, port named `port_name`) selecting the reviews pods: the same
/// backends under a second host, with its own cluster and breakers. Returns its VIP.
fn ratings_on_reviews_pods(fx: &mut Fixture, port_name: &str) -> Result<SocketAddr> {
    fx.add_service(service_yaml(
        "ratings",
        "default",
        Ipv4Addr::new(10, 96, 0, 30),
        &[SvcPort {
            name: port_name,
            port: 9080,
            target_port: 9080,
        }],
        &[("app", "reviews")],
    ))?;
    Ok(vip(30, 9080))
}

/// A VirtualService for `host` with the given `http:` rules (YAML, 2-space indented list items).
fn virtual_service(name: &str, host: &str, rules: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {name}\n  \
         namespace: default\nspec:\n  hosts:\n  - {host}\n  http:\n{rules}"
    )
}

/// A rule matching header `x-case: <case>` with `body` (YAML lines at 4 spaces) and a route to
/// `host` (subset `subset` when given).
fn case_rule(case: &str, body: &str, host: &str, subset: Option<&str>) -> String {
    let subset = subset.map_or(String::new(), |s| format!("        subset: {s}\n"));
    format!(
        "  - match:\n    - headers:\n        x-case:\n          exact: \"{case}\"\n{body}    route:\n    \
         - destination:\n        host: {host}\n{subset}"
    )
}

// ------------------------------------------------------------------------------------------------
// G1

/// G1: retries that succeed, stay within their budget, and never replay (or hold) a body over the
/// retry buffer.
#[test]
fn chaos_g1_retries_succeed_stay_in_budget_and_never_replay_large_bodies() -> Result<()> {
    let scenario = "G1 bounded, replay-safe retries";
    let mut fx = Fixture::reviews(PREFIX, 223, &[])?;
    // reviews: v1 answers 503, v2 answers after 1 s (past the 200 ms per-try timeout), v3 answers.
    let backends = [
        ("v1", Some(503), None),
        ("v2", None, Some(1_000)),
        ("v3", None, None),
    ];
    for (i, (v, fail_status, delay_ms)) in backends.into_iter().enumerate() {
        fx.add_logged_backend(
            &format!("reviews-{v}"),
            11 + i as u8,
            9080,
            v,
            &[("app", "reviews"), ("version", v)],
            HttpServerOpts {
                fail_status,
                delay_ms,
                ..HttpServerOpts::default()
            },
        )?;
    }
    // ratings (no DestinationRule) and details (Envoy's default retry budget) share one backend,
    // whose answer the path chooses.
    fx.add_logged_backend(
        "ratings-v1",
        21,
        9080,
        "v1",
        &[("app", "ratings")],
        HttpServerOpts::default(),
    )?;
    let ratings = fx.add_simple_service("ratings", 30, "http", 9080, 9080)?;
    fx.add_service(service_yaml(
        "details",
        "default",
        Ipv4Addr::new(10, 96, 0, 31),
        &[SvcPort {
            name: "http",
            port: 9080,
            target_port: 9080,
        }],
        &[("app", "ratings")],
    ))?;
    let details = vip(31, 9080);
    let retried = |host: &str| {
        format!(
            "  - retries:\n      attempts: 3\n      retryOn: 5xx\n    route:\n    - destination:\n        \
             host: {host}\n"
        )
    };
    fx.config.write(
        "virtualservices.yaml",
        &[
            virtual_service(
                "reviews",
                "reviews",
                "  - retries:\n      attempts: 3\n      perTryTimeout: 200ms\n      retryOn: 5xx\n    \
                 route:\n    - destination:\n        host: reviews\n",
            ),
            virtual_service("ratings", "ratings", &retried("ratings")),
            virtual_service("details", "details", &retried("details")),
        ]
        .join("---\n"),
    )?;
    fx.config.write(
        "destinationrule.yaml",
        "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: details
  namespace: default
spec:
  host: details
  trafficPolicy:
    retryBudget:
      percent: 20
      minRetryConcurrency: 3
",
    )?;
    let keel = fx.start_keel_strict()?;

    // (a) The upstream fails 2 of 3 ways: every request succeeds, within 3 attempts, each attempt
    // on another endpoint, the last one v3.
    let n = sized(90u32, 600);
    let r = fx.get(
        &reviews("/")
            .count(n)
            .concurrency(6)
            .tag("a")
            .timeout(Duration::from_secs(120)),
    )?;
    ensure!(
        r.errors == 0
            && r.status(200) == u64::from(n)
            && r.by_version.get("v3") == Some(&u64::from(n)),
        "every request must succeed from v3: {:?} {:?} {:?}",
        r.by_status,
        r.by_version,
        r.other_bodies
    );
    let groups = by_tag(all_records(
        &fx,
        &["reviews-v1", "reviews-v2", "reviews-v3"],
    )?);
    ensure!(
        groups.len() == n as usize,
        "{} tagged requests at the backends, {n} sent",
        groups.len()
    );
    let mut by_attempts = [0u64; 4];
    for (tag, tries) in &groups {
        let counts: Vec<u32> = tries
            .iter()
            .map(|t| t.attempt_count().unwrap_or(0))
            .collect();
        let versions: Vec<&str> = tries.iter().map(|t| t.version.as_str()).collect();
        let k = tries.len();
        let distinct: std::collections::BTreeSet<&str> = versions.iter().copied().collect();
        ensure!(
            (1..=3).contains(&k)
                && counts == (1..=k as u32).collect::<Vec<_>>()
                && distinct.len() == k
                && versions.last() == Some(&"v3"),
            "{tag}: attempts {counts:?} at {versions:?}; expected 1..=3 attempts on distinct \
             endpoints ending at v3"
        );
        by_attempts[k] += 1;
    }
    let max_ms = r.max_latency_ms();
    for (k, served) in by_attempts.iter().enumerate().skip(1) {
        figures::record(
            scenario,
            &format!("2-of-3 failing: requests served at attempt {k}"),
            *served as f64,
            "count",
        );
    }
    figures::record(
        scenario,
        "2-of-3 failing: slowest request",
        max_ms as f64,
        "ms",
    );
    // One per-try timeout (200 ms) and back-offs (≤ 25 + 75 ms): far from v2's 1 s.
    ensure!(
        max_ms < 700,
        "the per-try timeout must cut v2's 1 s answer: slowest request {max_ms} ms"
    );

    // (b) The retry buffer: a body of exactly 1 MiB is replayed, one byte more is sent once.
    let ratings_log = fx.log("ratings-v1")?.clone();
    let abandoned_before = keel_stat(&keel, "keel.retry_or_shadow_abandoned")?;
    for (size, attempts) in [(RETRY_BUFFER, 4usize), (RETRY_BUFFER + 1, 1)] {
        let tag = format!("cap-{size}");
        let r = fx.get(
            &HttpGet::new("http://ratings:9080/status/503")
                .connect_to(ratings)
                .method("POST")
                .body_size(size)
                .header("x-req", &tag),
        )?;
        ensure!(
            r.status(503) == 1,
            "{size} bytes: the backend's 503 is the answer: {r:?}"
        );
        let records = ratings_log.read()?;
        let tries = with_header(&records, "x-req", &tag);
        let want = body_hash(&body_pattern(size));
        ensure!(
            tries.len() == attempts
                && tries
                    .iter()
                    .all(|t| t.body_len == size as u64 && t.body_hash == want),
            "a {size}-byte body: expected {attempts} attempt(s), each with the whole body; got {:?}",
            tries
                .iter()
                .map(|t| (t.attempt_count(), t.body_len))
                .collect::<Vec<_>>()
        );
    }
    ensure!(
        keel_stat(&keel, "keel.retry_or_shadow_abandoned")? == abandoned_before + 1,
        "the body one byte over the buffer counts one retry_or_shadow_abandoned"
    );

    // Large bodies held at a slow, failing upstream: streamed once, never buffered whole.
    let parallel = sized(8u32, 16);
    let big = 8 << 20;
    let rss_before = rss_kib(&keel)?;
    let (report, peak) = std::thread::scope(|s| {
        let load = s.spawn(|| {
            fx.agent.http_get(
                &fx.sleep,
                &HttpGet::new("http://ratings:9080/delay/1500/status/503")
                    .connect_to(ratings)
                    .method("POST")
                    .body_size(big)
                    .header("x-req", "big")
                    .count(parallel)
                    .concurrency(parallel)
                    .timeout(Duration::from_secs(60)),
            )
        });
        let mut peak = rss_before;
        while !load.is_finished() {
            if let Ok(rss) = rss_kib(&keel) {
                peak = peak.max(rss);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        (load.join(), peak)
    });
    let report = report.map_err(|_| anyhow::anyhow!("load thread panicked"))??;
    ensure!(
        report.status(503) == u64::from(parallel),
        "each large request ends with the backend's 503: {:?} (first error {:?})",
        report.by_status,
        report.first_error
    );
    let records = ratings_log.read()?;
    let big_tries = with_header(&records, "x-req", "big");
    ensure!(
        big_tries.len() == parallel as usize && big_tries.iter().all(|t| t.body_len == big as u64),
        "{parallel} requests of {big} bytes: each must reach the backend exactly once, whole: {:?}",
        big_tries.iter().map(|t| t.body_len).collect::<Vec<_>>()
    );
    let rise = peak.saturating_sub(rss_before);
    let per_request = rise as f64 / f64::from(parallel);
    figures::record(
        scenario,
        "retry buffer (body retried up to)",
        RETRY_BUFFER as f64,
        "bytes",
    );
    figures::record(
        scenario,
        "8 MiB bodies in flight: RSS rise per request",
        per_request,
        "KiB",
    );
    eprintln!(
        "G1: {parallel} x 8 MiB bodies at a slow failing upstream: RSS {rss_before} -> {peak} KiB \
         ({per_request:.0} KiB a request)"
    );
    // Envoy's budget for a proxied request: two 1 MiB connection watermarks; buffering the bodies
    // would cost 8 MiB each.
    ensure!(
        per_request <= 2048.0,
        "an 8 MiB body in flight cost {per_request:.0} KiB of keel's memory"
    );

    // (c) 100 % failure. Istio's defaults set no retry budget (maxRetries 2^32−1): each request is
    // tried 1 + attempts times, exactly.
    let offered = sized(200u32, 1_000);
    let concurrency = 20;
    let unbounded = fx.get(
        &HttpGet::new("http://ratings:9080/status/503")
            .connect_to(ratings)
            .header("x-req", "unbounded")
            .count(offered)
            .concurrency(concurrency)
            .timeout(Duration::from_secs(120)),
    )?;
    ensure!(
        unbounded.status(503) == u64::from(offered),
        "{:?} {:?}",
        unbounded.by_status,
        unbounded.first_error
    );
    let records = ratings_log.settle(Duration::from_millis(300), Duration::from_secs(5))?;
    let unbounded_attempts = with_header(&records, "x-req", "unbounded").len() as u64;
    ensure!(
        unbounded_attempts == 4 * u64::from(offered),
        "without a budget every request is tried 4 times: {unbounded_attempts} attempts for \
         {offered} requests"
    );
    // Envoy's default retry budget (20 % of active requests, at least 3 retries): retries in flight
    // ≤ 20 % of the requests in flight, retries included, so retries ≤ 25 % of first attempts and
    // the upstream load ≤ offered / (1 − 20 %), give or take the minimum of 3.
    let budget = fx.get(
        &HttpGet::new("http://details:9080/delay/50/status/503")
            .connect_to(details)
            .header("x-req", "budget")
            .count(offered)
            .concurrency(concurrency)
            .timeout(Duration::from_secs(120)),
    )?;
    ensure!(
        budget.status(503) == u64::from(offered),
        "{:?} {:?}",
        budget.by_status,
        budget.first_error
    );
    let records = ratings_log.settle(Duration::from_millis(300), Duration::from_secs(5))?;
    let tries = with_header(&records, "x-req", "budget");
    let firsts = tries
        .iter()
        .filter(|t| t.attempt_count() == Some(1))
        .count() as u64;
    let total = tries.len() as u64;
    // The minimum of 3 concurrent retries lets the last requests of the run (when fewer than 15 are
    // in flight) use all their 3 retries.
    let bound = (f64::from(offered) / 0.8).ceil() as u64 + 3 * 3;
    let ratio = total as f64 / f64::from(offered);
    figures::record(
        scenario,
        "100 % failure, no budget: upstream load / offered",
        unbounded_attempts as f64 / f64::from(offered),
        "x",
    );
    figures::record(
        scenario,
        "100 % failure, retry budget 20 %: upstream load / offered",
        ratio,
        "x",
    );
    eprintln!(
        "G1: 100 % failure, {offered} requests x {concurrency}: no budget {unbounded_attempts} \
         attempts; budget 20 %/min 3: {total} attempts ({ratio:.3} x), bound {bound}"
    );
    ensure!(
        firsts == u64::from(offered) && total <= bound,
        "with a 20 % retry budget: {total} upstream attempts ({firsts} first attempts) for \
         {offered} requests; at most {bound} allowed"
    );
    ensure!(
        cluster_stat(
            &keel,
            "outbound|9080||details.default.svc.cluster.local",
            "upstream_rq_retry_overflow"
        )? > 0,
        "the budget must have refused retries (upstream_rq_retry_overflow)"
    );
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// G2

/// Timeouts fire within ±50 ms: none earlier than 50 ms before, 95 % at most 50 ms after; the rest
/// at most 250 ms after, far from the 3 s the backend would take. (The shared 2-core machine stalls
/// a process for tens of ms now and then, and one stall delays the 5 requests in flight at once:
/// at full size one such stall put 2 % of the per-try 504s at +86 ms.)
fn on_time(what: &str, mut deviations_ms: Vec<i64>) -> Result<()> {
    deviations_ms.sort_unstable();
    let (Some(lo), Some(hi)) = (deviations_ms.first(), deviations_ms.last()) else {
        bail!("{what}: nothing measured");
    };
    let i = ((deviations_ms.len() as f64 - 1.0) * 0.95).round() as usize;
    let p95 = deviations_ms[i.min(deviations_ms.len() - 1)];
    ensure!(
        *lo >= -50 && p95 <= 50 && *hi <= 250,
        "{what}: {lo:+}..{hi:+} ms, p95 {p95:+} ms (±50 ms for 95 %, none over +250 ms)"
    );
    Ok(())
}

/// One timeout case: which requests, the timeout each attempt gets, attempts per request, and
/// whether the client's 504 is timed against `timeout` (a single-attempt case).
struct TimeoutCase {
    name: &'static str,
    req: HttpGet,
    timeout_ms: u64,
    attempts: usize,
    client_timed: bool,
}

/// G2: route and per-try timeouts fire within ±50 ms and cancel the upstream request.
#[test]
fn chaos_g2_timeouts_fire_on_time_and_cancel_the_upstream() -> Result<()> {
    let scenario = "G2 timeouts";
    let mut fx = Fixture::reviews(PREFIX, 224, &[])?;
    let cancel_log = RequestLog::new(fx.net.work_dir().join("reviews-v1.cancelled.jsonl"));
    fx.add_logged_backend(
        "reviews-v1",
        11,
        9080,
        "v1",
        &[("app", "reviews"), ("version", "v1")],
        HttpServerOpts {
            cancel_log: Some(cancel_log.path().to_path_buf()),
            ..HttpServerOpts::default()
        },
    )?;
    // ratings: the same backend, spoken to over h2c (port name `http2`).
    let ratings = ratings_on_reviews_pods(&mut fx, "http2")?;
    let rules = [
        case_rule("route", "    timeout: 300ms\n", "reviews", None),
        case_rule(
            "per-try",
            "    retries:\n      attempts: 2\n      perTryTimeout: 200ms\n",
            "reviews",
            None,
        ),
        case_rule(
            "retried",
            "    timeout: 3s\n    retries:\n      attempts: 2\n      perTryTimeout: 100ms\n      \
             retryOn: 5xx\n",
            "reviews",
            None,
        ),
    ]
    .concat();
    fx.config.write(
        "virtualservices.yaml",
        &[
            virtual_service("reviews", "reviews", &rules),
            virtual_service(
                "ratings",
                "ratings",
                "  - timeout: 300ms\n    route:\n    - destination:\n        host: ratings\n",
            ),
        ]
        .join("---\n"),
    )?;
    let keel = fx.start_keel_strict()?;

    let n = sized(50u32, 200);
    let load = |req: HttpGet, tag: &str| {
        req.count(n)
            .concurrency(5)
            .tag(tag)
            .timeout(Duration::from_secs(120))
    };
    let cases = [
        TimeoutCase {
            name: "route timeout 300 ms, HTTP/1.1 upstream",
            req: load(reviews("/delay/3000").header("x-case", "route"), "route"),
            timeout_ms: 300,
            attempts: 1,
            client_timed: true,
        },
        TimeoutCase {
            name: "perTryTimeout 200 ms, HTTP/1.1 upstream",
            req: load(
                reviews("/delay/3000").header("x-case", "per-try"),
                "per-try",
            ),
            timeout_ms: 200,
            attempts: 1,
            client_timed: true,
        },
        TimeoutCase {
            name: "route timeout 300 ms, HTTP/2 upstream",
            req: load(
                HttpGet::new("http://ratings:9080/delay/3000").connect_to(ratings),
                "h2",
            ),
            timeout_ms: 300,
            attempts: 1,
            client_timed: true,
        },
        TimeoutCase {
            name: "perTryTimeout 100 ms x 3 attempts, HTTP/1.1 upstream",
            req: load(
                reviews("/delay/3000").header("x-case", "retried"),
                "retried",
            ),
            timeout_ms: 100,
            attempts: 3,
            client_timed: false,
        },
    ];
    let log = fx.log("reviews-v1")?.clone();
    let mut problems = Vec::new();
    for case in cases {
        let r = fx.get(&case.req)?;
        let prefix = case.req.tag.clone().unwrap_or_default();
        let check = || -> Result<()> {
            ensure!(
                r.errors == 0 && r.with_body(504, TIMEOUT_BODY) == u64::from(n),
                "every request must end in Envoy's 504: {:?} {:?} (first error {:?})",
                r.by_status,
                r.other_bodies,
                r.first_error
            );
            if case.client_timed {
                let lat = r
                    .latencies_us_by_status
                    .get("504")
                    .cloned()
                    .unwrap_or_default();
                let late: Vec<i64> = lat
                    .iter()
                    .map(|us| (*us / 1000) as i64 - case.timeout_ms as i64)
                    .collect();
                let (lo, hi) = (
                    late.iter().copied().min().unwrap_or(0),
                    late.iter().copied().max().unwrap_or(0),
                );
                let p50 = quantile(&lat, 0.5) as f64 / 1000.0 - case.timeout_ms as f64;
                let p99 = quantile(&lat, 0.99) as f64 / 1000.0 - case.timeout_ms as f64;
                figures::record(
                    scenario,
                    &format!("{}: 504 after timeout, p50", case.name),
                    p50,
                    "ms",
                );
                figures::record(
                    scenario,
                    &format!("{}: 504 after timeout, p99", case.name),
                    p99,
                    "ms",
                );
                figures::record(
                    scenario,
                    &format!("{}: 504 after timeout, max", case.name),
                    hi as f64,
                    "ms",
                );
                eprintln!(
                    "G2 {}: 504 at timeout {lo:+}..{hi:+} ms (p50 {p50:+.1}, p99 {p99:+.1})",
                    case.name
                );
                ensure!(
                    lat.len() == n as usize,
                    "{} 504 latencies for {n} requests",
                    lat.len()
                );
                on_time(
                    &format!("the 504s after the {} ms timeout", case.timeout_ms),
                    late,
                )?;
            }
            // At the backend: each attempt arrived, and was cancelled when its timeout fired.
            let arrived = by_tag(
                log.read()?
                    .into_iter()
                    .filter(|r| {
                        r.header(TAG)
                            .is_some_and(|t| t.starts_with(&format!("{prefix}-")))
                    })
                    .collect(),
            );
            let want = n as usize * case.attempts;
            let deadline = Instant::now() + Duration::from_secs(5);
            let cancelled = loop {
                let c: Vec<RequestRecord> = cancel_log
                    .read()?
                    .into_iter()
                    .filter(|r| {
                        r.header(TAG)
                            .is_some_and(|t| t.starts_with(&format!("{prefix}-")))
                    })
                    .collect();
                if c.len() >= want || Instant::now() >= deadline {
                    break by_tag(c);
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            let arrived_n: usize = arrived.values().map(Vec::len).sum();
            let cancelled_n: usize = cancelled.values().map(Vec::len).sum();
            ensure!(
                arrived_n == want && cancelled_n == want,
                "{want} attempts expected; {arrived_n} reached the backend, {cancelled_n} were \
                 cancelled there"
            );
            let mut after = Vec::new();
            for (tag, tries) in &arrived {
                let gone = cancelled.get(tag).context("no cancellation")?;
                for (a, c) in tries.iter().zip(gone) {
                    after.push(c.ts_ms as i64 - a.ts_ms as i64 - case.timeout_ms as i64);
                }
            }
            let (lo, hi) = (
                after.iter().copied().min().unwrap_or(0),
                after.iter().copied().max().unwrap_or(0),
            );
            figures::record(
                scenario,
                &format!("{}: upstream cancelled after timeout, max", case.name),
                hi as f64,
                "ms",
            );
            eprintln!(
                "G2 {}: the backend saw each attempt cancelled {lo:+}..{hi:+} ms from its timeout",
                case.name
            );
            on_time(
                &format!(
                    "the backend's cancellations after the {} ms timeout",
                    case.timeout_ms
                ),
                after,
            )?;
            Ok(())
        };
        if let Err(e) = check() {
            problems.push(format!("{}: {e:#}", case.name));
        }
    }
    drop(keel);
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// G3

/// G3: weights and fault percentages within ±3 points, faults on the matching route only.
#[test]
fn chaos_g3_weights_and_fault_percentages_within_three_points() -> Result<()> {
    let scenario = "G3 weights and fault percentages";
    let fx = Fixture::reviews_logged(PREFIX, 225, &["v1", "v2", "v3"])?;
    fx.config.write(
        "destinationrule.yaml",
        &common::reviews_destination_rule(&["v1", "v2", "v3"]),
    )?;
    let split = |case: &str, weights: &[(&str, u32)]| {
        let mut y = format!(
            "  - match:\n    - headers:\n        x-split:\n          exact: \"{case}\"\n    route:\n"
        );
        for (subset, w) in weights {
            y.push_str(&format!(
                "    - destination:\n        host: reviews\n        subset: {subset}\n      weight: {w}\n"
            ));
        }
        y
    };
    let splits: [(&str, Vec<(&str, u32)>); 3] = [
        ("50-50", vec![("v1", 50), ("v2", 50)]),
        ("80-20", vec![("v1", 80), ("v2", 20)]),
        ("50-25-25", vec![("v1", 50), ("v2", 25), ("v3", 25)]),
    ];
    let mut rules: String = splits.iter().map(|(c, w)| split(c, w)).collect();
    rules.push_str(
        "  - match:\n    - headers:\n        x-fault:\n          exact: \"on\"\n    fault:\n      \
         abort:\n        httpStatus: 503\n        percentage:\n          value: 30\n      delay:\n        \
         fixedDelay: 200ms\n        percentage:\n          value: 20\n    route:\n    - destination:\n        \
         host: reviews\n        subset: v1\n  - route:\n    - destination:\n        host: reviews\n        \
         subset: v1\n",
    );
    fx.config.write(
        "virtualservice.yaml",
        &virtual_service("reviews", "reviews", &rules),
    )?;
    let _keel = fx.start_keel_strict()?;
    let names = ["reviews-v1", "reviews-v2", "reviews-v3"];
    let n = sized(4_000u32, 10_000);
    let delay = Duration::from_millis(200);
    let load = |req: HttpGet, concurrency: u32| {
        fx.get(
            &req.count(n)
                .concurrency(concurrency)
                .slow(delay)
                .timeout(Duration::from_secs(300)),
        )
    };

    let mut worst = 0f64;
    for (case, weights) in &splits {
        let r = load(reviews("/").header("x-split", case), 16)?;
        ensure!(
            r.errors == 0 && r.status(200) == u64::from(n),
            "{case}: {:?} {:?}",
            r.by_status,
            r.first_error
        );
        let records = all_records(&fx, &names)?;
        let at_backends = with_header(&records, "x-split", case);
        for (version, weight) in weights {
            let pod = format!("reviews-{version}");
            let seen = at_backends.iter().filter(|rec| rec.pod == pod).count() as u64;
            let answered = r.by_version.get(*version).copied().unwrap_or(0);
            ensure!(
                seen == answered,
                "{case}: {pod} logged {seen} requests but answered {answered}"
            );
            let share = ensure_three_points(
                &format!("{case} split, {version}"),
                seen,
                u64::from(n),
                f64::from(*weight),
            )?;
            worst = worst.max((share - f64::from(*weight)).abs());
            figures::record(
                scenario,
                &format!("{case}: {version} share (weight {weight})"),
                share,
                "%",
            );
        }
        ensure!(
            at_backends.len() == n as usize,
            "{case}: {} requests at the backends for {n} sent (versions outside the split?)",
            at_backends.len()
        );
    }

    // 30 % abort, 20 % delay on the matching route (independent draws, as Envoy's fault filter).
    let r = load(reviews("/").header("x-fault", "on"), 64)?;
    let aborted = r.with_body(503, ABORT_BODY);
    let served = r.status(200);
    ensure!(
        r.errors == 0 && aborted + served == u64::from(n),
        "fault route: every request is aborted or served: {:?} {:?}",
        r.by_status,
        r.other_bodies
    );
    let abort_share = ensure_three_points("aborts at 30 %", aborted, u64::from(n), 30.0)?;
    let delay_share = ensure_three_points("delays at 20 %", r.slow, u64::from(n), 20.0)?;
    let records = all_records(&fx, &names)?;
    let reached = with_header(&records, "x-fault", "on").len() as u64;
    ensure!(
        reached == served,
        "aborted requests never reach a backend: {reached} arrived, {served} were served"
    );
    worst = worst
        .max((abort_share - 30.0).abs())
        .max((delay_share - 20.0).abs());
    figures::record(scenario, "abort share (30 %)", abort_share, "%");
    figures::record(scenario, "delay share (20 %)", delay_share, "%");

    // The route without the fault: no abort, no delay.
    let plain = load(reviews("/").header("x-fault", "off"), 64)?;
    ensure!(
        plain.errors == 0 && plain.status(200) == u64::from(n) && plain.slow == 0,
        "the non-matching route must see no abort and no delay: {:?} {:?}, {} slower than {delay:?}",
        plain.by_status,
        plain.other_bodies,
        plain.slow
    );
    let records = all_records(&fx, &names)?;
    ensure!(
        with_header(&records, "x-fault", "off").len() == n as usize,
        "every request of the non-matching route reached v1"
    );
    figures::record(scenario, "requests per case", f64::from(n), "count");
    figures::record(scenario, "worst deviation", worst, "points");
    eprintln!("G3: {n} requests per case, worst deviation {worst:.2} points");
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// G4

/// G4: mirrors never slow the primary, are sent once per request, respect their percentage, carry
/// the `-shadow` Host, and are dropped (not queued) over their bounds.
#[test]
fn chaos_g4_mirrors_are_bounded_sent_once_and_never_slow_the_primary() -> Result<()> {
    let scenario = "G4 mirroring";
    let mut fx = Fixture::reviews_logged(PREFIX, 226, &["v1"])?;
    // v2: a slow mirror (5 s); v3: dead (in the Service, nothing listening); v4: healthy;
    // v5: slow (3 s) behind its subset's circuit breaker.
    fx.add_logged_backend(
        "reviews-v2",
        12,
        9080,
        "v2",
        &[("app", "reviews"), ("version", "v2")],
        HttpServerOpts {
            delay_ms: Some(5_000),
            ..HttpServerOpts::default()
        },
    )?;
    fx.add_pod(
        "reviews-v3",
        13,
        &[("app", "reviews"), ("version", "v3")],
        &[],
        false,
    )?;
    fx.add_logged_backend(
        "reviews-v4",
        14,
        9080,
        "v4",
        &[("app", "reviews"), ("version", "v4")],
        HttpServerOpts::default(),
    )?;
    fx.add_logged_backend(
        "reviews-v5",
        15,
        9080,
        "v5",
        &[("app", "reviews"), ("version", "v5")],
        HttpServerOpts {
            delay_ms: Some(3_000),
            ..HttpServerOpts::default()
        },
    )?;
    let mut dr = common::reviews_destination_rule(&["v1", "v2", "v3", "v4"]);
    dr.push_str(
        "  - name: v5\n    labels:\n      version: v5\n    trafficPolicy:\n      connectionPool:\n        \
         tcp:\n          maxConnections: 2\n        http:\n          http1MaxPendingRequests: 1\n",
    );
    fx.config.write("destinationrule.yaml", &dr)?;
    let mirror = |subset: &str, extra: &str| {
        format!("    mirror:\n      host: reviews\n      subset: {subset}\n{extra}")
    };
    // The latency cases match by path, so that the paced load (which sends no headers) picks them.
    let prefix_rule = |prefix: &str, body: &str| {
        format!(
            "  - match:\n    - uri:\n        prefix: {prefix}\n{body}    route:\n    - destination:\n        \
             host: reviews\n        subset: v1\n"
        )
    };
    let rules = [
        prefix_rule("/none", ""),
        prefix_rule("/slow", &mirror("v2", "")),
        prefix_rule("/dead", &mirror("v3", "")),
        case_rule(
            "pct",
            &mirror("v4", "    mirrorPercentage:\n      value: 25\n"),
            "reviews",
            Some("v1"),
        ),
        case_rule(
            "retry",
            &format!(
                "    retries:\n      attempts: 3\n      retryOn: 5xx\n{}",
                mirror("v4", "")
            ),
            "reviews",
            Some("v1"),
        ),
        case_rule("bounded", &mirror("v5", ""), "reviews", Some("v1")),
    ]
    .concat();
    fx.config.write(
        "virtualservice.yaml",
        &virtual_service("reviews", "reviews", &rules),
    )?;
    let keel = fx.start_keel_strict()?;
    fx.get(&reviews("/none").count(200))?;

    // Primary latency with no mirror, a slow one and a dead one: paced load (a mirror's work can
    // run between requests, as it would below saturation), the three interleaved in rounds so drift
    // on the shared machine hits all three alike.
    let rounds = sized(3u32, 10);
    let rate = sized(300u32, 500);
    let round = Duration::from_secs(sized(1, 2));
    let cases = ["none", "slow", "dead"];
    let mut lat: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut slow_sent = 0u64;
    let rss_before = rss_kib(&keel)?;
    let mut rss_peak = rss_before;
    let phase_start = common_unix_ms();
    for _ in 0..rounds {
        for case in cases {
            let r = fx.agent.http_load(
                &fx.sleep,
                &format!("http://reviews:9080/{case}"),
                reviews_vip(),
                rate,
                2,
                round,
            )?;
            let ok = r
                .samples
                .iter()
                .filter(|s| s.1 == 200 && s.2 == "v1")
                .count();
            ensure!(
                ok == r.samples.len() && !r.samples.is_empty(),
                "mirror {case}: the primary answers every request: {} of {}",
                ok,
                r.samples.len()
            );
            if case == "slow" {
                slow_sent += r.samples.len() as u64;
            }
            lat.entry(case).or_default().extend(&r.latencies_us);
            rss_peak = rss_peak.max(rss_kib(&keel)?);
        }
    }
    let phase_end = common_unix_ms();
    let p99 = |case: &str| quantile(lat.get(case).map_or(&[][..], Vec::as_slice), 0.99);
    let base = p99("none").max(1);
    let mut worst_change = 0f64;
    let mut worst_p50_change = 0f64;
    let p50 = |case: &str| quantile(lat.get(case).map_or(&[][..], Vec::as_slice), 0.5);
    for case in cases {
        let p = p99(case);
        let change = (p as f64 / base as f64 - 1.0) * 100.0;
        figures::record(
            scenario,
            &format!("primary p99, mirror {case}"),
            p as f64,
            "µs",
        );
        if case != "none" {
            figures::record(
                scenario,
                &format!("primary p99 change, mirror {case}"),
                change,
                "%",
            );
            worst_change = worst_change.max(change);
            worst_p50_change =
                worst_p50_change.max((p50(case) as f64 / p50("none").max(1) as f64 - 1.0) * 100.0);
        }
        eprintln!(
            "G4 primary with mirror {case}: p50 {} µs, p99 {p} µs ({change:+.1} % vs none)",
            p50(case)
        );
    }
    // 5 % of a ~1 ms p99 is tens of µs, below the noise of the shared 2-core machine at the smoke
    // size (900 samples a case, other work on the machine: smoke runs measured p99 +7 % to +383 %).
    // The smoke run asserts the median (+15 % to +38 % measured: the mirror's own work on the same
    // two cores) within +100 % and the p99 within 10x, which still fails a primary that waits for
    // its mirror (the slow one answers after 5 s); the full run asserts the 5 % target.
    let (allowed, allowed_p50) = sized((1_000.0, 100.0), (5.0, f64::INFINITY));
    ensure!(
        worst_change < allowed && worst_p50_change < allowed_p50,
        "a slow or dead mirror moved the primary's p99 by {worst_change:+.1} % (< {allowed} % \
         allowed), its median by {worst_p50_change:+.1} % (< {allowed_p50} %)"
    );

    // The slow mirror: at most 256 copies in flight (each holds its slot 5 s), the rest dropped at
    // once and never sent later.
    let v2 = fx
        .log("reviews-v2")?
        .settle(Duration::from_millis(500), Duration::from_secs(10))?;
    let arrivals: Vec<u64> = v2.iter().map(|r| r.ts_ms).collect();
    let max_in_window = arrivals
        .iter()
        .map(|t| {
            arrivals
                .iter()
                .filter(|u| **u <= *t && *u + 4_900 > *t)
                .count()
        })
        .max()
        .unwrap_or(0);
    let late = arrivals.iter().filter(|t| **t > phase_end + 200).count();
    figures::record(
        scenario,
        "slow mirror: copies received",
        arrivals.len() as f64,
        "count",
    );
    figures::record(
        scenario,
        "slow mirror: most copies in flight",
        max_in_window as f64,
        "count",
    );
    eprintln!(
        "G4 slow mirror: {} of {slow_sent} copies received ({max_in_window} at most in flight), \
         {late} after the load ended; phase {} ms; keel: {} mirrors sent, {} dropped",
        arrivals.len(),
        phase_end - phase_start,
        keel_stat(&keel, "keel.mirror_requests")?,
        keel_stat(&keel, "keel.mirror_dropped")?,
    );
    ensure!(
        max_in_window <= 256 && late == 0,
        "a slow mirror holds at most 256 copies in flight and drops the rest: {max_in_window} in \
         flight, {late} arrived after the load ended (queued)"
    );
    let rise = rss_peak.saturating_sub(rss_before);
    figures::record(
        scenario,
        "RSS rise with mirrors in flight",
        rise as f64,
        "KiB",
    );
    ensure!(
        rise <= 64 * 1024,
        "256 mirrors in flight cost {rise} KiB of keel's memory"
    );

    // A retried request is mirrored once; the copy has the shadow Host. The slow mirror still holds
    // its 256 slots (5 s each): another mirror target must not lose its copies to it.
    let m = sized(30u32, 200);
    let r = fx.get(
        &reviews("/status/503")
            .header("x-case", "retry")
            .count(m)
            .tag("retry"),
    )?;
    ensure!(r.status(503) == u64::from(m), "{:?}", r.by_status);
    let primary = by_tag(
        fx.log("reviews-v1")?
            .read()?
            .into_iter()
            .filter(|r| r.header("x-case") == Some("retry"))
            .collect(),
    );
    let v4 = fx
        .log("reviews-v4")?
        .settle(Duration::from_millis(500), Duration::from_secs(5))?;
    let copies = by_tag(
        v4.into_iter()
            .filter(|r| r.header("x-case") == Some("retry"))
            .collect(),
    );
    ensure!(
        primary.len() == m as usize && primary.values().all(|t| t.len() == 4),
        "the primary is tried 4 times per request: {:?}",
        primary.values().map(Vec::len).collect::<Vec<_>>()
    );
    ensure!(
        copies.len() == m as usize
            && copies
                .values()
                .all(|c| c.len() == 1 && c[0].header("host") == Some("reviews-shadow:9080")),
        "each of {m} retried requests is mirrored exactly once, with Host reviews-shadow:9080: \
         {} requests mirrored, copies per request {:?}, hosts {:?}",
        copies.len(),
        copies
            .values()
            .map(Vec::len)
            .collect::<std::collections::BTreeSet<_>>(),
        copies
            .values()
            .flatten()
            .map(|r| r.header("host").unwrap_or("-"))
            .collect::<std::collections::BTreeSet<_>>()
    );

    // mirrorPercentage 25 within ±3 points.
    let n = sized(4_000u32, 10_000);
    let r = fx.get(
        &reviews("/")
            .header("x-case", "pct")
            .count(n)
            .concurrency(16)
            .timeout(Duration::from_secs(120)),
    )?;
    ensure!(r.status(200) == u64::from(n), "{:?}", r.by_status);
    let v4 = fx
        .log("reviews-v4")?
        .settle(Duration::from_millis(500), Duration::from_secs(10))?;
    let pct = with_header(&v4, "x-case", "pct").len() as u64;
    let share = ensure_three_points("mirrorPercentage 25", pct, u64::from(n), 25.0)?;
    figures::record(scenario, "mirrorPercentage 25: share mirrored", share, "%");

    // The mirror cluster's circuit breaker (2 connections + 1 pending) bounds its copies.
    let dropped_before = keel_stat(&keel, "keel.mirror_dropped")?;
    let burst = 50u32;
    let r = fx.get(&reviews("/").header("x-case", "bounded").count(burst))?;
    ensure!(r.status(200) == u64::from(burst), "{:?}", r.by_status);
    let burst_end = common_unix_ms();
    std::thread::sleep(Duration::from_millis(3_500));
    let v5 = fx
        .log("reviews-v5")?
        .settle(Duration::from_millis(500), Duration::from_secs(10))?;
    let dropped = keel_stat(&keel, "keel.mirror_dropped")? - dropped_before;
    let late: Vec<u64> = v5
        .iter()
        .map(|r| r.ts_ms)
        .filter(|t| *t > burst_end + 3_500)
        .collect();
    figures::record(
        scenario,
        "breaker-bounded mirror: copies sent of 50",
        v5.len() as f64,
        "count",
    );
    eprintln!(
        "G4 mirror behind maxConnections 2 + 1 pending: {} copies of {burst} sent, {dropped} \
         dropped",
        v5.len()
    );
    ensure!(
        (2..=3).contains(&v5.len())
            && dropped == u64::from(burst) - v5.len() as u64
            && late.is_empty(),
        "the mirror cluster's breaker (2 connections, 1 pending) bounds the copies: {} sent, \
         {dropped} dropped of {burst}, {} sent after the slots freed",
        v5.len(),
        late.len()
    );
    Ok(())
}

fn common_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

// ------------------------------------------------------------------------------------------------
// G5

/// Every answer is a 200 or Envoy's overflow reply; returns the overflow replies' latencies (µs).
fn overflow_latencies(what: &str, r: &HttpGetReport) -> Result<Vec<u64>> {
    let overflow = r.with_body(503, OVERFLOW_BODY);
    ensure!(
        r.errors == 0 && r.status(200) + overflow == r.requested && overflow > 0,
        "{what}: expected 200s and some overflow replies, got {:?} {:?} (first error {:?})",
        r.by_status,
        r.other_bodies,
        r.first_error
    );
    Ok(r.latencies_us_by_status
        .get("503")
        .cloned()
        .unwrap_or_default())
}

/// G5: breaker overflows are answered at once.
#[test]
fn chaos_g5_breaker_overflows_are_answered_at_once() -> Result<()> {
    let scenario = "G5 circuit breaking";
    let mut fx = Fixture::reviews(PREFIX, 227, &[])?;
    fx.add_logged_backend(
        "reviews-v1",
        11,
        9080,
        "v1",
        &[("app", "reviews"), ("version", "v1")],
        HttpServerOpts {
            delay_ms: Some(300),
            ..HttpServerOpts::default()
        },
    )?;
    // ratings: the same backend, its own breaker.
    let ratings = ratings_on_reviews_pods(&mut fx, "http")?;
    let db = fx.add_pod_in("default", "db", 21, &[("app", "db")])?;
    fx.servers.push(fx.agent.tcp_echo_server(&db, 5432)?);
    let db_vip = fx.add_simple_service("db", 31, "tcp", 5432, 5432)?;
    let rule = |host: &str, pool: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: {host}\n  \
             namespace: default\nspec:\n  host: {host}\n  trafficPolicy:\n    connectionPool:\n{pool}"
        )
    };
    fx.config.write(
        "destinationrules.yaml",
        &[
            rule(
                "reviews",
                "      tcp:\n        maxConnections: 1\n      http:\n        http1MaxPendingRequests: 1\n",
            ),
            rule("ratings", "      http:\n        http2MaxRequests: 2\n"),
            rule("db", "      tcp:\n        maxConnections: 1\n"),
        ]
        .join("---\n"),
    )?;
    let keel = fx.start_keel_strict()?;
    let count = sized(300u32, 2_000);
    let mut all = Vec::new();
    for (what, req) in [
        ("maxConnections 1 + http1MaxPendingRequests 1", reviews("/")),
        (
            "http2MaxRequests 2",
            HttpGet::new("http://ratings:9080/").connect_to(ratings),
        ),
    ] {
        let r = fx.get(
            &req.count(count)
                .concurrency(10)
                .timeout(Duration::from_secs(120)),
        )?;
        let lat = overflow_latencies(what, &r)?;
        let (p50, p99, max) = (
            quantile(&lat, 0.5),
            quantile(&lat, 0.99),
            quantile(&lat, 1.0),
        );
        figures::record(
            scenario,
            &format!("{what}: overflow 503 p99"),
            p99 as f64 / 1000.0,
            "ms",
        );
        figures::record(
            scenario,
            &format!("{what}: overflow 503 max"),
            max as f64 / 1000.0,
            "ms",
        );
        eprintln!(
            "G5 {what}: {} overflow 503s, p50 {p50} µs, p99 {p99} µs, max {max} µs",
            lat.len()
        );
        all.push((what, p99, max));
    }
    // TCP maxConnections: the connection over the limit is closed at once.
    let vip_s = db_vip.to_string();
    let mut holder = fx.sleep.spawn(
        fx.agent.bin(),
        &["tcp-connect", "--addr", &vip_s, "--read-timeout-ms", "3000"],
        "holder",
    )?;
    common::wait_until("the first connection is up", Duration::from_secs(3), || {
        Ok(cluster_stat(
            &keel,
            "outbound|5432||db.default.svc.cluster.local",
            "upstream_cx_active",
        )? == 1)
    })?;
    let mut closes = Vec::new();
    for _ in 0..sized(10, 50) {
        let c = fx.agent.tcp_connect(&fx.sleep, db_vip, Some("hello"))?;
        ensure!(
            matches!(
                c.outcome,
                keel_tests::ConnectOutcome::Eof | keel_tests::ConnectOutcome::Reset
            ),
            "a connection over maxConnections is closed: {c:?}"
        );
        closes.push(c.elapsed_ms * 1000);
    }
    let status = holder.wait_or_kill(Duration::from_secs(10))?;
    ensure!(status.success(), "holder: {}", holder.stderr_tail());
    let tcp_max = quantile(&closes, 1.0);
    figures::record(
        scenario,
        "TCP maxConnections: close over the limit, max",
        tcp_max as f64 / 1000.0,
        "ms",
    );
    eprintln!("G5 TCP maxConnections 1: closes over the limit after {closes:?} µs (ms resolution)");
    // The close is timed by a new client process per connection, at ms resolution, so the check is
    // on the 90th percentile of fewer samples.
    all.push(("TCP maxConnections 1", quantile(&closes, 0.9), tcp_max));
    for (what, q, max) in &all {
        ensure!(
            *q < 10_000 && *max < 50_000,
            "{what}: overflows must be answered at once: p99 (TCP: p90) {q} µs (< 10 ms), max \
             {max} µs (< 50 ms on the shared machine)"
        );
    }
    Ok(())
}

/// An EndpointSlice for reviews with the endpoints `pods`.
fn endpoint_slice(pods: &[&keel_tests::Pod]) -> String {
    let mut y = String::from(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: reviews-churn\n  \
         namespace: default\n  labels:\n    kubernetes.io/service-name: reviews\naddressType: IPv4\n\
         endpoints:\n",
    );
    for p in pods {
        y.push_str(&format!(
            "- addresses: [{}]\n  conditions: {{ready: true, serving: true, terminating: false}}\n  \
             targetRef: {{kind: Pod, name: {}, namespace: default}}\n",
            p.ip, p.name
        ));
    }
    y.push_str("ports:\n- {name: http, port: 9080, protocol: TCP}\n");
    y
}

/// G5: endpoint churn under load: errors < 0.1 %, no request at a removed endpoint 1 s after its
/// removal. The removed backends keep running, so a misrouted request would show in their logs.
#[test]
fn chaos_g5_endpoint_churn_under_load() -> Result<()> {
    let scenario = "G5 endpoint churn";
    let versions = ["e0", "e1", "e2", "e3", "e4"];
    let fx = Fixture::reviews_logged(PREFIX, 228, &versions)?;
    let pods: Vec<&keel_tests::Pod> = versions
        .iter()
        .map(|v| {
            let name = format!("reviews-{v}");
            fx.specs
                .iter()
                .find(|s| s.pod.name == name)
                .map(|s| &s.pod)
                .with_context(|| format!("no pod {name}"))
        })
        .collect::<Result<_>>()?;
    fx.config
        .write("endpointslice.yaml", &endpoint_slice(&pods))?;
    let _keel = fx.start_keel_strict()?;
    fx.get(&reviews("/").count(50))?;

    let rate = 1_000u32;
    let duration = Duration::from_secs(sized(10, 30));
    let step = Duration::from_secs(2);
    let agent = fx.agent.clone();
    let sleep = fx.sleep.clone();
    let load = std::thread::spawn(move || {
        agent.http_load(
            &sleep,
            common::REVIEWS_URL,
            reviews_vip(),
            rate,
            16,
            duration,
        )
    });
    // (pod index, removed at, added back at) in Unix ms.
    let mut outages: Vec<(usize, u64, u64)> = Vec::new();
    let started = Instant::now();
    let mut k = 0usize;
    std::thread::sleep(Duration::from_millis(500));
    while started.elapsed() + step <= duration {
        let out = k % pods.len();
        let keep: Vec<&keel_tests::Pod> = pods
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != out)
            .map(|(_, p)| *p)
            .collect();
        let at = common_unix_ms();
        if let Some(last) = outages.last_mut() {
            last.2 = at;
        }
        fx.config
            .write("endpointslice.yaml", &endpoint_slice(&keep))?;
        outages.push((out, at, u64::MAX));
        k += 1;
        std::thread::sleep(step);
    }
    let back = common_unix_ms();
    if let Some(last) = outages.last_mut() {
        last.2 = back;
    }
    fx.config
        .write("endpointslice.yaml", &endpoint_slice(&pods))?;
    let report = load
        .join()
        .map_err(|_| anyhow::anyhow!("load thread panicked"))??;

    let total = report.samples.len() as u64;
    let failed: Vec<&(u64, u16, String)> = report.samples.iter().filter(|s| s.1 != 200).collect();
    let error_rate = common::percent(failed.len() as u64, total);
    figures::record(scenario, "requests", total as f64, "count");
    figures::record(scenario, "error rate", error_rate, "%");
    ensure!(
        total as f64 >= f64::from(rate) * duration.as_secs_f64() * 0.8,
        "the load fell short: {total} requests in {duration:?}"
    );
    ensure!(
        (failed.len() as f64) < total as f64 * 0.001,
        "{} of {total} requests failed during endpoint churn ({error_rate:.3} %), first {:?}",
        failed.len(),
        failed.first()
    );
    let mut worst_ms = 0u64;
    let mut violations = Vec::new();
    for (i, removed, added) in &outages {
        let name = format!("reviews-{}", versions[*i]);
        let records = fx.log(&name)?.read()?;
        let during: Vec<u64> = records
            .iter()
            .map(|r| r.ts_ms)
            .filter(|t| *t >= *removed && *t < *added)
            .collect();
        if let Some(last) = during.iter().max() {
            worst_ms = worst_ms.max(last - removed);
        }
        let late: Vec<u64> = during
            .iter()
            .filter(|t| **t > removed + 1_000)
            .map(|t| t - removed)
            .collect();
        if !late.is_empty() {
            violations.push(format!("{name}: requests {late:?} ms after its removal"));
        }
    }
    figures::record(
        scenario,
        "last request at a removed endpoint after removal",
        worst_ms as f64,
        "ms",
    );
    eprintln!(
        "G5 churn: {total} requests at {rate} rps, {} removals, {} failed ({error_rate:.3} %), last \
         request at a removed endpoint {worst_ms} ms after its removal",
        outages.len(),
        failed.len()
    );
    ensure!(violations.is_empty(), "{}", violations.join("\n"));
    // Re-added endpoints serve again.
    let mut per: BTreeMap<&str, u64> = BTreeMap::new();
    for s in &report.samples {
        *per.entry(s.2.as_str()).or_default() += 1;
    }
    ensure!(
        versions
            .iter()
            .all(|v| per.get(v).copied().unwrap_or(0) > 0),
        "every endpoint served some of the load: {per:?}"
    );
    if outages.is_empty() {
        bail!("no endpoint was removed");
    }
    Ok(())
}
