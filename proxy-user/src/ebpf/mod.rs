//! The kernel side of connection capture: load and attach the eBPF programs, publish the desired
//! state into their maps, and read back what they recorded.
//!
//! # How a pod's connection reaches the proxy
//! The programs are attached at one cgroup root under which every pod has its own cgroup
//! (`<root>/<namespace>/<pod>`, possibly with container cgroups below). On `connect()` of a TCP
//! socket to a destination in the meshed set ([`Redirector::set_meshed_destinations`]) from a task
//! whose cgroup, or an ancestor of it at most [`POD_SEARCH_DEPTH`] levels below the root, is a
//! captured pod ([`Redirector::set_pod_cgroups`]), the kernel records `{original destination, pod}`
//! under the socket's cookie and rewrites the destination to the proxy. When the client side is
//! established it re-files the record under the 4-tuple, which the proxy finds with
//! [`ConnTable::lookup`] on `accept()`. Both records are deleted when the client socket closes.
//!
//! # Identity model
//! The pod is identified by the cgroup of the task that calls `connect()`, which a pod cannot
//! choose, not by an address or a UID. Only captured pods are in the pod set: the proxy's own
//! cgroup and opted-out pods are never inserted, and that is what prevents redirect loops (a UID
//! exemption would let any process sharing the proxy's UID escape capture).
//!
//! # When the maps are full
//! The cookie record is inserted (`BPF_NOEXIST`) before the destination is rewritten. If the map is
//! full (more than [`CONN_MAX`] connections in flight) the connection is left alone and goes
//! direct, counted in [`KernelStats::skipped_map_full`]: a connection is never redirected without a
//! record, so the proxy never has to guess. The tuple map has the same capacity and only holds
//! entries whose cookie record is alive, so it cannot be the one that fails. Plain hash maps, not
//! LRU: eviction would drop the record of a live connection.
//!
//! # Lifetime
//! Maps and links are pinned under bpffs ([`pins`]): they outlive the process. A new keel on the
//! same cgroup root and proxy address (the upgrade) reuses the maps and swaps its programs into the
//! pinned links atomically, so the kernel never stops redirecting and records written for either
//! process are visible to both. Redirection is gated by a heartbeat ([`liveness`]): when no keel
//! beats (SIGKILL, OOM, SIGSTOP, exit), connections go direct within `LIVENESS_STALE_NS` (or are
//! refused at once for fail-closed pods). `keel uninstall` ([`pins::uninstall`]) removes the pins,
//! which detaches everything.
//!
//! Invariant: one [`Redirector`] per process, owned by one task; of the live keels of an install,
//! only the newest ([`Redirector::is_newest`]) writes `MESHED_DESTS`, `POD_CGROUPS` and
//! `POD_TRAFFIC_RULES`. Its mirrors are read back from the maps when it starts and when it becomes
//! the writer again. Readers use [`ConnTable`] without locks.
//!
//! # Traffic rules
//! A captured pod with Istio's `traffic.sidecar.istio.io/*` outbound annotations has a
//! [`TrafficRules`] entry under its cgroup id in `POD_TRAFFIC_RULES`, and the
//! `POD_F_TRAFFIC_RULES` bit in its `POD_CGROUPS` value; the connect hooks read the entry only for
//! such pods (one more hash lookup on their meshed connects, none for other pods) and send what the
//! rules exclude direct (`KernelStats::skipped_excluded`). See `crate::pods::traffic`.

mod addr;
/// The kernel's word form of an address (for the kernel-record fuzz target).
pub(crate) use addr::to_words as addr_words;
mod kernel_log;
pub mod liveness;
pub mod pins;
pub mod privilege;

use std::collections::{HashMap as StdHashMap, HashSet};
use std::fs::File;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aya::maps::{HashMap, MapData, MapError, PerCpuArray};
use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSockAddr, ProgramError, SockOps};
use aya::{Ebpf, EbpfLoader};
use proxy_common::{
    ConnTuple, ConnValue, DestKey, PodValue, ProxyConfig, TrafficRules, ABI_VERSION,
    CONN_F_ESTABLISHED, CONN_MAX, MESHED_DESTS_MAX, POD_CGROUPS_MAX, POD_F_FAIL_CLOSED,
    POD_F_TRAFFIC_RULES, POD_PARENTS_MAX, POD_TRAFFIC_RULES_MAX,
};

pub use proxy_common::{POD_INDEX_PENDING, POD_INDEX_SKIP};

pub use proxy_common::POD_SEARCH_DEPTH;

use kernel_log::LogPump;
use liveness::Heartbeat;

