//! Envoy header-value templates: the values of VirtualService `headers.{request,response}.{set,add}`.
//!
//! Istio hands these values to Envoy unchanged, and Envoy reads each one as a substitution format: `%%` is a
//! literal `%`, and `%NAME%`, `%NAME(ARGS)%` or `%NAME(ARGS):LEN%` is a command operator evaluated per request
//! (`%HOSTNAME%`, `%REQ(x-user)%`, ...). Istio only checks that `%` signs pair up; Envoy rejects the whole route
//! table when an operator is unknown or malformed. So here a lone `%` or an unknown operator is a config
//! error, the operators Keel evaluates become [`Operator`]s, and the operators Envoy knows but Keel does not
//! evaluate are kept as written ([`Operator::NotApplied`]) so conversion can warn about them.
//!
//! Parsing is done twice off the hot path (validation, then when the filters compile their header
//! mutations); evaluation lives in `l7::filters::headers`.

use std::fmt;

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Text sent as is (`%%` already turned into `%`).
    Literal(String),
    /// A command operator.
    Op(Operator),
}

/// A command operator Keel understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operator {
    /// `%DOWNSTREAM_REMOTE_ADDRESS%` (also `DOWNSTREAM_DIRECT_REMOTE_ADDRESS`: Keel infers no address from
    /// `x-forwarded-for`, so both are the client socket's): `ip:port`, `[v6]:port`.
    DownstreamRemoteAddress,
    /// `%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%` (and the `DIRECT` twin): the client IP.
    DownstreamRemoteAddressWithoutPort,
    /// `%DOWNSTREAM_REMOTE_PORT%` (and the `DIRECT` twin).
    DownstreamRemotePort,
    /// `%DOWNSTREAM_LOCAL_ADDRESS%`: the address the client dialled (the original destination).
    DownstreamLocalAddress,
    /// `%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%`.
    DownstreamLocalAddressWithoutPort,
    /// `%DOWNSTREAM_LOCAL_PORT%`.
    DownstreamLocalPort,
    /// `%UPSTREAM_REMOTE_ADDRESS%`: the endpoint; empty on the request side (not chosen yet, as in Envoy).
    UpstreamRemoteAddress,
    /// `%UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%`.
    UpstreamRemoteAddressWithoutPort,
    /// `%UPSTREAM_REMOTE_PORT%`.
    UpstreamRemotePort,
    /// `%HOSTNAME%`: the node's host name.
    Hostname,
    /// `%PROTOCOL%`: the downstream protocol, `HTTP/1.1` or `HTTP/2`.
    Protocol,
    /// `%START_TIME%` / `%START_TIME(FORMAT)%`: when the request started, in UTC.
    StartTime(Vec<TimePart>),
    /// `%REQ(X?Y):Z%`: the first value of request header `X`, else of `Y`, cut to `Z` bytes.
    Req {
        /// Lower-case header name (`:authority`, `:path`, `:method`, `:scheme` allowed).
        main: String,
        /// Fallback header name.
        alt: Option<String>,
        /// Truncation in bytes.
        max_len: Option<usize>,
    },
    /// A downstream-TLS fact (`%DOWNSTREAM_PEER_URI_SAN%`, `%REQUESTED_SERVER_NAME%`, ...). The app's outbound
    /// connection to its sidecar (and to Keel) is plaintext, so Envoy evaluates these to empty.
    DownstreamTls,
    /// An operator Envoy knows but Keel does not evaluate; the text as written (with its `%`s) is sent.
    NotApplied(String),
}

/// One piece of a `START_TIME` format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimePart {
    /// Text.
    Literal(String),
    /// `%Y`: four-digit year.
    Year,
    /// `%m`: month `01`-`12`.
    Month,
    /// `%d`: day `01`-`31`.
    Day,
    /// `%H`: hour `00`-`23`.
    Hour,
    /// `%M`: minute.
    Minute,
    /// `%S`: second.
    Second,
    /// `%s`: seconds since the epoch.
    EpochSeconds,
    /// `%f` (9 digits) or `%1f`..`%9f`: fraction of the second.
    Fraction(u8),
    /// `%z`: `+0000` (times are UTC).
    Offset,
    /// `%Z`: `UTC`.
    Zone,
}

