//! HTTP: bearer-token check, routing of the API paths, the verbs (list, watch, get, create,
//! update, patch, delete), request and response bodies, and `Status` errors with their codes.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::kinds::{self, KINDS};
use super::selector::{FieldSelector, LabelSelector};
use super::status::Status;
use super::watch::{self, WatchRequest};
use super::{discovery, openapi, patch, Shared};

/// Largest request body accepted (the real server's limit is 3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// A response body: one buffer, or a watch stream of chunks.
pub enum ApiBody {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl Body for ApiBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ApiBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ApiBody::Stream(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, ApiBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ApiBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ApiBody::Full(None) => SizeHint::with_exact(0),
            ApiBody::Stream(_) => SizeHint::default(),
        }
    }
}

type Reply = Response<ApiBody>;

fn json_reply(code: u16, v: &Value) -> Reply {
    let mut resp = Response::new(ApiBody::Full(Some(Bytes::from(v.to_string()))));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error_reply(s: &Status) -> Reply {
    json_reply(s.code, &s.to_json())
}

/// Serves one request.
pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Reply, Infallible> {
    let authorized = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t == shared.token);
    if !authorized {
        return Ok(error_reply(&Status::unauthorized()));
    }
    let method = req.method().clone();
    shared.log_request(format!(
        "{method} {}",
        req.uri()
            .path_and_query()
            .map_or(req.uri().path(), |pq| pq.as_str())
    ));
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query().unwrap_or(""));
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let accept = req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = match read_body(req.into_body()).await {
        Ok(b) => b,
        Err(s) => return Ok(error_reply(&s)),
    };
    let call = Call {
        shared,
        method,
        query,
        content_type,
        accept,
        body,
    };
    Ok(match call.route(&path) {
        Ok(reply) => reply,
        Err(s) => error_reply(&s),
    })
}

async fn read_body(body: Incoming) -> Result<Bytes, Status> {
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Status::too_large()),
        Err(e) => Err(Status::bad_request(format!(
            "reading the request body: {e}"
        ))),
    }
}

/// `a=b&c=d` with percent-decoding (and `+` as space, as Go's `url.ParseQuery` reads it).
fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where a resource request points.
struct Target {
    kind: usize,
    version: String,
    namespace: Option<String>,
    name: Option<String>,
}

struct Call {
    shared: Arc<Shared>,
    method: Method,
    query: HashMap<String, String>,
    content_type: String,
    accept: String,
    body: Bytes,
}

impl Call {
    fn route(&self, path: &str) -> Result<Reply, Status> {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let get_only = |v: Option<Value>| -> Result<Reply, Status> {
            if self.method != Method::GET {
                return Err(Status::method_not_allowed());
            }
            v.map(|v| json_reply(200, &v)).ok_or_else(Status::no_route)
        };
        match segs.as_slice() {
            ["version"] => get_only(Some(discovery::version())),
            ["healthz" | "livez" | "readyz"] => Ok(Response::new(ApiBody::Full(Some(
                Bytes::from_static(b"ok"),
            )))),
            ["api"] => get_only(Some(discovery::core_versions(&self.shared.address))),
            ["apis"] => get_only(Some(discovery::group_list())),
            ["openapi", "v2"] if self.method == Method::GET => Ok(self.openapi_v2()),
            ["openapi", "v3"] => get_only(Some(openapi::index())),
            ["openapi", "v3", "api", version] => get_only(openapi::group_version("", version)),
            ["openapi", "v3", "apis", group, version] => {
                get_only(openapi::group_version(group, version))
            }
            ["apis", group] => get_only(discovery::group(group)),
            ["api", version] => get_only(discovery::resource_list("", version)),
            ["apis", group, version] => get_only(discovery::resource_list(group, version)),
            ["api", version, rest @ ..] => self.resource(target("", version, rest)?),
            ["apis", group, version, rest @ ..] => self.resource(target(group, version, rest)?),
            _ => Err(Status::no_route()),
        }
    }

