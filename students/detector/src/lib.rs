//! ovkd-detector
