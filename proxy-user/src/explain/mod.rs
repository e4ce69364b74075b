//! `keel explain`: what Keel does with one request of one client pod, and why.
//!
//! The explanation reads the same routing tables the request path reads (`routing::RouteTable`,
//! built from the snapshot as `keel run` builds it) and asks the same functions: the decision comes
//! from [`route_service_http`] / [`route_tcp`] / [`route_tls`], and the reasons an earlier rule did not
//! match come from the matchers' own `*_mismatch` functions, whose `is_none()` is what the request
//! path evaluates. Nothing here re-implements matching; it only words what the matchers report.
//!
//! From a config directory endpoint health is `unknown`; from a running keel (`GET /explain` on the
//! admin API) it is the client pod's own outlier-detection state, as its sidecar would hold it.

pub mod describe;
mod model;
pub mod source;
mod text;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::policy::{HttpAction, Meta, Protocol, Snapshot, VirtualService, WeightedDestination};
use crate::routing::catalog::{Catalog, CatalogId, Kind};
use crate::routing::delegate::expand_http_traced;
use crate::routing::scope::{exported_to, select_sidecar, EgressScope};
use crate::routing::table::{by_precedence, l4_static_mismatch};
use crate::routing::tls::tls_static_mismatch;
use crate::routing::{
    cluster_policy, destination_rules_for, request_mismatch, route_service_http, route_tcp,
    route_tls, static_mismatch, ClientInfo, ClientView, CompiledHttpRoute, Outbound, RequestFacts,
    RouteDecision, RouteTable, ServicePortRoutes, Target, TcpDecision, WeightedTargets,
};
use crate::upstream::{ClientId, Discovery, PolicyLevel};

use describe::Subject;
pub use model::*;
pub use text::render;

