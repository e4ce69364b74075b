//! `http-server`: HTTP/1.1 and h2c (prior knowledge) on one port. By default every request gets 200 and
//! a JSON [`EchoBody`]; the path can ask for more, the way httpbin's paths do:
//!
//! | path segment            | effect                                                                 |
//! |-------------------------|------------------------------------------------------------------------|
//! | `/status/<code>`        | answer `<code>` (200..=599), still with the echo body (empty for 204/304) |
//! | `/delay/<ms>`           | wait `<ms>` (at most 60,000) before answering                           |
//! | `/reset`                | read the request, then reset the connection without any response       |
//!
//! Segments may sit anywhere in the path and combine (`/api/delay/200/status/503`). A query parameter
//! `response-header=<name>:<value>` (repeatable) adds that header to the response. Server options:
//! `--log` (one [`RequestRecord`] line per request, written before any delay), `--fail-status`
//! (default status), `--delay-ms` (delay every request), `--cancel-log` (one [`RequestRecord`] line,
//! `kind: "cancelled"`, `ts_ms` the moment it happened, for each request whose client went away —
//! closed the connection or reset the stream — before the answer was ready: what a proxy's timeout
//! must do to its upstream), `--call`/`--call-connect` (answer with the
//! result of a GET to another service, like an application that calls the next hop), `--tls-cert`/
//! `--tls-key` (serve HTTPS; responses then carry `x-sni`, the SNI the client sent, and
//! `x-client-cert: present|absent`), `--tls-client-ca` (require client certificates from that CA).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use keel_tests::{body_hash, EchoBody, RequestRecord};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{announce, joined_headers, unix_ms, LogWriter};
use crate::tls;

/// Largest request body the server reads.
const MAX_REQUEST_BODY: usize = 16 << 20;
/// Largest delay a path may ask for.
const MAX_DELAY: Duration = Duration::from_secs(60);
/// Bound on the `--call` request.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a TLS handshake (`--tls-cert`).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Response header (`--tls-cert`): the SNI the client sent, empty when none.
const X_SNI: HeaderName = HeaderName::from_static("x-sni");
/// Response header (`--tls-cert`): `present` or `absent`, whether the client sent a certificate.
const X_CLIENT_CERT: HeaderName = HeaderName::from_static("x-client-cert");

/// `http-server` options.
pub struct ServerOpts {
    /// Address to bind.
    pub listen: SocketAddr,
    /// Name reported in echo bodies and logs.
    pub pod: String,
    /// Version reported in echo bodies and logs.
    pub version: String,
    /// Request log file.
    pub log: Option<PathBuf>,
    /// Log of requests cancelled by their client before the answer was ready.
    pub cancel_log: Option<PathBuf>,
    /// Status for requests whose path names none.
    pub fail_status: Option<u16>,
    /// Delay for every request.
    pub delay: Option<Duration>,
    /// The next hop: URL (its authority is sent as Host) and the address to connect to.
    pub call: Option<(Uri, SocketAddr)>,
    /// Serve HTTPS (HTTP/1.1 or h2 by ALPN) instead of plain HTTP.
    pub tls: Option<tls::ServerTlsFiles>,
}

struct Shared {
    opts: ServerOpts,
    log: Option<LogWriter>,
    cancel_log: Option<LogWriter>,
}

/// Logs its request as cancelled when dropped while armed: hyper drops a request's handler when the
/// connection closes (HTTP/1.1) or the stream is reset (HTTP/2) before the handler finished.
struct CancelWatch<'a> {
    log: &'a LogWriter,
    record: Option<RequestRecord>,
}

impl CancelWatch<'_> {
    /// The handler finished: nothing to log.
    fn disarm(&mut self) {
        self.record = None;
    }
}

impl Drop for CancelWatch<'_> {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            record.kind = "cancelled".to_string();
            record.ts_ms = unix_ms();
            self.log.write(&record);
        }
    }
}

/// The error a handler returns to make hyper drop the connection (see [`ResettableStream`]).
#[derive(Debug)]
struct ResetRequested;

impl std::fmt::Display for ResetRequested {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reset requested by the request path")
    }
}

impl std::error::Error for ResetRequested {}

/// Serves until killed.
pub async fn run(opts: ServerOpts) -> Result<()> {
    let acceptor = opts.tls.as_ref().map(tls::http_acceptor).transpose()?;
    let listener = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("binding {}", opts.listen))?;
    let log = opts.log.as_deref().map(LogWriter::open).transpose()?;
    let cancel_log = opts
        .cancel_log
        .as_deref()
        .map(LogWriter::open)
        .transpose()?;
    announce(&listener)?;
    let shared = Arc::new(Shared {
        opts,
        log,
        cancel_log,
    });
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
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let reset = Arc::new(AtomicBool::new(false));
            let io = ResettableStream {
                inner: stream,
                reset: reset.clone(),
            };
            let Some(acceptor) = acceptor else {
                return serve(io, peer, shared, reset, None).await;
            };
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                Ok(Ok(tls)) => {
                    let session = Arc::new(tls::session(&tls));
                    serve(tls, peer, shared, reset, Some(session)).await;
                }
                Ok(Err(e)) => eprintln!("TLS handshake from {peer}: {e}"),
                Err(_) => eprintln!("TLS handshake from {peer}: timed out"),
            }
        });
    }
}

