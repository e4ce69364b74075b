//! What a request must satisfy before it is routed, and what is removed from it, as an Envoy
//! sidecar under Istio's defaults does in its codec and connection manager.
//!
//! hyper's HTTP/1 parser already refuses (400, connection closed): obs-fold, NUL/CR/LF in header
//! values, bad header names, malformed request lines and versions, differing or invalid
//! `Content-Length`s, `Transfer-Encoding` on HTTP/1.0 or with a last coding other than `chunked`,
//! and malformed chunk framing (the body error becomes a 400 in `forward`). It re-frames a request
//! with both `Content-Length` and `Transfer-Encoding: chunked` as chunked, drops the length and closes
//! the connection after the response (RFC 9112 §6.1; Envoy answers 400 instead), and it accepts a
//! bare LF as a line end: both reach the upstream only in canonical form, since the request is
//! re-serialised. This module adds what hyper lets through:
//!
//! - a `Content-Length` list (`5, 5`, which hyper accepts): 400;
//! - `Transfer-Encoding` other than exactly `chunked` (e.g. `gzip, chunked`), or on `CONNECT`:
//!   501, as Envoy (`http1.invalid_transfer_encoding`);
//! - more than one `Host`, no `Host` on an HTTP/1.1 origin-form request, user info in the
//!   authority: 400; an absolute-form URI's authority replaces `Host` (one authority for routing and
//!   forwarding);
//! - more than [`MAX_HEADERS`] headers, or more than [`MAX_HEADER_BYTES`] of header names, values
//!   and request target: 431 (hyper's own HTTP/1 limits sit just above these, as a backstop; a
//!   request target over 65,534 bytes gets hyper's 414 where Envoy answers 431);
//! - the path, normalised (`normalization`); `%00` or a relative path: 400;
//! - `CONNECT` and upgrades other than WebSocket: 403 (Istio configures only `websocket` upgrades on
//!   a sidecar); `Upgrade: h2c` is not an upgrade Envoy performs: the upgrade headers are dropped
//!   and the request served as HTTP/1.1;
//! - headers only a proxy may set, from the client: dropped (see [`is_proxy_only`]).

use bytes::Bytes;
use http::header::{CONNECTION, HOST, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, Version};

use super::normalization::{self, PathError};

/// Envoy's default `max_request_headers_count`.
pub const MAX_HEADERS: usize = 100;
/// Envoy's default `max_request_headers_kb` (60 KiB), for the request line and headers.
pub const MAX_HEADER_BYTES: usize = 60 * 1024;

/// Why a request is answered locally instead of being routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Codec-level violation: 400 `Bad Request`, connection closed.
    Malformed(&'static str),
    /// A transfer coding Envoy does not implement: 501 `Not Implemented`, connection closed.
    UnsupportedTransferEncoding,
    /// Too many headers: 431, connection closed.
    HeadersTooLarge,
    /// Path normalisation failed: 400, empty body (Envoy's `path_normalization_failed`).
    PathNormalization(PathError),
    /// An upgrade (or `CONNECT`) the sidecar is not configured for: 403, empty body
    /// (`upgrade_failed`).
    UpgradeRefused,
}

impl Rejection {
    /// The status, body and whether the connection closes after it.
    pub fn reply(self) -> (StatusCode, Bytes, bool) {
        match self {
            Rejection::Malformed(_) => (
                StatusCode::BAD_REQUEST,
                Bytes::from_static(b"Bad Request"),
                true,
            ),
            Rejection::UnsupportedTransferEncoding => (
                StatusCode::NOT_IMPLEMENTED,
                Bytes::from_static(b"Not Implemented"),
                true,
            ),
            Rejection::HeadersTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                Bytes::from_static(b"Request Header Fields Too Large"),
                true,
            ),
            Rejection::PathNormalization(_) => (StatusCode::BAD_REQUEST, Bytes::new(), false),
            Rejection::UpgradeRefused => (StatusCode::FORBIDDEN, Bytes::new(), false),
        }
    }

    /// A short reason for logs.
    pub fn detail(self) -> &'static str {
        match self {
            Rejection::Malformed(why) => why,
            Rejection::UnsupportedTransferEncoding => "unsupported transfer encoding",
            Rejection::HeadersTooLarge => "request headers too large",
            Rejection::PathNormalization(PathError::EscapedNul) => "escaped NUL in the path",
            Rejection::PathNormalization(PathError::NotAbsolute) => "path is not absolute",
            Rejection::UpgradeRefused => "upgrade not allowed",
        }
    }

    /// Whether the client broke the protocol (Envoy's `DPE` response flag).
    pub fn is_protocol_error(self) -> bool {
        !matches!(self, Rejection::UpgradeRefused)
    }
}

