//! Kubernetes `Service`, `Pod` and `Node` -> model.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::Ctx;
use crate::policy::error::*;
use crate::policy::model::*;
use crate::policy::validate as v;
use crate::source::FieldPath;
use crate::wire::k8s as wk;

/// Annotation that opts a pod out of Keel's redirect (`"false"`).
pub const CAPTURE_ANNOTATION: &str = "keel.io/capture";

/// Annotation Istio's sidecar injector sets on every pod it injected.
pub const SIDECAR_STATUS_ANNOTATION: &str = "sidecar.istio.io/status";

/// Name of Istio's sidecar container (an init container in native-sidecar mode).
pub const SIDECAR_CONTAINER: &str = "istio-proxy";

pub(super) fn service(ctx: &mut Ctx<'_>, svc: &wk::Service) -> Option<Service> {
    let spec_path = FieldPath::root().key("spec");
    let spec = &svc.spec;
    let labels_path = FieldPath::root().key("metadata").key("labels");
    ctx.check(&labels_path, v::labels(&svc.metadata.labels));

    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    match type_ {
        "ClusterIP" | "NodePort" | "LoadBalancer" => {}
        "ExternalName" => ctx.warn(
            &spec_path.key("type"),
            "ExternalName services are known by host, but Keel cannot forward to an external name yet",
        ),
        other => ctx.err(
            &spec_path.key("type"),
            Invalid::Enum {
                value: other.to_string(),
                allowed: "ClusterIP, NodePort, LoadBalancer, ExternalName",
            },
        ),
    }

    // clusterIP and clusterIPs: "None" (headless) and "" mean no VIP.
    let mut cluster_ips: Vec<IpAddr> = Vec::new();
    let mut add_ip = |ctx: &mut Ctx<'_>, path: &FieldPath, s: &str| {
        if s.is_empty() || s == "None" {
            return;
        }
        if let Some(ip) = ctx.check(path, v::ip(s)) {
            if !cluster_ips.contains(&ip) {
                cluster_ips.push(ip);
            }
        }
    };
    if let Some(ip) = &spec.cluster_ip {
        add_ip(ctx, &spec_path.key("clusterIP"), ip);
    }
    for (i, ip) in spec.cluster_ips.iter().enumerate() {
        add_ip(ctx, &spec_path.key("clusterIPs").index(i), ip);
    }
    let ip_families = ip_families(ctx, &spec_path, spec, &cluster_ips);

    let mut ports = Vec::new();
    let mut seen_ports = BTreeSet::new();
    let mut seen_names = BTreeSet::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let path = spec_path.key("ports").index(i);
        let Some(port) = ctx.check(&path.key("port"), v::port(p.port)) else {
            continue;
        };
        let l4 = p.protocol.as_deref().unwrap_or("TCP");
        if !matches!(l4, "TCP" | "UDP" | "SCTP") {
            ctx.err(
                &path.key("protocol"),
                Invalid::Enum {
                    value: l4.to_string(),
                    allowed: "TCP, UDP, SCTP",
                },
            );
            continue;
        }
        if !seen_ports.insert((port, l4)) {
            ctx.err(&path.key("port"), InvalidPort::Duplicate(p.port));
        }
        match &p.name {
            Some(name) => {
                ctx.check(&path.key("name"), v::dns1123_label(name));
                if !seen_names.insert(name.clone()) {
                    ctx.err(&path.key("name"), InvalidPort::DuplicateName(name.clone()));
                }
            }
            // Kubernetes requires names as soon as a Service has more than one port.
            None if spec.ports.len() > 1 => ctx.err(
                &path.key("name"),
                InvalidPort::MissingName(" when a Service has several ports"),
            ),
            None => {}
        }
        let target_port = match &p.target_port {
            None => TargetPort::Number(port),
            Some(wk::IntOrString::Int(n)) => {
                match ctx.check(&path.key("targetPort"), v::port(*n)) {
                    Some(t) => TargetPort::Number(t),
                    None => continue,
                }
            }
            Some(wk::IntOrString::String(s)) => match s.parse::<i64>() {
                // A quoted number is still a number for Kubernetes.
                Ok(n) => match ctx.check(&path.key("targetPort"), v::port(n)) {
                    Some(t) => TargetPort::Number(t),
                    None => continue,
                },
                Err(_) => {
                    if ctx
                        .check(&path.key("targetPort"), v::dns1123_label(s))
                        .is_none()
                    {
                        continue;
                    }
                    TargetPort::Name(s.clone())
                }
            },
        };
        let protocol = if l4 == "UDP" {
            Protocol::Udp
        } else {
            Protocol::from_port(p.app_protocol.as_deref(), p.name.as_deref(), port)
        };
        ports.push(ServicePort {
            name: p.name.clone(),
            port,
            target_port,
            protocol,
        });
    }

    let selector = match &spec.selector {
        Some(sel) if !sel.is_empty() => {
            ctx.check(&spec_path.key("selector"), v::labels(sel));
            Some(sel.clone())
        }
        // An empty selector selects nothing in Kubernetes (endpoints are managed by hand).
        _ => None,
    };
    let hostname = format!(
        "{}.{}.svc.{CLUSTER_DOMAIN}",
        ctx.meta.name, ctx.meta.namespace
    )
    .to_ascii_lowercase();
    Some(Service {
        meta: ctx.meta.clone(),
        hostname,
        cluster_ips,
        ip_families,
        ports,
        selector,
    })
}

