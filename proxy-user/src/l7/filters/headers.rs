//! VirtualService header operations (`headers.request` / `headers.response`), applied as Envoy does.
//!
//! Facts this follows (Envoy `router/header_parser.cc` `evaluateHeaders`, `config_impl.cc`; Istio
//! `route.go` `TranslateHeadersOperations`, `processDestination`, `processWeightedDestination`):
//! - One [`HeaderMutation`] is one Envoy header parser: its removals run first; then every value is
//!   formatted (against the headers as they are after the removals); then all `set`s replace, in order;
//!   then all `add`s append, in order. A value that formats to the empty string is skipped (neither set
//!   nor added; Istio never sets `keep_empty_value`).
//! - A single destination: Istio concatenates route-level and destination-level ops into the route's one
//!   parser, route first, so the destination's `set` wins. Weighted destinations: the destination's ops
//!   sit on Envoy's weighted cluster, which runs before the route's, so the route's `set` wins.
//! - `:authority`/`host` in `request.set/add` are not header ops but an authority rewrite
//!   ([`authority_rewrite`]); the route level wins over the destination level, `set` over `add`.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::policy::header_template::{self, Operator, Part, TimePart};
use crate::policy::{HeaderOps, Headers, Rewrite};

/// What the `%OPERATOR%`s of a header value read, for one request.
#[derive(Debug, Clone, Copy)]
pub struct HeaderVars<'a> {
    /// The client's socket address (`%DOWNSTREAM_REMOTE_ADDRESS%`).
    pub downstream_remote: Option<SocketAddr>,
    /// The address the client dialled, i.e. the original destination (`%DOWNSTREAM_LOCAL_ADDRESS%`).
    pub downstream_local: Option<SocketAddr>,
    /// The endpoint; `None` on the request side, where Envoy has not picked it yet.
    pub upstream_remote: Option<SocketAddr>,
    /// The node's host name (`%HOSTNAME%`).
    pub hostname: &'a str,
    /// `HTTP/1.1` or `HTTP/2` (`%PROTOCOL%`).
    pub protocol: &'a str,
    /// The downstream request's headers, for `%REQ(..)%` on the response side. `None` on the request side,
    /// where `%REQ(..)%` reads the headers being mutated, as Envoy does.
    pub request_headers: Option<&'a HeaderMap>,
    /// The request's pseudo-headers, for `%REQ(:authority)%` and friends (as received, before rewrites).
    pub pseudo: Option<RequestPseudo<'a>>,
    /// When the request started (`%START_TIME%`).
    pub start_time: SystemTime,
}

/// The request line, which `http::HeaderMap` does not hold.
#[derive(Debug, Clone, Copy)]
pub struct RequestPseudo<'a> {
    /// `:method`.
    pub method: &'a str,
    /// `:scheme`.
    pub scheme: &'a str,
    /// `:authority` (HTTP/1 `Host`).
    pub authority: &'a str,
    /// `:path` (with the query).
    pub path: &'a str,
}

/// One header operation's value: fixed, or formatted per request.
#[derive(Debug, Clone)]
enum Value {
    Fixed(HeaderValue),
    Template(Vec<Part>),
}

#[derive(Debug, Clone)]
struct Op {
    name: HeaderName,
    value: Value,
}

/// The header operations of one Envoy header parser, compiled once when routing tables are built.
#[derive(Debug, Clone, Default)]
pub struct HeaderMutation {
    remove: Vec<HeaderName>,
    set: Vec<Op>,
    add: Vec<Op>,
}

impl HeaderMutation {
    /// Compiles one level of operations (`headers.request` or `headers.response` of a route or a
    /// destination).
    pub fn compile(ops: &HeaderOps) -> HeaderMutation {
        Self::compile_merged(&[ops])
    }

