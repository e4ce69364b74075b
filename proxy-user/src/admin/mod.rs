//! Admin endpoint (localhost only, on its own thread so it never competes with the data plane's
//! runtime): readiness, counters, recent connections and a config summary.
//!
//! - `GET /ready`              200 once the programs are attached and the proxy is serving
//! - `GET /live`               200 while the process answers (a liveness probe)
//! - `GET /logging`            the log filter in force; `POST /logging?level=<filter>` replaces it
//!   (a level such as `debug`, or `KEEL_LOG`-style directives such as `keel=debug,info`)
//! - `GET /stats`              Envoy's `name: value` lines: `cluster.<name>.<stat>` summed over
//!   client pods and Keel's own `keel.<name>`; `?format=json|prometheus`, `?filter=<regex>`,
//!   `?usedonly`, `?client=<ns>/<pod>` (that pod's counts only); see `envoy_stats`
//! - `GET /stats/prometheus`, `GET /metrics`  Istio's standard metrics and `keel_*` in the
//!   Prometheus text format (see `crate::metrics`)
//! - `GET /clusters`           Envoy's `/clusters` text (`?format=json`, `?client=<ns>/<pod>`)
//! - `GET /debug/connections`  JSON, the most recent accepted connections and their kernel facts
//! - `GET /config_dump`        JSON: the active snapshot, rejections, kernel map state
//! - `GET /config_status`      JSON errors and warnings of the latest config load
//! - `GET /explain?from=ns/pod&url=...&header=name:value` `keel explain` against the live state
//!   (JSON; `&format=text` for text)
//! - `POST /quitquitquit`      starts the shutdown SIGTERM starts (Envoy's endpoint; `keel quit`
//!   calls it from the DaemonSet's preStop hook)

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Serialize;

use crate::ebpf::KernelStats;
use crate::state::State;

mod clusters;
mod config_dump;
mod envoy_stats;
pub mod quit;

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// Adds one; returns the value before.
    pub fn inc(&self) -> u64 {
        self.0.fetch_add(1, Ordering::AcqRel)
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Data-plane counters.
#[derive(Debug, Default)]
pub struct Stats {
    pub accepted: Counter,
    /// Accepted connections that had a kernel record (redirected by the kernel).
    pub redirected: Counter,
    /// Connections to the proxy port with no kernel record: closed at once.
    pub refused_no_record: Counter,
    pub refused_unknown_pod: Counter,
    /// Connections from a pod cgroup keel had not resolved at connect, served once it was.
    pub pending_pod_resolved: Counter,
    /// Connections from a pod cgroup keel had not resolved at connect and then did not capture:
    /// relayed unchanged to their original destination.
    pub pending_pod_passed_through: Counter,
    pub refused_unknown_destination: Counter,
    /// Connections closed at once because the node-wide connection cap was reached.
    pub refused_global_limit: Counter,
    /// Connections closed at once because their pod had its connection cap open.
    pub refused_pod_limit: Counter,
    /// Requests answered 503 (`UO`) because their pod had its request cap in flight.
    pub pod_request_overflow: Counter,
    /// Requests held back to their pod's request rate (`--max-request-rate-per-pod`).
    pub pod_requests_paced: Counter,
    /// Requests answered 429 (`RL`) because their pod's rate limit would have held them too long.
    pub pod_requests_rate_limited: Counter,
    /// HTTP/2 connections closed for a frame flood (rapid reset, PING/SETTINGS, empty frames, ...).
    pub h2_flood_closed: Counter,
    /// Requests reset because their body went idle for the body idle timeout.
    pub request_body_idle_timeouts: Counter,
    /// Connections closed because the client took no response byte for the body idle timeout.
    pub response_write_idle_timeouts: Counter,
    /// HTTP connections drained (`Connection: close`, GOAWAY) because a push changed their
    /// destination's protocol or whether it is meshed (Envoy's listener change).
    pub listener_change_drains: Counter,
    /// Times the memory overload manager raised its level (started an action).
    pub overload_level_raised: Counter,
    /// Connections told to stop keep-alive (`Connection: close`, GOAWAY) under memory overload.
    pub overload_keepalive_disabled: Counter,
    /// Requests refused with 503 `envoy overloaded` under memory overload.
    pub overload_requests_refused: Counter,
    /// Connections reset by the memory overload manager (the most expensive first).
    pub overload_connections_reset: Counter,
    /// The overload manager's level (`overload::Level`: 0 none .. 3 resetting).
    pub overload_level: Gauge,
    /// The latest memory pressure sample, in hundredths of a percent of the limit.
    pub overload_pressure_bp: Gauge,
    /// Downstream connections open now.
    pub downstream_cx_active: Gauge,
    pub http_requests: Counter,
    pub tcp_connections: Counter,
    /// Config loads that changed what is served.
    pub config_reloads: Counter,
    /// Config loads in which at least one resource was rejected (the last good version kept serving).
    pub config_rejections: Counter,
    /// Request-path counters, named as Envoy names them (node-wide totals; per-cluster and per-client
    /// stats are not kept yet).
    pub upstream_rq_retry: Counter,
    /// Requests whose retries ran out while the last outcome was still retriable.
    pub upstream_rq_retry_limit_exceeded: Counter,
    /// Retried requests that ended in a non-retriable response.
    pub upstream_rq_retry_success: Counter,
    /// Requests abandoned for retry because the body outgrew the retry buffer.
    pub retry_or_shadow_abandoned: Counter,
    /// Route (global) timeouts.
    pub upstream_rq_timeout: Counter,
    /// Per-try timeouts.
    pub upstream_rq_per_try_timeout: Counter,
    /// Fault delays injected.
    pub fault_delays_injected: Counter,
    /// Fault aborts injected.
    pub fault_aborts_injected: Counter,
    /// Mirrored requests sent.
    pub mirror_requests: Counter,
    /// Mirrored requests dropped (over the in-flight budget, body too large or not complete).
    pub mirror_dropped: Counter,
    /// CORS preflights answered by the proxy.
    pub cors_preflights_answered: Counter,
    /// Protocol upgrades (WebSocket, ...) relayed.
    pub upgrades: Counter,
}

/// The outcome of the latest config load, for `/config_status`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ConfigStatus {
    /// Every error of the latest load (`FILE:LINE: KIND NS/NAME: FIELD: REASON`).
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    /// Rejected resources still served at their previous version.
    pub kept_previous: usize,
    /// Each error of the latest load, with its resource and whether that resource's previous
    /// version keeps serving.
    pub rejected: Vec<RejectedResource>,
}

