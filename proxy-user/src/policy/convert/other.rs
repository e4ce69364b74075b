//! `ServiceEntry`, `Sidecar`, `Gateway` and Keel's `MeshConfig` -> model (§3 of the reference).
//!
//! Each accepted resource then gets an `accepted, not applied` warning for every field set that Keel's
//! data path does not read (the `*_not_applied` functions), saying what Keel does instead.

use std::collections::BTreeSet;

use super::fields::set_fields;
use super::Ctx;
use crate::policy::error::*;
use crate::policy::model::*;
use crate::policy::validate::{self as v, StarHost};
use crate::source::FieldPath;
use crate::wire::{istio as w, keel as wkeel};

/// Istio's port protocol names (case-insensitive) -> model protocol.
fn port_protocol(s: &str) -> Option<Protocol> {
    let p = Protocol::from_port(Some(s), None, 1);
    // `from_port` falls back to Auto for names it does not know; Auto is not a declarable protocol.
    (p != Protocol::Auto).then_some(p)
}

pub(super) fn service_entry(ctx: &mut Ctx<'_>, spec: &w::ServiceEntrySpec) -> Option<ServiceEntry> {
    let sp = FieldPath::root().key("spec");
    let ns = ctx.ns().to_string();
    if spec.hosts.is_empty() {
        ctx.err(&sp.key("hosts"), InvalidHost::Empty);
    }
    let mut hosts: Vec<String> = Vec::new();
    for (i, h) in spec.hosts.iter().enumerate() {
        let hp = sp.key("hosts").index(i);
        if ctx
            .check(
                &hp,
                v::wildcard_host(h, StarHost::Rejected(" in a ServiceEntry")),
            )
            .is_none()
        {
            continue;
        }
        let h = h.to_ascii_lowercase();
        if hosts.contains(&h) {
            ctx.err(&hp, InvalidHost::Duplicate(h));
            continue;
        }
        hosts.push(h);
    }
    let resolution = match spec.resolution.as_deref().unwrap_or("NONE") {
        "NONE" => Resolution::None,
        "STATIC" => Resolution::Static,
        "DNS" => Resolution::Dns,
        "DNS_ROUND_ROBIN" => Resolution::DnsRoundRobin,
        "DYNAMIC_DNS" => Resolution::DynamicDns,
        other => {
            ctx.err(
                &sp.key("resolution"),
                Invalid::Enum {
                    value: other.to_string(),
                    allowed: "NONE, STATIC, DNS, DNS_ROUND_ROBIN, DYNAMIC_DNS",
                },
            );
            return None;
        }
    };
    let location = match spec.location.as_deref().unwrap_or("MESH_EXTERNAL") {
        "MESH_EXTERNAL" => MeshLocation::MeshExternal,
        "MESH_INTERNAL" => MeshLocation::MeshInternal,
        other => {
            ctx.err(
                &sp.key("location"),
                Invalid::Enum {
                    value: other.to_string(),
                    allowed: "MESH_EXTERNAL, MESH_INTERNAL",
                },
            );
            return None;
        }
    };
    for (i, a) in spec.addresses.iter().enumerate() {
        let ap = sp.key("addresses").index(i);
        if v::cidr(a).is_err() {
            ctx.err(&ap, InvalidAddress::Cidr(a.clone()));
        } else if a.contains('/') && !matches!(resolution, Resolution::None | Resolution::Static) {
            ctx.err(
                &ap,
                Invalid::Other(format!(
                    "CIDR {a} is only allowed with resolution NONE or STATIC (list single IPs)"
                )),
            );
        }
    }

    let mut ports = Vec::new();
    let mut numbers = BTreeSet::new();
    let mut names = BTreeSet::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let pp = sp.key("ports").index(i);
        let Some(number) = p.number else {
            ctx.err(&pp.key("number"), InvalidPort::Missing);
            continue;
        };
        let Some(port) = ctx.check(&pp.key("number"), v::port(number)) else {
            continue;
        };
        if !numbers.insert(port) {
            ctx.err(&pp.key("number"), InvalidPort::Duplicate(number));
        }
        let name = match p.name.as_deref() {
            None | Some("") => {
                ctx.err(
                    &pp.key("name"),
                    InvalidPort::MissingName(" for ServiceEntry ports"),
                );
                continue;
            }
            Some(n) => n.to_string(),
        };
        if !names.insert(name.clone()) {
            ctx.err(&pp.key("name"), InvalidPort::DuplicateName(name.clone()));
        }
        let protocol = match p.protocol.as_deref() {
            None => Protocol::from_port(None, Some(&name), port),
            Some(s) => match port_protocol(s) {
                Some(p) => p,
                None => {
                    ctx.err(
                        &pp.key("protocol"),
                        Invalid::Enum {
                            value: s.to_string(),
                            allowed: "HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, MONGO, REDIS, MYSQL, TCP, TLS, UDP",
                        },
                    );
                    continue;
                }
            },
        };
        let target_port = match p.target_port {
            None | Some(0) => None,
            Some(t) => ctx.check(&pp.key("targetPort"), v::port(t)),
        };
        if resolution == Resolution::DynamicDns
            && !(protocol.is_http() || matches!(protocol, Protocol::Tls | Protocol::Https))
        {
            ctx.err(
                &pp.key("protocol"),
                Invalid::Other(
                    "DYNAMIC_DNS only supports HTTP, HTTP2, GRPC, HTTPS and TLS ports".into(),
                ),
            );
        }
        ports.push(ServiceEntryPort {
            number: port,
            name,
            protocol,
            target_port,
        });
    }

    if !spec.endpoints.is_empty() && spec.workload_selector.is_some() {
        ctx.err(
            &sp,
            InvalidHttpRoute::Conflict("endpoints", "workloadSelector"),
        );
    }
    match resolution {
        Resolution::None if !spec.endpoints.is_empty() || spec.workload_selector.is_some() => ctx.err(
            &sp.key("resolution"),
            Invalid::Other("resolution NONE forwards to the dialled address: endpoints and workloadSelector are not allowed".into()),
        ),
        Resolution::Dns | Resolution::DnsRoundRobin if spec.endpoints.is_empty() => {
            for (i, h) in hosts.iter().enumerate() {
                if h.starts_with('*') {
                    ctx.err(
                        &sp.key("hosts").index(i),
                        Invalid::Other("DNS resolution without endpoints resolves the hosts themselves: wildcards are not allowed".into()),
                    );
                }
            }
        }
        Resolution::DnsRoundRobin if spec.endpoints.len() > 1 => ctx.err(
            &sp.key("endpoints"),
            Invalid::Other("DNS_ROUND_ROBIN allows at most one endpoint".into()),
        ),
        Resolution::DynamicDns => {
            if !spec.endpoints.is_empty() || !spec.addresses.is_empty() || spec.workload_selector.is_some() {
                ctx.err(&sp, Invalid::Other("DYNAMIC_DNS cannot have addresses, endpoints or workloadSelector".into()));
            }
            for (i, h) in hosts.iter().enumerate() {
                if !h.starts_with("*.") {
                    ctx.err(&sp.key("hosts").index(i), Invalid::Other("DYNAMIC_DNS requires wildcard hosts".into()));
                }
            }
        }
        _ => {}
    }
    // Istio rejects this (§3.1): with plain TCP nothing (no Host header, no SNI) tells the hosts apart, and
    // unlike NONE the other resolutions do use the hosts. Addresses do not help: they are shared by all hosts.
    if resolution != Resolution::None && hosts.len() > 1 {
        if let Some(i) = ports.iter().position(|p| {
            !(p.protocol.is_http() || matches!(p.protocol, Protocol::Tls | Protocol::Https))
        }) {
            ctx.err(
                &sp.key("ports").index(i).key("protocol"),
                Invalid::Other(
                    "several hosts with a non-HTTP, non-TLS port: only resolution NONE allows that (nothing tells the hosts apart)".into(),
                ),
            );
        }
    }

    let mut endpoints = Vec::new();
    for (i, e) in spec.endpoints.iter().enumerate() {
        let ep = sp.key("endpoints").index(i);
        let address = e.address.clone().unwrap_or_default();
        if address.is_empty() {
            ctx.err(&ep.key("address"), InvalidAddress::Ip(address.clone()));
            continue;
        }
        let is_ip = address.parse::<std::net::IpAddr>().is_ok();
        let is_unix = address.starts_with("unix://");
        if resolution == Resolution::Static && !(is_ip || is_unix) {
            ctx.err(&ep.key("address"), InvalidAddress::Ip(address.clone()));
        } else if !(is_ip || is_unix)
            && ctx
                .check(
                    &ep.key("address"),
                    v::wildcard_host(&address, StarHost::Rejected(" as an endpoint address")),
                )
                .is_none()
        {
            continue;
        }
        let mut eports = std::collections::BTreeMap::new();
        for (name, num) in &e.ports {
            let pp = ep.key("ports").key(name.clone());
            if !names.contains(name) {
                ctx.err(
                    &pp,
                    Invalid::Other(format!(
                        "endpoint port {name:?} is not a declared port name"
                    )),
                );
                continue;
            }
            if let Some(p) = ctx.check(&pp, v::port(*num)) {
                eports.insert(name.clone(), p);
            }
        }
        ctx.check(&ep.key("labels"), v::labels(&e.labels));
        let weight = match e.weight {
            None => 0,
            Some(w) if (0..=i64::from(u32::MAX)).contains(&w) => u32::try_from(w).unwrap_or(0),
            Some(w) => {
                ctx.err(&ep.key("weight"), InvalidWeight::Negative(w));
                0
            }
        };
        endpoints.push(WorkloadEntry {
            address,
            ports: eports,
            labels: e.labels.clone(),
            weight,
            locality: e
                .locality
                .as_deref()
                .filter(|l| !l.is_empty())
                .map(Locality::parse),
        });
    }
    let workload_selector = spec.workload_selector.as_ref().map(|ws| {
        ctx.check(
            &sp.key("workloadSelector").key("labels"),
            v::labels(&ws.labels),
        );
        ws.labels.clone()
    });
    let export_to = ctx
        .check(
            &sp.key("exportTo"),
            v::export_to(&spec.export_to, &ns, v::ExportKind::Service),
        )
        .unwrap_or_default();
    if ctx.errors.is_empty() {
        service_entry_not_applied(ctx, spec, resolution, location);
    }
    Some(ServiceEntry {
        meta: ctx.meta.clone(),
        hosts,
        addresses: spec.addresses.clone(),
        ports,
        location,
        resolution,
        endpoints,
        workload_selector,
        export_to,
    })
}

