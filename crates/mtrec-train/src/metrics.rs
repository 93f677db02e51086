//! Ranking metrics of the MIND competition, computed the way its official scorer (`evaluate.py`
//! of MIND; `paper/MTREC.md` "Evaluation metrics") computes them on a `prediction.txt`, per
//! impression then averaged over impressions.
//!
//! The scorer never sees the model's scores: it reads the 1-based ranks `r_j` of a submission and
//! scores candidate `j` with `1 / r_j`. So both `predict` (which writes the ranks) and `eval` (and
//! evaluation inside training) go through one ranking function, [`ranks_in_input_order`], and
//! `eval` computes its metrics from those ranks, with the scorer's formulas:
//! - AUC: `sklearn.metrics.roc_auc_score(labels, 1 / r)`: the share of (click, non-click) pairs
//!   where the click has the better (smaller) rank (a tie of ranks would count half; ours never
//!   tie);
//! - MRR: `sum_i y_(i) / i` over the candidates in rank order, divided by the number of clicks;
//! - nDCG@k: DCG with gains `2^y - 1` and discounts `log2(rank + 1)` over the top k, divided by the
//!   ideal DCG (the labels sorted descending).
//!
//! Because `eval` scores exactly the ranks `predict` writes, its numbers equal the leaderboard's
//! for the same checkpoint and split, ties included.
//!
//! **Tie rule.** Candidates are ranked by descending score; equal scores rank by their position in
//! the impression, the earlier-listed candidate first. `-0.0` and `+0.0` are equal scores. A NaN
//! score is refused with a [`NanScore`] error that names the impression and the candidate. An
//! impression whose scores all tie (an empty click history gives the exact zero user vector, so
//! every candidate scores 0; a news item listed twice scores the same twice) is thus ranked in its
//! listed order: its AUC is the share of (click, non-click) pairs in which the click is listed
//! before the non-click, which depends only on where the clicks are listed, not on the model.
//!
//! **Impressions without both a click and a non-click** have no AUC (`roc_auc_score` raises "Only
//! one class present in y_true", so the official scorer fails on them; MIND's impressions all
//! have both). [`RankingMetrics::add`] skips them in every metric and in the impression count, so
//! the averages are the scorer's over the impressions it can score.
use serde::{Deserialize, Serialize};

/// A candidate scored NaN, which no ranking can place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "impression {impression_id}: candidate {candidate} (0-based, in listed order) scored NaN, which \
     cannot be ranked (a diverged or corrupt checkpoint?)"
)]
pub struct NanScore {
    pub impression_id: i64,
    pub candidate: usize,
}

/// Metric sums over impressions; averaged by [`RankingMetrics::mean`]. Sums (not means) so that
/// ranks can add theirs up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RankingMetrics {
    pub auc: f64,
    pub mrr: f64,
    pub ndcg5: f64,
    pub ndcg10: f64,
    pub impressions: f64,
}

impl RankingMetrics {
    /// Adds one impression from its model scores: ranks them with [`ranks_in_input_order`] (the
    /// ranks `predict` writes), then [`RankingMetrics::add_ranks`]. A NaN score is an error naming
    /// `impression_id`.
    pub fn add(&mut self, impression_id: i64, labels: &[i8], scores: &[f32]) -> Result<(), NanScore> {
        let ranks = ranks_in_input_order(impression_id, scores)?;
        self.add_ranks(labels, &ranks);
        Ok(())
    }

    /// Adds one impression from its 1-based ranks in listed order (a `prediction.txt` line), as
    /// the official scorer scores it. Impressions with no click or no non-click are skipped
    /// (module documentation).
    pub fn add_ranks(&mut self, labels: &[i8], ranks: &[usize]) {
        assert_eq!(labels.len(), ranks.len(), "one rank per label");
        let positives = labels.iter().filter(|&&y| y > 0).count();
        if positives == 0 || positives == labels.len() {
            return;
        }
        self.auc += auc(labels, ranks);
        self.mrr += mrr(labels, ranks);
        self.ndcg5 += ndcg(labels, ranks, 5);
        self.ndcg10 += ndcg(labels, ranks, 10);
        self.impressions += 1.0;
    }

