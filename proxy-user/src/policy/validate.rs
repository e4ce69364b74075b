//! Field-level checks shared by the converters: names, hosts, durations, string matches, headers, labels,
//! exportTo, addresses. Each returns the converted value or a typed `Invalid*` reason; the caller adds the
//! field path and the resource.
//!
//! The rules follow Istio's validation webhook (see `shared/reference/istio-semantics.md` §1.18, §2.8,
//! §3.1): config that istiod would reject is rejected here too, so a file that `keel validate` accepts
//! can be applied to a real mesh.

use std::net::IpAddr;
use std::time::Duration;

use super::error::*;
use super::header_template;
use super::model::{StringMatch, CLUSTER_DOMAIN};
use crate::wire::{istio, parse_duration};

/// Longest regex Istio accepts.
pub const MAX_REGEX_LEN: usize = 1024;

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Dot-separated DNS-1123 labels, at most 253 characters.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// Checks a namespace or other DNS-1123 label.
pub fn dns1123_label(s: &str) -> Result<(), InvalidName> {
    if s.is_empty() {
        return Err(InvalidName::Empty);
    }
    if is_dns1123_label(s) {
        Ok(())
    } else {
        Err(InvalidName::Dns1123Label(s.to_string()))
    }
}

/// Checks a resource name (DNS-1123 subdomain, what most kinds require).
pub fn dns1123_subdomain(s: &str) -> Result<(), InvalidName> {
    if s.is_empty() {
        return Err(InvalidName::Empty);
    }
    if is_dns1123_subdomain(s) {
        Ok(())
    } else {
        Err(InvalidName::Dns1123Subdomain(s.to_string()))
    }
}

/// A pod UID as kubelet names cgroups after it: the API server's lower-case UUID (hex digits grouped
/// 8-4-4-4-12), or the 32 lower-case hex digits (an MD5 of the manifest) kubelet gives a static pod.
pub fn is_pod_uid(s: &str) -> bool {
    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    let b = s.as_bytes();
    match b.len() {
        32 => b.iter().all(|&c| hex(c)),
        36 => b.iter().enumerate().all(|(i, &c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == b'-'
            } else {
                hex(c)
            }
        }),
        _ => false,
    }
}

/// Checks a pod `metadata.uid` (see [`is_pod_uid`]).
pub fn pod_uid(s: &str) -> Result<(), InvalidName> {
    if s.is_empty() {
        return Err(InvalidName::Empty);
    }
    if is_pod_uid(s) {
        Ok(())
    } else {
        Err(InvalidName::PodUid(s.to_string()))
    }
}

/// A label key: optional DNS-subdomain prefix + `/` + name of at most 63 `[A-Za-z0-9._-]`, alnum at ends.
pub fn label_key(key: &str) -> Result<(), InvalidName> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| !p.is_empty() && is_dns1123_subdomain(p));
    if prefix_ok && !name.is_empty() && is_label_value(name) {
        Ok(())
    } else {
        Err(InvalidName::LabelKey(key.to_string()))
    }
}

/// Empty, or at most 63 `[A-Za-z0-9._-]` starting and ending with an alphanumeric.
fn is_label_value(v: &str) -> bool {
    let b = v.as_bytes();
    b.is_empty()
        || (b.len() <= 63
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric())
}

/// Checks every key and value of a label map / selector.
pub fn labels(map: &std::collections::BTreeMap<String, String>) -> Result<(), InvalidName> {
    for (k, v) in map {
        label_key(k)?;
        if !is_label_value(v) {
            return Err(InvalidName::LabelValue {
                key: k.clone(),
                value: v.clone(),
            });
        }
    }
    Ok(())
}

