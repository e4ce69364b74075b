//! Keel's kernel side: capture pods' TCP connections to meshed destinations and send them to the
//! node proxy, recording what the proxy needs to know about each one.
//!
//! Programs (all attached at one cgroup root, under which every pod has its own cgroup):
//! - `keel_connect4` / `keel_connect6` (`cgroup/connect4`, `cgroup/connect6`): if a TCP connect from a captured
//!   pod goes to a meshed (VIP, port), record `{original dst, pod}` under the socket cookie and
//!   rewrite the destination to the proxy, but only while a keel's heartbeat in `LIVENESS` is
//!   fresh. With no live keel the connect goes direct (fail open), or, for a pod flagged
//!   `POD_F_FAIL_CLOSED`, is refused at once (`EPERM`); it never waits on a dead proxy. A pod
//!   flagged `POD_F_TRAFFIC_RULES` first has its `POD_TRAFFIC_RULES` entry (Istio's
//!   `traffic.sidecar.istio.io/*` annotations) decide; an excluded connect goes direct.
//! - `keel_sockops`: follow the redirected sockets; at ESTABLISHED publish the record under the 4-tuple
//!   the proxy will see on `accept()`, and delete both records at TCP_CLOSE.
//!
//! Identity: a connection belongs to a pod iff the connecting task's cgroup, or one of its
//! ancestors at most `POD_SEARCH_DEPTH` levels below the root, is in `POD_CGROUPS`. User space only
//! inserts captured pods, so the proxy's own connections (and opted-out pods) are never redirected:
//! that, not a UID, is what keeps the proxy from capturing itself.
//!
//! Admission: `CONN_BY_COOKIE` is inserted with `BPF_NOEXIST` *before* the destination is rewritten.
//! If the map is full the connection is left alone and goes direct: a connection is either
//! redirected with a record, or not redirected at all, never sent to the proxy without one.
//! `CONN_BY_TUPLE` has the same capacity and only holds entries whose cookie record is still alive,
//! so its insert cannot fail for lack of room.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        bpf_sock_addr, BPF_ANY, BPF_EXIST, BPF_F_NO_PREALLOC, BPF_NOEXIST,
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_TCP_CLOSE,
    },
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_socket_cookie,
        bpf_ktime_get_ns,
    },
    macros::{cgroup_sock_addr, map, sock_ops},
    maps::{Array, HashMap, PerCpuArray},
    programs::{SockAddrContext, SockOpsContext},
    EbpfContext, Global,
};
use aya_log_ebpf::debug;
use proxy_common::{
    ConnTuple, ConnValue, DestKey, LiveSlot, PodValue, ProxyConfig, TrafficRules, ABI_VERSION,
    CONN_F_ESTABLISHED, CONN_MAX, LIVENESS_SLOTS, LIVENESS_STALE_NS, MESHED_DESTS_MAX,
    POD_CGROUPS_MAX, POD_F_FAIL_CLOSED, POD_F_TRAFFIC_RULES, POD_INDEX_PENDING, POD_INDEX_SKIP,
    POD_PARENTS_MAX, POD_SEARCH_DEPTH, POD_TRAFFIC_RULES_MAX, ROOT_SEARCH_MAX_LEVEL, STATS_LEN,
    STAT_ABI_MISMATCH, STAT_CB_FLAGS_FAILED, STAT_CLOSED, STAT_ESTABLISHED, STAT_RECONNECTED,
    STAT_REDIRECTED, STAT_REFUSED_NO_KEEL, STAT_ROOT_NOT_ANCESTOR, STAT_SKIPPED_EXCLUDED,
    STAT_SKIPPED_MAP_FULL, STAT_SKIPPED_NOT_MESHED, STAT_SKIPPED_NOT_POD, STAT_SKIPPED_NO_KEEL,
    STAT_SKIPPED_NO_PROXY, STAT_TUPLE_INSERT_FAILED,
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u32 = 6;
const EEXIST: i64 = 17;

/// Set by user space at load time (`EbpfLoader::override_global`); `.rodata`, so constant to the
/// verifier.
#[unsafe(no_mangle)]
static PROXY_CONFIG: Global<ProxyConfig> = Global::new(ProxyConfig::EMPTY);

#[map]
static MESHED_DESTS: HashMap<DestKey, u32> = HashMap::with_max_entries(MESHED_DESTS_MAX, 0);

#[map]
static POD_CGROUPS: HashMap<u64, PodValue> = HashMap::with_max_entries(POD_CGROUPS_MAX, 0);

// Not preallocated: entries are 1,160 bytes and only annotated pods have one, so preallocating
// the capacity (4,096) would pin ~5 MiB of kernel memory for nothing. An update then also swaps a
// whole new element in, and the old one is freed only after readers are done with it.
#[map]
static POD_TRAFFIC_RULES: HashMap<u64, TrafficRules> =
    HashMap::with_max_entries(POD_TRAFFIC_RULES_MAX, BPF_F_NO_PREALLOC);

#[map]
static LIVENESS: Array<LiveSlot> = Array::with_max_entries(LIVENESS_SLOTS, 0);

#[map]
static POD_PARENTS: HashMap<u64, u32> = HashMap::with_max_entries(POD_PARENTS_MAX, 0);

// Plain hash maps, never LRU: an LRU would silently evict the record of a live connection, which
// the proxy would then refuse (or worse, a reused tuple would pick up a stranger's record).
#[map]
static CONN_BY_COOKIE: HashMap<u64, ConnValue> = HashMap::with_max_entries(CONN_MAX, 0);

#[map]
static CONN_BY_TUPLE: HashMap<ConnTuple, ConnValue> = HashMap::with_max_entries(CONN_MAX, 0);

#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_LEN, 0);

/// Which `connect()` hook is running, with the destination it saw.
#[derive(Clone, Copy)]
enum Dest {
    /// `connect4`: IPv4 address in network byte order.
    V4(u32),
    /// `connect6`: IPv6 address words in network byte order (possibly v4-mapped).
    V6([u32; 4]),
}

#[cgroup_sock_addr(connect4)]
pub fn keel_connect4(ctx: SockAddrContext) -> i32 {
    let stat = try_connect(&ctx, false);
    bump(stat);
    verdict(stat)
}

#[cgroup_sock_addr(connect6)]
pub fn keel_connect6(ctx: SockAddrContext) -> i32 {
    let stat = try_connect(&ctx, true);
    bump(stat);
    verdict(stat)
}

/// Allow every connect except a fail-closed pod's while no keel serves (0 makes `connect()` fail
/// with `EPERM` at once).
#[inline(always)]
fn verdict(stat: u32) -> i32 {
    if stat == STAT_REFUSED_NO_KEEL {
        0
    } else {
        1
    }
}

/// Whether some keel refreshed its heartbeat within [`LIVENESS_STALE_NS`].
#[inline(always)]
fn keel_alive() -> bool {
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    for i in 0..LIVENESS_SLOTS {
        if let Some(slot) = LIVENESS.get(i) {
            // Signed: a heartbeat written on another CPU just after `now` was read is fresh.
            let age = now.wrapping_sub(slot.heartbeat_ns) as i64;
            if slot.heartbeat_ns != 0 && age < LIVENESS_STALE_NS as i64 {
                return true;
            }
        }
    }
    false
}

#[sock_ops]
pub fn keel_sockops(ctx: SockOpsContext) -> u32 {
    let stat = try_sockops(&ctx);
    bump(stat);
    1
}

/// Returns the counter to bump (`STATS_LEN` for none).
#[inline(always)]
fn try_connect(ctx: &SockAddrContext, v6: bool) -> u32 {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: `sa` is the program's context pointer; the verifier checks every field access.
    let (ty, proto) = unsafe {
        (
            read(&raw const (*sa).type_),
            read(&raw const (*sa).protocol),
        )
    };
    if ty != SOCK_STREAM || proto != IPPROTO_TCP {
        return STATS_LEN;
    }
    let dest = if v6 {
        // SAFETY: as above.
        let w = unsafe {
            [
                read(&raw const (*sa).user_ip6[0]),
                read(&raw const (*sa).user_ip6[1]),
                read(&raw const (*sa).user_ip6[2]),
                read(&raw const (*sa).user_ip6[3]),
            ]
        };
        Dest::V6(w)
    } else {
        // SAFETY: as above.
        Dest::V4(unsafe { read(&raw const (*sa).user_ip4) })
    };
    // `user_port` holds the port in network byte order in its low 16 bits.
    // SAFETY: as above.
    let port = u16::from_be(unsafe { read(&raw const (*sa).user_port) } as u16);

    let addr = match dest {
        Dest::V4(ip4) => v4_mapped(ip4),
        Dest::V6(w) => w,
    };
    if is_local(&addr) {
        return STAT_SKIPPED_NOT_MESHED;
    }
    let key = DestKey {
        addr,
        port,
        _pad: 0,
    };
    if MESHED_DESTS.get_ptr(key).is_none() {
        return STAT_SKIPPED_NOT_MESHED;
    }

    let cfg = PROXY_CONFIG.load();
    if cfg.abi_version != ABI_VERSION {
        return STAT_ABI_MISMATCH;
    }
    let (pod_cgroup_id, pod) = match find_pod(cfg.root_cgroup_id) {
        Ok(found) => found,
        Err(stat) => return stat,
    };
    // Before the liveness check: an excluded connection never involves keel, so it goes direct
    // even from a fail-closed pod while no keel serves.
    if pod.flags & POD_F_TRAFFIC_RULES != 0 {
        if let Some(rules) = POD_TRAFFIC_RULES.get_ptr(pod_cgroup_id) {
            // SAFETY: a non-null pointer into the map value, read in place (the value is larger
            // than the stack).
            if !unsafe { &*rules }.decide(&addr, port).captures() {
                return STAT_SKIPPED_EXCLUDED;
            }
        }
    }
    if !keel_alive() {
        if pod.flags & POD_F_FAIL_CLOSED != 0 {
            return STAT_REFUSED_NO_KEEL;
        }
        return STAT_SKIPPED_NO_KEEL;
    }
    let pod_index = pod.index;

    // Where to send it: the v4 proxy for v4 destinations (v4-mapped on a v6 socket, since a v6
    // socket connecting to a v4-mapped address really speaks IPv4), the v6 proxy for native v6.
    let is_v4 = is_v4_mapped(&addr);
    let (proxy_addr, proxy_port) = if is_v4 {
        if cfg.has_v4 == 0 {
            return STAT_SKIPPED_NO_PROXY;
        }
        (v4_mapped(cfg.proxy_v4_addr), cfg.proxy_v4_port)
    } else {
        if cfg.has_v6 == 0 {
            return STAT_SKIPPED_NO_PROXY;
        }
        (cfg.proxy_v6_addr, cfg.proxy_v6_port)
    };

    // SAFETY: the helper accepts this program type's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let record = ConnValue {
        original_addr: addr,
        original_port: port,
        _pad0: 0,
        pod_index,
        pod_cgroup_id,
        // SAFETY: no preconditions.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        tuple: ConnTuple::ZERO,
        flags: 0,
    };
    // Admission first, rewrite second: if there is no room, the connection goes direct.
    let mut stat = STAT_REDIRECTED;
    if let Err(err) = CONN_BY_COOKIE.insert(cookie, record, BPF_NOEXIST as u64) {
        // EEXIST: the same socket connects again after a failed attempt that never reached
        // tcp_connect() (so sockops never saw it). Cookies are never reused, so the old record is
        // this socket's own and is replaced in place, which needs no free slot.
        if i64::from(err) != -EEXIST
            || CONN_BY_COOKIE
                .insert(cookie, record, BPF_EXIST as u64)
                .is_err()
        {
            debug!(ctx, "keel: conn map full, cookie {} goes direct", cookie);
            return STAT_SKIPPED_MAP_FULL;
        }
        stat = STAT_RECONNECTED;
    }

    // SAFETY: context writes of 4 bytes to user_ip4/user_ip6[i]/user_port are what the verifier
    // allows for connect4/connect6.
    unsafe {
        match dest {
            Dest::V4(_) => write(&raw mut (*sa).user_ip4, proxy_addr[3]),
            Dest::V6(_) => {
                write(&raw mut (*sa).user_ip6[0], proxy_addr[0]);
                write(&raw mut (*sa).user_ip6[1], proxy_addr[1]);
                write(&raw mut (*sa).user_ip6[2], proxy_addr[2]);
                write(&raw mut (*sa).user_ip6[3], proxy_addr[3]);
            }
        }
        write(&raw mut (*sa).user_port, u32::from(proxy_port.to_be()));
    }
    debug!(
        ctx,
        "keel: redirect cookie {} pod {} port {}", cookie, pod_index, port
    );
    stat
}

