//! `DestinationRule` -> model, with Istio's validation rules (§2.0–2.8 of the reference).
//!
//! Keel's request path applies a DestinationRule's `host`, `subsets` (labels select endpoints),
//! `exportTo`, `workloadSelector`, and of `trafficPolicy` (top level, subset or port level) the
//! `connectionPool`, `retryBudget`, `outlierDetection`, `tls` (TLS origination; its files are read and
//! parsed here, so `keel validate` reports a bad certificate), and `loadBalancer` (`simple`,
//! `consistentHash`, `localityLbSetting`, `warmup`; not `zoneAwareLbSetting`). Every other field is validated as Istio does, and each one set
//! yields an `accepted, not applied` warning saying what Keel does instead
//! ([`traffic_policy_not_applied`]). Settings whose absence would
//! change behaviour in a way users rely on (tunnelling, PROXY protocol, `ISTIO_MUTUAL`,
//! `credentialName` with `SIMPLE`/`MUTUAL`) are rejected as unsupported.
//!
//! Validation follows istiod (`ValidateDestinationRule` and its helpers) and the CRD schema rule by
//! rule, quirks included; `config/testdata/rules/destination-rule.md` lists every rule.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::{Error as PemError, PemObject};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};

use super::fields::set_fields;
use super::Ctx;
use crate::policy::error::*;
use crate::policy::model::*;
use crate::policy::validate as v;
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
    ctx.check(&spec_path.key("host"), v::wildcard_domain(host))?;
    // Istio expands a short name but keeps the case: hosts match case-sensitively, so `Reviews`
    // selects no Kubernetes service (all lower case) there, and none here.
    let host = if host.contains('.') || host == "*" {
        host.to_string()
    } else {
        format!("{host}.{ns}.svc.{CLUSTER_DOMAIN}")
    };

    let top_policy = spec
        .traffic_policy
        .as_ref()
        .and_then(|tp| traffic_policy(ctx, &spec_path.key("trafficPolicy"), tp));

    let mut subsets = Vec::new();
    let mut names = BTreeSet::new();
    for (i, s) in spec.subsets.iter().enumerate() {
        let sp = spec_path.key("subsets").index(i);
        let name = s.name.as_deref().unwrap_or("");
        // istiod reports a duplicate before it looks at the name itself.
        if !names.insert(name.to_string()) {
            ctx.err(
                &sp.key("name"),
                InvalidTrafficPolicy::DuplicateSubset(name.to_string()),
            );
            continue;
        }
        if name.is_empty() {
            ctx.err(
                &sp.key("name"),
                InvalidTrafficPolicy::Missing("subset name"),
            );
            continue;
        }
        if !v::is_istio_dns1123_label(name) {
            ctx.err(
                &sp.key("name"),
                InvalidTrafficPolicy::Value(format!(
                    "subset name {name:?} is not a DNS-1123 label (letters, digits and '-', at most 63 \
                     characters, starting and ending with a letter or digit)"
                )),
            );
            continue;
        }
        ctx.check(&sp.key("labels"), v::istio_labels(&s.labels));
        let tp = s
            .traffic_policy
            .as_ref()
            .and_then(|tp| traffic_policy(ctx, &sp.key("trafficPolicy"), tp));
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
        workload_selector(ctx, &spec_path.key("workloadSelector"), &ws.match_labels);
        // A selector-DR only makes sense for clients in its own namespace (empty = its own namespace).
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

/// The CRD's `maxItems` for `portLevelSettings`.
const MAX_PORT_LEVEL_SETTINGS: usize = 4096;
/// The CRD's `maxProperties` for `workloadSelector.matchLabels`.
const MAX_SELECTOR_LABELS: usize = 4096;

/// `workloadSelector.matchLabels`: istiod's `validateWorkloadSelector` (no empty key, no `*` in a key
/// or value; warns when there are no labels) and the CRD's bounds (values of at most 63 characters,
/// at most 4096 labels). Keys and values are not otherwise checked: one no pod carries simply selects
/// nothing.
fn workload_selector(
    ctx: &mut Ctx<'_>,
    path: &FieldPath,
    labels: &std::collections::BTreeMap<String, String>,
) {
    let lp = path.key("matchLabels");
    if labels.is_empty() {
        ctx.warn(
            path,
            "workload selector specified without labels: the rule applies to every workload in the namespace",
        );
    }
    if labels.len() > MAX_SELECTOR_LABELS {
        ctx.err(
            &lp,
            InvalidTrafficPolicy::Value(format!(
                "matchLabels has {} labels; at most {MAX_SELECTOR_LABELS} are allowed",
                labels.len()
            )),
        );
    }
    for (k, val) in labels {
        if k.is_empty() {
            ctx.err(
                &lp,
                InvalidTrafficPolicy::Value(format!(
                    "empty key is not supported in selector: \"={val}\""
                )),
            );
        }
        if k.contains('*') || val.contains('*') {
            ctx.err(
                &lp.key(k.clone()),
                InvalidTrafficPolicy::Value(format!(
                    "wildcard is not supported in selector: \"{k}={val}\""
                )),
            );
        }
        if val.len() > 63 {
            ctx.err(
                &lp.key(k.clone()),
                InvalidTrafficPolicy::Value(format!(
                    "label value for {k:?} is {} characters long; at most 63 are allowed",
                    val.len()
                )),
            );
        }
    }
}

/// Converts a top-level or subset `TrafficPolicy`, with Istio's `validateTrafficPolicy` rules.
fn traffic_policy(
    ctx: &mut Ctx<'_>,
    path: &FieldPath,
    tp: &w::TrafficPolicy,
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
        // istiod stops at this error and checks nothing else in the policy.
        ctx.err(
            path,
            InvalidTrafficPolicy::Conflict("tunnel", "proxyProtocol"),
        );
        return None;
    }
    if let Some(t) = &tp.tunnel {
        tunnel(ctx, &path.key("tunnel"), t);
    }
    if let Some(pp) = &tp.proxy_protocol {
        proxy_protocol(ctx, &path.key("proxyProtocol"), pp);
    }
    let retry_budget = tp
        .retry_budget
        .as_ref()
        .and_then(|rb| retry_budget(ctx, &path.key("retryBudget"), rb));
    let mut out = port_policy(
        ctx,
        path,
        tp.load_balancer.as_ref(),
        tp.connection_pool.as_ref(),
        tp.outlier_detection.as_ref(),
        tp.tls.as_ref(),
    );
    out.retry_budget = retry_budget;
    let mut port_level = Vec::new();
    if tp.port_level_settings.len() > MAX_PORT_LEVEL_SETTINGS {
        ctx.err(
            &path.key("portLevelSettings"),
            InvalidTrafficPolicy::Value(format!(
                "portLevelSettings has {} entries; at most {MAX_PORT_LEVEL_SETTINGS} are allowed",
                tp.port_level_settings.len()
            )),
        );
    }
    let mut seen = BTreeSet::new();
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let pp = path.key("portLevelSettings").index(i);
        // `port: {}` is a port (number 0) to istiod; only a missing `port` is an error.
        let number = pl.port.as_ref().map(|p| p.number.unwrap_or(0));
        if number.is_none() {
            ctx.err(&pp.key("port"), InvalidPort::Missing);
        }
        if pl.load_balancer.is_none()
            && pl.connection_pool.is_none()
            && pl.outlier_detection.is_none()
            && pl.tls.is_none()
        {
            ctx.err(
                &pp,
                InvalidTrafficPolicy::Empty("a portLevelSettings entry (besides port)"),
            );
            continue;
        }
        let policy = port_policy(
            ctx,
            &pp,
            pl.load_balancer.as_ref(),
            pl.connection_pool.as_ref(),
            pl.outlier_detection.as_ref(),
            pl.tls.as_ref(),
        );
        let Some(number) = number else { continue };
        if !(0..=i64::from(u32::MAX)).contains(&number) {
            ctx.err(
                &pp.key("port").key("number"),
                InvalidTrafficPolicy::Range {
                    field: "port number",
                    value: number as f64,
                    range: "0..4294967295",
                },
            );
            continue;
        }
        // istiod accepts any number, but an entry applies only to a service port (1..65535) and,
        // like istiod, Keel uses the first entry for a port.
        let Ok(port) = v::port(number) else {
            ctx.warn(
                &pp.key("port").key("number"),
                format!("port {number} is not a service port (1..65535); this entry never applies"),
            );
            continue;
        };
        if !seen.insert(port) {
            ctx.warn(
                &pp.key("port").key("number"),
                format!("port {port} is listed before; only the first entry for it applies, as in Istio"),
            );
            continue;
        }
        port_level.push((port, policy));
    }
    out.port_level = port_level;
    Some(out)
}

