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
//!
//! De-duplication is per rank ([`Sampler::assemble`]: a rank encodes the unique news of its own
//! samples) or over the global batch ([`Sampler::assemble_global`], SpeedyFeed's centralized
//! news encoding, Xiao et al. 2021, `speedy_mind` in microsoft/SpeedyRec): every rank lists the
//! unique news of all ranks' samples alike, splits them over the ranks balanced by tokens
//! ([`Shares`]), and encodes only its share; the trainer all-gathers the vectors. On real MIND a
//! news item recurs across ranks far more than within one (popular news sit in many histories),
//! so the global batch has fewer unique news than the ranks' batches together.
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
    /// Occurrences of each news item of `news` in the batch (history slots + candidates); with
    /// `shares`, in the whole global batch.
    pub occurrences: Vec<u32>,
    /// `None`: `news` are the unique news of this rank's samples and `history`/`candidates` index
    /// their vectors. `Some`: global de-duplication; `news` is this rank's share of the global
    /// batch's unique news, and `history`/`candidates` index the table of every rank's share
    /// that the trainer all-gathers.
    pub shares: Option<Shares>,
}

/// How the unique news of a global batch are split over the ranks. The gathered table has
/// `padded` rows per rank, rank `r`'s news at rows `r * padded ..r * padded + counts[r]`, then
/// zero rows to `padded` (an all-gather moves equal blocks); then one row per news item read from
/// a news-vector cache (`reused`); then the zero row padded history slots point at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shares {
    /// News each rank encodes, in rank order.
    pub counts: Vec<usize>,
    /// Table rows per rank: the largest count.
    pub padded: usize,
    /// Tokens each rank encodes (what the split balances).
    pub tokens: Vec<u64>,
    /// `[world * padded]` the news item of each encoded row (-1 on padding rows).
    pub table_news: Vec<i32>,
    /// `[world * padded]` the global occurrences of each encoded row's news item (0 on padding).
    pub table_occurrences: Vec<u32>,
    /// News read from the cache, in table order after the encoded rows.
    pub reused: Vec<i32>,
}

impl Shares {
    /// Occurrence counts of the encoded news (the auxiliary losses' denominators; all of the
    /// global batch's news without a cache). `labelled_tokens[nid]`: NER-labelled tokens.
    pub fn encoded_counts(&self, labelled_tokens: &[u32]) -> GlobalCounts {
        let mut counts = GlobalCounts::default();
        for (&nid, &occurrences) in self.table_news.iter().zip(&self.table_occurrences) {
            if nid >= 0 {
                counts.news += occurrences as u64;
                counts.labelled_tokens += occurrences as u64 * labelled_tokens[nid as usize] as u64;
            }
        }
        counts
    }
}

/// A news-vector cache's choice for one global batch: given its unique news and whether each is
/// a candidate of some sample, which to read from the cache.
pub type Reuse<'a> = dyn FnMut(&[i32], &[bool]) -> Vec<bool> + 'a;

/// Titles a global batch reads and encodes ([`Sampler::dedup_counts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DedupCounts {
    /// History slots and candidates: what encoding every occurrence would encode.
    pub slots: usize,
    /// Unique titles of each rank's samples, summed over the ranks (per-rank de-duplication).
    pub per_rank: usize,
    /// Unique titles of the whole global batch (global de-duplication).
    pub global: usize,
}

/// Owner rank of each news item (`tokens[i]`: its title's tokens), longest first to the rank
/// with the fewest tokens so far (Graham's LPT rule: no rank ends above the mean by more than
/// one title: the heaviest rank took its last title while it was the lightest), ties to the rank with fewer news, then the lower rank. Deterministic, so every
/// rank computes the same split.
pub fn balance_by_tokens(tokens: &[u32], world: usize) -> (Vec<usize>, Vec<u64>) {
    let mut by_length: Vec<usize> = (0..tokens.len()).collect();
    by_length.sort_by_key(|&i| (std::cmp::Reverse(tokens[i]), i));
    let mut load = vec![(0u64, 0usize); world];
    let mut owner = vec![0usize; tokens.len()];
    for i in by_length {
        let rank = (0..world).min_by_key(|&r| (load[r], r)).expect("world > 0");
        owner[i] = rank;
        load[rank].0 += tokens[i] as u64;
        load[rank].1 += 1;
    }
    (owner, load.into_iter().map(|(t, _)| t).collect())
}

