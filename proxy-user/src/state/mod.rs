//! The node's current state: one validated snapshot, the routing table built from it, and which
//! kernel cgroup ids belong to which pods. Published atomically; readers never lock.
//!
//! Invariant: a request loads the state once when it starts and keeps that `Arc` to the end, so an
//! in-flight request finishes under the config it started with.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub mod reload;

use arc_swap::ArcSwap;

use crate::policy::{PodId, Snapshot};
use crate::routing::{ClientInfo, RouteTable};
use crate::upstream::ClusterRegistry;

/// Everything the request path reads, consistent with one snapshot.
#[derive(Debug, Default)]
pub struct NodeState {
    pub snapshot: Arc<Snapshot>,
    pub routes: Arc<RouteTable>,
    /// Kernel cgroup id -> captured pod.
    pub pod_by_cgroup: HashMap<u64, PodId>,
}

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
    pub fn publish(
        &self,
        snapshot: Arc<Snapshot>,
        pod_by_cgroup: HashMap<u64, PodId>,
    ) -> Arc<NodeState> {
        let routes = Arc::new(RouteTable::build_for_node(
            &snapshot,
            &self.registry,
            self.node_name.as_deref(),
        ));
        self.current.swap(Arc::new(NodeState {
            snapshot,
            routes,
            pod_by_cgroup,
        }))
    }

    /// Every live cluster (for the admin API's per-cluster stats).
    pub fn clusters(&self) -> Vec<Arc<crate::upstream::Cluster>> {
        self.registry.clusters()
    }

    /// Replace only the pod cgroup mapping (pods appeared or went), keeping snapshot and routes.
    pub fn update_pod_cgroups(&self, pod_by_cgroup: HashMap<u64, PodId>) {
        let cur = self.load();
        if cur.pod_by_cgroup == pod_by_cgroup {
            return;
        }
        // Routes depend only on the snapshot, so they are shared, not rebuilt.
        self.current.store(Arc::new(NodeState {
            snapshot: Arc::clone(&cur.snapshot),
            routes: Arc::clone(&cur.routes),
            pod_by_cgroup,
        }));
    }
}

/// Returns memory freed since the last call to the OS. A reload builds the new snapshot and routing
/// tables on a blocking thread while the old ones still serve, so the old ones are freed in another
/// allocator arena than the new ones live in; glibc keeps such freed pages resident, and without this
/// the RSS after a few reloads settles at several configs' worth instead of one.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How the captured pods' cgroups are found.
#[derive(Debug, Clone)]
pub enum PodLayout {
    /// File mode: `<root>/<namespace>/<pod name>` for every Pod of the config.
    Files { root: PathBuf },
    /// Cluster mode: kubelet's pod cgroups under `root`, for the pods scheduled on `node` that
    /// are opted in.
    Kubelet { root: PathBuf, node: String },
}

impl PodLayout {
    /// Kernel cgroup id -> pod, for the captured pods of `snapshot` whose cgroup exists now.
    pub fn resolve(&self, snapshot: &Snapshot) -> HashMap<u64, PodId> {
        match self {
            PodLayout::Files { root } => resolve_pod_cgroups(snapshot, root),
            PodLayout::Kubelet { root, node } => resolve_kubelet_pods(snapshot, root, node),
        }
    }
}

/// Kernel cgroup id -> pod for the pods of `snapshot` scheduled on `node` that are captured
/// ([`crate::pods::capture::decide`]) and whose kubelet cgroup exists under `root` now. The mapping
/// goes by pod UID, so a new pod that reuses an old pod's IP is never taken for it.
fn resolve_kubelet_pods(snapshot: &Snapshot, root: &Path, node: &str) -> HashMap<u64, PodId> {
    use crate::pods::{capture, kubelet};
    let scan = match kubelet::KubeletCgroups::scan(root) {
        Ok(scan) => scan,
        Err(e) => {
            tracing::warn!(error = %e, "cannot scan kubelet's pod cgroups");
            return HashMap::new();
        }
    };
    for problem in scan.problems() {
        tracing::debug!(path = %problem.path.display(), reason = %problem.reason, "kubelet cgroup scan");
    }
    let mut on_node = 0;
    let mut captured = 0;
    let resolved: HashMap<u64, PodId> = snapshot
        .pods
        .iter()
        .enumerate()
        .filter(|(_, pod)| pod.node_name.as_deref() == Some(node))
        .filter(|(_, pod)| {
            on_node += 1;
            let namespace = snapshot
                .namespaces
                .get(&pod.meta.namespace)
                .map(|n| &n.labels);
            let reason = capture::decide(namespace, pod);
            tracing::trace!(pod = %pod.meta.display_name(), %reason, "capture decision");
            captured += usize::from(reason.captures());
            reason.captures()
        })
        .filter_map(|(id, pod)| {
            let cgroup = scan.get(kubelet::cgroup_uid(pod)?)?;
            Some((cgroup.cgroup_id, id))
        })
        .collect();
    tracing::debug!(
        on_node,
        captured,
        pod_cgroups = scan.len(),
        resolved = resolved.len(),
        "kubelet pods"
    );
    resolved
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
