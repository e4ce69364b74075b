//! Hot reload with per-resource rejection, for every source.
//!
//! A source hands over its current objects, each converted on its own ([`policy::convert`]). A
//! resource that is rejected (by conversion, or when assembled: a duplicate name, a taken cluster
//! IP) is replaced by the last version of it that was accepted, if any, so a bad edit to one
//! VirtualService neither takes the others down nor removes the good version of itself; a resource
//! that is gone from the source is gone. The last good versions are kept *converted*, keyed by
//! object ([`LastGood`]), so keeping one costs no reconversion and no YAML.
//!
//! Invariant: `LastGood` only ever holds objects that converted and assembled without error.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::policy::{self, Converted, LoadReport};
use crate::source::kube::Change;
use crate::source::{self, ObjectKey, Origin, SourceObject};

/// What changed on disk since the last look: path, size, modification time, inode of every YAML file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fingerprint(Vec<(PathBuf, u64, Option<SystemTime>, u64)>);

/// Fingerprint the YAML files of `dir` (following symlinks, as `source::read_dir` does).
pub fn fingerprint(dir: &Path) -> std::io::Result<Fingerprint> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let is_yaml = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e == "yaml" || e == "yml");
        if !is_yaml {
            continue;
        }
        if let Ok(m) = std::fs::metadata(&path) {
            if m.is_file() {
                out.push((path, m.len(), m.modified().ok(), m.ino()));
            }
        }
    }
    out.sort();
    Ok(Fingerprint(out))
}

/// The outcome of one load.
#[derive(Debug)]
pub struct Reloaded {
    /// The report of the resources as the source has them (what the user wrote, with its errors).
    /// Its `snapshot` is left empty: the snapshot to serve is `serving` (not kept twice).
    pub on_disk: LoadReport,
    /// The snapshot to serve: accepted resources plus the last good version of rejected ones.
    pub serving: policy::Snapshot,
    /// Rejected resources that kept serving their previous version.
    pub kept_previous: usize,
    /// Those resources.
    pub kept: Vec<ObjectKey>,
}

/// The last accepted version of each resource, converted.
#[derive(Debug, Default)]
pub struct LastGood(HashMap<ObjectKey, Arc<Converted>>);

impl LastGood {
    /// Assembles `current` (the source's objects in order, with the key each stands for: its own,
    /// or for an unparseable one the resource that used to be there) into what to report and what
    /// to serve, and remembers the accepted versions.
    pub fn apply(&mut self, current: &[(Option<ObjectKey>, Arc<Converted>)]) -> Reloaded {
        let mut on_disk = policy::assemble(current.iter().map(|(_, c)| &**c));
        let assembly_rejected: HashSet<usize> =
            on_disk.rejected_when_assembled.iter().copied().collect();
        let rejected = |i: usize, c: &Converted| !c.accepted() || assembly_rejected.contains(&i);

        let mut kept = Vec::new();
        let mut serving_objects: Vec<&Converted> = Vec::with_capacity(current.len());
        for (i, (_, c)) in current.iter().enumerate() {
            if !rejected(i, c) {
                serving_objects.push(c);
            }
        }
        for (i, (key, c)) in current.iter().enumerate() {
            if !rejected(i, c) {
                continue;
            }
            if let Some((key, prev)) = key.as_ref().and_then(|k| Some((k, self.0.get(k)?))) {
                serving_objects.push(prev);
                kept.push(key.clone());
            }
        }
        let serving = if kept.is_empty() && assembly_rejected.is_empty() {
            std::mem::take(&mut on_disk.snapshot)
        } else {
            on_disk.snapshot = policy::Snapshot::default();
            policy::assemble(serving_objects).snapshot
        };

        // Accepted versions become the last good ones; resources gone from the source are
        // forgotten; rejected ones keep their previous version.
        let present: HashSet<&ObjectKey> = current.iter().filter_map(|(k, _)| k.as_ref()).collect();
        self.0.retain(|k, _| present.contains(k));
        for (i, (key, c)) in current.iter().enumerate() {
            if let (Some(key), false) = (key, rejected(i, c)) {
                self.0.insert(key.clone(), Arc::clone(c));
            }
        }
        Reloaded {
            on_disk,
            serving,
            kept_previous: kept.len(),
            kept,
        }
    }
}