/// `spec.ipFamilies` (checked against `spec.ipFamilyPolicy` and the cluster IPs, as the API server
/// checks them), else the families of `cluster_ips` in order.
fn ip_families(
    ctx: &mut Ctx<'_>,
    spec_path: &FieldPath,
    spec: &wk::ServiceSpec,
    cluster_ips: &[IpAddr],
) -> Vec<IpFamily> {
    if let Some(policy) = &spec.ip_family_policy {
        if !matches!(
            policy.as_str(),
            "SingleStack" | "PreferDualStack" | "RequireDualStack"
        ) {
            ctx.err(
                &spec_path.key("ipFamilyPolicy"),
                Invalid::Enum {
                    value: policy.clone(),
                    allowed: "SingleStack, PreferDualStack, RequireDualStack",
                },
            );
        }
    }
    let mut families = Vec::new();
    for (i, f) in spec.ip_families.iter().enumerate() {
        let path = spec_path.key("ipFamilies").index(i);
        let family = match f.as_str() {
            "IPv4" => IpFamily::V4,
            "IPv6" => IpFamily::V6,
            other => {
                ctx.err(
                    &path,
                    Invalid::Enum {
                        value: other.to_string(),
                        allowed: "IPv4, IPv6",
                    },
                );
                continue;
            }
        };
        if families.contains(&family) {
            ctx.err(&path, Invalid::Other(format!("{f} is listed twice")));
            continue;
        }
        families.push(family);
    }
    if spec.ip_family_policy.as_deref() == Some("SingleStack") && families.len() > 1 {
        ctx.err(
            &spec_path.key("ipFamilies"),
            Invalid::Other("a SingleStack Service has one IP family".to_string()),
        );
    }
    let of_ips: Vec<IpFamily> = cluster_ips.iter().map(|ip| IpFamily::of(*ip)).collect();
    for (i, (ip, family)) in cluster_ips.iter().zip(&of_ips).enumerate() {
        if of_ips[..i].contains(family) {
            ctx.err(
                &spec_path.key("clusterIPs"),
                Invalid::Other(format!(
                    "{ip}: a Service has at most one cluster IP per family ({} twice)",
                    family.as_str()
                )),
            );
        }
        if let Some(declared) = families.get(i).filter(|d| *d != family) {
            ctx.err(
                &spec_path.key("clusterIPs").index(i),
                Invalid::Other(format!(
                    "{ip} is {}, but ipFamilies[{i}] is {}",
                    family.as_str(),
                    declared.as_str()
                )),
            );
        }
    }
    if families.is_empty() {
        let mut out = Vec::new();
        for f in of_ips {
            if !out.contains(&f) {
                out.push(f);
            }
        }
        return out;
    }
    families
}

