//! VirtualService `tls` rules: routing TLS by SNI without terminating it (§1.16).
//!
//! Istio turns the `tls` rules of a TLS/HTTPS service port into Envoy filter chains, and Envoy picks a
//! chain the way [`TlsRoutes`] does:
//! - static conditions (`port`, `sourceLabels`, `sourceNamespace`, `gateways`) are decided per client
//!   when the view is built; a port whose rules all fail them has no `tls` routes for that client and
//!   is relayed as opaque TCP to the service (Istio's default filter chain);
//! - `destinationSubnets` are compared with the original destination, which is fixed per view slot,
//!   so they are decided at build time too: only the blocks with the most specific subnet containing
//!   the destination count (no subnet = `0.0.0.0/0`), as Envoy matches destination IPs before names;
//! - `sniHosts` are matched per connection: an exact name first, then the longest wildcard suffix
//!   (`*.example.com` covers `a.example.com` and `a.b.example.com`, not `example.com`);
//! - a name listed by several blocks goes to the first (Istio keeps the first of identical runtime
//!   predicates);
//! - a connection no block matches (another name, no SNI, not TLS at all) takes Istio's fallthrough
//!   chain: `PassthroughCluster` under `ALLOW_ANY`, `BlackHoleCluster` under `REGISTRY_ONLY`. A node
//!   proxy reaches the service's endpoints directly instead of passing through to the cluster IP
//!   (which kube-proxy would spread over the same endpoints), so it relays to the service's default
//!   route, or closes.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::policy::{L4Match, OutboundTrafficPolicy};

use super::target::{Target, WeightedTargets};
use super::view::{ClientView, Outbound};
use super::{ClientInfo, TcpDecision, Unmet};

/// One `tls` rule as a client sees it on one service port.
#[derive(Debug, Clone)]
pub struct TlsRule {
    /// `VirtualService namespace/name tls[i]`, for logs.
    pub name: String,
    /// The rule's destinations, resolved for the client; one is picked per connection by weight.
    pub targets: WeightedTargets,
}

/// The `tls` rules of one client on one TLS/HTTPS service port, compiled when the view is built.
#[derive(Debug, Clone, Default)]
pub struct TlsRoutes {
    rules: Vec<TlsRule>,
    /// Lower-case server name -> index into `rules`.
    exact: HashMap<String, usize>,
    /// Wildcard suffix with its leading dot (`.example.com` for `*.example.com`) -> index.
    wildcard: HashMap<String, usize>,
}

/// Builds [`TlsRoutes`] from the statically matching blocks of a port's `tls` rules, in rule order.
#[derive(Debug, Default)]
pub struct TlsRoutesBuilder {
    rules: Vec<TlsRule>,
    /// (destination specificity, rule index, server names) of each block that holds.
    blocks: Vec<(u8, usize, Vec<String>)>,
}

impl TlsRoutesBuilder {
    /// Adds one rule with the server names of its blocks that hold for the destination, each with
    /// its destination specificity (see [`block_specificity`]). A rule without such blocks is skipped.
    pub fn add_rule(&mut self, rule: TlsRule, blocks: Vec<(u8, Vec<String>)>) {
        if blocks.is_empty() {
            return;
        }
        let index = self.rules.len();
        self.rules.push(rule);
        self.blocks.extend(
            blocks
                .into_iter()
                .map(|(specificity, names)| (specificity, index, names)),
        );
    }

    /// The routes: only the blocks of the most specific destination match take part.
    pub fn build(self) -> TlsRoutes {
        let best = self.blocks.iter().map(|b| b.0).max();
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (_, rule, names) in self.blocks.into_iter().filter(|b| Some(b.0) == best) {
            for name in names {
                let name = name.to_ascii_lowercase();
                match name.strip_prefix('*') {
                    // `*` alone (never valid for a mesh VirtualService) covers every name.
                    Some(suffix) if suffix.is_empty() || suffix.starts_with('.') => {
                        wildcard.entry(suffix.to_string()).or_insert(rule);
                    }
                    _ => {
                        exact.entry(name).or_insert(rule);
                    }
                }
            }
        }
        TlsRoutes {
            rules: self.rules,
            exact,
            wildcard,
        }
    }
}