/// Loads the config directory, remembering the last accepted version of each resource.
#[derive(Debug)]
pub struct Reloader {
    dir: PathBuf,
    last_good: LastGood,
    /// (file, document index) -> the object found there last time and its conversion: an unchanged
    /// document is not converted again, and an unparseable one is taken for what used to be there.
    previous: HashMap<(String, usize), (SourceObject, Arc<Converted>)>,
}

impl Reloader {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            last_good: LastGood::default(),
            previous: HashMap::new(),
        }
    }

    /// The directory being watched.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Load the directory now.
    pub fn load(&mut self) -> Result<Reloaded, source::Error> {
        let docs = source::expand_lists(&source::read_dir(&self.dir)?);
        // A document whose text and place are what they were is taken over whole, parsed and
        // converted: with thousands of files, parsing them all again was most of a reload.
        let mut previous = std::mem::take(&mut self.previous);
        let mut objects = Vec::with_capacity(docs.len());
        let mut converted: Vec<Option<Arc<Converted>>> = Vec::with_capacity(docs.len());
        for doc in docs {
            let position = (doc.file.clone(), doc.index);
            match previous.remove(&position) {
                Some((obj, c)) if obj.same_document(&doc) => {
                    objects.push(obj);
                    converted.push(Some(c));
                }
                stale => {
                    if let Some(stale) = stale {
                        // Still the key an unparseable document at this place stands for.
                        previous.insert(position, stale);
                    }
                    objects.push(SourceObject::from_document(doc));
                    converted.push(None);
                }
            }
        }
        self.previous = previous;
        let converted = self.convert_changed(&objects, converted);
        let current: Vec<(Option<ObjectKey>, Arc<Converted>)> = objects
            .iter()
            .zip(&converted)
            .map(|(obj, c)| {
                let key = c.key.clone().or_else(|| {
                    // Unparseable now: it is most likely what used to be at the same place.
                    obj.position()
                        .and_then(|pos| self.previous.get(&pos))
                        .and_then(|(_, prev)| prev.key.clone())
                });
                (key, Arc::clone(c))
            })
            .collect();
        let reloaded = self.last_good.apply(&current);
        self.previous = objects
            .into_iter()
            .zip(converted)
            .filter_map(|(obj, c)| Some((obj.position()?, (obj, c))))
            .collect();
        Ok(reloaded)
    }

    /// Each object's conversion: `reused` where given (an object unchanged at its place), a new one
    /// (on two threads when there are many) for the others.
    fn convert_changed(
        &self,
        objects: &[SourceObject],
        reused: Vec<Option<Arc<Converted>>>,
    ) -> Vec<Arc<Converted>> {
        let todo: Vec<usize> = (0..objects.len())
            .filter(|&i| reused[i].is_none())
            .collect();
        let convert_all = |indexes: &[usize]| -> Vec<(usize, Arc<Converted>)> {
            indexes
                .iter()
                .map(|&i| (i, Arc::new(policy::convert(&objects[i]))))
                .collect()
        };
        let fresh: Vec<(usize, Arc<Converted>)> = if todo.len() < 64 {
            convert_all(&todo)
        } else {
            let (a, b) = todo.split_at(todo.len() / 2);
            std::thread::scope(|scope| {
                let other = std::thread::Builder::new()
                    .name("keel-config-convert".to_string())
                    .spawn_scoped(scope, || convert_all(b));
                let mut mine = convert_all(a);
                match other {
                    Ok(handle) => mine.extend(
                        handle
                            .join()
                            .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                    ),
                    Err(_) => mine.extend(convert_all(b)),
                }
                mine
            })
        };
        let mut out = reused;
        for (i, c) in fresh {
            out[i] = Some(c);
        }
        out.into_iter()
            .zip(objects)
            .map(|(c, obj)| c.unwrap_or_else(|| Arc::new(policy::convert(obj))))
            .collect()
    }
}

/// The API source's objects as its watchers last reported them, each converted when it arrived.
#[derive(Debug, Default)]
pub struct KubeObjects {
    objects: BTreeMap<ObjectKey, (Origin, Arc<Converted>)>,
    last_good: LastGood,
}

