//! Raw-byte HTTP/1 test traffic: the vectors `pod-agent raw-client` sends byte for byte, what it
//! read back, and what `pod-agent raw-origin` received upstream (exact framing, so a test can check
//! that nothing ambiguous ever reaches an upstream).

use serde::{Deserialize, Serialize};

/// One byte sequence sent on its own connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RawVector {
    /// Unique tag; the request targets of a vector start with `/<name>` so upstream requests can be
    /// attributed to it.
    pub name: String,
    /// The bytes, hex-encoded.
    pub hex: String,
}

impl RawVector {
    /// A vector sending `bytes`.
    pub fn new(name: &str, bytes: &[u8]) -> RawVector {
        RawVector {
            name: name.to_string(),
            hex: to_hex(bytes),
        }
    }

    /// The bytes to send.
    pub fn bytes(&self) -> Vec<u8> {
        from_hex(&self.hex)
    }
}

/// One HTTP/1 response read back by the raw client.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RawResponse {
    pub status: u16,
    /// Lower-cased names, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What one vector got back.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RawResult {
    pub name: String,
    pub responses: Vec<RawResponse>,
    /// The proxy closed the connection (EOF or reset) before the client gave up waiting.
    pub closed: bool,
    /// The close was a reset.
    pub reset: bool,
    /// Bytes read that did not parse as a response.
    pub garbage: usize,
    pub error: Option<String>,
}

/// What `pod-agent raw-client` prints.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RawClientReport {
    pub results: Vec<RawResult>,
}

/// One request (or the unparsable rest of a connection) as `pod-agent raw-origin` received it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RawOriginRecord {
    /// Connection number (per origin process) and the request's index on it.
    pub conn: u64,
    pub seq: u64,
    /// The whole message arrived; `false` for a request cut off by the proxy (an aborted attempt)
    /// or bytes that never formed a request.
    pub complete: bool,
    pub method: String,
    pub target: String,
    /// Names as received (case kept), in order.
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
    /// `length`, `chunked` or `none`.
    pub framing: String,
    /// Framing or syntax that an HTTP/1 server could read two ways: `content-length+transfer-encoding`,
    /// `duplicate content-length`, `obs-fold`, `bare-lf`, `nul`, `bare-cr`, `bad chunk`, `bad
    /// transfer-encoding`, `unparsable`.
    pub violations: Vec<String>,
}

impl RawOriginRecord {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Lower-case hex.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Inverse of [`to_hex`]; invalid pairs are skipped.
pub fn from_hex(s: &str) -> Vec<u8> {
    s.as_bytes()
        .chunks(2)
        .filter_map(|p| std::str::from_utf8(p).ok())
        .filter_map(|p| u8::from_str_radix(p, 16).ok())
        .collect()
}

/// One HTTP/2 stream sent frame by frame (h2c prior knowledge) with hand-encoded HPACK literals, so
/// that headers a conforming client would never send can be tried.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RawH2Vector {
    pub name: String,
    /// The request's header list in order, pseudo-headers included, sent as HPACK literals.
    pub headers: Vec<(String, String)>,
    /// DATA frame payload, if any (END_STREAM goes on the last frame).
    pub data: Option<String>,
    /// A trailing HEADERS frame (trailers).
    pub trailers: Vec<(String, String)>,
}

/// How the proxy answered one [`RawH2Vector`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RawH2Result {
    pub name: String,
    /// `:status` of a response HEADERS frame on the stream (0 if it could not be decoded).
    pub status: Option<u16>,
    /// Error code of a RST_STREAM on the stream.
    pub reset: Option<u32>,
    /// Error code of a GOAWAY.
    pub goaway: Option<u32>,
    /// The connection ended.
    pub closed: bool,
    pub error: Option<String>,
}

/// What `pod-agent raw-h2-client` prints.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RawH2Report {
    pub results: Vec<RawH2Result>,
}
