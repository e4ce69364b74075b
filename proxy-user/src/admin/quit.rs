//! `keel quit`: the client side of `POST /quitquitquit`, for a preStop hook in an image without
//! curl. It asks keel to shut down and waits until the admin port stops answering, which happens
//! when the process exits, after the programs are detached.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Timeout of one connection attempt or request.
const STEP: Duration = Duration::from_secs(2);
/// Pause between checks of the admin port.
const POLL: Duration = Duration::from_millis(100);

/// POSTs `/quitquitquit` to `admin` and waits up to `timeout` for the port to close. A port that
/// refuses connections from the start means no keel is serving there: nothing to stop.
pub fn request(admin: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let mut stream = match TcpStream::connect_timeout(&admin, STEP) {
        Ok(s) => s,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            eprintln!("keel: no keel answers on {admin}; nothing to stop");
            return Ok(());
        }
        Err(e) => {
            return Err(e).with_context(|| format!("connecting to keel's admin API at {admin}"))
        }
    };
    stream.set_read_timeout(Some(STEP))?;
    write!(
        stream,
        "POST /quitquitquit HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .with_context(|| format!("sending POST /quitquitquit to {admin}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the answer to POST /quitquitquit from {admin}"))?;
    let answer = String::from_utf8_lossy(&raw);
    let status = answer.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        bail!(
            "POST /quitquitquit on {admin} answered {:?}",
            answer.lines().next().unwrap_or_default()
        );
    }
    let deadline = Instant::now() + timeout;
    loop {
        match TcpStream::connect_timeout(&admin, STEP) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Ok(()),
            _ if Instant::now() >= deadline => {
                bail!(
                    "keel's admin port {admin} still answers {timeout:?} after POST /quitquitquit"
                )
            }
            _ => std::thread::sleep(POLL),
        }
    }
}