/// The unique news of some samples with each sample's rows into them (not yet padded).
struct Collected {
    news: Vec<i32>,
    occurrences: Vec<u32>,
    /// Whether each news item is a candidate of some sample.
    candidate: Vec<bool>,
    rows: Vec<Vec<i64>>,
    candidates: Vec<i64>,
    users: Vec<i64>,
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

    /// Assembles the batch of `samples` (history capped at the configured length), each of
    /// their unique news once: per-rank de-duplication.
    pub fn assemble(&self, epoch: u64, samples: &[u32]) -> HostBatch {
        let collected = self.collect(epoch, samples);
        let pad = collected.news.len() as i64;
        pad_history(collected, pad, None)
    }

    /// Rank `rank`'s batch of the global batch at `step` with global de-duplication: the unique
    /// news of all ranks' samples split over the ranks by [`balance_by_tokens`] (`tokens[nid]`:
    /// the title's tokens), this rank's share in `news` with its global occurrences, and this
    /// rank's samples indexing the gathered table ([`Shares`]). With a news-vector cache,
    /// `reuse` gets the global batch's unique news and whether each is a candidate, and says which
    /// to read from the cache: those are left out of the shares and read from table rows after
    /// them.
    #[allow(clippy::too_many_arguments)]
    pub fn assemble_global(
        &self,
        epoch: u64,
        order: &[u32],
        step: u64,
        batch_size: usize,
        rank: usize,
        world: usize,
        tokens: &[u32],
        reuse: Option<&mut Reuse<'_>>,
    ) -> HostBatch {
        let global = self.collect(epoch, &self.rank_samples(order, step, batch_size, 0, 1));
        let n = global.news.len();
        let cached = match reuse {
            Some(reuse) => reuse(&global.news, &global.candidate),
            None => vec![false; n],
        };
        let encoded: Vec<usize> = (0..n).filter(|&u| !cached[u]).collect();
        let title_tokens: Vec<u32> = encoded.iter().map(|&u| tokens[global.news[u] as usize]).collect();
        let (owner_of_encoded, share_tokens) = balance_by_tokens(&title_tokens, world);
        let mut counts = vec![0usize; world];
        // Table row of each unique news item: its rank's block, or after the blocks if cached.
        let mut owner = vec![usize::MAX; n];
        let mut position = vec![0usize; n];
        for (&u, &r) in encoded.iter().zip(&owner_of_encoded) {
            owner[u] = r;
            position[u] = counts[r];
            counts[r] += 1;
        }
        let padded = counts.iter().copied().max().unwrap_or(0);
        let mut reused = Vec::new();
        let mut row_of = vec![0i64; n];
        for u in 0..n {
            row_of[u] = if cached[u] {
                reused.push(global.news[u]);
                (world * padded + reused.len() - 1) as i64
            } else {
                (owner[u] * padded + position[u]) as i64
            };
        }
        let mut table_news = vec![-1i32; world * padded];
        let mut table_occurrences = vec![0u32; world * padded];
        for &u in &encoded {
            table_news[row_of[u] as usize] = global.news[u];
            table_occurrences[row_of[u] as usize] = global.occurrences[u];
        }
        let row = |u: &i64| row_of[*u as usize];
        let per_rank = batch_size / world;
        let own = rank * per_rank..(rank + 1) * per_rank;
        let width = 1 + self.negatives;
        let mine: Vec<usize> = encoded.iter().copied().filter(|&u| owner[u] == rank).collect();
        let collected = Collected {
            news: mine.iter().map(|&u| global.news[u]).collect(),
            occurrences: mine.iter().map(|&u| global.occurrences[u]).collect(),
            candidate: Vec::new(),
            rows: global.rows[own.clone()].iter().map(|r| r.iter().map(row).collect()).collect(),
            candidates: global.candidates[own.start * width..own.end * width].iter().map(row).collect(),
            users: global.users[own].to_vec(),
        };
        let pad = (world * padded + reused.len()) as i64;
        let shares = Shares { counts, padded, tokens: share_tokens, table_news, table_occurrences, reused };
        pad_history(collected, pad, Some(shares))
    }

