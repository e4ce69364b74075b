//! The resource types the stand-in serves: group, served versions, kind, plural, scope, and the
//! field labels each accepts in a `fieldSelector` (as the real API server's per-type field label
//! conversion functions do).

/// One served resource type.
#[derive(Debug)]
pub struct KindInfo {
    /// API group; `""` is the core (legacy) group under `/api`.
    pub group: &'static str,
    /// Served versions, most preferred first; the first is the storage version.
    pub versions: &'static [&'static str],
    /// `kind` of one object (the list kind is `<kind>List`).
    pub kind: &'static str,
    /// The URL path segment (`pods`).
    pub plural: &'static str,
    /// Lower-case singular name (`pod`).
    pub singular: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// `kubectl get <shortname>`.
    pub short_names: &'static [&'static str],
    /// Discovery categories (`kubectl get all`).
    pub categories: &'static [&'static str],
    /// Field selector labels accepted besides `metadata.name` and `metadata.namespace`.
    pub field_labels: &'static [&'static str],
}

impl KindInfo {
    /// `apiVersion` of `version` in this group (`v1`, `networking.istio.io/v1beta1`).
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    /// The storage (and preferred) version.
    pub fn storage_version(&self) -> &'static str {
        self.versions.first().copied().unwrap_or("v1")
    }

    /// The qualified resource name the real server uses in messages: `pods`,
    /// `virtualservices.networking.istio.io`.
    pub fn resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether the server keeps `metadata.generation` (custom resources and CRDs do; the core
    /// kinds served here and EndpointSlice do not).
    pub fn tracks_generation(&self) -> bool {
        self.group == ISTIO_GROUP || self.group == "apiextensions.k8s.io"
    }

    /// Whether `version` is served.
    pub fn serves(&self, version: &str) -> bool {
        self.versions.contains(&version)
    }
}

const ISTIO_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];
const ISTIO_CATEGORIES: &[&str] = &["istio-io", "networking-istio-io"];
const ISTIO_GROUP: &str = "networking.istio.io";

/// Every served type; a kind is addressed by its index in this table.
pub static KINDS: &[KindInfo] = &[
    KindInfo {
        group: "",
        versions: &["v1"],
        kind: "Namespace",
        plural: "namespaces",
        singular: "namespace",
        namespaced: false,
        short_names: &["ns"],
        categories: &[],
        field_labels: &["status.phase"],
    },
    KindInfo {
        group: "",
        versions: &["v1"],
        kind: "Node",
        plural: "nodes",
        singular: "node",
        namespaced: false,
        short_names: &["no"],
        categories: &[],
        field_labels: &["spec.unschedulable"],
    },
    KindInfo {
        group: "",
        versions: &["v1"],
        kind: "Pod",
        plural: "pods",
        singular: "pod",
        namespaced: true,
        short_names: &["po"],
        categories: &["all"],
        field_labels: &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
    },
    KindInfo {
        group: "",
        versions: &["v1"],
        kind: "Service",
        plural: "services",
        singular: "service",
        namespaced: true,
        short_names: &["svc"],
        categories: &["all"],
        field_labels: &["spec.clusterIP", "spec.type"],
    },
    KindInfo {
        group: "discovery.k8s.io",
        versions: &["v1"],
        kind: "EndpointSlice",
        plural: "endpointslices",
        singular: "endpointslice",
        namespaced: true,
        short_names: &[],
        categories: &[],
        field_labels: &["addressType"],
    },
    KindInfo {
        group: ISTIO_GROUP,
        versions: ISTIO_VERSIONS,
        kind: "VirtualService",
        plural: "virtualservices",
        singular: "virtualservice",
        namespaced: true,
        short_names: &["vs"],
        categories: ISTIO_CATEGORIES,
        field_labels: &[],
    },
    KindInfo {
        group: ISTIO_GROUP,
        versions: ISTIO_VERSIONS,
        kind: "DestinationRule",
        plural: "destinationrules",
        singular: "destinationrule",
        namespaced: true,
        short_names: &["dr"],
        categories: ISTIO_CATEGORIES,
        field_labels: &[],
    },
    KindInfo {
        group: ISTIO_GROUP,
        versions: ISTIO_VERSIONS,
        kind: "ServiceEntry",
        plural: "serviceentries",
        singular: "serviceentry",
        namespaced: true,
        short_names: &["se"],
        categories: ISTIO_CATEGORIES,
        field_labels: &[],
    },
    KindInfo {
        group: ISTIO_GROUP,
        versions: ISTIO_VERSIONS,
        kind: "Sidecar",
        plural: "sidecars",
        singular: "sidecar",
        namespaced: true,
        short_names: &[],
        categories: ISTIO_CATEGORIES,
        field_labels: &[],
    },
    KindInfo {
        group: ISTIO_GROUP,
        versions: ISTIO_VERSIONS,
        kind: "Gateway",
        plural: "gateways",
        singular: "gateway",
        namespaced: true,
        short_names: &["gw"],
        categories: ISTIO_CATEGORIES,
        field_labels: &[],
    },
    KindInfo {
        group: "apiextensions.k8s.io",
        versions: &["v1"],
        kind: "CustomResourceDefinition",
        plural: "customresourcedefinitions",
        singular: "customresourcedefinition",
        namespaced: false,
        short_names: &["crd", "crds"],
        categories: &["api-extensions"],
        field_labels: &[],
    },
];