/// The ServiceEntry fields Keel accepts and does not apply. (An entry without addresses is covered by a
/// cross-resource check: whether it is captured depends on the Services it shares hosts with.)
fn service_entry_not_applied(
    ctx: &mut Ctx<'_>,
    spec: &w::ServiceEntrySpec,
    resolution: Resolution,
    location: MeshLocation,
) {
    let sp = FieldPath::root().key("spec");
    for (i, a) in spec.addresses.iter().enumerate() {
        if service_entry_cidr(a).is_some() {
            // The kernel's meshed set is an exact (ip, port) map: a range cannot be published.
            ctx.not_applied(
                &sp.key("addresses").index(i),
                Some("Keel's kernel redirect matches exact addresses only, so a range captures nothing (list single IPs)"),
            );
        }
    }
    if location == MeshLocation::MeshInternal {
        ctx.not_applied(
            &sp.key("location"),
            Some("Keel treats MESH_INTERNAL entries like MESH_EXTERNAL ones"),
        );
    }
    match resolution {
        Resolution::DynamicDns => ctx.not_applied(
            &sp.key("resolution"),
            Some("Keel does not resolve hosts per request: traffic routed to these hosts fails (HTTP 503 NC)"),
        ),
        Resolution::Dns | Resolution::DnsRoundRobin if spec.workload_selector.is_some() => ctx
            .not_applied(
                &sp.key("workloadSelector"),
                Some("with DNS resolution Keel resolves names and selects no pods"),
            ),
        _ => {}
    }
    for (i, e) in spec.endpoints.iter().enumerate() {
        let ep = sp.key("endpoints").index(i);
        if e.address
            .as_deref()
            .is_some_and(|a| a.starts_with("unix://"))
        {
            ctx.not_applied(
                &ep.key("address"),
                Some("Keel does not connect to unix sockets; it sends nothing to this endpoint"),
            );
        }
        if e.weight.is_some() {
            ctx.not_applied(
                &ep.key("weight"),
                Some("Keel balances endpoints by least request, without weights"),
            );
        }
        if e.network.is_some() {
            ctx.not_applied(
                &ep.key("network"),
                Some("Keel treats all endpoints as one network"),
            );
        }
        if e.service_account.is_some() {
            ctx.not_applied(
                &ep.key("serviceAccount"),
                Some("Keel connects to upstreams in plaintext and checks no identity"),
            );
        }
    }
    if !spec.subject_alt_names.is_empty() {
        ctx.not_applied(
            &sp.key("subjectAltNames"),
            Some("Keel connects to upstreams in plaintext and checks no certificate"),
        );
    }
}