/// The captured pod the current task belongs to: `(matching cgroup id, its entry)`.
#[inline(always)]
fn find_pod(root_cgroup_id: u64) -> Result<(u64, PodValue), u32> {
    // SAFETY: no preconditions.
    let current = unsafe { bpf_get_current_cgroup_id() };
    if let Some(pod) = POD_CGROUPS.get_ptr(current) {
        // SAFETY: a non-null pointer into the map value.
        return pod_or_skip(current, unsafe { *pod });
    }
    // The task may live in a container cgroup below the pod's. Find the root's absolute level
    // (it is not known to user space when the proxy runs in a cgroup namespace), then look at the
    // levels below it. ancestor_cgroup_id is O(1) (cgroup->ancestors[level]).
    let mut root_level = None;
    for level in 0..ROOT_SEARCH_MAX_LEVEL {
        // SAFETY: no preconditions; returns 0 beyond the task's own level.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == 0 {
            break;
        }
        if id == root_cgroup_id {
            root_level = Some(level);
            break;
        }
    }
    let Some(root_level) = root_level else {
        return Err(STAT_ROOT_NOT_ANCESTOR);
    };
    let mut parent = root_cgroup_id;
    for depth in 1..=POD_SEARCH_DEPTH {
        // SAFETY: as above.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id((root_level + depth) as i32) };
        // 0: deeper than the task.
        if id == 0 {
            break;
        }
        // `current` was looked up above.
        if id != current {
            if let Some(pod) = POD_CGROUPS.get_ptr(id) {
                // SAFETY: a non-null pointer into the map value.
                return pod_or_skip(id, unsafe { *pod });
            }
        }
        // A child of a pod parent that keel has not resolved yet: a pod that just started.
        if POD_PARENTS.get_ptr(parent).is_some() && POD_PARENTS.get_ptr(id).is_none() {
            // Flags 0: a pod keel does not know yet cannot be fail-closed; with no live keel its
            // connects go direct like any pod's.
            let pending = PodValue {
                index: POD_INDEX_PENDING,
                flags: 0,
            };
            return Ok((id, pending));
        }
        if id == current {
            break;
        }
        parent = id;
    }
    Err(STAT_SKIPPED_NOT_POD)
}

