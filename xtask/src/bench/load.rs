//! Workloads and the load generator (oha, run inside the client pod: its netns and cgroup), plus the
//! parsing of oha's JSON report.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

use super::{Mode, Settings};

/// What a run sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// HTTP/1.1 keep-alive at the fixed rate, latency corrected for coordinated omission.
    Http1Rate,
    /// HTTP/1.1 keep-alive as fast as the connections go (closed loop per connection, no rate cap):
    /// maximum throughput.
    Http1Max,
    /// HTTP/2 (h2c prior knowledge) at the fixed rate: connections/4 connections, 4 streams each.
    Http2Rate,
    /// A new TCP connection per request (no keep-alive) at the fixed rate.
    Http1NewConnRate,
}

impl Workload {
    /// In the order they run within a round.
    pub const ALL: [Workload; 4] = [
        Workload::Http1Rate,
        Workload::Http1Max,
        Workload::Http2Rate,
        Workload::Http1NewConnRate,
    ];

    /// Name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Http1Rate => "http1-rate",
            Workload::Http1Max => "http1-max",
            Workload::Http2Rate => "http2-rate",
            Workload::Http1NewConnRate => "http1-newconn-rate",
        }
    }

    /// One-line description for the report.
    pub fn describe(self, s: &Settings) -> String {
        match self {
            Workload::Http1Rate => format!(
                "HTTP/1.1 keep-alive, {} rps fixed rate, {} connections, latency corrected for coordinated omission",
                s.rate, s.connections
            ),
            Workload::Http1Max => format!(
                "HTTP/1.1 keep-alive, {} connections each sending its next request as soon as the last \
                 answered (no rate cap): maximum throughput",
                s.connections
            ),
            Workload::Http2Rate => format!(
                "HTTP/2 (h2c), {} rps fixed rate, {} connections x 4 streams, latency corrected",
                s.rate,
                h2_connections(s.connections)
            ),
            Workload::Http1NewConnRate => format!(
                "HTTP/1.1, a new TCP connection per request, {} rps fixed rate, up to {} in flight, latency corrected",
                s.rate, s.connections
            ),
        }
    }

    /// Whether the run has a fixed rate (latency is the result) rather than no cap (throughput is).
    pub fn fixed_rate(self) -> bool {
        !matches!(self, Workload::Http1Max)
    }

    /// Whether it targets the h2c service.
    pub fn http2(self) -> bool {
        matches!(self, Workload::Http2Rate)
    }
}

fn h2_connections(connections: u32) -> u32 {
    (connections / 4).max(1)
}

/// oha's arguments for `workload` against `url` for `duration`.
pub fn oha_args(workload: Workload, s: &Settings, url: &str, duration: Duration) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--no-tui".into(),
        "--output-format".into(),
        "json".into(),
        "-z".into(),
        format!("{}ms", duration.as_millis()),
    ];
    if workload.fixed_rate() {
        // One OS thread: the client shares the cores with backends and proxies, and a fixed 1k rps
        // does not need more; a second thread would only take CPU from the proxies under test. The
        // maximum-throughput run keeps oha's default (one per physical core), so the client is not
        // what caps `direct`.
        a.extend(["--worker-threads".into(), "1".into()]);
    }
    match workload {
        Workload::Http1Rate | Workload::Http1NewConnRate => {
            a.extend(["-c".into(), s.connections.to_string()]);
            a.extend([
                "-q".into(),
                s.rate.to_string(),
                "--latency-correction".into(),
            ]);
            if workload == Workload::Http1NewConnRate {
                a.push("--disable-keepalive".into());
            }
        }
        Workload::Http1Max => a.extend(["-c".into(), s.connections.to_string()]),
        Workload::Http2Rate => {
            a.extend([
                "--http2".into(),
                "-c".into(),
                h2_connections(s.connections).to_string(),
                "-p".into(),
                "4".into(),
                "-q".into(),
                s.rate.to_string(),
                "--latency-correction".into(),
            ]);
        }
    }
    a.push(url.to_string());
    a
}

/// What one oha run reported.
#[derive(Debug, Clone, Serialize)]
pub struct OhaReport {
    /// Responses with status 200.
    pub ok: u64,
    /// Responses with another status.
    pub bad_status: u64,
    /// Requests that got no response, by oha's reason (e.g. aborted at the deadline).
    pub errors: Vec<(String, u64)>,
    /// Wall time of the run, seconds.
    pub seconds: f64,
    /// Latency percentiles in milliseconds: p50, p90, p99, p99.9.
    pub latency_ms: [f64; 4],
}

