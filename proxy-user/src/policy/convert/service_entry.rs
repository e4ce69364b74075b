//! `ServiceEntry` -> model (§3.1 of the reference); fields Keel accepts and does not apply get an
//! `accepted, not applied` warning saying what Keel does instead.
//!
//! Validation follows what a cluster enforces, rule for rule (`config/testdata/rules/service-entry.md`):
//! first the CRD schema and its CEL rules, which test whether a field is *present* (so `endpoints: []`
//! counts as set), then istiod's webhook, whose host, address, port-name and label grammars are looser
//! than Kubernetes' own (upper case allowed, IPv6 zones allowed) and are therefore checked here, not with
//! the shared Kubernetes helpers.

use std::collections::{BTreeMap, BTreeSet};

use super::Ctx;
use crate::policy::error::*;
use crate::policy::model::*;
use crate::policy::validate as v;
use crate::source::FieldPath;
use crate::wire::istio as w;

/// CRD `maxItems` of `hosts`, `addresses` and `ports`.
const MAX_ITEMS: usize = 256;
/// CRD `maxItems` of `endpoints`.
const MAX_ENDPOINTS: usize = 4096;
/// CRD `maxProperties` of an endpoint's `ports`.
const MAX_ENDPOINT_PORTS: usize = 128;
/// CRD `maxProperties` of label maps (endpoint labels, `workloadSelector.labels`).
const MAX_LABELS: usize = 256;
/// The label istiod reads to skip IP auto-allocation for an entry.
const AUTOALLOCATE_LABEL: &str = "networking.istio.io/enable-autoallocate-ip";
/// The label that puts an entry behind an ambient waypoint.
const USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";

/// A port protocol as istiod parses it (`protocol.Parse`: case-insensitive, nothing else accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SeProtocol {
    /// Not written (or `""`): istiod sniffs.
    Unset,
    Http,
    HttpProxy,
    Http2,
    Grpc,
    GrpcWeb,
    Https,
    Tls,
    Tcp,
    Udp,
    Mongo,
    Redis,
    Mysql,
}

impl SeProtocol {
    fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "" => Self::Unset,
            "http" => Self::Http,
            "http_proxy" => Self::HttpProxy,
            "http2" => Self::Http2,
            "grpc" => Self::Grpc,
            "grpc-web" => Self::GrpcWeb,
            "https" => Self::Https,
            "tls" => Self::Tls,
            "tcp" => Self::Tcp,
            "udp" => Self::Udp,
            "mongo" => Self::Mongo,
            "redis" => Self::Redis,
            "mysql" => Self::Mysql,
            _ => return None,
        })
    }

    /// Hosts can be told apart on this port (Host header or SNI).
    fn names_hosts(self) -> bool {
        matches!(
            self,
            Self::Http
                | Self::HttpProxy
                | Self::Http2
                | Self::Grpc
                | Self::GrpcWeb
                | Self::Https
                | Self::Tls
        )
    }

    /// istiod's `IsTCP`.
    fn is_tcp(self) -> bool {
        matches!(
            self,
            Self::Tcp | Self::Https | Self::Tls | Self::Mongo | Self::Redis | Self::Mysql
        )
    }

    /// What Keel runs on the port; `None` = derive from the port name like an undeclared port.
    fn model(self) -> Option<Protocol> {
        Some(match self {
            Self::Unset => return None,
            Self::Http | Self::HttpProxy => Protocol::Http,
            Self::Http2 => Protocol::Http2,
            Self::Grpc => Protocol::Grpc,
            Self::GrpcWeb => Protocol::GrpcWeb,
            Self::Https => Protocol::Https,
            Self::Tls => Protocol::Tls,
            Self::Tcp => Protocol::Tcp,
            Self::Udp => Protocol::Udp,
            Self::Mongo => Protocol::Mongo,
            Self::Redis => Protocol::Redis,
            Self::Mysql => Protocol::Mysql,
        })
    }
}