    /// The sums of both.
    pub fn plus(&self, other: &RankingMetrics) -> RankingMetrics {
        let (a, b) = (self.as_array(), other.as_array());
        RankingMetrics::from_array(std::array::from_fn(|i| a[i] + b[i]))
    }

    pub fn as_array(&self) -> [f64; 5] {
        [self.auc, self.mrr, self.ndcg5, self.ndcg10, self.impressions]
    }

    pub fn from_array(a: [f64; 5]) -> Self {
        RankingMetrics { auc: a[0], mrr: a[1], ndcg5: a[2], ndcg10: a[3], impressions: a[4] }
    }

    /// Averages over impressions.
    pub fn mean(&self) -> RankingMetrics {
        let n = self.impressions.max(1.0);
        RankingMetrics {
            auc: self.auc / n,
            mrr: self.mrr / n,
            ndcg5: self.ndcg5 / n,
            ndcg10: self.ndcg10 / n,
            impressions: self.impressions,
        }
    }
}

/// The user groups every evaluation also reports: by the clicks an impression's history holds
/// (as the shards keep it: at most prep's `--max-history`, 50 by default, so "over 50" needs a
/// larger one), and the users absent from training (user id 0: cold users).
pub const USER_GROUPS: [&str; 6] =
    ["history 0", "history 1-5", "history 6-20", "history 21-50", "history over 50", "not in train"];

/// Summed metrics of each of [`USER_GROUPS`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UserGroups(pub [RankingMetrics; 6]);

impl UserGroups {
    /// The groups of an impression with `history` clicks of user `user`: its history bucket, and
    /// "not in train" when `user` is 0.
    pub fn of(history: usize, user: i32) -> impl Iterator<Item = usize> {
        let bucket = match history {
            0 => 0,
            1..=5 => 1,
            6..=20 => 2,
            21..=50 => 3,
            _ => 4,
        };
        std::iter::once(bucket).chain((user == 0).then_some(5))
    }

    /// Each group's sums, then the next group's: `6 x 5` values (for one all-reduce).
    pub fn as_array(&self) -> Vec<f64> {
        self.0.iter().flat_map(|m| m.as_array()).collect()
    }

    pub fn from_array(values: &[f64]) -> Self {
        let mut groups = UserGroups::default();
        for (group, chunk) in groups.0.iter_mut().zip(values.chunks(5)) {
            *group = RankingMetrics::from_array(chunk.try_into().expect("5 values per group"));
        }
        groups
    }

    /// Each group averaged over its impressions.
    pub fn mean(&self) -> UserGroups {
        UserGroups(self.0.map(|m| m.mean()))
    }

    /// `{"history 0": {"auc": ..., "mrr": ..., "ndcg5": ..., "ndcg10": ..., "impressions": n}, ...}`;
    /// a group without impressions is left out.
    pub fn to_json(&self) -> serde_json::Value {
        let groups = USER_GROUPS.iter().zip(&self.0).filter(|(_, m)| m.impressions > 0.0).map(|(name, m)| {
            let values = serde_json::json!({"auc": m.auc, "mrr": m.mrr, "ndcg5": m.ndcg5, "ndcg10": m.ndcg10,
                "impressions": m.impressions});
            (name.to_string(), values)
        });
        serde_json::Value::Object(groups.collect())
    }
}

impl std::fmt::Display for UserGroups {
    /// One line per group with impressions: `  history 1-5: AUC ... (n impressions)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (name, m) in USER_GROUPS.iter().zip(&self.0).filter(|(_, m)| m.impressions > 0.0) {
            writeln!(f, "  {name:>15}: {m}")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for RankingMetrics {
    /// `AUC 0.6943  MRR 0.3379  nDCG@5 0.3764  nDCG@10 0.4374  (73152 impressions)`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "AUC {:.4}  MRR {:.4}  nDCG@5 {:.4}  nDCG@10 {:.4}  ({} impressions)",
            self.auc, self.mrr, self.ndcg5, self.ndcg10, self.impressions
        )
    }
}

