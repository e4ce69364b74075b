//! Port protocols through keel: HTTP/1.1 keep-alive, HTTP/2 prior knowledge (port name `http2`), and
//! opaque TCP (port name `tcp`) with half-close.
//!
//! Subnet indices 20..=29 belong to this file.

mod common;

use anyhow::{ensure, Result};
use common::{ensure_all_ok_via_proxy, records_from, vip, Fixture};
use keel_tests::config::service_yaml;
use keel_tests::{HttpGet, SvcPort};

const PREFIX: &str = "ktproto";

#[test]
fn http1_keepalive_serves_many_requests_on_one_connection() -> Result<()> {
    let fx = Fixture::reviews(PREFIX, 20, &["v1"])?;
    let keel = fx.start_keel()?;

    let r = fx.get_reviews(500)?;
    ensure_all_ok_via_proxy(&r, &fx.net)?;
    ensure!(
        r.connections == 1,
        "keel must keep the client connection alive: {} connections for 500 requests",
        r.connections
    );
    ensure!(
        r.by_protocol.get("HTTP/1.1") == Some(&500),
        "{:?}",
        r.by_protocol
    );

    let records = keel.connections()?;
    let ours = records_from(&records, &r.local_addrs);
    ensure!(
        ours.len() == 1 && ours[0].protocol == "http" && ours[0].source_pod == "default/sleep",
        "expected one http connection from default/sleep: {ours:?}"
    );
    Ok(())
}

#[test]
fn http2_prior_knowledge_on_an_http2_port() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 21, &[])?;
    let grpc = fx.add_pod(
        "greeter-v1",
        11,
        &[("app", "greeter"), ("version", "v1")],
        &[],
        false,
    )?;
    fx.servers.push(fx.agent.http_server(&grpc, 9090, "v1")?);
    fx.add_service(service_yaml(
        "greeter",
        "default",
        std::net::Ipv4Addr::new(10, 96, 0, 30),
        &[SvcPort {
            name: "http2",
            port: 9090,
            target_port: 9090,
        }],
        &[("app", "greeter")],
    ))?;
    let keel = fx.start_keel()?;

    let req = HttpGet::new("http://greeter:9090/hello")
        .connect_to(vip(30, 9090))
        .count(100)
        .http2();
    let r = fx.agent.http_get(&fx.sleep, &req)?;
    ensure_all_ok_via_proxy(&r, &fx.net)?;
    ensure!(r.connections == 1, "one h2 connection expected: {r:?}");
    ensure!(
        r.by_protocol.get("HTTP/2.0") == Some(&100),
        "an http2 port must reach the backend as HTTP/2: {:?}",
        r.by_protocol
    );
    ensure!(r.by_pod.get("greeter-v1") == Some(&100), "{:?}", r.by_pod);

    let records = keel.connections()?;
    let ours = records_from(&records, &r.local_addrs);
    ensure!(
        ours.len() == 1
            && ours[0].protocol == "http2"
            && ours[0].service == "greeter.default.svc.cluster.local"
            && ours[0].original_dst == "10.96.0.30:9090",
        "expected one connection record with protocol \"http2\" (port name `http2`) for \
         greeter.default.svc.cluster.local at 10.96.0.30:9090: {ours:?}"
    );
    Ok(())
}

#[test]
fn opaque_tcp_echo_with_half_close() -> Result<()> {
    let mut fx = Fixture::reviews(PREFIX, 22, &[])?;
    let echo = fx.add_pod("echo-v1", 11, &[("app", "echo")], &[], false)?;
    fx.servers.push(fx.agent.tcp_echo_server(&echo, 7000)?);
    fx.add_service(service_yaml(
        "echo",
        "default",
        std::net::Ipv4Addr::new(10, 96, 0, 40),
        &[SvcPort {
            name: "tcp",
            port: 7000,
            target_port: 7000,
        }],
        &[("app", "echo")],
    ))?;
    let keel = fx.start_keel()?;

    // 1 MiB both ways (more than any socket buffer), then an empty payload: the client half-closes at
    // once and keel must pass the FIN on and still deliver the backend's FIN back.
    let mut local_addrs = Vec::new();
    for size in [1usize << 20, 0] {
        let e = fx.agent.tcp_echo(&fx.sleep, vip(40, 7000), size)?;
        ensure!(
            e.error.is_none() && e.matched && e.got_eof && e.received == size as u64,
            "echo of {size} bytes through keel failed: {e:?}"
        );
        local_addrs.extend(e.local_addr);
    }

    let records = keel.connections()?;
    let ours = records_from(&records, &local_addrs);
    ensure!(
        ours.len() == 2,
        "two tcp connections expected: {ours:?} in {records:?}"
    );
    for rec in ours {
        ensure!(
            rec.protocol == "tcp"
                && rec.original_dst == "10.96.0.40:7000"
                && rec.service == "echo.default.svc.cluster.local"
                && rec.source_pod == "default/sleep",
            "{rec:?}"
        );
    }
    Ok(())
}
