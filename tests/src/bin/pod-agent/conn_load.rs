//! `conn-load` (a new connection per request at a fixed rate, every one timed), `conn-cycle` (the
//! same over many targets in turn) and `tcp-hold` (one
//! long-lived TCP connection exchanging a line every 100 ms): what a restart or a crash of the proxy
//! does to an application's connections.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use keel_tests::agent::{ConnLoadReport, ConnSample, TcpHoldReport};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{millis, unix_ms};

/// Opens `rate` new connections per second to `addr` for `duration`, each sending one
/// `GET / HTTP/1.1` with `Connection: close` and reading the answer to EOF within `timeout`.
pub async fn conn_load(
    addr: SocketAddr,
    host: String,
    rate: u32,
    duration: Duration,
    timeout: Duration,
) -> ConnLoadReport {
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut tick = tokio::time::interval(period);
    // Burst to catch up: the rate is what the test asked for, even on a busy machine.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = tokio::time::Instant::now() + duration;
    let mut tasks = Vec::new();
    while tokio::time::Instant::now() < end {
        tick.tick().await;
        let host = host.clone();
        tasks.push(tokio::spawn(async move { one(addr, &host, timeout).await }));
    }
    let mut samples = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Ok(s) = t.await {
            samples.push(s);
        }
    }
    ConnLoadReport { samples }
}

/// `rate` new connections per second for `duration`, the n-th to `targets[(start + n) % len]` (Host =
/// the target's IP), each one `GET /` with `Connection: close`: one client spreading its requests
/// evenly over many services, so a proxy holds state for every (client, service) pair.
pub async fn conn_cycle(
    targets: Vec<SocketAddr>,
    start: usize,
    rate: u32,
    duration: Duration,
    timeout: Duration,
) -> ConnLoadReport {
    if targets.is_empty() {
        return ConnLoadReport::default();
    }
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = tokio::time::Instant::now() + duration;
    let mut tasks = Vec::new();
    let mut n = start;
    while tokio::time::Instant::now() < end {
        tick.tick().await;
        let addr = targets[n % targets.len()];
        n += 1;
        tasks.push(tokio::spawn(async move {
            one(addr, &addr.ip().to_string(), timeout).await
        }));
    }
    let mut samples = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Ok(s) = t.await {
            samples.push(s);
        }
    }
    ConnLoadReport { samples }
}

async fn one(addr: SocketAddr, host: &str, timeout: Duration) -> ConnSample {
    let mut sample = ConnSample {
        start_ms: unix_ms(),
        ..ConnSample::default()
    };
    let started = Instant::now();
    let connected = tokio::time::timeout(timeout, TcpStream::connect(addr)).await;
    sample.connect_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let mut stream = match connected {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            sample.error = format!("connect: {e}");
            sample.total_ms = millis(started.elapsed());
            return sample;
        }
        Err(_) => {
            sample.error = "connect: timed out".into();
            sample.total_ms = millis(started.elapsed());
            return sample;
        }
    };
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let exchange = async {
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(raw)) => {
            let text = String::from_utf8_lossy(&raw);
            sample.status = text
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            sample.version = body_version(&text);
            if sample.status == 0 {
                sample.error = format!("no HTTP answer ({} bytes)", raw.len());
            }
        }
        Ok(Err(e)) => sample.error = format!("exchange: {e}"),
        Err(_) => sample.error = "exchange: timed out".into(),
    }
    sample.total_ms = millis(started.elapsed());
    sample
}

/// The echo body's `version`: the JSON object of the body (chunk framing, if any, is ignored).
fn body_version(text: &str) -> String {
    let Some(body_at) = text.find("\r\n\r\n") else {
        return String::new();
    };
    let body = &text[body_at..];
    let (Some(start), Some(end)) = (body.find('{'), body.rfind('}')) else {
        return String::new();
    };
    serde_json::from_str::<serde_json::Value>(&body[start..=end])
        .ok()
        .and_then(|v| v["version"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// One connection to a line echo server: a numbered line every 100 ms for `duration`, each echo
/// checked. Reports how many round trips succeeded and when (and how) the connection ended early.
pub async fn tcp_hold(addr: SocketAddr, duration: Duration) -> TcpHoldReport {
    let started = Instant::now();
    let mut report = TcpHoldReport::default();
    let stream = match tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            report.error = format!("connect: {e}");
            return report;
        }
        Err(_) => {
            report.error = "connect: timed out".into();
            return report;
        }
    };
    let (r, mut w) = stream.into_split();
    let mut r = tokio::io::BufReader::new(r);
    let mut n = 0u64;
    while started.elapsed() < duration {
        n += 1;
        let line = format!("hold {n}\n");
        let mut echo = String::new();
        let round = async {
            w.write_all(line.as_bytes()).await?;
            r.read_line(&mut echo).await
        };
        match tokio::time::timeout(Duration::from_secs(3), round).await {
            Ok(Ok(_)) if echo == line => report.round_trips += 1,
            Ok(Ok(0)) => {
                report.error = "closed by the peer".into();
                break;
            }
            Ok(Ok(_)) => {
                report.error = format!("wrong echo {echo:?}");
                break;
            }
            Ok(Err(e)) => {
                report.error = format!("{e}");
                break;
            }
            Err(_) => {
                report.error = "echo timed out".into();
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    report.ended_after_ms = millis(started.elapsed());
    report
}
