//! `/stats` as Envoy serves it: `name: value` lines sorted by name (the default), `?format=json`
//! (`{"stats":[{"name":..,"value":..}]}`), `?filter=<regex>` (a search, as Envoy's: the regex may
//! match anywhere in the name), `?usedonly` (non-zero values only), and `?client=<ns>/<pod>`
//! (that pod's own counts only: what its sidecar would print).
//!
//! Names: `cluster.<outbound|port|subset|host>.<stat>` per cluster, summed over client pods by
//! default, and `keel.<name>` for Keel's own metrics (`crate::metrics::keel`). The breaker gauges
//! `circuit_breakers.default.{cx,rq_pending,rq,rq_retry}_open` are 0/1 for one client; summed, they
//! count the client pods whose breaker is at that limit.

use std::collections::BTreeMap;

use regex::Regex;

use super::AdminContext;
use crate::metrics::keel::KeelFacts;
use crate::state::State;
use crate::upstream::stats::ClusterStats;
use crate::upstream::ClientId;

/// The output encoding asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `name: value` lines.
    Text,
    /// Envoy's JSON shape.
    Json,
    /// The Prometheus exposition (as `/stats/prometheus`).
    Prometheus,
}

/// A parsed `/stats` query.
#[derive(Debug)]
pub struct Query {
    pub format: Format,
    pub filter: Option<Regex>,
    pub used_only: bool,
    /// `namespace/pod` of `?client=`.
    pub client: Option<String>,
}

/// Parse `/stats`'s query string; `Err` says what is wrong (a 400 for the caller).
pub fn parse_query(query: Option<&str>) -> Result<Query, String> {
    let mut q = Query {
        format: Format::Text,
        filter: None,
        used_only: false,
        client: None,
    };
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        // `+` is kept: regexes use it, and Envoy does not read it as a space.
        let value = super::percent_decode(&value.replace('+', "%2B"));
        match key {
            "format" => {
                q.format = match value.as_str() {
                    "text" => Format::Text,
                    "json" => Format::Json,
                    "prometheus" => Format::Prometheus,
                    other => {
                        return Err(format!(
                            "unknown format {other:?}: text, json or prometheus"
                        ))
                    }
                }
            }
            "filter" => {
                q.filter = Some(
                    Regex::new(&value)
                        .map_err(|e| format!("invalid filter regex {value:?}: {e}"))?,
                )
            }
            "usedonly" => q.used_only = true,
            "client" => q.client = Some(value),
            other => return Err(format!("unknown parameter {other:?}")),
        }
    }
    Ok(q)
}

/// Every cluster's stats by Envoy cluster name. With `client`, that client's own counters for the
/// clusters it has state for; otherwise the clusters' sums. Clusters that share a name (kept apart
/// only by the config that shaped them) are added up, as one Envoy name would show them.
pub fn cluster_lines(state: &State, client: Option<ClientId>) -> Vec<(String, u64)> {
    let mut by_name: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for cluster in state.clusters() {
        let stats: std::sync::Arc<ClusterStats> = match client {
            Some(id) => match cluster.client_state(id) {
                Some(c) => std::sync::Arc::clone(&c.stats().client),
                None => continue,
            },
            None => std::sync::Arc::clone(cluster.stats()),
        };
        let entry = by_name.entry(cluster.key.to_string()).or_default();
        // Breakers are per client: 0/1 for one client, summed the number of clients at a limit.
        let limits = &cluster.pool_config().limits;
        let states = match client {
            Some(id) => cluster.client_state(id).into_iter().collect(),
            None => cluster
                .client_states()
                .into_iter()
                .map(|(_, c)| c)
                .collect::<Vec<_>>(),
        };
        for stat in crate::upstream::breaker::OPEN_GAUGES {
            entry.entry(stat.to_string()).or_default();
        }
        for c in states {
            for (stat, open) in c.pool().breaker().open_gauges(limits) {
                *entry.entry(stat.to_string()).or_default() += open;
            }
        }
        for (stat, n) in stats.values() {
            *entry.entry(stat.to_string()).or_default() += n;
        }
        for (stat, n) in stats.code_values() {
            *entry.entry(stat).or_default() += n;
        }
    }
    by_name
        .into_iter()
        .flat_map(|(name, stats)| {
            stats
                .into_iter()
                .map(move |(stat, n)| (format!("cluster.{name}.{stat}"), n))
        })
        .collect()
}

