//! TODO(owner): module `state`.
