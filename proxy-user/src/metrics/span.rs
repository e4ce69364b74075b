//! The proxy's own span per HTTP request, exported over OTLP/HTTP (JSON encoding, `POST
//! <endpoint>/v1/traces`) when `keel run --otlp-endpoint` names a collector; off by default.
//!
//! The span joins the client's trace: trace id and parent span id come from the incoming W3C
//! `traceparent`, else from B3 (`x-b3-traceid`/`x-b3-spanid` or the single `b3` header); without
//! either, the span starts a new trace. Trace headers are forwarded to the upstream untouched (Keel
//! does not inject its own span id), so the application's spans stay children of the client's.
//!
//! Cost: the request path pays one load and a branch when tracing is off. When on, it captures a few
//! strings at the start and hands the finished span to a bounded queue (`try_send`; a full queue
//! drops the span and counts it in `keel_trace_spans_dropped_total`). One exporter task, off the data
//! plane, batches spans (up to [`BATCH_SPANS`] or every [`BATCH_INTERVAL`]) and posts each batch with
//! a timeout of [`EXPORT_TIMEOUT`]; a failed export drops the batch (counted) and is logged.
//!
//! The OTLP/JSON messages are written with `serde_json` rather than generated protobuf types: the
//! few fields used are fixed by the OTLP spec (hex ids, string nanoseconds, integer enums), and it
//! spares the build a protobuf toolchain on 2-core builders.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderMap;
use prometheus_client::metrics::counter::Counter;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::outcome::ResponseFlags;

/// Spans queued for export before further spans are dropped.
pub const QUEUE_SPANS: usize = 4096;
/// Spans per export request at most.
pub const BATCH_SPANS: usize = 512;
/// How long a span waits for its batch to fill.
pub const BATCH_INTERVAL: Duration = Duration::from_secs(1);
/// One export request, connect to response.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// A trace context read from request headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// 16 bytes.
    pub trace_id: [u8; 16],
    /// The caller's span: the parent of the proxy's span.
    pub parent_span_id: [u8; 8],
}

fn hex_bytes<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        *out.get_mut(i)? = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// A 64-bit B3 trace id is the low half of a 128-bit one.
fn b3_trace_id(s: &str) -> Option<[u8; 16]> {
    match s.len() {
        32 => hex_bytes::<16>(s),
        16 => hex_bytes::<8>(s).map(|low| {
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low);
            id
        }),
        _ => None,
    }
}

