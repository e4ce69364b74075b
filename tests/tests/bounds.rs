//! Bounded under abuse (reliability-tests.md D3, D4, E3, E4): connection and request caps refuse at
//! once and never starve another pod, slow clients are evicted by the header-read and body idle
//! timeouts, HTTP/2 floods end in GOAWAY with flat memory, and the admin API answers throughout.
//! The attackers are `pod-agent` modes running inside a pod (`hold-connections`, `h2-flood`), so
//! every attack goes through the kernel redirect like a real pod's traffic.
//!
//! Subnet indices 240..=249 belong to this file (used: 240..=245).

mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::{reviews_vip, Fixture};
use keel_tests::figures::{self, sized};
use keel_tests::keel::KeelOptions;
use keel_tests::{HttpGet, HttpGetReport, Keel};

const PREFIX: &str = "ktbd";
/// Envoy's overflow reply (what a request over its pod's in-flight cap gets).
const OVERFLOW_BODY: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: overflow";

/// keel with `args` on the fixture's network.
fn start_keel(fx: &Fixture, args: &[&str]) -> Result<Keel> {
    let mut opts = KeelOptions::new(&fx.net, fx.config.path())?;
    opts.extra_args = args.iter().map(|a| a.to_string()).collect();
    Keel::start_with(&fx.net, opts)
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

/// A line's value from the Prometheus exposition, e.g.
/// `keel_connections_refused_total{reason="pod_connection_limit"}`.
fn prom(keel: &Keel, series: &str) -> Result<u64> {
    let resp = keel_tests::http::get(
        keel.options().admin_addr,
        "/stats/prometheus",
        Duration::from_secs(5),
    )?;
    ensure!(
        resp.status == 200,
        "/stats/prometheus answered {}",
        resp.status
    );
    let text = resp.text();
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .with_context(|| format!("no {series} in\n{text}"))?;
    value.trim().parse().context("metric value")
}

/// The admin API answers `/ready` 200 within `limit`; returns how long it took.
fn admin_answers(keel: &Keel, limit: Duration) -> Result<Duration> {
    let started = Instant::now();
    let resp = keel_tests::http::get(keel.options().admin_addr, "/ready", limit)?;
    ensure!(resp.status == 200, "/ready answered {}", resp.status);
    Ok(started.elapsed())
}

/// The `q` quantile of `latencies` (ms).
fn quantile(latencies: &[u64], q: f64) -> u64 {
    let mut v = latencies.to_vec();
    v.sort_unstable();
    if v.is_empty() {
        return 0;
    }
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i.min(v.len() - 1)]
}

/// `count` sequential keep-alive GETs of reviews from `pod`; every one must be a 200.
fn legit(fx: &Fixture, pod: &keel_tests::Pod, count: u32, what: &str) -> Result<HttpGetReport> {
    let r = fx.agent.http_get(
        pod,
        &HttpGet::new("http://reviews:9080/")
            .connect_to(reviews_vip())
            .count(count)
            .timeout(Duration::from_secs(60)),
    )?;
    ensure!(
        r.errors == 0 && r.status(200) == u64::from(count),
        "{what}: the legitimate client saw {:?}, {} errors (first {:?})",
        r.by_status,
        r.errors,
        r.first_error
    );
    Ok(r)
}

/// Number of open descriptors and the soft open-file limit of keel.
fn fds(keel: &Keel) -> Result<(u64, u64)> {
    let open = std::fs::read_dir(format!("/proc/{}/fd", keel.pid()))?.count() as u64;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", keel.pid()))?;
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .context("no open-file limit in /proc/<pid>/limits")?;
    Ok((open, soft))
}

