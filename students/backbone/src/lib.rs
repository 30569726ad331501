//! ovkd-backbone
pub mod ops;
