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
//! Changing any layout, name or meaning here requires bumping [`ABI_VERSION`]. Adding a map or a
//! flag bit that programs of the same version ignore is not such a change: see
//! [`POD_TRAFFIC_RULES`] for why it keeps the version.
#![cfg_attr(not(test), no_std)]

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
/// `HashMap<u64, TrafficRules>`: cgroup id of a captured pod -> the outbound capture rules of its
/// Istio `traffic.sidecar.istio.io/*` annotations. Read only for pods whose [`PodValue::flags`]
/// carry [`POD_F_TRAFFIC_RULES`]; a pod without annotations has no entry and no lookup.
///
/// Why this map and that flag keep [`ABI_VERSION`] at 3: nothing an ABI 3 object already reads
/// changed. Its programs never open this map and ignore unknown `PodValue` flag bits, so a keel
/// built before this map existed and one built after share the `abi3` maps: the newer one creates
/// and pins this map when it first attaches, the older one neither sees nor removes it. Taking
/// over from a running keel of either build stays the lossless same-ABI upgrade (the exclusions
/// apply from the moment the newer programs are in the links; while an older keel is the newest
/// writer, it clears the flag bits and pods are captured as before). A change to
/// [`TrafficRules`]' layout, or a meaning an older program would misread, bumps the version.
pub const POD_TRAFFIC_RULES: &str = "POD_TRAFFIC_RULES";

/// Capacity of [`MESHED_DESTS`]: (VIP, port) pairs.
pub const MESHED_DESTS_MAX: u32 = 16_384;
/// Capacity of [`POD_CGROUPS`]. Four times the 1,024 pods a node is sized for, so pods that are
/// being replaced (old and new cgroup both present) never crowd out a live one.
pub const POD_CGROUPS_MAX: u32 = 4_096;
/// Capacity of [`POD_TRAFFIC_RULES`]: one entry per pod cgroup at most.
pub const POD_TRAFFIC_RULES_MAX: u32 = POD_CGROUPS_MAX;
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
/// [`PodValue::flags`]: the pod has an entry in [`POD_TRAFFIC_RULES`] that decides which of its
/// meshed connects are captured. User space writes the rules before it sets this bit and clears
/// the bit before it deletes the rules; a set bit whose entry is missing captures as if unset.
pub const POD_F_TRAFFIC_RULES: u32 = 2;

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
/// Meshed destination from a captured pod whose [`TrafficRules`] (Istio's
/// `traffic.sidecar.istio.io/*` pod annotations) exclude it: the connection went direct.
pub const STAT_SKIPPED_EXCLUDED: u32 = 14;
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

/// Most ports in each of [`TrafficRules::exclude_ports`] and [`TrafficRules::include_ports`].
pub const TRAFFIC_PORTS_MAX: usize = 32;
/// Most ranges in each of [`TrafficRules::exclude_cidrs`] and [`TrafficRules::include_cidrs`].
pub const TRAFFIC_CIDRS_MAX: usize = 16;

/// [`TrafficRules::flags`]: `includeOutboundIPRanges` is `*` (every address of both families).
pub const TRAFFIC_F_INCLUDE_ALL_IPS: u32 = 1;

/// An address range: `addr & mask == net`, on the IPv6 or v4-mapped word form (network byte
/// order words, as [`DestKey::addr`]). The mask is spelled out, not a prefix length, so the kernel
/// never shifts (a shift by the full width is where CIDR matchers go wrong: Merbridge #148).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The range's first address, already masked.
    pub net: [u32; 4],
    /// The prefix as a mask, network byte order words.
    pub mask: [u32; 4],
}

impl Cidr {
    /// The empty slot (matches only `::`, and is never read past a list's length).
    pub const ZERO: Self = Self {
        net: [0; 4],
        mask: [0; 4],
    };