impl TraceContext {
    /// W3C `traceparent` first, then B3 multi-header, then single `b3`; all-zero ids are invalid.
    pub fn from_headers(headers: &HeaderMap) -> Option<TraceContext> {
        let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
        let valid =
            |c: TraceContext| (c.trace_id != [0; 16] && c.parent_span_id != [0; 8]).then_some(c);
        if let Some(tp) = get("traceparent") {
            let mut parts = tp.split('-');
            if let (Some(version), Some(trace), Some(span), Some(_flags)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            {
                if version.len() == 2 && version != "ff" {
                    if let (Some(trace_id), Some(parent_span_id)) =
                        (hex_bytes::<16>(trace), hex_bytes::<8>(span))
                    {
                        if let Some(c) = valid(TraceContext {
                            trace_id,
                            parent_span_id,
                        }) {
                            return Some(c);
                        }
                    }
                }
            }
        }
        if let (Some(trace), Some(span)) = (get("x-b3-traceid"), get("x-b3-spanid")) {
            if let (Some(trace_id), Some(parent_span_id)) =
                (b3_trace_id(trace), hex_bytes::<8>(span))
            {
                if let Some(c) = valid(TraceContext {
                    trace_id,
                    parent_span_id,
                }) {
                    return Some(c);
                }
            }
        }
        let b3 = get("b3")?;
        let mut parts = b3.split('-');
        let trace_id = b3_trace_id(parts.next()?)?;
        let parent_span_id = hex_bytes::<8>(parts.next()?)?;
        valid(TraceContext {
            trace_id,
            parent_span_id,
        })
    }
}

/// What a span needs from the request, taken when it starts (only when tracing is on).
#[derive(Debug)]
pub struct SpanStart {
    context: Option<TraceContext>,
    start: SystemTime,
    method: String,
    url: String,
    protocol: &'static str,
    user_agent: Option<String>,
    request_id: Option<String>,
    authority: String,
}

impl SpanStart {
    /// Read the trace context and the request's facts.
    pub fn capture<B>(req: &http::Request<B>, authority: &str) -> SpanStart {
        let header = |n: &str| {
            req.headers()
                .get(n)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        SpanStart {
            context: TraceContext::from_headers(req.headers()),
            start: SystemTime::now(),
            method: req.method().as_str().to_string(),
            url: format!(
                "http://{authority}{}",
                req.uri().path_and_query().map_or("/", |p| p.as_str())
            ),
            protocol: match req.version() {
                http::Version::HTTP_2 => "HTTP/2",
                http::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            user_agent: header("user-agent"),
            request_id: header("x-request-id"),
            authority: authority.to_string(),
        }
    }
}

/// How a request ended, for its span.
#[derive(Debug)]
pub struct SpanEnd {
    /// Status sent.
    pub code: u16,
    /// Envoy response flags.
    pub flags: ResponseFlags,
    /// Istio cluster name, if routed to one.
    pub upstream_cluster: Option<String>,
    /// The routed host and port (`reviews.default.svc.cluster.local:9080`), for the span's name.
    pub upstream_host_port: Option<String>,
    /// The endpoint that answered.
    pub upstream_address: Option<SocketAddr>,
    /// The client pod's workload and namespace (`unknown` when Keel does not know the pod).
    pub source_workload: String,
    /// See `source_workload`.
    pub source_namespace: String,
    /// The client pod's address.
    pub peer: SocketAddr,
    /// Body bytes both ways.
    pub request_size: u64,
    /// See `request_size`.
    pub response_size: u64,
}

/// A finished span, queued for export.
#[derive(Debug)]
struct Finished {
    start: SpanStart,
    end: SpanEnd,
    at: SystemTime,
    span_id: [u8; 8],
    trace_id: [u8; 16],
}

/// The span exporter: set once at startup when a collector is configured.
#[derive(Debug, Default)]
pub struct Tracer {
    exporter: OnceLock<mpsc::Sender<Finished>>,
    dropped: Counter,
}

impl Tracer {
    /// Whether spans are exported (the request path's one branch).
    #[inline]
    pub fn enabled(&self) -> bool {
        self.exporter.get().is_some()
    }

    /// Spans dropped (queue full or export failed).
    pub fn dropped(&self) -> &Counter {
        &self.dropped
    }

    /// Start exporting to `endpoint` (`http://host:port[/base]`) on the current tokio runtime; spans
    /// carry `node_id`. Fails on an endpoint that is not plain `http://` with an IP or `localhost`.
    pub fn start(&self, endpoint: &str, node_id: String) -> Result<(), String> {
        let target = Endpoint::parse(endpoint)?;
        let (tx, rx) = mpsc::channel(QUEUE_SPANS);
        self.exporter
            .set(tx)
            .map_err(|_| "the tracer is already started".to_string())?;
        let dropped = self.dropped.clone();
        tokio::spawn(export_loop(rx, target, node_id, dropped));
        Ok(())
    }

    /// Queue the span of a finished request (never waits).
    pub fn finish(&self, start: SpanStart, end: SpanEnd) {
        let Some(exporter) = self.exporter.get() else {
            return;
        };
        let trace_id = match start.context {
            Some(c) => c.trace_id,
            None => rand::random(),
        };
        let span = Finished {
            start,
            end,
            at: SystemTime::now(),
            span_id: nonzero(rand::random()),
            trace_id: if trace_id == [0; 16] {
                [1; 16]
            } else {
                trace_id
            },
        };
        if exporter.try_send(span).is_err() {
            self.dropped.inc();
        }
    }
}

fn nonzero(id: [u8; 8]) -> [u8; 8] {
    if id == [0; 8] {
        [1; 8]
    } else {
        id
    }
}

/// Where spans go: an address and the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host and port as given (resolved at each export).
    pub authority: String,
    /// `/v1/traces`, under the endpoint's own path if it has one.
    pub path: String,
}

impl Endpoint {
    /// `http://127.0.0.1:4318` -> `127.0.0.1:4318` + `/v1/traces`; a path already ending in
    /// `/v1/traces` is kept.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("--otlp-endpoint {url:?}: only http:// is supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let uri: http::uri::Authority = authority
            .parse()
            .map_err(|e| format!("--otlp-endpoint {url:?}: {e}"))?;
        let host = uri.host().trim_start_matches('[').trim_end_matches(']');
        if host != "localhost" && host.parse::<std::net::IpAddr>().is_err() {
            return Err(format!(
                "--otlp-endpoint {url:?}: the host must be an IP address or localhost"
            ));
        }
        let authority = match uri.port_u16() {
            Some(_) => authority.to_string(),
            None => format!("{authority}:4318"),
        };
        let base = path.trim_end_matches('/');
        let path = if base.ends_with("/v1/traces") {
            base.to_string()
        } else {
            format!("{base}/v1/traces")
        };
        Ok(Endpoint { authority, path })
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn unix_nanos(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
        .to_string()
}

fn attr(key: &str, value: Value) -> Value {
    json!({ "key": key, "value": value })
}

fn string(s: &str) -> Value {
    json!({ "stringValue": s })
}

fn int(n: u64) -> Value {
    // OTLP/JSON writes 64-bit integers as strings.
    json!({ "intValue": n.to_string() })
}

/// One span as OTLP/JSON (`Span`): kind CLIENT, Envoy's tag names.
fn span_json(s: &Finished, node_id: &str) -> Value {
    let name = match &s.end.upstream_host_port {
        Some(hp) => format!("{hp}/*"),
        None => format!("{}/*", s.start.authority),
    };
    let mut attributes = vec![
        attr("node_id", string(node_id)),
        attr("component", string("proxy")),
        attr("http.method", string(&s.start.method)),
        attr("http.url", string(&s.start.url)),
        attr("http.protocol", string(s.start.protocol)),
        attr("http.status_code", int(u64::from(s.end.code))),
        attr("response_flags", string(&s.end.flags.to_string())),
        attr("request_size", int(s.end.request_size)),
        attr("response_size", int(s.end.response_size)),
        attr("peer.address", string(&s.end.peer.ip().to_string())),
        attr("istio.source_workload", string(&s.end.source_workload)),
        attr("istio.source_namespace", string(&s.end.source_namespace)),
        attr("istio.namespace", string(&s.end.source_namespace)),
        attr(
            "upstream_cluster",
            string(s.end.upstream_cluster.as_deref().unwrap_or("-")),
        ),
        attr(
            "upstream_cluster.name",
            string(s.end.upstream_cluster.as_deref().unwrap_or("-")),
        ),
    ];
    if let Some(a) = s.end.upstream_address {
        attributes.push(attr("upstream_address", string(&a.to_string())));
    }
    if let Some(ua) = &s.start.user_agent {
        attributes.push(attr("user_agent", string(ua)));
    }
    if let Some(id) = &s.start.request_id {
        attributes.push(attr("guid:x-request-id", string(id)));
    }
    let mut span = json!({
        "traceId": hex(&s.trace_id),
        "spanId": hex(&s.span_id),
        "name": name,
        // SPAN_KIND_CLIENT
        "kind": 3,
        "startTimeUnixNano": unix_nanos(s.start.start),
        "endTimeUnixNano": unix_nanos(s.at),
        "attributes": attributes,
        // STATUS_CODE_ERROR for 5xx, as Envoy marks its spans; else UNSET.
        "status": { "code": if s.end.code >= 500 { 2 } else { 0 } },
    });
    if let (Some(c), Some(obj)) = (s.start.context, span.as_object_mut()) {
        obj.insert("parentSpanId".into(), Value::String(hex(&c.parent_span_id)));
    }
    span
}

/// An `ExportTraceServiceRequest` holding `spans`.
fn request_json(spans: &[Finished], node_id: &str) -> Value {
    json!({
        "resourceSpans": [{
            "resource": { "attributes": [ attr("service.name", string("keel")) ] },
            "scopeSpans": [{
                "scope": { "name": "keel" },
                "spans": spans.iter().map(|s| span_json(s, node_id)).collect::<Vec<_>>(),
            }],
        }],
    })
}

async fn export_loop(
    mut rx: mpsc::Receiver<Finished>,
    target: Endpoint,
    node_id: String,
    dropped: Counter,
) {
    let mut failing = false;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + BATCH_INTERVAL;
        while batch.len() < BATCH_SPANS {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let body = request_json(&batch, &node_id).to_string();
        let sent = tokio::time::timeout(EXPORT_TIMEOUT, post(&target, body)).await;
        match sent {
            Ok(Ok(status)) if (200..300).contains(&status) => failing = false,
            other => {
                dropped.inc_by(batch.len() as u64);
                if !failing {
                    let why = match other {
                        Ok(Ok(status)) => format!("collector answered {status}"),
                        Ok(Err(e)) => e,
                        Err(_) => "timed out".to_string(),
                    };
                    tracing::warn!(endpoint = %target.authority, error = %why, "span export failed");
                    failing = true;
                }
            }
        }
    }
}

/// POST one batch; the status of the collector's answer.
async fn post(target: &Endpoint, body: String) -> Result<u16, String> {
    let stream = tokio::net::TcpStream::connect(target.authority.as_str())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let req = http::Request::post(target.path.as_str())
        .header(http::header::HOST, target.authority.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(Bytes::from(body)))
        .map_err(|e| format!("request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = resp.status().as_u16();
    // Read the answer so the connection closes cleanly; its content is not needed.
    let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
    drop(sender);
    let _ = conn.await;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn trace_context_from_w3c_then_b3() {
        let w3c = headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ]);
        let c = TraceContext::from_headers(&w3c);
        assert_eq!(
            c.map(|c| (hex(&c.trace_id), hex(&c.parent_span_id))),
            Some((
                "4bf92f3577b34da6a3ce929d0e0e4736".to_string(),
                "00f067aa0ba902b7".to_string()
            ))
        );
        let b3 = headers(&[
            ("x-b3-traceid", "e457b5a2e4d86bd1"),
            ("x-b3-spanid", "05e3ac9a4f6e3b90"),
        ]);
        let c = TraceContext::from_headers(&b3);
        assert_eq!(
            c.map(|c| hex(&c.trace_id)),
            Some("0000000000000000e457b5a2e4d86bd1".to_string())
        );
        let single = headers(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )]);
        let c = TraceContext::from_headers(&single);
        assert_eq!(
            c.map(|c| hex(&c.parent_span_id)),
            Some("e457b5a2e4d86bd1".to_string())
        );
        // Invalid ones start a new trace.
        let zero = headers(&[(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        )]);
        assert_eq!(TraceContext::from_headers(&zero), None);
        assert_eq!(TraceContext::from_headers(&headers(&[("b3", "0")])), None);
    }

