//! `cargo xtask setup`: the eBPF toolchain, installed only where missing.
//!
//! Each step checks first and says what it installs; when everything is there it installs nothing and
//! says so. Recipe (verified on this machine kind, see shared/toolchain.md):
//!
//! 1. `rust-src` for the installed nightly (needed by `-Z build-std=core` for `bpfel-unknown-none`);
//! 2. Debian packages: LLVM 22 (matching rustc's LLVM major) for bpf-linker, plus the tools the e2e
//!    tests shell out to; `apt-get update` runs once, and only when something is missing;
//! 3. `bpf-linker` 0.13.0 built against LLVM 22 (its default feature wants LLVM 23, which is not here);
//! 4. `kubectl`, which the stand-in API server's tests drive (`tests/tests/apiserver.rs`), when it is
//!    not on PATH: the Debian package `kubectl` where the apt sources have it, else
//!    `kubernetes-client` (Debian's own build; older, and served the same by the stand-in).
//!
//! 5. `cargo-fuzz` for `cargo xtask fuzz`.
//!
//! Toolchains themselves are never installed: the machine image ships `stable` and `nightly`, and
//! `RUSTUP_AUTO_INSTALL=0` forbids fetching others.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::run_step;

/// Debian packages the build and the e2e tests need.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iptables",
    "iproute2",
    "bpftool",
    "curl",
];
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Runs every step; see the module docs.
pub fn run() -> Result<()> {
    let mut installed = Vec::new();
    rust_src(&mut installed)?;
    let mut apt_updated = false;
    apt(&mut installed, &mut apt_updated)?;
    bpf_linker(&mut installed)?;
    kubectl(&mut installed, &mut apt_updated)?;
    cargo_fuzz(&mut installed)?;
    if installed.is_empty() {
        note!("xtask setup: toolchain complete, nothing to install");
    } else {
        note!("xtask setup: installed {}", installed.join(", "));
    }
    Ok(())
}

fn rust_src(installed: &mut Vec<String>) -> Result<()> {
    let toolchains = output("rustup", &["toolchain", "list"])?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        bail!(
            "the nightly toolchain is not installed (rustup toolchain list:\n{toolchains}); the eBPF \
             crate builds with nightly, which this machine image is expected to ship"
        );
    }
    let components = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )?;
    if components.lines().any(|l| l.trim().starts_with("rust-src")) {
        return Ok(());
    }
    note!("xtask setup: installing rust-src for nightly (for -Z build-std=core)");
    let mut cmd = Command::new("rustup");
    cmd.args(["component", "add", "rust-src", "--toolchain", "nightly"]);
    run_step(cmd)?;
    installed.push("rust-src (nightly)".to_string());
    Ok(())
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).trim() == "install ok installed"
        })
        .unwrap_or(false)
}

fn apt(installed: &mut Vec<String>, updated: &mut bool) -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "Debian packages missing: {}; run `cargo xtask setup` as root to install them",
            missing.join(" ")
        );
    }
    note!(
        "xtask setup: installing Debian packages {}",
        missing.join(" ")
    );
    apt_update(updated)?;
    apt_install(&missing)?;
    installed.extend(missing.iter().map(|p| (*p).to_string()));
    Ok(())
}

/// `apt-get update`, at most once per setup run.
fn apt_update(updated: &mut bool) -> Result<()> {
    if !*updated {
        let mut update = Command::new("apt-get");
        update.args(["update", "-q"]);
        run_step(update)?;
        *updated = true;
    }
    Ok(())
}

fn apt_install(packages: &[&str]) -> Result<()> {
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive");
    run_step(install)
}

/// Whether the apt sources offer `package` (`apt-cache policy` shows a candidate).
fn apt_candidate(package: &str) -> bool {
    Command::new("apt-cache")
        .args(["policy", package])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).lines().any(|l| {
                l.trim()
                    .strip_prefix("Candidate:")
                    .is_some_and(|c| !c.trim().is_empty() && c.trim() != "(none)")
            })
        })
        .unwrap_or(false)
}

fn kubectl(installed: &mut Vec<String>, apt_updated: &mut bool) -> Result<()> {
    if keel_tests::host::find_on_path("kubectl").is_some() {
        return Ok(());
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("kubectl is missing; run `cargo xtask setup` as root to install it");
    }
    apt_update(apt_updated)?;
    let package = if apt_candidate("kubectl") {
        "kubectl"
    } else if apt_candidate("kubernetes-client") {
        "kubernetes-client"
    } else {
        bail!("kubectl is missing and the apt sources offer neither `kubectl` nor `kubernetes-client`");
    };
    note!("xtask setup: installing kubectl (Debian package {package})");
    apt_install(&[package])?;
    if keel_tests::host::find_on_path("kubectl").is_none() {
        bail!("installed {package}, but kubectl is still not on PATH");
    }
    installed.push(package.to_string());
    Ok(())
}

/// `bpf-linker` on PATH or in cargo's bin dir (cargo puts installs there even if PATH lacks it).
fn find_bpf_linker() -> Option<PathBuf> {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|h| h.join("bin").join("bpf-linker"));
    keel_tests::host::find_on_path("bpf-linker").or(cargo_bin.filter(|p| p.is_file()))
}

fn bpf_linker(installed: &mut Vec<String>) -> Result<()> {
    if let Some(bin) = find_bpf_linker() {
        let works = Command::new(&bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if works {
            return Ok(());
        }
    }
    note!(
        "xtask setup: installing bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (takes about a minute)"
    );
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![PathBuf::from(LLVM_BIN)];
    paths.extend(std::env::split_paths(&path));
    let path = std::env::join_paths(paths).context("building PATH with LLVM 22 first")?;
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--no-default-features",
        "--features",
        "llvm-22",
        "--locked",
    ])
    .env("PATH", path);
    run_step(cmd)?;
    installed.push(format!("bpf-linker {BPF_LINKER_VERSION}"));
    Ok(())
}

/// cargo-fuzz, for `cargo xtask fuzz` (runs with the nightly toolchain the image ships).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

fn cargo_fuzz(installed: &mut Vec<String>) -> Result<()> {
    let works = Command::new("cargo-fuzz")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if works {
        return Ok(());
    }
    note!("xtask setup: installing cargo-fuzz {CARGO_FUZZ_VERSION} (for cargo xtask fuzz)");
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]);
    run_step(cmd)?;
    installed.push(format!("cargo-fuzz {CARGO_FUZZ_VERSION}"));
    Ok(())
}

fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
