//! Running the `keel` binary under test: `keel run` inside a cgroup of a [`PodNet`], readiness, admin
//! API, shutdown; `keel validate`; and what `bpftool` says is attached.
//!
//! The admin contract the tests rely on (served on `--admin-addr`, localhost only):
//! - `GET /ready` -> 200 once the programs are attached and the proxy listener is serving;
//! - `GET /debug/connections` -> JSON array of the last accepted connections, each
//!   `{"source_pod","source_addr","original_dst","service","protocol"}`;
//! - `GET /stats` -> JSON object of counters, including `"kernel": {..}` and `"refused_no_record": N`.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::host;
use crate::http;
use crate::podnet::PodNet;
use crate::process::Proc;

static NEXT_VALIDATE: AtomicU64 = AtomicU64::new(0);

/// How long keel gets to report ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Timeout of one admin request.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// One entry of `GET /debug/connections`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionRecord {
    /// `namespace/name` of the client pod (from the kernel's record).
    pub source_pod: String,
    /// Client address, `ip:port`.
    pub source_addr: String,
    /// The VIP:port the client connected to.
    pub original_dst: String,
    /// FQDN of the matched service.
    pub service: String,
    /// Port protocol as classified (`http`, `http2`, `tcp`, ...).
    pub protocol: String,
}

/// How to start keel; [`KeelOptions::new`] fills in the defaults for a [`PodNet`].
#[derive(Debug, Clone)]
pub struct KeelOptions {
    /// `--config` (ignored when `kube` is set).
    pub config_dir: PathBuf,
    /// Cluster mode: `--kube --kubeconfig <path> --node-name <node>` instead of `--config`.
    pub kube: Option<KubeMode>,
    /// `--cgroup`: the cgroup root the programs attach to.
    pub cgroup_root: PathBuf,
    /// `--proxy-addr`.
    pub proxy_addr: SocketAddr,
    /// A second `--proxy-addr`, IPv6 (a dual-stack network's [`PodNet::proxy_addr6`] by default).
    pub proxy_addr6: Option<SocketAddr>,
    /// `--admin-addr` (127.0.0.1 and a free port by default).
    pub admin_addr: SocketAddr,
    /// The cgroup keel itself runs in (default: the network's `system` cgroup).
    pub process_cgroup: PathBuf,
    /// Extra arguments after the standard ones.
    pub extra_args: Vec<String>,
    /// How long to wait for `/ready`.
    pub ready_timeout: Duration,
    /// The keel binary; `None` means [`host::keel_bin`] (`KEEL_BIN`, default `target/release/keel`).
    pub binary: Option<PathBuf>,
    /// `KEEL_LOG`, keel's log filter (e.g. `info,keel::l7=debug` to see each local reply's response
    /// flags); `None`: keel's default.
    pub log_filter: Option<String>,
}

/// `keel run --kube` against an API server.
#[derive(Debug, Clone)]
pub struct KubeMode {
    /// `--kubeconfig`; `None`: keel's default (in a pod, its service account).
    pub kubeconfig: Option<PathBuf>,
    /// `--node-name`: the node whose pods keel captures.
    pub node_name: String,
}

impl KeelOptions {
    /// Defaults for `net` with config from `config_dir`.
    pub fn new(net: &PodNet, config_dir: &Path) -> Result<KeelOptions> {
        Ok(KeelOptions {
            config_dir: config_dir.to_path_buf(),
            kube: None,
            cgroup_root: net.cgroup_root(),
            proxy_addr: net.proxy_addr(),
            proxy_addr6: net.dual_stack().then(|| net.proxy_addr6()),
            admin_addr: free_local_port()?,
            process_cgroup: net.system_cgroup(),
            extra_args: Vec::new(),
            ready_timeout: READY_TIMEOUT,
            binary: None,
            log_filter: None,
        })
    }
}

/// A running `keel run`. Dropping it SIGKILLs it (tests that care about graceful exit call
/// [`Keel::terminate`]). If the test is panicking, keel's stderr is printed to help diagnose.
#[derive(Debug)]
pub struct Keel {
    proc: Proc,
    opts: KeelOptions,
}