/// The maps shared by every keel of an install (pinned); the log ring of `aya-log` stays private.
const PINNED_MAPS: [&str; 8] = [
    proxy_common::MESHED_DESTS,
    proxy_common::POD_CGROUPS,
    proxy_common::POD_TRAFFIC_RULES,
    proxy_common::POD_PARENTS,
    proxy_common::CONN_BY_COOKIE,
    proxy_common::CONN_BY_TUPLE,
    proxy_common::STATS,
    proxy_common::LIVENESS,
];

/// The eBPF object built by `build.rs` from the `proxy-ebpf` crate.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/proxy-ebpf"));

/// Program names in the object (the entry functions of `proxy-ebpf`).
const PROG_CONNECT4: &str = "keel_connect4";
const PROG_CONNECT6: &str = "keel_connect6";
const PROG_SOCKOPS: &str = "keel_sockops";

/// `statfs.f_type` of cgroup v2.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Errors of the eBPF layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `max_connections` must be at least 1.
    #[error("the connection maps need room for at least one connection")]
    InvalidCapacity,
    /// The process may not load or attach programs.
    #[error(transparent)]
    Privilege(#[from] privilege::MissingPrivilege),
    /// The attach root cannot be opened or inspected.
    #[error("cgroup root {path}: {source}")]
    CgroupRoot {
        /// The path given.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Neither a v4 nor a v6 proxy address was given, or one is unspecified (0.0.0.0 / ::).
    #[error("invalid proxy address: {0}")]
    InvalidProxyAddress(String),
    /// The object failed to load (parse, BTF, map creation).
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program is missing from the object (build mismatch).
    #[error("program {0} missing from the eBPF object")]
    MissingProgram(&'static str),
    /// A program failed to load (verifier) or attach.
    #[error("program {name}: {source}")]
    Program {
        /// Program name.
        name: &'static str,
        /// The underlying error.
        source: ProgramError,
    },
    /// A map is missing from the object (build mismatch).
    #[error("map {0} missing from the eBPF object")]
    MissingMap(&'static str),
    /// Pinning, finding or updating the install's objects under bpffs failed.
    #[error("bpffs install {path}: {source}")]
    Pin {
        /// The pin path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A map operation failed.
    #[error("map {name}: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// The underlying error.
        source: MapError,
    },
    /// More entries were requested than the map holds; nothing was changed.
    #[error("{what}: {count} entries requested, capacity is {max}")]
    Capacity {
        /// Which set.
        what: &'static str,
        /// Entries requested.
        count: usize,
        /// Map capacity.
        max: u32,
    },
    /// The same cgroup id was given twice with different pod indexes; nothing was changed.
    #[error("cgroup id {cgroup_id} given for pods {first} and {second}")]
    DuplicatePodCgroup {
        /// The cgroup id.
        cgroup_id: u64,
        /// One pod index.
        first: u32,
        /// The other pod index.
        second: u32,
    },
}

impl Error {
    /// Whether retrying the same call may succeed (transient kernel conditions such as ENOMEM on
    /// a map update); configuration and build errors are permanent.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Map { .. })
    }
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> Error {
    move |source| Error::Map { name, source }
}

/// Sums of the kernel's per-CPU counters since attach. See `proxy_common::STAT_*` for meanings.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct KernelStats {
    /// Connections redirected to the proxy (with a record).
    pub redirected: u64,
    /// Meshed destination, but the task is not in a captured pod's cgroup (e.g. the proxy).
    pub skipped_not_pod: u64,
    /// Meshed destination from a pod, but the connection map was full: the connection went direct.
    pub skipped_map_full: u64,
    /// Redirected connections that reached ESTABLISHED and were filed under their 4-tuple.
    pub established: u64,
    /// Redirected connections closed (records deleted).
    pub closed: u64,
    /// TCP connects under the root to destinations that are not meshed (or loopback).
    pub skipped_not_meshed: u64,
    /// Meshed destination from a pod, but no proxy address of that family is configured.
    pub skipped_no_proxy: u64,
    /// A socket connected again after an attempt that failed before the SYN; record replaced.
    pub reconnected: u64,
    /// Tuple record could not be inserted (should never happen); the proxy will refuse it.
    pub tuple_insert_failed: u64,
    /// Could not enable the close callback; the record was dropped and the proxy will refuse it.
    pub cb_flags_failed: u64,
    /// The attach root was not among the connecting task's ancestors.
    pub root_not_ancestor: u64,
    /// The object and this binary disagree on the ABI version: nothing is redirected.
    pub abi_mismatch: u64,
    /// Meshed connects from pods that went direct because no keel's heartbeat was fresh.
    pub skipped_no_keel: u64,
    /// Meshed connects from fail-closed pods refused because no keel's heartbeat was fresh.
    pub refused_no_keel: u64,
    /// Meshed connects from captured pods that went direct because the pod's traffic annotations
    /// (`traffic.sidecar.istio.io/*`) exclude them.
    pub skipped_excluded: u64,
    /// Entries and capacity of each map.
    pub maps: Vec<MapOccupancy>,
}

/// How full one kernel map is.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MapOccupancy {
    /// The map's name in the object (`CONN_BY_COOKIE`, ...).
    pub map: &'static str,
    /// Entries now.
    pub entries: u64,
    /// The most entries it holds.
    pub capacity: u32,
}

/// What the kernel recorded about a redirected connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnRecord {
    /// The destination the pod connected to (IPv4 for v4 and v4-mapped destinations).
    pub original_dst: SocketAddr,
    /// The cgroup id found in the pod set (the pod's cgroup; the task may be in a child of it).
    pub pod_cgroup_id: u64,
    /// The pod index published with [`Redirector::set_pod_cgroups`].
    pub pod_index: u32,
}

