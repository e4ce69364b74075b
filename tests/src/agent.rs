//! The `pod-agent` helper: its JSON report types (shared by the binary and the tests) and wrappers that
//! run it inside a [`Pod`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::podnet::Pod;
use crate::process::Proc;

/// How long a server gets to bind and print its `listening` line.
const SERVER_READY: Duration = Duration::from_secs(10);
/// Slack on top of a client's own global timeout before the test kills it.
const CLIENT_SLACK: Duration = Duration::from_secs(5);

/// The first line a server prints once it is accepting: `{"listening":"0.0.0.0:9080"}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listening {
    /// The bound address.
    pub listening: String,
}

/// What `http-server` answers to every request (status 200, `content-type: application/json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EchoBody {
    /// `--pod` of the server.
    pub pod: String,
    /// `--version` of the server.
    pub version: String,
    /// The TCP peer of the request's connection, `ip:port`.
    pub peer: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub protocol: String,
    /// Request method.
    pub method: String,
    /// Request path (with query).
    pub path: String,
    /// Request headers, lower-case names; repeated headers joined with `, `.
    pub headers: BTreeMap<String, String>,
}

/// Result of `http-get`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HttpGetReport {
    /// The URL requested.
    pub url: String,
    /// The TCP address connected to.
    pub connect_to: String,
    /// Requests asked for (`--count`).
    pub requested: u64,
    /// Requests that got a response (any status).
    pub responses: u64,
    /// Requests that failed without a response.
    pub errors: u64,
    /// Responses by status code.
    pub by_status: BTreeMap<String, u64>,
    /// Responses by the body's `version` (`<none>` if the body is not an [`EchoBody`]).
    pub by_version: BTreeMap<String, u64>,
    /// Responses by the body's `pod`.
    pub by_pod: BTreeMap<String, u64>,
    /// Responses by the protocol the backend saw.
    pub by_protocol: BTreeMap<String, u64>,
    /// Responses by the peer IP the backend saw (the proxy's address when proxied).
    pub by_peer_ip: BTreeMap<String, u64>,
    /// TCP connections opened.
    pub connections: u64,
    /// Local (`getsockname`) addresses of the first connections, as the proxy sees the client.
    pub local_addrs: Vec<String>,
    /// The first error, if any.
    pub first_error: Option<String>,
    /// The last response body parsed as an [`EchoBody`], if it was one.
    pub last_body: Option<EchoBody>,
    /// Wall time.
    pub elapsed_ms: u64,
    /// The global timeout cut the run short.
    pub timed_out: bool,
    /// Requests abandoned by the client's own per-request timeout (`--request-timeout-ms`), the way an
    /// application gives up on a slow call; the connection is closed then.
    #[serde(default)]
    pub client_timeouts: u64,
    /// Echo responses that carried another request's tag (`HttpGet::tag`): a response delivered to
    /// the wrong request.
    #[serde(default)]
    pub tag_mismatches: u64,
    /// Status of the last response (0 if none).
    #[serde(default)]
    pub last_status: u16,
    /// Headers of the last response: lower-case name -> every value, in order.
    #[serde(default)]
    pub last_headers: BTreeMap<String, Vec<String>>,
    /// Body of the last response (lossy UTF-8, at most 4 KiB).
    #[serde(default)]
    pub last_text: Option<String>,
    /// Responses whose body is not an [`EchoBody`], by `"<status> <body>"` (body at most 200 bytes;
    /// at most 32 keys, the rest under `"<other>"`): local replies such as `"418 fault filter abort"`.
    #[serde(default)]
    pub other_bodies: BTreeMap<String, u64>,
    /// How many responses carried each header name (lower-case).
    #[serde(default)]
    pub header_presence: BTreeMap<String, u64>,
    /// Time from sending each request to its whole response (ms), in completion order; the first
    /// 2,000 only.
    #[serde(default)]
    pub latencies_ms: Vec<u64>,
    /// The same latencies in microseconds (for targets finer than a millisecond).
    #[serde(default)]
    pub latencies_us: Vec<u64>,
    /// Latencies (µs) by response status, the first 2,000 of each status.
    #[serde(default)]
    pub latencies_us_by_status: BTreeMap<String, Vec<u64>>,
    /// Responses (any status) that took at least `--slow-ms` (0 without it); counts every
    /// response, unlike the latency lists.
    #[serde(default)]
    pub slow: u64,
}

impl HttpGetReport {
    /// Responses with status `code`.
    pub fn status(&self, code: u16) -> u64 {
        self.by_status.get(&code.to_string()).copied().unwrap_or(0)
    }

    /// Fraction (0..=1) of responses whose body said `version`.
    pub fn version_share(&self, version: &str) -> f64 {
        if self.responses == 0 {
            return 0.0;
        }
        self.by_version.get(version).copied().unwrap_or(0) as f64 / self.responses as f64
    }

    /// The values of response header `name` (lower-case) on the last response.
    pub fn last_header(&self, name: &str) -> Option<&[String]> {
        self.last_headers.get(name).map(Vec::as_slice)
    }

    /// The single value of response header `name` on the last response (`None` if absent or repeated).
    pub fn last_header_value(&self, name: &str) -> Option<&str> {
        match self.last_headers.get(name).map(Vec::as_slice) {
            Some([v]) => Some(v.as_str()),
            _ => None,
        }
    }

    /// Responses with `status` and exactly `body` (a non-echo body, see `other_bodies`).
    pub fn with_body(&self, status: u16, body: &str) -> u64 {
        self.other_bodies
            .get(&format!("{status} {body}"))
            .copied()
            .unwrap_or(0)
    }

    /// The slowest response, ms (0 if none).
    pub fn max_latency_ms(&self) -> u64 {
        self.latencies_ms.iter().copied().max().unwrap_or(0)
    }

    /// The fastest response, ms (0 if none).
    pub fn min_latency_ms(&self) -> u64 {
        self.latencies_ms.iter().copied().min().unwrap_or(0)
    }
}

