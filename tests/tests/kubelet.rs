//! Kubelet-style pod cgroups on the real cgroup v2 tree: pods of both cgroup drivers and all three
//! QoS classes, their processes in container cgroups as under a CRI runtime, found by Keel's scanner
//! (`keel::pods::kubelet`) with exactly the cgroup ids the kernel reports; gone once kubelet would
//! have removed them; and the inotify watch that wakes the pod sync when they come and go. No keel
//! process runs: the library is tested on what the kernel shows.
//!
//! The kernel's id of a cgroup is read two ways: `stat`'s inode number and the file handle of
//! `name_to_handle_at` (what `bpf_get_current_cgroup_id` returns; systemd and bpftool read it so).
//!
//! Subnet indices 191 and 192 belong to this file.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use keel::pods::kubelet::{self as scanner, KubeletCgroups};
use keel::pods::watch::KubepodsWatch;
use keel_tests::{host, test_uid, CgroupDriver, KubeletCgroup, Pod, PodNet, QosClass};

const PREFIX: &str = "ktkube";

/// The cgroup id the kernel gives `path`, from its file handle (cgroup v2: the kernfs node id).
fn kernel_cgroup_id(path: &Path) -> Result<u64> {
    #[repr(C)]
    struct Handle {
        handle_bytes: u32,
        handle_type: i32,
        f_handle: [u8; 8],
    }
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut handle = Handle {
        handle_bytes: 8,
        handle_type: 0,
        f_handle: [0; 8],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `c_path` is NUL-terminated; `handle` is a `struct file_handle` header followed by the
    // 8 bytes `handle_bytes` announces.
    let rc = unsafe {
        libc::name_to_handle_at(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            (&raw mut handle).cast::<libc::file_handle>(),
            &mut mount_id,
            0,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("name_to_handle_at {}", path.display()));
    }
    ensure!(
        handle.handle_bytes == 8,
        "cgroup file handle of {} has {} bytes, not 8",
        path.display(),
        handle.handle_bytes
    );
    Ok(u64::from_ne_bytes(handle.f_handle))
}

/// The cgroup v2 path of process `pid`, from `/proc/<pid>/cgroup` (`0::<path>`).
fn proc_cgroup(pid: u32) -> Result<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .with_context(|| format!("no cgroup v2 line in /proc/{pid}/cgroup: {text:?}"))?;
    Ok(PathBuf::from(line))
}

fn driver_name(d: CgroupDriver) -> &'static str {
    match d {
        CgroupDriver::Systemd => "systemd",
        CgroupDriver::Cgroupfs => "cgroupfs",
    }
}

/// What the scanner should find for `pod`: (cgroup path, QoS class, driver) in the scanner's terms.
fn expected(pod: &Pod) -> Result<(String, (PathBuf, String, String))> {
    let k = pod
        .kubelet
        .as_ref()
        .with_context(|| format!("{} is no kubelet-style pod", pod.full_name()))?;
    Ok((
        k.uid.clone(),
        (
            pod.cgroup.clone(),
            k.qos.as_str().to_string(),
            driver_name(k.driver).to_string(),
        ),
    ))
}

/// Scans `net`'s cgroup root and checks that exactly `pods` are found, each with the kernel's id.
fn check_scan(net: &PodNet, pods: &[Pod]) -> Result<KubeletCgroups> {
    let scan = KubeletCgroups::scan(&net.cgroup_root())
        .with_context(|| format!("scanning {}", net.cgroup_root().display()))?;
    ensure!(
        scan.problems().is_empty(),
        "scan problems: {:?}",
        scan.problems()
    );
    let want: BTreeMap<_, _> = pods.iter().map(expected).collect::<Result<_>>()?;
    let got: BTreeMap<_, _> = scan
        .pods()
        .iter()
        .map(|(uid, p)| {
            (
                uid.clone(),
                (
                    p.path.clone(),
                    p.qos.as_str().to_string(),
                    p.driver.as_str().to_string(),
                ),
            )
        })
        .collect();
    ensure!(
        got == want,
        "scanner found\n{got:#?}\nbut the pods are\n{want:#?}"
    );
    for pod in pods {
        let (uid, _) = expected(pod)?;
        let found = scan.get(&uid).context("pod not found")?;
        let by_handle = kernel_cgroup_id(&pod.cgroup)?;
        let by_stat = std::fs::metadata(&pod.cgroup)?.ino();
        ensure!(
            found.cgroup_id == by_handle && found.cgroup_id == by_stat,
            "{}: scanner id {} but the kernel says {by_handle} (handle) / {by_stat} (stat)",
            pod.full_name(),
            found.cgroup_id
        );
        // The pod's processes are one level down: the kernel programs reach the pod's id as an
        // ancestor of theirs, never as their own.
        ensure!(
            kernel_cgroup_id(&pod.process_cgroup)? != found.cgroup_id,
            "{}: container cgroup has the pod's id",
            pod.full_name()
        );
    }
    Ok(scan)
}

