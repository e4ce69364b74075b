//! Short, human wording of config values for `keel explain`: match conditions, why a condition did
//! not hold, route settings and cluster policy blocks. Never Rust `Debug` output.

use std::time::Duration;

use crate::policy::{
    ClientTls, ConnectionPool, CorsPolicy, Fault, HashAlgorithm, HashKey, HeaderOps, HttpMatch,
    L4Match, Labels, LoadBalancer, LocalityLbSetting, OutlierDetection, Redirect, RetryBudget,
    Rewrite, StringMatch, TlsMode, Warmup,
};
use crate::routing::{ClientInfo, RequestFacts, Unmet};

/// `1.5s`, `250ms`, `3m`, `1h`: the largest unit that writes the value exactly.
pub fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 && !d.is_zero() {
        return format!("{}us", d.as_micros());
    }
    if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// What a match block asks of the header or query parameter `name` (empty when it asks nothing).
fn wanted(conditions: &[(String, StringMatch)], name: &str) -> String {
    conditions
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| string_match(v))
        .unwrap_or_default()
}

/// `exact "v"`, `prefix "v"`, `regex "v"` (as written, without the anchors conversion adds), `present`.
pub fn string_match(m: &StringMatch) -> String {
    match m {
        StringMatch::Exact(s) => format!("exact {s:?}"),
        StringMatch::Prefix(s) => format!("prefix {s:?}"),
        StringMatch::Regex(re) => {
            let s = re.as_str();
            let s = s
                .strip_prefix("^(?:")
                .and_then(|s| s.strip_suffix(")$"))
                .unwrap_or(s);
            format!("regex {s:?}")
        }
        StringMatch::Present => "present".to_string(),
    }
}

/// `k=v,k2=v2`.
pub fn labels(l: &Labels) -> String {
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Every condition of an HTTP match block, `; `-separated (`any request` when it has none).
pub fn http_block(m: &HttpMatch) -> String {
    let mut parts = Vec::new();
    if let Some(uri) = &m.uri {
        let case = if m.ignore_uri_case {
            " (ignoreUriCase)"
        } else {
            ""
        };
        parts.push(format!("uri {}{case}", string_match(uri)));
    }
    for (what, value) in [
        ("method", &m.method),
        ("authority", &m.authority),
        ("scheme", &m.scheme),
    ] {
        if let Some(v) = value {
            parts.push(format!("{what} {}", string_match(v)));
        }
    }
    for (name, v) in &m.headers {
        parts.push(format!("header {name} {}", string_match(v)));
    }
    for (name, v) in &m.without_headers {
        parts.push(format!("withoutHeaders {name} {}", string_match(v)));
    }
    for (name, v) in &m.query_params {
        parts.push(format!("queryParams {name} {}", string_match(v)));
    }
    parts.extend(static_parts(
        m.port,
        &m.source_labels,
        &m.source_namespace,
        &m.gateways,
    ));
    if parts.is_empty() {
        "any request".to_string()
    } else {
        parts.join("; ")
    }
}

/// Every condition of an L4 (`tcp`/`tls`) match block.
pub fn l4_block(m: &L4Match) -> String {
    let mut parts = Vec::new();
    if !m.sni_hosts.is_empty() {
        parts.push(format!("sniHosts {}", m.sni_hosts.join(",")));
    }
    if !m.destination_subnets.is_empty() {
        parts.push(format!(
            "destinationSubnets {}",
            m.destination_subnets.join(",")
        ));
    }
    parts.extend(static_parts(
        m.port,
        &m.source_labels,
        &m.source_namespace,
        &m.gateways,
    ));
    if parts.is_empty() {
        "any connection".to_string()
    } else {
        parts.join("; ")
    }
}

fn static_parts(
    port: Option<u16>,
    source_labels: &Option<Labels>,
    source_namespace: &Option<String>,
    gateways: &[String],
) -> Vec<String> {
    let mut parts = Vec::new();
    if let Some(p) = port {
        parts.push(format!("port {p}"));
    }
    if let Some(l) = source_labels {
        parts.push(format!("sourceLabels {}", labels(l)));
    }
    if let Some(ns) = source_namespace {
        parts.push(format!("sourceNamespace {ns}"));
    }
    if !gateways.is_empty() {
        parts.push(format!("gateways {}", gateways.join(",")));
    }
    parts
}

/// The client as a match condition reads it.
pub struct Subject<'a> {
    /// `namespace/name` of the client pod.
    pub pod: &'a str,
    /// The client's namespace and labels.
    pub client: &'a ClientInfo,
    /// The service port the connection is for.
    pub port: u16,
}

