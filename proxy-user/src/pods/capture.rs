//! Which of the node's pods Keel captures in cluster mode: opt-in and opt-out by label, following
//! Istio's ambient mode, whose node proxy (ztunnel) has the same place in the mesh as Keel.
//!
//! Checked in this order; the first that applies decides, and its [`Reason`] says so:
//!
//! | # | on        | condition                                                          | result  |
//! |---|-----------|--------------------------------------------------------------------|---------|
//! | 1 | pod       | `spec.hostNetwork: true`                                           | skipped |
//! | 2 | pod       | has an Istio sidecar: annotation `sidecar.istio.io/status`, or a container or init container named `istio-proxy` | skipped |
//! | 3 | pod       | annotation `keel.io/capture: "false"`                              | skipped |
//! | 4 | pod       | label `istio.io/dataplane-mode: ambient`                           | captured |
//! | 5 | pod       | label `istio.io/dataplane-mode` with any other value (`none`)      | skipped |
//! | 6 | namespace | label `istio.io/dataplane-mode: ambient`                           | captured |
//! | 7 |           | otherwise (also: the namespace is not known yet)                   | skipped |
//!
//! Rows 2, 4, 5 and 6 are Istio's own rules for ambient enrollment (a pod label other than `ambient`
//! opts the pod out, as in istio-cni). The namespace label `istio-injection=enabled` does not opt
//! in: it asks istiod's injector for sidecars, and pods that got one are left alone by row 2.
//!
//! Why host-network pods are never captured, though kubelet gives them a pod cgroup like any
//! other (so the kernel programs *could* tell their connections apart): they have no address of
//! their own — their source address is the node's, shared with every other host-network pod and
//! the node itself, so no endpoint, metric or peer can attribute their traffic to them — and they are
//! the node's own plumbing (CNI agents, kube-proxy, Keel's own DaemonSet pod), whose connections
//! must not depend on the node proxy; capturing Keel's own pod would loop. Istio excludes them for
//! the same reasons.

use crate::policy::model::{Labels, Pod};

/// Keel's own opt-out annotation (`"false"`); conversion reads it into [`Pod::capture`].
const CAPTURE_ANNOTATION: &str = "keel.io/capture";

/// Istio's label (on a namespace or a pod) that selects the dataplane mode.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
/// [`DATAPLANE_MODE_LABEL`] value that enrolls a namespace or pod.
pub const DATAPLANE_MODE_AMBIENT: &str = "ambient";
/// [`DATAPLANE_MODE_LABEL`] value that opts a pod out (Istio's documented spelling; any value
/// other than `ambient` on a pod does the same).
pub const DATAPLANE_MODE_NONE: &str = "none";

/// Why a pod is or is not captured. [`Reason::captures`] gives the outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Skipped: `spec.hostNetwork: true`.
    HostNetwork,
    /// Skipped: the pod has an Istio sidecar.
    IstioSidecar,
    /// Skipped: annotated `keel.io/capture: "false"`.
    KeelAnnotation,
    /// Captured: the pod is labelled `istio.io/dataplane-mode=ambient`.
    PodLabel,
    /// Skipped: the pod is labelled `istio.io/dataplane-mode` with this other value.
    PodOptOut(String),
    /// Captured: the pod's namespace is labelled `istio.io/dataplane-mode=ambient`.
    NamespaceLabel,
    /// Skipped: the pod's `Namespace` is not known (yet), and the pod has no label of its own.
    NamespaceUnknown,
    /// Skipped: neither the pod nor its namespace opted in.
    NotEnrolled,
}

impl Reason {
    /// Whether the pod is captured.
    pub fn captures(&self) -> bool {
        matches!(self, Reason::PodLabel | Reason::NamespaceLabel)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::HostNetwork => f.write_str("not captured: host-network pod"),
            Reason::IstioSidecar => f.write_str("not captured: the pod has an Istio sidecar"),
            Reason::KeelAnnotation => {
                write!(f, "not captured: annotated {CAPTURE_ANNOTATION}: \"false\"")
            }
            Reason::PodLabel => write!(
                f,
                "captured: pod labelled {DATAPLANE_MODE_LABEL}={DATAPLANE_MODE_AMBIENT}"
            ),
            Reason::PodOptOut(v) => {
                write!(f, "not captured: pod labelled {DATAPLANE_MODE_LABEL}={v}")
            }
            Reason::NamespaceLabel => write!(
                f,
                "captured: namespace labelled {DATAPLANE_MODE_LABEL}={DATAPLANE_MODE_AMBIENT}"
            ),
            Reason::NamespaceUnknown => {
                f.write_str("not captured: the pod's namespace is not known yet")
            }
            Reason::NotEnrolled => write!(
                f,
                "not captured: neither the pod nor its namespace is labelled \
                 {DATAPLANE_MODE_LABEL}={DATAPLANE_MODE_AMBIENT}"
            ),
        }
    }
}