/// D3: over its in-flight cap a pod's requests get Envoy's overflow reply at once while its held
/// requests wait on a hanging upstream; over its connection cap and over the node-wide cap new
/// connections are closed at once (counted by reason); another pod keeps being served, the admin
/// API answers at the cap, descriptors stay under half the limit, and service recovers at once.
#[test]
fn chaos_d3_caps_refuse_at_once_and_the_admin_api_answers() -> Result<()> {
    let scenario = "D3 load shedding and connection limits";
    let mut fx = Fixture::reviews(PREFIX, 240, &["v1"])?;
    let attacker = fx.add_pod("attacker", 30, &[("app", "attacker")], &[], false)?;
    let other = fx.add_pod("other", 31, &[("app", "other")], &[], false)?;
    let keel = start_keel(
        &fx,
        &[
            "--max-downstream-connections",
            "150",
            "--max-connections-per-pod",
            "100",
            "--max-requests-per-pod",
            "20",
        ],
    )?;
    legit(&fx, &fx.sleep, 5, "warm-up")?;
    let rss_before = rss_kib(&keel)?;

    // 40 requests at once to an upstream that does not answer within the client's patience: 20
    // are held, 20 are refused at once.
    let flood = HttpGet::new("http://reviews:9080/delay/20000")
        .connect_to(reviews_vip())
        .count(40)
        .concurrency(40)
        .request_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(30));
    let (held, served) = std::thread::scope(|s| {
        let held = s.spawn(|| fx.agent.http_get(&attacker, &flood));
        std::thread::sleep(Duration::from_millis(500));
        let served = legit(
            &fx,
            &other,
            20,
            "another pod while the attacker is at its cap",
        );
        (held.join(), served)
    });
    let held = held.map_err(|_| anyhow::anyhow!("attacker thread panicked"))??;
    served?;
    let refused = held.with_body(503, OVERFLOW_BODY);
    ensure!(
        refused == 20 && held.client_timeouts == 20,
        "expected 20 overflow replies and 20 held requests, got {:?} {:?}, {} client timeouts",
        held.by_status,
        held.other_bodies,
        held.client_timeouts
    );
    ensure!(
        held.header_presence.get("x-envoy-overloaded").copied() == Some(20),
        "overflow replies carry x-envoy-overloaded: {:?}",
        held.header_presence
    );
    let p50 = quantile(&held.latencies_ms, 0.5);
    let worst = held.latencies_ms.iter().copied().max().unwrap_or(0);
    figures::record(scenario, "overflow reply p50", p50 as f64, "ms");
    figures::record(scenario, "overflow reply max", worst as f64, "ms");
    // Target < 10 ms (recorded); asserted with room for the shared 2-core machine, where 40 clients
    // connect at once next to compilers. The point: never queued behind the held requests (3 s).
    ensure!(
        p50 < 50,
        "overflow replies took {p50} ms (p50); target < 10 ms"
    );
    ensure!(worst < 500, "an overflow reply took {worst} ms");
    ensure!(prom(&keel, "keel_downstream_rq_pod_overflow_total")? == 20);

    // Connections: 130 from the attacker (cap 100 per pod), then 100 from another pod while the
    // attacker holds its 100 (cap 150 node-wide).
    let hold = Duration::from_secs(4);
    let (per_pod, global, admin_at_cap, fds_at_cap) = std::thread::scope(|s| {
        let per_pod = s.spawn(|| {
            fx.agent.hold_connections(
                &attacker,
                reviews_vip(),
                130,
                "idle",
                Duration::from_secs(1),
                hold,
            )
        });
        std::thread::sleep(Duration::from_millis(1500));
        let global = s.spawn(|| {
            fx.agent.hold_connections(
                &other,
                reviews_vip(),
                100,
                "idle",
                Duration::from_secs(1),
                hold,
            )
        });
        std::thread::sleep(Duration::from_millis(1500));
        let admin = admin_answers(&keel, Duration::from_secs(1));
        let fds = fds(&keel);
        (per_pod.join(), global.join(), admin, fds)
    });
    let per_pod = per_pod.map_err(|_| anyhow::anyhow!("attacker thread panicked"))??;
    let global = global.map_err(|_| anyhow::anyhow!("second attacker thread panicked"))??;
    let admin_at_cap = admin_at_cap?;
    let (open_fds, fd_limit) = fds_at_cap?;
    eprintln!("per pod: {per_pod:?}\nglobal: {global:?}\nadmin {admin_at_cap:?}, fds {open_fds}/{fd_limit}");
    ensure!(
        per_pod.opened == 130 && per_pod.closed_at_once == 30,
        "the attacker's connections over its cap of 100 must be closed at once: {per_pod:?}"
    );
    ensure!(
        global.opened == 100 && global.closed_at_once == 50,
        "connections over the node-wide cap of 150 must be closed at once: {global:?}"
    );
    ensure!(
        prom(
            &keel,
            "keel_connections_refused_total{reason=\"pod_connection_limit\"}"
        )? == 30
    );
    ensure!(
        prom(
            &keel,
            "keel_connections_refused_total{reason=\"global_connection_limit\"}"
        )? == 50
    );
    ensure!(
        open_fds * 2 < fd_limit,
        "keel holds {open_fds} descriptors at the cap, limit {fd_limit}"
    );
    figures::record(
        scenario,
        "admin /ready at the connection cap",
        admin_at_cap.as_secs_f64() * 1e3,
        "ms",
    );
    figures::record(scenario, "descriptors at the cap", open_fds as f64, "count");
    figures::record(scenario, "connections refused over the caps", 80.0, "count");

    // Recovery: the held connections are gone, every pod is served at once.
    common::wait_until("connections released", Duration::from_secs(5), || {
        Ok(prom(&keel, "keel_downstream_cx_active")? == 0)
    })?;
    let recovered = Instant::now();
    legit(&fx, &attacker, 5, "the attacker after the attack")?;
    legit(&fx, &other, 5, "the other pod after the attack")?;
    figures::record(
        scenario,
        "recovery",
        recovered.elapsed().as_secs_f64() * 1e3,
        "ms",
    );
    let rss_after = rss_kib(&keel)?;
    figures::record(
        scenario,
        "RSS delta",
        rss_after as f64 - rss_before as f64,
        "KiB",
    );
    Ok(())
}

/// What the noisy pod of D4 does while the victim is measured.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NoisyAttack {
    /// Everything keel's per-pod caps bound: more connections than its cap (half of them
    /// slowloris) and requests held at its in-flight cap against a slow path.
    OverCaps,
    /// Fast requests on ten connections (ten times the victim's), as fast as keel answers them,
    /// with requests held just under the in-flight cap and slowloris connections over the
    /// connection cap: a CPU flood that only the pod's request rate bounds.
    OverCapsAndFastFlood,
}

/// The victim's steady rate (requests/s, over [`VICTIM_CONNECTIONS`]): well under the per-pod
/// rate, as a normal pod's.
const VICTIM_RATE: u32 = 500;
const VICTIM_CONNECTIONS: u32 = 2;
/// `--max-request-rate-per-pod` of D4: the noisy pod's fair share, twice the victim's rate.
const POD_RATE: u32 = 1_000;

/// The victim's latencies (us) over `secs` at [`VICTIM_RATE`]; every request must succeed.
fn victim(fx: &Fixture, secs: u64, what: &str) -> Result<Vec<u64>> {
    let r = fx.agent.http_load(
        &fx.sleep,
        "http://reviews:9080/",
        reviews_vip(),
        VICTIM_RATE,
        VICTIM_CONNECTIONS,
        Duration::from_secs(secs),
    )?;
    let failed: Vec<_> = r.samples.iter().filter(|s| s.1 != 200).take(5).collect();
    let expected = u64::from(VICTIM_RATE) * secs;
    ensure!(
        failed.is_empty(),
        "{what}: the victim saw failures (first {failed:?}) among {} requests",
        r.samples.len()
    );
    ensure!(
        r.samples.len() as u64 >= expected * 9 / 10,
        "{what}: the victim sent {} requests of {expected}",
        r.samples.len()
    );
    Ok(r.latencies_us)
}

/// Victim latencies (us) under `kind`, and the noisy pod's fast flood report (if any).
fn victim_under_attack(
    fx: &Fixture,
    noisy: &keel_tests::Pod,
    kind: NoisyAttack,
    secs: u64,
) -> Result<(Vec<u64>, Option<HttpGetReport>)> {
    let attack = Duration::from_secs(secs + 2);
    let flooding = kind == NoisyAttack::OverCapsAndFastFlood;
    let (measured, flooded) = std::thread::scope(|s| {
        // The flood takes its connections first, the held requests theirs, and the slowloris
        // clients all the pod has left and more.
        let flood = flooding.then(|| {
            s.spawn(|| {
                fx.agent.http_get(
                    noisy,
                    &HttpGet::new("http://reviews:9080/")
                        .connect_to(reviews_vip())
                        .header("x-flood", "1")
                        .count(1_000_000)
                        .concurrency(10)
                        .timeout(attack),
                )
            })
        });
        std::thread::sleep(Duration::from_millis(200));
        let held = if flooding { 22 } else { 32 };
        let hogs = s.spawn(move || {
            fx.agent.http_get(
                noisy,
                &HttpGet::new("http://reviews:9080/delay/60000")
                    .connect_to(reviews_vip())
                    .count(held * 2)
                    .concurrency(held)
                    .request_timeout(attack)
                    .timeout(attack * 3),
            )
        });
        std::thread::sleep(Duration::from_millis(200));
        let slowloris = s.spawn(|| {
            fx.agent.hold_connections(
                noisy,
                reviews_vip(),
                200,
                "slowloris",
                Duration::from_secs(1),
                attack,
            )
        });
        std::thread::sleep(Duration::from_millis(600));
        let measured = victim(fx, secs, "under attack");
        let _ = slowloris.join();
        let _ = hogs.join();
        let flooded = match flood.map(|f| f.join()) {
            None => Ok(None),
            Some(Ok(report)) => report.map(Some),
            Some(Err(_)) => Err(anyhow::anyhow!("flood thread panicked")),
        };
        (measured, flooded)
    });
    Ok((measured?, flooded.context("the fast flood")?))
}

