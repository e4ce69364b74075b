//! The access log (istio-semantics §4.3, §4.4) and trace propagation (§4.6): with `keel run
//! --access-log`, known traffic gives Istio's default text lines with the exact status, response
//! flags, code details, route names, cluster, addresses (the kernel-attested client pod as the
//! downstream remote address) and request ids; a TCP connection gives its own line. The client's
//! `x-request-id` is kept, a missing one is generated and is the same in the log and at the
//! upstream; B3 and W3C trace headers reach the upstream byte for byte. The log is off by default,
//! and the `MeshConfig` turns it on (JSON, Istio's keys) without a restart.
//!
//! Subnet indices 160..=169 belong to this file (160..=162 used).
//!
//! With `--otlp-endpoint`, a fake collector on loopback receives the proxy's span, joined to the
//! caller's W3C or B3 trace.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::{reviews_vip, vip, Fixture};
use keel_tests::config::service_yaml;
use keel_tests::{HttpGet, Keel, KeelOptions, SvcPort};

const PREFIX: &str = "ktal";

/// Named rules, one per outcome the test checks.
const ROUTES: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
spec:
  hosts:
  - reviews
  http:
  - name: abort
    match:
    - uri:
        prefix: /abort
    fault:
      abort:
        httpStatus: 418
        percentage:
          value: 100
    route:
    - destination:
        host: reviews
  - name: delayed
    match:
    - uri:
        prefix: /delayed
    fault:
      delay:
        fixedDelay: 50ms
        percentage:
          value: 100
    route:
    - destination:
        host: reviews
  - name: slow
    match:
    - uri:
        prefix: /slow
    timeout: 300ms
    route:
    - destination:
        host: reviews
  - name: ok
    match:
    - name: plain
      uri:
        prefix: /ok
    route:
    - destination:
        host: reviews
";

/// Trace context headers as a client application sends them.
const TRACE_HEADERS: [(&str, &str); 8] = [
    (
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ),
    ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
    ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
    ("x-b3-spanid", "e457b5a2e4d86bd1"),
    ("x-b3-parentspanid", "05e3ac9a4f6e3b90"),
    ("x-b3-sampled", "1"),
    ("x-b3-flags", "0"),
    (
        "b3",
        "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
    ),
];

/// One line of Istio's default text format, split into its 22 fields.
#[derive(Debug)]
struct Line {
    fields: Vec<String>,
}

impl Line {
    fn parse(text: &str) -> Result<Line> {
        let mut fields = Vec::new();
        let mut chars = text.chars().peekable();
        while let Some(&c) = chars.peek() {
            match c {
                ' ' => {
                    chars.next();
                }
                '[' | '"' => {
                    let close = if c == '[' { ']' } else { '"' };
                    chars.next();
                    let mut f = String::new();
                    loop {
                        match chars.next() {
                            Some(ch) if ch == close => break,
                            Some(ch) => f.push(ch),
                            None => bail!("unterminated field in {text:?}"),
                        }
                    }
                    fields.push(f);
                }
                _ => {
                    let mut f = String::new();
                    while let Some(&ch) = chars.peek() {
                        if ch == ' ' {
                            break;
                        }
                        f.push(ch);
                        chars.next();
                    }
                    fields.push(f);
                }
            }
        }
        ensure!(fields.len() == 22, "{} fields in {text:?}", fields.len());
        Ok(Line { fields })
    }

    fn field(&self, i: usize) -> &str {
        self.fields.get(i).map_or("", String::as_str)
    }
    fn request(&self) -> &str {
        self.field(1)
    }
    fn code(&self) -> &str {
        self.field(2)
    }
    fn flags(&self) -> &str {
        self.field(3)
    }
    fn details(&self) -> &str {
        self.field(4)
    }
    fn request_id(&self) -> &str {
        self.field(13)
    }
    fn upstream_host(&self) -> &str {
        self.field(15)
    }
    fn cluster(&self) -> &str {
        self.field(16)
    }
    fn downstream_local(&self) -> &str {
        self.field(18)
    }
    fn downstream_remote(&self) -> &str {
        self.field(19)
    }
    fn route(&self) -> &str {
        self.field(21)
    }
}

