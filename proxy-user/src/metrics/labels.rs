//! Istio's metric labels for one workload and one service, derived from config only (pods and
//! services), never from request data: that is what bounds their cardinality.

use std::sync::Arc;

use crate::policy::model::{Pod, PodOwner, Snapshot};

/// What Istio writes when a peer's value is not known.
pub const UNKNOWN: &str = "unknown";

/// Istio's default cluster id (`values.global.multiCluster.clusterName`): Keel serves one cluster.
const CLUSTER: &str = "Kubernetes";

/// The `source_*` or `destination_*` workload labels of one pod (or of an unknown peer).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerLabels {
    pub workload: Arc<str>,
    pub namespace: Arc<str>,
    pub principal: Arc<str>,
    pub app: Arc<str>,
    pub version: Arc<str>,
    pub canonical_service: Arc<str>,
    pub canonical_revision: Arc<str>,
    pub cluster: Arc<str>,
}

impl PeerLabels {
    /// A peer Keel knows nothing about: every value `unknown`.
    pub fn unknown() -> PeerLabels {
        let u: Arc<str> = Arc::from(UNKNOWN);
        PeerLabels {
            workload: u.clone(),
            namespace: u.clone(),
            principal: u.clone(),
            app: u.clone(),
            version: u.clone(),
            canonical_service: u.clone(),
            canonical_revision: u.clone(),
            cluster: u,
        }
    }

    /// A pod's labels. Keel has no mesh identity, so the principal is `unknown`.
    pub fn of_pod(pod: &Pod) -> PeerLabels {
        let workload = workload_name(&pod.meta.name, pod.owner.as_ref(), pod_template_hash(pod));
        let label = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| pod.labels.get(*k).filter(|v| !v.is_empty()))
                .cloned()
        };
        let canonical_service = label(&[
            "service.istio.io/canonical-name",
            "app.kubernetes.io/name",
            "app",
        ])
        .unwrap_or_else(|| workload.clone());
        let canonical_revision = label(&[
            "service.istio.io/canonical-revision",
            "app.kubernetes.io/version",
            "version",
        ])
        .unwrap_or_else(|| "latest".to_string());
        let app = label(&["app", "app.kubernetes.io/name"]).unwrap_or_else(|| UNKNOWN.into());
        let version =
            label(&["version", "app.kubernetes.io/version"]).unwrap_or_else(|| UNKNOWN.into());
        PeerLabels {
            workload: workload.into(),
            namespace: pod.meta.namespace.as_str().into(),
            principal: UNKNOWN.into(),
            app: app.into(),
            version: version.into(),
            canonical_service: canonical_service.into(),
            canonical_revision: canonical_revision.into(),
            cluster: CLUSTER.into(),
        }
    }
}

fn pod_template_hash(pod: &Pod) -> Option<&str> {
    pod.labels.get("pod-template-hash").map(String::as_str)
}

/// The workload a pod belongs to, as Istio names it: a ReplicaSet `name-<hash>` is its Deployment
/// `name`, a Job `name-<schedule time>` its CronJob `name`, any other owner its own name, and a pod
/// without an owner is its own workload.
pub fn workload_name(
    pod_name: &str,
    owner: Option<&PodOwner>,
    template_hash: Option<&str>,
) -> String {
    let Some(owner) = owner else {
        return pod_name.to_string();
    };
    let name = owner.name.as_str();
    let trimmed = match owner.kind.as_str() {
        "ReplicaSet" => match template_hash {
            Some(hash) if !hash.is_empty() => name
                .strip_suffix(hash)
                .and_then(|n| n.strip_suffix('-'))
                .filter(|n| !n.is_empty()),
            // No `pod-template-hash` label: the last segment, when it looks like one.
            _ => name
                .rsplit_once('-')
                .filter(|(base, hash)| !base.is_empty() && looks_like_template_hash(hash))
                .map(|(base, _)| base),
        },
        "Job" => name
            .rsplit_once('-')
            .filter(|(base, stamp)| {
                !base.is_empty() && !stamp.is_empty() && stamp.bytes().all(|b| b.is_ascii_digit())
            })
            .map(|(base, _)| base),
        _ => None,
    };
    trimmed.unwrap_or(name).to_string()
}

/// Kubernetes writes template hashes with `[bcdfghjklmnpqrstvwxz2456789]` (no vowels, so no words),
/// up to 10 characters.
fn looks_like_template_hash(s: &str) -> bool {
    (1..=10).contains(&s.len())
        && s.bytes()
            .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
}

/// The `destination_service*` labels of one service host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceLabels {
    /// `destination_service`: the host, e.g. `reviews.default.svc.cluster.local`.
    pub host: Arc<str>,
    /// `destination_service_name`: `reviews`.
    pub name: Arc<str>,
    /// `destination_service_namespace`: `default`.
    pub namespace: Arc<str>,
}

