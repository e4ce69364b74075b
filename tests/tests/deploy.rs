//! The cluster install, `config/deploy/`, checked without a cluster: every object is the Kubernetes
//! object it claims to be (k8s-openapi types, unknown fields rejected), in the files and in what
//! `kubectl kustomize` renders; the DaemonSet runs only flags the real `keel` accepts, probes paths
//! and the port its admin API serves, mounts what `--cgroup` names, holds three capabilities and no
//! privilege; the ClusterRole reads exactly the kinds keel watches; the CRDs serve Istio's three
//! versions of the five kinds; and the Containerfile's steps hold together (no builder runs here).
//!
//! That the probe paths answer and the preStop command stops a running keel is `admin.rs`'s
//! `prestop_quit_stops_keel_and_detaches`. No pod network: these tests need no root.

mod manifest;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Container;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use keel_tests::host;
use manifest as deploy;
use manifest::{Object, Parsed};

const NAMESPACE: &str = "keel-system";
const ACCOUNT: &str = "keel";
/// Istio's kinds Keel reads: kind, plural, short name (Istio gives Sidecar none).
const ISTIO_KINDS: &[(&str, &str, Option<&str>)] = &[
    ("VirtualService", "virtualservices", Some("vs")),
    ("DestinationRule", "destinationrules", Some("dr")),
    ("ServiceEntry", "serviceentries", Some("se")),
    ("Sidecar", "sidecars", None),
    ("Gateway", "gateways", Some("gw")),
];
/// The label that `kubectl apply -k config/deploy -l 'app.kubernetes.io/component!=istio-crds'`
/// (README: a cluster with Istio's CRDs) filters on.
const CRD_COMPONENT: (&str, &str) = ("app.kubernetes.io/component", "istio-crds");
/// Kubernetes' default NodePort range: kube-proxy DNATs these ports on node addresses.
const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// Every manifest file the kustomization lists, and the kustomization's `images` entry.
fn kustomization() -> Result<(Vec<String>, String)> {
    let path = deploy::deploy_dir().join("kustomization.yaml");
    let text = std::fs::read_to_string(&path)?;
    let docs = deploy::documents(&text)?;
    let k = docs.first().context("empty kustomization.yaml")?;
    let resources = k["resources"]
        .as_array()
        .context("kustomization.yaml has no resources list")?
        .iter()
        .map(|r| {
            r.as_str()
                .map(str::to_string)
                .context("a non-string resource")
        })
        .collect::<Result<Vec<_>>>()?;
    let images = k["images"].as_array().context("no images list")?;
    ensure!(images.len() == 1, "one image expected: {images:?}");
    let image = &images[0];
    ensure!(
        image["name"] == "keel",
        "the images entry must rename `keel`: {image}"
    );
    let renamed = format!(
        "{}:{}",
        image["newName"].as_str().context("images[0].newName")?,
        image["newTag"].as_str().context("images[0].newTag")?
    );
    Ok((resources, renamed))
}

/// Every object of every listed file, as written.
fn file_objects() -> Result<Vec<Parsed>> {
    let (resources, _) = kustomization()?;
    let mut all = Vec::new();
    for r in &resources {
        all.extend(deploy::parse_file(&deploy::deploy_dir().join(r))?);
    }
    Ok(all)
}

fn the_container(ds: &DaemonSet) -> Result<&Container> {
    let spec = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .context("DaemonSet without a pod spec")?;
    ensure!(
        spec.containers.len() == 1 && spec.init_containers.is_none(),
        "one container expected"
    );
    Ok(&spec.containers[0])
}

