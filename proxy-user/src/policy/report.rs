//! `keel validate`: human and JSON renderings of a [`LoadReport`].

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;

use super::convert::{load_paths, LoadReport};
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
    /// What was validated: the paths given, joined with `, `.
    pub dir: String,
    /// No errors (and, with `--strict`, no warnings).
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
    pub fn new(what: &str, report: &'a LoadReport, strict: bool) -> Self {
        JsonReport {
            dir: what.to_string(),
            valid: passes(report, strict),
            counts: Counts::of(report),
            ignored: report.ignored,
            errors: &report.errors,
            warnings: &report.warnings,
        }
    }
}

/// Whether `keel validate` passes: no errors, and with `strict` no warnings either (as `istioctl analyze`
/// fails on what it reports).
pub fn passes(report: &LoadReport, strict: bool) -> bool {
    report.is_valid() && (!strict || report.warnings.is_empty())
}

/// Writes the human-readable report: errors and warnings one per line, then a verdict.
pub fn write_text(
    out: &mut dyn Write,
    what: &str,
    report: &LoadReport,
    strict: bool,
) -> std::io::Result<()> {
    for e in &report.errors {
        writeln!(out, "{e}")?;
    }
    for w in &report.warnings {
        writeln!(out, "{w}")?;
    }
    let dir = what;
    if passes(report, strict) {
        writeln!(out, "{dir} is valid: {}", summary(report))?;
    } else if report.is_valid() {
        writeln!(
            out,
            "{dir} is invalid with --strict: {} (loaded anyway: {})",
            plural(report.warnings.len(), "warning", "warnings"),
            summary(report)
        )?;
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

/// The body of `keel validate PATH... [--format json] [--strict]`: loads the files and directories,
/// prints the report to stdout and returns whether it passes (the caller maps `false` to a non-zero exit
/// status).
pub fn run_validate(paths: &[PathBuf], json: bool, strict: bool) -> anyhow::Result<bool> {
    let report = load_paths(paths)?;
    let what = paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &JsonReport::new(&what, &report, strict))?;
        writeln!(out)?;
    } else {
        write_text(&mut out, &what, &report, strict)?;
    }
    Ok(passes(&report, strict))
}