impl Keel {
    /// Starts keel with the defaults of [`KeelOptions::new`] and waits until it is ready.
    pub fn start(net: &PodNet, config_dir: &Path) -> Result<Keel> {
        Keel::start_with(net, KeelOptions::new(net, config_dir)?)
    }

    /// Starts keel with `opts` inside `opts.process_cgroup` and waits until `/ready` answers 200;
    /// fails with keel's stderr if it exits or is not ready within `opts.ready_timeout`.
    pub fn start_with(net: &PodNet, opts: KeelOptions) -> Result<Keel> {
        let bin = match &opts.binary {
            Some(b) => b.clone(),
            None => host::keel_bin()?,
        };
        let mut cmd = Command::new(&bin);
        cmd.arg("run");
        match &opts.kube {
            Some(kube) => {
                cmd.arg("--kube");
                if let Some(kubeconfig) = &kube.kubeconfig {
                    cmd.arg("--kubeconfig").arg(kubeconfig);
                }
                cmd.arg("--node-name").arg(&kube.node_name)
            }
            None => cmd.arg("--config").arg(&opts.config_dir),
        };
        cmd.arg("--cgroup")
            .arg(&opts.cgroup_root)
            .arg("--proxy-addr")
            .arg(opts.proxy_addr.to_string());
        if let Some(v6) = opts.proxy_addr6 {
            cmd.arg("--proxy-addr").arg(v6.to_string());
        }
        cmd.arg("--admin-addr")
            .arg(opts.admin_addr.to_string())
            .args(&opts.extra_args);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        if let Some(filter) = &opts.log_filter {
            cmd.env("KEEL_LOG", filter);
        }
        let proc = net.spawn_in_cgroup(&opts.process_cgroup, cmd, "keel")?;
        let mut keel = Keel { proc, opts };
        keel.wait_ready()?;
        Ok(keel)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + self.opts.ready_timeout;
        loop {
            if let Some(status) = self.proc.try_wait()? {
                bail!(
                    "keel exited ({status}) before it was ready (admin {}); stderr:\n{}",
                    self.opts.admin_addr,
                    self.proc.stderr_tail()
                );
            }
            let last = match http::get(self.opts.admin_addr, "/ready", Duration::from_secs(1)) {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => format!("/ready answered {}: {}", r.status, r.text()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                let _ = self.proc.kill();
                bail!(
                    "keel was not ready within {:?} (last: {last}); stderr:\n{}",
                    self.opts.ready_timeout,
                    self.proc.stderr_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The options keel was started with.
    pub fn options(&self) -> &KeelOptions {
        &self.opts
    }

    /// keel's pid.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// keel's stdout so far (the access log when it goes to `/dev/stdout`).
    pub fn stdout(&self) -> String {
        self.proc.stdout()
    }

    /// keel's stderr so far.
    pub fn stderr(&self) -> String {
        self.proc.stderr()
    }

    /// `GET <path>` on the admin address, as JSON; fails on a non-200 status.
    pub fn admin_get(&self, path: &str) -> Result<Value> {
        admin_get(self.opts.admin_addr, path)
    }

    /// `GET /debug/connections`.
    pub fn connections(&self) -> Result<Vec<ConnectionRecord>> {
        let v = self.admin_get("/debug/connections")?;
        serde_json::from_value(v.clone())
            .with_context(|| format!("/debug/connections is not a list of connection records: {v}"))
    }

    /// `GET /stats?format=json` as one object, stat name -> value (`keel.config_reloads`,
    /// `cluster.<name>.upstream_rq_total`, ...).
    pub fn stats(&self) -> Result<Value> {
        admin_stats(self.opts.admin_addr)
    }

    /// Sends SIGTERM and waits up to `timeout` for exit; fails (and SIGKILLs) if keel overstays.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.proc.signal(Signal::SIGTERM)?;
        self.proc
            .wait_or_kill(timeout)
            .context("keel did not exit after SIGTERM")
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, ...) without waiting.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        self.proc.signal(signal)
    }

    /// Sends SIGKILL and reaps keel.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        self.proc.kill()
    }

    /// The exit status if keel has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.proc.try_wait()
    }
}

impl Drop for Keel {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = writeln!(
                std::io::stderr(),
                "---- keel stderr (pid {}) ----\n{}\n---- end keel stderr ----",
                self.proc.pid(),
                self.proc.stderr_tail()
            );
        }
        // Proc's Drop kills and reaps.
    }
}

