//! The bench's pod network with every mode's data path up at once, and running load through one.
//!
//! Layout on `10.244.<n>.0/24` (pods in namespace `bench`):
//!
//! | pod | .ip | cgroup | role |
//! |---|---|---|---|
//! | client-direct, client-sidecar, client-node, client-keel | .2-.5 | only client-keel under Keel's root | one client per mode, so each mode's capture (iptables or eBPF) touches only its own client |
//! | bench-v1, bench-v2 | .10, .11 | outside the root | nginx backends of `direct`, `node-envoy`, `keel` |
//! | bench-sc-v1, bench-sc-v2 | .12, .13 | outside the root | nginx backends with inbound Envoy sidecars (`sidecar`) |
//!
//! Services: `bench` (port 80 named `http` -> 8080) and `bench-h2` (port 80 named `http2` -> 8081, h2c),
//! both a v1/v2 weighted canary under the run's route policy (with `features`, a header rule to v2
//! first, which the path check also exercises). All modes' proxies stay up for the whole run (idle while another mode
//! is measured), so modes can be interleaved without restarts.
//!
//! `keel-access-log` needs a second Keel, and one Keel captures its whole cgroup root, so it gets a
//! network of its own (`10.244.<n+2>.0/24`, same layout: backends .10/.11, client .5) with the same
//! services; its Keel writes the access log to a file in that network's work directory, and every
//! check and run also requires the log to have grown by one line per answered request.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use keel_tests::{ConfigDir, Keel, KeelOptions, Pod, PodNet, Proc};
use serde::Serialize;

use super::envoy;
use super::install::Tools;
use super::load::{self, RunResult, Workload};
use super::mesh::{
    self, Endpoint, PodDef, RoutePolicy, Service, TrafficPolicy, APP_PORT_H1, APP_PORT_H2,
    DEBUG_HEADER, DEBUG_SUBSET, NAMESPACE,
};
use super::procs;
use super::{Mode, Settings};

/// Port of the node Envoy's listener on the bridge IP.
pub const NODE_ENVOY_PORT: u16 = 15080;
/// Requests per verification (HTTP/1.1); enough that a 50/50 canary shows both subsets with
/// certainty for practical purposes (a miss has probability 2^-99 at 50/50, 1e-5 at 90/10 for v2).
const VERIFY_H1: usize = 100;
/// Requests per verification over h2c.
const VERIFY_H2: usize = 40;
/// Requests carrying the header rule's header per verification (`features`), HTTP/1.1 and h2c: every
/// one must be answered by the rule's subset.
const VERIFY_HEADER_H1: usize = 20;
const VERIFY_HEADER_H2: usize = 10;
/// How long counters may take to agree after the load stopped (the access log is written by its
/// own thread, a little after the response).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a proxy or backend gets to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a request counter is read.
#[derive(Debug, Clone)]
enum Source {
    /// Envoy in a pod netns (admin on 127.0.0.1:15000 there): sum of `cluster.<prefix>|*.upstream_rq_total`.
    EnvoyInPod { netns: String, prefix: &'static str },
    /// Envoy in the host netns.
    EnvoyHost {
        admin: SocketAddr,
        prefix: &'static str,
    },
    /// Keel's admin `/stats` `http_requests`.
    Keel { admin: SocketAddr },
    /// Lines of Keel's access log file.
    AccessLog { path: PathBuf },
}

/// A counter that must move by exactly the number of requests sent through a mode's path (the sum
/// of its sources, e.g. the inbound sidecars of both backends).
#[derive(Debug, Clone)]
struct Counter {
    label: String,
    sources: Vec<Source>,
}

struct ModeRig {
    mode: Mode,
    client: Pod,
    url_h1: String,
    url_h2: String,
    /// Backend identities the canary may answer with.
    subsets: Vec<&'static str>,
    /// Whether the path routes by the VirtualService's header rule (a meshed mode under `features`),
    /// so the check also sends the header and expects only the rule's subset.
    header_rule: bool,
    counters: Vec<Counter>,
    /// Proxy processes (their CPU and memory are the mode's cost).
    proxies: Vec<Proc>,
    keel: Option<Keel>,
    /// Keel's config; kept for the rig's life so the directory stays for inspection.
    _config: Option<ConfigDir>,
}

impl ModeRig {
    fn proxy_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.proxies.iter().map(Proc::pid).collect();
        if let Some(k) = &self.keel {
            pids.push(k.pid());
        }
        pids
    }
}

