//! What reached a backend: the servers of `pod-agent` append one JSON line per request they receive to
//! the file given with `--log`, and tests read it back with [`RequestLog`] to count upstream requests
//! exactly (retries, mirrors, requests a fault or a local reply must never send).
//!
//! A line is written with a single `write(2)` on an `O_APPEND` file as soon as the request's body has
//! been read, before any configured delay, so a request that the proxy gives up on is still counted.
//! Readers ignore a last line without its newline (a write in progress).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// How often [`RequestLog::wait_for`] re-reads the file.
const POLL: Duration = Duration::from_millis(20);

/// One request as a backend saw it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestRecord {
    /// Unix time (ms) when the request head arrived at the server.
    pub ts_ms: u64,
    /// `--pod` of the server.
    pub pod: String,
    /// `--version` of the server.
    pub version: String,
    /// Which server logged it: `http`, `grpc` or `ws`.
    pub kind: String,
    /// Request method.
    pub method: String,
    /// Request path with query, as received.
    pub path: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub protocol: String,
    /// The TCP peer, `ip:port`.
    pub peer: String,
    /// Request headers, lower-case names; repeated headers joined with `, `.
    pub headers: BTreeMap<String, String>,
    /// Bytes of request body received.
    pub body_len: u64,
    /// [`body_hash`] of the body received.
    pub body_hash: String,
}

impl RequestRecord {
    /// The value of header `name` (lower-case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// `x-envoy-attempt-count` as a number, if present and numeric.
    pub fn attempt_count(&self) -> Option<u32> {
        self.header("x-envoy-attempt-count")
            .and_then(|v| v.trim().parse().ok())
    }
}

/// FNV-1a (64 bit) of `data`, as 16 lower-case hex digits: cheap, dependency-free, and the same in the
/// server that logs a body and the test that sent it.
pub fn body_hash(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The request body `pod-agent http-get --body-size <len>` sends: a byte pattern that is not periodic in
/// powers of two, so a truncated or shifted body has another hash.
pub fn body_pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// A server's request log file.
#[derive(Debug, Clone)]
pub struct RequestLog {
    path: PathBuf,
}

impl RequestLog {
    /// The log at `path` (it need not exist yet: a server creates it on its first request).
    pub fn new(path: impl Into<PathBuf>) -> RequestLog {
        RequestLog { path: path.into() }
    }

    /// The file to pass as the server's `--log`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every complete record so far (none if the file does not exist yet).
    pub fn read(&self) -> Result<Vec<RequestRecord>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.path.display())),
        };
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        complete
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .with_context(|| format!("bad line in {}: {l}", self.path.display()))
            })
            .collect()
    }

    /// Waits until at least `n` records are there or `timeout` passes, and returns what is there then
    /// (the caller asserts on the count, so a shortfall reads as "expected n, got m").
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Result<Vec<RequestRecord>> {
        let deadline = Instant::now() + timeout;
        loop {
            let records = self.read()?;
            if records.len() >= n || Instant::now() >= deadline {
                return Ok(records);
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until no new record has arrived for `quiet` (at most `max` in all) and returns the records:
    /// for counting fire-and-forget traffic such as mirrors, where "no more copies" is the point.
    pub fn settle(&self, quiet: Duration, max: Duration) -> Result<Vec<RequestRecord>> {
        let deadline = Instant::now() + max;
        let mut last = self.read()?;
        let mut since = Instant::now();
        loop {
            std::thread::sleep(POLL);
            let now = self.read()?;
            if now.len() != last.len() {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet || Instant::now() >= deadline {
                return Ok(now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_fnv1a() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(body_hash(b""), "cbf29ce484222325");
        assert_eq!(body_hash(b"a"), "af63dc4c8601ec8c");
        assert_ne!(
            body_hash(&body_pattern(1000)),
            body_hash(&body_pattern(999))
        );
    }

    #[test]
    fn partial_last_line_is_ignored() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("keel-request-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let log = RequestLog::new(dir.join("r.jsonl"));
        assert!(log.read()?.is_empty());
        let rec = RequestRecord {
            pod: "p".into(),
            ..RequestRecord::default()
        };
        let line = serde_json::to_string(&rec)?;
        std::fs::write(log.path(), format!("{line}\n{{\"ts_ms\":"))?;
        assert_eq!(log.read()?, vec![rec]);
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
