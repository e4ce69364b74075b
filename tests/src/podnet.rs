//! [`PodNet`]: real "pods" on one machine — network namespaces on a bridge, each in its own cgroup v2 —
//! torn down by an RAII guard, also when a test panics.
//!
//! Layout for `PodNet::new("kt", 12)` (the *id* is `kt-12`; the subnet index `12` picks everything else):
//!
//! ```text
//! host netns   bridge kb12  10.244.12.1/24  (keel listens here on :15001)
//!              blackhole 10.96.0.0/16 metric 40012   (service VIPs never leave the host)
//!   pod netns  kt-12-<namespace>-<pod>: lo up, eth0 10.244.12.<s>/24, NO default route
//!              veth kv12h<s> (host side, in the bridge) <-> eth0 (pod side)
//! cgroup v2    <cg2>/kt-12/pods/<namespace>/<pod>    the root Keel attaches to is <cg2>/kt-12/pods
//!              <cg2>/kt-12/pods/kubepods.slice/.../<pod>/<container>   kubelet-style pods (add_pod_kubelet)
//!              <cg2>/kt-12/system                     where keel itself runs
//!              <cg2>/kt-12/outside/<namespace>/<pod>  pods outside the root (negative tests)
//! ```
//!
//! A dual-stack network ([`PodNet::new_dual_stack`]) adds IPv6 the same way: the bridge gets
//! `fd00:10:244:<index>::1/64`, each pod `fd00:10:244:<index>::<s>/64` on `eth0` (both `nodad`, so
//! they are usable at once; `<index>` and `<s>` are written in decimal digits), and
//! `fd00:10:96::/112` (the IPv6 service CIDR, [`SERVICE_CIDR_V6`]) is blackholed with the same
//! metric. Pods get no IPv6 default route either.
//!
//! Invariants that keep the machine safe and the cleanup exact:
//! - Traffic never leaves the machine: pods have no default route and the service CIDR is blackholed on
//!   the host, so a connect() that Keel does not redirect fails instead of escaping.
//! - One live owner per subnet index, enforced by an `flock` on `/run/keel-podnet/subnet-<n>.lock` (held
//!   for the guard's life, released by the kernel if the process dies). Anything named after index `n`
//!   whose lock is free is a leftover of a crashed run and may be deleted.
//! - Everything the guard creates is named from `(prefix, n)` or tagged with the link alias
//!   `keel-podnet:<prefix>-<n>`, and our blackhole route has its own metric `40000 + n`, so cleanup never
//!   touches what another run (or the host) owns, and a route someone else added is never removed.
//! - No sysctl is changed: everything is on one bridge, so `ip_forward` stays as it was. What keel
//!   itself changes on the host when it runs (`net.ipv4.tcp_migrate_req`, a bpffs it mounts at
//!   `/sys/fs/bpf`, its `keel` pin directory) is put back as the process found it at teardown.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use serde_json::Value;

use crate::host::{self, run};
use crate::kubelet::{CgroupDriver, KubeletCgroup, QosClass};
use crate::process::Proc;

/// Default Kubernetes service CIDR; blackholed on the host while a [`PodNet`] lives.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// IPv6 service CIDR of a dual-stack network; blackholed on the host while it lives.
pub const SERVICE_CIDR_V6: &str = "fd00:10:96::/112";
/// Port Keel's redirect listener uses on the bridge IP.
pub const PROXY_PORT: u16 = 15001;

const LOCK_DIR: &str = "/run/keel-podnet";
const ROUTE_METRIC_BASE: u32 = 40_000;
const LINK_ALIAS_PREFIX: &str = "keel-podnet:";
/// How long teardown waits for killed processes to leave their cgroups.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// A test pod network. See the module docs for the layout. Dropping it removes everything it made.
#[derive(Debug)]
pub struct PodNet {
    prefix: String,
    index: u8,
    service_cidr: String,
    /// IPv6 too (see the module docs).
    dual_stack: bool,
    cgroup2: PathBuf,
    work_dir: PathBuf,
    pods: Vec<Pod>,
    torn_down: bool,
    /// Held for the guard's whole life; see the module invariants.
    _lock: Flock<File>,
}

/// One pod: a network namespace with `eth0` on the bridge, and a cgroup. Plain data; cheap to clone.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Kubernetes namespace (also the middle level of the cgroup path).
    pub namespace: String,
    /// Pod name (the cgroup leaf and the `Pod` resource name in configs).
    pub name: String,
    /// `status.podIP`.
    pub ip: Ipv4Addr,
    /// The pod's IPv6 address on a dual-stack network (`status.podIPs[1]`).
    pub ip6: Option<Ipv6Addr>,
    /// Network namespace name (`ip netns`), `<prefix>-<n>-<namespace>-<name>`.
    pub netns: String,
    /// The pod's cgroup directory (what Keel maps to the pod).
    pub cgroup: PathBuf,
    /// Where the pod's processes run: [`Pod::cgroup`] itself, or for a kubelet-style pod its
    /// container's cgroup below it, as a container runtime does.
    pub process_cgroup: PathBuf,
    /// Kubelet-style pods: the UID, QoS class and driver their cgroups are named after.
    pub kubelet: Option<KubeletCgroup>,
    /// Host end of the veth pair (pod end is `eth0`).
    pub host_veth: String,
    /// Whether the cgroup is under the PodNet's capture root.
    pub under_root: bool,
    log_dir: PathBuf,
}

impl PodNet {
    /// Builds the bridge, blackhole route and cgroup skeleton for subnet `10.244.<index>.0/24`, after
    /// removing any leftovers of an earlier crashed run that used the same index.
    ///
    /// `prefix` names the namespaces and cgroups (short, `[a-z0-9-]`); `index` must be unique among
    /// concurrently running networks on this host (tests use one per test).
    pub fn new(prefix: &str, index: u8) -> Result<PodNet> {
        PodNet::new_with_service_cidr(prefix, index, SERVICE_CIDR)
    }

    /// Like [`PodNet::new`], with IPv6 as well (see the module docs): the bridge, every pod and the
    /// blackholed [`SERVICE_CIDR_V6`]. IPv4 is exactly as [`PodNet::new`] makes it.
    pub fn new_dual_stack(prefix: &str, index: u8) -> Result<PodNet> {
        PodNet::build(prefix, index, SERVICE_CIDR, true)
    }

