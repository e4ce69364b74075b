//! DestinationRule `outlierDetection` as Envoy applies it (istio-semantics §2.4, §5 items 26–27),
//! counted at the backends: every backend logs each request it receives, so when an endpoint was
//! ejected and for how long is read from its log, not inferred. Requests are sequential, so the
//! consecutive errors of one endpoint are exactly the requests it logs.
//!
//! Subnet indices 125..=129 belong to this file.

mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use common::{reviews_vip, Fixture, REVIEWS_PORT};
use keel_tests::{HttpGet, HttpGetReport, HttpServerOpts, RequestRecord};

const PREFIX: &str = "ktoutl";
/// Envoy's reply when no endpoint may be used (flag `UH`).
const NO_HEALTHY_UPSTREAM: &str = "no healthy upstream";

/// `GET http://reviews:9080/` `count` times on one keep-alive connection.
fn reviews(count: u32) -> HttpGet {
    HttpGet::new("http://reviews:9080/")
        .connect_to(reviews_vip())
        .count(count)
}

/// reviews backends `reviews-<version>` (pods `.11`, `.12`, ...), each logging its requests; those
/// whose version is in `failing` answer every request with 500.
fn fixture(index: u8, versions: &[&str], failing: &[&str]) -> Result<Fixture> {
    let mut fx = Fixture::reviews(PREFIX, index, &[])?;
    for (i, v) in versions.iter().enumerate() {
        let opts = HttpServerOpts {
            fail_status: failing.contains(v).then_some(500),
            ..HttpServerOpts::default()
        };
        fx.add_logged_backend(
            &format!("reviews-{v}"),
            u8::try_from(11 + i)?,
            REVIEWS_PORT,
            v,
            &[("app", "reviews"), ("version", v)],
            opts,
        )?;
    }
    Ok(fx)
}

/// A DestinationRule for reviews with `outlier` as its `outlierDetection` block (flow style), or
/// none.
fn destination_rule(outlier: Option<&str>) -> String {
    let mut y = String::from(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: reviews\n  \
         namespace: default\nspec:\n  host: reviews\n  subsets:\n  - name: all\n    labels:\n      \
         app: reviews\n",
    );
    if let Some(od) = outlier {
        y.push_str(&format!("  trafficPolicy:\n    outlierDetection: {od}\n"));
    }
    y
}

/// The records of backend `name`, ordered by arrival.
fn records(fx: &Fixture, name: &str) -> Result<Vec<RequestRecord>> {
    let mut r = fx.log(name)?.read()?;
    r.sort_by_key(|r| r.ts_ms);
    Ok(r)
}

/// Requests of `name` so far.
fn count(fx: &Fixture, name: &str) -> Result<usize> {
    Ok(fx.log(name)?.read()?.len())
}

/// Sends small batches of sequential requests for `run`, pausing `pause` between batches; bounded
/// by `max_requests`. Returns every report.
fn drive(
    fx: &Fixture,
    run: Duration,
    pause: Duration,
    max_requests: u32,
) -> Result<Vec<HttpGetReport>> {
    let start = Instant::now();
    let mut sent = 0;
    let mut reports = Vec::new();
    while start.elapsed() < run && sent < max_requests {
        let r = fx.get(&reviews(5))?;
        ensure!(
            r.errors == 0 && r.responses == 5,
            "every request gets a response: {r:?}"
        );
        sent += 5;
        reports.push(r);
        std::thread::sleep(pause);
    }
    Ok(reports)
}

fn total_status(reports: &[HttpGetReport], code: u16) -> u64 {
    reports.iter().map(|r| r.status(code)).sum()
}

/// The silences (ms) longer than `min_ms` between consecutive requests in `records`, with the
/// number of requests before each silence since the previous one.
fn silences(records: &[RequestRecord], min_ms: u64) -> Vec<(usize, u64)> {
    let mut out = Vec::new();
    let mut run = 1;
    for pair in records.windows(2) {
        let gap = pair[1].ts_ms.saturating_sub(pair[0].ts_ms);
        if gap > min_ms {
            out.push((run, gap));
            run = 1;
        } else {
            run += 1;
        }
    }
    out
}

