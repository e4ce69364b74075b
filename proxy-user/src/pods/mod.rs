//! The node's pods as kubelet runs them: where their cgroups are ([`kubelet`]), when they come and
//! go ([`watch`]), which of them Keel captures ([`capture`]), and which of a captured pod's
//! connections its Istio traffic annotations leave alone ([`traffic`]).
//!
//! Cluster mode (`keel run --kube`) uses the first three: the capture decision picks the pods, the
//! kubelet scan maps each picked pod's UID to the cgroup id the kernel programs match on. The
//! traffic rules apply in both modes.

pub mod capture;
pub mod kubelet;
pub mod traffic;
pub mod watch;