/// Result of `tcp-echo-client`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TcpEchoReport {
    /// Address connected to.
    pub addr: String,
    /// Local address of the connection.
    pub local_addr: Option<String>,
    /// Bytes written before the half-close.
    pub sent: u64,
    /// Bytes read until EOF.
    pub received: u64,
    /// Received bytes equal sent bytes.
    pub matched: bool,
    /// The server's EOF arrived after our half-close (it finished writing, then shut down).
    pub got_eof: bool,
    /// What failed, if anything.
    pub error: Option<String>,
    /// Wall time.
    pub elapsed_ms: u64,
}

/// How a `tcp-connect` attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectOutcome {
    /// connect() got ECONNREFUSED.
    Refused,
    /// connect() got ENETUNREACH / EHOSTUNREACH (e.g. no route: the pod has no default route).
    Unreachable,
    /// connect() did not finish in time.
    Timeout,
    /// Connected; the first read saw a reset.
    Reset,
    /// Connected; the first read saw EOF with no data.
    Eof,
    /// Connected; the server sent data first.
    Data,
    /// Connected; nothing arrived within the read timeout.
    ReadTimeout,
    /// Any other error.
    Error,
}

/// Result of `tcp-connect`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TcpConnectReport {
    /// Address connected to.
    pub addr: String,
    /// How it ended.
    pub outcome: ConnectOutcome,
    /// connect() succeeded.
    pub connected: bool,
    /// Local address when connected.
    pub local_addr: Option<String>,
    /// What the server said (lossy UTF-8, at most 4 KiB).
    pub data: String,
    /// The OS error text, if any.
    pub error: Option<String>,
    /// Time from connect() to the outcome.
    pub elapsed_ms: u64,
}

/// The one JSON line `tls-server` writes on every connection, then closes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TlsServerLine {
    /// `--pod` of the server.
    pub pod: String,
    /// The server name the ClientHello carried, as the server saw it (TLS connections).
    pub sni: Option<String>,
    /// Set instead of a handshake when the connection did not start with a TLS record: the first
    /// line the client sent (lossy UTF-8, at most 1 KiB).
    pub plain: Option<String>,
}

/// Result of `tls-client`: `count` new connections, each a TLS handshake (or, with `--plain`, a line
/// of text) followed by reading the server's [`TlsServerLine`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TlsClientReport {
    /// Address connected to.
    pub addr: String,
    /// The SNI sent (`None`: no `server_name` extension).
    pub sni: Option<String>,
    /// Connections attempted.
    pub connections: u64,
    /// Connections that got a server line.
    pub answered: u64,
    /// Connections that failed (connect, handshake, no line).
    pub errors: u64,
    /// Answers by the server's `pod`.
    pub by_pod: BTreeMap<String, u64>,
    /// Answers by the SNI the server saw (`<none>` when it saw none, `<plain>` for non-TLS answers).
    pub by_server_sni: BTreeMap<String, u64>,
    /// Handshakes by negotiated protocol version (`TLSv1_3`, ...).
    pub by_tls_version: BTreeMap<String, u64>,
    /// Writes the first flight (ClientHello) took on the first connection (more than one with
    /// `--split`).
    pub first_flight_writes: u64,
    /// Local addresses of the first connections.
    pub local_addrs: Vec<String>,
    /// The first error, if any.
    pub first_error: Option<String>,
    /// The last server line.
    pub last_line: Option<TlsServerLine>,
    /// Wall time.
    pub elapsed_ms: u64,
    /// The global timeout cut the run short.
    pub timed_out: bool,
}

/// Arguments of a `tls-client` run; build with [`TlsClient::new`] and the chained setters.
#[derive(Debug, Clone)]
pub struct TlsClient {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Server name to send; `None` sends none (the client then names the server by IP).
    pub sni: Option<String>,
    /// New connections, one after the other.
    pub count: u32,
    /// Write the ClientHello in pieces of this many bytes, pausing between them.
    pub split: Option<usize>,
    /// Send this line in plain text instead of a TLS handshake.
    pub plain: Option<String>,
    /// Global timeout of the whole run.
    pub timeout: Duration,
}

impl TlsClient {
    /// One TLS connection to `addr` with server name `sni`, 60 s timeout.
    pub fn new(addr: SocketAddr, sni: Option<&str>) -> TlsClient {
        TlsClient {
            addr,
            sni: sni.map(str::to_string),
            count: 1,
            split: None,
            plain: None,
            timeout: Duration::from_secs(60),
        }
    }

    /// Number of connections.
    pub fn count(mut self, n: u32) -> Self {
        self.count = n;
        self
    }

    /// Split the ClientHello into writes of `bytes` bytes.
    pub fn split(mut self, bytes: usize) -> Self {
        self.split = Some(bytes);
        self
    }

    /// Send `line` in plain text instead of TLS.
    pub fn plain(mut self, line: &str) -> Self {
        self.plain = Some(line.to_string());
        self
    }

    /// The `pod-agent` command line.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = vec![
            "tls-client".to_string(),
            "--addr".to_string(),
            self.addr.to_string(),
            "--count".to_string(),
            self.count.to_string(),
            "--timeout-secs".to_string(),
            self.timeout.as_secs().max(1).to_string(),
        ];
        if let Some(sni) = &self.sni {
            a.extend(["--sni".to_string(), sni.clone()]);
        }
        if let Some(n) = self.split {
            a.extend(["--split".to_string(), n.to_string()]);
        }
        if let Some(p) = &self.plain {
            a.extend(["--plain".to_string(), p.clone()]);
        }
        a
    }
}

/// Connection reuse for `http-get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnMode {
    /// All requests on one connection (reconnect only if the server closes it).
    KeepAlive,
    /// A new connection per request.
    NewConn,
}

