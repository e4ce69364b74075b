//! The object store: objects by (kind, namespace, name), a global revision that every write bumps
//! (as etcd's), and a history of changes that watches and exact-revision lists read.
//!
//! Objects are kept at their kind's storage version; readers rewrite `apiVersion` to the version
//! they asked for (as a CRD with several served versions and no schema changes does).
//! Server-assigned fields: `metadata.uid`, `resourceVersion`, `creationTimestamp`, and for custom
//! resources `generation` (bumped when anything outside `metadata` and `status` changes); Services get a cluster IP from
//! the service CIDR when they ask for none; Namespaces get `status.phase: Active` and the
//! `kubernetes.io/metadata.name` label.

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;

use serde_json::{json, Map, Value};

use super::kinds::{KindInfo, KINDS, NAMESPACE, SERVICE};
use super::status::Status;

/// Namespaces every cluster starts with.
pub const INITIAL_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// How many changes the history keeps before the oldest are compacted away on their own.
const HISTORY_LIMIT: usize = 100_000;

/// First address Services are given (the service CIDR of the e2e pod networks, 10.96.0.0/16).
const CLUSTER_IP_BASE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const CLUSTER_IP_COUNT: u32 = 65_000;

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One write, as history keeps it.
#[derive(Debug, Clone)]
pub struct Change {
    /// The revision this write made.
    pub rv: u64,
    /// Index into [`KINDS`].
    pub kind: usize,
    pub namespace: String,
    pub name: String,
    pub etype: EventType,
    /// The object after the write (for a delete: its last state, with the delete's revision).
    pub object: Value,
    /// The object before the write (`None` for a create).
    pub prev: Option<Value>,
}

/// (kind index, namespace or "" when cluster-scoped, name); ordered like etcd's keys.
pub type Key = (usize, String, String);

/// All stored state.
#[derive(Debug)]
pub struct Store {
    objects: BTreeMap<Key, Value>,
    revision: u64,
    history: VecDeque<Change>,
    /// Every change after this revision is in `history`.
    compacted: u64,
    /// How many times [`Store::compact`] ran; watches started before a compaction expire.
    compactions: u64,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// A store holding the initial namespaces.
    pub fn new() -> Self {
        let mut s = Store {
            objects: BTreeMap::new(),
            revision: 0,
            history: VecDeque::new(),
            compacted: 0,
            compactions: 0,
        };
        for ns in INITIAL_NAMESPACES {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            // Cannot fail: valid names, empty store.
            let _ = s.create(NAMESPACE, None, obj);
        }
        s
    }

    /// The newest revision.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The oldest revision a watch or an exact list may start from.
    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    /// How many times [`Store::compact`] ran.
    pub fn compactions(&self) -> u64 {
        self.compactions
    }

