//! Connection pools of one client pod for one cluster, as its sidecar would hold them: per endpoint,
//! idle HTTP/1.1 connections (one request at a time) and HTTP/2 connections (streams counted against
//! `maxConcurrentStreams`), all subject to the client's circuit breaker (`breaker`).
//!
//! A request's way through a pool (Envoy's `ConnPoolImplBase`):
//! 1. `http2MaxRequests` reached → overflow.
//! 2. An idle HTTP/1.1 connection (or an HTTP/2 connection with a free stream) → use it.
//! 3. Otherwise the request is pending: `http1MaxPendingRequests` reached → overflow. It then opens a
//!    connection if `maxConnections` allows (or the endpoint has none, see `breaker`), or waits in the
//!    endpoint's queue (`upstream_cx_overflow`) until a connection is returned or closed.
//!
//! With DestinationRule `tls`, connections are TLS (handshake within the connect timeout) and pooled
//! like plaintext ones. Without a fixed `sni`, the SNI is the request's authority host, so an
//! endpoint has one pool per SNI value (Envoy keys its pools by the transport socket options that
//! auto SNI sets): a connection made for one name never carries a request for another.
//!
//! Invariants: a pool lock is held only for bookkeeping, never across an `.await`. Each connection
//! owns one connection slot ([`ConnSlot`]) from dial to close; its driver task (which runs hyper's
//! connection future and the idle and max-duration timers) releases it, so counts are right however
//! a connection ends. The request, pending and retry counts are RAII slots too.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::breaker::{Breaker, Limits};
use super::connect::{self, ConnectError, ConnectOptions, Originate, UpstreamIo};
use super::policy::ClusterPolicy;
use super::stats::{ClusterStats, StatsPair};
use super::tls::{Alpn, ClusterTls};
use crate::policy::Http2KeepAlive;
use dormant::Dormant;

mod dormant;

/// Any error a body can end with (hyper's, or the proxy's own, e.g. a route timeout mid-response).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body type of requests the proxy sends upstream and of responses it sends downstream.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// Envoy's default idle timeout of upstream connections (HTTP and TCP).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// How often a draining connection that still serves requests checks whether it may close.
const DRAIN_CHECK: Duration = Duration::from_millis(250);
/// How long an idle HTTP/1.1 connection keeps hyper's state before it parks (see [`dormant`]).
pub const DEFAULT_DORMANT_AFTER: Duration = Duration::from_millis(250);
/// How long a parking connection may take to hand its socket back before it is closed instead.
const PARK_WAIT: Duration = Duration::from_secs(1);

/// Why a request could not be sent upstream.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made: safe to retry on another endpoint.
    #[error("connect to {endpoint} failed: {source}")]
    Connect {
        endpoint: SocketAddr,
        #[source]
        source: ConnectError,
    },
    /// The connection or stream failed after the request may have been sent.
    #[error("request to {endpoint} failed: {source}")]
    Request {
        endpoint: SocketAddr,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A circuit breaker refused the request (503 `UO`, never retried).
    #[error("circuit breaker overflow")]
    Overflow,
}

impl SendError {
    /// The request never left the proxy, so another attempt cannot duplicate it.
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect { .. })
    }

    /// The TLS handshake failed: Envoy's transport failure reason for the 503 body.
    pub fn transport_failure(&self) -> Option<&str> {
        match self {
            SendError::Connect { source, .. } => source.transport_failure_reason(),
            _ => None,
        }
    }

    /// A circuit breaker refused the request.
    pub fn is_overflow(&self) -> bool {
        matches!(self, SendError::Overflow)
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

/// A cluster's pool settings, resolved once per cluster from its policy and shared by its clients.
#[derive(Debug)]
pub struct PoolConfig {
    /// How to dial endpoints.
    pub connect: ConnectOptions,
    /// Circuit-breaker limits (per client).
    pub limits: Limits,
    /// `maxRequestsPerConnection`; `None` = unlimited.
    pub max_requests_per_connection: Option<u32>,
    /// HTTP idle timeout; `None` = disabled (`0s`).
    pub idle_timeout: Option<Duration>,
    /// TCP relay idle timeout; `None` = disabled (`0s`).
    pub tcp_idle_timeout: Option<Duration>,
    /// `maxConnectionDuration`; `None` = unbounded.
    pub max_connection_duration: Option<Duration>,
    /// Streams per HTTP/2 connection before another connection is opened.
    pub max_concurrent_streams: u32,
    /// HTTP/2 PINGs.
    pub http2_keep_alive: Option<Http2KeepAlive>,
    /// TLS origination (`tls`), built once for the cluster; `None` = plaintext.
    pub tls: Option<ClusterTls>,
    /// The cluster's counters, shared by all its clients.
    pub stats: Arc<ClusterStats>,
    /// Idle time after which a plaintext HTTP/1.1 connection parks ([`dormant`]); `None`: never.
    pub dormant_after: Option<Duration>,
}

impl PoolConfig {
    /// The settings `policy` asks for, counting into `stats`.
    pub fn new(policy: &ClusterPolicy, stats: Arc<ClusterStats>) -> Self {
        let pool = policy.connection_pool.as_ref();
        // Zero disables a timeout; unset means Envoy's default of one hour.
        let timeout =
            |d: Option<Duration>| Some(d.unwrap_or(DEFAULT_IDLE_TIMEOUT)).filter(|d| !d.is_zero());
        Self {
            connect: ConnectOptions::from_pool(pool),
            limits: Limits::from_policy(policy),
            max_requests_per_connection: pool.and_then(|p| p.max_requests_per_connection),
            idle_timeout: timeout(pool.and_then(|p| p.idle_timeout)),
            tcp_idle_timeout: timeout(pool.and_then(|p| p.tcp_idle_timeout)),
            max_connection_duration: pool.and_then(|p| p.max_connection_duration),
            max_concurrent_streams: pool
                .and_then(|p| p.max_concurrent_streams)
                .unwrap_or(u32::MAX),
            http2_keep_alive: pool.and_then(|p| p.http2_keep_alive),
            tls: policy.tls.as_ref().and_then(ClusterTls::new),
            stats,
            dormant_after: Some(DEFAULT_DORMANT_AFTER),
        }
    }
}

/// Milliseconds on tokio's clock since the first call (cheap timestamps for atomics).
fn now_ms() -> u64 {
    u64::try_from(clock_base().elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn at_ms(ms: u64) -> Instant {
    *clock_base() + Duration::from_millis(ms)
}

fn clock_base() -> &'static Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now)
}

/// What a connection's driver and its users share.
#[derive(Default)]
struct ConnShared {
    /// Requests (HTTP/1.1: 0 or 1) or streams (HTTP/2) using the connection now.
    in_use: AtomicU32,
    /// Requests started on the connection.
    requests: AtomicU32,
    /// When the connection last became unused, in [`now_ms`].
    idle_since: AtomicU64,
    /// When the connection was opened, in [`now_ms`].
    born_ms: AtomicU64,
    /// No new requests: max requests or max duration reached; closes once unused.
    draining: AtomicBool,
    /// The connection's breaker slot: released by whoever closes the connection first (a request
    /// that ends it at `maxRequestsPerConnection`, or the driver when the connection ends), so the
    /// next queued request may dial at once, as Envoy's synchronous close lets it.
    slot: Mutex<Option<ConnSlot>>,
    /// The worker whose runtime drives the connection ([`crate::worker_id`]).
    worker: AtomicU16,
}

impl ConnShared {
    fn busy(&self) -> bool {
        self.in_use.load(Ordering::Acquire) > 0
    }

    fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Release the connection's slot (once; later calls do nothing). Never called with an
    /// endpoint lock held: releasing locks the endpoint.
    fn release_slot(&self) {
        let slot = self.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(slot);
    }
}

/// An HTTP/1.1 connection, owned by whoever uses it (or by the idle list).
struct H1Conn {
    sender: http1::SendRequest<ProxyBody>,
    shared: Arc<ConnShared>,
}

/// An idle HTTP/1.1 connection on an endpoint's idle list.
enum IdleH1 {
    /// hyper's connection runs: ready for a request at once.
    Live(H1Conn),
    /// Parked: only the socket is kept ([`dormant`]).
    Dormant(Dormant),
}

impl IdleH1 {
    fn shared(&self) -> &Arc<ConnShared> {
        match self {
            IdleH1::Live(conn) => &conn.shared,
            IdleH1::Dormant(parked) => parked.shared(),
        }
    }

    /// Whether a request on the calling worker uses it without waking another thread: a live
    /// connection driven by this worker, or a parked one (revived where it is taken).
    fn local(&self, worker: u16) -> bool {
        match self {
            IdleH1::Live(conn) => conn.shared.worker.load(Ordering::Relaxed) == worker,
            IdleH1::Dormant(_) => true,
        }
    }

    /// Whether a request may still use it.
    fn usable(&self) -> bool {
        let closed = match self {
            IdleH1::Live(conn) => conn.sender.is_closed(),
            IdleH1::Dormant(_) => false,
        };
        !closed && !self.shared().draining()
    }
}

/// An HTTP/2 connection; every user holds a clone of the sender.
#[derive(Clone)]
struct H2Conn {
    sender: http2::SendRequest<ProxyBody>,
    shared: Arc<ConnShared>,
}

/// What a queued request is woken with.
enum Grant {
    /// An HTTP/1.1 connection handed over as it was returned (or parked).
    Conn(IdleH1),
    /// Permission (and the slot) to open a connection.
    Dial(ConnSlot),
    /// Capacity may have appeared (HTTP/2): look again.
    Retry,
}

/// One endpoint's connections for one client.
#[derive(Default)]
struct EndpointState {
    /// Connections open or being opened.
    connections: u32,
    /// Idle HTTP/1.1 connections, most recently used last.
    idle: Vec<IdleH1>,
    /// HTTP/2 connections that take new streams.
    h2: Vec<H2Conn>,
    /// HTTP/2 connections being dialled.
    h2_connecting: u32,
    waiters_h1: VecDeque<oneshot::Sender<Grant>>,
    waiters_h2: VecDeque<oneshot::Sender<Grant>>,
}

/// Which connections a request may use: the endpoint's, made with the same SNI when it varies.
type PoolKey = (SocketAddr, Option<Box<str>>);

struct EndpointPool {
    addr: SocketAddr,
    /// The SNI host of the connections (auto SNI); `None`: plaintext, or `sni` set.
    server: Option<Box<str>>,
    state: Mutex<EndpointState>,
}

impl EndpointPool {
    fn lock(&self) -> MutexGuard<'_, EndpointState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One client's pools and breaker for one cluster.
pub struct ClientPool {
    config: Arc<PoolConfig>,
    /// This client's counters and the cluster's sums.
    stats: StatsPair,
    breaker: Breaker,
    endpoints: Mutex<HashMap<PoolKey, Arc<EndpointPool>>>,
}

impl std::fmt::Debug for ClientPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientPool")
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

/// Counts one connection against the breaker from dial to close; dropping it releases the count
/// and hands the freed capacity to a queued request.
struct ConnSlot {
    pool: Arc<ClientPool>,
    ep: Arc<EndpointPool>,
    armed: bool,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if self.armed {
            self.pool.release_connection(&self.ep);
        }
    }
}

/// Counts one request queued for a connection.
struct PendingSlot(Arc<ClientPool>);

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.0.breaker.release_pending();
        self.0.stats.down(|s| &s.upstream_rq_pending_active);
    }
}

