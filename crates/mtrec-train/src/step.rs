//! One training step (`DESIGN.md` "One training step"):
//! one forward; `g_main` from `L_main` and `g_aux` from `L_category + L_ner` (its shared
//! slice scaled by `lambda` in the MTRec surgery only) by separate backward passes; each all-reduced (averaged) as its own buffer so that surgery sees the
//! globally averaged gradient of each task; surgery on the shared (BERT) slice, identical on every
//! rank; clip; AdamW. Losses and statistics stay on the device.
use crate::TrainError;
use crate::config::{MtlConfig, NerLoss};
use crate::device_batch::DeviceBatch;
use crate::flat::FlatParams;
use crate::optim::AdamW;
use crate::surgery::{self, SurgeryMode};
use crate::vector_cache::VectorCache;
use mtrec_data::batch::Shares;
use mtrec_dist::Collective;
use mtrec_model::loss::{category_loss, click_scores, main_loss};
use mtrec_model::news::token_cross_entropy;
use mtrec_model::{Dropout, Heads, NewsRecModel};
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
    /// Global de-duplication's all-gather of the vectors and reduce-scatter of their gradients.
    pub exchange: Duration,
    pub backward_main: Duration,
    pub backward_aux: Duration,
    pub surgery: Duration,
    pub optimizer: Duration,
}

