//! Accept: every connection the kernel redirected arrives here. Its original destination and client
//! pod come from the kernel's record for the 4-tuple, never from the bytes the client sends; a
//! connection without a record (someone dialled the proxy port directly) is closed at once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::admin::{ConnLog, ConnLogEntry, Stats};
use crate::admission::{Admission, ConnectionSlot, RequestBudget};
use crate::ebpf::{ConnTable, POD_INDEX_PENDING};
use crate::l4::{self, Sniffed};
use crate::metrics::Metrics;
use crate::policy::Protocol;
use crate::routing::{ClientView, Listener, Outbound};
use crate::state::{NodeState, State};
use crate::upstream::{ClientId, PickRequest, StateScope};

/// What the request path knows about one accepted connection.
pub struct ConnContext {
    pub state: Arc<State>,
    pub stats: Arc<Stats>,
    /// Istio's standard metrics, recorded per request / connection.
    pub metrics: Arc<Metrics>,
    /// Where the client meant to connect (a Service VIP:port), from the kernel.
    pub original_dst: SocketAddr,
    /// The client's address as the proxy sees it (the pod's IP and port).
    pub peer: SocketAddr,
    /// Kernel cgroup id of the client pod (stable across config pushes, unlike a `PodId`).
    pub pod_cgroup_id: u64,
    /// Whose upstream state (pools, breakers, outlier detection, balancers) the connection uses.
    pub client: ClientId,
    /// What the client pod's class sees of the mesh, resolved once per connection.
    pub view: Arc<ClientView>,
    /// The client pod's in-flight request cap, and the limits in force.
    pub budget: RequestBudget,
    /// What the connection was accepted as (protocol; service, passthrough or blocked).
    pub listener: Listener,
}

impl ConnContext {
    /// Whose upstream state this connection uses: its kernel-attested pod (or the node's, in
    /// node-wide mode).
    pub fn client_id(&self) -> ClientId {
        self.client
    }

    /// An endpoint request for this connection, avoiding `avoid`, with the request's hash key.
    pub fn pick_request<'a>(
        &'a self,
        avoid: &'a [SocketAddr],
        hash: Option<u64>,
    ) -> PickRequest<'a> {
        PickRequest {
            client: self.client_id(),
            original_dst: self.original_dst,
            avoid,
            topology: &self.view.topology,
            hash,
        }
    }

    /// Whether a push since the accept changed what this connection was accepted as (Envoy's
    /// listener change): it should then drain, so the client reconnects under the new config.
    pub fn listener_changed(&self, node: &NodeState) -> bool {
        node.routes.id() != self.view.table_id()
            && self.view_under(node).lookup(self.original_dst).listener() != self.listener
    }

    /// The client's view under `node`: the connection's own view while the route table is the one it
    /// was accepted under; after a push, the pod's view in the new table, so requests on a kept-alive
    /// connection follow new config as Envoy's do. A pod gone from the new config keeps its old view.
    pub fn view_under(&self, node: &NodeState) -> Arc<ClientView> {
        if node.routes.id() == self.view.table_id() {
            return Arc::clone(&self.view);
        }
        node.pod_by_cgroup
            .get(&self.pod_cgroup_id)
            .and_then(|&pod| node.routes.view_for_pod(pod))
            .map_or_else(|| Arc::clone(&self.view), Arc::clone)
    }
}

/// How long a connection from a pod cgroup that keel had not resolved at connect time (a pod that
/// had just started) waits for keel to resolve it before it is passed through to where it was going.
const PENDING_POD_WAIT: Duration = Duration::from_secs(1);
/// How often the state is looked at meanwhile (pod changes publish within milliseconds).
const PENDING_POD_POLL: Duration = Duration::from_millis(2);

