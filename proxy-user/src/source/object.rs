//! The one shape in which every source hands objects to conversion: a parsed object and where it came
//! from. The file source makes them from YAML documents, the API source from watched objects;
//! conversion reads only the parsed value and asks the object (never a file or YAML text) for lines.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::{DecodeError, Document, FieldPath};

/// Where an object came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A YAML document of a config file.
    File {
        /// The file, as the directory listing displays it.
        file: String,
        /// 1-based line of the document's first content line.
        line: usize,
    },
    /// An object read from the Kubernetes API server.
    Api {
        /// The object's `metadata.resourceVersion`.
        resource_version: String,
    },
}

impl Origin {
    /// What a [`crate::policy::Location`] names as the object's file: the file, or
    /// `apiserver (resourceVersion N)` for an API object (whose kind, namespace and name the location
    /// names anyway).
    pub fn label(&self) -> String {
        match self {
            Origin::File { file, .. } => file.clone(),
            Origin::Api { resource_version } => {
                format!("apiserver (resourceVersion {resource_version})")
            }
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { file, line } => write!(f, "{file}:{line}"),
            Origin::Api { .. } => f.write_str(&self.label()),
        }
    }
}

/// One object handed to conversion.
#[derive(Debug, Clone)]
pub struct SourceObject {
    /// Where it came from.
    pub origin: Origin,
    /// The object, or why it could not be parsed.
    pub value: Result<serde_yaml::Value, DecodeError>,
    /// File objects keep their document, so that lines can be looked up and typed decoding can
    /// read scalars as written (`1.0` into a string field). Private: conversion asks, never reads.
    document: Option<Document>,
}

impl SourceObject {
    /// An object from a YAML document (parsed here).
    pub fn from_document(document: Document) -> Self {
        SourceObject {
            origin: Origin::File {
                file: document.file.clone(),
                line: document.line,
            },
            value: document.value(),
            document: Some(document),
        }
    }

    /// An object from the API server (JSON, already parsed).
    pub fn from_api(value: &serde_json::Value) -> Self {
        let resource_version = value
            .pointer("/metadata/resourceVersion")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        SourceObject {
            origin: Origin::Api { resource_version },
            value: serde_yaml::to_value(value).map_err(|e| DecodeError {
                path: FieldPath::root(),
                line: 0,
                message: e.to_string(),
            }),
            document: None,
        }
    }

    /// The object's first line (0 when it has no file).
    pub fn line(&self) -> usize {
        match &self.origin {
            Origin::File { line, .. } => *line,
            Origin::Api { .. } => 0,
        }
    }

    /// The line of the field at `path` (best effort; 0 when the object has no file).
    pub fn line_of(&self, path: &FieldPath) -> usize {
        match &self.document {
            Some(doc) if path.0.is_empty() => doc.line,
            Some(doc) => doc.line_of(path),
            None => 0,
        }
    }

    /// Decodes the object into a wire type; errors carry the field path (and line, for files).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        let value = self.value.as_ref().map_err(Clone::clone)?;
        match &self.document {
            Some(doc) => doc.decode_value(value),
            None => serde_path_to_error::deserialize(value.clone()).map_err(|e| DecodeError {
                path: super::convert_path(e.path()),
                line: 0,
                message: e.inner().to_string(),
            }),
        }
    }

    /// The directory relative file paths in the object are resolved against: its config file's
    /// directory; none for API objects (paths there are the proxy's own, absolute).
    pub fn base_dir(&self) -> PathBuf {
        match &self.origin {
            Origin::File { file, .. } => Path::new(file)
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            Origin::Api { .. } => PathBuf::new(),
        }
    }

    /// Whether `other` is this very object unchanged (same place and text, or same resourceVersion),
    /// so its earlier conversion still holds.
    pub fn unchanged_since(&self, other: &SourceObject) -> bool {
        match (&self.document, &other.document) {
            (Some(a), Some(b)) => a.file == b.file && a.text == b.text,
            (None, None) => {
                matches!((&self.origin, &other.origin), (Origin::Api { resource_version: a }, Origin::Api { resource_version: b }) if !a.is_empty() && a == b)
            }
            _ => false,
        }
    }

    /// Whether this file object came from a document identical to `doc` (same file, place, lines
    /// and text), so its parse and everything derived from it still hold.
    pub fn same_document(&self, doc: &Document) -> bool {
        self.document.as_ref().is_some_and(|d| d == doc)
    }

    /// `(file, document index)` for file objects: where an unparseable document used to hold a
    /// resource.
    pub fn position(&self) -> Option<(String, usize)> {
        self.document.as_ref().map(|d| (d.file.clone(), d.index))
    }
}

/// A change a source reports.
#[derive(Debug, Clone)]
pub enum Event {
    /// The object was created or changed.
    Upsert(SourceObject),
    /// The object `(kind, namespace, name)` is gone.
    Delete(super::ObjectKey),
}