impl TlsRoutes {
    /// Every target of every rule.
    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        self.rules
            .iter()
            .flat_map(|r| r.targets.targets.iter().map(|t| &t.target))
    }

    /// The rule a connection with server name `sni` takes: an exact name, then the longest wildcard
    /// suffix; `None` when no block matches (or the client sent no SNI).
    pub fn rule_for(&self, sni: Option<&str>) -> Option<&TlsRule> {
        let sni = sni?.to_ascii_lowercase();
        let index = self.exact.get(&sni).or_else(|| {
            // Suffixes from the longest: for `a.b.c` try `.b.c`, then `.c`; the name's first label
            // always stays in front of the wildcard.
            sni.char_indices()
                .skip(1)
                .filter(|&(_, c)| c == '.')
                .find_map(|(i, _)| sni.get(i..).and_then(|s| self.wildcard.get(s)))
                .or_else(|| self.wildcard.get(""))
        })?;
        self.rules.get(*index)
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[TlsRule] {
        &self.rules
    }
}

/// Static conditions of a `tls` match block (Istio's `matchTLS`): `port`, `gateways`, `sourceLabels`
/// and `sourceNamespace` must all hold. Unlike HTTP, naming gateways does not skip the source checks.
pub(crate) fn tls_static_match(m: &L4Match, port: u16, client: &ClientInfo) -> bool {
    tls_static_mismatch(m, port, client).is_none()
}

/// The first static condition of a `tls` match block that fails for the client.
pub fn tls_static_mismatch(m: &L4Match, port: u16, client: &ClientInfo) -> Option<Unmet<'static>> {
    if let Some(p) = m.port.filter(|&p| p != port) {
        return Some(Unmet::Port(p));
    }
    if !(m.gateways.is_empty() || m.gateways.iter().any(|g| g == "mesh")) {
        return Some(Unmet::Gateways);
    }
    super::source_mismatch(&m.source_labels, &m.source_namespace, client)
}

/// How specifically a block's `destinationSubnets` match `dst`: the longest prefix containing it,
/// 0 for a block without subnets (Envoy treats that as `0.0.0.0/0`), `None` when none contains it.
pub(crate) fn block_specificity(m: &L4Match, dst: SocketAddr) -> Option<u8> {
    if m.destination_subnets.is_empty() {
        return Some(0);
    }
    m.destination_subnets
        .iter()
        .filter(|s| super::subnet_contains(s, dst.ip()))
        .map(|s| prefix_len(s, dst))
        .max()
}

/// The prefix length of `a.b.c.d/len`; a bare address is a host route.
fn prefix_len(subnet: &str, dst: SocketAddr) -> u8 {
    let host = if dst.ip().to_canonical().is_ipv4() {
        32
    } else {
        128
    };
    subnet
        .split_once('/')
        .and_then(|(_, l)| l.parse::<u8>().ok())
        .map_or(host, |l| l.min(host))
}

/// Route a TLS connection of a client that dialled `original_dst` and sent server name `sni`
/// (`None`: no SNI, or not a TLS ClientHello). Ports without `tls` routes for the client take the
/// default route; see the module documentation for the rest.
pub fn route_tls<'a>(
    view: &'a ClientView,
    original_dst: SocketAddr,
    sni: Option<&str>,
) -> TcpDecision<'a> {
    match view.lookup(original_dst) {
        Outbound::Service(routes) => match &routes.tls {
            None => TcpDecision::Forward(&routes.default_target),
            Some(tls) => match tls.rule_for(sni) {
                Some(rule) => rule
                    .targets
                    .pick()
                    .map_or(TcpDecision::Close, |t| TcpDecision::Forward(&t.target)),
                None => match view.outbound_traffic_policy {
                    OutboundTrafficPolicy::AllowAny => TcpDecision::Forward(&routes.default_target),
                    OutboundTrafficPolicy::RegistryOnly => TcpDecision::Close,
                },
            },
        },
        Outbound::Passthrough { .. } => TcpDecision::Passthrough(view.passthrough()),
        Outbound::Blocked { .. } => TcpDecision::Close,
    }
}