    /// The range of the first `prefix_len` bits of `addr` (word form; a v4 range `a.b.c.d/n` is
    /// `::ffff:a.b.c.d` with `96 + n`). Host bits of `addr` are cleared, as iptables does. `None`
    /// beyond 128 bits.
    pub fn new(addr: [u32; 4], prefix_len: u32) -> Option<Self> {
        if prefix_len > 128 {
            return None;
        }
        let mut mask = [0u32; 4];
        let mut net = [0u32; 4];
        let mut i = 0;
        while i < 4 {
            let start = (i as u32) * 32;
            let bits = if prefix_len >= start + 32 {
                32
            } else {
                prefix_len.saturating_sub(start)
            };
            // 0 and 32 bits are spelled out: `u32 << 32` does not exist.
            let host_order = match bits {
                0 => 0,
                32 => u32::MAX,
                n => u32::MAX << (32 - n),
            };
            mask[i] = host_order.to_be();
            net[i] = addr[i] & mask[i];
            i += 1;
        }
        Some(Self { net, mask })
    }

    /// The prefix length (the number of set mask bits).
    pub fn prefix_len(&self) -> u32 {
        self.mask[0].count_ones()
            + self.mask[1].count_ones()
            + self.mask[2].count_ones()
            + self.mask[3].count_ones()
    }

    /// Whether `addr` (word form) is in the range.
    #[inline(always)]
    pub fn contains(&self, addr: &[u32; 4]) -> bool {
        addr[0] & self.mask[0] == self.net[0]
            && addr[1] & self.mask[1] == self.net[1]
            && addr[2] & self.mask[2] == self.net[2]
            && addr[3] & self.mask[3] == self.net[3]
    }
}

/// Value of [`POD_TRAFFIC_RULES`]: which of a pod's meshed connects are captured, from Istio's
/// sidecar annotations `traffic.sidecar.istio.io/{exclude,include}Outbound{Ports,IPRanges}`.
/// [`TrafficRules::decide`] applies them in Istio's order. Lists are filled from index 0; slots at
/// and past a list's length are zero and never read. 1,160 bytes: the kernel reads it in place
/// (a map value pointer), never copies it to its 512-byte stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TrafficRules {
    /// `excludeOutboundIPRanges`.
    pub exclude_cidrs: [Cidr; TRAFFIC_CIDRS_MAX],
    /// `includeOutboundIPRanges` (unless `*`: then [`TRAFFIC_F_INCLUDE_ALL_IPS`]).
    pub include_cidrs: [Cidr; TRAFFIC_CIDRS_MAX],
    /// `excludeOutboundPorts`, host byte order.
    pub exclude_ports: [u16; TRAFFIC_PORTS_MAX],
    /// `includeOutboundPorts`, host byte order.
    pub include_ports: [u16; TRAFFIC_PORTS_MAX],
    /// Entries used in `exclude_cidrs`.
    pub exclude_cidrs_len: u8,
    /// Entries used in `include_cidrs`.
    pub include_cidrs_len: u8,
    /// Entries used in `exclude_ports`.
    pub exclude_ports_len: u8,
    /// Entries used in `include_ports`.
    pub include_ports_len: u8,
    /// `TRAFFIC_F_*` bits.
    pub flags: u32,
}

/// What [`TrafficRules::decide`] found, in Istio's order; the first that applies decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrafficVerdict {
    /// The port is in `excludeOutboundPorts` (index given): direct.
    ExcludedPort(usize),
    /// The port is in `includeOutboundPorts` (index given): captured, whatever the address.
    IncludedPort(usize),
    /// The address is in `excludeOutboundIPRanges` (index given): direct.
    ExcludedRange(usize),
    /// `includeOutboundIPRanges` is `*`: captured.
    IncludedAll,
    /// The address is in `includeOutboundIPRanges` (index given): captured.
    IncludedRange(usize),
    /// In no included range (an empty `includeOutboundIPRanges` includes none): direct.
    NotIncluded,
}

impl TrafficVerdict {
    /// Whether the connection goes to the proxy.
    #[inline(always)]
    pub fn captures(self) -> bool {
        matches!(
            self,
            TrafficVerdict::IncludedPort(_)
                | TrafficVerdict::IncludedAll
                | TrafficVerdict::IncludedRange(_)
        )
    }
}

impl TrafficRules {
    /// No rule: every address included, nothing excluded (what a pod without annotations gets;
    /// such a pod needs no entry).
    pub const CAPTURE_ALL: Self = Self {
        exclude_cidrs: [Cidr::ZERO; TRAFFIC_CIDRS_MAX],
        include_cidrs: [Cidr::ZERO; TRAFFIC_CIDRS_MAX],
        exclude_ports: [0; TRAFFIC_PORTS_MAX],
        include_ports: [0; TRAFFIC_PORTS_MAX],
        exclude_cidrs_len: 0,
        include_cidrs_len: 0,
        exclude_ports_len: 0,
        include_ports_len: 0,
        flags: TRAFFIC_F_INCLUDE_ALL_IPS,
    };

