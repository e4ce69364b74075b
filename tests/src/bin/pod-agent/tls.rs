//! TLS server and client (rustls, ring), for SNI routing tests: the server names its pod and the SNI
//! it saw; the client connects with a chosen SNI (or none, or plain text), optionally writing its
//! ClientHello in small pieces. Also the TLS side of `http-server --tls-cert` (TLS origination
//! tests): certificates from files, optionally requiring client certificates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use keel_tests::agent::{TlsClientReport, TlsServerLine};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::announce;

/// Local addresses kept in a report.
const MAX_LOCAL_ADDRS: usize = 256;

/// Largest server line or plain-text client line read.
const MAX_LINE: usize = 1024;
/// TLS record content type `handshake`: how a TLS connection starts.
const TLS_HANDSHAKE: u8 = 22;
/// Pause between the pieces of a split ClientHello: long enough that each is its own segment.
const SPLIT_PAUSE: Duration = Duration::from_millis(20);

fn crypto() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub async fn tls_server(listen: SocketAddr, pod: String) -> Result<()> {
    let key = rcgen::generate_simple_self_signed(vec![format!("{pod}.test")])
        .context("generating a self-signed certificate")?;
    let cert = key.cert.der().clone();
    let private = rustls::pki_types::PrivateKeyDer::Pkcs8(
        rustls::pki_types::PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()),
    );
    let config = server_config(vec![cert], private, None)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    announce(&listener)?;
    let pod = Arc::new(pod);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (acceptor, pod) = (acceptor.clone(), pod.clone());
        tokio::spawn(async move {
            let served =
                tokio::time::timeout(Duration::from_secs(10), serve_tls(stream, acceptor, &pod))
                    .await;
            match served {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("tls connection from {peer}: {e:#}"),
                Err(_) => eprintln!("tls connection from {peer}: timed out"),
            }
        });
    }
}

/// A server config for `chain` and `key`; with `client_ca`, only clients presenting a certificate
/// signed by one of its CAs complete the handshake.
fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: Option<rustls::RootCertStore>,
) -> Result<rustls::ServerConfig> {
    let provider = crypto();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?;
    let builder = match client_ca {
        Some(roots) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .context("client certificate verifier")?,
        ),
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(chain, key)
        .context("server certificate")
}

/// PEM files for `http-server --tls-cert/--tls-key [--tls-client-ca]`.
pub struct ServerTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// What one TLS connection of `http-server` negotiated (echoed in response headers).
pub struct TlsSession {
    /// The SNI the client sent.
    pub sni: Option<String>,
    /// The client presented a certificate (verified against `--tls-client-ca`).
    pub client_cert: bool,
}

/// The acceptor of `http-server` over TLS: certificate and key from PEM files, ALPN `h2` and
/// `http/1.1` (so a client offering either gets it).
pub fn http_acceptor(files: &ServerTlsFiles) -> Result<tokio_rustls::TlsAcceptor> {
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading certificates from {}", files.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading the private key from {}", files.key.display()))?;
    let client_ca = match &files.client_ca {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("reading {}", path.display()))?
            {
                roots
                    .add(cert.with_context(|| format!("reading {}", path.display()))?)
                    .with_context(|| format!("CA certificate in {}", path.display()))?;
            }
            Some(roots)
        }
        None => None,
    };
    let mut config = server_config(chain, key, client_ca)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// What `stream`'s handshake negotiated.
pub fn session<S>(stream: &tokio_rustls::server::TlsStream<S>) -> TlsSession {
    let conn = stream.get_ref().1;
    TlsSession {
        sni: conn.server_name().map(str::to_string),
        client_cert: conn.peer_certificates().is_some_and(|c| !c.is_empty()),
    }
}

async fn serve_tls(
    stream: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    pod: &str,
) -> Result<()> {
    let mut first = [0u8; 1];
    let n = stream.peek(&mut first).await.context("peek")?;
    if n == 0 {
        return Ok(());
    }
    if first != [TLS_HANDSHAKE] {
        let mut stream = stream;
        let text = read_line(&mut stream).await?;
        let line = TlsServerLine {
            pod: pod.to_string(),
            sni: None,
            plain: Some(text),
        };
        return write_line(&mut stream, &line).await;
    }
    let mut tls = acceptor.accept(stream).await.context("TLS handshake")?;
    let line = TlsServerLine {
        pod: pod.to_string(),
        sni: tls.get_ref().1.server_name().map(str::to_string),
        plain: None,
    };
    write_line(&mut tls, &line).await
}

/// Writes `line` as JSON plus a newline, then shuts the stream down (TLS: close_notify).
async fn write_line<S: tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    line: &TlsServerLine,
) -> Result<()> {
    let mut bytes = serde_json::to_vec(line).context("serialising line")?;
    bytes.push(b'\n');
    s.write_all(&bytes).await.context("writing line")?;
    s.shutdown().await.context("shutdown")?;
    Ok(())
}

/// Reads up to a newline, EOF or [`MAX_LINE`] bytes.
async fn read_line<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Result<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    while out.len() < MAX_LINE && !out.contains(&b'\n') {
        let n = s.read(&mut buf).await.context("reading line")?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    let end = out
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(out.len())
        .min(MAX_LINE);
    Ok(String::from_utf8_lossy(out.get(..end).unwrap_or_default()).into_owned())
}