/// The access log lines written so far (keel's stdout).
fn lines(keel: &Keel) -> Result<Vec<Line>> {
    keel.stdout()
        .lines()
        .filter(|l| l.starts_with('['))
        .map(Line::parse)
        .collect()
}

/// The one line whose request field is `request` (e.g. `GET /ok HTTP/1.1`).
fn only<'a>(all: &'a [Line], request: &str) -> Result<&'a Line> {
    let found: Vec<&Line> = all.iter().filter(|l| l.request() == request).collect();
    match found.as_slice() {
        [one] => Ok(one),
        other => bail!("{} lines for {request:?}: {all:#?}", other.len()),
    }
}

/// A UUID v4 in Envoy's text form.
fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && [8, 13, 18, 23].iter().all(|&i| b.get(i) == Some(&b'-'))
        && b.get(14) == Some(&b'4')
        && s.chars()
            .enumerate()
            .all(|(i, c)| [8, 13, 18, 23].contains(&i) || c.is_ascii_hexdigit())
}

fn with_extra_args(fx: &Fixture, args: &[&str]) -> Result<Keel> {
    let out = keel_tests::keel::validate(fx.config.path())?;
    ensure!(
        out.code == Some(0),
        "keel rejects the config:\n{}",
        out.combined()
    );
    let mut opts = KeelOptions::new(&fx.net, fx.config.path())?;
    opts.extra_args = args.iter().map(|a| a.to_string()).collect();
    Keel::start_with(&fx.net, opts)
}

