//! `cargo xtask demo`: the Bookinfo-style mesh of `config/demo` on a real pod network, through keel.
//!
//! Reads pods (name, namespace, labels, `status.podIP`) and Services (cluster IP, ports, selector) from
//! the YAML in `config/demo`, builds one netns + cgroup per pod, starts a `pod-agent http-server` in
//! every pod a Service selects (on the Service's target port, reporting the pod's `version` label),
//! starts keel on the same directory, sends requests from `sleep` to `http://reviews:9080/` (connecting
//! to the reviews VIP, as the pod's DNS would), and prints the split per version next to the weights
//! configured in the VirtualService. Everything is removed at the end, also on Ctrl-C.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use keel_tests::{Agent, HttpGet, Keel, KeelOptions, PodNet, Proc};
use serde_yaml::Value;

const PREFIX: &str = "kdemo";
/// The client pod requests are sent from.
const CLIENT: &str = "sleep";
/// The Service whose canary split the demo shows.
const SHOWCASE: &str = "reviews";

/// Arguments of `cargo xtask demo`.
#[derive(Debug, Clone, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DemoArgs {
    #[command(subcommand)]
    action: Option<DemoAction>,
    /// Keep everything running after the requests (until Ctrl-C), to poke at it by hand.
    #[arg(long)]
    keep: bool,
    /// Requests sent from `sleep` to the reviews service.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    requests: u32,
    /// Config directory [default: config/demo].
    #[arg(long)]
    config: Option<PathBuf>,
    /// Check the pod network and backends only (pod to pod, no keel).
    #[arg(long)]
    without_keel: bool,
    /// Use the binaries already built (`KEEL_BIN`/`POD_AGENT_BIN` or target/release) instead of
    /// running setup and the release build first.
    #[arg(long)]
    no_build: bool,
}

/// What else `cargo xtask demo` can do next to a running demo.
#[derive(Debug, Clone, clap::Subcommand)]
enum DemoAction {
    /// A shell (or COMMAND) inside a pod of a running `cargo xtask demo --keep`: in the pod's
    /// cgroup first, then its network namespace, so keel captures its connections as any pod's.
    Shell {
        /// The pod: `NAME` or `NAMESPACE/NAME`, as in the demo's YAML.
        pod: String,
        /// Config directory of the running demo [default: config/demo].
        #[arg(long)]
        config: Option<PathBuf>,
        /// Run this instead of an interactive shell (after `--`).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// The check `cargo xtask test` runs: `--keep` with piped output, `shell`, Ctrl-C cleanup.
    Smoke,
}

/// A pod as the demo YAML declares it.
#[derive(Debug, Clone)]
struct DemoPod {
    namespace: String,
    name: String,
    labels: BTreeMap<String, String>,
    ip: Ipv4Addr,
    /// Named container ports, for named `targetPort`s.
    container_ports: BTreeMap<String, u16>,
}

/// One port of a demo Service.
#[derive(Debug, Clone)]
struct DemoPort {
    name: String,
    port: u16,
    /// Number, or a container port name.
    target: Target,
}

#[derive(Debug, Clone)]
enum Target {
    Number(u16),
    Name(String),
}

/// A Service as the demo YAML declares it.
#[derive(Debug, Clone)]
struct DemoService {
    namespace: String,
    name: String,
    cluster_ip: Ipv4Addr,
    selector: BTreeMap<String, String>,
    ports: Vec<DemoPort>,
}

/// The demo config: Kubernetes resources plus the raw Istio documents the weights are read from.
#[derive(Debug, Default)]
struct DemoConfig {
    pods: Vec<DemoPod>,
    services: Vec<DemoService>,
    virtual_services: Vec<Value>,
    destination_rules: Vec<Value>,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: std::ffi::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C and SIGTERM set a flag instead of killing the demo, so the pod network is always removed.
/// The handler is reset to the default in exec'd children, so keel and the agents are unaffected.
fn install_signal_handlers() -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(sig, &action) }.with_context(|| format!("installing {sig} handler"))?;
    }
    Ok(())
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Runs the demo (see the module docs), or what `action` asks.
pub fn run(args: &DemoArgs) -> Result<()> {
    if let Some(DemoAction::Shell {
        pod,
        config,
        command,
    }) = &args.action
    {
        return shell(pod, config.as_deref(), command);
    }
    if let Some(DemoAction::Smoke) = &args.action {
        return smoke(&crate::build_bins(true)?);
    }
    keel_tests::host::require_root()
        .context("the demo builds network namespaces and needs root")?;
    let dir = args
        .config
        .clone()
        .unwrap_or_else(|| crate::workspace_root().join("config").join("demo"));
    let config = load(&dir)?;
    let index = subnet_index(&config.pods)?;
    let bins = if args.no_build {
        crate::Binaries {
            keel: keel_tests::host::keel_bin()?,
            pod_agent: keel_tests::host::pod_agent_bin(None)?,
        }
    } else {
        crate::build_bins(!args.without_keel)?
    };
    install_signal_handlers()?;
    for line in keel_tests::cleanup_stale(PREFIX)? {
        note!("demo: {line}");
    }

    let agent = Agent::new(&bins.pod_agent);
    let mut net = PodNet::new(PREFIX, index)?;
    let result = run_on(&mut net, &agent, &bins.keel, &config, &dir, args);
    // Teardown explicitly to report problems; Drop would only print them.
    let teardown = net.teardown();
    match (result, teardown) {
        (Ok(()), Ok(())) => {
            note!("demo: cleaned up");
            Ok(())
        }
        (Err(e), Ok(())) => Err(e),
        (Ok(()), Err(t)) => Err(t),
        (Err(e), Err(t)) => Err(e.context(format!("and cleanup failed too: {t:#}"))),
    }
}

