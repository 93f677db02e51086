//! One training step (`DESIGN.md` "One training step"):
//! one forward; `g_main` from `L_main` and `g_aux` from `lambda (L_category + L_ner)` by separate
//! backward passes; each all-reduced (averaged) as its own buffer so that surgery sees the
//! globally averaged gradient of each task; surgery on the shared (BERT) slice, identical on every
//! rank; clip; AdamW. Losses and statistics stay on the device.
use crate::TrainError;
use crate::config::MtlConfig;
use crate::device_batch::DeviceBatch;
use crate::flat::FlatParams;
use crate::optim::AdamW;
use crate::surgery::{self, SurgeryMode};
use mtrec_dist::Collective;
use mtrec_model::NewsRecModel;
use mtrec_model::loss::{category_loss, click_scores, main_loss};
use mtrec_model::news::token_cross_entropy;
use rand::SeedableRng;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// Device scalars of one step, read on the host only at log steps.
#[derive(Debug)]
pub struct StepStats {
    pub loss_main: Tensor,
    pub loss_category: Option<Tensor>,
    pub loss_ner: Option<Tensor>,
    /// Cosine of the averaged `g_main` and `g_aux` on the shared parameters, and whether they
    /// conflicted (only when an auxiliary task is on).
    pub surgery: Option<surgery::SurgeryStats>,
    pub grad_norm_main: Tensor,
    pub grad_norm_aux: Option<Tensor>,
    /// Norm of the combined gradient before clipping.
    pub grad_norm: Tensor,
}

/// Wall time of each phase; measured only when asked (it synchronises the device).
#[derive(Debug, Default, Clone, Copy)]
pub struct PhaseTimes {
    pub forward: Duration,
    pub backward_main: Duration,
    pub backward_aux: Duration,
    pub surgery: Duration,
    pub optimizer: Duration,
}

struct Clock {
    device: Device,
    enabled: bool,
    last: Instant,
}

impl Clock {
    fn lap(&mut self) -> Duration {
        if !self.enabled {
            return Duration::ZERO;
        }
        if let Device::Cuda(i) = self.device {
            tch::Cuda::synchronize(i as i64);
        }
        let now = Instant::now();
        let elapsed = now - self.last;
        self.last = now;
        elapsed
    }
}

/// Forward pass: the three losses of the batch.
struct Losses {
    main: Tensor,
    category: Option<Tensor>,
    ner: Option<Tensor>,
}

fn forward(model: &NewsRecModel, batch: &DeviceBatch, mtl: &MtlConfig) -> Losses {
    let news = model.encode_news(&batch.news, true);
    let d = news.vectors.size()[1];
    // Row N is the zero vector that padded history slots point at.
    let table = Tensor::cat(&[news.vectors.shallow_clone(), news.vectors.zeros_like().narrow(0, 0, 1)], 0);
    let (b, h) = batch.history.size2().expect("history is [B, H]");
    let history = table.index_select(0, &batch.history.view([-1])).view([b, h, d]);
    let user = model.encode_users(&history, &batch.history_mask, &batch.users);
    let candidates = table.index_select(0, &batch.candidates.view([-1])).view([b, -1, d]);
    let main = main_loss(&click_scores(&candidates, &user));
    let category = news.category_logits.filter(|_| mtl.category).map(|logits| {
        category_loss(&logits, &batch.news.category, &batch.news_weights, batch.category_denominator)
    });
    let ner = news.ner_logits.filter(|_| mtl.ner).map(|logits| {
        token_cross_entropy(&logits, &batch.news.titles, &batch.news_weights, batch.ner_denominator)
    });
    Losses { main, category, ner }
}

/// Gradient of `loss` w.r.t. every trainable variable, in the flat layout.
fn flat_grad(
    params: &FlatParams,
    vars: &[Tensor],
    loss: &Tensor,
    keep_graph: bool,
) -> Result<Tensor, TrainError> {
    let grads = Tensor::f_run_backward(&[loss], vars, keep_graph, false)?;
    Ok(params.gather(&grads))
}

