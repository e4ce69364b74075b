//! `keel explain --admin` against a running keel on a pod network: the seeds' header-routing
//! scenario (`end-user: jason` -> reviews v2, everyone else v1), with outlier detection on, so the
//! endpoints' health in the explanation is the client pod's own live state: an endpoint that answered
//! 500 to `sleep` is ejected for `sleep`, and still healthy for a pod that sent nothing.
//!
//! Subnet indices 180..=189 belong to this file.

mod common;

use std::process::Command;

use anyhow::{ensure, Context, Result};
use common::{Fixture, REVIEWS_PORT};
use keel_tests::{HttpServerOpts, Keel};

const PREFIX: &str = "ktexpl";

const VIRTUAL_SERVICE: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews-test-v2
  namespace: default
spec:
  hosts:
  - reviews
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v1
";

/// Subsets v1/v2; one 5xx ejects an endpoint for a minute (longer than the test).
const DESTINATION_RULE: &str = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: default
spec:
  host: reviews
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 60s
      maxEjectionPercent: 100
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
";

/// `keel explain --admin ADDR --from POD URL [args]`: (exit code, stdout, stderr).
fn explain(
    keel: &Keel,
    from: &str,
    url: &str,
    args: &[&str],
) -> Result<(Option<i32>, String, String)> {
    let out = Command::new(keel_tests::host::keel_bin()?)
        .arg("explain")
        .arg("--admin")
        .arg(keel.options().admin_addr.to_string())
        .arg("--from")
        .arg(from)
        .arg(url)
        .args(args)
        .output()
        .context("running keel explain")?;
    Ok((
        out.status.code(),
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
    ))
}

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

/// The endpoint line of `pod` (`  IP:PORT  default/POD  LOCALITY  HEALTH`), its columns split.
fn endpoint(text: &str, pod: &str) -> Option<Vec<String>> {
    text.lines()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .find(|cols| cols.get(1).map(String::as_str) == Some(pod))
}

#[test]
fn explain_against_a_running_keel_shows_the_rule_and_live_endpoint_health() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 180, &[])?;
    let v1a = fx.add_logged_backend(
        "reviews-v1a",
        11,
        REVIEWS_PORT,
        "v1a",
        &[("app", "reviews"), ("version", "v1")],
        HttpServerOpts::default(),
    )?;
    let v1b = fx.add_logged_backend(
        "reviews-v1b",
        12,
        REVIEWS_PORT,
        "v1b",
        &[("app", "reviews"), ("version", "v1")],
        HttpServerOpts {
            fail_status: Some(500),
            ..HttpServerOpts::default()
        },
    )?;
    let v2 = fx.add_logged_backend(
        "reviews-v2",
        13,
        REVIEWS_PORT,
        "v2",
        &[("app", "reviews"), ("version", "v2")],
        HttpServerOpts::default(),
    )?;
    fx.add_pod_in("default", "idle", 3, &[("app", "idle")])?;
    fx.config.write("virtualservice.yaml", VIRTUAL_SERVICE)?;
    fx.config.write("destinationrule.yaml", DESTINATION_RULE)?;
    let keel = fx.start_keel_strict()?;
    let url = "http://reviews:9080/x";

    // Before any traffic: the catch-all rule, both v1 endpoints, no state for sleep yet.
    let (code, out, err) = explain(&keel, "default/sleep", url, &[])?;
    ensure!(code == Some(0), "keel explain failed: {err}");
    for line in [
        "Result:   VirtualService default/reviews-test-v2 http[1] -> outbound|9080|v1|reviews.default.svc.cluster.local 100%",
        "  http[0]  no match  match[0]: header end-user exact \"jason\": request has none",
        "  http[1]  matched   no match conditions (catch-all)",
    ] {
        ensure!(has_line(&out, line), "missing {line:?} in:\n{out}");
    }
    let fresh = "healthy (no requests from this pod yet)";
    for pod in [&v1a, &v1b] {
        let cols = endpoint(&out, &format!("default/{}", pod.name))
            .with_context(|| format!("no endpoint line for {} in:\n{out}", pod.name))?;
        ensure!(
            cols == [
                format!("{}:{REVIEWS_PORT}", pod.ip),
                format!("default/{}", pod.name),
                "-".to_string(),
                fresh.to_string()
            ],
            "{cols:?}"
        );
    }

    // sleep's traffic makes v1b answer 500 once: one 5xx in a row ejects it for sleep.
    let report = fx.reviews_once("/x", &[])?;
    ensure!(report.responses == 1, "{report:?}");
    let mut sent = 1;
    while fx.log("reviews-v1b")?.read()?.is_empty() && sent < 20 {
        fx.reviews_once("/x", &[])?;
        sent += 1;
    }
    ensure!(
        fx.log("reviews-v1b")?.read()?.len() == 1,
        "v1b got exactly one request before its ejection"
    );
    let after = fx.get_reviews(10)?;
    ensure!(
        after.status(200) == 10,
        "after the ejection only v1a answers: {after:?}"
    );

    let (code, out, err) = explain(&keel, "default/sleep", url, &[])?;
    ensure!(code == Some(0), "keel explain failed: {err}");
    let health = |pod: &str| -> Result<String> {
        endpoint(&out, pod)
            .and_then(|c| c.get(3).cloned())
            .with_context(|| format!("no endpoint line for {pod} in:\n{out}"))
    };
    ensure!(
        health("default/reviews-v1b")? == "ejected (outlier detection)",
        "{out}"
    );
    ensure!(health("default/reviews-v1a")? == "healthy", "{out}");
    ensure!(
        has_line(
            &out,
            "  outlierDetection  consecutive5xxErrors 1, interval 1s, baseEjectionTime 1m, maxEjectionPercent 100  (trafficPolicy)"
        ),
        "{out}"
    );

    // Health is per client pod, as each sidecar holds it: `idle` sent nothing.
    let (code, idle, err) = explain(&keel, "default/idle", url, &[])?;
    ensure!(code == Some(0), "keel explain failed: {err}");
    ensure!(
        endpoint(&idle, "default/reviews-v1b")
            .and_then(|c| c.get(3).cloned())
            .as_deref()
            == Some(fresh),
        "{idle}"
    );

    // jason: the first rule, v2's endpoint.
    let (code, out, err) = explain(&keel, "default/sleep", url, &["-H", "end-user: jason"])?;
    ensure!(code == Some(0), "keel explain failed: {err}");
    ensure!(
        has_line(
            &out,
            "  http[0]  matched        match[0]: header end-user exact \"jason\""
        ),
        "{out}"
    );
    let cols = endpoint(&out, "default/reviews-v2").with_context(|| out.clone())?;
    ensure!(
        cols.first() == Some(&format!("{}:{REVIEWS_PORT}", v2.ip)),
        "{cols:?}"
    );

    // Unknown pod and host: exit 1 with keel's message.
    let (code, out, err) = explain(&keel, "default/ghost", url, &[])?;
    ensure!(code == Some(1) && out.is_empty(), "{code:?} {out}");
    ensure!(
        err.trim_end() == "keel: error: unknown pod \"default/ghost\" (give namespace/name of a Pod in the config)",
        "{err}"
    );
    let (code, _, err) = explain(&keel, "default/sleep", "http://ratings:9080/", &[])?;
    ensure!(code == Some(1), "{code:?}");
    ensure!(
        err.trim_end() == "keel: error: unknown host \"ratings\": no Service or ServiceEntry ratings or ratings.default.svc.cluster.local with port 9080",
        "{err}"
    );
    Ok(())
}