/// Candidate indices from best to worst by the tie rule (module documentation): descending score,
/// equal scores (`-0.0 == +0.0`) in listed order; a NaN score is an error naming `impression_id`.
pub fn ranking(impression_id: i64, scores: &[f32]) -> Result<Vec<usize>, NanScore> {
    if let Some(candidate) = scores.iter().position(|s| s.is_nan()) {
        return Err(NanScore { impression_id, candidate });
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    // Stable, so equal scores keep their listed order; `partial_cmp` (no NaN left) has -0.0 == +0.0.
    order.sort_by(|&a, &b| scores[b].partial_cmp(&scores[a]).expect("no NaN"));
    Ok(order)
}

/// 1-based rank of each candidate in its listed order (the leaderboard's `[r1,r2,...]`), by
/// [`ranking`]: the one ranking that `predict` writes and `eval` scores.
pub fn ranks_in_input_order(impression_id: i64, scores: &[f32]) -> Result<Vec<usize>, NanScore> {
    let mut ranks = vec![0; scores.len()];
    for (rank, i) in ranking(impression_id, scores)?.into_iter().enumerate() {
        ranks[i] = rank + 1;
    }
    Ok(ranks)
}

/// Candidate indices in the scorer's order: ascending rank, i.e. descending `1 / r`. For ranks
/// that form a permutation of `1..=n` (all that [`ranks_in_input_order`] gives) the order is
/// unique.
fn by_rank(ranks: &[usize]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..ranks.len()).collect();
    order.sort_by_key(|&i| ranks[i]);
    order
}

/// `roc_auc_score(labels, 1 / ranks)`: the Mann-Whitney statistic over (click, non-click) pairs,
/// the smaller rank winning, equal ranks counting half.
pub fn auc(labels: &[i8], ranks: &[usize]) -> f64 {
    let mut wins = 0.0;
    let (mut pos, mut neg) = (0.0, 0.0);
    for (i, &yi) in labels.iter().enumerate() {
        if yi > 0 {
            pos += 1.0;
            for (j, &yj) in labels.iter().enumerate() {
                if yj <= 0 {
                    wins += match ranks[i].cmp(&ranks[j]) {
                        std::cmp::Ordering::Less => 1.0,
                        std::cmp::Ordering::Equal => 0.5,
                        std::cmp::Ordering::Greater => 0.0,
                    };
                }
            }
        } else {
            neg += 1.0;
        }
    }
    wins / (pos * neg)
}

/// The scorer's `mrr_score`: `sum_i y_(i) / i` in rank order over the number of clicks.
pub fn mrr(labels: &[i8], ranks: &[usize]) -> f64 {
    let rr: f64 =
        by_rank(ranks).iter().enumerate().map(|(rank, &i)| labels[i] as f64 / (rank + 1) as f64).sum();
    rr / labels.iter().map(|&y| y as f64).sum::<f64>()
}

fn dcg(labels_in_rank_order: impl Iterator<Item = i8>, k: usize) -> f64 {
    labels_in_rank_order
        .take(k)
        .enumerate()
        .map(|(rank, y)| (2f64.powi(y as i32) - 1.0) / ((rank + 2) as f64).log2())
        .sum()
}

/// The scorer's `ndcg_score` at `k` on the ranks.
pub fn ndcg(labels: &[i8], ranks: &[usize], k: usize) -> f64 {
    let actual = dcg(by_rank(ranks).into_iter().map(|i| labels[i]), k);
    let mut ideal_labels = labels.to_vec();
    ideal_labels.sort_by(|a, b| b.cmp(a));
    actual / dcg(ideal_labels.into_iter(), k)
}

