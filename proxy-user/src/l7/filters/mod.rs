//! Request-shaping filters: pure functions over a matched route's policy and the request's headers.
//!
//! Each module reproduces one piece of what Envoy does for an Istio sidecar; none does I/O or routing.
//! The request path calls them in the order of Istio's HTTP filter chain (`fault`, `cors`, `router`):
//!
//! 1. [`fault`]: delay / abort. An abort is a local reply that the CORS filter never sees.
//! 2. [`cors`]: [`cors::on_request`] may answer a preflight locally (no route header ops on that reply);
//!    otherwise it remembers the allowed origin for [`cors::decorate_response`].
//! 3. router: a `redirect` answers with [`redirect::location`]; otherwise the request is rewritten:
//!    [`headers::request_mutations`] (in Envoy's order), then the authority
//!    ([`headers::authority_rewrite`]) and the path ([`rewrite::rewrite_path`], keeping the original in
//!    [`rewrite::ORIGINAL_PATH_HEADER`]).
//!    Then the router forwards with retries; [`mirror`] sends fire-and-forget copies.
//! 4. response (upstream or the router's own local replies: redirect, direct response, errors):
//!    [`headers::response_mutations`] first, then [`cors::decorate_response`], whose headers therefore win.

pub mod cors;
pub mod fault;
pub mod headers;
pub mod mirror;
pub mod redirect;
pub mod rewrite;

#[cfg(test)]
pub(crate) mod testing {
    //! Routes converted from YAML, so the filters are tested against what conversion really produces.

    use crate::policy::{self, HttpRoute};

    /// The `http` routes of the VirtualService `vs` in `yaml` (which may hold Services too). Panics with
    /// the conversion errors when the YAML does not load cleanly.
    pub fn http_routes(yaml: &str) -> Vec<HttpRoute> {
        let report = policy::build(&crate::source::split_documents("test.yaml", yaml));
        let errors: Vec<String> = report.errors.iter().map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:#?}");
        report
            .snapshot
            .virtual_services
            .into_iter()
            .next()
            .map(|vs| vs.http.clone())
            .unwrap_or_default()
    }

    /// A VirtualService for `reviews` with the given `http:` list (indented YAML).
    pub fn vs(http: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: reviews, namespace: default}}\n\
             spec:\n  clusterIP: 10.96.0.12\n  selector: {{app: reviews}}\n  ports:\n  - {{name: http, port: 9080}}\n\
             ---\n\
             apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
             metadata: {{name: vs, namespace: default}}\nspec:\n  hosts: [reviews]\n  http:\n{http}"
        )
    }
}
