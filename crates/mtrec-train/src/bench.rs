//! `mtrec-worker bench`: times training steps (forward, backward passes, surgery, AdamW) on one
//! of two workloads, and reports samples/s, model FLOPs ([`step_flops`]) and the time of each
//! phase. On CUDA the step time comes from steps synchronised once, at their end, and the phase
//! times from a second pass of as many steps that synchronises between phases (which costs the
//! GPU its queue of launched work); on the CPU, whose ops have run when they return, one pass
//! gives both.
//! - `reference` (`DESIGN.md`, "Performance design"): `train.batch_size` samples per step (8 in
//!   DESIGN.md and `configs/minilm.toml`, 64 in `configs/bench-bert-base.toml`), history 50,
//!   1 + 4 candidates, so 55 distinct titles per sample of 12-30 real tokens (uniform) with random
//!   token ids, in one process; the configured multi-task step against the main-task-only step.
//! - `mind`: real batches of the configured shards (made MIND-like by `mtrec-prep synth
//!   --profile mind`: news repeat as in MIND), drawn as in training (negatives, history cut,
//!   de-duplication) at chosen batches per rank, with per-rank and global de-duplication, on
//!   every rank of the job. Consecutive steps take consecutive batches of the epoch's order.
use crate::TrainError;
use crate::config::{Config, MtlConfig};
use crate::device_batch::{Batches, DeviceBatch};
use crate::flat::FlatParams;
use crate::layer_cache::LayerCache;
use crate::optim::AdamW;
use crate::setup::{self, LabelCounts, Loaded};
use crate::step::{PhaseTimes, synchronize, train_step};
use crate::vector_cache::{self, CacheSchedule, VectorCache};
use mtrec_data::batch::{DedupCounts, GlobalCounts, HostBatch, Sampler};
use mtrec_data::read::{NewsTable, TrainImpression};
use mtrec_dist::{Collective, Local};
use mtrec_model::{BertConfig, Precision};
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

/// Reference workload sizes (`DESIGN.md`); the samples per step are `train.batch_size`, 8 in
/// `configs/minilm.toml` as in DESIGN.md.
pub const SAMPLES: usize = 8;
pub const HISTORY: usize = 50;
pub const NEGATIVES: usize = 4;
/// MIND-small's label counts.
pub const LABELS: LabelCounts =
    LabelCounts { categories: 17, subcategories: 264, ner_tags: 3, num_users: 1000 };

/// The peak MFU is measured against: an NVIDIA H100 or H200 SXM's dense bf16 tensor-core
/// throughput (NVIDIA's data sheets: 989.4 TFLOP/s without sparsity for both).
pub const PEAK_BF16_TFLOPS: f64 = 989.4;
/// The GPUs whose peak [`PEAK_BF16_TFLOPS`] is.
pub const PEAK_NAME: &str = "H100/H200 SXM bf16 dense";

/// Model FLOP utilisation of `flops_per_s` against [`PEAK_BF16_TFLOPS`]: only for bf16 on CUDA
/// (the CPU and f32 have no such named peak).
pub fn mfu(flops_per_s: f64, precision: Precision, cuda: bool) -> Option<f64> {
    (cuda && precision == Precision::Bf16).then(|| flops_per_s / (PEAK_BF16_TFLOPS * 1e12))
}

/// What [`step_flops`] counts with: a step's titles and the BERT layers its passes run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FlopShape {
    /// Titles `N`, their tokens `T`, and the sum over the titles of their length squared.
    pub titles: f64,
    pub tokens: f64,
    pub squared_lengths: f64,
    /// Layers the forward pass runs (those above a frozen-layer cache) and layers the backward
    /// passes run through (the trainable ones).
    pub forward_layers: f64,
    pub backward_layers: f64,
}

