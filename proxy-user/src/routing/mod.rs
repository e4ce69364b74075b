//! Routing: pure functions from (client view, original destination, request facts) to a
//! `RouteDecision`.
//!
//! Istio semantics: `http` rules are ordered, the first rule with a matching block wins; inside a block
//! every condition must hold. Everything that depends on the client rather than the request —
//! `exportTo`, `Sidecar` imports, static conditions (`port`, `sourceLabels`, `sourceNamespace`,
//! `gateways`), DestinationRule choice, delegation — is decided when the tables are built, once per
//! class of equivalent clients (`view`); the request path only evaluates request conditions.
//!
//! The request path: `accept` resolves the client's [`ClientView`] once per connection
//! ([`RouteTable::view_for_pod`]); `l7` calls [`route_http`] per request, `l4` calls [`route_tcp`]
//! per connection, or [`route_tls`] with the ClientHello's SNI on ports with `tls` rules; a [`Target`]
//! then picks the endpoint ([`Target::pick`]).

pub(crate) mod catalog;
pub mod delegate;
pub mod policy;
pub mod scope;
pub mod table;
pub mod target;
pub mod tls;
pub mod view;

use std::net::SocketAddr;

use http::HeaderMap;

use crate::policy::{HashKey, HttpAction, HttpMatch, Labels, StringMatch};
pub use policy::RoutePolicy;
pub use table::{cluster_policy, destination_rules_for};
pub use table::{Changes, RouteTable};
pub use target::{Target, WeightedTarget, WeightedTargets};
pub use tls::{route_tls, routes_by_sni, TlsRoutes, TlsRule};
pub use view::{ClientClass, ClientView, CompiledHttpRoute, Listener, Outbound, ServicePortRoutes};

/// What routing knows about the client pod (a kernel fact, never a request header).
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub namespace: String,
    pub labels: Labels,
}

/// The parts of a request that match conditions read.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub method: &'a str,
    /// `:path` including the query string.
    pub path_and_query: &'a str,
    /// `:authority` / `Host`, including a port if the client sent one.
    pub authority: &'a str,
    pub scheme: &'a str,
    pub headers: &'a HeaderMap,
}

/// The result of routing one HTTP request.
#[derive(Debug)]
pub enum RouteDecision<'a> {
    /// Forward to a destination of `route` (`None` = the default route of a service with no
    /// applicable VirtualService).
    Forward {
        route: Option<&'a CompiledHttpRoute>,
        /// What to do with the request (the rule's, or the default route's).
        policy: &'a RoutePolicy,
        target: &'a Target,
        /// Index of the chosen destination in the route's `route` list.
        destination_index: Option<usize>,
        /// Index into the rule's `matches` of the block that matched (`None`: catch-all rule).
        matched_block: Option<usize>,
        /// The destination's consistent-hash key, if its DestinationRule sets one.
        hash: Option<&'a HashKey>,
    },
    /// Unknown destination for this client under `ALLOW_ANY`: forward to the original destination
    /// with no timeout and no retries (Istio's `allow_any` virtual host -> `PassthroughCluster`).
    Passthrough(&'a Target),
    /// Unknown destination under `REGISTRY_ONLY`: Envoy's `block_all` answers 502 with an empty body.
    Blocked,
    /// A rule with `redirect` or `directResponse` (handled by the caller).
    Local {
        route: &'a CompiledHttpRoute,
        /// Index into the rule's `matches` of the block that matched (`None`: catch-all rule).
        matched_block: Option<usize>,
    },
    /// No rule matched: Envoy answers 404 with an empty body (`NR`).
    NoRoute,
    /// The matched rule has no destination left (all weights zero).
    NoDestination,
}

/// The result of routing one opaque TCP connection.
#[derive(Debug, Clone, Copy)]
pub enum TcpDecision<'a> {
    /// Relay to an endpoint of this target.
    Forward(&'a Target),
    /// Unknown destination under `ALLOW_ANY`: relay to the original destination.
    Passthrough(&'a Target),
    /// Unknown destination under `REGISTRY_ONLY` (`BlackHoleCluster`), or the rule has no
    /// destination left: close the connection.
    Close,
}

/// Route an HTTP request of a client (its `view`) that dialled `original_dst`.
pub fn route_http<'a>(
    view: &'a ClientView,
    original_dst: SocketAddr,
    request: &RequestFacts<'_>,
) -> RouteDecision<'a> {
    match view.lookup(original_dst) {
        Outbound::Service(routes) => route_service_http(routes, request),
        Outbound::Passthrough { .. } => RouteDecision::Passthrough(view.passthrough()),
        Outbound::Blocked { .. } => RouteDecision::Blocked,
    }
}