/// Arguments of an `http-get` run; build with [`HttpGet::new`] and the chained setters.
#[derive(Debug, Clone)]
pub struct HttpGet {
    /// URL whose authority becomes `Host` / `:authority`, e.g. `http://reviews:9080/`.
    pub url: String,
    /// Where to connect (the "DNS answer"); default: the URL's host, which must then be an IP.
    pub connect_to: Option<SocketAddr>,
    /// Number of requests (sequential).
    pub count: u32,
    /// Connection reuse.
    pub mode: ConnMode,
    /// HTTP/2 prior knowledge (h2c) instead of HTTP/1.1.
    pub http2: bool,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Global timeout of the whole run.
    pub timeout: Duration,
    /// Request method (default `GET`).
    pub method: String,
    /// Request body: literal text.
    pub body: Option<String>,
    /// Request body: `n` bytes of [`crate::request_log::body_pattern`] (overrides `body`).
    pub body_size: Option<usize>,
    /// Parallel workers, each with its own connection(s) (default 1: sequential).
    pub concurrency: u32,
    /// The client's own per-request timeout: the request is abandoned and its connection closed.
    pub request_timeout: Option<Duration>,
    /// Tag requests `x-keel-test-tag: <tag>-<n>` and count mismatched echoes.
    pub tag: Option<String>,
    /// Count responses slower than this ([`HttpGetReport::slow`]).
    pub slow: Option<Duration>,
}

impl HttpGet {
    /// One keep-alive HTTP/1.1 request to `url`, 30 s timeout.
    pub fn new(url: impl Into<String>) -> HttpGet {
        HttpGet {
            url: url.into(),
            connect_to: None,
            count: 1,
            mode: ConnMode::KeepAlive,
            http2: false,
            headers: Vec::new(),
            timeout: Duration::from_secs(30),
            method: "GET".to_string(),
            body: None,
            body_size: None,
            concurrency: 1,
            request_timeout: None,
            tag: None,
            slow: None,
        }
    }

    /// Count the responses that take at least `t` ([`HttpGetReport::slow`]).
    pub fn slow(mut self, t: Duration) -> Self {
        self.slow = Some(t);
        self
    }

    /// Tag every request with its own `x-keel-test-tag: <tag>-<n>`; the report counts echo
    /// responses that came back with another request's tag ([`HttpGetReport::tag_mismatches`]).
    pub fn tag(mut self, tag: &str) -> Self {
        self.tag = Some(tag.to_string());
        self
    }

    /// Request method, e.g. `POST` or `OPTIONS`.
    pub fn method(mut self, m: &str) -> Self {
        self.method = m.to_string();
        self
    }

    /// A literal request body.
    pub fn body(mut self, text: &str) -> Self {
        self.body = Some(text.to_string());
        self
    }

    /// A request body of `n` pattern bytes (hash: `body_hash(&body_pattern(n))`).
    pub fn body_size(mut self, n: usize) -> Self {
        self.body_size = Some(n);
        self
    }

    /// `n` parallel workers.
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n;
        self
    }

    /// Abandon a request after `t` (the client's own timeout).
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = Some(t);
        self
    }

    /// Connect to `addr` instead of resolving the URL's host.
    pub fn connect_to(mut self, addr: SocketAddr) -> Self {
        self.connect_to = Some(addr);
        self
    }

    /// Number of requests.
    pub fn count(mut self, n: u32) -> Self {
        self.count = n;
        self
    }

    /// New connection per request.
    pub fn new_conn(mut self) -> Self {
        self.mode = ConnMode::NewConn;
        self
    }

    /// HTTP/2 prior knowledge.
    pub fn http2(mut self) -> Self {
        self.http2 = true;
        self
    }

    /// Adds a request header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Global timeout.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// The `pod-agent` command line.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = vec![
            "http-get".to_string(),
            "--url".to_string(),
            self.url.clone(),
            "--count".to_string(),
            self.count.to_string(),
            "--timeout-secs".to_string(),
            self.timeout.as_secs().max(1).to_string(),
        ];
        if let Some(c) = self.connect_to {
            a.extend(["--connect-to".to_string(), c.to_string()]);
        }
        a.push(
            match self.mode {
                ConnMode::KeepAlive => "--keepalive",
                ConnMode::NewConn => "--new-conn",
            }
            .to_string(),
        );
        if self.http2 {
            a.push("--http2".to_string());
        }
        for (k, v) in &self.headers {
            a.extend(["--header".to_string(), format!("{k}:{v}")]);
        }
        if self.method != "GET" {
            a.extend(["--method".to_string(), self.method.clone()]);
        }
        if let Some(b) = &self.body {
            a.extend(["--body".to_string(), b.clone()]);
        }
        if let Some(n) = self.body_size {
            a.extend(["--body-size".to_string(), n.to_string()]);
        }
        if self.concurrency > 1 {
            a.extend(["--concurrency".to_string(), self.concurrency.to_string()]);
        }
        if let Some(t) = self.request_timeout {
            a.extend([
                "--request-timeout-ms".to_string(),
                t.as_millis().max(1).to_string(),
            ]);
        }
        if let Some(tag) = &self.tag {
            a.extend(["--tag".to_string(), tag.clone()]);
        }
        if let Some(t) = self.slow {
            a.extend(["--slow-ms".to_string(), t.as_millis().to_string()]);
        }
        a
    }
}

/// Options of `http-server` beyond its address and identity.
#[derive(Debug, Clone, Default)]
pub struct HttpServerOpts {
    /// `--log`: append one [`crate::RequestRecord`] line per request.
    pub log: Option<PathBuf>,
    /// `--cancel-log`: append one [`crate::RequestRecord`] line (`kind: "cancelled"`, `ts_ms` =
    /// when) per request whose client closed the connection or reset the stream before the answer.
    pub cancel_log: Option<PathBuf>,
    /// `--fail-status`: answer every request with this status (a path's `/status/<code>` still wins).
    pub fail_status: Option<u16>,
    /// `--delay-ms`: wait this long before answering every request.
    pub delay_ms: Option<u64>,
    /// `--call URL --call-connect ADDR`: per request, GET `URL` at `ADDR` (through the mesh) and answer
    /// with its status and `"<pod> => <body>"` (`"<pod> => Error: <status> - <body>"` if not 2xx).
    pub call: Option<(String, SocketAddr)>,
    /// `--tls-cert/--tls-key [--tls-client-ca]`: serve HTTPS with these PEM files (see
    /// [`crate::pki::TestPki`]); responses then carry `x-sni` and `x-client-cert: present|absent`.
    pub tls: Option<ServerTls>,
}

