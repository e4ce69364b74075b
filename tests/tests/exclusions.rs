//! B4 (`shared/reference/reliability-tests.md`): Istio's sidecar traffic annotations
//! (`traffic.sidecar.istio.io/{exclude,include}Outbound{Ports,IPRanges}`, and the inbound ones)
//! decide, per pod and in the kernel, which meshed connects go to keel and which go direct, in
//! Istio's order; a change applies to new connections within a second while open connections keep
//! their path; a bad value is rejected with file, resource, field and reason, and the last good
//! rules keep applying.
//!
//! The direct path is real: kube-proxy is emulated with a host DNAT of each VIP to a "direct" HTTP
//! server on the node side of the test network (the bridge IP), which sees the pod's own address
//! as its peer. Through keel, a VirtualService fault (418 `fault filter abort`, `server: envoy`) or
//! the backend pod (which sees the bridge IP, keel's address) answers instead.
//!
//! Regressions covered (Merbridge): #148 (a CIDR matched with the wrong shift; `*` in the include
//! list): ranges on a /21, at both of its edges and just outside, and `includeOutboundIPRanges: "*"`
//! with exclusions; #163 and #202 (inbound status and admin ports such as 15020/15021/15090 must
//! not be intercepted): keel intercepts no inbound connection, so a probe from the node and a call
//! from another pod to those ports of an annotated pod arrive directly.
//!
//! Subnet indices 203..=209 belong to this file.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::{reviews_vip, Fixture, REVIEWS_URL};
use keel_tests::config::service_yaml;
use keel_tests::figures;
use keel_tests::{ConnLoadReport, HttpGet, HttpGetReport, Keel, KeelOptions, Pod, SvcPort};
use serde_json::Value;

const PREFIX: &str = "ktexc";
/// Port of the node-side server that stands for every Service's endpoint on the direct path.
const DIRECT_PORT: u16 = 19090;
/// What the B4 target allows between an annotation change and the first new connection that
/// follows it.
const CHANGE_TARGET: Duration = Duration::from_secs(1);

const EXCLUDE_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
const INCLUDE_PORTS: &str = "traffic.sidecar.istio.io/includeOutboundPorts";
const EXCLUDE_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
const INCLUDE_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
const EXCLUDE_INBOUND: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
const INCLUDE_INBOUND: &str = "traffic.sidecar.istio.io/includeInboundPorts";

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn v4(a: u8, b: u8, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 96, a, b), port))
}

/// A meshed Service of the test: name, VIP, port.
struct Svc {
    name: &'static str,
    vip: SocketAddr,
}

/// Besides `reviews` (10.96.0.20:9080): a database port, an "external" /21 with its edges and its
/// neighbours, and an admin port inside the /21.
fn services() -> Vec<Svc> {
    vec![
        Svc {
            name: "db",
            vip: v4(0, 30, 5432),
        },
        Svc {
            name: "ext",
            vip: v4(8, 40, 9080),
        },
        Svc {
            name: "ext-first",
            vip: v4(8, 0, 9080),
        },
        Svc {
            name: "ext-last",
            vip: v4(15, 255, 9080),
        },
        Svc {
            name: "below",
            vip: v4(7, 255, 9080),
        },
        Svc {
            name: "above",
            vip: v4(16, 0, 9080),
        },
        Svc {
            name: "ext-admin",
            vip: v4(8, 41, 9091),
        },
    ]
}

/// Where a connection went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// Redirected to keel.
    Keel,
    /// To the original destination (the node-side server behind the emulated kube-proxy).
    Direct,
}

/// Every (VIP, port) of the test gets a host DNAT to the node-side "direct" server, and the client
/// pods route the service CIDR to the node, as on a real node with kube-proxy.
struct DirectPath {
    _rules: Vec<keel_tests::KubeProxyRule>,
}

