//! Routing tables: built once per snapshot, read by every request.
//!
//! The table holds one [`ClientView`] per class of equivalent clients (see `view`), built eagerly for
//! every captured pod of the snapshot, so the request path only looks a view up by pod. A view maps
//! each meshed destination (Service cluster IP or ServiceEntry address, port) to the service port the
//! client sees there, with its VirtualService rules already chosen, delegated, filtered by static
//! conditions and resolved to targets through the DestinationRules that apply to that client.
//!
//! Clusters come from the `ClusterRegistry`, so their balancer state survives pushes; a cluster is
//! shared by every view that resolves to the same [`ClusterKey`] (name plus the resources that shaped
//! it).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::policy::{
    selector_matches, Destination, DestinationRule, HashKey, HttpAction, HttpRoute, L4Match,
    Labels, Locality, MeshLocation, Meta, PodId, Protocol, Resolution, Service, Snapshot,
    TrafficPolicy, VirtualService,
};
use crate::upstream::locality::Topology;
use crate::upstream::policy::route_hash_key;
use crate::upstream::{
    ClusterEndpoint, ClusterKey, ClusterPolicy, ClusterRegistry, Discovery, UpstreamProtocol,
};

use super::catalog::{Catalog, CatalogId, Kind, PortInfo};
use super::policy::RoutePolicy;
use super::scope::{exported_to, select_sidecar, EgressScope};
use super::target::{Target, WeightedTarget, WeightedTargets};
use super::tls::{block_specificity, tls_static_match, TlsRoutes, TlsRoutesBuilder, TlsRule};
use super::view::{ClientClass, ClientView, CompiledHttpRoute, ServicePortRoutes};
use super::{static_match, subnet_contains, ClientInfo, Unmet};

/// Gives every table a distinct id, so a connection can tell whether its view is current.
static NEXT_TABLE_ID: AtomicU64 = AtomicU64::new(1);

/// All routing state derived from one snapshot.
#[derive(Debug, Default)]
pub struct RouteTable {
    id: u64,
    /// The label keys that tell client classes apart.
    class_keys: BTreeSet<String>,
    /// Pod -> its class's view (`None` for pods the kernel does not capture).
    views_by_pod: Vec<Option<Arc<ClientView>>>,
    views_by_class: HashMap<ClientClass, Arc<ClientView>>,
    /// Every meshed destination, for callers that only ask "is this meshed at all".
    index: Arc<HashMap<(IpAddr, u16), usize>>,
    /// Service ports taken over from the previous table.
    reused_slots: usize,
}

/// What changed between the snapshot a table was built from and the next one, as far as reusing
/// the first table's routes for the second goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Changes {
    /// Anything (or unknown): every route is built again.
    #[default]
    Everything,
    /// Only VirtualServices changed (added, modified, removed), none of them with a wildcard host,
    /// without hosts (a delegate) or delegating; these are the hosts of their old and new
    /// versions. Only the service ports of these hosts can route differently.
    VirtualServiceHosts(HashSet<String>),
}

impl RouteTable {
    /// Build the table for `snapshot`, reusing clusters from `registry` so their state survives.
    pub fn build(snapshot: &Snapshot, registry: &ClusterRegistry) -> RouteTable {
        Self::build_for_node(snapshot, registry, None)
    }

    /// [`RouteTable::build`] for the proxy on node `node` (its `Node` resource gives the clients'
    /// locality; unknown or `None`: no locality).
    pub fn build_for_node(
        snapshot: &Snapshot,
        registry: &ClusterRegistry,
        node: Option<&str>,
    ) -> RouteTable {
        Self::rebuild_for_node(snapshot, registry, node, None, &Changes::Everything)
    }

    /// [`RouteTable::build_for_node`], taking over from `previous` (the table of the snapshot
    /// before, on the same node) the routes of every service port `changes` cannot have changed:
    /// the result routes exactly as a table built from scratch.
    pub fn rebuild_for_node(
        snapshot: &Snapshot,
        registry: &ClusterRegistry,
        node: Option<&str>,
        previous: Option<&RouteTable>,
        changes: &Changes,
    ) -> RouteTable {
        let started = std::time::Instant::now();
        let mut builder = Builder::new(snapshot, registry);
        let indexed_ms = started.elapsed().as_secs_f64() * 1e3;
        builder.local = node.map(|n| snapshot.node_locality(n)).unwrap_or_default();
        let class_keys = class_label_keys(snapshot);
        builder.reuse = match (previous, changes) {
            (Some(previous), Changes::VirtualServiceHosts(hosts))
                if previous.class_keys == class_keys
                    && *previous.index == *builder.index
                    && !has_delegation(snapshot) =>
            {
                // Slots with a candidate a changed VirtualService names are built again.
                let rebuild = builder
                    .slots
                    .iter()
                    .map(|slot| {
                        slot.candidates
                            .iter()
                            .any(|&(id, _)| hosts.contains(builder.catalog.services[id].hostname))
                    })
                    .collect();
                Some(Reuse {
                    views: previous.views_by_class.clone(),
                    rebuild,
                })
            }
            _ => None,
        };
        // One view per class of the captured pods (only those ever reach the proxy).
        let mut classes: Vec<ClientClass> = Vec::new();
        let mut class_at: HashMap<ClientClass, usize> = HashMap::new();
        let mut class_of_pod = vec![None; snapshot.pods.len()];
        for (pod_id, pod) in snapshot.pods.iter().enumerate() {
            if !pod.capture {
                continue;
            }
            let class = ClientClass::of(&pod.meta.namespace, &pod.labels, &class_keys);
            let at = *class_at.entry(class).or_insert_with_key(|class| {
                classes.push(class.clone());
                classes.len() - 1
            });
            class_of_pod[pod_id] = Some(at);
        }
        let views = builder.views(classes);
        let views_by_pod = class_of_pod
            .into_iter()
            .map(|at| at.and_then(|at| views.get(at)).cloned())
            .collect();
        let views_by_class: HashMap<ClientClass, Arc<ClientView>> =
            views.into_iter().map(|v| (v.class.clone(), v)).collect();
        // A rebuild that takes routes over keeps every cluster unless a route built again dropped
        // one; otherwise every route's clusters are marked and the registry keeps only those.
        let keeps_every_cluster = builder
            .reuse
            .as_ref()
            .is_some_and(|reuse| reuse.drops_no_cluster(&views_by_class));
        if !keeps_every_cluster {
            for view in views_by_class.values() {
                let routes = view.slots.iter().flatten();
                let targets = routes.flat_map(|r| r.targets()).chain([&view.passthrough]);
                for target in targets {
                    if let Target::Cluster(c) = target {
                        c.mark_live(builder.generation);
                    }
                }
            }
            registry.retain_marked(builder.generation);
        }
        tracing::debug!(
            views = views_by_class.len(),
            slots = builder.slots.len(),
            reused = builder.reused_slots,
            index_ms = indexed_ms,
            views_ms = started.elapsed().as_secs_f64() * 1e3 - indexed_ms,
            "routing tables built"
        );
        RouteTable {
            id: builder.table_id,
            class_keys,
            views_by_pod,
            views_by_class,
            index: builder.index,
            reused_slots: builder.reused_slots,
        }
    }