/// Checks a label map as istiod's `labels.Instance.Validate` does (subset labels, ServiceEntry
/// selectors): keys are `[prefix/]name` with a DNS-subdomain prefix of either case (at most 253) and a
/// name of `[A-Za-z0-9._-]` with alphanumeric ends (at most 63); values are empty or of the same
/// characters with alphanumeric ends, with no length limit.
pub fn istio_labels(map: &std::collections::BTreeMap<String, String>) -> Result<(), InvalidName> {
    let qualified = |s: &str| {
        let b = s.as_bytes();
        !b.is_empty()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
    };
    for (k, v) in map {
        let (prefix, name) = match k.split_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, k.as_str()),
        };
        let prefix_ok = prefix.is_none_or(|p| {
            p.len() <= 253
                && p.split('.')
                    .all(|l| is_dns1123_label(&l.to_ascii_lowercase()))
        });
        if !prefix_ok || name.len() > 63 || !qualified(name) {
            return Err(InvalidName::LabelKey(k.clone()));
        }
        if !v.is_empty() && !qualified(v) {
            return Err(InvalidName::LabelValue {
                key: k.clone(),
                value: v.clone(),
            });
        }
    }
    Ok(())
}

/// Expands a short name in `namespace` and lower-cases it: `reviews` -> `reviews.<ns>.svc.cluster.local`.
/// Names containing a dot are taken as qualified; `*` and IP addresses are left alone.
pub fn resolve_short_name(host: &str, namespace: &str) -> String {
    let host = host.to_ascii_lowercase();
    if host.contains('.') || host == "*" || host.contains(':') || host.parse::<IpAddr>().is_ok() {
        return host;
    }
    format!("{host}.{namespace}.svc.{CLUSTER_DOMAIN}")
}

/// Where a bare `*` host is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StarHost {
    /// Allowed (DestinationRule, Sidecar egress).
    Allowed,
    /// Rejected with the given explanation.
    Rejected(&'static str),
}

/// Checks a host that may start with a `*.` wildcard label (or be an IP address).
pub fn wildcard_host(host: &str, star: StarHost) -> Result<(), InvalidHost> {
    if host.is_empty() {
        return Err(InvalidHost::Empty);
    }
    if host == "*" {
        return match star {
            StarHost::Allowed => Ok(()),
            StarHost::Rejected(why) => Err(InvalidHost::Star(why)),
        };
    }
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if host.len() > 255 {
        return Err(InvalidHost::TooLong(host.to_string()));
    }
    let rest = host.strip_prefix("*.").unwrap_or(host);
    if rest.contains('*') {
        return Err(InvalidHost::Wildcard(host.to_string()));
    }
    // A trailing dot (absolute name) is tolerated, as by Envoy and Istio.
    let rest = rest.strip_suffix('.').unwrap_or(rest);
    for label in rest.split('.') {
        if !is_dns1123_label(&label.to_ascii_lowercase()) {
            return Err(InvalidHost::Label {
                host: host.to_string(),
                label: label.to_string(),
            });
        }
    }
    Ok(())
}

/// Istio's own DNS-1123 label (`labels.IsDNS1123Label`): like [`is_dns1123_label`] but upper-case letters
/// are allowed. istiod checks namespaces, subset and gateway names and host labels with it.
pub fn is_istio_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A first host label as istiod allows it (`labels.IsWildcardDNS1123Label`): `*`, or an
/// [`is_istio_dns1123_label`] optionally preceded by `*` or `*-` (so `*foo` and `*-foo` pass).
pub fn is_istio_wildcard_label(s: &str) -> bool {
    if s.len() > 63 {
        return false;
    }
    if s == "*" {
        return true;
    }
    let rest = s
        .strip_prefix("*-")
        .or_else(|| s.strip_prefix('*'))
        .unwrap_or(s);
    is_istio_dns1123_label(rest)
}

/// Istio's `ValidateDNS1123Labels` for `domain`, the part of `host` after its first label: the last label
/// must not be all-numeric (as Go's `Atoi` reads it), it may be empty (a trailing dot), and every other
/// label is an [`is_istio_dns1123_label`].
fn istio_dns1123_labels(host: &str, domain: &str) -> Result<(), InvalidHost> {
    let parts: Vec<&str> = domain.split('.').collect();
    let tld = parts.last().copied().unwrap_or_default();
    if tld.parse::<i64>().is_ok() {
        return Err(InvalidHost::NumericTld {
            host: host.to_string(),
            tld: tld.to_string(),
        });
    }
    for (i, label) in parts.iter().enumerate() {
        if i + 1 == parts.len() && label.is_empty() {
            return Ok(());
        }
        if !is_istio_dns1123_label(label) {
            return Err(InvalidHost::Label {
                host: host.to_string(),
                label: label.to_string(),
            });
        }
    }
    Ok(())
}

