//! Keel's privileged end-to-end test kit.
//!
//! - [`podnet`]: [`PodNet`], real pods (netns + veth + bridge + cgroup v2) with RAII cleanup;
//! - [`kubelet`]: kubelet-style pod and container cgroup names ([`PodNet::add_pod_kubelet`]);
//! - [`agent`]: runs the `pod-agent` helper (HTTP/h2c, gRPC, WebSocket and TLS servers, TCP echo,
//!   JSON-reporting clients) in pods;
//! - [`request_log`]: what reached each backend (one JSON line per request), read back by tests;
//! - [`keel`]: runs `keel run` in a cgroup, waits for `/ready`, reads the admin API, `keel validate`;
//! - [`config`]: temporary config directories and Service/Pod YAML;
//! - [`pki`]: a throwaway CA with server and client certificates as PEM files (TLS origination);
//! - [`apiserver`]: a stand-in Kubernetes API server (HTTPS list/watch, discovery, kubeconfig) that
//!   `kubectl` and kube-rs accept;
//! - [`figures`]: what reliability tests measured, for `cargo xtask chaos` (`KEEL_FIGURES`, `KEEL_CHAOS`);
//! - [`host`]: root/tool checks (fail loudly, never skip) and binary paths.
//!
//! Used by the tests in `tests/tests/` and by `cargo xtask demo`. Everything runs on this machine only:
//! pods have no default route and the service CIDR is blackholed on the host.

pub mod agent;
pub mod apiserver;
pub mod config;
pub mod figures;
pub mod host;
pub mod http;
pub mod keel;
pub mod kubelet;
pub mod memcg;
pub mod pki;
pub mod podnet;
pub mod process;
pub mod raw_http;
pub mod request_log;

pub use agent::{
    Agent, ChurnReport, ConnLoadReport, ConnMode, ConnSample, ConnectOutcome, DnsLoadReport,
    EchoBody, GrpcCall, GrpcCallReport, GrpcClientReport, GrpcServerOpts, HttpGet, HttpGetReport,
    HttpLoadReport, HttpServerOpts, ServerTls, TcpConnectReport, TcpEchoReport, TcpHoldReport,
    TlsClient, TlsClientReport, TlsServerLine, WsClient, WsReport,
};
pub use config::{pod_yaml, service_yaml, ConfigDir, SvcPort};
pub use keel::{admin_get, admin_stats, ConnectionRecord, Keel, KeelOptions, KubeMode};
pub use kubelet::{test_uid, CgroupDriver, KubeletCgroup, QosClass};
pub use pki::TestPki;
pub use podnet::{
    cleanup_all_stale, cleanup_stale, leftovers, KubeProxyRule, Pod, PodNet, PROXY_PORT,
    SERVICE_CIDR,
};
pub use process::Proc;
pub use request_log::{body_hash, body_pattern, RequestLog, RequestRecord};
