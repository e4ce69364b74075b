//! A pod's Istio sidecar traffic annotations (`traffic.sidecar.istio.io/*`) -> [`OutboundTraffic`].
//!
//! Values are read as istiod's sidecar injector validates them: a comma-separated list with no
//! empty entries; ports are decimal numbers 0..=65535 (spaces around each allowed), IP ranges are
//! CIDRs in Go's `netip.ParsePrefix` form (an address and a prefix length, no spaces, no zone);
//! `*` stands for every range in `includeOutboundIPRanges` and every port in
//! `includeInboundPorts`, and nowhere else. An empty value is an empty list: for
//! `includeOutboundIPRanges` that means no address is captured (only `includeOutboundPorts` are).
//!
//! Keel applies the four outbound annotations in the kernel. Keel never intercepts inbound
//! traffic: connections to a pod always arrive directly, so `excludeInboundPorts` holds by itself
//! and `includeInboundPorts` is reported as not applied.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::Ctx;
use crate::policy::error::*;
use crate::policy::model::*;
use crate::source::FieldPath;

/// `traffic.sidecar.istio.io/excludeOutboundPorts`.
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
/// `traffic.sidecar.istio.io/includeOutboundPorts`.
pub const INCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeOutboundPorts";
/// `traffic.sidecar.istio.io/excludeOutboundIPRanges`.
pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
/// `traffic.sidecar.istio.io/includeOutboundIPRanges`.
pub const INCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
/// `traffic.sidecar.istio.io/excludeInboundPorts`.
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
/// `traffic.sidecar.istio.io/includeInboundPorts`.
pub const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";

/// Most ports per outbound port list (the kernel's fixed-size rule set).
pub const PORTS_MAX: usize = proxy_common::TRAFFIC_PORTS_MAX;
/// Most ranges per outbound range list.
pub const RANGES_MAX: usize = proxy_common::TRAFFIC_CIDRS_MAX;

/// Reads the pod's traffic annotations; `None` when it sets no outbound one. Errors and warnings go
/// to `ctx` at `metadata.annotations[<name>]`.
pub(super) fn outbound(
    ctx: &mut Ctx<'_>,
    annotations: &std::collections::BTreeMap<String, String>,
) -> Option<OutboundTraffic> {
    let path = |name: &str| {
        FieldPath::root()
            .key("metadata")
            .key("annotations")
            .key(name)
    };

    // Inbound: validated, never applied (Keel does not intercept inbound traffic).
    if let Some(v) = annotations.get(EXCLUDE_INBOUND_PORTS) {
        ctx.check(&path(EXCLUDE_INBOUND_PORTS), ports(v, false, usize::MAX));
    }
    if let Some(v) = annotations.get(INCLUDE_INBOUND_PORTS) {
        let p = path(INCLUDE_INBOUND_PORTS);
        if ctx.check(&p, ports(v, true, usize::MAX)).is_some() && !v.trim().is_empty() {
            ctx.not_applied(
                &p,
                Some(
                    "Keel does not intercept inbound traffic: connections to this pod always \
                     arrive directly, on every port",
                ),
            );
        }
    }

    let names = [
        EXCLUDE_OUTBOUND_PORTS,
        INCLUDE_OUTBOUND_PORTS,
        EXCLUDE_OUTBOUND_IP_RANGES,
        INCLUDE_OUTBOUND_IP_RANGES,
    ];
    if !names.iter().any(|n| annotations.contains_key(*n)) {
        return None;
    }
    let port_list = |ctx: &mut Ctx<'_>, name: &str| -> Vec<u16> {
        match annotations.get(name) {
            None => Vec::new(),
            Some(v) => ctx
                .check(&path(name), ports(v, false, PORTS_MAX))
                .map(PortList::into_ports)
                .unwrap_or_default(),
        }
    };
    let exclude_ports = port_list(ctx, EXCLUDE_OUTBOUND_PORTS);
    let include_ports = port_list(ctx, INCLUDE_OUTBOUND_PORTS);
    let exclude_ranges = match annotations.get(EXCLUDE_OUTBOUND_IP_RANGES) {
        None => Vec::new(),
        Some(v) => ctx
            .check(&path(EXCLUDE_OUTBOUND_IP_RANGES), ranges(v, false))
            .map(|r| match r {
                IncludeRanges::Only(list) => list,
                // `ranges(_, false)` never returns `All`.
                IncludeRanges::All => Vec::new(),
            })
            .unwrap_or_default(),
    };
    let include_ranges = match annotations.get(INCLUDE_OUTBOUND_IP_RANGES) {
        None => IncludeRanges::All,
        Some(v) => ctx
            .check(&path(INCLUDE_OUTBOUND_IP_RANGES), ranges(v, true))
            .unwrap_or(IncludeRanges::All),
    };
    Some(OutboundTraffic {
        exclude_ports,
        include_ports,
        exclude_ranges,
        include_ranges,
    })
}