fn run_on(
    net: &mut PodNet,
    agent: &Agent,
    keel_bin: &Path,
    config: &DemoConfig,
    dir: &Path,
    args: &DemoArgs,
) -> Result<()> {
    let mut pods = BTreeMap::new();
    for p in &config.pods {
        let pod = net.add_pod(&p.namespace, &p.name, p.ip.octets()[3])?;
        pods.insert((p.namespace.clone(), p.name.clone()), (p, pod));
    }
    note!(
        "demo: {} pods on {} (bridge {} = keel's proxy address), service CIDR {} blackholed",
        pods.len(),
        net.subnet(),
        net.bridge_ip(),
        net.service_cidr()
    );

    // One server per (pod, target port) that some Service selects.
    let mut servers: Vec<Proc> = Vec::new();
    let mut serving: BTreeMap<(String, u16), String> = BTreeMap::new();
    for svc in &config.services {
        for (p, pod) in pods.values().filter(|(p, _)| selects(svc, p)) {
            for port in &svc.ports {
                let target = resolve_target(&port.target, p)?;
                if serving.contains_key(&(p.name.clone(), target)) {
                    continue;
                }
                let version = p
                    .labels
                    .get("version")
                    .cloned()
                    .unwrap_or_else(|| "-".into());
                let proc = if port.name.starts_with("tcp") {
                    agent.tcp_echo_server(pod, target)?
                } else {
                    agent.http_server(pod, target, &version)?
                };
                servers.push(proc);
                serving.insert((p.name.clone(), target), svc.name.clone());
            }
        }
        check_interrupted()?;
    }
    note!("demo: {} backend servers started", servers.len());

    let (_, client) = pods
        .iter()
        .find(|((_, name), _)| name == CLIENT)
        .map(|(_, v)| v)
        .with_context(|| format!("config has no pod named {CLIENT:?} to send requests from"))?;

    if args.without_keel {
        // The network alone: sleep reaches each backend pod directly (no VIP, no keel).
        for ((pod_name, port), svc) in &serving {
            let (p, _) = pods
                .values()
                .find(|(p, _)| &p.name == pod_name)
                .context("served pod vanished")?;
            let url = format!("http://{}:{port}/", p.ip);
            let r = agent.http_get(client, &HttpGet::new(&url).count(3))?;
            say!(
                "{svc:<12} {pod_name:<16} {url:<28} {} x 200 (direct, no keel)",
                r.status(200)
            );
        }
        return Ok(());
    }

    let showcase = config
        .services
        .iter()
        .find(|s| s.name == SHOWCASE)
        .with_context(|| format!("config has no Service {SHOWCASE:?}"))?;
    let port = showcase
        .ports
        .first()
        .with_context(|| format!("Service {SHOWCASE} has no ports"))?;
    let vip = SocketAddr::V4(SocketAddrV4::new(showcase.cluster_ip, port.port));

    note!("demo: starting keel on {}", dir.display());
    let mut opts = KeelOptions::new(net, dir)?;
    opts.binary = Some(keel_bin.to_path_buf());
    let keel = Keel::start_with(net, opts)?;
    note!(
        "demo: keel ready (admin http://{})",
        keel.options().admin_addr
    );
    check_interrupted()?;

    let url = format!("http://{SHOWCASE}:{}/", port.port);
    note!(
        "demo: {} requests from {CLIENT} to {url} (VIP {vip})",
        args.requests
    );
    let timeout = Duration::from_secs(30 + u64::from(args.requests) / 50);
    let report = agent.http_get(
        client,
        &HttpGet::new(&url)
            .connect_to(vip)
            .count(args.requests)
            .timeout(timeout),
    )?;
    let weights = configured_weights(config, showcase);
    print_split(&report, &weights);
    ensure!(
        report.errors == 0 && report.status(200) == report.requested,
        "not every request succeeded: {} errors, statuses {:?}, first error {:?}",
        report.errors,
        report.by_status,
        report.first_error
    );

    if args.keep {
        say!(
            "\nRunning until Ctrl-C. keel admin: http://{admin}/stats, /clusters, /config_dump, /debug/connections\n\
             A shell inside {CLIENT} (its cgroup, then its netns, so keel captures it):\n  \
             cargo xtask demo shell {CLIENT}\n  \
             then: curl -s http://{vip}/",
            admin = keel.options().admin_addr,
        );
        while !INTERRUPTED.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
        }
        note!("demo: Ctrl-C, cleaning up");
    }
    drop(keel);
    drop(servers);
    Ok(())
}

