//! Protocol abuse and identity (reliability-tests E1, E2, E5, E6, F1): raw HTTP/1 byte vectors sent
//! from a pod through keel to `raw-origin`, an origin that records the exact framing it receives.
//! Every vector must end in a 4xx/501 (connection closed for codec errors) or a canonical forward;
//! nothing ambiguous (CL+TE, obs-fold, bare LF, NUL, bad chunking) may reach the upstream, and the
//! upstream sees exactly one request per request the client was answered for.
//!
//! Subnet indices 230..=239 belong to this file.

mod common;

use std::fmt::Write as _;
use std::net::SocketAddr;

use anyhow::{ensure, Context, Result};
use common::Fixture;
use keel_tests::figures;
use keel_tests::raw_http::{RawH2Vector, RawOriginRecord, RawResult, RawVector};
use keel_tests::{HttpGet, Keel};

const PREFIX: &str = "kthy";
const RAW_PORT: u16 = 8080;
const RAW_HOST: &str = "raw:8080";

/// What a vector must produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A 4xx/5xx local reply, nothing forwarded.
    Reject,
    /// Every request answered 200 by the origin, received there canonically.
    Forward,
    /// Either of the above (hyper is more lenient than Envoy here, or the vector pipelines a good
    /// request before a bad one).
    Either,
}

struct Case {
    tag: String,
    bytes: Vec<u8>,
    expect: Expect,
}

/// The raw origin pod `raw-v1` behind Service `raw` (10.96.0.50:8080) and keel.
struct Bench {
    fx: Fixture,
    keel: Keel,
    raw: SocketAddr,
}

impl Bench {
    fn new(index: u8) -> Result<Bench> {
        let mut fx = Fixture::reviews(PREFIX, index, &[])?;
        let pod = fx.add_pod_in("default", "raw-v1", 31, &[("app", "raw")])?;
        let log = fx.log_path("raw-v1");
        fx.servers.push(fx.agent.raw_origin(&pod, RAW_PORT, &log)?);
        let raw = fx.add_simple_service("raw", 50, "http", RAW_PORT, RAW_PORT)?;
        let keel = fx.start_keel_strict()?;
        Ok(Bench { fx, keel, raw })
    }

    fn send(&self, cases: &[Case], parallel: usize) -> Result<Vec<RawResult>> {
        let vectors: Vec<RawVector> = cases
            .iter()
            .map(|c| RawVector::new(&c.tag, &c.bytes))
            .collect();
        let path = self.fx.net.work_dir().join("vectors.json");
        std::fs::write(&path, serde_json::to_string(&vectors)?)?;
        let report = self
            .fx
            .agent
            .raw_client(&self.fx.sleep, self.raw, &path, parallel)?;
        ensure!(
            report.results.len() == cases.len(),
            "one result per vector: {} of {}",
            report.results.len(),
            cases.len()
        );
        Ok(report.results)
    }

    fn origin_log(&self, name: &str) -> Result<Vec<RawOriginRecord>> {
        let path = self.fx.log_path(name);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).with_context(|| format!("origin log line {l}")))
            .collect()
    }
}

/// A request to `/<tag>` with `extra` header lines (each ending in CRLF) and `body`.
fn post(tag: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut v = format!("POST /{tag} HTTP/1.1\r\nHost: {RAW_HOST}\r\n{extra}\r\n").into_bytes();
    v.extend_from_slice(body);
    v
}

fn get(tag: &str) -> Vec<u8> {
    format!("GET /{tag} HTTP/1.1\r\nHost: {RAW_HOST}\r\n\r\n").into_bytes()
}

const CHUNKED_BODY: &[u8] = b"5\r\nhello\r\n0\r\n\r\n";

