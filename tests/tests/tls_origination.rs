//! DestinationRule `trafficPolicy.tls`: keel originates TLS to the endpoints (istio-semantics §2.5).
//! The client pod speaks plain HTTP to the `reviews` VIP; the backend is `http-server` over TLS with
//! a certificate from a throwaway CA ([`TestPki`]) and answers with the SNI it saw (`x-sni`) and
//! whether the client sent a certificate (`x-client-cert`). A failed verification must give Envoy's
//! 503 (`… reset reason: connection failure, transport failure reason: …`, flag `UF`) and never reach
//! the backend.
//!
//! Subnet indices 120..=124 belong to this file.

mod common;

use anyhow::{ensure, Context, Result};
use common::{reviews_vip, Fixture, REVIEWS_FQDN, REVIEWS_PORT};
use keel_tests::{HttpGet, HttpGetReport, HttpServerOpts, Keel, KeelOptions, ServerTls, TestPki};

const PREFIX: &str = "kttlso";
/// What the client asks for: `http://reviews:9080/`, so the authority host (auto SNI) is `reviews`.
const URL: &str = "http://reviews:9080/tls";
/// The name a `sni:` override sends (also in the server certificate).
const SNI_OVERRIDE: &str = "reviews.tls.example";
/// How every Envoy connect-failure body starts.
const RESET_PREFIX: &str = "upstream connect error or disconnect/reset before headers. ";
/// The backend pod.
const BACKEND: &str = "reviews-v1";

/// `sleep` and one TLS backend `reviews-v1` behind `reviews:9080`, its certificate valid for
/// `reviews`, the Service FQDN and [`SNI_OVERRIDE`]; `require_client_cert`: the backend accepts
/// only clients with a certificate from the test CA. PEM files live in `<config>/pki` (not YAML, so
/// keel does not load them as config).
fn tls_fixture(index: u8, require_client_cert: bool) -> Result<(Fixture, TestPki)> {
    let mut fx = Fixture::reviews(PREFIX, index, &[])?;
    let dir = fx.config.path().join("pki");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let pki = TestPki::write(&dir, &["reviews", REVIEWS_FQDN, SNI_OVERRIDE])?;
    let opts = HttpServerOpts {
        tls: Some(ServerTls {
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
            client_ca: require_client_cert.then(|| pki.ca.clone()),
        }),
        ..HttpServerOpts::default()
    };
    fx.add_logged_backend(
        BACKEND,
        11,
        REVIEWS_PORT,
        "v1",
        &[("app", "reviews"), ("version", "v1")],
        opts,
    )?;
    Ok((fx, pki))
}

/// A DestinationRule for `reviews` with `tls` (a YAML flow mapping).
fn destination_rule(tls: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: reviews\n  \
         namespace: default\nspec:\n  host: reviews\n  trafficPolicy:\n    tls: {tls}\n"
    )
}

/// Keel with debug logs of `keel::l7`, whose `request finished` lines carry the response flags.
fn start_keel(fx: &Fixture) -> Result<Keel> {
    let out = keel_tests::keel::validate(fx.config.path())?;
    ensure!(
        out.code == Some(0),
        "keel rejects this config:\n{}",
        out.combined().trim()
    );
    let mut opts = KeelOptions::new(&fx.net, fx.config.path())?;
    opts.log_filter = Some("info,keel::l7=debug".into());
    Keel::start_with(&fx.net, opts)
}

fn get_once(fx: &Fixture) -> Result<HttpGetReport> {
    fx.get(&HttpGet::new(URL).connect_to(reviews_vip()))
}

fn header<'a>(r: &'a HttpGetReport, name: &str) -> Option<&'a str> {
    r.last_headers
        .get(name)
        .and_then(|v| v.first())
        .map(String::as_str)
}

/// One 200 from the backend, over TLS, with the SNI and client-certificate answers given.
fn ensure_tls_answer(what: &str, r: &HttpGetReport, sni: &str, client_cert: &str) -> Result<()> {
    ensure!(
        r.responses == 1 && r.status(200) == 1,
        "{what}: expected 200 from the TLS backend, got {:?} {:?} (error {:?})",
        r.by_status,
        r.last_text,
        r.first_error
    );
    let pod = r.last_body.as_ref().map(|b| b.pod.as_str());
    ensure!(pod == Some(BACKEND), "{what}: answered by {pod:?}");
    ensure!(
        header(r, "x-sni") == Some(sni),
        "{what}: the backend saw SNI {:?}, expected {sni:?}",
        header(r, "x-sni")
    );
    ensure!(
        header(r, "x-client-cert") == Some(client_cert),
        "{what}: client certificate {:?}, expected {client_cert:?}",
        header(r, "x-client-cert")
    );
    Ok(())
}