/// PEM files of an HTTPS `http-server`.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// Require client certificates signed by a CA in this file.
    pub client_ca: Option<PathBuf>,
}

impl HttpServerOpts {
    /// Logging to `log`, nothing else.
    pub fn logged(log: &Path) -> HttpServerOpts {
        HttpServerOpts {
            log: Some(log.to_path_buf()),
            ..HttpServerOpts::default()
        }
    }

    fn to_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(l) = &self.log {
            a.extend(["--log".to_string(), l.display().to_string()]);
        }
        if let Some(l) = &self.cancel_log {
            a.extend(["--cancel-log".to_string(), l.display().to_string()]);
        }
        if let Some(s) = self.fail_status {
            a.extend(["--fail-status".to_string(), s.to_string()]);
        }
        if let Some(d) = self.delay_ms {
            a.extend(["--delay-ms".to_string(), d.to_string()]);
        }
        if let Some((url, addr)) = &self.call {
            a.extend([
                "--call".to_string(),
                url.clone(),
                "--call-connect".to_string(),
                addr.to_string(),
            ]);
        }
        if let Some(tls) = &self.tls {
            a.extend([
                "--tls-cert".to_string(),
                tls.cert.display().to_string(),
                "--tls-key".to_string(),
                tls.key.display().to_string(),
            ]);
            if let Some(ca) = &tls.client_ca {
                a.extend(["--tls-client-ca".to_string(), ca.display().to_string()]);
            }
        }
        a
    }
}

/// Options of `grpc-server`; every answer can also be chosen per call with request metadata
/// `x-test-grpc-status`, `x-test-grpc-message`, `x-test-delay-ms`, `x-test-trailers-only: 1`.
#[derive(Debug, Clone, Default)]
pub struct GrpcServerOpts {
    /// `--log`.
    pub log: Option<PathBuf>,
    /// `--grpc-status` (default 0, OK).
    pub grpc_status: u32,
    /// `--grpc-message`.
    pub grpc_message: Option<String>,
    /// `--delay-ms` before answering.
    pub delay_ms: Option<u64>,
    /// `--trailers-only`: answer with the status in the response headers and no body (how gRPC
    /// servers and proxies send errors).
    pub trailers_only: bool,
}

impl GrpcServerOpts {
    fn to_args(&self) -> Vec<String> {
        let mut a = vec!["--grpc-status".to_string(), self.grpc_status.to_string()];
        if let Some(l) = &self.log {
            a.extend(["--log".to_string(), l.display().to_string()]);
        }
        if let Some(m) = &self.grpc_message {
            a.extend(["--grpc-message".to_string(), m.clone()]);
        }
        if let Some(d) = self.delay_ms {
            a.extend(["--delay-ms".to_string(), d.to_string()]);
        }
        if self.trailers_only {
            a.push("--trailers-only".to_string());
        }
        a
    }
}

/// A `grpc-client` run: `count` sequential unary calls on one h2c connection.
#[derive(Debug, Clone)]
pub struct GrpcCall {
    /// `http://<authority>/<service>/<method>`.
    pub url: String,
    /// Where to connect.
    pub connect_to: SocketAddr,
    /// The request message (raw bytes of this text, length-prefixed).
    pub message: String,
    /// Extra request metadata.
    pub headers: Vec<(String, String)>,
    /// `grpc-timeout` header value, e.g. `1S`.
    pub grpc_timeout: Option<String>,
    /// Calls.
    pub count: u32,
    /// Global timeout of the run.
    pub timeout: Duration,
}

impl GrpcCall {
    /// One call of `url` at `connect_to`, message `hello`, 30 s timeout.
    pub fn new(url: &str, connect_to: SocketAddr) -> GrpcCall {
        GrpcCall {
            url: url.to_string(),
            connect_to,
            message: "hello".to_string(),
            headers: Vec::new(),
            grpc_timeout: None,
            count: 1,
            timeout: Duration::from_secs(30),
        }
    }

    /// Adds request metadata.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sends `grpc-timeout: <v>`.
    pub fn grpc_timeout(mut self, v: &str) -> Self {
        self.grpc_timeout = Some(v.to_string());
        self
    }

    /// Number of calls.
    pub fn count(mut self, n: u32) -> Self {
        self.count = n;
        self
    }

    fn to_args(&self) -> Vec<String> {
        let mut a = vec![
            "grpc-client".to_string(),
            "--url".to_string(),
            self.url.clone(),
            "--connect-to".to_string(),
            self.connect_to.to_string(),
            "--message".to_string(),
            self.message.clone(),
            "--count".to_string(),
            self.count.to_string(),
            "--timeout-secs".to_string(),
            self.timeout.as_secs().max(1).to_string(),
        ];
        for (k, v) in &self.headers {
            a.extend(["--header".to_string(), format!("{k}:{v}")]);
        }
        if let Some(t) = &self.grpc_timeout {
            a.extend(["--grpc-timeout".to_string(), t.clone()]);
        }
        a
    }
}

/// One unary call as `grpc-client` saw it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GrpcCallReport {
    /// HTTP status (0 if the call failed before a response).
    pub http_status: u16,
    /// Response headers (lower-case, repeated joined with `, `).
    pub headers: BTreeMap<String, String>,
    /// `grpc-status` from the trailers, else from the headers.
    pub grpc_status: Option<u32>,
    /// `grpc-message` from wherever `grpc-status` came from.
    pub grpc_message: Option<String>,
    /// `"trailers"`, `"headers"` (trailers-only response) or `"none"`.
    pub status_from: String,
    /// A trailers frame arrived after the response headers.
    pub trailers_received: bool,
    /// The trailers (lower-case names).
    pub trailers: BTreeMap<String, String>,
    /// Length-prefixed messages in the response body.
    pub messages: u32,
    /// The first message (lossy UTF-8, at most 4 KiB): `http`-style [`EchoBody`] JSON from
    /// `grpc-server`.
    pub first_message: Option<String>,
    /// Time from sending to the end of the response, ms.
    pub elapsed_ms: u64,
    /// What failed, if the call did not complete.
    pub error: Option<String>,
}