/// The E1 corpus: TE mutations at three placements, CL variants, chunk oddities, request lines,
/// hosts, header junk, pipelining and hop-by-hop headers.
fn smuggling_cases() -> Vec<Case> {
    use Expect::{Either, Forward, Reject};
    let mut cases = Vec::new();
    let mut add = |expect: Expect, build: &dyn Fn(&str) -> Vec<u8>| {
        let tag = format!("v{:03}", cases.len());
        let bytes = build(&tag);
        cases.push(Case { tag, bytes, expect });
    };

    // Transfer-Encoding header mutations (smuggler-style), each alone, before and after a
    // conflicting Content-Length (4: a CL reader would stop inside the first chunk).
    let te: &[(&str, Expect)] = &[
        ("Transfer-Encoding: chunked\r\n", Forward),
        ("Transfer-Encoding: Chunked\r\n", Forward),
        ("TRANSFER-ENCODING: CHUNKED\r\n", Forward),
        ("Transfer-Encoding:chunked\r\n", Forward),
        ("Transfer-Encoding:\tchunked\r\n", Forward),
        ("Transfer-Encoding: chunked \r\n", Either),
        ("Transfer-Encoding: xchunked\r\n", Reject),
        ("Transfer-Encoding: chunkedx\r\n", Reject),
        ("Transfer-Encoding : chunked\r\n", Reject),
        ("Transfer-Encoding\t: chunked\r\n", Reject),
        (" Transfer-Encoding: chunked\r\n", Reject),
        ("Transfer-Encoding:\r\n chunked\r\n", Reject),
        ("Transfer-Encoding: gzip, chunked\r\n", Reject),
        ("Transfer-Encoding: chunked, gzip\r\n", Reject),
        ("Transfer-Encoding: ,chunked\r\n", Reject),
        ("Transfer-Encoding: chunked,\r\n", Reject),
        ("Transfer-Encoding: identity\r\n", Reject),
        ("Transfer-Encoding: \"chunked\"\r\n", Reject),
        ("Transfer-Encoding: chu\x00nked\r\n", Reject),
        ("Transfer-Encoding: chunked\rX: y\r\n", Reject),
        ("Transfer-Encoding: \x0bchunked\r\n", Reject),
        ("Transfer-Encoding: chunked;q=1\r\n", Reject),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            Reject,
        ),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
            Reject,
        ),
        ("Transfer_Encoding: chunked\r\n", Either),
        ("X-Pad: a\nTransfer-Encoding: chunked\r\n", Either),
    ];
    for (line, expect) in te {
        add(*expect, &|t| post(t, line, CHUNKED_BODY));
        // With a Content-Length as well: Envoy refuses; hyper re-frames as chunked and closes.
        let with_cl = if *expect == Forward { Either } else { *expect };
        let with_cl = if line.starts_with("Transfer_") {
            Either
        } else {
            with_cl
        };
        add(with_cl, &|t| {
            post(t, &format!("Content-Length: 4\r\n{line}"), CHUNKED_BODY)
        });
        add(with_cl, &|t| {
            post(t, &format!("{line}Content-Length: 4\r\n"), CHUNKED_BODY)
        });
    }
    // An obs-text byte in the coding.
    add(Reject, &|t| {
        let mut v =
            format!("POST /{t} HTTP/1.1\r\nHost: {RAW_HOST}\r\nTransfer-Encoding: ").into_bytes();
        v.extend_from_slice(b"\xffchunked\r\n\r\n");
        v.extend_from_slice(CHUNKED_BODY);
        v
    });

    // Content-Length variants.
    let cl: &[(&str, &[u8], Expect)] = &[
        ("Content-Length: 5\r\n", b"hello", Forward),
        ("Content-Length: 05\r\n", b"hello", Either),
        ("Content-Length:\t5\r\n", b"hello", Forward),
        (
            "Content-Length: 5\r\nContent-Length: 5\r\n",
            b"hello",
            Either,
        ),
        ("Content-Length: 5, 5\r\n", b"hello", Reject),
        (
            "Content-Length: 5\r\nContent-Length: 6\r\n",
            b"hello!",
            Reject,
        ),
        ("Content-Length: 5, 6\r\n", b"hello!", Reject),
        ("Content-Length: +5\r\n", b"hello", Reject),
        ("Content-Length: -5\r\n", b"hello", Reject),
        ("Content-Length: 0x5\r\n", b"hello", Reject),
        ("Content-Length: 5 5\r\n", b"hello", Reject),
        (
            "Content-Length: 99999999999999999999999\r\n",
            b"hello",
            Reject,
        ),
        ("Content-Length: 5\x00\r\n", b"hello", Reject),
        ("Content-Length:\r\n", b"", Reject),
        ("Content-Length : 5\r\n", b"hello", Reject),
        ("X-Pad: a\r\n Content-Length: 5\r\n", b"hello", Reject),
        ("Content-Length: 3\r\n", b"hello", Either),
        ("Content-Length: 5\r\n", b"helloGARBAGE\r\n\r\n", Either),
    ];
    for (line, body, expect) in cl {
        add(*expect, &|t| post(t, line, body));
    }

    // Chunk-size oddities (Transfer-Encoding: chunked).
    let chunks: &[(&[u8], Expect)] = &[
        (b"5;ext=1\r\nhello\r\n0\r\n\r\n", Forward),
        (b"5;a=\"b c\"\r\nhello\r\n0\r\n\r\n", Either),
        (b"0005\r\nhello\r\n0\r\n\r\n", Forward),
        (b"5\r\nhel\x00o\r\n0\r\n\r\n", Forward),
        (b"5\r\nhello\r\n0\r\nX-Trailer: a\r\n\r\n", Either),
        (b"5 ;ext\r\nhello\r\n0\r\n\r\n", Either),
        (b"0x5\r\nhello\r\n0\r\n\r\n", Reject),
        (b"+5\r\nhello\r\n0\r\n\r\n", Reject),
        (b"-5\r\nhello\r\n0\r\n\r\n", Reject),
        (b"g\r\nhello\r\n0\r\n\r\n", Reject),
        (b"\r\nhello\r\n0\r\n\r\n", Reject),
        (b"5\r\r\nhello\r\n0\r\n\r\n", Reject),
        (b"5\r\nhelloXX0\r\n\r\n", Reject),
        (b"6\r\nhello\r\n0\r\n\r\n", Reject),
        (b"4\r\nhello\r\n0\r\n\r\n", Reject),
        (b"FFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n", Reject),
        (b"5\nhello\r\n0\r\n\r\n", Either),
        (b"5\r\nhello\n0\r\n\r\n", Either),
        (b"5\r\nhello\r\n0\r\nX-T: a\r\n b\r\n\r\n", Either),
        (b"5\r\nhello\r\n0\r\nX-T: a\x00\r\n\r\n", Either),
    ];
    for (body, expect) in chunks {
        add(*expect, &|t| {
            post(t, "Transfer-Encoding: chunked\r\n", body)
        });
    }

    // Request lines, methods and versions.
    let lines: &[(&str, Expect)] = &[
        ("GET /{t} HTTP/1.1\r\nHost: raw:8080\r\n\r\n", Forward),
        ("GET /{t} HTTP/1.0\r\nHost: raw:8080\r\n\r\n", Forward),
        ("TRACE /{t} HTTP/1.1\r\nHost: raw:8080\r\n\r\n", Forward),
        ("get /{t} HTTP/1.1\r\nHost: raw:8080\r\n\r\n", Either),
        ("GET /{t} HTTP/1.2\r\nHost: raw:8080\r\n\r\n", Reject),
        ("GET /{t} HTTP/2.0\r\nHost: raw:8080\r\n\r\n", Reject),
        ("GET /{t} HTTP/1.1x\r\nHost: raw:8080\r\n\r\n", Reject),
        ("GET /{t} HTTP/01.1\r\nHost: raw:8080\r\n\r\n", Reject),
        ("GET /{t} http/1.1\r\nHost: raw:8080\r\n\r\n", Reject),
        ("GET /{t}  HTTP/1.1\r\nHost: raw:8080\r\n\r\n", Reject),
        ("GET\t/{t} HTTP/1.1\r\nHost: raw:8080\r\n\r\n", Reject),
        ("GET /{t}\r\n\r\n", Reject),
        ("G\x00ET /{t} HTTP/1.1\r\nHost: raw:8080\r\n\r\n", Reject),
        ("GE(T /{t} HTTP/1.1\r\nHost: raw:8080\r\n\r\n", Reject),
        ("GET /{t}\x7f HTTP/1.1\r\nHost: raw:8080\r\n\r\n", Reject),
        ("GET /{t} HTTP/1.1\nHost: raw:8080\n\n", Either),
        ("\r\nGET /{t} HTTP/1.1\r\nHost: raw:8080\r\n\r\n", Either),
        ("GET /{t} HTTP/1.1\r\n Host: raw:8080\r\n\r\n", Reject),
        (
            "CONNECT raw:8080 HTTP/1.1\r\nHost: raw:8080\r\n\r\n",
            Reject,
        ),
        // Hosts: missing, duplicated, with user info, empty.
        ("GET /{t} HTTP/1.1\r\n\r\n", Reject),
        (
            "GET /{t} HTTP/1.1\r\nHost: raw:8080\r\nHost: other\r\n\r\n",
            Reject,
        ),
        ("GET /{t} HTTP/1.1\r\nHost: a@raw:8080\r\n\r\n", Reject),
        ("GET /{t} HTTP/1.1\r\nHost:\r\n\r\n", Reject),
        (
            "GET http://x@raw:8080/{t} HTTP/1.1\r\nHost: raw:8080\r\n\r\n",
            Reject,
        ),
        // Upgrades: only WebSocket is configured on a sidecar.
        (
            "GET /{t} HTTP/1.1\r\nHost: raw:8080\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n",
            Reject,
        ),
    ];
    for (line, expect) in lines {
        add(*expect, &|t| line.replace("{t}", t).into_bytes());
    }

    // Header junk.
    let junk: &[(&[u8], Expect)] = &[
        (b"X-A: b\x00c\r\n", Reject),
        (b"X-A: b\rc\r\n", Reject),
        (b"X-A: b\r\n c\r\n", Reject),
        (b"X-A: b\r\n\tc\r\n", Reject),
        (b"X-A\x00: b\r\n", Reject),
        (b"X-A : b\r\n", Reject),
        (b": b\r\n", Reject),
        (b"X-A: b\x7f\r\n", Reject),
        (b"X-A: \x01\r\n", Reject),
        (b"X A: b\r\n", Reject),
        (b"X-A: \xc3\xa9\r\n", Forward),
    ];
    for (line, expect) in junk {
        add(*expect, &|t| {
            let mut v = format!("GET /{t} HTTP/1.1\r\nHost: {RAW_HOST}\r\n").into_bytes();
            v.extend_from_slice(line);
            v.extend_from_slice(b"\r\n");
            v
        });
    }

    // Pipelining: two good requests; a good one then garbage or a bad coding; a body that holds a
    // request (the client's own second request, framed by its length).
    add(Forward, &|t| [get(t), get(&format!("{t}-2"))].concat());
    add(Either, &|t| [get(t), b"GARBAGE\r\n\r\n".to_vec()].concat());
    add(Either, &|t| {
        [
            get(t),
            post(
                &format!("{t}-2"),
                "Transfer-Encoding: xchunked\r\n",
                CHUNKED_BODY,
            ),
        ]
        .concat()
    });
    add(Forward, &|t| {
        let inner = get(&format!("{t}-smuggled"));
        [
            post(t, &format!("Content-Length: {}\r\n", inner.len()), &inner),
            get(&format!("{t}-3")),
        ]
        .concat()
    });
    cases
}