/// Why a template is not valid Envoy syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError {
    /// A `%` that neither doubles nor opens an operator.
    LonePercent,
    /// `%NAME...` with a malformed argument list, length or end.
    Malformed(String),
    /// An operator name Envoy does not have.
    Unknown(String),
    /// A known operator with arguments it cannot take.
    BadArguments {
        /// The operator as written.
        operator: String,
        /// What is wrong.
        reason: &'static str,
    },
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateError::LonePercent => f.write_str("a literal % must be written %%"),
            TemplateError::Malformed(op) => write!(
                f,
                "malformed Envoy operator {op} (write %% for a literal %)"
            ),
            TemplateError::Unknown(op) => write!(
                f,
                "unknown Envoy operator {op}: Envoy rejects the route (write %% for a literal %)"
            ),
            TemplateError::BadArguments { operator, reason } => {
                write!(f, "Envoy operator {operator}: {reason}")
            }
        }
    }
}

/// Downstream-TLS operators: empty for the plaintext connections Keel serves.
const DOWNSTREAM_TLS: &[&str] = &[
    "DOWNSTREAM_LOCAL_URI_SAN",
    "DOWNSTREAM_PEER_URI_SAN",
    "DOWNSTREAM_LOCAL_DNS_SAN",
    "DOWNSTREAM_PEER_DNS_SAN",
    "DOWNSTREAM_LOCAL_IP_SAN",
    "DOWNSTREAM_PEER_IP_SAN",
    "DOWNSTREAM_LOCAL_SUBJECT",
    "DOWNSTREAM_PEER_SUBJECT",
    "DOWNSTREAM_PEER_ISSUER",
    "DOWNSTREAM_TLS_SESSION_ID",
    "DOWNSTREAM_TLS_CIPHER",
    "DOWNSTREAM_TLS_VERSION",
    "DOWNSTREAM_PEER_FINGERPRINT_256",
    "DOWNSTREAM_PEER_FINGERPRINT_1",
    "DOWNSTREAM_PEER_SERIAL",
    "DOWNSTREAM_PEER_CERT",
    "DOWNSTREAM_PEER_CERT_V_START",
    "DOWNSTREAM_PEER_CERT_V_END",
    "REQUESTED_SERVER_NAME",
];

/// Envoy operators Keel does not evaluate (Envoy's access-log command operators, which its header
/// formatter shares, plus the legacy route-formatter names it still translates).
const NOT_APPLIED: &[&str] = &[
    "ACCESS_LOG_TYPE",
    "BYTES_RECEIVED",
    "BYTES_SENT",
    "CEL",
    "CLUSTER_METADATA",
    "CONNECTION_ID",
    "CONNECTION_TERMINATION_DETAILS",
    "DOWNSTREAM_HEADER_BYTES_RECEIVED",
    "DOWNSTREAM_HEADER_BYTES_SENT",
    "DOWNSTREAM_TRANSPORT_FAILURE_REASON",
    "DOWNSTREAM_WIRE_BYTES_RECEIVED",
    "DOWNSTREAM_WIRE_BYTES_SENT",
    "DURATION",
    "DYNAMIC_METADATA",
    "EMIT_TIME",
    "ENVIRONMENT",
    "FILTER_CHAIN_NAME",
    "FILTER_STATE",
    "GRPC_STATUS",
    "GRPC_STATUS_NUMBER",
    "LOCAL_REPLY_BODY",
    "METADATA",
    "PER_REQUEST_STATE",
    "REQUEST_DURATION",
    "REQUEST_HEADERS_BYTES",
    "REQUEST_TX_DURATION",
    "REQ_WITHOUT_QUERY",
    "RESP",
    "RESPONSE_CODE",
    "RESPONSE_CODE_DETAILS",
    "RESPONSE_DURATION",
    "RESPONSE_FLAGS",
    "RESPONSE_FLAGS_LONG",
    "RESPONSE_HEADERS_BYTES",
    "RESPONSE_TRAILERS_BYTES",
    "RESPONSE_TX_DURATION",
    "ROUTE_NAME",
    "STREAM_ID",
    "TRACE_ID",
    "TRAILER",
    "UNIQUE_ID",
    "UPSTREAM_CLUSTER",
    "UPSTREAM_CLUSTER_RAW",
    "UPSTREAM_CONNECTION_ID",
    "UPSTREAM_FILTER_STATE",
    "UPSTREAM_HEADER_BYTES_RECEIVED",
    "UPSTREAM_HEADER_BYTES_SENT",
    "UPSTREAM_HOST",
    "UPSTREAM_HOST_NAME",
    "UPSTREAM_LOCAL_ADDRESS",
    "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
    "UPSTREAM_LOCAL_PORT",
    "UPSTREAM_METADATA",
    "UPSTREAM_PEER_CERT",
    "UPSTREAM_PEER_CERT_V_END",
    "UPSTREAM_PEER_CERT_V_START",
    "UPSTREAM_PEER_ISSUER",
    "UPSTREAM_PEER_SUBJECT",
    "UPSTREAM_PROTOCOL",
    "UPSTREAM_REQUEST_ATTEMPT_COUNT",
    "UPSTREAM_TLS_CIPHER",
    "UPSTREAM_TLS_SESSION_ID",
    "UPSTREAM_TLS_VERSION",
    "UPSTREAM_TRANSPORT_FAILURE_REASON",
    "UPSTREAM_WIRE_BYTES_RECEIVED",
    "UPSTREAM_WIRE_BYTES_SENT",
    "VIRTUAL_CLUSTER_NAME",
];

