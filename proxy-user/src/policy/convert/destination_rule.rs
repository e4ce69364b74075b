//! `DestinationRule` -> model, with Istio's validation rules (§2.0–2.8 of the reference).
//!
//! Keel's request path applies a DestinationRule's `host`, `subsets` (labels select endpoints),
//! `exportTo`, `workloadSelector` and, of `trafficPolicy` (top level, subset or port level),
//! `loadBalancer.simple` and `loadBalancer.consistentHash`. Every other `trafficPolicy` field is
//! validated as Istio does, and each one set yields an `accepted, not applied` warning saying what
//! Keel does instead ([`traffic_policy_not_applied`]). Settings whose absence would change behaviour
//! in a way users rely on (tunnelling, PROXY protocol) are rejected as unsupported.

use std::collections::BTreeSet;
use std::time::Duration;

use super::fields::set_fields;
use super::Ctx;
use crate::policy::error::*;
use crate::policy::model::*;
use crate::policy::validate::{self as v, StarHost};
use crate::source::{FieldPath, Segment};
use crate::wire::istio as w;

/// Maglev table sizes must be prime and below this.
const MAGLEV_MAX: i64 = 5_000_011;
/// Envoy's `minimum_ring_size` default, which Istio keeps when no size is set.
const DEFAULT_MINIMUM_RING_SIZE: u64 = 1024;

pub(super) fn convert(ctx: &mut Ctx<'_>, spec: &w::DestinationRuleSpec) -> Option<DestinationRule> {
    let spec_path = FieldPath::root().key("spec");
    let ns = ctx.ns().to_string();
    let host = match spec.host.as_deref() {
        None | Some("") => {
            ctx.err(&spec_path.key("host"), InvalidHost::Empty);
            return None;
        }
        Some(h) => h,
    };
    ctx.check(
        &spec_path.key("host"),
        v::wildcard_host(host, StarHost::Allowed),
    )?;
    let host = v::resolve_short_name(host, &ns);

    let top_policy = spec
        .traffic_policy
        .as_ref()
        .and_then(|tp| traffic_policy(ctx, &spec_path.key("trafficPolicy"), tp, true));

    let mut subsets = Vec::new();
    let mut names = BTreeSet::new();
    for (i, s) in spec.subsets.iter().enumerate() {
        let sp = spec_path.key("subsets").index(i);
        let name = match s.name.as_deref() {
            None | Some("") => {
                ctx.err(
                    &sp.key("name"),
                    InvalidTrafficPolicy::Missing("subset name"),
                );
                continue;
            }
            Some(n) => n,
        };
        if ctx.check(&sp.key("name"), v::dns1123_label(name)).is_none() {
            continue;
        }
        if !names.insert(name.to_string()) {
            ctx.err(
                &sp.key("name"),
                InvalidTrafficPolicy::DuplicateSubset(name.to_string()),
            );
            continue;
        }
        ctx.check(&sp.key("labels"), v::labels(&s.labels));
        let tp = s
            .traffic_policy
            .as_ref()
            .and_then(|tp| traffic_policy(ctx, &sp.key("trafficPolicy"), tp, true));
        subsets.push(Subset {
            name: name.to_string(),
            labels: s.labels.clone(),
            traffic_policy: tp,
        });
    }

    let export_to = ctx
        .check(
            &spec_path.key("exportTo"),
            v::export_to(&spec.export_to, &ns, v::ExportKind::Config),
        )
        .unwrap_or_default();
    let workload_selector = spec.workload_selector.as_ref().map(|ws| {
        ctx.check(
            &spec_path.key("workloadSelector").key("matchLabels"),
            v::labels(&ws.match_labels),
        );
        // A selector-DR only makes sense for clients in its own namespace.
        if !export_to.iter().all(|e| e == "." || *e == ns) {
            ctx.err(
                &spec_path.key("exportTo"),
                InvalidExportTo::WorkloadSelector,
            );
        }
        ws.match_labels.clone()
    });

    // Only an accepted rule is "accepted, not applied".
    if ctx.errors.is_empty() {
        if let Some(tp) = &spec.traffic_policy {
            traffic_policy_not_applied(ctx, &spec_path.key("trafficPolicy"), tp);
        }
        for (i, s) in spec.subsets.iter().enumerate() {
            if let Some(tp) = &s.traffic_policy {
                let path = spec_path.key("subsets").index(i).key("trafficPolicy");
                traffic_policy_not_applied(ctx, &path, tp);
            }
        }
    }

    Some(DestinationRule {
        meta: ctx.meta.clone(),
        host,
        traffic_policy: top_policy,
        subsets,
        export_to,
        workload_selector,
    })
}