/// `/tag`, `/tag?..`, `/tag-..`: the request belongs to vector `tag`.
fn belongs(target: &str, tag: &str) -> bool {
    target
        .strip_prefix('/')
        .and_then(|t| t.strip_prefix(tag))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['-', '?', '/']))
}

#[derive(Debug, Default)]
struct Tally {
    tried: usize,
    rejected: usize,
    canonical: usize,
    ambiguous: usize,
    aborted: usize,
}

/// Judge each vector against its expectation and the origin's records; problems are listed.
fn judge(cases: &[Case], results: &[RawResult], origin: &[RawOriginRecord]) -> (Tally, String) {
    let mut tally = Tally {
        tried: cases.len(),
        ..Tally::default()
    };
    let mut problems = String::new();
    for rec in origin.iter().filter(|r| !r.violations.is_empty()) {
        tally.ambiguous += 1;
        let _ = writeln!(problems, "AMBIGUOUS upstream request: {rec:?}");
    }
    tally.aborted = origin
        .iter()
        .filter(|r| !r.complete && r.violations.is_empty())
        .count();
    for (case, res) in cases.iter().zip(results) {
        let ups: Vec<&RawOriginRecord> = origin
            .iter()
            .filter(|r| r.complete && belongs(&r.target, &case.tag))
            .collect();
        let ok = res.responses.iter().filter(|r| r.status == 200).count();
        let last = res.responses.last();
        let refused = last.is_some_and(|r| {
            matches!(r.status, 400 | 403 | 414 | 431 | 501)
                // Codec errors close the connection; a refused upgrade does not have to.
                && (res.closed || r.status == 403)
        });
        let all_ok = !res.responses.is_empty() && ok == res.responses.len();
        let mut bad = Vec::new();
        if ups.len() != ok {
            bad.push(format!(
                "{} upstream requests for {ok} answered 200",
                ups.len()
            ));
        }
        if res.garbage > 0 {
            bad.push(format!("{} bytes of garbage in the response", res.garbage));
        }
        match (case.expect, refused, all_ok) {
            (Expect::Reject, true, _) if ups.is_empty() => tally.rejected += 1,
            (Expect::Forward | Expect::Either, _, true) => tally.canonical += 1,
            (Expect::Either, true, _) => tally.rejected += 1,
            _ => bad.push(format!("expected {:?}", case.expect)),
        }
        if !bad.is_empty() {
            let _ = writeln!(
                problems,
                "{} {:?}: {}; got {:?} (closed {}, error {:?}); upstream {:?}",
                case.tag,
                String::from_utf8_lossy(&case.bytes),
                bad.join(", "),
                res.responses
                    .iter()
                    .map(|r| (r.status, r.body.as_str()))
                    .collect::<Vec<_>>(),
                res.closed,
                res.error,
                ups
            );
        }
    }
    (tally, problems)
}

