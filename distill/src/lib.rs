//! ovkd-distill: the distillation losses and the training loops that use them.

pub mod det;
pub mod train;