/// A `POD_CGROUPS` hit: the pod, unless it is one that is never redirected.
#[inline(always)]
fn pod_or_skip(id: u64, pod: PodValue) -> Result<(u64, PodValue), u32> {
    if pod.index == POD_INDEX_SKIP {
        return Err(STAT_SKIPPED_NOT_POD);
    }
    Ok((id, pod))
}

#[inline(always)]
fn try_sockops(ctx: &SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_connect(ctx),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_established(ctx),
        // args[1] is the new state (args[0] the old one).
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => on_close(ctx),
        _ => STATS_LEN,
    }
}

/// SYN about to be sent: ask for state callbacks on redirected sockets, so their close (also a
/// failed connect, SYN_SENT -> CLOSE) is seen and the records deleted.
#[inline(always)]
fn on_connect(ctx: &SockOpsContext) -> u32 {
    // SAFETY: the helper accepts this program type's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if CONN_BY_COOKIE.get_ptr(cookie).is_none() {
        return STATS_LEN;
    }
    let flags = ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG;
    if ctx.set_cb_flags(flags as i32).is_err() {
        // Without the close callback the records would leak; without a record the proxy refuses
        // the connection, which is the lesser harm.
        let _ = CONN_BY_COOKIE.remove(cookie);
        return STAT_CB_FLAGS_FAILED;
    }
    STATS_LEN
}

