//! The node's current state: one validated snapshot, the routing table built from it, and which
//! kernel cgroup ids belong to which pods. Published atomically; readers never lock.
//!
//! Invariant: a request loads the state once when it starts and keeps that `Arc` to the end, so an
//! in-flight request finishes under the config it started with.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

pub mod reload;

use arc_swap::ArcSwap;

use crate::policy::{PodId, Snapshot};
use crate::routing::{Changes, ClientInfo, RouteTable};
use crate::upstream::ClusterRegistry;

/// Everything the request path reads, consistent with one snapshot.
#[derive(Debug, Default)]
pub struct NodeState {
    pub snapshot: Arc<Snapshot>,
    pub routes: Arc<RouteTable>,
    /// Kernel cgroup id -> captured pod.
    pub pod_by_cgroup: HashMap<u64, PodId>,
    /// Pod cgroups on the node whose pods are not captured: the kernel leaves them alone.
    pub skipped_cgroups: HashSet<u64>,
    /// Cgroups whose children are pod cgroups (cluster mode): a child in neither set above is a
    /// pod not resolved yet, which the kernel redirects as pending.
    pub pod_parents: HashSet<u64>,
}

/// This node's pod cgroups, as the kernel and the accept path need them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PodCgroups {
    /// Captured pods: kernel cgroup id -> pod.
    pub captured: HashMap<u64, PodId>,
    /// Cgroups of pods that are not captured (opted out, host network, sidecar, or not known to
    /// keel for longer than [`UNKNOWN_POD_GRACE`]).
    pub skipped: HashSet<u64>,
    /// Cgroups whose children are pod cgroups (kubelet's kubepods and QoS cgroups).
    pub parents: HashSet<u64>,
}

impl PodCgroups {
    /// Only captured pods, nothing skipped, no parents (file mode).
    pub fn captured_only(captured: HashMap<u64, PodId>) -> Self {
        Self {
            captured,
            ..Self::default()
        }
    }
}

/// How long a kubelet pod cgroup that matches no Pod keel knows stays pending (its connects are
/// redirected and held at accept until keel learns the Pod) before keel lets it go direct.
pub const UNKNOWN_POD_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

impl NodeState {
    /// The client facts routing needs, for the pod the kernel attributed a connection to.
    pub fn client(&self, pod: PodId) -> Option<ClientInfo> {
        self.snapshot.pods.get(pod).map(|p| ClientInfo {
            namespace: p.meta.namespace.clone(),
            labels: p.labels.clone(),
        })
    }

    /// `namespace/name` of a pod, for logs.
    pub fn pod_name(&self, pod: PodId) -> String {
        self.snapshot
            .pods
            .get(pod)
            .map(|p| format!("{}/{}", p.meta.namespace, p.meta.name))
            .unwrap_or_else(|| "<unknown>".to_string())
    }
}

/// Holds the current `NodeState` and the clusters that outlive snapshots.
#[derive(Debug, Default)]
pub struct State {
    current: ArcSwap<NodeState>,
    registry: ClusterRegistry,
    /// The node the proxy runs on (`--node-name`): its `Node` resource gives the clients' locality.
    node_name: Option<String>,
}

impl State {
    /// Empty state for the proxy on node `node_name`.
    pub fn for_node(node_name: Option<String>) -> Self {
        Self {
            node_name,
            ..Self::default()
        }
    }

    /// The node this proxy runs on, if known.
    pub fn node_name(&self) -> Option<&str> {
        self.node_name.as_deref()
    }

    /// The current state; hold the `Arc` for the duration of a request.
    pub fn load(&self) -> Arc<NodeState> {
        self.current.load_full()
    }

    /// Publish a new snapshot with the pod cgroup mapping resolved for it. Returns the state it
    /// replaced, so a caller can free it (a large config takes a while) after reporting the change.
    pub fn publish(&self, snapshot: Arc<Snapshot>, pods: PodCgroups) -> Arc<NodeState> {
        self.publish_changed(snapshot, pods, &Changes::Everything)
    }