/// Model FLOPs of one training step, in PaLM's accounting (Chowdhery et al. 2022, Appendix B):
/// a matmul costs 2 FLOPs per weight and row in a forward pass, attention `4 L d` per token and
/// layer (scores and values over a title of `L` tokens: `4 L^2 d` per title), a backward pass
/// twice its forward. Counted for the rows each pass computes ([`mtrec_model::BertModel::forward`]):
/// every layer projects query, key and value and attends for every token, but the last layer's
/// output projection and feed-forward run only for the rows a loss reads (`[CLS]` for the main
/// and category losses, the other tokens for NER), and a backward pass runs only over the rows
/// its loss reads and only through the trainable layers. One forward pass, the main task's
/// backward pass, then the auxiliary one (one per task for PCGrad). Heads, user encoder and AMF
/// are left out.
pub fn step_flops(bert: &BertConfig, mtl: &MtlConfig, shape: FlopShape) -> f64 {
    let (d, ff) = (bert.hidden_size as f64, bert.intermediate_size as f64);
    let FlopShape { titles, tokens, squared_lengths, forward_layers, backward_layers } = shape;
    // Per layer for every token, then per row the last layer computes.
    let attend = 6.0 * d * d * tokens + 4.0 * d * squared_lengths;
    let per_row = 2.0 * d * d + 4.0 * d * ff;
    let pass = |layers: f64, rows: f64| {
        if layers < 1.0 { 0.0 } else { layers * attend + (layers - 1.0) * tokens * per_row + rows * per_row }
    };
    let (cls, others) = (titles, tokens - titles);
    let ner = if mtl.ner { others } else { 0.0 };
    let category = if mtl.category { cls } else { 0.0 };
    let backward = |rows: f64| if rows > 0.0 { 2.0 * pass(backward_layers, rows) } else { 0.0 };
    let aux = if mtl.surgery == crate::surgery::SurgeryMode::Pcgrad {
        backward(category) + backward(ner)
    } else {
        backward(category + ner)
    };
    pass(forward_layers, cls + ner) + backward(cls) + aux
}

/// The measured steps of one configuration on this rank.
#[derive(Debug, Clone)]
pub struct BenchResult {
    /// Each measured step's wall time, in order (synchronised once, at its end).
    pub steps: Vec<Duration>,
    /// Mean time of each phase (on CUDA from the phase pass).
    pub phases: PhaseTimes,
    /// Samples per step on this rank.
    pub samples: usize,
    /// Per step, means: title slots of this rank's samples (history + candidates), titles it
    /// encoded (after de-duplication), and their tokens.
    pub slots: f64,
    pub titles: f64,
    pub tokens: f64,
    /// Per step, mean: model FLOPs ([`step_flops`]).
    pub flops: f64,
    /// With a news-vector cache: the share of the global batches' news read from it.
    pub cache_hit_rate: Option<f64>,
    /// On CUDA: the most GPU memory in use after a step, as the driver counts it
    /// ([`mtrec_dist::gpu::GpuMemory::used`]), when it could be read.
    pub gpu_memory_peak: Option<usize>,
}

impl BenchResult {
    pub fn mean(&self) -> Duration {
        self.steps.iter().sum::<Duration>() / self.steps.len().max(1) as u32
    }

    pub fn median(&self) -> Duration {
        let mut sorted = self.steps.clone();
        sorted.sort();
        match sorted.len() {
            0 => Duration::ZERO,
            len if len % 2 == 1 => sorted[len / 2],
            len => (sorted[len / 2 - 1] + sorted[len / 2]) / 2,
        }
    }

    /// The fastest and the slowest step (a shared machine's noise shows here).
    pub fn range(&self) -> (Duration, Duration) {
        let fastest = self.steps.iter().copied().min().unwrap_or_default();
        (fastest, self.steps.iter().copied().max().unwrap_or_default())
    }

    pub fn samples_per_second(&self) -> f64 {
        self.samples as f64 / self.mean().as_secs_f64().max(1e-9)
    }

    /// Model FLOP/s of the mean step.
    pub fn flops_per_second(&self) -> f64 {
        self.flops / self.mean().as_secs_f64().max(1e-9)
    }
}

