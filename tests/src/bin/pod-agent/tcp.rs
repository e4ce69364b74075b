//! `tcp-echo` (server) and the TCP clients `tcp-echo-client` and `tcp-connect`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use keel_tests::agent::{ConnectOutcome, TcpConnectReport, TcpEchoReport};
use std::os::fd::AsRawFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::support::{accept, announce, millis, tcp_socket_for};

/// Bytes the echo client accepts beyond what it sent.
const MAX_EXTRA: usize = 1 << 20;

/// Echoes bytes; after the client's EOF, finishes writing and shuts down its side.
pub async fn tcp_echo_server(listen: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    announce(&listener)?;
    loop {
        let (mut stream, peer) = accept(&listener).await;
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

/// Accepts and never reads: each connection is held (its receive buffer fills, its peer's writes
/// block) for [`SINK_HOLD`]; seeing the peer's close would take a read.
pub async fn tcp_sink_server(listen: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    announce(&listener)?;
    loop {
        let (stream, _) = accept(&listener).await;
        tokio::spawn(async move {
            tokio::time::sleep(SINK_HOLD).await;
            drop(stream);
        });
    }
}

/// How long `tcp-sink` holds a connection (longer than any test using it).
const SINK_HOLD: Duration = Duration::from_secs(120);

pub async fn tcp_echo_client(addr: SocketAddr, size: usize, timeout: Duration) -> TcpEchoReport {
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
    report.elapsed_ms = millis(start.elapsed());
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
        if received.len() + n > size + MAX_EXTRA {
            bail!("server sent more than {} bytes", size + MAX_EXTRA);
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

/// Connects to `addr` (with `SO_MARK` = `mark` set first, if given; an IPv6 socket with
/// `IPV6_V6ONLY` = `v6only`), optionally sends `send`, and reports how the first read ended.
pub async fn tcp_connect(
    addr: SocketAddr,
    send: Option<String>,
    mark: Option<u32>,
    v6only: bool,
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
        r.elapsed_ms = millis(start.elapsed());
        r
    };
    let socket = match new_socket(addr, mark, v6only) {
        Ok(s) => s,
        Err(e) => {
            report.error = Some(e.to_string());
            return finish(report);
        }
    };
    let mut stream = match tokio::time::timeout(connect_timeout, socket.connect(addr)).await {
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

/// A TCP socket for `addr`'s family ([`tcp_socket_for`]), marked with `mark` (`SO_MARK`, needs
/// CAP_NET_ADMIN) if given.
fn new_socket(addr: SocketAddr, mark: Option<u32>, v6only: bool) -> std::io::Result<TcpSocket> {
    let socket = tcp_socket_for(addr, v6only)?;
    if let Some(mark) = mark {
        let value: libc::c_int = mark as libc::c_int;
        // SAFETY: a valid open socket fd and a pointer to a c_int of the length passed.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_MARK,
                (&raw const value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            return Err(std::io::Error::other(format!("SO_MARK {mark}: {e}")));
        }
    }
    Ok(socket)
}

fn classify_io(e: &std::io::Error) -> ConnectOutcome {
    match e.raw_os_error() {
        Some(libc::ECONNRESET | libc::EPIPE) => ConnectOutcome::Reset,
        _ => ConnectOutcome::Error,
    }
}