    /// The view of a captured pod of this table's snapshot.
    pub fn view_for_pod(&self, pod: PodId) -> Option<&Arc<ClientView>> {
        self.views_by_pod.get(pod).and_then(Option::as_ref)
    }

    /// The view of any client of a class some captured pod belongs to (admin, tests).
    pub fn view_for(&self, client: &ClientInfo) -> Option<&Arc<ClientView>> {
        self.views_by_class.get(&ClientClass::of(
            &client.namespace,
            &client.labels,
            &self.class_keys,
        ))
    }

    /// Every client view (one per class), in no particular order.
    pub fn views(&self) -> impl Iterator<Item = &Arc<ClientView>> {
        self.views_by_class.values()
    }

    /// How many service ports of its views this table took over from the previous one.
    pub fn reused_slots(&self) -> usize {
        self.reused_slots
    }

    /// Number of distinct client views (one per class).
    pub fn view_count(&self) -> usize {
        self.views_by_class.len()
    }

    /// Whether `dst` is a meshed destination of this table (for any client).
    pub fn is_meshed(&self, dst: SocketAddr) -> bool {
        self.index
            .contains_key(&(dst.ip().to_canonical(), dst.port()))
    }

    /// This table's id (see [`ClientView::table_id`]).
    pub fn id(&self) -> u64 {
        self.id
    }
}

/// Whether some VirtualService delegates (its routes then depend on another VirtualService).
fn has_delegation(snapshot: &Snapshot) -> bool {
    snapshot.virtual_services.iter().any(|vs| {
        vs.http
            .iter()
            .any(|r| matches!(r.action, HttpAction::Delegate { .. }))
    })
}

/// What a build takes over from the previous table.
#[derive(Clone)]
struct Reuse {
    /// The previous table's views.
    views: HashMap<ClientClass, Arc<ClientView>>,
    /// Per slot: built again (some service that may own it is a changed VirtualService's host).
    rebuild: Vec<bool>,
}

impl Reuse {
    /// Whether every cluster the previous views' routes used is still used by `views`: the same
    /// classes, and the clusters of the routes built again include those they replace (the routes
    /// taken over use the clusters they used).
    fn drops_no_cluster(&self, views: &HashMap<ClientClass, Arc<ClientView>>) -> bool {
        if views.len() != self.views.len() {
            return false;
        }
        let clusters = |slot: Option<&Option<Arc<ServicePortRoutes>>>| -> Vec<usize> {
            slot.and_then(Option::as_ref)
                .into_iter()
                .flat_map(|r| r.targets())
                .filter_map(|t| match t {
                    Target::Cluster(c) => Some(Arc::as_ptr(c) as usize),
                    _ => None,
                })
                .collect()
        };
        views.iter().all(|(class, view)| {
            let Some(previous) = self.views.get(class) else {
                return false;
            };
            let rebuilt = self.rebuild.iter().enumerate().filter(|(_, r)| **r);
            let mut before = HashSet::new();
            let mut now = HashSet::new();
            for (slot, _) in rebuilt {
                before.extend(clusters(previous.slots.get(slot)));
                now.extend(clusters(view.slots.get(slot)));
            }
            before.is_subset(&now)
        })
    }
}

/// The label keys any client-selecting field reads: match `sourceLabels` (HTTP, TCP, TLS, delegates
/// included), DestinationRule and Sidecar `workloadSelector`, and DestinationRule `failoverPriority`
/// (priorities depend on the client's labels).
fn class_label_keys(snapshot: &Snapshot) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut add =
        |labels: Option<&Labels>| keys.extend(labels.into_iter().flat_map(|l| l.keys().cloned()));
    for vs in &snapshot.virtual_services {
        for m in vs.http.iter().flat_map(|r| &r.matches) {
            add(m.source_labels.as_ref());
        }
        for m in vs.tcp.iter().chain(&vs.tls).flat_map(|r| &r.matches) {
            add(m.source_labels.as_ref());
        }
    }
    let mut priority_keys = Vec::new();
    for dr in &snapshot.destination_rules {
        add(dr.workload_selector.as_ref());
        let policies = dr
            .traffic_policy
            .iter()
            .chain(dr.subsets.iter().filter_map(|s| s.traffic_policy.as_ref()));
        for tp in policies {
            priority_keys.extend(failover_priority_keys(tp).map(str::to_string));
        }
    }
    for sc in &snapshot.sidecars {
        add(sc.workload_selector.as_ref());
    }
    keys.extend(priority_keys);
    keys
}

/// The label keys `failoverPriority` lists in `tp` (top level and port level), without `=value`.
fn failover_priority_keys(tp: &TrafficPolicy) -> impl Iterator<Item = &str> {
    std::iter::once(tp)
        .chain(tp.port_level.iter().map(|(_, p)| p))
        .filter_map(|p| p.locality_lb_setting.as_ref())
        .flat_map(|l| &l.failover_priority)
        .map(|l| l.split_once('=').map_or(l.as_str(), |(k, _)| k))
}

/// One meshed destination and the registry services that may own it, in precedence order (the
/// Kubernetes Service, else ServiceEntries oldest first); each client gets the first it sees.
struct Slot {
    addr: SocketAddr,
    candidates: Vec<(CatalogId, usize)>,
}

/// A delegation-expanded `http` rule and its policy.
type RuleWithPolicy = (Arc<HttpRoute>, Arc<RoutePolicy>);

/// Below this many (class, service port) pairs, views are built on one thread.
const PARALLEL_VIEWS_MIN: usize = 4096;

/// A resolved target is shared by every view that asks for the same thing.
type TargetMemo = HashMap<(CatalogId, u16, Option<String>, String), Target>;