/// Pseudo-headers `%REQ(..)%` may read.
const REQ_PSEUDO: &[&str] = &[":authority", ":path", ":method", ":scheme"];

/// Parses a header value. A template without operators is one `Literal` (or nothing, for `""`).
pub fn parse(value: &str) -> Result<Vec<Part>, TemplateError> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = value;
    while let Some(pos) = rest.find('%') {
        literal.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(r) = after.strip_prefix('%') {
            literal.push('%');
            rest = r;
            continue;
        }
        let (raw, consumed) = operator_text(after)?;
        if !literal.is_empty() {
            parts.push(Part::Literal(std::mem::take(&mut literal)));
        }
        parts.push(Part::Op(operator(raw)?));
        rest = &after[consumed..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(Part::Literal(literal));
    }
    Ok(parts)
}

/// The operators of `value` that Keel sends as written (for the conversion's warning).
pub fn not_applied(parts: &[Part]) -> Vec<&str> {
    parts
        .iter()
        .filter_map(|p| match p {
            Part::Op(Operator::NotApplied(raw)) => Some(raw.as_str()),
            _ => None,
        })
        .collect()
}

/// A parsed operator as written: `NAME`, optional `(ARGS)`, optional `:LEN`.
struct RawOperator<'a> {
    /// `%NAME(ARGS):LEN%`, for messages and literal passthrough.
    text: &'a str,
    name: &'a str,
    args: Option<&'a str>,
    max_len: Option<usize>,
}

/// Splits `NAME(ARGS):LEN%...` (the text after the opening `%`) into an operator and the bytes it used,
/// closing `%` included. Envoy's grammar: NAME is `[A-Z0-9_]+`, ARGS has no `)`, LEN is digits.
fn operator_text(after: &str) -> Result<(RawOperator<'_>, usize), TemplateError> {
    let name_len = after
        .bytes()
        .take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
        .count();
    if name_len == 0 {
        // `50%` (lone) or `%x y%` (text between two `%` that is no operator name).
        return Err(match after.find('%') {
            Some(end) => TemplateError::Malformed(format!("%{}%", &after[..end])),
            None => TemplateError::LonePercent,
        });
    }
    let name = &after[..name_len];
    let mut pos = name_len;
    let malformed = |upto: usize| {
        let end = after[upto..]
            .find('%')
            .map_or(after.len(), |e| upto + e + 1);
        TemplateError::Malformed(format!("%{}", &after[..end]))
    };
    let mut args = None;
    if after[pos..].starts_with('(') {
        let Some(close) = after[pos..].find(')') else {
            return Err(malformed(pos));
        };
        args = Some(&after[pos + 1..pos + close]);
        pos += close + 1;
    }
    let mut max_len = None;
    if let Some(len) = after[pos..].strip_prefix(':') {
        let digits = len.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(malformed(pos));
        }
        max_len = len[..digits].parse().ok();
        if max_len.is_none() {
            return Err(malformed(pos));
        }
        pos += 1 + digits;
    }
    if !after[pos..].starts_with('%') {
        return Err(match after[pos..].find('%') {
            // `%HOST NAME%`-like text: something that is not an operator between two `%`.
            Some(_) => malformed(pos),
            None => TemplateError::LonePercent,
        });
    }
    let text = &after[..pos];
    Ok((
        RawOperator {
            text,
            name,
            args,
            max_len,
        },
        pos + 1,
    ))
}

