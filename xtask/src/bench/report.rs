//! The bench's outputs: `raw.json` (every run), `report.md` (medians over rounds, ratios, targets) and
//! `bench/LATEST.md` (a pointer to the newest report).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use super::install::Tools;
use super::load::{RunResult, Workload};
use super::rig::Verification;
use super::scale::MemoryPoint;
use super::{Mode, Settings};

/// The machine and tool versions a run was measured with.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub date_utc: String,
    pub nproc: String,
    pub kernel: String,
    pub cpu_model: String,
    pub memory: String,
    pub envoy: String,
    pub oha: String,
    pub nginx: String,
}

impl Machine {
    /// Reads `nproc`, `uname -r`, the CPU model and the tools' versions.
    pub fn detect(tools: &Tools) -> Result<Machine> {
        let first_line = |program: &str, args: &[&str]| -> String {
            std::process::Command::new(program)
                .args(args)
                .output()
                .map(|o| {
                    // nginx prints its version on stderr.
                    let text = if o.stdout.is_empty() {
                        o.stderr
                    } else {
                        o.stdout
                    };
                    String::from_utf8_lossy(&text)
                        .lines()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("")
                        .trim()
                        .to_string()
                })
                .unwrap_or_else(|e| format!("unknown ({e})"))
        };
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").context("reading /proc/cpuinfo")?;
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
        let memory = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kib| kib.parse::<f64>().ok())
            .map(|kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0))
            .unwrap_or_else(|| "unknown".into());
        let envoy_version = first_line(&tools.envoy.to_string_lossy(), &["--version"]);
        Ok(Machine {
            date_utc: utc_date(),
            nproc: first_line("nproc", &[]),
            kernel: first_line("uname", &["-r"]),
            cpu_model,
            memory,
            // "<path>  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
            envoy: envoy_version
                .split_once("version: ")
                .and_then(|(_, v)| v.split('/').nth(1))
                .map(|v| format!("Envoy {v}"))
                .unwrap_or(envoy_version),
            oha: first_line(&tools.oha.to_string_lossy(), &["--version"]),
            nginx: first_line(&tools.nginx.to_string_lossy(), &["-v"])
                .replace("nginx version: nginx/", "nginx "),
        })
    }
}

/// The keel build a run measured: two builds of one version differ only in their hash.
#[derive(Debug, Clone, Serialize)]
pub struct KeelBinary {
    /// Absolute path of the binary.
    pub path: PathBuf,
    /// First line of `keel --version`.
    pub version: String,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// File size, bytes.
    pub bytes: u64,
}

impl KeelBinary {
    /// Runs `keel --version` and hashes the file (coreutils `sha256sum`).
    pub fn identify(path: &Path) -> Result<KeelBinary> {
        let shown = path.display().to_string();
        let version = keel_tests::host::run(&shown, &["--version"])
            .with_context(|| format!("`{shown} --version`"))?
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let sha256 = keel_tests::host::run("sha256sum", &["--", &shown])?
            .split_whitespace()
            .next()
            .context("sha256sum printed nothing")?
            .to_string();
        let bytes = std::fs::metadata(path)
            .with_context(|| format!("reading {shown}"))?
            .len();
        Ok(KeelBinary {
            path: path.to_path_buf(),
            version,
            sha256,
            bytes,
        })
    }

    /// One line for logs and reports.
    pub fn describe(&self) -> String {
        format!(
            "`{}` ({}, sha256 `{}`, {:.1} MiB)",
            self.path.display(),
            self.version,
            self.sha256,
            self.bytes as f64 / 1024.0 / 1024.0
        )
    }
}

/// Everything a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub machine: Machine,
    /// The keel binary measured (absent when neither keel mode nor config scale ran).
    pub keel: Option<KeelBinary>,
    pub settings: Settings,
    pub verification: Vec<Verification>,
    pub runs: Vec<RunResult>,
    pub memory: Vec<MemoryPoint>,
    /// The per-client state runs: Keel's default per-client upstream state, then node-wide state
    /// (empty when skipped; a run that could not run is missing).
    pub client_state: Vec<super::client_state::ClientStateResult>,
    /// The config-scale benchmark (absent when skipped or failed).
    pub config_scale: Option<super::config_scale::ConfigScaleResult>,
    /// Flamegraphs of keel under load (`--profile`; empty otherwise).
    pub profiles: Vec<super::profile::Flamegraph>,
    /// Path checks and runs that failed (their numbers are missing from the tables).
    pub failures: Vec<Failure>,
    pub elapsed_s: f64,
}