/// Route an HTTP request over one service port's rules for a client: the first rule with a block
/// that matches wins; no VirtualService for the client means the default route.
pub fn route_service_http<'a>(
    routes: &'a ServicePortRoutes,
    request: &RequestFacts<'_>,
) -> RouteDecision<'a> {
    let Some(rules) = &routes.http else {
        return RouteDecision::Forward {
            route: None,
            policy: &routes.default_policy,
            target: &routes.default_target,
            destination_index: None,
            matched_block: None,
            hash: routes.default_hash.as_deref(),
        };
    };
    for route in rules {
        let matched_block = if route.blocks.is_empty() {
            None
        } else {
            match route.blocks.iter().copied().find(|&i| {
                route
                    .spec
                    .matches
                    .get(i)
                    .is_some_and(|m| request_match(m, request))
            }) {
                Some(i) => Some(i),
                None => continue,
            }
        };
        return match &route.spec.action {
            HttpAction::Route(_) => match route.targets.pick() {
                Some(t) => RouteDecision::Forward {
                    route: Some(route),
                    policy: &route.policy,
                    target: &t.target,
                    destination_index: Some(t.index),
                    matched_block,
                    hash: t.hash.as_deref(),
                },
                None => RouteDecision::NoDestination,
            },
            HttpAction::Redirect(_)
            | HttpAction::DirectResponse(_)
            | HttpAction::Delegate { .. } => RouteDecision::Local {
                route,
                matched_block,
            },
        };
    }
    RouteDecision::NoRoute
}

/// Route an opaque TCP connection of a client that dialled `original_dst`: the `tcp` rule chosen for
/// the client when the view was built, else the default route.
pub fn route_tcp(view: &ClientView, original_dst: SocketAddr) -> TcpDecision<'_> {
    match view.lookup(original_dst) {
        Outbound::Service(routes) => match &routes.tcp {
            None => TcpDecision::Forward(&routes.default_target),
            Some(targets) => targets
                .pick()
                .map_or(TcpDecision::Close, |t| TcpDecision::Forward(&t.target)),
        },
        Outbound::Passthrough { .. } => TcpDecision::Passthrough(view.passthrough()),
        Outbound::Blocked { .. } => TcpDecision::Close,
    }
}

/// A condition of a match block that does not hold: what `keel explain` reports for a rule that did
/// not match. The matchers below return the first one they find (`None`: the block holds), so the
/// explanation and the request path read the same code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmet<'m> {
    /// `port`: the block is for another service port.
    Port(u16),
    /// `gateways` without `mesh`: the block is for gateways only.
    Gateways,
    /// `sourceLabels` do not select the client pod.
    SourceLabels,
    /// `sourceNamespace` is another namespace than the client's.
    SourceNamespace,
    /// `destinationSubnets` (L4) do not contain the original destination.
    DestinationSubnets,
    /// `uri`.
    Uri,
    /// `method`.
    Method,
    /// `authority`.
    Authority,
    /// `scheme`.
    Scheme,
    /// `headers.<name>`: absent or another value.
    Header(&'m str),
    /// `withoutHeaders.<name>`: present with a value it excludes.
    WithoutHeader(&'m str),
    /// `queryParams.<name>`: absent or another value.
    QueryParam(&'m str),
}

/// Static conditions of an HTTP match block for a client on service port `port`; a block failing
/// them does not exist for that client.
pub(crate) fn static_match(m: &HttpMatch, port: u16, client: &ClientInfo) -> bool {
    static_mismatch(m, port, client).is_none()
}

/// The first static condition of an HTTP match block that fails for the client (see [`static_match`]).
pub fn static_mismatch<'m>(m: &'m HttpMatch, port: u16, client: &ClientInfo) -> Option<Unmet<'m>> {
    if let Some(p) = m.port.filter(|&p| p != port) {
        return Some(Unmet::Port(p));
    }
    if !m.gateways.is_empty() {
        // A block naming gateways applies to sidecars only if it names `mesh`; then source
        // conditions of the block are not evaluated (Istio's `sourceMatchHTTP`).
        return (!m.gateways.iter().any(|g| g == "mesh")).then_some(Unmet::Gateways);
    }
    source_mismatch(&m.source_labels, &m.source_namespace, client)
}

/// `sourceLabels` / `sourceNamespace` against the client, the first that fails.
pub(crate) fn source_mismatch(
    labels: &Option<Labels>,
    namespace: &Option<String>,
    client: &ClientInfo,
) -> Option<Unmet<'static>> {
    if !labels
        .as_ref()
        .is_none_or(|l| crate::policy::selector_matches(l, &client.labels))
    {
        return Some(Unmet::SourceLabels);
    }
    if namespace.as_ref().is_some_and(|ns| *ns != client.namespace) {
        return Some(Unmet::SourceNamespace);
    }
    None
}