/// Counts one request in flight, until its response body is done.
struct RequestSlot(Arc<ClientPool>);

impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.0.breaker.release_request();
        self.0.stats.down(|s| &s.upstream_rq_active);
    }
}

/// Counts one retry against `maxRetries` / the retry budget until dropped.
#[derive(Debug)]
pub struct RetrySlot(Arc<ClientPool>);

impl Drop for RetrySlot {
    fn drop(&mut self) {
        self.0.breaker.release_retry();
    }
}

/// The connection a request uses: returned to the pool (HTTP/1.1) or its stream released (HTTP/2)
/// when the response is done, or closed if it ended early.
struct ConnLease {
    pool: Arc<ClientPool>,
    ep: Arc<EndpointPool>,
    kind: LeaseKind,
}

enum LeaseKind {
    H1(Option<H1Conn>),
    H2(Option<Arc<ConnShared>>),
}

impl ConnLease {
    /// The response ended: give the connection back.
    fn finish(&mut self, complete: bool) {
        match &mut self.kind {
            LeaseKind::H1(conn) => {
                if let Some(c) = conn.take() {
                    self.pool.finish_h1(&self.ep, c, complete);
                }
            }
            LeaseKind::H2(shared) => {
                if let Some(s) = shared.take() {
                    self.pool.finish_h2(&self.ep, &s);
                }
            }
        }
    }
}

impl Drop for ConnLease {
    fn drop(&mut self) {
        self.finish(false);
    }
}

/// A response body read from a pooled connection; the connection goes back when the body ends.
pub struct PooledBody {
    inner: Incoming,
    lease: ConnLease,
    _request: RequestSlot,
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody").finish_non_exhaustive()
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.lease.finish(true),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.lease.finish(true),
            Poll::Ready(Some(Err(_))) => this.lease.finish(false),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body nobody polled to the end may still be complete (e.g. empty).
        let complete = hyper::body::Body::is_end_stream(&self.inner);
        self.lease.finish(complete);
    }
}

/// What a request got from an endpoint's bookkeeping.
enum Step<C> {
    /// A connection to use now.
    Ready(C),
    /// Open a connection (the request is pending meanwhile).
    Dial(ConnSlot, PendingSlot),
    /// Wait in the queue.
    Wait(oneshot::Receiver<Grant>, PendingSlot),
}

impl ClientPool {
    /// Empty pools with `config`'s limits.
    pub fn new(config: Arc<PoolConfig>) -> Self {
        Self {
            stats: StatsPair::new(&config.stats),
            config,
            breaker: Breaker::default(),
            endpoints: Mutex::new(HashMap::new()),
        }
    }

    /// The cluster's pool settings.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// This client's counters and its cluster's.
    pub fn stats(&self) -> &StatsPair {
        &self.stats
    }

