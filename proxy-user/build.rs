//! Builds the eBPF object (`proxy-ebpf`, for `bpfel-unknown-none` with the nightly toolchain and
//! bpf-linker) into `OUT_DIR/proxy-ebpf`, which `src/ebpf` embeds with `include_bytes_aligned!`.
//!
//! `proxy-ebpf` is also a build-dependency of this crate (its empty library target), so cargo
//! reruns this script when the eBPF crate or `proxy-common` changes.

use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

/// Name of the eBPF crate in the workspace.
const EBPF_PACKAGE: &str = "proxy-ebpf";

fn main() -> anyhow::Result<()> {
    // cargo-fuzz builds (`--cfg fuzzing`, from the `fuzz/` workspace) never load the programs, and
    // the sanitizer flags must not reach the nested BPF build: embed an empty object instead.
    if std::env::var_os("CARGO_CFG_FUZZING").is_some() {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join(EBPF_PACKAGE);
        std::fs::write(out, [])?;
        return Ok(());
    }
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|package| package.name == EBPF_PACKAGE)
        .ok_or_else(|| anyhow!("package {EBPF_PACKAGE} not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", ebpf.manifest_path))?;
    // aya-build relays every stderr line of the nested cargo as a `cargo:warning`, and cargo replays
    // a build script's warnings on every later build, so a quiet nested build keeps a no-op
    // `cargo build` silent. Compiler warnings and errors still come through.
    std::env::set_var("CARGO_TERM_QUIET", "true");
    aya_build::build_ebpf(
        [Package {
            name: EBPF_PACKAGE,
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
