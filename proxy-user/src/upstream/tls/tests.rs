//! Handshakes against a local rustls server on 127.0.0.1 with a throwaway CA.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{anyhow, ensure, Context, Result};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::test_pki::{Ca, Leaf};
use super::*;
use crate::policy::model::LoadedFile;

const SERVER_NAME: &str = "server.test";
const SERVER_SERIAL: u64 = 1001;

/// What the test server saw of one handshake.
#[derive(Debug)]
struct Seen {
    sni: Option<String>,
    client_cert: bool,
    alpn: Option<Vec<u8>>,
}

struct Server {
    addr: SocketAddr,
    /// One entry per accepted connection: what it saw, or why its handshake failed.
    seen: mpsc::UnboundedReceiver<std::result::Result<Seen, String>>,
}

struct Pki {
    ca: Ca,
    server: Leaf,
    client: Leaf,
}

fn pki() -> Result<Pki> {
    let ca = Ca::new("keel test CA")?;
    let server = ca.issue(&[SERVER_NAME, "127.0.0.1"], SERVER_SERIAL, false)?;
    let client = ca.issue(&["client.test"], 2001, true)?;
    Ok(Pki { ca, server, client })
}

fn file<T>(content: T) -> LoadedFile<T> {
    LoadedFile {
        path: "/test".into(),
        content,
    }
}

/// `SIMPLE` trusting `ca`.
fn simple(ca: &CertificateDer<'static>) -> ClientTls {
    ClientTls {
        mode: TlsMode::Simple,
        client_certificate: None,
        private_key: None,
        ca_certificates: Some(file(vec![ca.clone()])),
        ca_crl: None,
        sni: None,
        subject_alt_names: Vec::new(),
        insecure_skip_verify: false,
    }
}

fn mutual(pki: &Pki) -> ClientTls {
    ClientTls {
        mode: TlsMode::Mutual,
        client_certificate: Some(file(vec![pki.client.cert.clone()])),
        private_key: Some(file(Arc::new(pki.client.private_key()))),
        ..simple(&pki.ca.cert)
    }
}

/// A TLS server with `pki.server`'s certificate; `require_client_cert` = only clients with a
/// certificate from `pki.ca` get through.
async fn server(pki: &Pki, require_client_cert: bool) -> Result<Server> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if require_client_cert {
        let mut roots = RootCertStore::empty();
        roots.add(pki.ca.cert.clone())?;
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config =
        builder.with_single_cert(vec![pki.server.cert.clone()], pki.server.private_key())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let result = match acceptor.accept(tcp).await {
                Ok(mut tls) => {
                    let conn = tls.get_ref().1;
                    let seen = Seen {
                        sni: conn.server_name().map(str::to_string),
                        client_cert: conn.peer_certificates().is_some_and(|c| !c.is_empty()),
                        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                    };
                    let _ = tls.write_all(b"hello\n").await;
                    let _ = tls.shutdown().await;
                    Ok(seen)
                }
                Err(e) => Err(e.to_string()),
            };
            if tx.send(result).is_err() {
                break;
            }
        }
    });
    Ok(Server { addr, seen })
}

/// Handshakes with `server` for `authority` and reads the server's greeting.
async fn fetch(
    tls: &TlsOrigination,
    server: &Server,
    authority: &str,
) -> Result<std::result::Result<String, TlsHandshakeError>> {
    let tcp = TcpStream::connect(server.addr).await?;
    let mut stream = match tls.handshake(tcp, authority).await {
        Ok(s) => s,
        Err(e) => return Ok(Err(e)),
    };
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .await
        .context("reading the greeting")?;
    Ok(Ok(text))
}

async fn seen(server: &mut Server) -> Result<std::result::Result<Seen, String>> {
    tokio::time::timeout(std::time::Duration::from_secs(5), server.seen.recv())
        .await
        .context("server saw no connection")?
        .ok_or_else(|| anyhow!("server task ended"))
}

fn build(tls: &ClientTls, alpn: Alpn) -> Result<TlsOrigination> {
    TlsOrigination::new(tls, alpn)?.ok_or_else(|| anyhow!("no TLS for {:?}", tls.mode))
}