/// `namespace/dnsName` as used by Sidecar egress hosts and Gateway server hosts.
fn ns_host(ctx: &mut Ctx<'_>, path: &FieldPath, s: &str, sidecar: bool) {
    let (ns, host) = match s.split_once('/') {
        Some((n, h)) => (n, h),
        None if !sidecar => ("*", s),
        None => {
            ctx.err(
                path,
                Invalid::Other(format!(
                    "{s:?} must be namespace/dnsName (e.g. \"./*\", \"istio-system/*\")"
                )),
            );
            return;
        }
    };
    let ns_ok = match ns {
        "*" | "." | "~" => true,
        n => {
            let n = n.strip_prefix('~').unwrap_or(n);
            v::is_dns1123_label(n)
        }
    };
    if !ns_ok {
        ctx.err(path, InvalidName::Dns1123Label(ns.to_string()));
        return;
    }
    ctx.check(path, v::wildcard_host(host, StarHost::Allowed));
}

pub(super) fn sidecar(ctx: &mut Ctx<'_>, spec: &w::SidecarSpec) -> Option<Sidecar> {
    let sp = FieldPath::root().key("spec");
    let workload_selector = spec.workload_selector.as_ref().map(|ws| {
        ctx.check(
            &sp.key("workloadSelector").key("labels"),
            v::labels(&ws.labels),
        );
        ws.labels.clone()
    });
    if spec.egress.is_empty() {
        ctx.err(
            &sp.key("egress"),
            Invalid::Other("at least one egress listener is required".into()),
        );
    }
    let mut egress = Vec::new();
    for (i, e) in spec.egress.iter().enumerate() {
        let ep = sp.key("egress").index(i);
        if e.hosts.is_empty() {
            ctx.err(
                &ep.key("hosts"),
                Invalid::Other("an egress listener needs at least one host".into()),
            );
        }
        for (j, h) in e.hosts.iter().enumerate() {
            ns_host(ctx, &ep.key("hosts").index(j), h, true);
        }
        let port = match e.port.as_ref().and_then(|p| p.number) {
            None => None,
            Some(n) => ctx.check(&ep.key("port").key("number"), v::port(n)),
        };
        egress.push(SidecarEgress {
            port,
            hosts: e.hosts.clone(),
        });
    }
    let outbound_traffic_policy = match &spec.outbound_traffic_policy {
        None => None,
        Some(o) => {
            if o.egress_proxy.is_some() {
                ctx.err(
                    &sp.key("outboundTrafficPolicy").key("egressProxy"),
                    Invalid::Unsupported("outboundTrafficPolicy.egressProxy".into()),
                );
            }
            outbound_mode(
                ctx,
                &sp.key("outboundTrafficPolicy").key("mode"),
                o.mode.as_deref(),
                "REGISTRY_ONLY",
            )
        }
    };
    if ctx.errors.is_empty() {
        sidecar_not_applied(ctx, spec);
    }
    Some(Sidecar {
        meta: ctx.meta.clone(),
        workload_selector,
        egress,
        outbound_traffic_policy,
    })
}

