//! The config corpus in `config/testdata/`: one directory per sample, loaded with `keel::policy::load_dir`
//! exactly as `keel validate DIR` loads it.
//!
//! - `valid/<sample>/`: must load with no errors. Its warnings must be exactly the ones listed in
//!   `expected-warnings.txt` (no file = no warnings).
//! - `invalid/<sample>/`: `expected.txt` lists the expected errors, one block per error, blocks separated by
//!   blank lines. Each line of a block is a fragment (file name, `KIND ns/name`, `field:`, reason); all
//!   fragments of a block must occur in one line of `keel validate` output, and the sample must produce
//!   exactly as many errors as there are blocks. An `expected-warnings.txt` next to it lists warnings that
//!   must be reported too. Lines starting with `#` are comments.
//!
//! Coverage is checked as well: every kind Keel reads has valid and invalid samples, and every error code
//! (`Invalid::code`) is produced by some invalid sample.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use keel::policy::{self, LoadReport};

/// Every kind Keel reads; each needs at least one valid and one invalid sample.
const KINDS: &[&str] = &[
    "VirtualService",
    "DestinationRule",
    "ServiceEntry",
    "Sidecar",
    "Gateway",
    "Service",
    "Pod",
    "EndpointSlice",
    "Namespace",
    "MeshConfig",
];

/// Every `Invalid::code()`; each must be produced by at least one invalid sample.
const CODES: &[&str] = &[
    "InvalidDocument",
    "InvalidName",
    "InvalidHost",
    "InvalidDuration",
    "InvalidStringMatch",
    "InvalidWeight",
    "InvalidPort",
    "InvalidHeader",
    "InvalidHttpRoute",
    "InvalidL4Route",
    "InvalidTrafficPolicy",
    "InvalidExportTo",
    "InvalidAddress",
    "InvalidEnum",
    "Unsupported",
    "Invalid",
];

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config")
}

struct Sample {
    name: String,
    dir: PathBuf,
    report: LoadReport,
    /// The `kind:` of every document in the sample's YAML files.
    kinds: BTreeSet<String>,
}

impl Sample {
    fn errors(&self) -> Vec<String> {
        self.report.errors.iter().map(|e| e.to_string()).collect()
    }

    fn warnings(&self) -> Vec<String> {
        self.report.warnings.iter().map(|w| w.to_string()).collect()
    }

    /// Kinds of the resources that were rejected.
    fn rejected_kinds(&self) -> BTreeSet<String> {
        self.report
            .errors
            .iter()
            .map(|e| e.at.kind.clone())
            .filter(|k| self.kinds.contains(k))
            .collect()
    }
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
}

/// The top-level `kind:` of every document.
fn yaml_kinds(dir: &Path) -> BTreeSet<String> {
    let mut kinds = BTreeSet::new();
    for f in yaml_files(dir) {
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for line in text.lines() {
            if let Some(k) = line.strip_prefix("kind:") {
                kinds.insert(k.trim().to_string());
            }
        }
    }
    kinds
}

/// Every sample of `class` (`valid` or `invalid`), loaded.
fn samples(class: &str) -> Vec<Sample> {
    let root = config_dir().join("testdata").join(class);
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|dir| {
            let report = policy::load_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
            Sample {
                name: dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_string(),
                kinds: yaml_kinds(&dir),
                dir,
                report,
            }
        })
        .collect()
}

/// Blocks of fragments from an expectation file (absent = none).
fn expectations(path: &Path) -> Vec<Vec<String>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut blocks = Vec::new();
    let mut block: Vec<String> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        if line.is_empty() {
            if !block.is_empty() {
                blocks.push(std::mem::take(&mut block));
            }
            continue;
        }
        block.push(line.to_string());
    }
    if !block.is_empty() {
        blocks.push(block);
    }
    blocks
}