/// Accepts any server certificate (test servers are self-signed) but checks handshake signatures,
/// so a handshake only completes with the server that holds the key.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A stream whose first write (the ClientHello record) goes out in writes of at most `chunk` bytes,
/// with [`SPLIT_PAUSE`] between them (TCP_NODELAY makes each its own segment). `chunk: None` passes
/// everything through.
struct Split<S> {
    inner: S,
    chunk: Option<usize>,
    /// Bytes of the first write still to send; `None` until the first write.
    left: Option<usize>,
    writes: Arc<std::sync::atomic::AtomicU64>,
    pause: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Split<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Split<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        let Some(chunk) = self.chunk else {
            return std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        };
        let left = *self.left.get_or_insert(buf.len());
        if left == 0 {
            return std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        }
        if let Some(pause) = self.pause.as_mut() {
            if std::future::Future::poll(pause.as_mut(), cx).is_pending() {
                return Poll::Pending;
            }
            self.pause = None;
        }
        let n = buf.len().min(chunk).min(left);
        let head = buf.get(..n).unwrap_or(buf);
        match std::pin::Pin::new(&mut self.inner).poll_write(cx, head) {
            Poll::Ready(Ok(written)) => {
                let left = left - written.min(left);
                self.left = Some(left);
                self.writes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if left > 0 {
                    self.pause = Some(Box::pin(tokio::time::sleep(SPLIT_PAUSE)));
                }
                Poll::Ready(Ok(written))
            }
            other => other,
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

pub struct TlsArgs {
    pub addr: SocketAddr,
    pub sni: Option<String>,
    pub count: u32,
    pub split: Option<usize>,
    pub plain: Option<String>,
}

pub async fn tls_client(args: TlsArgs, timeout: Duration) -> TlsClientReport {
    let start = Instant::now();
    let mut report = TlsClientReport {
        addr: args.addr.to_string(),
        sni: args.sni.clone(),
        ..TlsClientReport::default()
    };
    match tokio::time::timeout(timeout, tls_client_loop(&args, &mut report)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            report.errors += 1;
            report.first_error.get_or_insert(format!("{e:#}"));
        }
        Err(_) => {
            report.timed_out = true;
            report
                .first_error
                .get_or_insert(format!("global timeout of {timeout:?} reached"));
        }
    }
    report.elapsed_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    report
}

async fn tls_client_loop(args: &TlsArgs, report: &mut TlsClientReport) -> Result<()> {
    let provider = crypto();
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    // Every connection is a full handshake with a fresh ClientHello.
    config.resumption = rustls::client::Resumption::disabled();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    // An IP address as the server name makes rustls send no SNI.
    let name = match &args.sni {
        Some(s) => rustls::pki_types::ServerName::try_from(s.clone())
            .with_context(|| format!("bad server name {s:?}"))?,
        None => rustls::pki_types::ServerName::IpAddress(args.addr.ip().into()),
    };
    for i in 0..args.count {
        report.connections += 1;
        let res = tls_once(args, &connector, name.clone(), report, i == 0).await;
        match res {
            Ok(line) => {
                report.answered += 1;
                *report.by_pod.entry(line.pod.clone()).or_default() += 1;
                let seen = match (&line.plain, &line.sni) {
                    (Some(_), _) => "<plain>".to_string(),
                    (None, Some(s)) => s.clone(),
                    (None, None) => "<none>".to_string(),
                };
                *report.by_server_sni.entry(seen).or_default() += 1;
                report.last_line = Some(line);
            }
            Err(e) => {
                report.errors += 1;
                report.first_error.get_or_insert(format!("{e:#}"));
            }
        }
    }
    Ok(())
}

async fn tls_once(
    args: &TlsArgs,
    connector: &tokio_rustls::TlsConnector,
    name: rustls::pki_types::ServerName<'static>,
    report: &mut TlsClientReport,
    first: bool,
) -> Result<TlsServerLine> {
    let stream = TcpStream::connect(args.addr)
        .await
        .with_context(|| format!("connecting to {}", args.addr))?;
    stream.set_nodelay(true).context("TCP_NODELAY")?;
    if report.local_addrs.len() < MAX_LOCAL_ADDRS {
        if let Ok(local) = stream.local_addr() {
            report.local_addrs.push(local.to_string());
        }
    }
    let text = if let Some(plain) = &args.plain {
        let mut stream = stream;
        stream
            .write_all(format!("{plain}\n").as_bytes())
            .await
            .context("writing plain text")?;
        read_line(&mut stream).await?
    } else {
        let writes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let split = Split {
            inner: stream,
            chunk: args.split.map(|n| n.max(1)),
            left: None,
            writes: writes.clone(),
            pause: None,
        };
        let mut tls = connector
            .connect(name, split)
            .await
            .context("TLS handshake")?;
        if let Some(v) = tls.get_ref().1.protocol_version() {
            *report.by_tls_version.entry(format!("{v:?}")).or_default() += 1;
        }
        let line = read_line(&mut tls).await?;
        if first {
            report.first_flight_writes = writes.load(std::sync::atomic::Ordering::Relaxed);
        }
        line
    };
    serde_json::from_str(&text).with_context(|| format!("server line {text:?} is not JSON"))
}
