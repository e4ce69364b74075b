//! Opaque TCP: protocol sniffing for undeclared ports, SNI routing of TLS ports, and byte relaying
//! with half-close.

pub mod sni;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use std::net::SocketAddr;

use crate::accept::ConnContext;
use crate::metrics::access_log::Entry;
use crate::metrics::log_sink::Sink;
use crate::metrics::{Destination, TcpKey, TcpSeries};
use crate::outcome::{ResponseFlag, ResponseFlags};
use crate::routing::{self, Outbound, Target, TcpDecision};
use crate::upstream::lb::hash_key::source_ip_hash;
use crate::upstream::outlier::HostResult;
use crate::upstream::PickError;

/// How long a client on a port with `tls` rules gets to send its ClientHello: Envoy's default listener
/// filter timeout. Istio disables that timeout on these listeners; a bound keeps a silent client from
/// holding its buffer forever. When it expires the connection is routed as one without SNI.
pub const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(15);

/// Reads allowed for one ClientHello: parsing restarts on each read, so this bounds the work a client
/// sending one byte per segment can cause (a real ClientHello takes a handful of reads).
const MAX_CLIENT_HELLO_READS: usize = 256;

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

/// The client's first bytes, read until they hold a whole ClientHello, and its server name.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientHello {
    /// Decided: the server name (`None`: no SNI, not TLS, malformed, too large, or the client stayed
    /// silent past the timeout). `bytes` were consumed and must be replayed upstream.
    Read { sni: Option<String>, bytes: Vec<u8> },
    /// The client closed (or the read failed) before a decision: nothing to route.
    Closed,
}

/// Read from `stream` until the bytes are a complete ClientHello or cannot become one, at most
/// [`sni::MAX_CLIENT_HELLO_BYTES`], [`MAX_CLIENT_HELLO_READS`] reads and `timeout`. Bytes are buffered,
/// not peeked, so waiting for a ClientHello split across segments needs no polling.
pub async fn read_client_hello<R: AsyncRead + Unpin>(
    stream: &mut R,
    timeout: Duration,
) -> ClientHello {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    for _ in 0..MAX_CLIENT_HELLO_READS {
        match sni::parse(&bytes) {
            sni::Hello::Complete { sni } => return ClientHello::Read { sni, bytes },
            sni::Hello::Invalid(reason) => {
                tracing::debug!(reason, "no ClientHello; routing without SNI");
                return ClientHello::Read { sni: None, bytes };
            }
            sni::Hello::NeedMore => {}
        }
        let room = sni::MAX_CLIENT_HELLO_BYTES.saturating_sub(bytes.len());
        let Some(buf) = chunk.get_mut(..room.min(4096)).filter(|b| !b.is_empty()) else {
            break;
        };
        match tokio::time::timeout_at(deadline, stream.read(buf)).await {
            Err(_) => {
                tracing::debug!(
                    read = bytes.len(),
                    "ClientHello timed out; routing without SNI"
                );
                return ClientHello::Read { sni: None, bytes };
            }
            Ok(Ok(0)) | Ok(Err(_)) => return ClientHello::Closed,
            Ok(Ok(n)) => bytes.extend_from_slice(buf.get(..n).unwrap_or_default()),
        }
    }
    tracing::debug!(
        read = bytes.len(),
        "ClientHello too large or too fragmented; routing without SNI"
    );
    ClientHello::Read { sni: None, bytes }
}

