//! Shared fixtures of the e2e test files (each file is its own crate and uses what it needs).

#![allow(dead_code, reason = "each test file uses a different subset")]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use keel_tests::config::service_yaml;
use keel_tests::{
    Agent, ConfigDir, ConnectionRecord, GrpcServerOpts, HttpGet, HttpGetReport, HttpServerOpts,
    Keel, Pod, PodNet, Proc, RequestLog, RequestRecord, SvcPort,
};

/// The `pod-agent` built with these tests (override with `POD_AGENT_BIN`).
pub fn agent() -> Result<Agent> {
    Agent::from_env(Some(env!("CARGO_BIN_EXE_pod-agent")))
}

/// `10.96.0.<last>:<port>`, a Service VIP in the default service CIDR.
pub fn vip(last: u8, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, last), port))
}

/// Percentage of `part` in `total`.
pub fn percent(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        100.0 * part as f64 / total as f64
    }
}

/// The reviews Service VIP used by the fixtures.
pub const REVIEWS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
/// The reviews Service port (and the backends' port).
pub const REVIEWS_PORT: u16 = 9080;
/// What an application in a pod would ask for: `http://reviews:9080/`.
pub const REVIEWS_URL: &str = "http://reviews:9080/";
/// The FQDN keel reports for the reviews Service.
pub const REVIEWS_FQDN: &str = "reviews.default.svc.cluster.local";

/// `10.96.0.20:9080`.
pub fn reviews_vip() -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(REVIEWS_IP, REVIEWS_PORT))
}

/// A pod plus the labels and annotations of its `Pod` resource.
pub struct PodSpec {
    pub pod: Pod,
    pub labels: Vec<(String, String)>,
    pub annotations: Vec<(String, String)>,
}

/// A pod network with a client pod `default/sleep` and `reviews-<version>` backends serving HTTP on
/// 9080 behind the `reviews` Service (10.96.0.20:9080, port name `http`), plus the config dir describing
/// it. Field order is drop order: servers die before the network goes.
pub struct Fixture {
    pub servers: Vec<Proc>,
    pub config: ConfigDir,
    pub agent: Agent,
    pub sleep: Pod,
    pub reviews: Vec<Pod>,
    pub specs: Vec<PodSpec>,
    pub services: Vec<String>,
    /// Request logs of the logged backends, by pod name.
    pub logs: BTreeMap<String, RequestLog>,
    pub net: PodNet,
}

impl Fixture {
    /// Builds the network, starts one server per version (pods `.11`, `.12`, ...), writes
    /// `services.yaml` and `pods.yaml`.
    pub fn reviews(prefix: &str, index: u8, versions: &[&str]) -> Result<Fixture> {
        let agent = agent()?;
        let mut net = PodNet::new(prefix, index)?;
        let config = ConfigDir::new(&format!("{prefix}-{index}"))?;
        let sleep = net.add_pod("default", "sleep", 2)?;
        let mut fx = Fixture {
            servers: Vec::new(),
            config,
            agent,
            sleep: sleep.clone(),
            reviews: Vec::new(),
            specs: vec![PodSpec {
                pod: sleep,
                labels: labels(&[("app", "sleep")]),
                annotations: Vec::new(),
            }],
            services: Vec::new(),
            logs: BTreeMap::new(),
            net,
        };
        for (i, v) in versions.iter().enumerate() {
            let suffix = u8::try_from(11 + i)?;
            let pod = fx.net.add_pod("default", &format!("reviews-{v}"), suffix)?;
            fx.servers
                .push(fx.agent.http_server(&pod, REVIEWS_PORT, v)?);
            fx.specs.push(PodSpec {
                pod: pod.clone(),
                labels: labels(&[("app", "reviews"), ("version", v)]),
                annotations: Vec::new(),
            });
            fx.reviews.push(pod);
        }
        fx.add_service(service_yaml(
            "reviews",
            "default",
            REVIEWS_IP,
            &[SvcPort {
                name: "http",
                port: REVIEWS_PORT,
                target_port: REVIEWS_PORT,
            }],
            &[("app", "reviews")],
        ))?;
        fx.write_pods()?;
        Ok(fx)
    }

    /// Adds a pod (captured or not) with a `Pod` resource, and rewrites `pods.yaml`.
    pub fn add_pod(
        &mut self,
        name: &str,
        suffix: u8,
        labels_: &[(&str, &str)],
        annotations: &[(&str, &str)],
        outside_root: bool,
    ) -> Result<Pod> {
        let pod = if outside_root {
            self.net.add_pod_outside_root("default", name, suffix)?
        } else {
            self.net.add_pod("default", name, suffix)?
        };
        self.specs.push(PodSpec {
            pod: pod.clone(),
            labels: labels(labels_),
            annotations: labels(annotations),
        });
        self.write_pods()?;
        Ok(pod)
    }

