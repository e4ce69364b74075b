//! Config scale: how long Keel takes to load, build and apply a large mesh config, and what it costs in
//! memory, with N Services, 2N endpoint pods, N VirtualServices and N DestinationRules (issue P3: 5,000
//! VirtualServices and 10,000 endpoints load and apply in under 2 s with bounded memory).
//!
//! The config directory is what a GitOps checkout of such a mesh looks like: `services.yaml`,
//! `pods.yaml`, `destinationrules.yaml` and one file per VirtualService (`vs-00000.yaml`, ...). Service
//! `svc-<i>` lives in namespace `scale-<i mod 5>`, has a cluster IP in 10.96.0.0/16 and one port `http`
//! (80 -> 8080), and selects two pods (`version: v1` / `v2`); its VirtualService has a header rule
//! (`x-canary: "true"` -> v2, timeout) and a weighted v1/v2 canary with timeout and retries; its
//! DestinationRule has subsets v1/v2 and a traffic policy.
//!
//! Only `svc-0`'s endpoints are real: two pod-agent servers on the bench's pod network (outside Keel's
//! cgroup root). Every other endpoint has a pod IP in 10.245.0.0/16 that nothing ever connects to: no
//! request is sent to those services, and the pods have no route there anyway. Three real client pods
//! in two namespaces are under Keel's cgroup root, so Keel resolves their cgroups, builds their views
//! and attaches its programs for real.
//!
//! Measured (medians over rounds; the machine is shared, so single runs are noisy):
//! - `keel validate DIR` wall time;
//! - `keel run` start -> `GET /ready` 200 (load, routing tables, kernel publish of N destinations);
//! - one VirtualService file changed (svc-0's canary flipped v1 <-> v2): from the write to
//!   `config_reloads` incremented AND a client's request to svc-0 answered by the new subset;
//! - every VirtualService file rewritten (new weights; svc-0's file last, flipped): from the end of
//!   the writes to the same two conditions (the reload that shows svc-0's change read every file);
//! - VmRSS / VmHWM of keel after the load and after every reload (bounded: no growth beyond noise).

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use keel_tests::{Agent, ConfigDir, HttpGet, Keel, KeelOptions, Pod, PodNet, Proc};
use serde::Serialize;

use super::procs;
use super::report::median;

/// Namespaces the services are spread over.
const NAMESPACES: usize = 5;
/// Endpoint pods per service (v1 and v2).
const ENDPOINTS_PER_SERVICE: usize = 2;
/// Service (VIP) port and pod port.
const SERVICE_PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;
/// The goal of the issue: load and apply within this.
const TARGET: Duration = Duration::from_secs(2);
/// How long keel idles after ready before memory is read, and over which its idle CPU is measured.
const SETTLE: Duration = Duration::from_secs(3);
/// One-VirtualService reloads measured (the target is the median of ten).
const SINGLE_RELOADS: usize = 10;
/// Longest wait for keel to get ready or for a change to show.
const WAIT: Duration = Duration::from_secs(120);
/// RSS growth across reloads that still counts as noise (allocator slack): this much, or
/// [`RSS_NOISE_PERCENT`] of the RSS after the first reload if more.
const RSS_NOISE_KIB: u64 = 16 * 1024;
const RSS_NOISE_PERCENT: u64 = 10;

