//! `pod-agent`: the one helper binary that runs inside test pods.
//!
//! Servers print one `{"listening":"ip:port"}` line once bound, then serve until killed. Clients print
//! exactly one JSON report line on stdout (types in `keel_tests::agent`) and exit 0 if everything
//! succeeded, 1 otherwise; every client run is bounded by a global timeout.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE, HOST};
use hyper::service::service_fn;
use hyper::{Request, Response, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use keel_tests::agent::{
    ConnectOutcome, EchoBody, HttpGetReport, HttpLoadReport, Listening, TcpConnectReport,
    TcpEchoReport, TlsClientReport, TlsServerLine,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest response body the client reads (the echo body is small; this bounds memory).
const MAX_BODY: usize = 1 << 20;
/// Local addresses kept in a report (keeps the JSON line small for 2,000 new connections).
const MAX_LOCAL_ADDRS: usize = 256;

#[derive(Parser)]
#[command(about = "Helper that runs inside Keel's test pods")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// HTTP/1.1 and h2c (prior knowledge) on one port; answers every request 200 with a JSON echo.
    HttpServer {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        pod: String,
        #[arg(long)]
        version: String,
    },
    /// Echoes bytes; after the client's EOF, finishes writing and shuts down its side.
    TcpEcho {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Sequential GETs; reports counts by status, version, pod, protocol, peer IP and connections.
    HttpGet {
        #[arg(long)]
        url: String,
        /// Connect here instead of the URL's host (which must be an IP otherwise).
        #[arg(long)]
        connect_to: Option<SocketAddr>,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Reuse one connection (the default).
        #[arg(long, conflicts_with = "new_conn")]
        keepalive: bool,
        /// A new connection per request.
        #[arg(long)]
        new_conn: bool,
        /// HTTP/2 prior knowledge (h2c).
        #[arg(long)]
        http2: bool,
        /// Extra header `name:value` (repeatable).
        #[arg(long = "header")]
        headers: Vec<String>,
        /// Global timeout of the whole run.
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
    },
    /// Paced keep-alive load: `rate` requests/s over `connections` connections for `duration_secs`;
    /// reports every request's start time (Unix ms), status (0 = failed) and backend version.
    HttpLoad {
        #[arg(long)]
        url: String,
        #[arg(long)]
        connect_to: Option<SocketAddr>,
        #[arg(long, default_value_t = 500)]
        rate: u32,
        #[arg(long, default_value_t = 4)]
        connections: u32,
        #[arg(long)]
        duration_secs: u64,
    },
    /// Sends a payload, half-closes, and checks the echo.
    TcpEchoClient {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 65_536)]
        payload_size: usize,
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
    },
    /// TLS with a self-signed certificate made at start; after each handshake writes one JSON line
    /// (`TlsServerLine`: its pod and the SNI it saw) and closes. A connection that does not start
    /// with a TLS record gets a line naming the pod and echoing the client's first line instead.
    TlsServer {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        pod: String,
    },
    /// `count` new TLS connections to `addr` with server name `sni` (none if absent); accepts any
    /// certificate; reports the server's lines, the SNI the server saw and the TLS version.
    TlsClient {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        sni: Option<String>,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Write the ClientHello in pieces of this many bytes, 20 ms apart.
        #[arg(long)]
        split: Option<usize>,
        /// Send this line in plain text instead of a TLS handshake.
        #[arg(long)]
        plain: Option<String>,
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
    /// Connects, optionally sends, and reports how the first read ended.
    TcpConnect {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        send: Option<String>,
        #[arg(long, default_value_t = 2000)]
        connect_timeout_ms: u64,
        #[arg(long, default_value_t = 2000)]
        read_timeout_ms: u64,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // One thread is plenty for test traffic and keeps the agent's CPU use predictable on 2 cores.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building tokio runtime")?;
    let ok = rt.block_on(async move {
        match cli.cmd {
            Cmd::HttpServer {
                listen,
                pod,
                version,
            } => http_server(listen, pod, version).await.map(|()| true),
            Cmd::TcpEcho { listen } => tcp_echo_server(listen).await.map(|()| true),
            Cmd::HttpGet {
                url,
                connect_to,
                count,
                keepalive: _,
                new_conn,
                http2,
                headers,
                timeout_secs,
            } => {
                let args = GetArgs {
                    url,
                    connect_to,
                    count,
                    new_conn,
                    http2,
                    headers: parse_headers(&headers)?,
                };
                let report = http_get(args, Duration::from_secs(timeout_secs)).await;
                print_json(&report)?;
                Ok(report.errors == 0 && !report.timed_out && report.responses == report.requested)
            }
            Cmd::HttpLoad {
                url,
                connect_to,
                rate,
                connections,
                duration_secs,
            } => {
                let report = http_load(
                    &url,
                    connect_to,
                    rate,
                    connections,
                    Duration::from_secs(duration_secs),
                )
                .await?;
                print_json(&report)?;
                Ok(report.samples.iter().all(|s| s.1 != 0))
            }
            Cmd::TcpEchoClient {
                addr,
                payload_size,
                timeout_secs,
            } => {
                let report =
                    tcp_echo_client(addr, payload_size, Duration::from_secs(timeout_secs)).await;
                print_json(&report)?;
                Ok(report.matched)
            }
            Cmd::TlsServer { listen, pod } => tls_server(listen, pod).await.map(|()| true),
            Cmd::TlsClient {
                addr,
                sni,
                count,
                split,
                plain,
                timeout_secs,
            } => {
                let args = TlsArgs {
                    addr,
                    sni,
                    count,
                    split,
                    plain,
                };
                let report = tls_client(args, Duration::from_secs(timeout_secs)).await;
                print_json(&report)?;
                Ok(report.errors == 0 && !report.timed_out && report.answered == u64::from(count))
            }
            Cmd::TcpConnect {
                addr,
                send,
                connect_timeout_ms,
                read_timeout_ms,
            } => {
                let report = tcp_connect(
                    addr,
                    send,
                    Duration::from_millis(connect_timeout_ms),
                    Duration::from_millis(read_timeout_ms),
                )
                .await;
                print_json(&report)?;
                // The outcome is the answer; any outcome is a successful run.
                Ok(true)
            }
        }
    })?;
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string(v).context("serialising report")?
    );
    Ok(())
}

fn parse_headers(raw: &[String]) -> Result<Vec<(String, String)>> {
    raw.iter()
        .map(|h| {
            let (k, v) = h
                .split_once(':')
                .with_context(|| format!("header {h:?} is not name:value"))?;
            Ok((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

// ------------------------------------------------------------------------------------------------
// Servers.

async fn http_server(listen: SocketAddr, pod: String, version: String) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    announce(&listener)?;
    let ident = Arc::new((pod, version));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends are transient; back off instead of spinning.
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let ident = ident.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let ident = ident.clone();
                async move { Ok::<_, Infallible>(echo(req, peer, &ident.0, &ident.1).await) }
            });
            // auto: HTTP/1.1, or HTTP/2 when the connection starts with the h2 preface (h2c).
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
                eprintln!("connection from {peer}: {e}");
            }
        });
    }
}

