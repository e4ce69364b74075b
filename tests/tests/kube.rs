//! `keel run --kube`: Keel reads its config from a (stand-in) Kubernetes API server through a
//! kubeconfig, finds this node's pods under kubelet-style cgroups by UID, and routes real traffic on
//! the pod network as `kubectl` tells it to.
//!
//! Subnet indices 198, 199 and 210..=214 belong to this file.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::{agent, reviews_vip, REVIEWS_IP, REVIEWS_PORT, REVIEWS_URL};
use keel_tests::apiserver::{kubectl_ok, ApiServer};
use keel_tests::{
    Agent, CgroupDriver, ConfigDir, Keel, KeelOptions, KubeMode, KubeletCgroup, Pod, PodNet, Proc,
    QosClass,
};
use serde_json::{json, Value};

const PREFIX: &str = "kk";
const NODE: &str = "node-a";
/// How long keel lets a pod cgroup that no Pod matches stay pending before it stops capturing it
/// (keel's `state::UNKNOWN_POD_GRACE`).
const UNKNOWN_POD_GRACE: Duration = Duration::from_secs(2);

/// A pod network whose pods are kubelet-style (cgroups named by UID), the API server describing
/// it, and keel reading that server. Field order is drop order.
struct KubeFixture {
    keel: Option<Keel>,
    /// Held so the backends live as long as the fixture.
    _servers: Vec<Proc>,
    api: ApiServer,
    dir: ConfigDir,
    agent: Agent,
    sleep: Pod,
    net: PodNet,
}

/// A running Pod object on `node`, as the API server holds it once kubelet started it.
fn pod_object(
    namespace: &str,
    name: &str,
    ip: std::net::Ipv4Addr,
    qos: QosClass,
    labels: Value,
    annotations: Value,
) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels,
            "annotations": annotations},
        "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "agent",
            "ports": [{"name": "http", "containerPort": REVIEWS_PORT}]}]},
        "status": {"phase": "Running", "podIP": ip.to_string(),
            "podIPs": [{"ip": ip.to_string()}], "qosClass": qos.as_str(),
            "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

/// Creates the Pod object, then, as kubelet does with the UID the API server assigned, the pod's
/// cgroups (`driver` layout) and network.
#[allow(clippy::too_many_arguments, reason = "one pod's every fact")]
fn start_pod(
    api: &ApiServer,
    net: &mut PodNet,
    namespace: &str,
    name: &str,
    suffix: u8,
    (qos, driver): (QosClass, CgroupDriver),
    labels: Value,
    annotations: Value,
) -> Result<Pod> {
    let created = api.create(pod_object(
        namespace,
        name,
        net.pod_ip(suffix),
        qos,
        labels,
        annotations,
    ))?;
    let uid = created["metadata"]["uid"]
        .as_str()
        .context("the API server assigned no uid")?;
    net.add_pod_kubelet(
        namespace,
        name,
        suffix,
        KubeletCgroup::new(uid, qos, driver),
    )
}

/// The reviews route: all traffic to `subset`.
fn reviews_vs(subset: &str) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {"hosts": ["reviews"], "http": [{"route": [
            {"destination": {"host": "reviews", "subset": subset}}]}]}
    })
}