/// Sort, filter and encode `lines` as `q` asks (text or JSON).
pub fn render(mut lines: Vec<(String, u64)>, q: &Query) -> String {
    lines.retain(|(name, v)| {
        (!q.used_only || *v != 0) && q.filter.as_ref().is_none_or(|re| re.is_match(name))
    });
    lines.sort();
    match q.format {
        Format::Json => {
            let stats: Vec<serde_json::Value> = lines
                .into_iter()
                .map(|(name, value)| serde_json::json!({"name": name, "value": value}))
                .collect();
            serde_json::json!({ "stats": stats }).to_string()
        }
        Format::Text | Format::Prometheus => lines
            .into_iter()
            .map(|(name, value)| format!("{name}: {value}\n"))
            .collect(),
    }
}

/// The client state `?client=<ns>/<pod>` names: that pod's (by its kernel cgroup), or the node's
/// shared state in node-wide mode. `Err` when no captured pod has that name.
pub fn client_id(ctx: &AdminContext, name: &str) -> Result<ClientId, String> {
    let node = ctx.state.load();
    let cgroup = node
        .pod_by_cgroup
        .iter()
        .find(|(_, pod)| node.pod_name(**pod) == name)
        .map(|(cgroup, _)| *cgroup)
        .ok_or_else(|| format!("no captured pod {name:?} (expected <namespace>/<pod>)"))?;
    Ok(ctx.state_scope.client(cgroup))
}

