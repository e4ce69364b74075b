//! Fuzz targets: each takes arbitrary bytes and panics only on a bug. The cargo-fuzz crate in
//! `fuzz/` calls them under libFuzzer; the tests below replay the committed corpus
//! (`fuzz/corpus/<target>/`) and a deterministic batch of generated inputs through the same
//! functions, so every crash once found stays a test.
//!
//! - [`config`]: config conversion and validation (`policy::build`) and routing-table building on
//!   arbitrary YAML text;
//! - [`router`]: VirtualService first-match routing on uri, method and headers, compared with
//!   [`reference_match`], a straightforward re-implementation;
//! - [`http1`]: the HTTP ingress (`l7::serve`, HTTP/1 and h2c) in-process over a duplex pipe;
//! - [`kernel_record`]: the kernel's connection record as user space decodes it.
//!
//! Header and path normalisation has no target yet (its module is built on another branch): add
//! one here and in `fuzz/` when it lands.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::HeaderMap;

use crate::accept::ConnContext;
use crate::admin::Stats;
use crate::routing::{self, RequestFacts, RouteDecision};
use crate::state::State;

/// Names of the targets, as `fuzz/fuzz_targets/<name>.rs` and `fuzz/corpus/<name>/`.
pub const TARGETS: &[&str] = &["config", "router", "http1", "kernel_record"];

/// Runs target `name` on `data`; false for an unknown name.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "config" => config(data),
        "router" => router(data),
        "http1" => http1(data),
        "kernel_record" => kernel_record(data),
        _ => return false,
    }
    true
}

/// Config conversion and validation on arbitrary text, then the node's routing tables.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let report = crate::policy::build(&crate::source::split_documents("fuzz.yaml", text));
    // Every error names a resource and a reason (it is shown to users as is).
    for e in &report.errors {
        assert!(!e.to_string().is_empty());
    }
    let snapshot = Arc::new(report.snapshot);
    let state = State::default();
    let pods: HashMap<u64, crate::policy::PodId> = snapshot
        .pod_by_name
        .values()
        .enumerate()
        .map(|(i, &pod)| (i as u64 + 1, pod))
        .collect();
    drop(state.publish(snapshot, crate::state::PodCgroups::captured_only(pods)));
}

/// A reader of fuzz bytes that never runs out (zeros after the end).
struct Draw<'a>(&'a [u8]);

impl Draw<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn pick<'t, T>(&mut self, options: &'t [T]) -> &'t T {
        &options[usize::from(self.byte()) % options.len()]
    }
}

const PATHS: &[&str] = &["/", "/a", "/a/", "/ab", "/b", "/a/b", "/A", "/a?x", "/b/a"];
const METHODS: &[&str] = &["GET", "POST", "PUT"];
const HEADER_NAMES: &[&str] = &["x-a", "x-b"];
const HEADER_VALUES: &[&str] = &["1", "12", "2", "a b"];

/// How a generated rule matches a string.
#[derive(Debug, Clone)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
}

impl StringMatch {
    fn matches(&self, s: &str) -> bool {
        match self {
            StringMatch::Exact(v) => s == v,
            StringMatch::Prefix(v) => s.starts_with(v.as_str()),
        }
    }

    fn yaml(&self) -> String {
        match self {
            StringMatch::Exact(v) => format!("{{exact: {v:?}}}"),
            StringMatch::Prefix(v) => format!("{{prefix: {v:?}}}"),
        }
    }
}

/// One `match` block of a generated rule.
#[derive(Debug, Clone, Default)]
pub struct Block {
    pub uri: Option<StringMatch>,
    pub method: Option<String>,
    pub header: Option<(String, StringMatch)>,
}