/// Matches each block against a distinct line containing all its fragments; with `exact`, there must be
/// no lines left over. Returns what did not match.
fn unmatched(lines: &[String], blocks: &[Vec<String>], exact: bool) -> Vec<String> {
    let mut used = vec![false; lines.len()];
    let mut problems = Vec::new();
    for block in blocks {
        let found = lines
            .iter()
            .enumerate()
            .find(|(i, l)| !used[*i] && block.iter().all(|f| l.contains(f.as_str())));
        match found {
            Some((i, _)) => used[i] = true,
            None => problems.push(format!("no line matches {block:?}")),
        }
    }
    if exact {
        for (line, used) in lines.iter().zip(&used) {
            if !used {
                problems.push(format!("unexpected: {line}"));
            }
        }
    }
    problems
}

#[test]
fn valid_samples_load_without_errors() {
    let samples = samples("valid");
    assert!(samples.len() >= 40, "only {} valid samples", samples.len());
    let mut failures = Vec::new();
    for s in &samples {
        for e in s.errors() {
            failures.push(format!("{}: error: {e}", s.name));
        }
        let want = expectations(&s.dir.join("expected-warnings.txt"));
        for p in unmatched(&s.warnings(), &want, true) {
            failures.push(format!("{}: warning {p}", s.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn invalid_samples_report_the_expected_errors() {
    let samples = samples("invalid");
    assert!(
        samples.len() >= 200,
        "only {} invalid samples",
        samples.len()
    );
    let mut failures = Vec::new();
    for s in &samples {
        let want = expectations(&s.dir.join("expected.txt"));
        if want.is_empty() {
            failures.push(format!("{}: expected.txt is missing or empty", s.name));
            continue;
        }
        for p in unmatched(&s.errors(), &want, true) {
            failures.push(format!("{}: error {p}", s.name));
        }
        let want = expectations(&s.dir.join("expected-warnings.txt"));
        for p in unmatched(&s.warnings(), &want, false) {
            failures.push(format!("{}: warning {p}", s.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_kind_has_valid_and_invalid_samples() {
    let mut valid: BTreeMap<String, usize> = BTreeMap::new();
    for s in samples("valid") {
        for k in s.kinds {
            *valid.entry(k).or_default() += 1;
        }
    }
    let mut invalid: BTreeMap<String, usize> = BTreeMap::new();
    for s in samples("invalid") {
        for k in s.rejected_kinds() {
            *invalid.entry(k).or_default() += 1;
        }
    }
    let mut missing = Vec::new();
    for kind in KINDS {
        if !valid.contains_key(*kind) {
            missing.push(format!("no valid sample of kind {kind}"));
        }
        if !invalid.contains_key(*kind) {
            missing.push(format!("no invalid sample rejecting a {kind}"));
        }
    }
    assert!(
        missing.is_empty(),
        "{}\nvalid: {valid:?}\ninvalid: {invalid:?}",
        missing.join("\n")
    );
}

#[test]
fn every_error_code_is_exercised() {
    let codes: BTreeSet<&'static str> = samples("invalid")
        .iter()
        .flat_map(|s| s.report.errors.iter().map(|e| e.reason.code()))
        .collect();
    let missing: Vec<&&str> = CODES.iter().filter(|c| !codes.contains(**c)).collect();
    assert!(missing.is_empty(), "no invalid sample produces {missing:?}");
}

/// Runs the `keel` binary.
fn keel(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .output()
        .expect("run keel");
    (
        out.status.code(),
        String::from_utf8(out.stdout).expect("utf-8 output"),
    )
}

fn sample_dir(class: &str, name: &str) -> PathBuf {
    config_dir().join("testdata").join(class).join(name)
}

/// 1-based line of the first line of `file` containing `needle`.
fn line_of(file: &Path, needle: &str) -> usize {
    let text = std::fs::read_to_string(file).expect("read sample");
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{needle:?} not in {}", file.display()))
}

/// The `keel validate` command agrees with the library on every sample: exit 0 and no error line for a
/// valid one, exit 1 and every expected error block on one output line for an invalid one.
#[test]
fn keel_validate_command_agrees_on_every_sample() {
    let mut failures = Vec::new();
    for (class, want_code) in [("valid", 0), ("invalid", 1)] {
        for s in samples(class) {
            let dir = s.dir.to_string_lossy().to_string();
            let (code, stdout) = keel(&["validate", &dir]);
            if code != Some(want_code) {
                failures.push(format!(
                    "{class}/{}: exit {code:?}, want {want_code}",
                    s.name
                ));
                continue;
            }
            if class == "invalid" {
                let lines: Vec<String> = stdout.lines().map(str::to_string).collect();
                let want = expectations(&s.dir.join("expected.txt"));
                for p in unmatched(&lines, &want, false) {
                    failures.push(format!("{class}/{}: {p}", s.name));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `keel validate` takes files as well as directories, several at once, in order (as `kubectl apply -f`).
#[test]
fn keel_validate_reads_files_and_several_paths() {
    let sample = sample_dir("invalid", "vs-weight-negative");
    let file = sample.join("sample.yaml");
    let file = file.to_str().expect("utf-8 path");
    let (code, stdout) = keel(&["validate", file]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("spec.http[0].route[0].weight: weight -1 must not be negative"),
        "{stdout}"
    );
    // A file named without a .yaml extension is read too.
    let tmp = std::env::temp_dir().join(format!("keel-validate-file-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let plain = tmp.join("config.txt");
    std::fs::copy(sample.join("sample.yaml"), &plain).expect("copy");
    let (code, stdout) = keel(&["validate", plain.to_str().expect("utf-8 path")]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("config.txt:"), "{stdout}");
    // Two files: the DestinationRule's subsets resolve against the Service in the other file, so the
    // pair validates with no warning (alone, the rule's host would be unknown).
    let dr = sample_dir("valid", "dr-host-and-subsets");
    let (code, stdout) = keel(&[
        "validate",
        "--strict",
        dr.join("00-support.yaml").to_str().expect("utf-8 path"),
        dr.join("sample.yaml").to_str().expect("utf-8 path"),
    ]);
    assert!(stdout.contains("is valid"), "{stdout}");
    assert_eq!(code, Some(0), "{stdout}");
    let (code, stdout) = keel(&[
        "validate",
        "--strict",
        dr.join("sample.yaml").to_str().expect("utf-8 path"),
    ]);
    assert_eq!(code, Some(1), "alone, the host is unknown: {stdout}");
    let (code, stdout) = keel(&["validate", "/nonexistent/keel-config"]);
    assert_ne!(code, Some(0), "{stdout}");
    std::fs::remove_dir_all(&tmp).expect("clean up");
}

/// `--strict` fails a config whose only findings are warnings, and still passes a clean one.
#[test]
fn keel_validate_strict_fails_on_warnings() {
    let warned = sample_dir("valid", "dr-warn-least-conn");
    let warned = warned.to_str().expect("utf-8 path");
    let (code, stdout) = keel(&["validate", warned]);
    assert_eq!(code, Some(0), "{stdout}");
    let (code, stdout) = keel(&["validate", "--strict", warned]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("LEAST_CONN is deprecated"), "{stdout}");
    assert!(
        stdout.contains("is invalid with --strict: 1 warning"),
        "{stdout}"
    );
    let (code, stdout) = keel(&["validate", "--strict", "--format", "json", warned]);
    assert_eq!(code, Some(1), "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(json["valid"], false, "{stdout}");
    let clean = sample_dir("valid", "dr-host-and-subsets");
    let (code, stdout) = keel(&["validate", "--strict", clean.to_str().expect("utf-8 path")]);
    assert_eq!(code, Some(0), "{stdout}");
}

/// Three independent errors in three resources are all reported in one run, with the warnings, and the
/// text output is the `Display` the corpus tests match against.
#[test]
fn validate_reports_every_error_at_once() {
    let dir = sample_dir("invalid", "multi-three-errors");
    let (code, stdout) = keel(&["validate", dir.to_str().expect("utf-8 path")]);
    assert_eq!(code, Some(1), "{stdout}");
    let report = policy::load_dir(&dir).expect("load");
    assert_eq!(report.errors.len(), 3, "{:#?}", report.errors);
    assert_eq!(report.warnings.len(), 1, "{:#?}", report.warnings);
    for e in &report.errors {
        assert!(stdout.contains(&e.to_string()), "{e} not in:\n{stdout}");
    }
    for w in &report.warnings {
        assert!(stdout.contains(&w.to_string()), "{w} not in:\n{stdout}");
    }
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.contains("is invalid: 3 errors"), "{stdout}");
    // The resource without errors still loaded.
    assert!(report
        .snapshot
        .virtual_services
        .iter()
        .any(|vs| vs.meta.name == "multi-ok"));
}

/// `keel validate --format json` is one JSON document listing each error with file, line, resource,
/// field and reason.
#[test]
fn validate_json_lists_errors_with_location_and_reason() {
    let dir = sample_dir("invalid", "multi-three-errors");
    let (code, stdout) = keel(&[
        "validate",
        dir.to_str().expect("utf-8 path"),
        "--format",
        "json",
    ]);
    assert_eq!(code, Some(1), "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("valid JSON");
    assert_eq!(json["valid"], false);
    let errors = json["errors"].as_array().expect("errors array");
    assert_eq!(errors.len(), 3, "{json:#}");
    let file = dir.join("sample.yaml");
    let want = [
        (
            "VirtualService",
            "multi-vs",
            "spec.http[0].route[0].weight",
            line_of(&file, "weight: -5"),
            "InvalidWeight",
            "weight -5 must not be negative",
        ),
        (
            "DestinationRule",
            "multi-dr",
            "spec.subsets[1].name",
            line_of(&file, "{name: v1, labels: {version: v2}}"),
            "InvalidTrafficPolicy",
            "duplicate subset \"v1\"",
        ),
        (
            "Service",
            "multi-svc",
            "spec.ports[0].port",
            line_of(&file, "port: 70000"),
            "InvalidPort",
            "port number 70000 is out of range 1..65535",
        ),
    ];
    for (e, (kind, name, field, line, code, reason)) in errors.iter().zip(want) {
        let file_field = e["file"].as_str().expect("file");
        assert!(
            file_field.ends_with("multi-three-errors/sample.yaml"),
            "{e}"
        );
        assert_eq!(e["line"].as_u64(), u64::try_from(line).ok(), "{e}");
        assert_eq!(e["kind"], kind, "{e}");
        assert_eq!(e["namespace"], "default", "{e}");
        assert_eq!(e["name"], name, "{e}");
        assert_eq!(e["field"], field, "{e}");
        assert_eq!(e["code"], code, "{e}");
        assert_eq!(e["reason"], reason, "{e}");
    }
    let warnings = json["warnings"].as_array().expect("warnings array");
    assert_eq!(warnings.len(), 1, "{json:#}");
    assert_eq!(warnings[0]["name"], "multi-ok");
    assert_eq!(warnings[0]["field"], "spec.http[0].route[0].destination");
    assert!(warnings[0]["message"]
        .as_str()
        .is_some_and(|m| m.contains("subset \"v9\"")));
    assert_eq!(json["counts"]["virtual_services"], 1, "{json:#}");
}

#[test]
fn validate_json_of_a_valid_sample() {
    let dir = sample_dir("valid", "vs-weights-relative");
    let (code, stdout) = keel(&[
        "validate",
        dir.to_str().expect("utf-8 path"),
        "--format",
        "json",
    ]);
    assert_eq!(code, Some(0), "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("valid JSON");
    assert_eq!(json["valid"], true);
    assert_eq!(json["errors"].as_array().map(Vec::len), Some(0));
    assert_eq!(json["counts"]["services"], 2);
}

/// The seed tutorials' examples (`config/examples`) and the demo validate; `keel validate` exits 0.
#[test]
fn seed_examples_and_demo_validate() {
    for rel in ["examples", "demo"] {
        let dir = config_dir().join(rel);
        let report = policy::load_dir(&dir).expect("load");
        let errors: Vec<String> = report.errors.iter().map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{rel}:\n{}", errors.join("\n"));
        let (code, stdout) = keel(&["validate", dir.to_str().expect("utf-8 path")]);
        assert_eq!(code, Some(0), "{rel}: {stdout}");
        assert!(
            stdout
                .lines()
                .last()
                .unwrap_or_default()
                .contains("is valid"),
            "{stdout}"
        );
    }
}

/// `resource (file, kind, namespace, name)` of every error, i.e. the resources that were rejected.
fn rejected_resources(report: &LoadReport) -> BTreeSet<(String, String, String, String)> {
    report
        .errors
        .iter()
        .map(|e| {
            let a = &e.at;
            (
                a.file.clone(),
                a.kind.clone(),
                a.namespace.clone(),
                a.name.clone(),
            )
        })
        .collect()
}

/// "Accepted, not applied" is said of accepted resources only: a rejected resource gets its errors, never
/// that warning, in every sample of the corpus.
#[test]
fn rejected_resources_are_never_accepted_not_applied() {
    let mut failures = Vec::new();
    for s in samples("valid").into_iter().chain(samples("invalid")) {
        let rejected = rejected_resources(&s.report);
        for w in &s.report.warnings {
            let a = &w.at;
            let key = (
                a.file.clone(),
                a.kind.clone(),
                a.namespace.clone(),
                a.name.clone(),
            );
            if w.message.starts_with("accepted, not applied") && rejected.contains(&key) {
                failures.push(format!("{}: {w}", s.name));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `keel validate` prints one `accepted, not applied: <field>` warning per DestinationRule traffic-policy
/// field set, in text and in JSON, and still exits 0: the rule is valid.
#[test]
fn validate_reports_traffic_policy_fields_not_applied() {
    let dir = sample_dir("valid", "dr-warn-not-applied");
    let file = dir.join("sample.yaml");
    let want = [
        (
            "spec.trafficPolicy.loadBalancer.zoneAwareLbSetting.minClusterSize",
            "zoneAwareLbSetting:",
            "Keel has no zone-aware routing; localityLbSetting applies",
        ),
        (
            "spec.subsets[1].trafficPolicy.retryBudget.budgetInterval",
            "retryBudget:",
            "Keel's retry budget bounds concurrent retries, as Envoy's does; no interval applies",
        ),
    ];

    let (code, stdout) = keel(&["validate", dir.to_str().expect("utf-8 path")]);
    assert_eq!(code, Some(0), "{stdout}");
    let not_applied = stdout
        .lines()
        .filter(|l| l.contains(": warning: accepted, not applied: "))
        .count();
    assert_eq!(not_applied, 2, "{stdout}");
    // `connectionPool` and `outlierDetection` are applied: none of their fields is reported.
    assert!(!stdout.contains("connectionPool"), "{stdout}");
    assert!(!stdout.contains("outlierDetection"), "{stdout}");
    // `tls` (mode and sni in the sample) is applied: no warning.
    assert!(!stdout.contains(".tls."), "{stdout}");
    for (field, needle, today) in want {
        let line = format!(
            "sample.yaml:{}: DestinationRule default/dr-warn-not-applied: {field}: warning: accepted, not applied: {field}: {today}",
            line_of(&file, needle)
        );
        assert!(
            stdout.lines().any(|l| l.ends_with(&line)),
            "{line} not in:\n{stdout}"
        );
    }
    // Values that ask for what Keel does anyway are not reported, nor is outlier detection (applied).
    for quiet in [
        "loadBalancer.simple",
        "consistentHash",
        "portLevelSettings[0].loadBalancer",
        ".tls.",
        "h2UpgradePolicy",
        "outlierDetection",
    ] {
        assert!(!stdout.contains(quiet), "{quiet} reported:\n{stdout}");
    }

    let (code, stdout) = keel(&[
        "validate",
        dir.to_str().expect("utf-8 path"),
        "--format",
        "json",
    ]);
    assert_eq!(code, Some(0), "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("valid JSON");
    assert_eq!(json["valid"], true);
    let warnings = json["warnings"].as_array().expect("warnings array");
    assert_eq!(warnings.len(), 2, "{json:#}");
    for (field, needle, today) in want {
        let w = warnings
            .iter()
            .find(|w| w["field"] == field)
            .unwrap_or_else(|| panic!("no warning for {field} in {json:#}"));
        assert_eq!(w["kind"], "DestinationRule", "{w}");
        assert_eq!(w["name"], "dr-warn-not-applied", "{w}");
        assert_eq!(
            w["line"].as_u64(),
            u64::try_from(line_of(&file, needle)).ok(),
            "{w}"
        );
        assert_eq!(
            w["message"],
            format!("accepted, not applied: {field}: {today}"),
            "{w}"
        );
    }
}
