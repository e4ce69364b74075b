//! HTTP request path: serve a redirected connection with hyper (HTTP/1.1 and h2c), route every
//! request, run the route's filters in Envoy's order and forward it.
//!
//! ```text
//! route (pure) -> fault -> CORS -> header operations / rewrite -> router (retries, mirrors)
//!              -> response headers
//! ```
//! Every failure becomes an Envoy-style local reply in `rescue`; every request ends with a status
//! and response flags (`outcome`).

pub mod body;
pub mod filters;
pub mod flood;
pub mod forward;
pub mod grpc;
pub mod hygiene;
pub mod idle;
pub mod metered;
pub mod normalization;
pub mod rescue;
pub mod stall;
mod upgrade;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST};
use http::{HeaderMap, Request, Response, Version};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::accept::ConnContext;
use crate::admission::{Pace, RequestSlot};
use crate::metrics::span::SpanStart;
use crate::outcome::{ResponseFlag, ResponseFlags};
use crate::overload::Level as OverloadLevel;
use crate::policy::{DirectResponse, HashKey, HttpAction};
use crate::routing::policy::Shaping;
use crate::routing::{self, CompiledHttpRoute, RequestFacts, RouteDecision, RoutePolicy, Target};
use crate::upstream::lb::hash_key;
use crate::upstream::pool::{BoxError, ProxyBody};
use crate::upstream::PickError;
use body::{RecordedBody, RETRY_BUFFER_LIMIT};
use filters::cors::{self, CorsDecision};
use filters::headers::{HeaderVars, RequestPseudo};
use filters::redirect::{self, RedirectFacts};
use filters::{fault, mirror, rewrite};
use forward::UpstreamRequest;
use metered::{Finish, LogStart, MeteredBody, Served};
use rescue::LocalReply;

