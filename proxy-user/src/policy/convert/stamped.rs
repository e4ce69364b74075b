//! A converted model object shared by every snapshot assembled from it.
//!
//! A snapshot's objects carry their load order (`meta.order`: Istio's "oldest wins" breaks ties
//! with it), which only the assembly knows. Copying every object into each snapshot to stamp it
//! costs more than the rest of a reload at thousands of objects; instead the object keeps the
//! last stamped version and hands out the same `Arc` for as long as its place in the load stays
//! the same (nearly always: a reload changes a few objects, not the order of the rest).

use std::sync::{Arc, Mutex};

use crate::policy::model::{DestinationRule, Meta, Pod, Service, VirtualService};

/// A model object with metadata.
pub(crate) trait HasMeta: Clone {
    fn meta_mut(&mut self) -> &mut Meta;
    fn meta(&self) -> &Meta;
}

macro_rules! has_meta {
    ($($t:ty),*) => {$(
        impl HasMeta for $t {
            fn meta_mut(&mut self) -> &mut Meta {
                &mut self.meta
            }
            fn meta(&self) -> &Meta {
                &self.meta
            }
        }
    )*};
}
has_meta!(Service, Pod, VirtualService, DestinationRule);

/// One converted object and its last stamped version.
#[derive(Debug)]
pub(crate) struct Stamped<T> {
    /// As converted (order 0).
    value: Box<T>,
    /// The last version handed to a snapshot.
    latest: Mutex<Option<Arc<T>>>,
}

impl<T: HasMeta> Stamped<T> {
    pub(crate) fn new(value: T) -> Self {
        Stamped {
            value: Box::new(value),
            latest: Mutex::new(None),
        }
    }

    /// The object with load order `order`: the same `Arc` as the last time when the order is
    /// the same, a stamped copy otherwise.
    pub(crate) fn at(&self, order: usize) -> Arc<T> {
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        match &*latest {
            Some(stamped) if stamped.meta().order == order => Arc::clone(stamped),
            _ => {
                let mut copy = T::clone(&self.value);
                copy.meta_mut().order = order;
                let stamped = Arc::new(copy);
                *latest = Some(Arc::clone(&stamped));
                stamped
            }
        }
    }
}

impl<T> std::ops::Deref for Stamped<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: HasMeta> Clone for Stamped<T> {
    fn clone(&self) -> Self {
        Stamped::new(T::clone(&self.value))
    }
}
