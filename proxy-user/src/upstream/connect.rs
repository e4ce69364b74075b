//! Dialling an endpoint: the one place upstream TCP connections are opened (HTTP pools, TCP relays,
//! upgrades), with the cluster's `connectTimeout` and `tcpKeepalive`, and `TCP_NODELAY` always.
//!
//! What comes back is an [`UpstreamIo`]: plaintext, or, for a cluster with DestinationRule `tls`,
//! the TLS stream originated over the dialled connection ([`UpstreamIo::Tls`]). The handshake is
//! part of connecting: it runs within `connectTimeout`, and its failure is a connect failure
//! (retriable, flag `UF`), as in Envoy, where a TLS connection counts as connected only once its
//! handshake is done.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::tls::{Alpn, ClusterTls, TlsHandshakeError};
use crate::policy::{ConnectionPool, TcpKeepalive};

/// Istio's default `connectTimeout` (mesh `connectTimeout`).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How to dial a cluster's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Give up after this long (`tcp.connectTimeout`, default 10 s).
    pub timeout: Duration,
    /// `tcp.tcpKeepalive`: SO_KEEPALIVE with these parameters; `None` = off.
    pub keepalive: Option<TcpKeepalive>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_CONNECT_TIMEOUT,
            keepalive: None,
        }
    }
}

impl ConnectOptions {
    /// The options a cluster's `connectionPool` asks for.
    pub fn from_pool(pool: Option<&ConnectionPool>) -> Self {
        Self {
            timeout: pool
                .and_then(|p| p.tcp_connect_timeout)
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            keepalive: pool.and_then(|p| p.tcp_keepalive),
        }
    }
}

/// Why a connect failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// `connectTimeout` passed (Envoy: `connection timeout`).
    #[error("connection timeout")]
    Timeout,
    /// Refused, unreachable, or any other socket error.
    #[error("connection failure: {0}")]
    Io(#[from] io::Error),
    /// Connected, but the TLS handshake failed (Envoy: `connection failure, transport failure
    /// reason: …`).
    #[error("connection failure: {0}")]
    Tls(#[from] TlsHandshakeError),
}

impl ConnectError {
    /// The transport failure reason Envoy puts in the 503 body, for a failed TLS handshake.
    pub fn transport_failure_reason(&self) -> Option<&str> {
        match self {
            ConnectError::Tls(e) => Some(e.transport_failure_reason()),
            _ => None,
        }
    }
}

/// TLS to originate on a dialled connection.
#[derive(Debug, Clone, Copy)]
pub struct Originate<'a> {
    /// The cluster's TLS clients.
    pub tls: &'a ClusterTls,
    /// What to offer in ALPN.
    pub alpn: Alpn,
    /// The authority whose host is the SNI (unless the policy sets `sni`).
    pub authority: &'a str,
}

/// Open a connection to `endpoint`, with TLS when `tls` says so; TCP connect and handshake
/// together get `opts.timeout`.
pub async fn dial(
    endpoint: SocketAddr,
    opts: &ConnectOptions,
    tls: Option<Originate<'_>>,
) -> Result<UpstreamIo, ConnectError> {
    let connect = async {
        let tcp = dial_tcp(endpoint, opts).await?;
        Ok(match tls {
            Some(o) => UpstreamIo::Tls(Box::new(o.tls.handshake(o.alpn, tcp, o.authority).await?)),
            None => UpstreamIo::Plain(tcp),
        })
    };
    tokio::time::timeout(opts.timeout, connect)
        .await
        .map_err(|_| ConnectError::Timeout)?
}

/// The TCP part of [`dial`] (the caller bounds it with the connect timeout).
async fn dial_tcp(endpoint: SocketAddr, opts: &ConnectOptions) -> Result<TcpStream, ConnectError> {
    let stream = TcpStream::connect(endpoint).await?;
    // Requests are written whole; Nagle would only add latency.
    let _ = stream.set_nodelay(true);
    if let Some(ka) = &opts.keepalive {
        let mut params = socket2::TcpKeepalive::new();
        if let Some(t) = ka.time {
            params = params.with_time(t);
        }
        if let Some(i) = ka.interval {
            params = params.with_interval(i);
        }
        if let Some(p) = ka.probes {
            params = params.with_retries(p);
        }
        if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&params) {
            tracing::debug!(%endpoint, error = %e, "could not enable TCP keepalive");
        }
    }
    Ok(stream)
}

/// Any stream a TLS layer produces over the dialled connection.
pub trait TlsIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> TlsIo for T {}

/// An upstream connection's byte stream.
pub enum UpstreamIo {
    /// Plaintext TCP.
    Plain(TcpStream),
    /// TLS originated by the proxy over the dialled TCP stream (boxed: rare next to plaintext, and
    /// keeps this module free of the TLS library's types).
    Tls(Box<dyn TlsIo>),
}

impl std::fmt::Debug for UpstreamIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamIo::Plain(s) => f.debug_tuple("Plain").field(s).finish(),
            UpstreamIo::Tls(_) => f.write_str("Tls"),
        }
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dials_with_keepalive_and_refusal_is_an_io_error(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let opts = ConnectOptions {
            timeout: Duration::from_secs(2),
            keepalive: Some(TcpKeepalive {
                probes: Some(4),
                time: Some(Duration::from_secs(30)),
                interval: Some(Duration::from_secs(5)),
            }),
        };
        let UpstreamIo::Plain(stream) = dial(addr, &opts, None).await? else {
            return Err("plaintext expected".into());
        };
        let sock = socket2::SockRef::from(&stream);
        assert!(sock.keepalive()?);
        assert_eq!(sock.tcp_keepalive_time()?, Duration::from_secs(30));
        assert_eq!(sock.tcp_keepalive_interval()?, Duration::from_secs(5));
        assert_eq!(sock.tcp_keepalive_retries()?, 4);
        assert!(stream.nodelay()?);
        drop(listener);
        match dial(addr, &opts, None).await {
            Err(ConnectError::Io(_)) => Ok(()),
            other => Err(format!("expected a refused connect, got {other:?}").into()),
        }
    }
}
