//! Request and response shaping (istio-semantics §1.5–§1.8, §1.14, §5 items 12–15): header operations at
//! route and destination level, URI and authority rewrites, redirects, direct responses and CORS — each
//! checked on both sides: what the backend received (its request log and the echo body) and what the
//! client got. The expected headers, paths and locations were checked against Envoy 1.40 running
//! Istio's translation of these rules.
//!
//! Subnet indices 97..=101 belong to this file.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::{reviews_destination_rule, reviews_vip, with_header, Fixture};
use keel_tests::{HttpGet, HttpGetReport, RequestRecord};

const PREFIX: &str = "ktshape";
/// How long to keep watching a backend's log for requests that must never come.
const QUIET: Duration = Duration::from_millis(300);

fn reviews(path: &str) -> HttpGet {
    HttpGet::new(format!("http://reviews:9080{path}")).connect_to(reviews_vip())
}

/// The one record tagged `x-req: <tag>` in `name`'s log.
fn the_request(fx: &Fixture, name: &str, tag: &str) -> Result<RequestRecord> {
    let records = fx.log(name)?.read()?;
    let mine = with_header(&records, "x-req", tag);
    ensure!(
        mine.len() == 1,
        "expected exactly one request tagged {tag} at {name}, got {}",
        mine.len()
    );
    mine.first().map(|r| (*r).clone()).context("no record")
}

fn ensure_values(r: &HttpGetReport, name: &str, want: &[&str]) -> Result<()> {
    let got: Vec<&str> = r
        .last_header(name)
        .unwrap_or_default()
        .iter()
        .map(String::as_str)
        .collect();
    ensure!(
        got == want,
        "response header {name}: expected {want:?}, got {got:?} (all: {:?})",
        r.last_headers
    );
    Ok(())
}

#[test]
fn route_level_request_and_response_header_operations() -> Result<()> {
    let fx = Fixture::reviews_logged(PREFIX, 97, &["v1"])?;
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
  - headers:
      request:
        set:
          x-set: route
        add:
          x-add: route
          x-swap: new
        remove:
        - x-remove
        - x-swap
      response:
        set:
          x-resp-set: route
        add:
          x-resp-add: route
        remove:
        - x-resp-remove
    route:
    - destination:
        host: reviews
",
    )?;
    let _keel = fx.start_keel_strict()?;

    // The backend answers with the response headers the query names.
    let r = fx.get(
        &reviews(
            "/h?response-header=x-resp-set:backend&response-header=x-resp-add:backend\
             &response-header=x-resp-remove:backend",
        )
        .header("x-req", "ops")
        .header("x-set", "client")
        .header("x-add", "client")
        .header("x-remove", "client")
        .header("x-swap", "old"),
    )?;
    ensure!(r.status(200) == 1, "{r:?}");
    let up = the_request(&fx, "reviews-v1", "ops")?;
    let problems: Vec<String> = [
        // set replaces the client's value; add appends to it; remove drops it.
        ("x-set", Some("route")),
        ("x-add", Some("client, route")),
        ("x-remove", None),
        // Envoy removes before it adds: remove + add of one name leaves only the added value.
        ("x-swap", Some("new")),
    ]
    .iter()
    .filter(|(name, want)| up.header(name) != *want)
    .map(|(name, want)| format!("{name}: expected {want:?}, got {:?}", up.header(name)))
    .collect();
    ensure!(
        problems.is_empty(),
        "upstream request headers: {}",
        problems.join("; ")
    );
    ensure_values(&r, "x-resp-set", &["route"])?;
    ensure_values(&r, "x-resp-add", &["backend", "route"])?;
    ensure_values(&r, "x-resp-remove", &[])?;
    Ok(())
}