fn operator(raw: RawOperator<'_>) -> Result<Operator, TemplateError> {
    let written = format!("%{}%", raw.text);
    let no_args = |op: Operator| -> Result<Operator, TemplateError> {
        if raw.args.is_some() || raw.max_len.is_some() {
            return Err(TemplateError::BadArguments {
                operator: written.clone(),
                reason: "takes no arguments",
            });
        }
        Ok(op)
    };
    match raw.name {
        "DOWNSTREAM_REMOTE_ADDRESS" | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => {
            no_args(Operator::DownstreamRemoteAddress)
        }
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT"
        | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => {
            no_args(Operator::DownstreamRemoteAddressWithoutPort)
        }
        "DOWNSTREAM_REMOTE_PORT" | "DOWNSTREAM_DIRECT_REMOTE_PORT" => {
            no_args(Operator::DownstreamRemotePort)
        }
        "DOWNSTREAM_LOCAL_ADDRESS" => no_args(Operator::DownstreamLocalAddress),
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => {
            no_args(Operator::DownstreamLocalAddressWithoutPort)
        }
        "DOWNSTREAM_LOCAL_PORT" => no_args(Operator::DownstreamLocalPort),
        "UPSTREAM_REMOTE_ADDRESS" => no_args(Operator::UpstreamRemoteAddress),
        "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => {
            no_args(Operator::UpstreamRemoteAddressWithoutPort)
        }
        "UPSTREAM_REMOTE_PORT" => no_args(Operator::UpstreamRemotePort),
        "HOSTNAME" => no_args(Operator::Hostname),
        "PROTOCOL" => no_args(Operator::Protocol),
        "START_TIME" => {
            if raw.max_len.is_some() {
                return Err(TemplateError::BadArguments {
                    operator: written,
                    reason: "takes no length",
                });
            }
            match raw.args {
                None | Some("") => Ok(Operator::StartTime(default_time_format())),
                Some(f) => Ok(time_format(f)
                    .map(Operator::StartTime)
                    .unwrap_or(Operator::NotApplied(written))),
            }
        }
        "REQ" => {
            let Some(args) = raw.args.filter(|a| !a.is_empty()) else {
                return Err(TemplateError::BadArguments {
                    operator: written,
                    reason: "needs a header name, %REQ(name)%",
                });
            };
            let (main, alt) = match args.split_once('?') {
                Some((m, a)) => (m, Some(a)),
                None => (args, None),
            };
            let name = |n: &str| -> Result<String, TemplateError> {
                let lower = n.to_ascii_lowercase();
                if REQ_PSEUDO.contains(&lower.as_str())
                    || crate::policy::validate::header_name(n).is_ok()
                {
                    Ok(lower)
                } else {
                    Err(TemplateError::BadArguments {
                        operator: written.clone(),
                        reason: "not a header name",
                    })
                }
            };
            Ok(Operator::Req {
                main: name(main)?,
                alt: alt.map(name).transpose()?,
                max_len: raw.max_len,
            })
        }
        n if DOWNSTREAM_TLS.contains(&n) => Ok(Operator::DownstreamTls),
        n if NOT_APPLIED.contains(&n) => Ok(Operator::NotApplied(written)),
        _ => Err(TemplateError::Unknown(written)),
    }
}

/// Envoy's default `START_TIME`: `2016-04-15T20:17:00.310Z`.
fn default_time_format() -> Vec<TimePart> {
    use TimePart::*;
    let lit = |s: &str| Literal(s.to_string());
    vec![
        Year,
        lit("-"),
        Month,
        lit("-"),
        Day,
        lit("T"),
        Hour,
        lit(":"),
        Minute,
        lit(":"),
        Second,
        lit("."),
        Fraction(3),
        lit("Z"),
    ]
}

/// A `START_TIME(...)` format (strftime plus Envoy's `%s`, `%f`, `%Nf`); `None` when it uses a specifier
/// Keel does not implement.
fn time_format(f: &str) -> Option<Vec<TimePart>> {
    let mut out = Vec::new();
    let mut literal = String::new();
    let mut chars = f.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            literal.push(c);
            continue;
        }
        let mut spec = chars.next()?;
        let mut digits = None;
        if let Some(d) = spec.to_digit(10) {
            digits = Some(d);
            spec = chars.next()?;
            if spec != 'f' || d == 0 {
                return None;
            }
        }
        let part = match spec {
            '%' => {
                literal.push('%');
                continue;
            }
            'Y' => TimePart::Year,
            'm' => TimePart::Month,
            'd' => TimePart::Day,
            'H' => TimePart::Hour,
            'M' => TimePart::Minute,
            'S' => TimePart::Second,
            's' => TimePart::EpochSeconds,
            'f' => TimePart::Fraction(u8::try_from(digits.unwrap_or(9)).ok()?),
            'z' => TimePart::Offset,
            'Z' => TimePart::Zone,
            'F' => {
                out.extend(flush(&mut literal));
                out.extend([
                    TimePart::Year,
                    TimePart::Literal("-".into()),
                    TimePart::Month,
                    TimePart::Literal("-".into()),
                    TimePart::Day,
                ]);
                continue;
            }
            'T' => {
                out.extend(flush(&mut literal));
                out.extend([
                    TimePart::Hour,
                    TimePart::Literal(":".into()),
                    TimePart::Minute,
                    TimePart::Literal(":".into()),
                    TimePart::Second,
                ]);
                continue;
            }
            _ => return None,
        };
        out.extend(flush(&mut literal));
        out.push(part);
    }
    out.extend(flush(&mut literal));
    Some(out)
}