    /// Connections open or being opened to `addr` (every SNI pool of it).
    pub fn connections_to(&self, addr: SocketAddr) -> u32 {
        self.endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|ep| ep.addr == addr)
            .map(|ep| ep.lock().connections)
            .sum()
    }

    /// The breaker's counts (tests, admin).
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// Close every idle connection (their drivers release the slots). Called when the client's
    /// state is dropped: idle connections would otherwise keep the pool alive until their idle
    /// timeout, or for ever with `idleTimeout: 0s`.
    pub fn close_idle(&self) {
        let eps: Vec<Arc<EndpointPool>> = self
            .endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for ep in eps {
            let (idle, h2) = {
                let mut st = ep.lock();
                (std::mem::take(&mut st.idle), std::mem::take(&mut st.h2))
            };
            // HTTP/2 connections with streams in flight close when those end.
            drop((idle, h2));
        }
    }

    /// The pool of `addr` for requests to `authority` (which matters only for auto SNI).
    fn endpoint(&self, addr: SocketAddr, authority: &str) -> Arc<EndpointPool> {
        let server = self
            .config
            .tls
            .as_ref()
            .and_then(|tls| tls.server_key(authority));
        let key = (addr, server);
        let mut eps = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ep) = eps.get(&key) {
            return Arc::clone(ep);
        }
        // Endpoints that left the cluster (or names no longer asked for) keep an entry only while
        // something uses them.
        eps.retain(|_, ep| Arc::strong_count(ep) > 1 || ep.lock().connections > 0);
        let ep = Arc::new(EndpointPool {
            addr,
            server: key.1.clone(),
            state: Mutex::new(EndpointState::default()),
        });
        eps.insert(key, Arc::clone(&ep));
        ep
    }

    /// Send `req` to `endpoint` over HTTP/2 (h2c) or HTTP/1.1. HTTP/1.1 requests carry an
    /// origin-form URI and a `Host` header; HTTP/2 requests an absolute URI (`:authority`).
    pub async fn send(
        self: &Arc<Self>,
        endpoint: SocketAddr,
        http2: bool,
        req: Request<ProxyBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        let request = self.request_slot()?;
        let ep = self.endpoint(endpoint, request_authority(&req));
        let (resp, lease) = if http2 {
            self.send_h2(&ep, req).await?
        } else {
            self.send_h1(&ep, req).await?
        };
        Ok(resp.map(|inner| PooledBody {
            inner,
            lease,
            _request: request,
        }))
    }

    /// A retry unless `maxRetries` (or the retry budget) is used up; `None` counts
    /// `upstream_rq_retry_overflow`.
    pub fn try_retry(self: &Arc<Self>) -> Option<RetrySlot> {
        if self.breaker.try_retry(&self.config.limits) {
            Some(RetrySlot(Arc::clone(self)))
        } else {
            self.stats.inc(|s| &s.upstream_rq_retry_overflow);
            None
        }
    }

    fn request_slot(self: &Arc<Self>) -> Result<RequestSlot, SendError> {
        if !self.breaker.try_request(&self.config.limits) {
            // Envoy counts `max_requests` overflow as a pending overflow.
            self.stats.inc(|s| &s.upstream_rq_pending_overflow);
            return Err(SendError::Overflow);
        }
        self.stats.up(|s| &s.upstream_rq_active);
        Ok(RequestSlot(Arc::clone(self)))
    }

    fn pending_slot(self: &Arc<Self>) -> Result<PendingSlot, SendError> {
        if !self.breaker.try_pending(&self.config.limits) {
            self.stats.inc(|s| &s.upstream_rq_pending_overflow);
            return Err(SendError::Overflow);
        }
        self.stats.inc(|s| &s.upstream_rq_pending_total);
        self.stats.up(|s| &s.upstream_rq_pending_active);
        Ok(PendingSlot(Arc::clone(self)))
    }

    /// A connection slot if the breaker allows one (always when the endpoint has none).
    fn try_reserve(
        self: &Arc<Self>,
        ep: &Arc<EndpointPool>,
        st: &mut EndpointState,
    ) -> Option<ConnSlot> {
        if !self
            .breaker
            .try_connection(&self.config.limits, st.connections == 0)
        {
            return None;
        }
        st.connections += 1;
        self.stats.up(|s| &s.upstream_cx_active);
        Some(ConnSlot {
            pool: Arc::clone(self),
            ep: Arc::clone(ep),
            armed: true,
        })
    }

    /// Undo a reservation while the endpoint is locked (dropping the slot would lock it again).
    fn unreserve(&self, st: &mut EndpointState, mut slot: ConnSlot) {
        slot.armed = false;
        st.connections = st.connections.saturating_sub(1);
        self.breaker.release_connection();
        self.stats.down(|s| &s.upstream_cx_active);
    }

    fn release_connection(self: &Arc<Self>, ep: &Arc<EndpointPool>) {
        let mut st = ep.lock();
        st.connections = st.connections.saturating_sub(1);
        self.breaker.release_connection();
        self.stats.down(|s| &s.upstream_cx_active);
        // The freed capacity goes to the longest-waiting request, HTTP/1.1 first.
        while !st.waiters_h1.is_empty() || !st.waiters_h2.is_empty() {
            let Some(slot) = self.try_reserve(ep, &mut st) else {
                break;
            };
            let waiter = match st.waiters_h1.pop_front() {
                Some(w) => w,
                None => match st.waiters_h2.pop_front() {
                    Some(w) => w,
                    None => {
                        self.unreserve(&mut st, slot);
                        break;
                    }
                },
            };
            match waiter.send(Grant::Dial(slot)) {
                Ok(()) => break,
                // That request went away: offer the slot to the next one.
                Err(Grant::Dial(slot)) => self.unreserve(&mut st, slot),
                Err(_) => {}
            }
        }
    }

    // ---- HTTP/1.1

    fn step_h1(self: &Arc<Self>, ep: &Arc<EndpointPool>) -> Result<Step<IdleH1>, SendError> {
        let mut st = ep.lock();
        st.idle.retain(IdleH1::usable);
        // The most recently returned connection of this worker, else the most recent one.
        let worker = crate::worker_id::current();
        let pick = st
            .idle
            .iter()
            .rposition(|c| c.local(worker))
            .or_else(|| st.idle.len().checked_sub(1));
        if let Some(conn) = pick.map(|at| st.idle.remove(at)) {
            conn.shared().in_use.store(1, Ordering::Release);
            return Ok(Step::Ready(conn));
        }
        let pending = self.pending_slot()?;
        if let Some(slot) = self.try_reserve(ep, &mut st) {
            return Ok(Step::Dial(slot, pending));
        }
        self.stats.inc(|s| &s.upstream_cx_overflow);
        let (tx, rx) = oneshot::channel();
        st.waiters_h1.push_back(tx);
        Ok(Step::Wait(rx, pending))
    }

    async fn send_h1(
        self: &Arc<Self>,
        ep: &Arc<EndpointPool>,
        mut req: Request<ProxyBody>,
    ) -> Result<(Response<Incoming>, ConnLease), SendError> {
        loop {
            let (mut conn, fresh) = match self.step_h1(ep)? {
                Step::Ready(idle) => match self.take_idle(ep, idle).await {
                    Some(conn) => (conn, false),
                    None => continue,
                },
                Step::Dial(slot, pending) => {
                    let conn = self.dial_h1(ep, slot).await?;
                    drop(pending);
                    (conn, true)
                }
                Step::Wait(rx, pending) => match rx.await {
                    Ok(Grant::Conn(idle)) => match self.take_idle(ep, idle).await {
                        Some(conn) => (conn, false),
                        None => continue,
                    },
                    Ok(Grant::Dial(slot)) => {
                        let conn = self.dial_h1(ep, slot).await?;
                        drop(pending);
                        (conn, true)
                    }
                    Ok(Grant::Retry) | Err(_) => continue,
                },
            };
            let lease_conn = |conn: H1Conn| ConnLease {
                pool: Arc::clone(self),
                ep: Arc::clone(ep),
                kind: LeaseKind::H1(Some(conn)),
            };
            if conn.sender.ready().await.is_err() {
                // Closed while idle: its driver releases the slot; try another connection.
                if fresh {
                    return Err(request_error(
                        ep.addr,
                        "connection closed before the request",
                    ));
                }
                continue;
            }
            conn.shared.requests.fetch_add(1, Ordering::AcqRel);
            let sent = conn.sender.try_send_request(req);
            let lease = lease_conn(conn);
            match sent.await {
                Ok(resp) => return Ok((resp, lease)),
                Err(e) => {
                    req = unsent_or_error(e, fresh, ep.addr)?;
                    drop(lease);
                }
            }
        }
    }

    async fn dial_h1(
        self: &Arc<Self>,
        ep: &Arc<EndpointPool>,
        slot: ConnSlot,
    ) -> Result<H1Conn, SendError> {
        let io = self.dial(ep, Alpn::Http1).await?;
        let may_park = matches!(io, UpstreamIo::Plain(_));
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| SendError::Request {
                endpoint: ep.addr,
                source: Box::new(e),
            })?;
        let shared = Arc::new(ConnShared {
            in_use: AtomicU32::new(1),
            born_ms: AtomicU64::new(now_ms()),
            ..Default::default()
        });
        *shared.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(slot);
        self.spawn_h1_driver(conn, Arc::clone(&shared), Arc::clone(ep), may_park);
        Ok(H1Conn { sender, shared })
    }

    /// A connection from the idle list (or a waiter's grant), ready for a request: a parked one
    /// gets hyper's connection back on its socket. `None`: it closed meanwhile (look again).
    async fn take_idle(self: &Arc<Self>, ep: &Arc<EndpointPool>, idle: IdleH1) -> Option<H1Conn> {
        let parked = match idle {
            IdleH1::Live(conn) => return Some(conn),
            IdleH1::Dormant(parked) => parked,
        };
        let (stream, shared) = parked.wake().await?;
        match http1::Builder::new()
            .handshake(TokioIo::new(UpstreamIo::Plain(stream)))
            .await
        {
            Ok((sender, conn)) => {
                self.spawn_h1_driver(conn, Arc::clone(&shared), Arc::clone(ep), true);
                Some(H1Conn { sender, shared })
            }
            Err(e) => {
                tracing::debug!(endpoint = %ep.addr, error = %e, "reviving a parked connection");
                shared.draining.store(true, Ordering::Release);
                shared.release_slot();
                None
            }
        }
    }

    /// Run an HTTP/1.1 connection until it ends, or park it once idle for `dormant_after`
    /// (`may_park`: plaintext). The connection's slot is in `shared` already.
    fn spawn_h1_driver(
        self: &Arc<Self>,
        conn: http1::Connection<TokioIo<UpstreamIo>, ProxyBody>,
        shared: Arc<ConnShared>,
        ep: Arc<EndpointPool>,
        may_park: bool,
    ) {
        shared
            .worker
            .store(crate::worker_id::current(), Ordering::Relaxed);
        let timers = self.timers();
        let mut dormant_after = self.config.dormant_after.filter(|_| may_park);
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            let conn = conn.without_shutdown();
            tokio::pin!(conn);
            loop {
                match drive(conn.as_mut(), &shared, timers, &pool.stats, dormant_after).await {
                    Driven::Ended(Ok(_)) | Driven::Close => break,
                    Driven::Ended(Err(e)) => {
                        tracing::debug!(endpoint = %ep.addr, error = %e, "upstream connection ended");
                        break;
                    }
                    Driven::Idle => {}
                }
                let Some(listed) = pool.unlist_idle(&ep, &shared) else {
                    // Handed to a request meanwhile, or dropped by the pool: stay as we are.
                    dormant_after = None;
                    continue;
                };
                // Without its sender, hyper's connection ends and hands the socket back.
                drop(listed);
                match tokio::time::timeout(PARK_WAIT, conn.as_mut()).await {
                    Ok(Ok(parts)) if parts.read_buf.is_empty() => {
                        if let UpstreamIo::Plain(stream) = parts.io.into_inner() {
                            let parked = Dormant::park(
                                stream,
                                Arc::clone(&shared),
                                Arc::clone(&ep),
                                timers,
                                pool.stats.clone(),
                            );
                            if let Some(parked) = parked {
                                pool.list_idle(&ep, IdleH1::Dormant(parked), false);
                                return;
                            }
                        }
                    }
                    _ => {}
                }
                shared.draining.store(true, Ordering::Release);
                break;
            }
            shared.release_slot();
        });
    }

    /// Take `shared`'s connection off the idle list, if it is there and unused.
    fn unlist_idle(&self, ep: &EndpointPool, shared: &Arc<ConnShared>) -> Option<H1Conn> {
        let mut st = ep.lock();
        let at = st
            .idle
            .iter()
            .position(|c| matches!(c, IdleH1::Live(_)) && Arc::ptr_eq(c.shared(), shared))?;
        if shared.busy() {
            return None;
        }
        match st.idle.remove(at) {
            IdleH1::Live(conn) => Some(conn),
            other => {
                st.idle.insert(at, other);
                None
            }
        }
    }

    /// Hand an unused connection to a queued request, or put it on the idle list: last if it
    /// `just_served` a response (it is idle from now on), first if it parked (idle longest).
    fn list_idle(&self, ep: &EndpointPool, mut conn: IdleH1, just_served: bool) {
        let mut st = ep.lock();
        while let Some(waiter) = st.waiters_h1.pop_front() {
            conn.shared().in_use.store(1, Ordering::Release);
            match waiter.send(Grant::Conn(conn)) {
                Ok(()) => return,
                Err(Grant::Conn(back)) => conn = back,
                Err(_) => return,
            }
        }
        conn.shared().in_use.store(0, Ordering::Release);
        if just_served {
            conn.shared().idle_since.store(now_ms(), Ordering::Release);
            st.idle.push(conn);
        } else {
            st.idle.insert(0, conn);
        }
    }

    fn timers(&self) -> Timers {
        Timers {
            idle: self.config.idle_timeout,
            max_duration: self.config.max_connection_duration,
        }
    }

    /// A response on `conn` ended (`complete`: read to its end).
    fn finish_h1(self: &Arc<Self>, ep: &Arc<EndpointPool>, conn: H1Conn, complete: bool) {
        let served = conn.shared.requests.load(Ordering::Acquire);
        let at_max = self
            .config
            .max_requests_per_connection
            .is_some_and(|max| served >= max);
        if !complete || at_max || conn.shared.draining() || conn.sender.is_closed() {
            if complete && at_max {
                self.stats.inc(|s| &s.upstream_cx_max_requests);
            }
            conn.shared.draining.store(true, Ordering::Release);
            conn.shared.in_use.store(0, Ordering::Release);
            let shared = Arc::clone(&conn.shared);
            // Dropping the sender closes the connection; its capacity is free from now on.
            drop(conn);
            shared.release_slot();
            return;
        }
        self.list_idle(ep, IdleH1::Live(conn), true);
    }

    // ---- HTTP/2

    fn step_h2(self: &Arc<Self>, ep: &Arc<EndpointPool>) -> Result<Step<H2Conn>, SendError> {
        let mut st = ep.lock();
        // Closed and draining connections take no new streams; dropping the pool's sender lets a
        // draining connection close once its streams are done.
        st.h2
            .retain(|c| !c.sender.is_closed() && !c.shared.draining());
        let max_streams = self.config.max_concurrent_streams;
        if let Some(conn) = st
            .h2
            .iter()
            .find(|c| c.shared.in_use.load(Ordering::Acquire) < max_streams)
            .cloned()
        {
            conn.shared.in_use.fetch_add(1, Ordering::AcqRel);
            let served = conn.shared.requests.fetch_add(1, Ordering::AcqRel) + 1;
            if self
                .config
                .max_requests_per_connection
                .is_some_and(|max| served >= max)
            {
                conn.shared.draining.store(true, Ordering::Release);
                self.stats.inc(|s| &s.upstream_cx_max_requests);
            }
            return Ok(Step::Ready(conn));
        }
        let pending = self.pending_slot()?;
        if st.h2_connecting == 0 {
            if let Some(slot) = self.try_reserve(ep, &mut st) {
                st.h2_connecting += 1;
                return Ok(Step::Dial(slot, pending));
            }
            self.stats.inc(|s| &s.upstream_cx_overflow);
        }
        // A connection is on its way (or none may be opened): wait for capacity.
        let (tx, rx) = oneshot::channel();
        st.waiters_h2.push_back(tx);
        Ok(Step::Wait(rx, pending))
    }

    async fn send_h2(
        self: &Arc<Self>,
        ep: &Arc<EndpointPool>,
        mut req: Request<ProxyBody>,
    ) -> Result<(Response<Incoming>, ConnLease), SendError> {
        loop {
            let (mut conn, fresh) = match self.step_h2(ep)? {
                Step::Ready(conn) => (conn, false),
                Step::Dial(slot, pending) => {
                    let conn = self.dial_h2(ep, slot, true).await?;
                    drop(pending);
                    (conn, true)
                }
                Step::Wait(rx, pending) => match rx.await {
                    Ok(Grant::Dial(slot)) => {
                        let conn = self.dial_h2(ep, slot, false).await?;
                        drop(pending);
                        (conn, true)
                    }
                    Ok(Grant::Conn(_) | Grant::Retry) | Err(_) => continue,
                },
            };
            let lease = ConnLease {
                pool: Arc::clone(self),
                ep: Arc::clone(ep),
                kind: LeaseKind::H2(Some(Arc::clone(&conn.shared))),
            };
            if conn.sender.ready().await.is_err() {
                if fresh {
                    return Err(request_error(
                        ep.addr,
                        "connection closed before the request",
                    ));
                }
                continue;
            }
            match conn.sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, lease)),
                Err(e) => {
                    req = unsent_or_error(e, fresh, ep.addr)?;
                    drop(lease);
                }
            }
        }
    }

    /// Dial an HTTP/2 connection; `counted` = this dial was announced in `h2_connecting`.
    async fn dial_h2(
        self: &Arc<Self>,
        ep: &Arc<EndpointPool>,
        slot: ConnSlot,
        counted: bool,
    ) -> Result<H2Conn, SendError> {
        let connecting = counted.then(|| Connecting { ep: Arc::clone(ep) });
        let io = self.dial(ep, Alpn::Http2).await?;
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new());
        if let Some(ka) = self.config.http2_keep_alive {
            builder
                .keep_alive_interval(ka.interval)
                .keep_alive_timeout(ka.timeout)
                .keep_alive_while_idle(true);
        }
        let (sender, conn) =
            builder
                .handshake(TokioIo::new(io))
                .await
                .map_err(|e| SendError::Request {
                    endpoint: ep.addr,
                    source: Box::new(e),
                })?;
        let shared = Arc::new(ConnShared {
            in_use: AtomicU32::new(1),
            requests: AtomicU32::new(1),
            born_ms: AtomicU64::new(now_ms()),
            ..Default::default()
        });
        self.spawn_driver(conn, Arc::clone(&shared), slot, ep.addr);
        let conn = H2Conn { sender, shared };
        if self.config.max_requests_per_connection == Some(1) {
            conn.shared.draining.store(true, Ordering::Release);
            self.stats.inc(|s| &s.upstream_cx_max_requests);
        }
        {
            let mut st = ep.lock();
            st.h2.push(conn.clone());
        }
        drop(connecting);
        Ok(conn)
    }

    /// A stream on an HTTP/2 connection ended: wake one queued request.
    fn finish_h2(self: &Arc<Self>, ep: &Arc<EndpointPool>, shared: &ConnShared) {
        if shared.in_use.fetch_sub(1, Ordering::AcqRel) == 1 {
            shared.idle_since.store(now_ms(), Ordering::Release);
        }
        let mut st = ep.lock();
        while let Some(waiter) = st.waiters_h2.pop_front() {
            if waiter.send(Grant::Retry).is_ok() {
                break;
            }
        }
    }

    // ---- connections

    /// Open a connection for `ep`'s pool, with TLS offering `alpn` when the cluster has `tls`.
    async fn dial(&self, ep: &EndpointPool, alpn: Alpn) -> Result<UpstreamIo, SendError> {
        let stats = &self.stats;
        let endpoint = ep.addr;
        stats.inc(|s| &s.upstream_cx_total);
        let tls = self.config.tls.as_ref().map(|tls| Originate {
            tls,
            alpn,
            // The pool's SNI host; with `sni` set the authority is not used.
            authority: ep.server.as_deref().unwrap_or_default(),
        });
        match connect::dial(endpoint, &self.config.connect, tls).await {
            Ok(io) => Ok(io),
            Err(e) => {
                stats.inc(|s| &s.upstream_cx_connect_fail);
                if matches!(e, ConnectError::Timeout) {
                    stats.inc(|s| &s.upstream_cx_connect_timeout);
                }
                Err(SendError::Connect {
                    endpoint,
                    source: e,
                })
            }
        }
    }

    /// Run a connection until it ends, closing it when idle or too old; then release its slot.
    fn spawn_driver<F, E>(
        &self,
        conn: F,
        shared: Arc<ConnShared>,
        slot: ConnSlot,
        endpoint: SocketAddr,
    ) where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let timers = self.timers();
        let stats = self.stats.clone();
        *shared.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(slot);
        tokio::spawn(async move {
            tokio::pin!(conn);
            if let Driven::Ended(Err(e)) = drive(conn, &shared, timers, &stats, None).await {
                tracing::debug!(%endpoint, error = %e, "upstream connection ended");
            }
            shared.release_slot();
        });
    }

    // ---- TCP

    /// Open a TCP connection for a relay, unless the client is at `maxConnections` (the caller
    /// closes the downstream connection, flag `UO`). With `tls`, the relay's bytes go over TLS
    /// originated for `authority` (a relay has no request authority: the caller names the
    /// cluster's host).
    pub async fn open_tcp(
        self: &Arc<Self>,
        endpoint: SocketAddr,
        authority: &str,
    ) -> Result<TcpConn, SendError> {
        let ep = self.endpoint(endpoint, authority);
        let slot = {
            let mut st = ep.lock();
            self.try_reserve(&ep, &mut st)
        };
        let Some(slot) = slot else {
            self.stats.inc(|s| &s.upstream_cx_overflow);
            return Err(SendError::Overflow);
        };
        let io = self.dial(&ep, Alpn::None).await?;
        Ok(TcpConn {
            io,
            idle_timeout: self.config.tcp_idle_timeout,
            max_duration: self.config.max_connection_duration,
            stats: self.stats.clone(),
            _slot: slot,
        })
    }
}

