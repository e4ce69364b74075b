//! `namespace/dnsName` hosts, as Sidecar egress listeners and Gateway servers write them.

use super::Ctx;
use crate::policy::error::*;
use crate::policy::validate::{self as v, StarHost};
use crate::source::FieldPath;

/// `namespace/dnsName` as used by Sidecar egress hosts and Gateway server hosts.
pub(super) fn ns_host(ctx: &mut Ctx<'_>, path: &FieldPath, s: &str, sidecar: bool) {
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
