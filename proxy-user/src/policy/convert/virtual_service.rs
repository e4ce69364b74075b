//! `VirtualService` -> model, with Istio's validation rules (§1.0–1.18 of the reference).

use base64::Engine as _;

use super::{Ctx, DestinationRef};
use crate::policy::error::*;
use crate::policy::model::*;
use crate::policy::validate::{self as v, MatchField};
use crate::source::FieldPath;
use crate::wire::istio as w;

/// Largest direct-response body Istio accepts, and the size above which it warns.
const MAX_DIRECT_BODY: usize = 1024 * 1024;
const WARN_DIRECT_BODY: usize = 100 * 1024;
/// istiod's status check lets 600 through; Envoy refuses it, so the route would never be served.
const STATUS_600: &str =
    "status 600 passes istiod's check (200..600) but Envoy refuses statuses from 600 on; use 200..599";

pub(super) fn convert(
    ctx: &mut Ctx<'_>,
    spec: &w::VirtualServiceSpec,
    refs: &mut Vec<DestinationRef>,
    gateway_refs: &mut Vec<(Location, String)>,
) -> Option<VirtualService> {
    let spec_path = FieldPath::root().key("spec");
    let ns = ctx.ns().to_string();

    let gateways = gateway_names(
        ctx,
        &spec_path.key("gateways"),
        &spec.gateways,
        gateway_refs,
    );
    let mesh_bound = spec.gateways.is_empty() || spec.gateways.iter().any(|g| g == "mesh");
    let is_delegate = spec.hosts.is_empty();

    // Hosts.
    let mut hosts: Vec<String> = Vec::new();
    if is_delegate {
        // A VS without hosts can only be used as a delegate, which cannot bind gateways or carry L4 routes.
        if !spec.gateways.is_empty() {
            ctx.err(
                &spec_path.key("gateways"),
                InvalidHttpRoute::Delegate(
                    "a delegate virtual service (no hosts) must not set gateways",
                ),
            );
        }
        if !spec.tcp.is_empty() || !spec.tls.is_empty() {
            ctx.err(
                &spec_path,
                InvalidHttpRoute::Delegate(
                    "a delegate virtual service (no hosts) must not have tcp or tls routes",
                ),
            );
        }
    }
    // istiod checks each host with its domain grammar (IP addresses pass), then, only when every host
    // passed, compares the hosts as written (no short-name expansion) for overlaps.
    let gateway_bound = !mesh_bound;
    let has_sni = spec
        .tls
        .iter()
        .any(|t| t.match_.iter().any(|m| !m.sni_hosts.is_empty()));
    let mut all_hosts_valid = true;
    for (i, h) in spec.hosts.iter().enumerate() {
        let path = spec_path.key("hosts").index(i);
        let checked = if gateway_bound {
            v::gateway_bound_domain(h, has_sni)
        } else {
            v::wildcard_domain(h)
        };
        match checked {
            Err(_) if h.parse::<std::net::IpAddr>().is_ok() => {}
            Err(e) => {
                ctx.err(&path, e);
                all_hosts_valid = false;
                continue;
            }
            Ok(()) if mesh_bound && h == "*" => {
                ctx.err(
                    &path,
                    InvalidHost::Star(" for virtual services bound to the mesh gateway"),
                );
                all_hosts_valid = false;
                continue;
            }
            Ok(()) => {}
        }
        let fqdn = v::resolve_short_name(h, &ns);
        // `reviews` and `reviews.<ns>.svc.cluster.local` are different strings to istiod: one host here.
        if !hosts.contains(&fqdn) {
            hosts.push(fqdn);
        }
    }
    if all_hosts_valid {
        for (i, a) in spec.hosts.iter().enumerate() {
            for (j, b) in spec.hosts.iter().enumerate().skip(i + 1) {
                let path = spec_path.key("hosts").index(j);
                if a == b {
                    ctx.err(&path, InvalidHost::Duplicate(a.clone()));
                } else if v::hosts_overlap(a, b) {
                    ctx.err(&path, InvalidHost::Overlap(a.clone(), b.clone()));
                }
            }
        }
    }

    if spec.http.is_empty() && spec.tcp.is_empty() && spec.tls.is_empty() {
        ctx.err(
            &spec_path,
            InvalidHttpRoute::Missing("at least one of http, tcp or tls"),
        );
    }
    let export_to = ctx
        .check(
            &spec_path.key("exportTo"),
            v::export_to(&spec.export_to, &ns, v::ExportKind::Config),
        )
        .unwrap_or_default();

    let mut r = RouteCtx {
        refs,
        gateway_refs,
        is_delegate,
        mesh_bound,
    };
    let mut http = Vec::new();
    for (i, route) in spec.http.iter().enumerate() {
        if let Some(hr) = http_route(ctx, &mut r, &spec_path.key("http").index(i), route) {
            http.push(hr);
        }
    }
    // Rule indexes only line up with the YAML when every rule converted; a rejected VS gets no lint.
    if ctx.errors.is_empty() {
        unreachable_http_rules(ctx, &spec_path, &http);
    }

    let mut tcp = Vec::new();
    for (i, route) in spec.tcp.iter().enumerate() {
        let path = spec_path.key("tcp").index(i);
        let matches = route
            .match_
            .iter()
            .enumerate()
            .map(|(j, m)| {
                let mp = path.key("match").index(j);
                if m.source_subnet.is_some() {
                    ctx.warn(
                        &mp.key("sourceSubnet"),
                        "sourceSubnet is not implemented by Istio and is ignored",
                    );
                }
                l4_match(
                    ctx,
                    &mut r,
                    &mp,
                    &m.destination_subnets,
                    m.port,
                    &m.source_labels,
                    &m.gateways,
                    &m.source_namespace,
                )
            })
            .collect::<Vec<_>>();
        let dests = l4_destinations(ctx, &mut r, &path, &route.route);
        tcp.push(L4Route {
            matches,
            route: dests,
        });
    }
    // The first TCP rule without effective conditions takes every connection; later rules are dead.
    let mut tcp_catch_all = None;
    for (i, route) in spec.tcp.iter().enumerate() {
        if let Some(k) = tcp_catch_all {
            ctx.warn(
                &spec_path.key("tcp").index(i),
                format!("this rule follows the catch-all rule spec.tcp[{k}] and can never match"),
            );
            continue;
        }
        let unconditional = |m: &w::L4MatchAttributes| {
            m.destination_subnets.is_empty()
                && m.port.is_none()
                && m.source_labels.is_none()
                && m.source_namespace.is_none()
                && m.gateways.is_empty()
        };
        if route.match_.is_empty() || route.match_.iter().any(unconditional) {
            tcp_catch_all = Some(i);
        }
    }

    let mut tls = Vec::new();
    for (i, route) in spec.tls.iter().enumerate() {
        let path = spec_path.key("tls").index(i);
        if route.match_.is_empty() {
            ctx.err(&path.key("match"), InvalidL4Route::NoMatch);
        }
        let mut matches = Vec::new();
        for (j, m) in route.match_.iter().enumerate() {
            let mp = path.key("match").index(j);
            let mut lm = l4_match(
                ctx,
                &mut r,
                &mp,
                &m.destination_subnets,
                m.port,
                &m.source_labels,
                &m.gateways,
                &m.source_namespace,
            );
            if m.sni_hosts.is_empty() {
                ctx.err(&mp.key("sniHosts"), InvalidL4Route::NoSni);
            }
            for (k, sni) in m.sni_hosts.iter().enumerate() {
                let sp = mp.key("sniHosts").index(k);
                let checked = if gateway_bound {
                    v::gateway_bound_domain(sni, true)
                } else {
                    v::wildcard_domain(sni)
                };
                let sni_l = sni.to_ascii_lowercase();
                if let Err(e) = checked {
                    // istiod only warns about an IP address, and does not compare it with the hosts.
                    if sni.parse::<std::net::IpAddr>().is_ok() {
                        ctx.warn(
                            &sp,
                            "an IP address as SNI host never matches: clients send names in SNI",
                        );
                        lm.sni_hosts.push(sni_l);
                    } else {
                        ctx.err(&sp, e);
                    }
                    continue;
                }
                // Compared as written, like istiod: `reviews` is not within `reviews.default.svc...`.
                if !spec.hosts.iter().any(|h| v::host_subset_of(sni, h)) {
                    ctx.err(&sp, InvalidL4Route::SniNotInHosts(sni.clone()));
                }
                lm.sni_hosts.push(sni_l);
            }
            matches.push(lm);
        }
        let dests = l4_destinations(ctx, &mut r, &path, &route.route);
        tls.push(L4Route {
            matches,
            route: dests,
        });
    }

    Some(VirtualService {
        meta: ctx.meta.clone(),
        hosts,
        gateways,
        http,
        tcp,
        tls,
        export_to,
    })
}

