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
use crate::routing::Changes;
use crate::source::kube::Change;
use crate::source::{self, Document, ObjectKey, Origin, SourceObject};

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
    pub serving: Arc<policy::Snapshot>,
    /// Rejected resources that kept serving their previous version.
    pub kept_previous: usize,
    /// Those resources.
    pub kept: Vec<ObjectKey>,
    /// What `serving` changed since the snapshot the previous load served (for rebuilding only
    /// the routes that can differ).
    pub changes: Changes,
    /// VirtualServices edited in place and assembled by difference from the previous load (0:
    /// the load was assembled whole).
    pub edited_in_place: usize,
}

impl Reloaded {
    /// `everything`, or how many hosts' routes changed (for logs).
    pub fn changes_summary(&self) -> String {
        match &self.changes {
            Changes::Everything => "everything".to_string(),
            Changes::VirtualServiceHosts(hosts) => format!("{} hosts", hosts.len()),
        }
    }
}

/// The last accepted version of each resource, converted, and what was served last.
#[derive(Debug, Default)]
pub struct LastGood {
    accepted: HashMap<ObjectKey, Arc<Converted>>,
    /// The objects the last snapshot was assembled from (`None` before the first).
    served: Option<Vec<Arc<Converted>>>,
    /// The last load, when it served the source's objects as they are (nothing rejected when
    /// assembled, no previous version kept): the next load that only edits VirtualServices in
    /// place is assembled from it by difference.
    last: Option<LastAssembly>,
}

/// One load's objects and what assembling them gave.
#[derive(Debug)]
struct LastAssembly {
    objects: Vec<Arc<Converted>>,
    snapshot: Arc<policy::Snapshot>,
    errors: Vec<policy::ConfigError>,
    warnings: Vec<policy::ConfigWarning>,
    ignored: usize,
    places: policy::WarningPlaces,
}

/// What changed from the objects served before (`None`: nothing served yet) to `now`.
fn changes_between(before: Option<&[Arc<Converted>]>, now: &[Arc<Converted>]) -> Changes {
    let Some(before) = before else {
        return Changes::Everything;
    };
    let was: HashSet<*const Converted> = before.iter().map(Arc::as_ptr).collect();
    let is: HashSet<*const Converted> = now.iter().map(Arc::as_ptr).collect();
    let mut hosts = HashSet::new();
    let added = now.iter().filter(|c| !was.contains(&Arc::as_ptr(c)));
    let removed = before.iter().filter(|c| !is.contains(&Arc::as_ptr(c)));
    for c in added.chain(removed) {
        match c.routed_hosts() {
            Some(h) => hosts.extend(h.iter().cloned()),
            None => return Changes::Everything,
        }
    }
    Changes::VirtualServiceHosts(hosts)
}