/// The part of a traffic policy a `portLevelSettings` entry can hold too (Istio validates it the same
/// way at every level).
fn port_policy(
    ctx: &mut Ctx<'_>,
    path: &FieldPath,
    lb: Option<&w::LoadBalancerSettings>,
    cp: Option<&w::ConnectionPoolSettings>,
    od: Option<&w::OutlierDetection>,
    tls: Option<&w::ClientTlsSettings>,
) -> TrafficPolicy {
    let load_balancer = lb.and_then(|lb| load_balancer(ctx, &path.key("loadBalancer"), lb, od));
    // Validated by `load_balancer` above; a resource with errors is dropped whole.
    let locality_lb_setting = lb
        .and_then(|lb| lb.locality_lb_setting.as_ref())
        .map(locality_lb_setting);
    let warmup = lb.and_then(warmup);
    let connection_pool = cp.and_then(|cp| connection_pool(ctx, &path.key("connectionPool"), cp));
    let outlier_detection =
        od.and_then(|od| outlier_detection(ctx, &path.key("outlierDetection"), od));
    let tls = tls.and_then(|tls| client_tls(ctx, &path.key("tls"), tls));
    TrafficPolicy {
        load_balancer,
        locality_lb_setting,
        warmup,
        connection_pool,
        outlier_detection,
        retry_budget: None,
        tls,
        port_level: Vec::new(),
    }
}

/// `retryBudget`: istiod checks nothing; the CRD schema bounds `percent` to [0, 100] and
/// `minRetryConcurrency` to a uint32. `budgetInterval` only has to be a duration.
fn retry_budget(ctx: &mut Ctx<'_>, rp: &FieldPath, rb: &w::RetryBudget) -> Option<RetryBudget> {
    let before = ctx.errors.len();
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
            "0..4294967295",
        );
    }
    if let Some(d) = &rb.budget_interval {
        ctx.check(&rp.key("budgetInterval"), v::duration(d));
    }
    if ctx.errors.len() > before {
        return None;
    }
    // Envoy's defaults: 20 % of active requests, at least 3 concurrent retries.
    Some(RetryBudget {
        percent: rb.percent.unwrap_or(20.0),
        min_retry_concurrency: rb
            .min_retry_concurrency
            .and_then(|m| u32::try_from(m).ok())
            .unwrap_or(3),
    })
}

