//! TODO(owner): module `l7`.
