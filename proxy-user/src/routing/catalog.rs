//! The service registry routing resolves hosts against: Kubernetes Services and ServiceEntry hosts,
//! built per snapshot and dropped once the tables are built (it borrows the snapshot).

use std::collections::HashMap;

use crate::policy::{Protocol, Service, ServiceEntry, ServiceId, Snapshot};

use super::table::{creation_order, host_match_rank};

/// Index of a service in [`Catalog::services`].
pub type CatalogId = usize;

/// Where a registry service comes from.
#[derive(Debug, Clone, Copy)]
pub enum Kind<'a> {
    Kube {
        id: ServiceId,
        service: &'a Service,
    },
    /// One host of a ServiceEntry (Istio makes one service per host).
    Entry(&'a ServiceEntry),
}

/// One port of a registry service.
#[derive(Debug, Clone, Copy)]
pub struct PortInfo {
    pub number: u16,
    pub protocol: Protocol,
    /// Index into the Service's `ports` or the entry's `ports`.
    pub index: usize,
}

/// One service host with its ports and visibility.
#[derive(Debug, Clone, Copy)]
pub struct CatalogService<'a> {
    /// Lower-case host (FQDN, or a ServiceEntry wildcard).
    pub hostname: &'a str,
    pub namespace: &'a str,
    /// Kubernetes Services are visible everywhere (the `networking.istio.io/exportTo` annotation is
    /// not modelled yet).
    pub export_to: &'a [String],
    pub kind: Kind<'a>,
}

impl<'a> CatalogService<'a> {
    /// The declared port `number`.
    pub fn port(&self, number: u16) -> Option<PortInfo> {
        match self.kind {
            Kind::Kube { service, .. } => {
                service
                    .ports
                    .iter()
                    .position(|p| p.port == number)
                    .map(|index| PortInfo {
                        number,
                        protocol: service.ports[index].protocol,
                        index,
                    })
            }
            Kind::Entry(se) => se
                .ports
                .iter()
                .position(|p| p.number == number)
                .map(|index| PortInfo {
                    number,
                    protocol: se.ports[index].protocol,
                    index,
                }),
        }
    }

    /// The port a destination without `port` goes to: the only port, else the request's port.
    pub fn default_port(&self, request_port: u16) -> u16 {
        match self.kind {
            Kind::Kube { service, .. } => match service.ports.as_slice() {
                [only] => only.port,
                _ => request_port,
            },
            Kind::Entry(se) => match se.ports.as_slice() {
                [only] => only.number,
                _ => request_port,
            },
        }
    }

    /// The port at `index` (as stored in meshed-destination candidates).
    pub fn port_at(&self, index: usize) -> Option<PortInfo> {
        let number = match self.kind {
            Kind::Kube { service, .. } => service.ports.get(index)?.port,
            Kind::Entry(se) => se.ports.get(index)?.number,
        };
        self.port(number)
    }
}

/// Every registry host of a snapshot.
#[derive(Debug)]
pub struct Catalog<'a> {
    pub services: Vec<CatalogService<'a>>,
    /// Exact host -> candidates: the Kubernetes Service first, then ServiceEntries oldest first.
    exact: HashMap<&'a str, Vec<CatalogId>>,
    /// ServiceEntry wildcard hosts (`*.foo.com`), oldest first.
    wildcards: Vec<CatalogId>,
    /// ServiceEntry index -> the service of its first host that is not a Kubernetes Service host
    /// (what its `addresses` lead to).
    entry_primary: HashMap<usize, CatalogId>,
}

impl<'a> Catalog<'a> {
    /// Collect the registry of `snapshot`. A ServiceEntry host equal to a Kubernetes Service host only
    /// decorates that Service (§3.1) and is skipped.
    pub fn new(snapshot: &'a Snapshot) -> Self {
        let mut services = Vec::new();
        let mut exact: HashMap<&str, Vec<CatalogId>> = HashMap::new();
        let mut wildcards = Vec::new();
        let mut entry_primary = HashMap::new();
        for (id, service) in snapshot.services.iter().enumerate() {
            exact
                .entry(service.hostname.as_str())
                .or_default()
                .push(services.len());
            services.push(CatalogService {
                hostname: &service.hostname,
                namespace: &service.meta.namespace,
                export_to: &[],
                kind: Kind::Kube { id, service },
            });
        }
        let mut entries: Vec<usize> = (0..snapshot.service_entries.len()).collect();
        entries.sort_by_key(|&i| creation_order(&snapshot.service_entries[i].meta));
        for entry in entries {
            let se = &snapshot.service_entries[entry];
            for host in &se.hosts {
                if snapshot.service_by_host.contains_key(host) {
                    continue;
                }
                let id = services.len();
                services.push(CatalogService {
                    hostname: host,
                    namespace: &se.meta.namespace,
                    export_to: &se.export_to,
                    kind: Kind::Entry(se),
                });
                entry_primary.entry(entry).or_insert(id);
                if host.starts_with('*') {
                    wildcards.push(id);
                } else {
                    exact.entry(host.as_str()).or_default().push(id);
                }
            }
        }
        Catalog {
            services,
            exact,
            wildcards,
            entry_primary,
        }
    }

    /// The service `host` names for a client, among those `visible` accepts: an exact host first (the
    /// Kubernetes Service, else the oldest entry), else the most specific wildcard entry.
    pub fn find(&self, host: &str, visible: impl Fn(CatalogId) -> bool) -> Option<CatalogId> {
        if let Some(id) = self
            .exact
            .get(host)
            .and_then(|ids| ids.iter().copied().find(|&id| visible(id)))
        {
            return Some(id);
        }
        self.wildcards
            .iter()
            .copied()
            .filter(|&id| visible(id))
            .filter_map(|id| host_match_rank(self.services[id].hostname, host).map(|r| (r, id)))
            .min_by_key(|&(rank, _)| rank)
            .map(|(_, id)| id)
    }

    /// The Kubernetes Service with snapshot id `id`.
    pub fn kube(&self, id: ServiceId) -> Option<CatalogId> {
        // Kubernetes Services are pushed first, in snapshot order.
        matches!(self.services.get(id), Some(CatalogService { kind: Kind::Kube { id: k, .. }, .. }) if *k == id)
            .then_some(id)
    }

    /// The service a ServiceEntry's `addresses` lead to.
    pub fn entry(&self, entry: usize) -> Option<CatalogId> {
        self.entry_primary.get(&entry).copied()
    }
}