    /// An OpenAPI v2 document without definitions. kubectl before field validation moved to the
    /// server (1.25) downloads it to validate manifests, and skips kinds it does not describe.
    /// kubectl asks for protobuf, where an empty message is an empty document.
    fn openapi_v2(&self) -> Reply {
        if self.accept.contains("protobuf") {
            let mut resp = Response::new(ApiBody::Full(Some(Bytes::new())));
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(
                    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                ),
            );
            return resp;
        }
        json_reply(200, &openapi::v2())
    }

    fn resource(&self, t: Target) -> Result<Reply, Status> {
        match (&self.method, &t.name) {
            (&Method::GET, None) if self.flag("watch") => self.watch(t),
            (&Method::GET, None) => self.list(t),
            (&Method::GET, Some(name)) => {
                let store = self.shared.lock_store();
                let obj = store.get(t.kind, t.namespace.as_deref().unwrap_or(""), name)?;
                Ok(json_reply(200, &present(&obj, t.kind, &t.version)))
            }
            (&Method::POST, None) => {
                let obj = self.body_json()?;
                let created = self
                    .shared
                    .write(|s| s.create(t.kind, t.namespace.as_deref(), obj))?;
                Ok(json_reply(201, &present(&created, t.kind, &t.version)))
            }
            (&Method::PUT, Some(name)) => {
                let obj = self.body_json()?;
                let updated = self
                    .shared
                    .write(|s| s.update(t.kind, t.namespace.as_deref(), name, obj))?;
                Ok(json_reply(200, &present(&updated, t.kind, &t.version)))
            }
            (&Method::PATCH, Some(name)) => self.patch(&t, name),
            (&Method::DELETE, Some(name)) => {
                let options = if self.body.is_empty() {
                    Value::Null
                } else {
                    self.body_json()?
                };
                let gone = self.shared.delete(
                    t.kind,
                    t.namespace.as_deref(),
                    name,
                    &options["preconditions"],
                )?;
                Ok(json_reply(200, &present(&gone, t.kind, &t.version)))
            }
            _ => Err(Status::method_not_allowed()),
        }
    }

    fn flag(&self, name: &str) -> bool {
        matches!(self.query.get(name).map(String::as_str), Some("1" | "true"))
    }

    fn body_json(&self) -> Result<Value, Status> {
        let ct = self.content_type.split(';').next().unwrap_or("").trim();
        let parsed = match ct {
            "application/yaml" => {
                serde_yaml::from_slice::<Value>(&self.body).map_err(|e| e.to_string())
            }
            "application/json"
            | ""
            | "application/merge-patch+json"
            | "application/strategic-merge-patch+json" => {
                serde_json::from_slice::<Value>(&self.body).map_err(|e| e.to_string())
            }
            other => return Err(Status::unsupported_media(other)),
        };
        parsed.map_err(|e| Status::bad_request(format!("the request body is not valid: {e}")))
    }

    fn patch(&self, t: &Target, name: &str) -> Result<Reply, Status> {
        let ct = self.content_type.split(';').next().unwrap_or("").trim();
        let strategic = match ct {
            "application/merge-patch+json" => false,
            "application/strategic-merge-patch+json" => true,
            other => return Err(Status::unsupported_media(other)),
        };
        let p = self.body_json()?;
        let ns = t.namespace.as_deref();
        let patched = self.shared.write(|s| {
            let mut obj = s.get(t.kind, ns.unwrap_or(""), name)?;
            // Only a resourceVersion the patch itself carries is a precondition.
            let given = p["metadata"]["resourceVersion"].clone();
            patch::apply(&mut obj, &p, strategic);
            obj["metadata"]["resourceVersion"] = given;
            s.update(t.kind, ns, name, obj)
        })?;
        Ok(json_reply(200, &present(&patched, t.kind, &t.version)))
    }

    fn selectors(&self, kind: usize) -> Result<(LabelSelector, FieldSelector), Status> {
        let labels =
            LabelSelector::parse(self.query.get("labelSelector").map_or("", String::as_str))?;
        let fields = FieldSelector::parse(
            self.query.get("fieldSelector").map_or("", String::as_str),
            &KINDS[kind],
        )?;
        Ok((labels, fields))
    }

    /// `resourceVersion` as a number; `None` for unset or `"0"` (any / most recent).
    fn resource_version(&self) -> Result<Option<u64>, Status> {
        match self.query.get("resourceVersion").map(String::as_str) {
            None | Some("") | Some("0") => Ok(None),
            Some(v) => v
                .parse::<u64>()
                .map(Some)
                .map_err(|_| Status::bad_request(format!("invalid resource version: {v:?}"))),
        }
    }

    fn list(&self, t: Target) -> Result<Reply, Status> {
        let info = &KINDS[t.kind];
        let (labels, fields) = self.selectors(t.kind)?;
        let limit = match self.query.get("limit") {
            Some(l) => l
                .parse::<usize>()
                .map_err(|_| Status::bad_request(format!("invalid limit: {l:?}")))?,
            None => 0,
        };
        let token = self.query.get("continue").filter(|c| !c.is_empty());
        let rv = self.resource_version()?;
        let exact = self.query.get("resourceVersionMatch").map(String::as_str) == Some("Exact")
            || (rv.is_some() && limit > 0 && !self.query.contains_key("resourceVersionMatch"));
        let (at, after) = match token {
            Some(_) if rv.is_some() => {
                return Err(Status::bad_request(
                    "specifying resource version is not allowed when using continue",
                ))
            }
            Some(tok) => {
                let (at, after) = decode_continue(tok)?;
                (Some(at), Some(after))
            }
            None if exact => (rv, None),
            None => (None, None),
        };
        let store = self.shared.lock_store();
        let snapshot_rv = at.unwrap_or(store.revision());
        let objects = store
            .list_at(t.kind, t.namespace.as_deref(), at)
            .map_err(|e| match token {
                Some(_) => Status::expired(
                    "The provided continue parameter is too old to display a consistent list result. \
                     You can start a new list without the continue parameter, or use the continue token \
                     in this response to retrieve the remainder of the results.",
                ),
                None => e,
            })?;
        drop(store);
        let key_of = |o: &Value| {
            format!(
                "{}/{}",
                o["metadata"]["namespace"].as_str().unwrap_or(""),
                o["metadata"]["name"].as_str().unwrap_or("")
            )
        };
        let mut matching = objects
            .iter()
            .filter(|o| after.as_deref().is_none_or(|a| key_of(o).as_str() > a))
            .filter(|o| labels.matches(o) && fields.matches(o));
        let page: Vec<Value> = if limit > 0 {
            matching
                .by_ref()
                .take(limit)
                .map(|o| present(o, t.kind, &t.version))
                .collect()
        } else {
            matching
                .by_ref()
                .map(|o| present(o, t.kind, &t.version))
                .collect()
        };
        let remaining = matching.count();
        let mut meta = json!({"resourceVersion": snapshot_rv.to_string()});
        if remaining > 0 {
            if let Some(last) = page.last() {
                meta["continue"] = encode_continue(snapshot_rv, &key_of(last)).into();
                meta["remainingItemCount"] = remaining.into();
            }
        }
        let list = json!({
            "kind": format!("{}List", info.kind),
            "apiVersion": info.api_version(&t.version),
            "metadata": meta,
            "items": page,
        });
        Ok(json_reply(200, &list))
    }

    fn watch(&self, t: Target) -> Result<Reply, Status> {
        let (labels, fields) = self.selectors(t.kind)?;
        let timeout = match self.query.get("timeoutSeconds") {
            Some(s) => Some(Duration::from_secs(s.parse::<u64>().map_err(|_| {
                Status::bad_request(format!("invalid timeoutSeconds: {s:?}"))
            })?)),
            None => None,
        };
        let req = WatchRequest {
            kind: t.kind,
            version: t.version,
            namespace: t.namespace,
            labels,
            fields,
            resource_version: self.resource_version()?,
            allow_bookmarks: self.flag("allowWatchBookmarks"),
            send_initial_events: self.flag("sendInitialEvents"),
            timeout,
        };
        let rx = watch::start(self.shared.clone(), req);
        let mut resp = Response::new(ApiBody::Stream(rx));
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        Ok(resp)
    }
}

