//! The overload manager: what keel does as its memory nears the limit it runs under, so that the
//! kernel's OOM killer never takes the node's proxy (and with it every pod's traffic).
//!
//! Like Envoy's overload manager with a memory monitor, keel samples its memory pressure
//! (`used / limit`) every [`SAMPLE_EVERY`] and applies actions in order as it rises:
//!
//! | pressure | action (Envoy's name) |
//! |---|---|
//! | ≥ 85 % | `disable_http_keepalive`: HTTP/1 responses carry `Connection: close`, HTTP/2 connections get GOAWAY |
//! | ≥ 90 % | `stop_accepting_requests`: new requests get 503 `envoy overloaded` (flag `OM`) |
//! | ≥ 95 % | `reset_high_memory_stream`: the connections holding the most unanswered request bytes are reset, and the others with a request in flight stop reading from their client until the pressure eases |
//!
//! New connections are still accepted at every level: their requests get the 503, which tells a
//! client more than a closed connection, and the node-wide connection cap bounds them.
//!
//! From 85 % on, keel also hands freed heap memory back to the kernel (Envoy's `shrink_heap`,
//! [`crate::allocator::release_freed_memory`]) at most every [`SHRINK_EVERY`]: the allocator keeps
//! what connections freed, and without this the working set would stay at its peak after an attack
//! ends, holding the actions on for good.
//!
//! An action ends when the pressure falls [`RELEASE_MARGIN`] below its threshold, so a pressure
//! hovering at a threshold does not flap.
//!
//! Sampling alone cannot keep up with request bodies: a client can make keel take a GiB/s over
//! loopback, tens of MiB between two samples. So from [`WATCH_CLOSELY_FROM`] on, every sample also
//! sets a **read budget**: the bytes all downstream connections together may still read from their
//! clients before the next sample, half of what is left up to [`BUDGET_CEILING`] of the limit.
//! Reads spend it as they happen; once it is spent, a connection with a request in flight stops
//! reading (its client waits under TCP flow control) until the next sample grants more. Growth
//! between two samples is thus bounded by the headroom, and the levels above are reached in steps
//! the sampler sees, never skipped over into the OOM killer.
//!
//! What "used" and "limit" are ([`MemorySource`]):
//! - every memory cgroup from keel's own up to the root that has a limit (cgroup v2 `memory.max`,
//!   or v1 `memory.limit_in_bytes` on hybrid hosts): its working set, as kubelet counts it for
//!   eviction (usage less inactive file pages, which the kernel reclaims before it OOM-kills);
//! - `--memory-limit`: keel's resident set size against that number.
//!
//! The highest pressure among them counts. With no limit anywhere the manager stays idle.
//! The cgroups with a limit are searched for again every [`LOOK_AGAIN_EVERY`], and at once when
//! the process moves to another cgroup; a sample in between reads only theirs.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, Notify};

use crate::admin::Stats;

/// How often the pressure is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// How far below its threshold the pressure must fall for an action to end.
pub const RELEASE_MARGIN: f64 = 0.03;
/// From this pressure on, it is sampled every [`SAMPLE_EVERY_UNDER_PRESSURE`] (an attack can add
/// tens of MiB in one [`SAMPLE_EVERY`]) and reads are held to the read budget.
pub const WATCH_CLOSELY_FROM: f64 = 0.5;
/// The pressure the read budget steers towards and never lets reads jump past in one sample: above
/// the reset level, so that level is still reached and acts, and below the limit.
pub const BUDGET_CEILING: f64 = 0.98;
/// No read budget in force.
const UNLIMITED: i64 = i64::MAX;
/// The sampling interval near the limit.
pub const SAMPLE_EVERY_UNDER_PRESSURE: Duration = Duration::from_millis(10);
/// How often freed heap memory is handed back while under pressure.
pub const SHRINK_EVERY: Duration = Duration::from_millis(200);
/// The least time between two rounds of resets.
pub const RESET_COOLDOWN: Duration = Duration::from_millis(50);
/// Of the connections that hold unanswered request bytes, the share reset at each sample while
/// [`Level::ResetStreams`] holds (at least one).
const RESET_SHARE: f64 = 0.10;