/// Explain `query` against `snapshot` and the routing table built from it.
pub fn explain(
    snapshot: &Snapshot,
    routes: &RouteTable,
    query: &Query,
    health: Health<'_>,
) -> Result<Explanation, Error> {
    let pod_id = *snapshot
        .pod_by_name
        .get(&query.from)
        .ok_or_else(|| Error::UnknownPod(query.from.clone()))?;
    let pod = snapshot
        .pods
        .get(pod_id)
        .ok_or_else(|| Error::UnknownPod(query.from.clone()))?;
    let view = routes
        .view_for_pod(pod_id)
        .ok_or_else(|| Error::NotCaptured(query.from.clone()))?;
    let client = ClientInfo {
        namespace: pod.meta.namespace.clone(),
        labels: pod.labels.clone(),
    };
    let uri: http::Uri = query
        .url
        .parse()
        .map_err(|e: http::uri::InvalidUri| Error::BadUrl(query.url.clone(), e.to_string()))?;
    let scheme = uri.scheme_str().unwrap_or("http").to_ascii_lowercase();
    let host = uri
        .host()
        .ok_or_else(|| Error::BadUrl(query.url.clone(), "no host".to_string()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = match uri.port_u16() {
        Some(p) => p,
        None => match scheme.as_str() {
            "http" => 80,
            "https" | "tls" => 443,
            _ => {
                return Err(Error::BadUrl(
                    query.url.clone(),
                    format!("{scheme}:// needs a port"),
                ))
            }
        },
    };
    let mut headers = HeaderMap::new();
    for (k, v) in &query.headers {
        let name = HeaderName::from_bytes(k.trim().to_ascii_lowercase().as_bytes())
            .map_err(|_| Error::BadHeader(format!("{k}: {v}")))?;
        let value =
            HeaderValue::from_str(v.trim()).map_err(|_| Error::BadHeader(format!("{k}: {v}")))?;
        headers.append(name, value);
    }
    let catalog = Catalog::new(snapshot);
    let (dst, service) = resolve(snapshot, &catalog, &client.namespace, &host, port)?;
    let method = query.method.clone().unwrap_or_else(|| "GET".to_string());
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let authority = uri
        .authority()
        .map_or(host.clone(), |a| a.as_str().to_string());
    let who_name = format!("{}/{}", pod.meta.namespace, pod.meta.name);
    let mut out = Explanation {
        client: who_name.clone(),
        sidecar: view.sidecar.clone(),
        request: match scheme.as_str() {
            "tcp" | "tls" => format!("connect {}", query.url),
            _ => format!("{method} {}", query.url),
        },
        headers: query
            .headers
            .iter()
            .map(|(k, v)| format!("{}: {}", k.trim(), v.trim()))
            .collect(),
        destination: dst.to_string(),
        ..Explanation::default()
    };
    if pod.traffic.is_some() {
        let decision = crate::pods::traffic::decide(pod.traffic.as_ref(), dst);
        let verdict = if decision.captured {
            "captured"
        } else {
            "direct"
        };
        out.capture = Some(format!("{verdict}: {}", decision.reason));
        if !decision.captured {
            out.result = format!(
                "direct to {dst}: the pod's traffic annotations exclude this connection; keel \
                 never sees it, so no VirtualService or DestinationRule applies"
            );
            return Ok(out);
        }
    }
    let routes_here = match view.lookup(dst) {
        Outbound::Service(r) => r,
        Outbound::Passthrough { .. } | Outbound::Blocked { .. } => {
            not_visible(&mut out, snapshot, &catalog, view, &client, service, dst);
            return Ok(out);
        }
    };
    out.service = Some(format!(
        "{}:{} ({})",
        routes_here.hostname,
        routes_here.port,
        protocol_name(routes_here.protocol)
    ));
    let ctx = Ctx {
        snapshot,
        view,
        client: &client,
        who: who_name,
        routes: routes_here,
        dst,
        health,
        pod_of_ip: pod_ips(snapshot),
    };
    ctx.virtual_services(&mut out);
    let sni = query.sni.clone().or_else(|| {
        matches!(scheme.as_str(), "https" | "tls")
            .then(|| host.clone())
            .filter(|h| h.parse::<IpAddr>().is_err())
    });
    let is_tls_port = matches!(routes_here.protocol, Protocol::Tls | Protocol::Https);
    if is_tls_port || query.sni.is_some() {
        ctx.tls(&mut out, sni.as_deref());
    } else if scheme == "tcp"
        || !(routes_here.protocol.is_http() || routes_here.protocol == Protocol::Auto)
    {
        ctx.tcp(&mut out);
    } else {
        let facts = RequestFacts {
            method: &method,
            path_and_query: &path,
            authority: &authority,
            scheme: if scheme == "https" { "https" } else { "http" },
            headers: &headers,
        };
        ctx.http(&mut out, &facts);
    }
    Ok(out)
}

/// The address `host:port` names for a client in `namespace`: a Service's cluster IP, a ServiceEntry
/// address, or an address given as such.
fn resolve(
    snapshot: &Snapshot,
    catalog: &Catalog<'_>,
    namespace: &str,
    host: &str,
    port: u16,
) -> Result<(SocketAddr, Option<CatalogId>), Error> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok((SocketAddr::new(ip, port), None));
    }
    let mut names = vec![host.to_string()];
    match host.matches('.').count() {
        0 => names.push(format!("{host}.{namespace}.svc.cluster.local")),
        1 => names.push(format!("{host}.svc.cluster.local")),
        _ if host.ends_with(".svc") => names.push(format!("{host}.cluster.local")),
        _ => {}
    }
    for name in &names {
        let Some(id) = catalog.find(name, |_| true) else {
            continue;
        };
        let addr = match catalog.services[id].kind {
            Kind::Kube { service, .. } => service
                .cluster_ips
                .iter()
                .map(|ip| SocketAddr::new(*ip, port))
                .find(|a| snapshot.service_by_vip.contains_key(&(a.ip(), a.port()))),
            Kind::Entry(se) => snapshot
                .service_entry_destinations()
                .into_iter()
                .find(|d| {
                    d.addr.port() == port
                        && snapshot
                            .service_entries
                            .get(d.entry)
                            .is_some_and(|e| std::ptr::eq(e, se))
                })
                .map(|d| d.addr),
        };
        if let Some(addr) = addr {
            return Ok((addr, Some(id)));
        }
    }
    Err(Error::UnknownHost {
        host: host.to_string(),
        tried: names.join(" or "),
        port,
    })
}

/// Why the client does not see the service at `dst`, and what happens instead.
fn not_visible(
    out: &mut Explanation,
    snapshot: &Snapshot,
    catalog: &Catalog<'_>,
    view: &ClientView,
    client: &ClientInfo,
    service: Option<CatalogId>,
    dst: SocketAddr,
) {
    let (outcome, cluster) = match view.lookup(dst) {
        Outbound::Blocked { .. } => (
            "blocked: outboundTrafficPolicy REGISTRY_ONLY (HTTP 502, TCP closed; BlackHoleCluster)",
            "BlackHoleCluster",
        ),
        _ => (
            "passthrough to the original destination (outboundTrafficPolicy ALLOW_ANY; PassthroughCluster)",
            "PassthroughCluster",
        ),
    };
    out.result = outcome.to_string();
    out.clusters.push(ClusterExplained {
        name: cluster.to_string(),
        destination_rule: None,
        subset: None,
        policy: Vec::new(),
        discovery: Some(format!("original destination {dst}")),
        endpoints: Vec::new(),
    });
    let Some(svc) = service.and_then(|id| catalog.services.get(id)) else {
        out.notes.push(format!(
            "{dst} is not a meshed destination (no Service or ServiceEntry address)"
        ));
        return;
    };
    let who = &out.client;
    if !exported_to(svc.export_to, svc.namespace, &client.namespace) {
        out.notes.push(format!(
            "{} ({}) is not visible to {who}: exportTo {}",
            svc.hostname,
            svc.namespace,
            svc.export_to.join(",")
        ));
    }
    let scope = egress_scope(snapshot, client);
    if !scope.imports_service(&client.namespace, svc.namespace, svc.hostname, dst.port()) {
        out.notes.push(format!(
            "Sidecar {} of {who} does not import {}/{}:{}",
            scope.sidecar.as_deref().unwrap_or("-"),
            svc.namespace,
            svc.hostname,
            dst.port()
        ));
    }
}

