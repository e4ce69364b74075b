//! `Status`: the API server's error object (`kind: Status`, `status: Failure`), with the reasons and
//! messages the real server uses, so clients print and branch on them as they would in a cluster.

use serde_json::{json, Value};

use super::kinds::KindInfo;

/// A failed API call: HTTP code, machine-readable reason and the message `kubectl` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// HTTP status code (404, 409, 410, ...).
    pub code: u16,
    /// `NotFound`, `AlreadyExists`, `Conflict`, `Expired`, `BadRequest`, `Invalid`, ...
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
    /// `details.name`, when about one object.
    pub name: Option<String>,
    /// `details.kind` (the plural resource, as the real server puts it), when about one object.
    pub kind: Option<String>,
    /// `details.group`, when about one object of a named group.
    pub group: Option<String>,
}

impl Status {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Status {
            code,
            reason,
            message: message.into(),
            name: None,
            kind: None,
            group: None,
        }
    }

    fn about(mut self, kind: &KindInfo, name: &str) -> Self {
        self.name = Some(name.to_string());
        self.kind = Some(kind.plural.to_string());
        if !kind.group.is_empty() {
            self.group = Some(kind.group.to_string());
        }
        self
    }

    /// 404 `pods "x" not found`.
    pub fn not_found(kind: &KindInfo, name: &str) -> Self {
        Status::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", kind.resource()),
        )
        .about(kind, name)
    }

    /// 404 for a path the server does not serve.
    pub fn no_route() -> Self {
        Status::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// 409 `pods "x" already exists`.
    pub fn already_exists(kind: &KindInfo, name: &str) -> Self {
        Status::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", kind.resource()),
        )
        .about(kind, name)
    }

    /// 409 Conflict on a stale `resourceVersion` (optimistic concurrency).
    pub fn conflict(kind: &KindInfo, name: &str) -> Self {
        Status::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                kind.resource()
            ),
        )
        .about(kind, name)
    }

    /// 409 Conflict on a failed delete precondition.
    pub fn precondition(kind: &KindInfo, name: &str, what: &str) -> Self {
        Status::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: {what}",
                kind.resource()
            ),
        )
        .about(kind, name)
    }

    /// 410 Expired: a resource version older than the retained history.
    pub fn expired(message: impl Into<String>) -> Self {
        Status::new(410, "Expired", message)
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Status::new(400, "BadRequest", message)
    }

    /// 422 Invalid: `Pod "x" is invalid: <field>: <reason>`.
    pub fn invalid(kind: &KindInfo, name: &str, detail: impl AsRef<str>) -> Self {
        Status::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {}", kind.kind, detail.as_ref()),
        )
        .about(kind, name)
    }

    /// 401 Unauthorized (missing or wrong bearer token).
    pub fn unauthorized() -> Self {
        Status::new(401, "Unauthorized", "Unauthorized")
    }

    /// 403 Forbidden.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Status::new(403, "Forbidden", message)
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed() -> Self {
        Status::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media(content_type: &str) -> Self {
        Status::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {content_type:?})"),
        )
    }

    /// 413 RequestEntityTooLarge.
    pub fn too_large() -> Self {
        Status::new(413, "RequestEntityTooLarge", "request entity too large")
    }

    /// The `Status` object as the server sends it.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if self.name.is_some() || self.kind.is_some() {
            let mut details = serde_json::Map::new();
            if let Some(n) = &self.name {
                details.insert("name".into(), n.clone().into());
            }
            if let Some(g) = &self.group {
                details.insert("group".into(), g.clone().into());
            }
            if let Some(k) = &self.kind {
                details.insert("kind".into(), k.clone().into());
            }
            v["details"] = Value::Object(details);
        }
        v
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for Status {}
