//! TODO(owner): module `upstream`.
