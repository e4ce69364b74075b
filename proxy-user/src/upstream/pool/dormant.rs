//! Idle HTTP/1.1 upstream connections that keep only their socket.
//!
//! A node proxy holds a sidecar's pools for every (client pod, cluster) pair on its node: 100 client
//! pods using 100 services is 10,000 keep-alive connections, nearly all idle. A hyper client
//! connection holds about 26 KiB while idle (read and write buffers, its request channel, its driver
//! task). A plaintext connection idle for `PoolConfig::dormant_after` gives that back: hyper returns
//! the socket, which leaves the runtime's reactor and joins its worker's [`Lot`]: one epoll set and
//! one task per worker watch every parked socket, closing one when the upstream closes it (or sends
//! anything, which an idle HTTP/1.1 server never does), at the idle timeout or at the maximum
//! connection duration. A parked connection costs its socket and a slot of about a hundred bytes,
//! no task and no reactor registration. A request that takes a parked connection gets the socket
//! back and runs a new hyper connection on it: the upstream sees one keep-alive connection, and the
//! pool's counts (connections, requests per connection, age) carry on unchanged.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{at_ms, ConnShared, EndpointPool, Timers};
use crate::upstream::stats::StatsPair;

/// A parked connection as the idle list holds it; dropping it closes the connection.
pub(super) struct Dormant {
    lot: Arc<Lot>,
    key: SlotKey,
    shared: Arc<ConnShared>,
}

impl Dormant {
    /// Park `stream` (idle, nothing unread) in the calling worker's lot. `None` if it cannot be
    /// watched (no runtime, or the kernel refused): the stream is closed and the caller releases
    /// the connection's slot. Otherwise the slot stays in `shared` until the connection closes.
    pub(super) fn park(
        stream: TcpStream,
        shared: Arc<ConnShared>,
        ep: Arc<EndpointPool>,
        timers: Timers,
        stats: StatsPair,
    ) -> Option<Dormant> {
        let lot = Lot::current()
            .map_err(|e| tracing::debug!(error = %e, "no lot to park a connection in"))
            .ok()?;
        // Leaves the reactor: the lot's epoll set watches it from now on.
        let stream = stream.into_std().ok()?;
        let born = at_ms(shared.born_ms.load(Ordering::Acquire));
        let idle_since = at_ms(shared.idle_since.load(Ordering::Acquire));
        let deadline = [
            timers.idle.map(|idle| idle_since + idle),
            timers.max_duration.map(|max| born + max),
        ]
        .into_iter()
        .flatten()
        .min();
        let parked = Parked {
            stream,
            shared: Arc::clone(&shared),
            ep,
            max_duration_at: timers.max_duration.map(|max| born + max),
            deadline,
            stats,
        };
        let key = lot.insert(parked).ok()?;
        Some(Dormant { lot, key, shared })
    }

    pub(super) fn shared(&self) -> &Arc<ConnShared> {
        &self.shared
    }

    /// The socket back, registered with the calling worker's reactor; `None` if the lot closed it
    /// meanwhile (it released the connection's slot then).
    pub(super) async fn wake(self) -> Option<(TcpStream, Arc<ConnShared>)> {
        let parked = self.lot.remove(self.key)?;
        let stream = TcpStream::from_std(parked.stream).ok()?;
        Some((stream, Arc::clone(&self.shared)))
    }
}

impl Drop for Dormant {
    fn drop(&mut self) {
        // Taken by `wake` or closed by the lot already: nothing left. Otherwise the socket closes
        // here and the lot's task releases the slot (the caller may hold the endpoint's lock,
        // which releasing takes).
        if let Some(parked) = self.lot.remove(self.key) {
            drop(parked.stream);
            self.lot.release_later(parked.shared);
        }
    }
}

/// Where a parked connection sits in its lot: the slot and the slot's use count (a reused slot is
/// another connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct SlotKey {
    index: u32,
    generation: u32,
}

