use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;

use super::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;
use crate::policy::model::{Labels, Meta};

const UID: &str = "3f8e1c2a-6b4d-4e0f-9a7b-1c2d3e4f5a6b";
/// A static pod's UID (MD5 hex, no dashes).
const STATIC_UID: &str = "0123456789abcdef0123456789abcdef";

#[test]
fn path_grammar_for_every_driver_and_qos_class() {
    let cases = [
        (
            QosClass::Guaranteed,
            CgroupDriver::Systemd,
            "kubepods.slice/kubepods-pod3f8e1c2a_6b4d_4e0f_9a7b_1c2d3e4f5a6b.slice",
        ),
        (
            QosClass::Burstable,
            CgroupDriver::Systemd,
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3f8e1c2a_6b4d_4e0f_9a7b_1c2d3e4f5a6b.slice",
        ),
        (
            QosClass::BestEffort,
            CgroupDriver::Systemd,
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod3f8e1c2a_6b4d_4e0f_9a7b_1c2d3e4f5a6b.slice",
        ),
        (
            QosClass::Guaranteed,
            CgroupDriver::Cgroupfs,
            "kubepods/pod3f8e1c2a-6b4d-4e0f-9a7b-1c2d3e4f5a6b",
        ),
        (
            QosClass::Burstable,
            CgroupDriver::Cgroupfs,
            "kubepods/burstable/pod3f8e1c2a-6b4d-4e0f-9a7b-1c2d3e4f5a6b",
        ),
        (
            QosClass::BestEffort,
            CgroupDriver::Cgroupfs,
            "kubepods/besteffort/pod3f8e1c2a-6b4d-4e0f-9a7b-1c2d3e4f5a6b",
        ),
    ];
    for (qos, driver, want) in cases {
        assert_eq!(
            pod_cgroup_path(UID, qos, driver),
            Path::new(want),
            "{qos} {driver}"
        );
    }
}

#[test]
fn nested_systemd_root_prefixes_every_slice() {
    // kubelet --cgroup-driver=systemd --cgroup-root=/kubelet.slice (kind).
    let root = KubepodsRoot::new(
        PathBuf::from("kubelet.slice/kubelet-kubepods.slice"),
        CgroupDriver::Systemd,
    );
    assert_eq!(
        root.pod_dir(UID, QosClass::BestEffort),
        Path::new(
            "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/\
             kubelet-kubepods-besteffort-pod3f8e1c2a_6b4d_4e0f_9a7b_1c2d3e4f5a6b.slice"
        )
    );
    assert_eq!(
        root.pod_dir(UID, QosClass::Guaranteed),
        Path::new(
            "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod3f8e1c2a_6b4d_4e0f_9a7b_1c2d3e4f5a6b.slice"
        )
    );
}

#[test]
fn pod_dir_names_parse_back_to_their_uid() {
    for uid in [UID, STATIC_UID] {
        for qos in QosClass::ALL {
            for driver in CgroupDriver::ALL {
                let path = pod_cgroup_path(uid, qos, driver);
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                assert_eq!(
                    parse_pod_dir(name),
                    Some((uid.to_string(), driver)),
                    "{name}"
                );
            }
        }
    }
}

#[test]
fn only_uid_shaped_pod_dirs_parse() {
    let not_pods = [
        "",
        "pod",
        "kubepods",
        "kubepods.slice",
        "burstable",
        "kubepods-burstable.slice",
        // A container cgroup below a pod (systemd and cgroupfs runtimes).
        "cri-containerd-4b6c0d7e9f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c.scope",
        "4b6c0d7e9f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c",
        // Upper case: the API server and kubelet write lower case only.
        "pod3F8E1C2A-6B4D-4E0F-9A7B-1C2D3E4F5A6B",
        // Dashes in the wrong places, too short, too long, not hex.
        "pod3f8e1c2a6-b4d-4e0f-9a7b-1c2d3e4f5a6b",
        "pod3f8e1c2a-6b4d-4e0f-9a7b-1c2d3e4f5a6",
        "pod3f8e1c2a-6b4d-4e0f-9a7b-1c2d3e4f5a6b0",
        "pod3f8e1c2a-6b4d-4e0f-9a7b-1c2d3e4f5a6g",
        "pod0123456789abcdef0123456789abcde",
        // systemd names with an unescaped UID, or the cgroupfs form with a .slice suffix.
        "kubepods-pod3f8e1c2a-6b4d-4e0f-9a7b-1c2d3e4f5a6b.slice",
        "pod3f8e1c2a_6b4d_4e0f_9a7b_1c2d3e4f5a6b",
        // Escaped form without the .slice suffix.
        "kubepods-pod3f8e1c2a_6b4d_4e0f_9a7b_1c2d3e4f5a6b",
        "podsomething.slice",
    ];
    for name in not_pods {
        assert_eq!(parse_pod_dir(name), None, "{name:?}");
    }
    assert_eq!(
        parse_pod_dir("pod3f8e1c2a_6b4d_4e0f_9a7b_1c2d3e4f5a6b.slice"),
        Some((UID.to_string(), CgroupDriver::Systemd)),
        "a slice named after a pod is one, whatever its parent's name"
    );
}

