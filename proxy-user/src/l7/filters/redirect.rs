//! The `location` of an `HTTPRedirect` answer, as Istio translates the redirect (`ApplyRedirect`) and Envoy
//! builds the URL (`Http::Utility::newUri`):
//!
//! - scheme: `redirect.scheme`, else the request's.
//! - port: `port`, or with `derivePort: FROM_REQUEST_PORT` the service port the request arrived on; Istio
//!   drops it when it is the scheme's default (80 for http, 443 for https). `FROM_PROTOCOL_DEFAULT` sets
//!   no port.
//! - host: `authority` replaces host *and* port (Envoy's `host_redirect` keeps no port of the request).
//!   Without it the request's `Host` is kept, minus its port when a new port is set, or when the scheme
//!   changes and the port was the old scheme's default.
//! - path: `uri` replaces the whole path, keeping the request's query unless `uri` has one of its own;
//!   `prefixRewrite` replaces the matched prefix; otherwise the request's path and query. A path that does
//!   not start with `/` gets one. (Istio never sets Envoy's `strip_query`.)

use crate::policy::{DerivePort, HttpMatch, Redirect};

use super::rewrite::replace_matched;

/// What the redirect reads from the request.
#[derive(Debug, Clone, Copy)]
pub struct RedirectFacts<'a> {
    /// `http` or `https` (`:scheme`).
    pub scheme: &'a str,
    /// `:authority` / `Host` as sent (may carry a port).
    pub authority: &'a str,
    /// `:path`, query included.
    pub path_and_query: &'a str,
    /// The service port the request arrived on (`derivePort: FROM_REQUEST_PORT`).
    pub port: u16,
    /// The match block of the rule that matched (`prefixRewrite` replaces its prefix).
    pub matched: Option<&'a HttpMatch>,
}

/// The `location` header of the redirect answer.
pub fn location(r: &Redirect, f: &RedirectFacts<'_>) -> String {
    let scheme = r
        .scheme
        .as_deref()
        .filter(|s| !s.is_empty())
        .unwrap_or(f.scheme);
    let port = match (r.port, r.derive_port) {
        (Some(p), _) => Some(p),
        (None, Some(DerivePort::FromRequestPort)) => Some(f.port),
        (None, Some(DerivePort::FromProtocolDefault) | None) => None,
    }
    .filter(|&p| !(p == 80 && scheme == "http" || p == 443 && scheme == "https"));
    let port = port.map(|p| format!(":{p}")).unwrap_or_default();
    let host = match set(&r.authority) {
        Some(a) => a,
        None => request_host(f.authority, f.scheme, scheme, !port.is_empty()),
    };
    let mut path = match (set(&r.uri), set(&r.prefix_rewrite)) {
        (Some(uri), _) if uri.contains('?') => uri.to_string(),
        (Some(uri), _) => match f.path_and_query.find('?') {
            Some(q) => format!("{uri}{}", &f.path_and_query[q..]),
            None => uri.to_string(),
        },
        (None, Some(prefix)) => replace_matched(f.matched, f.path_and_query, prefix)
            .unwrap_or_else(|| f.path_and_query.to_string()),
        (None, None) => f.path_and_query.to_string(),
    };
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    format!("{scheme}://{host}{port}{path}")
}

