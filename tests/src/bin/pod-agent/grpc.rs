//! A hand-rolled unary gRPC server and client over h2c: 5-byte length-prefixed messages (no protobuf:
//! the message is raw bytes), `content-type: application/grpc`, `te: trailers`, and the status in
//! `grpc-status` / `grpc-message` trailers — or in the response headers of a trailers-only answer.
//!
//! The server answers each call with one message, the JSON [`EchoBody`] of the call, and the status
//! chosen by its options or, per call, by request metadata `x-test-grpc-status`, `x-test-grpc-message`,
//! `x-test-delay-ms` and `x-test-trailers-only: 1`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, TE};
use hyper::service::service_fn;
use hyper::{HeaderMap, Method, Request, Response, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use keel_tests::{body_hash, EchoBody, GrpcCallReport, GrpcClientReport, RequestRecord};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{announce, joined_headers, millis, truncate, unix_ms, LogWriter};

/// Largest request or response body read.
const MAX_BODY: usize = 4 << 20;
/// Largest delay a call may ask for.
const MAX_DELAY: Duration = Duration::from_secs(60);

/// `grpc-server` options.
pub struct ServerOpts {
    /// Address to bind.
    pub listen: SocketAddr,
    /// Name reported in replies and logs.
    pub pod: String,
    /// Version reported in replies and logs.
    pub version: String,
    /// Request log file.
    pub log: Option<PathBuf>,
    /// Default `grpc-status`.
    pub grpc_status: u32,
    /// Default `grpc-message`.
    pub grpc_message: Option<String>,
    /// Default delay.
    pub delay: Option<Duration>,
    /// Default to trailers-only answers.
    pub trailers_only: bool,
}

struct Shared {
    opts: ServerOpts,
    log: Option<LogWriter>,
}

/// Serves h2c until killed.
pub async fn run_server(opts: ServerOpts) -> Result<()> {
    let listener = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("binding {}", opts.listen))?;
    let log = opts.log.as_deref().map(LogWriter::open).transpose()?;
    announce(&listener)?;
    let shared = Arc::new(Shared { opts, log });
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(answer(req, peer, &shared).await) }
            });
            let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
                eprintln!("connection from {peer}: {e}");
            }
        });
    }
}

fn meta<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn answer(
    req: Request<Incoming>,
    peer: SocketAddr,
    shared: &Shared,
) -> Response<BoxBody<Bytes, Infallible>> {
    let ts_ms = unix_ms();
    let opts = &shared.opts;
    let headers = req.headers().clone();
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_string(), ToString::to_string);
    let echo = EchoBody {
        pod: opts.pod.clone(),
        version: opts.version.clone(),
        peer: peer.to_string(),
        protocol: format!("{:?}", req.version()),
        method: req.method().to_string(),
        path: path.clone(),
        headers: joined_headers(&headers),
    };
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            eprintln!("reading call body from {peer}: {e}");
            Bytes::new()
        }
    };
    if let Some(log) = &shared.log {
        log.write(&RequestRecord {
            ts_ms,
            pod: echo.pod.clone(),
            version: echo.version.clone(),
            kind: "grpc".to_string(),
            method: echo.method.clone(),
            path,
            protocol: echo.protocol.clone(),
            peer: echo.peer.clone(),
            headers: echo.headers.clone(),
            body_len: body.len() as u64,
            body_hash: body_hash(&body),
        });
    }
    let status = meta(&headers, "x-test-grpc-status")
        .and_then(|s| s.parse().ok())
        .unwrap_or(opts.grpc_status);
    let message = meta(&headers, "x-test-grpc-message")
        .map(String::from)
        .or_else(|| opts.grpc_message.clone())
        .unwrap_or_default();
    let delay = meta(&headers, "x-test-delay-ms")
        .and_then(|s| s.parse().ok())
        .map(Duration::from_millis)
        .or(opts.delay)
        .map(|d| d.min(MAX_DELAY));
    let trailers_only =
        meta(&headers, "x-test-trailers-only").map_or(opts.trailers_only, |v| v == "1");
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }

    let mut status_headers = HeaderMap::new();
    status_headers.insert(
        HeaderName::from_static("grpc-status"),
        HeaderValue::from(status),
    );
    if !message.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&message) {
            status_headers.insert(HeaderName::from_static("grpc-message"), v);
        }
    }
    let mut resp = if trailers_only {
        let mut r = Response::new(Empty::new().boxed());
        r.headers_mut().extend(status_headers);
        r
    } else {
        let payload = serde_json::to_vec(&echo).unwrap_or_default();
        let frame = frame_message(&payload);
        let body = Full::new(frame)
            .with_trailers(async move { Some(Ok(status_headers)) })
            .boxed();
        Response::new(body)
    };
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    resp
}

