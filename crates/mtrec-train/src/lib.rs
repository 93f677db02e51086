//! MTRec training: the step (one forward, per-task backward passes, per-task all-reduce, gradient
//! surgery on the shared BERT parameters, AdamW on flat buffers), the run loop with its input
//! pipeline, checkpoints, MIND metrics and evaluation. Method: `../shared/paper/MTREC.md`;
//! algorithm: `DESIGN.md` "One training step".
//!
//! This crate does not parse MIND files (mtrec-data does) and does not know how ranks talk
//! (mtrec-dist's `Collective` does).

pub mod agree;
pub mod bench;
pub mod beyond;
pub mod checkpoint;
pub mod config;
pub mod device_batch;
pub mod early_stop;
pub mod eval;
pub mod flat;
pub mod layer_cache;
mod logger;
pub mod metrics;
pub mod optim;
pub mod progress;
pub mod resume;
pub mod setup;
pub mod step;
pub mod stop;
pub mod surgery;
mod tensorboard;
pub mod train;
pub mod vector_cache;

pub use config::Config;
pub use train::{Resume, Start, Stopped, TrainSummary, train};

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("config: {0}")]
    Config(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The OS error is in the message once (not also chained as a `source`).
    #[error("{}: {error}", path.display())]
    Io { path: std::path::PathBuf, error: std::io::Error },
    #[error(transparent)]
    Data(#[from] mtrec_data::DataError),
    #[error(transparent)]
    Model(#[from] mtrec_model::ModelError),
    #[error("distributed: {0}")]
    Dist(String),
    /// A loss became NaN or infinite: the run diverged (not retryable: a restart from the last
    /// checkpoint would diverge again).
    #[error("training diverged: {0}")]
    Diverged(String),
    #[error(transparent)]
    Collective(#[from] mtrec_dist::DistError),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    /// The ranks agreed to stop on a signal during an evaluation (the run loop turns it into a
    /// checkpoint and a [`Stopped`] run; it is never a failure).
    #[error("stopped by {0}")]
    Stopped(stop::Signal),
}

/// Exit code of a worker stopped by SIGTERM/SIGUSR1 after writing its checkpoint (EX_TEMPFAIL:
/// "try again").
pub const EXIT_INTERRUPTED: i32 = 75;
pub use mtrec_dist::EXIT_STALLED;

impl TrainError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        TrainError::Io { path: path.to_path_buf(), error: source }
    }
}
