//! Training samples and batch assembly (no torch: the worker turns a [`HostBatch`] into tensors).
//!
//! A sample is one clicked news of a train impression with `K` non-clicked news of the same
//! impression, drawn by an RNG seeded from (run seed, epoch, sample index): the same sample gets
//! the same negatives in any process layout. Without replacement when the impression has at least
//! `K` non-clicked news, with replacement otherwise. The global order is a seeded permutation per
//! epoch; a global batch is `batch_size` consecutive samples of it and rank `r` of `W` takes the
//! `r`-th of `W` equal slices, so every rank takes the same number of steps. Each batch lists its
//! unique news once (history + candidates), so the encoder runs once per news item, with the
//! number of times it occurs: the auxiliary losses weight each news item by its occurrences and
//! divide by the occurrence counts of the whole *global* batch ([`GlobalCounts`]), so encoding
//! once changes no loss, and any split of the global batch over ranks gives the same averaged
//! gradients as one process with the whole batch.
use crate::read::{NewsTable, TrainImpression};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

/// `(impression index, position in its clicked list)` of every sample, in file order.
#[derive(Debug)]
pub struct SampleIndex {
    samples: Vec<(u32, u16)>,
    /// Clicks whose impression has no non-clicked news (they cannot form a sample).
    pub skipped_without_negatives: usize,
}

impl SampleIndex {
    pub fn new(impressions: &[TrainImpression]) -> Self {
        let mut samples = Vec::new();
        let mut skipped = 0;
        for (i, imp) in impressions.iter().enumerate() {
            if imp.non_clicked.is_empty() {
                skipped += imp.clicked.len();
                continue;
            }
            samples.extend((0..imp.clicked.len()).map(|c| (i as u32, c as u16)));
        }
        SampleIndex { samples, skipped_without_negatives: skipped }
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// Mixes the run seed with other numbers into one RNG seed (splitmix64 finaliser).
pub fn mix_seed(parts: &[u64]) -> u64 {
    parts.iter().fold(0x9E37_79B9_7F4A_7C15u64, |acc, &p| {
        let mut z = acc ^ p.wrapping_add(0x9E37_79B9_7F4A_7C15).wrapping_add(acc << 6).wrapping_add(acc >> 2);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

/// One batch on the host, indices into its own list of unique news.
#[derive(Debug, Clone, PartialEq)]
pub struct HostBatch {
    /// Unique nids of the batch (history and candidates), each once.
    pub news: Vec<i32>,
    /// `[B, H]` row-major indices into `news`; padded slots hold `news.len()` (a zero row).
    pub history: Vec<i64>,
    /// `[B, H]` true on real history slots.
    pub history_mask: Vec<bool>,
    /// History slots per sample (the longest history in the batch, at least 1).
    pub history_len: usize,
    /// `[B, 1 + K]` indices into `news`, the clicked news first.
    pub candidates: Vec<i64>,
    /// `[B]` user ids (0 = unknown).
    pub users: Vec<i64>,
    /// Samples in the batch.
    pub size: usize,
    /// Occurrences of each unique news item in the batch (history slots + candidates).
    pub occurrences: Vec<u32>,
}

/// Occurrence counts over a whole global batch: the denominators of the auxiliary losses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GlobalCounts {
    /// News occurrences (history slots + candidates) of all samples.
    pub news: u64,
    /// NER-labelled tokens over those occurrences.
    pub labelled_tokens: u64,
}

/// Samples, ordering and batch assembly for one run.
#[derive(Debug)]
pub struct Sampler<'a> {
    impressions: &'a [TrainImpression],
    index: SampleIndex,
    seed: u64,
    negatives: usize,
    history: usize,
}

impl<'a> Sampler<'a> {
    /// `history`: most recent clicks kept per sample; `negatives`: K.
    pub fn new(impressions: &'a [TrainImpression], seed: u64, negatives: usize, history: usize) -> Self {
        Sampler { index: SampleIndex::new(impressions), impressions, seed, negatives, history }
    }

    pub fn index(&self) -> &SampleIndex {
        &self.index
    }

    /// Global steps per epoch with global batch `batch_size` (the last partial batch is dropped).
    pub fn steps_per_epoch(&self, batch_size: usize) -> u64 {
        (self.index.len() / batch_size) as u64
    }

    /// The epoch's global sample order.
    pub fn epoch_order(&self, epoch: u64) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.index.len() as u32).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix_seed(&[self.seed, epoch, 0x0D0E])));
        order
    }

    /// Clicked news first, then K non-clicked news of the same impression.
    pub fn candidates(&self, epoch: u64, sample: u32) -> (usize, Vec<i32>) {
        let (imp, click) = self.index.samples[sample as usize];
        let impression = &self.impressions[imp as usize];
        let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(&[self.seed, epoch, sample as u64]));
        let mut out = Vec::with_capacity(1 + self.negatives);
        out.push(impression.clicked[click as usize]);
        if impression.non_clicked.len() >= self.negatives {
            out.extend(impression.non_clicked.choose_multiple(&mut rng, self.negatives).copied());
        } else {
            out.extend(
                (0..self.negatives)
                    .map(|_| impression.non_clicked[rng.random_range(0..impression.non_clicked.len())]),
            );
        }
        (imp as usize, out)
    }

    /// The samples that rank `rank` of `world` takes at global `step` (0-based, in the epoch).
    pub fn rank_samples(
        &self,
        order: &[u32],
        step: u64,
        batch_size: usize,
        rank: usize,
        world: usize,
    ) -> Vec<u32> {
        let per_rank = batch_size / world;
        let start = step as usize * batch_size + rank * per_rank;
        order[start..start + per_rank].to_vec()
    }

    /// Assembles the batch of `samples` (history capped at the configured length).
    pub fn assemble(&self, epoch: u64, samples: &[u32]) -> HostBatch {
        let mut unique: HashMap<i32, i64> = HashMap::new();
        let mut news = Vec::new();
        let mut occurrences: Vec<u32> = Vec::new();
        let mut slot = |nid: i32, news: &mut Vec<i32>| -> i64 {
            let index = *unique.entry(nid).or_insert_with(|| {
                news.push(nid);
                occurrences.push(0);
                news.len() as i64 - 1
            });
            occurrences[index as usize] += 1;
            index
        };
        let mut rows = Vec::with_capacity(samples.len());
        let mut candidates = Vec::with_capacity(samples.len() * (1 + self.negatives));
        let mut users = Vec::with_capacity(samples.len());
        for &sample in samples {
            let (imp, cands) = self.candidates(epoch, sample);
            let impression = &self.impressions[imp];
            let history = &impression.history[impression.history.len().saturating_sub(self.history)..];
            rows.push(history.iter().map(|&nid| slot(nid, &mut news)).collect::<Vec<_>>());
            candidates.extend(cands.iter().map(|&nid| slot(nid, &mut news)));
            users.push(impression.user as i64);
        }
        pad_history(news, rows, candidates, users, occurrences)
    }

    /// Occurrence counts of the global batch at `step` (all ranks' samples), computed on the host
    /// by every rank alike. `labelled_tokens[nid]`: NER-labelled tokens of news `nid`.
    pub fn global_counts(
        &self,
        epoch: u64,
        order: &[u32],
        step: u64,
        batch_size: usize,
        labelled_tokens: &[u32],
    ) -> GlobalCounts {
        let mut counts = GlobalCounts::default();
        for sample in self.rank_samples(order, step, batch_size, 0, 1) {
            let (imp, cands) = self.candidates(epoch, sample);
            let history = &self.impressions[imp].history;
            let kept = &history[history.len().saturating_sub(self.history)..];
            for &nid in kept.iter().chain(&cands) {
                counts.news += 1;
                counts.labelled_tokens += labelled_tokens[nid as usize] as u64;
            }
        }
        counts
    }
}

