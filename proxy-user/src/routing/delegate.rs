//! VirtualService delegation (§1.9), resolved once per snapshot: a root rule with
//! `delegate {name, namespace}` is replaced, in its position, by the delegate's rules with each match
//! merged with the root's (Istio's `mergeHTTPRoutes`, `mergeHTTPMatchRequests`, `hasConflict`).
//! One level only; a delegate (no `hosts`) never applies to a host by itself.

use std::sync::Arc;

use crate::policy::{HttpAction, HttpMatch, HttpRoute, StringMatch, VirtualService};

use super::scope::exported_to;

/// The `http` rules of `vs` with delegation expanded. Rules of a missing or invisible delegate, and
/// delegate rules that conflict with every root match block, are dropped (with a warning), as istiod
/// drops them.
pub fn expand_http(vs: &VirtualService, all: &[Arc<VirtualService>]) -> Vec<Arc<HttpRoute>> {
    let expanded = expand_http_traced(vs, all);
    for why in &expanded.dropped {
        tracing::warn!(root = %vs.meta.display_name(), "{why}");
    }
    expanded.rules.into_iter().map(|r| r.route).collect()
}

/// One rule of a delegation-expanded VirtualService and where it came from.
#[derive(Debug, Clone)]
pub struct ExpandedRule {
    /// The rule (a delegate's rule merged with the root's).
    pub route: Arc<HttpRoute>,
    /// Index of the root's `http` rule it stands for.
    pub root_index: usize,
    /// `namespace/name` and rule index of the delegate it came from, if any.
    pub delegate: Option<(String, usize)>,
}

/// [`expand_http`]'s rules with their origin, and why rules were dropped (for `keel explain`).
#[derive(Debug, Clone, Default)]
pub struct Expanded {
    pub rules: Vec<ExpandedRule>,
    pub dropped: Vec<String>,
}

/// Delegation expanded, with each rule's origin; see [`expand_http`].
pub fn expand_http_traced(vs: &VirtualService, all: &[Arc<VirtualService>]) -> Expanded {
    let mut out = Expanded {
        rules: Vec::with_capacity(vs.http.len()),
        dropped: Vec::new(),
    };
    for (root_index, root) in vs.http.iter().enumerate() {
        let HttpAction::Delegate { name, namespace } = &root.action else {
            out.rules.push(ExpandedRule {
                route: Arc::new(root.clone()),
                root_index,
                delegate: None,
            });
            continue;
        };
        let delegate = all
            .iter()
            .find(|d| d.hosts.is_empty() && d.meta.name == *name && d.meta.namespace == *namespace);
        let Some(delegate) = delegate else {
            out.dropped.push(format!(
                "http[{root_index}]: delegate VirtualService {namespace}/{name} not found; rule dropped"
            ));
            continue;
        };
        // The delegate must be exported to the root's namespace.
        if !exported_to(
            &delegate.export_to,
            &delegate.meta.namespace,
            &vs.meta.namespace,
        ) {
            out.dropped.push(format!(
                "http[{root_index}]: delegate {namespace}/{name} is not exported to namespace {} (exportTo {}); rule dropped",
                vs.meta.namespace,
                delegate.export_to.join(",")
            ));
            continue;
        }
        for (leaf_index, leaf) in delegate.http.iter().enumerate() {
            if matches!(leaf.action, HttpAction::Delegate { .. }) {
                // Validation rejects this; never recurse.
                continue;
            }
            match merge_route(root, leaf) {
                Some(merged) => out.rules.push(ExpandedRule {
                    route: Arc::new(merged),
                    root_index,
                    delegate: Some((format!("{namespace}/{name}"), leaf_index)),
                }),
                None => out.dropped.push(format!(
                    "http[{root_index}]: delegate {namespace}/{name} http[{leaf_index}] conflicts with the root's match; rule dropped"
                )),
            }
        }
    }
    out
}

/// Istio's `mergeHTTPRoute`: the leaf with merged matches; route-level fields the leaf leaves unset
/// are inherited from the root. `None` = conflicting matches.
pub fn merge_route(root: &HttpRoute, leaf: &HttpRoute) -> Option<HttpRoute> {
    let mut out = leaf.clone();
    out.matches = merge_matches(&root.matches, &leaf.matches)?;
    out.name = join_names(root.name.as_deref(), leaf.name.as_deref());
    if out.rewrite.is_none() {
        out.rewrite = root.rewrite.clone();
    }
    if out.timeout.is_none() {
        out.timeout = root.timeout;
    }
    if out.retries.is_none() {
        out.retries = root.retries.clone();
    }
    if out.fault.is_none() {
        out.fault = root.fault.clone();
    }
    if out.mirrors.is_empty() {
        out.mirrors = root.mirrors.clone();
    }
    if out.cors_policy.is_none() {
        out.cors_policy = root.cors_policy.clone();
    }
    let ops_empty =
        |h: &crate::policy::HeaderOps| h.set.is_empty() && h.add.is_empty() && h.remove.is_empty();
    if ops_empty(&out.headers.request) && ops_empty(&out.headers.response) {
        out.headers = root.headers.clone();
    }
    Some(out)
}

