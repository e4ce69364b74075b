//! `keel validate DIR`: exit 1 naming file, resource, field and reason for an invalid config; exit 0
//! with a one-line summary for a valid one. Needs only the keel binary (no root, no network).

use anyhow::{ensure, Result};
use keel_tests::config::service_yaml;
use keel_tests::{keel, ConfigDir, SvcPort};

const DESTINATION_RULE: &str = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: default
spec:
  host: reviews
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
";

const VALID_VIRTUAL_SERVICE: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
spec:
  hosts:
  - reviews
  http:
  - match:
    - uri:
        regex: \"/api/v[0-9]+/.*\"
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: 90
    - destination:
        host: reviews
        subset: v2
      weight: 10
";

/// `src` with `from` replaced by `to`; fails if `from` is not there (a typo would test nothing).
fn replaced(src: &str, from: &str, to: &str) -> Result<String> {
    ensure!(src.contains(from), "fixture does not contain {from:?}");
    Ok(src.replacen(from, to, 1))
}

fn base_config(label: &str) -> Result<ConfigDir> {
    let dir = ConfigDir::new(label)?;
    dir.write(
        "services.yaml",
        &service_yaml(
            "reviews",
            "default",
            std::net::Ipv4Addr::new(10, 96, 0, 20),
            &[SvcPort {
                name: "http",
                port: 9080,
                target_port: 9080,
            }],
            &[("app", "reviews")],
        ),
    )?;
    dir.write("destinationrule.yaml", DESTINATION_RULE)?;
    Ok(dir)
}

#[test]
fn valid_config_exits_0_with_a_one_line_summary() -> Result<()> {
    let dir = base_config("valid")?;
    dir.write("virtualservice.yaml", VALID_VIRTUAL_SERVICE)?;
    let out = keel::validate(dir.path())?;
    ensure!(
        out.code == Some(0),
        "keel validate on a valid config should exit 0, got {:?}:\n{}",
        out.code,
        out.combined()
    );
    let lines: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    ensure!(
        lines.len() == 1,
        "expected a one-line summary on stdout, got {} lines:\n{}",
        lines.len(),
        out.stdout
    );
    Ok(())
}

/// Asserts exit 1 and that the output names every `needle` (case-insensitive).
fn ensure_rejected(dir: &ConfigDir, needles: &[&str]) -> Result<()> {
    let out = keel::validate(dir.path())?;
    ensure!(
        out.code == Some(1),
        "keel validate on an invalid config should exit 1, got {:?}:\n{}",
        out.code,
        out.combined()
    );
    let text = out.combined().to_lowercase();
    let missing: Vec<&&str> = needles
        .iter()
        .filter(|n| !text.contains(&n.to_lowercase()))
        .collect();
    ensure!(
        missing.is_empty(),
        "the error must name file, resource, field and reason; missing {missing:?} in:\n{}",
        out.combined()
    );
    Ok(())
}

#[test]
fn invalid_regex_exits_1_naming_file_resource_field_and_reason() -> Result<()> {
    let dir = base_config("bad-regex")?;
    dir.write(
        "virtualservice.yaml",
        &replaced(VALID_VIRTUAL_SERVICE, "/api/v[0-9]+/.*", "/api/(unclosed")?,
    )?;
    // File, kind and name, the field, and the regex compiler's reason.
    ensure_rejected(
        &dir,
        &[
            "virtualservice.yaml",
            "VirtualService",
            "reviews",
            "regex",
            "unclosed",
        ],
    )
}

#[test]
fn negative_weight_exits_1_naming_file_resource_field_and_reason() -> Result<()> {
    let dir = base_config("bad-weight")?;
    dir.write(
        "virtualservice.yaml",
        &replaced(VALID_VIRTUAL_SERVICE, "weight: 10\n", "weight: -10\n")?,
    )?;
    ensure_rejected(
        &dir,
        &[
            "virtualservice.yaml",
            "VirtualService",
            "reviews",
            "weight",
            "-10",
        ],
    )
}

#[test]
fn unknown_field_exits_1_naming_it() -> Result<()> {
    let dir = base_config("unknown-field")?;
    dir.write(
        "virtualservice.yaml",
        &replaced(
            VALID_VIRTUAL_SERVICE,
            "  - route:\n    - destination:",
            "  - rout:\n    - destination:",
        )?,
    )?;
    ensure_rejected(
        &dir,
        &[
            "virtualservice.yaml",
            "VirtualService",
            "reviews",
            "rout",
            "unknown",
        ],
    )
}