/// A path check, run or memory measurement that failed.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub mode: Mode,
    /// Which check or run.
    pub what: String,
    /// The error, with its causes.
    pub error: String,
}

/// Medians over rounds of one (workload, mode).
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub latency_ms: [f64; 4],
    pub rps: f64,
    pub cpu_per_1k: f64,
    pub softirq_per_1k: f64,
    pub rss_mib: f64,
}

/// Median of the finite values (NaN if none).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl Results {
    /// Medians over the measured rounds (warm-ups are not in `runs`).
    pub fn summary(&self, workload: Workload, mode: Mode) -> Option<Summary> {
        let runs: Vec<&RunResult> = self
            .runs
            .iter()
            .filter(|r| r.workload == workload && r.mode == mode)
            .collect();
        if runs.is_empty() {
            return None;
        }
        let med = |f: &dyn Fn(&RunResult) -> f64| median(runs.iter().map(|r| f(r)).collect());
        Some(Summary {
            latency_ms: [0, 1, 2, 3].map(|i| med(&|r| r.oha.latency_ms[i])),
            rps: med(&|r| r.oha.rps()),
            cpu_per_1k: med(&|r| r.cpu_per_1k()),
            softirq_per_1k: med(&|r| r.softirq_per_1k()),
            rss_mib: med(&|r| r.proxy_rss_kib as f64 / 1024.0),
        })
    }
}

/// Writes `raw.json` and `report.md` into `dir`.
pub fn write(dir: &Path, results: &Results) -> Result<()> {
    let raw = dir.join("raw.json");
    std::fs::write(
        &raw,
        serde_json::to_string_pretty(results).context("serializing results")?,
    )
    .with_context(|| format!("writing {}", raw.display()))?;
    let md = dir.join("report.md");
    std::fs::write(&md, markdown(results)).with_context(|| format!("writing {}", md.display()))?;
    Ok(())
}

