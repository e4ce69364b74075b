//! Per-client views through the real pod network: different client pods on the same node dial the
//! same Service VIP and get the routing their own sidecar would give them (`exportTo`, short names,
//! DestinationRule lookup order, `sourceLabels`/`sourceNamespace`, `Sidecar` egress and the outbound
//! traffic policy). Which backend answered is read from the echo body's `version`.
//!
//! Subnet indices 70..=79 belong to this file.

mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use anyhow::{ensure, Context, Result};
use common::{
    ensure_all_ok_via_proxy, records_from, reviews_destination_rule, reviews_vip, Fixture,
    REVIEWS_FQDN, REVIEWS_PORT, REVIEWS_URL,
};
use keel_tests::config::service_yaml;
use keel_tests::{HttpGetReport, Keel, Pod, PodNet, SvcPort};

const PREFIX: &str = "ktviews";
/// Requests per client and destination.
const SAMPLE: u32 = 200;
/// Requests for paths that are expected to fail.
const FAILING_SAMPLE: u32 = 5;
/// Under the default route every version must get at least this share (the balancer spreads
/// sequential requests almost evenly, so 2 or 3 versions each get ~50% / ~33%).
const MIN_SPREAD_SHARE: f64 = 0.10;

/// `http://reviews.default:9080/`: how a client outside `default` names the reviews Service.
const REVIEWS_DEFAULT_URL: &str = "http://reviews.default:9080/";

/// `reviews` in namespace `other` (short-name test).
const OTHER_REVIEWS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 21);
/// `local` in namespace `restricted` (Sidecar tests).
const LOCAL_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 22);

fn addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

/// The header of an Istio networking resource.
fn meta(kind: &str, name: &str, namespace: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: {kind}\nmetadata:\n  name: {name}\n  \
         namespace: {namespace}\n"
    )
}

/// Every request answered 200 through the proxy, all by `version`.
fn ensure_only(r: &HttpGetReport, net: &PodNet, version: &str) -> Result<()> {
    ensure_all_ok_via_proxy(r, net)?;
    ensure!(
        r.by_version.len() == 1 && r.by_version.get(version) == Some(&r.requested),
        "expected all {} responses from {version}, got {:?}",
        r.requested,
        r.by_version
    );
    Ok(())
}

/// Every request answered 200 through the proxy, only by `versions`, each with a fair share: the
/// default route (the whole service, balanced).
fn ensure_spread(r: &HttpGetReport, net: &PodNet, versions: &[&str]) -> Result<()> {
    ensure_all_ok_via_proxy(r, net)?;
    let got: BTreeSet<&str> = r.by_version.keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = versions.iter().copied().collect();
    ensure!(
        got == want,
        "default route: expected answers from exactly {want:?}, got {:?}",
        r.by_version
    );
    for v in versions {
        ensure!(
            r.version_share(v) >= MIN_SPREAD_SHARE,
            "default route: {v} got only {:.1}% ({:?})",
            100.0 * r.version_share(v),
            r.by_version
        );
    }
    Ok(())
}

/// Every request got `status` from keel itself (no backend body).
fn ensure_local_status(r: &HttpGetReport, status: u16) -> Result<()> {
    ensure!(
        r.errors == 0 && !r.timed_out && r.status(status) == r.requested,
        "expected {} x {status}, got {r:?}",
        r.requested
    );
    ensure!(
        r.by_version.keys().all(|v| v == "<none>"),
        "no backend may answer: {:?}",
        r.by_version
    );
    Ok(())
}

/// keel attributed the report's connections to `pod` (`namespace/name`) and classified the
/// destination as `service`.
fn ensure_attributed(keel: &Keel, r: &HttpGetReport, pod: &str, service: &str) -> Result<()> {
    let records = keel.connections()?;
    let ours = records_from(&records, &r.local_addrs);
    ensure!(
        !ours.is_empty(),
        "no /debug/connections entry for {:?}: {records:?}",
        r.local_addrs
    );
    for rec in ours {
        ensure!(
            rec.source_pod == pod && rec.service == service,
            "expected {pod} -> {service}: {rec:?}"
        );
    }
    Ok(())
}

/// A `sleep`-like client pod in `namespace`.
fn client(fx: &mut Fixture, namespace: &str, name: &str, suffix: u8, app: &str) -> Result<Pod> {
    fx.add_pod_in(namespace, name, suffix, &[("app", app)])
}

