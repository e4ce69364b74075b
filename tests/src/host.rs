//! Facts about the host the tests run on: privileges, tools, the cgroup v2 mount, binary paths.
//!
//! Privileged tests must fail loudly, never skip, when the machine cannot run them: every check here
//! returns an error that says what is missing and how to get it.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Tools the pod network and the e2e tests shell out to.
pub const REQUIRED_TOOLS: &[&str] = &["ip", "bpftool"];

/// Fails unless the effective user is root (network namespaces, cgroups and eBPF need it).
pub fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the privileged e2e tests must run as root (they create network namespaces, cgroups and \
             attach eBPF programs); run them through `cargo xtask test` as root"
        );
    }
    Ok(())
}

/// Fails unless every tool in `tools` is found on `PATH`.
pub fn require_tools(tools: &[&str]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| find_on_path(t).is_none())
        .collect();
    if !missing.is_empty() {
        bail!(
            "required tool(s) not found on PATH: {} (install them with `cargo xtask setup`)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Root plus [`REQUIRED_TOOLS`] plus a cgroup v2 mount: everything a [`crate::PodNet`] needs.
pub fn require_privileged_env() -> Result<()> {
    require_root()?;
    require_tools(REQUIRED_TOOLS)?;
    cgroup2_mount()?;
    Ok(())
}

/// Where root's tools live even when a minimal environment leaves them off `PATH`.
const SBIN_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// The full path of `tool` if it is an executable file in a `PATH` directory, or in an sbin
/// directory (`ip` and `bpftool` live there, and CI environments do not always have it on `PATH`).
pub fn find_on_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Where the cgroup v2 hierarchy is mounted: `/sys/fs/cgroup/unified` on a hybrid host,
/// `/sys/fs/cgroup` on a pure v2 host. Read from `/proc/self/mountinfo` rather than assumed.
pub fn cgroup2_mount() -> Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .context("reading /proc/self/mountinfo to find the cgroup v2 mount")?;
    // Format: id parent major:minor root mount-point options... - fstype source super-options
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mount_point = left.split_whitespace().nth(4)?;
            (fstype == "cgroup2").then(|| PathBuf::from(unescape_mountinfo(mount_point)))
        })
        .collect();
    // Prefer the conventional places if several are mounted (containers sometimes bind-mount extras).
    found.sort_by_key(|p| match p.to_str() {
        Some("/sys/fs/cgroup/unified") => 0,
        Some("/sys/fs/cgroup") => 1,
        _ => 2,
    });
    found
        .into_iter()
        .next()
        .context("no cgroup v2 (cgroup2) file system is mounted; Keel attaches to a cgroup v2 root")
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|oct| u8::from_str_radix(oct, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cargo workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Cargo's target directory: `CARGO_TARGET_DIR` if set, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// Resolves a binary from the environment variable `var`, else `default`; fails loudly if it is not there.
pub fn binary_from_env(var: &str, default: &Path, hint: &str) -> Result<PathBuf> {
    let path = match std::env::var_os(var) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => default.to_path_buf(),
    };
    if !is_executable(&path) {
        bail!(
            "{} not found or not executable at {} (set {var} or {hint})",
            path.file_name()
                .unwrap_or_else(|| OsStr::new("binary"))
                .to_string_lossy(),
            path.display()
        );
    }
    Ok(path)
}

/// The `keel` binary under test: `KEEL_BIN`, default `target/release/keel`.
pub fn keel_bin() -> Result<PathBuf> {
    binary_from_env(
        "KEEL_BIN",
        &target_dir().join("release").join("keel"),
        "run `cargo xtask build`",
    )
}

/// The `pod-agent` helper: `POD_AGENT_BIN`, else `default` (integration tests pass
/// `env!("CARGO_BIN_EXE_pod-agent")`), else `target/release/pod-agent`.
pub fn pod_agent_bin(default: Option<&str>) -> Result<PathBuf> {
    let fallback = match default {
        Some(d) => PathBuf::from(d),
        None => target_dir().join("release").join("pod-agent"),
    };
    binary_from_env("POD_AGENT_BIN", &fallback, "run `cargo xtask build`")
}

/// Runs `program args...` to completion; fails with its stderr if it exits non-zero.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let resolved = if program.contains('/') {
        None
    } else {
        find_on_path(program)
    };
    let out = Command::new(resolved.as_deref().unwrap_or(Path::new(program)))
        .args(args)
        .output()
        .with_context(|| format!("spawning `{program} {}`", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mountinfo("/sys/fs/cgroup"), "/sys/fs/cgroup");
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/a\\"), "/a\\");
    }
}
