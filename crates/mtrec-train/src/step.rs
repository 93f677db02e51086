//! One training step (`DESIGN.md` "One training step"):
//! one forward; `g_main` from `L_main` and `g_aux` from `L_category + L_ner` (scaled by `lambda`
//! in the MTRec surgery only) by separate backward passes; each all-reduced (averaged) as its own buffer so that surgery sees the
//! globally averaged gradient of each task; surgery on the shared (BERT) slice, identical on every
//! rank; clip; AdamW. Losses and statistics stay on the device.
use crate::TrainError;
use crate::config::{MtlConfig, NerLoss};
use crate::device_batch::DeviceBatch;
use crate::flat::FlatParams;
use crate::optim::AdamW;
use crate::surgery::{self, SurgeryMode};
use mtrec_dist::Collective;
use mtrec_model::loss::{category_loss, click_scores, main_loss};
use mtrec_model::news::token_cross_entropy;
use mtrec_model::{Dropout, NewsRecModel};
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

/// Times the phases of a step when enabled (it synchronises the device).
pub struct Clock {
    device: Device,
    enabled: bool,
    last: Instant,
}

impl Clock {
    pub fn new(device: Device, enabled: bool) -> Clock {
        Clock { device, enabled, last: Instant::now() }
    }

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
#[derive(Debug)]
pub struct Losses {
    pub main: Tensor,
    pub category: Option<Tensor>,
    pub ner: Option<Tensor>,
}

/// The category and NER losses exist when their heads do (`mtl.category`, `mtl.ner`). Each is
/// over the global batch: the main loss a mean over samples, the category loss over news, the
/// NER loss per `mtl.ner_loss` ([`NerLoss`]).
pub fn forward(model: &NewsRecModel, batch: &DeviceBatch, mtl: &MtlConfig, dropout: &Dropout) -> Losses {
    let news = model.encode_news(&batch.news, true, dropout);
    let d = news.vectors.size()[1];
    // Row N is the zero vector that padded history slots point at.
    let table = Tensor::cat(&[news.vectors.shallow_clone(), news.vectors.zeros_like().narrow(0, 0, 1)], 0);
    let (b, h) = batch.history.size2().expect("history is [B, H]");
    let history = table.index_select(0, &batch.history.view([-1])).view([b, h, d]);
    let user = model.encode_users(&history, &batch.history_mask, &batch.users, dropout);
    let candidates = table.index_select(0, &batch.candidates.view([-1])).view([b, -1, d]);
    let main = main_loss(&click_scores(&candidates, &user));
    let category = news.category_logits.map(|logits| {
        category_loss(&logits, &batch.news.category, &batch.news_weights, batch.news_occurrences)
    });
    let ner_denominator = match mtl.ner_loss {
        NerLoss::PerNews => batch.news_occurrences,
        NerLoss::PerToken => batch.labelled_token_occurrences,
    };
    let ner = news
        .ner_logits
        .map(|logits| token_cross_entropy(&logits, &batch.news.titles, &batch.news_weights, ner_denominator));
    Losses { main, category, ner }
}

/// Gradient of `loss` w.r.t. every trainable variable, in the flat layout.
pub fn flat_grad(
    params: &FlatParams,
    vars: &[Tensor],
    loss: &Tensor,
    keep_graph: bool,
) -> Result<Tensor, TrainError> {
    let grads = Tensor::f_run_backward(&[loss], vars, keep_graph, false)?;
    Ok(params.gather(&grads))
}

/// Runs one step and updates the parameters. `rng_seed` seeds PCGrad's task order (identical on
/// every rank) and, mixed with the rank, the dropout masks. With `time_phases`, the device is
/// synchronised between phases to time them.
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
    let (losses, g_main, aux_grads) =
        task_gradients(model, params, collective, batch, mtl, rng_seed, &mut clock, &mut times)?;

