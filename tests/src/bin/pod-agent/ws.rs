//! `ws-server` (WebSocket echo; the 101 answer carries `x-ws-pod: <pod>`) and `ws-client` (one
//! connection, text messages echoed one at a time, an optional binary message, a close handshake).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use keel_tests::{body_hash, body_pattern, RequestRecord, WsReport};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::support::{joined_headers, millis, unix_ms, LogWriter};

/// How long the client waits for each echo.
const ECHO_TIMEOUT: Duration = Duration::from_secs(10);

/// `ws-server` options.
pub struct ServerOpts {
    /// Address to bind.
    pub listen: SocketAddr,
    /// Name sent in `x-ws-pod` and logged.
    pub pod: String,
    /// Request log file (one record per handshake).
    pub log: Option<PathBuf>,
}

/// Serves until killed.
pub async fn run_server(opts: ServerOpts) -> Result<()> {
    let listener = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("binding {}", opts.listen))?;
    let log = opts.log.as_deref().map(LogWriter::open).transpose()?;
    crate::support::announce(&listener)?;
    let log = Arc::new(log);
    let pod = Arc::new(opts.pod);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (log, pod) = (log.clone(), pod.clone());
        tokio::spawn(async move {
            if let Err(e) = serve(stream, peer, &pod, log.as_ref().as_ref()).await {
                eprintln!("websocket from {peer}: {e:#}");
            }
        });
    }
}

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    pod: &str,
    log: Option<&LogWriter>,
) -> Result<()> {
    let ts_ms = unix_ms();
    let seen: Arc<Mutex<Option<RequestRecord>>> = Arc::new(Mutex::new(None));
    let record = seen.clone();
    let pod_header = HeaderValue::from_str(pod).context("pod name as header value")?;
    let pod_name = pod.to_string();
    #[expect(
        clippy::result_large_err,
        reason = "tungstenite's handshake callback signature"
    )]
    let callback = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let rec = RequestRecord {
            ts_ms,
            pod: pod_name,
            version: String::new(),
            kind: "ws".to_string(),
            method: req.method().to_string(),
            path: req
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_string(), ToString::to_string),
            protocol: format!("{:?}", req.version()),
            peer: peer.to_string(),
            headers: joined_headers(req.headers()),
            body_len: 0,
            body_hash: body_hash(b""),
        };
        if let Ok(mut slot) = record.lock() {
            *slot = Some(rec);
        }
        resp.headers_mut().insert("x-ws-pod", pod_header);
        Ok(resp)
    };
    let accepted = tokio_tungstenite::accept_hdr_async(stream, callback).await;
    // Log the handshake request whether or not the upgrade worked: it reached the backend.
    if let (Some(log), Ok(Some(rec))) = (log, seen.lock().map(|mut s| s.take())) {
        log.write(&rec);
    }
    let mut ws = accepted.context("websocket handshake")?;
    while let Some(msg) = ws.next().await {
        match msg.context("reading message")? {
            m @ (Message::Text(_) | Message::Binary(_)) => {
                ws.send(m).await.context("echoing")?;
            }
            // tungstenite answers pings and close frames itself.
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
    Ok(())
}

/// What one `ws-client` run does.
pub struct ClientArgs {
    /// `ws://<authority>/<path>`.
    pub url: String,
    /// Where to connect.
    pub connect_to: SocketAddr,
    /// Text messages.
    pub messages: Vec<String>,
    /// Binary message size (0: none).
    pub binary_size: usize,
    /// Extra handshake headers.
    pub headers: Vec<(String, String)>,
}

/// Runs the exchange and reports; never fails (failures are in the report).
pub async fn run_client(args: ClientArgs, timeout: Duration) -> WsReport {
    let start = Instant::now();
    let mut report = WsReport {
        url: args.url.clone(),
        ..WsReport::default()
    };
    match tokio::time::timeout(timeout, exchange(&args, &mut report)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => report.error = Some(format!("{e:#}")),
        Err(_) => report.error = Some(format!("timed out after {timeout:?}")),
    }
    report.elapsed_ms = millis(start.elapsed());
    report
}

async fn exchange(args: &ClientArgs, report: &mut WsReport) -> Result<()> {
    let mut request = args
        .url
        .as_str()
        .into_client_request()
        .with_context(|| format!("bad URL {:?}", args.url))?;
    for (k, v) in &args.headers {
        let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
            .with_context(|| format!("header name {k:?}"))?;
        request
            .headers_mut()
            .append(name, HeaderValue::from_str(v).context("header value")?);
    }
    let stream = TcpStream::connect(args.connect_to)
        .await
        .with_context(|| format!("connecting to {}", args.connect_to))?;
    let (mut ws, resp) = match tokio_tungstenite::client_async(request, stream).await {
        Ok(ok) => ok,
        Err(WsError::Http(resp)) => {
            report.status = resp.status().as_u16();
            report.headers = joined_headers(resp.headers());
            bail!(
                "handshake refused with {}: {}",
                resp.status(),
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default())
            );
        }
        Err(e) => return Err(e).context("websocket handshake"),
    };
    report.status = resp.status().as_u16();
    report.headers = joined_headers(resp.headers());
    for m in &args.messages {
        ws.send(Message::text(m.clone())).await.context("sending")?;
        report.sent.push(m.clone());
        match next_data(&mut ws).await? {
            Message::Text(t) => report.received.push(t.as_str().to_string()),
            other => bail!("expected a text echo, got {other:?}"),
        }
    }
    if args.binary_size > 0 {
        let payload = Bytes::from(body_pattern(args.binary_size));
        ws.send(Message::Binary(payload.clone()))
            .await
            .context("sending binary")?;
        report.binary_echo_ok = Some(match next_data(&mut ws).await? {
            Message::Binary(b) => b == payload,
            _ => false,
        });
    }
    ws.close(None).await.context("closing")?;
    // Drain until the server's close frame ends the stream.
    while let Some(msg) = ws.next().await {
        if msg.is_err() {
            break;
        }
    }
    report.closed_cleanly = true;
    Ok(())
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn next_data(ws: &mut Ws) -> Result<Message> {
    loop {
        let msg = tokio::time::timeout(ECHO_TIMEOUT, ws.next())
            .await
            .context("no echo in time")?
            .context("connection closed before the echo")?
            .context("reading echo")?;
        match msg {
            Message::Text(_) | Message::Binary(_) | Message::Close(_) => return Ok(msg),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
}
