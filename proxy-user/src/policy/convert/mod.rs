//! Wire documents -> validated [`Snapshot`], one resource at a time.
//!
//! Two phases, as in the style guide: (1) each document is decoded and converted on its own; every problem
//! is collected with its field path, and a resource with any error is dropped alone; (2) the surviving
//! resources are assembled into a snapshot (indexes, VIP conflicts) and cross-resource checks emit
//! warnings (unknown subsets, unreachable rules, ...). Nothing here panics on user input.

mod destination_rule;
mod fields;
mod gateway;
mod k8s;
mod mesh_config;
mod metadata;
pub mod pod_traffic;
mod scoped_host;
mod service_entry;
mod sidecar;
mod stamped;
mod virtual_service;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::error::*;
use super::model::*;
use crate::source::{self, Document, FieldPath, ObjectKey, SourceObject};
use crate::wire::Kind;
use stamped::Stamped;

/// The outcome of loading a config directory: the snapshot built from every valid resource, plus what was
/// rejected (errors) and what looks suspicious (warnings).
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Built from every resource that passed validation.
    pub snapshot: Snapshot,
    /// One entry per problem; a resource with any error is not in the snapshot.
    pub errors: Vec<ConfigError>,
    /// Problems that do not stop a resource from loading.
    pub warnings: Vec<ConfigWarning>,
    /// Documents ignored because Keel does not know their kind.
    pub ignored: usize,
    /// Objects (by position in the assembled sequence) that converted without error but were
    /// rejected when assembled: a duplicate name, a cluster IP another Service holds.
    pub rejected_when_assembled: Vec<usize>,
}

impl LoadReport {
    /// True when nothing was rejected.
    pub fn is_valid(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Reads files and directories (see [`source::read_paths`]) and builds a snapshot.
pub fn load_paths(paths: &[std::path::PathBuf]) -> Result<LoadReport, source::Error> {
    let docs = source::read_paths(paths)?;
    Ok(build(&docs))
}

/// Reads `dir` (its `*.yaml`/`*.yml` files, not subdirectories) and builds a snapshot.
pub fn load_dir(dir: &Path) -> Result<LoadReport, source::Error> {
    let docs = source::read_dir(dir)?;
    Ok(build(&docs))
}

/// Builds a snapshot from already-split documents (in load order).
pub fn build(docs: &[Document]) -> LoadReport {
    let objects = source::objects(docs);
    let converted: Vec<Converted> = objects.iter().map(convert).collect();
    assemble(&converted)
}

/// Assembles converted objects (in load order) into a snapshot: their errors and warnings, every
/// accepted one indexed, cross-resource checks done. Duplicates: the first definition wins.
pub fn assemble<'a>(objects: impl IntoIterator<Item = &'a Converted>) -> LoadReport {
    assemble_placed(objects).report
}

/// [`assemble`], with where each object's warnings are in the report (for [`reassemble`]).
pub fn assemble_placed<'a>(objects: impl IntoIterator<Item = &'a Converted>) -> Assembled {
    let mut b = Builder::<'a>::default();
    for (order, c) in objects.into_iter().enumerate() {
        b.add(order, c);
    }
    b.finish()
}

/// One object converted on its own: the model it contributes (when accepted) and what was wrong
/// with it. Independent of every other object, so a source can keep it and assemble it again.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The object's identity, when it parsed far enough to have one.
    pub key: Option<ObjectKey>,
    /// The model, `None` when rejected or ignored.
    piece: Option<Piece>,
    /// Why it was rejected (empty when accepted or ignored).
    pub errors: Vec<ConfigError>,
    /// What looks suspicious about it.
    pub warnings: Vec<ConfigWarning>,
    /// Not a kind Keel reads.
    ignored: bool,
    /// Where the duplicate checks point: the object, and its `metadata.name`.
    root_at: Location,
    name_at: Location,
    /// The object's `file:line` (or API origin), as a later duplicate names it.
    here: String,
}

impl Converted {
    /// True when the object is in (or may enter) the snapshot: no errors.
    pub fn accepted(&self) -> bool {
        self.errors.is_empty()
    }

    /// Whether this object replaces `old` without changing anything an assembly derives from the
    /// other objects: both accepted VirtualServices of the same name, with the same hosts,
    /// gateways and places of them (which the checks across objects read), neither delegating
    /// nor naming a wildcard host. Only its own routes and its own warnings change.
    pub fn edits_in_place(&self, old: &Converted) -> bool {
        let (
            Some(Piece::VirtualService {
                vs: new_vs,
                gateway_refs: new_gateways,
                hosts_at: new_hosts_at,
                ..
            }),
            Some(Piece::VirtualService {
                vs: old_vs,
                gateway_refs: old_gateways,
                hosts_at: old_hosts_at,
                ..
            }),
        ) = (&self.piece, &old.piece)
        else {
            return false;
        };
        self.accepted()
            && old.accepted()
            && self.key == old.key
            && new_vs.hosts == old_vs.hosts
            && new_vs.gateways == old_vs.gateways
            && new_gateways == old_gateways
            && new_hosts_at == old_hosts_at
            && self.routed_hosts().is_some()
            && old.routed_hosts().is_some()
    }