impl From<&ConnValue> for ConnRecord {
    fn from(value: &ConnValue) -> Self {
        Self {
            original_dst: addr::socket_addr(value.original_addr, value.original_port),
            pod_cgroup_id: value.pod_cgroup_id,
            pod_index: value.pod_index,
        }
    }
}

/// A cheap, cloneable read handle on the kernel's connection records, for the accept path. Each
/// lookup is one `bpf_map_lookup_elem` syscall on a shared fd: no lock, no copy of the table.
#[derive(Clone)]
pub struct ConnTable {
    map: Arc<HashMap<MapData, ConnTuple, ConnValue>>,
}

impl std::fmt::Debug for ConnTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnTable").finish_non_exhaustive()
    }
}

impl ConnTable {
    /// The kernel's record for an accepted connection: `peer` is the client address as accepted,
    /// `local` the proxy address it was accepted on. IPv4 and v4-mapped forms are equivalent.
    /// `None` means the connection was not redirected by the kernel (or has already closed on the
    /// client side): the caller must refuse it, since it cannot know the pod or the destination.
    pub fn lookup(&self, peer: SocketAddr, local: SocketAddr) -> Option<ConnRecord> {
        let key = ConnTuple {
            client_addr: addr::to_words(peer.ip()),
            proxy_addr: addr::to_words(local.ip()),
            client_port: peer.port(),
            proxy_port: local.port(),
        };
        match self.map.get(&key, 0) {
            Ok(value) => Some(ConnRecord::from(&value)),
            Err(MapError::KeyNotFound) => None,
            Err(err) => {
                tracing::warn!(error = %err, %peer, %local, "connection record lookup failed");
                None
            }
        }
    }
}

/// A pod as published to the kernel (captured, or skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedPod {
    /// The pod's cgroup id.
    pub cgroup_id: u64,
    /// The pod's index (copied into each connection record), or [`POD_INDEX_SKIP`] for a pod
    /// that is never redirected.
    pub index: u32,
    /// When no keel serves, refuse the pod's meshed connects instead of letting them go direct.
    pub fail_closed: bool,
    /// Which of the pod's meshed connects are captured (its Istio traffic annotations); `None`:
    /// all of them. Boxed: the kernel's rule set is 1,160 bytes and most pods have none.
    pub traffic: Option<Box<TrafficRules>>,
}

/// This process's programs, its heartbeat and handles on the install's shared maps. Dropping it
/// frees the heartbeat slot (redirection to this keel ends); the pinned links and maps stay for
/// the next keel, or until `keel uninstall`. There should be one per process, owned by one task
/// that applies desired-state diffs; readers get a [`ConnTable`].
pub struct Redirector {
    /// This process's programs (the pinned links point at them until a newer keel swaps its own in).
    _ebpf: Ebpf,
    /// Declared before the maps so the slot is freed first on drop.
    heartbeat: Heartbeat,
    install: pins::Install,
    meshed: HashMap<MapData, DestKey, u32>,
    pods: HashMap<MapData, u64, PodValue>,
    rules: HashMap<MapData, u64, TrafficRules>,
    parents: HashMap<MapData, u64, u32>,
    cookies: HashMap<MapData, u64, ConnValue>,
    stats: PerCpuArray<MapData, u64>,
    conns: ConnTable,
    /// Mirror of `MESHED_DESTS` (while this keel is the install's writer).
    meshed_current: HashSet<DestKey>,
    /// Mirror of `POD_CGROUPS` (while this keel is the install's writer).
    pods_current: StdHashMap<u64, PodValue>,
    /// Mirror of `POD_TRAFFIC_RULES` (while this keel is the install's writer).
    rules_current: StdHashMap<u64, TrafficRules>,
    /// Mirror of `POD_PARENTS` (while this keel is the install's writer).
    parents_current: HashSet<u64>,
    /// Capacity of each connection map (`--max-connections`).
    conn_capacity: u32,
    /// Declared last so it is dropped after the programs are detached.
    _log: Option<LogPump>,
}