/// One rejection of the latest config load, for `/config_dump`.
#[derive(Debug, Clone, Serialize)]
pub struct RejectedResource {
    /// `Kind namespace/name`.
    pub resource: String,
    /// `file:line` of the offending field (or document).
    pub source: String,
    /// Field path inside the resource (empty = the whole document).
    pub field: String,
    /// Why it was rejected.
    pub reason: String,
    /// The resource's last good version keeps serving (false: it is not served at all).
    pub previous_version_serving: bool,
}

/// One accepted connection as the kernel described it.
#[derive(Debug, Clone, Serialize)]
pub struct ConnLogEntry {
    pub source_pod: String,
    pub source_addr: String,
    pub original_dst: String,
    pub service: String,
    pub protocol: String,
}

/// The last `CAPACITY` accepted connections (one lock per connection, never per request).
#[derive(Debug, Default)]
pub struct ConnLog {
    entries: Mutex<VecDeque<ConnLogEntry>>,
}

impl ConnLog {
    const CAPACITY: usize = 1024;

    pub fn push(&self, entry: ConnLogEntry) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() == Self::CAPACITY {
            entries.pop_front();
        }
        entries.push_back(entry);
    }

    pub fn snapshot(&self) -> Vec<ConnLogEntry> {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// What the admin server reads.
/// Reads (`None`) or replaces (`Some(filter)`) the log filter; returns the filter in force, or why the
/// new one was refused.
pub type LogFilter = Arc<dyn Fn(Option<&str>) -> Result<String, String> + Send + Sync>;

#[derive(Clone)]
pub struct AdminContext {
    pub ready: Arc<AtomicBool>,
    pub log_filter: LogFilter,
    pub stats: Arc<Stats>,
    pub conn_log: Arc<ConnLog>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub state: Arc<State>,
    pub config_status: Arc<Mutex<ConfigStatus>>,
    /// Reads the kernel's counters (owned by the task that owns the eBPF objects).
    pub kernel_stats: Arc<dyn Fn() -> Option<KernelStats> + Send + Sync>,
    /// Whose upstream state a client pod uses (for `?client=`).
    pub state_scope: crate::upstream::StateScope,
    /// Notified by `POST /quitquitquit`; `keel run` then shuts down as on SIGTERM.
    pub quit: Arc<tokio::sync::Notify>,
}

/// Serve the admin API on `addr` from a dedicated thread with its own single-threaded runtime.
pub fn spawn(addr: SocketAddr, ctx: AdminContext) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let std_listener = std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("cannot bind admin address {addr}: {e}"))?;
    std_listener.set_nonblocking(true)?;
    let handle = std::thread::Builder::new()
        .name("keel-admin".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "admin runtime failed to start");
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "admin listener failed");
                        return;
                    }
                };
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            let ctx = ctx.clone();
                            async move { Ok::<_, Infallible>(route(&ctx, req)) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
        })?;
    Ok(handle)
}