/// What the check before measuring saw for one mode and protocol.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub mode: Mode,
    /// `http/1.1` or `h2c`.
    pub protocol: &'static str,
    /// Requests answered.
    pub requests: usize,
    /// Responses per backend identity.
    pub backends: BTreeMap<String, u64>,
    /// Responses per backend identity to the requests that carried the header rule's header
    /// (`None`: the path has no header rule to check).
    pub header_rule_backends: Option<BTreeMap<String, u64>>,
    /// How much each request counter moved (by every request of the check, header rule included).
    pub counters: Vec<(String, u64)>,
    /// Why the path is not the mode's (then its workloads of this protocol are not measured).
    pub error: Option<String>,
}

/// The running network. Field order is drop order: processes die before the network is removed.
pub struct Rig {
    modes: Vec<ModeRig>,
    backends: Vec<Proc>,
    tools: Tools,
    clk_tck: f64,
    net: Option<PodNet>,
    /// `keel-access-log`'s network.
    alog_net: Option<PodNet>,
}

impl Rig {
    /// Builds the network and starts every selected mode's backends and proxies.
    pub fn build(
        settings: &Settings,
        tools: &Tools,
        keel_bin: Option<&Path>,
        index: u8,
        alog_index: u8,
    ) -> Result<Rig> {
        let policy = settings.route_policy;
        load::check_oha(&tools.oha)?;
        let mut net = PodNet::new("kbench", index).context("building the bench's pod network")?;
        note!("bench: pod network {} on {}", net.id(), net.subnet());
        let mut rig = Rig {
            modes: Vec::new(),
            backends: Vec::new(),
            tools: tools.clone(),
            clk_tck: procs::clk_tck()?,
            net: None,
            alog_net: None,
        };
        let want = |m: Mode| settings.modes.contains(&m);

        let plain = [("bench-v1", 10u8, "v1"), ("bench-v2", 11, "v2")];
        let with_sidecar = [("bench-sc-v1", 12u8, "v1"), ("bench-sc-v2", 13, "v2")];
        let mut plain_eps = Vec::new();
        if want(Mode::Direct) || want(Mode::NodeEnvoy) || want(Mode::Keel) {
            for (name, suffix, version) in plain {
                let pod = net.add_pod_outside_root(NAMESPACE, name, suffix)?;
                rig.backends.push(start_nginx(&net, &pod, tools, version)?);
                plain_eps.push(Endpoint {
                    pod: name.into(),
                    ip: pod.ip,
                    version: version.into(),
                });
            }
        }
        let mut sc_pods = Vec::new();
        if want(Mode::Sidecar) {
            for (name, suffix, version) in with_sidecar {
                let pod = net.add_pod_outside_root(NAMESPACE, name, suffix)?;
                rig.backends.push(start_nginx(&net, &pod, tools, version)?);
                sc_pods.push((pod, version));
            }
        }
        for b in &mut rig.backends {
            if let Some(st) = b.try_wait()? {
                bail!("{} exited ({st}): {}", b.label(), b.stderr_tail());
            }
        }

        for &mode in &settings.modes {
            let m = match mode {
                Mode::Direct => {
                    let client = net.add_pod_outside_root(NAMESPACE, "client-direct", 2)?;
                    let v1 = plain_eps.first().context("no v1 backend")?;
                    ModeRig {
                        mode,
                        client,
                        url_h1: format!("http://{}:{APP_PORT_H1}/", v1.ip),
                        url_h2: format!("http://{}:{APP_PORT_H2}/", v1.ip),
                        subsets: vec!["v1"],
                        header_rule: false,
                        counters: Vec::new(),
                        proxies: Vec::new(),
                        keel: None,
                        _config: None,
                    }
                }
                Mode::Sidecar => {
                    let eps = sc_pods
                        .iter()
                        .map(|(p, v)| Endpoint {
                            pod: p.name.clone(),
                            ip: p.ip,
                            version: (*v).into(),
                        })
                        .collect();
                    let services =
                        services(eps, settings.v1_weight, policy, settings.traffic_policy);
                    sidecar_mode(&mut net, tools, &services, &sc_pods)?
                }
                Mode::NodeEnvoy => {
                    let services = services(
                        plain_eps.clone(),
                        settings.v1_weight,
                        policy,
                        settings.traffic_policy,
                    );
                    node_envoy_mode(&mut net, tools, &services)?
                }
                Mode::Keel => {
                    let services = services(
                        plain_eps.clone(),
                        settings.v1_weight,
                        policy,
                        settings.traffic_policy,
                    );
                    let bin = keel_bin.context("keel mode without a keel binary")?;
                    let log = settings.keel_access_log.as_deref().map(PathBuf::from);
                    keel_mode(&mut net, &services, bin, settings, Mode::Keel, log)?
                }
                Mode::KeelAccessLog => {
                    let bin = keel_bin.context("keel-access-log mode without a keel binary")?;
                    let mut alog = PodNet::new("kbalog", alog_index)
                        .context("building keel-access-log's pod network")?;
                    note!("bench: keel-access-log pod network {}", alog.subnet());
                    let mut eps = Vec::new();
                    for (name, suffix, version) in plain {
                        let pod = alog.add_pod_outside_root(NAMESPACE, name, suffix)?;
                        rig.backends.push(start_nginx(&alog, &pod, tools, version)?);
                        eps.push(Endpoint {
                            pod: name.into(),
                            ip: pod.ip,
                            version: version.into(),
                        });
                    }
                    let services =
                        services(eps, settings.v1_weight, policy, settings.traffic_policy);
                    let log = alog.work_dir().join("access.log");
                    let m = keel_mode(
                        &mut alog,
                        &services,
                        bin,
                        settings,
                        Mode::KeelAccessLog,
                        Some(log),
                    );
                    rig.alog_net = Some(alog);
                    m?
                }
            };
            rig.modes.push(m);
        }
        rig.net = Some(net);
        Ok(rig)
    }

