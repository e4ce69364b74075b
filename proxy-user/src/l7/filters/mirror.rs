//! Mirroring (`mirror`, `mirrors`, §1.13): fire-and-forget copies of the shaped request, each on its
//! own task, sent once the client's body is complete (Envoy's classic shadowing). The primary's
//! latency and status never depend on a mirror: nothing here is awaited by the request, a mirror
//! over the in-flight budget is dropped (never queued), and its response is discarded.
//!
//! Two budgets bound mirror work: [`MAX_IN_FLIGHT_PER_CLUSTER`] per mirror cluster, so that one
//! slow or overloaded mirror target cannot take the slots of the others (Envoy's shadows are
//! bounded per mirror cluster, by its circuit breakers, which Keel applies too: the copy goes
//! through the cluster's pool), and [`MAX_IN_FLIGHT`] for the whole proxy, which bounds the memory
//! copies may hold (each keeps its request and a body of up to 1 MiB).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::admin::Stats;
use crate::routing::Target;
use crate::upstream::cluster::Cluster;
use crate::upstream::locality::Topology;

use crate::upstream::{ClientId, PickRequest};

use crate::l7::body::RecordedBody;
use crate::l7::forward::UpstreamRequest;

/// Mirrored requests in flight per proxy; more are dropped.
pub const MAX_IN_FLIGHT: usize = 1024;
/// Mirrored requests in flight to one mirror cluster; more are dropped.
pub const MAX_IN_FLIGHT_PER_CLUSTER: usize = 256;
/// Bound on a mirror's life when the route has no timeout.
pub const DEFAULT_MIRROR_TIMEOUT: Duration = Duration::from_secs(30);

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Take one unit of `count` unless it is at `cap`.
fn take(count: &AtomicUsize, cap: usize) -> bool {
    count
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < cap).then_some(n + 1)
        })
        .is_ok()
}

fn give_back(count: &AtomicUsize) {
    // Saturating: a release without a take would be a bug, never a wrap-around.
    let _ = count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
}

/// Take a slot of both budgets (`node`, and `cluster` when the target exists), or neither.
fn take_both(node: &AtomicUsize, cluster: Option<&AtomicUsize>) -> bool {
    if let Some(c) = cluster {
        if !take(c, MAX_IN_FLIGHT_PER_CLUSTER) {
            return false;
        }
    }
    if take(node, MAX_IN_FLIGHT) {
        return true;
    }
    if let Some(c) = cluster {
        give_back(c);
    }
    false
}

/// A mirror's slots in the proxy's and its cluster's budgets, given back when the mirror task
/// ends, however it ends.
struct Slot {
    cluster: Option<Arc<Cluster>>,
}

impl Slot {
    fn acquire(target: &Target) -> Option<Slot> {
        let cluster = target.cluster().cloned();
        // Built only once both slots are taken: dropping a `Slot` gives them back.
        take_both(
            &IN_FLIGHT,
            cluster.as_deref().map(Cluster::mirrors_in_flight),
        )
        .then(|| Slot { cluster })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        give_back(&IN_FLIGHT);
        if let Some(c) = &self.cluster {
            give_back(c.mirrors_in_flight());
        }
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
    let Some(slot) = Slot::acquire(&job.target) else {
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
    fn a_full_cluster_leaves_the_others_their_slots_and_the_node_cap_holds() {
        let node = AtomicUsize::new(0);
        let (slow, other) = (AtomicUsize::new(0), AtomicUsize::new(0));
        for _ in 0..MAX_IN_FLIGHT_PER_CLUSTER {
            assert!(take_both(&node, Some(&slow)));
        }
        // The slow target is at its cap: its copies are dropped, another target's are not.
        assert!(!take_both(&node, Some(&slow)));
        assert!(take_both(&node, Some(&other)));
        assert_eq!(slow.load(Ordering::Acquire), MAX_IN_FLIGHT_PER_CLUSTER);
        assert_eq!(node.load(Ordering::Acquire), MAX_IN_FLIGHT_PER_CLUSTER + 1);
        // The node-wide cap holds over every cluster, and a refusal there takes no cluster slot.
        let clusters: Vec<AtomicUsize> = (0..8).map(|_| AtomicUsize::new(0)).collect();
        let mut taken = node.load(Ordering::Acquire);
        for c in &clusters {
            while take_both(&node, Some(c)) {
                taken += 1;
            }
        }
        assert_eq!(taken, MAX_IN_FLIGHT);
        let held: usize = clusters.iter().map(|c| c.load(Ordering::Acquire)).sum();
        assert_eq!(held + MAX_IN_FLIGHT_PER_CLUSTER + 1, MAX_IN_FLIGHT);
        // Releases free both budgets; an unpaired release never wraps around.
        give_back(&slow);
        give_back(&node);
        assert!(take_both(&node, Some(&slow)));
        let empty = AtomicUsize::new(0);
        give_back(&empty);
        assert_eq!(empty.load(Ordering::Acquire), 0);
    }

    #[test]
    fn a_refused_slot_gives_nothing_back() {
        use crate::upstream::{ClusterKey, ClusterRegistry, Discovery, UpstreamProtocol};
        let registry = ClusterRegistry::default();
        let cluster = registry.ensure(
            ClusterKey {
                host: "slow.default.svc.cluster.local".to_string(),
                port: 9080,
                subset: None,
                scope: String::new(),
            },
            UpstreamProtocol::Http1,
            crate::upstream::policy::ClusterPolicy::default(),
            Discovery::Static,
            Vec::new(),
        );
        let target = Target::Cluster(Arc::clone(&cluster));
        let held: Vec<Slot> = (0..MAX_IN_FLIGHT_PER_CLUSTER)
            .map_while(|_| Slot::acquire(&target))
            .collect();
        assert_eq!(held.len(), MAX_IN_FLIGHT_PER_CLUSTER);
        // Refusals, however many, leave the count at the cap.
        for _ in 0..10 {
            assert!(Slot::acquire(&target).is_none());
        }
        let count = || cluster.mirrors_in_flight().load(Ordering::Acquire);
        assert_eq!(count(), MAX_IN_FLIGHT_PER_CLUSTER);
        drop(held);
        assert_eq!(count(), 0);
        assert!(Slot::acquire(&target).is_some());
    }

    #[test]
    fn percentage_draws() {
        assert!(fires(100.0, 99.99));
        assert!(!fires(0.0, 0.0));
        assert!(fires(25.0, 24.9));
        assert!(!fires(25.0, 25.0));
    }
}