struct Builder<'a> {
    snapshot: &'a Snapshot,
    registry: &'a ClusterRegistry,
    table_id: u64,
    catalog: Catalog<'a>,
    slots: Vec<Slot>,
    index: Arc<HashMap<(IpAddr, u16), usize>>,
    protocols: Arc<Vec<Protocol>>,
    /// Mesh-bound VirtualServices with hosts, with their delegation-expanded `http` rules and each
    /// rule's policy (resolved at most once, when a view first builds routes from it, and shared
    /// by every view; a rebuild that takes routes over never expands the others).
    virtual_services: Vec<(&'a VirtualService, std::cell::OnceCell<Vec<RuleWithPolicy>>)>,
    /// The policy of default routes (no VirtualService), shared by every view.
    default_policy: Arc<RoutePolicy>,
    /// Hostname -> indices into `virtual_services` in precedence order.
    vs_by_host: HashMap<&'a str, Vec<usize>>,
    /// Exact host -> indices into `virtual_services` naming it (ascending).
    vs_exact: HashMap<&'a str, Vec<usize>>,
    /// Indices into `virtual_services` with some wildcard host (ascending).
    vs_wildcard: Vec<usize>,
    /// Built when first needed (a rebuild that takes every route over needs neither).
    destination_rules: std::cell::OnceCell<DestinationRuleIndex<'a>>,
    pods: std::cell::OnceCell<PodIndex<'a>>,
    /// The DestinationRules that apply to the client of the view being built, by service (every
    /// destination and hash policy of a route asks again).
    rules_memo: std::cell::RefCell<HashMap<CatalogId, Arc<[&'a DestinationRule]>>>,
    targets: TargetMemo,
    passthrough: Target,
    /// This build's mark on every cluster it references ([`ClusterRegistry::begin_build`]).
    generation: u64,
    /// The locality of the node the proxy runs on: its clients' locality.
    local: Locality,
    /// Routes to take over from the previous table, if any.
    reuse: Option<Reuse>,
    /// How many slots were taken over (for the log).
    reused_slots: usize,
}

impl<'a> Builder<'a> {
    fn new(snapshot: &'a Snapshot, registry: &'a ClusterRegistry) -> Self {
        let catalog = Catalog::new(snapshot);
        let mut slots: Vec<Slot> = Vec::new();
        let mut index: HashMap<(IpAddr, u16), usize> = HashMap::new();
        let mut add = |addr: SocketAddr, candidate: (CatalogId, usize)| {
            let key = (addr.ip().to_canonical(), addr.port());
            let slot = *index.entry(key).or_insert_with(|| {
                slots.push(Slot {
                    addr,
                    candidates: Vec::new(),
                });
                slots.len() - 1
            });
            slots[slot].candidates.push(candidate);
        };
        // Sorted so slot numbering (and so logs) do not depend on hash order.
        let mut vips: Vec<_> = snapshot.service_by_vip.iter().collect();
        vips.sort();
        for (&(ip, port), &(service, port_index)) in vips {
            if let Some(id) = catalog.kube(service) {
                add(SocketAddr::new(ip, port), (id, port_index));
            }
        }
        for d in snapshot.service_entry_destinations() {
            if let Some(id) = catalog.entry(d.entry) {
                add(d.addr, (id, d.port_index));
            }
        }
        let protocols = slots
            .iter()
            .map(|s| {
                s.candidates
                    .first()
                    .and_then(|&(id, pi)| catalog.services[id].port_at(pi))
                    .map_or(Protocol::Auto, |p| p.protocol)
            })
            .collect();
        let virtual_services: Vec<(&VirtualService, std::cell::OnceCell<Vec<RuleWithPolicy>>)> =
            snapshot
                .virtual_services
                .iter()
                .filter(|vs| vs.applies_to_mesh() && !vs.hosts.is_empty())
                .map(|vs| (&**vs, std::cell::OnceCell::new()))
                .collect();
        let mut vs_exact: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut vs_wildcard: Vec<usize> = Vec::new();
        for (i, (vs, _)) in virtual_services.iter().enumerate() {
            for h in &vs.hosts {
                let list = if h.starts_with('*') {
                    &mut vs_wildcard
                } else {
                    vs_exact.entry(h.as_str()).or_default()
                };
                if list.last() != Some(&i) {
                    list.push(i);
                }
            }
        }
        let generation = registry.begin_build();
        let passthrough = registry.ensure(
            passthrough_key(),
            UpstreamProtocol::SameAsDownstream,
            ClusterPolicy::default(),
            Discovery::OriginalDst,
            Vec::new(),
        );
        Builder {
            snapshot,
            registry,
            table_id: NEXT_TABLE_ID.fetch_add(1, Ordering::Relaxed),
            catalog,
            slots,
            index: Arc::new(index),
            protocols: Arc::new(protocols),
            virtual_services,
            default_policy: Arc::new(RoutePolicy::default_route(&snapshot.mesh)),
            vs_by_host: HashMap::new(),
            vs_exact,
            vs_wildcard,
            destination_rules: std::cell::OnceCell::new(),
            pods: std::cell::OnceCell::new(),
            rules_memo: std::cell::RefCell::default(),
            targets: HashMap::new(),
            passthrough: Target::Cluster(passthrough),
            generation,
            local: Locality::default(),
            reuse: None,
            reused_slots: 0,
        }
    }

    fn dr_index(&self) -> &DestinationRuleIndex<'a> {
        self.destination_rules
            .get_or_init(|| DestinationRuleIndex::new(self.snapshot))
    }

    /// The DestinationRules of service `id` for `client`: the client of the view being built
    /// ([`Builder::view`] forgets them when it starts the next).
    fn rules_for_client(&self, client: &ClientInfo, id: CatalogId) -> Arc<[&'a DestinationRule]> {
        if let Some(rules) = self.rules_memo.borrow().get(&id) {
            return Arc::clone(rules);
        }
        let svc = self.catalog.services[id];
        let rules: Arc<[&'a DestinationRule]> = self
            .dr_index()
            .rules_for(self.snapshot, client, svc.hostname, svc.namespace)
            .into();
        self.rules_memo.borrow_mut().insert(id, Arc::clone(&rules));
        rules
    }

    fn pod_index(&self) -> &PodIndex<'a> {
        self.pods.get_or_init(|| PodIndex::new(self.snapshot))
    }

    /// The `http` rules of the `vs_index`th VirtualService, delegation expanded, with policies.
    fn expanded_rules(&self, vs_index: usize) -> Vec<RuleWithPolicy> {
        let Some((vs, rules)) = self.virtual_services.get(vs_index) else {
            return Vec::new();
        };
        let snapshot = self.snapshot;
        rules
            .get_or_init(|| {
                super::delegate::expand_http(vs, &snapshot.virtual_services)
                    .into_iter()
                    .map(|spec| {
                        let policy = Arc::new(RoutePolicy::for_route(&spec, &snapshot.mesh));
                        (spec, policy)
                    })
                    .collect()
            })
            .clone()
    }

    /// The views of `classes`, in order: on two threads when there is much to build (a config
    /// of thousands of services rebuilt whole), each with its own builder of this build.
    fn views(&mut self, classes: Vec<ClientClass>) -> Vec<Arc<ClientView>> {
        // Service ports to build per class: those not taken over from the previous table.
        let per_class = match &self.reuse {
            Some(reuse) => reuse.rebuild.iter().filter(|r| **r).count(),
            None => self.slots.len(),
        };
        let work = classes.len() * per_class;
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        if classes.len() < 2 || work < PARALLEL_VIEWS_MIN || threads < 2 {
            return classes
                .into_iter()
                .map(|class| Arc::new(self.view(class)))
                .collect();
        }
        let mut classes = classes;
        let theirs = classes.split_off(classes.len() / 2);
        let fallback = theirs.clone();
        let mut other = self.fork();
        let (mut mine, theirs) = std::thread::scope(|scope| {
            let helper = std::thread::Builder::new()
                .name("keel-routes".to_string())
                .spawn_scoped(scope, move || {
                    let views: Vec<Arc<ClientView>> = theirs
                        .into_iter()
                        .map(|class| Arc::new(other.view(class)))
                        .collect();
                    (views, other.reused_slots)
                });
            let mine: Vec<Arc<ClientView>> = classes
                .into_iter()
                .map(|class| Arc::new(self.view(class)))
                .collect();
            let theirs = match helper {
                Ok(handle) => Some(
                    handle
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start a routing thread; building on one");
                    None
                }
            };
            (mine, theirs)
        });
        match theirs {
            Some((views, reused)) => {
                self.reused_slots += reused;
                mine.extend(views);
            }
            None => mine.extend(fallback.into_iter().map(|class| Arc::new(self.view(class)))),
        }
        mine
    }

    /// A second builder of this build (same table, generation and reuse), for another thread.
    fn fork(&self) -> Builder<'a> {
        let mut other = Builder::new(self.snapshot, self.registry);
        other.table_id = self.table_id;
        other.generation = self.generation;
        other.local = self.local.clone();
        other.reuse = self.reuse.clone();
        other
    }

    /// The view of one client class.
    fn view(&mut self, class: ClientClass) -> ClientView {
        let client = class.client();
        self.rules_memo.get_mut().clear();
        let scope = select_sidecar(
            &self.snapshot.sidecars,
            &client.namespace,
            &client.labels,
            &self.snapshot.mesh.root_namespace,
        )
        .map(EgressScope::from_sidecar)
        .unwrap_or_else(EgressScope::everything);
        let outbound_traffic_policy = scope
            .outbound_traffic_policy
            .unwrap_or(self.snapshot.mesh.outbound_traffic_policy);
        let previous = self
            .reuse
            .as_ref()
            .and_then(|r| r.views.get(&class))
            .map(Arc::clone);
        let mut slots = Vec::with_capacity(self.slots.len());
        for slot in 0..self.slots.len() {
            // Taken over: only VirtualServices changed, so which service port a client sees at
            // each address (Services, ServiceEntries, Sidecars, exportTo) is as before, and the
            // routes of a host no changed VirtualService names are too.
            if let (Some(view), Some(reuse)) = (&previous, &self.reuse) {
                match view.slots.get(slot) {
                    Some(None) => {
                        slots.push(None);
                        continue;
                    }
                    Some(Some(routes)) if !reuse.rebuild.get(slot).copied().unwrap_or(true) => {
                        self.reused_slots += 1;
                        slots.push(Some(Arc::clone(routes)));
                        continue;
                    }
                    _ => {}
                }
            }
            let addr = self.slots[slot].addr;
            let seen = self.slots[slot]
                .candidates
                .iter()
                .filter_map(|&(id, pi)| Some((id, self.catalog.services[id].port_at(pi)?)))
                .find(|&(id, port)| self.visible(&client, &scope, id, port.number));
            let Some((id, port)) = seen else {
                slots.push(None);
                continue;
            };
            slots.push(Some(Arc::new(
                self.service_port(&client, &scope, id, port, addr),
            )));
        }
        let topology = Arc::new(Topology {
            locality: self.local.clone(),
            labels: class.labels.clone(),
        });
        ClientView {
            table_id: self.table_id,
            topology,
            sidecar: scope.sidecar.clone(),
            class,
            outbound_traffic_policy,
            index: Arc::clone(&self.index),
            protocols: Arc::clone(&self.protocols),
            slots,
            passthrough: self.passthrough.clone(),
        }
    }

    /// A service port is visible to a client when exported to its namespace and imported by its
    /// Sidecar.
    fn visible(&self, client: &ClientInfo, scope: &EgressScope, id: CatalogId, port: u16) -> bool {
        let svc = &self.catalog.services[id];
        exported_to(svc.export_to, svc.namespace, &client.namespace)
            && scope.imports_service(&client.namespace, svc.namespace, svc.hostname, port)
    }

    /// The routes a client gets for one service port at `addr`.
    fn service_port(
        &mut self,
        client: &ClientInfo,
        scope: &EgressScope,
        id: CatalogId,
        port: PortInfo,
        addr: SocketAddr,
    ) -> ServicePortRoutes {
        let hostname = self.catalog.services[id].hostname;
        let default_target = self.resolve_in(client, id, port.number, None);
        let default_hash = self.hash_key(client, id, None, Some(port.number));
        let mut chosen = None;
        // The oldest visible, imported VirtualService that leaves this client any rule wins; one that
        // leaves none is skipped, as istiod then builds no virtual host from it (§1.0).
        for vs_index in self.virtual_services_for(hostname) {
            let vs = self.virtual_services[vs_index].0;
            if !exported_to(&vs.export_to, &vs.meta.namespace, &client.namespace)
                || !scope.imports_virtual_service(&client.namespace, &vs.meta.namespace, &vs.hosts)
            {
                continue;
            }
            let http = self.compile_http(client, scope, vs_index, port.number);
            let tcp = self.compile_tcp(client, scope, vs, port.number, addr);
            let applies = match port.protocol {
                p if p.is_http() => !http.is_empty(),
                Protocol::Auto => !http.is_empty() || tcp.is_some(),
                // Only `tls` rules apply to TLS ports (compiled below, from every VirtualService).
                Protocol::Tls | Protocol::Https => false,
                _ => tcp.is_some(),
            };
            if applies {
                chosen = Some((vs.meta.display_name(), http, tcp));
                break;
            }
        }
        let (mut virtual_service, http, tcp) = match chosen {
            Some((name, http, tcp)) => (Some(name), (!http.is_empty()).then_some(http), tcp),
            None => (None, None, None),
        };
        let tls = match port.protocol {
            Protocol::Tls | Protocol::Https => {
                self.compile_tls(client, scope, hostname, port.number, addr)
            }
            _ => None,
        };
        if let Some((name, _)) = &tls {
            virtual_service = Some(name.clone());
        }
        let location = match self.catalog.services[id].kind {
            Kind::Kube { .. } => MeshLocation::MeshInternal,
            Kind::Entry(se) => se.location,
        };
        ServicePortRoutes {
            hostname: hostname.to_string(),
            port: port.number,
            protocol: port.protocol,
            location,
            virtual_service,
            http,
            tcp,
            tls: tls.map(|(_, routes)| routes),
            default_target,
            default_hash,
            default_policy: Arc::clone(&self.default_policy),
        }
    }

    /// VirtualServices whose hosts cover `hostname`: exact hosts first, then wildcards from most to
    /// least specific, each group oldest first.
    fn virtual_services_for(&mut self, hostname: &'a str) -> Vec<usize> {
        if let Some(found) = self.vs_by_host.get(hostname) {
            return found.clone();
        }
        // Only a VirtualService naming `hostname` exactly or with a wildcard host can cover it.
        let mut candidates: Vec<usize> = self
            .vs_exact
            .get(hostname)
            .into_iter()
            .flatten()
            .chain(&self.vs_wildcard)
            .copied()
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        let found = by_precedence(
            candidates
                .into_iter()
                .map(|i| (i, self.virtual_services[i].0)),
            hostname,
        );
        self.vs_by_host.insert(hostname, found.clone());
        found
    }

    /// The `http` rules of a VirtualService that exist for `client` on `port`.
    fn compile_http(
        &mut self,
        client: &ClientInfo,
        scope: &EgressScope,
        vs_index: usize,
        port: u16,
    ) -> Vec<CompiledHttpRoute> {
        let routes = self.expanded_rules(vs_index);
        let mut out = Vec::new();
        for (rule, (spec, policy)) in routes.into_iter().enumerate() {
            let blocks: Vec<usize> = spec
                .matches
                .iter()
                .enumerate()
                .filter(|(_, m)| static_match(m, port, client))
                .map(|(i, _)| i)
                .collect();
            if !spec.matches.is_empty() && blocks.is_empty() {
                continue;
            }
            let targets = match &spec.action {
                HttpAction::Route(dests) => dests
                    .iter()
                    .enumerate()
                    .map(|(index, d)| WeightedTarget {
                        target: self.resolve(client, scope, &d.destination, port),
                        weight: d.weight,
                        index,
                        hash: self.destination_hash(client, &d.destination),
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let mirrors = spec
                .mirrors
                .iter()
                .map(|m| {
                    (
                        self.resolve(client, scope, &m.destination, port),
                        m.percentage,
                    )
                })
                .collect();
            let catch_all = spec.matches.is_empty();
            out.push(CompiledHttpRoute {
                spec,
                rule,
                policy,
                blocks,
                targets: WeightedTargets::new(targets),
                mirrors,
            });
            // Istio stops generating routes after a catch-all: later rules are unreachable.
            if catch_all {
                break;
            }
        }
        out
    }

    /// The first `tcp` rule whose conditions hold for `client` at `addr`. Every L4 condition is static
    /// for a node proxy (the destination address is fixed per slot), so this is decided here.
    fn compile_tcp(
        &mut self,
        client: &ClientInfo,
        scope: &EgressScope,
        vs: &VirtualService,
        port: u16,
        addr: SocketAddr,
    ) -> Option<WeightedTargets> {
        let route = vs.tcp.iter().find(|r| {
            r.matches.is_empty()
                || r.matches
                    .iter()
                    .any(|m| l4_static_match(m, port, client, addr))
        })?;
        let targets = route
            .route
            .iter()
            .enumerate()
            .map(|(index, d)| WeightedTarget {
                target: self.resolve(client, scope, &d.destination, port),
                weight: d.weight,
                index,
                hash: None,
            })
            .collect();
        Some(WeightedTargets::new(targets))
    }

    /// The `tls` rules of every VirtualService the client sees for `hostname` (precedence order, as
    /// Istio merges them into one listener), with the name of the first that contributes; `None`
    /// when no match block passes the static conditions (Istio then builds only the default chain).
    fn compile_tls(
        &mut self,
        client: &ClientInfo,
        scope: &EgressScope,
        hostname: &'a str,
        port: u16,
        addr: SocketAddr,
    ) -> Option<(String, TlsRoutes)> {
        let mut builder = TlsRoutesBuilder::default();
        let mut first = None;
        for vs_index in self.virtual_services_for(hostname) {
            let vs = self.virtual_services[vs_index].0;
            if vs.tls.is_empty()
                || !exported_to(&vs.export_to, &vs.meta.namespace, &client.namespace)
                || !scope.imports_virtual_service(&client.namespace, &vs.meta.namespace, &vs.hosts)
            {
                continue;
            }
            for (i, rule) in vs.tls.iter().enumerate() {
                let held: Vec<&L4Match> = rule
                    .matches
                    .iter()
                    .filter(|m| tls_static_match(m, port, client))
                    .collect();
                if held.is_empty() {
                    continue;
                }
                first.get_or_insert_with(|| vs.meta.display_name());
                let blocks: Vec<(u8, Vec<String>)> = held
                    .into_iter()
                    .filter_map(|m| Some((block_specificity(m, addr)?, m.sni_hosts.clone())))
                    .collect();
                if blocks.is_empty() {
                    continue;
                }
                let targets = rule
                    .route
                    .iter()
                    .enumerate()
                    .map(|(index, d)| WeightedTarget {
                        target: self.resolve(client, scope, &d.destination, port),
                        weight: d.weight,
                        index,
                        hash: None,
                    })
                    .collect();
                let rule = TlsRule {
                    name: format!("{}/{} tls[{i}]", vs.meta.namespace, vs.meta.name),
                    targets: WeightedTargets::new(targets),
                };
                builder.add_rule(rule, blocks);
            }
        }
        first.map(|name| (name, builder.build()))
    }

    /// Resolve a route destination for a client: the host must name a service the client sees;
    /// port = `destination.port`, else the service's only port, else the port the request came on.
    fn resolve(
        &mut self,
        client: &ClientInfo,
        scope: &EgressScope,
        dest: &Destination,
        request_port: u16,
    ) -> Target {
        let catalog = &self.catalog;
        let found = catalog.find(&dest.host, |id| {
            let svc = &catalog.services[id];
            exported_to(svc.export_to, svc.namespace, &client.namespace)
        });
        let missing = |port| {
            Target::Missing(ClusterKey {
                host: dest.host.clone(),
                port,
                subset: dest.subset.clone(),
                scope: String::new(),
            })
        };
        let Some(id) = found else {
            return missing(dest.port.unwrap_or(request_port));
        };
        let port = dest
            .port
            .unwrap_or_else(|| self.catalog.services[id].default_port(request_port));
        // Istio builds no cluster for a service the client's Sidecar does not import.
        if !self.visible(client, scope, id, port) {
            return missing(port);
        }
        // A wildcard ServiceEntry resolves the concrete host the route named.
        let host = if self.catalog.services[id].hostname.starts_with('*') {
            dest.host.as_str()
        } else {
            self.catalog.services[id].hostname
        };
        self.resolve_host_in(client, id, host, port, dest.subset.as_deref())
    }

    /// The consistent-hash key of an HTTP route destination for a client (Istio's precedence, see
    /// [`route_hash_key`]); `None` for a destination that resolves to nothing.
    fn destination_hash(&self, client: &ClientInfo, dest: &Destination) -> Option<Arc<HashKey>> {
        let catalog = &self.catalog;
        let id = catalog.find(&dest.host, |id| {
            let svc = &catalog.services[id];
            exported_to(svc.export_to, svc.namespace, &client.namespace)
        })?;
        self.hash_key(client, id, dest.subset.as_deref(), dest.port)
    }

    /// The hash key for service `id` and `subset` from the client's DestinationRules; port-level
    /// entries are read for `explicit_port` only.
    fn hash_key(
        &self,
        client: &ClientInfo,
        id: CatalogId,
        subset: Option<&str>,
        explicit_port: Option<u16>,
    ) -> Option<Arc<HashKey>> {
        let rules = self.rules_for_client(client, id);
        // The same rule choice as `resolve_host_in`.
        let top = rules.iter().find_map(|r| r.traffic_policy.as_ref());
        let sub = subset
            .and_then(|name| rules.iter().find_map(|r| r.subset(name)))
            .and_then(|s| s.traffic_policy.as_ref());
        route_hash_key(top, sub, explicit_port).map(Arc::new)
    }

    /// The cluster of registry service `id`, `port`, optional `subset`, for a client.
    fn resolve_in(
        &mut self,
        client: &ClientInfo,
        id: CatalogId,
        port: u16,
        subset: Option<&str>,
    ) -> Target {
        let host = self.catalog.services[id].hostname;
        self.resolve_host_in(client, id, host, port, subset)
    }

    fn resolve_host_in(
        &mut self,
        client: &ClientInfo,
        id: CatalogId,
        host: &str,
        port: u16,
        subset: Option<&str>,
    ) -> Target {
        let svc = self.catalog.services[id];
        let rules = self.rules_for_client(client, id);
        let mut scope = match svc.kind {
            Kind::Kube { .. } => String::new(),
            Kind::Entry(se) => format!("se:{}/{}", se.meta.namespace, se.meta.name),
        };
        if let Some(first) = rules.first() {
            if !scope.is_empty() {
                scope.push(';');
            }
            scope.push_str(&format!("dr:{}/{}", first.meta.namespace, first.meta.name));
        }
        let key = ClusterKey {
            host: host.to_string(),
            port,
            subset: subset.map(str::to_string),
            scope,
        };
        let Some(port_info) = svc.port(port) else {
            return Target::Missing(key);
        };
        // Subsets of the rules at the chosen level are merged: the first definition wins.
        let subset_labels: Option<&Labels> = match subset {
            None => None,
            Some(name) => match rules.iter().find_map(|r| r.subset(name)) {
                Some(s) => Some(&s.labels),
                None => return Target::Missing(key),
            },
        };
        let memo = (id, port, key.subset.clone(), key.scope.clone());
        if key.host == svc.hostname {
            if let Some(t) = self.targets.get(&memo) {
                return t.clone();
            }
        }
        let policy = cluster_policy(&rules, subset, port).0;
        let protocol = upstream_protocol(port_info.protocol);
        let target = match svc.kind {
            Kind::Kube { id: service, .. } => {
                let candidates = self
                    .pod_index()
                    .candidates(&self.snapshot.services[service], subset_labels);
                let keys = topology_keys(&policy);
                let endpoints = self
                    .snapshot
                    .endpoints_among(service, port_info.index, subset_labels, candidates)
                    .into_iter()
                    .map(|e| ClusterEndpoint {
                        addr: e.addr,
                        topology: self.pod_topology(e.pod, &keys),
                    })
                    .collect();
                self.cluster(key, protocol, policy, Discovery::Static, endpoints)
            }
            Kind::Entry(se) => {
                let se_port = &se.ports[port_info.index];
                // `endpoints[].ports` maps port names to endpoint ports, else `targetPort`, else the
                // service port.
                let endpoint_port = |ports: &std::collections::BTreeMap<String, u16>| {
                    ports
                        .get(&se_port.name)
                        .copied()
                        .or(se_port.target_port)
                        .unwrap_or(se_port.number)
                };
                let in_subset =
                    |labels: &Labels| subset_labels.is_none_or(|s| selector_matches(s, labels));
                match se.resolution {
                    Resolution::None => {
                        self.cluster(key, protocol, policy, Discovery::OriginalDst, Vec::new())
                    }
                    Resolution::Static => {
                        let keys = topology_keys(&policy);
                        let mut endpoints: Vec<ClusterEndpoint> = se
                            .endpoints
                            .iter()
                            .filter(|e| in_subset(&e.labels))
                            // `unix://` endpoints cannot be reached from a node proxy.
                            .filter_map(|e| {
                                let ip: IpAddr = e.address.parse().ok()?;
                                Some(ClusterEndpoint {
                                    addr: SocketAddr::new(ip, endpoint_port(&e.ports)),
                                    topology: Topology {
                                        locality: e.locality.clone().unwrap_or_default(),
                                        labels: restrict(&e.labels, &keys),
                                    },
                                })
                            })
                            .collect();
                        if let Some(selector) = &se.workload_selector {
                            let port = se_port.target_port.unwrap_or(se_port.number);
                            for (pod_id, p) in self.snapshot.pods.iter().enumerate() {
                                if !(p.ready
                                    && p.meta.namespace == se.meta.namespace
                                    && selector_matches(selector, &p.labels)
                                    && in_subset(&p.labels))
                                {
                                    continue;
                                }
                                // One endpoint per pod, at its primary address.
                                if let Some(ip) = crate::policy::endpoint_ip(&p.ips, &[]) {
                                    endpoints.push(ClusterEndpoint {
                                        addr: SocketAddr::new(ip, port),
                                        topology: self.pod_topology(pod_id, &keys),
                                    });
                                }
                            }
                        }
                        self.cluster(key, protocol, policy, Discovery::Static, endpoints)
                    }
                    Resolution::Dns | Resolution::DnsRoundRobin => {
                        let names = if se.endpoints.is_empty() {
                            vec![(
                                host.to_string(),
                                se_port.target_port.unwrap_or(se_port.number),
                            )]
                        } else {
                            se.endpoints
                                .iter()
                                .filter(|e| in_subset(&e.labels))
                                .map(|e| (e.address.clone(), endpoint_port(&e.ports)))
                                .collect()
                        };
                        let discovery = Discovery::Dns {
                            names,
                            first_only: se.resolution == Resolution::DnsRoundRobin,
                        };
                        self.cluster(key, protocol, policy, discovery, Vec::new())
                    }
                    // Resolving the request's Host/SNI per request is not implemented.
                    Resolution::DynamicDns => Target::Missing(key),
                }
            }
        };
        if target.key().host == svc.hostname {
            self.targets.insert(memo, target.clone());
        }
        target
    }

    /// Where endpoint pod `pod` runs, with its labels among `keys`.
    fn pod_topology(&self, pod: PodId, keys: &[&str]) -> Topology {
        let Some(p) = self.snapshot.pods.get(pod) else {
            return Topology::default();
        };
        Topology {
            locality: self.snapshot.pod_locality(p, None),
            labels: restrict(&p.labels, keys),
        }
    }

    /// A cluster registered as live; `PASSTHROUGH` in the policy makes it an original-destination
    /// cluster whatever its endpoints (§2.2).
    fn cluster(
        &mut self,
        key: ClusterKey,
        protocol: UpstreamProtocol,
        policy: ClusterPolicy,
        discovery: Discovery,
        endpoints: Vec<ClusterEndpoint>,
    ) -> Target {
        let discovery = if policy.is_passthrough() {
            Discovery::OriginalDst
        } else {
            discovery
        };
        let cluster = self
            .registry
            .ensure_endpoints(key, protocol, policy, discovery, endpoints);
        cluster.mark_live(self.generation);
        Target::Cluster(cluster)
    }
}

/// The policy of the cluster for `port` and `subset` from the DestinationRules chosen for the client
/// (see [`destination_rules_for`]), with the level each block came from: the first rule with a
/// top-level policy wins; the subset's policy comes from the rule that defines the subset (§2.0,
/// §2.1).
pub fn cluster_policy(
    rules: &[&DestinationRule],
    subset: Option<&str>,
    port: u16,
) -> (ClusterPolicy, crate::upstream::PolicySources) {
    let top_policy = rules.iter().find_map(|r| r.traffic_policy.as_ref());
    let subset_policy = subset
        .and_then(|name| rules.iter().find_map(|r| r.subset(name)))
        .and_then(|s| s.traffic_policy.as_ref());
    ClusterPolicy::resolve_traced(top_policy, subset_policy, port)
}

/// The VirtualServices among `candidates` whose hosts cover `hostname`, by their ids, in Istio's
/// precedence: exact hosts first, then wildcards from most to least specific, each group oldest
/// first.
pub fn by_precedence<'v>(
    candidates: impl Iterator<Item = (usize, &'v VirtualService)>,
    hostname: &str,
) -> Vec<usize> {
    let mut found: Vec<(usize, &VirtualService, usize)> = candidates
        .filter_map(|(i, vs)| {
            vs.hosts
                .iter()
                .filter_map(|h| host_match_rank(h, hostname))
                .min()
                .map(|rank| (rank, vs, i))
        })
        .collect();
    found.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| creation_order(&a.1.meta).cmp(&creation_order(&b.1.meta)))
    });
    found.into_iter().map(|(_, _, i)| i).collect()
}

