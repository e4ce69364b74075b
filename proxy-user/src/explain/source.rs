//! Where an explanation's state comes from: config files (built as `keel run` builds them, without a
//! kernel) or a running keel's admin API (`GET /explain`), and the query string both sides share.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};

use super::{explain, Explanation, Health, Query};
use crate::routing::RouteTable;
use crate::state::NodeState;
use crate::upstream::ClusterRegistry;

/// Explain from config files and directories (as `keel validate` reads them). Rejected resources are
/// left out, as `keel run` leaves them out; the count is returned so the caller can say so.
pub fn from_config(
    paths: &[PathBuf],
    node: Option<&str>,
    query: &Query,
) -> anyhow::Result<(Explanation, usize)> {
    let report = crate::policy::load_paths(paths).context("reading config")?;
    let routes = RouteTable::build_for_node(&report.snapshot, &ClusterRegistry::default(), node);
    let explanation = explain(&report.snapshot, &routes, query, Health::Unknown)?;
    Ok((explanation, report.errors.len()))
}

/// Explain against a running keel: `GET /explain` on its admin address.
pub fn from_admin(admin: SocketAddr, query: &Query) -> anyhow::Result<Explanation> {
    let path = format!("/explain?{}", to_query_string(query));
    let (status, body) =
        http_get(admin, &path).with_context(|| format!("asking keel's admin API at {admin}"))?;
    if status != 200 {
        bail!("{}", body.trim_end());
    }
    serde_json::from_str(&body).context("reading the admin API's explanation")
}

/// The admin endpoint: `/explain?from=ns/pod&url=...&header=name:value&method=M&sni=S&format=text`.
/// Returns status, content type and body.
pub fn admin_response(node: &NodeState, query: Option<&str>) -> (u16, &'static str, String) {
    let (q, text) = match from_query_string(query.unwrap_or_default()) {
        Ok(v) => v,
        Err(e) => return (400, "text/plain", format!("{e}\n")),
    };
    match explain(
        &node.snapshot,
        &node.routes,
        &q,
        Health::Live(&node.pod_by_cgroup),
    ) {
        Ok(e) if text => (200, "text/plain", super::render(&e)),
        Ok(e) => match serde_json::to_string_pretty(&e) {
            Ok(body) => (200, "application/json", body),
            Err(e) => (500, "text/plain", format!("{e}\n")),
        },
        Err(e) => (404, "text/plain", format!("{e}\n")),
    }
}

/// `Query` as URL query parameters (values percent-encoded).
pub fn to_query_string(q: &Query) -> String {
    let mut parts = vec![
        format!("from={}", encode(&q.from)),
        format!("url={}", encode(&q.url)),
    ];
    if let Some(m) = &q.method {
        parts.push(format!("method={}", encode(m)));
    }
    for (k, v) in &q.headers {
        parts.push(format!("header={}", encode(&format!("{k}:{v}"))));
    }
    if let Some(s) = &q.sni {
        parts.push(format!("sni={}", encode(s)));
    }
    parts.join("&")
}

/// Parses [`to_query_string`]'s output (and `format=text`).
pub fn from_query_string(s: &str) -> Result<(Query, bool), String> {
    let mut q = Query::default();
    let mut text = false;
    for pair in s.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = crate::admin::percent_decode(v);
        match k {
            "from" => q.from = v,
            "url" => q.url = v,
            "method" => q.method = Some(v),
            "sni" => q.sni = Some(v),
            "header" => q
                .headers
                .push(super::parse_header(&v).map_err(|e| e.to_string())?),
            "format" => text = v == "text",
            other => return Err(format!("unknown parameter {other:?}")),
        }
    }
    if q.from.is_empty() || q.url.is_empty() {
        return Err("/explain needs from=<namespace/pod> and url=<url>".to_string());
    }
    Ok((q, text))
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One HTTP/1.1 GET on the (loopback) admin address: status and body.
fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP status line")?;
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_round_trip() -> Result<(), String> {
        let q = Query {
            from: "default/sleep".into(),
            url: "http://reviews:9080/x?a=1&b=2".into(),
            method: Some("POST".into()),
            headers: vec![("end-user".into(), "jason smith".into())],
            sni: None,
        };
        let (back, text) = from_query_string(&to_query_string(&q))?;
        assert!(!text);
        assert_eq!(back.from, q.from);
        assert_eq!(back.url, q.url);
        assert_eq!(back.method, q.method);
        assert_eq!(back.headers, q.headers);
        assert!(from_query_string("url=x").is_err());
        Ok(())
    }
}
