//! `ovkd pipeline` and `ovkd sweep`: stages run in order in one run directory, skipped when
//! their inputs are unchanged, and sweeps of such runs collected into one table.

pub mod real_data;
pub mod runner;
pub mod seg_vis;
pub mod stages;
pub mod sweep;