#[test]
fn chaos_e1_smuggling_vectors_are_refused_or_reframed() -> Result<()> {
    let bench = Bench::new(230)?;
    let cases = smuggling_cases();
    ensure!(cases.len() >= 150, "{} vectors", cases.len());
    let results = bench.send(&cases, figures::sized(24, 8))?;
    let origin = bench.origin_log("raw-v1")?;
    let (tally, problems) = judge(&cases, &results, &origin);
    let scenario = "E1 HTTP/1 smuggling vectors";
    figures::record(scenario, "vectors tried", tally.tried as f64, "count");
    figures::record(scenario, "rejected", tally.rejected as f64, "count");
    figures::record(
        scenario,
        "canonically forwarded",
        tally.canonical as f64,
        "count",
    );
    figures::record(
        scenario,
        "forwarded ambiguous",
        tally.ambiguous as f64,
        "count",
    );
    figures::record(
        scenario,
        "upstream attempts cut off",
        tally.aborted as f64,
        "count",
    );
    ensure!(problems.is_empty(), "{tally:?}\n{problems}");
    ensure!(
        tally.ambiguous == 0 && tally.rejected + tally.canonical == tally.tried,
        "{tally:?}"
    );

    // Hop-by-hop headers and those `Connection` names never cross; `te: trailers` does.
    let hop = "Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n\
               Proxy-Connection: keep-alive\r\nUpgrade: foo\r\nTE: gzip\r\n";
    let cases = [
        Case {
            tag: "hop1".to_string(),
            bytes: post("hop1", hop, b""),
            expect: Expect::Forward,
        },
        Case {
            tag: "hop2".to_string(),
            bytes: post("hop2", "TE: trailers\r\nConnection: TE\r\n", b""),
            expect: Expect::Forward,
        },
        // The absolute-form authority is the one forwarded (the Host header loses).
        Case {
            tag: "abs1".to_string(),
            bytes: b"GET http://raw:8080/abs1 HTTP/1.1\r\nHost: ratings:9080\r\n\r\n".to_vec(),
            expect: Expect::Forward,
        },
    ];
    let results = bench.send(&cases, 3)?;
    let origin = bench.origin_log("raw-v1")?;
    let (_, problems) = judge(&cases, &results, &origin);
    ensure!(problems.is_empty(), "{problems}");
    let find = |tag: &str| {
        origin
            .iter()
            .find(|r| r.complete && belongs(&r.target, tag))
            .with_context(|| format!("no upstream request for {tag}"))
    };
    let hop1 = find("hop1")?;
    for name in [
        "connection",
        "x-secret",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "te",
    ] {
        ensure!(
            hop1.header(name).is_none(),
            "{name} must not reach the upstream: {hop1:?}"
        );
    }
    let hop2 = find("hop2")?;
    ensure!(
        hop2.header("te") == Some("trailers"),
        "te: trailers is forwarded: {hop2:?}"
    );
    let abs = find("abs1")?;
    ensure!(
        abs.header("host") == Some(RAW_HOST) && abs.target == "/abs1",
        "an absolute-form request goes out in origin form with the URI's authority as Host: {abs:?}"
    );
    Ok(())
}

