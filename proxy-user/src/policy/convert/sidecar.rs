//! `Sidecar` -> model (§3.3 of the reference): egress scoping and the outbound traffic policy; every
//! other field is validated as istiod does (`ValidateSidecar` and the CRD schema) and accepted with a
//! warning.

use std::time::Duration;

use super::fields::set_fields;
use super::gateway::known_cipher_suite;
use super::scoped_host::sidecar_egress_host;
use super::Ctx;
use crate::policy::error::*;
use crate::policy::model::*;
use crate::policy::validate as v;
use crate::source::FieldPath;
use crate::wire::istio as w;

/// `unix://` in a bind address or default endpoint.
const UNIX_PREFIX: &str = "unix://";

pub(super) fn sidecar(ctx: &mut Ctx<'_>, spec: &w::SidecarSpec) -> Option<Sidecar> {
    let sp = FieldPath::root().key("spec");
    let workload_selector = spec.workload_selector.as_ref().map(|ws| {
        workload_selector(ctx, &sp.key("workloadSelector"), ws);
        ws.labels.clone()
    });
    if spec.egress.is_empty()
        && spec.ingress.is_empty()
        && spec.outbound_traffic_policy.is_none()
        && spec.inbound_connection_pool.is_none()
    {
        ctx.err(
            &sp,
            Invalid::Other(
                "empty Sidecar: set at least one of egress, ingress, outboundTrafficPolicy, inboundConnectionPool"
                    .into(),
            ),
        );
    }
    ingress_listeners(ctx, &sp.key("ingress"), &spec.ingress);
    if let Some(pool) = &spec.inbound_connection_pool {
        connection_pool(ctx, &sp.key("inboundConnectionPool"), pool);
    }
    let egress = egress_listeners(ctx, &sp.key("egress"), &spec.egress);
    let outbound_traffic_policy = match &spec.outbound_traffic_policy {
        None => None,
        Some(o) => outbound_traffic_policy(ctx, &sp.key("outboundTrafficPolicy"), o),
    };
    if ctx.errors.is_empty() {
        sidecar_not_applied(ctx, spec);
    }
    Some(Sidecar {
        meta: ctx.meta.clone(),
        workload_selector,
        egress,
        outbound_traffic_policy,
    })
}

/// istiod checks only that keys are set and that neither keys nor values hold `*`; the schema bounds
/// values to 63 characters and the map to 256 entries. Label syntax is not checked.
fn workload_selector(ctx: &mut Ctx<'_>, path: &FieldPath, ws: &w::WorkloadSelector) {
    let lp = path.key("labels");
    if ws.labels.len() > 256 {
        ctx.err(
            &lp,
            Invalid::Other(format!(
                "{} labels: at most 256 are allowed",
                ws.labels.len()
            )),
        );
    }
    for (k, val) in &ws.labels {
        if k.is_empty() {
            ctx.err(
                &lp,
                Invalid::Other(format!("empty label key in selector (value {val:?})")),
            );
        }
        if k.contains('*') || val.contains('*') {
            ctx.err(
                &lp.key(k),
                Invalid::Other(format!(
                    "wildcard '*' is not supported in a selector ({k}={val})"
                )),
            );
        }
        if val.chars().count() > 63 {
            ctx.err(
                &lp.key(k),
                Invalid::Other(format!(
                    "label value for {k:?} is longer than 63 characters"
                )),
            );
        }
    }
    if ws.labels.is_empty() {
        ctx.warn(
            path,
            "workloadSelector has no labels: the Sidecar applies to every workload in the namespace",
        );
    }
}

// ---------------------------------------------------------------------------------------------------------
// Ingress listeners: validated in full, not applied (Keel handles outbound traffic).