/// What `grpc-client` prints.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GrpcClientReport {
    /// The URL called.
    pub url: String,
    /// Every call in order.
    pub calls: Vec<GrpcCallReport>,
    /// The global timeout cut the run short.
    pub timed_out: bool,
    /// A failure outside the calls (connect, handshake).
    pub error: Option<String>,
}

/// A `ws-client` run: one WebSocket connection, text messages echoed one by one, optionally a binary
/// message, then a close handshake.
#[derive(Debug, Clone)]
pub struct WsClient {
    /// `ws://<authority>/<path>`.
    pub url: String,
    /// Where to connect.
    pub connect_to: SocketAddr,
    /// Text messages, sent one at a time (each waits for its echo).
    pub messages: Vec<String>,
    /// Size of a binary message sent after the texts (0: none).
    pub binary_size: usize,
    /// Extra handshake request headers.
    pub headers: Vec<(String, String)>,
}

impl WsClient {
    /// A connection to `url` at `connect_to` sending `messages`.
    pub fn new(url: &str, connect_to: SocketAddr, messages: &[&str]) -> WsClient {
        WsClient {
            url: url.to_string(),
            connect_to,
            messages: messages.iter().map(|m| (*m).to_string()).collect(),
            binary_size: 0,
            headers: Vec::new(),
        }
    }

    /// Also sends a binary message of `n` pattern bytes.
    pub fn binary(mut self, n: usize) -> Self {
        self.binary_size = n;
        self
    }

    fn to_args(&self) -> Vec<String> {
        let mut a = vec![
            "ws-client".to_string(),
            "--url".to_string(),
            self.url.clone(),
            "--connect-to".to_string(),
            self.connect_to.to_string(),
            "--binary-size".to_string(),
            self.binary_size.to_string(),
        ];
        for m in &self.messages {
            a.extend(["--message".to_string(), m.clone()]);
        }
        for (k, v) in &self.headers {
            a.extend(["--header".to_string(), format!("{k}:{v}")]);
        }
        a
    }
}

/// What `ws-client` prints.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WsReport {
    /// The URL.
    pub url: String,
    /// Status of the handshake response (101 when upgraded; 0 if none arrived).
    pub status: u16,
    /// Handshake response headers (lower-case, repeated joined with `, `).
    pub headers: BTreeMap<String, String>,
    /// Text messages sent.
    pub sent: Vec<String>,
    /// Text messages received back, in order.
    pub received: Vec<String>,
    /// The binary message came back byte for byte (`None` if none was sent).
    pub binary_echo_ok: Option<bool>,
    /// The close handshake completed.
    pub closed_cleanly: bool,
    /// What failed, if anything.
    pub error: Option<String>,
    /// Wall time, ms.
    pub elapsed_ms: u64,
}

/// Runs `pod-agent` subcommands inside pods.
#[derive(Debug, Clone)]
pub struct Agent {
    bin: PathBuf,
}

impl Agent {
    /// Uses the binary at `bin`.
    pub fn new(bin: impl Into<PathBuf>) -> Agent {
        Agent { bin: bin.into() }
    }

    /// `POD_AGENT_BIN`, else `default`, else `target/release/pod-agent`; fails if missing.
    pub fn from_env(default: Option<&str>) -> Result<Agent> {
        Ok(Agent::new(crate::host::pod_agent_bin(default)?))
    }

    /// The binary's path.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Starts `http-server --listen 0.0.0.0:<port>` in `pod` and waits until it listens.
    pub fn http_server(&self, pod: &Pod, port: u16, version: &str) -> Result<Proc> {
        self.http_server_on(pod, &format!("0.0.0.0:{port}"), version)
    }

    /// Starts `http-server --listen <listen>` in `pod` and waits until it listens.
    pub fn http_server_on(&self, pod: &Pod, listen: &str, version: &str) -> Result<Proc> {
        let args = [
            "http-server",
            "--listen",
            listen,
            "--pod",
            &pod.name,
            "--version",
            version,
        ];
        self.server(pod, &args, "http-server")
    }

    /// Starts `tcp-echo --listen <listen>` in `pod` (e.g. `[::]:<port>` for IPv6 and v4-mapped
    /// IPv4) and waits until it listens.
    pub fn tcp_echo_server_on(&self, pod: &Pod, listen: &str) -> Result<Proc> {
        self.server(pod, &["tcp-echo", "--listen", listen], "tcp-echo")
    }

    /// Starts `tcp-echo --listen 0.0.0.0:<port>` in `pod` and waits until it listens.
    pub fn tcp_echo_server(&self, pod: &Pod, port: u16) -> Result<Proc> {
        let listen = format!("0.0.0.0:{port}");
        self.server(pod, &["tcp-echo", "--listen", &listen], "tcp-echo")
    }

    /// Starts `tcp-sink --listen 0.0.0.0:<port>` (accepts, never reads) in `pod`.
    pub fn tcp_sink_server(&self, pod: &Pod, port: u16) -> Result<Proc> {
        let listen = format!("0.0.0.0:{port}");
        self.server(pod, &["tcp-sink", "--listen", &listen], "tcp-sink")
    }

    /// Starts `http-server --listen 0.0.0.0:<port>` with `opts` in `pod`.
    pub fn http_server_with(
        &self,
        pod: &Pod,
        port: u16,
        version: &str,
        opts: &HttpServerOpts,
    ) -> Result<Proc> {
        self.http_server_with_on(pod, &format!("0.0.0.0:{port}"), version, opts)
    }