/// `tunnel`: Istio's rules (`validateTunnelSettings` and the CRD's required fields), then Keel's
/// refusal: without the tunnel the request would go straight to the destination, bypassing the
/// proxy the user put in between.
fn tunnel(ctx: &mut Ctx<'_>, path: &FieldPath, t: &w::TunnelSettings) {
    let protocol = t.protocol.as_deref().unwrap_or("");
    if !matches!(protocol, "" | "CONNECT" | "POST") {
        ctx.err(
            &path.key("protocol"),
            Invalid::Enum {
                value: protocol.to_string(),
                allowed: "CONNECT, POST",
            },
        );
    }
    match t.target_host.as_deref() {
        None => ctx.err(
            &path.key("targetHost"),
            InvalidTrafficPolicy::Missing("tunnel.targetHost"),
        ),
        Some(h) if h.parse::<std::net::IpAddr>().is_err() && v::istio_fqdn(h).is_err() => ctx.err(
            &path.key("targetHost"),
            InvalidTrafficPolicy::Value(format!(
                "tunnel targetHost {h:?} is neither a DNS name nor an IP address"
            )),
        ),
        Some(_) => {}
    }
    match t.target_port {
        None => ctx.err(
            &path.key("targetPort"),
            InvalidTrafficPolicy::Missing("tunnel.targetPort"),
        ),
        Some(p) => {
            ctx.check(&path.key("targetPort"), v::port(p));
        }
    }
    ctx.err(path, Invalid::Unsupported("trafficPolicy.tunnel: Keel cannot tunnel upstream connections; the traffic would bypass the tunnel proxy".into()));
}

/// `proxyProtocol`: the CRD's enum, then Keel's refusal: the upstream expects a PROXY header that
/// Keel would not send.
fn proxy_protocol(ctx: &mut Ctx<'_>, path: &FieldPath, pp: &w::ProxyProtocol) {
    if let Some(version) = pp.version.as_deref() {
        if !matches!(version, "V1" | "V2") {
            ctx.err(
                &path.key("version"),
                Invalid::Enum {
                    value: version.to_string(),
                    allowed: "V1, V2",
                },
            );
        }
    }
    ctx.err(path, Invalid::Unsupported("trafficPolicy.proxyProtocol: Keel sends no PROXY protocol header, which the upstream would expect".into()));
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
    outlier: Option<&w::OutlierDetection>,
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
        locality(ctx, &path.key("localityLbSetting"), l, outlier.is_some());
    }
    if let Some(z) = &lb.zone_aware_lb_setting {
        zone_aware(ctx, &path.key("zoneAwareLbSetting"), z, outlier.is_some());
    }
    if let Some(d) = &lb.warmup_duration_secs {
        // Only the CRD's CEL rule (>= 1ms) applies: istiod does not check this field.
        ctx.check(&path.key("warmupDurationSecs"), at_least_1ms(d));
        if lb.warmup.is_some() {
            ctx.warn(
                &path.key("warmupDurationSecs"),
                "warmupDurationSecs is ignored because warmup is set, as in Istio",
            );
        } else {
            ctx.warn(
                &path.key("warmupDurationSecs"),
                "warmupDurationSecs is deprecated, use warmup.duration",
            );
        }
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
    // The CRD's oneOf counts keys that are present, whatever their value (`useSourceIp: false` too).
    let keys = [
        ch.http_header_name.is_some(),
        ch.http_cookie.is_some(),
        ch.use_source_ip.is_some(),
        ch.http_query_parameter_name.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
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
    // The deprecated top-level size counts only when non-zero (proto3: 0 is unset).
    let deprecated_ring = ch.minimum_ring_size.filter(|n| *n != 0);
    if deprecated_ring.is_some() && (ch.ring_hash.is_some() || ch.maglev.is_some()) {
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
            // Envoy's (and istiod's) primality test calls 1 prime.
            Some(n)
                if !(0..MAGLEV_MAX).contains(&n) || !(n == 1 || v::is_prime(n.unsigned_abs())) =>
            {
                ctx.err(
                    &cp.key("maglev").key("tableSize"),
                    InvalidTrafficPolicy::Value(format!(
                        "maglev.tableSize {n} must be a prime below {MAGLEV_MAX}"
                    )),
                )
            }
            Some(_) => {}
        }
    }
    let ring = ch
        .ring_hash
        .as_ref()
        .and_then(|r| r.minimum_ring_size)
        .or(ch.minimum_ring_size);
    if deprecated_ring.is_some() {
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
        HashKey::Header(hash_header_name(ctx, &cp.key("httpHeaderName"), h)?)
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
    } else if let Some(use_ip) = ch.use_source_ip {
        if !use_ip {
            // Envoy builds no hash from `source_ip: false`; every request lands at random.
            ctx.warn(
                &cp.key("useSourceIp"),
                "useSourceIp: false hashes nothing: endpoints are picked at random, as by Envoy",
            );
            return Some(LoadBalancer::Random);
        }
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
        // istiod accepts a consistentHash without a key; Envoy then has no hash policy and picks
        // endpoints at random.
        ctx.warn(
            &cp,
            "consistentHash sets no hash key (httpHeaderName, httpCookie, useSourceIp or \
             httpQueryParameterName): endpoints are picked at random, as by Envoy",
        );
        return Some(LoadBalancer::Random);
    };
    Some(LoadBalancer::ConsistentHash(ConsistentHash {
        key,
        algorithm,
    }))
}

