//! A captured pod's outbound capture rules (Istio's `traffic.sidecar.istio.io/*` annotations, as
//! converted into [`OutboundTraffic`]) in the kernel's form, and the decision they make for one
//! destination, worded for `keel explain` and the admin API.
//!
//! The decision is `proxy_common::TrafficRules::decide`, the very function the connect hooks run,
//! so what explain says and what the kernel does cannot disagree. Istio's order, first match wins:
//!
//! | # | the destination's                        | connection |
//! |---|------------------------------------------|------------|
//! | 1 | port is in `excludeOutboundPorts`        | direct     |
//! | 2 | port is in `includeOutboundPorts`        | captured, whatever the address |
//! | 3 | address is in `excludeOutboundIPRanges`  | direct     |
//! | 4 | address is in `includeOutboundIPRanges` (default `*`: every address) | captured |
//! | 5 | otherwise                                | direct     |
//!
//! "Captured" still needs a meshed destination (a Service VIP and port, a ServiceEntry address):
//! Keel never captures anything else.

use std::net::{IpAddr, SocketAddr};

use proxy_common::{Cidr, TrafficRules, TrafficVerdict, TRAFFIC_F_INCLUDE_ALL_IPS};

use crate::ebpf::addr_words;
use crate::policy::convert::pod_traffic::{
    EXCLUDE_OUTBOUND_IP_RANGES, EXCLUDE_OUTBOUND_PORTS, INCLUDE_OUTBOUND_IP_RANGES,
    INCLUDE_OUTBOUND_PORTS,
};
use crate::policy::model::{IncludeRanges, IpRange, OutboundTraffic};

/// The kernel's rule set for `t`; `None` when it captures exactly what no rules capture (the pod
/// then needs no `POD_TRAFFIC_RULES` entry). Lists longer than the kernel holds are cut (conversion
/// rejects them, so this never happens to a converted pod).
pub fn kernel_rules(t: &OutboundTraffic) -> Option<TrafficRules> {
    let mut r = TrafficRules::CAPTURE_ALL;
    r.exclude_ports_len = fill(&mut r.exclude_ports, t.exclude_ports.iter().copied());
    r.include_ports_len = fill(&mut r.include_ports, t.include_ports.iter().copied());
    r.exclude_cidrs_len = fill(&mut r.exclude_cidrs, t.exclude_ranges.iter().map(cidr));
    match &t.include_ranges {
        IncludeRanges::All => r.flags |= TRAFFIC_F_INCLUDE_ALL_IPS,
        IncludeRanges::Only(list) => {
            r.flags &= !TRAFFIC_F_INCLUDE_ALL_IPS;
            r.include_cidrs_len = fill(&mut r.include_cidrs, list.iter().map(cidr));
        }
    }
    (!r.is_capture_all()).then_some(r)
}

/// Writes `items` from the start of `slots`; returns how many fit.
fn fill<T>(slots: &mut [T], items: impl Iterator<Item = T>) -> u8 {
    let mut n = 0u8;
    for (slot, item) in slots.iter_mut().zip(items) {
        *slot = item;
        n = n.saturating_add(1);
    }
    n
}

/// The kernel's form of a range: v4 ranges are v4-mapped (`96 +` the prefix length).
fn cidr(range: &IpRange) -> Cidr {
    let len = match range.addr {
        IpAddr::V4(_) => 96 + u32::from(range.prefix_len.min(32)),
        IpAddr::V6(_) => u32::from(range.prefix_len.min(128)),
    };
    Cidr::new(addr_words(range.addr), len).unwrap_or(Cidr::ZERO)
}

/// What the pod's rules decide for a connect to `dest`, with the rule that decided. A pod without
/// rules captures every meshed destination.
pub fn decide(t: Option<&OutboundTraffic>, dest: SocketAddr) -> Decision {
    let Some(rules) = t.and_then(kernel_rules) else {
        return Decision {
            captured: true,
            reason: "no traffic.sidecar.istio.io outbound annotation excludes it".into(),
        };
    };
    let ip = dest.ip().to_canonical();
    let verdict = rules.decide(&addr_words(ip), dest.port());
    let reason = match (verdict, t) {
        (TrafficVerdict::ExcludedPort(_), _) => {
            format!("port {} is in {EXCLUDE_OUTBOUND_PORTS}", dest.port())
        }
        (TrafficVerdict::IncludedPort(_), _) => {
            format!("port {} is in {INCLUDE_OUTBOUND_PORTS}", dest.port())
        }
        (TrafficVerdict::ExcludedRange(i), Some(t)) => format!(
            "{ip} is in {EXCLUDE_OUTBOUND_IP_RANGES} ({})",
            t.exclude_ranges
                .get(i)
                .map_or_else(String::new, ToString::to_string)
        ),
        (TrafficVerdict::IncludedRange(i), Some(t)) => {
            let range = match &t.include_ranges {
                IncludeRanges::Only(list) => list.get(i).map(ToString::to_string),
                IncludeRanges::All => None,
            };
            format!(
                "{ip} is in {INCLUDE_OUTBOUND_IP_RANGES} ({})",
                range.unwrap_or_default()
            )
        }
        (TrafficVerdict::IncludedAll, _) => format!("{INCLUDE_OUTBOUND_IP_RANGES} is \"*\""),
        (TrafficVerdict::NotIncluded, _) => {
            format!("{ip} is in no range of {INCLUDE_OUTBOUND_IP_RANGES}")
        }
        // Ranges come from `t`, so there is always a `t` here.
        (_, None) => String::new(),
    };
    Decision {
        captured: verdict.captures(),
        reason,
    }
}