impl SlotKey {
    fn to_epoll_data(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    fn from_epoll_data(data: u64) -> SlotKey {
        SlotKey {
            index: (data & 0xffff_ffff) as u32,
            generation: (data >> 32) as u32,
        }
    }
}

/// A parked connection.
struct Parked {
    stream: std::net::TcpStream,
    shared: Arc<ConnShared>,
    /// The idle list it is on, to take it off when it closes by itself.
    ep: Arc<EndpointPool>,
    /// When the maximum connection duration is reached (which of the timers closed it).
    max_duration_at: Option<Instant>,
    /// When a timer closes it.
    deadline: Option<Instant>,
    stats: StatsPair,
}

#[derive(Default)]
struct Slot {
    generation: u32,
    parked: Option<Parked>,
}

#[derive(Default)]
struct LotState {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Deadlines of parked connections, earliest first; stale entries (slot reused or emptied)
    /// are skipped when they come up.
    deadlines: BinaryHeap<Reverse<(Instant, SlotKey)>>,
    /// Connections closed by a dropped [`Dormant`], whose slots the task releases.
    to_release: Vec<Arc<ConnShared>>,
}

/// One worker's parked connections: an epoll set with every parked socket, and the task that
/// waits on it and on the earliest deadline.
struct Lot {
    epoll: AsyncFd<OwnedFd>,
    state: Mutex<LotState>,
    /// Wakes the task: an earlier deadline, or slots to release.
    changed: Notify,
    /// The task has ended (its runtime shut down): the thread needs a new lot.
    ended: AtomicBool,
}

thread_local! {
    static CURRENT_LOT: RefCell<Option<Arc<Lot>>> = const { RefCell::new(None) };
}

/// Why a connection closed by itself.
enum Close {
    /// The upstream closed it or sent bytes nobody asked for.
    Peer,
    /// Idle timeout or maximum duration.
    Timer,
}

impl Lot {
    /// The calling thread's lot, made (with its task on the current runtime) on first use.
    fn current() -> io::Result<Arc<Lot>> {
        CURRENT_LOT.with(|cell| {
            let mut cell = cell.borrow_mut();
            if let Some(lot) = cell.as_ref().filter(|l| !l.ended.load(Ordering::Acquire)) {
                return Ok(Arc::clone(lot));
            }
            let lot = Lot::spawn()?;
            *cell = Some(Arc::clone(&lot));
            Ok(lot)
        })
    }

    fn spawn() -> io::Result<Arc<Lot>> {
        let runtime = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        // SAFETY: epoll_create1 has no preconditions; the result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let _entered = runtime.enter();
        // SAFETY: the `OwnedFd` keeps the epoll set open, and the same descriptor, for as long as
        // the `AsyncFd` that owns it lives.
        let epoll = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?;
        let lot = Arc::new(Lot {
            epoll,
            state: Mutex::new(LotState::default()),
            changed: Notify::new(),
            ended: AtomicBool::new(false),
        });
        runtime.spawn(Arc::clone(&lot).run());
        Ok(lot)
    }

    fn lock(&self) -> MutexGuard<'_, LotState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, parked: Parked) -> io::Result<SlotKey> {
        let deadline = parked.deadline;
        let fd = parked.stream.as_raw_fd();
        let mut st = self.lock();
        let index = match st.free.pop() {
            Some(i) => i,
            None => {
                st.slots.push(Slot::default());
                u32::try_from(st.slots.len() - 1).map_err(io::Error::other)?
            }
        };
        let slot = &mut st.slots[index as usize];
        slot.generation = slot.generation.wrapping_add(1);
        let key = SlotKey {
            index,
            generation: slot.generation,
        };
        let events = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
        if let Err(e) = self.ctl(libc::EPOLL_CTL_ADD, fd, events, key.to_epoll_data()) {
            st.free.push(index);
            return Err(e);
        }
        st.slots[index as usize].parked = Some(parked);
        if let Some(at) = deadline {
            let earliest = st.deadlines.peek().is_none_or(|Reverse((e, _))| at < *e);
            st.deadlines.push(Reverse((at, key)));
            if earliest {
                self.changed.notify_one();
            }
            Self::compact_deadlines(&mut st);
        }
        Ok(key)
    }

