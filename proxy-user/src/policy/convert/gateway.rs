//! `Gateway` -> model (§3.4 of the reference).
//!
//! Keel is not a gateway: a Gateway is validated exactly as the API server (CRD schema and CEL rules)
//! and istiod's webhook (`ValidateGateway`) would, then kept only so VirtualService `gateways`
//! references can be checked. Rules, sources and samples: `config/testdata/rules/gateway.md`.

use std::collections::BTreeMap;

use super::Ctx;
use crate::policy::error::*;
use crate::policy::model::*;
use crate::policy::validate as v;
use crate::source::FieldPath;
use crate::wire::istio as w;

/// The annotation istiod sets on Gateways it converts from the Kubernetes Gateway API; istiod's
/// webhook relaxes two rules when a user sets it too (the name may contain dots, a host namespace
/// may be `~`), so Keel does the same.
const GATEWAY_SEMANTICS: &str = "internal.istio.io/gateway-semantics";

/// Largest `number` / `targetPort` the CRD schema accepts (uint32).
const CRD_PORT_MAX: i64 = 4_294_967_295;

/// Prefix of a `bind` that names a unix domain socket.
const UNIX_PREFIX: &str = "unix://";

pub(super) fn gateway(
    ctx: &mut Ctx<'_>,
    spec: &w::GatewaySpec,
    annotations: &BTreeMap<String, String>,
    raw: &serde_yaml::Value,
) -> Option<Gateway> {
    let sp = FieldPath::root().key("spec");
    schema_types(ctx, raw.get("spec"));
    let semantics = annotations.get(GATEWAY_SEMANTICS).map(String::as_str) == Some("gateway");
    // The API server already requires a DNS-1123 subdomain; istiod also forbids dots.
    let name = ctx.meta.name.clone();
    if !semantics && !v::is_istio_dns1123_label(&name) {
        ctx.err(
            &FieldPath::root().key("metadata").key("name"),
            Invalid::Other(format!(
                "invalid gateway name {name:?}: a Gateway name must be a DNS-1123 label (no dots, at most 63 characters)"
            )),
        );
    }
    // istiod does not check the selector; one no pod label can equal selects nothing.
    if let Err(e) = v::labels(&spec.selector) {
        ctx.warn(
            &sp.key("selector"),
            format!("{e}: no pod can carry this label, so the selector matches no gateway pod"),
        );
    }
    if spec.servers.is_empty() {
        ctx.err(
            &sp.key("servers"),
            Invalid::Other("at least one server is required".into()),
        );
    }
    let mut servers = Vec::new();
    for (i, s) in spec.servers.iter().enumerate() {
        if let Some(server) = server(ctx, &sp.key("servers").index(i), s, semantics) {
            servers.push(server);
        }
    }
    // Port names are unique across servers (an absent name counts as "").
    let mut names: Vec<&str> = Vec::new();
    for (i, s) in spec.servers.iter().enumerate() {
        let Some(port) = &s.port else { continue };
        let name = port.name.as_deref().unwrap_or("");
        if names.contains(&name) {
            ctx.err(
                &sp.key("servers").index(i).key("port").key("name"),
                InvalidPort::DuplicateName(name.to_string()),
            );
        }
        names.push(name);
    }
    // istiod warns (does not reject) when httpsRedirect is set on a server that is not HTTP.
    for (i, s) in spec.servers.iter().enumerate() {
        let (Some(port), Some(tls)) = (&s.port, &s.tls) else {
            continue;
        };
        let http = port
            .protocol
            .as_deref()
            .and_then(server_protocol)
            .is_some_and(Protocol::is_http);
        if tls.https_redirect == Some(true) && !http {
            ctx.warn(
                &sp.key("servers").index(i).key("tls").key("httpsRedirect"),
                "tls.httpsRedirect should only be used with HTTP servers",
            );
        }
    }
    if ctx.errors.is_empty() {
        if !spec.selector.is_empty() {
            ctx.not_applied(
                &sp.key("selector"),
                Some("Keel is not a gateway and configures no gateway pod"),
            );
        }
        ctx.not_applied(
            &sp.key("servers"),
            Some("Keel is not a gateway and opens no listener for these servers"),
        );
    }
    Some(Gateway {
        meta: ctx.meta.clone(),
        selector: spec.selector.clone(),
        servers,
    })
}