    /// The hosts whose routing this object can change, when that is all it can change: none for
    /// an object that contributes nothing (rejected, or a kind Keel ignores), the hosts of a
    /// VirtualService that names hosts, none of them a wildcard, and delegates nowhere. `None`
    /// for anything else (which may change any route).
    pub fn routed_hosts(&self) -> Option<&[String]> {
        match &self.piece {
            None => Some(&[]),
            Some(Piece::VirtualService { vs, .. }) => {
                let local = !vs.hosts.is_empty()
                    && vs.hosts.iter().all(|h| !h.contains('*'))
                    && vs
                        .http
                        .iter()
                        .all(|r| !matches!(r.action, HttpAction::Delegate { .. }));
                local.then_some(vs.hosts.as_slice())
            }
            Some(_) => None,
        }
    }
}

/// What an accepted object contributes to the snapshot.
#[derive(Debug, Clone)]
enum Piece {
    Namespace(NamespaceInfo),
    EndpointSlice(EndpointSlice),
    Service(Stamped<Service>, Location),
    Pod(Stamped<Pod>, Location, Option<String>),
    Node(Node),
    VirtualService {
        vs: Stamped<VirtualService>,
        refs: Vec<DestinationRef>,
        gateway_refs: Vec<(Location, String)>,
        hosts_at: Location,
    },
    DestinationRule(
        Stamped<DestinationRule>,
        (Location, Location, Vec<Location>),
    ),
    ServiceEntry(Box<ServiceEntry>, Location),
    Sidecar(Box<Sidecar>),
    Gateway(Box<Gateway>),
    MeshConfig(Box<MeshConfig>),
}

/// Per-resource conversion context: where we are and what went wrong so far.
pub(crate) struct Ctx<'a> {
    pub obj: &'a SourceObject,
    pub meta: Meta,
    pub errors: Vec<(FieldPath, Invalid)>,
    pub warnings: Vec<(FieldPath, String)>,
}

impl<'a> Ctx<'a> {
    fn new(obj: &'a SourceObject, meta: Meta) -> Self {
        Ctx {
            obj,
            meta,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// The resource's namespace.
    pub fn ns(&self) -> &str {
        &self.meta.namespace
    }

    /// Records an error at `path`.
    pub fn err(&mut self, path: &FieldPath, e: impl Into<Invalid>) {
        self.errors.push((path.clone(), e.into()));
    }

    /// Records a warning at `path`.
    pub fn warn(&mut self, path: &FieldPath, msg: impl Into<String>) {
        self.warnings.push((path.clone(), msg.into()));
    }

    /// Records that the field at `path` is set, valid, and not applied by Keel: the one wording for
    /// this, [`not_applied_message`], optionally followed by what Keel does today instead (`today`).
    pub fn not_applied(&mut self, path: &FieldPath, today: Option<&str>) {
        self.warn(path, not_applied_message(path, today));
    }

    /// Unwraps `r`, recording its error at `path`.
    pub fn check<T, E: Into<Invalid>>(&mut self, path: &FieldPath, r: Result<T, E>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(path, e);
                None
            }
        }
    }

    /// The location of `path` in this resource (for messages about it).
    pub fn location(&self, path: &FieldPath) -> Location {
        location(self.obj, &self.meta, path)
    }
}

/// How every warning about a field Keel accepts but does not apply begins.
pub const NOT_APPLIED: &str = "accepted, not applied";

/// `accepted, not applied: <path>`, then `: <today>` when given: the field as written in YAML and
/// what Keel does today instead.
pub fn not_applied_message(path: &FieldPath, today: Option<&str>) -> String {
    match today {
        Some(today) => format!("{NOT_APPLIED}: {path}: {today}"),
        None => format!("{NOT_APPLIED}: {path}"),
    }
}

fn location(obj: &SourceObject, meta: &Meta, path: &FieldPath) -> Location {
    Location {
        file: obj.origin.label(),
        line: obj.line_of(path),
        kind: meta.kind.clone(),
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
        field: path.to_string(),
    }
}

/// A subset (or host) reference from a route, checked once every DestinationRule is known.
#[derive(Debug, Clone)]
pub(crate) struct DestinationRef {
    pub at: Location,
    pub client_namespace: String,
    pub destination: Destination,
}

/// Assembles a snapshot from converted objects it borrows (the checks that need every object
/// read them in place; only the snapshot's own objects are shared into it).
#[derive(Default)]
struct Builder<'a> {
    report: LoadReport,
    /// `(kind, namespace, name)` -> `file:line` of the first definition.
    seen: HashMap<&'a ObjectKey, &'a str>,
    mesh_first: Option<&'a str>,
    /// Services waiting for VIP/host indexing (in load order).
    services: Vec<(Arc<Service>, &'a Location)>,
    refs: Vec<&'a DestinationRef>,
    /// Gateway references from VirtualServices: (where, `ns/name`).
    gateway_refs: Vec<&'a (Location, String)>,
    /// Per VirtualService: (index in snapshot, location of `spec.hosts`).
    vs_locations: Vec<&'a Location>,
    /// Per DestinationRule: location of `spec.host`, of `spec.trafficPolicy` and of each subset name.
    dr_locations: Vec<&'a (Location, Location, Vec<Location>)>,
    /// Per ServiceEntry: location of `spec.hosts`.
    se_locations: Vec<&'a Location>,
    /// Per Pod, in snapshot order: where its status is, and a finished phase if it has one.
    pod_locations: Vec<PodLocation<'a>>,
    /// Per VirtualService: its load order and its references' range in `refs`.
    vs_refs: Vec<(usize, std::ops::Range<usize>)>,
    places: WarningPlaces,
}

