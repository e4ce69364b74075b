//! Best-effort mapping from a field path to the line of a block-style YAML document.
//!
//! serde_yaml keeps no positions once a value is built, but validation runs on typed values and still
//! wants to say "line 14". Config files are written in block style (`key:` on its own line, `- ` for list
//! items), so walking indentation finds almost every field. Flow style (`{value: 10}`), multi-line keys or
//! anything unexpected stops the walk and we return the deepest line found so far.

use super::{FieldPath, Segment};

/// One non-blank, non-comment line: indentation, content, 1-based line within the document.
#[derive(Clone, Copy)]
struct Line<'a> {
    indent: usize,
    content: &'a str,
    lineno: usize,
}

/// 1-based line (within `text`) of `path`, or of its deepest located ancestor; `None` if not even the first
/// segment is found.
pub fn line_of(text: &str, path: &FieldPath) -> Option<usize> {
    let lines: Vec<Line<'_>> = text
        .lines()
        .enumerate()
        .filter_map(|(i, raw)| {
            let content = raw.trim_start_matches(' ');
            let t = content.trim();
            (!t.is_empty() && !t.starts_with('#')).then_some(Line {
                indent: raw.len() - content.len(),
                content: content.trim_end(),
                lineno: i + 1,
            })
        })
        .collect();
    let mut scope: Vec<Line<'_>> = lines;
    let mut found = None;
    for seg in &path.0 {
        let Some(first) = scope.first().copied() else {
            break;
        };
        let base = first.indent;
        match seg {
            Segment::Key(key) => {
                let Some(pos) = scope
                    .iter()
                    .position(|l| l.indent == base && key_of(l.content) == Some(key.as_str()))
                else {
                    break;
                };
                let line = scope[pos];
                found = Some(line.lineno);
                // The value: the lines indented deeper than the key, or (`key:` followed by a `- ` list at
                // the same indentation, which YAML allows) the list items at that indentation.
                let rest = &scope[pos + 1..];
                let same_indent_list = rest
                    .first()
                    .is_some_and(|l| l.indent == line.indent && is_item(l.content));
                let end = rest
                    .iter()
                    .position(|l| {
                        l.indent < line.indent
                            || (l.indent == line.indent
                                && !(same_indent_list && is_item(l.content)))
                    })
                    .unwrap_or(rest.len());
                scope = rest[..end].to_vec();
            }
            Segment::Index(idx) => {
                let items: Vec<usize> = scope
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.indent == base && is_item(l.content))
                    .map(|(i, _)| i)
                    .collect();
                let Some(&start) = items.get(*idx) else { break };
                let end = items.get(idx + 1).copied().unwrap_or(scope.len());
                let item = scope[start];
                found = Some(item.lineno);
                let mut body = Vec::with_capacity(end - start);
                // Re-read the dash line as if the `- ` were indentation, so `- destination:` starts a map.
                let after_dash = item.content[1..].trim_start_matches(' ');
                if !after_dash.is_empty() {
                    body.push(Line {
                        indent: item.indent + (item.content.len() - after_dash.len()),
                        content: after_dash,
                        lineno: item.lineno,
                    });
                }
                body.extend(
                    scope[start + 1..end]
                        .iter()
                        .copied()
                        .filter(|l| l.indent > base),
                );
                scope = body;
            }
        }
    }
    found
}

/// A list item line (`- x` or a bare `-`).
fn is_item(content: &str) -> bool {
    content.starts_with("- ") || content == "-"
}

/// The key of a `key: value` / `key:` / `"key": value` line.
fn key_of(content: &str) -> Option<&str> {
    if let Some(rest) = content.strip_prefix('"') {
        let end = rest.find('"')?;
        return rest[end + 1..]
            .trim_start()
            .starts_with(':')
            .then(|| &rest[..end]);
    }
    if let Some(rest) = content.strip_prefix('\'') {
        let end = rest.find('\'')?;
        return rest[end + 1..]
            .trim_start()
            .starts_with(':')
            .then(|| &rest[..end]);
    }
    // A plain key ends at the first ": " or a trailing ':'.
    let end = content
        .find(": ")
        .or_else(|| content.strip_suffix(':').map(str::len))?;
    Some(content[..end].trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VS: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: 10
    - destination: {host: reviews, subset: v3}
      weight: 90
";

    #[test]
    fn finds_block_style_fields() {
        let cases = [
            ("metadata.name", Some(4)),
            ("spec.hosts[0]", Some(7)),
            ("spec.http[0].match[0].headers.end-user.exact", Some(12)),
            ("spec.http[0].route[0].destination.subset", Some(16)),
            ("spec.http[1].route[0].weight", Some(21)),
            ("spec.http[1].route[1].weight", Some(23)),
            // Flow style: the deepest block-style ancestor.
            ("spec.http[1].route[1].destination.subset", Some(22)),
            ("spec.tcp", Some(5)),
            ("status", None),
        ];
        for (path, want) in cases {
            assert_eq!(line_of(VS, &FieldPath::parse(path)), want, "{path}");
        }
    }

    #[test]
    fn same_indent_lists_are_found() {
        let text = "spec:\n  hosts:\n  - a\n  - b\n  gateways:\n  - mesh\n";
        assert_eq!(line_of(text, &FieldPath::parse("spec.hosts[1]")), Some(4));
        assert_eq!(
            line_of(text, &FieldPath::parse("spec.gateways[0]")),
            Some(6)
        );
    }
}
