//! Hot reload of the config directory with per-resource rejection.
//!
//! Each load splits the directory into documents and converts them. A resource the converter rejects
//! is replaced by the last version of it that was accepted (if any), so a bad edit to one
//! VirtualService neither takes the others down nor removes the good version of itself; a resource
//! that was deleted from disk is gone. The result is converted once more and published.
//!
//! Invariant: `last_good` only ever holds documents that converted without error.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::policy::{self, ConfigError, LoadReport};
use crate::source::{self, Document};

/// Identity of a resource across loads: `kind`, `metadata.namespace` (as written), `metadata.name`.
type ResourceKey = (String, Option<String>, String);

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
    /// The report of the resources as they are on disk (what the user wrote, with its errors). Its
    /// `snapshot` is left empty: the snapshot to serve is `serving` (not kept twice).
    pub on_disk: LoadReport,
    /// The snapshot to serve: accepted resources plus the last good version of rejected ones.
    pub serving: policy::Snapshot,
    /// Rejected resources that kept serving their previous version.
    pub kept_previous: usize,
    /// Those resources: `(kind, namespace as written, name)`.
    pub kept: Vec<(String, Option<String>, String)>,
}

/// Loads the config directory, remembering the last accepted version of each resource.
#[derive(Debug)]
pub struct Reloader {
    dir: PathBuf,
    last_good: HashMap<ResourceKey, Document>,
    /// (file, document index) -> resource, to recover what an unparseable document used to be.
    last_position: HashMap<(String, usize), ResourceKey>,
}

impl Reloader {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            last_good: HashMap::new(),
            last_position: HashMap::new(),
        }
    }

    /// The directory being watched.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Load the directory now.
    pub fn load(&mut self) -> Result<Reloaded, source::Error> {
        let docs = source::read_dir(&self.dir)?;
        // Each document's resource: known without parsing for a document unchanged since the last
        // load; the others are parsed on a second thread while the documents are converted.
        let cached: Vec<Option<ResourceKey>> = docs.iter().map(|d| self.unchanged_key(d)).collect();
        let (mut on_disk, parsed) = std::thread::scope(|scope| {
            let uncached_keys = || -> Vec<Option<ResourceKey>> {
                docs.iter()
                    .zip(&cached)
                    .map(|(doc, c)| if c.is_some() { None } else { resource_key(doc) })
                    .collect()
            };
            let keys = std::thread::Builder::new()
                .name("keel-config-keys".to_string())
                .spawn_scoped(scope, uncached_keys);
            let on_disk = policy::build(&docs);
            let parsed = match keys {
                Ok(handle) => handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                Err(_) => uncached_keys(),
            };
            (on_disk, parsed)
        });
        let rejected = rejected_documents(&docs, &on_disk.errors);

        let mut present: HashSet<ResourceKey> = HashSet::new();
        let mut replaced: Vec<ResourceKey> = Vec::new();
        let mut positions: HashMap<(String, usize), ResourceKey> = HashMap::new();
        let mut keys: Vec<Option<ResourceKey>> = Vec::with_capacity(docs.len());
        for (i, ((doc, cached), parsed)) in docs.iter().zip(cached).zip(parsed).enumerate() {
            let key = cached.or(parsed).or_else(|| {
                // Unparseable now: it is most likely what used to be at the same place.
                self.last_position
                    .get(&(doc.file.clone(), doc.index))
                    .cloned()
            });
            if let Some(k) = &key {
                present.insert(k.clone());
                positions.insert((doc.file.clone(), doc.index), k.clone());
                if rejected.contains(&i) {
                    replaced.push(k.clone());
                }
            }
            keys.push(key);
        }
        let mut kept_previous = 0;
        let mut kept = Vec::new();
        let on_disk_snapshot = std::mem::take(&mut on_disk.snapshot);
        let serving = if replaced.is_empty() {
            on_disk_snapshot
        } else {
            drop(on_disk_snapshot);
            let mut serving_docs: Vec<Document> = docs
                .iter()
                .enumerate()
                .filter(|(i, _)| !rejected.contains(i))
                .map(|(_, doc)| doc.clone())
                .collect();
            for key in &replaced {
                if let Some(prev) = self.last_good.get(key) {
                    serving_docs.push(prev.clone());
                    kept_previous += 1;
                    kept.push(key.clone());
                }
            }
            policy::build(&serving_docs).snapshot
        };

        // Remember: accepted documents become the last good versions; resources deleted from disk
        // are forgotten; rejected ones keep their previous version.
        self.last_good.retain(|k, _| present.contains(k));
        self.last_position = positions;
        for (i, (doc, key)) in docs.into_iter().zip(keys).enumerate() {
            if let (Some(key), false) = (key, rejected.contains(&i)) {
                self.last_good.insert(key, doc);
            }
        }
        Ok(Reloaded {
            on_disk,
            serving,
            kept_previous,
            kept,
        })
    }

    /// The resource of a document whose text is the last good version of the resource last found at
    /// its place (file, index): what [`resource_key`] (or the place) would say, without parsing.
    fn unchanged_key(&self, doc: &Document) -> Option<ResourceKey> {
        let key = self.last_position.get(&(doc.file.clone(), doc.index))?;
        let prev = self.last_good.get(key)?;
        (prev.file == doc.file && prev.text == doc.text).then(|| key.clone())
    }
}

/// The resource a document declares, if it parses far enough to say.
fn resource_key(doc: &Document) -> Option<ResourceKey> {
    let value = doc.value().ok()?;
    let kind = value.get("kind")?.as_str()?.to_string();
    let metadata = value.get("metadata")?;
    let name = metadata.get("name")?.as_str()?.to_string();
    let namespace = metadata
        .get("namespace")
        .and_then(|n| n.as_str())
        .map(str::to_string);
    Some((kind, namespace, name))
}

/// Indexes of the documents that errors point into (by file and line range).
fn rejected_documents(docs: &[Document], errors: &[ConfigError]) -> HashSet<usize> {
    let mut out = HashSet::new();
    for e in errors {
        let in_file = docs.iter().enumerate().filter(|(_, d)| d.file == e.at.file);
        // The document whose text starts at or before the error's line, latest such one.
        if let Some((i, _)) = in_file
            .filter(|(_, d)| d.text_line <= e.at.line)
            .max_by_key(|(_, d)| d.text_line)
        {
            out.insert(i);
        }
    }
    out
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
}
