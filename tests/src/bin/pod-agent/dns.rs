//! `dns-server` and `dns-load`: a DNS-like UDP exchange (the reply echoes the query's 16-bit id and
//! names the peer address the server saw), enough to tell whether a resolver's queries are answered,
//! by whom, and whether anything in between rewrote them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use keel_tests::agent::{DnsLoadReport, Listening};
use tokio::net::UdpSocket;

use crate::support::{print_json, unix_ms};

/// Answers every datagram of 2 bytes or more with its first 2 bytes (the id) followed by the
/// sender's IP address as text.
pub async fn dns_server(listen: SocketAddr) -> Result<()> {
    let sock = UdpSocket::bind(listen)
        .await
        .with_context(|| format!("binding udp {listen}"))?;
    print_json(&Listening {
        listening: sock.local_addr().context("local_addr")?.to_string(),
    })?;
    let mut buf = [0u8; 512];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("recv: {e}");
                continue;
            }
        };
        if n < 2 {
            continue;
        }
        let mut reply = Vec::with_capacity(48);
        reply.extend_from_slice(&buf[..2]);
        reply.extend_from_slice(peer.ip().to_string().as_bytes());
        if let Err(e) = sock.send_to(&reply, peer).await {
            eprintln!("send to {peer}: {e}");
        }
    }
}

/// One query's outcome.
enum Answer {
    Ok { latency_us: u64, peer: String },
    Failed(String),
}

/// `rate` queries per second to `addr` for `duration`, each on a fresh connected UDP socket (as a
/// stub resolver does), waiting up to `timeout` for the reply.
pub async fn dns_load(
    addr: SocketAddr,
    rate: u32,
    duration: Duration,
    timeout: Duration,
) -> DnsLoadReport {
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = tokio::time::Instant::now() + duration;
    let mut tasks = Vec::new();
    let mut id: u16 = 0;
    while tokio::time::Instant::now() < end {
        tick.tick().await;
        id = id.wrapping_add(1);
        let start_ms = unix_ms();
        let query = id;
        tasks.push((
            start_ms,
            tokio::spawn(async move { query_once(addr, query, timeout).await }),
        ));
    }
    let mut report = DnsLoadReport::default();
    let mut latencies = Vec::with_capacity(tasks.len());
    let mut peers: BTreeMap<String, u64> = BTreeMap::new();
    for (start_ms, t) in tasks {
        report.sent += 1;
        let answer = match t.await {
            Ok(a) => a,
            Err(e) => Answer::Failed(format!("task: {e}")),
        };
        match answer {
            Answer::Ok { latency_us, peer } => {
                report.answered += 1;
                latencies.push(latency_us);
                *peers.entry(peer).or_default() += 1;
            }
            Answer::Failed(e) => {
                report.failed += 1;
                if report.failures.len() < 20 {
                    report.failures.push((start_ms, e));
                }
            }
        }
    }
    latencies.sort_unstable();
    let pick = |p: f64| -> u64 {
        if latencies.is_empty() {
            return 0;
        }
        let rank = ((p / 100.0) * (latencies.len() as f64 - 1.0)).round() as usize;
        latencies[rank.min(latencies.len() - 1)]
    };
    report.latency_p50_us = pick(50.0);
    report.latency_p99_us = pick(99.0);
    report.latency_max_us = latencies.last().copied().unwrap_or(0);
    report.server_saw = peers;
    report
}

async fn query_once(addr: SocketAddr, id: u16, timeout: Duration) -> Answer {
    let started = Instant::now();
    let exchange = async {
        let bind: SocketAddr = if addr.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let sock = UdpSocket::bind(bind).await.context("bind")?;
        sock.connect(addr).await.context("connect")?;
        let mut query = id.to_be_bytes().to_vec();
        query.extend_from_slice(b"\x01\x00\x00\x01keel-test-query");
        sock.send(&query).await.context("send")?;
        let mut buf = [0u8; 512];
        loop {
            let n = sock.recv(&mut buf).await.context("recv")?;
            // A reply to another id would be a stray; a resolver ignores it and keeps waiting.
            if n >= 2 && buf[..2] == id.to_be_bytes() {
                return Ok::<_, anyhow::Error>(String::from_utf8_lossy(&buf[2..n]).into_owned());
            }
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(peer)) => Answer::Ok {
            latency_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            peer,
        },
        Ok(Err(e)) => Answer::Failed(format!("{e:#}")),
        Err(_) => Answer::Failed(format!("no answer within {timeout:?}")),
    }
}