/// What route conversion needs besides the resource context.
struct RouteCtx<'r> {
    refs: &'r mut Vec<DestinationRef>,
    gateway_refs: &'r mut Vec<(Location, String)>,
    is_delegate: bool,
    mesh_bound: bool,
}

/// Normalises gateway names to `mesh` or `namespace/name`, checking them as istiod's
/// `validateGatewayNames` does: `ns/name` needs two DNS labels; a name without `/` must be a domain name
/// (`a.b` is the legacy `name.namespace` form, warned about) and, an istiod quirk, ends the checking: the
/// names after it are taken as written.
fn gateway_names(
    ctx: &mut Ctx<'_>,
    path: &FieldPath,
    names: &[String],
    refs: &mut Vec<(Location, String)>,
) -> Vec<String> {
    let ns = ctx.ns().to_string();
    let mut out = Vec::new();
    let mut checking = true;
    for (i, g) in names.iter().enumerate() {
        let p = path.index(i);
        if g == "mesh" {
            checking = false;
            out.push(g.clone());
            continue;
        }
        let full = if let Some((gns, name)) = g.split_once('/') {
            if checking {
                let mut ok = true;
                for (what, part) in [("gateway namespace", gns), ("gateway name", name)] {
                    ok &= istio_label(ctx, &p, what, part);
                }
                if !ok {
                    continue;
                }
            }
            g.clone()
        } else {
            let was_checking = checking;
            checking = false;
            if was_checking {
                if let Err(e) = v::istio_fqdn(g) {
                    ctx.err(
                        &p,
                        InvalidHttpRoute::Value(format!(
                            "gateway name {g:?} is not a domain name: {e}"
                        )),
                    );
                    continue;
                }
            }
            if let Some((name, rest)) = g.split_once('.') {
                // Legacy `name.namespace[.svc.cluster.local]` form.
                let gns = rest.split('.').next().unwrap_or_default();
                ctx.warn(
                    &p,
                    format!("gateway name {g:?} uses the legacy FQDN form; write \"{gns}/{name}\""),
                );
                format!("{gns}/{name}")
            } else {
                format!("{ns}/{g}")
            }
        };
        refs.push((ctx.location(&p), full.clone()));
        if !out.contains(&full) {
            out.push(full);
        }
    }
    out
}

/// Checks `s` with istiod's DNS-1123 label rule (`labels.IsDNS1123Label`, which allows upper case).
fn istio_label(ctx: &mut Ctx<'_>, path: &FieldPath, what: &str, s: &str) -> bool {
    let ok = v::is_istio_dns1123_label(s);
    if !ok {
        ctx.err(
            path,
            InvalidHttpRoute::Value(format!(
                "{what} {s:?} is not a valid DNS-1123 label (letters of either case, digits and '-', at most 63, starting and ending with a letter or digit)"
            )),
        );
    }
    ok
}

