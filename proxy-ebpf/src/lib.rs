//! Empty library target: it lets `proxy-user`'s build script name this crate as a
//! build-dependency, so cargo reruns that script (which builds the eBPF binary in `main.rs`)
//! whenever this crate or `proxy-common` changes.
#![no_std]