/// A generated request.
#[derive(Debug, Clone)]
pub struct Probe {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

/// The rule that Istio's first-match semantics pick: the first rule with no blocks or with a
/// block whose every condition holds. `uri` is matched against the path without its query;
/// a header condition needs the header present, and a repeated header is matched as Envoy does,
/// its values joined with `,`.
pub fn reference_match(rules: &[Vec<Block>], probe: &Probe) -> Option<usize> {
    let path = probe.path.split('?').next().unwrap_or("");
    let joined = |name: &str| {
        let values: Vec<&str> = probe
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    };
    let block_matches = |b: &Block| {
        b.uri.as_ref().is_none_or(|m| m.matches(path))
            && b.method.as_ref().is_none_or(|m| *m == probe.method)
            && b.header
                .as_ref()
                .is_none_or(|(name, m)| joined(name).is_some_and(|v| m.matches(&v)))
    };
    rules
        .iter()
        .position(|blocks| blocks.is_empty() || blocks.iter().any(block_matches))
}

fn draw_match(d: &mut Draw<'_>, options: &[&str]) -> StringMatch {
    let v = d.pick(options).to_string();
    if d.byte().is_multiple_of(2) {
        StringMatch::Exact(v)
    } else {
        StringMatch::Prefix(v)
    }
}

/// Rules and a request drawn from fuzz bytes.
fn draw_case(data: &[u8]) -> (Vec<Vec<Block>>, Probe) {
    let mut d = Draw(data);
    let rules = (0..1 + d.byte() % 4)
        .map(|_| {
            (0..d.byte() % 3)
                .map(|_| {
                    let has = d.byte();
                    Block {
                        uri: (has & 1 != 0).then(|| {
                            draw_match(&mut d, &PATHS[..7]) // no query in a uri condition
                        }),
                        method: (has & 2 != 0).then(|| d.pick(METHODS).to_string()),
                        header: (has & 4 != 0).then(|| {
                            let name = d.pick(HEADER_NAMES).to_string();
                            (name, draw_match(&mut d, HEADER_VALUES))
                        }),
                    }
                })
                .collect()
        })
        .collect();
    let method = d.pick(METHODS).to_string();
    let path = d.pick(PATHS).to_string();
    let headers = (0..d.byte() % 3)
        .map(|_| {
            (
                d.pick(HEADER_NAMES).to_string(),
                d.pick(HEADER_VALUES).to_string(),
            )
        })
        .collect();
    (
        rules,
        Probe {
            method,
            path,
            headers,
        },
    )
}

/// The Service `reviews` (10.96.1.1:9080), a client pod `default/sleep`, and a VirtualService
/// whose `http:` list is `http_rules`.
fn mesh_yaml(http_rules: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: reviews, namespace: default}}\n\
         spec:\n  clusterIP: 10.96.1.1\n  selector: {{app: reviews}}\n  \
         ports:\n  - {{name: http, port: 9080, targetPort: 9080}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: sleep, namespace: default, labels: {{app: sleep}}}}\n\
         status: {{phase: Running, podIP: 127.0.0.9}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
         metadata: {{name: reviews, namespace: default}}\nspec:\n  hosts: [reviews]\n  http:\n{http_rules}"
    )
}

fn rules_yaml(rules: &[Vec<Block>]) -> String {
    let mut out = String::new();
    for (i, blocks) in rules.iter().enumerate() {
        out.push_str(&format!("  - name: r{i}\n"));
        if !blocks.is_empty() {
            out.push_str("    match:\n");
            for b in blocks {
                // An empty block matches everything, as in Istio.
                out.push_str("    - {");
                let mut fields = Vec::new();
                if let Some(u) = &b.uri {
                    fields.push(format!("uri: {}", u.yaml()));
                }
                if let Some(m) = &b.method {
                    fields.push(format!("method: {{exact: {m}}}"));
                }
                if let Some((n, m)) = &b.header {
                    fields.push(format!("headers: {{{n}: {}}}", m.yaml()));
                }
                out.push_str(&fields.join(", "));
                out.push_str("}\n");
            }
        }
        out.push_str(&format!("    directResponse: {{status: {}}}\n", 200 + i));
    }
    out
}

/// A node state serving `yaml`, and the client view of `default/sleep` (cgroup 7).
fn client_state(yaml: &str) -> Option<(Arc<State>, Arc<crate::routing::ClientView>)> {
    let report = crate::policy::build(&crate::source::split_documents("fuzz.yaml", yaml));
    if !report.errors.is_empty() {
        return None;
    }
    let snapshot = Arc::new(report.snapshot);
    let sleep = *snapshot.pod_by_name.get("default/sleep")?;
    let state = Arc::new(State::default());
    drop(state.publish(
        Arc::clone(&snapshot),
        crate::state::PodCgroups::captured_only(HashMap::from([(7, sleep)])),
    ));
    let view = Arc::clone(state.load().routes.view_for_pod(sleep)?);
    Some((state, view))
}