fn http_route(
    ctx: &mut Ctx<'_>,
    r: &mut RouteCtx<'_>,
    path: &FieldPath,
    route: &w::HttpRoute,
) -> Option<HttpRoute> {
    let before = ctx.errors.len();
    let has_route = !route.route.is_empty();
    let has_redirect = route.redirect.is_some();
    let has_direct = route.direct_response.is_some();
    let has_delegate = route.delegate.is_some();
    let has_fault = route.fault.is_some();
    let has_rewrite = route.rewrite.is_some();
    let root_rule = has_delegate && !r.is_delegate;
    // istiod's `validateHTTPRouteConflict`: a root rule (delegate, in a VS with hosts) is only checked
    // for redirect and route; any other rule by whichever of redirect / directResponse / route it has.
    let conflicts: Vec<(&'static str, bool, &'static str, bool)> = if root_rule {
        vec![
            ("delegate", true, "route", has_route),
            ("delegate", true, "redirect", has_redirect),
        ]
    } else if has_redirect {
        vec![
            ("route", has_route, "redirect", true),
            ("fault", has_fault, "redirect", true),
            ("rewrite", has_rewrite, "redirect", true),
            ("redirect", true, "directResponse", has_direct),
        ]
    } else if has_direct {
        vec![
            ("route", has_route, "directResponse", true),
            ("fault", has_fault, "directResponse", true),
            ("rewrite", has_rewrite, "directResponse", true),
        ]
    } else {
        if !has_route && !has_delegate {
            ctx.err(path, InvalidHttpRoute::NoAction);
        }
        Vec::new()
    };
    for (a, ha, b, hb) in conflicts {
        if ha && hb {
            ctx.err(path, InvalidHttpRoute::Conflict(a, b));
        }
    }
    if !root_rule && route.mirror.is_some() && !route.mirrors.is_empty() {
        ctx.err(path, InvalidHttpRoute::Conflict("mirror", "mirrors"));
    }

    let matches: Vec<HttpMatch> = route
        .match_
        .iter()
        .enumerate()
        .map(|(j, m)| http_match(ctx, r, &path.key("match").index(j), m))
        .collect();

    let (route_headers, header_authority) =
        headers(ctx, &path.key("headers"), route.headers.as_ref(), true);

    let action = if let Some(d) = &route.delegate {
        let dp = path.key("delegate");
        if r.is_delegate {
            ctx.err(
                &dp,
                InvalidHttpRoute::Delegate("a delegate virtual service cannot delegate again"),
            );
        }
        // istiod does not check the reference; one that names no VirtualService drops the rule at
        // runtime, in Keel as in Istio.
        let name = d.name.clone().unwrap_or_default();
        let namespace = d.namespace.clone().unwrap_or_else(|| ctx.ns().to_string());
        if name.is_empty() {
            ctx.warn(
                &dp.key("name"),
                "delegate has no name: it can never resolve and the rule is dropped",
            );
        } else if !v::is_dns1123_subdomain(&name) {
            ctx.warn(
                &dp.key("name"),
                format!("delegate name {name:?} is not a valid resource name: it can never resolve and the rule is dropped"),
            );
        }
        if !v::is_dns1123_label(&namespace) {
            ctx.warn(
                &dp.key("namespace"),
                format!("delegate namespace {namespace:?} is not a valid namespace name: it can never resolve and the rule is dropped"),
            );
        }
        HttpAction::Delegate { name, namespace }
    } else if let Some(rd) = &route.redirect {
        HttpAction::Redirect(redirect(ctx, &path.key("redirect"), rd, &matches)?)
    } else if let Some(dr) = &route.direct_response {
        HttpAction::DirectResponse(direct_response(ctx, &path.key("directResponse"), dr)?)
    } else {
        HttpAction::Route(http_destinations(ctx, r, path, &route.route))
    };

    let mut rewrite = route
        .rewrite
        .as_ref()
        .and_then(|rw| rewrite_of(ctx, &path.key("rewrite"), rw));
    if let Some(authority) = header_authority {
        match &mut rewrite {
            Some(rw) if rw.authority.is_some() => {
                ctx.err(&path.key("headers"), InvalidHeader::AuthorityTwice)
            }
            Some(rw) => rw.authority = Some(authority),
            None => {
                rewrite = Some(Rewrite {
                    uri: None,
                    uri_regex: None,
                    authority: Some(authority),
                })
            }
        }
    }

    let timeout = route
        .timeout
        .as_deref()
        .and_then(|t| ctx.check(&path.key("timeout"), v::duration_ms(t)));
    let retries = route
        .retries
        .as_ref()
        .and_then(|rt| retries(ctx, &path.key("retries"), rt));
    let fault = route
        .fault
        .as_ref()
        .and_then(|f| fault(ctx, &path.key("fault"), f));
    let mirrors = mirrors(ctx, r, path, route);
    let cors_policy = route
        .cors_policy
        .as_ref()
        .and_then(|c| cors(ctx, &path.key("corsPolicy"), c));

    if ctx.errors.len() > before {
        return None;
    }
    Some(HttpRoute {
        name: route.name.clone(),
        matches,
        action,
        rewrite,
        timeout,
        retries,
        fault,
        mirrors,
        cors_policy,
        headers: route_headers,
        weighted: route.route.len() > 1,
    })
}

fn http_match(
    ctx: &mut Ctx<'_>,
    r: &mut RouteCtx<'_>,
    path: &FieldPath,
    m: &w::HttpMatchRequest,
) -> HttpMatch {
    let sm = |ctx: &mut Ctx<'_>, key: &str, m: &Option<w::StringMatch>, f: MatchField| {
        m.as_ref()
            .and_then(|m| ctx.check(&path.key(key), v::string_match(m, f)))
    };
    let uri = sm(ctx, "uri", &m.uri, MatchField::Uri);
    let scheme = sm(ctx, "scheme", &m.scheme, MatchField::Other);
    let method = sm(ctx, "method", &m.method, MatchField::Other);
    let authority = sm(ctx, "authority", &m.authority, MatchField::Other);
    let headers = header_matches(ctx, r, &path.key("headers"), &m.headers, false);
    let without_headers = header_matches(
        ctx,
        r,
        &path.key("withoutHeaders"),
        &m.without_headers,
        true,
    );
    let mut query_params = Vec::new();
    for (k, qm) in &m.query_params {
        let qp = path.key("queryParams").key(k.clone());
        if k.is_empty() {
            ctx.err(
                &qp,
                InvalidHttpRoute::Value("query parameter name must not be empty".into()),
            );
            continue;
        }
        match qm {
            // istiod lets a null query parameter match through; Envoy gets a presence match.
            None => query_params.push((k.clone(), StringMatch::Present)),
            Some(qm) => {
                if let Some(sm) = ctx.check(&qp, v::string_match(qm, MatchField::Other)) {
                    query_params.push((k.clone(), sm));
                }
            }
        }
    }
    let port = match_port(ctx, &path.key("port"), m.port);
    let source_labels = m.source_labels.as_ref().map(|l| {
        ctx.check(&path.key("sourceLabels"), v::labels(l));
        l.clone()
    });
    // Empty means unset to istiod.
    let source_namespace = m
        .source_namespace
        .as_ref()
        .filter(|n| !n.is_empty())
        .map(|n| {
            istio_label(ctx, &path.key("sourceNamespace"), "sourceNamespace", n);
            n.clone()
        });
    let gateways = gateway_names(ctx, &path.key("gateways"), &m.gateways, r.gateway_refs);
    if m.stat_prefix.is_some() {
        ctx.not_applied(
            &path.key("statPrefix"),
            Some("Keel emits no per-route stats"),
        );
    }
    HttpMatch {
        name: m.name.clone(),
        uri,
        scheme,
        method,
        authority,
        headers,
        without_headers,
        query_params,
        ignore_uri_case: m.ignore_uri_case.unwrap_or(false),
        port,
        source_labels,
        source_namespace,
        gateways,
    }
}

/// A match `port`: 0 means unset to istiod (`port != 0` guards its range check).
fn match_port(ctx: &mut Ctx<'_>, path: &FieldPath, port: Option<i64>) -> Option<u16> {
    match port {
        None | Some(0) => None,
        Some(p) => ctx.check(path, v::port(p)),
    }
}

