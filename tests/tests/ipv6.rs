//! B5 "IPv6 and dual stack" (reliability-tests.md): on a dual-stack pod network
//! ([`PodNet::new_dual_stack`], keel given an IPv4 and an IPv6 `--proxy-addr`), an AF_INET6 client
//! is routed exactly as an IPv4 one (VirtualService header match to a subset, the default rule, a
//! fault abort, response headers, `server: envoy`) and keel records the original destination of
//! each family: `[v6 VIP]:port` for native IPv6, the plain IPv4 `VIP:port` for a dual-stack socket
//! that connected to `::ffff:<v4 VIP>` (Cilium #9923: such a socket speaks IPv4 and must be handled
//! as the IPv4 Service). Loopback (`::1`, `::ffff:127.0.0.1`) and the pod's own addresses stay
//! direct, and a pod that is the only endpoint of its own IPv6 Service reaches itself through keel
//! (Cilium #26733 was per-packet service translation sending the pod's packet to itself from its own
//! address; keel captures at `connect()` and its upstream connection comes from the node, so the
//! reply path is an ordinary one). A `tcp-` port is relayed over IPv6, and with keel stopped or
//! killed IPv6 connects go direct within the bound IPv4 ones do (`lifecycle.rs`, `upgrade.rs`).
//!
//! Upstream counts come from the backends' request logs; "direct" is told by the peer a server saw
//! (its own loopback or address instead of keel's bridge address) and by keel's redirect counter.
//!
//! Subnet indices 217..=219 belong to this file.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::{agent, wait_until};
use keel_tests::figures::record;
use keel_tests::{
    Agent, ConfigDir, ConnectOutcome, ConnectionRecord, HttpGet, HttpGetReport, HttpServerOpts,
    Keel, KeelOptions, Pod, PodNet, Proc, RequestLog, RequestRecord,
};
use nix::sys::signal::Signal;

const PREFIX: &str = "ktv6";
const REVIEWS_FQDN: &str = "reviews.default.svc.cluster.local";
const REVIEWS_PORT: u16 = 9080;
const REVIEWS_V4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
/// `fd00:10:96::20`, in the blackholed IPv6 service CIDR.
const REVIEWS_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x20);
const ECHO_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x40);
const ECHO_PORT: u16 = 9000;
/// A ServiceEntry's address and host.
const EXT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x50);
const EXT_HOST: &str = "ext.example.com";
const SELF_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x31);
const SELF_V4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 31);
const SELF_PORT: u16 = 8080;
/// Envoy's fault filter reply body.
const ABORT_BODY: &str = "fault filter abort";
/// How long to keep watching a backend's log for requests that must never come.
const QUIET: Duration = Duration::from_millis(300);
/// With keel dead or stopped, a connect goes direct within this (as `lifecycle.rs` and `upgrade.rs`
/// bound it for IPv4: the kernel's heartbeat staleness is 120 ms).
const DIRECT_BOUND: Duration = Duration::from_millis(500);

/// After SIGSTOP, when the first probe connects: past the kernel's heartbeat staleness (120 ms).
const STALE_WAIT: Duration = Duration::from_millis(150);

/// Requests per routing case.
const N: u32 = 20;

/// Subsets v1/v2 and a VirtualService: `end-user: jason` -> v2 (response header `x-route:
/// jason`), `/teapot` -> fault abort 418, everything else -> v1 (response header `x-route:
/// default`).
const REVIEWS_ROUTING: &str = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: default
spec:
  host: reviews
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
spec:
  hosts:
  - reviews
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
    headers:
      response:
        set:
          x-route: jason
  - match:
    - uri:
        prefix: /teapot
    fault:
      abort:
        httpStatus: 418
        percentage:
          value: 100
    route:
    - destination:
        host: reviews
        subset: v1
  - route:
    - destination:
        host: reviews
        subset: v1
    headers:
      response:
        set:
          x-route: default
";

/// A Service `name` in `default` selecting `app: <name>` with one port, at `cluster_ips` (primary
/// first) of `families`.
fn service(
    name: &str,
    cluster_ips: &[IpAddr],
    families: &[&str],
    port_name: &str,
    port: u16,
) -> String {
    let ips: Vec<String> = cluster_ips.iter().map(ToString::to_string).collect();
    let policy = if families.len() > 1 {
        "RequireDualStack"
    } else {
        "SingleStack"
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  \
         type: ClusterIP\n  clusterIP: {}\n  clusterIPs: [{}]\n  ipFamilies: [{}]\n  \
         ipFamilyPolicy: {policy}\n  selector:\n    app: {name}\n  ports:\n  - name: {port_name}\n    \
         port: {port}\n    targetPort: {port}\n    protocol: TCP\n",
        ips[0],
        ips.join(", "),
        families.join(", ")
    )
}

