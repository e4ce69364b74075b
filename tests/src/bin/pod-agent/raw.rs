//! `raw-origin` (an HTTP/1 origin that records the exact framing it receives) and `raw-client`
//! (sends byte vectors as they are and reads back whatever comes).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use keel_tests::raw_http::{
    RawClientReport, RawH2Report, RawH2Result, RawH2Vector, RawOriginRecord, RawResponse,
    RawResult, RawVector,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{accept, announce};

/// Longest head the origin reads before giving up on a connection.
const MAX_HEAD: usize = 1 << 20;

/// Serve until killed; one JSON line per request (or unparsable remainder) in `log`.
pub async fn raw_origin(listen: SocketAddr, log: PathBuf) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let log = Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?,
    ));
    announce(&listener)?;
    let conns = Arc::new(AtomicU64::new(0));
    loop {
        let (stream, _) = accept(&listener).await;
        let conn = conns.fetch_add(1, Ordering::Relaxed);
        let log = Arc::clone(&log);
        tokio::spawn(async move {
            if let Err(e) = origin_conn(stream, conn, &log).await {
                eprintln!("raw-origin conn {conn}: {e:#}");
            }
        });
    }
}

fn write_record(log: &Mutex<std::fs::File>, rec: &RawOriginRecord) {
    use std::io::Write as _;
    if let Ok(line) = serde_json::to_string(rec) {
        let mut f = log.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(f, "{line}");
    }
}

async fn origin_conn(mut stream: TcpStream, conn: u64, log: &Mutex<std::fs::File>) -> Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    let mut seq = 0;
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match parse_request(&buf) {
            Parsed::Complete(rec, used) => {
                let mut rec = *rec;
                rec.conn = conn;
                rec.seq = seq;
                seq += 1;
                buf.drain(..used);
                let body = format!("{} {}", rec.method, rec.target);
                write_record(log, &rec);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(resp.as_bytes()).await?;
                continue;
            }
            Parsed::Invalid(rec) => {
                let mut rec = *rec;
                rec.conn = conn;
                rec.seq = seq;
                write_record(log, &rec);
                let _ = stream
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                return Ok(());
            }
            Parsed::Partial => {}
        }
        let n = stream.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            if !buf.is_empty() {
                // What was left: an attempt the proxy cut off, never a whole request.
                let mut rec = match parse_head(&buf) {
                    Some((rec, _)) => rec,
                    None => RawOriginRecord::default(),
                };
                rec.conn = conn;
                rec.seq = seq;
                rec.complete = false;
                write_record(log, &rec);
            }
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_HEAD * 8 {
            return Ok(());
        }
    }
}

enum Parsed {
    Complete(Box<RawOriginRecord>, usize),
    Invalid(Box<RawOriginRecord>),
    Partial,
}

/// The head's end: the index after the blank line, accepting bare LF so it can be reported.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            let next = &buf[i + 1..];
            if next.starts_with(b"\r\n") {
                return Some(i + 3);
            }
            if next.starts_with(b"\n") {
                return Some(i + 2);
            }
        }
        i += 1;
    }
    None
}

/// The request line and headers, with the syntax violations seen; the head's length.
fn parse_head(buf: &[u8]) -> Option<(RawOriginRecord, usize)> {
    let end = head_end(buf)?;
    let head = &buf[..end];
    let mut rec = RawOriginRecord::default();
    let mut violations = Vec::new();
    for (i, &b) in head.iter().enumerate() {
        if b == b'\n' && (i == 0 || head[i - 1] != b'\r') {
            push_once(&mut violations, "bare-lf");
        }
        if b == b'\r' && head.get(i + 1) != Some(&b'\n') {
            push_once(&mut violations, "bare-cr");
        }
        if b == 0 {
            push_once(&mut violations, "nul");
        }
    }
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    rec.method = parts.next().unwrap_or_default().to_string();
    rec.target = parts.next().unwrap_or_default().to_string();
    let version = parts.next().unwrap_or_default();
    if parts.next().is_some() || version != "HTTP/1.1" {
        push_once(&mut violations, "bad request line");
    }
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            push_once(&mut violations, "obs-fold");
            continue;
        }
        match line.split_once(':') {
            Some((name, value)) if !name.is_empty() && !name.contains([' ', '\t']) => {
                rec.headers.push((
                    name.to_string(),
                    value.trim_matches([' ', '\t']).to_string(),
                ));
            }
            _ => push_once(&mut violations, "bad header line"),
        }
    }
    rec.violations = violations.into_iter().map(str::to_string).collect();
    Some((rec, end))
}

fn push_once(v: &mut Vec<&'static str>, what: &'static str) {
    if !v.contains(&what) {
        v.push(what);
    }
}

