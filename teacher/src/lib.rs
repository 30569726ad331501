//! ovkd-teacher