/// A dual-stack network with `default/sleep` (.2) and logged `reviews-v1` (.11) / `reviews-v2`
/// (.12) serving HTTP on `listen_host:9080`, plus the config dir. Field order is drop order.
struct DualStack {
    servers: Vec<Proc>,
    config: ConfigDir,
    agent: Agent,
    sleep: Pod,
    logs: Vec<(String, RequestLog)>,
    /// `(pod, labels)` of every pod, for `pods.yaml`.
    pods: Vec<(Pod, Vec<(String, String)>)>,
    docs: Vec<String>,
    net: PodNet,
}

impl DualStack {
    fn new(index: u8, listen_host: &str) -> Result<DualStack> {
        let agent = agent()?;
        let mut net = PodNet::new_dual_stack(PREFIX, index)?;
        let config = ConfigDir::new(&format!("{PREFIX}-{index}"))?;
        let sleep = net.add_pod("default", "sleep", 2)?;
        let mut fx = DualStack {
            servers: Vec::new(),
            config,
            agent,
            sleep: sleep.clone(),
            logs: Vec::new(),
            pods: vec![(sleep, vec![("app".into(), "sleep".into())])],
            docs: Vec::new(),
            net,
        };
        for (i, v) in ["v1", "v2"].iter().enumerate() {
            let name = format!("reviews-{v}");
            let pod = fx.net.add_pod("default", &name, 11 + i as u8)?;
            let log = RequestLog::new(fx.net.work_dir().join(format!("{name}.requests.jsonl")));
            fx.servers.push(fx.agent.http_server_with_on(
                &pod,
                &format!("{listen_host}:{REVIEWS_PORT}"),
                v,
                &HttpServerOpts::logged(log.path()),
            )?);
            fx.logs.push((name, log));
            fx.pods.push((
                pod,
                vec![
                    ("app".into(), "reviews".into()),
                    ("version".into(), (*v).into()),
                ],
            ));
        }
        fx.docs.push(REVIEWS_ROUTING.to_string());
        Ok(fx)
    }

    /// Adds a captured pod `default/<name>` labelled `app: <name>`.
    fn add_pod(&mut self, name: &str, suffix: u8) -> Result<Pod> {
        let pod = self.net.add_pod("default", name, suffix)?;
        self.pods
            .push((pod.clone(), vec![("app".into(), name.into())]));
        Ok(pod)
    }

    /// Writes every Service/Istio document and `pods.yaml`, checks `keel validate` accepts them,
    /// and starts keel with both proxy addresses.
    fn start_keel(&self) -> Result<Keel> {
        self.start_keel_with(&[])
    }

    /// [`DualStack::start_keel`] with `extra` arguments to `keel run`.
    fn start_keel_with(&self, extra: &[&str]) -> Result<Keel> {
        self.config.write("config.yaml", &self.docs.join("---\n"))?;
        let pods: Vec<String> = self
            .pods
            .iter()
            .map(|(pod, labels)| {
                let l: Vec<(&str, &str)> = labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                keel_tests::pod_yaml(pod, &l, &[])
            })
            .collect();
        self.config.write("pods.yaml", &pods.join("---\n"))?;
        let out = keel_tests::keel::validate(self.config.path())?;
        ensure!(
            out.code == Some(0),
            "keel validate must accept this dual-stack config:\n{}",
            out.combined().trim()
        );
        let mut opts = KeelOptions::new(&self.net, self.config.path())?;
        opts.extra_args = extra.iter().map(ToString::to_string).collect();
        let keel = Keel::start_with(&self.net, opts)?;
        ensure!(
            keel.options().proxy_addr6 == Some(self.net.proxy_addr6()),
            "keel must run with the IPv6 proxy address too: {:?}",
            keel.options()
        );
        Ok(keel)
    }

    fn log(&self, name: &str) -> Result<&RequestLog> {
        self.logs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, l)| l)
            .with_context(|| format!("no logged backend {name}"))
    }

    /// Every backend's records so far, v1 then v2.
    fn upstream(&self) -> Result<(Vec<RequestRecord>, Vec<RequestRecord>)> {
        Ok((
            self.log("reviews-v1")?
                .settle(QUIET, Duration::from_secs(5))?,
            self.log("reviews-v2")?
                .settle(QUIET, Duration::from_secs(5))?,
        ))
    }
}

fn v6(ip: Ipv6Addr, port: u16) -> SocketAddr {
    SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0))
}

/// `::ffff:a.b.c.d` as a socket address.
fn v4_mapped(ip: Ipv4Addr, port: u16) -> SocketAddr {
    v6(ip.to_ipv6_mapped(), port)
}

fn stat(keel: &Keel, name: &str) -> Result<u64> {
    let stats = keel.stats()?;
    stats[name]
        .as_u64()
        .with_context(|| format!("/stats has no numeric {name}: {stats}"))
}