/// The DestinationRules that apply to `client` for `host` of a service in `service_namespace` (§2.0):
/// the first namespace of (client's, service's, root) with a rule for the host wins, lower levels are
/// not merged in. Rules outside the client's namespace count only when exported to it; a rule with a
/// `workloadSelector` only for clients in its namespace whose labels match, and is then preferred over
/// selector-less rules. Among several rules for the most specific host, oldest first (subsets merge,
/// first definition wins).
///
/// The request path uses the indexed lookup built with the table; this linear version is the
/// readable specification the tests check the index against (and what `keel explain` reads).
pub fn destination_rules_for<'s>(
    snapshot: &'s Snapshot,
    client: &ClientInfo,
    host: &str,
    service_namespace: &str,
) -> Vec<&'s DestinationRule> {
    select_destination_rules(snapshot, client, host, service_namespace, |_| {
        (0..snapshot.destination_rules.len()).collect()
    })
}

/// [`destination_rules_for`] with the rules of each namespace level drawn from `candidates(level)`:
/// ascending indices into `snapshot.destination_rules` that include every rule of that namespace
/// whose host may cover `host` (others are filtered out here as before).
fn select_destination_rules<'s>(
    snapshot: &'s Snapshot,
    client: &ClientInfo,
    host: &str,
    service_namespace: &str,
    candidates: impl Fn(&str) -> Vec<usize>,
) -> Vec<&'s DestinationRule> {
    let mut levels: Vec<&str> = vec![client.namespace.as_str()];
    for ns in [service_namespace, snapshot.mesh.root_namespace.as_str()] {
        if !levels.contains(&ns) {
            levels.push(ns);
        }
    }
    for level in levels {
        let candidates: Vec<(usize, &DestinationRule)> = candidates(level)
            .into_iter()
            .filter_map(|i| snapshot.destination_rules.get(i).map(|dr| &**dr))
            .filter(|dr| dr.meta.namespace == level)
            .filter(|dr| {
                level == client.namespace
                    || exported_to(&dr.export_to, &dr.meta.namespace, &client.namespace)
            })
            .filter(|dr| {
                dr.workload_selector.as_ref().is_none_or(|sel| {
                    dr.meta.namespace == client.namespace && selector_matches(sel, &client.labels)
                })
            })
            .filter_map(|dr| host_match_rank(&dr.host, host).map(|rank| (rank, dr)))
            .collect();
        let Some(best) = candidates.iter().map(|(rank, _)| *rank).min() else {
            continue;
        };
        let mut rules: Vec<&DestinationRule> = candidates
            .into_iter()
            .filter(|(rank, _)| *rank == best)
            .map(|(_, dr)| dr)
            .collect();
        if rules.iter().any(|dr| dr.workload_selector.is_some()) {
            rules.retain(|dr| dr.workload_selector.is_some());
        }
        rules.sort_by_key(|dr| creation_order(&dr.meta));
        return rules;
    }
    Vec::new()
}