/// What the endpoint check needs to say about a pod.
struct PodLocation<'a> {
    /// `status` (the document when it has none).
    status_at: &'a Location,
    /// `Succeeded` or `Failed`: a finished pod never serves again.
    finished_phase: Option<&'a str>,
}

/// Converts one object on its own (see [`Converted`]).
pub fn convert(obj: &SourceObject) -> Converted {
    let unknown_meta = |kind: &str| Meta {
        kind: kind.to_string(),
        namespace: String::new(),
        name: "?".to_string(),
        file: Some(obj.origin.label()),
        line: Some(obj.line()),
        creation_timestamp: None,
        order: 0,
    };
    let document_at = location(obj, &unknown_meta("document"), &FieldPath::root());
    let mut out = Converted {
        key: None,
        piece: None,
        errors: Vec::new(),
        warnings: Vec::new(),
        ignored: false,
        root_at: document_at.clone(),
        name_at: document_at,
        here: obj.origin.to_string(),
    };
    let value = match &obj.value {
        Ok(v) => v,
        Err(e) => {
            let mut at = out.root_at.clone();
            at.line = e.line;
            out.errors.push(ConfigError {
                at,
                reason: InvalidDocument::Syntax(e.message.clone()).into(),
            });
            return out;
        }
    };
    let str_at =
        |v: &serde_yaml::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let api_version = str_at(value, "apiVersion");
    let kind_str = str_at(value, "kind");
    let (Some(api_version), Some(kind_str)) = (api_version, kind_str) else {
        let reason = if !value.is_mapping() {
            "the document is not a mapping"
        } else {
            "apiVersion and kind are required"
        };
        out.errors.push(ConfigError {
            at: location(obj, &unknown_meta("document"), &FieldPath::root()),
            reason: InvalidDocument::NotAnObject(reason).into(),
        });
        return out;
    };
    let metadata = value.get("metadata");
    let name = metadata.and_then(|m| str_at(m, "name"));
    let Some(kind) = Kind::classify(&api_version, &kind_str) else {
        let mut meta = unknown_meta(&kind_str);
        meta.name = name.clone().unwrap_or_else(|| "?".to_string());
        meta.namespace = metadata
            .and_then(|m| str_at(m, "namespace"))
            .unwrap_or_else(|| "default".to_string());
        out.key = name.map(|name| ObjectKey::new(&kind_str, &meta.namespace, &name));
        out.root_at = location(obj, &meta, &FieldPath::root());
        // A kind Keel reads under a version that does not exist: the API server refuses it.
        if let Some(served) = metadata::unserved_istio_version(&api_version, &kind_str) {
            out.errors.push(ConfigError {
                at: location(obj, &meta, &FieldPath::root().key("apiVersion")),
                reason: InvalidDocument::UnservedVersion {
                    api_version,
                    kind: kind_str,
                    served,
                }
                .into(),
            });
            return out;
        }
        out.ignored = true;
        out.warnings.push(ConfigWarning {
            at: location(obj, &meta, &FieldPath::root()),
            message: format!("ignoring {api_version} {kind_str}: not a kind Keel reads"),
        });
        return out;
    };
    let cluster_scoped = kind.cluster_scoped();
    let namespace = if cluster_scoped {
        String::new()
    } else {
        // An empty namespace is unset, as for kubectl: the object goes to `default`.
        metadata
            .and_then(|m| str_at(m, "namespace"))
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| "default".to_string())
    };
    let meta = Meta {
        kind: kind_str.clone(),
        namespace,
        name: name.clone().unwrap_or_else(|| "?".to_string()),
        file: match &obj.origin {
            source::Origin::File { file, .. } => Some(file.clone()),
            source::Origin::Api { .. } => None,
        },
        line: match &obj.origin {
            source::Origin::File { line, .. } => Some(*line),
            source::Origin::Api { .. } => None,
        },
        creation_timestamp: metadata.and_then(|m| str_at(m, "creationTimestamp")),
        order: 0,
    };
    if let Some(name) = &name {
        out.key = Some(ObjectKey::new(&kind_str, &meta.namespace, name));
    }
    let mut ctx = Ctx::new(obj, meta);
    let metadata_path = FieldPath::root().key("metadata");
    out.root_at = ctx.location(&FieldPath::root());
    out.name_at = ctx.location(&metadata_path.key("name"));
    if name.is_none() && kind != Kind::MeshConfig {
        ctx.err(&metadata_path.key("name"), InvalidDocument::MissingName);
    } else if let Some(name) = &name {
        let r = match kind {
            // Services and namespaces are DNS labels (they become host-name labels).
            Kind::Service | Kind::Namespace => super::validate::dns1123_label(name),
            _ => super::validate::dns1123_subdomain(name),
        };
        ctx.check(&metadata_path.key("name"), r);
    }
    if !cluster_scoped {
        let ns = ctx.meta.namespace.clone();
        ctx.check(
            &metadata_path.key("namespace"),
            super::validate::dns1123_label(&ns),
        );
    }
    let istio_kind = matches!(
        kind,
        Kind::VirtualService
            | Kind::DestinationRule
            | Kind::ServiceEntry
            | Kind::Sidecar
            | Kind::Gateway
    );
    if istio_kind {
        metadata::istio_metadata(&mut ctx, metadata);
    }
    if ctx.errors.is_empty() {
        match convert_kind(kind, &mut ctx, value) {
            Ok(piece) if ctx.errors.is_empty() => out.piece = piece,
            Ok(_) => {}
            Err(decode_error) => out.errors.push(*decode_error),
        }
    }
    for (path, reason) in ctx.errors.iter() {
        out.errors.push(ConfigError {
            at: ctx.location(path),
            reason: reason.clone(),
        });
    }
    for (path, message) in std::mem::take(&mut ctx.warnings) {
        out.warnings.push(ConfigWarning {
            at: ctx.location(&path),
            message,
        });
    }
    if !out.errors.is_empty() {
        out.piece = None;
    }
    out
}