#[cfg(test)]
mod tests {
    /// An impression belongs to its history bucket, and to "not in train" when its user is 0;
    /// each group's means are those of its impressions alone.
    #[test]
    fn user_groups_bucket_by_history_and_cold_users() {
        let groups_of = |h, u| UserGroups::of(h, u).map(|g| USER_GROUPS[g]).collect::<Vec<_>>();
        assert_eq!(groups_of(0, 3), ["history 0"]);
        assert_eq!(groups_of(5, 0), ["history 1-5", "not in train"]);
        assert_eq!(groups_of(6, 1), ["history 6-20"]);
        assert_eq!(groups_of(50, 1), ["history 21-50"]);
        assert_eq!(groups_of(51, 0), ["history over 50", "not in train"]);
        let (a, b) = (
            RankingMetrics::from_array([1.0, 1.0, 1.0, 1.0, 1.0]),
            RankingMetrics::from_array([0.5, 0.25, 0.5, 0.5, 1.0]),
        );
        let mut groups = UserGroups::default();
        groups.0[1] = a.plus(&b);
        groups.0[5] = b;
        let round = UserGroups::from_array(&groups.as_array()).mean();
        assert_eq!(round.0[1].as_array(), [0.75, 0.625, 0.75, 0.75, 2.0]);
        assert_eq!(round.0[5].as_array(), [0.5, 0.25, 0.5, 0.5, 1.0]);
        let json = round.to_json();
        assert_eq!(json.as_object().unwrap().len(), 2, "groups without impressions are left out: {json}");
        assert_eq!(json["not in train"]["mrr"], 0.25);
    }

    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    fn ranks(scores: &[f32]) -> Vec<usize> {
        ranks_in_input_order(7, scores).unwrap()
    }

    #[test]
    fn single_click_impression_by_hand() {
        // Scores rank candidates 2, 0, 3, 1; the click is candidate 0 (rank 2).
        let labels = [1, 0, 0, 0];
        let r = ranks(&[0.5, 0.1, 0.9, 0.3]);
        assert_eq!(r, vec![2, 4, 1, 3]);
        close(auc(&labels, &r), 2.0 / 3.0); // beats 1 and 3, loses to 2
        close(mrr(&labels, &r), 0.5);
        close(ndcg(&labels, &r, 5), 1.0 / 3f64.log2()); // ideal DCG is 1
        close(ndcg(&labels, &r, 1), 0.0);
    }

    #[test]
    fn two_clicks_by_hand() {
        // Ranking: 1 (click), 3, 0 (click), 2.
        let labels = [1, 1, 0, 0];
        let r = ranks(&[0.4, 0.8, 0.1, 0.6]);
        assert_eq!(r, vec![3, 1, 4, 2]);
        close(auc(&labels, &r), 3.0 / 4.0); // pairs (0,2) (0,3)x (1,2) (1,3)
        close(mrr(&labels, &r), (1.0 + 1.0 / 3.0) / 2.0);
        let dcg = 1.0 + 1.0 / 4f64.log2();
        let ideal = 1.0 + 1.0 / 3f64.log2();
        close(ndcg(&labels, &r, 10), dcg / ideal);
        close(ndcg(&labels, &r, 2), 1.0 / (1.0 + 1.0 / 3f64.log2()));
    }

    #[test]
    fn ties_rank_by_listed_position_earlier_first() {
        assert_eq!(ranks(&[0.5, 0.5, 0.5]), vec![1, 2, 3]);
        // Ties inside a ranking: 0.9 first, then the three 0.2s in listed order, then 0.1.
        assert_eq!(ranks(&[0.2, 0.9, 0.2, 0.1, 0.2]), vec![2, 1, 3, 5, 4]);
        // More than 16 candidates, all tied (numpy's sort would not be stable there; ours is).
        let r = ranks(&[0.0; 40]);
        assert_eq!(r, (1..=40).collect::<Vec<_>>());
        // The same news listed twice scores the same twice: the earlier listing ranks first.
        assert_eq!(ranks(&[0.3, 0.7, 0.3]), vec![2, 1, 3]);
    }

