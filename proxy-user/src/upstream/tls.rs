//! TLS origination to a cluster's endpoints (DestinationRule `trafficPolicy.tls`, reference §2.5).
//!
//! A [`TlsOrigination`] is built once per cluster policy from the converted [`ClientTls`] (its files
//! were read and checked at conversion) and shared by every connection to the cluster. The connection
//! layer dials TCP, then calls [`TlsOrigination::handshake`] with the request's authority; the
//! connect timeout should cover both, as Envoy's does (a connection counts as connected only once its
//! handshake is done).
//!
//! What is checked, as an Istio sidecar does:
//! - SNI: `sni` if set, else the request authority's host (Istio's auto SNI for SIMPLE/MUTUAL).
//! - The server's chain must lead to `caCertificates` (the OS trust store when unset), and not be
//!   revoked by `caCrl` (a CRL for one CA in the chain means every CA in it needs one, as in Envoy).
//! - Names: with `subjectAltNames`, the certificate must be valid for one of them; without, for the
//!   SNI name (Istio's auto SAN validation).
//! - `insecureSkipVerify`: no chain or name check (handshake signatures are still verified).
//! - `MUTUAL` presents `clientCertificate` with `privateKey`.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::policy::model::{ClientTls, TlsMode};

/// The application protocol offered in the ClientHello (ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// `http/1.1`.
    Http1,
    /// `h2`: the cluster speaks HTTP/2.
    Http2,
    /// None offered: an opaque TCP relay (Istio sets no ALPN on TCP clusters).
    None,
}

impl Alpn {
    fn protocol(self) -> Option<&'static [u8]> {
        match self {
            Alpn::Http1 => Some(b"http/1.1"),
            Alpn::Http2 => Some(b"h2"),
            Alpn::None => None,
        }
    }
}

/// A policy that cannot be turned into a TLS client (its files were checked at conversion, so this
/// is the environment: e.g. an empty OS trust store).
#[derive(Debug, thiserror::Error)]
#[error("upstream TLS: {0}")]
pub struct TlsConfigError(String);

/// A failed handshake, with the short reason Envoy puts after `transport failure reason:` in its 503
/// body (e.g. `TLS_error:CERTIFICATE_VERIFY_FAILED:unknown issuer`).
#[derive(Debug, thiserror::Error)]
#[error("upstream TLS handshake failed: {reason}")]
pub struct TlsHandshakeError {
    reason: String,
    #[source]
    source: Option<std::io::Error>,
}

impl TlsHandshakeError {
    /// The transport failure reason for the local reply (see `l7::rescue::LocalReply::ConnectFailure`).
    pub fn transport_failure_reason(&self) -> &str {
        &self.reason
    }
}

/// TLS client settings of one cluster, ready to handshake.
pub struct TlsOrigination {
    connector: TlsConnector,
    /// `sni`, when set; otherwise each handshake derives it from the request's authority.
    sni: Option<ServerName<'static>>,
}

impl std::fmt::Debug for TlsOrigination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOrigination")
            .field("sni", &self.sni)
            .finish_non_exhaustive()
    }
}

