//! The router filter: send the shaped request to an endpoint of the chosen target, classify each
//! attempt ([`AttemptOutcome`]) and retry as the route's [`RetryPolicy`] says (§1.11): retriable
//! outcomes only, jittered exponential back-off, previous hosts avoided, the body replayed from its
//! recording. The route timeout is applied by the caller around all of this.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, HOST};
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body_util::BodyExt;

use crate::accept::ConnContext;
use crate::outcome::{AttemptOutcome, ResponseFlag, ResponseFlags};
use crate::routing::policy::RetryPolicy;
use crate::routing::Target;
use crate::upstream::outlier::HostResult;
use crate::upstream::pool::{BoxError, PooledBody, ProxyBody, RetrySlot};
use crate::upstream::{PickError, Picked};

use super::body::RecordedBody;
use super::rescue::LocalReply;

/// The request as every attempt sends it, after the request filters ran: attempts differ only in
/// the endpoint, `x-envoy-attempt-count` and the body reader.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    /// Method.
    pub method: Method,
    /// `:path` after rewrites.
    pub path_and_query: String,
    /// `:authority` / `Host` after rewrites.
    pub authority: String,
    /// End-to-end headers after header operations (no hop-by-hop headers, no `host`).
    pub headers: HeaderMap,
}

impl UpstreamRequest {
    /// The request for one attempt to `endpoint`. HTTP/1.1: an origin-form URI, `Host` carries the
    /// authority; HTTP/2: `:authority` carries it. The pool picks the connection by endpoint.
    pub fn build(
        &self,
        endpoint: SocketAddr,
        attempt: u32,
        upstream_h2: bool,
        body: ProxyBody,
    ) -> Result<Request<ProxyBody>, LocalReply> {
        let uri: Uri = if upstream_h2 {
            let authority = if self.authority.is_empty() {
                endpoint.to_string()
            } else {
                self.authority.clone()
            };
            format!("http://{authority}{}", self.path_and_query).parse()
        } else {
            self.path_and_query.parse()
        }
        .map_err(|_| LocalReply::BadRequest)?;
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = if upstream_h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        let headers = req.headers_mut();
        headers.clone_from(&self.headers);
        if !upstream_h2 {
            if let Ok(v) = HeaderValue::from_str(&self.authority) {
                headers.insert(HOST, v);
            }
        }
        headers.insert(
            HeaderName::from_static("x-envoy-attempt-count"),
            HeaderValue::from(attempt),
        );
        Ok(req)
    }
}

/// How a request is hashed to its endpoint.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hashing {
    /// The request's hash key (consistent-hash clusters).
    pub hash: Option<u64>,
    /// The route hashes requests to one host: retries do not avoid tried hosts unless the route's
    /// `retryIgnorePreviousHosts` says so.
    pub stay_on_host: bool,
}

