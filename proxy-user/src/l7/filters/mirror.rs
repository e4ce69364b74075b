//! Mirroring (`mirror`, `mirrors`, §1.13): fire-and-forget copies of the shaped request, each on its
//! own task, sent once the client's body is complete (Envoy's classic shadowing). The primary's
//! latency and status never depend on a mirror: nothing here is awaited by the request, a mirror
//! over the in-flight budget is dropped (never queued), and its response is discarded.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::admin::Stats;
use crate::routing::Target;
use crate::upstream::locality::Topology;

use crate::upstream::{ClientId, PickRequest};

use crate::l7::body::RecordedBody;
use crate::l7::forward::UpstreamRequest;

/// Mirrored requests in flight per proxy; more are dropped.
pub const MAX_IN_FLIGHT: usize = 512;
/// Bound on a mirror's life when the route has no timeout.
pub const DEFAULT_MIRROR_TIMEOUT: Duration = Duration::from_secs(30);

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Decrements the in-flight count when a mirror task ends, however it ends.
struct Slot;

impl Slot {
    fn acquire() -> Option<Slot> {
        let prev = IN_FLIGHT.fetch_add(1, Ordering::AcqRel);
        if prev >= MAX_IN_FLIGHT {
            IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether a mirror with `percentage` (0..=100) fires for this request (`draw` uniform in 0..100).
pub fn fires(percentage: f64, draw: f64) -> bool {
    draw < percentage
}

/// `reviews:9080` -> `reviews-shadow:9080`, `foo` -> `foo-shadow` (Envoy appends to the host part).
pub fn shadow_authority(authority: &str) -> String {
    // An IPv6 literal keeps its brackets; the port follows the last `]` or the only `:`.
    let split = if authority.starts_with('[') {
        authority
            .find(']')
            .and_then(|end| authority[end..].find(':').map(|i| end + i))
    } else {
        authority.rfind(':')
    };
    match split {
        Some(i) => format!("{}-shadow{}", &authority[..i], &authority[i..]),
        None => format!("{authority}-shadow"),
    }
}

/// What one mirror needs, owned (the task outlives the request).
pub struct MirrorJob {
    /// Where the copy goes.
    pub target: Target,
    /// The connection's original destination (for passthrough-like targets).
    pub original_dst: SocketAddr,
    /// Whose per-client state picks the mirror's endpoint.
    pub client: ClientId,
    /// The client's locality and labels (locality load balancing of the mirror cluster).
    pub topology: Arc<Topology>,
    /// The shaped request.
    pub request: UpstreamRequest,
    /// The client's body.
    pub body: RecordedBody,
    /// The route timeout, bounding the whole mirror.
    pub timeout: Option<Duration>,
    /// Whether the client spoke HTTP/2 (for targets that follow the downstream protocol).
    pub downstream_h2: bool,
    /// Append `-shadow` to the authority.
    pub shadow_suffix: bool,
}

/// Start one mirror on its own task, or count it as dropped when over budget. A mirror counts as
/// sent once its request went out and as dropped when it could not be sent.
pub fn spawn(job: MirrorJob, stats: Arc<Stats>) {
    let Some(slot) = Slot::acquire() else {
        stats.mirror_dropped.inc();
        return;
    };
    tokio::spawn(async move {
        let _slot = slot;
        let limit = job.timeout.unwrap_or(DEFAULT_MIRROR_TIMEOUT);
        let sent = tokio::time::timeout(limit, send(job)).await;
        match sent {
            Ok(Ok(())) => stats.mirror_requests.inc(),
            Ok(Err(why)) => {
                tracing::debug!(why, "mirror not sent");
                stats.mirror_dropped.inc();
            }
            Err(_) => stats.mirror_requests.inc(),
        }
    });
}

async fn send(job: MirrorJob) -> Result<(), &'static str> {
    let upstream_h2 = job
        .target
        .protocol()
        .ok_or("mirror cluster not found")?
        .speaks_http2(job.downstream_h2);
    let picked = job
        .target
        .pick(&PickRequest {
            client: job.client,
            original_dst: job.original_dst,
            avoid: &[],
            topology: &job.topology,
            // Envoy's shadow requests carry no hash policy.
            hash: None,
        })
        .await
        .map_err(|_| "no endpoint for the mirror")?;
    let body = job
        .body
        .complete(job.timeout.unwrap_or(DEFAULT_MIRROR_TIMEOUT))
        .await
        .ok_or("request body too large or incomplete")?;
    let mut request = job.request;
    if job.shadow_suffix {
        request.authority = shadow_authority(&request.authority);
    }
    let req = request
        .build(picked.addr(), 1, upstream_h2, body)
        .map_err(|_| "mirror request could not be built")?;
    // The mirror cluster's pools of the same client; the response is read to the end and
    // discarded, so the pooled connection can be reused.
    let resp = picked
        .client()
        .pool()
        .send(picked.addr(), upstream_h2, req)
        .await
        .map_err(|_| "mirror request failed")?;
    use http_body_util::BodyExt;
    let _ = resp.into_body().collect().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_suffix_goes_on_the_host_part() {
        assert_eq!(shadow_authority("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(shadow_authority("foo"), "foo-shadow");
        assert_eq!(
            shadow_authority("reviews.default.svc.cluster.local"),
            "reviews.default.svc.cluster.local-shadow"
        );
        assert_eq!(shadow_authority("[fd00::1]:80"), "[fd00::1]-shadow:80");
    }

    #[test]
    fn percentage_draws() {
        assert!(fires(100.0, 99.99));
        assert!(!fires(0.0, 0.0));
        assert!(fires(25.0, 24.9));
        assert!(!fires(25.0, 25.0));
    }
}
