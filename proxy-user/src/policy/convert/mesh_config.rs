//! Keel's `MeshConfig` -> model.

use super::sidecar::outbound_mode;
use super::Ctx;
use crate::policy::model::*;
use crate::policy::validate as v;
use crate::source::FieldPath;
use crate::wire::keel as wkeel;

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
    access_log(ctx, &sp, spec, &mut mesh);
    Some(mesh)
}

/// `accessLogFile`, `accessLogEncoding`, `accessLogFormat`: a format with a command operator Keel
/// does not evaluate is an error (the resource keeps its last good version), never a line with
/// the operator left in it.
fn access_log(
    ctx: &mut Ctx<'_>,
    sp: &FieldPath,
    spec: &wkeel::MeshConfigSpec,
    mesh: &mut MeshConfig,
) {
    use crate::metrics::access_log::{Encoding, LogFormat};
    mesh.access_log_file = spec.access_log_file.clone().filter(|f| !f.is_empty());
    if let Some(e) = &spec.access_log_encoding {
        match e.as_str() {
            "TEXT" => mesh.access_log_encoding = Encoding::Text,
            "JSON" => mesh.access_log_encoding = Encoding::Json,
            other => ctx.err(
                &sp.key("accessLogEncoding"),
                crate::policy::Invalid::Enum {
                    value: other.to_string(),
                    allowed: "TEXT, JSON",
                },
            ),
        }
    }
    if let Some(f) = spec.access_log_format.as_deref().filter(|f| !f.is_empty()) {
        match LogFormat::parse(mesh.access_log_encoding, f) {
            Ok(_) => mesh.access_log_format = Some(f.to_string()),
            Err(e) => ctx.err(
                &sp.key("accessLogFormat"),
                crate::policy::Invalid::Unsupported(e.0),
            ),
        }
    }
}
