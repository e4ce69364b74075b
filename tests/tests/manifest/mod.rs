//! Reading the cluster install (`config/deploy/`) as Kubernetes and a container builder would: YAML
//! documents, typed as the `k8s-openapi` objects they claim to be with unknown fields rejected,
//! `kubectl kustomize` output, `keel <command> --help` flags, and the Containerfile's instructions.
//!
//! Nothing here talks to a cluster or a registry: `kubectl kustomize` renders offline. Shared by
//! `deploy.rs` and `admin.rs` (each test file is its own crate and uses what it needs).

#![allow(dead_code, reason = "each test file uses a different subset")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use keel_tests::host;

/// `config/deploy/` of this checkout.
pub fn deploy_dir() -> PathBuf {
    host::workspace_root().join("config").join("deploy")
}

/// One object of the install, typed.
#[derive(Debug, Clone)]
pub enum Object {
    Namespace(Namespace),
    ServiceAccount(ServiceAccount),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    DaemonSet(Box<DaemonSet>),
    CustomResourceDefinition(Box<CustomResourceDefinition>),
}

/// An object with the document it was read from.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// `Kind namespace/name` (`Kind name` when cluster-scoped).
    pub id: String,
    /// The document as written.
    pub raw: Value,
    pub object: Object,
}

/// Every non-empty YAML document of `text`, as JSON values.
pub fn documents(text: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(doc).with_context(|| format!("YAML document {i}"))?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// Deserializes `raw` as `T` and serializes it back; the two must be equal. `k8s-openapi` skips
/// fields it does not know, so a misspelt or misplaced field shows up as one the round trip lost.
pub fn strict<T: DeserializeOwned + Serialize>(raw: &Value) -> Result<T> {
    let typed: T = serde_json::from_value(raw.clone()).with_context(|| {
        format!(
            "not a valid {}",
            std::any::type_name::<T>()
                .rsplit("::")
                .next()
                .unwrap_or("?")
        )
    })?;
    let back = serde_json::to_value(&typed)?;
    if let Some(problem) = first_difference(raw, &back, "") {
        bail!(
            "{problem} (as a {})",
            std::any::type_name::<T>()
                .rsplit("::")
                .next()
                .unwrap_or("?")
        );
    }
    Ok(typed)
}

/// The first place where `round_trip` differs from `original`, described with its field path.
fn first_difference(original: &Value, round_trip: &Value, path: &str) -> Option<String> {
    match (original, round_trip) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let here = format!("{path}.{k}");
                match b.get(k) {
                    None => return Some(format!("unknown field {here}")),
                    Some(w) => {
                        if let Some(d) = first_difference(v, w, &here) {
                            return Some(d);
                        }
                    }
                }
            }
            b.keys()
                .find(|k| !a.contains_key(*k))
                .map(|k| format!("field {path}.{k} appeared in the round trip"))
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, &format!("{path}[{i}]"))),
        (a, b) if a == b => None,
        (a, b) => Some(format!("field {path}: {a} came back as {b}")),
    }
}

/// Types one document by its `apiVersion` and `kind`; an object of any other kind is an error.
pub fn parse(raw: Value) -> Result<Parsed> {
    let api = raw["apiVersion"].as_str().unwrap_or_default().to_string();
    let kind = raw["kind"].as_str().unwrap_or_default().to_string();
    let name = raw["metadata"]["name"].as_str().unwrap_or_default();
    let id = match raw["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    };
    let object = match (api.as_str(), kind.as_str()) {
        ("v1", "Namespace") => strict(&raw).map(Object::Namespace),
        ("v1", "ServiceAccount") => strict(&raw).map(Object::ServiceAccount),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => strict(&raw).map(Object::ClusterRole),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            strict(&raw).map(Object::ClusterRoleBinding)
        }
        ("apps/v1", "DaemonSet") => strict(&raw).map(|d| Object::DaemonSet(Box::new(d))),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            strict(&raw).map(|c| Object::CustomResourceDefinition(Box::new(c)))
        }
        _ => bail!("{id}: unexpected apiVersion {api:?} / kind {kind:?} in the install"),
    }
    .with_context(|| id.clone())?;
    Ok(Parsed { id, raw, object })
}

