//! `namespace/dnsName` hosts as Sidecar egress listeners write them, and the DNS name grammar istiod checks
//! them with.

use super::Ctx;
use crate::policy::error::*;
use crate::policy::validate as v;
use crate::source::FieldPath;

/// A Sidecar egress host as istiod checks it: `namespace/dnsName`, where the namespace is `*`, `.` or a
/// DNS-1123 label (either case), optionally `~`-prefixed, and the name is `*` or a fully qualified,
/// possibly `*.`-prefixed name (no short names, no IP addresses, no all-numeric top-level domain).
pub(super) fn sidecar_egress_host(ctx: &mut Ctx<'_>, path: &FieldPath, s: &str) {
    let Some((ns, host)) = s.split_once('/') else {
        ctx.err(
            path,
            Invalid::Other(format!(
                "{s:?} must be namespace/dnsName (e.g. \"./*\", \"istio-system/*\")"
            )),
        );
        return;
    };
    if ns.is_empty() || host.is_empty() {
        ctx.err(
            path,
            Invalid::Other(format!(
                "{s:?}: the namespace and the dnsName must both be set"
            )),
        );
    }
    let bare = ns.strip_prefix('~').unwrap_or(ns);
    if !matches!(bare, "" | "*" | ".") && !v::is_dns1123_label(&bare.to_ascii_lowercase()) {
        ctx.err(
            path,
            Invalid::Other(format!(
                "invalid namespace {ns:?} in {s:?}: must be *, . or a DNS-1123 label, optionally after ~"
            )),
        );
    }
    if host.is_empty() {
        return;
    }
    if host != "*" && !host.contains('.') {
        ctx.err(
            path,
            Invalid::Other(format!(
                "{host:?} is a short name: egress hosts must be fully qualified (or *)"
            )),
        );
    }
    // A partial wildcard that istiod's label grammar lets through (`*foo.example.com`) is still refused
    // for egress hosts.
    if ctx.check(path, v::wildcard_domain(host)).is_some()
        && host.contains('*')
        && host != "*"
        && !host.starts_with("*.")
    {
        ctx.err(path, InvalidHost::Wildcard(host.to_string()));
    }
}
