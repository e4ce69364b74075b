//! `metadata` of the Istio kinds as the API server checks it (ObjectMeta validation, strict field
//! validation, which `kubectl apply` asks for by default) and istiod's `validateMetadata` (annotations
//! users may not set). Rules, sources and samples: `config/testdata/rules/metadata.md`.

use serde_yaml::Value;

use super::Ctx;
use crate::policy::error::*;
use crate::policy::validate as v;
use crate::source::FieldPath;

/// The API group of the Istio kinds Keel reads.
const ISTIO_GROUP: &str = "networking.istio.io";
/// The versions the API server serves for each of them (one schema for all three).
const ISTIO_VERSIONS: [&str; 3] = ["v1alpha3", "v1beta1", "v1"];
const ISTIO_KINDS: [&str; 5] = [
    "VirtualService",
    "DestinationRule",
    "ServiceEntry",
    "Sidecar",
    "Gateway",
];

/// `ObjectMeta` fields: anything else is an unknown field the API server rejects.
const OBJECT_META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// Largest total size of a resource's annotations (keys plus values), in bytes.
const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

/// Annotations istiod's webhook rejects on these kinds, and why.
const FORBIDDEN_ANNOTATIONS: &[(&str, &str)] = &[
    (
        "istio.io/dry-run",
        "only AuthorizationPolicy supports it; remove it",
    ),
    (
        "internal.istio.io/webhook-always-reject",
        "istiod rejects every resource that carries it",
    ),
    (
        "internal.istio.io/parent-namespace",
        "it is internal to istiod and may not be set by users",
    ),
    (
        "internal.istio.io/parents",
        "it is internal to istiod and may not be set by users",
    ),
];

/// For `networking.istio.io/<version>` and one of the five Istio kinds under a version the API server
/// does not serve: the versions it does serve.
pub(super) fn unserved_istio_version(api_version: &str, kind: &str) -> Option<&'static str> {
    let (group, version) = api_version.rsplit_once('/')?;
    (group == ISTIO_GROUP && ISTIO_KINDS.contains(&kind) && !ISTIO_VERSIONS.contains(&version))
        .then_some("v1, v1beta1, v1alpha3")
}

/// Checks an Istio resource's `metadata` beyond its name and namespace.
pub(super) fn istio_metadata(ctx: &mut Ctx<'_>, metadata: Option<&Value>) {
    let Some(Value::Mapping(m)) = metadata else {
        return;
    };
    let mp = FieldPath::root().key("metadata");
    for key in m.keys() {
        let known = key
            .as_str()
            .is_some_and(|k| OBJECT_META_FIELDS.contains(&k));
        if !known {
            let name = key
                .as_str()
                .map_or_else(|| format!("{key:?}"), str::to_string);
            ctx.err(
                &mp.key(name.as_str()),
                InvalidDocument::Schema(format!("unknown field `{name}` in metadata")),
            );
        }
    }
    if let Some(labels) = string_map(ctx, &mp.key("labels"), m.get("labels")) {
        ctx.check(&mp.key("labels"), v::labels(&labels));
    }
    let Some(annotations) = string_map(ctx, &mp.key("annotations"), m.get("annotations")) else {
        return;
    };
    let ap = mp.key("annotations");
    for key in annotations.keys() {
        // The API server checks annotation keys in lower case.
        if v::label_key(&key.to_ascii_lowercase()).is_err() {
            ctx.err(
                &ap.key(key.as_str()),
                InvalidName::AnnotationKey(key.clone()),
            );
        }
    }
    let size: usize = annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > ANNOTATIONS_MAX_BYTES {
        ctx.err(
            &ap,
            Invalid::Other(format!(
                "annotations take {size} bytes, at most {ANNOTATIONS_MAX_BYTES} (256 KiB) are allowed"
            )),
        );
    }
    for (name, why) in FORBIDDEN_ANNOTATIONS {
        if annotations.contains_key(*name) {
            ctx.err(
                &ap.key(*name),
                Invalid::Other(format!("annotation {name:?} is not allowed here: {why}")),
            );
        }
    }
}

/// A `labels` / `annotations` map: every value must be a string (`1`, `true` unquoted are not), as
/// the API server decodes it. `None` (after recording the error) when it is not such a map.
fn string_map(
    ctx: &mut Ctx<'_>,
    path: &FieldPath,
    value: Option<&Value>,
) -> Option<std::collections::BTreeMap<String, String>> {
    let mut out = std::collections::BTreeMap::new();
    let m = match value {
        None | Some(Value::Null) => return Some(out),
        Some(Value::Mapping(m)) => m,
        Some(_) => {
            ctx.err(
                path,
                InvalidDocument::Schema("must be a map of strings".into()),
            );
            return None;
        }
    };
    let mut ok = true;
    for (k, val) in m {
        let Some(key) = k.as_str() else {
            ctx.err(
                path,
                InvalidDocument::Schema(format!("key {k:?} must be a string")),
            );
            ok = false;
            continue;
        };
        match val {
            Value::String(s) => {
                out.insert(key.to_string(), s.clone());
            }
            // JSON null decodes to "" in the API server.
            Value::Null => {
                out.insert(key.to_string(), String::new());
            }
            other => {
                ctx.err(
                    &path.key(key),
                    InvalidDocument::Schema(format!(
                        "value {} must be a string (quote it)",
                        scalar_text(other)
                    )),
                );
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// A YAML value as the user wrote it, for messages.
fn scalar_text(v: &Value) -> String {
    match v {
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Sequence(_) => "(a list)".to_string(),
        Value::Mapping(_) => "(a map)".to_string(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_three_served_versions_of_the_five_kinds() {
        for v in ["v1alpha3", "v1beta1", "v1"] {
            let api = format!("networking.istio.io/{v}");
            assert_eq!(unserved_istio_version(&api, "Gateway"), None);
        }
        assert!(unserved_istio_version("networking.istio.io/v2", "VirtualService").is_some());
        assert!(unserved_istio_version("networking.istio.io/v1alpha1", "Sidecar").is_some());
        // Kinds Keel does not read, and other groups, are ignored rather than rejected.
        assert_eq!(
            unserved_istio_version("networking.istio.io/v2", "EnvoyFilter"),
            None
        );
        assert_eq!(
            unserved_istio_version("gateway.networking.k8s.io/v1", "Gateway"),
            None
        );
    }
}