/// `GET http://<admin><path>` as JSON; fails loudly with status and body on a non-200 answer.
pub fn admin_get(admin: SocketAddr, path: &str) -> Result<Value> {
    let r = http::get(admin, path, ADMIN_TIMEOUT)?;
    if r.status != 200 {
        bail!(
            "GET {path} on keel admin {admin} answered {}: {}",
            r.status,
            r.text()
        );
    }
    r.json()
        .with_context(|| format!("GET {path} on keel admin {admin}"))
}

/// `GET /stats?format=json` on `admin` (Envoy's `{"stats":[{"name":..,"value":..}]}`) as one
/// object, stat name -> value.
pub fn admin_stats(admin: SocketAddr) -> Result<Value> {
    let v = admin_get(admin, "/stats?format=json")?;
    let list = v["stats"]
        .as_array()
        .with_context(|| format!("/stats?format=json has no stats list: {v}"))?;
    let mut out = serde_json::Map::new();
    for stat in list {
        let name = stat["name"]
            .as_str()
            .with_context(|| format!("a stat without a name: {stat}"))?;
        out.insert(name.to_string(), stat["value"].clone());
    }
    Ok(Value::Object(out))
}

/// A localhost address with a port that was free a moment ago (bind to :0, read, release).
pub fn free_local_port() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0 to find a free port")?;
    l.local_addr().context("local_addr of a fresh listener")
}

/// Output of `keel validate DIR`.
#[derive(Debug, Clone)]
pub struct ValidateOutput {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Stdout.
    pub stdout: String,
    /// Stderr.
    pub stderr: String,
}