/// `httpHeaderName`, lower-cased. istiod checks nothing; Envoy rejects an empty name or one with NUL,
/// CR or LF (Keel too: the route would not be served), and accepts any other, which simply never
/// matches when it is not an HTTP token.
fn hash_header_name(ctx: &mut Ctx<'_>, path: &FieldPath, name: &str) -> Option<String> {
    if name.is_empty() || name.contains(['\0', '\r', '\n']) {
        ctx.err(path, InvalidHeader::Name(name.to_string()));
        return None;
    }
    if v::header_name(name).is_err() {
        ctx.warn(
            path,
            format!(
                "{name:?} is not an HTTP header name, so no request carries it: endpoints are \
                 picked at random, as by Envoy"
            ),
        );
    }
    Some(name.to_ascii_lowercase())
}

/// The model of a validated `localityLbSetting`.
fn locality_lb_setting(l: &w::LocalityLbSetting) -> LocalityLbSetting {
    LocalityLbSetting {
        enabled: l.enabled != Some(false),
        distribute: l
            .distribute
            .iter()
            .map(|d| LocalityDistribute {
                from: d.from.clone().unwrap_or_default(),
                to: d
                    .to
                    .iter()
                    .map(|(loc, w)| (loc.clone(), u32::try_from(*w).unwrap_or(0)))
                    .collect(),
            })
            .collect(),
        failover: l
            .failover
            .iter()
            .map(|f| {
                (
                    f.from.clone().unwrap_or_default(),
                    f.to.clone().unwrap_or_default(),
                )
            })
            .collect(),
        failover_priority: l.failover_priority.clone(),
    }
}

/// The model of a validated `warmup` (or deprecated `warmupDurationSecs`), with Istio's defaults.
fn warmup(lb: &w::LoadBalancerSettings) -> Option<Warmup> {
    if let Some(wu) = &lb.warmup {
        return Some(Warmup {
            duration: v::duration_ms(wu.duration.as_deref()?).ok()?,
            minimum_percent: wu
                .minimum_percent
                .unwrap_or(Warmup::DEFAULT_MINIMUM_PERCENT),
            aggression: wu.aggression.unwrap_or(Warmup::DEFAULT_AGGRESSION),
        });
    }
    let secs = lb.warmup_duration_secs.as_deref()?;
    Some(Warmup {
        duration: at_least_1ms(secs).ok()?,
        minimum_percent: Warmup::DEFAULT_MINIMUM_PERCENT,
        aggression: Warmup::DEFAULT_AGGRESSION,
    })
}

/// `localityLbSetting`, with istiod's `ValidateLocalityLbSetting` rules in its order (it stops at the
/// first error of some checks).
fn locality(ctx: &mut Ctx<'_>, path: &FieldPath, l: &w::LocalityLbSetting, has_outlier: bool) {
    if !l.distribute.is_empty() && !l.failover.is_empty() {
        ctx.err(
            path,
            InvalidTrafficPolicy::Conflict("distribute", "failover"),
        );
        return;
    }
    // With `failover` the region/zone/subzone order is fixed, so priority labels cannot name them
    // (the whole entry is compared: `topology.kubernetes.io/region=us` is allowed).
    if !l.failover.is_empty() {
        for (i, label) in l.failover_priority.iter().enumerate() {
            if TOPOLOGY_LABELS.contains(&label.as_str()) {
                ctx.err(
                    &path.key("failoverPriority").index(i),
                    InvalidTrafficPolicy::Value(format!(
                        "failoverPriority cannot list the topology label {label:?} together with failover"
                    )),
                );
                return;
            }
        }
    }
    for (i, d) in l.distribute.iter().enumerate() {
        let dp = path.key("distribute").index(i);
        let mut sum = 0i64;
        for (loc, wgt) in &d.to {
            if !(1..=100).contains(wgt) {
                ctx.err(
                    &dp.key("to").key(loc.clone()),
                    InvalidTrafficPolicy::Range {
                        field: "locality weight",
                        value: *wgt as f64,
                        range: "1..100",
                    },
                );
                return;
            }
            sum += wgt;
        }
        if sum != 100 {
            ctx.err(
                &dp.key("to"),
                InvalidTrafficPolicy::Value(format!("distribute weights sum to {sum}, not 100")),
            );
            return;
        }
        let to: Vec<&str> = d.to.keys().map(String::as_str).collect();
        if let Err((j, e)) = localities(&to) {
            ctx.err(&dp.key("to").key(to[j]), e);
        }
    }
    let from: Vec<&str> = l
        .distribute
        .iter()
        .map(|d| d.from.as_deref().unwrap_or(""))
        .collect();
    if let Err((i, e)) = localities(&from) {
        ctx.err(&path.key("distribute").index(i).key("from"), e);
    }
    if !has_outlier && (!l.failover.is_empty() || !l.failover_priority.is_empty()) {
        ctx.warn(
            path,
            "outlier detection policy must be provided for failover: without it no endpoint is \
             ever unhealthy, so traffic does not fail over",
        );
    }
    failover(ctx, path, &l.failover);
}

/// `zoneAwareLbSetting`: not applied by Keel, but validated as istiod does
/// (`ValidateZoneAwareLbSetting`, and the CRD's `minClusterSize >= 1`).
fn zone_aware(ctx: &mut Ctx<'_>, path: &FieldPath, z: &w::ZoneAwareLbSetting, has_outlier: bool) {
    for (i, label) in z.failover_priority.iter().enumerate() {
        if TOPOLOGY_LABELS.contains(&label.as_str()) {
            ctx.err(
                &path.key("failoverPriority").index(i),
                InvalidTrafficPolicy::Value(format!(
                    "failoverPriority of zoneAwareLbSetting cannot list the topology label {label:?}: \
                     region and zone routing are automatic"
                )),
            );
        }
    }
    if let Some(n) = z.min_cluster_size {
        if n < 1 {
            ctx.err(
                &path.key("minClusterSize"),
                InvalidTrafficPolicy::Range {
                    field: "minClusterSize",
                    value: n as f64,
                    range: ">= 1",
                },
            );
        }
    }
    if !has_outlier && (!z.failover.is_empty() || !z.failover_priority.is_empty()) {
        ctx.warn(
            path,
            "outlier detection policy must be provided for failover: without it no endpoint is \
             ever unhealthy, so traffic does not fail over",
        );
    }
    failover(ctx, path, &z.failover);
}