/// The capture decision for one destination of one pod.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    /// Whether a meshed connect to the destination goes to keel (false: direct).
    pub captured: bool,
    /// The rule that decided, in words.
    pub reason: String,
}

/// The annotations as the admin API shows them (`/config_dump`), in Istio's spelling.
pub fn to_json(t: &OutboundTraffic) -> serde_json::Value {
    let ports = |p: &[u16]| p.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    let ranges = |r: &[IpRange]| {
        r.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    serde_json::json!({
        EXCLUDE_OUTBOUND_PORTS: ports(&t.exclude_ports),
        INCLUDE_OUTBOUND_PORTS: ports(&t.include_ports),
        EXCLUDE_OUTBOUND_IP_RANGES: ranges(&t.exclude_ranges),
        INCLUDE_OUTBOUND_IP_RANGES: match &t.include_ranges {
            IncludeRanges::All => "*".to_string(),
            IncludeRanges::Only(list) => ranges(list),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(s: &str) -> IpRange {
        let (a, l) = s.split_once('/').expect("cidr");
        IpRange {
            addr: a.parse().expect("ip"),
            prefix_len: l.parse().expect("len"),
        }
    }

    fn traffic(
        exclude_ports: &[u16],
        include_ports: &[u16],
        exclude: &[&str],
        include: Option<&[&str]>,
    ) -> OutboundTraffic {
        OutboundTraffic {
            exclude_ports: exclude_ports.to_vec(),
            include_ports: include_ports.to_vec(),
            exclude_ranges: exclude.iter().map(|s| range(s)).collect(),
            include_ranges: match include {
                None => IncludeRanges::All,
                Some(list) => IncludeRanges::Only(list.iter().map(|s| range(s)).collect()),
            },
        }
    }

    fn dest(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    #[test]
    fn only_rules_that_change_something_get_an_entry() {
        assert_eq!(kernel_rules(&traffic(&[], &[], &[], None)), None);
        assert_eq!(kernel_rules(&traffic(&[], &[80], &[], None)), None);
        let r =
            kernel_rules(&traffic(&[5432], &[80], &["10.96.8.0/21"], Some(&[]))).expect("rules");
        assert_eq!(
            (
                r.exclude_ports_len,
                r.include_ports_len,
                r.exclude_cidrs_len
            ),
            (1, 1, 1)
        );
        assert_eq!((r.include_cidrs_len, r.flags), (0, 0));
        // 10.96.8.0/21 in the v4-mapped form.
        assert_eq!(r.exclude_cidrs[0].prefix_len(), 96 + 21);
    }

    #[test]
    fn decisions_name_the_rule() {
        let t = traffic(
            &[5432],
            &[9080],
            &["10.96.8.0/21", "fd00:96::/64"],
            Some(&["10.96.0.0/16", "fd00::/8"]),
        );
        let cases = [
            (
                "10.96.0.20:5432",
                false,
                "port 5432 is in traffic.sidecar.istio.io/excludeOutboundPorts",
            ),
            (
                "10.96.9.1:9080",
                true,
                "port 9080 is in traffic.sidecar.istio.io/includeOutboundPorts",
            ),
            (
                "10.96.9.1:80",
                false,
                "10.96.9.1 is in traffic.sidecar.istio.io/excludeOutboundIPRanges (10.96.8.0/21)",
            ),
            (
                "10.96.0.20:80",
                true,
                "10.96.0.20 is in traffic.sidecar.istio.io/includeOutboundIPRanges (10.96.0.0/16)",
            ),
            (
                "10.97.0.20:80",
                false,
                "10.97.0.20 is in no range of traffic.sidecar.istio.io/includeOutboundIPRanges",
            ),
            (
                "[fd00:96::5]:80",
                false,
                "fd00:96::5 is in traffic.sidecar.istio.io/excludeOutboundIPRanges (fd00:96::/64)",
            ),
            (
                "[fd00:1::5]:80",
                true,
                "fd00:1::5 is in traffic.sidecar.istio.io/includeOutboundIPRanges (fd00::/8)",
            ),
            // A v4 range never holds a v6 destination, nor the other way round.
            (
                "[::ffff:10.96.9.1]:80",
                false,
                "10.96.9.1 is in traffic.sidecar.istio.io/excludeOutboundIPRanges (10.96.8.0/21)",
            ),
        ];
        for (d, captured, reason) in cases {
            let got = decide(Some(&t), dest(d));
            assert_eq!(
                (got.captured, got.reason.as_str()),
                (captured, reason),
                "{d}"
            );
        }
        let all = traffic(&[], &[], &["10.96.8.0/21"], None);
        assert_eq!(
            decide(Some(&all), dest("10.96.0.1:80")).reason,
            "traffic.sidecar.istio.io/includeOutboundIPRanges is \"*\""
        );
        let none = decide(None, dest("10.96.0.1:80"));
        assert!(none.captured);
    }

    #[test]
    fn json_uses_istio_spelling() {
        let t = traffic(&[80, 443], &[], &["10.0.0.0/8"], Some(&[]));
        assert_eq!(
            to_json(&t),
            serde_json::json!({
                "traffic.sidecar.istio.io/excludeOutboundPorts": "80,443",
                "traffic.sidecar.istio.io/includeOutboundPorts": "",
                "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.0.0.0/8",
                "traffic.sidecar.istio.io/includeOutboundIPRanges": "",
            })
        );
    }
}