/// Istio's `ValidateWildcardDomain`, exactly: 1..=255 characters, a first label that is `*` or a label
/// with a leading `*`/`*-`, then DNS labels (upper case allowed, trailing dot allowed, last label not
/// all-numeric). IP addresses fail (their last label is numeric); callers that allow them check first.
pub fn wildcard_domain(host: &str) -> Result<(), InvalidHost> {
    if host.len() > 255 {
        return Err(InvalidHost::TooLong(host.to_string()));
    }
    if host.is_empty() {
        return Err(InvalidHost::Empty);
    }
    let (first, rest) = match host.split_once('.') {
        Some((f, r)) => (f, Some(r)),
        None => (host, None),
    };
    if !is_istio_wildcard_label(first) {
        if first.contains('*') {
            return Err(InvalidHost::Wildcard(host.to_string()));
        }
        return Err(InvalidHost::Label {
            host: host.to_string(),
            label: first.to_string(),
        });
    }
    if let Some(rest) = rest {
        if rest.contains('*') {
            return Err(InvalidHost::Wildcard(host.to_string()));
        }
        istio_dns1123_labels(host, rest)?;
    }
    Ok(())
}

/// Istio's `ValidateWildcardDomainForVirtualServiceBoundToGateway`: [`wildcard_domain`], except that
/// when the VirtualService has TLS SNI matches (`sni`), a host starting `outbound_` is read as an
/// AUTO_PASSTHROUGH name `outbound_.<port>_._.<host>` (at least four `_`-separated parts, a digit in the
/// port part, a letter in the host part).
pub fn gateway_bound_domain(host: &str, sni: bool) -> Result<(), InvalidHost> {
    if host.len() > 255 {
        return Err(InvalidHost::TooLong(host.to_string()));
    }
    if host.is_empty() {
        return Err(InvalidHost::Empty);
    }
    if sni && host.starts_with("outbound_") {
        let parts: Vec<&str> = host.split('_').collect();
        let port = parts
            .get(1)
            .map(|p| p.trim_matches('.'))
            .unwrap_or_default();
        let name = parts
            .get(3)
            .map(|p| p.trim_matches('.'))
            .unwrap_or_default();
        if parts.len() < 4
            || !port.bytes().any(|c| c.is_ascii_digit())
            || !name.bytes().any(|c| c.is_ascii_alphabetic())
        {
            return Err(InvalidHost::AutoPassthrough(host.to_string()));
        }
        return Ok(());
    }
    wildcard_domain(host)
}

/// Istio's `ValidateFQDN` (gateway names without a `/`): 1..=255 characters of DNS labels (upper case
/// allowed, trailing dot allowed, last label not all-numeric), no wildcard.
pub fn istio_fqdn(name: &str) -> Result<(), InvalidHost> {
    if name.len() > 255 {
        return Err(InvalidHost::TooLong(name.to_string()));
    }
    if name.is_empty() {
        return Err(InvalidHost::Empty);
    }
    istio_dns1123_labels(name, name)
}

/// True if wildcard-or-exact host `a` matches every name `b` matches (Istio's `SubsetOf`).
pub fn host_subset_of(a: &str, b: &str) -> bool {
    if b == "*" {
        return true;
    }
    if let Some(bsuf) = b.strip_prefix('*') {
        let asuf = a.strip_prefix('*').unwrap_or(a);
        return asuf.ends_with(bsuf);
    }
    a == b
}

/// True if some name matches both hosts.
pub fn hosts_overlap(a: &str, b: &str) -> bool {
    host_subset_of(a, b) || host_subset_of(b, a)
}

/// Parses a duration string.
pub fn duration(s: &str) -> Result<Duration, InvalidDuration> {
    Ok(parse_duration(s)?)
}

