//! A throwaway PKI for TLS origination tests: a CA, a server certificate for given names, a client
//! certificate, and a second CA that signed nothing the servers use, all written as PEM files into a
//! directory (keys unencrypted PKCS#8). Nothing here is trusted outside the test that made it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Paths of the PEM files [`TestPki::write`] made.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    /// A CA that signed neither (for "wrong CA" tests).
    pub other_ca: PathBuf,
    /// Server certificate (leaf), valid for the names given to [`TestPki::write`].
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// Client certificate (leaf, `client.test`, clientAuth).
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestPki {
    /// Makes the CAs and certificates and writes them into `dir` (which must exist); the server
    /// certificate is valid for `server_names` (DNS names or IP addresses).
    pub fn write(dir: &Path, server_names: &[&str]) -> Result<Self> {
        let (issuer, ca_pem) = ca("keel e2e test CA")?;
        let (_, other_pem) = ca("keel e2e other CA")?;
        let (server_pem, server_key) = leaf(&issuer, server_names, false)?;
        let (client_pem, client_key) = leaf(&issuer, &["client.test"], true)?;
        let out = TestPki {
            ca: dir.join("ca.pem"),
            other_ca: dir.join("other-ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client-key.pem"),
        };
        for (path, text) in [
            (&out.ca, ca_pem),
            (&out.other_ca, other_pem),
            (&out.server_cert, server_pem),
            (&out.server_key, server_key),
            (&out.client_cert, client_pem),
            (&out.client_key, client_key),
        ] {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(out)
    }
}

pub(crate) fn ca(name: &str) -> Result<(Issuer<'static, KeyPair>, String)> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let text = pem("CERTIFICATE", cert.der());
    Ok((Issuer::new(params, key), text))
}

/// A leaf certificate and its key, PEM.
fn leaf(ca: &Issuer<'static, KeyPair>, names: &[&str], client: bool) -> Result<(String, String)> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names.clone())?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    params.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    Ok((
        pem("CERTIFICATE", cert.der()),
        pem("PRIVATE KEY", &key.serialize_der()),
    ))
}

/// PEM text of one DER block.
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