/// `samples x 55` random titles (12-30 tokens, `[CLS]`/`[SEP]` included; 440 at DESIGN.md's
/// [`SAMPLES`]) and the batch of `samples` samples that uses each once.
pub fn reference_batch(samples: usize, vocab: i64, seed: u64) -> (NewsTable, HostBatch) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let titles = samples * (HISTORY + 1 + NEGATIVES);
    let mut table = NewsTable::with_padding();
    for i in 0..titles {
        let len = rng.random_range(12..=30usize);
        let mut ids: Vec<i32> = (0..len).map(|_| rng.random_range(1000..vocab as i32)).collect();
        ids[0] = 101;
        ids[len - 1] = 102;
        let mut tags: Vec<i8> = (0..len).map(|_| rng.random_range(0..3)).collect();
        tags[0] = -1;
        tags[len - 1] = -1;
        table.news_id.push(format!("B{i}"));
        table.category.push(rng.random_range(0..LABELS.categories));
        table.subcategory.push(rng.random_range(0..LABELS.subcategories));
        table.input_ids.push(ids);
        table.ner_tags.push(tags);
        table.entities.push(Vec::new());
    }
    let per_sample = HISTORY + 1 + NEGATIVES;
    let news: Vec<i32> = (1..=titles as i32).collect();
    let mut history = Vec::new();
    let mut candidates = Vec::new();
    for s in 0..samples {
        let base = (s * per_sample) as i64;
        history.extend(base..base + HISTORY as i64);
        candidates.extend(base + HISTORY as i64..base + per_sample as i64);
    }
    let batch = HostBatch {
        news,
        history,
        history_mask: vec![true; samples * HISTORY],
        history_len: HISTORY,
        candidates,
        users: (1..=samples as i64).collect(),
        size: samples,
        occurrences: vec![1; titles],
        shares: None,
    };
    (table, batch)
}

/// Where a runner's batches come from.
enum Source<'a> {
    /// The reference batch, every step.
    Reference(Box<DeviceBatch>),
    /// Consecutive batches of epoch 0's order.
    Mind { batches: Batches<'a>, order: Vec<u32>, steps_per_epoch: u64 },
}

/// One configuration's model, optimizer and batches, and the figures of its measured steps.
struct Runner<'a> {
    config: Config,
    collective: &'a dyn Collective,
    model: mtrec_model::NewsRecModel,
    params: FlatParams,
    optimizer: AdamW,
    source: Source<'a>,
    /// The frozen-layer cache of a `mind` runner, when its config has one.
    layer_cache: Option<LayerCache>,
    /// The news-vector cache of a `mind` runner with `data.vector_cache`, and its schedule.
    vector_cache: Option<(VectorCache, CacheSchedule)>,
    samples: usize,
    steps: Vec<Duration>,
    total: PhaseTimes,
    /// Steps whose phases `total` sums.
    timed: u32,
    counts: StepCounts,
    gpu_memory_peak: Option<usize>,
}

/// Titles a rank's measured steps read and encoded, summed over the steps.
#[derive(Debug, Default, Clone, Copy)]
struct StepCounts {
    slots: usize,
    titles: usize,
    tokens: usize,
    flops: f64,
    cache_hits: usize,
    cache_news: usize,
}

/// What a step of [`take_turns`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Not measured.
    Warmup,
    /// Its wall time and counts (and on the CPU its phases).
    Steps,
    /// Its phases only (CUDA).
    Phases,
}

impl<'a> Runner<'a> {
    fn new(
        config: &Config,
        labels: LabelCounts,
        entity_table: Option<tch::Tensor>,
        source: impl FnOnce(&mtrec_model::NewsRecModel, tch::Device) -> Source<'a>,
        collective: &'a dyn Collective,
    ) -> Result<Self, TrainError> {
        let model_dir = setup::model_dir(config)?;
        let device = setup::device(config.train.device, collective.placement().local_rank)?;
        let (vs, model) = setup::build_model(config, labels, &model_dir, entity_table, device)?;
        let params = FlatParams::new(&vs);
        let optimizer = AdamW::new(&params, config.optim.clone());
        let source = source(&model, device);
        let layer_cache = match &source {
            Source::Mind { batches, .. } => {
                LayerCache::for_run(config, &model, batches.news(), device, collective, &|| Ok(()))?
            }
            Source::Reference(_) => None,
        };
        let vector_cache = match &source {
            Source::Mind { batches, .. } => {
                vector_cache::for_run(config, &model, batches.news(), device, None)?
            }
            Source::Reference(_) => None,
        };
        let samples = config.train.batch_size / collective.placement().world_size;
        Ok(Runner {
            config: config.clone(),
            collective,
            model,
            params,
            optimizer,
            source,
            layer_cache,
            vector_cache,
            samples,
            steps: Vec::new(),
            total: PhaseTimes::default(),
            timed: 0,
            counts: StepCounts::default(),
            gpu_memory_peak: None,
        })
    }

    fn device(&self) -> tch::Device {
        self.params.values.device()
    }