pub(super) fn service_entry(
    ctx: &mut Ctx<'_>,
    labels: &BTreeMap<String, String>,
    spec: &w::ServiceEntrySpec,
) -> Option<ServiceEntry> {
    let sp = FieldPath::root().key("spec");
    let ns = ctx.ns().to_string();
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

    let hosts = check_hosts(ctx, &sp, spec, resolution);
    check_addresses(ctx, &sp, spec, resolution);
    let (ports, names, protocols) = check_ports(ctx, &sp, spec, resolution, labels);
    check_workload_selector(ctx, &sp, spec, resolution);
    let endpoints = check_endpoints(ctx, &sp, spec, resolution, &names);
    check_resolution(ctx, &sp, spec, resolution, location, labels, &protocols);

    let export_to = ctx
        .check(
            &sp.key("exportTo"),
            v::export_to(&spec.export_to, &ns, v::ExportKind::Service),
        )
        .unwrap_or_default();
    if ctx.errors.is_empty() {
        service_entry_not_applied(ctx, spec, resolution, location, &protocols);
    }
    Some(ServiceEntry {
        meta: ctx.meta.clone(),
        hosts,
        addresses: spec.addresses.clone(),
        ports,
        location,
        resolution,
        endpoints,
        workload_selector: spec.workload_selector.as_ref().map(|ws| ws.labels.clone()),
        export_to,
    })
}

/// `hosts`: at least one, at most 256, each a domain with an optional wildcard first label (never `*`
/// alone); duplicates are accepted (as by istiod) and listed once.
fn check_hosts(
    ctx: &mut Ctx<'_>,
    sp: &FieldPath,
    spec: &w::ServiceEntrySpec,
    resolution: Resolution,
) -> Vec<String> {
    if spec.hosts.is_empty() {
        ctx.err(&sp.key("hosts"), InvalidHost::Empty);
    }
    max_items(ctx, &sp.key("hosts"), spec.hosts.len(), MAX_ITEMS);
    let mut hosts: Vec<String> = Vec::new();
    for (i, h) in spec.hosts.iter().enumerate() {
        let hp = sp.key("hosts").index(i);
        if h == "*" {
            ctx.err(&hp, InvalidHost::Star(" in a ServiceEntry"));
            continue;
        }
        if let Err(e) = wildcard_domain(h) {
            ctx.err(&hp, Invalid::Other(e));
            continue;
        }
        // DYNAMIC_DNS matches hosts as suffixes anyway; elsewhere istiod warns and Envoy (like Keel)
        // matches `*foo.com` as the suffix `foo.com`.
        if resolution != Resolution::DynamicDns && h.contains('*') && !h.starts_with("*.") {
            ctx.warn(
                &hp,
                format!(
                    "partial wildcard host {h:?} (a wildcard should be a whole first label, \"*.example.com\"): \
                     it matches every name ending in {:?}",
                    h.strip_prefix('*').unwrap_or(h)
                ),
            );
        }
        let h = h.to_ascii_lowercase();
        if !hosts.contains(&h) {
            hosts.push(h);
        }
    }
    hosts
}

/// `addresses`: at most 256 of at most 64 characters, each an IP (IPv6 zone allowed) or a CIDR; CIDRs
/// only with resolution NONE or STATIC.
fn check_addresses(
    ctx: &mut Ctx<'_>,
    sp: &FieldPath,
    spec: &w::ServiceEntrySpec,
    resolution: Resolution,
) {
    let ap = sp.key("addresses");
    max_items(ctx, &ap, spec.addresses.len(), MAX_ITEMS);
    for (i, a) in spec.addresses.iter().enumerate() {
        if !max_length(ctx, &ap.index(i), a, 64) {
            continue;
        }
        if !ip_or_cidr(a) {
            ctx.err(&ap.index(i), InvalidAddress::Cidr(a.clone()));
        }
    }
    // One error for the entry, at the first CIDR (the CEL rule and the webhook test `contains("/")`).
    if !matches!(resolution, Resolution::None | Resolution::Static) {
        if let Some(i) = spec.addresses.iter().position(|a| a.contains('/')) {
            ctx.err(
                &ap.index(i),
                Invalid::Other(format!(
                    "CIDR {} is only allowed with resolution NONE or STATIC (list single IPs)",
                    spec.addresses[i]
                )),
            );
        }
    }
}

/// Ports with the protocol istiod parsed from each (same order as `spec.ports`, skipped ports included).
type Ports = (Vec<ServiceEntryPort>, BTreeSet<String>, Vec<SeProtocol>);