/// The client side is established: publish the record under the tuple the proxy will accept.
#[inline(always)]
fn on_established(ctx: &SockOpsContext) -> u32 {
    // SAFETY: the helper accepts this program type's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(record) = CONN_BY_COOKIE.get_ptr_mut(cookie) else {
        return STATS_LEN;
    };
    // Read every field unconditionally and pick afterwards: when the loads sit in the match arms,
    // LLVM merges them into one load from `ctx + variable offset`, which the verifier rejects
    // ("dereference of modified ctx ptr").
    let ops = ctx.ops;
    // SAFETY: `ops` is the program's context pointer; the verifier checks every field access.
    let (family, local4, remote4, local6, remote6, local_port, raw_remote_port) = unsafe {
        (
            read(&raw const (*ops).family),
            read(&raw const (*ops).local_ip4),
            read(&raw const (*ops).remote_ip4),
            [
                read(&raw const (*ops).local_ip6[0]),
                read(&raw const (*ops).local_ip6[1]),
                read(&raw const (*ops).local_ip6[2]),
                read(&raw const (*ops).local_ip6[3]),
            ],
            [
                read(&raw const (*ops).remote_ip6[0]),
                read(&raw const (*ops).remote_ip6[1]),
                read(&raw const (*ops).remote_ip6[2]),
                read(&raw const (*ops).remote_ip6[3]),
            ],
            read(&raw const (*ops).local_port),
            read(&raw const (*ops).remote_port),
        )
    };
    let (client_addr, proxy_addr) = match family {
        AF_INET => (v4_mapped(local4), v4_mapped(remote4)),
        AF_INET6 => (local6, remote6),
        _ => return STATS_LEN,
    };
    let tuple = ConnTuple {
        client_addr,
        proxy_addr,
        // local_port is in host byte order.
        client_port: local_port as u16,
        proxy_port: remote_port(raw_remote_port),
    };
    // SAFETY: a non-null pointer into the map value; sockops callbacks of one socket run under its
    // lock, so nothing else writes this record concurrently.
    let mut value = unsafe { *record };
    value.tuple = tuple;
    value.flags |= CONN_F_ESTABLISHED;
    // BPF_ANY: a leftover entry for the same tuple can only be stale (this socket owns the tuple
    // now), and overwriting it needs no free slot.
    if CONN_BY_TUPLE.insert(tuple, value, BPF_ANY as u64).is_err() {
        return STAT_TUPLE_INSERT_FAILED;
    }
    // SAFETY: as above.
    unsafe { *record = value };
    debug!(
        ctx,
        "keel: established cookie {} client port {} proxy port {} (raw remote_port {:x})",
        cookie,
        tuple.client_port,
        tuple.proxy_port,
        raw_remote_port
    );
    STAT_ESTABLISHED
}

