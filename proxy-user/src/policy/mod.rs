//! Validated config model and the conversion from wire types.

pub mod model;

pub use model::*;