impl std::fmt::Debug for Redirector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redirector")
            .field("meshed", &self.meshed_current.len())
            .field("pods", &self.pods_current.len())
            .finish_non_exhaustive()
    }
}

impl Redirector {
    /// Load the programs with the proxy addresses, open (or create and pin) the install's maps,
    /// put the programs into the install's pinned links (a `BPF_LINK_UPDATE` when they exist, which
    /// never leaves a gap; a new attach and pin otherwise) and start the heartbeat.
    ///
    /// Nothing new is redirected until destinations and pods are published (a fresh install) —
    /// or, when a keel already serves the install, at once, with the published state it shares.
    /// v4 destinations (also v4-mapped ones on v6 sockets) go to `proxy_v4`, native v6 ones to
    /// `proxy_v6`; a family without a proxy address is not redirected. The addresses must be ones
    /// the proxy listens on.
    ///
    /// `max_connections` sizes both connection maps (default [`CONNECTION_CAPACITY`]) when the
    /// install is created; a keel joining an existing install uses the maps as they are.
    pub fn attach(
        cgroup_root: &Path,
        proxy_v4: Option<SocketAddrV4>,
        proxy_v6: Option<SocketAddrV6>,
        max_connections: u32,
    ) -> Result<Self, Error> {
        if max_connections == 0 {
            return Err(Error::InvalidCapacity);
        }
        privilege::check()?;
        let config = proxy_config(cgroup_root, proxy_v4, proxy_v6)?;
        let root = File::open(cgroup_root).map_err(|source| Error::CgroupRoot {
            path: cgroup_root.to_owned(),
            source,
        })?;
        let install = pins::Install::new(config.root_cgroup_id, proxy_v4, proxy_v6);
        let pin_err = |path: &Path| {
            let path = path.to_owned();
            move |source| Error::Pin { path, source }
        };
        let _lock = install.create_and_lock().map_err(pin_err(install.dir()))?;

        let log_level = kernel_log::kernel_log_level();
        let map_paths: Vec<(&'static str, PathBuf)> = PINNED_MAPS
            .iter()
            .map(|&name| (name, install.map_path(name)))
            .collect();
        let mut loader = EbpfLoader::new();
        loader
            .override_global(proxy_common::PROXY_CONFIG, &config, true)
            .override_global(kernel_log::LEVEL_GLOBAL, &log_level, false)
            // Equal sizes keep the invariant that the tuple map is never the one that is full.
            .map_max_entries(proxy_common::CONN_BY_COOKIE, max_connections)
            .map_max_entries(proxy_common::CONN_BY_TUPLE, max_connections);
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        // Start draining before attaching, so records from the first connections are not lost.
        let log = LogPump::start(&mut ebpf);

        // sockops first: a connection redirected before sockops is attached would never be filed
        // under its tuple, and the proxy would refuse it.
        {
            let name = PROG_SOCKOPS;
            let prog: &mut SockOps = ebpf
                .program_mut(name)
                .ok_or(Error::MissingProgram(name))?
                .try_into()
                .map_err(|source| Error::Program { name, source })?;
            prog.load()
                .map_err(|source| Error::Program { name, source })?;
            let prog_fd = program_fd(name, prog.fd())?;
            link_pinned(&install, name, &prog_fd, || {
                let program = |source| Error::Program { name, source };
                let id = prog
                    .attach(&root, CgroupAttachMode::Single)
                    .map_err(program)?;
                let link = prog.take_link(id).map_err(program)?;
                FdLink::try_from(link).map_err(|e| Error::Pin {
                    path: install.link_path(name),
                    source: std::io::Error::other(e),
                })
            })?;
        }
        for name in [PROG_CONNECT4, PROG_CONNECT6] {
            let prog: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or(Error::MissingProgram(name))?
                .try_into()
                .map_err(|source| Error::Program { name, source })?;
            prog.load()
                .map_err(|source| Error::Program { name, source })?;
            let prog_fd = program_fd(name, prog.fd())?;
            link_pinned(&install, name, &prog_fd, || {
                let program = |source| Error::Program { name, source };
                let id = prog
                    .attach(&root, CgroupAttachMode::Single)
                    .map_err(program)?;
                let link = prog.take_link(id).map_err(program)?;
                FdLink::try_from(link).map_err(|e| Error::Pin {
                    path: install.link_path(name),
                    source: std::io::Error::other(e),
                })
            })?;
        }
        // The links run this ABI's programs now; an older ABI's maps serve no one new.
        match install.remove_other_abis() {
            Ok(removed) if !removed.is_empty() => {
                tracing::warn!(?removed, "replaced an install of another ABI version")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot unpin another ABI's maps"),
        }

        let meshed: HashMap<MapData, DestKey, u32> =
            take_hash(&mut ebpf, proxy_common::MESHED_DESTS)?;
        let pods: HashMap<MapData, u64, PodValue> =
            take_hash(&mut ebpf, proxy_common::POD_CGROUPS)?;
        let rules: HashMap<MapData, u64, TrafficRules> =
            take_hash(&mut ebpf, proxy_common::POD_TRAFFIC_RULES)?;
        let parents: HashMap<MapData, u64, u32> = take_hash(&mut ebpf, proxy_common::POD_PARENTS)?;
        let cookies = take_hash(&mut ebpf, proxy_common::CONN_BY_COOKIE)?;
        let tuples = take_hash(&mut ebpf, proxy_common::CONN_BY_TUPLE)?;
        let stats_name = proxy_common::STATS;
        let stats = ebpf
            .take_map(stats_name)
            .ok_or(Error::MissingMap(stats_name))?
            .try_into()
            .map_err(map_err(stats_name))?;
        let cookie_pin = install.map_path(proxy_common::CONN_BY_COOKIE);
        let conn_capacity = aya::maps::MapInfo::from_pin(&cookie_pin)
            .map(|info| info.max_entries())
            .map_err(map_err(proxy_common::CONN_BY_COOKIE))?;
        let heartbeat = Heartbeat::start(&install.map_path(proxy_common::LIVENESS))
            .map_err(pin_err(&install.map_path(proxy_common::LIVENESS)))?;

        tracing::info!(
            root = %cgroup_root.display(),
            root_cgroup_id = config.root_cgroup_id,
            ?proxy_v4,
            ?proxy_v6,
            install = %install.dir().display(),
            "eBPF redirect attached"
        );
        let mut redirector = Self {
            _ebpf: ebpf,
            heartbeat,
            install,
            meshed,
            pods,
            rules,
            parents,
            cookies,
            stats,
            conns: ConnTable {
                map: Arc::new(tuples),
            },
            meshed_current: HashSet::new(),
            pods_current: StdHashMap::new(),
            rules_current: StdHashMap::new(),
            parents_current: HashSet::new(),
            conn_capacity,
            _log: log,
        };
        redirector.reload_mirrors();
        Ok(redirector)
    }

    /// Re-reads the mirrors of the shared maps (another keel may have written them).
    pub fn reload_mirrors(&mut self) {
        self.meshed_current = self.meshed.keys().filter_map(Result::ok).collect();
        self.pods_current = self.pods.iter().filter_map(Result::ok).collect();
        self.rules_current = self.rules.iter().filter_map(Result::ok).collect();
        self.parents_current = self.parents.keys().filter_map(Result::ok).collect();
    }

    /// The install directory under bpffs.
    pub fn install_dir(&self) -> &Path {
        self.install.dir()
    }

    /// Whether this is the newest live keel of the install: the one that writes the shared pod and
    /// destination maps and sweeps stale records.
    pub fn is_newest(&self) -> bool {
        self.heartbeat.is_newest()
    }

    /// Whether another live keel serves the install (a successor that takes new connections).
    pub fn others_alive(&self) -> bool {
        self.heartbeat.others_alive()
    }

    /// Stops this keel's heartbeat: new connections stop being redirected to it (they go to another
    /// live keel of the install, or direct when there is none).
    pub fn stop_heartbeat(&mut self) {
        self.heartbeat.stop();
    }

    /// Make exactly this set the meshed destinations (apply a diff: insert new, delete gone).
    /// Duplicates are ignored. Fails without changing anything if the set exceeds the map's
    /// capacity (16,384); on a map error part of the diff may be applied, and calling again with
    /// the same set completes it.
    pub fn set_meshed_destinations(&mut self, dests: &[SocketAddr]) -> Result<(), Error> {
        let name = proxy_common::MESHED_DESTS;
        let desired: HashSet<DestKey> = dests
            .iter()
            .map(|dest| DestKey {
                addr: addr::to_words(dest.ip()),
                port: dest.port(),
                _pad: 0,
            })
            .collect();
        check_capacity("meshed destinations", desired.len(), MESHED_DESTS_MAX)?;
        // Deletes first, so the inserts always have room.
        let gone: Vec<DestKey> = self.meshed_current.difference(&desired).copied().collect();
        for key in gone {
            remove_tolerant(&mut self.meshed, &key).map_err(map_err(name))?;
            self.meshed_current.remove(&key);
        }
        let new: Vec<DestKey> = desired.difference(&self.meshed_current).copied().collect();
        for key in new {
            self.meshed.insert(key, 0, 0).map_err(map_err(name))?;
            self.meshed_current.insert(key);
        }
        Ok(())
    }

    /// Make exactly this set the pod cgroups, with their traffic rules. The index of a pod that
    /// must never be redirected is [`POD_INDEX_SKIP`]; captured pods never include the proxy's own
    /// cgroup or an opted-out pod (see the module's identity model). Fails without changing
    /// anything on over-capacity (4,096) or on a cgroup id listed with two different entries.
    ///
    /// Order, so that a connect racing with the update sees either the old or the new decision
    /// for each pod, never a flag without its rules: rules are written first, then the pod
    /// entries (whose [`POD_F_TRAFFIC_RULES`] bit says to read them), and the rules of pods that
    /// lost theirs are deleted last. A rule set replaced in place is swapped whole by the kernel
    /// (the map is not preallocated).
    pub fn set_pod_cgroups(&mut self, pods: &[CapturedPod]) -> Result<(), Error> {
        let name = proxy_common::POD_CGROUPS;
        let rules_name = proxy_common::POD_TRAFFIC_RULES;
        let mut desired: StdHashMap<u64, PodValue> = StdHashMap::with_capacity(pods.len());
        let mut desired_rules: StdHashMap<u64, &TrafficRules> = StdHashMap::new();
        for pod in pods {
            // Only a captured pod's connects are ever decided by rules.
            let rules = pod
                .traffic
                .as_deref()
                .filter(|_| pod.index != POD_INDEX_SKIP);
            let mut flags = 0;
            if pod.fail_closed {
                flags |= POD_F_FAIL_CLOSED;
            }
            if rules.is_some() {
                flags |= POD_F_TRAFFIC_RULES;
            }
            let value = PodValue {
                index: pod.index,
                flags,
            };
            if let Some(first) = desired.insert(pod.cgroup_id, value) {
                let same_rules = desired_rules.get(&pod.cgroup_id).copied() == rules;
                if first != value || !same_rules {
                    return Err(Error::DuplicatePodCgroup {
                        cgroup_id: pod.cgroup_id,
                        first: first.index,
                        second: pod.index,
                    });
                }
            }
            if let Some(rules) = rules {
                desired_rules.insert(pod.cgroup_id, rules);
            }
        }
        check_capacity("pod cgroups", desired.len(), POD_CGROUPS_MAX)?;
        check_capacity(
            "pod traffic rules",
            desired_rules.len(),
            POD_TRAFFIC_RULES_MAX,
        )?;
        // 1. Rules that are new or changed.
        for (&id, &rules) in &desired_rules {
            if self.rules_current.get(&id) != Some(rules) {
                self.rules
                    .insert(id, *rules, 0)
                    .map_err(map_err(rules_name))?;
                self.rules_current.insert(id, *rules);
            }
        }
        // 2. Pod entries: gone ones first, so the inserts always have room.
        let gone: Vec<u64> = self
            .pods_current
            .keys()
            .filter(|id| !desired.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            remove_tolerant(&mut self.pods, &id).map_err(map_err(name))?;
            self.pods_current.remove(&id);
        }
        for (&id, &value) in &desired {
            if self.pods_current.get(&id) != Some(&value) {
                self.pods.insert(id, value, 0).map_err(map_err(name))?;
                self.pods_current.insert(id, value);
            }
        }
        // 3. Rules no pod entry points at any more.
        let stale: Vec<u64> = self
            .rules_current
            .keys()
            .filter(|id| !desired_rules.contains_key(id))
            .copied()
            .collect();
        for id in stale {
            remove_tolerant(&mut self.rules, &id).map_err(map_err(rules_name))?;
            self.rules_current.remove(&id);
        }
        Ok(())
    }

    /// Make exactly this set the pod parents: cgroups whose children are pod cgroups (kubelet's
    /// kubepods and QoS cgroups). A child in no entry of `POD_CGROUPS` is a pod keel has not
    /// resolved yet, and its connects are redirected as pending (see [`POD_INDEX_PENDING`]).
    pub fn set_pod_parents(&mut self, parents: &HashSet<u64>) -> Result<(), Error> {
        let name = proxy_common::POD_PARENTS;
        check_capacity("pod parents", parents.len(), POD_PARENTS_MAX)?;
        let gone: Vec<u64> = self.parents_current.difference(parents).copied().collect();
        for id in gone {
            remove_tolerant(&mut self.parents, &id).map_err(map_err(name))?;
            self.parents_current.remove(&id);
        }
        let new: Vec<u64> = parents.difference(&self.parents_current).copied().collect();
        for id in new {
            self.parents.insert(id, 0, 0).map_err(map_err(name))?;
            self.parents_current.insert(id);
        }
        Ok(())
    }

    /// A cheap, cloneable, Send+Sync read handle for the accept path (no mutex per lookup).
    pub fn conn_table(&self) -> ConnTable {
        self.conns.clone()
    }

    /// Sum of the per-CPU counters.
    pub fn stats(&self) -> Result<KernelStats, Error> {
        let name = proxy_common::STATS;
        let read = |index: u32| -> Result<u64, Error> {
            let values = self.stats.get(&index, 0).map_err(map_err(name))?;
            Ok(values.iter().copied().fold(0u64, u64::wrapping_add))
        };
        Ok(KernelStats {
            redirected: read(proxy_common::STAT_REDIRECTED)?,
            skipped_not_pod: read(proxy_common::STAT_SKIPPED_NOT_POD)?,
            skipped_map_full: read(proxy_common::STAT_SKIPPED_MAP_FULL)?,
            established: read(proxy_common::STAT_ESTABLISHED)?,
            closed: read(proxy_common::STAT_CLOSED)?,
            skipped_not_meshed: read(proxy_common::STAT_SKIPPED_NOT_MESHED)?,
            skipped_no_proxy: read(proxy_common::STAT_SKIPPED_NO_PROXY)?,
            reconnected: read(proxy_common::STAT_RECONNECTED)?,
            tuple_insert_failed: read(proxy_common::STAT_TUPLE_INSERT_FAILED)?,
            cb_flags_failed: read(proxy_common::STAT_CB_FLAGS_FAILED)?,
            root_not_ancestor: read(proxy_common::STAT_ROOT_NOT_ANCESTOR)?,
            abi_mismatch: read(proxy_common::STAT_ABI_MISMATCH)?,
            skipped_no_keel: read(proxy_common::STAT_SKIPPED_NO_KEEL)?,
            refused_no_keel: read(proxy_common::STAT_REFUSED_NO_KEEL)?,
            skipped_excluded: read(proxy_common::STAT_SKIPPED_EXCLUDED)?,
            maps: self.occupancy(),
        })
    }

    /// Entries and capacity of each map. The destination and pod maps are read from their exact
    /// mirrors; the connection maps are counted by walking their keys (bounded by their capacity,
    /// one syscall per entry: an admin read, never on the request path).
    pub fn occupancy(&self) -> Vec<MapOccupancy> {
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        vec![
            MapOccupancy {
                map: proxy_common::MESHED_DESTS,
                entries: count(self.meshed_current.len()),
                capacity: MESHED_DESTS_MAX,
            },
            MapOccupancy {
                map: proxy_common::POD_CGROUPS,
                entries: count(self.pods_current.len()),
                capacity: POD_CGROUPS_MAX,
            },
            MapOccupancy {
                map: proxy_common::POD_TRAFFIC_RULES,
                entries: count(self.rules_current.len()),
                capacity: POD_TRAFFIC_RULES_MAX,
            },
            MapOccupancy {
                map: proxy_common::POD_PARENTS,
                entries: count(self.parents_current.len()),
                capacity: POD_PARENTS_MAX,
            },
            MapOccupancy {
                map: proxy_common::CONN_BY_COOKIE,
                entries: count(self.cookies.keys().filter(Result::is_ok).count()),
                capacity: self.conn_capacity,
            },
            MapOccupancy {
                map: proxy_common::CONN_BY_TUPLE,
                entries: count(self.conns.map.keys().filter(Result::is_ok).count()),
                capacity: self.conn_capacity,
            },
        ]
    }

    /// Delete cookie records that never reached ESTABLISHED and are older than `max_age`, and
    /// return how many. They come from connects whose rewrite happened but that failed before the
    /// SYN was sent (e.g. no ephemeral port), which sockops never sees; left alone they would
    /// slowly fill the map and push new connections to go direct. A connect can stay in SYN_SENT
    /// for ~2 minutes with default `tcp_syn_retries`, so `max_age` should be several minutes.
    pub fn sweep_unestablished(&mut self, max_age: Duration) -> Result<usize, Error> {
        let name = proxy_common::CONN_BY_COOKIE;
        let now = monotonic_ns();
        let max_age = u64::try_from(max_age.as_nanos()).unwrap_or(u64::MAX);
        let mut stale = Vec::new();
        for entry in self.cookies.iter() {
            // Entries can vanish while we iterate (sockets closing); skip those.
            let Ok((cookie, value)) = entry else { continue };
            if value.flags & CONN_F_ESTABLISHED == 0 && now.saturating_sub(value.ktime_ns) > max_age
            {
                stale.push(cookie);
            }
        }
        for cookie in &stale {
            remove_tolerant(&mut self.cookies, cookie).map_err(map_err(name))?;
        }
        Ok(stale.len())
    }
}

/// cgroup v2 id of a cgroup directory (its inode number). Fails if `path` is not on cgroup v2.
pub fn cgroup_id(path: &Path) -> std::io::Result<u64> {
    ensure_cgroup2(path)?;
    Ok(std::fs::metadata(path)?.ino())
}

/// The kernel's id for a cgroup v2 directory is its kernfs node id, which `stat` reports as the
/// inode number on 64-bit systems. Anything not on cgroup2 would give a meaningless id.
fn ensure_cgroup2(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err))?;
    // SAFETY: an all-zero statfs is a valid value to be overwritten.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is NUL-terminated and `buf` is a valid out-pointer.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut buf) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type's integer type differs between libc targets"
    )]
    if buf.f_type as i64 != CGROUP2_SUPER_MAGIC {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not on a cgroup v2 file system", path.display()),
        ));
    }
    Ok(())
}

