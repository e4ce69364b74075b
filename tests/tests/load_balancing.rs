//! DestinationRule `loadBalancer` on the pod network (istio-semantics §2.2): `ROUND_ROBIN`, `RANDOM`,
//! `LEAST_REQUEST`, consistent hashing by header, cookie (Keel issues it as Envoy does), source IP and
//! query parameter over a ring or Maglev, the default retry policy staying on the hashed host, and
//! `PASSTHROUGH`. Counts are read from the echo bodies of the backends (`by_pod`).
//!
//! Subnet indices 130..=139 belong to this file.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::{ensure_binomial, reviews_vip, wait_until, Fixture, REVIEWS_PORT};
use keel_tests::{HttpGet, HttpGetReport, HttpServerOpts};

const PREFIX: &str = "ktlb";
const VERSIONS: [&str; 3] = ["v1", "v2", "v3"];

/// A DestinationRule for `reviews` whose `trafficPolicy.loadBalancer` is `lb` (YAML lines indented
/// under `loadBalancer:`).
fn lb_rule(lb: &str) -> String {
    let body: String = lb.lines().map(|l| format!("      {l}\n")).collect();
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: reviews\n  \
         namespace: default\nspec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer:\n{body}"
    )
}

/// A VirtualService sending all of `reviews` to the service (one destination), with `extra` lines
/// (indented under the rule) such as `retries`.
fn single_destination_vs(extra: &str) -> String {
    let extra: String = extra.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\n  \
         namespace: default\nspec:\n  hosts:\n  - reviews\n  http:\n  - route:\n    - destination:\n        \
         host: reviews\n{extra}"
    )
}

fn reviews(path: &str) -> HttpGet {
    HttpGet::new(format!("http://reviews:9080{path}")).connect_to(reviews_vip())
}

/// The one pod that answered every request of `r` with 200, or an error saying who did.
fn sole_pod(what: &str, r: &HttpGetReport) -> Result<String> {
    ensure!(
        r.errors == 0 && r.status(200) == r.requested,
        "{what}: expected {} x 200: {:?} {:?}",
        r.requested,
        r.by_status,
        r.first_error
    );
    ensure!(
        r.by_pod.len() == 1,
        "{what}: every request must reach one pod, got {:?}",
        r.by_pod
    );
    r.by_pod.keys().next().cloned().context("no pod")
}

#[test]
fn round_robin_splits_exactly_on_one_connection() -> Result<()> {
    let fx = Fixture::reviews(PREFIX, 130, &VERSIONS)?;
    fx.config
        .write("destinationrule.yaml", &lb_rule("simple: ROUND_ROBIN"))?;
    let _keel = fx.start_keel_strict()?;

    // One keep-alive connection: the client's round-robin cursor visits each pod in turn.
    let r = fx.get(&reviews("/").count(300))?;
    ensure!(
        r.connections == 1 && r.status(200) == 300,
        "300 x 200 on one connection: {r:?}"
    );
    for v in VERSIONS {
        let got = r.by_pod.get(&format!("reviews-{v}")).copied();
        ensure!(
            got == Some(100),
            "ROUND_ROBIN: exactly 100 of 300 per pod, reviews-{v} got {got:?}: {:?}",
            r.by_pod
        );
    }
    Ok(())
}

#[test]
fn random_spreads_within_binomial_bounds() -> Result<()> {
    let fx = Fixture::reviews(PREFIX, 131, &VERSIONS)?;
    fx.config
        .write("destinationrule.yaml", &lb_rule("simple: RANDOM"))?;
    let _keel = fx.start_keel_strict()?;

    let n = 1_500;
    let r = fx.get(&reviews("/").count(n))?;
    ensure!(r.status(200) == u64::from(n), "{r:?}");
    for v in VERSIONS {
        let got = r.by_pod.get(&format!("reviews-{v}")).copied().unwrap_or(0);
        ensure_binomial(
            &format!("RANDOM, reviews-{v}"),
            got,
            u64::from(n),
            1.0 / 3.0,
        )?;
    }
    // Not round robin in disguise: three exactly equal shares of 1,500 random draws are unlikely
    // (about 0.2 %), so this only fails for a balancer that rotates.
    ensure!(
        r.by_pod.values().any(|c| *c != 500),
        "RANDOM gave an exact rotation: {:?}",
        r.by_pod
    );
    Ok(())
}