impl PhaseTimes {
    /// The phases' names, in step order: the order of [`PhaseTimes::seconds`].
    pub const NAMES: [&'static str; 6] =
        ["forward", "exchange", "backward_main", "backward_aux", "surgery", "optimizer"];

    /// Each phase in seconds, in the order of [`PhaseTimes::NAMES`].
    pub fn seconds(&self) -> [f64; 6] {
        [self.forward, self.exchange, self.backward_main, self.backward_aux, self.surgery, self.optimizer]
            .map(|d| d.as_secs_f64())
    }

    /// The inverse of [`PhaseTimes::seconds`] (negative values, which a sum over ranks cannot
    /// give, read as zero).
    pub fn from_seconds(s: [f64; 6]) -> PhaseTimes {
        let [forward, exchange, backward_main, backward_aux, surgery, optimizer] =
            s.map(|x| Duration::from_secs_f64(x.max(0.0)));
        PhaseTimes { forward, exchange, backward_main, backward_aux, surgery, optimizer }
    }
}

impl std::ops::Add for PhaseTimes {
    type Output = PhaseTimes;
    fn add(self, other: PhaseTimes) -> PhaseTimes {
        PhaseTimes {
            forward: self.forward + other.forward,
            exchange: self.exchange + other.exchange,
            backward_main: self.backward_main + other.backward_main,
            backward_aux: self.backward_aux + other.backward_aux,
            surgery: self.surgery + other.surgery,
            optimizer: self.optimizer + other.optimizer,
        }
    }
}

impl std::ops::Div<u32> for PhaseTimes {
    type Output = PhaseTimes;
    fn div(self, n: u32) -> PhaseTimes {
        PhaseTimes {
            forward: self.forward / n,
            exchange: self.exchange / n,
            backward_main: self.backward_main / n,
            backward_aux: self.backward_aux / n,
            surgery: self.surgery / n,
            optimizer: self.optimizer / n,
        }
    }
}

/// Waits until the device has run the work queued on it (nothing to wait for on the CPU, whose
/// ops have run when they return).
pub fn synchronize(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Times the phases of a step when enabled (it synchronises the device at every lap).
pub struct Clock {
    device: Device,
    enabled: bool,
    last: Instant,
}

impl Clock {
    pub fn new(device: Device, enabled: bool) -> Clock {
        Clock { device, enabled, last: Instant::now() }
    }

    /// Time since the last lap (zero when not enabled).
    pub fn lap(&mut self) -> Duration {
        if !self.enabled {
            return Duration::ZERO;
        }
        synchronize(self.device);
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

/// A forward pass: the losses, and with global de-duplication the exchange their backward
/// pass goes through.
#[derive(Debug)]
pub struct Forward {
    pub losses: Losses,
    pub exchange: Option<Exchange>,
}

/// Global de-duplication's news vectors: this rank encoded `own` (its share, with the graph
/// back to BERT); the main loss reads `table`, every rank's shares all-gathered, as a leaf.
#[derive(Debug)]
pub struct Exchange {
    /// `[n_own, d]` this rank's news vectors.
    own: Tensor,
    /// `[world * padded + 1, d]` every rank's vectors (`Shares`), then the zero padding row.
    table: Tensor,
    world: i64,
    padded: i64,
}

impl Exchange {
    /// All-gathers the ranks' vectors (each padded to `shares.padded` rows) into the table,
    /// followed by the vectors `reused` from a news-vector cache.
    fn gather(
        own: Tensor,
        shares: &Shares,
        reused: Option<Tensor>,
        collective: &dyn Collective,
    ) -> Result<Exchange, TrainError> {
        let (n, d) = own.size2().expect("vectors are [N, d]");
        let (world, padded) = (shares.counts.len() as i64, shares.padded as i64);
        let block = Tensor::zeros([padded, d], (Kind::Float, own.device()));
        block.narrow(0, 0, n).copy_(&own.detach());
        let gathered = collective.all_gather(&block)?.view([world * padded, d]);
        let zero = block.zeros_like().narrow(0, 0, 1);
        let parts: Vec<Tensor> = [Some(gathered), reused, Some(zero)].into_iter().flatten().collect();
        let table = Tensor::cat(&parts, 0).to_kind(own.kind()).set_requires_grad(true);
        Ok(Exchange { own, table, world, padded })
    }

    /// `[world * padded, d]` the encoded rows of the table (every rank's fresh vectors).
    fn encoded(&self) -> Tensor {
        self.table.narrow(0, 0, self.world * self.padded).detach()
    }

    /// This rank's part of the main task gradient: through its user encoder and scores (the
    /// table a leaf), plus, through its encoder, the vector gradients that every rank's main
    /// loss sent to the news this rank encoded (reduce-scattered: summed over the ranks, each
    /// rank receiving its share's rows). Averaged over the ranks afterwards like any gradient,
    /// it is the gradient of the global batch's main loss.
    fn main_gradient(
        &self,
        params: &FlatParams,
        loss: &Tensor,
        collective: &dyn Collective,
        keep_graph: bool,
        clock: &mut Clock,
        times: &mut PhaseTimes,
    ) -> Result<Tensor, TrainError> {
        let vars = params.tensors();
        let inputs: Vec<Tensor> = vars.iter().chain([&self.table]).map(Tensor::shallow_clone).collect();
        let mut grads = Tensor::f_run_backward(&[loss], &inputs, false, false)?;
        let d_table = grads.pop().expect("one gradient per input");
        let through_users = params.gather(&grads);
        let d = self.table.size()[1];
        let blocks = d_table.narrow(0, 0, self.world * self.padded).view([self.world, self.padded, d]);
        times.backward_main += clock.lap();
        let d_own = collective
            .reduce_scatter_sum(&blocks.to_kind(Kind::Float))?
            .narrow(0, 0, self.own.size()[0])
            .to_kind(self.own.kind());
        times.exchange += clock.lap();
        let through_encoder = flat_grad(params, &vars, &(&self.own * d_own).sum(Kind::Float), keep_graph)?;
        Ok(through_users + through_encoder)
    }
}

/// The category and NER losses exist when their heads do (`mtl.category`, `mtl.ner`). Each is
/// over the global batch: the main loss a mean over samples, the category loss over news, the
/// NER loss per `mtl.ner_loss` ([`NerLoss`]). With global de-duplication (`batch.shares`) the
/// vectors are all-gathered (the `exchange` phase), and with a news-vector cache the news the
/// batch reuses are read from it.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    model: &NewsRecModel,
    batch: &DeviceBatch,
    mtl: &MtlConfig,
    dropout: &Dropout,
    collective: &dyn Collective,
    vector_cache: Option<&VectorCache>,
    clock: &mut Clock,
    times: &mut PhaseTimes,
) -> Result<Forward, TrainError> {
    if batch.news.titles.len == 0 {
        return Err(TrainError::Config(format!(
            "global de-duplication left rank {} no news to encode (the global batch has fewer unique \
             news than ranks): use a larger train.batch_size or data.dedup = \"rank\"",
            collective.placement().rank
        )));
    }
    let news = model.encode_news(&batch.news, Heads::All, dropout);
    let d = news.vectors.size()[1];
    let (table, exchange) = match &batch.shares {
        None => {
            // Row N is the zero vector that padded history slots point at.
            let zero = news.vectors.zeros_like().narrow(0, 0, 1);
            (Tensor::cat(&[news.vectors.shallow_clone(), zero], 0), None)
        }
        Some(shares) => {
            times.forward += clock.lap();
            let reused = batch.reuse.as_ref().zip(vector_cache).map(|(reuse, cache)| cache.read(&reuse.read));
            let exchange = Exchange::gather(news.vectors.shallow_clone(), shares, reused, collective)?;
            times.exchange += clock.lap();
            (exchange.table.shallow_clone(), Some(exchange))
        }
    };
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
    times.forward += clock.lap();
    Ok(Forward { losses: Losses { main, category, ner }, exchange })
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
    vector_cache: Option<&mut VectorCache>,
) -> Result<(StepStats, PhaseTimes), TrainError> {
    let mut clock = Clock { device: params.values.device(), enabled: time_phases, last: Instant::now() };
    let mut times = PhaseTimes::default();
    let cache = vector_cache.as_deref();
    let (losses, g_main, aux_grads, fresh) =
        task_gradients(model, params, collective, batch, mtl, rng_seed, cache, &mut clock, &mut times)?;

    // surgery on the shared (BERT) slice; task-specific parameters keep their own gradient
    let surgery::Combined { update: mut g, stats: surgery_stats, aux_norm: grad_norm_aux } =
        surgery::combine(mtl.surgery, &g_main, &aux_grads, params.shared_len(), rng_seed);
    times.surgery = clock.lap();

    // 4. clip, AdamW (`g_main`'s norm first: with the main task only, `g` is `g_main` itself)
    let grad_norm_main = g_main.norm();
    let grad_norm = optimizer.clip(&mut g);
    optimizer.step(params, &g, lr_scale);
    // 5. the fresh vectors into the news-vector cache
    if let (Some(cache), Some(reuse), Some(fresh)) = (vector_cache, &batch.reuse, fresh) {
        let written = fresh.index_select(0, &reuse.written_rows);
        cache.write(reuse.step, &reuse.written_news_host, &reuse.written_news, &written);
        cache.hits += reuse.hits() as u64;
        cache.news += reuse.news as u64;
    }
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
/// each all-reduced as its own buffer, `g_main`'s while the auxiliary backward passes run. With
/// global de-duplication, also the freshly encoded vectors of every rank (the table's encoded
/// rows, for a news-vector cache).
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn task_gradients(
    model: &NewsRecModel,
    params: &FlatParams,
    collective: &dyn Collective,
    batch: &DeviceBatch,
    mtl: &MtlConfig,
    rng_seed: u64,
    vector_cache: Option<&VectorCache>,
    clock: &mut Clock,
    times: &mut PhaseTimes,
) -> Result<(Losses, Tensor, Vec<Tensor>, Option<Tensor>), TrainError> {
    let vars = params.tensors();

    // 1. forward
    let rank = collective.placement().rank as u64;
    let dropout = Dropout::training(params.values.device(), mtrec_data::batch::mix_seed(&[rng_seed, rank]));
    let Forward { losses, exchange } =
        forward(model, batch, mtl, &dropout, collective, vector_cache, clock, times)?;

    // 2. g_main; its all-reduce (average over ranks) runs while the auxiliary backward passes do
    let aux_losses: Vec<&Tensor> =
        [losses.category.as_ref(), losses.ner.as_ref()].into_iter().flatten().collect();
    let keep_graph = !aux_losses.is_empty();
    let mut g_main = match &exchange {
        None => flat_grad(params, &vars, &losses.main, keep_graph)?,
        Some(exchange) => {
            exchange.main_gradient(params, &losses.main, collective, keep_graph, clock, times)?
        }
    };
    times.backward_main += clock.lap();

    // 3. auxiliary gradients: one per task for PCGrad, which needs them apart, else one of
    //    L_category + L_ner; each all-reduced as its own buffer.
    let objectives: Vec<Tensor> = if mtl.surgery == SurgeryMode::Pcgrad {
        aux_losses.iter().map(|l| l.shallow_clone()).collect()
    } else {
        aux_losses.iter().map(|l| l.shallow_clone()).reduce(|a, b| a + b).into_iter().collect()
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
    // MTRec's `g_aux = lambda (g_category + g_ner)` (paper/MTREC.md, "Gradient surgery"): lambda
    // scales the merged gradient of the shared encoder, which surgery compares with `g_main`;
    // each head keeps its own task's gradient, unscaled. `none` (L_main + L_category + L_ner)
    // and PCGrad (all tasks alike) take weight 1.
    let lambda = mtl.aux_weight();
    if lambda != 1.0 {
        for g_task in aux_grads.iter_mut() {
            let _ = g_task.narrow(0, 0, params.shared_len()).g_mul_scalar_(lambda);
        }
    }
    times.backward_aux = clock.lap();

    Ok((losses, g_main, aux_grads, exchange.as_ref().map(Exchange::encoded)))
}
