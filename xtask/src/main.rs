//! `cargo xtask`: Keel's developer commands.
//!
//! | command | what it does |
//! |---|---|
//! | `setup` | installs the eBPF toolchain and kubectl if missing (idempotent: a second run installs nothing) |
//! | `build` | setup, then the release binaries `keel` and `pod-agent` |
//! | `test` | setup, build, fmt, clippy, unit tests, then the privileged e2e tests (root only) |
//! | `demo [--keep]` | the Bookinfo-style demo of `config/demo` on a real pod network, through keel |
//! | `bench` | keel against Envoy sidecars and a node Envoy on one pod network |
//! | `chaos` | the reliability scenarios (`chaos_*` e2e tests) at full size, and a table of their figures |
//! | `fuzz [--target T] [--seconds N]` | runs the cargo-fuzz targets of `fuzz/` for N seconds each; prints executions |
//! | `cleanup` | removes pod networks left behind by crashed runs |
//!
//! Privilege is scoped here: only `test` (its e2e part), `demo`, `bench`, `chaos` and `cleanup` need root, and
//! they say so instead of failing half-way.

/// `println!` that never panics. Ctrl-C reaches every process of a pipeline, so with
/// `cargo xtask demo | tee log` the reader may be gone while the demo still cleans up: the line is
/// lost, the cleanup goes on.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that never panics (see `say!`).
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod bench;
mod chaos;
mod demo;
mod fuzz;
mod setup;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Keel's developer commands")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the eBPF toolchain (rust-src, LLVM 22, bpf-linker, bpftool, iproute2, iptables) and
    /// kubectl if missing.
    Setup,
    /// Run the cargo-fuzz targets (fuzz/) for a bounded time each and print executions per target;
    /// a crash is added to the corpus (replayed by `cargo test`) and fails the run.
    Fuzz {
        /// One target (config, router, http1, kernel_record); default: all.
        #[arg(long)]
        target: Option<String>,
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Setup, then build the release binaries (keel, pod-agent).
    Build,
    /// Setup, build, fmt, clippy, unit tests, then the privileged e2e tests (must run as root).
    Test {
        /// Only run e2e tests whose name contains this filter (passed to the test binaries).
        #[arg(long)]
        e2e_filter: Option<String>,
    },
    /// Run the demo mesh of config/demo through keel and show the canary split.
    Demo(demo::DemoArgs),
    /// Benchmark keel against the data paths it replaces.
    Bench(bench::BenchArgs),
    /// Run the reliability scenarios (`chaos_*` e2e tests) at full size and print their figures.
    Chaos(chaos::ChaosArgs),
    /// Remove pod networks, cgroups and routes left behind by crashed test or demo runs.
    Cleanup,
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line, each cause once (no `Caused by:` list, no backtrace dump).
            note!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Setup => setup::run(),
        Cmd::Fuzz { target, seconds } => setup::run()
            .and_then(|()| fuzz::run(&workspace_root(), target.as_deref(), seconds))
            .map(|_| ()),
        Cmd::Build => build().map(|_| ()),
        Cmd::Test { e2e_filter } => test(e2e_filter.as_deref()),
        Cmd::Demo(args) => demo::run(&args),
        Cmd::Bench(args) => {
            build()?;
            bench::run(args)
        }
        Cmd::Chaos(args) => {
            let bins = build()?;
            chaos::run(&args, &bins)
        }
        Cmd::Cleanup => cleanup(),
    }
}

