//! The kernel/user contract of Keel: map names, sizes, and the `#[repr(C)]` keys and values that
//! `proxy-ebpf` writes and `proxy-user` reads.
//!
//! Invariants every type here keeps:
//! - `#[repr(C)]` with every padding byte spelled out as a named field, so the kernel and user space
//!   agree on the layout and no uninitialised byte ever becomes part of a hash key (hash maps compare
//!   keys bytewise; an unset padding byte would make equal keys unequal).
//! - Addresses are 16-byte IPv6 in network byte order, stored as four `u32` words exactly as they lie
//!   in memory (`[u32; 4]`, like the kernel's `user_ip6`); IPv4 is stored v4-mapped (`::ffff:a.b.c.d`).
//!   One normal form means a v4 socket and a v6 socket connecting to the same v4 VIP share keys.
//! - Ports are in host byte order.
//!
//! Changing any layout, name or meaning here requires bumping [`ABI_VERSION`].
#![no_std]

/// Version of this contract. User space writes it into [`ProxyConfig::abi_version`]; a kernel object
/// built against another version sees the mismatch and redirects nothing (connections go direct).
pub const ABI_VERSION: u32 = 3;

/// Name of the global (`.rodata`) holding the [`ProxyConfig`]; set by the loader before load.
pub const PROXY_CONFIG: &str = "PROXY_CONFIG";

/// `HashMap<DestKey, u32>`: the meshed destinations (service VIP, port). Value: reserved flags, 0.
pub const MESHED_DESTS: &str = "MESHED_DESTS";
/// `HashMap<u64, PodValue>`: cgroup id of a pod -> pod index and flags. The index is
/// [`POD_INDEX_SKIP`] for a pod on the node that is not captured (opted out, host network,
/// sidecar).
pub const POD_CGROUPS: &str = "POD_CGROUPS";
/// `HashMap<u64, u32>`: cgroups whose child cgroups are pods (kubelet's kubepods and QoS cgroups).
/// Value: reserved flags, 0. A child that is not in [`POD_CGROUPS`] is a pod keel has not resolved
/// yet: its connects are redirected with [`POD_INDEX_PENDING`] and keel decides at accept, so a
/// container that connects the instant its cgroup exists is still captured.
pub const POD_PARENTS: &str = "POD_PARENTS";
/// [`PodValue::index`] of a pod cgroup that is never redirected.
pub const POD_INDEX_SKIP: u32 = u32::MAX;
/// [`ConnValue::pod_index`] of a connection from a pod cgroup keel had not resolved at connect.
pub const POD_INDEX_PENDING: u32 = u32::MAX - 1;
/// Capacity of [`POD_PARENTS`] (a kubelet node has three to six).
pub const POD_PARENTS_MAX: u32 = 64;
/// `Array<LiveSlot>` of [`LIVENESS_SLOTS`]: one heartbeat per running keel. The connect hooks
/// redirect only while at least one slot's heartbeat is younger than [`LIVENESS_STALE_NS`].
pub const LIVENESS: &str = "LIVENESS";
/// `HashMap<u64, ConnValue>`: socket cookie -> record of a redirected connection.
pub const CONN_BY_COOKIE: &str = "CONN_BY_COOKIE";
/// `HashMap<ConnTuple, ConnValue>`: established 4-tuple (client side) -> record.
pub const CONN_BY_TUPLE: &str = "CONN_BY_TUPLE";
/// `PerCpuArray<u64>` of [`STATS_LEN`] counters, indexed by the `STAT_*` constants.
pub const STATS: &str = "STATS";

/// Capacity of [`MESHED_DESTS`]: (VIP, port) pairs.
pub const MESHED_DESTS_MAX: u32 = 16_384;
/// Capacity of [`POD_CGROUPS`]. Four times the 1,024 pods a node is sized for, so pods that are
/// being replaced (old and new cgroup both present) never crowd out a live one.
pub const POD_CGROUPS_MAX: u32 = 4_096;
/// Capacity of both connection maps. They must be equal: the cookie map admits a connection, and
/// a tuple entry only ever exists while its cookie entry does, so the tuple map can never be the
/// one that is full.
pub const CONN_MAX: u32 = 65_536;

/// Keels that can serve one attach root at once (an upgrade runs two; a crash loop leaves stale
/// slots that are reused).
pub const LIVENESS_SLOTS: u32 = 8;
/// A heartbeat older than this means its keel no longer serves (killed, stopped, hung): with no
/// fresh slot, pods' connections go direct (or are refused fast in fail-closed namespaces).
/// Keel refreshes its slot every 25 ms from a dedicated thread.
pub const LIVENESS_STALE_NS: u64 = 120_000_000;