/// Relays a connection unchanged to its original destination, from keel's own (never redirected)
/// cgroup: what the pod would have had without keel.
async fn passthrough(mut downstream: TcpStream, original_dst: SocketAddr) {
    let original_dst = SocketAddr::new(original_dst.ip().to_canonical(), original_dst.port());
    let mut upstream = match TcpStream::connect(original_dst).await {
        Ok(upstream) => upstream,
        Err(e) => {
            tracing::debug!(%original_dst, error = %e, "passthrough connect failed");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let limits = l4::RelayLimits {
        idle: None,
        max_duration: None,
    };
    if let Err(e) = l4::relay(&mut downstream, &mut upstream, limits).await {
        tracing::debug!(%original_dst, error = %e, "passthrough relay ended");
    }
}

/// Shared by the accept loop and handed to every connection.
#[derive(Clone)]
pub struct Acceptor {
    pub state: Arc<State>,
    pub stats: Arc<Stats>,
    pub metrics: Arc<Metrics>,
    pub conn_log: Arc<ConnLog>,
    pub conn_table: ConnTable,
    /// Per-client or node-wide upstream state.
    pub state_scope: StateScope,
    /// Node-wide and per-pod connection and request caps.
    pub admission: Arc<Admission>,
    /// Becomes true when the process drains: stop accepting, ask HTTP clients to go away.
    pub drain: Drain,
}

/// The drain signal and the count of connections still open, shared by every worker.
#[derive(Clone, Debug)]
pub struct Drain {
    signal: tokio::sync::watch::Receiver<bool>,
    open: Arc<AtomicUsize>,
}

/// The side of [`Drain`] that starts the drain and waits for it.
#[derive(Debug)]
pub struct DrainControl {
    signal: tokio::sync::watch::Sender<bool>,
    open: Arc<AtomicUsize>,
}

impl DrainControl {
    /// A new, not yet draining pair.
    pub fn new() -> (DrainControl, Drain) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let open = Arc::new(AtomicUsize::new(0));
        (
            DrainControl {
                signal: tx,
                open: Arc::clone(&open),
            },
            Drain { signal: rx, open },
        )
    }

    /// Starts draining: listeners close once their queues are accepted, HTTP/1 connections answer
    /// their next response with `Connection: close` (idle ones close), HTTP/2 ones get GOAWAY, TCP
    /// relays run on until they end.
    pub fn start(&self) {
        self.signal.send_replace(true);
    }

    /// Connections still open.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl Drain {
    /// Resolves once the drain has started.
    pub async fn started(&self) {
        let mut rx = self.signal.clone();
        // An error means the control side is gone: the process is exiting anyway.
        let _ = rx.wait_for(|draining| *draining).await;
    }

    /// Whether the drain has started.
    pub fn is_draining(&self) -> bool {
        *self.signal.borrow()
    }

    fn track(&self) -> OpenGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        OpenGuard(Arc::clone(&self.open))
    }
}

