//! The training machinery every student shares.

pub mod checkpoint;
pub mod metrics;
pub mod optimizer;
pub mod schedule;
pub mod trainer;

pub use checkpoint::{Checkpoints, LoopState};
pub use metrics::MetricsLog;
pub use optimizer::OptimizerConfig;
pub use schedule::{Decay, ScheduleConfig};
pub use trainer::{LoopOptions, StepOutput, TrainConfig, TrainError, TrainTask, Trained, train};