/// Routing decisions equal the reference's first match.
pub fn router(data: &[u8]) {
    let (rules, probe) = draw_case(data);
    let yaml = mesh_yaml(&rules_yaml(&rules));
    let Some((_state, view)) = client_state(&yaml) else {
        panic!("the generated config is valid Istio and must be accepted:\n{yaml}");
    };
    let mut headers = HeaderMap::new();
    for (n, v) in &probe.headers {
        if let (Ok(n), Ok(v)) = (
            http::header::HeaderName::from_bytes(n.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            headers.append(n, v);
        }
    }
    let facts = RequestFacts {
        method: &probe.method,
        path_and_query: &probe.path,
        authority: "reviews:9080",
        scheme: "http",
        headers: &headers,
    };
    let dst = SocketAddr::from(([10, 96, 1, 1], 9080));
    let got = match routing::route_http(&view, dst, &facts) {
        RouteDecision::Local { route, .. } => route
            .spec
            .name
            .as_deref()
            .and_then(|n| n.strip_prefix('r'))
            .and_then(|i| i.parse::<usize>().ok()),
        RouteDecision::NoRoute => None,
        other => panic!("a directResponse-only VirtualService routed to {other:?}"),
    };
    let want = reference_match(&rules, &probe);
    assert_eq!(
        got, want,
        "routing disagrees with first-match for {probe:?} under\n{yaml}"
    );
}

/// The connection context every `http1` input is served under: `reviews` answers every request
/// with a direct response (no upstream), except `/a` prefixed paths which get a 301 redirect.
fn ingress_context() -> Option<&'static (Arc<State>, Arc<crate::routing::ClientView>)> {
    static CTX: OnceLock<Option<(Arc<State>, Arc<crate::routing::ClientView>)>> = OnceLock::new();
    CTX.get_or_init(|| {
        client_state(&mesh_yaml(
            "  - match: [{uri: {prefix: /a}}]\n    redirect: {uri: /b}\n  \
             - directResponse: {status: 200, body: {string: hello}}\n",
        ))
    })
    .as_ref()
}

/// The runtime inputs are served on. Under the fuzzer and in tests its clock is paused (it jumps
/// ahead whenever every task waits), so timeouts cost no real time.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        let mut builder = tokio::runtime::Builder::new_current_thread();
        builder.enable_all();
        #[cfg(any(test, fuzzing))]
        builder.start_paused(true);
        builder
            .build()
            .unwrap_or_else(|e| panic!("cannot start a runtime: {e}"))
    })
}

/// Serves `data` as one client connection's bytes and reads the answer: the server must finish
/// promptly (the header read timeout, or the end of input a second later) and answer a bounded
/// amount.
pub fn http1(data: &[u8]) {
    let (finished, out) = serve_bytes(data);
    assert!(
        finished,
        "the server did not finish within 5 s of the input's end"
    );
    // Each request gets one small answer; a few KiB of input cannot make megabytes of output.
    assert!(
        out.len() <= 1024 + data.len() * 512,
        "{} bytes answered to {} bytes",
        out.len(),
        data.len()
    );
}

/// Serves `data` as one connection; whether the server finished in time, and what it wrote.
fn serve_bytes(data: &[u8]) -> (bool, Vec<u8>) {
    let Some((state, view)) = ingress_context() else {
        panic!("the ingress fixture config must be accepted");
    };
    let stats = Arc::new(Stats::default());
    let admission = crate::admission::Admission::new(
        crate::admission::Limits {
            header_read_timeout: Duration::from_millis(200),
            body_idle_timeout: Duration::from_millis(200),
            ..crate::admission::Limits::default()
        },
        Arc::clone(&stats),
    );
    let ctx = Arc::new(ConnContext {
        state: Arc::clone(state),
        stats,
        metrics: Arc::new(crate::metrics::Metrics::default()),
        original_dst: SocketAddr::from(([10, 96, 1, 1], 9080)),
        peer: SocketAddr::from(([127, 0, 0, 9], 40000)),
        pod_cgroup_id: 7,
        client: crate::upstream::ClientId(7),
        listener: view
            .lookup(SocketAddr::from(([10, 96, 1, 1], 9080)))
            .listener(),
        view: Arc::clone(view),
        budget: admission.unattached(),
    });
    let input = data.to_vec();
    runtime().block_on(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(64 * 1024);
        // Held to the end: a dropped control side reads as a started drain.
        let (drain_control, drain) = crate::accept::DrainControl::new();
        let served = tokio::spawn(super::l7::serve(server, ctx, drain));
        let (mut rd, mut wr) = tokio::io::split(client);
        let writer = tokio::spawn(async move {
            let _ = wr.write_all(&input).await;
            // Pipelined HTTP/1 requests are all answered before the header read timeout closes
            // the connection; HTTP/2 ends at the end of input.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = wr.shutdown().await;
        });
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), async {
            let mut buf = [0u8; 8192];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        writer.abort();
        served.abort();
        drop(drain_control);
        (read.is_ok(), out)
    })
}