/// Relay an opaque TCP connection to an endpoint of the routed cluster. On a port with `tls` rules for
/// the client the ClientHello is read first, routed by its SNI, and replayed to the upstream; the TLS
/// session itself is never terminated.
pub async fn proxy(mut downstream: TcpStream, ctx: Arc<ConnContext>) {
    ctx.stats.tcp_connections.inc();
    let mut log = TcpLog::start(&ctx);
    // A TCP connection is routed once, under the view it was accepted with.
    let mut replay = Vec::new();
    let decision = if routing::routes_by_sni(&ctx.view, ctx.original_dst) {
        match read_client_hello(&mut downstream, CLIENT_HELLO_TIMEOUT).await {
            ClientHello::Read { sni, bytes } => {
                replay = bytes;
                let decision = routing::route_tls(&ctx.view, ctx.original_dst, sni.as_deref());
                tracing::debug!(dst = %ctx.original_dst, ?sni, "routed by SNI");
                if log.sink.is_some() {
                    log.sni = sni;
                }
                decision
            }
            ClientHello::Closed => {
                tracing::debug!(dst = %ctx.original_dst, "client left before its ClientHello was complete");
                return;
            }
        }
    } else {
        routing::route_tcp(&ctx.view, ctx.original_dst)
    };
    let target = match decision {
        TcpDecision::Forward(t) | TcpDecision::Passthrough(t) => t.clone(),
        TcpDecision::Close => {
            tracing::debug!(dst = %ctx.original_dst, "no TCP route, or unknown destination under REGISTRY_ONLY; closing");
            let blocked = matches!(ctx.view.lookup(ctx.original_dst), Outbound::Blocked { .. });
            refused(&ctx, &log, None, blocked, None, ResponseFlag::NoRouteFound);
            return;
        }
    };
    let cluster = target.key();
    // `useSourceIp` hashes TCP connections by the client pod's IP (kernel-attested peer).
    let hash = target
        .cluster()
        .filter(|c| c.policy.hashes_source_ip())
        .map(|_| source_ip_hash(ctx.peer.ip()));
    let picked = match target.pick(&ctx.pick_request(&[], hash)).await {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(%cluster, error = ?e, "no upstream endpoint; closing");
            let flag = match e {
                PickError::NoCluster => ResponseFlag::NoClusterFound,
                PickError::NoHealthyUpstream => ResponseFlag::NoHealthyUpstream,
            };
            refused(&ctx, &log, Some(&target), false, None, flag);
            return;
        }
    };
    let endpoint = picked.addr();
    // The client's pool for the cluster applies `maxConnections`: over it, the downstream
    // connection is closed (Envoy's `UO`). With DestinationRule `tls` the relay originates TLS,
    // with the cluster's host as SNI when `sni` is not set (a relay has no request authority).
    let mut conn = match picked
        .client()
        .pool()
        .open_tcp(endpoint, &cluster.host)
        .await
    {
        Ok(c) => c,
        Err(e) if e.is_overflow() => {
            tracing::debug!(%cluster, %endpoint, flags = "UO", "maxConnections reached; closing");
            refused(
                &ctx,
                &log,
                Some(&target),
                false,
                Some(endpoint),
                ResponseFlag::UpstreamOverflow,
            );
            return;
        }
        Err(e) => {
            tracing::debug!(%cluster, %endpoint, error = %e, flags = "UF", "upstream connect failed; closing");
            picked.client().record(endpoint, HostResult::ConnectFailure);
            refused(
                &ctx,
                &log,
                Some(&target),
                false,
                Some(endpoint),
                ResponseFlag::UpstreamConnectionFailure,
            );
            return;
        }
    };
    // For TCP, a connect is the endpoint's success (Envoy reports it to outlier detection).
    picked.client().record(endpoint, HostResult::ConnectSuccess);
    let series = tcp_series(
        &ctx,
        Some(&target),
        false,
        Some(endpoint),
        ResponseFlags::default(),
    );
    if let Some(s) = &series {
        s.opened.inc();
    }
    let mut downstream = Counted::new(&mut downstream);
    let upstream = &mut conn.io;
    // What was read to route the connection goes first, unchanged (the client sent it: received).
    downstream.received = replay.len() as u64;
    if let Err(e) = upstream.write_all(&replay).await {
        tracing::debug!(%endpoint, error = %e, "upstream write failed");
        if let Some(s) = &series {
            s.received.add(downstream.received);
            s.closed.inc();
        }
        log.write(
            &ctx,
            Some(&target),
            Some(endpoint),
            ResponseFlags::default(),
            downstream.received,
            0,
        );
        return;
    }
    drop(replay);
    let limits = RelayLimits {
        idle: conn.idle_timeout,
        max_duration: conn.max_duration,
    };
    match relay(&mut downstream, upstream, limits).await {
        Ok(Relayed::Done(up, down)) => {
            tracing::trace!(%cluster, sent = up, received = down, "tcp done")
        }
        Ok(Relayed::IdleTimeout) => {
            conn.count_idle_timeout();
            tracing::debug!(%cluster, "tcp relay idle timeout");
        }
        Ok(Relayed::MaxDuration) => {
            conn.count_max_duration();
            tracing::debug!(%cluster, flags = "DT", "tcp relay reached maxConnectionDuration");
        }
        Err(e) => tracing::debug!(%cluster, error = %e, "tcp relay ended"),
    }
    if let Some(s) = &series {
        s.received.add(downstream.received);
        s.sent.add(downstream.sent);
        s.closed.inc();
    }
    log.write(
        &ctx,
        Some(&target),
        Some(endpoint),
        ResponseFlags::default(),
        downstream.received,
        downstream.sent,
    );
    drop(picked);
}

