//! Watch streams: newline-delimited JSON events (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK`,
//! `ERROR`) sent as they happen, one body chunk each.
//!
//! Start: with `resourceVersion` unset or `"0"`, synthetic `ADDED` events for every current object
//! first (then, with `sendInitialEvents=true`, a bookmark annotated `k8s.io/initial-events-end`);
//! with `resourceVersion=N`, every change after N. A version older than the history, or a
//! [`compact`](super::ApiServer::compact) while the watch runs, ends it with an `ERROR` event
//! carrying a 410 `Expired` Status, as the real server's watch cache does. With selectors, an
//! object that starts matching arrives as `ADDED` and one that stops matching as `DELETED`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::kinds::KINDS;
use super::selector::{FieldSelector, LabelSelector};
use super::status::Status;
use super::store::{Change, EventType};
use super::Shared;

/// What one watch asked for.
pub struct WatchRequest {
    /// Index into [`KINDS`].
    pub kind: usize,
    /// The version the client asked for (the events' `apiVersion`).
    pub version: String,
    /// `None`: all namespaces.
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    /// `None` for unset or `"0"` (start with the current state).
    pub resource_version: Option<u64>,
    pub allow_bookmarks: bool,
    pub send_initial_events: bool,
    /// `timeoutSeconds`.
    pub timeout: Option<Duration>,
}

impl WatchRequest {
    fn in_scope(&self, kind: usize, namespace: &str) -> bool {
        kind == self.kind && self.namespace.as_deref().is_none_or(|ns| ns == namespace)
    }

    fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }

    /// The event a change makes for this watch, if any.
    fn event_for(&self, c: &Change) -> Option<(&'static str, Value)> {
        if !self.in_scope(c.kind, &c.namespace) {
            return None;
        }
        let was = c.prev.as_ref().is_some_and(|p| self.matches(p));
        let is = c.etype != EventType::Deleted && self.matches(&c.object);
        let etype = match (c.etype, was, is) {
            (EventType::Deleted, true, _) => "DELETED",
            (EventType::Deleted, false, _) => return None,
            (_, false, true) => "ADDED",
            (_, true, true) => "MODIFIED",
            (_, true, false) => "DELETED",
            (_, false, false) => return None,
        };
        Some((etype, self.present(&c.object)))
    }

    fn present(&self, obj: &Value) -> Value {
        let mut obj = obj.clone();
        obj["apiVersion"] = KINDS[self.kind].api_version(&self.version).into();
        obj
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Value {
        let info = &KINDS[self.kind];
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        json!({"kind": info.kind, "apiVersion": info.api_version(&self.version), "metadata": meta})
    }
}

fn line(etype: &str, object: Value) -> Bytes {
    let mut text = json!({"type": etype, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

/// Starts the watch task; its events arrive on the returned channel until the watch ends.
pub fn start(shared: Arc<Shared>, req: WatchRequest) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(run(shared, req, tx));
    rx
}

async fn run(shared: Arc<Shared>, req: WatchRequest, tx: mpsc::Sender<Bytes>) {
    let _open = shared.watch_guard(req.kind);
    // Subscribe before reading the store, so no write falls between the two.
    let mut wake = shared.changes.subscribe();
    let deadline = req.timeout.map(|t| Instant::now() + t);
    let start: Result<(u64, u64, Option<Vec<Value>>), Status> = {
        let store = shared.lock_store();
        let epoch = store.compactions();
        match req.resource_version {
            None => {
                let objects = store
                    .list_at(req.kind, req.namespace.as_deref(), None)
                    .unwrap_or_default();
                Ok((store.revision(), epoch, Some(objects)))
            }
            Some(n) if n < store.compacted() => Err(Status::expired(format!(
                "too old resource version: {n} ({})",
                store.compacted()
            ))),
            Some(n) => Ok((n, epoch, None)),
        }
    };
    let (mut pos, epoch, initial) = match start {
        Ok(s) => s,
        Err(status) => {
            let _ = tx.send(line("ERROR", status.to_json())).await;
            return;
        }
    };
    if let Some(objects) = initial {
        for obj in objects.iter().filter(|o| req.matches(o)) {
            if tx.send(line("ADDED", req.present(obj))).await.is_err() {
                return;
            }
        }
        if req.send_initial_events && req.allow_bookmarks {
            let _ = tx.send(line("BOOKMARK", req.bookmark(pos, true))).await;
        }
    }
    // The interval is read on every wake-up, so a test's new interval applies at once.
    let mut last_bookmark = Instant::now();
    loop {
        let batch: Result<Vec<(&'static str, Value)>, Status> = {
            let store = shared.lock_store();
            let batch = match store.changes_after(pos) {
                Some(changes) if store.compactions() == epoch => {
                    let events = changes.filter_map(|c| req.event_for(c)).collect();
                    pos = store.revision();
                    Ok(events)
                }
                _ => Err(Status::expired(format!(
                    "too old resource version: {pos} ({})",
                    store.compacted()
                ))),
            };
            batch
        };
        match batch {
            Ok(events) => {
                for (etype, obj) in events {
                    if tx.send(line(etype, obj)).await.is_err() {
                        return;
                    }
                }
            }
            Err(status) => {
                let _ = tx.send(line("ERROR", status.to_json())).await;
                return;
            }
        }
        let far = Instant::now() + Duration::from_secs(86_400);
        let next_bookmark = last_bookmark + shared.bookmark_interval();
        tokio::select! {
            changed = wake.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(next_bookmark), if req.allow_bookmarks => {
                if tx.send(line("BOOKMARK", req.bookmark(pos, false))).await.is_err() {
                    return;
                }
                last_bookmark = Instant::now();
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or(far)) => return,
            _ = tx.closed() => return,
        }
    }
}