/// The DaemonSet's `keel run` flags, `--name` -> value (`None` for a switch), checked against
/// `keel run --help`: no unknown flag, a value where the flag takes one, none twice.
fn run_flags(container: &Container) -> Result<BTreeMap<String, Option<String>>> {
    ensure!(
        container.command.is_none(),
        "the container must run the image's entrypoint (keel), not {:?}",
        container.command
    );
    let args = container.args.clone().unwrap_or_default();
    ensure!(
        args.first().map(String::as_str) == Some("run"),
        "args must start with `run`: {args:?}"
    );
    let accepted = deploy::help_flags(&host::keel_bin()?, "run")?;
    let mut flags = BTreeMap::new();
    let mut rest = args[1..].iter();
    while let Some(arg) = rest.next() {
        let Some(name) = arg.strip_prefix("--") else {
            bail!("`keel run` takes no positional argument, the DaemonSet passes {arg:?}");
        };
        let (name, inline) = match name.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (name, None),
        };
        let takes_value = *accepted.get(name).with_context(|| {
            format!(
                "the DaemonSet passes --{name}, which `keel run --help` does not list ({:?})",
                accepted.keys().collect::<Vec<_>>()
            )
        })?;
        let value = match (takes_value, inline) {
            (true, Some(v)) => Some(v),
            (true, None) => Some(
                rest.next()
                    .filter(|v| !v.starts_with("--"))
                    .with_context(|| format!("--{name} needs a value"))?
                    .clone(),
            ),
            (false, None) => None,
            (false, Some(v)) => bail!("--{name} is a switch, the DaemonSet gives it {v:?}"),
        };
        ensure!(
            flags.insert(format!("--{name}"), value).is_none(),
            "--{name} is given twice"
        );
    }
    Ok(flags)
}

/// `$(VAR)` as the kubelet expands it from the container's env; every variable used must be set
/// from the Downward API, and gets a stand-in value of the right shape here (never dialled).
fn expand(container: &Container, value: &str) -> Result<String> {
    let env = container.env.clone().unwrap_or_default();
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("$(") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find(')')
            .with_context(|| format!("unclosed $( in {value:?}"))?;
        let var = &after[..end];
        let field = env
            .iter()
            .find(|e| e.name == var)
            .and_then(|e| e.value_from.as_ref())
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str())
            .with_context(|| format!("$({var}) is not an env var set from a fieldRef"))?;
        out.push_str(match field {
            "status.hostIP" => "192.0.2.10",
            "spec.nodeName" => "node-a",
            other => bail!("$({var}) comes from {other}, which this test has no stand-in for"),
        });
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn field_path<'a>(container: &'a Container, var: &str) -> Option<&'a str> {
    container
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == var)?
        .value_from
        .as_ref()?
        .field_ref
        .as_ref()
        .map(|f| f.field_path.as_str())
}

#[test]
fn every_object_is_the_kubernetes_object_it_claims_to_be() -> Result<()> {
    let (resources, image) = kustomization()?;
    // Every manifest in the directory is installed; nothing listed is missing.
    let mut on_disk = BTreeSet::new();
    for dir in ["", "crds"] {
        for e in std::fs::read_dir(deploy::deploy_dir().join(dir))? {
            let name = e?.file_name().to_string_lossy().into_owned();
            if name.ends_with(".yaml") && name != "kustomization.yaml" {
                on_disk.insert(if dir.is_empty() {
                    name
                } else {
                    format!("{dir}/{name}")
                });
            }
        }
    }
    let listed: BTreeSet<String> = resources.iter().cloned().collect();
    ensure!(
        on_disk == listed,
        "kustomization resources {listed:?} vs manifests on disk {on_disk:?}"
    );

    let files = file_objects()?;
    let rendered = deploy::render(&deploy::deploy_dir())?;
    let ids = |objs: &[Parsed]| objs.iter().map(|o| o.id.clone()).collect::<BTreeSet<_>>();
    ensure!(
        ids(&files) == ids(&rendered) && files.len() == rendered.len(),
        "kubectl kustomize renders {:?}, the files hold {:?}",
        ids(&rendered),
        ids(&files)
    );
    // Kustomize changes only the image: what is applied is what the files say.
    for f in &files {
        let r = rendered
            .iter()
            .find(|r| r.id == f.id)
            .with_context(|| format!("{} not rendered", f.id))?;
        let mut expected = f.raw.clone();
        if let Some(containers) = expected
            .pointer_mut("/spec/template/spec/containers")
            .and_then(|c| c.as_array_mut())
        {
            for c in containers {
                ensure!(c["image"] == "keel", "{}: image {}", f.id, c["image"]);
                c["image"] = serde_json::json!(image);
            }
        }
        ensure!(
            expected == r.raw,
            "{}: kubectl kustomize renders\n{}\nthe file says\n{}",
            f.id,
            serde_json::to_string_pretty(&r.raw)?,
            serde_json::to_string_pretty(&expected)?
        );
    }

    let count = |pred: fn(&Object) -> bool| rendered.iter().filter(|o| pred(&o.object)).count();
    ensure!(count(|o| matches!(o, Object::Namespace(_))) == 1);
    ensure!(count(|o| matches!(o, Object::ServiceAccount(_))) == 1);
    ensure!(count(|o| matches!(o, Object::ClusterRole(_))) == 1);
    ensure!(count(|o| matches!(o, Object::ClusterRoleBinding(_))) == 1);
    ensure!(count(|o| matches!(o, Object::DaemonSet(_))) == 1);
    ensure!(count(|o| matches!(o, Object::CustomResourceDefinition(_))) == ISTIO_KINDS.len());

    // Only the CRDs carry the label the Istio-cluster install filters out.
    for o in &rendered {
        let labelled = o.raw["metadata"]["labels"][CRD_COMPONENT.0] == CRD_COMPONENT.1;
        let is_crd = matches!(o.object, Object::CustomResourceDefinition(_));
        ensure!(
            labelled == is_crd,
            "{}: {}={} must be on the CRDs and only on them",
            o.id,
            CRD_COMPONENT.0,
            CRD_COMPONENT.1
        );
    }
    Ok(())
}