impl TlsOrigination {
    /// Builds the client for `tls`, offering `alpn`; `None` for `DISABLE` (plaintext).
    pub fn new(tls: &ClientTls, alpn: Alpn) -> Result<Option<Self>, TlsConfigError> {
        if tls.mode == TlsMode::Disable {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = verifier(tls, &provider)?;
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsConfigError(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let identity = match tls.mode {
            TlsMode::Mutual => tls
                .client_certificate
                .as_ref()
                .zip(tls.private_key.as_ref()),
            _ => None,
        };
        let mut config = match identity {
            Some((certs, key)) => builder
                .with_client_auth_cert(certs.content.clone(), key.content.clone_key())
                .map_err(|e| TlsConfigError(format!("{}: {e}", key.path)))?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.protocol().map(<[u8]>::to_vec).into_iter().collect();
        let sni = match tls.sni.as_deref() {
            Some(name) => Some(
                ServerName::try_from(name.to_string())
                    .map_err(|e| TlsConfigError(format!("sni {name:?}: {e}")))?,
            ),
            None => None,
        };
        Ok(Some(Self {
            connector: TlsConnector::from(Arc::new(config)),
            sni,
        }))
    }

    /// Runs the TLS handshake on a connected `tcp` stream for a request to `authority` (`host` or
    /// `host:port`, as in the request's `:authority`/`Host`).
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        authority: &str,
    ) -> Result<TlsStream<TcpStream>, TlsHandshakeError> {
        let name = self.server_name(authority)?;
        self.connector
            .connect(name, tcp)
            .await
            .map_err(|e| TlsHandshakeError {
                reason: failure_reason(&e),
                source: Some(e),
            })
    }

    /// The name sent as SNI (and, without `subjectAltNames`, verified): `sni`, else the authority's
    /// host. An IP address is verified against the certificate's IP SANs and sends no SNI.
    fn server_name(&self, authority: &str) -> Result<ServerName<'static>, TlsHandshakeError> {
        if let Some(sni) = &self.sni {
            return Ok(sni.clone());
        }
        let host = authority_host(authority);
        ServerName::try_from(host.to_ascii_lowercase()).map_err(|_| TlsHandshakeError {
            reason: format!("TLS_error:no valid SNI in authority {authority:?}"),
            source: None,
        })
    }
}

/// A cluster's TLS origination, built once when the cluster is created and shared by all its
/// clients' connections: one client per ALPN offer (HTTP/1.1, HTTP/2, opaque TCP), since a port
/// whose protocol is sniffed speaks upstream what its client spoke.
#[derive(Debug)]
pub struct ClusterTls {
    /// Clients offering `http/1.1`, `h2` and nothing, or why they could not be built (then every
    /// handshake fails with that reason, as Envoy fails connections of a cluster whose TLS context
    /// it could not load).
    clients: Result<[TlsOrigination; 3], String>,
    /// `sni` is set: every connection sends it, whatever the request's authority.
    fixed_sni: bool,
}

impl ClusterTls {
    /// The origination `tls` asks for; `None` for `DISABLE`.
    pub fn new(tls: &ClientTls) -> Option<Self> {
        if tls.mode == TlsMode::Disable {
            return None;
        }
        let build = |alpn| match TlsOrigination::new(tls, alpn) {
            Ok(Some(client)) => Ok(client),
            Ok(None) => Err("TLS disabled".to_string()),
            Err(e) => Err(e.to_string()),
        };
        let clients = (|| Ok([build(Alpn::Http1)?, build(Alpn::Http2)?, build(Alpn::None)?]))();
        if let Err(e) = &clients {
            tracing::error!(error = %e, "upstream TLS client not built; its handshakes will fail");
        }
        Some(Self {
            clients,
            fixed_sni: tls.sni.is_some(),
        })
    }

    /// Which connections a request to `authority` may share: with `sni` set, all of them
    /// (`None`); otherwise those made with the same SNI, the authority's host (Envoy's auto SNI
    /// keeps a connection pool per SNI value).
    pub fn server_key(&self, authority: &str) -> Option<Box<str>> {
        (!self.fixed_sni).then(|| authority_host(authority).to_ascii_lowercase().into())
    }