/// `ports`: at most 256; `name` required, a DNS label (any case), unique; `number` required, 1..65535,
/// unique; `protocol` one istiod parses; `targetPort`, when written, 1..65535.
fn check_ports(
    ctx: &mut Ctx<'_>,
    sp: &FieldPath,
    spec: &w::ServiceEntrySpec,
    resolution: Resolution,
    labels: &BTreeMap<String, String>,
) -> Ports {
    max_items(ctx, &sp.key("ports"), spec.ports.len(), MAX_ITEMS);
    // istiod assigns addresses itself unless resolution is NONE or the entry opts out by label.
    let auto_allocated = resolution != Resolution::None
        && !labels
            .get(AUTOALLOCATE_LABEL)
            .is_some_and(|v| v.eq_ignore_ascii_case("false"));
    let mut ports = Vec::new();
    let mut numbers = BTreeSet::new();
    let mut names = BTreeSet::new();
    let mut protocols = Vec::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let pp = sp.key("ports").index(i);
        let written = p.protocol.as_deref().unwrap_or("");
        let declared = SeProtocol::parse(written);
        protocols.push(declared.unwrap_or(SeProtocol::Unset));
        if declared.is_none() {
            ctx.err(
                &pp.key("protocol"),
                Invalid::Enum {
                    value: written.to_string(),
                    allowed: "HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, HTTP_PROXY, MONGO, REDIS, MYSQL, TCP, TLS, UDP",
                },
            );
        }
        // Exactly "TCP" or unset: istiod compares the text, not the parsed protocol.
        if spec.addresses.is_empty() && !auto_allocated && (written.is_empty() || written == "TCP")
        {
            ctx.warn(
                &pp,
                "addresses are required for ports serving TCP (or unset) protocol when IP auto-allocation is not enabled \
                 (resolution NONE, or label networking.istio.io/enable-autoallocate-ip: \"false\")",
            );
        }
        let name = match p.name.as_deref() {
            None => {
                ctx.err(
                    &pp.key("name"),
                    InvalidPort::MissingName(" for ServiceEntry ports"),
                );
                None
            }
            Some(n) => {
                if !is_port_name(n) {
                    ctx.err(&pp.key("name"), port_name_error(n));
                } else if !names.insert(n.to_string()) {
                    ctx.err(&pp.key("name"), InvalidPort::DuplicateName(n.to_string()));
                }
                Some(n.to_string())
            }
        };
        let number = match p.number {
            None => {
                ctx.err(&pp.key("number"), InvalidPort::Missing);
                None
            }
            Some(n) => {
                let port = ctx.check(&pp.key("number"), v::port(n));
                if port.is_some_and(|port| !numbers.insert(port)) {
                    ctx.err(&pp.key("number"), InvalidPort::Duplicate(n));
                }
                port
            }
        };
        // The CRD's CEL rule rejects a written 0, although the webhook reads 0 as unset.
        let target_port = match p.target_port {
            None => None,
            Some(t) => ctx.check(&pp.key("targetPort"), v::port(t)),
        };
        let (Some(name), Some(number), Some(declared)) = (name, number, declared) else {
            continue;
        };
        let protocol = declared
            .model()
            .unwrap_or_else(|| Protocol::from_port(None, Some(&name), number));
        ports.push(ServiceEntryPort {
            number,
            name,
            protocol,
            target_port,
        });
    }
    (ports, names, protocols)
}

/// `workloadSelector`: keys non-empty, no `*` in keys or values, values at most 63 characters; no labels
/// at all selects every workload in the namespace (istiod warns).
fn check_workload_selector(
    ctx: &mut Ctx<'_>,
    sp: &FieldPath,
    spec: &w::ServiceEntrySpec,
    resolution: Resolution,
) {
    let Some(ws) = &spec.workload_selector else {
        return;
    };
    let wp = sp.key("workloadSelector");
    if ws.labels.is_empty() {
        ctx.warn(
            &wp,
            "workload selector specified without labels: it selects every workload in the namespace",
        );
    }
    max_properties(ctx, &wp.key("labels"), ws.labels.len(), MAX_LABELS);
    for (k, val) in &ws.labels {
        let lp = wp.key("labels").key(k.clone());
        if k.is_empty() {
            ctx.err(
                &lp,
                Invalid::Other("empty key is not supported in selector".into()),
            );
        } else if k.contains('*') || val.contains('*') {
            ctx.err(
                &lp,
                Invalid::Other(format!(
                    "wildcard is not supported in selector: \"{k}={val}\""
                )),
            );
        } else {
            max_length(ctx, &lp, val, 63);
        }
    }
    if spec.endpoints.is_some() {
        ctx.err(
            sp,
            InvalidHttpRoute::Conflict("endpoints", "workloadSelector"),
        );
    }
    if resolution == Resolution::None {
        ctx.warn(
            &wp,
            "workloadSelector should not be set when resolution is NONE: connections go to the dialled address",
        );
    }
}