/// `GET /<tag>` with `n` headers `x-h<i>: <value>`.
fn many_headers(tag: &str, n: usize, value: &str) -> Vec<u8> {
    let mut s = format!("GET /{tag} HTTP/1.1\r\nHost: {RAW_HOST}\r\n");
    for i in 0..n {
        let _ = write!(s, "x-h{i}: {value}\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")
}

#[test]
fn chaos_e2_header_limits_answer_431_and_close() -> Result<()> {
    use Expect::{Forward, Reject};
    let bench = Bench::new(231)?;
    let rss_before = rss_kib(bench.keel.pid())?;
    let big =
        |tag: &str, kib: usize| post(tag, &format!("X-Big: {}\r\n", "a".repeat(kib * 1024)), b"");
    let cases = vec![
        // 99 + Host = 100 headers: Envoy's limit, accepted.
        Case {
            tag: "ok100".into(),
            bytes: many_headers("ok100", 99, "v"),
            expect: Forward,
        },
        Case {
            tag: "n101".into(),
            bytes: many_headers("n101", 100, "v"),
            expect: Reject,
        },
        Case {
            tag: "n10k".into(),
            bytes: many_headers("n10k", 10_000, ""),
            expect: Reject,
        },
        Case {
            tag: "k59".into(),
            bytes: big("k59", 59),
            expect: Forward,
        },
        Case {
            tag: "k61".into(),
            bytes: big("k61", 61),
            expect: Reject,
        },
        Case {
            tag: "k100".into(),
            bytes: big("k100", 100),
            expect: Reject,
        },
        Case {
            tag: "m1".into(),
            bytes: big("m1", 1024),
            expect: Reject,
        },
        Case {
            // The request target counts against the 60 KiB. (Beyond 65,534 bytes hyper's parser
            // answers 414 before keel sees the request; Envoy would say 431.)
            tag: "line62k".into(),
            bytes: get(&format!("line62k?{}", "q".repeat(62 * 1024))),
            expect: Reject,
        },
    ];
    let results = bench.send(&cases, 8)?;
    let origin = bench.origin_log("raw-v1")?;
    let (tally, problems) = judge(&cases, &results, &origin);
    ensure!(problems.is_empty(), "{tally:?}\n{problems}");
    for (case, res) in cases.iter().zip(&results) {
        if case.expect == Reject {
            let status = res.responses.last().map(|r| r.status);
            ensure!(
                status == Some(431) && res.closed,
                "{}: 431 and close expected, got {status:?} (closed {})",
                case.tag,
                res.closed
            );
        }
    }
    // HTTP/2: the same count limit.
    let mut h2 = HttpGet::new(format!("http://{RAW_HOST}/h2many"))
        .connect_to(bench.raw)
        .http2();
    for i in 0..101 {
        h2 = h2.header(&format!("x-h{i}"), "v");
    }
    let r = bench.fx.get(&h2)?;
    ensure!(
        r.status(431) == 1,
        "101 headers over HTTP/2 are refused with 431: {r:?}"
    );
    let rss_after = rss_kib(bench.keel.pid())?;
    let growth = rss_after.saturating_sub(rss_before);
    let scenario = "E2 header limits";
    figures::record(scenario, "oversized requests refused", 7.0, "count");
    figures::record(scenario, "keel RSS growth", growth as f64, "KiB");
    ensure!(
        growth < 32 * 1024,
        "keel grew {growth} KiB while refusing oversized headers"
    );
    Ok(())
}

#[test]
fn chaos_e5_downgrade_and_upgrade_hygiene() -> Result<()> {
    let bench = Bench::new(232)?;
    let cases = vec![
        // h2c is not an upgrade a sidecar performs: served as HTTP/1.1, upgrade headers dropped.
        Case {
            tag: "h2c".into(),
            bytes: b"GET /h2c HTTP/1.1\r\nHost: raw:8080\r\nConnection: Upgrade, HTTP2-Settings\r\n\
                     Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
                .to_vec(),
            expect: Expect::Forward,
        },
        Case {
            tag: "upfoo".into(),
            bytes: b"GET /upfoo HTTP/1.1\r\nHost: raw:8080\r\nConnection: Upgrade\r\nUpgrade: foo/1\r\n\r\n"
                .to_vec(),
            expect: Expect::Reject,
        },
        Case {
            tag: "connect".into(),
            bytes: b"CONNECT 10.96.0.20:9080 HTTP/1.1\r\nHost: 10.96.0.20:9080\r\n\r\n".to_vec(),
            expect: Expect::Reject,
        },
    ];
    let results = bench.send(&cases, 3)?;
    let origin = bench.origin_log("raw-v1")?;
    let (_, problems) = judge(&cases, &results, &origin);
    ensure!(problems.is_empty(), "{problems}");
    for (case, res) in cases.iter().zip(&results).skip(1) {
        let status = res.responses.last().map(|r| r.status);
        ensure!(
            status == Some(403),
            "{}: 403 expected (upgrade_failed), got {status:?}",
            case.tag
        );
    }
    let h2c = origin
        .iter()
        .find(|r| r.complete && belongs(&r.target, "h2c"))
        .context("h2c request not forwarded")?;
    ensure!(
        h2c.header("upgrade").is_none()
            && h2c.header("http2-settings").is_none()
            && h2c.header("connection").is_none(),
        "no upgrade header of the h2c attempt reaches the HTTP/1 upstream: {h2c:?}"
    );
    // HTTP/2 downstream, HTTP/1 upstream: `:authority` wins over a `host` header and the request
    // goes out with one Host.
    let r = bench.fx.get(
        &HttpGet::new(format!("http://{RAW_HOST}/h2host"))
            .connect_to(bench.raw)
            .http2()
            .header("host", "evil:1"),
    )?;
    ensure!(r.status(200) == 1, "{r:?}");
    let origin = bench.origin_log("raw-v1")?;
    let rec = origin
        .iter()
        .find(|r| r.complete && belongs(&r.target, "h2host"))
        .context("h2host request not forwarded")?;
    let hosts = rec
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("host"))
        .count();
    ensure!(
        hosts == 1 && rec.header("host") == Some(RAW_HOST) && rec.violations.is_empty(),
        "the HTTP/1 upstream sees one Host, the :authority: {rec:?}"
    );

    // Malformed HTTP/2 streams, frame by frame: a stream error, GOAWAY or a 4xx; never forwarded.
    let h2_cases = h2_vectors();
    let path = bench.fx.net.work_dir().join("h2.json");
    std::fs::write(&path, serde_json::to_string(&h2_cases)?)?;
    let report = bench
        .fx
        .agent
        .raw_h2_client(&bench.fx.sleep, bench.raw, &path)?;
    let origin = bench.origin_log("raw-v1")?;
    let mut problems = String::new();
    let mut refused = 0;
    for (v, res) in h2_cases.iter().zip(&report.results) {
        // Exact targets: `h2te` must not count `h2te-ok`'s request.
        let reached: Vec<_> = origin
            .iter()
            .filter(|r| r.complete && r.target == format!("/{}", v.name))
            .collect();
        let ups = reached.len();
        let accepted = v.name.ends_with("-ok");
        let stopped = res.reset.is_some()
            || res.goaway.is_some()
            || res.status.is_some_and(|s| s >= 400)
            || (res.closed && res.status.is_none());
        let good = if accepted {
            res.status == Some(200) && ups == 1
        } else if v.name.ends_with("-canon") {
            (stopped && ups == 0)
                || (res.status == Some(200) && ups == 1 && reached[0].violations.is_empty())
        } else {
            stopped && ups == 0
        };
        if !accepted && good && stopped {
            refused += 1;
        }
        if !good {
            let _ = writeln!(
                problems,
                "{}: {:?} -> {res:?}, {ups} upstream",
                v.name, v.headers
            );
        }
    }
    let scenario = "E5 HTTP/2 to HTTP/1 downgrade";
    figures::record(
        scenario,
        "malformed HTTP/2 streams tried",
        h2_cases.iter().filter(|v| !v.name.ends_with("-ok")).count() as f64,
        "count",
    );
    figures::record(
        scenario,
        "malformed HTTP/2 streams refused",
        refused as f64,
        "count",
    );
    ensure!(problems.is_empty(), "{problems}");
    figures::record(
        "E5 HTTP/2 to HTTP/1 downgrade",
        "vectors forwarded ambiguous",
        origin.iter().filter(|r| !r.violations.is_empty()).count() as f64,
        "count",
    );
    Ok(())
}