/// D4: one pod floods; another pod's p99 rises by < 20 % and it sees no error. The victim is a
/// normal pod at a steady 500 requests/s. Two attacks by the noisy pod: what the per-pod caps bound
/// (more connections than the cap, half slowloris, and requests held at the in-flight cap); and a
/// fast-request flood on ten connections (as fast as keel answers) with held requests and
/// slowloris connections, which the pod's request rate (`--max-request-rate-per-pod`, twice the
/// victim's rate) paces. The flood's requests go to another backend (subset v2, by header), so
/// what the victim shares with the attacker is keel and the machine, not an upstream.
#[test]
fn chaos_d4_noisy_neighbour_does_not_slow_another_pod() -> Result<()> {
    let scenario = "D4 noisy neighbour";
    let mut fx = Fixture::reviews(PREFIX, 241, &["v1", "v2"])?;
    let noisy = fx.add_pod("noisy", 30, &[("app", "noisy")], &[], false)?;
    fx.config.write(
        "reviews-dr.yaml",
        &common::reviews_destination_rule(&["v1", "v2"]),
    )?;
    fx.config.write(
        "reviews-vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\n  \
         namespace: default\nspec:\n  hosts:\n  - reviews\n  http:\n  - match:\n    - headers:\n        \
         x-flood:\n          exact: \"1\"\n    route:\n    - destination:\n        host: reviews\n        \
         subset: v2\n  - route:\n    - destination:\n        host: reviews\n        subset: v1\n",
    )?;
    let pod_rate = POD_RATE.to_string();
    let keel = start_keel(
        &fx,
        &[
            "--max-connections-per-pod",
            "64",
            "--max-requests-per-pod",
            "32",
            "--max-request-rate-per-pod",
            &pod_rate,
        ],
    )?;
    let secs = sized(6, 20);
    legit(&fx, &fx.sleep, 200, "warm-up")?;
    let before = victim(&fx, secs, "baseline before")?;
    let (over_caps, _) = victim_under_attack(&fx, &noisy, NoisyAttack::OverCaps, secs)?;
    let (flooded_victim, flood) =
        victim_under_attack(&fx, &noisy, NoisyAttack::OverCapsAndFastFlood, secs)?;
    let flood = flood.context("the flood phase has a flood report")?;
    let after = victim(&fx, secs, "baseline after")?;

    // The reference is the victim alone, before and after the attacks together, so a drift of the
    // machine's own noise counts neither for nor against keel.
    let alone: Vec<u64> = before.iter().chain(&after).copied().collect();
    let base_p99 = quantile(&alone, 0.99);
    let caps_p99 = quantile(&over_caps, 0.99);
    let flood_p99 = quantile(&flooded_victim, 0.99);
    let flood_served = flood.status(200);
    eprintln!(
        "victim alone p50 {} us p99 {base_p99} us (before {} / after {}); over caps p50 {} us p99 \
         {caps_p99} us; with a fast flood p50 {} us p99 {flood_p99} us; flood: {} responses {:?}, \
         {} errors",
        quantile(&alone, 0.5),
        quantile(&before, 0.99),
        quantile(&after, 0.99),
        quantile(&over_caps, 0.5),
        quantile(&flooded_victim, 0.5),
        flood.responses,
        flood.by_status,
        flood.errors,
    );
    let rise = |p99: u64| (p99 as f64 / base_p99.max(1) as f64 - 1.0) * 100.0;
    figures::record(scenario, "victim p99 alone", base_p99 as f64, "us");
    figures::record(
        scenario,
        "victim p99, noisy pod over its caps",
        caps_p99 as f64,
        "us",
    );
    figures::record(
        scenario,
        "victim p99 rise, noisy pod over its caps",
        rise(caps_p99),
        "%",
    );
    figures::record(
        scenario,
        "victim p99, noisy pod flooding",
        flood_p99 as f64,
        "us",
    );
    figures::record(
        scenario,
        "victim p99 rise, noisy pod flooding",
        rise(flood_p99),
        "%",
    );
    let flood_secs = (secs + 2) as f64;
    figures::record(
        scenario,
        "noisy pod fast requests served per second",
        flood_served as f64 / flood_secs,
        "rps",
    );
    // The noisy pod was held to its caps (its extra connections closed, its extra requests 503)
    // and to its rate.
    let limited = prom(
        &keel,
        "keel_connections_refused_total{reason=\"pod_connection_limit\"}",
    )? + prom(&keel, "keel_downstream_rq_pod_overflow_total")?;
    let paced = prom(&keel, "keel_downstream_rq_pod_paced_total")?;
    let refused_rate = prom(&keel, "keel_downstream_rq_pod_rate_limited_total")?;
    figures::record(
        scenario,
        "noisy pod connections and requests refused",
        limited as f64,
        "count",
    );
    figures::record(scenario, "noisy pod requests paced", paced as f64, "count");
    ensure!(limited > 0, "the noisy pod was never limited");
    // The flood was served (on its own backend), and no faster than the pod's rate: its burst plus
    // the rate over the flood's time.
    ensure!(
        flood_served > 0,
        "the fast flood got no response: {flood:?}"
    );
    let most = u64::from(POD_RATE) / 10 + (f64::from(POD_RATE) * flood_secs * 1.05) as u64;
    ensure!(
        flood_served <= most,
        "the flooding pod got {flood_served} responses in {flood_secs} s, more than its rate \
         allows ({most})"
    );
    ensure!(paced > 0, "no request was paced");
    // Ten closed-loop connections never wait a second at 1,000/s: nothing is refused for rate.
    ensure!(
        refused_rate == 0 && flood.status(429) == 0,
        "requests were refused for rate ({refused_rate}, {:?}) though none waited 1 s",
        flood.by_status
    );
    // Target: +20 %, which the full run (10,000 samples a phase) holds. A smoke phase's p99 (3,000
    // samples) swings by 2x or more on a shared 2-core VM with nothing changed (baselines of 594
    // and 2,704 us seen), so the smoke run's isolation checks are the pacing and rate checks above;
    // its p99 bound only catches a proxy that stalls other pods outright.
    let allowed = sized(3.0, 1.2);
    for (what, p99) in [
        ("pushed against its caps", caps_p99),
        ("flooded", flood_p99),
    ] {
        ensure!(
            p99 as f64 <= base_p99 as f64 * allowed,
            "the victim's p99 rose from {base_p99} us to {p99} us while the noisy pod {what}"
        );
    }
    admin_answers(&keel, Duration::from_secs(1))?;
    Ok(())
}