    /// Istio's order for a connect to `addr` (word form), `port` (host order): an excluded port
    /// goes direct; an included port is captured whatever the address; an excluded range goes
    /// direct; an included range (or `*`) is captured; anything else goes direct. The one
    /// implementation: the kernel's connect hooks and user space (explain, accept) both call it.
    #[inline(always)]
    pub fn decide(&self, addr: &[u32; 4], port: u16) -> TrafficVerdict {
        if let Some(i) = find_port(&self.exclude_ports, self.exclude_ports_len, port) {
            return TrafficVerdict::ExcludedPort(i);
        }
        if let Some(i) = find_port(&self.include_ports, self.include_ports_len, port) {
            return TrafficVerdict::IncludedPort(i);
        }
        if let Some(i) = find_cidr(&self.exclude_cidrs, self.exclude_cidrs_len, addr) {
            return TrafficVerdict::ExcludedRange(i);
        }
        if self.flags & TRAFFIC_F_INCLUDE_ALL_IPS != 0 {
            return TrafficVerdict::IncludedAll;
        }
        if let Some(i) = find_cidr(&self.include_cidrs, self.include_cidrs_len, addr) {
            return TrafficVerdict::IncludedRange(i);
        }
        TrafficVerdict::NotIncluded
    }

    /// Whether these rules capture exactly what no rules capture (so the pod needs no entry).
    pub fn is_capture_all(&self) -> bool {
        self.flags & TRAFFIC_F_INCLUDE_ALL_IPS != 0
            && self.exclude_ports_len == 0
            && self.exclude_cidrs_len == 0
    }
}

