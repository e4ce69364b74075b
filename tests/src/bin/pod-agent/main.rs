//! `pod-agent`: the one helper binary that runs inside test pods.
//!
//! Servers print one `{"listening":"ip:port"}` line once bound, then serve until killed; with `--log`
//! they append one JSON line per request received (`keel_tests::RequestRecord`). Clients print exactly
//! one JSON report line on stdout (types in `keel_tests::agent`) and exit 0 if everything succeeded,
//! 1 otherwise; every client run is bounded by a global timeout.

mod attack;
mod churn;
mod conn_load;
mod dns;
mod grpc;
mod http_client;
mod http_server;
mod raw;
mod support;
mod tcp;
mod tls;
mod ws;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use hyper::{Method, Uri};

use support::{parse_headers, print_json};

#[derive(Parser)]
#[command(about = "Helper that runs inside Keel's test pods")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
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
    /// HTTP/1.1 and h2c (prior knowledge) on one port; answers 200 with a JSON echo unless the path
    /// says otherwise: `/status/<code>`, `/delay/<ms>`, `/reset` (anywhere in the path, combinable);
    /// query `response-header=<name>:<value>` adds a response header.
    HttpServer {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        pod: String,
        #[arg(long)]
        version: String,
        /// Append one JSON line per request received to this file.
        #[arg(long)]
        log: Option<PathBuf>,
        /// Append one JSON line (kind `cancelled`, ts_ms = when) per request whose client closed
        /// the connection or reset the stream before the answer was ready.
        #[arg(long)]
        cancel_log: Option<PathBuf>,
        /// Answer every request with this status (a path's `/status/<code>` still wins).
        #[arg(long)]
        fail_status: Option<u16>,
        /// Wait this long before answering every request.
        #[arg(long)]
        delay_ms: Option<u64>,
        /// Per request, GET this URL (Host = its authority) and answer with its status and
        /// `"<pod> => <body>"`; needs --call-connect.
        #[arg(long, requires = "call_connect")]
        call: Option<String>,
        /// Where --call connects (e.g. the next service's VIP).
        #[arg(long, requires = "call")]
        call_connect: Option<SocketAddr>,
        /// Serve HTTPS with this PEM certificate chain; responses carry `x-sni` and
        /// `x-client-cert: present|absent`.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Require client certificates signed by a CA in this PEM file.
        #[arg(long, requires = "tls_cert")]
        tls_client_ca: Option<PathBuf>,
    },
    /// Unary gRPC over h2c: one reply message (the call's JSON echo) and `grpc-status` in trailers.
    GrpcServer {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        pod: String,
        #[arg(long)]
        version: String,
        #[arg(long)]
        log: Option<PathBuf>,
        /// Status of every reply (metadata `x-test-grpc-status` overrides it per call).
        #[arg(long, default_value_t = 0)]
        grpc_status: u32,
        /// `grpc-message` of every reply (`x-test-grpc-message` per call).
        #[arg(long)]
        grpc_message: Option<String>,
        /// Wait before replying (`x-test-delay-ms` per call).
        #[arg(long)]
        delay_ms: Option<u64>,
        /// Reply trailers-only: status in the headers, no body (`x-test-trailers-only: 1` per call).
        #[arg(long)]
        trailers_only: bool,
    },
    /// WebSocket echo server.
    WsServer {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        pod: String,
        #[arg(long)]
        log: Option<PathBuf>,
    },
    /// HTTP/1 origin that records the exact framing of every request (`raw_http::RawOriginRecord`
    /// lines in --log) and answers 200 with `<method> <target>`.
    RawOrigin {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        log: PathBuf,
    },
    /// Sends each vector of a JSON file (`Vec<raw_http::RawVector>`) byte for byte on its own
    /// connection and reports the responses and whether the connection was closed.
    RawClient {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        vectors: PathBuf,
        #[arg(long, default_value_t = 16)]
        parallel: usize,
    },
    /// Sends each HTTP/2 vector of a JSON file (`Vec<raw_http::RawH2Vector>`) as one stream on its
    /// own h2c connection and reports the status, RST_STREAM or GOAWAY it got.
    RawH2Client {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        vectors: PathBuf,
    },
    /// Echoes bytes; after the client's EOF, finishes writing and shuts down its side.
    TcpEcho {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Accepts connections and never reads from them (an upstream that stopped reading); holds
    /// each until its peer goes away.
    TcpSink {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Counted requests; reports counts by status, version, pod, protocol, peer IP and connections,
    /// the last response's headers and body, non-echo bodies and latencies.
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
        /// Request method.
        #[arg(long, default_value = "GET")]
        method: String,
        /// Request body (literal text).
        #[arg(long, conflicts_with = "body_size")]
        body: Option<String>,
        /// Request body of this many pattern bytes (`keel_tests::body_pattern`).
        #[arg(long)]
        body_size: Option<usize>,
        /// Parallel workers, each with its own connection.
        #[arg(long, default_value_t = 1)]
        concurrency: u32,
        /// Abandon a request (closing its connection) after this long, like an application timeout.
        #[arg(long)]
        request_timeout_ms: Option<u64>,
        /// Tag each request `x-keel-test-tag: <tag>-<n>` and count echo responses that carry
        /// another request's tag.
        #[arg(long)]
        tag: Option<String>,
        /// Count the responses that took at least this long (`slow` in the report).
        #[arg(long)]
        slow_ms: Option<u64>,
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
    /// Sequential unary gRPC calls on one h2c connection; reports HTTP status, grpc-status and
    /// grpc-message (from trailers or headers), whether trailers arrived, and the reply message.
    GrpcClient {
        /// `http://<authority>/<service>/<method>`.
        #[arg(long)]
        url: String,
        #[arg(long)]
        connect_to: SocketAddr,
        #[arg(long, default_value = "hello")]
        message: String,
        /// Extra metadata `name:value` (repeatable).
        #[arg(long = "header")]
        headers: Vec<String>,
        /// `grpc-timeout` header, e.g. `1S`, `500m`.
        #[arg(long)]
        grpc_timeout: Option<String>,
        #[arg(long, default_value_t = 1)]
        count: u32,
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
    },
    /// One WebSocket connection: each --message sent and its echo awaited, then an optional binary
    /// message, then a close handshake; reports the handshake status and headers and the echoes.
    WsClient {
        /// `ws://<authority>/<path>`.
        #[arg(long)]
        url: String,
        #[arg(long)]
        connect_to: SocketAddr,
        #[arg(long = "message")]
        messages: Vec<String>,
        #[arg(long, default_value_t = 0)]
        binary_size: usize,
        #[arg(long = "header")]
        headers: Vec<String>,
        #[arg(long, default_value_t = 20)]
        timeout_secs: u64,
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
    /// Opens `count` connections and holds them (idle, slowloris or slow POST, one byte per
    /// interval) for `hold_ms`; reports how many the server closed and when.
    HoldConnections {
        #[arg(long)]
        addr: SocketAddr,
        /// Host header of slowloris / slow POST requests.
        #[arg(long, default_value = "reviews:9080")]
        authority: String,
        #[arg(long)]
        count: u32,
        #[arg(long, value_enum)]
        mode: attack::HoldMode,
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        #[arg(long)]
        hold_ms: u64,
    },
    /// An HTTP/2 frame flood (hand-written frames); reports frames sent until GOAWAY or close.
    H2Flood {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value = "reviews:9080")]
        authority: String,
        #[arg(long, value_enum)]
        kind: attack::FloodKind,
        #[arg(long, default_value_t = 20_000)]
        max_frames: u64,
        #[arg(long, default_value_t = 20)]
        timeout_secs: u64,
    },
    /// `rate` new connections per second, one `GET /` with `Connection: close` each, for
    /// `duration_ms`; reports every connection's start, connect time, status and backend version.
    ConnLoad {
        #[arg(long)]
        addr: SocketAddr,
        /// `Host` header.
        #[arg(long)]
        host: String,
        #[arg(long, default_value_t = 100)]
        rate: u32,
        #[arg(long)]
        duration_ms: u64,
        /// Limit of each connect and of each exchange.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
    /// `rate` new connections per second for `duration_ms`, the n-th to the `(start + n)`-th of
    /// `addrs` (cycling; Host = the target's IP), one `GET /` with `Connection: close` each; reports
    /// like `conn-load`.
    ConnCycle {
        /// Targets, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        addrs: Vec<SocketAddr>,
        /// Index of the first target.
        #[arg(long, default_value_t = 0)]
        start: usize,
        #[arg(long, default_value_t = 10)]
        rate: u32,
        #[arg(long)]
        duration_ms: u64,
        /// Limit of each connect and of each exchange.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
    /// One long-lived connection to a line echo server, a line every 100 ms for `duration_ms`.
    TcpHold {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        duration_ms: u64,
    },
    /// Connects, optionally sends, and reports how the first read ended.
    TcpConnect {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        send: Option<String>,
        /// Set this `SO_MARK` on the socket before connecting (as a process impersonating a proxy
        /// that marks its own sockets would).
        #[arg(long)]
        mark: Option<u32>,
        /// `IPV6_V6ONLY` on an IPv6 socket (default false: dual stack, so a v4-mapped `--addr`
        /// connects over IPv4).
        #[arg(long, default_value_t = false)]
        v6only: bool,
        #[arg(long, default_value_t = 2000)]
        connect_timeout_ms: u64,
        #[arg(long, default_value_t = 2000)]
        read_timeout_ms: u64,
    },
    /// UDP server that answers every datagram with its first 2 bytes (the query id) followed by the
    /// sender's IP as text, as a DNS server answers each query by id.
    DnsServer {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// `rate` DNS-like queries per second for `duration_ms`, each on a fresh connected UDP socket;
    /// reports sent, answered, failed, latencies and which client address the server saw.
    DnsLoad {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 50)]
        rate: u32,
        #[arg(long)]
        duration_ms: u64,
        /// How long one query waits for its answer.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// `count` short-lived connections at `rate`/s to a TCP echo service, cycling through a completed
    /// exchange, an RST right after connecting, an abandoned connect and (with --udp) a connected
    /// UDP socket that sends one datagram and closes.
    ConnChurn {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        udp: Option<SocketAddr>,
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        #[arg(long)]
        count: u64,
        /// Connections in flight at most.
        #[arg(long, default_value_t = 256)]
        parallel: usize,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    raise_open_file_limit();
    // One thread is plenty for test traffic and keeps the agent's CPU use predictable on 2 cores.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building tokio runtime")?;
    let ok = rt.block_on(dispatch(cli.cmd))?;
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

async fn dispatch(cmd: Cmd) -> Result<bool> {
    match cmd {
        Cmd::HttpServer {
            listen,
            pod,
            version,
            log,
            cancel_log,
            fail_status,
            delay_ms,
            call,
            call_connect,
            tls_cert,
            tls_key,
            tls_client_ca,
        } => {
            let call = match (call, call_connect) {
                (Some(url), Some(addr)) => {
                    let uri: Uri = url.parse().with_context(|| format!("bad --call {url}"))?;
                    Some((uri, addr))
                }
                _ => None,
            };
            http_server::run(http_server::ServerOpts {
                listen,
                pod,
                version,
                log,
                cancel_log,
                fail_status,
                delay: delay_ms.map(Duration::from_millis),
                call,
                tls: tls_cert
                    .zip(tls_key)
                    .map(|(cert, key)| tls::ServerTlsFiles {
                        cert,
                        key,
                        client_ca: tls_client_ca,
                    }),
            })
            .await
            .map(|()| true)
        }
        Cmd::GrpcServer {
            listen,
            pod,
            version,
            log,
            grpc_status,
            grpc_message,
            delay_ms,
            trailers_only,
        } => grpc::run_server(grpc::ServerOpts {
            listen,
            pod,
            version,
            log,
            grpc_status,
            grpc_message,
            delay: delay_ms.map(Duration::from_millis),
            trailers_only,
        })
        .await
        .map(|()| true),
        Cmd::WsServer { listen, pod, log } => ws::run_server(ws::ServerOpts { listen, pod, log })
            .await
            .map(|()| true),
        Cmd::TlsServer { listen, pod } => tls::tls_server(listen, pod).await.map(|()| true),
        Cmd::TlsClient {
            addr,
            sni,
            count,
            split,
            plain,
            timeout_secs,
        } => {
            let args = tls::TlsArgs {
                addr,
                sni,
                count,
                split,
                plain,
            };
            let report = tls::tls_client(args, Duration::from_secs(timeout_secs)).await;
            print_json(&report)?;
            Ok(report.errors == 0 && !report.timed_out && report.answered == u64::from(count))
        }
        Cmd::RawOrigin { listen, log } => raw::raw_origin(listen, log).await.map(|()| true),
        Cmd::RawClient {
            addr,
            vectors,
            parallel,
        } => {
            let report = raw::raw_client(addr, &vectors, parallel).await?;
            print_json(&report)?;
            Ok(true)
        }
        Cmd::RawH2Client { addr, vectors } => {
            let report = raw::raw_h2_client(addr, &vectors).await?;
            print_json(&report)?;
            Ok(true)
        }
        Cmd::TcpEcho { listen } => tcp::tcp_echo_server(listen).await.map(|()| true),
        Cmd::TcpSink { listen } => tcp::tcp_sink_server(listen).await.map(|()| true),
        Cmd::HttpGet {
            url,
            connect_to,
            count,
            keepalive: _,
            new_conn,
            http2,
            headers,
            method,
            body,
            body_size,
            concurrency,
            request_timeout_ms,
            tag,
            slow_ms,
            timeout_secs,
        } => {
            let body = match (body, body_size) {
                (_, Some(n)) => Bytes::from(keel_tests::body_pattern(n)),
                (Some(text), None) => Bytes::from(text),
                (None, None) => Bytes::new(),
            };
            let args = http_client::GetArgs {
                url,
                connect_to,
                count,
                new_conn,
                http2,
                headers: parse_headers(&headers)?,
                method: Method::from_bytes(method.as_bytes())
                    .with_context(|| format!("bad method {method:?}"))?,
                body,
                concurrency,
                request_timeout: request_timeout_ms.map(Duration::from_millis),
                tag,
                slow: slow_ms.map(Duration::from_millis),
            };
            let report = http_client::http_get(args, Duration::from_secs(timeout_secs)).await;
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
            let report = http_client::http_load(
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
        Cmd::GrpcClient {
            url,
            connect_to,
            message,
            headers,
            grpc_timeout,
            count,
            timeout_secs,
        } => {
            let args = grpc::ClientArgs {
                url,
                connect_to,
                message,
                headers: parse_headers(&headers)?,
                grpc_timeout,
                count,
            };
            let report = grpc::run_client(args, Duration::from_secs(timeout_secs)).await;
            print_json(&report)?;
            Ok(report.error.is_none()
                && !report.timed_out
                && report.calls.iter().all(|c| c.error.is_none()))
        }
        Cmd::WsClient {
            url,
            connect_to,
            messages,
            binary_size,
            headers,
            timeout_secs,
        } => {
            let args = ws::ClientArgs {
                url,
                connect_to,
                messages,
                binary_size,
                headers: parse_headers(&headers)?,
            };
            let report = ws::run_client(args, Duration::from_secs(timeout_secs)).await;
            print_json(&report)?;
            Ok(report.error.is_none())
        }
        Cmd::TcpEchoClient {
            addr,
            payload_size,
            timeout_secs,
        } => {
            let report =
                tcp::tcp_echo_client(addr, payload_size, Duration::from_secs(timeout_secs)).await;
            print_json(&report)?;
            Ok(report.matched)
        }
        Cmd::HoldConnections {
            addr,
            authority,
            count,
            mode,
            interval_ms,
            hold_ms,
        } => {
            let report = attack::hold(
                addr,
                authority,
                count,
                mode,
                Duration::from_millis(interval_ms),
                Duration::from_millis(hold_ms),
            )
            .await;
            print_json(&report)?;
            Ok(true)
        }
        Cmd::H2Flood {
            addr,
            authority,
            kind,
            max_frames,
            timeout_secs,
        } => {
            let report = attack::flood(
                addr,
                authority,
                kind,
                max_frames,
                Duration::from_secs(timeout_secs),
            )
            .await;
            print_json(&report)?;
            Ok(report.error.is_none())
        }
        Cmd::ConnLoad {
            addr,
            host,
            rate,
            duration_ms,
            timeout_ms,
        } => {
            let report = conn_load::conn_load(
                addr,
                host,
                rate,
                Duration::from_millis(duration_ms),
                Duration::from_millis(timeout_ms),
            )
            .await;
            let ok = report.samples.iter().all(|s| s.status == 200);
            print_json(&report)?;
            Ok(ok)
        }
        Cmd::ConnCycle {
            addrs,
            start,
            rate,
            duration_ms,
            timeout_ms,
        } => {
            let report = conn_load::conn_cycle(
                addrs,
                start,
                rate,
                Duration::from_millis(duration_ms),
                Duration::from_millis(timeout_ms),
            )
            .await;
            let ok = !report.samples.is_empty() && report.samples.iter().all(|s| s.status == 200);
            print_json(&report)?;
            Ok(ok)
        }
        Cmd::TcpHold { addr, duration_ms } => {
            let report = conn_load::tcp_hold(addr, Duration::from_millis(duration_ms)).await;
            let ok = report.error.is_empty();
            print_json(&report)?;
            Ok(ok)
        }
        Cmd::TcpConnect {
            addr,
            send,
            mark,
            v6only,
            connect_timeout_ms,
            read_timeout_ms,
        } => {
            let report = tcp::tcp_connect(
                addr,
                send,
                mark,
                v6only,
                Duration::from_millis(connect_timeout_ms),
                Duration::from_millis(read_timeout_ms),
            )
            .await;
            print_json(&report)?;
            // The outcome is the answer; any outcome is a successful run.
            Ok(true)
        }
        Cmd::DnsServer { listen } => dns::dns_server(listen).await.map(|()| true),
        Cmd::DnsLoad {
            addr,
            rate,
            duration_ms,
            timeout_ms,
        } => {
            let report = dns::dns_load(
                addr,
                rate,
                Duration::from_millis(duration_ms),
                Duration::from_millis(timeout_ms),
            )
            .await;
            print_json(&report)?;
            Ok(report.failed == 0)
        }
        Cmd::ConnChurn {
            addr,
            udp,
            rate,
            count,
            parallel,
        } => {
            let report = churn::conn_churn(addr, udp, rate, count, parallel).await;
            print_json(&report)?;
            Ok(report.errors.is_empty())
        }
    }
}

/// Lifts the soft open-file limit to the hard one: load modes hold a thousand connections and more,
/// beyond the usual soft limit of 1,024.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