/// Points `<bench>/LATEST.md` at `out_dir`'s report.
pub fn write_latest(bench_root: &Path, out_dir: &Path, results: &Results) -> Result<()> {
    // Both absolute, so a relative `--out bench/results/x` links as `results/x`.
    let absolute = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let (root, out) = (absolute(bench_root), absolute(out_dir));
    let rel = out
        .strip_prefix(&root)
        .unwrap_or(&out)
        .to_string_lossy()
        .into_owned();
    let text = format!(
        "# Latest benchmark\n\n[`{rel}/report.md`]({rel}/report.md) — produced by `cargo xtask bench`.\n\n\
         {targets}\n\
         ![latency percentiles per mode]({rel}/latency.png)\n\n\
         ![throughput and proxy CPU per mode]({rel}/throughput.png)\n\n\
         ![proxy memory vs pods on the node]({rel}/memory.png)\n",
        targets = targets_table(results)
    );
    let path = bench_root.join("LATEST.md");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// Every target with its goal, what was measured, and met / missed: issue 13's first, then the
/// earlier issues'.
fn targets_table(r: &Results) -> String {
    let mut o = String::from(
        "## Targets of issue 13 (P10) (reported, not asserted)\n\nMeasured side by side in this \
         run, medians over rounds, with the feature config below (Config per mode).\n\n\
         | target | goal | measured | status |\n|---|---|---|---|\n",
    );
    let row = |o: &mut String, t: Target| {
        let status = match t.met {
            Some(true) => "met",
            Some(false) => "missed",
            None => "—",
        };
        let _ = writeln!(o, "| {} | {} | {} | {status} |", t.name, t.goal, t.value);
    };
    for t in issue13_targets(r) {
        row(&mut o, t);
    }
    o.push_str(
        "\n### Earlier targets\n\n| target | goal | measured | status |\n|---|---|---|---|\n",
    );
    for t in targets(r) {
        row(&mut o, t);
    }
    o.push('\n');
    o
}

/// Issue 13's limit on keel's RSS with 100 client pods x 100 clusters under load, MiB.
pub const CLIENT_STATE_RSS_MIB: f64 = 64.0;
/// Issue 13's share of the sidecar pair's added latency and cost keel may have.
const ISSUE13_SHARE: f64 = 0.15;
/// Issue 13's minimum of keel's maximum throughput as a share of direct's.
const ISSUE13_MAX_VS_DIRECT: f64 = 0.6;
/// Issue 13's config-path limits: one VirtualService changed, every one changed, seconds.
const ISSUE13_ONE_VS_S: f64 = 0.1;
const ISSUE13_ALL_VS_S: f64 = 1.0;

/// The targets of issue 13 (P10).
pub fn issue13_targets(r: &Results) -> Vec<Target> {
    let s = |w, m| r.summary(w, m);
    let mut out = Vec::new();
    let rate = (
        s(Workload::Http1Rate, Mode::Keel),
        s(Workload::Http1Rate, Mode::Sidecar),
        s(Workload::Http1Rate, Mode::Direct),
    );
    for (name, i, label) in [
        ("added p50 (http1-rate, 1,000 rps)", 0, "p50"),
        ("added p99 (http1-rate, 1,000 rps)", 2, "p99"),
    ] {
        let goal = format!("keel's added {label} over direct ≤ 15 % of the sidecar pair's");
        out.push(match rate {
            (Some(k), Some(sc), Some(d)) => {
                let added_k = k.latency_ms[i] - d.latency_ms[i];
                let added_sc = sc.latency_ms[i] - d.latency_ms[i];
                let share = added_k / added_sc;
                Target {
                    name,
                    goal,
                    value: format!(
                        "keel {added_k:+.3} ms, sidecar {added_sc:+.3} ms: {:.0} %",
                        share * 100.0
                    ),
                    met: share.is_finite().then_some(share <= ISSUE13_SHARE),
                }
            }
            _ => na(name, &goal, "needs direct, sidecar and keel"),
        });
    }
    let name = "CPU per 1k requests incl. softirq (http1-rate)";
    let goal = "keel's proxy CPU + softirq above direct's ≤ 15 % of the sidecars'";
    out.push(match rate {
        (Some(k), Some(sc), Some(d)) => {
            let cost = |x: &Summary| x.cpu_per_1k + (x.softirq_per_1k - d.softirq_per_1k).max(0.0);
            let (ck, csc) = (cost(&k), cost(&sc));
            Target {
                name,
                goal: goal.into(),
                value: format!(
                    "keel {ck:.4} ({:.4} + {:.4}) vs sidecar {csc:.4} ({:.4} + {:.4}) CPU-s: {:.0} %",
                    k.cpu_per_1k,
                    ck - k.cpu_per_1k,
                    sc.cpu_per_1k,
                    csc - sc.cpu_per_1k,
                    ck / csc * 100.0
                ),
                met: (ck / csc).is_finite().then_some(ck <= ISSUE13_SHARE * csc),
            }
        }
        _ => na(name, goal, "needs direct, sidecar and keel"),
    });
    let max = |m| s(Workload::Http1Max, m).map(|x| x.rps);
    let name = "max throughput vs direct (http1-max)";
    let goal = "keel ≥ 0.6× direct";
    out.push(match (max(Mode::Keel), max(Mode::Direct)) {
        (Some(k), Some(d)) => Target {
            name,
            goal: goal.into(),
            value: format!("{k:.0} vs {d:.0} rps: {:.2}×", k / d),
            met: Some(k >= ISSUE13_MAX_VS_DIRECT * d),
        },
        _ => na(name, goal, "needs direct and keel"),
    });
    let name = "RSS with per-client state under load";
    let goal =
        "keel ≤ 64 MiB with 100 client pods × 100 clusters (pools, outlier detection) at 1,000 rps";
    let per_client = r
        .client_state
        .iter()
        .find(|c| c.spec.upstream_state == "per-client");
    let node = r
        .client_state
        .iter()
        .find(|c| c.spec.upstream_state == "node")
        .map(|c| {
            format!(
                "; with `--upstream-state node` ({} upstream connections): peak {:.1} MiB",
                c.upstream_cx_active,
                c.peak_rss_kib as f64 / 1024.0
            )
        })
        .unwrap_or_default();
    out.push(match per_client {
        Some(c) => {
            let peak = c.peak_rss_kib as f64 / 1024.0;
            let full = c.spec.pods >= 100 && c.spec.clusters >= 100;
            Target {
                name,
                goal: goal.into(),
                value: format!(
                    "{} pods × {} clusters, {} rps, {} upstream connections pooled: peak {peak:.1} MiB, steady {:.1} MiB (idle {:.1} MiB){node}{}",
                    c.spec.pods,
                    c.spec.clusters,
                    c.rate_per_pod * u32::from(c.spec.pods),
                    c.upstream_cx_active,
                    c.steady_rss_kib as f64 / 1024.0,
                    c.idle.rss_kib as f64 / 1024.0,
                    if c.error.is_some() {
                        "; the run failed (see below)"
                    } else {
                        ""
                    }
                ),
                met: (full && c.error.is_none()).then_some(peak <= CLIENT_STATE_RSS_MIB),
            }
        }
        None => na(name, goal, "skipped (--client-state-pods 0) or failed"),
    });
    for (name, goal, limit, pick) in [
        (
            "config: one VirtualService changed -> served",
            "< 100 ms at 5,000 VS",
            ISSUE13_ONE_VS_S,
            super::config_scale::ConfigScaleResult::single_reload_median_s
                as fn(&super::config_scale::ConfigScaleResult) -> f64,
        ),
        (
            "config: every VirtualService changed -> served",
            "< 1 s at 5,000 VS",
            ISSUE13_ALL_VS_S,
            super::config_scale::ConfigScaleResult::all_vs_reload_median_s,
        ),
    ] {
        out.push(match &r.config_scale {
            Some(c) => Target {
                name,
                goal: goal.into(),
                value: format!(
                    "{} VS: {:.2} s (see Config scale below)",
                    c.virtual_services,
                    pick(c)
                ),
                met: (c.virtual_services >= 5000).then_some(pick(c) < limit),
            },
            None => na(
                name,
                goal,
                "see the config-scale report (`cargo xtask bench --config-scale`)",
            ),
        });
    }
    out
}

fn fmt(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "—".into()
    }
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "—".into()
    }
}