    /// Drops the deadlines of connections no longer parked once they outnumber the parked ones
    /// (a connection woken long before its idle timeout leaves its deadline behind).
    fn compact_deadlines(st: &mut LotState) {
        let parked = st.slots.len() - st.free.len();
        if st.deadlines.len() <= 2 * parked + 1024 {
            return;
        }
        st.deadlines = st
            .slots
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| {
                let at = slot.parked.as_ref()?.deadline?;
                let key = SlotKey {
                    index: u32::try_from(index).ok()?,
                    generation: slot.generation,
                };
                Some(Reverse((at, key)))
            })
            .collect();
    }

    /// Takes the connection at `key` out of the lot (and its socket out of the epoll set).
    fn remove(&self, key: SlotKey) -> Option<Parked> {
        let mut st = self.lock();
        Self::take(&mut st, key).inspect(|parked| {
            // Closing the socket would remove it as well; a woken one stays open.
            let _ = self.ctl(libc::EPOLL_CTL_DEL, parked.stream.as_raw_fd(), 0, 0);
        })
    }

    fn take(st: &mut LotState, key: SlotKey) -> Option<Parked> {
        let slot = st.slots.get_mut(key.index as usize)?;
        if slot.generation != key.generation {
            return None;
        }
        let parked = slot.parked.take()?;
        st.free.push(key.index);
        Some(parked)
    }

    fn release_later(&self, shared: Arc<ConnShared>) {
        self.lock().to_release.push(shared);
        self.changed.notify_one();
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: data };
        // SAFETY: both descriptors are open (the lot owns the epoll set, the caller the socket)
        // and `event` outlives the call.
        let rc = unsafe { libc::epoll_ctl(self.epoll.get_ref().as_raw_fd(), op, fd, &mut event) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// The lot's task: closes parked connections whose socket turned readable or whose deadline
    /// came, and releases the slots of dropped ones.
    async fn run(self: Arc<Self>) {
        struct Ended<'a>(&'a AtomicBool);
        impl Drop for Ended<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        let _ended = Ended(&self.ended);
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 64];
        loop {
            let next_deadline = {
                let mut st = self.lock();
                for shared in std::mem::take(&mut st.to_release) {
                    shared.draining.store(true, Ordering::Release);
                    // Not under the lot's lock: releasing takes the endpoint's.
                    drop(st);
                    shared.release_slot();
                    st = self.lock();
                }
                st.deadlines.peek().map(|Reverse((at, _))| *at)
            };
            let timer = async {
                match next_deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = self.changed.notified() => {}
                ready = self.epoll.readable() => match ready {
                    Ok(mut guard) => {
                        self.drain_events(&mut events);
                        guard.clear_ready();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "parked upstream connections: epoll failed");
                        return;
                    }
                },
                () = timer => self.expire(Instant::now()),
            }
        }
    }

    /// Closes the connections whose sockets reported anything: data or an end of stream from an
    /// idle upstream both end the connection (readiness can be stale, so a peek decides).
    fn drain_events(&self, events: &mut [libc::epoll_event]) {
        loop {
            let capacity = libc::c_int::try_from(events.len()).unwrap_or(libc::c_int::MAX);
            // SAFETY: `events` has room for `capacity` entries; timeout 0 never blocks.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.get_ref().as_raw_fd(),
                    events.as_mut_ptr(),
                    capacity,
                    0,
                )
            };
            let Ok(n) = usize::try_from(n) else { return };
            let mut closed = Vec::new();
            {
                let mut st = self.lock();
                for event in &events[..n] {
                    let key = SlotKey::from_epoll_data(event.u64);
                    let quiet = st
                        .slots
                        .get(key.index as usize)
                        .filter(|s| s.generation == key.generation)
                        .and_then(|s| s.parked.as_ref())
                        .is_some_and(|p| still_quiet(&p.stream));
                    if !quiet {
                        if let Some(parked) = Self::take(&mut st, key) {
                            closed.push(parked);
                        }
                    }
                }
            }
            for parked in closed {
                close(parked, Close::Peer);
            }
            if n < events.len() {
                return;
            }
        }
    }

    /// Closes the connections whose deadline has come by `now`.
    fn expire(&self, now: Instant) {
        let mut closed = Vec::new();
        {
            let mut st = self.lock();
            while let Some(Reverse((at, key))) = st.deadlines.peek().copied() {
                if at > now {
                    break;
                }
                st.deadlines.pop();
                if let Some(parked) = Self::take(&mut st, key) {
                    closed.push(parked);
                }
            }
        }
        for parked in closed {
            close(parked, Close::Timer);
        }
    }
}