/// `a.b.c.d/len` or a bare address contains `ip` (IPv4-mapped IPv6 compared as IPv4); unparsable
/// text contains nothing (validation already rejected it).
pub(crate) fn subnet_contains(subnet: &str, ip: std::net::IpAddr) -> bool {
    let ip = ip.to_canonical();
    match subnet.parse::<ipnet::IpNet>() {
        Ok(net) => match (net, ip) {
            (ipnet::IpNet::V6(v6), std::net::IpAddr::V4(_)) => v6
                .addr()
                .to_ipv4_mapped()
                .and_then(|a| {
                    let prefix = v6.prefix_len().checked_sub(96)?;
                    ipnet::Ipv4Net::new(a, prefix).ok()
                })
                .zip(match ip {
                    std::net::IpAddr::V4(v4) => Some(v4),
                    std::net::IpAddr::V6(_) => None,
                })
                .is_some_and(|(net, v4)| net.contains(&v4)),
            (net, ip) => net.contains(&ip),
        },
        Err(_) => subnet
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.to_canonical() == ip),
    }
}

/// Request-time conditions of one match block.
#[inline]
pub fn request_match(m: &HttpMatch, req: &RequestFacts<'_>) -> bool {
    request_mismatch(m, req).is_none()
}

/// The first request-time condition of a match block the request fails (`None`: the block holds).
/// [`request_match`] is this, so `keel explain` and the request path cannot disagree.
pub fn request_mismatch<'m>(m: &'m HttpMatch, req: &RequestFacts<'_>) -> Option<Unmet<'m>> {
    if let Some(uri) = &m.uri {
        if !uri_match(uri, req.path_and_query, m.ignore_uri_case) {
            return Some(Unmet::Uri);
        }
    }
    if m.method.as_ref().is_some_and(|s| !s.matches(req.method)) {
        return Some(Unmet::Method);
    }
    if m.authority
        .as_ref()
        .is_some_and(|s| !s.matches(req.authority))
    {
        return Some(Unmet::Authority);
    }
    if m.scheme.as_ref().is_some_and(|s| !s.matches(req.scheme)) {
        return Some(Unmet::Scheme);
    }
    for (name, matcher) in &m.headers {
        match header_value(req, name) {
            Some(v) if matcher.matches(&v) => {}
            _ => return Some(Unmet::Header(name)),
        }
    }
    for (name, matcher) in &m.without_headers {
        let present_and_matching = match (header_value(req, name), matcher) {
            (None, StringMatch::Present) => false,
            // Envoy's `treat_missing_header_as_empty`: an absent header is compared as "".
            (None, m) => m.matches(""),
            (Some(v), m) => m.matches(&v),
        };
        if present_and_matching {
            return Some(Unmet::WithoutHeader(name));
        }
    }
    if !m.query_params.is_empty() {
        let query = req
            .path_and_query
            .split_once('?')
            .map(|(_, q)| q)
            .unwrap_or("");
        for (name, matcher) in &m.query_params {
            match first_query_value(query, name) {
                Some(v) if matcher.matches(v) => {}
                _ => return Some(Unmet::QueryParam(name)),
            }
        }
    }
    None
}

/// `exact` and `regex` see the path without the query string; `prefix` sees the whole `:path`.
fn uri_match(matcher: &StringMatch, path_and_query: &str, ignore_case: bool) -> bool {
    let path = path_and_query
        .split_once('?')
        .map(|(p, _)| p)
        .unwrap_or(path_and_query);
    match matcher {
        StringMatch::Exact(s) if ignore_case => path.eq_ignore_ascii_case(s),
        StringMatch::Exact(s) => path == s,
        StringMatch::Prefix(p) if ignore_case => path_and_query
            .get(..p.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(p)),
        StringMatch::Prefix(p) => path_and_query.starts_with(p.as_str()),
        StringMatch::Regex(re) => re.is_match(path),
        StringMatch::Present => true,
    }
}

/// A header's value as Envoy matches it: several occurrences joined with `,`; pseudo-headers map to
/// request fields.
pub(crate) fn header_value(req: &RequestFacts<'_>, name: &str) -> Option<String> {
    match name {
        ":method" => return Some(req.method.to_string()),
        ":path" => return Some(req.path_and_query.to_string()),
        ":authority" | "host" => return Some(req.authority.to_string()),
        ":scheme" => return Some(req.scheme.to_string()),
        _ => {}
    }
    let mut values = req.headers.get_all(name).iter();
    let first = values.next()?;
    let mut out = String::from_utf8_lossy(first.as_bytes()).into_owned();
    for v in values {
        out.push(',');
        out.push_str(&String::from_utf8_lossy(v.as_bytes()));
    }
    Some(out)
}

/// The first value of query parameter `name` (not percent-decoded, as Envoy matches).
pub(crate) fn first_query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests;