/// Keel's own metrics now, from the node counters, the config status and the kernel.
pub fn keel_facts(ctx: &AdminContext) -> KeelFacts {
    let s = &ctx.stats;
    let status = ctx
        .config_status
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    let rejected: std::collections::BTreeSet<&str> = status
        .rejected
        .iter()
        .map(|r| r.resource.as_str())
        .collect();
    let rejected = u64::try_from(rejected.len()).unwrap_or(u64::MAX);
    let warnings = u64::try_from(status.warnings.len()).unwrap_or(u64::MAX);
    let mut counters = vec![
        (
            "downstream_rq_pod_overflow",
            "Requests refused with 503 UO because their client pod had its request cap in flight",
            s.pod_request_overflow.get(),
        ),
        (
            "downstream_rq_pod_paced",
            "Requests held back to their client pod's request rate",
            s.pod_requests_paced.get(),
        ),
        (
            "downstream_rq_pod_rate_limited",
            "Requests refused with 429 RL because their client pod's request rate would have held them over 1 s",
            s.pod_requests_rate_limited.get(),
        ),
        (
            "downstream_cx_h2_flood",
            "HTTP/2 downstream connections closed for a frame flood",
            s.h2_flood_closed.get(),
        ),
        (
            "downstream_rq_body_idle_timeout",
            "Requests reset because their body went idle",
            s.request_body_idle_timeouts.get(),
        ),
        (
            "downstream_cx_write_idle_timeout",
            "Connections closed because the client took no response byte for the idle timeout",
            s.response_write_idle_timeouts.get(),
        ),
        (
            "downstream_cx_listener_change_drain",
            "HTTP connections drained because a push changed their destination's protocol or mesh status",
            s.listener_change_drains.get(),
        ),
        (
            "downstream_cx_overload_disable_keepalive",
            "Connections whose keep-alive was disabled under memory overload",
            s.overload_keepalive_disabled.get(),
        ),
        (
            "downstream_rq_overload_close",
            "Requests refused with 503 envoy overloaded under memory overload",
            s.overload_requests_refused.get(),
        ),
        (
            "downstream_cx_overload_reset",
            "Connections reset under memory overload, those holding the most unanswered bytes first",
            s.overload_connections_reset.get(),
        ),
        (
            "overload_actions_started",
            "Times the memory overload manager started an action",
            s.overload_level_raised.get(),
        ),
        (
            "connections_accepted",
            "Connections accepted on the proxy port",
            s.accepted.get(),
        ),
        (
            "connections_redirected",
            "Accepted connections the kernel redirected (with a record)",
            s.redirected.get(),
        ),
        (
            "connections_pending_pod_resolved",
            "Connections from a pod that had just started, held at accept until keel resolved it",
            s.pending_pod_resolved.get(),
        ),
        (
            "connections_pending_pod_passed_through",
            "Connections from a pod cgroup keel does not capture, relayed unchanged to their destination",
            s.pending_pod_passed_through.get(),
        ),
        (
            "http_requests",
            "HTTP requests received",
            s.http_requests.get(),
        ),
        (
            "tcp_connections",
            "TCP connections relayed",
            s.tcp_connections.get(),
        ),
        (
            "config_reloads",
            "Config loads that changed what is served",
            s.config_reloads.get(),
        ),
        (
            "config_rejections",
            "Config loads in which a resource was rejected",
            s.config_rejections.get(),
        ),
        (
            "upstream_rq_retry",
            "Retries, all clusters",
            s.upstream_rq_retry.get(),
        ),
        (
            "upstream_rq_retry_success",
            "Retried requests that succeeded, all clusters",
            s.upstream_rq_retry_success.get(),
        ),
        (
            "upstream_rq_retry_limit_exceeded",
            "Requests out of retries, all clusters",
            s.upstream_rq_retry_limit_exceeded.get(),
        ),
        (
            "retry_or_shadow_abandoned",
            "Retries or mirrors given up because the body outgrew the buffer",
            s.retry_or_shadow_abandoned.get(),
        ),
        (
            "upstream_rq_timeout",
            "Route timeouts, all clusters",
            s.upstream_rq_timeout.get(),
        ),
        (
            "upstream_rq_per_try_timeout",
            "Per-try timeouts, all clusters",
            s.upstream_rq_per_try_timeout.get(),
        ),
        (
            "fault_delays_injected",
            "Fault delays injected",
            s.fault_delays_injected.get(),
        ),
        (
            "fault_aborts_injected",
            "Fault aborts injected",
            s.fault_aborts_injected.get(),
        ),
        (
            "mirror_requests",
            "Mirrored requests sent",
            s.mirror_requests.get(),
        ),
        (
            "mirror_dropped",
            "Mirrored requests dropped",
            s.mirror_dropped.get(),
        ),
        (
            "cors_preflights_answered",
            "CORS preflights answered by the proxy",
            s.cors_preflights_answered.get(),
        ),
        ("upgrades", "Protocol upgrades relayed", s.upgrades.get()),
    ];
    let kernel = (ctx.kernel_stats)();
    if let Some(k) = &kernel {
        counters.extend([
            (
                "kernel_redirected",
                "connect() calls the kernel redirected",
                k.redirected,
            ),
            (
                "kernel_skipped_not_pod",
                "Meshed connects not from a captured pod",
                k.skipped_not_pod,
            ),
            (
                "kernel_skipped_map_full",
                "Connects sent direct: connection map full",
                k.skipped_map_full,
            ),
            (
                "kernel_established",
                "Redirected connections established",
                k.established,
            ),
            ("kernel_closed", "Redirected connections closed", k.closed),
            (
                "kernel_skipped_not_meshed",
                "Connects to destinations not meshed",
                k.skipped_not_meshed,
            ),
            (
                "kernel_skipped_no_proxy",
                "Connects with no proxy address of their family",
                k.skipped_no_proxy,
            ),
            (
                "kernel_reconnected",
                "Sockets connected again, record replaced",
                k.reconnected,
            ),
            (
                "kernel_tuple_insert_failed",
                "Tuple records that could not be inserted",
                k.tuple_insert_failed,
            ),
            (
                "kernel_cb_flags_failed",
                "Close callbacks that could not be enabled",
                k.cb_flags_failed,
            ),
            (
                "kernel_root_not_ancestor",
                "Connects from outside the cgroup root",
                k.root_not_ancestor,
            ),
            (
                "kernel_abi_mismatch",
                "Connects seen with a mismatched ABI",
                k.abi_mismatch,
            ),
            (
                "kernel_skipped_no_keel",
                "Meshed connects sent direct because no keel was alive",
                k.skipped_no_keel,
            ),
            (
                "kernel_refused_no_keel",
                "Meshed connects of fail-closed pods refused because no keel was alive",
                k.refused_no_keel,
            ),
            (
                "kernel_skipped_excluded",
                "Meshed connects sent direct because the pod's traffic annotations exclude them",
                k.skipped_excluded,
            ),
        ]);
    }
    KeelFacts {
        counters,
        gauges: vec![
            (
                "config_generation",
                "The config generation serving (1 = the first load)",
                s.config_reloads.get().saturating_add(1),
            ),
            (
                "config_rejected_resources",
                "Resources rejected by the latest config load",
                rejected,
            ),
            (
                "config_warnings",
                "Warnings of the latest config load",
                warnings,
            ),
            (
                "downstream_cx_active",
                "Downstream connections open",
                s.downstream_cx_active.get(),
            ),
            (
                "overload_level",
                "Memory overload actions in force: 0 none, 1 keep-alive off, 2 503 on new requests, 3 resetting the most expensive connections",
                s.overload_level.get(),
            ),
            (
                "overload_memory_pressure_percent",
                "Memory in use as a percentage of the tightest limit (0 with none)",
                s.overload_pressure_bp.get() / 100,
            ),
        ],
        refused: vec![
            ("no_record", s.refused_no_record.get()),
            ("unknown_pod", s.refused_unknown_pod.get()),
            ("unknown_destination", s.refused_unknown_destination.get()),
            ("global_connection_limit", s.refused_global_limit.get()),
            ("pod_connection_limit", s.refused_pod_limit.get()),
        ],
        maps: kernel.map(|k| k.maps).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines() -> Vec<(String, u64)> {
        vec![
            (
                "cluster.outbound|9080||reviews.default.svc.cluster.local.upstream_rq_retry".into(),
                3,
            ),
            (
                "cluster.outbound|9080||reviews.default.svc.cluster.local.upstream_cx_overflow"
                    .into(),
                0,
            ),
            ("keel.config_reloads".into(), 1),
        ]
    }

    #[test]
    fn text_is_sorted_name_colon_value() -> Result<(), String> {
        let q = parse_query(None)?;
        assert_eq!(
            render(lines(), &q),
            "cluster.outbound|9080||reviews.default.svc.cluster.local.upstream_cx_overflow: 0\n\
             cluster.outbound|9080||reviews.default.svc.cluster.local.upstream_rq_retry: 3\n\
             keel.config_reloads: 1\n"
        );
        Ok(())
    }

    #[test]
    fn json_has_envoys_shape() -> Result<(), String> {
        let q = parse_query(Some("format=json&filter=keel"))?;
        let v: serde_json::Value =
            serde_json::from_str(&render(lines(), &q)).map_err(|e| e.to_string())?;
        assert_eq!(
            v,
            serde_json::json!({"stats": [{"name": "keel.config_reloads", "value": 1}]})
        );
        Ok(())
    }

    #[test]
    fn filter_searches_anywhere_and_usedonly_drops_zeros() -> Result<(), String> {
        let q = parse_query(Some("filter=upstream_(rq_retry|cx_overflow)$"))?;
        assert_eq!(render(lines(), &q).lines().count(), 2);
        let q = parse_query(Some("filter=%5Ecluster%5C.&usedonly"))?;
        assert_eq!(
            render(lines(), &q),
            "cluster.outbound|9080||reviews.default.svc.cluster.local.upstream_rq_retry: 3\n"
        );
        Ok(())
    }

    #[test]
    fn bad_queries_say_why() {
        assert!(parse_query(Some("filter=(")).is_err_and(|e| e.contains("invalid filter regex")));
        assert!(parse_query(Some("format=xml")).is_err_and(|e| e.contains("unknown format")));
        assert!(parse_query(Some("client=default/sleep&format=json"))
            .is_ok_and(|q| q.client == Some("default/sleep".into()) && q.format == Format::Json));
    }
}
