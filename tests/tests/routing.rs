//! Pod -> Service VIP through keel, and weighted subset routing (VirtualService + DestinationRule).
//!
//! Subnet indices 10..=19 belong to this file.

mod common;

use anyhow::{ensure, Context, Result};
use common::{
    ensure_all_ok_via_proxy, percent, records_from, reviews_destination_rule,
    reviews_weighted_virtual_service, Fixture, REVIEWS_FQDN,
};
use keel_tests::HttpGet;

const PREFIX: &str = "ktroute";
/// Requests per weighted run; with 2,000 the ±3-point band is over 3 standard deviations wide for
/// every weight used here, so a correct random picker fails it less than once in ~500 runs.
const SPLIT_REQUESTS: u32 = 2_000;
/// Allowed deviation from a configured weight, in percentage points.
const TOLERANCE_POINTS: f64 = 3.0;

#[test]
fn pod_to_service_vip_is_served_through_keel() -> Result<()> {
    let fx = Fixture::reviews(PREFIX, 10, &["v1"])?;
    let keel = fx.start_keel()?;

    let r = fx.get_reviews(5)?;
    ensure_all_ok_via_proxy(&r, &fx.net)?;
    ensure!(r.by_pod.get("reviews-v1") == Some(&5), "{r:?}");
    let body = r.last_body.as_ref().context("no echo body")?;
    ensure!(
        body.headers.get("host").map(String::as_str) == Some("reviews:9080"),
        "the Host header must reach the backend unchanged: {body:?}"
    );

    // keel attributes the connection to the client pod from the kernel's record.
    let records = keel.connections()?;
    let ours = records_from(&records, &r.local_addrs);
    ensure!(
        !ours.is_empty(),
        "no /debug/connections entry for {:?}: {records:?}",
        r.local_addrs
    );
    for rec in ours {
        ensure!(rec.source_pod == "default/sleep", "{rec:?}");
        ensure!(rec.original_dst == "10.96.0.20:9080", "{rec:?}");
        ensure!(rec.service == REVIEWS_FQDN, "{rec:?}");
        ensure!(rec.protocol == "http", "{rec:?}");
    }
    Ok(())
}

/// Sends `SPLIT_REQUESTS` requests and checks each version's share against its weight.
fn check_split(fx: &Fixture, req: &HttpGet, weights: &[(&str, u32)]) -> Result<()> {
    let r = fx.agent.http_get(&fx.sleep, req)?;
    ensure_all_ok_via_proxy(&r, &fx.net)?;
    let mut table = String::new();
    let mut bad = Vec::new();
    for (version, weight) in weights {
        let got = percent(
            r.by_version.get(*version).copied().unwrap_or(0),
            r.responses,
        );
        table.push_str(&format!("{version}: weight {weight} got {got:.1}%\n"));
        if (got - f64::from(*weight)).abs() > TOLERANCE_POINTS {
            bad.push(*version);
        }
    }
    let unexpected: Vec<&String> = r
        .by_version
        .keys()
        .filter(|v| !weights.iter().any(|(w, _)| w == v))
        .collect();
    ensure!(
        bad.is_empty() && unexpected.is_empty(),
        "split outside ±{TOLERANCE_POINTS} points for {bad:?} (unexpected versions {unexpected:?}):\n{table}{r:?}"
    );
    Ok(())
}

#[test]
fn weighted_split_10_10_80_over_2000_requests() -> Result<()> {
    let fx = Fixture::reviews(PREFIX, 11, &["v1", "v2", "v3"])?;
    fx.config.write(
        "destinationrule.yaml",
        &reviews_destination_rule(&["v1", "v2", "v3"]),
    )?;
    let weights = [("v1", 10), ("v2", 10), ("v3", 80)];
    fx.config.write(
        "virtualservice.yaml",
        &reviews_weighted_virtual_service(&weights),
    )?;
    let _keel = fx.start_keel()?;

    // Keep-alive: weights apply per request, not per connection.
    let req = HttpGet::new(common::REVIEWS_URL)
        .connect_to(common::reviews_vip())
        .count(SPLIT_REQUESTS);
    check_split(&fx, &req, &weights)
}

#[test]
fn weighted_split_25_75_over_2000_requests() -> Result<()> {
    let fx = Fixture::reviews(PREFIX, 12, &["v1", "v2", "v3"])?;
    fx.config.write(
        "destinationrule.yaml",
        &reviews_destination_rule(&["v1", "v2", "v3"]),
    )?;
    let weights = [("v1", 25), ("v3", 75)];
    fx.config.write(
        "virtualservice.yaml",
        &reviews_weighted_virtual_service(&weights),
    )?;
    let _keel = fx.start_keel()?;

    // A new connection per request this time, so the per-connection path is covered too; v2 has a
    // subset but no weight and must get nothing.
    let req = HttpGet::new(common::REVIEWS_URL)
        .connect_to(common::reviews_vip())
        .count(SPLIT_REQUESTS)
        .new_conn();
    check_split(&fx, &req, &weights)
}