    /// The unique news of `samples`, first occurrence first, with each sample's rows into them.
    fn collect(&self, epoch: u64, samples: &[u32]) -> Collected {
        let mut unique: HashMap<i32, i64> = HashMap::new();
        let mut news = Vec::new();
        let mut occurrences: Vec<u32> = Vec::new();
        let mut candidate: Vec<bool> = Vec::new();
        let mut slot = |nid: i32, news: &mut Vec<i32>, is_candidate: bool| -> i64 {
            let index = *unique.entry(nid).or_insert_with(|| {
                news.push(nid);
                occurrences.push(0);
                candidate.push(false);
                news.len() as i64 - 1
            });
            occurrences[index as usize] += 1;
            candidate[index as usize] |= is_candidate;
            index
        };
        let mut rows = Vec::with_capacity(samples.len());
        let mut candidates = Vec::with_capacity(samples.len() * (1 + self.negatives));
        let mut users = Vec::with_capacity(samples.len());
        for &sample in samples {
            let (imp, cands) = self.candidates(epoch, sample);
            let impression = &self.impressions[imp];
            let history = &impression.history[impression.history.len().saturating_sub(self.history)..];
            rows.push(history.iter().map(|&nid| slot(nid, &mut news, false)).collect::<Vec<_>>());
            candidates.extend(cands.iter().map(|&nid| slot(nid, &mut news, true)));
            users.push(impression.user as i64);
        }
        Collected { news, occurrences, candidate, rows, candidates, users }
    }

