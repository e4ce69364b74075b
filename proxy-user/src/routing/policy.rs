//! Route policy: what the request path does with a request once a rule matched — timeout, retries,
//! fault, rewrite, header operations, mirrors, CORS — resolved once per rule when routing tables are
//! built, never per request (the request path only reads these values).
//!
//! Defaults are Istio's for an outbound sidecar route (§1.10, §1.11): the mesh's route timeout when
//! the rule sets none, and, when the rule has no `retries`, 2 retries on
//! `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes` with no status codes
//! (so a plain 503 is not retried).

use std::time::Duration;

use crate::l7::filters::headers::{self, HeaderMutation};
use crate::policy::{
    CorsPolicy, Fault, Headers, HttpAction, HttpRoute, MeshConfig, Retries, Rewrite,
};

/// Envoy's default base interval of the retry back-off.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(25);
/// Retries Istio configures when a route has no `retries`.
pub const DEFAULT_NUM_RETRIES: u32 = 2;

/// One `retryOn` condition (Envoy's `retry_on` tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum RetryCondition {
    /// Any 5xx response, or no response at all (connect failure, reset, per-try timeout).
    FiveXx = 1 << 0,
    /// 502, 503, 504, or no response at all.
    GatewayError = 1 << 1,
    /// No response at all (disconnect, reset, per-try timeout, connect failure).
    Reset = 1 << 2,
    /// No response, and no request byte was sent upstream.
    ResetBeforeRequest = 1 << 3,
    /// The connection to the endpoint could not be made.
    ConnectFailure = 1 << 4,
    /// The response carries `x-envoy-ratelimited`.
    EnvoyRateLimited = 1 << 5,
    /// A 409 response.
    Retriable4xx = 1 << 6,
    /// The upstream refused the HTTP/2 stream (`REFUSED_STREAM`).
    RefusedStream = 1 << 7,
    /// The response status is one of the configured codes.
    RetriableStatusCodes = 1 << 8,
    /// Response headers named by the request's `x-envoy-retriable-header-names` (Istio cannot
    /// configure matchers; accepted, never true here).
    RetriableHeaders = 1 << 9,
    /// HTTP/3 only; never true for Keel.
    Http3PostConnectFailure = 1 << 10,
    /// gRPC status 1 in the response headers.
    Cancelled = 1 << 11,
    /// gRPC status 4 in the response headers.
    DeadlineExceeded = 1 << 12,
    /// gRPC status 13 in the response headers.
    Internal = 1 << 13,
    /// gRPC status 8 in the response headers.
    ResourceExhausted = 1 << 14,
    /// gRPC status 14 in the response headers.
    Unavailable = 1 << 15,
}

impl RetryCondition {
    /// The condition a `retryOn` token names (bare status codes are handled by [`RetryOn::parse`]).
    pub fn from_token(token: &str) -> Option<RetryCondition> {
        Some(match token {
            "5xx" => RetryCondition::FiveXx,
            "gateway-error" => RetryCondition::GatewayError,
            "reset" => RetryCondition::Reset,
            "reset-before-request" => RetryCondition::ResetBeforeRequest,
            "connect-failure" => RetryCondition::ConnectFailure,
            "envoy-ratelimited" => RetryCondition::EnvoyRateLimited,
            "retriable-4xx" => RetryCondition::Retriable4xx,
            "refused-stream" => RetryCondition::RefusedStream,
            "retriable-status-codes" => RetryCondition::RetriableStatusCodes,
            "retriable-headers" => RetryCondition::RetriableHeaders,
            "http3-post-connect-failure" => RetryCondition::Http3PostConnectFailure,
            "cancelled" => RetryCondition::Cancelled,
            "deadline-exceeded" => RetryCondition::DeadlineExceeded,
            "internal" => RetryCondition::Internal,
            "resource-exhausted" => RetryCondition::ResourceExhausted,
            "unavailable" => RetryCondition::Unavailable,
            _ => return None,
        })
    }
}

/// A parsed `retryOn`: a set of conditions plus the retriable status codes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryOn {
    conditions: u32,
    /// Statuses retried under `retriable-status-codes` (Istio's bare-code tokens).
    pub status_codes: Vec<u16>,
}