/// Why a static condition (`port`, `gateways`, `sourceLabels`, `sourceNamespace`,
/// `destinationSubnets`) does not hold for the client.
pub fn unmet_static(unmet: Unmet<'_>, m_labels: &Option<Labels>, who: &Subject<'_>) -> String {
    match unmet {
        Unmet::Port(p) => format!("port {p}: the request is to port {}", who.port),
        Unmet::Gateways => "gateways: bound to gateways only (no `mesh`)".to_string(),
        Unmet::SourceLabels => format!(
            "sourceLabels {} do not select {} ({})",
            m_labels.as_ref().map(labels).unwrap_or_default(),
            who.pod,
            if who.client.labels.is_empty() {
                "no labels".to_string()
            } else {
                labels(&who.client.labels)
            }
        ),
        Unmet::SourceNamespace => format!(
            "sourceNamespace: {} is in namespace {}",
            who.pod, who.client.namespace
        ),
        Unmet::DestinationSubnets => {
            "destinationSubnets do not contain the service address".to_string()
        }
        Unmet::Uri => "uri does not match".to_string(),
        Unmet::Method => "method does not match".to_string(),
        Unmet::Authority => "authority does not match".to_string(),
        Unmet::Scheme => "scheme does not match".to_string(),
        Unmet::Header(name) => format!("header {name} does not match"),
        Unmet::WithoutHeader(name) => format!("withoutHeaders {name} excludes the request"),
        Unmet::QueryParam(name) => format!("queryParams {name} does not match"),
    }
}

/// Why a condition of an HTTP block does not hold for the request (static or request-time).
pub fn unmet_http(
    unmet: Unmet<'_>,
    m: &HttpMatch,
    req: &RequestFacts<'_>,
    who: &Subject<'_>,
) -> String {
    let found = |v: Option<String>| v.map_or_else(|| "none".to_string(), |v| format!("{v:?}"));
    let want = |v: &Option<StringMatch>| v.as_ref().map(string_match).unwrap_or_default();
    match unmet {
        Unmet::Uri => format!(
            "uri {} does not match {:?}",
            want(&m.uri),
            req.path_and_query
        ),
        Unmet::Method => format!("method {}: request is {}", want(&m.method), req.method),
        Unmet::Authority => format!(
            "authority {}: request has {:?}",
            want(&m.authority),
            req.authority
        ),
        Unmet::Scheme => format!("scheme {}: request is {}", want(&m.scheme), req.scheme),
        Unmet::Header(name) => {
            let w = wanted(&m.headers, name);
            format!(
                "header {name} {w}: request has {}",
                found(crate::routing::header_value(req, name))
            )
        }
        Unmet::WithoutHeader(name) => {
            let w = wanted(&m.without_headers, name);
            format!(
                "withoutHeaders {name} {w}: request has {}",
                found(crate::routing::header_value(req, name))
            )
        }
        Unmet::QueryParam(name) => {
            let w = wanted(&m.query_params, name);
            let query = req
                .path_and_query
                .split_once('?')
                .map(|(_, q)| q)
                .unwrap_or("");
            format!(
                "queryParams {name} {w}: request has {}",
                found(crate::routing::first_query_value(query, name).map(str::to_string))
            )
        }
        other => unmet_static(other, &m.source_labels, who),
    }
}

/// `loadBalancer` with its locality and warmup parts.
pub fn load_balancer(
    lb: Option<&LoadBalancer>,
    locality: Option<&LocalityLbSetting>,
    warmup: Option<&Warmup>,
) -> String {
    let mut out = match lb {
        None | Some(LoadBalancer::LeastRequest) => "LEAST_REQUEST".to_string(),
        Some(LoadBalancer::RoundRobin) => "ROUND_ROBIN".to_string(),
        Some(LoadBalancer::Random) => "RANDOM".to_string(),
        Some(LoadBalancer::Passthrough) => "PASSTHROUGH".to_string(),
        Some(LoadBalancer::ConsistentHash(ch)) => {
            let key = match &ch.key {
                HashKey::Header(h) => format!("httpHeaderName {h}"),
                HashKey::Cookie { name, ttl, .. } => match ttl {
                    Some(t) => format!("httpCookie {name} ttl {}", duration(*t)),
                    None => format!("httpCookie {name}"),
                },
                HashKey::SourceIp => "useSourceIp".to_string(),
                HashKey::QueryParameter(q) => format!("httpQueryParameterName {q}"),
            };
            let algo = match ch.algorithm {
                HashAlgorithm::RingHash { minimum_ring_size } => {
                    format!("ringHash minimumRingSize {minimum_ring_size}")
                }
                HashAlgorithm::Maglev { table_size } => format!("maglev tableSize {table_size}"),
            };
            format!("consistentHash {key} ({algo})")
        }
    };
    if let Some(l) = locality {
        if !l.enabled {
            out.push_str("; localityLbSetting disabled");
        } else if !l.distribute.is_empty() {
            let d: Vec<String> = l
                .distribute
                .iter()
                .map(|d| {
                    let to: Vec<String> =
                        d.to.iter().map(|(loc, w)| format!("{loc}={w}")).collect();
                    format!("{} -> {}", d.from, to.join(","))
                })
                .collect();
            out.push_str(&format!("; distribute {}", d.join(" | ")));
        } else if !l.failover.is_empty() {
            let f: Vec<String> = l
                .failover
                .iter()
                .map(|(from, to)| format!("{from}->{to}"))
                .collect();
            out.push_str(&format!("; failover {}", f.join(",")));
        }
        if l.enabled && !l.failover_priority.is_empty() {
            out.push_str(&format!(
                "; failoverPriority {}",
                l.failover_priority.join(",")
            ));
        }
    }
    if let Some(w) = warmup {
        out.push_str(&format!("; warmup {}", duration(w.duration)));
    }
    out
}