/// `cargo xtask demo shell POD [-- COMMAND...]`: exits with the shell's (or command's) status.
fn shell(pod: &str, config: Option<&Path>, command: &[String]) -> Result<()> {
    keel_tests::host::require_root()
        .context("entering a demo pod's network namespace and cgroup needs root")?;
    let dir = config
        .map(Path::to_path_buf)
        .unwrap_or_else(|| crate::workspace_root().join("config").join("demo"));
    let demo = load(&dir)?;
    let index = subnet_index(&demo.pods)?;
    let (namespace, name) = match pod.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, pod),
    };
    let declared = demo
        .pods
        .iter()
        .find(|p| p.name == name && namespace.is_none_or(|ns| p.namespace == ns))
        .with_context(|| {
            let names: Vec<String> = demo
                .pods
                .iter()
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .collect();
            format!(
                "no pod {pod:?} in {}; its pods: {}",
                dir.display(),
                names.join(", ")
            )
        })?;
    let running = keel_tests::Pod::of_running_net(
        PREFIX,
        index,
        &declared.namespace,
        &declared.name,
        declared.ip,
    )
    .context("no demo is running: start `cargo xtask demo --keep` in another terminal first")?;

    note!(
        "demo: in pod {} ({}); keel captures its connections to these Services:",
        running.full_name(),
        running.ip
    );
    for svc in &demo.services {
        for port in &svc.ports {
            note!(
                "  {:<24} curl -s http://{}:{}/",
                format!("{}.{}:{}", svc.name, svc.namespace, port.port),
                svc.cluster_ip,
                port.port
            );
        }
    }
    let mut cmd = match command.split_first() {
        Some((program, rest)) => {
            let mut cmd = running.command(program);
            cmd.args(rest);
            cmd
        }
        None => {
            let mut cmd = running.command("bash");
            cmd.args(["--norc", "-i"])
                .env("PS1", format!("[pod {}] \\w# ", running.full_name()));
            cmd
        }
    };
    // Ctrl-C belongs to the shell: a handler (reset by exec) keeps it from killing us meanwhile.
    install_signal_handlers()?;
    let status = cmd
        .status()
        .with_context(|| format!("starting a shell in pod {}", running.full_name()))?;
    std::process::exit(status.code().unwrap_or(1));
}