#[test]
fn kubepods_names() {
    assert_eq!(kubepods_driver("kubepods"), Some(CgroupDriver::Cgroupfs));
    assert_eq!(
        kubepods_driver("kubepods.slice"),
        Some(CgroupDriver::Systemd)
    );
    assert_eq!(
        kubepods_driver("kubelet-kubepods.slice"),
        Some(CgroupDriver::Systemd)
    );
    for no in [
        "kubepods-burstable.slice",
        "mykubepods.slice",
        "kubepods.scope",
        "Kubepods",
        "kubepods-besteffort",
        "system.slice",
    ] {
        assert_eq!(kubepods_driver(no), None, "{no}");
    }
}

#[test]
fn cgroup_uid_of_mirror_pods_is_the_static_pods_hash() {
    let mut pod = model_pod(Some(UID));
    assert_eq!(cgroup_uid(&pod), Some(UID));
    pod.annotations
        .insert(MIRROR_POD_ANNOTATION.into(), STATIC_UID.into());
    assert_eq!(cgroup_uid(&pod), Some(STATIC_UID));
    pod.annotations
        .insert(MIRROR_POD_ANNOTATION.into(), "not-a-hash".into());
    assert_eq!(cgroup_uid(&pod), None);
    assert_eq!(cgroup_uid(&model_pod(None)), None);
    assert_eq!(cgroup_uid(&model_pod(Some("1234"))), None);
}