/// `headers` / `withoutHeaders` of a match. istiod rejects a null `headers` entry but lets a null
/// `withoutHeaders` entry through (a presence match, inverted); `regex: "*"` is a presence match too.
fn header_matches(
    ctx: &mut Ctx<'_>,
    r: &RouteCtx<'_>,
    path: &FieldPath,
    map: &std::collections::BTreeMap<String, Option<w::StringMatch>>,
    without: bool,
) -> Vec<(String, StringMatch)> {
    let mut out = Vec::new();
    for (k, m) in map {
        let hp = path.key(k.clone());
        if v::is_jwt_claim_key(k) {
            if r.mesh_bound {
                ctx.err(&hp, InvalidHeader::JwtClaim(k.clone()));
            }
            continue;
        }
        let name = if v::MATCHABLE_PSEUDO_HEADERS.contains(&k.as_str()) {
            k.clone()
        } else {
            match ctx.check(&hp, v::istio_header_name(k)) {
                Some(n) => n.to_ascii_lowercase(),
                None => continue,
            }
        };
        match m {
            None if without => out.push((name, StringMatch::Present)),
            None => ctx.err(&hp, InvalidStringMatch::Null),
            // Not RE2; istiod skips checking it in `withoutHeaders` and Envoy gets a presence match.
            Some(m)
                if without
                    && m.regex.as_deref() == Some("*")
                    && m.exact.is_none()
                    && m.prefix.is_none() =>
            {
                out.push((name, StringMatch::Present))
            }
            Some(m) => {
                if let Some(sm) = ctx.check(&hp, v::string_match(m, MatchField::Other)) {
                    out.push((name, sm));
                }
            }
        }
    }
    out
}

/// Converts header operations; returns them plus an authority taken from `:authority`/`host` in request
/// `set`/`add` (which Istio turns into an authority rewrite).
fn headers(
    ctx: &mut Ctx<'_>,
    path: &FieldPath,
    h: Option<&w::Headers>,
    route_level: bool,
) -> (Headers, Option<String>) {
    let mut out = Headers::default();
    let mut authority: Option<String> = None;
    let Some(h) = h else {
        return (out, None);
    };
    if let Some(req) = &h.request {
        let rp = path.key("request");
        let mut authorities = 0;
        for (op, map, target) in [("set", &req.set, 0), ("add", &req.add, 1)] {
            for (k, val) in map {
                let kp = rp.key(op).key(k.clone());
                let lower = k.to_ascii_lowercase();
                if lower == ":authority" || lower == "host" {
                    authorities += 1;
                    let Some(val) = ctx.check(&kp, v::authority_value(k, val)) else {
                        continue;
                    };
                    if route_level {
                        authority = Some(val);
                    } else if !out.request.set.iter().any(|(n, _)| n == "host") {
                        // Per destination, the data path rewrites Host by setting it (see model docs);
                        // istiod does not count them here, and `set` wins over `add`.
                        out.request.set.push(("host".to_string(), val));
                    }
                    continue;
                }
                if lower.starts_with(':') {
                    ctx.err(&kp, InvalidHeader::Reserved(k.clone()));
                    continue;
                }
                let Some(val) = header_value(ctx, &kp, k, val) else {
                    continue;
                };
                let Some(name) = op_name(ctx, &kp, k) else {
                    continue;
                };
                if target == 0 {
                    out.request.set.push((name, val));
                } else {
                    out.request.add.push((name, val));
                }
            }
        }
        if route_level && authorities > 1 {
            ctx.err(&rp, InvalidHeader::AuthorityTwice);
        }
        for (i, k) in req.remove.iter().enumerate() {
            let kp = rp.key("remove").index(i);
            let lower = k.to_ascii_lowercase();
            if lower.starts_with(':') || lower == "host" {
                ctx.err(&kp, InvalidHeader::Reserved(k.clone()));
            } else if let Some(name) = op_name(ctx, &kp, k) {
                out.request.remove.push(name);
            }
        }
    }
    if let Some(resp) = &h.response {
        let rp = path.key("response");
        for (op, map) in [("set", &resp.set), ("add", &resp.add)] {
            for (k, val) in map {
                let kp = rp.key(op).key(k.clone());
                let lower = k.to_ascii_lowercase();
                if lower.starts_with(':') || lower == "host" {
                    ctx.err(&kp, InvalidHeader::Reserved(k.clone()));
                    continue;
                }
                let Some(val) = header_value(ctx, &kp, k, val) else {
                    continue;
                };
                let Some(name) = op_name(ctx, &kp, k) else {
                    continue;
                };
                if op == "set" {
                    out.response.set.push((name, val));
                } else {
                    out.response.add.push((name, val));
                }
            }
        }
        for (i, k) in resp.remove.iter().enumerate() {
            let kp = rp.key("remove").index(i);
            let lower = k.to_ascii_lowercase();
            if lower.starts_with(':') || lower == "host" {
                ctx.err(&kp, InvalidHeader::Reserved(k.clone()));
            } else if let Some(name) = op_name(ctx, &kp, k) {
                out.response.remove.push(name);
            }
        }
    }
    (out, authority)
}

/// The name of a header operation, lower-cased. istiod only rejects an empty name (and the reserved ones,
/// checked by the caller); a name that is not an HTTP token is accepted there but cannot be sent by Keel.
fn op_name(ctx: &mut Ctx<'_>, path: &FieldPath, name: &str) -> Option<String> {
    if name.is_empty() {
        ctx.err(path, InvalidHeader::Name(String::new()));
        return None;
    }
    match v::header_name(name) {
        Ok(n) => Some(n),
        Err(_) => {
            ctx.not_applied(
                path,
                Some("the name is not an HTTP token (RFC 9110), so Keel cannot send it"),
            );
            None
        }
    }
}

/// A set/add value, kept as written (an Envoy template); operators Keel sends literally are warned about.
fn header_value(ctx: &mut Ctx<'_>, path: &FieldPath, name: &str, value: &str) -> Option<String> {
    for op in ctx.check(path, v::header_value(name, value))? {
        ctx.not_applied(
            path,
            Some(&format!(
                "Envoy operator {op} is sent literally (Keel does not evaluate it)"
            )),
        );
    }
    Some(value.to_string())
}

/// Converts a `Destination`, expanding the host in the VirtualService's namespace.
fn destination(
    ctx: &mut Ctx<'_>,
    r: &mut RouteCtx<'_>,
    path: &FieldPath,
    d: Option<&w::Destination>,
) -> Option<Destination> {
    let Some(d) = d else {
        ctx.err(path, InvalidHttpRoute::Missing("destination"));
        return None;
    };
    let host = match d.host.as_deref() {
        None | Some("") => {
            ctx.err(&path.key("host"), InvalidHost::Empty);
            return None;
        }
        Some(h) => h,
    };
    if host == "*" {
        ctx.err(&path.key("host"), InvalidHost::Star(" as a destination"));
        return None;
    }
    // istiod's domain grammar: IP addresses are rejected here (their last label is numeric).
    ctx.check(&path.key("host"), v::wildcard_domain(host))?;
    let subset = match &d.subset {
        Some(s) if !s.is_empty() => {
            if !istio_label(ctx, &path.key("subset"), "subset name", s) {
                return None;
            }
            Some(s.clone())
        }
        _ => None,
    };
    let port = match &d.port {
        None => None,
        Some(p) => match p.number {
            None => {
                ctx.err(&path.key("port"), InvalidPort::Missing);
                return None;
            }
            Some(n) => Some(ctx.check(&path.key("port").key("number"), v::port(n))?),
        },
    };
    let dest = Destination {
        host: v::resolve_short_name(host, ctx.ns()),
        subset,
        port,
    };
    if r.mesh_bound {
        r.refs.push(DestinationRef {
            at: ctx.location(path),
            client_namespace: ctx.ns().to_string(),
            destination: dest.clone(),
        });
    }
    Some(dest)
}

