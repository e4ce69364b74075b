//! Reliability test F2 (no cross-tenant reuse): two client pods hammer the same upstream at once,
//! one of them also abandoning slow requests mid-flight. Every response must reach the request
//! that caused it, and by default (per-client upstream state, as sidecars have it) the two pods
//! never share an upstream connection. With `--upstream-state node` the pools are shared, and an
//! abandoned request must still never leave its response for another pod's request.
//!
//! Subnet indices 215..=216 belong to this file.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::{reviews_vip, Fixture, REVIEWS_URL};
use keel_tests::{figures, HttpGet, HttpGetReport, Keel, KeelOptions, Pod, RequestRecord};

const PREFIX: &str = "kttenant";
const TAG_HEADER: &str = "x-keel-test-tag";

/// Pods `tenant-a` and `tenant-b` calling reviews (one logged backend, `reviews-v1`).
fn tenants(index: u8) -> Result<(Fixture, Pod, Pod)> {
    let mut fx = Fixture::reviews_logged(PREFIX, index, &["v1"])?;
    let a = fx.add_pod("tenant-a", 3, &[("app", "tenant-a")], &[], false)?;
    let b = fx.add_pod("tenant-b", 4, &[("app", "tenant-b")], &[], false)?;
    Ok((fx, a, b))
}

fn start(fx: &Fixture, extra: &[&str]) -> Result<Keel> {
    let mut opts = KeelOptions::new(&fx.net, fx.config.path())?;
    opts.extra_args = extra.iter().map(|s| (*s).to_string()).collect();
    Keel::start_with(&fx.net, opts)
}

/// `requests` tagged GETs of reviews from each of `a` and `b` at once (8 connections each); while
/// they run, `a` also sends requests the backend answers after 300 ms and abandons each after 50 ms.
fn hammer(fx: &Fixture, a: &Pod, b: &Pod, requests: u32) -> Result<[HttpGetReport; 3]> {
    let tagged = |tag: &str| {
        HttpGet::new(REVIEWS_URL)
            .connect_to(reviews_vip())
            .count(requests)
            .concurrency(8)
            .tag(tag)
    };
    let abandoned = HttpGet::new(format!("{REVIEWS_URL}delay/300"))
        .connect_to(reviews_vip())
        .count(20)
        .concurrency(4)
        .request_timeout(Duration::from_millis(50))
        .tag("a-abandoned");
    std::thread::scope(|scope| {
        let ra = scope.spawn(|| fx.agent.http_get(a, &tagged("a")));
        let rb = scope.spawn(|| fx.agent.http_get(b, &tagged("b")));
        let rx = scope.spawn(|| fx.agent.http_get(a, &abandoned));
        let join = |h: std::thread::ScopedJoinHandle<'_, Result<HttpGetReport>>| {
            h.join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))?
        };
        Ok([join(ra)?, join(rb)?, join(rx)?])
    })
}

/// Hammers (see [`hammer`]), checks that every response reached its own request, records the
/// shared figures under `scenario`, and returns the backend's request log.
fn hammer_and_check(fx: &Fixture, a: &Pod, b: &Pod, scenario: &str) -> Result<Vec<RequestRecord>> {
    let requests = figures::sized(1_000, 5_000);
    let [ra, rb, abandoned] = hammer(fx, a, b, requests)?;
    check_no_mismatch("tenant-a", &ra, requests)?;
    check_no_mismatch("tenant-b", &rb, requests)?;
    ensure!(
        abandoned.client_timeouts == 20 && abandoned.tag_mismatches == 0,
        "tenant-a's slow requests are all abandoned by the client: {abandoned:?}"
    );
    figures::record(
        scenario,
        "interleaved requests",
        f64::from(2 * requests),
        "count",
    );
    figures::record(
        scenario,
        "responses delivered to the wrong request",
        (ra.tag_mismatches + rb.tag_mismatches) as f64,
        "count",
    );
    fx.log("reviews-v1")?.read()
}

/// Every tagged request got its own echo back, with a 200.
fn check_no_mismatch(name: &str, r: &HttpGetReport, requests: u32) -> Result<()> {
    ensure!(
        r.status(200) == u64::from(requests) && r.tag_mismatches == 0 && r.errors == 0,
        "{name}: {} of {requests} got 200, {} responses belonged to another request, {} errors \
         (first {:?})",
        r.status(200),
        r.tag_mismatches,
        r.errors,
        r.first_error
    );
    Ok(())
}

/// The upstream connections (keel's source ports as the backend saw them) that carried requests
/// whose tag starts with `prefix`.
fn upstream_conns(records: &[RequestRecord], prefix: &str) -> BTreeSet<String> {
    records
        .iter()
        .filter(|r| r.header(TAG_HEADER).is_some_and(|t| t.starts_with(prefix)))
        .map(|r| r.peer.clone())
        .collect()
}

#[test]
fn chaos_f2_per_client_pools_never_mix_tenants() -> Result<()> {
    let (fx, a, b) = tenants(215)?;
    let _keel = start(&fx, &[])?;
    let scenario = "F2 no cross-tenant reuse (per-client pools)";
    let records = hammer_and_check(&fx, &a, &b, scenario)?;
    let (conns_a, conns_b) = (
        upstream_conns(&records, "a-"),
        upstream_conns(&records, "b-"),
    );
    let shared: Vec<_> = conns_a.intersection(&conns_b).collect();
    ensure!(
        !conns_a.is_empty() && !conns_b.is_empty() && shared.is_empty(),
        "per-client pools: tenant-a used {} upstream connections, tenant-b {}, {} of them shared: \
         {shared:?}",
        conns_a.len(),
        conns_b.len(),
        shared.len()
    );
    figures::record(
        scenario,
        "upstream connections shared by the two pods",
        shared.len() as f64,
        "count",
    );
    Ok(())
}

#[test]
fn chaos_f2_shared_pools_never_hand_a_response_to_another_request() -> Result<()> {
    let (fx, a, b) = tenants(216)?;
    let keel = start(&fx, &["--upstream-state", "node"])?;
    let scenario = "F2 no cross-tenant reuse (node-wide pools)";
    let records = hammer_and_check(&fx, &a, &b, scenario)?;
    // The mode really shares: both pods' requests rode at least one common upstream connection.
    let (conns_a, conns_b) = (
        upstream_conns(&records, "a-"),
        upstream_conns(&records, "b-"),
    );
    ensure!(
        conns_a.intersection(&conns_b).next().is_some(),
        "node-wide state should pool both pods' requests together: {} and {} connections, none \
         shared",
        conns_a.len(),
        conns_b.len()
    );
    let stats = keel.stats()?;
    figures::record(
        scenario,
        "upstream connections opened",
        stats
            .as_object()
            .context("stats are not an object")?
            .iter()
            .filter(|(k, _)| k.ends_with(".upstream_cx_total"))
            .filter_map(|(_, v)| v.as_u64())
            .sum::<u64>() as f64,
        "count",
    );
    Ok(())
}
