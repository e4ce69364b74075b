//! VirtualService `tls` rules: keel routes TLS by the ClientHello's SNI without terminating it, then
//! relays the untouched bytes (the backends' TLS servers complete the handshake with the client and
//! report the SNI they saw). Connections no rule matches take the service's default route, as Istio's
//! fallthrough chain does under `ALLOW_ANY`.
//!
//! Subnet indices 110..=119 belong to this file.

mod common;

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{ensure, Result};
use common::{records_from, vip, Fixture};
use keel_tests::config::service_yaml;
use keel_tests::{Keel, SvcPort, TlsClient, TlsClientReport};

const PREFIX: &str = "kttls";
/// The `secure` Service: VIP `10.96.0.50`, port 443 named `tls` (or `https`), backends on 8443.
const SECURE_LAST_OCTET: u8 = 50;
const SECURE_PORT: u16 = 443;
const BACKEND_PORT: u16 = 8443;
const SECURE_FQDN: &str = "secure.default.svc.cluster.local";

fn secure_vip() -> SocketAddr {
    vip(SECURE_LAST_OCTET, SECURE_PORT)
}

/// `sleep` plus `secure-v1` and `secure-v2` running `tls-server` on 8443 behind the `secure`
/// Service (port named `port_name`), a DestinationRule with subsets v1/v2, and `virtual_service`.
fn secure_fixture(index: u8, port_name: &str, virtual_service: &str) -> Result<Fixture> {
    let mut fx = Fixture::reviews(PREFIX, index, &[])?;
    for (i, v) in ["v1", "v2"].iter().enumerate() {
        let pod = fx.add_pod(
            &format!("secure-{v}"),
            u8::try_from(11 + i)?,
            &[("app", "secure"), ("version", v)],
            &[],
            false,
        )?;
        fx.servers.push(fx.agent.tls_server(&pod, BACKEND_PORT)?);
    }
    fx.add_service(service_yaml(
        "secure",
        "default",
        Ipv4Addr::new(10, 96, 0, SECURE_LAST_OCTET),
        &[SvcPort {
            name: port_name,
            port: SECURE_PORT,
            target_port: BACKEND_PORT,
        }],
        &[("app", "secure")],
    ))?;
    fx.config.write(
        "destination-rule.yaml",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: secure\n  \
         namespace: default\nspec:\n  host: secure\n  subsets:\n  - name: v1\n    labels: {version: v1}\n  \
         - name: v2\n    labels: {version: v2}\n",
    )?;
    fx.config.write("virtual-service.yaml", virtual_service)?;
    Ok(fx)
}