    /// Replaces the annotations of the `Pod` resource named `name` and rewrites `pods.yaml` (a
    /// pod's annotation change, as `kubectl annotate` would make it).
    pub fn set_annotations(&mut self, name: &str, annotations: &[(&str, &str)]) -> Result<()> {
        let spec = self
            .specs
            .iter_mut()
            .find(|s| s.pod.name == name)
            .with_context(|| format!("no pod {name} in this fixture"))?;
        spec.annotations = labels(annotations);
        self.write_pods()
    }

    /// Drops the `Pod` resource named `name` from `pods.yaml` (its network stays).
    pub fn remove_pod_resource(&mut self, name: &str) -> Result<()> {
        self.specs.retain(|s| s.pod.name != name);
        self.write_pods()
    }

    /// Adds a captured pod in `namespace` (cgroup `<root>/<namespace>/<name>`) with a `Pod` resource
    /// carrying `labels_`, and rewrites `pods.yaml`.
    pub fn add_pod_in(
        &mut self,
        namespace: &str,
        name: &str,
        suffix: u8,
        labels_: &[(&str, &str)],
    ) -> Result<Pod> {
        let pod = self.net.add_pod(namespace, name, suffix)?;
        self.specs.push(PodSpec {
            pod: pod.clone(),
            labels: labels(labels_),
            annotations: Vec::new(),
        });
        self.write_pods()?;
        Ok(pod)
    }

    /// Adds a captured pod in `namespace` serving HTTP on `port` whose echo body says `version`.
    pub fn add_http_backend(
        &mut self,
        namespace: &str,
        name: &str,
        suffix: u8,
        port: u16,
        version: &str,
        labels_: &[(&str, &str)],
    ) -> Result<Pod> {
        let pod = self.add_pod_in(namespace, name, suffix, labels_)?;
        self.servers
            .push(self.agent.http_server(&pod, port, version)?);
        Ok(pod)
    }

    /// `count` keep-alive GETs of `url` from `client`, connecting to `addr`.
    pub fn get_from(
        &self,
        client: &Pod,
        url: &str,
        addr: SocketAddr,
        count: u32,
    ) -> Result<HttpGetReport> {
        self.agent.http_get(
            client,
            &keel_tests::HttpGet::new(url).connect_to(addr).count(count),
        )
    }

    /// Adds a Service document and rewrites `services.yaml`.
    pub fn add_service(&mut self, yaml: String) -> Result<()> {
        self.services.push(yaml);
        self.config
            .write("services.yaml", &self.services.join("---\n"))?;
        Ok(())
    }

    fn write_pods(&self) -> Result<()> {
        let docs: Vec<String> = self
            .specs
            .iter()
            .map(|s| {
                let l: Vec<(&str, &str)> = s
                    .labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let a: Vec<(&str, &str)> = s
                    .annotations
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                keel_tests::pod_yaml(&s.pod, &l, &a)
            })
            .collect();
        self.config.write("pods.yaml", &docs.join("---\n"))?;
        Ok(())
    }

    /// Starts keel on this fixture's network and config with the default options.
    pub fn start_keel(&self) -> Result<Keel> {
        Keel::start(&self.net, self.config.path())
    }

    /// Like [`Fixture::start_keel`], but first fails with keel's own words if `keel validate` rejects
    /// any resource of the config: the tests write valid Istio only, so a rejection is a Keel gap, and
    /// saying so beats judging traffic that fell back to default routing.
    pub fn start_keel_strict(&self) -> Result<Keel> {
        let out = keel_tests::keel::validate(self.config.path())?;
        ensure!(
            out.code == Some(0),
            "keel rejects this valid Istio config:\n{}",
            out.combined().trim()
        );
        self.start_keel()
    }

    /// After keel was killed (its heartbeat slot not freed): `sleep`'s VIP connects are refused at
    /// once while the last heartbeat is fresh (they still reach the dead proxy's port), then go
    /// direct, which in a pod without routes is unreachable. Fails on any other outcome, or if they
    /// do not go direct within `within`; returns how long that took.
    pub fn wait_direct_after_kill(&self, within: Duration) -> Result<Duration> {
        let t = Instant::now();
        loop {
            let c = self.agent.tcp_connect(&self.sleep, reviews_vip(), None)?;
            match c.outcome {
                keel_tests::ConnectOutcome::Unreachable => return Ok(t.elapsed()),
                keel_tests::ConnectOutcome::Refused if t.elapsed() < within => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                _ => bail!(
                    "{:?} after keel died a VIP connect must go direct (unreachable here) or, \
                     while its last heartbeat is fresh, be refused at once (within {within:?}): {c:?}",
                    t.elapsed()
                ),
            }
        }
    }

