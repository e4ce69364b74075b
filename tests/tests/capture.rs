//! What is and is not captured: no redirect loop when keel runs inside its own capture root; direct
//! connections to keel's port (no kernel record) are closed at once; pods outside the root, pods
//! annotated `keel.io/capture: "false"`, loopback and the pod's own IP go direct; when the kernel's
//! connection maps are full, new connections go direct and the recorded ones keep working.
//!
//! "Not redirected" is observable because pods have no default route: a VIP connect that keel does not
//! redirect fails at once with "network unreachable" (and the host blackholes the service CIDR).
//!
//! Subnet indices 30..=39 belong to this file.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::{ensure_all_ok_via_proxy, records_from, reviews_vip, Fixture, REVIEWS_URL};
use keel_tests::{ConnectOutcome, HttpGet, Keel, KeelOptions};

const PREFIX: &str = "ktcap";

/// `keel.connections_refused.no_record` from `/stats` (0 if absent would hide a missing counter, so
/// it must be there).
fn refused_no_record(keel: &Keel) -> Result<u64> {
    let stats = keel.stats()?;
    stats["keel.connections_refused.no_record"]
        .as_u64()
        .with_context(|| {
            format!("/stats has no numeric keel.connections_refused.no_record: {stats}")
        })
}

#[test]
fn no_loop_when_keel_runs_inside_its_own_capture_root() -> Result<()> {
    let fx = Fixture::reviews(PREFIX, 30, &["v1"])?;
    let mut opts = KeelOptions::new(&fx.net, fx.config.path())?;
    opts.process_cgroup = fx.net.cgroup_root().join("keel-system").join("keel");
    let keel = Keel::start_with(&fx.net, opts)?;
    let before = refused_no_record(&keel)?;

    let req = HttpGet::new(REVIEWS_URL)
        .connect_to(reviews_vip())
        .count(20)
        .new_conn();
    let r = fx.agent.http_get(&fx.sleep, &req)?;
    // If keel's own upstream connects were redirected back to itself, requests would fail or loop and
    // the backend would not see keel's bridge address as its peer.
    ensure_all_ok_via_proxy(&r, &fx.net)?;

    let records = keel.connections()?;
    let ours = records_from(&records, &r.local_addrs);
    ensure!(
        ours.len() == 20,
        "20 client connections expected: {records:?}"
    );
    let bridge = fx.net.bridge_ip().to_string();
    let from_keel: Vec<_> = records
        .iter()
        .filter(|rec| {
            rec.source_addr.starts_with(&format!("{bridge}:")) || rec.source_pod.is_empty()
        })
        .collect();
    ensure!(
        from_keel.is_empty(),
        "keel accepted its own upstream connections (a loop): {from_keel:?}"
    );
    ensure!(
        refused_no_record(&keel)? == before,
        "keel refused connections without a record during the run (its own upstreams looped back?)"
    );
    Ok(())
}

#[test]
fn direct_connection_to_the_proxy_port_is_closed_at_once() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 31, &["v1"])?;
    let stray = fx.add_pod("stray", 40, &[("app", "stray")], &[], true)?;
    let keel = fx.start_keel()?;
    let before = refused_no_record(&keel)?;
    let proxy = fx.net.proxy_addr();

    let attempts = [
        (&fx.sleep, None),
        (
            &fx.sleep,
            Some("GET / HTTP/1.1\r\nHost: reviews:9080\r\n\r\n"),
        ),
        (&stray, Some("GET / HTTP/1.1\r\nHost: reviews:9080\r\n\r\n")),
    ];
    for (pod, send) in attempts {
        let c = fx.agent.tcp_connect(pod, proxy, send)?;
        ensure!(
            c.connected
                && matches!(c.outcome, ConnectOutcome::Eof | ConnectOutcome::Reset)
                && c.data.is_empty(),
            "a connection from {} straight to keel's port (no kernel record) must be closed with no \
             data: {c:?}",
            pod.full_name()
        );
        ensure!(
            c.elapsed_ms < 1000,
            "it must be closed at once, took {} ms",
            c.elapsed_ms
        );
    }
    let after = refused_no_record(&keel)?;
    ensure!(
        after >= before + attempts.len() as u64,
        "refused_no_record went from {before} to {after}, expected +{}",
        attempts.len()
    );

    // The normal path still works.
    ensure_all_ok_via_proxy(&fx.get_reviews(3)?, &fx.net)?;
    Ok(())
}

#[test]
fn pod_outside_the_cgroup_root_is_not_redirected() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 32, &["v1"])?;
    // Same labels and a Pod resource like any client: only its cgroup placement differs.
    let stray = fx.add_pod("stray", 40, &[("app", "sleep")], &[], true)?;
    let keel = fx.start_keel()?;

    ensure_all_ok_via_proxy(&fx.get_reviews(3)?, &fx.net)?;
    let c = fx.agent.tcp_connect(&stray, reviews_vip(), None)?;
    ensure!(
        c.outcome == ConnectOutcome::Unreachable,
        "a pod outside the root must not be redirected (expected unreachable): {c:?}"
    );
    let stray_ip = format!("{}:", stray.ip);
    ensure!(
        !keel
            .connections()?
            .iter()
            .any(|r| r.source_addr.starts_with(&stray_ip)),
        "keel saw a connection from the uncaptured pod"
    );
    Ok(())
}