/// A 503 whose body is Envoy's connect failure with a TLS transport failure reason containing
/// `reason`, flagged `UF` in keel's log, and no request at the backend.
fn ensure_tls_failure(
    what: &str,
    fx: &Fixture,
    keel: &Keel,
    r: &HttpGetReport,
    reason: &str,
) -> Result<()> {
    let body = r.last_text.as_deref().unwrap_or_default();
    ensure!(
        r.responses == 1 && r.status(503) == 1,
        "{what}: expected 503, got {:?} {body:?} (error {:?})",
        r.by_status,
        r.first_error
    );
    ensure!(
        body.starts_with(RESET_PREFIX),
        "{what}: body {body:?} is not Envoy's connect-failure body"
    );
    ensure!(
        body.contains("reset reason: connection failure, transport failure reason: TLS_error:")
            && body.contains(reason),
        "{what}: body {body:?} lacks the transport failure reason {reason:?}"
    );
    let logged = without_ansi(&keel.stderr());
    ensure!(
        logged.lines().any(|l| l.contains("request finished")
            && l.contains("status=503")
            && l.contains("flags=UF")),
        "{what}: no 503 with flag UF in keel's log:\n{logged}"
    );
    let reached = fx.log(BACKEND)?.read()?;
    ensure!(
        reached.is_empty(),
        "{what}: {} request(s) reached the backend through a failed handshake",
        reached.len()
    );
    Ok(())
}

/// `text` without ANSI colour sequences (`ESC [ ... m`), as keel's log writes field names.
fn without_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn simple_originates_tls_with_the_authority_as_sni() -> Result<()> {
    let (fx, pki) = tls_fixture(120, false)?;
    fx.config.write(
        "destination-rule.yaml",
        &destination_rule(&format!(
            "{{mode: SIMPLE, caCertificates: {}}}",
            pki.ca.display()
        )),
    )?;
    let _keel = start_keel(&fx)?;
    let r = get_once(&fx)?;
    // Istio's auto SNI: the Host header's host, verified against the certificate's SANs.
    ensure_tls_answer("SIMPLE", &r, "reviews", "absent")?;
    let records = fx.log(BACKEND)?.read()?;
    ensure!(
        records.len() == 1 && records[0].path == "/tls",
        "the backend logged {records:?}"
    );
    Ok(())
}

#[test]
fn mutual_presents_the_client_certificate() -> Result<()> {
    let (fx, pki) = tls_fixture(121, true)?;
    fx.config.write(
        "destination-rule.yaml",
        &destination_rule(&format!(
            "{{mode: MUTUAL, clientCertificate: {}, privateKey: {}, caCertificates: {}}}",
            pki.client_cert.display(),
            pki.client_key.display(),
            pki.ca.display()
        )),
    )?;
    let _keel = start_keel(&fx)?;
    let r = get_once(&fx)?;
    ensure_tls_answer("MUTUAL", &r, "reviews", "present")?;
    Ok(())
}

#[test]
fn a_server_certificate_from_another_ca_gives_envoys_503() -> Result<()> {
    let (fx, pki) = tls_fixture(122, false)?;
    fx.config.write(
        "destination-rule.yaml",
        &destination_rule(&format!(
            "{{mode: SIMPLE, caCertificates: {}}}",
            pki.other_ca.display()
        )),
    )?;
    let keel = start_keel(&fx)?;
    let r = get_once(&fx)?;
    ensure_tls_failure("wrong CA", &fx, &keel, &r, "CERTIFICATE_VERIFY_FAILED")?;
    Ok(())
}

#[test]
fn sni_override_reaches_the_server() -> Result<()> {
    let (fx, pki) = tls_fixture(123, false)?;
    fx.config.write(
        "destination-rule.yaml",
        &destination_rule(&format!(
            "{{mode: SIMPLE, caCertificates: {}, sni: {SNI_OVERRIDE}}}",
            pki.ca.display()
        )),
    )?;
    let _keel = start_keel(&fx)?;
    let r = get_once(&fx)?;
    ensure_tls_answer("sni override", &r, SNI_OVERRIDE, "absent")?;
    Ok(())
}

#[test]
fn subject_alt_names_must_name_the_server() -> Result<()> {
    let (fx, pki) = tls_fixture(124, false)?;
    // The certificate is valid for `reviews` (the authority), but not for the listed SAN: the list
    // replaces the host check.
    fx.config.write(
        "destination-rule.yaml",
        &destination_rule(&format!(
            "{{mode: SIMPLE, caCertificates: {}, subjectAltNames: [ratings.default.svc.cluster.local]}}",
            pki.ca.display()
        )),
    )?;
    let keel = start_keel(&fx)?;
    let r = get_once(&fx)?;
    ensure_tls_failure(
        "subjectAltNames mismatch",
        &fx,
        &keel,
        &r,
        "CERTIFICATE_VERIFY_FAILED",
    )?;
    Ok(())
}
