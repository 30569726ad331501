//! ovkd-data
