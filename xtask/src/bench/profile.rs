//! `--profile`: where Keel spends its CPU under load, as flamegraphs in the report directory.
//!
//! After the measured rounds, one more run of each HTTP/1.1 workload goes through Keel with `perf
//! record` attached to the keel process (DWARF call graphs, 499 Hz); the run's numbers are not
//! recorded (perf's sampling costs the proxy CPU). `perf script` output is folded and drawn with
//! inferno (`inferno-collapse-perf`, `inferno-flamegraph`, installed with cargo when missing).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use keel_tests::host::find_on_path;

use super::{load, rig, Mode, Settings};

const INFERNO_VERSION: &str = "0.12.3";

/// perf and inferno.
pub struct Tools {
    perf: PathBuf,
    collapse: PathBuf,
    flamegraph: PathBuf,
}

/// Finds perf and inferno, installing inferno when `install` is set.
pub fn tools(install: bool) -> Result<Tools> {
    let perf = find_on_path("perf").context("--profile needs perf (Debian: linux-perf)")?;
    let find = |bin: &str| {
        find_on_path(bin).or_else(|| {
            let home = std::env::var_os("CARGO_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
            let p = home.join("bin").join(bin);
            p.is_file().then_some(p)
        })
    };
    if find("inferno-flamegraph").is_none() {
        if !install {
            bail!("inferno not installed (cargo install inferno --version {INFERNO_VERSION} --locked)");
        }
        note!(
            "bench: installing inferno: cargo install inferno --version {INFERNO_VERSION} --locked"
        );
        let status = Command::new("cargo")
            .args([
                "install",
                "inferno",
                "--version",
                INFERNO_VERSION,
                "--locked",
            ])
            .status()
            .context("running cargo install inferno")?;
        ensure!(status.success(), "cargo install inferno failed ({status})");
    }
    Ok(Tools {
        perf,
        collapse: find("inferno-collapse-perf").context("inferno-collapse-perf not found")?,
        flamegraph: find("inferno-flamegraph").context("inferno-flamegraph not found")?,
    })
}

/// One flamegraph: the workload profiled and the SVG's file name in the report directory.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Flamegraph {
    pub workload: String,
    pub svg: String,
}

/// Profiles keel under each HTTP/1.1 workload for `duration`; the SVGs go to `out_dir`.
pub fn record(
    rig: &rig::Rig,
    settings: &Settings,
    tools: &Tools,
    out_dir: &Path,
    duration: Duration,
) -> Result<Vec<Flamegraph>> {
    let pids = rig.keel_pids(Mode::Keel)?;
    ensure!(!pids.is_empty(), "no keel process to profile");
    let pid_list = pids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut out = Vec::new();
    for workload in [load::Workload::Http1Rate, load::Workload::Http1Max] {
        let data = out_dir.join(format!("perf-keel-{}.data", workload.name()));
        let mut perf = Command::new(&tools.perf)
            .args(["record", "-F", "499", "--call-graph", "dwarf,16384", "-o"])
            .arg(&data)
            .args(["-p", &pid_list])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting perf record")?;
        std::thread::sleep(Duration::from_millis(500));
        let run = rig.run_load(Mode::Keel, workload, settings, duration, 0);
        let pid = nix::unistd::Pid::from_raw(i32::try_from(perf.id()).unwrap_or(i32::MAX));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let status = perf.wait().context("waiting for perf record")?;
        if let Err(e) = run {
            note!("bench: profiled {} run failed: {e:#}", workload.name());
        }
        ensure!(
            status.success() || data.is_file(),
            "perf record failed ({status})"
        );
        let svg = format!("flamegraph-keel-{}.svg", workload.name());
        draw(tools, &data, &out_dir.join(&svg), workload.name())?;
        let _ = std::fs::remove_file(&data);
        note!("bench: profile of keel under {}: {svg}", workload.name());
        out.push(Flamegraph {
            workload: workload.name().to_string(),
            svg,
        });
    }
    Ok(out)
}

/// `perf script` of `data`, folded and drawn into `svg`.
fn draw(tools: &Tools, data: &Path, svg: &Path, title: &str) -> Result<()> {
    let script = Command::new(&tools.perf)
        .args(["script", "-i"])
        .arg(data)
        .stderr(Stdio::null())
        .output()
        .context("running perf script")?;
    ensure!(
        script.status.success(),
        "perf script failed ({})",
        script.status
    );
    let folded = pipe(Command::new(&tools.collapse).arg("--all"), &script.stdout)
        .context("inferno-collapse-perf")?;
    let drawn = pipe(
        Command::new(&tools.flamegraph).args(["--title", &format!("keel, {title}")]),
        &folded,
    )
    .context("inferno-flamegraph")?;
    std::fs::write(svg, drawn).with_context(|| format!("writing {}", svg.display()))
}

/// Runs `cmd` with `input` on stdin; returns its stdout.
fn pipe(cmd: &mut Command, input: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write as _;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output()?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
    ensure!(output.status.success(), "exited with {}", output.status);
    Ok(output.stdout)
}