/// `exportTo: ["."]` on a VirtualService in `default`: only clients in `default` get its routes; a
/// client in `other` gets the default route for the same VIP.
#[test]
fn export_to_dot_virtual_service_applies_only_in_its_namespace() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 70, &["v1", "v2"])?;
    let other = client(&mut fx, "other", "sleep", 3, "sleep")?;
    fx.config.write(
        "destinationrule.yaml",
        &reviews_destination_rule(&["v1", "v2"]),
    )?;
    fx.config.write(
        "virtualservice.yaml",
        &format!(
            "{}spec:\n  exportTo:\n  - \".\"\n  hosts:\n  - reviews\n  http:\n  - route:\n    \
             - destination:\n        host: reviews\n        subset: v2\n",
            meta("VirtualService", "reviews", "default")
        ),
    )?;
    let keel = fx.start_keel()?;

    let own = fx.get_from(&fx.sleep, REVIEWS_URL, reviews_vip(), SAMPLE)?;
    ensure_only(&own, &fx.net, "v2").context("default/sleep sees the VirtualService")?;
    ensure_attributed(&keel, &own, "default/sleep", REVIEWS_FQDN)?;

    let foreign = fx.get_from(&other, REVIEWS_DEFAULT_URL, reviews_vip(), SAMPLE)?;
    ensure_spread(&foreign, &fx.net, &["v1", "v2"])
        .context("other/sleep must not see a VirtualService exported to \".\" of default")?;
    ensure_attributed(&keel, &foreign, "other/sleep", REVIEWS_FQDN)?;
    Ok(())
}

/// A VirtualService in `other` whose host is the FQDN of `reviews.default`, exported to `*`, is the
/// routing of every client for that Service (there is none in `default`).
#[test]
fn fqdn_virtual_service_in_another_namespace_applies_everywhere() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 71, &["v1", "v2"])?;
    let other = client(&mut fx, "other", "sleep", 3, "sleep")?;
    let third = client(&mut fx, "third", "sleep", 4, "sleep")?;
    fx.config.write(
        "destinationrule.yaml",
        &reviews_destination_rule(&["v1", "v2"]),
    )?;
    fx.config.write(
        "virtualservice.yaml",
        &format!(
            "{}spec:\n  exportTo:\n  - \"*\"\n  hosts:\n  - {REVIEWS_FQDN}\n  http:\n  - route:\n    \
             - destination:\n        host: {REVIEWS_FQDN}\n        subset: v2\n",
            meta("VirtualService", "reviews-from-other", "other")
        ),
    )?;
    let _keel = fx.start_keel()?;

    let r = fx.get_from(&fx.sleep, REVIEWS_URL, reviews_vip(), SAMPLE)?;
    ensure_only(&r, &fx.net, "v2").context("default/sleep")?;
    let r = fx.get_from(&other, REVIEWS_DEFAULT_URL, reviews_vip(), SAMPLE)?;
    ensure_only(&r, &fx.net, "v2").context("other/sleep")?;
    let r = fx.get_from(&third, REVIEWS_DEFAULT_URL, reviews_vip(), SAMPLE)?;
    ensure_only(&r, &fx.net, "v2").context("third/sleep")?;
    Ok(())
}

/// A VirtualService in `other` with the short host `reviews` is for `reviews.other`, never for
/// `reviews.default`: it sends `reviews.other` traffic to `reviews.default` v3 for every client,
/// while `reviews.default` keeps its default route (and its endpoints stay in its own namespace,
/// although the pod behind `reviews.other` has the same `app: reviews` label).
#[test]
fn short_host_names_the_virtual_service_namespace() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 72, &["v1", "v2", "v3"])?;
    let other = client(&mut fx, "other", "sleep", 3, "sleep")?;
    fx.add_http_backend(
        "other",
        "reviews-o1",
        21,
        REVIEWS_PORT,
        "o1",
        &[("app", "reviews"), ("version", "o1")],
    )?;
    fx.add_service(service_yaml(
        "reviews",
        "other",
        OTHER_REVIEWS_IP,
        &[SvcPort {
            name: "http",
            port: REVIEWS_PORT,
            target_port: REVIEWS_PORT,
        }],
        &[("app", "reviews")],
    ))?;
    fx.config.write(
        "destinationrule.yaml",
        &reviews_destination_rule(&["v1", "v2", "v3"]),
    )?;
    fx.config.write(
        "virtualservice.yaml",
        &format!(
            "{}spec:\n  exportTo:\n  - \"*\"\n  hosts:\n  - reviews\n  http:\n  - route:\n    \
             - destination:\n        host: {REVIEWS_FQDN}\n        subset: v3\n",
            meta("VirtualService", "reviews", "other")
        ),
    )?;
    let _keel = fx.start_keel()?;
    let other_vip = addr(OTHER_REVIEWS_IP, REVIEWS_PORT);

    // The VirtualService is in force for reviews.other, for its own namespace and beyond.
    let r = fx.get_from(&other, REVIEWS_URL, other_vip, SAMPLE)?;
    ensure_only(&r, &fx.net, "v3").context("other/sleep -> reviews.other")?;
    let r = fx.get_from(&fx.sleep, "http://reviews.other:9080/", other_vip, SAMPLE)?;
    ensure_only(&r, &fx.net, "v3").context("default/sleep -> reviews.other")?;

    // ... and not for reviews.default, whoever asks.
    let r = fx.get_from(&other, REVIEWS_DEFAULT_URL, reviews_vip(), SAMPLE)?;
    ensure_spread(&r, &fx.net, &["v1", "v2", "v3"]).context("other/sleep -> reviews.default")?;
    let r = fx.get_from(&fx.sleep, REVIEWS_URL, reviews_vip(), SAMPLE)?;
    ensure_spread(&r, &fx.net, &["v1", "v2", "v3"]).context("default/sleep -> reviews.default")?;
    Ok(())
}