    /// Like [`PodNet::new`], blackholing `service_cidr` instead of [`SERVICE_CIDR`].
    pub fn new_with_service_cidr(prefix: &str, index: u8, service_cidr: &str) -> Result<PodNet> {
        PodNet::build(prefix, index, service_cidr, false)
    }

    fn build(prefix: &str, index: u8, service_cidr: &str, dual_stack: bool) -> Result<PodNet> {
        host::require_privileged_env()?;
        ensure!(
            is_dns_label(prefix) && prefix.len() <= 20,
            "PodNet prefix {prefix:?} must be a short DNS label ([a-z0-9-], at most 20 chars)"
        );
        ensure!(
            index < 255,
            "subnet index {index} is out of range (0..=254)"
        );
        let cgroup2 = host::cgroup2_mount()?;
        // Before any keel of this process runs.
        let _ = HOST_BEFORE.get_or_init(HostBefore::read);
        let (lock, previous_owner) = lock_index(index, prefix)?;

        // Whoever held this index before us is gone (we got the lock): remove what they left.
        let mut stale_prefixes = vec![prefix.to_string()];
        if let Some(p) = previous_owner.filter(|p| p != prefix && is_dns_label(p)) {
            stale_prefixes.push(p);
        }
        for p in &stale_prefixes {
            let problems = clean_index(&cgroup2, p, index);
            if !problems.is_empty() {
                bail!(
                    "could not remove leftovers of an earlier run on subnet index {index}: {}",
                    problems.join("; ")
                );
            }
        }

        let work_dir = std::env::temp_dir().join(format!("keel-podnet-{prefix}-{index}"));
        let _ = std::fs::remove_dir_all(&work_dir);
        std::fs::create_dir_all(&work_dir)
            .with_context(|| format!("creating work dir {}", work_dir.display()))?;

        let mut net = PodNet {
            prefix: prefix.to_string(),
            index,
            service_cidr: service_cidr.to_string(),
            dual_stack,
            cgroup2,
            work_dir,
            pods: Vec::new(),
            torn_down: false,
            _lock: lock,
        };
        // From here on, a failure drops `net`, which removes whatever was already built.
        net.build_host_side()?;
        Ok(net)
    }

    fn build_host_side(&mut self) -> Result<()> {
        self.check_subnet_free()?;
        let bridge = self.bridge();
        let alias = self.link_alias();
        // STP off (the default) and forward_delay 0: ports forward as soon as they are up.
        // The MAC is set explicitly: a bridge whose address was not set by the user takes the
        // lowest MAC among its ports, so it would change as pods come and go, and every pod's ARP
        // entry for the gateway (keel's address) would point at a MAC that no longer exists until
        // the entry expires (connects hang for up to ~30 s).
        let mac = self.bridge_mac();
        run(
            "ip",
            &[
                "link",
                "add",
                &bridge,
                "address",
                &mac,
                "type",
                "bridge",
                "forward_delay",
                "0",
            ],
        )?;
        run("ip", &["link", "set", &bridge, "alias", &alias])?;
        let cidr = format!("{}/24", self.bridge_ip());
        run("ip", &["addr", "add", &cidr, "dev", &bridge])?;
        run("ip", &["link", "set", &bridge, "up"])?;

        // Our own blackhole with our own metric: `replace` makes it idempotent, and deleting exactly
        // this (dst, metric) later never removes a route that the host or another run added.
        let metric = self.route_metric().to_string();
        run(
            "ip",
            &[
                "route",
                "replace",
                "blackhole",
                &self.service_cidr,
                "metric",
                &metric,
            ],
        )?;

        if self.dual_stack {
            let cidr6 = format!("{}/64", self.bridge_ip6());
            run(
                "ip",
                &["-6", "addr", "add", &cidr6, "dev", &bridge, "nodad"],
            )?;
            run(
                "ip",
                &[
                    "-6",
                    "route",
                    "replace",
                    "blackhole",
                    SERVICE_CIDR_V6,
                    "metric",
                    &metric,
                ],
            )?;
        }

        for dir in [self.cgroup_root(), self.system_cgroup()] {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating cgroup {}", dir.display()))?;
        }
        Ok(())
    }

    /// Refuses to build on a subnet some other interface already uses (routing would be ambiguous).
    fn check_subnet_free(&self) -> Result<()> {
        if self.dual_stack {
            let addrs = ip_json(&["-6", "addr", "show"])?;
            let net6 = self.pod_ip6(0).segments();
            for link in addrs.as_array().into_iter().flatten() {
                for a in link["addr_info"].as_array().into_iter().flatten() {
                    let local = a["local"].as_str().and_then(|l| l.parse::<Ipv6Addr>().ok());
                    if local.is_some_and(|l| l.segments()[..4] == net6[..4]) {
                        bail!(
                            "subnet {} is already in use on this host ({} has {}); pick another \
                             subnet index",
                            self.subnet6(),
                            link["ifname"].as_str().unwrap_or("?"),
                            a["local"]
                        );
                    }
                }
            }
        }
        let addrs = ip_json(&["-4", "addr", "show"])?;
        let net = format!("10.244.{}.", self.index);
        for link in addrs.as_array().into_iter().flatten() {
            for a in link["addr_info"].as_array().into_iter().flatten() {
                if let Some(local) = a["local"].as_str() {
                    if local.starts_with(&net) {
                        bail!(
                            "subnet 10.244.{}.0/24 is already in use on this host ({} has {local}); \
                             pick another subnet index",
                            self.index,
                            link["ifname"].as_str().unwrap_or("?")
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// `<prefix>-<index>`, the tag on everything this network owns.
    pub fn id(&self) -> String {
        format!("{}-{}", self.prefix, self.index)
    }

    /// The name prefix given to [`PodNet::new`].
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The subnet index given to [`PodNet::new`].
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The bridge's fixed, locally administered MAC, `02:6b:65:65:6c:<index>` ("keel").
    fn bridge_mac(&self) -> String {
        format!("02:6b:65:65:6c:{:02x}", self.index)
    }

    /// The host bridge, `kb<index>`.
    pub fn bridge(&self) -> String {
        format!("kb{}", self.index)
    }

    /// `10.244.<index>.1`, the host's address on the bridge (Keel's proxy address, and the source
    /// address backends see for proxied connections).
    pub fn bridge_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, self.index, 1)
    }

    /// `10.244.<index>.<suffix>`.
    pub fn pod_ip(&self, suffix: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, self.index, suffix)
    }

    /// Whether this network has IPv6 too ([`PodNet::new_dual_stack`]).
    pub fn dual_stack(&self) -> bool {
        self.dual_stack
    }

    /// `fd00:10:244:<index>::1`, the host's IPv6 address on the bridge (Keel's IPv6 proxy address
    /// on a dual-stack network).
    pub fn bridge_ip6(&self) -> Ipv6Addr {
        self.pod_ip6(1)
    }

    /// `fd00:10:244:<index>::<suffix>` (both written with the decimal digits: index 217, suffix 11
    /// give `fd00:10:244:217::11`).
    pub fn pod_ip6(&self, suffix: u8) -> Ipv6Addr {
        Ipv6Addr::new(
            0xfd00,
            0x10,
            0x244,
            decimal_digits(self.index),
            0,
            0,
            0,
            decimal_digits(suffix),
        )
    }

    /// `fd00:10:244:<index>::/64`.
    pub fn subnet6(&self) -> String {
        format!("{}/64", self.pod_ip6(0))
    }

    /// `[<bridge ip6>]:15001`, the IPv6 address to give `keel run --proxy-addr` on a dual-stack
    /// network (next to [`PodNet::proxy_addr`]).
    pub fn proxy_addr6(&self) -> SocketAddr {
        SocketAddr::V6(SocketAddrV6::new(self.bridge_ip6(), PROXY_PORT, 0, 0))
    }

    /// `10.244.<index>.0/24`.
    pub fn subnet(&self) -> String {
        format!("10.244.{}.0/24", self.index)
    }

    /// The blackholed service CIDR.
    pub fn service_cidr(&self) -> &str {
        &self.service_cidr
    }

    /// `<bridge ip>:15001`, the address to give `keel run --proxy-addr`.
    pub fn proxy_addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.bridge_ip(), PROXY_PORT))
    }