    /// [`TlsOrigination::handshake`] with the client offering `alpn`.
    pub async fn handshake(
        &self,
        alpn: Alpn,
        tcp: TcpStream,
        authority: &str,
    ) -> Result<TlsStream<TcpStream>, TlsHandshakeError> {
        match &self.clients {
            Ok([http1, http2, opaque]) => {
                let client = match alpn {
                    Alpn::Http1 => http1,
                    Alpn::Http2 => http2,
                    Alpn::None => opaque,
                };
                client.handshake(tcp, authority).await
            }
            Err(e) => Err(TlsHandshakeError {
                reason: format!("TLS_error:{e}"),
                source: None,
            }),
        }
    }
}

/// The host of an authority: without port, brackets (IPv6) or a trailing dot.
fn authority_host(authority: &str) -> &str {
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    host.strip_suffix('.').unwrap_or(host)
}

/// The verifier the policy asks for.
fn verifier(
    tls: &ClientTls,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, TlsConfigError> {
    if tls.insecure_skip_verify {
        return Ok(Arc::new(NoVerification(provider.clone())));
    }
    let roots = match &tls.ca_certificates {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(ca.content.iter().cloned());
            Arc::new(roots)
        }
        None => os_roots()?,
    };
    let mut builder = WebPkiServerVerifier::builder_with_provider(roots, provider.clone());
    if let Some(crl) = &tls.ca_crl {
        // Envoy (BoringSSL) fails a handshake on a CRL past its nextUpdate; webpki ignores that
        // by default.
        builder = builder
            .with_crls(crl.content.iter().cloned())
            .enforce_revocation_expiration();
    }
    let webpki = builder
        .build()
        .map_err(|e| TlsConfigError(format!("server verifier: {e}")))?;
    if tls.subject_alt_names.is_empty() {
        return Ok(webpki);
    }
    let mut names = Vec::new();
    for san in &tls.subject_alt_names {
        let name = ServerName::try_from(san.clone())
            .map_err(|e| TlsConfigError(format!("subjectAltNames entry {san:?}: {e}")))?;
        names.push(name);
    }
    Ok(Arc::new(SanVerifier {
        inner: webpki,
        names,
    }))
}

/// The OS trust store, loaded once per process.
///
/// `rustls-native-certs` rather than `webpki-roots`: with no `caCertificates`, Istio's proxies trust
/// the system's CA bundle, which operators extend with their private CAs; a compiled-in Mozilla list
/// would ignore those and only change with a Keel rebuild.
fn os_roots() -> Result<Arc<RootCertStore>, TlsConfigError> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                return Err(format!(
                    "no caCertificates and no usable CA certificate in the OS trust store{why}"
                ));
            }
            Ok(Arc::new(roots))
        })
        .clone()
        .map_err(TlsConfigError)
}

/// Chain (and CRL) verification by webpki, then: the certificate must be valid for one of
/// `subjectAltNames`, whatever the SNI was.
#[derive(Debug)]
struct SanVerifier {
    inner: Arc<WebPkiServerVerifier>,
    names: Vec<ServerName<'static>>,
}

impl ServerCertVerifier for SanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut last = rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
        for name in &self.names {
            match self
                .inner
                .verify_server_cert(end_entity, intermediates, name, ocsp_response, now)
            {
                Ok(v) => return Ok(v),
                Err(e) if is_name_mismatch(&e) => last = e,
                // A chain, expiry or revocation failure does not depend on the name.
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn is_name_mismatch(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        )
    )
}

/// `insecureSkipVerify`: any certificate, but the handshake signatures must be made with its key.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A short reason in the shape of Envoy's transport failure reasons: `TLS_error:` then the
/// BoringSSL-style name users search for when there is one (`CERTIFICATE_VERIFY_FAILED`), then what
/// rustls says.
fn failure_reason(e: &std::io::Error) -> String {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::InvalidCertificate(c)) => {
            format!(
                "TLS_error:CERTIFICATE_VERIFY_FAILED:{}",
                certificate_problem(c)
            )
        }
        Some(rustls::Error::AlertReceived(alert)) => format!("TLS_error:peer sent alert {alert:?}"),
        Some(rustls::Error::NoApplicationProtocol) => {
            "TLS_error:no application protocol in common (ALPN)".to_string()
        }
        Some(other) => format!("TLS_error:{other}"),
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "TLS_error:connection closed during handshake".to_string()
        }
        None => format!("TLS_error:{e}"),
    }
}

fn certificate_problem(c: &CertificateError) -> String {
    match c {
        CertificateError::UnknownIssuer => "unknown issuer".to_string(),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "certificate not valid for the name".to_string()
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "certificate expired".to_string()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "certificate not yet valid".to_string()
        }
        CertificateError::Revoked => "certificate revoked".to_string(),
        CertificateError::UnknownRevocationStatus => "unknown revocation status".to_string(),
        CertificateError::ExpiredRevocationList
        | CertificateError::ExpiredRevocationListContext { .. } => "CRL expired".to_string(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
pub(crate) mod test_pki;
#[cfg(test)]
mod tests;
