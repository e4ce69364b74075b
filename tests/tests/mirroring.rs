//! Traffic mirroring (istio-semantics §1.13, §5 item 24): the client only ever sees the primary's
//! answers, at the primary's speed; each mirror target receives a fire-and-forget copy of the request
//! (same method, path, query, body and added headers) with the Host Keel's `MeshConfig` asks for
//! (`mirrorShadowSuffix`); percentages are independent draws per mirror.
//!
//! Copies are counted in the mirror backends' request logs, after waiting for the traffic to settle.
//!
//! Subnet indices 92..=96 belong to this file.

mod common;

use std::time::Duration;

use anyhow::{ensure, Result};
use common::{ensure_binomial, reviews_destination_rule, reviews_vip, with_header, Fixture};
use keel_tests::{body_hash, body_pattern, HttpGet, HttpServerOpts, RequestRecord};

const PREFIX: &str = "ktmirror";
/// Longest wait for mirrored copies to arrive (they normally follow the primary within milliseconds).
const COPIES_WITHIN: Duration = Duration::from_secs(5);
/// "No more copies" means none for this long.
const QUIET: Duration = Duration::from_millis(500);

fn reviews(path: &str) -> HttpGet {
    HttpGet::new(format!("http://reviews:9080{path}")).connect_to(reviews_vip())
}

/// Waits for `n` records in `name`'s log, then for quiet, and returns them all.
fn copies(fx: &Fixture, name: &str, n: usize) -> Result<Vec<RequestRecord>> {
    let log = fx.log(name)?;
    log.wait_for(n, COPIES_WITHIN)?;
    log.settle(QUIET, COPIES_WITHIN)
}

#[test]
fn mirror_copies_every_request_with_the_shadow_host() -> Result<()> {
    let fx = Fixture::reviews_logged(PREFIX, 92, &["v1", "v2"])?;
    fx.write_mesh(&["mirrorShadowSuffix: true"])?;
    fx.config.write(
        "destinationrule.yaml",
        &reviews_destination_rule(&["v1", "v2"]),
    )?;
    fx.config.write(
        "virtualservice.yaml",
        "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
    mirror:
      host: reviews
      subset: v2
",
    )?;
    let _keel = fx.start_keel_strict()?;

    const N: usize = 100;
    const BODY: usize = 1_000;
    let r = fx.get(
        &reviews("/api/orders?id=42&sort=asc")
            .method("POST")
            .body_size(BODY)
            .header("x-custom", "abc")
            .count(N as u32),
    )?;
    ensure!(
        r.errors == 0 && r.status(200) == N as u64 && r.by_version.get("v1") == Some(&(N as u64)),
        "the client sees only the primary (v1): {:?} {:?}",
        r.by_status,
        r.by_version
    );
    let primary = fx.log("reviews-v1")?.read()?;
    ensure!(primary.len() == N, "v1 served {} of {N}", primary.len());
    let shadow = copies(&fx, "reviews-v2", N)?;
    ensure!(
        shadow.len() == N,
        "v2 must receive exactly one copy per request: {} of {N}",
        shadow.len()
    );
    let want_hash = body_hash(&body_pattern(BODY));
    for c in &shadow {
        ensure!(
            c.method == "POST"
                && c.path == "/api/orders?id=42&sort=asc"
                && c.body_len == BODY as u64
                && c.body_hash == want_hash
                && c.header("x-custom") == Some("abc"),
            "a copy must carry the same method, path, query, body and headers: {c:?}"
        );
        ensure!(
            c.header("host") == Some("reviews-shadow:9080"),
            "mirrorShadowSuffix: true -> the copy's Host is reviews-shadow:9080, got {:?}",
            c.header("host")
        );
    }
    ensure!(
        primary
            .iter()
            .all(|p| p.header("host") == Some("reviews:9080")),
        "the primary keeps the client's Host: {:?}",
        primary.first().map(|p| p.header("host"))
    );
    Ok(())
}