    /// `<cg2>/<prefix>-<index>`, parent of everything below.
    pub fn base_cgroup(&self) -> PathBuf {
        self.cgroup2.join(self.id())
    }

    /// `<cg2>/<prefix>-<index>/pods`: the cgroup root Keel attaches to (`keel run --cgroup`).
    pub fn cgroup_root(&self) -> PathBuf {
        self.base_cgroup().join("pods")
    }

    /// `<cg2>/<prefix>-<index>/system`: where keel runs by default (outside the capture root).
    pub fn system_cgroup(&self) -> PathBuf {
        self.base_cgroup().join("system")
    }

    /// Creates (if needed) a cgroup anywhere under [`PodNet::base_cgroup`], e.g.
    /// `cgroup_root().join("keel-system/keel")` to run keel inside its own capture root.
    pub fn ensure_cgroup(&self, path: &Path) -> Result<PathBuf> {
        ensure!(
            path.starts_with(self.base_cgroup()),
            "cgroup {} is not under this network's {}",
            path.display(),
            self.base_cgroup().display()
        );
        std::fs::create_dir_all(path)
            .with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(path.to_path_buf())
    }

    /// Scratch directory for logs and configs; removed with the network.
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// The pods added so far.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// Adds a pod whose cgroup is `<cgroup_root>/<namespace>/<name>` (captured by Keel).
    pub fn add_pod(&mut self, namespace: &str, name: &str, ip_suffix: u8) -> Result<Pod> {
        let cgroup = self.cgroup_root().join(namespace).join(name);
        self.add_pod_at(namespace, name, ip_suffix, cgroup, None, true)
    }

    /// Adds a pod whose cgroups are laid out as kubelet and a CRI runtime make them (see
    /// [`crate::kubelet`]), with [`PodNet::cgroup_root`] as kubelet's cgroup root: the pod's cgroup
    /// `<cgroup_root>/kubepods.../<pod dir>`, and its processes in a container cgroup below that.
    pub fn add_pod_kubelet(
        &mut self,
        namespace: &str,
        name: &str,
        ip_suffix: u8,
        kubelet: KubeletCgroup,
    ) -> Result<Pod> {
        ensure!(
            !self
                .pods
                .iter()
                .any(|p| p.kubelet.as_ref().is_some_and(|k| k.uid == kubelet.uid)),
            "pod UID {} is already used by another pod of this network",
            kubelet.uid
        );
        let cgroup = self.cgroup_root().join(kubelet.pod_path());
        self.add_pod_at(namespace, name, ip_suffix, cgroup, Some(kubelet), true)
    }

    /// Creates kubelet's QoS cgroups for both drivers (`kubepods`, `kubepods/burstable`,
    /// `kubepods/besteffort` and their systemd slices) under [`PodNet::cgroup_root`], as kubelet
    /// does when it starts, before any pod: a pod's cgroup then never appears together with its
    /// parent.
    pub fn create_kubelet_qos_cgroups(&self) -> Result<()> {
        for driver in [CgroupDriver::Systemd, CgroupDriver::Cgroupfs] {
            for qos in [
                QosClass::Guaranteed,
                QosClass::Burstable,
                QosClass::BestEffort,
            ] {
                let pod = KubeletCgroup::new("00000000-0000-0000-0000-000000000000", qos, driver);
                let path = self.cgroup_root().join(pod.pod_path());
                let parent = path
                    .parent()
                    .with_context(|| format!("{} has no parent", path.display()))?;
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating QoS cgroup {}", parent.display()))?;
            }
        }
        Ok(())
    }

    /// Removes a pod as kubelet does when it ends: kills its processes, removes its cgroups (the
    /// pod's and everything below; the QoS parents stay), its veth pair and its network namespace.
    pub fn remove_pod(&mut self, namespace: &str, name: &str) -> Result<()> {
        let Some(i) = self
            .pods
            .iter()
            .position(|p| p.namespace == namespace && p.name == name)
        else {
            bail!("no pod {namespace}/{name} in PodNet {}", self.id());
        };
        let pod = self.pods.remove(i);
        if pod.cgroup.exists() {
            kill_cgroup_tree(&pod.cgroup)?;
            ensure!(
                wait_cgroup_empty(&pod.cgroup, KILL_WAIT),
                "processes still in {} after SIGKILL",
                pod.cgroup.display()
            );
            remove_cgroup_tree(&pod.cgroup)?;
        }
        if link_exists(&pod.host_veth) {
            run("ip", &["link", "del", &pod.host_veth])?;
        }
        if list_netns()?.contains(&pod.netns) {
            run("ip", &["netns", "del", &pod.netns])?;
        }
        Ok(())
    }