/// Decides whether `pod` is captured, given its namespace's labels (`None`: the `Namespace` object
/// is not known). Pure; see the module docs for the rules.
pub fn decide(namespace_labels: Option<&Labels>, pod: &Pod) -> Reason {
    if pod.host_network {
        return Reason::HostNetwork;
    }
    if pod.sidecar {
        return Reason::IstioSidecar;
    }
    // `capture` is false exactly when annotated `keel.io/capture: "false"`.
    if !pod.capture {
        return Reason::KeelAnnotation;
    }
    if let Some(mode) = pod.labels.get(DATAPLANE_MODE_LABEL) {
        return if mode == DATAPLANE_MODE_AMBIENT {
            Reason::PodLabel
        } else {
            Reason::PodOptOut(mode.clone())
        };
    }
    match namespace_labels {
        None => Reason::NamespaceUnknown,
        Some(labels)
            if labels.get(DATAPLANE_MODE_LABEL).map(String::as_str)
                == Some(DATAPLANE_MODE_AMBIENT) =>
        {
            Reason::NamespaceLabel
        }
        Some(_) => Reason::NotEnrolled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::Meta;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn pod(pod_labels: &[(&str, &str)]) -> Pod {
        Pod {
            meta: Meta {
                kind: "Pod".into(),
                namespace: "shop".into(),
                name: "web".into(),
                file: None,
                line: None,
                creation_timestamp: None,
                order: 0,
            },
            labels: labels(pod_labels),
            annotations: Labels::new(),
            ips: Vec::new(),
            ready: true,
            capture: true,
            container_ports: Vec::new(),
            node_name: None,
            owner: None,
            uid: None,
            qos_class: None,
            host_network: false,
            sidecar: false,
            traffic: None,
        }
    }

    #[test]
    fn decisions() {
        let ambient = labels(&[(DATAPLANE_MODE_LABEL, "ambient")]);
        let plain = labels(&[("team", "a")]);
        let injected = labels(&[("istio-injection", "enabled")]);
        let ns_none = labels(&[(DATAPLANE_MODE_LABEL, "none")]);
        let pod_ambient = [(DATAPLANE_MODE_LABEL, "ambient")];
        let pod_none = [(DATAPLANE_MODE_LABEL, "none")];
        let host = |mut p: Pod| {
            p.host_network = true;
            p
        };
        let sidecar = |mut p: Pod| {
            p.sidecar = true;
            p
        };
        let keel_off = |mut p: Pod| {
            p.capture = false;
            p
        };
        let cases: Vec<(&str, Option<&Labels>, Pod, Reason)> = vec![
            (
                "ambient namespace",
                Some(&ambient),
                pod(&[]),
                Reason::NamespaceLabel,
            ),
            (
                "plain namespace",
                Some(&plain),
                pod(&[]),
                Reason::NotEnrolled,
            ),
            (
                "sidecar-injection namespace is no opt-in",
                Some(&injected),
                pod(&[]),
                Reason::NotEnrolled,
            ),
            (
                "namespace none",
                Some(&ns_none),
                pod(&[]),
                Reason::NotEnrolled,
            ),
            (
                "namespace unknown",
                None,
                pod(&[]),
                Reason::NamespaceUnknown,
            ),
            (
                "pod opts in, namespace plain",
                Some(&plain),
                pod(&pod_ambient),
                Reason::PodLabel,
            ),
            (
                "pod opts in, namespace unknown",
                None,
                pod(&pod_ambient),
                Reason::PodLabel,
            ),
            (
                "pod opts out of an ambient namespace",
                Some(&ambient),
                pod(&pod_none),
                Reason::PodOptOut("none".into()),
            ),
            (
                "any other pod value opts out",
                Some(&ambient),
                pod(&[(DATAPLANE_MODE_LABEL, "sidecar")]),
                Reason::PodOptOut("sidecar".into()),
            ),
            (
                "other pod labels do not matter",
                Some(&ambient),
                pod(&[("app", "web"), ("istio.io/rev", "canary")]),
                Reason::NamespaceLabel,
            ),
            (
                "host network in an ambient namespace",
                Some(&ambient),
                host(pod(&[])),
                Reason::HostNetwork,
            ),
            (
                "host network beats the pod label",
                Some(&plain),
                host(pod(&pod_ambient)),
                Reason::HostNetwork,
            ),
            (
                "sidecar in an ambient namespace",
                Some(&ambient),
                sidecar(pod(&[])),
                Reason::IstioSidecar,
            ),
            (
                "sidecar beats the pod label",
                Some(&plain),
                sidecar(pod(&pod_ambient)),
                Reason::IstioSidecar,
            ),
            (
                "keel annotation in an ambient namespace",
                Some(&ambient),
                keel_off(pod(&[])),
                Reason::KeelAnnotation,
            ),
            (
                "keel annotation beats the pod label",
                None,
                keel_off(pod(&pod_ambient)),
                Reason::KeelAnnotation,
            ),
            (
                "host network beats the sidecar",
                Some(&ambient),
                host(sidecar(pod(&[]))),
                Reason::HostNetwork,
            ),
        ];
        for (what, ns, p, want) in cases {
            let got = decide(ns, &p);
            assert_eq!(got, want, "{what}");
            assert_eq!(
                got.captures(),
                matches!(want, Reason::PodLabel | Reason::NamespaceLabel),
                "{what}"
            );
        }
    }

    #[test]
    fn reasons_read_as_sentences() {
        assert_eq!(
            Reason::NamespaceLabel.to_string(),
            "captured: namespace labelled istio.io/dataplane-mode=ambient"
        );
        assert_eq!(
            Reason::PodOptOut("none".into()).to_string(),
            "not captured: pod labelled istio.io/dataplane-mode=none"
        );
        assert_eq!(
            Reason::KeelAnnotation.to_string(),
            "not captured: annotated keel.io/capture: \"false\""
        );
    }
}