/// `count` requests of `path` (with `headers`) from `client`, connecting to `addr`.
fn get(
    fx: &DualStack,
    client: &Pod,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    count: u32,
) -> Result<HttpGetReport> {
    let mut req = HttpGet::new(format!("http://reviews:{REVIEWS_PORT}{path}"))
        .connect_to(addr)
        .count(count);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    fx.agent.http_get(client, &req)
}

/// All `n` responses were 200 from `version`, proxied by keel (`server: envoy`, `x-route`), and
/// the backends saw `peer` (keel's bridge address of the endpoint's family) as the client.
fn ensure_routed(
    what: &str,
    r: &HttpGetReport,
    n: u32,
    version: &str,
    route: &str,
    peer: IpAddr,
) -> Result<()> {
    let n = u64::from(n);
    ensure!(
        r.errors == 0 && r.status(200) == n && r.by_version.get(version) == Some(&n),
        "{what}: expected {n} x 200 from {version}, got statuses {:?}, versions {:?} (first error {:?})",
        r.by_status,
        r.by_version,
        r.first_error
    );
    ensure!(
        r.last_header_value("server") == Some("envoy")
            && r.last_header_value("x-route") == Some(route),
        "{what}: keel's response carries `server: envoy` and `x-route: {route}`: {:?}",
        r.last_headers
    );
    let peer = peer.to_string();
    ensure!(
        r.by_peer_ip.get(&peer) == Some(&n) && r.by_peer_ip.len() == 1,
        "{what}: the backend must see keel's {peer} as its peer: {:?}",
        r.by_peer_ip
    );
    Ok(())
}

/// All `n` responses were Envoy's fault abort: 418 `fault filter abort`.
fn ensure_aborted(what: &str, r: &HttpGetReport, n: u32) -> Result<()> {
    let n = u64::from(n);
    ensure!(
        r.errors == 0 && r.status(418) == n && r.with_body(418, ABORT_BODY) == n,
        "{what}: expected {n} x 418 {ABORT_BODY:?}, got statuses {:?}, bodies {:?}",
        r.by_status,
        r.other_bodies
    );
    ensure!(
        r.last_header_value("server") == Some("envoy"),
        "{what}: a fault abort is keel's local reply (`server: envoy`): {:?}",
        r.last_headers
    );
    Ok(())
}

/// The `/debug/connections` records of the connections whose client side was `local_addrs` (as
/// the client printed them: a dual-stack socket shows `[::ffff:a.b.c.d]:port`, which keel's IPv4
/// listener sees as `a.b.c.d:port`).
fn records_of(keel: &Keel, local_addrs: &[String]) -> Result<Vec<ConnectionRecord>> {
    let canonical = |s: &str| -> Option<SocketAddr> {
        let a: SocketAddr = s.parse().ok()?;
        Some(SocketAddr::new(a.ip().to_canonical(), a.port()))
    };
    let wanted: Vec<SocketAddr> = local_addrs.iter().filter_map(|a| canonical(a)).collect();
    ensure!(
        !wanted.is_empty(),
        "the client reported no local addresses: {local_addrs:?}"
    );
    Ok(keel
        .connections()?
        .into_iter()
        .filter(|r| canonical(&r.source_addr).is_some_and(|a| wanted.contains(&a)))
        .collect())
}

/// Every connection in `local_addrs` was accepted by keel as `default/<pod>`'s connection to
/// `original_dst` of `service` over `protocol`, and keel saw the client as `client_ip`.
fn ensure_records(
    keel: &Keel,
    local_addrs: &[String],
    pod: &str,
    client_ip: IpAddr,
    original_dst: SocketAddr,
    protocol: &str,
) -> Result<usize> {
    let records = records_of(keel, local_addrs)?;
    ensure!(
        records.len() == local_addrs.len(),
        "keel must have a record of each of the {} connections {local_addrs:?}: {records:?}",
        local_addrs.len()
    );
    for r in &records {
        let source_ip = r.source_addr.parse::<SocketAddr>().map(|a| a.ip()).ok();
        ensure!(
            r.original_dst == original_dst.to_string()
                && r.source_pod == format!("default/{pod}")
                && source_ip == Some(client_ip)
                && r.service == format!("{}.default.svc.cluster.local", service_of(original_dst))
                && r.protocol == protocol,
            "expected {pod} ({client_ip}) -> {original_dst} ({protocol}), got {r:?}"
        );
    }
    Ok(records.len())
}

/// Which test Service a VIP belongs to.
fn service_of(vip: SocketAddr) -> &'static str {
    match vip.ip() {
        IpAddr::V6(ip) if ip == ECHO_V6 => "echo",
        IpAddr::V6(ip) if ip == SELF_V6 => "selfie",
        _ => "reviews",
    }
}