/// Istio's usual rule for durations: at least 1ms, whole milliseconds.
pub fn duration_ms(s: &str) -> Result<Duration, InvalidDuration> {
    let d = duration(s)?;
    if d < Duration::from_millis(1) {
        return Err(InvalidDuration::TooShort {
            value: s.to_string(),
            min: "1ms",
        });
    }
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err(InvalidDuration::SubMillisecond(s.to_string()));
    }
    Ok(d)
}

/// Like [`duration_ms`] but `0s` is allowed (e.g. `tcp.idleTimeout: 0s` disables the timeout).
pub fn duration_ms_or_zero(s: &str) -> Result<Duration, InvalidDuration> {
    let d = duration(s)?;
    if d.is_zero() {
        return Ok(d);
    }
    duration_ms(s)
}

/// Where a `StringMatch` is used; `uri` alone may have an empty prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchField {
    /// `uri`.
    Uri,
    /// Anything else (headers, query params, method, scheme, authority, CORS origins).
    Other,
}

/// Converts a `StringMatch`, compiling regexes anchored (RE2 full match).
pub fn string_match(
    m: &istio::StringMatch,
    field: MatchField,
) -> Result<StringMatch, InvalidStringMatch> {
    let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if set > 1 {
        return Err(InvalidStringMatch::Several);
    }
    if let Some(e) = &m.exact {
        return Ok(StringMatch::Exact(e.clone()));
    }
    if let Some(p) = &m.prefix {
        if p.is_empty() && field != MatchField::Uri {
            return Err(InvalidStringMatch::EmptyPrefix);
        }
        return Ok(StringMatch::Prefix(p.clone()));
    }
    if let Some(r) = &m.regex {
        // `regex: "*"` is not RE2 and is rejected here; only `withoutHeaders` lets it through, as a
        // presence match (the caller handles that).
        return Ok(StringMatch::Regex(anchored_regex(r)?));
    }
    Ok(StringMatch::Present)
}

/// Compiles `re` as a full-match regex (`^(?:re)$`).
pub fn anchored_regex(re: &str) -> Result<regex::Regex, InvalidStringMatch> {
    regex_len(re)?;
    regex::Regex::new(&format!("^(?:{re})$")).map_err(|e| InvalidStringMatch::Regex {
        regex: re.to_string(),
        error: first_line(&e.to_string()),
    })
}

/// Compiles `re` unanchored (for `uriRegexRewrite`, which replaces every match).
pub fn plain_regex(re: &str) -> Result<regex::Regex, InvalidStringMatch> {
    regex_len(re)?;
    regex::Regex::new(re).map_err(|e| InvalidStringMatch::Regex {
        regex: re.to_string(),
        error: first_line(&e.to_string()),
    })
}

/// Non-empty and at most [`MAX_REGEX_LEN`] bytes.
fn regex_len(re: &str) -> Result<(), InvalidStringMatch> {
    if re.is_empty() {
        return Err(InvalidStringMatch::EmptyRegex);
    }
    if re.len() > MAX_REGEX_LEN {
        return Err(InvalidStringMatch::RegexTooLong(re.len()));
    }
    Ok(())
}

/// The regex crate's errors are multi-line ASCII art; the last non-empty line says what is wrong.
fn first_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(s)
        .trim()
        .trim_start_matches("error: ")
        .to_string()
}

/// An HTTP header name: RFC 9110 token characters. Returns it lower-cased.
pub fn header_name(name: &str) -> Result<String, InvalidHeader> {
    let ok = !name.is_empty()
        && name.bytes().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        });
    if ok {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(InvalidHeader::Name(name.to_string()))
    }
}