/// Ends a parked connection that closed by itself: off its idle list first (so no request takes
/// it), then its socket and its slot.
fn close(parked: Parked, why: Close) {
    let Parked {
        stream,
        shared,
        ep,
        max_duration_at,
        stats,
        ..
    } = parked;
    shared.draining.store(true, Ordering::Release);
    if let Close::Timer = why {
        if max_duration_at.is_some_and(|at| Instant::now() >= at) {
            stats.inc(|s| &s.upstream_cx_max_duration_reached);
        } else {
            stats.inc(|s| &s.upstream_cx_idle_timeout);
        }
    }
    let entry = {
        let mut st = ep.lock();
        st.idle
            .iter()
            .position(|c| Arc::ptr_eq(c.shared(), &shared))
            .map(|at| st.idle.remove(at))
    };
    // Its `Dormant` finds the slot empty: nothing more to do there.
    drop(entry);
    drop(stream);
    shared.release_slot();
}

/// Whether a socket reported readable is still an idle connection: nothing to read and no end of
/// stream.
fn still_quiet(stream: &std::net::TcpStream) -> bool {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    matches!(
        socket2::SockRef::from(stream).peek(&mut byte),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn endpoint(addr: std::net::SocketAddr) -> Arc<EndpointPool> {
        Arc::new(EndpointPool {
            addr,
            server: None,
            state: Default::default(),
        })
    }

    fn no_timers() -> Timers {
        Timers {
            idle: None,
            max_duration: None,
        }
    }

    /// The point of parking is memory: a parked connection costs a slot, not a task.
    #[test]
    fn a_parked_connection_costs_a_small_slot() {
        let size = std::mem::size_of::<Slot>() + std::mem::size_of::<Reverse<(Instant, SlotKey)>>();
        assert!(size <= 160, "a parked connection takes {size} bytes");
    }

    #[tokio::test]
    async fn a_parked_socket_is_woken_open_and_carries_on() -> Result<(), Box<dyn std::error::Error>>
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let client = TcpStream::connect(listener.local_addr()?).await?;
        let (mut server, _) = listener.accept().await?;
        let ep = endpoint(listener.local_addr()?);
        let parked = Dormant::park(
            client,
            Arc::default(),
            ep,
            no_timers(),
            StatsPair::new(&Arc::default()),
        )
        .ok_or("not parked")?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (mut stream, _) = parked.wake().await.ok_or("closed while parked")?;
        stream.write_all(b"ping").await?;
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await?;
        assert_eq!(&got, b"ping");
        Ok(())
    }

    #[tokio::test]
    async fn a_peer_close_ends_the_parked_connection() -> Result<(), Box<dyn std::error::Error>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let client = TcpStream::connect(listener.local_addr()?).await?;
        let (server, _) = listener.accept().await?;
        let shared: Arc<ConnShared> = Arc::default();
        let parked = Dormant::park(
            client,
            Arc::clone(&shared),
            endpoint(listener.local_addr()?),
            no_timers(),
            StatsPair::new(&Arc::default()),
        )
        .ok_or("not parked")?;
        drop(server);
        tokio::time::timeout(Duration::from_secs(5), async {
            while !shared.draining() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await?;
        assert!(
            parked.wake().await.is_none(),
            "a closed connection was handed out"
        );
        Ok(())
    }

    #[tokio::test]
    async fn the_idle_timeout_closes_a_parked_connection() -> Result<(), Box<dyn std::error::Error>>
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let client = TcpStream::connect(listener.local_addr()?).await?;
        let (mut server, _) = listener.accept().await?;
        let shared: Arc<ConnShared> = Arc::default();
        shared
            .idle_since
            .store(super::super::now_ms(), Ordering::Release);
        let stats = StatsPair::new(&Arc::default());
        let _parked = Dormant::park(
            client,
            Arc::clone(&shared),
            endpoint(listener.local_addr()?),
            Timers {
                idle: Some(Duration::from_millis(100)),
                max_duration: None,
            },
            stats.clone(),
        )
        .ok_or("not parked")?;
        let mut buf = [0u8; 1];
        // The upstream sees the close at the idle timeout.
        let read = tokio::time::timeout(Duration::from_secs(5), server.read(&mut buf)).await??;
        assert_eq!(read, 0);
        assert!(shared.draining());
        assert_eq!(stats.client.upstream_cx_idle_timeout.get(), 1);
        Ok(())
    }
}