/// The DestinationRules of a snapshot by namespace and host, so choosing a client's rules for one
/// host reads the few rules that can cover it instead of every rule of the snapshot.
struct DestinationRuleIndex<'s> {
    /// (namespace, host) -> rules with exactly that host (no leading `*`), ascending.
    exact: HashMap<(&'s str, &'s str), Vec<usize>>,
    /// namespace -> rules with a wildcard host (`*`, `*.suffix`), ascending.
    wildcard: HashMap<&'s str, Vec<usize>>,
}

impl<'s> DestinationRuleIndex<'s> {
    fn new(snapshot: &'s Snapshot) -> Self {
        let mut exact: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
        let mut wildcard: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, dr) in snapshot.destination_rules.iter().enumerate() {
            let ns = dr.meta.namespace.as_str();
            // A host without a leading `*` covers only itself (see `host_match_rank`).
            if dr.host.starts_with('*') {
                wildcard.entry(ns).or_default().push(i);
            } else {
                exact.entry((ns, dr.host.as_str())).or_default().push(i);
            }
        }
        DestinationRuleIndex { exact, wildcard }
    }

    /// [`destination_rules_for`], from the index.
    fn rules_for(
        &self,
        snapshot: &'s Snapshot,
        client: &ClientInfo,
        host: &str,
        service_namespace: &str,
    ) -> Vec<&'s DestinationRule> {
        select_destination_rules(snapshot, client, host, service_namespace, |level| {
            let mut found: Vec<usize> = self
                .exact
                .get(&(level, host))
                .into_iter()
                .flatten()
                .chain(self.wildcard.get(level).into_iter().flatten())
                .copied()
                .collect();
            found.sort_unstable();
            found
        })
    }
}

