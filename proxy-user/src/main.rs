//! `keel`: the node proxy binary.

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use keel::admin::{self, AdminContext, ConfigStatus, ConnLog, Stats};
use keel::ebpf::{CapturedPod, Redirector};
use keel::source::kube::Change;
use keel::state::reload::{self, ConfigSource, KubeObjects, Reloader};
use keel::state::{self, State};

/// See `keel::allocator` for why jemalloc and how it is set.
#[global_allocator]
static ALLOCATOR: keel::allocator::Jemalloc = keel::allocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "keel",
    version,
    about = "eBPF-accelerated node-level service-mesh proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the socket redirect to a cgroup root and serve the pods under it.
    Run(RunArgs),
    /// Check config files and directories; exit 1 with every error, 0 with a one-line summary.
    Validate {
        /// Files and directories of Kubernetes and Istio YAML (as for `kubectl apply -f PATH`); a
        /// directory gives its `*.yaml`/`*.yml` files, a file is read whatever its name.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Fail on warnings too (an unknown host or subset, a field accepted but not applied, ...).
        #[arg(long)]
        strict: bool,
    },
    /// Explain what keel does with one request of one client pod: the VirtualService rule that
    /// matches and why earlier ones do not, destinations, DestinationRule policy, endpoints.
    Explain(ExplainArgs),
    /// Remove what `keel run` leaves in the kernel for a cgroup root and proxy address (pinned
    /// links and maps under /sys/fs/bpf/keel): the programs detach at once and pods connect
    /// directly. Run it after the last keel of the node has stopped (uninstalling the DaemonSet).
    Uninstall {
        /// The `--cgroup` keel ran with.
        #[arg(long)]
        cgroup: PathBuf,
        /// The `--proxy-addr` keel ran with (each of them, when it had two).
        #[arg(long, required = true, value_delimiter = ',')]
        proxy_addr: Vec<SocketAddr>,
    },
    /// Ask a running keel to shut down as on SIGTERM (`POST /quitquitquit`) and wait until its
    /// admin port closes: the DaemonSet's preStop hook.
    Quit {
        /// The running keel's admin address.
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin_addr: SocketAddr,
        /// How long to wait for the admin port to close, in seconds.
        #[arg(long, default_value_t = 20)]
        timeout: u64,
    },
}

#[derive(clap::Args)]
struct ExplainArgs {
    /// The client pod, `namespace/name`.
    #[arg(long)]
    from: String,
    /// `http://host[:port]/path?query`, `https://…`, `tcp://host:port` or `tls://host:port`; a short
    /// host is resolved in the pod's namespace (`reviews` = `reviews.<ns>.svc.cluster.local`).
    url: String,
    /// A request header, `name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// HTTP method.
    #[arg(short = 'X', long = "request", default_value = "GET")]
    method: String,
    /// TLS server name (routes `tls` rules by SNI).
    #[arg(long)]
    sni: Option<String>,
    /// Config files and directories, built as `keel run` builds them (endpoint health unknown).
    #[arg(long, required_unless_present = "admin", conflicts_with = "admin")]
    config: Vec<PathBuf>,
    /// A running keel's admin address: explain against its live state, endpoint health included.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// With `--config`: the node keel runs on (its `Node` gives the clients' locality).
    #[arg(long)]
    node_name: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum UpstreamState {
    PerClient,
    Node,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Directory of Kubernetes and Istio YAML (file mode).
    #[arg(long, required_unless_present = "kube", conflicts_with = "kube")]
    config: Option<PathBuf>,
    /// Read the config from the Kubernetes API server instead of a directory (cluster mode):
    /// Istio's networking kinds, Services, EndpointSlices, Pods, Namespaces and Nodes.
    #[arg(long)]
    kube: bool,
    /// kubeconfig for `--kube`. Default: `$KUBECONFIG` or `~/.kube/config`, else the pod's
    /// service account (in-cluster).
    #[arg(long, value_name = "PATH", requires = "kube")]
    kubeconfig: Option<PathBuf>,
    /// cgroup v2 directory the programs attach to. File mode: every pod has `<namespace>/<pod>`
    /// under it. Cluster mode: kubelet's pod cgroups (`kubepods*`) are under it (the cgroup v2 root,
    /// `/sys/fs/cgroup`, on a node).
    #[arg(long)]
    cgroup: PathBuf,
    /// Address pods' connections are redirected to; the proxy listens here (node IP / bridge IP).
    /// At most one per family, repeated or comma-separated for a dual-stack node
    /// (`--proxy-addr 10.244.0.1:15001 --proxy-addr [fd00:10:244::1]:15001`): IPv4 destinations
    /// (also v4-mapped ones on IPv6 sockets) go to the IPv4 address, native IPv6 ones to the IPv6
    /// address; a family without one is not redirected.
    #[arg(long, required = true, value_delimiter = ',')]
    proxy_addr: Vec<SocketAddr>,
    /// Localhost address of the admin API.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin_addr: SocketAddr,
    /// On SIGTERM, how long open connections may take to finish (seconds), as Istio's
    /// `terminationDrainDuration`: HTTP/1 clients get `Connection: close`, HTTP/2 ones GOAWAY, TCP
    /// relays run on; whatever is still open then is closed.
    #[arg(long, default_value_t = 5)]
    drain_time: u64,
    /// Redirected connections the kernel tracks at once (both connection maps are this size).
    /// Beyond it, new connections are not redirected: they go direct, never misrouted.
    #[arg(long, default_value_t = keel::ebpf::CONNECTION_CAPACITY, value_parser = clap::value_parser!(u32).range(1..=4_194_304))]
    max_connections: u32,
    /// Whose upstream state (connection pools, circuit breakers, outlier detection, balancer
    /// state) a request uses: `per-client` = one per (client pod, cluster), as each pod's sidecar
    /// has it; `node` = one per cluster for the whole node (limits then count every pod's traffic).
    #[arg(long, value_enum, default_value = "per-client")]
    upstream_state: UpstreamState,
    /// Data-plane worker threads, each with its own listener and upstream pools (default: one per
    /// core).
    #[arg(long)]
    workers: Option<usize>,
    /// Name of the Kubernetes node this proxy runs on; its `Node` resource's topology labels are
    /// the clients' locality for locality load balancing. Default: `$NODE_NAME` (set it from the
    /// downward API `spec.nodeName`), else the host name.
    #[arg(long)]
    node_name: Option<String>,
    /// Do not record Istio's standard metrics (`istio_*` on `/stats/prometheus`): no per-request
    /// label lookup or histogram update. Keel's own metrics stay.
    #[arg(long)]
    no_metrics: bool,
    /// Write an access log (Istio's format) to PATH (`/dev/stdout` or `-`: standard output).
    /// Off by default; wins over the MeshConfig's `accessLogFile`.
    #[arg(long, value_name = "PATH")]
    access_log: Option<String>,
    /// Access log encoding; wins over the MeshConfig's `accessLogEncoding` (default text).
    #[arg(long, value_enum, value_name = "ENCODING")]
    access_log_encoding: Option<LogEncoding>,
    /// Downstream connections open at once, node-wide; over it a new connection is closed at once
    /// (Envoy's `global_downstream_max_connections`). Default: a quarter of the open-file limit.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_downstream_connections: Option<u64>,
    /// Downstream connections one client pod may have open; over it a new one is closed at once.
    #[arg(long, default_value_t = keel::admission::DEFAULT_MAX_CONNECTIONS_PER_POD as u64, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections_per_pod: u64,
    /// HTTP requests one client pod may have in flight; over it a request gets 503 `UO` at once.
    #[arg(long, default_value_t = keel::admission::DEFAULT_MAX_REQUESTS_PER_POD as u64, value_parser = clap::value_parser!(u64).range(1..))]
    max_requests_per_pod: u64,
    /// Requests per second one client pod may start (a burst of a tenth of a second's worth is
    /// allowed). Requests over the rate are held until their turn; one whose turn is more than 1 s
    /// away gets 429 `local_rate_limited` (flag `RL`). Unset: no rate limit.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_request_rate_per_pod: Option<u32>,
    /// Seconds an HTTP/1 client may take to send request headers (also how long a kept-alive
    /// connection waits for its next request).
    #[arg(long, default_value_t = keel::admission::DEFAULT_HEADER_READ_TIMEOUT.as_secs_f64())]
    header_read_timeout: f64,
    /// Seconds a request body may go without a byte before the request is reset, and a client may
    /// take no response byte before its connection is closed (Envoy's `stream_idle_timeout`).
    #[arg(long, default_value_t = keel::admission::DEFAULT_BODY_IDLE_TIMEOUT.as_secs_f64())]
    body_idle_timeout: f64,
    /// A memory limit for keel's resident set size, in bytes or with a Kubernetes suffix
    /// (`512Mi`, `2Gi`, `500M`). The memory overload manager acts on the tightest of this and the
    /// limits of keel's memory cgroups, which it always follows (a DaemonSet container's limit
    /// needs no flag). Default: the cgroups' limits only.
    #[arg(long, value_name = "SIZE", value_parser = parse_memory_size)]
    memory_limit: Option<u64>,
    /// Export the proxy's spans over OTLP/HTTP (JSON, `POST <URL>/v1/traces`) to this collector,
    /// e.g. `http://127.0.0.1:4318`. Off by default.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
}

/// `--access-log-encoding`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum LogEncoding {
    Text,
    Json,
}