/// HTTP/2 streams a conforming client never sends (names ending `-ok` are controls that must pass).
fn h2_vectors() -> Vec<RawH2Vector> {
    let h = |k: &str, v: &str| (k.to_string(), v.to_string());
    let base = |tag: &str| {
        vec![
            h(":method", "GET"),
            h(":scheme", "http"),
            h(":authority", RAW_HOST),
            h(":path", &format!("/{tag}")),
        ]
    };
    let with = |tag: &str, extra: &[(&str, &str)]| {
        let mut v = base(tag);
        v.extend(extra.iter().map(|(k, val)| h(k, val)));
        v
    };
    let mut out = Vec::new();
    let mut push = |name: &str, headers: Vec<(String, String)>, data: Option<&str>, trailers| {
        out.push(RawH2Vector {
            name: name.to_string(),
            headers,
            data: data.map(str::to_string),
            trailers,
        });
    };
    push("h2ok-ok", base("h2ok-ok"), None, vec![]);
    push(
        "h2te-ok",
        with("h2te-ok", &[("te", "trailers")]),
        None,
        vec![],
    );
    push(
        "h2host-ok",
        with("h2host-ok", &[("host", "evil:1")]),
        None,
        vec![],
    );
    for (tag, extra) in [
        ("h2upper", [("X-Upper", "v")]),
        ("h2cr", [("x-a", "b\rc")]),
        ("h2lf", [("x-a", "b\nc")]),
        ("h2nul", [("x-a", "b\0c")]),
        ("h2nulname", [("x\0a", "b")]),
        ("h2empty", [("", "b")]),
        ("h2conn", [("connection", "keep-alive")]),
        ("h2te", [("transfer-encoding", "chunked")]),
        ("h2tegzip", [("te", "gzip")]),
        ("h2ka", [("keep-alive", "timeout=5")]),
        ("h2pc", [("proxy-connection", "keep-alive")]),
        ("h2upgrade", [("upgrade", "websocket")]),
        ("h2pseudo", [(":foo", "bar")]),
        ("h2dup", [(":path", "/h2dup")]),
    ] {
        let extra: Vec<(String, String)> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut headers = base(tag);
        headers.extend(extra);
        push(tag, headers, None, vec![]);
    }
    let mut late = base("h2late");
    late.insert(2, h("x-a", "b"));
    push("h2late", late, None, vec![]);
    let no_path: Vec<(String, String)> = base("h2nopath")
        .into_iter()
        .filter(|(k, _)| k != ":path")
        .collect();
    push("h2nopath", no_path, None, vec![]);
    let mut post = base("h2cl");
    post[0] = h(":method", "POST");
    post.push(h("content-length", "5"));
    push("h2cl", post, Some("abc"), vec![]);
    // A pseudo-header in trailers: h2 drops it, so the request may go on without it (re-framed
    // canonically: the upstream must then see no trace of it) or be reset, as Envoy does.
    let mut post = base("h2trl-canon");
    post[0] = h(":method", "POST");
    push("h2trl-canon", post, Some("abc"), vec![h(":path", "/x")]);
    let mut connect = base("h2connect");
    connect[0] = h(":method", "CONNECT");
    connect.retain(|(k, _)| k != ":path" && k != ":scheme");
    push("h2connect", connect, None, vec![]);
    out
}

