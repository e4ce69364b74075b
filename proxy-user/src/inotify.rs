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
        let mut events = Events::default();
        self.wait_events(&mut events).await?;
        ended.append(&mut events.ended);
        Ok(())
    }

    /// [`Inotify::wait`], collecting into `events` the names the events carry as well.
    pub async fn wait_events(&mut self, events: &mut Events) -> io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            let got_any = read_queued(guard.get_inner().as_raw_fd(), events)?;
            guard.clear_ready();
            drop(guard);
            if got_any {
                return Ok(());
            }
        }
    }

    /// Consumes the events queued now, without waiting. True if there were any.
    pub fn drain(&mut self, events: &mut Events) -> io::Result<bool> {
        read_queued(self.fd.get_ref().as_raw_fd(), events)
    }
}

/// What a run of events said.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Events {
    /// Watches the kernel ended (`IN_IGNORED`).
    pub ended: Vec<i32>,
    /// Names of the entries events were about (entries of a watched directory), in order, repeats
    /// left in.
    pub names: Vec<std::ffi::OsString>,
    /// The kernel's queue overflowed (`IN_Q_OVERFLOW`): events were lost, so `names` is incomplete.
    pub overflowed: bool,
}

/// Reads every event queued on the non-blocking inotify descriptor `fd` into `events`; true if any.
fn read_queued(fd: std::os::fd::RawFd, events: &mut Events) -> io::Result<bool> {
    let mut buf = [0u8; 4096];
    let mut got_any = false;
    loop {
        // SAFETY: reading into a buffer we own, at most its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(got_any);
            }
            return Err(e);
        }
        got_any = true;
        parse_events(&buf[..usize::try_from(n).unwrap_or(0)], events);
    }
}

/// Adds what `buf` (whole `struct inotify_event`s) says to `out`.
fn parse_events(mut events: &[u8], out: &mut Events) {
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
            out.ended.push(wd);
        }
        if mask & libc::IN_Q_OVERFLOW != 0 {
            out.overflowed = true;
        }
        // The name is NUL-padded to the event's length.
        let name = events
            .get(EVENT_HEADER..EVENT_HEADER.saturating_add(name_len))
            .unwrap_or(&[]);
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        if !name.is_empty() {
            out.names
                .push(std::ffi::OsStr::from_bytes(name).to_os_string());
        }
        let next = EVENT_HEADER.saturating_add(name_len).min(events.len());
        events = &events[next..];
    }
}