    /// Compiles several levels into one parser, in order: Istio's single-destination case, where the
    /// route's and the destination's ops share the route's parser.
    pub fn compile_merged(levels: &[&HeaderOps]) -> HeaderMutation {
        let mut out = HeaderMutation::default();
        for ops in levels {
            for name in &ops.remove {
                if let Some(n) = header_name(name) {
                    out.remove.push(n);
                }
            }
            out.set.extend(ops.set.iter().filter_map(|(n, v)| op(n, v)));
            out.add.extend(ops.add.iter().filter_map(|(n, v)| op(n, v)));
        }
        out
    }

    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Applies the operations to `headers`: removals, then (values formatted before any change) every
    /// `set`, then every `add`.
    pub fn apply(&self, headers: &mut HeaderMap, vars: &HeaderVars<'_>) {
        for name in &self.remove {
            headers.remove(name);
        }
        if self.set.is_empty() && self.add.is_empty() {
            return;
        }
        let sets: Vec<(&HeaderName, HeaderValue)> = self
            .set
            .iter()
            .filter_map(|op| Some((&op.name, op.value.render(headers, vars)?)))
            .collect();
        let adds: Vec<(&HeaderName, HeaderValue)> = self
            .add
            .iter()
            .filter_map(|op| Some((&op.name, op.value.render(headers, vars)?)))
            .collect();
        for (name, value) in sets {
            headers.insert(name.clone(), value);
        }
        for (name, value) in adds {
            headers.append(name.clone(), value);
        }
    }
}

/// `host` and `:authority` are the authority rewrite, never a header op.
fn is_authority(name: &str) -> bool {
    name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case(":authority")
}

fn header_name(name: &str) -> Option<HeaderName> {
    if is_authority(name) {
        return None;
    }
    match HeaderName::from_bytes(name.as_bytes()) {
        Ok(n) => Some(n),
        Err(_) => {
            tracing::warn!(
                header = name,
                "skipping a header operation with an invalid name"
            );
            None
        }
    }
}

fn op(name: &str, value: &str) -> Option<Op> {
    let name = header_name(name)?;
    let parts = match header_template::parse(value) {
        Ok(parts) => parts,
        Err(e) => {
            tracing::warn!(header = %name, value, error = %e, "skipping a header operation with an invalid value");
            return None;
        }
    };
    let value = match parts.as_slice() {
        // Envoy drops an op whose value is empty; a fixed empty value never applies.
        [] => return None,
        [Part::Literal(text)] => match HeaderValue::from_str(text) {
            Ok(v) => Value::Fixed(v),
            Err(_) => {
                tracing::warn!(header = %name, value, "skipping a header operation with an invalid value");
                return None;
            }
        },
        _ => Value::Template(parts),
    };
    Some(Op { name, value })
}

impl Value {
    /// The value for this request; `None` when it formats to nothing (Envoy then skips the op).
    fn render(&self, headers: &HeaderMap, vars: &HeaderVars<'_>) -> Option<HeaderValue> {
        let parts = match self {
            Value::Fixed(v) => return Some(v.clone()),
            Value::Template(parts) => parts,
        };
        let request = vars.request_headers.unwrap_or(headers);
        let mut out: Vec<u8> = Vec::new();
        for part in parts {
            match part {
                Part::Literal(text) => out.extend_from_slice(text.as_bytes()),
                Part::Op(op) => evaluate(op, request, vars, &mut out),
            }
        }
        if out.is_empty() {
            return None;
        }
        HeaderValue::from_bytes(&out)
            .map_err(|_| tracing::debug!("a formatted header value is not a valid header value"))
            .ok()
    }
}