/// `--max-request-rate-per-pod` as a user sees it: a burst of 30 requests from one pod at 5/s gets
/// its first answer at once and the next five paced 200 ms apart (the longest wait is 1 s); the
/// rest get Envoy's local rate limit reply (429 `local_rate_limited`, `server: envoy`), logged with
/// flag `RL`. Another pod has its own rate, and the pod gets its turns back after a rest.
#[test]
fn pod_request_rate_paces_then_refuses_with_429() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 243, &["v1"])?;
    let other = fx.add_pod("other", 30, &[("app", "other")], &[], false)?;
    let keel = start_keel(
        &fx,
        &[
            "--max-request-rate-per-pod",
            "5",
            "--access-log",
            "/dev/stdout",
        ],
    )?;
    let burst = |pod: &keel_tests::Pod, n: u32| {
        fx.agent.http_get(
            pod,
            &HttpGet::new("http://reviews:9080/")
                .connect_to(reviews_vip())
                .count(n)
                .concurrency(n)
                .timeout(Duration::from_secs(20)),
        )
    };
    let r = burst(&fx.sleep, 30)?;
    let (ok, limited) = (r.status(200), r.status(429));
    eprintln!(
        "burst of 30 at 5/s: {:?}, latencies {:?} ms",
        r.by_status,
        {
            let mut l = r.latencies_ms.clone();
            l.sort_unstable();
            l
        }
    );
    // One at once and one every 200 ms up to 1 s; a sixth paced turn only if the burst's connects
    // spread over more than 200 ms on a busy machine.
    ensure!(
        r.errors == 0 && (6..=7).contains(&ok) && ok + limited == 30,
        "{r:?}"
    );
    ensure!(
        r.with_body(429, "local_rate_limited") == limited,
        "429s without Envoy's body: {r:?}"
    );
    ensure!(
        r.max_latency_ms() >= 800,
        "the paced requests were not held to their turn: {r:?}"
    );
    let paced = prom(&keel, "keel_downstream_rq_pod_paced_total")?;
    let refused = prom(&keel, "keel_downstream_rq_pod_rate_limited_total")?;
    ensure!(
        paced == ok - 1 && refused == limited,
        "counters: paced {paced}, rate limited {refused}; client saw {ok} x 200, {limited} x 429"
    );
    // Another pod's first request is not held behind the first pod's turns.
    let o = burst(&other, 1)?;
    ensure!(
        o.status(200) == 1 && o.max_latency_ms() < 150,
        "the other pod was held by the first pod's rate: {o:?}"
    );
    // The log says why, as Envoy's does: status, flag and details.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let logged = keel
            .stdout()
            .lines()
            .filter(|l| l.contains("\" 429 RL local_rate_limited "))
            .count() as u64;
        if logged == limited {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{logged} access log lines with 429 RL local_rate_limited for {limited} refusals:\n{}",
            keel.stdout()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // After a rest the pod has its turn back.
    std::thread::sleep(Duration::from_millis(1_500));
    let again = burst(&fx.sleep, 1)?;
    ensure!(
        again.status(200) == 1 && again.max_latency_ms() < 150,
        "{again:?}"
    );
    Ok(())
}

/// E3: slowloris clients (headers one byte a second) and slow POSTs (a body byte every 3 s) are
/// evicted by the header-read and body idle timeouts (2 s here); a legitimate client sees no error
/// and its p99 stays under twice its baseline.
#[test]
fn chaos_e3_slowloris_and_slow_post_are_evicted() -> Result<()> {
    let scenario = "E3 slowloris and slow POST";
    let mut fx = Fixture::reviews(PREFIX, 242, &["v1"])?;
    let attacker = fx.add_pod("attacker", 30, &[("app", "attacker")], &[], false)?;
    let keel = start_keel(
        &fx,
        &["--header-read-timeout", "2", "--body-idle-timeout", "2"],
    )?;
    let count = sized(300, 2000);
    legit(&fx, &fx.sleep, 50, "warm-up")?;
    let baseline = legit(&fx, &fx.sleep, count, "baseline")?;
    let base_p99 = quantile(&baseline.latencies_ms, 0.99);
    let rss_before = rss_kib(&keel)?;
    let conns = sized(200, 1000);
    let hold = Duration::from_secs(10);
    let (loris, post, during) = std::thread::scope(|s| {
        let loris = s.spawn(|| {
            fx.agent.hold_connections(
                &attacker,
                reviews_vip(),
                conns,
                "slowloris",
                Duration::from_secs(1),
                hold,
            )
        });
        let post = s.spawn(|| {
            fx.agent.hold_connections(
                &attacker,
                reviews_vip(),
                conns,
                "slow-post",
                Duration::from_secs(3),
                hold,
            )
        });
        std::thread::sleep(Duration::from_millis(500));
        let during = legit(&fx, &fx.sleep, count, "during the slow attacks");
        (loris.join(), post.join(), during)
    });
    let loris = loris.map_err(|_| anyhow::anyhow!("slowloris thread panicked"))??;
    let post = post.map_err(|_| anyhow::anyhow!("slow POST thread panicked"))??;
    let during = during?;
    eprintln!("slowloris: {loris:?}\nslow POST: {post:?}");
    let attack_p99 = quantile(&during.latencies_ms, 0.99);
    for (what, r) in [("slowloris", &loris), ("slow POST", &post)] {
        ensure!(r.opened == u64::from(conns), "{what}: {r:?}");
        let closed = r
            .all_closed_after_ms
            .with_context(|| format!("{what}: connections still held after {hold:?}: {r:?}"))?;
        figures::record(
            scenario,
            &format!("{what}: all {conns} connections closed after"),
            closed as f64,
            "ms",
        );
        // The timeout is 2 s; connects take a while on the 2-core machine.
        ensure!(
            closed < 8000,
            "{what}: the last connection was closed after {closed} ms"
        );
    }
    figures::record(scenario, "legitimate p99 baseline", base_p99 as f64, "ms");
    figures::record(
        scenario,
        "legitimate p99 under attack",
        attack_p99 as f64,
        "ms",
    );
    ensure!(
        attack_p99 as f64 <= (base_p99 as f64 * 2.0).max(base_p99 as f64 + 1.0),
        "the legitimate p99 rose from {base_p99} ms to {attack_p99} ms"
    );
    ensure!(prom(&keel, "keel_downstream_rq_body_idle_timeout_total")? >= u64::from(conns));
    let rss_after = rss_kib(&keel)?;
    figures::record(
        scenario,
        "RSS delta",
        rss_after as f64 - rss_before as f64,
        "KiB",
    );
    admin_answers(&keel, Duration::from_secs(1))?;
    Ok(())
}

