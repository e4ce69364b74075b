//! Hot reload under load: config changes apply within a second, invalid ones are rejected while the
//! last good config keeps serving, and no request fails meanwhile.
//!
//! Subnet indices 60..=64 belong to this file (62: the protocol change).

mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::{reviews_destination_rule, reviews_vip, Fixture, REVIEWS_URL};

const PREFIX: &str = "ktreload";
/// reliability-tests.md C2/C4: changes under 1,000 rps on keep-alive connections.
const RATE: u32 = 1_000;
const CONNECTIONS: u32 = 4;
const VALID_CHANGES: usize = 50;
/// One invalid write after every fifth valid change.
const INVALID_EVERY: usize = 5;
/// Time between valid changes; the last `SPACING - VISIBLE_WITHIN` of each is checked.
const SPACING: Duration = Duration::from_millis(1300);
const VISIBLE_WITHIN: Duration = Duration::from_millis(1000);

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A valid VirtualService sending all default traffic to `version`; the shape varies with `i` so
/// weights, header matches and timeouts all change over the run.
fn valid_vs(i: usize, version: &str) -> String {
    let other = if version == "v1" { "v2" } else { "v1" };
    let head =
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\n  \
                namespace: default\nspec:\n  hosts:\n  - reviews\n  http:\n";
    let body = match i % 3 {
        // Weights: everything to `version`, the other subset listed at weight 0.
        0 => format!(
            "  - route:\n    - destination:\n        host: reviews\n        subset: {version}\n      weight: 100\n    \
             - destination:\n        host: reviews\n        subset: {other}\n      weight: 0\n"
        ),
        // Headers: a rule for a header the load never sends, then the catch-all.
        1 => format!(
            "  - match:\n    - headers:\n        x-canary-{i}:\n          exact: \"yes\"\n    route:\n    \
             - destination:\n        host: reviews\n        subset: {other}\n  - route:\n    \
             - destination:\n        host: reviews\n        subset: {version}\n"
        ),
        // Timeouts: a generous route timeout that changes every time.
        _ => format!(
            "  - timeout: {}ms\n    route:\n    - destination:\n        host: reviews\n        subset: {version}\n",
            5000 + i
        ),
    };
    format!("{head}{body}")
}

/// Invalid VirtualServices of different kinds; each must be rejected.
fn invalid_vs(k: usize) -> String {
    let head =
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\n  \
                namespace: default\nspec:\n  hosts:\n  - reviews\n  http:\n";
    match k % 5 {
        0 => format!("{head}  - route:\n    - destination:\n        host: reviews\n        subset: v1\n      weight: -5\n    - destination:\n        host: reviews\n        subset: v2\n      weight: 10\n"),
        1 => format!("{head}  - match:\n    - uri:\n        regex: \"(unclosed\"\n    route:\n    - destination:\n        host: reviews\n"),
        2 => format!("{head}  - route:\n    - destination:\n        host: reviews\n    routeTimeout: 5s\n"),
        3 => "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: [broken\n".to_string(),
        _ => format!("{head}  - route:\n    - destination:\n        host: reviews\n    redirect:\n      uri: /elsewhere\n"),
    }
}

#[test]
fn reload_under_load_applies_changes_within_a_second_and_drops_nothing() -> Result<()> {
    let fx = Fixture::reviews(PREFIX, 60, &["v1", "v2"])?;
    fx.config.write(
        "destinationrule.yaml",
        &reviews_destination_rule(&["v1", "v2"]),
    )?;
    fx.config.write("virtualservice.yaml", &valid_vs(0, "v1"))?;
    let keel = fx.start_keel()?;

    let warmup = Duration::from_millis(1500);
    let run = warmup + SPACING * VALID_CHANGES as u32 + Duration::from_secs(1);
    let agent = fx.agent.clone();
    let sleep = fx.sleep.clone();
    let load = std::thread::spawn(move || {
        agent.http_load(&sleep, REVIEWS_URL, reviews_vip(), RATE, CONNECTIONS, run)
    });

    // (time written, Unix ms; version all traffic must reach from then on)
    let mut changes: Vec<(u64, &str)> = Vec::new();
    let mut invalid_written = 0;
    let started = Instant::now();
    std::thread::sleep(warmup);
    for i in 0..VALID_CHANGES {
        let version = if i % 2 == 0 { "v2" } else { "v1" };
        let due = warmup + SPACING * i as u32;
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        changes.push((unix_ms(), version));
        fx.config
            .write("virtualservice.yaml", &valid_vs(i + 1, version))?;
        if i % INVALID_EVERY == INVALID_EVERY - 1 {
            std::thread::sleep(SPACING / 3);
            fx.config
                .write("virtualservice.yaml", &invalid_vs(invalid_written))?;
            invalid_written += 1;
        }
    }
    let report = load
        .join()
        .map_err(|_| anyhow::anyhow!("load thread panicked"))??;

    let failed: Vec<_> = report.samples.iter().filter(|s| s.1 != 200).collect();
    ensure!(
        failed.is_empty(),
        "{} of {} requests failed during reload, first: {:?}",
        failed.len(),
        report.samples.len(),
        failed.first()
    );
    ensure!(
        report.samples.len() as f64 >= f64::from(RATE) * run.as_secs_f64() * 0.8,
        "the load generator fell short: {} requests in {run:?}",
        report.samples.len()
    );

    // Each change: after VISIBLE_WITHIN every request reaches the new version, until the next one.
    let mut worst_switch_ms = 0u64;
    for (n, &(at, version)) in changes.iter().enumerate() {
        let until = changes
            .get(n + 1)
            .map(|c| c.0)
            .unwrap_or(at + SPACING.as_millis() as u64);
        let window_start = at + VISIBLE_WITHIN.as_millis() as u64;
        let in_window: Vec<_> = report
            .samples
            .iter()
            .filter(|s| s.0 >= window_start && s.0 < until)
            .collect();
        ensure!(
            !in_window.is_empty(),
            "change {n}: no requests between {window_start} and {until}"
        );
        let wrong = in_window.iter().filter(|s| s.2 != version).count();
        ensure!(
            wrong == 0,
            "change {n} (to {version}) not fully visible after {VISIBLE_WITHIN:?}: {wrong} of {} requests went elsewhere",
            in_window.len()
        );
        // How long the switch actually took: the last request started after the change that still
        // reached the old version.
        if let Some(last_old) = report
            .samples
            .iter()
            .filter(|s| s.0 >= at && s.0 < until && s.2 != version)
            .map(|s| s.0)
            .max()
        {
            worst_switch_ms = worst_switch_ms.max(last_old.saturating_sub(at));
        }
    }

    let stats = keel.stats()?;
    let rejections = stats
        .get("keel.config_rejections")
        .and_then(|v| v.as_u64())
        .context("keel.config_rejections in /stats")?;
    ensure!(
        rejections >= invalid_written as u64,
        "{invalid_written} invalid configs written, {rejections} rejections counted: {stats}"
    );
    eprintln!(
        "reload under load: {} requests at {RATE} rps over {} connections, {} valid + {invalid_written} invalid changes, \
         0 failed, slowest switch {worst_switch_ms} ms",
        report.samples.len(),
        report.connections,
        changes.len()
    );
    Ok(())
}