    /// [`State::publish`] of a snapshot that differs from the one published now by `changes`
    /// only: routes those changes cannot touch are taken over from the current tables.
    pub fn publish_changed(
        &self,
        snapshot: Arc<Snapshot>,
        pods: PodCgroups,
        changes: &Changes,
    ) -> Arc<NodeState> {
        let current = self.current.load();
        let routes = Arc::new(RouteTable::rebuild_for_node(
            &snapshot,
            &self.registry,
            self.node_name.as_deref(),
            Some(&current.routes),
            changes,
        ));
        drop(current);
        self.current.swap(Arc::new(NodeState {
            snapshot,
            routes,
            pod_by_cgroup: pods.captured,
            skipped_cgroups: pods.skipped,
            pod_parents: pods.parents,
        }))
    }

    /// Every live cluster (for the admin API's per-cluster stats).
    pub fn clusters(&self) -> Vec<Arc<crate::upstream::Cluster>> {
        self.registry.clusters()
    }

    /// Replace only the pod cgroup mapping (pods appeared or went), keeping snapshot and routes.
    /// True if it changed anything.
    pub fn update_pod_cgroups(&self, pods: PodCgroups) -> bool {
        let cur = self.load();
        if cur.pod_by_cgroup == pods.captured
            && cur.skipped_cgroups == pods.skipped
            && cur.pod_parents == pods.parents
        {
            return false;
        }
        // Routes depend only on the snapshot, so they are shared, not rebuilt.
        self.current.store(Arc::new(NodeState {
            snapshot: Arc::clone(&cur.snapshot),
            routes: Arc::clone(&cur.routes),
            pod_by_cgroup: pods.captured,
            skipped_cgroups: pods.skipped,
            pod_parents: pods.parents,
        }));
        true
    }
}

/// How the captured pods' cgroups are found.
#[derive(Debug, Clone)]
pub enum PodLayout {
    /// File mode: `<root>/<namespace>/<pod name>` for every Pod of the config.
    Files { root: PathBuf },
    /// Cluster mode: kubelet's pod cgroups under `root`, for the pods scheduled on `node` that
    /// are opted in.
    Kubelet {
        root: PathBuf,
        node: String,
        /// Pod cgroups that match no Pod keel knows, with when each was first seen.
        unknown_since: Arc<std::sync::Mutex<HashMap<u64, Instant>>>,
    },
}

impl PodLayout {
    /// Cluster mode under `root` for the pods of `node`.
    pub fn kubelet(root: PathBuf, node: String) -> Self {
        PodLayout::Kubelet {
            root,
            node,
            unknown_since: Arc::default(),
        }
    }

    /// This node's pod cgroups for `snapshot`, as they exist now.
    pub fn resolve(&self, snapshot: &Snapshot) -> PodCgroups {
        match self {
            PodLayout::Files { root } => {
                PodCgroups::captured_only(resolve_pod_cgroups(snapshot, root))
            }
            PodLayout::Kubelet {
                root,
                node,
                unknown_since,
            } => {
                let mut unknown = unknown_since
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                resolve_kubelet_pods(snapshot, root, node, &mut unknown, Instant::now())
            }
        }
    }
}