fn route(ctx: &AdminContext, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/ready" => {
            if ctx.ready.load(Ordering::Acquire) {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "/live" => text(StatusCode::OK, "live\n"),
        "/quitquitquit" => {
            if req.method() != http::Method::POST {
                return text(StatusCode::METHOD_NOT_ALLOWED, "POST /quitquitquit\n");
            }
            // A stored permit: the shutdown starts even if `serve` is not waiting yet.
            ctx.quit.notify_one();
            text(StatusCode::OK, "OK\n")
        }
        "/explain" => {
            let (status, content_type, body) =
                crate::explain::source::admin_response(&ctx.state.load(), req.uri().query());
            let mut r = Response::new(Full::new(Bytes::from(body)));
            *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(content_type),
            );
            r
        }
        "/logging" => logging(ctx, &req),
        "/stats/prometheus" | "/metrics" => prometheus(ctx),
        "/stats" => stats(ctx, &req),
        "/clusters" => clusters(ctx, &req),
        "/debug/connections" => json(&ctx.conn_log.snapshot()),
        "/config_status" => {
            let status = ctx
                .config_status
                .lock()
                .map(|s| s.clone())
                .unwrap_or_default();
            json(&status)
        }
        "/config_dump" => json(&config_dump::dump(ctx)),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Istio's standard metrics and Keel's own, in the Prometheus text format.
fn prometheus(ctx: &AdminContext) -> Response<Full<Bytes>> {
    let istio = ctx.metrics.encode();
    let keel = envoy_stats::keel_facts(ctx).encode_prometheus();
    match (istio, keel) {
        (Ok(istio), Ok(keel)) => {
            // One exposition: the first one's `# EOF` goes, the second's ends it.
            let istio = istio.strip_suffix("# EOF\n").unwrap_or(&istio);
            let mut r = Response::new(Full::new(Bytes::from(format!("{istio}{keel}"))));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            r
        }
        _ => text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
    }
}

/// `GET /stats`: Envoy's text or JSON (see [`envoy_stats`]); `?format=prometheus` as
/// `/stats/prometheus`.
fn stats(ctx: &AdminContext, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let q = match envoy_stats::parse_query(req.uri().query()) {
        Ok(q) => q,
        Err(why) => return owned_text(StatusCode::BAD_REQUEST, format!("{why}\n")),
    };
    if q.format == envoy_stats::Format::Prometheus {
        return prometheus(ctx);
    }
    let lines = match &q.client {
        Some(name) => match envoy_stats::client_id(ctx, name) {
            Ok(id) => envoy_stats::cluster_lines(&ctx.state, Some(id)),
            Err(why) => return owned_text(StatusCode::NOT_FOUND, format!("{why}\n")),
        },
        None => {
            let mut lines = envoy_stats::cluster_lines(&ctx.state, None);
            lines.extend(envoy_stats::keel_facts(ctx).stat_lines());
            lines
        }
    };
    let body = envoy_stats::render(lines, &q);
    let content_type = match q.format {
        envoy_stats::Format::Json => "application/json",
        _ => "text/plain; charset=UTF-8",
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

/// `GET /clusters[?format=json][&client=<ns>/<pod>]` (see [`clusters`]).
fn clusters(ctx: &AdminContext, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut as_json = false;
    let mut client = None;
    for pair in req.uri().query().unwrap_or_default().split('&') {
        match (pair, pair.strip_prefix("client=")) {
            ("" | "format=text", _) => {}
            ("format=json", _) => as_json = true,
            (_, Some(name)) => match envoy_stats::client_id(ctx, &percent_decode(name)) {
                Ok(id) => client = Some(id),
                Err(why) => return owned_text(StatusCode::NOT_FOUND, format!("{why}\n")),
            },
            _ => {
                return owned_text(
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter {pair:?}: format=json|text, client=<ns>/<pod>\n"),
                )
            }
        }
    }
    let node = ctx.state.load();
    let all = ctx.state.clusters();
    if as_json {
        return json(&clusters::json(&all, &node, client));
    }
    let mut r = Response::new(Full::new(Bytes::from(clusters::text(&all, &node, client))));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    r
}

fn owned_text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

/// `GET /logging` shows the log filter; `POST /logging?level=<filter>` replaces it.
fn logging(ctx: &AdminContext, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let level = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("level="))
        .map(percent_decode);
    let result = match (req.method(), level) {
        (&http::Method::POST, Some(level)) => (ctx.log_filter)(Some(&level)),
        (&http::Method::POST, None) => Err("POST /logging needs ?level=<filter>".to_string()),
        (&http::Method::GET, _) => (ctx.log_filter)(None),
        _ => return text(StatusCode::METHOD_NOT_ALLOWED, "GET or POST\n"),
    };
    let (status, body) = match result {
        Ok(filter) => (StatusCode::OK, format!("log filter: {filter}\n")),
        Err(why) => (StatusCode::BAD_REQUEST, format!("{why}\n")),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

/// `%XX` escapes of a query value (`keel%3Ddebug%2Cinfo`); anything malformed is kept as written.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

fn json<T: Serialize>(value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "serialization failed\n"),
    }
}