/// `failover` entries: different regions, no `/` or `*` (each check on its own, as istiod does;
/// an empty `from` or `to` is allowed when the other is set).
fn failover(ctx: &mut Ctx<'_>, path: &FieldPath, entries: &[w::LocalityFailover]) {
    for (i, f) in entries.iter().enumerate() {
        let fp = path.key("failover").index(i);
        let (from, to) = (
            f.from.as_deref().unwrap_or(""),
            f.to.as_deref().unwrap_or(""),
        );
        if from == to {
            ctx.err(
                &fp,
                InvalidTrafficPolicy::Value(
                    "failover from and to must be different regions".into(),
                ),
            );
        }
        if from.contains('/') || to.contains('/') {
            ctx.err(
                &fp,
                InvalidTrafficPolicy::Value(
                    "failover names regions only: no '/' (zone or subzone)".into(),
                ),
            );
        }
        if from.contains('*') || to.contains('*') {
            ctx.err(
                &fp,
                InvalidTrafficPolicy::Value(
                    "failover regions cannot contain a '*' wildcard".into(),
                ),
            );
        }
    }
}

/// The node topology labels that locality load balancing orders by (region, zone, subzone).
const TOPOLOGY_LABELS: &[&str] = &[LABEL_REGION, LABEL_ZONE, LABEL_SUBZONE];