pub(super) fn pod(ctx: &mut Ctx<'_>, pod: &wk::Pod) -> Option<Pod> {
    let meta_path = FieldPath::root().key("metadata");
    let status_path = FieldPath::root().key("status");
    ctx.check(&meta_path.key("labels"), v::labels(&pod.metadata.labels));

    let mut ips: Vec<IpAddr> = Vec::new();
    if let Some(ip) = pod.status.pod_ip.as_deref().filter(|s| !s.is_empty()) {
        if let Some(ip) = ctx.check(&status_path.key("podIP"), v::ip(ip)) {
            ips.push(ip);
        }
    }
    for (i, p) in pod.status.pod_ips.iter().enumerate() {
        if let Some(ip) = ctx.check(&status_path.key("podIPs").index(i).key("ip"), v::ip(&p.ip)) {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }

    let phase = pod.status.phase.as_deref();
    if let Some(p) = phase {
        if !matches!(
            p,
            "Pending" | "Running" | "Succeeded" | "Failed" | "Unknown"
        ) {
            ctx.err(
                &status_path.key("phase"),
                Invalid::Enum {
                    value: p.to_string(),
                    allowed: "Pending, Running, Succeeded, Failed, Unknown",
                },
            );
        }
    }
    // Hand-written pod files usually omit status: treat "no phase" as running, and only an explicit
    // `Ready: False` condition as not ready.
    let ready_condition_false = pod
        .status
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "False");
    let ready = matches!(phase, None | Some("Running")) && !ready_condition_false;

    let capture = pod
        .metadata
        .annotations
        .get(CAPTURE_ANNOTATION)
        .is_none_or(|v| v != "false");
    if let Some(v) = pod.metadata.annotations.get(CAPTURE_ANNOTATION) {
        if v != "false" && v != "true" {
            ctx.err(
                &meta_path.key("annotations").key(CAPTURE_ANNOTATION),
                Invalid::Enum {
                    value: v.clone(),
                    allowed: "\"true\", \"false\"",
                },
            );
        }
    }
    if pod.spec.host_network == Some(true) && capture {
        ctx.warn(
            &FieldPath::root().key("spec").key("hostNetwork"),
            "host-network pods share the node's address and cannot be identified as clients",
        );
    }

    let mut container_ports = Vec::new();
    for (ci, c) in pod.spec.containers.iter().enumerate() {
        for (pi, p) in c.ports.iter().enumerate() {
            let path = FieldPath::root()
                .key("spec")
                .key("containers")
                .index(ci)
                .key("ports")
                .index(pi);
            let Some(port) = ctx.check(&path.key("containerPort"), v::port(p.container_port))
            else {
                continue;
            };
            if let Some(name) = &p.name {
                ctx.check(&path.key("name"), v::dns1123_label(name));
                container_ports.push((name.clone(), port));
            }
        }
    }
    let uid = pod.metadata.uid.as_deref().filter(|u| !u.is_empty());
    if let Some(u) = uid {
        ctx.check(&meta_path.key("uid"), v::pod_uid(u));
    }
    let qos_class = match pod.status.qos_class.as_deref().filter(|q| !q.is_empty()) {
        None => None,
        Some(q) => {
            let parsed = QosClass::parse(q);
            if parsed.is_none() {
                ctx.err(
                    &status_path.key("qosClass"),
                    Invalid::Enum {
                        value: q.to_string(),
                        allowed: "Guaranteed, Burstable, BestEffort",
                    },
                );
            }
            parsed
        }
    };
    let sidecar = pod
        .metadata
        .annotations
        .contains_key(SIDECAR_STATUS_ANNOTATION)
        || pod
            .spec
            .containers
            .iter()
            .chain(&pod.spec.init_containers)
            .any(|c| c.name.as_deref() == Some(SIDECAR_CONTAINER));

    Some(Pod {
        meta: ctx.meta.clone(),
        labels: pod.metadata.labels.clone(),
        annotations: pod.metadata.annotations.clone(),
        ips,
        ready,
        capture,
        container_ports,
        node_name: pod.spec.node_name.clone().filter(|n| !n.is_empty()),
        owner: pod_owner(&pod.metadata.owner_references),
        uid: uid.map(str::to_string),
        qos_class,
        host_network: pod.spec.host_network == Some(true),
        sidecar,
        traffic: super::pod_traffic::outbound(ctx, &pod.metadata.annotations),
    })
}

