//! Config sources: YAML files, read from a directory (`keel run --config DIR`) or from files and
//! directories (`keel validate PATH...`), and the Kubernetes API server (`keel run --kube`, module
//! `kube`). Both hand conversion the same [`SourceObject`]s (module `object`).
//!
//! A directory source reads the directory's own `*.yaml` / `*.yml` files (not subdirectories, so
//! `testdata/` or `examples/` next to live config are never loaded by accident) in file-name order, splits
//! each into YAML documents and remembers where each document starts, so that every later error can say
//! `file:line`. Decoding into wire types happens here too ([`Document::decode`]) because only here do we
//! still have the text to map a serde error back to a line.

pub mod dir_watch;
pub mod kube;
mod list;
mod locate;
pub mod object;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub use locate::line_of;
pub use object::{Event, Origin, SourceObject};

/// Identity of an object across loads and sources: `kind` as written, namespace (`default` when
/// unset; empty for cluster-scoped kinds), name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    /// The key of `kind` `namespace/name`.
    pub fn new(kind: &str, namespace: &str, name: &str) -> Self {
        ObjectKey {
            kind: kind.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// `docs` with each `List` expanded into its items (as `kubectl apply` applies each item on its
/// own), in order, not parsed yet.
pub fn expand_lists(docs: &[Document]) -> Vec<Document> {
    list::expand(docs)
}

/// The objects of `docs`, in order: each `List` expanded into its items (as `kubectl apply` applies
/// each item on its own), each document parsed.
pub fn objects(docs: &[Document]) -> Vec<SourceObject> {
    list::expand(docs)
        .into_iter()
        .map(SourceObject::from_document)
        .collect()
}

/// Reading the config directory failed as a whole (as opposed to one bad document).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The directory (or a file in it) could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The path exists but is not a directory.
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
}

/// One YAML document of a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// The file, as `dir.join(name)` displays it.
    pub file: String,
    /// 1-based line of the document's first non-blank, non-comment line (usually `apiVersion:`).
    pub line: usize,
    /// 1-based file line of the first line of `text`.
    pub text_line: usize,
    /// 0-based position of the document in its file.
    pub index: usize,
    /// The document's text (without the `---` separator).
    pub text: String,
}

/// One step of a field path: a map key or a list index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// Map key (`spec`, `http`, a header name).
    Key(String),
    /// List index.
    Index(usize),
}

/// A path into a document, e.g. `spec.http[1].route[0].weight`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FieldPath(pub Vec<Segment>);

impl FieldPath {
    /// The empty path (the whole document).
    pub fn root() -> Self {
        FieldPath(Vec::new())
    }

    /// This path plus a map key.
    pub fn key(&self, key: impl Into<String>) -> Self {
        let mut segs = self.0.clone();
        segs.push(Segment::Key(key.into()));
        FieldPath(segs)
    }

    /// This path plus a list index.
    pub fn index(&self, index: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Segment::Index(index));
        FieldPath(segs)
    }

    /// Parses the display form back (`spec.http[1].route`); keys in `["..."]` may contain dots.
    pub fn parse(s: &str) -> Self {
        let mut segs = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("[\"") {
                let end = after.find("\"]").unwrap_or(after.len());
                segs.push(Segment::Key(after[..end].to_string()));
                rest = after.get(end + 2..).unwrap_or("");
            } else if let Some(after) = rest.strip_prefix('[') {
                let end = after.find(']').unwrap_or(after.len());
                match after[..end].parse() {
                    Ok(i) => segs.push(Segment::Index(i)),
                    Err(_) => segs.push(Segment::Key(after[..end].to_string())),
                }
                rest = after.get(end + 1..).unwrap_or("");
            } else {
                let rest2 = rest.strip_prefix('.').unwrap_or(rest);
                let end = rest2.find(['.', '[']).unwrap_or(rest2.len());
                if end > 0 {
                    segs.push(Segment::Key(rest2[..end].to_string()));
                }
                rest = &rest2[end..];
                if end == 0 && !rest.starts_with('[') {
                    // A stray '.', skip it.
                    rest = rest.get(1..).unwrap_or("");
                }
            }
        }
        FieldPath(segs)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Segment::Index(n) => write!(f, "[{n}]")?,
                Segment::Key(k) if is_plain_key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Segment::Key(k) => write!(f, "[{k:?}]")?,
            }
        }
        Ok(())
    }
}