/// Counts one open connection until dropped.
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Acceptor {
    /// Waits (at most [`PENDING_POD_WAIT`]) until keel has resolved the pod cgroup `cgroup`: the
    /// state once it captures the pod, `None` if it skips it or the wait runs out.
    async fn wait_for_pending_pod(&self, cgroup: u64) -> Option<Arc<NodeState>> {
        let deadline = tokio::time::Instant::now() + PENDING_POD_WAIT;
        loop {
            let node = self.state.load();
            if node.pod_by_cgroup.contains_key(&cgroup) {
                self.stats.pending_pod_resolved.inc();
                return Some(node);
            }
            if node.skipped_cgroups.contains(&cgroup) || tokio::time::Instant::now() >= deadline {
                self.stats.pending_pod_passed_through.inc();
                tracing::debug!(
                    cgroup,
                    "connection from a pod keel does not capture; passing it through"
                );
                return None;
            }
            tokio::time::sleep(PENDING_POD_POLL).await;
        }
    }

    /// Accept until the drain starts; then accept what is already queued and close the listener
    /// (with `net.ipv4.tcp_migrate_req=1` connections the kernel still queues for it move to the
    /// other listeners of its `SO_REUSEPORT` group, a successor keel's included). Returns once the
    /// listener is closed; connections accepted keep running on the caller's runtime.
    pub async fn run(self, listener: TcpListener) {
        loop {
            let accepted = tokio::select! {
                biased;
                () = self.drain.started() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => self.spawn(stream, peer),
                Err(e) => {
                    // Out of file descriptors and similar: back off briefly, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
        // Whatever completed its handshake before the close is ours to serve.
        let mut queued = 0usize;
        while let Some(Ok((stream, peer))) =
            std::future::poll_fn(|cx| match listener.poll_accept(cx) {
                std::task::Poll::Pending => std::task::Poll::Ready(None),
                std::task::Poll::Ready(r) => std::task::Poll::Ready(Some(r)),
            })
            .await
        {
            queued += 1;
            self.spawn(stream, peer);
        }
        drop(listener);
        tracing::debug!(queued, "listener closed for the drain");
    }

    fn spawn(&self, stream: TcpStream, peer: SocketAddr) {
        // Over the node-wide cap the connection is closed before any work is spent on it
        // (Envoy's global_downstream_max_connections), so the proxy stays responsive.
        let Some(slot) = self.admission.connection() else {
            drop(stream);
            return;
        };
        let this = self.clone();
        let guard = self.drain.track();
        tokio::spawn(async move {
            this.handle(stream, peer, slot).await;
            drop(guard);
        });
    }

    async fn handle(self, stream: TcpStream, peer: SocketAddr, _slot: ConnectionSlot) {
        self.stats.accepted.inc();
        let local = match stream.local_addr() {
            Ok(a) => a,
            Err(_) => return,
        };
        let Some(record) = self.conn_table.lookup(peer, local) else {
            self.stats.refused_no_record.inc();
            tracing::debug!(%peer, "no kernel record for connection; closing");
            return;
        };
        self.stats.redirected.inc();
        let mut node = self.state.load();
        if record.pod_index == POD_INDEX_PENDING
            && !node.pod_by_cgroup.contains_key(&record.pod_cgroup_id)
        {
            match self.wait_for_pending_pod(record.pod_cgroup_id).await {
                Some(resolved) => node = resolved,
                None => {
                    passthrough(stream, record.original_dst).await;
                    return;
                }
            }
            // The kernel redirected this connect before it knew the pod, so before it had the
            // pod's traffic rules: a connection they exclude is relayed unchanged, as close to
            // "direct" as a connection already at keel can get.
            let excluded = node
                .pod_by_cgroup
                .get(&record.pod_cgroup_id)
                .and_then(|&pod| node.snapshot.pods.get(pod))
                .and_then(|p| p.traffic.as_ref())
                .is_some_and(|t| {
                    !crate::pods::traffic::decide(Some(t), record.original_dst).captured
                });
            if excluded {
                tracing::debug!(
                    cgroup = record.pod_cgroup_id,
                    original_dst = %record.original_dst,
                    "pending pod's traffic annotations exclude this connection; passing it through"
                );
                passthrough(stream, record.original_dst).await;
                return;
            }
        }
        let Some(&pod) = node.pod_by_cgroup.get(&record.pod_cgroup_id) else {
            self.stats.refused_unknown_pod.inc();
            tracing::debug!(%peer, cgroup = record.pod_cgroup_id, "record names no known pod; closing");
            return;
        };
        // Every captured pod of the snapshot has a view; a pod without one is not ours to serve.
        let Some(view) = node.routes.view_for_pod(pod).cloned() else {
            self.stats.refused_unknown_pod.inc();
            return;
        };
        // One pod cannot hold the connections other pods need.
        let Some(pod_slot) = self.admission.pod_connection(record.pod_cgroup_id) else {
            tracing::debug!(%peer, cgroup = record.pod_cgroup_id, "pod over its connection cap; closing");
            return;
        };
        let original_dst = SocketAddr::new(
            record.original_dst.ip().to_canonical(),
            record.original_dst.port(),
        );
        // Unknown destinations (hidden from this client, or no longer meshed) follow the client's
        // outbound traffic policy: passthrough, or blocked by l7 (502) / l4 (close).
        let outbound = view.lookup(original_dst);
        let listener = outbound.listener();
        let (declared, hostname) = match outbound {
            Outbound::Service(routes) => (routes.protocol, routes.hostname.clone()),
            Outbound::Passthrough { protocol } => (protocol, "PassthroughCluster".to_string()),
            Outbound::Blocked { protocol } => {
                self.stats.refused_unknown_destination.inc();
                tracing::debug!(%peer, dst = %original_dst, "destination unknown to the client under REGISTRY_ONLY");
                (protocol, "BlackHoleCluster".to_string())
            }
        };
        let _ = stream.set_nodelay(true);
        let detection_timeout = node.snapshot.mesh.protocol_detection_timeout;
        let source_pod = node.pod_name(pod);
        drop(node);

        let kind = if declared.is_http() {
            if declared.is_http2() {
                Sniffed::Http2
            } else {
                Sniffed::Http1
            }
        } else if declared == Protocol::Auto {
            l4::sniff(&stream, detection_timeout).await
        } else {
            Sniffed::Opaque
        };
        self.conn_log.push(ConnLogEntry {
            source_pod,
            source_addr: peer.to_string(),
            original_dst: original_dst.to_string(),
            service: hostname,
            protocol: match kind {
                Sniffed::Http1 => "http",
                Sniffed::Http2 => "http2",
                // Declared TLS ports are relayed unterminated (routed by SNI when `tls` rules apply).
                Sniffed::Opaque if matches!(declared, Protocol::Tls | Protocol::Https) => "tls",
                Sniffed::Opaque => "tcp",
            }
            .to_string(),
        });
        let drain = self.drain.clone();
        let ctx = Arc::new(ConnContext {
            state: self.state,
            stats: self.stats,
            metrics: self.metrics,
            original_dst,
            peer,
            pod_cgroup_id: record.pod_cgroup_id,
            client: self.state_scope.client(record.pod_cgroup_id),
            view,
            budget: pod_slot.budget(),
            listener,
        });
        match kind {
            Sniffed::Http1 | Sniffed::Http2 => crate::l7::serve(stream, ctx, drain).await,
            Sniffed::Opaque => l4::proxy(stream, ctx).await,
        }
    }
}
