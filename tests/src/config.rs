//! Config directories for `keel run --config DIR` / `keel validate DIR`, and YAML for the Kubernetes
//! resources a test needs (Services, Pods). Istio resources are written as literal YAML in the tests,
//! so they read like what a user would apply.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{ensure, Context, Result};

use crate::podnet::Pod;

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// A temporary directory of YAML files, removed on drop.
#[derive(Debug)]
pub struct ConfigDir {
    path: PathBuf,
}

impl ConfigDir {
    /// A fresh empty directory under the system temp dir, named after `label`.
    pub fn new(label: &str) -> Result<ConfigDir> {
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("keel-config-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .with_context(|| format!("creating config dir {}", path.display()))?;
        Ok(ConfigDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes (or replaces) `file_name` with `yaml`.
    pub fn write(&self, file_name: &str, yaml: &str) -> Result<PathBuf> {
        ensure!(
            !file_name.contains('/'),
            "config file name {file_name:?} must not contain '/'"
        );
        let p = self.path.join(file_name);
        std::fs::write(&p, yaml).with_context(|| format!("writing {}", p.display()))?;
        Ok(p)
    }

    /// Writes `pods.yaml` with one `Pod` resource per pod (labels and annotations per pod).
    pub fn write_pods(&self, pods: &[(&Pod, Labels<'_>, Labels<'_>)]) -> Result<PathBuf> {
        let docs: Vec<String> = pods
            .iter()
            .map(|(p, labels, annotations)| pod_yaml(p, labels, annotations))
            .collect();
        self.write("pods.yaml", &docs.join("---\n"))
    }
}

impl Drop for ConfigDir {
    fn drop(&mut self) {
        if std::env::var_os("KEEL_TEST_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Label or annotation pairs.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

/// One port of a Service.
#[derive(Debug, Clone, Copy)]
pub struct SvcPort<'a> {
    /// Port name; its prefix decides the protocol (`http`, `http2`, `tcp`, ...).
    pub name: &'a str,
    /// Service (VIP) port.
    pub port: u16,
    /// Pod port.
    pub target_port: u16,
}

/// A `ClusterIP` Service selecting pods by `selector`.
pub fn service_yaml(
    name: &str,
    namespace: &str,
    cluster_ip: Ipv4Addr,
    ports: &[SvcPort<'_>],
    selector: Labels<'_>,
) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  \
         type: ClusterIP\n  clusterIP: {cluster_ip}\n  selector:\n"
    );
    for (k, v) in selector {
        let _ = writeln!(y, "    {k}: {}", quote(v));
    }
    y.push_str("  ports:\n");
    for p in ports {
        let _ = writeln!(
            y,
            "  - name: {}\n    port: {}\n    targetPort: {}\n    protocol: TCP",
            p.name, p.port, p.target_port
        );
    }
    y
}

/// A running, ready `Pod` resource for `pod`, with `status.podIP` set to its address.
pub fn pod_yaml(pod: &Pod, labels: Labels<'_>, annotations: Labels<'_>) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {}\n",
        pod.name, pod.namespace
    );
    if !labels.is_empty() {
        y.push_str("  labels:\n");
        for (k, v) in labels {
            let _ = writeln!(y, "    {k}: {}", quote(v));
        }
    }
    if !annotations.is_empty() {
        y.push_str("  annotations:\n");
        for (k, v) in annotations {
            let _ = writeln!(y, "    {k}: {}", quote(v));
        }
    }
    let _ = write!(
        y,
        "status:\n  phase: Running\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n",
        ip = pod.ip
    );
    if let Some(ip6) = pod.ip6 {
        let _ = writeln!(y, "  - ip: {ip6}");
    }
    y
}

/// YAML double-quoted string (label values like `"false"` or `"1.0"` must stay strings).
fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_yaml_parses() -> Result<()> {
        let y = service_yaml(
            "reviews",
            "default",
            Ipv4Addr::new(10, 96, 0, 20),
            &[SvcPort {
                name: "http",
                port: 9080,
                target_port: 9080,
            }],
            &[("app", "reviews")],
        );
        let v: serde_yaml::Value = serde_yaml::from_str(&y)?;
        assert_eq!(v["spec"]["clusterIP"].as_str(), Some("10.96.0.20"));
        assert_eq!(v["spec"]["ports"][0]["port"].as_u64(), Some(9080));
        assert_eq!(v["spec"]["selector"]["app"].as_str(), Some("reviews"));
        Ok(())
    }
}