impl KubeFixture {
    /// The client `default/sleep` and backends `reviews-v1`, `reviews-v2` (HTTP on 9080), one per
    /// cgroup driver and QoS class mix; Namespace `default` enrolled with
    /// `istio.io/dataplane-mode=ambient`; the reviews Service, its EndpointSlice, a
    /// DestinationRule with subsets v1 and v2, and a VirtualService sending everything to v1.
    fn start(index: u8) -> Result<KubeFixture> {
        let agent = agent()?;
        let mut net = PodNet::new(PREFIX, index)?;
        // As on a node: kubelet makes its QoS cgroups at start, long before pods come and go.
        net.create_kubelet_qos_cgroups()?;
        let dir = ConfigDir::new(&format!("{PREFIX}-{index}"))?;
        let api = ApiServer::start(dir.path())?;
        // `default` exists from the start, as in a cluster: enrol it.
        api.apply(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "default", "labels": {"istio.io/dataplane-mode": "ambient"}}}))?;
        api.create(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}))?;
        let sleep = start_pod(
            &api,
            &mut net,
            "default",
            "sleep",
            2,
            (QosClass::BestEffort, CgroupDriver::Systemd),
            json!({"app": "sleep"}),
            json!({}),
        )?;
        let mut servers = Vec::new();
        let mut endpoints = Vec::new();
        for (i, (v, qos, driver)) in [
            ("v1", QosClass::Guaranteed, CgroupDriver::Cgroupfs),
            ("v2", QosClass::Burstable, CgroupDriver::Systemd),
        ]
        .into_iter()
        .enumerate()
        {
            let name = format!("reviews-{v}");
            let pod = start_pod(
                &api,
                &mut net,
                "default",
                &name,
                u8::try_from(11 + i)?,
                (qos, driver),
                json!({"app": "reviews", "version": v}),
                json!({}),
            )?;
            servers.push(agent.http_server(&pod, REVIEWS_PORT, v)?);
            endpoints.push(json!({"addresses": [pod.ip.to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": NODE,
                "targetRef": {"kind": "Pod", "namespace": "default", "name": name}}));
        }
        api.create(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "reviews", "namespace": "default"},
            "spec": {"clusterIP": REVIEWS_IP.to_string(), "selector": {"app": "reviews"},
                "ports": [{"name": "http", "port": REVIEWS_PORT, "targetPort": REVIEWS_PORT}]}}))?;
        api.create(
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "reviews-x7k2p", "namespace": "default",
                "labels": {"kubernetes.io/service-name": "reviews"}},
            "addressType": "IPv4", "endpoints": endpoints,
            "ports": [{"name": "http", "port": REVIEWS_PORT, "protocol": "TCP"}]}),
        )?;
        api.create(
            json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "reviews", "namespace": "default"},
            "spec": {"host": "reviews", "subsets": [
                {"name": "v1", "labels": {"version": "v1"}},
                {"name": "v2", "labels": {"version": "v2"}}]}}),
        )?;
        api.create(reviews_vs("v1"))?;

        let mut opts = KeelOptions::new(&net, dir.path())?;
        opts.kube = Some(KubeMode {
            kubeconfig: Some(api.kubeconfig_path().to_path_buf()),
            node_name: NODE.to_string(),
        });
        let keel = Keel::start_with(&net, opts)?;
        Ok(KubeFixture {
            keel: Some(keel),
            _servers: servers,
            api,
            dir,
            agent,
            sleep,
            net,
        })
    }

    /// What keel captured and logged, for failure messages.
    fn diagnose(&self) -> String {
        match self.keel() {
            Ok(k) => format!(
                "captured pods {:?}; keel stderr:\n{}",
                k.admin_get("/config_dump")
                    .map(|d| d["captured_pods"].clone())
                    .unwrap_or_default(),
                k.stderr()
            ),
            Err(e) => e.to_string(),
        }
    }

    fn keel(&self) -> Result<&Keel> {
        self.keel.as_ref().context("keel is not running")
    }

    /// `count` GETs of reviews from `client`: responses by backend version (errors as `error`).
    fn versions_from(&self, client: &Pod, count: u32) -> Result<Vec<(String, u64)>> {
        let report = self.agent.http_get(
            client,
            &keel_tests::HttpGet::new(REVIEWS_URL)
                .connect_to(reviews_vip())
                .count(count),
        )?;
        let mut out: Vec<(String, u64)> = report.by_version.into_iter().collect();
        if report.errors > 0 {
            out.push(("error".to_string(), report.errors));
        }
        Ok(out)
    }

    fn versions(&self, count: u32) -> Result<Vec<(String, u64)>> {
        self.versions_from(&self.sleep, count)
    }

    /// Polls single requests until every response of a batch of 5 comes from `version`; returns
    /// how long that took.
    fn wait_for_version(&self, version: &str, within: Duration) -> Result<Duration> {
        let started = Instant::now();
        loop {
            let got = self.versions(5)?;
            if got == [(version.to_string(), 5)] {
                return Ok(started.elapsed());
            }
            if started.elapsed() > within {
                bail!(
                    "reviews still answers {got:?} {within:?} after the change (wanted {version})"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kubectl(&self, args: &[&str]) -> Result<String> {
        kubectl_ok(&self.api, self.dir.path(), args)
    }

    /// Writes `object` as YAML to `<dir>/<file>` for `kubectl -f`.
    fn write(&self, file: &str, object: &Value) -> Result<String> {
        let path = self.dir.path().join(file);
        std::fs::write(&path, serde_yaml::to_string(object)?)?;
        Ok(path.display().to_string())
    }
}

fn all(version: &str, n: u64) -> Vec<(String, u64)> {
    vec![(version.to_string(), n)]
}

/// A `kubectl replace` of the VirtualService reroutes within a second; a `kubectl delete` of it
/// falls back to the Service's endpoints (both versions).
#[test]
fn kubectl_changes_routing_within_a_second() -> Result<()> {
    let fx = KubeFixture::start(198)?;
    let first = fx.versions(20)?;
    ensure!(first == all("v1", 20), "{first:?}; {}", fx.diagnose());

    let file = fx.write("vs-v2.yaml", &reviews_vs("v2"))?;
    let out = fx.kubectl(&["replace", "-f", &file])?;
    ensure!(out.contains("replaced"), "kubectl said: {out}");
    let took = fx.wait_for_version("v2", Duration::from_secs(1))?;
    eprintln!("kubectl replace applied in {took:?}");
    ensure!(fx.versions(20)? == all("v2", 20));

    fx.kubectl(&["delete", "virtualservice", "reviews", "-n", "default"])?;
    let started = Instant::now();
    loop {
        let got = fx.versions(20)?;
        // Round robin over both endpoints once no VirtualService applies.
        if got == [("v1".to_string(), 10), ("v2".to_string(), 10)] {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(1),
            "after kubectl delete: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// An object the API server accepts but Keel rejects keeps its last good version serving, and the
/// rejection names the object and its resourceVersion.
#[test]
fn a_rejected_object_keeps_its_last_good_version() -> Result<()> {
    let fx = KubeFixture::start(199)?;
    let mut bad = reviews_vs("v2");
    bad["spec"]["http"][0]["route"][0]["weight"] = json!(-5);
    let file = fx.write("vs-bad.yaml", &bad)?;
    fx.kubectl(&["replace", "-f", &file])?;
    let rv = fx.api.get("VirtualService", "default", "reviews")?["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let started = Instant::now();
    let rejected = loop {
        let dump = fx.keel()?.admin_get("/config_dump")?;
        let rejected: Vec<Value> = dump["rejected"].as_array().cloned().unwrap_or_default();
        if !rejected.is_empty() {
            break rejected;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(2),
            "no rejection reported: {dump}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    ensure!(rejected.len() == 1, "{rejected:?}");
    let r = &rejected[0];
    ensure!(r["resource"] == "VirtualService default/reviews", "{r}");
    ensure!(
        r["source"] == format!("apiserver (resourceVersion {rv})"),
        "{r}"
    );
    ensure!(r["previous_version_serving"] == true, "{r}");
    ensure!(fx.versions(20)? == all("v1", 20));
    Ok(())
}

/// While the API server is down, the last config keeps serving and keel stays ready; when it is
/// back, keel re-lists and a change made then applies. A `410 Gone` (compacted history) re-lists
/// without a failed request.
#[test]
fn api_outage_and_410_keep_serving() -> Result<()> {
    let fx = KubeFixture::start(210)?;
    fx.api.stop()?;
    std::thread::sleep(Duration::from_secs(2));
    ensure!(fx.versions(20)? == all("v1", 20), "during the outage");
    let ready = keel_tests::http::get(
        fx.keel()?.options().admin_addr,
        "/ready",
        Duration::from_secs(1),
    )?;
    ensure!(
        ready.status == 200,
        "/ready during the outage: {}",
        ready.status
    );
    fx.api.restart()?;
    fx.api.apply(reviews_vs("v2"))?;
    // The watchers back off while the server is down; client-go's backoff is below 30 s.
    fx.wait_for_version("v2", Duration::from_secs(40))?;

    // Traffic flows across a compaction: every watcher gets 410 and lists again.
    let lists_before = list_requests(&fx.api);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let traffic = std::thread::scope(|scope| -> Result<Vec<(String, u64)>> {
        let load = scope.spawn(|| -> Result<Vec<(String, u64)>> {
            let mut total: Vec<(String, u64)> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                for (version, n) in fx.versions(20)? {
                    match total.iter_mut().find(|(v, _)| *v == version) {
                        Some((_, count)) => *count += n,
                        None => total.push((version, n)),
                    }
                }
            }
            Ok(total)
        });
        std::thread::sleep(Duration::from_millis(300));
        fx.api.compact();
        let started = Instant::now();
        while list_requests(&fx.api) < lists_before + 5
            && started.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        load.join()
            .map_err(|_| anyhow::anyhow!("traffic thread panicked"))?
    })?;
    ensure!(
        list_requests(&fx.api) >= lists_before + 5,
        "keel did not re-list after 410: {} lists before, {} after",
        lists_before,
        list_requests(&fx.api)
    );
    ensure!(
        traffic.len() == 1 && traffic[0].0 == "v2" && traffic[0].1 > 0,
        "requests across the re-list: {traffic:?}"
    );
    fx.api.apply(reviews_vs("v1"))?;
    fx.wait_for_version("v1", Duration::from_secs(1))?;
    Ok(())
}

/// List (not watch) requests the server has seen.
fn list_requests(api: &ApiServer) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.starts_with("GET ") && !r.contains("watch="))
        .count()
}

/// Istio's enrolment labels: a pod labelled `istio.io/dataplane-mode=none`, a pod with an Istio
/// sidecar, and a pod of a namespace without the label are not captured (their connections to the
/// VIP go direct, and the service CIDR leads nowhere on this host); relabelling the namespace
/// enrols its pod.
#[test]
fn enrolment_follows_istio_labels() -> Result<()> {
    let mut fx = KubeFixture::start(211)?;
    fx.api
        .create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "plain"}}))?;
    let mut add = |name: &str, ns: &str, suffix: u8, labels: Value, annotations: Value| {
        start_pod(
            &fx.api,
            &mut fx.net,
            ns,
            name,
            suffix,
            (QosClass::BestEffort, CgroupDriver::Systemd),
            labels,
            annotations,
        )
    };
    let opted_out = add(
        "opted-out",
        "default",
        20,
        json!({"istio.io/dataplane-mode": "none"}),
        json!({}),
    )?;
    let sidecar = add(
        "with-sidecar",
        "default",
        21,
        json!({}),
        json!({"sidecar.istio.io/status": "{\"containers\":[\"istio-proxy\"]}"}),
    )?;
    let other_ns = add("other", "plain", 22, json!({}), json!({}))?;
    std::thread::sleep(Duration::from_millis(1500));
    for pod in [&opted_out, &sidecar, &other_ns] {
        let got = fx.versions_from(pod, 1)?;
        ensure!(got == all("error", 1), "{} was captured: {got:?}", pod.name);
    }
    ensure!(fx.versions(4)? == all("v1", 4));
    let mut ns = fx.api.get("Namespace", "", "plain")?;
    ns["metadata"]["labels"] = json!({"istio.io/dataplane-mode": "ambient"});
    fx.api.replace(ns)?;
    let started = Instant::now();
    while fx.versions_from(&other_ns, 1)? != all("v1", 1) {
        ensure!(
            started.elapsed() < Duration::from_secs(2),
            "labelling the namespace did not enrol its pod"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// reliability-tests.md B8: pods come and go, one after another (200; 500 at full size), while
/// traffic flows: each new pod's first connection is captured and attributed to it (IPs are
/// reused, so an old pod would show), and no kernel entry outlives its pod.
#[test]
fn chaos_b8_pod_churn_captures_every_first_connection() -> Result<()> {
    let mut fx = KubeFixture::start(212)?;
    let churn: u32 = keel_tests::figures::sized(200, 500);
    let started = Instant::now();
    // The sleep pod calls reviews the whole time the pods come and go: no request may fail.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (agent, sleep) = (fx.agent.clone(), fx.sleep.clone());
    let (churned, background) = std::thread::scope(|scope| {
        let load = scope.spawn(|| -> Result<(u64, Vec<String>)> {
            let (mut served, mut failures) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let report = agent.http_get(
                    &sleep,
                    &keel_tests::HttpGet::new(REVIEWS_URL)
                        .connect_to(reviews_vip())
                        .count(20),
                )?;
                let v1 = report.by_version.get("v1").copied().unwrap_or(0);
                served += v1;
                if v1 < report.requested {
                    failures.push(format!(
                        "{} of {} at {:?}: statuses {:?}, versions {:?}, first error {:?}",
                        report.requested - v1,
                        report.requested,
                        started.elapsed(),
                        report.by_status,
                        report.by_version,
                        report.first_error
                    ));
                }
            }
            Ok((served, failures))
        });
        let churned = churn_pods(&mut fx, churn);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let background = load
            .join()
            .map_err(|_| anyhow::anyhow!("the traffic thread panicked"));
        (churned, background)
    });
    churned?;
    let (served, failures) = background??;
    if !failures.is_empty() {
        // What the kernel and keel counted (kernel skips, refusals) tells whether the hung batch
        // went direct or reached keel.
        eprintln!(
            "---- keel stats ----\n{:#}\n---- keel stderr ----\n{}\n---- end ----",
            fx.keel()?.stats()?,
            fx.keel()?.stderr()
        );
    }
    let stats = fx.keel()?.stats()?;
    let pending = (
        &stats["keel.connections_pending_pod_resolved"],
        &stats["keel.connections_pending_pod_passed_through"],
    );
    eprintln!(
        "{churn} pods in {:?}; meanwhile sleep got {served} responses from v1; connections from pending pods (resolved, passed through): {pending:?}",
        started.elapsed()
    );
    ensure!(
        served > 0 && failures.is_empty(),
        "traffic during the churn: {served} served by v1; failed batches: {failures:#?}"
    );
    check_only_fixture_pods_remain(&fx)?;
    let scenario = "B8 pod churn";
    keel_tests::figures::record(
        scenario,
        "pods created and deleted",
        f64::from(churn),
        "count",
    );
    keel_tests::figures::record(
        scenario,
        "first connections captured and attributed",
        f64::from(churn),
        "count",
    );
    keel_tests::figures::record(
        scenario,
        "requests served meanwhile (0 failed)",
        served as f64,
        "count",
    );
    keel_tests::figures::record(scenario, "churn time", started.elapsed().as_secs_f64(), "s");
    ensure!(fx.versions(10)? == all("v1", 10));
    Ok(())
}

/// Creates and deletes `churn` pods one after another (10 IPs, reused), checking that each new
/// pod's first connection is captured and attributed to it.
fn churn_pods(fx: &mut KubeFixture, churn: u32) -> Result<()> {
    for i in 0..churn {
        // Suffixes 100..=109 are reused every ten pods.
        let suffix = 100 + u8::try_from(i % 10)?;
        let name = format!("churn-{i}");
        let (qos, driver) = match i % 3 {
            0 => (QosClass::Guaranteed, CgroupDriver::Systemd),
            1 => (QosClass::Burstable, CgroupDriver::Cgroupfs),
            _ => (QosClass::BestEffort, CgroupDriver::Systemd),
        };
        // As a cluster does it: the Pod is scheduled (and seen by keel) before kubelet makes its
        // cgroup and the runtime starts its container, which connects at once.
        let ip = fx.net.pod_ip(suffix);
        let created = fx.api.create(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": "churn"}},
            "spec": {"nodeName": NODE, "containers": [{"name": "app"}]},
            "status": {"phase": "Pending", "qosClass": qos.as_str()}
        }))?;
        let uid = created["metadata"]["uid"]
            .as_str()
            .context("no uid")?
            .to_string();
        // No waiting for keel: the container connects the instant its cgroup exists, possibly
        // before keel has the Pod from the API server or has seen the cgroup. The kernel then
        // redirects it as a pending pod (a new child of a kubepods/QoS cgroup) and keel holds the
        // connection until it has resolved the pod.
        let pod = fx.net.add_pod_kubelet(
            "default",
            &name,
            suffix,
            KubeletCgroup::new(&uid, qos, driver),
        )?;
        let first = fx.versions_from(&pod, 1)?;
        ensure!(
            first == all("v1", 1),
            "pod {i}'s first connection: {first:?}"
        );
        let conns = fx.keel()?.connections()?;
        let last = conns
            .iter()
            .rev()
            .find(|c| c.source_addr.starts_with(&format!("{ip}:")))
            .context("no connection record for the new pod")?;
        ensure!(
            last.source_pod == format!("default/{name}"),
            "pod {i} ({ip}) was taken for {}",
            last.source_pod
        );
        // Running now: an endpoint-capable Pod object, as kubelet reports it.
        let mut running = fx.api.get("Pod", "default", &name)?;
        running["status"] =
            json!({"phase": "Running", "podIP": ip.to_string(), "qosClass": qos.as_str()});
        fx.api.replace(running)?;
        fx.net.remove_pod("default", &name)?;
        fx.api.delete("Pod", "default", &name)?;
    }
    Ok(())
}

/// A pod whose first connect comes before keel knows its Pod (the kernel redirects it as *pending*):
/// keel holds the connection until the Pod arrives and then serves it as that pod's, with the
/// pod's routing. A pod keel never learns is passed through to where it connected, unrouted, after
/// at most a second, and once the grace for unknown pods is over the kernel lets it go direct.
///
/// The destination is a ServiceEntry address that is also reachable directly (reviews-v2's pod
/// IP), whose VirtualService aborts with 418: 418 means keel routed the connection; 200 from v2
/// with keel's address as the peer means keel relayed it unrouted; 200 with the pod's own address
/// means it never went through keel.
#[test]
fn pending_pods_are_held_until_resolved_or_passed_through() -> Result<()> {
    let mut fx = KubeFixture::start(214)?;
    let legacy_ip = fx.net.pod_ip(12);
    fx.api.create(
        json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": {"name": "legacy", "namespace": "default"},
        "spec": {"hosts": ["legacy.internal"], "addresses": [legacy_ip.to_string()],
            "ports": [{"number": REVIEWS_PORT, "name": "http", "protocol": "HTTP"}],
            "location": "MESH_INTERNAL", "resolution": "STATIC",
            "endpoints": [{"address": legacy_ip.to_string()}]}}),
    )?;
    fx.api.create(
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "legacy", "namespace": "default"},
        "spec": {"hosts": ["legacy.internal"], "http": [{
            "fault": {"abort": {"httpStatus": 418, "percentage": {"value": 100.0}}},
            "route": [{"destination": {"host": "legacy.internal"}}]}]}}),
    )?;
    let legacy = SocketAddr::from((legacy_ip, REVIEWS_PORT));
    let get = keel_tests::HttpGet::new(format!("http://legacy.internal:{REVIEWS_PORT}/"))
        .connect_to(legacy)
        .count(1);
    // The route is live once a known pod gets the abort.
    let deadline = Instant::now() + Duration::from_secs(5);
    while fx.agent.http_get(&fx.sleep, &get)?.by_status.get("418") != Some(&1) {
        ensure!(
            Instant::now() < deadline,
            "the legacy.internal route never applied"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // (a) Scheduled late: the Pod exists but is bound to this node only after its container's
    // first connect has reached keel (as when keel's watch lags behind kubelet).
    let created = fx.api.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "late", "namespace": "default", "labels": {"app": "late"}},
        "spec": {"containers": [{"name": "app"}]},
        "status": {"phase": "Pending"}
    }))?;
    let uid = created["metadata"]["uid"]
        .as_str()
        .context("no uid")?
        .to_string();
    let late = fx.net.add_pod_kubelet(
        "default",
        "late",
        40,
        KubeletCgroup::new(&uid, QosClass::BestEffort, CgroupDriver::Systemd),
    )?;
    let before = counters(fx.keel()?)?;
    let report = std::thread::scope(|scope| -> Result<keel_tests::HttpGetReport> {
        let client = scope.spawn(|| fx.agent.http_get(&late, &get));
        wait_for_counter(fx.keel()?, "keel.connections_accepted", before.accepted + 1)?;
        let mut bound = fx.api.get("Pod", "default", "late")?;
        bound["spec"]["nodeName"] = json!(NODE);
        bound["status"] = json!({"phase": "Running", "podIP": late.ip.to_string(),
            "qosClass": QosClass::BestEffort.as_str()});
        fx.api.replace(bound)?;
        client
            .join()
            .map_err(|_| anyhow::anyhow!("the client thread panicked"))?
    })?;
    let after = counters(fx.keel()?)?;
    ensure!(
        report.by_status.get("418") == Some(&1),
        "the late pod's first request was not routed by keel: {report:?}\n{}",
        fx.diagnose()
    );
    ensure!(
        after.resolved == before.resolved + 1 && after.passed_through == before.passed_through,
        "pending counters (resolved, passed through): {before:?} -> {after:?}"
    );
    let record = fx
        .keel()?
        .connections()?
        .into_iter()
        .rev()
        .find(|c| c.source_addr.starts_with(&format!("{}:", late.ip)))
        .context("no connection record for the late pod")?;
    ensure!(
        record.source_pod == "default/late",
        "the late pod's connection was taken for {}",
        record.source_pod
    );

    // (b) Never known: a pod cgroup no Pod object matches.
    let stranger = fx.net.add_pod_kubelet(
        "default",
        "stranger",
        41,
        KubeletCgroup::new(
            "5d1e7c3a-0000-4000-8000-00000000beef",
            QosClass::Burstable,
            CgroupDriver::Cgroupfs,
        ),
    )?;
    let before = counters(fx.keel()?)?;
    let relayed = fx.agent.http_get(&stranger, &get)?;
    let after = counters(fx.keel()?)?;
    let bridge = fx.net.bridge_ip().to_string();
    ensure!(
        relayed.by_version.get("v2") == Some(&1) && relayed.by_peer_ip.get(&bridge) == Some(&1),
        "a pod keel does not know must be relayed unrouted to where it connected: {relayed:?}"
    );
    ensure!(
        after.passed_through == before.passed_through + 1 && after.resolved == before.resolved,
        "pending counters (resolved, passed through): {before:?} -> {after:?}"
    );
    // After the grace for unknown pods, keel marks the cgroup as not captured and the kernel
    // stops redirecting it: keel accepts nothing more from it.
    std::thread::sleep(UNKNOWN_POD_GRACE + Duration::from_millis(500));
    let before = counters(fx.keel()?)?;
    let direct = fx.agent.http_get(&stranger, &get)?;
    let after = counters(fx.keel()?)?;
    ensure!(
        direct.by_version.get("v2") == Some(&1)
            && direct.by_peer_ip.get(&stranger.ip.to_string()) == Some(&1),
        "after the grace the stranger must go direct: {direct:?}"
    );
    ensure!(
        after.accepted == before.accepted,
        "keel accepted a connection from a pod it skips: {before:?} -> {after:?}"
    );
    Ok(())
}

