//! `CorsPolicy`, as Envoy's CORS filter (`extensions/filters/http/cors/cors_filter.cc`) applies what Istio
//! translates (`TranslateCORSPolicy`: lists joined with `,`, `maxAge` in whole seconds,
//! `unmatchedPreflights: IGNORE` = `forward_not_matching_preflights: false`).
//!
//! - A request without a non-empty `Origin` is not CORS.
//! - An origin is allowed when a matcher matches it, or matches the literal `*` (so `exact: "*"` or
//!   `regex: ".*"` allow every origin).
//! - A preflight is `OPTIONS` with `Origin` and a non-empty `Access-Control-Request-Method`. From an
//!   allowed origin it is answered locally with 200 and `access-control-allow-origin` (the origin),
//!   `-allow-credentials: true` (only when `allowCredentials` is true), `-allow-methods`, `-allow-headers`
//!   (a lone `*` echoes the request's `access-control-request-method` / `-headers`), `-max-age` and
//!   `-expose-headers` (Envoy 1.40 adds them on its response path), and no route header ops (the router
//!   never sees it).
//! - A preflight from another origin is forwarded like any request (`UNSPECIFIED`/`FORWARD`) or, with
//!   `IGNORE`, answered locally with 200 and the same headers *except* `access-control-allow-origin`.
//! - Any other request from an allowed origin is forwarded; its response (upstream or a local reply of
//!   the router) gets `access-control-allow-origin`, `-allow-credentials` and `-expose-headers`, replacing
//!   what the upstream sent. Responses to other origins are not touched.
//! - Envoy adds no `Vary: Origin`, and neither does Keel.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
};
use http::{HeaderMap, HeaderValue, Method};

use crate::policy::{CorsPolicy, UnmatchedPreflights};

/// What the CORS policy makes of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsDecision {
    /// No `Origin`: nothing to do.
    NotCors,
    /// Answer locally with 200 and these headers; do not forward.
    Preflight(HeaderMap),
    /// Forward; pass the response through [`decorate_response`]. `allow_origin` is the request's origin
    /// when it is allowed (`None`: the response is left alone).
    Forward {
        /// The origin to echo in `access-control-allow-origin`.
        allow_origin: Option<HeaderValue>,
    },
}

/// Decides what to do with a request on a route with `policy`.
pub fn on_request(policy: &CorsPolicy, method: &Method, headers: &HeaderMap) -> CorsDecision {
    let Some(origin) = headers.get(ORIGIN).filter(|o| !o.is_empty()) else {
        return CorsDecision::NotCors;
    };
    let allowed = origin_allowed(policy, origin);
    let request_method = headers
        .get(ACCESS_CONTROL_REQUEST_METHOD)
        .filter(|m| !m.is_empty());
    let is_preflight = method == Method::OPTIONS && request_method.is_some();
    let answer_locally = allowed || policy.unmatched_preflights == UnmatchedPreflights::Ignore;
    if !is_preflight || !answer_locally {
        return CorsDecision::Forward {
            allow_origin: allowed.then(|| origin.clone()),
        };
    }
    let mut out = HeaderMap::new();
    if allowed {
        out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    }
    if policy.allow_credentials == Some(true) {
        out.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    let echo = |name| {
        headers
            .get(name)
            .cloned()
            .unwrap_or(HeaderValue::from_static(""))
    };
    match joined(&policy.allow_methods) {
        Some(m) if m == "*" => {
            out.insert(
                ACCESS_CONTROL_ALLOW_METHODS,
                echo(ACCESS_CONTROL_REQUEST_METHOD),
            );
        }
        Some(m) => {
            out.insert(ACCESS_CONTROL_ALLOW_METHODS, m);
        }
        None => {}
    }
    match joined(&policy.allow_headers) {
        Some(h) if h == "*" => {
            out.insert(
                ACCESS_CONTROL_ALLOW_HEADERS,
                echo(ACCESS_CONTROL_REQUEST_HEADERS),
            );
        }
        Some(h) => {
            out.insert(ACCESS_CONTROL_ALLOW_HEADERS, h);
        }
        None => {}
    }
    if let Some(age) = policy.max_age {
        out.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from(age.as_secs()));
    }
    // Envoy's local preflight reply passes the filter's response path too, which adds the expose
    // headers for an allowed origin (observed on Envoy 1.40).
    if allowed {
        if let Some(expose) = joined(&policy.expose_headers) {
            out.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose);
        }
    }
    CorsDecision::Preflight(out)
}

/// Adds the CORS response headers for a forwarded request from an allowed origin (after the route's
/// response header ops, so these win).
pub fn decorate_response(decision: &CorsDecision, policy: &CorsPolicy, headers: &mut HeaderMap) {
    let CorsDecision::Forward {
        allow_origin: Some(origin),
    } = decision
    else {
        return;
    };
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    if policy.allow_credentials == Some(true) {
        headers.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if let Some(expose) = joined(&policy.expose_headers) {
        headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose);
    }
}

