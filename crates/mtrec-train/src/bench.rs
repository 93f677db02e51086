//! `mtrec-worker bench`: times training steps on the reference workload of `DESIGN.md`
//! ("Performance design"): 8 samples per step, history 50, 1 + 4 candidates, so 440 distinct
//! titles of 12-30 real tokens (uniform) with random token ids, full fine-tuning, the configured
//! losses and surgery, AdamW. Reports samples/s and the time of each phase, for the configured
//! multi-task step and for the main-task-only step.
use crate::TrainError;
use crate::config::Config;
use crate::device_batch::DeviceBatch;
use crate::flat::FlatParams;
use crate::optim::AdamW;
use crate::setup::{self, LabelCounts};
use crate::step::{PhaseTimes, train_step};
use mtrec_data::batch::{GlobalCounts, HostBatch};
use mtrec_data::read::NewsTable;
use mtrec_dist::Local;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

/// Reference workload sizes.
pub const SAMPLES: usize = 8;
pub const HISTORY: usize = 50;
pub const NEGATIVES: usize = 4;
/// MIND-small's label counts.
pub const LABELS: LabelCounts =
    LabelCounts { categories: 17, subcategories: 264, ner_tags: 3, num_users: 1000 };

/// The measured steps of one configuration.
#[derive(Debug, Clone)]
pub struct BenchResult {
    /// Each measured step's wall time, in order.
    pub steps: Vec<Duration>,
    /// Mean time of each phase.
    pub phases: PhaseTimes,
    pub titles: usize,
    pub tokens: usize,
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
        SAMPLES as f64 / self.mean().as_secs_f64().max(1e-9)
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
    };
    (table, batch)
}

/// One configuration's model, optimizer and batch, and the times of its measured steps.
struct Runner {
    config: Config,
    model: mtrec_model::NewsRecModel,
    params: FlatParams,
    optimizer: AdamW,
    batch: DeviceBatch,
    titles: usize,
    tokens: usize,
    steps: Vec<Duration>,
    total: PhaseTimes,
}

impl Runner {
    fn new(config: &Config) -> Result<Self, TrainError> {
        if config.model.amf {
            return Err(TrainError::Config(
                "bench: the reference workload has no entities, so AMF would not run; use --set model.amf=false"
                    .into(),
            ));
        }
        let model_dir = setup::model_dir(config)?;
        let device = setup::device(config.train.device, 0)?;
        let (vs, model) = setup::build_model(config, LABELS, &model_dir, None, device)?;
        let params = FlatParams::new(&vs);
        let optimizer = AdamW::new(&params, config.optim.clone());
        let (table, host) = reference_batch(model.bert.config.vocab_size, config.train.seed);
        let labelled: u64 = table.ner_tags.iter().flatten().filter(|&&t| t >= 0).count() as u64;
        let counts = GlobalCounts { news: host.news.len() as u64, labelled_tokens: labelled };
        let batch = DeviceBatch::new(&host, &table, counts, 1, device);
        Ok(Runner {
            config: config.clone(),
            model,
            params,
            optimizer,
            batch,
            titles: host.news.len(),
            tokens: table.input_ids.iter().map(Vec::len).sum(),
            steps: Vec::new(),
            total: PhaseTimes::default(),
        })
    }

    fn step(&mut self, index: usize, measured: bool) -> Result<(), TrainError> {
        let started = Instant::now();
        let (_, times) = train_step(
            &self.model,
            &mut self.params,
            &mut self.optimizer,
            &Local,
            &self.batch,
            &self.config.mtl,
            1.0,
            index as u64,
            true,
        )?;
        if measured {
            self.steps.push(started.elapsed());
            let total = &mut self.total;
            total.forward += times.forward;
            total.backward_main += times.backward_main;
            total.backward_aux += times.backward_aux;
            total.surgery += times.surgery;
            total.optimizer += times.optimizer;
        }
        Ok(())
    }

    fn result(&self) -> BenchResult {
        let n = self.steps.len().max(1) as u32;
        let total = &self.total;
        BenchResult {
            steps: self.steps.clone(),
            phases: PhaseTimes {
                forward: total.forward / n,
                backward_main: total.backward_main / n,
                backward_aux: total.backward_aux / n,
                surgery: total.surgery / n,
                optimizer: total.optimizer / n,
            },
            titles: self.titles,
            tokens: self.tokens,
        }
    }
}

/// Times `steps` steps of each configuration after `warmup` unmeasured ones. The configurations
/// take turns step by step, so a drift in the machine's speed (a shared 2-core VM drifts by
/// 10-30% over a minute) affects each alike and their ratio stays fair.
pub fn run(configs: &[Config], warmup: usize, steps: usize) -> Result<Vec<BenchResult>, TrainError> {
    let mut runners: Vec<Runner> = configs.iter().map(Runner::new).collect::<Result<_, _>>()?;
    for i in 0..warmup + steps {
        for runner in runners.iter_mut() {
            runner.step(i, i >= warmup)?;
        }
    }
    Ok(runners.iter().map(Runner::result).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_median_and_range_of_the_steps() {
        let ms = |v: &[u64]| v.iter().map(|&m| Duration::from_millis(m)).collect::<Vec<_>>();
        let result = |steps| BenchResult { steps, phases: PhaseTimes::default(), titles: 0, tokens: 0 };
        let odd = result(ms(&[400, 100, 700]));
        assert_eq!((odd.mean(), odd.median()), (Duration::from_millis(400), Duration::from_millis(400)));
        assert_eq!(odd.range(), (Duration::from_millis(100), Duration::from_millis(700)));
        assert!((odd.samples_per_second() - SAMPLES as f64 / 0.4).abs() < 1e-9);
        let even = result(ms(&[400, 100, 700, 200]));
        assert_eq!(even.median(), Duration::from_millis(300));
    }
}
