//! Wakes the pod sync the moment kubelet creates or removes a pod cgroup, so a new pod is mapped
//! before its containers start rather than at the next periodic scan: inotify on the kubepods and
//! QoS cgroups, where cgroup v2 reports a child cgroup's `mkdir` and `rmdir` as `IN_CREATE` and
//! `IN_DELETE` (checked on Linux 6.18; kubelet and systemd make cgroups with `mkdir`).
//!
//! Use: [`KubepodsWatch::watch`] the roots of a scan, *then* scan (a pod made in between is seen by
//! the scan), then await [`KubepodsWatch::changed`] and loop. A periodic scan stays as the backstop
//! for what inotify cannot report (kubelet starting after Keel, a queue overflow).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use super::kubelet::KubepodsRoot;
use crate::inotify::Inotify;
use crate::policy::model::QosClass;

/// inotify watches on kubepods and QoS cgroups.
#[derive(Debug)]
pub struct KubepodsWatch {
    inotify: Inotify,
    /// Watch descriptor -> directory, to forget directories that went away.
    watched: HashMap<i32, PathBuf>,
}

impl KubepodsWatch {
    /// An inotify instance watching nothing yet. Must be called within a tokio runtime.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            inotify: Inotify::new()?,
            watched: HashMap::new(),
        })
    }

    /// Watches each kubepods cgroup of `roots` and its QoS cgroups that exist. Directories already
    /// watched are skipped, so calling it after every scan only adds what is new. Directories that
    /// vanished meanwhile are skipped too.
    pub fn watch(&mut self, roots: &[KubepodsRoot]) -> io::Result<()> {
        for root in roots {
            for dir in QosClass::ALL.map(|q| root.qos_dir(q)) {
                if self.watched.values().any(|p| *p == dir) {
                    continue;
                }
                match self.add(&dir) {
                    Ok(wd) => {
                        self.watched.insert(wd, dir);
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    fn add(&self, dir: &Path) -> io::Result<i32> {
        self.inotify
            .add(dir, libc::IN_CREATE | libc::IN_DELETE | libc::IN_ONLYDIR)
    }

    /// The directories watched now.
    pub fn watched(&self) -> impl Iterator<Item = &Path> {
        self.watched.values().map(PathBuf::as_path)
    }

    /// Waits until a cgroup was created or removed in a watched directory (or a watched directory
    /// went away) since the last call, then consumes every event queued so far: one wake-up per
    /// burst, however many pods it held.
    pub async fn changed(&mut self) -> io::Result<()> {
        let mut ended = Vec::new();
        self.inotify.wait(&mut ended).await?;
        for wd in ended {
            self.watched.remove(&wd);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pods::kubelet::{find_kubepods_roots, pod_cgroup_path, CgroupDriver};

    const UID: &str = "3f8e1c2a-6b4d-4e0f-9a7b-1c2d3e4f5a6b";

    async fn fires(w: &mut KubepodsWatch) -> bool {
        tokio::time::timeout(Duration::from_secs(2), w.changed())
            .await
            .is_ok_and(|r| r.is_ok())
    }

    async fn quiet(w: &mut KubepodsWatch) -> bool {
        tokio::time::timeout(Duration::from_millis(150), w.changed())
            .await
            .is_err()
    }

    #[tokio::test]
    async fn wakes_on_pod_cgroups_made_and_removed() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("keel-kubepods-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for qos in QosClass::ALL {
            let pod = dir.join(pod_cgroup_path(UID, qos, CgroupDriver::Systemd));
            std::fs::create_dir_all(pod.parent().ok_or("no parent")?)?;
        }
        let roots = find_kubepods_roots(&dir)?;
        let mut w = KubepodsWatch::new()?;
        w.watch(&roots)?;
        w.watch(&roots)?;
        assert_eq!(
            w.watched().count(),
            3,
            "kubepods and two QoS cgroups, once each"
        );
        assert!(quiet(&mut w).await, "no event before any change");

        for qos in QosClass::ALL {
            let pod = dir.join(pod_cgroup_path(UID, qos, CgroupDriver::Systemd));
            std::fs::create_dir(&pod)?;
            // A container cgroup below the pod is not watched: one wake-up for the pod.
            std::fs::create_dir(pod.join("cri-containerd-1.scope"))?;
            assert!(fires(&mut w).await, "{qos}: pod cgroup made");
            assert!(quiet(&mut w).await, "{qos}: one burst, one wake-up");
            std::fs::remove_dir_all(&pod)?;
            assert!(fires(&mut w).await, "{qos}: pod cgroup removed");
        }

        // A QoS cgroup removed ends its watch; made again, the next watch() adds it back.
        let burstable = roots[0].qos_dir(QosClass::Burstable);
        std::fs::remove_dir(&burstable)?;
        assert!(fires(&mut w).await);
        assert_eq!(w.watched().count(), 2);
        std::fs::create_dir(&burstable)?;
        assert!(
            fires(&mut w).await,
            "the kubepods cgroup reports the new QoS cgroup"
        );
        w.watch(&roots)?;
        assert_eq!(w.watched().count(), 3);
        std::fs::create_dir(burstable.join("x"))?;
        assert!(fires(&mut w).await);

        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