fn proxy_config(
    cgroup_root: &Path,
    proxy_v4: Option<SocketAddrV4>,
    proxy_v6: Option<SocketAddrV6>,
) -> Result<ProxyConfig, Error> {
    if proxy_v4.is_none() && proxy_v6.is_none() {
        return Err(Error::InvalidProxyAddress(
            "neither an IPv4 nor an IPv6 proxy address".into(),
        ));
    }
    let root_cgroup_id = cgroup_id(cgroup_root).map_err(|source| Error::CgroupRoot {
        path: cgroup_root.to_owned(),
        source,
    })?;
    let mut config = ProxyConfig {
        root_cgroup_id,
        abi_version: ABI_VERSION,
        ..ProxyConfig::EMPTY
    };
    if let Some(v4) = proxy_v4 {
        // Unspecified or port 0 would make the kernel connect somewhere the proxy is not.
        if v4.ip().is_unspecified() || v4.port() == 0 {
            return Err(Error::InvalidProxyAddress(v4.to_string()));
        }
        config.proxy_v4_addr = u32::from_ne_bytes(v4.ip().octets());
        config.proxy_v4_port = v4.port();
        config.has_v4 = 1;
    }
    if let Some(v6) = proxy_v6 {
        if v6.ip().is_unspecified() || v6.port() == 0 || v6.ip().to_ipv4_mapped().is_some() {
            return Err(Error::InvalidProxyAddress(v6.to_string()));
        }
        config.proxy_v6_addr = addr::to_words(std::net::IpAddr::V6(*v6.ip()));
        config.proxy_v6_port = v6.port();
        config.has_v6 = 1;
    }
    Ok(config)
}