#[test]
fn mirror_host_unchanged_without_suffix_and_percentages() -> Result<()> {
    let fx = Fixture::reviews_logged(PREFIX, 93, &["v1", "v2", "v3"])?;
    fx.write_mesh(&["mirrorShadowSuffix: false"])?;
    fx.config.write(
        "destinationrule.yaml",
        &reviews_destination_rule(&["v1", "v2", "v3"]),
    )?;
    fx.config.write(
        "virtualservice.yaml",
        "\
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
    - headers:
        x-case:
          exact: full
    route:
    - destination:
        host: reviews
        subset: v1
    mirror:
      host: reviews
      subset: v2
  - match:
    - headers:
        x-case:
          exact: zero
    route:
    - destination:
        host: reviews
        subset: v1
    mirror:
      host: reviews
      subset: v2
    mirrorPercentage:
      value: 0
  - match:
    - headers:
        x-case:
          exact: quarter
    route:
    - destination:
        host: reviews
        subset: v1
    mirror:
      host: reviews
      subset: v3
    mirrorPercentage:
      value: 25
",
    )?;
    let _keel = fx.start_keel_strict()?;

    let full = fx.get(&reviews("/").header("x-case", "full").count(20))?;
    ensure!(full.by_version.get("v1") == Some(&20), "{full:?}");
    // An explicit 0% disables the mirror.
    let zero = fx.get(&reviews("/").header("x-case", "zero").count(200))?;
    ensure!(zero.by_version.get("v1") == Some(&200), "{zero:?}");
    const N: u64 = 800;
    let quarter = fx.get(&reviews("/").header("x-case", "quarter").count(N as u32))?;
    ensure!(quarter.by_version.get("v1") == Some(&N), "{quarter:?}");

    let v2 = copies(&fx, "reviews-v2", 20)?;
    let v2_full = with_header(&v2, "x-case", "full");
    ensure!(
        v2_full.len() == 20 && with_header(&v2, "x-case", "zero").is_empty(),
        "v2 must get 20 copies of `full` and none of `zero` (mirrorPercentage 0): {} and {}",
        v2_full.len(),
        with_header(&v2, "x-case", "zero").len()
    );
    ensure!(
        v2_full
            .iter()
            .all(|c| c.header("host") == Some("reviews:9080")),
        "mirrorShadowSuffix: false -> copies keep Host reviews:9080: {:?}",
        v2_full.first().map(|c| c.header("host"))
    );
    let v3 = fx.log("reviews-v3")?.settle(QUIET, COPIES_WITHIN)?;
    ensure_binomial(
        "copies at mirrorPercentage 25",
        with_header(&v3, "x-case", "quarter").len() as u64,
        N,
        0.25,
    )?;
    Ok(())
}

#[test]
fn a_slow_dead_or_failing_mirror_never_affects_the_primary() -> Result<()> {
    let mut fx = Fixture::reviews_logged(PREFIX, 94, &["v1"])?;
    fx.add_logged_backend(
        "reviews-v2",
        12,
        9080,
        "v2",
        &[("app", "reviews"), ("version", "v2")],
        HttpServerOpts {
            delay_ms: Some(3_000),
            ..HttpServerOpts::default()
        },
    )?;
    // v3: in the Service, nothing listening.
    fx.add_pod(
        "reviews-v3",
        13,
        &[("app", "reviews"), ("version", "v3")],
        &[],
        false,
    )?;
    fx.add_logged_backend(
        "reviews-v4",
        14,
        9080,
        "v4",
        &[("app", "reviews"), ("version", "v4")],
        HttpServerOpts {
            fail_status: Some(500),
            ..HttpServerOpts::default()
        },
    )?;
    fx.config.write(
        "destinationrule.yaml",
        &reviews_destination_rule(&["v1", "v2", "v3", "v4"]),
    )?;
    let mut vs = String::from(
        "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
spec:
  hosts:
  - reviews
  http:
",
    );
    for (case, mirror) in [("slow", "v2"), ("dead", "v3"), ("failing", "v4")] {
        vs.push_str(&format!(
            "  - match:\n    - headers:\n        x-case:\n          exact: {case}\n    route:\n    \
             - destination:\n        host: reviews\n        subset: v1\n    mirror:\n      host: \
             reviews\n      subset: {mirror}\n"
        ));
    }
    fx.config.write("virtualservice.yaml", &vs)?;
    let _keel = fx.start_keel_strict()?;

    for case in ["slow", "dead", "failing"] {
        let r = fx.get(&reviews("/").header("x-case", case).count(20))?;
        ensure!(
            r.errors == 0 && r.status(200) == 20 && r.by_version.get("v1") == Some(&20),
            "mirror {case}: the client must get all 20 answers from v1: {:?} {:?} {:?}",
            r.by_status,
            r.by_version,
            r.other_bodies
        );
        ensure!(
            r.max_latency_ms() < 1_000,
            "mirror {case}: the primary must not wait for the mirror (v2 takes 3 s): slowest \
             response {} ms",
            r.max_latency_ms()
        );
    }
    let slow_copies = copies(&fx, "reviews-v2", 20)?;
    let failing_copies = copies(&fx, "reviews-v4", 20)?;
    ensure!(
        with_header(&slow_copies, "x-case", "slow").len() == 20
            && with_header(&failing_copies, "x-case", "failing").len() == 20,
        "the slow and the failing mirror still receive every copy: {} and {}",
        slow_copies.len(),
        failing_copies.len()
    );
    Ok(())
}

