//! `Gateway` -> model (§3.4 of the reference).

use super::scoped_host::ns_host;
use super::service_entry::port_protocol;
use super::Ctx;
use crate::policy::error::*;
use crate::policy::model::*;
use crate::policy::validate as v;
use crate::source::FieldPath;
use crate::wire::istio as w;

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