/// Schema rules the typed decoding cannot see (it reads `1` as `"1"`, and an empty list as an absent
/// one): string selector values, non-empty certificate lists.
fn schema_types(ctx: &mut Ctx<'_>, spec: Option<&serde_yaml::Value>) {
    use serde_yaml::Value;
    let Some(spec) = spec else { return };
    let sp = FieldPath::root().key("spec");
    if let Some(Value::Mapping(selector)) = spec.get("selector") {
        for (k, v) in selector {
            if !matches!(v, Value::String(_)) {
                let key = k.as_str().unwrap_or("?");
                ctx.err(
                    &sp.key("selector").key(key),
                    InvalidDocument::Schema("selector values must be strings (quote it)".into()),
                );
            }
        }
    }
    let Some(Value::Sequence(servers)) = spec.get("servers") else {
        return;
    };
    for (i, server) in servers.iter().enumerate() {
        let p = sp.key("servers").index(i);
        let Some(tls) = server.get("tls") else {
            continue;
        };
        for field in ["credentialNames", "tlsCertificates"] {
            if matches!(tls.get(field), Some(Value::Sequence(items)) if items.is_empty()) {
                ctx.err(
                    &p.key("tls").key(field),
                    Invalid::Other(format!("{field} must have at least 1 item when set")),
                );
            }
        }
    }
}

/// One server (`validateServer`, `validateServerPort`, `validateServerBind` and the CRD schema);
/// `None` when its port is unusable.
fn server(
    ctx: &mut Ctx<'_>,
    p: &FieldPath,
    s: &w::Server,
    semantics: bool,
) -> Option<GatewayServer> {
    let errors_before = ctx.errors.len();
    if s.hosts.is_empty() {
        ctx.err(
            &p.key("hosts"),
            Invalid::Other("a server must have at least one host".into()),
        );
    }
    for (j, h) in s.hosts.iter().enumerate() {
        let problems = server_host(h, semantics);
        if !problems.is_empty() {
            ctx.err(
                &p.key("hosts").index(j),
                Invalid::Host(InvalidHost::Server {
                    host: h.clone(),
                    reason: problems.join("; "),
                }),
            );
        }
    }
    let bind = s.bind.as_deref().unwrap_or("");
    let Some(port) = &s.port else {
        ctx.err(&p.key("port"), Invalid::Other("port is required".into()));
        bind_address(ctx, p, bind, None);
        if let Some(tls) = &s.tls {
            server_tls(ctx, &p.key("tls"), tls);
        }
        return None;
    };
    let pp = p.key("port");
    let port_errors = ctx.errors.len();
    let protocol = match port.protocol.as_deref() {
        None => {
            ctx.err(
                &pp.key("protocol"),
                Invalid::Other("port.protocol is required".into()),
            );
            None
        }
        Some(name) => {
            let protocol = server_protocol(name);
            if protocol.is_none() {
                ctx.err(
                    &pp.key("protocol"),
                    Invalid::Enum {
                        value: name.to_string(),
                        allowed: "HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, HTTP_PROXY, MONGO, REDIS, MYSQL, TCP, TLS, UDP (any case)",
                    },
                );
            }
            protocol
        }
    };
    let number = match port.number {
        None => {
            ctx.err(&pp.key("number"), InvalidPort::Missing);
            None
        }
        Some(n) if !(0..=CRD_PORT_MAX).contains(&n) => {
            ctx.err(&pp.key("number"), InvalidPort::OutOfRange(n));
            None
        }
        // A unix-socket server listens on no port: 0 is its only valid number.
        Some(0) if bind.starts_with(UNIX_PREFIX) => Some(0),
        Some(n) => ctx.check(&pp.key("number"), v::port(n)),
    };
    match port.target_port {
        Some(t) if !(0..=CRD_PORT_MAX).contains(&t) => {
            ctx.err(&pp.key("targetPort"), InvalidPort::OutOfRange(t))
        }
        Some(t) if t > 0 => ctx.err(
            &pp.key("targetPort"),
            Invalid::Other(
                "targetPort has no effect on a Gateway server and is not allowed".into(),
            ),
        ),
        _ => {}
    }
    if port.name.as_deref().unwrap_or("").is_empty() {
        ctx.err(&pp.key("name"), InvalidPort::MissingName(""));
    }
    let port_ok = ctx.errors.len() == port_errors;
    bind_address(ctx, p, bind, port.number);
    if let Some(tls) = &s.tls {
        server_tls(ctx, &p.key("tls"), tls);
    }
    // Which protocols need, or forbid, TLS settings (only judged for a valid port, as istiod does).
    if let (true, Some(protocol)) = (port_ok, protocol) {
        let tls_protocol = matches!(protocol, Protocol::Https | Protocol::Tls);
        match &s.tls {
            None if tls_protocol => ctx.err(
                &p.key("tls"),
                Invalid::Other("a server with protocol HTTPS or TLS must have tls settings".into()),
            ),
            Some(tls) if !tls_protocol => {
                // A plain HTTP server may carry tls only for httpsRedirect: passthrough mode (the
                // default) and no certificate files.
                let redirect_only = is_passthrough(tls.mode.as_deref())
                    && !set(&tls.ca_certificates)
                    && !set(&tls.private_key)
                    && !set(&tls.server_certificate);
                if !protocol.is_http() {
                    ctx.err(
                        &p.key("tls"),
                        Invalid::Other(
                            "a server whose protocol is not HTTPS or TLS cannot have tls settings"
                                .into(),
                        ),
                    );
                } else if !redirect_only {
                    ctx.err(
                        &p.key("tls"),
                        Invalid::Other(
                            "a plain-text HTTP server can have tls settings only for httpsRedirect (no mode other than PASSTHROUGH, no certificate files)"
                                .into(),
                        ),
                    );
                }
            }
            _ => {}
        }
    }
    if ctx.errors.len() != errors_before {
        return None;
    }
    Some(GatewayServer {
        port: number?,
        name: port.name.clone(),
        protocol: protocol?,
        hosts: s.hosts.clone(),
    })
}

