//! Memory as the node grows: with N pods and N services on the node, N sidecars (each an Envoy with
//! the outbound config of all N services and an inbound listener for its pod) against one node Envoy
//! with N services and one Keel with N services and N pods.
//!
//! Each service `svc-<i>` selects pod `app-<i>`, with the same v1/v2 DestinationRule and
//! VirtualService (route policy included) as the latency runs (so each proxy holds N route entries and 3N clusters, the way
//! istiod would configure it). Proxies are measured idle, a few seconds after they report ready:
//! this is the config-proportional floor, not the memory under load (that is in the latency runs).

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use keel_tests::{ConfigDir, Keel, KeelOptions, Pod, PodNet, Proc};
use serde::Serialize;

use super::envoy;
use super::install::Tools;
use super::mesh::{self, Endpoint, PodDef, Service, APP_PORT_H1, NAMESPACE};
use super::procs;
use super::rig;
use super::{Mode, Settings};

/// How long proxies idle after ready before memory is read (lazy init, first stats flush).
const SETTLE: Duration = Duration::from_secs(3);

/// Memory of each mode's proxies at one node size, KiB.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryPoint {
    /// Pods (and services) on the node.
    pub pods: u16,
    /// Sum of VmRSS of the N sidecars.
    pub sidecars_rss_kib: Option<u64>,
    /// Sum of PSS of the N sidecars (shared pages, e.g. Envoy's text, counted once).
    pub sidecars_pss_kib: Option<u64>,
    /// VmRSS of the node Envoy.
    pub node_envoy_rss_kib: Option<u64>,
    /// VmRSS of Keel.
    pub keel_rss_kib: Option<u64>,
}

/// Runs the memory measurement for every node size in `settings.scale` on network index `index`.
pub fn run(
    settings: &Settings,
    tools: &Tools,
    keel_bin: Option<&std::path::Path>,
    index: u8,
    failures: &mut Vec<(Mode, String, String)>,
) -> Result<Vec<MemoryPoint>> {
    let mut points = Vec::new();
    for &n in &settings.scale {
        ensure!(
            (1..=240).contains(&n),
            "memory runs support 1..=240 pods per node (one /24), not {n}"
        );
        note!("bench: memory with {n} pods and services");
        let mut net = PodNet::new("kbscale", index).context("building the memory runs' network")?;
        let pods: Vec<Pod> = (0..n)
            .map(|i| {
                let suffix = u8::try_from(i + 10).context("pod index")?;
                net.add_pod(NAMESPACE, &format!("app-{i}"), suffix)
            })
            .collect::<Result<_>>()?;
        let services: Vec<Service> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let i = u16::try_from(i).unwrap_or(u16::MAX);
                Service {
                    name: format!("svc-{i}"),
                    vip: mesh::vip(i),
                    target_port: APP_PORT_H1,
                    http2: false,
                    app: format!("app-{i}"),
                    endpoints: vec![Endpoint {
                        pod: p.name.clone(),
                        ip: p.ip,
                        version: if i % 2 == 0 { "v1" } else { "v2" }.into(),
                    }],
                    v1_weight: settings.v1_weight,
                    policy: settings.route_policy,
                    traffic: settings.traffic_policy,
                }
            })
            .collect();
        let mut point = MemoryPoint {
            pods: n,
            sidecars_rss_kib: None,
            sidecars_pss_kib: None,
            node_envoy_rss_kib: None,
            keel_rss_kib: None,
        };
        let want = |m: Mode| settings.modes.contains(&m);
        // A proxy that fails to start at some size is a finding, not a reason to lose the others.
        let mut record = |mode: Mode, e: anyhow::Error| {
            note!(
                "bench: MEMORY RUN FAILED {} at {n} pods: {e:#}",
                mode.name()
            );
            failures.push((mode, format!("memory at {n} pods"), format!("{e:#}")));
        };
        if want(Mode::Sidecar) {
            match sidecars(&net, tools, &services, &pods) {
                Ok((rss, pss)) => {
                    point.sidecars_rss_kib = Some(rss);
                    point.sidecars_pss_kib = Some(pss);
                }
                Err(e) => record(Mode::Sidecar, e),
            }
        }
        if want(Mode::NodeEnvoy) {
            match node_envoy(&net, tools, &services) {
                Ok(rss) => point.node_envoy_rss_kib = Some(rss),
                Err(e) => record(Mode::NodeEnvoy, e),
            }
        }
        if let Some(bin) = keel_bin.filter(|_| want(Mode::Keel)) {
            match keel(&mut net, &services, &pods, bin) {
                Ok(rss) => point.keel_rss_kib = Some(rss),
                Err(e) => record(Mode::Keel, e),
            }
        }
        note!("bench: memory {point:?}");
        net.teardown()?;
        points.push(point);
    }
    Ok(points)
}