    /// Starts `http-server --listen <listen>` with `opts` in `pod` (e.g. `[::]:<port>`: IPv6, and
    /// IPv4 as v4-mapped peers).
    pub fn http_server_with_on(
        &self,
        pod: &Pod,
        listen: &str,
        version: &str,
        opts: &HttpServerOpts,
    ) -> Result<Proc> {
        let mut args: Vec<String> = [
            "http-server",
            "--listen",
            listen,
            "--pod",
            &pod.name,
            "--version",
            version,
        ]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
        args.extend(opts.to_args());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.server(pod, &args, "http-server")
    }

    /// Starts `grpc-server --listen 0.0.0.0:<port>` (h2c only) with `opts` in `pod`.
    pub fn grpc_server(
        &self,
        pod: &Pod,
        port: u16,
        version: &str,
        opts: &GrpcServerOpts,
    ) -> Result<Proc> {
        let listen = format!("0.0.0.0:{port}");
        let mut args: Vec<String> = [
            "grpc-server",
            "--listen",
            &listen,
            "--pod",
            &pod.name,
            "--version",
            version,
        ]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
        args.extend(opts.to_args());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.server(pod, &args, "grpc-server")
    }

    /// Starts `ws-server --listen 0.0.0.0:<port>` (WebSocket echo) in `pod`, logging upgrades to `log`.
    pub fn ws_server(&self, pod: &Pod, port: u16, log: Option<&Path>) -> Result<Proc> {
        let listen = format!("0.0.0.0:{port}");
        let log = log.map(|l| l.display().to_string());
        let mut args = vec!["ws-server", "--listen", &listen, "--pod", &pod.name];
        if let Some(l) = &log {
            args.extend(["--log", l]);
        }
        self.server(pod, &args, "ws-server")
    }

    /// Runs `grpc-client` in `pod`.
    pub fn grpc_call(&self, pod: &Pod, call: &GrpcCall) -> Result<GrpcClientReport> {
        let args = call.to_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.client(pod, &args, call.timeout + CLIENT_SLACK)
    }

    /// Runs `ws-client` in `pod` (30 s budget).
    pub fn ws_client(&self, pod: &Pod, req: &WsClient) -> Result<WsReport> {
        let args = req.to_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.client(pod, &args, Duration::from_secs(30) + CLIENT_SLACK)
    }

    /// Starts `tls-server --listen 0.0.0.0:<port>` in `pod` (self-signed certificate, answers every
    /// connection with a [`TlsServerLine`]) and waits until it listens.
    pub fn tls_server(&self, pod: &Pod, port: u16) -> Result<Proc> {
        let listen = format!("0.0.0.0:{port}");
        self.server(
            pod,
            &["tls-server", "--listen", &listen, "--pod", &pod.name],
            "tls-server",
        )
    }

    /// Runs `tls-client` in `pod` and returns its report (whatever the answers were).
    pub fn tls_client(&self, pod: &Pod, req: &TlsClient) -> Result<TlsClientReport> {
        let args = req.to_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.client(pod, &args, req.timeout + CLIENT_SLACK)
    }

    fn server(&self, pod: &Pod, args: &[&str], label: &str) -> Result<Proc> {
        let mut proc = pod.spawn(&self.bin, args, label)?;
        proc.wait_for_stdout_line(SERVER_READY, |l| {
            serde_json::from_str::<Listening>(l).is_ok()
        })
        .with_context(|| format!("starting {label} in pod {}", pod.full_name()))?;
        Ok(proc)
    }

    /// Runs `http-get` in `pod` and returns its report (whatever the responses were).
    pub fn http_get(&self, pod: &Pod, req: &HttpGet) -> Result<HttpGetReport> {
        let args = req.to_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.client(pod, &args, req.timeout + CLIENT_SLACK)
    }

    /// Runs `conn-load` in `pod`: `rate` new connections/s to `addr` for `duration`, one request
    /// with `Host: host` each.
    pub fn conn_load(
        &self,
        pod: &Pod,
        addr: SocketAddr,
        host: &str,
        rate: u32,
        duration: Duration,
    ) -> Result<ConnLoadReport> {
        let (addr, rate) = (addr.to_string(), rate.to_string());
        let ms = duration.as_millis().to_string();
        self.client(
            pod,
            &[
                "conn-load",
                "--addr",
                &addr,
                "--host",
                host,
                "--rate",
                &rate,
                "--duration-ms",
                &ms,
            ],
            duration + Duration::from_secs(10) + CLIENT_SLACK,
        )
    }

    /// Runs `tcp-hold` in `pod` against a line echo server at `addr` for `duration`.
    pub fn tcp_hold(
        &self,
        pod: &Pod,
        addr: SocketAddr,
        duration: Duration,
    ) -> Result<TcpHoldReport> {
        let (addr, ms) = (addr.to_string(), duration.as_millis().to_string());
        self.client(
            pod,
            &["tcp-hold", "--addr", &addr, "--duration-ms", &ms],
            duration + Duration::from_secs(10) + CLIENT_SLACK,
        )
    }

    /// Runs `http-load` in `pod`: `rate` requests/s over `connections` keep-alive connections for
    /// `duration`.
    pub fn http_load(
        &self,
        pod: &Pod,
        url: &str,
        connect_to: SocketAddr,
        rate: u32,
        connections: u32,
        duration: Duration,
    ) -> Result<HttpLoadReport> {
        let connect_to = connect_to.to_string();
        let (rate, connections) = (rate.to_string(), connections.to_string());
        let secs = duration.as_secs().max(1).to_string();
        self.client(
            pod,
            &[
                "http-load",
                "--url",
                url,
                "--connect-to",
                &connect_to,
                "--rate",
                &rate,
                "--connections",
                &connections,
                "--duration-secs",
                &secs,
            ],
            duration + Duration::from_secs(10) + CLIENT_SLACK,
        )
    }