/// Envoy treats an empty string as unset.
fn set(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

/// The request's host for the location (Envoy's `processRequestHost`): its port is dropped when a new
/// port is set, or when the scheme changes and the port was the old scheme's default.
fn request_host<'a>(
    authority: &'a str,
    old_scheme: &str,
    new_scheme: &str,
    new_port: bool,
) -> &'a str {
    let port_at = if authority.starts_with('[') {
        authority.rfind("]:").map(|i| i + 1)
    } else {
        authority.rfind(':')
    };
    let Some(at) = port_at else {
        return authority;
    };
    let port = &authority[at..];
    let default_port_of_old_scheme = old_scheme.eq_ignore_ascii_case("https") && port == ":443"
        || old_scheme.eq_ignore_ascii_case("http") && port == ":80";
    if new_port || (new_scheme != old_scheme && default_port_of_old_scheme) {
        &authority[..at]
    } else {
        authority
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l7::filters::testing::{http_routes, vs};
    use crate::policy::HttpAction;

    /// (redirect rule YAML, request authority, path, expected location). Requests are `http` on port 9080.
    const CASES: &[(&str, &str, &str, &str)] = &[
        // §5 item 14.
        (
            "match: [{uri: {exact: /v1/getProductRatings}}]\n    redirect: {uri: /v1/bookRatings, authority: newratings.default.svc.cluster.local}",
            "ratings:9080",
            "/v1/getProductRatings",
            "http://newratings.default.svc.cluster.local/v1/bookRatings",
        ),
        (
            "redirect: {uri: /new, derivePort: FROM_REQUEST_PORT}",
            "reviews:9080",
            "/old",
            "http://reviews:9080/new",
        ),
        (
            "redirect: {uri: /new, authority: secure.example.com, scheme: https, port: 443}",
            "reviews:9080",
            "/old",
            "https://secure.example.com/new",
        ),
        // The query is kept unless the new uri has one.
        ("redirect: {uri: /new}", "reviews:9080", "/old?a=1", "http://reviews:9080/new?a=1"),
        ("redirect: {uri: \"/new?b=2\"}", "reviews:9080", "/old?a=1", "http://reviews:9080/new?b=2"),
        ("redirect: {uri: /new}", "reviews:9080", "/old?", "http://reviews:9080/new?"),
        // host_redirect replaces host and port; the request's port is not kept.
        ("redirect: {authority: other}", "reviews:9080", "/p?q", "http://other/p?q"),
        ("redirect: {authority: \"other:8080\"}", "reviews", "/p", "http://other:8080/p"),
        // Without authority the request's Host is kept, port included...
        ("redirect: {uri: /x}", "reviews:9080", "/p", "http://reviews:9080/x"),
        ("redirect: {uri: /x}", "reviews", "/p", "http://reviews/x"),
        // ...minus its port when a port is set.
        ("redirect: {port: 8443}", "reviews:9080", "/p", "http://reviews:8443/p"),
        ("redirect: {port: 8443}", "[fd00::1]:9080", "/p", "http://[fd00::1]:8443/p"),
        // Istio drops a port that is the scheme's default, so Envoy gets no port_redirect and keeps the
        // request's Host as is: the client's `:9080` stays (a quirk of the translation, reproduced).
        ("redirect: {scheme: https, port: 443}", "reviews:9080", "/p", "https://reviews:9080/p"),
        ("redirect: {scheme: https, port: 443}", "reviews", "/p", "https://reviews/p"),
        ("redirect: {port: 80}", "reviews:9080", "/p", "http://reviews:9080/p"),
        // Envoy drops the old scheme's default port when the scheme changes.
        ("redirect: {scheme: https, port: 80}", "reviews:9080", "/p", "https://reviews:80/p"),
        ("redirect: {scheme: https}", "reviews:80", "/p", "https://reviews/p"),
        ("redirect: {scheme: https}", "reviews:9080", "/p", "https://reviews:9080/p"),
        ("redirect: {scheme: https, derivePort: FROM_REQUEST_PORT}", "reviews", "/p", "https://reviews:9080/p"),
        // FROM_PROTOCOL_DEFAULT sets no port: Envoy's behaviour without port_redirect.
        ("redirect: {scheme: https, derivePort: FROM_PROTOCOL_DEFAULT}", "reviews:9080", "/p", "https://reviews:9080/p"),
        ("redirect: {authority: a.b, derivePort: FROM_PROTOCOL_DEFAULT}", "reviews:9080", "/p", "http://a.b/p"),
        // prefixRewrite replaces the matched prefix, query kept.
        (
            "match: [{uri: {prefix: /foo}}]\n    redirect: {prefixRewrite: /bar}",
            "reviews:9080",
            "/foo/baz?q=1",
            "http://reviews:9080/bar/baz?q=1",
        ),
        (
            "match: [{uri: {prefix: /foo}}]\n    redirect: {prefixRewrite: /}",
            "reviews:9080",
            "/foo/baz",
            "http://reviews:9080//baz",
        ),
        // A path without a leading slash gets one.
        ("redirect: {uri: new}", "reviews:9080", "/p", "http://reviews:9080/new"),
        // Empty strings are unset in Envoy.
        ("redirect: {uri: \"\", authority: \"\", port: 8080}", "reviews:9080", "/p?q", "http://reviews:8080/p?q"),
    ];

    #[test]
    fn locations() {
        for (rule, authority, path, want) in CASES {
            let routes = http_routes(&vs(&format!("  - {rule}\n")));
            let route = &routes[0];
            let HttpAction::Redirect(r) = &route.action else {
                panic!("{rule}: a redirect action");
            };
            let facts = RedirectFacts {
                scheme: "http",
                authority,
                path_and_query: path,
                port: 9080,
                matched: route.matches.first(),
            };
            assert_eq!(location(r, &facts), *want, "{rule} {authority}{path}");
        }
    }

    #[test]
    fn codes() {
        let code = |yaml: &str| {
            let routes = http_routes(&vs(&format!("  - redirect: {{uri: /n{yaml}}}\n")));
            match &routes[0].action {
                HttpAction::Redirect(r) => r.redirect_code,
                _ => 0,
            }
        };
        assert_eq!(code(""), 301);
        assert_eq!(code(", redirectCode: 308"), 308);
        assert_eq!(code(", redirectCode: 302"), 302);
    }
}