/// Every object of one manifest file.
pub fn parse_file(path: &Path) -> Result<Vec<Parsed>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    documents(&text)
        .with_context(|| path.display().to_string())?
        .into_iter()
        .map(parse)
        .collect::<Result<_>>()
        .with_context(|| path.display().to_string())
}

/// `kubectl`, or an error saying how to get it.
pub fn kubectl() -> Result<PathBuf> {
    host::find_on_path("kubectl").context(
        "kubectl not found on PATH: the deployment tests render config/deploy with `kubectl \
         kustomize` (Debian package kubectl; `cargo xtask setup` installs it)",
    )
}

/// `kubectl kustomize <dir>`: what `kubectl apply -k <dir>` would apply, typed.
pub fn render(dir: &Path) -> Result<Vec<Parsed>> {
    let out = Command::new(kubectl()?)
        .arg("kustomize")
        .arg(dir)
        .output()
        .context("running kubectl kustomize")?;
    ensure!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    documents(&String::from_utf8_lossy(&out.stdout))?
        .into_iter()
        .map(parse)
        .collect::<Result<_>>()
        .context("kubectl kustomize output")
}

/// `config/deploy/daemonset.yaml`, typed strictly.
pub fn daemonset() -> Result<DaemonSet> {
    let path = deploy_dir().join("daemonset.yaml");
    for p in parse_file(&path)? {
        if let Object::DaemonSet(d) = p.object {
            return Ok(*d);
        }
    }
    bail!("no DaemonSet in {}", path.display())
}

/// The options of `keel <command> --help`, long name (without `--`) -> whether it takes a value.
pub fn help_flags(keel: &Path, command: &str) -> Result<BTreeMap<String, bool>> {
    let out = Command::new(keel)
        .args([command, "--help"])
        .output()
        .with_context(|| format!("running {} {command} --help", keel.display()))?;
    ensure!(
        out.status.success(),
        "{} {command} --help failed: {}",
        keel.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let mut flags = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let line = line.trim_start();
        if !line.starts_with('-') {
            continue;
        }
        // `-h, --help`, `--config <CONFIG>`, `--no-metrics`.
        let mut words = line.split_whitespace().map(|w| w.trim_end_matches(','));
        while let Some(word) = words.next() {
            if let Some(long) = word.strip_prefix("--") {
                let takes_value = words.next().is_some_and(|w| w.starts_with('<'));
                flags.insert(long.to_string(), takes_value);
                break;
            }
        }
    }
    ensure!(
        flags.contains_key("help"),
        "no options found in `keel {command} --help`"
    );
    Ok(flags)
}

/// One instruction of a Containerfile: keyword (upper case) and the rest of the line.
#[derive(Debug, Clone, PartialEq)]
pub struct Instruction {
    pub line: usize,
    pub keyword: String,
    pub rest: String,
}

/// The instructions of a Containerfile (comments and blank lines dropped). Line continuations are
/// refused: the deployment's Containerfile has none, and a check that misread one would mislead.
pub fn containerfile(text: &str) -> Result<Vec<Instruction>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        ensure!(
            !line.ends_with('\\'),
            "Containerfile line {}: continuation lines are not supported by this check",
            i + 1
        );
        let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        out.push(Instruction {
            line: i + 1,
            keyword: keyword.to_ascii_uppercase(),
            rest: rest.trim().to_string(),
        });
    }
    Ok(out)
}

/// The highest `GLIBC_x.y` symbol version a binary asks for, as `(x, y)`; `None` if it names none.
pub fn max_glibc(binary: &[u8]) -> Option<(u32, u32)> {
    let needle = b"GLIBC_";
    let mut best = None;
    let mut i = 0;
    while let Some(pos) = binary
        .get(i..)
        .and_then(|s| s.windows(needle.len()).position(|w| w == needle))
    {
        let start = i + pos + needle.len();
        let digits: String = binary
            .get(start..)
            .unwrap_or_default()
            .iter()
            .take_while(|b| b.is_ascii_digit() || **b == b'.')
            .map(|b| char::from(*b))
            .collect();
        let mut parts = digits.split('.').map(str::parse::<u32>);
        if let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) {
            best = best.max(Some((major, minor)));
        }
        i = start;
    }
    best
}