/// Apply the access log settings of `mesh` (the flags win); a file that cannot be opened leaves
/// the log as it was.
fn apply_access_log(metrics: &keel::metrics::Metrics, mesh: &keel::policy::MeshConfig) {
    if let Err(e) = metrics.access_log.apply(
        mesh.access_log_file.as_deref(),
        mesh.access_log_encoding,
        mesh.access_log_format.as_deref(),
    ) {
        tracing::error!(error = %e, "cannot open the access log");
    }
}

/// `--node-name`, else `$NODE_NAME`, else the host name; `None` if none is known.
fn node_name(flag: Option<String>) -> Option<String> {
    flag.or_else(|| std::env::var("NODE_NAME").ok())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate {
            paths,
            format,
            strict,
        } => keel::policy::run_validate(&paths, matches!(format, Format::Json), strict).map(
            |valid| {
                if valid {
                    std::process::ExitCode::SUCCESS
                } else {
                    std::process::ExitCode::from(1)
                }
            },
        ),
        Command::Run(args) => run(args).map(|()| std::process::ExitCode::SUCCESS),
        Command::Explain(args) => explain(args).map(|()| std::process::ExitCode::SUCCESS),
        Command::Uninstall { cgroup, proxy_addr } => {
            uninstall(&cgroup, &proxy_addr).map(|()| std::process::ExitCode::SUCCESS)
        }
        Command::Quit {
            admin_addr,
            timeout,
        } => admin::quit::request(admin_addr, Duration::from_secs(timeout))
            .map(|()| std::process::ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keel: error: {}", keel::error_chain::describe(&e));
            std::process::ExitCode::from(1)
        }
    }
}

/// The IPv4 and IPv6 proxy addresses of `--proxy-addr`: at most one per family, where a v4-mapped
/// IPv6 address is the IPv4 one (a v6 socket connecting to a v4-mapped address speaks IPv4).
fn split_proxy_addrs(
    addrs: &[SocketAddr],
) -> anyhow::Result<(Option<SocketAddrV4>, Option<SocketAddrV6>)> {
    let (mut v4, mut v6) = (None, None);
    for &addr in addrs {
        let normal = match addr {
            SocketAddr::V4(a) => SocketAddr::V4(a),
            SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
                Some(ip) => SocketAddr::V4(SocketAddrV4::new(ip, a.port())),
                None => SocketAddr::V6(a),
            },
        };
        match normal {
            SocketAddr::V4(a) => {
                if let Some(first) = v4.replace(a) {
                    bail!("--proxy-addr {first} and {addr}: at most one IPv4 address (a v4-mapped one counts as IPv4)");
                }
            }
            SocketAddr::V6(a) => {
                if let Some(first) = v6.replace(a) {
                    bail!("--proxy-addr {first} and {addr}: at most one IPv6 address");
                }
            }
        }
    }
    if v4.is_none() && v6.is_none() {
        bail!("--proxy-addr: give at least one address");
    }
    Ok((v4, v6))
}