/// A list of locality patterns `region[/zone[/subzone]]` (istiod's `validateLocalities`): at most one
/// `*`, only at the end; no empty part; no pattern covered by an earlier one (`us/*` then `us/z1`,
/// or anything after `*`).
/// The error comes with the index of the entry it is about.
fn localities(list: &[&str]) -> Result<(), (usize, InvalidTrafficPolicy)> {
    // region -> zone -> subzones; "*" marks "everything below".
    let mut seen: BTreeMap<&str, BTreeMap<&str, BTreeSet<&str>>> = BTreeMap::new();
    let overlap = |loc: &str| {
        InvalidTrafficPolicy::Value(format!("locality {loc:?} overlaps with one listed before"))
    };
    for (i, &loc) in list.iter().enumerate() {
        let stars = loc.matches('*').count();
        if stars > 1 || (stars == 1 && !loc.ends_with('*')) {
            return Err((
                i,
                InvalidTrafficPolicy::Value(format!(
                    "locality {loc:?}: a wildcard '*' may only appear once, at the end"
                )),
            ));
        }
        if seen.contains_key("*") {
            return Err((i, overlap(loc)));
        }
        let parts: Vec<&str> = loc.splitn(3, '/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err((
                i,
                InvalidTrafficPolicy::Value(format!(
                    "locality {loc:?} must not have an empty region, zone or subzone"
                )),
            ));
        }
        match parts[..] {
            [region] => {
                if seen.contains_key(region) {
                    return Err((i, overlap(loc)));
                }
                seen.insert(region, BTreeMap::from([("*", BTreeSet::from(["*"]))]));
            }
            [region, zone] => {
                let zones = seen.entry(region).or_default();
                if zones.contains_key("*") || zones.contains_key(zone) {
                    return Err((i, overlap(loc)));
                }
                zones.insert(zone, BTreeSet::from(["*"]));
            }
            [region, zone, subzone] => {
                let zones = seen.entry(region).or_default();
                if zones.contains_key("*") {
                    return Err((i, overlap(loc)));
                }
                let subzones = zones.entry(zone).or_default();
                if subzones.contains("*") || !subzones.insert(subzone) {
                    return Err((i, overlap(loc)));
                }
            }
            _ => {}
        }
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
            let mut keepalive = TcpKeepalive::default();
            if let Some(p) = ka.probes {
                range(
                    ctx,
                    &kp.key("probes"),
                    "probes",
                    p as f64,
                    0.0,
                    f64::from(u32::MAX),
                    "0..4294967295",
                );
                // 0 = the OS default, as Envoy reads it.
                keepalive.probes = u32::try_from(p).ok().filter(|p| *p > 0);
            }
            for (k, d) in [("time", &ka.time), ("interval", &ka.interval)] {
                if let Some(d) = d {
                    let parsed = ctx.check(&kp.key(k), v::duration_ms(d));
                    if k == "time" {
                        keepalive.time = parsed;
                    } else {
                        keepalive.interval = parsed;
                    }
                }
            }
            out.tcp_keepalive = Some(keepalive);
        }
        if let Some(d) = &tcp.max_connection_duration {
            out.max_connection_duration =
                ctx.check(&tp.key("maxConnectionDuration"), v::duration_ms(d));
        }
        tcp_idle = tcp
            .idle_timeout
            .as_deref()
            .and_then(|d| ctx.check(&tp.key("idleTimeout"), tcp_idle_timeout(d)));
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
            .and_then(|d| ctx.check(&hp.key("idleTimeout"), v::duration_ms(d)));
        let policy = http.h2_upgrade_policy.as_deref().unwrap_or("DEFAULT");
        match policy {
            "DEFAULT" => out.h2_upgrade_policy = H2UpgradePolicy::Default,
            "DO_NOT_UPGRADE" => out.h2_upgrade_policy = H2UpgradePolicy::DoNotUpgrade,
            "UPGRADE" => out.h2_upgrade_policy = H2UpgradePolicy::Upgrade,
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
        out.use_client_protocol = http.use_client_protocol == Some(true);
        if let Some(n) = http.max_concurrent_streams {
            out.max_concurrent_streams = limit(
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
                    let interval = ctx.check(&kp.key("interval"), v::duration_ms(i));
                    let timeout = ctx.check(&kp.key("timeout"), v::duration_ms(t));
                    if let (Some(interval), Some(timeout)) = (interval, timeout) {
                        out.http2_keep_alive = Some(Http2KeepAlive { interval, timeout });
                    }
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
    out.tcp_idle_timeout = tcp_idle;
    Some(out)
}

/// `tcp.idleTimeout`: istiod skips the check when the value is under 1ms (whole milliseconds are 0,
/// which Envoy reads as "no timeout"), and the CRD has no rule for it; otherwise the usual duration
/// rule. Returns the timeout in effect (zero = disabled).
fn tcp_idle_timeout(s: &str) -> Result<Duration, InvalidDuration> {
    let d = v::duration(s)?;
    if d < Duration::from_millis(1) {
        return Ok(Duration::ZERO);
    }
    v::duration_ms(s)
}

/// The CRD's CEL rule for durations istiod does not check itself: at least 1ms, any precision.
fn at_least_1ms(s: &str) -> Result<Duration, InvalidDuration> {
    let d = v::duration(s)?;
    if d < Duration::from_millis(1) {
        return Err(InvalidDuration::TooShort {
            value: s.to_string(),
            min: "1ms",
        });
    }
    Ok(d)
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
                        range: "0..4294967295",
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
    // Kept as written: unset still lets Envoy detect (not eject) at its default of 5, `0` never does.
    let consecutive_gateway_errors = count(
        ctx,
        "consecutiveGatewayErrors",
        "consecutiveGatewayErrors",
        od.consecutive_gateway_errors,
    )
    .flatten();
    let local = count(
        ctx,
        "consecutiveLocalOriginFailures",
        "consecutiveLocalOriginFailures",
        od.consecutive_local_origin_failures,
    )
    .flatten();
    let split = od.split_external_local_origin_errors == Some(true);
    // istiod passes the threshold only when > 0; Envoy's default (5, enforced) applies otherwise.
    let consecutive_local_origin_failures = match local {
        _ if !split => None,
        Some(n) if n > 0 => Some(n),
        _ => Some(5),
    };
    if local.is_some_and(|n| n > 0) && !split {
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
    // istiod only passes a non-zero maxEjectionPercent, so an explicit 0 leaves Envoy's default 10.
    let max_ejection_percent = match pct(
        ctx,
        "maxEjectionPercent",
        "maxEjectionPercent",
        od.max_ejection_percent,
        10,
    ) {
        0 => {
            ctx.warn(
                &path.key("maxEjectionPercent"),
                "maxEjectionPercent 0 means the default 10 (as in Istio); up to 10% of endpoints may be ejected",
            );
            10
        }
        n => n,
    };
    let min_health_percent = pct(
        ctx,
        "minHealthPercent",
        "minHealthPercent",
        od.min_health_percent,
        0,
    );
    let mut http_error_codes = Vec::new();
    for (i, c) in od.outlier_detection_http_error_codes.iter().enumerate() {
        match u16::try_from(*c) {
            Ok(code) if (100..=599).contains(&code) => http_error_codes.push(code),
            _ => ctx.err(
                &path.key("outlierDetectionHttpErrorCodes").index(i),
                InvalidTrafficPolicy::Range {
                    field: "status code",
                    value: *c as f64,
                    range: "100..599",
                },
            ),
        }
    }
    // Deprecated `consecutiveErrors`: Istio once translated it to Envoy's consecutive gateway failures,
    // but current istiod drops it with a validation warning and translates nothing. Keel follows
    // istiod so that a rule ejects the same endpoints under Keel as under sidecars; honouring it
    // would eject where Istio does not.
    if let Some(n) = od.consecutive_errors.filter(|n| i32::try_from(*n).is_err()) {
        // An int32 in the API: a larger value does not even parse.
        ctx.err(
            &path.key("consecutiveErrors"),
            InvalidTrafficPolicy::Range {
                field: "consecutiveErrors",
                value: n as f64,
                range: "-2147483648..2147483647",
            },
        );
    } else if od.consecutive_errors.is_some_and(|n| n != 0) {
        ctx.warn(
            &path.key("consecutiveErrors"),
            "consecutiveErrors is deprecated and ignored, as in Istio; use consecutive5xxErrors or consecutiveGatewayErrors",
        );
    }
    if ctx.errors.len() > before {
        return None;
    }
    Some(OutlierDetection {
        consecutive_5xx_errors,
        consecutive_gateway_errors,
        split_external_local_origin_errors: split,
        consecutive_local_origin_failures,
        http_error_codes,
        interval,
        base_ejection_time,
        max_ejection_percent,
        min_health_percent,
    })
}

/// Converts `tls`: checks Istio's rules and Keel's limits, then reads and parses every file it names
/// (so `keel validate` reports a missing or garbled certificate, key, CA bundle or CRL). `DISABLE`
/// reads no file: nothing would use it.
fn client_tls(
    ctx: &mut Ctx<'_>,
    path: &FieldPath,
    tls: &w::ClientTlsSettings,
) -> Option<ClientTls> {
    let before = ctx.errors.len();
    let mode = match tls.mode.as_deref().unwrap_or("DISABLE") {
        "DISABLE" => TlsMode::Disable,
        "SIMPLE" => TlsMode::Simple,
        "MUTUAL" => TlsMode::Mutual,
        "ISTIO_MUTUAL" => {
            ctx.err(
                &path.key("mode"),
                Invalid::Unsupported(
                    "tls.mode ISTIO_MUTUAL: Keel has no mesh workload identity yet (no Istio \
                     certificates to present); use SIMPLE or MUTUAL with certificate files, or leave \
                     tls out for plaintext"
                        .into(),
                ),
            );
            return None;
        }
        other => {
            ctx.err(
                &path.key("mode"),
                Invalid::Enum {
                    value: other.to_string(),
                    allowed: "DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL",
                },
            );
            return None;
        }
    };
    // istiod checks a `configmap://<namespace>/<name>` credential in every mode: it must name the
    // resource's own namespace.
    if let Some(rest) = tls
        .credential_name
        .as_deref()
        .and_then(|c| c.strip_prefix("configmap://"))
    {
        let mut parts = rest.split('/');
        let (namespace, name) = (parts.next().unwrap_or(""), parts.next());
        let problem = match name {
            None => Some("expected configmap://<namespace>/<name>".to_string()),
            Some(_) if namespace.is_empty() => Some("the namespace is empty".to_string()),
            Some("") => Some("the name is empty".to_string()),
            Some(_) if namespace != ctx.ns() => Some(format!(
                "the namespace must be the resource's own, {:?}",
                ctx.ns()
            )),
            Some(_) => None,
        };
        if let Some(problem) = problem {
            ctx.err(
                &path.key("credentialName"),
                InvalidTrafficPolicy::Value(format!(
                    "invalid configmap:// credentialName: {problem}"
                )),
            );
        }
    }
    // proto3 strings: empty is unset.
    let set = |f: &Option<String>| f.as_deref().is_some_and(|s| !s.is_empty());
    let credential = set(&tls.credential_name);
    let verifying = matches!(mode, TlsMode::Simple | TlsMode::Mutual);
    // istiod's ValidateTLS: with SIMPLE or MUTUAL, credentialName replaces every file.
    if verifying && credential {
        if set(&tls.client_certificate)
            || set(&tls.private_key)
            || set(&tls.ca_certificates)
            || set(&tls.ca_crl)
        {
            ctx.err(
                path,
                InvalidTrafficPolicy::Conflict(
                    "credentialName",
                    "clientCertificate/privateKey/caCertificates/caCrl",
                ),
            );
        } else {
            ctx.err(
                &path.key("credentialName"),
                Invalid::Unsupported(
                    "tls.credentialName: Keel has no secret source yet; name PEM files with \
                     clientCertificate, privateKey and caCertificates instead"
                        .into(),
                ),
            );
        }
    }
    if mode == TlsMode::Mutual && !credential {
        if !set(&tls.client_certificate) {
            ctx.err(
                &path.key("clientCertificate"),
                InvalidTrafficPolicy::Missing("clientCertificate for MUTUAL (or credentialName)"),
            );
        }
        if !set(&tls.private_key) {
            ctx.err(
                &path.key("privateKey"),
                InvalidTrafficPolicy::Missing("privateKey for MUTUAL (or credentialName)"),
            );
        }
    }
    let insecure_skip_verify = tls.insecure_skip_verify == Some(true);
    // Only SIMPLE and MUTUAL verify the server; with MUTUAL a credentialName may hold the client
    // certificate alone, so it does not conflict there.
    if insecure_skip_verify
        && verifying
        && (set(&tls.ca_certificates)
            || !tls.subject_alt_names.is_empty()
            || (mode == TlsMode::Simple && credential))
    {
        ctx.err(
            path,
            InvalidTrafficPolicy::Conflict(
                "insecureSkipVerify",
                "caCertificates/subjectAltNames (or credentialName with SIMPLE)",
            ),
        );
    }
    let sni = tls.sni.as_deref().filter(|s| !s.is_empty());
    if let Some(sni) = sni {
        if !matches!(ServerName::try_from(sni), Ok(ServerName::DnsName(_))) {
            ctx.err(
                &path.key("sni"),
                InvalidTrafficPolicy::Value(format!("sni {sni:?} is not a DNS name")),
            );
        }
    }
    for (i, san) in tls.subject_alt_names.iter().enumerate() {
        // Envoy also matches URI SANs (spiffe://…); Keel verifies names with webpki, which knows
        // DNS names and IP addresses, and mesh identities come with ISTIO_MUTUAL, which Keel lacks.
        if ServerName::try_from(san.as_str()).is_err() {
            ctx.err(
                &path.key("subjectAltNames").index(i),
                Invalid::Unsupported(format!(
                    "subjectAltNames entry {san:?}: Keel matches DNS-name and IP-address SANs only"
                )),
            );
        }
    }
    if ctx.errors.len() > before {
        return None;
    }
    let mut out = ClientTls {
        mode,
        client_certificate: None,
        private_key: None,
        ca_certificates: None,
        ca_crl: None,
        sni: sni.map(str::to_ascii_lowercase),
        subject_alt_names: tls.subject_alt_names.clone(),
        insecure_skip_verify,
    };
    if mode == TlsMode::Disable {
        return Some(out);
    }
    let base = config_dir(ctx);
    let provider = rustls::crypto::ring::default_provider();
    if mode == TlsMode::Mutual {
        let (Some(cert_path), Some(key_path)) = (&tls.client_certificate, &tls.private_key) else {
            return None;
        };
        let certs = load_file(
            ctx,
            path,
            &base,
            "clientCertificate",
            cert_path,
            pem_certificates,
        );
        let key = load_file(ctx, path, &base, "privateKey", key_path, pem_private_key);
        if let (Some(certs), Some(key)) = (&certs, &key) {
            // The key must be one rustls can sign with and must belong to the certificate.
            let pair = rustls::sign::CertifiedKey::from_der(
                certs.content.clone(),
                key.content.clone_key(),
                &provider,
            );
            if let Err(e) = pair {
                tls_file_error(ctx, path, "privateKey", &key.path, e.to_string());
            }
        }
        out.client_certificate = certs;
        out.private_key = key.map(|k| LoadedFile {
            path: k.path,
            content: Arc::new(k.content),
        });
    }
    if let Some(ca_path) = tls.ca_certificates.as_ref().filter(|p| !p.is_empty()) {
        out.ca_certificates = load_file(ctx, path, &base, "caCertificates", ca_path, pem_roots);
    }
    if let Some(crl_path) = tls.ca_crl.as_ref().filter(|p| !p.is_empty()) {
        out.ca_crl = load_file(ctx, path, &base, "caCrl", crl_path, pem_crls);
    }
    if ctx.errors.len() > before {
        return None;
    }
    Some(out)
}

/// Where relative file paths in a resource point: the directory of the config file that holds it
/// (Keel's working directory means nothing to a user; Istio users write absolute paths).
fn config_dir(ctx: &Ctx<'_>) -> PathBuf {
    ctx.obj.base_dir()
}

/// Reads the file `value` names (resolved against `base`) and parses it with `parse`, recording a
/// [`InvalidTrafficPolicy::TlsFile`] error at `tls.<field>` when either fails.
fn load_file<T>(
    ctx: &mut Ctx<'_>,
    tls_path: &FieldPath,
    base: &Path,
    field: &'static str,
    value: &str,
    parse: fn(&[u8]) -> Result<T, String>,
) -> Option<LoadedFile<T>> {
    let resolved = base.join(value).display().to_string();
    if value.is_empty() {
        tls_file_error(ctx, tls_path, field, &resolved, "empty path".into());
        return None;
    }
    let bytes = match std::fs::read(&resolved) {
        Ok(b) => b,
        Err(e) => {
            tls_file_error(ctx, tls_path, field, &resolved, format!("cannot read: {e}"));
            return None;
        }
    };
    match parse(&bytes) {
        Ok(content) => Some(LoadedFile {
            path: resolved,
            content,
        }),
        Err(reason) => {
            tls_file_error(ctx, tls_path, field, &resolved, reason);
            None
        }
    }
}

fn tls_file_error(
    ctx: &mut Ctx<'_>,
    tls_path: &FieldPath,
    field: &'static str,
    path: &str,
    reason: String,
) {
    ctx.err(
        &tls_path.key(field),
        InvalidTrafficPolicy::TlsFile {
            field,
            path: path.to_string(),
            reason,
        },
    );
}

/// Every `CERTIFICATE` block of a PEM file (at least one).
fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM CERTIFICATE block".into());
    }
    Ok(certs)
}

/// CA certificates: every block must be an X.509 certificate webpki accepts as a trust anchor.
fn pem_roots(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = pem_certificates(pem)?;
    let mut roots = rustls::RootCertStore::empty();
    let (_, bad) = roots.add_parsable_certificates(certs.iter().cloned());
    if bad > 0 {
        return Err(format!(
            "{bad} of {} certificates cannot be parsed as X.509 trust anchors",
            certs.len()
        ));
    }
    Ok(certs)
}

/// The first private key block (PKCS#8, PKCS#1 or SEC1).
fn pem_private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        PemError::NoItemsFound => "no PEM PRIVATE KEY block".to_string(),
        e => format!("not PEM: {e}"),
    })
}

