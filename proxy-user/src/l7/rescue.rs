//! The one place where failures become HTTP responses, with the status codes and bodies an Envoy
//! sidecar sends (Istio users match on these). A gRPC request gets the same reply as a gRPC
//! trailers-only response (HTTP 200, `grpc-status` mapped from the HTTP code, `grpc-message` = body),
//! as Envoy's `sendLocalReply` does.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::outcome::ResponseFlag;
use crate::upstream::pool::ProxyBody;

use super::filters::fault::Abort;

const RESET_PREFIX: &str = "upstream connect error or disconnect/reset before headers. ";

/// A response the proxy generates itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalReply {
    /// No rule matched: 404, empty body (`NR`).
    NoRoute,
    /// Unknown host or subset: 503, empty body (`NC`).
    ClusterNotFound,
    /// No endpoint: 503 `no healthy upstream` (`UH`).
    NoHealthyUpstream,
    /// The last attempt failed to connect: 503 (`UF`).
    ConnectFailure {
        /// Earlier attempts were made (Envoy words the body differently).
        retried: bool,
    },
    /// The last attempt connected but its transport (the TLS handshake of DestinationRule `tls`)
    /// failed: 503 (`UF`), the [`LocalReply::ConnectFailure`] body followed by `, transport failure
    /// reason: <reason>`, as Envoy words it.
    TransportFailure {
        /// Earlier attempts were made.
        retried: bool,
        /// Short reason, e.g. `TLS_error:CERTIFICATE_VERIFY_FAILED:unknown issuer`
        /// (`upstream::tls::TlsHandshakeError::transport_failure_reason`).
        reason: String,
    },
    /// The upstream closed the connection or reset the stream before response headers: 503 (`UC`,
    /// or `UR` for a stream reset).
    UpstreamReset {
        /// Earlier attempts were made.
        retried: bool,
        /// An HTTP/2 stream reset by the peer (`remote reset`) rather than a closed connection.
        remote: bool,
    },
    /// A circuit breaker refused the request: 503 with `x-envoy-overloaded: true` (`UO`).
    Overflow {
        /// Earlier attempts were made.
        retried: bool,
    },
    /// Refused by the memory overload manager: 503 `envoy overloaded` (`OM`).
    Overloaded,
    /// Refused by the client pod's request rate: 429 `local_rate_limited` (`RL`), as Envoy's
    /// local rate limit filter answers.
    RateLimited,
    /// Route or per-try timeout: 504 `upstream request timeout` (`UT`).
    UpstreamTimeout,
    /// A request the proxy cannot forward: 400.
    BadRequest,
    /// A `redirect` rule.
    Redirect { status: u16, location: String },
    /// A `directResponse` rule.
    Direct { status: u16, body: Bytes },
    /// A fault `abort`: the status (or gRPC status) with body `fault filter abort` (`FI`).
    FaultAbort(Abort),
}

impl LocalReply {
    /// Envoy's response flag, if the reply has one.
    pub fn response_flag(&self) -> Option<ResponseFlag> {
        Some(match self {
            LocalReply::NoRoute => ResponseFlag::NoRouteFound,
            LocalReply::ClusterNotFound => ResponseFlag::NoClusterFound,
            LocalReply::NoHealthyUpstream => ResponseFlag::NoHealthyUpstream,
            LocalReply::ConnectFailure { .. } | LocalReply::TransportFailure { .. } => {
                ResponseFlag::UpstreamConnectionFailure
            }
            LocalReply::UpstreamReset { remote: false, .. } => {
                ResponseFlag::UpstreamConnectionTermination
            }
            LocalReply::UpstreamReset { remote: true, .. } => ResponseFlag::UpstreamRemoteReset,
            LocalReply::UpstreamTimeout => ResponseFlag::UpstreamRequestTimeout,
            LocalReply::Overflow { .. } => ResponseFlag::UpstreamOverflow,
            LocalReply::Overloaded => ResponseFlag::OverloadManager,
            LocalReply::RateLimited => ResponseFlag::RateLimited,
            LocalReply::BadRequest => ResponseFlag::DownstreamProtocolError,
            LocalReply::FaultAbort(_) => ResponseFlag::FaultInjected,
            LocalReply::Redirect { .. } | LocalReply::Direct { .. } => return None,
        })
    }