fn print_split(report: &keel_tests::HttpGetReport, weights: &BTreeMap<String, u32>) {
    let total_weight: u32 = weights.values().sum();
    say!(
        "\n{SHOWCASE}: {} responses over {} connection(s) in {} ms",
        report.responses,
        report.connections,
        report.elapsed_ms
    );
    say!(
        "{:<10} {:>10} {:>10} {:>9}",
        "version",
        "configured",
        "observed",
        "requests"
    );
    let mut versions: Vec<&String> = weights.keys().chain(report.by_version.keys()).collect();
    versions.sort();
    versions.dedup();
    for v in versions {
        let configured = weights
            .get(v)
            .map(|w| {
                format!(
                    "{:.1}%",
                    100.0 * f64::from(*w) / f64::from(total_weight.max(1))
                )
            })
            .unwrap_or_else(|| "-".to_string());
        let n = report.by_version.get(v).copied().unwrap_or(0);
        let observed = if report.responses == 0 {
            0.0
        } else {
            100.0 * n as f64 / report.responses as f64
        };
        say!("{v:<10} {configured:>10} {observed:>9.1}% {n:>9}");
    }
}

// ------------------------------------------------------------------------------------------------
// Reading config/demo.

fn load(dir: &Path) -> Result<DemoConfig> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading demo config dir {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    let mut config = DemoConfig::default();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let v = <Value as serde::Deserialize>::deserialize(doc)
                .with_context(|| format!("{}: document {}", file.display(), i + 1))?;
            let ctx = || format!("{}: document {}", file.display(), i + 1);
            match v["kind"].as_str() {
                Some("Pod") => config.pods.push(parse_pod(&v).with_context(ctx)?),
                Some("Service") => config.services.push(parse_service(&v).with_context(ctx)?),
                Some("VirtualService") => config.virtual_services.push(v),
                Some("DestinationRule") => config.destination_rules.push(v),
                _ => {}
            }
        }
    }
    ensure!(
        !config.pods.is_empty(),
        "no Pod resources in {}",
        dir.display()
    );
    Ok(config)
}