fn origin_allowed(policy: &CorsPolicy, origin: &HeaderValue) -> bool {
    // Envoy matches the origin as a string; a non-UTF-8 origin can only be allowed by a `*` matcher.
    let origin = origin.to_str().ok();
    policy
        .allow_origins
        .iter()
        .any(|m| m.matches("*") || origin.is_some_and(|o| m.matches(o)))
}

/// Istio joins the lists with `,`; an empty list sets no header. Names were validated at conversion.
fn joined(list: &[String]) -> Option<HeaderValue> {
    if list.is_empty() {
        return None;
    }
    HeaderValue::from_str(&list.join(",")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l7::filters::testing::{http_routes, vs};

    fn policy(cors: &str) -> CorsPolicy {
        let routes = http_routes(&vs(&format!(
            "  - route:\n    - destination: {{host: reviews}}\n    corsPolicy: {cors}\n"
        )));
        routes[0].cors_policy.clone().expect("a CORS policy")
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (n, v) in pairs {
            m.append(
                http::HeaderName::from_bytes(n.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        m
    }

    fn dump(m: &HeaderMap) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = m
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    v.to_str().unwrap_or("?").to_string(),
                )
            })
            .collect();
        out.sort();
        out
    }

    fn pairs(l: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = l
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        v.sort();
        v
    }

    const FULL: &str = "{allowOrigins: [{exact: \"https://example.com\"}, {regex: \"https://.*\\\\.example\\\\.org\"}], \
        allowMethods: [GET, POST], allowHeaders: [content-type, x-user], exposeHeaders: [x-request-id, x-trace], \
        maxAge: 24h, allowCredentials: true}";

    /// One request on a route with a CORS policy.
    struct Case {
        what: &'static str,
        cors: &'static str,
        method: Method,
        headers: Vec<(&'static str, &'static str)>,
        want: Want,
    }

    impl Case {
        fn new(
            what: &'static str,
            cors: &'static str,
            method: Method,
            headers: Vec<(&'static str, &'static str)>,
            want: Want,
        ) -> Case {
            Case {
                what,
                cors,
                method,
                headers,
                want,
            }
        }
    }

    /// What the CORS filter does with the request.
    enum Want {
        Local(&'static [(&'static str, &'static str)]),
        Forward(Option<&'static str>),
        NotCors,
    }

    #[test]
    fn requests() {
        let preflight_from = |origin: &'static str| -> Vec<(&'static str, &'static str)> {
            vec![
                ("origin", origin),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "content-type"),
            ]
        };
        let cases: Vec<Case> = vec![
            Case::new(
                "§1.14 preflight from an allowed origin",
                FULL,
                Method::OPTIONS,
                preflight_from("https://example.com"),
                Want::Local(&[
                    ("access-control-allow-origin", "https://example.com"),
                    ("access-control-allow-credentials", "true"),
                    ("access-control-allow-methods", "GET,POST"),
                    ("access-control-allow-headers", "content-type,x-user"),
                    ("access-control-max-age", "86400"),
                    ("access-control-expose-headers", "x-request-id,x-trace"),
                ]),
            ),
            Case::new(
                "regex origin",
                FULL,
                Method::OPTIONS,
                preflight_from("https://a.example.org"),
                Want::Local(&[
                    ("access-control-allow-origin", "https://a.example.org"),
                    ("access-control-allow-credentials", "true"),
                    ("access-control-allow-methods", "GET,POST"),
                    ("access-control-allow-headers", "content-type,x-user"),
                    ("access-control-max-age", "86400"),
                    ("access-control-expose-headers", "x-request-id,x-trace"),
                ]),
            ),
            Case::new(
                "preflight from another origin is forwarded (default)",
                FULL,
                Method::OPTIONS,
                preflight_from("https://evil.com"),
                Want::Forward(None),
            ),
            Case::new(
                "IGNORE answers it locally without allow-origin",
                "{allowOrigins: [{exact: \"https://example.com\"}], allowMethods: [GET], unmatchedPreflights: IGNORE}",
                Method::OPTIONS,
                preflight_from("https://evil.com"),
                Want::Local(&[("access-control-allow-methods", "GET")]),
            ),
            Case::new(
                "FORWARD is the default",
                "{allowOrigins: [{exact: \"https://example.com\"}], unmatchedPreflights: FORWARD}",
                Method::OPTIONS,
                preflight_from("https://evil.com"),
                Want::Forward(None),
            ),
            Case::new(
                "OPTIONS without access-control-request-method is a simple request",
                FULL,
                Method::OPTIONS,
                vec![("origin", "https://example.com")],
                Want::Forward(Some("https://example.com")),
            ),
            Case::new(
                "an empty access-control-request-method is no preflight",
                FULL,
                Method::OPTIONS,
                vec![
                    ("origin", "https://example.com"),
                    ("access-control-request-method", ""),
                ],
                Want::Forward(Some("https://example.com")),
            ),
            Case::new(
                "GET from an allowed origin",
                FULL,
                Method::GET,
                vec![("origin", "https://example.com")],
                Want::Forward(Some("https://example.com")),
            ),
            Case::new(
                "GET from another origin",
                FULL,
                Method::GET,
                vec![("origin", "https://evil.com")],
                Want::Forward(None),
            ),
            Case::new("no Origin", FULL, Method::OPTIONS, vec![("access-control-request-method", "GET")], Want::NotCors),
            Case::new("empty Origin", FULL, Method::GET, vec![("origin", "")], Want::NotCors),
            Case::new(
                "exact * allows every origin",
                "{allowOrigins: [{exact: \"*\"}]}",
                Method::OPTIONS,
                preflight_from("https://any.where"),
                Want::Local(&[("access-control-allow-origin", "https://any.where")]),
            ),
            Case::new(
                "deprecated allowOrigin exact strings",
                "{allowOrigin: [\"https://old.example\"], allowMethods: [PUT]}",
                Method::OPTIONS,
                preflight_from("https://old.example"),
                Want::Local(&[
                    ("access-control-allow-origin", "https://old.example"),
                    ("access-control-allow-methods", "PUT"),
                ]),
            ),
            Case::new(
                "allowCredentials false sets nothing; maxAge 0s is sent",
                "{allowOrigins: [{prefix: \"https://\"}], allowCredentials: false, maxAge: 0s}",
                Method::OPTIONS,
                preflight_from("https://x.y"),
                Want::Local(&[
                    ("access-control-allow-origin", "https://x.y"),
                    ("access-control-max-age", "0"),
                ]),
            ),
            Case::new(
                "a lone * echoes the requested headers",
                "{allowOrigins: [{exact: \"https://example.com\"}], allowHeaders: [\"*\"]}",
                Method::OPTIONS,
                preflight_from("https://example.com"),
                Want::Local(&[
                    ("access-control-allow-origin", "https://example.com"),
                    ("access-control-allow-headers", "content-type"),
                ]),
            ),
        ];
        for Case {
            what,
            cors,
            method,
            headers,
            want,
        } in cases
        {
            let got = on_request(&policy(cors), &method, &map(&headers));
            match (want, got) {
                (Want::Local(expected), CorsDecision::Preflight(h)) => {
                    assert_eq!(dump(&h), pairs(expected), "{what}");
                }
                (Want::Forward(expected), CorsDecision::Forward { allow_origin }) => {
                    assert_eq!(
                        allow_origin.as_ref().and_then(|o| o.to_str().ok()),
                        expected,
                        "{what}"
                    );
                }
                (Want::NotCors, CorsDecision::NotCors) => {}
                (_, got) => panic!("{what}: unexpected {got:?}"),
            }
        }
    }

    #[test]
    fn star_methods_echo_the_requested_method() {
        // Istio only accepts named methods, but Envoy echoes for a lone `*`; keep that if it ever arrives.
        let mut p = policy("{allowOrigins: [{exact: \"https://example.com\"}]}");
        p.allow_methods = vec!["*".to_string()];
        let d = on_request(
            &p,
            &Method::OPTIONS,
            &map(&[
                ("origin", "https://example.com"),
                ("access-control-request-method", "DELETE"),
            ]),
        );
        let CorsDecision::Preflight(h) = d else {
            panic!("a local answer, got {d:?}");
        };
        assert_eq!(
            h.get(ACCESS_CONTROL_ALLOW_METHODS)
                .and_then(|v| v.to_str().ok()),
            Some("DELETE")
        );
    }

    #[test]
    fn responses() {
        let full = policy(FULL);
        let allowed = on_request(
            &full,
            &Method::GET,
            &map(&[("origin", "https://example.com")]),
        );
        let mut h = map(&[
            ("content-type", "text/plain"),
            ("access-control-allow-origin", "*"),
        ]);
        decorate_response(&allowed, &full, &mut h);
        assert_eq!(
            dump(&h),
            pairs(&[
                ("content-type", "text/plain"),
                ("access-control-allow-origin", "https://example.com"),
                ("access-control-allow-credentials", "true"),
                ("access-control-expose-headers", "x-request-id,x-trace"),
            ])
        );

        let untouched = map(&[("content-type", "text/plain")]);
        for decision in [
            on_request(&full, &Method::GET, &map(&[("origin", "https://evil.com")])),
            CorsDecision::NotCors,
            on_request(
                &full,
                &Method::OPTIONS,
                &map(&[
                    ("origin", "https://example.com"),
                    ("access-control-request-method", "GET"),
                ]),
            ),
        ] {
            let mut h = untouched.clone();
            decorate_response(&decision, &full, &mut h);
            assert_eq!(h, untouched, "{decision:?}");
        }

        // Without credentials or expose headers only the origin is added; no Vary.
        let plain = policy("{allowOrigins: [{exact: \"https://example.com\"}]}");
        let d = on_request(
            &plain,
            &Method::POST,
            &map(&[("origin", "https://example.com")]),
        );
        let mut h = HeaderMap::new();
        decorate_response(&d, &plain, &mut h);
        assert_eq!(
            dump(&h),
            pairs(&[("access-control-allow-origin", "https://example.com")])
        );
    }
}
