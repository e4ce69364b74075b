//! `conn-churn`: many short-lived connections of every ending a proxy's connection tracking must
//! survive: completed echo exchanges, connections reset (`SO_LINGER` 0) right after the handshake,
//! connects abandoned before the handshake completes, and connected UDP sockets that are closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_tests::agent::ChurnReport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use crate::support::millis;

/// How a connection of the churn ends.
#[derive(Debug, Clone, Copy)]
enum Ending {
    /// Connect, write 4 bytes, read the 4-byte echo, close.
    Echo,
    /// Connect, then close at once with `SO_LINGER` 0: an RST before the proxy accepted or answered.
    Reset,
    /// Start the connect and drop the socket without waiting for the handshake.
    Abandoned,
    /// A connected UDP socket to the UDP address: one datagram, then closed.
    Udp,
}

/// What one connection did.
enum Outcome {
    Ok,
    /// An echo exchange that completed, in this many ms.
    Echoed(u64),
    Failed(String),
}

/// `count` connections at `rate`/s to `addr` (a TCP echo service), cycling through the endings (UDP
/// ones to `udp` when given); at most `parallel` in flight.
pub async fn conn_churn(
    addr: SocketAddr,
    udp: Option<SocketAddr>,
    rate: u32,
    count: u64,
    parallel: usize,
) -> ChurnReport {
    let started = Instant::now();
    let mut endings = vec![Ending::Echo, Ending::Reset, Ending::Abandoned];
    if udp.is_some() {
        endings.push(Ending::Udp);
    }
    let limit = Arc::new(Semaphore::new(parallel.max(1)));
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for i in 0..count {
        tick.tick().await;
        let ending = endings[usize::try_from(i).unwrap_or(0) % endings.len()];
        let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
            break;
        };
        tasks.push((
            ending,
            tokio::spawn(async move {
                let out = one(ending, addr, udp).await;
                drop(permit);
                out
            }),
        ));
    }
    let mut report = ChurnReport::default();
    for (ending, t) in tasks {
        let out = match t.await {
            Ok(o) => o,
            Err(e) => Outcome::Failed(format!("task: {e}")),
        };
        let (ok, failed) = match ending {
            Ending::Echo => (&mut report.echo_ok, &mut report.echo_failed),
            Ending::Reset => (&mut report.reset, &mut report.reset_failed),
            Ending::Abandoned => (&mut report.abandoned, &mut report.abandoned_failed),
            Ending::Udp => (&mut report.udp, &mut report.udp_failed),
        };
        match out {
            Outcome::Ok => *ok += 1,
            Outcome::Echoed(ms) => {
                *ok += 1;
                report.echo_max_ms = report.echo_max_ms.max(ms);
            }
            Outcome::Failed(e) => {
                *failed += 1;
                if report.errors.len() < 20 {
                    report.errors.push(format!("{ending:?}: {e}"));
                }
            }
        }
    }
    report.elapsed_ms = millis(started.elapsed());
    report
}

async fn one(ending: Ending, addr: SocketAddr, udp: Option<SocketAddr>) -> Outcome {
    let limit = Duration::from_secs(3);
    match ending {
        Ending::Echo => {
            // Generous: on a busy machine the proxy's accept queue can be seconds long; a lost
            // connection still shows.
            let limit = Duration::from_secs(10);
            let started = Instant::now();
            let mut connected = None;
            match tokio::time::timeout(limit, echo(addr, &mut connected)).await {
                Ok(Ok(())) => Outcome::Echoed(millis(started.elapsed())),
                Ok(Err(e)) => Outcome::Failed(e.to_string()),
                Err(_) => Outcome::Failed(match connected {
                    Some(c) => format!(
                        "no echo within {limit:?} (connected after {} ms as {})",
                        c.1, c.0
                    ),
                    None => format!(
                        "connect not done within {limit:?} ({} ms)",
                        millis(started.elapsed())
                    ),
                }),
            }
        }
        Ending::Reset => match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => match s.set_zero_linger() {
                // Dropping a socket with a zero linger time sends an RST instead of a FIN.
                Ok(()) => Outcome::Ok,
                Err(e) => Outcome::Failed(format!("SO_LINGER: {e}")),
            },
            Ok(Err(e)) => Outcome::Failed(format!("connect: {e}")),
            Err(_) => Outcome::Failed("connect timed out".into()),
        },
        Ending::Abandoned => {
            // A zero timeout polls the connect once (SYN sent) and then drops the socket.
            match tokio::time::timeout(Duration::ZERO, TcpStream::connect(addr)).await {
                Ok(Err(e)) => Outcome::Failed(format!("connect: {e}")),
                Ok(Ok(_)) | Err(_) => Outcome::Ok,
            }
        }
        Ending::Udp => {
            let Some(to) = udp else {
                return Outcome::Failed("no UDP address".into());
            };
            let sent = async {
                let sock = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0))).await?;
                sock.connect(to).await?;
                sock.send(b"\x00\x01churn").await?;
                Ok::<_, std::io::Error>(())
            };
            match sent.await {
                Ok(()) => Outcome::Ok,
                Err(e) => Outcome::Failed(format!("udp: {e}")),
            }
        }
    }
}

/// One echo exchange; `connected` gets the local address and the connect time (ms) once connected.
async fn echo(addr: SocketAddr, connected: &mut Option<(String, u64)>) -> std::io::Result<()> {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await?;
    *connected = Some((
        s.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        millis(started.elapsed()),
    ));
    s.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await?;
    if &buf != b"ping" {
        return Err(std::io::Error::other(format!("echo returned {buf:?}")));
    }
    Ok(())
}