/// The limits and timeouts a `connectionPool` sets (`no limits` when absent).
pub fn connection_pool(cp: Option<&ConnectionPool>) -> String {
    let Some(cp) = cp else {
        return "no limits".to_string();
    };
    let mut parts = Vec::new();
    let mut num = |name: &str, v: Option<u32>| {
        if let Some(v) = v {
            parts.push(format!("{name} {v}"));
        }
    };
    num("maxConnections", cp.tcp_max_connections);
    num("http1MaxPendingRequests", cp.http1_max_pending_requests);
    num("http2MaxRequests", cp.http2_max_requests);
    num("maxRequestsPerConnection", cp.max_requests_per_connection);
    num("maxRetries", cp.max_retries);
    num("maxConcurrentStreams", cp.max_concurrent_streams);
    let mut dur = |name: &str, v: Option<Duration>| {
        if let Some(v) = v {
            parts.push(format!("{name} {}", duration(v)));
        }
    };
    dur("connectTimeout", cp.tcp_connect_timeout);
    dur("idleTimeout", cp.idle_timeout);
    dur("tcp.idleTimeout", cp.tcp_idle_timeout);
    dur("maxConnectionDuration", cp.max_connection_duration);
    if cp.tcp_keepalive.is_some() {
        parts.push("tcpKeepalive".to_string());
    }
    if cp.http2_keep_alive.is_some() {
        parts.push("http2KeepAlive".to_string());
    }
    if cp.h2_upgrade_policy == crate::policy::H2UpgradePolicy::Upgrade {
        parts.push("h2UpgradePolicy UPGRADE".to_string());
    }
    if cp.use_client_protocol {
        parts.push("useClientProtocol".to_string());
    }
    if parts.is_empty() {
        "set, no limits".to_string()
    } else {
        parts.join(", ")
    }
}

/// An `outlierDetection` block as it applies (`off` when absent).
pub fn outlier_detection(od: Option<&OutlierDetection>) -> String {
    let Some(od) = od else {
        return "off (endpoints are never ejected)".to_string();
    };
    let mut parts = Vec::new();
    match od.consecutive_5xx_errors {
        Some(n) => parts.push(format!("consecutive5xxErrors {n}")),
        None => parts.push("consecutive5xxErrors off".to_string()),
    }
    if let Some(n) = od.consecutive_gateway_errors {
        parts.push(format!("consecutiveGatewayErrors {n}"));
    }
    if od.split_external_local_origin_errors {
        parts.push(format!(
            "consecutiveLocalOriginFailures {}",
            od.consecutive_local_origin_failures.unwrap_or(5)
        ));
    }
    if !od.http_error_codes.is_empty() {
        let codes: Vec<String> = od.http_error_codes.iter().map(u16::to_string).collect();
        parts.push(format!("httpErrorCodes {}", codes.join(",")));
    }
    parts.push(format!("interval {}", duration(od.interval)));
    parts.push(format!(
        "baseEjectionTime {}",
        duration(od.base_ejection_time)
    ));
    parts.push(format!("maxEjectionPercent {}", od.max_ejection_percent));
    if od.min_health_percent > 0 {
        parts.push(format!("minHealthPercent {}", od.min_health_percent));
    }
    parts.join(", ")
}