/// One target: what was measured against its goal.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: &'static str,
    pub goal: String,
    pub value: String,
    /// `Some(met)` when measurable.
    pub met: Option<bool>,
}

/// The issue's targets (reported, not asserted).
pub fn targets(r: &Results) -> Vec<Target> {
    let s = |w, m| r.summary(w, m);
    let mut out = Vec::new();

    // The added p50 target is issue 13's too (see `issue13_targets`).
    let max = |m| s(Workload::Http1Max, m).map(|x| x.rps);
    out.push(match (max(Mode::Keel), max(Mode::Sidecar)) {
        (Some(k), Some(sc)) => Target {
            name: "max throughput vs sidecar (http1-max)",
            goal: "keel ≥ 4× sidecar".into(),
            value: format!("{k:.0} vs {sc:.0} rps: {:.2}×", k / sc),
            met: Some(k >= 4.0 * sc),
        },
        _ => na(
            "max throughput vs sidecar (http1-max)",
            "keel ≥ 4× sidecar",
            "needs sidecar and keel",
        ),
    });
    out.push(match (max(Mode::Keel), max(Mode::NodeEnvoy)) {
        (Some(k), Some(ne)) => Target {
            name: "max throughput vs node Envoy (http1-max)",
            goal: "keel ≥ 2× node-envoy".into(),
            value: format!("{k:.0} vs {ne:.0} rps: {:.2}×", k / ne),
            met: Some(k >= 2.0 * ne),
        },
        _ => na(
            "max throughput vs node Envoy (http1-max)",
            "keel ≥ 2× node-envoy",
            "needs node-envoy and keel",
        ),
    });

    let cpu = |m| s(Workload::Http1Rate, m).map(|x| x.cpu_per_1k);
    out.push(match (cpu(Mode::Keel), cpu(Mode::Sidecar)) {
        (Some(k), Some(sc)) => Target {
            name: "proxy CPU per 1k requests (http1-rate)",
            goal: "keel ≤ 20 % of sidecars".into(),
            value: format!("{k:.4} vs {sc:.4} CPU-s: {:.0} %", k / sc * 100.0),
            met: Some(k <= 0.2 * sc),
        },
        _ => na(
            "proxy CPU per 1k requests (http1-rate)",
            "keel ≤ 20 % of sidecars",
            "needs sidecar and keel",
        ),
    });

    let mem = r
        .memory
        .iter()
        .filter(|p| p.keel_rss_kib.is_some() && p.sidecars_rss_kib.is_some())
        .max_by_key(|p| p.pods);
    out.push(match mem {
        Some(p) => {
            let k = p.keel_rss_kib.unwrap_or(0) as f64;
            let sc = p.sidecars_rss_kib.unwrap_or(0) as f64;
            Target {
                name: "memory at 100 pods",
                goal: "keel ≤ 2 % of the sidecars' total RSS".into(),
                value: format!(
                    "{} pods{}: keel {:.1} MiB vs sidecars {:.0} MiB: {:.2} %",
                    p.pods,
                    if p.pods == 100 {
                        ""
                    } else {
                        " (largest measured)"
                    },
                    k / 1024.0,
                    sc / 1024.0,
                    k / sc * 100.0
                ),
                met: (p.pods >= 100).then_some(k <= 0.02 * sc),
            }
        }
        None => na(
            "memory at 100 pods",
            "keel ≤ 2 % of the sidecars' total RSS",
            "needs the memory runs with sidecar and keel",
        ),
    });
    let config_goal =
        "load and apply < 2 s (start->ready, one-VS and all-VS reload), bounded memory";
    out.push(match &r.config_scale {
        Some(c) => Target {
            name: "config scale",
            goal: config_goal.into(),
            value: format!(
                "{}; memory bounded: {}",
                c.target_summary(),
                if c.memory_bounded() { "yes" } else { "no" }
            ),
            met: Some(c.target_met() && c.memory_bounded()),
        },
        None => na(
            "config scale",
            config_goal,
            "skipped (--config-scale-services 0) or failed",
        ),
    });
    out
}