    /// `count` keep-alive GETs of `http://reviews:9080/` from `sleep`, connecting to the VIP.
    pub fn get_reviews(&self, count: u32) -> Result<HttpGetReport> {
        self.agent.http_get(
            &self.sleep,
            &keel_tests::HttpGet::new(REVIEWS_URL)
                .connect_to(reviews_vip())
                .count(count),
        )
    }

    /// Like [`Fixture::reviews`], but every backend logs the requests it receives; their logs are in
    /// [`Fixture::logs`] under the pod names `reviews-<version>`.
    pub fn reviews_logged(prefix: &str, index: u8, versions: &[&str]) -> Result<Fixture> {
        let mut fx = Fixture::reviews(prefix, index, &[])?;
        for (i, v) in versions.iter().enumerate() {
            let suffix = u8::try_from(11 + i)?;
            fx.add_logged_backend(
                &format!("reviews-{v}"),
                suffix,
                REVIEWS_PORT,
                v,
                &[("app", "reviews"), ("version", v)],
                HttpServerOpts::default(),
            )?;
        }
        Ok(fx)
    }

    /// The request log file for backend `name` in this network's work dir.
    pub fn log_path(&self, name: &str) -> std::path::PathBuf {
        self.net.work_dir().join(format!("{name}.requests.jsonl"))
    }

    /// The request log of backend `name`.
    pub fn log(&self, name: &str) -> Result<&RequestLog> {
        self.logs
            .get(name)
            .with_context(|| format!("no logged backend named {name}"))
    }

    /// Adds a captured pod `default/<name>` (IP suffix `suffix`, labels `labels_`) running `http-server`
    /// on `port` with `opts` and a request log (kept in [`Fixture::logs`] under `name`).
    pub fn add_logged_backend(
        &mut self,
        name: &str,
        suffix: u8,
        port: u16,
        version: &str,
        labels_: &[(&str, &str)],
        mut opts: HttpServerOpts,
    ) -> Result<Pod> {
        let pod = self.add_pod_in("default", name, suffix, labels_)?;
        let log = RequestLog::new(self.log_path(name));
        opts.log = Some(log.path().to_path_buf());
        self.servers
            .push(self.agent.http_server_with(&pod, port, version, &opts)?);
        self.logs.insert(name.to_string(), log);
        Ok(pod)
    }

    /// Adds a captured pod running `grpc-server` (h2c) on `port` with a request log.
    pub fn add_grpc_backend(
        &mut self,
        name: &str,
        suffix: u8,
        port: u16,
        version: &str,
        labels_: &[(&str, &str)],
        mut opts: GrpcServerOpts,
    ) -> Result<Pod> {
        let pod = self.add_pod_in("default", name, suffix, labels_)?;
        let log = RequestLog::new(self.log_path(name));
        opts.log = Some(log.path().to_path_buf());
        self.servers
            .push(self.agent.grpc_server(&pod, port, version, &opts)?);
        self.logs.insert(name.to_string(), log);
        Ok(pod)
    }

    /// Adds a captured pod running the WebSocket echo server on `port` with a request log.
    pub fn add_ws_backend(
        &mut self,
        name: &str,
        suffix: u8,
        port: u16,
        labels_: &[(&str, &str)],
    ) -> Result<Pod> {
        let pod = self.add_pod_in("default", name, suffix, labels_)?;
        let log = RequestLog::new(self.log_path(name));
        self.servers
            .push(self.agent.ws_server(&pod, port, Some(log.path()))?);
        self.logs.insert(name.to_string(), log);
        Ok(pod)
    }

    /// Adds a Service `name` in `default` with one port (`port_name`, `port` -> `target_port`) selecting
    /// `app: <name>`, at `10.96.0.<vip_last>`.
    pub fn add_simple_service(
        &mut self,
        name: &str,
        vip_last: u8,
        port_name: &str,
        port: u16,
        target_port: u16,
    ) -> Result<SocketAddr> {
        self.add_service(service_yaml(
            name,
            "default",
            Ipv4Addr::new(10, 96, 0, vip_last),
            &[SvcPort {
                name: port_name,
                port,
                target_port,
            }],
            &[("app", name)],
        ))?;
        Ok(vip(vip_last, port))
    }

    /// Writes Keel's `MeshConfig` (`mesh.yaml`) with the given `spec` lines (two-space indented YAML
    /// under `spec:`), e.g. `"defaultHttpTimeout: 0s"`.
    pub fn write_mesh(&self, spec_lines: &[&str]) -> Result<()> {
        let mut y = String::from(
            "apiVersion: keel.io/v1alpha1\nkind: MeshConfig\nmetadata:\n  name: keel\nspec:\n",
        );
        for l in spec_lines {
            y.push_str("  ");
            y.push_str(l);
            y.push('\n');
        }
        self.config.write("mesh.yaml", &y)?;
        Ok(())
    }

