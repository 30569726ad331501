//! ovkd-distill: the distillation losses and the training loops that use them.

pub mod bundle;
pub mod det;
pub mod seg;
pub mod train;