/// [`PodValue::flags`]: when no keel serves, refuse the pod's meshed connects (`EPERM` at once)
/// instead of letting them go direct.
pub const POD_F_FAIL_CLOSED: u32 = 1;

/// Deepest level below the attach root at which the connecting task's cgroup (or an ancestor of
/// it) is looked up in [`POD_CGROUPS`]: `<root>/<namespace>/<pod>/<container>/...` fits easily.
pub const POD_SEARCH_DEPTH: u32 = 8;
/// Deepest absolute cgroup level the kernel scans for the attach root itself.
pub const ROOT_SEARCH_MAX_LEVEL: u32 = 32;

/// [`ConnValue::flags`]: the record's `tuple` is set and the same record is in [`CONN_BY_TUPLE`].
pub const CONN_F_ESTABLISHED: u32 = 1;

/// Connections whose destination was rewritten to the proxy.
pub const STAT_REDIRECTED: u32 = 0;
/// Meshed destination, but the task's cgroup is not a captured pod (the proxy itself, opted-out
/// pods, host processes).
pub const STAT_SKIPPED_NOT_POD: u32 = 1;
/// Meshed destination from a pod, but [`CONN_BY_COOKIE`] was full: the connection went direct.
pub const STAT_SKIPPED_MAP_FULL: u32 = 2;
/// Redirected connections that reached ESTABLISHED and got a [`CONN_BY_TUPLE`] entry.
pub const STAT_ESTABLISHED: u32 = 3;
/// Redirected connections whose records were deleted on TCP_CLOSE.
pub const STAT_CLOSED: u32 = 4;
/// TCP connects under the root to a destination that is not meshed (the common, cheap case).
pub const STAT_SKIPPED_NOT_MESHED: u32 = 5;
/// Native IPv6 meshed destination, but no IPv6 proxy address is configured.
pub const STAT_SKIPPED_NO_PROXY: u32 = 6;
/// A socket that already had a record connected again (after a failed attempt); record replaced.
pub const STAT_RECONNECTED: u32 = 7;
/// The tuple insert failed (should never happen; see [`CONN_MAX`]). The accept side will find no
/// record and refuse the connection.
pub const STAT_TUPLE_INSERT_FAILED: u32 = 8;
/// `bpf_sock_ops_cb_flags_set` failed: the close would go unseen, so the record is dropped and the
/// accept side refuses the connection rather than leak the entry.
pub const STAT_CB_FLAGS_FAILED: u32 = 9;
/// The loaded configuration's ABI version differs from the object's: nothing is redirected.
pub const STAT_ABI_MISMATCH: u32 = 11;
/// The attach root was not found among the task's ancestors (the socket's cgroup is under the
/// root but the task has moved out of it).
pub const STAT_ROOT_NOT_ANCESTOR: u32 = 10;
/// Meshed destination from a pod, but no keel heartbeat is fresh: the connection went direct.
pub const STAT_SKIPPED_NO_KEEL: u32 = 12;
/// Meshed destination from a fail-closed pod while no keel serves: the connect was refused.
pub const STAT_REFUSED_NO_KEEL: u32 = 13;
/// Number of counters in [`STATS`].
pub const STATS_LEN: u32 = 16;

/// The proxy addresses and the attach root, fixed at load time (a `.rodata` global, so the
/// verifier sees constants).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Proxy IPv4 address, network byte order (as in `bpf_sock_addr.user_ip4`).
    pub proxy_v4_addr: u32,
    /// Proxy IPv4 port, host byte order.
    pub proxy_v4_port: u16,
    /// 1 if an IPv4 proxy address is configured.
    pub has_v4: u8,
    /// 1 if an IPv6 proxy address is configured.
    pub has_v6: u8,
    /// Proxy IPv6 address, network byte order words.
    pub proxy_v6_addr: [u32; 4],
    /// Proxy IPv6 port, host byte order.
    pub proxy_v6_port: u16,
    /// Explicit padding, always 0.
    pub _pad0: u16,
    /// [`ABI_VERSION`] of the user space that loaded the object.
    pub abi_version: u32,
    /// cgroup id of the attach root; the kernel finds its level among the task's ancestors.
    pub root_cgroup_id: u64,
}