/// Pods by namespace and by label, so a service's endpoints are looked for among the pods that
/// carry its selector's rarest label instead of among every pod of the snapshot.
struct PodIndex<'s> {
    by_namespace: HashMap<&'s str, Vec<PodId>>,
    by_label: HashMap<(&'s str, &'s str, &'s str), Vec<PodId>>,
}

impl<'s> PodIndex<'s> {
    fn new(snapshot: &'s Snapshot) -> Self {
        let mut by_namespace: HashMap<&str, Vec<PodId>> = HashMap::new();
        let mut by_label: HashMap<(&str, &str, &str), Vec<PodId>> = HashMap::new();
        for (id, pod) in snapshot.pods.iter().enumerate() {
            let ns = pod.meta.namespace.as_str();
            by_namespace.entry(ns).or_default().push(id);
            for (k, v) in &pod.labels {
                by_label
                    .entry((ns, k.as_str(), v.as_str()))
                    .or_default()
                    .push(id);
            }
        }
        PodIndex {
            by_namespace,
            by_label,
        }
    }

    /// Ascending ids of a superset of the pods `service` (and `subset_labels`) can select: the
    /// pods of its namespace that carry the rarest of the labels they must all carry.
    fn candidates(&self, service: &Service, subset_labels: Option<&Labels>) -> Vec<PodId> {
        let Some(selector) = &service.selector else {
            return Vec::new();
        };
        let ns = service.meta.namespace.as_str();
        let rarest = selector
            .iter()
            .chain(subset_labels.into_iter().flatten())
            .map(|(k, v)| {
                self.by_label
                    .get(&(ns, k.as_str(), v.as_str()))
                    .map_or(&[][..], Vec::as_slice)
            })
            .min_by_key(|pods| pods.len());
        match rarest {
            Some(pods) => pods.to_vec(),
            None => self.by_namespace.get(ns).cloned().unwrap_or_default(),
        }
    }
}