#[test]
fn least_request_spreads_evenly_and_avoids_a_slow_pod() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 132, &[])?;
    // reviews-v1 answers after 200 ms; v2 and v3 at once.
    for (i, v) in VERSIONS.iter().enumerate() {
        let opts = HttpServerOpts {
            delay_ms: (i == 0).then_some(200),
            ..HttpServerOpts::default()
        };
        fx.add_logged_backend(
            &format!("reviews-{v}"),
            u8::try_from(11 + i)?,
            REVIEWS_PORT,
            v,
            &[("app", "reviews"), ("version", v)],
            opts,
        )?;
    }
    // LEAST_CONN is the deprecated alias of LEAST_REQUEST (Istio's default).
    fx.config
        .write("destinationrule.yaml", &lb_rule("simple: LEAST_CONN"))?;
    let _keel = fx.start_keel()?;

    // Sequential requests see idle pods: an even spread.
    let n = 300;
    let r = fx.get(&reviews("/").count(n))?;
    ensure!(r.status(200) == u64::from(n), "{r:?}");
    for v in VERSIONS {
        let got = r.by_pod.get(&format!("reviews-{v}")).copied().unwrap_or(0);
        ensure_binomial(
            &format!("LEAST_REQUEST, reviews-{v}"),
            got,
            u64::from(n),
            1.0 / 3.0,
        )?;
    }

    // Four requests at a time: the slow pod is nearly always busy, and of two candidates the one
    // with fewer requests in flight wins, so it gets far less than a third (RANDOM would give it
    // about 100 of 300).
    let r = fx.get(&reviews("/").count(n).concurrency(4))?;
    ensure!(r.status(200) == u64::from(n), "{r:?}");
    let slow = r.by_pod.get("reviews-v1").copied().unwrap_or(0);
    ensure!(
        slow <= 30,
        "LEAST_REQUEST must steer around the slow pod: {:?}",
        r.by_pod
    );
    Ok(())
}

/// For each key, `per_key` keep-alive requests built by `request(key)`; the pod that served each key.
fn pods_by_key(
    fx: &Fixture,
    what: &str,
    keys: &[String],
    per_key: u32,
    request: impl Fn(&str) -> HttpGet,
) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for key in keys {
        let r = fx.get(&request(key).count(per_key))?;
        out.insert(key.clone(), sole_pod(&format!("{what} {key}"), &r)?);
    }
    Ok(out)
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user-{i}")).collect()
}

#[test]
fn header_hash_is_sticky_per_value_and_spreads_values() -> Result<()> {
    let fx = Fixture::reviews(PREFIX, 133, &VERSIONS)?;
    fx.config.write(
        "destinationrule.yaml",
        &lb_rule("consistentHash:\n  httpHeaderName: x-user\n  ringHash: {minimumRingSize: 1024}"),
    )?;
    let _keel = fx.start_keel_strict()?;

    let keys = keys(16);
    let header = |k: &str| reviews("/").header("x-user", k);
    let first = pods_by_key(&fx, "x-user", &keys, 8, header)?;
    // The same value lands on the same pod on a new connection too.
    let again = pods_by_key(&fx, "x-user", &keys, 1, |k| header(k).new_conn())?;
    ensure!(
        first == again,
        "header hash not stable: {first:?} vs {again:?}"
    );
    let used: BTreeSet<&String> = first.values().collect();
    ensure!(
        used.len() >= 2,
        "16 header values should spread over the pods: {first:?}"
    );

    // Without the header there is no hash: the ring picks at random.
    let r = fx.get(&reviews("/").count(60))?;
    ensure!(
        r.status(200) == 60 && r.by_pod.len() >= 2,
        "requests without x-user are not pinned: {:?}",
        r.by_pod
    );
    Ok(())
}

#[test]
fn query_parameter_hash_over_maglev_is_sticky() -> Result<()> {
    let fx = Fixture::reviews(PREFIX, 134, &VERSIONS)?;
    fx.config.write(
        "destinationrule.yaml",
        &lb_rule("consistentHash:\n  httpQueryParameterName: user\n  maglev: {tableSize: 65537}"),
    )?;
    let _keel = fx.start_keel_strict()?;

    let keys = keys(16);
    let first = pods_by_key(&fx, "?user=", &keys, 8, |k| {
        reviews(&format!("/items?page=1&user={k}"))
    })?;
    // Other parameters and their order do not matter; only `user` is hashed.
    let again = pods_by_key(&fx, "?user=", &keys, 2, |k| {
        reviews(&format!("/other?user={k}&page=9")).new_conn()
    })?;
    ensure!(
        first == again,
        "query hash not stable: {first:?} vs {again:?}"
    );
    let used: BTreeSet<&String> = first.values().collect();
    ensure!(used.len() >= 2, "16 users should spread: {first:?}");
    Ok(())
}

