//! `cargo xtask bench`: Keel against the data paths it replaces, on one node's pod network, in one run.
//!
//! Four modes carry the same workload to the same kind of backend (nginx answering with its identity):
//!
//! | mode | path |
//! |---|---|
//! | `direct` | client pod -> server pod IP (no mesh: the floor) |
//! | `sidecar` | Istio's shape: iptables REDIRECT in each pod, Envoy outbound (15001) in the client pod and Envoy inbound (15006) in each server pod, UID 1337 excluded |
//! | `node-envoy` | one shared Envoy on the bridge IP (Cilium's shape); the client netns DNATs the service CIDR to it |
//! | `keel` | Keel's eBPF connect() redirect and node proxy |
//! | `keel-access-log` | the same with Keel's access log on (a file), on a network of its own; measured at `http1-rate` and `http1-max` only |
//!
//! Every meshed mode routes by the same VirtualService, chosen with `--route-policy`: `features`
//! (default) adds what users turn on, a header-match rule ahead of the weighted canary and retries and a
//! timeout on the canary; `plain` is the canary alone. Every meshed mode gets the same DestinationRule
//! (subsets v1/v2 by label), by default with a connection pool and outlier detection
//! (`--traffic-policy pool-outlier`). Keel runs with Istio's metrics on. `--keel-bin` measures another
//! keel build, so two builds can be compared in one sitting.
//!
//! After the latency runs come the memory runs (idle proxies as the node grows, [`scale`]), the
//! per-client state run (100 client pods each cycling over 100 clusters under load,
//! [`client_state`]) and the config-scale runs.
//!
//! Modes are interleaved within every round (their order rotates per round), so slow drift of the
//! machine (other builds, thermal, page cache) spreads over all modes instead of biasing one; the
//! report takes medians over rounds. Every mode proves its path before it is measured, and every
//! measured run checks that the proxies' own request counters moved by the number of requests the load
//! generator saw, so a misrouted path cannot pass as fast.
//!
//! Invariants (network safety): all pods are network namespaces made here with no default route;
//! clients that need a route to the service CIDR get one via the bridge, where the host blackholes it;
//! every process is a [`keel_tests::Proc`] or inside the [`keel_tests::PodNet`]'s cgroups, killed on
//! drop; every load run is bounded by a duration and a process timeout.

mod chart;
mod client_state;
mod config_scale;
mod envoy;
mod install;
mod load;
mod mesh;
mod procs;
mod profile;
mod report;
mod rig;
mod scale;

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use mesh::{RoutePolicy, TrafficPolicy};
use report::KeelBinary;

/// The data paths under comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Client pod -> server pod IP, no mesh.
    Direct,
    /// Istio-style Envoy sidecar pair with iptables capture.
    Sidecar,
    /// One shared Envoy per node.
    NodeEnvoy,
    /// Keel's eBPF redirect and node proxy.
    Keel,
    /// Keel with its access log on (written to a file), on a pod network of its own.
    KeelAccessLog,
}

impl Mode {
    /// The name used on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Sidecar => "sidecar",
            Mode::NodeEnvoy => "node-envoy",
            Mode::Keel => "keel",
            Mode::KeelAccessLog => "keel-access-log",
        }
    }

    /// Whether the mode is measured with `w`: the access-log variant only at the HTTP/1.1 fixed rate
    /// and maximum throughput (what the log costs per request and at the top), every other mode
    /// with every workload.
    pub fn runs(self, w: load::Workload) -> bool {
        self != Mode::KeelAccessLog
            || matches!(w, load::Workload::Http1Rate | load::Workload::Http1Max)
    }

    /// Whether the mode runs Keel.
    pub fn is_keel(self) -> bool {
        matches!(self, Mode::Keel | Mode::KeelAccessLog)
    }
}

