//! `cargo xtask fuzz [--target T] [--seconds N]`: runs the cargo-fuzz targets of `fuzz/` for a
//! bounded time each, with libFuzzer's memory limits, and prints the executions per target.
//!
//! New inputs go to `fuzz/new/<target>/` (not committed); the seeds in `fuzz/corpus/<target>/` are
//! read, never written. A crash is copied into `fuzz/corpus/<target>/` so that `cargo test`
//! (`keel::fuzzing` replays the corpus) fails on it until it is fixed, and the run fails.
//! Built without a sanitizer (`-s none`): Keel is safe Rust, and the coverage-guided run is what
//! finds panics and unbounded work; that keeps the build a few minutes on the 2-core machine.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The targets (as `keel::fuzzing::TARGETS`).
pub const TARGETS: &[&str] = &["config", "router", "http1", "kernel_record"];
/// libFuzzer's cap on the process's RSS.
const RSS_LIMIT_MB: u32 = 2048;
/// libFuzzer's cap on one allocation.
const MALLOC_LIMIT_MB: u32 = 512;

/// What one target's run did.
#[derive(Debug)]
pub struct FuzzRun {
    pub target: String,
    pub executions: u64,
    pub corpus_added: usize,
    pub crashes: Vec<String>,
}

/// Runs `target` (or every target) for `seconds` each; fails if any crashed.
pub fn run(root: &Path, target: Option<&str>, seconds: u64) -> Result<Vec<FuzzRun>> {
    let targets: Vec<&str> = match target {
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => bail!("unknown fuzz target {t:?}; targets: {}", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    let fuzz_dir = root.join("fuzz");
    let mut runs = Vec::new();
    for t in targets {
        let new = fuzz_dir.join("new").join(t);
        std::fs::create_dir_all(&new)?;
        let seeds = fuzz_dir.join("corpus").join(t);
        let artifacts = fuzz_dir.join("artifacts").join(t);
        std::fs::create_dir_all(&artifacts)?;
        let before = std::fs::read_dir(&new)?.count();
        let known: Vec<_> = list(&artifacts)?;
        note!("xtask fuzz: {t} for {seconds} s");
        let out = Command::new("cargo")
            .current_dir(root)
            .args(["+nightly", "fuzz", "run", "--fuzz-dir"])
            .arg(&fuzz_dir)
            .args(["-s", "none", t])
            .arg(&new)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
            .arg(format!("-malloc_limit_mb={MALLOC_LIMIT_MB}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .args(["-timeout=20", "-print_final_stats=1"])
            .output()
            .context("running cargo +nightly fuzz (cargo xtask setup installs cargo-fuzz)")?;
        let log = String::from_utf8_lossy(&out.stderr);
        let executions = log
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let crashes: Vec<String> = list(&artifacts)?
            .into_iter()
            .filter(|a| !known.contains(a))
            .collect();
        for c in &crashes {
            // The crash becomes a corpus file: `cargo test` replays it until it is fixed.
            std::fs::copy(artifacts.join(c), seeds.join(c))?;
        }
        if !out.status.success() && crashes.is_empty() {
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("cargo fuzz run {t} failed:\n{}", tail.join("\n"));
        }
        let corpus_added = std::fs::read_dir(&new)?.count().saturating_sub(before);
        note!("xtask fuzz: {t}: {executions} executions, {corpus_added} new corpus inputs, {} crashes", crashes.len());
        runs.push(FuzzRun {
            target: t.to_string(),
            executions,
            corpus_added,
            crashes,
        });
    }
    say!(
        "{:<14} {:>12} {:>10} {:>8}",
        "target",
        "executions",
        "new inputs",
        "crashes"
    );
    for r in &runs {
        say!(
            "{:<14} {:>12} {:>10} {:>8}",
            r.target,
            r.executions,
            r.corpus_added,
            r.crashes.len()
        );
    }
    let crashed: Vec<&str> = runs
        .iter()
        .filter(|r| !r.crashes.is_empty())
        .map(|r| r.target.as_str())
        .collect();
    if !crashed.is_empty() {
        bail!(
            "fuzzing found crashes in {} (copied into fuzz/corpus/<target>/; `cargo test -p proxy-user fuzzing` replays them)",
            crashed.join(", ")
        );
    }
    Ok(runs)
}

fn list(dir: &Path) -> Result<Vec<String>> {
    Ok(std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect())
}