/// Converts a `TrafficPolicy` (top level, subset, or — with `allow_port_level = false` — a port entry).
fn traffic_policy(
    ctx: &mut Ctx<'_>,
    path: &FieldPath,
    tp: &w::TrafficPolicy,
    allow_port_level: bool,
) -> Option<TrafficPolicy> {
    if tp.load_balancer.is_none()
        && tp.connection_pool.is_none()
        && tp.outlier_detection.is_none()
        && tp.tls.is_none()
        && tp.port_level_settings.is_empty()
        && tp.tunnel.is_none()
        && tp.proxy_protocol.is_none()
        && tp.retry_budget.is_none()
    {
        ctx.err(path, InvalidTrafficPolicy::Empty("trafficPolicy"));
        return None;
    }
    if tp.tunnel.is_some() && tp.proxy_protocol.is_some() {
        ctx.err(
            path,
            InvalidTrafficPolicy::Conflict("tunnel", "proxyProtocol"),
        );
    }
    if tp.tunnel.is_some() {
        ctx.err(
            &path.key("tunnel"),
            Invalid::Unsupported("trafficPolicy.tunnel".into()),
        );
    }
    if tp.proxy_protocol.is_some() {
        ctx.err(
            &path.key("proxyProtocol"),
            Invalid::Unsupported("trafficPolicy.proxyProtocol".into()),
        );
    }
    if let Some(rb) = &tp.retry_budget {
        let rp = path.key("retryBudget");
        if let Some(p) = rb.percent {
            range(
                ctx,
                &rp.key("percent"),
                "percent",
                p,
                0.0,
                100.0,
                "[0, 100]",
            );
        }
        if let Some(m) = rb.min_retry_concurrency {
            range(
                ctx,
                &rp.key("minRetryConcurrency"),
                "minRetryConcurrency",
                m as f64,
                0.0,
                f64::from(u32::MAX),
                ">= 0",
            );
        }
        if let Some(d) = &rb.budget_interval {
            ctx.check(&rp.key("budgetInterval"), v::duration_ms(d));
        }
    }
    let load_balancer = tp
        .load_balancer
        .as_ref()
        .and_then(|lb| load_balancer(ctx, &path.key("loadBalancer"), lb));
    let connection_pool = tp
        .connection_pool
        .as_ref()
        .and_then(|cp| connection_pool(ctx, &path.key("connectionPool"), cp));
    let outlier_detection = tp
        .outlier_detection
        .as_ref()
        .and_then(|od| outlier_detection(ctx, &path.key("outlierDetection"), od));
    if let Some(tls) = &tp.tls {
        client_tls(ctx, &path.key("tls"), tls);
    }
    let mut port_level = Vec::new();
    if !tp.port_level_settings.is_empty() && !allow_port_level {
        ctx.err(
            &path.key("portLevelSettings"),
            InvalidTrafficPolicy::Value("portLevelSettings cannot be nested".into()),
        );
    }
    let mut seen = BTreeSet::new();
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let pp = path.key("portLevelSettings").index(i);
        let number = match pl.port.as_ref().and_then(|p| p.number) {
            None => {
                ctx.err(&pp.key("port"), InvalidPort::Missing);
                continue;
            }
            Some(n) => n,
        };
        let Some(port) = ctx.check(&pp.key("port").key("number"), v::port(number)) else {
            continue;
        };
        if !seen.insert(port) {
            ctx.err(&pp.key("port"), InvalidPort::Duplicate(number));
            continue;
        }
        let as_policy = w::TrafficPolicy {
            load_balancer: pl.load_balancer.clone(),
            connection_pool: pl.connection_pool.clone(),
            outlier_detection: pl.outlier_detection.clone(),
            tls: pl.tls.clone(),
            ..Default::default()
        };
        if as_policy == w::TrafficPolicy::default() {
            ctx.err(
                &pp,
                InvalidTrafficPolicy::Empty("a portLevelSettings entry (besides port)"),
            );
            continue;
        }
        if let Some(p) = traffic_policy(ctx, &pp, &as_policy, false) {
            port_level.push((port, p));
        }
    }
    Some(TrafficPolicy {
        load_balancer,
        connection_pool,
        outlier_detection,
        port_level,
    })
}