/// DestinationRule lookup (§2.0): the client's namespace first, then the service's namespace; a rule
/// in a third namespace is never used, even exported to `*`. One VirtualService (in `other`, exported
/// everywhere) routes to subset `s`; `s` is v2 in `other`'s rule and v1 in `default`'s.
#[test]
fn destination_rule_lookup_client_namespace_then_service_namespace() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 73, &["v1", "v2"])?;
    let other = client(&mut fx, "other", "sleep", 3, "sleep")?;
    let third = client(&mut fx, "third", "sleep", 4, "sleep")?;
    let subset_s =
        |version: &str| format!("  subsets:\n  - name: s\n    labels:\n      version: {version}\n");
    fx.config.write(
        "destinationrules.yaml",
        &format!(
            "{}spec:\n  host: {REVIEWS_FQDN}\n  exportTo:\n  - \"*\"\n{}---\n{}spec:\n  host: reviews\n{}",
            meta("DestinationRule", "reviews-client-side", "other"),
            subset_s("v2"),
            meta("DestinationRule", "reviews", "default"),
            subset_s("v1"),
        ),
    )?;
    fx.config.write(
        "virtualservice.yaml",
        &format!(
            "{}spec:\n  exportTo:\n  - \"*\"\n  hosts:\n  - {REVIEWS_FQDN}\n  http:\n  - route:\n    \
             - destination:\n        host: {REVIEWS_FQDN}\n        subset: s\n",
            meta("VirtualService", "reviews-s", "other")
        ),
    )?;
    let _keel = fx.start_keel()?;

    let r = fx.get_from(&other, REVIEWS_DEFAULT_URL, reviews_vip(), SAMPLE)?;
    ensure_only(&r, &fx.net, "v2").context("other/sleep: its own namespace's rule")?;
    let r = fx.get_from(&fx.sleep, REVIEWS_URL, reviews_vip(), SAMPLE)?;
    ensure_only(&r, &fx.net, "v1").context("default/sleep: the service namespace's rule")?;
    let r = fx.get_from(&third, REVIEWS_DEFAULT_URL, reviews_vip(), SAMPLE)?;
    ensure_only(&r, &fx.net, "v1")
        .context("third/sleep: the service namespace's rule, never other's")?;
    Ok(())
}

/// A VirtualService whose only rule matches `sourceLabels: {app: canary-client}`: matching clients
/// (in any namespace) get v3; for every other client the rule does not exist, so the VirtualService
/// leaves it nothing and it gets the default route (all versions), not a 404.
#[test]
fn source_labels_only_virtual_service_falls_back_to_default_route() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 74, &["v1", "v2", "v3"])?;
    let canary = client(&mut fx, "default", "canary", 3, "canary-client")?;
    let other_canary = client(&mut fx, "other", "canary", 4, "canary-client")?;
    fx.config.write(
        "destinationrule.yaml",
        &reviews_destination_rule(&["v1", "v2", "v3"]),
    )?;
    fx.config.write(
        "virtualservice.yaml",
        &format!(
            "{}spec:\n  hosts:\n  - reviews\n  http:\n  - match:\n    - sourceLabels:\n        \
             app: canary-client\n    route:\n    - destination:\n        host: reviews\n        \
             subset: v3\n",
            meta("VirtualService", "reviews", "default")
        ),
    )?;
    let _keel = fx.start_keel()?;

    let r = fx.get_from(&canary, REVIEWS_URL, reviews_vip(), SAMPLE)?;
    ensure_only(&r, &fx.net, "v3").context("default/canary")?;
    let r = fx.get_from(&other_canary, REVIEWS_DEFAULT_URL, reviews_vip(), SAMPLE)?;
    ensure_only(&r, &fx.net, "v3").context("other/canary")?;
    let r = fx.get_from(&fx.sleep, REVIEWS_URL, reviews_vip(), SAMPLE)?;
    ensure_spread(&r, &fx.net, &["v1", "v2", "v3"]).context("default/sleep")?;
    Ok(())
}