/// Announces an HTTP/2 dial in progress; when it ends (however), queued requests look again.
struct Connecting {
    ep: Arc<EndpointPool>,
}

impl Drop for Connecting {
    fn drop(&mut self) {
        let mut st = self.ep.lock();
        st.h2_connecting = st.h2_connecting.saturating_sub(1);
        for waiter in st.waiters_h2.drain(..) {
            let _ = waiter.send(Grant::Retry);
        }
    }
}

/// A failed send on a *reused* connection that never wrote the request (it raced the connection's
/// close) gives the request back for another connection; anything else is the request's error.
fn unsent_or_error(
    mut e: hyper::client::conn::TrySendError<Request<ProxyBody>>,
    fresh: bool,
    endpoint: SocketAddr,
) -> Result<Request<ProxyBody>, SendError> {
    match e.take_message() {
        Some(back) if !fresh => Ok(back),
        _ => Err(SendError::Request {
            endpoint,
            source: Box::new(e.into_error()),
        }),
    }
}

/// The authority of a request as the pool gets it: `:authority` (HTTP/2, absolute URI) or `Host`.
fn request_authority<B>(req: &Request<B>) -> &str {
    match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default(),
    }
}

fn request_error(endpoint: SocketAddr, what: &'static str) -> SendError {
    SendError::Request {
        endpoint,
        source: what.into(),
    }
}