/// One request off the front of `buf`, strictly framed.
fn parse_request(buf: &[u8]) -> Parsed {
    let Some((mut rec, head_len)) = parse_head(buf) else {
        if buf.len() > MAX_HEAD {
            return Parsed::Invalid(Box::new(RawOriginRecord {
                violations: vec!["unparsable".to_string()],
                ..RawOriginRecord::default()
            }));
        }
        return Parsed::Partial;
    };
    let lengths: Vec<&str> = rec
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.as_str())
        .collect();
    let codings: Vec<&str> = rec
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"))
        .map(|(_, v)| v.as_str())
        .collect();
    let mut violations = std::mem::take(&mut rec.violations);
    if !lengths.is_empty() && !codings.is_empty() {
        violations.push("content-length+transfer-encoding".to_string());
    }
    if lengths.len() > 1 {
        violations.push("duplicate content-length".to_string());
    }
    let body = &buf[head_len..];
    let framed = if !codings.is_empty() {
        if codings.len() != 1 || !codings[0].eq_ignore_ascii_case("chunked") {
            violations.push("bad transfer-encoding".to_string());
        }
        rec.framing = "chunked".to_string();
        match dechunk(body) {
            Chunked::Done(len, used) => Some((len, used)),
            Chunked::Partial => None,
            Chunked::Bad => {
                violations.push("bad chunk".to_string());
                rec.violations = violations;
                return Parsed::Invalid(Box::new(rec));
            }
        }
    } else if let Some(l) = lengths.first() {
        rec.framing = "length".to_string();
        match l.parse::<usize>() {
            Ok(n) if l.bytes().all(|b| b.is_ascii_digit()) => (body.len() >= n).then_some((n, n)),
            _ => {
                violations.push("bad content-length".to_string());
                rec.violations = violations;
                return Parsed::Invalid(Box::new(rec));
            }
        }
    } else {
        rec.framing = "none".to_string();
        Some((0, 0))
    };
    rec.violations = violations;
    match framed {
        Some((len, used)) => {
            rec.body_len = len;
            rec.complete = true;
            Parsed::Complete(Box::new(rec), head_len + used)
        }
        None => Parsed::Partial,
    }
}

enum Chunked {
    /// Decoded length and bytes used.
    Done(usize, usize),
    Partial,
    Bad,
}

/// RFC 9110 `tchar`, the bytes of a header name.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Strict chunked decoding: hex sizes (extensions allowed), CRLF everywhere, trailers.
fn dechunk(buf: &[u8]) -> Chunked {
    let mut pos = 0;
    let mut total = 0usize;
    loop {
        let Some(eol) = find_crlf(&buf[pos..]) else {
            return if buf.len() - pos > 1024 {
                Chunked::Bad
            } else {
                Chunked::Partial
            };
        };
        let line = &buf[pos..pos + eol];
        let size_text = line.split(|&b| b == b';').next().unwrap_or_default();
        if size_text.is_empty()
            || size_text.len() > 15
            || !size_text.iter().all(u8::is_ascii_hexdigit)
            || line.contains(&b'\n')
        {
            return Chunked::Bad;
        }
        let Ok(size) = usize::from_str_radix(&String::from_utf8_lossy(size_text), 16) else {
            return Chunked::Bad;
        };
        pos += eol + 2;
        if size == 0 {
            // Trailers, then the blank line.
            loop {
                let Some(eol) = find_crlf(&buf[pos..]) else {
                    return Chunked::Partial;
                };
                let line = &buf[pos..pos + eol];
                pos += eol + 2;
                if line.is_empty() {
                    return Chunked::Done(total, pos);
                }
                // A trailer is a header field: a token name (so never a pseudo-header), a colon.
                let name = line.split(|&b| b == b':').next().unwrap_or_default();
                if name.is_empty()
                    || name.len() == line.len()
                    || !name.iter().all(|&b| is_tchar(b))
                    || line.contains(&b'\n')
                {
                    return Chunked::Bad;
                }
            }
        }
        if buf.len() < pos + size + 2 {
            return Chunked::Partial;
        }
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return Chunked::Bad;
        }
        pos += size + 2;
        total += size;
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// Send every vector of `vectors` on its own connection to `addr`, `parallel` at a time.
pub async fn raw_client(
    addr: SocketAddr,
    vectors: &Path,
    parallel: usize,
) -> Result<RawClientReport> {
    let text = std::fs::read_to_string(vectors)
        .with_context(|| format!("reading {}", vectors.display()))?;
    let vectors: Vec<RawVector> = serde_json::from_str(&text).context("parsing the vectors")?;
    let mut results = Vec::with_capacity(vectors.len());
    for batch in vectors.chunks(parallel.max(1)) {
        let mut tasks = Vec::new();
        for v in batch {
            let v = v.clone();
            tasks.push(tokio::spawn(async move { send_vector(addr, v).await }));
        }
        for t in tasks {
            results.push(t.await.context("vector task")?);
        }
    }
    Ok(RawClientReport { results })
}

async fn send_vector(addr: SocketAddr, v: RawVector) -> RawResult {
    let mut result = RawResult {
        name: v.name.clone(),
        ..RawResult::default()
    };
    let stream = match tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            result.error = Some(format!("connect: {e}"));
            return result;
        }
        Err(_) => {
            result.error = Some("connect timed out".to_string());
            return result;
        }
    };
    let (mut r, mut w) = stream.into_split();
    let bytes = v.bytes();
    // Written alongside the reads: a proxy may answer (and close) before taking every byte.
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&bytes).await;
        // Kept open: a half-close would read as the client leaving.
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(w);
    });
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    // Quiet for this long after the last byte (or the first wait): the vector is done.
    let mut wait = Duration::from_millis(1500);
    loop {
        match tokio::time::timeout(wait, r.read(&mut chunk)).await {
            Ok(Ok(0)) => {
                result.closed = true;
                break;
            }
            Ok(Ok(n)) => {
                got.extend_from_slice(&chunk[..n]);
                wait = Duration::from_millis(400);
            }
            Ok(Err(e)) => {
                result.closed = true;
                result.reset = e.kind() == std::io::ErrorKind::ConnectionReset;
                break;
            }
            Err(_) => break,
        }
    }
    writer.abort();
    let (responses, garbage) = parse_responses(&got);
    result.responses = responses;
    result.garbage = garbage;
    result
}