/// The workspace root (xtask lives in `<root>/xtask`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `cargo` as invoked by `cargo xtask` (`CARGO`), else from PATH.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    // `cargo run` gave this process xtask's own package variables. Build scripts that watch them
    // (ring's does, via `rerun-if-env-changed`) would see them differ from a cargo run by hand and
    // rebuild ring, rustls, kube and keel each time the two alternate.
    for (name, _) in std::env::vars_os() {
        let is_package_var = name.to_str().is_some_and(|n| {
            n.starts_with("CARGO_PKG_")
                || matches!(
                    n,
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_MANIFEST_LINKS"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_BIN_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "OUT_DIR"
                )
        });
        if is_package_var {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Runs `cmd`, echoing it first; fails with the command line if it does not exit 0.
pub fn run_step(mut cmd: Command) -> Result<()> {
    let shown = format!("{cmd:?}").replace('"', "");
    note!("xtask: $ {shown}");
    let status = cmd.status().with_context(|| format!("spawning {shown}"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Cargo's target directory, as `cargo metadata` reports it (honours `CARGO_TARGET_DIR` and config).
fn target_dir() -> Result<PathBuf> {
    let out = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
    v["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata has no target_directory")
}

/// Paths of the release binaries that `build` produces.
pub struct Binaries {
    /// `keel`.
    pub keel: PathBuf,
    /// `pod-agent`.
    pub pod_agent: PathBuf,
}

fn build() -> Result<Binaries> {
    build_bins(true)
}

/// Setup, then the release binaries; `with_keel: false` builds only `pod-agent` (for runs that do
/// not start keel, e.g. `demo --without-keel`).
fn build_bins(with_keel: bool) -> Result<Binaries> {
    setup::run()?;
    let mut cmd = cargo();
    cmd.args(["build", "--release"]);
    if with_keel {
        cmd.args(["-p", "proxy-user"]);
    }
    cmd.args(["-p", "keel-tests", "--bins"]);
    run_step(cmd)?;
    let release = target_dir()?.join("release");
    Ok(Binaries {
        keel: release.join("keel"),
        pod_agent: release.join("pod-agent"),
    })
}

/// Prefixes the e2e tests, the demo and the bench give their pod networks (see each file).
const TEST_NET_NOTE: &str =
    "e2e tests use subnet indices 10..=199, 210..=219 (kube.rs: 198, 199, 210..=214; tenancy.rs: 215, 216; ipv6.rs: 217..=219), 220..=229 (upgrade.rs: 220..=222; under_faults.rs: 223..=229), 230..=239 (request_hygiene.rs), 240..=249 (bounds.rs: 240..=245) and 250..=259 (redirect.rs) (one range per test file), the demo 0, the bench 200..=202, exclusions.rs 203..=209";

fn test(e2e_filter: Option<&str>) -> Result<()> {
    // Fail before doing anything slow: the e2e part cannot run without root, and skipping it would
    // report a green run that tested nothing that matters.
    keel_tests::host::require_root()
        .context("`cargo xtask test` runs privileged e2e tests and must run as root")?;
    let bins = build()?;

    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);
    run_step(fmt)?;

    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        // proxy-ebpf only builds for the BPF target; proxy-user's build.rs compiles it there.
        "--exclude",
        "proxy-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    run_step(clippy)?;

    let mut unit = cargo();
    unit.args([
        "test",
        "--workspace",
        "--exclude",
        "keel-tests",
        "--exclude",
        "proxy-ebpf",
    ]);
    run_step(unit)?;

    // Leftovers of an earlier crashed run would make the e2e tests' networks fail to build.
    for line in keel_tests::cleanup_all_stale()? {
        note!("xtask: stale pod network cleaned: {line}");
    }
    note!("xtask: privileged e2e tests ({TEST_NET_NOTE})");
    run_step(e2e_tests(&bins, e2e_filter))?;

    // The benchmark harness in its short form: every data path (direct, Envoy sidecars, node Envoy,
    // keel, keel with its access log) must verify, the per-client state run (10 pods x 10 clusters)
    // must serve every request, and a report must come out. Correctness only; speed is not judged.
    if e2e_filter.is_none() {
        note!("xtask: demo smoke (demo --keep piped, demo shell, Ctrl-C cleanup)");
        demo::smoke(&bins).context("demo smoke")?;

        note!("xtask: bench --smoke (harness and data paths, no speed assertions)");
        let out = std::env::temp_dir().join(format!("keel-bench-smoke-{}", std::process::id()));
        let parsed = Cli::try_parse_from([
            "cargo xtask",
            "bench",
            "--smoke",
            "--traffic-policy",
            "pool-outlier",
            "--out",
            &out.display().to_string(),
        ])
        .context("bench --smoke arguments")?;
        let Cmd::Bench(args) = parsed.cmd else {
            bail!("bench --smoke did not parse as the bench command");
        };
        bench::run(args).context("bench --smoke")?;
        let _ = std::fs::remove_dir_all(&out);

        note!("xtask: bench --upstream-memory, small (per-client upstream state is measurable)");
        let parsed = Cli::try_parse_from([
            "cargo xtask",
            "bench",
            "--upstream-memory",
            "--upstream-clients",
            "10",
            "--upstream-clusters",
            "10",
            "--out",
            &out.display().to_string(),
        ])
        .context("bench --upstream-memory arguments")?;
        let Cmd::Bench(args) = parsed.cmd else {
            bail!("bench --upstream-memory did not parse as the bench command");
        };
        bench::run(args).context("bench --upstream-memory")?;
        let _ = std::fs::remove_dir_all(&out);
    }
    note!("xtask: all checks passed");
    Ok(())
}

/// The privileged e2e tests of `tests/tests` (only those whose name contains `filter`, if given),
/// run against the release binaries `bins`. Every file runs, including apiserver.rs (the stand-in
/// Kubernetes API server driven by the real kubectl; it needs no root, only kubectl from `setup`).
/// --no-fail-fast: one failing file must not hide the results of the others. One test at a time:
/// the weighted-split and lifecycle checks compare counts and bpffs contents that a concurrent keel
/// could disturb, and the machine has two cores.
pub fn e2e_tests(bins: &Binaries, filter: Option<&str>) -> Command {
    let mut e2e = cargo();
    e2e.args([
        "test",
        "--release",
        "--no-fail-fast",
        "-p",
        "keel-tests",
        "--",
        "--test-threads=1",
    ])
    .env("KEEL_BIN", &bins.keel)
    .env("POD_AGENT_BIN", &bins.pod_agent);
    if let Some(f) = filter {
        e2e.arg(f);
    }
    e2e
}

fn cleanup() -> Result<()> {
    keel_tests::host::require_root().context("`cargo xtask cleanup` needs root")?;
    let report = keel_tests::cleanup_all_stale()?;
    if report.is_empty() {
        note!("xtask: nothing to clean up");
    }
    for line in report {
        note!("xtask: {line}");
    }
    Ok(())
}
