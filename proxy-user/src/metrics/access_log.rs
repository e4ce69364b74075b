//! Envoy's access log format (Istio's `accessLogFile` / `accessLogEncoding` / `accessLogFormat`):
//! parsing a format string into command operators once per config, and formatting one finished
//! request or TCP connection ([`Entry`]) into a line.
//!
//! Supported command operators (Istio's default format uses exactly these, plus a few cheap
//! others); any other `%OPERATOR%` is rejected when the config is loaded:
//! `START_TIME`, `REQ(H)`/`REQ(H?ALT)`, `RESP(H)`/`RESP(H?ALT)` (each with an optional `:N` length
//! limit), `PROTOCOL`, `RESPONSE_CODE`, `RESPONSE_FLAGS`, `RESPONSE_CODE_DETAILS`,
//! `CONNECTION_TERMINATION_DETAILS`, `UPSTREAM_TRANSPORT_FAILURE_REASON`, `BYTES_RECEIVED`,
//! `BYTES_SENT`, `DURATION`, `UPSTREAM_HOST`, `UPSTREAM_CLUSTER`, `UPSTREAM_CLUSTER_RAW`,
//! `UPSTREAM_LOCAL_ADDRESS`, `DOWNSTREAM_LOCAL_ADDRESS`, `DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT`,
//! `DOWNSTREAM_REMOTE_ADDRESS`, `DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT`,
//! `DOWNSTREAM_PEER_ADDRESS`, `REQUESTED_SERVER_NAME`, `ROUTE_NAME`, `HOSTNAME`, `GRPC_STATUS`
//! (numeric).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::outcome::ResponseFlags;

/// Istio's default TEXT format (`EnvoyTextLogFormat`, Istio 1.23 onwards).
pub const ISTIO_TEXT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// Istio's default JSON keys (`EnvoyJSONLogFormatIstio`), in the order they are printed (sorted).
pub const ISTIO_JSON_FORMAT: [(&str, &str); 24] = [
    ("authority", "%REQ(:AUTHORITY)%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    (
        "connection_termination_details",
        "%CONNECTION_TERMINATION_DETAILS%",
    ),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("duration", "%DURATION%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("route_name", "%ROUTE_NAME%"),
    ("start_time", "%START_TIME%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER_RAW%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    (
        "upstream_service_time",
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    ),
    (
        "upstream_transport_failure_reason",
        "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    ),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
];

/// How lines are encoded (`accessLogEncoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// A format string (default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// One command operator.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Operator {
    StartTime,
    /// A request header (slot into [`LogFormat::request_headers`]), an alternative, a length limit.
    Req(usize, Option<usize>, Option<usize>),
    /// A response header (slot into [`LogFormat::response_headers`]).
    Resp(usize, Option<usize>, Option<usize>),
    Protocol,
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    ConnectionTerminationDetails,
    UpstreamTransportFailureReason,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    UpstreamCluster,
    UpstreamLocalAddress,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    RequestedServerName,
    RouteName,
    Hostname,
    GrpcStatus,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Op(Operator),
}

/// A parsed format: a text template, or JSON keys each with a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFormat {
    encoding: Encoding,
    /// Text: one template; JSON: `(key, template)` in print order.
    fields: Vec<(String, Vec<Piece>)>,
    /// Lower-case request header names the format reads (`:method`, `:path`, `:authority`,
    /// `:scheme` are the request's pseudo headers).
    request_headers: Vec<String>,
    /// Lower-case response header names the format reads.
    response_headers: Vec<String>,
}

/// Why a format was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidLogFormat(pub String);