impl RetryOn {
    /// Parse validated tokens the way Istio translates them: tokens are trimmed, a 3-digit code goes
    /// to the status codes and switches `retriable-status-codes` on, unknown tokens are ignored
    /// (validation already rejected them).
    pub fn parse<S: AsRef<str>>(tokens: &[S]) -> RetryOn {
        let mut on = RetryOn::default();
        for token in tokens {
            let token = token.as_ref().trim();
            if let Ok(code) = token.parse::<u16>() {
                on.status_codes.push(code);
                on.conditions |= RetryCondition::RetriableStatusCodes as u32;
            } else if let Some(c) = RetryCondition::from_token(token) {
                on.conditions |= c as u32;
            }
        }
        on.status_codes.sort_unstable();
        on.status_codes.dedup();
        on
    }

    /// Whether `condition` is on.
    pub fn has(&self, condition: RetryCondition) -> bool {
        self.conditions & condition as u32 != 0
    }
}

/// When and how often a failed attempt is tried again (Envoy's `RetryPolicy` as Istio sets it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (`attempts`); 0 disables retrying.
    pub num_retries: u32,
    /// What is retried.
    pub retry_on: RetryOn,
    /// Timeout of each attempt until response headers; `None` = only the route timeout.
    pub per_try_timeout: Option<Duration>,
    /// Base interval of the fully jittered exponential back-off.
    pub backoff_base: Duration,
    /// Retries avoid endpoints already tried (`retryIgnorePreviousHosts`); `None` = Istio's
    /// default, see [`RetryPolicy::avoids_previous_hosts`].
    pub ignore_previous_hosts: Option<bool>,
}

impl RetryPolicy {
    /// Istio's policy for a route without `retries`.
    pub fn istio_default() -> RetryPolicy {
        RetryPolicy {
            num_retries: DEFAULT_NUM_RETRIES,
            retry_on: RetryOn::parse(crate::policy::validate::DEFAULT_RETRY_ON),
            per_try_timeout: None,
            backoff_base: DEFAULT_RETRY_BACKOFF,
            ignore_previous_hosts: None,
        }
    }

    /// No retries at all (Istio's passthrough routes).
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            num_retries: 0,
            retry_on: RetryOn::default(),
            per_try_timeout: None,
            backoff_base: DEFAULT_RETRY_BACKOFF,
            ignore_previous_hosts: Some(false),
        }
    }

    /// The policy of a route's `retries` block (validated).
    pub fn from_spec(r: &Retries) -> RetryPolicy {
        RetryPolicy {
            num_retries: r.attempts,
            retry_on: RetryOn::parse(&r.retry_on),
            per_try_timeout: r.per_try_timeout,
            backoff_base: r.backoff.unwrap_or(DEFAULT_RETRY_BACKOFF),
            ignore_previous_hosts: r.retry_ignore_previous_hosts,
        }
    }

    /// Whether retries avoid endpoints already tried: as set, else yes unless the request is
    /// hashed to its endpoint (Istio drops the `previous_hosts` predicate from the default policy
    /// of a route whose single destination has a consistent-hash policy, so retries stay on the
    /// hashed host).
    pub fn avoids_previous_hosts(&self, hashed: bool) -> bool {
        self.ignore_previous_hosts.unwrap_or(!hashed)
    }

    /// How long to wait before retry number `retry` (1-based): uniformly in
    /// `[0, (2^retry - 1) * base)`, the upper end capped at `10 * base` (Envoy's jittered back-off).
    /// `draw` is a uniform sample in `[0, 1)`.
    pub fn backoff(&self, retry: u32, draw: f64) -> Duration {
        let base = self.backoff_base;
        let factor = (1u64 << retry.min(16)).saturating_sub(1).max(1);
        let ceiling = base
            .saturating_mul(u32::try_from(factor).unwrap_or(u32::MAX))
            .min(base.saturating_mul(10));
        ceiling.mul_f64(draw.clamp(0.0, 1.0))
    }
}

/// Header operations of one destination of a rule (route and destination level merged in Envoy's
/// order) and the authority it sends.
#[derive(Debug, Clone, Default)]
pub struct Shaping {
    /// Applied to the request sent upstream.
    pub request: Vec<HeaderMutation>,
    /// Applied to the response sent to the client.
    pub response: Vec<HeaderMutation>,
    /// `rewrite.authority` or an `:authority`/`host` set/add.
    pub authority: Option<String>,
}