#[test]
fn text_lines_have_istios_fields_flags_and_request_ids() -> Result<()> {
    let mut fx = Fixture::reviews_logged(PREFIX, 160, &["v1"])?;
    let backend = fx
        .specs
        .iter()
        .find(|s| s.pod.name == "reviews-v1")
        .map(|s| s.pod.ip);
    let echo = fx.add_pod("echo-v1", 12, &[("app", "echo")], &[], false)?;
    fx.servers.push(fx.agent.tcp_echo_server(&echo, 7000)?);
    fx.add_service(service_yaml(
        "echo",
        "default",
        Ipv4Addr::new(10, 96, 0, 40),
        &[SvcPort {
            name: "tcp",
            port: 7000,
            target_port: 7000,
        }],
        &[("app", "echo")],
    ))?;
    // A Service whose selector matches no pod: no endpoint (503 UH).
    fx.add_service(service_yaml(
        "ghost",
        "default",
        Ipv4Addr::new(10, 96, 0, 41),
        &[SvcPort {
            name: "http",
            port: 9080,
            target_port: 9080,
        }],
        &[("app", "ghost")],
    ))?;
    fx.config.write("virtualservice.yaml", ROUTES)?;
    let keel = with_extra_args(&fx, &["--access-log", "/dev/stdout"])?;
    let backend_ip = backend.context("no backend pod")?;

    let reviews =
        |path: &str| HttpGet::new(format!("http://reviews:9080{path}")).connect_to(reviews_vip());
    // The client's id and trace context.
    let mut traced = reviews("/ok/traced").header("x-request-id", "client-chosen-id-1");
    for (k, v) in TRACE_HEADERS {
        traced = traced.header(k, v);
    }
    ensure!(fx.get(&traced)?.status(200) == 1);
    ensure!(fx.get(&reviews("/ok/generated"))?.status(200) == 1);
    ensure!(fx.get(&reviews("/nope"))?.status(404) == 1);
    ensure!(fx.get(&reviews("/abort"))?.status(418) == 1);
    ensure!(fx.get(&reviews("/delayed"))?.status(200) == 1);
    ensure!(fx.get(&reviews("/slow/delay/2000"))?.status(504) == 1);
    let ghost = HttpGet::new("http://ghost:9080/x").connect_to(vip(41, 9080));
    ensure!(fx.get(&ghost)?.status(503) == 1);
    let e = fx.agent.tcp_echo(&fx.sleep, vip(40, 7000), 300)?;
    ensure!(e.error.is_none() && e.received == 300, "tcp echo: {e:?}");

    // Lines are written when each response ends; the TCP line when the connection closes.
    common::wait_until("eight access log lines", Duration::from_secs(5), || {
        Ok(lines(&keel)?.len() >= 8)
    })?;
    let all = lines(&keel)?;
    for l in &all {
        eprintln!("{l:?}");
    }
    ensure!(all.len() == 8, "{all:#?}");
    let sleep_ip = fx.sleep.ip.to_string();
    for l in &all {
        let remote: SocketAddr = l.downstream_remote().parse().context("remote address")?;
        ensure!(
            remote.ip().to_string() == sleep_ip,
            "the client pod is the downstream remote address: {l:?}"
        );
    }
    let reviews_cluster = "outbound|9080||reviews.default.svc.cluster.local";
    let upstream = format!("{backend_ip}:9080");

    // 200 with the client's id, routed by the named rule and block.
    let ok = only(&all, "GET /ok/traced HTTP/1.1")?;
    ensure!(
        (ok.code(), ok.flags(), ok.details()) == ("200", "-", "via_upstream"),
        "{ok:?}"
    );
    ensure!(ok.request_id() == "client-chosen-id-1", "{ok:?}");
    ensure!(ok.route() == "ok.plain", "{ok:?}");
    ensure!(
        ok.cluster() == reviews_cluster && ok.upstream_host() == upstream,
        "{ok:?}"
    );
    ensure!(ok.downstream_local() == reviews_vip().to_string(), "{ok:?}");
    // The upstream saw the client's id and every trace header exactly as sent.
    let records = fx.log("reviews-v1")?.wait_for(4, Duration::from_secs(5))?;
    let seen = records
        .iter()
        .find(|r| r.path == "/ok/traced")
        .context("upstream record of /ok/traced")?;
    ensure!(
        seen.header("x-request-id") == Some("client-chosen-id-1"),
        "{seen:?}"
    );
    for (k, v) in TRACE_HEADERS {
        ensure!(
            seen.header(k) == Some(v),
            "{k} at the upstream: {:?}",
            seen.header(k)
        );
    }

    // No id from the client: a UUID v4, the same in the log and at the upstream.
    let generated = only(&all, "GET /ok/generated HTTP/1.1")?;
    ensure!(is_uuid_v4(generated.request_id()), "{generated:?}");
    let seen = records
        .iter()
        .find(|r| r.path == "/ok/generated")
        .context("upstream record of /ok/generated")?;
    ensure!(
        seen.header("x-request-id") == Some(generated.request_id()),
        "{seen:?} vs {generated:?}"
    );

    let nr = only(&all, "GET /nope HTTP/1.1")?;
    ensure!(
        (
            nr.code(),
            nr.flags(),
            nr.details(),
            nr.route(),
            nr.upstream_host()
        ) == ("404", "NR", "route_not_found", "-", "-"),
        "{nr:?}"
    );
    ensure!(
        is_uuid_v4(nr.request_id()),
        "a local reply has an id too: {nr:?}"
    );
    let fi = only(&all, "GET /abort HTTP/1.1")?;
    ensure!(
        (fi.code(), fi.flags(), fi.details(), fi.route())
            == ("418", "FI", "fault_filter_abort", "abort"),
        "{fi:?}"
    );
    let di = only(&all, "GET /delayed HTTP/1.1")?;
    ensure!(
        (di.code(), di.flags(), di.details(), di.route())
            == ("200", "DI", "via_upstream", "delayed"),
        "{di:?}"
    );
    let ut = only(&all, "GET /slow/delay/2000 HTTP/1.1")?;
    ensure!(
        (ut.code(), ut.flags(), ut.details(), ut.route())
            == ("504", "UT", "response_timeout", "slow"),
        "{ut:?}"
    );
    let uh = only(&all, "GET /x HTTP/1.1")?;
    ensure!(
        (
            uh.code(),
            uh.flags(),
            uh.details(),
            uh.route(),
            uh.cluster()
        ) == (
            "503",
            "UH",
            "no_healthy_upstream",
            "default",
            "outbound|9080||ghost.default.svc.cluster.local"
        ),
        "{uh:?}"
    );

    // The TCP connection: no HTTP fields, the bytes both ways, the endpoint and the cluster.
    let tcp = only(&all, "- - -")?;
    ensure!(
        (tcp.code(), tcp.flags(), tcp.field(7), tcp.field(8)) == ("0", "-", "300", "300"),
        "{tcp:?}"
    );
    ensure!(
        tcp.upstream_host() == format!("{}:7000", echo.ip)
            && tcp.cluster() == "outbound|7000||echo.default.svc.cluster.local"
            && tcp.downstream_local() == "10.96.0.40:7000",
        "{tcp:?}"
    );
    Ok(())
}

