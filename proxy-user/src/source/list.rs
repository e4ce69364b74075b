//! Kubernetes `List` documents (what `kubectl get -o yaml` writes for several objects), split into one
//! document per item, as `kubectl apply` applies each item on its own.
//!
//! Each item keeps its own text, cut from the list's text, so every later error points at the item's
//! real file line. Only block-style lists (`- apiVersion: ...` items, as kubectl writes them) can be cut;
//! anything else stays one document (and is reported as a kind Keel does not read).

use super::{Document, FieldPath};

/// `docs` with every block-style `List` replaced by its items, in order.
pub(super) fn expand(docs: &[Document]) -> Vec<Document> {
    let mut out = Vec::with_capacity(docs.len());
    for doc in docs {
        match items(doc) {
            Some(items) => out.extend(items),
            None => out.push(doc.clone()),
        }
    }
    out
}

/// A list kind: `List` (any group) or `<Kind>List`.
fn is_list_kind(kind: &str) -> bool {
    kind.ends_with("List")
}

/// The items of `doc` when it is a block-style list, `None` otherwise.
fn items(doc: &Document) -> Option<Vec<Document>> {
    // Cheap test first: most documents are not lists and need no second parse.
    let looks_like_list = doc.text.lines().any(|l| {
        l.strip_prefix("kind:")
            .is_some_and(|k| is_list_kind(k.trim().trim_matches(['"', '\''])))
    });
    if !looks_like_list {
        return None;
    }
    let value = doc.value().ok()?;
    let kind = value.get("kind")?.as_str()?;
    if !is_list_kind(kind) {
        return None;
    }
    let count = value.get("items")?.as_sequence()?.len();
    let lines: Vec<&str> = doc.text.lines().collect();
    let items_path = FieldPath::root().key("items");
    let mut starts = Vec::with_capacity(count);
    for i in 0..count {
        // 1-based within the text; a line that is not an item's `- ` means flow style: give up.
        let line = super::line_of(&doc.text, &items_path.index(i))?;
        let text = lines.get(line - 1)?;
        if !text.trim_start().starts_with('-') || starts.last().is_some_and(|&l| l >= line) {
            return None;
        }
        starts.push(line);
    }
    let mut out = Vec::with_capacity(count);
    for (i, &start) in starts.iter().enumerate() {
        let first = lines[start - 1];
        let dash = first.len() - first.trim_start_matches(' ').len();
        let body_indent = dash + 2;
        // The item ends at the next item, or at the first later line indented no deeper than its dash
        // (the list's next key, e.g. `kind: List`).
        let end = starts.get(i + 1).map_or_else(
            || {
                lines[start..]
                    .iter()
                    .position(|l| {
                        let t = l.trim();
                        !t.is_empty()
                            && !t.starts_with('#')
                            && l.len() - l.trim_start_matches(' ').len() <= dash
                    })
                    .map_or(lines.len(), |p| start + p)
            },
            |&next| next - 1,
        );
        let mut text = String::new();
        for (k, l) in lines[start - 1..end].iter().enumerate() {
            let l = if k == 0 {
                // `- apiVersion: v1` -> `apiVersion: v1`.
                first.get(body_indent..).unwrap_or("")
            } else {
                let indent = l.len() - l.trim_start_matches(' ').len();
                &l[indent.min(body_indent)..]
            };
            text.push_str(l);
            text.push('\n');
        }
        out.push(Document {
            file: doc.file.clone(),
            line: doc.text_line + start - 1,
            text_line: doc.text_line + start - 1,
            index: doc.index,
            text,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_list_items_keep_their_file_lines() {
        let text = "apiVersion: v1\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: a\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: b}\nkind: List\nmetadata:\n  resourceVersion: \"\"\n";
        let docs = crate::source::split_documents("f.yaml", text);
        let out = expand(&docs);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].line, 3);
        assert_eq!(
            out[0].text,
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n"
        );
        assert_eq!(out[1].line, 7);
        assert_eq!(
            out[1].text,
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n"
        );
        assert_eq!(out[1].line_of(&FieldPath::parse("metadata")), 9);
    }

    #[test]
    fn other_documents_and_flow_lists_are_kept() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: List\nitems: [{apiVersion: v1, kind: Namespace, metadata: {name: b}}]\n";
        let docs = crate::source::split_documents("f.yaml", text);
        assert_eq!(expand(&docs), docs);
    }
}