impl Shaping {
    fn compile(route: &HttpRoute, destination: &Headers) -> Shaping {
        Shaping {
            request: headers::request_mutations(&route.headers, destination, route.weighted),
            response: headers::response_mutations(&route.headers, destination, route.weighted),
            authority: headers::authority_rewrite(
                route.rewrite.as_ref(),
                &route.headers,
                destination,
            ),
        }
    }
}

/// Everything a matched rule asks of the request path, resolved once per rule.
#[derive(Debug, Clone)]
pub struct RoutePolicy {
    /// Route name for logs (`default` for the default route).
    pub name: String,
    /// Route timeout; `None` = disabled.
    pub timeout: Option<Duration>,
    /// Retry policy (Istio's default when the rule has none).
    pub retry: RetryPolicy,
    /// Fault injection.
    pub fault: Option<Fault>,
    /// Path and authority rewrite.
    pub rewrite: Option<Rewrite>,
    /// CORS.
    pub cors: Option<CorsPolicy>,
    /// Header operations and authority rewrite for each destination of the rule (by index in its
    /// `route` list), compiled in the order Envoy applies them.
    pub destinations: Vec<Shaping>,
    /// Route-level operations only: for the rule's local replies (redirect, direct response).
    pub route_only: Shaping,
    /// Append `-shadow` to the host of mirrored requests.
    pub mirror_shadow_suffix: bool,
}

impl RoutePolicy {
    /// The policy of a VirtualService rule under `mesh`.
    pub fn for_route(route: &HttpRoute, mesh: &MeshConfig) -> RoutePolicy {
        let timeout = route
            .timeout
            .or(mesh.default_http_timeout)
            .filter(|t| !t.is_zero());
        let mut retry = route
            .retries
            .as_ref()
            .map_or_else(RetryPolicy::istio_default, RetryPolicy::from_spec);
        // Envoy ignores a per-try timeout that is not shorter than the route timeout.
        if let (Some(per_try), Some(route_timeout)) = (retry.per_try_timeout, timeout) {
            if per_try >= route_timeout {
                retry.per_try_timeout = None;
            }
        }
        let destinations = match &route.action {
            HttpAction::Route(dests) => dests
                .iter()
                .map(|d| Shaping::compile(route, &d.headers))
                .collect(),
            _ => Vec::new(),
        };
        RoutePolicy {
            name: route.name.clone().unwrap_or_default(),
            timeout,
            retry,
            fault: route.fault.clone(),
            rewrite: route.rewrite.clone(),
            cors: route.cors_policy.clone(),
            destinations,
            route_only: Shaping::compile(route, &Headers::default()),
            mirror_shadow_suffix: mesh.mirror_shadow_suffix,
        }
    }

    /// The default route of a service without an applicable VirtualService: mesh timeout, Istio's
    /// default retries.
    pub fn default_route(mesh: &MeshConfig) -> RoutePolicy {
        RoutePolicy {
            name: "default".to_string(),
            timeout: mesh.default_http_timeout.filter(|t| !t.is_zero()),
            retry: RetryPolicy::istio_default(),
            fault: None,
            rewrite: None,
            cors: None,
            destinations: Vec::new(),
            route_only: Shaping::default(),
            mirror_shadow_suffix: mesh.mirror_shadow_suffix,
        }
    }

