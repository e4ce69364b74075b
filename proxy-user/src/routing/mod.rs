//! TODO(owner): module `routing`.
