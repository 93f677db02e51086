//! The MTRec model in tch: BERT loaded from Hugging Face checkpoints (safetensors only), the
//! category and NER heads, user encoders (additive attention, NRMS, LSTUR), attentive multi-field
//! news vectors (AMF) and the losses. Method: `../shared/paper/MTREC.md`.
//!
//! This crate computes; it does not read shards, schedule training or talk to other ranks.

pub mod amf;
pub mod bert;
pub mod buckets;
pub mod dropout;
pub mod loss;
pub mod model;
pub mod news;
pub mod precision;
pub mod user;

pub use bert::{BertConfig, BertModel};
pub use buckets::{AttentionLayout, BucketPolicy};
pub use dropout::Dropout;
pub use model::{Heads, ModelSpec, NewsInputs, NewsOutputs, NewsRecModel, SHARED_PREFIX};
pub use news::TitleBatch;
pub use precision::Precision;
pub use user::{LsturMode, UserEncoderKind};

use std::path::PathBuf;

/// A host tensor on `device`. On CUDA it is copied into page-locked (pinned) host memory and
/// from there to the device without blocking the host (on the stream, after the kernels before
/// it), so the input pipeline's thread goes on assembling the next batch while the copy runs.
///
/// The pinned memory comes from torch's caching host allocator (`at::_pin_memory`; the device
/// only picks that allocator): each block is page-locked once and reused by later batches, but
/// only after the copy that read it has finished, because torch records an event on the stream
/// for every block a non-blocking copy reads. A pinned buffer of our own, reused from batch to
/// batch, would need such an event too (the next batch could overwrite it while its copy is
/// still queued), and tch exposes no CUDA events. `Tensor::pin_memory(device)` is not used:
/// libtorch 2.11 deprecates its device argument and warns on every call.
pub fn upload(host: tch::Tensor, device: tch::Device) -> tch::Tensor {
    if device.is_cuda() {
        host.internal_pin_memory(device).to_device_(device, host.kind(), true, false)
    } else {
        host
    }
}

/// Several int64 host arrays on `device` with one [`upload`]: views of one tensor, in order.
pub fn upload_i64(parts: &[&[i64]], device: tch::Device) -> Vec<tch::Tensor> {
    let all = upload(tch::Tensor::from_slice(&parts.concat()), device);
    let mut start = 0;
    parts
        .iter()
        .map(|part| {
            let view = all.narrow(0, start, part.len() as i64);
            start += part.len() as i64;
            view
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The OS error is in the message once (not also chained as a `source`).
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: bad model config: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error(
        "{path}: refusing a pickle checkpoint (loading it can execute code). Convert it once with \
         `python -c \"import torch, safetensors.torch as st; st.save_file(torch.load('{path}', weights_only=True), 'model.safetensors')\"` \
         and put model.safetensors in the model folder"
    )]
    PickleCheckpoint { path: PathBuf },
    #[error("{dir}: no model.safetensors in the model folder")]
    MissingWeights { dir: PathBuf },
    #[error("{path}: cannot read checkpoint: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("{path}: checkpoint does not fit the config:\n  {}", problems.join("\n  "))]
    WeightsMismatch { path: PathBuf, problems: Vec<String> },
}
