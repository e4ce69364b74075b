//! Which worker runtime the current thread runs (each worker is a single-threaded runtime).
//!
//! An upstream HTTP/1.1 connection's driver task lives on the worker that dialed it; a request
//! served on another worker that takes it wakes that worker through its eventfd and hops threads
//! twice per request. The pool prefers a connection of the caller's own worker.

use std::cell::Cell;

/// No worker: threads that are not keel workers (the control runtime, blocking pools, tests).
pub const NONE: u16 = u16::MAX;

thread_local! {
    static CURRENT: Cell<u16> = const { Cell::new(NONE) };
}

/// Marks the calling thread as worker `index` (called once, when the worker thread starts).
pub fn set(index: usize) {
    let index = u16::try_from(index).unwrap_or(NONE);
    CURRENT.with(|c| c.set(index));
}

/// The calling thread's worker, or [`NONE`].
pub fn current() -> u16 {
    CURRENT.with(Cell::get)
}
