//! Idle HTTP/1.1 upstream connections that keep only their socket.
//!
//! A node proxy holds a sidecar's pools for every (client pod, cluster) pair on its node: 100 client
//! pods using 100 services is 10,000 keep-alive connections, nearly all idle. A hyper client
//! connection holds about 26 KiB while idle (read and write buffers, its request channel, its driver
//! task). A plaintext connection idle for `PoolConfig::dormant_after` gives that back: hyper returns
//! the socket, and a small watcher task keeps it open, closing it when the upstream closes it (or
//! sends anything, which an idle HTTP/1.1 server never does), at the idle timeout or at the maximum
//! connection duration. A request that takes a dormant connection gets the socket back from the
//! watcher and runs a new hyper connection on it: the upstream sees one keep-alive connection, and
//! the pool's counts (connections, requests per connection, age) carry on unchanged.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Waker};

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::{at_ms, ConnShared, EndpointPool, Timers};
use crate::upstream::stats::StatsPair;

/// A parked connection as the idle list holds it; dropping it closes the connection.
pub(super) struct Dormant {
    shared: Arc<ConnShared>,
    take: oneshot::Sender<oneshot::Sender<TcpStream>>,
}

impl Dormant {
    /// Park `stream` (idle, nothing unread): a watcher task keeps it until a request takes it or
    /// it must close. The connection's slot stays in `shared` and is released when it closes.
    pub(super) fn park(
        stream: TcpStream,
        shared: Arc<ConnShared>,
        ep: Arc<EndpointPool>,
        timers: Timers,
        stats: StatsPair,
    ) -> Dormant {
        forget_wakers(&stream);
        let (take, asked) = oneshot::channel();
        tokio::spawn(watch(stream, asked, Arc::clone(&shared), ep, timers, stats));
        Dormant { shared, take }
    }

    pub(super) fn shared(&self) -> &Arc<ConnShared> {
        &self.shared
    }

    /// The socket back from the watcher; `None` if the watcher closed it meanwhile (it released
    /// the connection's slot then).
    pub(super) async fn wake(self) -> Option<(TcpStream, Arc<ConnShared>)> {
        let (reply, stream) = oneshot::channel();
        self.take.send(reply).ok()?;
        let stream = stream.await.ok()?;
        Some((stream, self.shared))
    }
}

/// What woke a watcher.
enum Event {
    /// A request asks for the socket (`None`: the entry was dropped).
    Asked(Option<oneshot::Sender<TcpStream>>),
    /// The socket turned readable: `true` if it is still quiet (stale readiness).
    Readable(bool),
    Timer,
}

/// Why a watcher closed its connection.
enum Close {
    /// The pool dropped the entry (client state reclaimed, or a request found it draining).
    Dropped,
    /// The upstream closed the connection or sent bytes nobody asked for.
    Peer,
    /// Idle timeout or maximum duration.
    Timer,
}

async fn watch(
    stream: TcpStream,
    mut asked: oneshot::Receiver<oneshot::Sender<TcpStream>>,
    shared: Arc<ConnShared>,
    ep: Arc<EndpointPool>,
    timers: Timers,
    stats: StatsPair,
) {
    let born = at_ms(shared.born_ms.load(Ordering::Acquire));
    let idle_since = at_ms(shared.idle_since.load(Ordering::Acquire));
    let deadline = [
        timers.idle.map(|idle| idle_since + idle),
        timers.max_duration.map(|max| born + max),
    ]
    .into_iter()
    .flatten()
    .min();
    let timer = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(timer);
    let close = loop {
        let event = tokio::select! {
            biased;
            request = &mut asked => Event::Asked(request.ok()),
            ready = stream.ready(Interest::READABLE) => {
                Event::Readable(ready.is_ok() && still_quiet(&stream))
            }
            () = &mut timer => Event::Timer,
        };
        match event {
            Event::Asked(Some(reply)) => match reply.send(stream) {
                Ok(()) => return,
                // The request gave up before the socket came: close it.
                Err(back) => {
                    drop(back);
                    shared.draining.store(true, Ordering::Release);
                    shared.release_slot();
                    return;
                }
            },
            Event::Asked(None) => break Close::Dropped,
            Event::Readable(true) => {}
            Event::Readable(false) => break Close::Peer,
            Event::Timer => break Close::Timer,
        }
    };
    shared.draining.store(true, Ordering::Release);
    if let Close::Timer = close {
        let now = tokio::time::Instant::now();
        if timers.max_duration.is_some_and(|max| now >= born + max) {
            stats.inc(|s| &s.upstream_cx_max_duration_reached);
        } else {
            stats.inc(|s| &s.upstream_cx_idle_timeout);
        }
    }
    if !matches!(close, Close::Dropped) {
        // Off the idle list first, so no request takes a connection that is closing.
        let entry = {
            let mut st = ep.lock();
            st.idle
                .iter()
                .position(|c| Arc::ptr_eq(c.shared(), &shared))
                .map(|at| st.idle.remove(at))
        };
        drop(entry);
    }
    drop(stream);
    shared.release_slot();
}

/// Drop the wakers the socket keeps for whoever polled it last (hyper's driver task): each would
/// keep that finished task's memory (a few KiB) for as long as the connection stays parked.
fn forget_wakers(stream: &TcpStream) {
    let mut noop = Context::from_waker(Waker::noop());
    // A poll that finds the socket not ready stores the no-op waker in place of the old one; stale
    // readiness is cleared by the peek first.
    for _ in 0..2 {
        if stream.poll_read_ready(&mut noop).is_pending() || !still_quiet(stream) {
            break;
        }
    }
    let _ = stream.poll_write_ready(&mut noop);
}

/// Whether a socket reported readable is still an idle connection: nothing to read and no end of
/// stream (readiness can be stale, so a peek decides).
fn still_quiet(stream: &TcpStream) -> bool {
    let peeked = stream.try_io(Interest::READABLE, || {
        let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        socket2::SockRef::from(stream).peek(&mut byte)
    });
    matches!(peeked, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The point of parking is memory: the watcher that replaces hyper's ~26 KiB per idle
    /// connection must stay small (its future is the task's whole state).
    #[tokio::test]
    async fn a_parked_connection_costs_under_one_kib() -> Result<(), Box<dyn std::error::Error>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let stream = TcpStream::connect(listener.local_addr()?).await?;
        let (_take, asked) = oneshot::channel();
        let ep = Arc::new(EndpointPool {
            addr: listener.local_addr()?,
            server: None,
            state: Default::default(),
        });
        let watcher = watch(
            stream,
            asked,
            Arc::default(),
            ep,
            Timers {
                idle: None,
                max_duration: None,
            },
            StatsPair::new(&Arc::default()),
        );
        let size = std::mem::size_of_val(&watcher);
        assert!(size < 1024, "the watcher future takes {size} bytes");
        Ok(())
    }
}