fn na(name: &'static str, goal: &str, why: &str) -> Target {
    Target {
        name,
        goal: goal.into(),
        value: format!("not measured ({why})"),
        met: None,
    }
}

/// What each mode was configured with: the features users turn on, stated per mode.
fn config_per_mode(s: &Settings) -> String {
    let mut o = String::from(
        "## Config per mode\n\nEvery meshed mode serves the same two Services (`bench`, HTTP/1.1, and \
         `bench-h2`, h2c), each with the same VirtualService and DestinationRule, written as Istio YAML \
         for Keel and as what istiod generates for Envoy:\n\n",
    );
    let _ = writeln!(
        o,
        "- VirtualService: route policy {}.",
        s.route_policy.describe()
    );
    let _ = writeln!(
        o,
        "- DestinationRule: subsets v1 and v2 by the pods' `version` label (the routes use them); \
         traffic policy {}.\n",
        s.traffic_policy.describe()
    );
    o.push_str("| mode | routes and clusters | telemetry |\n|---|---|---|\n");
    let keel_metrics = if s.keel_no_metrics {
        "Istio metrics off (`--no-metrics`)"
    } else {
        "Istio standard metrics on (`istio_requests_total`, durations, sizes; Envoy-named stats)"
    };
    for &mode in &s.modes {
        let (routes, telemetry) = match mode {
            Mode::Direct => (
                "none: client -> backend v1's pod IP (the floor)".to_string(),
                "—".to_string(),
            ),
            Mode::Sidecar | Mode::NodeEnvoy => (
                format!(
                    "Envoy route table: {}; clusters `outbound|80|v1|…`, `outbound|80|v2|…`{}",
                    match s.route_policy {
                        super::mesh::RoutePolicy::Features => {
                            "header route to v2 first, then the weighted canary with `retry_policy` \
                             and `timeout`"
                        }
                        super::mesh::RoutePolicy::Plain => "the weighted canary",
                    },
                    match s.traffic_policy {
                        super::mesh::TrafficPolicy::PoolOutlier => {
                            " with `circuit_breakers` thresholds and `outlier_detection` from the \
                             DestinationRule"
                        }
                        super::mesh::TrafficPolicy::None => " with Istio's unlimited defaults",
                    }
                ),
                "Envoy's built-in stats (upstream Envoy has no `istio.stats` filter); access log off"
                    .to_string(),
            ),
            Mode::Keel => (
                "the YAML above; per-client pools, breakers and outlier detectors".to_string(),
                format!(
                    "{keel_metrics}; access log {}",
                    s.keel_access_log
                        .as_ref()
                        .map_or_else(|| "off".to_string(), |p| format!("`{p}`"))
                ),
            ),
            Mode::KeelAccessLog => (
                "as `keel`, on a pod network of its own (same services and backends)".to_string(),
                format!(
                    "{keel_metrics}; access log on: Istio's text format to a file in the run's \
                     work directory; every check and run requires one line per answered request"
                ),
            ),
        };
        let _ = writeln!(o, "| {} | {routes} | {telemetry} |", mode.name());
    }
    o.push('\n');
    o
}

