//! Memory with per-client state: N client pods each cycling over M Services (clusters) under a
//! steady load, so one Keel holds per-(client, cluster) state (balancer, connection pool, breaker and
//! outlier detector, pooled upstream connections) for every pair at once, as N sidecars would.
//!
//! Layout on `10.244.<n+1>.0/24` (after the memory runs, which use the same index, are gone):
//! backends `cs-be-<k>` (.10 up, nginx, outside Keel's root), one per 10 services, and clients
//! `cs-client-<i>` (.30 up, under Keel's root). Service `svc-<j>` (VIP `mesh::vip(j)`) selects backend
//! `j % backends`; each has a DestinationRule with the bench's connection pool and outlier
//! detection (no subsets, no VirtualService: one cluster per service).
//!
//! Each client runs `pod-agent conn-cycle` at rate/N requests per second, a new connection per
//! request, its n-th request to service `(i + n) % M`: within M/(rate/N) seconds every client has
//! used every cluster, and from then on the state is steady. Keel's RSS is sampled every 250 ms;
//! the run fails unless every request was answered 200, Keel counted exactly the requests answered
//! and every cluster's `upstream_rq_total` moved.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use keel_tests::agent::ConnLoadReport;
use keel_tests::{ConfigDir, Keel, KeelOptions, Pod, PodNet, Proc};
use serde::Serialize;

use super::install::Tools;
use super::mesh::{
    self, Endpoint, PodDef, RoutePolicy, Service, TrafficPolicy, APP_PORT_H1, NAMESPACE,
    SERVICE_PORT,
};
use super::rig;

/// Services per backend pod.
const SERVICES_PER_BACKEND: u16 = 10;
/// First client's IP suffix.
const CLIENT_SUFFIX: u16 = 30;
/// RSS sampling period.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// Idle time after Keel is ready before the baseline RSS is read.
const SETTLE: Duration = Duration::from_secs(2);

/// What the run is asked for.
#[derive(Debug, Clone, Serialize)]
pub struct Spec {
    /// Client pods.
    pub pods: u16,
    /// Services (clusters).
    pub clusters: u16,
    /// Requests per second, all pods together.
    pub rate: u32,
    /// Seconds of load.
    pub seconds: u64,
    /// `keel run --upstream-state`: `per-client` (Keel's default, as sidecars have it) or `node`.
    pub upstream_state: &'static str,
}

/// Memory figures of Keel's process, KiB (from `/proc/<pid>/status`).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Mem {
    pub rss_kib: u64,
    pub rss_anon_kib: u64,
    pub rss_file_kib: u64,
    /// Peak RSS of the process's life (`VmHWM`).
    pub hwm_kib: u64,
    pub threads: u64,
}

/// What the run measured.
#[derive(Debug, Clone, Serialize)]
pub struct ClientStateResult {
    pub spec: Spec,
    /// Requests per second per client (the total is this × pods).
    pub rate_per_pod: u32,
    pub backends: u16,
    /// Keel ready and idle with the whole config, before any request.
    pub idle: Mem,
    /// Largest RSS sampled during the load.
    pub peak_rss_kib: u64,
    /// Median RSS over the last third of the load (every pair has state by then).
    pub steady_rss_kib: u64,
    /// Right after the load ended.
    pub after: Mem,
    /// `(seconds since the load started, RSS KiB)`.
    pub samples: Vec<(f64, u64)>,
    /// Requests sent and answered 200.
    pub requests: u64,
    pub ok: u64,
    /// Up to 10 distinct failures (status or error) with their counts.
    pub failures: Vec<(String, u64)>,
    /// (client, cluster) pairs that got at least one 200.
    pub pairs_served: u64,
    /// `keel.http_requests` delta over the load.
    pub keel_http_requests: u64,
    /// Clusters whose `upstream_rq_total` moved.
    pub clusters_used: u64,
    /// Sum of every cluster's `upstream_cx_active` after the load (pooled upstream connections).
    pub upstream_cx_active: u64,
    /// Why the run does not count (then the numbers are shown but the target is not met).
    pub error: Option<String>,
}

/// `spec` (Keel's default per-client upstream state), then the same with node-wide state.
pub fn with_node_comparison(spec: &Spec) -> [Spec; 2] {
    [
        spec.clone(),
        Spec {
            upstream_state: "node",
            ..spec.clone()
        },
    ]
}

