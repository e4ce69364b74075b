//! HTTP connection pools to endpoints.
//!
//! - HTTP/1.1: hyper-util's pooled client, keep-alive per endpoint address. The request URI names the
//!   endpoint; the client's `Host` header travels unchanged.
//! - HTTP/2 (h2c prior knowledge): one multiplexed connection per endpoint, dialled by address, so the
//!   request's `:authority` can stay the client's (as Envoy sends it) instead of the pod IP.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

/// Any error a body can end with (hyper's, or the proxy's own, e.g. a route timeout mid-response).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body type of requests the proxy sends upstream and of responses it sends downstream.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// Istio's default `connectTimeout` for upstream connections.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle pooled connections are closed after this (Envoy's default idle timeout is 1 h; keep fewer
/// sockets around on a node that serves every pod).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Why a request could not be sent upstream.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made: safe to retry on another endpoint.
    #[error("connect to {endpoint} failed: {reason}")]
    Connect {
        endpoint: SocketAddr,
        reason: String,
    },
    /// The connection or stream failed after the request may have been sent.
    #[error("request to {endpoint} failed: {source}")]
    Request {
        endpoint: SocketAddr,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl SendError {
    /// The request never left the proxy, so another attempt cannot duplicate it.
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect { .. })
    }

    /// The HTTP/2 stream was reset by the peer (as opposed to the connection closing).
    pub fn is_stream_reset(&self) -> bool {
        self.h2_error().is_some_and(h2::Error::is_reset)
    }

    /// The HTTP/2 peer refused the stream (`REFUSED_STREAM`): it did not process the request.
    pub fn is_refused_stream(&self) -> bool {
        self.h2_error()
            .is_some_and(|e| e.reason() == Some(h2::Reason::REFUSED_STREAM))
    }

    fn h2_error(&self) -> Option<&h2::Error> {
        let SendError::Request { source, .. } = self else {
            return None;
        };
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
        while let Some(e) = cause {
            if let Some(h2) = e.downcast_ref::<h2::Error>() {
                return Some(h2);
            }
            cause = e.source();
        }
        None
    }
}

/// The proxy's upstream HTTP clients, shared by all connections.
#[derive(Clone)]
pub struct HttpPools {
    http1: Client<HttpConnector, ProxyBody>,
    http2: Arc<H2Pool>,
}

impl HttpPools {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.enforce_http(true);
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(usize::MAX)
            .build(connector);
        Self {
            http1,
            http2: Arc::new(H2Pool::default()),
        }
    }

    /// Send `req` to `endpoint`. For HTTP/1.1 the URI must name the endpoint; for HTTP/2 it carries
    /// the client's authority and the connection is chosen by `endpoint`.
    pub async fn send(
        &self,
        endpoint: SocketAddr,
        http2: bool,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, SendError> {
        if http2 {
            return self.http2.send(endpoint, req).await;
        }
        self.http1.request(req).await.map_err(|e| {
            if e.is_connect() {
                SendError::Connect {
                    endpoint,
                    reason: e.to_string(),
                }
            } else {
                SendError::Request {
                    endpoint,
                    source: Box::new(e),
                }
            }
        })
    }
}

impl Default for HttpPools {
    fn default() -> Self {
        Self::new()
    }
}

/// One live h2 connection per endpoint.
#[derive(Default)]
struct H2Pool {
    // Held only to clone or replace a sender, never across an await.
    connections: Mutex<HashMap<SocketAddr, http2::SendRequest<ProxyBody>>>,
}

impl H2Pool {
    async fn send(
        &self,
        endpoint: SocketAddr,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let mut sender = match self.cached(endpoint) {
            Some(s) => s,
            None => self.connect(endpoint).await?,
        };
        if sender.ready().await.is_err() {
            // The cached connection died (GOAWAY, reset): dial a fresh one once.
            sender = self.connect(endpoint).await?;
            sender.ready().await.map_err(|e| SendError::Connect {
                endpoint,
                reason: e.to_string(),
            })?;
        }
        sender
            .send_request(req)
            .await
            .map_err(|e| SendError::Request {
                endpoint,
                source: Box::new(e),
            })
    }

    fn cached(&self, endpoint: SocketAddr) -> Option<http2::SendRequest<ProxyBody>> {
        let conns = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        conns.get(&endpoint).filter(|s| !s.is_closed()).cloned()
    }

    async fn connect(
        &self,
        endpoint: SocketAddr,
    ) -> Result<http2::SendRequest<ProxyBody>, SendError> {
        let fail = |reason: String| SendError::Connect { endpoint, reason };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint))
            .await
            .map_err(|_| fail("connect timeout".into()))?
            .map_err(|e| fail(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| fail(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%endpoint, error = %e, "upstream h2 connection ended");
            }
        });
        let mut conns = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        conns.retain(|_, s| !s.is_closed());
        conns.insert(endpoint, sender.clone());
        Ok(sender)
    }
}