/// (1) and (4): an IPv6-primary dual-stack Service. An AF_INET6 client and an IPv4 client get the
/// same routing (header match -> v2, fault abort 418, default -> v1, response headers); the
/// endpoints are the pods' IPv6 addresses (the Service's primary family), so keel connects to them
/// over IPv6 whichever family the client used; keel records `[fd00:10:96::20]:9080` as the original
/// destination of the IPv6 connections and `10.96.0.20:9080` of the IPv4 ones. A `tcp-` port of
/// an IPv6-only Service is relayed byte for byte.
#[test]
fn v6_service_routes_like_v4() -> Result<()> {
    let mut fx = DualStack::new(217, "[::]")?;
    fx.docs.push(service(
        "reviews",
        &[REVIEWS_V6.into(), REVIEWS_V4.into()],
        &["IPv6", "IPv4"],
        "http",
        REVIEWS_PORT,
    ));
    let echo = fx.add_pod("echo", 41)?;
    fx.servers.push(
        fx.agent
            .tcp_echo_server_on(&echo, &format!("[::]:{ECHO_PORT}"))?,
    );
    fx.docs.push(service(
        "echo",
        &[ECHO_V6.into()],
        &["IPv6"],
        "tcp-echo",
        ECHO_PORT,
    ));
    // A ServiceEntry with an IPv6 address and a static IPv6 endpoint (reviews-v2's address).
    let v2_ip6 = fx.pods[2].0.ip6.context("reviews-v2 has an IPv6 address")?;
    fx.docs.push(format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: ext\n  \
         namespace: default\nspec:\n  hosts:\n  - {EXT_HOST}\n  addresses:\n  - {EXT_V6}\n  ports:\n  \
         - number: 80\n    name: http\n    protocol: HTTP\n    targetPort: {REVIEWS_PORT}\n  \
         location: MESH_INTERNAL\n  resolution: STATIC\n  endpoints:\n  - address: {v2_ip6}\n"
    ));
    let keel = fx.start_keel_with(&[
        "--access-log",
        "/dev/stdout",
        "--access-log-encoding",
        "json",
    ])?;
    let dump = keel.admin_get("/config_dump")?;
    let families = dump["services"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["host"] == REVIEWS_FQDN)
        .map(|s| s["ip_families"].clone());
    ensure!(
        families == Some(serde_json::json!(["IPv6", "IPv4"])),
        "config_dump: reviews' families are IPv6, IPv4: {families:?}"
    );

    let sleep = fx.sleep.clone();
    let sleep6 = IpAddr::V6(sleep.ip6.context("sleep has an IPv6 address")?);
    let bridge6 = IpAddr::V6(fx.net.bridge_ip6());
    let vip6 = v6(REVIEWS_V6, REVIEWS_PORT);
    let vip4 = SocketAddr::new(REVIEWS_V4.into(), REVIEWS_PORT);
    let redirected_before = stat(&keel, "keel.kernel_redirected")?;

    let mut records = 0;
    let mut expected_v1 = 0;
    let mut expected_v2 = 0;
    for (family, vip, client_ip) in [("IPv6", vip6, sleep6), ("IPv4", vip4, IpAddr::V4(sleep.ip))] {
        let r = get(&fx, &sleep, vip, "/", &[], N)?;
        ensure_routed(
            &format!("{family} default"),
            &r,
            N,
            "v1",
            "default",
            bridge6,
        )?;
        // The first connections' local addresses are of the client's family.
        ensure!(
            r.local_addrs
                .iter()
                .all(|a| a.parse::<SocketAddr>().is_ok_and(|a| a.ip() == client_ip)),
            "{family}: the client connected from {client_ip}: {:?}",
            r.local_addrs
        );
        records += ensure_records(&keel, &r.local_addrs, "sleep", client_ip, vip, "http")?;
        let r = get(&fx, &sleep, vip, "/", &[("end-user", "jason")], N)?;
        ensure_routed(&format!("{family} jason"), &r, N, "v2", "jason", bridge6)?;
        let r = get(&fx, &sleep, vip, "/teapot", &[], N)?;
        ensure_aborted(&format!("{family} /teapot"), &r, N)?;
        expected_v1 += N as usize;
        expected_v2 += N as usize;
        record(
            "ipv6-routing",
            &format!("{family} requests"),
            f64::from(3 * N),
            "requests",
        );
    }

    // Upstream counts: exactly the routed requests, none of the aborted ones, every one from keel's
    // IPv6 address and with the request path the client sent.
    let (v1, v2) = fx.upstream()?;
    ensure!(
        v1.len() == expected_v1 && v2.len() == expected_v2,
        "upstream requests: v1 {} (want {expected_v1}), v2 {} (want {expected_v2}); the {} aborts \
         must reach no backend",
        v1.len(),
        v2.len(),
        2 * N
    );
    ensure!(
        v1.iter().chain(&v2).all(|r| r.path == "/"
            && r.peer
                .parse::<SocketAddr>()
                .is_ok_and(|p| p.ip() == bridge6)),
        "every upstream request is `/` from keel's {bridge6}: {:?}",
        v1.iter().chain(&v2).find(|r| r.path != "/"
            || !r
                .peer
                .parse::<SocketAddr>()
                .is_ok_and(|p| p.ip() == bridge6))
    );
    let redirected = stat(&keel, "keel.kernel_redirected")? - redirected_before;
    ensure!(
        redirected >= 6,
        "every client connection (6 runs, each at least one connection) is redirected by the \
         kernel: {redirected}"
    );
    // The access log says the same, per family: the original destination as the client dialled
    // it, the client's own address, the endpoint's IPv6 address.
    let sleep4 = IpAddr::V4(sleep.ip);
    let mut logged = Vec::new();
    wait_until(
        "the access log has every request",
        Duration::from_secs(5),
        || {
            logged = access_log(&keel)?;
            Ok(logged.len() >= 6 * N as usize)
        },
    )?;
    for (vip, client_ip) in [(vip6, sleep6), (vip4, sleep4)] {
        let lines: Vec<&serde_json::Value> = logged
            .iter()
            .filter(|l| l["downstream_local_address"] == vip.to_string().as_str())
            .collect();
        let from_client = |l: &&serde_json::Value| {
            l["downstream_remote_address"]
                .as_str()
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .is_some_and(|a| a.ip() == client_ip)
        };
        let to = |code: u64, version: &str, suffix: u8| {
            let host = v6(fx.net.pod_ip6(suffix), REVIEWS_PORT).to_string();
            let cluster = format!("outbound|{REVIEWS_PORT}|{version}|{REVIEWS_FQDN}");
            lines
                .iter()
                .filter(|l| {
                    l["response_code"] == code
                        && l["upstream_host"] == host.as_str()
                        && l["upstream_cluster"] == cluster.as_str()
                })
                .count()
        };
        let aborted = lines
            .iter()
            .filter(|l| l["response_code"] == 418 && l["upstream_host"].is_null())
            .count();
        ensure!(
            lines.len() == 3 * N as usize
                && lines.iter().all(from_client)
                && to(200, "v1", 11) == N as usize
                && to(200, "v2", 12) == N as usize
                && aborted == N as usize,
            "access log for {vip} (client {client_ip}): {} lines, want {} from the client: {N} \
             to v1's and {N} to v2's IPv6 address, {N} aborted without upstream: {lines:#?}",
            lines.len(),
            3 * N
        );
    }

    record("ipv6-routing", "upstream v1", v1.len() as f64, "requests");
    record("ipv6-routing", "upstream v2", v2.len() as f64, "requests");
    record(
        "ipv6-routing",
        "connection records checked",
        records as f64,
        "records",
    );

    // Pod to pod over IPv6 is direct (pod addresses are not Services), and nothing beyond the
    // pod network is reachable (no IPv6 default route in pods).
    let v1_direct = v6(fx.net.pod_ip6(11), REVIEWS_PORT);
    let r = fx.agent.http_get(
        &sleep,
        &HttpGet::new(format!("http://reviews:{REVIEWS_PORT}/"))
            .connect_to(v1_direct)
            .count(3),
    )?;
    ensure!(
        r.status(200) == 3
            && r.by_peer_ip.get(&sleep6.to_string()) == Some(&3)
            && r.last_header("server").is_none(),
        "sleep -> {v1_direct} goes direct (reviews-v1 sees sleep's own {sleep6}): {r:?}"
    );
    let outside = v6("2001:db8::1".parse()?, 80);
    let c = fx.agent.tcp_connect(&sleep, outside, None)?;
    ensure!(
        c.outcome == ConnectOutcome::Unreachable,
        "{outside} (outside the pod network) is unreachable from a pod: {c:?}"
    );

    // (4) A tcp port over IPv6: relayed, the original destination recorded as [v6 VIP]:port.
    let echo_vip = v6(ECHO_V6, ECHO_PORT);
    let payload = 256 * 1024;
    let r = fx.agent.tcp_echo(&sleep, echo_vip, payload)?;
    ensure!(
        r.error.is_none() && r.matched && r.got_eof && r.received == payload as u64,
        "TCP over IPv6: {payload} bytes echoed through keel and a clean EOF: {r:?}"
    );
    let local = r
        .local_addr
        .clone()
        .context("tcp-echo-client's local address")?;
    ensure_records(&keel, &[local], "sleep", sleep6, echo_vip, "tcp")?;
    record("ipv6-tcp", "bytes relayed", payload as f64, "bytes");

    // A ServiceEntry's IPv6 address, routed to its IPv6 static endpoint.
    let ext = v6(EXT_V6, 80);
    let r = fx.agent.http_get(
        &sleep,
        &HttpGet::new(format!("http://{EXT_HOST}/"))
            .connect_to(ext)
            .count(N),
    )?;
    ensure!(
        r.errors == 0
            && r.status(200) == u64::from(N)
            && r.by_pod.get("reviews-v2") == Some(&u64::from(N))
            && r.by_peer_ip.get(&bridge6.to_string()) == Some(&u64::from(N))
            && r.last_header_value("server") == Some("envoy"),
        "ServiceEntry {EXT_HOST} at {ext}: {N} x 200 from reviews-v2 over IPv6: {r:?}"
    );
    let records = records_of(&keel, &r.local_addrs)?;
    ensure!(
        !records.is_empty()
            && records
                .iter()
                .all(|c| c.original_dst == ext.to_string() && c.service == EXT_HOST),
        "keel's records of the ServiceEntry connections: {records:?}"
    );
    record("ipv6-service-entry", "requests", f64::from(N), "requests");
    Ok(())
}