/// `server.bind`: an IP address, or `unix://` and an absolute path or `@abstract` name (then the port
/// number must be 0).
fn bind_address(ctx: &mut Ctx<'_>, p: &FieldPath, bind: &str, number: Option<i64>) {
    let path = p.key("bind");
    if let Some(socket) = bind.strip_prefix(UNIX_PREFIX) {
        if socket.is_empty() {
            ctx.err(
                &path,
                Invalid::Other("unix address must not be empty".into()),
            );
        } else if !socket.starts_with('@') && (!socket.starts_with('/') || socket.ends_with('/')) {
            ctx.err(
                &path,
                Invalid::Other(format!("{socket:?} is not an absolute path to a file")),
            );
        }
        if number.is_some_and(|n| n != 0) {
            ctx.err(
                &p.key("port").key("number"),
                Invalid::Other("port number must be 0 for a unix domain socket bind".into()),
            );
        }
    } else if !bind.is_empty() && !v::is_go_ip(bind) {
        ctx.err(&path, InvalidAddress::Ip(bind.to_string()));
    }
}

/// Istio's protocol names, any case (`protocol.Parse`): the ones a Gateway server accepts.
fn server_protocol(name: &str) -> Option<Protocol> {
    Some(match name.to_ascii_lowercase().as_str() {
        // HTTP_PROXY is an HTTP/1 port for istiod's checks.
        "http" | "http_proxy" => Protocol::Http,
        "http2" => Protocol::Http2,
        "grpc" => Protocol::Grpc,
        "grpc-web" => Protocol::GrpcWeb,
        "https" => Protocol::Https,
        "tls" => Protocol::Tls,
        "tcp" => Protocol::Tcp,
        "mongo" => Protocol::Mongo,
        "redis" => Protocol::Redis,
        "mysql" => Protocol::Mysql,
        "udp" => Protocol::Udp,
        _ => return None,
    })
}

/// True for a set, non-empty string (istiod tests `!= ""`).
fn set(s: &Option<String>) -> bool {
    s.as_deref().is_some_and(|s| !s.is_empty())
}