/// E4: each HTTP/2 flood (Rapid Reset, CONTINUATION without END_HEADERS, PING and SETTINGS floods
/// from a client that never reads, empty DATA frames, WINDOW_UPDATE flood) ends in GOAWAY or a close
/// long before the flood is over; RSS stays flat; a legitimate h2 client is served afterwards.
#[test]
fn chaos_e4_h2_floods_end_in_goaway_with_flat_memory() -> Result<()> {
    let scenario = "E4 HTTP/2 floods";
    let fx = Fixture::reviews(PREFIX, 243, &["v1"])?;
    let keel = start_keel(&fx, &[])?;
    let h2 = HttpGet::new("http://reviews:9080/")
        .connect_to(reviews_vip())
        .count(20)
        .http2();
    let warm = fx.agent.http_get(&fx.sleep, &h2)?;
    ensure!(warm.status(200) == 20, "h2 warm-up: {:?}", warm.by_status);
    let rss_before = rss_kib(&keel)?;
    let mut peak = rss_before;
    for (kind, reads) in [
        ("rapid-reset", true),
        ("continuation", true),
        ("ping", false),
        ("settings", false),
        ("empty-data", true),
        ("window-update", true),
    ] {
        // A client that never reads can write far more than the server takes (socket buffers):
        // for it the bound is that the server closes the connection.
        let max_frames = if reads {
            sized(20_000, 100_000)
        } else {
            1_000_000
        };
        let flagged = prom(&keel, "keel_downstream_cx_h2_flood_total")?;
        let r = fx
            .agent
            .h2_flood(&fx.sleep, reviews_vip(), kind, max_frames)?;
        eprintln!("{kind}: {r:?}");
        ensure!(r.error.is_none(), "{kind}: {r:?}");
        // h2's own guards (e.g. 20 resets of streams not yet accepted) send GOAWAY and close at
        // once; the client may then lose the GOAWAY to the reset of the close. Either ends it.
        ensure!(
            r.closed || r.goaway,
            "{kind}: the connection was neither sent GOAWAY nor closed: {r:?}"
        );
        ensure!(
            r.frames_sent < max_frames,
            "{kind}: all {max_frames} frames were taken: {r:?}"
        );
        let flagged = prom(&keel, "keel_downstream_cx_h2_flood_total")? - flagged;
        figures::record(
            scenario,
            &format!("{kind}: frames sent until GOAWAY/close"),
            r.frames_sent as f64,
            "frames",
        );
        figures::record(
            scenario,
            &format!("{kind}: time to GOAWAY/close"),
            r.elapsed_ms as f64,
            "ms",
        );
        eprintln!("{kind}: flood rule tripped {flagged} time(s)");
        peak = peak.max(rss_kib(&keel)?);
        admin_answers(&keel, Duration::from_secs(1))?;
    }
    let after = fx.agent.http_get(&fx.sleep, &h2)?;
    ensure!(
        after.status(200) == 20 && after.errors == 0,
        "h2 after the floods: {:?}, {:?}",
        after.by_status,
        after.first_error
    );
    let delta = peak.saturating_sub(rss_before);
    figures::record(scenario, "peak RSS delta", delta as f64, "KiB");
    ensure!(
        delta < 32 * 1024,
        "keel's RSS grew by {delta} KiB under the floods"
    );
    ensure!(prom(&keel, "keel_downstream_cx_h2_flood_total")? >= 4);
    Ok(())
}