async fn echo(
    req: Request<Incoming>,
    peer: SocketAddr,
    pod: &str,
    version: &str,
) -> Response<Full<Bytes>> {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in req.headers() {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        headers
            .entry(k.as_str().to_string())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    let body = EchoBody {
        pod: pod.to_string(),
        version: version.to_string(),
        peer: peer.to_string(),
        protocol: format!("{:?}", req.version()),
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_string(), ToString::to_string),
        headers,
    };
    // Read the request body to the end so the connection can be reused (bounded by MAX_BODY).
    let _ = http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await;
    let json = serde_json::to_vec(&body).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(json)));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

async fn tcp_echo_server(listen: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    announce(&listener)?;
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let (mut r, mut w) = stream.split();
            // copy() returns at the client's EOF after writing everything read; then we half-close.
            let res = async {
                tokio::io::copy(&mut r, &mut w).await?;
                w.shutdown().await
            }
            .await;
            if let Err(e) = res {
                eprintln!("echo for {peer}: {e}");
            }
        });
    }
}

fn announce(listener: &TcpListener) -> Result<()> {
    let addr = listener.local_addr().context("local_addr")?;
    print_json(&Listening {
        listening: addr.to_string(),
    })
}

// ------------------------------------------------------------------------------------------------
// http-get.