    /// Drops the whole history: resource versions before now become too old, and watches
    /// started before now expire.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.revision;
        self.compactions += 1;
    }

    /// One object, at the storage version.
    pub fn get(&self, kind: usize, namespace: &str, name: &str) -> Result<Value, Status> {
        let info = &KINDS[kind];
        let ns = if info.namespaced { namespace } else { "" };
        self.objects
            .get(&(kind, ns.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| Status::not_found(info, name))
    }

    /// Objects of `kind` (in `namespace`, or all) at revision `at` (newest when `None`), in key
    /// order. A revision older than the history is a 410.
    pub fn list_at(
        &self,
        kind: usize,
        namespace: Option<&str>,
        at: Option<u64>,
    ) -> Result<Vec<Value>, Status> {
        let in_scope = |ns: &str| namespace.is_none_or(|want| want == ns);
        let mut state: BTreeMap<(String, String), Value> = self
            .objects
            .range((kind, String::new(), String::new())..)
            .take_while(|((k, _, _), _)| *k == kind)
            .filter(|((_, ns, _), _)| in_scope(ns))
            .map(|((_, ns, name), v)| ((ns.clone(), name.clone()), v.clone()))
            .collect();
        if let Some(at) = at.filter(|at| *at < self.revision) {
            if at < self.compacted {
                return Err(Status::expired(format!(
                    "too old resource version: {at} ({})",
                    self.compacted
                )));
            }
            // Undo the newer changes, newest first.
            for c in self.history.iter().rev().take_while(|c| c.rv > at) {
                if c.kind != kind || !in_scope(&c.namespace) {
                    continue;
                }
                let key = (c.namespace.clone(), c.name.clone());
                match &c.prev {
                    Some(prev) => state.insert(key, prev.clone()),
                    None => state.remove(&key),
                };
            }
        }
        Ok(state.into_values().collect())
    }

    /// Changes after revision `after`, oldest first; `None` when `after` is older than the
    /// history (the caller answers 410).
    pub fn changes_after(&self, after: u64) -> Option<impl Iterator<Item = &Change>> {
        if after < self.compacted {
            return None;
        }
        let start = self.history.partition_point(|c| c.rv <= after);
        Some(self.history.range(start..))
    }

    /// Creates `obj` (POST). `namespace` is the request's namespace for namespaced kinds.
    pub fn create(
        &mut self,
        kind: usize,
        namespace: Option<&str>,
        mut obj: Value,
    ) -> Result<Value, Status> {
        let info = &KINDS[kind];
        check_type(info, &obj)?;
        let ns = resolve_namespace(info, namespace, &obj)?;
        let meta = metadata_mut(&mut obj)?;
        if meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
        {
            return Err(Status::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let name = match meta.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => format!("{prefix}{}", random_suffix()),
                _ => {
                    return Err(Status::invalid(
                        info,
                        "",
                        "metadata.name: Required value: name or generateName is required",
                    ))
                }
            },
        };
        validate_name(info, &name)?;
        if !ns.is_empty() {
            match self.objects.get(&(NAMESPACE, String::new(), ns.clone())) {
                None => return Err(Status::not_found(&KINDS[NAMESPACE], &ns)),
                Some(n) if !n["metadata"]["deletionTimestamp"].is_null() => {
                    return Err(Status::forbidden(format!(
                        "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                        info.resource()
                    )))
                }
                Some(_) => {}
            }
        }
        let key = (kind, ns.clone(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(Status::already_exists(info, &name));
        }
        let rv = self.revision + 1;
        meta.insert("name".into(), name.clone().into());
        if info.namespaced {
            meta.insert("namespace".into(), ns.clone().into());
        } else {
            meta.remove("namespace");
        }
        meta.insert("uid".into(), uid().into());
        meta.insert("resourceVersion".into(), rv.to_string().into());
        meta.insert("creationTimestamp".into(), timestamp().into());
        if info.tracks_generation() {
            meta.insert("generation".into(), 1.into());
        } else {
            meta.remove("generation");
        }
        meta.remove("deletionTimestamp");
        meta.remove("deletionGracePeriodSeconds");
        obj["apiVersion"] = info.api_version(info.storage_version()).into();
        obj["kind"] = info.kind.into();
        if kind == NAMESPACE {
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = name.clone().into();
            obj["status"]["phase"] = "Active".into();
        }
        if kind == SERVICE {
            self.allocate_cluster_ip(&name, &mut obj)?;
        }
        self.commit(key, EventType::Added, obj.clone(), None);
        Ok(obj)
    }

    /// Replaces an existing object (PUT). A `metadata.resourceVersion` in `obj` must be current
    /// (else 409 Conflict); without one the update is unconditional. An update that changes
    /// nothing makes no new revision.
    pub fn update(
        &mut self,
        kind: usize,
        namespace: Option<&str>,
        name: &str,
        mut obj: Value,
    ) -> Result<Value, Status> {
        let info = &KINDS[kind];
        check_type(info, &obj)?;
        let ns = resolve_namespace(info, namespace, &obj)?;
        let key = (kind, ns.clone(), name.to_string());
        let meta = metadata_mut(&mut obj)?;
        match meta.get("name").and_then(Value::as_str) {
            Some(n) if n == name => {}
            Some(n) if !n.is_empty() => {
                return Err(Status::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )))
            }
            _ => {
                meta.insert("name".into(), name.into());
            }
        }
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| Status::not_found(info, name))?;
        let old_rv = old["metadata"]["resourceVersion"].as_str().unwrap_or("");
        if let Some(given) = meta.get("resourceVersion").and_then(Value::as_str) {
            if !given.is_empty() && given != old_rv {
                return Err(Status::conflict(info, name));
            }
        }
        // Fields the server owns.
        for field in [
            "uid",
            "creationTimestamp",
            "generation",
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            match old["metadata"].get(field) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
        if info.namespaced {
            meta.insert("namespace".into(), ns.clone().into());
        } else {
            meta.remove("namespace");
        }
        obj["apiVersion"] = info.api_version(info.storage_version()).into();
        obj["kind"] = info.kind.into();
        if kind == NAMESPACE {
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = name.into();
            if obj["status"]["phase"].is_null() {
                obj["status"]["phase"] = old["status"]["phase"].clone();
            }
        }
        if kind == SERVICE {
            // The cluster IP is immutable; a PUT that leaves it out keeps it.
            let old_ip = &old["spec"]["clusterIP"];
            match obj["spec"]["clusterIP"].as_str() {
                None | Some("") if !old_ip.is_null() => {
                    obj["spec"]["clusterIP"] = old_ip.clone();
                    obj["spec"]["clusterIPs"] = old["spec"]["clusterIPs"].clone();
                }
                Some(ip) if old_ip.as_str().is_some_and(|o| o != ip) => {
                    return Err(Status::invalid(
                        info,
                        name,
                        format!("spec.clusterIPs[0]: Invalid value: []string{{\"{ip}\"}}: may not change once set"),
                    ));
                }
                _ => {}
            }
        }
        if obj == old {
            return Ok(old);
        }
        if info.tracks_generation() && spec_changed(&old, &obj) {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            obj["metadata"]["generation"] = generation.into();
        }
        obj["metadata"]["resourceVersion"] = (self.revision + 1).to_string().into();
        self.commit(key, EventType::Modified, obj.clone(), Some(old));
        Ok(obj)
    }

    /// Deletes an object; deleting a Namespace first deletes every object in it. `precondition`
    /// is `DeleteOptions.preconditions` (`uid`, `resourceVersion`). Returns the last state.
    pub fn delete(
        &mut self,
        kind: usize,
        namespace: Option<&str>,
        name: &str,
        precondition: &Value,
    ) -> Result<Value, Status> {
        let info = &KINDS[kind];
        let ns = if info.namespaced {
            namespace.unwrap_or("default").to_string()
        } else {
            String::new()
        };
        let key = (kind, ns, name.to_string());
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| Status::not_found(info, name))?;
        for field in ["uid", "resourceVersion"] {
            if let Some(want) = precondition[field].as_str() {
                let have = old["metadata"][field].as_str().unwrap_or("");
                if want != have {
                    return Err(Status::precondition(
                        info,
                        name,
                        &format!("{field} in precondition: {want}, {field} in object meta: {have}"),
                    ));
                }
            }
        }
        if kind == NAMESPACE {
            // As the real server: the namespace turns Terminating; its contents and then the
            // namespace itself go when the namespace controller gets to it
            // ([`Store::finish_namespace`]).
            if !old["metadata"]["deletionTimestamp"].is_null() {
                return Ok(old);
            }
            let mut terminating = old.clone();
            terminating["metadata"]["deletionTimestamp"] = timestamp().into();
            terminating["metadata"]["deletionGracePeriodSeconds"] = 0.into();
            terminating["status"]["phase"] = "Terminating".into();
            terminating["metadata"]["resourceVersion"] = (self.revision + 1).to_string().into();
            self.commit(key, EventType::Modified, terminating.clone(), Some(old));
            return Ok(terminating);
        }
        Ok(self.remove(key, old))
    }

    /// The namespace controller's part of deleting a namespace: every object in it, then the
    /// namespace. A no-op unless the namespace is terminating.
    pub fn finish_namespace(&mut self, name: &str) {
        let key = (NAMESPACE, String::new(), name.to_string());
        let Some(ns) = self.objects.get(&key).cloned() else {
            return;
        };
        if ns["metadata"]["deletionTimestamp"].is_null() {
            return;
        }
        let contained: Vec<Key> = self
            .objects
            .keys()
            .filter(|(k, ns, _)| KINDS[*k].namespaced && ns == name)
            .cloned()
            .collect();
        for k in contained {
            if let Some(obj) = self.objects.get(&k).cloned() {
                self.remove(k, obj);
            }
        }
        self.remove(key, ns);
    }

    fn remove(&mut self, key: Key, old: Value) -> Value {
        let mut last = old.clone();
        last["metadata"]["resourceVersion"] = (self.revision + 1).to_string().into();
        self.commit(key, EventType::Deleted, last.clone(), Some(old));
        last
    }

    /// Records a write at the next revision.
    fn commit(&mut self, key: Key, etype: EventType, object: Value, prev: Option<Value>) {
        self.revision += 1;
        match etype {
            EventType::Deleted => self.objects.remove(&key),
            _ => self.objects.insert(key.clone(), object.clone()),
        };
        let (kind, namespace, name) = key;
        self.history.push_back(Change {
            rv: self.revision,
            kind,
            namespace,
            name,
            etype,
            object,
            prev,
        });
        while self.history.len() > HISTORY_LIMIT {
            if let Some(c) = self.history.pop_front() {
                self.compacted = c.rv;
            }
        }
    }

    /// Gives a Service without `spec.clusterIP` the first free address; a requested address
    /// must be free (422, as the real allocator answers).
    fn allocate_cluster_ip(&self, name: &str, obj: &mut Value) -> Result<(), Status> {
        if obj["spec"]["type"].as_str() == Some("ExternalName") {
            return Ok(());
        }
        let taken: Vec<&str> = self
            .objects
            .iter()
            .filter(|((k, _, _), _)| *k == SERVICE)
            .filter_map(|(_, v)| v["spec"]["clusterIP"].as_str())
            .collect();
        let ip = match obj["spec"]["clusterIP"].as_str() {
            Some("None") => return Ok(()),
            Some(ip) if !ip.is_empty() => {
                if taken.contains(&ip) {
                    return Err(Status::invalid(
                        &KINDS[SERVICE],
                        name,
                        format!("spec.clusterIPs: Invalid value: []string{{\"{ip}\"}}: failed to allocate IP {ip}: provided IP is already allocated"),
                    ));
                }
                ip.to_string()
            }
            _ => {
                let base = u32::from(CLUSTER_IP_BASE);
                (0..CLUSTER_IP_COUNT)
                    .map(|i| Ipv4Addr::from(base + i).to_string())
                    .find(|ip| !taken.contains(&ip.as_str()))
                    .ok_or_else(|| {
                        Status::invalid(
                            &KINDS[SERVICE],
                            name,
                            "spec.clusterIPs: Internal error: range is full",
                        )
                    })?
            }
        };
        obj["spec"]["clusterIP"] = ip.clone().into();
        if obj["spec"]["clusterIPs"].is_null() {
            obj["spec"]["clusterIPs"] = json!([ip]);
        }
        Ok(())
    }
}