impl LastGood {
    /// Assembles `current` (the source's objects in order, with the key each stands for: its own,
    /// or for an unparseable one the resource that used to be there) into what to report and what
    /// to serve, and remembers the accepted versions.
    pub fn apply(&mut self, current: &[(Option<&ObjectKey>, &Arc<Converted>)]) -> Reloaded {
        if let Some(reloaded) = self.apply_edits(current) {
            return reloaded;
        }
        let policy::Assembled {
            report: mut on_disk,
            places,
        } = policy::assemble_placed(current.iter().map(|(_, c)| c.as_ref()));
        let assembly_rejected: HashSet<usize> =
            on_disk.rejected_when_assembled.iter().copied().collect();
        let rejected = |i: usize, c: &Converted| !c.accepted() || assembly_rejected.contains(&i);

        let mut kept = Vec::new();
        let mut serving_objects: Vec<Arc<Converted>> = Vec::with_capacity(current.len());
        for (i, (_, c)) in current.iter().enumerate() {
            if !rejected(i, c) {
                serving_objects.push(Arc::clone(c));
            }
        }
        for (i, (key, c)) in current.iter().enumerate() {
            if !rejected(i, c) {
                continue;
            }
            if let Some((key, prev)) = key.and_then(|k| Some((k, self.accepted.get(k)?))) {
                serving_objects.push(Arc::clone(prev));
                kept.push(key.clone());
            }
        }
        let as_is = kept.is_empty() && assembly_rejected.is_empty();
        let serving = Arc::new(if as_is {
            std::mem::take(&mut on_disk.snapshot)
        } else {
            on_disk.snapshot = policy::Snapshot::default();
            policy::assemble(serving_objects.iter().map(|c| &**c)).snapshot
        });
        self.last = as_is.then(|| LastAssembly {
            objects: current.iter().map(|(_, c)| Arc::clone(c)).collect(),
            snapshot: Arc::clone(&serving),
            errors: on_disk.errors.clone(),
            warnings: on_disk.warnings.clone(),
            ignored: on_disk.ignored,
            places,
        });
        let changes = changes_between(self.served.as_deref(), &serving_objects);
        self.served = Some(serving_objects);

        // Accepted versions become the last good ones; resources gone from the source are
        // forgotten; rejected ones keep their previous version.
        let present: HashSet<&ObjectKey> = current.iter().filter_map(|(k, _)| *k).collect();
        self.accepted.retain(|k, _| present.contains(k));
        for (i, (key, c)) in current.iter().enumerate() {
            if let (Some(key), false) = (key, rejected(i, c)) {
                match self.accepted.get_mut(*key) {
                    Some(last) if Arc::ptr_eq(last, c) => {}
                    Some(last) => *last = Arc::clone(c),
                    None => {
                        self.accepted.insert((*key).clone(), Arc::clone(c));
                    }
                }
            }
        }
        Reloaded {
            on_disk,
            serving,
            kept_previous: kept.len(),
            edited_in_place: 0,
            kept,
            changes,
        }
    }
}

impl LastGood {
    /// [`LastGood::apply`] by difference from the last load, when `current` only edits
    /// VirtualServices in place ([`policy::reassemble`]); `None` otherwise.
    fn apply_edits(
        &mut self,
        current: &[(Option<&ObjectKey>, &Arc<Converted>)],
    ) -> Option<Reloaded> {
        let last = self.last.as_mut()?;
        let before: Vec<&Converted> = last.objects.iter().map(|c| &**c).collect();
        let now: Vec<&Converted> = current.iter().map(|(_, c)| c.as_ref()).collect();
        let (snapshot, warnings, places, edited) =
            policy::reassemble(&before, &last.snapshot, &last.warnings, &last.places, &now)?;
        drop(before);
        // Only the edited VirtualServices' hosts route differently (their hosts did not change).
        let mut hosts = HashSet::new();
        for &order in &edited {
            hosts.extend(now[order].routed_hosts()?.iter().cloned());
        }
        // The served list holds the same objects in the same order (minus rejected ones): one
        // pass replaces every edited one, however many there are.
        // (The old versions stay alive until then, so no pointer is reused meanwhile.)
        let mut replaced: HashMap<*const Converted, (Arc<Converted>, &Arc<Converted>)> =
            HashMap::new();
        for &order in &edited {
            let (key, c) = current[order];
            let old = std::mem::replace(&mut last.objects[order], Arc::clone(c));
            if let Some(key) = key {
                match self.accepted.get_mut(key) {
                    Some(accepted) => *accepted = Arc::clone(c),
                    None => {
                        self.accepted.insert(key.clone(), Arc::clone(c));
                    }
                }
            }
            replaced.insert(Arc::as_ptr(&old), (old, c));
        }
        for served in self.served.iter_mut().flatten() {
            if let Some((_, new)) = replaced.get(&Arc::as_ptr(served)) {
                *served = Arc::clone(new);
            }
        }
        last.snapshot = Arc::new(snapshot);
        last.warnings = warnings;
        last.places = places;
        Some(Reloaded {
            on_disk: LoadReport {
                snapshot: policy::Snapshot::default(),
                errors: last.errors.clone(),
                warnings: last.warnings.clone(),
                ignored: last.ignored,
                rejected_when_assembled: Vec::new(),
            },
            serving: Arc::clone(&last.snapshot),
            kept_previous: 0,
            edited_in_place: edited.len(),
            kept: Vec::new(),
            changes: Changes::VirtualServiceHosts(hosts),
        })
    }
}

