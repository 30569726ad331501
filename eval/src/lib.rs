//! ovkd-eval
