//! The stand-in Kubernetes API server (`keel_tests::apiserver`) against real clients: the real
//! `kubectl` creates, replaces, applies, gets and deletes every kind Keel reads, and raw HTTPS
//! checks the list/watch protocol (event order, bookmarks, 410 after compaction, pagination,
//! selectors, outages). No root and no pod network needed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use keel_tests::apiserver::client::{RawClient, RawWatch};
use keel_tests::apiserver::{kubectl, kubectl_ok, require_kubectl, ApiServer};
use keel_tests::ConfigDir;
use serde_json::{json, Value};

/// A running stand-in with a scratch directory for manifests and kubectl's cache.
struct Fixture {
    dir: ConfigDir,
    api: ApiServer,
}

impl Fixture {
    fn new(label: &str) -> Result<Fixture> {
        let dir = ConfigDir::new(label)?;
        let api = ApiServer::start(dir.path())?;
        Ok(Fixture { dir, api })
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("kube-cache")
    }

    /// `kubectl <args>`, which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> Result<String> {
        kubectl_ok(&self.api, &self.cache(), args)
    }

    /// `kubectl <args>`, which must fail; its stderr.
    fn fails(&self, args: &[&str]) -> Result<String> {
        let (ok, out, err) = kubectl(&self.api, &self.cache(), args)?;
        ensure!(
            !ok,
            "kubectl {} succeeded but should fail: {out}",
            args.join(" ")
        );
        Ok(err)
    }

    fn get_json(&self, args: &[&str]) -> Result<Value> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let out = self.ok(&all)?;
        serde_json::from_str(&out).with_context(|| format!("kubectl get output: {out}"))
    }

    fn write(&self, name: &str, v: &Value) -> Result<String> {
        let yaml = serde_yaml::to_string(v)?;
        Ok(self.dir.write(name, &yaml)?.display().to_string())
    }
}

/// One kind under test: how kubectl names it, a first and a changed manifest.
struct Case {
    /// `kubectl get <resource>` (the qualified plural for grouped kinds).
    resource: &'static str,
    /// What kubectl prints before `/<name> created`.
    printed: &'static str,
    namespaced: bool,
    first: Value,
    changed: Value,
}

fn obj(api_version: &str, kind: &str, name: &str, ns: Option<&str>, body: Value) -> Value {
    let mut o = json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name}});
    if let Some(ns) = ns {
        o["metadata"]["namespace"] = ns.into();
    }
    if let (Some(m), Some(b)) = (o.as_object_mut(), body.as_object()) {
        for (k, v) in b {
            m.insert(k.clone(), v.clone());
        }
    }
    o
}

