//! A news-vector cache after SpeedyFeed's (Xiao et al. 2021, "Training Large-Scale News
//! Recommenders with Pretrained Language Models in the Loop"; `speedy_mind` in
//! microsoft/SpeedyRec): approximate, opt-in (`data.vector_cache`).
//!
//! Each step reads the cache with probability `p(step) = p_max (1 - exp(-beta step))` (one draw
//! per step, seeded by the run seed and the step, so a resumed run draws alike). A step that reads
//! it takes a history news item from the cache, without gradient, when that item's vector was
//! computed within the last `gamma` steps; every other news item of the global batch is encoded
//! fresh, and the fresh vectors are written to the cache after the optimizer step.
//!
//! Where it departs from SpeedyRec's code (`speedy_mind/data_handler/TrainDataloader.py` at
//! 520533e): SpeedyRec may also serve candidates from the cache (its split covers the candidates
//! and the clicks alike, `TrainDataloader.py:291-293`); here candidates are always fresh, so the
//! main loss's candidates always pass their gradient. SpeedyRec's ramp is
//! `max_hit_ratio - exp(-beta step)` (`:158`), which equals this one only at `p_max = 1`, the
//! default of both. `beta = 0.002` and `p_max = 1` are SpeedyRec's defaults
//! (`speedy_mind/parameters.py:99,105`). `gamma` (`--max_step_in_cache`) defaults to 20 in
//! SpeedyRec's code (`parameters.py:100`) and here; its README's MIND commands pass 2. Measured here on
//! MIND-like data with 32-64 samples per rank, `gamma = 2` reads only 24-28% of the news from the
//! cache (a news item must recur within two steps) for 1.3x the exact step's samples/s, `gamma =
//! 20` 49-55% for 1.85-2.1x, and over two seeds the dev AUC after the same steps did not differ
//! between 2, 20 and no cache beyond the seeds' spread (`docs/benchmarks.md`; a random-init
//! 2-layer model: not measured with a pretrained encoder). SpeedyRec's README runs 4 ranks of 42
//! (a global batch of 168), which makes recurrence within two steps likelier there.
//!
//! This changes the training objective: a cached history vector is an older encoder's output and
//! passes no gradient to the encoder, and the auxiliary losses see only the freshly encoded news
//! (their occurrence counts are the fresh news'). `docs/benchmarks.md` gives what it did to dev
//! AUC on MIND-like data.
//!
//! With more than one rank the cache needs global de-duplication: every rank holds the whole
//! cache (one `[news, d]` f32 table on its device: 0.2 GB for MIND-small with bert-base, 0.5 GB
//! for MIND-large) and updates it from the all-gathered fresh vectors, so every rank's copy stays
//! the same without an exchange of its own; SpeedyRec keeps one copy per process too.
use crate::TrainError;
use crate::checkpoint::{self, Checkpoint};
use crate::config::{Config, DataConfig};
use mtrec_data::batch::mix_seed;
use mtrec_data::read::NewsTable;
use mtrec_model::NewsRecModel;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

/// The cache a run with `config` uses and its schedule, when `data.vector_cache` is on. A
/// resumed run's holds the rows its checkpoint saved (the ones a later step may read), so it
/// reads what an uninterrupted run would.
pub fn for_run(
    config: &Config,
    model: &NewsRecModel,
    news: &NewsTable,
    device: Device,
    resume_from: Option<&Checkpoint>,
) -> Result<Option<(VectorCache, CacheSchedule)>, TrainError> {
    if !config.data.vector_cache {
        return Ok(None);
    }
    let num_news = news.input_ids.len();
    let hidden = model.bert.config.hidden_size;
    let mut cache = VectorCache::new(num_news, hidden, config.data.cache_gamma, device);
    let mut schedule = CacheSchedule::new(num_news, &config.data, config.train.seed);
    if let Some((ckpt, rows)) = resume_from.and_then(|c| Some((c, c.state.vector_cache_rows? as i64))) {
        let kind = |k| (k, Device::Cpu);
        let targets = [
            (NIDS.to_string(), Tensor::zeros([rows], kind(Kind::Int64))),
            (STEPS.to_string(), Tensor::zeros([rows], kind(Kind::Int64))),
            (VECTORS.to_string(), Tensor::zeros([rows, hidden], kind(Kind::Float))),
        ];
        checkpoint::read_safetensors_into(&ckpt.optimizer_file(), &targets)?;
        cache.restore(&targets[0].1, &targets[1].1, &targets[2].1)?;
        schedule.restore(&Vec::<i64>::try_from(&targets[0].1)?, &Vec::<i64>::try_from(&targets[1].1)?);
    }
    Ok(Some((cache, schedule)))
}

/// Which news each step reads from the cache: decided on the host, ahead of the step, from the
/// steps at which each news item was last encoded (what is in the cache does not matter, only
/// when it was written).
#[derive(Debug, Clone)]
pub struct CacheSchedule {
    /// Step (1-based) at which each news item was last encoded.
    last_encoded: Vec<Option<u64>>,
    p_max: f64,
    beta: f64,
    gamma: u64,
    seed: u64,
}