/// Records an error unless `lo <= value <= hi`.
fn range(
    ctx: &mut Ctx<'_>,
    path: &FieldPath,
    field: &'static str,
    value: f64,
    lo: f64,
    hi: f64,
    desc: &'static str,
) -> bool {
    if value < lo || value > hi {
        ctx.err(
            path,
            InvalidTrafficPolicy::Range {
                field,
                value,
                range: desc,
            },
        );
        return false;
    }
    true
}

fn load_balancer(
    ctx: &mut Ctx<'_>,
    path: &FieldPath,
    lb: &w::LoadBalancerSettings,
) -> Option<LoadBalancer> {
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        ctx.err(
            path,
            InvalidTrafficPolicy::Conflict("simple", "consistentHash"),
        );
        return None;
    }
    if lb.locality_lb_setting.is_some() && lb.zone_aware_lb_setting.is_some() {
        ctx.err(
            path,
            InvalidTrafficPolicy::Conflict("localityLbSetting", "zoneAwareLbSetting"),
        );
    }
    if let Some(l) = &lb.locality_lb_setting {
        locality(ctx, &path.key("localityLbSetting"), l);
    }
    if lb.warmup.is_some() && lb.warmup_duration_secs.is_some() {
        ctx.err(
            path,
            InvalidTrafficPolicy::Conflict("warmup", "warmupDurationSecs"),
        );
    }
    if let Some(d) = &lb.warmup_duration_secs {
        ctx.check(&path.key("warmupDurationSecs"), v::duration_ms(d));
    }
    if let Some(wu) = &lb.warmup {
        let wp = path.key("warmup");
        match &wu.duration {
            None => ctx.err(
                &wp.key("duration"),
                InvalidTrafficPolicy::Missing("warmup.duration"),
            ),
            Some(d) => {
                ctx.check(&wp.key("duration"), v::duration_ms(d));
            }
        }
        if let Some(m) = wu.minimum_percent {
            range(
                ctx,
                &wp.key("minimumPercent"),
                "minimumPercent",
                m,
                0.0,
                100.0,
                "[0, 100]",
            );
        }
        if let Some(a) = wu.aggression {
            if a <= 0.0 {
                ctx.err(
                    &wp.key("aggression"),
                    InvalidTrafficPolicy::Range {
                        field: "aggression",
                        value: a,
                        range: "> 0",
                    },
                );
            }
        }
    }
    if let Some(s) = &lb.simple {
        return Some(match s.as_str() {
            "UNSPECIFIED" | "LEAST_REQUEST" => LoadBalancer::LeastRequest,
            "LEAST_CONN" => {
                ctx.warn(
                    &path.key("simple"),
                    "LEAST_CONN is deprecated; it means LEAST_REQUEST",
                );
                LoadBalancer::LeastRequest
            }
            "RANDOM" => LoadBalancer::Random,
            "PASSTHROUGH" => LoadBalancer::Passthrough,
            "ROUND_ROBIN" => LoadBalancer::RoundRobin,
            other => {
                ctx.err(
                    &path.key("simple"),
                    Invalid::Enum {
                        value: other.to_string(),
                        allowed: "UNSPECIFIED, LEAST_CONN, RANDOM, PASSTHROUGH, ROUND_ROBIN, LEAST_REQUEST",
                    },
                );
                return None;
            }
        });
    }
    let ch = lb.consistent_hash.as_ref()?;
    let cp = path.key("consistentHash");
    let keys = [
        ch.http_header_name.is_some(),
        ch.http_cookie.is_some(),
        ch.use_source_ip == Some(true),
        ch.http_query_parameter_name.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if keys == 0 {
        ctx.err(
            &cp,
            InvalidTrafficPolicy::Missing(
                "one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName",
            ),
        );
        return None;
    }
    if keys > 1 {
        ctx.err(
            &cp,
            InvalidTrafficPolicy::Value(
                "only one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName may be set".into(),
            ),
        );
        return None;
    }
    if ch.ring_hash.is_some() && ch.maglev.is_some() {
        ctx.err(&cp, InvalidTrafficPolicy::Conflict("ringHash", "maglev"));
        return None;
    }
    if ch.minimum_ring_size.is_some() && (ch.ring_hash.is_some() || ch.maglev.is_some()) {
        ctx.err(
            &cp,
            InvalidTrafficPolicy::Conflict("minimumRingSize", "ringHash/maglev"),
        );
        return None;
    }
    if let Some(m) = &ch.maglev {
        match m.table_size {
            None | Some(0) => ctx.err(
                &cp.key("maglev").key("tableSize"),
                InvalidTrafficPolicy::Missing("maglev.tableSize"),
            ),
            Some(n) if !(0..MAGLEV_MAX).contains(&n) || !v::is_prime(n.unsigned_abs()) => ctx.err(
                &cp.key("maglev").key("tableSize"),
                InvalidTrafficPolicy::Value(format!(
                    "maglev.tableSize {n} must be a prime below {MAGLEV_MAX}"
                )),
            ),
            Some(_) => {}
        }
    }
    let ring = ch
        .ring_hash
        .as_ref()
        .and_then(|r| r.minimum_ring_size)
        .or(ch.minimum_ring_size);
    if ch.minimum_ring_size.is_some() {
        ctx.warn(
            &cp.key("minimumRingSize"),
            "deprecated, use ringHash.minimumRingSize",
        );
    }
    let minimum_ring_size = match ring {
        Some(n) if n < 0 => {
            ctx.err(
                &cp,
                InvalidTrafficPolicy::Range {
                    field: "minimumRingSize",
                    value: n as f64,
                    range: ">= 0",
                },
            );
            return None;
        }
        // 0 means unset, as in Istio.
        Some(n) => u64::try_from(n).ok().filter(|n| *n > 0),
        None => None,
    };
    let algorithm = match ch.maglev.as_ref().and_then(|m| m.table_size) {
        Some(size) => HashAlgorithm::Maglev {
            table_size: size.unsigned_abs(),
        },
        None => HashAlgorithm::RingHash {
            minimum_ring_size: minimum_ring_size.unwrap_or(DEFAULT_MINIMUM_RING_SIZE),
        },
    };
    let key = if let Some(h) = &ch.http_header_name {
        HashKey::Header(ctx.check(&cp.key("httpHeaderName"), v::header_name(h))?)
    } else if let Some(c) = &ch.http_cookie {
        let kp = cp.key("httpCookie");
        let name = match c.name.as_deref() {
            None | Some("") => {
                ctx.err(
                    &kp.key("name"),
                    InvalidTrafficPolicy::Missing("httpCookie.name"),
                );
                return None;
            }
            Some(n) => n.to_string(),
        };
        let ttl = match &c.ttl {
            None => None,
            Some(t) => Some(ctx.check(&kp.key("ttl"), v::duration(t))?),
        };
        let mut attr_names = BTreeSet::new();
        for (i, a) in c.attributes.iter().enumerate() {
            let ap = kp.key("attributes").index(i);
            match a.name.as_deref() {
                None | Some("") => ctx.err(
                    &ap.key("name"),
                    InvalidTrafficPolicy::Missing("attribute name"),
                ),
                Some(n) if !attr_names.insert(n.to_string()) => ctx.err(
                    &ap.key("name"),
                    InvalidTrafficPolicy::Value(format!("duplicate cookie attribute {n:?}")),
                ),
                Some(_) => {}
            }
        }
        HashKey::Cookie {
            name,
            path: c.path.clone(),
            ttl,
            attributes: c
                .attributes
                .iter()
                .filter_map(|a| {
                    let name = a.name.clone().filter(|n| !n.is_empty())?;
                    Some((name, a.value.clone().unwrap_or_default()))
                })
                .collect(),
        }
    } else if ch.use_source_ip == Some(true) {
        HashKey::SourceIp
    } else if let Some(q) = &ch.http_query_parameter_name {
        if q.is_empty() {
            ctx.err(
                &cp.key("httpQueryParameterName"),
                InvalidTrafficPolicy::Missing("httpQueryParameterName"),
            );
            return None;
        }
        HashKey::QueryParameter(q.clone())
    } else {
        return None;
    };
    Some(LoadBalancer::ConsistentHash(ConsistentHash {
        key,
        algorithm,
    }))
}