#[derive(Debug, Clone, Copy)]
struct Timers {
    idle: Option<Duration>,
    max_duration: Option<Duration>,
}

/// How [`drive`] returned.
enum Driven<T> {
    /// The connection ended by itself, with this output.
    Ended(T),
    /// It must close (idle timeout, or too old or draining and unused): drop it.
    Close,
    /// It has been unused for `dormant_after`: the caller may park it.
    Idle,
}

/// Drive `conn` until it ends, or until it is idle for `timers.idle` or older than
/// `timers.max_duration` and unused, or until it has been unused for `dormant_after`.
async fn drive<F: Future>(
    mut conn: std::pin::Pin<&mut F>,
    shared: &ConnShared,
    timers: Timers,
    stats: &StatsPair,
    dormant_after: Option<Duration>,
) -> Driven<F::Output> {
    let born = at_ms(shared.born_ms.load(Ordering::Acquire));
    loop {
        let now = Instant::now();
        let busy = shared.busy();
        let idle_since = at_ms(shared.idle_since.load(Ordering::Acquire));
        let mut deadline: Option<Instant> = None;
        let mut sooner = |at: Instant| {
            deadline = Some(deadline.map_or(at, |d| d.min(at)));
        };
        if let Some(idle) = timers.idle {
            sooner(if busy { now } else { idle_since } + idle);
        }
        if shared.draining() {
            sooner(now + DRAIN_CHECK);
        } else {
            if let Some(max) = timers.max_duration {
                sooner(born + max);
            }
            // While busy, look again after a period: a connection is not told when it turns idle.
            if let Some(after) = dormant_after {
                sooner(if busy { now } else { idle_since } + after);
            }
        }
        let timer = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ended = conn.as_mut() => return Driven::Ended(ended),
            () = timer => {}
        }
        let now = Instant::now();
        let busy = shared.busy();
        if let Some(max) = timers.max_duration {
            if now >= born + max && !shared.draining.swap(true, Ordering::AcqRel) {
                stats.inc(|s| &s.upstream_cx_max_duration_reached);
            }
        }
        if shared.draining() && !busy {
            return Driven::Close;
        }
        let since = at_ms(shared.idle_since.load(Ordering::Acquire));
        if let Some(idle) = timers.idle {
            if !busy && now >= since + idle {
                stats.inc(|s| &s.upstream_cx_idle_timeout);
                shared.draining.store(true, Ordering::Release);
                return Driven::Close;
            }
        }
        if let Some(after) = dormant_after {
            if !busy && !shared.draining() && now >= since + after {
                return Driven::Idle;
            }
        }
    }
}

/// An upstream TCP connection for a relay; its connection slot is held until it is dropped.
pub struct TcpConn {
    /// The connection.
    pub io: UpstreamIo,
    /// Close the relay after this long without bytes either way (`tcp.idleTimeout`).
    pub idle_timeout: Option<Duration>,
    /// Close the relay at this age (`maxConnectionDuration`).
    pub max_duration: Option<Duration>,
    stats: StatsPair,
    _slot: ConnSlot,
}

impl TcpConn {
    /// The relay was closed for idleness.
    pub fn count_idle_timeout(&self) {
        self.stats.inc(|s| &s.upstream_cx_idle_timeout);
    }