/// keel's access log so far (`--access-log /dev/stdout --access-log-encoding json`), one JSON
/// object per line.
fn access_log(keel: &Keel) -> Result<Vec<serde_json::Value>> {
    keel.stdout()
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).with_context(|| format!("access log line {l:?}")))
        .collect()
}

/// (2) and (3). A dual-stack socket (AF_INET6, `IPV6_V6ONLY` 0) connecting to `::ffff:10.96.0.20`
/// is the IPv4 Service: captured, routed by its rules, recorded with the IPv4 original destination
/// (Cilium #9923); an `IPV6_V6ONLY` socket gets `ENETUNREACH` for that address, as without keel.
/// Loopback and the pod's own addresses are never captured, and a pod that is the only endpoint of
/// its own dual-stack Service reaches itself through keel at either VIP (Cilium #26733).
#[test]
fn dual_stack_socket_and_own_service() -> Result<()> {
    // IPv4-only backends (the Service is IPv4 single stack, so its endpoints are IPv4).
    let mut fx = DualStack::new(218, "0.0.0.0")?;
    fx.docs.push(service(
        "reviews",
        &[REVIEWS_V4.into()],
        &["IPv4"],
        "http",
        REVIEWS_PORT,
    ));
    let selfie = fx.add_pod("selfie", 31)?;
    fx.servers.push(
        fx.agent
            .http_server_on(&selfie, &format!("[::]:{SELF_PORT}"), "self")?,
    );
    fx.docs.push(service(
        "selfie",
        &[SELF_V6.into(), SELF_V4.into()],
        &["IPv6", "IPv4"],
        "http",
        SELF_PORT,
    ));
    let keel = fx.start_keel()?;
    let sleep = fx.sleep.clone();
    let bridge4 = IpAddr::V4(fx.net.bridge_ip());
    let mapped = v4_mapped(REVIEWS_V4, REVIEWS_PORT);
    let vip4 = SocketAddr::new(REVIEWS_V4.into(), REVIEWS_PORT);

    // (2) The same three rules as for IPv4, through an AF_INET6 socket to the v4-mapped VIP.
    let r = get(&fx, &sleep, mapped, "/", &[], N)?;
    ensure_routed("v4-mapped default", &r, N, "v1", "default", bridge4)?;
    ensure!(
        r.local_addrs.iter().all(|a| a
            .parse::<SocketAddr>()
            .is_ok_and(|a| a.is_ipv6() && a.ip().to_canonical() == IpAddr::V4(sleep.ip))),
        "the client's socket is AF_INET6, its local address v4-mapped: {:?}",
        r.local_addrs
    );
    let records = ensure_records(
        &keel,
        &r.local_addrs,
        "sleep",
        IpAddr::V4(sleep.ip),
        vip4,
        "http",
    )?;
    let r = get(&fx, &sleep, mapped, "/", &[("end-user", "jason")], N)?;
    ensure_routed("v4-mapped jason", &r, N, "v2", "jason", bridge4)?;
    let r = get(&fx, &sleep, mapped, "/teapot", &[], N)?;
    ensure_aborted("v4-mapped /teapot", &r, N)?;
    // And the plain IPv4 socket, for comparison: the same answers.
    let r = get(&fx, &sleep, vip4, "/", &[("end-user", "jason")], N)?;
    ensure_routed("IPv4 jason", &r, N, "v2", "jason", bridge4)?;
    let (v1, v2) = fx.upstream()?;
    ensure!(
        v1.len() == N as usize && v2.len() == 2 * N as usize,
        "upstream requests: v1 {} (want {N}), v2 {} (want {}); aborts reach no backend",
        v1.len(),
        v2.len(),
        2 * N
    );
    record(
        "ipv6-v4-mapped",
        "requests routed",
        f64::from(4 * N),
        "requests",
    );
    record(
        "ipv6-v4-mapped",
        "connection records checked",
        records as f64,
        "records",
    );

    // An IPV6_V6ONLY socket cannot speak IPv4: ENETUNREACH, as it gets without keel. The kernel
    // hook cannot see the option, so it has recorded the connect before the kernel refused it;
    // that record is the sweep's (never established, removed after 5 minutes): at most one.
    let cookies_before = stat(&keel, "keel.kernel_map.CONN_BY_COOKIE.entries")?;
    let c = fx.agent.tcp_connect_v6only(&sleep, mapped, None, true)?;
    ensure!(
        c.outcome == ConnectOutcome::Unreachable,
        "an IPV6_V6ONLY socket to {mapped} fails with ENETUNREACH: {c:?}"
    );
    let left =
        stat(&keel, "keel.kernel_map.CONN_BY_COOKIE.entries")?.saturating_sub(cookies_before);
    ensure!(
        left <= 1,
        "one failed IPV6_V6ONLY connect leaves at most its own record: {left}"
    );
    record(
        "ipv6-v4-mapped",
        "records left by a v6only connect",
        left as f64,
        "records",
    );
    // A dual-stack socket to a v4-mapped address that no Service owns goes direct (unreachable
    // here: pods have no default route).
    let c = fx
        .agent
        .tcp_connect(&sleep, v4_mapped(Ipv4Addr::new(10, 96, 0, 99), 80), None)?;
    ensure!(
        c.outcome == ConnectOutcome::Unreachable,
        "a v4-mapped address no Service owns is not captured: {c:?}"
    );

    // (3) A pod and its own Service. Through keel: the pod reaches itself, and sees keel's IPv6
    // bridge address as the peer.
    let self_url = format!("http://selfie:{SELF_PORT}/");
    let self_vip = v6(SELF_V6, SELF_PORT);
    let selfie6 = IpAddr::V6(selfie.ip6.context("selfie has an IPv6 address")?);
    // Its IPv4 VIP behaves the same (the endpoint is the pod's IPv6 address, the primary family).
    let peer6 = IpAddr::V6(fx.net.bridge_ip6()).to_string();
    let self_vip4 = SocketAddr::new(SELF_V4.into(), SELF_PORT);
    for (vip, client_ip) in [(self_vip, selfie6), (self_vip4, IpAddr::V4(selfie.ip))] {
        let r = fx
            .agent
            .http_get(&selfie, &HttpGet::new(&self_url).connect_to(vip).count(N))?;
        ensure!(
            r.errors == 0
                && r.status(200) == u64::from(N)
                && r.by_pod.get("selfie") == Some(&u64::from(N))
                && r.by_peer_ip.get(&peer6) == Some(&u64::from(N))
                && r.last_header_value("server") == Some("envoy"),
            "selfie -> its own Service at {vip}: {N} x 200 from itself via keel ({peer6}): {r:?}"
        );
        let selfie_records = records_of(&keel, &r.local_addrs)?;
        ensure!(
            !selfie_records.is_empty()
                && selfie_records
                    .iter()
                    .all(|c| c.source_pod == "default/selfie"
                        && c.original_dst == vip.to_string()
                        && c.source_addr
                            .parse::<SocketAddr>()
                            .is_ok_and(|a| a.ip() == client_ip)),
            "keel's records of selfie's connections to {vip}: {selfie_records:?}"
        );
    }
    record(
        "ipv6-own-service",
        "requests to itself via keel",
        f64::from(2 * N),
        "requests",
    );

    // Loopback and the pod's own addresses, on the Service's port: direct, never captured.
    let redirected_before = stat(&keel, "keel.kernel_redirected")?;
    let direct: [(SocketAddr, IpAddr); 4] = [
        (
            v6(Ipv6Addr::LOCALHOST, SELF_PORT),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ),
        (
            v4_mapped(Ipv4Addr::LOCALHOST, SELF_PORT),
            IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()),
        ),
        (SocketAddr::new(selfie6, SELF_PORT), selfie6),
        (
            v4_mapped(selfie.ip, SELF_PORT),
            IpAddr::V6(selfie.ip.to_ipv6_mapped()),
        ),
    ];
    for (addr, peer) in direct {
        let r = fx
            .agent
            .http_get(&selfie, &HttpGet::new(&self_url).connect_to(addr).count(3))?;
        ensure!(
            r.status(200) == 3
                && r.by_peer_ip.get(&peer.to_string()) == Some(&3)
                && r.last_header("server").is_none()
                && r.last_header("x-envoy-upstream-service-time").is_none(),
            "{addr} from selfie goes direct (the server sees {peer}, no proxy headers): {r:?}"
        );
    }
    let redirected = stat(&keel, "keel.kernel_redirected")? - redirected_before;
    ensure!(
        redirected == 0,
        "loopback and own-address connects must not be redirected: {redirected} were"
    );
    record(
        "ipv6-own-service",
        "direct connects redirected",
        redirected as f64,
        "connections",
    );
    Ok(())
}