fn direct_path(fx: &mut Fixture, vips: &[SocketAddr], clients: &[&Pod]) -> Result<DirectPath> {
    let endpoint = SocketAddr::new(fx.net.bridge_ip().into(), DIRECT_PORT);
    let mut cmd = Command::new(fx.agent.bin());
    cmd.args([
        "http-server",
        "--listen",
        &endpoint.to_string(),
        "--pod",
        "direct",
        "--version",
        "direct",
    ]);
    let server = fx
        .net
        .spawn_in_cgroup(&fx.net.system_cgroup(), cmd, "direct-endpoint")?;
    fx.servers.push(server);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&endpoint, Duration::from_millis(200)).is_err() {
        ensure!(
            Instant::now() < deadline,
            "the direct endpoint {endpoint} never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut rules = Vec::new();
    for vip in vips {
        rules.push(fx.net.kube_proxy(*vip, endpoint)?);
    }
    for pod in clients {
        fx.net.route_services_via_node(pod)?;
    }
    Ok(DirectPath { _rules: rules })
}

/// A VirtualService over every host of the test that aborts with 418: only keel can answer it.
fn abort_418(hosts: &[&str]) -> String {
    let mut y = String::from(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: abort\n  \
         namespace: default\nspec:\n  hosts:\n",
    );
    for h in hosts {
        y.push_str(&format!("  - {h}\n"));
    }
    y.push_str(
        "  http:\n  - fault:\n      abort:\n        httpStatus: 418\n        percentage:\n          \
         value: 100\n    route:\n    - destination:\n        host: reviews\n",
    );
    y
}

/// A numeric stat of keel's `/stats`.
fn stat(keel: &Keel, name: &str) -> Result<u64> {
    let stats = keel.stats()?;
    stats[name]
        .as_u64()
        .with_context(|| format!("/stats has no numeric {name}"))
}

/// `count` requests from `client` to `vip`, each on a new connection; checks every one took `want`
/// and returns how many connections were made.
fn expect_path(
    fx: &Fixture,
    client: &Pod,
    host: &str,
    vip: SocketAddr,
    want: Path,
    count: u32,
) -> Result<u64> {
    let url = format!("http://{host}:{}/", vip.port());
    let r = fx.agent.http_get(
        client,
        &HttpGet::new(url).connect_to(vip).count(count).new_conn(),
    )?;
    let what = format!("{}/{} -> {host} {vip}", client.namespace, client.name);
    check_report(&r, client, want, count).with_context(|| format!("{what}: {r:?}"))?;
    Ok(r.connections)
}

fn check_report(r: &HttpGetReport, client: &Pod, want: Path, count: u32) -> Result<()> {
    let n = u64::from(count);
    ensure!(
        r.errors == 0 && !r.timed_out && r.responses == n,
        "expected {n} responses"
    );
    match want {
        Path::Direct => {
            // The original destination answered, and saw the pod itself as its peer.
            ensure!(
                r.status(200) == n && r.by_version.get("direct") == Some(&n),
                "expected {n} x 200 from the direct endpoint"
            );
            ensure!(
                r.by_peer_ip.get(&client.ip.to_string()) == Some(&n),
                "the direct endpoint must see the pod ({}) as its peer",
                client.ip
            );
            ensure!(
                r.last_header_value("server") != Some("envoy") && r.status(418) == 0,
                "no keel behaviour on a direct connection"
            );
        }
        Path::Keel => {
            ensure!(
                r.with_body(418, "fault filter abort") == n,
                "expected {n} x keel's 418 fault abort"
            );
            ensure!(
                r.last_header_value("server") == Some("envoy"),
                "keel's local reply carries server: envoy"
            );
        }
    }
    Ok(())
}

/// `keel explain --admin ADDR --from POD URL`: (exit code, stdout).
fn explain(keel: &Keel, from: &str, url: &str) -> Result<(Option<i32>, String)> {
    let out = Command::new(keel_tests::host::keel_bin()?)
        .arg("explain")
        .arg("--admin")
        .arg(keel.options().admin_addr.to_string())
        .arg("--from")
        .arg(from)
        .arg(url)
        .output()
        .context("running keel explain")?;
    Ok((out.status.code(), String::from_utf8(out.stdout)?))
}

/// Whether `text` has a line `<label>  <value>` (the label column padded with spaces).
fn has_field(text: &str, label: &str, value: &str) -> bool {
    text.lines().any(|l| {
        l.strip_prefix(label)
            .is_some_and(|rest| rest.starts_with(' ') && rest.trim_start() == value)
    })
}

/// A GET from the node itself (the test process: not in any pod cgroup, as kubelet's probes) to
/// `addr`; returns the echo body's `peer` IP.
fn node_get_peer(addr: SocketAddr) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr} from the node"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET /healthz/ready HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    ensure!(resp.starts_with("HTTP/1.1 200"), "probe answer: {resp}");
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .context("no body")?;
    let v: Value = serde_json::from_str(body).context("echo body")?;
    let peer = v["peer"].as_str().context("no peer")?;
    let ip = peer.rsplit_once(':').map_or(peer, |(ip, _)| ip);
    Ok(ip.to_string())
}