/// A parsed port annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PortList {
    /// `*`.
    All,
    /// The ports, sorted and deduplicated.
    Only(Vec<u16>),
}

impl PortList {
    fn into_ports(self) -> Vec<u16> {
        match self {
            PortList::All => Vec::new(),
            PortList::Only(p) => p,
        }
    }
}

/// A comma-separated port list; `*` only if `star`; at most `max` distinct ports.
fn ports(value: &str, star: bool, max: usize) -> Result<PortList, Invalid> {
    // istiod compares the untrimmed value with `*`, then trims the list.
    if value == "*" && star {
        return Ok(PortList::All);
    }
    let value = value.trim();
    if value == "*" {
        return Err(Invalid::Other(
            "\"*\" is not a port (only includeInboundPorts and includeOutboundIPRanges take \"*\")"
                .into(),
        ));
    }
    if value.is_empty() {
        return Ok(PortList::Only(Vec::new()));
    }
    let mut set = BTreeSet::new();
    for entry in value.split(',') {
        let e = entry.trim();
        // Go's ParseUint: decimal digits only (no sign, no range), at most 65535.
        let port = if !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()) {
            e.parse::<u16>().ok()
        } else {
            None
        };
        let Some(port) = port else {
            return Err(Invalid::Other(format!(
                "{entry:?} is not a port number (a comma-separated list of numbers 0 to 65535, \
                 no ranges)"
            )));
        };
        set.insert(port);
    }
    if set.len() > max {
        return Err(Invalid::Other(format!(
            "{} ports: Keel's kernel rules hold at most {max} per list",
            set.len()
        )));
    }
    Ok(PortList::Only(set.into_iter().collect()))
}

/// A comma-separated CIDR list; `*` (every address) only if `star`; at most [`RANGES_MAX`]
/// distinct ranges.
fn ranges(value: &str, star: bool) -> Result<IncludeRanges, Invalid> {
    if value == "*" {
        return if star {
            Ok(IncludeRanges::All)
        } else {
            Err(Invalid::Other(
                "\"*\" is not a CIDR (to capture no address, set includeOutboundIPRanges to \"\")"
                    .into(),
            ))
        };
    }
    if value.is_empty() {
        return Ok(IncludeRanges::Only(Vec::new()));
    }
    let mut list: Vec<IpRange> = Vec::new();
    for entry in value.split(',') {
        let range = cidr(entry).ok_or_else(|| {
            Invalid::Other(format!(
                "{entry:?} is not a CIDR (address/prefix length, e.g. 10.96.0.0/12; no spaces)"
            ))
        })?;
        if !list.contains(&range) {
            list.push(range);
        }
    }
    if list.len() > RANGES_MAX {
        return Err(Invalid::Other(format!(
            "{} ranges: Keel's kernel rules hold at most {RANGES_MAX} per list",
            list.len()
        )));
    }
    Ok(IncludeRanges::Only(list))
}

