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
    ctx.check(path, wildcard_domain(host));
    if host.contains('*') && host != "*" && !host.starts_with("*.") {
        ctx.err(path, InvalidHost::Wildcard(host.to_string()));
    }
}

/// istiod's `ValidateWildcardDomain`: the first label may be `*` or start with `*`/`*-`, the others are
/// DNS-1123 labels (either case; the last may be empty, for a trailing dot).
fn wildcard_domain(host: &str) -> Result<(), Invalid> {
    if host.len() > 255 {
        return Err(InvalidHost::TooLong(host.to_string()).into());
    }
    let (first, rest) = match host.split_once('.') {
        Some((f, r)) => (f, Some(r)),
        None => (host, None),
    };
    let after_star = first
        .strip_prefix("*-")
        .or_else(|| first.strip_prefix('*'))
        .unwrap_or(first);
    let first_ok = first.len() <= 63
        && (first == "*" || v::is_dns1123_label(&after_star.to_ascii_lowercase()));
    if !first_ok {
        return Err(InvalidHost::Label {
            host: host.to_string(),
            label: first.to_string(),
        }
        .into());
    }
    match rest {
        Some(rest) => dns1123_labels(rest, host),
        None => Ok(()),
    }
}

/// istiod's `ValidateDNS1123Labels`: dot-separated DNS-1123 labels (either case), the last of which may
/// be empty (a trailing dot) and must not be a number. `host` is the name messages show.
pub(super) fn dns1123_labels(name: &str, host: &str) -> Result<(), Invalid> {
    let labels: Vec<&str> = name.split('.').collect();
    let last = labels.len() - 1;
    // Go's `strconv.Atoi`: an optional sign, digits, within 64 bits.
    if labels[last].parse::<i64>().is_ok() {
        return Err(Invalid::Other(format!(
            "invalid host {host:?}: the top-level domain {:?} is all digits",
            labels[last]
        )));
    }
    for (i, label) in labels.iter().enumerate() {
        if i == last && label.is_empty() {
            break;
        }
        if !v::is_dns1123_label(&label.to_ascii_lowercase()) {
            return Err(InvalidHost::Label {
                host: host.to_string(),
                label: label.to_string(),
            }
            .into());
        }
    }
    Ok(())
}