    /// The keel process of `mode` (none for the modes without keel).
    pub fn keel_pids(&self, mode: Mode) -> Result<Vec<u32>> {
        Ok(self.mode(mode)?.keel.iter().map(|k| k.pid()).collect())
    }

    fn mode(&self, mode: Mode) -> Result<&ModeRig> {
        self.modes
            .iter()
            .find(|m| m.mode == mode)
            .with_context(|| format!("mode {} is not set up", mode.name()))
    }

    /// Proves every mode's path, per protocol: all responses 200 from the expected subsets (both,
    /// for the canary) and every request counter of the path moved by exactly the number of requests
    /// sent. A failed check is recorded (and that mode's workloads of that protocol are not run),
    /// not fatal, so one broken path does not hide the others' numbers.
    pub fn verify_all(&self) -> Vec<Verification> {
        let mut out = Vec::new();
        for m in &self.modes {
            for http2 in [false, true] {
                let v = self.verify(m, http2);
                match &v.error {
                    None => note!(
                        "bench: verified {} {}: {} requests, backends {:?}, with {}: {:?}, \
                         counters {:?}",
                        v.mode.name(),
                        v.protocol,
                        v.requests,
                        v.backends,
                        DEBUG_HEADER.0,
                        v.header_rule_backends,
                        v.counters
                    ),
                    Some(e) => note!(
                        "bench: PATH CHECK FAILED {} {}: {e}",
                        v.mode.name(),
                        v.protocol
                    ),
                }
                out.push(v);
            }
        }
        out
    }

    fn verify(&self, m: &ModeRig, http2: bool) -> Verification {
        let mut v = Verification {
            mode: m.mode,
            protocol: if http2 { "h2c" } else { "http/1.1" },
            requests: 0,
            backends: BTreeMap::new(),
            header_rule_backends: None,
            counters: Vec::new(),
            error: None,
        };
        if let Err(e) = self.verify_into(m, http2, &mut v) {
            v.error = Some(format!("{e:#}"));
        }
        v
    }

    fn verify_into(&self, m: &ModeRig, http2: bool, v: &mut Verification) -> Result<()> {
        let before = read_counters(&self.tools, &m.counters)?;
        let url = if http2 { &m.url_h2 } else { &m.url_h1 };
        let n = if http2 { VERIFY_H2 } else { VERIFY_H1 };
        for (code, backend) in self.fetch(m, url, n, http2, None)? {
            v.requests += 1;
            ensure!(code == "200", "{url} answered {code} (backend {backend:?})");
            *v.backends.entry(backend).or_default() += 1;
        }
        let seen: Vec<&str> = v.backends.keys().map(String::as_str).collect();
        ensure!(
            seen == m.subsets,
            "expected answers from {:?}, got {:?}",
            m.subsets,
            v.backends
        );
        if m.header_rule {
            // The rule the load never triggers must still be the first rule the proxy applies: with
            // its header, every answer comes from its subset.
            let n = if http2 {
                VERIFY_HEADER_H2
            } else {
                VERIFY_HEADER_H1
            };
            let (name, value) = DEBUG_HEADER;
            let mut answers = BTreeMap::new();
            for (code, backend) in self.fetch(m, url, n, http2, Some(DEBUG_HEADER))? {
                v.requests += 1;
                ensure!(
                    code == "200",
                    "{url} with `{name}: {value}` answered {code} (backend {backend:?})"
                );
                *answers.entry(backend).or_default() += 1;
            }
            let seen: Vec<&str> = answers.keys().map(String::as_str).collect();
            ensure!(
                seen == [DEBUG_SUBSET],
                "with `{name}: {value}` expected answers from {DEBUG_SUBSET} only (the header \
                 rule), got {answers:?}"
            );
            v.header_rule_backends = Some(answers);
        }
        let after = settled_counters(&self.tools, &m.counters, &before)?;
        v.counters = deltas(&m.counters, &before, &after);
        check_access_log(&v.counters, v.requests as u64)?;
        for (label, d) in &v.counters {
            ensure!(
                *d == v.requests as u64,
                "{label} moved by {d}, but {} requests were sent: traffic is not taking this \
                 mode's path",
                v.requests
            );
        }
        Ok(())
    }