/// A duplicate of a loaded program's fd (so the program can be borrowed mutably to attach it).
fn program_fd(
    name: &'static str,
    fd: Result<&aya::programs::ProgramFd, ProgramError>,
) -> Result<std::os::fd::OwnedFd, Error> {
    let fd = fd.map_err(|source| Error::Program { name, source })?;
    fd.as_fd()
        .try_clone_to_owned()
        .map_err(|source| Error::Pin {
            path: PathBuf::from(name),
            source,
        })
}

/// Points the install's pinned link of program `name` at `prog_fd`, or, if there is no such link
/// (or it cannot be updated), attaches with `attach` and pins the new link.
fn link_pinned(
    install: &pins::Install,
    name: &'static str,
    prog_fd: &std::os::fd::OwnedFd,
    attach: impl FnOnce() -> Result<FdLink, Error>,
) -> Result<(), Error> {
    let path = install.link_path(name);
    if path.exists() {
        let updated =
            pins::obj_get(&path).and_then(|link| pins::link_update(link.as_fd(), prog_fd.as_fd()));
        match updated {
            Ok(()) => {
                tracing::info!(program = name, "pinned link updated to this keel's program");
                return Ok(());
            }
            Err(e) => {
                // E.g. the cgroup the link was attached to is gone: start over.
                tracing::warn!(program = name, error = %e, "cannot update the pinned link; attaching anew");
                std::fs::remove_file(&path).map_err(|source| Error::Pin {
                    path: path.clone(),
                    source,
                })?;
            }
        }
    }
    let link = attach()?;
    link.pin(&path).map_err(|e| Error::Pin {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    Ok(())
}

fn take_hash<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, Error> {
    ebpf.take_map(name)
        .ok_or(Error::MissingMap(name))?
        .try_into()
        .map_err(map_err(name))
}

/// Remove `key`, treating "already gone" as success (the kernel may have deleted it).
fn remove_tolerant<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    key: &K,
) -> Result<(), MapError> {
    match map.remove(key) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(err)) if err.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(())
        }
        Err(err) => Err(err),
    }
}

fn check_capacity(what: &'static str, count: usize, max: u32) -> Result<(), Error> {
    if count > max as usize {
        return Err(Error::Capacity { what, count, max });
    }
    Ok(())
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns`.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

// The accept path shares one handle across tasks and threads.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<ConnTable>();
};

/// Capacity of the connection maps (in-flight redirected connections), re-exported for docs and
/// metrics.
pub const CONNECTION_CAPACITY: u32 = CONN_MAX;
