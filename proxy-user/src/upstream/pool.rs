//! HTTP connection pools to endpoints: keep-alive HTTP/1.1 and multiplexed h2c, pooled per endpoint
//! address by hyper-util's client.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::UpstreamProtocol;

/// Body type of requests the proxy sends upstream.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The proxy's upstream HTTP clients, shared by all connections.
#[derive(Clone)]
pub struct HttpPools {
    http1: Client<HttpConnector, ProxyBody>,
    http2: Client<HttpConnector, ProxyBody>,
}

/// Istio's default `connectTimeout` for upstream connections.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle pooled connections are closed after this (Envoy's default idle timeout is 1 h; keep fewer
/// sockets around on a node that serves every pod).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

impl HttpPools {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.enforce_http(true);
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(usize::MAX)
            .build(connector.clone());
        let http2 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .http2_only(true)
            .build(connector);
        Self { http1, http2 }
    }

    /// The client for a cluster's protocol, given what the downstream client spoke (TCP clusters
    /// never reach here).
    pub fn client(
        &self,
        protocol: UpstreamProtocol,
        downstream_http2: bool,
    ) -> &Client<HttpConnector, ProxyBody> {
        match protocol {
            UpstreamProtocol::Http2 => &self.http2,
            UpstreamProtocol::SameAsDownstream if downstream_http2 => &self.http2,
            UpstreamProtocol::SameAsDownstream
            | UpstreamProtocol::Http1
            | UpstreamProtocol::Tcp => &self.http1,
        }
    }
}

impl Default for HttpPools {
    fn default() -> Self {
        Self::new()
    }
}