/// Serve one redirected connection as HTTP until the client closes it, under the limits of
/// `ctx.budget` (see [`configure`]) and the HTTP/2 flood rules of [`flood`].
///
/// When `drain` starts, the connection winds down as Envoy's drain does: an HTTP/1 connection
/// answers its next response with `Connection: close` and stays open until then (closing an idle
/// keep-alive connection would race with the client's next request); an HTTP/2 connection gets
/// GOAWAY and finishes the streams in flight. What is still open at the drain deadline is closed
/// when the process exits.
pub async fn serve<I>(stream: I, ctx: Arc<ConnContext>, drain: crate::accept::Drain)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let tripwire = Arc::new(flood::Tripwire::default());
    let stats = Arc::clone(&ctx.stats);
    let peer = ctx.peer;
    let io = flood::Guarded::new(
        stream,
        Arc::clone(&tripwire),
        Box::new(move |rule, frames| {
            stats.h2_flood_closed.inc();
            tracing::info!(%peer, ?rule, frames, "HTTP/2 flood: sending GOAWAY and closing");
        }),
    );
    let write_stall = Arc::new(stall::WriteStall::default());
    let io = stall::StallWatched::new(io, Arc::clone(&write_stall));
    // The memory overload manager ranks connections by what they read and have not had answered.
    let overload = Arc::clone(ctx.budget.overload());
    let registered = overload.register();
    let cost = Arc::clone(registered.cost());
    let io = crate::overload::CostMetered::new(io, Arc::clone(&cost));
    let mut overload_changes = overload.subscribe();
    let stall_timeout = ctx.budget.limits().body_idle_timeout;
    let stall_stats = Arc::clone(&ctx.stats);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    configure(&mut builder, ctx.budget.limits());
    // The HTTP version of the connection, once its first request is seen.
    let seen = Arc::new(std::sync::atomic::AtomicU8::new(SEEN_NONE));
    // Set once a push changed what the connection was accepted as (Envoy's listener change).
    let relisten = Arc::new(tokio::sync::Notify::new());
    // Set once keep-alive was disabled under memory overload (counted once per connection).
    let overload_closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let service = {
        let (seen, drain, relisten) = (Arc::clone(&seen), drain.clone(), Arc::clone(&relisten));
        let relisten_signalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (cost, overload_closing) = (Arc::clone(&cost), Arc::clone(&overload_closing));
        hyper::service::service_fn(move |req| {
            let ctx = Arc::clone(&ctx);
            let is_h2 = req.version() == Version::HTTP_2;
            seen.store(if is_h2 { SEEN_H2 } else { SEEN_H1 }, Ordering::Release);
            let (drain, relisten) = (drain.clone(), Arc::clone(&relisten));
            let relisten_signalled = Arc::clone(&relisten_signalled);
            let overload_closing = Arc::clone(&overload_closing);
            let in_flight = cost.request();
            async move {
                let mut resp = handle(&ctx, req).await;
                drop(in_flight);
                let relistened = ctx.listener_changed(&ctx.state.load());
                if relistened && !relisten_signalled.swap(true, Ordering::AcqRel) {
                    ctx.stats.listener_change_drains.inc();
                    relisten.notify_one();
                }
                let overloaded = ctx.budget.overload().level() >= OverloadLevel::DisableKeepalive;
                if overloaded && !overload_closing.swap(true, Ordering::AcqRel) {
                    ctx.stats.overload_keepalive_disabled.inc();
                    // HTTP/2: GOAWAY from the connection's loop.
                    relisten.notify_one();
                }
                if !is_h2
                    && (relistened || overloaded || drain.is_draining())
                    && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS
                {
                    resp.headers_mut()
                        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut draining = false;
    let mut goaway_sent = false;
    let result = loop {
        // Draining: HTTP/1 closes itself after its next response; HTTP/2 (possibly not known yet:
        // no request so far) gets GOAWAY as soon as it is known to be HTTP/2.
        if draining && !goaway_sent && seen.load(Ordering::Acquire) == SEEN_H2 {
            conn.as_mut().graceful_shutdown();
            goaway_sent = true;
        }
        tokio::select! {
            result = conn.as_mut() => break result,
            () = tripwire.wait() => {
                // GOAWAY, then a short grace for the client to read it; a client that does not
                // read (a PING flood that never takes its PONGs) is cut at the deadline.
                conn.as_mut().graceful_shutdown();
                break tokio::time::timeout(FLOOD_GOAWAY_GRACE, conn.as_mut())
                    .await
                    .unwrap_or(Ok(()));
            }
            () = write_stall.expired(stall_timeout) => {
                // The client took no byte for the idle timeout: close, which drops the requests
                // in flight and so resets their upstream streams.
                stall_stats.response_write_idle_timeouts.inc();
                tracing::debug!(%peer, ?stall_timeout, "client stopped reading: closing");
                break Ok(());
            }
            () = cost.reset() => {
                // The overload manager picked this connection as one of the most expensive:
                // closing it drops its requests and resets their upstream streams.
                tracing::debug!(%peer, "memory overload: resetting the connection");
                break Ok(());
            }
            Ok(()) = overload_changes.changed(), if !goaway_sent => {
                let level = *overload_changes.borrow_and_update();
                if level >= OverloadLevel::DisableKeepalive && seen.load(Ordering::Acquire) == SEEN_H2 {
                    if !overload_closing.swap(true, Ordering::AcqRel) {
                        stall_stats.overload_keepalive_disabled.inc();
                    }
                    conn.as_mut().graceful_shutdown();
                    goaway_sent = true;
                }
            }
            () = drain.started(), if !draining => draining = true,
            // HTTP/1 answers `Connection: close` (set above); HTTP/2 gets GOAWAY and finishes the
            // streams in flight.
            () = relisten.notified(), if !goaway_sent => {
                if seen.load(Ordering::Acquire) == SEEN_H2 {
                    conn.as_mut().graceful_shutdown();
                    goaway_sent = true;
                }
            }
            () = tokio::time::sleep(DRAIN_H2_POLL), if draining && !goaway_sent => {}
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "downstream connection ended with an error");
    }
    drop(registered);
}

const SEEN_NONE: u8 = 0;
const SEEN_H1: u8 = 1;
const SEEN_H2: u8 = 2;
/// While draining, how often a connection of unknown version checks whether it turned out HTTP/2.
const DRAIN_H2_POLL: Duration = Duration::from_millis(50);

/// How long a connection closed for a flood may take to read its GOAWAY.
const FLOOD_GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// The downstream server's limits, chosen deliberately rather than left to library defaults:
/// - HTTP/1: the header read timeout (hyper's 30 s by default; also how long a kept-alive
///   connection waits for its next request) evicts slowloris clients;
/// - HTTP/2: `max_concurrent_streams` per connection; h2's Rapid Reset guard (streams reset before
///   the server accepted them, 20 as h2 and Envoy's `max_pending_accept_reset_streams`-like bound)
///   and its cap on streams the server had to reset for protocol errors (1,024); the other floods
///   (PING/SETTINGS, empty frames, CONTINUATION, WINDOW_UPDATE, premature resets) by [`flood`].
fn configure(
    builder: &mut hyper_util::server::conn::auto::Builder<TokioExecutor>,
    limits: &crate::admission::Limits,
) {
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // Envoy's request header limits (60 KiB, 100 headers) are enforced exactly by
        // `hygiene::admit`; hyper's parser gets one more header slot (its table must hold a
        // request of exactly 100) and a read buffer bounding the HTTP/1 head, so a larger one is
        // refused (431, closed) before it is buffered.
        .max_headers(hygiene::MAX_HEADERS + 1)
        .max_buf_size(hygiene::MAX_HEADER_BYTES + HEAD_SLACK_BYTES);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_header_list_size(u32::try_from(hygiene::MAX_HEADER_BYTES).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS);
}

/// Room in hyper's HTTP/1 read buffer beyond the header limit for the request line and line ends,
/// so that `hygiene::admit` (not the buffer) decides at the limit.
const HEAD_SLACK_BYTES: usize = 8 * 1024;

/// Streams reset by the client before the server accepted them (h2's default).
const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams the server reset because the client broke the protocol, per connection (hyper's default).
const H2_MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// Admission of one request, before anything else reads it: Envoy's overload manager, then the
/// client pod's request rate, then its in-flight cap. The slot holds the request's place under the
/// cap until it is dropped.
async fn admit_request(ctx: &ConnContext) -> Result<RequestSlot, LocalReply> {
    // Envoy's `stop_accepting_requests`: near the memory limit new requests are refused at once.
    if ctx.budget.overload().level() >= OverloadLevel::StopAcceptingRequests {
        ctx.stats.overload_requests_refused.inc();
        return Err(LocalReply::Overloaded);
    }
    // Over its pod's request rate a request waits for its turn, then goes on to the in-flight cap:
    // paced first, so that a pod at its cap cannot spin on fast refusals. At most the rate times
    // the longest wait can be waiting; one whose turn is further off is refused as Envoy's local
    // rate limit.
    match ctx.budget.pace() {
        Pace::Now => {}
        Pace::After(wait) => tokio::time::sleep(wait).await,
        Pace::Refused => return Err(LocalReply::RateLimited),
    }
    // Over its pod's in-flight cap a request is refused at once (no queue): Envoy's overflow reply.
    ctx.budget
        .request()
        .ok_or(LocalReply::Overflow { retried: false })
}

/// Route and forward one request; every response leaves with Envoy's `server` header.
async fn handle<B>(ctx: &ConnContext, mut req: Request<B>) -> Response<ProxyBody>
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    ctx.stats.http_requests.inc();
    // A refused request is answered, logged and counted like any other local reply; a paced one's
    // wait is part of its duration.
    let started = Instant::now();
    let admission = admit_request(ctx).await;
    // Checked and made canonical before anything reads it: the access log, routing and the
    // upstream all see the same authority and path. The limits apply to what the client sent.
    let admitted = hygiene::admit(&mut req);
    // Envoy's connection manager gives every request an id before routing: the upstream, local
    // replies and the access log line all carry the same one.
    ensure_request_id(req.headers_mut());
    let mut log = ctx
        .metrics
        .access_log
        .sink()
        .map(|sink| Box::new(LogStart::capture(sink, &req, &request_authority(&req))));
    let span = ctx
        .metrics
        .tracer
        .enabled()
        .then(|| Box::new(SpanStart::capture(&req, &request_authority(&req))));
    // The state is loaded once per request: in-flight requests finish under their config.
    let node = ctx.state.load();
    let protocol = if grpc::is_grpc(req.headers()) {
        crate::metrics::RequestProtocol::Grpc
    } else {
        crate::metrics::RequestProtocol::Http
    };
    let request_bytes = Arc::new(AtomicU64::new(0));
    let mut flags = ResponseFlags::default();
    let mut served = Served {
        logging: log.is_some(),
        ..Served::default()
    };
    let mut resp = match (&admission, admitted) {
        (Err(refused), _) => reply(
            refused.clone(),
            protocol == crate::metrics::RequestProtocol::Grpc,
            &mut flags,
        ),
        (Ok(_), Ok(())) => process(ctx, &node, req, &mut flags, &mut served, &request_bytes).await,
        (Ok(_), Err(rejection)) => rejected(rejection, &mut flags),
    };
    resp.headers_mut()
        .insert(http::header::SERVER, HeaderValue::from_static("envoy"));
    if flags != ResponseFlags::default() {
        tracing::debug!(status = resp.status().as_u16(), flags = %flags, "request finished");
    }
    // A trailers-only gRPC response (and a local reply) carries its status in the headers.
    let grpc_status = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok());
    if let Some(log) = log.as_mut() {
        log.response(resp.status().as_u16(), resp.headers());
    }
    if log.is_none() && span.is_none() && !ctx.metrics.istio_metrics() {
        // Nothing records the request's end: the body goes out as it is.
        return resp;
    }
    let finish = Finish {
        metrics: Arc::clone(&ctx.metrics),
        node,
        source: ctx.pod_cgroup_id,
        original_dst: ctx.original_dst,
        peer: ctx.peer,
        served,
        flags,
        protocol,
        code: resp.status().as_u16(),
        grpc_status,
        started,
        request_bytes,
        log,
        span,
    };
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, MeteredBody::new(body, finish).boxed())
}

/// The local reply to a request `admission` refused; codec-level errors close the connection.
fn rejected(rejection: hygiene::Rejection, flags: &mut ResponseFlags) -> Response<ProxyBody> {
    tracing::debug!(
        reason = rejection.detail(),
        "request refused before routing"
    );
    if rejection.is_protocol_error() {
        flags.set(ResponseFlag::DownstreamProtocolError);
    }
    let (status, body, close) = rejection.reply();
    let mut resp = LocalReply::Direct {
        status: status.as_u16(),
        body,
    }
    .into_response(false);
    if close {
        resp.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// What routing chose for a request that goes upstream.
struct Chosen<'a> {
    route: Option<&'a CompiledHttpRoute>,
    policy: &'a RoutePolicy,
    target: &'a Target,
    destination_index: Option<usize>,
    matched_block: Option<usize>,
    hash: Option<&'a HashKey>,
}

impl Chosen<'_> {
    /// Whether retries count as hashed to their host: Istio drops `previous_hosts` from the retry
    /// policy only for a VirtualService rule with a single destination that has a hash policy (the
    /// default route keeps it).
    fn retries_stay_on_hashed_host(&self) -> bool {
        self.hash.is_some()
            && self
                .route
                .is_some_and(|r| matches!(&r.spec.action, HttpAction::Route(d) if d.len() == 1))
    }
}

async fn process<B>(
    ctx: &ConnContext,
    node: &crate::state::NodeState,
    mut req: Request<B>,
    flags: &mut ResponseFlags,
    served: &mut Served,
    request_bytes: &Arc<AtomicU64>,
) -> Response<ProxyBody>
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let view = ctx.view_under(node);
    let start_time = std::time::SystemTime::now();
    let method = req.method().clone();
    let downstream_version = req.version();
    let grpc = grpc::is_grpc(req.headers());
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
    let chosen = match routing::route_http(&view, ctx.original_dst, &facts) {
        RouteDecision::Forward {
            route,
            policy,
            target,
            destination_index,
            matched_block,
            hash,
        } => Chosen {
            route,
            policy,
            target,
            destination_index,
            matched_block,
            hash,
        },
        RouteDecision::Passthrough(target) => {
            if served.logging {
                served.route_name = Some("allow_any".to_string());
            }
            Chosen {
                route: None,
                policy: passthrough_policy(),
                target,
                destination_index: None,
                matched_block: None,
                hash: None,
            }
        }
        // Envoy's `block_all` virtual host: a direct 502 with an empty body.
        RouteDecision::Blocked => {
            served.blocked = true;
            if served.logging {
                served.route_name = Some("block_all".to_string());
            }
            return reply(
                LocalReply::Direct {
                    status: 502,
                    body: Bytes::new(),
                },
                grpc,
                flags,
            );
        }
        RouteDecision::NoRoute => return reply(LocalReply::NoRoute, grpc, flags),
        RouteDecision::NoDestination => return reply(LocalReply::ClusterNotFound, grpc, flags),
        RouteDecision::Local {
            route,
            matched_block,
        } => {
            if served.logging {
                served.route_name = route_name(Some(&route.spec), matched_block);
            }
            let matched = matched_block.and_then(|i| route.spec.matches.get(i));
            let local = local_action(&route.spec.action, &facts, ctx.original_dst.port(), matched);
            let cors = cors_decision(ctx, &route.policy, &req);
            if let Some(preflight) = cors.preflight {
                return preflight;
            }
            let mut resp = reply(local, grpc, flags);
            let pseudo = RequestPseudo {
                method: facts.method,
                scheme: facts.scheme,
                authority: facts.authority,
                path: facts.path_and_query,
            };
            let vars = header_vars(
                ctx,
                req.version(),
                Some(req.headers()),
                pseudo,
                None,
                start_time,
            );
            finish_response(
                &mut resp,
                &route.policy.route_only,
                &vars,
                &cors.decision,
                &route.policy,
            );
            return resp;
        }
    };

    if let Target::Cluster(_) = chosen.target {
        served.target = Some(chosen.target.clone());
    }
    if served.logging && served.route_name.is_none() {
        served.route_name = route_name(chosen.route.map(|r| &*r.spec), chosen.matched_block);
    }

    // Fault: delay, then maybe abort; the route timeout starts after the delay.
    if let Some(f) = &chosen.policy.fault {
        let action = fault::decide_random(f);
        if let Some(delay) = action.delay {
            flags.set(ResponseFlag::DelayInjected);
            ctx.stats.fault_delays_injected.inc();
            tokio::time::sleep(delay).await;
        }
        if let Some(abort) = action.abort {
            ctx.stats.fault_aborts_injected.inc();
            return reply(LocalReply::FaultAbort(abort), grpc, flags);
        }
    }

    // CORS: a preflight from an allowed origin is answered here; others are forwarded.
    let cors = cors_decision(ctx, chosen.policy, &req);
    if let Some(preflight) = cors.preflight {
        return preflight;
    }
    let shaping = chosen
        .destination_index
        .and_then(|i| chosen.policy.destinations.get(i))
        .unwrap_or(&chosen.policy.route_only);
    // Response header operations may read the client's request headers (`%REQ(..)%`): keep a copy
    // only for routes that have some.
    let request_headers = (!shaping.response.is_empty()).then(|| req.headers().clone());
    let respond = |mut resp: Response<ProxyBody>, endpoint: Option<std::net::SocketAddr>| {
        let pseudo = RequestPseudo {
            method: method.as_str(),
            scheme: "http",
            authority: &authority,
            path: &path_and_query,
        };
        let vars = header_vars(
            ctx,
            downstream_version,
            request_headers.as_ref(),
            pseudo,
            endpoint,
            start_time,
        );
        finish_response(&mut resp, shaping, &vars, &cors.decision, chosen.policy);
        resp
    };

    let Some(protocol) = chosen.target.protocol() else {
        return respond(reply(LocalReply::ClusterNotFound, grpc, flags), None);
    };
    // The hash key is read from the request as the client sent it. Deviation: Envoy folds the hash
    // policies of every destination of a weighted route into one hash; Keel uses the chosen
    // destination's policy only (the same whenever the destinations share a DestinationRule).
    // Precedence of the policy itself is Istio's (see `upstream::policy::route_hash_key`).
    let hashed = chosen.hash.map(|key| {
        hash_key::request_hash(
            key,
            &hash_key::HashInput {
                headers: req.headers(),
                path_and_query: &path_and_query,
                peer: ctx.peer,
                original_dst: ctx.original_dst,
            },
        )
    });
    let (hash, set_cookie) = match hashed {
        Some(h) => (h.hash, h.set_cookie),
        None => (None, None),
    };
    let downstream_h2 = req.version() == Version::HTTP_2;
    let upstream_h2 = protocol.speaks_http2(downstream_h2);
    let upgrade = if upstream_h2 {
        None
    } else {
        upgrade::requested(req.version(), req.headers())
    };
    let on_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let timeout = grpc::effective_timeout(chosen.policy.timeout, grpc, req.headers());
    let (parts, incoming) = req.into_parts();
    let upstream = shaped_request(
        ctx,
        &parts,
        &authority,
        &path_and_query,
        &chosen,
        shaping,
        timeout,
        start_time,
    );
    let counted = Arc::clone(request_bytes);
    let incoming = incoming.map_frame(move |frame| {
        if let Some(data) = frame.data_ref() {
            counted.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        frame
    });
    let incoming = idle::IdleBody::new(
        incoming.map_err(Into::into),
        ctx.budget.limits().body_idle_timeout,
        Arc::clone(&ctx.stats),
    );
    let body = RecordedBody::new(incoming.boxed(), RETRY_BUFFER_LIMIT);
    let started = Instant::now();

    if let (Some(protocol_name), Some(on_upgrade)) = (upgrade, on_upgrade) {
        return forward_upgrade(
            ctx,
            &chosen,
            (hash, set_cookie),
            &upstream,
            &body,
            protocol_name,
            on_upgrade,
            timeout,
            grpc,
            flags,
            &mut served.endpoint,
        )
        .await;
    }

    // Mirrors see the shaped request; they are started before the primary and never awaited.
    if let Some(route) = chosen.route {
        for (target, percentage) in &route.mirrors {
            if mirror::fires(*percentage, rand::random_range(0.0..100.0)) {
                mirror::spawn(
                    mirror::MirrorJob {
                        target: target.clone(),
                        original_dst: ctx.original_dst,
                        client: ctx.client_id(),
                        topology: Arc::clone(&ctx.view.topology),
                        request: upstream.clone(),
                        body: body.clone(),
                        timeout,
                        downstream_h2,
                        shadow_suffix: chosen.policy.mirror_shadow_suffix,
                    },
                    Arc::clone(&ctx.stats),
                );
            }
        }
    }

    let work = forward::forward(
        ctx,
        chosen.target,
        &chosen.policy.retry,
        forward::Hashing {
            hash,
            stay_on_host: chosen.retries_stay_on_hashed_host(),
        },
        &upstream,
        &body,
        upstream_h2,
        flags,
    );
    let result = match timeout {
        Some(t) => match tokio::time::timeout(t, work).await {
            Ok(r) => r,
            Err(_) => {
                ctx.stats.upstream_rq_timeout.inc();
                if let Some(cluster) = chosen.target.cluster() {
                    let stats = cluster.client(ctx.client_id());
                    stats.stats().inc(|s| &s.upstream_rq_timeout);
                    stats.stats().code(504);
                }
                Err(LocalReply::UpstreamTimeout)
            }
        },
        None => work.await,
    };
    let (resp, endpoint) = match result {
        Ok(forwarded) => forwarded,
        Err(local) => return respond(reply(local, grpc, flags), None),
    };
    let upstream_ms = started.elapsed().as_millis();
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(
        HeaderName::from_static("x-envoy-upstream-service-time"),
        HeaderValue::from(u64::try_from(upstream_ms).unwrap_or(u64::MAX)),
    );
    // A cookie Keel issued for the hash policy goes on the upstream's response (Envoy adds it to
    // upstream responses only, not to local replies).
    if let Some(cookie) = set_cookie {
        parts.headers.append(http::header::SET_COOKIE, cookie);
    }
    // The route timeout covers the whole response, body included.
    let body = match timeout {
        Some(t) => deadline_body(body, started + t),
        None => body,
    };
    served.endpoint = Some(endpoint);
    respond(Response::from_parts(parts, body), Some(endpoint))
}

/// Forward an `Upgrade` request (no retries, no mirrors): 101 then a byte relay.
#[allow(clippy::too_many_arguments)]
async fn forward_upgrade(
    ctx: &ConnContext,
    chosen: &Chosen<'_>,
    (hash, set_cookie): (Option<u64>, Option<HeaderValue>),
    upstream: &UpstreamRequest,
    body: &RecordedBody,
    protocol: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
    timeout: Option<Duration>,
    grpc: bool,
    flags: &mut ResponseFlags,
    answered_by: &mut Option<std::net::SocketAddr>,
) -> Response<ProxyBody> {
    let picked = match chosen.target.pick(&ctx.pick_request(&[], hash)).await {
        Ok(p) => p,
        Err(PickError::NoCluster) => return reply(LocalReply::ClusterNotFound, grpc, flags),
        Err(PickError::NoHealthyUpstream) => {
            return reply(LocalReply::NoHealthyUpstream, grpc, flags)
        }
    };
    let req = match upstream.build(picked.addr(), 1, false, body.attempt()) {
        Ok(r) => r,
        Err(local) => return reply(local, grpc, flags),
    };
    let pool = picked.client().pool().config();
    let work = upgrade::proxy(
        picked.addr(),
        &pool.connect,
        pool.tls.as_ref(),
        req,
        protocol,
        on_upgrade,
    );
    let result = match timeout {
        Some(t) => tokio::time::timeout(t, work)
            .await
            .unwrap_or(Err(LocalReply::UpstreamTimeout)),
        None => work.await,
    };
    match result {
        Ok(mut resp) => {
            *answered_by = Some(picked.addr());
            if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                ctx.stats.upgrades.inc();
            }
            if let Some(cookie) = set_cookie {
                resp.headers_mut().append(http::header::SET_COOKIE, cookie);
            }
            resp
        }
        Err(local) => reply(local, grpc, flags),
    }
}

/// Whether a `te` value lists the `trailers` token (`te: trailers, deflate;q=0.5` does).
fn te_accepts_trailers(value: &HeaderValue) -> bool {
    value.as_bytes().split(|&b| b == b',').any(|token| {
        let token = token.split(|&b| b == b';').next().unwrap_or_default();
        token.trim_ascii().eq_ignore_ascii_case(b"trailers")
    })
}

/// The request every attempt sends: hop-by-hop headers dropped, the route's header operations,
/// authority and path rewrites applied, Envoy's standard request headers added.
#[allow(clippy::too_many_arguments)]
fn shaped_request(
    ctx: &ConnContext,
    parts: &http::request::Parts,
    authority: &str,
    path_and_query: &str,
    chosen: &Chosen<'_>,
    shaping: &Shaping,
    timeout: Option<Duration>,
    start_time: std::time::SystemTime,
) -> UpstreamRequest {
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + 4);
    let listed = connection_listed(&parts.headers);
    for (name, value) in &parts.headers {
        // `te` is hop-by-hop (and often named in `Connection`), but as Envoy does, a request that
        // accepts trailers says so upstream: gRPC servers require `te: trailers`.
        if name == http::header::TE {
            if te_accepts_trailers(value) && !headers.contains_key(http::header::TE) {
                headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
            }
            continue;
        }
        if name == HOST || is_hop_by_hop(name) || listed.contains(name) {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    let pseudo = RequestPseudo {
        method: parts.method.as_str(),
        scheme: "http",
        authority,
        path: path_and_query,
    };
    let vars = header_vars(ctx, parts.version, None, pseudo, None, start_time);
    for mutation in &shaping.request {
        mutation.apply(&mut headers, &vars);
    }
    let mut path = path_and_query.to_string();
    if let Some(rewrite) = &chosen.policy.rewrite {
        let matched = chosen
            .route
            .zip(chosen.matched_block)
            .and_then(|(r, i)| r.spec.matches.get(i));
        if let Some(new_path) = rewrite::rewrite_path(rewrite, matched, path_and_query) {
            if let Ok(v) = HeaderValue::from_str(path_and_query) {
                headers.insert(HeaderName::from_static(rewrite::ORIGINAL_PATH_HEADER), v);
            }
            path = new_path;
        }
    }
    // The client's connection is plaintext; an outbound sidecar keeps a value the client set.
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static("http"),
        );
    }
    if let Some(t) = forward::expected_timeout(timeout, chosen.policy.retry.per_try_timeout) {
        headers.insert(
            HeaderName::from_static("x-envoy-expected-rq-timeout-ms"),
            HeaderValue::from(u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        );
    }
    UpstreamRequest {
        method: parts.method.clone(),
        path_and_query: path,
        authority: shaping
            .authority
            .clone()
            .unwrap_or_else(|| authority.to_string()),
        headers,
    }
}

/// The CORS filter's verdict on a request, and the local answer to a preflight.
struct Cors {
    decision: CorsDecision,
    preflight: Option<Response<ProxyBody>>,
}

fn cors_decision<B>(ctx: &ConnContext, policy: &RoutePolicy, req: &Request<B>) -> Cors {
    let Some(cors_policy) = &policy.cors else {
        return Cors {
            decision: CorsDecision::NotCors,
            preflight: None,
        };
    };
    match cors::on_request(cors_policy, req.method(), req.headers()) {
        CorsDecision::Preflight(headers) => {
            ctx.stats.cors_preflights_answered.inc();
            let mut resp = LocalReply::Direct {
                status: 200,
                body: Bytes::new(),
            }
            .into_response(false);
            resp.headers_mut().extend(headers);
            Cors {
                decision: CorsDecision::NotCors,
                preflight: Some(resp),
            }
        }
        decision => Cors {
            decision,
            preflight: None,
        },
    }
}

/// The route's response header operations, then CORS headers (which therefore win).
fn finish_response(
    resp: &mut Response<ProxyBody>,
    shaping: &Shaping,
    vars: &HeaderVars<'_>,
    cors_decision: &CorsDecision,
    policy: &RoutePolicy,
) {
    for mutation in &shaping.response {
        mutation.apply(resp.headers_mut(), vars);
    }
    if let Some(cors_policy) = &policy.cors {
        cors::decorate_response(cors_decision, cors_policy, resp.headers_mut());
    }
}

/// What header-operation `%OPERATOR%`s read for one request. Request side: `request_headers` and
/// `upstream` are `None` (operators read the headers being mutated); response side: the client's
/// request headers and the endpoint that answered.
fn header_vars<'a>(
    ctx: &ConnContext,
    version: Version,
    request_headers: Option<&'a HeaderMap>,
    pseudo: RequestPseudo<'a>,
    upstream: Option<std::net::SocketAddr>,
    start_time: std::time::SystemTime,
) -> HeaderVars<'a> {
    HeaderVars {
        downstream_remote: Some(ctx.peer),
        downstream_local: Some(ctx.original_dst),
        upstream_remote: upstream,
        hostname: node_hostname(),
        protocol: protocol_name(version),
        request_headers,
        pseudo: Some(pseudo),
        start_time,
    }
}

