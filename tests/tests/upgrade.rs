//! Reliability scenarios A1–A3 (`shared/reference/reliability-tests.md`): keel dies or is stopped
//! and pods fail open fast (or, in a fail-closed namespace, are refused fast); a second keel takes
//! over from a running one under load without losing a connection; a crash loop leaks nothing and
//! `keel uninstall` leaves nothing.
//!
//! The direct path is real: kube-proxy is emulated with a host DNAT of the reviews VIP to a
//! "direct" HTTP server on the node side of the test network (the bridge IP), so a connection keel
//! does not redirect is answered by version `direct` instead of failing.
//!
//! Subnet indices 220..=229 belong to this file.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::{ensure_all_ok_via_proxy, reviews_vip, vip, Fixture};
use keel_tests::config::service_yaml;
use keel_tests::figures;
use keel_tests::keel::{attached_programs, bpf_footprint, install_dir, map_exists, uninstall};
use keel_tests::{ConnLoadReport, ConnSample, ConnectOutcome, Keel, KeelOptions, SvcPort};
use nix::sys::signal::Signal;

const PREFIX: &str = "ktupg";
/// Port of the node-side server that stands for the Service's endpoint on the direct path.
const DIRECT_PORT: u16 = 19080;
/// The fail-open target of A1.
const FALLBACK_TARGET: Duration = Duration::from_millis(200);
/// A3: by when a pod's connects go direct after keel was killed (the 120 ms heartbeat stale time,
/// plus starting a pod-agent per probe on a shared machine).
const DEAD_KEEL_DIRECT: Duration = Duration::from_millis(500);

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn start_keel(fx: &Fixture, extra: &[&str]) -> Result<Keel> {
    let mut opts = KeelOptions::new(&fx.net, fx.config.path())?;
    opts.extra_args = extra.iter().map(|s| s.to_string()).collect();
    Keel::start_with(&fx.net, opts)
}