    /// Adds a pod whose cgroup is `<base>/outside/<namespace>/<name>`, NOT under the capture root.
    pub fn add_pod_outside_root(
        &mut self,
        namespace: &str,
        name: &str,
        ip_suffix: u8,
    ) -> Result<Pod> {
        let cgroup = self
            .base_cgroup()
            .join("outside")
            .join(namespace)
            .join(name);
        self.add_pod_at(namespace, name, ip_suffix, cgroup, None, false)
    }

    fn add_pod_at(
        &mut self,
        namespace: &str,
        name: &str,
        ip_suffix: u8,
        cgroup: PathBuf,
        kubelet: Option<KubeletCgroup>,
        under_root: bool,
    ) -> Result<Pod> {
        ensure!(
            is_dns_label(namespace) && is_dns_label(name),
            "namespace {namespace:?} and pod name {name:?} must be DNS labels ([a-z0-9-])"
        );
        ensure!(
            (2..=254).contains(&ip_suffix),
            "pod IP suffix {ip_suffix} must be in 2..=254 (.1 is the bridge)"
        );
        if let Some(p) = self
            .pods
            .iter()
            .find(|p| p.ip.octets()[3] == ip_suffix || (p.namespace == namespace && p.name == name))
        {
            bail!(
                "pod {namespace}/{name} ({}) clashes with {}/{} ({})",
                self.pod_ip(ip_suffix),
                p.namespace,
                p.name,
                p.ip
            );
        }
        let pod = Pod {
            namespace: namespace.to_string(),
            name: name.to_string(),
            ip: self.pod_ip(ip_suffix),
            ip6: self.dual_stack.then(|| self.pod_ip6(ip_suffix)),
            netns: format!("{}-{namespace}-{name}", self.id()),
            process_cgroup: match &kubelet {
                Some(k) => cgroup.join(k.container_dir()),
                None => cgroup.clone(),
            },
            cgroup,
            kubelet,
            // Named by index and IP suffix: always <= 9 chars, well within IFNAMSIZ (15).
            host_veth: format!("kv{}h{ip_suffix}", self.index),
            under_root,
            log_dir: self.work_dir.join("logs"),
        };
        // Record first, so a failure half-way still gets cleaned up by Drop.
        self.pods.push(pod.clone());

        let ns = pod.netns.as_str();
        let hv = pod.host_veth.as_str();
        run("ip", &["netns", "add", ns])?;
        run(
            "ip",
            &[
                "link", "add", hv, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ],
        )?;
        run("ip", &["link", "set", hv, "alias", &self.link_alias()])?;
        run("ip", &["link", "set", hv, "master", &self.bridge(), "up"])?;
        run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        let cidr = format!("{}/24", pod.ip);
        run("ip", &["-n", ns, "addr", "add", &cidr, "dev", "eth0"])?;
        if let Some(ip6) = pod.ip6 {
            let cidr6 = format!("{ip6}/64");
            run(
                "ip",
                &[
                    "-n", ns, "-6", "addr", "add", &cidr6, "dev", "eth0", "nodad",
                ],
            )?;
        }
        run("ip", &["-n", ns, "link", "set", "eth0", "up"])?;
        // Deliberately no default route: only 10.244.<n>.0/24 (and fd00:10:244:<n>::/64) is
        // reachable from the pod.
        std::fs::create_dir_all(&pod.process_cgroup)
            .with_context(|| format!("creating pod cgroup {}", pod.process_cgroup.display()))?;
        Ok(pod)
    }

    /// Emulates kube-proxy for one Service port, so that a pod's connection that keel does not
    /// redirect reaches a real endpoint: a host DNAT (nat PREROUTING, only for packets arriving on
    /// this network's bridge) of `vip` to `endpoint`. Use an endpoint on the host side (the bridge
    /// IP), so the answer needs neither forwarding nor hairpin NAT; give pods a route to the
    /// service CIDR with [`PodNet::route_services_via_node`]. Removed when the guard drops.
    pub fn kube_proxy(&self, vip: SocketAddr, endpoint: SocketAddr) -> Result<KubeProxyRule> {
        self.kube_proxy_for("tcp", vip, endpoint)
    }

    /// [`PodNet::kube_proxy`] for a UDP Service port (e.g. DNS on 53).
    pub fn kube_proxy_udp(&self, vip: SocketAddr, endpoint: SocketAddr) -> Result<KubeProxyRule> {
        self.kube_proxy_for("udp", vip, endpoint)
    }

    fn kube_proxy_for(
        &self,
        protocol: &str,
        vip: SocketAddr,
        endpoint: SocketAddr,
    ) -> Result<KubeProxyRule> {
        let rule = KubeProxyRule {
            args: vec![
                "PREROUTING".into(),
                "-i".into(),
                self.bridge(),
                "-d".into(),
                format!("{}/32", vip.ip()),
                "-p".into(),
                protocol.into(),
                "--dport".into(),
                vip.port().to_string(),
                "-m".into(),
                "comment".into(),
                "--comment".into(),
                self.link_alias(),
                "-j".into(),
                "DNAT".into(),
                "--to-destination".into(),
                endpoint.to_string(),
            ],
        };
        // A rule left by a killed earlier run of this network would match first: remove it.
        rule.delete_all();
        rule.iptables("-A")?;
        Ok(rule)
    }

    /// Routes the service CIDR from `pod` to the node (the bridge IP), where kube-proxy's DNAT
    /// ([`PodNet::kube_proxy`]) applies and everything else in the CIDR stays blackholed.
    pub fn route_services_via_node(&self, pod: &Pod) -> Result<()> {
        let via = self.bridge_ip().to_string();
        run(
            "ip",
            &[
                "-n",
                &pod.netns,
                "route",
                "replace",
                &self.service_cidr,
                "via",
                &via,
            ],
        )?;
        Ok(())
    }

    /// Runs `cmd` as a child that first joins `cgroup` (which must be under this network), in the host
    /// netns. Used to start keel in [`PodNet::system_cgroup`] or elsewhere.
    pub fn spawn_in_cgroup(&self, cgroup: &Path, cmd: Command, label: &str) -> Result<Proc> {
        self.ensure_cgroup(cgroup)?;
        let cmd = enter(cmd, Some(cgroup), None)?;
        Proc::spawn(cmd, label, &self.work_dir.join("logs"))
    }