/// Loads the config directory, remembering the last accepted version of each resource.
#[derive(Debug)]
pub struct Reloader {
    dir: PathBuf,
    last_good: LastGood,
    /// Each YAML file as last read: a file that did not change is not read again, and a document
    /// that did not change is not parsed or converted again.
    files: BTreeMap<PathBuf, FileCache>,
    /// The directory as the last load listed it.
    fingerprint: Fingerprint,
}

/// A file's metadata, as far as telling a change goes: size, modification time, inode, and the
/// inode's change time (which every write and rename moves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    ino: u64,
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            len: m.len(),
            modified: m.modified().ok(),
            ino: m.ino(),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// One file's documents as last read.
#[derive(Debug)]
struct FileCache {
    stamp: FileStamp,
    docs: Vec<CachedDocument>,
}

/// One document (a `List` item counts as one) and what it converted to. The parsed YAML is not
/// kept: the text tells whether it changed, and the conversion holds everything else.
#[derive(Debug)]
struct CachedDocument {
    doc: Document,
    converted: Arc<Converted>,
    /// The resource it stands for: its own key, or for an unparseable document the resource that
    /// was at the same place before (so that one keeps its last good version).
    key: Option<ObjectKey>,
}

/// A document's place in its file: its index, and for the items of a `List` which item.
type Place = (usize, usize);

/// The places of documents with these indexes, in order.
fn places(indexes: impl Iterator<Item = usize>) -> Vec<Place> {
    let mut out: Vec<Place> = Vec::new();
    for index in indexes {
        let item = match out.last() {
            Some(&(last, item)) if last == index => item + 1,
            _ => 0,
        };
        out.push((index, item));
    }
    out
}

/// A document of a file being read: taken over, or waiting for its conversion.
struct Pending {
    doc: Document,
    converted: Option<Arc<Converted>>,
    key: Option<ObjectKey>,
}

impl From<CachedDocument> for Pending {
    fn from(c: CachedDocument) -> Self {
        Pending {
            doc: c.doc,
            converted: Some(c.converted),
            key: c.key,
        }
    }
}