#[test]
fn the_strict_parse_rejects_unknown_and_misplaced_fields() -> Result<()> {
    let good = std::fs::read_to_string(deploy::deploy_dir().join("daemonset.yaml"))?;
    let doc = |text: &str| -> Result<serde_json::Value> {
        deploy::documents(text)?
            .into_iter()
            .next()
            .context("no document")
    };
    deploy::strict::<DaemonSet>(&doc(&good)?)?;
    for (from, to, field) in [
        ("readinessProbe:", "readinesProbe:", "readinesProbe"),
        (
            "  updateStrategy:",
            "  bogus: 1\n  updateStrategy:",
            "bogus",
        ),
        ("      - name: cgroup", "      - nme: cgroup", "nme"),
    ] {
        ensure!(good.contains(from), "{from:?} not in daemonset.yaml");
        let bad = good.replacen(from, to, 1);
        let err = match deploy::strict::<DaemonSet>(&doc(&bad)?) {
            Ok(_) => bail!("a DaemonSet with {field:?} parsed"),
            Err(e) => format!("{e:#}"),
        };
        ensure!(
            err.contains("unknown field") && err.contains(field),
            "the error must name the unknown field {field}: {err}"
        );
    }
    Ok(())
}

#[test]
fn daemonset_runs_only_flags_keel_accepts_with_valid_values() -> Result<()> {
    let ds = deploy::daemonset()?;
    let c = the_container(&ds)?;
    let flags = run_flags(c)?;
    let value = |name: &str| -> Result<&str> {
        flags
            .get(name)
            .and_then(|v| v.as_deref())
            .with_context(|| format!("the DaemonSet does not pass {name} VALUE: {flags:?}"))
    };
    ensure!(
        flags.get("--kube") == Some(&None),
        "cluster mode: --kube, {flags:?}"
    );
    ensure!(
        !flags.contains_key("--config") && !flags.contains_key("--kubeconfig"),
        "in a pod keel reads the API with its service account, not files: {flags:?}"
    );

    // The admin API is loopback only: keel refuses anything else.
    let admin: SocketAddr = value("--admin-addr")?.parse().context("--admin-addr")?;
    ensure!(admin.ip().is_loopback(), "--admin-addr {admin}");
    // Pods are redirected to the node's address; kube-proxy must not own the port.
    let proxy = value("--proxy-addr")?;
    let (host, port) = proxy
        .rsplit_once(':')
        .with_context(|| format!("--proxy-addr {proxy}"))?;
    ensure!(
        host == "$(HOST_IP)" && field_path(c, "HOST_IP") == Some("status.hostIP"),
        "--proxy-addr must be the node's IP from the Downward API: {proxy}"
    );
    let port: u16 = port
        .parse()
        .with_context(|| format!("--proxy-addr {proxy}"))?;
    ensure!(
        !NODE_PORTS.contains(&port) && port != admin.port(),
        "--proxy-addr port {port}"
    );
    ensure!(
        value("--node-name")? == "$(NODE_NAME)"
            && field_path(c, "NODE_NAME") == Some("spec.nodeName"),
        "--node-name must come from spec.nodeName"
    );

    // The binary's own parsers judge every value: clap parses each argument as it reads it and
    // stops at `--help`, so this exits 0 only if every flag and value before it is valid.
    let mut args = vec!["run".to_string()];
    for (name, v) in &flags {
        args.push(name.clone());
        if let Some(v) = v {
            args.push(expand(c, v)?);
        }
    }
    args.push("--help".to_string());
    let out = Command::new(host::keel_bin()?).args(&args).output()?;
    ensure!(
        out.status.success(),
        "keel {} rejects the DaemonSet's arguments: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

#[test]
fn probes_and_prestop_use_the_admin_api_keel_serves() -> Result<()> {
    let ds = deploy::daemonset()?;
    let c = the_container(&ds)?;
    let flags = run_flags(c)?;
    let admin: SocketAddr = flags
        .get("--admin-addr")
        .and_then(|v| v.as_deref())
        .context("no --admin-addr")?
        .parse()
        .context("--admin-addr")?;
    for (what, probe, path) in [
        ("readinessProbe", &c.readiness_probe, "/ready"),
        ("livenessProbe", &c.liveness_probe, "/live"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .with_context(|| format!("no {what} httpGet"))?;
        ensure!(
            get.path.as_deref() == Some(path),
            "{what} path {:?}",
            get.path
        );
        ensure!(
            get.port == IntOrString::Int(i32::from(admin.port())),
            "{what} port {:?}, admin API on {admin}",
            get.port
        );
        // A host-network pod is probed at the node IP unless `host` is set; the admin API is not there.
        ensure!(
            get.host.as_deref() == Some(admin.ip().to_string().as_str()),
            "{what} host {:?}, admin API on {admin}",
            get.host
        );
        ensure!(
            get.scheme.as_deref().unwrap_or("HTTP") == "HTTP",
            "{what} scheme"
        );
    }
    // The admin router answers those paths (that they answer 200 on a live keel is admin.rs's).
    let router =
        std::fs::read_to_string(host::workspace_root().join("proxy-user/src/admin/mod.rs"))?;
    for path in ["/ready", "/live", "/quitquitquit"] {
        ensure!(
            router.contains(&format!("\"{path}\" =>")),
            "the admin router has no {path} arm"
        );
    }

    // preStop: `keel quit` against the same admin address, with flags `keel quit` accepts.
    let command = c
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.exec.as_ref())
        .and_then(|e| e.command.clone())
        .context("no preStop exec command")?;
    let admin_text = admin.to_string();
    ensure!(
        command.len() == 4
            && command[0] == "/usr/local/bin/keel"
            && command[1] == "quit"
            && command[2] == "--admin-addr"
            && command[3] == admin_text,
        "preStop {command:?}"
    );
    let quit = deploy::help_flags(&host::keel_bin()?, "quit")?;
    ensure!(
        quit.get("admin-addr") == Some(&true),
        "keel quit flags {quit:?}"
    );
    let out = Command::new(host::keel_bin()?)
        .args(&command[1..])
        .arg("--help")
        .output()?;
    ensure!(
        out.status.success(),
        "keel rejects the preStop arguments: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    // The grace period covers `keel quit`'s wait.
    let help = String::from_utf8_lossy(
        &Command::new(host::keel_bin()?)
            .args(["quit", "--help"])
            .output()?
            .stdout,
    )
    .into_owned();
    let wait: i64 = help
        .lines()
        .find(|l| l.contains("--timeout"))
        .and_then(|l| l.split("[default: ").nth(1))
        .and_then(|d| d.split(']').next())
        .and_then(|d| d.parse().ok())
        .with_context(|| format!("no --timeout default in `keel quit --help`:\n{help}"))?;
    let grace = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.termination_grace_period_seconds)
        .context("no terminationGracePeriodSeconds")?;
    ensure!(
        grace > wait,
        "grace period {grace}s must exceed keel quit's {wait}s"
    );
    Ok(())
}

#[test]
fn daemonset_is_a_host_network_node_agent_with_three_capabilities() -> Result<()> {
    let ds = deploy::daemonset()?;
    let spec = ds.spec.as_ref().context("no spec")?;
    let pod = spec.template.spec.as_ref().context("no pod spec")?;
    let c = the_container(&ds)?;
    let meta = &ds.metadata;
    ensure!(meta.namespace.as_deref() == Some(NAMESPACE));
    ensure!(pod.service_account_name.as_deref() == Some(ACCOUNT));
    ensure!(pod.host_network == Some(true), "hostNetwork");
    ensure!(
        pod.dns_policy.as_deref() == Some("ClusterFirstWithHostNet"),
        "dnsPolicy {:?}",
        pod.dns_policy
    );
    ensure!(pod.priority_class_name.as_deref() == Some("system-node-critical"));
    let tolerations = pod.tolerations.clone().unwrap_or_default();
    ensure!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "a toleration of every taint: {tolerations:?}"
    );
    // Selector matches the template (the API server would refuse the DaemonSet otherwise).
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    for (k, v) in spec.selector.match_labels.clone().unwrap_or_default() {
        ensure!(
            labels.get(&k) == Some(&v),
            "selector {k}={v} not on the pods"
        );
    }

    let update = spec.update_strategy.as_ref().context("no updateStrategy")?;
    ensure!(update.type_.as_deref() == Some("RollingUpdate"));
    let rolling = update.rolling_update.as_ref().context("no rollingUpdate")?;
    ensure!(rolling.max_unavailable == Some(IntOrString::Int(1)));
    ensure!(
        rolling.max_surge == Some(IntOrString::Int(0)),
        "two keels on one node refuse each other's connections: no surge"
    );
    ensure!(
        c.ports.is_none(),
        "container ports of a host-network pod become host ports: {:?}",
        c.ports
    );

    let sc = c.security_context.as_ref().context("no securityContext")?;
    ensure!(sc.privileged == Some(false), "privileged");
    ensure!(sc.allow_privilege_escalation == Some(false));
    ensure!(sc.read_only_root_filesystem == Some(true));
    ensure!(
        sc.run_as_user == Some(0),
        "uid 0 holds the added capabilities"
    );
    ensure!(
        pod.security_context
            .as_ref()
            .and_then(|s| s.run_as_non_root)
            != Some(true)
    );
    let caps = sc.capabilities.as_ref().context("no capabilities")?;
    ensure!(caps.drop.clone().unwrap_or_default() == ["ALL"], "drop ALL");
    let added: BTreeSet<String> = caps.add.clone().unwrap_or_default().into_iter().collect();
    let wanted: BTreeSet<String> = ["BPF", "PERFMON", "NET_ADMIN"]
        .into_iter()
        .map(String::from)
        .collect();
    ensure!(
        added == wanted,
        "capabilities {added:?}: keel needs {wanted:?} (see proxy-user/src/ebpf/privilege.rs), \
         and nothing more"
    );
    let privilege =
        std::fs::read_to_string(host::workspace_root().join("proxy-user/src/ebpf/privilege.rs"))?;
    for cap in &wanted {
        ensure!(
            privilege.contains(&format!("CAP_{cap}")),
            "privilege.rs does not name CAP_{cap}"
        );
    }

    // Mounts: the host's cgroup hierarchy where --cgroup points, and the host's bpffs.
    let flags = run_flags(c)?;
    let cgroup = flags
        .get("--cgroup")
        .and_then(|v| v.as_deref())
        .context("no --cgroup")?;
    let mounts = c.volume_mounts.clone().unwrap_or_default();
    let volumes = pod.volumes.clone().unwrap_or_default();
    for (path, what) in [(cgroup, "--cgroup"), ("/sys/fs/bpf", "bpffs")] {
        let m = mounts
            .iter()
            .find(|m| m.mount_path == path)
            .with_context(|| format!("nothing mounted at {path} ({what})"))?;
        let v = volumes
            .iter()
            .find(|v| v.name == m.name)
            .with_context(|| format!("no volume {}", m.name))?;
        let host_path = v
            .host_path
            .as_ref()
            .with_context(|| format!("volume {} is not a hostPath", v.name))?;
        ensure!(
            host_path.path == path,
            "{path} must be the host's {path}, is {}",
            host_path.path
        );
        ensure!(host_path.type_.as_deref() == Some("Directory"));
    }
    ensure!(
        cgroup == "/sys/fs/cgroup",
        "--cgroup {cgroup}: the cgroup v2 root"
    );

    let resources = c.resources.as_ref().context("no resources")?;
    let requests = resources.requests.clone().unwrap_or_default();
    ensure!(
        requests.contains_key("cpu") && requests.contains_key("memory"),
        "requests {requests:?}"
    );
    let limits = resources.limits.clone().unwrap_or_default();
    ensure!(limits.contains_key("memory"), "a memory limit: {limits:?}");
    Ok(())
}

#[test]
fn cluster_role_reads_exactly_the_kinds_keel_watches() -> Result<()> {
    let objects = deploy::render(&deploy::deploy_dir())?;
    let mut granted = BTreeSet::new();
    let mut role_name = None;
    let mut binding = None;
    let mut accounts = Vec::new();
    let mut namespaces = Vec::new();
    for o in &objects {
        match &o.object {
            Object::ClusterRole(r) => {
                role_name = r.metadata.name.clone();
                ensure!(r.aggregation_rule.is_none(), "an aggregated role");
                for rule in r.rules.clone().unwrap_or_default() {
                    ensure!(
                        rule.non_resource_urls.is_none() && rule.resource_names.is_none(),
                        "rule {rule:?}"
                    );
                    let verbs: BTreeSet<&str> = rule.verbs.iter().map(String::as_str).collect();
                    ensure!(
                        verbs == BTreeSet::from(["get", "list", "watch"]),
                        "verbs {verbs:?}: read-only means get, list and watch"
                    );
                    for g in rule.api_groups.clone().unwrap_or_default() {
                        for r in rule.resources.clone().unwrap_or_default() {
                            ensure!(g != "*" && r != "*", "a wildcard in {rule:?}");
                            ensure!(
                                granted.insert((g.clone(), r.clone())),
                                "{g}/{r} granted twice"
                            );
                        }
                    }
                }
            }
            Object::ClusterRoleBinding(b) => binding = Some(b.clone()),
            Object::ServiceAccount(a) => accounts.push(a.metadata.clone()),
            Object::Namespace(n) => namespaces.push(n.metadata.name.clone()),
            _ => {}
        }
    }
    // What `keel run --kube` lists and watches, from its own table.
    let wanted: BTreeSet<(String, String)> = keel::source::kube::WATCHED
        .iter()
        .map(|w| (w.group.to_string(), w.plural.to_string()))
        .collect();
    ensure!(
        granted == wanted,
        "granted {granted:?}, keel watches {wanted:?}: missing {:?}, extra {:?}",
        wanted.difference(&granted).collect::<Vec<_>>(),
        granted.difference(&wanted).collect::<Vec<_>>()
    );
    let binding = binding.context("no ClusterRoleBinding")?;
    ensure!(
        binding.role_ref.kind == "ClusterRole"
            && Some(&binding.role_ref.name) == role_name.as_ref()
            && binding.role_ref.api_group == "rbac.authorization.k8s.io",
        "roleRef {:?}",
        binding.role_ref
    );
    let subjects = binding.subjects.unwrap_or_default();
    ensure!(
        subjects.len() == 1
            && subjects[0].kind == "ServiceAccount"
            && subjects[0].name == ACCOUNT
            && subjects[0].namespace.as_deref() == Some(NAMESPACE),
        "subjects {subjects:?}"
    );
    ensure!(
        accounts.len() == 1
            && accounts[0].name.as_deref() == Some(ACCOUNT)
            && accounts[0].namespace.as_deref() == Some(NAMESPACE),
        "service accounts {accounts:?}"
    );
    ensure!(
        namespaces == [Some(NAMESPACE.to_string())],
        "namespaces {namespaces:?}"
    );
    Ok(())
}

#[test]
fn crds_serve_istios_three_versions_of_the_five_kinds() -> Result<()> {
    let mut seen = BTreeSet::new();
    for o in deploy::render(&deploy::deploy_dir())? {
        let Object::CustomResourceDefinition(crd) = o.object else {
            continue;
        };
        let s = &crd.spec;
        let names = &s.names;
        let (kind, plural, short) = ISTIO_KINDS
            .iter()
            .find(|(k, _, _)| *k == names.kind)
            .with_context(|| format!("{}: not a kind keel reads", o.id))?;
        ensure!(seen.insert(*kind), "{kind} defined twice");
        ensure!(
            s.group == "networking.istio.io",
            "{kind}: group {}",
            s.group
        );
        ensure!(s.scope == "Namespaced", "{kind}: scope {}", s.scope);
        ensure!(
            names.plural == *plural
                && crd.metadata.name.as_deref()
                    == Some(format!("{plural}.networking.istio.io").as_str())
                && names.singular.as_deref() == Some(kind.to_ascii_lowercase().as_str())
                && names.list_kind.as_deref() == Some(format!("{kind}List").as_str()),
            "{kind}: names {names:?}, metadata.name {:?}",
            crd.metadata.name
        );
        ensure!(
            names.short_names.clone().unwrap_or_default()
                == short.map(|s| vec![s.to_string()]).unwrap_or_default(),
            "{kind}: shortNames {:?}, Istio has {short:?}",
            names.short_names
        );
        let versions: Vec<&str> = s.versions.iter().map(|v| v.name.as_str()).collect();
        ensure!(
            versions == ["v1", "v1beta1", "v1alpha3"],
            "{kind}: versions {versions:?}"
        );
        for v in &s.versions {
            ensure!(v.served, "{kind} {} not served", v.name);
            ensure!(
                v.storage == (v.name == "v1"),
                "{kind} {}: v1 is the one storage version",
                v.name
            );
            let schema = v
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .with_context(|| format!("{kind} {}: no schema", v.name))?;
            ensure!(
                schema.type_.as_deref() == Some("object")
                    && schema.x_kubernetes_preserve_unknown_fields == Some(true),
                "{kind} {}: schema must be an object keeping every field (keel validates)",
                v.name
            );
        }
    }
    ensure!(
        seen.len() == ISTIO_KINDS.len(),
        "CRDs for {seen:?}, keel reads {:?}",
        ISTIO_KINDS.iter().map(|k| k.0).collect::<Vec<_>>()
    );
    Ok(())
}

#[test]
fn containerfile_installs_the_binary_the_daemonset_runs() -> Result<()> {
    let root = host::workspace_root();
    let path = deploy::deploy_dir().join("Containerfile");
    let steps = deploy::containerfile(&std::fs::read_to_string(&path)?)?;
    let ignore = std::fs::read_to_string(root.join(".dockerignore"))
        .context("the build context (repository root) needs a .dockerignore: target/ is huge")?;
    let ignore: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    // Last matching pattern wins; this check knows `*`, exact paths and `!` exceptions only.
    let sent = |src: &str| -> Result<bool> {
        let mut sent = true;
        for p in &ignore {
            let (negated, p) = match p.strip_prefix('!') {
                Some(p) => (true, p),
                None => (false, *p),
            };
            ensure!(
                p == "*" || !p.contains(['*', '?', '[']),
                "unsupported .dockerignore pattern {p}"
            );
            if p == "*" || p == src || src.starts_with(&format!("{p}/")) {
                sent = negated;
            }
        }
        Ok(sent)
    };

    // Stages: name -> paths their COPYs installed.
    let mut stages: Vec<(Option<String>, String, BTreeSet<String>)> = Vec::new();
    let mut entrypoint = None;
    let mut context_sources = Vec::new();
    for s in &steps {
        match s.keyword.as_str() {
            "FROM" => {
                let words: Vec<&str> = s.rest.split_whitespace().collect();
                let (image, name) = match words.as_slice() {
                    [image] => (*image, None),
                    [image, as_, name] if as_.eq_ignore_ascii_case("as") => {
                        (*image, Some(name.to_string()))
                    }
                    _ => bail!("line {}: FROM {}", s.line, s.rest),
                };
                let last = image.rsplit('/').next().unwrap_or(image);
                let pinned = image.contains("@sha256:")
                    || last.split_once(':').is_some_and(|(_, tag)| tag != "latest");
                ensure!(
                    pinned,
                    "line {}: base image {image} is not pinned by tag",
                    s.line
                );
                stages.push((name, image.to_string(), BTreeSet::new()));
                entrypoint = None;
            }
            "COPY" => {
                let mut words: Vec<&str> = s.rest.split_whitespace().collect();
                let from = match words.first().and_then(|w| w.strip_prefix("--from=")) {
                    Some(f) => {
                        words.remove(0);
                        Some(f.to_string())
                    }
                    None => None,
                };
                let [src, dst] = words.as_slice() else {
                    bail!(
                        "line {}: COPY with one source and one destination expected",
                        s.line
                    );
                };
                match &from {
                    Some(stage) => {
                        let earlier = stages[..stages.len().saturating_sub(1)]
                            .iter()
                            .find(|(n, _, _)| n.as_deref() == Some(stage.as_str()))
                            .with_context(|| {
                                format!("line {}: no earlier stage {stage}", s.line)
                            })?;
                        ensure!(
                            earlier.2.contains(*src),
                            "line {}: stage {stage} installs {:?}, not {src}",
                            s.line,
                            earlier.2
                        );
                    }
                    None => {
                        ensure!(
                            root.join(src).is_file(),
                            "line {}: {src} is not in the build context (run `cargo xtask build`)",
                            s.line
                        );
                        ensure!(sent(src)?, "line {}: .dockerignore excludes {src}", s.line);
                        context_sources.push(src.to_string());
                    }
                }
                let stage = stages
                    .last_mut()
                    .with_context(|| format!("line {}: COPY before FROM", s.line))?;
                stage.2.insert(dst.to_string());
            }
            "ENTRYPOINT" => {
                let exec: Vec<String> = serde_json::from_str(&s.rest).with_context(|| {
                    format!("line {}: ENTRYPOINT must be the exec (JSON) form", s.line)
                })?;
                entrypoint = Some(exec);
            }
            "RUN" | "ARG" | "ENV" | "LABEL" | "USER" | "WORKDIR" => {}
            other => bail!("line {}: unexpected instruction {other}", s.line),
        }
    }
    ensure!(stages.len() >= 2, "a multi-stage build expected");
    let (_, runtime_image, installed) = stages.last().context("no stage")?;
    let entrypoint = entrypoint.context("the final stage has no ENTRYPOINT")?;
    ensure!(
        entrypoint.len() == 1 && installed.contains(&entrypoint[0]),
        "ENTRYPOINT {entrypoint:?} must be the binary the final stage installs ({installed:?})"
    );

    // The DaemonSet runs that binary: as entrypoint (no command override) and in its preStop.
    let ds = deploy::daemonset()?;
    let c = the_container(&ds)?;
    ensure!(
        c.command.is_none(),
        "the DaemonSet overrides the entrypoint"
    );
    let pre_stop = c
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.exec.as_ref())
        .and_then(|e| e.command.clone())
        .unwrap_or_default();
    ensure!(
        pre_stop.first() == Some(&entrypoint[0]),
        "preStop runs {pre_stop:?}, the image installs {}",
        entrypoint[0]
    );

    // The binary comes from the project's build and runs on the runtime's C library: distroless
    // cc-debian12 is Debian 12, glibc 2.36.
    ensure!(
        context_sources == ["target/release/keel"],
        "the image takes {context_sources:?} from the context; `cargo xtask build` makes \
         target/release/keel"
    );
    ensure!(
        runtime_image.contains("debian12") && stages[0].1.contains("bookworm"),
        "the checking stage ({}) and the runtime ({runtime_image}) must be the same Debian release",
        stages[0].1
    );
    let binary = std::fs::read(root.join("target/release/keel"))?;
    ensure!(
        binary.starts_with(b"\x7fELF"),
        "target/release/keel is not an ELF file"
    );
    let glibc = deploy::max_glibc(&binary).context("target/release/keel names no GLIBC version")?;
    ensure!(
        glibc <= (2, 36),
        "target/release/keel needs GLIBC_{}.{}, Debian 12 has 2.36",
        glibc.0,
        glibc.1
    );
    Ok(())
}
