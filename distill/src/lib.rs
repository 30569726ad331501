//! ovkd-distill