/// TCP_CLOSE: forget the connection.
#[inline(always)]
fn on_close(ctx: &SockOpsContext) -> u32 {
    // SAFETY: the helper accepts this program type's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(record) = CONN_BY_COOKIE.get_ptr(cookie) else {
        return STATS_LEN;
    };
    // SAFETY: a non-null pointer into the map value.
    let record = unsafe { *record };
    if record.flags & CONN_F_ESTABLISHED != 0 {
        let _ = CONN_BY_TUPLE.remove(record.tuple);
    }
    let _ = CONN_BY_COOKIE.remove(cookie);
    STAT_CLOSED
}

/// `bpf_sock_ops.remote_port` holds the port in network byte order, but where depends on the
/// kernel: older kernels shift it into the upper 16 bits, newer ones leave it in the lower 16.
/// A connected socket's port is never 0, so exactly one half is non-zero.
#[inline(always)]
fn remote_port(raw: u32) -> u16 {
    let upper = (raw >> 16) as u16;
    if upper != 0 {
        u16::from_be(upper)
    } else {
        u16::from_be(raw as u16)
    }
}

#[inline(always)]
fn v4_mapped(ip4_be: u32) -> [u32; 4] {
    [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), ip4_be]
}

#[inline(always)]
fn is_v4_mapped(w: &[u32; 4]) -> bool {
    w[0] == 0 && w[1] == 0 && w[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff])
}

/// Loopback or unspecified (which also reaches this host): never redirected.
#[inline(always)]
fn is_local(w: &[u32; 4]) -> bool {
    if is_v4_mapped(w) {
        let b = w[3].to_ne_bytes();
        return b[0] == 127 || w[3] == 0;
    }
    w[0] == 0 && w[1] == 0 && w[2] == 0 && (w[3] == 0 || w[3] == u32::from_ne_bytes([0, 0, 0, 1]))
}

#[inline(always)]
fn bump(stat: u32) {
    if stat >= STATS_LEN {
        return;
    }
    if let Some(counter) = STATS.get_ptr_mut(stat) {
        // SAFETY: a per-CPU slot; programs do not migrate CPUs mid-run.
        unsafe { *counter += 1 };
    }
}

/// Context field read; volatile so the compiler keeps the access width the verifier expects.
#[inline(always)]
unsafe fn read(field: *const u32) -> u32 {
    // SAFETY: the caller passes a context field pointer.
    unsafe { core::ptr::read_volatile(field) }
}

/// Context field write; volatile for the same reason as [`read`].
#[inline(always)]
unsafe fn write(field: *mut u32, value: u32) {
    // SAFETY: the caller passes a writable context field pointer.
    unsafe { core::ptr::write_volatile(field, value) }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The kernel object is dual licensed so that GPL-only helpers stay available to it.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