fn str_map(v: &Value) -> BTreeMap<String, String> {
    v.as_mapping()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.as_str()?.to_string(), scalar(v)?)))
        .collect()
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn namespace_of(v: &Value) -> String {
    v["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string()
}

fn parse_pod(v: &Value) -> Result<DemoPod> {
    let name = v["metadata"]["name"]
        .as_str()
        .context("Pod without metadata.name")?;
    let ip: Ipv4Addr = v["status"]["podIP"]
        .as_str()
        .with_context(|| format!("Pod {name} has no status.podIP"))?
        .parse()
        .with_context(|| format!("Pod {name}: status.podIP is not an IPv4 address"))?;
    let mut container_ports = BTreeMap::new();
    for c in v["spec"]["containers"].as_sequence().into_iter().flatten() {
        for p in c["ports"].as_sequence().into_iter().flatten() {
            if let (Some(n), Some(port)) = (p["name"].as_str(), p["containerPort"].as_u64()) {
                container_ports.insert(n.to_string(), u16::try_from(port)?);
            }
        }
    }
    Ok(DemoPod {
        namespace: namespace_of(v),
        name: name.to_string(),
        labels: str_map(&v["metadata"]["labels"]),
        ip,
        container_ports,
    })
}

fn parse_service(v: &Value) -> Result<DemoService> {
    let name = v["metadata"]["name"]
        .as_str()
        .context("Service without metadata.name")?;
    let cluster_ip: Ipv4Addr = v["spec"]["clusterIP"]
        .as_str()
        .with_context(|| format!("Service {name} has no spec.clusterIP"))?
        .parse()
        .with_context(|| format!("Service {name}: spec.clusterIP is not an IPv4 address"))?;
    let mut ports = Vec::new();
    for p in v["spec"]["ports"].as_sequence().into_iter().flatten() {
        let port = u16::try_from(
            p["port"]
                .as_u64()
                .with_context(|| format!("Service {name}: a port without `port`"))?,
        )?;
        let target = match &p["targetPort"] {
            Value::Number(n) => Target::Number(u16::try_from(
                n.as_u64().context("targetPort is not a port number")?,
            )?),
            Value::String(s) => match s.parse::<u16>() {
                Ok(n) => Target::Number(n),
                Err(_) => Target::Name(s.clone()),
            },
            // Kubernetes defaults targetPort to port.
            _ => Target::Number(port),
        };
        ports.push(DemoPort {
            name: p["name"].as_str().unwrap_or("").to_string(),
            port,
            target,
        });
    }
    Ok(DemoService {
        namespace: namespace_of(v),
        name: name.to_string(),
        cluster_ip,
        selector: str_map(&v["spec"]["selector"]),
        ports,
    })
}

fn selects(svc: &DemoService, pod: &DemoPod) -> bool {
    !svc.selector.is_empty()
        && svc.namespace == pod.namespace
        && svc
            .selector
            .iter()
            .all(|(k, v)| pod.labels.get(k) == Some(v))
}

fn resolve_target(t: &Target, pod: &DemoPod) -> Result<u16> {
    match t {
        Target::Number(n) => Ok(*n),
        Target::Name(n) => pod
            .container_ports
            .get(n)
            .copied()
            .with_context(|| format!("pod {} has no container port named {n:?}", pod.name)),
    }
}

/// All pod IPs must be in one `10.244.<n>.0/24` (the bridge is `.1`); returns `n`.
fn subnet_index(pods: &[DemoPod]) -> Result<u8> {
    let mut index = None;
    for p in pods {
        let o = p.ip.octets();
        ensure!(
            o[0] == 10 && o[1] == 244 && o[2] < 255 && o[3] >= 2 && o[3] < 255,
            "pod {} has IP {} outside 10.244.<n>.2-254",
            p.name,
            p.ip
        );
        match index {
            None => index = Some(o[2]),
            Some(i) if i == o[2] => {}
            Some(i) => bail!(
                "pods span several subnets (10.244.{i}.0/24 and {}); the demo uses one bridge",
                p.ip
            ),
        }
    }
    index.context("no pods")
}

/// Weight per `version` label for `svc`'s first weighted HTTP route, via the DestinationRule subsets.
/// A route with a single destination and no weight counts as 100.
fn configured_weights(config: &DemoConfig, svc: &DemoService) -> BTreeMap<String, u32> {
    let fqdn = format!("{}.{}.svc.cluster.local", svc.name, svc.namespace);
    let names_svc = |host: &str| {
        host == svc.name || host == fqdn || host == format!("{}.{}", svc.name, svc.namespace)
    };
    let subset_versions: BTreeMap<String, String> = config
        .destination_rules
        .iter()
        .filter(|dr| dr["spec"]["host"].as_str().is_some_and(names_svc))
        .flat_map(|dr| {
            dr["spec"]["subsets"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|s| {
            Some((
                s["name"].as_str()?.to_string(),
                s["labels"]["version"].as_str()?.to_string(),
            ))
        })
        .collect();
    let mut weights = BTreeMap::new();
    let vs = config.virtual_services.iter().find(|vs| {
        vs["spec"]["hosts"]
            .as_sequence()
            .into_iter()
            .flatten()
            .any(|h| h.as_str().is_some_and(names_svc))
    });
    let Some(vs) = vs else {
        return weights;
    };
    let Some(route) = vs["spec"]["http"]
        .as_sequence()
        .and_then(|rules| rules.first())
        .and_then(|rule| rule["route"].as_sequence())
    else {
        return weights;
    };
    for d in route {
        let subset = d["destination"]["subset"].as_str().unwrap_or("");
        let version = subset_versions
            .get(subset)
            .cloned()
            .unwrap_or_else(|| subset.to_string());
        let w = d["weight"]
            .as_u64()
            .map_or(if route.len() == 1 { 100 } else { 0 }, |w| {
                u32::try_from(w).unwrap_or(u32::MAX)
            });
        *weights.entry(version).or_insert(0) += w;
    }
    weights
}

/// `cargo xtask test`'s check of the first hour, as a newcomer meets it: `demo --keep` with its
/// output going to a pipe, `demo shell sleep -- curl ...` reaching a Service through keel, then
/// Ctrl-C (SIGINT to the demo's whole process group, as a terminal sends it) after the pipe's
/// reader has gone; the demo must exit 0 and leave nothing behind.
pub fn smoke(bins: &crate::Binaries) -> Result<()> {
    use std::io::BufRead as _;
    use std::os::unix::process::CommandExt as _;
    use std::process::{Command, Stdio};

    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let dir = crate::workspace_root().join("config").join("demo");
    let config = load(&dir)?;
    let index = subnet_index(&config.pods)?;
    let showcase = config
        .services
        .iter()
        .find(|s| s.name == SHOWCASE)
        .with_context(|| format!("config/demo has no Service {SHOWCASE:?}"))?;
    let port = showcase
        .ports
        .first()
        .with_context(|| format!("Service {SHOWCASE} has no ports"))?;
    let url = format!("http://{}:{}/", showcase.cluster_ip, port.port);

    let log = std::env::temp_dir().join(format!("keel-demo-smoke-{}.log", std::process::id()));
    let mut demo = Command::new(&exe)
        .args(["demo", "--keep", "--no-build", "--requests", "50"])
        .env("KEEL_BIN", &bins.keel)
        .env("POD_AGENT_BIN", &bins.pod_agent)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).context("creating the demo log")?)
        .process_group(0)
        .spawn()
        .context("starting `xtask demo --keep`")?;
    let pgid = nix::unistd::Pid::from_raw(i32::try_from(demo.id()).unwrap_or(i32::MAX));
    let stdout = demo.stdout.take().context("demo stdout")?;
    // Read until the demo says it is up, then drop the pipe's reading end, as a `| head` or a
    // Ctrl-C'd `| tee` would.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("Running until Ctrl-C") {
                let _ = ready_tx.send(());
                return;
            }
        }
    });
    let outcome = (|| -> Result<()> {
        ready_rx
            .recv_timeout(Duration::from_secs(240))
            .context("the demo did not come up within 240 s")?;
        let out = Command::new(&exe)
            .args([
                "demo",
                "shell",
                CLIENT,
                "--",
                "curl",
                "-s",
                "-i",
                "--max-time",
                "5",
            ])
            .arg(&url)
            .output()
            .context("running `xtask demo shell`")?;
        let response = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success()
                && response.starts_with("HTTP/1.1 200")
                && response
                    .to_ascii_lowercase()
                    .contains("\nx-envoy-upstream-service-time:"),
            "`demo shell {CLIENT} -- curl {url}` should get a 200 from keel (with \
             x-envoy-upstream-service-time); exit {:?}, stdout:\n{response}\nstderr:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    })();
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGINT);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = demo.try_wait()? {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = demo.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let demo_log = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    outcome.with_context(|| format!("demo log:\n{demo_log}"))?;
    ensure!(
        status.is_some_and(|s| s.success()),
        "after Ctrl-C with its stdout reader gone the demo should clean up and exit 0, got {status:?}; \
         demo log:\n{demo_log}"
    );
    let left = keel_tests::leftovers(PREFIX, index);
    ensure!(
        left.is_empty(),
        "the demo left {} behind after Ctrl-C: {}",
        left.len(),
        left.join("; ")
    );
    Ok(())
}