impl OhaReport {
    /// Completed requests per second (any status).
    pub fn rps(&self) -> f64 {
        if self.seconds > 0.0 {
            (self.ok + self.bad_status) as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// Requests that got no response, except those oha itself cut off at the end of the run.
    pub fn real_errors(&self) -> u64 {
        self.errors
            .iter()
            .filter(|(k, _)| !k.contains("deadline"))
            .map(|(_, n)| n)
            .sum()
    }

    /// All requests that got no response.
    pub fn all_errors(&self) -> u64 {
        self.errors.iter().map(|(_, n)| n).sum()
    }
}

/// Parses oha's `--output-format json`.
pub fn parse_oha(json: &str) -> Result<OhaReport> {
    let v: Value = serde_json::from_str(json.trim()).context("oha's output is not JSON")?;
    let mut ok = 0;
    let mut bad_status = 0;
    if let Some(dist) = v["statusCodeDistribution"].as_object() {
        for (code, n) in dist {
            let n = n.as_u64().unwrap_or(0);
            if code == "200" {
                ok += n;
            } else {
                bad_status += n;
            }
        }
    }
    let errors = v["errorDistribution"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    let pct = |k: &str| -> Result<f64> {
        v["latencyPercentiles"][k]
            .as_f64()
            .map(|s| s * 1000.0)
            .with_context(|| format!("oha's JSON has no latencyPercentiles.{k}"))
    };
    let seconds = v["summary"]["total"]
        .as_f64()
        .context("oha's JSON has no summary.total")?;
    let latency_ms = if ok + bad_status > 0 {
        [pct("p50")?, pct("p90")?, pct("p99")?, pct("p99.9")?]
    } else {
        [f64::NAN; 4]
    };
    Ok(OhaReport {
        ok,
        bad_status,
        errors,
        seconds,
        latency_ms,
    })
}

/// One measured run with the proxies' cost during it.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub round: usize,
    pub mode: Mode,
    pub workload: Workload,
    pub oha: OhaReport,
    /// CPU seconds (user + system) of all the mode's proxy processes during the run.
    pub proxy_cpu_s: f64,
    /// Machine-wide softirq seconds during the run.
    pub softirq_s: f64,
    /// VmRSS of all the mode's proxy processes right after the run, KiB.
    pub proxy_rss_kib: u64,
    /// How much each of the mode's request counters moved (label, delta).
    pub counter_deltas: Vec<(String, u64)>,
}

impl RunResult {
    /// Requests that completed (any status).
    pub fn completed(&self) -> u64 {
        self.oha.ok + self.oha.bad_status
    }

    /// Proxy CPU seconds per 1,000 completed requests.
    pub fn cpu_per_1k(&self) -> f64 {
        per_1k(self.proxy_cpu_s, self.completed())
    }

    /// Machine-wide softirq seconds per 1,000 completed requests.
    pub fn softirq_per_1k(&self) -> f64 {
        per_1k(self.softirq_s, self.completed())
    }

    /// A log line.
    pub fn one_line(&self) -> String {
        let [p50, p90, p99, p999] = self.oha.latency_ms;
        format!(
            "r{} {:<10} {:<18} {:>8.0} rps  p50 {p50:.3} p90 {p90:.3} p99 {p99:.3} p99.9 {p999:.3} ms  \
             cpu {:.3} s/1k  rss {:.0} MiB",
            self.round,
            self.mode.name(),
            self.workload.name(),
            self.oha.rps(),
            self.cpu_per_1k(),
            self.proxy_rss_kib as f64 / 1024.0
        )
    }
}

fn per_1k(seconds: f64, requests: u64) -> f64 {
    if requests == 0 {
        f64::NAN
    } else {
        seconds * 1000.0 / requests as f64
    }
}

/// Checks that a run went through the mode's path: no failed requests, and every request counter
/// of the path moved by the number of requests oha completed, give or take those cut off at the
/// deadline (a proxy may have counted a request whose answer oha no longer waited for).
pub fn check_run(r: &RunResult) -> Result<()> {
    if r.completed() == 0 {
        bail!("no request completed");
    }
    if r.oha.bad_status > 0 || r.oha.real_errors() > 0 {
        bail!(
            "{} non-200 responses and errors {:?} out of {} requests",
            r.oha.bad_status,
            r.oha.errors,
            r.completed()
        );
    }
    let lo = r.completed();
    let hi = lo + r.oha.all_errors();
    for (label, delta) in &r.counter_deltas {
        if *delta < lo || *delta > hi {
            bail!(
                "{label} counted {delta} requests but oha completed {lo} (plus {} cut off at the \
                 deadline): the traffic did not take this mode's path",
                hi - lo
            );
        }
    }
    Ok(())
}

/// curl arguments that fetch `url` `n` times over one connection (HTTP/1.1 keep-alive or h2c), with
/// `header` (name, value) on every request if given, and print `<status> <backend identity>` per
/// response.
pub fn curl_args(url: &str, n: usize, http2: bool, header: Option<(&str, &str)>) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "-sS".into(),
        "--max-time".into(),
        "20".into(),
        "-w".into(),
        format!(
            "%{{http_code}} %header{{{}}}\\n",
            super::mesh::BACKEND_HEADER
        ),
    ];
    if http2 {
        a.push("--http2-prior-knowledge".into());
    }
    if let Some((name, value)) = header {
        a.extend(["-H".into(), format!("{name}: {value}")]);
    }
    for _ in 0..n {
        a.extend(["-o".into(), "/dev/null".into(), url.to_string()]);
    }
    a
}