impl KubeObjects {
    /// Applies one change; objects are converted here, once per resourceVersion.
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::Upsert(obj) => {
                let (key, entry) = self.converted(*obj);
                self.objects.insert(key, entry);
            }
            Change::Delete(key) => {
                self.objects.remove(&key);
            }
            Change::Replace { kind, objects } => {
                let mut previous: BTreeMap<ObjectKey, (Origin, Arc<Converted>)> = BTreeMap::new();
                self.objects.retain(|k, v| {
                    if k.kind == kind {
                        previous.insert(k.clone(), v.clone());
                        false
                    } else {
                        true
                    }
                });
                for obj in objects {
                    let unchanged = key_of(&obj).and_then(|key| {
                        let (origin, c) = previous.get(&key)?;
                        (*origin == obj.origin && !matches!(origin, Origin::Api { resource_version } if resource_version.is_empty()))
                            .then(|| (key, (origin.clone(), Arc::clone(c))))
                    });
                    let (key, entry) = match unchanged {
                        Some(kept) => kept,
                        None => self.converted(obj),
                    };
                    self.objects.insert(key, entry);
                }
            }
        }
    }

    fn converted(&self, obj: SourceObject) -> (ObjectKey, (Origin, Arc<Converted>)) {
        let c = Arc::new(policy::convert(&obj));
        let key = c
            .key
            .clone()
            .or_else(|| key_of(&obj))
            .unwrap_or_else(|| ObjectKey::new("?", "", &obj.origin.label()));
        (key, (obj.origin, c))
    }

    /// Number of objects held.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// True when no object is held.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Assembles the objects (rejected ones replaced by their last good version).
    pub fn load(&mut self) -> Reloaded {
        let current: Vec<(Option<ObjectKey>, Arc<Converted>)> = self
            .objects
            .iter()
            .map(|(k, (_, c))| (Some(k.clone()), Arc::clone(c)))
            .collect();
        self.last_good.apply(&current)
    }
}

/// An API object's key from its `kind` and metadata, whether or not it converts.
fn key_of(obj: &SourceObject) -> Option<ObjectKey> {
    let value = obj.value.as_ref().ok()?;
    let kind = value.get("kind")?.as_str()?;
    let meta = value.get("metadata")?;
    let name = meta.get("name")?.as_str()?;
    let namespace = meta.get("namespace").and_then(|n| n.as_str()).unwrap_or("");
    Some(ObjectKey::new(kind, namespace, name))
}

/// Where the config comes from.
#[derive(Debug)]
pub enum ConfigSource {
    /// A directory of YAML (`--config`).
    Dir(Reloader),
    /// The API server (`--kube`).
    Kube(KubeObjects),
}

