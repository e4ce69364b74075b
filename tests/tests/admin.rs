//! The admin API as users read it (istio-semantics §4.2): Envoy's `/stats` lines the seeds grep for
//! after known traffic (circuit breaking, retries, outlier detection), per client pod with
//! `?client=`, `/clusters` with an ejected host's flag, `/config_dump` with a rejected resource while
//! its previous version keeps serving, Keel's own metrics (kernel maps, refused connections). That
//! no pod reaches the admin port is `metrics.rs`'s `admin_port_is_not_reachable_from_pods`.
//!
//! The DaemonSet's probes and preStop hook against a running keel: `/ready` and `/live` as the
//! manifest names them, `POST /quitquitquit` through the manifest's own `keel quit` command.
//!
//! Subnet indices 170..=179 and 196 belong to this file.

mod common;
mod manifest;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::{reviews_vip, Fixture, REVIEWS_FQDN, REVIEWS_PORT};
use keel_tests::keel::attached_programs;
use keel_tests::{ConnectOutcome, HttpGet, HttpGetReport, HttpServerOpts, Keel, Pod};

const PREFIX: &str = "ktadm";
/// Envoy's circuit-breaker reply body (§1.17).
const OVERFLOW_BODY: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: overflow";

/// The reviews cluster's Envoy name (no subset).
fn reviews_cluster() -> String {
    format!("outbound|9080||{REVIEWS_FQDN}")
}

/// `GET <path>` on the admin address as text; fails on a non-200 answer.
fn admin_text(keel: &Keel, path: &str) -> Result<String> {
    let r = keel_tests::http::get(keel.options().admin_addr, path, Duration::from_secs(5))?;
    ensure!(
        r.status == 200,
        "GET {path} answered {}: {}",
        r.status,
        r.text()
    );
    Ok(r.text())
}

/// The `name: value` lines of Envoy's text `/stats` (every line must have that shape).
fn stat_lines(text: &str) -> Result<BTreeMap<String, u64>> {
    text.lines()
        .map(|l| {
            let (name, value) = l
                .rsplit_once(": ")
                .with_context(|| format!("not a `name: value` line: {l:?}"))?;
            let value = value
                .parse()
                .with_context(|| format!("not a number in {l:?}"))?;
            Ok((name.to_string(), value))
        })
        .collect()
}

/// `GET /stats<query>` as a map; `query` is appended as is (e.g. `?client=default/sleep`).
fn stats(keel: &Keel, query: &str) -> Result<BTreeMap<String, u64>> {
    stat_lines(&admin_text(keel, &format!("/stats{query}"))?)
}

/// `cluster.<reviews>.<stat>` in `s`; a missing line is an error.
fn reviews_stat(s: &BTreeMap<String, u64>, stat: &str) -> Result<u64> {
    let name = format!("cluster.{}.{stat}", reviews_cluster());
    s.get(&name)
        .copied()
        .with_context(|| format!("no {name} in /stats: {s:?}"))
}

/// The reviews DestinationRule with `policy` lines under `trafficPolicy:` (4-space indented).
fn reviews_rule(policy: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: reviews\n  \
         namespace: default\nspec:\n  host: reviews\n  trafficPolicy:\n{policy}"
    )
}

/// `count` GETs of reviews over `concurrency` keep-alive connections.
fn load(concurrency: u32, count: u32) -> HttpGet {
    HttpGet::new("http://reviews:9080/")
        .connect_to(reviews_vip())
        .count(count)
        .concurrency(concurrency)
        .timeout(Duration::from_secs(60))
}

/// Adds logged backends `reviews-<v>` (pods `.11`, `.12`, ...) with `opts(v)`.
fn backends(
    fx: &mut Fixture,
    versions: &[&str],
    opts: impl Fn(&str) -> HttpServerOpts,
) -> Result<Vec<Pod>> {
    let mut pods = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        pods.push(fx.add_logged_backend(
            &format!("reviews-{v}"),
            u8::try_from(11 + i)?,
            REVIEWS_PORT,
            v,
            &[("app", "reviews"), ("version", v)],
            opts(v),
        )?);
    }
    Ok(pods)
}