impl LogFormat {
    /// Istio's default for `encoding`.
    pub fn istio_default(encoding: Encoding) -> LogFormat {
        let parsed = match encoding {
            Encoding::Text => LogFormat::parse(Encoding::Text, ISTIO_TEXT_FORMAT),
            Encoding::Json => LogFormat::json(
                ISTIO_JSON_FORMAT
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string())),
            ),
        };
        // The defaults use supported operators only (a unit test holds this).
        parsed.unwrap_or(LogFormat {
            encoding,
            fields: Vec::new(),
            request_headers: Vec::new(),
            response_headers: Vec::new(),
        })
    }

    /// Parse `accessLogFormat` for `encoding`: a format string (TEXT) or a JSON object whose values
    /// are format strings (JSON). A TEXT format without a final newline gets one.
    pub fn parse(encoding: Encoding, format: &str) -> Result<LogFormat, InvalidLogFormat> {
        match encoding {
            Encoding::Text => {
                let mut f = LogFormat::empty(Encoding::Text);
                let text = if format.ends_with('\n') {
                    Cow::Borrowed(format)
                } else {
                    Cow::Owned(format!("{format}\n"))
                };
                let pieces = f.template(&text)?;
                f.fields.push((String::new(), pieces));
                Ok(f)
            }
            Encoding::Json => {
                let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(format)
                    .map_err(|e| {
                        InvalidLogFormat(format!("a JSON accessLogFormat must be an object: {e}"))
                    })?;
                let mut pairs = Vec::with_capacity(map.len());
                for (k, v) in map {
                    match v {
                        serde_json::Value::String(s) => pairs.push((k, s)),
                        other => {
                            return Err(InvalidLogFormat(format!(
                                "JSON key {k:?}: only string values (format strings) are supported, not {other}"
                            )))
                        }
                    }
                }
                pairs.sort();
                LogFormat::json(pairs.into_iter())
            }
        }
    }

    fn json(pairs: impl Iterator<Item = (String, String)>) -> Result<LogFormat, InvalidLogFormat> {
        let mut f = LogFormat::empty(Encoding::Json);
        for (k, v) in pairs {
            let pieces = f.template(&v)?;
            f.fields.push((k, pieces));
        }
        Ok(f)
    }

    fn empty(encoding: Encoding) -> LogFormat {
        LogFormat {
            encoding,
            fields: Vec::new(),
            request_headers: Vec::new(),
            response_headers: Vec::new(),
        }
    }

    /// The encoding.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The request headers to capture, in slot order.
    pub fn request_headers(&self) -> &[String] {
        &self.request_headers
    }

    /// The response headers to capture, in slot order.
    pub fn response_headers(&self) -> &[String] {
        &self.response_headers
    }

    fn template(&mut self, text: &str) -> Result<Vec<Piece>, InvalidLogFormat> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('%') {
            literal.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            let Some(end) = after.find('%') else {
                return Err(InvalidLogFormat(format!(
                    "unterminated command operator in {text:?}"
                )));
            };
            let token = &after[..end];
            rest = &after[end + 1..];
            if token.is_empty() {
                // `%%` is not an Envoy operator; keep it readable rather than guess.
                return Err(InvalidLogFormat("empty command operator `%%`".to_string()));
            }
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            }
            pieces.push(Piece::Op(self.operator(token)?));
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(pieces)
    }

    fn operator(&mut self, token: &str) -> Result<Operator, InvalidLogFormat> {
        use Operator as O;
        let simple = match token {
            "START_TIME" => Some(O::StartTime),
            "PROTOCOL" => Some(O::Protocol),
            "RESPONSE_CODE" => Some(O::ResponseCode),
            "RESPONSE_FLAGS" => Some(O::ResponseFlags),
            "RESPONSE_CODE_DETAILS" => Some(O::ResponseCodeDetails),
            "CONNECTION_TERMINATION_DETAILS" => Some(O::ConnectionTerminationDetails),
            "UPSTREAM_TRANSPORT_FAILURE_REASON" => Some(O::UpstreamTransportFailureReason),
            "BYTES_RECEIVED" => Some(O::BytesReceived),
            "BYTES_SENT" => Some(O::BytesSent),
            "DURATION" => Some(O::Duration),
            "UPSTREAM_HOST" => Some(O::UpstreamHost),
            "UPSTREAM_CLUSTER" | "UPSTREAM_CLUSTER_RAW" => Some(O::UpstreamCluster),
            "UPSTREAM_LOCAL_ADDRESS" => Some(O::UpstreamLocalAddress),
            "DOWNSTREAM_LOCAL_ADDRESS" => Some(O::DownstreamLocalAddress),
            "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Some(O::DownstreamLocalAddressWithoutPort),
            // Keel sees the pod's own address: the direct peer and the remote are the same.
            "DOWNSTREAM_REMOTE_ADDRESS" | "DOWNSTREAM_PEER_ADDRESS" => {
                Some(O::DownstreamRemoteAddress)
            }
            "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Some(O::DownstreamRemoteAddressWithoutPort),
            "REQUESTED_SERVER_NAME" => Some(O::RequestedServerName),
            "ROUTE_NAME" => Some(O::RouteName),
            "HOSTNAME" => Some(O::Hostname),
            "GRPC_STATUS(NUMBER)" => Some(O::GrpcStatus),
            _ => None,
        };
        if let Some(op) = simple {
            return Ok(op);
        }
        let unsupported = || {
            InvalidLogFormat(format!(
                "unsupported command operator %{token}% (Keel supports START_TIME, REQ(..), RESP(..), \
                 PROTOCOL, RESPONSE_CODE, RESPONSE_FLAGS, RESPONSE_CODE_DETAILS, \
                 CONNECTION_TERMINATION_DETAILS, UPSTREAM_TRANSPORT_FAILURE_REASON, BYTES_RECEIVED, \
                 BYTES_SENT, DURATION, UPSTREAM_HOST, UPSTREAM_CLUSTER, UPSTREAM_CLUSTER_RAW, \
                 UPSTREAM_LOCAL_ADDRESS, DOWNSTREAM_LOCAL_ADDRESS[_WITHOUT_PORT], \
                 DOWNSTREAM_REMOTE_ADDRESS[_WITHOUT_PORT], DOWNSTREAM_PEER_ADDRESS, \
                 REQUESTED_SERVER_NAME, ROUTE_NAME, HOSTNAME, GRPC_STATUS(NUMBER))"
            ))
        };
        let (request, args) = if let Some(a) = token.strip_prefix("REQ(") {
            (true, a)
        } else if let Some(a) = token.strip_prefix("RESP(") {
            (false, a)
        } else {
            return Err(unsupported());
        };
        let (names, tail) = args.split_once(')').ok_or_else(unsupported)?;
        let max = match tail {
            "" => None,
            t => Some(
                t.strip_prefix(':')
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(unsupported)?,
            ),
        };
        let (main, alt) = match names.split_once('?') {
            Some((a, b)) => (a, Some(b)),
            None => (names, None),
        };
        let valid = |n: &str| {
            !n.is_empty()
                && n.trim_start_matches(':')
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !valid(main) || alt.is_some_and(|a| !valid(a)) {
            return Err(InvalidLogFormat(format!("bad header name in %{token}%")));
        }
        let list = if request {
            &mut self.request_headers
        } else {
            &mut self.response_headers
        };
        let mut slot = |name: &str| {
            let name = name.to_ascii_lowercase();
            match list.iter().position(|n| *n == name) {
                Some(i) => i,
                None => {
                    list.push(name);
                    list.len() - 1
                }
            }
        };
        let main = slot(main);
        let alt = alt.map(slot);
        Ok(if request {
            Operator::Req(main, alt, max)
        } else {
            Operator::Resp(main, alt, max)
        })
    }

    /// Format `entry` as one line (with its final newline).
    pub fn write(&self, entry: &Entry, out: &mut String) {
        match self.encoding {
            Encoding::Text => {
                for (_, pieces) in &self.fields {
                    for piece in pieces {
                        match piece {
                            Piece::Literal(s) => out.push_str(s),
                            Piece::Op(op) => match value(op, entry) {
                                Value::Absent => out.push('-'),
                                Value::Str(s) => out.push_str(&s),
                                Value::Num(n) => {
                                    let _ = write!(out, "{n}");
                                }
                            },
                        }
                    }
                }
            }
            Encoding::Json => {
                out.push('{');
                for (i, (key, pieces)) in self.fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    json_string(key, out);
                    out.push(':');
                    match pieces.as_slice() {
                        // A lone operator keeps its type: numbers stay numbers, absent is null.
                        [Piece::Op(op)] => match value(op, entry) {
                            Value::Absent => out.push_str("null"),
                            Value::Str(s) => json_string(&s, out),
                            Value::Num(n) => {
                                let _ = write!(out, "{n}");
                            }
                        },
                        pieces => {
                            let mut s = String::new();
                            for piece in pieces {
                                match piece {
                                    Piece::Literal(l) => s.push_str(l),
                                    Piece::Op(op) => match value(op, entry) {
                                        Value::Absent => s.push('-'),
                                        Value::Str(v) => s.push_str(&v),
                                        Value::Num(n) => {
                                            let _ = write!(s, "{n}");
                                        }
                                    },
                                }
                            }
                            json_string(&s, out);
                        }
                    }
                }
                out.push_str("}\n");
            }
        }
    }
}