/// Static conditions of an L4 match block for `client` reaching `addr`.
fn l4_static_match(m: &L4Match, port: u16, client: &ClientInfo, addr: SocketAddr) -> bool {
    l4_static_mismatch(m, port, client, addr).is_none()
}

/// The first condition of a `tcp` match block that fails for `client` reaching `addr` (every L4
/// condition is static for a node proxy).
pub fn l4_static_mismatch<'m>(
    m: &'m L4Match,
    port: u16,
    client: &ClientInfo,
    addr: SocketAddr,
) -> Option<Unmet<'m>> {
    if let Some(p) = m.port.filter(|&p| p != port) {
        return Some(Unmet::Port(p));
    }
    if !m.destination_subnets.is_empty()
        && !m
            .destination_subnets
            .iter()
            .any(|s| subnet_contains(s, addr.ip()))
    {
        return Some(Unmet::DestinationSubnets);
    }
    if !m.gateways.is_empty() {
        return (!m.gateways.iter().any(|g| g == "mesh")).then_some(Unmet::Gateways);
    }
    super::source_mismatch(&m.source_labels, &m.source_namespace, client)
}

/// How the proxy speaks to endpoints of a port with this protocol.
/// Istio's cluster for traffic to destinations outside the registry under `ALLOW_ANY`.
fn passthrough_key() -> ClusterKey {
    ClusterKey {
        host: "PassthroughCluster".to_string(),
        port: 0,
        subset: None,
        scope: String::new(),
    }
}