/// The addresses keel listens on: the IPv4 one first.
fn listen_addrs(v4: Option<SocketAddrV4>, v6: Option<SocketAddrV6>) -> Vec<SocketAddr> {
    v4.map(SocketAddr::V4)
        .into_iter()
        .chain(v6.map(SocketAddr::V6))
        .collect()
}

/// `--proxy-addr` as the log prints it.
fn addrs_text(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(SocketAddr::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// `keel uninstall`.
fn uninstall(cgroup: &Path, proxy_addrs: &[SocketAddr]) -> anyhow::Result<()> {
    let id = keel::ebpf::cgroup_id(cgroup)
        .with_context(|| format!("cgroup root {}", cgroup.display()))?;
    let (v4, v6) = split_proxy_addrs(proxy_addrs)?;
    match keel::ebpf::pins::uninstall(id, v4, v6)
        .with_context(|| format!("removing keel's pins for {}", cgroup.display()))?
    {
        Some(dir) => eprintln!(
            "keel: removed {}; nothing is attached any more",
            dir.display()
        ),
        None => eprintln!(
            "keel: nothing installed for {} and {}",
            cgroup.display(),
            addrs_text(proxy_addrs)
        ),
    }
    Ok(())
}

/// `keel explain`: from files or from a running keel; text or JSON on stdout.
fn explain(args: ExplainArgs) -> anyhow::Result<()> {
    use keel::explain;
    let query = explain::Query {
        from: args.from,
        url: args.url,
        method: Some(args.method),
        headers: args
            .headers
            .iter()
            .map(|h| explain::parse_header(h))
            .collect::<Result<_, _>>()?,
        sni: args.sni,
    };
    let explanation = match args.admin {
        Some(addr) => explain::source::from_admin(addr, &query)?,
        None => {
            let (e, rejected) =
                explain::source::from_config(&args.config, args.node_name.as_deref(), &query)?;
            if rejected > 0 {
                eprintln!("keel: {rejected} config error(s); rejected resources are left out, as `keel run` leaves them out (see `keel validate`)");
            }
            e
        }
    };
    match args.format {
        Format::Text => print!("{}", explain::render(&explanation)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&explanation)?),
    }
    Ok(())
}

/// Logs to stderr, filtered by `KEEL_LOG` (default `info`), without colour codes unless stderr is a
/// terminal. Returns the admin API's handle on the filter (`/logging`).
fn init_tracing() -> keel::admin::LogFilter {
    use std::io::IsTerminal;
    let initial = std::env::var("KEEL_LOG").unwrap_or_else(|_| "info".to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&initial)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter_reloading();
    let handle = builder.reload_handle();
    builder.init();
    Arc::new(move |new: Option<&str>| {
        if let Some(directives) = new {
            let filter = tracing_subscriber::EnvFilter::try_new(directives)
                .map_err(|e| format!("invalid log filter {directives:?}: {e}"))?;
            handle
                .reload(filter)
                .map_err(|e| format!("cannot change the log filter: {e}"))?;
            tracing::info!(filter = directives, "log filter changed");
        }
        handle
            .with_current(|f| f.to_string())
            .map_err(|e| format!("cannot read the log filter: {e}"))
    })
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let log_filter = init_tracing();
    if args.admin_addr.ip().is_unspecified() {
        bail!(
            "--admin-addr must be a specific (localhost) address, not {}",
            args.admin_addr
        );
    }
    // The control runtime: config, kernel maps, signals. The data plane runs on its own workers.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the control runtime")?;
    runtime.block_on(serve(args, log_filter))
}

async fn serve(args: RunArgs, log_filter: keel::admin::LogFilter) -> anyhow::Result<()> {
    let cgroup_root = args.cgroup.clone();
    if !cgroup_root.is_dir() {
        bail!("cgroup root {} is not a directory", cgroup_root.display());
    }
    let node = node_name(args.node_name.clone());
    tracing::info!(node = node.as_deref().unwrap_or("<unknown>"), "node name");
    let layout = match &args.config {
        Some(_) => state::PodLayout::Files {
            root: cgroup_root.clone(),
        },
        None => state::PodLayout::kubelet(
            cgroup_root.clone(),
            node.clone().context(
                "--kube needs the node's name: --node-name or $NODE_NAME (Downward API spec.nodeName)",
            )?,
        ),
    };
    let state = Arc::new(State::for_node(node));
    let (mut source, mut fingerprint, mut changes) = match &args.config {
        Some(dir) => {
            let fingerprint = reload::fingerprint(dir)
                .with_context(|| format!("reading config directory {}", dir.display()))?;
            (
                ConfigSource::Dir(Reloader::new(dir)),
                Some(fingerprint),
                None,
            )
        }
        None => {
            let client = keel::source::kube::client(args.kubeconfig.as_deref()).await?;
            let (tx, rx) = tokio::sync::mpsc::channel(1024);
            keel::source::kube::spawn_watchers(client, state.node_name().map(str::to_string), tx);
            (ConfigSource::Kube(KubeObjects::default()), None, Some(rx))
        }
    };
    // File mode loads before the admin API starts (a bad directory is an error at once); cluster
    // mode waits for the API server with the admin API up (`/ready` 503 meanwhile).
    let mut first = None;
    if let ConfigSource::Dir(reloader) = &mut source {
        let loaded = reloader
            .load()
            .with_context(|| format!("reading config directory {}", reloader.dir().display()))?;
        fingerprint = Some(reloader.fingerprint().clone());
        first = Some(loaded);
    }
    let config_status = Arc::new(Mutex::new(
        first.as_ref().map(report_load).unwrap_or_default(),
    ));
    if let Some(loaded) = first.as_mut() {
        let snapshot = Arc::clone(&loaded.serving);
        drop(state.publish(Arc::clone(&snapshot), layout.resolve(&snapshot)));
        keel::allocator::release_freed_memory();
    }

    // Listen before attaching, so no redirected connection finds the port closed. One listener per
    // worker (SO_REUSEPORT): the kernel spreads connections, and each connection, its requests and
    // its upstream connections stay on one thread (no cross-thread wakeups on the request path).
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let (proxy_v4, proxy_v6) = split_proxy_addrs(&args.proxy_addr)?;
    let listen = listen_addrs(proxy_v4, proxy_v6);
    let mut listeners = Vec::with_capacity(workers);
    for _ in 0..workers {
        let per_worker = listen
            .iter()
            .map(|&addr| {
                worker::bind_reuseport(addr)
                    .with_context(|| format!("cannot listen on --proxy-addr {addr}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        listeners.push(per_worker);
    }
    // The admin API answers from before the attach (`/ready` is 503 until serving).
    let stats = Arc::new(Stats::default());
    let conn_log = Arc::new(ConnLog::default());
    let metrics = Arc::new(keel::metrics::Metrics::default());
    metrics.set_istio_metrics(!args.no_metrics);
    metrics
        .access_log
        .set_flags(keel::metrics::log_sink::LogFlags {
            path: args.access_log.clone(),
            encoding: args.access_log_encoding.map(|e| match e {
                LogEncoding::Text => keel::metrics::access_log::Encoding::Text,
                LogEncoding::Json => keel::metrics::access_log::Encoding::Json,
            }),
        });
    apply_access_log(&metrics, &state.load().snapshot.mesh);
    if let Some(endpoint) = &args.otlp_endpoint {
        // The exporter runs on this (control) runtime, off the data-plane workers.
        let node_id = format!(
            "keel~{}",
            node_name(args.node_name.clone()).unwrap_or_else(|| "unknown".to_string())
        );
        metrics
            .tracer
            .start(endpoint, node_id)
            .map_err(anyhow::Error::msg)?;
        tracing::info!(%endpoint, "exporting spans over OTLP");
    }
    let ready = Arc::new(AtomicBool::new(false));
    let quit = Arc::new(tokio::sync::Notify::new());
    // Weak: dropping the redirector at shutdown must still detach the programs.
    let attached: Arc<std::sync::OnceLock<std::sync::Weak<Mutex<Redirector>>>> = Arc::default();
    let kernel_stats = {
        let attached = Arc::clone(&attached);
        Arc::new(move || {
            let redirector = attached.get()?.upgrade()?;
            redirector.lock().ok().and_then(|r| r.stats().ok())
        })
    };
    let state_scope = match args.upstream_state {
        UpstreamState::PerClient => keel::upstream::StateScope::PerClient,
        UpstreamState::Node => keel::upstream::StateScope::Node,
    };
    admin::spawn(
        args.admin_addr,
        AdminContext {
            ready: Arc::clone(&ready),
            log_filter,
            stats: Arc::clone(&stats),
            conn_log: Arc::clone(&conn_log),
            metrics: Arc::clone(&metrics),
            state: Arc::clone(&state),
            config_status: Arc::clone(&config_status),
            kernel_stats,
            state_scope,
            quit: Arc::clone(&quit),
        },
    )?;
    if let (ConfigSource::Kube(objects), Some(rx)) = (&mut source, changes.as_mut()) {
        initial_sync(objects, rx).await?;
        let loaded = objects.load();
        let snapshot = Arc::clone(&loaded.serving);
        drop(state.publish(Arc::clone(&snapshot), layout.resolve(&snapshot)));
        if let Ok(mut status) = config_status.lock() {
            *status = report_load(&loaded);
        }
        apply_access_log(&metrics, &snapshot.mesh);
        keel::allocator::release_freed_memory();
    }
    let mut redirector = Redirector::attach(&cgroup_root, proxy_v4, proxy_v6, args.max_connections)
        .with_context(|| format!("attaching eBPF programs to {}", cgroup_root.display()))?;
    // Only a keel that serves changes the host: one that cannot attach leaves the sysctl alone.
    worker::enable_listener_migration();
    sync_kernel(&mut redirector, &state)?;
    let conn_table = redirector.conn_table();
    let redirector = Arc::new(Mutex::new(redirector));
    let _ = attached.set(Arc::downgrade(&redirector));
    let (drain_control, drain) = keel::accept::DrainControl::new();

    let admission = keel::admission::Admission::new(limits(&args)?, Arc::clone(&stats));
    tracing::info!(limits = ?admission.limits(), "admission limits");
    Arc::clone(admission.overload())
        .spawn(keel::overload::MemorySource::for_this_process(
            args.memory_limit,
        ))
        .context("starting the memory overload monitor")?;
    for (i, listener) in listeners.into_iter().enumerate() {
        let acceptor = keel::accept::Acceptor {
            state: Arc::clone(&state),
            stats: Arc::clone(&stats),
            metrics: Arc::clone(&metrics),
            conn_log: Arc::clone(&conn_log),
            conn_table: conn_table.clone(),
            state_scope,
            admission: Arc::clone(&admission),
            drain: drain.clone(),
        };
        worker::spawn(i, listener, acceptor)?;
    }
    let control_task = tokio::spawn(control_loop(Control {
        redirector: Arc::clone(&redirector),
        state: Arc::clone(&state),
        layout,
        source,
        dir_watch: match &args.config {
            Some(dir) => match keel::source::dir_watch::DirWatch::new(dir) {
                Ok(watch) => Some(watch),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the config directory; looking at it every 250 ms");
                    None
                }
            },
            None => None,
        },
        fingerprint: fingerprint.take(),
        changes: changes.take(),
        kubepods: match &args.config {
            Some(_) => None,
            None => match keel::pods::watch::KubepodsWatch::new() {
                Ok(watch) => Some(watch),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch kubelet's pod cgroups; rescanning every second");
                    None
                }
            },
        },
        stats,
        config_status,
        metrics: Arc::clone(&metrics),
        writer: true,
    }));
    ready.store(true, Ordering::Release);
    tracing::info!(
        proxy = %addrs_text(&listen),
        admin = %args.admin_addr,
        cgroup = %cgroup_root.display(),
        services = state.load().snapshot.services.len(),
        meshed = state.load().snapshot.meshed_destinations().len(),
        pods = state.load().pod_by_cgroup.len(),
        "keel serving"
    );

    tokio::select! {
        signal = shutdown_signal() => signal?,
        () = quit.notified() => tracing::info!("POST /quitquitquit"),
    }
    ready.store(false, Ordering::Release);
    // A draining keel writes nothing shared any more: the successor (if any) owns the maps.
    control_task.abort();
    let _ = control_task.await;
    let successor = {
        let mut r = redirector
            .lock()
            .map_err(|_| anyhow::anyhow!("redirector lock poisoned"))?;
        let successor = r.others_alive();
        // From here new connections go to the successor, or direct when there is none.
        r.stop_heartbeat();
        successor
    };
    tracing::info!(
        successor,
        drain_time_s = args.drain_time,
        "shutting down: draining"
    );
    if !successor {
        // Connects the kernel redirected just before the heartbeat stopped are still in their
        // handshake: give them time to reach the accept queue.
        tokio::time::sleep(QUIESCE).await;
    }
    drain_control.start();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.drain_time);
    while drain_control.open() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = drain_control.open();
    if left > 0 {
        tracing::warn!(
            connections = left,
            "drain deadline passed; closing what is still open"
        );
    } else {
        tracing::info!("drained");
    }
    // The pinned links and maps stay: the next keel takes them over, `keel uninstall` removes them.
    drop(redirector);
    Ok(())
}

/// A byte count with an optional Kubernetes quantity suffix (`Ki`, `Mi`, `Gi`, `K`, `M`, `G`).
fn parse_memory_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a size: expected digits, e.g. 512Mi"))?;
    let unit: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "K" | "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        other => {
            return Err(format!(
                "`{other}` is not a size suffix: use Ki, Mi, Gi, K, M or G"
            ))
        }
    };
    match number.checked_mul(unit) {
        Some(0) => Err("a memory limit of 0 would refuse everything".to_string()),
        Some(bytes) => Ok(bytes),
        None => Err(format!("`{text}` is too large")),
    }
}