/// §5 item 26 with a short base: one of three endpoints answers 500. After its 3rd 500 in a row it
/// gets nothing for the base ejection time (2 s) rounded up to the 1 s sweep; back, it fails 3 more
/// times and is ejected for 2 × 2 s, then 3 × 2 s. Clients see its 500s only, 3 per round.
#[test]
fn a_failing_endpoint_is_ejected_for_base_then_twice_then_three_times() -> Result<()> {
    let fx = fixture(125, &["v1", "v2", "v3"], &["v3"])?;
    fx.config.write(
        "destinationrule.yaml",
        &destination_rule(Some(
            "{consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 2s, maxEjectionPercent: 100}",
        )),
    )?;
    let _keel = fx.start_keel_strict()?;

    // Up to 3 + 5 + 7 s of ejection (sweep rounding) plus the failing rounds; ≤ 3,000 requests.
    let reports = drive(
        &fx,
        Duration::from_secs(17),
        Duration::from_millis(20),
        3_000,
    )?;
    let bad = records(&fx, "reviews-v3")?;
    let ok = count(&fx, "reviews-v1")? + count(&fx, "reviews-v2")?;
    ensure!(
        total_status(&reports, 500) == bad.len() as u64,
        "every request that reached v3 (and only those) failed: {} x 500 for {} requests at v3",
        total_status(&reports, 500),
        bad.len()
    );
    ensure!(
        total_status(&reports, 200) == ok as u64,
        "all other requests were served by v1 and v2"
    );

    // Ejections show as silences in v3's log; requests to it are otherwise a few ms apart.
    let quiet = silences(&bad, 900);
    ensure!(
        quiet.len() >= 3,
        "v3 should have been ejected 3 times in 17 s: silences {quiet:?} in {} requests",
        bad.len()
    );
    for (i, (before, gap)) in quiet.iter().take(3).enumerate() {
        let k = i as u64 + 1;
        ensure!(
            *before == 3,
            "ejection {k}: exactly 3 consecutive 500s from v3 before it, got {before}"
        );
        // k × 2 s, un-ejected at the first 1 s sweep after that.
        let (lo, hi) = (k * 2_000 - 100, k * 2_000 + 1_300);
        ensure!(
            (lo..=hi).contains(gap),
            "ejection {k} should last {}–{} s (k × base, rounded up to the sweep), v3 was silent \
             for {gap} ms; silences {quiet:?}",
            k * 2,
            k * 2 + 1
        );
    }
    Ok(())
}

/// §5 items 26–27: without `outlierDetection` nothing is ejected; with the block and no
/// `consecutive5xxErrors`, Envoy's default of 5 applies.
#[test]
fn no_block_no_ejection_and_the_default_is_five_errors() -> Result<()> {
    let fx = fixture(129, &["v1", "v2", "v3"], &["v3"])?;
    fx.config
        .write("destinationrule.yaml", &destination_rule(None))?;
    let mut keel = fx.start_keel_strict()?;
    let r = fx.get(&reviews(60))?;
    let bad = count(&fx, "reviews-v3")?;
    ensure!(
        r.status(500) == bad as u64 && bad >= 10,
        "without outlierDetection v3 keeps its share (≈20 of 60): {bad} requests, {r:?}"
    );
    keel.terminate(Duration::from_secs(10))?;

    fx.config.write(
        "destinationrule.yaml",
        &destination_rule(Some(
            "{interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}",
        )),
    )?;
    let _keel = fx.start_keel_strict()?;
    let before = count(&fx, "reviews-v3")?;
    let r = fx.get(&reviews(60))?;
    let after = count(&fx, "reviews-v3")?;
    ensure!(
        after - before == 5 && r.status(500) == 5 && r.status(200) == 55,
        "v3 is ejected after its 5th 500 and gets nothing more for 60 s: {} requests, {r:?}",
        after - before
    );
    Ok(())
}