/// Runs one step and updates the parameters. `rng_seed` seeds PCGrad's task order (identical on
/// every rank). With `time_phases`, the device is synchronised between phases to time them.
#[allow(clippy::too_many_arguments)]
pub fn train_step(
    model: &NewsRecModel,
    params: &mut FlatParams,
    optimizer: &mut AdamW,
    collective: &dyn Collective,
    batch: &DeviceBatch,
    mtl: &MtlConfig,
    lr_scale: f64,
    rng_seed: u64,
    time_phases: bool,
) -> Result<(StepStats, PhaseTimes), TrainError> {
    let mut clock = Clock { device: params.values.device(), enabled: time_phases, last: Instant::now() };
    let mut times = PhaseTimes::default();
    let vars = params.tensors();

    // 1. forward
    let losses = forward(model, batch, mtl);
    times.forward = clock.lap();

    // 2. g_main, averaged over ranks
    let has_aux = losses.category.is_some() || losses.ner.is_some();
    let mut g_main = flat_grad(params, &vars, &losses.main, has_aux)?;
    collective.all_reduce_mean(&mut g_main)?;
    times.backward_main = clock.lap();

    // 3. auxiliary gradients (lambda-scaled), each averaged over ranks; then surgery on the shared slice
    let s = params.shared_len;
    let lambda = mtl.lambda;
    let aux_losses: Vec<&Tensor> =
        [losses.category.as_ref(), losses.ner.as_ref()].into_iter().flatten().collect();
    let (mut g, surgery_stats, grad_norm_aux) = if aux_losses.is_empty() {
        (g_main.shallow_clone(), None, None)
    } else if mtl.surgery == SurgeryMode::Pcgrad {
        // PCGrad needs each task's gradient on its own.
        let mut tasks = vec![g_main.shallow_clone()];
        for (i, loss) in aux_losses.iter().enumerate() {
            let mut g_task = flat_grad(params, &vars, &(*loss * lambda), i + 1 < aux_losses.len())?;
            collective.all_reduce_mean(&mut g_task)?;
            tasks.push(g_task);
        }
        times.backward_aux = clock.lap();
        let g_aux: Tensor = tasks[1..].iter().fold(tasks[0].zeros_like(), |acc, t| acc + t);
        let stats = surgery::stats(&g_main.narrow(0, 0, s), &g_aux.narrow(0, 0, s));
        let shared: Vec<Tensor> = tasks.iter().map(|t| t.narrow(0, 0, s)).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(rng_seed);
        let combined_shared = surgery::pcgrad(&shared, &mut rng);
        let g = &g_main + &g_aux;
        g.narrow(0, 0, s).copy_(&combined_shared);
        let norm = g_aux.norm();
        (g, Some(stats), Some(norm))
    } else {
        let aux_total =
            aux_losses.iter().skip(1).fold(aux_losses[0].shallow_clone(), |acc, l| acc + *l) * lambda;
        let mut g_aux = flat_grad(params, &vars, &aux_total, false)?;
        collective.all_reduce_mean(&mut g_aux)?;
        times.backward_aux = clock.lap();
        let (g_main_shared, g_aux_shared) = (g_main.narrow(0, 0, s), g_aux.narrow(0, 0, s));
        let g = &g_main + &g_aux;
        let stats = match mtl.surgery {
            SurgeryMode::Mtrec => {
                let (combined, stats) = surgery::mtrec(&g_main_shared, &g_aux_shared);
                g.narrow(0, 0, s).copy_(&combined);
                stats
            }
            _ => surgery::stats(&g_main_shared, &g_aux_shared),
        };
        let norm = g_aux.norm();
        (g, Some(stats), Some(norm))
    };
    times.surgery = clock.lap();

    // 4. clip, AdamW
    let grad_norm = optimizer.clip(&mut g);
    optimizer.step(params, &g, lr_scale);
    times.optimizer = clock.lap();

    let stats = StepStats {
        loss_main: losses.main.detach(),
        loss_category: losses.category.map(|l| l.detach()),
        loss_ner: losses.ner.map(|l| l.detach()),
        surgery: surgery_stats,
        grad_norm_main: g_main.norm(),
        grad_norm_aux,
        grad_norm,
    };
    Ok((stats, times))
}

/// Reads a device scalar (a host synchronisation: only at log steps).
pub fn scalar(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).double_value(&[])
}