fn sidecars(net: &PodNet, tools: &Tools, services: &[Service], pods: &[Pod]) -> Result<(u64, u64)> {
    let mut procs_: Vec<Proc> = Vec::new();
    for pod in pods {
        let cfg = envoy::sidecar(services, pod.ip, &[(APP_PORT_H1, false)]);
        let path = net.work_dir().join(format!("envoy-{}.json", pod.name));
        std::fs::write(&path, serde_json::to_string(&cfg)?)
            .with_context(|| format!("writing {}", path.display()))?;
        procs_.push(rig::start_sidecar(tools, pod, &path)?);
    }
    for (pod, p) in pods.iter().zip(procs_.iter_mut()) {
        rig::wait_sidecar_ready(tools, pod, p)?;
    }
    std::thread::sleep(SETTLE);
    let mut rss = 0;
    let mut pss = 0;
    for p in &procs_ {
        let (r, s) = procs::memory_kib(p.pid())?;
        rss += r;
        pss += s;
    }
    Ok((rss, pss))
}

fn node_envoy(net: &PodNet, tools: &Tools, services: &[Service]) -> Result<u64> {
    let admin = keel_tests::keel::free_local_port()?;
    let cfg = envoy::node(
        services,
        net.bridge_ip(),
        rig::NODE_ENVOY_PORT,
        admin.port(),
    );
    let path = net.work_dir().join("envoy-node.json");
    std::fs::write(&path, serde_json::to_string(&cfg)?)
        .with_context(|| format!("writing {}", path.display()))?;
    let mut cmd = std::process::Command::new(&tools.envoy);
    cmd.args([
        "-c",
        &path.to_string_lossy(),
        "--concurrency",
        &envoy::CONCURRENCY.to_string(),
        "--disable-hot-restart",
        "--log-level",
        "warn",
    ]);
    let mut p = net.spawn_in_cgroup(&net.system_cgroup(), cmd, "node-envoy")?;
    rig::wait_host_ready(admin, &mut p)?;
    std::thread::sleep(SETTLE);
    Ok(procs::memory_kib(p.pid())?.0)
}

fn keel(
    net: &mut PodNet,
    services: &[Service],
    pods: &[Pod],
    bin: &std::path::Path,
) -> Result<u64> {
    let defs: Vec<PodDef> = services
        .iter()
        .zip(pods)
        .map(|(s, p)| PodDef {
            name: p.name.clone(),
            ip: p.ip,
            labels: vec![
                ("app".into(), s.app.clone()),
                (
                    "version".into(),
                    s.endpoints
                        .first()
                        .map(|e| e.version.clone())
                        .unwrap_or_default(),
                ),
            ],
        })
        .collect();
    let config = ConfigDir::new("bench-scale")?;
    config.write("scale.yaml", &mesh::keel_yaml(services, &defs))?;
    let mut opts = KeelOptions::new(net, config.path())?;
    opts.binary = Some(bin.to_path_buf());
    let keel = Keel::start_with(net, opts).context("starting keel")?;
    std::thread::sleep(SETTLE);
    Ok(procs::memory_kib(keel.pid())?.0)
}