    fn step(&mut self, index: usize, pass: Pass) -> Result<(), TrainError> {
        // In training the input pipeline builds batches ahead; here they are built untimed.
        let fresh;
        let batch = match &self.source {
            Source::Reference(batch) => batch,
            Source::Mind { batches, order, steps_per_epoch } => {
                let device = self.params.values.device();
                let step = index as u64 % steps_per_epoch;
                let first = cache_first_step(&self.config);
                let schedule = self.vector_cache.as_mut().map(|(_, s)| (s, first + index as u64));
                fresh = batches.device(0, order, step, device, self.layer_cache.as_ref(), schedule);
                &fresh
            }
        };
        let before = self.vector_cache.as_ref().map_or((0, 0), |(c, _)| (c.hits, c.news));
        let cuda = self.device().is_cuda();
        let time_phases = pass == Pass::Phases || (pass == Pass::Steps && !cuda);
        let started = Instant::now();
        let (_, times) = train_step(
            &self.model,
            &mut self.params,
            &mut self.optimizer,
            self.collective,
            batch,
            &self.config.mtl,
            1.0,
            index as u64,
            time_phases,
            self.vector_cache.as_mut().map(|(cache, _)| cache),
        )?;
        synchronize(self.device());
        let elapsed = started.elapsed();
        if let tch::Device::Cuda(gpu) = self.device()
            && pass != Pass::Warmup
        {
            let used = mtrec_dist::gpu::memory(gpu).ok().map(|m| m.used());
            self.gpu_memory_peak = self.gpu_memory_peak.max(used);
        }
        if time_phases {
            self.total = self.total + times;
            self.timed += 1;
        }
        if pass == Pass::Steps {
            if let Some((cache, _)) = &self.vector_cache {
                self.counts.cache_hits += (cache.hits - before.0) as usize;
                self.counts.cache_news += (cache.news - before.1) as usize;
            }
            self.steps.push(elapsed);
            let real_history = batch.history_mask.sum(tch::Kind::Int64).int64_value(&[]) as usize;
            self.counts.slots += real_history + batch.candidates.numel();
            let titles = &batch.news.titles;
            self.counts.titles += titles.len;
            self.counts.tokens += titles.tokens;
            self.counts.flops +=
                step_flops(&self.model.bert.config, &self.config.mtl, self.flop_shape(titles));
        }
        Ok(())
    }

    /// [`FlopShape`] of a step over `titles` (an empty title counts as its one token).
    fn flop_shape(&self, titles: &mtrec_model::TitleBatch) -> FlopShape {
        let groups = &titles.layout.groups;
        let layers = self.model.bert.config.num_hidden_layers as f64;
        let cached = self.layer_cache.as_ref().map_or(0, |cache| cache.first_layer) as f64;
        FlopShape {
            titles: titles.len as f64,
            tokens: groups.iter().map(|&(n, len)| n * len).sum::<i64>() as f64,
            squared_lengths: groups.iter().map(|&(n, len)| n * len * len).sum::<i64>() as f64,
            forward_layers: layers - cached,
            backward_layers: layers - self.model.frozen_layers().unwrap_or(0) as f64,
        }
    }

    fn result(&self) -> BenchResult {
        let n = self.steps.len().max(1);
        let per_step = |count: usize| count as f64 / n as f64;
        BenchResult {
            steps: self.steps.clone(),
            phases: self.total / self.timed.max(1),
            samples: self.samples,
            slots: per_step(self.counts.slots),
            titles: per_step(self.counts.titles),
            tokens: per_step(self.counts.tokens),
            flops: self.counts.flops / n as f64,
            gpu_memory_peak: self.gpu_memory_peak,
            cache_hit_rate: self
                .vector_cache
                .as_ref()
                .map(|_| self.counts.cache_hits as f64 / self.counts.cache_news.max(1) as f64),
        }
    }
}

/// The step number a `mind` runner's first step has for the news-vector cache: `5 / beta`, where
/// `p(step)` is within 1% of `p_max`, so the bench measures the cache after its warm-up.
fn cache_first_step(config: &Config) -> u64 {
    if config.data.cache_beta > 0.0 { (5.0 / config.data.cache_beta).ceil() as u64 } else { 1 }
}