/// PASSTHROUGH is the mode's default (the enum's zero value).
fn is_passthrough(mode: Option<&str>) -> bool {
    matches!(mode, None | Some("PASSTHROUGH" | "AUTO_PASSTHROUGH"))
}

const TLS_MODES: &str =
    "PASSTHROUGH, SIMPLE, MUTUAL, AUTO_PASSTHROUGH, ISTIO_MUTUAL, OPTIONAL_MUTUAL";
const TLS_VERSIONS: &str = "TLS_AUTO, TLSV1_0, TLSV1_1, TLSV1_2, TLSV1_3";

/// Cipher suites istiod knows (`security.ValidCipherSuites`); others only draw a warning.
const CIPHER_SUITES: &[&str] = &[
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA",
    "AES256-SHA",
    "DES-CBC3-SHA",
];

/// istiod accepts "", `ALL`, and anything not starting with a letter or digit (`-`/`+`/`!` operators)
/// without looking further.
pub(super) fn known_cipher_suite(cs: &str) -> bool {
    cs.is_empty()
        || cs == "ALL"
        || !cs.chars().next().is_some_and(char::is_alphanumeric)
        || CIPHER_SUITES.contains(&cs)
}

/// `ServerTLSSettings`: the CRD schema and CEL rules, then istiod's `validateTLSOptions` (which the
/// Sidecar ingress `tls` shares).
pub(super) fn server_tls(ctx: &mut Ctx<'_>, p: &FieldPath, tls: &w::ServerTlsSettings) {
    // Schema (API server): a failure here stops the request before the webhook runs.
    let schema_errors = ctx.errors.len();
    let mode = tls.mode.as_deref();
    if let Some(m) = mode {
        if !TLS_MODES.split(", ").any(|x| x == m) {
            ctx.err(
                &p.key("mode"),
                Invalid::Enum {
                    value: m.to_string(),
                    allowed: TLS_MODES,
                },
            );
        }
    }
    for (field, value) in [
        ("minProtocolVersion", &tls.min_protocol_version),
        ("maxProtocolVersion", &tls.max_protocol_version),
    ] {
        if let Some(x) = value {
            if !TLS_VERSIONS.split(", ").any(|y| y == x) {
                ctx.err(
                    &p.key(field),
                    Invalid::Enum {
                        value: x.clone(),
                        allowed: TLS_VERSIONS,
                    },
                );
            }
        }
    }
    for (field, len) in [
        ("credentialNames", tls.credential_names.len()),
        ("tlsCertificates", tls.tls_certificates.len()),
    ] {
        if len > 2 {
            ctx.err(
                &p.key(field),
                Invalid::Other(format!("{field} has {len} entries, at most 2 are allowed")),
            );
        }
    }
    // CEL (`has()` is presence: an empty credentialName counts).
    let has_names = !tls.credential_names.is_empty();
    if has_names && !tls.tls_certificates.is_empty() {
        ctx.err(
            p,
            Invalid::Other("only one of credentialNames or tlsCertificates can be set".into()),
        );
    }
    if has_names && tls.credential_name.is_some() {
        ctx.err(
            p,
            Invalid::Other("only one of credentialName or credentialNames can be set".into()),
        );
    }
    if ctx.errors.len() != schema_errors {
        return;
    }

    // Webhook: warnings first (they do not stop the checks below).
    if matches!(
        tls.min_protocol_version.as_deref(),
        Some("TLSV1_0" | "TLSV1_1")
    ) && tls.cipher_suites.is_empty()
    {
        ctx.warn(
            &p.key("minProtocolVersion"),
            "TLS versions below TLSV1_2 need cipherSuites set: the default ciphers no longer include compatible ones",
        );
    }
    let mut unknown: Vec<&str> = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    let mut duplicate: Vec<&str> = Vec::new();
    for cs in &tls.cipher_suites {
        if !known_cipher_suite(cs) {
            unknown.push(cs);
        } else if seen.contains(&cs.as_str()) {
            duplicate.push(cs);
        } else {
            seen.push(cs);
        }
    }
    for (what, list) in [("unknown", &mut unknown), ("duplicate", &mut duplicate)] {
        list.sort_unstable();
        list.dedup();
        if !list.is_empty() {
            ctx.warn(
                &p.key("cipherSuites"),
                format!("{what} cipher suites are ignored: {}", list.join(", ")),
            );
        }
    }

    let has_pair = set(&tls.server_certificate) && set(&tls.private_key);
    if mode == Some("ISTIO_MUTUAL") {
        // Istio's own certificates: no other source may be named.
        for (field, is_set) in [
            ("serverCertificate", set(&tls.server_certificate)),
            ("privateKey", set(&tls.private_key)),
            ("caCertificates", set(&tls.ca_certificates)),
            ("tlsCertificates", !tls.tls_certificates.is_empty()),
            ("credentialName", set(&tls.credential_name)),
            ("credentialNames", has_names),
        ] {
            if is_set {
                ctx.err(
                    &p.key(field),
                    Invalid::Other(format!("ISTIO_MUTUAL TLS cannot have {field}")),
                );
            }
        }
        return;
    }
    if is_passthrough(mode)
        && (set(&tls.ca_crl)
            || set(&tls.server_certificate)
            || set(&tls.private_key)
            || set(&tls.ca_certificates)
            || !tls.tls_certificates.is_empty()
            || set(&tls.credential_name)
            || has_names)
    {
        ctx.warn(
            p,
            format!(
                "{} mode does not use certificates; they are ignored",
                mode.unwrap_or("PASSTHROUGH")
            ),
        );
    }
    let sources = [
        has_pair,
        set(&tls.credential_name),
        has_names,
        !tls.tls_certificates.is_empty(),
    ];
    if sources.iter().filter(|s| **s).count() > 1 {
        ctx.err(
            p,
            Invalid::Other(
                "only one of credentialName, credentialNames, serverCertificate/privateKey, tlsCertificates may be set"
                    .into(),
            ),
        );
    }
    let terminating = matches!(mode, Some("SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL"));
    if terminating && (set(&tls.credential_name) || has_names) {
        // Certificates (and CA, CRL) come from the secret.
        return;
    }
    if terminating {
        let what = if mode == Some("SIMPLE") {
            "SIMPLE TLS"
        } else {
            "MUTUAL TLS"
        };
        if what == "MUTUAL TLS" && !set(&tls.ca_certificates) {
            ctx.err(
                &p.key("caCertificates"),
                Invalid::Other(format!(
                    "{what} requires caCertificates (a client CA bundle)"
                )),
            );
        }
        let mut certs: Vec<(FieldPath, &Option<String>, &Option<String>)> = tls
            .tls_certificates
            .iter()
            .enumerate()
            .map(|(k, c)| {
                (
                    p.key("tlsCertificates").index(k),
                    &c.server_certificate,
                    &c.private_key,
                )
            })
            .collect();
        if certs.is_empty() {
            certs.push((p.clone(), &tls.server_certificate, &tls.private_key));
        }
        for (cp, cert, key) in certs {
            if !set(cert) {
                ctx.err(
                    &cp.key("serverCertificate"),
                    Invalid::Other(format!("{what} requires serverCertificate")),
                );
            }
            if !set(key) {
                ctx.err(
                    &cp.key("privateKey"),
                    Invalid::Other(format!("{what} requires privateKey")),
                );
            }
        }
    }
    if set(&tls.ca_crl) {
        if set(&tls.credential_name) {
            ctx.err(
                &p.key("caCrl"),
                Invalid::Other(
                    "caCrl cannot be used with credentialName (put the CRL in the credential)"
                        .into(),
                ),
            );
        }
        if mode == Some("SIMPLE") {
            ctx.err(
                &p.key("caCrl"),
                Invalid::Other("caCrl cannot be used with SIMPLE TLS".into()),
            );
        }
    }
}

