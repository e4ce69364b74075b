//! The heartbeat that keeps redirection on: a slot in the pinned `LIVENESS` array that a dedicated
//! thread refreshes every [`BEAT`]. The connect hooks redirect only while some slot is younger than
//! [`LIVENESS_STALE_NS`]; a keel that is killed, OOM-killed, stopped (SIGSTOP) or hung stops
//! beating, and within that time pods' connections go direct again (or are refused at once in
//! fail-closed namespaces) instead of waiting on a proxy that does not answer.
//!
//! The slots also say who else serves the install: the newest live keel is the one that writes the
//! pod and destination maps ([`Heartbeat::is_newest`]), and a keel being stopped knows whether a
//! successor takes its connections ([`Heartbeat::others_alive`]).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use aya::maps::{Array, Map, MapData};
use proxy_common::{LiveSlot, LIVENESS_SLOTS, LIVENESS_STALE_NS};

use super::monotonic_ns;

/// How often the heartbeat is refreshed: several beats fit in [`LIVENESS_STALE_NS`], so a busy
/// machine delaying one beat does not switch redirection off.
pub const BEAT: Duration = Duration::from_millis(25);
/// A slot whose heartbeat is older than this is free to claim (its keel is long gone).
const RECLAIM_NS: u64 = 1_000_000_000;

/// This process's slot and the thread refreshing it. Dropping it (or [`Heartbeat::stop`]) frees
/// the slot at once: redirection to this keel ends immediately, not after the stale time.
pub struct Heartbeat {
    slots: Array<MapData, LiveSlot>,
    index: u32,
    started_ns: u64,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeat")
            .field("slot", &self.index)
            .finish_non_exhaustive()
    }
}

impl Heartbeat {
    /// Claims a free (or long stale) slot of the map pinned at `pin` and starts beating. Call with
    /// the install lock held, so two keels never pick the same slot.
    pub fn start(pin: &Path) -> std::io::Result<Self> {
        let mut slots = open(pin)?;
        let now = monotonic_ns();
        let mut free = None;
        for i in 0..LIVENESS_SLOTS {
            let slot = slots.get(&i, 0).map_err(std::io::Error::other)?;
            if slot.heartbeat_ns == 0 || now.saturating_sub(slot.heartbeat_ns) > RECLAIM_NS {
                free = Some(i);
                break;
            }
        }
        let Some(index) = free else {
            return Err(std::io::Error::other(format!(
                "all {LIVENESS_SLOTS} heartbeat slots are taken by live keels"
            )));
        };
        let slot = LiveSlot {
            heartbeat_ns: now,
            started_ns: now,
            pid: std::process::id(),
            flags: 0,
        };
        slots.set(index, slot, 0).map_err(std::io::Error::other)?;
        let mut writer = open(pin)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("keel-heartbeat".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        let beat = LiveSlot {
                            heartbeat_ns: monotonic_ns(),
                            ..slot
                        };
                        // Checked again after the write: `stop` may have freed the slot meanwhile.
                        if !stop.load(Ordering::Acquire) {
                            if let Err(e) = writer.set(index, beat, 0) {
                                tracing::warn!(error = %e, "heartbeat update failed");
                            }
                        }
                        std::thread::sleep(BEAT);
                    }
                })?
        };
        tracing::info!(slot = index, "heartbeat started");
        Ok(Self {
            slots,
            index,
            started_ns: now,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops beating and frees the slot: from now on this keel counts as gone.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if let Err(e) = self.slots.set(self.index, LiveSlot::FREE, 0) {
            tracing::warn!(error = %e, "cannot free the heartbeat slot");
        }
    }

    /// The other slots that are alive now.
    fn others(&self) -> Vec<LiveSlot> {
        let now = monotonic_ns();
        (0..LIVENESS_SLOTS)
            .filter(|&i| i != self.index)
            .filter_map(|i| self.slots.get(&i, 0).ok())
            .filter(|s| {
                s.heartbeat_ns != 0 && now.saturating_sub(s.heartbeat_ns) < LIVENESS_STALE_NS
            })
            .collect()
    }

    /// Whether another keel serves the install now.
    pub fn others_alive(&self) -> bool {
        !self.others().is_empty()
    }

    /// Whether no live keel started after this one: the newest writes the shared maps.
    pub fn is_newest(&self) -> bool {
        self.others().iter().all(|s| s.started_ns < self.started_ns)
    }
}

fn open(pin: &Path) -> std::io::Result<Array<MapData, LiveSlot>> {
    let data = MapData::from_pin(pin).map_err(std::io::Error::other)?;
    let map = Map::from_map_data(data).map_err(std::io::Error::other)?;
    Array::try_from(map).map_err(std::io::Error::other)
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop();
        }
    }
}