/// The actions in force; each level includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Normal = 0,
    /// No more keep-alive: connections close after their current requests.
    DisableKeepalive = 1,
    /// New requests get 503 `envoy overloaded`.
    StopAcceptingRequests = 2,
    /// The most expensive connections are reset.
    ResetStreams = 3,
}

impl Level {
    /// Pressure at or above which each level starts.
    const THRESHOLDS: [(Level, f64); 3] = [
        (Level::ResetStreams, 0.95),
        (Level::StopAcceptingRequests, 0.90),
        (Level::DisableKeepalive, 0.85),
    ];

    fn from_u8(v: u8) -> Level {
        match v {
            1 => Level::DisableKeepalive,
            2 => Level::StopAcceptingRequests,
            3 => Level::ResetStreams,
            _ => Level::Normal,
        }
    }

    /// The level for `pressure` coming from `current`: a level is entered at its threshold and
    /// left only [`RELEASE_MARGIN`] below it.
    pub fn next(current: Level, pressure: f64) -> Level {
        for (level, threshold) in Level::THRESHOLDS {
            let holds = if current >= level {
                pressure >= threshold - RELEASE_MARGIN
            } else {
                pressure >= threshold
            };
            if holds {
                return level;
            }
        }
        Level::Normal
    }

    /// Envoy's name of the action this level adds.
    pub fn action_name(self) -> &'static str {
        match self {
            Level::Normal => "none",
            Level::DisableKeepalive => "disable_http_keepalive",
            Level::StopAcceptingRequests => "stop_accepting_requests",
            Level::ResetStreams => "reset_high_memory_stream",
        }
    }
}

/// What one downstream connection costs, as the reset action ranks them.
#[derive(Debug)]
pub struct ConnCost {
    /// Bytes read from the client since the connection last had no request in flight: request
    /// heads and bodies keel has taken and not answered yet.
    unanswered_bytes: AtomicU64,
    in_flight: AtomicU32,
    /// Woken to reset the connection.
    reset: Notify,
    /// The node's level (shared with [`Overload`]), read by [`CostMetered`].
    level: Arc<AtomicU8>,
    /// The node's read budget (shared with [`Overload`]): bytes every connection together may
    /// still read until the next sample, [`UNLIMITED`] when none is in force.
    budget: Arc<AtomicI64>,
    /// The reader paused at [`Level::ResetStreams`] or on a spent budget, woken when it may read
    /// again.
    paused: Mutex<Option<Waker>>,
}

impl ConnCost {
    fn new(level: Arc<AtomicU8>, budget: Arc<AtomicI64>) -> Self {
        ConnCost {
            unanswered_bytes: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            reset: Notify::new(),
            level,
            budget,
            paused: Mutex::new(None),
        }
    }

    /// Whether reading from the client must wait: near the limit, or once the read budget is
    /// spent, a connection with a request in flight takes no more of it (its body waits in the
    /// client's socket, under TCP flow control) while the most expensive connections are reset;
    /// idle ones still read their next request, which gets the 503.
    fn must_pause(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
            && (self.level.load(Ordering::Relaxed) >= Level::ResetStreams as u8
                || self.budget.load(Ordering::Relaxed) <= 0)
    }

    /// Spends `read` bytes of the read budget, if one is in force.
    fn spend(&self, read: usize) {
        if self.budget.load(Ordering::Relaxed) != UNLIMITED {
            self.budget
                .fetch_sub(i64::try_from(read).unwrap_or(i64::MAX), Ordering::Relaxed);
        }
    }

    fn resume(&self) {
        if let Some(waker) = self.paused.lock().ok().and_then(|mut w| w.take()) {
            waker.wake();
        }
    }
    /// Counts one request until the guard drops.
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            cost: Arc::clone(self),
        }
    }

    /// Resolves when the overload manager resets this connection.
    pub async fn reset(&self) {
        self.reset.notified().await;
    }
}

/// One request in flight on a connection.
#[derive(Debug)]
pub struct InFlight {
    cost: Arc<ConnCost>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.cost.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            // Everything taken so far has been answered.
            self.cost.unanswered_bytes.store(0, Ordering::Relaxed);
            self.cost.resume();
        }
    }
}

