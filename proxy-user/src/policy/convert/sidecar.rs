//! `Sidecar` -> model (§3.3 of the reference): egress scoping; the rest is accepted with a warning.

use super::fields::set_fields;
use super::scoped_host::ns_host;
use super::Ctx;
use crate::policy::error::*;
use crate::policy::model::*;
use crate::policy::validate as v;
use crate::source::FieldPath;
use crate::wire::istio as w;

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
pub(super) fn outbound_mode(
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