/// What one run measured. Times in seconds.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigScaleResult {
    pub services: usize,
    pub endpoint_pods: usize,
    pub virtual_services: usize,
    pub destination_rules: usize,
    /// YAML files and total bytes of the config directory.
    pub files: usize,
    pub config_bytes: u64,
    pub rounds: usize,
    pub validate_s: Vec<f64>,
    pub start_to_ready_s: Vec<f64>,
    /// One VirtualService file changed -> reload counted and the change served.
    pub single_reload_s: Vec<f64>,
    /// Every VirtualService file rewritten -> reload counted and the last file's change served.
    pub all_vs_reload_s: Vec<f64>,
    /// Keel's own phase timings of each one-VirtualService reload (its debug log lines `config
    /// directory loaded` and `routing tables built`, fields only), in order.
    pub single_reload_phases: Vec<String>,
    /// How long writing every VirtualService file took (not part of `all_vs_reload_s`).
    pub all_vs_write_s: Vec<f64>,
    /// `config_reloads` increments each all-VS rewrite took (a reload can start mid-write).
    pub all_vs_reloads: Vec<u64>,
    /// What `/config_dump` reported after the load.
    pub dump_services: usize,
    pub dump_virtual_services: usize,
    pub dump_meshed_destinations: usize,
    /// keel's VmRSS / VmHWM a few seconds after ready.
    pub rss_after_load_kib: u64,
    pub hwm_after_load_kib: u64,
    /// VmRSS after each reload, in order.
    pub rss_after_each_reload_kib: Vec<u64>,
    /// VmRSS / VmHWM a few seconds after the last reload.
    pub rss_after_reloads_kib: u64,
    pub hwm_after_reloads_kib: u64,
    /// keel's CPU while idle (directory watch with a 10 s backstop look, pod rescan every second),
    /// percent of one core.
    pub idle_cpu_percent: f64,
}

impl ConfigScaleResult {
    pub fn validate_median_s(&self) -> f64 {
        median(self.validate_s.clone())
    }
    pub fn start_median_s(&self) -> f64 {
        median(self.start_to_ready_s.clone())
    }
    pub fn single_reload_median_s(&self) -> f64 {
        median(self.single_reload_s.clone())
    }
    pub fn all_vs_reload_median_s(&self) -> f64 {
        median(self.all_vs_reload_s.clone())
    }

    /// Start-to-ready and both reload kinds (medians) under [`TARGET`].
    pub fn target_met(&self) -> bool {
        let t = TARGET.as_secs_f64();
        [
            self.start_median_s(),
            self.single_reload_median_s(),
            self.all_vs_reload_median_s(),
        ]
        .iter()
        .all(|v| v.is_finite() && *v < t)
    }

    /// No growth across reloads beyond noise: the RSS after the last reload is within noise of the
    /// RSS after the first reload of each kind. (The first reload of a kind adds a step: a
    /// one-VirtualService reload builds little, the first all-VirtualService reload builds a whole
    /// config while the old one still serves, and the allocator keeps part of the freed pages.)
    pub fn memory_bounded(&self) -> bool {
        self.rss_after_reloads_kib <= self.rss_after_first_reload_kib() + self.rss_noise_kib()
    }

    /// The larger of the RSS after the first one-VS and the first all-VS reload.
    fn rss_after_first_reload_kib(&self) -> u64 {
        let first_all = self
            .rss_after_each_reload_kib
            .get(self.single_reload_s.len());
        self.rss_after_each_reload_kib
            .first()
            .into_iter()
            .chain(first_all)
            .copied()
            .max()
            .unwrap_or(self.rss_after_load_kib)
    }

    fn rss_noise_kib(&self) -> u64 {
        RSS_NOISE_KIB.max(self.rss_after_first_reload_kib() * RSS_NOISE_PERCENT / 100)
    }

    /// The target as the report's target table shows it.
    pub fn target_summary(&self) -> String {
        format!(
            "{} VS / {} endpoints: start->ready {:.2} s, one-VS reload {:.2} s, all-VS reload {:.2} s; \
             RSS {:.0} -> {:.0} MiB after {} reloads",
            self.virtual_services,
            self.endpoint_pods,
            self.start_median_s(),
            self.single_reload_median_s(),
            self.all_vs_reload_median_s(),
            self.rss_after_load_kib as f64 / 1024.0,
            self.rss_after_reloads_kib as f64 / 1024.0,
            self.rss_after_each_reload_kib.len(),
        )
    }
}

/// The generated mesh.
struct Mesh {
    services: usize,
    /// Real endpoints of svc-0 (v1, v2) and the client pods.
    backends: [Ipv4Addr; 2],
    clients: Vec<Pod>,
}

impl Mesh {
    fn namespace(i: usize) -> String {
        format!("scale-{}", i % NAMESPACES)
    }

    fn host(i: usize) -> String {
        format!("svc-{i}.{}.svc.cluster.local", Mesh::namespace(i))
    }

