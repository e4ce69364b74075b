//! Where kubelet puts each pod's cgroup (cgroup v2), and a scanner that finds them.
//!
//! Kubelet (with `--cgroups-per-qos`, the default) makes one "node allocatable" cgroup named `kubepods`
//! under its `--cgroup-root`, one child per QoS class except Guaranteed, and one cgroup per pod named
//! after the pod's UID; the container runtime then makes one cgroup per container below the pod's. The
//! two cgroup drivers spell the same tree differently (kubelet's `CgroupName.ToSystemd` and
//! `ToCgroupfs`):
//!
//! | QoS class  | `systemd` driver                                                              | `cgroupfs` driver             |
//! |------------|-------------------------------------------------------------------------------|-------------------------------|
//! | Guaranteed | `kubepods.slice/kubepods-pod<uid_>.slice`                                     | `kubepods/pod<uid>`           |
//! | Burstable  | `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice`  | `kubepods/burstable/pod<uid>` |
//! | BestEffort | `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice`| `kubepods/besteffort/pod<uid>`|
//!
//! `<uid_>` is the UID with every `-` written `_`: systemd reads `-` in a slice name as a step down the
//! hierarchy, and `_` never occurs in a UID, so the mapping reverses. A systemd slice's name repeats
//! all its ancestors' names, so with `--cgroup-root=/kubelet.slice` (kind, some distributions) the
//! tree is `kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/...`: the scanner
//! takes the prefix from the `kubepods` slice it found rather than assuming `kubepods-`.
//!
//! How far the scanner looks for a `kubepods` cgroup below the root it is given (Keel's `--cgroup`,
//! normally the cgroup2 mount `/sys/fs/cgroup`): the root itself, its children, and exactly one
//! probe per child for a nested one (`<child>/kubepods`, or `<X>.slice/<X>-kubepods.slice`). That
//! covers `--cgroup-root` `/` (the default) and one level below it (`/kubelet`, `/kubelet.slice`),
//! and a root that is itself a cgroup namespace's root (a containerised node such as kind's, where
//! `kubelet.slice` is a direct child). Deeper `--cgroup-root`s are not found; point `--cgroup` at
//! their parent instead. A root *inside* the kubepods tree (a QoS or pod cgroup) finds nothing.
//!
//! Pod UIDs: the API server gives every pod a lower-case UUID; kubelet gives a static pod (read
//! from a manifest file) the 32 hex digits of an MD5 hash instead, and its mirror pod in the API
//! carries that hash in the annotation `kubernetes.io/config.mirror` ([`cgroup_uid`]).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use crate::policy::model::{Pod, QosClass};
use crate::policy::validate::is_pod_uid;

/// Annotation on a static pod's mirror pod: the UID kubelet uses for the static pod (and its cgroup).
pub const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Name of kubelet's node-allocatable cgroup (cgroupfs driver; the systemd driver adds `.slice`).
const KUBEPODS: &str = "kubepods";
const SLICE: &str = ".slice";
const POD_PREFIX: &str = "pod";

/// How kubelet (and the runtime) name cgroups: kubelet's `--cgroup-driver` / `cgroupDriver`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CgroupDriver {
    /// systemd slices: `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice`.
    Systemd,
    /// Plain directories: `kubepods/burstable/pod<uid>`.
    Cgroupfs,
}

impl CgroupDriver {
    /// Both drivers.
    pub const ALL: [CgroupDriver; 2] = [CgroupDriver::Systemd, CgroupDriver::Cgroupfs];

    /// Kubelet's spelling (`systemd`, `cgroupfs`).
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupDriver::Systemd => "systemd",
            CgroupDriver::Cgroupfs => "cgroupfs",
        }
    }
}

impl std::fmt::Display for CgroupDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The lower-case path component kubelet uses for a QoS class's cgroup (none for Guaranteed).
fn qos_component(qos: QosClass) -> Option<&'static str> {
    match qos {
        QosClass::Guaranteed => None,
        QosClass::Burstable => Some("burstable"),
        QosClass::BestEffort => Some("besteffort"),
    }
}

/// The pod's cgroup path relative to kubelet's `--cgroup-root` when that is `/` (the default), e.g.
/// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice`. `uid` is taken as
/// given (callers pass a validated UID).
pub fn pod_cgroup_path(uid: &str, qos: QosClass, driver: CgroupDriver) -> PathBuf {
    let kubepods = match driver {
        CgroupDriver::Systemd => format!("{KUBEPODS}{SLICE}"),
        CgroupDriver::Cgroupfs => KUBEPODS.to_string(),
    };
    KubepodsRoot::new(PathBuf::from(kubepods), driver).pod_dir(uid, qos)
}