    #[test]
    fn endpoints_are_local_http_urls() {
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:4318"),
            Ok(Endpoint {
                authority: "127.0.0.1:4318".into(),
                path: "/v1/traces".into()
            })
        );
        assert_eq!(
            Endpoint::parse("http://localhost/otlp/v1/traces").map(|e| (e.authority, e.path)),
            Ok(("localhost:4318".into(), "/otlp/v1/traces".into()))
        );
        assert!(Endpoint::parse("https://127.0.0.1:4318").is_err());
        assert!(Endpoint::parse("http://collector.example.com:4318").is_err());
    }

    #[test]
    fn span_json_has_the_parent_and_envoys_tags() {
        let req = http::Request::get("/reviews/1")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .header("x-request-id", "rid-1")
            .body(())
            .unwrap_or_default();
        let start = SpanStart::capture(&req, "reviews:9080");
        let span = Finished {
            start,
            end: SpanEnd {
                code: 503,
                flags: ResponseFlags::default(),
                upstream_cluster: Some("outbound|9080||reviews.default.svc.cluster.local".into()),
                upstream_host_port: Some("reviews.default.svc.cluster.local:9080".into()),
                upstream_address: None,
                source_workload: "sleep".into(),
                source_namespace: "default".into(),
                peer: ([10, 244, 0, 2], 1234).into(),
                request_size: 0,
                response_size: 19,
            },
            at: SystemTime::now(),
            span_id: [7; 8],
            trace_id: [0x4b; 16],
        };
        let v = span_json(&span, "keel~node-1");
        assert_eq!(v["parentSpanId"], "00f067aa0ba902b7");
        assert_eq!(v["spanId"], "0707070707070707");
        assert_eq!(v["kind"], 3);
        assert_eq!(v["name"], "reviews.default.svc.cluster.local:9080/*");
        assert_eq!(v["status"]["code"], 2);
        let attrs = v["attributes"].as_array().cloned().unwrap_or_default();
        let get = |k: &str| {
            attrs
                .iter()
                .find(|a| a["key"] == k)
                .map(|a| a["value"].clone())
        };
        assert_eq!(
            get("http.url"),
            Some(json!({"stringValue": "http://reviews:9080/reviews/1"}))
        );
        assert_eq!(get("http.status_code"), Some(json!({"intValue": "503"})));
        assert_eq!(
            get("istio.source_workload"),
            Some(json!({"stringValue": "sleep"}))
        );
        assert_eq!(
            get("guid:x-request-id"),
            Some(json!({"stringValue": "rid-1"}))
        );
        assert_eq!(get("node_id"), Some(json!({"stringValue": "keel~node-1"})));
    }
}