fn json_string(s: &str, out: &mut String) {
    // serde_json escapes exactly as JSON requires; a `String` sink cannot fail.
    if let Ok(quoted) = serde_json::to_string(s) {
        out.push_str(&quoted);
    }
}

/// One finished HTTP request or TCP connection, as the format reads it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// When the request (connection) started.
    pub start_time: SystemTime,
    /// `HTTP/1.1`, `HTTP/2`; `None` for TCP.
    pub protocol: Option<&'static str>,
    /// The status sent (0: none, and for TCP).
    pub code: u16,
    /// Envoy response flags.
    pub flags: ResponseFlags,
    /// `%RESPONSE_CODE_DETAILS%` (`None` for TCP).
    pub details: Option<&'static str>,
    /// Body bytes from the client (TCP: every byte).
    pub bytes_received: u64,
    /// Body bytes to the client (TCP: every byte).
    pub bytes_sent: u64,
    /// Until the last byte.
    pub duration: Duration,
    /// Values of [`LogFormat::request_headers`], by slot.
    pub request: Vec<Option<String>>,
    /// Values of [`LogFormat::response_headers`], by slot.
    pub response: Vec<Option<String>>,
    /// The endpoint that answered.
    pub upstream_host: Option<SocketAddr>,
    /// The cluster's Istio name (`outbound|9080|v1|reviews.default.svc.cluster.local`).
    pub upstream_cluster: Option<String>,
    /// Where the client connected (the Service VIP:port).
    pub downstream_local: SocketAddr,
    /// The client pod's address (kernel-attested).
    pub downstream_remote: SocketAddr,
    /// The TLS SNI, for TLS connections routed by it.
    pub requested_server_name: Option<String>,
    /// The route's name (`default`, `allow_any`, `block_all`, or the VirtualService rule's).
    pub route_name: Option<String>,
    /// gRPC status (headers or trailers).
    pub grpc_status: Option<u32>,
}