/// The seeds' circuit-breaking task, read as `pilot-agent request GET stats | grep ...` reads it:
/// `upstream_rq_pending_overflow` is exactly the number of overflow replies, `upstream_rq_200` and
/// `upstream_rq_total` exactly the 200s the backend served, `upstream_cx_overflow` moved; the JSON
/// form and `?filter=` agree with the text.
#[test]
fn circuit_breaker_stats_have_the_exact_values_the_seeds_grep_for() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 170, &[])?;
    backends(&mut fx, &["v1"], |_| HttpServerOpts {
        delay_ms: Some(100),
        ..HttpServerOpts::default()
    })?;
    fx.config.write(
        "destinationrule.yaml",
        &reviews_rule(
            "    connectionPool:\n      tcp:\n        maxConnections: 1\n      http:\n        \
             http1MaxPendingRequests: 1\n        maxRequestsPerConnection: 1\n",
        ),
    )?;
    let keel = fx.start_keel_strict()?;

    let r = fx.get(&load(3, 30))?;
    let ok = r.status(200);
    let overflow = r.with_body(503, OVERFLOW_BODY);
    ensure!(
        r.errors == 0 && ok + overflow == 30 && overflow > 0,
        "expected 200s and overflow 503s only, some of each: {:?} {:?}",
        r.by_status,
        r.other_bodies
    );
    let served = fx
        .log("reviews-v1")?
        .settle(Duration::from_millis(300), Duration::from_secs(5))?
        .len() as u64;
    ensure!(
        served == ok,
        "backend served {served}, client got {ok} 200s"
    );

    let s = stats(&keel, "")?;
    eprintln!(
        "{ok} x 200, {overflow} x 503 overflow; /stats: pending_overflow {}, cx_overflow {}, \
         rq_total {}",
        reviews_stat(&s, "upstream_rq_pending_overflow")?,
        reviews_stat(&s, "upstream_cx_overflow")?,
        reviews_stat(&s, "upstream_rq_total")?
    );
    ensure!(
        reviews_stat(&s, "upstream_rq_pending_overflow")? == overflow,
        "upstream_rq_pending_overflow must be the {overflow} overflow replies: {s:?}"
    );
    for stat in [
        "upstream_rq_total",
        "upstream_rq_completed",
        "upstream_rq_200",
        "upstream_rq_2xx",
    ] {
        ensure!(
            reviews_stat(&s, stat)? == ok,
            "{stat} must be the {ok} requests the backend answered: {}",
            reviews_stat(&s, stat)?
        );
    }
    ensure!(
        reviews_stat(&s, "upstream_rq_5xx")? == 0,
        "no upstream 5xx: {s:?}"
    );
    let cx_overflow = reviews_stat(&s, "upstream_cx_overflow")?;
    ensure!(
        cx_overflow > 0,
        "one connection for 3 clients must overflow: {s:?}"
    );

    // `?filter=` searches the names (as Envoy's); JSON has the same values in Envoy's shape.
    // `reviews.*upstream_(rq_pending|cx)_overflow`, percent-encoded.
    let filtered = stats(
        &keel,
        "?filter=reviews.*upstream_%28rq_pending%7Ccx%29_overflow",
    )?;
    ensure!(
        filtered.len() == 2
            && filtered.get(&format!(
                "cluster.{}.upstream_rq_pending_overflow",
                reviews_cluster()
            )) == Some(&overflow)
            && filtered.get(&format!(
                "cluster.{}.upstream_cx_overflow",
                reviews_cluster()
            )) == Some(&cx_overflow),
        "filtered /stats: {filtered:?}"
    );
    let json = keel.admin_get("/stats?format=json&filter=reviews.*pending_overflow")?;
    ensure!(
        json == serde_json::json!({"stats": [{
            "name": format!("cluster.{}.upstream_rq_pending_overflow", reviews_cluster()),
            "value": overflow,
        }]}),
        "JSON /stats: {json}"
    );
    // Once the load is over, no breaker limit is reached any more.
    common::wait_until("breakers close", Duration::from_secs(5), || {
        let s = stats(&keel, "")?;
        Ok(reviews_stat(&s, "circuit_breakers.default.cx_open")? == 0
            && reviews_stat(&s, "circuit_breakers.default.rq_pending_open")? == 0
            && reviews_stat(&s, "upstream_rq_pending_active")? == 0)
    })?;
    // The only client's own view is the whole sum.
    let own = stats(&keel, "?client=default/sleep")?;
    ensure!(
        reviews_stat(&own, "upstream_rq_pending_overflow")? == overflow
            && reviews_stat(&own, "upstream_cx_overflow")? == cx_overflow,
        "sleep's own stats: {own:?}"
    );
    Ok(())
}