/// What [`CacheSchedule::split`] decided for one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Per news item of the global batch: read from the cache.
    pub cached: Vec<bool>,
    /// Whether the step reads the cache at all (its draw).
    pub reads_cache: bool,
}

impl CacheSchedule {
    pub fn new(num_news: usize, data: &DataConfig, seed: u64) -> Self {
        CacheSchedule {
            last_encoded: vec![None; num_news],
            p_max: data.cache_p_max,
            beta: data.cache_beta,
            gamma: data.cache_gamma,
            seed,
        }
    }

    /// `p(step) = p_max (1 - exp(-beta step))`.
    pub fn probability(&self, step: u64) -> f64 {
        self.p_max * (1.0 - (-self.beta * step as f64).exp())
    }

    /// Step `step`'s draw: whether it reads the cache.
    pub fn reads_cache(&self, step: u64) -> bool {
        let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(&[self.seed, step, 0xCAC4E]));
        rng.random::<f64>() < self.probability(step)
    }

    /// Step `step` (1-based) of the global batch with unique news `news` (`candidate[i]`: news
    /// `i` is a candidate of some sample): a news item is read from the cache when the step reads
    /// it, the item is no candidate and it was encoded at most `gamma` steps ago. The others are
    /// recorded as encoded at `step`. Steps must come in order.
    pub fn split(&mut self, step: u64, news: &[i32], candidate: &[bool]) -> Split {
        let reads_cache = self.reads_cache(step);
        let cached = news
            .iter()
            .zip(candidate)
            .map(|(&nid, &is_candidate)| {
                let last = &mut self.last_encoded[nid as usize];
                let fresh_enough = last.is_some_and(|at| step - at <= self.gamma);
                let hit = reads_cache && !is_candidate && fresh_enough;
                if !hit {
                    *last = Some(step);
                }
                hit
            })
            .collect();
        Split { cached, reads_cache }
    }

    /// A resumed run's schedule: the news a checkpoint's cache holds, encoded at those steps.
    pub fn restore(&mut self, nids: &[i64], steps: &[i64]) {
        for (&nid, &step) in nids.iter().zip(steps) {
            self.last_encoded[nid as usize] = Some(step as u64);
        }
    }
}

/// The cached vectors, on the training device.
#[derive(Debug)]
pub struct VectorCache {
    /// `[news, d]` f32.
    vectors: Tensor,
    /// Step (1-based) each row was last written.
    written: Vec<Option<u64>>,
    gamma: u64,
    /// Cache reads and news the global batches held, over the run.
    pub hits: u64,
    pub news: u64,
}

/// Names of the cache's tensors in `optimizer.safetensors`.
pub const NIDS: &str = "vector_cache.nids";
pub const STEPS: &str = "vector_cache.steps";
pub const VECTORS: &str = "vector_cache.vectors";

impl VectorCache {
    pub fn new(num_news: usize, hidden: i64, gamma: u64, device: Device) -> Self {
        VectorCache {
            vectors: Tensor::zeros([num_news as i64, hidden], (Kind::Float, device)),
            written: vec![None; num_news],
            gamma,
            hits: 0,
            news: 0,
        }
    }

    /// `[n, d]` the cached vectors of `nids` (`[n]` int64 on the device).
    pub fn read(&self, nids: &Tensor) -> Tensor {
        self.vectors.index_select(0, nids)
    }

    /// Writes the fresh `vectors` (`[n, d]`, detached) of news `nids` (host and device copies)
    /// encoded at `step`.
    pub fn write(&mut self, step: u64, host_nids: &[i32], nids: &Tensor, vectors: &Tensor) {
        let mut table = self.vectors.shallow_clone();
        let _ = table.index_copy_(0, nids, &vectors.detach().to_kind(Kind::Float));
        for &nid in host_nids {
            self.written[nid as usize] = Some(step);
        }
    }

    /// The rows a step after `step` may still read, for the checkpoint at `step`: news ids,
    /// the steps they were written at, and their vectors (on the host).
    pub fn live_rows(&self, step: u64) -> Vec<(String, Tensor)> {
        let (nids, steps): (Vec<i64>, Vec<i64>) = self
            .written
            .iter()
            .enumerate()
            .filter_map(|(nid, at)| {
                at.filter(|&at| step + 1 - at <= self.gamma).map(|at| (nid as i64, at as i64))
            })
            .unzip();
        let index = Tensor::from_slice(&nids).to_device(self.vectors.device());
        vec![
            (NIDS.to_string(), Tensor::from_slice(&nids)),
            (STEPS.to_string(), Tensor::from_slice(&steps)),
            (VECTORS.to_string(), self.vectors.index_select(0, &index).to_device(Device::Cpu)),
        ]
    }