/// One gRPC length-prefixed message: flag 0 (not compressed), 4-byte big-endian length, bytes.
fn frame_message(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.put_u8(0);
    b.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    b.put_slice(payload);
    b.freeze()
}

/// Splits a body into its length-prefixed messages.
fn parse_messages(mut data: &[u8]) -> Result<Vec<Bytes>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.len() < 5 {
            bail!("truncated gRPC message prefix ({} bytes)", data.len());
        }
        let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        if data.len() < 5 + len {
            bail!("truncated gRPC message: {} of {len} bytes", data.len() - 5);
        }
        out.push(Bytes::copy_from_slice(&data[5..5 + len]));
        data = &data[5 + len..];
    }
    Ok(out)
}

// ------------------------------------------------------------------------------------------------
// Client.

/// What one `grpc-client` run does.
pub struct ClientArgs {
    /// `http://<authority>/<service>/<method>`.
    pub url: String,
    /// Where to connect.
    pub connect_to: SocketAddr,
    /// Request message.
    pub message: String,
    /// Extra metadata.
    pub headers: Vec<(String, String)>,
    /// `grpc-timeout` value.
    pub grpc_timeout: Option<String>,
    /// Calls.
    pub count: u32,
}

/// Runs the calls on one h2c connection and reports; never fails (failures are in the report).
pub async fn run_client(args: ClientArgs, timeout: Duration) -> GrpcClientReport {
    let mut report = GrpcClientReport {
        url: args.url.clone(),
        ..GrpcClientReport::default()
    };
    let run = calls(&args, &mut report);
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => report.error = Some(format!("{e:#}")),
        Err(_) => report.timed_out = true,
    }
    report
}

async fn calls(args: &ClientArgs, report: &mut GrpcClientReport) -> Result<()> {
    let uri: Uri = args
        .url
        .parse()
        .with_context(|| format!("bad URL {:?}", args.url))?;
    let stream = TcpStream::connect(args.connect_to)
        .await
        .with_context(|| format!("connecting to {}", args.connect_to))?;
    stream.set_nodelay(true).context("TCP_NODELAY")?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .context("h2 handshake")?;
    let conn = tokio::spawn(conn);
    let body = frame_message(args.message.as_bytes());
    for _ in 0..args.count {
        let mut b = Request::builder()
            .method(Method::POST)
            .uri(uri.clone())
            .header(CONTENT_TYPE, "application/grpc")
            .header(TE, "trailers")
            .header("user-agent", "keel-pod-agent-grpc/1");
        if let Some(t) = &args.grpc_timeout {
            b = b.header("grpc-timeout", t.as_str());
        }
        for (k, v) in &args.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        let req = b.body(Full::new(body.clone())).context("building call")?;
        let started = Instant::now();
        let mut call = GrpcCallReport {
            status_from: "none".to_string(),
            ..GrpcCallReport::default()
        };
        if let Err(e) = one_call(&mut sender, req, &mut call).await {
            call.error = Some(format!("{e:#}"));
        }
        call.elapsed_ms = millis(started.elapsed());
        report.calls.push(call);
    }
    conn.abort();
    Ok(())
}

async fn one_call(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
    call: &mut GrpcCallReport,
) -> Result<()> {
    sender.ready().await.context("connection not ready")?;
    let resp = sender.send_request(req).await.context("sending call")?;
    call.http_status = resp.status().as_u16();
    let (parts, mut body) = resp.into_parts();
    call.headers = joined_headers(&parts.headers);
    let mut data = BytesMut::new();
    let mut trailers: Option<HeaderMap> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading response")?;
        match frame.into_data() {
            Ok(d) => {
                if data.len() + d.len() > MAX_BODY {
                    bail!("response body over {MAX_BODY} bytes");
                }
                data.extend_from_slice(&d);
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    let messages = parse_messages(&data)?;
    call.messages = u32::try_from(messages.len()).unwrap_or(u32::MAX);
    call.first_message = messages
        .first()
        .map(|m| truncate(&String::from_utf8_lossy(m), 4096));
    let (source, map): (&str, BTreeMap<String, String>) = match &trailers {
        Some(t) => {
            call.trailers_received = true;
            call.trailers = joined_headers(t);
            ("trailers", call.trailers.clone())
        }
        None => ("headers", call.headers.clone()),
    };
    if let Some(s) = map.get("grpc-status") {
        call.status_from = source.to_string();
        call.grpc_status = s.trim().parse().ok();
        call.grpc_message = map.get("grpc-message").cloned();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() -> Result<()> {
        let mut all = frame_message(b"hello").to_vec();
        all.extend_from_slice(&frame_message(b""));
        let msgs = parse_messages(&all)?;
        assert_eq!(msgs, vec![Bytes::from_static(b"hello"), Bytes::new()]);
        assert!(parse_messages(&all[..3]).is_err());
        Ok(())
    }
}
