//! What the bench reads from `/proc`: CPU time and memory of the proxy processes, and the machine's
//! softirq time.
//!
//! CPU: `utime + stime` of `/proc/<pid>/stat` covers all threads of a process, in clock ticks
//! (`getconf CLK_TCK`, 100 on Linux). Softirq: the `softirq` column of `/proc/stat`'s `cpu` line is
//! the whole machine's; most packet processing (veth, bridge, TCP receive) runs there, charged to no
//! process. The bench reports it per mode as machine-wide softirq seconds per 1,000 requests: the
//! client and backend contribute the same amount in every mode, so the excess over `direct` is what
//! the mode's extra hops cost the kernel.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// Clock ticks per second of `/proc` CPU times.
pub fn clk_tck() -> Result<f64> {
    let out = keel_tests::host::run("getconf", &["CLK_TCK"])?;
    let t: f64 = out
        .trim()
        .parse()
        .with_context(|| format!("parsing `getconf CLK_TCK` output {out:?}"))?;
    if t <= 0.0 {
        bail!("getconf CLK_TCK returned {t}");
    }
    Ok(t)
}

/// `utime + stime` of `pid` (all threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat_cpu(&stat).with_context(|| format!("parsing {path}"))
}

fn parse_stat_cpu(stat: &str) -> Result<u64> {
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("no ')' in stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let get = |i: usize| -> Result<u64> {
        fields
            .get(i - 3)
            .context("stat too short")?
            .parse::<u64>()
            .context("non-numeric CPU field")
    };
    Ok(get(14)? + get(15)?)
}

/// Resident set size (`VmRSS`) and proportional set size (`Pss` of `smaps_rollup`) of `pid`, KiB.
/// PSS splits pages shared between processes (e.g. the Envoy binary's text in N sidecars) among them,
/// so it does not count them N times as a sum of RSS does.
pub fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let status_path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&status_path).with_context(|| format!("reading {status_path}"))?;
    let rss = kib_field(&status, "VmRSS:").with_context(|| format!("no VmRSS in {status_path}"))?;
    let rollup_path = format!("/proc/{pid}/smaps_rollup");
    let pss = if Path::new(&rollup_path).exists() {
        let rollup = std::fs::read_to_string(&rollup_path)
            .with_context(|| format!("reading {rollup_path}"))?;
        kib_field(&rollup, "Pss:").unwrap_or(rss)
    } else {
        rss
    };
    Ok((rss, pss))
}

fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Machine-wide softirq time so far, clock ticks (`/proc/stat`, `cpu` line, 7th value).
pub fn softirq_ticks() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no `cpu` line in /proc/stat")?;
    line.split_whitespace()
        .nth(7)
        .context("short `cpu` line in /proc/stat")?
        .parse()
        .context("non-numeric softirq in /proc/stat")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_in_comm() -> Result<()> {
        let stat = "42 (envoy (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1 2 3";
        assert_eq!(parse_stat_cpu(stat)?, 300);
        Ok(())
    }

    #[test]
    fn kib_fields() {
        assert_eq!(
            kib_field("Name:\tx\nVmRSS:\t  1234 kB\n", "VmRSS:"),
            Some(1234)
        );
        assert_eq!(kib_field("Pss:  77 kB\n", "Pss:"), Some(77));
        assert_eq!(kib_field("", "Pss:"), None);
    }
}