/// The `tls` origination mode (`DISABLE` when absent).
pub fn tls(t: Option<&ClientTls>) -> String {
    let Some(t) = t else {
        return "DISABLE (plaintext)".to_string();
    };
    let mut out = match t.mode {
        TlsMode::Disable => "DISABLE".to_string(),
        TlsMode::Simple => "SIMPLE".to_string(),
        TlsMode::Mutual => "MUTUAL".to_string(),
    };
    if let Some(sni) = &t.sni {
        out.push_str(&format!(", sni {sni}"));
    }
    if !t.subject_alt_names.is_empty() {
        out.push_str(&format!(
            ", subjectAltNames {}",
            t.subject_alt_names.join(",")
        ));
    }
    if t.insecure_skip_verify {
        out.push_str(", insecureSkipVerify");
    }
    out
}

/// `retryBudget`.
pub fn retry_budget(b: &RetryBudget) -> String {
    format!(
        "{}% of active requests, minRetryConcurrency {}",
        b.percent, b.min_retry_concurrency
    )
}

/// A fault's delay and abort with their percentages.
pub fn fault(f: &Fault) -> String {
    let pct =
        |p: Option<f64>| p.map_or_else(|| "0% (no percentage)".to_string(), |p| format!("{p}%"));
    let mut parts = Vec::new();
    if let Some(d) = &f.delay {
        parts.push(format!(
            "delay {} for {}",
            duration(d.fixed_delay),
            pct(d.percentage)
        ));
    }
    if let Some(a) = &f.abort {
        let what = match (&a.grpc_status, a.http_status) {
            (Some(g), _) => format!("grpcStatus {g}"),
            (None, Some(s)) => format!("httpStatus {s}"),
            (None, None) => "nothing".to_string(),
        };
        parts.push(format!("abort {what} for {}", pct(a.percentage)));
    }
    parts.join("; ")
}

/// `rewrite`.
pub fn rewrite(r: &Rewrite) -> String {
    let mut parts = Vec::new();
    if let Some(u) = &r.uri {
        parts.push(format!("uri {u:?}"));
    }
    if let Some((re, with)) = &r.uri_regex {
        parts.push(format!("uriRegexRewrite {:?} -> {with:?}", re.as_str()));
    }
    if let Some(a) = &r.authority {
        parts.push(format!("authority {a:?}"));
    }
    parts.join(", ")
}

/// A redirect's target and status.
pub fn redirect(r: &Redirect) -> String {
    let mut parts = vec![format!("{}", r.redirect_code)];
    if let Some(s) = &r.scheme {
        parts.push(format!("scheme {s}"));
    }
    if let Some(a) = &r.authority {
        parts.push(format!("authority {a}"));
    }
    if let Some(p) = r.port {
        parts.push(format!("port {p}"));
    }
    if let Some(u) = &r.uri {
        parts.push(format!("uri {u}"));
    }
    if let Some(p) = &r.prefix_rewrite {
        parts.push(format!("prefix {p}"));
    }
    parts.join(", ")
}

/// Header operations of one level: `set a=b; add c=d; remove e`.
pub fn header_ops(ops: &HeaderOps) -> Option<String> {
    let mut parts = Vec::new();
    for (k, v) in &ops.set {
        parts.push(format!("set {k}: {v}"));
    }
    for (k, v) in &ops.add {
        parts.push(format!("add {k}: {v}"));
    }
    for k in &ops.remove {
        parts.push(format!("remove {k}"));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// `corsPolicy`.
pub fn cors(c: &CorsPolicy) -> String {
    let mut parts = Vec::new();
    if !c.allow_origins.is_empty() {
        let o: Vec<String> = c.allow_origins.iter().map(string_match).collect();
        parts.push(format!("allowOrigins {}", o.join(",")));
    }
    if !c.allow_methods.is_empty() {
        parts.push(format!("allowMethods {}", c.allow_methods.join(",")));
    }
    if !c.allow_headers.is_empty() {
        parts.push(format!("allowHeaders {}", c.allow_headers.join(",")));
    }
    if !c.expose_headers.is_empty() {
        parts.push(format!("exposeHeaders {}", c.expose_headers.join(",")));
    }
    if let Some(m) = c.max_age {
        parts.push(format!("maxAge {}", duration(m)));
    }
    if let Some(a) = c.allow_credentials {
        parts.push(format!("allowCredentials {a}"));
    }
    if parts.is_empty() {
        "set (no origin allowed)".to_string()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_use_the_largest_exact_unit() {
        assert_eq!(duration(Duration::from_secs(15)), "15s");
        assert_eq!(duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(duration(Duration::from_secs(180)), "3m");
        assert_eq!(duration(Duration::from_secs(7200)), "2h");
        assert_eq!(duration(Duration::from_micros(5)), "5us");
        assert_eq!(duration(Duration::ZERO), "0s");
    }
}
