//! `http-get` (counted requests, optionally parallel, with a method, a body and a client-side timeout)
//! and `http-load` (paced keep-alive load).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CONNECTION, HOST};
use hyper::{HeaderMap, Method, Request, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use keel_tests::{EchoBody, HttpGetReport, HttpLoadReport};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::support::{listed_headers, millis, truncate, unix_ms};

/// Largest response body the client reads (the echo body is small; this bounds memory).
const MAX_BODY: usize = 1 << 20;
/// Local addresses kept in a report (keeps the JSON line small for 2,000 new connections).
const MAX_LOCAL_ADDRS: usize = 256;
/// Latencies kept in a report.
const MAX_LATENCIES: usize = 2_000;
/// Distinct non-echo bodies counted in a report (the rest go under `<other>`).
const MAX_OTHER_BODIES: usize = 32;
/// Bytes of a non-echo body used as its key.
const OTHER_BODY_KEY_BYTES: usize = 200;
/// Bytes of the last body kept.
const LAST_TEXT_BYTES: usize = 4096;

/// What one `http-get` run does.
pub struct GetArgs {
    /// URL whose authority becomes Host / `:authority`.
    pub url: String,
    /// Where to connect (default: the URL's host, an IP).
    pub connect_to: Option<SocketAddr>,
    /// Requests in all.
    pub count: u32,
    /// A new connection per request.
    pub new_conn: bool,
    /// h2c prior knowledge.
    pub http2: bool,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Request method.
    pub method: Method,
    /// Request body (empty: none).
    pub body: Bytes,
    /// Parallel workers.
    pub concurrency: u32,
    /// The client's own per-request timeout.
    pub request_timeout: Option<Duration>,
    /// Prefix of the per-request [`TAG_HEADER`] value (`<tag>-<n>`).
    pub tag: Option<String>,
    /// Responses at least this slow are counted (`slow`).
    pub slow: Option<Duration>,
}

/// The request header that carries a request's own tag; an echo response must bring it back.
pub const TAG_HEADER: &str = "x-keel-test-tag";

/// One HTTP connection: its request sender and the task driving it (aborted on drop, which closes the
/// socket at once — an abandoned request must look like a client that went away).
struct Conn {
    sender: Sender,
    task: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Conn {
    fn is_closed(&self) -> bool {
        match &self.sender {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }
}

/// A finished response.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

/// What a worker tells the aggregator.
enum Event {
    Connected(Option<SocketAddr>),
    /// The answer, its latency and the tag its request carried.
    Response(Answer, Duration, Option<String>),
    ClientTimeout,
    Error(anyhow::Error),
}

/// Where and what to send, resolved once.
struct Target {
    addr: SocketAddr,
    uri: Uri,
    path: String,
    host: HeaderValue,
}

/// Runs the requests and reports; never fails (failures are in the report).
pub async fn http_get(args: GetArgs, timeout: Duration) -> HttpGetReport {
    let start = Instant::now();
    let mut report = HttpGetReport {
        url: args.url.clone(),
        requested: u64::from(args.count),
        ..HttpGetReport::default()
    };
    match resolve(&args) {
        Err(e) => record_error(&mut report, e),
        Ok(target) => {
            report.connect_to = target.addr.to_string();
            let (tx, mut rx) = mpsc::unbounded_channel();
            let (args, target) = (Arc::new(args), Arc::new(target));
            let next = Arc::new(AtomicU32::new(0));
            let workers = args.concurrency.clamp(1, 1024).min(args.count.max(1));
            for _ in 0..workers {
                tokio::spawn(worker(
                    args.clone(),
                    target.clone(),
                    next.clone(),
                    tx.clone(),
                ));
            }
            drop(tx);
            let slow = args.slow;
            let fold = async {
                while let Some(ev) = rx.recv().await {
                    apply(&mut report, ev, slow);
                }
            };
            if tokio::time::timeout(timeout, fold).await.is_err() {
                report.timed_out = true;
                report
                    .first_error
                    .get_or_insert(format!("global timeout of {timeout:?} reached"));
            }
        }
    }
    report.elapsed_ms = millis(start.elapsed());
    report
}

fn resolve(args: &GetArgs) -> Result<Target> {
    let uri: Uri = args
        .url
        .parse()
        .with_context(|| format!("bad URL {:?}", args.url))?;
    let authority = uri
        .authority()
        .with_context(|| format!("URL {:?} has no host", args.url))?
        .clone();
    let addr = match args.connect_to {
        Some(a) => a,
        None => {
            let host = authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let ip: std::net::IpAddr = host
                .parse()
                .with_context(|| format!("URL host {host:?} is not an IP; pass --connect-to"))?;
            SocketAddr::new(ip, authority.port_u16().unwrap_or(80))
        }
    };
    let path = uri
        .path_and_query()
        .map_or_else(|| "/".to_string(), ToString::to_string);
    let host = HeaderValue::from_str(authority.as_str()).context("URL authority as Host")?;
    Ok(Target {
        addr,
        uri,
        path,
        host,
    })
}

async fn worker(
    args: Arc<GetArgs>,
    target: Arc<Target>,
    next: Arc<AtomicU32>,
    tx: mpsc::UnboundedSender<Event>,
) {
    let mut conn: Option<Conn> = None;
    loop {
        // A connect refused at once (loopback answers within the syscall) or a send on a closed
        // connection fails without ever waiting: without this the single-threaded runtime would
        // spin through the whole count and never fire the global timeout.
        tokio::task::consume_budget().await;
        let n = next.fetch_add(1, Ordering::SeqCst);
        if n >= args.count {
            break;
        }
        if args.new_conn || conn.as_ref().is_some_and(Conn::is_closed) {
            conn = None;
        }
        if conn.is_none() {
            match connect(target.addr, args.http2).await {
                Ok((c, local)) => {
                    let _ = tx.send(Event::Connected(local));
                    conn = Some(c);
                }
                Err(e) => {
                    let _ = tx.send(Event::Error(e));
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let tag = args.tag.as_ref().map(|t| format!("{t}-{n}"));
        let req = match build_request(&args, &target, tag.as_deref()) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Event::Error(e));
                continue;
            }
        };
        let started = Instant::now();
        let outcome = match args.request_timeout {
            Some(t) => tokio::time::timeout(t, send(c, req)).await.ok(),
            None => Some(send(c, req).await),
        };
        let ev = match outcome {
            Some(Ok(answer)) => Event::Response(answer, started.elapsed(), tag),
            Some(Err(e)) => {
                // The connection may be broken; the next request opens a new one.
                conn = None;
                Event::Error(e)
            }
            None => {
                // Give up like an application would: close the connection under the request.
                conn = None;
                Event::ClientTimeout
            }
        };
        let _ = tx.send(ev);
    }
}

fn build_request(
    args: &GetArgs,
    target: &Target,
    tag: Option<&str>,
) -> Result<Request<Full<Bytes>>> {
    let mut builder = Request::builder().method(args.method.clone());
    if args.http2 {
        builder = builder.uri(target.uri.clone());
    } else {
        builder = builder
            .uri(target.path.as_str())
            .header(HOST, target.host.clone());
        if args.new_conn {
            builder = builder.header(CONNECTION, "close");
        }
    }
    for (k, v) in &args.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    if let Some(tag) = tag {
        builder = builder.header(TAG_HEADER, tag);
    }
    builder
        .body(Full::new(args.body.clone()))
        .context("building request")
}

fn apply(report: &mut HttpGetReport, ev: Event, slow: Option<Duration>) {
    match ev {
        Event::Connected(local) => {
            report.connections += 1;
            if report.local_addrs.len() < MAX_LOCAL_ADDRS {
                if let Some(l) = local {
                    report.local_addrs.push(l.to_string());
                }
            }
        }
        Event::Error(e) => record_error(report, e),
        Event::ClientTimeout => report.client_timeouts += 1,
        Event::Response(answer, latency, tag) => {
            report.responses += 1;
            *report
                .by_status
                .entry(answer.status.to_string())
                .or_default() += 1;
            let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            if report.latencies_ms.len() < MAX_LATENCIES {
                report.latencies_ms.push(millis(latency));
                report.latencies_us.push(latency_us);
            }
            let of_status = report
                .latencies_us_by_status
                .entry(answer.status.to_string())
                .or_default();
            if of_status.len() < MAX_LATENCIES {
                of_status.push(latency_us);
            }
            if slow.is_some_and(|t| latency >= t) {
                report.slow += 1;
            }
            let headers = listed_headers(&answer.headers);
            for name in headers.keys() {
                *report.header_presence.entry(name.clone()).or_default() += 1;
            }
            report.last_status = answer.status;
            report.last_headers = headers;
            let text = String::from_utf8_lossy(&answer.body);
            report.last_text = Some(truncate(&text, LAST_TEXT_BYTES));
            match serde_json::from_slice::<EchoBody>(&answer.body) {
                Ok(b) => {
                    if let Some(sent) = tag {
                        if b.headers.get(TAG_HEADER) != Some(&sent) {
                            report.tag_mismatches += 1;
                        }
                    }
                    *report.by_version.entry(b.version.clone()).or_default() += 1;
                    *report.by_pod.entry(b.pod.clone()).or_default() += 1;
                    *report.by_protocol.entry(b.protocol.clone()).or_default() += 1;
                    let ip = b
                        .peer
                        .parse::<SocketAddr>()
                        .map_or_else(|_| b.peer.clone(), |a| a.ip().to_string());
                    *report.by_peer_ip.entry(ip).or_default() += 1;
                    report.last_body = Some(b);
                }
                Err(_) => {
                    *report.by_version.entry("<none>".to_string()).or_default() += 1;
                    let mut key = format!(
                        "{} {}",
                        answer.status,
                        truncate(&text, OTHER_BODY_KEY_BYTES)
                    );
                    if !report.other_bodies.contains_key(&key)
                        && report.other_bodies.len() >= MAX_OTHER_BODIES
                    {
                        key = "<other>".to_string();
                    }
                    *report.other_bodies.entry(key).or_default() += 1;
                }
            }
        }
    }
}

fn record_error(report: &mut HttpGetReport, e: anyhow::Error) {
    report.errors += 1;
    report.first_error.get_or_insert(format!("{e:#}"));
}

async fn connect(addr: SocketAddr, http2: bool) -> Result<(Conn, Option<SocketAddr>)> {
    // An IPv6 socket is a dual-stack one, as applications' usually are: a v4-mapped address
    // connects over IPv4.
    let stream = crate::support::tcp_socket_for(addr, false)
        .with_context(|| format!("socket for {addr}"))?
        .connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true).context("TCP_NODELAY")?;
    let local = stream.local_addr().ok();
    let io = TokioIo::new(stream);
    let conn = if http2 {
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .context("h2 handshake")?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Conn {
            sender: Sender::H2(sender),
            task,
        }
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .context("HTTP/1.1 handshake")?;
        // with_upgrades: a 101 answer must not be treated as a protocol error by the dispatcher.
        let task = tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Conn {
            sender: Sender::H1(sender),
            task,
        }
    };
    Ok((conn, local))
}

async fn send(c: &mut Conn, req: Request<Full<Bytes>>) -> Result<Answer> {
    let resp = match &mut c.sender {
        Sender::H1(s) => {
            s.ready().await.context("connection not ready")?;
            s.send_request(req).await.context("sending request")?
        }
        Sender::H2(s) => {
            s.ready().await.context("connection not ready")?;
            s.send_request(req).await.context("sending request")?
        }
    };
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let body = http_body_util::Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading body: {e}"))?
        .to_bytes();
    Ok(Answer {
        status,
        headers: parts.headers,
        body,
    })
}

// ------------------------------------------------------------------------------------------------
// Paced load.

/// `rate` requests/s over `connections` keep-alive connections for `duration`.
pub async fn http_load(
    url: &str,
    connect_to: Option<SocketAddr>,
    rate: u32,
    connections: u32,
    duration: Duration,
) -> Result<HttpLoadReport> {
    let uri: Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
    let addr = match connect_to {
        Some(a) => a,
        None => uri
            .authority()
            .context("URL has no authority")?
            .as_str()
            .parse()
            .context("URL host must be ip:port without --connect-to")?,
    };
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default();
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let connections = connections.clamp(1, 64);
    // Each connection sends its share of the rate on its own clock.
    let period = Duration::from_secs_f64(f64::from(connections) / f64::from(rate.max(1)));
    let deadline = tokio::time::Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (authority, path) = (authority.clone(), path.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples: Vec<(u64, u16, String)> = Vec::new();
            let mut latencies: Vec<u64> = Vec::new();
            let mut opened = 0u64;
            let mut conn: Option<Conn> = None;
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while tokio::time::Instant::now() < deadline {
                tick.tick().await;
                let started = unix_ms();
                if conn.as_ref().is_none_or(Conn::is_closed) {
                    conn = connect(addr, false).await.ok().map(|(c, _)| c);
                    opened += u64::from(conn.is_some());
                }
                let Some(c) = conn.as_mut() else {
                    samples.push((started, 0, String::new()));
                    continue;
                };
                let req = Request::get(path.as_str())
                    .header(HOST, authority.as_str())
                    .body(Full::new(Bytes::new()));
                let Ok(req) = req else {
                    samples.push((started, 0, String::new()));
                    continue;
                };
                let sent = Instant::now();
                match tokio::time::timeout(Duration::from_secs(5), send(c, req)).await {
                    Ok(Ok(answer)) => {
                        latencies
                            .push(u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX));
                        let version = serde_json::from_slice::<serde_json::Value>(&answer.body)
                            .ok()
                            .and_then(|v| {
                                v.get("version").and_then(|v| v.as_str()).map(String::from)
                            })
                            .unwrap_or_default();
                        samples.push((started, answer.status, version));
                    }
                    _ => {
                        conn = None;
                        samples.push((started, 0, String::new()));
                    }
                }
            }
            (samples, opened, latencies)
        }));
    }
    let mut report = HttpLoadReport::default();
    for t in tasks {
        let (samples, conns, latencies) = t.await.context("load task panicked")?;
        report.samples.extend(samples);
        report.connections += conns;
        report.latencies_us.extend(latencies);
    }
    report.samples.sort_by_key(|s| s.0);
    Ok(report)
}