/// Retries per cluster: a backend answering 503 with `attempts: 2` on `5xx` gets three attempts per
/// request; `upstream_rq_retry` counts the retries, `upstream_rq_retry_limit_exceeded` the requests
/// that ran out, `upstream_rq_503` every attempt.
#[test]
fn retry_stats_count_each_retry_of_the_cluster() -> Result<()> {
    const REQUESTS: u32 = 4;
    let mut fx = Fixture::reviews(PREFIX, 171, &[])?;
    backends(&mut fx, &["v1"], |_| HttpServerOpts {
        fail_status: Some(503),
        ..HttpServerOpts::default()
    })?;
    fx.config.write(
        "virtualservice.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\n  \
         namespace: default\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination:\n        \
         host: reviews\n    retries:\n      attempts: 2\n      retryOn: 5xx\n      perTryTimeout: 2s\n",
    )?;
    let keel = fx.start_keel_strict()?;
    let r = fx.get(&load(1, REQUESTS))?;
    ensure!(
        r.status(503) == u64::from(REQUESTS),
        "every request ends 503: {:?}",
        r.by_status
    );
    let attempts = fx
        .log("reviews-v1")?
        .settle(Duration::from_millis(300), Duration::from_secs(5))?
        .len() as u64;
    let n = u64::from(REQUESTS);
    ensure!(
        attempts == 3 * n,
        "the backend saw {attempts} attempts, not {}",
        3 * n
    );
    let s = stats(&keel, "")?;
    for (stat, want) in [
        ("upstream_rq_retry", 2 * n),
        ("upstream_rq_retry_limit_exceeded", n),
        ("upstream_rq_retry_success", 0),
        ("upstream_rq_total", 3 * n),
        ("upstream_rq_503", 3 * n),
        ("upstream_rq_5xx", 3 * n),
    ] {
        ensure!(
            reviews_stat(&s, stat)? == want,
            "{stat} is {}, want {want}",
            reviews_stat(&s, stat)?
        );
    }
    ensure!(
        s.get("keel.upstream_rq_retry") == Some(&(2 * n)),
        "the node total of retries: {:?}",
        s.get("keel.upstream_rq_retry")
    );
    Ok(())
}

