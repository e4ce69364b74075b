//! Validated config model and the conversion from wire types.
//!
//! `model` is the contract the data path codes against; `convert` builds it from loaded documents with the
//! checks in `validate`, reporting typed errors (`error`); `report` renders the result for `keel validate`;
//! `header_template` parses the Envoy `%OPERATOR%` syntax of header-operation values.

pub mod convert;
pub mod error;
pub mod header_template;
pub mod model;
pub mod report;
pub mod validate;

pub use convert::{
    assemble, assemble_placed, build, convert, load_dir, load_paths, reassemble, Assembled,
    Converted, LoadReport, WarningPlaces,
};
pub use error::{ConfigError, ConfigWarning, Invalid};
pub use model::*;
pub use report::{run_validate, summary};