/// The access log of one TCP connection: taken at accept when the log is on, written when the
/// connection ends (with the same flags and byte counts the metrics record).
struct TcpLog {
    sink: Option<Arc<Sink>>,
    start_time: SystemTime,
    started: tokio::time::Instant,
    sni: Option<String>,
}

impl TcpLog {
    fn start(ctx: &ConnContext) -> TcpLog {
        let sink = ctx.metrics.access_log.sink();
        TcpLog {
            start_time: if sink.is_some() {
                SystemTime::now()
            } else {
                UNIX_EPOCH
            },
            sink,
            started: tokio::time::Instant::now(),
            sni: None,
        }
    }

    fn write(
        &self,
        ctx: &ConnContext,
        target: Option<&Target>,
        endpoint: Option<SocketAddr>,
        flags: ResponseFlags,
        received: u64,
        sent: u64,
    ) {
        let Some(sink) = &self.sink else {
            return;
        };
        let blocked = target.is_none()
            && flags.has(ResponseFlag::NoRouteFound)
            && matches!(ctx.view.lookup(ctx.original_dst), Outbound::Blocked { .. });
        let format = sink.format();
        let entry = Entry {
            start_time: self.start_time,
            protocol: None,
            code: 0,
            flags,
            details: None,
            bytes_received: received,
            bytes_sent: sent,
            duration: self.started.elapsed(),
            request: vec![None; format.request_headers().len()],
            response: vec![None; format.response_headers().len()],
            upstream_host: endpoint,
            upstream_cluster: crate::l7::metered::cluster_name(target, blocked),
            downstream_local: ctx.original_dst,
            downstream_remote: ctx.peer,
            requested_server_name: self.sni.clone(),
            route_name: None,
            grpc_status: None,
        };
        sink.submit(&entry);
    }
}

/// The Istio TCP series of this connection's client, destination and flags.
fn tcp_series(
    ctx: &ConnContext,
    target: Option<&Target>,
    blocked: bool,
    endpoint: Option<SocketAddr>,
    flags: ResponseFlags,
) -> Option<Arc<TcpSeries>> {
    let node = ctx.state.load();
    let (cluster, host) = match target {
        Some(Target::Cluster(c)) => (Arc::as_ptr(c) as usize, Some(c.key.host.as_str())),
        _ if blocked => (1, Some(crate::l7::metered::BLACK_HOLE)),
        _ => (0, None),
    };
    let key = TcpKey {
        source: ctx.pod_cgroup_id,
        original_dst: ctx.original_dst,
        cluster,
        endpoint,
        flags,
    };
    ctx.metrics
        .tcp_series(&node, key, Destination { host, endpoint })
}

/// A connection closed before any byte was relayed, with the response flag that says why: opened
/// and closed at once, as Envoy reports it.
fn refused(
    ctx: &ConnContext,
    log: &TcpLog,
    target: Option<&Target>,
    blocked: bool,
    endpoint: Option<SocketAddr>,
    flag: ResponseFlag,
) {
    let mut flags = ResponseFlags::default();
    flags.set(flag);
    if let Some(s) = tcp_series(ctx, target, blocked, endpoint, flags) {
        s.opened.inc();
        s.closed.inc();
    }
    log.write(ctx, target, endpoint, flags, 0, 0);
}