/// Outlier detection is per client pod: `sleep` ejects the failing endpoint, `other` (two requests,
/// below the threshold) does not. `?client=` shows each pod's own counts and ejections,
/// `/clusters?client=` each pod's health flags, and the default views the sums and who ejected.
#[test]
fn two_clients_have_their_own_counts_ejections_and_cluster_health() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 172, &[])?;
    let pods = backends(&mut fx, &["v1", "v2"], |v| HttpServerOpts {
        fail_status: (v == "v2").then_some(500),
        ..HttpServerOpts::default()
    })?;
    let other = fx.add_pod("other", 3, &[("app", "other")], &[], false)?;
    fx.config.write(
        "destinationrule.yaml",
        &reviews_rule(
            "    outlierDetection:\n      consecutive5xxErrors: 3\n      interval: 1s\n      \
             baseEjectionTime: 5m\n      maxEjectionPercent: 100\n",
        ),
    )?;
    let keel = fx.start_keel_strict()?;
    let sleep_r: HttpGetReport = fx.get(&load(1, 30))?;
    let other_r = fx.agent.http_get(
        &other,
        &HttpGet::new("http://reviews:9080/")
            .connect_to(reviews_vip())
            .count(2),
    )?;
    ensure!(
        sleep_r.status(500) == 3 && sleep_r.status(200) == 27,
        "sleep: v2 answers 500 until its third error ejects it: {:?}",
        sleep_r.by_status
    );

    let mine = stats(&keel, "?client=default/sleep")?;
    let theirs = stats(&keel, "?client=default/other")?;
    let all = stats(&keel, "")?;
    for (who, s, report) in [("sleep", &mine, &sleep_r), ("other", &theirs, &other_r)] {
        for (stat, want) in [
            ("upstream_rq_total", report.responses),
            ("upstream_rq_200", report.status(200)),
            ("upstream_rq_500", report.status(500)),
        ] {
            let got = s
                .get(&format!("cluster.{}.{stat}", reviews_cluster()))
                .copied()
                .unwrap_or(0);
            ensure!(
                got == want,
                "{who}'s {stat} is {got}, its client saw {want}"
            );
        }
    }
    ensure!(
        !mine.keys().any(|k| k.starts_with("keel.")),
        "a pod's view has only its sidecar's cluster stats: {mine:?}"
    );
    for (stat, sleep_want, other_want) in [
        ("outlier_detection.ejections_active", 1, 0),
        ("outlier_detection.ejections_enforced_total", 1, 0),
        ("outlier_detection.ejections_enforced_consecutive_5xx", 1, 0),
        ("outlier_detection.ejections_total", 1, 0),
    ] {
        ensure!(
            reviews_stat(&mine, stat)? == sleep_want
                && reviews_stat(&theirs, stat)? == other_want
                && reviews_stat(&all, stat)? == sleep_want + other_want,
            "{stat}: sleep {:?}, other {:?}, node {:?}",
            reviews_stat(&mine, stat),
            reviews_stat(&theirs, stat),
            reviews_stat(&all, stat)
        );
    }
    ensure!(
        reviews_stat(&all, "upstream_rq_total")? == sleep_r.responses + other_r.responses,
        "the node's sum"
    );

    // /clusters: the ejected endpoint as each client sees it.
    let v2 = SocketAddr::new(pods[1].ip.into(), REVIEWS_PORT);
    let host = format!("{}::{v2}", reviews_cluster());
    let sleep_view = admin_text(&keel, "/clusters?client=default/sleep")?;
    let other_view = admin_text(&keel, "/clusters?client=default/other")?;
    let node_view = admin_text(&keel, "/clusters")?;
    let has = |text: &str, line: &str| text.lines().any(|l| l == line);
    ensure!(
        has(
            &sleep_view,
            &format!("{host}::health_flags::/failed_outlier_check")
        ),
        "sleep ejected v2:\n{sleep_view}"
    );
    ensure!(
        has(&other_view, &format!("{host}::health_flags::healthy")),
        "other did not eject v2:\n{other_view}"
    );
    ensure!(
        has(
            &node_view,
            &format!("{host}::health_flags::/failed_outlier_check")
        ) && has(&node_view, &format!("{host}::ejected_by::default/sleep")),
        "the node view flags v2 and says who ejected it:\n{node_view}"
    );
    let other_v2 = other_r.status(500);
    ensure!(
        has(&sleep_view, &format!("{host}::rq_total::3"))
            && has(&other_view, &format!("{host}::rq_total::{other_v2}")),
        "per-client rq_total of v2:\nsleep:\n{sleep_view}\nother:\n{other_view}"
    );
    eprintln!("/clusters:\n{node_view}");
    let json = keel.admin_get("/clusters?format=json&client=default/sleep")?;
    let hosts = json["cluster_statuses"]
        .as_array()
        .and_then(|c| {
            c.iter()
                .find(|c| c["name"] == serde_json::json!(reviews_cluster()))
        })
        .and_then(|c| c["host_statuses"].as_array())
        .with_context(|| format!("no reviews cluster in {json}"))?;
    let ejected: Vec<&serde_json::Value> = hosts
        .iter()
        .filter(|h| h["health_status"]["failed_outlier_check"] == serde_json::json!(true))
        .collect();
    ensure!(
        ejected.len() == 1
            && ejected[0]["address"]["socket_address"]["address"]
                == serde_json::json!(v2.ip().to_string()),
        "JSON /clusters for sleep: {json}"
    );
    let unknown = keel_tests::http::get(
        keel.options().admin_addr,
        "/stats?client=default/nobody",
        Duration::from_secs(5),
    )?;
    ensure!(
        unknown.status == 404,
        "an unknown pod is a 404: {}",
        unknown.status
    );
    Ok(())
}