/// The node's overload state, shared by every worker.
#[derive(Debug)]
pub struct Overload {
    level: Arc<AtomicU8>,
    /// The read budget the connections spend (see the module's documentation).
    budget: Arc<AtomicI64>,
    changes: watch::Sender<Level>,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<ConnCost>>>,
    /// When connections were last reset: what they held shows in the working set only once they
    /// are gone and the heap is shrunk, so the next round waits [`RESET_COOLDOWN`].
    reset_at: Mutex<Option<std::time::Instant>>,
    stats: Arc<Stats>,
}

impl Overload {
    pub fn new(stats: Arc<Stats>) -> Arc<Overload> {
        Arc::new(Overload {
            level: Arc::new(AtomicU8::new(Level::Normal as u8)),
            budget: Arc::new(AtomicI64::new(UNLIMITED)),
            changes: watch::Sender::new(Level::Normal),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
            reset_at: Mutex::new(None),
            stats,
        })
    }

    /// The actions in force.
    pub fn level(&self) -> Level {
        Level::from_u8(self.level.load(Ordering::Relaxed))
    }

    /// Follows level changes (a connection waits on it to send GOAWAY).
    pub fn subscribe(&self) -> watch::Receiver<Level> {
        self.changes.subscribe()
    }

    /// Registers a downstream connection for the reset action; it leaves when the handle drops.
    pub fn register(self: &Arc<Self>) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cost = Arc::new(ConnCost::new(
            Arc::clone(&self.level),
            Arc::clone(&self.budget),
        ));
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Arc::clone(&cost));
        Registered {
            overload: Arc::clone(self),
            id,
            cost,
        }
    }

    /// Applies one pressure sample (`used / limit`, and the limit in bytes): sets the level and, at
    /// [`Level::ResetStreams`], resets the most expensive connections. Returns the new level.
    pub fn apply(&self, pressure: f64, limit: u64) -> Level {
        self.stats
            .overload_pressure_bp
            .set((pressure.clamp(0.0, 10.0) * 10_000.0) as u64);
        let current = self.level();
        let next = Level::next(current, pressure);
        let budget = if pressure >= WATCH_CLOSELY_FROM && limit > 0 {
            ((BUDGET_CEILING - pressure).max(0.0) * limit as f64 / 2.0).round() as i64
        } else {
            UNLIMITED
        };
        let spent = self.budget.swap(budget, Ordering::Relaxed) <= 0;
        if next != current {
            self.level.store(next as u8, Ordering::Relaxed);
            self.stats.overload_level.set(next as u64);
        }
        let left_reset = current == Level::ResetStreams && next < current;
        if (left_reset || spent) && budget > 0 && next < Level::ResetStreams {
            // Paused readers may read again.
            self.resume_paused();
        }
        if next != current {
            self.changes.send_replace(next);
            if next > current {
                tracing::warn!(
                    pressure = format!("{:.1}%", pressure * 100.0),
                    action = next.action_name(),
                    "memory overload: action starts"
                );
                self.stats.overload_level_raised.inc();
            } else {
                tracing::info!(
                    pressure = format!("{:.1}%", pressure * 100.0),
                    level = ?next,
                    "memory overload eases"
                );
            }
        }
        let cooled = self
            .reset_at
            .lock()
            .map(|at| at.is_none_or(|at| at.elapsed() >= RESET_COOLDOWN))
            .unwrap_or(true);
        if next == Level::ResetStreams && cooled {
            // Enough to come back under the level's release point, by what the connections hold.
            let target = Level::THRESHOLDS[0].1 - RELEASE_MARGIN;
            let to_free = ((pressure - target).max(0.0) * limit as f64) as u64;
            let reset = self.reset_most_expensive(to_free);
            if let Ok(mut at) = self.reset_at.lock() {
                *at = Some(std::time::Instant::now());
            }
            self.stats.overload_connections_reset.add(reset as u64);
        }
        next
    }

    /// Wakes every reader paused at the reset level or on a spent budget.
    fn resume_paused(&self) {
        let conns: Vec<Arc<ConnCost>> = self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for conn in conns {
            conn.resume();
        }
    }

    /// Resets the connections that hold the most unanswered request bytes: as many as hold
    /// `to_free` bytes together, and at least the top [`RESET_SHARE`] of them. Returns how many
    /// were reset.
    fn reset_most_expensive(&self, to_free: u64) -> usize {
        let mut holding: Vec<(u64, Arc<ConnCost>)> = self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|c| c.in_flight.load(Ordering::Relaxed) > 0)
            .map(|c| (c.unanswered_bytes.load(Ordering::Relaxed), Arc::clone(c)))
            .filter(|(bytes, _)| *bytes > 0)
            .collect();
        holding.sort_unstable_by_key(|h| std::cmp::Reverse(h.0));
        let mut freed = 0u64;
        let covering = holding
            .iter()
            .take_while(|(bytes, _)| {
                let more = freed < to_free;
                freed = freed.saturating_add(*bytes);
                more
            })
            .count();
        let share = (holding.len() as f64 * RESET_SHARE).ceil() as usize;
        let count = covering.max(share).min(holding.len());
        for (_, cost) in holding.iter().take(count) {
            cost.reset.notify_one();
        }
        count
    }

    /// Samples `source` for the life of the process on a thread of its own, so that workers busy
    /// with the very load that raises the pressure cannot delay the sample that relieves it. Every
    /// [`SAMPLE_EVERY`], or [`SAMPLE_EVERY_UNDER_PRESSURE`] from [`WATCH_CLOSELY_FROM`] on.
    pub fn spawn(self: Arc<Self>, source: MemorySource) -> io::Result<()> {
        std::thread::Builder::new()
            .name("keel-overload".to_string())
            .spawn(move || self.run(Sampler::new(source)))
            .map(|_| ())
    }

    fn run(&self, mut source: Sampler) {
        let mut warned = false;
        let mut shrunk_at = std::time::Instant::now();
        let mut shrink_pending = false;
        loop {
            let mut pause = SAMPLE_EVERY;
            match source.sample() {
                Ok(sample) => {
                    let (pressure, limit) = sample.unwrap_or((0.0, 0));
                    let resets_before = self.stats.overload_connections_reset.get();
                    let level = self.apply(pressure, limit);
                    if pressure >= WATCH_CLOSELY_FROM {
                        pause = SAMPLE_EVERY_UNDER_PRESSURE;
                    }
                    if self.stats.overload_connections_reset.get() != resets_before {
                        // Hand back what the reset connections held once they are gone, so the
                        // next round sees it.
                        shrink_pending = true;
                    } else if level >= Level::DisableKeepalive
                        && (shrink_pending || shrunk_at.elapsed() >= SHRINK_EVERY)
                    {
                        shrink_pending = false;
                        shrunk_at = std::time::Instant::now();
                        crate::allocator::release_freed_memory();
                    }
                }
                Err(e) => {
                    if !warned {
                        warned = true;
                        tracing::warn!(error = %e, "cannot read memory use; overload actions are off");
                    }
                    // Nothing known: no action and no budget, so no reader waits for a sample.
                    self.apply(0.0, 0);
                }
            }
            std::thread::sleep(pause);
        }
    }
}