/// True when connections to `original_dst` are routed by SNI for this client, so the proxy must read
/// the ClientHello before choosing an upstream.
pub fn routes_by_sni(view: &ClientView, original_dst: SocketAddr) -> bool {
    matches!(view.lookup(original_dst), Outbound::Service(r) if r.tls.is_some())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::routing::{RouteTable, Target};
    use crate::upstream::ClusterRegistry;

    /// `secure` (10.96.0.50:443, port named `port_name`) over pods v1 (10.244.0.10) and v2
    /// (10.244.0.11), a DestinationRule with subsets v1/v2, `extra` documents, and one client pod in
    /// `default` labelled `app: sleep` and one in `other`.
    fn table(port_name: &str, extra: &str) -> RouteTable {
        let mut yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: secure, namespace: default}}\n\
             spec:\n  clusterIP: 10.96.0.50\n  selector: {{app: secure}}\n  ports:\n  \
             - {{name: {port_name}, port: 443, targetPort: 8443}}\n\
             ---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
             metadata: {{name: secure, namespace: default}}\nspec:\n  host: secure\n  subsets:\n  \
             - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n"
        );
        for (i, v) in ["v1", "v2"].iter().enumerate() {
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: secure-{v}, namespace: default, labels: {{app: secure, version: {v}}}}}\n\
                 spec: {{containers: [{{name: c, image: i}}]}}\nstatus: {{podIP: 10.244.0.{}}}\n",
                10 + i
            ));
        }
        for (name, ns) in [("sleep", "default"), ("other", "other")] {
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: sleep}}}}\n\
                 spec: {{containers: [{{name: c, image: i}}]}}\n"
            ));
        }
        if !extra.is_empty() {
            yaml.push_str("---\n");
            yaml.push_str(extra);
        }
        let report = crate::policy::build(&crate::source::split_documents("tls.yaml", &yaml));
        let errors: Vec<String> = report.errors.iter().map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "fixture errors:\n{}", errors.join("\n"));
        RouteTable::build(&report.snapshot, &ClusterRegistry::default())
    }

    fn view(table: &RouteTable, ns: &str) -> Arc<ClientView> {
        let client = ClientInfo {
            namespace: ns.into(),
            labels: BTreeMap::from([("app".to_string(), "sleep".to_string())]),
        };
        Arc::clone(table.view_for(&client).expect("a view for the client"))
    }

    /// What happens to a connection: the endpoints of the target, `passthrough` or `close`.
    fn decide(view: &ClientView, dst: &str, sni: Option<&str>) -> String {
        match route_tls(view, dst.parse().expect("dst"), sni) {
            TcpDecision::Forward(Target::Cluster(c)) => {
                let mut addrs: Vec<String> =
                    c.endpoint_addrs().iter().map(|a| a.to_string()).collect();
                addrs.sort();
                addrs.join(",")
            }
            TcpDecision::Forward(t) => format!("other {}", t.key()),
            TcpDecision::Passthrough(_) => "passthrough".into(),
            TcpDecision::Close => "close".into(),
        }
    }

    const DST: &str = "10.96.0.50:443";
    const V1: &str = "10.244.0.10:8443";
    const V2: &str = "10.244.0.11:8443";
    const ALL: &str = "10.244.0.10:8443,10.244.0.11:8443";

    fn vs(name: &str, hosts: &str, tls: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: default}}\n\
             spec:\n  hosts: {hosts}\n  tls:\n{tls}"
        )
    }

    fn rule(matches: &str, subset: &str) -> String {
        format!(
            "  - match:\n{matches}    route:\n    - destination: {{host: secure, subset: {subset}}}\n"
        )
    }

    const SNI_RULES: &str = "[secure, \"*.example.com\"]";

    #[test]
    fn server_names_match_exact_then_longest_wildcard() {
        let tls = [
            rule("    - sniHosts: [\"*.example.com\"]\n", "v2"),
            rule("    - sniHosts: [a.example.com]\n", "v1"),
            rule("    - sniHosts: [\"*.b.example.com\"]\n", "v1"),
        ]
        .concat();
        for port_name in ["tls", "https"] {
            let t = table(port_name, &vs("secure", SNI_RULES, &tls));
            let v = view(&t, "default");
            let cases = [
                // Envoy prefers the exact name although the wildcard rule comes first.
                (Some("a.example.com"), V1),
                (Some("A.Example.COM"), V1),
                (Some("b.example.com"), V2),
                (Some("x.y.example.com"), V2),
                (Some("c.b.example.com"), V1),
                // `*.b.example.com` does not cover `b.example.com` itself.
                (Some("b.example.com"), V2),
                // `*.example.com` does not cover `example.com`: no rule, default route.
                (Some("example.com"), ALL),
                (Some("other.org"), ALL),
                (Some("a.example.com.evil"), ALL),
                (None, ALL),
            ];
            for (sni, want) in cases {
                assert_eq!(decide(&v, DST, sni), want, "{port_name} {sni:?}");
            }
        }
    }

    #[test]
    fn unmatched_connections_close_under_registry_only() {
        let tls = rule("    - sniHosts: [a.example.com]\n", "v1");
        let mesh = "apiVersion: keel.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: keel}\n\
                    spec:\n  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n---\n";
        let t = table("tls", &format!("{mesh}{}", vs("secure", SNI_RULES, &tls)));
        let v = view(&t, "default");
        assert_eq!(decide(&v, DST, Some("a.example.com")), V1);
        assert_eq!(decide(&v, DST, Some("b.example.com")), "close");
        assert_eq!(decide(&v, DST, None), "close");
        // Without applicable tls rules the port is plain TCP to the service, whatever the policy.
        let t = table("tls", mesh.trim_end_matches("---\n"));
        assert_eq!(decide(&view(&t, "default"), DST, None), ALL);
    }

    #[test]
    fn static_conditions_are_decided_per_client() {
        let tls = [
            rule(
                "    - sniHosts: [a.example.com]\n      sourceNamespace: other\n",
                "v2",
            ),
            rule(
                "    - sniHosts: [a.example.com]\n      port: 8443\n",
                "v2",
            ),
            rule(
                "    - sniHosts: [a.example.com]\n      sourceLabels: {app: sleep}\n      gateways: [mesh]\n",
                "v1",
            ),
        ]
        .concat();
        let t = table("tls", &vs("secure", SNI_RULES, &tls));
        // `other` matches the first rule; `default` only the third (port 8443 is not the service port).
        assert_eq!(decide(&view(&t, "other"), DST, Some("a.example.com")), V2);
        assert_eq!(decide(&view(&t, "default"), DST, Some("a.example.com")), V1);
        // A rule bound only to a gateway never applies: no tls routes, so no SNI is needed either.
        let gw = rule(
            "    - sniHosts: [a.example.com]\n      gateways: [default/ingress]\n",
            "v1",
        );
        let gateway = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: ingress, namespace: default}\n\
                       spec:\n  selector: {istio: ingress}\n  servers:\n  - port: {number: 443, name: tls, protocol: TLS}\n    hosts: [\"*\"]\n    tls: {mode: PASSTHROUGH}\n---\n";
        let t = table("tls", &format!("{gateway}{}", vs("secure", SNI_RULES, &gw)));
        let v = view(&t, "default");
        assert!(!routes_by_sni(&v, DST.parse().expect("dst")));
        assert_eq!(decide(&v, DST, Some("a.example.com")), ALL);
    }

    #[test]
    fn the_most_specific_destination_subnet_wins_before_names() {
        let tls = [
            rule("    - sniHosts: [a.example.com]\n", "v1"),
            rule(
                "    - sniHosts: [b.example.com]\n      destinationSubnets: [10.96.0.0/16]\n",
                "v2",
            ),
            rule(
                "    - sniHosts: [c.example.com]\n      destinationSubnets: [10.0.0.0/8]\n",
                "v1",
            ),
            rule(
                "    - sniHosts: [a.example.com]\n      destinationSubnets: [192.0.2.0/24]\n",
                "v2",
            ),
        ]
        .concat();
        let t = table("tls", &vs("secure", SNI_RULES, &tls));
        let v = view(&t, "default");
        // Only the /16 block takes part: `a` (no subnet) and `c` (/8) are less specific.
        assert_eq!(decide(&v, DST, Some("b.example.com")), V2);
        assert_eq!(decide(&v, DST, Some("a.example.com")), ALL);
        assert_eq!(decide(&v, DST, Some("c.example.com")), ALL);
    }

    #[test]
    fn first_rule_wins_for_a_repeated_name_and_rules_merge_across_virtual_services() {
        let first = [
            rule("    - sniHosts: [a.example.com]\n", "v1"),
            rule("    - sniHosts: [a.example.com, b.example.com]\n", "v2"),
        ]
        .concat();
        let second = rule("    - sniHosts: [c.example.com]\n", "v2");
        let docs = format!(
            "{}---\n{}",
            vs("secure", SNI_RULES, &first),
            vs("secure-more", "[secure, c.example.com]", &second)
        );
        let t = table("tls", &docs);
        let v = view(&t, "default");
        assert_eq!(decide(&v, DST, Some("a.example.com")), V1);
        assert_eq!(decide(&v, DST, Some("b.example.com")), V2);
        assert_eq!(decide(&v, DST, Some("c.example.com")), V2);
    }

    #[test]
    fn weights_split_connections() {
        let tls = "  - match:\n    - sniHosts: [a.example.com]\n    route:\n    \
                   - destination: {host: secure, subset: v1}\n      weight: 80\n    \
                   - destination: {host: secure, subset: v2}\n      weight: 20\n";
        let t = table("tls", &vs("secure", SNI_RULES, tls));
        let v = view(&t, "default");
        let mut v1 = 0u32;
        for _ in 0..10_000 {
            match decide(&v, DST, Some("a.example.com")).as_str() {
                V1 => v1 += 1,
                V2 => {}
                other => panic!("unexpected {other}"),
            }
        }
        // 80% of 10,000: sigma = 40, so 7,800..8,200 is five sigma.
        assert!((7_800..=8_200).contains(&v1), "{v1} of 10000 to v1");
    }

    #[test]
    fn tcp_rules_do_not_apply_to_tls_ports_nor_tls_rules_to_tcp_ports() {
        let both = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: secure, namespace: default}\n\
                    spec:\n  hosts: [secure, a.example.com]\n  tcp:\n  - route:\n    - destination: {host: secure, subset: v2}\n  \
                    tls:\n  - match:\n    - sniHosts: [a.example.com]\n    route:\n    - destination: {host: secure, subset: v1}\n";
        let t = table("tls", both);
        let v = view(&t, "default");
        assert_eq!(decide(&v, DST, Some("a.example.com")), V1);
        assert_eq!(decide(&v, DST, Some("b.example.com")), ALL);
        let tcp = |t: &RouteTable| match crate::routing::route_tcp(
            &view(t, "default"),
            DST.parse().expect("dst"),
        ) {
            TcpDecision::Forward(Target::Cluster(c)) => c.endpoint_addrs().len(),
            _ => 0,
        };
        // On a tls port the tcp rule is ignored (default route, both endpoints) ...
        assert_eq!(tcp(&t), 2);
        // ... and on a tcp port it applies (subset v2) and no SNI is read; the same on an
        // auto-detect port (Istio builds tls filter chains only for TLS/HTTPS ports), even when the
        // client's first bytes are a ClientHello.
        for port_name in ["tcp", "unnamed-auto"] {
            let t = table(port_name, both);
            assert_eq!(tcp(&t), 1, "{port_name}");
            assert!(
                !routes_by_sni(&view(&t, "default"), DST.parse().expect("dst")),
                "{port_name}"
            );
        }
    }

    #[test]
    fn unknown_destinations_follow_the_outbound_policy() {
        let t = table("tls", "");
        let v = view(&t, "default");
        assert_eq!(
            decide(&v, "198.51.100.7:443", Some("a.example.com")),
            "passthrough"
        );
    }
}