/// The pods of `snapshot` scheduled on `node` whose kubelet cgroup exists under `root` now:
/// captured ones ([`crate::pods::capture::decide`]) by cgroup id, the others skipped. The mapping
/// goes by pod UID, so a new pod that reuses an old pod's IP is never taken for it.
///
/// A pod cgroup that matches no Pod of the snapshot is left pending (the kernel redirects it, the
/// accept path waits for keel to learn the Pod) for [`UNKNOWN_POD_GRACE`] after `unknown` first
/// saw it, then skipped: a pod keel does not know goes direct.
fn resolve_kubelet_pods(
    snapshot: &Snapshot,
    root: &Path,
    node: &str,
    unknown: &mut HashMap<u64, Instant>,
    now: Instant,
) -> PodCgroups {
    use crate::pods::{capture, kubelet};
    let scan = match kubelet::KubeletCgroups::scan(root) {
        Ok(scan) => scan,
        Err(e) => {
            tracing::warn!(error = %e, "cannot scan kubelet's pod cgroups");
            return PodCgroups::default();
        }
    };
    for problem in scan.problems() {
        tracing::debug!(path = %problem.path.display(), reason = %problem.reason, "kubelet cgroup scan");
    }
    let mut out = PodCgroups {
        parents: scan.parent_ids().iter().copied().collect(),
        ..PodCgroups::default()
    };
    let mut on_node = 0;
    let mut known = HashSet::new();
    for (id, pod) in snapshot.pods.iter().enumerate() {
        if pod.node_name.as_deref() != Some(node) {
            continue;
        }
        on_node += 1;
        let Some(cgroup) = kubelet::cgroup_uid(pod).and_then(|uid| scan.get(uid)) else {
            continue;
        };
        known.insert(cgroup.cgroup_id);
        let namespace = snapshot
            .namespaces
            .get(&pod.meta.namespace)
            .map(|n| &n.labels);
        let reason = capture::decide(namespace, pod);
        tracing::trace!(pod = %pod.meta.display_name(), %reason, "capture decision");
        if reason.captures() {
            out.captured.insert(cgroup.cgroup_id, id);
        } else {
            out.skipped.insert(cgroup.cgroup_id);
        }
    }
    let present: HashSet<u64> = scan.pods().values().map(|c| c.cgroup_id).collect();
    unknown.retain(|id, _| present.contains(id) && !known.contains(id));
    for &id in present.difference(&known) {
        let first_seen = *unknown.entry(id).or_insert(now);
        if now.saturating_duration_since(first_seen) >= UNKNOWN_POD_GRACE {
            out.skipped.insert(id);
        }
    }
    tracing::debug!(
        on_node,
        pod_cgroups = scan.len(),
        captured = out.captured.len(),
        skipped = out.skipped.len(),
        pending = unknown.len(),
        "kubelet pods"
    );
    out
}

/// Where a pod's cgroup lives in file mode: `<cgroup root>/<namespace>/<pod name>`.
pub fn pod_cgroup_path(cgroup_root: &Path, namespace: &str, name: &str) -> PathBuf {
    cgroup_root.join(namespace).join(name)
}

/// Kernel cgroup ids of the captured pods of `snapshot` whose cgroup exists now. Pods annotated
/// `keel.io/capture: "false"` are left out, so the kernel never redirects them.
///
/// Runs every second with every pod of the config: each namespace directory is listed once and only
/// the pods found there are looked up, so pods without a cgroup on this node cost no system call.
pub fn resolve_pod_cgroups(snapshot: &Snapshot, cgroup_root: &Path) -> HashMap<u64, PodId> {
    let mut present: HashMap<&str, HashSet<std::ffi::OsString>> = HashMap::new();
    snapshot
        .pods
        .iter()
        .enumerate()
        .filter(|(_, pod)| pod.capture)
        .filter(|(_, pod)| {
            present
                .entry(pod.meta.namespace.as_str())
                .or_insert_with(|| {
                    std::fs::read_dir(cgroup_root.join(&pod.meta.namespace))
                        .map(|entries| entries.flatten().map(|e| e.file_name()).collect())
                        .unwrap_or_default()
                })
                .contains(std::ffi::OsStr::new(&pod.meta.name))
        })
        .filter_map(|(id, pod)| {
            let path = pod_cgroup_path(cgroup_root, &pod.meta.namespace, &pod.meta.name);
            crate::ebpf::cgroup_id(&path).ok().map(|cg| (cg, id))
        })
        .collect()
}