/// Arguments of `cargo xtask bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Short variant for the test suite: 1 round, 2 s per run, memory at 10 pods only. Checks that
    /// every mode's path is correct and that a report is produced; asserts nothing about speed.
    #[arg(long)]
    pub smoke: bool,
    /// Interleaved rounds; the report shows the median over rounds.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Fixed request rate of the latency runs, requests per second (all connections together).
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Concurrent connections of every load run (HTTP/2: streams, over connections/4 connections).
    #[arg(long, default_value_t = 16)]
    pub connections: u32,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Output directory [default: bench/results/<UTC date>]; `bench/LATEST.md` points at it if it
    /// is directly in bench/results/.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Modes to run, comma separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Mode::Direct, Mode::Sidecar, Mode::NodeEnvoy, Mode::Keel, Mode::KeelAccessLog])]
    pub modes: Vec<Mode>,
    /// Percent of requests the canary route sends to subset v1 (the rest go to v2).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=99))]
    pub v1_weight: u32,
    /// Pod/service counts for the memory-vs-node-size runs, comma separated (`0`: skip them).
    #[arg(long, value_delimiter = ',', default_values_t = [10u16, 50, 100])]
    pub scale: Vec<u16>,
    /// Subnet index of the bench's pod network (10.244.<n>.0/24); the memory and per-client state
    /// runs use <n>+1, `keel-access-log` and the config-scale runs <n>+2 (one after the other).
    #[arg(long, default_value_t = 200)]
    pub net_index: u8,
    /// Do not install missing tools (fail instead).
    #[arg(long)]
    pub no_install: bool,
    /// After the measured rounds, profile keel (perf) under one more run of each HTTP/1.1 workload
    /// and draw flamegraphs into the report directory (installs inferno when missing).
    #[arg(long)]
    pub profile: bool,
    /// Run only the config-scale benchmark (load/reload time and memory of Keel with a large mesh
    /// config; needs only keel and pod-agent). The full bench runs it too, as its own section.
    #[arg(long)]
    pub config_scale: bool,
    /// Services of the config-scale benchmark, each with 2 endpoint pods, a VirtualService and a
    /// DestinationRule (`--smoke`: 500; `0`: skip it in the full bench).
    #[arg(long, default_value_t = 5000)]
    pub config_scale_services: usize,
    /// Run only the upstream-state memory benchmark: `--upstream-clients` client pods each use
    /// `--upstream-clusters` clusters (a connection pool and outlier detection on every cluster), and
    /// the resident-set growth per (client, cluster) pair is reported. Needs no root or network.
    #[arg(long)]
    pub upstream_memory: bool,
    /// Client pods of the upstream-state memory benchmark.
    #[arg(long, default_value_t = 100)]
    pub upstream_clients: usize,
    /// Clusters of the upstream-state memory benchmark.
    #[arg(long, default_value_t = 100)]
    pub upstream_clusters: usize,
    /// Run only the per-client state run (`--client-state-pods` client pods each cycling over
    /// `--client-state-clusters` clusters at `--client-state-rate` rps in all); the full bench runs
    /// it too, after the memory runs.
    #[arg(long)]
    pub client_state: bool,
    /// Client pods of the per-client state run (`0`: skip it in the full bench; `--smoke`: 10).
    #[arg(long, default_value_t = 100)]
    pub client_state_pods: u16,
    /// Services (clusters) of the per-client state run, each with a DestinationRule with a
    /// connection pool and outlier detection (`--smoke`: 10).
    #[arg(long, default_value_t = 100)]
    pub client_state_clusters: u16,
    /// Requests per second of the per-client state run, all pods together.
    #[arg(long, default_value_t = 1000)]
    pub client_state_rate: u32,
    /// Seconds of load of the per-client state run (`--smoke`: 5).
    #[arg(long, default_value_t = 30)]
    pub client_state_seconds: u64,
    /// Keel's data-plane workers (`keel run --workers`); default: Keel's own (one per core).
    #[arg(long)]
    pub keel_workers: Option<usize>,
    /// Run keel with its access log on (`keel run --access-log PATH`, Istio's text format), to
    /// measure the log's cost against a run without it; `/dev/null` measures formatting and the
    /// writer thread without disk I/O.
    #[arg(long, value_name = "PATH")]
    pub keel_access_log: Option<String>,
    /// Run keel without Istio's standard metrics (`keel run --no-metrics`), to measure their cost
    /// against a run with them (the default).
    #[arg(long)]
    pub keel_no_metrics: bool,
    /// The VirtualService of every benchmarked service: `features` = a header-match rule to v2
    /// (never sent by the load) before the weighted canary, which has retries and a timeout; `plain`
    /// = the weighted canary alone. Every meshed mode gets the equivalent routes.
    #[arg(long, value_enum, default_value_t = RoutePolicy::Features)]
    pub route_policy: RoutePolicy,
    /// The DestinationRule `trafficPolicy` of every benchmarked service: `pool-outlier` = a
    /// connection pool and outlier detection with limits the load never reaches; `none` = Istio's
    /// defaults. Envoy gets the same thresholds and outlier detection.
    #[arg(long, value_enum, default_value_t = TrafficPolicy::PoolOutlier)]
    pub traffic_policy: TrafficPolicy,
    /// The keel binary to measure [default: `KEEL_BIN`, else target/release/keel].
    #[arg(long)]
    pub keel_bin: Option<PathBuf>,
}