/// Exclusions in Istio's order, per pod: an excluded port and an excluded /21 (at both edges) go
/// direct; `includeOutboundPorts` wins over the range exclusion; addresses just outside the range
/// and other ports are captured; another pod without annotations is captured everywhere. The
/// kernel counts the excluded connects and redirects none of them. Inbound connections to the
/// annotated pod (Istio's status ports, from the node and from another pod) arrive directly.
#[test]
fn b4_exclusions_follow_istio_order_per_pod() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 203, &["v1"])?;
    let svcs = services();
    for (i, s) in svcs.iter().enumerate() {
        let port_name = "http";
        let ip = match s.vip.ip() {
            std::net::IpAddr::V4(ip) => ip,
            std::net::IpAddr::V6(_) => bail!("v4 only"),
        };
        fx.add_service(service_yaml(
            s.name,
            "default",
            ip,
            &[SvcPort {
                name: port_name,
                port: s.vip.port(),
                target_port: 18000 + u16::try_from(i)?,
            }],
            &[("app", s.name)],
        ))?;
    }
    let mut hosts: Vec<&str> = svcs.iter().map(|s| s.name).collect();
    hosts.push("reviews");
    fx.config.write("abort.yaml", &abort_418(&hosts))?;
    let app = fx.add_pod(
        "app",
        3,
        &[("app", "app")],
        &[
            (EXCLUDE_PORTS, "5432"),
            (INCLUDE_PORTS, "9091"),
            (EXCLUDE_RANGES, "10.96.8.0/21"),
            (INCLUDE_RANGES, "*"),
            (EXCLUDE_INBOUND, "15020,15090"),
            (INCLUDE_INBOUND, "15021"),
        ],
        false,
    )?;
    let mut vips: Vec<SocketAddr> = svcs.iter().map(|s| s.vip).collect();
    vips.push(reviews_vip());
    let sleep = fx.sleep.clone();
    let _direct = direct_path(&mut fx, &vips, &[&app, &sleep])?;
    // Istio's status and telemetry ports on the annotated pod (Merbridge #163, #202).
    for port in [15020, 15021, 15090] {
        let server = fx.agent.http_server(&app, port, "status")?;
        fx.servers.push(server);
    }
    let keel = fx.start_keel_strict()?;

    let status = keel.admin_get("/config_status")?;
    let warnings = format!("{}", status["warnings"]);
    ensure!(
        warnings.contains("Pod default/app")
            && warnings.contains("accepted, not applied")
            && warnings.contains("includeInboundPorts"),
        "includeInboundPorts must be reported as not applied: {status}"
    );
    ensure!(
        stat(&keel, "keel.kernel_map.POD_TRAFFIC_RULES.entries")? == 1,
        "one pod has rules: {}",
        keel.stats()?
    );

    let redirected_before = stat(&keel, "keel.kernel_redirected")?;
    let excluded_before = stat(&keel, "keel.kernel_skipped_excluded")?;
    let (mut via_keel, mut direct) = (0u64, 0u64);
    let table: &[(&str, SocketAddr, Path, &str)] = &[
        ("reviews", reviews_vip(), Path::Keel, "not excluded"),
        ("db", v4(0, 30, 5432), Path::Direct, "excluded port"),
        ("ext", v4(8, 40, 9080), Path::Direct, "in the excluded /21"),
        (
            "ext-first",
            v4(8, 0, 9080),
            Path::Direct,
            "first address of the /21",
        ),
        (
            "ext-last",
            v4(15, 255, 9080),
            Path::Direct,
            "last address of the /21",
        ),
        ("below", v4(7, 255, 9080), Path::Keel, "just below the /21"),
        ("above", v4(16, 0, 9080), Path::Keel, "just above the /21"),
        (
            "ext-admin",
            v4(8, 41, 9091),
            Path::Keel,
            "included port beats the range exclusion",
        ),
    ];
    for (host, vip, want, why) in table {
        let n = expect_path(&fx, &app, host, *vip, *want, 3).with_context(|| why.to_string())?;
        match want {
            Path::Keel => via_keel += n,
            Path::Direct => direct += n,
        }
    }
    // The pod without annotations is captured everywhere.
    for (host, vip, _, _) in table {
        via_keel += expect_path(&fx, &sleep, host, *vip, Path::Keel, 2)?;
    }
    let redirected = stat(&keel, "keel.kernel_redirected")? - redirected_before;
    let excluded = stat(&keel, "keel.kernel_skipped_excluded")? - excluded_before;
    ensure!(
        redirected == via_keel && excluded == direct,
        "the kernel must redirect exactly the captured connections ({via_keel}, saw {redirected}) \
         and count exactly the excluded ones ({direct}, saw {excluded})"
    );
    figures::record(
        "b4",
        "excluded_connects_direct",
        excluded as f64,
        "connections",
    );
    figures::record(
        "b4",
        "captured_connects_redirected",
        redirected as f64,
        "connections",
    );

    // The admin API and explain show the pod's exclusions and the rule that decides.
    let dump = keel.admin_get("/config_dump")?;
    let cgroups = dump["kernel"]["pod_cgroups"]
        .as_array()
        .context("kernel.pod_cgroups")?;
    let entry = |pod: &str| cgroups.iter().find(|c| c["pod"] == pod).cloned();
    let app_entry = entry("default/app").context("default/app in pod_cgroups")?;
    ensure!(
        app_entry["traffic"][EXCLUDE_PORTS] == "5432"
            && app_entry["traffic"][INCLUDE_PORTS] == "9091"
            && app_entry["traffic"][EXCLUDE_RANGES] == "10.96.8.0/21"
            && app_entry["traffic"][INCLUDE_RANGES] == "*",
        "config_dump must show app's rules: {app_entry}"
    );
    ensure!(
        entry("default/sleep").is_some_and(|e| e.get("traffic").is_none()),
        "sleep has no rules: {cgroups:?}"
    );
    let (code, text) = explain(&keel, "default/app", "http://db:5432/")?;
    ensure!(
        code == Some(0)
            && has_field(
                &text,
                "Capture:",
                "direct: port 5432 is in traffic.sidecar.istio.io/excludeOutboundPorts"
            )
            && has_field(
                &text,
                "Result:",
                "direct to 10.96.0.30:5432: the pod's traffic annotations exclude this \
                 connection; keel never sees it, so no VirtualService or DestinationRule applies"
            ),
        "explain must name the excluding rule:\n{text}"
    );
    let (code, text) = explain(&keel, "default/app", "http://ext-admin:9091/")?;
    ensure!(
        code == Some(0)
            && has_field(
                &text,
                "Capture:",
                "captured: port 9091 is in traffic.sidecar.istio.io/includeOutboundPorts"
            )
            && text.contains("http[0]"),
        "explain must show the including rule and the routing that follows:\n{text}"
    );
    let (code, text) = explain(&keel, "default/sleep", "http://db:5432/")?;
    ensure!(
        code == Some(0) && !text.contains("Capture:") && text.contains("http[0]"),
        "a pod without annotations has no capture line:\n{text}"
    );

    // Inbound: nothing is intercepted. A probe from the node and a call from another pod reach the
    // annotated pod's status ports directly, whatever the inbound annotations say.
    for port in [15020, 15021, 15090] {
        let addr = SocketAddr::new(app.ip.into(), port);
        let peer = node_get_peer(addr)?;
        ensure!(
            peer == fx.net.bridge_ip().to_string(),
            "the node's probe of {addr} must arrive from the node, saw {peer}"
        );
        let r = fx.agent.http_get(
            &sleep,
            &HttpGet::new(format!("http://{addr}/")).connect_to(addr),
        )?;
        ensure!(
            r.status(200) == 1
                && r.by_version.get("status") == Some(&1)
                && r.by_peer_ip.get(&sleep.ip.to_string()) == Some(&1),
            "sleep -> {addr} must arrive directly from sleep: {r:?}"
        );
    }
    Ok(())
}

