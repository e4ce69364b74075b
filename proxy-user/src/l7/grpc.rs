//! gRPC specifics of the request path: recognising a gRPC request and its `grpc-timeout`.

use std::time::Duration;

use http::HeaderMap;

/// A gRPC request: `content-type: application/grpc` or `application/grpc+proto` etc. (Envoy's
/// `Grpc::Common::isGrpcRequestHeaders`; `application/grpc-web` is not gRPC on the wire).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.trim();
            ct == "application/grpc"
                || ct
                    .strip_prefix("application/grpc")
                    .is_some_and(|rest| rest.starts_with('+') || rest.starts_with(';'))
        })
}

/// `grpc-timeout`: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`); `None` when absent
/// or malformed (then it is ignored, as Envoy does).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let raw = headers.get("grpc-timeout")?.to_str().ok()?.trim();
    if raw.len() < 2 || raw.len() > 9 {
        return None;
    }
    let (digits, unit) = raw.split_at(raw.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.checked_mul(3600)?),
        "M" => Duration::from_secs(value.checked_mul(60)?),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

/// The timeout of a request: for gRPC, `grpc-timeout` capped by the route timeout (Istio sets
/// `max_grpc_timeout` to the route timeout; with the route timeout disabled the header alone
/// applies); otherwise the route timeout.
pub fn effective_timeout(
    route: Option<Duration>,
    grpc: bool,
    headers: &HeaderMap,
) -> Option<Duration> {
    let header = grpc.then(|| timeout(headers)).flatten();
    match (route, header) {
        (Some(r), Some(h)) => Some(r.min(h)),
        (r, h) => r.or(h),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn recognises_grpc_content_types() {
        assert!(is_grpc(&headers(&[("content-type", "application/grpc")])));
        assert!(is_grpc(&headers(&[(
            "content-type",
            "application/grpc+proto"
        )])));
        assert!(!is_grpc(&headers(&[(
            "content-type",
            "application/grpc-web"
        )])));
        assert!(!is_grpc(&headers(&[("content-type", "application/json")])));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn parses_grpc_timeouts() {
        let t = |v| timeout(&headers(&[("grpc-timeout", v)]));
        assert_eq!(t("1S"), Some(Duration::from_secs(1)));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("2M"), Some(Duration::from_secs(120)));
        assert_eq!(t("123456789S"), None);
        assert_eq!(t("S"), None);
        assert_eq!(t("-1S"), None);
        assert_eq!(t("10x"), None);
    }

    #[test]
    fn route_timeout_caps_grpc_timeout() {
        let h = headers(&[("grpc-timeout", "5S")]);
        let s = Duration::from_secs;
        assert_eq!(effective_timeout(Some(s(2)), true, &h), Some(s(2)));
        assert_eq!(effective_timeout(Some(s(9)), true, &h), Some(s(5)));
        assert_eq!(effective_timeout(None, true, &h), Some(s(5)));
        assert_eq!(effective_timeout(Some(s(9)), false, &h), Some(s(9)));
        assert_eq!(effective_timeout(None, false, &h), None);
    }
}