/// Decodes and converts one resource of a kind Keel reads. `Err` is a decoding (schema) error; other
/// problems are in `ctx`, and a piece with errors in `ctx` is not used.
fn convert_kind(
    kind: Kind,
    ctx: &mut Ctx<'_>,
    value: &serde_yaml::Value,
) -> Result<Option<Piece>, Box<ConfigError>> {
    macro_rules! decode {
        ($t:ty) => {
            match ctx.obj.decode::<$t>() {
                Ok(v) => v,
                Err(e) => {
                    let mut at = ctx.location(&e.path);
                    at.line = e.line;
                    return Err(Box::new(ConfigError {
                        at,
                        reason: InvalidDocument::Schema(e.message).into(),
                    }));
                }
            }
        };
    }
    // Conversions that found errors return `None`; the piece is then dropped by the caller.
    macro_rules! some {
        ($e:expr) => {
            match $e {
                Some(v) => v,
                None => return Ok(None),
            }
        };
    }
    use crate::wire::istio::IstioObject;
    use crate::wire::{istio, k8s as wk, keel};
    Ok(Some(match kind {
        Kind::Namespace => {
            let ns: wk::Namespace = decode!(wk::Namespace);
            Piece::Namespace(NamespaceInfo {
                name: ctx.meta.name.clone(),
                labels: ns.metadata.labels.clone(),
            })
        }
        Kind::EndpointSlice => {
            let slice = decode!(wk::EndpointSlice);
            Piece::EndpointSlice(some!(k8s::endpoint_slice(ctx, &slice)))
        }
        Kind::Service => {
            let svc = decode!(wk::Service);
            let s = some!(k8s::service(ctx, &svc));
            Piece::Service(Stamped::new(s), ctx.location(&FieldPath::root()))
        }
        Kind::Pod => {
            let pod = decode!(wk::Pod);
            let p = some!(k8s::pod(ctx, &pod));
            Piece::Pod(
                Stamped::new(p),
                ctx.location(&FieldPath::parse("status")),
                pod.status
                    .phase
                    .clone()
                    .filter(|p| p == "Succeeded" || p == "Failed"),
            )
        }
        Kind::Node => {
            let node = decode!(wk::Node);
            Piece::Node(some!(k8s::node(ctx, &node)))
        }
        Kind::VirtualService => {
            let obj = decode!(IstioObject<istio::VirtualServiceSpec>);
            let mut refs = Vec::new();
            let mut gateway_refs = Vec::new();
            let vs = some!(virtual_service::convert(
                ctx,
                &obj.spec,
                &mut refs,
                &mut gateway_refs
            ));
            Piece::VirtualService {
                vs: Stamped::new(vs),
                refs,
                gateway_refs,
                hosts_at: ctx.location(&FieldPath::parse("spec.hosts")),
            }
        }
        Kind::DestinationRule => {
            let obj = decode!(IstioObject<istio::DestinationRuleSpec>);
            let dr = some!(destination_rule::convert(ctx, &obj.spec));
            let subsets = (0..dr.subsets.len())
                .map(|i| ctx.location(&FieldPath::parse(&format!("spec.subsets[{i}].name"))))
                .collect();
            let at = (
                ctx.location(&FieldPath::parse("spec.host")),
                ctx.location(&FieldPath::parse("spec.trafficPolicy")),
                subsets,
            );
            Piece::DestinationRule(Stamped::new(dr), at)
        }
        Kind::ServiceEntry => {
            let obj = decode!(IstioObject<istio::ServiceEntrySpec>);
            let se = some!(service_entry::service_entry(
                ctx,
                &obj.metadata.labels,
                &obj.spec
            ));
            Piece::ServiceEntry(Box::new(se), ctx.location(&FieldPath::parse("spec.hosts")))
        }
        Kind::Sidecar => {
            let obj = decode!(IstioObject<istio::SidecarSpec>);
            Piece::Sidecar(Box::new(some!(sidecar::sidecar(ctx, &obj.spec))))
        }
        Kind::Gateway => {
            let obj = decode!(IstioObject<istio::GatewaySpec>);
            Piece::Gateway(Box::new(some!(gateway::gateway(
                ctx,
                &obj.spec,
                &obj.metadata.annotations,
                value
            ))))
        }
        Kind::MeshConfig => {
            let obj = decode!(keel::MeshConfigObject);
            Piece::MeshConfig(Box::new(some!(mesh_config::mesh_config(ctx, &obj.spec))))
        }
    }))
}