#[test]
fn pod_annotated_capture_false_is_not_redirected() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 33, &["v1"])?;
    let nocap = fx.add_pod(
        "nocap",
        41,
        &[("app", "sleep")],
        &[("keel.io/capture", "false")],
        false,
    )?;
    let keel = fx.start_keel()?;

    ensure_all_ok_via_proxy(&fx.get_reviews(3)?, &fx.net)?;
    let c = fx.agent.tcp_connect(&nocap, reviews_vip(), None)?;
    ensure!(
        c.outcome == ConnectOutcome::Unreachable,
        "a pod annotated keel.io/capture=false must not be redirected (expected unreachable): {c:?}"
    );
    let nocap_ip = format!("{}:", nocap.ip);
    ensure!(
        !keel
            .connections()?
            .iter()
            .any(|r| r.source_addr.starts_with(&nocap_ip)),
        "keel saw a connection from the pod annotated capture=false"
    );
    Ok(())
}

#[test]
fn loopback_and_the_pods_own_ip_are_not_redirected() -> Result<()> {
    let fx = Fixture::reviews(PREFIX, 34, &["v1"])?;
    // The client pod itself serves on the service port, on all its addresses.
    let _own = fx
        .agent
        .http_server(&fx.sleep, common::REVIEWS_PORT, "self")?;
    let keel = fx.start_keel()?;

    let own_ip = fx.sleep.ip.to_string();
    for (url, peer_ip) in [
        (
            "http://127.0.0.1:9080/".to_string(),
            "127.0.0.1".to_string(),
        ),
        (format!("http://{own_ip}:9080/"), own_ip.clone()),
    ] {
        let r = fx.agent.http_get(
            &fx.sleep,
            &HttpGet::new(&url).count(3).timeout(Duration::from_secs(10)),
        )?;
        ensure!(
            r.status(200) == 3
                && r.by_pod.get("sleep") == Some(&3)
                && r.by_peer_ip.get(&peer_ip) == Some(&3),
            "{url} must be answered by the pod itself, directly (peer {peer_ip}): {r:?}"
        );
    }
    // While the VIP on the same port still goes through keel to reviews.
    let r = fx.get_reviews(3)?;
    ensure_all_ok_via_proxy(&r, &fx.net)?;
    ensure!(r.by_pod.get("reviews-v1") == Some(&3), "{r:?}");

    let leaked: Vec<_> = keel
        .connections()?
        .into_iter()
        .filter(|rec| {
            rec.original_dst.starts_with("127.")
                || rec.original_dst.starts_with(&format!("{own_ip}:"))
        })
        .collect();
    ensure!(
        leaked.is_empty(),
        "loopback/own-IP connections went through keel: {leaked:?}"
    );
    Ok(())
}

/// `keel.kernel_<name>` from `/stats`.
fn kernel_stat(keel: &Keel, name: &str) -> Result<u64> {
    let stats = keel.stats()?;
    stats[format!("keel.kernel_{name}").as_str()]
        .as_u64()
        .with_context(|| format!("/stats has no numeric keel.kernel_{name}: {stats}"))
}

#[test]
fn full_connection_map_sends_new_connections_direct_never_misrouted() -> Result<()> {
    const CAPACITY: u32 = 3;
    let fx = Fixture::reviews(PREFIX, 35, &["v1"])?;
    let mut opts = KeelOptions::new(&fx.net, fx.config.path())?;
    opts.extra_args = vec!["--max-connections".into(), CAPACITY.to_string()];
    let keel = Keel::start_with(&fx.net, opts)?;

    // Fill the kernel's connection maps with CAPACITY long-lived keep-alive connections.
    let agent = fx.agent.clone();
    let sleep = fx.sleep.clone();
    let load = std::thread::spawn(move || {
        agent.http_load(
            &sleep,
            REVIEWS_URL,
            reviews_vip(),
            30,
            CAPACITY,
            Duration::from_secs(5),
        )
    });
    std::thread::sleep(Duration::from_millis(1500));
    let full_before = kernel_stat(&keel, "skipped_map_full")?;

    // One more connection: no room for a record, so the kernel must leave it alone. Pods have no
    // route to the VIP, so "left alone" shows as unreachable; a misroute would connect somewhere.
    let c = fx.agent.tcp_connect(&fx.sleep, reviews_vip(), None)?;
    ensure!(
        c.outcome == ConnectOutcome::Unreachable,
        "with the map full a new connection must go direct (unreachable here), got {c:?}"
    );
    ensure!(
        kernel_stat(&keel, "skipped_map_full")? > full_before,
        "the kernel must count the connection it could not record"
    );

    // The connections that hold the records keep working: nothing was evicted or misrouted.
    let held = load
        .join()
        .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
    let failed = held.samples.iter().filter(|s| s.1 != 200).count();
    ensure!(
        failed == 0 && held.connections == u64::from(CAPACITY),
        "the {CAPACITY} recorded connections must keep being served on their own connections: \
         {failed} failed, {} connections",
        held.connections
    );

    // Closed connections free their records: new connections are redirected again.
    std::thread::sleep(Duration::from_millis(300));
    let r = fx.get_reviews(5)?;
    ensure_all_ok_via_proxy(&r, &fx.net)?;
    Ok(())
}