/// D2: clients that ask for a 100 MiB response and never read it. keel stops reading the upstream
/// once its write buffer is full, so its memory stays flat while they hold on; after the idle
/// timeout (5 s here) it closes them (which resets their upstream requests), and a legitimate
/// client is served throughout.
#[test]
fn chaos_d2_slow_readers_hold_no_memory_and_are_closed() -> Result<()> {
    let scenario = "D2 slow reader";
    let mut fx = Fixture::reviews(PREFIX, 244, &["v1"])?;
    let reader = fx.add_pod("reader", 30, &[("app", "reader")], &[], false)?;
    let idle = Duration::from_secs(5);
    let keel = start_keel(&fx, &["--body-idle-timeout", "5"])?;
    legit(&fx, &fx.sleep, 20, "warm-up")?;
    // The upstream makes its 100 MiB body once, on the first `/bytes` request: do that now, so the
    // readers' responses start at once.
    let warm = fx.agent.http_get(
        &fx.sleep,
        &HttpGet::new("http://reviews:9080/bytes/1").connect_to(reviews_vip()),
    )?;
    ensure!(warm.status(200) == 1, "GET /bytes/1: {:?}", warm.by_status);
    let rss_before = rss_kib(&keel)?;
    let readers = sized(20u32, 100);
    let hold = idle + Duration::from_secs(4);
    let (held, samples, served) = std::thread::scope(|s| {
        let held = s.spawn(|| {
            fx.agent.hold_connections(
                &reader,
                reviews_vip(),
                readers,
                "slow-read",
                Duration::from_secs(1),
                hold,
            )
        });
        // keel's RSS every 250 ms while the readers hold on, with the connections open and the
        // idle-timeout closes so far.
        let started = Instant::now();
        let mut samples = Vec::new();
        while started.elapsed() < hold - Duration::from_secs(1) {
            let sample = (|| -> Result<(u64, u64, u64)> {
                Ok((
                    rss_kib(&keel)?,
                    prom(&keel, "keel_downstream_cx_active")?,
                    prom(&keel, "keel_downstream_cx_write_idle_timeout_total")?,
                ))
            })();
            samples.push((started.elapsed(), sample));
            std::thread::sleep(Duration::from_millis(250));
        }
        let served = legit(&fx, &fx.sleep, 50, "during the slow reads");
        (held.join(), samples, served)
    });
    served?;
    let held = held.map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
    ensure!(
        held.opened == u64::from(readers),
        "only {} of {readers} slow readers connected: {held:?}",
        held.opened
    );
    let samples: Vec<(Duration, (u64, u64, u64))> = samples
        .into_iter()
        .map(|(t, r)| r.map(|r| (t, r)))
        .collect::<Result<_>>()?;
    // The window in which every reader is connected and none is closed yet.
    let window: Vec<(Duration, u64)> = samples
        .iter()
        .filter(|(_, (_, active, closed))| *active >= u64::from(readers) && *closed == 0)
        .map(|(t, (rss, _, _))| (*t, *rss))
        .collect();
    let (Some(first), Some(last)) = (window.first(), window.last()) else {
        anyhow::bail!("no sample with all {readers} readers connected: {samples:?}");
    };
    ensure!(
        last.0 - first.0 >= Duration::from_secs(2),
        "the readers were held together only {:?}: {samples:?}",
        last.0 - first.0
    );
    let peak = window.iter().map(|(_, r)| *r).max().unwrap_or(rss_before);
    let delta = peak.saturating_sub(rss_before);
    // Flat: the buffers fill early (hyper's write buffer, then the upstream read stops), so the
    // second half of the window adds only noise.
    let midpoint = first.0 + (last.0 - first.0) / 2;
    let growth_after_fill = growth_in_second_half(&window, midpoint);
    let closed = prom(&keel, "keel_downstream_cx_write_idle_timeout_total")?;
    let active = prom(&keel, "keel_downstream_cx_active")?;
    eprintln!(
        "{readers} slow readers: RSS {rss_before} -> peak {peak} KiB (+{delta}), +{growth_after_fill} \
         KiB in the second half; {closed} closed for the idle timeout, {active} connections open; \
         samples {samples:?}"
    );
    figures::record(scenario, "slow readers", f64::from(readers), "count");
    figures::record(
        scenario,
        "RSS rise with the readers held",
        delta as f64,
        "KiB",
    );
    figures::record(
        scenario,
        "RSS per slow reader of a 100 MiB response",
        delta as f64 / f64::from(readers),
        "KiB",
    );
    figures::record(
        scenario,
        "RSS growth in the second half of the hold",
        growth_after_fill as f64,
        "KiB",
    );
    figures::record(
        scenario,
        "closed by the idle timeout",
        closed as f64,
        "count",
    );
    // keel holds what hyper's buffers take (about 1.1 MiB a reader, both its connections), never
    // the response: within Envoy's default watermarks, 1 MiB per connection, two per request.
    ensure!(
        delta <= u64::from(readers) * 2048 + 16 * 1024,
        "keel's RSS rose by {delta} KiB for {readers} slow readers of 100 MiB"
    );
    ensure!(
        growth_after_fill <= 8 * 1024,
        "keel's RSS kept growing ({growth_after_fill} KiB in the second half of the hold)"
    );
    ensure!(
        closed == u64::from(readers),
        "{closed} of {readers} slow readers were closed for the idle timeout"
    );
    // Only the legitimate client's kept-alive connection may remain.
    ensure!(active <= 1, "{active} downstream connections still open");
    Ok(())
}

/// D1: concurrent requests with 58 KiB headers and 1 MiB bodies to an upstream that stops reading.
/// keel holds at most its buffers per request (header buffers, the 64 KiB retry buffer, hyper's
/// write queue), never the body: RSS rises by at most Envoy's two 1 MiB connection watermarks per
/// request, far below Envoy's 100x-the-header-limit rule, and stays flat while the requests hang.
#[test]
fn chaos_d1_requests_to_a_stalled_upstream_cost_bounded_memory() -> Result<()> {
    let scenario = "D1 bounded per-request memory";
    let mut fx = Fixture::reviews(PREFIX, 245, &["v1"])?;
    let client = fx.add_pod("bulk", 30, &[("app", "bulk")], &[], false)?;
    let sink = fx.add_pod("sink", 40, &[("app", "sink")], &[], false)?;
    fx.servers.push(fx.agent.tcp_sink_server(&sink, 8080)?);
    let sink_vip = fx.add_simple_service("sink", 40, "http", 8080, 8080)?;
    let keel = start_keel(&fx, &[])?;
    legit(&fx, &fx.sleep, 20, "warm-up")?;
    let rss_before = rss_kib(&keel)?;
    let requests = sized(200u32, 1000);
    let hold = Duration::from_secs(sized(6, 10));
    let big_header = "h".repeat(58 * 1024);
    let (report, samples) = std::thread::scope(|s| {
        let load = s.spawn(|| {
            fx.agent.http_get(
                &client,
                &HttpGet::new("http://sink:8080/upload")
                    .connect_to(sink_vip)
                    .method("POST")
                    .header("x-bulk", &big_header)
                    .body_size(1 << 20)
                    .count(requests)
                    .concurrency(requests)
                    .request_timeout(hold)
                    .timeout(hold * 3),
            )
        });
        let started = Instant::now();
        let mut samples = Vec::new();
        while started.elapsed() < hold - Duration::from_millis(500) {
            let sample = (|| -> Result<(u64, u64)> {
                Ok((rss_kib(&keel)?, prom(&keel, "keel_downstream_cx_active")?))
            })();
            samples.push((started.elapsed(), sample));
            std::thread::sleep(Duration::from_millis(250));
        }
        (load.join(), samples)
    });
    let report = report.map_err(|_| anyhow::anyhow!("load thread panicked"))??;
    let samples: Vec<(Duration, (u64, u64))> = samples
        .into_iter()
        .map(|(t, r)| r.map(|r| (t, r)))
        .collect::<Result<_>>()?;
    // The requests hang until the client gives up: none may be answered.
    ensure!(
        report.responses == 0,
        "the stalled upstream's requests got answers: {:?}",
        report.by_status
    );
    let window: Vec<(Duration, u64)> = samples
        .iter()
        .filter(|(_, (_, active))| *active >= u64::from(requests))
        .map(|(t, (rss, _))| (*t, *rss))
        .collect();
    let (Some(first), Some(last)) = (window.first(), window.last()) else {
        anyhow::bail!("never all {requests} requests open at once: {samples:?}");
    };
    let peak = window.iter().map(|(_, r)| *r).max().unwrap_or(rss_before);
    let delta = peak.saturating_sub(rss_before);
    let per_request = delta as f64 / f64::from(requests);
    let midpoint = first.0 + (last.0 - first.0) / 2;
    let growth = growth_in_second_half(&window, midpoint);
    eprintln!(
        "{requests} stalled requests (58 KiB headers, 1 MiB bodies): RSS {rss_before} -> {peak} KiB, \
         {per_request:.0} KiB a request, +{growth} KiB in the second half; samples {samples:?}"
    );
    figures::record(scenario, "stalled requests", f64::from(requests), "count");
    figures::record(scenario, "RSS rise", delta as f64, "KiB");
    figures::record(scenario, "RSS per stalled request", per_request, "KiB");
    figures::record(
        scenario,
        "RSS per request / header limit (Envoy's rule: < 100)",
        per_request / 60.0,
        "x",
    );
    figures::record(
        scenario,
        "RSS growth in the second half of the hold",
        growth as f64,
        "KiB",
    );
    // Budget: Envoy's default watermark is 1 MiB per connection (`per_connection_buffer_limit_bytes`)
    // and a proxied request holds two, downstream and upstream; keel's share is header buffers, the
    // 64 KiB retry buffer and hyper's write queue (~400 KiB). Envoy's rule (< 100x the 60 KiB header
    // limit, 6,000 KiB) is far above that.
    ensure!(
        per_request <= 2048.0,
        "a stalled request cost {per_request:.0} KiB of keel's memory"
    );
    ensure!(growth <= 8 * 1024, "keel's RSS kept growing: +{growth} KiB");
    admin_answers(&keel, Duration::from_secs(1))?;
    Ok(())
}