/// A server host, `[namespace/]dnsName` (`ValidateNamespaceSlashWildcardHostname` for gateways):
/// every problem found, empty when valid.
fn server_host(host: &str, semantics: bool) -> Vec<String> {
    let Some((ns, dns)) = host.split_once('/') else {
        return host_name(host);
    };
    let mut problems = Vec::new();
    if ns.is_empty() || dns.is_empty() {
        problems.push("namespace and dnsName must not be empty".to_string());
    }
    let ns_ok =
        matches!(ns, "*" | ".") || (ns == "~" && semantics) || v::is_istio_dns1123_label(ns);
    if !ns_ok {
        problems.push(format!(
            "namespace {ns:?} must be \"*\", \".\" or a DNS-1123 label"
        ));
    }
    problems.extend(host_name(dns));
    problems
}

/// The dnsName part of a server host: a FQDN with an optional `*.` wildcard prefix, `*`, or an IP
/// address (one with a dot: istiod rejects names without one before it looks for an address).
fn host_name(h: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if h != "*" && !h.contains('.') {
        problems.push("short names (without a dot) are not allowed".to_string());
    }
    if let Err(e) = wildcard_domain(h) {
        if !v::is_go_ip(h) {
            problems.push(e);
        }
    }
    if h.contains('*') && h.len() != 1 && !h.starts_with("*.") {
        problems.push("a wildcard is only allowed as a leading \"*.\"".to_string());
    }
    problems
}