#[test]
fn rejected_config_is_reported_and_the_last_good_one_keeps_serving() -> Result<()> {
    let fx = Fixture::reviews(PREFIX, 61, &["v1", "v2"])?;
    fx.config.write(
        "destinationrule.yaml",
        &reviews_destination_rule(&["v1", "v2"]),
    )?;
    fx.config.write("virtualservice.yaml", &valid_vs(0, "v2"))?;
    let keel = fx.start_keel()?;
    let r = fx.get_reviews(20)?;
    ensure!(r.by_version.get("v2") == Some(&20), "{r:?}");

    fx.config.write("virtualservice.yaml", &invalid_vs(0))?;
    std::thread::sleep(Duration::from_millis(1200));
    let status = keel.admin_get("/config_status")?;
    let errors = status
        .get("errors")
        .and_then(|e| e.as_array())
        .context("errors in /config_status")?;
    let text = format!("{errors:?}");
    ensure!(
        text.contains("virtualservice.yaml")
            && text.contains("VirtualService default/reviews")
            && text.contains("weight"),
        "the rejection must name file, resource and field: {status}"
    );
    let r = fx.get_reviews(20)?;
    ensure!(
        r.by_version.get("v2") == Some(&20),
        "the last good config must keep serving: {r:?}"
    );

    // A later valid change applies.
    fx.config.write("virtualservice.yaml", &valid_vs(1, "v1"))?;
    std::thread::sleep(Duration::from_millis(1200));
    let r = fx.get_reviews(20)?;
    ensure!(r.by_version.get("v1") == Some(&20), "{r:?}");
    Ok(())
}

/// C5: a push that changes a port's protocol (HTTP to TCP) is a listener change. The HTTP
/// connections open to that port drain: each answers its next response with `Connection: close`,
/// no request fails, and the clients' new connections follow the new protocol (relayed as TCP, so
/// the backend's own response headers arrive, without keel's `server: envoy`).
#[test]
fn protocol_change_drains_open_http_connections_and_drops_nothing() -> Result<()> {
    let fx = Fixture::reviews(PREFIX, 62, &["v1"])?;
    let keel = fx.start_keel()?;
    let before = fx.reviews_once("/", &[])?;
    ensure!(
        before.status(200) == 1 && before.last_header_value("server") == Some("envoy"),
        "before the change: {:?}, server {:?}",
        before.by_status,
        before.last_header_value("server")
    );
    let run = Duration::from_secs(4);
    let agent = fx.agent.clone();
    let sleep = fx.sleep.clone();
    let load = std::thread::spawn(move || {
        agent.http_load(&sleep, REVIEWS_URL, reviews_vip(), 200, CONNECTIONS, run)
    });
    std::thread::sleep(Duration::from_millis(1500));
    let as_tcp = fx
        .services
        .join("---\n")
        .replace("- name: http\n", "- name: tcp\n");
    ensure!(
        as_tcp.contains("- name: tcp\n"),
        "no http port to rename in\n{as_tcp}"
    );
    fx.config.write("services.yaml", &as_tcp)?;
    let report = load
        .join()
        .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
    let failed = report.samples.iter().filter(|(_, s, _)| *s != 200).count();
    ensure!(
        failed == 0 && !report.samples.is_empty(),
        "{failed} of {} requests failed across the protocol change",
        report.samples.len()
    );
    let stats = keel.stats()?;
    let drained = stats["keel.downstream_cx_listener_change_drain"]
        .as_u64()
        .with_context(|| format!("no keel.downstream_cx_listener_change_drain in {stats}"))?;
    ensure!(
        drained == u64::from(CONNECTIONS),
        "{drained} connections drained for the protocol change, expected the {CONNECTIONS} open"
    );
    // The drained clients reconnected, and their new connections are TCP relays.
    ensure!(
        report.connections >= u64::from(CONNECTIONS) * 2,
        "the load opened {} connections: the drained ones did not reconnect",
        report.connections
    );
    let after = fx.reviews_once("/", &[])?;
    ensure!(
        after.status(200) == 1 && after.last_header_value("server") != Some("envoy"),
        "after the change: {:?}, server {:?} (still served as HTTP?)",
        after.by_status,
        after.last_header_value("server")
    );
    Ok(())
}