#[test]
fn destination_level_headers_and_the_weighted_asymmetry() -> Result<()> {
    let fx = Fixture::reviews_logged(PREFIX, 98, &["v1", "v2"])?;
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
  - match:
    - headers:
        x-case:
          exact: single
    headers:
      request:
        set:
          x-order: route
    route:
    - destination:
        host: reviews
        subset: v1
      headers:
        request:
          set:
            x-order: destination
          add:
            x-dest: v1
        response:
          set:
            x-resp-dest: v1
  - match:
    - headers:
        x-case:
          exact: weighted
    headers:
      request:
        set:
          x-order: route
    route:
    - destination:
        host: reviews
        subset: v1
      weight: 50
      headers:
        request:
          set:
            x-order: destination-v1
          add:
            x-dest: v1
        response:
          set:
            x-resp-dest: v1
    - destination:
        host: reviews
        subset: v2
      weight: 50
      headers:
        request:
          set:
            x-order: destination-v2
          add:
            x-dest: v2
        response:
          set:
            x-resp-dest: v2
",
    )?;
    let _keel = fx.start_keel_strict()?;

    // One destination: Istio appends the destination's ops after the route's on the same Envoy route,
    // so the destination's `set` wins.
    let single = fx.get(&reviews("/").header("x-case", "single").count(5))?;
    ensure!(single.by_version.get("v1") == Some(&5), "{single:?}");
    ensure_values(&single, "x-resp-dest", &["v1"])?;
    let v1 = fx.log("reviews-v1")?.read()?;
    for rec in with_header(&v1, "x-case", "single") {
        ensure!(
            rec.header("x-order") == Some("destination") && rec.header("x-dest") == Some("v1"),
            "single destination: expected x-order: destination and x-dest: v1, got {:?} / {:?}",
            rec.header("x-order"),
            rec.header("x-dest")
        );
    }

    // Weighted destinations: the ops sit on Envoy's weighted cluster, which Envoy evaluates before
    // the route level (most_specific_header_mutations_wins=false), so the route's `set` wins. The
    // reference marks this asymmetry "verify": checked against Envoy 1.40 with Istio's translation.
    let weighted = fx.get(&reviews("/").header("x-case", "weighted").count(40))?;
    ensure!(
        weighted.errors == 0 && weighted.status(200) == 40,
        "{weighted:?}"
    );
    let last_version = weighted
        .last_body
        .as_ref()
        .map(|b| b.version.clone())
        .unwrap_or_default();
    ensure_values(&weighted, "x-resp-dest", &[last_version.as_str()])?;
    for (name, version) in [("reviews-v1", "v1"), ("reviews-v2", "v2")] {
        let records = fx.log(name)?.read()?;
        let mine = with_header(&records, "x-case", "weighted");
        ensure!(
            !mine.is_empty(),
            "50/50 over 40 requests: {version} got none"
        );
        for rec in mine {
            ensure!(
                rec.header("x-order") == Some("route") && rec.header("x-dest") == Some(version),
                "weighted {version}: expected x-order: route (route-level set wins) and x-dest: \
                 {version}, got {:?} / {:?}",
                rec.header("x-order"),
                rec.header("x-dest")
            );
        }
    }
    Ok(())
}

