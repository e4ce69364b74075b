//! What a client may see: `exportTo` visibility (§1.0, §2.0, §3.1) and the `Sidecar` egress imports
//! that restrict it further (§3.3). Evaluated when a client view is built, never per request.

use crate::policy::{selector_matches, Labels, OutboundTrafficPolicy, Sidecar};

use super::table::{creation_order, host_match_rank};

/// `exportTo` as Istio reads it for a resource in `own_namespace`: empty or `*` = everywhere, `.` = the
/// resource's namespace, `~` = nowhere (ServiceEntry only), else the listed namespaces.
pub fn exported_to(export_to: &[String], own_namespace: &str, client_namespace: &str) -> bool {
    export_to.is_empty()
        || export_to.iter().any(|e| match e.as_str() {
            "*" => true,
            "." => own_namespace == client_namespace,
            "~" => false,
            ns => ns == client_namespace,
        })
}

/// True when host patterns `a` and `b` (each exact, `*.suffix` or `*`) can name the same host
/// (Istio's `host.Name.Matches`): a VirtualService is imported when one of its hosts overlaps an
/// imported host.
pub fn hosts_overlap(a: &str, b: &str) -> bool {
    host_match_rank(a, b).is_some()
        || host_match_rank(b, a).is_some()
        || match (a.strip_prefix('*'), b.strip_prefix('*')) {
            // Two wildcards overlap when one suffix ends with the other (`*.b.c` and `*.c`).
            (Some(sa), Some(sb)) => sa.ends_with(sb) || sb.ends_with(sa),
            _ => false,
        }
}

/// Which namespaces an egress host entry names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NamespaceSel {
    /// `*` (and the bare `~` of an exclusion).
    Any,
    /// `.`: the client's namespace (also for the root-namespace default Sidecar, which Istio applies
    /// as if it were written in the client's namespace).
    Client,
    Named(String),
}

/// One parsed `namespace/dnsName` entry of `egress[].hosts`.
#[derive(Debug, Clone)]
struct HostImport {
    /// `~ns/host`: removes what it matches from the listener's imports.
    exclude: bool,
    namespace: NamespaceSel,
    host: String,
}

impl HostImport {
    fn parse(entry: &str) -> Option<HostImport> {
        let (ns, host) = entry.split_once('/')?;
        let (exclude, ns) = match ns.strip_prefix('~') {
            Some(rest) if !rest.is_empty() => (true, rest),
            // A bare `~/host`: the classic "import nothing" when the host is `*`; read as an
            // exclusion over any namespace, which has the same effect and also covers `~/foo.com`.
            Some(_) => (true, "*"),
            None => (false, ns),
        };
        let namespace = match ns {
            "*" => NamespaceSel::Any,
            "." => NamespaceSel::Client,
            n => NamespaceSel::Named(n.to_string()),
        };
        Some(HostImport {
            exclude,
            namespace,
            host: host.to_ascii_lowercase(),
        })
    }

    fn namespace_matches(&self, namespace: &str, client_namespace: &str) -> bool {
        match &self.namespace {
            NamespaceSel::Any => true,
            NamespaceSel::Client => namespace == client_namespace,
            NamespaceSel::Named(n) => n == namespace,
        }
    }
}

/// One egress listener: an optional port and its host entries.
#[derive(Debug, Clone)]
struct EgressListener {
    port: Option<u16>,
    hosts: Vec<HostImport>,
}

impl EgressListener {
    /// Imported by this listener: some include entry matches and no exclusion does.
    fn imports(&self, pred: impl Fn(&HostImport) -> bool) -> bool {
        let mut included = false;
        for h in &self.hosts {
            if pred(h) {
                if h.exclude {
                    return false;
                }
                included = true;
            }
        }
        included
    }
}

/// The egress scope a client gets from its `Sidecar` (or the implicit "import everything").
#[derive(Debug, Clone)]
pub struct EgressScope {
    /// `namespace/name` of the Sidecar in force, for logs; `None` = no Sidecar, everything imported.
    pub sidecar: Option<String>,
    /// `None` = import everything (`*/*`).
    listeners: Option<Vec<EgressListener>>,
    /// The Sidecar's override of the mesh outbound traffic policy.
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

impl EgressScope {
    /// No Sidecar: every exported service and VirtualService is imported.
    pub fn everything() -> Self {
        Self {
            sidecar: None,
            listeners: None,
            outbound_traffic_policy: None,
        }
    }

    /// The scope of one `Sidecar`.
    pub fn from_sidecar(sidecar: &Sidecar) -> Self {
        let listeners = sidecar
            .egress
            .iter()
            .map(|e| EgressListener {
                port: e.port,
                hosts: e
                    .hosts
                    .iter()
                    .filter_map(|h| HostImport::parse(h))
                    .collect(),
            })
            .collect();
        Self {
            sidecar: Some(format!("{}/{}", sidecar.meta.namespace, sidecar.meta.name)),
            listeners: Some(listeners),
            outbound_traffic_policy: sidecar.outbound_traffic_policy,
        }
    }

    /// Whether the client imports service `hostname` in `namespace` on `port`.
    pub fn imports_service(
        &self,
        client_namespace: &str,
        namespace: &str,
        hostname: &str,
        port: u16,
    ) -> bool {
        let Some(listeners) = &self.listeners else {
            return true;
        };
        listeners.iter().any(|l| {
            l.port.is_none_or(|p| p == port)
                && l.imports(|h| {
                    h.namespace_matches(namespace, client_namespace)
                        && hosts_overlap(&h.host, hostname)
                })
        })
    }

    /// Whether the client imports a VirtualService in `namespace` with `hosts`.
    pub fn imports_virtual_service(
        &self,
        client_namespace: &str,
        namespace: &str,
        hosts: &[String],
    ) -> bool {
        let Some(listeners) = &self.listeners else {
            return true;
        };
        listeners.iter().any(|l| {
            l.imports(|h| {
                h.namespace_matches(namespace, client_namespace)
                    && hosts.iter().any(|vh| hosts_overlap(&h.host, vh))
            })
        })
    }
}

/// The `Sidecar` for a client (§3.3): the oldest one in the client's namespace whose
/// `workloadSelector` matches its labels, else the namespace's selector-less one, else the
/// selector-less one in the root namespace, else none.
pub fn select_sidecar<'a>(
    sidecars: &'a [Sidecar],
    client_namespace: &str,
    client_labels: &Labels,
    root_namespace: &str,
) -> Option<&'a Sidecar> {
    let oldest = |pred: &dyn Fn(&Sidecar) -> bool| {
        sidecars
            .iter()
            .filter(|s| pred(s))
            .min_by_key(|s| creation_order(&s.meta))
    };
    oldest(&|s| {
        s.meta.namespace == client_namespace
            && s.workload_selector
                .as_ref()
                .is_some_and(|sel| selector_matches(sel, client_labels))
    })
    .or_else(|| oldest(&|s| s.meta.namespace == client_namespace && s.workload_selector.is_none()))
    .or_else(|| oldest(&|s| s.meta.namespace == root_namespace && s.workload_selector.is_none()))
}