fn ingress_listeners(ctx: &mut Ctx<'_>, path: &FieldPath, listeners: &[w::IstioIngressListener]) {
    let mut ports = std::collections::HashSet::new();
    for (i, l) in listeners.iter().enumerate() {
        let lp = path.index(i);
        let Some(port) = &l.port else {
            ctx.err(
                &lp.key("port"),
                Invalid::Other("an ingress listener needs a port".into()),
            );
            continue;
        };
        let pp = lp.key("port");
        target_port(ctx, &pp, port);
        port_name_and_protocol(ctx, &pp, port);
        let number = port.number.unwrap_or(0);
        ctx.check(&pp.key("number"), v::port(number));
        if let Some(bind) = l.bind.as_deref().filter(|b| !b.is_empty()) {
            ctx.check(&lp.key("bind"), ip_address(bind));
        }
        capture_mode(ctx, &lp.key("captureMode"), l.capture_mode.as_deref());
        if !ports.insert(number) {
            ctx.err(&pp.key("number"), InvalidPort::Duplicate(number));
        }
        if let Some(ep) = l.default_endpoint.as_deref().filter(|e| !e.is_empty()) {
            default_endpoint(ctx, &lp.key("defaultEndpoint"), ep);
        }
        let protocol = port.protocol.as_deref().unwrap_or("").to_ascii_lowercase();
        if let Some(tls) = &l.tls {
            ingress_tls(ctx, &lp.key("tls"), tls, &protocol);
        }
        if let Some(pool) = &l.connection_pool {
            let cp = lp.key("connectionPool");
            connection_pool(ctx, &cp, pool);
            let http = matches!(
                protocol.as_str(),
                "http" | "http2" | "http_proxy" | "grpc" | "grpc-web"
            );
            if pool.http.is_some() && !http {
                ctx.warn(
                    &cp.key("http"),
                    format!(
                        "HTTP connection pool settings on port {number}, whose protocol {:?} is not HTTP: only the TCP settings apply",
                        port.protocol.as_deref().unwrap_or("")
                    ),
                );
            }
        }
    }
}

/// `127.0.0.1:PORT`, `0.0.0.0:PORT`, `[::1]:PORT`, `[::]:PORT`, `:PORT` or `unix://PATH`.
fn default_endpoint(ctx: &mut Ctx<'_>, path: &FieldPath, ep: &str) {
    if let Some(addr) = ep.strip_prefix(UNIX_PREFIX) {
        ctx.check(path, unix_address(addr));
        return;
    }
    let (host, port) = match split_host_port(ep) {
        Ok(hp) => hp,
        Err(why) => {
            ctx.err(
                path,
                Invalid::Other(format!("defaultEndpoint {ep:?}: {why}")),
            );
            return;
        }
    };
    if !matches!(host, "" | "127.0.0.1" | "0.0.0.0" | "::1" | "::") {
        ctx.err(
            path,
            Invalid::Other(format!(
                "defaultEndpoint {ep:?} must be 127.0.0.1:PORT, 0.0.0.0:PORT, [::1]:PORT, [::]:PORT, :PORT or unix://PATH"
            )),
        );
    }
    // Read as Go's `strconv.Atoi` does: an optional sign, leading zeros allowed.
    match port.parse::<i64>() {
        Ok(n) => {
            ctx.check(path, v::port(n));
        }
        Err(_) => ctx.err(
            path,
            Invalid::Other(format!(
                "defaultEndpoint {ep:?}: port {port:?} is not a number"
            )),
        ),
    }
}

/// `host:port` split as Go's `net.SplitHostPort` does (brackets around IPv6 hosts; the port may be
/// empty here and is checked by the caller).
fn split_host_port(s: &str) -> Result<(&str, &str), &'static str> {
    let Some(colon) = s.rfind(':') else {
        return Err("missing port");
    };
    let (host, after_host) = if let Some(inner) = s.strip_prefix('[') {
        let Some(close) = inner.find(']') else {
            return Err("missing ']'");
        };
        // Index of `]` in `s`.
        let end = close + 1;
        if end + 1 == s.len() {
            return Err("missing port");
        }
        if end + 1 != colon {
            return Err(if s.as_bytes()[end + 1] == b':' {
                "too many colons"
            } else {
                "missing port"
            });
        }
        (&inner[..close], end + 1)
    } else {
        let host = &s[..colon];
        if host.contains(':') {
            return Err("too many colons");
        }
        (host, 0)
    };
    let bracket_from = usize::from(s.starts_with('['));
    if s[bracket_from..].contains('[') {
        return Err("unexpected '['");
    }
    if s[after_host..].contains(']') {
        return Err("unexpected ']'");
    }
    Ok((host, &s[colon + 1..]))
}