/// Index of `port` among the first `len` of `ports`. A constant trip count (the verifier's bound),
/// whatever `len` says.
#[inline(always)]
fn find_port(ports: &[u16; TRAFFIC_PORTS_MAX], len: u8, port: u16) -> Option<usize> {
    let mut i = 0;
    while i < TRAFFIC_PORTS_MAX {
        if i >= len as usize {
            return None;
        }
        if ports[i] == port {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Index of the first of the first `len` of `cidrs` that holds `addr`.
#[inline(always)]
fn find_cidr(cidrs: &[Cidr; TRAFFIC_CIDRS_MAX], len: u8, addr: &[u32; 4]) -> Option<usize> {
    let mut i = 0;
    while i < TRAFFIC_CIDRS_MAX {
        if i >= len as usize {
            return None;
        }
        if cidrs[i].contains(addr) {
            return Some(i);
        }
        i += 1;
    }
    None
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
    unsafe impl aya::Pod for super::TrafficRules {}
}

// Compile-time layout checks: a silent layout change would corrupt every map exchange.
const _: () = assert!(core::mem::size_of::<ProxyConfig>() == 40);
const _: () = assert!(core::mem::size_of::<DestKey>() == 20);
const _: () = assert!(core::mem::size_of::<ConnTuple>() == 36);
const _: () = assert!(core::mem::size_of::<ConnValue>() == 80);
const _: () = assert!(core::mem::align_of::<ConnValue>() == 8);
const _: () = assert!(core::mem::size_of::<PodValue>() == 8);
const _: () = assert!(core::mem::size_of::<LiveSlot>() == 24);
const _: () = assert!(core::mem::size_of::<Cidr>() == 32);
const _: () = assert!(core::mem::size_of::<TrafficRules>() == 1160);
const _: () = assert!(core::mem::align_of::<TrafficRules>() == 4);
// The lengths are u8.
const _: () = assert!(TRAFFIC_PORTS_MAX <= u8::MAX as usize);
const _: () = assert!(TRAFFIC_CIDRS_MAX <= u8::MAX as usize);

#[cfg(test)]
mod tests {
    use super::*;

    /// Word form of `a.b.c.d` (v4-mapped).
    fn v4(a: [u8; 4]) -> [u32; 4] {
        [
            0,
            0,
            u32::from_ne_bytes([0, 0, 0xff, 0xff]),
            u32::from_ne_bytes(a),
        ]
    }

    /// Word form of a v6 address given as 8 groups.
    fn v6(g: [u16; 8]) -> [u32; 4] {
        let mut w = [0u32; 4];
        for (i, word) in w.iter_mut().enumerate() {
            let hi = g[2 * i].to_be_bytes();
            let lo = g[2 * i + 1].to_be_bytes();
            *word = u32::from_ne_bytes([hi[0], hi[1], lo[0], lo[1]]);
        }
        w
    }

    fn v4_cidr(a: [u8; 4], len: u32) -> Cidr {
        Cidr::new(v4(a), 96 + len).expect("prefix fits")
    }

    fn rules(
        exclude_ports: &[u16],
        include_ports: &[u16],
        exclude: &[Cidr],
        include: Option<&[Cidr]>,
    ) -> TrafficRules {
        let mut r = TrafficRules::CAPTURE_ALL;
        r.exclude_ports[..exclude_ports.len()].copy_from_slice(exclude_ports);
        r.exclude_ports_len = exclude_ports.len() as u8;
        r.include_ports[..include_ports.len()].copy_from_slice(include_ports);
        r.include_ports_len = include_ports.len() as u8;
        r.exclude_cidrs[..exclude.len()].copy_from_slice(exclude);
        r.exclude_cidrs_len = exclude.len() as u8;
        if let Some(include) = include {
            r.flags = 0;
            r.include_cidrs[..include.len()].copy_from_slice(include);
            r.include_cidrs_len = include.len() as u8;
        }
        r
    }

    #[test]
    fn cidr_masks_at_every_boundary() {
        // Merbridge #148 matched /16 as a shift by 16 instead of 32 - 16; every length here is
        // checked against a brute-force mask.
        let addr = v4([10, 96, 200, 7]);
        for len in 0..=32u32 {
            let c = v4_cidr([10, 96, 200, 7], len);
            assert_eq!(c.prefix_len(), 96 + len, "/{len}");
            assert!(c.contains(&addr), "/{len} holds its own address");
            let ip = u32::from_be_bytes([10, 96, 200, 7]);
            for bit in 0..32u32 {
                let flipped = (ip ^ (1 << bit)).to_be_bytes();
                let inside = bit < 32 - len;
                assert_eq!(
                    c.contains(&v4(flipped)),
                    inside,
                    "/{len}, flipping bit {bit}"
                );
            }
        }
        let c = v4_cidr([10, 96, 0, 0], 12);
        assert!(c.contains(&v4([10, 111, 255, 255])));
        assert!(!c.contains(&v4([10, 112, 0, 0])));
        // Host bits are cleared, as iptables does with 10.96.0.1/16.
        assert_eq!(v4_cidr([10, 96, 0, 1], 16), v4_cidr([10, 96, 0, 0], 16));
        assert_eq!(Cidr::new(v4([1, 2, 3, 4]), 129), None);
    }

    #[test]
    fn v4_ranges_never_hold_v6_addresses() {
        let all_v4 = v4_cidr([0, 0, 0, 0], 0);
        assert!(all_v4.contains(&v4([192, 0, 2, 1])));
        assert!(!all_v4.contains(&v6([0xfd00, 0, 0, 0, 0, 0, 0, 1])));
        let all_v6 = Cidr::new([0; 4], 0).expect("prefix fits");
        assert!(all_v6.contains(&v6([0xfd00, 0, 0, 0, 0, 0, 0, 1])));
        let v6_range = Cidr::new(v6([0xfd00, 0xab, 0, 0, 0, 0, 0, 0]), 33).expect("prefix fits");
        assert!(v6_range.contains(&v6([0xfd00, 0xab, 0x7fff, 9, 0, 0, 0, 1])));
        assert!(!v6_range.contains(&v6([0xfd00, 0xab, 0x8000, 0, 0, 0, 0, 1])));
        assert!(!v6_range.contains(&v6([0xfd00, 0xac, 0, 0, 0, 0, 0, 1])));
        assert!(!v6_range.contains(&v4([253, 0, 0, 171])));
    }

    #[test]
    fn istio_order() {
        use TrafficVerdict::*;
        let vips = v4_cidr([10, 96, 1, 0], 24);
        let other = v4_cidr([10, 96, 2, 0], 24);
        let in_vips = v4([10, 96, 1, 20]);
        let in_other = v4([10, 96, 2, 20]);
        let outside = v4([10, 97, 0, 1]);
        let cases: &[(&str, TrafficRules, [u32; 4], u16, TrafficVerdict)] = &[
            (
                "no rules",
                TrafficRules::CAPTURE_ALL,
                in_vips,
                80,
                IncludedAll,
            ),
            (
                "excluded port",
                rules(&[80, 81], &[], &[], None),
                in_vips,
                81,
                ExcludedPort(1),
            ),
            (
                "other port",
                rules(&[80, 81], &[], &[], None),
                in_vips,
                82,
                IncludedAll,
            ),
            (
                "excluded port beats included port",
                rules(&[80], &[80], &[], None),
                in_vips,
                80,
                ExcludedPort(0),
            ),
            (
                "included port beats excluded range",
                rules(&[], &[80], &[vips], None),
                in_vips,
                80,
                IncludedPort(0),
            ),
            (
                "excluded range",
                rules(&[], &[80], &[vips], None),
                in_vips,
                81,
                ExcludedRange(0),
            ),
            (
                "excluded range beats included range",
                rules(&[], &[], &[vips], Some(&[vips, other])),
                in_vips,
                81,
                ExcludedRange(0),
            ),
            (
                "included range",
                rules(&[], &[], &[], Some(&[vips, other])),
                in_other,
                81,
                IncludedRange(1),
            ),
            (
                "outside the included ranges",
                rules(&[], &[], &[], Some(&[vips, other])),
                outside,
                81,
                NotIncluded,
            ),
            (
                "empty include list captures nothing",
                rules(&[], &[], &[], Some(&[])),
                in_vips,
                81,
                NotIncluded,
            ),
            (
                "empty include list still captures included ports",
                rules(&[], &[9080], &[], Some(&[])),
                in_vips,
                9080,
                IncludedPort(0),
            ),
            (
                "port 0 past the list's length is no entry",
                rules(&[80], &[], &[], None),
                in_vips,
                0,
                IncludedAll,
            ),
        ];
        for (what, r, addr, port, want) in cases {
            let got = r.decide(addr, *port);
            assert_eq!(got, *want, "{what}");
            assert_eq!(
                got.captures(),
                matches!(want, IncludedPort(_) | IncludedAll | IncludedRange(_)),
                "{what}"
            );
        }
    }

    #[test]
    fn full_lists_are_read_to_the_end() {
        let ports: [u16; TRAFFIC_PORTS_MAX] = core::array::from_fn(|i| 1000 + i as u16);
        let r = rules(&ports, &[], &[], None);
        assert_eq!(
            r.decide(&v4([10, 0, 0, 1]), 1000 + TRAFFIC_PORTS_MAX as u16 - 1),
            TrafficVerdict::ExcludedPort(TRAFFIC_PORTS_MAX - 1)
        );
        let cidrs: [Cidr; TRAFFIC_CIDRS_MAX] =
            core::array::from_fn(|i| v4_cidr([10, i as u8, 0, 0], 16));
        let r = rules(&[], &[], &cidrs, None);
        assert_eq!(
            r.decide(&v4([10, TRAFFIC_CIDRS_MAX as u8 - 1, 3, 4]), 80),
            TrafficVerdict::ExcludedRange(TRAFFIC_CIDRS_MAX - 1)
        );
        // A length past the array (a torn or corrupt value) reads no further than the array.
        let mut r = rules(&[], &[], &[], None);
        r.exclude_ports_len = u8::MAX;
        assert_eq!(r.decide(&v4([10, 0, 0, 1]), 7), TrafficVerdict::IncludedAll);
    }

    #[test]
    fn capture_all_needs_no_entry() {
        assert!(TrafficRules::CAPTURE_ALL.is_capture_all());
        assert!(rules(&[], &[80], &[], None).is_capture_all());
        assert!(!rules(&[80], &[], &[], None).is_capture_all());
        assert!(!rules(&[], &[], &[v4_cidr([10, 0, 0, 0], 8)], None).is_capture_all());
        assert!(!rules(&[], &[], &[], Some(&[])).is_capture_all());
    }
}