/// Serves one connection: HTTP/1.1, or HTTP/2 when it starts with the h2 preface (h2c, or h2 chosen
/// by ALPN over TLS).
async fn serve<I>(
    io: I,
    peer: SocketAddr,
    shared: Arc<Shared>,
    reset: Arc<AtomicBool>,
    session: Option<Arc<tls::TlsSession>>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let shared = shared.clone();
        let reset = reset.clone();
        let session = session.clone();
        async move { handle(req, peer, &shared, &reset, session.as_deref()).await }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if let Err(e) = builder.serve_connection(TokioIo::new(io), svc).await {
        eprintln!("connection from {peer}: {e}");
    }
}

/// What the path asks for.
#[derive(Debug, Default, PartialEq)]
struct PathProgram {
    status: Option<u16>,
    delay: Option<Duration>,
    reset: bool,
    /// Answer with this many pattern bytes instead of the echo (at most [`MAX_BYTES`]).
    bytes: Option<usize>,
}

/// Largest `/bytes/<n>` body: 100 MiB, the slow-reader test's response.
const MAX_BYTES: usize = 100 << 20;

/// The pattern bytes of `/bytes/<n>` responses, made once and shared by every response.
fn big_body(len: usize) -> Bytes {
    static BIG: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    BIG.get_or_init(|| Bytes::from(keel_tests::body_pattern(MAX_BYTES)))
        .slice(..len.min(MAX_BYTES))
}

fn parse_program(path: &str) -> PathProgram {
    let path = path.split('?').next().unwrap_or_default();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut p = PathProgram::default();
    for (i, seg) in segs.iter().enumerate() {
        let arg = segs.get(i + 1).copied().unwrap_or_default();
        match *seg {
            "status" => {
                if let Ok(code) = arg.parse::<u16>() {
                    if (200..=599).contains(&code) {
                        p.status = Some(code);
                    }
                }
            }
            "delay" => {
                if let Ok(ms) = arg.parse::<u64>() {
                    p.delay = Some(Duration::from_millis(ms).min(MAX_DELAY));
                }
            }
            "reset" => p.reset = true,
            "bytes" => p.bytes = arg.parse::<usize>().ok().map(|n| n.min(MAX_BYTES)),
            _ => {}
        }
    }
    p
}

/// `response-header=<name>:<value>` query parameters (no percent-decoding: tests use plain tokens).
fn response_headers_from_query(path: &str) -> Vec<(HeaderName, HeaderValue)> {
    let Some((_, query)) = path.split_once('?') else {
        return Vec::new();
    };
    query
        .split('&')
        .filter_map(|kv| kv.strip_prefix("response-header="))
        .filter_map(|nv| nv.split_once(':'))
        .filter_map(|(n, v)| {
            Some((
                HeaderName::from_bytes(n.as_bytes()).ok()?,
                HeaderValue::from_str(v).ok()?,
            ))
        })
        .collect()
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    shared: &Shared,
    reset: &AtomicBool,
    session: Option<&tls::TlsSession>,
) -> Result<Response<Full<Bytes>>, ResetRequested> {
    let ts_ms = unix_ms();
    let opts = &shared.opts;
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
        headers: joined_headers(req.headers()),
    };
    // Read the request body to the end (so the connection can be reused and the log has its hash).
    let body = match http_body_util::Limited::new(req.into_body(), MAX_REQUEST_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            eprintln!("reading request body from {peer}: {e}");
            Bytes::new()
        }
    };
    let record = RequestRecord {
        ts_ms,
        pod: echo.pod.clone(),
        version: echo.version.clone(),
        kind: "http".to_string(),
        method: echo.method.clone(),
        path: path.clone(),
        protocol: echo.protocol.clone(),
        peer: echo.peer.clone(),
        headers: echo.headers.clone(),
        body_len: body.len() as u64,
        body_hash: body_hash(&body),
    };
    if let Some(log) = &shared.log {
        log.write(&record);
    }
    let mut watch = shared.cancel_log.as_ref().map(|log| CancelWatch {
        log,
        record: Some(record),
    });
    let program = parse_program(&path);
    if program.reset {
        // The server's own choice, not the client's.
        if let Some(w) = watch.as_mut() {
            w.disarm();
        }
        reset.store(true, Ordering::SeqCst);
        return Err(ResetRequested);
    }
    if let Some(d) = program.delay.or(opts.delay) {
        tokio::time::sleep(d).await;
    }
    let extra = response_headers_from_query(&path);
    let mut resp = match &opts.call {
        Some((url, addr)) => call_next_hop(&opts.pod, url, *addr).await,
        None => match program.bytes {
            Some(len) => Response::new(Full::new(big_body(len))),
            None => {
                let status = program.status.or(opts.fail_status).unwrap_or(200);
                echo_response(status, &echo)
            }
        },
    };
    for (n, v) in extra {
        resp.headers_mut().append(n, v);
    }
    if let Some(session) = session {
        // What the TLS client sent, for tests of TLS origination.
        let sni = session.sni.as_deref().unwrap_or("");
        if let Ok(v) = HeaderValue::from_str(sni) {
            resp.headers_mut().insert(X_SNI, v);
        }
        let cert = if session.client_cert {
            "present"
        } else {
            "absent"
        };
        resp.headers_mut()
            .insert(X_CLIENT_CERT, HeaderValue::from_static(cert));
    }
    if let Some(w) = watch.as_mut() {
        w.disarm();
    }
    Ok(resp)
}