    /// 10.96.<10 + i/250>.<1 + i%250>: inside the (blackholed) service CIDR, up to 61,000 services.
    fn vip(i: usize) -> Ipv4Addr {
        let hi = u8::try_from(10 + i / 250).unwrap_or(u8::MAX);
        let lo = u8::try_from(1 + i % 250).unwrap_or(u8::MAX);
        Ipv4Addr::new(10, 96, hi, lo)
    }

    /// 10.245.<k/250>.<1 + k%250> for the k-th unreal endpoint pod.
    fn fake_pod_ip(k: usize) -> Ipv4Addr {
        let hi = u8::try_from(k / 250).unwrap_or(u8::MAX);
        let lo = u8::try_from(1 + k % 250).unwrap_or(u8::MAX);
        Ipv4Addr::new(10, 245, hi, lo)
    }

    fn services_yaml(&self) -> String {
        let docs: Vec<String> = (0..self.services)
            .map(|i| {
                format!(
                    "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{i}\n  namespace: {ns}\nspec:\n  \
                     type: ClusterIP\n  clusterIP: {vip}\n  selector:\n    app: svc-{i}\n  ports:\n  \
                     - name: http\n    port: {SERVICE_PORT}\n    targetPort: {TARGET_PORT}\n    protocol: TCP\n",
                    ns = Mesh::namespace(i),
                    vip = Mesh::vip(i),
                )
            })
            .collect();
        docs.join("---\n")
    }

    fn pods_yaml(&self) -> String {
        let pod = |name: &str, ns: &str, labels: &[(&str, &str)], ip: Ipv4Addr| {
            let mut d = format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n"
            );
            for (k, v) in labels {
                let _ = writeln!(d, "    {k}: \"{v}\"");
            }
            let _ = write!(
                d,
                "status:\n  phase: Running\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n"
            );
            d
        };
        let mut docs = Vec::with_capacity(self.services * ENDPOINTS_PER_SERVICE + 3);
        let mut fake = 0;
        for i in 0..self.services {
            let app = format!("svc-{i}");
            let ns = Mesh::namespace(i);
            for (v, version) in ["v1", "v2"].iter().enumerate() {
                let ip = if i == 0 {
                    self.backends[v]
                } else {
                    fake += 1;
                    Mesh::fake_pod_ip(fake - 1)
                };
                docs.push(pod(
                    &format!("svc-{i}-{version}"),
                    &ns,
                    &[("app", &app), ("version", version)],
                    ip,
                ));
            }
        }
        for c in &self.clients {
            docs.push(pod(&c.name, &c.namespace, &[("app", "client")], c.ip));
        }
        docs.join("---\n")
    }

    fn destination_rules_yaml(&self) -> String {
        let docs: Vec<String> = (0..self.services)
            .map(|i| {
                format!(
                    "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: svc-{i}\n  \
                     namespace: {ns}\nspec:\n  host: {host}\n  trafficPolicy:\n    loadBalancer:\n      \
                     simple: LEAST_REQUEST\n    connectionPool:\n      tcp:\n        maxConnections: 100\n  \
                     subsets:\n  - name: v1\n    labels:\n      version: v1\n  - name: v2\n    labels:\n      \
                     version: v2\n",
                    ns = Mesh::namespace(i),
                    host = Mesh::host(i),
                )
            })
            .collect();
        docs.join("---\n")
    }

    /// The VirtualService of svc-`i`: header rule to v2, then the weighted canary.
    fn virtual_service_yaml(i: usize, v1_weight: u32) -> String {
        let host = Mesh::host(i);
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: svc-{i}\n  \
             namespace: {ns}\nspec:\n  hosts:\n  - {host}\n  http:\n  - name: canary-header\n    match:\n    \
             - headers:\n        x-canary:\n          exact: \"true\"\n    route:\n    - destination:\n        \
             host: {host}\n        subset: v2\n    timeout: 5s\n  - name: weighted\n    route:\n    \
             - destination:\n        host: {host}\n        subset: v1\n      weight: {v1_weight}\n    \
             - destination:\n        host: {host}\n        subset: v2\n      weight: {v2_weight}\n    \
             timeout: 3s\n    retries:\n      attempts: 2\n      perTryTimeout: 1s\n      \
             retryOn: 5xx,connect-failure\n",
            ns = Mesh::namespace(i),
            v2_weight = 100 - v1_weight,
        )
    }

    fn vs_file(i: usize) -> String {
        format!("vs-{i:05}.yaml")
    }

    /// Writes the whole directory; svc-0's canary sends everything to `probe_version`.
    fn write(&self, dir: &ConfigDir, probe_version: &str) -> Result<()> {
        dir.write("services.yaml", &self.services_yaml())?;
        dir.write("pods.yaml", &self.pods_yaml())?;
        dir.write("destinationrules.yaml", &self.destination_rules_yaml())?;
        self.write_virtual_services(dir, 90, probe_version)
    }

    /// Rewrites every VirtualService file (canary weight `v1_weight`), svc-0's last and flipped to
    /// `probe_version`, so the reload that serves svc-0's change read every other file.
    fn write_virtual_services(&self, dir: &ConfigDir, v1_weight: u32, probe: &str) -> Result<()> {
        for i in (1..self.services).rev() {
            dir.write(&Mesh::vs_file(i), &Mesh::virtual_service_yaml(i, v1_weight))?;
        }
        self.write_probe(dir, probe)
    }

    fn write_probe(&self, dir: &ConfigDir, version: &str) -> Result<()> {
        let v1_weight = if version == "v1" { 100 } else { 0 };
        dir.write(&Mesh::vs_file(0), &Mesh::virtual_service_yaml(0, v1_weight))?;
        Ok(())
    }
}