    fn link_alias(&self) -> String {
        format!("{LINK_ALIAS_PREFIX}{}", self.id())
    }

    fn route_metric(&self) -> u32 {
        ROUTE_METRIC_BASE + u32::from(self.index)
    }

    /// Removes everything now and reports what could not be removed (Drop does the same, but can only
    /// print). Afterwards [`leftovers`] for this id is empty.
    pub fn teardown(mut self) -> Result<()> {
        let problems = self.teardown_inner();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(
                "PodNet {} teardown left things behind: {}",
                self.id(),
                problems.join("; ")
            ))
        }
    }

    fn teardown_inner(&mut self) -> Vec<String> {
        if self.torn_down {
            return Vec::new();
        }
        self.torn_down = true;
        let mut problems = clean_index(&self.cgroup2, &self.prefix, self.index);
        // Our own route may use a non-default CIDR; clean_index removes any blackhole with our metric.
        if std::env::var_os("KEEL_TEST_KEEP_LOGS").is_none() {
            if let Err(e) = std::fs::remove_dir_all(&self.work_dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    problems.push(format!("removing {}: {e}", self.work_dir.display()));
                }
            }
        }
        problems.extend(leftovers(&self.prefix, self.index));
        if let Some(before) = HOST_BEFORE.get() {
            problems.extend(before.restore());
        }
        problems
    }
}

/// The host state keel changes when it runs, as this process first saw it.
static HOST_BEFORE: std::sync::OnceLock<HostBefore> = std::sync::OnceLock::new();

const MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";
const BPFFS: &str = "/sys/fs/bpf";

/// What keel may change on the host (see the README's upgrade section) and a test run must put back.
#[derive(Debug)]
struct HostBefore {
    /// `net.ipv4.tcp_migrate_req` (keel sets 1 for listener hand-over).
    migrate_req: Option<String>,
    /// Whether bpffs was mounted at `/sys/fs/bpf` (keel mounts it when it is not).
    bpffs_mounted: bool,
    /// Whether `/sys/fs/bpf/keel` existed.
    keel_dir: bool,
}

impl HostBefore {
    fn read() -> Self {
        Self {
            migrate_req: std::fs::read_to_string(MIGRATE_REQ)
                .ok()
                .map(|v| v.trim().to_string()),
            bpffs_mounted: bpffs_mounted(),
            keel_dir: Path::new(BPFFS).join("keel").exists(),
        }
    }

    /// Restores what is no longer in use: the sysctl, and keel's pin directory and the bpffs mount
    /// when they are empty (another keel's install keeps them). Returns problems.
    fn restore(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(before) = &self.migrate_req {
            let now = std::fs::read_to_string(MIGRATE_REQ).ok();
            if now.as_deref().map(str::trim) != Some(before.as_str()) {
                if let Err(e) = std::fs::write(MIGRATE_REQ, before) {
                    problems.push(format!("restoring {MIGRATE_REQ} to {before}: {e}"));
                }
            }
        }
        let keel_dir = Path::new(BPFFS).join("keel");
        // `remove_dir` only removes an empty directory: a live install elsewhere keeps it.
        if !self.keel_dir && keel_dir.exists() && std::fs::remove_dir(&keel_dir).is_err() {
            return problems;
        }
        // The kernel's own iterators (bpf_preload's `maps.debug`, `progs.debug`) come with the mount.
        let empty = std::fs::read_dir(BPFFS).is_ok_and(|d| {
            d.flatten()
                .all(|e| e.file_name().to_string_lossy().ends_with(".debug"))
        });
        if !self.bpffs_mounted && bpffs_mounted() && empty {
            if let Err(e) = run("umount", &[BPFFS]) {
                problems.push(format!(
                    "unmounting the bpffs keel mounted at {BPFFS}: {e:#}"
                ));
            }
        }
        problems
    }
}

fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            let mut f = l.split_whitespace();
            let (_, target, fstype) = (f.next(), f.next(), f.next());
            target == Some(BPFFS) && fstype == Some("bpf")
        })
    })
}

impl Drop for PodNet {
    fn drop(&mut self) {
        let problems = self.teardown_inner();
        if !problems.is_empty() {
            // Never panic in Drop (it may run during a panic); say it loudly instead.
            let _ = writeln!(
                std::io::stderr(),
                "keel-tests: PodNet {} teardown problems: {}",
                self.id(),
                problems.join("; ")
            );
        }
    }
}

impl Pod {
    /// A pod of a network that another process built and still owns (a running `cargo xtask demo
    /// --keep`): the names and paths [`PodNet::add_pod`] gave it, checked to exist. Nothing is
    /// created, and nothing is removed when the value is dropped.
    pub fn of_running_net(
        prefix: &str,
        index: u8,
        namespace: &str,
        name: &str,
        ip: Ipv4Addr,
    ) -> Result<Pod> {
        let id = format!("{prefix}-{index}");
        let netns = format!("{id}-{namespace}-{name}");
        let cgroup = host::cgroup2_mount()?
            .join(&id)
            .join("pods")
            .join(namespace)
            .join(name);
        ensure!(
            Path::new("/run/netns").join(&netns).exists() && cgroup.is_dir(),
            "pod {namespace}/{name} is not running (no network namespace {netns} or no cgroup {})",
            cgroup.display()
        );
        Ok(Pod {
            namespace: namespace.to_string(),
            name: name.to_string(),
            ip,
            ip6: None,
            netns,
            process_cgroup: cgroup.clone(),
            cgroup,
            kubelet: None,
            host_veth: format!("kv{index}h{}", ip.octets()[3]),
            under_root: true,
            log_dir: std::env::temp_dir()
                .join(format!("keel-podnet-{id}"))
                .join("logs"),
        })
    }