#[test]
fn off_by_default_and_json_from_the_mesh_config_without_restart() -> Result<()> {
    let fx = Fixture::reviews(PREFIX, 161, &["v1"])?;
    let keel = fx.start_keel_strict()?;
    let get = |path: &str, id: Option<&str>| -> Result<()> {
        let mut req = HttpGet::new(format!("http://reviews:9080{path}")).connect_to(reviews_vip());
        if let Some(id) = id {
            req = req.header("x-request-id", id);
        }
        let r = fx.get(&req)?;
        ensure!(r.status(200) == 1, "{path}: {:?}", r.by_status);
        Ok(())
    };
    get("/before", None)?;
    let file = fx.net.work_dir().join("access.jsonl");
    // Nothing anywhere while the log is off.
    std::thread::sleep(Duration::from_millis(300));
    ensure!(keel.stdout().is_empty(), "stdout: {:?}", keel.stdout());
    ensure!(!file.exists());

    let path = file.display().to_string();
    fx.write_mesh(&[&format!("accessLogFile: {path}"), "accessLogEncoding: JSON"])?;
    // The reload applies within a second; requests until then are not logged.
    common::wait_until("the access log file", Duration::from_secs(5), || {
        get("/probe", None)?;
        Ok(file.exists())
    })?;
    get("/after", Some("json-id-7"))?;
    let mut after = None;
    common::wait_until("the /after line", Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&file)?;
        for line in text.lines() {
            let v: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("not JSON: {line:?}"))?;
            if v["path"] == "/after" {
                after = Some(v);
            }
        }
        Ok(after.is_some())
    })?;
    let v = after.context("no /after line")?;
    let keys: Vec<&str> = v
        .as_object()
        .context("not an object")?
        .keys()
        .map(String::as_str)
        .collect();
    let istio_keys = [
        "authority",
        "bytes_received",
        "bytes_sent",
        "connection_termination_details",
        "downstream_local_address",
        "downstream_remote_address",
        "duration",
        "method",
        "path",
        "protocol",
        "request_id",
        "requested_server_name",
        "response_code",
        "response_code_details",
        "response_flags",
        "route_name",
        "start_time",
        "upstream_cluster",
        "upstream_host",
        "upstream_local_address",
        "upstream_service_time",
        "upstream_transport_failure_reason",
        "user_agent",
        "x_forwarded_for",
    ];
    ensure!(keys == istio_keys, "{keys:?}");
    ensure!(
        v["response_code"] == 200 && v["response_flags"] == "-",
        "{v}"
    );
    ensure!(
        v["request_id"] == "json-id-7" && v["method"] == "GET",
        "{v}"
    );
    ensure!(
        v["route_name"] == "default" && v["authority"] == "reviews:9080",
        "{v}"
    );
    ensure!(
        v["downstream_remote_address"]
            .as_str()
            .is_some_and(|a| a.starts_with(&format!("{}:", fx.sleep.ip))),
        "{v}"
    );
    ensure!(v["x_forwarded_for"].is_null(), "{v}");
    // Still nothing on stdout: the file is the only output.
    ensure!(keel.stdout().is_empty(), "stdout: {:?}", keel.stdout());
    Ok(())
}