/// Runs the config-scale benchmark of the keel binary `keel_bin` with `services` services on network
/// index `index`.
pub fn run(
    keel_bin: &Path,
    services: usize,
    rounds: usize,
    index: u8,
) -> Result<ConfigScaleResult> {
    ensure!(
        (1..=60_000).contains(&services),
        "config scale supports 1..=60000 services, not {services}"
    );
    let rounds = rounds.max(1);
    let agent = Agent::from_env(None).context(
        "config scale needs pod-agent (`cargo build --release -p keel-tests --bin pod-agent`)",
    )?;
    note!("bench: config scale with {services} services on 10.244.{index}.0/24");
    let mut net = PodNet::new("kbcfg", index).context("building the config-scale network")?;
    // Real backends of svc-0, outside the capture root (they only answer).
    let server_v1 = net.add_pod_outside_root("scale-0", "svc-0-v1", 10)?;
    let server_v2 = net.add_pod_outside_root("scale-0", "svc-0-v2", 11)?;
    let clients = vec![
        net.add_pod("scale-0", "client-a", 2)?,
        net.add_pod("scale-0", "client-b", 3)?,
        net.add_pod("clients", "client-c", 4)?,
    ];
    let _servers: Vec<Proc> = vec![
        agent.http_server(&server_v1, TARGET_PORT, "v1")?,
        agent.http_server(&server_v2, TARGET_PORT, "v2")?,
    ];
    let mesh = Mesh {
        services,
        backends: [server_v1.ip, server_v2.ip],
        clients,
    };
    let config = ConfigDir::new("bench-config-scale")?;
    mesh.write(&config, "v1")?;
    let (files, config_bytes) = dir_size(config.path())?;
    note!(
        "bench: config scale: {files} files, {:.1} MiB",
        config_bytes as f64 / 1024.0 / 1024.0
    );

    let mut validate_s = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let (status, output) = validate(keel_bin, config.path())?;
        let elapsed = t.elapsed().as_secs_f64();
        ensure!(
            status.success(),
            "keel validate rejected the generated config ({status}):\n{}",
            keel_tests::process::tail(&output, 4000)
        );
        validate_s.push(elapsed);
    }
    note!("bench: config scale: validate {validate_s:?} s");

    // Start keel `rounds` times; the last one stays up for the reloads.
    let mut start_to_ready_s = Vec::new();
    let mut keel = None;
    for round in 0..rounds {
        drop(keel.take());
        let mut opts = KeelOptions::new(&net, config.path())?;
        opts.ready_timeout = WAIT;
        opts.binary = Some(keel_bin.to_path_buf());
        // The reload's phase timings (a handful of debug lines per reload, none per request).
        opts.log_filter = Some(PHASE_LOG_FILTER.to_string());
        let t = Instant::now();
        let k = Keel::start_with(&net, opts).context("starting keel on the scale config")?;
        start_to_ready_s.push(t.elapsed().as_secs_f64());
        note!(
            "bench: config scale: start -> ready {:.3} s (round {})",
            start_to_ready_s[round],
            round + 1
        );
        keel = Some(k);
    }
    let keel = keel.context("no keel started")?;
    let probe = Probe {
        agent: &agent,
        client: &mesh.clients[0],
        vip: SocketAddr::V4(SocketAddrV4::new(Mesh::vip(0), SERVICE_PORT)),
    };
    // Every client is served, the canary sends everything to v1, the header rule to v2.
    for c in &mesh.clients {
        let p = Probe { client: c, ..probe };
        ensure!(
            p.version(false)?.as_deref() == Some("v1"),
            "client {} did not reach svc-0 v1",
            c.full_name()
        );
    }
    ensure!(
        probe.version(true)?.as_deref() == Some("v2"),
        "the header rule (x-canary: true) did not route to v2"
    );
    let dump = keel.admin_get("/config_dump")?;
    let count = |k: &str| dump[k].as_array().map_or(0, Vec::len);
    let (dump_services, dump_virtual_services, dump_meshed_destinations) = (
        count("services"),
        count("virtual_services"),
        count("meshed_destinations"),
    );
    ensure!(
        dump_services == services
            && dump_virtual_services == services
            && dump_meshed_destinations == services,
        "keel serves {dump_services} services, {dump_virtual_services} virtual services, \
         {dump_meshed_destinations} meshed destinations, not {services} each"
    );

    std::thread::sleep(SETTLE);
    let (rss_after_load_kib, hwm_after_load_kib) = rss_hwm(keel.pid())?;
    let idle_cpu_percent = idle_cpu(keel.pid(), SETTLE)?;
    note!(
        "bench: config scale: RSS {rss_after_load_kib} KiB, HWM {hwm_after_load_kib} KiB, idle CPU {idle_cpu_percent:.1} %"
    );

    let mut version = "v1";
    let flip = |v: &str| if v == "v1" { "v2" } else { "v1" };
    let mut rss_after_each_reload_kib = Vec::new();
    let mut single_reload_s = Vec::new();
    for _ in 0..rounds.max(SINGLE_RELOADS) {
        version = flip(version);
        let before = reloads(&keel)?;
        mesh.write_probe(&config, version)?;
        let t = Instant::now();
        wait_applied(&keel, &probe, before, version)?;
        single_reload_s.push(t.elapsed().as_secs_f64());
        rss_after_each_reload_kib.push(rss_hwm(keel.pid())?.0);
    }
    note!("bench: config scale: one-VS reload {single_reload_s:?} s");
    let single_reload_phases = reload_phases(&keel.stderr(), single_reload_s.len());
    for phases in &single_reload_phases {
        note!("bench: config scale: one-VS reload phases: {phases}");
    }
    let mut all_vs_reload_s = Vec::new();
    let mut all_vs_write_s = Vec::new();
    let mut all_vs_reloads = Vec::new();
    for round in 0..rounds.max(3) {
        version = flip(version);
        let before = reloads(&keel)?;
        let t = Instant::now();
        let weight = 80 - 10 * u32::try_from(round % 5).unwrap_or(0);
        mesh.write_virtual_services(&config, weight, version)?;
        all_vs_write_s.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        wait_applied(&keel, &probe, before, version)?;
        all_vs_reload_s.push(t.elapsed().as_secs_f64());
        all_vs_reloads.push(reloads(&keel)?.saturating_sub(before));
        rss_after_each_reload_kib.push(rss_hwm(keel.pid())?.0);
    }
    note!("bench: config scale: all-VS reload {all_vs_reload_s:?} s (writes {all_vs_write_s:?} s)");
    std::thread::sleep(SETTLE);
    let (rss_after_reloads_kib, hwm_after_reloads_kib) = rss_hwm(keel.pid())?;
    let status = keel.admin_get("/config_status")?;
    let errors = status["errors"].as_array().map_or(0, Vec::len);
    ensure!(errors == 0, "keel reports {errors} config errors: {status}");
    drop(keel);
    net.teardown()?;

    let result = ConfigScaleResult {
        services,
        endpoint_pods: services * ENDPOINTS_PER_SERVICE,
        virtual_services: services,
        destination_rules: services,
        files,
        config_bytes,
        rounds,
        validate_s,
        start_to_ready_s,
        single_reload_s,
        single_reload_phases,
        all_vs_reload_s,
        all_vs_write_s,
        all_vs_reloads,
        dump_services,
        dump_virtual_services,
        dump_meshed_destinations,
        rss_after_load_kib,
        hwm_after_load_kib,
        rss_after_each_reload_kib,
        rss_after_reloads_kib,
        hwm_after_reloads_kib,
        idle_cpu_percent,
    };
    note!("bench: config scale: {}", result.target_summary());
    Ok(result)
}