#[test]
fn two_mirrors_with_their_own_percentages() -> Result<()> {
    let fx = Fixture::reviews_logged(PREFIX, 95, &["v1", "v2", "v3"])?;
    fx.config.write(
        "destinationrule.yaml",
        &reviews_destination_rule(&["v1", "v2", "v3"]),
    )?;
    fx.config.write(
        "virtualservice.yaml",
        "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
    mirrors:
    - destination:
        host: reviews
        subset: v2
      percentage:
        value: 100
    - destination:
        host: reviews
        subset: v3
      percentage:
        value: 50
",
    )?;
    let _keel = fx.start_keel_strict()?;

    const N: u64 = 400;
    let r = fx.get(&reviews("/").count(N as u32))?;
    ensure!(r.by_version.get("v1") == Some(&N), "{:?}", r.by_version);
    let v2 = copies(&fx, "reviews-v2", N as usize)?;
    ensure!(
        v2.len() as u64 == N,
        "the 100% mirror gets every request: {} of {N}",
        v2.len()
    );
    let v3 = fx.log("reviews-v3")?.settle(QUIET, COPIES_WITHIN)?;
    ensure_binomial("copies of the 50% mirror", v3.len() as u64, N, 0.5)?;
    Ok(())
}

/// Seed 002's mirroring lab (config/examples/31): httpbin v1 serves, every request is mirrored to v2
/// with the deprecated `mirror_percent: 100`. No MeshConfig: Keel's default `mirrorShadowSuffix: true`
/// (the lab's "Host/Authority headers appended with -shadow").
#[test]
fn seed_httpbin_mirror_v1_to_v2() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 96, &[])?;
    let httpbin = fx.add_simple_service("httpbin", 30, "http", 8000, 80)?;
    for (name, suffix, version) in [("httpbin-v1", 31, "v1"), ("httpbin-v2", 32, "v2")] {
        fx.add_logged_backend(
            name,
            suffix,
            80,
            version,
            &[("app", "httpbin"), ("version", version)],
            HttpServerOpts::default(),
        )?;
    }
    fx.config.write(
        "httpbin.yaml",
        "\
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: httpbin
  namespace: default
spec:
  host: httpbin
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: httpbin-mirror
  namespace: default
spec:
  hosts:
  - httpbin
  http:
  - route:
    - destination:
        host: httpbin
        subset: v1
      weight: 100
    mirror:
      host: httpbin
      subset: v2
    mirror_percent: 100
",
    )?;
    let _keel = fx.start_keel_strict()?;

    let r = fx.get(
        &HttpGet::new("http://httpbin:8000/headers")
            .connect_to(httpbin)
            .count(10),
    )?;
    ensure!(
        r.errors == 0 && r.by_version.get("v1") == Some(&10),
        "httpbin v1 answers every request: {:?} {:?}",
        r.by_status,
        r.by_version
    );
    let v2 = copies(&fx, "httpbin-v2", 10)?;
    ensure!(
        v2.len() == 10
            && v2
                .iter()
                .all(|c| c.path == "/headers" && c.header("host") == Some("httpbin-shadow:8000")),
        "v2 gets 10 copies of GET /headers with Host httpbin-shadow:8000: {v2:?}"
    );
    Ok(())
}