enum Value<'a> {
    Absent,
    Str(Cow<'a, str>),
    Num(u64),
}

fn header<'a>(
    values: &'a [Option<String>],
    main: usize,
    alt: Option<usize>,
    max: Option<usize>,
) -> Value<'a> {
    let found = values
        .get(main)
        .and_then(Option::as_deref)
        .or_else(|| alt.and_then(|a| values.get(a)).and_then(Option::as_deref));
    match found {
        None => Value::Absent,
        Some(v) => match max {
            Some(n) if v.len() > n => {
                let mut end = n;
                while !v.is_char_boundary(end) {
                    end -= 1;
                }
                Value::Str(Cow::Borrowed(&v[..end]))
            }
            _ => Value::Str(Cow::Borrowed(v)),
        },
    }
}

fn value<'a>(op: &Operator, e: &'a Entry) -> Value<'a> {
    use Operator as O;
    let opt = |s: Option<&'a str>| s.map_or(Value::Absent, |s| Value::Str(Cow::Borrowed(s)));
    let addr =
        |a: Option<SocketAddr>| a.map_or(Value::Absent, |a| Value::Str(a.to_string().into()));
    match op {
        O::StartTime => Value::Str(rfc3339_millis(e.start_time).into()),
        O::Req(main, alt, max) => header(&e.request, *main, *alt, *max),
        O::Resp(main, alt, max) => header(&e.response, *main, *alt, *max),
        O::Protocol => opt(e.protocol),
        O::ResponseCode => Value::Num(u64::from(e.code)),
        O::ResponseFlags => Value::Str(e.flags.to_string().into()),
        O::ResponseCodeDetails => opt(e.details),
        // Keel does not record why a downstream connection was closed.
        O::ConnectionTerminationDetails => Value::Absent,
        // The reply's transport failure reason is not carried into the record yet.
        O::UpstreamTransportFailureReason => Value::Absent,
        O::BytesReceived => Value::Num(e.bytes_received),
        O::BytesSent => Value::Num(e.bytes_sent),
        O::Duration => Value::Num(u64::try_from(e.duration.as_millis()).unwrap_or(u64::MAX)),
        O::UpstreamHost => addr(e.upstream_host),
        O::UpstreamCluster => opt(e.upstream_cluster.as_deref()),
        // Upstream connections are pooled below the request; their local address is not tracked.
        O::UpstreamLocalAddress => Value::Absent,
        O::DownstreamLocalAddress => addr(Some(e.downstream_local)),
        O::DownstreamLocalAddressWithoutPort => {
            Value::Str(e.downstream_local.ip().to_string().into())
        }
        O::DownstreamRemoteAddress => addr(Some(e.downstream_remote)),
        O::DownstreamRemoteAddressWithoutPort => {
            Value::Str(e.downstream_remote.ip().to_string().into())
        }
        O::RequestedServerName => opt(e.requested_server_name.as_deref()),
        O::RouteName => opt(e.route_name.as_deref()),
        O::Hostname => Value::Str(hostname().into()),
        O::GrpcStatus => e
            .grpc_status
            .map_or(Value::Absent, |g| Value::Num(u64::from(g))),
    }
}

