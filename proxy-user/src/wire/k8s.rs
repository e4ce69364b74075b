//! Kubernetes objects, only the fields Keel reads.
//!
//! Kubernetes objects carry many fields Keel has no use for (`status.containerStatuses`, `spec.volumes`,
//! `metadata.managedFields`, ...) and `kubectl get -o yaml` output must load as-is, so unlike the Istio
//! `spec` types these do **not** deny unknown fields.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `metadata` of any object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Object name (required for every kind Keel reads).
    #[serde(default)]
    pub name: Option<String>,
    /// Namespace; absent means `default` (what `kubectl apply` would use).
    #[serde(default)]
    pub namespace: Option<String>,
    /// The API server's unique id of the object; a Pod's names its cgroup under kubelet.
    #[serde(default)]
    pub uid: Option<String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations (Keel reads `keel.io/capture`).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339 creation time; breaks ties between resources for the same host ("oldest wins").
    #[serde(default)]
    pub creation_timestamp: Option<String>,
    /// Owners (a Pod's ReplicaSet, Job, ...): the pod's workload name for metrics.
    #[serde(default)]
    pub owner_references: Vec<OwnerReference>,
}

/// `metadata.ownerReferences[]` (only what names the owner).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference {
    /// Owner kind, e.g. `ReplicaSet`.
    #[serde(default)]
    pub kind: String,
    /// Owner name.
    #[serde(default)]
    pub name: String,
    /// Whether this owner is the managing controller.
    #[serde(default)]
    pub controller: Option<bool>,
}

/// A number or a name, as in `targetPort: 9080` / `targetPort: http`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    /// Numeric form.
    Int(i64),
    /// Named form (a container port name).
    String(String),
}

/// `v1/Service`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// Object metadata.
    pub metadata: ObjectMeta,
    /// The service spec.
    #[serde(default)]
    pub spec: ServiceSpec,
}

/// `Service.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Primary cluster IP; `None` (the literal string) marks a headless service.
    #[serde(default, rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    /// All cluster IPs (dual stack); the first equals `clusterIP`.
    #[serde(default, rename = "clusterIPs")]
    pub cluster_ips: Vec<String>,
    /// `IPv4` and/or `IPv6`, primary first: the families of the cluster IPs and of the endpoint
    /// addresses (Kubernetes fills it in from `clusterIPs` when it is left out).
    #[serde(default)]
    pub ip_families: Vec<String>,
    /// `SingleStack`, `PreferDualStack` or `RequireDualStack`: how many families the API server
    /// allocates cluster IPs for. Keel reads the families that resulted (`clusterIPs`, `ipFamilies`).
    #[serde(default)]
    pub ip_family_policy: Option<String>,
    /// Service ports.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// Pod selector; absent means endpoints are managed elsewhere.
    #[serde(default)]
    pub selector: Option<BTreeMap<String, String>>,
    /// `ClusterIP` (default), `NodePort`, `LoadBalancer` or `ExternalName`.
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    /// Target of an `ExternalName` service.
    #[serde(default)]
    pub external_name: Option<String>,
}

/// `Service.spec.ports[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Port name; its prefix up to `-` declares the protocol to Istio (`http-web`).
    #[serde(default)]
    pub name: Option<String>,
    /// The service port (1..65535).
    pub port: i64,
    /// Container port, number or name; defaults to `port`.
    #[serde(default)]
    pub target_port: Option<IntOrString>,
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// Application protocol (`http`, `kubernetes.io/h2c`, ...); wins over the port name.
    #[serde(default)]
    pub app_protocol: Option<String>,
    /// Node port, unused by Keel.
    #[serde(default)]
    pub node_port: Option<i64>,
}

/// `v1/Pod`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    /// Object metadata.
    pub metadata: ObjectMeta,
    /// The pod spec (only container ports are read).
    #[serde(default)]
    pub spec: PodSpec,
    /// Pod status (IPs, phase, readiness).
    #[serde(default)]
    pub status: PodStatus,
}