/// The `Set-Cookie` values of `r`'s last response.
fn set_cookies(r: &HttpGetReport) -> Vec<String> {
    r.last_header("set-cookie")
        .map(<[String]>::to_vec)
        .unwrap_or_default()
}

/// `user="<16 lower-case hex digits>"` + `rest`, the cookie value.
fn issued_cookie(header: &str, rest: &str) -> Option<String> {
    let value = header.strip_prefix("user=\"")?.strip_suffix(rest)?;
    let value = value.strip_suffix('"')?;
    (value.len() == 16
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then(|| value.to_string())
}

#[test]
fn cookie_is_issued_as_envoy_writes_it_and_sticks() -> Result<()> {
    let fx = Fixture::reviews(PREFIX, 135, &VERSIONS)?;
    fx.config.write(
        "destinationrule.yaml",
        &lb_rule(
            "consistentHash:\n  httpCookie:\n    name: user\n    path: /\n    ttl: 3600s\n    \
             attributes:\n    - {name: SameSite, value: Strict}\n    - {name: Secure}",
        ),
    )?;
    let _keel = fx.start_keel_strict()?;
    let tail = "; Max-Age=3600; Path=/; SameSite=Strict; Secure; HttpOnly";

    // No cookie: Keel issues one derived from the connection, the same for every request on it, so
    // the connection's requests stay on one pod.
    let r = fx.get(&reviews("/").count(5))?;
    let pod = sole_pod("without a cookie, one connection", &r)?;
    ensure!(
        r.header_presence.get("set-cookie") == Some(&5),
        "every response carries Set-Cookie: {:?}",
        r.header_presence
    );
    let header = set_cookies(&r);
    ensure!(header.len() == 1, "one Set-Cookie: {header:?}");
    let value = issued_cookie(&header[0], tail).with_context(|| {
        format!(
            "Set-Cookie must be user=\"<16 hex>\"{tail}, got {:?}",
            header[0]
        )
    })?;

    // Sent back (quoted, as browsers keep it), on new connections: the same pod, no new cookie.
    let back = fx.get(
        &reviews("/")
            .header("cookie", &format!("theme=dark; user=\"{value}\""))
            .count(10)
            .new_conn(),
    )?;
    ensure!(
        sole_pod("with the issued cookie", &back)? == pod,
        "the cookie must lead back to {pod}: {:?}",
        back.by_pod
    );
    ensure!(
        !back.header_presence.contains_key("set-cookie"),
        "no cookie is issued when the request has one: {:?}",
        back.header_presence
    );

    // New connections without the cookie get cookies of their own (from their own source ports).
    let fresh = fx.get(&reviews("/").count(30).new_conn())?;
    ensure!(
        fresh.status(200) == 30 && fresh.header_presence.get("set-cookie") == Some(&30),
        "{fresh:?}"
    );
    ensure!(
        fresh.by_pod.len() >= 2,
        "30 connections with 30 issued cookies should reach more than one pod: {:?}",
        fresh.by_pod
    );
    let other = set_cookies(&fresh);
    ensure!(
        other.len() == 1 && issued_cookie(&other[0], tail).is_some_and(|v| v != value),
        "another connection gets another cookie: {other:?} vs {value}"
    );
    Ok(())
}

#[test]
fn source_ip_hash_pins_each_client_pod() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 136, &VERSIONS)?;
    fx.config.write(
        "destinationrule.yaml",
        &lb_rule("consistentHash:\n  useSourceIp: true"),
    )?;
    let clients: Vec<_> = (0..6)
        .map(|i| {
            fx.add_pod(
                &format!("client-{i}"),
                3 + i,
                &[("app", "client")],
                &[],
                false,
            )
        })
        .collect::<Result<_>>()?;
    let _keel = fx.start_keel_strict()?;

    // Every connection from one pod (new source port each time) reaches the same backend.
    let mut pods = BTreeMap::new();
    for client in std::iter::once(&fx.sleep).chain(&clients) {
        let r = fx
            .agent
            .http_get(client, &reviews("/").count(12).new_conn())?;
        let pod = sole_pod(&format!("from {}", client.name), &r)?;
        // And again, on one keep-alive connection.
        let again = fx.agent.http_get(client, &reviews("/").count(5))?;
        ensure!(
            sole_pod(&format!("again from {}", client.name), &again)? == pod,
            "{} moved: {:?}",
            client.name,
            again.by_pod
        );
        pods.insert(client.name.clone(), pod);
    }
    let used: BTreeSet<&String> = pods.values().collect();
    ensure!(
        used.len() >= 2,
        "seven client pods (seven IPs) should not all hash to one backend: {pods:?}"
    );
    Ok(())
}