/// `a.example.com` -> v1, any other `*.example.com` -> v2.
const SNI_VIRTUAL_SERVICE: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: secure, namespace: default}
spec:
  hosts: [secure, \"*.example.com\"]
  tls:
  - match:
    - sniHosts: [a.example.com]
    route:
    - destination: {host: secure, subset: v1}
  - match:
    - sniHosts: [\"*.example.com\"]
    route:
    - destination: {host: secure, subset: v2}
";

/// Runs `req` from `sleep` and checks every connection was answered by a TLS handshake (or, with
/// `--plain`, a plain answer) whose server saw exactly the SNI sent.
fn run(fx: &Fixture, req: &TlsClient) -> Result<TlsClientReport> {
    let r = fx.agent.tls_client(&fx.sleep, req)?;
    ensure!(
        r.errors == 0 && !r.timed_out && r.answered == u64::from(req.count),
        "{} connections with SNI {:?} through keel: {r:?}",
        req.count,
        req.sni
    );
    let seen = match (&req.plain, &req.sni) {
        (Some(_), _) => "<plain>".to_string(),
        (None, Some(s)) => s.clone(),
        (None, None) => "<none>".to_string(),
    };
    ensure!(
        r.by_server_sni.get(&seen).copied() == Some(r.answered),
        "the backends must see the client's own ClientHello (SNI {seen}): {:?}",
        r.by_server_sni
    );
    Ok(r)
}

fn pods(r: &TlsClientReport) -> Vec<(&str, u64)> {
    r.by_pod.iter().map(|(k, v)| (k.as_str(), *v)).collect()
}

/// Every connection of `r` is recorded as `tls` to the secure Service from `default/sleep`.
fn ensure_tls_records(keel: &Keel, r: &TlsClientReport) -> Result<()> {
    let records = keel.connections()?;
    let ours = records_from(&records, &r.local_addrs);
    ensure!(
        ours.len() == r.local_addrs.len(),
        "one record per connection expected: {ours:?}"
    );
    for rec in ours {
        ensure!(
            rec.protocol == "tls"
                && rec.service == SECURE_FQDN
                && rec.original_dst == secure_vip().to_string()
                && rec.source_pod == "default/sleep",
            "{rec:?}"
        );
    }
    Ok(())
}

#[test]
fn sni_hosts_choose_the_subset_and_other_names_take_the_default_route() -> Result<()> {
    let fx = secure_fixture(110, "tls", SNI_VIRTUAL_SERVICE)?;
    let keel = fx.start_keel()?;

    let a = run(
        &fx,
        &TlsClient::new(secure_vip(), Some("a.example.com")).count(30),
    )?;
    ensure!(pods(&a) == [("secure-v1", 30)], "a.example.com: {a:?}");
    ensure!(
        a.by_tls_version.get("TLSv1_3") == Some(&30),
        "the client and the backend negotiate TLS 1.3 end to end: {:?}",
        a.by_tls_version
    );
    ensure_tls_records(&keel, &a)?;

    // The wildcard covers any name under example.com, at any depth.
    for name in ["b.example.com", "x.y.example.com"] {
        let r = run(&fx, &TlsClient::new(secure_vip(), Some(name)).count(30))?;
        ensure!(pods(&r) == [("secure-v2", 30)], "{name}: {r:?}");
    }

    // No rule matches: the service's default route, balanced over both versions.
    for sni in [Some("other.org"), Some("example.com"), None] {
        let r = run(&fx, &TlsClient::new(secure_vip(), sni).count(40))?;
        let (v1, v2) = (
            r.by_pod.get("secure-v1").copied().unwrap_or(0),
            r.by_pod.get("secure-v2").copied().unwrap_or(0),
        );
        ensure!(
            v1 > 0 && v2 > 0 && v1 + v2 == 40,
            "SNI {sni:?} matches no rule and must reach both versions: {r:?}"
        );
    }
    Ok(())
}

#[test]
fn an_https_port_is_routed_by_sni_too() -> Result<()> {
    let fx = secure_fixture(111, "https", SNI_VIRTUAL_SERVICE)?;
    let keel = fx.start_keel()?;
    let a = run(
        &fx,
        &TlsClient::new(secure_vip(), Some("a.example.com")).count(20),
    )?;
    ensure!(pods(&a) == [("secure-v1", 20)], "{a:?}");
    let b = run(
        &fx,
        &TlsClient::new(secure_vip(), Some("b.example.com")).count(20),
    )?;
    ensure!(pods(&b) == [("secure-v2", 20)], "{b:?}");
    ensure_tls_records(&keel, &b)?;
    Ok(())
}

#[test]
fn weighted_tls_route_splits_connections() -> Result<()> {
    const CONNECTIONS: u32 = 500;
    let vs = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: secure, namespace: default}
spec:
  hosts: [secure, a.example.com]
  tls:
  - match:
    - sniHosts: [a.example.com]
    route:
    - destination: {host: secure, subset: v1}
      weight: 80
    - destination: {host: secure, subset: v2}
      weight: 20
";
    let fx = secure_fixture(112, "tls", vs)?;
    let _keel = fx.start_keel()?;
    let r = run(
        &fx,
        &TlsClient::new(secure_vip(), Some("a.example.com")).count(CONNECTIONS),
    )?;
    let v1 = r.by_pod.get("secure-v1").copied().unwrap_or(0);
    let v2 = r.by_pod.get("secure-v2").copied().unwrap_or(0);
    // Binomial(500, 0.8): mean 400, sigma ~8.94; +-5 sigma is 356..=444.
    let n = f64::from(CONNECTIONS);
    let (mean, sigma) = (0.8 * n, (n * 0.8 * 0.2).sqrt());
    let (lo, hi) = ((mean - 5.0 * sigma).ceil(), (mean + 5.0 * sigma).floor());
    eprintln!(
        "80/20 tls split over {CONNECTIONS} connections: v1 {v1}, v2 {v2} (v1 allowed {lo}..={hi})"
    );
    ensure!(
        v1 + v2 == u64::from(CONNECTIONS) && (lo..=hi).contains(&(v1 as f64)),
        "80/20 over {CONNECTIONS} connections: v1 {v1}, v2 {v2}, v1 must be in {lo}..={hi}"
    );
    Ok(())
}

/// Istio's TLS listener treats bytes that are not a ClientHello as a connection without SNI: no
/// `tls` rule matches, so the fallthrough chain relays them (to the original destination under
/// `ALLOW_ANY`, which a node proxy serves through the service's default route). Keel relays them
/// unchanged instead of closing, so a client that speaks something else still reaches the service.
#[test]
fn non_tls_bytes_on_a_tls_port_are_relayed_on_the_default_route() -> Result<()> {
    let fx = secure_fixture(113, "tls", SNI_VIRTUAL_SERVICE)?;
    let keel = fx.start_keel()?;
    let line = "GET / HTTP/1.1 (this is not a ClientHello)";
    let r = run(
        &fx,
        &TlsClient::new(secure_vip(), None).plain(line).count(30),
    )?;
    let (v1, v2) = (
        r.by_pod.get("secure-v1").copied().unwrap_or(0),
        r.by_pod.get("secure-v2").copied().unwrap_or(0),
    );
    ensure!(v1 > 0 && v2 > 0 && v1 + v2 == 30, "{r:?}");
    ensure!(
        r.last_line.as_ref().and_then(|l| l.plain.as_deref()) == Some(line),
        "the backend must receive the client's bytes unchanged: {:?}",
        r.last_line
    );
    ensure_tls_records(&keel, &r)?;
    Ok(())
}

#[test]
fn a_client_hello_split_across_segments_still_routes() -> Result<()> {
    let fx = secure_fixture(114, "tls", SNI_VIRTUAL_SERVICE)?;
    let _keel = fx.start_keel()?;
    for (name, chunk, want) in [
        ("a.example.com", 40, "secure-v1"),
        ("b.example.com", 7, "secure-v2"),
    ] {
        let r = run(
            &fx,
            &TlsClient::new(secure_vip(), Some(name))
                .split(chunk)
                .count(5),
        )?;
        ensure!(
            pods(&r) == [(want, 5)],
            "{name} in {chunk}-byte pieces: {r:?}"
        );
        ensure!(
            r.first_flight_writes >= 3,
            "the ClientHello must really go out in pieces: {} writes",
            r.first_flight_writes
        );
    }
    Ok(())
}