#[test]
fn chaos_e6_path_normalisation_is_the_same_for_matching_and_forwarding() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 233, &[])?;
    let raw_pod = fx.add_pod_in("default", "raw-v1", 31, &[("app", "raw")])?;
    fx.servers.push(
        fx.agent
            .raw_origin(&raw_pod, RAW_PORT, &fx.log_path("raw-v1"))?,
    );
    let bee_pod = fx.add_pod_in("default", "bee-v1", 32, &[("app", "bee")])?;
    fx.servers.push(
        fx.agent
            .raw_origin(&bee_pod, RAW_PORT, &fx.log_path("bee-v1"))?,
    );
    let raw = fx.add_simple_service("raw", 50, "http", RAW_PORT, RAW_PORT)?;
    fx.add_simple_service("bee", 51, "http", RAW_PORT, RAW_PORT)?;
    // Requests for /b go to bee; everything else to raw.
    fx.config.write(
        "virtualservice.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: raw\n  \
         namespace: default\nspec:\n  hosts:\n  - raw\n  http:\n  - match:\n    - uri:\n        \
         prefix: /b/\n    route:\n    - destination:\n        host: bee\n  - route:\n    - \
         destination:\n        host: raw\n",
    )?;
    let keel = fx.start_keel_strict()?;
    // (sent path, origin that must get it, path it must see); `None`: refused with 400.
    let table: &[(&str, Option<(&str, &str)>)] = &[
        ("/b/x", Some(("bee-v1", "/b/x"))),
        ("/a/../b/x", Some(("bee-v1", "/b/x"))),
        ("/a/%2e%2e/b/x", Some(("bee-v1", "/b/x"))),
        ("/a/%2E%2E/b/x", Some(("bee-v1", "/b/x"))),
        ("/a/./../b/./x", Some(("bee-v1", "/b/x"))),
        ("/%62/x", Some(("bee-v1", "/b/x"))),
        ("/a\\..\\b\\x", Some(("bee-v1", "/b/x"))),
        ("/../b/x", Some(("bee-v1", "/b/x"))),
        ("/b/../c", Some(("raw-v1", "/c"))),
        ("//b/x", Some(("raw-v1", "//b/x"))),
        ("/b%2Fx", Some(("raw-v1", "/b%2Fx"))),
        ("/b%2fx", Some(("raw-v1", "/b%2Fx"))),
        ("/b%5Cx", Some(("raw-v1", "/b%5Cx"))),
        ("/a%2F..%2Fb/x", Some(("raw-v1", "/a%2F..%2Fb/x"))),
        ("/b/x%00", None),
        ("/b%00/x", None),
    ];
    let cases: Vec<Case> = table
        .iter()
        .enumerate()
        .map(|(i, (path, _))| {
            let tag = format!("p{i:02}");
            Case {
                bytes: format!("GET {path}?t={tag} HTTP/1.1\r\nHost: {RAW_HOST}\r\n\r\n")
                    .into_bytes(),
                tag,
                expect: Expect::Either,
            }
        })
        .collect();
    let vectors: Vec<RawVector> = cases
        .iter()
        .map(|c| RawVector::new(&c.tag, &c.bytes))
        .collect();
    let path = fx.net.work_dir().join("paths.json");
    std::fs::write(&path, serde_json::to_string(&vectors)?)?;
    let report = fx.agent.raw_client(&fx.sleep, raw, &path, 8)?;
    let read_log = |name: &str| -> Result<Vec<RawOriginRecord>> {
        std::fs::read_to_string(fx.log_path(name))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).context("origin log line"))
            .collect()
    };
    let logs = [
        ("raw-v1", read_log("raw-v1")?),
        ("bee-v1", read_log("bee-v1")?),
    ];
    let mut problems = String::new();
    let mut consistent = 0;
    for ((sent, want), (case, res)) in table.iter().zip(cases.iter().zip(&report.results)) {
        let query = format!("?t={}", case.tag);
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for (name, recs) in &logs {
            for r in recs {
                if let Some(p) = r.target.strip_suffix(query.as_str()) {
                    seen.push((*name, p));
                }
            }
        }
        let status = res.responses.first().map(|r| r.status);
        let ok = match want {
            Some((origin, path)) => status == Some(200) && seen == [(*origin, *path)],
            None => status == Some(400) && seen.is_empty(),
        };
        if ok {
            consistent += 1;
        } else {
            let _ = writeln!(
                problems,
                "{sent}: want {want:?}, got status {status:?}, upstream {seen:?}"
            );
        }
    }
    let scenario = "E6 path normalisation";
    figures::record(scenario, "paths tried", table.len() as f64, "count");
    figures::record(
        scenario,
        "routed and forwarded consistently",
        consistent as f64,
        "count",
    );
    drop(keel);
    ensure!(problems.is_empty(), "{problems}");
    Ok(())
}