    // surgery on the shared (BERT) slice; task-specific parameters keep their own gradient
    let surgery::Combined { update: mut g, stats: surgery_stats, aux_norm: grad_norm_aux } =
        surgery::combine(mtl.surgery, &g_main, &aux_grads, params.shared_len(), rng_seed);
    times.surgery = clock.lap();

    // 4. clip, AdamW (`g_main`'s norm first: with the main task only, `g` is `g_main` itself)
    let grad_norm_main = g_main.norm();
    let grad_norm = optimizer.clip(&mut g);
    optimizer.step(params, &g, lr_scale);
    times.optimizer = clock.lap();

    let stats = StepStats {
        loss_main: losses.main.detach(),
        loss_category: losses.category.map(|l| l.detach()),
        loss_ner: losses.ner.map(|l| l.detach()),
        surgery: surgery_stats,
        grad_norm_main,
        grad_norm_aux,
        grad_norm,
    };
    Ok((stats, times))
}

/// The globally averaged task gradients of one batch (flat `[P]`): `g_main` of `L_main`, and the
/// auxiliary objectives' (one, `aux_weight (L_category + L_ner)`, or for PCGrad one per task);
/// each all-reduced as its own buffer, `g_main`'s while the auxiliary backward passes run.
#[allow(clippy::too_many_arguments)]
pub fn task_gradients(
    model: &NewsRecModel,
    params: &FlatParams,
    collective: &dyn Collective,
    batch: &DeviceBatch,
    mtl: &MtlConfig,
    rng_seed: u64,
    clock: &mut Clock,
    times: &mut PhaseTimes,
) -> Result<(Losses, Tensor, Vec<Tensor>), TrainError> {
    let vars = params.tensors();

    // 1. forward
    let rank = collective.placement().rank as u64;
    let dropout = Dropout::training(params.values.device(), mtrec_data::batch::mix_seed(&[rng_seed, rank]));
    let losses = forward(model, batch, mtl, &dropout);
    times.forward = clock.lap();

    // 2. g_main; its all-reduce (average over ranks) runs while the auxiliary backward passes do
    let aux_losses: Vec<&Tensor> =
        [losses.category.as_ref(), losses.ner.as_ref()].into_iter().flatten().collect();
    let mut g_main = flat_grad(params, &vars, &losses.main, !aux_losses.is_empty())?;
    times.backward_main = clock.lap();

    // 3. auxiliary gradients: one per task for PCGrad, which needs them apart, else one for
    //    lambda (L_category + L_ner); each all-reduced as its own buffer. `lambda` is MTRec's
    //    (`g_aux = lambda (g_category + g_ner)`); `none` sums L_MTRec = L_main + L_category + L_ner
    //    and PCGrad treats the three tasks alike, so both take them at weight 1.
    let lambda = mtl.aux_weight();
    let objectives: Vec<Tensor> = if mtl.surgery == SurgeryMode::Pcgrad {
        aux_losses.iter().map(|l| *l * lambda).collect()
    } else {
        aux_losses
            .iter()
            .map(|l| l.shallow_clone())
            .reduce(|a, b| a + b)
            .map(|sum| sum * lambda)
            .into_iter()
            .collect()
    };
    let mut aux_grads: Result<Vec<Tensor>, TrainError> = Ok(Vec::new());
    collective.all_reduce_mean_during(&mut g_main, &mut || {
        aux_grads = objectives
            .iter()
            .enumerate()
            .map(|(i, objective)| flat_grad(params, &vars, objective, i + 1 < objectives.len()))
            .collect();
    })?;
    let mut aux_grads = aux_grads?;
    for g_task in aux_grads.iter_mut() {
        collective.all_reduce_mean(g_task)?;
    }
    times.backward_aux = clock.lap();

    Ok((losses, g_main, aux_grads))
}

/// Reads a device scalar (a host synchronisation: only at log steps).
pub fn scalar(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).double_value(&[])
}