/// Reads `VmRSS`, `RssAnon`, `RssFile`, `VmHWM` and `Threads` of `pid`.
pub fn mem(pid: u32) -> Result<Mem> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(Mem {
        rss_kib: field("VmRSS:"),
        rss_anon_kib: field("RssAnon:"),
        rss_file_kib: field("RssFile:"),
        hwm_kib: field("VmHWM:"),
        threads: field("Threads:"),
    })
}

/// Runs the per-client state scenario on network index `index`.
pub fn run(spec: &Spec, tools: &Tools, keel_bin: &Path, index: u8) -> Result<ClientStateResult> {
    ensure!(spec.pods >= 1 && spec.clusters >= 1, "nothing to run");
    let backends = spec.clusters.div_ceil(SERVICES_PER_BACKEND);
    ensure!(
        10 + backends <= CLIENT_SUFFIX && CLIENT_SUFFIX + spec.pods <= 250,
        "the per-client state run fits at most {} services and {} pods in one /24",
        (CLIENT_SUFFIX - 10) * SERVICES_PER_BACKEND,
        250 - CLIENT_SUFFIX
    );
    let agent = keel_tests::host::pod_agent_bin(None)?;
    note!(
        "bench: per-client state ({}): {} client pods x {} clusters ({} backends), {} rps for {} s",
        spec.upstream_state,
        spec.pods,
        spec.clusters,
        backends,
        spec.rate,
        spec.seconds
    );
    let mut net = PodNet::new("kbstate", index).context("building the per-client state network")?;
    let mut nginx: Vec<Proc> = Vec::new();
    let mut backend_pods: Vec<Pod> = Vec::new();
    for k in 0..backends {
        let suffix = u8::try_from(10 + k).context("backend suffix")?;
        let pod = net.add_pod_outside_root(NAMESPACE, &format!("cs-be-{k}"), suffix)?;
        nginx.push(rig::start_nginx(&net, &pod, tools, &format!("be-{k}"))?);
        backend_pods.push(pod);
    }
    let clients: Vec<Pod> = (0..spec.pods)
        .map(|i| {
            let suffix = u8::try_from(CLIENT_SUFFIX + i).context("client suffix")?;
            net.add_pod(NAMESPACE, &format!("cs-client-{i}"), suffix)
        })
        .collect::<Result<_>>()?;
    let services: Vec<Service> = (0..spec.clusters)
        .map(|j| {
            let k = usize::from(j / SERVICES_PER_BACKEND);
            let be = &backend_pods[k];
            Service {
                name: format!("svc-{j}"),
                vip: mesh::vip(j),
                target_port: APP_PORT_H1,
                http2: false,
                app: be.name.clone(),
                endpoints: vec![Endpoint {
                    pod: be.name.clone(),
                    ip: be.ip,
                    version: "v1".into(),
                }],
                v1_weight: 50,
                policy: RoutePolicy::Plain,
                traffic: TrafficPolicy::PoolOutlier,
            }
        })
        .collect();
    let mut defs: Vec<PodDef> = backend_pods
        .iter()
        .map(|p| PodDef {
            name: p.name.clone(),
            ip: p.ip,
            labels: vec![
                ("app".into(), p.name.clone()),
                ("version".into(), "v1".into()),
            ],
        })
        .collect();
    defs.extend(clients.iter().map(|p| PodDef {
        name: p.name.clone(),
        ip: p.ip,
        labels: vec![("app".into(), "client".into())],
    }));
    let config = ConfigDir::new("bench-client-state")?;
    config.write("state.yaml", &mesh::keel_yaml_with(&services, &defs, false))?;
    let mut opts = KeelOptions::new(&net, config.path())?;
    opts.binary = Some(keel_bin.to_path_buf());
    opts.extra_args
        .extend(["--upstream-state".into(), spec.upstream_state.into()]);
    let keel = Keel::start_with(&net, opts).context("starting keel")?;
    std::thread::sleep(SETTLE);
    let idle = mem(keel.pid())?;
    let stats_before = keel.stats()?;

    let rate_per_pod = (spec.rate / u32::from(spec.pods)).max(1);
    let addrs: Vec<String> = services
        .iter()
        .map(|s| format!("{}:{SERVICE_PORT}", s.vip))
        .collect();
    let addrs = addrs.join(",");
    let duration = Duration::from_secs(spec.seconds);
    let started = Instant::now();
    let mut agents: Vec<Proc> = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let args = [
            "conn-cycle".to_string(),
            "--addrs".into(),
            addrs.clone(),
            "--start".into(),
            i.to_string(),
            "--rate".into(),
            rate_per_pod.to_string(),
            "--duration-ms".into(),
            duration.as_millis().to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        agents.push(c.spawn(&agent, &args, "conn-cycle")?);
    }
    // Sample Keel's RSS until every client is done (bounded: the clients stop at `duration`, and
    // are killed 30 s after it).
    let deadline = started + duration + Duration::from_secs(30);
    let mut samples: Vec<(f64, u64)> = Vec::new();
    loop {
        samples.push((started.elapsed().as_secs_f64(), mem(keel.pid())?.rss_kib));
        let mut running = 0;
        for a in &mut agents {
            if a.try_wait()?.is_none() {
                running += 1;
            }
        }
        if running == 0 || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(SAMPLE_EVERY);
    }
    for a in &mut agents {
        a.wait_or_kill(Duration::from_secs(1))?;
    }
    let after = mem(keel.pid())?;
    let stats_after = keel.stats()?;

    let mut result = ClientStateResult {
        spec: spec.clone(),
        rate_per_pod,
        backends,
        idle,
        peak_rss_kib: samples.iter().map(|s| s.1).max().unwrap_or(0),
        steady_rss_kib: steady(&samples, duration.as_secs_f64()),
        after,
        samples,
        requests: 0,
        ok: 0,
        failures: Vec::new(),
        pairs_served: 0,
        keel_http_requests: 0,
        clusters_used: 0,
        upstream_cx_active: 0,
        error: None,
    };
    let mut failures: std::collections::BTreeMap<String, u64> = Default::default();
    let mut pairs = std::collections::BTreeSet::new();
    for (i, a) in agents.iter().enumerate() {
        let out = a.stdout();
        let report: ConnLoadReport = match serde_json::from_str(out.trim()) {
            Ok(r) => r,
            Err(e) => {
                *failures
                    .entry(format!("client {i} printed no report ({e})"))
                    .or_default() += 1;
                continue;
            }
        };
        for (n, s) in report.samples.iter().enumerate() {
            result.requests += 1;
            if s.status == 200 {
                result.ok += 1;
                pairs.insert((i, (i + n) % usize::from(spec.clusters)));
            } else {
                let what = if s.error.is_empty() {
                    format!("status {}", s.status)
                } else {
                    s.error.clone()
                };
                *failures.entry(what).or_default() += 1;
            }
        }
    }
    result.pairs_served = pairs.len() as u64;
    let mut failures: Vec<(String, u64)> = failures.into_iter().collect();
    failures.sort_by_key(|f| std::cmp::Reverse(f.1));
    failures.truncate(10);
    result.failures = failures;
    let num = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
    result.keel_http_requests = num(&stats_after, "keel.http_requests")
        .saturating_sub(num(&stats_before, "keel.http_requests"));
    for s in &services {
        let prefix = format!("cluster.outbound|{SERVICE_PORT}||{}.", s.fqdn());
        let total = format!("{prefix}upstream_rq_total");
        if num(&stats_after, &total) > num(&stats_before, &total) {
            result.clusters_used += 1;
        }
        result.upstream_cx_active += num(&stats_after, &format!("{prefix}upstream_cx_active"));
    }
    result.error = check(&result).err().map(|e| format!("{e:#}"));
    note!(
        "bench: per-client state: {} requests, {} ok, {} pairs served, keel counted {}, {} clusters \
         used, {} upstream connections open; keel RSS idle {:.1} MiB, peak {:.1} MiB, steady {:.1} \
         MiB{}",
        result.requests,
        result.ok,
        result.pairs_served,
        result.keel_http_requests,
        result.clusters_used,
        result.upstream_cx_active,
        result.idle.rss_kib as f64 / 1024.0,
        result.peak_rss_kib as f64 / 1024.0,
        result.steady_rss_kib as f64 / 1024.0,
        result
            .error
            .as_ref()
            .map(|e| format!("; FAILED: {e}"))
            .unwrap_or_default()
    );
    drop(agents);
    drop(keel);
    drop(nginx);
    net.teardown()?;
    Ok(result)
}

