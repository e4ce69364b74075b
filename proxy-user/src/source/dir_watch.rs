//! Wakes the config reload when something in the config directory changes, instead of looking at
//! every file's metadata several times a second (which, at thousands of files, costs a steady share
//! of a core). Watched: files created, written, removed, renamed in or out, and attribute changes;
//! a ConfigMap volume's update (a new `..data` symlink renamed into place) is a rename in the
//! directory. The caller keeps a slow periodic look as the backstop for what inotify cannot report
//! (network filesystems, a queue overflow).

use std::collections::HashSet;
use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::time::Duration;

use crate::inotify::{Events, Inotify};

/// An inotify watch on one config directory.
#[derive(Debug)]
pub struct DirWatch {
    inotify: Inotify,
    /// What the events since the last [`DirWatch::take_changed`] said.
    events: Events,
}

/// Which entries of the directory changed since the last look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// Exactly these names (files written, created, removed, renamed in or out).
    Names(HashSet<OsString>),
    /// Unknown: events were lost (the kernel's queue overflowed). Everything may have changed.
    Unknown,
}

impl DirWatch {
    /// Watches `dir`. Must be called within a tokio runtime.
    pub fn new(dir: &Path) -> io::Result<Self> {
        let inotify = Inotify::new()?;
        inotify.add(
            dir,
            libc::IN_CREATE
                | libc::IN_DELETE
                | libc::IN_MODIFY
                | libc::IN_CLOSE_WRITE
                | libc::IN_MOVED_FROM
                | libc::IN_MOVED_TO
                | libc::IN_ATTRIB
                | libc::IN_DELETE_SELF
                | libc::IN_MOVE_SELF
                | libc::IN_ONLYDIR,
        )?;
        Ok(Self {
            inotify,
            events: Events::default(),
        })
    }

    /// Waits for the next burst of changes. An error (or the directory itself going away) means the
    /// watch no longer reports anything: the caller falls back to looking periodically.
    pub async fn changed(&mut self) -> io::Result<()> {
        self.inotify.wait_events(&mut self.events).await?;
        self.check_ended()
    }

    /// Waits until no change came for `quiet` (at most `max` in all): a bulk update (a checkout
    /// rewriting thousands of files) is then read once, whole, instead of half-written and again.
    pub async fn settle(&mut self, quiet: Duration, max: Duration) -> io::Result<()> {
        let deadline = tokio::time::Instant::now() + max;
        loop {
            let until = (tokio::time::Instant::now() + quiet).min(deadline);
            match tokio::time::timeout_at(until, self.changed()).await {
                Ok(Ok(())) if tokio::time::Instant::now() < deadline => {}
                Ok(Ok(())) | Err(_) => return Ok(()),
                Ok(Err(e)) => return Err(e),
            }
        }
    }

    /// The entries changed since the last call (events queued now included), and forgets them.
    pub fn take_changed(&mut self) -> io::Result<Changed> {
        self.inotify.drain(&mut self.events)?;
        self.check_ended()?;
        let events = std::mem::take(&mut self.events);
        Ok(if events.overflowed {
            Changed::Unknown
        } else {
            Changed::Names(events.names.into_iter().collect())
        })
    }

    fn check_ended(&self) -> io::Result<()> {
        if self.events.ended.is_empty() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the config directory's watch ended",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn fires(w: &mut DirWatch) -> bool {
        tokio::time::timeout(Duration::from_secs(2), w.changed())
            .await
            .is_ok_and(|r| r.is_ok())
    }

    async fn quiet(w: &mut DirWatch) -> bool {
        tokio::time::timeout(Duration::from_millis(150), w.changed())
            .await
            .is_err()
    }

    #[tokio::test]
    async fn wakes_on_writes_renames_and_removals() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("keel-dir-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("a.yaml"), "x: 1\n")?;
        let mut w = DirWatch::new(&dir)?;
        assert!(quiet(&mut w).await, "no event before any change");
        std::fs::write(dir.join("a.yaml"), "x: 2\n")?;
        assert!(fires(&mut w).await, "a file rewritten");
        assert!(quiet(&mut w).await, "one burst, one wake-up");
        // A ConfigMap-style update: a new file renamed over the old one.
        std::fs::write(dir.join(".tmp"), "x: 3\n")?;
        std::fs::rename(dir.join(".tmp"), dir.join("a.yaml"))?;
        assert!(fires(&mut w).await, "a file renamed into place");
        std::fs::remove_file(dir.join("a.yaml"))?;
        assert!(fires(&mut w).await, "a file removed");
        let names = |list: &[&str]| Changed::Names(list.iter().map(OsString::from).collect());
        assert_eq!(w.take_changed()?, names(&["a.yaml", ".tmp"]));
        // Queued, not waited for: still reported.
        std::fs::write(dir.join("b.yaml"), "x: 1\n")?;
        assert_eq!(w.take_changed()?, names(&["b.yaml"]));
        assert_eq!(w.take_changed()?, names(&[]));
        // A burst settles once it stays quiet.
        std::fs::write(dir.join("c.yaml"), "x: 1\n")?;
        assert!(fires(&mut w).await);
        let writer_dir = dir.clone();
        let writer = std::thread::spawn(move || {
            for i in 0..5 {
                std::thread::sleep(Duration::from_millis(5));
                let _ = std::fs::write(writer_dir.join(format!("d{i}.yaml")), "x: 1\n");
            }
        });
        w.settle(Duration::from_millis(50), Duration::from_secs(2))
            .await?;
        let _ = writer.join();
        assert_eq!(
            w.take_changed()?,
            names(&["c.yaml", "d0.yaml", "d1.yaml", "d2.yaml", "d3.yaml", "d4.yaml"])
        );
        std::fs::remove_dir_all(&dir)?;
        assert!(
            tokio::time::timeout(Duration::from_secs(2), w.changed())
                .await
                .is_ok_and(|r| r.is_err()),
            "the directory going away ends the watch"
        );
        Ok(())
    }
}
