//! Keel next to kube-proxy (docs/coexistence.md): kube-proxy's kind of rule, a DNAT of the Service
//! VIP in the host's `nat PREROUTING` chain, never sees a connection Keel captures (the rewrite
//! happens at `connect()`, before the first packet), and still handles a pod Keel does not capture.
//!
//! Everything stays on this machine: the DNAT sends the VIP to a server on the pod network's own
//! bridge address, only for packets from this test's subnet; the rule is removed on drop.
//!
//! Subnet index 197.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::{ensure_all_ok_via_proxy, reviews_vip, Fixture, REVIEWS_URL};
use keel_tests::{host, HttpGet, Proc, SERVICE_CIDR};

const PREFIX: &str = "ktcoex";
const INDEX: u8 = 197;
/// The port of the stand-in for kube-proxy's endpoint, on the bridge address.
const KUBE_PROXY_BACKEND_PORT: u16 = 19080;

/// One rule in the host's nat table, deleted on drop.
struct NatRule {
    chain: &'static str,
    spec: Vec<String>,
    comment: String,
}

impl NatRule {
    fn add(chain: &'static str, spec: &[&str], comment: &str) -> Result<NatRule> {
        let rule = NatRule {
            chain,
            spec: spec.iter().map(|s| s.to_string()).collect(),
            comment: comment.to_string(),
        };
        host::run("iptables", &rule.args("-A"))?;
        Ok(rule)
    }

    fn args<'a>(&'a self, op: &'a str) -> Vec<&'a str> {
        let mut args = vec!["-t", "nat", op, self.chain];
        args.extend(self.spec.iter().map(String::as_str));
        args.extend(["-m", "comment", "--comment", self.comment.as_str()]);
        args
    }

    /// Packets the rule has matched (only a connection's first packet traverses nat).
    fn packets(&self) -> Result<u64> {
        let out = host::run(
            "iptables",
            &["-t", "nat", "-L", self.chain, "-v", "-n", "-x"],
        )?;
        let line = out
            .lines()
            .find(|l| l.contains(&self.comment))
            .with_context(|| format!("rule {} not in:\n{out}", self.comment))?;
        line.split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("no packet count in {line:?}"))
    }
}

impl Drop for NatRule {
    fn drop(&mut self) {
        let _ = host::run("iptables", &self.args("-D"));
    }
}

/// Waits until something accepts connections on `addr` (a local address).
fn wait_listening(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() >= deadline {
            bail!("nothing listens on {addr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[test]
fn kube_proxy_dnat_never_sees_a_captured_connection() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, INDEX, &["v1"])?;
    // Same labels as sleep, but its cgroup is outside the capture root: never captured.
    let direct = fx.add_pod("direct", 40, &[("app", "sleep")], &[], true)?;
    let bridge = fx.net.bridge_ip();
    let subnet = format!("10.244.{INDEX}.0/24");

    // kube-proxy's endpoint for the VIP: a server on the host (no forwarding needed).
    let backend = SocketAddr::new(bridge.into(), KUBE_PROXY_BACKEND_PORT);
    let agent_bin = host::pod_agent_bin(Some(env!("CARGO_BIN_EXE_pod-agent")))?;
    let mut cmd = Command::new(&agent_bin);
    cmd.args(["http-server", "--listen", &backend.to_string()])
        .args(["--pod", "kube-proxy-endpoint", "--version", "kube-proxy"]);
    let logs = std::env::temp_dir().join(format!("{PREFIX}-{INDEX}-{}", std::process::id()));
    let _backend = Proc::spawn(cmd, "kube-proxy-endpoint", &logs)?;
    wait_listening(backend)?;

    // As on a node, the pods route Service VIPs to the host, where kube-proxy's rule waits.
    for pod in [&fx.sleep, &direct] {
        host::run(
            "ip",
            &[
                "-n",
                &pod.netns,
                "route",
                "add",
                SERVICE_CIDR,
                "via",
                &bridge.to_string(),
            ],
        )?;
    }
    let vip = reviews_vip();
    let dnat = NatRule::add(
        "PREROUTING",
        &[
            "-s",
            &subnet,
            "-d",
            &format!("{}/32", vip.ip()),
            "-p",
            "tcp",
            "--dport",
            &vip.port().to_string(),
            "-j",
            "DNAT",
            "--to-destination",
            &backend.to_string(),
        ],
        &format!("keel-test:{PREFIX}-{INDEX}"),
    )?;
    let get = |pod, count| {
        fx.agent
            .http_get(pod, &HttpGet::new(REVIEWS_URL).connect_to(vip).count(count))
    };

    // Without keel, the rule takes sleep's connection: it would see a captured one.
    let r = get(&fx.sleep, 2)?;
    ensure!(
        r.status(200) == 2 && r.by_version.get("kube-proxy") == Some(&2),
        "without keel, the DNAT must answer: {r:?}"
    );
    ensure!(dnat.packets()? > 0, "the DNAT rule counted nothing");

    let keel = fx.start_keel_strict()?;
    let before = dnat.packets()?;
    let r = get(&fx.sleep, 5)?;
    ensure_all_ok_via_proxy(&r, &fx.net)?;
    ensure!(
        r.by_version.get("v1") == Some(&5),
        "captured requests are keel's (v1): {:?}",
        r.by_version
    );
    ensure!(
        dnat.packets()? == before,
        "kube-proxy's rule saw a captured connection ({before} -> {} packets)",
        dnat.packets()?
    );

    // A pod keel does not capture still goes through kube-proxy's rule, untouched by keel.
    let r = get(&direct, 3)?;
    ensure!(
        r.status(200) == 3 && r.by_version.get("kube-proxy") == Some(&3),
        "the uncaptured pod must reach the DNAT's endpoint: {r:?}"
    );
    ensure!(
        dnat.packets()? > before,
        "the DNAT rule did not count the uncaptured pod"
    );
    let direct_ip = format!("{}:", direct.ip);
    ensure!(
        !keel
            .connections()?
            .iter()
            .any(|c| c.source_addr.starts_with(&direct_ip)),
        "keel saw a connection of the uncaptured pod"
    );
    let _ = std::fs::remove_dir_all(&logs);
    Ok(())
}
