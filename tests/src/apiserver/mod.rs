//! A stand-in Kubernetes API server for tests: the real list/watch protocol over HTTPS, in
//! process, for the kinds Keel reads.
//!
//! - Listens on `127.0.0.1:<ephemeral>` with a throwaway CA; writes a kubeconfig (CA data, bearer
//!   token, context namespace `default`) that `kubectl` and kube-rs accept as is.
//! - Serves discovery (`/api`, `/api/v1`, `/apis`, `/apis/<g>`, `/apis/<g>/<v>`, `/version`) and,
//!   for every kind in [`kinds::KINDS`] (core Namespace, Node, Pod, Service; EndpointSlice; the
//!   Istio networking kinds at v1, v1beta1 and v1alpha3; CustomResourceDefinition), list (with
//!   `limit`/`continue`, label and field selectors, `resourceVersion`/`resourceVersionMatch`),
//!   watch (chunked JSON lines, bookmarks, 410 `Expired`), get, create, update, merge/strategic
//!   patch and delete, with real `Status` errors.
//! - Test controls: [`ApiServer::compact`], [`ApiServer::stop`] / [`ApiServer::restart`] (an
//!   outage: connection refused, watches cut, then the same address and data),
//!   [`ApiServer::set_bookmark_interval`].
//!
//! Where it differs from a real API server (none of it matters to a reader such as Keel):
//! no schemas (unknown fields are accepted even with `fieldValidation=Strict`; OpenAPI documents
//! only declare that the server validates); no `/status` subresource (a PUT of the main resource
//! may change `status`); deletion is immediate (no grace period, finalizers or
//! `deletionTimestamp`, except that a deleted Namespace is Terminating for 100 ms before it and
//! its objects go); no
//! `deletecollection`, server-side apply, JSON patch, Table output or aggregated discovery
//! (kubectl falls back to the legacy forms); CRDs are stored but register no new types. Versions
//! newer than the current one are waited for in watches instead of answered 504.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use keel_tests::apiserver::ApiServer;
//! let dir = std::env::temp_dir().join("api-example");
//! std::fs::create_dir_all(&dir)?;
//! let api = ApiServer::start(&dir)?;
//! let vs = api.create(serde_json::json!({
//!     "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
//!     "metadata": {"name": "reviews", "namespace": "default"},
//!     "spec": {"hosts": ["reviews"]},
//! }))?;
//! assert_eq!(vs["metadata"]["generation"], 1);
//! // keel run --kube --kubeconfig <api.kubeconfig_path()> ...
//! api.compact(); // every running watch gets ERROR 410 and must re-list
//! api.stop()?; // outage
//! api.restart()?; // same address, same objects
//! # Ok(()) }
//! ```

pub mod client;
pub mod kinds;
pub mod status;

mod discovery;
mod http;
mod openapi;
mod patch;
mod selector;
mod store;
mod tls;
mod watch;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use tokio::net::TcpSocket;
use tokio::runtime::Handle;
use tokio::task::JoinSet;

pub use status::Status;
use store::Store;

/// State shared by the connections, the watches and the test's handle.
pub(crate) struct Shared {
    store: Mutex<Store>,
    /// Bumped after every write and every compaction; watches wait on it.
    changes: tokio::sync::watch::Sender<u64>,
    token: String,
    /// `host:port`, for `/api`'s `serverAddressByClientCIDRs`.
    address: String,
    bookmark_interval: Mutex<Duration>,
    /// Open watches per kind (index into [`kinds::KINDS`]).
    watches: Mutex<Vec<usize>>,
    /// Runs the namespace controller's deferred deletions.
    runtime: Handle,
    /// `METHOD /path?query` of every authenticated request, oldest first (bounded).
    requests: Mutex<std::collections::VecDeque<String>>,
}

/// How many requests [`ApiServer::requests`] remembers.
const REQUEST_LOG_LIMIT: usize = 10_000;

/// How long a deleted namespace stays Terminating before it and its objects go.
const NAMESPACE_FINALIZE_DELAY: Duration = Duration::from_millis(100);