/// A connection registered with the overload manager.
#[derive(Debug)]
pub struct Registered {
    overload: Arc<Overload>,
    id: u64,
    cost: Arc<ConnCost>,
}

impl Registered {
    pub fn cost(&self) -> &Arc<ConnCost> {
        &self.cost
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.overload
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// A downstream stream that adds what it reads to its connection's [`ConnCost`].
pub struct CostMetered<I> {
    inner: I,
    cost: Arc<ConnCost>,
}

impl<I> CostMetered<I> {
    pub fn new(inner: I, cost: Arc<ConnCost>) -> Self {
        CostMetered { inner, cost }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for CostMetered<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.cost.must_pause() {
            if let Ok(mut paused) = self.cost.paused.lock() {
                *paused = Some(cx.waker().clone());
            }
            // Checked again after registering, so a resume in between is not lost.
            if self.cost.must_pause() {
                return Poll::Pending;
            }
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        if read > 0 {
            self.cost
                .unanswered_bytes
                .fetch_add(read as u64, Ordering::Relaxed);
            self.cost.spend(read);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for CostMetered<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Where keel's memory use and limit are read.
#[derive(Debug, Clone)]
pub struct MemorySource {
    /// `--memory-limit`: compared with the process's resident set size.
    pub process_limit: Option<u64>,
    /// Where cgroup hierarchies are mounted (`/sys/fs/cgroup` normally).
    pub cgroup_mount: PathBuf,
    /// The process's cgroup membership (`/proc/self/cgroup` normally).
    pub proc_cgroup: PathBuf,
}

/// Memory limits at or above this are "no limit" (cgroup v1 writes `PAGE_COUNTER_MAX` pages).
const NO_LIMIT_FROM: u64 = 1 << 60;

impl MemorySource {
    /// The running process's sources.
    pub fn for_this_process(process_limit: Option<u64>) -> Self {
        MemorySource {
            process_limit,
            cgroup_mount: PathBuf::from("/sys/fs/cgroup"),
            proc_cgroup: PathBuf::from("/proc/self/cgroup"),
        }
    }

    /// The highest `used / limit` among the sources with that limit, or `None` when nothing sets
    /// a limit.
    pub fn pressure(&self) -> io::Result<Option<(f64, u64)>> {
        Sampler::new(self.clone()).sample()
    }

    /// The pressure of the process limit and of the cgroup directories in `limited`.
    fn pressure_of(&self, limited: &[CgroupDir]) -> io::Result<Option<(f64, u64)>> {
        let mut highest: Option<(f64, u64)> = None;
        let mut consider = |used: u64, limit: u64| {
            let p = used as f64 / limit.max(1) as f64;
            if highest.is_none_or(|(h, _)| p > h) {
                highest = Some((p, limit));
            }
        };
        if let Some(limit) = self.process_limit {
            consider(resident_bytes()?, limit);
        }
        for dir in limited {
            if let Some((used, limit)) = cgroup_working_set(&dir.path, dir.v2)? {
                consider(used, limit);
            }
        }
        Ok(highest)
    }

    /// The memory cgroup directories of the process and their ancestors (both hierarchies).
    fn cgroups(&self, membership: &str) -> Vec<CgroupDir> {
        let mut dirs = Vec::new();
        for line in membership.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(hierarchy), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let relative = path.trim_start_matches('/');
            let (base, v2) = if hierarchy == "0" && controllers.is_empty() {
                // cgroup v2: at the mount itself, or at `unified` on a hybrid host.
                let unified = self.cgroup_mount.join("unified");
                if unified.join("cgroup.controllers").exists() {
                    (unified, true)
                } else {
                    (self.cgroup_mount.clone(), true)
                }
            } else if controllers.split(',').any(|c| c == "memory") {
                (self.cgroup_mount.join("memory"), false)
            } else {
                continue;
            };
            let mut dir = base.join(relative);
            loop {
                dirs.push(CgroupDir {
                    path: dir.clone(),
                    v2,
                });
                if dir == base || !dir.pop() || !dir.starts_with(&base) {
                    break;
                }
            }
        }
        dirs
    }
}

struct CgroupDir {
    path: PathBuf,
    v2: bool,
}

/// How often a [`Sampler`] searches the cgroup tree again for limits (one set or lifted later);
/// between searches a sample reads only the cgroups found limited, and the process's membership
/// (a move to another cgroup starts a search at once).
pub const LOOK_AGAIN_EVERY: Duration = Duration::from_secs(1);

/// Samples a [`MemorySource`], remembering which cgroups have a limit: a search reads every
/// ancestor's limit file (a dozen files on a Kubernetes node), a sample only the limited ones.
pub struct Sampler {
    source: MemorySource,
    membership: String,
    limited: Vec<CgroupDir>,
    searched_at: Option<std::time::Instant>,
}

impl Sampler {
    pub fn new(source: MemorySource) -> Sampler {
        Sampler {
            source,
            membership: String::new(),
            limited: Vec::new(),
            searched_at: None,
        }
    }

    /// `(used / limit, limit)` for the tightest limit, `None` with no limit anywhere.
    pub fn sample(&mut self) -> io::Result<Option<(f64, u64)>> {
        let membership = std::fs::read_to_string(&self.source.proc_cgroup)?;
        let due = self
            .searched_at
            .is_none_or(|at| at.elapsed() >= LOOK_AGAIN_EVERY);
        if due || membership != self.membership {
            self.limited = self
                .source
                .cgroups(&membership)
                .into_iter()
                .filter(|dir| cgroup_limit(&dir.path, dir.v2).is_some())
                .collect();
            self.membership = membership;
            self.searched_at = Some(std::time::Instant::now());
        }
        self.source.pressure_of(&self.limited)
    }
}

/// `(working set, limit)` of a cgroup with a memory limit; `None` without one (or without the
/// memory controller there).
fn cgroup_working_set(dir: &Path, v2: bool) -> io::Result<Option<(u64, u64)>> {
    let Some(limit) = cgroup_limit(dir, v2) else {
        return Ok(None);
    };
    let (usage_file, inactive_key) = if v2 {
        ("memory.current", "inactive_file")
    } else {
        ("memory.usage_in_bytes", "total_inactive_file")
    };
    let usage: u64 = std::fs::read_to_string(dir.join(usage_file))?
        .trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{usage_file}: {e}")))?;
    let stat = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
    let inactive = stat_value(&stat, inactive_key).unwrap_or(0);
    Ok(Some((usage.saturating_sub(inactive), limit)))
}

/// A cgroup's memory limit; `None` without one ("max", v1's no-limit value, or no memory
/// controller there).
fn cgroup_limit(dir: &Path, v2: bool) -> Option<u64> {
    let limit_file = if v2 {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    let limit = std::fs::read_to_string(dir.join(limit_file)).ok()?;
    // "max" does not parse: no limit.
    let limit = limit.trim().parse::<u64>().ok()?;
    (limit < NO_LIMIT_FROM && limit != 0).then_some(limit)
}

/// A value of a `memory.stat` file.
fn stat_value(stat: &str, key: &str) -> Option<u64> {
    stat.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The process's resident set size (`/proc/self/statm`).
fn resident_bytes() -> io::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad /proc/self/statm"))?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Ok(pages * u64::try_from(page).unwrap_or(4096))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_rise_in_order_and_ease_with_a_margin() {
        assert_eq!(Level::next(Level::Normal, 0.5), Level::Normal);
        assert_eq!(Level::next(Level::Normal, 0.85), Level::DisableKeepalive);
        assert_eq!(
            Level::next(Level::Normal, 0.91),
            Level::StopAcceptingRequests
        );
        assert_eq!(Level::next(Level::Normal, 0.97), Level::ResetStreams);
        // Held until the margin below the threshold.
        assert_eq!(Level::next(Level::ResetStreams, 0.93), Level::ResetStreams);
        assert_eq!(
            Level::next(Level::ResetStreams, 0.91),
            Level::StopAcceptingRequests
        );
        assert_eq!(
            Level::next(Level::DisableKeepalive, 0.83),
            Level::DisableKeepalive
        );
        assert_eq!(Level::next(Level::DisableKeepalive, 0.81), Level::Normal);
    }

    #[test]
    fn reset_takes_the_connections_holding_the_most_unanswered_bytes() {
        let overload = Overload::new(Arc::new(Stats::default()));
        let conns: Vec<Registered> = (0..20).map(|_| overload.register()).collect();
        let mut requests = Vec::new();
        for (i, c) in conns.iter().enumerate() {
            requests.push(c.cost().request());
            c.cost()
                .unanswered_bytes
                .store(1000 * (i as u64 + 1), Ordering::Relaxed);
        }
        // An idle connection (nothing in flight) is never a candidate.
        let idle = overload.register();
        idle.cost()
            .unanswered_bytes
            .store(1 << 40, Ordering::Relaxed);
        assert_eq!(overload.apply(0.5, 0), Level::Normal);
        assert_eq!(overload.apply(0.96, 0), Level::ResetStreams);
        // 10 % of 20: the two largest.
        let reset: Vec<usize> = conns
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                let notified = c.cost().reset.notified();
                tokio::pin!(notified);
                // A stored permit completes the future at once.
                notified.as_mut().enable()
            })
            .map(|(i, _)| i)
            .collect();
        assert_eq!(reset, vec![18, 19]);
        assert_eq!(overload.stats.overload_connections_reset.get(), 2);
        drop(conns);
        drop(idle);
        assert!(overload.conns.lock().map(|c| c.is_empty()).unwrap_or(false));
    }

    /// Polls `reader` once with a waker that records whether it was woken.
    fn poll_once(
        reader: &mut CostMetered<&[u8]>,
        woken: &Arc<std::sync::atomic::AtomicBool>,
    ) -> Poll<usize> {
        struct Flag(Arc<std::sync::atomic::AtomicBool>);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let waker = Waker::from(Arc::new(Flag(Arc::clone(woken))));
        let mut cx = Context::from_waker(&waker);
        let mut space = [0u8; 64];
        let mut buf = ReadBuf::new(&mut space);
        match Pin::new(reader).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) => Poll::Ready(buf.filled().len()),
            Poll::Ready(Err(e)) => panic!("read failed: {e}"),
            Poll::Pending => Poll::Pending,
        }
    }

    #[test]
    fn a_spent_read_budget_pauses_requests_in_flight_until_the_next_sample() {
        let overload = Overload::new(Arc::new(Stats::default()));
        let busy = overload.register();
        let idle = overload.register();
        let _request = busy.cost().request();
        let body = [7u8; 1000];
        let mut busy_reader = CostMetered::new(&body[..], Arc::clone(busy.cost()));
        let mut idle_reader = CostMetered::new(&body[..], Arc::clone(idle.cost()));
        let woken = Arc::new(std::sync::atomic::AtomicBool::new(false));

        // Below the watch point nothing is budgeted.
        assert_eq!(overload.apply(0.4, 10_000), Level::Normal);
        assert_eq!(poll_once(&mut busy_reader, &woken), Poll::Ready(64));
        // At 88 % of 10,000 bytes: half of the 10 points up to the ceiling, 500 bytes.
        assert_eq!(overload.apply(0.88, 10_000), Level::DisableKeepalive);
        assert_eq!(overload.budget.load(Ordering::Relaxed), 500);
        for _ in 0..8 {
            assert_eq!(poll_once(&mut busy_reader, &woken), Poll::Ready(64));
        }
        // 512 bytes read: spent. The request in flight waits; an idle connection still reads its
        // next request (which the level answers).
        assert_eq!(poll_once(&mut busy_reader, &woken), Poll::Pending);
        assert_eq!(poll_once(&mut idle_reader, &woken), Poll::Ready(64));
        assert!(!woken.load(Ordering::SeqCst));
        // The next sample grants more and wakes the paused reader.
        assert_eq!(overload.apply(0.88, 10_000), Level::DisableKeepalive);
        assert!(woken.load(Ordering::SeqCst));
        assert_eq!(poll_once(&mut busy_reader, &woken), Poll::Ready(64));
        // At the ceiling nothing is granted; a failed sample lifts every limit.
        assert_eq!(overload.apply(0.99, 10_000), Level::ResetStreams);
        assert_eq!(overload.budget.load(Ordering::Relaxed), 0);
        assert_eq!(overload.apply(0.0, 0), Level::Normal);
        assert_eq!(overload.budget.load(Ordering::Relaxed), UNLIMITED);
        assert_eq!(poll_once(&mut busy_reader, &woken), Poll::Ready(64));
    }

    #[test]
    fn reset_frees_what_the_pressure_is_over_by() {
        let overload = Overload::new(Arc::new(Stats::default()));
        let conns: Vec<Registered> = (0..20).map(|_| overload.register()).collect();
        let _requests: Vec<InFlight> = conns.iter().map(|c| c.cost().request()).collect();
        for (i, c) in conns.iter().enumerate() {
            c.cost()
                .unanswered_bytes
                .store(1000 * (i as u64 + 1), Ordering::Relaxed);
        }
        // 8 points over the release point (92 %) of 1,000,000 bytes: 80,000 bytes, which the five
        // largest (20,000 + 19,000 + 18,000 + 17,000 + 16,000) cover.
        assert_eq!(overload.apply(1.0, 1_000_000), Level::ResetStreams);
        assert_eq!(overload.stats.overload_connections_reset.get(), 5);
    }

    #[test]
    fn answered_requests_clear_the_cost() {
        let overload = Overload::new(Arc::new(Stats::default()));
        let conn = overload.register();
        let one = conn.cost().request();
        let two = conn.cost().request();
        conn.cost().unanswered_bytes.store(500, Ordering::Relaxed);
        drop(one);
        assert_eq!(conn.cost().unanswered_bytes.load(Ordering::Relaxed), 500);
        drop(two);
        assert_eq!(conn.cost().unanswered_bytes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn cgroup_limits_are_found_up_the_tree_in_both_hierarchies() -> io::Result<()> {
        let root = std::env::temp_dir().join(format!("keel-overload-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        // Hybrid host: v2 at `unified`, memory on v1. The v1 parent has the limit.
        let v2 = root.join("unified/pods/p1");
        std::fs::create_dir_all(&v2)?;
        std::fs::write(root.join("unified/cgroup.controllers"), "")?;
        std::fs::write(v2.join("memory.max"), "max\n")?;
        let v1_parent = root.join("memory/kubepods");
        let v1 = v1_parent.join("p1");
        std::fs::create_dir_all(&v1)?;
        std::fs::write(v1.join("memory.limit_in_bytes"), "9223372036854771712\n")?;
        std::fs::write(v1_parent.join("memory.limit_in_bytes"), "1000\n")?;
        std::fs::write(v1_parent.join("memory.usage_in_bytes"), "950\n")?;
        std::fs::write(
            v1_parent.join("memory.stat"),
            "cache 100\ntotal_inactive_file 50\n",
        )?;
        let membership = root.join("cgroup");
        std::fs::write(
            &membership,
            "4:memory:/kubepods/p1\n3:cpu:/x\n0::/pods/p1\n",
        )?;
        let source = MemorySource {
            process_limit: None,
            cgroup_mount: root.clone(),
            proc_cgroup: membership,
        };
        let pressure = source.pressure()?;
        std::fs::remove_dir_all(&root)?;
        // (950 - 50) / 1000.
        assert_eq!(pressure, Some((0.9, 1000)));
        Ok(())
    }

    #[test]
    fn a_sampler_reads_the_limited_cgroups_and_follows_a_move() -> io::Result<()> {
        let root = std::env::temp_dir().join(format!("keel-overload-s-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (dir, limit, usage) in [("a", "1000", "500"), ("b", "1000", "800")] {
            std::fs::create_dir_all(root.join(dir))?;
            std::fs::write(root.join(dir).join("memory.max"), format!("{limit}\n"))?;
            std::fs::write(root.join(dir).join("memory.current"), format!("{usage}\n"))?;
        }
        std::fs::write(root.join("cgroup.controllers"), "memory")?;
        std::fs::write(root.join("memory.max"), "max\n")?;
        let membership = root.join("cgroup");
        std::fs::write(&membership, "0::/a\n")?;
        let mut sampler = Sampler::new(MemorySource {
            process_limit: None,
            cgroup_mount: root.clone(),
            proc_cgroup: membership.clone(),
        });
        let first = sampler.sample()?;
        // Usage moves: read at every sample.
        std::fs::write(root.join("a/memory.current"), "600\n")?;
        let second = sampler.sample()?;
        // Moved to b: followed at the next sample, not after the next search.
        std::fs::write(&membership, "0::/b\n")?;
        let moved = sampler.sample()?;
        std::fs::remove_dir_all(&root)?;
        assert_eq!(first, Some((0.5, 1000)));
        assert_eq!(second, Some((0.6, 1000)));
        assert_eq!(moved, Some((0.8, 1000)));
        Ok(())
    }

    #[test]
    fn no_limit_means_no_pressure() -> io::Result<()> {
        let root = std::env::temp_dir().join(format!("keel-overload-nl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("a"))?;
        std::fs::write(root.join("cgroup.controllers"), "memory")?;
        std::fs::write(root.join("a/memory.max"), "max\n")?;
        let membership = root.join("cgroup");
        std::fs::write(&membership, "0::/a\n")?;
        let source = MemorySource {
            process_limit: None,
            cgroup_mount: root.clone(),
            proc_cgroup: membership,
        };
        let pressure = source.pressure()?;
        std::fs::remove_dir_all(&root)?;
        assert_eq!(pressure, None);
        Ok(())
    }
}