/// The UID kubelet named `pod`'s cgroup after: for a static pod's mirror pod the hash in
/// [`MIRROR_POD_ANNOTATION`], otherwise `metadata.uid`. `None` if that is absent or not UID-shaped.
pub fn cgroup_uid(pod: &Pod) -> Option<&str> {
    match pod.annotations.get(MIRROR_POD_ANNOTATION) {
        Some(hash) => Some(hash.as_str()),
        None => pod.uid.as_deref(),
    }
    .filter(|u| is_pod_uid(u))
}

/// The pod UID in a pod cgroup's directory name, of either driver (`pod<uid>`, or
/// `<parent>-pod<uid_>.slice` for any parent slice); `None` unless the name is a pod cgroup's and
/// the UID has a UID's shape (see [`crate::policy::validate::is_pod_uid`]).
pub fn parse_pod_dir(name: &str) -> Option<(String, CgroupDriver)> {
    if let Some(stem) = name.strip_suffix(SLICE) {
        // The last `-` ends the parent's name; a UID in a slice name has no `-` left.
        let last = stem.rsplit('-').next()?;
        let uid = last.strip_prefix(POD_PREFIX)?.replace('_', "-");
        return is_pod_uid(&uid).then_some((uid, CgroupDriver::Systemd));
    }
    let uid = name.strip_prefix(POD_PREFIX)?;
    is_pod_uid(uid).then(|| (uid.to_string(), CgroupDriver::Cgroupfs))
}

/// One kubelet `kubepods` cgroup found under the scanned root.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct KubepodsRoot {
    path: PathBuf,
    driver: CgroupDriver,
}

impl KubepodsRoot {
    fn new(path: PathBuf, driver: CgroupDriver) -> Self {
        Self { path, driver }
    }

    /// The `kubepods` (or `...kubepods.slice`) directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The driver its name shows.
    pub fn driver(&self) -> CgroupDriver {
        self.driver
    }

    /// The slice name without `.slice` (systemd): the prefix of every slice below it.
    fn stem(&self) -> String {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        name.strip_suffix(SLICE).unwrap_or(&name).to_string()
    }

    /// The cgroup that holds pods of class `qos` (the kubepods cgroup itself for Guaranteed).
    pub fn qos_dir(&self, qos: QosClass) -> PathBuf {
        match (qos_component(qos), self.driver) {
            (None, _) => self.path.clone(),
            (Some(q), CgroupDriver::Cgroupfs) => self.path.join(q),
            (Some(q), CgroupDriver::Systemd) => {
                self.path.join(format!("{}-{q}{SLICE}", self.stem()))
            }
        }
    }

    /// Where kubelet puts the cgroup of pod `uid` of class `qos`.
    pub fn pod_dir(&self, uid: &str, qos: QosClass) -> PathBuf {
        self.qos_dir(qos).join(self.pod_dir_name(uid, qos))
    }

    fn pod_dir_name(&self, uid: &str, qos: QosClass) -> String {
        match self.driver {
            CgroupDriver::Cgroupfs => format!("{POD_PREFIX}{uid}"),
            CgroupDriver::Systemd => format!(
                "{}-{POD_PREFIX}{}{SLICE}",
                self.qos_stem(qos),
                uid.replace('-', "_")
            ),
        }
    }

    /// systemd: the name (without `.slice`) of the QoS slice, the prefix of its pods' slices.
    fn qos_stem(&self, qos: QosClass) -> String {
        match qos_component(qos) {
            None => self.stem(),
            Some(q) => format!("{}-{q}", self.stem()),
        }
    }

    /// The pod UID if `name` is the directory of a pod of class `qos` directly in
    /// [`KubepodsRoot::qos_dir`].
    fn pod_uid_in(&self, qos: QosClass, name: &str) -> Option<String> {
        let (uid, driver) = parse_pod_dir(name)?;
        // Exact form only: a `kubepods-burstable-pod...` slice directly under `kubepods.slice` is
        // not where kubelet puts a pod, so it is not one.
        (driver == self.driver && name == self.pod_dir_name(&uid, qos)).then_some(uid)
    }