/// One `conn-load` run across an annotation change made at `t0` (Unix ms): every connection that
/// started before `t0` took `before`; from some point after `t0` every one takes `after`, never
/// `before` again. Returns that point's delay after `t0`.
fn switch_delay(r: &ConnLoadReport, t0: u64, before: &str, after: &str) -> Result<Duration> {
    ensure!(!r.samples.is_empty(), "no connections");
    let version = |s: &keel_tests::ConnSample| {
        if s.status == 200 {
            s.version.clone()
        } else {
            format!("status {} {}", s.status, s.error)
        }
    };
    for s in r.samples.iter().filter(|s| s.start_ms < t0) {
        ensure!(
            version(s) == before,
            "a connection before the change took {:?}, not {before}",
            version(s)
        );
    }
    let first = r
        .samples
        .iter()
        .position(|s| version(s) == after)
        .with_context(|| format!("no connection took {after} after the change"))?;
    for s in &r.samples[first..] {
        ensure!(
            version(s) == after,
            "after the switch at +{} ms a connection at +{} ms took {:?}",
            r.samples[first].start_ms as i64 - t0 as i64,
            s.start_ms as i64 - t0 as i64,
            version(s)
        );
    }
    for s in &r.samples[..first] {
        ensure!(
            version(s) == before,
            "before the switch a connection took {:?}",
            version(s)
        );
    }
    let after_samples = r.samples.len() - first;
    ensure!(
        after_samples >= 10,
        "too few connections after the switch ({after_samples}) to judge it"
    );
    Ok(Duration::from_millis(
        r.samples[first].start_ms.saturating_sub(t0),
    ))
}

