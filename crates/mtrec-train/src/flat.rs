//! Flat parameter storage: every trainable variable becomes a view into one contiguous buffer,
//! shared (BERT) parameters first, and within each part those with weight decay first, so the
//! optimizer sees four contiguous segments with one learning rate and decay each. Gradients are
//! gathered into buffers of the same layout, so an all-reduce, the surgery and the optimizer step
//! are a few large kernels instead of hundreds of small ones.
//!
//! The buffer is f32 whatever `train.precision` says: the variables are the master weights, and
//! the bf16 matmuls round them as they run (`mtrec_model::Precision`), so the gradients gathered
//! here are f32 too.
//!
//! Frozen variables (`model.trainable_layers`) stay outside the buffer; they are kept too, so a
//! checkpoint holds every variable of the model.
use mtrec_model::SHARED_PREFIX;
use tch::{Kind, Tensor, nn};

#[derive(Debug)]
pub struct FlatParams {
    /// Trainable variables in buffer order: `(name, variable)`, each a view into `values`.
    pub vars: Vec<(String, Tensor)>,
    /// Frozen variables: `(name, variable)`.
    frozen: Vec<(String, Tensor)>,
    /// `[P]` f32 values of the trainable variables.
    pub values: Tensor,
    /// Contiguous runs of variables with the same learning-rate group and weight decay.
    pub segments: Vec<Segment>,
    /// Total number of elements `P`.
    pub len: i64,
}

/// A contiguous range of the flat buffer whose variables share their optimizer settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Segment {
    pub start: i64,
    pub len: i64,
    /// Shared (BERT) parameters: the BERT learning rate.
    pub shared: bool,
    /// Weight decay applies (not on biases and LayerNorm).
    pub decay: bool,
}

fn decays(name: &str) -> bool {
    !(name.ends_with(".bias") || name.contains("LayerNorm"))
}

impl FlatParams {
    /// Moves every trainable variable of `vs` into one buffer (same values), shared ones first.
    pub fn new(vs: &nn::VarStore) -> Self {
        let (mut vars, frozen): (Vec<_>, Vec<_>) =
            vs.variables().into_iter().partition(|(_, t)| t.requires_grad());
        // Shared first, decayed first, then by name: a layout every rank derives identically.
        let key = |name: &String| (!name.starts_with(SHARED_PREFIX), !decays(name), name.clone());
        vars.sort_by_key(|(name, _)| key(name));
        let device = vs.device();
        let len: i64 = vars.iter().map(|(_, t)| t.numel() as i64).sum();
        let values = Tensor::zeros([len], (Kind::Float, device));
        let mut segments: Vec<Segment> = Vec::new();
        let mut offset = 0;
        tch::no_grad(|| {
            for (name, var) in vars.iter_mut() {
                let n = var.numel() as i64;
                let mut view = values.narrow(0, offset, n).view(var.size().as_slice());
                view.copy_(var);
                var.set_data(&view);
                let (shared, decay) = (name.starts_with(SHARED_PREFIX), decays(name));
                match segments.last_mut() {
                    Some(last) if (last.shared, last.decay) == (shared, decay) => last.len += n,
                    _ => segments.push(Segment { start: offset, len: n, shared, decay }),
                }
                offset += n;
            }
        });
        FlatParams { vars, frozen, values, segments, len }
    }

    /// Number of leading elements that belong to shared (BERT) parameters.
    pub fn shared_len(&self) -> i64 {
        self.segments.iter().filter(|s| s.shared).map(|s| s.len).sum()
    }

    /// The variables, for `Tensor::run_backward`.
    pub fn tensors(&self) -> Vec<Tensor> {
        self.vars.iter().map(|(_, t)| t.shallow_clone()).collect()
    }

    /// Concatenates per-variable gradients (undefined = not reached by the loss = zeros) into a
    /// flat `[P]` buffer in this layout.
    pub fn gather(&self, grads: &[Tensor]) -> Tensor {
        let parts: Vec<Tensor> = grads
            .iter()
            .zip(&self.vars)
            .map(|(g, (_, var))| if g.defined() { g.reshape([-1]) } else { var.zeros_like().reshape([-1]) })
            .collect();
        Tensor::cat(&parts, 0).to_kind(Kind::Float)
    }

    /// Every variable, trainable and frozen, by name (what checkpoints store).
    pub fn master_tensors(&self) -> Vec<(String, Tensor)> {
        self.vars.iter().chain(&self.frozen).map(|(name, var)| (name.clone(), var.shallow_clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{self, Checkpoint};

    /// A frozen variable (`model.trainable_layers`) stays out of the buffer but not out of the
    /// checkpoint: a fresh model loads every variable back.
    #[test]
    fn checkpoints_hold_frozen_variables_too() {
        let build = || {
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let root = vs.root() / "bert";
            let _ = root.var_copy("trained", &Tensor::from_slice(&[1.0f32, 2.0]));
            let frozen = root.var_copy("frozen", &Tensor::from_slice(&[3.0f32, 4.0, 5.0]));
            let _ = frozen.set_requires_grad(false);
            vs
        };
        let names = |tensors: &[(String, Tensor)]| {
            let mut names: Vec<String> = tensors.iter().map(|(n, _)| n.clone()).collect();
            names.sort();
            names
        };

        let vs = build();
        let flat = FlatParams::new(&vs);
        assert_eq!(flat.len, 2, "only the trainable variable is in the buffer");
        let saved = flat.master_tensors();
        assert_eq!(names(&saved), ["bert.frozen", "bert.trained"]);

        let run = tempfile::tempdir().unwrap();
        let state = checkpoint::TrainerState {
            step: 1,
            epoch: 0,
            sample_cursor: 1,
            seed: 0,
            config_digest: String::new(),
            world_size: 1,
            metrics: None,
            model_sha256: String::new(),
            optimizer_sha256: String::new(),
            max_steps: None,
            warmup_steps: None,
            vector_cache_rows: None,
            trainable_layers: None,
            early_stopping: None,
        };
        let dir = checkpoint::save(run.path(), &saved, &saved, state).unwrap();
        let fresh = nn::VarStore::new(tch::Device::Cpu);
        let _ = (fresh.root() / "bert").var("trained", &[2], nn::Init::Const(0.0));
        let _ = (fresh.root() / "bert").var("frozen", &[3], nn::Init::Const(0.0));
        checkpoint::load_model(&fresh, &Checkpoint::open(&dir).unwrap()).unwrap();
        assert_eq!(Vec::<f32>::try_from(&fresh.variables()["bert.frozen"]).unwrap(), [3.0, 4.0, 5.0]);
    }
}