fn evaluate(op: &Operator, request: &HeaderMap, vars: &HeaderVars<'_>, out: &mut Vec<u8>) {
    let mut text = |s: &str| out.extend_from_slice(s.as_bytes());
    match op {
        Operator::DownstreamRemoteAddress => address(vars.downstream_remote, &mut text),
        Operator::DownstreamRemoteAddressWithoutPort => ip(vars.downstream_remote, &mut text),
        Operator::DownstreamRemotePort => port(vars.downstream_remote, &mut text),
        Operator::DownstreamLocalAddress => address(vars.downstream_local, &mut text),
        Operator::DownstreamLocalAddressWithoutPort => ip(vars.downstream_local, &mut text),
        Operator::DownstreamLocalPort => port(vars.downstream_local, &mut text),
        Operator::UpstreamRemoteAddress => address(vars.upstream_remote, &mut text),
        Operator::UpstreamRemoteAddressWithoutPort => ip(vars.upstream_remote, &mut text),
        Operator::UpstreamRemotePort => port(vars.upstream_remote, &mut text),
        Operator::Hostname => text(vars.hostname),
        Operator::Protocol => text(vars.protocol),
        Operator::StartTime(format) => text(&format_time(vars.start_time, format)),
        Operator::Req { main, alt, max_len } => {
            let value = request_header(main, request, vars).or_else(|| {
                alt.as_deref()
                    .and_then(|a| request_header(a, request, vars))
            });
            if let Some(v) = value {
                let end = max_len.map_or(v.len(), |m| m.min(v.len()));
                out.extend_from_slice(&v[..end]);
            }
        }
        Operator::DownstreamTls => {}
        Operator::NotApplied(raw) => text(raw),
    }
}

/// The first value of request header `name` (Envoy's `%REQ(..)%` reads only the first).
fn request_header<'h>(
    name: &str,
    request: &'h HeaderMap,
    vars: &HeaderVars<'h>,
) -> Option<&'h [u8]> {
    let pseudo = |v: &'h str| (!v.is_empty()).then_some(v.as_bytes());
    match name {
        ":authority" => vars.pseudo.and_then(|p| pseudo(p.authority)),
        ":path" => vars.pseudo.and_then(|p| pseudo(p.path)),
        ":method" => vars.pseudo.and_then(|p| pseudo(p.method)),
        ":scheme" => vars.pseudo.and_then(|p| pseudo(p.scheme)),
        _ => request.get(name).map(HeaderValue::as_bytes),
    }
}

fn address(a: Option<SocketAddr>, text: &mut impl FnMut(&str)) {
    if let Some(a) = a {
        text(&a.to_string());
    }
}

fn ip(a: Option<SocketAddr>, text: &mut impl FnMut(&str)) {
    if let Some(a) = a {
        text(&a.ip().to_string());
    }
}

fn port(a: Option<SocketAddr>, text: &mut impl FnMut(&str)) {
    if let Some(a) = a {
        text(&a.port().to_string());
    }
}

/// Formats `t` in UTC.
fn format_time(t: SystemTime, format: &[TimePart]) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let of_day = secs % 86_400;
    let mut out = String::new();
    for part in format {
        match part {
            TimePart::Literal(s) => out.push_str(s),
            TimePart::Year => out.push_str(&format!("{year:04}")),
            TimePart::Month => out.push_str(&format!("{month:02}")),
            TimePart::Day => out.push_str(&format!("{day:02}")),
            TimePart::Hour => out.push_str(&format!("{:02}", of_day / 3600)),
            TimePart::Minute => out.push_str(&format!("{:02}", of_day % 3600 / 60)),
            TimePart::Second => out.push_str(&format!("{:02}", of_day % 60)),
            TimePart::EpochSeconds => out.push_str(&secs.to_string()),
            TimePart::Fraction(digits) => {
                let nanos = format!("{:09}", since.subsec_nanos());
                out.push_str(&nanos[..usize::from(*digits).min(9)]);
            }
            TimePart::Offset => out.push_str("+0000"),
            TimePart::Zone => out.push_str("UTC"),
        }
    }
    out
}

/// Days since 1970-01-01 -> (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01 so leap days end each 400-year era.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// The request-side mutations of a route, in the order Envoy applies them (see the module docs).
pub fn request_mutations(
    route: &Headers,
    destination: &Headers,
    weighted: bool,
) -> Vec<HeaderMutation> {
    in_envoy_order(&route.request, &destination.request, weighted)
}