/// `keel-access-log` against `keel`: what the access log costs.
fn access_log_cost(r: &Results) -> String {
    let mut rows = String::new();
    for w in [Workload::Http1Rate, Workload::Http1Max] {
        let (Some(k), Some(a)) = (r.summary(w, Mode::Keel), r.summary(w, Mode::KeelAccessLog))
        else {
            continue;
        };
        let pct = |x: f64, y: f64| format!("{:+.0} %", (y / x - 1.0) * 100.0);
        let _ = writeln!(
            rows,
            "| {} | {} -> {} ({}) | {} -> {} ({}) | {} -> {} ({}) | {} -> {} ({}) |",
            w.name(),
            fmt(k.latency_ms[0], 3),
            fmt(a.latency_ms[0], 3),
            pct(k.latency_ms[0], a.latency_ms[0]),
            fmt(k.latency_ms[2], 3),
            fmt(a.latency_ms[2], 3),
            pct(k.latency_ms[2], a.latency_ms[2]),
            fmt(k.rps, 0),
            fmt(a.rps, 0),
            pct(k.rps, a.rps),
            fmt(k.cpu_per_1k, 4),
            fmt(a.cpu_per_1k, 4),
            pct(k.cpu_per_1k, a.cpu_per_1k),
        );
    }
    if rows.is_empty() {
        return String::new();
    }
    format!(
        "## Access log cost\n\n`keel` -> `keel-access-log` (the same Keel with `--access-log FILE`), \
         medians over rounds. Every check and run of `keel-access-log` required the log to have grown by \
         one line per answered request.\n\n| workload | p50 ms | p99 ms | rps | proxy CPU-s / 1k req |\n\
         |---|---|---|---|---|\n{rows}\n"
    )
}