/// A unix socket path after `unix://`: `@abstract` or an absolute path to a file.
fn unix_address(addr: &str) -> Result<(), Invalid> {
    if addr.is_empty() {
        return Err(Invalid::Other("unix address must not be empty".into()));
    }
    if addr.starts_with('@') || (addr.starts_with('/') && !addr.ends_with('/')) {
        return Ok(());
    }
    Err(Invalid::Other(format!(
        "{addr:?} is not an absolute path to a file"
    )))
}

/// An IP address as Go's `netip.ParseAddr` reads it (IPv6 may carry a `%zone`).
fn ip_address(s: &str) -> Result<(), InvalidAddress> {
    if v::is_go_ip(s) {
        Ok(())
    } else {
        Err(InvalidAddress::Ip(s.to_string()))
    }
}

/// Ingress `tls`: the CRD's CEL rules, what a sidecar cannot do, then istiod's `validateTLSOptions`.
fn ingress_tls(ctx: &mut Ctx<'_>, path: &FieldPath, tls: &w::ServerTlsSettings, protocol: &str) {
    let has_names = !tls.credential_names.is_empty();
    let has_certs = !tls.tls_certificates.is_empty();
    let has_name = tls.credential_name.is_some();
    // CRD CEL rules (the schema's third rule repeats the first).
    if has_certs && has_names {
        ctx.err(
            path,
            Invalid::Other("only one of credentialNames or tlsCertificates can be set".into()),
        );
    }
    if has_name && has_names {
        ctx.err(
            path,
            Invalid::Other("only one of credentialName or credentialNames can be set".into()),
        );
    }
    for (field, n) in [
        ("credentialNames", tls.credential_names.len()),
        ("tlsCertificates", tls.tls_certificates.len()),
    ] {
        if n > 2 {
            ctx.err(
                &path.key(field),
                Invalid::Other(format!("{field} has {n} entries (at most 2)")),
            );
        }
    }
    let mode = tls.mode.as_deref().unwrap_or("PASSTHROUGH");
    enum_value(
        ctx,
        &path.key("mode"),
        mode,
        &[
            "PASSTHROUGH",
            "SIMPLE",
            "MUTUAL",
            "AUTO_PASSTHROUGH",
            "ISTIO_MUTUAL",
            "OPTIONAL_MUTUAL",
        ],
        "PASSTHROUGH, SIMPLE, MUTUAL, AUTO_PASSTHROUGH, ISTIO_MUTUAL, OPTIONAL_MUTUAL",
    );
    for (field, value) in [
        ("minProtocolVersion", &tls.min_protocol_version),
        ("maxProtocolVersion", &tls.max_protocol_version),
    ] {
        if let Some(value) = value {
            enum_value(
                ctx,
                &path.key(field),
                value,
                &["TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3"],
                "TLS_AUTO, TLSV1_0, TLSV1_1, TLSV1_2, TLSV1_3",
            );
        }
    }
    // What a sidecar's inbound TLS cannot use.
    let sidecar_cannot: [(&str, bool); 5] = [
        ("subjectAltNames", !tls.subject_alt_names.is_empty()),
        ("httpsRedirect", tls.https_redirect == Some(true)),
        (
            "credentialName",
            tls.credential_name
                .as_deref()
                .is_some_and(|s| !s.is_empty()),
        ),
        ("credentialNames", has_names),
        ("tlsCertificates", has_certs),
    ];
    for (field, set) in sidecar_cannot {
        if set {
            ctx.err(
                &path.key(field),
                Invalid::Other(format!(
                    "{field} is not supported in a Sidecar's ingress tls"
                )),
            );
        }
    }
    if matches!(mode, "ISTIO_MUTUAL" | "AUTO_PASSTHROUGH") {
        ctx.err(
            &path.key("mode"),
            Invalid::Other(format!(
                "mode {mode} cannot be used in a Sidecar's ingress tls"
            )),
        );
    }
    if !matches!(protocol, "https" | "tls") {
        ctx.err(
            path,
            Invalid::Other("tls needs a port whose protocol is HTTPS or TLS".into()),
        );
    }
    tls_options(ctx, path, tls, mode);
}