#[tokio::test]
async fn simple_with_the_right_ca_verifies_the_authority_host_and_sends_it_as_sni() -> Result<()> {
    let pki = pki()?;
    let mut srv = server(&pki, false).await?;
    let tls = build(&simple(&pki.ca.cert), Alpn::Http1)?;
    let got = fetch(&tls, &srv, "server.test:8443").await?;
    ensure!(got.as_deref().ok() == Some("hello\n"), "{got:?}");
    let seen = seen(&mut srv).await?.map_err(|e| anyhow!(e))?;
    ensure!(seen.sni.as_deref() == Some(SERVER_NAME), "{seen:?}");
    ensure!(!seen.client_cert, "{seen:?}");
    ensure!(seen.alpn.as_deref() == Some(&b"http/1.1"[..]), "{seen:?}");
    Ok(())
}

#[tokio::test]
async fn http2_clusters_offer_h2() -> Result<()> {
    let pki = pki()?;
    let mut srv = server(&pki, false).await?;
    let tls = build(&simple(&pki.ca.cert), Alpn::Http2)?;
    let got = fetch(&tls, &srv, SERVER_NAME).await?;
    ensure!(got.is_ok(), "{got:?}");
    let seen = seen(&mut srv).await?.map_err(|e| anyhow!(e))?;
    ensure!(seen.alpn.as_deref() == Some(&b"h2"[..]), "{seen:?}");
    Ok(())
}

#[tokio::test]
async fn a_server_from_another_ca_fails_verification_with_envoys_reason() -> Result<()> {
    let pki = pki()?;
    let srv = server(&pki, false).await?;
    let other = Ca::new("another CA")?;
    let tls = build(&simple(&other.cert), Alpn::Http1)?;
    let Err(e) = fetch(&tls, &srv, SERVER_NAME).await? else {
        return Err(anyhow!("handshake with an untrusted server succeeded"));
    };
    ensure!(
        e.transport_failure_reason() == "TLS_error:CERTIFICATE_VERIFY_FAILED:unknown issuer",
        "{e}"
    );
    Ok(())
}

#[tokio::test]
async fn without_subject_alt_names_the_certificate_must_name_the_host() -> Result<()> {
    let pki = pki()?;
    let srv = server(&pki, false).await?;
    let tls = build(&simple(&pki.ca.cert), Alpn::Http1)?;
    let Err(e) = fetch(&tls, &srv, "reviews.default.svc.cluster.local:9080").await? else {
        return Err(anyhow!("a certificate for another name was accepted"));
    };
    ensure!(
        e.transport_failure_reason()
            == "TLS_error:CERTIFICATE_VERIFY_FAILED:certificate not valid for the name",
        "{e}"
    );
    Ok(())
}

#[tokio::test]
async fn subject_alt_names_replace_the_host_check() -> Result<()> {
    let pki = pki()?;
    let mut srv = server(&pki, false).await?;
    // One listed SAN matches: the authority's host does not matter.
    let tls = build(
        &ClientTls {
            subject_alt_names: vec!["nope.test".into(), SERVER_NAME.into()],
            ..simple(&pki.ca.cert)
        },
        Alpn::Http1,
    )?;
    let got = fetch(&tls, &srv, "reviews.default.svc.cluster.local").await?;
    ensure!(got.is_ok(), "{got:?}");
    let seen_ok = seen(&mut srv).await?.map_err(|e| anyhow!(e))?;
    ensure!(
        seen_ok.sni.as_deref() == Some("reviews.default.svc.cluster.local"),
        "{seen_ok:?}"
    );
    // None matches, although the host would.
    let tls = build(
        &ClientTls {
            subject_alt_names: vec!["nope.test".into()],
            ..simple(&pki.ca.cert)
        },
        Alpn::Http1,
    )?;
    let Err(e) = fetch(&tls, &srv, SERVER_NAME).await? else {
        return Err(anyhow!(
            "no listed SAN matches, yet the handshake succeeded"
        ));
    };
    ensure!(
        e.transport_failure_reason()
            .contains("certificate not valid for the name"),
        "{e}"
    );
    Ok(())
}

