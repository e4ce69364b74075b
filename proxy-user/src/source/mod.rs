//! TODO(owner): module `source`.