/// Keel's connection counters that tell the pending-pod paths apart.
#[derive(Debug, Clone, Copy)]
struct PendingCounters {
    accepted: u64,
    resolved: u64,
    passed_through: u64,
}

fn counters(keel: &Keel) -> Result<PendingCounters> {
    let stats = keel.stats()?;
    let get = |name: &str| {
        stats[name]
            .as_u64()
            .with_context(|| format!("no counter {name} in {stats:#}"))
    };
    Ok(PendingCounters {
        accepted: get("keel.connections_accepted")?,
        resolved: get("keel.connections_pending_pod_resolved")?,
        passed_through: get("keel.connections_pending_pod_passed_through")?,
    })
}

/// Polls keel's stats until `name` reaches `at_least` (within keel's pending wait, a second).
fn wait_for_counter(keel: &Keel, name: &str, at_least: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_millis(800);
    loop {
        let value = keel.stats()?[name].as_u64().unwrap_or(0);
        if value >= at_least {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{name} stayed at {value} (wanted {at_least})"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kernel entries: only the fixture's three pods remain, in keel's view and in the kernel map.
fn check_only_fixture_pods_remain(fx: &KubeFixture) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let dump = fx.keel()?.admin_get("/config_dump")?;
        let kernel = &dump["kernel"];
        let pods: Vec<String> = kernel["pod_cgroups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["pod"].as_str().map(str::to_string))
            .collect();
        let map_entries = kernel["maps"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["map"] == "POD_CGROUPS")
            .and_then(|m| m["entries"].as_u64());
        if pods == ["default/reviews-v1", "default/reviews-v2", "default/sleep"]
            && map_entries == Some(3)
        {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "stale kernel entries: keel maps {pods:?}, POD_CGROUPS holds {map_entries:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// In-cluster credentials: with no kubeconfig, keel uses the pod's service account, as a DaemonSet
/// pod does: `KUBERNETES_SERVICE_HOST`/`PORT` and the token and CA under
/// `/var/run/secrets/kubernetes.io/serviceaccount`. Keel runs in a private mount namespace whose
/// `/run` is a fresh tmpfs holding those files, so the host's `/run` is untouched.
#[test]
fn in_cluster_service_account_credentials() -> Result<()> {
    let mut fx = KubeFixture::start(213)?;
    // The fixture's keel used the kubeconfig; replace it with one that has only the pod's view.
    drop(fx.keel.take());
    let account = fx.dir.path().join("serviceaccount");
    std::fs::create_dir_all(&account)?;
    std::fs::write(account.join("token"), fx.api.token())?;
    std::fs::write(account.join("ca.crt"), fx.api.ca_pem())?;
    std::fs::write(account.join("namespace"), "keel-system")?;
    let keel_bin = keel_tests::host::keel_bin()?;
    let wrapper = fx.dir.path().join("keel-in-pod.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n\
             # keel as a pod sees it: service account files, the API's in-cluster address, no kubeconfig.\n\
             exec unshare --mount --propagation private /bin/sh -ec '\n\
             mount -t tmpfs tmpfs /run\n\
             mkdir -p /run/secrets/kubernetes.io\n\
             cp -r {account} /run/secrets/kubernetes.io/serviceaccount\n\
             export KUBERNETES_SERVICE_HOST=127.0.0.1 KUBERNETES_SERVICE_PORT={port} HOME=/nonexistent\n\
             unset KUBECONFIG\n\
             exec {keel} \"$@\"' keel \"$@\"\n",
            account = account.display(),
            port = fx.api.addr().port(),
            keel = keel_bin.display(),
        ),
    )?;
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let mut opts = KeelOptions::new(&fx.net, fx.dir.path())?;
    opts.binary = Some(wrapper);
    opts.kube = Some(KubeMode {
        kubeconfig: None,
        node_name: NODE.to_string(),
    });
    fx.keel = Some(Keel::start_with(&fx.net, opts)?);
    let got = fx.versions(10)?;
    ensure!(got == all("v1", 10), "{got:?}; {}", fx.diagnose());
    fx.api.apply(reviews_vs("v2"))?;
    fx.wait_for_version("v2", Duration::from_secs(1))?;
    Ok(())
}