fn cases() -> Vec<Case> {
    let ns = Some("mesh");
    let istio = |kind: &str, name: &str, spec1: Value, spec2: Value, resource, printed| Case {
        resource,
        printed,
        namespaced: true,
        first: obj(
            "networking.istio.io/v1",
            kind,
            name,
            ns,
            json!({"spec": spec1}),
        ),
        changed: obj(
            "networking.istio.io/v1",
            kind,
            name,
            ns,
            json!({"spec": spec2}),
        ),
    };
    vec![
        Case {
            resource: "nodes",
            printed: "node",
            namespaced: false,
            first: obj(
                "v1",
                "Node",
                "node-a",
                None,
                json!({"metadata": {"name": "node-a", "labels": {"kubernetes.io/hostname": "node-a"}}, "spec": {"podCIDR": "10.244.0.0/24"}}),
            ),
            changed: obj(
                "v1",
                "Node",
                "node-a",
                None,
                json!({"metadata": {"name": "node-a", "labels": {"kubernetes.io/hostname": "node-a"}}, "spec": {"podCIDR": "10.244.0.0/24", "unschedulable": true}}),
            ),
        },
        Case {
            resource: "pods",
            printed: "pod",
            namespaced: true,
            first: obj(
                "v1",
                "Pod",
                "web-1",
                ns,
                json!({"metadata": {"name": "web-1", "namespace": "mesh", "labels": {"app": "web"}}, "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "web:1"}]}}),
            ),
            changed: obj(
                "v1",
                "Pod",
                "web-1",
                ns,
                json!({"metadata": {"name": "web-1", "namespace": "mesh", "labels": {"app": "web", "version": "v2"}}, "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "web:2"}]}, "status": {"phase": "Running", "podIP": "10.244.0.5"}}),
            ),
        },
        Case {
            resource: "services",
            printed: "service",
            namespaced: true,
            first: obj(
                "v1",
                "Service",
                "web",
                ns,
                json!({"spec": {"clusterIP": "10.96.1.1", "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
            ),
            changed: obj(
                "v1",
                "Service",
                "web",
                ns,
                json!({"spec": {"clusterIP": "10.96.1.1", "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 9090}]}}),
            ),
        },
        Case {
            resource: "endpointslices.discovery.k8s.io",
            printed: "endpointslice.discovery.k8s.io",
            namespaced: true,
            first: obj(
                "discovery.k8s.io/v1",
                "EndpointSlice",
                "web-abc",
                ns,
                json!({"metadata": {"name": "web-abc", "namespace": "mesh", "labels": {"kubernetes.io/service-name": "web"}}, "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "endpoints": [{"addresses": ["10.244.0.5"], "conditions": {"ready": true, "serving": true, "terminating": false}, "nodeName": "node-a"}]}),
            ),
            changed: obj(
                "discovery.k8s.io/v1",
                "EndpointSlice",
                "web-abc",
                ns,
                json!({"metadata": {"name": "web-abc", "namespace": "mesh", "labels": {"kubernetes.io/service-name": "web"}}, "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "endpoints": [{"addresses": ["10.244.0.5"], "conditions": {"ready": false, "serving": true, "terminating": true}, "nodeName": "node-a"}]}),
            ),
        },
        istio(
            "VirtualService",
            "web",
            json!({"hosts": ["web"], "http": [{"route": [{"destination": {"host": "web", "subset": "v1"}}]}]}),
            json!({"hosts": ["web"], "http": [{"route": [{"destination": {"host": "web", "subset": "v2"}}]}]}),
            "virtualservices.networking.istio.io",
            "virtualservice.networking.istio.io",
        ),
        istio(
            "DestinationRule",
            "web",
            json!({"host": "web", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}),
            json!({"host": "web", "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]}),
            "destinationrules.networking.istio.io",
            "destinationrule.networking.istio.io",
        ),
        istio(
            "ServiceEntry",
            "ext",
            json!({"hosts": ["ext.example"], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}], "resolution": "STATIC", "endpoints": [{"address": "10.0.0.1"}]}),
            json!({"hosts": ["ext.example"], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}], "resolution": "STATIC", "endpoints": [{"address": "10.0.0.2"}]}),
            "serviceentries.networking.istio.io",
            "serviceentry.networking.istio.io",
        ),
        istio(
            "Sidecar",
            "default",
            json!({"egress": [{"hosts": ["./*"]}]}),
            json!({"egress": [{"hosts": ["./*", "istio-system/*"]}]}),
            "sidecars.networking.istio.io",
            "sidecar.networking.istio.io",
        ),
        istio(
            "Gateway",
            "gw",
            json!({"selector": {"istio": "ingressgateway"}, "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}),
            json!({"selector": {"istio": "ingressgateway"}, "servers": [{"port": {"number": 8080, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}),
            "gateways.networking.istio.io",
            "gateway.networking.istio.io",
        ),
        Case {
            resource: "customresourcedefinitions.apiextensions.k8s.io",
            printed: "customresourcedefinition.apiextensions.k8s.io",
            namespaced: false,
            first: obj(
                "apiextensions.k8s.io/v1",
                "CustomResourceDefinition",
                "widgets.example.com",
                None,
                json!({"spec": {"group": "example.com", "names": {"kind": "Widget", "plural": "widgets"}, "scope": "Namespaced", "versions": [{"name": "v1", "served": true, "storage": true}]}}),
            ),
            changed: obj(
                "apiextensions.k8s.io/v1",
                "CustomResourceDefinition",
                "widgets.example.com",
                None,
                json!({"spec": {"group": "example.com", "names": {"kind": "Widget", "plural": "widgets"}, "scope": "Namespaced", "versions": [{"name": "v1", "served": true, "storage": true}, {"name": "v2", "served": true, "storage": false}]}}),
            ),
        },
    ]
}

fn name_of(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or("")
}

fn rv_of(v: &Value) -> Result<u64> {
    v["metadata"]["resourceVersion"]
        .as_str()
        .context("no metadata.resourceVersion")?
        .parse()
        .context("resourceVersion is not a number")
}

#[test]
fn kubectl_creates_replaces_gets_and_deletes_every_kind() -> Result<()> {
    require_kubectl()?;
    let f = Fixture::new("api-kinds")?;
    // Namespace first: the namespaced kinds below live in it.
    let ns_file = f.write("ns.yaml", &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "mesh", "labels": {"istio-injection": "enabled"}}}))?;
    ensure!(f.ok(&["create", "-f", &ns_file])?.trim() == "namespace/mesh created");
    let ns = f.get_json(&["namespace", "mesh"])?;
    ensure!(ns["status"]["phase"] == "Active", "{ns}");
    ensure!(
        ns["metadata"]["labels"]["kubernetes.io/metadata.name"] == "mesh",
        "{ns}"
    );
    ensure!(
        ns["metadata"]["labels"]["istio-injection"] == "enabled",
        "{ns}"
    );

    for case in cases() {
        let name = name_of(&case.first).to_string();
        let scope: Vec<&str> = if case.namespaced {
            vec!["-n", "mesh"]
        } else {
            vec![]
        };
        let with_scope = |args: &[&str]| -> Vec<String> {
            args.iter()
                .chain(scope.iter())
                .map(|s| s.to_string())
                .collect()
        };
        let run_ok = |args: Vec<String>| -> Result<String> {
            f.ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
        };
        let run_fails = |args: Vec<String>| -> Result<String> {
            f.fails(&args.iter().map(String::as_str).collect::<Vec<_>>())
        };
        let get = || -> Result<Value> {
            let out = run_ok(with_scope(&["get", case.resource, &name, "-o", "json"]))?;
            Ok(serde_json::from_str(&out)?)
        };
        let file = f.write(&format!("{}-1.yaml", case.resource), &case.first)?;
        let before = f.api.resource_version();

        // create
        let out = run_ok(vec!["create".into(), "-f".into(), file.clone()])?;
        ensure!(
            out.trim() == format!("{}/{name} created", case.printed),
            "{}: {out}",
            case.resource
        );
        let created = get()?;
        ensure!(created["kind"] == case.first["kind"], "{created}");
        ensure!(
            created["apiVersion"] == case.first["apiVersion"],
            "{created}"
        );
        ensure!(name_of(&created) == name);
        if case.namespaced {
            ensure!(created["metadata"]["namespace"] == "mesh", "{created}");
        } else {
            ensure!(created["metadata"].get("namespace").is_none(), "{created}");
        }
        let uid = created["metadata"]["uid"]
            .as_str()
            .context("uid")?
            .to_string();
        ensure!(
            uid.len() == 36 && uid.matches('-').count() == 4,
            "uid {uid}"
        );
        let rv1 = rv_of(&created)?;
        ensure!(
            rv1 == before + 1,
            "{}: resourceVersion {rv1} after {before}",
            case.resource
        );
        let ts = created["metadata"]["creationTimestamp"]
            .as_str()
            .context("creationTimestamp")?;
        ensure!(
            ts.len() == 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "timestamp {ts}"
        );
        let custom = case.resource.contains("istio") || case.resource.contains("apiextensions");
        ensure!(
            created["metadata"]["generation"] == if custom { json!(1) } else { Value::Null },
            "{}: generation {}",
            case.resource,
            created["metadata"]["generation"]
        );
        for field in ["spec", "endpoints", "ports", "addressType"] {
            if let Some(want) = case.first.get(field) {
                if field == "spec" && case.resource == "services" {
                    // The server adds clusterIPs.
                    ensure!(created["spec"]["ports"] == want["ports"], "{created}");
                    ensure!(
                        created["spec"]["clusterIPs"] == json!(["10.96.1.1"]),
                        "{created}"
                    );
                } else {
                    ensure!(
                        &created[field] == want,
                        "{}: {field}: {} != {want}",
                        case.resource,
                        created[field]
                    );
                }
            }
        }
        // The Rust view is the same object.
        let kind = case.first["kind"].as_str().unwrap_or("");
        let direct = f.api.get(kind, "mesh", &name)?;
        ensure!(direct["metadata"]["uid"] == uid.as_str());

        // create again: AlreadyExists, as kubectl prints it
        let err = run_fails(vec!["create".into(), "-f".into(), file.clone()])?;
        let resource_name = case.printed.replacen(
            case.printed.split('.').next().unwrap_or(""),
            case.resource.split('.').next().unwrap_or(""),
            1,
        );
        let want = format!(
            "Error from server (AlreadyExists): error when creating \"{file}\": {resource_name} \"{name}\" already exists"
        );
        ensure!(
            err.trim() == want,
            "{}:\n got: {err}\nwant: {want}",
            case.resource
        );

        // replace with a changed manifest
        let file2 = f.write(&format!("{}-2.yaml", case.resource), &case.changed)?;
        let out = run_ok(vec!["replace".into(), "-f".into(), file2.clone()])?;
        ensure!(
            out.trim() == format!("{}/{name} replaced", case.printed),
            "{out}"
        );
        let replaced = get()?;
        let rv2 = rv_of(&replaced)?;
        ensure!(
            rv2 > rv1,
            "{}: resourceVersion {rv2} not above {rv1}",
            case.resource
        );
        ensure!(
            replaced["metadata"]["uid"] == uid.as_str(),
            "uid changed on replace"
        );
        ensure!(
            replaced["metadata"]["creationTimestamp"] == created["metadata"]["creationTimestamp"]
        );
        if custom {
            ensure!(replaced["metadata"]["generation"] == 2, "{replaced}");
        }
        for field in ["spec", "endpoints", "status", "metadata.labels"] {
            let (a, b) = match field.split_once('.') {
                Some((x, y)) => (&replaced[x][y], &case.changed[x][y]),
                None => (&replaced[field], &case.changed[field]),
            };
            if b.is_null() || (field == "spec" && case.resource == "services") {
                continue;
            }
            ensure!(
                a == b,
                "{}: {field} after replace: {a} != {b}",
                case.resource
            );
        }
        // A stale resourceVersion is a Conflict.
        let mut stale = case.changed.clone();
        stale["metadata"]["resourceVersion"] = rv1.to_string().into();
        let stale_file = f.write(&format!("{}-stale.yaml", case.resource), &stale)?;
        let err = run_fails(vec!["replace".into(), "-f".into(), stale_file])?;
        ensure!(
            err.contains("Error from server (Conflict): error when replacing")
                && err.contains("the object has been modified"),
            "{}: {err}",
            case.resource
        );

        // delete, then NotFound
        let out = run_ok(with_scope(&["delete", case.resource, &name]))?;
        ensure!(
            out.trim() == format!("{} \"{name}\" deleted", case.printed),
            "{out}"
        );
        let err = run_fails(with_scope(&["get", case.resource, &name]))?;
        ensure!(
            err.trim()
                == format!("Error from server (NotFound): {resource_name} \"{name}\" not found"),
            "{}: {err}",
            case.resource
        );
        let err = run_fails(with_scope(&["delete", case.resource, &name]))?;
        ensure!(err.contains("(NotFound)"), "{err}");
        ensure!(f.api.get(kind, "mesh", &name).is_err());
    }

    // Deleting the namespace deletes what is in it.
    let pod = f.write("pod.yaml", &cases()[1].first)?;
    f.ok(&["create", "-f", &pod])?;
    ensure!(f.ok(&["delete", "namespace", "mesh"])?.trim() == "namespace \"mesh\" deleted");
    ensure!(f.api.list("pods", Some("mesh"))?.is_empty());
    let err = f.fails(&["create", "-f", &pod])?;
    ensure!(err.contains("namespaces \"mesh\" not found"), "{err}");
    Ok(())
}

#[test]
fn kubectl_selects_istio_api_versions() -> Result<()> {
    require_kubectl()?;
    let f = Fixture::new("api-versions")?;
    let vs = obj(
        "networking.istio.io/v1alpha3",
        "VirtualService",
        "reviews",
        None,
        json!({"spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}}),
    );
    let file = f.write("vs.yaml", &vs)?;
    f.ok(&["create", "-f", &file])?;
    let mut uids = Vec::new();
    for (resource, want) in [
        (
            "virtualservices.v1.networking.istio.io",
            "networking.istio.io/v1",
        ),
        (
            "virtualservices.v1beta1.networking.istio.io",
            "networking.istio.io/v1beta1",
        ),
        (
            "virtualservices.v1alpha3.networking.istio.io",
            "networking.istio.io/v1alpha3",
        ),
        // The preferred version, as discovery lists it first.
        ("vs", "networking.istio.io/v1"),
    ] {
        let got = f.get_json(&[resource, "reviews"])?;
        ensure!(
            got["apiVersion"] == want,
            "{resource}: {}",
            got["apiVersion"]
        );
        ensure!(got["spec"] == vs["spec"], "{resource}: {}", got["spec"]);
        uids.push(got["metadata"]["uid"].clone());
        let list = f.get_json(&[resource])?;
        ensure!(
            list["items"][0]["apiVersion"] == want,
            "{resource} list: {list}"
        );
    }
    ensure!(
        uids.windows(2).all(|w| w[0] == w[1]),
        "one object under every version: {uids:?}"
    );
    // `kubectl apply` (strategic merge patch for built-ins, merge patch for custom resources).
    let mut changed = vs.clone();
    changed["spec"]["hosts"] = json!(["reviews", "reviews.default.svc.cluster.local"]);
    let file2 = f.write("vs2.yaml", &changed)?;
    ensure!(f
        .ok(&["apply", "-f", &file2])?
        .contains("virtualservice.networking.istio.io/reviews configured"));
    let got = f.get_json(&["vs", "reviews"])?;
    ensure!(got["spec"]["hosts"] == changed["spec"]["hosts"], "{got}");
    ensure!(got["metadata"]["generation"] == 2, "{got}");

    let pod = obj(
        "v1",
        "Pod",
        "p",
        None,
        json!({"metadata": {"name": "p", "labels": {"app": "a"}}, "spec": {"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]}}),
    );
    f.ok(&["apply", "-f", &f.write("p1.yaml", &pod)?])?;
    let mut pod2 = pod.clone();
    pod2["spec"]["containers"] =
        json!([{"name": "b", "image": "b:2"}, {"name": "c", "image": "c:1"}]);
    pod2["metadata"]["labels"] = json!({"app": "a", "v": "2"});
    ensure!(f.ok(&["apply", "-f", &f.write("p2.yaml", &pod2)?])?.trim() == "pod/p configured");
    let got = f.get_json(&["pod", "p"])?;
    ensure!(
        got["spec"]["containers"] == pod2["spec"]["containers"],
        "{}",
        got["spec"]
    );
    ensure!(
        got["metadata"]["labels"] == pod2["metadata"]["labels"],
        "{}",
        got["metadata"]
    );
    Ok(())
}

#[test]
fn kubectl_lists_with_selectors_and_chunks() -> Result<()> {
    require_kubectl()?;
    let f = Fixture::new("api-lists")?;
    f.api
        .create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}}))?;
    for (i, (ns, node, app)) in [
        ("default", "node-a", "web"),
        ("default", "node-b", "web"),
        ("default", "node-a", "db"),
        ("other", "node-a", "web"),
        ("other", "node-b", "api"),
    ]
    .iter()
    .enumerate()
    {
        f.api.create(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("p{i}"), "namespace": ns, "labels": {"app": app}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]}}))?;
    }
    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|i| {
                        format!(
                            "{}/{}",
                            i["metadata"]["namespace"].as_str().unwrap_or(""),
                            name_of(i)
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    ensure!(names(&f.get_json(&["pods"])?) == ["default/p0", "default/p1", "default/p2"]);
    ensure!(
        names(&f.get_json(&["pods", "-A", "-l", "app=web"])?)
            == ["default/p0", "default/p1", "other/p3"]
    );
    ensure!(
        names(&f.get_json(&["pods", "-A", "-l", "app in (api,db)"])?) == ["default/p2", "other/p4"]
    );
    ensure!(
        names(&f.get_json(&["pods", "-A", "--field-selector", "spec.nodeName=node-a"])?)
            == ["default/p0", "default/p2", "other/p3"]
    );
    ensure!(
        names(&f.get_json(&[
            "pods",
            "-A",
            "--field-selector",
            "spec.nodeName=node-b,metadata.namespace=other"
        ])?) == ["other/p4"]
    );
    // Chunked listing (limit + continue) returns everything once, in order.
    ensure!(
        names(&f.get_json(&["pods", "-A", "--chunk-size=2"])?)
            == [
                "default/p0",
                "default/p1",
                "default/p2",
                "other/p3",
                "other/p4"
            ]
    );
    let err = f.fails(&["get", "pods", "--field-selector", "spec.containers=x"])?;
    ensure!(
        err.contains("field label not supported: spec.containers"),
        "{err}"
    );
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

const T: Duration = Duration::from_secs(5);

async fn next_event(w: &mut RawWatch) -> Result<(String, Value)> {
    let ev = w.next(T).await?.context("watch ended early")?;
    Ok((
        ev["type"].as_str().unwrap_or("").to_string(),
        ev["object"].clone(),
    ))
}

fn pod(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default", "labels": labels},
           "spec": {"containers": [{"name": "c", "image": "i"}]}})
}

#[test]
fn unauthenticated_and_unknown_requests_get_status_errors() -> Result<()> {
    let dir = ConfigDir::new("api-auth")?;
    let api = ApiServer::start(dir.path())?;
    runtime()?.block_on(async {
        let anon = RawClient::new(&api, false)?;
        let r = anon.request("GET", "/api/v1/pods", None).await?;
        ensure!(r.status == 401);
        ensure!(r.json()? == json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "Unauthorized", "reason": "Unauthorized", "code": 401}));
        let c = RawClient::new(&api, true)?;
        let r = c.request("GET", "/apis/networking.istio.io/v1/widgets", None).await?;
        ensure!(r.status == 404 && r.json()?["reason"] == "NotFound");
        let r = c.request("GET", "/api/v1/namespaces/default/pods/nope", None).await?;
        ensure!(r.status == 404);
        ensure!(r.json()? == json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "pods \"nope\" not found", "reason": "NotFound", "details": {"name": "nope", "kind": "pods"}, "code": 404}));
        // Discovery shapes.
        let groups = c.request("GET", "/apis", None).await?.json()?;
        let istio = groups["groups"].as_array().and_then(|g| g.iter().find(|g| g["name"] == "networking.istio.io")).cloned().context("istio group")?;
        ensure!(istio["preferredVersion"]["version"] == "v1");
        ensure!(istio["versions"].as_array().map(Vec::len) == Some(3));
        let core = c.request("GET", "/api/v1", None).await?.json()?;
        let pods = core["resources"].as_array().and_then(|r| r.iter().find(|r| r["name"] == "pods")).cloned().context("pods")?;
        ensure!(pods["kind"] == "Pod" && pods["namespaced"] == true && pods["verbs"].as_array().is_some_and(|v| v.contains(&json!("watch"))));
        // Create: 201 with server fields; a create that names another namespace is a 400.
        let r = c.request("POST", "/api/v1/namespaces/default/pods", Some(&pod("a", json!({})))).await?;
        ensure!(r.status == 201, "{}", r.status);
        let mut wrong = pod("b", json!({}));
        wrong["metadata"]["namespace"] = "kube-system".into();
        let r = c.request("POST", "/api/v1/namespaces/default/pods", Some(&wrong)).await?;
        ensure!(r.status == 400 && r.json()?["reason"] == "BadRequest");
        // PUT of a missing object: 404; merge patch.
        let r = c.request("PUT", "/api/v1/namespaces/default/pods/b", Some(&pod("b", json!({})))).await?;
        ensure!(r.status == 404);
        let r = c.request_typed("PATCH", "/api/v1/namespaces/default/pods/a", "application/merge-patch+json", Some(&json!({"metadata": {"labels": {"x": "y"}}}))).await?;
        ensure!(r.status == 200 && r.json()?["metadata"]["labels"] == json!({"x": "y"}));
        // Delete returns the object; a failed precondition is a Conflict.
        let r = c.request("DELETE", "/api/v1/namespaces/default/pods/a", Some(&json!({"preconditions": {"uid": "not-it"}}))).await?;
        ensure!(r.status == 409 && r.json()?["reason"] == "Conflict");
        let r = c.request("DELETE", "/api/v1/namespaces/default/pods/a", None).await?;
        ensure!(r.status == 200 && r.json()?["metadata"]["name"] == "a");
        Ok(())
    })
}

#[test]
fn watch_streams_changes_bookmarks_and_expiry() -> Result<()> {
    let dir = ConfigDir::new("api-watch")?;
    let api = ApiServer::start(dir.path())?;
    runtime()?.block_on(async {
        let c = RawClient::new(&api, true)?;
        let start = api.resource_version();
        let mut w = c
            .watch(&format!("/api/v1/namespaces/default/pods?watch=1&resourceVersion={start}&allowWatchBookmarks=true"))
            .await?;
        ensure!(w.status == 200);
        ensure!(w.headers.get("transfer-encoding").and_then(|v| v.to_str().ok()) == Some("chunked"), "{:?}", w.headers);
        ensure!(w.headers.get("content-type").and_then(|v| v.to_str().ok()) == Some("application/json"));

        let a = api.create(pod("a", json!({"app": "web"})))?;
        let b = api.create(pod("b", json!({"app": "web"})))?;
        let mut a2 = a.clone();
        a2["metadata"]["labels"]["version"] = "v2".into();
        let a2 = api.replace(a2)?;
        api.delete("pods", "default", "b")?;
        // A write elsewhere is not this watch's business.
        api.create(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "default"}, "spec": {}}))?;
        let mut seen = Vec::new();
        for _ in 0..4 {
            let (t, o) = next_event(&mut w).await?;
            seen.push((t, name_of(&o).to_string(), rv_of(&o)?));
        }
        let want = [
            ("ADDED", "a", rv_of(&a)?),
            ("MODIFIED", "a", rv_of(&a2)?),
            ("ADDED", "b", rv_of(&b)?),
            ("DELETED", "b", rv_of(&b)? + 2),
        ];
        let mut want: Vec<(String, String, u64)> = want.iter().map(|(t, n, r)| (t.to_string(), n.to_string(), *r)).collect();
        want.sort_by_key(|w| w.2);
        ensure!(seen == want, "events {seen:?}, want {want:?}");

        // Bookmarks carry only the newest resource version.
        api.set_bookmark_interval(Duration::from_millis(200));
        let (t, o) = next_event(&mut w).await?;
        ensure!(t == "BOOKMARK", "{t} {o}");
        ensure!(o == json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": api.resource_version().to_string()}}), "{o}");

        // Compaction: the running watch gets ERROR 410 and ends; an old version is refused.
        api.compact();
        let mut ev = next_event(&mut w).await?;
        while ev.0 == "BOOKMARK" {
            ev = next_event(&mut w).await?;
        }
        ensure!(ev.0 == "ERROR", "{ev:?}");
        ensure!(ev.1["code"] == 410 && ev.1["reason"] == "Expired" && ev.1["kind"] == "Status", "{}", ev.1);
        ensure!(w.next(T).await?.is_none(), "the watch must end after ERROR");
        let mut old = c.watch(&format!("/api/v1/pods?watch=true&resourceVersion={start}")).await?;
        ensure!(old.status == 200);
        let (t, o) = next_event(&mut old).await?;
        ensure!(t == "ERROR" && o["code"] == 410 && o["message"].as_str().is_some_and(|m| m.starts_with("too old resource version")), "{o}");
        let r = c.request("GET", &format!("/api/v1/pods?resourceVersion={start}&resourceVersionMatch=Exact"), None).await?;
        ensure!(r.status == 410 && r.json()?["reason"] == "Expired");

        // No resourceVersion: the current objects first, then changes; selectors turn an object
        // that stops matching into DELETED; timeoutSeconds ends the stream.
        let mut w = c.watch("/api/v1/namespaces/default/pods?watch=1&labelSelector=app%3Dweb&timeoutSeconds=2").await?;
        let (t, o) = next_event(&mut w).await?;
        ensure!(t == "ADDED" && name_of(&o) == "a", "{t} {o}");
        let mut a3 = api.get("pods", "default", "a")?;
        a3["metadata"]["labels"]["app"] = "db".into();
        api.replace(a3)?;
        let (t, o) = next_event(&mut w).await?;
        ensure!(t == "DELETED" && name_of(&o) == "a" && o["metadata"]["labels"]["app"] == "db", "{t} {o}");
        let started = Instant::now();
        ensure!(w.next(T).await?.is_none());
        ensure!(started.elapsed() < Duration::from_secs(3), "timeoutSeconds=2 ended after {:?}", started.elapsed());
        Ok(())
    })
}

#[test]
fn lists_paginate_at_one_revision() -> Result<()> {
    let dir = ConfigDir::new("api-pages")?;
    let api = ApiServer::start(dir.path())?;
    runtime()?.block_on(async {
        let c = RawClient::new(&api, true)?;
        for i in 0..5 {
            api.create(pod(&format!("p{i}"), json!({})))?;
        }
        let page1 = c
            .request("GET", "/api/v1/namespaces/default/pods?limit=2", None)
            .await?
            .json()?;
        ensure!(page1["kind"] == "PodList" && page1["apiVersion"] == "v1");
        let rv = page1["metadata"]["resourceVersion"]
            .as_str()
            .context("list rv")?
            .to_string();
        ensure!(rv == api.resource_version().to_string());
        ensure!(page1["metadata"]["remainingItemCount"] == 3);
        let names = |p: &Value| -> Vec<String> {
            p["items"]
                .as_array()
                .map(|a| a.iter().map(|i| name_of(i).to_string()).collect())
                .unwrap_or_default()
        };
        ensure!(names(&page1) == ["p0", "p1"]);
        // Changes after the first page do not show in the next pages (one consistent snapshot).
        api.delete("pods", "default", "p3")?;
        api.create(pod("p5", json!({})))?;
        let tok = page1["metadata"]["continue"]
            .as_str()
            .context("continue")?
            .to_string();
        let page2 = c
            .request(
                "GET",
                &format!("/api/v1/namespaces/default/pods?limit=2&continue={tok}"),
                None,
            )
            .await?
            .json()?;
        ensure!(names(&page2) == ["p2", "p3"], "{page2}");
        ensure!(page2["metadata"]["resourceVersion"] == rv.as_str());
        let tok2 = page2["metadata"]["continue"]
            .as_str()
            .context("continue 2")?
            .to_string();
        let page3 = c
            .request(
                "GET",
                &format!("/api/v1/namespaces/default/pods?limit=2&continue={tok2}"),
                None,
            )
            .await?
            .json()?;
        ensure!(names(&page3) == ["p4"], "{page3}");
        ensure!(
            page3["metadata"].get("continue").is_none(),
            "last page has no continue: {page3}"
        );
        // After compaction the token is too old: 410 Expired.
        api.compact();
        let r = c
            .request(
                "GET",
                &format!("/api/v1/namespaces/default/pods?limit=2&continue={tok}"),
                None,
            )
            .await?;
        ensure!(
            r.status == 410 && r.json()?["reason"] == "Expired",
            "{}",
            r.status
        );
        Ok(())
    })
}

#[test]
fn outage_refuses_connections_cuts_watches_and_comes_back_with_the_data() -> Result<()> {
    require_kubectl()?;
    let dir = ConfigDir::new("api-outage")?;
    let api = ApiServer::start(dir.path())?;
    let url = api.url();
    runtime()?.block_on(async {
        let c = RawClient::new(&api, true)?;
        let rv = api.resource_version();
        let mut w = c
            .watch(&format!("/api/v1/pods?watch=1&resourceVersion={rv}"))
            .await?;
        api.stop()?;
        ensure!(
            w.ends_within(T).await?,
            "the watch must be cut by the outage"
        );
        ensure!(
            c.request("GET", "/api/v1/pods", None).await.is_err(),
            "connections must be refused"
        );
        api.create(pod("during", json!({})))?;
        api.restart()?;
        ensure!(api.url() == url);
        let list = c.request("GET", "/api/v1/pods", None).await?.json()?;
        ensure!(list["items"][0]["metadata"]["name"] == "during", "{list}");
        let mut w = c
            .watch(&format!("/api/v1/pods?watch=1&resourceVersion={rv}"))
            .await?;
        let (t, o) = next_event(&mut w).await?;
        ensure!(t == "ADDED" && name_of(&o) == "during");
        Ok(())
    })?;
    let pods = kubectl_ok(
        &api,
        &dir.path().join("cache"),
        &["get", "pods", "-o", "name"],
    )?;
    ensure!(pods.trim() == "pod/during", "{pods}");
    Ok(())
}

mod kube_rs {
    //! The client Keel uses: kube-rs discovery, typed and dynamic APIs, and kube-runtime's
    //! watcher (paginated list, watch with bookmarks from the list's version, re-list on 410,
    //! resume after an outage).

    use super::*;
    use futures_util::stream::{BoxStream, StreamExt};
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams};
    use kube::config::{KubeConfigOptions, Kubeconfig};
    use kube::discovery::Scope;
    use kube::runtime::watcher::{self, Event};
    use kube::runtime::WatchStreamExt;
    use kube::ResourceExt;

    type Events<K> = BoxStream<'static, Result<Event<K>, watcher::Error>>;

    /// The next event, skipping errors (returned in `errors`), within 15 s.
    async fn next<K>(w: &mut Events<K>, errors: &mut Vec<String>) -> Result<Event<K>> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            match tokio::time::timeout_at(deadline, w.next()).await {
                Err(_) => bail!("no watcher event within 15 s (errors so far: {errors:?})"),
                Ok(None) => bail!("watcher stream ended"),
                Ok(Some(Err(e))) => errors.push(e.to_string()),
                Ok(Some(Ok(ev))) => return Ok(ev),
            }
        }
    }

    /// Reads `Init`, the `InitApply` objects and `InitDone`; returns the objects' names.
    async fn initial<K: kube::Resource>(
        w: &mut Events<K>,
        errors: &mut Vec<String>,
    ) -> Result<Vec<String>> {
        let mut ev = next(w, errors).await?;
        // After a 410, the watcher may still hand out what it had buffered; the re-list starts at Init.
        while !matches!(ev, Event::Init) {
            ev = next(w, errors).await?;
        }
        let mut names = Vec::new();
        loop {
            match next(w, errors).await? {
                Event::InitApply(o) => names.push(o.meta().name.clone().unwrap_or_default()),
                Event::InitDone => return Ok(names),
                Event::Init => names.clear(),
                _ => bail!("unexpected event during the initial list"),
            }
        }
    }

    async fn applied(w: &mut Events<Pod>, errors: &mut Vec<String>) -> Result<Pod> {
        match next(w, errors).await? {
            Event::Apply(p) => Ok(p),
            other => bail!("expected Apply, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kube_rs_discovers_lists_watches_and_relists_after_410() -> Result<()> {
        let dir = ConfigDir::new("api-kube-rs")?;
        let api = ApiServer::start(dir.path())?;
        api.set_bookmark_interval(Duration::from_millis(300));
        for i in 0..5 {
            api.create(pod(&format!("p{i}"), json!({"app": "web"})))?;
        }
        let kubeconfig = Kubeconfig::read_from(api.kubeconfig_path())?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        let client = kube::Client::try_from(config)?;

        // Discovery: every Istio version resolves.
        let discovery = kube::discovery::Discovery::new(client.clone())
            .run()
            .await?;
        for version in ["v1", "v1beta1", "v1alpha3"] {
            let gvk = GroupVersionKind::gvk("networking.istio.io", version, "DestinationRule");
            let (ar, caps) = discovery
                .resolve_gvk(&gvk)
                .with_context(|| format!("discovery of {gvk:?}"))?;
            ensure!(ar.plural == "destinationrules" && caps.scope == Scope::Namespaced);
        }

        // Paginated initial list (page size 2 => three pages), then the watch.
        let mut errors = Vec::new();
        let all: Api<Pod> = Api::all(client.clone());
        ensure!(api.active_watches("pods")? == 0);
        let mut pods: Events<Pod> = watcher::watcher(all, watcher::Config::default().page_size(2))
            .default_backoff()
            .boxed();
        ensure!(initial(&mut pods, &mut errors).await? == ["p0", "p1", "p2", "p3", "p4"]);
        // kube-runtime's list/watch flow as the server saw it: three pages, then a watch from the
        // list's version with bookmarks.
        let listed_rv = api.resource_version();
        let requests = api.requests();
        let pages: Vec<&String> = requests
            .iter()
            .filter(|r| r.starts_with("GET /api/v1/pods?") && r.contains("limit=2"))
            .collect();
        ensure!(
            pages.len() == 3 && pages[1].contains("continue=") && pages[2].contains("continue="),
            "{requests:?}"
        );

        // The streaming-list strategy (watch with sendInitialEvents) sees the same objects.
        let streaming = watcher::Config::default()
            .streaming_lists()
            .labels("app=web");
        let mut streamed: Events<Pod> = watcher::watcher(Api::all(client.clone()), streaming)
            .default_backoff()
            .boxed();
        ensure!(initial(&mut streamed, &mut errors).await? == ["p0", "p1", "p2", "p3", "p4"]);
        drop(streamed);

        // A replace through kube-rs arrives as Apply; a stale one is a 409.
        let default: Api<Pod> = Api::namespaced(client.clone(), "default");
        let mut p1 = default.get("p1").await?;
        let stale = p1.clone();
        p1.labels_mut().insert("version".into(), "v2".into());
        let replaced = default.replace("p1", &PostParams::default(), &p1).await?;
        let seen = applied(&mut pods, &mut errors).await?;
        ensure!(
            seen.name_any() == "p1"
                && seen.labels().get("version").map(String::as_str) == Some("v2")
        );
        ensure!(seen.resource_version() == replaced.resource_version());
        ensure!(
            api.requests()
                .iter()
                .any(|r| r.starts_with("GET /api/v1/pods?")
                    && r.contains("watch=true")
                    && r.contains("allowWatchBookmarks=true")
                    && r.contains(&format!("resourceVersion={listed_rv}"))),
            "no watch from the list's version: {:?}",
            api.requests()
        );
        match default.replace("p1", &PostParams::default(), &stale).await {
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            other => bail!("stale replace: {other:?}"),
        }
        default.delete("p0", &DeleteParams::default()).await?;
        match next(&mut pods, &mut errors).await? {
            Event::Delete(p) if p.name_any() == "p0" => {}
            other => bail!("expected Delete(p0), got {other:?}"),
        }

        // A VirtualService stored at v1 is watched at v1beta1 as a DynamicObject.
        let gvk = GroupVersionKind::gvk("networking.istio.io", "v1beta1", "VirtualService");
        let ar = ApiResource::from_gvk_with_plural(&gvk, "virtualservices");
        let vs_api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let mut vss: Events<DynamicObject> = watcher::watcher(vs_api, watcher::Config::default())
            .default_backoff()
            .boxed();
        ensure!(initial(&mut vss, &mut errors).await?.is_empty());
        api.create(json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": "default"}, "spec": {"hosts": ["reviews"]}}))?;
        match next(&mut vss, &mut errors).await? {
            Event::Apply(vs) => {
                ensure!(vs.name_any() == "reviews");
                ensure!(
                    vs.types.as_ref().map(|t| t.api_version.as_str())
                        == Some("networking.istio.io/v1beta1")
                );
                ensure!(vs.data["spec"]["hosts"] == json!(["reviews"]));
            }
            other => bail!("expected Apply(reviews), got {other:?}"),
        }
        ensure!(
            errors.is_empty(),
            "no errors before the compaction: {errors:?}"
        );

        // Compaction: 410, then a re-list with the current objects, then changes again.
        api.compact();
        ensure!(initial(&mut pods, &mut errors).await? == ["p1", "p2", "p3", "p4"]);
        ensure!(
            errors
                .iter()
                .any(|e| e.contains("410") || e.to_lowercase().contains("expired")),
            "{errors:?}"
        );
        ensure!(initial(&mut vss, &mut errors).await? == ["reviews"]);
        let mut p2 = api.get("pods", "default", "p2")?;
        p2["metadata"]["labels"]["version"] = "v3".into();
        api.replace(p2)?;
        let seen = applied(&mut pods, &mut errors).await?;
        ensure!(
            seen.name_any() == "p2"
                && seen.labels().get("version").map(String::as_str) == Some("v3")
        );

        // Outage: the watcher keeps trying; a change made meanwhile arrives after the restart.
        errors.clear();
        api.stop()?;
        let mut p3 = api.get("pods", "default", "p3")?;
        p3["metadata"]["labels"]["version"] = "during-outage".into();
        api.replace(p3)?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        ensure!(
            api.active_watches("pods")? == 0,
            "the outage cut the watches"
        );
        api.restart()?;
        let seen = applied(&mut pods, &mut errors).await?;
        ensure!(
            seen.name_any() == "p3"
                && seen.labels().get("version").map(String::as_str) == Some("during-outage"),
            "{seen:?}"
        );
        ensure!(
            api.active_watches("pods")? == 1,
            "one pod watch again after the outage"
        );
        Ok(())
    }
}
