//! HTTP request path: serve a redirected connection with hyper (HTTP/1.1 and h2c), route every
//! request, and forward it to the chosen cluster's endpoint.

pub mod filters;
pub mod rescue;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST};
use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::accept::ConnContext;
use crate::policy::{DirectResponse, HttpAction, Redirect};
use crate::routing::{self, PickError, RequestFacts, RouteDecision};
use crate::upstream::pool::ProxyBody;
use crate::upstream::UpstreamProtocol;
use rescue::LocalReply;

/// Istio's default retry policy: 2 retries on connection failures.
const DEFAULT_RETRY_ATTEMPTS: u32 = 2;

/// Serve one redirected connection as HTTP until the client closes it.
pub async fn serve(stream: TcpStream, ctx: Arc<ConnContext>) {
    let service = hyper::service::service_fn(move |req| {
        let ctx = Arc::clone(&ctx);
        async move { Ok::<_, Infallible>(handle(&ctx, req).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(hyper_util::rt::TokioTimer::new());
    if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(error = %e, "downstream connection ended with an error");
    }
}

/// Route and forward one request; every failure becomes an Envoy-style local reply.
async fn handle(ctx: &ConnContext, req: Request<Incoming>) -> Response<ProxyBody> {
    ctx.stats.http_requests.inc();
    match forward(ctx, req).await {
        Ok(resp) => resp,
        Err(reply) => reply.into_response(),
    }
}

async fn forward(
    ctx: &ConnContext,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, LocalReply> {
    // The state is loaded once per request: in-flight requests finish under their config.
    let node = ctx.state.load();
    let view = ctx.view_under(&node);
    let authority = request_authority(&req);
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    let facts = RequestFacts {
        method: req.method().as_str(),
        path_and_query: &path_and_query,
        authority: &authority,
        scheme: "http",
        headers: req.headers(),
    };
    let decision = routing::route_http(&view, ctx.original_dst, &facts);
    let (route, target, passthrough) = match decision {
        RouteDecision::Forward { route, target, .. } => (route, target, false),
        RouteDecision::Passthrough(target) => (None, target, true),
        // Envoy's `block_all` virtual host: a direct 502 with an empty body.
        RouteDecision::Blocked => {
            return Err(LocalReply::Direct {
                status: 502,
                body: Bytes::new(),
            })
        }
        RouteDecision::NoRoute => return Err(LocalReply::NoRoute),
        RouteDecision::NoDestination => return Err(LocalReply::ClusterNotFound),
        RouteDecision::Local(route) => {
            return Ok(local_action(&route.spec.action, &facts).into_response());
        }
    };
    let protocol = target.protocol().ok_or(LocalReply::ClusterNotFound)?;
    // Route timeout: unset -> mesh default; `0s` -> disabled. Passthrough has none (`timeout: 0s`).
    let timeout = route
        .and_then(|r| r.spec.timeout)
        .or(node.snapshot.mesh.default_http_timeout)
        .filter(|t| !t.is_zero() && !passthrough);
    let downstream_h2 = req.version() == Version::HTTP_2;
    let (parts, body) = req.into_parts();
    let body_is_empty = hyper::body::Body::is_end_stream(&body);
    let mut body = Some(body.boxed());
    // Passthrough carries no retry policy.
    let attempts = if body_is_empty && !passthrough {
        1 + DEFAULT_RETRY_ATTEMPTS
    } else {
        1
    };
    let work = async {
        let mut last = LocalReply::NoHealthyUpstream;
        for attempt in 1..=attempts {
            let in_flight = target.pick(ctx.original_dst).await.map_err(|e| match e {
                PickError::NoCluster => LocalReply::ClusterNotFound,
                PickError::NoHealthyUpstream => LocalReply::NoHealthyUpstream,
            })?;
            let body = body
                .take()
                .unwrap_or_else(|| http_body_util::Empty::new().map_err(|e| match e {}).boxed());
            let upstream_h2 = match protocol {
                UpstreamProtocol::Http2 => true,
                UpstreamProtocol::SameAsDownstream => downstream_h2,
                UpstreamProtocol::Http1 | UpstreamProtocol::Tcp => false,
            };
            let upstream_req = upstream_request(
                &parts,
                body,
                &authority,
                in_flight.addr(),
                attempt,
                upstream_h2,
            )?;
            match ctx
                .pools
                .send(in_flight.addr(), upstream_h2, upstream_req)
                .await
            {
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    // Keep the endpoint counted as busy until the response body is done.
                    let body = body
                        .map_frame(move |f| {
                            let _held = &in_flight;
                            f
                        })
                        .boxed();
                    return Ok(Response::from_parts(parts, body));
                }
                Err(e) if e.is_connect() => {
                    tracing::debug!(cluster = %target.key(), endpoint = %in_flight.addr(), error = %e, "upstream connect failed");
                    last = LocalReply::ConnectFailure;
                }
                Err(e) => {
                    tracing::debug!(cluster = %target.key(), endpoint = %in_flight.addr(), error = %e, "upstream request failed");
                    return Err(LocalReply::UpstreamReset);
                }
            }
        }
        Err(last)
    };
    match timeout {
        Some(t) => tokio::time::timeout(t, work)
            .await
            .unwrap_or(Err(LocalReply::UpstreamTimeout)),
        None => work.await,
    }
}

/// The request as sent to one endpoint: the client's authority kept (`Host` for HTTP/1.1 with the
/// endpoint in the URI; `:authority` for HTTP/2, whose connection is chosen by endpoint), hop-by-hop
/// headers dropped, Envoy's standard request headers added.
fn upstream_request(
    parts: &http::request::Parts,
    body: ProxyBody,
    authority: &str,
    endpoint: SocketAddr,
    attempt: u32,
    upstream_h2: bool,
) -> Result<Request<ProxyBody>, LocalReply> {
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let uri_authority = if upstream_h2 && !authority.is_empty() {
        authority.to_string()
    } else {
        endpoint.to_string()
    };
    let uri: Uri = format!("http://{uri_authority}{path}")
        .parse()
        .map_err(|_| LocalReply::BadRequest)?;
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = if upstream_h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let headers = req.headers_mut();
    for (name, value) in &parts.headers {
        if !is_hop_by_hop(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    if upstream_h2 {
        // HTTP/2 carries the authority as `:authority`; a `host` header next to it is a duplicate
        // that servers reject.
        headers.remove(HOST);
    } else if !headers.contains_key(HOST) {
        if let Ok(v) = HeaderValue::from_str(authority) {
            headers.insert(HOST, v);
        }
    }
    if !headers.contains_key("x-request-id") {
        if let Ok(v) = HeaderValue::from_str(&request_id()) {
            headers.insert(HeaderName::from_static("x-request-id"), v);
        }
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("http"),
    );
    headers.insert(
        HeaderName::from_static("x-envoy-attempt-count"),
        HeaderValue::from(attempt),
    );
    Ok(req)
}

/// Headers that describe one connection, not the request (RFC 9110 §7.6.1).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "trailer"
    )
}

/// `:authority` for HTTP/2, `Host` for HTTP/1.
fn request_authority<B>(req: &Request<B>) -> String {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// A UUID-v4-shaped request id, as Envoy generates when the client sent none.
fn request_id() -> String {
    let r: u128 = rand::random();
    let b = (r & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let h = format!("{b:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// `redirect` and `directResponse` rules answer without an upstream.
fn local_action(action: &HttpAction, facts: &RequestFacts<'_>) -> LocalReply {
    match action {
        HttpAction::Redirect(r) => LocalReply::Redirect {
            status: r.redirect_code,
            location: redirect_location(r, facts),
        },
        HttpAction::DirectResponse(DirectResponse { status, body }) => LocalReply::Direct {
            status: *status,
            body: body.clone().unwrap_or_else(Bytes::new),
        },
        // Delegation is resolved into routes when tables are built; an unresolved one has no route.
        HttpAction::Delegate { .. } | HttpAction::Route(_) => LocalReply::NoRoute,
    }
}

fn redirect_location(r: &Redirect, facts: &RequestFacts<'_>) -> String {
    let scheme = r.scheme.as_deref().unwrap_or(facts.scheme);
    let host = r.authority.as_deref().unwrap_or_else(|| {
        facts
            .authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(facts.authority)
    });
    let port = r.port.map(|p| format!(":{p}")).unwrap_or_default();
    let path = r.uri.as_deref().unwrap_or(facts.path_and_query);
    format!("{scheme}://{host}{port}{path}")
}

/// How long an idle downstream HTTP/1 keep-alive connection may wait for its next request header.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_look_like_uuid_v4() {
        let id = request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
    }
}