/// Everything one run of the bench settles before measuring.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub smoke: bool,
    pub rounds: usize,
    pub rate: u32,
    pub connections: u32,
    pub duration_s: u64,
    pub modes: Vec<Mode>,
    pub v1_weight: u32,
    pub scale: Vec<u16>,
    pub body_bytes: usize,
    /// Services of the config-scale benchmark (0: not run).
    pub config_scale_services: usize,
    /// `keel run --workers`, if set.
    pub keel_workers: Option<usize>,
    /// `keel run --access-log`, if set.
    pub keel_access_log: Option<String>,
    /// `keel run --no-metrics`.
    pub keel_no_metrics: bool,
    /// The VirtualService every benchmarked service gets.
    pub route_policy: RoutePolicy,
    /// The DestinationRule `trafficPolicy` every benchmarked service gets.
    pub traffic_policy: TrafficPolicy,
    /// The per-client state run (`None`: not run).
    pub client_state: Option<client_state::Spec>,
    /// Profile keel under load after the measured rounds (`--profile`).
    pub profile: bool,
}

/// Runs the bench; see the module docs.
pub fn run(args: BenchArgs) -> Result<()> {
    let started = Instant::now();
    if args.upstream_memory {
        return run_upstream_memory(&args);
    }
    keel_tests::host::require_root()?;
    let settings = settings(&args)?;
    if args.config_scale {
        return run_config_scale_only(&args, &settings, started);
    }
    let tools = install::ensure(!args.no_install)?;
    if args.client_state {
        return run_client_state_only(&args, &settings, started);
    }
    let keel_bin = if settings.modes.iter().any(|m| m.is_keel())
        || settings.config_scale_services > 0
        || settings.client_state.is_some()
    {
        Some(keel_binary(&args).context(
            "keel mode and the config-scale runs need a keel binary (`cargo build --release -p \
             proxy-user`, or --keel-bin), or leave them out with --modes direct,sidecar,node-envoy \
             --config-scale-services 0",
        )?)
    } else {
        None
    };
    if let Some(k) = &keel_bin {
        note!("bench: keel binary {}", k.describe());
    }
    let machine = report::Machine::detect(&tools)?;
    let out_dir = match &args.out {
        Some(p) => p.clone(),
        None => bench_root()?.join("results").join(report::utc_date()),
    };
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("creating output directory {}", out_dir.display()))?;
    note!(
        "bench: {} round(s) x {} workloads x modes [{}], {} s per run; results in {}",
        settings.rounds,
        load::Workload::ALL.len(),
        settings
            .modes
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(", "),
        settings.duration_s,
        out_dir.display()
    );

    // (mode, workload or path) -> why it failed; the report shows them and the run fails at the end.
    let mut failures: Vec<(Mode, String, String)> = Vec::new();
    let profile_tools = if settings.profile && settings.modes.contains(&Mode::Keel) {
        Some(profile::tools(!args.no_install)?)
    } else {
        None
    };
    let mut profiles = Vec::new();
    let (verification, runs) = {
        let rig = rig::Rig::build(
            &settings,
            &tools,
            keel_bin.as_ref().map(|k| k.path.as_path()),
            args.net_index,
            config_scale_index(&args)?,
        )?;
        let verification = rig.verify_all();
        let runs = measure(&rig, &settings, &verification, &mut failures);
        if let Some(tools) = &profile_tools {
            let duration = Duration::from_secs(settings.duration_s);
            match profile::record(&rig, &settings, tools, &out_dir, duration) {
                Ok(p) => profiles = p,
                Err(e) => failures.push((Mode::Keel, "profile".to_string(), format!("{e:#}"))),
            }
        }
        rig.teardown()?;
        (verification, runs)
    };

    let memory = if settings.scale.is_empty() {
        Vec::new()
    } else {
        scale::run(
            &settings,
            &tools,
            keel_bin.as_ref().map(|k| k.path.as_path()),
            scale_index(&args)?,
            &mut failures,
        )?
    };

    let mut client_state = Vec::new();
    if let (Some(keel), Some(spec)) = (&keel_bin, &settings.client_state) {
        for spec in client_state::with_node_comparison(spec) {
            let what = format!("per-client state ({})", spec.upstream_state);
            match client_state::run(&spec, &tools, &keel.path, scale_index(&args)?) {
                Ok(r) => {
                    if let Some(e) = &r.error {
                        failures.push((Mode::Keel, what, e.clone()));
                    }
                    client_state.push(r);
                }
                Err(e) => {
                    note!("bench: PER-CLIENT STATE RUN FAILED: {e:#}");
                    failures.push((Mode::Keel, what, format!("{e:#}")));
                }
            }
        }
    }

    let config_scale = match (&keel_bin, settings.config_scale_services) {
        (None, _) | (_, 0) => None,
        (Some(keel), _) => match config_scale::run(
            &keel.path,
            settings.config_scale_services,
            settings.config_rounds(),
            config_scale_index(&args)?,
        ) {
            Ok(r) => Some(r),
            Err(e) => {
                note!("bench: CONFIG SCALE FAILED: {e:#}");
                failures.push((Mode::Keel, "config scale".to_string(), format!("{e:#}")));
                None
            }
        },
    };

    let results = report::Results {
        machine,
        keel: keel_bin,
        settings,
        verification,
        runs,
        memory,
        client_state,
        config_scale,
        profiles,
        failures: failures
            .into_iter()
            .map(|(mode, what, error)| report::Failure { mode, what, error })
            .collect(),
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    report::write(&out_dir, &results)?;
    chart::latency(&out_dir.join("latency.png"), &results, &tools.font)?;
    chart::memory(&out_dir.join("memory.png"), &results, &tools.font)?;
    chart::throughput(&out_dir.join("throughput.png"), &results, &tools.font)?;
    let report_path = out_dir.join("report.md");
    if !results.failures.is_empty() {
        // The report is written (it says what failed), but a run with a broken path is not "latest".
        bail!(
            "{} check(s) or run(s) failed; see {}:\n{}",
            results.failures.len(),
            report_path.display(),
            results
                .failures
                .iter()
                .map(|f| format!("- {} {}: {}", f.mode.name(), f.what, f.error))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // `LATEST.md` points at the run if it is in `bench/results/` (the default, or an `--out` there).
    let in_results = std::fs::canonicalize(&out_dir)
        .ok()
        .zip(std::fs::canonicalize(bench_root()?.join("results")).ok())
        .is_some_and(|(out, results)| out.parent() == Some(results.as_path()));
    if args.out.is_none() || in_results {
        report::write_latest(&bench_root()?, &out_dir, &results)?;
    }
    note!(
        "bench: done in {:.0} s; report: {}",
        started.elapsed().as_secs_f64(),
        report_path.display()
    );
    Ok(())
}

fn settings(args: &BenchArgs) -> Result<Settings> {
    if args.modes.is_empty() {
        bail!("--modes is empty");
    }
    let mut modes = args.modes.clone();
    modes.sort();
    modes.dedup();
    let smoke = args.smoke;
    Ok(Settings {
        smoke,
        rounds: if smoke { 1 } else { args.rounds.max(1) },
        rate: args.rate.max(1),
        connections: args.connections.max(1),
        duration_s: if smoke { 2 } else { args.duration.max(1) },
        modes,
        v1_weight: args.v1_weight,
        scale: args
            .scale
            .iter()
            .copied()
            .filter(|n| *n > 0 && (!smoke || *n <= 10))
            .take(if smoke { 1 } else { usize::MAX })
            .collect(),
        body_bytes: mesh::BODY_BYTES,
        keel_workers: args.keel_workers,
        keel_access_log: args.keel_access_log.clone(),
        keel_no_metrics: args.keel_no_metrics,
        route_policy: args.route_policy,
        traffic_policy: args.traffic_policy,
        client_state: (args.client_state_pods > 0 && args.client_state_clusters > 0).then(|| {
            client_state::Spec {
                pods: if smoke {
                    args.client_state_pods.min(10)
                } else {
                    args.client_state_pods
                },
                clusters: if smoke {
                    args.client_state_clusters.min(10)
                } else {
                    args.client_state_clusters
                },
                rate: args.client_state_rate.max(1),
                seconds: if smoke {
                    args.client_state_seconds.min(5)
                } else {
                    args.client_state_seconds.max(1)
                },
                upstream_state: "per-client",
            }
        }),
        config_scale_services: if smoke {
            args.config_scale_services.min(500)
        } else {
            args.config_scale_services
        },
        profile: args.profile,
    })
}

impl Settings {
    /// Runs per config-scale measurement (medians of 3; the smoke run checks it works, once).
    fn config_rounds(&self) -> usize {
        if self.smoke {
            1
        } else {
            3
        }
    }
}

/// Subnet index of the memory and per-client state runs: `--net-index` + 1.
fn scale_index(args: &BenchArgs) -> Result<u8> {
    args.net_index
        .checked_add(1)
        .filter(|i| *i < 255)
        .context("--net-index must leave room for <n>+1 (the memory runs' network)")
}

/// `--client-state`: only the per-client state run, with its own `report.md` and `raw.json`.
fn run_client_state_only(args: &BenchArgs, settings: &Settings, started: Instant) -> Result<()> {
    let spec = settings
        .client_state
        .as_ref()
        .context("--client-state with 0 pods or 0 clusters has nothing to run")?;
    let tools = install::ensure(!args.no_install)?;
    let keel = keel_binary(args).context(
        "the per-client state run needs a keel binary (`cargo build --release -p proxy-user`, or \
         --keel-bin)",
    )?;
    note!("bench: keel binary {}", keel.describe());
    let out_dir = match &args.out {
        Some(p) => p.clone(),
        None => bench_root()?
            .join("results")
            .join(format!("{}-client-state", report::utc_date())),
    };
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("creating output directory {}", out_dir.display()))?;
    let mut result = Vec::new();
    for spec in client_state::with_node_comparison(spec) {
        result.push(client_state::run(
            &spec,
            &tools,
            &keel.path,
            scale_index(args)?,
        )?);
    }
    let raw = serde_json::json!({
        "machine": report::machine_basics(),
        "keel": &keel,
        "client_state": &result,
        "elapsed_s": started.elapsed().as_secs_f64(),
    });
    let raw_path = out_dir.join("raw.json");
    std::fs::write(&raw_path, serde_json::to_string_pretty(&raw)?)
        .with_context(|| format!("writing {}", raw_path.display()))?;
    let md = format!(
        "# Keel per-client state benchmark — {}\n\n{}\nKeel: {}.\n\n{}",
        report::utc_date(),
        report::machine_line().replace("--config-scale", "--client-state"),
        keel.describe(),
        client_state::markdown(&result)
    );
    let md_path = out_dir.join("report.md");
    std::fs::write(&md_path, md).with_context(|| format!("writing {}", md_path.display()))?;
    note!(
        "bench: per-client state done in {:.0} s; report: {}",
        started.elapsed().as_secs_f64(),
        md_path.display()
    );
    if let Some(e) = result.iter().find_map(|r| r.error.as_ref()) {
        bail!("per-client state run failed: {e}");
    }
    Ok(())
}

/// Subnet index of the config-scale network (and of `keel-access-log`'s, which is gone by then):
/// `--net-index` + 2 (the memory runs use + 1).
fn config_scale_index(args: &BenchArgs) -> Result<u8> {
    args.net_index
        .checked_add(2)
        .filter(|i| *i < 255)
        .context("--net-index must leave room for <n>+2 (the config-scale network)")
}

/// `--config-scale`: only the config-scale benchmark, with its own `report.md` and `raw.json`.
fn run_config_scale_only(args: &BenchArgs, settings: &Settings, started: Instant) -> Result<()> {
    if settings.config_scale_services == 0 {
        bail!("--config-scale with --config-scale-services 0 has nothing to run");
    }
    let keel = keel_binary(args).context(
        "the config-scale benchmark needs a keel binary (`cargo build --release -p proxy-user`, or \
         --keel-bin)",
    )?;
    note!("bench: keel binary {}", keel.describe());
    let out_dir = match &args.out {
        Some(p) => p.clone(),
        None => bench_root()?
            .join("results")
            .join(format!("{}-config-scale", report::utc_date())),
    };
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("creating output directory {}", out_dir.display()))?;
    let result = config_scale::run(
        &keel.path,
        settings.config_scale_services,
        settings.config_rounds(),
        config_scale_index(args)?,
    )?;
    let raw = serde_json::json!({
        "machine": report::machine_basics(),
        "settings": settings,
        "keel": &keel,
        "config_scale": &result,
        "elapsed_s": started.elapsed().as_secs_f64(),
    });
    let raw_path = out_dir.join("raw.json");
    std::fs::write(&raw_path, serde_json::to_string_pretty(&raw)?)
        .with_context(|| format!("writing {}", raw_path.display()))?;
    let mut md = format!(
        "# Keel config-scale benchmark — {}\n\n{}{}\nKeel: {}.\n\n",
        report::utc_date(),
        if settings.smoke {
            "> **Smoke run** (`--smoke`): reduced size, one run each; it checks the harness, its \
             numbers are not the issue's measurement.\n\n"
        } else {
            ""
        },
        report::machine_line(),
        keel.describe(),
    );
    md.push_str(&config_scale::markdown(&result));
    let md_path = out_dir.join("report.md");
    std::fs::write(&md_path, md).with_context(|| format!("writing {}", md_path.display()))?;
    note!(
        "bench: config scale done in {:.0} s; report: {}",
        started.elapsed().as_secs_f64(),
        md_path.display()
    );
    Ok(())
}