fn egress_scope(snapshot: &Snapshot, client: &ClientInfo) -> EgressScope {
    select_sidecar(
        &snapshot.sidecars,
        &client.namespace,
        &client.labels,
        &snapshot.mesh.root_namespace,
    )
    .map(EgressScope::from_sidecar)
    .unwrap_or_else(EgressScope::everything)
}

/// Pod IP -> `namespace/name`.
fn pod_ips(snapshot: &Snapshot) -> HashMap<IpAddr, String> {
    snapshot
        .pods
        .iter()
        .flat_map(|p| {
            p.ips
                .iter()
                .map(move |ip| (*ip, format!("{}/{}", p.meta.namespace, p.meta.name)))
        })
        .collect()
}

/// `file:line` of a resource.
fn location(meta: &Meta) -> Option<String> {
    meta.file.as_ref().map(|f| match meta.line {
        Some(l) => format!("{f}:{l}"),
        None => f.clone(),
    })
}

fn ns_name(meta: &Meta) -> String {
    format!("{}/{}", meta.namespace, meta.name)
}

/// How Istio names a port protocol.
pub fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "HTTP",
        Protocol::Http2 => "HTTP2",
        Protocol::Grpc => "GRPC",
        Protocol::GrpcWeb => "GRPC-WEB",
        Protocol::Https => "HTTPS",
        Protocol::Tls => "TLS",
        Protocol::Tcp => "TCP",
        Protocol::Mongo => "MONGO",
        Protocol::Redis => "REDIS",
        Protocol::Mysql => "MYSQL",
        Protocol::Udp => "UDP",
        Protocol::Auto => "unspecified (sniffed)",
    }
}

/// What one explanation reads.
struct Ctx<'a> {
    snapshot: &'a Snapshot,
    view: &'a ClientView,
    client: &'a ClientInfo,
    /// `namespace/name` of the client.
    who: String,
    routes: &'a ServicePortRoutes,
    dst: SocketAddr,
    health: Health<'a>,
    pod_of_ip: HashMap<IpAddr, String>,
}