/// Median RSS of the samples in the last third of the load.
fn steady(samples: &[(f64, u64)], load_s: f64) -> u64 {
    let mut tail: Vec<u64> = samples
        .iter()
        .filter(|(t, _)| *t >= load_s * 2.0 / 3.0 && *t <= load_s)
        .map(|s| s.1)
        .collect();
    if tail.is_empty() {
        return samples.last().map_or(0, |s| s.1);
    }
    tail.sort_unstable();
    tail[tail.len() / 2]
}

/// Every request answered 200, Keel counted each, and every pair and cluster was used.
fn check(r: &ClientStateResult) -> Result<()> {
    ensure!(r.requests > 0, "no request was sent");
    ensure!(
        r.ok == r.requests,
        "{} of {} requests failed: {:?}",
        r.requests - r.ok,
        r.requests,
        r.failures
    );
    ensure!(
        r.keel_http_requests == r.ok,
        "keel counted {} requests but the clients got {} answers: traffic did not take keel's path",
        r.keel_http_requests,
        r.ok
    );
    ensure!(
        r.clusters_used == u64::from(r.spec.clusters),
        "only {} of {} clusters' upstream_rq_total moved",
        r.clusters_used,
        r.spec.clusters
    );
    let pairs = u64::from(r.spec.pods) * u64::from(r.spec.clusters);
    let expected = (r.requests).min(pairs);
    ensure!(
        r.pairs_served >= expected,
        "{} (client, cluster) pairs served, expected {expected}",
        r.pairs_served
    );
    Ok(())
}