fn echo_response(status: u16, echo: &EchoBody) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    // 204 and 304 have no body by definition.
    let bodyless = status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let json = if bodyless {
        Vec::new()
    } else {
        serde_json::to_vec(echo).unwrap_or_default()
    };
    let mut resp = Response::new(Full::new(Bytes::from(json)));
    *resp.status_mut() = status;
    if !bodyless {
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    resp
}

/// One GET to the next hop (a new connection each time, like a simple application client), answered as
/// `"<pod> => <body>"` with the hop's status, or `"<pod> => Error: <status> - <body>"` when it is not 2xx
/// — the format of the seed tutorial's customer/preference/recommendation chain.
async fn call_next_hop(pod: &str, url: &Uri, addr: SocketAddr) -> Response<Full<Bytes>> {
    let (status, body) = match tokio::time::timeout(CALL_TIMEOUT, get_once(url, addr)).await {
        Ok(Ok((status, body))) => {
            let text = String::from_utf8_lossy(&body).into_owned();
            if (200..300).contains(&status) {
                (status, format!("{pod} => {text}"))
            } else {
                (status, format!("{pod} => Error: {status} - {text}"))
            }
        }
        Ok(Err(e)) => (503, format!("{pod} => Error: {e:#}")),
        Err(_) => (504, format!("{pod} => Error: timeout")),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

async fn get_once(url: &Uri, addr: SocketAddr) -> Result<(u16, Bytes)> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake")?;
    let conn = tokio::spawn(conn);
    let authority = url.authority().map(|a| a.as_str()).unwrap_or_default();
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let req = Request::get(path)
        .header(HOST, authority)
        .body(Empty::<Bytes>::new())
        .context("building request")?;
    let resp = sender.send_request(req).await.context("sending request")?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .context("reading body")?
        .to_bytes();
    conn.abort();
    Ok((status, body))
}

/// A TCP stream that, once its request asked for `/reset`, closes with an RST (SO_LINGER 0) instead of
/// a FIN and skips the orderly shutdown: the upstream "resets the connection without a response".
struct ResettableStream {
    inner: TcpStream,
    reset: Arc<AtomicBool>,
}

impl AsyncRead for ResettableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    // Vectored writes let hyper queue a large body chunk instead of copying it into its buffer.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.reset.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Drop for ResettableStream {
    fn drop(&mut self) {
        if self.reset.load(Ordering::SeqCst) {
            if let Err(e) = self.inner.set_zero_linger() {
                eprintln!("SO_LINGER 0: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_programs() {
        assert_eq!(parse_program("/"), PathProgram::default());
        assert_eq!(
            parse_program("/status/503?x=1"),
            PathProgram {
                status: Some(503),
                ..PathProgram::default()
            }
        );
        assert_eq!(
            parse_program("/api/delay/250/status/500"),
            PathProgram {
                status: Some(500),
                delay: Some(Duration::from_millis(250)),
                reset: false,
                bytes: None,
            }
        );
        assert!(parse_program("/reset").reset);
        assert_eq!(parse_program("/bytes/1024").bytes, Some(1024));
        assert_eq!(parse_program("/bytes/999999999999").bytes, Some(MAX_BYTES));
        // Out-of-range codes and non-numbers are ignored.
        assert_eq!(parse_program("/status/99").status, None);
        assert_eq!(parse_program("/status/abc").status, None);
    }

    #[test]
    fn response_headers_query() {
        let h =
            response_headers_from_query("/x?a=1&response-header=x-one:1&response-header=x-two:b");
        let names: Vec<&str> = h.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x-one", "x-two"]);
    }
}