    /// Istio's `allow_any` route to the `PassthroughCluster`: no timeout, no retries.
    pub fn passthrough() -> RoutePolicy {
        RoutePolicy {
            name: "allow_any".to_string(),
            timeout: None,
            retry: RetryPolicy::none(),
            fault: None,
            rewrite: None,
            cors: None,
            destinations: Vec::new(),
            route_only: Shaping::default(),
            mirror_shadow_suffix: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_routes_keep_retries_on_their_host_unless_told() {
        let default = RetryPolicy::istio_default();
        assert!(default.avoids_previous_hosts(false));
        assert!(!default.avoids_previous_hosts(true));
        let explicit = |v: Option<bool>| RetryPolicy {
            ignore_previous_hosts: v,
            ..RetryPolicy::istio_default()
        };
        assert!(explicit(Some(true)).avoids_previous_hosts(true));
        assert!(!explicit(Some(false)).avoids_previous_hosts(false));
        assert!(!RetryPolicy::none().avoids_previous_hosts(false));
    }

    fn route(yaml_retries: Option<Retries>, timeout: Option<Duration>) -> HttpRoute {
        HttpRoute {
            name: None,
            matches: Vec::new(),
            action: crate::policy::HttpAction::Route(Vec::new()),
            rewrite: None,
            timeout,
            retries: yaml_retries,
            fault: None,
            mirrors: Vec::new(),
            cors_policy: None,
            headers: Default::default(),
            weighted: false,
        }
    }

    fn retries(attempts: u32, retry_on: &[&str], per_try: Option<u64>) -> Retries {
        Retries {
            attempts,
            per_try_timeout: per_try.map(Duration::from_millis),
            retry_on: retry_on.iter().map(|s| s.to_string()).collect(),
            retry_remote_localities: false,
            backoff: None,
            retry_ignore_previous_hosts: None,
        }
    }

    #[test]
    fn no_retries_block_means_istio_default() {
        let mesh = MeshConfig::default();
        let p = RoutePolicy::for_route(&route(None, None), &mesh);
        assert_eq!(p.retry.num_retries, 2);
        assert!(p.retry.retry_on.has(RetryCondition::ConnectFailure));
        assert!(p.retry.retry_on.has(RetryCondition::RefusedStream));
        assert!(p.retry.retry_on.has(RetryCondition::Unavailable));
        assert!(p.retry.retry_on.has(RetryCondition::Cancelled));
        assert!(p.retry.retry_on.has(RetryCondition::RetriableStatusCodes));
        assert!(!p.retry.retry_on.has(RetryCondition::FiveXx));
        // No codes: a plain 503 is not retried by default (Istio >= 1.24).
        assert!(p.retry.retry_on.status_codes.is_empty());
        assert_eq!(p.timeout, mesh.default_http_timeout);
    }

    #[test]
    fn bare_codes_enable_retriable_status_codes() {
        let on = RetryOn::parse(&["503", "reset", " 5xx"]);
        assert_eq!(on.status_codes, vec![503]);
        assert!(on.has(RetryCondition::RetriableStatusCodes));
        assert!(on.has(RetryCondition::Reset));
        assert!(on.has(RetryCondition::FiveXx));
        assert!(!on.has(RetryCondition::GatewayError));
    }

    #[test]
    fn per_try_timeout_not_shorter_than_route_timeout_is_ignored() {
        let mesh = MeshConfig::default();
        let r = route(
            Some(retries(2, &["5xx"], Some(2000))),
            Some(Duration::from_secs(2)),
        );
        assert_eq!(
            RoutePolicy::for_route(&r, &mesh).retry.per_try_timeout,
            None
        );
        let r = route(
            Some(retries(5, &["5xx"], Some(1000))),
            Some(Duration::from_secs(3)),
        );
        assert_eq!(
            RoutePolicy::for_route(&r, &mesh).retry.per_try_timeout,
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn zero_timeout_disables_and_attempts_zero_disables_retries() {
        let mesh = MeshConfig::default();
        let r = route(Some(retries(0, &[], None)), Some(Duration::ZERO));
        let p = RoutePolicy::for_route(&r, &mesh);
        assert_eq!(p.timeout, None);
        assert_eq!(p.retry.num_retries, 0);
    }

    #[test]
    fn backoff_is_jittered_exponential_and_capped() {
        let p = RetryPolicy::istio_default();
        let ms = |retry, draw| p.backoff(retry, draw).as_secs_f64() * 1000.0;
        assert!(ms(1, 0.999) < 25.0 && ms(1, 0.999) > 24.0);
        assert!(ms(2, 0.999) < 75.0 && ms(2, 0.999) > 74.0);
        assert!(ms(3, 0.999) < 175.0);
        // Capped at 10 x base.
        assert!(ms(10, 0.999) <= 250.0 && ms(10, 0.999) > 249.0);
        assert_eq!(ms(3, 0.0), 0.0);
    }

    #[test]
    fn passthrough_has_no_timeout_and_no_retries() {
        let p = RoutePolicy::passthrough();
        assert_eq!(p.timeout, None);
        assert_eq!(p.retry.num_retries, 0);
    }
}
