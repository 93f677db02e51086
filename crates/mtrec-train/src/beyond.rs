//! Beyond-accuracy metrics of the lists a model would show: each impression's top `k`
//! candidates, ranked as `predict` ranks them ([`crate::metrics::ranks_in_input_order`]), for
//! each `k` of `eval.top_k`. With `R` an impression's list (`min(k, candidates)` news items):
//!
//! - **intra-list diversity** (Smyth & McClave 2001, as the RecSys Challenge 2024's
//!   `ebrec.evaluation.metrics.intralist_diversity` computes it):
//!   `ILD(R) = sum_{i in R} sum_{j in R, j != i} dist(i, j) / (|R| (|R| - 1))`, with
//!   `dist(i, j) = [category_i != category_j]` (**by category**) and
//!   `dist(i, j) = 1 - cos(v_i, v_j)` of the news vectors (**by cosine**). A list of one item has
//!   no ILD: it is left out of both averages.
//! - **novelty** (self-information, Zhou et al. 2010, PNAS, "Solving the apparent
//!   diversity-accuracy dilemma"; `ebrec`'s `novelty`): `sum_{i in R} -log2 p_i / |R|`, where
//!   `p_i = (c_i + 1) / (U + 1)` is item `i`'s popularity in the training clicks: `c_i` the
//!   training impressions that clicked it, `U` the training impressions (the `+ 1` gives an item
//!   never clicked in training a finite novelty, `log2 (U + 1)`).
//! - **history overlap**: the share of `R` whose category is one of the categories of the user's
//!   history (as the shards keep it); impressions without a history are left out.
//!
//! Each is averaged over impressions, over every rank. **Catalogue coverage** (`ebrec`'s
//! `coverage_fraction`) is one figure for the whole split: the distinct news items of all lists
//! over the distinct candidates of the evaluated impressions (what could have been shown).
use crate::TrainError;
use crate::metrics::ranks_in_input_order;
use mtrec_data::read::{EvalImpression, NewsTable, TrainImpression};
use mtrec_dist::Collective;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

/// How often each news item was clicked in training: `c_i` of the module's novelty.
#[derive(Debug, Clone)]
pub struct TrainingClicks {
    /// Per news row: training impressions that clicked it.
    pub clicks: Vec<u32>,
    /// Training impressions (`U`).
    pub impressions: u64,
}

impl TrainingClicks {
    /// Counts the clicks of `impressions` over a news table of `num_news` rows.
    pub fn count(impressions: &[TrainImpression], num_news: usize) -> Self {
        let mut clicks = vec![0u32; num_news];
        for imp in impressions {
            let mut clicked = imp.clicked.clone();
            clicked.sort_unstable();
            clicked.dedup();
            for nid in clicked {
                clicks[nid as usize] += 1;
            }
        }
        TrainingClicks { clicks, impressions: impressions.len() as u64 }
    }

    /// `-log2 p_i`, `p_i = (c_i + 1) / (U + 1)`.
    pub fn novelty(&self, nid: i32) -> f64 {
        let c = self.clicks.get(nid as usize).copied().unwrap_or(0) as f64;
        -((c + 1.0) / (self.impressions as f64 + 1.0)).log2()
    }
}

/// The beyond-accuracy metrics of one `k`, averaged as the module says.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BeyondAccuracy {
    pub k: usize,
    pub ild_category: f64,
    pub ild_cosine: f64,
    pub coverage: f64,
    pub novelty: f64,
    pub history_overlap: f64,
    /// Impressions whose list has at least 2 items (the ILD averages' count).
    pub impressions: f64,
}

impl std::fmt::Display for BeyondAccuracy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "top {}: ILD category {:.4}  ILD cosine {:.4}  coverage {:.4}  novelty {:.3}  history overlap {:.4}",
            self.k, self.ild_category, self.ild_cosine, self.coverage, self.novelty, self.history_overlap
        )
    }
}

/// Sums (then counts) of one `k`, in the order one all-reduce carries them.
const SUMS: usize = 7;
const ILD_CATEGORY: usize = 0;
const ILD_COSINE: usize = 1;
const ILD_N: usize = 2;
const NOVELTY: usize = 3;
const NOVELTY_N: usize = 4;
const OVERLAP: usize = 5;
const OVERLAP_N: usize = 6;

