//! Kernel log records (aya-log) forwarded to `tracing`.
//!
//! The kernel programs log at debug level on hot paths. [`kernel_log_level`] sets the object's
//! `AYA_LOG_LEVEL` from the tracing subscriber's maximum level at load time, so with the default
//! (info) those statements are dead code to the verifier and cost nothing. When records are
//! produced, a small thread ([`LogPump`]) drains the ring buffer; it is off the data-plane runtime
//! on purpose, and stops when the `Redirector` is dropped.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::thread::JoinHandle;

use aya_log::EbpfLogger;
use tracing::level_filters::LevelFilter;

/// The global aya-log-ebpf reads to decide which statements run.
pub(crate) const LEVEL_GLOBAL: &str = "AYA_LOG_LEVEL";

/// aya-log level for the kernel side (0 = off, 1 = error ... 5 = trace), from tracing's current
/// maximum level.
pub(crate) fn kernel_log_level() -> u8 {
    match LevelFilter::current() {
        LevelFilter::OFF => 0,
        LevelFilter::ERROR => 1,
        LevelFilter::WARN => 2,
        LevelFilter::INFO => 3,
        LevelFilter::DEBUG => 4,
        _ => 5,
    }
}

/// A `log::Log` that re-emits kernel records as tracing events (target `keel::ebpf::kernel`), so
/// they reach the subscriber whether or not a `log` bridge is installed.
struct TracingLog;

impl log::Log for TracingLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "keel::ebpf::kernel", "{message}"),
            log::Level::Warn => tracing::warn!(target: "keel::ebpf::kernel", "{message}"),
            log::Level::Info => tracing::info!(target: "keel::ebpf::kernel", "{message}"),
            log::Level::Debug => tracing::debug!(target: "keel::ebpf::kernel", "{message}"),
            log::Level::Trace => tracing::trace!(target: "keel::ebpf::kernel", "{message}"),
        }
    }

    fn flush(&self) {}
}

/// Owns the thread draining the kernel log ring buffer. Dropping it stops and joins the thread.
pub(crate) struct LogPump {
    /// eventfd the thread polls next to the ring buffer; written to on drop.
    stop: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl LogPump {
    /// Starts draining the object's log ring buffer. `None` if the object has no log map (it was
    /// built without log statements) or the thread cannot be set up; kernel logs are diagnostics,
    /// so their absence is never an error.
    pub(crate) fn start(ebpf: &mut aya::Ebpf) -> Option<Self> {
        let mut logger = match EbpfLogger::init_with_logger(ebpf, TracingLog) {
            Ok(logger) => logger,
            Err(err) => {
                tracing::debug!(error = %err, "no kernel log map; kernel logs disabled");
                return None;
            }
        };
        // SAFETY: eventfd has no memory-safety preconditions; the result is checked.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "eventfd; kernel logs disabled");
            return None;
        }
        // SAFETY: `raw` is a fresh, valid descriptor owned by nobody else.
        let stop = unsafe { OwnedFd::from_raw_fd(raw) };
        let stop_raw = stop.as_raw_fd();
        let thread = std::thread::Builder::new()
            .name("keel-ebpf-log".into())
            .spawn(move || loop {
                let mut fds = [
                    libc::pollfd {
                        fd: logger.as_fd().as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                    libc::pollfd {
                        fd: stop_raw,
                        events: libc::POLLIN,
                        revents: 0,
                    },
                ];
                // SAFETY: `fds` is a valid array of two pollfd for the duration of the call; the
                // eventfd outlives this thread because `LogPump::drop` joins before closing it.
                let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
                if n < 0 {
                    if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    return;
                }
                if fds[1].revents != 0 {
                    logger.flush();
                    return;
                }
                logger.flush();
            });
        match thread {
            Ok(thread) => Some(Self {
                stop,
                thread: Some(thread),
            }),
            Err(err) => {
                tracing::warn!(error = %err, "spawning the kernel log thread; kernel logs disabled");
                None
            }
        }
    }
}

impl Drop for LogPump {
    fn drop(&mut self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our own eventfd.
        let _ = unsafe {
            libc::write(
                self.stop.as_raw_fd(),
                std::ptr::from_ref(&one).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