fn locality(ctx: &mut Ctx<'_>, path: &FieldPath, l: &w::LocalityLbSetting) {
    if !l.distribute.is_empty() && !l.failover.is_empty() {
        ctx.err(
            path,
            InvalidTrafficPolicy::Conflict("distribute", "failover"),
        );
    }
    for (i, d) in l.distribute.iter().enumerate() {
        let dp = path.key("distribute").index(i);
        match d.from.as_deref().unwrap_or("") {
            "" => ctx.err(
                &dp.key("from"),
                InvalidTrafficPolicy::Missing("distribute.from"),
            ),
            from => {
                ctx.check(&dp.key("from"), locality_pattern(from));
            }
        }
        let mut sum = 0i64;
        for (loc, wgt) in &d.to {
            ctx.check(&dp.key("to").key(loc.clone()), locality_pattern(loc));
            if !(1..=100).contains(wgt) {
                ctx.err(
                    &dp.key("to").key(loc.clone()),
                    InvalidTrafficPolicy::Range {
                        field: "weight",
                        value: *wgt as f64,
                        range: "1..100",
                    },
                );
            }
            sum += wgt;
        }
        if sum != 100 {
            ctx.err(
                &dp.key("to"),
                InvalidTrafficPolicy::Value(format!("distribute weights sum to {sum}, not 100")),
            );
        }
    }
    for (i, f) in l.failover.iter().enumerate() {
        let fp = path.key("failover").index(i);
        let (from, to) = (
            f.from.as_deref().unwrap_or(""),
            f.to.as_deref().unwrap_or(""),
        );
        if from.is_empty() || to.is_empty() {
            ctx.err(
                &fp,
                InvalidTrafficPolicy::Missing("failover.from and failover.to"),
            );
        } else if from == to {
            ctx.err(
                &fp,
                InvalidTrafficPolicy::Value(
                    "failover from and to must be different regions".into(),
                ),
            );
        } else if from.contains(['/', '*']) || to.contains(['/', '*']) {
            ctx.err(
                &fp,
                InvalidTrafficPolicy::Value("failover names regions: no '/' or '*'".into()),
            );
        }
    }
    // Istio: with `failover` the region/zone/subzone order is fixed, so priority labels cannot name them.
    if !l.failover.is_empty() {
        for (i, label) in l.failover_priority.iter().enumerate() {
            let key = label.split_once('=').map_or(label.as_str(), |(k, _)| k);
            if TOPOLOGY_LABELS.contains(&key) {
                ctx.err(
                    &path.key("failoverPriority").index(i),
                    InvalidTrafficPolicy::Value(format!(
                        "failoverPriority cannot list the topology label {key:?} together with failover"
                    )),
                );
            }
        }
    }
}