/// The response-side mutations of a route, in the order Envoy applies them (see the module docs). For a
/// `redirect` or `directResponse` rule pass an empty `destination`.
pub fn response_mutations(
    route: &Headers,
    destination: &Headers,
    weighted: bool,
) -> Vec<HeaderMutation> {
    in_envoy_order(&route.response, &destination.response, weighted)
}

fn in_envoy_order(
    route: &HeaderOps,
    destination: &HeaderOps,
    weighted: bool,
) -> Vec<HeaderMutation> {
    let levels = if weighted {
        vec![
            HeaderMutation::compile(destination),
            HeaderMutation::compile(route),
        ]
    } else {
        vec![HeaderMutation::compile_merged(&[route, destination])]
    };
    levels.into_iter().filter(|m| !m.is_empty()).collect()
}

/// The authority sent upstream instead of the client's, if any: the route's `rewrite.authority`
/// (conversion also puts the route's `:authority`/`host` header ops there), else the route's, else the
/// destination's `:authority`/`host` in `request.set` (then `add`). Envoy sends it as written.
pub fn authority_rewrite(
    route_rewrite: Option<&Rewrite>,
    route: &Headers,
    destination: &Headers,
) -> Option<String> {
    route_rewrite
        .and_then(|r| r.authority.clone())
        .or_else(|| authority_op(&route.request))
        .or_else(|| authority_op(&destination.request))
        .filter(|a| !a.is_empty())
}