impl ConfigSource {
    /// Assembles what the source holds now (a directory is read again).
    pub fn load(&mut self) -> Result<Reloaded, source::Error> {
        match self {
            ConfigSource::Dir(reloader) => reloader.load(),
            ConfigSource::Kube(objects) => Ok(objects.load()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: reviews\n  namespace: default\nspec:\n  clusterIP: 10.96.0.20\n  selector:\n    app: reviews\n  ports:\n  - name: http\n    port: 9080\n";

    fn vs(name: &str, weight: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  hosts:\n  - {name}\n  http:\n  - route:\n    - destination:\n        host: reviews\n      weight: {weight}\n    - destination:\n        host: reviews\n      weight: 50\n"
        )
    }

    fn write(dir: &Path, file: &str, text: &str) {
        std::fs::write(dir.join(file), text).expect("write test config");
    }

    fn vs_names(s: &policy::Snapshot) -> Vec<String> {
        let mut v: Vec<_> = s
            .virtual_services
            .iter()
            .map(|v| v.meta.name.clone())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_bad_edit_keeps_the_last_good_version_and_the_others() {
        let dir = std::env::temp_dir().join(format!("keel-reload-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        write(&dir, "svc.yaml", SERVICE);
        write(&dir, "a.yaml", &vs("reviews", "50"));
        write(&dir, "b.yaml", &vs("ratings", "50"));
        let mut r = Reloader::new(&dir);
        let first = r.load().expect("load");
        assert!(
            first.on_disk.errors.is_empty(),
            "{:?}",
            first.on_disk.errors
        );
        assert_eq!(vs_names(&first.serving), ["ratings", "reviews"]);

        // Negative weight: rejected; the previous `reviews` keeps serving, `ratings` untouched.
        write(&dir, "a.yaml", &vs("reviews", "-1"));
        let bad = r.load().expect("load");
        assert_eq!(bad.on_disk.errors.len(), 1);
        assert_eq!(bad.kept_previous, 1);
        assert_eq!(vs_names(&bad.serving), ["ratings", "reviews"]);

        // Broken YAML in the same file: still the previous version.
        write(&dir, "a.yaml", "apiVersion: [unclosed\n");
        let broken = r.load().expect("load");
        assert!(!broken.on_disk.errors.is_empty());
        assert_eq!(vs_names(&broken.serving), ["ratings", "reviews"]);

        // A later valid change applies; deleting a file removes its resource.
        write(&dir, "a.yaml", &vs("reviews", "10"));
        std::fs::remove_file(dir.join("b.yaml")).expect("rm");
        let good = r.load().expect("load");
        assert!(good.on_disk.errors.is_empty());
        assert_eq!(vs_names(&good.serving), ["reviews"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn fingerprint_changes_with_content() {
        let dir = std::env::temp_dir().join(format!("keel-fp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        write(&dir, "a.yaml", "a: 1\n");
        let f1 = fingerprint(&dir).expect("fp");
        write(&dir, "a.yaml", "a: 12\n");
        let f2 = fingerprint(&dir).expect("fp");
        assert_ne!(f1, f2);
        write(&dir, "notes.txt", "ignored");
        assert_eq!(fingerprint(&dir).expect("fp"), f2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn api_vs(name: &str, weight: i64, rv: &str) -> SourceObject {
        SourceObject::from_api(&serde_json::json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "default", "resourceVersion": rv,
                "uid": "6b2b8d52-1a0e-4f0e-9a43-0c3e3f2b7a11", "generation": 1,
                "creationTimestamp": "2026-11-30T10:00:00Z"},
            "spec": {"hosts": [name], "http": [{"route": [
                {"destination": {"host": "reviews"}, "weight": weight},
                {"destination": {"host": "reviews"}, "weight": 50}]}]}
        }))
    }

    fn api_service() -> SourceObject {
        SourceObject::from_api(&serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "reviews", "namespace": "default", "resourceVersion": "1"},
            "spec": {"clusterIP": "10.96.0.20", "selector": {"app": "reviews"},
                "ports": [{"name": "http", "port": 9080, "protocol": "TCP"}]}
        }))
    }

    #[test]
    fn api_objects_keep_their_last_good_version_by_object() {
        let mut objects = KubeObjects::default();
        objects.apply(Change::Replace {
            kind: "Service",
            objects: vec![api_service()],
        });
        objects.apply(Change::Replace {
            kind: "VirtualService",
            objects: vec![api_vs("reviews", 50, "10"), api_vs("ratings", 50, "11")],
        });
        let first = objects.load();
        assert!(
            first.on_disk.errors.is_empty(),
            "{:?}",
            first.on_disk.errors
        );
        assert_eq!(vs_names(&first.serving), ["ratings", "reviews"]);

        // A bad update is rejected with its API origin (no file, no line) and the previous
        // version keeps serving.
        objects.apply(Change::Upsert(Box::new(api_vs("reviews", -1, "12"))));
        let bad = objects.load();
        assert_eq!(bad.on_disk.errors.len(), 1);
        let at = &bad.on_disk.errors[0].at;
        assert_eq!(at.file, "apiserver (resourceVersion 12)");
        assert_eq!(
            (at.kind.as_str(), at.name.as_str()),
            ("VirtualService", "reviews")
        );
        assert_eq!(
            bad.kept,
            [ObjectKey::new("VirtualService", "default", "reviews")]
        );
        assert_eq!(vs_names(&bad.serving), ["ratings", "reviews"]);

        // A re-list that no longer has `ratings` deletes it; the unchanged reviews@12 is not
        // converted again and stays rejected, still serving its last good version.
        objects.apply(Change::Replace {
            kind: "VirtualService",
            objects: vec![api_vs("reviews", -1, "12")],
        });
        let relisted = objects.load();
        assert_eq!(vs_names(&relisted.serving), ["reviews"]);
        assert_eq!(relisted.kept_previous, 1);

        // A delete removes it for good.
        objects.apply(Change::Delete(ObjectKey::new(
            "VirtualService",
            "default",
            "reviews",
        )));
        assert!(objects.load().serving.virtual_services.is_empty());
    }
}