/// A request from a client pod to svc-0's VIP (through Keel), reporting which subset answered.
#[derive(Clone, Copy)]
struct Probe<'a> {
    agent: &'a Agent,
    client: &'a Pod,
    vip: SocketAddr,
}

impl Probe<'_> {
    /// The `version` of the backend that answered (with `x-canary: true` if `canary`).
    fn version(&self, canary: bool) -> Result<Option<String>> {
        let mut req = HttpGet::new(format!("http://svc-0.scale-0:{SERVICE_PORT}/"))
            .connect_to(self.vip)
            .timeout(Duration::from_secs(5));
        if canary {
            req = req.header("x-canary", "true");
        }
        let report = self.agent.http_get(self.client, &req)?;
        let ok = report.status(200) == 1;
        Ok(report.last_body.filter(|_| ok).map(|b| b.version))
    }
}

/// Runs `<keel_bin> validate <dir>` (unprivileged, no network), at most [`WAIT`]; returns its exit
/// status and its stdout and stderr together.
fn validate(keel_bin: &Path, dir: &Path) -> Result<(std::process::ExitStatus, String)> {
    let mut cmd = std::process::Command::new(keel_bin);
    cmd.arg("validate").arg(dir);
    let logs = std::env::temp_dir().join(format!("keel-bench-validate-{}", std::process::id()));
    let mut proc = Proc::spawn(cmd, "keel-validate", &logs)?;
    let status = proc.wait_or_kill(WAIT)?;
    let output = format!("{}\n{}", proc.stdout(), proc.stderr());
    drop(proc);
    let _ = std::fs::remove_dir_all(&logs);
    Ok((status, output))
}