/// Impressions whose lists' vectors are gathered on the device at once.
const CHUNK: usize = 4096;

/// The beyond-accuracy metrics of `impressions` (this rank's share; `scores` theirs, in listed
/// order) for each of `ks`, reduced over every rank of `collective` (every rank gets the same).
/// `news_vectors` is `[news rows, d]`, as [`crate::eval::encode_all_news`] gives it.
pub fn beyond_accuracy(
    ks: &[usize],
    impressions: &[EvalImpression],
    scores: &[Vec<f32>],
    news: &NewsTable,
    news_vectors: &Tensor,
    clicks: &TrainingClicks,
    collective: &dyn Collective,
) -> Result<Vec<BeyondAccuracy>, TrainError> {
    let rows = news.category.len();
    // Each impression's candidates in rank order.
    let ranked = impressions
        .iter()
        .zip(scores)
        .map(|(imp, s)| {
            let ranks = ranks_in_input_order(imp.impression_id, s)
                .map_err(|e| TrainError::Config(format!("scores: {e}")))?;
            let mut order = vec![0i32; ranks.len()];
            for (&nid, &r) in imp.candidates.iter().zip(&ranks) {
                order[r - 1] = nid;
            }
            Ok(order)
        })
        .collect::<Result<Vec<Vec<i32>>, TrainError>>()?;
    // Sums of every k, then the candidates' indicator, then each k's lists' indicator.
    let mut array = vec![0.0f64; ks.len() * SUMS + (1 + ks.len()) * rows];
    let (sums, indicators) = array.split_at_mut(ks.len() * SUMS);
    let (candidates, shown) = indicators.split_at_mut(rows);
    for imp in impressions {
        for &nid in &imp.candidates {
            candidates[nid as usize] = 1.0;
        }
    }
    for (j, &k) in ks.iter().enumerate() {
        let sums = &mut sums[j * SUMS..(j + 1) * SUMS];
        let shown = &mut shown[j * rows..(j + 1) * rows];
        let lists: Vec<&[i32]> = ranked.iter().map(|order| &order[..k.min(order.len())]).collect();
        for (imp, list) in impressions.iter().zip(&lists) {
            list.iter().for_each(|&nid| shown[nid as usize] = 1.0);
            if !list.is_empty() {
                let novelty = list.iter().map(|&n| clicks.novelty(n)).sum::<f64>();
                sums[NOVELTY] += novelty / list.len() as f64;
                sums[NOVELTY_N] += 1.0;
            }
            if !imp.history.is_empty() && !list.is_empty() {
                let read: std::collections::HashSet<i64> =
                    imp.history.iter().map(|&n| news.category[n as usize]).collect();
                let covered = list.iter().filter(|&&n| read.contains(&news.category[n as usize])).count();
                sums[OVERLAP] += covered as f64 / list.len() as f64;
                sums[OVERLAP_N] += 1.0;
            }
            if list.len() >= 2 {
                sums[ILD_CATEGORY] += category_ild(list, &news.category);
                sums[ILD_N] += 1.0;
            }
        }
        sums[ILD_COSINE] = cosine_ild_sum(&lists, news_vectors)?;
    }
    collective.all_reduce_sum_f64(&mut array)?;
    let (sums, indicators) = array.split_at(ks.len() * SUMS);
    let (candidates, shown) = indicators.split_at(rows);
    let catalogue = candidates.iter().filter(|&&c| c > 0.0).count();
    let ratio = |sum: f64, n: f64| if n > 0.0 { sum / n } else { f64::NAN };
    Ok(ks
        .iter()
        .enumerate()
        .map(|(j, &k)| {
            let s = &sums[j * SUMS..(j + 1) * SUMS];
            let distinct = shown[j * rows..(j + 1) * rows].iter().filter(|&&c| c > 0.0).count();
            BeyondAccuracy {
                k,
                ild_category: ratio(s[ILD_CATEGORY], s[ILD_N]),
                ild_cosine: ratio(s[ILD_COSINE], s[ILD_N]),
                coverage: ratio(distinct as f64, catalogue as f64),
                novelty: ratio(s[NOVELTY], s[NOVELTY_N]),
                history_overlap: ratio(s[OVERLAP], s[OVERLAP_N]),
                impressions: s[ILD_N],
            }
        })
        .collect())
}