    fn status_and_body(&self) -> (StatusCode, Bytes) {
        let text = |s: &'static str| Bytes::from_static(s.as_bytes());
        let reset = |retried: bool, reason: &str| {
            let lead = if retried {
                "retried and the latest reset reason: "
            } else {
                "reset reason: "
            };
            Bytes::from(format!("{RESET_PREFIX}{lead}{reason}"))
        };
        match self {
            LocalReply::NoRoute => (StatusCode::NOT_FOUND, Bytes::new()),
            LocalReply::ClusterNotFound => (StatusCode::SERVICE_UNAVAILABLE, Bytes::new()),
            LocalReply::NoHealthyUpstream => {
                (StatusCode::SERVICE_UNAVAILABLE, text("no healthy upstream"))
            }
            LocalReply::ConnectFailure { retried } => (
                StatusCode::SERVICE_UNAVAILABLE,
                reset(*retried, "connection failure"),
            ),
            LocalReply::TransportFailure { retried, reason } => (
                StatusCode::SERVICE_UNAVAILABLE,
                reset(
                    *retried,
                    &format!("connection failure, transport failure reason: {reason}"),
                ),
            ),
            LocalReply::UpstreamReset { retried, remote } => (
                StatusCode::SERVICE_UNAVAILABLE,
                reset(
                    *retried,
                    if *remote {
                        "remote reset"
                    } else {
                        "connection termination"
                    },
                ),
            ),
            LocalReply::Overflow { retried } => {
                (StatusCode::SERVICE_UNAVAILABLE, reset(*retried, "overflow"))
            }
            LocalReply::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, text("envoy overloaded")),
            LocalReply::RateLimited => (StatusCode::TOO_MANY_REQUESTS, text("local_rate_limited")),
            LocalReply::UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                text("upstream request timeout"),
            ),
            LocalReply::BadRequest => (StatusCode::BAD_REQUEST, text("Bad Request")),
            LocalReply::Redirect { status, .. } => (
                StatusCode::from_u16(*status).unwrap_or(StatusCode::MOVED_PERMANENTLY),
                Bytes::new(),
            ),
            LocalReply::Direct { status, body } => (
                StatusCode::from_u16(*status).unwrap_or(StatusCode::OK),
                body.clone(),
            ),
            LocalReply::FaultAbort(Abort::Http(status)) => (
                StatusCode::from_u16(*status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                text("fault filter abort"),
            ),
            // Only reached for a non-gRPC request: Envoy sends HTTP 200 then.
            LocalReply::FaultAbort(Abort::Grpc(_)) => (StatusCode::OK, text("fault filter abort")),
        }
    }

    /// The response sent to the client; `grpc` = the request was gRPC (`content-type:
    /// application/grpc*`), which turns the reply into a trailers-only gRPC response.
    pub fn into_response(self, grpc: bool) -> Response<ProxyBody> {
        let (status, body) = self.status_and_body();
        let mut resp = if grpc {
            let code = match &self {
                LocalReply::FaultAbort(Abort::Grpc(code)) => *code,
                _ => grpc_status_for_http(status.as_u16()),
            };
            grpc_trailers_only(code, &body)
        } else {
            self.plain_response(status, body)
        };
        // A protocol error ends an HTTP/1 connection (hyper drops the header on HTTP/2).
        if matches!(self, LocalReply::BadRequest) && !grpc {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        // Envoy marks every circuit-breaker reply, gRPC or not.
        if matches!(self, LocalReply::Overflow { .. }) {
            resp.headers_mut().insert(
                HeaderName::from_static("x-envoy-overloaded"),
                HeaderValue::from_static("true"),
            );
        }
        resp
    }

    fn plain_response(&self, status: StatusCode, body: Bytes) -> Response<ProxyBody> {
        let mut resp = Response::new(Full::new(body.clone()).map_err(|e| match e {}).boxed());
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        if !body.is_empty() {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        if let LocalReply::Redirect { location, .. } = &self {
            if let Ok(v) = HeaderValue::from_str(location) {
                headers.insert(header::LOCATION, v);
            }
        }
        resp
    }
}

/// Envoy's `httpToGrpcStatus` (gRPC's HTTP-to-gRPC status mapping).
pub fn grpc_status_for_http(status: u16) -> u32 {
    match status {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

/// A trailers-only gRPC response: HTTP 200 with `grpc-status`/`grpc-message` in the headers and no
/// body (HTTP/2 sends it as one HEADERS frame with END_STREAM).
pub fn grpc_trailers_only(code: u32, message: &[u8]) -> Response<ProxyBody> {
    let mut resp = Response::new(Full::new(Bytes::new()).map_err(|e| match e {}).boxed());
    let headers: &mut HeaderMap = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(
        HeaderName::from_static("grpc-status"),
        HeaderValue::from(code),
    );
    if !message.is_empty() {
        if let Ok(v) = HeaderValue::from_bytes(&percent_encode_grpc_message(message)) {
            headers.insert(HeaderName::from_static("grpc-message"), v);
        }
    }
    resp
}

/// gRPC's `grpc-message` encoding: printable ASCII except `%` as is, everything else `%XX`.
fn percent_encode_grpc_message(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len());
    for &b in message {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_bodies_and_codes() {
        let cases = [
            (LocalReply::NoRoute, 404, ""),
            (LocalReply::ClusterNotFound, 503, ""),
            (LocalReply::NoHealthyUpstream, 503, "no healthy upstream"),
            (LocalReply::UpstreamTimeout, 504, "upstream request timeout"),
            (
                LocalReply::ConnectFailure { retried: false },
                503,
                "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
            ),
            (
                LocalReply::ConnectFailure { retried: true },
                503,
                "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: connection failure",
            ),
            (
                LocalReply::UpstreamReset { retried: false, remote: false },
                503,
                "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
            ),
            (
                LocalReply::TransportFailure {
                    retried: false,
                    reason: "TLS_error:CERTIFICATE_VERIFY_FAILED:unknown issuer".into(),
                },
                503,
                "upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure reason: TLS_error:CERTIFICATE_VERIFY_FAILED:unknown issuer",
            ),
            (
                LocalReply::TransportFailure {
                    retried: true,
                    reason: "TLS_error:CERTIFICATE_VERIFY_FAILED:certificate revoked".into(),
                },
                503,
                "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: connection failure, transport failure reason: TLS_error:CERTIFICATE_VERIFY_FAILED:certificate revoked",
            ),
            (LocalReply::FaultAbort(Abort::Http(418)), 418, "fault filter abort"),
        ];
        for (reply, code, body) in cases {
            let (status, b) = reply.status_and_body();
            assert_eq!(status.as_u16(), code, "{reply:?}");
            assert_eq!(b, Bytes::from(body), "{reply:?}");
        }
    }

    #[test]
    fn grpc_requests_get_trailers_only_replies() {
        let resp = LocalReply::FaultAbort(Abort::Grpc(14)).into_response(true);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["grpc-status"], "14");
        assert_eq!(resp.headers()["grpc-message"], "fault filter abort");
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        let resp = LocalReply::UpstreamTimeout.into_response(true);
        assert_eq!(resp.headers()["grpc-status"], "14");
        assert_eq!(resp.headers()["grpc-message"], "upstream request timeout");
        let resp = LocalReply::NoRoute.into_response(true);
        assert_eq!(resp.headers()["grpc-status"], "12");
        assert!(!resp.headers().contains_key("grpc-message"));
    }

    #[test]
    fn overflow_is_503_overloaded_with_envoys_body() {
        let resp = LocalReply::Overflow { retried: false }.into_response(false);
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["x-envoy-overloaded"], "true");
        assert_eq!(
            LocalReply::Overflow { retried: false }.status_and_body().1,
            Bytes::from_static(
                b"upstream connect error or disconnect/reset before headers. reset reason: overflow"
            )
        );
        assert_eq!(
            LocalReply::Overflow { retried: false }.response_flag(),
            Some(ResponseFlag::UpstreamOverflow)
        );
        let grpc = LocalReply::Overflow { retried: false }.into_response(true);
        assert_eq!(grpc.headers()["grpc-status"], "14");
        assert_eq!(grpc.headers()["x-envoy-overloaded"], "true");
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(
            percent_encode_grpc_message(b"a b%\n"),
            b"a b%25%0A".to_vec()
        );
    }
}
