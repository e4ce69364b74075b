//! The Kubernetes API server as a config source (`keel run --kube`).
//!
//! One kube-runtime watcher per kind lists, then watches from the list's resourceVersion with
//! bookmarks; on `410 Gone` it lists again, and on errors (an API outage) it retries with client-go's
//! backoff. Nothing here is ever cleared by an error: the control task keeps serving what it last
//! assembled. Each watcher turns objects into [`SourceObject`]s and sends [`Change`]s; a re-list
//! arrives whole ([`Change::Replace`]), so objects deleted while the watch was down disappear and the
//! others never blink.
//!
//! Istio kinds are watched at the newest version the server serves (`v1`, else `v1beta1`, else
//! `v1alpha3`): a CRD serves every stored object at each of its versions, so one version sees all.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use tokio::sync::mpsc;

use super::{ObjectKey, SourceObject};

/// One change the API source reports.
#[derive(Debug)]
pub enum Change {
    /// An object was created or changed.
    Upsert(Box<SourceObject>),
    /// An object is gone.
    Delete(ObjectKey),
    /// The watcher (re-)listed `kind`: these are all its objects now.
    Replace {
        kind: &'static str,
        objects: Vec<SourceObject>,
    },
}

/// A kind Keel watches.
#[derive(Debug, Clone, Copy)]
pub struct WatchedKind {
    pub group: &'static str,
    /// Versions in order of preference.
    pub versions: &'static [&'static str],
    pub kind: &'static str,
    pub plural: &'static str,
}

const ISTIO_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];

/// Everything `keel run --kube` reads (the DaemonSet's ClusterRole grants list+watch on these).
pub const WATCHED: &[WatchedKind] = &[
    WatchedKind {
        group: "",
        versions: &["v1"],
        kind: "Namespace",
        plural: "namespaces",
    },
    WatchedKind {
        group: "",
        versions: &["v1"],
        kind: "Node",
        plural: "nodes",
    },
    WatchedKind {
        group: "",
        versions: &["v1"],
        kind: "Service",
        plural: "services",
    },
    WatchedKind {
        group: "",
        versions: &["v1"],
        kind: "Pod",
        plural: "pods",
    },
    WatchedKind {
        group: "discovery.k8s.io",
        versions: &["v1"],
        kind: "EndpointSlice",
        plural: "endpointslices",
    },
    WatchedKind {
        group: crate::wire::ISTIO_NETWORKING_GROUP,
        versions: ISTIO_VERSIONS,
        kind: "VirtualService",
        plural: "virtualservices",
    },
    WatchedKind {
        group: crate::wire::ISTIO_NETWORKING_GROUP,
        versions: ISTIO_VERSIONS,
        kind: "DestinationRule",
        plural: "destinationrules",
    },
    WatchedKind {
        group: crate::wire::ISTIO_NETWORKING_GROUP,
        versions: ISTIO_VERSIONS,
        kind: "ServiceEntry",
        plural: "serviceentries",
    },
    WatchedKind {
        group: crate::wire::ISTIO_NETWORKING_GROUP,
        versions: ISTIO_VERSIONS,
        kind: "Sidecar",
        plural: "sidecars",
    },
    WatchedKind {
        group: crate::wire::ISTIO_NETWORKING_GROUP,
        versions: ISTIO_VERSIONS,
        kind: "Gateway",
        plural: "gateways",
    },
];

/// A client from `kubeconfig`, else from `$KUBECONFIG` / `~/.kube/config`, else in-cluster (the pod's
/// service account).
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig and not in a cluster")?,
    };
    Client::try_from(config).context("building the API client")
}