impl<'a> Builder<'a> {
    /// Adds one converted object: its problems to the report, its model (if accepted and not a
    /// duplicate) to the snapshot.
    fn add(&mut self, order: usize, c: &'a Converted) {
        self.report.errors.extend(c.errors.iter().cloned());
        self.report.warnings.extend(c.warnings.iter().cloned());
        self.places.own.push(c.warnings.len());
        self.places.refs.push(0);
        if c.ignored {
            self.report.ignored += 1;
        }
        let Some(piece) = &c.piece else {
            return;
        };
        // Duplicates: the first definition wins, later ones are rejected.
        let duplicate = if matches!(piece, Piece::MeshConfig(_)) {
            self.mesh_first.map(|first| {
                (
                    c.root_at.clone(),
                    Invalid::from(InvalidDocument::SecondMeshConfig {
                        first: first.to_string(),
                    }),
                )
            })
        } else {
            c.key.as_ref().and_then(|key| {
                self.seen.get(key).map(|first| {
                    (
                        c.name_at.clone(),
                        Invalid::from(InvalidDocument::Duplicate {
                            first: first.to_string(),
                        }),
                    )
                })
            })
        };
        if let Some((at, reason)) = duplicate {
            self.report.errors.push(ConfigError { at, reason });
            self.report.rejected_when_assembled.push(order);
            return;
        }
        if matches!(piece, Piece::MeshConfig(_)) {
            self.mesh_first = Some(&c.here);
        } else if let Some(key) = &c.key {
            self.seen.insert(key, &c.here);
        }
        let snap = &mut self.report.snapshot;
        match piece {
            Piece::Namespace(ns) => {
                snap.namespaces.insert(ns.name.clone(), ns.clone());
            }
            Piece::EndpointSlice(slice) => {
                let mut slice = slice.clone();
                slice.meta.order = order;
                snap.endpoint_slices.push(slice);
            }
            Piece::Service(s, at) => self.services.push((s.at(order), at)),
            Piece::Pod(p, status_at, finished_phase) => {
                let p = p.at(order);
                self.pod_locations.push(PodLocation {
                    status_at,
                    finished_phase: finished_phase.as_deref(),
                });
                let key = format!("{}/{}", p.meta.namespace, p.meta.name);
                snap.pod_by_name.insert(key, snap.pods.len());
                snap.pods.push(p);
            }
            Piece::Node(n) => {
                let mut n = n.clone();
                n.meta.order = order;
                snap.node_by_name
                    .insert(n.meta.name.clone(), snap.nodes.len());
                snap.nodes.push(n);
            }
            Piece::VirtualService {
                vs,
                refs,
                gateway_refs,
                hosts_at,
            } => {
                self.vs_refs
                    .push((order, self.refs.len()..self.refs.len() + refs.len()));
                self.refs.extend(refs);
                self.gateway_refs.extend(gateway_refs);
                self.vs_locations.push(hosts_at);
                snap.virtual_services.push(vs.at(order));
            }
            Piece::DestinationRule(dr, at) => {
                self.dr_locations.push(at);
                snap.destination_rules.push(dr.at(order));
            }
            Piece::ServiceEntry(se, at) => {
                let mut se = (**se).clone();
                se.meta.order = order;
                self.se_locations.push(at);
                snap.service_entries.push(se);
            }
            Piece::Sidecar(sc) => {
                let mut sc = (**sc).clone();
                sc.meta.order = order;
                snap.sidecars.push(sc);
            }
            Piece::Gateway(gw) => {
                let mut gw = (**gw).clone();
                gw.meta.order = order;
                snap.gateways.push(gw);
            }
            Piece::MeshConfig(mesh) => snap.mesh = (**mesh).clone(),
        }
    }

    fn finish(mut self) -> Assembled {
        self.index_services();
        let snap = &mut self.report.snapshot;
        for (i, slice) in snap.endpoint_slices.iter().enumerate() {
            if !slice.service.is_empty() {
                snap.slices_by_service
                    .entry(format!("{}/{}", slice.meta.namespace, slice.service))
                    .or_default()
                    .push(i);
            }
        }
        self.cross_checks();
        Assembled {
            report: self.report,
            places: self.places,
        }
    }

