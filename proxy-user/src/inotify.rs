//! A minimal async inotify instance: watches directories and wakes once per burst of events, which
//! is all keel needs (it re-reads what changed itself). Used for kubelet's pod cgroups
//! (`pods::watch`) and the config directory (`source::dir_watch`).

use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Size of `struct inotify_event` without its name.
const EVENT_HEADER: usize = 16;

/// One inotify instance.
#[derive(Debug)]
pub struct Inotify {
    fd: AsyncFd<OwnedFd>,
}

impl Inotify {
    /// An instance watching nothing yet. Must be called within a tokio runtime.
    pub fn new() -> io::Result<Self> {
        // SAFETY: no pointers; the flags are valid for inotify_init1.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the `OwnedFd` keeps the descriptor open, and always the same one, until the
        // `AsyncFd` that owns it is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        Ok(Self { fd })
    }

    /// Watches `dir` for the events of `mask` (`IN_*`); returns the watch descriptor.
    pub fn add(&self, dir: &Path, mask: u32) -> io::Result<i32> {
        let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: a valid inotify descriptor and a NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c_path.as_ptr(), mask) };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(wd)
    }

    /// Waits for at least one event, then consumes every event queued so far (one wake-up per
    /// burst). Appends to `ended` the watches the kernel ended (`IN_IGNORED`: the directory went).
    pub async fn wait(&mut self, ended: &mut Vec<i32>) -> io::Result<()> {
        let mut buf = [0u8; 4096];
        loop {
            let mut guard = self.fd.readable().await?;
            let mut got_any = false;
            loop {
                // SAFETY: reading into a buffer we own, at most its length.
                let n = unsafe {
                    libc::read(
                        guard.get_inner().as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                    )
                };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::WouldBlock {
                        guard.clear_ready();
                        break;
                    }
                    return Err(e);
                }
                got_any = true;
                ended_watches(&buf[..usize::try_from(n).unwrap_or(0)], ended);
            }
            drop(guard);
            if got_any {
                return Ok(());
            }
        }
    }
}

/// Appends to `ended` the watches the kernel ended in `events` (`IN_IGNORED`).
fn ended_watches(mut events: &[u8], ended: &mut Vec<i32>) {
    let word = |b: &[u8], at: usize| -> [u8; 4] {
        let mut w = [0u8; 4];
        w.copy_from_slice(&b[at..at + 4]);
        w
    };
    while events.len() >= EVENT_HEADER {
        let wd = i32::from_ne_bytes(word(events, 0));
        let mask = u32::from_ne_bytes(word(events, 4));
        let name_len = u32::from_ne_bytes(word(events, 12)) as usize;
        if mask & libc::IN_IGNORED != 0 {
            ended.push(wd);
        }
        let next = EVENT_HEADER.saturating_add(name_len).min(events.len());
        events = &events[next..];
    }
}