/// The admission limits the flags ask for.
fn limits(args: &RunArgs) -> anyhow::Result<keel::admission::Limits> {
    let seconds = |name: &str, v: f64| {
        Duration::try_from_secs_f64(v)
            .ok()
            .filter(|d| !d.is_zero())
            .with_context(|| format!("--{name} must be a positive number of seconds, not {v}"))
    };
    let count = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    Ok(keel::admission::Limits {
        max_connections: args
            .max_downstream_connections
            .map_or_else(keel::admission::default_max_connections, count),
        max_connections_per_pod: count(args.max_connections_per_pod),
        max_requests_per_pod: count(args.max_requests_per_pod),
        max_request_rate_per_pod: args
            .max_request_rate_per_pod
            .and_then(std::num::NonZeroU32::new),
        header_read_timeout: seconds("header-read-timeout", args.header_read_timeout)?,
        body_idle_timeout: seconds("body-idle-timeout", args.body_idle_timeout)?,
        ..keel::admission::Limits::default()
    })
}

/// How long a keel without successor keeps accepting after it stopped its heartbeat.
const QUIESCE: Duration = Duration::from_millis(50);

/// Log a load's problems and turn them into the admin's config status.
fn report_load(loaded: &reload::Reloaded) -> ConfigStatus {
    for e in &loaded.on_disk.errors {
        tracing::error!("config rejected: {e}");
    }
    for w in &loaded.on_disk.warnings {
        tracing::warn!("config: {w}");
    }
    if loaded.kept_previous > 0 {
        tracing::warn!(
            resources = loaded.kept_previous,
            "rejected resources keep serving their last good version"
        );
    }
    ConfigStatus {
        errors: loaded
            .on_disk
            .errors
            .iter()
            .map(|e| e.to_string())
            .collect(),
        warnings: loaded
            .on_disk
            .warnings
            .iter()
            .map(|w| w.to_string())
            .collect(),
        kept_previous: loaded.kept_previous,
        rejected: loaded
            .on_disk
            .errors
            .iter()
            .map(|e| admin::RejectedResource {
                resource: format!("{} {}/{}", e.at.kind, e.at.namespace, e.at.name),
                source: if e.at.line == 0 {
                    e.at.file.clone()
                } else {
                    format!("{}:{}", e.at.file, e.at.line)
                },
                field: e.at.field.clone(),
                reason: e.reason.to_string(),
                previous_version_serving: loaded.kept.iter().any(|k| {
                    k.kind == e.at.kind && k.name == e.at.name && k.namespace == e.at.namespace
                }),
            })
            .collect(),
    }
}