/// A VirtualService edit Keel rejects is listed in `/config_dump` with its reason while the previous
/// version keeps serving; Keel's own metrics count it, the config generation and the kernel's map
/// entries move with the config, and refused connections are counted.
#[test]
fn config_dump_kernel_maps_and_refusals() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 173, &["v1"])?;
    let vs = |header: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\n  \
             namespace: default\nspec:\n  hosts: [reviews]\n  http:\n  - headers:\n      response:\n        \
             set:\n          x-served-by: {header}\n    route:\n    - destination:\n        host: reviews\n"
        )
    };
    fx.config.write("virtualservice.yaml", &vs("first"))?;
    let keel = fx.start_keel_strict()?;
    let served_by = |fx: &Fixture| -> Result<Option<String>> {
        let r = fx.reviews_once("/", &[])?;
        ensure!(r.status(200) == 1, "reviews answers: {:?}", r.by_status);
        Ok(r.last_header_value("x-served-by").map(str::to_owned))
    };
    ensure!(served_by(&fx)?.as_deref() == Some("first"));

    let s = stats(&keel, "")?;
    let stat = |s: &BTreeMap<String, u64>, name: &str| -> Result<u64> {
        s.get(name)
            .copied()
            .with_context(|| format!("no {name} in {s:?}"))
    };
    // Pods sleep and reviews-v1; one Service VIP and port.
    ensure!(
        stat(&s, "keel.kernel_map.POD_CGROUPS.entries")? == 2,
        "{s:?}"
    );
    ensure!(
        stat(&s, "keel.kernel_map.MESHED_DESTS.entries")? == 1,
        "{s:?}"
    );
    ensure!(
        stat(&s, "keel.kernel_map.POD_CGROUPS.capacity")? == 4096,
        "{s:?}"
    );
    ensure!(stat(&s, "keel.config_rejected_resources")? == 0, "{s:?}");
    let generation = stat(&s, "keel.config_generation")?;

    // A bad edit: the old version keeps serving, the dump says why.
    fx.config.write(
        "virtualservice.yaml",
        &vs("second").replace("  - headers:", "  - timeout: banana\n    headers:"),
    )?;
    common::wait_until("the rejection is reported", Duration::from_secs(10), || {
        Ok(stats(&keel, "")?.get("keel.config_rejected_resources") == Some(&1))
    })?;
    ensure!(
        served_by(&fx)?.as_deref() == Some("first"),
        "the rejected edit must not serve"
    );
    let dump = keel.admin_get("/config_dump")?;
    let rejected = dump["rejected"]
        .as_array()
        .with_context(|| format!("no rejected list in {dump}"))?;
    ensure!(
        rejected.len() == 1
            && rejected[0]["resource"] == serde_json::json!("VirtualService default/reviews")
            && rejected[0]["previous_version_serving"] == serde_json::json!(true)
            && rejected[0]["source"]
                .as_str()
                .is_some_and(|s| s.contains("virtualservice.yaml:"))
            && rejected[0]["reason"]
                .as_str()
                .is_some_and(|r| !r.is_empty()),
        "the rejection in /config_dump: {}",
        dump["rejected"]
    );
    ensure!(
        dump["virtual_services"][0]["source"]
            .as_str()
            .is_some_and(|s| s.contains("virtualservice.yaml:")),
        "the serving VirtualService's source: {}",
        dump["virtual_services"]
    );
    let ports = &dump["services"][0]["ports"][0];
    ensure!(
        ports["port"] == serde_json::json!(REVIEWS_PORT)
            && ports["endpoints"]
                == serde_json::json!([format!("{}:{REVIEWS_PORT}", fx.reviews[0].ip)]),
        "reviews' port and endpoint in /config_dump: {}",
        dump["services"]
    );
    ensure!(
        dump["kernel"]["pod_cgroups"].as_array().map(Vec::len) == Some(2),
        "pod cgroups in /config_dump: {}",
        dump["kernel"]
    );

    // A new Service: a new meshed destination in the kernel map, a new generation.
    fx.add_simple_service("ratings", 30, "http", 9080, 9080)?;
    common::wait_until("ratings is meshed", Duration::from_secs(10), || {
        Ok(stats(&keel, "")?.get("keel.kernel_map.MESHED_DESTS.entries") == Some(&2))
    })?;
    ensure!(stat(&stats(&keel, "")?, "keel.config_generation")? > generation);

    // A connection straight to the proxy port has no kernel record: refused and counted.
    let before = stat(&stats(&keel, "")?, "keel.connections_refused.no_record")?;
    let c = fx.agent.tcp_connect(&fx.sleep, fx.net.proxy_addr(), None)?;
    ensure!(c.connected, "the proxy port accepts, then closes: {c:?}");
    common::wait_until("the refusal is counted", Duration::from_secs(5), || {
        Ok(stat(&stats(&keel, "")?, "keel.connections_refused.no_record")? == before + 1)
    })?;
    let prom = admin_text(&keel, "/stats/prometheus")?;
    ensure!(
        prom.lines().any(|l| l
            == format!(
                "keel_connections_refused_total{{reason=\"no_record\"}} {}",
                before + 1
            ))
            && prom
                .lines()
                .any(|l| l == "keel_kernel_map_entries{map=\"MESHED_DESTS\"} 2"),
        "keel's metrics in the Prometheus exposition:\n{prom}"
    );

    ensure!(admin_text(&keel, "/ready")? == "ready\n");
    Ok(())
}