/// The node topology labels that locality load balancing orders by (region, zone, subzone).
const TOPOLOGY_LABELS: &[&str] = &[
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
];

/// A locality pattern `region/zone/subzone`: at most one `*`, and only as the last character (Istio's
/// `validateLocalities`).
fn locality_pattern(loc: &str) -> Result<(), InvalidTrafficPolicy> {
    let stars = loc.matches('*').count();
    if stars > 1 || (stars == 1 && !loc.ends_with('*')) {
        return Err(InvalidTrafficPolicy::Value(format!(
            "locality {loc:?}: a wildcard '*' may only appear once, at the end"
        )));
    }
    Ok(())
}

/// A non-negative count; 0 means "Istio default" (unlimited), which the model writes as `None`.
fn limit(ctx: &mut Ctx<'_>, path: &FieldPath, field: &'static str, v: Option<i64>) -> Option<u32> {
    let n = v?;
    if n < 0 || n > i64::from(i32::MAX) {
        ctx.err(
            path,
            InvalidTrafficPolicy::Range {
                field,
                value: n as f64,
                range: "0..2147483647",
            },
        );
        return None;
    }
    if n == 0 {
        return None;
    }
    u32::try_from(n).ok()
}

fn connection_pool(
    ctx: &mut Ctx<'_>,
    path: &FieldPath,
    cp: &w::ConnectionPoolSettings,
) -> Option<ConnectionPool> {
    if cp.tcp.is_none() && cp.http.is_none() {
        ctx.err(
            path,
            InvalidTrafficPolicy::Empty("connectionPool (tcp or http)"),
        );
        return None;
    }
    let mut out = ConnectionPool::default();
    let mut tcp_idle = None;
    if let Some(tcp) = &cp.tcp {
        let tp = path.key("tcp");
        out.tcp_max_connections = limit(
            ctx,
            &tp.key("maxConnections"),
            "maxConnections",
            tcp.max_connections,
        );
        out.tcp_connect_timeout = tcp
            .connect_timeout
            .as_deref()
            .and_then(|d| ctx.check(&tp.key("connectTimeout"), v::duration_ms(d)));
        if let Some(ka) = &tcp.tcp_keepalive {
            let kp = tp.key("tcpKeepalive");
            if let Some(p) = ka.probes {
                range(
                    ctx,
                    &kp.key("probes"),
                    "probes",
                    p as f64,
                    0.0,
                    f64::from(u32::MAX),
                    ">= 0",
                );
            }
            for (k, d) in [("time", &ka.time), ("interval", &ka.interval)] {
                if let Some(d) = d {
                    ctx.check(&kp.key(k), v::duration_ms(d));
                }
            }
        }
        if let Some(d) = &tcp.max_connection_duration {
            ctx.check(&tp.key("maxConnectionDuration"), v::duration_ms(d));
        }
        tcp_idle = tcp
            .idle_timeout
            .as_deref()
            .and_then(|d| ctx.check(&tp.key("idleTimeout"), v::duration_ms_or_zero(d)));
    }
    let mut http_idle = None;
    if let Some(http) = &cp.http {
        let hp = path.key("http");
        out.http1_max_pending_requests = limit(
            ctx,
            &hp.key("http1MaxPendingRequests"),
            "http1MaxPendingRequests",
            http.http1_max_pending_requests,
        );
        out.http2_max_requests = limit(
            ctx,
            &hp.key("http2MaxRequests"),
            "http2MaxRequests",
            http.http2_max_requests,
        );
        out.max_requests_per_connection = limit(
            ctx,
            &hp.key("maxRequestsPerConnection"),
            "maxRequestsPerConnection",
            http.max_requests_per_connection,
        );
        out.max_retries = limit(ctx, &hp.key("maxRetries"), "maxRetries", http.max_retries);
        http_idle = http
            .idle_timeout
            .as_deref()
            .and_then(|d| ctx.check(&hp.key("idleTimeout"), v::duration_ms_or_zero(d)));
        let policy = http.h2_upgrade_policy.as_deref().unwrap_or("DEFAULT");
        match policy {
            "DEFAULT" | "DO_NOT_UPGRADE" | "UPGRADE" => {}
            other => ctx.err(
                &hp.key("h2UpgradePolicy"),
                Invalid::Enum {
                    value: other.to_string(),
                    allowed: "DEFAULT, DO_NOT_UPGRADE, UPGRADE",
                },
            ),
        }
        if policy == "UPGRADE" && http.use_client_protocol == Some(true) {
            ctx.err(
                &hp,
                InvalidTrafficPolicy::Conflict("h2UpgradePolicy: UPGRADE", "useClientProtocol"),
            );
        }
        if let Some(n) = http.max_concurrent_streams {
            limit(
                ctx,
                &hp.key("maxConcurrentStreams"),
                "maxConcurrentStreams",
                Some(n),
            );
        }
        if let Some(ka) = &http.http2_keep_alive {
            let kp = hp.key("http2KeepAlive");
            match (&ka.interval, &ka.timeout) {
                (Some(i), Some(t)) => {
                    ctx.check(&kp.key("interval"), v::duration_ms(i));
                    ctx.check(&kp.key("timeout"), v::duration_ms(t));
                }
                _ => ctx.err(
                    &kp,
                    InvalidTrafficPolicy::Missing(
                        "http2KeepAlive.interval and http2KeepAlive.timeout",
                    ),
                ),
            }
        }
    }
    // Istio uses the TCP idle timeout for HTTP too when the HTTP one is unset.
    out.idle_timeout = http_idle.or(tcp_idle);
    Some(out)
}