impl ProxyConfig {
    /// A configuration that redirects nothing (the value compiled into the object).
    pub const EMPTY: Self = Self {
        proxy_v4_addr: 0,
        proxy_v4_port: 0,
        has_v4: 0,
        has_v6: 0,
        proxy_v6_addr: [0; 4],
        proxy_v6_port: 0,
        _pad0: 0,
        abi_version: 0,
        root_cgroup_id: 0,
    };
}

/// Value of [`POD_CGROUPS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodValue {
    /// The pod's index, copied into [`ConnValue::pod_index`].
    pub index: u32,
    /// `POD_F_*` bits.
    pub flags: u32,
}

/// One element of [`LIVENESS`]: a running keel's heartbeat.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveSlot {
    /// `CLOCK_MONOTONIC` nanoseconds of the last refresh; 0 = free slot.
    pub heartbeat_ns: u64,
    /// `CLOCK_MONOTONIC` nanoseconds when the keel started: the newest live keel is the one that
    /// writes the pod and destination maps.
    pub started_ns: u64,
    /// The keel's process id (for operators and for claiming a slot).
    pub pid: u32,
    /// Reserved, 0.
    pub flags: u32,
}

impl LiveSlot {
    /// A free slot.
    pub const FREE: Self = Self {
        heartbeat_ns: 0,
        started_ns: 0,
        pid: 0,
        flags: 0,
    };
}

/// Key of [`MESHED_DESTS`]: a destination (service VIP and port).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DestKey {
    /// IPv6 or v4-mapped address, network byte order words.
    pub addr: [u32; 4],
    /// Port, host byte order.
    pub port: u16,
    /// Explicit padding, always 0.
    pub _pad: u16,
}

/// Key of [`CONN_BY_TUPLE`]: the connection as the client socket sees it, which is the connection
/// as the proxy's accepted socket sees it mirrored (client = peer, proxy = local).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnTuple {
    /// Client address (IPv6 or v4-mapped, network byte order words).
    pub client_addr: [u32; 4],
    /// Proxy address the client is connected to (IPv6 or v4-mapped, network byte order words).
    pub proxy_addr: [u32; 4],
    /// Client port, host byte order.
    pub client_port: u16,
    /// Proxy port, host byte order.
    pub proxy_port: u16,
}

impl ConnTuple {
    /// The all-zero tuple (no tuple yet).
    pub const ZERO: Self = Self {
        client_addr: [0; 4],
        proxy_addr: [0; 4],
        client_port: 0,
        proxy_port: 0,
    };
}

/// Value of [`CONN_BY_COOKIE`] and [`CONN_BY_TUPLE`]: what the kernel knew at `connect()`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnValue {
    /// Original destination address (IPv6 or v4-mapped, network byte order words).
    pub original_addr: [u32; 4],
    /// Original destination port, host byte order.
    pub original_port: u16,
    /// Explicit padding, always 0.
    pub _pad0: u16,
    /// Index of the pod (as published in [`POD_CGROUPS`]).
    pub pod_index: u32,
    /// The cgroup id that matched in [`POD_CGROUPS`] (the pod's, not necessarily the task's own).
    pub pod_cgroup_id: u64,
    /// `bpf_ktime_get_ns()` at connect (CLOCK_MONOTONIC, nanoseconds).
    pub ktime_ns: u64,
    /// The established tuple, valid if `flags & CONN_F_ESTABLISHED`.
    pub tuple: ConnTuple,
    /// `CONN_F_*` bits.
    pub flags: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `#[repr(C)]`, `Copy`, made only of integers, and have no implicit
    // padding (every gap is a named field), so any byte pattern is a valid value.
    unsafe impl aya::Pod for super::ProxyConfig {}
    unsafe impl aya::Pod for super::DestKey {}
    unsafe impl aya::Pod for super::ConnTuple {}
    unsafe impl aya::Pod for super::ConnValue {}
    unsafe impl aya::Pod for super::PodValue {}
    unsafe impl aya::Pod for super::LiveSlot {}
}

// Compile-time layout checks: a silent layout change would corrupt every map exchange.
const _: () = assert!(core::mem::size_of::<ProxyConfig>() == 40);
const _: () = assert!(core::mem::size_of::<DestKey>() == 20);
const _: () = assert!(core::mem::size_of::<ConnTuple>() == 36);
const _: () = assert!(core::mem::size_of::<ConnValue>() == 80);
const _: () = assert!(core::mem::align_of::<ConnValue>() == 8);
const _: () = assert!(core::mem::size_of::<PodValue>() == 8);
const _: () = assert!(core::mem::size_of::<LiveSlot>() == 24);