/// Server TLS options as istiod checks them for any server (gateway or sidecar ingress).
fn tls_options(ctx: &mut Ctx<'_>, path: &FieldPath, tls: &w::ServerTlsSettings, mode: &str) {
    let set = |s: &Option<String>| s.as_deref().is_some_and(|s| !s.is_empty());
    if matches!(
        tls.min_protocol_version.as_deref(),
        Some("TLSV1_0" | "TLSV1_1")
    ) && tls.cipher_suites.is_empty()
    {
        ctx.warn(
            &path.key("minProtocolVersion"),
            "TLS versions below TLSV1_2 need cipherSuites set: the default suites no longer include ones they can use",
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut unknown = std::collections::BTreeSet::new();
    let mut duplicate = std::collections::BTreeSet::new();
    for cs in &tls.cipher_suites {
        if !known_cipher_suite(cs) {
            unknown.insert(cs.as_str());
        } else if !seen.insert(cs.as_str()) {
            duplicate.insert(cs.as_str());
        }
    }
    for (what, list) in [("unknown", unknown), ("duplicate", duplicate)] {
        if !list.is_empty() {
            ctx.warn(
                &path.key("cipherSuites"),
                format!("{what} cipher suites are ignored: {list:?}"),
            );
        }
    }
    let has_names = !tls.credential_names.is_empty();
    let has_certs = !tls.tls_certificates.is_empty();
    if mode == "ISTIO_MUTUAL" {
        let fields = [
            ("serverCertificate", set(&tls.server_certificate)),
            ("privateKey", set(&tls.private_key)),
            ("caCertificates", set(&tls.ca_certificates)),
            ("tlsCertificates", has_certs),
            ("credentialName", set(&tls.credential_name)),
            ("credentialNames", has_names),
        ];
        for (field, is_set) in fields {
            if is_set {
                ctx.err(
                    &path.key(field),
                    Invalid::Other(format!(
                        "ISTIO_MUTUAL uses the mesh certificates: {field} cannot be set"
                    )),
                );
            }
        }
        return;
    }
    if matches!(mode, "PASSTHROUGH" | "AUTO_PASSTHROUGH")
        && (set(&tls.ca_crl)
            || set(&tls.server_certificate)
            || set(&tls.private_key)
            || set(&tls.ca_certificates)
            || has_certs
            || set(&tls.credential_name)
            || has_names)
    {
        ctx.warn(
            path,
            format!("{mode} does not terminate TLS: its certificates are ignored"),
        );
    }
    let sources = usize::from(set(&tls.server_certificate) && set(&tls.private_key))
        + usize::from(set(&tls.credential_name))
        + usize::from(has_names)
        + usize::from(has_certs);
    if sources > 1 {
        ctx.err(
            path,
            Invalid::Other(
                "only one of credentialName, credentialNames, serverCertificate/privateKey, tlsCertificates may be set"
                    .into(),
            ),
        );
    }
    let terminating = matches!(mode, "SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL");
    if terminating && (set(&tls.credential_name) || has_names) {
        // Certificates come from the named secret.
        return;
    }
    if terminating {
        let mutual = mode != "SIMPLE";
        if mutual && !set(&tls.ca_certificates) {
            ctx.err(
                &path.key("caCertificates"),
                Invalid::Other(format!(
                    "{mode} needs caCertificates (the client CA bundle)"
                )),
            );
        }
        if tls.tls_certificates.len() > 2 {
            ctx.warn(
                &path.key("tlsCertificates"),
                format!("{mode} uses at most 2 server certificates"),
            );
        }
        if has_certs {
            for (i, c) in tls.tls_certificates.iter().enumerate() {
                let cp = path.key("tlsCertificates").index(i);
                server_cert_pair(ctx, &cp, mode, &c.server_certificate, &c.private_key);
            }
        } else {
            server_cert_pair(ctx, path, mode, &tls.server_certificate, &tls.private_key);
        }
    }
    if set(&tls.ca_crl) {
        if set(&tls.credential_name) {
            ctx.err(
                &path.key("caCrl"),
                Invalid::Other(
                    "caCrl cannot be used with credentialName (put the CRL in the credential)"
                        .into(),
                ),
            );
        }
        if mode == "SIMPLE" {
            ctx.err(
                &path.key("caCrl"),
                Invalid::Other("caCrl cannot be used with SIMPLE TLS".into()),
            );
        }
    }
}

fn server_cert_pair(
    ctx: &mut Ctx<'_>,
    path: &FieldPath,
    mode: &str,
    cert: &Option<String>,
    key: &Option<String>,
) {
    for (field, value) in [("serverCertificate", cert), ("privateKey", key)] {
        if value.as_deref().is_none_or(str::is_empty) {
            ctx.err(
                &path.key(field),
                Invalid::Other(format!("{mode} TLS needs {field}")),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Connection pools (inbound: validated, not applied).

/// istiod's connection pool checks plus the CRD's bounds (int32 counts, CEL `>= 1ms` durations).
fn connection_pool(ctx: &mut Ctx<'_>, path: &FieldPath, cp: &w::ConnectionPoolSettings) {
    if cp.tcp.is_none() && cp.http.is_none() {
        ctx.err(
            path,
            InvalidTrafficPolicy::Empty("connectionPool (tcp or http)"),
        );
        return;
    }
    if let Some(http) = &cp.http {
        let hp = path.key("http");
        for (field, value) in [
            ("http1MaxPendingRequests", http.http1_max_pending_requests),
            ("http2MaxRequests", http.http2_max_requests),
            ("maxRequestsPerConnection", http.max_requests_per_connection),
            ("maxRetries", http.max_retries),
            ("maxConcurrentStreams", http.max_concurrent_streams),
        ] {
            count(ctx, &hp.key(field), field, value);
        }
        if let Some(d) = &http.idle_timeout {
            ctx.check(&hp.key("idleTimeout"), v::duration_ms(d));
        }
        let policy = http.h2_upgrade_policy.as_deref().unwrap_or("DEFAULT");
        enum_value(
            ctx,
            &hp.key("h2UpgradePolicy"),
            policy,
            &["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"],
            "DEFAULT, DO_NOT_UPGRADE, UPGRADE",
        );
        if policy == "UPGRADE" && http.use_client_protocol == Some(true) {
            ctx.err(
                &hp,
                InvalidTrafficPolicy::Conflict("h2UpgradePolicy: UPGRADE", "useClientProtocol"),
            );
        }
        if let Some(ka) = &http.http2_keep_alive {
            let kp = hp.key("http2KeepAlive");
            let fields = [
                ("interval", "http2KeepAlive.interval", &ka.interval),
                ("timeout", "http2KeepAlive.timeout", &ka.timeout),
            ];
            for (field, full, value) in fields {
                match value {
                    Some(d) => {
                        ctx.check(&kp.key(field), v::duration_ms(d));
                    }
                    None => ctx.err(&kp, InvalidTrafficPolicy::Missing(full)),
                }
            }
        }
    }
    if let Some(tcp) = &cp.tcp {
        let tp = path.key("tcp");
        count(
            ctx,
            &tp.key("maxConnections"),
            "maxConnections",
            tcp.max_connections,
        );
        for (field, value) in [
            ("connectTimeout", &tcp.connect_timeout),
            ("maxConnectionDuration", &tcp.max_connection_duration),
        ] {
            if let Some(d) = value {
                ctx.check(&tp.key(field), v::duration_ms(d));
            }
        }
        if let Some(d) = &tcp.idle_timeout {
            // istiod skips the check below 1ms (0s disables the timeout) and the schema has no rule.
            if let Some(parsed) = ctx.check(&tp.key("idleTimeout"), v::duration(d)) {
                if parsed >= Duration::from_millis(1) {
                    ctx.check(&tp.key("idleTimeout"), v::duration_ms(d));
                }
            }
        }
        if let Some(ka) = &tcp.tcp_keepalive {
            let kp = tp.key("tcpKeepalive");
            if let Some(p) = ka.probes {
                if !(0..=i64::from(u32::MAX)).contains(&p) {
                    ctx.err(
                        &kp.key("probes"),
                        InvalidTrafficPolicy::Range {
                            field: "probes",
                            value: p as f64,
                            range: "0..4294967295",
                        },
                    );
                }
            }
            for (field, value) in [("time", &ka.time), ("interval", &ka.interval)] {
                if let Some(d) = value {
                    ctx.check(&kp.key(field), v::duration_ms(d));
                }
            }
        }
    }
}

/// A count field: an int32 in the schema, non-negative for istiod.
fn count(ctx: &mut Ctx<'_>, path: &FieldPath, field: &'static str, value: Option<i64>) {
    if let Some(n) = value {
        if !(0..=i64::from(i32::MAX)).contains(&n) {
            ctx.err(
                path,
                InvalidTrafficPolicy::Range {
                    field,
                    value: n as f64,
                    range: "0..2147483647",
                },
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Egress listeners.

fn egress_listeners(
    ctx: &mut Ctx<'_>,
    path: &FieldPath,
    listeners: &[w::IstioEgressListener],
) -> Vec<SidecarEgress> {
    // No egress listener: Istio imports everything, as one port-less `*/*` listener.
    if listeners.is_empty() {
        return vec![SidecarEgress {
            port: None,
            hosts: vec!["*/*".to_string()],
        }];
    }
    let mut out = Vec::new();
    let mut ports = std::collections::HashSet::new();
    let mut sockets = std::collections::HashSet::new();
    let last = listeners.len() - 1;
    for (i, e) in listeners.iter().enumerate() {
        let ep = path.index(i);
        capture_mode(ctx, &ep.key("captureMode"), e.capture_mode.as_deref());
        let mut port = None;
        let mut unix_socket = false;
        match &e.port {
            // The catch-all listener.
            None if i != last => ctx.err(
                &ep,
                Invalid::Other("an egress listener without a port must be the last one".into()),
            ),
            None => {}
            Some(p) => {
                let pp = ep.key("port");
                target_port(ctx, &pp, p);
                port_name_and_protocol(ctx, &pp, p);
                let bind = e.bind.as_deref().unwrap_or("");
                match p.number.unwrap_or(0) {
                    0 => {
                        unix_socket = true;
                        egress_unix_listener(ctx, &ep, bind, e.capture_mode.as_deref());
                        if !sockets.insert(bind) {
                            ctx.err(
                                &ep.key("bind"),
                                Invalid::Other(format!(
                                    "unix socket {bind:?} is bound by another egress listener"
                                )),
                            );
                        }
                    }
                    n => {
                        port = ctx.check(&pp.key("number"), v::port(n));
                        if !bind.is_empty() {
                            ctx.check(&ep.key("bind"), ip_address(bind));
                        }
                        if !ports.insert(n) {
                            ctx.err(&pp.key("number"), InvalidPort::Duplicate(n));
                        }
                    }
                }
            }
        }
        egress_hosts(ctx, &ep.key("hosts"), &e.hosts);
        // A unix socket listener serves only clients that dial the socket; Keel captures connections
        // to service addresses, which such a listener does not import (as in Istio).
        if !unix_socket {
            out.push(SidecarEgress {
                port,
                hosts: e.hosts.clone(),
            });
        }
    }
    out
}

/// A port 0 egress listener binds a unix socket: `unix://PATH`, captureMode DEFAULT or NONE.
fn egress_unix_listener(ctx: &mut Ctx<'_>, path: &FieldPath, bind: &str, mode: Option<&str>) {
    match bind.strip_prefix(UNIX_PREFIX) {
        Some(addr) => {
            ctx.check(&path.key("bind"), unix_address(addr));
        }
        None => ctx.err(
            &path.key("bind"),
            Invalid::Other(format!(
                "port 0 needs a unix socket bind address (unix://PATH), not {bind:?}"
            )),
        ),
    }
    if matches!(mode, Some("IPTABLES")) {
        ctx.err(
            &path.key("captureMode"),
            Invalid::Other("a unix socket listener needs captureMode DEFAULT or NONE".into()),
        );
    }
}

/// The listener's `namespace/dnsName` hosts, and istiod's warnings for entries another one covers.
fn egress_hosts(ctx: &mut Ctx<'_>, path: &FieldPath, hosts: &[String]) {
    if hosts.is_empty() {
        ctx.err(
            path,
            Invalid::Other("an egress listener needs at least one host".into()),
        );
        return;
    }
    // namespace -> hosts seen so far (exclusions `~ns/...` are not counted).
    let mut seen: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
    for (j, entry) in hosts.iter().enumerate() {
        let hp = path.index(j);
        if let Some((ns, host)) = entry.split_once('/').filter(|(ns, _)| !ns.starts_with('~')) {
            let ns = if ns == "." {
                ctx.ns().to_string()
            } else {
                ns.to_string()
            };
            let list = seen.entry(ns).or_default();
            let covered = if host == "*" {
                !list.is_empty()
            } else {
                list.contains(&host) || list.contains(&"*")
            };
            if covered {
                ctx.warn(
                    &hp,
                    format!(
                        "duplicated egress host {entry:?}: an earlier entry already imports it"
                    ),
                );
            }
            list.push(host);
        }
        sidecar_egress_host(ctx, &hp, entry);
    }
    if seen.get("*").is_some_and(|l| l.contains(&"*")) && seen.len() != 1 {
        ctx.warn(
            path,
            "\"*/*\" imports everything: the other hosts of this listener add nothing",
        );
    }
}

// ---------------------------------------------------------------------------------------------------------
// Shared by both listener kinds.

/// istiod rejects any `targetPort` on a Sidecar (0 is unset).
fn target_port(ctx: &mut Ctx<'_>, path: &FieldPath, port: &w::ServiceEntryPort) {
    if let Some(t) = port.target_port {
        if t < 0 || t > i64::from(u32::MAX) {
            ctx.err(&path.key("targetPort"), InvalidPort::OutOfRange(t));
        } else if t > 0 {
            ctx.err(
                &path.key("targetPort"),
                Invalid::Other("targetPort has no effect on a Sidecar and must not be set".into()),
            );
        }
    }
}

/// The optional port name (a DNS-1123 label, either case) and protocol (one istiod knows).
fn port_name_and_protocol(ctx: &mut Ctx<'_>, path: &FieldPath, port: &w::ServiceEntryPort) {
    if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty()) {
        if !v::is_dns1123_label(&name.to_ascii_lowercase()) {
            ctx.err(
                &path.key("name"),
                Invalid::Other(format!(
                    "invalid port name {name:?}: must be a DNS-1123 label"
                )),
            );
        }
    }
    if let Some(p) = port.protocol.as_deref().filter(|p| !p.is_empty()) {
        let known = matches!(
            p.to_ascii_lowercase().as_str(),
            "tcp"
                | "udp"
                | "grpc"
                | "grpc-web"
                | "http"
                | "http_proxy"
                | "http2"
                | "https"
                | "tls"
                | "mongo"
                | "redis"
                | "mysql"
        );
        if !known {
            ctx.err(
                &path.key("protocol"),
                Invalid::Other(format!("unsupported protocol {p:?}")),
            );
        }
    }
}

fn capture_mode(ctx: &mut Ctx<'_>, path: &FieldPath, mode: Option<&str>) {
    if let Some(mode) = mode {
        enum_value(
            ctx,
            path,
            mode,
            &["DEFAULT", "IPTABLES", "NONE"],
            "DEFAULT, IPTABLES, NONE",
        );
    }
}

/// A schema enum: `value` must be one of `allowed` (exact case).
fn enum_value(
    ctx: &mut Ctx<'_>,
    path: &FieldPath,
    value: &str,
    allowed: &[&str],
    listed: &'static str,
) {
    if !allowed.contains(&value) {
        ctx.err(
            path,
            Invalid::Enum {
                value: value.to_string(),
                allowed: listed,
            },
        );
    }
}

// ---------------------------------------------------------------------------------------------------------
// Outbound traffic policy.

fn outbound_traffic_policy(
    ctx: &mut Ctx<'_>,
    path: &FieldPath,
    o: &w::SidecarOutboundTrafficPolicy,
) -> Option<OutboundTrafficPolicy> {
    let mode = outbound_mode(ctx, &path.key("mode"), o.mode.as_deref(), "REGISTRY_ONLY");
    if let Some(proxy) = &o.egress_proxy {
        let pp = path.key("egressProxy");
        let before = ctx.errors.len();
        egress_proxy(ctx, &pp, proxy, o.mode.as_deref());
        if ctx.errors.len() == before {
            // Valid for istiod, but ignoring it would send unknown destinations straight out
            // instead of through the proxy the user requires.
            ctx.err(
                &pp,
                Invalid::Unsupported("outboundTrafficPolicy.egressProxy".into()),
            );
        }
    }
    mode
}

fn egress_proxy(ctx: &mut Ctx<'_>, path: &FieldPath, proxy: &w::Destination, mode: Option<&str>) {
    if mode != Some("ALLOW_ANY") {
        ctx.err(
            path,
            Invalid::Other("egressProxy needs outboundTrafficPolicy.mode ALLOW_ANY".into()),
        );
        return;
    }
    let host = proxy.host.as_deref().unwrap_or("");
    ctx.check(&path.key("host"), v::istio_fqdn(host));
    let Some(port) = &proxy.port else {
        ctx.err(&path.key("port"), InvalidPort::Missing);
        return;
    };
    if let Some(subset) = proxy.subset.as_deref().filter(|s| !s.is_empty()) {
        if !v::is_dns1123_label(&subset.to_ascii_lowercase()) {
            ctx.err(
                &path.key("subset"),
                Invalid::Other(format!("invalid subset name {subset:?}")),
            );
        }
    }
    ctx.check(
        &path.key("port").key("number"),
        v::port(port.number.unwrap_or(0)),
    );
}

/// `ALLOW_ANY` / `REGISTRY_ONLY`; an absent mode means `default` (which differs between Sidecar's proto
/// enum, where 0 is REGISTRY_ONLY, and Keel's MeshConfig, where it is ALLOW_ANY).
pub(super) fn outbound_mode(
    ctx: &mut Ctx<'_>,
    path: &FieldPath,
    mode: Option<&str>,
    default: &str,
) -> Option<OutboundTrafficPolicy> {
    match mode.unwrap_or(default) {
        "ALLOW_ANY" => Some(OutboundTrafficPolicy::AllowAny),
        "REGISTRY_ONLY" => Some(OutboundTrafficPolicy::RegistryOnly),
        other => {
            ctx.err(
                path,
                Invalid::Enum {
                    value: other.to_string(),
                    allowed: "ALLOW_ANY, REGISTRY_ONLY",
                },
            );
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Accepted, not applied.

/// The Sidecar fields Keel accepts and does not apply: Keel handles outbound traffic, scoped by the egress
/// listeners' hosts and ports, and captures it in the kernel rather than on listeners.
fn sidecar_not_applied(ctx: &mut Ctx<'_>, spec: &w::SidecarSpec) {
    const OUTBOUND_ONLY: &str = "Keel handles outbound traffic only";
    let sp = FieldPath::root().key("spec");
    if !spec.ingress.is_empty() {
        ctx.not_applied(&sp.key("ingress"), Some(OUTBOUND_ONLY));
    }
    if let Some(pool) = &spec.inbound_connection_pool {
        for (field, _) in set_fields(pool, &sp.key("inboundConnectionPool")) {
            ctx.not_applied(&field, Some(OUTBOUND_ONLY));
        }
    }
    for (i, e) in spec.egress.iter().enumerate() {
        let ep = sp.key("egress").index(i);
        let unix_socket = e.port.as_ref().is_some_and(|p| p.number.unwrap_or(0) == 0);
        if unix_socket {
            ctx.not_applied(
                &ep.key("bind"),
                Some("Keel does not listen on unix sockets; connections to this listener's hosts are not imported through it"),
            );
        } else if e.bind.is_some() {
            ctx.not_applied(
                &ep.key("bind"),
                Some("Keel's kernel redirect captures by destination, not on a listener address"),
            );
        }
        if e.capture_mode.is_some() {
            ctx.not_applied(
                &ep.key("captureMode"),
                Some("Keel's kernel redirect captures every connection to a meshed destination"),
            );
        }
        let Some(port) = &e.port else { continue };
        if port.protocol.is_some() {
            ctx.not_applied(
                &ep.key("port").key("protocol"),
                Some("Keel takes the protocol from the destination's port"),
            );
        }
    }
}