/// Keys that can be written bare in a path; others (`app.kubernetes.io/name`, `:authority`) get `["…"]`.
fn is_plain_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A document that could not be decoded into its wire type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Where in the document (may be empty for syntax errors).
    pub path: FieldPath,
    /// 1-based file line, as precise as the parser could tell.
    pub line: usize,
    /// The parser's message, without its own location suffix.
    pub message: String,
}

impl Document {
    /// Parses the document as an untyped YAML value (to read `apiVersion`, `kind`, `metadata`).
    pub fn value(&self) -> Result<serde_yaml::Value, DecodeError> {
        serde_yaml::from_str(&self.text).map_err(|e| self.decode_error(FieldPath::root(), &e))
    }

    /// Decodes the document into a wire type, mapping errors to a field path and file line.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        let de = serde_yaml::Deserializer::from_str(&self.text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = convert_path(e.path());
            self.decode_error(path, e.inner())
        })
    }

    /// [`Document::decode`] from the document's already parsed [`Document::value`], without parsing
    /// the text again. Anything that does not decode from the value (a scalar the typed decoder reads
    /// differently from its untyped form, e.g. `1.0` as a string, or an invalid document) is decoded
    /// from the text, so results and errors (field path, file line) are exactly those of `decode`.
    pub fn decode_value<T: DeserializeOwned>(
        &self,
        value: &serde_yaml::Value,
    ) -> Result<T, DecodeError> {
        T::deserialize(value).or_else(|_| self.decode())
    }

    /// The file line of a field, best effort (falls back to the nearest located parent, then the
    /// document's first line).
    pub fn line_of(&self, path: &FieldPath) -> usize {
        match locate::line_of(&self.text, path) {
            Some(l) => self.text_line + l - 1,
            None => self.line,
        }
    }

    fn decode_error(&self, path: FieldPath, e: &serde_yaml::Error) -> DecodeError {
        let line = match e.location() {
            Some(loc) if loc.line() > 0 => self.text_line + loc.line() - 1,
            _ => self.line_of(&path),
        };
        let mut message = e.to_string();
        // serde_yaml appends " at line L column C" relative to the document; we report file lines instead.
        if let Some(pos) = message.find(" at line ") {
            message.truncate(pos);
        }
        // It also prefixes its own idea of the path (`spec.http[0]: unknown field`); ours is reported apart.
        if let Some((prefix, rest)) = message.split_once(": ") {
            if !prefix.is_empty() && !prefix.contains(' ') && !rest.is_empty() {
                message = rest.to_string();
            }
        }
        DecodeError {
            path,
            line,
            message: without_snake_case_alternatives(&message),
        }
    }
}

/// Unknown-field errors list every accepted name, including snake_case aliases (Keel's `MeshConfig`,
/// VirtualService `mirror_percent`); listing both spellings adds noise, so keep the camelCase ones.
fn without_snake_case_alternatives(message: &str) -> String {
    let Some((head, list)) = message.split_once("expected one of ") else {
        return message.to_string();
    };
    let kept: Vec<&str> = list
        .split(", ")
        .filter(|name| !name.trim_matches('`').contains('_'))
        .collect();
    format!("{head}expected one of {}", kept.join(", "))
}

pub(crate) fn convert_path(p: &serde_path_to_error::Path) -> FieldPath {
    use serde_path_to_error::Segment as S;
    let mut out = Vec::new();
    for seg in p.iter() {
        match seg {
            S::Seq { index } => out.push(Segment::Index(*index)),
            S::Map { key } => out.push(Segment::Key(key.clone())),
            S::Enum { variant } => out.push(Segment::Key(variant.clone())),
            S::Unknown => {}
        }
    }
    FieldPath(out)
}

/// Whether a directory entry named `name` is a config file (`*.yaml`, `*.yml`).
pub fn is_yaml_name(name: &std::ffi::OsStr) -> bool {
    Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e == "yaml" || e == "yml")
}

