//! TODO(owner): module `ebpf`.