impl ValidateOutput {
    /// Stdout and stderr together, for matching.
    pub fn combined(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Runs `keel validate <dir>` (unprivileged, no network) with a 30 s limit.
pub fn validate(dir: &Path) -> Result<ValidateOutput> {
    let bin = host::keel_bin()?;
    let mut cmd = Command::new(&bin);
    cmd.arg("validate").arg(dir);
    // One directory per call: tests in one process run validate concurrently.
    let n = NEXT_VALIDATE.fetch_add(1, Ordering::Relaxed);
    let logs = std::env::temp_dir().join(format!("keel-validate-{}-{n}", std::process::id()));
    let mut proc = Proc::spawn(cmd, "keel-validate", &logs)?;
    let status = proc.wait_or_kill(Duration::from_secs(30))?;
    let out = ValidateOutput {
        code: status.code(),
        stdout: proc.stdout(),
        stderr: proc.stderr(),
    };
    drop(proc);
    let _ = std::fs::remove_dir_all(&logs);
    Ok(out)
}

/// Programs attached anywhere in the cgroup subtree at `root`, per `bpftool -j cgroup tree`:
/// `(cgroup path, program name or id, attach type)`. Empty means nothing is attached.
pub fn attached_programs(root: &Path) -> Result<Vec<(String, String, String)>> {
    let root = root
        .to_str()
        .with_context(|| format!("non-UTF-8 cgroup path {}", root.display()))?;
    let out = host::run("bpftool", &["-j", "cgroup", "tree", root])?;
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v: Value = serde_json::from_str(&out).context("parsing `bpftool -j cgroup tree`")?;
    let mut found = Vec::new();
    for cg in v.as_array().into_iter().flatten() {
        let path = cg["cgroup"].as_str().unwrap_or("?").to_string();
        for p in cg["programs"].as_array().into_iter().flatten() {
            let name = p["name"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| p["id"].to_string());
            let kind = p["attach_type"].as_str().unwrap_or("?").to_string();
            found.push((path.clone(), name, kind));
        }
    }
    Ok(found)
}

/// Every path under `/sys/fs/bpf` (pins), sorted; empty if bpffs is not mounted there.
pub fn bpffs_entries() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::from("/sys/fs/bpf")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            // The kernel's own iterators that come with every bpffs mount (bpf_preload).
            if dir == Path::new("/sys/fs/bpf")
                && e.file_name().to_string_lossy().ends_with(".debug")
            {
                continue;
            }
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// `keel uninstall --cgroup <root> --proxy-addr <addr>`; fails with its stderr unless it exits 0.
pub fn uninstall(cgroup_root: &Path, proxy_addr: SocketAddr) -> Result<String> {
    let bin = host::keel_bin()?;
    let out = Command::new(&bin)
        .arg("uninstall")
        .arg("--cgroup")
        .arg(cgroup_root)
        .arg("--proxy-addr")
        .arg(proxy_addr.to_string())
        .output()
        .with_context(|| format!("running {} uninstall", bin.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!("keel uninstall exited {}: {stderr}", out.status);
    }
    Ok(stderr)
}

/// keel's pin directory (its install) for `cgroup_root` and an IPv4 `proxy_addr`:
/// `/sys/fs/bpf/keel/cg<cgroup id>-<ip>_<port>` with the address's `.` as `_`.
pub fn install_dir(cgroup_root: &Path, proxy_addr: SocketAddr) -> Result<PathBuf> {
    use std::os::unix::fs::MetadataExt as _;
    let id = std::fs::metadata(cgroup_root)
        .with_context(|| format!("stat {}", cgroup_root.display()))?
        .ino();
    let addr = proxy_addr.to_string().replace([':', '[', ']', '.'], "_");
    Ok(PathBuf::from("/sys/fs/bpf/keel").join(format!("cg{id}-{addr}")))
}

/// What the kernel holds for one keel install, counted from the maps pinned in its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BpfFootprint {
    /// Ids of the maps pinned in the install directory.
    pub pinned_maps: Vec<u64>,
    /// Ids of the loaded programs that use any of those maps (attached or not).
    pub programs: Vec<u64>,
    /// Ids of every map those programs use (pinned ones plus each program's own, e.g. `.rodata`).
    pub maps: Vec<u64>,
    /// Paths under the install directory.
    pub pins: Vec<PathBuf>,
}

/// The [`BpfFootprint`] of the install in `dir`, per `bpftool` (`-j map show pinned`, `-j prog
/// show`). Only programs using the install's own maps count, so other keels on the machine (other
/// tests) do not disturb it.
pub fn bpf_footprint(dir: &Path) -> Result<BpfFootprint> {
    let pins: Vec<PathBuf> = bpffs_entries()
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect();
    let mut pinned_maps = Vec::new();
    for p in &pins {
        let Some(path) = p.to_str() else { continue };
        if p.is_dir()
            || p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("link_"))
        {
            continue;
        }
        let out = host::run("bpftool", &["-j", "map", "show", "pinned", path])?;
        let v: Value =
            serde_json::from_str(&out).context("parsing `bpftool -j map show pinned`")?;
        if let Some(id) = v["id"].as_u64() {
            pinned_maps.push(id);
        }
    }
    pinned_maps.sort_unstable();
    let out = host::run("bpftool", &["-j", "prog", "show"])?;
    let v: Value = serde_json::from_str(&out).context("parsing `bpftool -j prog show`")?;
    let mut programs = Vec::new();
    let mut maps = std::collections::BTreeSet::new();
    for prog in v.as_array().into_iter().flatten() {
        let ids: Vec<u64> = prog["map_ids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .collect();
        if ids.iter().any(|id| pinned_maps.contains(id)) {
            if let Some(id) = prog["id"].as_u64() {
                programs.push(id);
            }
            maps.extend(ids);
        }
    }
    programs.sort_unstable();
    Ok(BpfFootprint {
        pinned_maps,
        programs,
        maps: maps.into_iter().collect(),
        pins,
    })
}

/// Whether the kernel still has a map with this id (`bpftool map show id`).
pub fn map_exists(id: u64) -> bool {
    host::run("bpftool", &["map", "show", "id", &id.to_string()]).is_ok()
}
