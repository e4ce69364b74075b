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
    // Keel orders resources by it ("oldest wins"); the API server refuses one it cannot parse.
    if let Some(t) = m.get("creationTimestamp") {
        let ok = match t {
            Value::Null => true,
            Value::String(t) => is_rfc3339(t),
            _ => false,
        };
        if !ok {
            ctx.err(
                &mp.key("creationTimestamp"),
                InvalidDocument::Schema(
                    "creationTimestamp must be an RFC 3339 time (2026-11-30T10:00:00Z)".into(),
                ),
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

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`, fields in range, as Go's `time.RFC3339` parses.
fn is_rfc3339(t: &str) -> bool {
    let b = t.as_bytes();
    let num = |from: usize, len: usize, max: u32| -> Option<u32> {
        let digits = b.get(from..from + len)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = digits
            .iter()
            .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
        (n <= max).then_some(n)
    };
    let fields_ok = num(0, 4, 9999).is_some()
        && b.get(4) == Some(&b'-')
        && num(5, 2, 12).is_some_and(|m| m >= 1)
        && b.get(7) == Some(&b'-')
        && num(8, 2, 31).is_some_and(|d| d >= 1)
        && matches!(b.get(10), Some(b'T' | b't'))
        && num(11, 2, 23).is_some()
        && b.get(13) == Some(&b':')
        && num(14, 2, 59).is_some()
        && b.get(16) == Some(&b':')
        && num(17, 2, 59).is_some();
    // The 19 bytes checked above are ASCII, so slicing there is on a char boundary.
    let Some(mut rest) = fields_ok.then(|| t.get(19..)).flatten() else {
        return false;
    };
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &frac[digits..];
    }
    match rest.as_bytes() {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => {
            let two = |a: u8, b: u8| u32::from(a - b'0') * 10 + u32::from(b - b'0');
            [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit())
                && two(*h1, *h2) <= 23
                && two(*m1, *m2) <= 59
        }
        _ => false,
    }
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

    #[test]
    fn creation_timestamps_are_rfc3339() {
        for ok in [
            "2026-11-30T10:00:00Z",
            "2026-11-30T10:00:00.123456Z",
            "2026-11-30T10:00:00+01:00",
            "2026-11-30t10:00:00-23:59",
        ] {
            assert!(is_rfc3339(ok), "{ok}");
        }
        for bad in [
            "yesterday",
            "2026-11-30",
            "2026-11-30 10:00:00Z",
            "2026-13-30T10:00:00Z",
            "2026-11-30T24:00:00Z",
            "2026-11-30T10:00:00",
            "2026-11-30T10:00:00.Z",
            "2026-11-30T10:00:00+0100",
            "2026-11-30T10:00:00+01:0x",
        ] {
            assert!(!is_rfc3339(bad), "{bad}");
        }
    }
}