/// Checks a weight and returns it as `u32`.
fn weight(ctx: &mut Ctx<'_>, path: &FieldPath, w: Option<i64>) -> Option<u32> {
    let w = w.unwrap_or(0);
    if w < 0 {
        ctx.err(path, InvalidWeight::Negative(w));
        return None;
    }
    if w > i64::from(i32::MAX) {
        ctx.err(path, InvalidWeight::TooLarge(w));
        return None;
    }
    u32::try_from(w).ok()
}

/// Applies Istio's weight rules: one destination gets 100%; among several, weight-0 entries are dropped
/// and an all-zero list is an error.
fn normalise_weights(
    ctx: &mut Ctx<'_>,
    path: &FieldPath,
    mut dests: Vec<WeightedDestination>,
    count: usize,
) -> Vec<WeightedDestination> {
    if count == 1 {
        for d in &mut dests {
            d.weight = 100;
        }
        return dests;
    }
    if count > 1 && dests.len() == count && dests.iter().all(|d| d.weight == 0) {
        ctx.err(path, InvalidWeight::AllZero);
        return Vec::new();
    }
    dests.retain(|d| d.weight > 0);
    dests
}

fn http_destinations(
    ctx: &mut Ctx<'_>,
    r: &mut RouteCtx<'_>,
    path: &FieldPath,
    route: &[w::HttpRouteDestination],
) -> Vec<WeightedDestination> {
    let mut out = Vec::new();
    for (i, d) in route.iter().enumerate() {
        let p = path.key("route").index(i);
        let dest = destination(ctx, r, &p.key("destination"), d.destination.as_ref());
        let weight = weight(ctx, &p.key("weight"), d.weight);
        let (headers, _) = headers(ctx, &p.key("headers"), d.headers.as_ref(), false);
        if let (Some(destination), Some(weight)) = (dest, weight) {
            out.push(WeightedDestination {
                destination,
                weight,
                headers,
            });
        }
    }
    normalise_weights(ctx, &path.key("route"), out, route.len())
}

fn l4_destinations(
    ctx: &mut Ctx<'_>,
    r: &mut RouteCtx<'_>,
    path: &FieldPath,
    route: &[w::RouteDestination],
) -> Vec<WeightedDestination> {
    if route.is_empty() {
        ctx.err(&path.key("route"), InvalidL4Route::NoRoute);
    }
    let mut out = Vec::new();
    for (i, d) in route.iter().enumerate() {
        let p = path.key("route").index(i);
        let dest = destination(ctx, r, &p.key("destination"), d.destination.as_ref());
        let weight = weight(ctx, &p.key("weight"), d.weight);
        if let (Some(destination), Some(weight)) = (dest, weight) {
            out.push(WeightedDestination {
                destination,
                weight,
                headers: Headers::default(),
            });
        }
    }
    normalise_weights(ctx, &path.key("route"), out, route.len())
}

#[expect(
    clippy::too_many_arguments,
    reason = "TCP and TLS matches share these fields but not a type"
)]
fn l4_match(
    ctx: &mut Ctx<'_>,
    r: &mut RouteCtx<'_>,
    path: &FieldPath,
    subnets: &[String],
    port: Option<i64>,
    source_labels: &Option<w::LabelMap>,
    gateways: &[String],
    source_namespace: &Option<String>,
) -> L4Match {
    for (i, s) in subnets.iter().enumerate() {
        if v::cidr(s).is_err() {
            ctx.err(
                &path.key("destinationSubnets").index(i),
                InvalidL4Route::Subnet(s.clone()),
            );
        }
    }
    let port = match_port(ctx, &path.key("port"), port);
    if let Some(l) = source_labels {
        ctx.check(&path.key("sourceLabels"), v::labels(l));
    }
    // istiod does not check `sourceNamespace` of TCP/TLS matches (a bad one simply never matches).
    let gateways = gateway_names(ctx, &path.key("gateways"), gateways, r.gateway_refs);
    L4Match {
        destination_subnets: subnets.to_vec(),
        port,
        source_labels: source_labels.clone(),
        source_namespace: source_namespace.clone(),
        gateways,
        sni_hosts: Vec::new(),
    }
}

/// An empty string is an unset field to istiod (proto3 scalars).
fn set(s: &Option<String>) -> Option<&String> {
    s.as_ref().filter(|s| !s.is_empty())
}

