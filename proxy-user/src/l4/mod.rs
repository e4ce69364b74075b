//! Opaque TCP: protocol sniffing for undeclared ports, and byte relaying with half-close.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::accept::ConnContext;
use crate::routing::{self, TcpDecision};

/// Istio's default `connectTimeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the first bytes of a connection say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    Http1,
    Http2,
    Opaque,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HTTP1_METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// Classify a prefix of the stream; `None` = need more bytes.
pub fn classify(prefix: &[u8]) -> Option<Sniffed> {
    let could_be = |pattern: &[u8]| {
        let n = prefix.len().min(pattern.len());
        prefix[..n] == pattern[..n]
    };
    if prefix.len() >= H2_PREFACE.len() && prefix.starts_with(H2_PREFACE) {
        return Some(Sniffed::Http2);
    }
    if HTTP1_METHODS.iter().any(|m| prefix.starts_with(m)) {
        return Some(Sniffed::Http1);
    }
    if could_be(H2_PREFACE) || HTTP1_METHODS.iter().any(|m| could_be(m)) {
        return None;
    }
    Some(Sniffed::Opaque)
}

/// Peek at the stream until its protocol is clear, the client goes quiet for `timeout`, or it closes.
pub async fn sniff(stream: &TcpStream, timeout: Duration) -> Sniffed {
    let mut buf = [0u8; 32];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await;
        let n = match peeked {
            Ok(Ok(n)) if n > 0 => n,
            // Closed, failed or quiet: nothing HTTP about it.
            _ => return Sniffed::Opaque,
        };
        if let Some(kind) = classify(&buf[..n]) {
            return kind;
        }
        if n == buf.len() {
            return Sniffed::Opaque;
        }
        // Wait for more bytes without spinning on the same peek.
        tokio::time::sleep(Duration::from_millis(1)).await;
        if tokio::time::Instant::now() >= deadline {
            return Sniffed::Opaque;
        }
    }
}

/// Relay an opaque TCP connection to an endpoint of the routed cluster.
pub async fn proxy(mut downstream: TcpStream, ctx: Arc<ConnContext>) {
    ctx.stats.tcp_connections.inc();
    // A TCP connection is routed once, under the view it was accepted with.
    let target = match routing::route_tcp(&ctx.view, ctx.original_dst) {
        TcpDecision::Forward(t) | TcpDecision::Passthrough(t) => t.clone(),
        TcpDecision::Close => {
            tracing::debug!(dst = %ctx.original_dst, "no TCP route, or unknown destination under REGISTRY_ONLY; closing");
            return;
        }
    };
    let cluster = target.key();
    let in_flight = match target.pick(ctx.original_dst).await {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(%cluster, error = ?e, "no upstream endpoint; closing");
            return;
        }
    };
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(in_flight.addr()))
        .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(endpoint = %in_flight.addr(), error = %e, "upstream connect failed");
            return;
        }
        Err(_) => {
            tracing::debug!(endpoint = %in_flight.addr(), "upstream connect timed out");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let mut upstream = upstream;
    // copy_bidirectional forwards each direction's EOF as a write shutdown (half-close).
    match tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
        Ok((up, down)) => {
            tracing::trace!(%cluster, sent = up, received = down, "tcp done")
        }
        Err(e) => tracing::debug!(%cluster, error = %e, "tcp relay ended"),
    }
    drop(in_flight);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_prefixes() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Sniffed::Http1));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(
            classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Some(Sniffed::Http2)
        );
        assert_eq!(classify(b"PRI * HT"), None);
        assert_eq!(classify(b"\x16\x03\x01"), Some(Sniffed::Opaque));
        assert_eq!(classify(b"hello"), Some(Sniffed::Opaque));
        assert_eq!(classify(b"GETX"), Some(Sniffed::Opaque));
    }
}