/// The report's section: one row per run (Keel's default per-client upstream state, and, for
/// comparison, node-wide state).
pub fn markdown(runs: &[ClientStateResult]) -> String {
    let Some(first) = runs.first() else {
        return String::new();
    };
    let mib = |k: u64| format!("{:.1}", k as f64 / 1024.0);
    let s = &first.spec;
    let mut o = format!(
        "## Keel memory with per-client state under load\n\n{} client pods, each opening a new \
         connection per request at {} rps and cycling over {} Services (one cluster each, a \
         DestinationRule with connectionPool and outlierDetection, {} nginx backends), {} rps in \
         all for {} s. With Keel's default `--upstream-state per-client`, Keel holds a balancer, \
         connection pool, breaker and outlier detector, and the pool's idle upstream connection, per \
         (client, cluster) pair, as {} sidecars would; the `node` row is the same load with one \
         state per cluster for the whole node, for comparison.\n\n",
        s.pods,
        first.rate_per_pod,
        s.clusters,
        first.backends,
        first.rate_per_pod * u32::from(s.pods),
        s.seconds,
        s.pods,
    );
    o.push_str(
        "| upstream state | Keel RSS idle MiB | peak MiB | steady MiB (median, last third) | after MiB (anon / file) | VmHWM MiB | threads | requests (200) | pairs served | keel http_requests | clusters used | upstream connections open |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in runs {
        o.push_str(&format!(
            "| {} | {} | {} | {} | {} ({} / {}) | {} | {} | {} ({}) | {} | {} | {} | {} |\n",
            r.spec.upstream_state,
            mib(r.idle.rss_kib),
            mib(r.peak_rss_kib),
            mib(r.steady_rss_kib),
            mib(r.after.rss_kib),
            mib(r.after.rss_anon_kib),
            mib(r.after.rss_file_kib),
            mib(r.after.hwm_kib),
            r.after.threads,
            r.requests,
            r.ok,
            r.pairs_served,
            r.keel_http_requests,
            r.clusters_used,
            r.upstream_cx_active,
        ));
    }
    o.push('\n');
    for r in runs {
        if let Some(e) = &r.error {
            o.push_str(&format!(
                "**The `{}` run failed:** {e}\n\n",
                r.spec.upstream_state
            ));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_is_the_median_of_the_last_third() {
        let samples: Vec<(f64, u64)> = (0..=30).map(|t| (f64::from(t), 100 + t as u64)).collect();
        // t in [20, 30]: 120..=130, median 125.
        assert_eq!(steady(&samples, 30.0), 125);
        assert_eq!(steady(&[(1.0, 7)], 30.0), 7);
    }
}