/// The Sidecar fields Keel accepts and does not apply: Keel handles outbound traffic, scoped by the egress
/// listeners' hosts and ports, and captures it in the kernel rather than on listeners.
fn sidecar_not_applied(ctx: &mut Ctx<'_>, spec: &w::SidecarSpec) {
    const OUTBOUND_ONLY: &str = "Keel handles outbound traffic only";
    let sp = FieldPath::root().key("spec");
    if !spec.ingress.is_empty() {
        ctx.not_applied(&sp.key("ingress"), Some(OUTBOUND_ONLY));
    }
    if let Some(pool) = &spec.inbound_connection_pool {
        for (field, _) in set_fields(pool, &sp.key("inboundConnectionPool")) {
            ctx.not_applied(&field, Some(OUTBOUND_ONLY));
        }
    }
    for (i, e) in spec.egress.iter().enumerate() {
        let ep = sp.key("egress").index(i);
        if e.bind.is_some() {
            ctx.not_applied(
                &ep.key("bind"),
                Some("Keel's kernel redirect captures by destination, not on a listener address"),
            );
        }
        if e.capture_mode.is_some() {
            ctx.not_applied(
                &ep.key("captureMode"),
                Some("Keel's kernel redirect captures every connection to a meshed destination"),
            );
        }
        let Some(port) = &e.port else { continue };
        if port.protocol.is_some() {
            ctx.not_applied(
                &ep.key("port").key("protocol"),
                Some("Keel takes the protocol from the destination's port"),
            );
        }
        if port.target_port.is_some() {
            ctx.not_applied(
                &ep.key("port").key("targetPort"),
                Some("Keel forwards to the destination's endpoint port"),
            );
        }
    }
}