/// ILD of one list (at least 2 items) with `dist = [category_i != category_j]`.
fn category_ild(list: &[i32], category: &[i64]) -> f64 {
    let n = list.len();
    let differing: usize = list
        .iter()
        .map(|&a| list.iter().filter(|&&b| category[a as usize] != category[b as usize]).count())
        .sum();
    differing as f64 / (n * (n - 1)) as f64
}

/// The sum over the lists of at least 2 items of their cosine ILD, on the device of
/// `news_vectors`, [`CHUNK`] lists at a time: each list's vectors `[n, d]` normalised, `G = V V^T`,
/// `ILD = (n (n - 1) - sum_{i != j} G_ij) / (n (n - 1))`. A zero vector (a title that encodes to
/// zero) is at distance 1 from every other.
fn cosine_ild_sum(lists: &[&[i32]], news_vectors: &Tensor) -> Result<f64, TrainError> {
    let device = news_vectors.device();
    let lists: Vec<&[i32]> = lists.iter().copied().filter(|l| l.len() >= 2).collect();
    let mut total = 0.0;
    for chunk in lists.chunks(CHUNK) {
        let width = chunk.iter().map(|l| l.len()).max().unwrap_or(0);
        let mut rows = Vec::with_capacity(chunk.len() * width);
        let mut mask = Vec::with_capacity(chunk.len() * width);
        for list in chunk {
            rows.extend(list.iter().map(|&n| n as i64).chain(std::iter::repeat_n(0, width - list.len())));
            mask.extend((0..width).map(|t| f32::from(u8::from(t < list.len()))));
        }
        let (b, w) = (chunk.len() as i64, width as i64);
        let ild = tch::no_grad(|| {
            let rows = Tensor::from_slice(&rows).to_device(device);
            let mask = Tensor::from_slice(&mask).to_device(device).view([b, w]);
            let v = news_vectors.index_select(0, &rows).view([b, w, -1]).to_kind(Kind::Float);
            let unit = &v / v.norm_scalaropt_dim(2, [-1], true).clamp_min(1e-12);
            let gram = unit.matmul(&unit.transpose(1, 2));
            let pairs_mask = mask.unsqueeze(2) * mask.unsqueeze(1);
            let off_diagonal = (&gram * &pairs_mask).sum_dim_intlist(&[1i64, 2][..], false, Kind::Float)
                - (gram.diagonal(0, 1, 2) * &mask).sum_dim_intlist(-1, false, Kind::Float);
            let n = mask.sum_dim_intlist(-1, false, Kind::Float);
            let pairs = &n * (&n - 1.0);
            ((&pairs - off_diagonal) / pairs).sum(Kind::Double).to_device(Device::Cpu)
        });
        total += ild.double_value(&[]);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mtrec_dist::Local;

    fn impression(id: i64, history: &[i32], candidates: &[i32]) -> EvalImpression {
        EvalImpression {
            impression_id: id,
            user: 1,
            time: 0,
            history: history.to_vec(),
            candidates: candidates.to_vec(),
            labels: None,
        }
    }

    /// Five news (rows 1-5; categories 1 1 2 3 2), 2-d vectors at known angles, and two
    /// impressions, checked against values worked out by hand for k = 2 and k = 3.
    #[test]
    fn metrics_equal_hand_computed_values() {
        let mut news = NewsTable::with_padding();
        news.category = vec![0, 1, 1, 2, 3, 2];
        // Row 1 (1,0), row 2 (0,1), row 3 (1,1), row 4 (-1,0), row 5 (0,0): a zero vector.
        let vectors = Tensor::from_slice(&[0.0f32, 0., 1., 0., 0., 1., 1., 1., -1., 0., 0., 0.]).view([6, 2]);
        // Impression 1 ranks 3 > 1 > 2 > 4; impression 2 (no history) ranks 5 > 4.
        let impressions = [impression(1, &[1, 2], &[1, 2, 3, 4]), impression(2, &[], &[4, 5])];
        let scores = vec![vec![0.8f32, 0.5, 0.9, 0.1], vec![0.2f32, 0.7]];
        // Training: 3 impressions; news 1 clicked in 2 (twice in one), news 3 in 1.
        let train = |clicked: &[i32]| TrainImpression {
            impression_id: 0,
            user: 1,
            time: 0,
            history: vec![],
            clicked: clicked.to_vec(),
            non_clicked: vec![],
        };
        let clicks = TrainingClicks::count(&[train(&[1, 1]), train(&[1, 3]), train(&[2])], 6);
        assert_eq!(clicks.clicks, [0, 2, 1, 1, 0, 0]);
        let got = beyond_accuracy(&[2, 3], &impressions, &scores, &news, &vectors, &clicks, &Local).unwrap();
        let nov = |c: f64| -((c + 1.0) / 4.0).log2(); // U = 3
        let close = |a: f64, b: f64, what: &str| assert!((a - b).abs() < 1e-6, "{what}: {a} vs {b}");

        // k = 2: lists [3, 1] and [5, 4].
        let k2 = got[0];
        assert_eq!(k2.k, 2);
        // Categories: (2, 1) differ; (2, 3) differ -> 1 and 1.
        close(k2.ild_category, 1.0, "k2 ILD category");
        // Cosines: 3 vs 1 = 1/sqrt2 -> distance 1 - 0.70711; 5 (zero) vs 4 -> distance 1.
        close(k2.ild_cosine, ((1.0 - 0.5f64.sqrt()) + 1.0) / 2.0, "k2 ILD cosine");
        // Shown {3, 1, 5, 4} of the candidates {1, 2, 3, 4, 5}.
        close(k2.coverage, 4.0 / 5.0, "k2 coverage");
        // Novelty: [3, 1] -> (nov 1 + nov 2) / 2; [5, 4] -> (nov 0 + nov 0) / 2.
        close(k2.novelty, ((nov(1.0) + nov(2.0)) / 2.0 + nov(0.0)) / 2.0, "k2 novelty");
        // History categories {1}: [3, 1] -> 1 of 2; impression 2 has no history.
        close(k2.history_overlap, 0.5, "k2 history overlap");
        assert_eq!(k2.impressions, 2.0);

        // k = 3: lists [3, 1, 2] and [5, 4] (only 2 candidates).
        let k3 = got[1];
        // Categories 2, 1, 1: 4 ordered pairs of 6 differ -> 2/3; [5, 4] -> 1.
        close(k3.ild_category, (2.0 / 3.0 + 1.0) / 2.0, "k3 ILD category");
        // Cosines (3,1) = (3,2) = 1/sqrt2, (1,2) = 0: distances 2 (1 - 0.70711) + 1 over 3 pairs.
        let ild3 = (2.0 * (1.0 - 0.5f64.sqrt()) + 1.0) / 3.0;
        close(k3.ild_cosine, (ild3 + 1.0) / 2.0, "k3 ILD cosine");
        close(k3.coverage, 1.0, "k3 coverage");
        close(k3.novelty, ((nov(1.0) + nov(2.0) + nov(1.0)) / 3.0 + nov(0.0)) / 2.0, "k3 novelty");
        close(k3.history_overlap, 2.0 / 3.0, "k3 history overlap");
    }

    /// A list of one item has no ILD; every such impression leaves the average undefined (NaN),
    /// not 0.
    #[test]
    fn lists_of_one_item_have_no_diversity() {
        let mut news = NewsTable::with_padding();
        news.category = vec![0, 1, 2];
        let vectors = Tensor::from_slice(&[0.0f32, 0., 1., 0., 0., 1.]).view([3, 2]);
        let impressions = [impression(1, &[1], &[1, 2])];
        let clicks = TrainingClicks { clicks: vec![0; 3], impressions: 0 };
        let got =
            beyond_accuracy(&[1], &impressions, &[vec![0.1, 0.2]], &news, &vectors, &clicks, &Local).unwrap();
        assert!(got[0].ild_category.is_nan() && got[0].ild_cosine.is_nan());
        assert_eq!(got[0].impressions, 0.0);
        assert_eq!(got[0].coverage, 0.5);
        assert_eq!(got[0].novelty, 0.0, "p = 1 / 1 with no training impressions");
        assert_eq!(got[0].history_overlap, 0.0, "news 2's category 2 is not in the history's {{1}}");
    }
}
