//! One classification of every finished upstream attempt and of every request, shared by the
//! things that learn from them: retries now, outlier detection and metrics/access logs next.
//!
//! An attempt ends in exactly one [`AttemptOutcome`]; a request ends with a status and a set of
//! Envoy response flags ([`ResponseFlags`]).

use http::HeaderMap;

use crate::routing::policy::{RetryCondition, RetryOn};

/// How one attempt to an endpoint ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Response headers arrived.
    Response {
        /// HTTP status.
        status: u16,
        /// `grpc-status` in the response *headers* (a trailers-only gRPC response).
        grpc_status: Option<u32>,
        /// The response carries `x-envoy-ratelimited`.
        rate_limited: bool,
    },
    /// No connection could be made (refused, unreachable, connect timeout): nothing was sent.
    ConnectFailure,
    /// The connection or stream broke before response headers.
    Reset {
        /// HTTP/2 `REFUSED_STREAM`: the upstream did not process the request.
        refused_stream: bool,
    },
    /// The per-try timeout expired before response headers.
    PerTryTimeout,
}

impl AttemptOutcome {
    /// Classify response headers.
    pub fn from_response(status: u16, headers: &HeaderMap) -> AttemptOutcome {
        AttemptOutcome::Response {
            status,
            grpc_status: headers
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.trim().parse().ok()),
            rate_limited: headers.contains_key("x-envoy-ratelimited"),
        }
    }

    /// Whether `retry_on` asks for another attempt after this outcome (Envoy's `retry_on` rules).
    pub fn is_retriable(&self, on: &RetryOn) -> bool {
        use RetryCondition as C;
        match *self {
            AttemptOutcome::Response {
                status,
                grpc_status,
                rate_limited,
            } => {
                // A rate-limited response is only retried when asked for explicitly.
                if rate_limited {
                    return on.has(C::EnvoyRateLimited);
                }
                (on.has(C::FiveXx) && status >= 500)
                    || (on.has(C::GatewayError) && matches!(status, 502..=504))
                    || (on.has(C::Retriable4xx) && status == 409)
                    || (on.has(C::RetriableStatusCodes) && on.status_codes.contains(&status))
                    || grpc_status.is_some_and(|g| {
                        (on.has(C::Cancelled) && g == 1)
                            || (on.has(C::DeadlineExceeded) && g == 4)
                            || (on.has(C::ResourceExhausted) && g == 8)
                            || (on.has(C::Internal) && g == 13)
                            || (on.has(C::Unavailable) && g == 14)
                    })
            }
            AttemptOutcome::ConnectFailure => {
                on.has(C::FiveXx)
                    || on.has(C::GatewayError)
                    || on.has(C::Reset)
                    || on.has(C::ResetBeforeRequest)
                    || on.has(C::ConnectFailure)
            }
            AttemptOutcome::Reset { refused_stream } => {
                on.has(C::FiveXx)
                    || on.has(C::GatewayError)
                    || on.has(C::Reset)
                    || (refused_stream
                        && (on.has(C::RefusedStream) || on.has(C::ResetBeforeRequest)))
            }
            AttemptOutcome::PerTryTimeout => {
                on.has(C::FiveXx) || on.has(C::GatewayError) || on.has(C::Reset)
            }
        }
    }

    /// The response flag this outcome gives a request that ends with it (`None` for a response).
    pub fn flag(&self) -> Option<ResponseFlag> {
        match self {
            AttemptOutcome::Response { .. } => None,
            AttemptOutcome::ConnectFailure => Some(ResponseFlag::UpstreamConnectionFailure),
            AttemptOutcome::Reset { .. } => Some(ResponseFlag::UpstreamConnectionTermination),
            AttemptOutcome::PerTryTimeout => Some(ResponseFlag::UpstreamRequestTimeout),
        }
    }

    /// Whether the endpoint failed in a way outlier detection counts as a gateway error.
    pub fn is_gateway_error(&self) -> bool {
        match self {
            AttemptOutcome::Response { status, .. } => matches!(status, 502..=504),
            _ => true,
        }
    }
}

/// Envoy's response flags (`%RESPONSE_FLAGS%`), the ones Keel can set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ResponseFlag {
    /// `NR`: no route.
    NoRouteFound = 1 << 0,
    /// `NC`: no cluster.
    NoClusterFound = 1 << 1,
    /// `UH`: no healthy upstream.
    NoHealthyUpstream = 1 << 2,
    /// `UF`: upstream connection failure.
    UpstreamConnectionFailure = 1 << 3,
    /// `UC`: upstream connection termination.
    UpstreamConnectionTermination = 1 << 4,
    /// `UT`: upstream request timeout.
    UpstreamRequestTimeout = 1 << 5,
    /// `URX`: retry limit exceeded.
    UpstreamRetryLimitExceeded = 1 << 6,
    /// `DI`: fault delay injected.
    DelayInjected = 1 << 7,
    /// `FI`: fault abort injected.
    FaultInjected = 1 << 8,
    /// `UO`: upstream overflow (circuit breaking).
    UpstreamOverflow = 1 << 9,
    /// `DPE`: downstream protocol error.
    DownstreamProtocolError = 1 << 10,
    /// `UR`: upstream remote reset.
    UpstreamRemoteReset = 1 << 11,
    /// `OM`: refused by the overload manager.
    OverloadManager = 1 << 12,
    /// `RL`: refused by a (local) rate limit.
    RateLimited = 1 << 13,
}