#[test]
fn uri_and_authority_rewrites() -> Result<()> {
    let fx = Fixture::reviews_logged(PREFIX, 99, &["v1"])?;
    fx.config.write(
        "virtualservice.yaml",
        r#"apiVersion: networking.istio.io/v1
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
        prefix: /old/
    rewrite:
      uri: /new/
    route:
    - destination:
        host: reviews
  - match:
    - uri:
        exact: /exact
    rewrite:
      uri: /replaced
    route:
    - destination:
        host: reviews
  - match:
    - uri:
        prefix: /service/
    rewrite:
      uriRegexRewrite:
        match: '^/service/([^/]+)(/.*)$'
        rewrite: '/customprefix/\2/\1'
    route:
    - destination:
        host: reviews
  - match:
    - uri:
        prefix: /authority
    rewrite:
      authority: newhost
    route:
    - destination:
        host: reviews
  - rewrite:
      uri: /v1
    route:
    - destination:
        host: reviews
"#,
    )?;
    let _keel = fx.start_keel_strict()?;

    // (request path, upstream path, upstream Host, x-envoy-original-path)
    let cases: [(&str, &str, &str, Option<&str>); 5] = [
        // Prefix match: the matched prefix is replaced, the query kept.
        (
            "/old/a?x=1",
            "/new/a?x=1",
            "reviews:9080",
            Some("/old/a?x=1"),
        ),
        // Exact match: the whole path (without query) is replaced.
        (
            "/exact?x=1",
            "/replaced?x=1",
            "reviews:9080",
            Some("/exact?x=1"),
        ),
        // Group 2 keeps its leading `/`, so the template's own `/` doubles it (RE2 substitution, no
        // path normalisation afterwards — as Envoy's `regex_rewrite` does).
        (
            "/service/update/v1/api?q=1",
            "/customprefix//v1/api/update?q=1",
            "reviews:9080",
            Some("/service/update/v1/api?q=1"),
        ),
        // Authority only: path untouched, no x-envoy-original-path.
        ("/authority/x", "/authority/x", "newhost", None),
        // Catch-all (prefix `/`): only the leading `/` is replaced — the classic `/v1foo` gotcha.
        ("/foo", "/v1foo", "reviews:9080", Some("/foo")),
    ];
    let mut problems = Vec::new();
    for (i, (path, up_path, host, original)) in cases.iter().enumerate() {
        let tag = format!("rw-{i}");
        let r = fx.get(&reviews(path).header("x-req", &tag))?;
        if r.status(200) != 1 {
            problems.push(format!(
                "{path}: expected 200, got {:?} {:?}",
                r.by_status, r.other_bodies
            ));
            continue;
        }
        let up = match the_request(&fx, "reviews-v1", &tag) {
            Ok(u) => u,
            Err(e) => {
                problems.push(format!("{path}: {e:#}"));
                continue;
            }
        };
        if up.path != *up_path
            || up.header("host") != Some(*host)
            || up.header("x-envoy-original-path") != *original
        {
            problems.push(format!(
                "{path}: expected upstream {up_path} Host {host} x-envoy-original-path {original:?}, \
                 got {} Host {:?} x-envoy-original-path {:?}",
                up.path,
                up.header("host"),
                up.header("x-envoy-original-path")
            ));
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

#[test]
fn redirects_and_direct_responses_are_local() -> Result<()> {
    let fx = Fixture::reviews_logged(PREFIX, 100, &["v1"])?;
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
    - uri:
        exact: /v1/getProductRatings
    redirect:
      uri: /v1/bookRatings
      authority: newratings.default.svc.cluster.local
    headers:
      response:
        set:
          x-redirected: \"yes\"
  - match:
    - uri:
        exact: /permanent
    redirect:
      uri: /moved
      redirectCode: 308
  - match:
    - uri:
        exact: /derive
    redirect:
      uri: /derived
      authority: newreviews
      derivePort: FROM_REQUEST_PORT
  - match:
    - uri:
        exact: /secure
    redirect:
      uri: /secure
      authority: newratings.default.svc.cluster.local
      scheme: https
      port: 443
  - match:
    - uri:
        exact: /gone
    directResponse:
      status: 503
      body:
        string: unknown error
    headers:
      response:
        set:
          content-type: application/json
  - match:
    - uri:
        exact: /plain
    directResponse:
      status: 200
      body:
        string: hello
  - route:
    - destination:
        host: reviews
",
    )?;
    let _keel = fx.start_keel_strict()?;

    // (path, status, location)
    let redirects = [
        (
            "/v1/getProductRatings",
            301,
            "http://newratings.default.svc.cluster.local/v1/bookRatings",
        ),
        // No authority: the request's Host (with its port) is kept.
        ("/permanent", 308, "http://reviews:9080/moved"),
        // FROM_REQUEST_PORT: the port the request arrived on (the service port 9080).
        ("/derive", 301, "http://newreviews:9080/derived"),
        // https on 443: the default port is left out.
        (
            "/secure",
            301,
            "https://newratings.default.svc.cluster.local/secure",
        ),
    ];
    let mut problems = Vec::new();
    for (path, status, location) in redirects {
        let r = fx.get(&reviews(path))?;
        if r.last_status != status
            || r.last_header_value("location") != Some(location)
            || r.last_text.as_deref().is_some_and(|t| !t.is_empty())
        {
            problems.push(format!(
                "{path}: expected {status} location {location} with an empty body, got {} \
                 location {:?} body {:?}",
                r.last_status,
                r.last_header("location"),
                r.last_text
            ));
        }
        if path == "/v1/getProductRatings" && r.last_header_value("x-redirected") != Some("yes") {
            problems.push(format!(
                "{path}: the route's response header ops apply to the redirect: {:?}",
                r.last_headers
            ));
        }
    }

    let gone = fx.get(&reviews("/gone"))?;
    if gone.last_status != 503
        || gone.last_text.as_deref() != Some("unknown error")
        || gone.last_header_value("content-type") != Some("application/json")
    {
        problems.push(format!(
            "/gone: expected 503 \"unknown error\" as application/json, got {} {:?} {:?}",
            gone.last_status,
            gone.last_text,
            gone.last_header("content-type")
        ));
    }
    let plain = fx.get(&reviews("/plain"))?;
    if plain.last_status != 200
        || plain.last_text.as_deref() != Some("hello")
        || plain.last_header_value("content-type") != Some("text/plain")
    {
        problems.push(format!(
            "/plain: expected 200 \"hello\" as text/plain, got {} {:?} {:?}",
            plain.last_status,
            plain.last_text,
            plain.last_header("content-type")
        ));
    }
    let upstream = fx.log("reviews-v1")?.settle(QUIET, QUIET * 3)?;
    if !upstream.is_empty() {
        problems.push(format!(
            "redirects and direct responses never reach the backend; it got {}: {:?}",
            upstream.len(),
            upstream.iter().map(|u| u.path.as_str()).collect::<Vec<_>>()
        ));
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

#[test]
fn cors_preflight_answered_locally_for_allowed_origins_only() -> Result<()> {
    let fx = Fixture::reviews_logged(PREFIX, 101, &["v1"])?;
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
  - corsPolicy:
      allowOrigins:
      - exact: https://app.example.com
      allowMethods:
      - GET
      - POST
      allowHeaders:
      - x-custom
      - content-type
      exposeHeaders:
      - x-exposed
      maxAge: 24h
      allowCredentials: true
    route:
    - destination:
        host: reviews
",
    )?;
    let _keel = fx.start_keel_strict()?;
    let preflight = |origin: &str, tag: &str| {
        reviews("/api")
            .method("OPTIONS")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "x-custom")
            .header("x-req", tag)
    };

    // Allowed origin: answered by the proxy, 200, exactly the policy's headers, no body. Envoy's CORS
    // filter also runs its response path on its own preflight reply, so expose-headers is there too
    // (checked against Envoy 1.40).
    let ok = fx.get(&preflight("https://app.example.com", "allowed-preflight"))?;
    ensure!(ok.last_status == 200, "{ok:?}");
    for (name, want) in [
        ("access-control-allow-origin", "https://app.example.com"),
        ("access-control-allow-methods", "GET,POST"),
        ("access-control-allow-headers", "x-custom,content-type"),
        ("access-control-max-age", "86400"),
        ("access-control-allow-credentials", "true"),
        ("access-control-expose-headers", "x-exposed"),
    ] {
        ensure_values(&ok, name, &[want])?;
    }
    ensure!(
        ok.last_text.as_deref() == Some(""),
        "a preflight reply has no body: {:?}",
        ok.last_text
    );

    // Disallowed origin: unmatchedPreflights defaults to FORWARD, so the backend answers it.
    let other = fx.get(&preflight("https://evil.example.org", "other-preflight"))?;
    ensure!(
        other.last_status == 200 && other.by_version.get("v1") == Some(&1),
        "a preflight from another origin is forwarded to the backend: {other:?}"
    );
    ensure_values(&other, "access-control-allow-origin", &[])?;

    // Simple requests: forwarded either way; the allowed origin gets the CORS response headers.
    let simple = fx.get(
        &reviews("/api")
            .header("origin", "https://app.example.com")
            .header("x-req", "allowed-simple"),
    )?;
    ensure!(simple.by_version.get("v1") == Some(&1), "{simple:?}");
    ensure_values(
        &simple,
        "access-control-allow-origin",
        &["https://app.example.com"],
    )?;
    ensure_values(&simple, "access-control-allow-credentials", &["true"])?;
    ensure_values(&simple, "access-control-expose-headers", &["x-exposed"])?;
    let simple_other = fx.get(
        &reviews("/api")
            .header("origin", "https://evil.example.org")
            .header("x-req", "other-simple"),
    )?;
    ensure!(
        simple_other.by_version.get("v1") == Some(&1),
        "{simple_other:?}"
    );
    ensure_values(&simple_other, "access-control-allow-origin", &[])?;

    let records = fx.log("reviews-v1")?.settle(QUIET, QUIET * 3)?;
    let seen = |tag: &str| with_header(&records, "x-req", tag).len();
    ensure!(
        seen("allowed-preflight") == 0
            && seen("other-preflight") == 1
            && seen("allowed-simple") == 1
            && seen("other-simple") == 1,
        "backend requests: allowed preflight {} (want 0), other preflight {} (want 1), simple \
         requests {} and {} (want 1 each)",
        seen("allowed-preflight"),
        seen("other-preflight"),
        seen("allowed-simple"),
        seen("other-simple")
    );
    let forwarded = with_header(&records, "x-req", "other-preflight");
    ensure!(
        forwarded.first().map(|r| r.method.as_str()) == Some("OPTIONS"),
        "the forwarded preflight is an OPTIONS: {forwarded:?}"
    );
    Ok(())
}
