//! The node's pods as kubelet runs them: where their cgroups are ([`kubelet`]), when they come and
//! go ([`watch`]), and which of them Keel captures ([`capture`]).
//!
//! Both are used in cluster mode (`keel run --kube`): the capture decision picks the pods, the
//! kubelet scan maps each picked pod's UID to the cgroup id the kernel programs match on.

pub mod capture;
pub mod kubelet;
pub mod watch;
