//! Memory of per-client upstream state: builds `--clusters` clusters of `--endpoints` endpoints each,
//! lets `--clients` client pods pick an endpoint of every cluster (so each (client, cluster) pair holds
//! its balancer, breaker and outlier state), and reports the resident-set growth per pair.
//!
//! Run by `cargo xtask bench --upstream-memory`; prints one JSON line.

use std::net::SocketAddr;
use std::sync::Arc;

use keel::policy::{ConnectionPool, OutlierDetection, TrafficPolicy};
use keel::upstream::UpstreamProtocol;
use keel::upstream::{
    ClientId, ClusterKey, ClusterPolicy, ClusterRegistry, Discovery, PickRequest,
};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident set size in bytes, from `/proc/self/statm`.
fn rss_bytes() -> anyhow::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("statm has no resident field"))?
        .parse()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Ok(pages * u64::try_from(page)?)
}

/// A DestinationRule policy with a connection pool and outlier detection, so every pair builds a
/// breaker and a detector.
fn policy() -> ClusterPolicy {
    let tp = TrafficPolicy {
        connection_pool: Some(ConnectionPool {
            tcp_max_connections: Some(100),
            http1_max_pending_requests: Some(100),
            ..Default::default()
        }),
        outlier_detection: Some(OutlierDetection::default()),
        ..Default::default()
    };
    ClusterPolicy::resolve(Some(&tp), None, 80)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let clusters = arg("--clusters", 100);
    let clients = arg("--clients", 100);
    let endpoints = arg("--endpoints", 3);
    let registry = ClusterRegistry::default();
    let policy = policy();
    let handles: Vec<_> = (0..clusters)
        .map(|c| {
            let eps = (0..endpoints)
                .map(|e| {
                    SocketAddr::from((
                        [
                            10,
                            244,
                            u8::try_from(c % 250).unwrap_or(0),
                            u8::try_from(e % 250).unwrap_or(0),
                        ],
                        8080,
                    ))
                })
                .collect();
            registry.ensure(
                ClusterKey {
                    host: format!("svc-{c}.bench.svc.cluster.local"),
                    port: 80,
                    subset: None,
                    scope: String::new(),
                },
                UpstreamProtocol::Http1,
                policy.clone(),
                Discovery::Static,
                eps,
            )
        })
        .collect();
    let before = rss_bytes()?;
    let dst = SocketAddr::from(([10, 96, 0, 1], 80));
    let topology = keel::upstream::locality::Topology::default();
    for client in 1..=clients {
        for cluster in &handles {
            let req = PickRequest {
                client: ClientId(u64::try_from(client)?),
                original_dst: dst,
                avoid: &[],
                hash: None,
                topology: &topology,
            };
            // The pick creates the pair's state; dropping it ends the request.
            drop(Arc::clone(cluster).pick(&req).await);
        }
    }
    let after = rss_bytes()?;
    let pairs = clusters * clients;
    let pairs_counted: usize = handles.iter().map(|c| c.client_count()).sum();
    anyhow::ensure!(
        pairs_counted == pairs,
        "expected {pairs} pairs, found {pairs_counted}"
    );
    let grown = after.saturating_sub(before);
    println!(
        "{}",
        serde_json::json!({
            "clusters": clusters,
            "clients": clients,
            "endpoints_per_cluster": endpoints,
            "pairs": pairs,
            "rss_before_bytes": before,
            "rss_after_bytes": after,
            "rss_growth_bytes": grown,
            "bytes_per_pair": grown as f64 / pairs as f64,
        })
    );
    Ok(())
}