/// `endpoints`: the CRD's rules for every resolution, then istiod's per resolution (IPs for STATIC,
/// IPs or FQDNs for DNS and DNS_ROUND_ROBIN).
fn check_endpoints(
    ctx: &mut Ctx<'_>,
    sp: &FieldPath,
    spec: &w::ServiceEntrySpec,
    resolution: Resolution,
    names: &BTreeSet<String>,
) -> Vec<WorkloadEntry> {
    let Some(list) = &spec.endpoints else {
        return Vec::new();
    };
    let lp = sp.key("endpoints");
    max_items(ctx, &lp, list.len(), MAX_ENDPOINTS);
    match resolution {
        Resolution::None => ctx.err(
            &sp.key("resolution"),
            Invalid::Other("resolution NONE forwards to the dialled address: endpoints are not allowed (even an empty list)".into()),
        ),
        Resolution::DnsRoundRobin if list.len() > 1 => ctx.err(
            &lp,
            Invalid::Other("DNS_ROUND_ROBIN allows at most one endpoint".into()),
        ),
        Resolution::DynamicDns if !list.is_empty() => ctx.err(
            &lp,
            Invalid::Other("endpoints cannot be set with resolution DYNAMIC_DNS: the destination is resolved from the request's host".into()),
        ),
        _ => {}
    }
    // Which of istiod's endpoint checks run: per resolution.
    let istiod = matches!(
        resolution,
        Resolution::Static | Resolution::Dns | Resolution::DnsRoundRobin
    );
    let mut endpoints = Vec::new();
    for (i, e) in list.iter().enumerate() {
        let ep = lp.index(i);
        let before = ctx.errors.len();
        let address = e.address.clone().unwrap_or_default();
        let unix = address.strip_prefix("unix://");
        // CRD schema and CEL rules.
        let missing = e.address.is_none() && e.network.is_none();
        if missing {
            ctx.err(
                &ep.key("address"),
                Invalid::Other("address is required (or network)".into()),
            );
        }
        if max_length(ctx, &ep.key("address"), &address, 256) {
            if let Some(path) = unix {
                if !(path.starts_with('/') || path.starts_with('@')) {
                    ctx.err(
                        &ep.key("address"),
                        Invalid::Other(format!("unix socket {address:?} must be an absolute path or an abstract socket (@name)")),
                    );
                } else if address.ends_with('/') {
                    ctx.err(
                        &ep.key("address"),
                        Invalid::Other(format!("unix socket {address:?} may not be a directory")),
                    );
                }
                if e.ports.is_some() {
                    ctx.err(
                        &ep.key("ports"),
                        Invalid::Other("a unix socket endpoint may not have ports".into()),
                    );
                }
            }
        }
        for (field, value, max) in [
            ("locality", &e.locality, 2048),
            ("network", &e.network, 2048),
            ("serviceAccount", &e.service_account, 253),
        ] {
            if let Some(value) = value {
                max_length(ctx, &ep.key(field), value, max);
            }
        }
        let mut eports = BTreeMap::new();
        if let Some(ports) = &e.ports {
            max_properties(ctx, &ep.key("ports"), ports.len(), MAX_ENDPOINT_PORTS);
            for (name, num) in ports {
                let pp = ep.key("ports").key(name.clone());
                // The CEL rule wants fewer than 63 characters, one less than the port's own name allows.
                if !(name.len() < 63 && is_port_name(name)) {
                    ctx.err(&pp, port_name_error(name));
                } else if istiod && !names.contains(name) {
                    ctx.err(
                        &pp,
                        Invalid::Other(format!(
                            "endpoint port {name:?} is not a declared port name"
                        )),
                    );
                }
                if let Some(p) = ctx.check(&pp, v::port(*num)) {
                    eports.insert(name.clone(), p);
                }
            }
        }
        max_properties(ctx, &ep.key("labels"), e.labels.len(), MAX_LABELS);
        let weight = match e.weight {
            None => 0,
            Some(w) if w < 0 => {
                ctx.err(&ep.key("weight"), InvalidWeight::Negative(w));
                0
            }
            Some(w) => match u32::try_from(w) {
                Ok(w) => w,
                Err(_) => {
                    ctx.err(&ep.key("weight"), InvalidWeight::TooLarge(w));
                    0
                }
            },
        };
        // istiod's webhook.
        if istiod {
            if let Err(e) = istio_labels(&e.labels) {
                ctx.err(&ep.key("labels"), Invalid::Other(e));
            }
        }
        match resolution {
            _ if missing => {}
            Resolution::Static => {
                if address.is_empty() {
                    match e.network.as_deref().filter(|n| !n.is_empty()) {
                        Some(n) => ctx.warn(
                            &ep.key("address"),
                            format!("address is unset with network {n:?}: Keel sends nothing to this endpoint"),
                        ),
                        None => ctx.err(&ep.key("address"), Invalid::Other("address is required".into())),
                    }
                } else if unix.is_some() {
                    if names.len() != 1 {
                        ctx.err(
                            &ep.key("address"),
                            Invalid::Other(format!(
                                "a unix socket endpoint needs exactly 1 service port ({} declared)",
                                names.len()
                            )),
                        );
                    }
                } else if !v::is_go_ip(&address) {
                    ctx.err(&ep.key("address"), InvalidAddress::Ip(address.clone()));
                }
            }
            Resolution::Dns | Resolution::DnsRoundRobin if !v::is_go_ip(&address) => {
                if let Err(why) = fqdn(&address) {
                    ctx.err(
                        &ep.key("address"),
                        Invalid::Other(format!(
                            "endpoint address {address:?} is not a valid FQDN or IP address: {why}"
                        )),
                    );
                }
            }
            _ => {}
        }
        if ctx.errors.len() > before {
            continue;
        }
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
    endpoints
}

/// The combinations istiod checks per resolution (endpoints and CIDRs are checked with them above),
/// then several hosts with ports that cannot tell them apart.
fn check_resolution(
    ctx: &mut Ctx<'_>,
    sp: &FieldPath,
    spec: &w::ServiceEntrySpec,
    resolution: Resolution,
    location: MeshLocation,
    labels: &BTreeMap<String, String>,
    protocols: &[SeProtocol],
) {
    let no_endpoints = spec.endpoints.as_ref().is_none_or(Vec::is_empty);
    match resolution {
        Resolution::Dns | Resolution::DnsRoundRobin => {
            // Without endpoints the hosts themselves are resolved: one error, at the first host.
            if no_endpoints {
                if let Some((i, why)) = spec
                    .hosts
                    .iter()
                    .enumerate()
                    .find_map(|(i, h)| fqdn(h).err().map(|why| (i, why)))
                {
                    ctx.err(
                        &sp.key("hosts").index(i),
                        Invalid::Other(format!("hosts must be FQDNs when resolution {} has no endpoints (it resolves the hosts themselves; no wildcards): {why}", resolution_name(resolution))),
                    );
                }
            }
            // Only a warning: the error below covers plain TCP, this catches TLS and HTTPS too.
            if !spec.addresses.is_empty() && spec.hosts.len() > 1 {
                if let Some(i) = protocols.iter().position(|p| p.is_tcp()) {
                    ctx.warn(
                        &sp.key("ports").index(i),
                        "a service entry should not have more than one host together with addresses and a TCP port (TCP, TLS, HTTPS, MONGO, REDIS, MYSQL)",
                    );
                }
            }
        }
        Resolution::DynamicDns => {
            for (i, h) in spec.hosts.iter().enumerate() {
                if !h.starts_with('*') {
                    ctx.err(
                        &sp.key("hosts").index(i),
                        Invalid::Other("DYNAMIC_DNS requires wildcard hosts".into()),
                    );
                }
            }
            if !spec.addresses.is_empty() {
                ctx.err(
                    &sp.key("addresses"),
                    Invalid::Other("addresses cannot be set with resolution DYNAMIC_DNS: routes are made from the hosts only".into()),
                );
            }
            for (i, p) in protocols.iter().enumerate() {
                if !matches!(
                    p,
                    SeProtocol::Http | SeProtocol::Tls | SeProtocol::Grpc | SeProtocol::Http2
                ) {
                    ctx.err(
                        &sp.key("ports").index(i).key("protocol"),
                        Invalid::Other(
                            "DYNAMIC_DNS only supports HTTP, TLS, GRPC and HTTP2 ports".into(),
                        ),
                    );
                }
            }
            if location == MeshLocation::MeshInternal
                && labels
                    .get(USE_WAYPOINT_LABEL)
                    .is_some_and(|w| !w.is_empty() && !w.eq_ignore_ascii_case("none"))
            {
                ctx.err(
                    &sp.key("location"),
                    Invalid::Other("location MESH_INTERNAL with resolution DYNAMIC_DNS is not supported when using a waypoint (label istio.io/use-waypoint)".into()),
                );
            }
        }
        _ => {}
    }
    // Plain TCP cannot tell several hosts apart (no Host header, no SNI); with NONE the hosts are not
    // used for forwarding. istiod counts hosts as written and reads the protocol as written (unset
    // counts as not HTTP).
    if resolution != Resolution::None && spec.hosts.len() > 1 {
        if let Some(i) = protocols.iter().position(|p| !p.names_hosts()) {
            ctx.err(
                &sp.key("ports").index(i).key("protocol"),
                Invalid::Other(
                    "several hosts with a non-HTTP, non-TLS port: only resolution NONE allows that (nothing tells the hosts apart)".into(),
                ),
            );
        }
    }
}

fn resolution_name(r: Resolution) -> &'static str {
    match r {
        Resolution::None => "NONE",
        Resolution::Static => "STATIC",
        Resolution::Dns => "DNS",
        Resolution::DnsRoundRobin => "DNS_ROUND_ROBIN",
        Resolution::DynamicDns => "DYNAMIC_DNS",
    }
}

