//! `HTTPRewrite` of the path: Envoy's `prefix_rewrite` (Istio `rewrite.uri`) and `regex_rewrite` (Istio
//! `uriRegexRewrite`), as `RouteEntryImplBase::rewritePathHeader` does them.
//!
//! - `uri` replaces the *matched portion* of the path: the matched prefix for a prefix match (its length;
//!   with `ignoreUriCase` the request's own spelling is what is replaced), the whole path for an exact or
//!   regex match, and for a rule without a URI condition (Istio emits prefix `/`) only the leading `/` —
//!   so `rewrite.uri: /v1` turns `/foo` into `/v1foo`. The query is kept.
//! - `uriRegexRewrite` replaces every match in the path without its query; the query is kept.
//!
//! The authority part of a rewrite is [`super::headers::authority_rewrite`].

use crate::policy::{HttpMatch, Rewrite, StringMatch};

/// Envoy keeps the path as the client sent it (query included) in this request header when it rewrites
/// the path.
pub const ORIGINAL_PATH_HEADER: &str = "x-envoy-original-path";

/// The rewritten `path?query`, or `None` when the rewrite does not touch the path. `matched` is the match
/// block of the rule that matched (`None` for a rule without match blocks). A configured path rewrite
/// always returns `Some` (even when the result equals the input), because Envoy then adds
/// [`ORIGINAL_PATH_HEADER`].
pub fn rewrite_path(
    rewrite: &Rewrite,
    matched: Option<&HttpMatch>,
    path_and_query: &str,
) -> Option<String> {
    if let Some(uri) = &rewrite.uri {
        return replace_matched(matched, path_and_query, uri);
    }
    let (re, template) = rewrite.uri_regex.as_ref()?;
    let (path, rest) = path_and_query.split_at(path_end(path_and_query));
    Some(format!("{}{rest}", re.replace_all(path, template.as_str())))
}

/// `path_and_query` with its matched portion replaced by `replacement` (Envoy's `prefix_rewrite`, for
/// routes and redirects). `None` if `matched` does not match the path (a caller bug; nothing is changed).
pub(crate) fn replace_matched(
    matched: Option<&HttpMatch>,
    path_and_query: &str,
    replacement: &str,
) -> Option<String> {
    let len = match matched.and_then(|m| m.uri.as_ref().map(|u| (u, m.ignore_uri_case))) {
        Some((StringMatch::Prefix(p), ignore_case)) => {
            let head = path_and_query.get(..p.len());
            let same = head.is_some_and(|h| {
                if ignore_case {
                    h.eq_ignore_ascii_case(p)
                } else {
                    h == p
                }
            });
            if !same {
                tracing::debug!(prefix = %p, path = path_and_query, "rewrite: the matched prefix is not the path's");
                return None;
            }
            p.len()
        }
        Some((StringMatch::Exact(_) | StringMatch::Regex(_), _)) => path_end(path_and_query),
        // Istio routes a rule without a URI condition (or `uri: {}`) on prefix `/`.
        None | Some((StringMatch::Present, _)) => usize::from(path_and_query.starts_with('/')),
    };
    Some(format!("{replacement}{}", &path_and_query[len..]))
}