impl Reloader {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            last_good: LastGood::default(),
            files: BTreeMap::new(),
            fingerprint: Fingerprint::default(),
        }
    }

    /// The directory being watched.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory's files as the last load listed them.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// Load the directory now, reading every file.
    pub fn load(&mut self) -> Result<Reloaded, source::Error> {
        self.load_changed(None)
    }

    /// Load the directory now. `changed`: the names of the directory's entries that changed since
    /// the last load, when known (an inotify watch tells); a file not among them whose metadata is
    /// unchanged is taken over from the last load without reading it. `None`: every file is read
    /// (documents whose text is unchanged are still not converted again).
    pub fn load_changed(
        &mut self,
        changed: Option<&HashSet<std::ffi::OsString>>,
    ) -> Result<Reloaded, source::Error> {
        let started = std::time::Instant::now();
        let ms = |since: std::time::Instant| since.elapsed().as_secs_f64() * 1e3;
        let listing = match changed {
            Some(names) => self.relist(names)?,
            None => list_yaml_files(&self.dir)?,
        };
        let listed_ms = ms(started);
        let mut read_files = 0usize;
        let mut previous = std::mem::take(&mut self.files);
        let mut files: Vec<(PathBuf, FileStamp, Vec<Pending>)> = Vec::with_capacity(listing.len());
        // Documents to parse and convert: (file, document) positions in `files`, and the document.
        let mut todo: Vec<(usize, usize, Document)> = Vec::new();
        for (path, stamp) in listing {
            let unchanged_name = changed
                .is_some_and(|names| path.file_name().is_some_and(|name| !names.contains(name)));
            let old = previous.remove(&path);
            let old_docs = match old {
                Some(old) if unchanged_name && old.stamp == stamp => {
                    let docs = old.docs.into_iter().map(Pending::from).collect();
                    files.push((path, stamp, docs));
                    continue;
                }
                Some(old) => old.docs,
                None => Vec::new(),
            };
            read_files += 1;
            let text = std::fs::read_to_string(&path).map_err(|source| source::Error::Io {
                path: path.clone(),
                source,
            })?;
            let docs =
                source::expand_lists(&source::split_documents(&path.display().to_string(), &text));
            let mut old_by_place: HashMap<Place, CachedDocument> =
                places(old_docs.iter().map(|c| c.doc.index))
                    .into_iter()
                    .zip(old_docs)
                    .collect();
            let file_at = files.len();
            let mut pending = Vec::with_capacity(docs.len());
            for (place, doc) in places(docs.iter().map(|d| d.index)).into_iter().zip(docs) {
                match old_by_place.remove(&place) {
                    Some(old) if old.doc == doc => pending.push(Pending::from(old)),
                    old => {
                        todo.push((file_at, pending.len(), doc.clone()));
                        pending.push(Pending {
                            doc,
                            converted: None,
                            // What was here: the resource an unparseable document stands for.
                            key: old.and_then(|o| o.key),
                        });
                    }
                }
            }
            files.push((path, stamp, pending));
        }
        let read_ms = ms(started);
        let converted_count = todo.len();
        for (file_at, doc_at, c) in convert_all(&todo) {
            let entry = &mut files[file_at].2[doc_at];
            // Unparseable now: it stands for what used to be at the same place.
            entry.key = c.key.clone().or_else(|| entry.key.take());
            entry.converted = Some(c);
        }
        drop(todo);
        let files: Vec<(PathBuf, FileStamp, Vec<CachedDocument>)> = files
            .into_iter()
            .map(|(path, stamp, docs)| {
                let docs = docs
                    .into_iter()
                    .map(|p| {
                        let converted = p.converted.unwrap_or_else(|| {
                            Arc::new(policy::convert(&SourceObject::from_document(p.doc.clone())))
                        });
                        CachedDocument {
                            doc: p.doc,
                            key: p.key,
                            converted,
                        }
                    })
                    .collect();
                (path, stamp, docs)
            })
            .collect();
        let current: Vec<(Option<&ObjectKey>, &Arc<Converted>)> = files
            .iter()
            .flat_map(|(_, _, docs)| docs.iter())
            .map(|d| (d.key.as_ref(), &d.converted))
            .collect();
        let converted_ms = ms(started);
        let reloaded = self.last_good.apply(&current);
        tracing::debug!(
            files = files.len(),
            read_files,
            converted = converted_count,
            list_ms = listed_ms,
            read_ms = read_ms - listed_ms,
            convert_ms = converted_ms - read_ms,
            assemble_ms = ms(started) - converted_ms,
            changes = ?reloaded.changes_summary(),
            edited_in_place = reloaded.edited_in_place,
            "config directory loaded"
        );
        self.fingerprint = Fingerprint(
            files
                .iter()
                .map(|(path, stamp, _)| (path.clone(), stamp.len, stamp.modified, stamp.ino))
                .collect(),
        );
        self.files = files
            .into_iter()
            .map(|(path, stamp, docs)| (path, FileCache { stamp, docs }))
            .collect();
        Ok(reloaded)
    }
}

