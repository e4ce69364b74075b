//! Abusive clients for the overload and protocol-abuse tests: many held connections (idle,
//! slowloris, slow POST) and hand-written HTTP/2 frame floods. Each is bounded in count and time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_tests::agent::{FloodReport, HoldReport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How held connections behave.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum HoldMode {
    /// Send nothing.
    Idle,
    /// Send a request line and then one header byte per interval, never finishing the headers.
    Slowloris,
    /// Send whole headers announcing a large body, then one body byte per interval.
    SlowPost,
    /// Ask for a 100 MiB response (`/bytes/104857600`) and never read it.
    SlowRead,
}

/// Opens `count` connections to `addr` (`authority` as the Host), behaves as `mode` (one byte
/// per `interval`) and holds them for `hold`; samples how many are still open every 250 ms.
pub async fn hold(
    addr: SocketAddr,
    authority: String,
    count: u32,
    mode: HoldMode,
    interval: Duration,
    hold: Duration,
) -> HoldReport {
    let started = Instant::now();
    let open = Arc::new(AtomicU64::new(0));
    let closed_at_once = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..count {
        let stream =
            match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await {
                Ok(Ok(s)) => s,
                _ => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
        open.fetch_add(1, Ordering::Relaxed);
        let (open, closed_at_once, authority) = (
            Arc::clone(&open),
            Arc::clone(&closed_at_once),
            authority.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let connected = Instant::now();
            held(stream, &authority, mode, interval, started + hold).await;
            open.fetch_sub(1, Ordering::Relaxed);
            if connected.elapsed() < Duration::from_millis(200) && started.elapsed() < hold {
                closed_at_once.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let opened = u64::from(count) - failed.load(Ordering::Relaxed);
    let mut open_over_time = Vec::new();
    let mut all_closed_after_ms = None;
    while started.elapsed() < hold {
        let now = open.load(Ordering::Relaxed);
        let ms = started.elapsed().as_millis() as u64;
        open_over_time.push((ms, now));
        if now == 0 {
            all_closed_after_ms = Some(ms);
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for t in tasks {
        t.abort();
    }
    HoldReport {
        opened,
        connect_failed: failed.load(Ordering::Relaxed),
        closed_at_once: closed_at_once.load(Ordering::Relaxed),
        open_over_time,
        all_closed_after_ms,
    }
}

/// Runs one held connection until the peer closes it or `until`.
async fn held(
    mut stream: TcpStream,
    authority: &str,
    mode: HoldMode,
    interval: Duration,
    until: Instant,
) {
    let opening = match mode {
        HoldMode::Idle => String::new(),
        HoldMode::Slowloris => format!("GET / HTTP/1.1\r\nHost: {authority}\r\n"),
        HoldMode::SlowPost => {
            format!("POST / HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 1000000\r\n\r\n")
        }
        HoldMode::SlowRead => {
            format!("GET /bytes/104857600 HTTP/1.1\r\nHost: {authority}\r\n\r\n")
        }
    };
    if matches!(mode, HoldMode::SlowRead) {
        // Never read: only the deadline ends it (the close cannot be seen behind unread bytes).
        if stream.write_all(opening.as_bytes()).await.is_ok() {
            tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
        }
        return;
    }
    if stream.write_all(opening.as_bytes()).await.is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::from_std(until);
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                // A response (a timeout's 408 or an error) is fine; the close is what counts.
                Ok(_) => {}
            },
            () = tokio::time::sleep(interval) => {
                let byte: &[u8] = match mode {
                    HoldMode::Idle | HoldMode::SlowRead => continue,
                    HoldMode::Slowloris => b"X",
                    HoldMode::SlowPost => b"a",
                };
                if stream.write_all(byte).await.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep_until(deadline) => return,
        }
    }
}

/// HTTP/2 floods, frames written by hand.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FloodKind {
    /// HEADERS then RST_STREAM(CANCEL), on new streams.
    RapidReset,
    /// HEADERS without END_HEADERS, then CONTINUATION frames that never end the block.
    Continuation,
    /// PING frames, never reading the PONGs.
    Ping,
    /// Empty SETTINGS frames, never reading the ACKs.
    Settings,
    /// A POST stream, then DATA frames with no payload and no END_STREAM.
    EmptyData,
    /// WINDOW_UPDATE frames on the connection.
    WindowUpdate,
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// A HEADERS block for `method` / on `authority` (HPACK: static-table indices and one literal).
fn request_block(method_index: u8, authority: &str) -> Vec<u8> {
    // :method (2 = GET, 3 = POST), :scheme http (6), :path / (4), :authority literal (name 1).
    let mut block = vec![0x80 | method_index, 0x86, 0x84, 0x01];
    block.push(authority.len().min(127) as u8);
    block.extend_from_slice(&authority.as_bytes()[..authority.len().min(127)]);
    block
}

/// Sends `kind` frames to `addr` until `max_frames`, a GOAWAY, the connection's close or `limit`.
pub async fn flood(
    addr: SocketAddr,
    authority: String,
    kind: FloodKind,
    max_frames: u64,
    limit: Duration,
) -> FloodReport {
    let started = Instant::now();
    let mut report = FloodReport::default();
    let stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => {
            report.error = Some(format!("connect: {e}"));
            return report;
        }
    };
    let (mut rd, mut wr) = stream.into_split();
    let goaway = Arc::new(AtomicBool::new(false));
    let closed = Arc::new(AtomicBool::new(false));
    let goaway_code = Arc::new(AtomicU64::new(u64::MAX));
    // Ping and settings floods model a client that never reads what the server sends back.
    let reads = !matches!(kind, FloodKind::Ping | FloodKind::Settings);
    let reader = {
        let (goaway, closed, goaway_code) = (
            Arc::clone(&goaway),
            Arc::clone(&closed),
            Arc::clone(&goaway_code),
        );
        tokio::spawn(async move {
            if !reads {
                return;
            }
            let mut buf = Vec::new();
            let mut chunk = [0u8; 16384];
            loop {
                match rd.read(&mut chunk).await {
                    Ok(0) | Err(_) => {
                        closed.store(true, Ordering::Release);
                        return;
                    }
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                // Walk whole frames; keep a partial one.
                let mut at = 0;
                while buf.len() >= at + 9 {
                    let len = (usize::from(buf[at]) << 16)
                        | (usize::from(buf[at + 1]) << 8)
                        | usize::from(buf[at + 2]);
                    if buf.len() < at + 9 + len {
                        break;
                    }
                    if buf[at + 3] == 0x7 && len >= 8 {
                        let p = at + 9;
                        let code =
                            u32::from_be_bytes([buf[p + 4], buf[p + 5], buf[p + 6], buf[p + 7]]);
                        goaway_code.store(u64::from(code), Ordering::Release);
                        goaway.store(true, Ordering::Release);
                    }
                    at += 9 + len;
                }
                buf.drain(..at);
            }
        })
    };
    let mut out = PREFACE.to_vec();
    frame(&mut out, 0x4, 0, 0, &[]);
    let mut next_stream: u32 = 1;
    match kind {
        FloodKind::Continuation => {
            frame(&mut out, 0x1, 0, 1, &request_block(2, &authority));
        }
        FloodKind::EmptyData => {
            frame(&mut out, 0x1, 0x4, 1, &request_block(3, &authority));
        }
        _ => {}
    }
    let batch = 64u64;
    let deadline = started + limit;
    while report.frames_sent < max_frames && Instant::now() < deadline {
        if goaway.load(Ordering::Acquire) || closed.load(Ordering::Acquire) {
            break;
        }
        for _ in 0..batch {
            match kind {
                FloodKind::RapidReset => {
                    frame(
                        &mut out,
                        0x1,
                        0x5,
                        next_stream,
                        &request_block(2, &authority),
                    );
                    frame(&mut out, 0x3, 0, next_stream, &8u32.to_be_bytes());
                    next_stream = next_stream.wrapping_add(2);
                    report.frames_sent += 2;
                }
                FloodKind::Continuation => {
                    // A literal header `x: y` without indexing, never END_HEADERS.
                    frame(&mut out, 0x9, 0, 1, b"\x00\x01x\x01y");
                    report.frames_sent += 1;
                }
                FloodKind::Ping => {
                    frame(&mut out, 0x6, 0, 0, &report.frames_sent.to_be_bytes());
                    report.frames_sent += 1;
                }
                FloodKind::Settings => {
                    frame(&mut out, 0x4, 0, 0, &[]);
                    report.frames_sent += 1;
                }
                FloodKind::EmptyData => {
                    frame(&mut out, 0x0, 0, 1, &[]);
                    report.frames_sent += 1;
                }
                FloodKind::WindowUpdate => {
                    frame(&mut out, 0x8, 0, 0, &1u32.to_be_bytes());
                    report.frames_sent += 1;
                }
            }
        }
        report.bytes_sent += out.len() as u64;
        let written = tokio::time::timeout(Duration::from_secs(3), wr.write_all(&out)).await;
        out.clear();
        match written {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                closed.store(true, Ordering::Release);
                break;
            }
            // A non-reading flood blocks once both socket buffers are full: the server has
            // stopped reading it.
            Err(_) => {
                report.write_stalled = true;
                break;
            }
        }
    }
    // Wait (bounded) to see how the server ends it.
    let wait_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < wait_until && !closed.load(Ordering::Acquire) {
        if !reads {
            // Without reading, a write tells whether the server still holds the connection.
            let mut probe = Vec::new();
            frame(&mut probe, 0x6, 0x1, 0, &[0; 8]);
            if let Ok(Err(_)) =
                tokio::time::timeout(Duration::from_millis(200), wr.write_all(&probe)).await
            {
                closed.store(true, Ordering::Release);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reader.abort();
    report.goaway = goaway.load(Ordering::Acquire);
    let code = goaway_code.load(Ordering::Acquire);
    report.goaway_code = (code != u64::MAX).then_some(code as u32);
    report.closed = closed.load(Ordering::Acquire);
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    report
}