fn redirect(
    ctx: &mut Ctx<'_>,
    path: &FieldPath,
    rd: &w::HttpRedirect,
    matches: &[HttpMatch],
) -> Option<Redirect> {
    let before = ctx.errors.len();
    let (uri, authority, scheme, prefix_rewrite) = (
        set(&rd.uri),
        set(&rd.authority),
        set(&rd.scheme),
        set(&rd.prefix_rewrite),
    );
    // `port: 0` still counts as set for istiod (the oneof is present); it redirects to no port.
    if uri.is_none()
        && authority.is_none()
        && scheme.is_none()
        && rd.port.is_none()
        && rd.derive_port.is_none()
        && prefix_rewrite.is_none()
    {
        ctx.err(
            path,
            InvalidHttpRoute::Missing("one of uri, authority, scheme, port or derivePort"),
        );
    }
    if uri.is_some() && prefix_rewrite.is_some() {
        ctx.err(path, InvalidHttpRoute::Conflict("uri", "prefixRewrite"));
    } else if prefix_rewrite.is_some() {
        // Envoy replaces the matched prefix; Istio requires every URI match of the rule to be a prefix.
        if let Some(j) = matches.iter().position(|m| {
            matches!(
                m.uri,
                Some(StringMatch::Exact(_)) | Some(StringMatch::Regex(_))
            )
        }) {
            ctx.err(
                &path.key("prefixRewrite"),
                InvalidHttpRoute::Value(format!(
                    "prefixRewrite needs prefix URI matches, but match[{j}].uri is not a prefix"
                )),
            );
        }
    }
    if rd.port.is_some() && rd.derive_port.is_some() {
        ctx.err(path, InvalidHttpRoute::Conflict("port", "derivePort"));
    }
    let port = match rd.port {
        None | Some(0) => None,
        Some(p) => ctx.check(&path.key("port"), v::port(p)),
    };
    let derive_port = match rd.derive_port.as_deref() {
        None => None,
        Some("FROM_PROTOCOL_DEFAULT") => Some(DerivePort::FromProtocolDefault),
        Some("FROM_REQUEST_PORT") => Some(DerivePort::FromRequestPort),
        Some(other) => {
            ctx.err(
                &path.key("derivePort"),
                Invalid::Enum {
                    value: other.to_string(),
                    allowed: "FROM_PROTOCOL_DEFAULT, FROM_REQUEST_PORT",
                },
            );
            None
        }
    };
    if let Some(s) = scheme {
        if s != "http" && s != "https" {
            ctx.err(
                &path.key("scheme"),
                Invalid::Enum {
                    value: s.clone(),
                    allowed: "http, https",
                },
            );
        }
    }
    // 0 is unset: 301.
    let code = rd.redirect_code.filter(|c| *c != 0).unwrap_or(301);
    if !(300..=399).contains(&code) {
        ctx.err(
            &path.key("redirectCode"),
            InvalidHttpRoute::Status {
                value: code,
                range: "300..399",
            },
        );
    } else if ![301, 302, 303, 307, 308].contains(&code) {
        // Istio validates 300..399 but can only translate these five; Envoy would reject the route.
        ctx.err(
            &path.key("redirectCode"),
            InvalidHttpRoute::Value(format!(
                "redirectCode {code} cannot be served (only 301, 302, 303, 307, 308)"
            )),
        );
    }
    if ctx.errors.len() > before {
        return None;
    }
    Some(Redirect {
        uri: uri.cloned(),
        prefix_rewrite: prefix_rewrite.cloned(),
        authority: authority.cloned(),
        port,
        derive_port,
        scheme: scheme.cloned(),
        redirect_code: u16::try_from(code).unwrap_or(301),
    })
}

fn direct_response(
    ctx: &mut Ctx<'_>,
    path: &FieldPath,
    dr: &w::HttpDirectResponse,
) -> Option<DirectResponse> {
    let status = match dr.status {
        None => {
            ctx.err(
                &path.key("status"),
                InvalidHttpRoute::Missing("directResponse.status"),
            );
            return None;
        }
        Some(600) => {
            ctx.err(
                &path.key("status"),
                InvalidHttpRoute::Value(STATUS_600.into()),
            );
            return None;
        }
        Some(s) if !(200..=599).contains(&s) => {
            ctx.err(
                &path.key("status"),
                InvalidHttpRoute::Status {
                    value: s,
                    range: "200..599",
                },
            );
            return None;
        }
        Some(s) => u16::try_from(s).ok()?,
    };
    let body = match &dr.body {
        None => None,
        Some(b) => match (&b.string, &b.bytes) {
            (Some(_), Some(_)) => {
                ctx.err(
                    &path.key("body"),
                    InvalidHttpRoute::Conflict("string", "bytes"),
                );
                return None;
            }
            (Some(s), None) => Some(bytes::Bytes::from(s.clone())),
            (None, Some(b64)) => match base64::engine::general_purpose::STANDARD.decode(b64.trim())
            {
                Ok(raw) => Some(bytes::Bytes::from(raw)),
                Err(e) => {
                    ctx.err(
                        &path.key("body").key("bytes"),
                        InvalidHttpRoute::Value(format!("body.bytes is not valid base64: {e}")),
                    );
                    return None;
                }
            },
            (None, None) => None,
        },
    };
    if let Some(b) = &body {
        if b.len() > MAX_DIRECT_BODY {
            ctx.err(
                &path.key("body"),
                InvalidHttpRoute::Value(format!(
                    "body is {} bytes (at most 1 MiB allowed)",
                    b.len()
                )),
            );
            return None;
        }
        if b.len() > WARN_DIRECT_BODY {
            ctx.warn(
                &path.key("body"),
                format!(
                    "body is {} bytes; large direct responses cost memory per route",
                    b.len()
                ),
            );
        }
    }
    Some(DirectResponse { status, body })
}

/// Turns an RE2-style replacement (`\1`) into the `regex` crate's syntax (`${1}`), escaping `$`.
fn rewrite_template(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(|d| d.is_ascii_digit()) => {
                let mut n = String::new();
                while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                    n.push(d);
                    chars.next();
                }
                out.push_str(&format!("${{{n}}}"));
            }
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

fn rewrite_of(ctx: &mut Ctx<'_>, path: &FieldPath, rw: &w::HttpRewrite) -> Option<Rewrite> {
    let (uri, authority) = (set(&rw.uri), set(&rw.authority));
    if uri.is_some() && rw.uri_regex_rewrite.is_some() {
        ctx.err(path, InvalidHttpRoute::Conflict("uri", "uriRegexRewrite"));
        return None;
    }
    if uri.is_none() && rw.uri_regex_rewrite.is_none() && authority.is_none() {
        ctx.err(
            path,
            InvalidHttpRoute::Missing("one of uri, uriRegexRewrite or authority"),
        );
        return None;
    }
    let uri_regex = match &rw.uri_regex_rewrite {
        None => None,
        Some(rr) => {
            let rp = path.key("uriRegexRewrite");
            let (Some(m), Some(t)) = (set(&rr.match_), set(&rr.rewrite)) else {
                ctx.err(
                    &rp,
                    InvalidHttpRoute::Missing("uriRegexRewrite.match and uriRegexRewrite.rewrite"),
                );
                return None;
            };
            let re = ctx.check(&rp.key("match"), v::plain_regex(m))?;
            Some((re, rewrite_template(t)))
        }
    };
    Some(Rewrite {
        uri: uri.cloned(),
        uri_regex,
        authority: authority.cloned(),
    })
}

fn retries(ctx: &mut Ctx<'_>, path: &FieldPath, rt: &w::HttpRetry) -> Option<Retries> {
    let attempts = rt.attempts.unwrap_or(0);
    if attempts < 0 {
        ctx.err(
            &path.key("attempts"),
            InvalidHttpRoute::Value(format!("attempts {attempts} must not be negative")),
        );
        return None;
    }
    if attempts == 0
        && (rt.per_try_timeout.is_some()
            || set(&rt.retry_on).is_some()
            || rt.retry_remote_localities.is_some())
    {
        ctx.err(
            path,
            InvalidHttpRoute::Value(
                "attempts is 0 (retries disabled) but perTryTimeout, retryOn or retryRemoteLocalities is set".into(),
            ),
        );
        return None;
    }
    let per_try_timeout = match &rt.per_try_timeout {
        None => None,
        Some(t) => Some(ctx.check(&path.key("perTryTimeout"), v::duration_ms(t))?),
    };
    let retry_on = match set(&rt.retry_on) {
        None => v::DEFAULT_RETRY_ON.iter().map(|s| s.to_string()).collect(),
        Some(s) => ctx.check(&path.key("retryOn"), v::retry_on(s))?,
    };
    let backoff = match &rt.backoff {
        None => None,
        Some(b) => Some(ctx.check(&path.key("backoff"), v::duration_ms(b))?),
    };
    if rt.retry_remote_localities == Some(true) {
        ctx.not_applied(
            &path.key("retryRemoteLocalities"),
            Some(
                "a retry picks its endpoint as a first attempt does (same locality priorities), preferring endpoints not tried yet",
            ),
        );
    }
    Some(Retries {
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        per_try_timeout,
        retry_on,
        retry_remote_localities: rt.retry_remote_localities.unwrap_or(false),
        backoff,
        retry_ignore_previous_hosts: rt.retry_ignore_previous_hosts,
    })
}