/// Counts one open watch of a kind while it lives.
pub(crate) struct WatchGuard {
    shared: Arc<Shared>,
    kind: usize,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let mut w = self
            .shared
            .watches
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = w.get_mut(self.kind) {
            *n = n.saturating_sub(1);
        }
    }
}

impl Shared {
    /// Registers an open watch of `kind` until the guard drops.
    pub(crate) fn watch_guard(self: &Arc<Self>, kind: usize) -> WatchGuard {
        let mut w = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = w.get_mut(kind) {
            *n += 1;
        }
        WatchGuard {
            shared: self.clone(),
            kind,
        }
    }

    fn lock_store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock leaves a consistent store (every write commits last).
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one write and wakes the watches.
    fn write<T>(&self, f: impl FnOnce(&mut Store) -> Result<T, Status>) -> Result<T, Status> {
        let mut store = self.lock_store();
        let out = f(&mut store);
        let rev = store.revision();
        drop(store);
        self.changes.send_replace(rev);
        out
    }

    /// DELETE of one object; a namespace turns Terminating and goes (with its objects) a moment
    /// later, as the namespace controller would do it.
    fn delete(
        self: &Arc<Self>,
        kind: usize,
        namespace: Option<&str>,
        name: &str,
        precondition: &Value,
    ) -> Result<Value, Status> {
        let out = self.write(|s| s.delete(kind, namespace, name, precondition))?;
        if kind == kinds::NAMESPACE {
            let shared = self.clone();
            let name = name.to_string();
            self.runtime.spawn(async move {
                tokio::time::sleep(NAMESPACE_FINALIZE_DELAY).await;
                let _ = shared.write(|s| {
                    s.finish_namespace(&name);
                    Ok(())
                });
            });
        }
        Ok(out)
    }

    /// Remembers one request line for [`ApiServer::requests`].
    fn log_request(&self, line: String) {
        let mut log = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() >= REQUEST_LOG_LIMIT {
            log.pop_front();
        }
        log.push_back(line);
    }

    fn bookmark_interval(&self) -> Duration {
        *self
            .bookmark_interval
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// The listener task of a serving server.
struct Serving {
    stop: tokio::sync::watch::Sender<bool>,
    done: std::sync::mpsc::Receiver<()>,
}

/// A running stand-in API server (see the module docs). Stops when dropped.
pub struct ApiServer {
    shared: Arc<Shared>,
    tls: Arc<rustls::ServerConfig>,
    /// The CA that signed the server certificate, PEM.
    ca_pem: String,
    addr: SocketAddr,
    kubeconfig: PathBuf,
    runtime: Handle,
    runtime_stop: Option<tokio::sync::oneshot::Sender<()>>,
    runtime_thread: Option<std::thread::JoinHandle<()>>,
    serving: Mutex<Option<Serving>>,
}

/// Default interval between watch bookmarks (the real server sends one about every minute).
pub const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(60);

impl ApiServer {
    /// Starts serving on `127.0.0.1:<ephemeral>` and writes `kubeconfig` (and nothing else) into
    /// `work_dir`, which must exist.
    pub fn start(work_dir: &Path) -> Result<ApiServer> {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("test-apiserver".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                rt.block_on(async {
                    let _ = stop_rx.await;
                });
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .context("spawning the API server thread")?;
        let runtime = handle_rx
            .recv()
            .context("the API server thread exited early")?
            .context("building the API server runtime")?;

        let listener = {
            let _guard = runtime.enter();
            bind("127.0.0.1:0".parse()?)?
        };
        let addr = listener.local_addr()?;
        let tls = tls::server_tls()?;
        let token = store::random_hex(24);
        let kubeconfig = work_dir.join("kubeconfig");
        tls::write_kubeconfig(&kubeconfig, &format!("https://{addr}"), &tls.ca_pem, &token)?;
        let (changes, _) = tokio::sync::watch::channel(0);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new()),
            changes,
            token,
            address: addr.to_string(),
            bookmark_interval: Mutex::new(DEFAULT_BOOKMARK_INTERVAL),
            watches: Mutex::new(vec![0; kinds::KINDS.len()]),
            runtime: runtime.clone(),
            requests: Mutex::new(std::collections::VecDeque::new()),
        });
        let server = ApiServer {
            shared,
            tls: tls.config,
            ca_pem: tls.ca_pem,
            addr,
            kubeconfig,
            runtime,
            runtime_stop: Some(stop_tx),
            runtime_thread: Some(thread),
            serving: Mutex::new(None),
        };
        server.serve(listener);
        Ok(server)
    }