/// One sample of D5's timeline: time since the attack started, the cgroup's working set and keel's
/// overload level (`keel_overload_level`).
type PressureSample = (Duration, u64, u64);

/// D5's attack: `requests` uploads (58 KiB headers, 1 MiB bodies) to an upstream that never reads,
/// started in ten waves 50 ms apart (all of them are admitted before keel refuses new requests at
/// 90 %, so the working set must reach the reset level), each held until `hold`; meanwhile the cgroup's working set
/// and keel's overload level are sampled every 20 ms, and (`legit_pod`) a client sends small
/// keep-alive requests. Returns the samples, the uploads' reports and the legitimate client's.
/// How much RSS the second half of a hold adds over its start: the highest sample from `midpoint`
/// on less the first one there. A fall from an early peak (the allocator returning transient
/// buffers) is not growth.
fn growth_in_second_half(window: &[(Duration, u64)], midpoint: Duration) -> u64 {
    let second_half: Vec<u64> = window
        .iter()
        .filter(|(t, _)| *t >= midpoint)
        .map(|(_, rss)| *rss)
        .collect();
    let start = second_half.first().copied().unwrap_or(0);
    let highest = second_half.iter().copied().max().unwrap_or(start);
    highest.saturating_sub(start)
}

fn d5_attack(
    fx: &Fixture,
    keel: &Keel,
    memcg: &keel_tests::memcg::MemoryCgroup,
    (bulk, sink_vip): (&keel_tests::Pod, std::net::SocketAddr),
    requests: u32,
    hold: Duration,
    legit_pod: Option<&keel_tests::Pod>,
) -> Result<(
    Vec<PressureSample>,
    Vec<HttpGetReport>,
    Option<HttpGetReport>,
)> {
    let big_header = "h".repeat(58 * 1024);
    let waves = 10;
    let per_wave = requests.div_ceil(waves);
    std::thread::scope(|s| {
        let uploads: Vec<_> = (0..waves)
            .map(|wave| {
                let big_header = &big_header;
                s.spawn(move || {
                    std::thread::sleep(Duration::from_millis(50) * wave);
                    fx.agent.http_get(
                        bulk,
                        &HttpGet::new("http://sink:8080/upload")
                            .connect_to(sink_vip)
                            .method("POST")
                            .header("x-bulk", big_header)
                            .body_size(1 << 20)
                            .count(per_wave)
                            .concurrency(per_wave)
                            .request_timeout(hold)
                            .timeout(hold * 3),
                    )
                })
            })
            .collect();
        let legit = legit_pod.map(|pod| {
            s.spawn(move || {
                fx.agent.http_get(
                    pod,
                    &HttpGet::new("http://reviews:9080/")
                        .connect_to(reviews_vip())
                        .count(1_000_000)
                        .request_timeout(Duration::from_secs(2))
                        .timeout(hold),
                )
            })
        });
        let started = Instant::now();
        let mut samples = Vec::new();
        while started.elapsed() < hold {
            let level = prom(keel, "keel_overload_level").unwrap_or(u64::MAX);
            samples.push((started.elapsed(), memcg.working_set()?, level));
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut reports = Vec::new();
        for upload in uploads {
            reports.push(
                upload
                    .join()
                    .map_err(|_| anyhow::anyhow!("upload thread panicked"))??,
            );
        }
        let legit = match legit.map(|l| l.join()) {
            None => None,
            Some(Ok(report)) => Some(report?),
            Some(Err(_)) => anyhow::bail!("legitimate client thread panicked"),
        };
        Ok((samples, reports, legit))
    })
}

/// D5: keel runs in a memory cgroup limited to 80 % of what an attack needs (measured first, with
/// no limit). The overload manager's actions fire in order as the pressure rises (keep-alive off,
/// then 503 `envoy overloaded` on new requests, then the connections holding the most unanswered
/// bytes reset), the kernel OOM-kills nothing, and keel serves again once the attack is over.
#[test]
fn chaos_d5_memory_pressure_fires_overload_actions_in_order_without_oom() -> Result<()> {
    let scenario = "D5 memory pressure";
    let mut fx = Fixture::reviews(PREFIX, 242, &["v1"])?;
    let bulk = fx.add_pod("bulk", 30, &[("app", "bulk")], &[], false)?;
    let sink = fx.add_pod("sink", 40, &[("app", "sink")], &[], false)?;
    fx.servers.push(fx.agent.tcp_sink_server(&sink, 8080)?);
    let sink_vip = fx.add_simple_service("sink", 40, "http", 8080, 8080)?;
    let memcg = keel_tests::memcg::MemoryCgroup::create("keel-test-d5-242")?;
    let requests = sized(200u32, 500);
    let hold = Duration::from_secs(sized(5, 8));

    // What the attack needs: the cgroup's peak working set with no limit.
    let need = {
        let keel = start_keel(&fx, &[])?;
        memcg.adopt(keel.pid())?;
        legit(&fx, &fx.sleep, 20, "warm-up")?;
        let (samples, _, _) =
            d5_attack(&fx, &keel, &memcg, (&bulk, sink_vip), requests, hold, None)?;
        let peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
        let ramp = samples
            .iter()
            .find(|s| s.1 >= peak * 9 / 10)
            .map_or(Duration::ZERO, |s| s.0);
        eprintln!(
            "no limit: peak working set {} KiB, 90 % of it reached after {ramp:?}",
            peak / 1024
        );
        figures::record(
            scenario,
            "working set needed (no limit)",
            (peak / 1024) as f64,
            "KiB",
        );
        figures::record(
            scenario,
            "time to 90 % of the peak",
            ramp.as_secs_f64() * 1e3,
            "ms",
        );
        ensure!(
            samples.iter().all(|s| s.2 == 0),
            "overload actions fired with no memory limit: {samples:?}"
        );
        peak
    };
    ensure!(
        need > 64 << 20,
        "the attack needed only {need} bytes: not an attack"
    );
    let limit = need * 8 / 10;
    memcg.set_limit(Some(limit))?;
    figures::record(
        scenario,
        "memory limit (80 % of the need)",
        (limit / 1024) as f64,
        "KiB",
    );

    let keel = start_keel(&fx, &[])?;
    memcg.adopt(keel.pid())?;
    legit(&fx, &fx.sleep, 20, "warm-up under the limit")?;
    let (samples, uploads, legit_report) = d5_attack(
        &fx,
        &keel,
        &memcg,
        (&bulk, sink_vip),
        requests,
        hold,
        Some(&fx.sleep),
    )?;
    let first_at = |level: u64| samples.iter().find(|s| s.2 >= level).map(|s| s.0);
    let transitions: Vec<(u128, u64, u64)> = samples
        .iter()
        .enumerate()
        .filter(|(i, s)| *i == 0 || samples[i - 1].2 != s.2)
        .map(|(_, s)| (s.0.as_millis(), s.1 >> 20, s.2))
        .collect();
    eprintln!("level changes (ms, working set MiB, level): {transitions:?}");
    let (keepalive_off, refusing, resetting) = (first_at(1), first_at(2), first_at(3));
    let peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let legit_report = legit_report.context("no legitimate client report")?;
    let stats = |name: &str| prom(&keel, name);
    let keepalive_disabled = stats("keel_downstream_cx_overload_disable_keepalive_total")?;
    let refused = stats("keel_downstream_rq_overload_close_total")?;
    let reset = stats("keel_downstream_cx_overload_reset_total")?;
    let oom_kills = memcg.oom_kills()?;
    eprintln!(
        "limit {} KiB: peak {} KiB; keep-alive off at {keepalive_off:?}, 503 at {refusing:?}, resets \
         at {resetting:?}; {keepalive_disabled} connections told to close, {refused} requests \
         refused, {reset} connections reset; OOM kills {oom_kills}; legitimate client {:?}; \
         errors {} (first {:?}); uploads {:?}",
        limit / 1024,
        peak / 1024,
        legit_report.by_status,
        legit_report.errors,
        legit_report.first_error,
        uploads.iter().map(|u| &u.by_status).collect::<Vec<_>>(),
    );
    let ms = |t: Option<Duration>| t.map_or(-1.0, |t| t.as_secs_f64() * 1e3);
    figures::record(
        scenario,
        "peak working set under the limit",
        (peak / 1024) as f64,
        "KiB",
    );
    figures::record(scenario, "keep-alive off after", ms(keepalive_off), "ms");
    figures::record(scenario, "503 on new requests after", ms(refusing), "ms");
    figures::record(scenario, "resets after", ms(resetting), "ms");
    figures::record(scenario, "connections reset", reset as f64, "count");
    figures::record(
        scenario,
        "requests refused (503 envoy overloaded)",
        refused as f64,
        "count",
    );
    figures::record(scenario, "OOM kills", oom_kills as f64, "count");

    ensure!(
        oom_kills == 0,
        "the kernel OOM-killed {oom_kills} process(es) in keel's cgroup"
    );
    ensure!(
        std::fs::read_to_string(format!("/proc/{}/stat", keel.pid()))
            .is_ok_and(|s| !s.contains(") Z ")),
        "keel died under memory pressure"
    );
    let (Some(keepalive_off), Some(refusing), Some(resetting)) =
        (keepalive_off, refusing, resetting)
    else {
        anyhow::bail!(
            "not every overload action fired: keep-alive off {keepalive_off:?}, 503 {refusing:?}, \
             reset {resetting:?}; samples {samples:?}"
        );
    };
    ensure!(
        keepalive_off <= refusing && refusing <= resetting,
        "the actions fired out of order: keep-alive off {keepalive_off:?}, 503 {refusing:?}, reset \
         {resetting:?}"
    );
    ensure!(reset > 0, "no connection was reset");
    ensure!(
        keepalive_disabled > 0 && refused > 0,
        "keep-alive disabled on {keepalive_disabled} connections, {refused} requests refused"
    );
    // The refused requests got Envoy's overload reply.
    let overloaded = legit_report.with_body(503, "envoy overloaded")
        + uploads
            .iter()
            .map(|u| u.with_body(503, "envoy overloaded"))
            .sum::<u64>();
    ensure!(
        overloaded > 0,
        "no client saw 503 `envoy overloaded`: legitimate {:?}",
        legit_report.by_status
    );
    // Over: the pressure falls and every pod is served again.
    common::wait_until("overload to end", Duration::from_secs(10), || {
        Ok(prom(&keel, "keel_overload_level")? == 0)
    })?;
    legit(&fx, &fx.sleep, 20, "after the attack")?;
    admin_answers(&keel, Duration::from_secs(1))?;
    Ok(())
}