struct GetArgs {
    url: String,
    connect_to: Option<SocketAddr>,
    count: u32,
    new_conn: bool,
    http2: bool,
    headers: Vec<(String, String)>,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

async fn http_get(args: GetArgs, timeout: Duration) -> HttpGetReport {
    let start = Instant::now();
    let mut report = HttpGetReport {
        url: args.url.clone(),
        requested: u64::from(args.count),
        ..HttpGetReport::default()
    };
    let run = http_get_loop(&args, &mut report);
    match tokio::time::timeout(timeout, run).await {
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

async fn http_get_loop(args: &GetArgs, report: &mut HttpGetReport) -> Result<()> {
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
    report.connect_to = addr.to_string();
    let path = uri
        .path_and_query()
        .map_or_else(|| "/".to_string(), ToString::to_string);
    let host_value = HeaderValue::from_str(authority.as_str()).context("URL authority as Host")?;

    let mut sender: Option<Sender> = None;
    for _ in 0..args.count {
        if args.new_conn || sender.as_ref().is_some_and(sender_closed) {
            sender = None;
        }
        if sender.is_none() {
            match connect(addr, args.http2, report).await {
                Ok(s) => sender = Some(s),
                Err(e) => {
                    record_error(report, e);
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        let mut builder = Request::get(if args.http2 {
            uri.clone()
        } else {
            path.parse()?
        });
        if !args.http2 {
            builder = builder.header(HOST, host_value.clone());
            if args.new_conn {
                builder = builder.header(CONNECTION, "close");
            }
        }
        for (k, v) in &args.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let req = builder
            .body(Empty::<Bytes>::new())
            .context("building request")?;
        match send(s, req).await {
            Ok((status, body)) => {
                report.responses += 1;
                *report.by_status.entry(status.to_string()).or_default() += 1;
                match serde_json::from_slice::<EchoBody>(&body) {
                    Ok(b) => {
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
                    }
                }
            }
            Err(e) => {
                record_error(report, e);
                // The connection may be broken; the next request opens a new one.
                sender = None;
            }
        }
    }
    Ok(())
}

fn record_error(report: &mut HttpGetReport, e: anyhow::Error) {
    report.errors += 1;
    report.first_error.get_or_insert(format!("{e:#}"));
}

fn sender_closed(s: &Sender) -> bool {
    match s {
        Sender::H1(s) => s.is_closed(),
        Sender::H2(s) => s.is_closed(),
    }
}

async fn connect(addr: SocketAddr, http2: bool, report: &mut HttpGetReport) -> Result<Sender> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true).context("TCP_NODELAY")?;
    report.connections += 1;
    if report.local_addrs.len() < MAX_LOCAL_ADDRS {
        if let Ok(local) = stream.local_addr() {
            report.local_addrs.push(local.to_string());
        }
    }
    let io = TokioIo::new(stream);
    if http2 {
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .context("h2 handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Sender::H2(sender))
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .context("HTTP/1.1 handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Sender::H1(sender))
    }
}

async fn send(s: &mut Sender, req: Request<Empty<Bytes>>) -> Result<(u16, Bytes)> {
    let resp = match s {
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
    let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading body: {e}"))?
        .to_bytes();
    Ok((status, body))
}

// ------------------------------------------------------------------------------------------------
// Paced load.

async fn http_load(
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
            let mut scratch = HttpGetReport::default();
            let mut sender: Option<Sender> = None;
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while tokio::time::Instant::now() < deadline {
                tick.tick().await;
                let started = unix_ms();
                if sender.as_ref().is_none_or(sender_closed) {
                    sender = connect(addr, false, &mut scratch).await.ok();
                }
                let Some(s) = sender.as_mut() else {
                    samples.push((started, 0, String::new()));
                    continue;
                };
                let req = Request::get(path.as_str())
                    .header(HOST, authority.as_str())
                    .body(Empty::<Bytes>::new());
                let Ok(req) = req else {
                    samples.push((started, 0, String::new()));
                    continue;
                };
                match tokio::time::timeout(Duration::from_secs(5), send(s, req)).await {
                    Ok(Ok((status, body))) => {
                        let version = serde_json::from_slice::<serde_json::Value>(&body)
                            .ok()
                            .and_then(|v| {
                                v.get("version").and_then(|v| v.as_str()).map(String::from)
                            })
                            .unwrap_or_default();
                        samples.push((started, status, version));
                    }
                    _ => {
                        sender = None;
                        samples.push((started, 0, String::new()));
                    }
                }
            }
            (samples, scratch.connections)
        }));
    }
    let mut report = HttpLoadReport::default();
    for t in tasks {
        let (samples, conns) = t.await.context("load task panicked")?;
        report.samples.extend(samples);
        report.connections += conns;
    }
    report.samples.sort_by_key(|s| s.0);
    Ok(report)
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

// ------------------------------------------------------------------------------------------------
// TCP clients.

async fn tcp_echo_client(addr: SocketAddr, size: usize, timeout: Duration) -> TcpEchoReport {
    let start = Instant::now();
    let mut report = TcpEchoReport {
        addr: addr.to_string(),
        ..TcpEchoReport::default()
    };
    let res = tokio::time::timeout(timeout, echo_once(addr, size, &mut report)).await;
    match res {
        Ok(Ok(())) => {}
        Ok(Err(e)) => report.error = Some(format!("{e:#}")),
        Err(_) => report.error = Some(format!("timed out after {timeout:?}")),
    }
    report.elapsed_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    report
}

async fn echo_once(addr: SocketAddr, size: usize, report: &mut TcpEchoReport) -> Result<()> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    report.local_addr = stream.local_addr().ok().map(|a| a.to_string());
    // A pattern that is not periodic in powers of two, so shifted or dropped bytes are caught.
    let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = stream.into_split();
    let to_send = payload.clone();
    // Write concurrently with reading: a large payload would deadlock on full buffers otherwise.
    let writer = tokio::spawn(async move {
        w.write_all(&to_send).await?;
        w.shutdown().await?;
        Ok::<_, std::io::Error>(to_send.len())
    });
    let mut received = Vec::with_capacity(size);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf).await.context("reading echo")?;
        if n == 0 {
            report.got_eof = true;
            break;
        }
        if received.len() + n > size + MAX_BODY {
            bail!("server sent more than {} bytes", size + MAX_BODY);
        }
        received.extend_from_slice(&buf[..n]);
    }
    let sent = writer
        .await
        .context("writer task")?
        .context("writing payload")?;
    report.sent = sent as u64;
    report.received = received.len() as u64;
    report.matched = received == payload;
    Ok(())
}

async fn tcp_connect(
    addr: SocketAddr,
    send: Option<String>,
    connect_timeout: Duration,
    read_timeout: Duration,
) -> TcpConnectReport {
    let start = Instant::now();
    let mut report = TcpConnectReport {
        addr: addr.to_string(),
        outcome: ConnectOutcome::Error,
        connected: false,
        local_addr: None,
        data: String::new(),
        error: None,
        elapsed_ms: 0,
    };
    let finish = |mut r: TcpConnectReport| {
        r.elapsed_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        r
    };
    let mut stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
        Err(_) => {
            report.outcome = ConnectOutcome::Timeout;
            return finish(report);
        }
        Ok(Err(e)) => {
            report.outcome = match e.raw_os_error() {
                Some(libc::ECONNREFUSED) => ConnectOutcome::Refused,
                Some(libc::ENETUNREACH | libc::EHOSTUNREACH) => ConnectOutcome::Unreachable,
                _ => ConnectOutcome::Error,
            };
            report.error = Some(e.to_string());
            return finish(report);
        }
        Ok(Ok(s)) => s,
    };
    report.connected = true;
    report.local_addr = stream.local_addr().ok().map(|a| a.to_string());
    if let Some(s) = send {
        if let Err(e) = stream.write_all(s.as_bytes()).await {
            report.outcome = classify_io(&e);
            report.error = Some(e.to_string());
            return finish(report);
        }
    }
    let mut buf = vec![0u8; 4096];
    report.outcome = match tokio::time::timeout(read_timeout, stream.read(&mut buf)).await {
        Err(_) => ConnectOutcome::ReadTimeout,
        Ok(Ok(0)) => ConnectOutcome::Eof,
        Ok(Ok(n)) => {
            report.data = String::from_utf8_lossy(&buf[..n]).into_owned();
            ConnectOutcome::Data
        }
        Ok(Err(e)) => {
            report.error = Some(e.to_string());
            classify_io(&e)
        }
    };
    finish(report)
}