/// `Pod.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// Containers.
    #[serde(default)]
    pub containers: Vec<Container>,
    /// Init containers (Istio's native-sidecar mode puts `istio-proxy` here).
    #[serde(default)]
    pub init_containers: Vec<Container>,
    /// Node the pod runs on: its topology labels give the pod's locality (cluster mode only keeps
    /// this node's pods).
    #[serde(default)]
    pub node_name: Option<String>,
    /// Host-network pods share the node's IP and cannot be told apart by source address.
    #[serde(default)]
    pub host_network: Option<bool>,
}

/// `Pod.spec.containers[]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    /// Container name.
    #[serde(default)]
    pub name: Option<String>,
    /// Declared ports.
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
}

/// `Pod.spec.containers[].ports[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    /// Port name, referenced by a Service's named `targetPort`.
    #[serde(default)]
    pub name: Option<String>,
    /// The port number (1..65535).
    pub container_port: i64,
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default)]
    pub protocol: Option<String>,
}

/// `Pod.status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    /// `Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`.
    #[serde(default)]
    pub phase: Option<String>,
    /// Primary pod IP.
    #[serde(default, rename = "podIP")]
    pub pod_ip: Option<String>,
    /// All pod IPs (dual stack).
    #[serde(default, rename = "podIPs")]
    pub pod_ips: Vec<PodIp>,
    /// Conditions; `Ready` decides whether the pod is an endpoint.
    #[serde(default)]
    pub conditions: Vec<PodCondition>,
    /// `Guaranteed`, `Burstable` or `BestEffort`: picks the pod's cgroup parent under kubelet.
    #[serde(default)]
    pub qos_class: Option<String>,
}

/// `Pod.status.podIPs[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodIp {
    /// The address.
    pub ip: String,
}

/// `Pod.status.conditions[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodCondition {
    /// `Ready`, `PodScheduled`, `ContainersReady`, ...
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
}

/// `v1/Node` (only its labels are read: the topology labels give the locality of its pods).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Object metadata (name and labels).
    pub metadata: ObjectMeta,
}

/// `v1/Namespace`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Namespace {
    /// Object metadata (the namespace name and labels).
    pub metadata: ObjectMeta,
}

/// `discovery.k8s.io/v1/EndpointSlice` (basic fields; file mode derives endpoints from pods instead).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    /// Object metadata; label `kubernetes.io/service-name` names the service.
    pub metadata: ObjectMeta,
    /// `IPv4`, `IPv6` or `FQDN`.
    #[serde(default)]
    pub address_type: Option<String>,
    /// Endpoints.
    #[serde(default)]
    pub endpoints: Vec<EndpointSliceEndpoint>,
    /// Ports.
    #[serde(default)]
    pub ports: Vec<EndpointSlicePort>,
}

/// `EndpointSlice.endpoints[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSliceEndpoint {
    /// Addresses of one backend.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Readiness.
    #[serde(default)]
    pub conditions: Option<EndpointConditions>,
    /// Node hosting the endpoint.
    #[serde(default)]
    pub node_name: Option<String>,
    /// The backing object (usually a Pod).
    #[serde(default)]
    pub target_ref: Option<ObjectReference>,
}

/// `EndpointSlice.endpoints[].conditions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointConditions {
    /// Ready to receive traffic.
    #[serde(default)]
    pub ready: Option<bool>,
    /// Passing readiness checks (even if terminating).
    #[serde(default)]
    pub serving: Option<bool>,
    /// Being deleted.
    #[serde(default)]
    pub terminating: Option<bool>,
}

/// A reference to another object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectReference {
    /// Kind, e.g. `Pod`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
}

/// `EndpointSlice.ports[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlicePort {
    /// Matches the service port name.
    #[serde(default)]
    pub name: Option<String>,
    /// Endpoint port.
    #[serde(default)]
    pub port: Option<i64>,
    /// `TCP`, `UDP`, `SCTP`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// Application protocol.
    #[serde(default)]
    pub app_protocol: Option<String>,
}