/// Counts the bytes a relay moves through the client's side.
struct Counted<'a, T> {
    inner: &'a mut T,
    /// Read from the client.
    received: u64,
    /// Written to the client.
    sent: u64,
}

impl<'a, T> Counted<'a, T> {
    fn new(inner: &'a mut T) -> Self {
        Counted {
            inner,
            received: 0,
            sent: 0,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<'_, T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut *self.inner).poll_read(cx, buf);
        self.received += (buf.filled().len() - before) as u64;
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<'_, T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut *self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &polled {
            self.sent += *n as u64;
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

/// `tcp.idleTimeout` and `maxConnectionDuration` of a relay.
#[derive(Debug, Clone, Copy)]
pub struct RelayLimits {
    /// Close after this long without bytes either way.
    pub idle: Option<Duration>,
    /// Close at this age.
    pub max_duration: Option<Duration>,
}

/// How a relay ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Relayed {
    /// Both sides closed: bytes sent upstream and received from it.
    Done(u64, u64),
    /// No bytes either way for the idle timeout.
    IdleTimeout,
    /// The connection reached its maximum duration.
    MaxDuration,
}

/// Relay bytes both ways with half-close (each side's EOF becomes a write shutdown of the other)
/// until both sides are done or a limit closes the relay.
pub async fn relay<A, B>(a: &mut A, b: &mut B, limits: RelayLimits) -> std::io::Result<Relayed>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let started = tokio::time::Instant::now();
    // Milliseconds after `started` when bytes last moved.
    let last_active = AtomicU64::new(0);
    let mut a = Activity {
        inner: a,
        started,
        last: &last_active,
    };
    let mut b = Activity {
        inner: b,
        started,
        last: &last_active,
    };
    let last = || started + Duration::from_millis(last_active.load(Ordering::Relaxed));
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    loop {
        let idle_at = limits.idle.map(|d| last() + d);
        let max_at = limits.max_duration.map(|d| started + d);
        let deadline = match (idle_at, max_at) {
            (Some(i), Some(m)) => Some(i.min(m)),
            (i, m) => i.or(m),
        };
        let timer = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            done = &mut copy => return done.map(|(up, down)| Relayed::Done(up, down)),
            () = timer => {}
        }
        let now = tokio::time::Instant::now();
        if max_at.is_some_and(|m| now >= m) {
            return Ok(Relayed::MaxDuration);
        }
        if limits.idle.is_some_and(|d| now >= last() + d) {
            return Ok(Relayed::IdleTimeout);
        }
    }
}

/// Notes when bytes last moved through a stream (both sides of a relay share one clock).
struct Activity<'a, T> {
    inner: &'a mut T,
    started: tokio::time::Instant,
    last: &'a AtomicU64,
}

