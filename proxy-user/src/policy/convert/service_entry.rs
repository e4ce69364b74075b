//! `ServiceEntry` -> model (§3.1 of the reference); fields Keel accepts and does not apply get an
//! `accepted, not applied` warning saying what Keel does instead.

use std::collections::BTreeSet;

use super::Ctx;
use crate::policy::error::*;
use crate::policy::model::*;
use crate::policy::validate::{self as v, StarHost};
use crate::source::FieldPath;
use crate::wire::istio as w;

/// Istio's port protocol names (case-insensitive) -> model protocol.
pub(super) fn port_protocol(s: &str) -> Option<Protocol> {
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