fn upstream_protocol(protocol: Protocol) -> UpstreamProtocol {
    match protocol {
        p if p.is_http2() => UpstreamProtocol::Http2,
        Protocol::Auto => UpstreamProtocol::SameAsDownstream,
        p if p.is_http() => UpstreamProtocol::Http1,
        _ => UpstreamProtocol::Tcp,
    }
}

/// Istio's "oldest wins": creation timestamp (RFC 3339 sorts as text), then load order. Resources
/// without a timestamp sort after those with one (they are "newer" than any applied one).
pub fn creation_order(m: &Meta) -> (bool, Option<&str>, usize) {
    (
        m.creation_timestamp.is_none(),
        m.creation_timestamp.as_deref(),
        m.order,
    )
}

/// The endpoint label keys a cluster's balancer reads: those its `failoverPriority` lists (only
/// these are kept per endpoint, so clusters without it carry no labels).
fn topology_keys(policy: &ClusterPolicy) -> Vec<&str> {
    policy
        .locality_lb_setting
        .iter()
        .flat_map(|l| &l.failover_priority)
        .map(|l| l.split_once('=').map_or(l.as_str(), |(k, _)| k))
        .collect()
}

/// `labels` restricted to `keys`.
fn restrict(labels: &Labels, keys: &[&str]) -> Labels {
    keys.iter()
        .filter_map(|k| labels.get_key_value(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `Some(0)` when `pattern` is exactly `hostname`; for a wildcard `*.suffix` covering it, a rank that
/// grows as the suffix gets shorter (less specific); `None` when it does not cover it.
pub fn host_match_rank(pattern: &str, hostname: &str) -> Option<usize> {
    if pattern == hostname {
        return Some(0);
    }
    if pattern == "*" {
        return Some(usize::MAX);
    }
    let suffix = pattern.strip_prefix('*')?;
    if hostname.len() > suffix.len() && hostname.ends_with(suffix) {
        Some(1 + 1024usize.saturating_sub(suffix.len()))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEXED: &str = "\
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  clusterIP: 10.96.0.20
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: open, namespace: default}
spec:
  clusterIP: 10.96.0.21
  selector: {}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: r1, namespace: default, labels: {app: reviews, version: v1}}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: r2, namespace: default, labels: {app: reviews, version: v2}}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: r3, namespace: other, labels: {app: reviews, version: v1}}
status: {podIP: 10.0.0.3}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: exact, namespace: default}
spec:
  host: reviews.default.svc.cluster.local
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: wild, namespace: default}
spec:
  host: \"*.default.svc.cluster.local\"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: mine, namespace: other}
spec:
  host: \"*.svc.cluster.local\"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: selected, namespace: other}
spec:
  host: reviews.default.svc.cluster.local
  workloadSelector: {matchLabels: {app: client}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: root, namespace: istio-system}
spec:
  host: \"*\"
";

    #[test]
    fn indexes_choose_what_the_full_scans_choose() {
        let docs = crate::source::split_documents("indexed.yaml", INDEXED);
        let report = crate::policy::build(&docs);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let snap = &report.snapshot;
        let rules = DestinationRuleIndex::new(snap);
        let names = |v: Vec<&DestinationRule>| -> Vec<String> {
            v.into_iter().map(|d| d.meta.name.clone()).collect()
        };
        let clients = [
            ClientInfo {
                namespace: "default".into(),
                labels: Labels::new(),
            },
            ClientInfo {
                namespace: "other".into(),
                labels: [("app".to_string(), "client".to_string())].into(),
            },
            ClientInfo {
                namespace: "other".into(),
                labels: Labels::new(),
            },
            ClientInfo {
                namespace: "third".into(),
                labels: Labels::new(),
            },
        ];
        let hosts = [
            ("reviews.default.svc.cluster.local", "default"),
            ("open.default.svc.cluster.local", "default"),
            ("unknown.example.com", "default"),
        ];
        for client in &clients {
            for (host, ns) in hosts {
                assert_eq!(
                    names(rules.rules_for(snap, client, host, ns)),
                    names(destination_rules_for(snap, client, host, ns)),
                    "{client:?} {host}"
                );
            }
        }
        let pods = PodIndex::new(snap);
        let v1: Labels = [("version".to_string(), "v1".to_string())].into();
        for (service, svc) in snap.services.iter().enumerate() {
            for subset in [None, Some(&v1)] {
                assert_eq!(
                    snap.endpoints_among(service, 0, subset, pods.candidates(svc, subset)),
                    snap.endpoints(service, 0, subset),
                    "{} {subset:?}",
                    svc.hostname
                );
            }
        }
    }

    #[test]
    fn wildcard_ranks() {
        assert_eq!(host_match_rank("a.b.c", "a.b.c"), Some(0));
        assert!(host_match_rank("*.b.c", "a.b.c").is_some());
        assert!(host_match_rank("*.b.c", "x.a.b.c").is_some());
        assert_eq!(host_match_rank("*.b.c", "b.c"), None);
        assert!(host_match_rank("*.b.c", "a.b.c") < host_match_rank("*.c", "a.b.c"));
    }
}