impl<T: AsyncRead + Unpin> AsyncRead for Activity<'_, T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut *self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.last.store(ms, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Activity<'_, T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
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

    /// A minimal ClientHello naming `sni` (see `sni::tests` for the parser's own cases).
    fn hello(sni: &str) -> Vec<u8> {
        let name = sni.as_bytes();
        let n = u8::try_from(name.len()).expect("short name");
        let mut ext = vec![0, 0, 0, n + 5, 0, n + 3, 0, 0, n];
        ext.extend_from_slice(name);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[0u8; 32]);
        body.extend_from_slice(&[
            0,
            0,
            2,
            0x13,
            0x01,
            1,
            0,
            0,
            u8::try_from(ext.len()).expect("len"),
        ]);
        body.extend_from_slice(&ext);
        let mut hs = vec![1, 0, 0, u8::try_from(body.len()).expect("len")];
        hs.extend_from_slice(&body);
        let mut rec = vec![22, 3, 1, 0, u8::try_from(hs.len()).expect("len")];
        rec.extend_from_slice(&hs);
        rec
    }

    #[tokio::test]
    async fn a_client_hello_split_across_writes_is_reassembled_and_kept_for_replay() {
        let bytes = hello("a.example.com");
        let (mut client, mut proxy) = tokio::io::duplex(64 * 1024);
        let sent = bytes.clone();
        let writer = tokio::spawn(async move {
            for part in sent.chunks(7) {
                client.write_all(part).await.expect("write");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            client
        });
        let got = read_client_hello(&mut proxy, Duration::from_secs(10)).await;
        assert_eq!(
            got,
            ClientHello::Read {
                sni: Some("a.example.com".into()),
                bytes
            }
        );
        drop(writer.await.expect("writer"));
    }

    #[tokio::test]
    async fn garbage_silence_and_early_close_are_decided_without_sni() {
        let (mut client, mut proxy) = tokio::io::duplex(1024);
        client.write_all(b"hello there\n").await.expect("write");
        assert_eq!(
            read_client_hello(&mut proxy, Duration::from_secs(10)).await,
            ClientHello::Read {
                sni: None,
                bytes: b"hello there\n".to_vec()
            }
        );

        // Half a ClientHello, then silence: the timeout routes it without SNI, bytes kept.
        let (mut client, mut proxy) = tokio::io::duplex(1024);
        let half = hello("a.example.com");
        let half = half.get(..20).expect("prefix").to_vec();
        client.write_all(&half).await.expect("write");
        let started = tokio::time::Instant::now();
        let timeout = Duration::from_millis(200);
        assert_eq!(
            read_client_hello(&mut proxy, timeout).await,
            ClientHello::Read {
                sni: None,
                bytes: half.clone()
            }
        );
        assert!(started.elapsed() >= timeout);

        // Half a ClientHello, then EOF: nothing to route.
        client.shutdown().await.expect("shutdown");
        let (mut client, mut proxy) = tokio::io::duplex(1024);
        client.write_all(&half).await.expect("write");
        drop(client);
        assert_eq!(
            read_client_hello(&mut proxy, Duration::from_secs(10)).await,
            ClientHello::Closed
        );
    }

    #[tokio::test(start_paused = true)]
    async fn relays_close_when_idle_or_too_old() {
        let limits = RelayLimits {
            idle: Some(Duration::from_secs(60)),
            max_duration: None,
        };
        let (mut client, mut a) = tokio::io::duplex(1024);
        let (mut b, mut server) = tokio::io::duplex(1024);
        let started = tokio::time::Instant::now();
        let relayed = tokio::spawn(async move { relay(&mut a, &mut b, limits).await.ok() });
        // Bytes at 30 s push the idle deadline to 90 s.
        tokio::time::sleep(Duration::from_secs(30)).await;
        client.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.expect("read");
        assert_eq!(relayed.await.expect("join"), Some(Relayed::IdleTimeout));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(90) && took < Duration::from_secs(91),
            "{took:?}"
        );

        let limits = RelayLimits {
            idle: None,
            max_duration: Some(Duration::from_secs(5)),
        };
        let (_client, mut a) = tokio::io::duplex(1024);
        let (mut b, _server) = tokio::io::duplex(1024);
        let started = tokio::time::Instant::now();
        assert_eq!(
            relay(&mut a, &mut b, limits).await.ok(),
            Some(Relayed::MaxDuration)
        );
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test]
    async fn one_byte_per_read_is_bounded() {
        // A record header announcing a large hello, then a trickle: gives up after the read limit.
        let (mut client, mut proxy) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            let mut bytes = vec![22, 3, 1, 0x40, 0x00, 1, 0, 0x3f, 0xfc];
            bytes.resize(2_000, 0);
            for b in bytes {
                if client.write_all(&[b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        match read_client_hello(&mut proxy, Duration::from_secs(30)).await {
            // Each read takes what arrived since the last one: at least one byte, so the limit
            // stops the reading long before the 2,000 bytes are sent.
            ClientHello::Read { sni: None, bytes } => {
                assert!(bytes.len() < 2_000, "{}", bytes.len())
            }
            other => panic!("{other:?}"),
        }
        drop(proxy);
        writer.await.expect("writer");
    }
}