/// The ServiceEntry fields Keel accepts and does not apply. (An entry without addresses is covered by a
/// cross-resource check: whether it is captured depends on the Services it shares hosts with.)
fn service_entry_not_applied(
    ctx: &mut Ctx<'_>,
    spec: &w::ServiceEntrySpec,
    resolution: Resolution,
    location: MeshLocation,
    protocols: &[SeProtocol],
) {
    let sp = FieldPath::root().key("spec");
    for (i, a) in spec.addresses.iter().enumerate() {
        if a.contains('%') {
            ctx.not_applied(
                &sp.key("addresses").index(i),
                Some("Keel's kernel redirect matches addresses without an IPv6 zone, so this captures nothing"),
            );
        } else if service_entry_cidr(a).is_some() {
            // The kernel's meshed set is an exact (ip, port) map: a range cannot be published.
            ctx.not_applied(
                &sp.key("addresses").index(i),
                Some("Keel's kernel redirect matches exact addresses only, so a range captures nothing (list single IPs)"),
            );
        }
    }
    for (i, p) in protocols.iter().enumerate() {
        if *p == SeProtocol::HttpProxy {
            ctx.not_applied(
                &sp.key("ports").index(i).key("protocol"),
                Some("Keel serves HTTP_PROXY ports as plain HTTP (no CONNECT proxy)"),
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
    for (i, e) in spec.endpoints.iter().flatten().enumerate() {
        let ep = sp.key("endpoints").index(i);
        if e.address
            .as_deref()
            .is_some_and(|a| a.starts_with("unix://"))
        {
            ctx.not_applied(
                &ep.key("address"),
                Some("Keel does not connect to unix sockets; it sends nothing to this endpoint"),
            );
        } else if resolution == Resolution::Static
            && e.address.as_deref().is_some_and(|a| a.contains('%'))
        {
            ctx.not_applied(
                &ep.key("address"),
                Some("Keel does not connect to addresses with an IPv6 zone; it sends nothing to this endpoint"),
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

// ---------------------------------------------------------------------------------------------------------
// Grammars as istiod and the CRD check them.

/// CRD `maxItems`; reports and returns false when exceeded.
fn max_items(ctx: &mut Ctx<'_>, path: &FieldPath, len: usize, max: usize) -> bool {
    if len > max {
        ctx.err(
            path,
            Invalid::Other(format!("{len} items, at most {max} allowed")),
        );
        return false;
    }
    true
}

/// CRD `maxProperties`; reports and returns false when exceeded.
fn max_properties(ctx: &mut Ctx<'_>, path: &FieldPath, len: usize, max: usize) -> bool {
    if len > max {
        ctx.err(
            path,
            Invalid::Other(format!("{len} entries, at most {max} allowed")),
        );
        return false;
    }
    true
}

/// CRD `maxLength` (in characters); reports and returns false when exceeded.
fn max_length(ctx: &mut Ctx<'_>, path: &FieldPath, value: &str, max: usize) -> bool {
    let len = value.chars().count();
    if len > max {
        ctx.err(
            path,
            Invalid::Other(format!("{len} characters long, at most {max} allowed")),
        );
        return false;
    }
    true
}

/// A port name (service port or endpoint port key).
fn is_port_name(s: &str) -> bool {
    v::is_istio_dns1123_label(s)
}

fn port_name_error(name: &str) -> Invalid {
    Invalid::Other(format!(
        "invalid port name {name:?}: letters, digits and '-', starting and ending with a letter or digit, at most 63 characters (62 as an endpoint port key)"
    ))
}

/// Dot-separated labels; the last may be empty (`example.com.`) and may not be all digits (istiod's
/// `ValidateDNS1123Labels`).
fn dns_labels(domain: &str) -> Result<(), String> {
    let parts: Vec<&str> = domain.split('.').collect();
    let tld = parts.last().copied().unwrap_or_default();
    if tld.parse::<i64>().is_ok() {
        return Err(format!("top-level domain {tld:?} cannot be all-numeric"));
    }
    for (i, label) in parts.iter().enumerate() {
        if i == parts.len() - 1 && label.is_empty() {
            return Ok(());
        }
        if !v::is_istio_dns1123_label(label) {
            return Err(format!("label {label:?} is not a valid DNS label"));
        }
    }
    Ok(())
}

fn domain_length(domain: &str) -> Result<(), String> {
    if domain.is_empty() {
        return Err("an empty domain name is not allowed".into());
    }
    if domain.len() > 255 {
        return Err(format!(
            "{} characters long (at most 255 allowed)",
            domain.len()
        ));
    }
    Ok(())
}

/// A fully-qualified domain name, no wildcards (istiod's `ValidateFQDN`).
fn fqdn(domain: &str) -> Result<(), String> {
    domain_length(domain)?;
    dns_labels(domain)
}

/// A domain whose first label may be a wildcard (istiod's `ValidateWildcardDomain`); IP addresses fail
/// (their last label is all digits).
fn wildcard_domain(domain: &str) -> Result<(), String> {
    let why = |e: String| format!("invalid host {domain:?}: {e}");
    domain_length(domain).map_err(why)?;
    let (first, rest) = match domain.split_once('.') {
        Some((f, r)) => (f, Some(r)),
        None => (domain, None),
    };
    if !v::is_istio_wildcard_label(first) {
        return Err(why(format!(
            "label {first:?} is not a valid DNS label (a wildcard may only start the first label: \"*.example.com\")"
        )));
    }
    match rest {
        Some(rest) => dns_labels(rest).map_err(why),
        None => Ok(()),
    }
}

/// A CIDR as Go's `netip.ParsePrefix` reads it: no zone, decimal prefix length without a sign or
/// leading zero, within the address size (host bits may be set).
fn go_prefix(s: &str) -> bool {
    let Some((ip, bits)) = s.rsplit_once('/') else {
        return false;
    };
    let Ok(ip) = ip.parse::<std::net::IpAddr>() else {
        return false;
    };
    if bits.is_empty()
        || !bits.bytes().all(|b| b.is_ascii_digit())
        || (bits.len() > 1 && bits.starts_with('0'))
    {
        return false;
    }
    let max = if ip.is_ipv4() { 32 } else { 128 };
    bits.parse::<u32>().is_ok_and(|n| n <= max)
}

/// istiod's `ValidateIPSubnet`: one `/` means a CIDR, anything else must be an address.
fn ip_or_cidr(s: &str) -> bool {
    if s.matches('/').count() == 1 {
        go_prefix(s)
    } else {
        v::is_go_ip(s)
    }
}

/// Labels as istiod checks them (`labels.Instance.Validate`): keys are an optional DNS-subdomain prefix
/// (any case, at most 253 characters) and `/`, then a name of at most 63 `[A-Za-z0-9._-]` with
/// alphanumeric ends; values are empty or such a name, of any length.
fn istio_labels(map: &BTreeMap<String, String>) -> Result<(), String> {
    fn is_name(s: &str) -> bool {
        let b = s.as_bytes();
        !b.is_empty()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
    }
    for (k, val) in map {
        let (prefix, name) = match k.split_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, k.as_str()),
        };
        let prefix_ok = prefix.is_none_or(|p| {
            p.len() <= 253
                && p.split('.').all(|l| {
                    let b = l.as_bytes();
                    !b.is_empty()
                        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                        && b[0] != b'-'
                        && b[b.len() - 1] != b'-'
                })
        });
        if !(prefix_ok && is_name(name) && name.len() <= 63) {
            return Err(format!("invalid label key {k:?}"));
        }
        if !(val.is_empty() || is_name(val)) {
            return Err(format!("invalid label value {val:?} for key {k:?}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_follow_istiods_wildcard_domain_grammar() {
        for ok in [
            "example.com",
            "Upper.Example.COM.",
            "legacy",
            "123",
            "*",
            "*.",
            "*.example.com",
            "*api.example.com",
            "*-api.example.com",
            "x.99999999999999999999",
        ] {
            assert!(wildcard_domain(ok).is_ok(), "{ok} should be accepted");
        }
        for bad in [
            "",
            "api*.example.com",
            "*.*.example.com",
            "**.example.com",
            "*--api.example.com",
            "10.0.0.1",
            "example.123",
            "a..b",
            "-a.example.com",
            "2001:db8::1",
        ] {
            assert!(wildcard_domain(bad).is_err(), "{bad} should be rejected");
        }
        let long = format!("ab.{}com", "a.".repeat(125));
        assert_eq!(long.len(), 256);
        assert!(wildcard_domain(&long).is_err());
        assert!(wildcard_domain(&long[1..]).is_ok());
    }

    #[test]
    fn fqdns_have_no_wildcards() {
        assert!(fqdn("mirror.example.net.").is_ok());
        assert!(fqdn("*.example.net").is_err());
        assert!(fqdn("").is_err());
        assert!(fqdn("unix:///var/run/a.sock").is_err());
    }

    #[test]
    fn addresses_read_like_go_netip() {
        for ok in [
            "10.0.0.1",
            "::ffff:10.0.0.2",
            "fe80::1%eth0",
            "fe80::1%a/b/c",
            "10.1.2.3/24",
            "0.0.0.0/0",
            "::/0",
            "2001:db8::/128",
        ] {
            assert!(ip_or_cidr(ok), "{ok} should be accepted");
        }
        for bad in [
            "10.0.0.300",
            "010.0.0.1",
            "10.0.0.1%eth0",
            "fe80::1%",
            "fe80::1%eth0/64",
            "10.0.0.0/33",
            "10.0.0.0/08",
            "10.0.0.0/+8",
            "10.0.0.0/",
            "::/129",
            "",
        ] {
            assert!(!ip_or_cidr(bad), "{bad} should be rejected");
        }
    }

    #[test]
    fn labels_follow_istio_not_kubernetes() {
        let map = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert!(istio_labels(&map("Example.COM/Tier", &"v".repeat(100))).is_ok());
        assert!(istio_labels(&map("app", "")).is_ok());
        assert!(istio_labels(&map("-app", "x")).is_err());
        assert!(istio_labels(&map(&"k".repeat(64), "x")).is_err());
        assert!(istio_labels(&map("a/b/c", "x")).is_err());
        assert!(istio_labels(&map("app", "-x")).is_err());
    }

    #[test]
    fn protocols_parse_like_istiod() {
        assert_eq!(SeProtocol::parse("http_proxy"), Some(SeProtocol::HttpProxy));
        assert_eq!(SeProtocol::parse("GRPC-Web"), Some(SeProtocol::GrpcWeb));
        assert_eq!(SeProtocol::parse(""), Some(SeProtocol::Unset));
        assert_eq!(SeProtocol::parse("kubernetes.io/h2c"), None);
        assert_eq!(SeProtocol::parse("HBONE"), None);
        assert!(!SeProtocol::Unset.names_hosts());
        assert!(SeProtocol::Https.is_tcp() && SeProtocol::Https.names_hosts());
    }
}