/// Publish the current snapshot's meshed destinations and captured pods (with their traffic
/// rules) to the kernel.
fn sync_kernel(redirector: &mut Redirector, state: &State) -> anyhow::Result<()> {
    let node = state.load();
    redirector
        .set_meshed_destinations(&node.snapshot.meshed_destinations())
        .context("publishing meshed destinations")?;
    // Parents last when they grow and first when they shrink would not matter: a child of a new
    // parent that is not in the pod map yet is exactly a pod that is still pending.
    let pods: Vec<CapturedPod> = node
        .pod_by_cgroup
        .iter()
        .map(|(&cg, &pod)| CapturedPod {
            cgroup_id: cg,
            index: u32::try_from(pod).unwrap_or(keel::ebpf::POD_INDEX_SKIP),
            fail_closed: node.snapshot.fail_closed(pod),
            traffic: node
                .snapshot
                .pods
                .get(pod)
                .and_then(|p| p.traffic.as_ref())
                .and_then(keel::pods::traffic::kernel_rules)
                .map(Box::new),
        })
        .chain(node.skipped_cgroups.iter().map(|&cg| CapturedPod {
            cgroup_id: cg,
            index: keel::ebpf::POD_INDEX_SKIP,
            fail_closed: false,
            traffic: None,
        }))
        .collect();
    redirector
        .set_pod_cgroups(&pods)
        .context("publishing pod cgroups")?;
    redirector
        .set_pod_parents(&node.pod_parents)
        .context("publishing pod parents")?;
    Ok(())
}

