//! Experiment configs: TOML files in `configs/` that inherit (`extends`), take `--set`
//! overrides, and report bad keys with the file and line they came from.

pub mod experiment;
pub mod loader;

pub use loader::{Invalid, Layered, Origin, Validate};