/// A header name as istiod checks match keys and CORS header lists: one or more of `A-Za-z0-9` and
/// ``!#$%&'*+,-.^_`|~`` (istiod's character class spells `+-.` as a range, so `,` is allowed too).
/// Returned as written.
pub fn istio_header_name(name: &str) -> Result<String, InvalidHeader> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+,-.^_`|~".contains(&c));
    if ok {
        Ok(name.to_string())
    } else {
        Err(InvalidHeader::Name(name.to_string()))
    }
}

/// True if `key` is a JWT-claim routing key as istiod reads it (`jwt.ToRoutingClaim`): a
/// case-insensitive `@request.auth.claims` followed by `.name` or `[name]...`.
pub fn is_jwt_claim_key(key: &str) -> bool {
    const PREFIX: &str = "@request.auth.claims";
    let Some(head) = key.get(..PREFIX.len()) else {
        return false;
    };
    if !head.eq_ignore_ascii_case(PREFIX) {
        return false;
    }
    let rest = &key[PREFIX.len()..];
    (rest.starts_with('.') && rest.len() > 1)
        || (rest.starts_with('[') && rest.ends_with(']') && rest.len() > 2)
}

/// Pseudo-headers allowed as match keys.
pub const MATCHABLE_PSEUDO_HEADERS: &[&str] =
    &[":method", ":scheme", ":authority", ":path", ":status"];

/// A header *match* key: a token, or one of the pseudo-headers Envoy exposes. Returns it lower-cased.
pub fn header_match_name(name: &str) -> Result<String, InvalidHeader> {
    let lower = name.to_ascii_lowercase();
    if MATCHABLE_PSEUDO_HEADERS.contains(&lower.as_str()) {
        return Ok(lower);
    }
    header_name(name)
}

/// A header value for set/add: no control characters, and valid Envoy template syntax (`%%` is a literal
/// `%`; `%NAME%` operators, see [`header_template`](crate::policy::header_template)). The value is kept as
/// written (the filters compile it); returns the operators Keel sends literally, for a warning.
pub fn header_value(name: &str, value: &str) -> Result<Vec<String>, Invalid> {
    no_control_chars(name, value)?;
    let parts = header_template::parse(value).map_err(|e| match e {
        header_template::TemplateError::LonePercent => Invalid::from(InvalidHeader::Value {
            name: name.to_string(),
            value: value.to_string(),
            reason: "a literal % must be written %%",
        }),
        e => InvalidHeader::Template {
            name: name.to_string(),
            reason: e.to_string(),
        }
        .into(),
    })?;
    Ok(header_template::not_applied(&parts)
        .into_iter()
        .map(str::to_string)
        .collect())
}

/// An authority set through `:authority`/`host` in `headers.request.set/add`: Istio turns it into Envoy's
/// `host_rewrite_literal`, which is sent as written (no `%` operators), after the same `%`-pairing check
/// Istio applies to every header value.
pub fn authority_value(name: &str, value: &str) -> Result<String, Invalid> {
    no_control_chars(name, value)?;
    if !value.matches('%').count().is_multiple_of(2) {
        return Err(InvalidHeader::Value {
            name: name.to_string(),
            value: value.to_string(),
            reason: "a literal % must be written %%",
        }
        .into());
    }
    Ok(value.to_string())
}

fn no_control_chars(name: &str, value: &str) -> Result<(), Invalid> {
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(InvalidHeader::Value {
            name: name.to_string(),
            value: value.to_string(),
            reason: "control characters are not allowed",
        }
        .into());
    }
    Ok(())
}

/// An IP address as Go's `netip.ParseAddr` reads it, which istiod uses: an IPv6 address may carry a
/// `%zone`.
pub fn is_go_ip(s: &str) -> bool {
    match s.split_once('%') {
        Some((addr, zone)) => !zone.is_empty() && addr.parse::<std::net::Ipv6Addr>().is_ok(),
        None => s.parse::<IpAddr>().is_ok(),
    }
}

/// An IP address.
pub fn ip(s: &str) -> Result<IpAddr, InvalidAddress> {
    s.trim()
        .parse()
        .map_err(|_| InvalidAddress::Ip(s.to_string()))
}

/// An IP address or CIDR (`10.0.0.0/8`, `::1/128`).
pub fn cidr(s: &str) -> Result<(), InvalidAddress> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| InvalidAddress::Cidr(s.to_string()))?;
    if let Some(len) = len {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        match len.parse::<u8>() {
            Ok(n) if n <= max => {}
            _ => return Err(InvalidAddress::Cidr(s.to_string())),
        }
    }
    Ok(())
}

/// A port number in 1..=65535.
pub fn port(n: i64) -> Result<u16, InvalidPort> {
    match u16::try_from(n) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(InvalidPort::OutOfRange(n)),
    }
}

/// Which resource kind an `exportTo` belongs to (`~` is only for ServiceEntry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportKind {
    /// VirtualService / DestinationRule.
    Config,
    /// ServiceEntry.
    Service,
}

/// Checks `exportTo` entries relative to the resource's namespace.
pub fn export_to(
    entries: &[String],
    namespace: &str,
    kind: ExportKind,
) -> Result<Vec<String>, InvalidExportTo> {
    let mut seen: Vec<String> = Vec::new();
    for e in entries {
        match e.as_str() {
            "*" => {}
            "." => {}
            "~" => {
                if kind == ExportKind::Config {
                    return Err(InvalidExportTo::Tilde(
                        "not allowed for Istio configuration objects",
                    ));
                }
            }
            // istiod's label grammar allows upper case here (no namespace has it: it exports to nobody).
            ns if is_dns1123_label(&ns.to_ascii_lowercase()) => {}
            other => return Err(InvalidExportTo::Namespace(other.to_string())),
        }
        // `.` and the resource's own namespace are the same entry.
        let canonical = if e == "." {
            namespace.to_string()
        } else {
            e.clone()
        };
        if seen.contains(&canonical) {
            return Err(InvalidExportTo::Duplicate(e.clone()));
        }
        seen.push(canonical);
    }
    if seen.len() > 1 {
        if seen.iter().any(|e| e == "*") {
            return Err(InvalidExportTo::StarWithOthers);
        }
        if seen.iter().any(|e| e == "~") {
            return Err(InvalidExportTo::Tilde(
                "exclusive: it cannot be combined with other entries",
            ));
        }
    }
    Ok(entries.to_vec())
}

/// Retry conditions Envoy/Istio understand (plus numeric HTTP status codes).
pub const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// The retry conditions used when a route sets `retries` without `retryOn`, and by the default policy.
pub const DEFAULT_RETRY_ON: &[&str] = &[
    "connect-failure",
    "refused-stream",
    "unavailable",
    "cancelled",
    "retriable-status-codes",
];

/// gRPC status names accepted by `fault.abort.grpcStatus`.
pub const GRPC_STATUS: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Methods accepted in CORS `allowMethods`.
pub const CORS_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// The status codes Go's `net/http.StatusText` names: istiod accepts a numeric `retryOn` token exactly
/// when it is one of these.
const NAMED_STATUS_CODES: &[i64] = &[
    100, 101, 102, 103, 200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304,
    305, 306, 307, 308, 400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414,
    415, 416, 417, 418, 421, 422, 423, 424, 425, 426, 428, 429, 431, 451, 500, 501, 502, 503, 504,
    505, 506, 507, 508, 510, 511,
];

/// Checks a `retryOn` list: comma-separated, no spaces (Istio does not trim them); a number counts when
/// Go's `Atoi` reads it as a named HTTP status (so `+503` and `0503` pass, `599` does not).
pub fn retry_on(s: &str) -> Result<Vec<String>, InvalidHttpRoute> {
    let mut out = Vec::new();
    for token in s.split(',') {
        let known = RETRY_ON.contains(&token)
            || token
                .parse::<i64>()
                .is_ok_and(|c| NAMED_STATUS_CODES.contains(&c));
        if !known {
            return Err(InvalidHttpRoute::RetryOn(token.to_string()));
        }
        out.push(token.to_string());
    }
    Ok(out)
}

/// A percentage in `[0, 100]`; non-zero values below 0.0001 are rejected as Envoy cannot express them.
pub fn fault_percentage(v: f64) -> Result<f64, InvalidHttpRoute> {
    if !(0.0..=100.0).contains(&v) || (v > 0.0 && v < 0.0001) {
        return Err(InvalidHttpRoute::Percentage {
            value: v,
            range: "{0} or [0.0001, 100]",
        });
    }
    Ok(v)
}

/// True if `n` is prime (maglev table sizes).
pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut i = 2u64;
    while i.saturating_mul(i) <= n {
        if n.is_multiple_of(i) {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_expand_in_the_resource_namespace() {
        let cases = [
            ("reviews", "foo", "reviews.foo.svc.cluster.local"),
            ("Reviews", "default", "reviews.default.svc.cluster.local"),
            ("reviews.default", "foo", "reviews.default"),
            (
                "reviews.default.svc.cluster.local",
                "foo",
                "reviews.default.svc.cluster.local",
            ),
            ("*", "foo", "*"),
            ("10.0.0.1", "foo", "10.0.0.1"),
        ];
        for (host, ns, want) in cases {
            assert_eq!(resolve_short_name(host, ns), want);
        }
    }

    #[test]
    fn wildcard_only_as_whole_first_label() {
        assert!(wildcard_host("*.foo.com", StarHost::Allowed).is_ok());
        assert!(wildcard_host("foo.com", StarHost::Allowed).is_ok());
        assert!(wildcard_host("*", StarHost::Allowed).is_ok());
        assert!(matches!(
            wildcard_host("*foo.com", StarHost::Allowed),
            Err(InvalidHost::Wildcard(_))
        ));
        assert!(matches!(
            wildcard_host("foo.*.com", StarHost::Allowed),
            Err(InvalidHost::Wildcard(_))
        ));
        assert!(matches!(
            wildcard_host("*", StarHost::Rejected("")),
            Err(InvalidHost::Star(_))
        ));
        assert!(matches!(
            wildcard_host("foo_bar.com", StarHost::Allowed),
            Err(InvalidHost::Label { .. })
        ));
        assert!(hosts_overlap("*.foo.com", "a.foo.com"));
        assert!(hosts_overlap("*.foo.com", "*.com"));
        assert!(!hosts_overlap("a.foo.com", "b.foo.com"));
    }

    #[test]
    fn durations_follow_istio_minimums() {
        assert_eq!(duration_ms("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(matches!(
            duration_ms("0s"),
            Err(InvalidDuration::TooShort { .. })
        ));
        assert!(matches!(
            duration_ms("1500us"),
            Err(InvalidDuration::SubMillisecond(_))
        ));
        assert_eq!(duration_ms_or_zero("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn regexes_are_full_match() {
        let re = anchored_regex("/v[0-9]+").expect("compiles");
        assert!(re.is_match("/v12"));
        assert!(!re.is_match("/v12/x"));
        assert!(!re.is_match("/xv12"));
        assert!(matches!(
            anchored_regex("("),
            Err(InvalidStringMatch::Regex { .. })
        ));
        assert!(matches!(
            anchored_regex(""),
            Err(InvalidStringMatch::EmptyRegex)
        ));
        assert!(matches!(
            anchored_regex(&"a".repeat(1025)),
            Err(InvalidStringMatch::RegexTooLong(1025))
        ));
    }

    #[test]
    fn header_values_are_envoy_templates() {
        assert_eq!(header_value("x", "100%%"), Ok(vec![]));
        assert_eq!(header_value("x", "%HOSTNAME%"), Ok(vec![]));
        assert_eq!(
            header_value("x", "%UPSTREAM_CLUSTER%"),
            Ok(vec!["%UPSTREAM_CLUSTER%".to_string()])
        );
        assert!(matches!(
            header_value("x", "%NOPE%"),
            Err(Invalid::Header(InvalidHeader::Template { .. }))
        ));
        assert!(matches!(
            header_value("x", "50%"),
            Err(Invalid::Header(InvalidHeader::Value { .. }))
        ));
        assert!(header_value("x", "a\nb").is_err());
        assert_eq!(authority_value(":authority", "h%%"), Ok("h%%".to_string()));
        assert!(authority_value(":authority", "h%").is_err());
        assert!(header_name("x-user").is_ok());
        assert!(header_name("bad header").is_err());
    }

    #[test]
    fn export_to_rules() {
        let v = |e: &[&str]| e.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(export_to(&v(&["*"]), "ns", ExportKind::Config).is_ok());
        assert!(export_to(&v(&[".", "other"]), "ns", ExportKind::Config).is_ok());
        assert_eq!(
            export_to(&v(&["*", "."]), "ns", ExportKind::Config),
            Err(InvalidExportTo::StarWithOthers)
        );
        assert!(matches!(
            export_to(&v(&[".", "ns"]), "ns", ExportKind::Config),
            Err(InvalidExportTo::Duplicate(_))
        ));
        assert!(matches!(
            export_to(&v(&["~"]), "ns", ExportKind::Config),
            Err(InvalidExportTo::Tilde(_))
        ));
        assert!(export_to(&v(&["~"]), "ns", ExportKind::Service).is_ok());
        assert!(matches!(
            export_to(&v(&["Bad_NS"]), "ns", ExportKind::Config),
            Err(InvalidExportTo::Namespace(_))
        ));
    }

    #[test]
    fn istiod_domain_grammar() {
        // Upper case, a `*foo` / `*-foo` first label and a trailing dot pass; a numeric last label fails.
        for ok in [
            "Reviews.Example.COM",
            "*foo.example.com",
            "*-api.example.com",
            "example.com.",
            "*",
            "123",
        ] {
            assert_eq!(wildcard_domain(ok), Ok(()), "{ok}");
        }
        assert!(matches!(
            wildcard_domain("foo.123"),
            Err(InvalidHost::NumericTld { .. })
        ));
        assert!(matches!(
            wildcard_domain("10.0.0.1"),
            Err(InvalidHost::NumericTld { .. })
        ));
        assert!(matches!(
            wildcard_domain("foo*.example.com"),
            Err(InvalidHost::Wildcard(_))
        ));
        assert!(matches!(
            wildcard_domain("a.*.example.com"),
            Err(InvalidHost::Wildcard(_))
        ));
        assert!(matches!(
            wildcard_domain("foo_bar.com"),
            Err(InvalidHost::Label { .. })
        ));
        assert!(matches!(
            wildcard_domain("a..com"),
            Err(InvalidHost::Label { .. })
        ));
        assert_eq!(wildcard_domain(""), Err(InvalidHost::Empty));
        assert!(matches!(
            wildcard_domain(&"a".repeat(256)),
            Err(InvalidHost::TooLong(_))
        ));
        assert_eq!(istio_fqdn("web.default.svc.cluster.local"), Ok(()));
        assert!(istio_fqdn("*.example.com").is_err());
        assert_eq!(
            gateway_bound_domain("outbound_.80_._.foo.example.com", true),
            Ok(())
        );
        assert!(matches!(
            gateway_bound_domain("outbound_.foo.example.com", true),
            Err(InvalidHost::AutoPassthrough(_))
        ));
        // Without SNI matches the name is an ordinary domain (and `_` is not allowed in it).
        assert!(gateway_bound_domain("outbound_.80_._.foo.example.com", false).is_err());
    }

    #[test]
    fn istiod_header_match_names_and_claims() {
        assert!(istio_header_name("x-a,b").is_ok());
        assert!(istio_header_name("x y").is_err());
        assert!(istio_header_name("").is_err());
        assert!(is_jwt_claim_key("@request.auth.claims.group"));
        assert!(is_jwt_claim_key("@Request.Auth.Claims[nested][key]"));
        assert!(!is_jwt_claim_key("@request.auth.claims"));
        assert!(!is_jwt_claim_key("@request.auth.claims."));
        assert!(!is_jwt_claim_key("@request.auth.claims[]"));
    }

    #[test]
    fn retry_on_tokens() {
        assert!(retry_on("5xx,connect-failure,503").is_ok());
        // Go's Atoi and StatusText decide numbers: 425 is named, 599 is not; `+503` reads as 503.
        assert!(retry_on("425,+503").is_ok());
        assert_eq!(
            retry_on("599"),
            Err(InvalidHttpRoute::RetryOn("599".into()))
        );
        assert_eq!(
            retry_on("5xx,"),
            Err(InvalidHttpRoute::RetryOn(String::new()))
        );
        assert_eq!(
            retry_on("5xx, reset"),
            Err(InvalidHttpRoute::RetryOn(" reset".into()))
        );
        assert!(retry_on("bogus").is_err());
    }
}
