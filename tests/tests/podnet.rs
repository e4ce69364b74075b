//! Self-tests of the pod network harness (no keel needed): pods talk to each other directly over the
//! bridge, cannot reach anything else, and every resource is gone after the guard drops — also after a
//! panic and after a crash (then `cleanup_stale` removes the leftovers).
//!
//! Subnet indices 50..=59 belong to this file.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use keel_tests::{cleanup_stale, leftovers, ConnectOutcome, HttpGet, PodNet};

const PREFIX: &str = "ktnet";
/// Own prefixes for the tests that call `cleanup_stale`, so parallel tests never see each other's state.
const CRASH_PREFIX: &str = "ktcrash";
const LIVE_PREFIX: &str = "ktlive";

#[test]
fn pods_reach_each_other_directly_and_nothing_else() -> Result<()> {
    let agent = common::agent()?;
    let mut net = PodNet::new(PREFIX, 50)?;
    let server = net.add_pod("default", "server", 10)?;
    let client = net.add_pod("default", "client", 2)?;
    let _http = agent.http_server(&server, 8080, "v9")?;
    let _echo = agent.tcp_echo_server(&server, 7000)?;

    // HTTP/1.1 keep-alive, directly pod to pod: the server sees the client's own IP.
    let url = format!("http://{}/hello", server.addr(8080));
    let r = agent.http_get(&client, &HttpGet::new(&url).count(20))?;
    ensure!(r.status(200) == 20, "expected 20 OKs: {r:?}");
    ensure!(
        r.connections == 1,
        "keep-alive should use one connection: {r:?}"
    );
    ensure!(r.by_pod.get("server") == Some(&20), "{r:?}");
    ensure!(r.by_version.get("v9") == Some(&20), "{r:?}");
    ensure!(
        r.by_peer_ip.get(&client.ip.to_string()) == Some(&20),
        "server should see the client pod's IP: {r:?}"
    );
    ensure!(r.by_protocol.get("HTTP/1.1") == Some(&20), "{r:?}");
    let body = r.last_body.context("no body")?;
    ensure!(body.path == "/hello" && body.method == "GET", "{body:?}");
    ensure!(
        body.headers.get("host").map(String::as_str)
            == Some(server.addr(8080).to_string().as_str()),
        "{body:?}"
    );

    // New connection per request, and h2c prior knowledge on the same port.
    let r = agent.http_get(&client, &HttpGet::new(&url).count(5).new_conn())?;
    ensure!(r.status(200) == 5 && r.connections == 5, "{r:?}");
    let r = agent.http_get(&client, &HttpGet::new(&url).count(10).http2())?;
    ensure!(r.status(200) == 10 && r.connections == 1, "{r:?}");
    ensure!(r.by_protocol.get("HTTP/2.0") == Some(&10), "{r:?}");

    // TCP echo with half-close.
    let e = agent.tcp_echo(&client, server.addr(7000), 1 << 20)?;
    ensure!(e.matched && e.got_eof && e.sent == 1 << 20, "{e:?}");

    // Nothing listens on 7001: refused. The pod has no default route: a VIP and an outside address are
    // unreachable at once (and the host blackholes the service CIDR besides).
    let c = agent.tcp_connect(&client, server.addr(7001), None)?;
    ensure!(c.outcome == ConnectOutcome::Refused, "{c:?}");
    let c = agent.tcp_connect(&client, common::vip(20, 9080), None)?;
    ensure!(
        c.outcome == ConnectOutcome::Unreachable,
        "VIP from an uncaptured pod: {c:?}"
    );
    let c = agent.tcp_connect(&client, "192.0.2.1:80".parse()?, None)?;
    ensure!(c.outcome == ConnectOutcome::Unreachable, "{c:?}");

    // The server also answers on the pod's loopback from inside the pod.
    let r = agent.http_get(&server, &HttpGet::new("http://127.0.0.1:8080/"))?;
    ensure!(
        r.status(200) == 1 && r.by_peer_ip.get("127.0.0.1") == Some(&1),
        "{r:?}"
    );

    // The host blackholes the service CIDR with this network's own route.
    let routes = keel_tests::host::run("ip", &["route", "show", "type", "blackhole"])?;
    ensure!(
        routes.contains("10.96.0.0/16") && routes.contains("metric 40050"),
        "blackhole missing: {routes}"
    );

    net.teardown()?;
    let left = leftovers(PREFIX, 50);
    ensure!(left.is_empty(), "left behind: {left:?}");
    Ok(())
}

