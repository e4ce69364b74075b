//! keel's exit fails open and `keel uninstall` leaves nothing behind: after SIGTERM and after SIGKILL
//! the programs stay attached (pinned, for the next keel) but redirect nothing, so pods go direct at
//! once (here: unreachable, since pods have no route); `keel uninstall` then detaches everything and
//! removes every pin; a new keel starts cleanly on the same root and serves.
//!
//! Subnet indices 40..=49 belong to this file.

mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use common::{ensure_all_ok_via_proxy, reviews_vip, Fixture};
use keel_tests::keel::{attached_programs, bpffs_entries, uninstall};
use keel_tests::ConnectOutcome;

const PREFIX: &str = "ktlife";

enum Stop {
    Term,
    Kill,
}

fn exit_leaves_nothing_behind(index: u8, stop: Stop) -> Result<()> {
    let fx = Fixture::reviews(PREFIX, index, &["v1"])?;
    let root = fx.net.cgroup_root();
    let pins_before = bpffs_entries();
    ensure!(
        attached_programs(&root)?.is_empty(),
        "programs attached before keel started"
    );

    let mut keel = fx.start_keel()?;
    ensure!(
        !attached_programs(&root)?.is_empty(),
        "bpftool shows nothing attached under {} while keel is ready",
        root.display()
    );
    ensure_all_ok_via_proxy(&fx.get_reviews(3)?, &fx.net)?;

    let killed = match stop {
        Stop::Term => {
            let status = keel.terminate(Duration::from_secs(10))?;
            ensure!(
                status.success(),
                "keel should exit 0 on SIGTERM, got {status}"
            );
            false
        }
        Stop::Kill => {
            keel.kill()?;
            true
        }
    };
    drop(keel);

    // The pinned links keep the programs attached for the next keel...
    ensure!(
        !attached_programs(&root)?.is_empty(),
        "the programs stay attached (pinned) after keel exits"
    );
    // ...but with no keel alive they redirect nothing: a VIP connect goes direct, which in a pod
    // without routes is unreachable (a redirect to the dead proxy would be refused instead). A
    // stopped keel frees its heartbeat slot (direct at once); a killed one cannot (direct once its
    // last heartbeat is stale, 120 ms).
    if killed {
        fx.wait_direct_after_kill(Duration::from_millis(500))?;
    }
    let c = fx.agent.tcp_connect(&fx.sleep, reviews_vip(), None)?;
    ensure!(
        c.outcome == ConnectOutcome::Unreachable,
        "after keel exited, VIP connects must not be redirected anywhere: {c:?}"
    );

    // `keel uninstall` removes the pins: nothing attached, nothing left in bpffs.
    uninstall(&root, fx.net.proxy_addr())?;
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut attached = attached_programs(&root)?;
    while !attached.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        attached = attached_programs(&root)?;
    }
    ensure!(
        attached.is_empty(),
        "still attached after keel uninstall: {attached:?}"
    );
    let new_pins: Vec<_> = bpffs_entries()
        .into_iter()
        .filter(|p| !pins_before.contains(p))
        .collect();
    ensure!(
        new_pins.is_empty(),
        "pins left under /sys/fs/bpf: {new_pins:?}"
    );
    let c = fx.agent.tcp_connect(&fx.sleep, reviews_vip(), None)?;
    ensure!(
        c.outcome == ConnectOutcome::Unreachable,
        "after keel uninstall, VIP connects go direct: {c:?}"
    );

    // A new keel starts cleanly on the same root and serves.
    let keel = fx.start_keel()?;
    ensure_all_ok_via_proxy(&fx.get_reviews(3)?, &fx.net)?;
    drop(keel);
    uninstall(&root, fx.net.proxy_addr())?;
    Ok(())
}

#[test]
fn sigterm_fails_open_and_uninstall_leaves_nothing() -> Result<()> {
    exit_leaves_nothing_behind(40, Stop::Term)
}

#[test]
fn sigkill_fails_open_and_uninstall_leaves_nothing() -> Result<()> {
    exit_leaves_nothing_behind(41, Stop::Kill)
}

/// Without the privileges to load its programs, keel stops before touching the kernel and names
/// what it lacks, once, instead of a bare `Operation not permitted` repeated down the error chain.
#[test]
fn keel_without_privilege_names_what_it_lacks() -> Result<()> {
    keel_tests::host::require_root()?;
    keel_tests::host::require_tools(&["setpriv", "timeout"])?;
    let keel = keel_tests::host::keel_bin()?;
    let config = keel_tests::host::workspace_root()
        .join("config")
        .join("demo");
    // An empty cgroup of its own: even a wrongly passing check could capture nothing here.
    let cgroup = keel_tests::host::cgroup2_mount()?.join(format!("ktpriv-{}", std::process::id()));
    std::fs::create_dir_all(&cgroup)?;
    let cases: [(&str, &[&str], &str); 2] = [
        (
            "uid 65534",
            &["--reuid=65534", "--regid=65534", "--clear-groups"],
            "(uid 65534) lacks CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_ADMIN",
        ),
        (
            "root without CAP_SYS_ADMIN and CAP_BPF",
            &["--bounding-set=-sys_admin,-bpf", "--inh-caps=-all"],
            "(uid 0) lacks CAP_BPF, CAP_SYS_ADMIN",
        ),
    ];
    let mut failures = Vec::new();
    for (label, drop, lacks) in cases {
        let out = std::process::Command::new("timeout")
            .arg("20")
            .arg("setpriv")
            .args(drop)
            .arg(&keel)
            .args(["run", "--config"])
            .arg(&config)
            .arg("--cgroup")
            .arg(&cgroup)
            .args([
                "--proxy-addr",
                "127.0.0.1:15931",
                "--admin-addr",
                "127.0.0.1:15932",
            ])
            .env("KEEL_LOG", "warn")
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let error_line = stderr
            .lines()
            .find(|l| l.starts_with("keel: error: "))
            .unwrap_or_default();
        let expected = format!(
            "keel: error: attaching eBPF programs to {}: loading and attaching the eBPF programs \
             needs root, or the capabilities CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN \
             (CAP_SYS_ADMIN also covers them); this process {lacks}",
            cgroup.display()
        );
        if out.status.code() != Some(1) || error_line != expected {
            failures.push(format!(
                "{label}: exit {:?}, error line\n  {error_line}\nexpected\n  {expected}\nstderr:\n{stderr}",
                out.status.code()
            ));
        }
    }
    let _ = std::fs::remove_dir(&cgroup);
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}