    /// The QoS class whose cgroup is named `name` inside the kubepods cgroup (not Guaranteed).
    fn qos_of_child(&self, name: &str) -> Option<QosClass> {
        [QosClass::Burstable, QosClass::BestEffort]
            .into_iter()
            .find(|&q| self.qos_dir(q).file_name() == Some(std::ffi::OsStr::new(name)))
    }
}

/// The kubepods driver a directory name shows, if it names one: `kubepods` (cgroupfs),
/// `kubepods.slice` or `<parents>-kubepods.slice` (systemd).
fn kubepods_driver(name: &str) -> Option<CgroupDriver> {
    if name == KUBEPODS {
        return Some(CgroupDriver::Cgroupfs);
    }
    let stem = name.strip_suffix(SLICE)?;
    (stem == KUBEPODS || stem.ends_with(&format!("-{KUBEPODS}"))).then_some(CgroupDriver::Systemd)
}

/// One pod cgroup found by the scanner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroup {
    /// The pod's cgroup directory (its containers' cgroups are below it).
    pub path: PathBuf,
    /// Its cgroup v2 id, what the kernel programs see as the pod's (ancestor) cgroup.
    pub cgroup_id: u64,
    /// The QoS class its place in the tree shows.
    pub qos: QosClass,
    /// The driver its name shows.
    pub driver: CgroupDriver,
}

/// Something the scanner could not read (other than a cgroup that vanished, which is normal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanProblem {
    /// The directory concerned.
    pub path: PathBuf,
    /// What went wrong.
    pub reason: String,
}