/// Sequential HTTP/1 responses in `buf`; the count of bytes left that are not one.
fn parse_responses(buf: &[u8]) -> (Vec<RawResponse>, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let rest = &buf[pos..];
        let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
            break;
        };
        let head = String::from_utf8_lossy(&rest[..end]);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let Some(status) = status_line
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
        else {
            break;
        };
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut resp = RawResponse {
            status,
            headers,
            body: String::new(),
        };
        let body_start = end + 4;
        let len = resp
            .header("content-length")
            .and_then(|l| l.parse::<usize>().ok())
            .unwrap_or(0);
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
        let used = if chunked {
            match dechunk(&rest[body_start..]) {
                Chunked::Done(_, used) => used,
                _ => rest.len() - body_start,
            }
        } else {
            len.min(rest.len() - body_start)
        };
        resp.body = String::from_utf8_lossy(&rest[body_start..body_start + used]).into_owned();
        out.push(resp);
        pos += body_start + used;
    }
    (out, buf.len() - pos)
}

/// Send every HTTP/2 vector on its own h2c connection to `addr`.
pub async fn raw_h2_client(addr: SocketAddr, vectors: &Path) -> Result<RawH2Report> {
    let text = std::fs::read_to_string(vectors)
        .with_context(|| format!("reading {}", vectors.display()))?;
    let vectors: Vec<RawH2Vector> = serde_json::from_str(&text).context("parsing the vectors")?;
    let mut tasks = Vec::new();
    for v in vectors {
        tasks.push(tokio::spawn(async move { send_h2(addr, v).await }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.context("h2 vector task")?);
    }
    Ok(RawH2Report { results })
}

/// An HPACK integer with an `n`-bit prefix whose high bits are `first`.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// Literal header fields without indexing, new names, no Huffman coding.
fn hpack_block(headers: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in headers {
        out.push(0);
        hpack_int(&mut out, 0, 7, k.len());
        out.extend_from_slice(k.as_bytes());
        hpack_int(&mut out, 0, 7, v.len());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// `:status` from the first field of a response header block (static-table forms only).
fn first_status(block: &[u8]) -> u16 {
    const STATIC: [(u8, u16); 7] = [
        (8, 200),
        (9, 204),
        (10, 206),
        (11, 304),
        (12, 400),
        (13, 404),
        (14, 500),
    ];
    let Some(&b) = block.first() else { return 0 };
    if b & 0x80 != 0 {
        return STATIC
            .iter()
            .find(|(i, _)| *i == b & 0x7f)
            .map_or(0, |(_, s)| *s);
    }
    // A literal with the `:status` name (static index 8..=14): a plain (non-Huffman) value.
    let name_index = if b & 0xc0 == 0x40 { b & 0x3f } else { b & 0x0f };
    if (8..=14).contains(&name_index) {
        if let Some(&len) = block.get(1) {
            let value = block
                .get(2..2 + usize::from(len & 0x7f))
                .unwrap_or_default();
            let digits = if len & 0x80 == 0 {
                std::str::from_utf8(value).ok().map(str::to_string)
            } else {
                huffman_digits(value)
            };
            return digits.and_then(|s| s.parse().ok()).unwrap_or(0);
        }
    }
    0
}

/// Decodes a Huffman-coded (RFC 7541 Appendix B) string of decimal digits, as a `:status` value
/// is; `None` if it holds anything else. Digits 0-2 have the 5-bit codes `00000`..`00010`, digits
/// 3-9 the 6-bit codes `011001`..`011111`; the rest of the last byte is padding of ones.
fn huffman_digits(coded: &[u8]) -> Option<String> {
    let bits: Vec<u8> = coded
        .iter()
        .flat_map(|byte| (0..8).rev().map(move |i| (byte >> i) & 1))
        .collect();
    let code = |from: usize, n: usize| -> Option<u8> {
        let slice = bits.get(from..from + n)?;
        Some(slice.iter().fold(0, |acc, b| (acc << 1) | b))
    };
    let (mut out, mut at) = (String::new(), 0);
    while at < bits.len() {
        if bits[at..].iter().all(|&b| b == 1) && bits.len() - at < 8 {
            return Some(out);
        }
        match code(at, 5)? {
            c @ 0..=2 => {
                out.push(char::from(b'0' + c));
                at += 5;
            }
            _ => match code(at, 6)? {
                c @ 0b011001..=0b011111 => {
                    out.push(char::from(b'3' + (c - 0b011001)));
                    at += 6;
                }
                _ => return None,
            },
        }
    }
    Some(out)
}

async fn send_h2(addr: SocketAddr, v: RawH2Vector) -> RawH2Result {
    let mut result = RawH2Result {
        name: v.name.clone(),
        ..RawH2Result::default()
    };
    let mut stream =
        match tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                result.error = Some(format!("connect: {e}"));
                return result;
            }
            Err(_) => {
                result.error = Some("connect timed out".to_string());
                return result;
            }
        };
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    let ends_here = v.data.is_none() && v.trailers.is_empty();
    out.extend(frame(
        1,
        0x4 | u8::from(ends_here),
        1,
        &hpack_block(&v.headers),
    ));
    if let Some(d) = &v.data {
        out.extend(frame(0, u8::from(v.trailers.is_empty()), 1, d.as_bytes()));
    }
    if !v.trailers.is_empty() {
        out.extend(frame(1, 0x5, 1, &hpack_block(&v.trailers)));
    }
    if let Err(e) = stream.write_all(&out).await {
        result.error = Some(format!("write: {e}"));
        return result;
    }
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_millis(2000);
    loop {
        // Frames read so far.
        while buf.len() >= 9 {
            let len =
                (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let sid = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            let payload: Vec<u8> = buf[9..9 + len].to_vec();
            buf.drain(..9 + len);
            match kind {
                1 if sid == 1 && result.status.is_none() => {
                    // Skip padding and priority fields if flagged.
                    let mut block = &payload[..];
                    if flags & 0x8 != 0 {
                        let pad = usize::from(block.first().copied().unwrap_or(0));
                        block = block
                            .get(1..block.len().saturating_sub(pad))
                            .unwrap_or_default();
                    }
                    if flags & 0x20 != 0 {
                        block = block.get(5..).unwrap_or_default();
                    }
                    result.status = Some(first_status(block));
                }
                3 if sid == 1 => {
                    result.reset = payload
                        .get(..4)
                        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                }
                4 if flags & 1 == 0 => {
                    let _ = stream.write_all(&frame(4, 1, 0, &[])).await;
                }
                7 => {
                    result.goaway = payload
                        .get(4..8)
                        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                }
                _ => {}
            }
        }
        if result.status.is_some() || result.reset.is_some() || result.goaway.is_some() {
            break;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        match tokio::time::timeout(deadline - now, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                result.closed = true;
                break;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::{first_status, huffman_digits};

    #[test]
    fn huffman_coded_statuses_decode() {
        // "403": 011010 00000 011001, padded with ones.
        assert_eq!(huffman_digits(&[0x68, 0x0c, 0xff]).as_deref(), Some("403"));
        // "200": 00010 00000 00000, padded with one 1.
        assert_eq!(huffman_digits(&[0x10, 0x01]).as_deref(), Some("200"));
        // A literal `:status` (name index 8) without indexing, Huffman flag set, 3 bytes.
        assert_eq!(first_status(&[0x08, 0x83, 0x68, 0x0c, 0xff]), 403);
        assert_eq!(first_status(&[0x88]), 200);
        // 'a' is not a digit.
        assert_eq!(huffman_digits(&[0x1f]), None);
    }
}