/// Static conditions (`sourceLabels`, `sourceNamespace`) remove rules per client, but a client that
/// keeps any rule is bound to the VirtualService: when none of its rules matches a request the answer
/// is 404 (`NR`), not the default route.
#[test]
fn source_conditions_select_rules_per_client_and_leftover_rules_404() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 75, &["v1", "v2", "v3"])?;
    let canary = client(&mut fx, "default", "canary", 3, "canary-client")?;
    let other = client(&mut fx, "other", "sleep", 4, "sleep")?;
    fx.config.write(
        "destinationrule.yaml",
        &reviews_destination_rule(&["v1", "v2", "v3"]),
    )?;
    let to = |subset: &str| {
        format!("    route:\n    - destination:\n        host: reviews\n        subset: {subset}\n")
    };
    fx.config.write(
        "virtualservice.yaml",
        &format!(
            "{}spec:\n  hosts:\n  - reviews\n  http:\n  \
             - match:\n    - sourceLabels:\n        app: canary-client\n{}  \
             - match:\n    - sourceNamespace: other\n{}  \
             - match:\n    - headers:\n        x-route:\n          exact: v1\n{}",
            meta("VirtualService", "reviews", "default"),
            to("v3"),
            to("v2"),
            to("v1"),
        ),
    )?;
    let _keel = fx.start_keel()?;
    let with_header = |pod: &Pod| {
        fx.agent.http_get(
            pod,
            &keel_tests::HttpGet::new(REVIEWS_URL)
                .connect_to(reviews_vip())
                .count(SAMPLE)
                .header("x-route", "v1"),
        )
    };

    // The canary's first rule matches every request, header or not.
    let r = fx.get_from(&canary, REVIEWS_URL, reviews_vip(), SAMPLE)?;
    ensure_only(&r, &fx.net, "v3").context("default/canary")?;
    ensure_only(&with_header(&canary)?, &fx.net, "v3").context("default/canary with x-route")?;
    // other/sleep: the sourceNamespace rule.
    let r = fx.get_from(&other, REVIEWS_DEFAULT_URL, reviews_vip(), SAMPLE)?;
    ensure_only(&r, &fx.net, "v2").context("other/sleep")?;
    // default/sleep keeps only the header rule.
    ensure_only(&with_header(&fx.sleep)?, &fx.net, "v1").context("default/sleep with x-route")?;
    let r = fx.get_from(&fx.sleep, REVIEWS_URL, reviews_vip(), FAILING_SAMPLE)?;
    ensure_local_status(&r, 404).context("default/sleep without x-route: no rule matches")?;
    Ok(())
}

/// Services, pods and a `Sidecar` for the egress tests: `restricted/local` (10.96.0.22:9080, backend
/// version `local-v1`) and the Sidecar that imports only the client's own namespace.
fn restricted_namespace(fx: &mut Fixture) -> Result<()> {
    fx.add_http_backend(
        "restricted",
        "local-v1",
        21,
        REVIEWS_PORT,
        "local-v1",
        &[("app", "local")],
    )?;
    fx.add_service(service_yaml(
        "local",
        "restricted",
        LOCAL_IP,
        &[SvcPort {
            name: "http",
            port: REVIEWS_PORT,
            target_port: REVIEWS_PORT,
        }],
        &[("app", "local")],
    ))?;
    Ok(())
}

/// The selector-less Sidecar of `restricted`: egress only to its own namespace.
fn own_namespace_sidecar() -> String {
    format!(
        "{}spec:\n  egress:\n  - hosts:\n    - \"./*\"\n",
        meta("Sidecar", "default", "restricted")
    )
}

