//! TODO(owner): module `wire`.
