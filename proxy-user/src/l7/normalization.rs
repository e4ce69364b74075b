//! Request path normalisation as Istio's sidecar default (`meshConfig.pathNormalization: BASE`,
//! i.e. Envoy `normalize_path: true`, `merge_slashes: false`, escaped slashes kept unchanged).
//!
//! The one normalised path is used for route matching, policies, hashing, redirects, the access log
//! and forwarding, so a rule on `/b` sees exactly what the upstream receives (CVE-2021-31920 class).
//!
//! What changes, in order:
//! - `%00` anywhere in the path: rejected (400);
//! - a backslash becomes `/` (as a browser URL canonicaliser treats it for http URLs);
//! - `%XX` of an unreserved character (`A-Z a-z 0-9 - . _ ~`) is decoded, other escapes get
//!   upper-case hex (`%2f` -> `%2F`); `%2F` and `%5C` stay escaped (`KEEP_UNCHANGED`);
//! - dot segments are removed (RFC 3986 §5.2.4), so `/a/../b` and `/a/%2e%2e/b` become `/b`;
//!   a `..` above the root stays at the root;
//! - repeated slashes are kept (`merge_slashes` is off by default).
//!
//! The query is left as the client sent it.

/// Why a path cannot be normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path carries an escaped NUL (`%00`).
    EscapedNul,
    /// The path does not start with `/` (and is not `*`).
    NotAbsolute,
}

/// Normalise `path_and_query` (origin form, query kept as is). `*` (server-wide `OPTIONS`) passes
/// unchanged.
pub fn normalize(path_and_query: &str) -> Result<String, PathError> {
    let (path, query) = match path_and_query.find('?') {
        Some(i) => path_and_query.split_at(i),
        None => (path_and_query, ""),
    };
    if path == "*" {
        return Ok(path_and_query.to_string());
    }
    if !path.starts_with('/') && !path.starts_with('\\') {
        return Err(PathError::NotAbsolute);
    }
    let decoded = canonical_escapes(path)?;
    let mut out = remove_dot_segments(&decoded);
    out.push_str(query);
    Ok(out)
}

/// Backslashes to `/`, unreserved escapes decoded, other escapes upper-cased.
fn canonical_escapes(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| {
                let hi = (h[0] as char).to_digit(16)?;
                let lo = (h[1] as char).to_digit(16)?;
                u8::try_from(hi * 16 + lo).ok()
            });
            match hex {
                Some(0) => return Err(PathError::EscapedNul),
                Some(v) if is_unreserved(v) => out.push(char::from(v)),
                Some(v) => {
                    out.push('%');
                    out.push_str(&format!("{v:02X}"));
                }
                // A stray `%` is kept as it came (the canonicaliser does not invent an escape).
                None => {
                    out.push('%');
                    i += 1;
                    continue;
                }
            }
            i += 3;
            continue;
        }
        if b == b'\\' {
            out.push('/');
        } else {
            // The URI parser admits only ASCII; a multi-byte char is copied whole.
            let ch_len = path[i..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&path[i..i + ch_len]);
            i += ch_len;
            continue;
        }
        i += 1;
    }
    Ok(out)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 §5.2.4 on an absolute path, keeping empty segments (no slash merging).
fn remove_dot_segments(path: &str) -> String {
    // Segments after the leading `/`; the last one may be empty (trailing slash).
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {
                // `/a/.` ends in a directory: keep the trailing slash.
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> String {
        normalize(p).unwrap_or_else(|e| format!("ERR {e:?}"))
    }

    #[test]
    fn dot_segments_are_resolved() {
        assert_eq!(n("/a/../b"), "/b");
        assert_eq!(n("/a/./b"), "/a/b");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/a/b/."), "/a/b/");
        assert_eq!(n("/../../b"), "/b");
        assert_eq!(n("/.."), "/");
        assert_eq!(n("/"), "/");
        assert_eq!(n("/a/..%2fb"), "/a/..%2Fb");
    }

    #[test]
    fn escaped_dots_are_decoded_then_resolved() {
        assert_eq!(n("/a/%2e%2e/b"), "/b");
        assert_eq!(n("/a/%2E%2E/b"), "/b");
        assert_eq!(n("/a/.%2e/b"), "/b");
        assert_eq!(n("/%7euser/%41"), "/~user/A");
    }

    #[test]
    fn escaped_slashes_are_kept_but_canonical() {
        assert_eq!(n("/a%2Fb"), "/a%2Fb");
        assert_eq!(n("/a%2fb"), "/a%2Fb");
        assert_eq!(n("/a%5cb"), "/a%5Cb");
        assert_eq!(n("/a%20b"), "/a%20b");
    }

    #[test]
    fn backslash_is_a_slash() {
        assert_eq!(n("/a\\..\\b"), "/b");
        assert_eq!(n("\\b"), "/b");
    }

    #[test]
    fn slashes_are_not_merged() {
        assert_eq!(n("//b"), "//b");
        assert_eq!(n("/a//../b"), "/a/b");
    }

    #[test]
    fn query_is_untouched() {
        assert_eq!(n("/a/../b?x=/../%2e&y=%00"), "/b?x=/../%2e&y=%00");
        assert_eq!(n("/b?"), "/b?");
    }

    #[test]
    fn nul_and_relative_paths_are_rejected() {
        assert_eq!(normalize("/a%00b"), Err(PathError::EscapedNul));
        assert_eq!(normalize("/%00"), Err(PathError::EscapedNul));
        assert_eq!(normalize("a/b"), Err(PathError::NotAbsolute));
        assert_eq!(normalize(""), Err(PathError::NotAbsolute));
        assert_eq!(n("*"), "*");
    }

    #[test]
    fn stray_percent_is_kept() {
        assert_eq!(n("/a%zz"), "/a%zz");
        assert_eq!(n("/a%"), "/a%");
        assert_eq!(n("/a%4"), "/a%4");
    }

    #[test]
    fn normalisation_is_idempotent() {
        for p in [
            "/a/../b",
            "/a/%2e%2e/b",
            "//x/./y/",
            "/a%2fb/../c",
            "/a\\b",
            "/%7e/..",
            "/x/%2E/",
        ] {
            let once = n(p);
            assert_eq!(n(&once), once, "{p}");
        }
    }
}