/// `Sidecar` egress `./*` in `restricted` under mesh `ALLOW_ANY`: `reviews.default` is not imported,
/// so for that client it is unknown traffic and passes through to the original destination, the
/// VIP itself. In this network the VIP is blackholed (there is no kube-proxy), so the passthrough
/// connect fails and keel answers 503 (`UF`, no retries on passthrough): the reviews backends are not
/// reached through keel's routing. A second, label-selected Sidecar with `REGISTRY_ONLY` gives its
/// client 502 (`block_all`) instead. The same VIP still serves `default/sleep`, and the restricted
/// clients still reach their own namespace's service.
#[test]
fn sidecar_egress_scope_makes_unimported_services_unknown_per_client() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 76, &["v1"])?;
    let restricted = client(&mut fx, "restricted", "sleep", 3, "sleep")?;
    let locked = client(&mut fx, "restricted", "locked", 4, "locked")?;
    restricted_namespace(&mut fx)?;
    fx.config.write(
        "sidecars.yaml",
        &format!(
            "{}---\n{}spec:\n  workloadSelector:\n    labels:\n      app: locked\n  egress:\n  \
             - hosts:\n    - \"./*\"\n  outboundTrafficPolicy:\n    mode: REGISTRY_ONLY\n",
            own_namespace_sidecar(),
            meta("Sidecar", "locked", "restricted"),
        ),
    )?;
    let keel = fx.start_keel()?;
    let local_vip = addr(LOCAL_IP, REVIEWS_PORT);

    let r = fx.get_from(&fx.sleep, REVIEWS_URL, reviews_vip(), SAMPLE)?;
    ensure_only(&r, &fx.net, "v1").context("default/sleep has no Sidecar")?;

    let r = fx.get_from(
        &restricted,
        REVIEWS_DEFAULT_URL,
        reviews_vip(),
        FAILING_SAMPLE,
    )?;
    ensure_local_status(&r, 503)
        .context("restricted/sleep -> reviews.default: passthrough to the blackholed VIP")?;
    ensure_attributed(&keel, &r, "restricted/sleep", "PassthroughCluster")?;
    let r = fx.get_from(&restricted, "http://local:9080/", local_vip, SAMPLE)?;
    ensure_only(&r, &fx.net, "local-v1").context("restricted/sleep -> its own namespace")?;

    let r = fx.get_from(&locked, REVIEWS_DEFAULT_URL, reviews_vip(), FAILING_SAMPLE)?;
    ensure_local_status(&r, 502).context("restricted/locked -> reviews.default: REGISTRY_ONLY")?;
    ensure_attributed(&keel, &r, "restricted/locked", "BlackHoleCluster")?;
    let r = fx.get_from(&locked, "http://local:9080/", local_vip, SAMPLE)?;
    ensure_only(&r, &fx.net, "local-v1").context("restricted/locked -> its own namespace")?;
    Ok(())
}

/// Mesh-wide `REGISTRY_ONLY` (keel MeshConfig) with the `./*` Sidecar in `restricted`: the restricted
/// client gets a direct 502 for `reviews.default` while `default/sleep` is served from the same VIP.
#[test]
fn mesh_registry_only_blocks_services_outside_the_sidecar_scope() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 77, &["v1", "v2"])?;
    let restricted = client(&mut fx, "restricted", "sleep", 3, "sleep")?;
    restricted_namespace(&mut fx)?;
    fx.config.write("sidecar.yaml", &own_namespace_sidecar())?;
    fx.config.write(
        "mesh.yaml",
        "apiVersion: keel.io/v1alpha1\nkind: MeshConfig\nmetadata:\n  name: keel\nspec:\n  \
         outboundTrafficPolicy:\n    mode: REGISTRY_ONLY\n",
    )?;
    let keel = fx.start_keel()?;

    let r = fx.get_from(&fx.sleep, REVIEWS_URL, reviews_vip(), SAMPLE)?;
    ensure_spread(&r, &fx.net, &["v1", "v2"]).context("default/sleep")?;

    let r = fx.get_from(
        &restricted,
        REVIEWS_DEFAULT_URL,
        reviews_vip(),
        FAILING_SAMPLE,
    )?;
    ensure_local_status(&r, 502).context("restricted/sleep -> reviews.default")?;
    ensure_attributed(&keel, &r, "restricted/sleep", "BlackHoleCluster")?;
    let r = fx.get_from(
        &restricted,
        "http://local:9080/",
        addr(LOCAL_IP, REVIEWS_PORT),
        SAMPLE,
    )?;
    ensure_only(&r, &fx.net, "local-v1").context("restricted/sleep -> its own namespace")?;
    Ok(())
}