fn hostname() -> &'static str {
    static HOSTNAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOSTNAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default()
    })
}

/// Envoy's default `%START_TIME%`: UTC, milliseconds, e.g. `2026-11-30T15:04:05.123Z`.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Year, month, day of a count of days since 1970-01-01 (proleptic Gregorian calendar), by eras
/// of 400 years (146,097 days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::ResponseFlag;

    fn slots(format: &LogFormat, values: &[(&str, &str)], response: bool) -> Vec<Option<String>> {
        let names = if response {
            format.response_headers()
        } else {
            format.request_headers()
        };
        names
            .iter()
            .map(|n| {
                values
                    .iter()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| v.to_string())
            })
            .collect()
    }

    fn entry(format: &LogFormat) -> Entry {
        Entry {
            // 2026-11-30T15:04:05.123Z
            start_time: UNIX_EPOCH + Duration::from_millis(1_796_051_045_123),
            protocol: Some("HTTP/1.1"),
            code: 200,
            flags: ResponseFlags::default(),
            details: Some("via_upstream"),
            bytes_received: 5,
            bytes_sent: 120,
            duration: Duration::from_millis(7),
            request: slots(
                format,
                &[
                    (":method", "GET"),
                    (":path", "/reviews/1?x=1"),
                    (":authority", "reviews:9080"),
                    ("user-agent", "curl/8.5.0"),
                    ("x-request-id", "7d3c9b6e-0000-4000-8000-000000000001"),
                ],
                false,
            ),
            response: slots(format, &[("x-envoy-upstream-service-time", "3")], true),
            upstream_host: Some("10.244.160.11:9080".parse().unwrap_or(unspecified())),
            upstream_cluster: Some("outbound|9080|v1|reviews.default.svc.cluster.local".into()),
            downstream_local: "10.96.0.20:9080".parse().unwrap_or(unspecified()),
            downstream_remote: "10.244.160.2:41234".parse().unwrap_or(unspecified()),
            requested_server_name: None,
            route_name: None,
            grpc_status: None,
        }
    }

    fn unspecified() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 0))
    }

    #[test]
    fn istio_text_line_for_a_request() {
        let f = LogFormat::istio_default(Encoding::Text);
        let mut line = String::new();
        f.write(&entry(&f), &mut line);
        assert_eq!(
            line,
            "[2026-11-30T15:04:05.123Z] \"GET /reviews/1?x=1 HTTP/1.1\" 200 - via_upstream - \"-\" 5 120 7 3 \
             \"-\" \"curl/8.5.0\" \"7d3c9b6e-0000-4000-8000-000000000001\" \"reviews:9080\" \
             \"10.244.160.11:9080\" outbound|9080|v1|reviews.default.svc.cluster.local - \
             10.96.0.20:9080 10.244.160.2:41234 - -\n"
        );
    }

    #[test]
    fn original_path_wins_and_flags_and_local_replies_print_like_envoy() {
        let f = LogFormat::istio_default(Encoding::Text);
        let mut e = entry(&f);
        e.request = slots(
            &f,
            &[
                (":method", "POST"),
                (":path", "/new"),
                ("x-envoy-original-path", "/old"),
            ],
            false,
        );
        e.response = slots(&f, &[], true);
        e.code = 503;
        e.flags.set(ResponseFlag::UpstreamConnectionFailure);
        e.flags.set(ResponseFlag::UpstreamRetryLimitExceeded);
        e.details = Some("upstream_reset_before_response_started{connection_failure}");
        e.upstream_host = None;
        e.route_name = Some("default".into());
        let mut line = String::new();
        f.write(&e, &mut line);
        assert!(
            line.starts_with(
                "[2026-11-30T15:04:05.123Z] \"POST /old HTTP/1.1\" 503 UF,URX \
                 upstream_reset_before_response_started{connection_failure} - \"-\" 5 120 7 - \"-\" \"-\" \"-\" \"-\" \"-\" "
            ),
            "{line}"
        );
        assert!(line.ends_with(" 10.244.160.2:41234 - default\n"), "{line}");
    }

    #[test]
    fn tcp_connections_use_dashes_for_http_fields() {
        let f = LogFormat::istio_default(Encoding::Text);
        let mut e = entry(&f);
        e.protocol = None;
        e.code = 0;
        e.details = None;
        e.request = vec![None; f.request_headers().len()];
        e.response = vec![None; f.response_headers().len()];
        e.flags.set(ResponseFlag::NoHealthyUpstream);
        e.upstream_host = None;
        let mut line = String::new();
        f.write(&e, &mut line);
        assert!(
            line.starts_with("[2026-11-30T15:04:05.123Z] \"- - -\" 0 UH - - \"-\" 5 120 7 - "),
            "{line}"
        );
    }

    #[test]
    fn istio_json_line_has_istios_keys_typed_values_and_nulls() -> Result<(), String> {
        let f = LogFormat::istio_default(Encoding::Json);
        let mut line = String::new();
        f.write(&entry(&f), &mut line);
        assert!(line.ends_with("}\n"));
        let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| e.to_string())?;
        let obj = v.as_object().ok_or("not an object")?;
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        let want: Vec<&str> = ISTIO_JSON_FORMAT.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, want);
        assert_eq!(v["response_code"], 200);
        assert_eq!(v["bytes_sent"], 120);
        assert_eq!(v["duration"], 7);
        assert_eq!(v["response_flags"], "-");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/reviews/1?x=1");
        assert_eq!(v["upstream_service_time"], "3");
        assert_eq!(v["x_forwarded_for"], serde_json::Value::Null);
        assert_eq!(v["start_time"], "2026-11-30T15:04:05.123Z");
        assert_eq!(v["downstream_remote_address"], "10.244.160.2:41234");
        Ok(())
    }

    #[test]
    fn custom_formats_parse_or_are_refused() {
        let f = LogFormat::parse(Encoding::Text, "%REQ(USER-AGENT):4% %RESPONSE_CODE%");
        let Ok(f) = f else { panic!("{f:?}") };
        let mut line = String::new();
        f.write(&entry(&f), &mut line);
        assert_eq!(line, "curl 200\n");

        let bad = LogFormat::parse(Encoding::Text, "%DYNAMIC_METADATA(istio)%");
        assert!(bad.is_err_and(|e| e
            .0
            .contains("unsupported command operator %DYNAMIC_METADATA(istio)%")));
        assert!(LogFormat::parse(Encoding::Text, "%START_TIME").is_err());
        assert!(LogFormat::parse(Encoding::Json, "[1]").is_err());

        let j = LogFormat::parse(
            Encoding::Json,
            r#"{"code":"%RESPONSE_CODE%","who":"pod %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}"#,
        );
        let Ok(j) = j else { panic!("{j:?}") };
        let mut line = String::new();
        j.write(&entry(&j), &mut line);
        assert_eq!(line, "{\"code\":200,\"who\":\"pod 10.244.160.2\"}\n");
    }

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day of a century leap year) 12:00:00.5
        let t = UNIX_EPOCH + Duration::from_millis(951_825_600_500);
        assert_eq!(rfc3339_millis(t), "2000-02-29T12:00:00.500Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_735_689_599);
        assert_eq!(rfc3339_millis(t), "2024-12-31T23:59:59.000Z");
    }
}