/// `percentage` wins over the deprecated integer `percent`; neither = never (Istio's default).
fn fault_pct(
    ctx: &mut Ctx<'_>,
    path: &FieldPath,
    pct: Option<&w::Percent>,
    percent: Option<i64>,
) -> Option<Option<f64>> {
    if let Some(p) = pct {
        let v = p.value.unwrap_or(0.0);
        return Some(Some(ctx.check(
            &path.key("percentage").key("value"),
            v::fault_percentage(v),
        )?));
    }
    if let Some(p) = percent {
        ctx.warn(
            &path.key("percent"),
            "percent is deprecated; use percentage.value",
        );
        if !(0..=100).contains(&p) {
            // istiod does not check it; Istio hands it to Envoy as an unsigned count of 100, so a value
            // above 100 (or a negative one, which wraps) injects into every request.
            ctx.warn(
                &path.key("percent"),
                format!("percent {p} is outside 0..100: the fault applies to every request (as in Istio)"),
            );
            return Some(Some(100.0));
        }
        return Some(Some(p as f64));
    }
    Some(None)
}

fn fault(ctx: &mut Ctx<'_>, path: &FieldPath, f: &w::HttpFaultInjection) -> Option<Fault> {
    if f.delay.is_none() && f.abort.is_none() {
        ctx.err(
            path,
            InvalidHttpRoute::Missing("fault.delay or fault.abort"),
        );
        return None;
    }
    let delay = 'delay: {
        let Some(d) = &f.delay else {
            break 'delay None;
        };
        {
            let dp = path.key("delay");
            if d.exponential_delay.is_some() {
                ctx.err(
                    &dp.key("exponentialDelay"),
                    Invalid::Unsupported("exponentialDelay (not supported by Istio either)".into()),
                );
                return None;
            }
            let percentage = fault_pct(ctx, &dp, d.percentage.as_ref(), d.percent)?;
            let Some(fixed) = &d.fixed_delay else {
                // istiod accepts it and drops the delay when building the route.
                ctx.warn(&dp, "delay has no fixedDelay: it is ignored (as by Istio)");
                break 'delay None;
            };
            let fixed_delay = ctx.check(&dp.key("fixedDelay"), v::duration_ms(fixed))?;
            if percentage.is_none() {
                ctx.warn(
                    &dp,
                    "delay has no percentage: it is never injected (set percentage.value)",
                );
            }
            Some(FaultDelay {
                fixed_delay,
                percentage,
            })
        }
    };
    let abort = match &f.abort {
        None => None,
        Some(a) => {
            let ap = path.key("abort");
            let set = [
                a.http_status.is_some(),
                a.grpc_status.is_some(),
                a.http2_error.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if set > 1 {
                ctx.err(
                    &ap,
                    InvalidHttpRoute::Conflict("httpStatus", "grpcStatus/http2Error"),
                );
                return None;
            }
            if a.http2_error.is_some() {
                ctx.err(
                    &ap.key("http2Error"),
                    Invalid::Unsupported("http2Error (not supported by Istio either)".into()),
                );
                return None;
            }
            let http_status = match a.http_status {
                None => None,
                Some(s) if (200..=599).contains(&s) => u16::try_from(s).ok(),
                Some(600) => {
                    ctx.err(
                        &ap.key("httpStatus"),
                        InvalidHttpRoute::Value(STATUS_600.into()),
                    );
                    return None;
                }
                Some(s) => {
                    ctx.err(
                        &ap.key("httpStatus"),
                        InvalidHttpRoute::Status {
                            value: s,
                            range: "200..599",
                        },
                    );
                    return None;
                }
            };
            if let Some(g) = &a.grpc_status {
                if !v::GRPC_STATUS.contains(&g.as_str()) {
                    ctx.err(
                        &ap.key("grpcStatus"),
                        InvalidHttpRoute::GrpcStatus(g.clone()),
                    );
                    return None;
                }
            }
            let percentage = fault_pct(ctx, &ap, a.percentage.as_ref(), None)?;
            if percentage.is_none() {
                ctx.warn(
                    &ap,
                    "abort has no percentage: it is never injected (set percentage.value)",
                );
            }
            if set == 0 {
                ctx.warn(
                    &ap,
                    "abort has no httpStatus or grpcStatus and does nothing",
                );
                None
            } else {
                Some(FaultAbort {
                    http_status,
                    grpc_status: a.grpc_status.clone(),
                    percentage,
                })
            }
        }
    };
    Some(Fault { delay, abort })
}

/// A mirror percentage in [0, 100].
fn mirror_pct(ctx: &mut Ctx<'_>, path: &FieldPath, v: f64) -> Option<f64> {
    if (0.0..=100.0).contains(&v) {
        Some(v)
    } else {
        ctx.err(
            path,
            InvalidHttpRoute::Percentage {
                value: v,
                range: "[0, 100]",
            },
        );
        None
    }
}

/// `mirror` + `mirrorPercentage` > `mirror_percent` > 100%, or `mirrors[]` with their own percentages. A
/// mirror whose percentage is exactly 0 is disabled and dropped.
fn mirrors(
    ctx: &mut Ctx<'_>,
    r: &mut RouteCtx<'_>,
    path: &FieldPath,
    route: &w::HttpRoute,
) -> Vec<Mirror> {
    let mut out = Vec::new();
    if route.mirror_percent.is_some() {
        ctx.warn(
            &path.key("mirrorPercent"),
            "mirror_percent is deprecated; use mirrorPercentage",
        );
    }
    if let Some(m) = &route.mirror {
        let dest = destination(ctx, r, &path.key("mirror"), Some(m));
        let pct = if let Some(p) = &route.mirror_percentage {
            mirror_pct(
                ctx,
                &path.key("mirrorPercentage").key("value"),
                p.value.unwrap_or(0.0),
            )
        } else if let Some(p) = route.mirror_percent {
            mirror_pct(ctx, &path.key("mirrorPercent"), p as f64)
        } else {
            Some(100.0)
        };
        if let (Some(destination), Some(percentage)) = (dest, pct) {
            if percentage > 0.0 {
                out.push(Mirror {
                    destination,
                    percentage,
                });
            }
        }
    } else if route.mirror_percentage.is_some() || route.mirror_percent.is_some() {
        ctx.warn(
            path,
            "mirrorPercentage/mirror_percent without mirror has no effect",
        );
    }
    for (i, m) in route.mirrors.iter().enumerate() {
        let mp = path.key("mirrors").index(i);
        let dest = destination(ctx, r, &mp.key("destination"), m.destination.as_ref());
        let pct = match &m.percentage {
            Some(p) => mirror_pct(
                ctx,
                &mp.key("percentage").key("value"),
                p.value.unwrap_or(0.0),
            ),
            None => Some(100.0),
        };
        if let (Some(destination), Some(percentage)) = (dest, pct) {
            if percentage > 0.0 {
                out.push(Mirror {
                    destination,
                    percentage,
                });
            }
        }
    }
    out
}