fn authority_op(ops: &HeaderOps) -> Option<String> {
    let find = |list: &[(String, String)]| {
        list.iter()
            .find(|(name, _)| is_authority(name))
            .map(|(_, value)| value.clone())
    };
    find(&ops.set).or_else(|| find(&ops.add))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::l7::filters::testing::{http_routes, vs};
    use crate::policy::HttpAction;

    fn ops(set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]) -> HeaderOps {
        let pairs = |l: &[(&str, &str)]| {
            l.iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        HeaderOps {
            set: pairs(set),
            add: pairs(add),
            remove: remove.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn request(ops: HeaderOps) -> Headers {
        Headers {
            request: ops,
            response: HeaderOps::default(),
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (n, v) in pairs {
            m.append(
                HeaderName::from_bytes(n.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        m
    }

    /// Every (name, value) in order, values of one name together.
    fn dump(m: &HeaderMap) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = m
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn pairs(l: &[(&str, &str)]) -> Vec<(String, String)> {
        l.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn vars() -> HeaderVars<'static> {
        HeaderVars {
            downstream_remote: Some("10.244.1.5:43210".parse().expect("addr")),
            downstream_local: Some("10.96.0.12:9080".parse().expect("addr")),
            upstream_remote: None,
            hostname: "node-1",
            protocol: "HTTP/1.1",
            request_headers: None,
            pseudo: Some(RequestPseudo {
                method: "GET",
                scheme: "http",
                authority: "reviews:9080",
                path: "/a?x=1",
            }),
            // 2016-04-15T20:17:00.310Z, Envoy's documented example.
            start_time: UNIX_EPOCH + Duration::from_millis(1_460_751_420_310),
        }
    }

    fn apply_all(mutations: &[HeaderMutation], headers: &mut HeaderMap) {
        for m in mutations {
            m.apply(headers, &vars());
        }
    }

    #[test]
    fn set_add_remove_on_one_level() {
        struct Case {
            what: &'static str,
            ops: HeaderOps,
            before: &'static [(&'static str, &'static str)],
            after: &'static [(&'static str, &'static str)],
        }
        let cases = [
            Case {
                what: "set replaces every value",
                ops: ops(&[("x", "new")], &[], &[]),
                before: &[("x", "a"), ("x", "b"), ("y", "keep")],
                after: &[("x", "new"), ("y", "keep")],
            },
            Case {
                what: "add appends another value",
                ops: ops(&[], &[("x", "c")], &[]),
                before: &[("x", "a"), ("x", "b")],
                after: &[("x", "a"), ("x", "b"), ("x", "c")],
            },
            Case {
                what: "add creates a missing header",
                ops: ops(&[], &[("x", "c")], &[]),
                before: &[],
                after: &[("x", "c")],
            },
            Case {
                what: "remove drops every value",
                ops: ops(&[], &[], &["x"]),
                before: &[("x", "a"), ("x", "b")],
                after: &[],
            },
            Case {
                what: "remove runs before set of the same name",
                ops: ops(&[("x", "1")], &[], &["x"]),
                before: &[("x", "a")],
                after: &[("x", "1")],
            },
            Case {
                what: "remove runs before add of the same name",
                ops: ops(&[], &[("x", "1")], &["x"]),
                before: &[("x", "a")],
                after: &[("x", "1")],
            },
            Case {
                what: "every set runs before every add",
                ops: ops(&[("x", "s")], &[("x", "a")], &[]),
                before: &[("x", "old")],
                after: &[("x", "s"), ("x", "a")],
            },
            Case {
                what: "%% is a literal %",
                ops: ops(&[("x-pct", "100%%"), ("x-two", "%%%%")], &[], &[]),
                before: &[],
                after: &[("x-pct", "100%"), ("x-two", "%%")],
            },
            Case {
                what: "an empty value is neither set nor added",
                ops: ops(&[("x", "")], &[("y", "")], &[]),
                before: &[("x", "a")],
                after: &[("x", "a")],
            },
            Case {
                what: "host and :authority are never header ops",
                ops: ops(
                    &[("host", "other"), (":authority", "o")],
                    &[("host", "h")],
                    &[],
                ),
                before: &[("host", "reviews")],
                after: &[("host", "reviews")],
            },
        ];
        for c in cases {
            let m = HeaderMutation::compile(&c.ops);
            let mut headers = map(c.before);
            m.apply(&mut headers, &vars());
            assert_eq!(dump(&headers), pairs(c.after), "{}", c.what);
        }
    }

    #[test]
    fn formatters() {
        let cases: &[(&str, Option<&str>)] = &[
            ("%DOWNSTREAM_REMOTE_ADDRESS%", Some("10.244.1.5:43210")),
            (
                "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
                Some("10.244.1.5"),
            ),
            ("%DOWNSTREAM_REMOTE_PORT%", Some("43210")),
            ("%DOWNSTREAM_LOCAL_ADDRESS%", Some("10.96.0.12:9080")),
            ("%DOWNSTREAM_LOCAL_PORT%", Some("9080")),
            ("%HOSTNAME%", Some("node-1")),
            ("node=%HOSTNAME%, %PROTOCOL%", Some("node=node-1, HTTP/1.1")),
            ("%START_TIME%", Some("2016-04-15T20:17:00.310Z")),
            ("%START_TIME(%s.%3f)%", Some("1460751420.310")),
            ("%START_TIME(%F %T %z)%", Some("2016-04-15 20:17:00 +0000")),
            ("%REQ(x-user)%", Some("jason")),
            ("%REQ(X-USER)%", Some("jason")),
            // Only the first value of a repeated header, as Envoy.
            ("%REQ(x-multi)%", Some("one")),
            ("%REQ(x-absent?x-user)%", Some("jason")),
            ("%REQ(x-user):3%", Some("jas")),
            ("%REQ(:authority)%", Some("reviews:9080")),
            ("%REQ(:path)%", Some("/a?x=1")),
            ("[%REQ(x-absent)%]", Some("[]")),
            // Empty results skip the op entirely.
            ("%REQ(x-absent)%", None),
            ("%UPSTREAM_REMOTE_ADDRESS%", None),
            ("%DOWNSTREAM_PEER_URI_SAN%", None),
            // Known to Envoy, not evaluated by Keel: sent as written (conversion warns).
            ("%UPSTREAM_CLUSTER%", Some("%UPSTREAM_CLUSTER%")),
        ];
        for (template, want) in cases {
            let m = HeaderMutation::compile(&ops(&[("x-out", template)], &[], &[]));
            let mut headers = map(&[("x-user", "jason"), ("x-multi", "one"), ("x-multi", "two")]);
            m.apply(&mut headers, &vars());
            let got = headers
                .get("x-out")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            assert_eq!(got.as_deref(), *want, "{template}");
        }
    }

    #[test]
    fn formatters_read_headers_after_removal_and_before_sets() {
        // Envoy formats every value of a parser after its removals and before any of its sets.
        let m = HeaderMutation::compile(&ops(
            &[
                ("x-a", "new"),
                ("x-copy-a", "%REQ(x-a)%"),
                ("x-copy-gone", "%REQ(x-gone)%"),
            ],
            &[],
            &["x-gone"],
        ));
        let mut headers = map(&[("x-a", "old"), ("x-gone", "v")]);
        m.apply(&mut headers, &vars());
        assert_eq!(
            dump(&headers),
            pairs(&[("x-a", "new"), ("x-copy-a", "old")])
        );
    }

    #[test]
    fn response_side_reads_the_request_and_the_upstream() {
        let request = map(&[("x-user", "jason")]);
        let v = HeaderVars {
            request_headers: Some(&request),
            upstream_remote: Some("[fd00::7]:8080".parse().expect("addr")),
            ..vars()
        };
        let m = HeaderMutation::compile(&ops(
            &[
                ("x-user", "%REQ(x-user)%"),
                ("x-up", "%UPSTREAM_REMOTE_ADDRESS%"),
                ("x-up-ip", "%UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
            ],
            &[],
            &[],
        ));
        let mut response = map(&[("x-user", "from-upstream")]);
        m.apply(&mut response, &v);
        assert_eq!(
            dump(&response),
            pairs(&[
                ("x-up", "[fd00::7]:8080"),
                ("x-up-ip", "fd00::7"),
                ("x-user", "jason")
            ])
        );
    }

    #[test]
    fn single_destination_ops_share_the_route_parser() {
        // Route first, destination after: the destination's set wins; all removals run before any add.
        let route = request(ops(&[("x", "route")], &[("y", "from-route")], &[]));
        let dest = request(ops(&[("x", "dest")], &[], &["y"]));
        let m = request_mutations(&route, &dest, false);
        assert_eq!(m.len(), 1);
        let mut headers = map(&[("y", "client")]);
        apply_all(&m, &mut headers);
        assert_eq!(dump(&headers), pairs(&[("x", "dest"), ("y", "from-route")]));
    }

    #[test]
    fn weighted_destination_runs_before_the_route() {
        // Envoy applies the weighted cluster's parser, then the route's: the route's set wins, and a route
        // removal erases what the destination added.
        let route = request(ops(&[("x", "route")], &[], &["y"]));
        let dest = request(ops(&[("x", "dest")], &[("y", "from-dest")], &[]));
        let m = request_mutations(&route, &dest, true);
        assert_eq!(m.len(), 2);
        let mut headers = map(&[]);
        apply_all(&m, &mut headers);
        assert_eq!(dump(&headers), pairs(&[("x", "route")]));
    }

    #[test]
    fn response_mutations_use_the_response_ops() {
        let route = Headers {
            request: ops(&[("x-req", "1")], &[], &[]),
            response: ops(&[("cache-control", "no-store")], &[], &["server"]),
        };
        let m = response_mutations(&route, &Headers::default(), false);
        let mut headers = map(&[("server", "upstream"), ("cache-control", "max-age=60")]);
        apply_all(&m, &mut headers);
        assert_eq!(dump(&headers), pairs(&[("cache-control", "no-store")]));
        assert!(response_mutations(&Headers::default(), &Headers::default(), true).is_empty());
    }

    #[test]
    fn authority_precedence() {
        let rw = |a: &str| Rewrite {
            uri: None,
            uri_regex: None,
            authority: Some(a.to_string()),
        };
        let with = |set: &[(&str, &str)], add: &[(&str, &str)]| request(ops(set, add, &[]));
        let none = Headers::default();
        type Case = (
            &'static str,
            Option<Rewrite>,
            Headers,
            Headers,
            Option<&'static str>,
        );
        let cases: Vec<Case> = vec![
            ("nothing", None, none.clone(), none.clone(), None),
            (
                "rewrite.authority",
                Some(rw("r")),
                none.clone(),
                none.clone(),
                Some("r"),
            ),
            (
                "route rewrite wins over destination host",
                Some(rw("r")),
                none.clone(),
                with(&[("host", "d")], &[]),
                Some("r"),
            ),
            (
                "route :authority set",
                None,
                with(&[(":authority", "a")], &[]),
                with(&[("host", "d")], &[]),
                Some("a"),
            ),
            (
                "set wins over add",
                None,
                with(&[("Host", "s")], &[("host", "a")]),
                none.clone(),
                Some("s"),
            ),
            (
                "destination add",
                None,
                none.clone(),
                with(&[], &[("host", "d")]),
                Some("d"),
            ),
            (
                "sent as written",
                None,
                none.clone(),
                with(&[("host", "a%%b")], &[]),
                Some("a%%b"),
            ),
        ];
        for (what, rewrite, route, dest, want) in cases {
            assert_eq!(
                authority_rewrite(rewrite.as_ref(), &route, &dest).as_deref(),
                want,
                "{what}"
            );
        }
    }

    #[test]
    fn converted_routes() {
        // What conversion produces: route-level `host` becomes rewrite.authority; destination-level `host`
        // stays in the destination's request.set; values stay templates.
        let routes = http_routes(&vs(r#"  - route:
    - destination: {host: reviews}
      headers:
        request: {set: {host: dest.internal, x-who: "%REQ(x-user)%"}}
    headers:
      request:
        set: {x-pct: "100%%", ":authority": route.internal}
        add: {x-node: "%HOSTNAME%"}
        remove: [x-internal]
"#));
        let route = &routes[0];
        let HttpAction::Route(dests) = &route.action else {
            panic!("a route action");
        };
        let dest = &dests[0];
        assert_eq!(
            authority_rewrite(route.rewrite.as_ref(), &route.headers, &dest.headers).as_deref(),
            Some("route.internal")
        );
        assert_eq!(
            authority_rewrite(None, &Headers::default(), &dest.headers).as_deref(),
            Some("dest.internal")
        );
        let m = request_mutations(&route.headers, &dest.headers, dests.len() > 1);
        let mut headers = map(&[
            ("x-internal", "1"),
            ("x-user", "jason"),
            ("host", "reviews"),
        ]);
        apply_all(&m, &mut headers);
        assert_eq!(
            dump(&headers),
            pairs(&[
                ("host", "reviews"),
                ("x-node", "node-1"),
                ("x-pct", "100%"),
                ("x-user", "jason"),
                ("x-who", "jason"),
            ])
        );
    }

    #[test]
    fn direct_response_content_type() {
        // §5 item 15: the route's response ops apply to its direct response; `set` replaces the
        // `content-type: text/plain` of the local reply.
        let routes = http_routes(&vs(
            r#"  - directResponse: {status: 503, body: {string: "unknown error"}}
    headers:
      response:
        set: {content-type: application/json}
"#,
        ));
        let m = response_mutations(&routes[0].headers, &Headers::default(), false);
        let mut headers = map(&[("content-type", "text/plain"), ("content-length", "13")]);
        apply_all(&m, &mut headers);
        assert_eq!(
            dump(&headers),
            pairs(&[
                ("content-length", "13"),
                ("content-type", "application/json")
            ])
        );
    }

    #[test]
    fn civil_dates() {
        let cases = [
            (0, (1970, 1, 1)),
            (59, (1970, 3, 1)),
            (11_016, (2000, 2, 29)),
            (16_906, (2016, 4, 15)),
            (20_454, (2026, 1, 1)),
        ];
        for (days, want) in cases {
            assert_eq!(civil_from_days(days), want, "{days}");
        }
    }
}