/// Every `X509 CRL` block (at least one).
fn pem_crls(pem: &[u8]) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let crls = CertificateRevocationListDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM: {e}"))?;
    if crls.is_empty() {
        return Err("no PEM X509 CRL block".into());
    }
    for crl in &crls {
        webpki::OwnedCertRevocationList::from_der(crl)
            .map_err(|e| format!("not a valid X.509 CRL: {e}"))?;
    }
    Ok(crls)
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

/// What Keel does instead of the traffic-policy field at `inner` (the path below the policy, keys only)
/// set to `value`; `None` when the value asks for what Keel does anyway (e.g. `LEAST_REQUEST`).
fn traffic_policy_today(inner: &[&str], _value: &serde_yaml::Value) -> Option<&'static str> {
    Some(match inner {
        // Applied by upstream::lb (the deprecated `LEAST_CONN` and `minimumRingSize` have their
        // own deprecation warnings).
        ["loadBalancer", "simple"] | ["loadBalancer", "consistentHash", ..] => return None,
        // Applied (upstream::locality); zone-aware routing is not.
        ["loadBalancer", "localityLbSetting", ..] => return None,
        ["loadBalancer", "zoneAwareLbSetting", ..] => {
            "Keel has no zone-aware routing; localityLbSetting applies"
        }
        // Applied (upstream::slow_start); the deprecation has its own warning.
        ["loadBalancer", "warmupDurationSecs" | "warmup", ..] => return None,
        ["loadBalancer", ..] => return None,
        // Every connectionPool field is applied (upstream/pool.rs, upstream/breaker.rs).
        ["connectionPool", ..] => return None,
        ["retryBudget", "budgetInterval"] => {
            "Keel's retry budget bounds concurrent retries, as Envoy's does; no interval applies"
        }
        ["retryBudget", ..] => return None,
        // Applied by `upstream::outlier`; the deprecated `consecutiveErrors` has its own warning.
        ["outlierDetection", ..] => return None,
        // Applied: TLS origination (upstream/tls.rs).
        ["tls", ..] => return None,
        _ => "Keel applies no DestinationRule trafficPolicy",
    })
}
