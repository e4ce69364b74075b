//! The allocator keel's binary runs on, and how memory it freed goes back to the kernel.
//!
//! `keel` allocates with jemalloc (its `main.rs` installs [`Jemalloc`] as the global allocator).
//! glibc's malloc, measured on the per-client state bench (100 client pods × 100 clusters at
//! 1,000 rps, `cargo xtask bench --client-state`), kept about 20 MiB more resident than the live
//! heap: long-lived per-(client, cluster) state allocated between short-lived connection buffers
//! leaves holes that `malloc_trim` cannot hand back, one arena per worker. jemalloc's size-class
//! slabs keep them apart, and with the settings below it returns freed pages within about a second.
//!
//! Settings ([`MALLOC_CONF`]): a background thread purges unused pages (`background_thread`);
//! dirty pages are kept for one second (`dirty_decay_ms`, 10 s by default) so a burst's buffers are
//! reused by the next burst but do not stay resident; purged pages are returned at once
//! (`muzzy_decay_ms:0`) rather than lazily, so the resident set shows what keel holds.

pub use tikv_jemallocator::Jemalloc;

/// jemalloc reads this at its first allocation (the `_rjem_` prefix is tikv-jemalloc-sys's).
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// Hands every unused page of every arena back to the kernel now (Envoy's `shrink_heap`): after a
/// reload frees the previous config, and under memory pressure once expensive connections are
/// gone. A no-op for memory another allocator manages (unit tests run on the system's).
pub fn release_freed_memory() {
    // MALLCTL_ARENAS_ALL: every arena.
    const PURGE_ALL: &[u8] = b"arena.4096.purge\0";
    // SAFETY: a void mallctl: no old or new value is read or written, and the name is a
    // NUL-terminated string that outlives the call.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            PURGE_ALL.as_ptr().cast(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
}