#[tokio::test]
async fn sni_overrides_the_authority() -> Result<()> {
    let pki = pki()?;
    let mut srv = server(&pki, false).await?;
    let tls = build(
        &ClientTls {
            sni: Some(SERVER_NAME.into()),
            ..simple(&pki.ca.cert)
        },
        Alpn::Http1,
    )?;
    let got = fetch(&tls, &srv, "10.96.0.10:8080").await?;
    ensure!(got.is_ok(), "{got:?}");
    let seen = seen(&mut srv).await?.map_err(|e| anyhow!(e))?;
    ensure!(seen.sni.as_deref() == Some(SERVER_NAME), "{seen:?}");
    Ok(())
}

#[tokio::test]
async fn mutual_presents_the_client_certificate() -> Result<()> {
    let pki = pki()?;
    let mut srv = server(&pki, true).await?;
    let tls = build(&mutual(&pki), Alpn::Http1)?;
    let got = fetch(&tls, &srv, SERVER_NAME).await?;
    ensure!(got.as_deref().ok() == Some("hello\n"), "{got:?}");
    let seen = seen(&mut srv).await?.map_err(|e| anyhow!(e))?;
    ensure!(seen.client_cert, "{seen:?}");
    Ok(())
}

#[tokio::test]
async fn a_server_requiring_client_certificates_rejects_simple() -> Result<()> {
    let pki = pki()?;
    let mut srv = server(&pki, true).await?;
    let tls = build(&simple(&pki.ca.cert), Alpn::Http1)?;
    // TLS 1.3: the client may finish its handshake before the server rejects it; the greeting
    // never arrives either way.
    let outcome = fetch(&tls, &srv, SERVER_NAME).await;
    ensure!(
        !matches!(outcome, Ok(Ok(_))),
        "server without client certificate answered: {outcome:?}"
    );
    let seen = seen(&mut srv).await?;
    ensure!(
        seen.is_err(),
        "server accepted a client without certificate: {seen:?}"
    );
    Ok(())
}

#[tokio::test]
async fn insecure_skip_verify_accepts_any_certificate() -> Result<()> {
    let pki = pki()?;
    let srv = server(&pki, false).await?;
    let tls = build(
        &ClientTls {
            ca_certificates: None,
            insecure_skip_verify: true,
            ..simple(&pki.ca.cert)
        },
        Alpn::Http1,
    )?;
    // Neither the CA nor the name would verify.
    let got = fetch(&tls, &srv, "unrelated.example").await?;
    ensure!(got.as_deref().ok() == Some("hello\n"), "{got:?}");
    Ok(())
}

#[tokio::test]
async fn ca_crl_rejects_a_revoked_server_certificate() -> Result<()> {
    let pki = pki()?;
    let srv = server(&pki, false).await?;
    let with_crl = |revoked: &[u64]| -> Result<ClientTls> {
        Ok(ClientTls {
            ca_crl: Some(file(vec![pki.ca.crl(revoked)?])),
            ..simple(&pki.ca.cert)
        })
    };
    let tls = build(&with_crl(&[SERVER_SERIAL])?, Alpn::Http1)?;
    let Err(e) = fetch(&tls, &srv, SERVER_NAME).await? else {
        return Err(anyhow!("a revoked certificate was accepted"));
    };
    ensure!(
        e.transport_failure_reason() == "TLS_error:CERTIFICATE_VERIFY_FAILED:certificate revoked",
        "{e}"
    );
    // A CRL that revokes another certificate changes nothing.
    let tls = build(&with_crl(&[SERVER_SERIAL + 1])?, Alpn::Http1)?;
    let got = fetch(&tls, &srv, SERVER_NAME).await?;
    ensure!(got.is_ok(), "{got:?}");
    Ok(())
}

#[test]
fn disable_builds_no_tls() -> Result<()> {
    let tls = ClientTls {
        mode: TlsMode::Disable,
        ca_certificates: None,
        ..simple(&CertificateDer::from(Vec::new()))
    };
    ensure!(TlsOrigination::new(&tls, Alpn::Http1)?.is_none());
    Ok(())
}

#[test]
fn authority_hosts() {
    let cases = [
        ("reviews:9080", "reviews"),
        ("reviews", "reviews"),
        ("Reviews.Example.", "Reviews.Example"),
        ("[fd00::1]:443", "fd00::1"),
        ("[fd00::1]", "fd00::1"),
        ("10.0.0.1:80", "10.0.0.1"),
        ("user@host:1", "host"),
    ];
    for (authority, host) in cases {
        assert_eq!(authority_host(authority), host, "{authority}");
    }
}
