//! Small pieces every server and client of the agent shares: JSON output, the `listening` line, the
//! request log writer, header maps and clocks.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result};
use hyper::HeaderMap;
use keel_tests::agent::Listening;
use keel_tests::RequestRecord;
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use tokio::net::{TcpListener, TcpSocket};

/// A TCP socket for `addr`'s family. An IPv6 one gets `IPV6_V6ONLY` = `v6only` set explicitly
/// (`false`: a dual-stack socket, which may connect to a v4-mapped address and then speaks IPv4,
/// whatever the host's `net.ipv6.bindv6only` default is).
pub fn tcp_socket_for(addr: SocketAddr, v6only: bool) -> std::io::Result<TcpSocket> {
    if addr.is_ipv4() {
        return TcpSocket::new_v4();
    }
    let socket = TcpSocket::new_v6()?;
    let value: libc::c_int = libc::c_int::from(v6only);
    // SAFETY: a valid open socket fd and a pointer to a c_int of the length passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::other(format!("IPV6_V6ONLY {v6only}: {e}")));
    }
    Ok(socket)
}

/// Prints `v` as one JSON line on stdout.
pub fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string(v).context("serialising report")?
    );
    Ok(())
}

/// Prints the `{"listening":"ip:port"}` line a server owes its starter once it accepts.
pub fn announce(listener: &TcpListener) -> Result<()> {
    let addr = listener.local_addr().context("local_addr")?;
    print_json(&Listening {
        listening: addr.to_string(),
    })
}

/// `name:value` pairs from repeated `--header` options.
pub fn parse_headers(raw: &[String]) -> Result<Vec<(String, String)>> {
    raw.iter()
        .map(|h| {
            let (k, v) = h
                .split_once(':')
                .with_context(|| format!("header {h:?} is not name:value"))?;
            Ok((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// Lower-case header names to values; repeated headers joined with `, ` (the echo body's format).
pub fn joined_headers(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in headers {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        out.entry(k.as_str().to_string())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    out
}

/// Lower-case header names to every value, in order.
pub fn listed_headers(headers: &HeaderMap) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in headers {
        out.entry(k.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    out
}

/// Unix time in milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Milliseconds of a duration, saturating.
pub fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `s` cut to at most `max` bytes on a character boundary.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Appends [`RequestRecord`] lines to a server's `--log` file: one `write(2)` per line on an
/// `O_APPEND` file, so a reader never sees two records interleaved.
pub struct LogWriter {
    file: Mutex<std::fs::File>,
}

impl LogWriter {
    /// Opens (creating) `path` for appending.
    pub fn open(path: &Path) -> Result<LogWriter> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening request log {}", path.display()))?;
        Ok(LogWriter {
            file: Mutex::new(file),
        })
    }

    /// Writes one record; a failure is reported on stderr (the test then sees a missing record).
    pub fn write(&self, rec: &RequestRecord) {
        let mut line = match serde_json::to_string(rec) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("request log: {e}");
                return;
            }
        };
        line.push('\n');
        let mut file = match self.file.lock() {
            Ok(f) => f,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Err(e) = file.write_all(line.as_bytes()) {
            eprintln!("request log: {e}");
        }
    }
}

/// The next connection on `listener`; an accept error (e.g. out of descriptors) is logged and
/// retried after 10 ms, so a server never stops on one.
pub async fn accept(
    listener: &tokio::net::TcpListener,
) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(c) => return c,
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}