/// Keel's log filter for the run: info, and the debug lines that time each reload's phases.
const PHASE_LOG_FILTER: &str = "info,keel::state::reload=debug,keel::routing::table=debug";

/// The fields of the last `reloads` reloads' phase lines in keel's log `stderr` (each reload logs
/// `config directory loaded`, then `routing tables built`), one string per reload.
fn reload_phases(stderr: &str, reloads: usize) -> Vec<String> {
    let fields = |line: &str, message: &str| {
        line.split_once(message)
            .map(|(_, rest)| rest.trim().to_string())
    };
    let mut out = Vec::new();
    let mut loaded: Option<String> = None;
    for line in stderr.lines() {
        if let Some(f) = fields(line, "config directory loaded") {
            loaded = Some(f);
        } else if let Some(f) = fields(line, "routing tables built") {
            if let Some(l) = loaded.take() {
                out.push(format!("loaded: {l}; routing: {f}"));
            }
        }
    }
    let skip = out.len().saturating_sub(reloads);
    out.split_off(skip)
}

/// Keel's reload count, from the Prometheus exposition: polled every few milliseconds, so it must
/// be cheap for keel to answer, and `/stats` lists every cluster's counters (thousands here).
fn reloads(keel: &Keel) -> Result<u64> {
    let r = keel_tests::http::get(
        keel.options().admin_addr,
        "/stats/prometheus",
        Duration::from_secs(5),
    )?;
    ensure!(r.status == 200, "/stats/prometheus answered {}", r.status);
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix("keel_config_reloads_total "))
        .and_then(|v| v.trim().parse().ok())
        .context("/stats/prometheus has no keel_config_reloads_total")
}