impl ResponseFlag {
    /// Envoy's short name.
    pub fn short(self) -> &'static str {
        match self {
            ResponseFlag::NoRouteFound => "NR",
            ResponseFlag::NoClusterFound => "NC",
            ResponseFlag::NoHealthyUpstream => "UH",
            ResponseFlag::UpstreamConnectionFailure => "UF",
            ResponseFlag::UpstreamConnectionTermination => "UC",
            ResponseFlag::UpstreamRequestTimeout => "UT",
            ResponseFlag::UpstreamRetryLimitExceeded => "URX",
            ResponseFlag::DelayInjected => "DI",
            ResponseFlag::FaultInjected => "FI",
            ResponseFlag::UpstreamOverflow => "UO",
            ResponseFlag::DownstreamProtocolError => "DPE",
            ResponseFlag::UpstreamRemoteReset => "UR",
            ResponseFlag::OverloadManager => "OM",
            ResponseFlag::RateLimited => "RL",
        }
    }

    const ALL: [ResponseFlag; 14] = [
        ResponseFlag::NoHealthyUpstream,
        ResponseFlag::UpstreamConnectionFailure,
        ResponseFlag::UpstreamConnectionTermination,
        ResponseFlag::UpstreamRemoteReset,
        ResponseFlag::UpstreamRequestTimeout,
        ResponseFlag::NoRouteFound,
        ResponseFlag::NoClusterFound,
        ResponseFlag::DelayInjected,
        ResponseFlag::FaultInjected,
        ResponseFlag::UpstreamOverflow,
        ResponseFlag::UpstreamRetryLimitExceeded,
        ResponseFlag::DownstreamProtocolError,
        ResponseFlag::OverloadManager,
        ResponseFlag::RateLimited,
    ];
}

/// The flags of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ResponseFlags(u16);

impl ResponseFlags {
    /// Add a flag.
    pub fn set(&mut self, flag: ResponseFlag) {
        self.0 |= flag as u16;
    }

    /// Whether `flag` is set.
    pub fn has(&self, flag: ResponseFlag) -> bool {
        self.0 & flag as u16 != 0
    }
}

impl std::fmt::Display for ResponseFlags {
    /// Envoy's `%RESPONSE_FLAGS%`: comma-separated short names, `-` when none.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for flag in ResponseFlag::ALL {
            if self.has(flag) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(flag.short())?;
                first = false;
            }
        }
        if first {
            f.write_str("-")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16) -> AttemptOutcome {
        AttemptOutcome::Response {
            status,
            grpc_status: None,
            rate_limited: false,
        }
    }

    #[test]
    fn default_policy_retries_connect_failures_and_grpc_unavailable_not_503() {
        let on = RetryOn::parse(crate::policy::validate::DEFAULT_RETRY_ON);
        assert!(AttemptOutcome::ConnectFailure.is_retriable(&on));
        assert!(AttemptOutcome::Reset {
            refused_stream: true
        }
        .is_retriable(&on));
        assert!(!AttemptOutcome::Reset {
            refused_stream: false
        }
        .is_retriable(&on));
        assert!(!resp(503).is_retriable(&on));
        assert!(!AttemptOutcome::PerTryTimeout.is_retriable(&on));
        let grpc_unavailable = AttemptOutcome::Response {
            status: 200,
            grpc_status: Some(14),
            rate_limited: false,
        };
        assert!(grpc_unavailable.is_retriable(&on));
    }

    #[test]
    fn tokens_select_what_is_retried() {
        let five_xx = RetryOn::parse(&["5xx"]);
        assert!(resp(500).is_retriable(&five_xx));
        assert!(resp(503).is_retriable(&five_xx));
        assert!(!resp(404).is_retriable(&five_xx));
        assert!(AttemptOutcome::PerTryTimeout.is_retriable(&five_xx));
        assert!(AttemptOutcome::ConnectFailure.is_retriable(&five_xx));

        let gateway = RetryOn::parse(&["gateway-error"]);
        assert!(resp(502).is_retriable(&gateway));
        assert!(!resp(500).is_retriable(&gateway));

        let codes = RetryOn::parse(&["503"]);
        assert!(resp(503).is_retriable(&codes));
        assert!(!resp(500).is_retriable(&codes));

        let conflict = RetryOn::parse(&["retriable-4xx"]);
        assert!(resp(409).is_retriable(&conflict));
        assert!(!resp(400).is_retriable(&conflict));

        let limited = AttemptOutcome::Response {
            status: 503,
            grpc_status: None,
            rate_limited: true,
        };
        assert!(!limited.is_retriable(&five_xx));
        assert!(limited.is_retriable(&RetryOn::parse(&["envoy-ratelimited"])));
    }

    #[test]
    fn flags_print_like_envoy() {
        let mut f = ResponseFlags::default();
        assert_eq!(f.to_string(), "-");
        f.set(ResponseFlag::UpstreamRetryLimitExceeded);
        f.set(ResponseFlag::UpstreamConnectionFailure);
        assert_eq!(f.to_string(), "UF,URX");
    }
}