/// The one task that changes what the node serves and what the kernel redirects.
struct Control {
    redirector: Arc<Mutex<Redirector>>,
    state: Arc<State>,
    /// How pods' cgroups are found.
    layout: state::PodLayout,
    source: ConfigSource,
    /// File mode: the directory as last loaded.
    fingerprint: Option<reload::Fingerprint>,
    /// File mode: wakes the reload when the directory changes (`None`: looked at every tick).
    dir_watch: Option<keel::source::dir_watch::DirWatch>,
    /// Cluster mode: what the API watchers report.
    changes: Option<tokio::sync::mpsc::Receiver<Change>>,
    /// Cluster mode: wakes when kubelet makes or removes a pod cgroup, so a new pod is captured
    /// before its first connection rather than at the next rescan.
    kubepods: Option<keel::pods::watch::KubepodsWatch>,
    stats: Arc<Stats>,
    config_status: Arc<Mutex<ConfigStatus>>,
    /// Holds the access log, re-applied from the MeshConfig after each load.
    metrics: Arc<keel::metrics::Metrics>,
    /// Whether this keel wrote the shared kernel maps at the last tick.
    writer: bool,
}

/// How often the config directory is checked: a change applies well within a second.
const CONFIG_POLL: Duration = Duration::from_millis(250);
/// With the directory watched, it is still looked at this often (ticks), for what inotify cannot
/// report (a network filesystem, a file written through a link from elsewhere).
const CONFIG_BACKSTOP_EVERY: u32 = 40;
/// Pods' cgroups come and go independently of the config.
const POD_RESCAN_EVERY: u32 = 4;
/// Records of connects that never got a SYN out are swept this often, when this old.
const SWEEP_EVERY: u32 = 240;
const SWEEP_AGE: Duration = Duration::from_secs(300);

/// A change is applied once the directory stops changing for this long (watched: no event for
/// this long)...
const CONFIG_QUIET: Duration = Duration::from_millis(10);
/// (not watched: the fingerprint stays the same over this long)...
const CONFIG_SETTLE: Duration = Duration::from_millis(50);
/// ...or after this long if it keeps changing.
const CONFIG_SETTLE_MAX: Duration = Duration::from_secs(2);

/// Waits until the directory's fingerprint stays `fp` for [`CONFIG_SETTLE`] (at most
/// [`CONFIG_SETTLE_MAX`]) and returns the last one. A bulk update (a checkout rewriting thousands of
/// files) then costs one load that sees all of it, instead of one load of a half-written directory
/// followed by another.
async fn settled_fingerprint(dir: &Path, mut fp: reload::Fingerprint) -> reload::Fingerprint {
    let deadline = tokio::time::Instant::now() + CONFIG_SETTLE_MAX;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(CONFIG_SETTLE).await;
        match reload::fingerprint(dir) {
            Ok(next) if next != fp => fp = next,
            _ => break,
        }
    }
    fp
}

/// Cluster mode: changes that arrive within this long of each other apply as one.
const CHANGES_SETTLE: Duration = Duration::from_millis(20);
/// ...but no batch waits longer than this.
const CHANGES_SETTLE_MAX: Duration = Duration::from_millis(200);

/// Cluster mode, at start: applies changes until every kind has been listed once.
async fn initial_sync(
    objects: &mut KubeObjects,
    changes: &mut tokio::sync::mpsc::Receiver<Change>,
) -> anyhow::Result<()> {
    let mut listed: std::collections::HashSet<&'static str> = std::collections::HashSet::new();
    let kinds = keel::source::kube::WATCHED.len();
    let started = tokio::time::Instant::now();
    let mut next_report = started + Duration::from_secs(10);
    while listed.len() < kinds {
        match tokio::time::timeout_at(next_report, changes.recv()).await {
            Ok(Some(change)) => {
                if let Change::Replace { kind, .. } = &change {
                    listed.insert(kind);
                }
                objects.apply(change);
            }
            Ok(None) => bail!("the API watchers stopped"),
            Err(_) => {
                let waiting: Vec<&str> = keel::source::kube::WATCHED
                    .iter()
                    .map(|w| w.kind)
                    .filter(|k| !listed.contains(k))
                    .collect();
                tracing::warn!(waiting = %waiting.join(", "), seconds = started.elapsed().as_secs(), "waiting for the API server to list");
                next_report += Duration::from_secs(10);
            }
        }
    }
    tracing::info!(objects = objects.len(), "API server listed");
    Ok(())
}

/// The next pod cgroup change, or never (file mode, or no watch).
/// File mode: whether the config directory changed (never, without a watch).
async fn dir_changed(watch: &mut Option<keel::source::dir_watch::DirWatch>) -> bool {
    match watch {
        Some(w) => match w.changed().await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "the config directory watch failed; looking at it every 250 ms");
                *watch = None;
                true
            }
        },
        None => std::future::pending().await,
    }
}

async fn kubepods_changed(watch: &mut Option<keel::pods::watch::KubepodsWatch>) -> bool {
    match watch {
        Some(w) => match w.changed().await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "the pod cgroup watch failed; rescanning every second");
                *watch = None;
                false
            }
        },
        None => std::future::pending().await,
    }
}