    #[test]
    fn negative_zero_ties_with_positive_zero() {
        // total_cmp would put +0.0 above -0.0; they are the same score, so listed order decides.
        assert_eq!(ranks(&[-0.0, 0.0, -0.0, 0.0]), vec![1, 2, 3, 4]);
        assert_eq!(ranks(&[0.0, -0.0, 1e-30, -1e-30]), vec![2, 3, 1, 4]);
    }

    #[test]
    fn nan_is_refused_naming_the_impression() {
        let err = ranks_in_input_order(4242, &[0.1, f32::NAN, 0.3]).unwrap_err();
        assert_eq!(err, NanScore { impression_id: 4242, candidate: 1 });
        let text = err.to_string();
        assert!(
            text.contains("impression 4242") && text.contains("candidate 1") && text.contains("NaN"),
            "{text}"
        );
        let mut m = RankingMetrics::default();
        assert_eq!(m.add(17, &[1, 0], &[f32::NAN, 0.0]), Err(NanScore { impression_id: 17, candidate: 0 }));
        assert_eq!(m, RankingMetrics::default());
        assert!(ranking(3, &[0.0, 1.0, -f32::NAN]).is_err());
    }

    #[test]
    fn all_tied_impression_depends_only_on_listed_positions() {
        // An empty history: every candidate scores 0. Clicks at listed positions 1 and 3 of 5.
        let labels = [0, 1, 0, 1, 0];
        let mut m = RankingMetrics::default();
        m.add(1, &labels, &[0.0, -0.0, 0.0, 0.0, -0.0]).unwrap();
        // Ranks 1..5: click 1 beats 2 and 4 (2 of 3 non-clicks), click 3 beats 4 (1 of 3): 3/6.
        close(m.auc, 0.5);
        close(m.mrr, (1.0 / 2.0 + 1.0 / 4.0) / 2.0);
        let ideal = 1.0 + 1.0 / 3f64.log2();
        close(m.ndcg5, (1.0 / 3f64.log2() + 1.0 / 5f64.log2()) / ideal);
        // Clicks listed first: AUC 1 whatever the model; listed last: 0. Raw scores with ties
        // counted half would give 0.5 for both.
        let mut first = RankingMetrics::default();
        first.add(2, &[1, 0, 0], &[0.0; 3]).unwrap();
        close(first.auc, 1.0);
        let mut last = RankingMetrics::default();
        last.add(3, &[0, 0, 1], &[0.0; 3]).unwrap();
        close(last.auc, 0.0);
        close(last.mrr, 1.0 / 3.0);
    }

    #[test]
    fn partial_tie_by_hand() {
        // Click (listed 0) tied with non-click 1, above non-click 2: ranks [1, 2, 3], AUC 1;
        // listed the other way round the tie goes against the click: ranks [2, 1, 3], AUC 1/2.
        let mut m = RankingMetrics::default();
        m.add(1, &[1, 0, 0], &[0.7, 0.7, 0.2]).unwrap();
        close(m.auc, 1.0);
        let mut m = RankingMetrics::default();
        m.add(1, &[0, 1, 0], &[0.7, 0.7, 0.2]).unwrap();
        close(m.auc, 0.5);
        close(m.mrr, 0.5);
    }

    #[test]
    fn rank_metrics_of_tied_ranks_count_half_in_auc() {
        // Ranks from elsewhere may tie (not ours); AUC then counts half, like roc_auc_score.
        close(auc(&[1, 0, 0], &[1, 1, 2]), 0.75);
    }

    #[test]
    fn averaging_skips_impressions_without_both_labels() {
        let mut m = RankingMetrics::default();
        m.add(1, &[1, 0], &[0.9, 0.1]).unwrap();
        m.add(2, &[0, 0], &[0.9, 0.1]).unwrap();
        m.add(3, &[1, 1], &[0.9, 0.1]).unwrap();
        m.add(4, &[0, 1], &[0.9, 0.1]).unwrap();
        let mean = m.mean();
        assert_eq!(mean.impressions, 2.0);
        close(mean.auc, 0.5);
        close(mean.mrr, 0.75);
    }
}
