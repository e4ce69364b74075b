//! A raw HTTPS client for tests that check the wire protocol itself (status codes, headers,
//! chunked watch streams) rather than what `kubectl` or kube-rs make of it. HTTP/1.1 only (so a
//! watch is visibly `Transfer-Encoding: chunked`), one connection per request, trusting only the
//! stand-in's CA.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use rustls::pki_types::ServerName;
use serde_json::Value;

use super::ApiServer;

/// Status, headers and body of one response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl RawResponse {
    /// The body as JSON.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "response body is not JSON: {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// An open watch: events are read one line at a time.
pub struct RawWatch {
    /// The response status (200 for every watch, even one that ends in an `ERROR` event).
    pub status: u16,
    pub headers: hyper::HeaderMap,
    body: Incoming,
    buf: BytesMut,
}

impl RawWatch {
    /// The next event (`{"type": ..., "object": ...}`), `None` when the stream ended; fails if
    /// nothing arrives within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Result<Option<Value>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line = self.buf.split_to(pos + 1);
                return serde_json::from_slice(&line[..pos])
                    .map(Some)
                    .with_context(|| {
                        format!(
                            "watch line is not JSON: {:?}",
                            String::from_utf8_lossy(&line)
                        )
                    });
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .context("no watch event within the timeout")?;
            match frame {
                None => {
                    if !self.buf.is_empty() {
                        bail!(
                            "watch ended mid-line: {:?}",
                            String::from_utf8_lossy(&self.buf)
                        );
                    }
                    return Ok(None);
                }
                Some(Err(e)) => return Err(e).context("watch stream broke"),
                Some(Ok(f)) => {
                    if let Ok(mut data) = f.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk().to_vec();
                            data.advance(chunk.len());
                            self.buf.extend_from_slice(&chunk);
                        }
                    }
                }
            }
        }
    }

    /// Whether the stream ends (EOF or error) within `timeout` without another event.
    pub async fn ends_within(&mut self, timeout: Duration) -> Result<bool> {
        match tokio::time::timeout(timeout, self.body.frame()).await {
            Err(_) => Ok(false),
            Ok(None) | Ok(Some(Err(_))) => Ok(true),
            Ok(Some(Ok(f))) => bail!("expected the watch to end, got a frame: {f:?}"),
        }
    }
}

/// The client; see the module docs.
pub struct RawClient {
    addr: std::net::SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    token: Option<String>,
}

impl RawClient {
    /// A client of `api`; `authenticated: false` sends no bearer token.
    pub fn new(api: &ApiServer, authenticated: bool) -> Result<RawClient> {
        let mut roots = rustls::RootCertStore::empty();
        let der = pem_to_der(&api.ca_pem).context("the stand-in's CA PEM")?;
        roots.add(der.into())?;
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(RawClient {
            addr: api.addr(),
            tls: Arc::new(tls),
            token: authenticated.then(|| api.token().to_string()),
        })
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> Result<hyper::Response<Incoming>> {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        let name = ServerName::try_from("127.0.0.1")?.to_owned();
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .context("TLS handshake with the stand-in API server")?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
            .header("accept", "application/json")
            .header("content-type", content_type);
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = req.body(Full::new(bytes))?;
        Ok(sender.send_request(req).await?)
    }

    /// One request with an optional JSON body; reads the whole response.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<RawResponse> {
        self.request_typed(method, path, "application/json", body)
            .await
    }

    /// Like [`RawClient::request`] with an explicit `Content-Type` (patches).
    pub async fn request_typed(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> Result<RawResponse> {
        let resp = self.send(method, path, content_type, body).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
            .await
            .context("response body within 10 s")??
            .to_bytes();
        Ok(RawResponse {
            status,
            headers,
            body,
        })
    }

    /// `GET path` as a watch (the caller puts `watch=1` and friends in `path`).
    pub async fn watch(&self, path: &str) -> Result<RawWatch> {
        let resp = self.send("GET", path, "application/json", None).await?;
        Ok(RawWatch {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: resp.into_body(),
            buf: BytesMut::new(),
        })
    }
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>> {
    use base64::Engine;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    Ok(base64::engine::general_purpose::STANDARD.decode(b64)?)
}