/// Send `req` to `target` with retries; the response and the endpoint that answered. The body holds the endpoint's load
/// accounting until it is done.
#[allow(clippy::too_many_arguments)]
pub async fn forward(
    ctx: &ConnContext,
    target: &Target,
    retry: &RetryPolicy,
    hashing: Hashing,
    req: &UpstreamRequest,
    body: &RecordedBody,
    upstream_h2: bool,
    flags: &mut ResponseFlags,
) -> Result<(Response<ProxyBody>, SocketAddr), LocalReply> {
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut attempt: u32 = 0;
    // The retry in progress holds its circuit-breaker slot until the next decision (Envoy's
    // `RetryState` releases it when it decides again or the request ends).
    let mut _retrying: Option<RetrySlot> = None;
    loop {
        attempt += 1;
        let picked = pick(ctx, target, retry, hashing, &tried).await?;
        let cluster_stats = picked.client().stats();
        let endpoint = picked.addr();
        tried.push(endpoint);
        let upstream_req = req.build(endpoint, attempt, upstream_h2, body.attempt())?;
        let send = picked
            .client()
            .pool()
            .send(endpoint, upstream_h2, upstream_req);
        let result = match retry.per_try_timeout {
            Some(t) => tokio::time::timeout(t, send).await.ok(),
            None => Some(send.await),
        };
        let mut stream_reset = false;
        let mut transport_failure = None;
        let (outcome, response) = match result {
            None => {
                ctx.stats.upstream_rq_per_try_timeout.inc();
                cluster_stats.inc(|s| &s.upstream_rq_total);
                cluster_stats.inc(|s| &s.upstream_rq_per_try_timeout);
                cluster_stats.code(504);
                (AttemptOutcome::PerTryTimeout, None)
            }
            Some(Ok(resp)) => {
                cluster_stats.inc(|s| &s.upstream_rq_total);
                cluster_stats.inc(|s| &s.upstream_rq_completed);
                cluster_stats.code(resp.status().as_u16());
                (
                    AttemptOutcome::from_response(resp.status().as_u16(), resp.headers()),
                    Some(resp),
                )
            }
            // A circuit breaker refused: 503 UO at once, never retried, not an endpoint failure.
            Some(Err(e)) if e.is_overflow() => {
                flags.set(ResponseFlag::UpstreamOverflow);
                return Err(LocalReply::Overflow {
                    retried: attempt > 1,
                });
            }
            Some(Err(e)) if e.is_connect() => {
                tracing::debug!(cluster = %target.key(), %endpoint, error = %e, "upstream connect failed");
                transport_failure = e.transport_failure().map(str::to_owned);
                cluster_stats.code(503);
                (AttemptOutcome::ConnectFailure, None)
            }
            // The client's body broke mid-request (bad chunk framing, a cut connection): Envoy
            // answers 400 and blames the downstream (`DPE`), not the upstream.
            Some(Err(e)) if body.client_failed() => {
                tracing::debug!(cluster = %target.key(), %endpoint, error = %e, "client request body failed");
                cluster_stats.inc(|s| &s.upstream_rq_total);
                flags.set(ResponseFlag::DownstreamProtocolError);
                return Err(LocalReply::BadRequest);
            }
            Some(Err(e)) => {
                tracing::debug!(cluster = %target.key(), %endpoint, error = %e, "upstream request failed");
                stream_reset = e.is_stream_reset();
                cluster_stats.inc(|s| &s.upstream_rq_total);
                cluster_stats.code(503);
                (
                    AttemptOutcome::Reset {
                        refused_stream: e.is_refused_stream(),
                    },
                    None,
                )
            }
        };
        // Every attempt that reached an endpoint counts for outlier detection (overflow returned
        // above and never does).
        picked
            .client()
            .record(endpoint, HostResult::from_outcome(&outcome));
        let retriable = outcome.is_retriable(&retry.retry_on);
        let retries_left = attempt <= retry.num_retries;
        _retrying = None;
        // `maxRetries` / the retry budget: over it the retry is not attempted and the final
        // response carries `UO`.
        let retry_slot = (retriable && retries_left && body.replayable())
            .then(|| picked.client().pool().try_retry());
        if let Some(None) = retry_slot {
            flags.set(ResponseFlag::UpstreamOverflow);
        } else if retriable && retries_left {
            if body.replayable() {
                _retrying = retry_slot.flatten();
                ctx.stats.upstream_rq_retry.inc();
                picked.client().stats().inc(|s| &s.upstream_rq_retry);
                // Dropping an unread response closes its HTTP/1 connection; the pool dials anew.
                drop(response);
                drop(picked);
                let pause = retry.backoff(attempt, rand::random_range(0.0..1.0));
                tokio::time::sleep(pause).await;
                continue;
            }
            ctx.stats.retry_or_shadow_abandoned.inc();
        } else if retriable && retry.num_retries > 0 {
            flags.set(ResponseFlag::UpstreamRetryLimitExceeded);
            ctx.stats.upstream_rq_retry_limit_exceeded.inc();
            cluster_stats.inc(|s| &s.upstream_rq_retry_limit_exceeded);
        } else if attempt > 1 {
            ctx.stats.upstream_rq_retry_success.inc();
            cluster_stats.inc(|s| &s.upstream_rq_retry_success);
        }
        if let Some(flag) = outcome.flag() {
            flags.set(if stream_reset {
                ResponseFlag::UpstreamRemoteReset
            } else {
                flag
            });
        }
        let retried = attempt > 1;
        return match (response, outcome) {
            (Some(resp), _) => Ok((hold_until_done(resp, picked), endpoint)),
            (None, AttemptOutcome::PerTryTimeout) => Err(LocalReply::UpstreamTimeout),
            // A failed TLS handshake: Envoy names its transport failure reason in the body.
            (None, AttemptOutcome::ConnectFailure) => Err(match transport_failure {
                Some(reason) => LocalReply::TransportFailure { retried, reason },
                None => LocalReply::ConnectFailure { retried },
            }),
            (None, _) => Err(LocalReply::UpstreamReset {
                retried,
                remote: stream_reset,
            }),
        };
    }
}

/// The endpoint of one attempt: retries avoid endpoints already tried when the policy says so.
async fn pick(
    ctx: &ConnContext,
    target: &Target,
    retry: &RetryPolicy,
    hashing: Hashing,
    tried: &[SocketAddr],
) -> Result<Picked, LocalReply> {
    let avoid = if retry.avoids_previous_hosts(hashing.stay_on_host) {
        tried
    } else {
        &[]
    };
    let picked = target.pick(&ctx.pick_request(avoid, hashing.hash)).await;
    picked.map_err(|e| match e {
        PickError::NoCluster => LocalReply::ClusterNotFound,
        PickError::NoHealthyUpstream => {
            if let Some(cluster) = target.cluster() {
                cluster
                    .client(ctx.client_id())
                    .stats()
                    .inc(|s| &s.upstream_cx_none_healthy);
            }
            LocalReply::NoHealthyUpstream
        }
    })
}

/// Keep the endpoint counted as busy until the response body is done.
fn hold_until_done(resp: Response<PooledBody>, picked: Picked) -> Response<ProxyBody> {
    let (parts, body) = resp.into_parts();
    let body = body
        .map_frame(move |f| {
            let _held = &picked;
            f
        })
        .map_err(BoxError::from)
        .boxed();
    Response::from_parts(parts, body)
}

/// How long the route timeout gives a request from now; for `x-envoy-expected-rq-timeout-ms`.
pub fn expected_timeout(route: Option<Duration>, per_try: Option<Duration>) -> Option<Duration> {
    per_try.or(route)
}