fn outlier_detection(
    ctx: &mut Ctx<'_>,
    path: &FieldPath,
    od: &w::OutlierDetection,
) -> Option<OutlierDetection> {
    let before = ctx.errors.len();
    let count = |ctx: &mut Ctx<'_>,
                 key: &str,
                 field: &'static str,
                 v: Option<i64>|
     -> Option<Option<u32>> {
        match v {
            None => Some(None),
            Some(n) if n < 0 || n > i64::from(u32::MAX) => {
                ctx.err(
                    &path.key(key),
                    InvalidTrafficPolicy::Range {
                        field,
                        value: n as f64,
                        range: ">= 0",
                    },
                );
                None
            }
            Some(n) => Some(u32::try_from(n).ok()),
        }
    };
    // Unset = Envoy's default of 5 while the block is present; an explicit 0 disables the check.
    let c5 = count(
        ctx,
        "consecutive5xxErrors",
        "consecutive5xxErrors",
        od.consecutive_5xx_errors,
    );
    let consecutive_5xx_errors = match c5 {
        Some(None) => Some(5),
        Some(Some(0)) | None => None,
        Some(Some(n)) => Some(n),
    };
    let consecutive_gateway_errors = count(
        ctx,
        "consecutiveGatewayErrors",
        "consecutiveGatewayErrors",
        od.consecutive_gateway_errors,
    )
    .flatten()
    .filter(|n| *n > 0);
    let local = count(
        ctx,
        "consecutiveLocalOriginFailures",
        "consecutiveLocalOriginFailures",
        od.consecutive_local_origin_failures,
    );
    let split = od.split_external_local_origin_errors == Some(true);
    if local.flatten().is_some() && !split {
        ctx.err(
            &path.key("consecutiveLocalOriginFailures"),
            InvalidTrafficPolicy::Value(
                "consecutiveLocalOriginFailures requires splitExternalLocalOriginErrors: true"
                    .into(),
            ),
        );
    }
    let dur = |ctx: &mut Ctx<'_>, key: &str, v: &Option<String>, default: Duration| match v {
        None => default,
        Some(s) => ctx
            .check(&path.key(key), v::duration_ms(s))
            .unwrap_or(default),
    };
    let interval = dur(ctx, "interval", &od.interval, Duration::from_secs(10));
    let base_ejection_time = dur(
        ctx,
        "baseEjectionTime",
        &od.base_ejection_time,
        Duration::from_secs(30),
    );
    let pct =
        |ctx: &mut Ctx<'_>, key: &str, field: &'static str, v: Option<i64>, default: u32| match v {
            None => default,
            Some(n) if (0..=100).contains(&n) => u32::try_from(n).unwrap_or(default),
            Some(n) => {
                ctx.err(
                    &path.key(key),
                    InvalidTrafficPolicy::Range {
                        field,
                        value: n as f64,
                        range: "0..100",
                    },
                );
                default
            }
        };
    let max_ejection_percent = pct(
        ctx,
        "maxEjectionPercent",
        "maxEjectionPercent",
        od.max_ejection_percent,
        10,
    );
    let min_health_percent = pct(
        ctx,
        "minHealthPercent",
        "minHealthPercent",
        od.min_health_percent,
        0,
    );
    for (i, c) in od.outlier_detection_http_error_codes.iter().enumerate() {
        if !(100..=599).contains(c) {
            ctx.err(
                &path.key("outlierDetectionHttpErrorCodes").index(i),
                InvalidTrafficPolicy::Range {
                    field: "status code",
                    value: *c as f64,
                    range: "100..599",
                },
            );
        }
    }
    if ctx.errors.len() > before {
        return None;
    }
    Some(OutlierDetection {
        consecutive_5xx_errors,
        consecutive_gateway_errors,
        interval,
        base_ejection_time,
        max_ejection_percent,
        min_health_percent,
    })
}