fn flush(literal: &mut String) -> Option<TimePart> {
    (!literal.is_empty()).then(|| TimePart::Literal(std::mem::take(literal)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(s: &str) -> Part {
        Part::Literal(s.to_string())
    }

    #[test]
    fn literals_and_escapes() {
        let cases: &[(&str, Vec<Part>)] = &[
            ("", vec![]),
            ("plain", vec![lit("plain")]),
            ("100%%", vec![lit("100%")]),
            ("%%%%", vec![lit("%%")]),
            ("a%%b%%c", vec![lit("a%b%c")]),
        ];
        for (value, want) in cases {
            assert_eq!(parse(value).as_ref(), Ok(want), "{value}");
        }
    }

    #[test]
    fn operators() {
        let cases: &[(&str, Vec<Part>)] = &[
            ("%HOSTNAME%", vec![Part::Op(Operator::Hostname)]),
            (
                "node=%HOSTNAME%;",
                vec![lit("node="), Part::Op(Operator::Hostname), lit(";")],
            ),
            (
                "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%",
                vec![Part::Op(Operator::DownstreamRemoteAddressWithoutPort)],
            ),
            (
                "%REQ(X-User)%",
                vec![Part::Op(Operator::Req {
                    main: "x-user".into(),
                    alt: None,
                    max_len: None,
                })],
            ),
            (
                "%REQ(x-a?:AUTHORITY):4%",
                vec![Part::Op(Operator::Req {
                    main: "x-a".into(),
                    alt: Some(":authority".into()),
                    max_len: Some(4),
                })],
            ),
            (
                "%UPSTREAM_METADATA([\"istio\", \"x\"])%",
                vec![Part::Op(Operator::NotApplied(
                    "%UPSTREAM_METADATA([\"istio\", \"x\"])%".into(),
                ))],
            ),
            (
                "%START_TIME(%s.%3f)%",
                vec![Part::Op(Operator::StartTime(vec![
                    TimePart::EpochSeconds,
                    TimePart::Literal(".".into()),
                    TimePart::Fraction(3),
                ]))],
            ),
            (
                "%START_TIME(%a)%",
                vec![Part::Op(Operator::NotApplied("%START_TIME(%a)%".into()))],
            ),
            (
                "%DOWNSTREAM_PEER_URI_SAN%",
                vec![Part::Op(Operator::DownstreamTls)],
            ),
        ];
        for (value, want) in cases {
            assert_eq!(parse(value).as_ref(), Ok(want), "{value}");
        }
    }

    #[test]
    fn errors() {
        let cases: &[(&str, TemplateError)] = &[
            ("50%", TemplateError::LonePercent),
            ("%HOSTNAME", TemplateError::LonePercent),
            (
                "%NO_SUCH_THING%",
                TemplateError::Unknown("%NO_SUCH_THING%".into()),
            ),
            ("%hostname%", TemplateError::Malformed("%hostname%".into())),
            ("100% sure%", TemplateError::Malformed("% sure%".into())),
            (
                "%HOST NAME%",
                TemplateError::Malformed("%HOST NAME%".into()),
            ),
            ("%REQ(x%", TemplateError::Malformed("%REQ(x%".into())),
            (
                "%REQ%",
                TemplateError::BadArguments {
                    operator: "%REQ%".into(),
                    reason: "needs a header name, %REQ(name)%",
                },
            ),
            (
                "%REQ(bad header)%",
                TemplateError::BadArguments {
                    operator: "%REQ(bad header)%".into(),
                    reason: "not a header name",
                },
            ),
            (
                "%HOSTNAME(x)%",
                TemplateError::BadArguments {
                    operator: "%HOSTNAME(x)%".into(),
                    reason: "takes no arguments",
                },
            ),
        ];
        for (value, want) in cases {
            assert_eq!(parse(value).as_ref(), Err(want), "{value}");
        }
    }
}