    /// Indexes services by host and VIP; a service whose host or VIP:port is already taken is rejected.
    fn index_services(&mut self) {
        let snap = &mut self.report.snapshot;
        for (svc, at) in std::mem::take(&mut self.services) {
            let id = snap.services.len();
            let mut conflict = None;
            for ip in &svc.cluster_ips {
                for port in &svc.ports {
                    if port.protocol == Protocol::Udp {
                        continue;
                    }
                    if let Some((other, _)) = snap.service_by_vip.get(&(*ip, port.port)) {
                        conflict = Some((
                            std::net::SocketAddr::new(*ip, port.port).to_string(),
                            snap.services
                                .get(*other)
                                .map(|s| s.meta.display_name())
                                .unwrap_or_default(),
                        ));
                    }
                }
            }
            if let Some((addr, other)) = conflict {
                let mut at = at.clone();
                at.field = "spec.clusterIP".to_string();
                self.report.errors.push(ConfigError {
                    at,
                    reason: InvalidPort::VipConflict { addr, other }.into(),
                });
                self.report.rejected_when_assembled.push(svc.meta.order);
                continue;
            }
            for ip in &svc.cluster_ips {
                for (i, port) in svc.ports.iter().enumerate() {
                    // The kernel redirects TCP only; a UDP port of a Service is not meshed.
                    if port.protocol != Protocol::Udp {
                        snap.service_by_vip.insert((*ip, port.port), (id, i));
                    }
                }
            }
            snap.service_by_host.insert(svc.hostname.clone(), id);
            snap.services.push(svc);
        }
    }

    /// Pods a Service selects that can never be among its endpoints: no IP, a finished phase, or
    /// no container port of the name the Service's `targetPort` gives (Kubernetes leaves such a
    /// pod out of that port's endpoints, and so does Keel).
    fn pods_that_never_serve(&self) -> Vec<ConfigWarning> {
        let snap = &self.report.snapshot;
        let mut warnings = Vec::new();
        // Services by namespace and one label of their selector: a pod is matched only against the
        // Services that can select it (all of them against every pod is quadratic at mesh scale).
        let mut by_label: HashMap<(&str, &str, &str), Vec<usize>> = HashMap::new();
        let mut select_all: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, svc) in snap.services.iter().enumerate() {
            let Some(selector) = &svc.selector else {
                continue;
            };
            let ns = svc.meta.namespace.as_str();
            match selector.iter().next() {
                Some((k, v)) => by_label.entry((ns, k, v)).or_default().push(i),
                None => select_all.entry(ns).or_default().push(i),
            }
        }
        for (pod, at) in snap.pods.iter().zip(&self.pod_locations) {
            let ns = pod.meta.namespace.as_str();
            let mut candidates: Vec<usize> = select_all.get(ns).cloned().unwrap_or_default();
            for (k, v) in &pod.labels {
                if let Some(found) = by_label.get(&(ns, k.as_str(), v.as_str())) {
                    candidates.extend(found);
                }
            }
            candidates.sort_unstable();
            candidates.dedup();
            let selecting: Vec<&Service> = candidates
                .into_iter()
                .map(|i| &*snap.services[i])
                .filter(|svc| {
                    svc.selector
                        .as_ref()
                        .is_some_and(|sel| selector_matches(sel, &pod.labels))
                })
                .collect();
            if selecting.is_empty() {
                continue;
            }
            let names = selecting
                .iter()
                .map(|svc| svc.meta.name.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let never = if pod.ips.is_empty() {
                Some("it has no status.podIP or status.podIPs".to_string())
            } else {
                at.finished_phase
                    .as_ref()
                    .map(|phase| format!("its phase is {phase}, and a finished pod never serves"))
            };
            if let Some(why) = never {
                warnings.push(ConfigWarning {
                    at: at.status_at.clone(),
                    message: format!(
                        "Service {names} selects this pod, but it can never be an endpoint: {why}"
                    ),
                });
                continue;
            }
            for svc in &selecting {
                for port in &svc.ports {
                    let TargetPort::Name(name) = &port.target_port else {
                        continue;
                    };
                    if !pod.container_ports.iter().any(|(n, _)| n == name) {
                        warnings.push(ConfigWarning {
                            at: at.status_at.clone(),
                            message: format!(
                                "Service {} port {} targets the container port named {name:?}, which this pod does not declare: it can never be an endpoint of that port",
                                svc.meta.name, port.port
                            ),
                        });
                    }
                }
            }
        }
        warnings
    }