    /// Runs `hold-connections` in `pod`: `count` connections to `addr` behaving as `mode` (`idle`,
    /// `slowloris`, `slow-post`; one byte per `interval`) for `hold`.
    pub fn hold_connections(
        &self,
        pod: &Pod,
        addr: SocketAddr,
        count: u32,
        mode: &str,
        interval: Duration,
        hold: Duration,
    ) -> Result<HoldReport> {
        let (addr, count) = (addr.to_string(), count.to_string());
        let interval = interval.as_millis().to_string();
        let hold_ms = hold.as_millis().to_string();
        self.client(
            pod,
            &[
                "hold-connections",
                "--addr",
                &addr,
                "--count",
                &count,
                "--mode",
                mode,
                "--interval-ms",
                &interval,
                "--hold-ms",
                &hold_ms,
            ],
            hold + Duration::from_secs(30) + CLIENT_SLACK,
        )
    }

    /// Runs `h2-flood` in `pod`: `kind` frames to `addr` until `max_frames`, GOAWAY or close.
    pub fn h2_flood(
        &self,
        pod: &Pod,
        addr: SocketAddr,
        kind: &str,
        max_frames: u64,
    ) -> Result<FloodReport> {
        let (addr, max) = (addr.to_string(), max_frames.to_string());
        self.client(
            pod,
            &[
                "h2-flood",
                "--addr",
                &addr,
                "--kind",
                kind,
                "--max-frames",
                &max,
            ],
            Duration::from_secs(40) + CLIENT_SLACK,
        )
    }

    /// Starts `raw-origin --listen 0.0.0.0:<port> --log <log>` in `pod`: an HTTP/1 origin that records
    /// the exact framing of every request it receives (`raw_http::RawOriginRecord` lines).
    pub fn raw_origin(&self, pod: &Pod, port: u16, log: &Path) -> Result<Proc> {
        let listen = format!("0.0.0.0:{port}");
        let log = log.display().to_string();
        self.server(
            pod,
            &["raw-origin", "--listen", &listen, "--log", &log],
            "raw-origin",
        )
    }

    /// Runs `raw-client` in `pod`: each vector of the JSON file `vectors` on its own connection to
    /// `addr`, `parallel` at a time.
    pub fn raw_client(
        &self,
        pod: &Pod,
        addr: SocketAddr,
        vectors: &Path,
        parallel: usize,
    ) -> Result<crate::raw_http::RawClientReport> {
        let addr = addr.to_string();
        let vectors = vectors.display().to_string();
        let parallel = parallel.to_string();
        self.client(
            pod,
            &[
                "raw-client",
                "--addr",
                &addr,
                "--vectors",
                &vectors,
                "--parallel",
                &parallel,
            ],
            Duration::from_secs(60) + CLIENT_SLACK,
        )
    }

    /// Runs `raw-h2-client` in `pod`: each HTTP/2 vector of the JSON file `vectors` as one stream
    /// on its own connection to `addr`.
    pub fn raw_h2_client(
        &self,
        pod: &Pod,
        addr: SocketAddr,
        vectors: &Path,
    ) -> Result<crate::raw_http::RawH2Report> {
        let addr = addr.to_string();
        let vectors = vectors.display().to_string();
        self.client(
            pod,
            &["raw-h2-client", "--addr", &addr, "--vectors", &vectors],
            Duration::from_secs(30) + CLIENT_SLACK,
        )
    }

    /// Runs `tcp-echo-client` in `pod`.
    pub fn tcp_echo(
        &self,
        pod: &Pod,
        addr: SocketAddr,
        payload_size: usize,
    ) -> Result<TcpEchoReport> {
        let addr = addr.to_string();
        let size = payload_size.to_string();
        self.client(
            pod,
            &["tcp-echo-client", "--addr", &addr, "--payload-size", &size],
            Duration::from_secs(30) + CLIENT_SLACK,
        )
    }

    /// Runs `tcp-connect` in `pod`, optionally sending `send` after connecting.
    pub fn tcp_connect(
        &self,
        pod: &Pod,
        addr: SocketAddr,
        send: Option<&str>,
    ) -> Result<TcpConnectReport> {
        let addr = addr.to_string();
        let mut args = vec!["tcp-connect", "--addr", &addr];
        if let Some(s) = send {
            args.extend(["--send", s]);
        }
        self.client(pod, &args, Duration::from_secs(10) + CLIENT_SLACK)
    }

    /// Runs `tcp-connect` in `pod` on an IPv6 socket with `IPV6_V6ONLY` = `v6only` (`tcp_connect`
    /// leaves it false: a dual-stack socket).
    pub fn tcp_connect_v6only(
        &self,
        pod: &Pod,
        addr: SocketAddr,
        send: Option<&str>,
        v6only: bool,
    ) -> Result<TcpConnectReport> {
        let addr = addr.to_string();
        let mut args = vec!["tcp-connect", "--addr", &addr];
        if v6only {
            args.push("--v6only");
        }
        if let Some(s) = send {
            args.extend(["--send", s]);
        }
        self.client(pod, &args, Duration::from_secs(10) + CLIENT_SLACK)
    }

    /// Runs `tcp-connect` in `pod` with `SO_MARK` = `mark` set on the socket before connecting.
    pub fn tcp_connect_marked(
        &self,
        pod: &Pod,
        addr: SocketAddr,
        send: Option<&str>,
        mark: u32,
    ) -> Result<TcpConnectReport> {
        let addr = addr.to_string();
        let mark = mark.to_string();
        let mut args = vec!["tcp-connect", "--addr", &addr, "--mark", &mark];
        if let Some(s) = send {
            args.extend(["--send", s]);
        }
        self.client(pod, &args, Duration::from_secs(10) + CLIENT_SLACK)
    }

    /// Starts `dns-server --listen <listen>` (UDP) in `pod` and waits until it is bound.
    pub fn dns_server(&self, pod: &Pod, listen: SocketAddr) -> Result<Proc> {
        let listen = listen.to_string();
        self.server(pod, &["dns-server", "--listen", &listen], "dns-server")
    }