/// Starts one watcher task per kind on the current runtime; changes go to `changes`. `node_name`:
/// pods of other nodes are trimmed to what endpoints need.
pub fn spawn_watchers(client: Client, node_name: Option<String>, changes: mpsc::Sender<Change>) {
    for watched in WATCHED {
        let client = client.clone();
        let changes = changes.clone();
        let node_name = node_name.clone();
        tokio::spawn(async move {
            let mut reported_empty = false;
            let resource = loop {
                match served_version(&client, watched).await {
                    Ok(Some(resource)) => break resource,
                    Ok(None) => {
                        // The server answered without the kind (Istio's CRDs not installed): it
                        // has no objects, until the CRDs appear.
                        if !reported_empty {
                            tracing::warn!(kind = watched.kind, group = watched.group, "the API server does not serve this kind; treating it as empty and checking again every 5 s");
                            reported_empty = true;
                            let empty = Change::Replace {
                                kind: watched.kind,
                                objects: Vec::new(),
                            };
                            if changes.send(empty).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(kind = watched.kind, error = %format!("{e:#}"), "cannot discover the API version; retrying in 5 s");
                    }
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            };
            tracing::info!(kind = watched.kind, api_version = %resource.api_version, "watching");
            watch(client, watched, resource, node_name.as_deref(), changes).await;
        });
    }
}

/// The newest version of `watched` the server serves (built-in kinds: their one version); `None`
/// when the server answers that it serves none of them.
async fn served_version(
    client: &Client,
    watched: &WatchedKind,
) -> anyhow::Result<Option<ApiResource>> {
    if watched.group.is_empty() || watched.versions.len() == 1 {
        let gvk = GroupVersionKind::gvk(watched.group, watched.versions[0], watched.kind);
        return Ok(Some(ApiResource::from_gvk_with_plural(
            &gvk,
            watched.plural,
        )));
    }
    let group = match kube::discovery::group(client, watched.group).await {
        Ok(group) => group,
        Err(kube::Error::Discovery(kube::error::DiscoveryError::MissingApiGroup(_))) => {
            return Ok(None)
        }
        Err(e) => {
            return Err(e).with_context(|| format!("discovering API group {}", watched.group))
        }
    };
    let served: Vec<&str> = group.versions().collect();
    Ok(watched
        .versions
        .iter()
        .find(|v| served.contains(v))
        .map(|version| {
            let gvk = GroupVersionKind::gvk(watched.group, version, watched.kind);
            ApiResource::from_gvk_with_plural(&gvk, watched.plural)
        }))
}

/// Runs the watcher of one kind until the receiver is gone.
async fn watch(
    client: Client,
    watched: &WatchedKind,
    resource: ApiResource,
    node_name: Option<&str>,
    changes: mpsc::Sender<Change>,
) {
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut relisted: Vec<SourceObject> = Vec::new();
    let object = |o: DynamicObject| source_object(o, &resource, node_name);
    while let Some(event) = stream.next().await {
        let change = match event {
            Ok(Event::Apply(o)) => Change::Upsert(Box::new(object(o))),
            Ok(Event::Delete(o)) => Change::Delete(ObjectKey::new(
                watched.kind,
                o.metadata.namespace.as_deref().unwrap_or(""),
                o.metadata.name.as_deref().unwrap_or(""),
            )),
            Ok(Event::Init) => {
                relisted.clear();
                continue;
            }
            Ok(Event::InitApply(o)) => {
                relisted.push(object(o));
                continue;
            }
            Ok(Event::InitDone) => Change::Replace {
                kind: watched.kind,
                objects: std::mem::take(&mut relisted),
            },
            Err(e) => {
                // The backoff retries; what was assembled keeps serving meanwhile.
                tracing::warn!(kind = watched.kind, error = %e, "watch failed; keeping the last config and retrying");
                continue;
            }
        };
        if changes.send(change).await.is_err() {
            return;
        }
    }
}

/// Annotations conversion reads; a remote pod keeps only these (a kubectl
/// `last-applied-configuration` can be larger than the rest of the pod). A pod of this node keeps
/// all of its annotations, Istio's `traffic.sidecar.istio.io/*` included. Those are deliberately
/// not listed: they only decide what keel captures of a pod it runs next to, and a bad value on a
/// remote pod would otherwise reject that pod, and with it its endpoints, on every other node.
const POD_ANNOTATIONS_READ: &[&str] = &["keel.io/capture", "sidecar.istio.io/status"];

/// The object as conversion reads it: `apiVersion` and `kind` set (list items lack them), managed
/// fields dropped, and a pod of another node trimmed to what an endpoint needs.
fn source_object(
    o: DynamicObject,
    resource: &ApiResource,
    node_name: Option<&str>,
) -> SourceObject {
    let mut value = serde_json::to_value(&o).unwrap_or(serde_json::Value::Null);
    if let Some(map) = value.as_object_mut() {
        map.insert(
            "apiVersion".to_string(),
            serde_json::Value::String(resource.api_version.clone()),
        );
        map.insert(
            "kind".to_string(),
            serde_json::Value::String(resource.kind.clone()),
        );
        if let Some(meta) = map.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            meta.remove("managedFields");
        }
    }
    if resource.kind == "Pod" {
        trim_remote_pod(&mut value, node_name);
    }
    SourceObject::from_api(&value)
}

/// Drops from a pod scheduled on another node what only a local (client) pod needs.
fn trim_remote_pod(pod: &mut serde_json::Value, node_name: Option<&str>) {
    let on_this_node = pod
        .pointer("/spec/nodeName")
        .and_then(|n| n.as_str())
        .is_some_and(|n| Some(n) == node_name);
    if on_this_node {
        return;
    }
    if let Some(annotations) = pod
        .pointer_mut("/metadata/annotations")
        .and_then(|a| a.as_object_mut())
    {
        annotations.retain(|k, _| POD_ANNOTATIONS_READ.contains(&k.as_str()));
    }
    if let Some(spec) = pod.get_mut("spec").and_then(|s| s.as_object_mut()) {
        spec.retain(|k, _| matches!(k.as_str(), "nodeName" | "containers" | "hostNetwork"));
        if let Some(containers) = spec.get_mut("containers").and_then(|c| c.as_array_mut()) {
            for c in containers.iter_mut().filter_map(|c| c.as_object_mut()) {
                c.retain(|k, _| matches!(k.as_str(), "name" | "ports"));
            }
        }
    }
    if let Some(status) = pod.get_mut("status").and_then(|s| s.as_object_mut()) {
        status.retain(|k, _| {
            matches!(
                k.as_str(),
                "phase" | "podIP" | "podIPs" | "conditions" | "qosClass"
            )
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_pod_keeps_what_endpoints_need() {
        let mut pod = serde_json::json!({
            "metadata": {"name": "r", "namespace": "default", "labels": {"app": "r"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}",
                    "keel.io/capture": "false",
                    "traffic.sidecar.istio.io/excludeOutboundPorts": "not checked remotely"}},
            "spec": {"nodeName": "other", "volumes": [{"name": "v"}],
                "containers": [{"name": "app", "image": "x", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": "10.0.0.9", "containerStatuses": [{}]}
        });
        let local = pod.clone();
        trim_remote_pod(&mut pod, Some("this"));
        assert_eq!(
            pod,
            serde_json::json!({
                "metadata": {"name": "r", "namespace": "default", "labels": {"app": "r"},
                    "annotations": {"keel.io/capture": "false"}},
                "spec": {"nodeName": "other",
                    "containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}]},
                "status": {"phase": "Running", "podIP": "10.0.0.9"}
            })
        );
        let mut mine = local.clone();
        trim_remote_pod(&mut mine, Some("other"));
        assert_eq!(mine, local, "a pod of this node is kept whole");
    }
}