fn client_tls(ctx: &mut Ctx<'_>, path: &FieldPath, tls: &w::ClientTlsSettings) {
    let mode = tls.mode.as_deref().unwrap_or("DISABLE");
    if !matches!(mode, "DISABLE" | "SIMPLE" | "MUTUAL" | "ISTIO_MUTUAL") {
        ctx.err(
            &path.key("mode"),
            Invalid::Enum {
                value: mode.to_string(),
                allowed: "DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL",
            },
        );
        return;
    }
    let files = tls.client_certificate.is_some()
        || tls.private_key.is_some()
        || tls.ca_certificates.is_some();
    if tls.credential_name.is_some() && files {
        ctx.err(
            path,
            InvalidTrafficPolicy::Conflict(
                "credentialName",
                "clientCertificate/privateKey/caCertificates",
            ),
        );
    }
    if mode == "MUTUAL"
        && tls.credential_name.is_none()
        && (tls.client_certificate.is_none() || tls.private_key.is_none())
    {
        ctx.err(
            path,
            InvalidTrafficPolicy::Missing(
                "clientCertificate and privateKey (or credentialName) for MUTUAL",
            ),
        );
    }
    if tls.insecure_skip_verify == Some(true)
        && (tls.ca_certificates.is_some() || !tls.subject_alt_names.is_empty())
    {
        ctx.err(
            path,
            InvalidTrafficPolicy::Conflict("insecureSkipVerify", "caCertificates/subjectAltNames"),
        );
    }
}

