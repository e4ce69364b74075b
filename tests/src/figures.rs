//! Figures that the reliability tests measure (time to fail open, failed connections during a
//! restart, vectors forwarded ambiguously, memory under an attack, …), for `cargo xtask chaos`.
//!
//! A test asserts its own targets; it also records what it measured here, so that the chaos run can
//! print the numbers. Each [`record`] appends one JSON line to the file named by `KEEL_FIGURES`;
//! without that variable (a plain `cargo xtask test`) nothing is written.
//!
//! [`level`] tells a test how hard to push: `cargo xtask chaos` sets `KEEL_CHAOS=full` for the long
//! runs (more cycles, more load, longer attacks); the test command runs the same tests as smoke runs.

use std::io::Write;

/// How hard a reliability scenario pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// The short form that `cargo xtask test` runs: same checks, fewer cycles and less load.
    Smoke,
    /// `cargo xtask chaos`: the sizes the reliability targets name.
    Full,
}

/// The level this run asks for (`KEEL_CHAOS=full`, else smoke).
pub fn level() -> Level {
    match std::env::var("KEEL_CHAOS").as_deref() {
        Ok("full") => Level::Full,
        _ => Level::Smoke,
    }
}

/// Picks `smoke` or `full` by [`level`].
pub fn sized<T>(smoke: T, full: T) -> T {
    match level() {
        Level::Smoke => smoke,
        Level::Full => full,
    }
}

/// One measured figure: `scenario` groups them (e.g. "A2 rolling restart"), `name` says what was
/// measured ("failed new connections"), `unit` how ("count", "ms", "KiB", "rps").
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Figure {
    pub scenario: String,
    pub name: String,
    pub value: f64,
    pub unit: String,
}

/// Appends a figure to `$KEEL_FIGURES` (one JSON line). Failing to write is reported on stderr and
/// otherwise ignored: a figure is a report, the test's assertions are the judge.
pub fn record(scenario: &str, name: &str, value: f64, unit: &str) {
    let Some(path) = std::env::var_os("KEEL_FIGURES") else {
        return;
    };
    let figure = Figure {
        scenario: scenario.to_string(),
        name: name.to_string(),
        value,
        unit: unit.to_string(),
    };
    let written = serde_json::to_string(&figure)
        .map_err(std::io::Error::other)
        .and_then(|line| {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            writeln!(file, "{line}")
        });
    if let Err(e) = written {
        eprintln!("figures: cannot record {scenario}/{name}: {e}");
    }
}

/// Reads back every figure of a `KEEL_FIGURES` file (lines that do not parse are skipped).
pub fn read(path: &std::path::Path) -> std::io::Result<Vec<Figure>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect())
}