    /// `<namespace>/<name>`, the way Keel names a source pod.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// `<pod ip>:<port>`.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.ip, port))
    }

    /// `[<pod ip6>]:<port>`; fails on a pod of an IPv4-only network.
    pub fn addr6(&self, port: u16) -> Result<SocketAddr> {
        let ip = self
            .ip6
            .with_context(|| format!("pod {} has no IPv6 address", self.full_name()))?;
        Ok(SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0)))
    }

    /// A `Command` whose child joins this pod's [`Pod::process_cgroup`] (writes `0` to `cgroup.procs`)
    /// and enters its network namespace before exec. Spawn it with [`Pod::spawn`] to have it killed
    /// on drop; anything spawned otherwise is still killed by the network's teardown (it kills the
    /// whole cgroup tree).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let cmd = Command::new(program);
        match enter(cmd, Some(&self.process_cgroup), Some(&self.netns)) {
            Ok(cmd) => cmd,
            Err(_) => {
                // Only reachable with a NUL byte in a path, which DNS-label names rule out; make the
                // spawn fail rather than run the program outside the pod.
                let mut cmd = Command::new("/nonexistent/keel-tests-pod-command");
                // SAFETY: returns an error without touching shared state.
                unsafe {
                    cmd.pre_exec(|| Err(std::io::Error::from_raw_os_error(libc::EINVAL)));
                }
                cmd
            }
        }
    }

    /// Spawns `program args...` in this pod as a [`Proc`] (killed and reaped on drop).
    pub fn spawn(&self, program: &Path, args: &[&str], label: &str) -> Result<Proc> {
        let mut cmd = self.command(program);
        cmd.args(args);
        Proc::spawn(cmd, &format!("{}-{label}", self.name), &self.log_dir)
    }

    /// Runs `program args...` in this pod to completion within `timeout` (killed if it overstays) and
    /// returns its exit status and stdout.
    pub fn exec(
        &self,
        program: &Path,
        args: &[&str],
        timeout: Duration,
    ) -> Result<(std::process::ExitStatus, String, String)> {
        let label = args.first().copied().unwrap_or("exec");
        let mut proc = self.spawn(program, args, label)?;
        let status = proc.wait_or_kill(timeout).with_context(|| {
            format!(
                "running {} {} in pod {}",
                program.display(),
                args.join(" "),
                self.full_name()
            )
        })?;
        Ok((status, proc.stdout(), proc.stderr()))
    }
}

/// Adds a `pre_exec` hook to `cmd` that joins `cgroup` and/or enters the named netns.
fn enter(mut cmd: Command, cgroup: Option<&Path>, netns: Option<&str>) -> Result<Command> {
    let procs = cgroup
        .map(|c| cstring(&c.join("cgroup.procs")))
        .transpose()?;
    let ns = netns
        .map(|n| cstring(&Path::new("/run/netns").join(n)))
        .transpose()?;
    // SAFETY: the closure only makes async-signal-safe syscalls on pre-built C strings.
    unsafe {
        cmd.pre_exec(move || enter_in_child(procs.as_deref(), ns.as_deref()));
    }
    Ok(cmd)
}

/// Runs between fork and exec: no allocation, no locks, only raw syscalls.
fn enter_in_child(
    cgroup_procs: Option<&std::ffi::CStr>,
    netns: Option<&std::ffi::CStr>,
) -> std::io::Result<()> {
    if let Some(procs) = cgroup_procs {
        // SAFETY: valid NUL-terminated path; fd closed below.
        let fd = unsafe { libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // "0" moves the writing process itself.
        // SAFETY: writing one byte from a static buffer to an fd we own.
        let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
        let err = std::io::Error::last_os_error();
        // SAFETY: closing the fd we opened.
        unsafe { libc::close(fd) };
        if n != 1 {
            return Err(err);
        }
    }
    if let Some(ns) = netns {
        // SAFETY: valid NUL-terminated path; fd closed below.
        let fd = unsafe { libc::open(ns.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd refers to a network namespace file from `ip netns add`.
        let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
        let err = std::io::Error::last_os_error();
        // SAFETY: closing the fd we opened.
        unsafe { libc::close(fd) };
        if rc != 0 {
            return Err(err);
        }
    }
    Ok(())
}

fn cstring(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .with_context(|| format!("path {} contains a NUL byte", p.display()))
}

/// True for a lower-case DNS label (`[a-z0-9]([a-z0-9-]*[a-z0-9])?`).
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

// ---------------------------------------------------------------------------------------------------
// Ownership lock and cleanup of one (prefix, index).

/// Takes the lock for `index`; returns it and the prefix of its previous holder (if recorded).
fn lock_index(index: u8, prefix: &str) -> Result<(Flock<File>, Option<String>)> {
    match try_lock_index(index)? {
        Some((mut lock, previous)) => {
            let previous_prefix = previous
                .split_whitespace()
                .nth(1)
                .map(std::string::ToString::to_string);
            lock.set_len(0).context("truncating lock file")?;
            lock.rewind().context("rewinding lock file")?;
            write!(lock, "{} {prefix}", std::process::id()).context("writing lock file")?;
            Ok((lock, previous_prefix))
        }
        None => {
            let holder = std::fs::read_to_string(lock_path(index)).unwrap_or_default();
            bail!(
                "subnet index {index} is in use by a live PodNet (pid and prefix: {:?}); \
                 every concurrently running network needs its own index",
                holder.trim()
            )
        }
    }
}

fn lock_path(index: u8) -> PathBuf {
    Path::new(LOCK_DIR).join(format!("subnet-{index}.lock"))
}

/// `Some((lock, previous contents))` if nobody holds the lock for `index`; `None` if someone does.
/// The file is never deleted: unlinking a lock file races with a concurrent opener.
fn try_lock_index(index: u8) -> Result<Option<(Flock<File>, String)>> {
    std::fs::create_dir_all(LOCK_DIR).with_context(|| format!("creating {LOCK_DIR}"))?;
    let path = lock_path(index);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            let mut previous = String::new();
            // Contents are only a hint for cleanup; unreadable contents are not an error.
            let _ = lock.read_to_string(&mut previous);
            Ok(Some((lock, previous)))
        }
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(anyhow!("flock {}: {e}", path.display())),
    }
}

/// Removes every leftover of `(prefix, index)`. Caller holds the lock for `index`. Returns problems.
/// Removes keel's pin directories (`/sys/fs/bpf/keel/cg<id>-*`) whose attach root is `base` or a
/// cgroup at most two levels below it (the network's root, `pods`, a kubelet-style root).
fn remove_keel_installs(base: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt as _;
    let mut ids = Vec::new();
    let mut level = vec![base.to_path_buf()];
    for _ in 0..3 {
        let mut next = Vec::new();
        for dir in &level {
            if let Ok(meta) = std::fs::metadata(dir) {
                ids.push(meta.ino());
            }
            if let Ok(entries) = std::fs::read_dir(dir) {
                next.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
        }
        level = next;
    }
    let prefixes: Vec<String> = ids.iter().map(|id| format!("cg{id}-")).collect();
    let keel_dir = Path::new("/sys/fs/bpf/keel");
    let Ok(entries) = std::fs::read_dir(keel_dir) else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if prefixes.iter().any(|p| name.starts_with(p)) {
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                problems.push(format!("removing {}: {e}", entry.path().display()));
            }
        }
    }
    problems
}