/// The Markdown report.
pub fn markdown(r: &Results) -> String {
    let m = &r.machine;
    let s = &r.settings;
    let mut o = String::new();
    let _ = writeln!(o, "# Keel data-path benchmark — {}\n", m.date_utc);
    if s.smoke {
        let _ = writeln!(
            o,
            "> **Smoke run** (`--smoke`): 1 round of {} s per run. It checks the paths and the harness; \
             its numbers are not measurements.\n",
            s.duration_s
        );
    }
    let _ = writeln!(
        o,
        "Machine: {} cores ({}), Linux {}, {} RAM. Tools: {}, {}, {}. Produced by `cargo xtask bench` \
         in {:.0} s.\n",
        m.nproc, m.cpu_model, m.kernel, m.memory, m.envoy, m.oha, m.nginx, r.elapsed_s
    );
    let keel_settings = format!(
        "{}, Istio metrics {}, access log {}",
        s.keel_workers.map_or_else(
            || "its default workers (one per core)".to_string(),
            |w| format!("`--workers {w}`")
        ),
        if s.keel_no_metrics {
            "off (`--no-metrics`)"
        } else {
            "on"
        },
        s.keel_access_log
            .as_ref()
            .map_or_else(|| "off".to_string(), |p| format!("`--access-log {p}`"))
    );
    let _ = writeln!(
        o,
        "Settings: {} interleaved round(s) (mode order rotates each round), {} s per run, medians over \
         rounds; {} connections; fixed rate {} rps; canary v1 {} % / v2 {} %; route policy {}, the same \
         routes in every meshed mode; DestinationRule traffic policy {}; backend nginx `return 200` with a {} B body; Envoy \
         `--concurrency {}`; Keel with {}.\n",
        s.rounds,
        s.duration_s,
        s.connections,
        s.rate,
        s.v1_weight,
        100 - s.v1_weight,
        s.route_policy.describe(),
        s.traffic_policy.describe(),
        s.body_bytes,
        super::envoy::CONCURRENCY,
        keel_settings
    );
    if let Some(k) = &r.keel {
        let _ = writeln!(o, "Keel binary: {}.\n", k.describe());
    }

    if !r.failures.is_empty() {
        let _ = writeln!(
            o,
            "## Failures\n\nThese paths or runs failed; their numbers are missing below.\n\n| mode | what | error |\n|---|---|---|"
        );
        for f in &r.failures {
            let _ = writeln!(
                o,
                "| {} | {} | {} |",
                f.mode.name(),
                f.what,
                f.error.replace('|', "\\|").replace('\n', " ")
            );
        }
        o.push('\n');
    }
    o.push_str(&targets_table(r));
    o.push_str(&config_per_mode(s));

    for w in Workload::ALL {
        let rows: Vec<(Mode, Summary)> = s
            .modes
            .iter()
            .filter_map(|&mode| r.summary(w, mode).map(|x| (mode, x)))
            .collect();
        if rows.is_empty() {
            continue;
        }
        let find = |mode| rows.iter().find(|(m, _)| *m == mode).map(|(_, x)| *x);
        let sidecar = find(Mode::Sidecar);
        let direct = find(Mode::Direct);
        let _ = writeln!(o, "## {}\n\n{}.\n", w.name(), w.describe(s));
        // Fixed-rate runs compare latency (their rps is the same by design); the maximum-throughput
        // run compares rps.
        let ratio_heads = if w.fixed_rate() {
            "p50 ÷ sidecar | p50 ÷ direct | p99 ÷ sidecar | p99 ÷ direct | CPU ÷ sidecar"
        } else {
            "rps ÷ sidecar | rps ÷ direct | p50 ÷ sidecar | CPU ÷ sidecar | softirq ÷ sidecar"
        };
        let _ = writeln!(
            o,
            "| mode | p50 ms | p90 ms | p99 ms | p99.9 ms | rps | proxy CPU-s / 1k req | softirq CPU-s / 1k req (machine) | proxy RSS MiB | {ratio_heads} |"
        );
        let _ = writeln!(
            o,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for (mode, x) in &rows {
            let [p50, p90, p99, p999] = x.latency_ms;
            let proxied = *mode != Mode::Direct;
            let vs = |other: Option<Summary>, f: fn(&Summary) -> f64| {
                other
                    .map(|y| ratio(f(x), f(&y)))
                    .unwrap_or_else(|| "—".into())
            };
            let cpu_vs = if proxied {
                vs(sidecar, |y| y.cpu_per_1k)
            } else {
                "—".into()
            };
            let ratios = if w.fixed_rate() {
                [
                    vs(sidecar, |y| y.latency_ms[0]),
                    vs(direct, |y| y.latency_ms[0]),
                    vs(sidecar, |y| y.latency_ms[2]),
                    vs(direct, |y| y.latency_ms[2]),
                    cpu_vs,
                ]
            } else {
                [
                    vs(sidecar, |y| y.rps),
                    vs(direct, |y| y.rps),
                    vs(sidecar, |y| y.latency_ms[0]),
                    cpu_vs,
                    vs(sidecar, |y| y.softirq_per_1k),
                ]
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                mode.name(),
                fmt(p50, 3),
                fmt(p90, 3),
                fmt(p99, 3),
                fmt(p999, 3),
                fmt(x.rps, 0),
                if proxied {
                    fmt(x.cpu_per_1k, 4)
                } else {
                    "—".into()
                },
                fmt(x.softirq_per_1k, 4),
                if proxied {
                    fmt(x.rss_mib, 1)
                } else {
                    "—".into()
                },
                ratios.join(" | "),
            );
        }
        o.push('\n');
    }

    o.push_str(&access_log_cost(r));

    if !r.memory.is_empty() {
        let _ = writeln!(o, "## Proxy memory as the node grows\n");
        let _ = writeln!(
            o,
            "N pods and N services; N sidecars (N Envoy processes, each with the config of all N services) \
             vs one node Envoy vs one Keel. Idle proxies, a few seconds after ready. RSS sums count pages shared \
             between the sidecars (Envoy's binary) once per process; PSS counts them once in total.\n"
        );
        let _ = writeln!(
            o,
            "| pods | sidecars RSS MiB | sidecars PSS MiB | node Envoy RSS MiB | Keel RSS MiB | Keel ÷ sidecars RSS |\n|---|---|---|---|---|---|"
        );
        let mib = |v: Option<u64>| {
            v.map(|k| fmt(k as f64 / 1024.0, 1))
                .unwrap_or_else(|| "—".into())
        };
        for p in &r.memory {
            let share = match (p.keel_rss_kib, p.sidecars_rss_kib) {
                (Some(k), Some(sc)) if sc > 0 => format!("{:.2} %", k as f64 / sc as f64 * 100.0),
                _ => "—".into(),
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {share} |",
                p.pods,
                mib(p.sidecars_rss_kib),
                mib(p.sidecars_pss_kib),
                mib(p.node_envoy_rss_kib),
                mib(p.keel_rss_kib)
            );
        }
        o.push('\n');
    }

    o.push_str(&super::client_state::markdown(&r.client_state));

    if let Some(c) = &r.config_scale {
        o.push_str(&super::config_scale::markdown(c));
    }

    if !r.profiles.is_empty() {
        let _ = writeln!(
            o,
            "## Where keel spends its CPU (`--profile`)\n\nOne more run of each workload after the \
             measured rounds, `perf record -F 499 --call-graph dwarf` on the keel process (not in the \
             tables above: sampling costs the proxy CPU), drawn with inferno.\n"
        );
        for p in &r.profiles {
            let _ = writeln!(o, "- {}: [{}]({})", p.workload, p.svg, p.svg);
        }
        o.push('\n');
    }

    let _ = writeln!(o, "## Path verification (before measuring)\n");
    let _ = writeln!(
        o,
        "| mode | protocol | requests | answers per backend | with the header rule's header | request counters moved by | result |\n|---|---|---|---|---|---|---|"
    );
    for v in &r.verification {
        let backends: Vec<String> = v
            .backends
            .iter()
            .map(|(b, n)| format!("{b}: {n}"))
            .collect();
        let counters: Vec<String> = v
            .counters
            .iter()
            .map(|(l, n)| format!("{l}: {n}"))
            .collect();
        let header_rule = match &v.header_rule_backends {
            Some(answers) => answers
                .iter()
                .map(|(b, n)| format!("{b}: {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            None => "— (no header rule)".into(),
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {header_rule} | {} | {} |",
            v.mode.name(),
            v.protocol,
            v.requests,
            backends.join(", "),
            if counters.is_empty() {
                "— (no proxy)".into()
            } else {
                counters.join("; ")
            },
            if v.error.is_some() {
                "FAILED (see Failures)"
            } else {
                "ok"
            }
        );
    }
    o.push('\n');
    let _ = writeln!(o, "{}", METHOD);
    o
}

const METHOD: &str = "## How it was measured

- Every mode gets its own client pod (netns + cgroup) on the same bridge, so each mode's capture (iptables
  in the client netns, or Keel's eBPF on the pod cgroup root, which only the keel client is under) touches
  only its own traffic. All modes' proxies stay up for the whole run; modes are interleaved within each round.
- Load: oha inside the client pod (one worker thread for fixed-rate runs, its default for `http1-max`). Fixed-rate runs use `-q` with `--latency-correction`
  (coordinated omission), so latency includes time a request waited to be sent.
- `direct` sends to backend v1's pod IP; the meshed modes send to the Service VIP (the canary spreads
  requests over v1 and v2). Under the `features` route policy the load never sends the header rule's
  header, so every request is checked against that rule and falls through to the canary; the path check
  sends it too and expects only v2.
- Proxy CPU: `utime + stime` from `/proc/<pid>/stat` of every proxy process of the mode (all threads),
  before and after each run. Softirq: machine-wide `softirq` of `/proc/stat`, which the kernel charges to
  no process (packet processing on veth/bridge/TCP); clients and backends contribute alike in every mode,
  so a mode's excess over `direct` is what its extra hops cost the kernel. Keel's eBPF programs run in the
  client's connect() and are charged to the client, not to Keel.
- Memory: VmRSS of the mode's proxy processes after each run (median over rounds).
- Every run checks that the proxies' request counters (Envoy `cluster.*.upstream_rq_total`, Keel
  `/stats` `keel.http_requests`) moved by the number of requests oha completed, and that all answers were 200.
- `keel-access-log` is a second Keel (one Keel captures its whole cgroup root) on a pod network of its
  own with the same services, backends and client layout; its access log goes to a file, and each of its
  checks and runs also requires the file to have grown by one line per answered request (and by no
  more than Keel counted: requests oha cuts off at the end of a run before their response started are
  counted by Keel but not logged).
- Per-client state: N client pods under Keel's root, M Services each with its own nginx-backed cluster;
  every client opens a new connection per request and cycles over all M services, so Keel builds state
  for all N × M (client, cluster) pairs in the first M / (rate / N) seconds and holds it for the rest of
  the run. Keel's VmRSS is sampled every 250 ms; peak is the largest sample, steady the median of the
  last third of the load.
";

/// The machine facts that need no bench tool: cores, CPU model, kernel, memory.
pub fn machine_basics() -> serde_json::Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let meminfo = read("/proc/meminfo");
    serde_json::json!({
        "date_utc": utc_date(),
        "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "cpu_model": cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_string())
            .unwrap_or_default(),
        "memory_kib": meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok()),
    })
}

/// [`machine_basics`] as one Markdown line.
pub fn machine_line() -> String {
    let m = machine_basics();
    format!(
        "Machine: {} cores ({}), Linux {}, {:.1} GiB RAM. Produced by `cargo xtask bench --config-scale`.\n",
        m["nproc"],
        m["cpu_model"].as_str().unwrap_or("unknown"),
        m["kernel"].as_str().unwrap_or("unknown"),
        m["memory_kib"].as_u64().unwrap_or(0) as f64 / 1024.0 / 1024.0
    )
}

/// Today's UTC date, `YYYY-MM-DD` (civil-from-days, no time zone database needed).
pub fn utc_date() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, m, d) = civil_from_days(i64::try_from(secs / 86_400).unwrap_or(0));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![f64::NAN]).is_nan());
    }
}
