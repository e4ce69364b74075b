//! TODO(owner): module `admin`.