/// A fake OTLP collector on loopback: answers every `POST` with 200 and keeps the bodies.
struct Collector {
    addr: SocketAddr,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

impl Collector {
    fn start() -> Result<Collector> {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = std::sync::Arc::clone(&bodies);
        // Bounded: at most 64 requests, each read with a timeout; the thread ends with the test.
        std::thread::spawn(move || {
            for stream in listener.incoming().take(64) {
                let Ok(stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let Ok(writer) = stream.try_clone() else {
                    continue;
                };
                let mut reader = BufReader::new(stream);
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                }
                let mut body = vec![0u8; length.min(16 << 20)];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                if let Ok(mut b) = kept.lock() {
                    b.push((
                        request_line.trim().to_string(),
                        String::from_utf8_lossy(&body).into_owned(),
                    ));
                }
                let mut w = writer;
                let _ = w.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Ok(Collector { addr, bodies })
    }

    /// Every span received so far.
    fn spans(&self) -> Result<Vec<serde_json::Value>> {
        let bodies = self
            .bodies
            .lock()
            .map_err(|_| anyhow::anyhow!("collector lock poisoned"))?
            .clone();
        let mut out = Vec::new();
        for (line, body) in bodies {
            ensure!(line == "POST /v1/traces HTTP/1.1", "collector got {line:?}");
            let v: serde_json::Value = serde_json::from_str(&body)?;
            for rs in v["resourceSpans"].as_array().into_iter().flatten() {
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    out.extend(ss["spans"].as_array().into_iter().flatten().cloned());
                }
            }
        }
        Ok(out)
    }
}

fn attribute<'a>(span: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

#[test]
fn spans_reach_the_collector_with_the_callers_trace() -> Result<()> {
    let fx = Fixture::reviews(PREFIX, 162, &["v1"])?;
    let collector = Collector::start()?;
    let endpoint = format!("http://{}", collector.addr);
    let keel = with_extra_args(&fx, &["--otlp-endpoint", &endpoint])?;
    let w3c = HttpGet::new("http://reviews:9080/traced")
        .connect_to(reviews_vip())
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("x-request-id", "span-rid-1");
    ensure!(fx.get(&w3c)?.status(200) == 1);
    let b3 = HttpGet::new("http://reviews:9080/b3")
        .connect_to(reviews_vip())
        .header("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7")
        .header("x-b3-spanid", "e457b5a2e4d86bd1")
        .header("x-b3-sampled", "1");
    ensure!(fx.get(&b3)?.status(200) == 1);

    let mut spans = Vec::new();
    common::wait_until(
        "two spans at the collector",
        Duration::from_secs(10),
        || {
            spans = collector.spans()?;
            Ok(spans.len() >= 2)
        },
    )?;
    let find = |trace: &str| spans.iter().find(|s| s["traceId"] == trace);
    let w = find("4bf92f3577b34da6a3ce929d0e0e4736").context("no span of the W3C trace")?;
    ensure!(w["parentSpanId"] == "00f067aa0ba902b7", "{w}");
    ensure!(w["kind"] == 3, "{w}");
    ensure!(
        w["name"] == "reviews.default.svc.cluster.local:9080/*",
        "{w}"
    );
    let span_id = w["spanId"].as_str().unwrap_or_default();
    ensure!(span_id.len() == 16 && span_id != "00f067aa0ba902b7", "{w}");
    let text = |k: &str| attribute(w, k).map(|v| v.to_string());
    ensure!(
        text("http.method") == Some(r#"{"stringValue":"GET"}"#.into()),
        "{w}"
    );
    ensure!(
        text("http.url") == Some(r#"{"stringValue":"http://reviews:9080/traced"}"#.into()),
        "{w}"
    );
    ensure!(
        text("http.status_code") == Some(r#"{"intValue":"200"}"#.into()),
        "{w}"
    );
    ensure!(
        text("upstream_cluster")
            == Some(r#"{"stringValue":"outbound|9080||reviews.default.svc.cluster.local"}"#.into()),
        "{w}"
    );
    ensure!(
        text("istio.source_workload") == Some(r#"{"stringValue":"sleep"}"#.into()),
        "{w}"
    );
    ensure!(
        text("istio.source_namespace") == Some(r#"{"stringValue":"default"}"#.into()),
        "{w}"
    );
    ensure!(
        text("guid:x-request-id") == Some(r#"{"stringValue":"span-rid-1"}"#.into()),
        "{w}"
    );
    ensure!(
        text("response_flags") == Some(r#"{"stringValue":"-"}"#.into()),
        "{w}"
    );
    let b = find("80f198ee56343ba864fe8b2a57d3eff7").context("no span of the B3 trace")?;
    ensure!(b["parentSpanId"] == "e457b5a2e4d86bd1", "{b}");
    drop(keel);
    Ok(())
}