/// The size Envoy holds against `max_request_headers_kb`: header names and values, plus the
/// request target. hyper's HTTP/1 read buffer bounds this only loosely (one read may overshoot it).
fn head_bytes<B>(req: &Request<B>) -> usize {
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    req.headers().iter().fold(target, |n, (name, value)| {
        n + name.as_str().len() + value.len()
    })
}

/// Check `req` and make it canonical: one authority, a normalised path, no proxy-only headers.
pub fn admit<B>(req: &mut Request<B>) -> Result<(), Rejection> {
    let h1 = matches!(req.version(), Version::HTTP_10 | Version::HTTP_11);
    if req.headers().len() > MAX_HEADERS || head_bytes(req) > MAX_HEADER_BYTES {
        return Err(Rejection::HeadersTooLarge);
    }
    if req
        .headers()
        .values()
        .any(|v| v.as_bytes().iter().any(|b| matches!(b, 0 | b'\r' | b'\n')))
    {
        return Err(Rejection::Malformed("invalid header value"));
    }
    if h1 {
        check_transfer_encoding(req.method(), req.headers())?;
        // hyper accepts a list of equal lengths (`5, 5`) and would forward it verbatim; Envoy
        // refuses it, and an upstream must never have to interpret one.
        if req
            .headers()
            .get_all(http::header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes().contains(&b','))
        {
            return Err(Rejection::Malformed("content-length list"));
        }
        unify_authority(req)?;
        drop_h2c_upgrade(req.headers_mut());
    }
    if req.method() == Method::CONNECT {
        return Err(Rejection::UpgradeRefused);
    }
    if h1 && upgrade_refused(req.headers()) {
        return Err(Rejection::UpgradeRefused);
    }
    normalize_uri(req)?;
    strip_proxy_only(req.headers_mut());
    Ok(())
}

/// Envoy implements only `chunked`, alone, and never on `CONNECT`.
fn check_transfer_encoding(method: &Method, headers: &HeaderMap) -> Result<(), Rejection> {
    let mut values = headers.get_all(TRANSFER_ENCODING).iter();
    let Some(first) = values.next() else {
        return Ok(());
    };
    if values.next().is_some()
        || !first.as_bytes().eq_ignore_ascii_case(b"chunked")
        || method == Method::CONNECT
    {
        return Err(Rejection::UnsupportedTransferEncoding);
    }
    Ok(())
}

/// One `Host`; an absolute-form URI's authority wins and becomes the `Host`.
fn unify_authority<B>(req: &mut Request<B>) -> Result<(), Rejection> {
    let hosts = req.headers().get_all(HOST).iter().count();
    if hosts > 1 {
        return Err(Rejection::Malformed("duplicate host header"));
    }
    if let Some(authority) = req.uri().authority() {
        if authority.as_str().contains('@') {
            return Err(Rejection::Malformed("user info in the request target"));
        }
        let value = HeaderValue::from_str(authority.as_str())
            .map_err(|_| Rejection::Malformed("invalid authority"))?;
        req.headers_mut().insert(HOST, value);
        return Ok(());
    }
    match req.headers().get(HOST) {
        Some(h) if h.as_bytes().contains(&b'@') => {
            Err(Rejection::Malformed("user info in the host header"))
        }
        Some(h) if h.is_empty() && req.version() == Version::HTTP_11 => {
            Err(Rejection::Malformed("empty host header"))
        }
        Some(_) => Ok(()),
        None if req.version() == Version::HTTP_11 => Err(Rejection::Malformed("missing host")),
        None => Ok(()),
    }
}

/// Whether `Connection` lists `token`.
fn connection_lists(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// `Upgrade: h2c` (with `HTTP2-Settings`) is served as plain HTTP/1.1, its upgrade headers dropped.
fn drop_h2c_upgrade(headers: &mut HeaderMap) {
    let h2c = headers
        .get_all(UPGRADE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"h2c"));
    if !h2c {
        return;
    }
    headers.remove(UPGRADE);
    headers.remove("http2-settings");
    let kept: Vec<String> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| {
            !t.is_empty()
                && !t.eq_ignore_ascii_case("upgrade")
                && !t.eq_ignore_ascii_case("http2-settings")
        })
        .map(str::to_string)
        .collect();
    headers.remove(CONNECTION);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join(", ")) {
            headers.insert(CONNECTION, v);
        }
    }
}