impl ServiceLabels {
    /// Labels for `host`: a Kubernetes Service's name and namespace; a ServiceEntry host is its own
    /// name (namespace unknown); Istio's `PassthroughCluster`/`BlackHoleCluster` name themselves.
    pub fn of_host(snapshot: &Snapshot, host: &str) -> ServiceLabels {
        if let Some(svc) = snapshot
            .service_by_host
            .get(host)
            .and_then(|&id| snapshot.services.get(id))
        {
            return ServiceLabels {
                host: host.into(),
                name: svc.meta.name.as_str().into(),
                namespace: svc.meta.namespace.as_str().into(),
            };
        }
        ServiceLabels {
            host: host.into(),
            name: host.into(),
            namespace: UNKNOWN.into(),
        }
    }

    /// No service known (e.g. a request to an address no config names).
    pub fn unknown() -> ServiceLabels {
        ServiceLabels {
            host: UNKNOWN.into(),
            name: UNKNOWN.into(),
            namespace: UNKNOWN.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::{Labels, Meta};

    fn owner(kind: &str, name: &str) -> PodOwner {
        PodOwner {
            kind: kind.into(),
            name: name.into(),
        }
    }

    #[test]
    fn workload_comes_from_the_owner() {
        let cases: &[(&str, Option<PodOwner>, Option<&str>, &str)] = &[
            ("sleep", None, None, "sleep"),
            (
                "productpage-v1-7d4f8b9c6-x2x9z",
                Some(owner("ReplicaSet", "productpage-v1-7d4f8b9c6")),
                Some("7d4f8b9c6"),
                "productpage-v1",
            ),
            // Without the label, a hash-looking last segment is still the ReplicaSet's suffix...
            (
                "reviews-v2-5b64f47978-abcde",
                Some(owner("ReplicaSet", "reviews-v2-5b64f47978")),
                None,
                "reviews-v2",
            ),
            // ...but a word is not (vowels never appear in template hashes).
            (
                "web-frontend-xyz",
                Some(owner("ReplicaSet", "web-frontend")),
                None,
                "web-frontend",
            ),
            (
                "db-0",
                Some(owner("StatefulSet", "db")),
                Some("ignored"),
                "db",
            ),
            (
                "backup-28391040-7kq2p",
                Some(owner("Job", "backup-28391040")),
                None,
                "backup",
            ),
            (
                "migrate-abc",
                Some(owner("Job", "migrate")),
                None,
                "migrate",
            ),
            ("agent-x7", Some(owner("DaemonSet", "agent")), None, "agent"),
        ];
        for (pod, owner, hash, want) in cases {
            assert_eq!(
                workload_name(pod, owner.as_ref(), *hash),
                *want,
                "pod {pod} owner {owner:?}"
            );
        }
    }

    fn pod(name: &str, labels: &[(&str, &str)], owner: Option<PodOwner>) -> Pod {
        Pod {
            meta: Meta {
                kind: "Pod".into(),
                namespace: "shop".into(),
                name: name.into(),
                file: None,
                line: None,
                creation_timestamp: None,
                order: 0,
            },
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Labels>(),
            annotations: Labels::default(),
            ips: Vec::new(),
            ready: true,
            capture: true,
            container_ports: Vec::new(),
            node_name: None,
            owner,
            uid: None,
            qos_class: None,
            host_network: false,
            sidecar: false,
            traffic: None,
        }
    }

    #[test]
    fn canonical_labels_follow_istio_precedence() {
        let all = pod(
            "p",
            &[
                ("service.istio.io/canonical-name", "canon"),
                ("service.istio.io/canonical-revision", "r9"),
                ("app.kubernetes.io/name", "k8s-name"),
                ("app.kubernetes.io/version", "k8s-v"),
                ("app", "plain"),
                ("version", "v1"),
            ],
            None,
        );
        let l = PeerLabels::of_pod(&all);
        assert_eq!(&*l.canonical_service, "canon");
        assert_eq!(&*l.canonical_revision, "r9");
        assert_eq!(&*l.app, "plain");
        assert_eq!(&*l.version, "v1");
        assert_eq!(&*l.namespace, "shop");
        assert_eq!(&*l.principal, "unknown");
        assert_eq!(&*l.cluster, "Kubernetes");

        let k8s = PeerLabels::of_pod(&pod(
            "p",
            &[
                ("app.kubernetes.io/name", "k8s-name"),
                ("app.kubernetes.io/version", "k8s-v"),
                ("app", "plain"),
                ("version", "v1"),
            ],
            None,
        ));
        assert_eq!(&*k8s.canonical_service, "k8s-name");
        assert_eq!(&*k8s.canonical_revision, "k8s-v");

        let plain = PeerLabels::of_pod(&pod("p", &[("app", "plain"), ("version", "v1")], None));
        assert_eq!(&*plain.canonical_service, "plain");
        assert_eq!(&*plain.canonical_revision, "v1");

        // Nothing: the workload name and `latest`; app and version unknown.
        let bare = PeerLabels::of_pod(&pod(
            "ratings-v1-6d5f7c8b9b-q7x2m",
            &[("pod-template-hash", "6d5f7c8b9b")],
            Some(owner("ReplicaSet", "ratings-v1-6d5f7c8b9b")),
        ));
        assert_eq!(&*bare.workload, "ratings-v1");
        assert_eq!(&*bare.canonical_service, "ratings-v1");
        assert_eq!(&*bare.canonical_revision, "latest");
        assert_eq!(&*bare.app, "unknown");
        assert_eq!(&*bare.version, "unknown");
    }
}