/// The scan could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The root is missing, unreadable or not on cgroup v2.
    #[error("cgroup root {path}: {source}")]
    Root {
        /// The root given to the scan.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// Every pod cgroup under kubelet's hierarchies below one root, by pod UID.
#[derive(Debug, Clone, Default)]
pub struct KubeletCgroups {
    pods: BTreeMap<String, PodCgroup>,
    roots: Vec<KubepodsRoot>,
    /// Cgroup ids of the kubepods and QoS cgroups: the parents of pod cgroups.
    parents: BTreeSet<u64>,
    problems: Vec<ScanProblem>,
}

impl KubeletCgroups {
    /// Scans `root` (Keel's cgroup root, on cgroup v2) for kubelet pod cgroups of both drivers and
    /// all QoS classes, with their cgroup ids (see the module docs for how far it looks).
    ///
    /// Cost: one `readdir` of `root`, a `stat` per child of `root`, one `readdir` per kubepods and
    /// QoS cgroup, and a `statfs` + `stat` per pod. Cgroups that vanish during the scan are left out;
    /// other unreadable ones are listed in [`KubeletCgroups::problems`].
    pub fn scan(root: &Path) -> Result<Self, Error> {
        crate::ebpf::cgroup_id(root).map_err(|source| Error::Root {
            path: root.to_path_buf(),
            source,
        })?;
        Self::scan_with(root, crate::ebpf::cgroup_id)
    }

    /// [`KubeletCgroups::scan`] with the cgroup id of a pod directory taken from `id_of` (tests walk
    /// plain directories, where the inode number stands in for the id).
    pub fn scan_with(
        root: &Path,
        mut id_of: impl FnMut(&Path) -> io::Result<u64>,
    ) -> Result<Self, Error> {
        let roots = find_kubepods_roots(root).map_err(|source| Error::Root {
            path: root.to_path_buf(),
            source,
        })?;
        let mut out = KubeletCgroups {
            roots,
            ..KubeletCgroups::default()
        };
        for kubepods in out.roots.clone() {
            out.scan_kubepods(&kubepods, &mut id_of);
        }
        Ok(out)
    }

    fn scan_kubepods(
        &mut self,
        kubepods: &KubepodsRoot,
        id_of: &mut impl FnMut(&Path) -> io::Result<u64>,
    ) {
        match id_of(kubepods.path()) {
            Ok(id) => {
                self.parents.insert(id);
            }
            Err(e) => self.problem(kubepods.path(), &e),
        }
        let mut qos_dirs = Vec::new();
        for name in self.subdirs(kubepods.path()) {
            if let Some(qos) = kubepods.qos_of_child(&name) {
                let dir = kubepods.path().join(&name);
                match id_of(&dir) {
                    Ok(id) => {
                        self.parents.insert(id);
                    }
                    Err(e) => self.problem(&dir, &e),
                }
                qos_dirs.push((qos, dir));
            } else if let Some(uid) = kubepods.pod_uid_in(QosClass::Guaranteed, &name) {
                let path = kubepods.path().join(&name);
                self.add(uid, path, QosClass::Guaranteed, kubepods.driver(), id_of);
            }
        }
        qos_dirs.sort();
        for (qos, dir) in qos_dirs {
            for name in self.subdirs(&dir) {
                if let Some(uid) = kubepods.pod_uid_in(qos, &name) {
                    self.add(uid, dir.join(&name), qos, kubepods.driver(), id_of);
                }
            }
        }
    }

    /// Names of the subdirectories of `dir`, sorted; nothing if it vanished.
    fn subdirs(&mut self, dir: &Path) -> Vec<String> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                self.problem(dir, &e);
                return Vec::new();
            }
        };
        let mut names: Vec<String> = entries
            .flatten()
            // cgroupfs reports d_type, so this costs no stat; control files are not directories.
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }

    fn add(
        &mut self,
        uid: String,
        path: PathBuf,
        qos: QosClass,
        driver: CgroupDriver,
        id_of: &mut impl FnMut(&Path) -> io::Result<u64>,
    ) {
        let cgroup_id = match id_of(&path) {
            Ok(id) => id,
            Err(e) => {
                self.problem(&path, &e);
                return;
            }
        };
        if let Some(first) = self.pods.get(&uid) {
            let reason = format!(
                "pod UID {uid} also has the cgroup {}; keeping that one",
                first.path.display()
            );
            self.problems.push(ScanProblem { path, reason });
            return;
        }
        self.pods.insert(
            uid,
            PodCgroup {
                path,
                cgroup_id,
                qos,
                driver,
            },
        );
    }

    /// Records `e` for `path` unless the cgroup simply went away (pods come and go).
    fn problem(&mut self, path: &Path, e: &io::Error) {
        if e.kind() != io::ErrorKind::NotFound {
            self.problems.push(ScanProblem {
                path: path.to_path_buf(),
                reason: e.to_string(),
            });
        }
    }

    /// The cgroup of the pod with UID `uid` (see [`cgroup_uid`] for which UID a pod's cgroup has).
    pub fn get(&self, uid: &str) -> Option<&PodCgroup> {
        self.pods.get(uid)
    }

    /// Every pod cgroup found, by UID.
    pub fn pods(&self) -> &BTreeMap<String, PodCgroup> {
        &self.pods
    }

    /// Cgroup ids of the kubepods and QoS cgroups, whose child cgroups are pods.
    pub fn parent_ids(&self) -> &BTreeSet<u64> {
        &self.parents
    }

    /// The kubepods cgroups found (empty: no kubelet hierarchy below the root).
    pub fn roots(&self) -> &[KubepodsRoot] {
        &self.roots
    }

    /// Directories that could not be read, and UIDs found twice; empty on a healthy node.
    pub fn problems(&self) -> &[ScanProblem] {
        &self.problems
    }

    /// Number of pod cgroups found.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// Whether no pod cgroup was found.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }
}

/// The kubepods cgroups at or below `root`, sorted (see the module docs for how far it looks).
/// Fails only if `root` itself cannot be read.
pub fn find_kubepods_roots(root: &Path) -> io::Result<Vec<KubepodsRoot>> {
    let mut found = Vec::new();
    let name_of = |p: &Path| p.file_name().and_then(|n| n.to_str()).map(str::to_string);
    if let Some(driver) = name_of(root).as_deref().and_then(kubepods_driver) {
        found.push(KubepodsRoot::new(root.to_path_buf(), driver));
        return Ok(found);
    }
    for entry in std::fs::read_dir(root)?.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if let Some(driver) = kubepods_driver(&name) {
            found.push(KubepodsRoot::new(entry.path(), driver));
            continue;
        }
        // One probe per child for a kubelet `--cgroup-root` one level down.
        let (nested, driver) = match name.strip_suffix(SLICE) {
            Some(stem) => (format!("{stem}-{KUBEPODS}{SLICE}"), CgroupDriver::Systemd),
            None => (KUBEPODS.to_string(), CgroupDriver::Cgroupfs),
        };
        let nested = entry.path().join(nested);
        if std::fs::symlink_metadata(&nested).is_ok_and(|m| m.is_dir()) {
            found.push(KubepodsRoot::new(nested, driver));
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
#[path = "kubelet_tests.rs"]
mod tests;
