//! `keel explain --config` on the seed tutorials' header-routing scenario (Bookinfo reviews:
//! `end-user: jason` -> v2, everyone else v1; `config/examples/32-reviews-jason-v2.yaml`), run as a
//! user runs it: the real binary, the example files, the text it prints and its exit code.

use std::path::PathBuf;
use std::process::Command;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/examples")
}

/// `keel explain` with the scenario's files; (exit code, stdout, stderr).
fn explain(args: &[&str]) -> Result<(Option<i32>, String, String)> {
    let dir = examples();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
    cmd.arg("explain");
    for f in [
        "00-demo-services.yaml",
        "00-demo-pods.yaml",
        "00-demo-destination-rules.yaml",
        "32-reviews-jason-v2.yaml",
    ] {
        cmd.arg("--config").arg(dir.join(f));
    }
    let out = cmd.args(args).output()?;
    Ok((
        out.status.code(),
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
    ))
}

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

#[test]
fn jason_is_routed_to_v2_by_the_first_rule() -> Result {
    let (code, out, err) = explain(&[
        "--from",
        "default/sleep",
        "http://reviews:9080/x",
        "-H",
        "end-user: jason",
    ])?;
    assert_eq!(code, Some(0), "{err}");
    for line in [
        "Result:   VirtualService default/reviews-test-v2 http[0] -> outbound|9080|v2|reviews.default.svc.cluster.local 100%",
        "  http[0]  matched        match[0]: header end-user exact \"jason\"",
        "  http[1]  not evaluated",
        "  subset            v2 (version=v2)",
    ] {
        assert!(has_line(&out, line), "missing {line:?} in:\n{out}");
    }
    assert!(
        out.lines()
            .any(|l| l.starts_with("  10.244.0.13:9080  default/reviews-v2")
                && l.ends_with("unknown")),
        "{out}"
    );
    Ok(())
}

#[test]
fn without_the_header_the_first_rule_says_why_and_the_catch_all_takes_v1() -> Result {
    let (code, out, err) = explain(&["--from", "default/sleep", "http://reviews:9080/x"])?;
    assert_eq!(code, Some(0), "{err}");
    for line in [
        "Result:   VirtualService default/reviews-test-v2 http[1] -> outbound|9080|v1|reviews.default.svc.cluster.local 100%",
        "  http[0]  no match  match[0]: header end-user exact \"jason\": request has none",
        "  http[1]  matched   no match conditions (catch-all)",
    ] {
        assert!(has_line(&out, line), "missing {line:?} in:\n{out}");
    }
    assert!(
        out.lines()
            .any(|l| l.starts_with("  10.244.0.12:9080  default/reviews-v1")),
        "{out}"
    );
    Ok(())
}

#[test]
fn json_output_carries_the_same_verdicts() -> Result {
    let (code, out, err) = explain(&[
        "--from",
        "default/sleep",
        "http://reviews:9080/x",
        "-H",
        "end-user: mike",
        "--format",
        "json",
    ])?;
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(v["rules"][0]["outcome"], "no match");
    assert_eq!(
        v["rules"][0]["details"][0],
        "match[0]: header end-user exact \"jason\": request has \"mike\""
    );
    assert_eq!(v["rules"][1]["outcome"], "matched");
    assert_eq!(
        v["clusters"][0]["name"],
        "outbound|9080|v1|reviews.default.svc.cluster.local"
    );
    Ok(())
}

#[test]
fn unknown_pod_and_unknown_host_exit_non_zero_with_a_message() -> Result {
    let (code, out, err) = explain(&["--from", "default/nobody", "http://reviews:9080/"])?;
    assert_eq!(code, Some(1));
    assert!(out.is_empty(), "{out}");
    assert_eq!(
        err.trim_end(),
        "keel: error: unknown pod \"default/nobody\" (give namespace/name of a Pod in the config)"
    );
    let (code, _, err) = explain(&["--from", "default/sleep", "http://nowhere:9080/"])?;
    assert_eq!(code, Some(1));
    assert_eq!(
        err.trim_end(),
        "keel: error: unknown host \"nowhere\": no Service or ServiceEntry nowhere or nowhere.default.svc.cluster.local with port 9080"
    );
    Ok(())
}
