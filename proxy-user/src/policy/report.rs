//! `keel validate`: human and JSON renderings of a [`LoadReport`].

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use super::convert::{load_dir, LoadReport};
use super::error::{ConfigError, ConfigWarning};

/// Counts of what a snapshot holds, for the one-line success message and JSON output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Counts {
    /// Kubernetes Services.
    pub services: usize,
    /// Pods.
    pub pods: usize,
    /// VirtualServices.
    pub virtual_services: usize,
    /// DestinationRules.
    pub destination_rules: usize,
    /// ServiceEntries.
    pub service_entries: usize,
    /// Sidecars.
    pub sidecars: usize,
    /// Gateways.
    pub gateways: usize,
}

impl Counts {
    /// Counts the resources in `report`'s snapshot.
    pub fn of(report: &LoadReport) -> Counts {
        let s = &report.snapshot;
        Counts {
            services: s.services.len(),
            pods: s.pods.len(),
            virtual_services: s.virtual_services.len(),
            destination_rules: s.destination_rules.len(),
            service_entries: s.service_entries.len(),
            sidecars: s.sidecars.len(),
            gateways: s.gateways.len(),
        }
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// One line describing what loaded, e.g. `6 services, 8 pods, 3 virtual services, 2 destination rules`.
/// Kinds with zero resources beyond the first four are left out.
pub fn summary(report: &LoadReport) -> String {
    let c = Counts::of(report);
    let mut parts = vec![
        plural(c.services, "service", "services"),
        plural(c.pods, "pod", "pods"),
        plural(c.virtual_services, "virtual service", "virtual services"),
        plural(c.destination_rules, "destination rule", "destination rules"),
    ];
    if c.service_entries > 0 {
        parts.push(plural(
            c.service_entries,
            "service entry",
            "service entries",
        ));
    }
    if c.sidecars > 0 {
        parts.push(plural(c.sidecars, "sidecar", "sidecars"));
    }
    if c.gateways > 0 {
        parts.push(plural(c.gateways, "gateway", "gateways"));
    }
    parts.join(", ")
}

/// The `--format json` document.
#[derive(Debug, Serialize)]
pub struct JsonReport<'a> {
    /// The directory that was validated.
    pub dir: String,
    /// No errors.
    pub valid: bool,
    /// What loaded.
    pub counts: Counts,
    /// Documents of kinds Keel does not read.
    pub ignored: usize,
    /// Rejections.
    pub errors: &'a [ConfigError],
    /// Warnings.
    pub warnings: &'a [ConfigWarning],
}

impl<'a> JsonReport<'a> {
    /// Builds the JSON view of `report`.
    pub fn new(dir: &Path, report: &'a LoadReport) -> Self {
        JsonReport {
            dir: dir.display().to_string(),
            valid: report.is_valid(),
            counts: Counts::of(report),
            ignored: report.ignored,
            errors: &report.errors,
            warnings: &report.warnings,
        }
    }
}

/// Writes the human-readable report: errors and warnings one per line, then a verdict.
pub fn write_text(out: &mut dyn Write, dir: &Path, report: &LoadReport) -> std::io::Result<()> {
    for e in &report.errors {
        writeln!(out, "{e}")?;
    }
    for w in &report.warnings {
        writeln!(out, "{w}")?;
    }
    let dir = dir.display();
    if report.is_valid() {
        writeln!(out, "{dir} is valid: {}", summary(report))?;
    } else {
        writeln!(
            out,
            "{dir} is invalid: {} (loaded anyway: {})",
            plural(report.errors.len(), "error", "errors"),
            summary(report)
        )?;
    }
    Ok(())
}

/// The body of `keel validate DIR [--format json]`: loads `dir`, prints the report to stdout and returns
/// whether the config is valid (the caller maps `false` to a non-zero exit status).
pub fn run_validate(dir: &Path, json: bool) -> anyhow::Result<bool> {
    let report = load_dir(dir)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &JsonReport::new(dir, &report))?;
        writeln!(out)?;
    } else {
        write_text(&mut out, dir, &report)?;
    }
    Ok(report.is_valid())
}