/// The next change, or never (file mode).
async fn next_change(changes: &mut Option<tokio::sync::mpsc::Receiver<Change>>) -> Option<Change> {
    match changes {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn control_loop(mut c: Control) {
    let mut tick = tokio::time::interval(CONFIG_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u32 = 0;
    loop {
        let mut changed = false;
        let mut ticked = false;
        let mut pods_changed = false;
        let mut dir_woke = false;
        tokio::select! {
            _ = tick.tick() => ticked = true,
            woke = dir_changed(&mut c.dir_watch) => dir_woke = woke,
            woke = kubepods_changed(&mut c.kubepods) => pods_changed = woke,
            change = next_change(&mut c.changes) => match change {
                Some(change) => {
                    c.apply_changes(change).await;
                    changed |= c.reload(None).await;
                }
                None => {
                    tracing::error!("the API watchers stopped; keeping the current config");
                    c.changes = None;
                }
            },
        }
        if ticked {
            n = n.wrapping_add(1);
        }
        let look_at_dir = dir_woke
            || (ticked && (c.dir_watch.is_none() || n.is_multiple_of(CONFIG_BACKSTOP_EVERY)));
        if look_at_dir {
            // Watched: once the burst of changes is over, the watch names the files that changed,
            // and only those are read again.
            let mut names = None;
            if let (true, Some(watch)) = (dir_woke, c.dir_watch.as_mut()) {
                let settled = watch.settle(CONFIG_QUIET, CONFIG_SETTLE_MAX).await;
                match settled.and_then(|()| watch.take_changed()) {
                    Ok(keel::source::dir_watch::Changed::Names(n)) => names = Some(n),
                    Ok(keel::source::dir_watch::Changed::Unknown) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "the config directory watch failed; looking at it every 250 ms");
                        c.dir_watch = None;
                    }
                }
            }
            // Only YAML files named: exactly those changed. Anything else (a ConfigMap volume's
            // `..data` swapped, lost events, the backstop look): compare every file's metadata and,
            // if any changed, read them all.
            let only_yaml = names.as_ref().is_some_and(|n| {
                !n.is_empty() && n.iter().all(|name| keel::source::is_yaml_name(name))
            });
            if only_yaml {
                changed |= c.reload(names).await;
            } else if let (ConfigSource::Dir(reloader), Some(fingerprint)) =
                (&c.source, &c.fingerprint)
            {
                let dir = reloader.dir().to_path_buf();
                match reload::fingerprint(&dir) {
                    Ok(fp) if fp != *fingerprint => {
                        if c.dir_watch.is_none() {
                            settled_fingerprint(&dir, fp).await;
                        }
                        changed |= c.reload(None).await;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read config directory; keeping current config")
                    }
                }
            }
        }
        if changed || pods_changed || (ticked && n.is_multiple_of(POD_RESCAN_EVERY)) {
            c.watch_kubepods();
            let node = c.state.load();
            let resolved = c.layout.resolve(&node.snapshot);
            changed |= c.state.update_pod_cgroups(resolved);
        }
        let Ok(mut redirector) = c.redirector.lock() else {
            tracing::error!("redirector lock poisoned; stopping control loop");
            return;
        };
        // Of the keels serving this install (two during an upgrade), only the newest writes the
        // shared maps; one that becomes the newest again (its successor died) first re-reads them.
        let writer = redirector.is_newest();
        if writer && !c.writer {
            tracing::info!("this keel writes the kernel maps again");
            redirector.reload_mirrors();
            changed = true;
        } else if !writer && c.writer {
            tracing::info!("a newer keel serves this install; it writes the kernel maps now");
        }
        c.writer = writer;
        if changed && writer {
            if let Err(e) = sync_kernel(&mut redirector, &c.state) {
                tracing::error!("kernel sync failed: {e:#}");
            }
        }
        if writer && ticked && n.is_multiple_of(SWEEP_EVERY) {
            match redirector.sweep_unestablished(SWEEP_AGE) {
                Ok(0) => {}
                Ok(swept) => tracing::info!(swept, "removed stale connection records"),
                Err(e) => tracing::warn!(error = %e, "sweeping connection records failed"),
            }
        }
    }
}

impl Control {
    /// Cluster mode: (re)registers the kubepods and QoS directories with the inotify watch, before
    /// the scan that follows, so a pod made in between is still seen.
    fn watch_kubepods(&mut self) {
        let (Some(watch), state::PodLayout::Kubelet { root, .. }) =
            (&mut self.kubepods, &self.layout)
        else {
            return;
        };
        match keel::pods::kubelet::find_kubepods_roots(root) {
            Ok(roots) => {
                if let Err(e) = watch.watch(&roots) {
                    tracing::debug!(error = %e, "cannot watch a kubepods directory");
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot find kubelet's kubepods cgroups"),
        }
    }

    /// Applies `first` and every change that follows it closely (a `kubectl apply` of several
    /// objects, a re-list), so that they publish as one config.
    async fn apply_changes(&mut self, first: Change) {
        let ConfigSource::Kube(objects) = &mut self.source else {
            return;
        };
        objects.apply(first);
        let Some(rx) = self.changes.as_mut() else {
            return;
        };
        let deadline = tokio::time::Instant::now() + CHANGES_SETTLE_MAX;
        loop {
            let wait = (tokio::time::Instant::now() + CHANGES_SETTLE).min(deadline);
            match tokio::time::timeout_at(wait, rx.recv()).await {
                Ok(Some(change)) => objects.apply(change),
                Ok(None) | Err(_) => break,
            }
        }
    }

    /// Load the config directory and publish it, both off the runtime's workers (building the
    /// routing tables of a large config takes a while). True if published.
    ///
    /// `changed`: file mode, the config files that changed (`None`: unknown, every file is read).
    async fn reload(
        &mut self,
        changed: Option<std::collections::HashSet<std::ffi::OsString>>,
    ) -> bool {
        let mut source =
            std::mem::replace(&mut self.source, ConfigSource::Kube(KubeObjects::default()));
        let state = Arc::clone(&self.state);
        let layout = self.layout.clone();
        let started = std::time::Instant::now();
        let (source, loaded) = match tokio::task::spawn_blocking(move || {
            let loaded = source.load(changed.as_ref()).map(|loaded| {
                let load_ms = started.elapsed().as_secs_f64() * 1e3;
                let snapshot = Arc::clone(&loaded.serving);
                let pods = layout.resolve(&snapshot);
                let resolved_ms = started.elapsed().as_secs_f64() * 1e3;
                let previous = state.publish_changed(snapshot, pods, &loaded.changes);
                let published_ms = started.elapsed().as_secs_f64() * 1e3;
                tracing::debug!(
                    load_ms,
                    resolve_ms = resolved_ms - load_ms,
                    publish_ms = published_ms - resolved_ms,
                    "config reload phases"
                );
                (loaded, previous)
            });
            (source, loaded)
        })
        .await
        {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(error = %e, "config load task failed");
                return false;
            }
        };
        self.source = source;
        if let ConfigSource::Dir(reloader) = &self.source {
            // What this load read: a later look compares against it.
            self.fingerprint = Some(reloader.fingerprint().clone());
        }
        let (loaded, previous) = match loaded {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read config directory; keeping current config");
                return false;
            }
        };
        let status = report_load(&loaded);
        if !status.errors.is_empty() {
            self.stats.config_rejections.inc();
        }
        if let Ok(mut s) = self.config_status.lock() {
            *s = status;
        }
        self.stats.config_reloads.inc();
        tracing::info!(
            ms = started.elapsed().as_secs_f64() * 1e3,
            "config reloaded"
        );
        apply_access_log(&self.metrics, &self.state.load().snapshot.mesh);
        // The new config serves already; free the old one (requests still holding it keep it alive)
        // off the workers, and hand the freed memory back.
        drop(tokio::task::spawn_blocking(move || {
            drop(previous);
            keel::allocator::release_freed_memory();
        }));
        true
    }
}

/// Data-plane workers: one thread, one single-threaded runtime, one listener each.
mod worker {
    use std::net::SocketAddr;

    use anyhow::Context;

    /// A listening socket on `addr` that other workers' sockets share (SO_REUSEPORT).
    pub fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.set_nodelay(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(4096)?;
        listener.into_std()
    }

    /// Sets `net.ipv4.tcp_migrate_req=1` in keel's network namespace (the node's), so that when a
    /// draining keel closes its listeners, connections queued on them (and handshakes in
    /// progress) move to the other listeners of the `SO_REUSEPORT` group — the successor keel's —
    /// instead of being reset. It only changes what happens when a listener of a reuseport group
    /// closes while others remain.
    pub fn enable_listener_migration() {
        const KNOB: &str = "/proc/sys/net/ipv4/tcp_migrate_req";
        match std::fs::read_to_string(KNOB) {
            Ok(v) if v.trim() == "1" => {}
            Ok(_) => match std::fs::write(KNOB, "1") {
                Ok(()) => tracing::info!("set net.ipv4.tcp_migrate_req=1 (hand queued connections to the successor on upgrade)"),
                Err(e) => tracing::warn!(error = %e, "cannot set net.ipv4.tcp_migrate_req=1: connections queued on a draining keel's listener may be reset during an upgrade"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot read net.ipv4.tcp_migrate_req"),
        }
    }

    /// Run `acceptor` on `listeners` (one per address family) in a new thread until the process
    /// exits.
    pub fn spawn(
        index: usize,
        listeners: Vec<std::net::TcpListener>,
        acceptor: keel::accept::Acceptor,
    ) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a worker runtime")?;
        std::thread::Builder::new()
            .name(format!("keel-worker-{index}"))
            .spawn(move || {
                keel::worker_id::set(index);
                runtime.block_on(async move {
                    let mut loops = Vec::with_capacity(listeners.len());
                    for listener in listeners {
                        match tokio::net::TcpListener::from_std(listener) {
                            Ok(l) => loops.push(tokio::spawn(acceptor.clone().run(l))),
                            Err(e) => tracing::error!(error = %e, "worker listener failed"),
                        }
                    }
                    for accept_loop in loops {
                        let _ = accept_loop.await;
                    }
                    // Draining: the connections accepted run on this runtime until the process
                    // exits (the main thread waits for them up to the drain deadline).
                    std::future::pending::<()>().await
                })
            })
            .context("starting a worker thread")?;
        Ok(())
    }
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    type ProxyAddrs = (Option<SocketAddrV4>, Option<SocketAddrV6>);

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().filter_map(|a| a.parse().ok()).collect()
    }

    #[test]
    fn proxy_addrs_one_per_family() {
        let v4: SocketAddrV4 = "10.244.0.1:15001".parse().expect("v4");
        let v6: SocketAddrV6 = "[fd00:10:244::1]:15001".parse().expect("v6");
        let cases: &[(&[&str], Result<ProxyAddrs, &str>)] = &[
            (&["10.244.0.1:15001"], Ok((Some(v4), None))),
            (&["[fd00:10:244::1]:15001"], Ok((None, Some(v6)))),
            (
                &["[fd00:10:244::1]:15001", "10.244.0.1:15001"],
                Ok((Some(v4), Some(v6))),
            ),
            // A v4-mapped address is the IPv4 proxy address.
            (&["[::ffff:10.244.0.1]:15001"], Ok((Some(v4), None))),
            (
                &["10.244.0.1:15001", "[::ffff:10.244.0.2]:15001"],
                Err("at most one IPv4 address"),
            ),
            (
                &["[fd00::1]:15001", "[fd00::2]:15001"],
                Err("at most one IPv6 address"),
            ),
            (&[], Err("at least one")),
        ];
        for (input, want) in cases {
            let got = split_proxy_addrs(&addrs(input)).map_err(|e| e.to_string());
            match (want, got) {
                (Ok(w), Ok(g)) => assert_eq!(*w, g, "{input:?}"),
                (Err(w), Err(g)) => assert!(g.contains(w), "{input:?}: {g}"),
                (w, g) => panic!("{input:?}: want {w:?}, got {g:?}"),
            }
        }
        assert_eq!(
            listen_addrs(Some(v4), Some(v6)),
            vec![SocketAddr::V4(v4), SocketAddr::V6(v6)]
        );
    }

    #[test]
    fn proxy_addr_flag_takes_a_list() {
        let cli = Cli::try_parse_from([
            "keel",
            "run",
            "--config",
            "/tmp",
            "--cgroup",
            "/sys/fs/cgroup",
            "--proxy-addr",
            "10.244.0.1:15001,[fd00:10:244::1]:15001",
        ]);
        let Ok(Cli {
            command: Command::Run(args),
        }) = cli
        else {
            panic!("keel run with two proxy addresses must parse");
        };
        assert_eq!(
            args.proxy_addr,
            addrs(&["10.244.0.1:15001", "[fd00:10:244::1]:15001"])
        );
    }

    #[test]
    fn memory_sizes_take_kubernetes_suffixes() {
        assert_eq!(parse_memory_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_memory_size("512Mi"), Ok(512 << 20));
        assert_eq!(parse_memory_size("2Gi"), Ok(2 << 30));
        assert_eq!(parse_memory_size("500M"), Ok(500_000_000));
        assert!(parse_memory_size("12MB").is_err());
        assert!(parse_memory_size("Mi").is_err());
        assert!(parse_memory_size("0").is_err());
        assert!(parse_memory_size("99999999999Gi").is_err());
    }
}