/// The keel binary under test: `--keel-bin`, else `KEEL_BIN`, else target/release/keel; identified
/// (version, hash) before anything runs, so the report says which build it measured.
fn keel_binary(args: &BenchArgs) -> Result<KeelBinary> {
    let path = match &args.keel_bin {
        Some(p) => {
            // Absolute, so the report names the file whatever the working directory was.
            let p =
                std::fs::canonicalize(p).with_context(|| format!("--keel-bin {}", p.display()))?;
            let meta =
                std::fs::metadata(&p).with_context(|| format!("--keel-bin {}", p.display()))?;
            if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
                bail!("--keel-bin {} is not an executable file", p.display());
            }
            p
        }
        None => keel_tests::host::keel_bin()?,
    };
    KeelBinary::identify(&path)
}

/// `<workspace>/bench`: where results and `LATEST.md` live.
/// The upstream-state memory benchmark: runs proxy-user's `upstream_memory` example (Keel's own
/// cluster registry and per-client state, in one process) and saves its numbers.
fn run_upstream_memory(args: &BenchArgs) -> Result<()> {
    let root = keel_tests::host::workspace_root();
    let output = std::process::Command::new(env!("CARGO"))
        .current_dir(&root)
        .args([
            "run",
            "--release",
            "--quiet",
            "-p",
            "proxy-user",
            "--example",
            "upstream_memory",
            "--",
            "--clients",
            &args.upstream_clients.to_string(),
            "--clusters",
            &args.upstream_clusters.to_string(),
        ])
        .output()
        .context("running the upstream_memory example")?;
    if !output.status.success() {
        bail!(
            "upstream_memory failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let line = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let result: serde_json::Value =
        serde_json::from_str(&line).with_context(|| format!("upstream_memory printed {line:?}"))?;
    let out_dir = match &args.out {
        Some(p) => p.clone(),
        None => bench_root()?
            .join("results")
            .join(format!("{}-upstream-memory", report::utc_date())),
    };
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("creating output directory {}", out_dir.display()))?;
    let raw = serde_json::json!({ "machine": report::machine_basics(), "upstream_memory": result });
    let path = out_dir.join("raw.json");
    std::fs::write(&path, serde_json::to_string_pretty(&raw)?)
        .with_context(|| format!("writing {}", path.display()))?;
    say!(
        "upstream state: {} pairs ({} clients x {} clusters) grew RSS by {} KiB: {:.0} B per pair ({})",
        result["pairs"],
        result["clients"],
        result["clusters"],
        result["rss_growth_bytes"].as_u64().unwrap_or(0) / 1024,
        result["bytes_per_pair"].as_f64().unwrap_or(0.0),
        path.display()
    );
    Ok(())
}

fn bench_root() -> Result<PathBuf> {
    let root = keel_tests::host::workspace_root();
    if !root.join("Cargo.toml").is_file() {
        bail!(
            "cannot find the workspace root (looked at {})",
            root.display()
        );
    }
    Ok(root.join("bench"))
}

/// `[k/n, about 3m left]` in front of each measured run's line: the full bench takes a while.
struct Progress {
    done: usize,
    total: usize,
    started: Instant,
}

impl Progress {
    fn new(total: usize) -> Progress {
        Progress {
            done: 0,
            total,
            started: Instant::now(),
        }
    }

    /// A run that will not happen (its path is broken): it costs no time.
    fn skip(&mut self) {
        self.total = self.total.saturating_sub(1);
    }

    /// Counts one finished run and says where the bench stands.
    fn step(&mut self) -> String {
        self.done += 1;
        let left = self.total.saturating_sub(self.done);
        let per_run = self.started.elapsed().as_secs_f64() / self.done as f64;
        let eta = (per_run * left as f64).round() as u64;
        format!(
            "[{}/{}, about {}m{:02}s left]",
            self.done,
            self.total,
            eta / 60,
            eta % 60
        )
    }
}

/// All measured runs: every round, every workload, every mode, in the interleaved order they ran.
/// A (mode, workload) whose path check failed is never run; one whose run fails is recorded in
/// `failures` and not run again, so the other modes still get measured.
fn measure(
    rig: &rig::Rig,
    settings: &Settings,
    verification: &[rig::Verification],
    failures: &mut Vec<(Mode, String, String)>,
) -> Vec<load::RunResult> {
    for v in verification {
        if let Some(e) = &v.error {
            failures.push((v.mode, format!("path check ({})", v.protocol), e.clone()));
        }
    }
    let path_ok = |mode: Mode, w: load::Workload| {
        let protocol = if w.http2() { "h2c" } else { "http/1.1" };
        verification
            .iter()
            .any(|v| v.mode == mode && v.protocol == protocol && v.error.is_none())
    };
    let mut broken: Vec<(Mode, load::Workload)> = Vec::new();
    let mut runs = Vec::new();
    let per_round: usize = load::Workload::ALL
        .iter()
        .map(|&w| settings.modes.iter().filter(|m| m.runs(w)).count())
        .sum();
    let mut progress = Progress::new(settings.rounds * per_round);
    note!("bench: warm-up, one 1 s run per mode and workload (not recorded)");
    let mut run = |mode: Mode, w: load::Workload, duration: Duration, round: usize| {
        if !mode.runs(w) {
            return;
        }
        if !path_ok(mode, w) || broken.contains(&(mode, w)) {
            if round > 0 {
                progress.skip();
            }
            return;
        }
        match rig.run_load(mode, w, settings, duration, round) {
            Ok(r) if round > 0 => {
                note!("bench: {} {}", progress.step(), r.one_line());
                runs.push(r);
            }
            Ok(_) => {}
            Err(e) => {
                let what = if round == 0 {
                    format!("{} warm-up", w.name())
                } else {
                    format!("{} round {round}", w.name())
                };
                if round > 0 {
                    progress.skip();
                }
                note!("bench: RUN FAILED {} {what}: {e:#}", mode.name());
                failures.push((mode, what, format!("{e:#}")));
                broken.push((mode, w));
            }
        }
    };
    // A short unrecorded warm-up per mode and workload: first connections, Envoy's lazy init, page
    // faults of fresh worker threads, nginx's first accept, are not what the bench compares.
    for w in load::Workload::ALL {
        for &mode in &settings.modes {
            run(mode, w, Duration::from_secs(1), 0);
        }
    }
    let duration = Duration::from_secs(settings.duration_s);
    for round in 0..settings.rounds {
        for w in load::Workload::ALL {
            // Rotate the mode order every round so no mode always runs first (or right after the
            // heaviest one).
            let n = settings.modes.len();
            for k in 0..n {
                run(settings.modes[(k + round) % n], w, duration, round + 1);
            }
        }
    }
    runs
}
