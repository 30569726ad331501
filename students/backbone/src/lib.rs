//! ovkd-backbone