    fn cross_checks(&mut self) {
        let snap = &self.report.snapshot;
        let mut warnings = Vec::new();
        let rules = RulesByHost::new(snap);
        let (dr_by_host, dr_wildcards) = (&rules.exact, &rules.wildcards);
        // Destination hosts and subsets, each VirtualService's together.
        for (order, refs) in &self.vs_refs {
            let before = warnings.len();
            warnings.extend(
                self.refs[refs.clone()]
                    .iter()
                    .filter_map(|r| reference_warning(snap, &rules, r)),
            );
            if let Some(count) = self.places.refs.get_mut(*order) {
                *count = warnings.len() - before;
            }
        }
        warnings.extend(self.pods_that_never_serve());
        // Gateways referenced by VirtualServices.
        for (at, gw) in &self.gateway_refs {
            let exists = snap
                .gateways
                .iter()
                .any(|g| format!("{}/{}", g.meta.namespace, g.meta.name) == *gw);
            if !exists {
                warnings.push(ConfigWarning {
                    at: at.clone(),
                    message: format!("gateway {gw:?} is not defined in this config"),
                });
            }
        }
        // Several VirtualServices for one host: Istio does not merge them for sidecars.
        let mut by_host: HashMap<&str, usize> = HashMap::new();
        for (i, vs) in snap.virtual_services.iter().enumerate() {
            if !vs.applies_to_mesh() {
                continue;
            }
            for h in &vs.hosts {
                match by_host.get(h.as_str()) {
                    Some(&first) => {
                        let first_vs = &snap.virtual_services[first];
                        if let Some(at) = self.vs_locations.get(i) {
                            warnings.push(ConfigWarning {
                                at: (*at).clone(),
                                message: format!(
                                    "host {h:?} is also claimed by {}; virtual services are not merged, only the oldest applies",
                                    first_vs.meta.display_name()
                                ),
                            });
                        }
                    }
                    None => {
                        by_host.insert(h, i);
                    }
                }
            }
        }
        // Destination rules whose host is unknown, and what merging several rules for one host drops (§2.0:
        // subsets are concatenated, first definition wins; Istio uses only the first top-level
        // trafficPolicy, which Keel does not apply either).
        for (i, dr) in snap.destination_rules.iter().enumerate() {
            let Some((host_at, policy_at, subset_ats)) = self.dr_locations.get(i) else {
                continue;
            };
            let known = dr.host.starts_with('*')
                || snap.service_by_host.contains_key(&dr.host)
                || snap.service_entries.iter().any(|se| {
                    se.hosts
                        .iter()
                        .any(|h| super::validate::host_subset_of(&dr.host, h))
                });
            if !known {
                warnings.push(ConfigWarning {
                    at: host_at.clone(),
                    message: format!(
                        "host {:?} is not a known Service or ServiceEntry host; this rule has no effect",
                        dr.host
                    ),
                });
            }
            let merged_with = |earlier: &&DestinationRule| {
                earlier.host == dr.host
                    && earlier.meta.namespace == dr.meta.namespace
                    && earlier.workload_selector == dr.workload_selector
                    && earlier.export_to == dr.export_to
            };
            // Rules merged with this one share its host: only those can be earlier definitions.
            let earlier: Vec<&DestinationRule> = dr_by_host
                .get(dr.host.as_str())
                .map_or(dr_wildcards, |same_host| same_host)
                .iter()
                .take_while(|&&j| j < i)
                .map(|&j| &*snap.destination_rules[j])
                .filter(merged_with)
                .collect();
            for (s, at) in dr.subsets.iter().zip(subset_ats) {
                if let Some(first) = earlier.iter().find(|e| e.subset(&s.name).is_some()) {
                    warnings.push(ConfigWarning {
                        at: at.clone(),
                        message: format!(
                            "subset {:?} is also defined by {}; the first definition wins",
                            s.name,
                            first.meta.display_name()
                        ),
                    });
                }
            }
            if dr.traffic_policy.is_some() {
                if let Some(first) = earlier.iter().find(|e| e.traffic_policy.is_some()) {
                    warnings.push(ConfigWarning {
                        at: policy_at.clone(),
                        message: format!(
                            "shadowed: {} already sets a trafficPolicy for {}; Istio uses only the first (Keel applies neither)",
                            first.meta.display_name(),
                            dr.host
                        ),
                    });
                }
            }
        }
        // ServiceEntries without addresses: the kernel redirects by destination address, so nothing
        // dialled to such an entry's hosts reaches Keel, unlike a sidecar that captures every
        // connection. An entry whose hosts are all Service hosts only decorates those Services.
        for (se, at) in snap.service_entries.iter().zip(&self.se_locations) {
            if se.addresses.is_empty()
                && !se
                    .hosts
                    .iter()
                    .all(|h| snap.service_by_host.contains_key(h))
            {
                warnings.push(ConfigWarning {
                    at: (*at).clone(),
                    message: "no addresses: Keel captures connections by destination address, so connections to these hosts go direct; the hosts serve only as route destinations".to_string(),
                });
            }
        }
        self.report.warnings.extend(warnings);
    }
}

/// DestinationRules by host (ascending), so a check reads only the rules that can cover a host: a
/// host without a leading `*` covers only itself (`host_subset_of`).
struct RulesByHost<'s> {
    exact: HashMap<&'s str, Vec<usize>>,
    wildcards: Vec<usize>,
}

impl<'s> RulesByHost<'s> {
    fn new(snap: &'s Snapshot) -> Self {
        let mut exact: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut wildcards = Vec::new();
        for (i, dr) in snap.destination_rules.iter().enumerate() {
            if dr.host.starts_with('*') {
                wildcards.push(i);
            } else {
                exact.entry(dr.host.as_str()).or_default().push(i);
            }
        }
        RulesByHost { exact, wildcards }
    }
}