/// `mergeHTTPMatchRequests`: every leaf block must fit some root block; each compatible pair becomes
/// one merged block. An empty side takes the other side's blocks as they are.
pub fn merge_matches(root: &[HttpMatch], leaf: &[HttpMatch]) -> Option<Vec<HttpMatch>> {
    if root.is_empty() {
        return Some(leaf.to_vec());
    }
    if leaf.is_empty() {
        return Some(root.to_vec());
    }
    let mut out = Vec::new();
    for l in leaf {
        let before = out.len();
        for r in root {
            if !has_conflict(r, l) {
                out.push(merge_match(r, l));
            }
        }
        if out.len() == before {
            return None;
        }
    }
    Some(out)
}

/// `mergeHTTPMatchRequest`: leaf fields override root fields; maps are unioned (leaf wins per key).
fn merge_match(root: &HttpMatch, leaf: &HttpMatch) -> HttpMatch {
    let mut out = leaf.clone();
    out.name = join_names(root.name.as_deref(), leaf.name.as_deref());
    if out.uri.is_none() {
        out.uri = root.uri.clone();
    }
    if out.scheme.is_none() {
        out.scheme = root.scheme.clone();
    }
    if out.method.is_none() {
        out.method = root.method.clone();
    }
    if out.authority.is_none() {
        out.authority = root.authority.clone();
    }
    out.headers = union(&root.headers, &leaf.headers);
    out.without_headers = union(&root.without_headers, &leaf.without_headers);
    out.query_params = union(&root.query_params, &leaf.query_params);
    if out.port.is_none() {
        out.port = root.port;
    }
    out.source_labels = match (&root.source_labels, &leaf.source_labels) {
        (None, None) => None,
        (r, l) => {
            let mut merged = r.clone().unwrap_or_default();
            merged.extend(l.clone().unwrap_or_default());
            Some(merged)
        }
    };
    if out.source_namespace.is_none() {
        out.source_namespace = root.source_namespace.clone();
    }
    if out.gateways.is_empty() {
        out.gateways = root.gateways.clone();
    }
    out
}

/// Root entries first, each replaced by the leaf's entry of the same key; then the leaf's new keys.
fn union(
    root: &[(String, StringMatch)],
    leaf: &[(String, StringMatch)],
) -> Vec<(String, StringMatch)> {
    let mut out: Vec<(String, StringMatch)> = root
        .iter()
        .filter(|(k, _)| !leaf.iter().any(|(lk, _)| lk == k))
        .cloned()
        .collect();
    out.extend(leaf.iter().cloned());
    out
}

fn join_names(root: Option<&str>, leaf: Option<&str>) -> Option<String> {
    match (root, leaf) {
        (Some(r), Some(l)) if !r.is_empty() && !l.is_empty() => Some(format!("{r}-{l}")),
        (r, None) | (r, Some("")) => r.map(str::to_string),
        (_, l) => l.map(str::to_string),
    }
}

/// `hasConflict`: the leaf block cannot be a narrowing of the root block.
pub fn has_conflict(root: &HttpMatch, leaf: &HttpMatch) -> bool {
    let singles = [
        (&root.uri, &leaf.uri),
        (&root.scheme, &leaf.scheme),
        (&root.method, &leaf.method),
        (&root.authority, &leaf.authority),
    ];
    if singles
        .iter()
        .any(|(r, l)| string_match_conflict(r.as_ref(), l.as_ref()))
    {
        return true;
    }
    let keyed = [
        (&root.headers, &leaf.headers),
        (&root.without_headers, &leaf.without_headers),
        (&root.query_params, &leaf.query_params),
    ];
    for (r, l) in keyed {
        for (key, leaf_match) in l {
            let root_match = r.iter().find(|(k, _)| k == key).map(|(_, m)| m);
            if string_match_conflict(root_match, Some(leaf_match)) {
                return true;
            }
        }
    }
    if root.ignore_uri_case != leaf.ignore_uri_case {
        return true;
    }
    if matches!((root.port, leaf.port), (Some(r), Some(l)) if r != l) {
        return true;
    }
    if let Some(ns) = &root.source_namespace {
        if leaf.source_namespace.as_ref() != Some(ns) {
            return true;
        }
    }
    if let (Some(r), Some(l)) = (&root.source_labels, &leaf.source_labels) {
        if l.iter().any(|(k, v)| r.get(k).is_some_and(|rv| rv != v)) {
            return true;
        }
    }
    if !root.gateways.is_empty() && !leaf.gateways.is_empty() {
        return leaf.gateways.iter().any(|g| !root.gateways.contains(g));
    }
    false
}

/// `stringMatchConflict`: regex on either side conflicts; a root exact needs the same exact; a root
/// prefix needs a leaf prefix or exact that starts with it.
fn string_match_conflict(root: Option<&StringMatch>, leaf: Option<&StringMatch>) -> bool {
    let (Some(root), Some(leaf)) = (root, leaf) else {
        return false;
    };
    match (root, leaf) {
        (StringMatch::Regex(_), _) | (_, StringMatch::Regex(_)) => true,
        (StringMatch::Exact(r), StringMatch::Exact(l)) => r != l,
        (StringMatch::Prefix(r), StringMatch::Prefix(l) | StringMatch::Exact(l)) => {
            !l.starts_with(r.as_str())
        }
        // Istio falls through to "conflict" for every other pairing (e.g. a presence-only root).
        _ => true,
    }
}