    /// Title slots and unique titles of the global batch at `step` split over `world` ranks:
    /// what per-rank and global de-duplication would encode (host-only counting, for any world
    /// size without running it).
    pub fn dedup_counts(
        &self,
        epoch: u64,
        order: &[u32],
        step: u64,
        batch_size: usize,
        world: usize,
    ) -> DedupCounts {
        let slots_of = |c: &Collected| c.rows.iter().map(Vec::len).sum::<usize>() + c.candidates.len();
        let global = self.collect(epoch, &self.rank_samples(order, step, batch_size, 0, 1));
        let per_rank = (0..world)
            .map(|rank| {
                self.collect(epoch, &self.rank_samples(order, step, batch_size, rank, world)).news.len()
            })
            .sum();
        DedupCounts { slots: slots_of(&global), per_rank, global: global.news.len() }
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

/// Pads history rows (left-aligned, padding index `pad`) into a [`HostBatch`].
fn pad_history(collected: Collected, pad: i64, shares: Option<Shares>) -> HostBatch {
    let Collected { news, occurrences, rows, candidates, users, .. } = collected;
    let history_len = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut history = Vec::with_capacity(rows.len() * history_len);
    let mut history_mask = Vec::with_capacity(rows.len() * history_len);
    for row in &rows {
        history.extend(row.iter().copied().chain(std::iter::repeat_n(pad, history_len - row.len())));
        history_mask.extend((0..history_len).map(|t| t < row.len()));
    }
    HostBatch {
        size: rows.len(),
        news,
        history,
        history_mask,
        history_len,
        candidates,
        users,
        occurrences,
        shares,
    }
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

    /// Global de-duplication on 3 ranks: every unique news of the global batch is encoded by
    /// exactly one rank, each with its global occurrences; every sample reads the same news
    /// through the gathered table as through its rank's own batch; the split is balanced.
    #[test]
    fn global_deduplication_encodes_each_news_once_and_reads_the_same_news() {
        let imps = impressions();
        let sampler = Sampler::new(&imps, 5, 4, 6);
        let order = sampler.epoch_order(1);
        let tokens: Vec<u32> = (0..1000).map(|nid| 3 + (nid * 7 % 11) as u32).collect();
        let (world, batch_size, step) = (3, 12, 1);
        let whole = sampler.assemble(1, &sampler.rank_samples(&order, step, batch_size, 0, 1));
        let batches: Vec<HostBatch> = (0..world)
            .map(|rank| sampler.assemble_global(1, &order, step, batch_size, rank, world, &tokens, None))
            .collect();
        let shares = batches[0].shares.clone().expect("global");
        // The gathered table: each rank's share, padded to `padded` rows.
        let mut table = vec![-1i32; world * shares.padded];
        for (rank, batch) in batches.iter().enumerate() {
            assert_eq!(batch.shares.as_ref(), Some(&shares), "every rank computes the same split");
            assert_eq!(batch.news.len(), shares.counts[rank]);
            let tokens_of: u64 = batch.news.iter().map(|&n| tokens[n as usize] as u64).sum();
            assert_eq!(tokens_of, shares.tokens[rank]);
            table[rank * shares.padded..][..batch.news.len()].copy_from_slice(&batch.news);
        }
        let mut encoded: Vec<i32> = table.iter().copied().filter(|&n| n >= 0).collect();
        encoded.sort();
        let mut unique = whole.news.clone();
        unique.sort();
        assert_eq!(encoded, unique, "each unique news of the global batch once");
        // Occurrences are the global batch's.
        for (batch, rank) in batches.iter().zip(0..) {
            for (&nid, &count) in batch.news.iter().zip(&batch.occurrences) {
                let at = whole.news.iter().position(|&n| n == nid).unwrap();
                assert_eq!(count, whole.occurrences[at], "rank {rank}, news {nid}");
            }
        }
        // Each rank's samples read the same news as the whole batch's (padding = the zero row).
        let read = |table: &[i32], i: i64| -> i32 {
            table.get(i as usize).copied().unwrap_or(if i as usize == table.len() { 0 } else { -2 })
        };
        let per_rank = batch_size / world;
        for (rank, batch) in batches.iter().enumerate() {
            for b in 0..per_rank {
                let g = rank * per_rank + b;
                let cands = |x: &HostBatch, t: &[i32], s: usize| -> Vec<i32> {
                    x.candidates[s * 5..(s + 1) * 5].iter().map(|&i| read(t, i)).collect()
                };
                assert_eq!(cands(batch, &table, b), cands(&whole, &whole.news, g));
                let hist = |x: &HostBatch, t: &[i32], s: usize| -> Vec<i32> {
                    (0..x.history_len)
                        .filter(|&k| x.history_mask[s * x.history_len + k])
                        .map(|k| read(t, x.history[s * x.history_len + k]))
                        .collect()
                };
                assert_eq!(hist(batch, &table, b), hist(&whole, &whole.news, g));
                let pads = (0..batch.history_len).filter(|&k| !batch.history_mask[b * batch.history_len + k]);
                for k in pads {
                    assert_eq!(batch.history[b * batch.history_len + k], table.len() as i64);
                }
            }
        }
        let longest = whole.news.iter().map(|&n| tokens[n as usize] as u64).max().unwrap();
        let (most, least) = (shares.tokens.iter().max().unwrap(), shares.tokens.iter().min().unwrap());
        assert!(most - least <= longest, "LPT balance: {:?} (longest title {longest})", shares.tokens);
    }

    /// With a news-vector cache's `reuse`: the news it picks (here every history-only news item
    /// with an even id) are encoded by no rank and read from the rows after the shares; every
    /// sample still reads its own news; `reuse` is told exactly which news are candidates.
    #[test]
    fn reused_news_leave_the_shares_and_are_read_after_them() {
        let imps = impressions();
        let sampler = Sampler::new(&imps, 5, 4, 6);
        let order = sampler.epoch_order(1);
        let tokens = vec![4u32; 1000];
        let (world, batch_size, step) = (2, 12, 1);
        let whole = sampler.assemble(1, &sampler.rank_samples(&order, step, batch_size, 0, 1));
        let candidates: std::collections::HashSet<i32> =
            whole.candidates.iter().map(|&i| whole.news[i as usize]).collect();
        let batches: Vec<HostBatch> = (0..world)
            .map(|rank| {
                let mut reuse = |news: &[i32], candidate: &[bool]| -> Vec<bool> {
                    for (nid, &c) in news.iter().zip(candidate) {
                        assert_eq!(c, candidates.contains(nid), "news {nid}");
                    }
                    news.iter().zip(candidate).map(|(&nid, &c)| !c && nid % 2 == 0).collect()
                };
                sampler.assemble_global(1, &order, step, batch_size, rank, world, &tokens, Some(&mut reuse))
            })
            .collect();
        let shares = batches[0].shares.clone().unwrap();
        assert!(!shares.reused.is_empty());
        assert!(shares.reused.iter().all(|&n| n % 2 == 0 && !candidates.contains(&n)));
        assert!(shares.table_news.iter().all(|&n| n < 0 || !shares.reused.contains(&n)));
        let table: Vec<i32> = shares.table_news.iter().chain(&shares.reused).copied().collect();
        let read = |i: i64| table.get(i as usize).copied().unwrap_or(0);
        let per_rank = batch_size / world;
        for (rank, batch) in batches.iter().enumerate() {
            for b in 0..per_rank {
                let g = rank * per_rank + b;
                let mine: Vec<i32> = batch.candidates[b * 5..(b + 1) * 5].iter().map(|&i| read(i)).collect();
                let want: Vec<i32> =
                    whole.candidates[g * 5..(g + 1) * 5].iter().map(|&i| whole.news[i as usize]).collect();
                assert_eq!(mine, want);
                for k in 0..batch.history_len {
                    let (i, m) = (
                        batch.history[b * batch.history_len + k],
                        batch.history_mask[b * batch.history_len + k],
                    );
                    if m {
                        let j = whole.history[g * whole.history_len + k];
                        assert_eq!(read(i), whole.news[j as usize]);
                    } else {
                        assert_eq!(
                            i as usize,
                            table.len(),
                            "padding reads the zero row after the reused rows"
                        );
                    }
                }
            }
        }
        // The auxiliary counts cover the encoded news only.
        let labelled = vec![1u32; 1000];
        let counts = shares.encoded_counts(&labelled);
        let reused_occurrences: u64 = shares
            .reused
            .iter()
            .map(|n| whole.occurrences[whole.news.iter().position(|m| m == n).unwrap()] as u64)
            .sum();
        let all: u64 = whole.occurrences.iter().map(|&c| c as u64).sum();
        assert_eq!(counts.news, all - reused_occurrences);
    }

    #[test]
    fn dedup_counts_count_slots_and_unique_titles_per_rank_and_globally() {
        let imps = impressions();
        let sampler = Sampler::new(&imps, 5, 4, 6);
        let order = sampler.epoch_order(0);
        let counts = sampler.dedup_counts(0, &order, 1, 12, 3);
        let whole = sampler.assemble(0, &sampler.rank_samples(&order, 1, 12, 0, 1));
        let slots = whole.history_mask.iter().filter(|&&m| m).count() + whole.candidates.len();
        let per_rank: usize =
            (0..3).map(|r| sampler.assemble(0, &sampler.rank_samples(&order, 1, 12, r, 3)).news.len()).sum();
        assert_eq!(counts, DedupCounts { slots, per_rank, global: whole.news.len() });
        assert!(counts.global <= counts.per_rank && counts.per_rank <= counts.slots);
        assert_eq!(sampler.dedup_counts(0, &order, 1, 12, 1).per_rank, counts.global);
    }

    #[test]
    fn balance_by_tokens_is_longest_first_to_the_lightest_rank() {
        let (owner, load) = balance_by_tokens(&[5, 9, 2, 9, 4], 2);
        // 9 (#1) -> r0, 9 (#3) -> r1, 5 (#0) -> r0 (tie: lower rank), 4 (#4) -> r1, 2 (#2) -> r1 (13 < 14)
        assert_eq!(owner, vec![0, 0, 1, 1, 1]);
        assert_eq!(load, vec![14, 15]);
        assert_eq!(balance_by_tokens(&[], 3), (vec![], vec![0, 0, 0]));
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