/// Label naming the Service an EndpointSlice belongs to.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

pub(super) fn endpoint_slice(
    ctx: &mut Ctx<'_>,
    slice: &wk::EndpointSlice,
) -> Option<EndpointSlice> {
    let labels_path = FieldPath::root().key("metadata").key("labels");
    ctx.check(&labels_path, v::labels(&slice.metadata.labels));
    let service = slice
        .metadata
        .labels
        .get(SERVICE_NAME_LABEL)
        .cloned()
        .unwrap_or_default();
    if service.is_empty() {
        ctx.warn(
            &labels_path,
            format!(
                "no {SERVICE_NAME_LABEL} label: this slice belongs to no Service and is not used"
            ),
        );
    }
    let address_type = slice.address_type.as_deref().unwrap_or("IPv4");
    if !matches!(address_type, "IPv4" | "IPv6" | "FQDN") {
        ctx.err(
            &FieldPath::root().key("addressType"),
            Invalid::Enum {
                value: address_type.to_string(),
                allowed: "IPv4, IPv6, FQDN",
            },
        );
    }
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().enumerate() {
        let path = FieldPath::root().key("ports").index(i);
        // A port without a number means "all ports" for a selector-less Service; Keel needs one.
        let Some(number) = p.port else { continue };
        if let Some(number) = ctx.check(&path.key("port"), v::port(number)) {
            ports.push((p.name.clone().unwrap_or_default(), number));
        }
    }
    let mut endpoints = Vec::new();
    for (i, e) in slice.endpoints.iter().enumerate() {
        let path = FieldPath::root().key("endpoints").index(i);
        // FQDN endpoints name hosts, not addresses: Keel dials addresses only.
        let addresses = if address_type == "FQDN" {
            Vec::new()
        } else {
            e.addresses
                .iter()
                .enumerate()
                .filter_map(|(j, a)| ctx.check(&path.key("addresses").index(j), v::ip(a)))
                .collect()
        };
        let conditions = e.conditions.as_ref();
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
        let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
        let pod = e
            .target_ref
            .as_ref()
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .and_then(|r| {
                let name = r.name.as_deref()?;
                let ns = r.namespace.as_deref().unwrap_or(ctx.ns());
                Some(format!("{ns}/{name}"))
            });
        endpoints.push(SliceEndpoint {
            addresses,
            healthy: ready && !terminating,
            pod,
        });
    }
    Some(EndpointSlice {
        meta: ctx.meta.clone(),
        service,
        ports,
        endpoints,
    })
}

/// The controller among `refs` (else the first owner), if it names one.
fn pod_owner(refs: &[wk::OwnerReference]) -> Option<PodOwner> {
    refs.iter()
        .find(|r| r.controller == Some(true))
        .or_else(|| refs.first())
        .filter(|r| !r.kind.is_empty() && !r.name.is_empty())
        .map(|r| PodOwner {
            kind: r.kind.clone(),
            name: r.name.clone(),
        })
}

pub(super) fn node(ctx: &mut Ctx<'_>, node: &wk::Node) -> Option<Node> {
    let labels = &node.metadata.labels;
    ctx.check(
        &FieldPath::root().key("metadata").key("labels"),
        v::labels(labels),
    );
    Some(Node {
        meta: ctx.meta.clone(),
        locality: Locality::from_node_labels(labels),
    })
}