/// `apiVersion`/`kind` in a request body, when present, must name the kind of the URL.
fn check_type(info: &KindInfo, obj: &Value) -> Result<(), Status> {
    if !obj.is_object() {
        return Err(Status::bad_request(
            "the body of the request is not a JSON object",
        ));
    }
    if let Some(k) = obj["kind"].as_str() {
        if k != info.kind {
            return Err(Status::bad_request(format!(
                "the kind of the object ({k}) does not match the kind of the request ({})",
                info.kind
            )));
        }
    }
    if let Some(av) = obj["apiVersion"].as_str() {
        let (group, version) = av.rsplit_once('/').unwrap_or(("", av));
        if group != info.group || !info.serves(version) {
            return Err(Status::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                info.api_version(info.storage_version())
            )));
        }
    }
    Ok(())
}

/// The namespace an object lands in: the request's, which the body may repeat but not contradict.
fn resolve_namespace(
    info: &KindInfo,
    namespace: Option<&str>,
    obj: &Value,
) -> Result<String, Status> {
    if !info.namespaced {
        return Ok(String::new());
    }
    let body = obj["metadata"]["namespace"]
        .as_str()
        .filter(|s| !s.is_empty());
    match (namespace, body) {
        (Some(url), Some(body)) if url != body => Err(Status::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        (Some(url), _) => Ok(url.to_string()),
        (None, Some(body)) => Ok(body.to_string()),
        (None, None) => Ok("default".to_string()),
    }
}

fn metadata_mut(obj: &mut Value) -> Result<&mut Map<String, Value>, Status> {
    if obj["metadata"].is_null() {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .ok_or_else(|| Status::bad_request("metadata is not an object"))
}

/// RFC 1123 subdomain (a label for namespaces), as the real server validates names.
fn validate_name(info: &KindInfo, name: &str) -> Result<(), Status> {
    let label_only = info.kind == "Namespace";
    let max = if label_only { 63 } else { 253 };
    let ok_char = |c: char| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (c == '.' && !label_only)
    };
    let ok = !name.is_empty()
        && name.len() <= max
        && name.chars().all(ok_char)
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        return Ok(());
    }
    let what = if label_only {
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
    } else {
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
    };
    Err(Status::invalid(
        info,
        name,
        format!("metadata.name: Invalid value: \"{name}\": {what}"),
    ))
}

