//! The stand-in's PKI and client configuration: a throwaway CA, a server certificate for
//! `127.0.0.1` and `localhost`, the rustls server config (ALPN h2 and http/1.1, as the real server
//! offers), and the kubeconfig that trusts the CA and carries the bearer token.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use base64::Engine;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::pki;

/// The CA (PEM, for the kubeconfig) and the TLS server config built on its server certificate.
pub struct ServerTls {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The server side of TLS.
    pub config: Arc<rustls::ServerConfig>,
}

/// Makes a CA and a server certificate for `127.0.0.1` and `localhost`.
pub fn server_tls() -> Result<ServerTls> {
    let (issuer, ca_pem) = pki::ca("keel test apiserver CA")?;
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let chain = vec![CertificateDer::from(cert.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .context("TLS server certificate")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ServerTls {
        ca_pem,
        config: Arc::new(config),
    })
}

/// Writes a kubeconfig for `server` (`https://127.0.0.1:<port>`) with one cluster, one user
/// (bearer `token`) and one current context whose namespace is `default`.
pub fn write_kubeconfig(path: &Path, server: &str, ca_pem: &str, token: &str) -> Result<()> {
    let ca_data = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let text = format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: keel-test\n  \
           cluster:\n    \
             server: {server}\n    \
             certificate-authority-data: {ca_data}\n\
         users:\n\
         - name: keel-test\n  \
           user:\n    \
             token: {token}\n\
         contexts:\n\
         - name: keel-test\n  \
           context:\n    \
             cluster: keel-test\n    \
             user: keel-test\n    \
             namespace: default\n\
         current-context: keel-test\n"
    );
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