/// (5) Fail-open over IPv6. With keel stopped (SIGSTOP) and then killed, IPv6 and IPv4 connects to
/// VIPs go direct within the same bound; after SIGCONT keel routes IPv6 again.
#[test]
fn v6_fail_open_when_keel_stops() -> Result<()> {
    let mut fx = DualStack::new(219, "[::]")?;
    fx.docs.push(service(
        "reviews",
        &[REVIEWS_V6.into(), REVIEWS_V4.into()],
        &["IPv6", "IPv4"],
        "http",
        REVIEWS_PORT,
    ));
    let mut keel = fx.start_keel()?;
    let sleep = fx.sleep.clone();
    let bridge6 = IpAddr::V6(fx.net.bridge_ip6());
    let vip6 = v6(REVIEWS_V6, REVIEWS_PORT);
    let vip4 = SocketAddr::new(REVIEWS_V4.into(), REVIEWS_PORT);
    let r = get(&fx, &sleep, vip6, "/", &[], 1)?;
    ensure_routed("before", &r, 1, "v1", "default", bridge6)?;

    // Stopped: once the heartbeat is stale, both families go direct (unreachable: no route).
    keel.signal(Signal::SIGSTOP)?;
    let stopped = Instant::now();
    let mut gaps = Vec::new();
    for vip in [vip6, vip4] {
        gaps.push(wait_direct(&fx, &sleep, vip, stopped, true)?);
    }
    keel.signal(Signal::SIGCONT)?;
    wait_until(
        "keel routes IPv6 again after SIGCONT",
        Duration::from_secs(5),
        || {
            let r = get(&fx, &sleep, vip6, "/", &[], 1)?;
            Ok(r.status(200) == 1 && r.last_header_value("server") == Some("envoy"))
        },
    )?;

    keel.kill()?;
    let killed = Instant::now();
    for vip in [vip6, vip4] {
        gaps.push(wait_direct(&fx, &sleep, vip, killed, false)?);
    }
    // Teardown removes the IPv6 side too (addresses, the blackhole route).
    let DualStack {
        servers,
        config,
        net,
        ..
    } = fx;
    drop(servers);
    drop(config);
    net.teardown()?;
    let left = keel_tests::podnet::leftovers(PREFIX, 219);
    let blackholes6 = keel_tests::host::run("ip", &["-6", "route", "show", "type", "blackhole"])?;
    ensure!(
        left.is_empty() && !blackholes6.contains("metric 40219"),
        "a dual-stack network leaves nothing behind: {left:?}; IPv6 blackholes: {blackholes6}"
    );
    for ((fault, family), gap) in [
        ("stop", "IPv6"),
        ("stop", "IPv4"),
        ("kill", "IPv6"),
        ("kill", "IPv4"),
    ]
    .iter()
    .zip(&gaps)
    {
        record(
            "ipv6-fail-open",
            &format!("{fault} {family} direct after"),
            gap.as_secs_f64() * 1000.0,
            "ms",
        );
    }
    Ok(())
}

