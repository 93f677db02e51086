//! MTRec training: the step (one forward, per-task backward passes, per-task all-reduce, gradient
//! surgery on the shared BERT parameters, AdamW on flat buffers), the run loop with its input
//! pipeline, checkpoints, MIND metrics and evaluation. Method: `../shared/paper/MTREC.md`;
//! algorithm: `DESIGN.md` "One training step".
//!
//! This crate does not parse MIND files (mtrec-data does) and does not know how ranks talk
//! (mtrec-dist's `Collective` does).

pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod device_batch;
pub mod eval;
pub mod flat;
pub mod metrics;
pub mod optim;
pub mod setup;
pub mod step;
pub mod surgery;
pub mod train;

pub use config::Config;
pub use train::{Resume, TrainSummary, train};

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("config: {0}")]
    Config(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("{path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error(transparent)]
    Data(#[from] mtrec_data::DataError),
    #[error(transparent)]
    Model(#[from] mtrec_model::ModelError),
    #[error("distributed: {0}")]
    Dist(String),
    #[error(transparent)]
    Collective(#[from] mtrec_dist::DistError),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    /// SIGTERM/SIGUSR1 arrived: every rank stopped at a step boundary after the checkpoint.
    #[error("interrupted by a signal at step {step}; checkpoint {checkpoint}; continue with --resume auto")]
    Interrupted { step: u64, checkpoint: String },
}

/// Exit code of a worker stopped by SIGTERM/SIGUSR1 after writing its checkpoint (EX_TEMPFAIL:
/// "try again"; the SLURM script requeues on it).
pub const EXIT_INTERRUPTED: i32 = 75;
/// Exit code of a rank whose watchdog saw no progress for `dist.timeout_s`.
pub const EXIT_STALLED: i32 = 70;

impl TrainError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        TrainError::Io { path: path.to_path_buf(), source }
    }
}