#[test]
fn scanner_finds_exactly_the_kubelet_pods_with_kernel_cgroup_ids() -> Result<()> {
    host::require_privileged_env()?;
    let mut net = PodNet::new(PREFIX, 191)?;
    let mut kube_pods = Vec::new();
    let mut suffix = 10;
    for driver in CgroupDriver::ALL {
        for qos in QosClass::ALL {
            let name = format!("{}-{}", driver_name(driver), qos.as_str().to_lowercase());
            let uid = test_uid(&format!("default/{name}"));
            let pod = net.add_pod_kubelet(
                "default",
                &name,
                suffix,
                KubeletCgroup::new(&uid, qos, driver),
            )?;
            suffix += 1;
            kube_pods.push(pod);
        }
    }
    // A pod in file mode's `<root>/<namespace>/<pod>` layout is no kubelet pod.
    let legacy = net.add_pod("default", "legacy", 30)?;

    // Each pod's process runs in its container cgroup, as under containerd.
    let cg2 = host::cgroup2_mount()?;
    let mut procs = Vec::new();
    for pod in kube_pods.iter().chain([&legacy]) {
        let proc = pod.spawn(Path::new("/bin/sleep"), &["60"], "sleep")?;
        let want = Path::new("/").join(pod.process_cgroup.strip_prefix(&cg2)?);
        let got = proc_cgroup(proc.pid())?;
        ensure!(
            got == want,
            "{}: process in {} instead of {}",
            pod.full_name(),
            got.display(),
            want.display()
        );
        procs.push(proc);
    }
    for pod in &kube_pods {
        ensure!(
            pod.process_cgroup.parent() == Some(pod.cgroup.as_path()),
            "{}: container cgroup {} is not directly below the pod's {}",
            pod.full_name(),
            pod.process_cgroup.display(),
            pod.cgroup.display()
        );
    }

    let scan = check_scan(&net, &kube_pods)?;
    let mut roots: Vec<_> = scan
        .roots()
        .iter()
        .map(|r| (r.path().to_path_buf(), r.driver().as_str()))
        .collect();
    roots.sort();
    ensure!(
        roots
            == vec![
                (net.cgroup_root().join("kubepods"), "cgroupfs"),
                (net.cgroup_root().join("kubepods.slice"), "systemd"),
            ],
        "kubepods roots: {roots:?}"
    );
    // The scanner's own path grammar agrees with the harness's, pod by pod.
    for pod in &kube_pods {
        let k = pod.kubelet.as_ref().context("kubelet pod")?;
        let qos = keel::policy::model::QosClass::parse(k.qos.as_str()).context("qos")?;
        let driver = match k.driver {
            CgroupDriver::Systemd => scanner::CgroupDriver::Systemd,
            CgroupDriver::Cgroupfs => scanner::CgroupDriver::Cgroupfs,
        };
        ensure!(
            net.cgroup_root()
                .join(scanner::pod_cgroup_path(&k.uid, qos, driver))
                == pod.cgroup,
            "{}: grammar disagrees",
            pod.full_name()
        );
    }

    // Pods end one by one (processes killed, cgroups removed): each scan finds exactly the rest.
    drop(procs);
    let mut left = kube_pods.clone();
    // Interleave drivers and classes so every kind of removal is seen with others still present.
    let order = [3, 0, 4, 1, 5, 2];
    for i in order {
        let pod = &kube_pods[i];
        net.remove_pod(&pod.namespace, &pod.name)?;
        ensure!(
            !pod.cgroup.exists() && !Path::new("/run/netns").join(&pod.netns).exists(),
            "{} not fully removed",
            pod.full_name()
        );
        left.retain(|p| p.name != pod.name);
        check_scan(&net, &left)?;
    }
    let scan = KubeletCgroups::scan(&net.cgroup_root())?;
    if !scan.is_empty() {
        bail!("pods left after all were removed: {:?}", scan.pods());
    }
    net.teardown()
}

/// Waits up to 2 s for `watch` to report a change.
async fn wakes(watch: &mut KubepodsWatch) -> Result<()> {
    tokio::time::timeout(Duration::from_secs(2), watch.changed())
        .await
        .context("no wake-up within 2 s")?
        .context("inotify read")
}

#[test]
fn watch_wakes_when_kubelet_pod_cgroups_come_and_go() -> Result<()> {
    host::require_privileged_env()?;
    let mut net = PodNet::new(PREFIX, 192)?;
    // What kubelet makes at start-up, before any pod: the kubepods and QoS cgroups.
    let combos: Vec<(CgroupDriver, QosClass)> = CgroupDriver::ALL
        .into_iter()
        .flat_map(|d| QosClass::ALL.map(|q| (d, q)))
        .collect();
    for (driver, qos) in &combos {
        let pod_path = KubeletCgroup::new(&test_uid("startup"), *qos, *driver).pod_path();
        let qos_dir = pod_path.parent().context("pod path has a parent")?;
        net.ensure_cgroup(&net.cgroup_root().join(qos_dir))?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut watch = KubepodsWatch::new()?;
        // Watch first, then scan: a pod made in between is seen by the scan.
        let scan = KubeletCgroups::scan(&net.cgroup_root())?;
        watch.watch(scan.roots())?;
        ensure!(
            watch.watched().count() == 6,
            "want 2 kubepods and 4 QoS cgroups watched, got {:?}",
            watch.watched().collect::<Vec<_>>()
        );
        check_scan(&net, &[])?;
        for (i, (driver, qos)) in combos.iter().enumerate() {
            let name = format!("w-{}-{}", driver_name(*driver), qos.as_str().to_lowercase());
            let uid = test_uid(&format!("default/{name}"));
            let suffix = 10 + u8::try_from(i)?;
            let pod = net.add_pod_kubelet(
                "default",
                &name,
                suffix,
                KubeletCgroup::new(&uid, *qos, *driver),
            )?;
            wakes(&mut watch)
                .await
                .with_context(|| format!("{} made", pod.full_name()))?;
            check_scan(&net, std::slice::from_ref(&pod))?;
            net.remove_pod("default", &name)?;
            wakes(&mut watch)
                .await
                .with_context(|| format!("{} removed", pod.full_name()))?;
            check_scan(&net, &[])?;
        }
        anyhow::Ok(())
    })?;
    net.teardown()
}