/// Reads `dir`'s `*.yaml` / `*.yml` files in name order and splits them into documents.
pub fn read_dir(dir: &Path) -> Result<Vec<Document>, Error> {
    let meta = std::fs::metadata(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(Error::NotADirectory(dir.to_path_buf()));
    }
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        let is_yaml = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e == "yaml" || e == "yml");
        // `metadata` follows symlinks, so a symlinked file counts and a symlinked directory does not.
        if is_yaml && std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            files.push(path);
        }
    }
    files.sort();
    let mut docs = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        docs.extend(split_documents(&path.display().to_string(), &text));
    }
    Ok(docs)
}

/// Reads each path in order, as `kubectl apply -f PATH -f PATH` does: a directory gives its `*.yaml` /
/// `*.yml` files (see [`read_dir`]), a file is read whatever its name.
pub fn read_paths(paths: &[PathBuf]) -> Result<Vec<Document>, Error> {
    let mut docs = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            docs.extend(read_dir(path)?);
        } else {
            let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            docs.extend(split_documents(&path.display().to_string(), &text));
        }
    }
    Ok(docs)
}

/// Splits a multi-document YAML text at `---` / `...` lines, dropping documents that hold only comments.
pub fn split_documents(file: &str, text: &str) -> Vec<Document> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut docs = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    let mut start = 1;
    let flush = |lines: &mut Vec<&str>, start: usize, docs: &mut Vec<Document>| {
        let first_content = lines.iter().position(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#') && !t.starts_with('%')
        });
        if let Some(offset) = first_content {
            docs.push(Document {
                file: file.to_string(),
                line: start + offset,
                text_line: start,
                index: docs.len(),
                text: lines.join("\n"),
            });
        }
        lines.clear();
    };
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        if let Some(rest) = line.strip_prefix("---") {
            if rest.is_empty() || rest.starts_with([' ', '\t']) {
                flush(&mut current, start, &mut docs);
                start = lineno;
                // `--- {inline}` or `--- !tag`: keep what follows the marker as the document's first line.
                current.push(rest);
                continue;
            }
        }
        if line.trim_end() == "..." {
            flush(&mut current, start, &mut docs);
            start = lineno + 1;
            continue;
        }
        current.push(line);
    }
    flush(&mut current, start, &mut docs);
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_and_keeps_lines() {
        let text = "# leading comment\napiVersion: v1\nkind: A\n---\n\n# c\napiVersion: v1\nkind: B\n--- \n---\nkind: C\n...\n";
        let docs = split_documents("f.yaml", text);
        assert_eq!(docs.len(), 3);
        assert_eq!((docs[0].line, docs[0].index), (2, 0));
        assert_eq!((docs[1].line, docs[1].text_line), (7, 4));
        assert_eq!(docs[2].line, 11);
        assert!(docs[2].text.contains("kind: C"));
    }

    #[test]
    fn field_path_round_trips() {
        for s in [
            "spec.http[1].route[0].weight",
            "metadata.labels[\"app.kubernetes.io/name\"]",
            "spec",
        ] {
            assert_eq!(FieldPath::parse(s).to_string(), s);
        }
        let p = FieldPath::root()
            .key("spec")
            .key("http")
            .index(1)
            .key(":authority");
        assert_eq!(p.to_string(), "spec.http[1][\":authority\"]");
    }

    #[test]
    fn decode_errors_carry_path_and_file_line() {
        let docs = split_documents(
            "f.yaml",
            "kind: X\n---\nspec:\n  http:\n  - route:\n    - destination:\n        host: a\n        subnet: v1\n",
        );
        let err = docs[1]
            .decode::<crate::wire::istio::IstioObject<crate::wire::istio::VirtualServiceSpec>>()
            .expect_err("unknown field");
        assert!(
            err.message.contains("unknown field `subnet`"),
            "{}",
            err.message
        );
        assert_eq!(
            err.path.to_string(),
            "spec.http[0].route[0].destination.subnet"
        );
        assert_eq!(err.line, 8);
    }
}