/// An HTTP/1.1 upgrade to anything but WebSocket.
fn upgrade_refused(headers: &HeaderMap) -> bool {
    if !connection_lists(headers, "upgrade") {
        return false;
    }
    let mut protocols = headers.get_all(UPGRADE).iter().peekable();
    protocols.peek().is_some()
        && !protocols.all(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Replace the request target by its normalised origin form (the authority moved to `Host` or
/// `:authority` stays in the URI for HTTP/2).
fn normalize_uri<B>(req: &mut Request<B>) -> Result<(), Rejection> {
    let Some(pq) = req.uri().path_and_query() else {
        // An authority-form target (only valid for CONNECT, refused above).
        return if req.uri().authority().is_some() {
            Err(Rejection::Malformed("authority-form target"))
        } else {
            Ok(())
        };
    };
    let normalized = normalization::normalize(pq.as_str()).map_err(Rejection::PathNormalization)?;
    if normalized == pq.as_str() {
        return Ok(());
    }
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(
        normalized
            .parse()
            .map_err(|_| Rejection::PathNormalization(PathError::NotAbsolute))?,
    );
    *req.uri_mut() =
        Uri::from_parts(parts).map_err(|_| Rejection::Malformed("invalid request target"))?;
    Ok(())
}

/// Headers only a proxy may set, never honoured from a pod's request:
/// - `x-forwarded-client-cert`: Envoy's default `forward_client_cert_details: SANITIZE` on a
///   plaintext outbound listener removes it;
/// - every `x-envoy-*` header: the metadata exchange (`x-envoy-peer-metadata`, `-id`) is overwritten
///   by Istio's own proxy, the internal ones (`x-envoy-internal`, `-external-address`,
///   `-downstream-service-*`, `-original-path`, `-expected-rq-timeout-ms`, `-attempt-count`, ...)
///   are Envoy's to set, and the control headers an Envoy router honours from the application
///   (`x-envoy-upstream-rq-timeout-ms`, `x-envoy-retry-on`, `x-envoy-max-retries`, ...) are
///   consumed there and not forwarded: Keel does not honour them, so it drops them rather than pass
///   a pod's claims to its upstream.
///
/// Keel adds its own `x-envoy-attempt-count`, `x-envoy-original-path` and
/// `x-envoy-expected-rq-timeout-ms` after this, and route header operations still apply.
pub fn is_proxy_only(name: &str) -> bool {
    name.starts_with("x-envoy-") || name == "x-forwarded-client-cert"
}

fn strip_proxy_only(headers: &mut HeaderMap) {
    let names: Vec<http::HeaderName> = headers
        .keys()
        .filter(|n| is_proxy_only(n.as_str()))
        .cloned()
        .collect();
    for n in names {
        headers.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().version(version).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap_or_default()
    }

    fn admit_h1(uri: &str, headers: &[(&str, &str)]) -> Result<Request<()>, Rejection> {
        let mut r = req(Version::HTTP_11, uri, headers);
        admit(&mut r).map(|()| r)
    }

    #[test]
    fn host_rules() {
        assert_eq!(
            admit_h1("/", &[]).err(),
            Some(Rejection::Malformed("missing host"))
        );
        assert_eq!(
            admit_h1("/", &[("host", "a"), ("host", "b")]).err(),
            Some(Rejection::Malformed("duplicate host header"))
        );
        assert_eq!(
            admit_h1("/", &[("host", "a@b")]).err(),
            Some(Rejection::Malformed("user info in the host header"))
        );
        let mut r10 = req(Version::HTTP_10, "/", &[]);
        assert_eq!(admit(&mut r10), Ok(()));
    }

    #[test]
    fn absolute_form_authority_wins() -> Result<(), Rejection> {
        let r = admit_h1("http://reviews:9080/a/../b", &[("host", "ratings")])?;
        assert_eq!(r.headers()[HOST], "reviews:9080");
        assert_eq!(r.uri().path(), "/b");
        assert_eq!(
            r.uri().authority().map(|a| a.as_str()),
            Some("reviews:9080")
        );
        assert_eq!(
            admit_h1("http://a@reviews/", &[("host", "x")]).err(),
            Some(Rejection::Malformed("user info in the request target"))
        );
        Ok(())
    }

    #[test]
    fn transfer_encoding_must_be_chunked_alone() {
        for te in [
            "gzip, chunked",
            "chunked, chunked",
            "identity",
            "xchunked",
            "chunked;x",
        ] {
            assert_eq!(
                admit_h1("/", &[("host", "a"), ("transfer-encoding", te)]).err(),
                Some(Rejection::UnsupportedTransferEncoding),
                "{te}"
            );
        }
        assert_eq!(
            admit_h1(
                "/",
                &[
                    ("host", "a"),
                    ("transfer-encoding", "chunked"),
                    ("transfer-encoding", "chunked")
                ]
            )
            .err(),
            Some(Rejection::UnsupportedTransferEncoding)
        );
        assert!(admit_h1("/", &[("host", "a"), ("transfer-encoding", "Chunked")]).is_ok());
    }

    #[test]
    fn content_length_lists_are_refused() {
        assert_eq!(
            admit_h1("/", &[("host", "a"), ("content-length", "5, 5")]).err(),
            Some(Rejection::Malformed("content-length list"))
        );
        assert!(admit_h1("/", &[("host", "a"), ("content-length", "5")]).is_ok());
    }

    #[test]
    fn upgrades_other_than_websocket_are_refused() {
        let up = |p: &str| {
            admit_h1(
                "/",
                &[("host", "a"), ("connection", "upgrade"), ("upgrade", p)],
            )
            .err()
        };
        assert_eq!(up("websocket"), None);
        assert_eq!(up("WebSocket"), None);
        assert_eq!(up("foo"), Some(Rejection::UpgradeRefused));
        let mut connect = req(Version::HTTP_11, "/", &[("host", "a")]);
        *connect.method_mut() = Method::CONNECT;
        assert_eq!(admit(&mut connect), Err(Rejection::UpgradeRefused));
    }

    #[test]
    fn h2c_upgrade_is_served_as_http1() -> Result<(), Rejection> {
        let r = admit_h1(
            "/",
            &[
                ("host", "a"),
                ("connection", "Upgrade, HTTP2-Settings, x-drop"),
                ("upgrade", "h2c"),
                ("http2-settings", "AAMAAABkAAQAAP__"),
            ],
        )?;
        assert!(r.headers().get(UPGRADE).is_none());
        assert!(r.headers().get("http2-settings").is_none());
        assert_eq!(r.headers()[CONNECTION], "x-drop");
        Ok(())
    }

    #[test]
    fn proxy_only_headers_are_dropped() -> Result<(), Rejection> {
        let r = admit_h1(
            "/",
            &[
                ("host", "a"),
                ("x-forwarded-client-cert", "By=spiffe://x"),
                ("x-envoy-peer-metadata-id", "sidecar~1.2.3.4~evil"),
                ("x-envoy-peer-metadata", "Cg=="),
                ("x-envoy-internal", "true"),
                ("x-envoy-upstream-rq-timeout-ms", "1"),
                ("x-forwarded-for", "10.0.0.1"),
                ("x-request-id", "r"),
            ],
        )?;
        // A HeaderMap's order after removals is not the insertion order.
        let mut names: Vec<&str> = r.headers().keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["host", "x-forwarded-for", "x-request-id"]);
        Ok(())
    }

    #[test]
    fn too_many_headers() {
        let mut r = req(Version::HTTP_2, "http://a/", &[]);
        for i in 0..=MAX_HEADERS {
            if let Ok(name) = http::HeaderName::from_bytes(format!("x-h{i}").as_bytes()) {
                r.headers_mut().insert(name, HeaderValue::from_static("v"));
            }
        }
        assert_eq!(admit(&mut r), Err(Rejection::HeadersTooLarge));
    }

    #[test]
    fn header_bytes_limit_is_exact() -> Result<(), Rejection> {
        // Names, values and target add up to the limit: admitted; one byte more: refused.
        let fill = MAX_HEADER_BYTES - "/".len() - "host".len() - "a".len() - "x-big".len();
        let value = "v".repeat(fill);
        admit_h1("/", &[("host", "a"), ("x-big", &value)])?;
        let value = "v".repeat(fill + 1);
        assert_eq!(
            admit_h1("/", &[("host", "a"), ("x-big", &value)]).err(),
            Some(Rejection::HeadersTooLarge)
        );
        Ok(())
    }

    #[test]
    fn paths_are_normalised_or_refused() -> Result<(), Rejection> {
        let r = admit_h1("/a/%2e%2e/b?q=/../", &[("host", "a")])?;
        assert_eq!(r.uri().to_string(), "/b?q=/../");
        assert_eq!(
            admit_h1("/a%00", &[("host", "a")]).err(),
            Some(Rejection::PathNormalization(PathError::EscapedNul))
        );
        let mut h2 = req(Version::HTTP_2, "http://reviews:9080/x/./y", &[]);
        admit(&mut h2)?;
        assert_eq!(h2.uri().to_string(), "http://reviews:9080/x/y");
        Ok(())
    }
}