fn cors(ctx: &mut Ctx<'_>, path: &FieldPath, c: &w::CorsPolicy) -> Option<CorsPolicy> {
    let before = ctx.errors.len();
    let mut allow_origins = Vec::new();
    for (i, o) in c.allow_origins.iter().enumerate() {
        let op = path.key("allowOrigins").index(i);
        // istiod wants the one matcher set to be non-empty (an empty exact or prefix too).
        let value = o.exact.as_ref().or(o.prefix.as_ref()).or(o.regex.as_ref());
        if value.is_none_or(|v| v.is_empty()) {
            ctx.err(
                &op,
                InvalidHttpRoute::Value("an origin matcher must set exact, prefix or regex".into()),
            );
            continue;
        }
        if let Some(sm) = ctx.check(&op, v::string_match(o, MatchField::Other)) {
            allow_origins.push(sm);
        }
    }
    if !c.allow_origin.is_empty() {
        ctx.warn(
            &path.key("allowOrigin"),
            "allowOrigin is deprecated; use allowOrigins",
        );
        // The deprecated list only counts when the new one is absent.
        if c.allow_origins.is_empty() {
            allow_origins.extend(c.allow_origin.iter().map(|o| StringMatch::Exact(o.clone())));
        }
    }
    for (i, m) in c.allow_methods.iter().enumerate() {
        if !v::CORS_METHODS.contains(&m.as_str()) {
            ctx.err(
                &path.key("allowMethods").index(i),
                Invalid::Enum {
                    value: m.clone(),
                    allowed: "GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH",
                },
            );
        }
    }
    for (field, list) in [
        ("allowHeaders", &c.allow_headers),
        ("exposeHeaders", &c.expose_headers),
    ] {
        for (i, h) in list.iter().enumerate() {
            if h != "*" {
                ctx.check(&path.key(field).index(i), v::istio_header_name(h));
            }
        }
    }
    let max_age = match &c.max_age {
        None => None,
        Some(s) => match v::duration(s) {
            Ok(d) if d.subsec_nanos() != 0 => {
                ctx.err(&path.key("maxAge"), InvalidDuration::SubSecond(s.clone()));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                ctx.err(&path.key("maxAge"), e);
                None
            }
        },
    };
    let unmatched_preflights = match c.unmatched_preflights.as_deref() {
        None | Some("UNSPECIFIED") | Some("FORWARD") => UnmatchedPreflights::Forward,
        Some("IGNORE") => UnmatchedPreflights::Ignore,
        Some(other) => {
            ctx.err(
                &path.key("unmatchedPreflights"),
                Invalid::Enum {
                    value: other.to_string(),
                    allowed: "UNSPECIFIED, FORWARD, IGNORE",
                },
            );
            UnmatchedPreflights::Forward
        }
    };
    if ctx.errors.len() > before {
        return None;
    }
    Some(CorsPolicy {
        allow_origins,
        allow_methods: c.allow_methods.clone(),
        allow_headers: c.allow_headers.clone(),
        expose_headers: c.expose_headers.clone(),
        max_age,
        allow_credentials: c.allow_credentials,
        unmatched_preflights,
    })
}

/// A match block that matches every request for every client.
fn is_catch_all_match(m: &HttpMatch) -> bool {
    let uri_all = match &m.uri {
        None | Some(StringMatch::Present) => true,
        Some(StringMatch::Prefix(p)) => p.is_empty() || p == "/",
        Some(StringMatch::Regex(re)) => re.as_str() == "^(?:.*)$",
        Some(StringMatch::Exact(_)) => false,
    };
    uri_all
        && m.scheme.is_none()
        && m.method.is_none()
        && m.authority.is_none()
        && m.headers.is_empty()
        && m.without_headers.is_empty()
        && m.query_params.is_empty()
        && m.port.is_none()
        && m.source_labels.is_none()
        && m.source_namespace.is_none()
        && m.gateways.is_empty()
}

/// The only condition of `m` is a URI prefix: return it.
fn only_uri_prefix(m: &HttpMatch) -> Option<&str> {
    let plain = HttpMatch {
        uri: None,
        name: None,
        ..m.clone()
    };
    match &m.uri {
        Some(StringMatch::Prefix(p)) if is_catch_all_match(&plain) && !m.ignore_uri_case => Some(p),
        _ => None,
    }
}

/// Warns about rules that can never match: everything after a catch-all rule, and match blocks shadowed by
/// an earlier bare prefix match (`/api` before `/api/v2`).
fn unreachable_http_rules(ctx: &mut Ctx<'_>, spec_path: &FieldPath, http: &[HttpRoute]) {
    let mut catch_all: Option<usize> = None;
    let mut prefixes: Vec<(usize, String)> = Vec::new();
    for (i, route) in http.iter().enumerate() {
        let path = spec_path.key("http").index(i);
        if let Some(k) = catch_all {
            ctx.warn(
                &path,
                format!("this rule follows the catch-all rule spec.http[{k}] and can never match"),
            );
            continue;
        }
        for (j, m) in route.matches.iter().enumerate() {
            let shadow = match &m.uri {
                Some(StringMatch::Prefix(p)) | Some(StringMatch::Exact(p))
                    if !m.ignore_uri_case =>
                {
                    prefixes.iter().find(|(_, q)| p.starts_with(q.as_str()))
                }
                _ => None,
            };
            if let Some((k, q)) = shadow {
                ctx.warn(
                    &path.key("match").index(j),
                    format!("this match can never be reached: spec.http[{k}] already matches every URI starting with {q:?}"),
                );
            }
        }
        if route.matches.is_empty() || route.matches.iter().any(is_catch_all_match) {
            catch_all = Some(i);
        }
        for m in &route.matches {
            if let Some(p) = only_uri_prefix(m) {
                prefixes.push((i, p.to_string()));
            }
        }
    }
}