/// `ALLOW_ANY` / `REGISTRY_ONLY`; an absent mode means `default` (which differs between Sidecar's proto
/// enum, where 0 is REGISTRY_ONLY, and Keel's MeshConfig, where it is ALLOW_ANY).
fn outbound_mode(
    ctx: &mut Ctx<'_>,
    path: &FieldPath,
    mode: Option<&str>,
    default: &str,
) -> Option<OutboundTrafficPolicy> {
    match mode.unwrap_or(default) {
        "ALLOW_ANY" => Some(OutboundTrafficPolicy::AllowAny),
        "REGISTRY_ONLY" => Some(OutboundTrafficPolicy::RegistryOnly),
        other => {
            ctx.err(
                path,
                Invalid::Enum {
                    value: other.to_string(),
                    allowed: "ALLOW_ANY, REGISTRY_ONLY",
                },
            );
            None
        }
    }
}

pub(super) fn gateway(ctx: &mut Ctx<'_>, spec: &w::GatewaySpec) -> Option<Gateway> {
    let sp = FieldPath::root().key("spec");
    ctx.check(&sp.key("selector"), v::labels(&spec.selector));
    if spec.servers.is_empty() {
        ctx.err(
            &sp.key("servers"),
            Invalid::Other("at least one server is required".into()),
        );
    }
    let mut servers = Vec::new();
    for (i, s) in spec.servers.iter().enumerate() {
        let p = sp.key("servers").index(i);
        let Some(port) = &s.port else {
            ctx.err(&p.key("port"), InvalidPort::Missing);
            continue;
        };
        let Some(number) = port
            .number
            .and_then(|n| ctx.check(&p.key("port").key("number"), v::port(n)))
        else {
            if port.number.is_none() {
                ctx.err(&p.key("port").key("number"), InvalidPort::Missing);
            }
            continue;
        };
        let protocol = match port.protocol.as_deref() {
            None => {
                ctx.err(
                    &p.key("port").key("protocol"),
                    Invalid::Other("port.protocol is required".into()),
                );
                continue;
            }
            Some(s) => match port_protocol(s) {
                Some(p) => p,
                None => {
                    ctx.err(
                        &p.key("port").key("protocol"),
                        Invalid::Enum {
                            value: s.to_string(),
                            allowed: "HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, MONGO, TCP, TLS",
                        },
                    );
                    continue;
                }
            },
        };
        if s.hosts.is_empty() {
            ctx.err(&p.key("hosts"), InvalidHost::Empty);
        }
        for (j, h) in s.hosts.iter().enumerate() {
            ns_host(ctx, &p.key("hosts").index(j), h, false);
        }
        if let Some(tls) = &s.tls {
            if let Some(mode) = &tls.mode {
                if !matches!(
                    mode.as_str(),
                    "PASSTHROUGH"
                        | "SIMPLE"
                        | "MUTUAL"
                        | "AUTO_PASSTHROUGH"
                        | "ISTIO_MUTUAL"
                        | "OPTIONAL_MUTUAL"
                ) {
                    ctx.err(
                        &p.key("tls").key("mode"),
                        Invalid::Enum {
                            value: mode.clone(),
                            allowed: "PASSTHROUGH, SIMPLE, MUTUAL, AUTO_PASSTHROUGH, ISTIO_MUTUAL, OPTIONAL_MUTUAL",
                        },
                    );
                }
            }
        }
        servers.push(GatewayServer {
            port: number,
            name: port.name.clone(),
            protocol,
            hosts: s.hosts.clone(),
        });
    }
    if ctx.errors.is_empty() {
        // Gateways are kept only so VirtualService `gateways` references can be checked.
        if !spec.selector.is_empty() {
            ctx.not_applied(
                &sp.key("selector"),
                Some("Keel is not a gateway and configures no gateway pod"),
            );
        }
        ctx.not_applied(
            &sp.key("servers"),
            Some("Keel is not a gateway and opens no listener for these servers"),
        );
    }
    Some(Gateway {
        meta: ctx.meta.clone(),
        selector: spec.selector.clone(),
        servers,
    })
}