/// Istio's `allow_any` route policy (no timeout, no retries), built once.
fn passthrough_policy() -> &'static RoutePolicy {
    static POLICY: std::sync::OnceLock<RoutePolicy> = std::sync::OnceLock::new();
    POLICY.get_or_init(RoutePolicy::passthrough)
}

/// `%PROTOCOL%` as Envoy prints it.
fn protocol_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

/// The node's host name (`%HOSTNAME%`), read once.
fn node_hostname() -> &'static str {
    static HOSTNAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOSTNAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default()
    })
}

/// A local reply, with its response flag recorded.
fn reply(local: LocalReply, grpc: bool, flags: &mut ResponseFlags) -> Response<ProxyBody> {
    if let Some(flag) = local.response_flag() {
        flags.set(flag);
    }
    local.into_response(grpc)
}

/// End the response body with an error when `deadline` passes (the route timeout covers the whole
/// response): hyper then resets the stream or closes the connection, as Envoy does.
fn deadline_body(body: ProxyBody, deadline: Instant) -> ProxyBody {
    DeadlineBody {
        inner: body,
        sleep: Box::pin(tokio::time::sleep_until(deadline.into())),
    }
    .boxed()
}

struct DeadlineBody {
    inner: ProxyBody,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
}

/// The error a body reports when the route timeout expires mid-response.
#[derive(Debug, thiserror::Error)]
#[error("route timeout expired while streaming the response")]
struct ResponseTimeout;

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        if let Poll::Ready(frame) = std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            // An error makes hyper abort the message: HTTP/1 closes the connection, HTTP/2 resets
            // the stream, so the client never mistakes a cut response for a whole one.
            return Poll::Ready(Some(Err(Box::new(ResponseTimeout))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

use std::future::Future as _;

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

/// Headers the `Connection` header names as hop-by-hop.
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect()
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in connection_listed(headers) {
        headers.remove(name);
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
}

/// Add `x-request-id` (a UUID v4, as Envoy generates it) unless the client sent one.
fn ensure_request_id(headers: &mut HeaderMap) {
    if !headers.contains_key(X_REQUEST_ID) {
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
        if let Ok(v) = HeaderValue::from_str(id) {
            headers.insert(X_REQUEST_ID, v);
        }
    }
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// `%ROUTE_NAME%` as Istio names Envoy routes: the rule's `name`, `name.<match name>` when the
/// matched block is named too, the block's name alone for an unnamed rule; `default` for the
/// default route (no rule).
fn route_name(route: Option<&crate::policy::HttpRoute>, matched: Option<usize>) -> Option<String> {
    let Some(route) = route else {
        return Some("default".to_string());
    };
    let block = matched
        .and_then(|i| route.matches.get(i))
        .and_then(|m| m.name.as_deref())
        .filter(|n| !n.is_empty());
    match (route.name.as_deref().filter(|n| !n.is_empty()), block) {
        (Some(r), Some(b)) => Some(format!("{r}.{b}")),
        (Some(r), None) => Some(r.to_string()),
        (None, b) => b.map(str::to_string),
    }
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

/// `redirect` and `directResponse` rules answer without an upstream.
fn local_action(
    action: &HttpAction,
    facts: &RequestFacts<'_>,
    port: u16,
    matched: Option<&crate::policy::HttpMatch>,
) -> LocalReply {
    match action {
        HttpAction::Redirect(r) => LocalReply::Redirect {
            status: r.redirect_code,
            location: redirect::location(
                r,
                &RedirectFacts {
                    scheme: facts.scheme,
                    authority: facts.authority,
                    path_and_query: facts.path_and_query,
                    port,
                    matched,
                },
            ),
        },
        HttpAction::DirectResponse(DirectResponse { status, body }) => LocalReply::Direct {
            status: *status,
            body: body.clone().unwrap_or_else(Bytes::new),
        },
        // Delegation is resolved into routes when tables are built; an unresolved one has no route.
        HttpAction::Delegate { .. } | HttpAction::Route(_) => LocalReply::NoRoute,
    }
}

#[cfg(test)]
mod tests;
