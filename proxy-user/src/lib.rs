//! Keel: an eBPF-accelerated node-level service-mesh proxy.
//!
//! Config flows `source` -> `wire` -> `policy` (validated `Snapshot`) -> `routing` tables, once per change.
//! Connections flow `ebpf` (kernel record) -> `l7`/`l4` (classify, route, filters) -> `upstream`.

pub mod accept;
pub mod admin;
pub mod admission;
pub mod allocator;
pub mod ebpf;
pub mod error_chain;
pub mod explain;
#[doc(hidden)]
pub mod fuzzing;
pub mod inotify;
pub mod l4;
pub mod l7;
pub mod metrics;
pub mod outcome;
pub mod overload;
pub mod pods;
pub mod policy;
pub mod routing;
pub mod source;
pub mod state;
pub mod upstream;
pub mod wire;
pub mod worker_id;