    /// The kubeconfig file that `kubectl --kubeconfig` and kube-rs read.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CA certificate (PEM) clients must trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The bearer token the server checks (for raw HTTP clients).
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// The newest resource version (etcd's revision).
    pub fn resource_version(&self) -> u64 {
        self.shared.lock_store().revision()
    }

    /// Creates an object (its `apiVersion` and `kind` say which type; a namespaced object without
    /// `metadata.namespace` goes to `default`). Returns it as stored, with the server's fields.
    pub fn create(&self, obj: Value) -> Result<Value, Status> {
        let kind = kind_of(&obj)?;
        let ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
        let version = version_of(&obj);
        let created = self.shared.write(|s| s.create(kind, ns.as_deref(), obj))?;
        Ok(at_version(created, kind, &version))
    }

    /// Replaces an object (as PUT: a `metadata.resourceVersion` in `obj` must be current).
    pub fn replace(&self, obj: Value) -> Result<Value, Status> {
        let kind = kind_of(&obj)?;
        let ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        let version = version_of(&obj);
        let updated = self
            .shared
            .write(|s| s.update(kind, ns.as_deref(), &name, obj))?;
        Ok(at_version(updated, kind, &version))
    }

    /// Creates `obj`, or replaces it unconditionally if it exists (what `kubectl apply` amounts
    /// to for a test): a `metadata.resourceVersion` in `obj` is ignored.
    pub fn apply(&self, mut obj: Value) -> Result<Value, Status> {
        if let Some(meta) = obj["metadata"].as_object_mut() {
            meta.remove("resourceVersion");
        }
        match self.create(obj.clone()) {
            Err(e) if e.reason == "AlreadyExists" => self.replace(obj),
            other => other,
        }
    }

    /// How many watches of `kind` (loose, as [`ApiServer::delete`] takes it) are open now: lets
    /// a test wait until a client watches before it changes things, or after an outage until it
    /// is back.
    pub fn active_watches(&self, kind: &str) -> Result<usize, Status> {
        let k = kind_named(kind)?;
        let w = self
            .shared
            .watches
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Ok(w.get(k).copied().unwrap_or(0))
    }

    /// `METHOD /path?query` of the authenticated requests so far (the newest 10,000), oldest
    /// first: lets a test check how a client lists and watches (page sizes, resource versions,
    /// bookmarks, how often it retried during an outage).
    pub fn requests(&self) -> Vec<String> {
        let log = self
            .shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        log.iter().cloned().collect()
    }

    /// Forgets the requests logged so far.
    pub fn clear_requests(&self) {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Deletes an object. `kind` is loose (`Pod`, `pods`, `vs`,
    /// `virtualservices.networking.istio.io`); `namespace` is ignored for cluster-scoped kinds.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> Result<Value, Status> {
        let k = kind_named(kind)?;
        self.shared.delete(k, Some(namespace), name, &Value::Null)
    }

    /// One object at its kind's preferred version.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Result<Value, Status> {
        let k = kind_named(kind)?;
        self.shared.lock_store().get(k, namespace, name)
    }

    /// Every object of `kind` (in `namespace`, or all when `None`), in key order.
    pub fn list(&self, kind: &str, namespace: Option<&str>) -> Result<Vec<Value>, Status> {
        let k = kind_named(kind)?;
        self.shared.lock_store().list_at(k, namespace, None)
    }

    /// Drops the change history: resource versions from before now are too old (410) and every
    /// running watch ends with an `ERROR` 410 event, so clients must re-list.
    pub fn compact(&self) {
        let rev = {
            let mut store = self.shared.lock_store();
            store.compact();
            store.revision()
        };
        self.shared.changes.send_replace(rev);
    }