/// While `pod` keeps one keep-alive connection to the reviews VIP and opens new ones at a steady
/// rate, `change` rewrites its annotations at t0: new connections take the new path within
/// [`CHANGE_TARGET`], the open connection keeps its old one. Returns the switch delay.
fn change_under_load(
    fx: &mut Fixture,
    pod: &Pod,
    before: &str,
    after: &str,
    change: &[(&str, &str)],
) -> Result<Duration> {
    let rate = 100;
    let run = Duration::from_millis(figures::sized(3000, 6000));
    let lead = Duration::from_millis(1000);
    let agent = fx.agent.clone();
    let agent = &agent;
    let (t0, loaded, held) = std::thread::scope(|s| -> Result<_> {
        let held = s.spawn(|| agent.http_load(pod, REVIEWS_URL, reviews_vip(), 20, 1, run + lead));
        let load = s.spawn(|| agent.conn_load(pod, reviews_vip(), "reviews:9080", rate, run));
        std::thread::sleep(lead);
        let t0 = unix_ms();
        fx.set_annotations(&pod.name, change)?;
        let loaded = load
            .join()
            .map_err(|_| anyhow::anyhow!("conn-load panicked"))??;
        let held = held
            .join()
            .map_err(|_| anyhow::anyhow!("http-load panicked"))??;
        Ok((t0, loaded, held))
    })?;
    let delay = switch_delay(&loaded, t0, before, after)?;
    ensure!(
        delay < CHANGE_TARGET,
        "new connections took the new path {delay:?} after the change (target {CHANGE_TARGET:?})"
    );
    // The connection that was open across the change kept its path.
    ensure!(
        held.connections == 1 && !held.samples.is_empty(),
        "the held connection must stay one connection: {} connections, {} requests",
        held.connections,
        held.samples.len()
    );
    let off: Vec<_> = held
        .samples
        .iter()
        .filter(|(_, status, version)| *status != 200 || version != before)
        .take(5)
        .collect();
    ensure!(
        off.is_empty(),
        "the open connection must keep its path ({before}): {off:?} of {}",
        held.samples.len()
    );
    Ok(delay)
}