/// Times `steps` steps of each runner after `warmup` unmeasured ones, then on CUDA `steps` more
/// for the phase times (module documentation). The configurations take turns step by step, so
/// a drift in the machine's speed (a shared 2-core VM drifts by 10-30% over a minute) affects
/// each alike and their ratio stays fair.
fn take_turns(
    mut runners: Vec<Runner<'_>>,
    warmup: usize,
    steps: usize,
) -> Result<Vec<BenchResult>, TrainError> {
    let phase_steps = if runners.iter().any(|r| r.device().is_cuda()) { steps } else { 0 };
    for i in 0..warmup + steps + phase_steps {
        let pass = match i {
            i if i < warmup => Pass::Warmup,
            i if i < warmup + steps => Pass::Steps,
            _ => Pass::Phases,
        };
        for runner in runners.iter_mut() {
            runner.step(i, pass)?;
        }
    }
    Ok(runners.iter().map(Runner::result).collect())
}

/// The reference workload in one process, for each configuration (`train.batch_size` samples
/// per step).
pub fn run_reference(
    configs: &[Config],
    warmup: usize,
    steps: usize,
) -> Result<Vec<BenchResult>, TrainError> {
    let runners = configs
        .iter()
        .map(|config| {
            if config.model.amf {
                return Err(TrainError::Config(
                    "bench: the reference workload has no entities, so AMF would not run; use --set \
                     model.amf=false"
                        .into(),
                ));
            }
            let source = |model: &mtrec_model::NewsRecModel, device| {
                let samples = config.train.batch_size;
                let (table, host) = reference_batch(samples, model.bert.config.vocab_size, config.train.seed);
                let labelled: u64 = table.ner_tags.iter().flatten().filter(|&&t| t >= 0).count() as u64;
                let counts = GlobalCounts { news: host.news.len() as u64, labelled_tokens: labelled };
                Source::Reference(Box::new(DeviceBatch::new(&host, &table, counts, 1, device, None)))
            };
            Runner::new(config, LABELS, None, source, &Local)
        })
        .collect::<Result<_, _>>()?;
    take_turns(runners, warmup, steps)
}

/// The shards the `mind` workload draws from, read once for every variant.
pub struct MindData {
    pub loaded: Loaded,
    pub impressions: Vec<TrainImpression>,
}

impl MindData {
    pub fn load(config: &Config, collective: &dyn Collective) -> Result<MindData, TrainError> {
        let loaded = setup::load(config, collective)?;
        setup::check_ner_labels(config, &loaded.manifest)?;
        let impressions = mtrec_data::read::read_train(&config.data.shards, &loaded.manifest)?;
        Ok(MindData { loaded, impressions })
    }

    /// The sampler training would use with `config`.
    pub fn sampler(&self, config: &Config) -> Sampler<'_> {
        setup::sampler(config, &self.impressions)
    }
}

/// The `mind` workload on this rank, for each configuration (each its `train.batch_size` and
/// `data.dedup`; the same shards).
pub fn run_mind(
    configs: &[Config],
    data: &MindData,
    collective: &dyn Collective,
    warmup: usize,
    steps: usize,
) -> Result<Vec<BenchResult>, TrainError> {
    let runners = configs
        .iter()
        .map(|config| {
            let sampler = data.sampler(config);
            let steps_per_epoch = setup::steps_per_epoch(config, &sampler)?;
            let order = sampler.epoch_order(0);
            let batches =
                Batches::new(sampler, &data.loaded.news, &config.data, config.train.batch_size, collective);
            let entity_table = setup::entity_table(config, &config.data.shards)?;
            let labels = LabelCounts::of(&data.loaded.manifest);
            let source = |_: &mtrec_model::NewsRecModel, _| Source::Mind { batches, order, steps_per_epoch };
            Runner::new(config, labels, entity_table, source, collective)
        })
        .collect::<Result<_, _>>()?;
    take_turns(runners, warmup, steps)
}