#[test]
fn chaos_f1_identity_comes_from_the_kernel_record_not_headers() -> Result<()> {
    let mut bench = Bench::new(234)?;
    let victim = bench
        .fx
        .add_pod_in("default", "victim", 40, &[("app", "victim")])?;
    let spoof = [
        ("x-forwarded-for", victim.ip.to_string()),
        ("forwarded", format!("for={}", victim.ip)),
        (
            "x-forwarded-client-cert",
            "By=spiffe://cluster.local/ns/default/sa/raw;URI=spiffe://cluster.local/ns/default/sa/victim"
                .to_string(),
        ),
        ("x-envoy-peer-metadata-id", format!("sidecar~{}~victim.default~default.svc.cluster.local", victim.ip)),
        ("x-envoy-peer-metadata", "ChQKDldPUktMT0FEX05BTUUSAhoAdmljdGlt".to_string()),
        ("x-envoy-internal", "true".to_string()),
        ("x-envoy-original-path", "/admin".to_string()),
        ("x-envoy-upstream-rq-timeout-ms", "1".to_string()),
        ("x-envoy-expected-rq-timeout-ms", "1".to_string()),
    ];
    let mut req = HttpGet::new(format!("http://{RAW_HOST}/f1")).connect_to(bench.raw);
    for (k, v) in &spoof {
        req = req.header(k, v);
    }
    let r = bench.fx.get(&req)?;
    ensure!(r.status(200) == 1, "{r:?}");
    let h2 = bench.fx.get(&req.clone().http2())?;
    ensure!(h2.status(200) == 1, "{h2:?}");
    let origin = bench.origin_log("raw-v1")?;
    let seen: Vec<&RawOriginRecord> = origin
        .iter()
        .filter(|r| r.complete && belongs(&r.target, "f1"))
        .collect();
    ensure!(seen.len() == 2, "two requests forwarded: {origin:?}");
    for rec in &seen {
        for (name, value) in &spoof[2..] {
            // The proxy sets `x-envoy-expected-rq-timeout-ms` itself, from the route's timeout
            // (15 s by default here): the client's value must not survive.
            let ok = if *name == "x-envoy-expected-rq-timeout-ms" {
                rec.header(name) == Some("15000")
            } else {
                rec.header(name).is_none()
            };
            ensure!(
                ok,
                "{name} is for proxies only: the client's {value:?} must not reach the upstream: {rec:?}"
            );
        }
        // A sidecar outbound listener leaves X-Forwarded-For alone (use_remote_address: false);
        // it is data, never identity.
        ensure!(
            rec.header("x-forwarded-for") == Some(victim.ip.to_string().as_str()),
            "{rec:?}"
        );
    }
    // Attribution: Istio's request metric names the client from the kernel record.
    let metrics = keel_tests::http::get(
        bench.keel.options().admin_addr,
        "/stats/prometheus",
        std::time::Duration::from_secs(5),
    )?
    .text();
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("istio_requests_total{") && l.contains("destination_workload=\"raw-v1\"")
        })
        .collect();
    ensure!(
        !series.is_empty()
            && series
                .iter()
                .all(|l| l.contains("source_workload=\"sleep\"") && !l.contains("victim")),
        "requests are attributed to the sending pod only: {series:#?}"
    );
    figures::record(
        "F1 identity",
        "spoofed identity headers forwarded",
        0.0,
        "count",
    );
    Ok(())
}