/// istiod's `ValidateWildcardDomain`: at most 255 characters, a first label that may carry a
/// wildcard, then DNS labels (upper case allowed) whose last is not all digits.
fn wildcard_domain(d: &str) -> Result<(), String> {
    if d.len() > 255 {
        return Err("longer than 255 characters".into());
    }
    if d.is_empty() {
        return Err("empty domain name".into());
    }
    let (first, rest) = match d.split_once('.') {
        Some((f, r)) => (f, Some(r)),
        None => (d, None),
    };
    if !v::is_istio_wildcard_label(first) {
        return Err(format!("label {first:?} is not a valid DNS label"));
    }
    let Some(rest) = rest else { return Ok(()) };
    let labels: Vec<&str> = rest.split('.').collect();
    let tld = labels.last().copied().unwrap_or("");
    if is_go_int(tld) {
        return Err(format!("top-level domain {tld:?} cannot be all-numeric"));
    }
    for (i, label) in labels.iter().enumerate() {
        // A trailing dot (absolute name) is allowed.
        if i + 1 == labels.len() && label.is_empty() {
            return Ok(());
        }
        if !v::is_istio_dns1123_label(label) {
            return Err(format!("label {label:?} is not a valid DNS label"));
        }
    }
    Ok(())
}

/// What Go's `strconv.Atoi` parses: an optional sign and decimal digits (that fit in 64 bits).
fn is_go_int(s: &str) -> bool {
    s.parse::<i64>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_hosts_follow_istiod() {
        for ok in [
            "*",
            "*/*",
            "./*",
            "bookinfo/reviews.example.com",
            "Bookinfo/Reviews.Example.com",
            "*.example.com",
            "*/10.0.0.1",
            "10.0.0.1",
            "::ffff:10.0.0.1",
            "example.com.",
        ] {
            assert!(
                server_host(ok, false).is_empty(),
                "{ok}: {:?}",
                server_host(ok, false)
            );
        }
        for bad in [
            "reviews",
            "ns/reviews",
            "2001:db8::1",
            "foo*.example.com",
            "*foo.example.com",
            "*-foo.example.com",
            "example.123",
            "~/*",
            "~bookinfo/*",
            "/*",
            "ns/",
            "bad_ns/*",
            "*.*.example.com",
        ] {
            assert!(!server_host(bad, false).is_empty(), "{bad} accepted");
        }
        assert!(server_host("~/*", true).is_empty());
    }

    #[test]
    fn protocols_are_case_insensitive_istio_names() {
        assert_eq!(server_protocol("http_proxy"), Some(Protocol::Http));
        assert_eq!(server_protocol("Grpc-Web"), Some(Protocol::GrpcWeb));
        assert_eq!(server_protocol("kubernetes.io/ws"), None);
        assert_eq!(server_protocol("SMTP"), None);
    }

    #[test]
    fn cipher_suites_known_or_operator() {
        assert!(known_cipher_suite("ECDHE-RSA-AES128-GCM-SHA256"));
        assert!(known_cipher_suite("-AES128-SHA"));
        assert!(known_cipher_suite("ALL"));
        assert!(!known_cipher_suite("FOO"));
    }
}