/// One CIDR as Go's `netip.ParsePrefix` reads it: an address (no zone), `/`, and a decimal prefix
/// length without sign or leading zero, at most the family's width.
fn cidr(s: &str) -> Option<IpRange> {
    let (addr, len) = s.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    if len.is_empty()
        || !len.bytes().all(|b| b.is_ascii_digit())
        || (len.len() > 1 && len.starts_with('0'))
    {
        return None;
    }
    let prefix_len: u8 = len.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (prefix_len <= max).then_some(IpRange { addr, prefix_len })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> IpRange {
        let (a, l) = s.split_once('/').expect("cidr");
        IpRange {
            addr: a.parse().expect("ip"),
            prefix_len: l.parse().expect("len"),
        }
    }

    #[test]
    fn port_lists() {
        let ok: &[(&str, bool, PortList)] = &[
            ("", false, PortList::Only(vec![])),
            ("  ", false, PortList::Only(vec![])),
            ("80", false, PortList::Only(vec![80])),
            ("8080, 80 ,80", false, PortList::Only(vec![80, 8080])),
            ("0,65535", false, PortList::Only(vec![0, 65535])),
            ("007", false, PortList::Only(vec![7])),
            ("*", true, PortList::All),
        ];
        for (v, star, want) in ok {
            assert_eq!(ports(v, *star, PORTS_MAX).as_ref(), Ok(want), "{v:?}");
        }
        for bad in [
            "*", "80,", ",80", "80,,81", "65536", "-1", "+80", "80-90", "http", "8O", "1e3",
            "80;81", "*,80",
        ] {
            assert!(ports(bad, false, PORTS_MAX).is_err(), "{bad:?}");
        }
        assert!(ports("*,80", true, PORTS_MAX).is_err());
        assert!(ports(" * ", true, PORTS_MAX).is_err());
        let many: Vec<String> = (1..=33).map(|p| p.to_string()).collect();
        let err = ports(&many.join(","), false, PORTS_MAX).expect_err("too many");
        assert_eq!(
            err.to_string(),
            "33 ports: Keel's kernel rules hold at most 32 per list"
        );
        // Duplicates count once.
        let dup: Vec<String> = (1..=32).chain(1..=32).map(|p| p.to_string()).collect();
        assert!(ports(&dup.join(","), false, PORTS_MAX).is_ok());
    }

    #[test]
    fn range_lists() {
        assert_eq!(ranges("*", true), Ok(IncludeRanges::All));
        assert_eq!(ranges("", true), Ok(IncludeRanges::Only(vec![])));
        assert_eq!(
            ranges(
                "10.96.0.0/12,10.96.0.0/12,fd00::/8,10.0.0.1/8,0.0.0.0/0",
                false
            ),
            Ok(IncludeRanges::Only(vec![
                r("10.96.0.0/12"),
                r("fd00::/8"),
                r("10.0.0.1/8"),
                r("0.0.0.0/0"),
            ]))
        );
        for bad in [
            "*",
            "10.0.0.1",
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0.0/8, 192.168.0.0/16",
            " 10.0.0.0/8",
            "10.0.0.0/8,",
            "10.0.0.0/",
            "10.0.0.0/08",
            "10.0.0.0/+8",
            "010.0.0.0/8",
            "fe80::1%eth0/64",
            "10.0.0.0/8,*",
            "example.com/8",
        ] {
            assert!(ranges(bad, false).is_err(), "{bad:?}");
        }
        assert!(ranges("10.0.0.0/8,*", true).is_err());
        assert_eq!(
            ranges("*", false)
                .expect_err("star in an exclude list")
                .to_string(),
            "\"*\" is not a CIDR (to capture no address, set includeOutboundIPRanges to \"\")"
        );
        let many: Vec<String> = (0..17).map(|i| format!("10.{i}.0.0/16")).collect();
        assert_eq!(
            ranges(&many.join(","), false)
                .expect_err("too many")
                .to_string(),
            "17 ranges: Keel's kernel rules hold at most 16 per list"
        );
    }
}
