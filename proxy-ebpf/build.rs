//! Rebuild when the `bpf-linker` binary changes: linking the eBPF object depends on it, but cargo
//! cannot know that on its own.

use which::which;

fn main() {
    // Without bpf-linker the eBPF build fails later with a clearer linker error, so a missing one
    // is not fatal here.
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
