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
    /// Decay rate of the first moment (Adam's `beta1`).
    pub beta1: f64,
    /// Decay rate of the second moment (Adam's `beta2`).
    pub beta2: f64,
    /// Added to the second moment's square root in the denominator.
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
}

impl AdamW {
    pub fn new(params: &FlatParams, config: OptimConfig) -> Self {
        AdamW { exp_avg: params.values.zeros_like(), exp_avg_sq: params.values.zeros_like(), step: 0, config }
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

    /// One AdamW step on `params.values` with the schedule multiplier `lr_scale`: per segment of
    /// the flat layout (one learning rate and decay each), a handful of in-place passes.
    pub fn step(&mut self, params: &mut FlatParams, grad: &Tensor, lr_scale: f64) {
        self.step += 1;
        let c = &self.config;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        tch::no_grad(|| {
            for segment in &params.segments {
                let part = |t: &Tensor| t.narrow(0, segment.start, segment.len);
                let (mut p, g) = (part(&params.values), part(grad));
                let (mut m, mut v) = (part(&self.exp_avg), part(&self.exp_avg_sq));
                let lr = lr_scale * if segment.shared { c.lr_bert } else { c.lr_task };
                if segment.decay {
                    // Decoupled weight decay.
                    let _ = p.g_mul_scalar_(1.0 - lr * c.weight_decay);
                }
                let _ = m.lerp_(&g, 1.0 - c.beta1);
                let _ = v.lerp_(&g.square(), 1.0 - c.beta2);
                if lr > 0.0 {
                    // p += m / denom with denom = -(bias1 / lr) (sqrt(v) / sqrt(1 - b2^t) + eps).
                    let mut denom = v.sqrt();
                    let _ = denom.g_div_scalar_(bias2_sqrt).g_add_scalar_(c.eps).g_mul_scalar_(-bias1 / lr);
                    let _ = p.addcdiv_(&m, &denom);
                }
            }
        });
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

    /// Against libtorch's own `torch::optim::AdamW` (through tch's `nn::adamw`), one reference
    /// optimizer per segment of the flat layout: BERT / task learning rate, with / without decay,
    /// under a schedule multiplier.
    #[test]
    fn matches_libtorch_adamw_in_every_segment() {
        use tch::nn::OptimizerConfig;
        let config = OptimConfig { lr_bert: 0.01, lr_task: 0.05, weight_decay: 0.1, ..Default::default() };
        // (name, learning rate, decays)
        let vars = [
            ("bert.layer.weight", config.lr_bert, true),
            ("bert.layer.LayerNorm.weight", config.lr_bert, false),
            ("head.weight", config.lr_task, true),
            ("head.bias", config.lr_task, false),
        ];
        let init = |i: usize| Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.25]) * (i as f64 + 1.0);
        let grads = [[0.1f32, -0.2, 0.3, 0.0], [1.0, 0.5, -0.5, 2.0], [-0.3, 0.0, 0.2, 0.1]];
        let lr_scale = 0.5;

        let ours_vs = tch::nn::VarStore::new(tch::Device::Cpu);
        for (i, (name, ..)) in vars.iter().enumerate() {
            let (path, leaf) = name.rsplit_once('.').unwrap();
            let _ = path.split('.').fold(ours_vs.root(), |p, part| p / part).var_copy(leaf, &init(i));
        }
        let mut flat = FlatParams::new(&ours_vs);
        assert_eq!(flat.segments.len(), 4, "{:?}", flat.segments);
        let mut ours = AdamW::new(&flat, config.clone());

        let mut references: Vec<_> = vars
            .iter()
            .enumerate()
            .map(|(i, &(_, lr, decays))| {
                let vs = tch::nn::VarStore::new(tch::Device::Cpu);
                let w = vs.root().var_copy("w", &init(i));
                let wd = if decays { config.weight_decay } else { 0.0 };
                let optimizer =
                    tch::nn::adamw(config.beta1, config.beta2, wd).build(&vs, lr * lr_scale).unwrap();
                (vs, w, optimizer)
            })
            .collect();

        for g in grads {
            let g = Tensor::from_slice(&g);
            // The flat gradient in the flat layout: each variable's slice gets `g`.
            let flat_grad = Tensor::cat(&vec![&g; vars.len()], 0);
            ours.step(&mut flat, &flat_grad, lr_scale);
            for (_, w, optimizer) in references.iter_mut() {
                optimizer.zero_grad();
                (&*w * &g).sum(tch::Kind::Float).backward();
                optimizer.step();
            }
        }
        let variables = ours_vs.variables();
        for ((name, ..), (_, w, _)) in vars.iter().zip(&references) {
            // The variable in the store is a view of the flat buffer: it moved with it.
            let diff = (&variables[*name] - w).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "{name}: ours {:?} vs libtorch {:?}", variables[*name], w);
        }
    }
}