/// Waits until keel counted a reload since `before` and svc-0 answers from `version`.
fn wait_applied(keel: &Keel, probe: &Probe<'_>, before: u64, version: &str) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    while reloads(keel)? <= before {
        if Instant::now() > deadline {
            bail!("keel did not reload within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    while probe.version(false)?.as_deref() != Some(version) {
        if Instant::now() > deadline {
            bail!("svc-0 did not switch to {version} within {WAIT:?}");
        }
    }
    Ok(())
}

/// `(VmRSS, VmHWM)` of `pid`, KiB.
fn rss_hwm(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |key: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {key} in {path}"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU of `pid` over `over`, percent of one core.
fn idle_cpu(pid: u32, over: Duration) -> Result<f64> {
    let tck = procs::clk_tck()?;
    let before = procs::cpu_ticks(pid)?;
    std::thread::sleep(over);
    let after = procs::cpu_ticks(pid)?;
    Ok((after.saturating_sub(before)) as f64 / tck / over.as_secs_f64() * 100.0)
}

/// Number of files and total bytes in `dir`.
fn dir_size(dir: &Path) -> Result<(usize, u64)> {
    let mut files = 0;
    let mut bytes = 0;
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let m = e?.metadata()?;
        if m.is_file() {
            files += 1;
            bytes += m.len();
        }
    }
    Ok((files, bytes))
}

/// The report's section.
pub fn markdown(r: &ConfigScaleResult) -> String {
    let mut o = String::new();
    let s = |v: f64| {
        if v.is_finite() {
            format!("{v:.3}")
        } else {
            "—".into()
        }
    };
    let status = |v: f64| {
        if v.is_finite() && v < TARGET.as_secs_f64() {
            "met"
        } else {
            "missed"
        }
    };
    let all = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mib = |k: u64| k as f64 / 1024.0;
    let _ = writeln!(o, "## Config scale: load and apply\n");
    let _ = writeln!(
        o,
        "{} Services (cluster IPs in 10.96.0.0/16, one `http` port), {} endpoint pods (2 per service), {} \
         VirtualServices (header rule + weighted v1/v2 canary + timeout + retries, one file each) and {} \
         DestinationRules (subsets v1/v2, traffic policy) over 5 namespaces: {} files, {:.1} MiB. Three real \
         client pods in two namespaces under Keel's cgroup root; svc-0's two endpoints are real servers, \
         the other endpoints are never connected to. Keel watches the directory with inotify (a change \
         wakes the reload at once; it starts once the files stay unchanged for 50 ms). Medians of {} run(s); the goal is < {} s.\n",
        r.services,
        r.endpoint_pods,
        r.virtual_services,
        r.destination_rules,
        r.files,
        r.config_bytes as f64 / 1024.0 / 1024.0,
        r.rounds,
        TARGET.as_secs(),
    );
    let _ = writeln!(
        o,
        "| measurement | median s | runs s | goal < {} s |\n|---|---|---|---|",
        TARGET.as_secs()
    );
    let _ = writeln!(
        o,
        "| `keel validate` (parse + validate) | {} | {} | — |",
        s(r.validate_median_s()),
        all(&r.validate_s)
    );
    let _ = writeln!(
        o,
        "| `keel run` start -> `/ready` (load, views, attach, {} meshed destinations to the kernel) | {} | {} | {} |",
        r.dump_meshed_destinations,
        s(r.start_median_s()),
        all(&r.start_to_ready_s),
        status(r.start_median_s())
    );
    let _ = writeln!(
        o,
        "| one VirtualService file changed -> reload counted and served | {} | {} | {} |",
        s(r.single_reload_median_s()),
        all(&r.single_reload_s),
        status(r.single_reload_median_s())
    );
    let _ = writeln!(
        o,
        "| all {} VirtualService files rewritten -> reload counted and served (after the writes; writes took {} s; reloads per rewrite: {}) | {} | {} | {} |",
        r.virtual_services,
        all(&r.all_vs_write_s),
        r.all_vs_reloads
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        s(r.all_vs_reload_median_s()),
        all(&r.all_vs_reload_s),
        status(r.all_vs_reload_median_s())
    );
    if !r.single_reload_phases.is_empty() {
        let _ = writeln!(
            o,
            "\nWhere a one-VirtualService reload's time goes (keel's debug log; `*_ms`: milliseconds each \
             phase took; `reused`: service ports whose routes were taken over from the previous \
             tables):\n"
        );
        for (i, phases) in r.single_reload_phases.iter().enumerate() {
            let _ = writeln!(o, "- reload {}: `{phases}`", i + 1);
        }
    }
    let _ = writeln!(
        o,
        "\nMemory (keel, `/proc/<pid>/status`): after load VmRSS {:.1} MiB, VmHWM {:.1} MiB; after {} \
         reloads VmRSS {:.1} MiB, VmHWM {:.1} MiB (VmRSS after each reload: {} MiB). The first reload of each kind \
         adds a step (the first all-VirtualService reload builds a whole config while the old one serves; \
         the allocator keeps part of the old one's pages). Bounded (no growth across reloads: VmRSS after \
         the last ≤ after the first of each kind + {:.0} MiB of allocator noise): **{}**. Idle CPU ({} files watched with inotify and looked at \
         every 10 s, pod rescan every second): {:.1} % of one core.\n",
        mib(r.rss_after_load_kib),
        mib(r.hwm_after_load_kib),
        r.rss_after_each_reload_kib.len(),
        mib(r.rss_after_reloads_kib),
        mib(r.hwm_after_reloads_kib),
        r.rss_after_each_reload_kib
            .iter()
            .map(|k| format!("{:.0}", mib(*k)))
            .collect::<Vec<_>>()
            .join(", "),
        mib(r.rss_noise_kib()),
        if r.memory_bounded() { "yes" } else { "no" },
        r.files,
        r.idle_cpu_percent,
    );
    let _ = writeln!(
        o,
        "Target \"load and apply < {} s\": **{}**.\n",
        TARGET.as_secs(),
        if r.target_met() { "met" } else { "missed" }
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_stay_in_their_ranges() {
        assert_eq!(Mesh::vip(0), Ipv4Addr::new(10, 96, 10, 1));
        assert_eq!(Mesh::vip(4999), Ipv4Addr::new(10, 96, 29, 250));
        assert_eq!(Mesh::fake_pod_ip(0), Ipv4Addr::new(10, 245, 0, 1));
        assert_eq!(Mesh::fake_pod_ip(9997), Ipv4Addr::new(10, 245, 39, 248));
    }

    #[test]
    fn generated_yaml_parses_and_counts_add_up() -> Result<()> {
        let mesh = Mesh {
            services: 3,
            backends: [Ipv4Addr::new(10, 244, 9, 10), Ipv4Addr::new(10, 244, 9, 11)],
            clients: Vec::new(),
        };
        let count = |text: &str| -> Result<usize> {
            let mut n = 0;
            for doc in text.split("---\n") {
                let _: serde_yaml::Value = serde_yaml::from_str(doc)?;
                n += 1;
            }
            Ok(n)
        };
        assert_eq!(count(&mesh.services_yaml())?, 3);
        assert_eq!(count(&mesh.pods_yaml())?, 6);
        assert_eq!(count(&mesh.destination_rules_yaml())?, 3);
        let vs: serde_yaml::Value = serde_yaml::from_str(&Mesh::virtual_service_yaml(2, 90))?;
        assert_eq!(
            vs["spec"]["http"][1]["route"][1]["weight"].as_u64(),
            Some(10)
        );
        assert_eq!(vs["metadata"]["namespace"].as_str(), Some("scale-2"));
        // svc-0's endpoints are the real backends.
        assert!(mesh.pods_yaml().contains("podIP: 10.244.9.10"));
        Ok(())
    }
}