    /// Sends `n` requests to `url` from the mode's client and returns `(status, backend)` per answer.
    /// HTTP/1.1: one curl, all requests over one keep-alive connection. h2c: one curl per request,
    /// because curl 7.88 (Debian 12) fails every request after the first on a reused prior-knowledge
    /// h2c connection ("Error in the HTTP2 framing layer"); oha and h2load don't.
    fn fetch(
        &self,
        m: &ModeRig,
        url: &str,
        n: usize,
        http2: bool,
        header: Option<(&str, &str)>,
    ) -> Result<Vec<(String, String)>> {
        let batches: Vec<usize> = if http2 { vec![1; n] } else { vec![n] };
        let mut answers = Vec::with_capacity(n);
        for n in batches {
            let args = load::curl_args(url, n, http2, header);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (status, stdout, stderr) =
                m.client
                    .exec(&self.tools.curl, &args, Duration::from_secs(60))?;
            let lines = load::parse_curl(&stdout);
            ensure!(
                status.success() && lines.len() == n,
                "curl {url} x{n} failed ({status}): got {} answers; {}",
                lines.len(),
                keel_tests::process::tail(stderr.trim(), 2048)
            );
            answers.extend(lines);
        }
        Ok(answers)
    }

    /// Runs `workload` through `mode` for `duration` and measures it (round 0 = warm-up).
    pub fn run_load(
        &self,
        mode: Mode,
        workload: Workload,
        settings: &Settings,
        duration: Duration,
        round: usize,
    ) -> Result<RunResult> {
        let m = self.mode(mode)?;
        let url = if workload.http2() {
            &m.url_h2
        } else {
            &m.url_h1
        };
        let args = load::oha_args(workload, settings, url, duration);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let pids = m.proxy_pids();

        let counters_before = read_counters(&self.tools, &m.counters)?;
        let cpu_before = cpu_sum(&pids)?;
        let softirq_before = procs::softirq_ticks()?;
        let (status, stdout, stderr) =
            m.client
                .exec(&self.tools.oha, &args, duration + Duration::from_secs(30))?;
        let softirq_after = procs::softirq_ticks()?;
        let cpu_after = cpu_sum(&pids)?;
        let counters_after = settled_counters(&self.tools, &m.counters, &counters_before)?;
        ensure!(
            status.success(),
            "oha failed ({status}): {}",
            keel_tests::process::tail(&stderr, 4096)
        );
        let mut rss = 0;
        for &pid in &pids {
            rss += procs::memory_kib(pid)?.0;
        }
        let r = RunResult {
            round,
            mode,
            workload,
            oha: load::parse_oha(&stdout).with_context(|| {
                format!("oha output: {}", keel_tests::process::tail(&stdout, 2048))
            })?,
            proxy_cpu_s: cpu_after.saturating_sub(cpu_before) as f64 / self.clk_tck,
            softirq_s: softirq_after.saturating_sub(softirq_before) as f64 / self.clk_tck,
            proxy_rss_kib: rss,
            counter_deltas: deltas(&m.counters, &counters_before, &counters_after),
        };
        load::check_run(&r)?;
        check_access_log(&r.counter_deltas, r.completed())?;
        Ok(r)
    }

    /// Stops every process and removes the network, reporting anything left behind.
    pub fn teardown(mut self) -> Result<()> {
        self.modes.clear();
        self.backends.clear();
        let alog = match self.alog_net.take() {
            Some(net) => net.teardown(),
            None => Ok(()),
        };
        match self.net.take() {
            Some(net) => net.teardown(),
            None => Ok(()),
        }?;
        alog
    }
}

/// The two services of the bench (`bench` over HTTP/1.1, `bench-h2` over h2c) on `endpoints`.
pub fn services(
    endpoints: Vec<Endpoint>,
    v1_weight: u32,
    policy: RoutePolicy,
    traffic: TrafficPolicy,
) -> Vec<Service> {
    vec![
        Service {
            name: "bench".into(),
            vip: mesh::vip(0),
            target_port: APP_PORT_H1,
            http2: false,
            app: "bench".into(),
            endpoints: endpoints.clone(),
            v1_weight,
            policy,
            traffic,
        },
        Service {
            name: "bench-h2".into(),
            vip: mesh::vip(1),
            target_port: APP_PORT_H2,
            http2: true,
            app: "bench".into(),
            endpoints,
            v1_weight,
            policy,
            traffic,
        },
    ]
}

