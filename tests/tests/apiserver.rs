use anyhow::Result;
use keel_tests::apiserver::{kubectl, ApiServer};

#[test]
fn explore() -> Result<()> {
    let dir = std::path::PathBuf::from("/tmp/apiexp");
    let api = ApiServer::start(&dir)?;
    std::fs::write(dir.join("pod.yaml"), "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p1\n  labels: {app: web}\nspec:\n  containers:\n  - name: c\n    image: busybox\n")?;
    std::fs::write(dir.join("pod2.yaml"), "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p1\n  labels: {app: web2}\nspec:\n  containers:\n  - name: c\n    image: busybox2\n")?;
    std::fs::write(dir.join("vs.yaml"), "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [r]\n")?;
    for args in [
        vec!["-v=8", "create", "-f", "/tmp/apiexp/pod.yaml"],
        vec!["-v=6", "get", "pods"],
        vec!["-v=6", "get", "pod", "p1", "-o", "json"],
        vec!["-v=8", "apply", "-f", "/tmp/apiexp/pod2.yaml"],
        vec!["-v=6", "replace", "-f", "/tmp/apiexp/pod.yaml"],
        vec!["-v=6", "delete", "pod", "p1"],
        vec!["-v=6", "create", "-f", "/tmp/apiexp/vs.yaml"],
        vec!["-v=6", "apply", "-f", "/tmp/apiexp/vs.yaml"],
        vec!["-v=6", "get", "vs"],
        vec!["-v=6", "get", "virtualservices.v1beta1.networking.istio.io", "-o", "yaml"],
    ] {
        let (ok, out, err) = kubectl(&api, &dir.join("cache"), &args)?;
        println!("=== {args:?} ok={ok}\n{out}\n--- stderr\n{err}");
    }
    Ok(())
}
