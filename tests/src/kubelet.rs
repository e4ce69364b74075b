//! Kubelet-style cgroups for test pods: the names kubelet gives a pod's cgroup under its `kubepods`
//! hierarchy (cgroup v2, with `--cgroup-root=/`) and the container cgroup a CRI runtime makes below
//! it. Written here from kubelet's rules, independently of Keel's scanner, so the e2e tests check one
//! against the other. [`crate::PodNet::add_pod_kubelet`] builds them.
//!
//! ```text
//! systemd   kubepods.slice/kubepods-pod<uid_>.slice/cri-containerd-<id>.scope                    Guaranteed
//!           kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-...    Burstable
//!           kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice/cri-...  BestEffort
//! cgroupfs  kubepods/pod<uid>/<id>, kubepods/burstable/pod<uid>/<id>, kubepods/besteffort/pod<uid>/<id>
//! ```
//! `<uid_>` is the UID with `-` written `_` (systemd reads `-` as a step down the slice tree); `<id>`
//! is the 64-hex-digit container id.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;

/// Kubelet's (and the runtime's) cgroup driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CgroupDriver {
    /// systemd slices and scopes.
    Systemd,
    /// Plain directories.
    Cgroupfs,
}

/// A pod's QoS class (`status.qosClass`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QosClass {
    /// Directly under `kubepods`.
    Guaranteed,
    /// Under `kubepods/burstable`.
    Burstable,
    /// Under `kubepods/besteffort`.
    BestEffort,
}

impl QosClass {
    /// Every class.
    pub const ALL: [QosClass; 3] = [
        QosClass::Guaranteed,
        QosClass::Burstable,
        QosClass::BestEffort,
    ];

    /// The API spelling, as in `status.qosClass`.
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }

    fn dir(self) -> Option<&'static str> {
        match self {
            QosClass::Guaranteed => None,
            QosClass::Burstable => Some("burstable"),
            QosClass::BestEffort => Some("besteffort"),
        }
    }
}

impl CgroupDriver {
    /// Both drivers.
    pub const ALL: [CgroupDriver; 2] = [CgroupDriver::Systemd, CgroupDriver::Cgroupfs];
}

/// Where kubelet and the runtime put one pod's cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletCgroup {
    /// `metadata.uid` (lower-case UUID).
    pub uid: String,
    /// `status.qosClass`.
    pub qos: QosClass,
    /// The node's cgroup driver.
    pub driver: CgroupDriver,
}

impl KubeletCgroup {
    /// A pod with UID `uid`.
    pub fn new(uid: &str, qos: QosClass, driver: CgroupDriver) -> Self {
        Self {
            uid: uid.to_string(),
            qos,
            driver,
        }
    }

    /// The pod's cgroup relative to kubelet's cgroup root.
    pub fn pod_path(&self) -> PathBuf {
        match self.driver {
            CgroupDriver::Cgroupfs => {
                let mut p = PathBuf::from("kubepods");
                if let Some(q) = self.qos.dir() {
                    p.push(q);
                }
                p.join(format!("pod{}", self.uid))
            }
            CgroupDriver::Systemd => {
                // Each slice's name is its parent's plus `-<component>`.
                let mut p = PathBuf::from("kubepods.slice");
                let mut stem = "kubepods".to_string();
                if let Some(q) = self.qos.dir() {
                    stem = format!("{stem}-{q}");
                    p.push(format!("{stem}.slice"));
                }
                p.join(format!("{stem}-pod{}.slice", self.uid.replace('-', "_")))
            }
        }
    }

    /// The container cgroup's directory name below the pod's (containerd's naming).
    pub fn container_dir(&self) -> String {
        let id = container_id(&self.uid);
        match self.driver {
            CgroupDriver::Systemd => format!("cri-containerd-{id}.scope"),
            CgroupDriver::Cgroupfs => id,
        }
    }
}

/// A lower-case UUID (version 4 shape) derived from `seed`: the same for the same seed within a build,
/// distinct per seed.
pub fn test_uid(seed: &str) -> String {
    let h = |salt: u64| {
        let mut s = std::collections::hash_map::DefaultHasher::new();
        (salt, seed).hash(&mut s);
        s.finish()
    };
    let (a, b) = (h(1), h(2));
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

/// A 64-hex-digit container id derived from the pod UID.
fn container_id(uid: &str) -> String {
    let hex: String = uid.chars().filter(|c| *c != '-').collect();
    hex.repeat(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_paths() {
        let uid = "3f8e1c2a-6b4d-4e0f-9a7b-1c2d3e4f5a6b";
        let cases = [
            (QosClass::Guaranteed, CgroupDriver::Systemd, "kubepods.slice/kubepods-pod3f8e1c2a_6b4d_4e0f_9a7b_1c2d3e4f5a6b.slice"),
            (QosClass::Burstable, CgroupDriver::Systemd, "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3f8e1c2a_6b4d_4e0f_9a7b_1c2d3e4f5a6b.slice"),
            (QosClass::BestEffort, CgroupDriver::Systemd, "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod3f8e1c2a_6b4d_4e0f_9a7b_1c2d3e4f5a6b.slice"),
            (QosClass::Guaranteed, CgroupDriver::Cgroupfs, "kubepods/pod3f8e1c2a-6b4d-4e0f-9a7b-1c2d3e4f5a6b"),
            (QosClass::Burstable, CgroupDriver::Cgroupfs, "kubepods/burstable/pod3f8e1c2a-6b4d-4e0f-9a7b-1c2d3e4f5a6b"),
            (QosClass::BestEffort, CgroupDriver::Cgroupfs, "kubepods/besteffort/pod3f8e1c2a-6b4d-4e0f-9a7b-1c2d3e4f5a6b"),
        ];
        for (qos, driver, want) in cases {
            let k = KubeletCgroup::new(uid, qos, driver);
            assert_eq!(k.pod_path(), PathBuf::from(want));
        }
        let k = KubeletCgroup::new(uid, QosClass::Burstable, CgroupDriver::Systemd);
        assert_eq!(
            k.container_dir(),
            "cri-containerd-3f8e1c2a6b4d4e0f9a7b1c2d3e4f5a6b3f8e1c2a6b4d4e0f9a7b1c2d3e4f5a6b.scope"
        );
    }

    #[test]
    fn test_uids_are_uuid_shaped_and_distinct() {
        let a = test_uid("default/a");
        let b = test_uid("default/b");
        assert_ne!(a, b);
        assert_eq!(a, test_uid("default/a"));
        for u in [&a, &b] {
            assert_eq!(u.len(), 36, "{u}");
            for (i, c) in u.chars().enumerate() {
                if matches!(i, 8 | 13 | 18 | 23) {
                    assert_eq!(c, '-', "{u}");
                } else {
                    assert!(c.is_ascii_digit() || ('a'..='f').contains(&c), "{u}");
                }
            }
        }
    }
}