/// `(status, backend)` lines of [`curl_args`] output.
pub fn parse_curl(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let code = it.next()?.to_string();
            Some((code, it.next().unwrap_or("").to_string()))
        })
        .collect()
}

/// Whether `path` looks like an oha binary (for a clear error before the first run).
pub fn check_oha(oha: &Path) -> Result<()> {
    let out = keel_tests::host::run(&oha.to_string_lossy(), &["--version"])?;
    if !out.contains("oha") {
        bail!("{} --version printed {out:?}", oha.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"summary":{"successRate":1.0,"total":2.0,"slowest":0.01,"fastest":0.0001,
        "average":0.0002,"requestsPerSec":1000.0},
        "latencyPercentiles":{"p10":0.0001,"p50":0.0002,"p90":0.0003,"p99":0.0005,"p99.9":0.001,"p99.99":0.002},
        "statusCodeDistribution":{"200":1990,"503":2},
        "errorDistribution":{"aborted due to deadline":8}}"#;

    #[test]
    fn parses_oha_json() -> Result<()> {
        let r = parse_oha(SAMPLE)?;
        assert_eq!((r.ok, r.bad_status), (1990, 2));
        assert_eq!(r.all_errors(), 8);
        assert_eq!(r.real_errors(), 0);
        assert!((r.latency_ms[3] - 1.0).abs() < 1e-9);
        assert!((r.rps() - 996.0).abs() < 1e-9);
        Ok(())
    }

    #[test]
    fn counters_must_match_completed_requests() -> Result<()> {
        let mut run = RunResult {
            round: 1,
            mode: Mode::Keel,
            workload: Workload::Http1Rate,
            oha: parse_oha(&SAMPLE.replace("\"503\":2", "\"204\":0"))?,
            proxy_cpu_s: 1.0,
            softirq_s: 0.1,
            proxy_rss_kib: 1,
            counter_deltas: vec![("keel http_requests".into(), 1995)],
        };
        assert!(check_run(&run).is_ok());
        run.counter_deltas[0].1 = 10;
        assert!(check_run(&run).is_err());
        Ok(())
    }

    #[test]
    fn curl_lines() {
        assert_eq!(
            parse_curl("200 v1\n200 v2\n503 \n"),
            vec![
                ("200".into(), "v1".into()),
                ("200".into(), "v2".into()),
                ("503".into(), String::new())
            ]
        );
        let a = curl_args("http://x/", 2, true, None);
        assert_eq!(a.iter().filter(|s| *s == "http://x/").count(), 2);
        assert!(!a.iter().any(|s| s == "-H"));
        let a = curl_args("http://x/", 1, false, Some(("x-bench-debug", "1")));
        let at = a.iter().position(|s| s == "-H");
        assert_eq!(
            at.and_then(|i| a.get(i + 1)).map(String::as_str),
            Some("x-bench-debug: 1")
        );
    }
}