    /// Runs `dns-load` in `pod`: `rate` queries/s to `addr` for `duration`, each on a fresh
    /// connected UDP socket.
    pub fn dns_load(
        &self,
        pod: &Pod,
        addr: SocketAddr,
        rate: u32,
        duration: Duration,
    ) -> Result<DnsLoadReport> {
        let (addr, rate) = (addr.to_string(), rate.to_string());
        let ms = duration.as_millis().to_string();
        self.client(
            pod,
            &[
                "dns-load",
                "--addr",
                &addr,
                "--rate",
                &rate,
                "--duration-ms",
                &ms,
            ],
            duration + Duration::from_secs(5) + CLIENT_SLACK,
        )
    }

    /// Runs `conn-churn` in `pod`: `count` short-lived connections at `rate`/s to the TCP echo
    /// service `addr` (and connected UDP sockets to `udp`), within `budget`.
    pub fn conn_churn(
        &self,
        pod: &Pod,
        addr: SocketAddr,
        udp: Option<SocketAddr>,
        rate: u32,
        count: u64,
        budget: Duration,
    ) -> Result<ChurnReport> {
        let (addr, rate, count) = (addr.to_string(), rate.to_string(), count.to_string());
        let udp = udp.map(|u| u.to_string());
        let mut args = vec![
            "conn-churn",
            "--addr",
            &addr,
            "--rate",
            &rate,
            "--count",
            &count,
        ];
        if let Some(u) = &udp {
            args.extend(["--udp", u]);
        }
        self.client(pod, &args, budget)
    }

    fn client<T: serde::de::DeserializeOwned>(
        &self,
        pod: &Pod,
        args: &[&str],
        timeout: Duration,
    ) -> Result<T> {
        let (status, stdout, stderr) = pod.exec(&self.bin, args, timeout)?;
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'));
        line.and_then(|l| serde_json::from_str(l).ok()).with_context(|| {
            format!(
                "pod-agent {} in pod {} printed no report (exit {status}); stdout:\n{stdout}\nstderr:\n{stderr}",
                args.join(" "),
                pod.full_name()
            )
        })
    }
}

/// What `pod-agent hold-connections` prints.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct HoldReport {
    /// Connections established.
    pub opened: u64,
    /// Connects that failed or timed out.
    pub connect_failed: u64,
    /// Connections the server closed within 200 ms of connecting.
    pub closed_at_once: u64,
    /// (ms since start, connections still open), every 250 ms.
    pub open_over_time: Vec<(u64, u64)>,
    /// When the last connection was closed by the server (ms since start), if it was.
    pub all_closed_after_ms: Option<u64>,
}

/// What `pod-agent h2-flood` prints.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct FloodReport {
    /// Attack frames written (before the GOAWAY was seen or the connection closed).
    pub frames_sent: u64,
    /// Bytes written.
    pub bytes_sent: u64,
    /// The server sent GOAWAY.
    pub goaway: bool,
    /// Its error code.
    pub goaway_code: Option<u32>,
    /// The server closed the connection.
    pub closed: bool,
    /// Writing blocked for 3 s (the server stopped reading).
    pub write_stalled: bool,
    pub elapsed_ms: u64,
    pub error: Option<String>,
}

/// One connection of `pod-agent conn-load`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ConnSample {
    /// When the connect started, Unix ms.
    pub start_ms: u64,
    /// How long connect() took (until it succeeded or failed), µs.
    pub connect_us: u64,
    /// Connect to the end of the answer, ms.
    pub total_ms: u64,
    /// HTTP status; 0 = no answer.
    pub status: u16,
    /// The echo body's `version` (which backend answered).
    pub version: String,
    /// What went wrong, empty if nothing.
    pub error: String,
}

/// What `pod-agent conn-load` prints.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ConnLoadReport {
    /// Every connection, in start order.
    pub samples: Vec<ConnSample>,
}

/// What `pod-agent tcp-hold` prints.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct TcpHoldReport {
    /// Lines echoed correctly.
    pub round_trips: u64,
    /// How long the connection was used, ms.
    pub ended_after_ms: u64,
    /// Why it ended early; empty if it lasted the whole duration.
    pub error: String,
}

/// What `pod-agent http-load` prints.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct HttpLoadReport {
    /// (request start, Unix ms; status, 0 = failed; backend version from the echo body).
    pub samples: Vec<(u64, u16, String)>,
    /// Connections opened.
    pub connections: u64,
    /// Latency (µs) of every answered request, in no particular order.
    #[serde(default)]
    pub latencies_us: Vec<u64>,
}

/// What `pod-agent dns-load` prints.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct DnsLoadReport {
    /// Queries sent.
    pub sent: u64,
    /// Queries answered with their own id in time.
    pub answered: u64,
    /// Queries not answered (error or timeout).
    pub failed: u64,
    /// The first failures: (query start, Unix ms; what went wrong).
    pub failures: Vec<(u64, String)>,
    /// Client address the server saw -> answers.
    pub server_saw: BTreeMap<String, u64>,
    pub latency_p50_us: u64,
    pub latency_p99_us: u64,
    pub latency_max_us: u64,
}

/// What `pod-agent conn-churn` prints.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ChurnReport {
    /// Completed echo exchanges.
    pub echo_ok: u64,
    pub echo_failed: u64,
    /// The slowest completed echo exchange (connect to echo), ms.
    pub echo_max_ms: u64,
    /// Connections reset (`SO_LINGER` 0) right after the handshake.
    pub reset: u64,
    pub reset_failed: u64,
    /// Connects abandoned before the handshake completed.
    pub abandoned: u64,
    pub abandoned_failed: u64,
    /// Connected UDP sockets that sent a datagram and closed.
    pub udp: u64,
    pub udp_failed: u64,
    /// The first errors.
    pub errors: Vec<String>,
    pub elapsed_ms: u64,
}

impl ChurnReport {
    /// TCP connections attempted (every ending but UDP).
    pub fn tcp_total(&self) -> u64 {
        self.echo_ok
            + self.echo_failed
            + self.reset
            + self.reset_failed
            + self.abandoned
            + self.abandoned_failed
    }
}