#[test]
fn prestop_quit_stops_keel_and_detaches() -> Result<()> {
    let fx = Fixture::reviews(PREFIX, 196, &["v1"])?;
    let root = fx.net.cgroup_root();
    let mut keel = fx.start_keel_strict()?;
    let admin = keel.options().admin_addr;
    common::ensure_all_ok_via_proxy(&fx.get_reviews(2)?, &fx.net)?;

    // The probes as config/deploy/daemonset.yaml writes them, on this keel's admin address.
    let ds = manifest::daemonset()?;
    let container = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.first())
        .context("no container in the DaemonSet")?;
    for probe in [&container.readiness_probe, &container.liveness_probe] {
        let path = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|g| g.path.clone())
            .context("a probe without an httpGet path")?;
        admin_text(&keel, &path)?;
    }

    // Only POST stops keel.
    let r = keel_tests::http::get(admin, "/quitquitquit", Duration::from_secs(5))?;
    ensure!(r.status == 405, "GET /quitquitquit answered {}", r.status);
    ensure!(keel.try_wait()?.is_none(), "keel exited on a GET");

    // The preStop command, pointed at this keel.
    let command = container
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.exec.as_ref())
        .and_then(|e| e.command.clone())
        .context("no preStop exec command")?;
    let at = command
        .iter()
        .position(|a| a == "--admin-addr")
        .context("preStop has no --admin-addr")?;
    // command[0] is the image's path of keel; this test runs the binary under test.
    let mut args: Vec<String> = command.get(1..).unwrap_or_default().to_vec();
    *args.get_mut(at).context("--admin-addr without a value")? = admin.to_string();
    let started = std::time::Instant::now();
    let out = std::process::Command::new(keel_tests::host::keel_bin()?)
        .args(&args)
        .output()?;
    ensure!(
        out.status.success(),
        "keel {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    ensure!(
        started.elapsed() < Duration::from_secs(20),
        "keel quit took {:?}",
        started.elapsed()
    );
    // `keel quit` returns once the admin port is closed, i.e. keel has exited.
    let mut status = None;
    for _ in 0..40 {
        status = keel.try_wait()?;
        if status.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = status.context("keel still runs after keel quit returned")?;
    ensure!(
        status.success(),
        "keel exited with {status} after /quitquitquit"
    );
    ensure!(
        keel.stderr().contains("POST /quitquitquit")
            && keel.stderr().contains("shutting down: draining"),
        "keel did not take the shutdown path: {}",
        keel.stderr()
    );
    // The programs stay attached (pinned for the next keel) but redirect nothing without a live keel.
    let c = fx.agent.tcp_connect(&fx.sleep, reviews_vip(), None)?;
    ensure!(
        c.outcome == ConnectOutcome::Unreachable,
        "after quit, VIP connects go direct (unreachable here): {c:?}"
    );
    keel_tests::keel::uninstall(&root, fx.net.proxy_addr())?;
    let attached = attached_programs(&root)?;
    ensure!(
        attached.is_empty(),
        "still attached after quit and keel uninstall: {attached:?}"
    );

    // With no keel on the port there is nothing to stop: the hook succeeds at once.
    let started = std::time::Instant::now();
    let out = std::process::Command::new(keel_tests::host::keel_bin()?)
        .args(&args)
        .output()?;
    ensure!(
        out.status.success() && started.elapsed() < Duration::from_secs(5),
        "keel quit with no keel: {} after {:?}: {}",
        out.status,
        started.elapsed(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}