    /// The relay was closed at its maximum age.
    pub fn count_max_duration(&self) {
        self.stats.inc(|s| &s.upstream_cx_max_duration_reached);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ConnectionPool;
    use http_body_util::{BodyExt, Empty};
    use std::sync::atomic::AtomicUsize;
    use tokio::net::TcpListener;

    type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

    /// A local HTTP/1.1 + h2c server answering 200 after `delay`; counts the connections it accepted.
    async fn server(delay: Duration) -> std::io::Result<(SocketAddr, Arc<AtomicUsize>)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| async move {
                        tokio::time::sleep(delay).await;
                        Ok::<_, std::convert::Infallible>(Response::new(Empty::<Bytes>::new()))
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok((addr, accepted))
    }

    fn pool_with(cp: ConnectionPool) -> Arc<ClientPool> {
        let policy = ClusterPolicy {
            connection_pool: Some(cp),
            ..Default::default()
        };
        let config = PoolConfig::new(&policy, Arc::default());
        Arc::new(ClientPool::new(Arc::new(config)))
    }

    fn get(h2: bool, addr: SocketAddr) -> Request<ProxyBody> {
        let mut req = Request::new(Empty::new().map_err(|e| match e {}).boxed());
        *req.uri_mut() = if h2 {
            format!("http://{addr}/").parse().unwrap_or_default()
        } else {
            "/".parse().unwrap_or_default()
        };
        if h2 {
            *req.version_mut() = http::Version::HTTP_2;
        }
        req
    }

    /// Send and read the whole response; `Ok(None)` = overflow.
    async fn exchange(
        pool: &Arc<ClientPool>,
        addr: SocketAddr,
        h2: bool,
    ) -> Result<Option<u16>, SendError> {
        match pool.send(addr, h2, get(h2, addr)).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let _ = resp.into_body().collect().await;
                Ok(Some(status))
            }
            Err(SendError::Overflow) => Ok(None),
            Err(e) => Err(e),
        }
    }

    #[tokio::test]
    async fn keep_alive_reuses_one_connection() -> TestResult {
        let (addr, accepted) = server(Duration::ZERO).await?;
        let pool = pool_with(ConnectionPool::default());
        for _ in 0..5 {
            assert_eq!(exchange(&pool, addr, false).await?, Some(200));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.config.stats.upstream_cx_total.get(), 1);
        assert_eq!(pool.config.stats.upstream_rq_active.get(), 0);
        Ok(())
    }

    /// The seeds' circuit breaker: one connection, one pending request, no keep-alive. Of three
    /// concurrent requests one is in flight, one waits, one overflows at once.
    #[tokio::test]
    async fn one_in_flight_one_pending_the_rest_overflow() -> TestResult {
        let (addr, accepted) = server(Duration::from_millis(300)).await?;
        let pool = pool_with(ConnectionPool {
            tcp_max_connections: Some(1),
            http1_max_pending_requests: Some(1),
            max_requests_per_connection: Some(1),
            ..Default::default()
        });
        let first = tokio::spawn({
            let pool = Arc::clone(&pool);
            async move { exchange(&pool, addr, false).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let second = tokio::spawn({
            let pool = Arc::clone(&pool);
            async move { exchange(&pool, addr, false).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.breaker.pending(), 1);
        assert_eq!(exchange(&pool, addr, false).await?, None);
        assert_eq!(first.await??, Some(200));
        assert_eq!(second.await??, Some(200));
        let stats = &pool.config.stats;
        assert_eq!(stats.upstream_rq_pending_overflow.get(), 1);
        assert_eq!(stats.upstream_cx_overflow.get(), 1);
        // A new connection per request.
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(stats.upstream_cx_total.get(), 2);
        assert_eq!(stats.upstream_cx_max_requests.get(), 2);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(stats.upstream_cx_active.get(), 0);
        assert_eq!(stats.upstream_rq_pending_active.get(), 0);
        assert_eq!(pool.breaker.connections(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn max_requests_overflow_and_retries_are_bounded() -> TestResult {
        let (addr, _) = server(Duration::from_millis(200)).await?;
        let pool = pool_with(ConnectionPool {
            http2_max_requests: Some(1),
            max_retries: Some(1),
            ..Default::default()
        });
        let first = tokio::spawn({
            let pool = Arc::clone(&pool);
            async move { exchange(&pool, addr, true).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(exchange(&pool, addr, true).await?, None);
        assert_eq!(first.await??, Some(200));
        assert_eq!(pool.config.stats.upstream_rq_pending_overflow.get(), 1);
        let retry = pool.try_retry();
        assert!(retry.is_some());
        assert!(pool.try_retry().is_none());
        assert_eq!(pool.config.stats.upstream_rq_retry_overflow.get(), 1);
        drop(retry);
        assert!(pool.try_retry().is_some());
        Ok(())
    }

    #[tokio::test]
    async fn h2_streams_beyond_max_concurrent_streams_open_connections() -> TestResult {
        let (addr, accepted) = server(Duration::from_millis(200)).await?;
        let pool = pool_with(ConnectionPool {
            max_concurrent_streams: Some(2),
            ..Default::default()
        });
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let pool = Arc::clone(&pool);
            tasks.push(tokio::spawn(
                async move { exchange(&pool, addr, true).await },
            ));
        }
        for t in tasks {
            assert_eq!(t.await??, Some(200));
        }
        // Five streams, two per connection.
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        // Unlimited streams: one connection.
        let (addr, accepted) = server(Duration::from_millis(200)).await?;
        let pool = pool_with(ConnectionPool::default());
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let pool = Arc::clone(&pool);
            tasks.push(tokio::spawn(
                async move { exchange(&pool, addr, true).await },
            ));
        }
        for t in tasks {
            assert_eq!(t.await??, Some(200));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        Ok(())
    }

    /// A pool whose idle HTTP/1.1 connections park after `after`.
    fn parking_pool(cp: ConnectionPool, after: Duration) -> Arc<ClientPool> {
        let policy = ClusterPolicy {
            connection_pool: Some(cp),
            ..Default::default()
        };
        let mut config = PoolConfig::new(&policy, Arc::default());
        config.dormant_after = Some(after);
        Arc::new(ClientPool::new(Arc::new(config)))
    }

    /// Idle connections of `pool` that are parked, and those that are live.
    fn idle_kinds(pool: &ClientPool) -> (usize, usize) {
        let eps = pool.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let mut kinds = (0, 0);
        for ep in eps.values() {
            for conn in &ep.lock().idle {
                match conn {
                    IdleH1::Dormant(_) => kinds.0 += 1,
                    IdleH1::Live(_) => kinds.1 += 1,
                }
            }
        }
        kinds
    }

    /// A bare HTTP/1.1 server: answers each request `200 ok` and closes a connection that has
    /// been idle for `close_idle_after`. Counts the connections it accepted.
    async fn closing_server(
        close_idle_after: Duration,
    ) -> std::io::Result<(SocketAddr, Arc<AtomicUsize>)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 1024];
                    loop {
                        let read =
                            tokio::time::timeout(close_idle_after, stream.read(&mut buf)).await;
                        let Ok(Ok(n)) = read else { return };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if stream.write_all(reply).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Ok((addr, accepted))
    }

    /// An idle plaintext HTTP/1.1 connection parks (hyper's state released) and serves the next
    /// request as the same upstream connection, again and again.
    #[tokio::test]
    async fn idle_connections_park_and_serve_again() -> TestResult {
        let (addr, accepted) = server(Duration::ZERO).await?;
        let pool = parking_pool(ConnectionPool::default(), Duration::from_millis(50));
        for _ in 0..3 {
            assert_eq!(exchange(&pool, addr, false).await?, Some(200));
            assert_eq!(idle_kinds(&pool), (0, 1));
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(idle_kinds(&pool), (1, 0));
            assert_eq!(pool.connections_to(addr), 1);
        }
        assert_eq!(exchange(&pool, addr, false).await?, Some(200));
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        let stats = &pool.config.stats;
        assert_eq!(stats.upstream_cx_total.get(), 1);
        assert_eq!(stats.upstream_cx_active.get(), 1);
        // Requests back to back on a parked connection: the first wakes it, the rest reuse it.
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let pool = Arc::clone(&pool);
                tokio::spawn(async move { exchange(&pool, addr, false).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await??, Some(200));
        }
        assert_eq!(
            pool.breaker.connections() as usize,
            accepted.load(Ordering::SeqCst)
        );
        Ok(())
    }

    /// A parked connection the upstream closes is closed at once (not at its next use), and its
    /// slot is free: with `maxConnections: 1` the next request dials without waiting.
    #[tokio::test]
    async fn parked_connection_closes_with_its_upstream() -> TestResult {
        let (addr, accepted) = closing_server(Duration::from_millis(300)).await?;
        let pool = parking_pool(
            ConnectionPool {
                tcp_max_connections: Some(1),
                ..Default::default()
            },
            Duration::from_millis(50),
        );
        assert_eq!(exchange(&pool, addr, false).await?, Some(200));
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(idle_kinds(&pool), (1, 0));
        assert_eq!(pool.connections_to(addr), 1);
        // The server closes at 300 ms idle.
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(idle_kinds(&pool), (0, 0));
        assert_eq!(pool.connections_to(addr), 0);
        assert_eq!(pool.config.stats.upstream_cx_active.get(), 0);
        assert_eq!(exchange(&pool, addr, false).await?, Some(200));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(pool.config.stats.upstream_cx_overflow.get(), 0);
        Ok(())
    }

    /// Idle timeout, maximum duration and `maxRequestsPerConnection` hold for parked connections
    /// as for live ones.
    #[tokio::test]
    async fn parked_connections_keep_their_limits() -> TestResult {
        let (addr, accepted) = server(Duration::ZERO).await?;
        let after = Duration::from_millis(30);
        let pool = parking_pool(
            ConnectionPool {
                idle_timeout: Some(Duration::from_millis(300)),
                ..Default::default()
            },
            after,
        );
        assert_eq!(exchange(&pool, addr, false).await?, Some(200));
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(idle_kinds(&pool), (1, 0));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let stats = &pool.config.stats;
        assert_eq!(stats.upstream_cx_idle_timeout.get(), 1);
        assert_eq!(stats.upstream_cx_active.get(), 0);
        assert_eq!(idle_kinds(&pool), (0, 0));

        let pool = parking_pool(
            ConnectionPool {
                max_connection_duration: Some(Duration::from_millis(300)),
                ..Default::default()
            },
            after,
        );
        assert_eq!(exchange(&pool, addr, false).await?, Some(200));
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert_eq!(pool.config.stats.upstream_cx_max_duration_reached.get(), 1);
        assert_eq!(pool.config.stats.upstream_cx_active.get(), 0);

        let before = accepted.load(Ordering::SeqCst);
        let pool = parking_pool(
            ConnectionPool {
                max_requests_per_connection: Some(2),
                ..Default::default()
            },
            after,
        );
        for _ in 0..2 {
            assert_eq!(exchange(&pool, addr, false).await?, Some(200));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The second request (on the woken connection) was its last.
        assert_eq!(pool.config.stats.upstream_cx_max_requests.get(), 1);
        assert_eq!(pool.config.stats.upstream_cx_active.get(), 0);
        assert_eq!(exchange(&pool, addr, false).await?, Some(200));
        assert_eq!(accepted.load(Ordering::SeqCst) - before, 2);
        Ok(())
    }

    /// Reclaimed client state closes parked connections too.
    #[tokio::test]
    async fn close_idle_closes_parked_connections() -> TestResult {
        let (addr, _) = server(Duration::ZERO).await?;
        let pool = parking_pool(ConnectionPool::default(), Duration::from_millis(30));
        assert_eq!(exchange(&pool, addr, false).await?, Some(200));
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(idle_kinds(&pool), (1, 0));
        pool.close_idle();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.connections_to(addr), 0);
        assert_eq!(pool.config.stats.upstream_cx_active.get(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn idle_and_old_connections_close() -> TestResult {
        let (addr, accepted) = server(Duration::ZERO).await?;
        let pool = pool_with(ConnectionPool {
            idle_timeout: Some(Duration::from_millis(200)),
            ..Default::default()
        });
        assert_eq!(exchange(&pool, addr, false).await?, Some(200));
        assert_eq!(exchange(&pool, addr, true).await?, Some(200));
        tokio::time::sleep(Duration::from_millis(600)).await;
        let stats = &pool.config.stats;
        assert_eq!(stats.upstream_cx_idle_timeout.get(), 2);
        assert_eq!(stats.upstream_cx_active.get(), 0);
        // The next request dials again.
        assert_eq!(exchange(&pool, addr, false).await?, Some(200));
        assert_eq!(accepted.load(Ordering::SeqCst), 3);

        let pool = pool_with(ConnectionPool {
            max_connection_duration: Some(Duration::from_millis(200)),
            ..Default::default()
        });
        assert_eq!(exchange(&pool, addr, false).await?, Some(200));
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(pool.config.stats.upstream_cx_max_duration_reached.get(), 1);
        assert_eq!(pool.config.stats.upstream_cx_active.get(), 0);
        Ok(())
    }

    /// Reclaimed client state takes its idle connections with it, even with idle timeouts off.
    #[tokio::test]
    async fn dropping_client_state_closes_its_idle_connections() -> TestResult {
        use crate::upstream::{ClientId, ClusterKey, ClusterRegistry, Discovery, PickRequest};
        let (addr, _) = server(Duration::ZERO).await?;
        let registry = ClusterRegistry::default();
        let policy = ClusterPolicy {
            connection_pool: Some(ConnectionPool {
                idle_timeout: Some(Duration::ZERO),
                ..Default::default()
            }),
            ..Default::default()
        };
        let key = ClusterKey {
            host: "a".into(),
            port: 80,
            subset: None,
            scope: String::new(),
        };
        let cluster = registry.ensure(
            key,
            crate::upstream::UpstreamProtocol::Http1,
            policy,
            Discovery::Static,
            vec![addr],
        );
        let picked = cluster
            .pick(&PickRequest {
                client: ClientId(7),
                original_dst: addr,
                avoid: &[],
                hash: None,
                topology: &crate::upstream::locality::Topology::default(),
            })
            .await
            .map_err(|e| format!("{e:?}"))?;
        let pool = Arc::clone(picked.client().pool());
        assert_eq!(exchange(&pool, addr, false).await?, Some(200));
        assert_eq!(pool.config.stats.upstream_cx_active.get(), 1);
        drop((picked, cluster, registry));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(pool.config.stats.upstream_cx_active.get(), 0);
        // Nothing but this test holds the pool any more: no cycle through the connection's driver.
        assert_eq!(Arc::strong_count(&pool), 1);
        Ok(())
    }

    #[tokio::test]
    async fn tcp_connections_over_the_limit_overflow() -> TestResult {
        let (addr, _) = server(Duration::ZERO).await?;
        let pool = pool_with(ConnectionPool {
            tcp_max_connections: Some(1),
            ..Default::default()
        });
        let first = pool.open_tcp(addr, "svc").await?;
        assert!(matches!(
            pool.open_tcp(addr, "svc").await,
            Err(SendError::Overflow)
        ));
        assert_eq!(pool.config.stats.upstream_cx_overflow.get(), 1);
        drop(first);
        let again = pool.open_tcp(addr, "svc").await?;
        assert_eq!(pool.config.stats.upstream_cx_active.get(), 1);
        drop(again);
        assert_eq!(pool.config.stats.upstream_cx_active.get(), 0);
        // A refused connect counts as a connect failure and frees its slot.
        let closed = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
        assert!(pool
            .open_tcp(closed, "svc")
            .await
            .is_err_and(|e| e.is_connect()));
        assert_eq!(pool.config.stats.upstream_cx_connect_fail.get(), 1);
        assert_eq!(pool.config.stats.upstream_cx_active.get(), 0);
        Ok(())
    }

    // ---- TLS origination

    /// A TLS HTTP/1.1 + h2 server with a certificate for `a.test`, `b.test` and `fixed.test` from
    /// `ca`; counts accepted connections and answers with the SNI and ALPN it saw (`x-sni`,
    /// `x-alpn`).
    async fn tls_server(
        ca: &crate::upstream::tls::test_pki::Ca,
    ) -> Result<(SocketAddr, Arc<AtomicUsize>), Box<dyn std::error::Error + Send + Sync>> {
        let leaf = ca.issue(&["a.test", "b.test", "fixed.test"], 7, false)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![leaf.cert.clone()], leaf.private_key())?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let conn = tls.get_ref().1;
                    let sni = conn.server_name().unwrap_or("-").to_string();
                    let alpn =
                        String::from_utf8_lossy(conn.alpn_protocol().unwrap_or(b"-")).into_owned();
                    let svc = hyper::service::service_fn(move |_req| {
                        let mut resp = Response::new(Empty::<Bytes>::new());
                        for (name, value) in [("x-sni", &sni), ("x-alpn", &alpn)] {
                            if let Ok(v) = http::HeaderValue::from_str(value) {
                                resp.headers_mut().insert(name, v);
                            }
                        }
                        async move { Ok::<_, std::convert::Infallible>(resp) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Ok((addr, accepted))
    }

    fn tls_pool(
        ca: &crate::upstream::tls::test_pki::Ca,
        sni: Option<&str>,
        cp: ConnectionPool,
    ) -> Arc<ClientPool> {
        let policy = ClusterPolicy {
            connection_pool: Some(cp),
            tls: Some(crate::policy::ClientTls {
                mode: crate::policy::TlsMode::Simple,
                client_certificate: None,
                private_key: None,
                ca_certificates: Some(crate::policy::LoadedFile {
                    path: "/test/ca.pem".into(),
                    content: vec![ca.cert.clone()],
                }),
                ca_crl: None,
                sni: sni.map(str::to_string),
                subject_alt_names: Vec::new(),
                insecure_skip_verify: false,
            }),
            ..Default::default()
        };
        Arc::new(ClientPool::new(Arc::new(PoolConfig::new(
            &policy,
            Arc::default(),
        ))))
    }

    /// A request for `authority` (as `Host` or `:authority`); the status and the server's
    /// `x-sni` / `x-alpn` answers.
    async fn tls_exchange(
        pool: &Arc<ClientPool>,
        addr: SocketAddr,
        h2: bool,
        authority: &str,
    ) -> Result<(u16, String, String), SendError> {
        let mut req = get(h2, addr);
        if h2 {
            *req.uri_mut() = format!("http://{authority}/").parse().unwrap_or_default();
        } else if let Ok(v) = http::HeaderValue::from_str(authority) {
            req.headers_mut().insert(http::header::HOST, v);
        }
        let resp = pool.send(addr, h2, req).await?;
        let header = |name| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let answer = (resp.status().as_u16(), header("x-sni"), header("x-alpn"));
        let _ = resp.into_body().collect().await;
        Ok(answer)
    }

    /// Keep-alive and h2 multiplexing work over TLS as over plaintext; with auto SNI each name
    /// has its own connections, and HTTP/2 is negotiated with ALPN `h2`.
    #[tokio::test]
    async fn tls_connections_are_pooled_per_sni() -> TestResult {
        let ca = crate::upstream::tls::test_pki::Ca::new("pool test CA")?;
        let (addr, accepted) = tls_server(&ca).await?;
        let pool = tls_pool(&ca, None, ConnectionPool::default());
        for _ in 0..3 {
            let answer = tls_exchange(&pool, addr, false, "a.test:9080").await?;
            assert_eq!(answer, (200, "a.test".into(), "http/1.1".into()));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // Another authority host: another SNI, another connection (then reused).
        for _ in 0..2 {
            let answer = tls_exchange(&pool, addr, false, "B.test").await?;
            assert_eq!(answer, (200, "b.test".into(), "http/1.1".into()));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // The first name again: its idle connection.
        tls_exchange(&pool, addr, false, "a.test").await?;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // HTTP/2 over TLS: one multiplexed connection for concurrent streams.
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let pool = Arc::clone(&pool);
            tasks.push(tokio::spawn(async move {
                tls_exchange(&pool, addr, true, "a.test:9080").await
            }));
        }
        for t in tasks {
            assert_eq!(t.await??, (200, "a.test".into(), "h2".into()));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        assert_eq!(pool.config.stats.upstream_cx_total.get(), 3);
        assert_eq!(pool.config.stats.upstream_cx_connect_fail.get(), 0);
        Ok(())
    }

    /// With `sni` set every request shares the connections, whatever its authority.
    #[tokio::test]
    async fn fixed_sni_shares_connections_across_authorities() -> TestResult {
        let ca = crate::upstream::tls::test_pki::Ca::new("pool test CA")?;
        let (addr, accepted) = tls_server(&ca).await?;
        let pool = tls_pool(&ca, Some("fixed.test"), ConnectionPool::default());
        for authority in ["a.test", "b.test", "other.example"] {
            let answer = tls_exchange(&pool, addr, false, authority).await?;
            assert_eq!(answer, (200, "fixed.test".into(), "http/1.1".into()));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        Ok(())
    }

    /// A failed verification is a connect failure carrying Envoy's transport failure reason; its
    /// connection slot is freed.
    #[tokio::test]
    async fn a_failed_handshake_is_a_connect_failure_with_a_reason() -> TestResult {
        let ca = crate::upstream::tls::test_pki::Ca::new("pool test CA")?;
        let other = crate::upstream::tls::test_pki::Ca::new("another CA")?;
        let (addr, _) = tls_server(&ca).await?;
        let pool = tls_pool(&other, None, ConnectionPool::default());
        for h2 in [false, true] {
            let err = match tls_exchange(&pool, addr, h2, "a.test").await {
                Err(e) => e,
                Ok(answer) => return Err(format!("expected a failure, got {answer:?}").into()),
            };
            assert!(err.is_connect(), "{err}");
            let reason = err.transport_failure().unwrap_or_default();
            assert!(
                reason.starts_with("TLS_error:CERTIFICATE_VERIFY_FAILED"),
                "{reason:?}"
            );
        }
        let stats = &pool.config.stats;
        assert_eq!(stats.upstream_cx_connect_fail.get(), 2);
        assert_eq!(stats.upstream_cx_active.get(), 0);
        assert_eq!(pool.breaker.connections(), 0);
        // A plain refusal has no transport failure reason.
        let closed = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
        let refused = pool.open_tcp(closed, "a.test").await;
        assert!(refused.is_err_and(|e| e.is_connect() && e.transport_failure().is_none()));
        Ok(())
    }

    /// The handshake runs within `connectTimeout`: a server that accepts but never answers the
    /// ClientHello times the connect out.
    #[tokio::test]
    async fn the_handshake_runs_within_the_connect_timeout() -> TestResult {
        let ca = crate::upstream::tls::test_pki::Ca::new("pool test CA")?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                held.push(tcp);
            }
        });
        let pool = tls_pool(
            &ca,
            None,
            ConnectionPool {
                tcp_connect_timeout: Some(Duration::from_millis(200)),
                ..Default::default()
            },
        );
        let started = Instant::now();
        let result = tls_exchange(&pool, addr, false, "a.test").await;
        let took = started.elapsed();
        silent.abort();
        assert!(
            matches!(
                result,
                Err(SendError::Connect {
                    source: ConnectError::Timeout,
                    ..
                })
            ),
            "{result:?}"
        );
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert_eq!(pool.config.stats.upstream_cx_connect_timeout.get(), 1);
        Ok(())
    }

    /// A TCP relay originates TLS too, without ALPN, named by the authority it is given.
    #[tokio::test]
    async fn tcp_relays_originate_tls_without_alpn() -> TestResult {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let ca = crate::upstream::tls::test_pki::Ca::new("pool test CA")?;
        let (addr, _) = tls_server(&ca).await?;
        let pool = tls_pool(&ca, None, ConnectionPool::default());
        let mut conn = pool.open_tcp(addr, "b.test").await?;
        assert!(matches!(conn.io, UpstreamIo::Tls(_)));
        conn.io
            .write_all(b"GET / HTTP/1.1\r\nhost: b.test\r\nconnection: close\r\n\r\n")
            .await?;
        let mut text = String::new();
        conn.io.read_to_string(&mut text).await?;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("x-sni: b.test"), "{text}");
        assert!(text.contains("x-alpn: -"), "{text}");
        Ok(())
    }

    /// Counts the bytes this thread allocates, so a test can measure what it builds even while
    /// other tests run on other threads.
    struct CountingAlloc;

    thread_local! {
        static NET_BYTES: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
    }

    fn add(delta: isize) {
        // `try_with`: allocations during thread teardown are not counted.
        let _ = NET_BYTES.try_with(|n| n.set(n.get() + delta));
    }

    // SAFETY: forwards to the system allocator unchanged; only counts.
    unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
        unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
            add(layout.size() as isize);
            // SAFETY: same contract as ours.
            unsafe { std::alloc::System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
            add(-(layout.size() as isize));
            // SAFETY: same contract as ours.
            unsafe { std::alloc::System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(
            &self,
            ptr: *mut u8,
            layout: std::alloc::Layout,
            new_size: usize,
        ) -> *mut u8 {
            add(new_size as isize - layout.size() as isize);
            // SAFETY: same contract as ours.
            unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static ALLOC: CountingAlloc = CountingAlloc;

    fn net_bytes() -> isize {
        NET_BYTES.with(|n| n.get())
    }

    /// Memory of idle per-client state: 100 client pods × 100 clusters with a connection pool and
    /// outlier detection set, each pair created by a real pick (one endpoint each) and then idle.
    /// Reports the bytes per pair and fails if it grows past a small bound.
    #[tokio::test(flavor = "current_thread")]
    async fn idle_client_cluster_pairs_are_small() -> TestResult {
        use crate::upstream::UpstreamProtocol;
        use crate::upstream::{ClientId, ClusterKey, ClusterRegistry, Discovery, PickRequest};
        const CLIENTS: u64 = 100;
        const CLUSTERS: u16 = 100;
        let registry = ClusterRegistry::default();
        let policy = ClusterPolicy {
            connection_pool: Some(ConnectionPool {
                tcp_max_connections: Some(1),
                http1_max_pending_requests: Some(1),
                ..Default::default()
            }),
            ..Default::default()
        };
        let clusters: Vec<_> = (0..CLUSTERS)
            .map(|i| {
                registry.ensure(
                    ClusterKey {
                        host: format!("svc-{i}.default.svc.cluster.local"),
                        port: 9080,
                        subset: None,
                        scope: String::new(),
                    },
                    UpstreamProtocol::Http1,
                    policy.clone(),
                    Discovery::Static,
                    vec![SocketAddr::from(([10, 244, 0, 1], 9080 + i))],
                )
            })
            .collect();
        let before = net_bytes();
        for cluster in &clusters {
            for client in 1..=CLIENTS {
                let req = PickRequest {
                    client: ClientId(client),
                    original_dst: SocketAddr::from(([10, 96, 0, 1], 9080)),
                    avoid: &[],
                    hash: None,
                    topology: &crate::upstream::locality::Topology::default(),
                };
                let picked = cluster.pick(&req).await;
                assert!(picked.is_ok());
            }
        }
        let pairs = (CLIENTS * u64::from(CLUSTERS)) as isize;
        let per_pair = (net_bytes() - before) / pairs;
        println!(
            "idle (client, cluster) pair: {per_pair} bytes ({} KiB for 100 clients x 100 clusters; \
             size_of ClientCluster {}, ClientPool {})",
            per_pair * pairs / 1024,
            std::mem::size_of::<crate::upstream::ClientCluster>(),
            std::mem::size_of::<ClientPool>(),
        );
        assert!(
            per_pair > 0 && per_pair <= 1280,
            "{per_pair} bytes per idle pair"
        );
        // Each endpoint a client has used adds its endpoint pool (until it is gone and unused).
        println!(
            "per endpoint used: {} bytes",
            std::mem::size_of::<EndpointPool>() + 2 * std::mem::size_of::<usize>()
        );
        Ok(())
    }
}