/// Pads history rows (left-aligned, padding index = `news.len()`) into a [`HostBatch`].
fn pad_history(
    news: Vec<i32>,
    rows: Vec<Vec<i64>>,
    candidates: Vec<i64>,
    users: Vec<i64>,
    occurrences: Vec<u32>,
) -> HostBatch {
    let history_len = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let pad = news.len() as i64;
    let mut history = Vec::with_capacity(rows.len() * history_len);
    let mut history_mask = Vec::with_capacity(rows.len() * history_len);
    for row in &rows {
        history.extend(row.iter().copied().chain(std::iter::repeat_n(pad, history_len - row.len())));
        history_mask.extend((0..history_len).map(|t| t < row.len()));
    }
    HostBatch { size: rows.len(), news, history, history_mask, history_len, candidates, users, occurrences }
}

/// The titles (and NER tags) of a batch's unique news, for the encoder.
pub fn titles<'n>(table: &'n NewsTable, news: &[i32]) -> (Vec<&'n [i32]>, Vec<&'n [i8]>) {
    news.iter()
        .map(|&nid| (table.input_ids[nid as usize].as_slice(), table.ner_tags[nid as usize].as_slice()))
        .unzip()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn impressions() -> Vec<TrainImpression> {
        (0..40)
            .map(|i| TrainImpression {
                impression_id: i,
                user: (i % 7) as i32 + 1,
                time: 0,
                history: (1..=(i as i32 % 9)).collect(),
                clicked: vec![100 + i as i32, 200 + i as i32],
                non_clicked: (0..(i as i32 % 6)).map(|k| 300 + k).collect(),
            })
            .collect()
    }

    #[test]
    fn negatives_depend_only_on_seed_epoch_and_sample() {
        let imps = impressions();
        let a = Sampler::new(&imps, 7, 4, 50);
        let b = Sampler::new(&imps, 7, 4, 50);
        for s in 0..a.index().len() as u32 {
            assert_eq!(a.candidates(3, s), b.candidates(3, s));
        }
        // A different epoch redraws (for impressions with more than K choices).
        assert!((0..a.index().len() as u32).any(|s| a.candidates(3, s) != a.candidates(4, s)));
        // Impressions without non-clicked news give no samples.
        assert_eq!(a.index().skipped_without_negatives, 7 * 2);
    }

    /// The global batch of a step assembled by 1 rank and by 4 (each its own slice, as separate
    /// processes would): every sample has the same candidates, negatives included.
    #[test]
    fn a_sample_gets_the_same_negatives_in_any_rank_layout() {
        let imps = impressions();
        let sampler = Sampler::new(&imps, 7, 4, 50);
        let order = sampler.epoch_order(3);
        // Each sample's candidates as news ids, in batch order.
        let candidate_ids = |batch: &HostBatch| -> Vec<Vec<i32>> {
            batch
                .candidates
                .chunks(5)
                .map(|row| row.iter().map(|&i| batch.news[i as usize]).collect())
                .collect()
        };
        let whole = candidate_ids(&sampler.assemble(3, &sampler.rank_samples(&order, 2, 8, 0, 1)));
        let by_ranks: Vec<Vec<i32>> = (0..4)
            .flat_map(|rank| {
                // A sampler of its own, as in another process.
                let own = Sampler::new(&imps, 7, 4, 50);
                candidate_ids(&own.assemble(3, &own.rank_samples(&own.epoch_order(3), 2, 8, rank, 4)))
            })
            .collect();
        assert_eq!(whole, by_ranks);
        assert_eq!(whole.len(), 8);
    }

    #[test]
    fn negatives_come_from_the_impression_and_are_distinct_when_possible() {
        let imps = impressions();
        let sampler = Sampler::new(&imps, 1, 4, 50);
        for s in 0..sampler.index().len() as u32 {
            let (imp, cands) = sampler.candidates(0, s);
            assert!(imps[imp].clicked.contains(&cands[0]));
            assert!(cands[1..].iter().all(|n| imps[imp].non_clicked.contains(n)));
            if imps[imp].non_clicked.len() >= 4 {
                let mut distinct = cands[1..].to_vec();
                distinct.sort();
                distinct.dedup();
                assert_eq!(distinct.len(), 4, "without replacement when possible");
            }
        }
    }

    #[test]
    fn rank_slices_partition_the_global_batch() {
        let imps = impressions();
        let sampler = Sampler::new(&imps, 1, 4, 50);
        let order = sampler.epoch_order(0);
        let global = sampler.rank_samples(&order, 2, 8, 0, 1);
        let split: Vec<u32> = (0..4).flat_map(|r| sampler.rank_samples(&order, 2, 8, r, 4)).collect();
        assert_eq!(global, split);
    }

    #[test]
    fn batches_list_each_news_once_and_pad_history() {
        let imps = impressions();
        let sampler = Sampler::new(&imps, 1, 4, 3);
        let samples: Vec<u32> = (0..6).collect();
        let batch = sampler.assemble(0, &samples);
        let mut sorted = batch.news.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), batch.news.len(), "unique news");
        // Occurrences add up to every history slot and candidate.
        let slots = batch.history_mask.iter().filter(|&&m| m).count() + batch.candidates.len();
        assert_eq!(batch.occurrences.iter().map(|&c| c as usize).sum::<usize>(), slots);
        // The global counts of a one-rank batch are those occurrences.
        let labelled = vec![2u32; 1000];
        let order: Vec<u32> = (0..40).collect();
        let counts = sampler.global_counts(0, &order, 0, 6, &labelled);
        assert_eq!(counts.news as usize, slots);
        assert_eq!(counts.labelled_tokens as usize, 2 * slots);
        assert_eq!(batch.history_len, 3, "capped at the configured history");
        for (b, &s) in samples.iter().enumerate() {
            let (imp, cands) = sampler.candidates(0, s);
            let row = &batch.candidates[b * 5..(b + 1) * 5];
            assert_eq!(row.iter().map(|&i| batch.news[i as usize]).collect::<Vec<_>>(), cands);
            let hist = &imps[imp].history;
            let kept = &hist[hist.len().saturating_sub(3)..];
            for t in 0..3 {
                let idx = batch.history[b * 3 + t];
                assert_eq!(batch.history_mask[b * 3 + t], t < kept.len());
                if t < kept.len() {
                    assert_eq!(batch.news[idx as usize], kept[t]);
                } else {
                    assert_eq!(idx, batch.news.len() as i64);
                }
            }
        }
    }
}