fn clean_index(cgroup2: &Path, prefix: &str, index: u8) -> Vec<String> {
    let mut problems = Vec::new();
    let id = format!("{prefix}-{index}");
    let base = cgroup2.join(&id);
    let netns_prefix = format!("{id}-");
    let netns: Vec<String> = list_netns()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with(&netns_prefix))
        .collect();

    // 1. Kill every process: the whole cgroup tree (pods and keel), and anything else inside the netns.
    if base.exists() {
        if let Err(e) = kill_cgroup_tree(&base) {
            problems.push(format!("killing cgroup {}: {e:#}", base.display()));
        }
    }
    for ns in &netns {
        if let Ok(out) = run("ip", &["netns", "pids", ns]) {
            for pid in out.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    // keel's pinned install for this network's cgroup root, left by a test that failed before
    // `keel uninstall`: unpinning detaches its programs.
    problems.extend(remove_keel_installs(&base));
    if base.exists() && !wait_cgroup_empty(&base, KILL_WAIT) {
        problems.push(format!(
            "processes still in {} after SIGKILL",
            base.display()
        ));
    }

    // 2. Links: deleting the host end of a veth deletes both ends. Only links tagged for an owner of
    //    this index (any prefix: we hold the index lock, so they are all stale or ours).
    let alias_suffix = format!("-{index}");
    match ip_json(&["link", "show"]) {
        Ok(links) => {
            let mut ours: Vec<(String, bool)> = links
                .as_array()
                .into_iter()
                .flatten()
                .filter(|l| {
                    l["ifalias"].as_str().is_some_and(|a| {
                        a.strip_prefix(LINK_ALIAS_PREFIX)
                            .is_some_and(|owner| owner.ends_with(&alias_suffix))
                    })
                })
                .filter_map(|l| {
                    let name = l["ifname"].as_str()?.to_string();
                    let is_bridge = l["linkinfo"]["info_kind"].as_str() == Some("bridge")
                        || name == format!("kb{index}");
                    Some((name, is_bridge))
                })
                .collect();
            // Ports before the bridge.
            ours.sort_by_key(|(_, is_bridge)| *is_bridge);
            for (name, _) in ours {
                if let Err(e) = run("ip", &["link", "del", &name]) {
                    if link_exists(&name) {
                        problems.push(format!("deleting link {name}: {e:#}"));
                    }
                }
            }
        }
        Err(e) => problems.push(format!("listing links: {e:#}")),
    }

    // 3. Network namespaces.
    for ns in &netns {
        if let Err(e) = run("ip", &["netns", "del", ns]) {
            problems.push(format!("deleting netns {ns}: {e:#}"));
        }
    }

    // 4. Our blackhole route(s): exactly those with our metric.
    let metric = ROUTE_METRIC_BASE + u32::from(index);
    for dst in blackholes_with_metric(metric) {
        if let Err(e) = run(
            "ip",
            &[
                "route",
                "del",
                "blackhole",
                &dst,
                "metric",
                &metric.to_string(),
            ],
        ) {
            problems.push(format!(
                "deleting blackhole route {dst} metric {metric}: {e:#}"
            ));
        }
    }

    // 5. Cgroups, leaf first.
    if base.exists() {
        if let Err(e) = remove_cgroup_tree(&base) {
            problems.push(format!("removing cgroup {}: {e:#}", base.display()));
        }
    }
    problems
}

/// What is left of `(prefix, index)` on this host: an empty list means fully cleaned up.
pub fn leftovers(prefix: &str, index: u8) -> Vec<String> {
    let mut left = Vec::new();
    let id = format!("{prefix}-{index}");
    for ns in list_netns().unwrap_or_default() {
        if ns.starts_with(&format!("{id}-")) {
            left.push(format!("netns {ns}"));
        }
    }
    if let Ok(links) = ip_json(&["link", "show"]) {
        for l in links.as_array().into_iter().flatten() {
            let name = l["ifname"].as_str().unwrap_or("");
            let tagged = l["ifalias"].as_str() == Some(&format!("{LINK_ALIAS_PREFIX}{id}"));
            if tagged {
                left.push(format!("link {name}"));
            }
        }
    }
    for dst in blackholes_with_metric(ROUTE_METRIC_BASE + u32::from(index)) {
        left.push(format!(
            "route blackhole {dst} metric {}",
            ROUTE_METRIC_BASE + u32::from(index)
        ));
    }
    if let Ok(cg2) = host::cgroup2_mount() {
        let base = cg2.join(&id);
        if base.exists() {
            left.push(format!("cgroup {}", base.display()));
        }
    }
    left
}

/// Removes leftovers of earlier crashed runs that used `prefix`: every index whose lock is free.
/// Networks of live runs are left alone. Returns a description of what was found and removed.
pub fn cleanup_stale(prefix: &str) -> Result<Vec<String>> {
    host::require_privileged_env()?;
    let cgroup2 = host::cgroup2_mount()?;
    let mut indices = std::collections::BTreeSet::new();
    let parse_index = |rest: &str| -> Option<u8> {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let after = &rest[digits.len()..];
        (!digits.is_empty() && (after.is_empty() || after.starts_with('-')))
            .then(|| digits.parse().ok())
            .flatten()
    };
    let id_prefix = format!("{prefix}-");
    for ns in list_netns()? {
        if let Some(i) = ns.strip_prefix(&id_prefix).and_then(parse_index) {
            indices.insert(i);
        }
    }
    if let Ok(entries) = std::fs::read_dir(&cgroup2) {
        for e in entries.flatten() {
            if let Some(i) = e
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(&id_prefix))
                .and_then(parse_index)
            {
                indices.insert(i);
            }
        }
    }
    for l in ip_json(&["link", "show"])?.as_array().into_iter().flatten() {
        if let Some(i) = l["ifalias"]
            .as_str()
            .and_then(|a| a.strip_prefix(LINK_ALIAS_PREFIX))
            .and_then(|owner| owner.strip_prefix(&id_prefix))
            .and_then(parse_index)
        {
            indices.insert(i);
        }
    }

    let mut report = Vec::new();
    for index in indices {
        let Some((_lock, _)) = try_lock_index(index)? else {
            report.push(format!(
                "{prefix}-{index}: in use by a live run, left alone"
            ));
            continue;
        };
        let found = leftovers(prefix, index);
        let problems = clean_index(&cgroup2, prefix, index);
        if !problems.is_empty() {
            bail!("cleaning stale {prefix}-{index}: {}", problems.join("; "));
        }
        report.push(format!("{prefix}-{index}: removed {}", found.join(", ")));
    }
    Ok(report)
}

