//! Minimal OpenAPI documents. v2: an empty document (see `Call::openapi_v2`). v3: `/openapi/v3` (the index of group-versions) and
//! `/openapi/v3/api/v1`, `/openapi/v3/apis/<group>/<version>`, each listing the item paths of its
//! kinds with a PATCH operation that declares the `fieldValidation` query parameter.
//!
//! That is what `kubectl` (create, replace, apply) looks for to decide that the server validates
//! fields itself (it then sends `fieldValidation=Strict` instead of validating against schemas it
//! would download). No schemas are served: `kubectl explain` has nothing to show, and unknown
//! fields are not rejected here as a real server with structural schemas would.

use serde_json::{json, Map, Value};

use super::kinds::{groups, KINDS};

/// `/openapi/v2` as JSON: a Swagger 2.0 document with no paths and no definitions.
pub fn v2() -> Value {
    json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.33.0"}, "paths": {}, "definitions": {}})
}

/// The index: `{"paths": {"api/v1": {"serverRelativeURL": ...}, ...}}`.
pub fn index() -> Value {
    let mut paths = Map::new();
    let mut add = |gv: String| {
        let url = format!("/openapi/v3/{gv}?hash=0");
        paths.insert(gv, json!({"serverRelativeURL": url}));
    };
    add("api/v1".to_string());
    for (group, versions) in groups() {
        for v in versions {
            add(format!("apis/{group}/{v}"));
        }
    }
    json!({"paths": paths})
}

/// The document of one group-version (`group` `""` is the core group), if served.
pub fn group_version(group: &str, version: &str) -> Option<Value> {
    let prefix = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    let mut paths = Map::new();
    for k in KINDS
        .iter()
        .filter(|k| k.group == group && k.serves(version))
    {
        let path = if k.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", k.plural)
        } else {
            format!("{prefix}/{}/{{name}}", k.plural)
        };
        let patch = json!({
            "operationId": format!("patch{}", k.kind),
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": {"group": k.group, "version": version, "kind": k.kind},
            "parameters": [
                {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            ],
            "responses": {"200": {"description": "OK"}},
        });
        paths.insert(path, json!({"patch": patch}));
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {},
    }))
}
