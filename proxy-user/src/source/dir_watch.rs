//! Wakes the config reload when something in the config directory changes, instead of looking at
//! every file's metadata several times a second (which, at thousands of files, costs a steady share
//! of a core). Watched: files created, written, removed, renamed in or out, and attribute changes;
//! a ConfigMap volume's update (a new `..data` symlink renamed into place) is a rename in the
//! directory. The caller keeps a slow periodic look as the backstop for what inotify cannot report
//! (network filesystems, a queue overflow).

use std::io;
use std::path::Path;

use crate::inotify::Inotify;

/// An inotify watch on one config directory.
#[derive(Debug)]
pub struct DirWatch {
    inotify: Inotify,
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
        Ok(Self { inotify })
    }

    /// Waits for the next burst of changes. An error (or the directory itself going away) means the
    /// watch no longer reports anything: the caller falls back to looking periodically.
    pub async fn changed(&mut self) -> io::Result<()> {
        let mut ended = Vec::new();
        self.inotify.wait(&mut ended).await?;
        if ended.is_empty() {
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
