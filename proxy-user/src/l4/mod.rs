//! TODO(owner): module `l4`.
