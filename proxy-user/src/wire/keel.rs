//! Keel's own config kind: `apiVersion: keel.io/v1alpha1`, `kind: MeshConfig`.

use serde::{Deserialize, Serialize};

use super::k8s::ObjectMeta;

/// API version of Keel's own kinds.
pub const KEEL_API_VERSION: &str = "keel.io/v1alpha1";

/// A `MeshConfig` document (at most one per config directory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshConfigObject {
    /// `keel.io/v1alpha1`.
    pub api_version: String,
    /// `MeshConfig`.
    pub kind: String,
    /// Metadata (the name is informational).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Settings; every field is optional and defaults to `policy::MeshConfig::default()`.
    #[serde(default)]
    pub spec: MeshConfigSpec,
}

/// `MeshConfig.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshConfigSpec {
    /// What to do with traffic to unknown destinations.
    #[serde(default, alias = "outbound_traffic_policy")]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
    /// Route timeout when a route sets none; `"0s"` disables it.
    #[serde(default, alias = "default_http_timeout")]
    pub default_http_timeout: Option<String>,
    /// Append `-shadow` to the Host of mirrored requests.
    #[serde(default, alias = "mirror_shadow_suffix")]
    pub mirror_shadow_suffix: Option<bool>,
    /// Namespace whose resources apply mesh-wide.
    #[serde(default, alias = "root_namespace")]
    pub root_namespace: Option<String>,
    /// How long to sniff an undeclared port before treating it as TCP.
    #[serde(default, alias = "protocol_detection_timeout")]
    pub protocol_detection_timeout: Option<String>,
    /// Access log output: a file path or `/dev/stdout`; empty or unset = no access log.
    #[serde(default)]
    pub access_log_file: Option<String>,
    /// `TEXT` (default) or `JSON`.
    #[serde(default)]
    pub access_log_encoding: Option<String>,
    /// An Envoy format string (TEXT) or a JSON object of format strings (JSON); default Istio's.
    #[serde(default)]
    pub access_log_format: Option<String>,
}

/// `MeshConfig.spec.outboundTrafficPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundTrafficPolicy {
    /// `ALLOW_ANY` (default) or `REGISTRY_ONLY`.
    #[serde(default)]
    pub mode: Option<String>,
}