impl Reloader {
    /// The listing of the last load with the entries `names` updated: only those are looked at
    /// again (a watch names what changed; at thousands of files, listing and stat-ing every one
    /// costs more than the rest of a one-file reload). What a watch cannot see (a symlink's
    /// target rewritten) is the periodic full look's job.
    fn relist(
        &self,
        names: &HashSet<std::ffi::OsString>,
    ) -> Result<Vec<(PathBuf, FileStamp)>, source::Error> {
        let meta = std::fs::metadata(&self.dir).map_err(|source| source::Error::Io {
            path: self.dir.clone(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(source::Error::NotADirectory(self.dir.clone()));
        }
        let mut listing: BTreeMap<PathBuf, FileStamp> = self
            .files
            .iter()
            .filter(|(path, _)| path.file_name().is_none_or(|n| !names.contains(n)))
            .map(|(path, file)| (path.clone(), file.stamp))
            .collect();
        for name in names {
            if !source::is_yaml_name(name) {
                continue;
            }
            let path = self.dir.join(name);
            if let Ok(m) = std::fs::metadata(&path) {
                if m.is_file() {
                    listing.insert(path, FileStamp::of(&m));
                }
            }
        }
        Ok(listing.into_iter().collect())
    }
}

/// `dir`'s own `*.yaml` / `*.yml` files (symlinks followed; as [`source::read_dir`] reads them) in
/// name order, with their metadata.
fn list_yaml_files(dir: &Path) -> Result<Vec<(PathBuf, FileStamp)>, source::Error> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| source::Error::Io { path, source }
    };
    let meta = std::fs::metadata(dir).map_err(io(dir))?;
    if !meta.is_dir() {
        return Err(source::Error::NotADirectory(dir.to_path_buf()));
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let is_yaml = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e == "yaml" || e == "yml");
        if !is_yaml {
            continue;
        }
        // `metadata` follows symlinks, so a symlinked file counts and a symlinked directory does not.
        if let Ok(m) = std::fs::metadata(&path) {
            if m.is_file() {
                out.push((path, FileStamp::of(&m)));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Parses and converts each document (on two threads when there are many), keeping the place it
/// came with.
fn convert_all(todo: &[(usize, usize, Document)]) -> Vec<(usize, usize, Arc<Converted>)> {
    let convert = |items: &[(usize, usize, Document)]| -> Vec<(usize, usize, Arc<Converted>)> {
        items
            .iter()
            .map(|(f, d, doc)| {
                let obj = SourceObject::from_document(doc.clone());
                (*f, *d, Arc::new(policy::convert(&obj)))
            })
            .collect()
    };
    if todo.len() < 64 {
        return convert(todo);
    }
    let (a, b) = todo.split_at(todo.len() / 2);
    std::thread::scope(|scope| {
        let other = std::thread::Builder::new()
            .name("keel-config-convert".to_string())
            .spawn_scoped(scope, || convert(b));
        let mut mine = convert(a);
        match other {
            Ok(handle) => mine.extend(
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            ),
            Err(_) => mine.extend(convert(b)),
        }
        mine
    })
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
        let current: Vec<(Option<&ObjectKey>, &Arc<Converted>)> = self
            .objects
            .iter()
            .map(|(k, (_, c))| (Some(k), c))
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
    /// Assembles what the source holds now (a directory is read again; `changed`: see
    /// [`Reloader::load_changed`]).
    pub fn load(
        &mut self,
        changed: Option<&HashSet<std::ffi::OsString>>,
    ) -> Result<Reloaded, source::Error> {
        match self {
            ConfigSource::Dir(reloader) => reloader.load_changed(changed),
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

    /// Everything a snapshot serves, in a form two loads can be compared by (maps sorted).
    fn canonical(s: &policy::Snapshot) -> String {
        fn sorted<K: Ord + std::fmt::Debug, V: std::fmt::Debug>(
            m: impl IntoIterator<Item = (K, V)>,
        ) -> String {
            format!("{:?}", m.into_iter().collect::<BTreeMap<K, V>>())
        }
        [
            format!("{:?}", s.mesh),
            format!("{:?}", s.services),
            format!("{:?}", s.pods),
            format!("{:?}", s.nodes),
            format!("{:?}", s.virtual_services),
            format!("{:?}", s.destination_rules),
            format!("{:?}", s.service_entries),
            format!("{:?}", s.sidecars),
            format!("{:?}", s.gateways),
            format!("{:?}", s.endpoint_slices),
            sorted(s.node_by_name.iter()),
            sorted(s.service_by_vip.iter()),
            sorted(s.service_by_host.iter()),
            sorted(s.pod_by_name.iter()),
            sorted(s.namespaces.iter().map(|(k, v)| (k, format!("{v:?}")))),
            sorted(s.slices_by_service.iter()),
        ]
        .join("\n")
    }

    /// How a table routes, view by view and service port by service port, with the clusters the
    /// targets are (their policy and discovery included), and the clusters the registry holds.
    fn routing_of(
        table: &crate::routing::RouteTable,
        registry: &crate::upstream::ClusterRegistry,
    ) -> String {
        use crate::routing::Target;
        use std::fmt::Write as _;
        let target = |t: &Target| match t {
            Target::Cluster(c) => {
                format!(
                    "{:?} {:?} {:?} {:?}",
                    c.key, c.protocol, c.policy, c.discovery
                )
            }
            Target::Missing(k) => format!("missing {k:?}"),
        };
        let mut views: Vec<String> = table
            .views()
            .map(|v| {
                let mut out = format!(
                    "{:?} sidecar {:?} {:?}\n",
                    v.class, v.sidecar, v.outbound_traffic_policy
                );
                for port in v.service_ports() {
                    let Some(p) = port else {
                        out.push_str("  -\n");
                        continue;
                    };
                    let _ = writeln!(
                        out,
                        "  {} {} {:?} {:?} vs {:?} default {} {:?} {:?}",
                        p.hostname,
                        p.port,
                        p.protocol,
                        p.location,
                        p.virtual_service,
                        target(&p.default_target),
                        p.default_hash,
                        p.default_policy
                    );
                    for r in p.http.iter().flatten() {
                        let _ = writeln!(
                            out,
                            "    http {} {:?} {:?} {:?}",
                            r.rule, r.blocks, r.spec, r.policy
                        );
                        for t in &r.targets.targets {
                            let _ = writeln!(
                                out,
                                "      {} w{} i{} {:?}",
                                target(&t.target),
                                t.weight,
                                t.index,
                                t.hash
                            );
                        }
                        for (t, pct) in &r.mirrors {
                            let _ = writeln!(out, "      mirror {} {pct}", target(t));
                        }
                    }
                    for t in p.tcp.iter().flat_map(|t| &t.targets) {
                        let _ = writeln!(out, "    tcp {} w{}", target(&t.target), t.weight);
                    }
                    for t in p.tls.iter().flat_map(|t| t.targets()) {
                        let _ = writeln!(out, "    tls {}", target(t));
                    }
                }
                out
            })
            .collect();
        views.sort();
        let mut clusters: Vec<String> = registry
            .clusters()
            .iter()
            .map(|c| format!("{:?}", c.key))
            .collect();
        clusters.sort();
        format!("{}\nclusters {clusters:?}", views.join("\n"))
    }

    fn report_of(r: &Reloaded) -> (String, Vec<String>, Vec<String>, Vec<ObjectKey>) {
        (
            canonical(&r.serving),
            r.on_disk.errors.iter().map(ToString::to_string).collect(),
            r.on_disk.warnings.iter().map(ToString::to_string).collect(),
            r.kept.clone(),
        )
    }

    const DR: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: reviews\n  namespace: default\nspec:\n  host: reviews\n  subsets:\n  - name: v1\n    labels:\n      version: v1\n";
    const PODS: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: reviews-1\n  namespace: default\n  labels:\n    app: reviews\n    version: v1\nstatus:\n  phase: Running\n  podIP: 10.244.9.5\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: client\n  namespace: default\n  labels:\n    app: client\nstatus:\n  phase: Running\n  podIP: 10.244.9.6\n";
    const ENTRY: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: ext\n  namespace: default\nspec:\n  hosts:\n  - ext.example.com\n  addresses:\n  - 10.96.9.9\n  ports:\n  - number: 80\n    name: http\n    protocol: HTTP\n  resolution: STATIC\n  endpoints:\n  - address: 10.244.9.7\n";
    const SIDECAR: &str = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: default\n  namespace: default\nspec:\n  egress:\n  - hosts:\n    - \"./*\"\n";
    const LIST: &str = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: a\n- apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: b\n";

    /// A VirtualService `name` for `hosts`.
    fn vs_for(name: &str, hosts: &[&str], weight: u32) -> String {
        let hosts: String = hosts.iter().map(|h| format!("  - {h}\n")).collect();
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  hosts:\n{hosts}  http:\n  - route:\n    - destination:\n        host: reviews\n        subset: v1\n      weight: {weight}\n    - destination:\n        host: reviews\n      weight: {}\n",
            100 - weight
        )
    }

    /// Every change, loaded incrementally (only the files named read again) by one reloader, in
    /// full by another fed the same history, and from scratch: the same snapshot, errors, warnings
    /// and kept resources each time (from scratch only while nothing is rejected: a new reloader
    /// has no last good versions).
    #[test]
    fn an_incremental_load_equals_a_full_one() {
        let dir = std::env::temp_dir().join(format!("keel-reload-inc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let services = format!(
            "{SERVICE}---\n{}",
            SERVICE
                .replace("reviews", "details")
                .replace("10.96.0.20", "10.96.0.21")
        );
        write(&dir, "svc.yaml", &services);
        write(&dir, "dr.yaml", DR);
        write(&dir, "pods.yaml", PODS);
        write(&dir, "vs-a.yaml", &vs_for("a", &["reviews"], 90));
        write(&dir, "vs-b.yaml", &vs_for("b", &["ratings"], 90));
        let mut inc = Reloader::new(&dir);
        let mut full = Reloader::new(&dir);
        let first = inc.load().expect("load");
        assert_eq!(report_of(&first), report_of(&full.load().expect("load")));
        // The routing tables too: built incrementally from the previous table, with the clusters
        // living on in one registry, against tables built from scratch.
        let registry = crate::upstream::ClusterRegistry::default();
        let mut table = crate::routing::RouteTable::rebuild_for_node(
            &first.serving,
            &registry,
            None,
            None,
            &first.changes,
        );
        assert!(table.view_count() > 0, "the client pod has a view");

        enum Step<'a> {
            Write(&'a str, String),
            Remove(&'a str),
        }
        use Step::{Remove, Write};
        let steps: Vec<(&str, Vec<Step>, bool)> = vec![
            (
                "modify a VS",
                vec![Write("vs-a.yaml", vs_for("a", &["reviews"], 10))],
                true,
            ),
            (
                "add a VS",
                vec![Write("vs-c.yaml", vs_for("c", &["details"], 50))],
                true,
            ),
            (
                "move a host between VSs",
                vec![
                    Write("vs-a.yaml", vs_for("a", &["details"], 10)),
                    Write("vs-c.yaml", vs_for("c", &["reviews"], 50)),
                ],
                true,
            ),
            ("delete a VS", vec![Remove("vs-b.yaml")], true),
            (
                "modify the DR",
                vec![Write("dr.yaml", DR.replace("version: v1", "version: v2"))],
                true,
            ),
            ("delete the DR", vec![Remove("dr.yaml")], true),
            (
                "modify a VS whose subset no rule defines (edited in place: its warnings again)",
                vec![Write("vs-a.yaml", vs_for("a", &["details"], 30))],
                true,
            ),
            (
                "route a VS to a known subset only (edited in place: its warnings go)",
                vec![Write(
                    "vs-a.yaml",
                    vs_for("a", &["details"], 30).replace("        subset: v1\n", ""),
                )],
                true,
            ),
            (
                "route a VS to an unknown host (edited in place: a warning more)",
                vec![Write(
                    "vs-c.yaml",
                    vs_for("c", &["reviews"], 50).replacen("host: reviews", "host: nowhere", 1),
                )],
                true,
            ),
            (
                "add a ServiceEntry",
                vec![Write("se.yaml", ENTRY.to_string())],
                true,
            ),
            (
                "modify the ServiceEntry",
                vec![Write("se.yaml", ENTRY.replace("10.244.9.7", "10.244.9.8"))],
                true,
            ),
            (
                "modify a Service",
                vec![Write("svc.yaml", services.replacen("9080", "9081", 1))],
                true,
            ),
            (
                "modify a Pod",
                vec![Write(
                    "pods.yaml",
                    PODS.replace("10.244.9.6", "10.244.9.16"),
                )],
                true,
            ),
            (
                "delete a Pod",
                vec![Write(
                    "pods.yaml",
                    PODS.split("---").next().unwrap_or("").to_string(),
                )],
                true,
            ),
            (
                "add a Sidecar",
                vec![Write("sidecar.yaml", SIDECAR.to_string())],
                true,
            ),
            (
                "modify the Sidecar",
                vec![Write("sidecar.yaml", SIDECAR.replace("./*", "*/*"))],
                true,
            ),
            (
                "add a List",
                vec![Write("list.yaml", LIST.to_string())],
                true,
            ),
            (
                "modify an item of the List",
                vec![Write("list.yaml", LIST.replace("name: b", "name: c"))],
                true,
            ),
            (
                "an invalid VS keeps its last good version",
                vec![Write(
                    "vs-a.yaml",
                    vs_for("a", &["details"], 10).replace("weight: 10", "weight: -1"),
                )],
                false,
            ),
            (
                "broken YAML in the same place",
                vec![Write("vs-a.yaml", "apiVersion: [unclosed\n".to_string())],
                false,
            ),
            (
                "an unrelated change while it is broken",
                vec![Write("vs-c.yaml", vs_for("c", &["reviews"], 60))],
                false,
            ),
            (
                "fixed",
                vec![Write("vs-a.yaml", vs_for("a", &["details"], 20))],
                true,
            ),
            ("the Service deleted", vec![Remove("svc.yaml")], true),
        ];
        for (what, changes, valid) in steps {
            let mut names = HashSet::new();
            for change in changes {
                let file = match change {
                    Write(file, text) => {
                        write(&dir, file, &text);
                        file
                    }
                    Remove(file) => {
                        std::fs::remove_file(dir.join(file)).expect("rm");
                        file
                    }
                };
                names.insert(std::ffi::OsString::from(file));
            }
            let loaded = inc.load_changed(Some(&names)).expect("load");
            if what.contains("edited in place") {
                assert!(
                    loaded.edited_in_place > 0,
                    "{what}: assembled by difference"
                );
            }
            let incremental = report_of(&loaded);
            assert_eq!(
                incremental,
                report_of(&full.load().expect("load")),
                "{what}: incremental vs full"
            );
            table = crate::routing::RouteTable::rebuild_for_node(
                &loaded.serving,
                &registry,
                None,
                Some(&table),
                &loaded.changes,
            );
            let scratch_registry = crate::upstream::ClusterRegistry::default();
            let scratch_table =
                crate::routing::RouteTable::build(&loaded.serving, &scratch_registry);
            assert_eq!(
                routing_of(&table, &registry),
                routing_of(&scratch_table, &scratch_registry),
                "{what}: incremental vs from-scratch routing"
            );
            // Each of these leaves the other service's host alone.
            if what.contains("VS") && !what.contains("between") {
                assert!(
                    matches!(
                        loaded.changes,
                        crate::routing::Changes::VirtualServiceHosts(_)
                    ),
                    "{what}: {:?}",
                    loaded.changes
                );
                assert!(
                    table.reused_slots() > 0,
                    "{what}: the other service's routes are kept"
                );
            }
            if valid {
                assert!(incremental.1.is_empty(), "{what}: {:?}", incremental.1);
                let scratch = report_of(&Reloader::new(&dir).load().expect("load"));
                assert_eq!(incremental, scratch, "{what}: incremental vs from scratch");
            } else {
                assert!(!incremental.1.is_empty(), "{what}: rejected");
                assert_eq!(
                    incremental.3,
                    [ObjectKey::new("VirtualService", "default", "a")],
                    "{what}: kept"
                );
            }
        }

        // A file changed that the watch did not name (a hard link written elsewhere): the watch's
        // names are all a watched load looks at; the periodic full look (no names) reads it.
        write(&dir, "vs-c.yaml", &vs_for("c", &["reviews", "extra"], 70));
        let watched = report_of(&inc.load_changed(Some(&HashSet::new())).expect("load"));
        assert!(
            !watched.0.contains("extra"),
            "only named files are looked at"
        );
        let incremental = report_of(&inc.load_changed(None).expect("load"));
        assert_eq!(
            incremental,
            report_of(&Reloader::new(&dir).load().expect("load"))
        );
        assert!(incremental.0.contains("extra"));
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