pub(super) fn mesh_config(ctx: &mut Ctx<'_>, spec: &wkeel::MeshConfigSpec) -> Option<MeshConfig> {
    let sp = FieldPath::root().key("spec");
    let mut mesh = MeshConfig::default();
    if let Some(o) = &spec.outbound_traffic_policy {
        if let Some(m) = outbound_mode(
            ctx,
            &sp.key("outboundTrafficPolicy").key("mode"),
            o.mode.as_deref(),
            "ALLOW_ANY",
        ) {
            mesh.outbound_traffic_policy = m;
        }
    }
    if let Some(t) = &spec.default_http_timeout {
        // "0s" means "no default timeout" (today's Istio); anything else must be a valid route timeout.
        match v::duration(t) {
            Ok(d) if d.is_zero() => mesh.default_http_timeout = None,
            _ => {
                mesh.default_http_timeout =
                    ctx.check(&sp.key("defaultHttpTimeout"), v::duration_ms(t))
            }
        }
    }
    if let Some(b) = spec.mirror_shadow_suffix {
        mesh.mirror_shadow_suffix = b;
    }
    if let Some(ns) = &spec.root_namespace {
        if ctx
            .check(&sp.key("rootNamespace"), v::dns1123_label(ns))
            .is_some()
        {
            mesh.root_namespace = ns.clone();
        }
    }
    if let Some(t) = &spec.protocol_detection_timeout {
        if let Some(d) = ctx.check(
            &sp.key("protocolDetectionTimeout"),
            v::duration_ms_or_zero(t),
        ) {
            mesh.protocol_detection_timeout = d;
        }
    }
    Some(mesh)
}