/// An empty `includeOutboundIPRanges` captures nothing but `includeOutboundPorts`; annotation
/// changes apply to new connections within a second (measured both ways under a steady stream of
/// new connections) while an open connection keeps its path; a bad value is rejected with file,
/// resource, field and reason, and the last good rules keep applying; a removed pod's rules leave
/// the kernel.
#[test]
fn b4_annotation_changes_apply_to_new_connections() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 204, &["v1"])?;
    fx.add_service(service_yaml(
        "ext-admin",
        "default",
        Ipv4Addr::new(10, 96, 8, 41),
        &[SvcPort {
            name: "http",
            port: 9091,
            target_port: 9080,
        }],
        &[("app", "reviews")],
    ))?;
    let app = fx.add_pod(
        "app",
        3,
        &[("app", "app")],
        &[(INCLUDE_RANGES, ""), (INCLUDE_PORTS, "9091")],
        false,
    )?;
    let sleep = fx.sleep.clone();
    let _direct = direct_path(&mut fx, &[reviews_vip(), v4(8, 41, 9091)], &[&app, &sleep])?;
    let keel = fx.start_keel_strict()?;

    // Through keel the reviews backend answers (v1, seeing keel's address); direct, the node-side
    // endpoint (seeing the pod's).
    let agent = fx.agent.clone();
    let get = |pod: &Pod, host: &str, vip: SocketAddr| {
        agent.http_get(
            pod,
            &HttpGet::new(format!("http://{host}:{}/", vip.port()))
                .connect_to(vip)
                .count(3)
                .new_conn(),
        )
    };
    let bridge = fx.net.bridge_ip().to_string();
    let check = |r: &HttpGetReport, pod: &Pod, version: &str| -> Result<()> {
        let peer = if version == "direct" {
            pod.ip.to_string()
        } else {
            bridge.clone()
        };
        ensure!(
            r.status(200) == 3
                && r.by_version.get(version) == Some(&3)
                && r.by_peer_ip.get(&peer) == Some(&3),
            "{}: expected 3 x {version} seen from {peer}: {r:?}",
            pod.name
        );
        Ok(())
    };
    check(&get(&app, "reviews", reviews_vip())?, &app, "direct")
        .context("empty includeOutboundIPRanges captures no address")?;
    check(&get(&app, "ext-admin", v4(8, 41, 9091))?, &app, "v1")
        .context("includeOutboundPorts are captured even so")?;
    check(&get(&sleep, "reviews", reviews_vip())?, &sleep, "v1")
        .context("the pod without annotations is captured")?;

    // Back to no annotations: captured again; then excluding 9080: direct again.
    let to_captured = change_under_load(&mut fx, &app, "direct", "v1", &[])?;
    figures::record(
        "b4",
        "annotation_change_to_captured_ms",
        to_captured.as_secs_f64() * 1000.0,
        "ms",
    );
    let to_direct = change_under_load(&mut fx, &app, "v1", "direct", &[(EXCLUDE_PORTS, "9080")])?;
    figures::record(
        "b4",
        "annotation_change_to_direct_ms",
        to_direct.as_secs_f64() * 1000.0,
        "ms",
    );
    check(&get(&sleep, "reviews", reviews_vip())?, &sleep, "v1")
        .context("another pod's change leaves sleep captured")?;

    // A bad value: the pod is rejected with file, resource, field and reason; its last good
    // rules (9080 excluded) keep applying.
    fx.set_annotations("app", &[(EXCLUDE_PORTS, "9080,http")])?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let rejected = loop {
        let status = keel.admin_get("/config_status")?;
        let found = status["rejected"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["resource"] == "Pod default/app")
            .cloned();
        if let Some(r) = found {
            break r;
        }
        ensure!(
            Instant::now() < deadline,
            "the bad annotation was not rejected: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    ensure!(
        rejected["source"]
            .as_str()
            .is_some_and(|s| s.contains("pods.yaml:"))
            && rejected["field"]
                == "metadata.annotations[\"traffic.sidecar.istio.io/excludeOutboundPorts\"]"
            && rejected["reason"]
                == "\"http\" is not a port number (a comma-separated list of numbers 0 to 65535, no ranges)"
            && rejected["previous_version_serving"] == true,
        "the rejection must name file, resource, field and reason: {rejected}"
    );
    let out = keel_tests::keel::validate(fx.config.path())?;
    ensure!(
        out.code == Some(1)
            && out.combined().contains(
                "Pod default/app: metadata.annotations[\"traffic.sidecar.istio.io/excludeOutboundPorts\"]: \
                 \"http\" is not a port number"
            ),
        "keel validate must reject it the same way:\n{}",
        out.combined()
    );
    check(&get(&app, "reviews", reviews_vip())?, &app, "direct")
        .context("the last good rules keep applying")?;
    ensure!(stat(&keel, "keel.kernel_map.POD_TRAFFIC_RULES.entries")? == 1);

    // The pod goes: its rules leave the kernel with it.
    fx.remove_pod_resource("app")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while stat(&keel, "keel.kernel_map.POD_TRAFFIC_RULES.entries")? != 0 {
        ensure!(
            Instant::now() < deadline,
            "a removed pod's rules must leave the kernel: {}",
            keel.stats()?
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The rules map is part of the pinned install: a second `keel run` takes over with the rules in
/// force (the excluded pod stays direct, the other captured, before and after the old keel stops),
/// and `keel uninstall` leaves nothing behind.
#[test]
fn b4_rules_survive_a_takeover_and_uninstall_removes_them() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 205, &["v1"])?;
    fx.config.write("abort.yaml", &abort_418(&["reviews"]))?;
    let app = fx.add_pod(
        "app",
        3,
        &[("app", "app")],
        &[(EXCLUDE_PORTS, "9080")],
        false,
    )?;
    let sleep = fx.sleep.clone();
    let _direct = direct_path(&mut fx, &[reviews_vip()], &[&app, &sleep])?;
    let pins_before = keel_tests::keel::bpffs_entries();
    let mut old = fx.start_keel_strict()?;
    let both = |fx: &Fixture| -> Result<()> {
        expect_path(fx, &app, "reviews", reviews_vip(), Path::Direct, 2)?;
        expect_path(fx, &sleep, "reviews", reviews_vip(), Path::Keel, 2)?;
        Ok(())
    };
    both(&fx).context("first keel")?;
    let dir = keel_tests::keel::install_dir(&fx.net.cgroup_root(), fx.net.proxy_addr())?;
    ensure!(
        dir.join("abi3").join("POD_TRAFFIC_RULES").exists(),
        "the rules map is pinned with the others in {}",
        dir.display()
    );

    let new = Keel::start_with(&fx.net, KeelOptions::new(&fx.net, fx.config.path())?)?;
    both(&fx).context("both keels")?;
    old.terminate(Duration::from_secs(10))?;
    both(&fx).context("after the old keel stopped")?;
    ensure!(stat(&new, "keel.kernel_map.POD_TRAFFIC_RULES.entries")? == 1);

    drop(new);
    keel_tests::keel::uninstall(&fx.net.cgroup_root(), fx.net.proxy_addr())?;
    let left: Vec<_> = keel_tests::keel::bpffs_entries()
        .into_iter()
        .filter(|p| !pins_before.contains(p))
        .collect();
    ensure!(left.is_empty(), "pins left after uninstall: {left:?}");
    // Without keel the pods' connections go direct, the excluded and the captured one alike.
    expect_path(&fx, &sleep, "reviews", reviews_vip(), Path::Direct, 2)?;
    Ok(())
}
