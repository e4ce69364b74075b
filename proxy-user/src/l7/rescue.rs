//! The one place where failures become HTTP responses, with the status codes and bodies an Envoy
//! sidecar sends (Istio users match on these).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::upstream::pool::ProxyBody;

/// A response the proxy generates itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalReply {
    /// No rule matched: 404, empty body (`NR`).
    NoRoute,
    /// Unknown host or subset: 503, empty body (`NC`).
    ClusterNotFound,
    /// No endpoint: 503 `no healthy upstream` (`UH`).
    NoHealthyUpstream,
    /// Every attempt failed to connect: 503 (`UF`).
    ConnectFailure,
    /// The upstream reset the stream before a response: 503 (`UR`).
    UpstreamReset,
    /// Route timeout: 504 `upstream request timeout` (`UT`).
    UpstreamTimeout,
    /// A request the proxy cannot forward: 400.
    BadRequest,
    /// A `redirect` rule.
    Redirect { status: u16, location: String },
    /// A `directResponse` rule.
    Direct { status: u16, body: Bytes },
}

impl LocalReply {
    /// Envoy's response flag for access logs and metrics.
    pub fn response_flag(&self) -> &'static str {
        match self {
            LocalReply::NoRoute => "NR",
            LocalReply::ClusterNotFound => "NC",
            LocalReply::NoHealthyUpstream => "UH",
            LocalReply::ConnectFailure => "UF",
            LocalReply::UpstreamReset => "UR",
            LocalReply::UpstreamTimeout => "UT",
            LocalReply::BadRequest => "DPE",
            LocalReply::Redirect { .. } | LocalReply::Direct { .. } => "-",
        }
    }

    fn status_and_body(&self) -> (StatusCode, Bytes) {
        let text = |s: &'static str| Bytes::from_static(s.as_bytes());
        match self {
            LocalReply::NoRoute => (StatusCode::NOT_FOUND, Bytes::new()),
            LocalReply::ClusterNotFound => (StatusCode::SERVICE_UNAVAILABLE, Bytes::new()),
            LocalReply::NoHealthyUpstream => {
                (StatusCode::SERVICE_UNAVAILABLE, text("no healthy upstream"))
            }
            LocalReply::ConnectFailure => (
                StatusCode::SERVICE_UNAVAILABLE,
                text("upstream connect error or disconnect/reset before headers. reset reason: connection failure"),
            ),
            LocalReply::UpstreamReset => (
                StatusCode::SERVICE_UNAVAILABLE,
                text("upstream connect error or disconnect/reset before headers. reset reason: connection termination"),
            ),
            LocalReply::UpstreamTimeout => {
                (StatusCode::GATEWAY_TIMEOUT, text("upstream request timeout"))
            }
            LocalReply::BadRequest => (StatusCode::BAD_REQUEST, text("Bad Request")),
            LocalReply::Redirect { status, .. } => (
                StatusCode::from_u16(*status).unwrap_or(StatusCode::MOVED_PERMANENTLY),
                Bytes::new(),
            ),
            LocalReply::Direct { status, body } => (
                StatusCode::from_u16(*status).unwrap_or(StatusCode::OK),
                body.clone(),
            ),
        }
    }

    /// The response sent to the client.
    pub fn into_response(self) -> Response<ProxyBody> {
        let (status, body) = self.status_and_body();
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
        ];
        for (reply, code, body) in cases {
            let (status, b) = reply.status_and_body();
            assert_eq!(status.as_u16(), code, "{reply:?}");
            assert_eq!(b, Bytes::from(body), "{reply:?}");
        }
    }
}
