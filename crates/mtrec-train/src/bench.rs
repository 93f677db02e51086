//! `mtrec-worker bench`: times training steps (forward, backward passes, surgery, AdamW) on one
//! of two workloads, and reports samples/s and the time of each phase.
//! - `reference` (`DESIGN.md`, "Performance design"): 8 samples per step, history 50, 1 + 4
//!   candidates, so 440 distinct titles of 12-30 real tokens (uniform) with random token ids, in
//!   one process; the configured multi-task step against the main-task-only step.
//! - `mind`: real batches of the configured shards (made MIND-like by `mtrec-prep synth
//!   --profile mind`: news repeat as in MIND), drawn as in training (negatives, history cut,
//!   de-duplication) at chosen batches per rank, with per-rank and global de-duplication, on
//!   every rank of the job. Consecutive steps take consecutive batches of the epoch's order.
use crate::TrainError;
use crate::config::Config;
use crate::device_batch::{Batches, DeviceBatch};
use crate::flat::FlatParams;
use crate::layer_cache::LayerCache;
use crate::optim::AdamW;
use crate::setup::{self, LabelCounts, Loaded};
use crate::step::{PhaseTimes, train_step};
use crate::vector_cache::{self, CacheSchedule, VectorCache};
use mtrec_data::batch::{DedupCounts, GlobalCounts, HostBatch, Sampler};
use mtrec_data::read::{NewsTable, TrainImpression};
use mtrec_dist::{Collective, Local};
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

/// Reference workload sizes.
pub const SAMPLES: usize = 8;
pub const HISTORY: usize = 50;
pub const NEGATIVES: usize = 4;
/// MIND-small's label counts.
pub const LABELS: LabelCounts =
    LabelCounts { categories: 17, subcategories: 264, ner_tags: 3, num_users: 1000 };

/// The measured steps of one configuration on this rank.
#[derive(Debug, Clone)]
pub struct BenchResult {
    /// Each measured step's wall time, in order.
    pub steps: Vec<Duration>,
    /// Mean time of each phase.
    pub phases: PhaseTimes,
    /// Samples per step on this rank.
    pub samples: usize,
    /// Per step, means: title slots of this rank's samples (history + candidates), titles it
    /// encoded (after de-duplication), and their tokens.
    pub slots: f64,
    pub titles: f64,
    pub tokens: f64,
    /// With a news-vector cache: the share of the global batches' news read from it.
    pub cache_hit_rate: Option<f64>,
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
}

/// 440 random titles (12-30 tokens, `[CLS]`/`[SEP]` included) and the batch that uses each once.
pub fn reference_batch(vocab: i64, seed: u64) -> (NewsTable, HostBatch) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let titles = SAMPLES * (HISTORY + 1 + NEGATIVES);
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
    for s in 0..SAMPLES {
        let base = (s * per_sample) as i64;
        history.extend(base..base + HISTORY as i64);
        candidates.extend(base + HISTORY as i64..base + per_sample as i64);
    }
    let batch = HostBatch {
        news,
        history,
        history_mask: vec![true; SAMPLES * HISTORY],
        history_len: HISTORY,
        candidates,
        users: (1..=SAMPLES as i64).collect(),
        size: SAMPLES,
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
    counts: StepCounts,
}

/// Titles a rank's measured steps read and encoded, summed over the steps.
#[derive(Debug, Default, Clone, Copy)]
struct StepCounts {
    slots: usize,
    titles: usize,
    tokens: usize,
    cache_hits: usize,
    cache_news: usize,
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
            counts: StepCounts::default(),
        })
    }

    fn step(&mut self, index: usize, measured: bool) -> Result<(), TrainError> {
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
            true,
            self.vector_cache.as_mut().map(|(cache, _)| cache),
        )?;
        if measured {
            if let Some((cache, _)) = &self.vector_cache {
                self.counts.cache_hits += (cache.hits - before.0) as usize;
                self.counts.cache_news += (cache.news - before.1) as usize;
            }
            self.steps.push(started.elapsed());
            self.total = self.total + times;
            let real_history = batch.history_mask.sum(tch::Kind::Int64).int64_value(&[]) as usize;
            self.counts.slots += real_history + batch.candidates.numel();
            self.counts.titles += batch.news.titles.len;
            self.counts.tokens += batch.news.titles.tokens;
        }
        Ok(())
    }

    fn result(&self) -> BenchResult {
        let n = self.steps.len().max(1);
        let per_step = |count: usize| count as f64 / n as f64;
        BenchResult {
            steps: self.steps.clone(),
            phases: self.total / n as u32,
            samples: self.samples,
            slots: per_step(self.counts.slots),
            titles: per_step(self.counts.titles),
            tokens: per_step(self.counts.tokens),
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

/// Times `steps` steps of each runner after `warmup` unmeasured ones. The configurations take
/// turns step by step, so a drift in the machine's speed (a shared 2-core VM drifts by 10-30%
/// over a minute) affects each alike and their ratio stays fair.
fn take_turns(
    mut runners: Vec<Runner<'_>>,
    warmup: usize,
    steps: usize,
) -> Result<Vec<BenchResult>, TrainError> {
    for i in 0..warmup + steps {
        for runner in runners.iter_mut() {
            runner.step(i, i >= warmup)?;
        }
    }
    Ok(runners.iter().map(Runner::result).collect())
}

/// The reference workload in one process, for each configuration.
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
                let (table, host) = reference_batch(model.bert.config.vocab_size, config.train.seed);
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
            let batches = Batches::new(
                sampler,
                &data.loaded.news,
                &config.data,
                config.train.batch_size,
                collective.placement(),
            );
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
            cache_hit_rate: None,
        };
        let odd = result(ms(&[400, 100, 700]));
        assert_eq!((odd.mean(), odd.median()), (Duration::from_millis(400), Duration::from_millis(400)));
        assert_eq!(odd.range(), (Duration::from_millis(100), Duration::from_millis(700)));
        assert!((odd.samples_per_second() - SAMPLES as f64 / 0.4).abs() < 1e-9);
        let even = result(ms(&[400, 100, 700, 200]));
        assert_eq!(even.median(), Duration::from_millis(300));
    }
}