#[test]
fn hashed_routes_retry_on_the_same_host_unless_told_otherwise() -> Result<()> {
    // reviews-v1 and v2 serve; reviews-v3 is an endpoint where nothing listens.
    let mut fx = Fixture::reviews(PREFIX, 137, &["v1", "v2"])?;
    fx.add_pod(
        "reviews-v3",
        13,
        &[("app", "reviews"), ("version", "v3")],
        &[],
        false,
    )?;
    fx.config.write(
        "destinationrule.yaml",
        &lb_rule("consistentHash:\n  httpHeaderName: x-user"),
    )?;
    fx.config
        .write("virtualservice.yaml", &single_destination_vs(""))?;
    let _keel = fx.start_keel_strict()?;

    // Istio's default retry policy on a hashed single-destination route keeps no `previous_hosts`:
    // its retries go to the same dead pod, so keys hashed there fail; the others succeed.
    let keys = keys(24);
    let mut dead = Vec::new();
    for k in &keys {
        let r = fx.get(&reviews("/").header("x-user", k).count(2))?;
        match (r.status(200), r.status(503)) {
            (2, 0) => ensure!(r.by_pod.len() == 1, "{k}: {:?}", r.by_pod),
            (0, 2) => dead.push(k.clone()),
            _ => anyhow::bail!("{k}: all 200 or all 503 expected, got {:?}", r.by_status),
        }
    }
    ensure!(
        !dead.is_empty() && dead.len() < keys.len(),
        "some of 24 keys hash to the dead pod, not all: {dead:?}"
    );

    // `retryIgnorePreviousHosts: true` restores the predicate: the retry walks on along the ring.
    fx.config.write(
        "virtualservice.yaml",
        &single_destination_vs(
            "retries:\n  attempts: 2\n  retryOn: connect-failure\n  retryIgnorePreviousHosts: true",
        ),
    )?;
    let probe = dead[0].clone();
    wait_until(
        "the retry policy with retryIgnorePreviousHosts to apply",
        Duration::from_secs(10),
        || Ok(fx.get(&reviews("/").header("x-user", &probe))?.status(200) == 1),
    )?;
    for k in &dead {
        let r = fx.get(&reviews("/").header("x-user", k).count(3))?;
        sole_pod(&format!("{k} with retryIgnorePreviousHosts"), &r)?;
    }
    Ok(())
}

#[test]
fn passthrough_forwards_to_the_dialled_address() -> Result<()> {
    // A ServiceEntry whose address is reviews-v2's pod IP and whose endpoint is reviews-v1.
    let fx = Fixture::reviews(PREFIX, 138, &["v1", "v2"])?;
    let dialled = fx.reviews[1].ip;
    let endpoint = fx.reviews[0].ip;
    fx.config.write(
        "serviceentry.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: legacy\n  \
             namespace: default\nspec:\n  hosts: [legacy.example.com]\n  addresses: [{dialled}]\n  \
             resolution: STATIC\n  ports:\n  - {{number: 9080, name: http, protocol: HTTP}}\n  \
             endpoints:\n  - {{address: {endpoint}}}\n"
        ),
    )?;
    let _keel = fx.start_keel_strict()?;
    let legacy = HttpGet::new("http://legacy.example.com:9080/")
        .connect_to(std::net::SocketAddr::from((dialled, 9080)));

    // Without a DestinationRule the entry's endpoint serves.
    let r = fx.get(&legacy.clone().count(5))?;
    ensure!(
        sole_pod("the ServiceEntry's endpoint", &r)? == "reviews-v1",
        "{:?}",
        r.by_pod
    );

    // PASSTHROUGH: the dialled address, whatever the endpoints.
    fx.config.write(
        "destinationrule.yaml",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: legacy\n  \
         namespace: default\nspec:\n  host: legacy.example.com\n  trafficPolicy:\n    \
         loadBalancer: {simple: PASSTHROUGH}\n",
    )?;
    wait_until("PASSTHROUGH to apply", Duration::from_secs(10), || {
        Ok(fx.get(&legacy)?.by_pod.contains_key("reviews-v2"))
    })?;
    let r = fx.get(&legacy.clone().count(10))?;
    ensure!(
        sole_pod("PASSTHROUGH", &r)? == "reviews-v2",
        "{:?}",
        r.by_pod
    );
    Ok(())
}
