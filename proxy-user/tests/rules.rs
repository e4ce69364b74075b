//! The validation rule table in `config/testdata/rules/*.md` (format in `config/testdata/RULES.md`): every
//! rule istiod applies to a kind Keel reads, with the corpus samples that exercise it.
//!
//! This test checks the table against the corpus: each rule names at least one valid sample and at least
//! one violating sample, every named sample exists, a violating sample's expectation file contains the
//! rule's message (so `corpus.rs`, which checks expectation files against `keel validate`'s output, proves
//! the message is produced), a valid sample's does not, and every invalid sample of an Istio kind is
//! explained by some rule.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/testdata")
}

/// What Keel does with a resource that breaks the rule.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    /// istiod rejects it; Keel rejects it.
    Reject,
    /// istiod accepts it with a warning; Keel warns.
    Warn,
    /// istiod accepts it; Keel rejects it (a deliberate difference, explained in the Check column).
    KeelReject,
    /// istiod accepts it; Keel accepts it with a warning (a deliberate difference).
    KeelWarn,
}

impl Outcome {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "reject" => Self::Reject,
            "warn" => Self::Warn,
            "keel-reject" => Self::KeelReject,
            "keel-warn" => Self::KeelWarn,
            _ => return None,
        })
    }

    fn rejects(self) -> bool {
        matches!(self, Self::Reject | Self::KeelReject)
    }
}

#[derive(Debug)]
struct Rule {
    /// `file:line` of the table row.
    at: String,
    id: String,
    source: String,
    check: String,
    outcome: Outcome,
    message: String,
    valid: Vec<String>,
    violating: Vec<String>,
}

/// Cells of a markdown table row; `\|` is a literal pipe; backticks around a cell are dropped.
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|');
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    let mut out = Vec::new();
    let mut cell = String::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cell.push('|');
                chars.next();
            }
            '|' => out.push(std::mem::take(&mut cell)),
            c => cell.push(c),
        }
    }
    out.push(cell);
    out.into_iter().map(|c| c.trim().to_string()).collect()
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    s.strip_prefix('`')
        .and_then(|s| s.strip_suffix('`'))
        .unwrap_or(s)
        .to_string()
}

fn sample_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(unquote)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Every rule of every table, or the problems found while reading them.
fn rules() -> (Vec<Rule>, Vec<String>) {
    let dir = testdata().join("rules");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    files.sort();
    let mut rules = Vec::new();
    let mut problems = Vec::new();
    for file in &files {
        let text =
            std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let mut in_table = false;
        let mut count = 0;
        for (i, line) in text.lines().enumerate() {
            let at = format!("rules/{name}:{}", i + 1);
            if !line.trim_start().starts_with('|') {
                in_table = false;
                continue;
            }
            let c = cells(line);
            if c.first().map(String::as_str) == Some("Rule") {
                in_table = true;
                continue;
            }
            if !in_table || c.iter().all(|c| c.chars().all(|ch| "-: ".contains(ch))) {
                continue;
            }
            if c.len() != 7 {
                problems.push(format!("{at}: {} cells, want 7", c.len()));
                continue;
            }
            let Some(outcome) = Outcome::parse(&unquote(&c[3])) else {
                problems.push(format!(
                    "{at}: Keel column {:?} is not reject, warn, keel-reject or keel-warn",
                    c[3]
                ));
                continue;
            };
            count += 1;
            rules.push(Rule {
                at,
                id: unquote(&c[0]),
                source: c[1].clone(),
                check: c[2].clone(),
                outcome,
                message: unquote(&c[4]),
                valid: sample_list(&c[5]),
                violating: sample_list(&c[6]),
            });
        }
        if count == 0 {
            problems.push(format!("rules/{name}: no rules"));
        }
    }
    (rules, problems)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Lines of an expectation file that are not comments.
fn expectation_lines(path: &Path) -> Vec<String> {
    read(path)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

fn sample_names(class: &str) -> BTreeSet<String> {
    let root = testdata().join(class);
    std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect()
}

#[test]
fn every_rule_has_a_valid_and_a_violating_sample_that_shows_its_message() {
    let (rules, mut problems) = rules();
    if rules.len() < 100 {
        problems.push(format!(
            "only {} rules in config/testdata/rules",
            rules.len()
        ));
    }
    let valid = sample_names("valid");
    let invalid = sample_names("invalid");
    let mut ids: BTreeMap<&str, &str> = BTreeMap::new();
    for r in &rules {
        if r.id.is_empty() || r.source.is_empty() || r.check.is_empty() || r.message.is_empty() {
            problems.push(format!(
                "{}: rule id, Istio source, check and message must all be set",
                r.at
            ));
        }
        if let Some(first) = ids.insert(&r.id, &r.at) {
            problems.push(format!(
                "{}: rule {} already defined at {first}",
                r.at, r.id
            ));
        }
        if r.valid.is_empty() {
            problems.push(format!("{}: rule {} has no valid sample", r.at, r.id));
        }
        if r.violating.is_empty() {
            problems.push(format!("{}: rule {} has no violating sample", r.at, r.id));
        }
        // A valid sample loads without errors (corpus.rs); for a warning rule it must not show the warning.
        for s in &r.valid {
            if !valid.contains(s) {
                problems.push(format!("{}: {}: no sample valid/{s}", r.at, r.id));
                continue;
            }
            let warnings = testdata()
                .join("valid")
                .join(s)
                .join("expected-warnings.txt");
            if !r.outcome.rejects()
                && expectation_lines(&warnings)
                    .iter()
                    .any(|l| l.contains(&r.message))
            {
                problems.push(format!(
                    "{}: {}: valid sample {s} shows the rule's warning {:?}",
                    r.at, r.id, r.message
                ));
            }
        }
        for s in &r.violating {
            let (class, file) = if r.outcome.rejects() {
                ("invalid", "expected.txt")
            } else if valid.contains(s) {
                ("valid", "expected-warnings.txt")
            } else {
                ("invalid", "expected-warnings.txt")
            };
            let known = if class == "valid" { &valid } else { &invalid };
            if !known.contains(s) {
                problems.push(format!("{}: {}: no sample {class}/{s}", r.at, r.id));
                continue;
            }
            let path = testdata().join(class).join(s).join(file);
            if !expectation_lines(&path)
                .iter()
                .any(|l| l.contains(&r.message))
            {
                problems.push(format!(
                    "{}: {}: {class}/{s}/{file} does not contain the rule's message {:?}",
                    r.at, r.id, r.message
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Sample-name prefixes of the kinds whose validation follows istiod (and `doc-`/`meta-`: the document
/// and metadata rules every kind shares).
const ISTIO_PREFIXES: &[&str] = &["vs-", "dr-", "se-", "sidecar-", "gw-", "doc-", "meta-"];

#[test]
fn every_invalid_istio_sample_is_explained_by_a_rule() {
    // Problems in the tables themselves are reported by the test above.
    let (rules, _) = rules();
    let named: BTreeSet<&str> = rules
        .iter()
        .flat_map(|r| r.violating.iter().map(String::as_str))
        .collect();
    let orphans: Vec<String> = sample_names("invalid")
        .into_iter()
        .filter(|s| ISTIO_PREFIXES.iter().any(|p| s.starts_with(p)))
        .filter(|s| !named.contains(s.as_str()))
        .collect();
    assert!(
        orphans.is_empty(),
        "invalid samples no rule in config/testdata/rules names as violating:\n{}",
        orphans.join("\n")
    );
}