    /// Puts a checkpoint's live rows back ([`VectorCache::live_rows`]).
    pub fn restore(&mut self, nids: &Tensor, steps: &Tensor, vectors: &Tensor) -> Result<(), TrainError> {
        let nid_values = Vec::<i64>::try_from(nids)?;
        let step_values = Vec::<i64>::try_from(steps)?;
        if let Some(&bad) = nid_values.iter().find(|&&n| n < 0 || n as usize >= self.written.len()) {
            return Err(TrainError::Checkpoint(format!(
                "{NIDS}: news row {bad} outside the {} news of the shards",
                self.written.len()
            )));
        }
        let _ = self.vectors.index_copy_(
            0,
            &nids.to_device(self.vectors.device()),
            &vectors.to_device(self.vectors.device()),
        );
        for (&nid, &step) in nid_values.iter().zip(&step_values) {
            self.written[nid as usize] = Some(step as u64);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(p_max: f64, gamma: u64) -> CacheSchedule {
        let data =
            DataConfig { cache_p_max: p_max, cache_beta: 1e9, cache_gamma: gamma, ..DataConfig::default() };
        CacheSchedule::new(10, &data, 7)
    }

    /// A hand-made sequence of steps with p = 1 (beta so large that p(1) = p_max): a history news
    /// item is a hit when encoded within the last `gamma` steps, a miss otherwise, and a miss
    /// refreshes it; candidates are never cached.
    #[test]
    fn hits_follow_staleness_gamma_and_candidates_stay_fresh() {
        let mut s = schedule(1.0, 2);
        let history = [false, false];
        // step 1: nothing encoded yet: both miss (encoded at 1)
        assert_eq!(s.split(1, &[3, 4], &history).cached, vec![false, false]);
        // step 2: 3 encoded 1 step ago: hit; 5 new: miss
        assert_eq!(s.split(2, &[3, 5], &history).cached, vec![true, false]);
        // step 3: 3 still from step 1 (2 ago): hit; 4 from step 1: hit
        assert_eq!(s.split(3, &[3, 4], &history).cached, vec![true, true]);
        // step 4: 3 is 3 steps old: miss (re-encoded at 4); 5 from step 2: hit
        assert_eq!(s.split(4, &[3, 5], &history).cached, vec![false, true]);
        // step 5: 3 fresh from step 4, but a candidate: never cached (re-encoded at 5); 5 is from
        // step 2 (a hit does not refresh a vector): 3 steps old, a miss
        assert_eq!(s.split(5, &[3, 5], &[true, false]).cached, vec![false, false]);
        // step 6: 3 was encoded at 5 (as a candidate): a hit again
        assert_eq!(s.split(6, &[3], &[false]).cached, vec![true]);
    }

    #[test]
    fn probability_zero_never_reads_and_one_always_does() {
        let mut never = schedule(0.0, 2);
        let mut always = schedule(1.0, 2);
        for step in 1..50 {
            let a = never.split(step, &[1, 2], &[false, false]);
            assert!(!a.reads_cache && a.cached.iter().all(|&c| !c));
            let b = always.split(step, &[1, 2], &[false, false]);
            assert!(b.reads_cache);
            // Encoded at 1, read at 2 and 3, stale at 4 (encoded again), read at 5 and 6, ...
            assert_eq!(b.cached, vec![step > 1 && (step - 1) % 3 != 0; 2], "step {step}");
        }
        // The ramp: p(step) = p_max (1 - exp(-beta step)).
        let data = DataConfig { cache_beta: 0.002, ..DataConfig::default() };
        let ramp = CacheSchedule::new(1, &data, 1);
        assert!((ramp.probability(500) - (1.0 - (-1.0f64).exp())).abs() < 1e-12);
        let reads = (1..=4000).filter(|&s| ramp.reads_cache(s)).count();
        let expected: f64 = (1..=4000).map(|s| ramp.probability(s)).sum();
        assert!(
            (reads as f64 - expected).abs() < 4.0 * expected.sqrt(),
            "{reads} reads, {expected:.0} expected"
        );
    }

    #[test]
    fn the_live_rows_of_a_checkpoint_restore_the_cache() {
        let mut cache = VectorCache::new(6, 3, 2, Device::Cpu);
        let vectors = Tensor::arange(9, (Kind::Float, Device::Cpu)).view([3, 3]);
        cache.write(4, &[1, 2, 5], &Tensor::from_slice(&[1i64, 2, 5]), &vectors);
        cache.write(6, &[2], &Tensor::from_slice(&[2i64]), &(vectors.narrow(0, 0, 1) + 100.0));
        // After step 6, steps 7 and 8 may read rows written at 5 or later (gamma 2): only row 2.
        let rows = cache.live_rows(6);
        assert_eq!(Vec::<i64>::try_from(&rows[0].1).unwrap(), vec![2]);
        assert_eq!(Vec::<i64>::try_from(&rows[1].1).unwrap(), vec![6]);
        let mut restored = VectorCache::new(6, 3, 2, Device::Cpu);
        restored.restore(&rows[0].1, &rows[1].1, &rows[2].1).unwrap();
        let row = restored.read(&Tensor::from_slice(&[2i64]));
        assert_eq!(Vec::<f32>::try_from(row.view([-1])).unwrap(), vec![100.0, 101.0, 102.0]);
        assert!(restored.restore(&Tensor::from_slice(&[9i64]), &rows[1].1, &rows[2].1).is_err());
    }
}