pub(super) fn start_nginx(net: &PodNet, pod: &Pod, tools: &Tools, identity: &str) -> Result<Proc> {
    let dir = net.work_dir().join(format!("nginx-{}", pod.name));
    std::fs::create_dir_all(dir.join("tmp"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, mesh::nginx_conf(&dir.to_string_lossy(), identity))
        .with_context(|| format!("writing {}", conf.display()))?;
    let args = [
        "-p",
        &*dir.to_string_lossy(),
        "-c",
        &*conf.to_string_lossy(),
        "-e",
        "stderr",
    ]
    .map(str::to_string);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = pod.spawn(&tools.nginx, &args, "nginx")?;
    wait_http_in_pod(
        tools,
        &pod.netns,
        &format!("http://{}:{APP_PORT_H1}/", pod.ip),
        &mut p,
    )?;
    Ok(p)
}

/// Polls `url` from inside `netns` until it answers 200; fails early if `proc` exits.
fn wait_http_in_pod(tools: &Tools, netns: &str, url: &str, proc: &mut Proc) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(st) = proc.try_wait()? {
            bail!(
                "{} exited ({st}) before it answered {url}: {}",
                proc.label(),
                proc.stderr_tail()
            );
        }
        let code = keel_tests::host::run(
            "ip",
            &[
                "netns",
                "exec",
                netns,
                &tools.curl.to_string_lossy(),
                "-s",
                "-o",
                "/dev/null",
                "--max-time",
                "2",
                "-w",
                "%{http_code}",
                url,
            ],
        )
        .unwrap_or_default();
        if code.trim() == "200" {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{} did not answer {url} with 200 within {READY_TIMEOUT:?} (last: {code:?}); stderr: {}",
                proc.label(),
                proc.stderr_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `iptables args` inside `netns`.
fn iptables(tools: &Tools, netns: &str, args: &[&str]) -> Result<()> {
    let mut full = vec![
        "netns",
        "exec",
        netns,
        tools.iptables.to_str().context("iptables path")?,
    ];
    full.extend_from_slice(args);
    keel_tests::host::run("ip", &full).map(|_| ())
}

/// Istio's capture, as istio-iptables installs it (reduced to what the bench exercises): all
/// outbound TCP to 15001 except the proxy's own (UID 1337) and loopback; all inbound TCP to 15006.
fn istio_iptables(tools: &Tools, netns: &str) -> Result<()> {
    let uid = envoy::PROXY_UID.to_string();
    let out = envoy::OUTBOUND_PORT.to_string();
    let inb = envoy::INBOUND_PORT.to_string();
    let rules: [&[&str]; 10] = [
        &["-t", "nat", "-N", "ISTIO_INBOUND"],
        &["-t", "nat", "-N", "ISTIO_IN_REDIRECT"],
        &["-t", "nat", "-N", "ISTIO_OUTPUT"],
        &[
            "-t",
            "nat",
            "-A",
            "ISTIO_IN_REDIRECT",
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &inb,
        ],
        &[
            "-t",
            "nat",
            "-A",
            "ISTIO_INBOUND",
            "-p",
            "tcp",
            "-j",
            "ISTIO_IN_REDIRECT",
        ],
        &[
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "-j",
            "ISTIO_INBOUND",
        ],
        &[
            "-t",
            "nat",
            "-A",
            "ISTIO_OUTPUT",
            "-m",
            "owner",
            "--uid-owner",
            &uid,
            "-j",
            "RETURN",
        ],
        &[
            "-t",
            "nat",
            "-A",
            "ISTIO_OUTPUT",
            "-d",
            "127.0.0.1/32",
            "-j",
            "RETURN",
        ],
        &[
            "-t",
            "nat",
            "-A",
            "ISTIO_OUTPUT",
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &out,
        ],
        &[
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-j",
            "ISTIO_OUTPUT",
        ],
    ];
    for r in rules {
        iptables(tools, netns, r).with_context(|| format!("istio capture rules in {netns}"))?;
    }
    Ok(())
}

/// A route to the service CIDR via the bridge, for clients whose VIP traffic is captured by
/// iptables (which runs after the routing decision, so a connect() to a VIP needs a route). If the
/// capture ever failed, the packets would reach the host and die in its blackhole route.
fn service_route(net: &PodNet, pod: &Pod) -> Result<()> {
    keel_tests::host::run(
        "ip",
        &[
            "-n",
            &pod.netns,
            "route",
            "add",
            net.service_cidr(),
            "via",
            &net.bridge_ip().to_string(),
        ],
    )
    .map(|_| ())
}

fn write_envoy_config(net: &PodNet, name: &str, config: &serde_json::Value) -> Result<PathBuf> {
    let path = net.work_dir().join(format!("envoy-{name}.json"));
    let text = serde_json::to_string_pretty(config).context("serializing Envoy config")?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn envoy_args(config: &Path, admin_log: &str) -> Vec<String> {
    vec![
        "-c".into(),
        config.to_string_lossy().into_owned(),
        "--concurrency".into(),
        envoy::CONCURRENCY.to_string(),
        // No shared-memory hot-restart region: N sidecars on one host would need N base ids.
        "--disable-hot-restart".into(),
        "--log-level".into(),
        "warn".into(),
        "--service-node".into(),
        admin_log.into(),
        "--service-cluster".into(),
        "bench".into(),
    ]
}

/// Starts a sidecar Envoy in `pod` as UID 1337 and waits for its admin `/ready`.
pub fn start_sidecar(tools: &Tools, pod: &Pod, config: &Path) -> Result<Proc> {
    let uid = envoy::PROXY_UID.to_string();
    let mut args: Vec<String> = vec![
        "--reuid".into(),
        uid.clone(),
        "--regid".into(),
        uid,
        "--clear-groups".into(),
        tools.envoy.to_string_lossy().into_owned(),
    ];
    args.extend(envoy_args(config, &pod.name));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    pod.spawn(&tools.setpriv, &args, "envoy")
}

/// Waits for a sidecar's admin `/ready` (inside its pod).
pub fn wait_sidecar_ready(tools: &Tools, pod: &Pod, proc: &mut Proc) -> Result<()> {
    let url = format!("http://127.0.0.1:{}/ready", envoy::SIDECAR_ADMIN_PORT);
    wait_http_in_pod(tools, &pod.netns, &url, proc)
}

fn sidecar_mode(
    net: &mut PodNet,
    tools: &Tools,
    services: &[Service],
    servers: &[(Pod, &str)],
) -> Result<ModeRig> {
    let client = net.add_pod_outside_root(NAMESPACE, "client-sidecar", 3)?;
    service_route(net, &client)?;
    let mut proxies = Vec::new();
    let mut pods = vec![(client.clone(), Vec::new())];
    for (pod, _) in servers {
        pods.push((pod.clone(), vec![(APP_PORT_H1, false), (APP_PORT_H2, true)]));
    }
    for (pod, app_ports) in &pods {
        istio_iptables(tools, &pod.netns)?;
        let cfg = envoy::sidecar(services, pod.ip, app_ports);
        let path = write_envoy_config(net, &pod.name, &cfg)?;
        proxies.push(start_sidecar(tools, pod, &path)?);
    }
    for ((pod, _), proc) in pods.iter().zip(proxies.iter_mut()) {
        wait_sidecar_ready(tools, pod, proc)?;
    }
    let in_pod = |pod: &Pod, prefix| Source::EnvoyInPod {
        netns: pod.netns.clone(),
        prefix,
    };
    Ok(ModeRig {
        mode: Mode::Sidecar,
        url_h1: format!("http://{}/", services[0].vip),
        url_h2: format!("http://{}/", services[1].vip),
        subsets: vec!["v1", "v2"],
        header_rule: has_header_rule(services),
        counters: vec![
            Counter {
                label: "client sidecar outbound upstream_rq_total".into(),
                sources: vec![in_pod(&client, "outbound")],
            },
            Counter {
                label: "server sidecars inbound upstream_rq_total".into(),
                sources: servers.iter().map(|(p, _)| in_pod(p, "inbound")).collect(),
            },
        ],
        client,
        proxies,
        keel: None,
        _config: None,
    })
}

fn node_envoy_mode(net: &mut PodNet, tools: &Tools, services: &[Service]) -> Result<ModeRig> {
    let client = net.add_pod_outside_root(NAMESPACE, "client-node", 4)?;
    service_route(net, &client)?;
    let to = format!("{}:{NODE_ENVOY_PORT}", net.bridge_ip());
    // Cilium sends a pod's service traffic to the node's Envoy from eBPF; a DNAT in the client's
    // netns is the same hop without Cilium. Envoy routes on Host (the VIP).
    iptables(
        tools,
        &client.netns,
        &[
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            net.service_cidr(),
            "-j",
            "DNAT",
            "--to-destination",
            &to,
        ],
    )?;
    let admin = keel_tests::keel::free_local_port()?;
    let cfg = envoy::node(services, net.bridge_ip(), NODE_ENVOY_PORT, admin.port());
    let path = write_envoy_config(net, "node", &cfg)?;
    let mut cmd = Command::new(&tools.envoy);
    cmd.args(envoy_args(&path, "node"));
    let mut proc = net.spawn_in_cgroup(&net.system_cgroup(), cmd, "node-envoy")?;
    wait_host_ready(admin, &mut proc)?;
    Ok(ModeRig {
        mode: Mode::NodeEnvoy,
        url_h1: format!("http://{}/", services[0].vip),
        url_h2: format!("http://{}/", services[1].vip),
        subsets: vec!["v1", "v2"],
        header_rule: has_header_rule(services),
        counters: vec![Counter {
            label: "node envoy upstream_rq_total".into(),
            sources: vec![Source::EnvoyHost {
                admin,
                prefix: "outbound",
            }],
        }],
        client,
        proxies: vec![proc],
        keel: None,
        _config: None,
    })
}

/// Waits for an Envoy admin `/ready` in the host netns.
pub fn wait_host_ready(admin: SocketAddr, proc: &mut Proc) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(st) = proc.try_wait()? {
            bail!("{} exited ({st}): {}", proc.label(), proc.stderr_tail());
        }
        if let Ok(r) = keel_tests::http::get(admin, "/ready", Duration::from_secs(1)) {
            if r.status == 200 {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "{} not ready within {READY_TIMEOUT:?}: {}",
                proc.label(),
                proc.stderr_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether the services' VirtualServices have the header rule (all share one policy).
fn has_header_rule(services: &[Service]) -> bool {
    !services.is_empty() && services.iter().all(|s| s.policy == RoutePolicy::Features)
}

/// Keel on `net` for `mode` (`keel` or `keel-access-log`), with its access log written to
/// `access_log` if given; under `keel-access-log` the log's lines are one of the mode's counters.
fn keel_mode(
    net: &mut PodNet,
    services: &[Service],
    bin: &Path,
    settings: &Settings,
    mode: Mode,
    access_log: Option<PathBuf>,
) -> Result<ModeRig> {
    let client = net.add_pod(NAMESPACE, "client-keel", 5)?;
    let mut pods: Vec<PodDef> = services[0]
        .endpoints
        .iter()
        .map(|e| PodDef {
            name: e.pod.clone(),
            ip: e.ip,
            labels: vec![
                ("app".into(), services[0].app.clone()),
                ("version".into(), e.version.clone()),
            ],
        })
        .collect();
    pods.push(PodDef {
        name: client.name.clone(),
        ip: client.ip,
        labels: vec![("app".into(), "client".into())],
    });
    let config = ConfigDir::new("bench")?;
    config.write("bench.yaml", &mesh::keel_yaml(services, &pods))?;
    let mut opts = KeelOptions::new(net, config.path())?;
    opts.binary = Some(bin.to_path_buf());
    if let Some(w) = settings.keel_workers {
        opts.extra_args.extend(["--workers".into(), w.to_string()]);
    }
    if settings.keel_no_metrics {
        opts.extra_args.push("--no-metrics".into());
    }
    if let Some(path) = &access_log {
        opts.extra_args
            .extend(["--access-log".into(), path.to_string_lossy().into_owned()]);
    }
    let keel = Keel::start_with(net, opts).context("starting keel")?;
    let admin = keel.options().admin_addr;
    let mut counters = vec![Counter {
        label: "keel http_requests".into(),
        sources: vec![Source::Keel { admin }],
    }];
    if let (Mode::KeelAccessLog, Some(path)) = (mode, access_log) {
        counters.push(Counter {
            label: ACCESS_LOG_LABEL.into(),
            sources: vec![Source::AccessLog { path }],
        });
    }
    Ok(ModeRig {
        mode,
        url_h1: format!("http://{}/", services[0].vip),
        url_h2: format!("http://{}/", services[1].vip),
        subsets: vec!["v1", "v2"],
        header_rule: has_header_rule(services),
        counters,
        client,
        proxies: Vec::new(),
        keel: Some(keel),
        _config: Some(config),
    })
}

/// Label of the access-log line counter.
const ACCESS_LOG_LABEL: &str = "keel access log lines";

/// Newlines in the file at `path` (0 if it does not exist yet: keel creates it on the first line).
fn count_lines(path: &Path) -> Result<u64> {
    use std::io::Read as _;
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut buf = vec![0u8; 1 << 16];
    let mut lines = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            return Ok(lines);
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

/// Reads `counters` until every one has moved by as much as the first (a mode's counters count the
/// same requests; the access log trails the response a little), or they stopped moving for
/// [`SETTLE_QUIET`], or [`SETTLE_TIMEOUT`] passed.
fn settled_counters(tools: &Tools, counters: &[Counter], before: &[u64]) -> Result<Vec<u64>> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut last: Option<(Vec<u64>, Instant)> = None;
    loop {
        let after = read_counters(tools, counters)?;
        let d = deltas(counters, before, &after);
        let agree = d.windows(2).all(|w| w[0].1 == w[1].1);
        let quiet = match &last {
            Some((prev, since)) if *prev == after => since.elapsed() >= SETTLE_QUIET,
            _ => {
                last = Some((after.clone(), Instant::now()));
                false
            }
        };
        if agree || quiet || Instant::now() >= deadline {
            return Ok(after);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How long counters that disagree must stay unchanged before they count as settled.
const SETTLE_QUIET: Duration = Duration::from_millis(1000);

/// The access log must hold one line per request the client got an answer to (`answered`), and
/// none for requests Keel did not count. Requests the load generator cut off at the end of a run
/// before their response started are counted by Keel but not logged (Keel writes the line when the
/// response body ends or is dropped), so between the two is allowed.
fn check_access_log(deltas: &[(String, u64)], answered: u64) -> Result<()> {
    let keel = deltas.iter().find(|(l, _)| l == "keel http_requests");
    let log = deltas.iter().find(|(l, _)| l == ACCESS_LOG_LABEL);
    if let (Some((_, requests)), Some((_, lines))) = (keel, log) {
        ensure!(
            answered <= *lines && lines <= requests,
            "keel counted {requests} requests and the client got {answered} answers, but the access \
             log grew by {lines} lines"
        );
    }
    Ok(())
}

fn read_source(tools: &Tools, s: &Source) -> Result<u64> {
    match s {
        Source::AccessLog { path } => count_lines(path),
        Source::EnvoyInPod { netns, prefix } => {
            let url = format!(
                "http://127.0.0.1:{}/stats?filter=upstream_rq_total",
                envoy::SIDECAR_ADMIN_PORT
            );
            let text = keel_tests::host::run(
                "ip",
                &[
                    "netns",
                    "exec",
                    netns,
                    tools.curl.to_str().context("curl path")?,
                    "-sS",
                    "--max-time",
                    "5",
                    &url,
                ],
            )
            .with_context(|| format!("reading Envoy stats in {netns}"))?;
            Ok(envoy::sum_upstream_rq(&text, prefix))
        }
        Source::EnvoyHost { admin, prefix } => {
            let r = keel_tests::http::get(
                *admin,
                "/stats?filter=upstream_rq_total",
                Duration::from_secs(5),
            )
            .with_context(|| format!("reading Envoy stats at {admin}"))?;
            Ok(envoy::sum_upstream_rq(&r.text(), prefix))
        }
        Source::Keel { admin } => {
            let v = keel_tests::admin_stats(*admin)?;
            v["keel.http_requests"]
                .as_u64()
                .context("keel's /stats has no numeric keel.http_requests")
        }
    }
}

fn read_counters(tools: &Tools, counters: &[Counter]) -> Result<Vec<u64>> {
    counters
        .iter()
        .map(|c| {
            c.sources
                .iter()
                .map(|s| read_source(tools, s))
                .sum::<Result<u64>>()
                .with_context(|| format!("reading {}", c.label))
        })
        .collect()
}

fn deltas(counters: &[Counter], before: &[u64], after: &[u64]) -> Vec<(String, u64)> {
    counters
        .iter()
        .zip(before.iter().zip(after))
        .map(|(c, (b, a))| (c.label.clone(), a.saturating_sub(*b)))
        .collect()
}

fn cpu_sum(pids: &[u32]) -> Result<u64> {
    pids.iter().map(|&p| procs::cpu_ticks(p)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(requests: u64, lines: u64) -> Vec<(String, u64)> {
        vec![
            ("keel http_requests".into(), requests),
            (ACCESS_LOG_LABEL.into(), lines),
        ]
    }

    #[test]
    fn access_log_needs_a_line_per_answer_and_no_more_than_keel_counted() {
        assert!(check_access_log(&d(100, 100), 100).is_ok());
        // 3 requests cut off at the deadline: counted, never answered, not logged.
        assert!(check_access_log(&d(103, 100), 100).is_ok());
        assert!(check_access_log(&d(100, 99), 100).is_err());
        assert!(check_access_log(&d(100, 101), 100).is_err());
        // Modes without an access log have nothing to check.
        assert!(check_access_log(&d(100, 0)[..1], 5).is_ok());
    }

    #[test]
    fn lines_are_counted_and_a_missing_log_has_none() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("kbench-lines-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("access.log");
        assert_eq!(count_lines(&path)?, 0);
        std::fs::write(&path, "a\nb\nc\n")?;
        assert_eq!(count_lines(&path)?, 3);
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