    /// Runs `req` from `sleep`.
    pub fn get(&self, req: &HttpGet) -> Result<HttpGetReport> {
        self.agent.http_get(&self.sleep, req)
    }

    /// One request of `path` to reviews from `sleep` with `headers`.
    pub fn reviews_once(&self, path: &str, headers: &[(&str, &str)]) -> Result<HttpGetReport> {
        let mut req = HttpGet::new(format!("http://reviews:9080{path}")).connect_to(reviews_vip());
        for (k, v) in headers {
            req = req.header(k, v);
        }
        self.get(&req)
    }
}

/// The records of `log` whose header `name` has exactly `value`.
pub fn with_header<'a>(
    records: &'a [RequestRecord],
    name: &str,
    value: &str,
) -> Vec<&'a RequestRecord> {
    records
        .iter()
        .filter(|r| r.header(name) == Some(value))
        .collect()
}

/// `x-envoy-attempt-count` of each record, in log order (`0` where absent or not a number).
pub fn attempt_counts(records: &[&RequestRecord]) -> Vec<u32> {
    records
        .iter()
        .map(|r| r.attempt_count().unwrap_or(0))
        .collect()
}

/// The ±`k`σ binomial interval of successes in `n` trials of probability `p`, clamped to `0..=n`.
pub fn binomial_bounds(n: u64, p: f64, k: f64) -> (u64, u64) {
    let nf = n as f64;
    let mean = nf * p;
    let sd = (nf * p * (1.0 - p)).sqrt();
    let lo = (mean - k * sd).floor().max(0.0) as u64;
    let hi = ((mean + k * sd).ceil() as u64).min(n);
    (lo, hi)
}

/// Fails unless `got` lies in the ±5σ binomial interval of `n` trials with probability `p`.
pub fn ensure_binomial(what: &str, got: u64, n: u64, p: f64) -> Result<()> {
    let (lo, hi) = binomial_bounds(n, p, 5.0);
    ensure!(
        (lo..=hi).contains(&got),
        "{what}: {got} of {n}, expected {:.1}% -> [{lo}, {hi}] (±5σ)",
        p * 100.0
    );
    Ok(())
}

/// Calls `probe` every 100 ms until it returns `Ok(true)` or `timeout` passes (then fails with the last
/// probe's description) — for waiting until a config change is live.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => {
                if Instant::now() >= deadline {
                    return Err(e.context(format!("waiting for {what}")));
                }
            }
        }
        if Instant::now() >= deadline {
            bail!("{what} did not happen within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

/// Checks that every response was a 200 from a backend that saw the proxy (the bridge IP) as its peer.
pub fn ensure_all_ok_via_proxy(r: &HttpGetReport, net: &PodNet) -> Result<()> {
    ensure!(
        r.errors == 0 && !r.timed_out && r.status(200) == r.requested,
        "expected {} x 200, got {r:?}",
        r.requested
    );
    let bridge = net.bridge_ip().to_string();
    ensure!(
        r.by_peer_ip.get(&bridge).copied() == Some(r.requested),
        "backends should see the proxy ({bridge}) as peer: {:?}",
        r.by_peer_ip
    );
    Ok(())
}

/// The records of `/debug/connections` whose client address is one of `local_addrs`.
pub fn records_from<'a>(
    records: &'a [ConnectionRecord],
    local_addrs: &[String],
) -> Vec<&'a ConnectionRecord> {
    records
        .iter()
        .filter(|r| local_addrs.contains(&r.source_addr))
        .collect()
}

/// A DestinationRule with one subset per version (`version: <v>` label).
pub fn reviews_destination_rule(versions: &[&str]) -> String {
    let mut y = String::from(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: reviews\n  \
         namespace: default\nspec:\n  host: reviews\n  subsets:\n",
    );
    for v in versions {
        y.push_str(&format!("  - name: {v}\n    labels:\n      version: {v}\n"));
    }
    y
}

/// A VirtualService splitting `reviews` by subset weights.
pub fn reviews_weighted_virtual_service(weights: &[(&str, u32)]) -> String {
    let mut y = String::from(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\n  \
         namespace: default\nspec:\n  hosts:\n  - reviews\n  http:\n  - route:\n",
    );
    for (subset, w) in weights {
        y.push_str(&format!(
            "    - destination:\n        host: reviews\n        subset: {subset}\n      weight: {w}\n"
        ));
    }
    y
}
