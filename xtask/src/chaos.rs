//! `cargo xtask chaos`: the reliability scenarios at full size, then a table of what they measured.
//!
//! The scenarios are the e2e tests named `chaos_<id>_…` (ids of `shared/reference/reliability-tests.md`:
//! restarts, fail-open, floods, smuggling vectors, …). `cargo xtask test` runs the same tests in their
//! smoke size; here `KEEL_CHAOS=full` makes them push as hard as the targets name, and each test
//! appends its figures to `KEEL_FIGURES` (see `keel_tests::figures`). The run prints every figure,
//! grouped by scenario, and writes them to `<out>/figures.json` and `<out>/figures.md`.
//!
//! A scenario that misses its target fails its test: the run still prints all figures, then fails.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use keel_tests::figures::{self, Figure};

#[derive(Args)]
pub struct ChaosArgs {
    /// Only run scenarios whose test name contains this (after `chaos_`, e.g. `a2` or `e1_`).
    #[arg(long)]
    pub only: Option<String>,
    /// Where the figures go (default: `<target>/chaos`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Smoke sizes instead of full ones (the sizes `cargo xtask test` uses).
    #[arg(long)]
    pub smoke: bool,
}

pub fn run(args: &ChaosArgs, bins: &crate::Binaries) -> Result<()> {
    keel_tests::host::require_root().context("`cargo xtask chaos` needs root")?;
    let out = match &args.out {
        Some(dir) => dir.clone(),
        None => crate::target_dir()?.join("chaos"),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let figures_path = out.join("figures.jsonl");
    // A fresh file: figures of an earlier run must not mix into this one's report.
    let _ = std::fs::remove_file(&figures_path);

    for line in keel_tests::cleanup_all_stale()? {
        note!("xtask: stale pod network cleaned: {line}");
    }
    let filter = match &args.only {
        Some(only) => format!("chaos_{}", only.trim_start_matches("chaos_")),
        None => "chaos_".to_string(),
    };
    let mut tests = crate::e2e_tests(bins, Some(&filter));
    tests
        .env("KEEL_FIGURES", &figures_path)
        .env("KEEL_CHAOS", if args.smoke { "smoke" } else { "full" });
    let started = std::time::Instant::now();
    let outcome = crate::run_step(tests);

    let measured = if figures_path.exists() {
        figures::read(&figures_path)
            .with_context(|| format!("reading {}", figures_path.display()))?
    } else {
        Vec::new()
    };
    let table = render(&measured);
    say!("{table}");
    say!(
        "xtask chaos: {} figures from {} scenarios in {:.0?}; {}",
        measured.len(),
        by_scenario(&measured).len(),
        started.elapsed(),
        match &outcome {
            Ok(()) => "every scenario met its targets".to_string(),
            Err(_) => "SOME SCENARIOS FAILED (see the test output above)".to_string(),
        }
    );
    std::fs::write(out.join("figures.md"), &table).context("writing figures.md")?;
    std::fs::write(
        out.join("figures.json"),
        serde_json::to_string_pretty(&measured).context("encoding figures")?,
    )
    .context("writing figures.json")?;
    note!("xtask chaos: figures in {}", out.display());
    outcome.context("chaos scenarios")
}

fn by_scenario(measured: &[Figure]) -> BTreeMap<&str, Vec<&Figure>> {
    let mut groups: BTreeMap<&str, Vec<&Figure>> = BTreeMap::new();
    for f in measured {
        groups.entry(f.scenario.as_str()).or_default().push(f);
    }
    groups
}

/// A Markdown table per scenario, figures in the order they were recorded.
fn render(measured: &[Figure]) -> String {
    let mut text = String::from("# cargo xtask chaos: figures\n");
    if measured.is_empty() {
        text.push_str("\n(no figures were recorded)\n");
    }
    for (scenario, figures) in by_scenario(measured) {
        text.push_str(&format!(
            "\n## {scenario}\n\n| figure | value | unit |\n|---|---:|---|\n"
        ));
        for f in figures {
            text.push_str(&format!(
                "| {} | {} | {} |\n",
                f.name,
                number(f.value),
                f.unit
            ));
        }
    }
    text
}

/// Integers without a fraction, others with up to three decimals.
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(scenario: &str, name: &str, value: f64) -> Figure {
        Figure {
            scenario: scenario.into(),
            name: name.into(),
            value,
            unit: "count".into(),
        }
    }

    #[test]
    fn table_groups_by_scenario_in_recorded_order() {
        let text = render(&[
            fig("B", "second", 2.0),
            fig("A", "only", 0.25),
            fig("B", "first", 1.0),
        ]);
        let a = text.find("## A").expect("scenario A");
        let b = text.find("## B").expect("scenario B");
        assert!(a < b, "{text}");
        assert!(text.contains("| only | 0.250 | count |"), "{text}");
        let second = text.find("| second | 2 |").expect("second");
        let first = text.find("| first | 1 |").expect("first");
        assert!(second < first, "{text}");
    }
}