/// Starts the "direct" endpoint on the node side and the kube-proxy DNAT of the reviews VIP to it;
/// routes the service CIDR of `pods` to the node.
fn direct_path(fx: &mut Fixture, pods: &[keel_tests::Pod]) -> Result<keel_tests::KubeProxyRule> {
    let endpoint = SocketAddr::new(fx.net.bridge_ip().into(), DIRECT_PORT);
    let mut cmd = Command::new(fx.agent.bin());
    cmd.args([
        "http-server",
        "--listen",
        &endpoint.to_string(),
        "--pod",
        "direct",
        "--version",
        "direct",
    ]);
    let server = fx
        .net
        .spawn_in_cgroup(&fx.net.system_cgroup(), cmd, "direct-endpoint")?;
    fx.servers.push(server);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect_timeout(&endpoint, Duration::from_millis(200)).is_err() {
        ensure!(
            Instant::now() < deadline,
            "the direct endpoint {endpoint} never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let rule = fx.net.kube_proxy(reviews_vip(), endpoint)?;
    for pod in pods {
        fx.net.route_services_via_node(pod)?;
    }
    Ok(rule)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn describe(samples: &[&ConnSample], t0: u64) -> String {
    samples
        .iter()
        .take(8)
        .map(|s| {
            format!(
                "[+{}ms status {} {:?} connect {}µs total {}ms {}]",
                s.start_ms as i64 - t0 as i64,
                s.status,
                s.version,
                s.connect_us,
                s.total_ms,
                s.error
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

enum Fault {
    Kill,
    Stop,
}

/// One A1 cycle: keel serves `sleep`'s new connections, then dies (or is stopped) while they keep
/// coming. Returns the time from the fault to the last connection that did not go direct.
fn fail_open_cycle(fx: &Fixture, fault: Fault) -> Result<Duration> {
    let mut keel = start_keel(fx, &[])?;
    let rate = 200;
    let (t0, report) = std::thread::scope(|s| -> Result<(u64, ConnLoadReport)> {
        let load = s.spawn(|| {
            fx.agent.conn_load(
                &fx.sleep,
                reviews_vip(),
                "reviews:9080",
                rate,
                Duration::from_millis(2500),
            )
        });
        std::thread::sleep(Duration::from_millis(1000));
        let t0 = unix_ms();
        match fault {
            Fault::Kill => {
                keel.kill()?;
            }
            Fault::Stop => {
                keel.signal(Signal::SIGSTOP)?;
                // Long enough to see the fallback settle, then let the stopped keel finish what it
                // had accepted.
                std::thread::sleep(Duration::from_millis(1000));
                keel.signal(Signal::SIGCONT)?;
            }
        }
        let report = load
            .join()
            .map_err(|_| anyhow::anyhow!("the load thread panicked"))??;
        Ok((t0, report))
    })?;
    drop(keel);

    let before: Vec<&ConnSample> = report
        .samples
        .iter()
        .filter(|s| s.start_ms + 50 < t0)
        .collect();
    ensure!(
        before.len() > 100 && before.iter().all(|s| s.status == 200 && s.version == "v1"),
        "before the fault every connection goes through keel to v1: {}",
        describe(
            &before
                .iter()
                .copied()
                .filter(|s| s.status != 200 || s.version != "v1")
                .collect::<Vec<_>>(),
            t0
        )
    );
    let hung: Vec<&ConnSample> = report
        .samples
        .iter()
        .filter(|s| s.connect_us >= 1_000_000)
        .collect();
    ensure!(
        hung.is_empty(),
        "{} connect() calls took 1 s or more: {}",
        hung.len(),
        describe(&hung, t0)
    );
    // The window in which a stopped keel is stopped (a killed one stays dead).
    let window_end = t0 + 1000;
    let after: Vec<&ConnSample> = report
        .samples
        .iter()
        .filter(|s| s.start_ms >= t0 && s.start_ms < window_end)
        .collect();
    ensure!(
        after.len() > 100,
        "too few connections after the fault: {}",
        after.len()
    );
    let last_not_direct = after
        .iter()
        .filter(|s| !(s.status == 200 && s.version == "direct"))
        .map(|s| s.start_ms - t0)
        .max();
    let fallback =
        Duration::from_millis(last_not_direct.map_or(0, |ms| ms + 1000 / u64::from(rate)));
    let late: Vec<&ConnSample> = after
        .iter()
        .copied()
        .filter(|s| s.start_ms >= t0 + 200 && !(s.status == 200 && s.version == "direct"))
        .collect();
    ensure!(
        late.is_empty(),
        "connections made 200 ms or more after the fault must go direct: {}",
        describe(&late, t0)
    );
    if matches!(fault, Fault::Stop) {
        // Nothing is lost: what the stopped keel had accepted is served once it runs again.
        let failed: Vec<&ConnSample> = report.samples.iter().filter(|s| s.status != 200).collect();
        ensure!(
            failed.is_empty(),
            "with keel stopped and resumed no connection may fail: {}",
            describe(&failed, t0)
        );
    }
    Ok(fallback)
}

/// A1: SIGKILL and SIGSTOP with connections in flight: new connections go direct within 200 ms, no
/// connect hangs; a fail-closed namespace's connects are refused within 50 ms instead.
#[test]
fn chaos_a1_dead_or_stopped_keel_fails_open_fast() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 220, &["v1"])?;
    let strict = fx.add_pod_in("strict", "client", 3, &[("app", "client")])?;
    fx.config.write(
        "namespaces.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: strict\n  labels:\n    keel.io/fail-mode: closed\n",
    )?;
    let sleep = fx.sleep.clone();
    let _rule = direct_path(&mut fx, &[sleep, strict.clone()])?;

    // Without keel the direct path answers (kube-proxy's job).
    let direct = fx.agent.conn_load(
        &fx.sleep,
        reviews_vip(),
        "reviews:9080",
        20,
        Duration::from_millis(300),
    )?;
    ensure!(
        !direct.samples.is_empty()
            && direct
                .samples
                .iter()
                .all(|s| s.status == 200 && s.version == "direct"),
        "without keel the VIP must reach the direct endpoint: {:?}",
        direct.samples.first()
    );

    let cycles = figures::sized(2, 5);
    let mut fallbacks = Vec::new();
    for _ in 0..cycles {
        fallbacks.push(fail_open_cycle(&fx, Fault::Kill)?);
        fallbacks.push(fail_open_cycle(&fx, Fault::Stop)?);
    }
    let mut ms: Vec<f64> = fallbacks.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&ms, 50.0), percentile(&ms, 99.0));
    figures::record("A1 proxy killed", "time to fail open p50", p50, "ms");
    figures::record("A1 proxy killed", "time to fail open p99", p99, "ms");
    figures::record("A1 proxy killed", "hung connects (>1 s)", 0.0, "count");
    ensure!(
        p99 < FALLBACK_TARGET.as_secs_f64() * 1000.0,
        "time to fail open p99 {p99:.0} ms (p50 {p50:.0} ms), target < 200 ms: {ms:?}"
    );

    // Fail-closed namespace: served while keel lives, refused at once when it is gone.
    let mut keel = start_keel(&fx, &[])?;
    let served = fx.agent.conn_load(
        &strict,
        reviews_vip(),
        "reviews:9080",
        20,
        Duration::from_millis(300),
    )?;
    ensure!(
        !served.samples.is_empty()
            && served
                .samples
                .iter()
                .all(|s| s.status == 200 && s.version == "v1"),
        "the fail-closed pod is proxied while keel serves: {:?}",
        served.samples.first()
    );
    keel.kill()?;
    std::thread::sleep(Duration::from_millis(200));
    let refused = fx.agent.conn_load(
        &strict,
        reviews_vip(),
        "reviews:9080",
        50,
        Duration::from_millis(500),
    )?;
    let slowest_us = refused
        .samples
        .iter()
        .map(|s| s.connect_us)
        .max()
        .unwrap_or(u64::MAX);
    figures::record(
        "A1 proxy killed",
        "fail-closed refusal, slowest",
        slowest_us as f64 / 1000.0,
        "ms",
    );
    ensure!(
        !refused.samples.is_empty()
            && refused.samples.iter().all(|s| s.status == 0
                && s.error.contains("Operation not permitted")
                && s.connect_us < 50_000),
        "with keel dead a fail-closed pod's connects are refused within 50 ms (EPERM), never sent direct: {}",
        describe(&refused.samples.iter().collect::<Vec<_>>(), 0)
    );
    // The fail-open pod next to it goes direct meanwhile.
    let open = fx.agent.conn_load(
        &fx.sleep,
        reviews_vip(),
        "reviews:9080",
        20,
        Duration::from_millis(300),
    )?;
    ensure!(
        open.samples
            .iter()
            .all(|s| s.status == 200 && s.version == "direct"),
        "the fail-open pod goes direct while keel is dead: {:?}",
        open.samples.first()
    );
    drop(keel);
    uninstall(&fx.net.cgroup_root(), fx.net.proxy_addr())?;
    Ok(())
}

/// A2: a second keel takes over from a running one under a steady stream of new connections,
/// keep-alive requests and a long-lived TCP connection: nothing fails, and the long connection lives
/// until the old keel's drain deadline.
#[test]
fn chaos_a2_rolling_restart_loses_no_connection() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 221, &["v1"])?;
    let echo = fx.add_pod_in("default", "echo", 21, &[("app", "echo")])?;
    fx.servers.push(fx.agent.tcp_echo_server(&echo, 9000)?);
    let echo_vip = vip(30, 9000);
    fx.add_service(service_yaml(
        "echo",
        "default",
        std::net::Ipv4Addr::new(10, 96, 0, 30),
        &[SvcPort {
            name: "tcp",
            port: 9000,
            target_port: 9000,
        }],
        &[("app", "echo")],
    ))?;
    let drain = Duration::from_secs(2);
    let drain_arg = drain.as_secs().to_string();
    let old = start_keel(&fx, &["--drain-time", &drain_arg])?;
    ensure_all_ok_via_proxy(&fx.get_reviews(2)?, &fx.net)?;

    let rate = figures::sized(500, 2000);
    let duration = Duration::from_millis(figures::sized(8000, 15_000));
    let started = unix_ms();
    let mut old = old;
    let (conns, keepalive, hold, sigterm_at, exited_at, new) =
        std::thread::scope(|s| -> Result<_> {
            let conns = s.spawn(|| {
                fx.agent
                    .conn_load(&fx.sleep, reviews_vip(), "reviews:9080", rate, duration)
            });
            let keepalive = s.spawn(|| {
                fx.agent.http_load(
                    &fx.sleep,
                    common::REVIEWS_URL,
                    reviews_vip(),
                    100,
                    4,
                    duration,
                )
            });
            let hold = s.spawn(|| fx.agent.tcp_hold(&fx.sleep, echo_vip, duration));
            std::thread::sleep(Duration::from_millis(1000));
            // The upgrade: the new keel starts next to the old one and is ready before the old one stops.
            let new = start_keel(&fx, &["--drain-time", &drain_arg])?;
            std::thread::sleep(Duration::from_millis(300));
            let sigterm_at = unix_ms();
            let status = old.terminate(drain + Duration::from_secs(5))?;
            let exited_at = unix_ms();
            ensure!(
                status.success(),
                "the old keel exits 0 after its drain, got {status}"
            );
            let panicked = || anyhow::anyhow!("a load thread panicked");
            Ok((
                conns.join().map_err(|_| panicked())??,
                keepalive.join().map_err(|_| panicked())??,
                hold.join().map_err(|_| panicked())??,
                sigterm_at,
                exited_at,
                new,
            ))
        })?;

    let failed: Vec<&ConnSample> = conns.samples.iter().filter(|s| s.status != 200).collect();
    let max_ms = conns.samples.iter().map(|s| s.total_ms).max().unwrap_or(0);
    let failed_keepalive = keepalive.samples.iter().filter(|s| s.1 != 200).count();
    figures::record(
        "A2 rolling restart",
        "new connections",
        conns.samples.len() as f64,
        "count",
    );
    figures::record(
        "A2 rolling restart",
        "offered rate",
        f64::from(rate),
        "conn/s",
    );
    figures::record(
        "A2 rolling restart",
        "failed new connections",
        failed.len() as f64,
        "count",
    );
    figures::record(
        "A2 rolling restart",
        "failed keep-alive requests",
        failed_keepalive as f64,
        "count",
    );
    figures::record(
        "A2 rolling restart",
        "max connection latency",
        max_ms as f64,
        "ms",
    );
    figures::record(
        "A2 rolling restart",
        "old keel drain duration",
        (exited_at - sigterm_at) as f64,
        "ms",
    );
    ensure!(
        conns.samples.len() as f64 >= f64::from(rate) * duration.as_secs_f64() * 0.9,
        "the load ran short: {} connections",
        conns.samples.len()
    );
    ensure!(
        failed.is_empty(),
        "{} of {} new connections failed across the restart: {}",
        failed.len(),
        conns.samples.len(),
        describe(&failed, sigterm_at)
    );
    ensure!(
        failed_keepalive == 0,
        "{failed_keepalive} keep-alive requests failed across the restart"
    );
    // The long TCP connection belonged to the old keel: it works until the drain deadline, then the
    // old keel closes it as it exits.
    let drain_ms = u64::try_from(drain.as_millis())?;
    ensure!(
        sigterm_at + drain_ms + 500 < started + u64::try_from(duration.as_millis())?,
        "the new keel took too long to start: SIGTERM came {} ms into a {duration:?} load",
        sigterm_at - started
    );
    let hold_end = started + hold.ended_after_ms;
    let lived = hold_end as i64 - sigterm_at as i64;
    figures::record(
        "A2 rolling restart",
        "long TCP connection lived after SIGTERM",
        lived as f64,
        "ms",
    );
    ensure!(
        !hold.error.is_empty() && hold_end + 300 >= sigterm_at + drain_ms && hold_end <= exited_at + 1000,
        "the long TCP connection must work until the {drain:?} drain deadline and close when the old \
         keel exits ({} ms after SIGTERM); it ended {lived} ms after SIGTERM: {hold:?}",
        exited_at - sigterm_at
    );

    // The new keel serves on its own, with the records it shares with the old one.
    ensure_all_ok_via_proxy(&fx.get_reviews(3)?, &fx.net)?;
    drop(new);
    uninstall(&fx.net.cgroup_root(), fx.net.proxy_addr())?;
    Ok(())
}

/// A3: keel SIGKILLed and restarted in a loop: the kernel objects of the install stay the same
/// (no program, map or pin leaks), pods are proxied or direct, never broken; after the last keel
/// stops and `keel uninstall` runs, nothing is attached or pinned and the maps are gone.
#[test]
fn chaos_a3_crash_loop_leaks_nothing_and_uninstall_leaves_nothing() -> Result<()> {
    let fx = Fixture::reviews(PREFIX, 222, &["v1"])?;
    let root = fx.net.cgroup_root();
    let dir = install_dir(&root, fx.net.proxy_addr())?;
    let mut keel = start_keel(&fx, &[])?;
    ensure_all_ok_via_proxy(&fx.get_reviews(2)?, &fx.net)?;
    let first = bpf_footprint(&dir)?;
    ensure!(
        first.programs.len() == 3 && first.pinned_maps.len() == 8,
        "a running keel has 3 programs using its 8 pinned maps: {first:?}"
    );
    let cycles = figures::sized(5, 50);
    let mut max_gap = Duration::ZERO;
    let (mut leaked_programs, mut leaked_maps, mut leaked_pins) = (0usize, 0usize, 0usize);
    for cycle in 0..cycles {
        keel.kill()?;
        drop(keel);
        // Dead keel: direct once its last heartbeat is stale (120 ms), never a hang.
        let gap = fx.wait_direct_after_kill(DEAD_KEEL_DIRECT)?;
        keel = start_keel(&fx, &[])?;
        ensure_all_ok_via_proxy(&fx.get_reviews(1)?, &fx.net)?;
        max_gap = max_gap.max(gap);
        let now = bpf_footprint(&dir)?;
        leaked_programs =
            leaked_programs.max(now.programs.len().saturating_sub(first.programs.len()));
        leaked_maps = leaked_maps.max(now.maps.len().saturating_sub(first.maps.len()));
        leaked_pins = leaked_pins.max(now.pins.len().saturating_sub(first.pins.len()));
        ensure!(
            now.pinned_maps == first.pinned_maps
                && now.programs.len() == first.programs.len()
                && now.maps.len() == first.maps.len()
                && now.pins == first.pins,
            "cycle {cycle}: the install's kernel objects changed:\nfirst {first:?}\nnow   {now:?}"
        );
    }
    figures::record("A3 crash loop", "cycles", cycles as f64, "count");
    figures::record(
        "A3 crash loop",
        "leaked programs",
        leaked_programs as f64,
        "count",
    );
    figures::record("A3 crash loop", "leaked maps", leaked_maps as f64, "count");
    figures::record("A3 crash loop", "leaked pins", leaked_pins as f64, "count");
    figures::record(
        "A3 crash loop",
        "slowest time to direct after a kill",
        max_gap.as_secs_f64() * 1000.0,
        "ms",
    );

    // The last keel stops: the kernel side stays installed but fails open.
    let status = keel.terminate(Duration::from_secs(15))?;
    ensure!(status.success(), "keel exits 0 on SIGTERM, got {status}");
    drop(keel);
    ensure!(
        !attached_programs(&root)?.is_empty(),
        "after SIGTERM the programs stay attached (pinned) for the next keel"
    );
    let c = fx.agent.tcp_connect(&fx.sleep, reviews_vip(), None)?;
    ensure!(
        c.outcome == ConnectOutcome::Unreachable,
        "with no keel running a VIP connect goes direct: {c:?}"
    );
    let last = bpf_footprint(&dir)?;

    let said = uninstall(&root, fx.net.proxy_addr())?;
    let attached = attached_programs(&root)?;
    ensure!(
        attached.is_empty(),
        "still attached after keel uninstall: {attached:?} ({said})"
    );
    ensure!(
        !dir.exists(),
        "{} still exists after keel uninstall",
        dir.display()
    );
    let pins: Vec<_> = keel_tests::keel::bpffs_entries()
        .into_iter()
        .filter(|p| p.starts_with(&dir))
        .collect();
    ensure!(pins.is_empty(), "pins left: {pins:?}");
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut alive: Vec<u64> = last
        .maps
        .iter()
        .copied()
        .filter(|&id| map_exists(id))
        .collect();
    while !alive.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        alive.retain(|&id| map_exists(id));
    }
    figures::record(
        "A3 crash loop",
        "maps left after uninstall",
        alive.len() as f64,
        "count",
    );
    ensure!(
        alive.is_empty(),
        "maps of the install still exist after uninstall: {alive:?}"
    );
    let c = fx.agent.tcp_connect(&fx.sleep, reviews_vip(), None)?;
    ensure!(
        c.outcome == ConnectOutcome::Unreachable,
        "after uninstall a VIP connect goes direct at once: {c:?}"
    );
    // A fresh install on the same root serves.
    let keel = start_keel(&fx, &[])?;
    ensure_all_ok_via_proxy(&fx.get_reviews(2)?, &fx.net)?;
    drop(keel);
    uninstall(&root, fx.net.proxy_addr()).context("final uninstall")?;
    Ok(())
}