fn model_pod(uid: Option<&str>) -> Pod {
    Pod {
        meta: Meta {
            kind: "Pod".into(),
            namespace: "default".into(),
            name: "p".into(),
            file: None,
            line: None,
            creation_timestamp: None,
            order: 0,
        },
        labels: Labels::new(),
        annotations: Labels::new(),
        ips: Vec::new(),
        ready: true,
        capture: true,
        container_ports: Vec::new(),
        node_name: None,
        owner: None,
        uid: uid.map(str::to_string),
        qos_class: None,
        host_network: false,
        sidecar: false,
        traffic: None,
    }
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> std::io::Result<Self> {
        let dir = std::env::temp_dir().join(format!("keel-kubelet-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }

    /// Creates `rel` (and its parents) below the scratch dir; returns its full path.
    fn mkdir(&self, rel: impl AsRef<Path>) -> std::io::Result<PathBuf> {
        let p = self.0.join(rel);
        std::fs::create_dir_all(&p)?;
        Ok(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn inode(p: &Path) -> std::io::Result<u64> {
    Ok(std::fs::metadata(p)?.ino())
}

fn uid(n: u32) -> String {
    format!("{n:08x}-6b4d-4e0f-9a7b-1c2d3e4f5a6b")
}

/// UID -> (path relative to the scratch dir, qos, driver) of what a scan found.
fn found(
    scan: &KubeletCgroups,
    scratch: &Scratch,
) -> BTreeMap<String, (PathBuf, QosClass, CgroupDriver)> {
    scan.pods()
        .iter()
        .map(|(uid, p)| {
            let rel = p
                .path
                .strip_prefix(&scratch.0)
                .unwrap_or(&p.path)
                .to_path_buf();
            (uid.clone(), (rel, p.qos, p.driver))
        })
        .collect()
}

#[test]
fn scan_finds_every_pod_of_both_drivers_and_nothing_else() -> TestResult {
    let s = Scratch::new("scan")?;
    let mut want = BTreeMap::new();
    let mut n = 0;
    for driver in CgroupDriver::ALL {
        for qos in QosClass::ALL {
            n += 1;
            let u = uid(n);
            let rel = pod_cgroup_path(&u, qos, driver);
            // Container cgroups below the pod, as a runtime makes them, are not pods.
            let container = match driver {
                CgroupDriver::Systemd => format!("cri-containerd-{n:064x}.scope"),
                CgroupDriver::Cgroupfs => format!("{n:064x}"),
            };
            s.mkdir(rel.join(container))?;
            want.insert(u, (rel, qos, driver));
        }
    }
    // kubelet --cgroup-root one level down, both drivers (kind uses the systemd one).
    let kind = KubepodsRoot::new(
        PathBuf::from("kubelet.slice/kubelet-kubepods.slice"),
        CgroupDriver::Systemd,
    );
    let nested_cgroupfs =
        KubepodsRoot::new(PathBuf::from("kubelet/kubepods"), CgroupDriver::Cgroupfs);
    for (root, qos) in [
        (&kind, QosClass::Burstable),
        (&nested_cgroupfs, QosClass::Guaranteed),
    ] {
        n += 1;
        let u = uid(n);
        let rel = root.pod_dir(&u, qos);
        s.mkdir(&rel)?;
        want.insert(u, (rel, qos, root.driver()));
    }

    // Decoys: pods in the wrong place, other slices, control files, too deep a --cgroup-root.
    s.mkdir(format!(
        "kubepods.slice/kubepods-burstable-pod{}.slice",
        uid(90).replace('-', "_")
    ))?;
    s.mkdir(format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-besteffort-pod{}.slice",
        uid(91).replace('-', "_")
    ))?;
    s.mkdir(format!("kubepods/burstable/burstable/pod{}", uid(92)))?;
    s.mkdir(format!("kubepods/pod{}", uid(93).to_uppercase()))?;
    s.mkdir(format!("kubepods/guaranteed/pod{}", uid(94)))?;
    s.mkdir(format!("system.slice/containerd.service/pod{}", uid(95)))?;
    s.mkdir(format!("a/b/kubepods/pod{}", uid(96)))?;
    s.mkdir("user.slice/user-0.slice")?;
    std::fs::write(s.0.join("kubepods/cgroup.procs"), "")?;
    std::fs::write(s.0.join(format!("kubepods/pod{}", uid(97))), "")?;

    let scan = KubeletCgroups::scan_with(&s.0, inode)?;
    assert_eq!(found(&scan, &s), want);
    assert!(scan.problems().is_empty(), "{:?}", scan.problems());
    let roots: Vec<_> = scan
        .roots()
        .iter()
        .map(|r| {
            (
                r.path().strip_prefix(&s.0).map(Path::to_path_buf),
                r.driver(),
            )
        })
        .collect();
    assert_eq!(roots.len(), 4, "{roots:?}");
    for (uid, pod) in scan.pods() {
        assert_eq!(pod.cgroup_id, inode(&pod.path)?, "{uid}");
        assert_eq!(scan.get(uid), Some(pod));
    }
    Ok(())
}

#[test]
fn scan_from_a_kubepods_root_or_a_namespace_root() -> TestResult {
    let s = Scratch::new("roots")?;
    let rel = pod_cgroup_path(UID, QosClass::BestEffort, CgroupDriver::Systemd);
    s.mkdir(Path::new("kubelet.slice").join(&rel))?;
    // Given the kubepods slice itself.
    let scan = KubeletCgroups::scan_with(&s.0.join("kubelet.slice/kubepods.slice"), inode)?;
    assert_eq!(scan.len(), 1);
    // Given the parent of a kubepods slice (a cgroup namespace root, say).
    let scan = KubeletCgroups::scan_with(&s.0.join("kubelet.slice"), inode)?;
    assert_eq!(
        scan.get(UID).map(|p| p.path.clone()),
        Some(s.0.join("kubelet.slice").join(&rel))
    );
    // Given a directory with no kubelet tree: nothing, and no error.
    let scan = KubeletCgroups::scan_with(&s.mkdir("empty")?, inode)?;
    assert!(scan.is_empty() && scan.roots().is_empty());
    // A missing root is an error.
    assert!(KubeletCgroups::scan_with(&s.0.join("missing"), inode).is_err());
    Ok(())
}

#[test]
fn vanished_cgroups_are_skipped_and_other_failures_reported() -> TestResult {
    let s = Scratch::new("vanish")?;
    let (gone, denied, kept) = (uid(1), uid(2), uid(3));
    for u in [&gone, &denied, &kept] {
        s.mkdir(pod_cgroup_path(
            u,
            QosClass::Burstable,
            CgroupDriver::Cgroupfs,
        ))?;
    }
    let gone_dir = format!("pod{gone}");
    let denied_dir = format!("pod{denied}");
    let scan = KubeletCgroups::scan_with(&s.0, |p: &Path| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name == gone_dir {
            // Deleted between readdir and stat, as kubelet does when a pod ends.
            std::fs::remove_dir(p)?;
            return inode(p);
        }
        if name == denied_dir {
            return Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        }
        inode(p)
    })?;
    assert_eq!(scan.pods().keys().collect::<Vec<_>>(), [&kept]);
    assert_eq!(scan.problems().len(), 1, "{:?}", scan.problems());
    assert!(scan.problems()[0].path.ends_with(&denied_dir));

    // A QoS directory that vanished is no problem either.
    std::fs::remove_dir_all(s.0.join("kubepods/burstable"))?;
    let scan = KubeletCgroups::scan_with(&s.0, inode)?;
    assert!(scan.is_empty() && scan.problems().is_empty(), "{scan:?}");
    Ok(())
}

#[test]
fn a_uid_found_twice_is_kept_once_and_reported() -> TestResult {
    let s = Scratch::new("twice")?;
    s.mkdir(pod_cgroup_path(
        UID,
        QosClass::Burstable,
        CgroupDriver::Cgroupfs,
    ))?;
    s.mkdir(pod_cgroup_path(
        UID,
        QosClass::BestEffort,
        CgroupDriver::Cgroupfs,
    ))?;
    let scan = KubeletCgroups::scan_with(&s.0, inode)?;
    assert_eq!(scan.len(), 1);
    assert_eq!(scan.problems().len(), 1, "{:?}", scan.problems());
    Ok(())
}
