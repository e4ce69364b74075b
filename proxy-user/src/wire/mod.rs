//! Wire types: the YAML/JSON shapes of Kubernetes, Istio and Keel resources, as serde structs.
//!
//! No logic lives here beyond what a format needs (duration syntax, kind classification). Conversion to
//! the validated model and every semantic check happen in `crate::policy`.

pub mod duration;
pub mod istio;
pub mod k8s;
pub mod keel;
pub mod num;

pub use duration::{parse_duration, DurationError};

/// Istio's networking API group; `v1alpha3`, `v1beta1` and `v1` share one schema.
pub const ISTIO_NETWORKING_GROUP: &str = "networking.istio.io";

/// The resource kinds Keel understands, decided from `apiVersion` + `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `v1/Namespace`.
    Namespace,
    /// `v1/Service`.
    Service,
    /// `v1/Pod`.
    Pod,
    /// `v1/Node`.
    Node,
    /// `discovery.k8s.io/v1/EndpointSlice`.
    EndpointSlice,
    /// `networking.istio.io/*/VirtualService`.
    VirtualService,
    /// `networking.istio.io/*/DestinationRule`.
    DestinationRule,
    /// `networking.istio.io/*/ServiceEntry`.
    ServiceEntry,
    /// `networking.istio.io/*/Sidecar`.
    Sidecar,
    /// `networking.istio.io/*/Gateway`.
    Gateway,
    /// `keel.io/v1alpha1/MeshConfig`.
    MeshConfig,
}

impl Kind {
    /// Classifies a document; `None` for kinds Keel ignores (`Deployment`, `ConfigMap`, ...) and for
    /// known kinds under an API version Keel does not speak (e.g. `networking.istio.io/v2`).
    pub fn classify(api_version: &str, kind: &str) -> Option<Kind> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let istio =
            group == ISTIO_NETWORKING_GROUP && matches!(version, "v1alpha3" | "v1beta1" | "v1");
        Some(match (group, version, kind) {
            ("", "v1", "Namespace") => Kind::Namespace,
            ("", "v1", "Service") => Kind::Service,
            ("", "v1", "Pod") => Kind::Pod,
            ("", "v1", "Node") => Kind::Node,
            ("discovery.k8s.io", "v1" | "v1beta1", "EndpointSlice") => Kind::EndpointSlice,
            (_, _, "VirtualService") if istio => Kind::VirtualService,
            (_, _, "DestinationRule") if istio => Kind::DestinationRule,
            (_, _, "ServiceEntry") if istio => Kind::ServiceEntry,
            (_, _, "Sidecar") if istio => Kind::Sidecar,
            (_, _, "Gateway") if istio => Kind::Gateway,
            _ if api_version == keel::KEEL_API_VERSION && kind == "MeshConfig" => Kind::MeshConfig,
            _ => return None,
        })
    }

    /// Cluster-scoped kinds have no namespace.
    pub fn cluster_scoped(self) -> bool {
        matches!(self, Kind::Namespace | Kind::Node | Kind::MeshConfig)
    }

    /// The `kind` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Service => "Service",
            Kind::Pod => "Pod",
            Kind::Node => "Node",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::Sidecar => "Sidecar",
            Kind::Gateway => "Gateway",
            Kind::MeshConfig => "MeshConfig",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_known_kinds_and_ignores_others() {
        for v in [
            "networking.istio.io/v1alpha3",
            "networking.istio.io/v1beta1",
            "networking.istio.io/v1",
        ] {
            assert_eq!(
                Kind::classify(v, "VirtualService"),
                Some(Kind::VirtualService)
            );
        }
        assert_eq!(Kind::classify("v1", "Service"), Some(Kind::Service));
        assert_eq!(
            Kind::classify("keel.io/v1alpha1", "MeshConfig"),
            Some(Kind::MeshConfig)
        );
        assert_eq!(Kind::classify("apps/v1", "Deployment"), None);
        assert_eq!(Kind::classify("v1", "ConfigMap"), None);
        assert_eq!(
            Kind::classify("networking.istio.io/v2", "VirtualService"),
            None
        );
    }

    #[test]
    fn reads_the_crd_property_names_only() {
        // `mirror_percent` is the one snake_case property the VirtualService CRD declares, next to
        // `mirrorPercent`; every other field has its camelCase name only.
        let camel: istio::HttpRoute =
            serde_yaml::from_str("mirrorPercent: 50\nmirrorPercentage: {value: 10}")
                .expect("camel");
        let snake: istio::HttpRoute =
            serde_yaml::from_str("mirror_percent: 50\nmirrorPercentage: {value: 10}")
                .expect("mirror_percent");
        assert_eq!(camel, snake);
        assert_eq!(camel.mirror_percent, Some(50));
        let err = serde_yaml::from_str::<istio::HttpRoute>("mirror_percentage: {value: 10}")
            .expect_err("mirror_percentage is not a CRD property");
        assert!(
            err.to_string()
                .contains("unknown field `mirror_percentage`"),
            "{err}"
        );
        let err = serde_yaml::from_str::<istio::OutlierDetection>("consecutive_gateway_errors: 2")
            .expect_err("snake_case outlier field");
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn rejects_unknown_istio_fields() {
        let err = serde_yaml::from_str::<istio::Destination>("host: a\nsubnet: v1")
            .expect_err("unknown field must fail");
        assert!(err.to_string().contains("unknown field `subnet`"), "{err}");
    }
}