/// Per-rank and global de-duplication of global batches of `batch_per_rank x world` samples,
/// counted on the host over the first `steps` batches of epoch 0 (fewer when the epoch has
/// fewer), summed; with the number of batches counted. No model runs, so any world size can be
/// measured on one machine.
pub fn dedup_counts(
    sampler: &Sampler<'_>,
    batch_per_rank: usize,
    world: usize,
    steps: u64,
) -> (u64, DedupCounts) {
    let batch_size = batch_per_rank * world;
    let order = sampler.epoch_order(0);
    let steps = steps.min(sampler.steps_per_epoch(batch_size));
    let sum = (0..steps).map(|step| sampler.dedup_counts(0, &order, step, batch_size, world)).fold(
        DedupCounts::default(),
        |sum, c| DedupCounts {
            slots: sum.slots + c.slots,
            per_rank: sum.per_rank + c.per_rank,
            global: sum.global + c.global,
        },
    );
    (steps, sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_median_and_range_of_the_steps() {
        let ms = |v: &[u64]| v.iter().map(|&m| Duration::from_millis(m)).collect::<Vec<_>>();
        let result = |steps| BenchResult {
            steps,
            phases: PhaseTimes::default(),
            samples: SAMPLES,
            slots: 0.0,
            titles: 0.0,
            tokens: 0.0,
            flops: 0.0,
            cache_hit_rate: None,
            gpu_memory_peak: None,
        };
        let odd = result(ms(&[400, 100, 700]));
        assert_eq!((odd.mean(), odd.median()), (Duration::from_millis(400), Duration::from_millis(400)));
        assert_eq!(odd.range(), (Duration::from_millis(100), Duration::from_millis(700)));
        assert!((odd.samples_per_second() - SAMPLES as f64 / 0.4).abs() < 1e-9);
        let even = result(ms(&[400, 100, 700, 200]));
        assert_eq!(even.median(), Duration::from_millis(300));
    }

    /// A 2-layer BERT (d = 8, d_ff = 16) over 2 titles of 3 tokens (T = 6, sum L^2 = 18): per
    /// layer every token costs `6 d^2 T + 4 d sum L^2 = 2880` to project and attend, and a row of
    /// the output projection and feed-forward `2 d^2 + 4 d d_ff = 640`; a pass with `R` rows in
    /// the last layer costs `2 x 2880 + 6 x 640 + 640 R`.
    #[test]
    fn step_flops_count_the_last_layers_feed_forward_only_for_the_rows_a_loss_reads() {
        let bert: BertConfig = serde_json::from_str(
            r#"{"vocab_size": 50, "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
                "intermediate_size": 16, "max_position_embeddings": 16}"#,
        )
        .unwrap();
        let shape = FlopShape {
            titles: 2.0,
            tokens: 6.0,
            squared_lengths: 18.0,
            forward_layers: 2.0,
            backward_layers: 2.0,
        };
        let pass = |rows: f64| 2.0 * 2880.0 + 6.0 * 640.0 + 640.0 * rows;
        let mut mtl = MtlConfig { category: false, ner: false, ..MtlConfig::default() };
        // Main task only: [CLS] rows in the forward pass and in the backward pass.
        assert_eq!(step_flops(&bert, &mtl, shape), pass(2.0) + 2.0 * pass(2.0));
        // MTRec: every row forward (NER reads the tokens); main backward [CLS] only; one
        // auxiliary backward over [CLS] (category) and the tokens (NER).
        mtl.category = true;
        mtl.ner = true;
        assert_eq!(step_flops(&bert, &mtl, shape), pass(6.0) + 2.0 * pass(2.0) + 2.0 * pass(6.0));
        // PCGrad: one auxiliary backward per task.
        mtl.surgery = crate::surgery::SurgeryMode::Pcgrad;
        let pcgrad = pass(6.0) + 2.0 * pass(2.0) + 2.0 * pass(2.0) + 2.0 * pass(4.0);
        assert_eq!(step_flops(&bert, &mtl, shape), pcgrad);
        // The top layer trainable only: the backward passes run through one layer.
        let one = FlopShape { backward_layers: 1.0, ..shape };
        let main_only = MtlConfig { category: false, ner: false, ..MtlConfig::default() };
        assert_eq!(step_flops(&bert, &main_only, one), pass(2.0) + 2.0 * (2880.0 + 640.0 * 2.0));
    }

    #[test]
    fn mfu_only_for_bf16_on_cuda() {
        assert_eq!(mfu(PEAK_BF16_TFLOPS * 1e12 / 4.0, Precision::Bf16, true), Some(0.25));
        assert_eq!(mfu(1e12, Precision::F32, true), None);
        assert_eq!(mfu(1e12, Precision::Bf16, false), None);
    }
}