/// Warns `accepted, not applied` once for every field set in a valid `trafficPolicy` at `path`, including
/// its `portLevelSettings` entries (whose `port` only says which port the entry is for).
fn traffic_policy_not_applied(ctx: &mut Ctx<'_>, path: &FieldPath, tp: &w::TrafficPolicy) {
    let own = w::TrafficPolicy {
        port_level_settings: Vec::new(),
        ..tp.clone()
    };
    let mut blocks = vec![(path.clone(), set_fields(&own, path))];
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let at = path.key("portLevelSettings").index(i);
        let settings = w::PortTrafficPolicy {
            port: None,
            ..pl.clone()
        };
        let fields = set_fields(&settings, &at);
        blocks.push((at, fields));
    }
    for (root, fields) in blocks {
        for (field, value) in fields {
            let inner: Vec<&str> = field.0[root.0.len()..]
                .iter()
                .filter_map(|s| match s {
                    Segment::Key(k) => Some(k.as_str()),
                    Segment::Index(_) => None,
                })
                .collect();
            if let Some(today) = traffic_policy_today(&inner, &value) {
                ctx.not_applied(&field, Some(today));
            }
        }
    }
}

const NO_SLOW_START: &str = "Keel has no slow start: a new endpoint gets its full share at once";
const IDLE: &str =
    "pooled HTTP/1.1 connections close after 90 s idle; HTTP/2 and TCP connections have no idle timeout";
const NO_CIRCUIT_BREAKING: &str =
    "Keel has no circuit breaking: it limits no connections or requests";
const NO_EJECTION: &str = "Keel ejects no endpoints: every ready endpoint stays in the balancer";
const PLAINTEXT: &str = "Keel connects to upstreams in plaintext";

/// What Keel does instead of the traffic-policy field at `inner` (the path below the policy, keys only)
/// set to `value`; `None` when the value asks for what Keel does anyway (e.g. `LEAST_REQUEST`).
fn traffic_policy_today(inner: &[&str], value: &serde_yaml::Value) -> Option<&'static str> {
    let s = value.as_str();
    Some(match inner {
        // Applied by upstream::lb (the deprecated `LEAST_CONN` and `minimumRingSize` have their
        // own deprecation warnings).
        ["loadBalancer", "simple"] | ["loadBalancer", "consistentHash", ..] => return None,
        ["loadBalancer", "localityLbSetting", ..] | ["loadBalancer", "zoneAwareLbSetting", ..] => {
            "Keel treats all localities alike"
        }
        ["loadBalancer", "warmupDurationSecs"] => {
            "deprecated, use warmup; Keel has no slow start: a new endpoint gets its full share at once"
        }
        ["loadBalancer", "warmup", ..] => NO_SLOW_START,
        ["loadBalancer", ..] => "Keel balances by the cluster's simple or consistent-hash policy only",
        ["connectionPool", "tcp", "connectTimeout"] => {
            "Keel gives up on an upstream connect after 10 s"
        }
        ["connectionPool", "tcp", "tcpKeepalive", ..] => {
            "Keel does not enable TCP keepalive on upstream connections"
        }
        ["connectionPool", "tcp", "maxConnectionDuration"] => {
            "an upstream connection lives as long as it is used"
        }
        ["connectionPool", _, "idleTimeout"] => IDLE,
        ["connectionPool", "http", "maxRequestsPerConnection"] => {
            "Keel reuses an upstream connection for any number of requests"
        }
        ["connectionPool", "http", "maxRetries"] | ["retryBudget", ..] => {
            "Keel sets no cluster-wide limit on retries"
        }
        ["connectionPool", "http", "h2UpgradePolicy"] => match s {
            Some("DEFAULT" | "DO_NOT_UPGRADE") => return None,
            _ => "Keel speaks the port's declared protocol upstream and never upgrades HTTP/1.1 to HTTP/2",
        },
        ["connectionPool", "http", "useClientProtocol"] => match value.as_bool() {
            Some(false) => return None,
            _ => "Keel speaks the port's declared protocol upstream (the client's only on a port with no declared protocol)",
        },
        ["connectionPool", "http", "maxConcurrentStreams"] => {
            "Keel sets no HTTP/2 stream limit of its own"
        }
        ["connectionPool", "http", "http2KeepAlive", ..] => "Keel sends no HTTP/2 keepalive pings",
        ["connectionPool", ..] => NO_CIRCUIT_BREAKING,
        ["outlierDetection", "consecutiveErrors"] => {
            "deprecated and ignored as in Istio, use consecutive5xxErrors; Keel ejects no endpoints"
        }
        ["outlierDetection", ..] => NO_EJECTION,
        ["tls", "mode"] => match s {
            Some("DISABLE") => return None,
            _ => PLAINTEXT,
        },
        ["tls", ..] => PLAINTEXT,
        _ => "Keel applies no DestinationRule trafficPolicy",
    })
}