/// The kernel's connection record decoded as the accept path decodes it: the destination is the
/// one the words encode, whatever the bytes.
pub fn kernel_record(data: &[u8]) {
    let mut d = Draw(data);
    let mut word = || u32::from_ne_bytes([d.byte(), d.byte(), d.byte(), d.byte()]);
    let original_addr = [word(), word(), word(), word()];
    let original_port = u16::try_from(word() & 0xffff).unwrap_or(0);
    let pod_index = word();
    let pod_cgroup_id = u64::from(word()) << 32 | u64::from(word());
    let value = proxy_common::ConnValue {
        original_addr,
        original_port,
        _pad0: 0,
        pod_index,
        pod_cgroup_id,
        ktime_ns: 0,
        tuple: proxy_common::ConnTuple::ZERO,
        flags: word(),
    };
    let record = crate::ebpf::ConnRecord::from(&value);
    assert_eq!(record.original_dst.port(), original_port);
    assert_eq!(record.pod_cgroup_id, pod_cgroup_id);
    assert_eq!(record.pod_index, pod_index);
    // The address round-trips through the kernel's word form (v4 and v4-mapped share one form).
    let words = crate::ebpf::addr_words(record.original_dst.ip());
    let again = crate::ebpf::ConnRecord::from(&proxy_common::ConnValue {
        original_addr: words,
        ..value
    });
    assert_eq!(again.original_dst, record.original_dst);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every committed corpus file, through its target.
    #[test]
    fn corpus_replays() -> std::io::Result<()> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        let mut replayed = 0;
        for target in TARGETS {
            let dir = root.join(target);
            let mut files: Vec<_> = std::fs::read_dir(&dir)?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .collect();
            files.sort();
            assert!(
                !files.is_empty(),
                "no corpus for {target} in {}",
                dir.display()
            );
            for file in files {
                let data = std::fs::read(&file)?;
                eprintln!("{target}: {}", file.display());
                assert!(run(target, &data));
                replayed += 1;
            }
        }
        eprintln!("{replayed} corpus files replayed");
        Ok(())
    }

    /// A deterministic batch of generated inputs per target (what a short fuzz run starts from).
    #[test]
    fn generated_inputs() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..300 {
            let data: Vec<u8> = (0..48).map(|_| next() as u8).collect();
            router(&data);
            kernel_record(&data);
        }
    }

    #[test]
    fn ingress_fixture_answers_http1_and_h2() -> std::io::Result<()> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/http1");
        let (done, out) = serve_bytes(&std::fs::read(root.join("pipelined"))?);
        let text = String::from_utf8_lossy(&out);
        assert!(done);
        assert!(text.starts_with("HTTP/1.1 301"), "{text}");
        assert_eq!(text.matches("HTTP/1.1 ").count(), 2, "{text}");
        assert!(
            text.contains("HTTP/1.1 200") && text.contains("hello"),
            "{text}"
        );
        let (done, out) = serve_bytes(&std::fs::read(root.join("h2-get"))?);
        assert!(done);
        // The server's SETTINGS, then a HEADERS frame on stream 1.
        assert!(out.len() > 18 && out[3] == 0x4, "{out:?}");
        Ok(())
    }

    #[test]
    fn reference_is_first_match() {
        let rules = vec![
            vec![Block {
                uri: Some(StringMatch::Prefix("/a".into())),
                method: Some("POST".into()),
                ..Block::default()
            }],
            vec![Block {
                header: Some(("x-a".into(), StringMatch::Exact("1".into()))),
                ..Block::default()
            }],
            vec![],
        ];
        let probe = |method: &str, path: &str, headers: &[(&str, &str)]| Probe {
            method: method.into(),
            path: path.into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        };
        assert_eq!(
            reference_match(&rules, &probe("POST", "/ab?x", &[])),
            Some(0)
        );
        assert_eq!(
            reference_match(&rules, &probe("GET", "/ab", &[("x-a", "1")])),
            Some(1)
        );
        assert_eq!(
            reference_match(&rules, &probe("GET", "/ab", &[("x-a", "12")])),
            Some(2)
        );
        assert_eq!(reference_match(&rules[..2], &probe("GET", "/", &[])), None);
    }
}