    /// How often watches that allow bookmarks get one (default one minute); running watches
    /// switch to the new interval at once.
    pub fn set_bookmark_interval(&self, interval: Duration) {
        *self
            .shared
            .bookmark_interval
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = interval;
        // Wake the watches so they re-arm their bookmark timers.
        self.shared.changes.send_modify(|_| {});
    }

    /// An outage: closes the listener (connections are refused) and cuts every open connection
    /// and watch. The data stays; the Rust methods keep working. Idempotent.
    pub fn stop(&self) -> Result<()> {
        let serving = self
            .serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(s) = serving {
            let _ = s.stop.send(true);
            s.done
                .recv_timeout(Duration::from_secs(10))
                .context("the API server did not stop within 10 s")?;
        }
        Ok(())
    }

    /// Serves again on the same address after [`ApiServer::stop`]. No-op while serving.
    pub fn restart(&self) -> Result<()> {
        if self
            .serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            return Ok(());
        }
        let listener = {
            let _guard = self.runtime.enter();
            bind(self.addr)?
        };
        self.serve(listener);
        Ok(())
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let (done_tx, done) = std::sync::mpsc::channel();
        let shared = self.shared.clone();
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.clone());
        self.runtime.spawn(async move {
            accept_loop(listener, acceptor, shared, stop_rx).await;
            let _ = done_tx.send(());
        });
        *self.serving.lock().unwrap_or_else(|e| e.into_inner()) = Some(Serving { stop, done });
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.stop();
        if let Some(tx) = self.runtime_stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.runtime_thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds with `SO_REUSEADDR`, so a restart gets the same port back despite TIME_WAIT sockets.
fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    let socket = TcpSocket::new_v4().context("creating the API server socket")?;
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .with_context(|| format!("binding the API server to {addr}"))?;
    Ok(socket.listen(1024)?)
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let acceptor = acceptor.clone();
                let shared = shared.clone();
                conns.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper::service::service_fn(move |req| {
                        http::handle(shared.clone(), req)
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    let _ = builder
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

fn kind_of(obj: &Value) -> Result<usize, Status> {
    let av = obj["apiVersion"].as_str().unwrap_or("");
    let kind = obj["kind"].as_str().unwrap_or("");
    kinds::by_type(av, kind).ok_or_else(|| {
        Status::bad_request(format!("no kind {kind:?} is registered for version {av:?}"))
    })
}

fn version_of(obj: &Value) -> String {
    let av = obj["apiVersion"].as_str().unwrap_or("v1");
    av.rsplit_once('/').map_or(av, |(_, v)| v).to_string()
}

fn at_version(mut obj: Value, kind: usize, version: &str) -> Value {
    obj["apiVersion"] = kinds::KINDS[kind].api_version(version).into();
    obj
}

fn kind_named(name: &str) -> Result<usize, Status> {
    kinds::by_name(name).ok_or_else(|| {
        Status::bad_request(format!("the server doesn't have a resource type {name:?}"))
    })
}

/// Fails with the `cargo xtask setup` hint unless `kubectl` is installed.
pub fn require_kubectl() -> Result<PathBuf> {
    crate::host::find_on_path("kubectl").ok_or_else(|| {
        anyhow!("kubectl not found on PATH: install it with `cargo xtask setup` (Debian package kubectl or kubernetes-client)")
    })
}

/// Runs `kubectl --kubeconfig <api's> <args>` with its discovery cache in `cache_dir`; returns
/// (exit success, stdout, stderr).
pub fn kubectl(api: &ApiServer, cache_dir: &Path, args: &[&str]) -> Result<(bool, String, String)> {
    let bin = require_kubectl()?;
    let out = std::process::Command::new(&bin)
        .arg("--kubeconfig")
        .arg(api.kubeconfig_path())
        .arg("--cache-dir")
        .arg(cache_dir)
        .args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Like [`kubectl`], failing unless kubectl exits 0; returns its stdout.
pub fn kubectl_ok(api: &ApiServer, cache_dir: &Path, args: &[&str]) -> Result<String> {
    let (ok, out, err) = kubectl(api, cache_dir, args)?;
    if !ok {
        bail!("kubectl {} failed: {err}{out}", args.join(" "));
    }
    Ok(out)
}