#[test]
fn drop_cleans_up_even_on_panic() -> Result<()> {
    let agent = common::agent()?;
    let result = std::panic::catch_unwind(|| {
        let mut net = PodNet::new(PREFIX, 51).expect("PodNet::new");
        let pod = net.add_pod("default", "victim", 3).expect("add_pod");
        let outside = net
            .add_pod_outside_root("other", "stray", 4)
            .expect("add_pod_outside_root");
        // A child that would outlive us if Drop did not kill the cgroup tree.
        let mut cmd = pod.command(agent.bin());
        cmd.args(["tcp-echo", "--listen", "0.0.0.0:7000"])
            .stdout(std::process::Stdio::null());
        let child = cmd.spawn().expect("spawn");
        std::mem::forget(child);
        assert!(outside.cgroup.exists() && !outside.under_root);
        panic!("deliberate panic with a live pod network");
    });
    ensure!(result.is_err(), "the closure should have panicked");
    let left = leftovers(PREFIX, 51);
    ensure!(left.is_empty(), "left behind after panic: {left:?}");
    Ok(())
}

/// Helper for [`stale_leftovers_of_a_crashed_run_are_removed`]: builds a network and exits without
/// running any destructor. Ignored unless run by that test.
#[test]
#[ignore = "run as a child process by stale_leftovers_of_a_crashed_run_are_removed"]
fn crash_helper() {
    if std::env::var_os("KEEL_TESTS_CRASH_HELPER").is_none() {
        return;
    }
    let mut net = PodNet::new(CRASH_PREFIX, 52).expect("PodNet::new");
    net.add_pod("default", "doomed", 5).expect("add_pod");
    // exit() runs no destructors (like a crash) and, unlike abort(), leaves no core file behind.
    std::process::exit(3);
}

#[test]
fn stale_leftovers_of_a_crashed_run_are_removed() -> Result<()> {
    let exe = std::env::current_exe().context("current_exe")?;
    let status = std::process::Command::new(exe)
        .args(["--exact", "crash_helper", "--ignored", "--nocapture"])
        .env("KEEL_TESTS_CRASH_HELPER", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .context("running crash helper")?;
    ensure!(
        status.code() == Some(3),
        "crash helper should have exited with 3, got {status}"
    );
    let left = leftovers(CRASH_PREFIX, 52);
    ensure!(
        left.len() >= 4,
        "the crashed run should have left netns, links, route and cgroups: {left:?}"
    );
    let report = cleanup_stale(CRASH_PREFIX)?;
    ensure!(
        report.iter().any(|r| r.starts_with("ktcrash-52: removed")),
        "cleanup_stale report: {report:?}"
    );
    let left = leftovers(CRASH_PREFIX, 52);
    ensure!(left.is_empty(), "cleanup_stale left: {left:?}");

    // And a new network on the same index builds cleanly afterwards.
    let mut net = PodNet::new(CRASH_PREFIX, 52)?;
    net.add_pod("default", "doomed", 5)?;
    net.teardown()?;
    Ok(())
}

#[test]
fn a_live_network_is_never_touched_by_others() -> Result<()> {
    let net = PodNet::new(LIVE_PREFIX, 53)?;
    // Same index while it is alive: refused, whatever the prefix.
    let err = PodNet::new("ktother", 53)
        .err()
        .context("second owner of index 53 was accepted")?;
    ensure!(format!("{err:#}").contains("in use"), "{err:#}");
    // cleanup_stale leaves a live network alone.
    let report = cleanup_stale(LIVE_PREFIX)?;
    ensure!(
        report.iter().any(|r| r.contains("ktlive-53: in use")),
        "{report:?}"
    );
    ensure!(
        !leftovers(LIVE_PREFIX, 53).is_empty(),
        "live network was removed"
    );
    std::thread::sleep(Duration::from_millis(10));
    net.teardown()?;
    Ok(())
}