/// What is wrong with a route's destination: a host no Service or ServiceEntry has, or a subset
/// no DestinationRule visible to the route's namespace defines.
fn reference_warning(
    snap: &Snapshot,
    rules: &RulesByHost<'_>,
    r: &DestinationRef,
) -> Option<ConfigWarning> {
    let host = &r.destination.host;
    let known_service = snap.service_by_host.contains_key(host)
        || snap.service_entries.iter().any(|se| {
            se.hosts
                .iter()
                .any(|h| super::validate::host_subset_of(host, h))
        });
    if !known_service {
        return Some(ConfigWarning {
            at: r.at.clone(),
            message: format!(
                "host {host:?} is not a known Service or ServiceEntry host; requests routed there fail (503 NC)"
            ),
        });
    }
    let subset = r.destination.subset.as_ref()?;
    let defined = rules
        .exact
        .get(host.as_str())
        .into_iter()
        .flatten()
        .chain(&rules.wildcards)
        .map(|&i| &snap.destination_rules[i])
        .any(|dr| {
            dr_visible(dr, &r.client_namespace, host, &snap.mesh.root_namespace)
                && super::validate::host_subset_of(host, &dr.host)
                && dr.subset(subset).is_some()
        });
    (!defined).then(|| ConfigWarning {
        at: r.at.clone(),
        message: format!(
            "subset {subset:?} of {host} is not defined in any DestinationRule for that host; requests routed there fail (503 NC)"
        ),
    })
}

/// An assembly and where each object's warnings are in its report.
#[derive(Debug, Default)]
pub struct Assembled {
    pub report: LoadReport,
    pub places: WarningPlaces,
}

/// How many warnings of a report each object (by load order) has: the report's warnings are every
/// object's own (from its conversion) in load order, then each VirtualService's route reference
/// warnings in load order, then the other checks across objects.
#[derive(Debug, Clone, Default)]
pub struct WarningPlaces {
    own: Vec<usize>,
    refs: Vec<usize>,
}

/// The assembly of `now` from the assembly of `before` (`snapshot`, `warnings` and `places` of
/// it, which rejected nothing when assembled), when they differ only by VirtualServices edited in
/// place ([`Converted::edits_in_place`]): only those are put into the snapshot and checked again,
/// with the same result as assembling `now` whole. `None` for any other difference. Also returns
/// the load orders of the edited objects.
pub fn reassemble(
    before: &[&Converted],
    snapshot: &Snapshot,
    warnings: &[ConfigWarning],
    places: &WarningPlaces,
    now: &[&Converted],
) -> Option<(Snapshot, Vec<ConfigWarning>, WarningPlaces, Vec<usize>)> {
    if before.len() != now.len() || places.own.len() != now.len() {
        return None;
    }
    let mut edited = Vec::new();
    for (order, (old, new)) in before.iter().zip(now).enumerate() {
        if std::ptr::eq(*old, *new) {
            continue;
        }
        if !new.edits_in_place(old) {
            return None;
        }
        edited.push(order);
    }
    let mut snapshot = snapshot.clone();
    let rules = RulesByHost::new(&snapshot);
    let mut new_refs = Vec::with_capacity(edited.len());
    for &order in &edited {
        let Some(Piece::VirtualService { refs, .. }) = &now[order].piece else {
            return None;
        };
        new_refs.push(
            refs.iter()
                .filter_map(|r| reference_warning(&snapshot, &rules, r))
                .collect::<Vec<_>>(),
        );
    }
    drop(rules);
    for &order in &edited {
        let Some(Piece::VirtualService { vs, .. }) = &now[order].piece else {
            return None;
        };
        let at = snapshot
            .virtual_services
            .binary_search_by_key(&order, |v| v.meta.order)
            .ok()?;
        snapshot.virtual_services[at] = vs.at(order);
    }
    // The warnings again, segment by segment, the edited objects' own and reference ones new.
    let mut out = Vec::with_capacity(warnings.len());
    let mut new_places = places.clone();
    let mut pos = 0;
    let mut next_edit = edited.iter().peekable();
    for (order, len) in places.own.iter().enumerate() {
        let old = warnings.get(pos..pos + len)?;
        pos += len;
        if next_edit.next_if(|&&e| e == order).is_some() {
            out.extend(now[order].warnings.iter().cloned());
            new_places.own[order] = now[order].warnings.len();
        } else {
            out.extend_from_slice(old);
        }
    }
    let mut new_refs = edited.iter().zip(new_refs).peekable();
    for (order, len) in places.refs.iter().enumerate() {
        let old = warnings.get(pos..pos + len)?;
        pos += len;
        match new_refs.next_if(|(&e, _)| e == order) {
            Some((_, fresh)) => {
                new_places.refs[order] = fresh.len();
                out.extend(fresh);
            }
            None => out.extend_from_slice(old),
        }
    }
    out.extend_from_slice(warnings.get(pos..)?);
    Some((snapshot, out, new_places, edited))
}

/// Whether a DestinationRule may apply to clients in `client_ns` for `host` (§2.0): rules in the client's
/// own namespace always, rules in the service's namespace or the root namespace when exported to it.
fn dr_visible(dr: &DestinationRule, client_ns: &str, host: &str, root_ns: &str) -> bool {
    if dr.meta.namespace == client_ns {
        return true;
    }
    let exported =
        dr.export_to.is_empty() || dr.export_to.iter().any(|e| e == "*" || e == client_ns);
    let service_ns = host
        .strip_suffix(&format!(".svc.{CLUSTER_DOMAIN}"))
        .and_then(|h| h.split('.').nth(1));
    exported && (service_ns == Some(dr.meta.namespace.as_str()) || dr.meta.namespace == root_ns)
}

#[cfg(test)]
mod tests;