/// Index of the `Namespace` kind in [`KINDS`].
pub const NAMESPACE: usize = 0;
/// Index of the `Service` kind in [`KINDS`].
pub const SERVICE: usize = 3;

/// The kind served at `group`/`version` under `plural`.
pub fn by_path(group: &str, version: &str, plural: &str) -> Option<usize> {
    KINDS
        .iter()
        .position(|k| k.group == group && k.plural == plural && k.serves(version))
}

/// The kind of an object's `apiVersion` + `kind`.
pub fn by_type(api_version: &str, kind: &str) -> Option<usize> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    KINDS
        .iter()
        .position(|k| k.group == group && k.kind == kind && k.serves(version))
}

/// A kind named loosely, as tests name it: `Pod`, `pods`, `pod`, `po`, `vs`,
/// `virtualservices.networking.istio.io` (case-insensitive).
pub fn by_name(name: &str) -> Option<usize> {
    let lower = name.to_ascii_lowercase();
    let (base, group) = match lower.split_once('.') {
        Some((b, g)) => (b.to_string(), Some(g.to_string())),
        None => (lower, None),
    };
    KINDS.iter().position(|k| {
        group.as_deref().is_none_or(|g| g == k.group)
            && (k.kind.eq_ignore_ascii_case(&base)
                || k.plural == base
                || k.singular == base
                || k.short_names.contains(&base.as_str()))
    })
}

/// Every group with its served versions, in discovery order (core group excluded).
pub fn groups() -> Vec<(&'static str, &'static [&'static str])> {
    let mut out: Vec<(&'static str, &'static [&'static str])> = Vec::new();
    for k in KINDS.iter().filter(|k| !k.group.is_empty()) {
        if !out.iter().any(|(g, _)| *g == k.group) {
            out.push((k.group, k.versions));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        assert_eq!(KINDS[NAMESPACE].kind, "Namespace");
        assert_eq!(KINDS[SERVICE].kind, "Service");
        assert_eq!(by_name("vs").map(|i| KINDS[i].kind), Some("VirtualService"));
        assert_eq!(
            by_name("virtualservices.networking.istio.io").map(|i| KINDS[i].kind),
            Some("VirtualService")
        );
        assert_eq!(by_name("Pod").map(|i| KINDS[i].plural), Some("pods"));
        assert_eq!(
            by_type("networking.istio.io/v1alpha3", "Gateway").map(|i| KINDS[i].plural),
            Some("gateways")
        );
        assert_eq!(by_type("networking.istio.io/v2", "Gateway"), None);
        assert_eq!(
            by_path("", "v1", "services").map(|i| KINDS[i].kind),
            Some("Service")
        );
    }
}