fn classify_io(e: &std::io::Error) -> ConnectOutcome {
    match e.raw_os_error() {
        Some(libc::ECONNRESET | libc::EPIPE) => ConnectOutcome::Reset,
        _ => ConnectOutcome::Error,
    }
}

// ------------------------------------------------------------------------------------------------
// TLS server and client (rustls, ring).

/// Largest server line or plain-text client line read.
const MAX_LINE: usize = 1024;
/// TLS record content type `handshake`: how a TLS connection starts.
const TLS_HANDSHAKE: u8 = 22;
/// Pause between the pieces of a split ClientHello: long enough that each is its own segment.
const SPLIT_PAUSE: Duration = Duration::from_millis(20);

fn crypto() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

async fn tls_server(listen: SocketAddr, pod: String) -> Result<()> {
    let key = rcgen::generate_simple_self_signed(vec![format!("{pod}.test")])
        .context("generating a self-signed certificate")?;
    let cert = key.cert.der().clone();
    let private = rustls::pki_types::PrivateKeyDer::Pkcs8(
        rustls::pki_types::PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()),
    );
    let config = rustls::ServerConfig::builder_with_provider(crypto())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(vec![cert], private)
        .context("server certificate")?;
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

struct TlsArgs {
    addr: SocketAddr,
    sni: Option<String>,
    count: u32,
    split: Option<usize>,
    plain: Option<String>,
}

async fn tls_client(args: TlsArgs, timeout: Duration) -> TlsClientReport {
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