/// Where the path ends: at the query or fragment (Envoy's `removeQueryAndFragment`).
fn path_end(path_and_query: &str) -> usize {
    path_and_query
        .find(['?', '#'])
        .unwrap_or(path_and_query.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l7::filters::testing::{http_routes, vs};

    /// (rule YAML, request path, expected upstream path). The first match block of the rule is the one that
    /// matched (these cases only use one).
    const CASES: &[(&str, &str, Option<&str>)] = &[
        // §5 item 12.
        (
            "match: [{uri: {prefix: /old/}}]\n    rewrite: {uri: /new/}",
            "/old/a?x=1",
            Some("/new/a?x=1"),
        ),
        ("rewrite: {uri: /v1}", "/foo", Some("/v1foo")),
        (
            "match: [{uri: {exact: /old}}]\n    rewrite: {uri: /new}",
            "/old?x=1",
            Some("/new?x=1"),
        ),
        // Prefix match without a trailing slash keeps the rest of the path.
        (
            "match: [{uri: {prefix: /api}}]\n    rewrite: {uri: /v2}",
            "/api/users",
            Some("/v2/users"),
        ),
        // ignoreUriCase: the request's own spelling of the prefix is replaced.
        (
            "match: [{uri: {prefix: /API/}, ignoreUriCase: true}]\n    rewrite: {uri: /v2/}",
            "/api/Users?q=A",
            Some("/v2/Users?q=A"),
        ),
        // Empty query marker is kept.
        (
            "match: [{uri: {prefix: /old}}]\n    rewrite: {uri: /new}",
            "/old?",
            Some("/new?"),
        ),
        // Regex URI match: the whole path is replaced, the query kept.
        (
            "match: [{uri: {regex: \"/item/[0-9]+\"}}]\n    rewrite: {uri: /item}",
            "/item/42?full=1",
            Some("/item?full=1"),
        ),
        // A match block without a URI condition: only the leading `/`.
        (
            "match: [{headers: {x-v: {exact: \"2\"}}}]\n    rewrite: {uri: /v2/}",
            "/foo?a=b",
            Some("/v2/foo?a=b"),
        ),
        // `prefix: ""` matches every path and replaces nothing of it.
        (
            "match: [{uri: {prefix: \"\"}}]\n    rewrite: {uri: /v1}",
            "/foo",
            Some("/v1/foo"),
        ),
        // §5 item 13. `\2` is `/v1/api` (with its slash), so RE2 gives a double slash here; the reference's
        // `/customprefix/v1/api/update` drops it.
        (
            "rewrite: {uriRegexRewrite: {match: \"^/service/([^/]+)(/.*)$\", rewrite: \"/customprefix/\\\\2/\\\\1\"}}",
            "/service/update/v1/api?q=1",
            Some("/customprefix//v1/api/update?q=1"),
        ),
        // Envoy's documented example.
        (
            "rewrite: {uriRegexRewrite: {match: \"^/service/([^/]+)(/.*)$\", rewrite: \"\\\\2/instance/\\\\1\"}}",
            "/service/foo/v1/api",
            Some("/v1/api/instance/foo"),
        ),
        // Every match is replaced; case-insensitive via (?i).
        (
            "rewrite: {uriRegexRewrite: {match: \"(?i)/xxx/\", rewrite: /yyy/}}",
            "/aaa/XxX/bbb/xxx/c",
            Some("/aaa/yyy/bbb/yyy/c"),
        ),
        // The query is not rewritten.
        (
            "rewrite: {uriRegexRewrite: {match: \"a\", rewrite: b}}",
            "/a/a?a=a",
            Some("/b/b?a=a"),
        ),
        // `$` in the rewrite is literal (RE2 syntax uses \\1, not $1).
        (
            "rewrite: {uriRegexRewrite: {match: \"^/p/(.*)$\", rewrite: \"/$1/\\\\1$\"}}",
            "/p/x?y",
            Some("/$1/x$?y"),
        ),
        // No match: nothing changes, but a path rewrite is configured (x-envoy-original-path is added).
        (
            "rewrite: {uriRegexRewrite: {match: \"^/nomatch$\", rewrite: /z}}",
            "/other",
            Some("/other"),
        ),
        // Authority only: the path is untouched.
        ("rewrite: {authority: other}", "/foo", None),
    ];

    #[test]
    fn rewrites() {
        for (rule, path, want) in CASES {
            let routes = http_routes(&vs(&format!(
                "  - {rule}\n    route:\n    - destination: {{host: reviews}}\n"
            )));
            let route = &routes[0];
            let rewrite = route.rewrite.as_ref().expect("a rewrite");
            assert_eq!(
                rewrite_path(rewrite, route.matches.first(), path).as_deref(),
                *want,
                "{rule} {path}"
            );
        }
    }

    #[test]
    fn a_prefix_that_did_not_match_changes_nothing() {
        let m = HttpMatch {
            uri: Some(StringMatch::Prefix("/old".into())),
            ..HttpMatch::default()
        };
        let rw = Rewrite {
            uri: Some("/new".into()),
            uri_regex: None,
            authority: None,
        };
        assert_eq!(rewrite_path(&rw, Some(&m), "/other"), None);
        assert_eq!(rewrite_path(&rw, Some(&m), "/o"), None);
    }
}