/// Whether anything outside `metadata` and `status` differs (what bumps `generation`).
fn spec_changed(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("metadata");
            m.remove("status");
        }
        v
    };
    strip(old) != strip(new)
}

/// `n` random bytes as lower-case hex.
pub(crate) fn random_hex(n: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    let filled = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf));
    if filled.is_err() {
        // Unique enough for a test server: time and a counter.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (seed >> ((i % 8) * 8)) as u8;
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A version-4-shaped UUID.
fn uid() -> String {
    let h = random_hex(16);
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// Five characters as `generateName` appends.
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    random_hex(5)
        .as_bytes()
        .chunks(2)
        .map(|pair| {
            let n = u8::from_str_radix(std::str::from_utf8(pair).unwrap_or("0"), 16).unwrap_or(0);
            ALPHABET[n as usize % ALPHABET.len()] as char
        })
        .collect()
}

/// Now as RFC 3339 UTC with seconds (`2026-11-30T18:04:05Z`), the API's timestamp format.
pub(crate) fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_utc(secs)
}

fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::kinds::by_name;

    fn kind(name: &str) -> usize {
        by_name(name).unwrap_or(usize::MAX)
    }

    #[test]
    fn time_format() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(1_796_040_245), "2026-11-30T12:04:05Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn writes_and_history() -> Result<(), Status> {
        let mut s = Store::new();
        let pods = kind("vs");
        let start = s.revision();
        let a = s.create(
            pods,
            Some("default"),
            json!({"metadata": {"name": "a"}, "spec": {"x": 1}}),
        )?;
        assert_eq!(a["metadata"]["resourceVersion"], (start + 1).to_string());
        assert_eq!(a["metadata"]["generation"], 1);
        assert_eq!(a["apiVersion"], "networking.istio.io/v1");
        let dup = s.create(pods, Some("default"), json!({"metadata": {"name": "a"}}));
        assert_eq!(dup.err().map(|e| e.reason), Some("AlreadyExists"));
        let missing_ns = s.create(pods, Some("nope"), json!({"metadata": {"name": "a"}}));
        assert_eq!(
            missing_ns.err().map(|e| e.message),
            Some("namespaces \"nope\" not found".into())
        );

        let mut b = a.clone();
        b["spec"]["x"] = 2.into();
        let b = s.update(pods, Some("default"), "a", b)?;
        assert_eq!(b["metadata"]["generation"], 2);
        assert_eq!(b["metadata"]["uid"], a["metadata"]["uid"]);
        // Stale resourceVersion.
        let stale = s.update(pods, Some("default"), "a", a.clone());
        assert_eq!(stale.err().map(|e| e.code), Some(409));
        // No-op update: no new revision.
        let rv = s.revision();
        s.update(pods, Some("default"), "a", b.clone())?;
        assert_eq!(s.revision(), rv);

        // The list at the create's revision shows the first state.
        let then = s.list_at(pods, None, Some(start + 1))?;
        assert_eq!(then.len(), 1);
        assert_eq!(then[0]["spec"]["x"], 1);
        let gone = s.delete(pods, Some("default"), "a", &Value::Null)?;
        assert_eq!(
            gone["metadata"]["resourceVersion"],
            s.revision().to_string()
        );
        assert!(s.list_at(pods, None, None)?.is_empty());
        let types: Vec<_> = s
            .changes_after(start)
            .into_iter()
            .flatten()
            .map(|c| c.etype)
            .collect();
        assert_eq!(
            types,
            [EventType::Added, EventType::Modified, EventType::Deleted]
        );

        s.compact();
        assert!(s.changes_after(start).is_none());
        assert_eq!(
            s.list_at(pods, None, Some(start)).err().map(|e| e.code),
            Some(410)
        );
        Ok(())
    }

    #[test]
    fn namespaces_terminate_then_go() -> Result<(), Status> {
        let mut s = Store::new();
        let ns = kind("ns");
        s.create(ns, None, json!({"metadata": {"name": "x"}}))?;
        s.create(kind("pods"), Some("x"), json!({"metadata": {"name": "p"}}))?;
        let t = s.delete(ns, None, "x", &Value::Null)?;
        assert_eq!(t["status"]["phase"], "Terminating");
        let refused = s.create(kind("pods"), Some("x"), json!({"metadata": {"name": "q"}}));
        assert_eq!(refused.err().map(|e| e.code), Some(403));
        assert_eq!(s.list_at(kind("pods"), Some("x"), None)?.len(), 1);
        s.finish_namespace("x");
        assert!(s.list_at(kind("pods"), Some("x"), None)?.is_empty());
        assert_eq!(s.get(ns, "", "x").err().map(|e| e.code), Some(404));
        Ok(())
    }

    #[test]
    fn services_get_cluster_ips() -> Result<(), Status> {
        let mut s = Store::new();
        let svc = kind("svc");
        let a = s.create(
            svc,
            Some("default"),
            json!({"metadata": {"name": "a"}, "spec": {}}),
        )?;
        let b = s.create(
            svc,
            Some("default"),
            json!({"metadata": {"name": "b"}, "spec": {"clusterIP": "10.96.0.10"}}),
        );
        assert_eq!(a["spec"]["clusterIP"], "10.96.0.10");
        assert_eq!(a["spec"]["clusterIPs"], json!(["10.96.0.10"]));
        assert_eq!(b.err().map(|e| e.code), Some(422));
        let headless = s.create(
            svc,
            Some("default"),
            json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None"}}),
        )?;
        assert_eq!(headless["spec"]["clusterIP"], "None");
        let c = s.create(
            svc,
            Some("default"),
            json!({"metadata": {"name": "c"}, "spec": {}}),
        )?;
        assert_eq!(c["spec"]["clusterIP"], "10.96.0.11");
        // A PUT without the IP keeps it.
        let put = s.update(
            svc,
            Some("default"),
            "c",
            json!({"metadata": {"name": "c"}, "spec": {"ports": []}}),
        )?;
        assert_eq!(put["spec"]["clusterIP"], "10.96.0.11");
        Ok(())
    }
}