/// Removes the leftovers of every crashed run on this host, whatever its prefix: for each subnet index
/// whose lock is free, the last owner recorded in the lock file is the only one that can have left
/// anything (each new owner cleans up after the previous one). Live networks are left alone.
pub fn cleanup_all_stale() -> Result<Vec<String>> {
    host::require_privileged_env()?;
    let cgroup2 = host::cgroup2_mount()?;
    let mut report = Vec::new();
    let Ok(entries) = std::fs::read_dir(LOCK_DIR) else {
        return Ok(report);
    };
    let mut indices: Vec<u8> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("subnet-")?
                .strip_suffix(".lock")?
                .parse()
                .ok()
        })
        .collect();
    indices.sort_unstable();
    for index in indices {
        let Some((_lock, previous)) = try_lock_index(index)? else {
            continue;
        };
        let Some(prefix) = previous
            .split_whitespace()
            .nth(1)
            .filter(|p| is_dns_label(p))
        else {
            continue;
        };
        let found = leftovers(prefix, index);
        if found.is_empty() {
            continue;
        }
        let problems = clean_index(&cgroup2, prefix, index);
        if !problems.is_empty() {
            bail!("cleaning stale {prefix}-{index}: {}", problems.join("; "));
        }
        report.push(format!("{prefix}-{index}: removed {}", found.join(", ")));
    }
    Ok(report)
}

fn list_netns() -> Result<Vec<String>> {
    let v = ip_json(&["netns", "list"])?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["name"].as_str().map(str::to_string))
        .collect())
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Our blackhole routes, IPv4 and IPv6 (a dual-stack network also blackholes the IPv6 service
/// CIDR with the same metric).
fn blackholes_with_metric(metric: u32) -> Vec<String> {
    ["-4", "-6"]
        .into_iter()
        .flat_map(|family| {
            ip_json(&[family, "route", "show", "type", "blackhole"])
                .ok()
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default()
        })
        .filter(|r| r["metric"].as_u64() == Some(u64::from(metric)))
        .filter_map(|r| r["dst"].as_str().map(str::to_string))
        .collect()
}

/// `n` written with its decimal digits as a hex group (217 -> 0x217), so addresses read like the
/// IPv4 ones.
fn decimal_digits(n: u8) -> u16 {
    (u16::from(n / 100) << 8) | (u16::from(n / 10 % 10) << 4) | u16::from(n % 10)
}

/// `ip -j -d <args>` parsed; empty output (e.g. no netns) is an empty array.
fn ip_json(args: &[&str]) -> Result<Value> {
    let mut full = vec!["-j", "-d"];
    full.extend_from_slice(args);
    let out = run("ip", &full)?;
    if out.trim().is_empty() {
        return Ok(Value::Array(Vec::new()));
    }
    serde_json::from_str(&out).with_context(|| format!("parsing `ip {}` output", full.join(" ")))
}

// ---------------------------------------------------------------------------------------------------
// cgroup v2 helpers.

/// SIGKILLs every process in the subtree: `cgroup.kill` (Linux 5.14+), else pid by pid.
fn kill_cgroup_tree(base: &Path) -> Result<()> {
    let kill_file = base.join("cgroup.kill");
    if kill_file.exists() {
        std::fs::write(&kill_file, "1")
            .with_context(|| format!("writing {}", kill_file.display()))?;
        return Ok(());
    }
    for dir in cgroup_dirs_leaf_first(base)? {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    Ok(())
}

/// Waits until no live process is left in the subtree (`populated 0` in `cgroup.events`).
fn wait_cgroup_empty(base: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let events = std::fs::read_to_string(base.join("cgroup.events")).unwrap_or_default();
        if events.lines().any(|l| l.trim() == "populated 0") || !base.exists() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every cgroup directory under and including `base`, deepest first.
fn cgroup_dirs_leaf_first(base: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![base.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            }
        }
        out.push(dir);
    }
    // Parents were pushed before their children; the deepest paths have the most components.
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    Ok(out)
}

/// rmdir every cgroup of the subtree, leaf first. A cgroup whose last process just died may stay busy
/// for a moment, so EBUSY is retried briefly.
fn remove_cgroup_tree(base: &Path) -> Result<()> {
    for dir in cgroup_dirs_leaf_first(base)? {
        let deadline = Instant::now() + KILL_WAIT;
        loop {
            match std::fs::remove_dir(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e).with_context(|| format!("rmdir {}", dir.display())),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_groups_read_as_decimal() {
        assert_eq!(decimal_digits(217), 0x217);
        assert_eq!(decimal_digits(2), 0x2);
        assert_eq!(decimal_digits(11), 0x11);
        assert_eq!(decimal_digits(254), 0x254);
    }

    #[test]
    fn dns_labels() {
        assert!(is_dns_label("reviews-v1"));
        assert!(is_dns_label("kt"));
        assert!(!is_dns_label("Reviews"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label("a_b"));
        assert!(!is_dns_label(""));
    }
}

/// A host DNAT rule made by [`PodNet::kube_proxy`]; deleted on drop.
#[derive(Debug)]
pub struct KubeProxyRule {
    /// The rule as given to `iptables -t nat -A/-D`.
    args: Vec<String>,
}

impl KubeProxyRule {
    fn iptables(&self, op: &str) -> Result<String> {
        let mut args: Vec<&str> = vec!["-w", "-t", "nat", op];
        args.extend(self.args.iter().map(String::as_str));
        run("iptables", &args)
    }

    fn delete_all(&self) {
        // Bounded: each round deletes one copy.
        for _ in 0..16 {
            if self.iptables("-D").is_err() {
                break;
            }
        }
    }
}

impl Drop for KubeProxyRule {
    fn drop(&mut self) {
        self.delete_all();
    }
}