/// Polls connects from `client` to `vip` until one goes direct (unreachable in a pod without
/// routes); fails unless that happens within [`DIRECT_BOUND`] of `since`, and returns when it did.
///
/// Killed: while the last heartbeat is fresh a connect is still redirected and refused at once (no
/// listener). Stopped: a redirected connect would complete into the stopped keel's backlog and wait
/// for an answer that never comes, so the first probe waits out the heartbeat's staleness
/// (120 ms) and every probe must then go direct.
fn wait_direct(
    fx: &DualStack,
    client: &Pod,
    vip: SocketAddr,
    since: Instant,
    stopped: bool,
) -> Result<Duration> {
    if stopped {
        std::thread::sleep(STALE_WAIT.saturating_sub(since.elapsed()));
    }
    loop {
        let c = fx.agent.tcp_connect(client, vip, None)?;
        let now = since.elapsed();
        match c.outcome {
            ConnectOutcome::Unreachable if now <= DIRECT_BOUND => return Ok(now),
            ConnectOutcome::Refused if !stopped && now < DIRECT_BOUND => {
                std::thread::sleep(Duration::from_millis(5));
            }
            _ => anyhow::bail!(
                "{now:?} after keel {}, a connect to {vip} must go direct within \
                 {DIRECT_BOUND:?}: {c:?}",
                if stopped { "stopped" } else { "died" }
            ),
        }
    }
}