/// §5 item 27: with the default `maxEjectionPercent` (10%) and 3 endpoints, the first ejection
/// happens (0% < 10%) and the second is refused (33% ≥ 10%): one failing endpoint keeps its share.
#[test]
fn max_ejection_percent_keeps_the_second_failing_endpoint() -> Result<()> {
    let fx = fixture(126, &["v1", "v2", "v3"], &["v2", "v3"])?;
    fx.config.write(
        "destinationrule.yaml",
        &destination_rule(Some(
            "{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 60s}",
        )),
    )?;
    let _keel = fx.start_keel_strict()?;
    // Both failing endpoints have failed at least once after 10 requests.
    fx.get(&reviews(10))?;
    let (v2, v3) = (count(&fx, "reviews-v2")?, count(&fx, "reviews-v3")?);
    ensure!(
        v2 >= 1 && v3 >= 1,
        "both failing endpoints were tried: {v2}, {v3}"
    );
    let r = fx.get(&reviews(60))?;
    let (d2, d3) = (
        count(&fx, "reviews-v2")? - v2,
        count(&fx, "reviews-v3")? - v3,
    );
    let (ejected, kept) = if d2 == 0 { (d3, d2) } else { (d2, d3) };
    ensure!(
        kept == 0 && ejected >= 15,
        "exactly one failing endpoint is ejected, the other keeps ≈half the traffic: v2 got {d2}, \
         v3 got {d3} of 60 ({r:?})"
    );
    ensure!(
        r.status(500) == ejected as u64,
        "clients see the kept endpoint's 500s: {r:?}"
    );
    Ok(())
}

/// §5 item 27: every endpoint ejected and `minHealthPercent` 0 (Istio's default: no panic) → 503
/// `no healthy upstream` without any upstream request.
#[test]
fn all_ejected_without_panic_is_no_healthy_upstream() -> Result<()> {
    let fx = fixture(127, &["v1", "v2"], &["v1", "v2"])?;
    fx.config.write(
        "destinationrule.yaml",
        &destination_rule(Some(
            "{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}",
        )),
    )?;
    let _keel = fx.start_keel_strict()?;
    let first = fx.get(&reviews(10))?;
    let tried = count(&fx, "reviews-v1")? + count(&fx, "reviews-v2")?;
    ensure!(
        tried == 2 && first.status(500) == 2,
        "each endpoint is ejected after its first 500: {tried} upstream requests, {first:?}"
    );
    ensure!(
        first.with_body(503, NO_HEALTHY_UPSTREAM) == 8,
        "then 503 {NO_HEALTHY_UPSTREAM:?}: {first:?}"
    );
    let r = fx.get(&reviews(20))?;
    ensure!(
        r.with_body(503, NO_HEALTHY_UPSTREAM) == 20,
        "all ejected: 503 {NO_HEALTHY_UPSTREAM:?}: {r:?}"
    );
    let after = count(&fx, "reviews-v1")? + count(&fx, "reviews-v2")?;
    ensure!(
        after == 2,
        "no request reaches an ejected endpoint: {after}"
    );
    Ok(())
}

/// §5 item 27: with `minHealthPercent: 50`, fewer than half healthy is panic: Envoy balances over
/// every endpoint, ejected ones included, and clients see the upstreams' own 500s.
#[test]
fn panic_threshold_uses_every_endpoint() -> Result<()> {
    let fx = fixture(128, &["v1", "v2"], &["v1", "v2"])?;
    fx.config.write(
        "destinationrule.yaml",
        &destination_rule(Some(
            "{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 60s, \
             maxEjectionPercent: 100, minHealthPercent: 50}",
        )),
    )?;
    let _keel = fx.start_keel_strict()?;
    let r = fx.get(&reviews(40))?;
    let (v1, v2) = (count(&fx, "reviews-v1")?, count(&fx, "reviews-v2")?);
    ensure!(
        r.status(500) == 40 && v1 + v2 == 40,
        "in panic every request goes upstream: {v1} + {v2} upstream requests, {r:?}"
    );
    ensure!(
        v1 >= 10 && v2 >= 10,
        "both ejected endpoints are used: v1 {v1}, v2 {v2}"
    );
    ensure!(
        r.with_body(503, NO_HEALTHY_UPSTREAM) == 0,
        "never {NO_HEALTHY_UPSTREAM:?} in panic: {r:?}"
    );
    Ok(())
}