/// Resolves the path after `/api/v1` or `/apis/<group>/<version>`.
fn target(group: &str, version: &str, rest: &[&str]) -> Result<Target, Status> {
    let find = |plural: &str| kinds::by_path(group, version, plural).ok_or_else(Status::no_route);
    let (kind, namespace, name) = match rest {
        ["namespaces", ns, plural] if kinds::by_path(group, version, plural).is_some() => {
            (find(plural)?, Some(ns.to_string()), None)
        }
        ["namespaces", ns, plural, name] => {
            (find(plural)?, Some(ns.to_string()), Some(name.to_string()))
        }
        [plural] => (find(plural)?, None, None),
        [plural, name] => (find(plural)?, None, Some(name.to_string())),
        _ => return Err(Status::no_route()),
    };
    let namespaced = KINDS[kind].namespaced;
    // A namespaced kind's single objects live under /namespaces/<ns>/; cluster-scoped kinds
    // never do.
    if (namespaced && name.is_some() && namespace.is_none()) || (!namespaced && namespace.is_some())
    {
        return Err(Status::no_route());
    }
    Ok(Target {
        kind,
        version: version.to_string(),
        namespace,
        name,
    })
}

/// The stored object as the requested version shows it.
fn present(obj: &Value, kind: usize, version: &str) -> Value {
    let mut obj = obj.clone();
    obj["apiVersion"] = KINDS[kind].api_version(version).into();
    obj
}

/// Continue tokens have the real server's shape: unpadded URL-safe base64 of `{"v":"meta.k8s.io/v1","rv":N,
/// "start":"<key>\u0000"}` (the list resumes after `<key>`, at revision N).
fn encode_continue(rv: u64, last_key: &str) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{last_key}\u{0}")});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode_continue(token: &str) -> Result<(u64, String), Status> {
    let bad = || Status::bad_request(format!("continue key is not valid: {token:?}"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = v["rv"].as_u64().ok_or_else(bad)?;
    let start = v["start"].as_str().ok_or_else(bad)?;
    Ok((rv, start.trim_end_matches('\u{0}').to_string()))
}
