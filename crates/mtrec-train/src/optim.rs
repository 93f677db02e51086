//! AdamW on the flat buffers, with its state held here (so it can be checkpointed), two
//! learning-rate groups (BERT and the rest), warmup + linear decay, and global-norm clipping.
//! Update as `torch.optim.AdamW` (Loshchilov & Hutter 2019, decoupled weight decay):
//! `p <- p (1 - lr wd)`, `m <- b1 m + (1 - b1) g`, `v <- b2 v + (1 - b2) g^2`,
//! `p <- p - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.
use crate::flat::FlatParams;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Optimizer settings (`[optim]` in the run config).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Peak learning rate of the BERT parameters.
    pub lr_bert: f64,
    /// Peak learning rate of heads, user encoder and AMF.
    pub lr_task: f64,
    /// Decoupled weight decay (not applied to biases and LayerNorm).
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Linear warmup over this many steps, then linear decay to 0 at `train.max_steps`.
    pub warmup_steps: u64,
    /// Clip the global gradient norm to this value (0 = no clipping).
    pub max_grad_norm: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr_bert: 2e-5,
            lr_task: 1e-4,
            weight_decay: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            warmup_steps: 0,
            max_grad_norm: 1.0,
        }
    }
}

/// Multiplier of the peak learning rate at `step` (1-based): linear warmup, then linear decay.
pub fn schedule(step: u64, warmup: u64, max_steps: u64) -> f64 {
    if warmup > 0 && step <= warmup {
        return step as f64 / warmup as f64;
    }
    let decay_steps = max_steps.saturating_sub(warmup).max(1);
    (max_steps.saturating_sub(step) as f64 / decay_steps as f64).clamp(0.0, 1.0)
}

#[derive(Debug)]
pub struct AdamW {
    pub config: OptimConfig,
    /// First moment `[P]`.
    pub exp_avg: Tensor,
    /// Second moment `[P]`.
    pub exp_avg_sq: Tensor,
    /// Steps taken so far.
    pub step: u64,
    /// `[P]` per-element peak learning rate (BERT vs. the rest).
    peak_lr: Tensor,
}

impl AdamW {
    pub fn new(params: &FlatParams, config: OptimConfig) -> Self {
        let peak_lr = params.values.full_like(config.lr_task);
        let _ = peak_lr.narrow(0, 0, params.shared_len).fill_(config.lr_bert);
        AdamW {
            exp_avg: params.values.zeros_like(),
            exp_avg_sq: params.values.zeros_like(),
            step: 0,
            peak_lr,
            config,
        }
    }

    /// Clips `grad` in place to the global norm limit and returns its norm before clipping
    /// (a device scalar: no host synchronisation).
    pub fn clip(&self, grad: &mut Tensor) -> Tensor {
        let norm = grad.norm();
        if self.config.max_grad_norm > 0.0 {
            let scale = (self.config.max_grad_norm / (&norm + 1e-6)).clamp_max(1.0);
            *grad *= scale;
        }
        norm
    }

    /// One AdamW step on `params.values` with the schedule multiplier `lr_scale`.
    pub fn step(&mut self, params: &mut FlatParams, grad: &Tensor, lr_scale: f64) {
        self.step += 1;
        let c = &self.config;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2 = 1.0 - c.beta2.powi(t);
        tch::no_grad(|| {
            let lr = &self.peak_lr * lr_scale;
            // Decoupled weight decay.
            params.values -= &params.values * &params.decay_mask * &lr * c.weight_decay;
            let _ = self.exp_avg.lerp_(grad, 1.0 - c.beta1);
            self.exp_avg_sq *= c.beta2;
            self.exp_avg_sq += grad * grad * (1.0 - c.beta2);
            let denom = self.exp_avg_sq.sqrt() / bias2.sqrt() + c.eps;
            params.values -= &self.exp_avg / denom * (lr / bias1);
        });
        params.refresh_compute_copy();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert_eq!(schedule(5, 10, 110), 0.5);
        assert_eq!(schedule(10, 10, 110), 1.0);
        assert_eq!(schedule(60, 10, 110), 0.5);
        assert_eq!(schedule(110, 10, 110), 0.0);
        assert_eq!(schedule(1, 0, 4), 0.75);
    }

    /// Against libtorch's own `torch::optim::AdamW` (through tch's `nn::adamw`).
    #[test]
    fn matches_libtorch_adamw() {
        use tch::nn::OptimizerConfig;
        let config = OptimConfig { lr_bert: 0.01, lr_task: 0.01, weight_decay: 0.1, ..Default::default() };
        let init = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.25]);
        let grads = [[0.1f32, -0.2, 0.3, 0.0], [1.0, 0.5, -0.5, 2.0], [-0.3, 0.0, 0.2, 0.1]];

        let ours_vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let _ = ours_vs.root().var_copy("w", &init);
        let mut flat = FlatParams::new(&ours_vs, tch::Kind::Float);
        let mut ours = AdamW::new(&flat, config.clone());

        let theirs_vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let w = theirs_vs.root().var_copy("w", &init);
        let mut theirs =
            tch::nn::adamw(config.beta1, config.beta2, config.weight_decay).build(&theirs_vs, 0.01).unwrap();

        for g in grads {
            let g = Tensor::from_slice(&g);
            ours.step(&mut flat, &g, 1.0);
            theirs.zero_grad();
            (&w * &g).sum(tch::Kind::Float).backward();
            theirs.step();
        }
        let diff = (&flat.values - &w).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "ours {:?} vs libtorch {:?}", flat.values, w);
        // The variable in the store is a view of the flat buffer: it moved too.
        assert!(ours_vs.variables()["w"].equal(&flat.values));
    }
}
