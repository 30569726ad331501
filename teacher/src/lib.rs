//! ovkd-teacher: the frozen vision-language teacher.
//!
//! CLIP in Burn, numerically matching transformers' `CLIPModel` ([`clip`]); checkpoint loading
//! for transformers and OpenAI/OpenCLIP layouts ([`weights`]).

pub mod cache;
pub mod clip;
pub mod ema;
pub mod embed;
pub mod error;
pub mod io;
pub mod parity;
pub mod precision;
pub mod preprocess;
pub mod pretrain;
pub mod pretrain_batch;
pub mod service;
pub mod shapes;
pub mod tokenizer;
pub mod weights;
pub mod zero_shot;

pub use clip::{ClipConfig, ClipModel, ClipOutput};
pub use error::TeacherError;
pub use weights::{HostTensor, WeightMap, load_checkpoint};