impl<'a> Ctx<'a> {
    fn subject(&self) -> Subject<'_> {
        Subject {
            pod: &self.who,
            client: self.client,
            port: self.routes.port,
        }
    }

    /// The VirtualService in force (as the table chose it), if any.
    fn chosen(&self) -> Option<&'a VirtualService> {
        let name = self.routes.virtual_service.as_deref()?;
        self.snapshot
            .virtual_services
            .iter()
            .find(|vs| vs.meta.display_name() == name)
            .map(|vs| &**vs)
    }

    /// Every VirtualService for the host, in precedence order, with why it applies or not.
    fn virtual_services(&self, out: &mut Explanation) {
        let host = self.routes.hostname.as_str();
        let all = &self.snapshot.virtual_services;
        let order = by_precedence(
            all.iter()
                .map(|vs| &**vs)
                .enumerate()
                .filter(|(_, vs)| !vs.hosts.is_empty()),
            host,
        );
        let chosen = self.routes.virtual_service.as_deref();
        let tls_port = matches!(self.routes.protocol, Protocol::Tls | Protocol::Https);
        let scope = egress_scope(self.snapshot, self.client);
        let mut seen_chosen = false;
        for vs in order.into_iter().filter_map(|i| all.get(i)) {
            let is_chosen = chosen == Some(vs.meta.display_name().as_str());
            let verdict = if !vs.applies_to_mesh() {
                format!(
                    "not for sidecars: bound to gateways {} (no mesh)",
                    vs.gateways.join(",")
                )
            } else if !exported_to(&vs.export_to, &vs.meta.namespace, &self.client.namespace) {
                format!(
                    "not visible to {}: exportTo {}",
                    self.who,
                    vs.export_to.join(",")
                )
            } else if !scope.imports_virtual_service(
                &self.client.namespace,
                &vs.meta.namespace,
                &vs.hosts,
            ) {
                format!(
                    "not imported by Sidecar {}",
                    scope.sidecar.as_deref().unwrap_or("-")
                )
            } else if is_chosen {
                seen_chosen = true;
                "applies".to_string()
            } else if tls_port {
                if vs.tls.is_empty() {
                    "no tls rules (TLS port)".to_string()
                } else {
                    "tls rules merged after the first".to_string()
                }
            } else if seen_chosen {
                format!(
                    "ignored: {} applies (older or more specific host)",
                    chosen.unwrap_or("-")
                )
            } else {
                "skipped: none of its rules applies to this client and port".to_string()
            };
            out.virtual_services.push(Verdict {
                name: ns_name(&vs.meta),
                location: location(&vs.meta),
                verdict,
            });
        }
    }

    /// An HTTP request: rules, route, clusters.
    fn http(&self, out: &mut Explanation, req: &RequestFacts<'_>) {
        let decision = route_service_http(self.routes, req);
        let Some(compiled) = &self.routes.http else {
            out.result = format!(
                "default route (no VirtualService applies) -> {}",
                self.routes.default_target.key()
            );
            let route = RouteExplained {
                rule: "default route".to_string(),
                destinations: vec![DestinationExplained {
                    destination: self.routes.hostname.clone(),
                    weight: 100,
                    percent: 100.0,
                    cluster: self.routes.default_target.key().to_string(),
                }],
                settings: route_settings_default(self.routes),
            };
            out.route = Some(route);
            self.cluster(out, &self.routes.default_target);
            return;
        };
        let matched: Option<(&CompiledHttpRoute, Option<usize>)> = match &decision {
            RouteDecision::Forward {
                route: Some(r),
                matched_block,
                ..
            } => Some((r, *matched_block)),
            RouteDecision::Local {
                route,
                matched_block,
            } => Some((route, *matched_block)),
            // All weights zero: the rule matched but has nowhere to go; find it the way the request
            // path does (first rule with a block that holds).
            RouteDecision::NoDestination => compiled.iter().find_map(|r| {
                if r.blocks.is_empty() {
                    return Some((r, None));
                }
                r.blocks
                    .iter()
                    .copied()
                    .find(|&b| {
                        r.spec
                            .matches
                            .get(b)
                            .is_some_and(|m| request_mismatch(m, req).is_none())
                    })
                    .map(|b| (r, Some(b)))
            }),
            _ => None,
        };
        let Some(vs) = self.chosen() else {
            return;
        };
        let expanded = expand_http_traced(vs, &self.snapshot.virtual_services);
        for why in &expanded.dropped {
            out.notes.push(why.clone());
        }
        let matched_rule = matched.map(|(r, _)| r.rule);
        let catch_all = compiled
            .iter()
            .find(|r| r.blocks.is_empty())
            .map(|r| r.rule);
        let who = self.subject();
        for (i, rule) in expanded.rules.iter().enumerate() {
            let mut label = rule_label("http", rule.root_index, rule.route.name.as_deref());
            if let Some((delegate, leaf)) = &rule.delegate {
                label.push_str(&format!(" (delegate {delegate} http[{leaf}])"));
            }
            let compiled_rule = compiled.iter().find(|c| c.rule == i);
            let (outcome, details) = if matched_rule == Some(i) {
                let block = matched.and_then(|(_, b)| b);
                let detail = match block.and_then(|b| rule.route.matches.get(b).map(|m| (b, m))) {
                    Some((b, m)) => format!("match[{b}]: {}", describe::http_block(m)),
                    None => "no match conditions (catch-all)".to_string(),
                };
                ("matched", vec![detail])
            } else if matched_rule.is_some_and(|m| i > m) {
                ("not evaluated", Vec::new())
            } else if let Some(c) = compiled_rule {
                let details = rule
                    .route
                    .matches
                    .iter()
                    .enumerate()
                    .map(|(b, m)| {
                        let why = if c.blocks.contains(&b) {
                            request_mismatch(m, req).map(|u| describe::unmet_http(u, m, req, &who))
                        } else {
                            static_mismatch(m, self.routes.port, self.client)
                                .map(|u| describe::unmet_http(u, m, req, &who))
                        };
                        format!("match[{b}]: {}", why.unwrap_or_else(|| "holds".to_string()))
                    })
                    .collect();
                ("no match", details)
            } else if catch_all.is_some_and(|k| k < i) {
                (
                    "unreachable",
                    vec![format!(
                        "after rule {} without match conditions",
                        compiled
                            .iter()
                            .find(|r| Some(r.rule) == catch_all)
                            .map_or(String::new(), |r| format!("#{}", r.rule))
                    )],
                )
            } else {
                let details = rule
                    .route
                    .matches
                    .iter()
                    .enumerate()
                    .map(|(b, m)| {
                        let why = static_mismatch(m, self.routes.port, self.client)
                            .map(|u| describe::unmet_static(u, &m.source_labels, &who));
                        format!("match[{b}]: {}", why.unwrap_or_else(|| "holds".to_string()))
                    })
                    .collect();
                ("not for this client", details)
            };
            out.rules.push(RuleExplained {
                rule: label,
                outcome: outcome.to_string(),
                details,
            });
        }
        let vs_name = ns_name(&vs.meta);
        let Some((route, _)) = matched else {
            out.result = format!("no rule of VirtualService {vs_name} matches: 404 (NR)");
            return;
        };
        let rule_name = out
            .rules
            .iter()
            .find(|r| r.outcome == "matched")
            .map_or_else(|| format!("http rule {}", route.rule), |r| r.rule.clone());
        let mut explained = RouteExplained {
            rule: rule_name.clone(),
            destinations: Vec::new(),
            settings: Vec::new(),
        };
        match &route.spec.action {
            HttpAction::Route(dests) => {
                explained.destinations = destinations(dests, &route.targets);
                out.result = match &decision {
                    RouteDecision::NoDestination => {
                        format!("VirtualService {vs_name} {rule_name}: every weight is 0: 503")
                    }
                    _ => format!(
                        "VirtualService {vs_name} {rule_name} -> {}",
                        explained
                            .destinations
                            .iter()
                            .map(|d| format!("{} {}%", d.cluster, round(d.percent)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
            }
            HttpAction::Redirect(r) => {
                explained.settings.push(Setting {
                    name: "redirect".to_string(),
                    value: describe::redirect(r),
                    from: "rule".to_string(),
                });
                out.result = format!(
                    "VirtualService {vs_name} {rule_name}: redirect {}",
                    r.redirect_code
                );
            }
            HttpAction::DirectResponse(d) => {
                let body = d
                    .body
                    .as_ref()
                    .map(|b| format!(", body {:?}", String::from_utf8_lossy(b)))
                    .unwrap_or_default();
                explained.settings.push(Setting {
                    name: "directResponse".to_string(),
                    value: format!("{}{body}", d.status),
                    from: "rule".to_string(),
                });
                out.result = format!(
                    "VirtualService {vs_name} {rule_name}: direct response {}",
                    d.status
                );
            }
            HttpAction::Delegate { name, namespace } => {
                out.result = format!("VirtualService {vs_name} {rule_name}: delegate {namespace}/{name} not resolved");
            }
        }
        explained.settings.extend(route_settings(route));
        for (target, percent) in &route.mirrors {
            explained.settings.push(Setting {
                name: "mirror".to_string(),
                value: format!("{} {}%", target.key(), round(*percent)),
                from: "rule".to_string(),
            });
        }
        out.route = Some(explained);
        for t in &route.targets.targets {
            self.cluster(out, &t.target);
        }
    }

    /// An opaque TCP connection: the first `tcp` rule whose conditions hold.
    fn tcp(&self, out: &mut Explanation) {
        let decision = route_tcp(self.view, self.dst);
        let who = self.subject();
        let mut matched = None;
        if let Some(vs) = self.chosen() {
            for (i, rule) in vs.tcp.iter().enumerate() {
                let label = rule_label("tcp", i, None);
                if matched.is_some() {
                    out.rules.push(RuleExplained {
                        rule: label,
                        outcome: "not evaluated".to_string(),
                        details: Vec::new(),
                    });
                    continue;
                }
                let reasons: Vec<Option<String>> = rule
                    .matches
                    .iter()
                    .map(|m| {
                        l4_static_mismatch(m, self.routes.port, self.client, self.dst)
                            .map(|u| describe::unmet_static(u, &m.source_labels, &who))
                    })
                    .collect();
                let hit = if rule.matches.is_empty() {
                    Some(None)
                } else {
                    reasons.iter().position(Option::is_none).map(Some)
                };
                let (outcome, details) = match hit {
                    Some(block) => {
                        matched = Some((i, rule));
                        let d = match block.and_then(|b| rule.matches.get(b).map(|m| (b, m))) {
                            Some((b, m)) => format!("match[{b}]: {}", describe::l4_block(m)),
                            None => "no match conditions (catch-all)".to_string(),
                        };
                        ("matched", vec![d])
                    }
                    None => (
                        "no match",
                        reasons
                            .into_iter()
                            .enumerate()
                            .map(|(b, r)| format!("match[{b}]: {}", r.unwrap_or_default()))
                            .collect(),
                    ),
                };
                out.rules.push(RuleExplained {
                    rule: label,
                    outcome: outcome.to_string(),
                    details,
                });
            }
        }
        let target = match decision {
            TcpDecision::Forward(t) | TcpDecision::Passthrough(t) => t,
            TcpDecision::Close => {
                out.result = "connection closed (the rule has no destination left)".to_string();
                return;
            }
        };
        match (&self.routes.tcp, matched, self.chosen()) {
            (Some(targets), Some((i, rule)), Some(vs)) => {
                let label = rule_label("tcp", i, None);
                let dests = destinations(&rule.route, targets);
                out.result = format!(
                    "VirtualService {} {label} -> {}",
                    ns_name(&vs.meta),
                    dests
                        .iter()
                        .map(|d| format!("{} {}%", d.cluster, round(d.percent)))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                out.route = Some(RouteExplained {
                    rule: label,
                    destinations: dests,
                    settings: Vec::new(),
                });
                for t in &targets.targets {
                    self.cluster(out, &t.target);
                }
            }
            _ => {
                out.result = format!("default route (no tcp rule applies) -> {}", target.key());
                out.route = Some(RouteExplained {
                    rule: "default route".to_string(),
                    destinations: vec![DestinationExplained {
                        destination: self.routes.hostname.clone(),
                        weight: 100,
                        percent: 100.0,
                        cluster: target.key().to_string(),
                    }],
                    settings: Vec::new(),
                });
                self.cluster(out, target);
            }
        }
    }

    /// A TLS connection with server name `sni`: the `tls` rules by SNI.
    fn tls(&self, out: &mut Explanation, sni: Option<&str>) {
        let decision = route_tls(self.view, self.dst, sni);
        let chosen_rule = self.routes.tls.as_ref().and_then(|t| t.rule_for(sni));
        let who = self.subject();
        let host = self.routes.hostname.as_str();
        let all = &self.snapshot.virtual_services;
        let scope = egress_scope(self.snapshot, self.client);
        for vs in by_precedence(
            all.iter()
                .map(|vs| &**vs)
                .enumerate()
                .filter(|(_, v)| !v.hosts.is_empty()),
            host,
        )
        .into_iter()
        .filter_map(|i| all.get(i))
        .filter(|vs| {
            vs.applies_to_mesh()
                && exported_to(&vs.export_to, &vs.meta.namespace, &self.client.namespace)
                && scope.imports_virtual_service(
                    &self.client.namespace,
                    &vs.meta.namespace,
                    &vs.hosts,
                )
        }) {
            for (i, rule) in vs.tls.iter().enumerate() {
                let name = format!("{}/{} tls[{i}]", vs.meta.namespace, vs.meta.name);
                let is_chosen = chosen_rule.is_some_and(|r| r.name == name);
                let details: Vec<String> = rule
                    .matches
                    .iter()
                    .enumerate()
                    .map(|(b, m)| {
                        let why = tls_static_mismatch(m, self.routes.port, self.client)
                            .map(|u| describe::unmet_static(u, &m.source_labels, &who));
                        match why {
                            Some(w) => format!("match[{b}]: {w}"),
                            None => format!("match[{b}]: {}", describe::l4_block(m)),
                        }
                    })
                    .collect();
                out.rules.push(RuleExplained {
                    rule: name,
                    outcome: if is_chosen {
                        format!("matched (SNI {})", sni.unwrap_or("none"))
                    } else {
                        format!("no match (SNI {})", sni.unwrap_or("none"))
                    },
                    details,
                });
            }
        }
        match (decision, chosen_rule) {
            (TcpDecision::Forward(_), Some(rule)) => {
                let dests: Vec<DestinationExplained> = rule
                    .targets
                    .targets
                    .iter()
                    .map(|t| DestinationExplained {
                        destination: t.target.key().host.clone(),
                        weight: t.weight,
                        percent: percent(t.weight, &rule.targets),
                        cluster: cluster_name(&t.target),
                    })
                    .collect();
                out.result = format!(
                    "VirtualService {} -> {}",
                    rule.name,
                    dests
                        .iter()
                        .map(|d| format!("{} {}%", d.cluster, round(d.percent)))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                out.route = Some(RouteExplained {
                    rule: rule.name.clone(),
                    destinations: dests,
                    settings: Vec::new(),
                });
                for t in &rule.targets.targets {
                    self.cluster(out, &t.target);
                }
            }
            (TcpDecision::Forward(t) | TcpDecision::Passthrough(t), _) => {
                out.result = format!(
                    "no tls rule for SNI {}: default route -> {}",
                    sni.unwrap_or("(none)"),
                    t.key()
                );
                self.cluster(out, t);
            }
            (TcpDecision::Close, _) => {
                out.result = format!(
                    "no tls rule for SNI {}: connection closed (REGISTRY_ONLY, or no destination left)",
                    sni.unwrap_or("(none)")
                );
            }
        }
    }

    /// A cluster's DestinationRule, policy and endpoints (once per cluster).
    fn cluster(&self, out: &mut Explanation, target: &Target) {
        let name = cluster_name(target);
        if out.clusters.iter().any(|c| c.name == name) {
            return;
        }
        let Target::Cluster(cluster) = target else {
            out.clusters.push(ClusterExplained {
                name,
                destination_rule: None,
                subset: None,
                policy: Vec::new(),
                discovery: Some(
                    "no such service or subset for this client: requests get 503 (NC)".to_string(),
                ),
                endpoints: Vec::new(),
            });
            return;
        };
        let key = &cluster.key;
        // The DestinationRules the table chose for this client and host.
        let service_ns = self
            .snapshot
            .service_by_host
            .get(&key.host)
            .and_then(|&id| self.snapshot.services.get(id))
            .map(|s| s.meta.namespace.clone())
            .or_else(|| {
                self.snapshot
                    .service_entries
                    .iter()
                    .find(|se| se.hosts.contains(&key.host))
                    .map(|se| se.meta.namespace.clone())
            })
            .unwrap_or_default();
        let rules = destination_rules_for(self.snapshot, self.client, &key.host, &service_ns);
        let (_, sources) = cluster_policy(&rules, key.subset.as_deref(), key.port);
        let policy = &cluster.policy;
        let from = |level: PolicyLevel| -> String {
            match level {
                PolicyLevel::Default => "default".to_string(),
                PolicyLevel::Subset | PolicyLevel::SubsetPortLevel => format!(
                    "{} {}",
                    level.describe(),
                    key.subset.as_deref().unwrap_or("")
                ),
                PolicyLevel::PortLevel => format!("{} port {}", level.describe(), key.port),
                PolicyLevel::TopLevel => level.describe().to_string(),
            }
        };
        let mut settings = vec![
            Setting {
                name: "loadBalancer".to_string(),
                value: describe::load_balancer(
                    policy.load_balancer.as_ref(),
                    policy.locality_lb_setting.as_ref(),
                    policy.warmup.as_ref(),
                ),
                from: from(sources.load_balancer),
            },
            Setting {
                name: "connectionPool".to_string(),
                value: describe::connection_pool(policy.connection_pool.as_ref()),
                from: from(sources.connection_pool),
            },
            Setting {
                name: "outlierDetection".to_string(),
                value: describe::outlier_detection(policy.outlier_detection.as_ref()),
                from: from(sources.outlier_detection),
            },
            Setting {
                name: "tls".to_string(),
                value: describe::tls(policy.tls.as_ref()),
                from: from(sources.tls),
            },
        ];
        if let Some(b) = &policy.retry_budget {
            settings.push(Setting {
                name: "retryBudget".to_string(),
                value: describe::retry_budget(b),
                from: from(sources.retry_budget),
            });
        }
        let destination_rule = rules.first().map(|dr| Verdict {
            name: ns_name(&dr.meta),
            location: location(&dr.meta),
            verdict: if rules.len() > 1 {
                format!(
                    "with {}",
                    rules[1..]
                        .iter()
                        .map(|d| ns_name(&d.meta))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                String::new()
            },
        });
        let subset =
            key.subset
                .as_deref()
                .map(|name| match rules.iter().find_map(|r| r.subset(name)) {
                    Some(s) => format!("{name} ({})", describe::labels(&s.labels)),
                    None => format!("{name} (not defined)"),
                });
        let (discovery, endpoints) = match &cluster.discovery {
            Discovery::Static => (None, self.endpoints(cluster)),
            Discovery::OriginalDst => (
                Some("original destination: the address the client dialled".to_string()),
                Vec::new(),
            ),
            Discovery::Dns { names, first_only } => (
                Some(format!(
                    "DNS{}: {}",
                    if *first_only {
                        " (first address only)"
                    } else {
                        ""
                    },
                    names
                        .iter()
                        .map(|(n, p)| format!("{n}:{p}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                Vec::new(),
            ),
        };
        out.clusters.push(ClusterExplained {
            name,
            destination_rule,
            subset,
            policy: settings,
            discovery,
            endpoints,
        });
    }

    /// A static cluster's endpoints with their health for this client.
    fn endpoints(
        &self,
        cluster: &std::sync::Arc<crate::upstream::Cluster>,
    ) -> Vec<EndpointExplained> {
        let set = cluster.endpoint_set();
        let state = match self.health {
            Health::Unknown => None,
            Health::Live(pods) => {
                let pod_id = self.snapshot.pod_by_name.get(&self.who).copied();
                let mut ids: Vec<ClientId> = pods
                    .iter()
                    .filter(|(_, p)| Some(**p) == pod_id)
                    .map(|(cg, _)| ClientId(*cg))
                    .collect();
                ids.push(ClientId::NODE);
                Some(ids.into_iter().find_map(|id| cluster.client_state(id)))
            }
        };
        set.addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                let locality = set
                    .topology
                    .get(i)
                    .map(|t| t.locality.to_string())
                    .filter(|l| l != "//")
                    .unwrap_or_else(|| "-".to_string());
                let health = match &state {
                    None => "unknown".to_string(),
                    Some(None) => "healthy (no requests from this pod yet)".to_string(),
                    Some(Some(c)) => match c.is_ejected(*addr) {
                        Some(true) => "ejected (outlier detection)".to_string(),
                        Some(false) => "healthy".to_string(),
                        None => "healthy (no outlier detection)".to_string(),
                    },
                };
                EndpointExplained {
                    pod: self
                        .pod_of_ip
                        .get(&addr.ip())
                        .cloned()
                        .unwrap_or_else(|| "-".to_string()),
                    address: addr.to_string(),
                    locality,
                    health,
                }
            })
            .collect()
    }
}

/// `http[1] "name"`.
fn rule_label(kind: &str, index: usize, name: Option<&str>) -> String {
    match name {
        Some(n) if !n.is_empty() => format!("{kind}[{index}] {n:?}"),
        _ => format!("{kind}[{index}]"),
    }
}

fn cluster_name(target: &Target) -> String {
    match target {
        Target::Cluster(c) => c.key.to_string(),
        Target::Missing(k) => format!("{k} (missing)"),
    }
}

/// One decimal at most.
fn round(p: f64) -> f64 {
    (p * 10.0).round() / 10.0
}

fn percent(weight: u32, targets: &WeightedTargets) -> f64 {
    let total: u64 = targets.targets.iter().map(|t| u64::from(t.weight)).sum();
    if total == 0 {
        0.0
    } else {
        f64::from(weight) * 100.0 / total as f64
    }
}

/// A rule's destinations as written, with the weights and clusters the table resolved.
fn destinations(
    dests: &[WeightedDestination],
    targets: &WeightedTargets,
) -> Vec<DestinationExplained> {
    dests
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut name = d.destination.host.clone();
            if let Some(s) = &d.destination.subset {
                name.push_str(&format!(" subset {s}"));
            }
            if let Some(p) = d.destination.port {
                name.push_str(&format!(" port {p}"));
            }
            let resolved = targets.targets.iter().find(|t| t.index == i);
            DestinationExplained {
                destination: name,
                weight: resolved.map_or(d.weight, |t| t.weight),
                percent: resolved.map_or(0.0, |t| percent(t.weight, targets)),
                cluster: resolved.map_or_else(
                    || "never chosen (weight 0)".to_string(),
                    |t| cluster_name(&t.target),
                ),
            }
        })
        .collect()
}

/// Timeout and retries of a default route.
fn route_settings_default(routes: &ServicePortRoutes) -> Vec<Setting> {
    let p = &routes.default_policy;
    vec![
        Setting {
            name: "timeout".to_string(),
            value: p.timeout.map_or("none".to_string(), describe::duration),
            from: "mesh default".to_string(),
        },
        Setting {
            name: "retries".to_string(),
            value: retries(&p.retry, None),
            from: "Istio default".to_string(),
        },
    ]
}

fn retries(
    r: &crate::routing::policy::RetryPolicy,
    spec: Option<&crate::policy::Retries>,
) -> String {
    if r.num_retries == 0 {
        return "none".to_string();
    }
    let on = spec.map_or_else(
        || crate::policy::validate::DEFAULT_RETRY_ON.join(","),
        |s| s.retry_on.join(","),
    );
    let mut out = format!("{} attempts", r.num_retries);
    if let Some(t) = r.per_try_timeout {
        out.push_str(&format!(", perTryTimeout {}", describe::duration(t)));
    }
    if !on.is_empty() {
        out.push_str(&format!(", retryOn {on}"));
    }
    out
}

/// What a matched rule applies besides its destinations.
fn route_settings(route: &CompiledHttpRoute) -> Vec<Setting> {
    let spec = &route.spec;
    let p = &route.policy;
    let rule = |name: &str, value: String| Setting {
        name: name.to_string(),
        value,
        from: "rule".to_string(),
    };
    let mut out = vec![
        Setting {
            name: "timeout".to_string(),
            value: p.timeout.map_or("none".to_string(), describe::duration),
            from: if spec.timeout.is_some() {
                "rule"
            } else {
                "mesh default"
            }
            .to_string(),
        },
        Setting {
            name: "retries".to_string(),
            value: retries(&p.retry, spec.retries.as_ref()),
            from: if spec.retries.is_some() {
                "rule"
            } else {
                "Istio default"
            }
            .to_string(),
        },
    ];
    if let Some(f) = &spec.fault {
        out.push(rule("fault", describe::fault(f)));
    }
    if let Some(r) = &spec.rewrite {
        out.push(rule("rewrite", describe::rewrite(r)));
    }
    if let Some(h) = describe::header_ops(&spec.headers.request) {
        out.push(rule("request headers", h));
    }
    if let Some(h) = describe::header_ops(&spec.headers.response) {
        out.push(rule("response headers", h));
    }
    if let HttpAction::Route(dests) = &spec.action {
        for d in dests {
            if let Some(h) = describe::header_ops(&d.headers.request) {
                out.push(rule(
                    &format!("request headers ({})", d.destination.host),
                    h,
                ));
            }
            if let Some(h) = describe::header_ops(&d.headers.response) {
                out.push(rule(
                    &format!("response headers ({})", d.destination.host),
                    h,
                ));
            }
        }
    }
    if let Some(c) = &spec.cors_policy {
        out.push(rule("corsPolicy", describe::cors(c)));
    }
    out
}

/// Parses `name: value` (as `curl -H` takes it).
pub fn parse_header(s: &str) -> Result<(String, String), Error> {
    let (k, v) = s
        .split_once(':')
        .ok_or_else(|| Error::BadHeader(s.to_string()))?;
    if k.trim().is_empty() {
        return Err(Error::BadHeader(s.to_string()));
    }
    Ok((k.trim().to_string(), v.trim().to_string()))
}

#[cfg(test)]
mod tests;
